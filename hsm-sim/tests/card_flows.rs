//! The card functions end to end over TCP: a card issued by card-host on the
//! test keys, the HSM (on the same test keys from fixtures/) authorising its
//! top-up, verifying its TACs and making its maintenance MACs.

mod support;

use card_host::card::CitizenCard;
use card_host::commands;
use card_host::issue::{self, MasterKeySet};
use card_host::psam::Psam;
use card_host::responses::{Debit, LoadInitialization, PsamPurchase, PurchaseInitialization};
use card_host::storage::Storage;
use card_host::{ApplicationSerial, Fen, SmartCard, StatusWord, TerminalNumber, TransactionType};
use hsm_sim::keystore::{TEST_SET_SM4, TEST_SET_TRIPLE_DES};
use hsm_sim::{
    ClientError, ErrorCode, HsmClient, KeyAlgorithm, KeyType, LoadAuthorisation, LoadTac, MaintenanceFunction, Pin,
    PurchaseTac, TacRecord, TacVerdict,
};
use support::*;

const KIOSK: TerminalNumber = TerminalNumber([0x31, 0x00, 0x00, 0x00, 0x09, 0x01]);
const BUS: TerminalNumber = TerminalNumber([0x31, 0x00, 0x00, 0x00, 0x00, 0x01]);

fn serial_of(card: &mut CitizenCard) -> ApplicationSerial {
    let public = ok(card, &commands::read_binary(0x15, 0, 30));
    ApplicationSerial::from_slice(&public[12..20]).expect("8 bytes")
}

/// A top-up the way the kiosk and clearing run it: INITIALIZE FOR LOAD, the HSM
/// checks MAC1 and makes MAC2, CREDIT FOR LOAD, the HSM checks the TAC.
async fn top_up(client: &HsmClient, set: &str, card: &mut CitizenCard, amount: Fen) -> (LoadTac, bool) {
    ok(card, &commands::select_by_name(&issue::PURSE_AID));
    let serial = serial_of(card);
    let init =
        LoadInitialization::parse(&ok(card, &commands::initialize_for_load(1, amount, &KIOSK))).expect("16 bytes");
    let load = LoadAuthorisation {
        serial,
        key_index: 1,
        card_random: init.card_random,
        online_counter: init.online_counter,
        old_balance: init.balance,
        amount,
        kind: TransactionType::PurseLoad,
        terminal: KIOSK,
        at: at(),
        mac1: init.mac1,
    };
    let mac2 = client.authorise_load(set, &load).await.expect("MAC1 verifies in the HSM");
    let tac: [u8; 4] = ok(card, &commands::credit_for_load(&at(), mac2)).try_into().expect("4 bytes");
    let record = LoadTac {
        serial,
        new_balance: init.balance.checked_add(amount).expect("no overflow"),
        online_counter: init.online_counter,
        amount,
        kind: TransactionType::PurseLoad,
        terminal: KIOSK,
        at: at(),
        tac,
    };
    let valid = client.verify_load_tac(set, &record).await.expect("verify");
    (record, valid)
}

fn purchase(card: &mut CitizenCard, psam: &mut Psam, amount: Fen) -> PurchaseTac {
    ok(card, &commands::select_by_name(&issue::PURSE_AID));
    let serial = serial_of(card);
    let init = PurchaseInitialization::parse(&ok(card, &commands::initialize_for_purchase(1, amount, &BUS)))
        .expect("15 bytes");
    let input = commands::psam::PurchaseInput {
        card_random: init.card_random,
        offline_counter: init.offline_counter,
        amount,
        kind: TransactionType::PursePurchase,
        at: at(),
        key_version: init.key_version,
        algorithm_id: init.algorithm_id,
        application_serial: serial.0,
        higher_factors: &[],
    };
    let sam = PsamPurchase::parse(&ok(psam, &commands::psam::init_for_purchase(&input))).expect("8 bytes");
    let debit =
        Debit::parse(&ok(card, &commands::debit_for_purchase(sam.terminal_serial, &at(), sam.mac1))).expect("8 bytes");
    ok(psam, &commands::psam::credit_for_purchase(debit.mac2));
    PurchaseTac {
        serial,
        amount,
        kind: TransactionType::PursePurchase,
        terminal: BUS,
        terminal_serial: sam.terminal_serial,
        at: at(),
        tac: debit.tac,
    }
}

fn new_psam(keys: &MasterKeySet) -> Psam {
    let mut psam = Psam::new(Psam::issue(keys, BUS, 1), Storage::Memory);
    psam.power_on();
    psam
}

#[tokio::test]
async fn top_up_and_purchases_verify_through_the_hsm_3des_and_sm4() {
    let hsm = start().await;
    let client = hsm.client().await;
    for (set, keys) in [(TEST_SET_TRIPLE_DES, master_keys()), (TEST_SET_SM4, master_keys_sm4())] {
        let mut card = new_card(&keys, Fen(1_000));
        let (mut load, valid) = top_up(&client, set, &mut card, Fen(5_000)).await;
        assert!(valid, "{set}: the card's load TAC verifies");
        assert_eq!(Fen::from_bytes(ok(&mut card, &commands::get_balance()).try_into().expect("4")), Fen(6_000));
        load.amount = Fen(50_000);
        assert!(!client.verify_load_tac(set, &load).await.expect("verify"), "{set}: an altered load is caught");

        let mut psam = new_psam(&keys);
        let mut purchases = Vec::new();
        for amount in [200, 150, 1] {
            purchases.push(purchase(&mut card, &mut psam, Fen(amount)));
        }
        for record in &purchases {
            assert!(client.verify_purchase_tac(set, record).await.expect("verify"), "{set}");
        }
        let mut forged = purchases[0].clone();
        forged.amount = Fen(2);
        assert!(!client.verify_purchase_tac(set, &forged).await.expect("verify"));
        let mut other_set = purchases[0].clone();
        other_set.tac[0] ^= 0x80;
        assert!(!client.verify_purchase_tac(set, &other_set).await.expect("verify"));

        // The batch form gives the same verdicts, in order.
        let mut records: Vec<TacRecord> = purchases.iter().cloned().map(TacRecord::Purchase).collect();
        records.push(TacRecord::Load(load.clone()));
        records.push(TacRecord::Purchase(forged));
        let verdicts = client.verify_tacs(set, &records).await.expect("batch");
        assert_eq!(
            verdicts,
            [TacVerdict::Valid, TacVerdict::Valid, TacVerdict::Valid, TacVerdict::Invalid, TacVerdict::Invalid]
        );
    }
    let log = hsm.audit_log().await;
    assert!(log.contains("\"command\":\"ZC\""), "top-ups are audited");
    assert!(!log.contains(&master_keys().load[0].key.expose().iter().map(|b| format!("{b:02X}")).collect::<String>()));
}

#[tokio::test]
async fn a_wrong_mac1_is_refused_and_an_unknown_index_or_set_is_told() {
    let hsm = start().await;
    let client = hsm.client().await;
    let mut card = new_card(&master_keys(), Fen(0));
    ok(&mut card, &commands::select_by_name(&issue::PURSE_AID));
    let serial = serial_of(&mut card);
    let init =
        LoadInitialization::parse(&ok(&mut card, &commands::initialize_for_load(1, Fen(100), &KIOSK))).expect("16");
    let mut load = LoadAuthorisation {
        serial,
        key_index: 1,
        card_random: init.card_random,
        online_counter: init.online_counter,
        old_balance: init.balance,
        amount: Fen(10_000),
        kind: TransactionType::PurseLoad,
        terminal: KIOSK,
        at: at(),
        mac1: init.mac1,
    };
    // The amount is not the one the card signed: MAC1 fails.
    let error = client.authorise_load(TEST_SET_TRIPLE_DES, &load).await.expect_err("refused");
    assert_eq!(error.code(), Some(ErrorCode::VerificationFailure));
    load.amount = Fen(100);
    load.key_index = 9;
    let error = client.authorise_load(TEST_SET_TRIPLE_DES, &load).await.expect_err("no such index");
    assert_eq!(error.code(), Some(ErrorCode::InvalidIndex));
    load.key_index = 1;
    let error = client.authorise_load("nosuchset", &load).await.expect_err("no such set");
    assert_eq!(error.code(), Some(ErrorCode::KeyNotFound));
    // A purchase type in a top-up is invalid input.
    load.kind = TransactionType::PursePurchase;
    assert!(matches!(
        client.authorise_load(TEST_SET_TRIPLE_DES, &load).await,
        Err(ClientError::Hsm(ErrorCode::InputData))
    ));
    load.kind = TransactionType::PurseLoad;
    let mac2 = client.authorise_load(TEST_SET_TRIPLE_DES, &load).await.expect("right MAC1");
    assert_eq!(send(&mut card, &commands::credit_for_load(&at(), mac2)).status(), StatusWord::Ok);
}

#[tokio::test]
async fn maintenance_macs_block_unblock_and_reload_the_pin_on_a_real_card() {
    let hsm = start().await;
    let client = hsm.client().await;
    for (set, keys) in [(TEST_SET_TRIPLE_DES, master_keys()), (TEST_SET_SM4, master_keys_sm4())] {
        let mut card = new_card(&keys, Fen(0));
        ok(&mut card, &commands::select_by_name(&issue::PURSE_AID));
        let serial = serial_of(&mut card);
        let challenge =
            |card: &mut CitizenCard| -> [u8; 4] { ok(card, &commands::get_challenge(4)).try_into().expect("4 bytes") };
        let c = challenge(&mut card);
        let mac = client.maintenance_mac(set, serial, c, MaintenanceFunction::Block).await.expect("MAC");
        assert_eq!(send(&mut card, &commands::application_block(mac)).status(), StatusWord::Ok, "{set} block");
        let c = challenge(&mut card);
        let mac = client.maintenance_mac(set, serial, c, MaintenanceFunction::Unblock).await.expect("MAC");
        assert_eq!(send(&mut card, &commands::application_unblock(mac)).status(), StatusWord::Ok, "{set} unblock");
        // A MAC over another challenge is refused by the card.
        let c = challenge(&mut card);
        let mut stale = c;
        stale[0] ^= 1;
        let mac = client.maintenance_mac(set, serial, stale, MaintenanceFunction::Block).await.expect("MAC");
        assert_ne!(send(&mut card, &commands::application_block(mac)).status(), StatusWord::Ok);

        let pin = Pin::from_digits("135790").expect("pin");
        let c = challenge(&mut card);
        let mac =
            client.maintenance_mac(set, serial, c, MaintenanceFunction::PinReload(pin.clone())).await.expect("MAC");
        assert_eq!(send(&mut card, &commands::reload_pin(pin.expose(), mac)).status(), StatusWord::Ok, "{set} PIN");
        assert_eq!(send(&mut card, &commands::verify_pin(pin.expose())).status(), StatusWord::Ok);
    }
    assert!(!hsm.audit_log().await.contains("135790"), "no PIN in the audit log");
}

#[tokio::test]
async fn derived_card_keys_are_card_hosts_own_under_the_transport_key() {
    let hsm = start().await;
    let client = hsm.client().await;
    let transport = card_host::crypto::Key16::from_bytes(*b"transport-key-01");
    client
        .import_clear_key("issue.zmk", KeyType::Transport, KeyAlgorithm::TripleDes, &transport)
        .await
        .expect("import");
    let transport_sm4 = card_host::crypto::Key16::from_bytes(*b"transport-key-02");
    client
        .import_clear_key("issue.zmk.sm4", KeyType::Transport, KeyAlgorithm::Sm4, &transport_sm4)
        .await
        .expect("import");
    let serial = ApplicationSerial::parse_hex("3100000012345678").expect("hex");
    for (set, keys) in [(TEST_SET_TRIPLE_DES, master_keys()), (TEST_SET_SM4, master_keys_sm4())] {
        for (zmk, zmk_key, zmk_algorithm) in
            [("issue.zmk", &transport, KeyAlgorithm::TripleDes), ("issue.zmk.sm4", &transport_sm4, KeyAlgorithm::Sm4)]
        {
            let wrapped = client.derive_card_keys(set, serial, zmk).await.expect("derive");
            let expected = keys.card_keys(&serial);
            // Nothing travels in clear.
            assert_ne!(&wrapped.tac.encrypted, expected.tac.expose());
            let clear = wrapped.unwrap(zmk_key, zmk_algorithm).expect("check values match");
            assert_eq!(serde_json::to_value(&clear).expect("json"), serde_json::to_value(&expected).expect("json"));
        }
    }
    // Only a transport key may wrap: a MAC key is refused.
    let error = client.derive_card_keys(TEST_SET_TRIPLE_DES, serial, "test.mac").await.expect_err("not a ZMK");
    assert_eq!(error.code(), Some(ErrorCode::KeyFunctionNotPermitted));
    assert_eq!(
        client.derive_card_keys("nosuchset", serial, "issue.zmk").await.expect_err("x").code(),
        Some(ErrorCode::KeyNotFound)
    );
}

#[tokio::test]
async fn a_batch_of_thousands_is_split_and_answered_per_record() {
    let hsm = start().await;
    let client = hsm.client().await;
    let keys = master_keys();
    let mut records = Vec::new();
    let mut expected = Vec::new();
    for i in 0..4_000u32 {
        let serial = ApplicationSerial((u64::from(i) + 0x3100_0000_0000_0000).to_be_bytes());
        let dtk = card_host::crypto::diversify(keys.algorithm, &keys.tac, &serial.0);
        let amount = Fen(100 + i);
        let mut tac = card_host::crypto::purse::purchase_tac(
            keys.algorithm,
            &dtk,
            amount,
            TransactionType::PursePurchase,
            &BUS,
            i,
            &at(),
        );
        let valid = i % 7 != 3;
        if !valid {
            tac[3] ^= 1;
        }
        records.push(TacRecord::Purchase(PurchaseTac {
            serial,
            amount,
            kind: TransactionType::PursePurchase,
            terminal: BUS,
            terminal_serial: i,
            at: at(),
            tac,
        }));
        expected.push(if valid { TacVerdict::Valid } else { TacVerdict::Invalid });
    }
    let verdicts = client.verify_tacs(TEST_SET_TRIPLE_DES, &records).await.expect("batch");
    assert_eq!(verdicts, expected);
}

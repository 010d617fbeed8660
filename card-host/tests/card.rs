//! The software citizen card, command by command, in process: every success path
//! and the status word of each refusal, with the PSAM and the host side played by
//! the test through real APDUs.

mod support;

use card_host::card::fs::ApplicationState;
use card_host::card::{CardKeys, CitizenCard, IndexedKey, pin_from_digits};
use card_host::commands;
use card_host::crypto::{self, Algorithm, Key16};
use card_host::issue::{self, MEDICAL_AID, PURSE_AID, SOCIAL_SECURITY_NAME};
use card_host::responses::{PublicInformation, TransactionProof, TransactionRecord};
use card_host::storage::Storage;
use card_host::{CardDateTime, Command, Fen, SmartCard, StatusWord, TerminalNumber, TransactionType, tlv};
use support::*;

#[test]
fn selects_every_application_by_name_and_fid() {
    let mut card = new_card(0, Fen(0));
    let fci = ok(&mut card, &commands::select_by_name(&PURSE_AID));
    let objects = tlv::parse_all(&fci).expect("FCI is BER-TLV");
    assert_eq!(tlv::find_primitive(&objects, 0x84), Some(&PURSE_AID[..]));
    let public = tlv::find_primitive(&objects, 0x9F0C).expect("public information in the FCI");
    let public = PublicInformation::parse(public).expect("30 bytes");
    assert_eq!(public.application_serial.to_hex(), "3100000000000001");
    assert!(public.enabled);
    ok(&mut card, &commands::select_by_name(SOCIAL_SECURITY_NAME));
    ok(&mut card, &commands::select_by_name(&MEDICAL_AID));
    ok(&mut card, &commands::select_by_fid(0x3F00));
    ok(&mut card, &commands::select_by_fid(issue::PURSE_FID));
    // A right-truncated DF name selects too (ISO 7816-4 11.1.1).
    ok(&mut card, &commands::select_by_name(&PURSE_AID[..5]));
    assert_eq!(send(&mut card, &commands::select_by_name(b"NOPE")).status(), StatusWord::FileNotFound);
    assert_eq!(send(&mut card, &commands::select_by_fid(0x1234)).status(), StatusWord::FileNotFound);
    // EF by FID inside the current DF, with its FCP.
    let fcp = ok(&mut card, &Command::new(0x00, 0xA4, 0x02, 0x04).with_data(vec![0x00, 0x18]).expect(256));
    assert_eq!(fcp[0], 0x62);
}

#[test]
fn social_security_cardholder_needs_pin_or_terminal_authentication() {
    let mut card = new_card(0, Fen(0));
    ok(&mut card, &commands::select_by_name(SOCIAL_SECURITY_NAME));
    let category = ok(&mut card, &commands::read_record_by_identifier(0x05, 0x02));
    assert_eq!(category, vec![0x02, 0x01, 0x01]);
    assert_eq!(
        send(&mut card, &commands::read_record_by_identifier(0x06, 0x09)).status(),
        StatusWord::SecurityStatusNotSatisfied
    );
    // Wrong PIN: tries count down, durably.
    let wrong = pin_from_digits("000000").expect("digits");
    assert_eq!(send(&mut card, &commands::verify_pin(&wrong)).status(), StatusWord::PinTriesLeft(2));
    assert_eq!(card.image().pin.tries_left, 2);
    assert_eq!(send(&mut card, &Command::new(0x00, 0x20, 0x00, 0x00)).status(), StatusWord::PinTriesLeft(2));
    ok(&mut card, &commands::verify_pin(&pin_from_digits("123456").expect("digits")));
    assert_eq!(card.image().pin.tries_left, 3, "a right PIN resets the tries");
    let name = ok(&mut card, &commands::read_record_by_identifier(0x06, 0x09));
    let text: Vec<u8> = name[2..].iter().copied().take_while(|b| *b != 0).collect();
    assert_eq!(String::from_utf8(text).expect("UTF-8"), "张伟");
    let citizen_id = ok(&mut card, &commands::read_record(0x06, 7));
    assert_eq!(&citizen_id[2..], b"310115198503121015");

    // Terminal authentication instead of the PIN, on a fresh card.
    let mut card = new_card(0, Fen(0));
    ok(&mut card, &commands::select_by_name(SOCIAL_SECURITY_NAME));
    let challenge: [u8; 8] = ok(&mut card, &commands::get_challenge(8)).try_into().expect("8 bytes");
    let keys = master_keys();
    let serial = card.image().serial.0;
    let key = crypto::diversify(keys.algorithm, &keys.external_auth, &serial);
    let mut wrong = crypto::external_auth_cryptogram(keys.algorithm, &key, &challenge);
    wrong[0] ^= 1;
    assert_eq!(send(&mut card, &commands::external_authenticate(wrong)).status(), StatusWord::Other(0x6300));
    assert_eq!(
        send(&mut card, &commands::external_authenticate(wrong)).status(),
        StatusWord::ReferencedDataInvalidated
    );
    let challenge: [u8; 8] = ok(&mut card, &commands::get_challenge(8)).try_into().expect("8 bytes");
    ok(&mut card, &commands::external_authenticate(crypto::external_auth_cryptogram(keys.algorithm, &key, &challenge)));
    ok(&mut card, &commands::read_record_by_identifier(0x06, 0x08));
    // Authentication ends with the DF.
    ok(&mut card, &commands::select_by_name(&PURSE_AID));
    ok(&mut card, &commands::select_by_name(SOCIAL_SECURITY_NAME));
    assert_eq!(
        send(&mut card, &commands::read_record_by_identifier(0x06, 0x08)).status(),
        StatusWord::SecurityStatusNotSatisfied
    );
}

#[test]
fn pin_blocks_after_three_wrong_tries_and_reload_unblocks_it() {
    let mut card = new_card(0, Fen(0));
    let mut psam = new_psam();
    let wrong = pin_from_digits("999999").expect("digits");
    assert_eq!(send(&mut card, &commands::verify_pin(&wrong)).status(), StatusWord::PinTriesLeft(2));
    assert_eq!(send(&mut card, &commands::verify_pin(&wrong)).status(), StatusWord::PinTriesLeft(1));
    assert_eq!(send(&mut card, &commands::verify_pin(&wrong)).status(), StatusWord::AuthenticationBlocked);
    let right = pin_from_digits("123456").expect("digits");
    assert_eq!(send(&mut card, &commands::verify_pin(&right)).status(), StatusWord::AuthenticationBlocked);
    // PIN RELOAD with a MAC under the card's PIN-reload key.
    select_purse(&mut card);
    let new_pin = pin_from_digits("2468").expect("digits");
    let challenge: [u8; 4] = ok(&mut card, &commands::get_challenge(4)).try_into().expect("4 bytes");
    let keys = master_keys();
    let key = crypto::diversify(keys.algorithm, &keys.pin_reload, &card.image().serial.0);
    let input = {
        let mut input = vec![0x84, 0x5E, 0x00, 0x00, (new_pin.len() + 4) as u8];
        input.extend_from_slice(&new_pin);
        input
    };
    let mac = crypto::secure_messaging_mac(keys.algorithm, &key, challenge, &input);
    let mut bad = mac;
    bad[3] ^= 0x80;
    assert_eq!(send(&mut card, &commands::reload_pin(&new_pin, bad)).status(), StatusWord::SecureMessagingIncorrect);
    let challenge: [u8; 4] = ok(&mut card, &commands::get_challenge(4)).try_into().expect("4 bytes");
    let mac = crypto::secure_messaging_mac(keys.algorithm, &key, challenge, &input);
    ok(&mut card, &commands::reload_pin(&new_pin, mac));
    ok(&mut card, &commands::verify_pin(&new_pin));
    // CHANGE PIN needs the old one.
    let newer = pin_from_digits("13579").expect("digits");
    assert_eq!(send(&mut card, &commands::change_pin(&right, &newer)).status(), StatusWord::PinTriesLeft(2));
    ok(&mut card, &commands::change_pin(&new_pin, &newer));
    ok(&mut card, &commands::verify_pin(&newer));
    let _ = &mut psam;
}

#[test]
fn load_credits_the_purse_and_writes_record_and_proof() {
    let mut card = new_card(0, Fen(1_000));
    select_purse(&mut card);
    let tac = load(&mut card, Fen(5_000)).expect("load");
    assert_eq!(balance(&mut card), Fen(6_000));
    assert_eq!(card.image().purse.online_counter, 1);
    // The TAC verifies with the DTK diversified from the master.
    let keys = master_keys();
    let dtk = crypto::diversify(keys.algorithm, &keys.tac, &card.image().serial.0);
    let expected = crypto::purse::load_tac(
        keys.algorithm,
        &dtk,
        Fen(6_000),
        0,
        Fen(5_000),
        TransactionType::PurseLoad,
        &LOAD_TERMINAL,
        &at(),
    );
    assert_eq!(tac, expected);
    let record = TransactionRecord::parse(&ok(&mut card, &commands::read_record(0x18, 1))).expect("23 bytes");
    assert_eq!((record.number, record.amount, record.kind), (1, Fen(5_000), TransactionType::PurseLoad));
    assert_eq!(record.terminal, LOAD_TERMINAL);
    let proof =
        TransactionProof::parse(&ok(&mut card, &commands::get_transaction_prove(TransactionType::PurseLoad, 1)))
            .expect("8");
    assert_eq!(proof.tac, tac);
}

#[test]
fn load_refusals_change_nothing() {
    let mut card = new_card(0, Fen(1_000));
    select_purse(&mut card);
    let before = serde_json::to_string(card.image()).expect("json");
    // CREDIT without INITIALIZE.
    assert_eq!(send(&mut card, &commands::credit_for_load(&at(), [0; 4])).status(), StatusWord::ConditionsNotSatisfied);
    // Wrong MAC2.
    ok(&mut card, &commands::initialize_for_load(1, Fen(100), &LOAD_TERMINAL));
    assert_eq!(send(&mut card, &commands::credit_for_load(&at(), [1, 2, 3, 4])).status(), StatusWord::MacInvalid);
    // Unknown key index, above the maximum balance, deposit instead of purse.
    assert_eq!(
        send(&mut card, &commands::initialize_for_load(9, Fen(100), &LOAD_TERMINAL)).status(),
        StatusWord::KeyIndexNotSupported
    );
    assert_eq!(
        send(&mut card, &commands::initialize_for_load(1, Fen(99_999), &LOAD_TERMINAL)).status(),
        StatusWord::ConditionsNotSatisfied
    );
    assert_eq!(
        send(&mut card, &Command::new(0x80, 0x50, 0x00, 0x01).with_data(vec![1; 11]).expect(16)).status(),
        StatusWord::IncorrectP1P2
    );
    assert_eq!(
        send(&mut card, &Command::new(0x80, 0x50, 0x00, 0x02).with_data(vec![1; 10]).expect(16)).status(),
        StatusWord::WrongLength
    );
    assert_eq!(serde_json::to_string(card.image()).expect("json"), before);
}

#[test]
fn purchase_debits_and_the_psam_checks_mac2() {
    let mut card = new_card(1, Fen(2_000));
    let mut psam = new_psam();
    select_purse(&mut card);
    let done = purchase(&mut card, &mut psam, Fen(200), &[]).expect("purchase");
    assert_eq!(balance(&mut card), Fen(1_800));
    assert_eq!(done.number, 1);
    assert_eq!(psam.image().terminal_serial, done.terminal_serial + 1, "the PSAM used up its serial");
    let keys = master_keys();
    let dtk = crypto::diversify(keys.algorithm, &keys.tac, &card.image().serial.0);
    let expected = crypto::purse::purchase_tac(
        keys.algorithm,
        &dtk,
        Fen(200),
        TransactionType::PursePurchase,
        &TERMINAL,
        done.terminal_serial,
        &at(),
    );
    assert_eq!(done.debit.tac, expected, "the TAC verifies with the issuer's DTK");
    let record = TransactionRecord::parse(&ok(&mut card, &commands::read_record(0x18, 1))).expect("23 bytes");
    assert_eq!((record.number, record.amount, record.kind), (1, Fen(200), TransactionType::PursePurchase));
    let proof =
        TransactionProof::parse(&ok(&mut card, &commands::get_transaction_prove(TransactionType::PursePurchase, 1)))
            .expect("8");
    assert_eq!((proof.mac, proof.tac), (done.debit.mac2, done.debit.tac));
    // A purchase that never happened has no proof.
    assert_eq!(
        send(&mut card, &commands::get_transaction_prove(TransactionType::PursePurchase, 2)).status(),
        StatusWord::MacNotAvailable
    );
    assert_eq!(
        send(&mut card, &commands::get_transaction_prove(TransactionType::PurseLoad, 1)).status(),
        StatusWord::MacNotAvailable
    );
    // Eleven more: the detail file keeps ten, newest first.
    for _ in 0..11 {
        purchase(&mut card, &mut psam, Fen(1), &[]).expect("purchase");
    }
    assert_eq!(TransactionRecord::parse(&ok(&mut card, &commands::read_record(0x18, 1))).expect("23").number, 12);
    assert_eq!(TransactionRecord::parse(&ok(&mut card, &commands::read_record(0x18, 10))).expect("23").number, 3);
    assert_eq!(send(&mut card, &commands::read_record(0x18, 11)).status(), StatusWord::RecordNotFound);
}

#[test]
fn purchase_refusals_change_nothing() {
    let mut card = new_card(1, Fen(100));
    let mut psam = new_psam();
    select_purse(&mut card);
    let before = serde_json::to_string(card.image()).expect("json");
    assert_eq!(purchase(&mut card, &mut psam, Fen(101), &[]).map(|_| ()), Err(StatusWord::InsufficientBalance));
    assert_eq!(
        send(&mut card, &commands::debit_for_purchase(1, &at(), [0; 4])).status(),
        StatusWord::ConditionsNotSatisfied
    );
    ok(&mut card, &commands::initialize_for_purchase(1, Fen(10), &TERMINAL));
    assert_eq!(send(&mut card, &commands::debit_for_purchase(1, &at(), [0; 4])).status(), StatusWord::MacInvalid);
    // The context is gone after a failed DEBIT: no second guess at MAC1.
    assert_eq!(
        send(&mut card, &commands::debit_for_purchase(1, &at(), [0; 4])).status(),
        StatusWord::ConditionsNotSatisfied
    );
    // A bad date is refused before any MAC is checked.
    ok(&mut card, &commands::initialize_for_purchase(1, Fen(10), &TERMINAL));
    let mut bad = commands::debit_for_purchase(1, &at(), [0; 4]).to_bytes();
    bad[5 + 4 + 2] = 0x13; // month 13
    assert_eq!(card.transmit(&bad), vec![0x6A, 0x80]);
    // UPDATE CAPP DATA CACHE only in a compound purchase.
    ok(&mut card, &commands::initialize_for_purchase(1, Fen(10), &TERMINAL));
    assert_eq!(
        send(&mut card, &commands::update_capp_data_cache(1, &[1; 48])).status(),
        StatusWord::ConditionsNotSatisfied
    );
    assert_eq!(serde_json::to_string(card.image()).expect("json"), before);
    // The PSAM refuses a MAC2 that is not the card's.
    ok(&mut card, &commands::initialize_for_purchase(1, Fen(10), &TERMINAL));
    assert_eq!(
        send(&mut psam, &commands::psam::credit_for_purchase([0; 4])).status(),
        StatusWord::ConditionsNotSatisfied
    );
}

fn compound_record(identifier: u8, state: u8, fare: u32) -> Vec<u8> {
    let mut record = vec![0u8; 48];
    record[0] = identifier;
    record[1] = 46;
    record[3] = state;
    record[34..38].copy_from_slice(&fare.to_be_bytes());
    record
}

#[test]
fn compound_purchase_writes_the_transit_record_with_the_debit() {
    let mut card = new_card(0, Fen(1_000));
    let mut psam = new_psam();
    select_purse(&mut card);
    // Tap in: amount 0, the bus record says "in".
    let tap_in = compound_record(issue::COMPOUND_BUS, 1, 0);
    let done = purchase(&mut card, &mut psam, Fen(0), &[(issue::COMPOUND_BUS, tap_in.clone())]).expect("tap in");
    assert_eq!(ok(&mut card, &commands::read_record_by_identifier(0x17, issue::COMPOUND_BUS)), tap_in);
    let record = TransactionRecord::parse(&ok(&mut card, &commands::read_record(0x18, 1))).expect("23");
    assert_eq!(record.kind, TransactionType::CompoundPurchase);
    assert_eq!(done.number, 1);
    // Tap out: the fare and the record together.
    let tap_out = compound_record(issue::COMPOUND_BUS, 2, 300);
    purchase(&mut card, &mut psam, Fen(300), &[(issue::COMPOUND_BUS, tap_out.clone())]).expect("tap out");
    assert_eq!(balance(&mut card), Fen(700));
    assert_eq!(ok(&mut card, &commands::read_record_by_identifier(0x17, issue::COMPOUND_BUS)), tap_out);
    // A cached record whose DEBIT never comes is never written.
    ok(&mut card, &commands::initialize_for_capp_purchase(1, Fen(0), &TERMINAL));
    ok(&mut card, &commands::update_capp_data_cache(issue::COMPOUND_BUS, &compound_record(1, 1, 0)));
    card.power_off();
    card.power_on();
    select_purse(&mut card);
    assert_eq!(ok(&mut card, &commands::read_record_by_identifier(0x17, issue::COMPOUND_BUS)), tap_out);
    // Wrong length and wrong identifier are refused.
    ok(&mut card, &commands::initialize_for_capp_purchase(1, Fen(0), &TERMINAL));
    assert_eq!(send(&mut card, &commands::update_capp_data_cache(1, &[1; 47])).status(), StatusWord::WrongLength);
    ok(&mut card, &commands::initialize_for_capp_purchase(1, Fen(0), &TERMINAL));
    assert_eq!(
        send(&mut card, &commands::update_capp_data_cache(2, &compound_record(1, 1, 0))).status(),
        StatusWord::WrongData
    );
}

#[test]
fn application_block_and_unblock_with_the_psam_mac() {
    let mut card = new_card(0, Fen(500));
    let mut psam = new_psam();
    select_purse(&mut card);
    // No challenge, then a wrong MAC.
    assert_eq!(send(&mut card, &commands::application_block([0; 4])).status(), StatusWord::ReferencedDataInvalidated);
    ok(&mut card, &commands::get_challenge(4));
    assert_eq!(send(&mut card, &commands::application_block([0; 4])).status(), StatusWord::SecureMessagingIncorrect);
    let mac = maintenance_mac(&mut card, &mut psam, 0x1E, 0x00);
    ok(&mut card, &commands::application_block(mac));
    assert_eq!(card.image().files.df(card_host::card::fs::DfRef::Application(1)).state, ApplicationState::Blocked);
    assert_eq!(send(&mut card, &commands::get_balance()).status(), StatusWord::FunctionNotSupported);
    assert_eq!(send(&mut card, &commands::select_by_name(&PURSE_AID)).status(), StatusWord::SelectedFileInvalidated);
    assert_eq!(
        send(&mut card, &commands::initialize_for_purchase(1, Fen(1), &TERMINAL)).status(),
        StatusWord::FunctionNotSupported
    );
    assert_eq!(send(&mut card, &commands::read_binary(0x15, 0, 30)).status(), StatusWord::FunctionNotSupported);
    // Other applications still work.
    ok(&mut card, &commands::select_by_name(SOCIAL_SECURITY_NAME));
    // Unblock: the serial must come from the image, as the blocked purse will not be read.
    assert_eq!(send(&mut card, &commands::select_by_name(&PURSE_AID)).status(), StatusWord::SelectedFileInvalidated);
    let serial = card.image().serial.0;
    let challenge: [u8; 4] = ok(&mut card, &commands::get_challenge(4)).try_into().expect("4");
    ok(&mut psam, &commands::psam::diversify_maintenance(serial));
    let mac: [u8; 4] =
        ok(&mut psam, &commands::psam::mac(challenge, &commands::maintenance_mac_input(0x18, 0, 0, &[])))
            .try_into()
            .expect("4");
    ok(&mut card, &commands::application_unblock(mac));
    assert_eq!(balance(&mut card), Fen(500));
}

#[test]
fn secure_messaging_guards_updates() {
    let mut card = new_card(0, Fen(0));
    select_purse(&mut card);
    // Plain UPDATE BINARY of the public information: secure messaging required.
    let plain = Command::new(0x00, 0xD6, 0x95, 28).with_data(vec![0x02]);
    assert_eq!(send(&mut card, &plain).status(), StatusWord::SecureMessagingMissing);
    // With a MAC under the maintenance key: the card type becomes student.
    let challenge: [u8; 4] = ok(&mut card, &commands::get_challenge(4)).try_into().expect("4");
    let keys = master_keys();
    let key = crypto::diversify(keys.algorithm, &keys.maintenance, &card.image().serial.0);
    let input = [0x04, 0xD6, 0x95, 28, 5, 0x02];
    let mac = crypto::secure_messaging_mac(keys.algorithm, &key, challenge, &input);
    let mut data = vec![0x02];
    data.extend_from_slice(&mac);
    ok(&mut card, &Command::new(0x04, 0xD6, 0x95, 28).with_data(data.clone()));
    let public = PublicInformation::parse(&ok(&mut card, &commands::read_binary(0x15, 0, 30))).expect("30");
    assert_eq!(public.card_type, 0x02);
    // The same MAC again: the challenge was used up.
    assert_eq!(
        send(&mut card, &Command::new(0x04, 0xD6, 0x95, 28).with_data(data)).status(),
        StatusWord::ReferencedDataInvalidated
    );
    // Files that only purse commands write.
    assert_eq!(
        send(&mut card, &Command::new(0x00, 0xDC, 1, (0x18 << 3) | 4).with_data(vec![0; 23])).status(),
        StatusWord::SecurityStatusNotSatisfied
    );
}

#[test]
fn medical_visits_are_appended_after_the_pin() {
    let mut card = new_card(2, Fen(0));
    ok(&mut card, &commands::select_by_name(&MEDICAL_AID));
    assert_eq!(send(&mut card, &commands::read_binary(0x01, 0, 32)).status(), StatusWord::SecurityStatusNotSatisfied);
    ok(&mut card, &commands::verify_pin(&pin_from_digits("123456").expect("digits")));
    let patient = ok(&mut card, &commands::read_binary(0x01, 0, 32));
    assert_eq!(&patient[..11], b"P3100000000");
    assert_eq!(patient[20], 2, "blood type B");
    assert_eq!(u16::from_be_bytes([patient[22], patient[23]]), 0b1100, "aspirin and iodine");
    let visit = [0x20, 0x26, 0x11, 0x24, 0x31, 0, 0, 0, 0, 0x01, 0x00, 0x12, 0x01, 0, 0, 0];
    ok(&mut card, &commands::append_record(0x02, &visit));
    assert_eq!(ok(&mut card, &commands::read_record(0x02, 1)), visit.to_vec());
}

#[test]
fn malformed_and_unknown_commands_get_status_words() {
    let mut card = new_card(0, Fen(0));
    assert_eq!(card.transmit(&[]), vec![0x67, 0x00]);
    assert_eq!(card.transmit(&[0x00, 0xA4, 0x04]), vec![0x67, 0x00]);
    assert_eq!(card.transmit(&[0x00, 0xA4, 0x04, 0x00, 0x05, 0xA0]), vec![0x67, 0x00]);
    assert_eq!(card.transmit(&[0xA0, 0xA4, 0x00, 0x00]), vec![0x6E, 0x00]);
    assert_eq!(card.transmit(&[0x00, 0x01, 0x00, 0x00]), vec![0x6D, 0x00]);
    assert_eq!(card.transmit(&[0x80, 0x5C, 0x00, 0x02, 0x04]), vec![0x6D, 0x00], "GET BALANCE outside the purse");
    assert_eq!(card.transmit(&[0x00, 0xB0, 0x00, 0x00, 0x04]), vec![0x69, 0x86], "no current EF");
    select_purse(&mut card);
    assert_eq!(card.transmit(&[0x00, 0xB0, 0x95, 0x40, 0x04]), vec![0x6B, 0x00], "offset past the end");
    assert_eq!(card.transmit(&[0x00, 0xB2, 0x01, 0xC4, 0x17]), vec![0x6A, 0x83], "no record yet");
    assert_eq!(card.transmit(&[0x00, 0xB0, 0x98, 0x00, 0x04]), vec![0x69, 0x81], "READ BINARY of a record file");
    assert_eq!(card.transmit(&[0x00, 0xB2, 0x01, 0xF4, 0x17]), vec![0x6A, 0x82], "no such SFI");
    assert_eq!(card.transmit(&[0x00, 0x84, 0x00, 0x00, 0x05]), vec![0x67, 0x00], "challenge of 5 bytes");
    assert_eq!(card.transmit(&[0x80, 0x5C, 0x00, 0x01, 0x04]), vec![0x6A, 0x86], "no e-deposit");
}

/// Vector A (card-protocol digest §6, a real card log from ConardLKL/ChangSha
/// `doc/华大智宝/t2_load.txt`) replayed through our card's APDUs: same card
/// random, same keys, same MAC1 out, same TAC for the same MAC2 in.
#[test]
fn vector_a_load_through_the_card() {
    let hex16 = |text: &str| Key16::parse_hex(text).expect("hex key");
    let keys = CardKeys {
        algorithm: Algorithm::TripleDes,
        purchase: vec![IndexedKey { index: 1, version: 1, key: hex16("A338D92A10C8285411E761445C831C22") }],
        load: vec![IndexedKey { index: 1, version: 1, key: hex16("374598B5C0B0EAE1E1D06609AC5BB369") }],
        tac: hex16("CAA6025290114BFCC3C9043F70F7A07A"),
        maintenance: hex16("78BBDFD3CECA48FD7BD5F6AE69882C60"),
        pin_reload: hex16("00000000000000000000000000000000"),
        external_auth: hex16("00000000000000000000000000000000"),
    };
    let image = issue::build_image(&cardholder(0), keys.clone(), &options(Fen(0))).expect("image");
    let mut card = CitizenCard::with_seed(image, Storage::Memory, 1);
    card.power_on();
    select_purse(&mut card);
    card.script_randoms(&[0xCD, 0xEF, 0x4F, 0x20]);
    let terminal = TerminalNumber::parse_hex("000001000050").expect("hex");
    let init = ok(&mut card, &commands::initialize_for_load(1, Fen(0x1C37), &terminal));
    assert_eq!(hex::encode_upper(init), "0000000000000100CDEF4F2006B1BEF5");
    let at = CardDateTime::from_slice(&hex::decode("20140825103100").expect("hex")).expect("valid");
    let tac = ok(&mut card, &commands::credit_for_load(&at, [0x06, 0x41, 0xDC, 0xD8]));
    assert_eq!(hex::encode_upper(tac), "ED0F8755");

    // Vector B (t7_purchase.py): the compound purchase's TAC and MAC2 come out of
    // our card's DEBIT. The log's MAC1 covers 住建部's extra 9 bytes; ours is the
    // standard MAC1, so the test computes it.
    let mut image = issue::build_image(&cardholder(0), keys, &options(Fen(0x1C37))).expect("image");
    image.purse.issued = Fen(0x1C37);
    let mut card = CitizenCard::with_seed(image, Storage::Memory, 1);
    card.power_on();
    select_purse(&mut card);
    card.script_randoms(&[0x9A, 0xC8, 0x75, 0x03]);
    let terminal = TerminalNumber::parse_hex("000000000001").expect("hex");
    let init = ok(&mut card, &commands::initialize_for_capp_purchase(1, Fen(0x1C37), &terminal));
    assert_eq!(hex::encode_upper(&init), "00001C37000000000001009AC87503");
    let at = CardDateTime::from_slice(&hex::decode("20110919204812").expect("hex")).expect("valid");
    let dpk = hex16("A338D92A10C8285411E761445C831C22");
    let session = crypto::purchase_session_key(Algorithm::TripleDes, &dpk, [0x9A, 0xC8, 0x75, 0x03], 0, 1);
    let mac1 = crypto::purse::purchase_mac1(&session, Fen(0x1C37), TransactionType::CompoundPurchase, &terminal, &at);
    let answer = ok(&mut card, &commands::debit_for_purchase(1, &at, mac1));
    assert_eq!(hex::encode_upper(answer), "44A8E04A350AC480");
    assert_eq!(balance(&mut card), Fen(0));
}

#[test]
fn issued_image_round_trips_through_its_file() {
    let directory = std::env::temp_dir().join(format!("card-host-image-{}", std::process::id()));
    std::fs::create_dir_all(&directory).expect("temp dir");
    let path = directory.join("card.json");
    let image = issue::issue(&cardholder(3), &master_keys(), &options(Fen(4_200))).expect("issue");
    card_host::storage::create(&path, &image, true).expect("written");
    let mut card = CitizenCard::open(&path).expect("opens");
    card.power_on();
    let mut psam = new_psam();
    select_purse(&mut card);
    purchase(&mut card, &mut psam, Fen(200), &[]).expect("purchase");
    drop(card);
    let mut card = CitizenCard::open(&path).expect("reopens");
    card.power_on();
    select_purse(&mut card);
    assert_eq!(balance(&mut card), Fen(4_000));
    assert_eq!(card.image().purse.offline_counter, 1);
    // A tampered balance is refused on load.
    let text = std::fs::read_to_string(&path).expect("read").replace("\"balance\": 4000", "\"balance\": 9000");
    std::fs::write(&path, text).expect("write");
    assert!(matches!(CitizenCard::open(&path), Err(card_host::card::ImageError::Inconsistent(_))));
    std::fs::remove_dir_all(&directory).ok();
}

#[test]
fn sm4_cards_work_the_same_way() {
    let keys = card_host::issue::MasterKeySet::load(&issue::fixtures::test_keyset_sm4()).expect("SM4 key set");
    let image = issue::issue(&cardholder(4), &keys, &options(Fen(1_000))).expect("issue");
    let mut card = CitizenCard::with_seed(image, Storage::Memory, 3);
    card.power_on();
    let mut psam = card_host::psam::Psam::new(card_host::psam::Psam::issue(&keys, TERMINAL, 1), Storage::Memory);
    psam.power_on();
    select_purse(&mut card);
    let done = purchase(&mut card, &mut psam, Fen(150), &[]).expect("SM4 purchase");
    let dtk = crypto::diversify(Algorithm::Sm4, &keys.tac, &card.image().serial.0);
    let expected = crypto::purse::purchase_tac(
        Algorithm::Sm4,
        &dtk,
        Fen(150),
        TransactionType::PursePurchase,
        &TERMINAL,
        done.terminal_serial,
        &at(),
    );
    assert_eq!(done.debit.tac, expected);
    assert_eq!(balance(&mut card), Fen(850));
}

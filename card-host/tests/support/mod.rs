//! Test support: issue cards on the fixtures, and play the terminal, PSAM and
//! host sides of the purse flows through the cards' own APDUs.
#![allow(dead_code)]

use card_host::card::CitizenCard;
use card_host::commands;
use card_host::crypto;
use card_host::issue::{self, Cardholder, IssueOptions, MasterKeySet, ProfileFile};
use card_host::psam::Psam;
use card_host::responses::{Debit, LoadInitialization, PsamPurchase, PurchaseInitialization};
use card_host::storage::Storage;
use card_host::{CardDateTime, Command, Fen, Response, SmartCard, StatusWord, TerminalNumber, TransactionType};

pub const TERMINAL: TerminalNumber = TerminalNumber([0x31, 0x00, 0x00, 0x00, 0x00, 0x01]);
pub const LOAD_TERMINAL: TerminalNumber = TerminalNumber([0x31, 0x00, 0x00, 0x00, 0x09, 0x01]);

pub fn master_keys() -> MasterKeySet {
    MasterKeySet::load(&issue::fixtures::test_keyset()).expect("test key set")
}

pub fn cardholder(number: usize) -> Cardholder {
    ProfileFile::load(&issue::fixtures::cardholders()).expect("profiles").cardholder(number).expect("profile").clone()
}

pub fn at() -> CardDateTime {
    CardDateTime::new(2026, 11, 24, 8, 30, 0).expect("valid")
}

pub fn options(balance: Fen) -> IssueOptions {
    IssueOptions { initial_balance: balance, issued_at: at(), ..IssueOptions::default() }
}

/// A card in memory, with randoms from a fixed seed.
pub fn new_card(profile: usize, balance: Fen) -> CitizenCard {
    let image = issue::issue(&cardholder(profile), &master_keys(), &options(balance)).expect("issue");
    let mut card = CitizenCard::with_seed(image, Storage::Memory, 7);
    card.power_on();
    card
}

pub fn new_psam() -> Psam {
    let mut psam = Psam::new(Psam::issue(&master_keys(), TERMINAL, 1), Storage::Memory);
    psam.power_on();
    psam
}

/// Sends a command as bytes, as a reader would, and parses the answer.
pub fn send(card: &mut dyn SmartCard, command: &Command) -> Response {
    Response::parse(&card.transmit(&command.to_bytes())).expect("card answers a response APDU")
}

/// Sends a command that must succeed; returns its data.
pub fn ok(card: &mut dyn SmartCard, command: &Command) -> Vec<u8> {
    let response = send(card, command);
    assert_eq!(response.status(), StatusWord::Ok, "{command:?}");
    response.data().to_vec()
}

pub fn select_purse(card: &mut dyn SmartCard) {
    ok(card, &commands::select_by_name(&issue::PURSE_AID));
}

pub fn balance(card: &mut dyn SmartCard) -> Fen {
    let data = ok(card, &commands::get_balance());
    Fen::from_bytes(data.try_into().expect("4 bytes"))
}

/// What a purchase leaves behind, for checks.
#[derive(Debug, Clone, Copy)]
pub struct PurchaseDone {
    pub debit: Debit,
    pub terminal_serial: u32,
    pub number: u16,
}

/// A purchase (or, with records, a compound purchase) as a terminal runs it:
/// INITIALIZE, PSAM MAC1, [UPDATE CAPP DATA CACHE], DEBIT, PSAM checks MAC2.
pub fn purchase(
    card: &mut dyn SmartCard,
    psam: &mut Psam,
    amount: Fen,
    compound_records: &[(u8, Vec<u8>)],
) -> Result<PurchaseDone, StatusWord> {
    let compound = !compound_records.is_empty();
    // A terminal reads the public information (the serial) before INITIALIZE:
    // any command between INITIALIZE and DEBIT ends the purchase.
    let serial = card_serial(card);
    let initialize = if compound {
        commands::initialize_for_capp_purchase(1, amount, &TERMINAL)
    } else {
        commands::initialize_for_purchase(1, amount, &TERMINAL)
    };
    let init = PurchaseInitialization::parse(&send(card, &initialize).into_result()?).expect("15 bytes");
    let kind = if compound { TransactionType::CompoundPurchase } else { TransactionType::PursePurchase };
    let input = commands::psam::PurchaseInput {
        card_random: init.card_random,
        offline_counter: init.offline_counter,
        amount,
        kind,
        at: at(),
        key_version: init.key_version,
        algorithm_id: init.algorithm_id,
        application_serial: serial,
        higher_factors: &[],
    };
    let sam =
        PsamPurchase::parse(&send(psam, &commands::psam::init_for_purchase(&input)).into_result()?).expect("8 bytes");
    for (identifier, record) in compound_records {
        send(card, &commands::update_capp_data_cache(*identifier, record)).into_result()?;
    }
    let debit =
        Debit::parse(&send(card, &commands::debit_for_purchase(sam.terminal_serial, &at(), sam.mac1)).into_result()?)
            .expect("8 bytes");
    send(psam, &commands::psam::credit_for_purchase(debit.mac2)).into_result()?;
    Ok(PurchaseDone { debit, terminal_serial: sam.terminal_serial, number: init.offline_counter + 1 })
}

/// The application serial number from the public-information file.
pub fn card_serial(card: &mut dyn SmartCard) -> [u8; 8] {
    let public = ok(card, &commands::read_binary(0x15, 0, 30));
    public[12..20].try_into().expect("8 bytes")
}

/// A load as the host side computes it from the master keys (later: the HSM).
/// The purse must be selected.
pub fn load(card: &mut dyn SmartCard, amount: Fen) -> Result<[u8; 4], StatusWord> {
    let serial = card_serial(card);
    let init = LoadInitialization::parse(
        &send(card, &commands::initialize_for_load(1, amount, &LOAD_TERMINAL)).into_result()?,
    )
    .expect("16 bytes");
    let keys = master_keys();
    let dlk = crypto::diversify(keys.algorithm, &keys.load[0].key, &serial);
    let session = crypto::load_session_key(keys.algorithm, &dlk, init.card_random, init.online_counter);
    let mac1 = crypto::purse::load_mac1(&session, init.balance, amount, TransactionType::PurseLoad, &LOAD_TERMINAL);
    assert_eq!(mac1, init.mac1, "the card's MAC1 verifies on the host side");
    let mac2 = crypto::purse::load_mac2(&session, amount, TransactionType::PurseLoad, &LOAD_TERMINAL, &at());
    let tac = send(card, &commands::credit_for_load(&at(), mac2)).into_result()?;
    Ok(tac.try_into().expect("4 bytes"))
}

/// The maintenance MAC for a command, made by the PSAM from the card's challenge.
pub fn maintenance_mac(card: &mut dyn SmartCard, psam: &mut Psam, ins: u8, p2: u8) -> [u8; 4] {
    let serial = card_serial(card);
    let challenge: [u8; 4] = ok(card, &commands::get_challenge(4)).try_into().expect("4 bytes");
    ok(psam, &commands::psam::diversify_maintenance(serial));
    let input = commands::maintenance_mac_input(ins, 0x00, p2, &[]);
    ok(psam, &commands::psam::mac(challenge, &input)).try_into().expect("4 bytes")
}

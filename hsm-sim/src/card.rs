//! The card functions of the HSM, over card-host's crypto (the one implementation
//! of the card algorithms in the workspace): the card key is diversified from the
//! master key by the application serial number, as card-host issues cards.

use card_host::crypto::{self, Algorithm, Key16, purse};

use crate::command::{LoadAuthorisation, LoadTac, MaintenanceFunction, PurchaseTac, TacRecord};
use crate::error::ErrorCode;

/// Checks a purchase TAC with the TAC master key.
pub fn verify_purchase_tac(algorithm: Algorithm, tac_master: &Key16, record: &PurchaseTac) -> bool {
    let dtk = crypto::diversify(algorithm, tac_master, &record.serial.0);
    let expected = purse::purchase_tac(
        algorithm,
        &dtk,
        record.amount,
        record.kind,
        &record.terminal,
        record.terminal_serial,
        &record.at,
    );
    crypto::constant_time_eq(&expected, &record.tac)
}

/// Checks a load TAC with the TAC master key.
pub fn verify_load_tac(algorithm: Algorithm, tac_master: &Key16, record: &LoadTac) -> bool {
    let dtk = crypto::diversify(algorithm, tac_master, &record.serial.0);
    let expected = purse::load_tac(
        algorithm,
        &dtk,
        record.new_balance,
        record.online_counter,
        record.amount,
        record.kind,
        &record.terminal,
        &record.at,
    );
    crypto::constant_time_eq(&expected, &record.tac)
}

pub fn verify_tac(algorithm: Algorithm, tac_master: &Key16, record: &TacRecord) -> bool {
    match record {
        TacRecord::Purchase(record) => verify_purchase_tac(algorithm, tac_master, record),
        TacRecord::Load(record) => verify_load_tac(algorithm, tac_master, record),
    }
}

/// Online top-up: checks the card's MAC1 under the load session key and, if it
/// is right, makes MAC2 for CREDIT FOR LOAD. A wrong MAC1 is error `01`.
pub fn authorise_load(
    algorithm: Algorithm,
    load_master: &Key16,
    load: &LoadAuthorisation,
) -> Result<[u8; 4], ErrorCode> {
    let dlk = crypto::diversify(algorithm, load_master, &load.serial.0);
    let session = crypto::load_session_key(algorithm, &dlk, load.card_random, load.online_counter);
    let expected = purse::load_mac1(&session, load.old_balance, load.amount, load.kind, &load.terminal);
    if !crypto::constant_time_eq(&expected, &load.mac1) {
        return Err(ErrorCode::VerificationFailure);
    }
    if load.old_balance.checked_add(load.amount).is_none() {
        return Err(ErrorCode::InputData);
    }
    Ok(purse::load_mac2(&session, load.amount, load.kind, &load.terminal, &load.at))
}

/// The MAC of a card maintenance command (APPLICATION BLOCK/UNBLOCK with the
/// card's maintenance key, PIN RELOAD with its PIN-reload key): secure
/// messaging over the card's challenge, the header with CLA `84`.
pub fn maintenance_mac(
    algorithm: Algorithm,
    card_key: &Key16,
    challenge: [u8; 4],
    function: &MaintenanceFunction,
) -> [u8; 4] {
    let (ins, p1, p2, data) = function.command();
    let input = card_host::commands::maintenance_mac_input(ins, p1, p2, data);
    crypto::secure_messaging_mac(algorithm, card_key, challenge, &input)
}

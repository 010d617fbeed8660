//! The bodies of the fuzz targets (`card-host/fuzz`), kept in the library so the
//! ordinary test suite runs them too, on random and hand-picked inputs.

use std::sync::OnceLock;

use crate::apdu::{Command, Response};
use crate::card::CitizenCard;
use crate::icc::SmartCard;
use crate::issue::{self, IssueOptions, MasterKeySet, ProfileFile};
use crate::model::{CardDateTime, Fen};
use crate::status::StatusWord;
use crate::storage::Storage;

/// Most APDUs one fuzz input is split into.
pub const APDUS_PER_INPUT_MAX: usize = 64;

/// Decoders of untrusted bytes: none may panic, and what decodes re-encodes.
pub fn decoders(data: &[u8]) {
    if let Ok(command) = Command::parse(data) {
        let again = Command::parse(&command.to_bytes()).expect("a parsed command re-encodes to a valid command");
        assert_eq!(again, command);
    }
    let _ = Response::parse(data);
    if let Ok(objects) = crate::tlv::parse_all(data) {
        let bytes: Vec<u8> = objects.iter().flat_map(crate::tlv::encode).collect();
        assert_eq!(crate::tlv::parse_all(&bytes).expect("re-encoded TLV parses"), objects);
    }
    let _ = crate::responses::TransactionRecord::parse(data);
    let _ = crate::responses::PublicInformation::parse(data);
}

fn test_image() -> &'static crate::card::CardImage {
    static IMAGE: OnceLock<crate::card::CardImage> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let profiles = ProfileFile::load(&issue::fixtures::cardholders()).expect("fixture profiles");
        let keys = MasterKeySet::load(&issue::fixtures::test_keyset()).expect("fixture keys");
        let options = IssueOptions {
            initial_balance: Fen(10_000),
            issued_at: CardDateTime::new(2026, 1, 1, 0, 0, 0).expect("valid"),
            ..IssueOptions::default()
        };
        issue::issue(profiles.cardholder(0).expect("profile"), &keys, &options).expect("issue")
    })
}

/// Splits `data` into APDUs (a length byte, then that many bytes) and sends them
/// to a fresh card. Checks: no panic, every answer is a response APDU, and a
/// refused command leaves the card's non-volatile state as it was (a wrong PIN,
/// which must count the try, is the one refusal that changes it).
pub fn card_dispatch(data: &[u8]) {
    let mut card = CitizenCard::with_seed(test_image().clone(), Storage::Memory, 0);
    card.power_on();
    let mut rest = data;
    for _ in 0..APDUS_PER_INPUT_MAX {
        let Some((&length, tail)) = rest.split_first() else {
            break;
        };
        let length = usize::from(length).min(tail.len());
        let (apdu, tail) = tail.split_at(length);
        rest = tail;
        let before = serde_json::to_vec(card.image()).expect("image serialises");
        let answer = card.transmit(apdu);
        let response = Response::parse(&answer).expect("the card always answers a status word");
        let counts_a_try = matches!(response.status(), StatusWord::PinTriesLeft(_) | StatusWord::AuthenticationBlocked);
        if !response.status().is_ok() && !counts_a_try {
            let after = serde_json::to_vec(card.image()).expect("image serialises");
            assert!(before == after, "refused command {} changed the card", hex::encode_upper(apdu));
        }
        assert!(card.image().purse.is_consistent(), "purse inconsistent after {}", hex::encode_upper(apdu));
    }
}

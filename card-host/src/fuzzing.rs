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

/// Most PN532 commands one fuzz input is split into.
pub const PN532_COMMANDS_PER_INPUT_MAX: usize = 64;

/// Checks that the bytes a PN532 emulator answered are whole, valid frames
/// from the PN532 (ACKs, error frames, responses), never a NACK.
fn assert_pn532_output(out: &[u8]) {
    use crate::pn532::{Decoder, Direction, Frame};
    let mut decoder = Decoder::new();
    decoder.push(out);
    while let Some(outcome) = decoder.next_frame() {
        match outcome.expect("the emulator sends only valid frames") {
            Frame::Information(answer) => assert_eq!(answer.direction(), Direction::Pn532ToHost),
            Frame::Ack | Frame::Error => {}
            Frame::Nack => panic!("the emulator never sends NACK"),
        }
    }
    assert_eq!(decoder.pending(), 0, "no partial frame in the emulator's output");
}

/// The PN532 frame decoder and emulator on untrusted bytes. The first byte
/// picks a chunk size; the rest goes (1) through the streaming decoder in those
/// chunks and the one-shot parser: no panic, a bounded buffer, and every frame
/// re-encodes to bytes that parse back to it; (2) raw into an emulated PN532
/// with a citizen card in its field; (3) split into commands (a length byte,
/// then code and parameters) sent as valid frames to a fresh emulator. The
/// emulators' output must be valid PN532-to-host frames.
pub fn pn532_frames(data: &[u8]) {
    use crate::pn532::frame::{self, FRAME_LENGTH_MAX};
    use crate::pn532::{Decoder, Information, Pn532, Uid};
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(mode % 32) + 1;
    let mut decoder = Decoder::new();
    for piece in rest.chunks(chunk) {
        decoder.push(piece);
        while let Some(outcome) = decoder.next_frame() {
            if let Ok(decoded) = outcome {
                let bytes = decoded.to_bytes();
                assert!(bytes.len() <= FRAME_LENGTH_MAX);
                assert_eq!(frame::parse(&bytes), Ok(decoded), "a decoded frame re-encodes");
            }
        }
        assert!(decoder.pending() <= FRAME_LENGTH_MAX, "the decoder holds at most one frame");
    }
    if let Ok(parsed) = frame::parse(rest) {
        assert_eq!(frame::parse(&parsed.to_bytes()), Ok(parsed));
    }

    let card = || CitizenCard::with_seed(test_image().clone(), Storage::Memory, 0);
    let mut chip = Pn532::new(card(), Uid::random_single([1, 2, 3])).with_chunk_max(chunk * 8);
    for piece in rest.chunks(chunk) {
        assert_pn532_output(&chip.receive(piece));
    }

    let cards = vec![(card(), Uid::random_single([1, 2, 3])), (card(), Uid::random_single([4, 5, 6]))];
    let mut chip = Pn532::with_cards(cards).expect("two cards").with_chunk_max(chunk * 8);
    let control = chip.control();
    let mut rest = rest;
    for index in 0..PN532_COMMANDS_PER_INPUT_MAX {
        let Some((&length, tail)) = rest.split_first() else {
            break;
        };
        let length = usize::from(length).min(tail.len());
        let (command, tail) = tail.split_at(length);
        rest = tail;
        let Some((&code, parameters)) = command.split_first() else {
            continue;
        };
        if index == usize::from(mode % 16) {
            control.set_present(usize::from(mode & 0x01), false);
        }
        if let Ok(information) = Information::command(code, parameters) {
            let out = chip.receive(&information.to_bytes());
            assert!(out.starts_with(&frame::ACK), "a valid command is acknowledged");
            assert_pn532_output(&out);
        }
    }
    for slot in chip.into_cards() {
        assert!(slot.image().purse.is_consistent());
    }
}

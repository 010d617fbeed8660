//! The `pn532_driver` fuzz target's body (`terminal/fuzz`) on hand-made lines
//! and seeded random ones, so every test run fuzzes the driver a little.

use card_host::pn532::command::code;
use terminal::reader::fuzzing::{Reached, pn532_driver};

/// A segment of the body's structured input: tag, length, bytes.
fn segment(tag: u8, bytes: &[u8]) -> Vec<u8> {
    let mut segment = vec![tag, u8::try_from(bytes.len()).expect("short")];
    segment.extend_from_slice(bytes);
    segment
}

const ACK: u8 = 1;
const ANSWER: u8 = 2;
const BROKEN: u8 = 3;
const RAW: u8 = 0;

fn answer(code: u8, parameters: &[u8]) -> Vec<u8> {
    segment(ANSWER, &[&[code], parameters].concat())
}

/// A PN532 that answers the driver's start-up, lists a card and exchanges APDUs.
fn session(mode: u8, noise: bool) -> Vec<u8> {
    let target = [0x01, 0x01, 0x00, 0x04, 0x20, 0x04, 0x08, 0x01, 0x02, 0x03, 0x05, 0x78, 0x80, 0x81, 0x02];
    let mut line = vec![mode];
    let mut push = |pieces: Vec<Vec<u8>>| {
        for piece in pieces {
            if noise {
                line.extend(segment(RAW, &[0x00, 0xFF, 0x13, 0x00, 0x00, 0xFF]));
            }
            line.extend(piece);
        }
    };
    push(vec![segment(ACK, &[]), answer(code::SAM_CONFIGURATION, &[])]);
    push(vec![segment(ACK, &[]), answer(code::GET_FIRMWARE_VERSION, &[0x32, 0x01, 0x06, 0x07])]);
    push(vec![segment(ACK, &[]), answer(code::IN_LIST_PASSIVE_TARGET, &target)]);
    // SELECT answered in two chained parts, the first one broken once.
    push(vec![segment(ACK, &[]), segment(BROKEN, &[code::IN_DATA_EXCHANGE, 0x40, 0x6F])]);
    push(vec![answer(code::IN_DATA_EXCHANGE, &[0x40, 0x6F, 0x10])]);
    push(vec![segment(ACK, &[]), answer(code::IN_DATA_EXCHANGE, &[0x00, 0x90, 0x00])]);
    // GET BALANCE: the card is gone.
    push(vec![segment(ACK, &[]), answer(code::IN_DATA_EXCHANGE, &[0x01])]);
    push(vec![segment(ACK, &[]), answer(code::IN_RELEASE, &[0x00])]);
    line
}

#[test]
fn hand_made_lines() {
    for mode in [0x00, 0x02, 0x04, 0x0C, 0x20, 0x22, 0xF0, 0xF2, 0x5C] {
        for noise in [false, true] {
            let reached = pn532_driver(&session(mode, noise));
            // Released reply by reply, in 262-byte chunks, the session goes through: woken,
            // listed, SELECT answered (chained, a broken part NACKed), GET
            // BALANCE finds the card gone, the long APDU too.
            if mode & (2 | 4 | 0x20) == 0 {
                assert_eq!(
                    reached,
                    Reached { woke: true, listed: true, answers: 1, removed: 2 },
                    "mode {mode:#04X} noise {noise}"
                );
            }
        }
    }
    // Raw line noise, a wake-up echo, a frame cut short, a huge extended length.
    pn532_driver(&[0x03, 0x55, 0x55, 0x00, 0x00, 0xFF, 0x02, 0xFE, 0xD5, 0x15]);
    pn532_driver(&[0x01, 0x00, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x02, 0xD5, 0x41]);
    pn532_driver(&[0x01, 0x00, 0x00, 0xFF, 0x00, 0xFF, 0x00, 0x00, 0x00, 0xFF, 0xFF, 0x00, 0x00]);
    pn532_driver(&[]);
    pn532_driver(&[0x02]);
}

#[test]
fn seeded_random_lines() {
    // xorshift64*, fixed seed: the same inputs every run.
    let mut state = 0x5EED_u64;
    let mut next = move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    for _ in 0..300 {
        let length = (next() % 400) as usize;
        let mut data: Vec<u8> = (0..length).map(|_| next() as u8).collect();
        if let Some(mode) = data.first_mut() {
            *mode &= 0xFE; // mostly structured segments, which reach deeper
        }
        pn532_driver(&data);
    }
}

//! Bodies of the terminal's fuzz targets (`terminal/fuzz`), public so that the
//! test suite runs them too (`terminal/tests/fuzz_bodies.rs`).

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::time::Duration;

use card_host::pn532::Information;
use card_host::pn532::command::{DATA_EXCHANGE_CHUNK_MAX, SAK_ISO14443_4};
use card_host::pn532::frame::{ACK, ERROR, NACK};

use super::pn532::{Pn532Options, Pn532Reader, RESPONSE_FRAMES_MAX, WAKE_UP};
use super::{CHAINED_RESPONSE_MAX, Channel, ReaderError};

/// Driver calls one input makes (wake-up's two commands, the listing, three
/// APDUs, the release).
const CALLS: usize = 7;
/// Frames the driver may write for one call: every InDataExchange of a chained
/// answer, each sent up to 3 times and NACKed up to 3 times.
const WRITES_PER_CALL_MAX: usize = (RESPONSE_FRAMES_MAX + 1) * 6;

/// A piece of line, and whether it ends a reply (an answer frame, broken or
/// not, or the error frame).
type Piece = (Vec<u8>, bool);

/// A serial line that plays back what the fuzzer made: `eager`, it is all on
/// the line from the start; otherwise each frame the driver writes (but the
/// wake-up) releases the next piece, or with `by_reply` the pieces up to the
/// end of the next reply (a PN532's ACK and answer). Reads never block: an
/// empty line times out at once, so the driver's own (tiny) timeouts decide.
struct Playback {
    pieces: VecDeque<Piece>,
    line: VecDeque<u8>,
    read_chunk: usize,
    by_reply: bool,
    writes: usize,
}

impl Read for Playback {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        if self.line.is_empty() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        let count = buffer.len().min(self.read_chunk).min(self.line.len());
        for (slot, byte) in buffer.iter_mut().zip(self.line.drain(..count)) {
            *slot = byte;
        }
        Ok(count)
    }
}

impl Write for Playback {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.writes += 1;
        if bytes == WAKE_UP {
            return Ok(bytes.len());
        }
        while let Some((piece, ends_reply)) = self.pieces.pop_front() {
            self.line.extend(piece);
            if ends_reply || !self.by_reply {
                break;
            }
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The pieces of line the input describes: segments of a tag byte, a length
/// byte and that many bytes. Tag % 6: raw bytes; an ACK; a valid answer frame
/// (code, then parameters; checksums computed, so the fuzzer need not find
/// them); that frame with one byte flipped; a NACK; the error frame.
fn pieces(mut input: &[u8]) -> Vec<Piece> {
    let mut pieces = Vec::new();
    while let [tag, length, rest @ ..] = input {
        let length = usize::from(*length).min(rest.len());
        let (body, tail) = rest.split_at(length);
        input = tail;
        let piece = match tag % 6 {
            0 => (body.to_vec(), false),
            1 => (ACK.to_vec(), false),
            2 | 3 => {
                let Some((&code, parameters)) = body.split_first() else { continue };
                let Ok(frame) = Information::response(code, parameters) else { continue };
                let mut bytes = frame.to_bytes();
                if tag % 6 == 3 {
                    let at = usize::from(*tag) % bytes.len();
                    bytes[at] ^= 0x01 | tag.rotate_left(3);
                }
                (bytes, true)
            }
            4 => (NACK.to_vec(), false),
            _ => (ERROR.to_vec(), true),
        };
        pieces.push(piece);
    }
    pieces
}

/// How far the driver got with one input (for the tests of the body).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reached {
    /// The module woke up and said it is a PN532.
    pub woke: bool,
    /// A card was listed.
    pub listed: bool,
    /// APDUs answered.
    pub answers: usize,
    /// APDUs that found the card gone.
    pub removed: usize,
}

/// An error must say what went wrong.
fn check_error(error: &ReaderError) {
    assert!(!error.to_string().is_empty(), "{error:?} has an empty message");
}

/// The terminal's PN532 driver on a serial line of arbitrary bytes. The first
/// byte picks the delivery (all at once, or released reply by reply or piece
/// by piece as the driver writes; reads of 1 to 16 bytes); the rest is either raw line bytes (odd first byte) or
/// segments of raw bytes and well-formed frames. The driver wakes the module
/// up, lists a card, sends three APDUs (one longer than a frame, so chained)
/// and releases: no panic, every error with a message, a bounded number of
/// frames written, answers within the APDU limits, a listed card ISO 14443-4,
/// and a gone card forgotten.
pub fn pn532_driver(data: &[u8]) -> Reached {
    let mut reached = Reached::default();
    let Some((&mode, rest)) = data.split_first() else {
        return reached;
    };
    let pieces: VecDeque<Piece> = if mode & 1 == 1 { vec![(rest.to_vec(), true)].into() } else { pieces(rest).into() };
    let eager = mode & 2 != 0;
    let mut line = Playback {
        pieces,
        line: VecDeque::new(),
        read_chunk: usize::from(mode >> 4) + 1,
        by_reply: mode & 4 == 0,
        writes: 0,
    };
    if eager {
        while let Some((piece, _)) = line.pieces.pop_front() {
            line.line.extend(piece);
        }
    }
    let options = Pn532Options {
        ack_timeout: Duration::from_micros(200),
        answer_timeout: Duration::from_micros(400),
        chunk_max: if mode & 0x20 != 0 { 7 } else { DATA_EXCHANGE_CHUNK_MAX },
        quiet: Duration::from_micros(50),
    };
    let mut reader = Pn532Reader::with_options(line, options);
    match reader.wake_up() {
        Ok(_) => reached.woke = true,
        Err(error) => check_error(&error),
    }
    match reader.find_card() {
        Ok(Some(target)) => {
            reached.listed = true;
            assert!(target.sak & SAK_ISO14443_4 != 0, "a listed card speaks ISO 14443-4");
            assert_eq!(reader.target(), Some(&target));
        }
        Ok(None) => assert!(reader.target().is_none()),
        Err(error) => {
            check_error(&error);
            assert!(reader.target().is_none(), "no card after a failed listing: {error}");
        }
    }
    let select = [0x00, 0xA4, 0x04, 0x00, 0x08, 0xA0, 0x00, 0x00, 0x06, 0x32, 0x01, 0x01, 0x05, 0x00];
    let long = [0x5A; 300];
    for apdu in [&select[..], &[0x80, 0x5C, 0x00, 0x02, 0x04], &long] {
        match reader.transmit(apdu) {
            Ok(answer) => {
                assert!(answer.len() <= CHAINED_RESPONSE_MAX, "answer of {} bytes", answer.len());
                reached.answers += 1;
            }
            Err(ReaderError::CardRemoved) => {
                assert!(reader.target().is_none(), "a gone card is forgotten");
                reached.removed += 1;
            }
            Err(error) => check_error(&error),
        }
    }
    if let Err(error) = reader.release() {
        check_error(&error);
    }
    assert!(reader.target().is_none(), "released");
    let written = reader.into_port().writes;
    assert!(written <= 1 + CALLS * WRITES_PER_CALL_MAX, "{written} frames written");
    reached
}

//! The PN532 host-interface frames (PN532 user manual UM0701-02, §6.2.1), as
//! they travel on the serial line (HSU) in both directions.
//!
//! ```text
//! normal information frame    00 00 FF LEN LCS TFI PD0 .. PDn DCS 00
//! extended information frame  00 00 FF FF FF LENM LENL LCS TFI PD0 .. PDn DCS 00
//! ACK                         00 00 FF 00 FF 00
//! NACK                        00 00 FF FF 00 00
//! error (syntax error)        00 00 FF 01 FF 7F 81 00
//! ```
//!
//! `LEN` counts TFI and the data; `LEN + LCS` is 0 modulo 256 (for an extended
//! frame `LENM + LENL + LCS`); `TFI + PD0 + .. + PDn + DCS` is 0 modulo 256. TFI is
//! `D4` from the host to the PN532 and `D5` from the PN532 to the host. PD0 is
//! the command code (the PN532 answers command `cc` with `cc + 1`).
//!
//! [`Decoder`] is a streaming decoder: bytes go in as they arrive, whole frames
//! come out. Anything before a start code `00 FF` is skipped (the wake-up
//! `55 55 00 00 ..` sequence, line noise, the rest of a broken frame); a frame
//! whose checksums do not hold, whose length is out of bounds or whose
//! postamble is missing is reported as an error and scanning resumes right
//! after its start code, so a good frame hidden in the rubble is still found.
//! No input makes it panic, and it holds at most [`FRAME_LENGTH_MAX`] bytes of
//! an unfinished frame.

use std::fmt;

/// Frame identifier of a frame from the host controller to the PN532.
pub const TFI_HOST_TO_PN532: u8 = 0xD4;
/// Frame identifier of a frame from the PN532 to the host controller.
pub const TFI_PN532_TO_HOST: u8 = 0xD5;
/// Frame identifier of the error (syntax error) frame.
pub const TFI_ERROR: u8 = 0x7F;
/// The most data bytes (PD0..PDn, command code included) a normal frame carries:
/// LEN is one byte and counts the TFI too.
pub const NORMAL_DATA_MAX: usize = 254;
/// The most data bytes (PD0..PDn) of any frame: the PN532's 262-byte data
/// buffer plus the command code and one parameter (Tg or status), as libnfc's
/// `PN53x_EXTENDED_FRAME__DATA_MAX_LEN`.
pub const DATA_LENGTH_MAX: usize = 264;
/// The largest LEN an extended frame may announce (TFI + data).
pub const EXTENDED_LENGTH_MAX: usize = DATA_LENGTH_MAX + 1;
/// The longest frame on the line: preamble, start code, extended length,
/// LCS, TFI, data, DCS, postamble.
pub const FRAME_LENGTH_MAX: usize = 1 + 2 + 2 + 2 + 1 + 1 + DATA_LENGTH_MAX + 1 + 1;

/// The ACK frame.
pub const ACK: [u8; 6] = [0x00, 0x00, 0xFF, 0x00, 0xFF, 0x00];
/// The NACK frame: the receiver asks for the last frame again.
pub const NACK: [u8; 6] = [0x00, 0x00, 0xFF, 0xFF, 0x00, 0x00];
/// The error frame the PN532 sends for a syntax error at the application level.
pub const ERROR: [u8; 8] = [0x00, 0x00, 0xFF, 0x01, 0xFF, TFI_ERROR, 0x81, 0x00];

/// Which way an information frame travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// TFI `D4`: a command.
    HostToPn532,
    /// TFI `D5`: a response.
    Pn532ToHost,
}

impl Direction {
    pub fn tfi(self) -> u8 {
        match self {
            Direction::HostToPn532 => TFI_HOST_TO_PN532,
            Direction::Pn532ToHost => TFI_PN532_TO_HOST,
        }
    }
}

/// An information frame: a command to the PN532 or its response. Holds 1 to
/// [`DATA_LENGTH_MAX`] data bytes, the first being the command code.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Information {
    direction: Direction,
    data: Vec<u8>,
}

impl Information {
    /// A frame with `data` (PD0..PDn: the command code, then its parameters).
    pub fn new(direction: Direction, data: Vec<u8>) -> Result<Self, FrameError> {
        if data.is_empty() {
            return Err(FrameError::NoCommandCode);
        }
        if data.len() > DATA_LENGTH_MAX {
            return Err(FrameError::TooLong(data.len()));
        }
        Ok(Information { direction, data })
    }

    /// A command frame: `code` followed by `parameters`.
    pub fn command(code: u8, parameters: &[u8]) -> Result<Self, FrameError> {
        let mut data = Vec::with_capacity(1 + parameters.len());
        data.push(code);
        data.extend_from_slice(parameters);
        Information::new(Direction::HostToPn532, data)
    }

    /// The response to command `code`: `code + 1` followed by `parameters`.
    pub fn response(code: u8, parameters: &[u8]) -> Result<Self, FrameError> {
        let mut data = Vec::with_capacity(1 + parameters.len());
        data.push(code.wrapping_add(1));
        data.extend_from_slice(parameters);
        Information::new(Direction::Pn532ToHost, data)
    }

    pub fn direction(&self) -> Direction {
        self.direction
    }

    /// PD0..PDn.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// PD0: the command code (or, in a response, the command code + 1).
    pub fn code(&self) -> u8 {
        self.data[0]
    }

    /// PD1..PDn.
    pub fn parameters(&self) -> &[u8] {
        &self.data[1..]
    }

    /// The frame as it goes on the line: a normal frame when the data fits, an
    /// extended frame otherwise.
    pub fn to_bytes(&self) -> Vec<u8> {
        let length = self.data.len() + 1;
        let mut bytes = Vec::with_capacity(length + 10);
        bytes.extend_from_slice(&[0x00, 0x00, 0xFF]);
        if self.data.len() <= NORMAL_DATA_MAX {
            let length = length as u8;
            bytes.extend_from_slice(&[length, length.wrapping_neg()]);
        } else {
            let [high, low] = (length as u16).to_be_bytes();
            bytes.extend_from_slice(&[0xFF, 0xFF, high, low, high.wrapping_add(low).wrapping_neg()]);
        }
        let tfi = self.direction.tfi();
        bytes.push(tfi);
        bytes.extend_from_slice(&self.data);
        bytes.push(checksum(tfi, &self.data));
        bytes.push(0x00);
        bytes
    }
}

impl fmt::Debug for Information {
    /// The TFI, the code and the length: the parameters may carry an APDU with
    /// a PIN or cardholder data, so they never reach a log through `{:?}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.data.first() {
            Some(code) => {
                write!(f, "{:02X} {code:02X} ({} parameter bytes)", self.direction.tfi(), self.data.len() - 1)
            }
            None => write!(f, "{:02X} (empty)", self.direction.tfi()),
        }
    }
}

/// The DCS of a frame: what makes TFI + data + DCS zero modulo 256.
fn checksum(tfi: u8, data: &[u8]) -> u8 {
    data.iter().fold(tfi, |sum, byte| sum.wrapping_add(*byte)).wrapping_neg()
}

/// One frame from the line.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Frame {
    Ack,
    Nack,
    /// The PN532 found a syntax error in the last command.
    Error,
    Information(Information),
}

impl Frame {
    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            Frame::Ack => ACK.to_vec(),
            Frame::Nack => NACK.to_vec(),
            Frame::Error => ERROR.to_vec(),
            Frame::Information(information) => information.to_bytes(),
        }
    }
}

/// Why bytes on the line are not a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    #[error("length checksum does not hold (LEN {length:#04X}, LCS {checksum:#04X})")]
    LengthChecksum { length: u16, checksum: u8 },
    #[error("data checksum does not hold")]
    DataChecksum,
    #[error("frame length 0")]
    Empty,
    #[error("information frame without a command code")]
    NoCommandCode,
    #[error("frame of {0} data bytes exceeds {DATA_LENGTH_MAX}")]
    TooLong(usize),
    #[error("unknown frame identifier {0:#04X}")]
    UnknownTfi(u8),
    #[error("malformed error frame")]
    MalformedErrorFrame,
    #[error("postamble missing: {0:#04X} where 00 was due")]
    Postamble(u8),
    #[error("frame truncated")]
    Truncated,
}

/// What one look at the front of a buffer finds.
enum Scan {
    /// A whole frame (or a broken one) taking `length` bytes from the start code on.
    Done { length: usize, outcome: Result<Frame, FrameError> },
    /// A frame has begun but not all of it is here.
    Incomplete,
}

/// Parses the bytes after a start code `00 FF`.
fn parse_after_start(bytes: &[u8]) -> Scan {
    use Scan::{Done, Incomplete};
    let broken = |error| Done { length: 0, outcome: Err(error) };
    let (Some(&first), Some(&second)) = (bytes.first(), bytes.get(1)) else {
        return Incomplete;
    };
    let (length, header) = match (first, second) {
        (0x00, 0xFF) => return postamble(bytes, 2, Frame::Ack),
        (0xFF, 0x00) => return postamble(bytes, 2, Frame::Nack),
        (0xFF, 0xFF) => {
            let (Some(&high), Some(&low), Some(&checksum)) = (bytes.get(2), bytes.get(3), bytes.get(4)) else {
                return Incomplete;
            };
            let length = u16::from_be_bytes([high, low]);
            if high.wrapping_add(low).wrapping_add(checksum) != 0 {
                return broken(FrameError::LengthChecksum { length, checksum });
            }
            if usize::from(length) > EXTENDED_LENGTH_MAX {
                return broken(FrameError::TooLong(usize::from(length).saturating_sub(1)));
            }
            (usize::from(length), 5)
        }
        (length, checksum) => {
            if length.wrapping_add(checksum) != 0 {
                return broken(FrameError::LengthChecksum { length: u16::from(length), checksum });
            }
            (usize::from(length), 2)
        }
    };
    if length == 0 {
        return broken(FrameError::Empty);
    }
    // TFI + data, then DCS.
    let Some(body) = bytes.get(header..header + length) else {
        return Incomplete;
    };
    let Some(&dcs) = bytes.get(header + length) else {
        return Incomplete;
    };
    if body.iter().fold(dcs, |sum, byte| sum.wrapping_add(*byte)) != 0 {
        return broken(FrameError::DataChecksum);
    }
    let tfi = body[0];
    let data = &body[1..];
    let frame = match tfi {
        // The manual's error frame: LEN 01, TFI 7F, no data, DCS 81.
        TFI_ERROR if data.is_empty() => Ok(Frame::Error),
        TFI_ERROR => Err(FrameError::MalformedErrorFrame),
        TFI_HOST_TO_PN532 => Information::new(Direction::HostToPn532, data.to_vec()).map(Frame::Information),
        TFI_PN532_TO_HOST => Information::new(Direction::Pn532ToHost, data.to_vec()).map(Frame::Information),
        other => Err(FrameError::UnknownTfi(other)),
    };
    match frame {
        Ok(frame) => postamble(bytes, header + length + 1, frame),
        Err(error) => broken(error),
    }
}

/// Checks the postamble at `at` and completes the frame.
fn postamble(bytes: &[u8], at: usize, frame: Frame) -> Scan {
    match bytes.get(at) {
        None => Scan::Incomplete,
        Some(0x00) => Scan::Done { length: at + 1, outcome: Ok(frame) },
        Some(&other) => Scan::Done { length: 0, outcome: Err(FrameError::Postamble(other)) },
    }
}

/// Parses exactly one frame from `bytes` (preamble optional, nothing after the
/// postamble): for tests and for callers that hold a whole frame.
pub fn parse(bytes: &[u8]) -> Result<Frame, FrameError> {
    let start = bytes.windows(2).position(|pair| pair == [0x00, 0xFF]).ok_or(FrameError::Truncated)?;
    if bytes[..start].iter().any(|byte| *byte != 0x00) {
        return Err(FrameError::Truncated);
    }
    let after = &bytes[start + 2..];
    match parse_after_start(after) {
        Scan::Incomplete => Err(FrameError::Truncated),
        Scan::Done { outcome: Err(error), .. } => Err(error),
        Scan::Done { length, outcome: Ok(frame) } => {
            if length == after.len() {
                Ok(frame)
            } else {
                Err(FrameError::Postamble(after[length]))
            }
        }
    }
}

/// A streaming frame decoder with resynchronisation; see the module doc.
#[derive(Debug, Default)]
pub struct Decoder {
    /// Bytes not yet consumed, starting at a start code when a frame has begun.
    pending: Vec<u8>,
    /// Bytes skipped outside frames since the decoder was made.
    skipped: u64,
}

impl Decoder {
    pub fn new() -> Self {
        Decoder::default()
    }

    /// Adds bytes as they came from the line. Call [`Decoder::next_frame`]
    /// until it returns `None` after each push.
    pub fn push(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
    }

    /// The next frame, or the next broken one, or `None` when more bytes are needed.
    pub fn next_frame(&mut self) -> Option<Result<Frame, FrameError>> {
        let Some(start) = self.pending.windows(2).position(|pair| pair == [0x00, 0xFF]) else {
            // Keep a trailing 00: it may be the first half of a start code.
            let keep = usize::from(self.pending.last() == Some(&0x00));
            let dropped = self.pending.len() - keep;
            self.skip(dropped);
            return None;
        };
        // Preamble 00s before the start code are not garbage; the rest is.
        self.skip(start);
        self.pending.drain(..2);
        match parse_after_start(&self.pending) {
            Scan::Incomplete => {
                // Put the start code back so the next call sees the frame whole.
                self.pending.splice(0..0, [0x00, 0xFF]);
                None
            }
            Scan::Done { length, outcome } => {
                // A broken frame consumes only its start code: scanning resumes
                // right after it, so a good frame inside is still found.
                self.pending.drain(..length.min(self.pending.len()));
                Some(outcome)
            }
        }
    }

    /// Forgets a partly received frame (after a timeout: what comes next is new).
    pub fn clear(&mut self) {
        let dropped = self.pending.len();
        self.skip(dropped);
    }

    fn skip(&mut self, count: usize) {
        self.skipped += self.pending[..count].iter().filter(|byte| **byte != 0x00).count() as u64;
        self.pending.drain(..count);
    }

    /// Non-zero bytes skipped outside any frame so far (line noise, wake-up bytes).
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// Bytes held for a frame not yet complete.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(bytes: &[u8]) -> Vec<Result<Frame, FrameError>> {
        let mut decoder = Decoder::new();
        decoder.push(bytes);
        std::iter::from_fn(|| decoder.next_frame()).collect()
    }

    fn firmware_request() -> Vec<u8> {
        vec![0x00, 0x00, 0xFF, 0x02, 0xFE, 0xD4, 0x02, 0x2A, 0x00]
    }

    #[test]
    fn manual_examples_encode_and_parse() {
        // GetFirmwareVersion and its answer, from the PN532 user manual.
        let command = Information::command(0x02, &[]).expect("frame");
        assert_eq!(command.to_bytes(), firmware_request());
        let answer = [0x00, 0x00, 0xFF, 0x06, 0xFA, 0xD5, 0x03, 0x32, 0x01, 0x06, 0x07, 0xE8, 0x00];
        let Frame::Information(response) = parse(&answer).expect("parses") else { panic!("information frame") };
        assert_eq!(response.direction(), Direction::Pn532ToHost);
        assert_eq!(response.data(), [0x03, 0x32, 0x01, 0x06, 0x07]);
        assert_eq!(response.to_bytes(), answer);
        assert_eq!(parse(&ACK), Ok(Frame::Ack));
        assert_eq!(parse(&NACK), Ok(Frame::Nack));
        assert_eq!(parse(&ERROR), Ok(Frame::Error));
        assert_eq!(Frame::Error.to_bytes(), ERROR);
    }

    #[test]
    fn extended_frames_round_trip() {
        let data: Vec<u8> = (0..DATA_LENGTH_MAX).map(|i| i as u8).collect();
        let frame = Information::new(Direction::HostToPn532, data.clone()).expect("fits");
        let bytes = frame.to_bytes();
        assert_eq!(&bytes[3..5], [0xFF, 0xFF], "extended marker");
        assert_eq!(u16::from_be_bytes([bytes[5], bytes[6]]) as usize, DATA_LENGTH_MAX + 1);
        assert_eq!(bytes.len(), FRAME_LENGTH_MAX);
        assert_eq!(parse(&bytes), Ok(Frame::Information(frame)));
        // Exactly the largest normal frame stays normal.
        let normal = Information::new(Direction::HostToPn532, vec![0x40; NORMAL_DATA_MAX]).expect("fits");
        assert_eq!(normal.to_bytes()[3], 0xFF);
        assert_eq!(normal.to_bytes()[4], 0x01);
        assert_eq!(parse(&normal.to_bytes()), Ok(Frame::Information(normal)));
        // An extended frame for small data (some hosts send them) parses too.
        let small = [0x00, 0x00, 0xFF, 0xFF, 0xFF, 0x00, 0x02, 0xFE, 0xD4, 0x02, 0x2A, 0x00];
        assert_eq!(decode_all(&small), [Ok(Frame::Information(Information::command(0x02, &[]).expect("frame")))]);
        assert_eq!(
            Information::new(Direction::HostToPn532, vec![0; DATA_LENGTH_MAX + 1]),
            Err(FrameError::TooLong(265))
        );
        assert_eq!(Information::new(Direction::HostToPn532, vec![]), Err(FrameError::NoCommandCode));
    }

    #[test]
    fn bad_length_checksum_is_refused() {
        let mut bytes = firmware_request();
        bytes[4] = 0xFD;
        assert_eq!(parse(&bytes), Err(FrameError::LengthChecksum { length: 2, checksum: 0xFD }));
        let extended = [0x00, 0x00, 0xFF, 0xFF, 0xFF, 0x00, 0x02, 0xFD, 0xD4, 0x02, 0x2A, 0x00];
        assert!(matches!(parse(&extended), Err(FrameError::LengthChecksum { length: 2, .. })));
    }

    #[test]
    fn bad_data_checksum_is_refused() {
        let mut bytes = firmware_request();
        bytes[7] = 0x2B;
        assert_eq!(parse(&bytes), Err(FrameError::DataChecksum));
        let mut bytes = firmware_request();
        bytes[6] = 0x04; // a flipped data bit
        assert_eq!(parse(&bytes), Err(FrameError::DataChecksum));
    }

    #[test]
    fn truncated_frames_wait_then_complete() {
        let bytes = firmware_request();
        for cut in 0..bytes.len() {
            assert_eq!(parse(&bytes[..cut]), Err(FrameError::Truncated), "cut at {cut}");
            let mut decoder = Decoder::new();
            decoder.push(&bytes[..cut]);
            assert_eq!(decoder.next_frame(), None, "cut at {cut} waits for more");
            decoder.push(&bytes[cut..]);
            assert!(matches!(decoder.next_frame(), Some(Ok(Frame::Information(_)))), "completes after {cut}");
            assert_eq!(decoder.next_frame(), None);
        }
        // One byte at a time.
        let mut decoder = Decoder::new();
        let mut frames = Vec::new();
        for byte in bytes.iter().chain(ACK.iter()) {
            decoder.push(&[*byte]);
            frames.extend(std::iter::from_fn(|| decoder.next_frame()));
        }
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[1], Ok(Frame::Ack));
    }

    #[test]
    fn garbage_before_a_frame_is_skipped() {
        let mut line = vec![0x55, 0x55, 0x00, 0x00, 0x00, 0x13, 0xFF, 0x37, 0x00];
        line.extend(firmware_request());
        let mut decoder = Decoder::new();
        decoder.push(&line);
        assert!(matches!(decoder.next_frame(), Some(Ok(Frame::Information(_)))));
        assert_eq!(decoder.next_frame(), None);
        assert_eq!(decoder.skipped(), 5);
        assert_eq!(parse(&line), Err(FrameError::Truncated), "one-shot parse allows only a 00 preamble");
    }

    #[test]
    fn a_good_frame_inside_a_broken_one_is_found() {
        // A frame cut short by a new one: the first's checksum fails, the second is found.
        let mut line = vec![0x00, 0x00, 0xFF, 0x05, 0xFB, 0xD4, 0x40];
        line.extend(firmware_request());
        let outcomes = decode_all(&line);
        assert!(outcomes[0].is_err());
        assert!(outcomes.iter().any(|outcome| matches!(outcome, Ok(Frame::Information(_)))), "{outcomes:?}");
    }

    #[test]
    fn oversized_extended_length_is_refused() {
        let length = (EXTENDED_LENGTH_MAX + 1) as u16;
        let [high, low] = length.to_be_bytes();
        let line = [0x00, 0x00, 0xFF, 0xFF, 0xFF, high, low, high.wrapping_add(low).wrapping_neg(), 0xD4];
        let mut decoder = Decoder::new();
        decoder.push(&line);
        assert_eq!(decoder.next_frame(), Some(Err(FrameError::TooLong(EXTENDED_LENGTH_MAX))));
        assert_eq!(decoder.next_frame(), None);
        assert!(decoder.pending() <= 1, "the refused frame is not held");
        let huge = [0x00, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x02, 0xD4];
        assert!(matches!(parse(&huge), Err(FrameError::TooLong(_))));
    }

    #[test]
    fn zero_length_unknown_tfi_and_missing_postamble_are_refused() {
        assert_eq!(parse(&[0x00, 0x00, 0xFF, 0x00, 0x00]), Err(FrameError::Empty));
        assert_eq!(parse(&[0x00, 0x00, 0xFF, 0x02, 0xFE, 0xD3, 0x02, 0x2B, 0x00]), Err(FrameError::UnknownTfi(0xD3)));
        assert_eq!(parse(&[0x00, 0x00, 0xFF, 0x01, 0xFF, 0xD4, 0x2C, 0x00]), Err(FrameError::NoCommandCode));
        let mut bytes = firmware_request();
        *bytes.last_mut().expect("postamble") = 0x55;
        assert_eq!(parse(&bytes), Err(FrameError::Postamble(0x55)));
        assert_eq!(parse(&[0x00, 0x00, 0xFF, 0x00, 0xFF, 0x01]), Err(FrameError::Postamble(0x01)));
        assert_eq!(
            parse(&[0x00, 0x00, 0xFF, 0x02, 0xFE, 0x7F, 0x01, 0x80, 0x00]),
            Err(FrameError::MalformedErrorFrame)
        );
    }

    #[test]
    fn ack_nack_and_frames_in_one_stream() {
        let mut line = ACK.to_vec();
        line.extend(Information::response(0x02, &[0x32, 0x01, 0x06, 0x07]).expect("frame").to_bytes());
        line.extend(NACK);
        line.extend(ERROR);
        let outcomes = decode_all(&line);
        assert_eq!(outcomes.len(), 4);
        assert_eq!(outcomes[0], Ok(Frame::Ack));
        assert_eq!(outcomes[2], Ok(Frame::Nack));
        assert_eq!(outcomes[3], Ok(Frame::Error));
    }

    #[test]
    fn random_byte_streams_never_panic_or_hoard() {
        use proptest::prelude::*;
        let config = ProptestConfig { cases: 512, ..ProptestConfig::default() };
        proptest!(config, |(bytes in proptest::collection::vec(any::<u8>(), 0..2048), chunk in 1usize..64)| {
            let mut decoder = Decoder::new();
            for piece in bytes.chunks(chunk) {
                decoder.push(piece);
                while let Some(outcome) = decoder.next_frame() {
                    if let Ok(frame) = outcome {
                        prop_assert_eq!(parse(&frame.to_bytes()), Ok(frame));
                    }
                }
                prop_assert!(decoder.pending() <= FRAME_LENGTH_MAX);
            }
            let _ = parse(&bytes);
        });
    }
}

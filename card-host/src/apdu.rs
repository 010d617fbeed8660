//! ISO/IEC 7816-4 command and response APDUs (clause 5.1): the four cases, in
//! short and extended length, encoded and decoded.
//!
//! Decoding takes any byte string and either returns a [`Command`] or says what is
//! wrong with it; it never panics. Encoding picks the short form whenever both Nc
//! and Ne fit, and the extended form otherwise.

use crate::status::StatusWord;

/// Largest Nc (command data length) of a short APDU.
pub const SHORT_DATA_MAX: usize = 255;
/// Largest Ne (expected response length) of a short APDU (encoded as `00`).
pub const SHORT_EXPECTED_MAX: usize = 256;
/// Largest Nc of an extended APDU.
pub const EXTENDED_DATA_MAX: usize = 65_535;
/// Largest Ne of an extended APDU (encoded as `00 00`).
pub const EXTENDED_EXPECTED_MAX: usize = 65_536;
/// Largest encoded command APDU: header, `00`, Lc (2), data, Le (2).
pub const COMMAND_LENGTH_MAX: usize = 4 + 1 + 2 + EXTENDED_DATA_MAX + 2;
/// Largest response APDU: data of the largest Ne and the status word.
pub const RESPONSE_LENGTH_MAX: usize = EXTENDED_EXPECTED_MAX + 2;

/// What is wrong with a byte string that was meant to be a command APDU.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApduError {
    #[error("APDU of {0} bytes is shorter than the 4-byte header")]
    TooShort(usize),
    #[error("APDU of {0} bytes is longer than the largest extended APDU")]
    TooLong(usize),
    #[error("Lc says {lc} data bytes but the body after the header is {body} bytes")]
    LengthMismatch { lc: usize, body: usize },
    #[error("short Lc of 0 is not allowed (ISO 7816-3 12.1.3)")]
    ZeroLc,
    #[error("extended APDU body of {0} bytes is malformed")]
    MalformedExtended(usize),
    #[error("response APDU of {0} bytes has no status word")]
    ResponseTooShort(usize),
}

/// The case of a command APDU (ISO/IEC 7816-3 12.1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Case {
    /// No data, no response data.
    One,
    /// No data, response data expected.
    Two,
    /// Data, no response data.
    Three,
    /// Data and response data.
    Four,
}

/// A command APDU. Only [`Command::to_bytes`] knows how to serialise it.
#[derive(Clone, PartialEq, Eq)]
pub struct Command {
    pub cla: u8,
    pub ins: u8,
    pub p1: u8,
    pub p2: u8,
    data: Vec<u8>,
    /// Ne: the number of response bytes expected, 1..=65536; `None` when absent.
    expected: Option<usize>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Data may hold a PIN or a key component: only its length is shown.
        write!(
            f,
            "Command {{ {:02X} {:02X} {:02X} {:02X}, Nc {}, Ne {:?} }}",
            self.cla,
            self.ins,
            self.p1,
            self.p2,
            self.data.len(),
            self.expected
        )
    }
}

impl Command {
    /// A case 1 command: header only.
    pub fn new(cla: u8, ins: u8, p1: u8, p2: u8) -> Self {
        Command { cla, ins, p1, p2, data: Vec::new(), expected: None }
    }

    /// Adds command data (case 3, or case 4 with [`Command::expect`]).
    ///
    /// # Panics
    /// If the data is longer than [`EXTENDED_DATA_MAX`]: a programmer error.
    pub fn with_data(mut self, data: impl Into<Vec<u8>>) -> Self {
        let data = data.into();
        assert!(data.len() <= EXTENDED_DATA_MAX, "command data of {} bytes", data.len());
        self.data = data;
        self
    }

    /// Expects `ne` bytes of response data (1..=65536; 256 is short Le `00`).
    ///
    /// # Panics
    /// If `ne` is 0 or larger than [`EXTENDED_EXPECTED_MAX`]: a programmer error.
    pub fn expect(mut self, ne: usize) -> Self {
        assert!((1..=EXTENDED_EXPECTED_MAX).contains(&ne), "Ne of {ne}");
        self.expected = Some(ne);
        self
    }

    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// Ne, the number of response bytes expected, if any.
    pub fn expected(&self) -> Option<usize> {
        self.expected
    }

    pub fn case(&self) -> Case {
        match (self.data.is_empty(), self.expected.is_some()) {
            (true, false) => Case::One,
            (true, true) => Case::Two,
            (false, false) => Case::Three,
            (false, true) => Case::Four,
        }
    }

    /// Whether this command needs the extended length form.
    pub fn is_extended(&self) -> bool {
        self.data.len() > SHORT_DATA_MAX || self.expected.is_some_and(|ne| ne > SHORT_EXPECTED_MAX)
    }

    /// The command with another CLA (for example `04`/`84` for secure messaging).
    pub fn with_cla(mut self, cla: u8) -> Self {
        self.cla = cla;
        self
    }

    /// Serialises the command, short form when it fits, extended otherwise.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + 3 + self.data.len() + 2);
        out.extend_from_slice(&[self.cla, self.ins, self.p1, self.p2]);
        if self.is_extended() {
            out.push(0);
            if !self.data.is_empty() {
                out.extend_from_slice(&(self.data.len() as u16).to_be_bytes());
                out.extend_from_slice(&self.data);
            }
            if let Some(ne) = self.expected {
                // 65536 is encoded as 00 00.
                out.extend_from_slice(&((ne % EXTENDED_EXPECTED_MAX) as u16).to_be_bytes());
            }
        } else {
            if !self.data.is_empty() {
                out.push(self.data.len() as u8);
                out.extend_from_slice(&self.data);
            }
            if let Some(ne) = self.expected {
                // 256 is encoded as 00.
                out.push((ne % SHORT_EXPECTED_MAX) as u8);
            }
        }
        out
    }

    /// Parses a command APDU. Every byte string gets an answer, never a panic.
    pub fn parse(bytes: &[u8]) -> Result<Command, ApduError> {
        let total = bytes.len();
        if total < 4 {
            return Err(ApduError::TooShort(total));
        }
        if total > COMMAND_LENGTH_MAX {
            return Err(ApduError::TooLong(total));
        }
        let mut command = Command::new(bytes[0], bytes[1], bytes[2], bytes[3]);
        let body = &bytes[4..];
        match body {
            // Case 1.
            [] => {}
            // Case 2S.
            [le] => command.expected = Some(short_ne(*le)),
            // Extended: a first byte of 00 followed by at least two more bytes.
            [0, rest @ ..] if rest.len() >= 2 => {
                let first = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
                let after = &rest[2..];
                if after.is_empty() {
                    // Case 2E.
                    command.expected = Some(extended_ne(first));
                } else {
                    // Case 3E or 4E: `first` is Lc.
                    let lc = first;
                    if lc == 0 {
                        return Err(ApduError::MalformedExtended(body.len()));
                    }
                    if after.len() == lc {
                        command.data = after.to_vec();
                    } else if after.len() == lc + 2 {
                        command.data = after[..lc].to_vec();
                        command.expected =
                            Some(extended_ne(usize::from(u16::from_be_bytes([after[lc], after[lc + 1]]))));
                    } else {
                        return Err(ApduError::LengthMismatch { lc, body: after.len() });
                    }
                }
            }
            [0, ..] => return Err(ApduError::ZeroLc),
            // Case 3S or 4S.
            [lc, rest @ ..] => {
                let lc = usize::from(*lc);
                if rest.len() == lc {
                    command.data = rest.to_vec();
                } else if rest.len() == lc + 1 {
                    command.data = rest[..lc].to_vec();
                    command.expected = Some(short_ne(rest[lc]));
                } else {
                    return Err(ApduError::LengthMismatch { lc, body: rest.len() });
                }
            }
        }
        Ok(command)
    }
}

fn short_ne(le: u8) -> usize {
    if le == 0 { SHORT_EXPECTED_MAX } else { usize::from(le) }
}

fn extended_ne(le: usize) -> usize {
    if le == 0 { EXTENDED_EXPECTED_MAX } else { le }
}

/// A response APDU: data and the status word.
#[derive(Clone, PartialEq, Eq)]
pub struct Response {
    data: Vec<u8>,
    status: StatusWord,
}

impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Response {{ {} data bytes, {} }}", self.data.len(), self.status)
    }
}

impl Response {
    pub fn new(data: impl Into<Vec<u8>>, status: StatusWord) -> Self {
        Response { data: data.into(), status }
    }

    /// A response with data and `9000`.
    pub fn ok(data: impl Into<Vec<u8>>) -> Self {
        Self::new(data, StatusWord::Ok)
    }

    /// A response of a status word alone.
    pub fn status_only(status: StatusWord) -> Self {
        Self::new(Vec::new(), status)
    }

    pub fn data(&self) -> &[u8] {
        &self.data
    }

    pub fn status(&self) -> StatusWord {
        self.status
    }

    /// The data when the status is `9000`; the status word as the error otherwise.
    /// A non-`9000` status never becomes a success value.
    pub fn into_result(self) -> Result<Vec<u8>, StatusWord> {
        if self.status == StatusWord::Ok { Ok(self.data) } else { Err(self.status) }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.data.len() + 2);
        out.extend_from_slice(&self.data);
        out.extend_from_slice(&self.status.to_bytes());
        out
    }

    /// Parses a response APDU: any data, then SW1 SW2.
    pub fn parse(bytes: &[u8]) -> Result<Response, ApduError> {
        match bytes.len() {
            n if n < 2 => Err(ApduError::ResponseTooShort(n)),
            n if n > RESPONSE_LENGTH_MAX => Err(ApduError::TooLong(n)),
            n => Ok(Response {
                data: bytes[..n - 2].to_vec(),
                status: StatusWord::from_bytes(bytes[n - 2], bytes[n - 1]),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(command: &Command, expected_hex: &str) {
        let bytes = command.to_bytes();
        assert_eq!(hex::encode_upper(&bytes), expected_hex);
        assert_eq!(&Command::parse(&bytes).expect("parses"), command);
    }

    #[test]
    fn four_cases_short() {
        roundtrip(&Command::new(0x00, 0x84, 0x00, 0x00), "00840000");
        roundtrip(&Command::new(0x80, 0x5C, 0x00, 0x02).expect(4), "805C000204");
        roundtrip(&Command::new(0x00, 0xB0, 0x95, 0x00).expect(256), "00B0950000");
        roundtrip(&Command::new(0x00, 0xA4, 0x00, 0x00).with_data([0x3F, 0x00]), "00A40000023F00");
        roundtrip(&Command::new(0x00, 0xA4, 0x04, 0x00).with_data(*b"SSSE").expect(256), "00A40400045353534500");
    }

    #[test]
    fn four_cases_extended() {
        roundtrip(&Command::new(0x00, 0xB0, 0x00, 0x00).expect(65_536), "00B00000000000");
        roundtrip(&Command::new(0x00, 0xB0, 0x00, 0x00).expect(257), "00B00000000101");
        let data = vec![0xAB; 300];
        let bytes = Command::new(0x00, 0xD6, 0x00, 0x00).with_data(data.clone()).to_bytes();
        assert_eq!(&bytes[..7], &[0x00, 0xD6, 0x00, 0x00, 0x00, 0x01, 0x2C]);
        assert_eq!(bytes.len(), 7 + 300);
        let command = Command::new(0x00, 0xD6, 0x00, 0x00).with_data(data).expect(2);
        let bytes = command.to_bytes();
        assert_eq!(&bytes[bytes.len() - 2..], &[0x00, 0x02]);
        assert_eq!(Command::parse(&bytes).expect("parses"), command);
        assert_eq!(command.case(), Case::Four);
        assert!(command.is_extended());
    }

    #[test]
    fn malformed_commands_are_refused_with_a_reason() {
        assert_eq!(Command::parse(&[0x00, 0xA4, 0x04]), Err(ApduError::TooShort(3)));
        assert_eq!(
            Command::parse(&hex::decode("00A4040005AABB").expect("hex")),
            Err(ApduError::LengthMismatch { lc: 5, body: 2 })
        );
        assert_eq!(Command::parse(&hex::decode("00A404000000").expect("hex")), Err(ApduError::ZeroLc));
        assert_eq!(
            Command::parse(&hex::decode("00A40400000000AA").expect("hex")),
            Err(ApduError::MalformedExtended(4))
        );
        assert_eq!(Response::parse(&[0x90]), Err(ApduError::ResponseTooShort(1)));
    }

    #[test]
    fn response_parses_data_and_status() {
        let response = Response::parse(&hex::decode("000003E89000").expect("hex")).expect("parses");
        assert_eq!(response.data(), &[0x00, 0x00, 0x03, 0xE8]);
        assert_eq!(response.status(), StatusWord::Ok);
        let refused = Response::parse(&[0x94, 0x01]).expect("parses");
        assert_eq!(refused.clone().into_result(), Err(StatusWord::InsufficientBalance));
        assert_eq!(refused.to_bytes(), vec![0x94, 0x01]);
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics_and_reencodes(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            if let Ok(command) = Command::parse(&bytes) {
                // What parses re-encodes to something that parses to the same command.
                let again = Command::parse(&command.to_bytes()).expect("re-encoded command parses");
                proptest::prop_assert_eq!(again, command);
            }
            let _ = Response::parse(&bytes);
        }

        #[test]
        fn encode_then_parse_is_identity(
            header in proptest::array::uniform4(proptest::num::u8::ANY),
            data in proptest::collection::vec(proptest::num::u8::ANY, 0..400),
            ne in proptest::option::of(1usize..=EXTENDED_EXPECTED_MAX),
        ) {
            let mut command = Command::new(header[0], header[1], header[2], header[3]).with_data(data);
            if let Some(ne) = ne { command = command.expect(ne); }
            proptest::prop_assert_eq!(Command::parse(&command.to_bytes()).expect("parses"), command);
        }
    }
}

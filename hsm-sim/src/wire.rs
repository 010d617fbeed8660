//! The payShield host framing and the field codec of the message bodies.
//!
//! A frame is a 2-byte big-endian length and that many bytes: a message header
//! (configurable length, echoed back), a 2-character command code and the
//! command's fields. A response carries the same header, the response code (the
//! command code with its second character advanced by one) and a 2-digit error
//! code before its fields.

use crate::error::ErrorCode;

/// The default header length (payShield's default is 4 characters).
pub const HEADER_LENGTH_DEFAULT: usize = 4;
/// The longest header we accept in configuration.
pub const HEADER_LENGTH_MAX: usize = 32;
/// The largest message the 2-byte length can carry, and our default maximum.
pub const MESSAGE_MAX: usize = u16::MAX as usize;
/// The longest key label.
pub const LABEL_MAX: usize = 40;

/// A 2-character command or response code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Code(pub [u8; 2]);

impl Code {
    /// The response code of a command: its second character advanced by one
    /// (`NC` → `ND`, `A0` → `A1`). `None` for a code that has no successor.
    pub fn response(self) -> Option<Code> {
        let second = match self.0[1] {
            b'0'..=b'8' | b'A'..=b'Y' => self.0[1] + 1,
            _ => return None,
        };
        Some(Code([self.0[0], second]))
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("??")
    }

    /// The response code answered to a command we do not know.
    pub const UNKNOWN: Code = Code(*b"ZZ");
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.0))
    }
}

/// What is wrong with a frame (not with its fields: those give error `15`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    #[error("message of {length} bytes is over the maximum of {max}")]
    TooLong { length: usize, max: usize },
    #[error("message of {length} bytes is shorter than the header ({header_length}) and a code")]
    TooShort { length: usize, header_length: usize },
    #[error("command code is not two printable characters")]
    BadCode,
}

/// A command as it arrives: its header and code, and the fields still as bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandFrame<'a> {
    pub header: &'a [u8],
    pub code: Code,
    pub body: &'a [u8],
}

impl<'a> CommandFrame<'a> {
    /// Splits a message (without its 2-byte length) into header, code and body.
    pub fn parse(message: &'a [u8], header_length: usize) -> Result<Self, FrameError> {
        if message.len() < header_length + 2 {
            return Err(FrameError::TooShort { length: message.len(), header_length });
        }
        let (header, rest) = message.split_at(header_length);
        let code = [rest[0], rest[1]];
        if !code.iter().all(|c| c.is_ascii_graphic()) {
            return Err(FrameError::BadCode);
        }
        Ok(CommandFrame { header, code: Code(code), body: &rest[2..] })
    }
}

/// Appends one framed message: length, header, code, and `fields`.
pub fn encode_frame(out: &mut Vec<u8>, header: &[u8], code: Code, error: Option<ErrorCode>, fields: &[u8]) {
    let length = header.len() + 2 + if error.is_some() { 2 } else { 0 } + fields.len();
    assert!(length <= MESSAGE_MAX, "an encoded message must fit the 2-byte length");
    out.extend_from_slice(&(length as u16).to_be_bytes());
    out.extend_from_slice(header);
    out.extend_from_slice(&code.0);
    if let Some(error) = error {
        out.extend_from_slice(&error.to_ascii());
    }
    out.extend_from_slice(fields);
}

/// A response as it arrives at the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseFrame<'a> {
    pub header: &'a [u8],
    pub code: Code,
    pub error: ErrorCode,
    pub body: &'a [u8],
}

impl<'a> ResponseFrame<'a> {
    pub fn parse(message: &'a [u8], header_length: usize) -> Result<Self, FrameError> {
        if message.len() < header_length + 4 {
            return Err(FrameError::TooShort { length: message.len(), header_length });
        }
        let frame = CommandFrame::parse(message, header_length)?;
        let error = ErrorCode::from_ascii([frame.body[0], frame.body[1]]).ok_or(FrameError::BadCode)?;
        Ok(ResponseFrame { header: frame.header, code: frame.code, error, body: &frame.body[2..] })
    }
}

/// A field that does not parse. Always answered with error `15`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field {field}: {reason}")]
pub struct FieldError {
    pub field: &'static str,
    pub reason: &'static str,
}

fn field_error(field: &'static str, reason: &'static str) -> FieldError {
    FieldError { field, reason }
}

/// Reads the fields of a body front to back; [`FieldReader::finish`] rejects
/// trailing bytes.
#[derive(Debug)]
pub struct FieldReader<'a> {
    bytes: &'a [u8],
}

impl<'a> FieldReader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        FieldReader { bytes }
    }

    pub fn take(&mut self, field: &'static str, length: usize) -> Result<&'a [u8], FieldError> {
        if self.bytes.len() < length {
            return Err(field_error(field, "message ends early"));
        }
        let (taken, rest) = self.bytes.split_at(length);
        self.bytes = rest;
        Ok(taken)
    }

    pub fn char(&mut self, field: &'static str) -> Result<u8, FieldError> {
        Ok(self.take(field, 1)?[0])
    }

    /// `N` bytes written as `2N` hex digits.
    pub fn hex<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], FieldError> {
        let text = self.take(field, 2 * N)?;
        let mut out = [0u8; N];
        hex::decode_to_slice(text, &mut out).map_err(|_| field_error(field, "not hexadecimal"))?;
        Ok(out)
    }

    pub fn hex_bytes(&mut self, field: &'static str, length: usize) -> Result<Vec<u8>, FieldError> {
        let text = self.take(field, 2 * length)?;
        hex::decode(text).map_err(|_| field_error(field, "not hexadecimal"))
    }

    /// An unsigned decimal number of exactly `digits` ASCII digits.
    pub fn decimal(&mut self, field: &'static str, digits: usize) -> Result<u32, FieldError> {
        debug_assert!(digits <= 9);
        let text = self.take(field, digits)?;
        if !text.iter().all(u8::is_ascii_digit) {
            return Err(field_error(field, "not decimal digits"));
        }
        Ok(text.iter().fold(0u32, |value, digit| value * 10 + u32::from(digit - b'0')))
    }

    /// An unsigned number of 4 hex digits (payShield's length fields).
    pub fn hex_length(&mut self, field: &'static str) -> Result<usize, FieldError> {
        Ok(usize::from(u16::from_be_bytes(self.hex::<2>(field)?)))
    }

    /// A key label: 2 decimal digits of length, then 1 to [`LABEL_MAX`]
    /// characters of `A-Z a-z 0-9 . _ - /`.
    pub fn label(&mut self, field: &'static str) -> Result<String, FieldError> {
        let length = self.decimal(field, 2)? as usize;
        if length == 0 || length > LABEL_MAX {
            return Err(field_error(field, "label length out of range"));
        }
        let text = self.take(field, length)?;
        if !text.iter().all(|c| label_char(*c)) {
            return Err(field_error(field, "label has a character outside A-Z a-z 0-9 . _ - /"));
        }
        Ok(String::from_utf8_lossy(text).into_owned())
    }

    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.bytes)
    }

    pub fn remaining(&self) -> usize {
        self.bytes.len()
    }

    pub fn finish(self) -> Result<(), FieldError> {
        if self.bytes.is_empty() { Ok(()) } else { Err(field_error("end", "trailing bytes after the last field")) }
    }
}

pub fn label_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-' | b'/')
}

/// Whether a label is one a request could carry.
pub fn label_is_valid(label: &str) -> bool {
    !label.is_empty() && label.len() <= LABEL_MAX && label.bytes().all(label_char)
}

/// Writes fields in the same encodings [`FieldReader`] reads.
#[derive(Debug, Default)]
pub struct FieldWriter {
    pub bytes: Vec<u8>,
}

impl FieldWriter {
    pub fn new() -> Self {
        FieldWriter::default()
    }

    pub fn char(&mut self, c: u8) -> &mut Self {
        self.bytes.push(c);
        self
    }

    pub fn hex(&mut self, bytes: &[u8]) -> &mut Self {
        const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
        for byte in bytes {
            self.bytes.push(DIGITS[usize::from(byte >> 4)]);
            self.bytes.push(DIGITS[usize::from(byte & 0x0F)]);
        }
        self
    }

    pub fn decimal(&mut self, value: u32, digits: usize) -> &mut Self {
        let text = format!("{value:0digits$}");
        assert_eq!(text.len(), digits, "a decimal field must fit its digits");
        self.bytes.extend_from_slice(text.as_bytes());
        self
    }

    pub fn hex_length(&mut self, length: usize) -> &mut Self {
        assert!(length <= MESSAGE_MAX, "a length field holds 4 hex digits");
        self.hex(&(length as u16).to_be_bytes())
    }

    pub fn label(&mut self, label: &str) -> &mut Self {
        assert!(label_is_valid(label), "labels are checked before they are written");
        self.decimal(label.len() as u32, 2);
        self.bytes.extend_from_slice(label.as_bytes());
        self
    }

    pub fn raw(&mut self, bytes: &[u8]) -> &mut Self {
        self.bytes.extend_from_slice(bytes);
        self
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_code_advances_the_second_letter() {
        assert_eq!(Code(*b"NC").response(), Some(Code(*b"ND")));
        assert_eq!(Code(*b"A0").response(), Some(Code(*b"A1")));
        assert_eq!(Code(*b"M8").response(), Some(Code(*b"M9")));
        assert_eq!(Code(*b"ZZ").response(), None);
        assert_eq!(Code(*b"A9").response(), None);
    }

    #[test]
    fn fields_round_trip() {
        let mut writer = FieldWriter::new();
        writer.hex(&[0xAB, 0x01]).decimal(42, 3).label("card.tac").hex_length(300).char(b'P');
        let bytes = writer.into_bytes();
        assert_eq!(&bytes[..7], b"AB01042");
        let mut reader = FieldReader::new(&bytes);
        assert_eq!(reader.hex::<2>("a"), Ok([0xAB, 0x01]));
        assert_eq!(reader.decimal("b", 3), Ok(42));
        assert_eq!(reader.label("c").as_deref(), Ok("card.tac"));
        assert_eq!(reader.hex_length("d"), Ok(300));
        assert_eq!(reader.char("e"), Ok(b'P'));
        assert_eq!(reader.finish(), Ok(()));
    }

    #[test]
    fn bad_fields_are_rejected() {
        assert!(FieldReader::new(b"0G").hex::<1>("x").is_err());
        assert!(FieldReader::new(b"1a").decimal("x", 2).is_err());
        assert!(FieldReader::new(b"00").label("x").is_err());
        assert!(FieldReader::new(b"03a b").label("x").is_err());
        assert!(FieldReader::new(b"41").label("x").is_err());
        assert!(FieldReader::new(b"x").finish().is_err());
    }
}

//! The 2-digit error codes of a response. Where payShield has a code with the
//! same meaning we use it; the others are ours and marked so in `docs/hsm.md`.

/// An error code as it travels in a response (two ASCII digits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// `00` no error.
    Ok,
    /// `01` verification failure: MAC, MAC1, TAC, signature, or the check value
    /// of an imported key (payShield: verification failure).
    VerificationFailure,
    /// `04` invalid key type code (payShield).
    InvalidKeyType,
    /// `12` no such key in the key store (payShield: user storage not available).
    KeyNotFound,
    /// `15` error in input data (payShield).
    InputData,
    /// `17` not authorised: clear-key import outside test mode (payShield: HSM is
    /// not in the authorised state).
    NotAuthorised,
    /// `21` invalid index: the card key index is not in the key set (payShield).
    InvalidIndex,
    /// `26` invalid key scheme: the algorithm does not fit the key (payShield).
    InvalidKeyScheme,
    /// `27` incompatible key: the key's algorithm does not fit the function (payShield).
    IncompatibleKey,
    /// `29` key function not permitted: the key's type may not do this (payShield).
    KeyFunctionNotPermitted,
    /// `41` internal error, e.g. the key store could not be written (payShield).
    Internal,
    /// `68` command not supported (payShield: command disabled).
    CommandNotSupported,
    /// `70` a key with this label already exists (ours).
    LabelInUse,
    /// `71` key store full (ours).
    KeyStoreFull,
    /// `80` data length error: a message or a count over its maximum (payShield).
    DataLength,
    /// Any other code a (real) HSM may answer.
    Other(u8),
}

impl ErrorCode {
    pub fn value(self) -> u8 {
        match self {
            ErrorCode::Ok => 0,
            ErrorCode::VerificationFailure => 1,
            ErrorCode::InvalidKeyType => 4,
            ErrorCode::KeyNotFound => 12,
            ErrorCode::InputData => 15,
            ErrorCode::NotAuthorised => 17,
            ErrorCode::InvalidIndex => 21,
            ErrorCode::InvalidKeyScheme => 26,
            ErrorCode::IncompatibleKey => 27,
            ErrorCode::KeyFunctionNotPermitted => 29,
            ErrorCode::Internal => 41,
            ErrorCode::CommandNotSupported => 68,
            ErrorCode::LabelInUse => 70,
            ErrorCode::KeyStoreFull => 71,
            ErrorCode::DataLength => 80,
            ErrorCode::Other(value) => value,
        }
    }

    pub fn from_value(value: u8) -> Self {
        match value {
            0 => ErrorCode::Ok,
            1 => ErrorCode::VerificationFailure,
            4 => ErrorCode::InvalidKeyType,
            12 => ErrorCode::KeyNotFound,
            15 => ErrorCode::InputData,
            17 => ErrorCode::NotAuthorised,
            21 => ErrorCode::InvalidIndex,
            26 => ErrorCode::InvalidKeyScheme,
            27 => ErrorCode::IncompatibleKey,
            29 => ErrorCode::KeyFunctionNotPermitted,
            41 => ErrorCode::Internal,
            68 => ErrorCode::CommandNotSupported,
            70 => ErrorCode::LabelInUse,
            71 => ErrorCode::KeyStoreFull,
            80 => ErrorCode::DataLength,
            other => ErrorCode::Other(other),
        }
    }

    /// The two ASCII digits on the wire.
    pub fn to_ascii(self) -> [u8; 2] {
        let value = self.value() % 100;
        [b'0' + value / 10, b'0' + value % 10]
    }

    pub fn from_ascii(digits: [u8; 2]) -> Option<Self> {
        if digits.iter().all(u8::is_ascii_digit) {
            Some(Self::from_value((digits[0] - b'0') * 10 + (digits[1] - b'0')))
        } else {
            None
        }
    }

    pub fn is_ok(self) -> bool {
        self == ErrorCode::Ok
    }

    /// Every code this simulator answers, for the documentation and the tests.
    pub const ALL: [ErrorCode; 15] = [
        ErrorCode::Ok,
        ErrorCode::VerificationFailure,
        ErrorCode::InvalidKeyType,
        ErrorCode::KeyNotFound,
        ErrorCode::InputData,
        ErrorCode::NotAuthorised,
        ErrorCode::InvalidIndex,
        ErrorCode::InvalidKeyScheme,
        ErrorCode::IncompatibleKey,
        ErrorCode::KeyFunctionNotPermitted,
        ErrorCode::Internal,
        ErrorCode::CommandNotSupported,
        ErrorCode::LabelInUse,
        ErrorCode::KeyStoreFull,
        ErrorCode::DataLength,
    ];
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let digits = self.to_ascii();
        write!(f, "{}{} ({:?})", digits[0] as char, digits[1] as char, self)
    }
}

//! Status words (ISO/IEC 7816-4 clause 5.6, and the PBOC e-purse `93xx`/`94xx` range).

/// A status word SW1 SW2, with a variant for each meaning our cards and terminals use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StatusWord {
    /// `9000`: normal processing.
    Ok,
    /// `61xx`: xx more bytes available (fetch them with GET RESPONSE).
    BytesAvailable(u8),
    /// `6281`: part of the returned data may be corrupted.
    DataMayBeCorrupted,
    /// `6283`: the selected file is invalidated (application blocked).
    SelectedFileInvalidated,
    /// `63Cx`: verification failed, x tries left.
    PinTriesLeft(u8),
    /// `6581`: memory failure.
    MemoryFailure,
    /// `6700`: wrong length (Lc or Le).
    WrongLength,
    /// `6882`: secure messaging not supported.
    SecureMessagingNotSupported,
    /// `6981`: command incompatible with the file structure.
    IncompatibleFileStructure,
    /// `6982`: security status not satisfied.
    SecurityStatusNotSatisfied,
    /// `6983`: authentication method (PIN or key) blocked.
    AuthenticationBlocked,
    /// `6984`: referenced data invalidated (no challenge was fetched, or it was used).
    ReferencedDataInvalidated,
    /// `6985`: conditions of use not satisfied.
    ConditionsNotSatisfied,
    /// `6986`: command not allowed (no current EF).
    NoCurrentFile,
    /// `6987`: expected secure messaging data objects missing (no MAC).
    SecureMessagingMissing,
    /// `6988`: secure messaging data objects incorrect (MAC wrong).
    SecureMessagingIncorrect,
    /// `6A80`: incorrect parameters in the data field.
    WrongData,
    /// `6A81`: function not supported (PBOC: application blocked).
    FunctionNotSupported,
    /// `6A82`: file or application not found.
    FileNotFound,
    /// `6A83`: record not found.
    RecordNotFound,
    /// `6A84`: not enough memory space in the file.
    NotEnoughMemory,
    /// `6A86`: incorrect parameters P1-P2.
    IncorrectP1P2,
    /// `6A88`: referenced data (key, PIN) not found.
    ReferencedDataNotFound,
    /// `6B00`: wrong parameters P1-P2 (offset outside the file).
    WrongP1P2,
    /// `6Cxx`: wrong Le; xx is the exact length available.
    WrongLe(u8),
    /// `6D00`: instruction not supported.
    InsNotSupported,
    /// `6E00`: class not supported.
    ClaNotSupported,
    /// `6F00`: no precise diagnosis.
    NoPreciseDiagnosis,
    /// `9302`: MAC invalid (PBOC).
    MacInvalid,
    /// `9303`: application permanently blocked (PBOC).
    ApplicationPermanentlyBlocked,
    /// `9401`: insufficient balance (PBOC).
    InsufficientBalance,
    /// `9402`: transaction counter reached its maximum (PBOC).
    CounterAtMaximum,
    /// `9403`: key index not supported (PBOC).
    KeyIndexNotSupported,
    /// `9406`: the required MAC is not available (PBOC).
    MacNotAvailable,
    /// Any other status word.
    Other(u16),
}

impl StatusWord {
    pub fn from_u16(value: u16) -> Self {
        let [sw1, sw2] = value.to_be_bytes();
        Self::from_bytes(sw1, sw2)
    }

    pub fn from_bytes(sw1: u8, sw2: u8) -> Self {
        use StatusWord::*;
        match (sw1, sw2) {
            (0x90, 0x00) => Ok,
            (0x61, n) => BytesAvailable(n),
            (0x62, 0x81) => DataMayBeCorrupted,
            (0x62, 0x83) => SelectedFileInvalidated,
            (0x63, n) if n & 0xF0 == 0xC0 => PinTriesLeft(n & 0x0F),
            (0x65, 0x81) => MemoryFailure,
            (0x67, 0x00) => WrongLength,
            (0x68, 0x82) => SecureMessagingNotSupported,
            (0x69, 0x81) => IncompatibleFileStructure,
            (0x69, 0x82) => SecurityStatusNotSatisfied,
            (0x69, 0x83) => AuthenticationBlocked,
            (0x69, 0x84) => ReferencedDataInvalidated,
            (0x69, 0x85) => ConditionsNotSatisfied,
            (0x69, 0x86) => NoCurrentFile,
            (0x69, 0x87) => SecureMessagingMissing,
            (0x69, 0x88) => SecureMessagingIncorrect,
            (0x6A, 0x80) => WrongData,
            (0x6A, 0x81) => FunctionNotSupported,
            (0x6A, 0x82) => FileNotFound,
            (0x6A, 0x83) => RecordNotFound,
            (0x6A, 0x84) => NotEnoughMemory,
            (0x6A, 0x86) => IncorrectP1P2,
            (0x6A, 0x88) => ReferencedDataNotFound,
            (0x6B, 0x00) => WrongP1P2,
            (0x6C, n) => WrongLe(n),
            (0x6D, 0x00) => InsNotSupported,
            (0x6E, 0x00) => ClaNotSupported,
            (0x6F, 0x00) => NoPreciseDiagnosis,
            (0x93, 0x02) => MacInvalid,
            (0x93, 0x03) => ApplicationPermanentlyBlocked,
            (0x94, 0x01) => InsufficientBalance,
            (0x94, 0x02) => CounterAtMaximum,
            (0x94, 0x03) => KeyIndexNotSupported,
            (0x94, 0x06) => MacNotAvailable,
            _ => Other(u16::from_be_bytes([sw1, sw2])),
        }
    }

    pub fn to_u16(self) -> u16 {
        use StatusWord::*;
        match self {
            Ok => 0x9000,
            BytesAvailable(n) => 0x6100 | u16::from(n),
            DataMayBeCorrupted => 0x6281,
            SelectedFileInvalidated => 0x6283,
            PinTriesLeft(n) => 0x63C0 | u16::from(n & 0x0F),
            MemoryFailure => 0x6581,
            WrongLength => 0x6700,
            SecureMessagingNotSupported => 0x6882,
            IncompatibleFileStructure => 0x6981,
            SecurityStatusNotSatisfied => 0x6982,
            AuthenticationBlocked => 0x6983,
            ReferencedDataInvalidated => 0x6984,
            ConditionsNotSatisfied => 0x6985,
            NoCurrentFile => 0x6986,
            SecureMessagingMissing => 0x6987,
            SecureMessagingIncorrect => 0x6988,
            WrongData => 0x6A80,
            FunctionNotSupported => 0x6A81,
            FileNotFound => 0x6A82,
            RecordNotFound => 0x6A83,
            NotEnoughMemory => 0x6A84,
            IncorrectP1P2 => 0x6A86,
            ReferencedDataNotFound => 0x6A88,
            WrongP1P2 => 0x6B00,
            WrongLe(n) => 0x6C00 | u16::from(n),
            InsNotSupported => 0x6D00,
            ClaNotSupported => 0x6E00,
            NoPreciseDiagnosis => 0x6F00,
            MacInvalid => 0x9302,
            ApplicationPermanentlyBlocked => 0x9303,
            InsufficientBalance => 0x9401,
            CounterAtMaximum => 0x9402,
            KeyIndexNotSupported => 0x9403,
            MacNotAvailable => 0x9406,
            Other(value) => value,
        }
    }

    pub fn to_bytes(self) -> [u8; 2] {
        self.to_u16().to_be_bytes()
    }

    pub fn is_ok(self) -> bool {
        self == StatusWord::Ok
    }

    /// What the status word means, in a few words.
    pub fn meaning(self) -> &'static str {
        use StatusWord::*;
        match self {
            Ok => "success",
            BytesAvailable(_) => "more response bytes available",
            DataMayBeCorrupted => "part of the returned data may be corrupted",
            SelectedFileInvalidated => "selected file invalidated (application blocked)",
            PinTriesLeft(_) => "verification failed",
            MemoryFailure => "memory failure",
            WrongLength => "wrong length",
            SecureMessagingNotSupported => "secure messaging not supported",
            IncompatibleFileStructure => "command incompatible with file structure",
            SecurityStatusNotSatisfied => "security status not satisfied",
            AuthenticationBlocked => "authentication method blocked",
            ReferencedDataInvalidated => "referenced data invalidated",
            ConditionsNotSatisfied => "conditions of use not satisfied",
            NoCurrentFile => "command not allowed (no current EF)",
            SecureMessagingMissing => "secure messaging data objects missing",
            SecureMessagingIncorrect => "secure messaging data objects incorrect",
            WrongData => "incorrect parameters in the data field",
            FunctionNotSupported => "function not supported",
            FileNotFound => "file or application not found",
            RecordNotFound => "record not found",
            NotEnoughMemory => "not enough memory space in the file",
            IncorrectP1P2 => "incorrect parameters P1-P2",
            ReferencedDataNotFound => "referenced data not found",
            WrongP1P2 => "wrong parameters P1-P2",
            WrongLe(_) => "wrong Le",
            InsNotSupported => "instruction not supported",
            ClaNotSupported => "class not supported",
            NoPreciseDiagnosis => "no precise diagnosis",
            MacInvalid => "MAC invalid",
            ApplicationPermanentlyBlocked => "application permanently blocked",
            InsufficientBalance => "insufficient balance",
            CounterAtMaximum => "transaction counter at its maximum",
            KeyIndexNotSupported => "key index not supported",
            MacNotAvailable => "required MAC not available",
            Other(_) => "unknown status",
        }
    }
}

impl std::fmt::Display for StatusWord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04X} {}", self.to_u16(), self.meaning())?;
        match self {
            StatusWord::PinTriesLeft(n) => write!(f, ", {n} tries left"),
            StatusWord::BytesAvailable(n) => write!(f, ": {n}"),
            StatusWord::WrongLe(n) => write!(f, ", {n} available"),
            _ => Ok(()),
        }
    }
}

impl std::error::Error for StatusWord {}

impl From<u16> for StatusWord {
    fn from(value: u16) -> Self {
        Self::from_u16(value)
    }
}

impl From<StatusWord> for u16 {
    fn from(value: StatusWord) -> Self {
        value.to_u16()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_word_round_trips() {
        for value in 0..=u16::MAX {
            let status = StatusWord::from_u16(value);
            assert_eq!(status.to_u16(), value, "{value:04X}");
        }
    }

    #[test]
    fn named_meanings() {
        assert_eq!(StatusWord::from_u16(0x6A82), StatusWord::FileNotFound);
        assert_eq!(StatusWord::from_u16(0x6982), StatusWord::SecurityStatusNotSatisfied);
        assert_eq!(StatusWord::from_u16(0x63C2), StatusWord::PinTriesLeft(2));
        assert_eq!(StatusWord::from_u16(0x9401), StatusWord::InsufficientBalance);
        assert_eq!(StatusWord::from_u16(0x6110), StatusWord::BytesAvailable(0x10));
        assert_eq!(StatusWord::from_u16(0x6C08), StatusWord::WrongLe(8));
        assert_eq!(StatusWord::from_u16(0x6A82).to_string(), "6A82 file or application not found");
        assert_eq!(StatusWord::PinTriesLeft(1).to_string(), "63C1 verification failed, 1 tries left");
        assert_eq!(StatusWord::from_u16(0x1234), StatusWord::Other(0x1234));
    }
}

//! PN532 command codes and the status byte of its answers (PN532 user manual
//! UM0701-02, §7), shared by the emulator and the terminal's driver.

/// Commands this crate's emulator answers and the terminal's driver sends.
/// Codes are PD0 of a host-to-PN532 frame; the answer's PD0 is the code + 1.
pub mod code {
    /// Diagnose (§7.2.1): `NumTst` and its input; test `00` echoes, test `06`
    /// (card presence, PN533 and libnfc) answers a status byte.
    pub const DIAGNOSE: u8 = 0x00;
    /// GetFirmwareVersion (§7.2.2): IC, Ver, Rev, Support.
    pub const GET_FIRMWARE_VERSION: u8 = 0x02;
    /// GetGeneralStatus (§7.2.3).
    pub const GET_GENERAL_STATUS: u8 = 0x04;
    /// ReadRegister (§7.2.4): 16-bit addresses in, one byte each out.
    pub const READ_REGISTER: u8 = 0x06;
    /// WriteRegister (§7.2.5): (address, value) triples.
    pub const WRITE_REGISTER: u8 = 0x08;
    /// ReadGPIO (§7.2.6).
    pub const READ_GPIO: u8 = 0x0C;
    /// WriteGPIO (§7.2.7).
    pub const WRITE_GPIO: u8 = 0x0E;
    /// SetSerialBaudRate (§7.2.8).
    pub const SET_SERIAL_BAUD_RATE: u8 = 0x10;
    /// SetParameters (§7.2.9): the flags byte (automatic RATS is `0x10`).
    pub const SET_PARAMETERS: u8 = 0x12;
    /// SAMConfiguration (§7.2.10): mode (`01` normal), timeout, IRQ.
    pub const SAM_CONFIGURATION: u8 = 0x14;
    /// PowerDown (§7.2.11).
    pub const POWER_DOWN: u8 = 0x16;
    /// RFConfiguration (§7.3.1): a config item and its values.
    pub const RF_CONFIGURATION: u8 = 0x32;
    /// InDataExchange (§7.3.8): Tg (bit 6 = MI, more to come) and data.
    pub const IN_DATA_EXCHANGE: u8 = 0x40;
    /// InCommunicateThru (§7.3.9): raw frames to the target.
    pub const IN_COMMUNICATE_THRU: u8 = 0x42;
    /// InDeselect (§7.3.10): Tg, 0 for all.
    pub const IN_DESELECT: u8 = 0x44;
    /// InJumpForPSL (§7.3.4).
    pub const IN_JUMP_FOR_PSL: u8 = 0x46;
    /// InListPassiveTarget (§7.3.5): MaxTg, BrTy, initiator data.
    pub const IN_LIST_PASSIVE_TARGET: u8 = 0x4A;
    /// InPSL (§7.3.6).
    pub const IN_PSL: u8 = 0x4E;
    /// InATR (§7.3.7).
    pub const IN_ATR: u8 = 0x50;
    /// InRelease (§7.3.11): Tg, 0 for all.
    pub const IN_RELEASE: u8 = 0x52;
    /// InSelect (§7.3.12): Tg.
    pub const IN_SELECT: u8 = 0x54;
    /// InJumpForDEP (§7.3.3).
    pub const IN_JUMP_FOR_DEP: u8 = 0x56;
    /// RFRegulationTest (§7.3.2).
    pub const RF_REGULATION_TEST: u8 = 0x58;
    /// InAutoPoll (§7.3.13).
    pub const IN_AUTO_POLL: u8 = 0x60;
    /// TgInitAsTarget (§7.3.14): the PN532 as a card; not emulated.
    pub const TG_INIT_AS_TARGET: u8 = 0x8C;
}

/// SAMConfiguration mode 1: normal mode, the SAM not used.
pub const SAM_MODE_NORMAL: u8 = 0x01;
/// InListPassiveTarget BrTy 0: 106 kbps type A (ISO/IEC 14443 type A).
pub const BAUD_TYPE_A_106: u8 = 0x00;
/// The most targets the PN532 handles at once (MaxTg of InListPassiveTarget).
pub const TARGETS_MAX: u8 = 2;
/// The most data bytes one InDataExchange carries in either direction; longer
/// APDUs and answers are chained with the MI bit.
pub const DATA_EXCHANGE_CHUNK_MAX: usize = 262;
/// The MI (more information) bit of InDataExchange's Tg byte and of its status byte.
pub const MORE_INFORMATION: u8 = 0x40;
/// The NAD bit of the status byte (never set here: no NAD in use).
pub const NAD_PRESENT: u8 = 0x80;
/// The error code bits of the status byte.
pub const ERROR_CODE_MASK: u8 = 0x3F;
/// SetParameters flag: send RATS automatically after selecting a type A target.
pub const PARAMETER_AUTOMATIC_RATS: u8 = 0x10;
/// SetParameters at power-on: automatic ATR_RES, automatic RATS, ISO 14443-4 PICC.
pub const PARAMETERS_DEFAULT: u8 = 0x04 | PARAMETER_AUTOMATIC_RATS | 0x20;

/// The error code in the status byte of InDataExchange, InDeselect, InRelease,
/// InSelect and others (§7.1, table "Error code list").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Status {
    Ok,
    /// 0x01: time out, the target has not answered. What a removed card causes.
    Timeout,
    /// 0x02: CRC error detected by the contactless UART.
    Crc,
    /// 0x10: invalid parameter (range, format).
    InvalidParameter,
    /// 0x13: the data format does not match the specification (ISO 14443-4, DEP).
    InvalidFrame,
    /// 0x26: operation not allowed in this configuration.
    NotAllowed,
    /// 0x27: command not acceptable in the current context (e.g. no target selected).
    NotAcceptable,
    /// 0x29: the target has been released by the initiator.
    Released,
    /// 0x2B: the card previously activated has disappeared (type B).
    Disappeared,
    Other(u8),
}

impl Status {
    pub fn from_byte(byte: u8) -> Status {
        match byte & ERROR_CODE_MASK {
            0x00 => Status::Ok,
            0x01 => Status::Timeout,
            0x02 => Status::Crc,
            0x10 => Status::InvalidParameter,
            0x13 => Status::InvalidFrame,
            0x26 => Status::NotAllowed,
            0x27 => Status::NotAcceptable,
            0x29 => Status::Released,
            0x2B => Status::Disappeared,
            other => Status::Other(other),
        }
    }

    pub fn code(self) -> u8 {
        match self {
            Status::Ok => 0x00,
            Status::Timeout => 0x01,
            Status::Crc => 0x02,
            Status::InvalidParameter => 0x10,
            Status::InvalidFrame => 0x13,
            Status::NotAllowed => 0x26,
            Status::NotAcceptable => 0x27,
            Status::Released => 0x29,
            Status::Disappeared => 0x2B,
            Status::Other(code) => code & ERROR_CODE_MASK,
        }
    }

    /// Whether this status means the card is gone from the field, so the
    /// outcome of the command that got it is unknown.
    pub fn means_card_gone(self) -> bool {
        matches!(self, Status::Timeout | Status::Released | Status::Disappeared)
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = match self {
            Status::Ok => "success",
            Status::Timeout => "time out, the target has not answered",
            Status::Crc => "CRC error",
            Status::InvalidParameter => "invalid parameter",
            Status::InvalidFrame => "invalid received frame",
            Status::NotAllowed => "operation not allowed in this configuration",
            Status::NotAcceptable => "command not acceptable in the current context",
            Status::Released => "target released",
            Status::Disappeared => "card disappeared",
            Status::Other(_) => "error",
        };
        write!(f, "{:#04X} ({text})", self.code())
    }
}

/// A type A target as InListPassiveTarget reports it (§7.3.5, TargetData for
/// 106 kbps type A): Tg, SENS_RES (ATQA, 2 bytes), SEL_RES (SAK), the UID
/// (NFCID1) with its length, and the ATS when the PN532 sent RATS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeATarget {
    pub number: u8,
    pub atqa: [u8; 2],
    pub sak: u8,
    pub uid: Vec<u8>,
    /// The ATS, its length byte TL first.
    pub ats: Vec<u8>,
}

/// The longest NFCID1 (a triple-size UID).
pub const UID_LENGTH_MAX: usize = 10;
/// The longest ATS (ISO/IEC 14443-4: TL is at most FSD - 2).
pub const ATS_LENGTH_MAX: usize = 254;
/// SAK bit: the target complies with ISO/IEC 14443-4.
pub const SAK_ISO14443_4: u8 = 0x20;

/// Why an InListPassiveTarget answer does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed InListPassiveTarget answer: {0}")]
pub struct TargetDataError(pub &'static str);

impl TypeATarget {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = vec![self.number, self.atqa[0], self.atqa[1], self.sak, self.uid.len() as u8];
        bytes.extend_from_slice(&self.uid);
        bytes.extend_from_slice(&self.ats);
        bytes
    }

    /// Parses the answer of InListPassiveTarget at 106 kbps type A: NbTg, then
    /// that many targets. The ATS is present when the target's SAK says
    /// ISO 14443-4 and automatic RATS is on; a target is then followed by its TL.
    pub fn parse_list(parameters: &[u8], with_ats: bool) -> Result<Vec<TypeATarget>, TargetDataError> {
        let (&count, mut rest) = parameters.split_first().ok_or(TargetDataError("empty"))?;
        if count > TARGETS_MAX {
            return Err(TargetDataError("more targets than the PN532 handles"));
        }
        let mut targets = Vec::with_capacity(usize::from(count));
        for _ in 0..count {
            let [number, atqa0, atqa1, sak, uid_length, tail @ ..] = rest else {
                return Err(TargetDataError("target data too short"));
            };
            let uid_length = usize::from(*uid_length);
            if uid_length > UID_LENGTH_MAX || tail.len() < uid_length {
                return Err(TargetDataError("bad UID length"));
            }
            let (uid, mut tail) = tail.split_at(uid_length);
            let mut ats = Vec::new();
            if with_ats && sak & SAK_ISO14443_4 != 0 {
                let &tl = tail.first().ok_or(TargetDataError("ATS missing"))?;
                let tl = usize::from(tl);
                if tl == 0 || tl > ATS_LENGTH_MAX || tail.len() < tl {
                    return Err(TargetDataError("bad ATS length"));
                }
                ats = tail[..tl].to_vec();
                tail = &tail[tl..];
            }
            targets.push(TypeATarget { number: *number, atqa: [*atqa0, *atqa1], sak: *sak, uid: uid.to_vec(), ats });
            rest = tail;
        }
        if !rest.is_empty() {
            return Err(TargetDataError("trailing bytes"));
        }
        Ok(targets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_round_trip() {
        for byte in 0..=0x3F {
            assert_eq!(Status::from_byte(byte).code(), byte);
        }
        assert_eq!(Status::from_byte(0x41), Status::Timeout, "MI bit is not part of the code");
        assert!(Status::Timeout.means_card_gone());
        assert!(!Status::NotAcceptable.means_card_gone());
    }

    #[test]
    fn target_lists_parse() {
        // The user manual's example: one MIFARE 1K, no ATS.
        let one = [0x01, 0x01, 0x00, 0x04, 0x08, 0x04, 0x92, 0x2E, 0x58, 0x32];
        let targets = TypeATarget::parse_list(&one, true).expect("parses");
        assert_eq!(targets[0].uid, [0x92, 0x2E, 0x58, 0x32]);
        assert!(targets[0].ats.is_empty());
        let card =
            TypeATarget { number: 1, atqa: [0x00, 0x04], sak: 0x20, uid: vec![8, 1, 2, 3], ats: vec![3, 0x78, 0x80] };
        let mut two = vec![2];
        two.extend(card.to_bytes());
        two.extend(TypeATarget { number: 2, ..card.clone() }.to_bytes());
        assert_eq!(TypeATarget::parse_list(&two, true).expect("two").len(), 2);
        assert!(TypeATarget::parse_list(&two[..two.len() - 1], true).is_err());
        assert!(TypeATarget::parse_list(&[3], true).is_err());
        assert!(TypeATarget::parse_list(&[], true).is_err());
        assert_eq!(TypeATarget::parse_list(&[0], true), Ok(vec![]));
        let mut zero_tl = vec![1];
        zero_tl.extend(TypeATarget { ats: vec![0], ..card }.to_bytes());
        assert!(TypeATarget::parse_list(&zero_tl, true).is_err());
    }
}

//! The purse's compound (transit) record, EF `0017`, as terminals read and
//! write it: the 48-byte layout of `docs/card.md`. The card treats the body as
//! opaque bytes; it writes a record only together with the DEBIT that follows
//! UPDATE CAPP DATA CACHE.

use card_host::responses::ResponseError;
use card_host::{CardDateTime, Fen, TerminalNumber};

/// The record's length, identifier and length bytes included.
pub const COMPOUND_RECORD_BYTES: usize = card_host::issue::COMPOUND_RECORD_LENGTH as usize;

/// Where a trip stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TripState {
    None,
    TappedIn,
    TappedOut,
}

/// A compound record, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompoundRecord {
    /// `01` bus, `02` metro.
    pub identifier: u8,
    pub state: TripState,
    pub route: u16,
    pub entry_station: u16,
    pub entry_terminal: TerminalNumber,
    pub entry_at: Option<CardDateTime>,
    /// The most the trip can cost (charged when the exit is missing).
    pub max_fare: Fen,
    pub exit_station: u16,
    pub exit_at: Option<CardDateTime>,
    pub fare: Fen,
    /// When the transfer window opened, `MMDDhhmm` BCD (zero: none).
    pub transfer_window: [u8; 4],
}

fn optional_date_time(bytes: &[u8]) -> Result<Option<CardDateTime>, ResponseError> {
    if bytes.iter().all(|b| *b == 0) {
        return Ok(None);
    }
    CardDateTime::from_slice(bytes)
        .map(Some)
        .map_err(|source| ResponseError::Value { what: "compound record date and time", source })
}

fn u16_at(bytes: &[u8], offset: usize) -> u16 {
    u16::from_be_bytes([bytes[offset], bytes[offset + 1]])
}

fn u32_at(bytes: &[u8], offset: usize) -> u32 {
    u32::from_be_bytes([bytes[offset], bytes[offset + 1], bytes[offset + 2], bytes[offset + 3]])
}

fn bcd(value: u8) -> u8 {
    ((value / 10) << 4) | (value % 10)
}

fn from_bcd(byte: u8) -> Option<u8> {
    let (high, low) = (byte >> 4, byte & 0x0F);
    (high < 10 && low < 10).then_some(high * 10 + low)
}

impl CompoundRecord {
    /// An empty record (as issued) with `identifier`.
    pub fn empty(identifier: u8) -> Self {
        CompoundRecord {
            identifier,
            state: TripState::None,
            route: 0,
            entry_station: 0,
            entry_terminal: TerminalNumber([0; 6]),
            entry_at: None,
            max_fare: Fen::ZERO,
            exit_station: 0,
            exit_at: None,
            fare: Fen::ZERO,
            transfer_window: [0; 4],
        }
    }

    pub fn parse(bytes: &[u8]) -> Result<Self, ResponseError> {
        if bytes.len() != COMPOUND_RECORD_BYTES || usize::from(bytes[1]) != COMPOUND_RECORD_BYTES - 2 {
            return Err(ResponseError::Length {
                what: "compound record",
                expected: COMPOUND_RECORD_BYTES,
                got: bytes.len(),
            });
        }
        let state = match bytes[3] {
            0x00 => TripState::None,
            0x01 => TripState::TappedIn,
            0x02 => TripState::TappedOut,
            // Unknown states (another operator's) count as no trip in progress.
            _ => TripState::None,
        };
        Ok(CompoundRecord {
            identifier: bytes[0],
            state,
            route: u16_at(bytes, 4),
            entry_station: u16_at(bytes, 6),
            entry_terminal: TerminalNumber(bytes[8..14].try_into().unwrap_or([0; 6])),
            entry_at: optional_date_time(&bytes[14..21])?,
            max_fare: Fen(u32_at(bytes, 21)),
            exit_station: u16_at(bytes, 25),
            exit_at: optional_date_time(&bytes[27..34])?,
            fare: Fen(u32_at(bytes, 34)),
            transfer_window: bytes[38..42].try_into().unwrap_or([0; 4]),
        })
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = vec![0; COMPOUND_RECORD_BYTES];
        bytes[0] = self.identifier;
        bytes[1] = (COMPOUND_RECORD_BYTES - 2) as u8;
        bytes[3] = match self.state {
            TripState::None => 0x00,
            TripState::TappedIn => 0x01,
            TripState::TappedOut => 0x02,
        };
        bytes[4..6].copy_from_slice(&self.route.to_be_bytes());
        bytes[6..8].copy_from_slice(&self.entry_station.to_be_bytes());
        bytes[8..14].copy_from_slice(&self.entry_terminal.0);
        if let Some(at) = self.entry_at {
            bytes[14..21].copy_from_slice(&at.to_bytes());
        }
        bytes[21..25].copy_from_slice(&self.max_fare.to_bytes());
        bytes[25..27].copy_from_slice(&self.exit_station.to_be_bytes());
        if let Some(at) = self.exit_at {
            bytes[27..34].copy_from_slice(&at.to_bytes());
        }
        bytes[34..38].copy_from_slice(&self.fare.to_bytes());
        bytes[38..42].copy_from_slice(&self.transfer_window);
        bytes
    }

    /// The transfer window's opening as `MMDDhhmm` BCD, from a date and time.
    pub fn window_bytes(at: &CardDateTime) -> [u8; 4] {
        let (_, month, day) = at.ymd();
        let time = at.time();
        [bcd(month), bcd(day), time[0], time[1]]
    }

    /// When the transfer window opened, in Unix seconds, placed in the year of
    /// `now` (or the year before, if that would be in the future).
    pub fn transfer_window_opened(&self, now: &CardDateTime) -> Option<u64> {
        if self.transfer_window == [0; 4] {
            return None;
        }
        let [month, day, hour, minute] = self.transfer_window.map(from_bcd);
        let (month, day, hour, minute) = (month?, day?, hour?, minute?);
        let (year, ..) = now.ymd();
        let this_year = CardDateTime::new(year, month, day, hour, minute, 0).ok()?;
        if this_year.unix_seconds() <= now.unix_seconds() {
            return Some(this_year.unix_seconds());
        }
        CardDateTime::new(year.checked_sub(1)?, month, day, hour, minute, 0).ok().map(|at| at.unix_seconds())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_the_documented_layout() {
        let at = CardDateTime::new(2026, 11, 25, 8, 30, 15).expect("valid");
        let record = CompoundRecord {
            identifier: 1,
            state: TripState::TappedIn,
            route: 42,
            entry_station: 7,
            entry_terminal: TerminalNumber([0x31, 0, 0, 0, 0, 0x42]),
            entry_at: Some(at),
            max_fare: Fen(500),
            exit_station: 0,
            exit_at: None,
            fare: Fen::ZERO,
            transfer_window: CompoundRecord::window_bytes(&at),
        };
        let bytes = record.to_bytes();
        assert_eq!(bytes.len(), 48);
        assert_eq!(&bytes[..8], &[0x01, 0x2E, 0x00, 0x01, 0x00, 42, 0x00, 7]);
        assert_eq!(&bytes[14..21], &[0x20, 0x26, 0x11, 0x25, 0x08, 0x30, 0x15]);
        assert_eq!(&bytes[38..42], &[0x11, 0x25, 0x08, 0x30]);
        assert_eq!(CompoundRecord::parse(&bytes).expect("parse"), record);
        assert_eq!(record.transfer_window_opened(&at), Some(at.unix_seconds() - 15));
        let issued = CompoundRecord::empty(1);
        assert_eq!(CompoundRecord::parse(&issued.to_bytes()).expect("parse"), issued);
        assert!(CompoundRecord::parse(&bytes[..47]).is_err());
    }

    #[test]
    fn a_window_from_last_december_is_last_year() {
        let mut record = CompoundRecord::empty(1);
        record.transfer_window = [0x12, 0x31, 0x23, 0x50];
        let now = CardDateTime::new(2027, 1, 1, 0, 10, 0).expect("valid");
        let opened = record.transfer_window_opened(&now).expect("window");
        assert_eq!(now.unix_seconds() - opened, 20 * 60);
    }
}

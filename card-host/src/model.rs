//! The values the card protocol carries, as types: money in fen, terminal numbers,
//! application serial numbers, transaction types, BCD dates and times.
//!
//! Each is parsed from bytes at the edge and serialised back by the same type, so
//! the rest of the code never passes raw byte strings around.

use serde::{Deserialize, Serialize};

/// An amount of money in fen (1/100 yuan), as the card holds it: 4 bytes, big-endian.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Fen(pub u32);

impl Fen {
    pub const ZERO: Fen = Fen(0);

    pub fn to_bytes(self) -> [u8; 4] {
        self.0.to_be_bytes()
    }

    pub fn from_bytes(bytes: [u8; 4]) -> Self {
        Fen(u32::from_be_bytes(bytes))
    }

    /// Parses yuan as written by people ("12", "12.5", "12.50") into fen, exactly:
    /// no floating point, at most two decimals.
    pub fn parse_yuan(text: &str) -> Result<Fen, ValueError> {
        let bad = || ValueError::OutOfRange { what: "amount in yuan", hex: text.to_owned() };
        let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
        if whole.is_empty() || fraction.len() > 2 || !whole.bytes().chain(fraction.bytes()).all(|b| b.is_ascii_digit())
        {
            return Err(bad());
        }
        let whole: u32 = whole.parse().map_err(|_| bad())?;
        let fraction: u32 =
            if fraction.is_empty() { 0 } else { format!("{fraction:0<2}").parse().map_err(|_| bad())? };
        whole.checked_mul(100).and_then(|fen| fen.checked_add(fraction)).map(Fen).ok_or_else(bad)
    }

    pub fn checked_add(self, other: Fen) -> Option<Fen> {
        self.0.checked_add(other.0).map(Fen)
    }

    pub fn checked_sub(self, other: Fen) -> Option<Fen> {
        self.0.checked_sub(other.0).map(Fen)
    }
}

impl std::fmt::Display for Fen {
    /// Yuan with two decimals, from integer arithmetic only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{:02}", self.0 / 100, self.0 % 100)
    }
}

/// What is wrong with a value read from bytes or text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ValueError {
    #[error("{what} must be {expected} bytes, got {got}")]
    Length { what: &'static str, expected: usize, got: usize },
    #[error("{what} is not valid BCD: {hex}")]
    NotBcd { what: &'static str, hex: String },
    #[error("{what} is out of range: {hex}")]
    OutOfRange { what: &'static str, hex: String },
    #[error("{what} is not hexadecimal: {text:?}")]
    NotHex { what: &'static str, text: String },
    #[error("unknown transaction type {0:02X}")]
    UnknownTransactionType(u8),
}

fn fixed<const N: usize>(what: &'static str, bytes: &[u8]) -> Result<[u8; N], ValueError> {
    bytes.try_into().map_err(|_| ValueError::Length { what, expected: N, got: bytes.len() })
}

fn fixed_hex<const N: usize>(what: &'static str, text: &str) -> Result<[u8; N], ValueError> {
    let bytes = hex::decode(text).map_err(|_| ValueError::NotHex { what, text: text.to_owned() })?;
    fixed(what, &bytes)
}

fn is_bcd(bytes: &[u8]) -> bool {
    bytes.iter().all(|b| b >> 4 <= 9 && b & 0x0F <= 9)
}

fn bcd_value(byte: u8) -> u8 {
    (byte >> 4) * 10 + (byte & 0x0F)
}

fn to_bcd(value: u8) -> u8 {
    debug_assert!(value < 100);
    ((value / 10) << 4) | (value % 10)
}

/// The 6-byte terminal number (PSAM file `0016`), BCD in practice but carried as bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TerminalNumber(pub [u8; 6]);

impl TerminalNumber {
    pub fn from_slice(bytes: &[u8]) -> Result<Self, ValueError> {
        fixed("terminal number", bytes).map(TerminalNumber)
    }

    pub fn parse_hex(text: &str) -> Result<Self, ValueError> {
        fixed_hex("terminal number", text).map(TerminalNumber)
    }
}

impl std::fmt::Display for TerminalNumber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode_upper(self.0))
    }
}

/// The 8-byte application serial number of the e-purse (public-information file
/// `0015`, offset 12): the card number, and the diversification factor of its keys.
///
/// It identifies a card: log it through [`ApplicationSerial::masked`], never whole.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ApplicationSerial(pub [u8; 8]);

impl ApplicationSerial {
    pub fn from_slice(bytes: &[u8]) -> Result<Self, ValueError> {
        fixed("application serial number", bytes).map(ApplicationSerial)
    }

    pub fn parse_hex(text: &str) -> Result<Self, ValueError> {
        fixed_hex("application serial number", text).map(ApplicationSerial)
    }

    /// The full number as hex: for storage and for the card itself, not for logs.
    pub fn to_hex(&self) -> String {
        hex::encode_upper(self.0)
    }

    /// The number with all but the last four digits hidden, for logs and screens.
    pub fn masked(&self) -> String {
        let full = self.to_hex();
        format!("************{}", &full[12..])
    }
}

impl std::fmt::Debug for ApplicationSerial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApplicationSerial({})", self.masked())
    }
}

/// The one-byte transaction type used in MAC and TAC data and in records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum TransactionType {
    /// `01` e-deposit load.
    DepositLoad,
    /// `02` e-purse load (圈存).
    PurseLoad,
    /// `05` e-deposit purchase.
    DepositPurchase,
    /// `06` e-purse purchase.
    PursePurchase,
    /// `09` compound (CAPP) purchase.
    CompoundPurchase,
}

impl TransactionType {
    pub fn code(self) -> u8 {
        match self {
            TransactionType::DepositLoad => 0x01,
            TransactionType::PurseLoad => 0x02,
            TransactionType::DepositPurchase => 0x05,
            TransactionType::PursePurchase => 0x06,
            TransactionType::CompoundPurchase => 0x09,
        }
    }

    pub fn from_code(code: u8) -> Result<Self, ValueError> {
        Ok(match code {
            0x01 => TransactionType::DepositLoad,
            0x02 => TransactionType::PurseLoad,
            0x05 => TransactionType::DepositPurchase,
            0x06 => TransactionType::PursePurchase,
            0x09 => TransactionType::CompoundPurchase,
            other => return Err(ValueError::UnknownTransactionType(other)),
        })
    }

    pub fn is_load(self) -> bool {
        matches!(self, TransactionType::DepositLoad | TransactionType::PurseLoad)
    }
}

/// A transaction date and time as the card carries them: `YYYYMMDD` (4 bytes BCD)
/// and `hhmmss` (3 bytes BCD). Parsing checks the digits and the ranges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CardDateTime {
    date: [u8; 4],
    time: [u8; 3],
}

/// The days of a month of the Gregorian calendar.
fn days_in_month(year: u16, month: u8) -> u8 {
    match month {
        2 if year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400)) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

impl CardDateTime {
    pub fn from_bytes(date: &[u8], time: &[u8]) -> Result<Self, ValueError> {
        let date: [u8; 4] = fixed("date", date)?;
        let time: [u8; 3] = fixed("time", time)?;
        if !is_bcd(&date) {
            return Err(ValueError::NotBcd { what: "date", hex: hex::encode_upper(date) });
        }
        if !is_bcd(&time) {
            return Err(ValueError::NotBcd { what: "time", hex: hex::encode_upper(time) });
        }
        let year = u16::from(bcd_value(date[0])) * 100 + u16::from(bcd_value(date[1]));
        let (month, day) = (bcd_value(date[2]), bcd_value(date[3]));
        if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
            return Err(ValueError::OutOfRange { what: "date", hex: hex::encode_upper(date) });
        }
        let (hour, minute, second) = (bcd_value(time[0]), bcd_value(time[1]), bcd_value(time[2]));
        if hour > 23 || minute > 59 || second > 59 {
            return Err(ValueError::OutOfRange { what: "time", hex: hex::encode_upper(time) });
        }
        Ok(CardDateTime { date, time })
    }

    /// From the 7 bytes `YYYYMMDDhhmmss`.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, ValueError> {
        let bytes: [u8; 7] = fixed("date and time", bytes)?;
        Self::from_bytes(&bytes[..4], &bytes[4..])
    }

    /// From calendar fields (year 0..=9999).
    pub fn new(year: u16, month: u8, day: u8, hour: u8, minute: u8, second: u8) -> Result<Self, ValueError> {
        if year > 9999 {
            return Err(ValueError::OutOfRange { what: "year", hex: format!("{year}") });
        }
        let date = [to_bcd((year / 100) as u8), to_bcd((year % 100) as u8), to_bcd(month % 100), to_bcd(day % 100)];
        let time = [to_bcd(hour % 100), to_bcd(minute % 100), to_bcd(second % 100)];
        Self::from_bytes(&date, &time)
    }

    /// The UTC date and time of a Unix timestamp (seconds), from 1970 to 9999.
    pub fn from_unix_seconds(seconds: u64) -> Result<Self, ValueError> {
        let days = seconds / 86_400;
        let of_day = seconds % 86_400;
        let (year, month, day) = civil_from_days(days);
        let year = u16::try_from(year).map_err(|_| ValueError::OutOfRange { what: "year", hex: format!("{year}") })?;
        Self::new(year, month, day, (of_day / 3600) as u8, (of_day / 60 % 60) as u8, (of_day % 60) as u8)
    }

    /// The current UTC date and time.
    pub fn now_utc() -> Self {
        let seconds = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| elapsed.as_secs())
            .unwrap_or(0);
        Self::from_unix_seconds(seconds).unwrap_or(CardDateTime { date: [0x19, 0x70, 0x01, 0x01], time: [0; 3] })
    }

    /// The local date and time now, `offset_minutes` east of UTC (480 is China
    /// Standard Time): the clock cards, terminals and the issuer's host share.
    pub fn now_at_offset(offset_minutes: i32) -> Self {
        let utc =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_secs());
        let local = i64::try_from(utc).unwrap_or(i64::MAX).saturating_add(i64::from(offset_minutes) * 60);
        u64::try_from(local)
            .ok()
            .and_then(|seconds| Self::from_unix_seconds(seconds).ok())
            .unwrap_or_else(Self::now_utc)
    }

    /// The calendar year, month and day.
    pub fn ymd(&self) -> (u16, u8, u8) {
        let d = self.date;
        (u16::from(bcd_value(d[0])) * 100 + u16::from(bcd_value(d[1])), bcd_value(d[2]), bcd_value(d[3]))
    }

    /// Seconds since 1970-01-01 00:00:00 UTC.
    pub fn unix_seconds(&self) -> u64 {
        let (year, month, day) = self.ymd();
        let days = days_from_civil(u64::from(year), month, day);
        let t = self.time;
        days * 86_400 + u64::from(bcd_value(t[0])) * 3600 + u64::from(bcd_value(t[1])) * 60 + u64::from(bcd_value(t[2]))
    }

    pub fn date(&self) -> [u8; 4] {
        self.date
    }

    pub fn time(&self) -> [u8; 3] {
        self.time
    }

    /// The 7 bytes `YYYYMMDDhhmmss`.
    pub fn to_bytes(&self) -> [u8; 7] {
        let mut out = [0; 7];
        out[..4].copy_from_slice(&self.date);
        out[4..].copy_from_slice(&self.time);
        out
    }
}

/// Year, month, day of a count of days since 1970-01-01 (proleptic Gregorian;
/// the "civil from days" algorithm of H. Hinnant's date library).
fn civil_from_days(days: u64) -> (u64, u8, u8) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u8;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 } as u8;
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// Days since 1970-01-01 of a calendar date (the inverse of `civil_from_days`).
fn days_from_civil(year: u64, month: u8, day: u8) -> u64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year / 400;
    let year_of_era = year % 400;
    let month = u64::from(month);
    let day_of_year = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + u64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// Packs decimal digits into BCD, two a byte; an odd count gets a leading 0.
pub fn bcd_from_digits(digits: &str) -> Result<Vec<u8>, ValueError> {
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ValueError::NotBcd { what: "digits", hex: digits.to_owned() });
    }
    let padded = if digits.len() % 2 == 1 { format!("0{digits}") } else { digits.to_owned() };
    Ok(padded.as_bytes().chunks(2).map(|pair| ((pair[0] - b'0') << 4) | (pair[1] - b'0')).collect())
}

impl std::fmt::Display for CardDateTime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d = hex::encode(self.date);
        let t = hex::encode(self.time);
        write!(f, "{}-{}-{} {}:{}:{}", &d[..4], &d[4..6], &d[6..], &t[..2], &t[2..4], &t[4..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fen_displays_as_yuan_without_floats() {
        assert_eq!(Fen(7223).to_string(), "72.23");
        assert_eq!(Fen(5).to_string(), "0.05");
        assert_eq!(Fen::from_bytes([0, 0, 0x1C, 0x37]), Fen(7223));
        assert_eq!(Fen(1).checked_sub(Fen(2)), None);
        assert_eq!(Fen::parse_yuan("12.5"), Ok(Fen(1250)));
        assert_eq!(Fen::parse_yuan("0.05"), Ok(Fen(5)));
        assert_eq!(Fen::parse_yuan("100"), Ok(Fen(10000)));
        assert!(Fen::parse_yuan("1.005").is_err());
        assert!(Fen::parse_yuan("-1").is_err());
        assert!(Fen::parse_yuan("99999999").is_err());
    }

    #[test]
    fn a_date_is_a_day_of_its_month() {
        assert!(CardDateTime::new(2026, 2, 28, 0, 0, 0).is_ok());
        assert!(CardDateTime::new(2026, 2, 29, 0, 0, 0).is_err());
        assert!(CardDateTime::new(2028, 2, 29, 0, 0, 0).is_ok());
        assert!(CardDateTime::new(2100, 2, 29, 0, 0, 0).is_err());
        assert!(CardDateTime::new(2000, 2, 29, 0, 0, 0).is_ok());
        assert!(CardDateTime::new(2026, 2, 30, 0, 0, 0).is_err());
        assert!(CardDateTime::new(2026, 4, 31, 0, 0, 0).is_err());
        assert!(CardDateTime::new(2026, 12, 31, 23, 59, 59).is_ok());
    }

    #[test]
    fn local_time_is_the_offset_east_of_utc() {
        // Bracket the call with UTC readings: the local clock lies 8 hours ahead of both.
        let before = CardDateTime::now_utc().unix_seconds();
        let china = CardDateTime::now_at_offset(480).unix_seconds();
        let after = CardDateTime::now_utc().unix_seconds();
        assert!((before + 8 * 3600..=after + 8 * 3600).contains(&china));
        let west = CardDateTime::now_at_offset(-300).unix_seconds();
        assert!(west + 5 * 3600 >= before && west + 5 * 3600 <= CardDateTime::now_utc().unix_seconds());
    }

    #[test]
    fn date_time_is_checked() {
        let at = CardDateTime::from_slice(&hex::decode("20140825103100").expect("hex")).expect("valid");
        assert_eq!(at.to_string(), "2014-08-25 10:31:00");
        assert_eq!(CardDateTime::new(2014, 8, 25, 10, 31, 0).expect("valid"), at);
        assert!(matches!(
            CardDateTime::from_slice(&hex::decode("20141325103100").expect("hex")),
            Err(ValueError::OutOfRange { what: "date", .. })
        ));
        assert!(matches!(
            CardDateTime::from_slice(&hex::decode("2014082510310A").expect("hex")),
            Err(ValueError::NotBcd { what: "time", .. })
        ));
        assert!(matches!(CardDateTime::from_slice(&[0x20]), Err(ValueError::Length { .. })));
    }

    #[test]
    fn unix_time_round_trips_through_the_calendar() {
        let at = CardDateTime::from_unix_seconds(1_408_962_660).expect("in range");
        assert_eq!(at.to_string(), "2014-08-25 10:31:00");
        assert_eq!(at.unix_seconds(), 1_408_962_660);
        for seconds in [0u64, 951_782_400, 4_102_444_799, 1_700_000_000] {
            assert_eq!(CardDateTime::from_unix_seconds(seconds).expect("in range").unix_seconds(), seconds);
        }
        assert_eq!(bcd_from_digits("310115").expect("digits"), vec![0x31, 0x01, 0x15]);
        assert_eq!(bcd_from_digits("123").expect("digits"), vec![0x01, 0x23]);
    }

    #[test]
    fn serial_is_masked_in_logs() {
        let serial = ApplicationSerial::parse_hex("4100000089999985").expect("hex");
        assert_eq!(format!("{serial:?}"), "ApplicationSerial(************9985)");
        assert_eq!(serial.to_hex(), "4100000089999985");
    }

    #[test]
    fn transaction_types_round_trip() {
        for code in [1u8, 2, 5, 6, 9] {
            assert_eq!(TransactionType::from_code(code).expect("known").code(), code);
        }
        assert_eq!(TransactionType::from_code(3), Err(ValueError::UnknownTransactionType(3)));
    }
}

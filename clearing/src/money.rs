//! Money in clearing: amounts arrive from cards as integer fen ([`Fen`](card_host::model::Fen)) and are
//! stored as integer fen; arithmetic that can produce fractions of a fen (fees)
//! is done in [`rust_decimal::Decimal`] and rounded by one stated rule:
//!
//! **The fee is computed per merchant per settlement (one a day unless records
//! arrive after the day was settled) on the settlement's gross amount, and
//! rounded half-up (half away from zero; amounts are never negative) to the
//! whole fen.** Net = gross − fee, so the rounding never loses a fen.

use rust_decimal::{Decimal, RoundingStrategy};

use crate::error::Error;

/// The most decimals a fee rate may have.
pub const FEE_RATE_DECIMALS_MAX: u32 = 6;

/// A merchant's fee rate: an exact decimal fraction, 0 ≤ rate < 1, at most six decimals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeeRate(Decimal);

impl FeeRate {
    pub fn parse(text: &str) -> Result<FeeRate, Error> {
        let bad = |message: &str| Error::invalid("fee_rate", format!("{message}: {text:?}"));
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            return Err(bad("must be a decimal fraction such as 0.0060"));
        }
        let rate: Decimal = text.parse().map_err(|_| bad("not a decimal"))?;
        if rate.scale() > FEE_RATE_DECIMALS_MAX {
            return Err(bad("more than six decimals"));
        }
        if rate.is_sign_negative() || rate >= Decimal::ONE {
            return Err(bad("must be at least 0 and below 1"));
        }
        Ok(FeeRate(rate))
    }

    pub fn value(&self) -> Decimal {
        self.0
    }
}

impl std::fmt::Display for FeeRate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The fee on a gross amount in fen, by the rule above.
pub fn fee_fen(gross_fen: i64, rate: FeeRate) -> i64 {
    assert!(gross_fen >= 0, "a settlement's gross is never negative");
    let exact = Decimal::from(gross_fen) * rate.value();
    let rounded = exact.round_dp_with_strategy(0, RoundingStrategy::MidpointAwayFromZero);
    let fee = i64::try_from(rounded).unwrap_or(i64::MAX);
    assert!((0..=gross_fen).contains(&fee), "a fee is between 0 and the gross");
    fee
}

/// Formats fen as yuan with two decimals, from integers only.
pub fn yuan(fen: i64) -> String {
    let sign = if fen < 0 { "-" } else { "" };
    let fen = fen.unsigned_abs();
    format!("{sign}{}.{:02}", fen / 100, fen % 100)
}

/// A business day, `YYYY-MM-DD`: the calendar date of the card's transaction time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BusinessDay {
    year: u16,
    month: u8,
    day: u8,
}

impl BusinessDay {
    pub fn parse(text: &str) -> Result<BusinessDay, Error> {
        let bad = || Error::invalid("date", format!("must be YYYY-MM-DD, got {text:?}"));
        let bytes = text.as_bytes();
        if bytes.len() != 10 || bytes[4] != b'-' || bytes[7] != b'-' {
            return Err(bad());
        }
        let number = |range: std::ops::Range<usize>| -> Result<u16, Error> {
            let part = &text[range];
            if !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            part.parse().map_err(|_| bad())
        };
        let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
        // Let the card's date type check the calendar.
        card_host::model::CardDateTime::new(year, month as u8, day as u8, 0, 0, 0).map_err(|_| bad())?;
        Ok(BusinessDay { year, month: month as u8, day: day as u8 })
    }

    pub fn of(at: &card_host::model::CardDateTime) -> BusinessDay {
        let (year, month, day) = at.ymd();
        BusinessDay { year, month, day }
    }
}

impl std::fmt::Display for BusinessDay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(text: &str) -> FeeRate {
        FeeRate::parse(text).expect("valid rate")
    }

    #[test]
    fn fees_round_half_up_to_the_fen() {
        assert_eq!(fee_fen(100, rate("0.005")), 1); // 0.5 fen: half goes up
        assert_eq!(fee_fen(99, rate("0.005")), 0); // 0.495 fen
        assert_eq!(fee_fen(150, rate("0.005")), 1); // 0.75 fen
        assert_eq!(fee_fen(300, rate("0.005")), 2); // 1.5 fen
        assert_eq!(fee_fen(250, rate("0.006")), 2); // 1.5 fen
        assert_eq!(fee_fen(1_234_567, rate("0.0060")), 7407); // 7407.402
        assert_eq!(fee_fen(0, rate("0.0060")), 0);
        assert_eq!(fee_fen(1_000, rate("0")), 0);
        assert_eq!(fee_fen(i64::from(u32::MAX) * 1000, rate("0.999999")), 4_294_963_000_033);
    }

    #[test]
    fn fee_rates_are_checked() {
        for bad in ["", "-0.1", "1", "1.5", "0.0000001", "abc", "0,5", "1e-3"] {
            assert!(FeeRate::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(rate("0.0060").to_string(), "0.0060");
    }

    #[test]
    fn business_days_parse() {
        assert_eq!(BusinessDay::parse("2026-11-24").expect("valid").to_string(), "2026-11-24");
        for bad in ["2026-13-01", "2026-1-01", "20261124", "2026-11-24x", "abcd-ef-gh"] {
            assert!(BusinessDay::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(yuan(12345), "123.45");
        assert_eq!(yuan(-5), "-0.05");
    }
}

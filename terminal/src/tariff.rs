//! Fares from a tariff file (`fixtures/tariffs/*.toml`): a flat fare, or a
//! distance fare by stations between tap-in and tap-out; concessions by card
//! type; a transfer discount within a time window; refusal when the balance is
//! below the fare. Integer fen only.
//!
//! The order of the rules, and the rounding:
//!
//! 1. the base fare: flat, or by distance (`base_fen` up to `included_stations`,
//!    then `step_fen` for each started block of `step_stations`, capped at
//!    `max_fen`);
//! 2. the concession of the card type: `free`, `percent_off` (the discount is
//!    `base × percent / 100` **rounded down** to a whole fen, so the rider pays
//!    the fen that does not divide), or `fixed_off_fen` (never below zero);
//! 3. the transfer discount, `discount_fen` off what is left (never below zero),
//!    when this boarding is on another route within `window_minutes` of the
//!    boarding that opened the transfer window.
//!
//! A fare is at most [`FARE_MAX`]; a percentage at most 100.

use std::collections::BTreeMap;
use std::path::Path;

use card_host::Fen;
use card_host::card::CardType;
use serde::Deserialize;

/// The largest fare a tariff may charge: 100 yuan.
pub const FARE_MAX: Fen = Fen(10_000);
/// The largest tariff file read.
pub const TARIFF_FILE_BYTES_MAX: u64 = 64 * 1024;
/// The longest transfer window: a day.
pub const TRANSFER_WINDOW_MINUTES_MAX: u32 = 24 * 60;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TariffError {
    #[error("tariff {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("tariff {path}: larger than {TARIFF_FILE_BYTES_MAX} bytes")]
    TooLarge { path: String },
    #[error("tariff {path}: {source}")]
    Parse { path: String, source: Box<toml::de::Error> },
    #[error("tariff: {0}")]
    Invalid(String),
}

/// How the base fare is found.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum FareRule {
    /// One fare per boarding.
    Flat { amount_fen: u32 },
    /// By stations travelled, from the tap-in compound record to the tap-out.
    Distance {
        base_fen: u32,
        included_stations: u16,
        step_stations: u16,
        step_fen: u32,
        /// The cap, and what a trip without a tap-out costs.
        max_fen: u32,
    },
}

/// A concession for a card type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum Concession {
    Free,
    /// Integer percent off the base fare, the discount rounded down.
    PercentOff(u8),
    /// A fixed amount off the base fare.
    FixedOffFen(u32),
}

/// A discount for boarding another route soon after a first boarding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Transfer {
    pub window_minutes: u32,
    pub discount_fen: u32,
}

/// A tariff file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tariff {
    pub name: String,
    pub fare: FareRule,
    #[serde(default)]
    pub concessions: BTreeMap<CardTypeName, Concession>,
    pub transfer: Option<Transfer>,
}

/// A card type as a tariff file names it (`ordinary`, `student`, `senior`,
/// `disabled`, `staff`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CardTypeName {
    Ordinary,
    Student,
    Senior,
    Disabled,
    Staff,
}

impl CardTypeName {
    pub fn of(card_type: CardType) -> Option<Self> {
        Some(match card_type {
            CardType::Ordinary => CardTypeName::Ordinary,
            CardType::Student => CardTypeName::Student,
            CardType::Senior => CardTypeName::Senior,
            CardType::Disabled => CardTypeName::Disabled,
            CardType::Staff => CardTypeName::Staff,
            _ => return None,
        })
    }
}

/// What the base fare depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trip {
    /// A flat-fare boarding.
    Boarding,
    /// A distance trip over this many stations.
    Stations(u16),
    /// A trip whose tap-out is missing: the maximum fare.
    Unfinished,
}

/// A fare worked out, with its parts (for the rider's display and the journal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quote {
    pub base: Fen,
    pub concession_off: Fen,
    pub transfer_off: Fen,
    /// What the card is charged.
    pub amount: Fen,
}

/// Why a rider is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("balance {balance} is below the fare {fare}")]
pub struct BelowFare {
    pub balance: Fen,
    pub fare: Fen,
}

impl Tariff {
    pub fn load(path: &Path) -> Result<Tariff, TariffError> {
        let name = path.display().to_string();
        let size = std::fs::metadata(path).map_err(|source| TariffError::Read { path: name.clone(), source })?.len();
        if size > TARIFF_FILE_BYTES_MAX {
            return Err(TariffError::TooLarge { path: name });
        }
        let text = std::fs::read_to_string(path).map_err(|source| TariffError::Read { path: name.clone(), source })?;
        Self::parse(&text).map_err(|error| match error {
            TariffError::Parse { source, .. } => TariffError::Parse { path: name, source },
            other => other,
        })
    }

    pub fn parse(text: &str) -> Result<Tariff, TariffError> {
        let tariff: Tariff = toml::from_str(text)
            .map_err(|source| TariffError::Parse { path: String::new(), source: Box::new(source) })?;
        tariff.check()?;
        Ok(tariff)
    }

    fn check(&self) -> Result<(), TariffError> {
        let invalid = |what: &str| Err(TariffError::Invalid(format!("{}: {what}", self.name)));
        match self.fare {
            FareRule::Flat { amount_fen } if amount_fen > FARE_MAX.0 => return invalid("flat fare above FARE_MAX"),
            FareRule::Distance { base_fen, step_stations, max_fen, .. } => {
                if max_fen > FARE_MAX.0 || base_fen > max_fen {
                    return invalid("distance fare: base ≤ max ≤ FARE_MAX");
                }
                if step_stations == 0 {
                    return invalid("distance fare: step_stations must be at least 1");
                }
            }
            FareRule::Flat { .. } => {}
        }
        for concession in self.concessions.values() {
            match concession {
                Concession::PercentOff(percent) if *percent > 100 => return invalid("percent_off above 100"),
                Concession::FixedOffFen(off) if *off > FARE_MAX.0 => return invalid("fixed_off_fen above FARE_MAX"),
                _ => {}
            }
        }
        if let Some(transfer) = self.transfer
            && (transfer.window_minutes > TRANSFER_WINDOW_MINUTES_MAX || transfer.discount_fen > FARE_MAX.0)
        {
            return invalid("transfer window or discount too large");
        }
        Ok(())
    }

    /// Whether fares depend on the stations between tap-in and tap-out.
    pub fn is_distance(&self) -> bool {
        matches!(self.fare, FareRule::Distance { .. })
    }

    /// The fare written into a tap-in record as the most this trip can cost.
    pub fn max_fare(&self) -> Fen {
        match self.fare {
            FareRule::Flat { amount_fen } => Fen(amount_fen),
            FareRule::Distance { max_fen, .. } => Fen(max_fen),
        }
    }

    /// The base fare of a trip, before concessions and transfers.
    pub fn base_fare(&self, trip: Trip) -> Fen {
        let fen = match (&self.fare, trip) {
            (FareRule::Flat { amount_fen }, _) => *amount_fen,
            (FareRule::Distance { max_fen, .. }, Trip::Unfinished | Trip::Boarding) => *max_fen,
            (
                FareRule::Distance { base_fen, included_stations, step_stations, step_fen, max_fen },
                Trip::Stations(n),
            ) => {
                let beyond = u32::from(n.saturating_sub(*included_stations));
                let steps = beyond.div_ceil(u32::from(*step_stations));
                base_fen.saturating_add(steps.saturating_mul(*step_fen)).min(*max_fen)
            }
        };
        let fare = Fen(fen);
        assert!(fare <= FARE_MAX, "a checked tariff never exceeds FARE_MAX");
        fare
    }

    /// The fare for a card type, with a transfer discount if `transfer` (the
    /// caller decides the window; see [`Tariff::transfer_applies`]).
    pub fn quote(&self, card_type: CardType, trip: Trip, transfer: bool) -> Quote {
        let base = self.base_fare(trip);
        let concession = CardTypeName::of(card_type).and_then(|name| self.concessions.get(&name)).copied();
        let concession_off = match concession {
            None => 0,
            Some(Concession::Free) => base.0,
            // Rounded down: the discount never exceeds the exact percentage.
            Some(Concession::PercentOff(percent)) => {
                u32::try_from(u64::from(base.0) * u64::from(percent) / 100).unwrap_or(base.0).min(base.0)
            }
            Some(Concession::FixedOffFen(off)) => off.min(base.0),
        };
        let after_concession = base.0 - concession_off;
        let transfer_off = match (transfer, self.transfer) {
            (true, Some(rule)) => rule.discount_fen.min(after_concession),
            _ => 0,
        };
        let amount = Fen(after_concession - transfer_off);
        // Money in pairs: the parts add up to the base.
        assert_eq!(u64::from(amount.0) + u64::from(concession_off) + u64::from(transfer_off), u64::from(base.0));
        Quote { base, concession_off: Fen(concession_off), transfer_off: Fen(transfer_off), amount }
    }

    /// Whether a boarding at `now_unix_seconds` on `route` gets the transfer
    /// discount, given the route of the previous boarding and when the transfer
    /// window opened.
    pub fn transfer_applies(
        &self,
        route: u16,
        previous_route: u16,
        window_opened_unix_seconds: u64,
        now_unix_seconds: u64,
    ) -> bool {
        let Some(rule) = self.transfer else { return false };
        route != previous_route
            && now_unix_seconds >= window_opened_unix_seconds
            && now_unix_seconds - window_opened_unix_seconds <= u64::from(rule.window_minutes) * 60
    }
}

/// Refuses a rider whose balance is below the fare.
pub fn check_balance(balance: Fen, fare: Fen) -> Result<(), BelowFare> {
    if balance < fare { Err(BelowFare { balance, fare }) } else { Ok(()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flat() -> Tariff {
        Tariff::parse(
            r#"
            name = "flat"
            fare = { kind = "flat", amount_fen = 200 }
            [concessions]
            senior = "free"
            student = { percent_off = 50 }
            disabled = { fixed_off_fen = 150 }
            [transfer]
            window_minutes = 90
            discount_fen = 100
            "#,
        )
        .expect("valid tariff")
    }

    fn distance() -> Tariff {
        Tariff::parse(
            r#"
            name = "distance"
            [fare]
            kind = "distance"
            base_fen = 200
            included_stations = 6
            step_stations = 4
            step_fen = 100
            max_fen = 500
            [concessions]
            student = { percent_off = 25 }
            "#,
        )
        .expect("valid tariff")
    }

    #[test]
    fn flat_fare() {
        let quote = flat().quote(CardType::Ordinary, Trip::Boarding, false);
        assert_eq!(quote, Quote { base: Fen(200), concession_off: Fen(0), transfer_off: Fen(0), amount: Fen(200) });
        assert_eq!(flat().quote(CardType::Staff, Trip::Boarding, false).amount, Fen(200), "no concession listed");
    }

    #[test]
    fn distance_fare_by_started_blocks_of_stations_capped() {
        let tariff = distance();
        assert_eq!(tariff.base_fare(Trip::Stations(0)), Fen(200));
        assert_eq!(tariff.base_fare(Trip::Stations(6)), Fen(200));
        assert_eq!(tariff.base_fare(Trip::Stations(7)), Fen(300), "a started block counts");
        assert_eq!(tariff.base_fare(Trip::Stations(10)), Fen(300));
        assert_eq!(tariff.base_fare(Trip::Stations(11)), Fen(400));
        assert_eq!(tariff.base_fare(Trip::Stations(60)), Fen(500), "capped");
        assert_eq!(tariff.base_fare(Trip::Unfinished), Fen(500), "no tap-out: the maximum");
        assert_eq!(tariff.max_fare(), Fen(500));
    }

    #[test]
    fn seniors_ride_free() {
        let quote = flat().quote(CardType::Senior, Trip::Boarding, true);
        assert_eq!(quote.amount, Fen(0));
        assert_eq!(quote.concession_off, Fen(200));
        assert_eq!(quote.transfer_off, Fen(0), "nothing left to discount");
    }

    #[test]
    fn percent_discount_rounds_the_discount_down() {
        assert_eq!(flat().quote(CardType::Student, Trip::Boarding, false).amount, Fen(100));
        // 25 % of 300 is 75; of 203 it would be 50.75 → 50 off, 153 to pay.
        let tariff = distance();
        assert_eq!(tariff.quote(CardType::Student, Trip::Stations(8), false).amount, Fen(225));
        let odd = Tariff::parse(
            "name = \"odd\"\nfare = { kind = \"flat\", amount_fen = 203 }\n[concessions]\nstudent = { percent_off = 25 }\n",
        )
        .expect("valid");
        let quote = odd.quote(CardType::Student, Trip::Boarding, false);
        assert_eq!((quote.concession_off, quote.amount), (Fen(50), Fen(153)));
    }

    #[test]
    fn fixed_discount_never_below_zero() {
        assert_eq!(flat().quote(CardType::Disabled, Trip::Boarding, false).amount, Fen(50));
        assert_eq!(flat().quote(CardType::Disabled, Trip::Boarding, true).amount, Fen(0), "transfer takes the rest");
    }

    #[test]
    fn transfer_discount_within_the_window_on_another_route() {
        let tariff = flat();
        let opened = 1_000_000;
        assert!(tariff.transfer_applies(2, 1, opened, opened + 90 * 60));
        assert!(!tariff.transfer_applies(2, 1, opened, opened + 90 * 60 + 1), "window over");
        assert!(!tariff.transfer_applies(1, 1, opened, opened + 60), "same route is no transfer");
        assert!(!tariff.transfer_applies(2, 1, opened, opened - 1), "a clock behind the record");
        assert!(!distance().transfer_applies(2, 1, opened, opened + 60), "no transfer rule");
        assert_eq!(tariff.quote(CardType::Ordinary, Trip::Boarding, true).amount, Fen(100));
        assert_eq!(tariff.quote(CardType::Student, Trip::Boarding, true).amount, Fen(0));
    }

    #[test]
    fn refusal_below_the_fare() {
        assert_eq!(check_balance(Fen(199), Fen(200)), Err(BelowFare { balance: Fen(199), fare: Fen(200) }));
        assert_eq!(check_balance(Fen(200), Fen(200)), Ok(()));
        assert_eq!(check_balance(Fen(0), Fen(0)), Ok(()), "a free ride needs no balance");
    }

    #[test]
    fn bad_tariffs_are_refused() {
        let bad = [
            "name = \"x\"\nfare = { kind = \"flat\", amount_fen = 10001 }\n",
            "name = \"x\"\nfare = { kind = \"flat\", amount_fen = 1 }\n[concessions]\nstudent = { percent_off = 101 }\n",
            "name = \"x\"\nfare = { kind = \"distance\", base_fen = 1, included_stations = 1, step_stations = 0, step_fen = 1, max_fen = 9 }\n",
            "name = \"x\"\nfare = { kind = \"flat\", amount_fen = 1 }\n[concessions]\nchild = \"free\"\n",
            "name = \"x\"\nfare = { kind = \"flat\", amount_fen = 1.5 }\n",
            "name = \"x\"\nfare = { kind = \"flat\", amount_fen = -1 }\n",
        ];
        for text in bad {
            assert!(Tariff::parse(text).is_err(), "accepted: {text}");
        }
    }

    #[test]
    fn fixture_tariffs_load() {
        let directory = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/tariffs");
        let mut loaded = 0;
        for file in std::fs::read_dir(&directory).expect("fixtures/tariffs") {
            let path = file.expect("entry").path();
            if path.extension().is_some_and(|extension| extension == "toml") {
                Tariff::load(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
                loaded += 1;
            }
        }
        assert!(loaded >= 2, "a flat and a distance tariff");
    }
}

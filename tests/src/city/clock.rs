//! The day's clock.
//!
//! The city runs on simulated time: one business day (today's local date,
//! China Standard Time, UTC+8 — [`clearing::api::UTC_OFFSET_MINUTES_DEFAULT`],
//! the terminals' default too), whose card times are that date's midnight plus
//! the sim time. Cards are issued at 04:00, the kiosks' morning top-ups run
//! from 05:00, riders from 06:00 to 22:00. Clearing runs on the same time: the
//! demo serves it with a [`SimulatedClock`] that it sets before each call whose
//! date-time clearing chooses (a top-up's, which goes into the card, a loss
//! report's, an issue's), so every record lands in the day's order whatever the
//! real time of day, and the same seed gives the same day.

use card_host::CardDateTime;
use clearing::clock::SimulatedClock;

/// Cards are issued at 04:00, the morning top-ups start at 05:00, the day runs
/// from 06:00 to 22:00 (sim time, seconds after midnight).
pub const ISSUE_AT: u32 = 4 * 3600;
pub const TOP_UPS_FROM: u32 = 5 * 3600;
pub const DAY_START: u32 = 6 * 3600;
pub const DAY_END: u32 = 22 * 3600;
/// The card is reported lost at 12:30.
pub const LOSS_AT: u32 = 12 * 3600 + 1800;

/// The mapping of sim time to card time, and clearing's simulated clock.
#[derive(Debug, Clone)]
pub struct DayClock {
    /// The business day's midnight (local time, as card seconds).
    midnight: u64,
    clearing: SimulatedClock,
}

impl DayClock {
    /// The day of today's local date.
    pub fn today() -> DayClock {
        let now = CardDateTime::now_at_offset(clearing::api::UTC_OFFSET_MINUTES_DEFAULT).unix_seconds();
        DayClock::of_midnight(now - now % 86_400)
    }

    /// The day that starts at `midnight` (local time, as card seconds).
    pub fn of_midnight(midnight: u64) -> DayClock {
        let at = CardDateTime::from_unix_seconds(midnight).expect("a date after 1970");
        DayClock { midnight, clearing: SimulatedClock::new(at) }
    }

    /// The business day's date as card time (midnight).
    pub fn business_day(&self) -> CardDateTime {
        CardDateTime::from_unix_seconds(self.midnight).expect("a date after 1970")
    }

    /// The card time of sim time `sim` (seconds after midnight).
    pub fn at(&self, sim: u32) -> CardDateTime {
        CardDateTime::from_unix_seconds(self.midnight + u64::from(sim.min(86_399))).expect("a date after 1970")
    }

    /// The clock clearing is served with.
    pub fn clearing_clock(&self) -> clearing::clock::Clock {
        clearing::clock::Clock::Simulated(self.clearing.clone())
    }

    /// Sets clearing's clock to sim time `sim`.
    pub fn set_clearing(&self, sim: u32) {
        self.clearing.set(self.at(sim));
    }
}

/// `HH:MM` of sim time.
pub fn hhmm(sim: u32) -> String {
    format!("{:02}:{:02}", sim / 3600, sim % 3600 / 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_day_is_one_date_in_order_and_clearing_follows_it() {
        let midnight = CardDateTime::new(2026, 11, 25, 0, 0, 0).expect("valid").unix_seconds();
        let clock = DayClock::of_midnight(midnight);
        let (issue, first, loss, last) =
            (clock.at(ISSUE_AT), clock.at(DAY_START), clock.at(LOSS_AT), clock.at(DAY_END));
        assert!(issue < first && first < loss && loss < last);
        assert_eq!((issue.ymd(), last.ymd()), ((2026, 11, 25), (2026, 11, 25)));
        assert_eq!(
            clock.at(LOSS_AT).to_string(),
            CardDateTime::new(2026, 11, 25, 12, 30, 0).expect("valid").to_string()
        );
        let clearing = clock.clearing_clock();
        clock.set_clearing(LOSS_AT);
        assert_eq!(clearing.now(), loss);
        assert_eq!(clock.at(30 * 3600).ymd(), (2026, 11, 25), "never past the date");
    }
}

//! The day's clock.
//!
//! The simulated day runs from 06:00 to 22:00 ("sim time", seconds after
//! midnight). Cards are given local date-times (China Standard Time, UTC+8:
//! [`clearing::api::UTC_OFFSET_MINUTES_DEFAULT`], the terminals' default too),
//! the base clearing stamps an online load, a loss report and an issue with,
//! and the date of which is the business day ([`clearing::BusinessDay::of`]).
//!
//! Clearing stamps a load with its own real clock, and run-day takes a card's
//! records in the order of their card time (`ORDER BY card_serial,
//! occurred_at, kind, counter`): a fare given a card time before the load that
//! paid for it would break the card's balance continuity. So the top-ups
//! happen first, for real (the kiosk hour), and the day's card times run from a
//! minute after the real local time on: 06:00 is that moment, and the day keeps
//! its length unless the local date has too little left, when it is compressed
//! by a factor that keeps every interval the fares depend on long enough
//! ([`COMPRESSION_MIN_PERMILLE`]).

use card_host::CardDateTime;

/// The day starts at 06:00 and ends at 22:00 (sim time, seconds after midnight).
pub const DAY_START: u32 = 6 * 3600;
pub const DAY_END: u32 = 22 * 3600;
/// The card is reported lost at 12:30.
pub const LOSS_AT: u32 = 12 * 3600 + 1800;
/// Real seconds between the moment the clock starts and the day's 06:00, and
/// kept free at the end for run-day, so the day stays on one UTC date.
pub const LEAD_SECONDS: u64 = 60;
pub const RUN_MARGIN_SECONDS: u64 = 900;
/// The least compression that keeps the intervals fares depend on (a transfer
/// boarded more than a minute after its window opened, 15 sim-minutes; a ride
/// longer than the validators' dedup window) and so keeps the totals of a seed.
pub const COMPRESSION_MIN_PERMILLE: u64 = 70;

/// Why the day cannot be laid on the UTC date now.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "it is {now} local time (UTC+8): too close to midnight to lay a whole day on one business day; run again after midnight"
)]
pub struct NoRoom {
    pub now: String,
}

/// The mapping of sim time to card time.
#[derive(Debug, Clone, Copy)]
pub struct DayClock {
    /// The business day's midnight (local time, as card seconds).
    midnight: u64,
    /// Sim seconds become `permille / 1000` card seconds.
    permille: u64,
    /// The card time of 06:00 (local time, as card seconds).
    start: u64,
}

impl DayClock {
    /// The day starts a minute from the real local time now.
    pub fn start() -> Result<DayClock, NoRoom> {
        DayClock::starting_after(now().unix_seconds())
    }

    /// The day starts [`LEAD_SECONDS`] after `now` (local time, as card seconds).
    pub fn starting_after(now: u64) -> Result<DayClock, NoRoom> {
        let midnight = now - now % 86_400;
        let start = now + LEAD_SECONDS;
        let length = u64::from(DAY_END - DAY_START);
        let room = (midnight + 86_400).saturating_sub(start + RUN_MARGIN_SECONDS);
        let permille = (room * 1000 / length).min(1000);
        if permille < COMPRESSION_MIN_PERMILLE {
            let at = CardDateTime::from_unix_seconds(now).map(|at| at.to_string()).unwrap_or_default();
            return Err(NoRoom { now: at });
        }
        Ok(DayClock { midnight, permille, start })
    }

    /// The business day's date as card time (midnight).
    pub fn business_day(&self) -> CardDateTime {
        CardDateTime::from_unix_seconds(self.midnight).expect("a date after 1970")
    }

    /// How much of a real second a sim second is, in thousandths (1000: none).
    pub fn compression_permille(&self) -> u64 {
        self.permille
    }

    /// The card time of sim time `sim` (seconds after midnight, from 06:00).
    pub fn at(&self, sim: u32) -> CardDateTime {
        let seconds = self.start + u64::from(sim.saturating_sub(DAY_START)) * self.permille / 1000;
        CardDateTime::from_unix_seconds(seconds).expect("a date after 1970")
    }
}

/// The local time now, as clearing and the terminals give it to cards.
pub fn now() -> CardDateTime {
    CardDateTime::now_at_offset(clearing::api::UTC_OFFSET_MINUTES_DEFAULT)
}

/// `HH:MM` of sim time.
pub fn hhmm(sim: u32) -> String {
    format!("{:02}:{:02}", sim / 3600, sim % 3600 / 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_day_stays_on_its_date_after_now_and_in_order() {
        let midnight = CardDateTime::new(2026, 11, 25, 0, 0, 0).expect("valid").unix_seconds();
        for hour in [0, 7, 12, 20, 22] {
            let now = midnight + hour * 3600;
            let clock = DayClock::starting_after(now).expect("room");
            let (first, loss, last) = (clock.at(DAY_START), clock.at(LOSS_AT), clock.at(DAY_END));
            assert!(first.unix_seconds() > now, "hour {hour}");
            assert_eq!(last.ymd(), (2026, 11, 25), "hour {hour}");
            assert!(first < loss && loss < last);
        }
        assert_eq!(DayClock::starting_after(midnight + 3600).expect("room").compression_permille(), 1000);
        assert!(DayClock::starting_after(midnight + 86_400 - 1800).is_err(), "half an hour to midnight");
    }
}

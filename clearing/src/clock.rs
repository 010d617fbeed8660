//! Where the server's local time comes from. Cards and terminals run on local
//! time (China Standard Time by default), so the date-times clearing gives
//! cards (a top-up's), loss reports and issue times are local too. A
//! simulation — the city-day demo — runs clearing on its own simulated time.

use std::sync::{Arc, Mutex, PoisonError};

use card_host::model::CardDateTime;

/// China Standard Time, UTC+8: the offset cards and terminals use by default.
pub const UTC_OFFSET_MINUTES_DEFAULT: i32 = 480;

/// The server's clock.
#[derive(Debug, Clone)]
pub enum Clock {
    /// The system clock, `utc_offset_minutes` east of UTC.
    System { utc_offset_minutes: i32 },
    /// A clock its holder sets: a simulation's time.
    Simulated(SimulatedClock),
}

impl Default for Clock {
    fn default() -> Self {
        Clock::System { utc_offset_minutes: UTC_OFFSET_MINUTES_DEFAULT }
    }
}

impl Clock {
    /// The local date and time now.
    pub fn now(&self) -> CardDateTime {
        match self {
            Clock::System { utc_offset_minutes } => CardDateTime::now_at_offset(*utc_offset_minutes),
            Clock::Simulated(clock) => clock.now(),
        }
    }
}

/// Simulated local time, shared by its clones: set by the simulation, read by
/// the server.
#[derive(Debug, Clone)]
pub struct SimulatedClock(Arc<Mutex<CardDateTime>>);

impl SimulatedClock {
    pub fn new(at: CardDateTime) -> SimulatedClock {
        SimulatedClock(Arc::new(Mutex::new(at)))
    }

    pub fn set(&self, at: CardDateTime) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = at;
    }

    pub fn now(&self) -> CardDateTime {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_simulated_clock_is_shared_by_its_clones() {
        let at = CardDateTime::new(2026, 11, 25, 5, 0, 0).expect("valid");
        let simulated = SimulatedClock::new(at);
        let clock = Clock::Simulated(simulated.clone());
        assert_eq!(clock.now(), at);
        let later = CardDateTime::new(2026, 11, 25, 12, 30, 0).expect("valid");
        simulated.set(later);
        assert_eq!(clock.now(), later);
    }
}

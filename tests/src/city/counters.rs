//! Hospital counters (`terminal::counter::Counter`): the patient's PIN, the
//! cardholder and medical data read, the visit registered on the card, the
//! co-payment taken from the purse.

use std::path::Path;

use card_host::psam::Psam;
use card_host::{CardDateTime, Fen};
use terminal::CardSession;
use terminal::counter::{Counter, CounterError, CounterSettings};
use terminal::psam::PsamSession;
use terminal::reader::InProcess;

use super::CityError;
use super::fleet::{self, Device, HOSPITAL_MERCHANT, TerminalSpec, terminal};
use super::population::Person;

/// The counters: the fixture hospital terminal 0903 (department 12) and a
/// second counter (department 7) of the same hospital.
pub const COUNTERS: [(TerminalSpec, u16); 2] = [
    (TerminalSpec { number: terminal([0x09, 0x03]), merchant: HOSPITAL_MERCHANT, seed: 0x03, fixture: true }, 12),
    (TerminalSpec { number: terminal([0x09, 0x33]), merchant: HOSPITAL_MERCHANT, seed: 0x33, fixture: false }, 7),
];

/// What the counters did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CounterStats {
    pub visits: u64,
    pub co_payments: u64,
    pub co_payment_fen: u64,
    pub refused: std::collections::BTreeMap<String, u64>,
}

pub struct CounterDesk {
    pub counter: Counter,
    pub device: Device,
    psam: InProcess<Psam>,
}

impl CounterDesk {
    pub fn open(
        spec: TerminalSpec,
        department: u16,
        directory: &Path,
        clearing: &crate::clearing::Clearing,
        base_url: &str,
    ) -> Result<CounterDesk, CityError> {
        let device = Device::register(spec, clearing, base_url)?;
        let settings = CounterSettings { hospital: [0x31, 0x00, 0x00, 0x00, 0x09, 0x03], department };
        let counter = Counter::new(fleet::journal(directory, spec.number)?, settings);
        Ok(CounterDesk { counter, device, psam: fleet::psam_reader(directory, spec.number)? })
    }

    pub fn take_blacklist(&mut self) {
        self.counter.update_blacklist(self.device.blacklist.clone());
    }

    /// The patient's visit; whether the co-payment was taken.
    pub fn visit(
        &mut self,
        person: &Person,
        co_payment: Fen,
        at: CardDateTime,
        stats: &mut CounterStats,
    ) -> Result<bool, CityError> {
        let mut reader = InProcess::new(person.card()?);
        let mut psam = PsamSession::open(CardSession::new(&mut self.psam))
            .map_err(|error| CityError::step("open the counter's PSAM", error))?;
        let counter = &self.counter;
        let patient = counter.read_patient(&mut reader, person.pin());
        let patient = patient.map_err(|error| CityError::step("read the patient", error))?;
        debug_assert_eq!(patient.cardholder.name, person.holder.name);
        counter
            .register_visit(&mut reader, person.pin(), 1, &at)
            .map_err(|error| CityError::step("register a visit", error))?;
        stats.visits += 1;
        match counter.co_payment(&mut reader, &mut psam, co_payment, at) {
            Ok(_) => {
                stats.co_payments += 1;
                stats.co_payment_fen += u64::from(co_payment.0);
                Ok(true)
            }
            Err(error) => {
                let reason = match &error {
                    CounterError::Blacklisted => "blacklisted".to_owned(),
                    CounterError::Blocked => "card blocked".to_owned(),
                    CounterError::Purchase(terminal::transaction::TransactionError::Card(card))
                        if card.status() == Some(card_host::status::StatusWord::InsufficientBalance) =>
                    {
                        "balance below the co-payment".to_owned()
                    }
                    other => return Err(CityError::step("a co-payment", other.to_string())),
                };
                *stats.refused.entry(reason).or_default() += 1;
                Ok(false)
            }
        }
    }
}

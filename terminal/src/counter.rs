//! The hospital counter: after the patient's PIN, read the cardholder (social
//! security application) and the medical data, register the visit on the card,
//! and take the co-payment from the purse as a journaled purchase (uploaded to
//! clearing like any other; the journal row's reference is `visit:DEPARTMENT`).
//!
//! The PIN is verified in each application (a SELECT of another application
//! ends the verified state), kept only in a `Zeroizing` buffer, and never
//! logged.

use card_host::{CardDateTime, Fen};

use crate::cardholder::{CardInformation, Cardholder, SocialSecurity};
use crate::journal::{Completed, Journal};
use crate::medical::{Medical, PatientInformation, Visit};
use crate::psam::PsamSession;
use crate::purse::{PurchaseRequest, Purse};
use crate::reader::Channel;
use crate::session::{CardError, CardSession};
use crate::transaction::{self, Place, TransactionError};

/// The largest co-payment taken in one purchase.
pub const CO_PAYMENT_FEN_MAX: u32 = 1_000_000;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CounterError {
    #[error(transparent)]
    Card(#[from] CardError),
    #[error(transparent)]
    Purchase(#[from] TransactionError),
    #[error(transparent)]
    Journal(#[from] crate::journal::JournalError),
    #[error("co-payment must be 1 to {CO_PAYMENT_FEN_MAX} fen")]
    Amount,
    #[error("the purse is blocked")]
    Blocked,
    /// The card is on the blacklist: no co-payment is taken from it.
    #[error("the card is blacklisted")]
    Blacklisted,
}

/// Where the counter is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CounterSettings {
    /// The hospital's code as the visit log keeps it (6 bytes).
    pub hospital: [u8; 6],
    pub department: u16,
}

/// What the counter reads of a patient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Patient {
    pub card: CardInformation,
    /// `Debug` masks the identity numbers.
    pub cardholder: Cardholder,
    pub medical: PatientInformation,
    /// Newest first.
    pub visits: Vec<Visit>,
}

/// One patient at the counter, done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CounterVisit {
    pub patient: Patient,
    pub visit: Visit,
    /// The co-payment, if one was due.
    pub payment: Option<Completed>,
}

/// A hospital counter with its journal.
pub struct Counter {
    journal: Journal,
    settings: CounterSettings,
    blacklist: crate::blacklist::Blacklist,
}

impl Counter {
    pub fn new(journal: Journal, settings: CounterSettings) -> Counter {
        Counter { journal, settings, blacklist: crate::blacklist::Blacklist::empty() }
    }

    /// Keeps `newer` if its version is higher; a blacklisted card pays nothing here.
    pub fn update_blacklist(&mut self, newer: crate::blacklist::Blacklist) -> bool {
        self.blacklist.update(newer)
    }

    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    pub fn settings(&self) -> &CounterSettings {
        &self.settings
    }

    /// Reads the cardholder and the medical data after the PIN.
    pub fn read_patient(&self, card: &mut dyn Channel, pin: &str) -> Result<Patient, CounterError> {
        let (information, cardholder) = {
            let mut social = SocialSecurity::select(CardSession::new(card))?;
            let information = social.card_information()?;
            social.verify_pin(pin)?;
            (information, social.cardholder()?)
        };
        let mut medical = Medical::select(CardSession::new(card))?;
        medical.verify_pin(pin)?;
        Ok(Patient { card: information, cardholder, medical: medical.patient()?, visits: medical.visits()? })
    }

    /// Registers today's visit of `visit_type` on the card.
    pub fn register_visit(
        &self,
        card: &mut dyn Channel,
        pin: &str,
        visit_type: u8,
        at: &CardDateTime,
    ) -> Result<Visit, CounterError> {
        let bytes = at.to_bytes();
        let visit = Visit {
            date: [bytes[0], bytes[1], bytes[2], bytes[3]],
            hospital: self.settings.hospital,
            department: self.settings.department,
            visit_type,
        };
        let mut medical = Medical::select(CardSession::new(card))?;
        medical.verify_pin(pin)?;
        medical.register_visit(&visit)?;
        Ok(visit)
    }

    /// Takes the co-payment from the purse (journaled; a purchase an earlier
    /// tear left open is settled by the card first).
    pub fn co_payment(
        &self,
        card: &mut dyn Channel,
        psam: &mut PsamSession<'_>,
        amount: Fen,
        at: CardDateTime,
    ) -> Result<Completed, CounterError> {
        if amount.0 == 0 || amount.0 > CO_PAYMENT_FEN_MAX {
            return Err(CounterError::Amount);
        }
        let mut purse = Purse::select(CardSession::new(card))?;
        if !purse.public_information().enabled {
            return Err(CounterError::Blocked);
        }
        if self.blacklist.contains(&purse.public_information().application_serial) {
            return Err(CounterError::Blacklisted);
        }
        transaction::recover_card(&mut purse, &self.journal)?;
        let request = PurchaseRequest { amount, at, compound_records: vec![] };
        let reference = format!("visit:{}", self.settings.department);
        Ok(transaction::purchase_for(&mut purse, psam, &self.journal, &request, Place::default(), Some(reference))?)
    }

    /// The whole counter visit: read, register, take the co-payment (none when
    /// `co_payment` is zero).
    pub fn serve(
        &self,
        card: &mut dyn Channel,
        psam: &mut PsamSession<'_>,
        pin: &str,
        visit_type: u8,
        co_payment: Fen,
        at: CardDateTime,
    ) -> Result<CounterVisit, CounterError> {
        let patient = self.read_patient(card, pin)?;
        let visit = self.register_visit(card, pin, visit_type, &at)?;
        let payment = if co_payment.0 == 0 { None } else { Some(self.co_payment(card, psam, co_payment, at)?) };
        tracing::info!(department = self.settings.department, paid = %co_payment, "patient visit registered");
        Ok(CounterVisit { patient, visit, payment })
    }
}

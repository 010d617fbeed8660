//! A software card linked into the terminal's process: the reader of unit tests
//! and of the demo when no pcscd is available.

use card_host::icc::SmartCard;

use super::{Channel, ReaderError};

/// A card in an in-process reader. [`InProcess::remove`] takes it out: every
/// command then fails with [`ReaderError::CardRemoved`] until it is put back.
pub struct InProcess<C: SmartCard> {
    card: C,
    present: bool,
}

impl<C: SmartCard> InProcess<C> {
    /// Inserts and powers the card.
    pub fn new(mut card: C) -> Self {
        card.power_on();
        InProcess { card, present: true }
    }

    pub fn card(&self) -> &C {
        &self.card
    }

    pub fn card_mut(&mut self) -> &mut C {
        &mut self.card
    }

    pub fn remove(&mut self) {
        if self.present {
            self.card.power_off();
            self.present = false;
        }
    }

    pub fn insert(&mut self) {
        if !self.present {
            self.card.power_on();
            self.present = true;
        }
    }

    pub fn into_card(self) -> C {
        self.card
    }
}

impl<C: SmartCard> Channel for InProcess<C> {
    fn transmit(&mut self, command: &[u8]) -> Result<Vec<u8>, ReaderError> {
        if !self.present {
            return Err(ReaderError::CardRemoved);
        }
        Ok(self.card.transmit(command))
    }
}

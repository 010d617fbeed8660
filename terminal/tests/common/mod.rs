//! Shared by the terminal's integration tests: in-memory cards and PSAMs issued
//! with the TEST-ONLY keys, and a reader that tears at a chosen APDU.
#![allow(dead_code)]

use card_host::card::{CardType, CitizenCard};
use card_host::issue::{self, IssueOptions, MasterKeySet, ProfileFile};
use card_host::psam::Psam;
use card_host::storage::Storage;
use card_host::vpcd::TearPoint;
use card_host::{ApplicationSerial, CardDateTime, Fen, TerminalNumber};
use terminal::ReaderError;
use terminal::reader::{Channel, InProcess};

pub const TERMINAL: TerminalNumber = TerminalNumber([0x31, 0x00, 0x00, 0x00, 0x00, 0x42]);

pub fn master_keys() -> MasterKeySet {
    MasterKeySet::load(&issue::fixtures::test_keyset()).expect("TEST-ONLY key set in fixtures/")
}

/// An in-memory card for fixture cardholder 0 with this type, serial and
/// balance; randoms from `seed`.
pub fn card(card_type: CardType, serial: u64, balance: Fen, seed: u64) -> CitizenCard {
    let profiles = ProfileFile::load(&issue::fixtures::cardholders()).expect("fixture profiles");
    let holder = profiles.cardholder(0).expect("profile");
    let options = IssueOptions {
        initial_balance: balance,
        card_type: Some(card_type),
        serial: Some(ApplicationSerial(serial.to_be_bytes())),
        issued_at: CardDateTime::new(2026, 1, 1, 0, 0, 0).expect("valid"),
        ..IssueOptions::default()
    };
    let image = issue::issue(holder, &master_keys(), &options).expect("issue");
    CitizenCard::with_seed(image, Storage::Memory, seed)
}

pub fn psam() -> Psam {
    Psam::new(Psam::issue(&master_keys(), TERMINAL, 1), Storage::Memory)
}

pub fn at(hour: u8, minute: u8, second: u8) -> CardDateTime {
    CardDateTime::new(2026, 11, 25, hour, minute, second).expect("valid")
}

/// An in-process reader whose card leaves at the `n`th APDU (1-based) after
/// [`Tearing::tear_at`]: before the card sees it, or after the card carried it
/// out but before its answer comes back. The card then stays out until
/// [`Tearing::insert`].
pub struct Tearing<C: card_host::SmartCard> {
    reader: InProcess<C>,
    sent: usize,
    tear: Option<(usize, TearPoint)>,
    torn: bool,
}

impl<C: card_host::SmartCard> Tearing<C> {
    pub fn new(card: C) -> Self {
        Tearing { reader: InProcess::new(card), sent: 0, tear: None, torn: false }
    }

    /// Tears at the `apdu`th command from now.
    pub fn tear_at(&mut self, apdu: usize, point: TearPoint) {
        self.sent = 0;
        self.tear = Some((apdu, point));
        self.torn = false;
    }

    /// Whether the armed tear happened.
    pub fn torn(&self) -> bool {
        self.torn
    }

    /// Puts the card back (powered again: its volatile state is gone) and disarms.
    pub fn insert(&mut self) {
        self.tear = None;
        self.reader.insert();
    }

    pub fn card(&self) -> &C {
        self.reader.card()
    }
}

impl<C: card_host::SmartCard> Channel for Tearing<C> {
    fn transmit(&mut self, command: &[u8]) -> Result<Vec<u8>, ReaderError> {
        self.sent += 1;
        match self.tear {
            Some((apdu, point)) if apdu == self.sent => {
                self.torn = true;
                if point == TearPoint::AfterCommand {
                    let _lost = self.reader.transmit(command)?;
                }
                self.reader.remove();
                Err(ReaderError::CardRemoved)
            }
            _ => self.reader.transmit(command),
        }
    }
}

//! The bus validator: one tap of a card, one line on the rider's display.
//!
//! A tap: SELECT the purse → settle any unresolved journal intent of this card
//! by asking it ([`crate::transaction::recover_card`]) → refuse and block a
//! blacklisted card (APPLICATION BLOCK with the PSAM's MAC) → a card already
//! charged on this validator within the dedup window is not charged again →
//! read the bus compound record → the fare from the tariff (flat, or distance
//! between the tap-in record and here; concession by card type; transfer
//! discount) → the journaled purchase writes the new compound record with its
//! DEBIT. A card below the fare is refused.
//!
//! Card APDUs of a paid flat-fare tap: SELECT, READ BINARY, READ RECORD, INITIALIZE,
//! UPDATE CAPP DATA CACHE, DEBIT; PSAM: INIT SAM, CREDIT SAM. Eight round trips.

use std::time::Duration;

use card_host::card::CardType;
use card_host::status::StatusWord;
use card_host::{ApplicationSerial, CardDateTime, Fen};

use crate::blacklist::Blacklist;
use crate::compound::{CompoundRecord, TripState};
use crate::journal::{Journal, JournalError};
use crate::psam::PsamSession;
use crate::purse::{PurchaseRequest, Purse};
use crate::reader::{Channel, Pn532Error, ReaderError};
use crate::session::{CardError, CardSession};
use crate::tariff::{BelowFare, Quote, Tariff, Trip};
use crate::transaction::{self, Place, Recovered, TransactionError};

/// The longest dedup window a configuration may set.
pub const DEDUP_WINDOW_SECONDS_MAX: u32 = 600;
/// Cards the dedup window remembers at most (a bus sees far fewer within a
/// window); beyond it, entries outside the window are dropped.
pub const RECENT_CARDS_MAX: usize = 100_000;
/// A tap-in older than this is a trip whose tap-out was missed.
pub const TRIP_DURATION_MAX: Duration = Duration::from_secs(4 * 3600);

/// The validator's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusSettings {
    pub route: u16,
    /// The stop the bus is at (distance fares): set by the vehicle as it moves.
    pub station: u16,
    /// A card charged here within this many seconds is not charged again.
    pub dedup_window_seconds: u32,
}

/// What kind of paid tap it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Boarding {
    /// A flat-fare boarding.
    Flat,
    /// A distance tap-in; `unfinished` is the maximum fare charged for a
    /// previous trip whose tap-out was missed.
    TapIn { unfinished: Option<Fen> },
    /// A distance tap-out after this many stations.
    TapOut { stations: u16 },
}

/// Why a rider is not let through.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    BelowFare(BelowFare),
    /// On the blacklist: the card was blocked (or the block was tried).
    Blacklisted {
        version: u64,
        blocked: bool,
    },
    /// The card's purse is blocked or not enabled.
    CardBlocked,
    /// The card answered something the validator cannot accept.
    CardNotAccepted(String),
    /// The validator itself failed (journal, PSAM): the card was not charged,
    /// or an intent is kept for recovery.
    TerminalFault(String),
}

/// The outcome of one tap.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Tap {
    Paid {
        card: ApplicationSerial,
        card_type: CardType,
        boarding: Boarding,
        quote: Quote,
        balance: Fen,
    },
    /// Charged here within the dedup window: let through, not charged again.
    AlreadyPaid {
        card: ApplicationSerial,
        amount: Fen,
        at: CardDateTime,
    },
    Refused {
        card: Option<ApplicationSerial>,
        reason: Refusal,
    },
    /// The card left before the tap finished: the rider must present it again.
    PresentAgain {
        card: Option<ApplicationSerial>,
    },
    /// Several cards in a contactless reader's field: none was touched, the
    /// rider must present one card only.
    OneCardOnly,
}

impl Tap {
    /// What the rider is told when the card station refused a presentation
    /// before any card was read: several cards in the field
    /// ([`ReaderError::SeveralCards`]), or a card that does not speak ISO/IEC
    /// 14443-4 ([`Pn532Error::NotIsoDep`]). `None` for a reader fault.
    pub fn refused_presentation(error: &ReaderError) -> Option<Tap> {
        match error {
            ReaderError::SeveralCards(_) => Some(Tap::OneCardOnly),
            ReaderError::Pn532(Pn532Error::NotIsoDep(_)) => Some(Tap::Refused {
                card: None,
                reason: Refusal::CardNotAccepted("not an ISO/IEC 14443-4 card".into()),
            }),
            _ => None,
        }
    }

    /// Whether the rider may board.
    pub fn lets_through(&self) -> bool {
        matches!(self, Tap::Paid { .. } | Tap::AlreadyPaid { .. })
    }
}

fn card_type_name(card_type: CardType) -> &'static str {
    match card_type {
        CardType::Student => "student",
        CardType::Senior => "senior",
        CardType::Disabled => "disabled",
        CardType::Staff => "staff",
        _ => "ordinary",
    }
}

impl std::fmt::Display for Tap {
    /// The rider's display: one line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Tap::Paid { card, card_type, boarding, quote, balance } => {
                let what = match boarding {
                    Boarding::Flat => "PAID".to_owned(),
                    Boarding::TapIn { unfinished: None } => "TAP IN".to_owned(),
                    Boarding::TapIn { unfinished: Some(fare) } => format!("TAP IN (missed tap-out charged {fare})"),
                    Boarding::TapOut { stations } => format!("TAP OUT {stations} stations"),
                };
                write!(f, "{what} {} yuan", quote.amount)?;
                if quote.concession_off != Fen::ZERO {
                    write!(f, " ({} -{})", card_type_name(*card_type), quote.concession_off)?;
                }
                if quote.transfer_off != Fen::ZERO {
                    write!(f, " (transfer -{})", quote.transfer_off)?;
                }
                write!(f, " balance {balance} card {}", card.masked())
            }
            Tap::AlreadyPaid { card, amount, at } => {
                write!(f, "ALREADY PAID {amount} yuan at {at} card {}", card.masked())
            }
            Tap::Refused { card, reason } => {
                match reason {
                    Refusal::BelowFare(below) => {
                        write!(f, "REFUSED balance {} below fare {}", below.balance, below.fare)?
                    }
                    Refusal::Blacklisted { version, blocked: true } => {
                        write!(f, "REFUSED card blocked (blacklist v{version})")?
                    }
                    Refusal::Blacklisted { version, blocked: false } => {
                        write!(f, "REFUSED card on blacklist v{version}")?
                    }
                    Refusal::CardBlocked => write!(f, "REFUSED card blocked")?,
                    Refusal::CardNotAccepted(why) => write!(f, "REFUSED card not accepted: {why}")?,
                    Refusal::TerminalFault(why) => write!(f, "REFUSED terminal fault: {why}")?,
                }
                match card {
                    Some(card) => write!(f, " card {}", card.masked()),
                    None => Ok(()),
                }
            }
            Tap::PresentAgain { card: Some(card) } => write!(f, "PRESENT CARD AGAIN card {}", card.masked()),
            Tap::PresentAgain { card: None } => write!(f, "PRESENT CARD AGAIN"),
            Tap::OneCardOnly => write!(f, "ONE CARD ONLY 请只出示一张卡"),
        }
    }
}

/// A bus validator on a route.
pub struct Validator {
    settings: BusSettings,
    tariff: Tariff,
    blacklist: Blacklist,
    journal: Journal,
    flag_unresolved_after: Duration,
    /// The newest completed debit per card: the dedup window, loaded from the
    /// journal at start and kept with it, so a tap costs no query.
    recent: std::cell::RefCell<std::collections::HashMap<ApplicationSerial, (CardDateTime, Fen)>>,
}

/// What the rider is told when the card failed or refused before DEBIT (or
/// during recovery, or a read): nothing was charged. A card that left, or
/// whose answer a PN532 lost (INITIALIZE, UPDATE CAPP DATA CACHE), is to be
/// presented again, as a PC/SC card pulled out at the same point is.
fn card_failure(card: Option<ApplicationSerial>, error: &CardError) -> Tap {
    if error.is_answer_lost() {
        return Tap::PresentAgain { card };
    }
    match error.status() {
        Some(StatusWord::SelectedFileInvalidated | StatusWord::FunctionNotSupported) => {
            Tap::Refused { card, reason: Refusal::CardBlocked }
        }
        _ => Tap::Refused { card, reason: Refusal::CardNotAccepted(error.to_string()) },
    }
}

fn journal_failure(card: Option<ApplicationSerial>, error: &JournalError) -> Tap {
    tracing::error!(%error, "journal failed");
    Tap::Refused { card, reason: Refusal::TerminalFault(format!("journal: {error}")) }
}

impl Validator {
    /// A validator with its journal; intents unresolved for longer than
    /// `flag_unresolved_after` are flagged for clearing now.
    pub fn new(
        settings: BusSettings,
        tariff: Tariff,
        blacklist: Blacklist,
        journal: Journal,
        flag_unresolved_after: Duration,
    ) -> Result<Validator, JournalError> {
        assert!(settings.dedup_window_seconds <= DEDUP_WINDOW_SECONDS_MAX, "configuration checks the window");
        let unresolved = journal.unresolved()?.len();
        let flagged = journal.flag_unresolved_older_than(flag_unresolved_after)?;
        let mut recent = std::collections::HashMap::new();
        for row in journal.recent_completed(crate::journal::ROWS_MAX)? {
            // Newest first: the first row of a card is its latest.
            recent.entry(row.entry.card).or_insert((row.entry.at, row.entry.amount));
        }
        tracing::info!(route = settings.route, unresolved, flagged, recent = recent.len(), "bus validator ready");
        Ok(Validator {
            settings,
            tariff,
            blacklist,
            journal,
            flag_unresolved_after,
            recent: std::cell::RefCell::new(recent),
        })
    }

    /// Remembers a completed debit for the dedup window.
    fn remember(&self, completed: &crate::journal::Completed, now: &CardDateTime) {
        let mut recent = self.recent.borrow_mut();
        if recent.len() >= RECENT_CARDS_MAX {
            let oldest = now.unix_seconds().saturating_sub(u64::from(self.settings.dedup_window_seconds));
            recent.retain(|_, (at, _)| at.unix_seconds() >= oldest);
            if recent.len() >= RECENT_CARDS_MAX {
                recent.clear();
            }
        }
        let entry = recent.entry(completed.entry.card).or_insert((completed.entry.at, completed.entry.amount));
        if completed.entry.at >= entry.0 {
            *entry = (completed.entry.at, completed.entry.amount);
        }
    }

    /// Flags for clearing the intents left unresolved for longer than the
    /// configured time (done at start, and by a running validator now and then).
    pub fn flag_unresolved(&self) -> Result<u64, JournalError> {
        self.journal.flag_unresolved_older_than(self.flag_unresolved_after)
    }

    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    pub fn settings(&self) -> &BusSettings {
        &self.settings
    }

    /// The bus arrived at `station`.
    pub fn set_station(&mut self, station: u16) {
        self.settings.station = station;
    }

    /// The vehicle was put on another route (interlining): its later taps are
    /// on `route`, and a rider coming from the earlier one transfers.
    pub fn set_route(&mut self, route: u16) {
        self.settings.route = route;
    }

    /// Keeps the newer blacklist; returns whether it was taken.
    pub fn update_blacklist(&mut self, newer: Blacklist) -> bool {
        self.blacklist.update(newer)
    }

    /// One tap of the card in `card` at `now`.
    pub fn tap(&self, card: &mut dyn Channel, psam: &mut PsamSession<'_>, now: CardDateTime) -> Tap {
        let mut purse = match Purse::select(CardSession::new(card)) {
            Ok(purse) => purse,
            Err(error) => return card_failure(None, &error),
        };
        match self.tap_selected(&mut purse, psam, now) {
            Ok(tap) | Err(tap) => tap,
        }
    }

    fn tap_selected(&self, purse: &mut Purse<'_>, psam: &mut PsamSession<'_>, now: CardDateTime) -> Result<Tap, Tap> {
        let public = purse.public_information().clone();
        let serial = public.application_serial;
        let card = Some(serial);
        if !public.enabled {
            return Ok(Tap::Refused { card, reason: Refusal::CardBlocked });
        }
        // Settle what a previous tap of this card left open: the card decides.
        match transaction::recover_card(purse, &self.journal) {
            Ok(recovered) => {
                for outcome in recovered {
                    match outcome {
                        Recovered::Completed(row) => {
                            tracing::info!(id = row.id, "earlier debit proved by the card");
                            self.remember(&row, &now);
                        }
                        Recovered::Voided(row) => tracing::info!(id = row.id, "earlier debit did not happen"),
                    }
                }
            }
            Err(TransactionError::Card(error)) => return Err(card_failure(card, &error)),
            Err(TransactionError::Journal(error)) => return Err(journal_failure(card, &error)),
            Err(other) => return Err(Tap::Refused { card, reason: Refusal::TerminalFault(other.to_string()) }),
        }

        if self.blacklist.contains(&serial) {
            let blocked = match purse.application_block(psam) {
                Ok(()) => true,
                Err(error) => {
                    tracing::warn!(card = %serial.masked(), %error, "APPLICATION BLOCK failed");
                    false
                }
            };
            tracing::warn!(card = %serial.masked(), version = self.blacklist.version(), blocked, "blacklisted card");
            return Ok(Tap::Refused {
                card,
                reason: Refusal::Blacklisted { version: self.blacklist.version(), blocked },
            });
        }

        let window_start = now.unix_seconds().saturating_sub(u64::from(self.settings.dedup_window_seconds));
        let last = self.recent.borrow().get(&serial).copied();
        if let Some((at, amount)) = last
            && at.unix_seconds() >= window_start
            && at <= now
        {
            return Ok(Tap::AlreadyPaid { card: serial, amount, at });
        }

        let record = purse
            .compound_record(card_host::issue::COMPOUND_BUS)
            .and_then(|bytes| Ok(CompoundRecord::parse(&bytes)?))
            .map_err(|error| card_failure(card, &error))?;
        let card_type = CardType::from_code(public.card_type).unwrap_or(CardType::Ordinary);
        let (boarding, quote, next) = self.fare(&record, card_type, psam, now);

        let request = PurchaseRequest {
            amount: quote.amount,
            at: now,
            compound_records: vec![(card_host::issue::COMPOUND_BUS, next.to_bytes())],
        };
        let place = Place { route: Some(self.settings.route), station: Some(self.settings.station) };
        match transaction::purchase(purse, psam, &self.journal, &request, place) {
            Ok(completed) => {
                self.remember(&completed, &now);
                let balance = completed.entry.balance_before.checked_sub(completed.entry.amount).unwrap_or(Fen::ZERO);
                Ok(Tap::Paid { card: serial, card_type, boarding, quote, balance })
            }
            Err(TransactionError::Card(error)) if error.status() == Some(StatusWord::InsufficientBalance) => {
                let balance = purse.balance().map_err(|error| card_failure(card, &error))?;
                Ok(Tap::Refused { card, reason: Refusal::BelowFare(BelowFare { balance, fare: quote.amount }) })
            }
            Err(TransactionError::Card(error @ CardError::Reader(_))) if psam.is_stale() => {
                // The PSAM's reader failed before DEBIT: nothing was charged.
                Ok(Tap::Refused { card, reason: Refusal::TerminalFault(format!("PSAM unavailable: {error}")) })
            }
            Err(TransactionError::Card(error)) => Err(card_failure(card, &error)),
            Err(TransactionError::Torn { .. }) => Ok(Tap::PresentAgain { card }),
            Err(TransactionError::Mac2Unchecked { completed, source }) => {
                // The card debited and the journal holds it, but the PSAM's
                // reader failed before it checked MAC2 (clearing checks the
                // TAC; the warning is logged). Not let through now; remembered,
                // so the rider's next tap is ALREADY PAID and never charged again.
                self.remember(&completed, &now);
                Ok(Tap::Refused {
                    card,
                    reason: Refusal::TerminalFault(format!("MAC2 not checked ({source}); present the card again")),
                })
            }
            Err(TransactionError::Journal(error)) => Err(journal_failure(card, &error)),
            Err(TransactionError::Refused { source, .. }) => Err(card_failure(card, &source)),
            Err(error) => Ok(Tap::Refused { card, reason: Refusal::TerminalFault(error.to_string()) }),
        }
    }

    /// The fare of this tap and the compound record to write with its debit.
    fn fare(
        &self,
        record: &CompoundRecord,
        card_type: CardType,
        psam: &PsamSession<'_>,
        now: CardDateTime,
    ) -> (Boarding, Quote, CompoundRecord) {
        let route = self.settings.route;
        let station = self.settings.station;
        let now_seconds = now.unix_seconds();
        let previous_boarding = record.state != TripState::None;
        let window_opened = record
            .transfer_window_opened(&now)
            .or_else(|| record.entry_at.map(|at| at.unix_seconds()))
            .filter(|_| previous_boarding);
        let is_transfer =
            window_opened.is_some_and(|opened| self.tariff.transfer_applies(route, record.route, opened, now_seconds));
        // A transfer keeps the window the first boarding opened; any other
        // boarding opens a new one.
        let transfer_window = if is_transfer { record.transfer_window } else { CompoundRecord::window_bytes(&now) };
        let mut next = CompoundRecord {
            identifier: card_host::issue::COMPOUND_BUS,
            state: TripState::TappedOut,
            route,
            entry_station: station,
            entry_terminal: psam.terminal_number(),
            entry_at: Some(now),
            max_fare: self.tariff.max_fare(),
            exit_station: station,
            exit_at: Some(now),
            fare: Fen::ZERO,
            transfer_window,
        };
        if !self.tariff.is_distance() {
            let quote = self.tariff.quote(card_type, Trip::Boarding, is_transfer);
            next.fare = quote.amount;
            return (Boarding::Flat, quote, next);
        }
        let open_trip_here = record.state == TripState::TappedIn
            && record.route == route
            && record
                .entry_at
                .is_some_and(|at| now_seconds.saturating_sub(at.unix_seconds()) <= TRIP_DURATION_MAX.as_secs());
        if open_trip_here {
            // Tap-out: the trip from the tap-in record to here. A transfer was
            // decided at tap-in: the window it kept is older than the tap-in.
            let stations = station.abs_diff(record.entry_station);
            let entry_seconds = record.entry_at.map_or(now_seconds, |at| at.unix_seconds());
            let transferred = record.transfer_window_opened(&now).is_some_and(|opened| {
                opened + 60 <= entry_seconds && self.tariff.transfer_applies(route, 0, opened, entry_seconds)
            });
            let quote = self.tariff.quote(card_type, Trip::Stations(stations), transferred);
            next = CompoundRecord {
                state: TripState::TappedOut,
                entry_station: record.entry_station,
                entry_terminal: record.entry_terminal,
                entry_at: record.entry_at,
                fare: quote.amount,
                transfer_window: record.transfer_window,
                ..next
            };
            return (Boarding::TapOut { stations }, quote, next);
        }
        // Tap-in: nothing to pay now, unless a previous trip never tapped out.
        let unfinished =
            (record.state == TripState::TappedIn).then(|| self.tariff.quote(card_type, Trip::Unfinished, false));
        let quote = unfinished.unwrap_or(Quote {
            base: Fen::ZERO,
            concession_off: Fen::ZERO,
            transfer_off: Fen::ZERO,
            amount: Fen::ZERO,
        });
        next.state = TripState::TappedIn;
        next.exit_station = 0;
        next.exit_at = None;
        next.fare = Fen::ZERO;
        (Boarding::TapIn { unfinished: unfinished.map(|quote| quote.amount) }, quote, next)
    }
}

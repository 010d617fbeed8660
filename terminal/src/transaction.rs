//! A purchase through the journal, and its recovery after a tear.
//!
//! [`purchase`]: INITIALIZE → the PSAM's MAC1 → [UPDATE CAPP DATA CACHE] →
//! intent written durably → DEBIT → completed with TAC and MAC2 (durably) → the
//! PSAM checks MAC2. The terminal never guesses: if the card goes away after the
//! intent was written, the intent stays until the card comes back, and
//! [`recover`] asks the card (GET TRANSACTION PROVE for counter + 1) whether the
//! debit happened.

use card_host::responses::TransactionRecord;

use crate::journal::{Completed, Entry, Intent, Journal, JournalError, Resolution, Voided};
use crate::psam::PsamSession;
use crate::purse::{PurchaseRequest, Purse};
use crate::reader::ReaderError;
use crate::session::CardError;

/// Unresolved intents one presentation of a card settles at most.
pub const RECOVERIES_PER_CARD_MAX: usize = 8;

/// Where a test may crash the terminal in a purchase: with the environment
/// variable `TERMINAL_FAIL_POINT` set to `after_intent`, `after_debit` or
/// `after_complete`, the process aborts there, as `kill -9` would (no unwinding,
/// no destructors).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailPoint {
    /// The intent is on disk; DEBIT not sent.
    AfterIntent,
    /// The card debited and answered; the journal does not know yet.
    AfterDebit,
    /// The debit is completed in the journal; the PSAM has not checked MAC2.
    AfterComplete,
}

impl FailPoint {
    fn from_env() -> Option<FailPoint> {
        static POINT: std::sync::OnceLock<Option<FailPoint>> = std::sync::OnceLock::new();
        *POINT.get_or_init(|| match std::env::var("TERMINAL_FAIL_POINT").ok()?.as_str() {
            "after_intent" => Some(FailPoint::AfterIntent),
            "after_debit" => Some(FailPoint::AfterDebit),
            "after_complete" => Some(FailPoint::AfterComplete),
            _ => None,
        })
    }
}

fn crash_at(point: FailPoint) {
    if FailPoint::from_env() == Some(point) {
        tracing::warn!(?point, "fail point reached: aborting as a crash would");
        std::process::abort();
    }
}

/// Why a journaled purchase did not complete.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransactionError {
    /// The card failed or refused before DEBIT: nothing was journaled, nothing debited.
    #[error(transparent)]
    Card(#[from] CardError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The card went away after the intent was written (DEBIT may or may not have
    /// happened): the intent stays until the card comes back.
    #[error("the card left during the purchase; present it again (journal row {intent_id})")]
    Torn {
        intent_id: i64,
        #[source]
        source: CardError,
    },
    /// The card refused DEBIT: the intent was voided.
    #[error("the card refused DEBIT: {source}")]
    Refused {
        voided: Box<Voided>,
        #[source]
        source: CardError,
    },
    /// The card debited but the PSAM rejected its MAC2 (a status word: a forged
    /// or damaged card): the debit is journaled (clearing checks the TAC) but
    /// the terminal should not let the rider through.
    #[error("the PSAM rejected the card's MAC2 (journal row {})", completed.id)]
    Mac2Rejected {
        completed: Box<Completed>,
        #[source]
        source: CardError,
    },
    /// The card debited but the PSAM's reader failed before the PSAM answered
    /// CREDIT SAM FOR PURCHASE (which is never sent twice): the MAC2 was not
    /// checked. The debit is journaled (clearing checks the TAC); the terminal
    /// decides whether the rider is let through.
    #[error("MAC2 not checked: the PSAM's reader failed (journal row {})", completed.id)]
    Mac2Unchecked {
        completed: Box<Completed>,
        #[source]
        source: ReaderError,
    },
}

/// Why the PSAM did not accept a debited card's MAC2: its reader failed (no
/// answer: a fault of the terminal, logged as a warning naming the reader
/// fault) or the PSAM answered with a status word (a MAC2 it rejects: an
/// error). Logs it and returns the matching [`TransactionError`].
fn mac2_not_accepted(completed: Completed, error: CardError) -> TransactionError {
    let (card, id) = (completed.entry.card.masked(), completed.id);
    match error {
        CardError::Reader(source) => {
            tracing::warn!(card = %card, id, reader_fault = %source, "MAC2 not checked: the PSAM's reader failed");
            TransactionError::Mac2Unchecked { completed: Box::new(completed), source }
        }
        source => {
            tracing::error!(card = %card, id, error = %source, "PSAM rejected MAC2");
            TransactionError::Mac2Rejected { completed: Box::new(completed), source }
        }
    }
}

/// Where the purchase happens, for the journal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Place {
    pub route: Option<u16>,
    pub station: Option<u16>,
}

/// A purchase with the journal written around DEBIT.
pub fn purchase(
    purse: &mut Purse<'_>,
    psam: &mut PsamSession<'_>,
    journal: &Journal,
    request: &PurchaseRequest,
    place: Place,
) -> Result<Completed, TransactionError> {
    purchase_for(purse, psam, journal, request, place, None)
}

/// [`purchase`] of something named by `reference` (a utility bill's number),
/// which the journal row keeps.
pub fn purchase_for(
    purse: &mut Purse<'_>,
    psam: &mut PsamSession<'_>,
    journal: &Journal,
    request: &PurchaseRequest,
    place: Place,
    reference: Option<String>,
) -> Result<Completed, TransactionError> {
    let card = purse.public_information().application_serial;
    let card_type = purse.public_information().card_type;
    let terminal = psam.terminal_number();
    let authorised = purse.initialize(psam, request)?.authorise(psam)?;
    let intent = journal.write_intent(Entry {
        card,
        offline_counter: authorised.offline_counter(),
        kind: authorised.kind(),
        amount: authorised.amount(),
        balance_before: authorised.balance_before(),
        terminal,
        terminal_serial: authorised.terminal_serial(),
        at: authorised.at(),
        route: place.route,
        station: place.station,
        card_type,
        reference,
    })?;
    crash_at(FailPoint::AfterIntent);
    let debited = match authorised.debit() {
        Ok(debited) => debited,
        Err(source @ CardError::Refused { .. }) => {
            // A status word is an answer: the card carried nothing out.
            let voided = intent.void(journal, Resolution::Refused)?;
            return Err(TransactionError::Refused { voided: Box::new(voided), source });
        }
        Err(source) => {
            // Gone, or an answer we cannot read: only the card can tell.
            tracing::warn!(card = %card.masked(), intent = intent.id(), error = %source, "purchase torn; intent kept");
            return Err(TransactionError::Torn { intent_id: intent.id(), source });
        }
    };
    crash_at(FailPoint::AfterDebit);
    let receipt = debited.receipt();
    assert_eq!(receipt.balance_before, intent.entry().balance_before);
    let completed = intent.complete(journal, receipt.tac, receipt.mac2, Resolution::Answer)?;
    crash_at(FailPoint::AfterComplete);
    if let Err(error) = debited.verify(psam) {
        return Err(mac2_not_accepted(completed, error));
    }
    Ok(completed)
}

/// How recovery settled an intent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovered {
    /// The card proved the debit: the row is completed with the proven MAC2 and TAC.
    Completed(Completed),
    /// The card has no such debit: the row is voided.
    Voided(Voided),
}

/// Settles one intent of the card in `purse` by asking it: GET TRANSACTION
/// PROVE for the number the debit would have had. A proof counts only if the
/// card's own record of that number is this debit (amount, kind, terminal):
/// otherwise another terminal used the number and this debit never happened.
pub fn recover(purse: &mut Purse<'_>, journal: &Journal, intent: Intent) -> Result<Recovered, TransactionError> {
    let entry = intent.entry().clone();
    assert_eq!(entry.card, purse.public_information().application_serial, "recovering another card's intent");
    let number = entry.transaction_number();
    let proof = purse.prove(entry.kind, number)?;
    let Some(proof) = proof else {
        tracing::info!(card = %entry.card.masked(), number, "no debit on the card; intent voided");
        return Ok(Recovered::Voided(intent.void(journal, Resolution::NoProof)?));
    };
    let history = purse.history()?;
    let ours = |record: &TransactionRecord| {
        record.number == number
            && record.amount == entry.amount
            && record.kind == entry.kind
            && record.terminal == entry.terminal
            && record.at == entry.at
    };
    if !history.iter().any(ours) && history.iter().any(|record| record.number == number) {
        tracing::info!(card = %entry.card.masked(), number, "the number belongs to another debit; intent voided");
        return Ok(Recovered::Voided(intent.void(journal, Resolution::NoProof)?));
    }
    // Ours, or rotated out of the card's history: the proof stands.
    tracing::info!(card = %entry.card.masked(), number, "the card proved the debit; intent completed");
    // For a purchase the card's MAC is the MAC2 it answered DEBIT with.
    Ok(Recovered::Completed(intent.complete(journal, proof.tac, proof.mac, Resolution::Proof)?))
}

/// Settles every unresolved intent of the card in `purse` (at most
/// [`RECOVERIES_PER_CARD_MAX`]), oldest first.
pub fn recover_card(purse: &mut Purse<'_>, journal: &Journal) -> Result<Vec<Recovered>, TransactionError> {
    let card = purse.public_information().application_serial;
    if !journal.has_unresolved(&card) {
        return Ok(Vec::new());
    }
    let intents = journal.unresolved_for(&card)?;
    let mut settled = Vec::new();
    for intent in intents.into_iter().take(RECOVERIES_PER_CARD_MAX) {
        settled.push(recover(purse, journal, intent)?);
    }
    Ok(settled)
}

#[cfg(test)]
mod tests {
    use card_host::status::StatusWord;
    use card_host::{ApplicationSerial, CardDateTime, Fen, TerminalNumber, TransactionType};

    use super::*;

    fn completed() -> Completed {
        Completed {
            id: 7,
            entry: Entry {
                card: ApplicationSerial::parse_hex("3100000000010001").expect("serial"),
                offline_counter: 3,
                kind: TransactionType::CompoundPurchase,
                amount: Fen(200),
                balance_before: Fen(5_000),
                terminal: TerminalNumber([0x31, 0, 0, 0, 0x09, 0x01]),
                terminal_serial: 12,
                at: CardDateTime::new(2026, 11, 25, 8, 0, 0).expect("valid"),
                route: Some(42),
                station: Some(1),
                card_type: 0,
                reference: None,
            },
            tac: [1; 4],
            mac2: [2; 4],
            resolution: Resolution::Answer,
        }
    }

    #[test]
    fn a_psam_reader_fault_is_an_unchecked_mac2_not_a_rejection() {
        for fault in [ReaderError::CardRemoved, ReaderError::CardReset, ReaderError::Pcsc(::pcsc::Error::NoService)] {
            let shown = fault.to_string();
            let error = mac2_not_accepted(completed(), CardError::Reader(fault));
            assert!(error.to_string().starts_with("MAC2 not checked: the PSAM's reader failed"), "{error}");
            let TransactionError::Mac2Unchecked { completed, source } = error else { panic!("{shown}: {error:?}") };
            assert_eq!((completed.id, source.to_string()), (7, shown), "the reader fault is kept");
        }
    }

    #[test]
    fn a_status_word_from_the_psam_is_a_rejected_mac2() {
        let refused = CardError::Refused { command: "CREDIT SAM FOR PURCHASE", status: StatusWord::MacInvalid };
        match mac2_not_accepted(completed(), refused) {
            TransactionError::Mac2Rejected { completed, source } => {
                assert_eq!(completed.id, 7);
                assert_eq!(source.status(), Some(StatusWord::MacInvalid));
            }
            other => panic!("{other:?}"),
        }
    }
}

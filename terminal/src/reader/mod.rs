//! Card readers as the terminal's applications see them: a [`Channel`] that
//! carries one command APDU to the card and brings back its answer, whatever the
//! transport (PC/SC, a serial reader module, a card linked in-process).
//!
//! The application clients never import a transport. Response chaining (`61xx`,
//! GET RESPONSE) and wrong-Le answers (`6Cxx`) are handled in exactly one place,
//! [`exchange`], and can be switched off.

pub mod fuzzing;
pub mod in_process;
pub mod pcsc;
pub mod pn532;

use std::time::Duration;

use card_host::apdu::{Command, Response};
use card_host::status::StatusWord;

pub use in_process::InProcess;
pub use pn532::{Pn532Device, Pn532Error, Pn532Reader};

/// GET RESPONSE rounds one command may take before the answer is refused.
pub const GET_RESPONSE_ROUNDS_MAX: usize = 32;
/// The largest answer [`exchange`] assembles from chained responses.
pub const CHAINED_RESPONSE_MAX: usize = card_host::apdu::RESPONSE_LENGTH_MAX;

/// What went wrong between the terminal and the card.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReaderError {
    /// The card left the reader: whether the last command reached it is unknown.
    #[error("the card was removed")]
    CardRemoved,
    /// The card was reset by another party: the session state (selected
    /// application, verified PIN) is gone; the reader reconnected.
    #[error("the card was reset; select the application again")]
    CardReset,
    /// The reader came back with another card in it than the session began
    /// with (a PSAM swapped while the terminal ran).
    #[error("another card is in the reader now")]
    CardChanged,
    #[error("no card in the reader within {0:?}")]
    NoCard(std::time::Duration),
    #[error("reader {0:?} not found")]
    UnknownReader(String),
    #[error("the card's answer is not a response APDU: {0}")]
    Malformed(card_host::apdu::ApduError),
    #[error("chained response exceeds {GET_RESPONSE_ROUNDS_MAX} rounds or {CHAINED_RESPONSE_MAX} bytes")]
    ChainTooLong,
    #[error("PC/SC: {0}")]
    Pcsc(::pcsc::Error),
    /// More than one card answered in a contactless reader's field: nothing is
    /// done with either; the rider must present one card only.
    #[error("{0} cards in the field: present one card only")]
    SeveralCards(u8),
    /// The serial line to a reader module failed.
    #[error("serial line: {0}")]
    Serial(std::io::Error),
    #[error("PN532: {0}")]
    Pn532(pn532::Pn532Error),
}

// The causes above are told in the message and are not `source()`s, so that
// an error chain printed whole (`{:#}`, an operator's ERROR line) names each
// once.
impl From<card_host::apdu::ApduError> for ReaderError {
    fn from(error: card_host::apdu::ApduError) -> Self {
        ReaderError::Malformed(error)
    }
}

impl From<::pcsc::Error> for ReaderError {
    fn from(error: ::pcsc::Error) -> Self {
        ReaderError::Pcsc(error)
    }
}

impl From<std::io::Error> for ReaderError {
    fn from(error: std::io::Error) -> Self {
        ReaderError::Serial(error)
    }
}

impl From<pn532::Pn532Error> for ReaderError {
    fn from(error: pn532::Pn532Error) -> Self {
        ReaderError::Pn532(error)
    }
}

/// One card in one reader: carries a command APDU's bytes to the card and its
/// response APDU's bytes back. Implementations do no APDU-level processing.
pub trait Channel {
    fn transmit(&mut self, command: &[u8]) -> Result<Vec<u8>, ReaderError>;
}

impl<T: Channel + ?Sized> Channel for &mut T {
    fn transmit(&mut self, command: &[u8]) -> Result<Vec<u8>, ReaderError> {
        (**self).transmit(command)
    }
}

/// A reader where cards are presented one at a time (a validator's, a
/// kiosk's): it waits for a card, opens a session with it, ends the session,
/// and tells when the card has left. A station that loses its reader (serial
/// line closed, pcscd restarted) returns the error and reconnects on the next
/// call, so a long-running terminal keeps going without a restart.
pub trait CardStation {
    /// Waits at most `timeout` for a card; if one came, runs `use_card` on it
    /// and ends the card session. Returns whether a card came.
    fn with_card(&mut self, timeout: Duration, use_card: &mut dyn FnMut(&mut dyn Channel))
    -> Result<bool, ReaderError>;

    /// Waits at most `timeout` until no card is in the reader; returns whether
    /// it is empty.
    fn wait_empty(&mut self, timeout: Duration) -> Result<bool, ReaderError>;
}

/// Runs `operation` on the next card presented at `station` within `timeout`:
/// `Ok(None)` when none came.
pub fn with_card<T>(
    station: &mut dyn CardStation,
    timeout: Duration,
    operation: impl FnOnce(&mut dyn Channel) -> T,
) -> Result<Option<T>, ReaderError> {
    let mut operation = Some(operation);
    let mut result = None;
    station.with_card(timeout, &mut |card| {
        if let Some(operation) = operation.take() {
            result = Some(operation(card));
        }
    })?;
    Ok(result)
}

/// How often a reader that keeps failing is told again in the log.
pub const OUTAGE_REMINDER: Duration = Duration::from_secs(60);

/// A reader outage told in the log when it begins, every [`OUTAGE_REMINDER`]
/// while it lasts and when it ends, not at every retry: a validator whose
/// pcscd is away for an hour tries again every 200 ms, and would otherwise
/// write 18,000 warnings.
#[derive(Debug, Default)]
pub struct ReaderOutage {
    /// When the outage began and when it was last told.
    began: Option<(std::time::Instant, std::time::Instant)>,
    failures: u64,
}

impl ReaderOutage {
    /// A call on the reader failed.
    pub fn failed(&mut self, error: &ReaderError) {
        let now = std::time::Instant::now();
        self.failures += 1;
        match &mut self.began {
            None => {
                self.began = Some((now, now));
                tracing::warn!(%error, "card reader failed; trying again until it is back");
            }
            Some((began, told)) if now.duration_since(*told) >= OUTAGE_REMINDER => {
                *told = now;
                tracing::warn!(%error, failures = self.failures, since = ?now.duration_since(*began), "card reader still failing");
            }
            Some(_) => tracing::debug!(%error, failures = self.failures, "card reader still failing"),
        }
    }

    /// A call on the reader succeeded: an outage, if there was one, is over.
    pub fn succeeded(&mut self) {
        if let Some((began, _)) = self.began.take() {
            tracing::info!(after = ?began.elapsed(), failures = self.failures, "card reader back");
        }
        self.failures = 0;
    }

    /// The calls failed in a row so far (0: the reader works).
    pub fn failures(&self) -> u64 {
        self.failures
    }
}

/// SELECT's instruction byte.
const INS_SELECT: u8 = 0xA4;

/// Whether `command` only reads, so that sending it twice changes nothing: a
/// command without data (READ BINARY, READ RECORD, GET BALANCE, GET
/// CHALLENGE, GET RESPONSE) or SELECT. Anything else (INITIALIZE, DEBIT,
/// CREDIT, VERIFY, UPDATE, APPLICATION BLOCK, …) may change the card and is
/// never sent twice blindly: not on `6Cxx` ([`exchange`]), not when a reader's
/// answer was lost (the PN532 driver).
pub fn is_read(command: &Command) -> bool {
    command.data().is_empty() || command.ins == INS_SELECT
}

/// [`is_read`]'s opposite on a command APDU's bytes; bytes that do not parse
/// as a command APDU count as changing the card.
pub fn changes_card(command: &[u8]) -> bool {
    Command::parse(command).map_or(true, |command| !is_read(&command))
}

/// Whether [`exchange`] follows `61xx` and `6Cxx` by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExchangeOptions {
    /// On `61xx`, fetch the rest with GET RESPONSE (T=0 cards and readers).
    pub get_response: bool,
    /// On `6Cxx`, send the command again with Le = xx. Only a read
    /// ([`is_read`]) is ever sent again: one that changes the card is not.
    pub resend_on_wrong_le: bool,
}

impl Default for ExchangeOptions {
    fn default() -> Self {
        ExchangeOptions { get_response: true, resend_on_wrong_le: true }
    }
}

/// Sends `command` and returns the card's final answer, following `61xx` with
/// GET RESPONSE and `6Cxx` with a re-send when `options` allow.
pub fn exchange(
    channel: &mut dyn Channel,
    command: &Command,
    options: ExchangeOptions,
) -> Result<Response, ReaderError> {
    let mut response = Response::parse(&channel.transmit(&command.to_bytes())?)?;
    if let StatusWord::WrongLe(exact) = response.status()
        && options.resend_on_wrong_le
        && is_read(command)
    {
        let again = command.clone().expect(if exact == 0 { 256 } else { usize::from(exact) });
        response = Response::parse(&channel.transmit(&again.to_bytes())?)?;
    }
    if !options.get_response {
        return Ok(response);
    }
    let mut data = Vec::new();
    let mut rounds = 0;
    while let StatusWord::BytesAvailable(available) = response.status() {
        rounds += 1;
        data.extend_from_slice(response.data());
        if rounds > GET_RESPONSE_ROUNDS_MAX || data.len() > CHAINED_RESPONSE_MAX {
            return Err(ReaderError::ChainTooLong);
        }
        let ne = if available == 0 { 256 } else { usize::from(available) };
        let get_response = Command::new(command.cla & 0x03, 0xC0, 0x00, 0x00).expect(ne);
        response = Response::parse(&channel.transmit(&get_response.to_bytes())?)?;
    }
    if rounds == 0 {
        return Ok(response);
    }
    data.extend_from_slice(response.data());
    Ok(Response::new(data, response.status()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scripted card: answers in order, records what it was sent.
    struct Script {
        answers: Vec<Vec<u8>>,
        sent: Vec<Vec<u8>>,
    }

    impl Channel for Script {
        fn transmit(&mut self, command: &[u8]) -> Result<Vec<u8>, ReaderError> {
            self.sent.push(command.to_vec());
            Ok(self.answers.remove(0))
        }
    }

    #[test]
    fn get_response_assembles_chained_answers() {
        let mut card = Script { answers: vec![vec![1, 2, 0x61, 0x02], vec![3, 4, 0x90, 0x00]], sent: vec![] };
        let response = exchange(&mut card, &Command::new(0x00, 0xB2, 1, 0x0C).expect(4), ExchangeOptions::default())
            .expect("answer");
        assert_eq!(response.data(), [1, 2, 3, 4]);
        assert_eq!(response.status(), StatusWord::Ok);
        assert_eq!(card.sent[1], [0x00, 0xC0, 0x00, 0x00, 0x02]);
    }

    #[test]
    fn wrong_le_resends_reads_only() {
        let read = Command::new(0x00, 0xB0, 0x95, 0x00).expect(256);
        let mut card = Script { answers: vec![vec![0x6C, 0x1E], vec![0; 32]], sent: vec![] };
        let response = exchange(&mut card, &read, ExchangeOptions::default()).expect("answer");
        assert_eq!(response.data().len(), 30);
        assert_eq!(card.sent[1], [0x00, 0xB0, 0x95, 0x00, 0x1E]);

        let debit = Command::new(0x80, 0x54, 0x01, 0x00).with_data(vec![0; 15]).expect(8);
        let mut card = Script { answers: vec![vec![0x6C, 0x08]], sent: vec![] };
        let response = exchange(&mut card, &debit, ExchangeOptions::default()).expect("answer");
        assert_eq!(response.status(), StatusWord::WrongLe(8));
        assert_eq!(card.sent.len(), 1, "a command that changes the card is never re-sent");
    }

    #[test]
    fn reads_are_told_from_commands_that_change_the_card() {
        use card_host::commands;
        for read in [
            commands::select_by_name(b"1PAY.SYS.DDF01"),
            commands::read_binary(0x15, 0, 30),
            commands::read_record(0x18, 1),
            commands::get_balance(),
            commands::get_challenge(4),
        ] {
            assert!(is_read(&read) && !changes_card(&read.to_bytes()), "{read:?}");
        }
        let terminal = card_host::TerminalNumber([0x31, 0, 0, 0, 0, 0x42]);
        let at = card_host::CardDateTime::new(2026, 11, 25, 8, 0, 0).expect("valid");
        for change in [
            commands::initialize_for_purchase(1, card_host::Fen(200), &terminal),
            commands::debit_for_purchase(7, &at, [0; 4]),
            commands::update_capp_data_cache(1, &[0; 48]),
            commands::credit_for_load(&at, [0; 4]),
            commands::verify_pin(b"123456"),
            commands::application_block([0; 4]),
        ] {
            assert!(!is_read(&change) && changes_card(&change.to_bytes()), "{change:?}");
        }
        assert!(changes_card(&[0x80]), "bytes that are no APDU are not taken for a read");
    }

    #[test]
    fn switched_off_handling_passes_status_through() {
        let mut card = Script { answers: vec![vec![0x61, 0x10]], sent: vec![] };
        let options = ExchangeOptions { get_response: false, resend_on_wrong_le: false };
        let response = exchange(&mut card, &Command::new(0, 0xB0, 0, 0).expect(16), options).expect("answer");
        assert_eq!(response.status(), StatusWord::BytesAvailable(0x10));
    }

    #[test]
    fn a_pcsc_error_is_named_once_in_a_whole_chain() {
        let error = anyhow::Error::from(crate::session::CardError::Reader(ReaderError::Pcsc(::pcsc::Error::NoService)))
            .context("no card presented");
        let shown = format!("{error:#}");
        assert_eq!(shown.matches("resource manager is not running").count(), 1, "{shown}");
    }

    #[test]
    fn an_outage_counts_failures_until_the_reader_is_back() {
        let mut outage = ReaderOutage::default();
        outage.succeeded();
        assert_eq!(outage.failures(), 0);
        for _ in 0..3 {
            outage.failed(&ReaderError::UnknownReader("Virtual PCD 00 00".into()));
        }
        assert_eq!(outage.failures(), 3);
        outage.succeeded();
        assert_eq!(outage.failures(), 0);
    }

    #[test]
    fn endless_chains_are_refused() {
        let mut card = Script { answers: vec![vec![0x61, 0x00]; GET_RESPONSE_ROUNDS_MAX + 2], sent: vec![] };
        let outcome = exchange(&mut card, &Command::new(0, 0xB0, 0, 0).expect(16), ExchangeOptions::default());
        assert!(matches!(outcome, Err(ReaderError::ChainTooLong)));
    }
}

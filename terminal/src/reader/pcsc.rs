//! PC/SC readers through the `pcsc` crate (pcscd on Linux, WinSCard on Windows).
//!
//! A [`PcscChannel`] holds the card exclusively for as long as it lives: a card
//! session is one exclusive connection. Insertion and removal are watched with
//! `SCardGetStatusChange` on the context's own thread of use.

use std::ffi::CString;
use std::time::{Duration, Instant};

use ::pcsc::{Card, Context, Disposition, Error as PcscError, Protocols, ReaderState, Scope, ShareMode, State};

use super::{CardStation, Channel, ReaderError};

/// The largest response PC/SC is asked to take: an extended APDU's.
const RECEIVE_BUFFER_MAX: usize = card_host::apdu::RESPONSE_LENGTH_MAX;

/// A PC/SC context: lists readers and waits for cards.
pub struct PcscReaders {
    context: Context,
}

impl PcscReaders {
    pub fn establish() -> Result<Self, ReaderError> {
        Ok(PcscReaders { context: Context::establish(Scope::User)? })
    }

    /// The names of the readers pcscd knows now.
    pub fn list(&self) -> Result<Vec<String>, ReaderError> {
        match self.context.list_readers_owned() {
            Ok(names) => Ok(names.iter().map(|name| name.to_string_lossy().into_owned()).collect()),
            Err(PcscError::NoReadersAvailable) => Ok(Vec::new()),
            Err(error) => Err(error.into()),
        }
    }

    fn reader_name(&self, name: &str) -> Result<CString, ReaderError> {
        if !self.list()?.iter().any(|known| known == name) {
            return Err(ReaderError::UnknownReader(name.to_owned()));
        }
        CString::new(name).map_err(|_| ReaderError::UnknownReader(name.to_owned()))
    }

    /// Waits until the reader has a card (`present`) or is empty (`!present`),
    /// at most `timeout`. Returns whether that state was reached.
    pub fn wait_for(&self, reader: &str, present: bool, timeout: Duration) -> Result<bool, ReaderError> {
        let name = self.reader_name(reader)?;
        let mut states = [ReaderState::new(name, State::UNAWARE)];
        let deadline = Instant::now() + timeout;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match self.context.get_status_change(Some(remaining), &mut states) {
                Ok(()) => {}
                Err(PcscError::Timeout) => return Ok(false),
                Err(error) => return Err(error.into()),
            }
            let event = states[0].event_state();
            if event.contains(State::PRESENT) == present && !event.contains(State::UNKNOWN) {
                return Ok(true);
            }
            states[0].sync_current_state();
            if remaining.is_zero() {
                return Ok(false);
            }
        }
    }

    /// Waits for a card in `reader` and connects to it exclusively.
    /// A card another connection still holds (a terminal process that has
    /// just died is released by pcscd a moment later) is waited for, within the
    /// same timeout.
    pub fn connect(&self, reader: &str, timeout: Duration) -> Result<PcscChannel, ReaderError> {
        let deadline = Instant::now() + timeout;
        if !self.wait_for(reader, true, timeout)? {
            return Err(ReaderError::NoCard(timeout));
        }
        let name = self.reader_name(reader)?;
        loop {
            match self.context.connect(&name, ShareMode::Exclusive, Protocols::ANY) {
                Ok(card) => return Ok(PcscChannel { card, buffer: vec![0; RECEIVE_BUFFER_MAX] }),
                Err(PcscError::SharingViolation) if Instant::now() < deadline => {
                    std::thread::sleep(SHARING_RETRY);
                }
                Err(error) => return Err(removed(error)),
            }
        }
    }
}

/// How often a card held by another connection is tried again.
const SHARING_RETRY: Duration = Duration::from_millis(50);

/// Maps PC/SC's ways of saying "the card went away" onto one error.
fn removed(error: PcscError) -> ReaderError {
    match error {
        PcscError::ResetCard => ReaderError::CardReset,
        PcscError::RemovedCard | PcscError::NoSmartcard | PcscError::UnpoweredCard | PcscError::UnresponsiveCard => {
            ReaderError::CardRemoved
        }
        other => ReaderError::Pcsc(other),
    }
}

/// An exclusive connection to the card in one PC/SC reader.
pub struct PcscChannel {
    card: Card,
    buffer: Vec<u8>,
}

impl PcscChannel {
    /// The card's answer to reset.
    pub fn atr(&self) -> Result<Vec<u8>, ReaderError> {
        Ok(self.card.status2_owned().map_err(removed)?.atr().to_vec())
    }

    /// Resets the card (warm reset) and keeps the exclusive connection.
    pub fn reset(&mut self) -> Result<(), ReaderError> {
        self.card.reconnect(ShareMode::Exclusive, Protocols::ANY, Disposition::ResetCard).map_err(removed)
    }

    /// Ends the session, leaving the card as it is.
    pub fn disconnect(self) {
        let _ = self.card.disconnect(Disposition::LeaveCard);
    }
}

impl Channel for PcscChannel {
    fn transmit(&mut self, command: &[u8]) -> Result<Vec<u8>, ReaderError> {
        match self.card.transmit(command, &mut self.buffer) {
            // A reader that lost the card mid-command may hand back nothing at all
            // (vpcd does): the command's outcome is unknown, as with a removal.
            Ok(answer) if answer.len() < 2 => Err(ReaderError::CardRemoved),
            Ok(answer) => Ok(answer.to_vec()),
            Err(PcscError::ResetCard) => {
                // Someone reset the card: reconnect so the next session can
                // select again; the command was not carried out.
                self.card.reconnect(ShareMode::Exclusive, Protocols::ANY, Disposition::LeaveCard).map_err(removed)?;
                Err(ReaderError::CardReset)
            }
            Err(error) => Err(removed(error)),
        }
    }
}

/// Whether `error` leaves the PC/SC context usable: a card gone or reset is
/// the card's business; anything else (pcscd stopped or restarted, the reader
/// gone from its list) calls for a new context.
fn context_survives(error: &ReaderError) -> bool {
    matches!(error, ReaderError::CardRemoved | ReaderError::CardReset | ReaderError::NoCard(_))
}

/// A reader slot whose card stays there (the PSAM): a [`Channel`] that
/// connects on first use and connects again after the card was reset or taken
/// out and put back, or pcscd restarted, without the terminal restarting.
///
/// After a lost connection the next command makes the new one and is refused
/// with [`ReaderError::CardReset`] without being sent: the card's session state
/// (its selected application) is gone, and the client opens it again.
pub struct PcscSlot {
    reader: String,
    readers: Option<PcscReaders>,
    channel: Option<PcscChannel>,
    lost: bool,
    connect_timeout: Duration,
}

impl PcscSlot {
    /// Connects to the card in `reader`, waiting at most `timeout` for it;
    /// later reconnections wait at most [`PcscSlot::RECONNECT_WAIT`].
    pub fn connect(reader: &str, timeout: Duration) -> Result<PcscSlot, ReaderError> {
        let mut slot = PcscSlot {
            reader: reader.to_owned(),
            readers: None,
            channel: None,
            lost: false,
            connect_timeout: Self::RECONNECT_WAIT,
        };
        slot.reconnect(timeout)?;
        Ok(slot)
    }

    /// How long a command waits for a lost card to come back: short, as a
    /// rider's tap waits on it.
    pub const RECONNECT_WAIT: Duration = Duration::from_millis(200);

    /// Whether the slot is connected now (false after a loss, until the next command).
    pub fn is_connected(&self) -> bool {
        self.channel.is_some()
    }

    fn reconnect(&mut self, timeout: Duration) -> Result<(), ReaderError> {
        let readers = match &mut self.readers {
            Some(readers) => readers,
            none => none.insert(PcscReaders::establish()?),
        };
        match readers.connect(&self.reader, timeout) {
            Ok(channel) => {
                self.channel = Some(channel);
                Ok(())
            }
            Err(error) => {
                if !context_survives(&error) {
                    self.readers = None;
                }
                Err(error)
            }
        }
    }
}

impl Channel for PcscSlot {
    fn transmit(&mut self, command: &[u8]) -> Result<Vec<u8>, ReaderError> {
        if self.channel.is_none() {
            self.reconnect(self.connect_timeout)?;
            if std::mem::take(&mut self.lost) {
                tracing::info!(reader = %self.reader, "reconnected");
                return Err(ReaderError::CardReset);
            }
        }
        let Some(channel) = self.channel.as_mut() else { return Err(ReaderError::CardRemoved) };
        match channel.transmit(command) {
            // PcscChannel reconnected by itself; the card's state is gone.
            Err(ReaderError::CardReset) => Err(ReaderError::CardReset),
            Err(error) => {
                tracing::warn!(reader = %self.reader, %error, "connection lost");
                self.channel = None;
                self.lost = true;
                if !context_survives(&error) {
                    self.readers = None;
                }
                Err(error)
            }
            answer => answer,
        }
    }
}

/// A reader where riders present cards (the validator's, the kiosk's, the
/// counter's), as a [`CardStation`]: one exclusive connection per
/// presentation. A PC/SC error other than a card gone or reset drops the
/// context; a context that fails so before any card was used is replaced at
/// once and the call made again on the new one (pcscd restarted since the last
/// call), so the first call after a restart does not fail for nothing.
pub struct PcscStation {
    reader: String,
    readers: Option<PcscReaders>,
}

impl PcscStation {
    pub fn new(reader: &str) -> PcscStation {
        PcscStation { reader: reader.to_owned(), readers: None }
    }

    fn readers(&mut self) -> Result<&PcscReaders, ReaderError> {
        Ok(match &mut self.readers {
            Some(readers) => readers,
            none => none.insert(PcscReaders::establish()?),
        })
    }

    /// Runs `call` on the context, dropping it after an error it does not
    /// survive; `call` is made once more on a new context if the one it failed
    /// on was established before (by an earlier call) and `retry_allowed` says
    /// nothing was done with a card.
    fn on_context<T>(
        &mut self,
        mut call: impl FnMut(&PcscReaders, &str) -> Result<T, ReaderError>,
        retry_allowed: impl Fn() -> bool,
    ) -> Result<T, ReaderError> {
        let established_before = self.readers.is_some();
        let reader = self.reader.clone();
        let outcome = self.readers().and_then(|readers| call(readers, &reader));
        match outcome {
            Err(error) if !context_survives(&error) => {
                self.readers = None;
                if !(established_before && retry_allowed()) {
                    return Err(error);
                }
                tracing::info!(reader = %self.reader, %error, "PC/SC context lost (pcscd restarted?); establishing a new one");
                let outcome = self.readers().and_then(|readers| call(readers, &reader));
                if outcome.as_ref().is_err_and(|error| !context_survives(error)) {
                    self.readers = None;
                }
                outcome
            }
            outcome => outcome,
        }
    }
}

impl CardStation for PcscStation {
    fn with_card(
        &mut self,
        timeout: Duration,
        use_card: &mut dyn FnMut(&mut dyn Channel),
    ) -> Result<bool, ReaderError> {
        let used = std::cell::Cell::new(false);
        self.on_context(
            |readers, reader| {
                if !readers.wait_for(reader, true, timeout)? {
                    return Ok(false);
                }
                let mut channel = readers.connect(reader, timeout)?;
                used.set(true);
                use_card(&mut channel);
                channel.disconnect();
                Ok(true)
            },
            || !used.get(),
        )
    }

    fn wait_empty(&mut self, timeout: Duration) -> Result<bool, ReaderError> {
        self.on_context(|readers, reader| readers.wait_for(reader, false, timeout), || true)
    }
}

/// The name pcscd gives the vpcd virtual reader's slot `n` (0 or 1).
pub fn vpcd_reader_name(slot: u8) -> String {
    format!("Virtual PCD 00 {slot:02}")
}

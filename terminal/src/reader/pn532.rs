//! A PN532 reader module on a serial line (HSU, 115200 baud): the bus
//! validator's reader. Frames are `card_host::pn532::frame`'s, shared with the
//! emulator that tests this driver.
//!
//! One command goes like this: the command frame; the PN532's ACK; its answer
//! frame (code + 1). The driver
//!
//! - wakes the module up (`55 55 00 ..`) and puts it in normal mode
//!   (SAMConfiguration), then checks GetFirmwareVersion says PN532;
//! - sends a command again when no ACK came (the PN532 did not take it), at
//!   most [`COMMAND_ATTEMPTS_MAX`] times; InDataExchange only when it carries
//!   a whole read ([`super::is_read`], not chained) and nothing at all came
//!   back. An APDU that changes the card is never sent twice: its lost answer
//!   is [`Pn532Error::OutcomeUnknown`] (the PN532 may have taken it and the
//!   card carried it out), which a purchase settles through its journal
//!   intent and GET TRANSACTION PROVE;
//! - asks for an answer again with NACK when it came broken (bad LCS or DCS),
//!   at most [`NACKS_MAX`] times; it waits [`NACK_QUIET`] first, so that a
//!   broken frame that was only line noise costs nothing;
//! - skips garbage between frames (the decoder resynchronises on the next start
//!   code) and answers to other commands (late answers after a timeout);
//! - lists type A targets with MaxTg 2, so two cards in the field are seen and
//!   refused ([`ReaderError::SeveralCards`]): a validator must not debit a card
//!   the rider did not mean to present;
//! - carries APDUs in InDataExchange, chained with the MI bit both ways when
//!   longer than [`DATA_EXCHANGE_CHUNK_MAX`] bytes;
//! - maps InDataExchange's status `01` (time out), `29` (released), `2B`
//!   (disappeared) and `27` (no such target any more) to
//!   [`ReaderError::CardRemoved`]: the card left and the outcome is unknown.

use std::io::{self, Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use card_host::pn532::command::{
    BAUD_TYPE_A_106, DATA_EXCHANGE_CHUNK_MAX, MORE_INFORMATION, SAK_ISO14443_4, SAM_MODE_NORMAL, TARGETS_MAX, code,
};
use card_host::pn532::{Decoder, Direction, Frame, FrameError, Information, Status, TypeATarget};

use super::{CHAINED_RESPONSE_MAX, Channel, ReaderError};

/// The HSU wake-up: 0x55s, then 00s long enough for the PN532 to wake
/// (UM0701-02 §7.2.11 and the PN532 application note).
pub const WAKE_UP: [u8; 16] =
    [0x55, 0x55, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00];
/// The PN532's baud rate on the serial line after power-on.
pub const BAUD_RATE: u32 = 115_200;
/// The serial port's read timeout: how often the driver looks at its deadlines.
pub const PORT_READ_TIMEOUT: Duration = Duration::from_millis(10);
/// Bytes read past a wait's deadline, without a frame, before the wait gives
/// up on a line that keeps talking (a few of the longest frames).
pub const LINE_BYTES_PAST_DEADLINE_MAX: usize = 1_024;
/// Sends of one command frame before the driver gives up on an ACK.
pub const COMMAND_ATTEMPTS_MAX: usize = 3;
/// NACKs for one answer before the driver gives up on it.
pub const NACKS_MAX: usize = 3;
/// How long the line stays quiet after a broken frame before the driver asks
/// for the answer again.
pub const NACK_QUIET: Duration = Duration::from_millis(50);
/// InDataExchange answers one response APDU may take.
pub const RESPONSE_FRAMES_MAX: usize = CHAINED_RESPONSE_MAX / DATA_EXCHANGE_CHUNK_MAX + 2;
/// Frames not meant for the waiting command that the driver skips before it
/// calls the line broken.
pub const STRAY_FRAMES_MAX: usize = 16;
/// The longest command APDU the driver sends.
pub const COMMAND_APDU_MAX: usize = card_host::apdu::COMMAND_LENGTH_MAX;

/// How long to wait, and how long the data exchanges may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pn532Options {
    /// For the ACK after a command frame (the PN532 answers within a millisecond).
    pub ack_timeout: Duration,
    /// For the answer after the ACK (an InDataExchange waits for the card).
    pub answer_timeout: Duration,
    /// The most APDU bytes per InDataExchange, 1 to [`DATA_EXCHANGE_CHUNK_MAX`];
    /// less makes the driver chain shorter APDUs (for tests).
    pub chunk_max: usize,
    /// How long the line must stay quiet after a broken frame before a NACK,
    /// and when draining it ([`NACK_QUIET`]).
    pub quiet: Duration,
}

impl Default for Pn532Options {
    fn default() -> Self {
        Pn532Options {
            ack_timeout: Duration::from_millis(500),
            answer_timeout: Duration::from_secs(3),
            chunk_max: DATA_EXCHANGE_CHUNK_MAX,
            quiet: NACK_QUIET,
        }
    }
}

/// What went wrong with the PN532 itself (the line, the frames, its answers).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Pn532Error {
    #[error("no ACK for command {command:#04X} after {attempts} attempts: is a PN532 on the line?")]
    NoAck { command: u8, attempts: usize },
    #[error("no answer to command {command:#04X} within {waited:?}")]
    NoAnswer { command: u8, waited: Duration },
    #[error("the PN532 found a syntax error in command {command:#04X}")]
    SyntaxError { command: u8 },
    #[error("the answer to command {command:#04X} came broken {nacks} times")]
    BrokenAnswers { command: u8, nacks: usize },
    #[error("{skipped} frames on the line that were not the answer to command {command:#04X}")]
    StrayFrames { command: u8, skipped: usize },
    #[error("{command}: status {status}")]
    Status { command: &'static str, status: Status },
    #[error("not a PN532: firmware {0:02X?}")]
    NotPn532(Vec<u8>),
    #[error("malformed answer to {command}: {detail}")]
    Malformed { command: &'static str, detail: String },
    #[error("the card does not speak ISO/IEC 14443-4 (SAK {0:#04X})")]
    NotIsoDep(u8),
    #[error("command APDU of {0} bytes is too long")]
    ApduTooLong(usize),
    /// The answer to an APDU that changes the card was lost (no ACK, or no
    /// answer after it): the APDU is not sent again, since the PN532 may have
    /// taken it and the card carried it out. Whether it did is unknown; a
    /// purchase keeps its journal intent and GET TRANSACTION PROVE settles it.
    #[error("the answer to a command that changes the card was lost ({0}); not sent again, its outcome is unknown")]
    OutcomeUnknown(Box<Pn532Error>),
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// The PN532's GetFirmwareVersion answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FirmwareVersion {
    pub ic: u8,
    pub version: u8,
    pub revision: u8,
    pub support: u8,
}

/// A PN532 on a serial port. See the module doc.
pub struct Pn532Reader<P: Read + Write> {
    port: P,
    decoder: Decoder,
    options: Pn532Options,
    target: Option<TypeATarget>,
    /// The line may hold a late answer (after a timeout): drain it before the
    /// next command.
    drain: bool,
    /// Bytes read from the line so far.
    received: u64,
}

impl Pn532Reader<serialport::TTYPort> {
    /// Opens the serial device at `path` (115200 8N1, raw), wakes the PN532 up,
    /// and checks it is one.
    pub fn open(path: &Path) -> Result<(Self, FirmwareVersion), ReaderError> {
        Self::open_with_options(path, Pn532Options::default())
    }

    /// [`Pn532Reader::open`] with other timeouts or chunk size.
    pub fn open_with_options(path: &Path, options: Pn532Options) -> Result<(Self, FirmwareVersion), ReaderError> {
        let port = serialport::new(path.to_string_lossy(), BAUD_RATE)
            .timeout(PORT_READ_TIMEOUT)
            .open_native()
            .map_err(io::Error::from)?;
        let mut reader = Pn532Reader::with_options(port, options);
        let firmware = reader.wake_up()?;
        Ok((reader, firmware))
    }
}

/// How often a [`Pn532Device`] looks for a card (InListPassiveTarget).
pub const CARD_POLL_INTERVAL: Duration = Duration::from_millis(100);

/// A PN532 on the serial device at a path, as a [`CardStation`]: opened (woken
/// up, its firmware checked) on first use, and opened again after the line
/// failed (the module unplugged and back, the device re-created), so a
/// terminal outlives its reader module.
pub struct Pn532Device {
    path: std::path::PathBuf,
    options: Pn532Options,
    reader: Option<Pn532Reader<serialport::TTYPort>>,
}

impl Pn532Device {
    /// The module at `path`; nothing is opened yet.
    pub fn new(path: &Path) -> Pn532Device {
        Pn532Device::with_options(path, Pn532Options::default())
    }

    pub fn with_options(path: &Path, options: Pn532Options) -> Pn532Device {
        Pn532Device { path: path.to_owned(), options, reader: None }
    }

    /// The driver, opening the line first if it is not open.
    pub fn reader(&mut self) -> Result<&mut Pn532Reader<serialport::TTYPort>, ReaderError> {
        Ok(match &mut self.reader {
            Some(reader) => reader,
            none => {
                let (reader, firmware) = Pn532Reader::open_with_options(&self.path, self.options)?;
                tracing::info!(device = %self.path.display(), version = firmware.version, revision = firmware.revision, "PN532 opened");
                none.insert(reader)
            }
        })
    }

    /// Forgets the line after an error that may mean it is gone; the next call
    /// opens it again. A card that is no ISO 14443-4 card says nothing of the line.
    fn after<T>(&mut self, result: Result<T, ReaderError>) -> Result<T, ReaderError> {
        if let Err(error @ (ReaderError::Serial(_) | ReaderError::Pn532(_))) = &result
            && !matches!(error, ReaderError::Pn532(Pn532Error::NotIsoDep(_)))
        {
            tracing::warn!(device = %self.path.display(), %error, "PN532 line lost; it is opened again");
            self.reader = None;
        }
        result
    }

    fn find_card(&mut self) -> Result<Option<TypeATarget>, ReaderError> {
        let found = self.reader().and_then(Pn532Reader::find_card);
        self.after(found)
    }

    fn release(&mut self) -> Result<(), ReaderError> {
        let released = match &mut self.reader {
            Some(reader) => reader.release(),
            None => Ok(()),
        };
        self.after(released)
    }
}

impl super::CardStation for Pn532Device {
    fn with_card(
        &mut self,
        timeout: Duration,
        use_card: &mut dyn FnMut(&mut dyn Channel),
    ) -> Result<bool, ReaderError> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.find_card()?.is_some() {
                if let Some(reader) = self.reader.as_mut() {
                    use_card(reader);
                }
                // The session ends here; a card that already left is fine.
                if let Err(error) = self.release() {
                    tracing::debug!(%error, "InRelease after the card session");
                }
                return Ok(true);
            }
            if Instant::now() + CARD_POLL_INTERVAL > deadline {
                return Ok(false);
            }
            std::thread::sleep(CARD_POLL_INTERVAL);
        }
    }

    fn wait_empty(&mut self, timeout: Duration) -> Result<bool, ReaderError> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.find_card() {
                Ok(None) => return Ok(true),
                Ok(Some(_)) => self.release()?,
                // Cards are in the field (already released): not empty.
                Err(ReaderError::SeveralCards(_) | ReaderError::Pn532(Pn532Error::NotIsoDep(_))) => {}
                Err(error) => return Err(error),
            }
            if Instant::now() + CARD_POLL_INTERVAL > deadline {
                return Ok(false);
            }
            std::thread::sleep(CARD_POLL_INTERVAL);
        }
    }
}

impl<P: Read + Write> Pn532Reader<P> {
    /// A driver on `port`, whose reads must time out (in [`PORT_READ_TIMEOUT`]
    /// or so) for the driver's own timeouts to hold. Call [`Pn532Reader::wake_up`] first.
    pub fn new(port: P) -> Self {
        Pn532Reader::with_options(port, Pn532Options::default())
    }

    pub fn with_options(port: P, options: Pn532Options) -> Self {
        let options = Pn532Options { chunk_max: options.chunk_max.clamp(1, DATA_EXCHANGE_CHUNK_MAX), ..options };
        Pn532Reader { port, decoder: Decoder::new(), options, target: None, drain: true, received: 0 }
    }

    /// Wakes the PN532 up from its power-on low-power mode, puts it in normal
    /// mode (SAMConfiguration 01) and reads its firmware version.
    pub fn wake_up(&mut self) -> Result<FirmwareVersion, ReaderError> {
        self.port.write_all(&WAKE_UP)?;
        self.port.flush()?;
        self.command(code::SAM_CONFIGURATION, &[SAM_MODE_NORMAL, 0x14, 0x00])?;
        self.firmware_version()
    }

    /// GetFirmwareVersion; refuses anything but a PN532 (IC `32`).
    pub fn firmware_version(&mut self) -> Result<FirmwareVersion, ReaderError> {
        let answer = self.command(code::GET_FIRMWARE_VERSION, &[])?;
        match answer[..] {
            [ic @ 0x32, version, revision, support] => Ok(FirmwareVersion { ic, version, revision, support }),
            _ => Err(Pn532Error::NotPn532(answer).into()),
        }
    }

    /// Looks once for a card at 106 kbps type A (InListPassiveTarget, MaxTg 2)
    /// and activates it for APDUs. `Ok(None)`: no card. Two cards: both are
    /// released and the answer is [`ReaderError::SeveralCards`].
    pub fn find_card(&mut self) -> Result<Option<TypeATarget>, ReaderError> {
        self.target = None;
        let answer = self.command(code::IN_LIST_PASSIVE_TARGET, &[TARGETS_MAX, BAUD_TYPE_A_106])?;
        let mut targets = TypeATarget::parse_list(&answer, true)
            .map_err(|error| Pn532Error::Malformed { command: "InListPassiveTarget", detail: error.to_string() })?;
        match targets.len() {
            0 => Ok(None),
            1 => {
                let target = targets.remove(0);
                if target.sak & SAK_ISO14443_4 == 0 {
                    self.release()?;
                    return Err(Pn532Error::NotIsoDep(target.sak).into());
                }
                // Not the UID: it identifies the card (a software card's is
                // the last three bytes of its serial), and logs keep no card
                // number but masked.
                tracing::debug!(uid_bytes = target.uid.len(), sak = target.sak, "card activated");
                self.target = Some(target.clone());
                Ok(Some(target))
            }
            count => {
                tracing::warn!(count, "several cards in the field: refused");
                self.release()?;
                Err(ReaderError::SeveralCards(u8::try_from(count).unwrap_or(u8::MAX)))
            }
        }
    }

    /// Looks for a card until one is there, at most `timeout`, every `interval`.
    pub fn wait_for_card(&mut self, timeout: Duration, interval: Duration) -> Result<TypeATarget, ReaderError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(target) = self.find_card()? {
                return Ok(target);
            }
            if Instant::now() + interval > deadline {
                return Err(ReaderError::NoCard(timeout));
            }
            std::thread::sleep(interval);
        }
    }

    /// The card found last, while it is still thought to be there.
    pub fn target(&self) -> Option<&TypeATarget> {
        self.target.as_ref()
    }

    /// Releases every target (InRelease 0): the card session ends.
    pub fn release(&mut self) -> Result<(), ReaderError> {
        self.target = None;
        let answer = self.command(code::IN_RELEASE, &[0x00])?;
        match answer.first().map(|status| Status::from_byte(*status)) {
            Some(Status::Ok) => Ok(()),
            Some(status) => Err(Pn532Error::Status { command: "InRelease", status }.into()),
            None => Err(Pn532Error::Malformed { command: "InRelease", detail: "no status".into() }.into()),
        }
    }

    pub fn into_port(self) -> P {
        self.port
    }

    /// Reads until a frame, a broken frame, or `deadline`. The deadline ends
    /// the wait only when the line has nothing more: bytes already on it are
    /// read even past the deadline (a thread that was not scheduled for a while
    /// must not drop an answer that did come in time), up to
    /// [`LINE_BYTES_PAST_DEADLINE_MAX`] of a line that keeps talking without
    /// making a frame.
    fn read_frame(&mut self, deadline: Instant) -> Result<Option<Result<Frame, FrameError>>, ReaderError> {
        let mut buffer = [0u8; 300];
        let mut past_deadline = 0usize;
        loop {
            if let Some(outcome) = self.decoder.next_frame() {
                return Ok(Some(outcome));
            }
            match self.port.read(&mut buffer) {
                Ok(0) => {
                    if Instant::now() >= deadline {
                        return Ok(None);
                    }
                    std::thread::sleep(PORT_READ_TIMEOUT);
                }
                Ok(count) => {
                    self.received += count as u64;
                    self.decoder.push(&buffer[..count]);
                    if Instant::now() >= deadline {
                        past_deadline += count;
                        if past_deadline > LINE_BYTES_PAST_DEADLINE_MAX {
                            return Ok(None);
                        }
                    }
                }
                Err(error)
                    if matches!(
                        error.kind(),
                        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) =>
                {
                    if Instant::now() >= deadline {
                        return Ok(None);
                    }
                }
                Err(error) => return Err(error.into()),
            }
        }
    }

    /// Reads and drops whatever the line holds until it is quiet for [`Pn532Options::quiet`].
    fn drain_line(&mut self) -> Result<(), ReaderError> {
        let mut dropped = 0usize;
        loop {
            match self.read_frame(Instant::now() + self.options.quiet)? {
                None => break,
                Some(_) if dropped < STRAY_FRAMES_MAX => dropped += 1,
                Some(_) => break,
            }
        }
        self.decoder.clear();
        if dropped > 0 {
            tracing::debug!(dropped, "stale frames drained from the line");
        }
        self.drain = false;
        Ok(())
    }

    /// Sends command `code` to the PN532 itself and returns its answer's
    /// parameters (after the answer code). See the module doc for the retries.
    fn command(&mut self, code: u8, parameters: &[u8]) -> Result<Vec<u8>, ReaderError> {
        self.command_with(code, parameters, Resend::Always)
    }

    fn command_with(&mut self, code: u8, parameters: &[u8], resend: Resend) -> Result<Vec<u8>, ReaderError> {
        let result = self.command_once(code, parameters, resend);
        if matches!(result, Err(ReaderError::Pn532(_))) {
            self.drain = true;
        }
        result
    }

    fn command_once(&mut self, code: u8, parameters: &[u8], resend: Resend) -> Result<Vec<u8>, ReaderError> {
        if self.drain {
            self.drain_line()?;
        }
        let frame = Information::command(code, parameters).map_err(Pn532Error::from)?.to_bytes();
        let is_data_exchange = code == code::IN_DATA_EXCHANGE;
        let mut stray = 0usize;
        let mut attempts = 0;
        'send: loop {
            attempts += 1;
            self.port.write_all(&frame)?;
            self.port.flush()?;
            let deadline = Instant::now() + self.options.ack_timeout;
            let received_before = self.received;
            let mut heard = false;
            loop {
                match self.read_frame(deadline)? {
                    Some(Ok(Frame::Ack)) => break,
                    Some(Ok(Frame::Information(answer))) if is_answer(&answer, code) => {
                        // The ACK got lost on the way; the answer did not.
                        tracing::debug!(command = format_args!("{code:02X}"), "answer without ACK");
                        return Ok(answer.parameters().to_vec());
                    }
                    Some(Ok(Frame::Error)) => return Err(Pn532Error::SyntaxError { command: code }.into()),
                    Some(Ok(Frame::Nack)) if !is_data_exchange && attempts < COMMAND_ATTEMPTS_MAX => continue 'send,
                    Some(Ok(other)) => {
                        heard = true;
                        stray += 1;
                        tracing::debug!(frame = ?other, "stray frame while waiting for ACK");
                        if stray > STRAY_FRAMES_MAX {
                            return Err(Pn532Error::StrayFrames { command: code, skipped: stray }.into());
                        }
                    }
                    Some(Err(error)) => {
                        heard = true;
                        tracing::debug!(%error, "broken frame while waiting for ACK");
                    }
                    None => {
                        // A command the PN532 never acknowledged did not reach it,
                        // unless something came back (broken, or cut short): then
                        // an APDU may have.
                        heard |= self.received != received_before;
                        let again = match resend {
                            Resend::Always => true,
                            Resend::IfNothingHeard => !heard,
                            Resend::Never => false,
                        };
                        if attempts >= COMMAND_ATTEMPTS_MAX || !again {
                            return Err(Pn532Error::NoAck { command: code, attempts }.into());
                        }
                        tracing::warn!(command = format_args!("{code:02X}"), attempts, "no ACK: sending again");
                        continue 'send;
                    }
                }
            }
            return self.answer(code, stray);
        }
    }

    /// Waits for the answer to `code` after its ACK, NACKing broken answers.
    fn answer(&mut self, code: u8, mut stray: usize) -> Result<Vec<u8>, ReaderError> {
        let deadline = Instant::now() + self.options.answer_timeout;
        let mut nacks = 0;
        let mut broken_at: Option<Instant> = None;
        loop {
            let wait_until = broken_at.map_or(deadline, |at| (at + self.options.quiet).min(deadline));
            match self.read_frame(wait_until)? {
                Some(Ok(Frame::Information(answer))) if is_answer(&answer, code) => {
                    return Ok(answer.parameters().to_vec());
                }
                Some(Ok(Frame::Error)) => return Err(Pn532Error::SyntaxError { command: code }.into()),
                Some(Ok(other)) => {
                    stray += 1;
                    tracing::debug!(frame = ?other, "stray frame while waiting for the answer");
                    if stray > STRAY_FRAMES_MAX {
                        return Err(Pn532Error::StrayFrames { command: code, skipped: stray }.into());
                    }
                }
                Some(Err(error)) => {
                    tracing::debug!(%error, "broken frame while waiting for the answer");
                    broken_at = Some(Instant::now());
                }
                // A broken answer that came in time is asked for again (when it
                // came, not when the quiet after it was over, decides).
                None if broken_at.is_some_and(|at| at < deadline) => {
                    // The broken frame was the answer: ask for it again.
                    nacks += 1;
                    if nacks > NACKS_MAX {
                        return Err(Pn532Error::BrokenAnswers { command: code, nacks: NACKS_MAX }.into());
                    }
                    tracing::warn!(command = format_args!("{code:02X}"), nacks, "broken answer: NACK");
                    self.port.write_all(&card_host::pn532::frame::NACK)?;
                    self.port.flush()?;
                    broken_at = None;
                }
                None => {
                    return Err(Pn532Error::NoAnswer { command: code, waited: self.options.answer_timeout }.into());
                }
            }
        }
    }

    /// One InDataExchange: returns the status and data, or the card's removal.
    fn data_exchange(&mut self, target: u8, data: &[u8], resend: Resend) -> Result<(u8, Vec<u8>), ReaderError> {
        let mut parameters = Vec::with_capacity(1 + data.len());
        parameters.push(target);
        parameters.extend_from_slice(data);
        let answer = self.command_with(code::IN_DATA_EXCHANGE, &parameters, resend)?;
        let Some((&status_byte, data)) = answer.split_first() else {
            return Err(Pn532Error::Malformed { command: "InDataExchange", detail: "no status byte".into() }.into());
        };
        match Status::from_byte(status_byte) {
            Status::Ok => Ok((status_byte, data.to_vec())),
            status if status.means_card_gone() || status == Status::NotAcceptable => {
                tracing::info!(%status, "card gone from the field");
                self.target = None;
                Err(ReaderError::CardRemoved)
            }
            status => Err(Pn532Error::Status { command: "InDataExchange", status }.into()),
        }
    }
}

/// Whether a command frame that got no ACK is sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resend {
    /// A command to the PN532 itself: up to [`COMMAND_ATTEMPTS_MAX`] sends.
    Always,
    /// InDataExchange with a whole read APDU: again only if nothing at all came
    /// back (the PN532 never took it), and running it twice changes nothing.
    IfNothingHeard,
    /// InDataExchange with an APDU that changes the card, a part of a chained
    /// one, or a request for the rest of a chained answer: never, as the
    /// PN532 may hold or have run it already.
    Never,
}

/// The lost answer of an APDU that changes the card: its outcome is unknown.
fn outcome_unknown(error: ReaderError) -> ReaderError {
    match error {
        ReaderError::Pn532(lost @ (Pn532Error::NoAck { .. } | Pn532Error::NoAnswer { .. })) => {
            tracing::warn!(error = %lost, "answer to a command that changes the card lost: not sent again");
            Pn532Error::OutcomeUnknown(Box::new(lost)).into()
        }
        other => other,
    }
}

fn is_answer(frame: &Information, code: u8) -> bool {
    frame.direction() == Direction::Pn532ToHost && frame.code() == code.wrapping_add(1)
}

impl<P: Read + Write> Channel for Pn532Reader<P> {
    /// Carries one APDU in InDataExchange, chained with MI both ways when long.
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, ReaderError> {
        let target = self.target.as_ref().ok_or(ReaderError::CardRemoved)?.number;
        if apdu.len() > COMMAND_APDU_MAX {
            return Err(Pn532Error::ApduTooLong(apdu.len()).into());
        }
        let chunks: Vec<&[u8]> =
            if apdu.is_empty() { vec![apdu] } else { apdu.chunks(self.options.chunk_max).collect() };
        let last = chunks.len() - 1;
        let changes_card = super::changes_card(apdu);
        let resend = if last == 0 && !changes_card { Resend::IfNothingHeard } else { Resend::Never };
        let mut answer = (0u8, Vec::new());
        for (index, chunk) in chunks.iter().enumerate() {
            let more = if index < last { MORE_INFORMATION } else { 0 };
            answer = self
                .data_exchange(target | more, chunk, resend)
                .map_err(|error| if changes_card { outcome_unknown(error) } else { error })?;
            if index < last && (!answer.1.is_empty() || answer.0 & MORE_INFORMATION != 0) {
                return Err(Pn532Error::Malformed {
                    command: "InDataExchange",
                    detail: "data in the answer to a chained part".into(),
                }
                .into());
            }
        }
        let (mut status, mut response) = answer;
        let mut frames = 1;
        while status & MORE_INFORMATION != 0 {
            frames += 1;
            if frames > RESPONSE_FRAMES_MAX || response.len() > CHAINED_RESPONSE_MAX {
                return Err(ReaderError::ChainTooLong);
            }
            let (next_status, data) = self.data_exchange(target, &[], Resend::Never)?;
            status = next_status;
            response.extend_from_slice(&data);
        }
        if response.len() > CHAINED_RESPONSE_MAX {
            return Err(ReaderError::ChainTooLong);
        }
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use card_host::pn532::frame::{ACK, ERROR, NACK};

    use super::*;

    /// A scripted PN532: each write gets the next scripted reply (if any) onto
    /// the line; reads time out when the line is empty.
    struct Script {
        replies: VecDeque<Vec<u8>>,
        line: VecDeque<u8>,
        written: Vec<Vec<u8>>,
    }

    impl Script {
        fn new(replies: Vec<Vec<u8>>) -> Self {
            Script { replies: replies.into(), line: VecDeque::new(), written: Vec::new() }
        }
    }

    impl Read for Script {
        fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
            if self.line.is_empty() {
                std::thread::sleep(Duration::from_millis(1));
                return Err(io::ErrorKind::TimedOut.into());
            }
            let count = buffer.len().min(self.line.len());
            for (slot, byte) in buffer.iter_mut().zip(self.line.drain(..count)) {
                *slot = byte;
            }
            Ok(count)
        }
    }

    impl Write for Script {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.written.push(bytes.to_vec());
            if bytes != WAKE_UP
                && let Some(reply) = self.replies.pop_front()
            {
                self.line.extend(reply);
            }
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn answer(code: u8, parameters: &[u8]) -> Vec<u8> {
        Information::response(code, parameters).expect("fits").to_bytes()
    }

    fn acked(code: u8, parameters: &[u8]) -> Vec<u8> {
        [&ACK[..], &answer(code, parameters)].concat()
    }

    fn reader(replies: Vec<Vec<u8>>) -> Pn532Reader<Script> {
        let options = Pn532Options {
            ack_timeout: Duration::from_millis(30),
            answer_timeout: Duration::from_millis(200),
            chunk_max: DATA_EXCHANGE_CHUNK_MAX,
            quiet: NACK_QUIET,
        };
        let mut reader = Pn532Reader::with_options(Script::new(replies), options);
        reader.drain = false;
        reader
    }

    const FIRMWARE: [u8; 4] = [0x32, 0x01, 0x06, 0x07];

    /// A reader with one ISO 14443-4 card listed.
    fn with_card(mut replies: Vec<Vec<u8>>) -> Pn532Reader<Script> {
        let target = TypeATarget { number: 1, atqa: [0, 4], sak: 0x20, uid: vec![8, 1, 2, 3], ats: vec![1] };
        let mut listed = vec![1];
        listed.extend(target.to_bytes());
        replies.insert(0, acked(code::IN_LIST_PASSIVE_TARGET, &listed));
        let mut reader = reader(replies);
        reader.find_card().expect("listed").expect("a card");
        reader
    }

    #[test]
    fn an_answer_whose_ack_was_lost_is_taken() {
        let mut reader = reader(vec![answer(code::GET_FIRMWARE_VERSION, &FIRMWARE)]);
        assert_eq!(reader.firmware_version().expect("firmware").ic, 0x32);
    }

    #[test]
    fn a_broken_answer_is_asked_for_again() {
        let mut broken = acked(code::GET_FIRMWARE_VERSION, &FIRMWARE);
        broken[12] ^= 0x01;
        let mut reader = reader(vec![broken, answer(code::GET_FIRMWARE_VERSION, &FIRMWARE)]);
        assert_eq!(reader.firmware_version().expect("firmware").version, 1);
        let port = reader.into_port();
        assert_eq!(port.written.len(), 2);
        assert_eq!(port.written[1], NACK);
    }

    #[test]
    fn without_ack_a_command_is_sent_three_times() {
        let mut reader = reader(vec![]);
        let outcome = reader.firmware_version();
        assert!(matches!(outcome, Err(ReaderError::Pn532(Pn532Error::NoAck { attempts: 3, .. }))), "{outcome:?}");
        assert_eq!(reader.into_port().written.len(), 3);
        // A second attempt that gets its ACK and answer succeeds.
        let mut reader = reader_with_second_try();
        assert_eq!(reader.firmware_version().expect("firmware").revision, 6);
    }

    fn reader_with_second_try() -> Pn532Reader<Script> {
        reader(vec![vec![], acked(code::GET_FIRMWARE_VERSION, &FIRMWARE)])
    }

    #[test]
    fn an_apdu_is_not_sent_again_once_something_came_back() {
        let mut reader = with_card(vec![vec![0x00, 0x00, 0xFF, 0x05, 0xFB, 0xD5, 0x41]]);
        let outcome = reader.transmit(&[0x80, 0x54, 0x01, 0x00, 0x0F]);
        assert!(matches!(outcome, Err(ReaderError::Pn532(Pn532Error::NoAck { attempts: 1, .. }))), "{outcome:?}");
        assert_eq!(reader.into_port().written.len(), 2, "InListPassiveTarget, one InDataExchange");
        // Nothing at all came back: the PN532 never took it, so it is sent again.
        let mut reader = with_card(vec![vec![], acked(code::IN_DATA_EXCHANGE, &[0x00, 0x90, 0x00])]);
        assert_eq!(reader.transmit(&[0x00, 0x84, 0x00, 0x00, 0x04]).expect("answer"), [0x90, 0x00]);
    }

    #[test]
    fn a_command_that_changes_the_card_is_never_sent_again() {
        let debit = [0x80, 0x54, 0x01, 0x00, 0x0F, 0, 0, 0, 7, 0x20, 0x26, 0x11, 0x25, 8, 0, 0, 1, 2, 3, 4, 0x08];
        // Nothing at all came back: the PN532 may still have run it.
        let mut reader = with_card(vec![vec![]]);
        let outcome = reader.transmit(&debit);
        assert!(
            matches!(&outcome, Err(ReaderError::Pn532(Pn532Error::OutcomeUnknown(lost)))
                if matches!(**lost, Pn532Error::NoAck { attempts: 1, .. })),
            "{outcome:?}"
        );
        assert!(outcome.expect_err("lost").to_string().contains("outcome is unknown"));
        assert_eq!(reader.into_port().written.len(), 2, "InListPassiveTarget, one InDataExchange");
        // Acknowledged, and the answer never came.
        let mut reader = with_card(vec![ACK.to_vec()]);
        let outcome = reader.transmit(&debit);
        assert!(
            matches!(&outcome, Err(ReaderError::Pn532(Pn532Error::OutcomeUnknown(lost)))
                if matches!(**lost, Pn532Error::NoAnswer { .. })),
            "{outcome:?}"
        );
        // A read chained in parts is not sent again either (the PN532 may hold a part).
        let mut reader = reader_chunked(vec![vec![]], 2);
        let outcome = reader.transmit(&[0x00, 0xB0, 0x95, 0x00, 0x1E]);
        assert!(matches!(outcome, Err(ReaderError::Pn532(Pn532Error::NoAck { attempts: 1, .. }))), "{outcome:?}");
    }

    fn reader_chunked(replies: Vec<Vec<u8>>, chunk_max: usize) -> Pn532Reader<Script> {
        let mut reader = with_card(replies);
        reader.options.chunk_max = chunk_max;
        reader
    }

    #[test]
    fn syntax_errors_other_chips_and_stray_frames() {
        let mut reader = reader(vec![[&ACK[..], &ERROR].concat()]);
        assert!(matches!(
            reader.firmware_version(),
            Err(ReaderError::Pn532(Pn532Error::SyntaxError { command: 0x02 }))
        ));
        let mut reader = reader_for(acked(code::GET_FIRMWARE_VERSION, &[0x33, 0x02, 0x01, 0x07]));
        assert!(matches!(reader.firmware_version(), Err(ReaderError::Pn532(Pn532Error::NotPn532(_)))));
        // A late answer to another command and noise before ours are skipped.
        let mut line = answer(code::IN_RELEASE, &[0x00]);
        line.extend([0x13, 0x00, 0xFF, 0x37]);
        line.extend(acked(code::GET_FIRMWARE_VERSION, &FIRMWARE));
        assert_eq!(reader_for(line).firmware_version().expect("firmware").support, 7);
    }

    use card_host::logs::captured as logs_of;

    /// The card's UID identifies it (a software card's UID is the last three
    /// bytes of its serial): the log of its activation does not carry it.
    #[test]
    fn an_activated_card_is_logged_without_its_uid() {
        let target = TypeATarget { number: 1, atqa: [0, 4], sak: 0x20, uid: vec![8, 0xC0, 0xFF, 0xEE], ats: vec![1] };
        let mut listed = vec![1];
        listed.extend(target.to_bytes());
        let logs = logs_of(|| {
            let mut reader = reader(vec![acked(code::IN_LIST_PASSIVE_TARGET, &listed)]);
            assert_eq!(reader.find_card().expect("listed").expect("a card").uid, target.uid);
        });
        assert!(logs.contains("card activated") && logs.contains("uid_bytes=4"), "{logs}");
        assert!(!logs.to_uppercase().contains("C0FFEE") && !logs.to_uppercase().contains("C0 FF EE"), "{logs}");
    }

    /// A late answer on the line may carry cardholder data (a READ RECORD's
    /// name, a PIN echoed by a broken chip): logged by code and length only.
    #[test]
    fn stray_frames_are_logged_without_their_data() {
        let secret = [0xC0, 0xFF, 0xEE, 0xC0, 0xFF, 0xEE, 0x90, 0x00];
        let mut line = answer(code::IN_DATA_EXCHANGE, &[[0x00].as_slice(), &secret].concat());
        line.extend(acked(code::GET_FIRMWARE_VERSION, &FIRMWARE));
        let logs = logs_of(|| {
            assert_eq!(reader_for(line).firmware_version().expect("firmware").ic, 0x32);
        });
        assert!(logs.contains("stray frame") && logs.contains("D5 41 (9 parameter bytes)"), "{logs}");
        assert!(!logs.to_uppercase().contains("C0FFEE") && !logs.to_uppercase().contains("C0 FF EE"), "{logs}");
    }

    fn reader_for(reply: Vec<u8>) -> Pn532Reader<Script> {
        reader(vec![reply])
    }

    #[test]
    fn statuses_of_a_gone_card_are_removals() {
        for status in [0x01, 0x27, 0x29, 0x2B] {
            let mut reader = with_card(vec![acked(code::IN_DATA_EXCHANGE, &[status])]);
            assert!(
                matches!(reader.transmit(&[0x00, 0xB0, 0x00, 0x00]), Err(ReaderError::CardRemoved)),
                "{status:02X}"
            );
            assert!(reader.target().is_none());
            assert!(matches!(reader.transmit(&[0x00, 0xB0, 0x00, 0x00]), Err(ReaderError::CardRemoved)));
        }
        let mut reader = with_card(vec![acked(code::IN_DATA_EXCHANGE, &[0x02])]);
        let outcome = reader.transmit(&[0x00, 0xB0, 0x00, 0x00]);
        assert!(matches!(outcome, Err(ReaderError::Pn532(Pn532Error::Status { status: Status::Crc, .. }))));
    }

    #[test]
    fn chained_answers_are_assembled_and_bounded() {
        let mut reader = with_card(vec![
            acked(code::IN_DATA_EXCHANGE, &[0x40, 1, 2]),
            acked(code::IN_DATA_EXCHANGE, &[0x40, 3]),
            acked(code::IN_DATA_EXCHANGE, &[0x00, 0x90, 0x00]),
        ]);
        assert_eq!(reader.transmit(&[0x00, 0xB0, 0x00, 0x00]).expect("answer"), [1, 2, 3, 0x90, 0x00]);
        let written = reader.into_port().written;
        assert_eq!(written[2], Information::command(code::IN_DATA_EXCHANGE, &[0x01]).expect("fits").to_bytes());
        let endless = vec![acked(code::IN_DATA_EXCHANGE, &[0x40, 0xAA]); RESPONSE_FRAMES_MAX + 2];
        let mut reader = with_card(endless);
        assert!(matches!(reader.transmit(&[0x00, 0xB0, 0x00, 0x00]), Err(ReaderError::ChainTooLong)));
    }
}

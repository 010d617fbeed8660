//! The bridge that puts a software card into pcscd's virtual reader, the
//! `vsmartcard-vpcd` driver.
//!
//! pcscd loads vpcd from `/etc/reader.conf.d/vpcd`; the driver listens on
//! 127.0.0.1:35963 for slot 0 and :35964 for slot 1, and a virtual card (here the
//! bridge) connects to it. Connecting is inserting the card; disconnecting is
//! pulling it out. Every message in both directions is a 2-byte big-endian length
//! and that many bytes. From the reader, a 1-byte message is a control: `00` power
//! off, `01` power on, `02` reset, `04` send the ATR; anything longer is a command
//! APDU. The card answers the ATR request with its ATR and each APDU with its
//! response APDU, and nothing else.
//!
//! Latency: each side of the socket sends one small message and waits for the
//! other, the pattern where Nagle's algorithm meets delayed ACKs and every round
//! trip costs ~40 ms. The bridge sets `TCP_NODELAY` and re-arms `TCP_QUICKACK`
//! (which Linux clears by itself) before every read.
//!
//! A [`Control`] lets another thread pull the card out, put it back, arm a tear
//! at a chosen APDU, or stop the bridge; the CLI maps signals onto it.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use crate::icc::SmartCard;

/// The shortest time a pulled card stays out. vpcd notices a card has gone only
/// when pcscd next polls the slot; a card back sooner is never seen to return.
pub const REMOVAL_TIME_MIN: Duration = Duration::from_millis(600);
/// vpcd's port for the reader's first slot (the citizen card).
pub const SLOT0_PORT: u16 = 35963;
/// vpcd's port for the reader's second slot (the PSAM).
pub const SLOT1_PORT: u16 = 35964;
/// The largest message the 2-byte length can announce.
pub const MESSAGE_LENGTH_MAX: usize = u16::MAX as usize;
/// The first wait before connecting again after vpcd refused or dropped us.
pub const RECONNECT_DELAY_MIN: Duration = Duration::from_millis(20);
/// The longest wait between two connection attempts.
pub const RECONNECT_DELAY_MAX: Duration = Duration::from_secs(1);

/// Why the bridge stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VpcdError {
    #[error("card response of {0} bytes does not fit a vpcd message")]
    ResponseTooLong(usize),
    #[error("vpcd connection: {0}")]
    Io(#[from] io::Error),
}

/// A message from the reader (vpcd) to the card.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReaderMessage {
    PowerOff,
    PowerOn,
    Reset,
    AtrRequest,
    /// A control byte this bridge does not know; answered with nothing.
    UnknownControl(u8),
    /// A command APDU (2 bytes or more), passed to the card as it came.
    Apdu(Vec<u8>),
}

impl ReaderMessage {
    /// Interprets one message body. A 0-byte body is not a message vpcd sends;
    /// it reads as an unknown control so that it is logged and answered with nothing.
    pub fn parse(body: &[u8]) -> ReaderMessage {
        match body {
            [] => ReaderMessage::UnknownControl(0xFF),
            [0x00] => ReaderMessage::PowerOff,
            [0x01] => ReaderMessage::PowerOn,
            [0x02] => ReaderMessage::Reset,
            [0x04] => ReaderMessage::AtrRequest,
            [other] => ReaderMessage::UnknownControl(*other),
            apdu => ReaderMessage::Apdu(apdu.to_vec()),
        }
    }
}

/// Where, within the card's handling of an APDU, a planned tear pulls the card.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TearPoint {
    /// The card leaves the field before the APDU reaches it: the card does nothing.
    BeforeCommand,
    /// The card executes the APDU (durably) and leaves before its answer is sent.
    AfterCommand,
}

/// A planned removal of the card at its `apdu`-th command APDU after the tear
/// was armed (1 = the next one). After a tear the card stays out until
/// [`Control::insert`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tear {
    pub apdu: u32,
    pub point: TearPoint,
}

#[derive(Debug)]
struct ControlState {
    inserted: bool,
    stopping: bool,
    connected: bool,
    /// A clone of the live socket, so another thread can cut it.
    stream: Option<TcpStream>,
    /// The armed tear and the APDUs seen since it was armed.
    tear: Option<(Tear, u32)>,
    /// How many times the card has been connected to the reader.
    insertions: u64,
}

/// Remote control of a running [`Bridge`], shared between threads.
#[derive(Debug)]
pub struct Control {
    state: Mutex<ControlState>,
    changed: Condvar,
}

impl Default for Control {
    fn default() -> Self {
        Control {
            state: Mutex::new(ControlState {
                inserted: true,
                stopping: false,
                connected: false,
                stream: None,
                tear: None,
                insertions: 0,
            }),
            changed: Condvar::new(),
        }
    }
}

impl Control {
    fn lock(&self) -> MutexGuard<'_, ControlState> {
        // A panic while holding this lock leaves plain flags behind: still usable.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn update(&self, change: impl FnOnce(&mut ControlState)) {
        let mut state = self.lock();
        change(&mut state);
        self.changed.notify_all();
    }

    fn cut(state: &mut ControlState) {
        if let Some(stream) = state.stream.take() {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// Pulls the card out of the reader (disconnects) until [`Control::insert`].
    pub fn remove(&self) {
        self.update(|state| {
            state.inserted = false;
            Self::cut(state);
        });
    }

    /// Puts the card (back) into the reader.
    pub fn insert(&self) {
        self.update(|state| state.inserted = true);
    }

    /// Arms a tear; it applies once, counting command APDUs from now on.
    pub fn tear_at(&self, tear: Tear) {
        self.update(|state| state.tear = Some((tear, 0)));
    }

    /// Stops the bridge: the card leaves the reader and [`Bridge::run`] returns.
    pub fn stop(&self) {
        self.update(|state| {
            state.stopping = true;
            Self::cut(state);
        });
    }

    /// Whether the card is connected to vpcd now.
    pub fn is_connected(&self) -> bool {
        self.lock().connected
    }

    /// How many times the card has been connected to the reader so far.
    pub fn insertions(&self) -> u64 {
        self.lock().insertions
    }

    /// Waits until the card is connected (`true`) or disconnected (`false`), at
    /// most `timeout`; returns whether that state was reached.
    pub fn wait_connected(&self, connected: bool, timeout: Duration) -> bool {
        let state = self.lock();
        let (state, _) = self
            .changed
            .wait_timeout_while(state, timeout, |state| state.connected != connected)
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        state.connected == connected
    }
}

/// How a connection to vpcd ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SessionEnd {
    /// The reader side closed or failed: pcscd stopped or restarted.
    ReaderGone,
    /// [`Control::remove`] or a planned tear pulled the card.
    Removed,
    Stopped,
}

/// A software card (or PSAM) connected to a vpcd slot.
pub struct Bridge<C: SmartCard> {
    card: C,
    address: SocketAddr,
    control: Arc<Control>,
}

impl<C: SmartCard> Bridge<C> {
    pub fn new(card: C, address: SocketAddr) -> Self {
        Bridge { card, address, control: Arc::new(Control::default()) }
    }

    /// The handle that removes, inserts, tears and stops this bridge.
    pub fn control(&self) -> Arc<Control> {
        Arc::clone(&self.control)
    }

    pub fn card(&self) -> &C {
        &self.card
    }

    pub fn into_card(self) -> C {
        self.card
    }

    /// Runs until [`Control::stop`]: connects while the card is inserted, serves
    /// the reader, and reconnects (with a capped backoff) when pcscd goes away.
    pub fn run(&mut self) -> Result<(), VpcdError> {
        let mut delay = RECONNECT_DELAY_MIN;
        let mut warned = false;
        loop {
            if !self.wait_until_inserted() {
                return Ok(());
            }
            let stream = match TcpStream::connect(self.address) {
                Ok(stream) => stream,
                Err(error) => {
                    if !warned {
                        tracing::warn!(address = %self.address, %error, "vpcd is not listening (is pcscd running with the vpcd driver?); retrying");
                        warned = true;
                    }
                    if self.sleep_unless_stopped(delay) {
                        return Ok(());
                    }
                    delay = (delay * 2).min(RECONNECT_DELAY_MAX);
                    continue;
                }
            };
            stream.set_nodelay(true)?;
            if !self.register(&stream)? {
                continue;
            }
            warned = false;
            delay = RECONNECT_DELAY_MIN;
            tracing::info!(address = %self.address, "card inserted into the vpcd reader");
            let end = self.serve(stream);
            self.card.power_off();
            self.control.update(|state| {
                state.connected = false;
                state.stream = None;
            });
            match end? {
                SessionEnd::Stopped => return Ok(()),
                SessionEnd::Removed => {
                    tracing::info!("card removed from the reader");
                    if self.sleep_unless_stopped(REMOVAL_TIME_MIN) {
                        return Ok(());
                    }
                }
                SessionEnd::ReaderGone => {
                    tracing::warn!("the reader closed the connection (pcscd stopped?); reconnecting");
                    if self.sleep_unless_stopped(delay) {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Blocks while the card is out; `false` when the bridge is stopping.
    fn wait_until_inserted(&self) -> bool {
        let state = self.control.lock();
        let state = self
            .control
            .changed
            .wait_while(state, |state| !state.inserted && !state.stopping)
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        !state.stopping
    }

    /// Sleeps `delay` or until stopped; `true` when stopping.
    fn sleep_unless_stopped(&self, delay: Duration) -> bool {
        let state = self.control.lock();
        let (state, _) = self
            .control
            .changed
            .wait_timeout_while(state, delay, |state| !state.stopping)
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        state.stopping
    }

    /// Publishes the live socket to the control, unless the card was pulled or the
    /// bridge stopped meanwhile (then the socket is dropped: `false`).
    fn register(&self, stream: &TcpStream) -> Result<bool, VpcdError> {
        let clone = stream.try_clone()?;
        let mut state = self.control.lock();
        if !state.inserted || state.stopping {
            return Ok(false);
        }
        state.stream = Some(clone);
        state.connected = true;
        state.insertions += 1;
        self.control.changed.notify_all();
        Ok(true)
    }

    /// Why the connection ended, from the control's point of view.
    fn end_reason(&self) -> SessionEnd {
        let state = self.control.lock();
        if state.stopping {
            SessionEnd::Stopped
        } else if !state.inserted {
            SessionEnd::Removed
        } else {
            SessionEnd::ReaderGone
        }
    }

    /// Counts one command APDU against the armed tear; takes the tear if it
    /// falls on this APDU.
    fn tear_now(&self) -> Option<TearPoint> {
        let mut state = self.control.lock();
        let (tear, seen) = state.tear.as_mut()?;
        *seen += 1;
        if *seen < tear.apdu {
            return None;
        }
        let point = tear.point;
        state.tear = None;
        state.inserted = false;
        Some(point)
    }

    fn serve(&mut self, mut stream: TcpStream) -> Result<SessionEnd, VpcdError> {
        let mut apdus: u32 = 0;
        let mut body = Vec::with_capacity(512);
        loop {
            let _ = socket2::SockRef::from(&stream).set_tcp_quickack(true);
            match read_message(&mut stream, &mut body) {
                Ok(true) => {}
                Ok(false) => return Ok(self.end_reason()),
                Err(error) => {
                    let end = self.end_reason();
                    if end == SessionEnd::ReaderGone {
                        tracing::debug!(%error, "vpcd read failed");
                    }
                    return Ok(end);
                }
            }
            let answer = match ReaderMessage::parse(&body) {
                ReaderMessage::PowerOff => {
                    self.card.power_off();
                    None
                }
                ReaderMessage::PowerOn => {
                    self.card.power_on();
                    None
                }
                ReaderMessage::Reset => {
                    self.card.reset();
                    None
                }
                ReaderMessage::AtrRequest => Some(self.card.atr()),
                ReaderMessage::UnknownControl(byte) => {
                    tracing::warn!(control = format_args!("{byte:02X}"), "unknown vpcd control message ignored");
                    None
                }
                ReaderMessage::Apdu(command) => {
                    apdus = apdus.saturating_add(1);
                    match self.tear_now() {
                        Some(TearPoint::BeforeCommand) => {
                            tracing::info!(apdu = apdus, "planned tear: card pulled before the command");
                            return Ok(SessionEnd::Removed);
                        }
                        Some(TearPoint::AfterCommand) => {
                            let _ = self.card.transmit(&command);
                            tracing::info!(
                                apdu = apdus,
                                "planned tear: card pulled after the command, before its answer"
                            );
                            return Ok(SessionEnd::Removed);
                        }
                        None => Some(self.card.transmit(&command)),
                    }
                }
            };
            if let Some(answer) = answer
                && let Err(error) = write_message(&mut stream, &answer)
            {
                let end = self.end_reason();
                if end == SessionEnd::ReaderGone {
                    if let VpcdError::Io(error) = &error {
                        tracing::debug!(%error, "vpcd write failed");
                    } else {
                        return Err(error);
                    }
                }
                return Ok(end);
            }
        }
    }
}

/// Reads one length-prefixed message into `body`. `Ok(false)` on a clean end of
/// stream before a new message.
fn read_message(stream: &mut impl Read, body: &mut Vec<u8>) -> io::Result<bool> {
    let mut length = [0u8; 2];
    let mut filled = 0;
    while filled < 2 {
        match stream.read(&mut length[filled..])? {
            0 if filled == 0 => return Ok(false),
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n => filled += n,
        }
    }
    body.clear();
    body.resize(usize::from(u16::from_be_bytes(length)), 0);
    stream.read_exact(body)?;
    Ok(true)
}

/// Writes one length-prefixed message in a single write.
fn write_message(stream: &mut impl Write, body: &[u8]) -> Result<(), VpcdError> {
    if body.len() > MESSAGE_LENGTH_MAX {
        return Err(VpcdError::ResponseTooLong(body.len()));
    }
    let mut message = Vec::with_capacity(2 + body.len());
    message.extend_from_slice(&(body.len() as u16).to_be_bytes());
    message.extend_from_slice(body);
    stream.write_all(&message)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_messages_parse() {
        assert_eq!(ReaderMessage::parse(&[0x00]), ReaderMessage::PowerOff);
        assert_eq!(ReaderMessage::parse(&[0x01]), ReaderMessage::PowerOn);
        assert_eq!(ReaderMessage::parse(&[0x02]), ReaderMessage::Reset);
        assert_eq!(ReaderMessage::parse(&[0x04]), ReaderMessage::AtrRequest);
        assert_eq!(ReaderMessage::parse(&[0x03]), ReaderMessage::UnknownControl(0x03));
        assert_eq!(ReaderMessage::parse(&[]), ReaderMessage::UnknownControl(0xFF));
        assert_eq!(ReaderMessage::parse(&[0x00, 0xA4]), ReaderMessage::Apdu(vec![0x00, 0xA4]));
    }

    #[test]
    fn messages_are_length_prefixed_both_ways() {
        let mut wire = Vec::new();
        write_message(&mut wire, &[0x90, 0x00]).expect("write");
        assert_eq!(wire, [0x00, 0x02, 0x90, 0x00]);
        let mut body = Vec::new();
        assert!(read_message(&mut wire.as_slice(), &mut body).expect("read"));
        assert_eq!(body, [0x90, 0x00]);
        // Clean end of stream, then a truncated length and a truncated body.
        assert!(!read_message(&mut [].as_slice(), &mut body).expect("eof"));
        assert!(read_message(&mut [0x00].as_slice(), &mut body).is_err());
        assert!(read_message(&mut [0x00, 0x03, 0x01].as_slice(), &mut body).is_err());
        assert!(matches!(
            write_message(&mut Vec::new(), &vec![0; MESSAGE_LENGTH_MAX + 1]),
            Err(VpcdError::ResponseTooLong(_))
        ));
    }

    /// A fake vpcd on loopback: the bridge connects, gets power on and an ATR
    /// request and an APDU; then the test pulls the card and puts it back.
    #[test]
    fn bridge_serves_a_reader_and_obeys_its_control() {
        struct Echo;
        impl SmartCard for Echo {
            fn atr(&self) -> Vec<u8> {
                vec![0x3B, 0x00]
            }
            fn power_on(&mut self) {}
            fn power_off(&mut self) {}
            fn transmit(&mut self, command: &[u8]) -> Vec<u8> {
                let mut answer = command.to_vec();
                answer.extend_from_slice(&[0x90, 0x00]);
                answer
            }
        }
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut bridge = Bridge::new(Echo, listener.local_addr().expect("address"));
        let control = bridge.control();
        let runner = std::thread::spawn(move || bridge.run());
        let exchange = |stream: &mut TcpStream, body: &[u8]| {
            write_message(stream, body).expect("send");
            let mut answer = Vec::new();
            assert!(read_message(stream, &mut answer).expect("answer"));
            answer
        };
        let (mut reader, _) = listener.accept().expect("card connects");
        write_message(&mut reader, &[0x01]).expect("power on");
        assert_eq!(exchange(&mut reader, &[0x04]), [0x3B, 0x00]);
        assert_eq!(exchange(&mut reader, &[0x00, 0x84, 0x00, 0x00, 0x04]), [0x00, 0x84, 0x00, 0x00, 0x04, 0x90, 0x00]);
        assert!(control.wait_connected(true, Duration::from_secs(5)));

        control.remove();
        assert!(control.wait_connected(false, Duration::from_secs(5)));
        let mut rest = Vec::new();
        assert!(!read_message(&mut reader, &mut rest).expect("closed"), "card gone: end of stream");

        control.insert();
        let (mut reader, _) = listener.accept().expect("card comes back");
        assert_eq!(exchange(&mut reader, &[0x00, 0xB0, 0x00, 0x00]).len(), 6);
        control.tear_at(Tear { apdu: 2, point: TearPoint::BeforeCommand });
        assert_eq!(exchange(&mut reader, &[0x00, 0xB0, 0x00, 0x00]).len(), 6);
        write_message(&mut reader, &[0x00, 0xB0, 0x00, 0x01]).expect("second APDU");
        assert!(!read_message(&mut reader, &mut rest).expect("torn"), "torn before the answer");
        assert!(control.wait_connected(false, Duration::from_secs(5)));
        assert_eq!(control.insertions(), 2);

        control.stop();
        runner.join().expect("bridge thread").expect("bridge ends cleanly");
    }
}

//! The kiosk's citizen-facing screen: a web page served on a loopback address
//! to the kiosk's own browser (a touch screen), in Chinese and English.
//!
//! One worker ([`Screen::run`], on the thread that calls it) owns the card
//! slot, the PSAM and the [`Kiosk`]: it watches the card come and go and
//! carries out what the page asks, one thing at a time. The HTTP handlers
//! never touch a card: they send a [`Request`] through a channel and wait for
//! the worker's answer; the page polls `GET /api/state` (a [`ScreenState`]
//! with a version number) to follow insertions and removals.
//!
//! | route | body | answer |
//! | --- | --- | --- |
//! | `GET /`, `/screen.css`, `/screen.js` | | the page (embedded; no CDN, no external font) |
//! | `GET /api/state` | | [`ScreenState`] |
//! | `POST /api/topup` | `{"amount_fen": 5000}` | [`ScreenState`] after the online top-up |
//! | `POST /api/bill` | `{"utility": "water", "account": "20261125", "amount_fen": 120}` | [`ScreenState`] with the receipt |
//! | `POST /api/name` | `{"pin": "123456"}` | [`ScreenState`] with the cardholder's name |
//! | `POST /api/dismiss` | `{}` | [`ScreenState`] without message or receipt |
//!
//! Amounts are integer fen on the wire. A body that is not a JSON object, a
//! missing, unknown or ill-typed field gets 400 or 422 with
//! `{"error": ..., "field": ...}` naming it; a request with no card in the
//! reader gets 409. Messages on the page never show internals: the error
//! itself goes to the log (card numbers masked, never the PIN).
//!
//! The truth after a card leaves during an operation comes from the journal
//! and the card: a failure before the journal's intent means nothing was
//! charged (or loaded); after it, the page asks for the same card again, and
//! the card's GET TRANSACTION PROVE decides ([`Kiosk::read`] settles it) what
//! the page then says.

use std::net::SocketAddr;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use card_host::card::CitizenCard;
use card_host::responses::TransactionRecord;
use card_host::status::StatusWord;
use card_host::{CardDateTime, Fen, TerminalNumber, TransactionType};
use serde::Serialize;
use serde_json::{Map, Value};
use tokio::sync::{oneshot, watch};
use zeroize::Zeroizing;

use crate::cardholder::SocialSecurity;
use crate::journal::Completed;
use crate::kiosk::{Bill, CardView, Kiosk, KioskError, Settled, TOPUP_FEN_MAX, Utility};
use crate::psam::PsamSession;
use crate::purse::Purse;
use crate::reader::{CardStation, Channel, InProcess, ReaderError};
use crate::session::{CardError, CardSession};
use crate::transaction::{Recovered, TransactionError};
use crate::upload::UploadError;

const INDEX_HTML: &str = include_str!("screen/index.html");
const SCREEN_CSS: &str = include_str!("screen/screen.css");
const SCREEN_JS: &str = include_str!("screen/screen.js");

/// How long the worker waits for a card, or for a request while a card is in,
/// before it looks at the slot again.
pub const SLOT_POLL: Duration = Duration::from_millis(150);
/// How long an operation waits for the card to connect.
pub const CONNECT_WAIT: Duration = Duration::from_millis(500);
/// How long the idle page keeps telling what happened to an operation the
/// card's removal interrupted.
pub const REMOVAL_MESSAGE_TIME: Duration = Duration::from_secs(120);
/// How often the worker looks at the blacklist file while no card is in.
pub const BLACKLIST_CHECK: Duration = Duration::from_secs(1);
/// The largest request body.
pub const REQUEST_BYTES_MAX: usize = 4 * 1024;
/// Transactions the card page lists (the card keeps 10).
pub const RECENT_SHOWN: usize = 10;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScreenError {
    #[error("screen: listen on {address}: {source}")]
    Listen { address: SocketAddr, source: std::io::Error },
    #[error("screen: runtime: {0}")]
    Runtime(std::io::Error),
}

/// What the page shows; `GET /api/state`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ScreenState {
    /// Grows with every change, so the page redraws only when something changed.
    pub version: u64,
    pub phase: Phase,
    pub card: Option<CardShown>,
    pub message: Option<Message>,
    /// The last receipt (a bill or a top-up), until dismissed or the card leaves.
    pub receipt: Option<Receipt>,
    /// The top-up buttons, in fen.
    pub topup_amounts_fen: Vec<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// No card: "please insert your citizen card".
    Idle,
    /// A card came; it is being read (and what it left open settled).
    Reading,
    /// A card is in and shown.
    Card,
    /// An operation runs: the card must stay in.
    Busy,
}

/// The card as the page shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CardShown {
    /// The masked card number.
    pub card: String,
    pub card_type: u8,
    pub card_type_zh: &'static str,
    pub card_type_en: &'static str,
    /// The cardholder's name, once the PIN was given (the card gives it only
    /// after VERIFY: `docs/card.md`, SSSE EF06).
    pub name: Option<String>,
    pub balance_fen: u32,
    /// Newest first.
    pub recent: Vec<RecentShown>,
    /// False for a blacklisted card: no top-up, no payment.
    pub money_allowed: bool,
}

/// One of the card's last transactions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecentShown {
    pub number: u16,
    /// `load`, `purchase` or `transit`.
    pub kind: &'static str,
    pub amount_fen: u32,
    /// `YYYY-MM-DD hh:mm:ss` as the card keeps it.
    pub at: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Tone {
    Ok,
    Info,
    Error,
}

/// A message for the citizen, in both languages. `code` is stable (tests and
/// the page's styling use it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Message {
    pub tone: Tone,
    pub code: &'static str,
    pub zh: String,
    pub en: String,
    /// Kept on the idle page after the card leaves (what happened to an
    /// operation the removal interrupted).
    #[serde(skip)]
    pub keep_after_removal: bool,
}

impl Message {
    fn new(tone: Tone, code: &'static str, zh: impl Into<String>, en: impl Into<String>) -> Message {
        Message { tone, code, zh: zh.into(), en: en.into(), keep_after_removal: false }
    }

    fn kept(self) -> Message {
        Message { keep_after_removal: true, ..self }
    }
}

/// A receipt: lines of text as a receipt printer would print them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Receipt {
    pub lines: Vec<String>,
}

/// What the page asks the worker for.
#[derive(Debug)]
pub enum Request {
    TopUp {
        amount: Fen,
    },
    Bill(Bill),
    /// Show the cardholder's name: VERIFY with this PIN, then read EF06.
    Name {
        pin: Zeroizing<String>,
    },
    /// Clear the message and the receipt.
    Dismiss,
}

/// The worker's answer to a [`Request`].
#[derive(Debug)]
pub enum Answer {
    Done(Box<ScreenState>),
    NoCard,
}

enum Command {
    Request(Request, oneshot::Sender<Answer>),
    Stop,
}

/// What the HTTP side holds: the way to the worker and the state it publishes.
#[derive(Clone)]
pub struct ScreenHandle {
    commands: mpsc::Sender<Command>,
    state: watch::Receiver<ScreenState>,
}

impl ScreenHandle {
    /// What the page shows now.
    pub fn state(&self) -> ScreenState {
        self.state.borrow().clone()
    }

    /// Asks the worker; `None` if it has stopped.
    pub async fn ask(&self, request: Request) -> Option<Answer> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(Command::Request(request, reply)).ok()?;
        answer.await.ok()
    }

    /// Ends [`Screen::run`] once the request in hand is done.
    pub fn stop(&self) {
        let _ = self.commands.send(Command::Stop);
    }
}

/// [`CardStation::with_card`] with a result; `Err(NoCard)` if no card came
/// within [`CONNECT_WAIT`].
fn on_card<T>(station: &mut dyn CardStation, operation: impl FnOnce(&mut dyn Channel) -> T) -> Result<T, ReaderError> {
    crate::reader::with_card(station, CONNECT_WAIT, operation)?.ok_or(ReaderError::NoCard(CONNECT_WAIT))
}

struct InProcessCards {
    cards: Vec<InProcess<CitizenCard>>,
    presented: Option<usize>,
}

/// Card images served in-process as a [`CardStation`] (the demo without
/// readers, tests): one of them is in the slot at a time, [`InProcessSlot::present`] and
/// [`InProcessSlot::remove`] move them (from another thread: clones share the
/// slot).
#[derive(Clone)]
pub struct InProcessSlot {
    shared: Arc<(Mutex<InProcessCards>, Condvar)>,
}

impl InProcessSlot {
    pub fn new(cards: Vec<InProcess<CitizenCard>>, presented: Option<usize>) -> InProcessSlot {
        let presented = presented.filter(|n| *n < cards.len());
        InProcessSlot { shared: Arc::new((Mutex::new(InProcessCards { cards, presented }), Condvar::new())) }
    }

    fn lock(&self) -> MutexGuard<'_, InProcessCards> {
        self.shared.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Puts card `n` in the slot (taking out the one there); false if there is no such card.
    pub fn present(&self, n: usize) -> bool {
        let mut cards = self.lock();
        if n >= cards.cards.len() {
            return false;
        }
        cards.presented = Some(n);
        self.shared.1.notify_all();
        true
    }

    pub fn remove(&self) {
        self.lock().presented = None;
        self.shared.1.notify_all();
    }

    /// Runs `look` on card `n`'s in-process reader (tests read the image).
    pub fn inspect<T>(&self, n: usize, look: impl FnOnce(&InProcess<CitizenCard>) -> T) -> Option<T> {
        self.lock().cards.get(n).map(look)
    }
}

impl InProcessSlot {
    /// Waits at most `timeout` until a card is in the slot (`present`) or it is empty.
    fn wait(&self, present: bool, timeout: Duration) -> MutexGuard<'_, InProcessCards> {
        let cards = self.lock();
        let (cards, _) = self
            .shared
            .1
            .wait_timeout_while(cards, timeout, |cards| cards.presented.is_some() != present)
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        cards
    }
}

impl CardStation for InProcessSlot {
    fn with_card(
        &mut self,
        timeout: Duration,
        use_card: &mut dyn FnMut(&mut dyn Channel),
    ) -> Result<bool, ReaderError> {
        let mut cards = self.wait(true, timeout);
        let Some(n) = cards.presented else { return Ok(false) };
        let Some(card) = cards.cards.get_mut(n) else { return Ok(false) };
        use_card(card);
        Ok(true)
    }

    fn wait_empty(&mut self, timeout: Duration) -> Result<bool, ReaderError> {
        Ok(self.wait(false, timeout).presented.is_none())
    }
}

/// What the screen is configured with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScreenSettings {
    pub topup_amounts_fen: Vec<u32>,
    /// The kiosk's terminal number, printed on receipts.
    pub terminal: TerminalNumber,
    /// The blacklist file (`[blacklist] path`), read again by the worker when
    /// it changes while no card is in (the uploader rewrites it from clearing).
    pub blacklist: Option<std::path::PathBuf>,
}

/// The screen: its HTTP server running (on a runtime of its own), and the
/// worker's side, run by [`Screen::run`].
pub struct Screen {
    address: SocketAddr,
    handle: ScreenHandle,
    worker: Worker,
    runtime: tokio::runtime::Runtime,
}

impl Screen {
    /// Binds `address` and serves the page and its API from now on; the
    /// requests wait until [`Screen::run`] takes them.
    pub fn bind(
        address: SocketAddr,
        kiosk: Kiosk,
        settings: ScreenSettings,
        clock: Box<dyn Fn() -> CardDateTime + Send>,
    ) -> Result<Screen, ScreenError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("kiosk-screen")
            .enable_all()
            .build()
            .map_err(ScreenError::Runtime)?;
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(address))
            .map_err(|source| ScreenError::Listen { address, source })?;
        let address = listener.local_addr().map_err(|source| ScreenError::Listen { address, source })?;
        let (commands_in, commands) = mpsc::channel();
        let shown = ScreenState {
            version: 0,
            phase: Phase::Idle,
            card: None,
            message: None,
            receipt: None,
            topup_amounts_fen: settings.topup_amounts_fen.clone(),
        };
        let (state, state_out) = watch::channel(shown.clone());
        let handle = ScreenHandle { commands: commands_in, state: state_out };
        runtime.spawn(serve(listener, handle.clone()));
        let worker = Worker {
            kiosk,
            settings,
            clock,
            commands,
            state,
            shown,
            serial: None,
            message_until: None,
            blacklist_checked: None,
            blacklist_modified: None,
        };
        tracing::info!(%address, "kiosk screen served");
        Ok(Screen { address, handle, worker, runtime })
    }

    /// Where the page is served (the port the system gave for port 0).
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    pub fn handle(&self) -> ScreenHandle {
        self.handle.clone()
    }

    /// Runs the worker on this thread until [`ScreenHandle::stop`]: watches
    /// the slot and carries out the page's requests with `psam`.
    pub fn run(self, station: &mut dyn CardStation, psam: &mut PsamSession<'_>) -> Result<(), ScreenError> {
        let Screen { mut worker, runtime, handle, .. } = self;
        drop(handle);
        worker.run(station, psam);
        runtime.shutdown_timeout(Duration::from_secs(1));
        Ok(())
    }
}

/// The side that owns the card: one request at a time.
struct Worker {
    kiosk: Kiosk,
    settings: ScreenSettings,
    clock: Box<dyn Fn() -> CardDateTime + Send>,
    commands: mpsc::Receiver<Command>,
    state: watch::Sender<ScreenState>,
    shown: ScreenState,
    /// The card in the slot, for the blacklist.
    serial: Option<card_host::ApplicationSerial>,
    /// When the idle page drops the message of an operation the removal interrupted.
    message_until: Option<Instant>,
    /// When the blacklist file was last looked at, and its modification time then.
    blacklist_checked: Option<Instant>,
    blacklist_modified: Option<std::time::SystemTime>,
}

impl Worker {
    fn publish(&mut self) {
        self.shown.version += 1;
        self.state.send_replace(self.shown.clone());
    }

    fn run(&mut self, station: &mut dyn CardStation, psam: &mut PsamSession<'_>) {
        let mut present = false;
        loop {
            if !present {
                self.refresh_blacklist();
            }
            if present {
                match self.commands.recv_timeout(SLOT_POLL) {
                    Ok(Command::Request(request, reply)) => {
                        self.handle(station, psam, request);
                        let _ = reply.send(Answer::Done(Box::new(self.shown.clone())));
                    }
                    Ok(Command::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => return,
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                }
                match station.wait_empty(Duration::ZERO) {
                    Ok(true) => {
                        present = false;
                        self.removed();
                    }
                    Ok(false) => {}
                    Err(error) => tracing::warn!(%error, "card reader"),
                }
            } else {
                match station.with_card(SLOT_POLL, &mut |card| self.inserted(card)) {
                    Ok(true) => present = true,
                    Ok(false) => {}
                    Err(error) => {
                        tracing::warn!(%error, "card reader");
                        std::thread::sleep(SLOT_POLL);
                    }
                }
                loop {
                    match self.commands.try_recv() {
                        Ok(Command::Request(Request::Dismiss, reply)) => {
                            self.dismiss();
                            let _ = reply.send(Answer::Done(Box::new(self.shown.clone())));
                        }
                        Ok(Command::Request(_, reply)) => {
                            let _ = reply.send(Answer::NoCard);
                        }
                        Ok(Command::Stop) | Err(mpsc::TryRecvError::Disconnected) => return,
                        Err(mpsc::TryRecvError::Empty) => break,
                    }
                }
                self.expire_message();
            }
        }
    }

    /// Reads the blacklist file again if it changed (at most every
    /// [`BLACKLIST_CHECK`]); the kiosk keeps the newer version.
    fn refresh_blacklist(&mut self) {
        let Some(path) = &self.settings.blacklist else { return };
        if self.blacklist_checked.is_some_and(|at| at.elapsed() < BLACKLIST_CHECK) {
            return;
        }
        self.blacklist_checked = Some(Instant::now());
        let modified = std::fs::metadata(path).and_then(|metadata| metadata.modified()).ok();
        if modified.is_none() || modified == self.blacklist_modified {
            return;
        }
        self.blacklist_modified = modified;
        match crate::blacklist::Blacklist::load(path) {
            Ok(list) => {
                let version = list.version();
                if self.kiosk.update_blacklist(list) {
                    tracing::info!(version, "blacklist updated");
                }
            }
            Err(error) => tracing::error!(%error, "blacklist not read; keeping the one in use"),
        }
    }

    fn dismiss(&mut self) {
        self.shown.message = None;
        self.shown.receipt = None;
        self.publish();
    }

    fn removed(&mut self) {
        tracing::info!("card removed");
        self.shown.phase = Phase::Idle;
        self.shown.card = None;
        self.shown.receipt = None;
        self.serial = None;
        if self.shown.message.as_ref().is_some_and(|message| message.keep_after_removal) {
            self.message_until = Some(Instant::now() + REMOVAL_MESSAGE_TIME);
        } else {
            self.shown.message = None;
        }
        self.publish();
    }

    /// Takes an interrupted operation's message off the idle page once it
    /// has been shown for [`REMOVAL_MESSAGE_TIME`] (the next citizen's turn).
    fn expire_message(&mut self) {
        if self.message_until.is_some_and(|until| Instant::now() >= until) {
            self.message_until = None;
            if self.shown.phase == Phase::Idle && self.shown.message.is_some() {
                self.shown.message = None;
                self.publish();
            }
        }
    }

    /// A card came: read it (which settles what an earlier operation left open).
    fn inserted(&mut self, card: &mut dyn Channel) {
        self.shown.phase = Phase::Reading;
        self.message_until = None;
        self.shown.message = None;
        self.shown.receipt = None;
        self.publish();
        match self.kiosk.read(card) {
            Ok(view) => {
                let message = self.settlement_message(&view);
                self.show(view, None);
                if let Some((message, receipt)) = message {
                    self.shown.message = Some(message);
                    self.shown.receipt = receipt;
                } else if !self.shown.card.as_ref().is_some_and(|card| card.money_allowed) {
                    self.shown.message = Some(blacklisted());
                }
            }
            Err(error) => {
                tracing::warn!(%error, "card not read");
                self.shown.message = Some(unreadable(&error));
            }
        }
        self.shown.phase = Phase::Card;
        self.publish();
    }

    /// Shows `view`, keeping the name already read of the same card.
    fn show(&mut self, view: CardView, name: Option<String>) {
        let same = self.serial == Some(view.serial);
        let name =
            name.or_else(|| if same { self.shown.card.as_ref().and_then(|card| card.name.clone()) } else { None });
        let (card_type_zh, card_type_en) = card_type_names(view.card_type);
        self.serial = Some(view.serial);
        self.shown.card = Some(CardShown {
            card: view.card,
            card_type: view.card_type,
            card_type_zh,
            card_type_en,
            name,
            balance_fen: view.balance.0,
            recent: view.recent.iter().take(RECENT_SHOWN).map(recent).collect(),
            money_allowed: !self.kiosk.blacklist().contains(&view.serial),
        });
    }

    /// Reads the card again after an operation; what it settled, if anything.
    fn refresh(&mut self, station: &mut dyn CardStation) -> Option<(Message, Option<Receipt>)> {
        match on_card(station, |card| self.kiosk.read(card)) {
            Ok(Ok(view)) => {
                let settled = self.settlement_message(&view);
                self.show(view, None);
                settled
            }
            Ok(Err(error)) => {
                tracing::info!(%error, "card not read again after the operation");
                None
            }
            Err(error) => {
                tracing::info!(%error, "card gone after the operation");
                None
            }
        }
    }

    fn busy(&mut self, message: Message) {
        self.shown.phase = Phase::Busy;
        self.shown.message = Some(message);
        self.shown.receipt = None;
        self.publish();
    }

    fn handle(&mut self, station: &mut dyn CardStation, psam: &mut PsamSession<'_>, request: Request) {
        match request {
            Request::Dismiss => self.dismiss(),
            Request::TopUp { amount } => {
                self.busy(Message::new(
                    Tone::Info,
                    "busy",
                    "正在充值，请勿移走卡片…",
                    "Topping up — keep your card in the reader…",
                ));
                let (kiosk, shown) = (&self.kiosk, self.serial);
                let outcome = on_card(station, |card| {
                    if_shown(card, shown, |card| kiosk.top_up(card, amount).map_err(Failed::Kiosk))
                });
                let (message, receipt) = match outcome {
                    Ok(Ok(loaded)) => {
                        let receipt = self.load_receipt(&loaded.row.entry, loaded.balance);
                        (
                            Message::new(
                                Tone::Ok,
                                "topped_up",
                                format!("充值成功 {} 元，余额 {} 元", loaded.row.entry.amount, loaded.balance),
                                format!("Topped up {} yuan. Balance {} yuan", loaded.row.entry.amount, loaded.balance),
                            ),
                            Some(receipt),
                        )
                    }
                    Ok(Err(Failed::Kiosk(error))) => (self.failed(Operation::TopUp, &error), None),
                    Ok(Err(Failed::OtherCard)) => (other_card(), None),
                    Err(error) => (removed_before(Operation::TopUp, &error), None),
                };
                self.finish(station, message, receipt);
            }
            Request::Bill(bill) => {
                self.busy(Message::new(
                    Tone::Info,
                    "busy",
                    "正在缴费，请勿移走卡片…",
                    "Paying — keep your card in the reader…",
                ));
                let at = (self.clock)();
                let (kiosk, shown) = (&self.kiosk, self.serial);
                let outcome = on_card(station, |card| {
                    if_shown(card, shown, |card| kiosk.pay_bill(card, psam, &bill, at).map_err(Failed::Kiosk))
                });
                let (message, receipt) = match outcome {
                    Ok(Ok(paid)) => (bill_paid(&paid, false), Some(self.bill_receipt(&paid))),
                    Ok(Err(Failed::Kiosk(KioskError::Purchase(
                        TransactionError::Mac2Rejected { completed, .. }
                        | TransactionError::Mac2Unchecked { completed, .. },
                    )))) => {
                        // The card debited (its TAC goes to clearing): the bill is paid.
                        tracing::warn!(id = completed.id, "the card's MAC2 of a bill was not accepted by the PSAM");
                        (bill_paid(&completed, false), Some(self.bill_receipt(&completed)))
                    }
                    Ok(Err(Failed::Kiosk(error))) => (self.failed(Operation::Bill, &error), None),
                    Ok(Err(Failed::OtherCard)) => (other_card(), None),
                    Err(error) => (removed_before(Operation::Bill, &error), None),
                };
                self.finish(station, message, receipt);
            }
            Request::Name { pin } => {
                self.busy(Message::new(Tone::Info, "busy", "正在读取…", "Reading…"));
                let shown = self.serial;
                let outcome = on_card(station, |card| {
                    if_shown(card, shown, |card| {
                        let mut social_security = SocialSecurity::select(CardSession::new(card))?;
                        social_security.verify_pin(&pin)?;
                        Ok(social_security.cardholder()?)
                    })
                });
                let message = match outcome {
                    Ok(Ok(cardholder)) => {
                        if let Some(card) = &mut self.shown.card {
                            card.name = Some(cardholder.name);
                        }
                        None
                    }
                    Ok(Err(Failed::Kiosk(KioskError::Card(error)))) => Some(pin_refused(&error)),
                    Ok(Err(Failed::Kiosk(error))) => {
                        tracing::warn!(%error, "name not read");
                        Some(pin_refused_other())
                    }
                    Ok(Err(Failed::OtherCard)) => {
                        self.refresh(station);
                        Some(other_card())
                    }
                    Err(error) => {
                        tracing::info!(%error, "card gone before the PIN");
                        None
                    }
                };
                self.shown.message = message;
                self.shown.phase = Phase::Card;
                self.publish();
            }
        }
    }

    fn finish(&mut self, station: &mut dyn CardStation, message: Message, receipt: Option<Receipt>) {
        // Read again for the balance and the list; if the card is still here it
        // also settles at once what a lost answer left open.
        let settled = self.refresh(station);
        let (message, receipt) = settled.unwrap_or((message, receipt));
        self.shown.message = Some(message);
        self.shown.receipt = receipt;
        self.shown.phase = Phase::Card;
        self.publish();
    }

    /// The page's words for a failed operation (the error itself is logged).
    fn failed(&self, operation: Operation, error: &KioskError) -> Message {
        tracing::warn!(%error, ?operation, "kiosk operation failed");
        match error {
            KioskError::Blacklisted => blacklisted(),
            KioskError::Blocked => Message::new(
                Tone::Error,
                "blocked",
                "此卡已锁定，请到服务网点办理",
                "This card is blocked — please visit a service counter",
            ),
            KioskError::Amount { .. } | KioskError::Account => Message::new(
                Tone::Error,
                "invalid",
                "金额或户号无效，未扣款",
                "Amount or account number not accepted — nothing was charged",
            ),
            KioskError::Overflow | KioskError::LoadRefused { .. } => Message::new(
                Tone::Error,
                "load_refused",
                "卡片不能再充值这个金额，未充值，未扣款",
                "The card cannot take this amount — nothing was loaded or charged",
            ),
            KioskError::Clearing(UploadError::Refused { status: 403, .. }) => Message::new(
                Tone::Error,
                "topup_refused",
                "此卡不能充值，请到服务网点咨询",
                "This card cannot be topped up — please ask at a service counter",
            ),
            KioskError::Clearing(_) => Message::new(
                Tone::Error,
                "topup_unavailable",
                "暂时无法充值，未扣款，请稍后再试",
                "Top-up unavailable right now — nothing was charged. Please try again later",
            ),
            KioskError::LoadTorn { .. } => Message::new(
                Tone::Error,
                "card_removed_check",
                "卡已移走，充值结果待确认：请重新插入同一张卡查看是否到账",
                "Card removed during the top-up — insert the same card again to see whether it was loaded",
            )
            .kept(),
            KioskError::Purchase(TransactionError::Torn { .. }) => Message::new(
                Tone::Error,
                "card_removed_check",
                "卡已移走，缴费结果待确认：请重新插入同一张卡查看是否扣款",
                "Card removed during the payment — insert the same card again to see whether it was charged",
            )
            .kept(),
            KioskError::Purchase(TransactionError::Card(card)) | KioskError::Card(card)
                if card.status() == Some(StatusWord::InsufficientBalance) =>
            {
                Message::new(
                    Tone::Error,
                    "insufficient_balance",
                    "余额不足，未扣款",
                    "Insufficient balance — nothing was charged",
                )
            }
            KioskError::Purchase(TransactionError::Card(card)) | KioskError::Card(card) if card.is_card_removed() => {
                removed_nothing_done(operation)
            }
            KioskError::Purchase(TransactionError::Refused { .. }) => Message::new(
                Tone::Error,
                "payment_refused",
                "卡片拒绝扣款，未扣款",
                "The card refused the payment — nothing was charged",
            ),
            _ => Message::new(
                Tone::Error,
                "not_done",
                "操作未完成，请稍后再试",
                "The operation could not be completed — please try again",
            ),
        }
    }

    /// What the card settled of an interrupted operation, in the page's words.
    fn settlement_message(&self, view: &CardView) -> Option<(Message, Option<Receipt>)> {
        if let Some(settled) = view.settled.purchases.last() {
            return Some(match settled {
                Recovered::Completed(paid) => (bill_paid(paid, true), Some(self.bill_receipt(paid))),
                Recovered::Voided(voided) => (
                    Message::new(
                        Tone::Info,
                        "interrupted_not_charged",
                        format!("上次中断的缴费 {} 元未扣款", voided.entry.amount),
                        format!(
                            "Your interrupted payment of {} yuan was not charged — nothing was taken",
                            voided.entry.amount
                        ),
                    ),
                    None,
                ),
            });
        }
        view.settled.loads.last().map(|settled| match settled {
            Settled::Completed { row, .. } => {
                let balance = Fen(row.entry.balance_before.0.saturating_add(row.entry.amount.0));
                (
                    Message::new(
                        Tone::Ok,
                        "interrupted_loaded",
                        format!("上次中断的充值 {} 元已到账", row.entry.amount),
                        format!("Your interrupted top-up of {} yuan reached the card", row.entry.amount),
                    ),
                    Some(self.load_receipt(&row.entry, balance)),
                )
            }
            Settled::Voided(row) => (
                Message::new(
                    Tone::Info,
                    "interrupted_not_loaded",
                    format!("上次中断的充值 {} 元未到账，未扣款", row.entry.amount),
                    format!(
                        "Your interrupted top-up of {} yuan did not reach the card — nothing was charged",
                        row.entry.amount
                    ),
                ),
                None,
            ),
        })
    }

    fn receipt_head(&self, title_zh: &str, title_en: &str, card: &card_host::ApplicationSerial) -> Vec<String> {
        let card = card.masked();
        vec![
            "市民卡自助终端 Citizen Card Kiosk".to_owned(),
            format!("{title_zh} {title_en}"),
            format!("终端 Terminal: {}", self.settings.terminal),
            format!("卡号 Card: {card}"),
        ]
    }

    fn bill_receipt(&self, paid: &Completed) -> Receipt {
        let reference = paid.entry.reference.clone().unwrap_or_default();
        let (utility, account) = reference.split_once(':').unwrap_or(("", reference.as_str()));
        let (utility_zh, utility_en) = match Utility::parse(utility) {
            Some(utility) => utility_names(utility),
            None => ("缴费", "Bill"),
        };
        let after = Fen(paid.entry.balance_before.0.saturating_sub(paid.entry.amount.0));
        let mut lines = self.receipt_head("缴费凭条", "Bill payment receipt", &paid.entry.card);
        lines.extend([
            format!("项目 Bill: {utility_zh} {utility_en}"),
            format!("户号 Account: {account}"),
            format!("金额 Amount: ¥{}", paid.entry.amount),
            format!("余额 Balance: ¥{after}"),
            format!("交易号 Transaction: {}", paid.entry.transaction_number()),
            format!("时间 Time: {}", paid.entry.at),
        ]);
        Receipt { lines }
    }

    fn load_receipt(&self, entry: &crate::journal::LoadEntry, balance: Fen) -> Receipt {
        let mut lines = self.receipt_head("充值凭条", "Top-up receipt", &entry.card);
        lines.extend([
            format!("金额 Amount: ¥{}", entry.amount),
            format!("余额 Balance: ¥{balance}"),
            format!("交易号 Transaction: {}", entry.transaction_number()),
            format!("时间 Time: {}", entry.at),
        ]);
        Receipt { lines }
    }
}

/// Why an operation the page asked for was not done.
#[derive(Debug)]
enum Failed {
    Kiosk(KioskError),
    /// Another card than the one the page shows is in the reader (swapped
    /// between two looks at the reader): nothing was done to it.
    OtherCard,
}

impl From<CardError> for Failed {
    fn from(error: CardError) -> Failed {
        Failed::Kiosk(KioskError::Card(error))
    }
}

/// Runs `operation` on `card` only if it is the card the page shows (its
/// serial read first: SELECT and READ BINARY of the purse).
fn if_shown<T>(
    card: &mut dyn Channel,
    shown: Option<card_host::ApplicationSerial>,
    operation: impl FnOnce(&mut dyn Channel) -> Result<T, Failed>,
) -> Result<T, Failed> {
    let serial = Purse::select(CardSession::new(&mut *card))?.public_information().application_serial;
    if Some(serial) != shown {
        tracing::warn!(card = %serial.masked(), "another card than the one shown; nothing done");
        return Err(Failed::OtherCard);
    }
    operation(card)
}

fn other_card() -> Message {
    Message::new(
        Tone::Error,
        "other_card",
        "读卡器中的卡已更换，未扣款，请重新操作",
        "A different card is in the reader — nothing was charged. Please start again",
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operation {
    TopUp,
    Bill,
}

fn removed_nothing_done(operation: Operation) -> Message {
    match operation {
        Operation::TopUp => Message::new(
            Tone::Error,
            "card_removed_nothing_charged",
            "卡已移走，未充值，未扣款",
            "Card removed — nothing was loaded or charged",
        ),
        Operation::Bill => Message::new(
            Tone::Error,
            "card_removed_nothing_charged",
            "卡已移走，未扣款",
            "Card removed — nothing was charged",
        ),
    }
    .kept()
}

/// The card was gone before the operation reached it.
fn removed_before(operation: Operation, error: &ReaderError) -> Message {
    tracing::info!(%error, ?operation, "no card for the operation");
    removed_nothing_done(operation)
}

fn bill_paid(paid: &Completed, interrupted: bool) -> Message {
    let amount = paid.entry.amount;
    let after = Fen(paid.entry.balance_before.0.saturating_sub(amount.0));
    if interrupted {
        Message::new(
            Tone::Ok,
            "interrupted_charged",
            format!("上次中断的缴费已扣款 {amount} 元，账单已缴清，余额 {after} 元"),
            format!(
                "Your interrupted payment went through: {amount} yuan was charged and the bill is paid. Balance {after} yuan"
            ),
        )
    } else {
        Message::new(
            Tone::Ok,
            "bill_paid",
            format!("缴费成功 {amount} 元，余额 {after} 元"),
            format!("Bill paid: {amount} yuan. Balance {after} yuan"),
        )
    }
}

fn blacklisted() -> Message {
    Message::new(
        Tone::Error,
        "blacklisted",
        "此卡已挂失或停用，不能充值或缴费",
        "This card is reported lost or replaced — no top-up or payment",
    )
}

fn unreadable(error: &KioskError) -> Message {
    match error {
        KioskError::Blocked => Message::new(
            Tone::Error,
            "blocked",
            "此卡已锁定，请到服务网点办理",
            "This card is blocked — please visit a service counter",
        ),
        _ => Message::new(
            Tone::Error,
            "unreadable",
            "无法读取此卡，请取出后重新插入",
            "This card could not be read — take it out and insert it again",
        ),
    }
}

fn pin_refused(error: &CardError) -> Message {
    tracing::info!(status = ?error.status(), "PIN not accepted");
    match error.status() {
        Some(StatusWord::PinTriesLeft(left)) => Message::new(
            Tone::Error,
            "wrong_pin",
            format!("密码错误，还可尝试 {left} 次"),
            format!("Wrong PIN — {left} tries left"),
        ),
        Some(StatusWord::AuthenticationBlocked) => Message::new(
            Tone::Error,
            "pin_blocked",
            "密码已锁定，请到服务网点办理",
            "PIN blocked — please visit a service counter",
        ),
        _ => pin_refused_other(),
    }
}

fn pin_refused_other() -> Message {
    Message::new(Tone::Error, "name_unavailable", "暂时无法显示姓名", "The name cannot be shown right now")
}

fn card_type_names(code: u8) -> (&'static str, &'static str) {
    match card_host::card::CardType::from_code(code) {
        Some(card_host::card::CardType::Ordinary) => ("普通卡", "Ordinary"),
        Some(card_host::card::CardType::Student) => ("学生卡", "Student"),
        Some(card_host::card::CardType::Senior) => ("老年卡", "Senior"),
        Some(card_host::card::CardType::Disabled) => ("残疾人卡", "Disabled"),
        Some(card_host::card::CardType::Staff) => ("员工卡", "Staff"),
        _ => ("市民卡", "Citizen card"),
    }
}

fn utility_names(utility: Utility) -> (&'static str, &'static str) {
    match utility {
        Utility::Water => ("水费", "Water"),
        Utility::Electricity => ("电费", "Electricity"),
        Utility::Gas => ("燃气费", "Gas"),
    }
}

fn recent(record: &TransactionRecord) -> RecentShown {
    let kind = match record.kind {
        TransactionType::PurseLoad | TransactionType::DepositLoad => "load",
        TransactionType::CompoundPurchase => "transit",
        _ => "purchase",
    };
    RecentShown { number: record.number, kind, amount_fen: record.amount.0, at: record.at.to_string() }
}

/// An answer that is not the state: `{"error": ..., "field": ...}`.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
    field: Option<&'static str>,
}

impl ApiError {
    fn field(status: StatusCode, field: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into(), field: Some(field) }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({ "error": self.message });
        if let Some(field) = self.field {
            body["field"] = field.into();
        }
        (self.status, axum::Json(body)).into_response()
    }
}

/// A request body's fields, each checked by name.
struct Fields(Map<String, Value>);

impl Fields {
    /// A JSON object with no fields but `known`.
    fn parse(body: &[u8], known: &[&'static str]) -> Result<Fields, ApiError> {
        let not_object = || ApiError::field(StatusCode::BAD_REQUEST, "body", "the body must be a JSON object");
        let Value::Object(fields) = serde_json::from_slice::<Value>(body).map_err(|_| not_object())? else {
            return Err(not_object());
        };
        if let Some(unknown) = fields.keys().find(|name| !known.contains(&name.as_str())) {
            let message = format!("unknown field {unknown:?}; expected {}", known.join(", "));
            return Err(ApiError { status: StatusCode::UNPROCESSABLE_ENTITY, message, field: None });
        }
        Ok(Fields(fields))
    }

    fn get(&self, name: &'static str) -> Result<&Value, ApiError> {
        self.0
            .get(name)
            .ok_or_else(|| ApiError::field(StatusCode::UNPROCESSABLE_ENTITY, name, format!("{name}: missing")))
    }

    /// A whole number of fen from 1 to `max`.
    fn fen(&self, name: &'static str, max: u32) -> Result<Fen, ApiError> {
        self.get(name)?
            .as_u64()
            .and_then(|fen| u32::try_from(fen).ok())
            .filter(|fen| (1..=max).contains(fen))
            .map(Fen)
            .ok_or_else(|| {
                ApiError::field(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    name,
                    format!("{name}: a whole number of fen from 1 to {max}"),
                )
            })
    }

    fn text(&self, name: &'static str) -> Result<&str, ApiError> {
        self.get(name)?
            .as_str()
            .ok_or_else(|| ApiError::field(StatusCode::UNPROCESSABLE_ENTITY, name, format!("{name}: a string")))
    }

    /// A text field taken out of the body (a PIN: into a zeroized buffer, no copy left here).
    fn take_secret(&mut self, name: &'static str) -> Result<Zeroizing<String>, ApiError> {
        match self.0.remove(name) {
            Some(Value::String(text)) => Ok(Zeroizing::new(text)),
            Some(_) => Err(ApiError::field(StatusCode::UNPROCESSABLE_ENTITY, name, format!("{name}: a string"))),
            None => Err(ApiError::field(StatusCode::UNPROCESSABLE_ENTITY, name, format!("{name}: missing"))),
        }
    }
}

type ApiResult = Result<axum::Json<ScreenState>, ApiError>;

async fn ask(handle: &ScreenHandle, request: Request) -> ApiResult {
    match handle.ask(request).await {
        Some(Answer::Done(state)) => Ok(axum::Json(*state)),
        Some(Answer::NoCard) => {
            Err(ApiError { status: StatusCode::CONFLICT, message: "no card in the reader".into(), field: None })
        }
        None => Err(ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: "the kiosk is stopping".into(),
            field: None,
        }),
    }
}

async fn state(State(handle): State<ScreenHandle>) -> axum::Json<ScreenState> {
    axum::Json(handle.state())
}

async fn top_up(State(handle): State<ScreenHandle>, body: Bytes) -> ApiResult {
    let fields = Fields::parse(&body, &["amount_fen"])?;
    let amount = fields.fen("amount_fen", TOPUP_FEN_MAX)?;
    ask(&handle, Request::TopUp { amount }).await
}

async fn bill(State(handle): State<ScreenHandle>, body: Bytes) -> ApiResult {
    let fields = Fields::parse(&body, &["utility", "account", "amount_fen"])?;
    let utility = Utility::parse(fields.text("utility")?).ok_or_else(|| {
        ApiError::field(StatusCode::UNPROCESSABLE_ENTITY, "utility", "utility: water, electricity or gas")
    })?;
    let amount = fields.fen("amount_fen", crate::kiosk::BILL_FEN_MAX)?;
    let bill = Bill { utility, account: fields.text("account")?.to_owned(), amount };
    bill.reference()
        .map_err(|error| ApiError::field(StatusCode::UNPROCESSABLE_ENTITY, "account", error.to_string()))?;
    ask(&handle, Request::Bill(bill)).await
}

async fn name(State(handle): State<ScreenHandle>, body: Bytes) -> ApiResult {
    let body = Zeroizing::new(body.to_vec());
    let pin = Fields::parse(&body, &["pin"])?.take_secret("pin")?;
    if card_host::card::pin_from_digits(&pin).is_none() {
        return Err(ApiError::field(StatusCode::UNPROCESSABLE_ENTITY, "pin", "pin: 4 to 12 digits"));
    }
    ask(&handle, Request::Name { pin }).await
}

async fn dismiss(State(handle): State<ScreenHandle>, body: Bytes) -> ApiResult {
    if !body.is_empty() {
        Fields::parse(&body, &[])?;
    }
    ask(&handle, Request::Dismiss).await
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let headers = [
        (header::CONTENT_TYPE, content_type),
        (header::CACHE_CONTROL, "no-store"),
        (header::CONTENT_SECURITY_POLICY, "default-src 'self'; frame-ancestors 'none'"),
    ];
    (headers, body).into_response()
}

/// The page and its API.
pub fn router(handle: ScreenHandle) -> Router {
    Router::new()
        .route("/", get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }))
        .route("/screen.css", get(|| async { asset("text/css; charset=utf-8", SCREEN_CSS) }))
        .route("/screen.js", get(|| async { asset("text/javascript; charset=utf-8", SCREEN_JS) }))
        .route("/api/state", get(state))
        .route("/api/topup", post(top_up))
        .route("/api/bill", post(bill))
        .route("/api/name", post(name))
        .route("/api/dismiss", post(dismiss))
        .layer(DefaultBodyLimit::max(REQUEST_BYTES_MAX))
        .layer(axum::middleware::from_fn(guard))
        .with_state(handle)
}

/// Refuses what a page of another site could make the kiosk's browser send:
/// a `Host` other than a loopback name (DNS rebinding) gets 403, a POST whose
/// body is not declared JSON (a cross-site form needs no preflight) 415.
async fn guard(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let host = request.headers().get(header::HOST).and_then(|host| host.to_str().ok()).unwrap_or("");
    let name = host.rsplit_once(':').map_or(host, |(name, _port)| name);
    if !matches!(name, "127.0.0.1" | "localhost" | "[::1]") {
        return ApiError::field(StatusCode::FORBIDDEN, "Host", "Host: the screen answers on its loopback address only")
            .into_response();
    }
    let json = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|kind| kind.to_str().ok())
        .is_some_and(|kind| kind.trim_start().to_ascii_lowercase().starts_with("application/json"));
    if request.method() == axum::http::Method::POST && !json {
        return ApiError::field(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type",
            "Content-Type: application/json bodies only",
        )
        .into_response();
    }
    next.run(request).await
}

async fn serve(listener: tokio::net::TcpListener, handle: ScreenHandle) {
    if let Err(error) = axum::serve(listener, router(handle)).await {
        tracing::error!(%error, "kiosk screen server stopped");
    }
}

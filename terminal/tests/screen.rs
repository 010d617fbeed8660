//! The kiosk screen's HTTP API (`terminal::screen`) with in-process cards and
//! a real clearing server (SQLite, in-process HSM) on loopback: the state JSON
//! follows the card in and out, a top-up and a bill change the balance on the
//! card and the page, errors are the citizen's words, a card pulled during a
//! payment gets the truth from the card when it is back, and malformed bodies
//! get a 4xx naming the field.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use card_host::card::CitizenCard;
use card_host::vpcd::TearPoint;
use card_host::{CardDateTime, Fen, TerminalNumber};
use serde_json::{Value, json};
use system_tests::clearing::Clearing;
use system_tests::{issue_card, issue_psam};
use terminal::blacklist::Blacklist;
use terminal::journal::Journal;
use terminal::kiosk::Kiosk;
use terminal::psam::PsamSession;
use terminal::reader::{CardStation, Channel, InProcess};
use terminal::screen::{InProcessSlot, Screen, ScreenHandle, ScreenSettings};
use terminal::upload::{ClearingClient, DeviceKey, RetryPolicy};
use terminal::{CardSession, ReaderError};

/// The fixture shop terminal: the kiosk.
const SHOP: TerminalNumber = TerminalNumber([0x31, 0x00, 0x00, 0x00, 0x09, 0x02]);
/// How long the test waits for the page's state to change.
const STATE_WAIT: Duration = Duration::from_secs(15);

fn shop_client(url: &str) -> ClearingClient {
    let key = DeviceKey::load(&card_host::issue::fixtures::directory().join("terminals/device-0902.key")).expect("key");
    let retry =
        RetryPolicy { attempts: 2, backoff_initial: Duration::from_millis(5), backoff_max: Duration::from_millis(20) };
    ClearingClient::new(url, SHOP, key, retry)
}

/// A screen served on a fresh port, its worker on a thread of its own.
struct Served {
    address: SocketAddr,
    handle: ScreenHandle,
    worker: Option<JoinHandle<()>>,
    agent: ureq::Agent,
    _directory: tempfile::TempDir,
}

impl Served {
    /// With `blacklist`, the blacklist file the worker reads (and reads again when it changes).
    fn start(station: impl CardStation + Send + 'static, clearing_url: &str, blacklist: Option<&Path>) -> Served {
        let directory = tempfile::tempdir().expect("temp dir");
        let journal = Journal::open(&directory.path().join("kiosk.sqlite")).expect("journal");
        let kiosk = Kiosk::new(journal, shop_client(clearing_url));
        let settings = ScreenSettings {
            topup_amounts_fen: vec![1_000, 2_000, 5_000, 10_000],
            terminal: SHOP,
            blacklist: blacklist.map(Path::to_path_buf),
        };
        let screen =
            Screen::bind("127.0.0.1:0".parse().expect("address"), kiosk, settings, Box::new(CardDateTime::now_utc))
                .expect("bind the screen");
        let (address, handle) = (screen.address(), screen.handle());
        let psam = issue_psam(directory.path(), SHOP).1;
        let worker = std::thread::spawn(move || {
            let mut station = station;
            let mut psam_reader = InProcess::new(psam);
            let mut psam = PsamSession::open(CardSession::new(&mut psam_reader)).expect("PSAM");
            screen.run(&mut station, &mut psam).expect("screen worker");
        });
        let agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        Served { address, handle, worker: Some(worker), agent, _directory: directory }
    }

    fn get(&self, path: &str) -> (u16, String) {
        let mut response = self.agent.get(&format!("http://{}{path}", self.address)).call().expect("GET");
        (response.status().as_u16(), response.body_mut().read_to_string().expect("body"))
    }

    fn post(&self, path: &str, body: &str) -> (u16, Value) {
        let mut response = self
            .agent
            .post(&format!("http://{}{path}", self.address))
            .header("Content-Type", "application/json")
            .send(body)
            .expect("POST");
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().expect("body");
        (status, serde_json::from_str(&text).unwrap_or_else(|_| panic!("{path}: not JSON: {text}")))
    }

    fn post_ok(&self, path: &str, body: Value) -> Value {
        let (status, state) = self.post(path, &body.to_string());
        assert_eq!(status, 200, "{path} {body}: {state}");
        state
    }

    fn state(&self) -> Value {
        let (status, text) = self.get("/api/state");
        assert_eq!(status, 200, "{text}");
        serde_json::from_str(&text).expect("state JSON")
    }

    /// The state once `ready` holds for it.
    fn wait_for(&self, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + STATE_WAIT;
        loop {
            let state = self.state();
            if ready(&state) {
                return state;
            }
            assert!(Instant::now() < deadline, "the screen never showed {what}: {state}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait_phase(&self, phase: &str) -> Value {
        self.wait_for(phase, |state| state["phase"] == phase)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.handle.stop();
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

fn message_code(state: &Value) -> &str {
    state["message"]["code"].as_str().unwrap_or("")
}

fn balance(state: &Value) -> u64 {
    state["card"]["balance_fen"].as_u64().expect("a card with a balance")
}

fn card_balance(slot: &InProcessSlot) -> Fen {
    slot.inspect(0, |reader| reader.card().image().purse.balance).expect("card 0")
}

#[test]
fn the_state_follows_the_card_and_top_up_bill_and_pin_work() {
    let clearing = Clearing::start();
    let (clearing_address, _server) = clearing.serve();
    let directory = tempfile::tempdir().expect("temp dir");
    let opening = Fen(1_000);
    let (_, card) = issue_card(directory.path(), 0, opening);
    let mut reader = InProcess::new(card);
    let serial = clearing.register(&mut reader, opening);
    let other = tempfile::tempdir().expect("temp dir");
    let (_, other_card) = issue_card(other.path(), 1, Fen(500));
    let slot = InProcessSlot::new(vec![reader, InProcess::new(other_card)], None);
    let served = Served::start(slot.clone(), &format!("http://{clearing_address}"), None);

    // The page itself: embedded, both languages, no outside resources.
    let (status, page) = served.get("/");
    assert_eq!(status, 200);
    assert!(page.contains("请插入市民卡") && page.contains("Please insert your citizen card"), "{page}");
    assert!(!page.contains("http://") && !page.contains("https://"), "no external resources");
    assert_eq!(served.get("/screen.js").0, 200);
    assert_eq!(served.get("/screen.css").0, 200);

    let idle = served.wait_phase("idle");
    assert!(idle["card"].is_null() && idle["message"].is_null(), "{idle}");
    assert_eq!(idle["topup_amounts_fen"], json!([1_000, 2_000, 5_000, 10_000]));
    let (status, refused) = served.post("/api/topup", r#"{"amount_fen": 1000}"#);
    assert_eq!(status, 409, "no card: {refused}");

    // The card comes: masked number, type, balance; the name needs the PIN.
    assert!(slot.present(0));
    let shown = served.wait_phase("card");
    let card = &shown["card"];
    assert_eq!(card["card"], serial.masked());
    assert_eq!((card["card_type_zh"].as_str(), card["card_type_en"].as_str()), (Some("普通卡"), Some("Ordinary")));
    assert!(card["name"].is_null(), "the name is behind the PIN: {card}");
    assert_eq!(balance(&shown), 1_000);
    assert_eq!(card["money_allowed"], true);

    let wrong = served.post_ok("/api/name", json!({ "pin": "000000" }));
    assert_eq!(message_code(&wrong), "wrong_pin", "{wrong}");
    assert!(wrong["card"]["name"].is_null());
    let named = served.post_ok("/api/name", json!({ "pin": "123456" }));
    assert_eq!(named["card"]["name"], "张伟", "{named}");
    assert!(named["message"].is_null(), "{named}");

    // Top up 50 yuan through clearing.
    let loaded = served.post_ok("/api/topup", json!({ "amount_fen": 5_000 }));
    assert_eq!(message_code(&loaded), "topped_up", "{loaded}");
    assert_eq!(balance(&loaded), 6_000);
    assert_eq!(card_balance(&slot), Fen(6_000));
    assert_eq!(clearing.count("SELECT COUNT(*) FROM topups WHERE state = 'confirmed' AND amount_fen = 5000"), 1);
    assert_eq!(loaded["card"]["recent"][0]["kind"], "load");
    assert_eq!(loaded["card"]["recent"][0]["amount_fen"], 5_000);
    assert_eq!(loaded["card"]["name"], "张伟", "the name stays while the card is in");
    let receipt = loaded["receipt"]["lines"].to_string();
    assert!(receipt.contains("¥50.00") && receipt.contains("¥60.00"), "{receipt}");

    // A water bill: a receipt with the account, the balance down by the amount.
    let paid = served.post_ok("/api/bill", json!({ "utility": "water", "account": "20261125", "amount_fen": 1_234 }));
    assert_eq!(message_code(&paid), "bill_paid", "{paid}");
    assert_eq!(balance(&paid), 6_000 - 1_234);
    assert_eq!(card_balance(&slot), Fen(6_000 - 1_234));
    let receipt = paid["receipt"]["lines"].to_string();
    for expected in ["水费 Water", "20261125", "¥12.34", "¥47.66", "310000000902", &serial.masked()] {
        assert!(receipt.contains(expected), "{expected} in {receipt}");
    }
    assert_eq!(paid["card"]["recent"][0]["kind"], "purchase");

    // More than the balance: refused by the card, nothing charged.
    let refused = served.post_ok("/api/bill", json!({ "utility": "gas", "account": "G-1", "amount_fen": 100_000 }));
    assert_eq!(message_code(&refused), "insufficient_balance", "{refused}");
    assert_eq!(card_balance(&slot), Fen(6_000 - 1_234));

    // Another card put in between two looks at the reader: nothing is done to
    // it, and the page shows it.
    assert!(slot.present(1));
    let swapped = served.post_ok("/api/topup", json!({ "amount_fen": 1_000 }));
    assert_eq!(message_code(&swapped), "other_card", "{swapped}");
    assert_eq!(balance(&swapped), 500, "the other card is shown now: {swapped}");
    assert!(swapped["card"]["name"].is_null(), "the first card's name is not kept: {swapped}");
    assert_eq!(slot.inspect(1, |reader| reader.card().image().purse.balance), Some(Fen(500)));
    slot.remove();
    served.wait_phase("idle");
    assert!(slot.present(0));
    served.wait_for("the first card again", |state| state["card"]["balance_fen"] == 6_000 - 1_234);

    let dismissed = served.post_ok("/api/dismiss", json!({}));
    assert!(dismissed["message"].is_null() && dismissed["receipt"].is_null(), "{dismissed}");

    // The card leaves: idle, nothing of it kept on the page.
    slot.remove();
    let idle = served.wait_phase("idle");
    assert!(idle["card"].is_null() && idle["message"].is_null(), "{idle}");
    assert!(idle["version"].as_u64() > dismissed["version"].as_u64());
}

#[test]
fn malformed_bodies_get_a_4xx_naming_the_field() {
    let directory = tempfile::tempdir().expect("temp dir");
    let (_, card) = issue_card(directory.path(), 0, Fen(1_000));
    let slot = InProcessSlot::new(vec![InProcess::new(card)], Some(0));
    // No clearing is needed: nothing here reaches the worker.
    let served = Served::start(slot, "http://127.0.0.1:9", None);
    let cases: &[(&str, &str, u16, &str)] = &[
        ("/api/topup", "not json", 400, "body"),
        ("/api/topup", "[5000]", 400, "body"),
        ("/api/topup", "{}", 422, "amount_fen"),
        ("/api/topup", r#"{"amount_fen": "5000"}"#, 422, "amount_fen"),
        ("/api/topup", r#"{"amount_fen": 50.5}"#, 422, "amount_fen"),
        ("/api/topup", r#"{"amount_fen": 0}"#, 422, "amount_fen"),
        ("/api/topup", r#"{"amount_fen": -100}"#, 422, "amount_fen"),
        ("/api/topup", r#"{"amount_fen": 100001}"#, 422, "amount_fen"),
        ("/api/bill", r#"{"utility": "coal", "account": "1", "amount_fen": 100}"#, 422, "utility"),
        ("/api/bill", r#"{"utility": "gas", "account": "no spaces", "amount_fen": 100}"#, 422, "account"),
        ("/api/bill", r#"{"utility": "gas", "account": 42, "amount_fen": 100}"#, 422, "account"),
        ("/api/bill", r#"{"utility": "gas", "amount_fen": 100}"#, 422, "account"),
        ("/api/bill", r#"{"utility": "gas", "account": "G-1"}"#, 422, "amount_fen"),
        ("/api/name", r#"{"pin": "12ab"}"#, 422, "pin"),
        ("/api/name", r#"{"pin": 123456}"#, 422, "pin"),
        ("/api/name", r#"{"pin": "123"}"#, 422, "pin"),
    ];
    for (path, body, status, field) in cases {
        let (got, answer) = served.post(path, body);
        assert_eq!((got, answer["field"].as_str()), (*status, Some(*field)), "{path} {body}: {answer}");
        assert!(answer["error"].as_str().is_some_and(|error| error.contains(field)), "{path} {body}: {answer}");
    }
    let (status, answer) = served.post("/api/topup", r#"{"amount_fen": 100, "currency": "USD"}"#);
    assert_eq!(status, 422);
    assert!(answer["error"].as_str().is_some_and(|error| error.contains("currency")), "{answer}");
    let mut response = served
        .agent
        .post(&format!("http://{}/api/bill", served.address))
        .header("Content-Type", "application/json")
        .send(&vec![b' '; 64 * 1024][..])
        .expect("POST");
    assert_eq!(response.status().as_u16(), 413, "{:?}", response.body_mut().read_to_string());
    // What another site could make the kiosk's browser send: a form's body
    // (no preflight) and a rebound host name.
    let mut response = served
        .agent
        .post(&format!("http://{}/api/topup", served.address))
        .header("Content-Type", "text/plain")
        .send(r#"{"amount_fen": 100}"#)
        .expect("POST");
    let answer = response.body_mut().read_to_string().expect("body");
    assert_eq!(response.status().as_u16(), 415, "{answer}");
    assert!(answer.contains("Content-Type"), "{answer}");
    let mut response = served
        .agent
        .get(&format!("http://{}/api/state", served.address))
        .header("Host", "kiosk.attacker.example")
        .call()
        .expect("GET");
    let answer = response.body_mut().read_to_string().expect("body");
    assert_eq!(response.status().as_u16(), 403, "{answer}");
    assert!(answer.contains("\"field\":\"Host\""), "{answer}");
    // Nothing reached the card.
    assert_eq!(served.wait_phase("card")["card"]["balance_fen"], 1_000);
}

#[test]
fn clearing_unreachable_and_a_blacklisted_card_are_told_plainly() {
    let directory = tempfile::tempdir().expect("temp dir");
    let (_, card) = issue_card(directory.path(), 0, Fen(1_000));
    let mut reader = InProcess::new(card);
    let (serial, _) = system_tests::clearing::serial_and_type(&mut reader);
    let slot = InProcessSlot::new(vec![reader], Some(0));
    // A port nobody listens on: clearing is down.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("address");
    let blacklist = directory.path().join("blacklist.toml");
    let served = Served::start(slot.clone(), &format!("http://{dead}"), Some(&blacklist));
    served.wait_phase("card");
    let state = served.post_ok("/api/topup", json!({ "amount_fen": 2_000 }));
    assert_eq!(message_code(&state), "topup_unavailable", "{state}");
    assert!(state["message"]["zh"].as_str().is_some_and(|zh| zh.contains("暂时无法充值")), "{state}");
    assert!(!state["message"].to_string().contains("127.0.0.1"), "no internals on the page: {state}");
    assert_eq!((balance(&state), card_balance(&slot)), (1_000, Fen(1_000)));

    // The card is reported lost: the uploader writes the blacklist file while
    // the kiosk runs; the worker reads it once no card is in.
    slot.remove();
    served.wait_phase("idle");
    Blacklist::new(3, [serial]).expect("blacklist").save(&blacklist).expect("blacklist file");
    std::thread::sleep(terminal::screen::BLACKLIST_CHECK * 2);
    assert!(slot.present(0));
    let state = served.wait_phase("card");
    assert_eq!(message_code(&state), "blacklisted", "{state}");
    assert_eq!(state["card"]["money_allowed"], false);
    let state = served.post_ok("/api/bill", json!({ "utility": "water", "account": "1", "amount_fen": 100 }));
    assert_eq!(message_code(&state), "blacklisted", "{state}");
    assert_eq!(card_balance(&slot), Fen(1_000));
}

/// An in-process card that leaves the reader at a chosen APDU (before the
/// card sees it, or after it carried it out) and stays out until put back.
struct Tearing {
    reader: InProcess<CitizenCard>,
    present: bool,
    sent: usize,
    tear: Option<(usize, TearPoint)>,
}

impl Channel for Tearing {
    fn transmit(&mut self, command: &[u8]) -> Result<Vec<u8>, ReaderError> {
        if !self.present {
            return Err(ReaderError::CardRemoved);
        }
        self.sent += 1;
        match self.tear {
            Some((apdu, point)) if apdu == self.sent => {
                if point == TearPoint::AfterCommand {
                    let _lost = self.reader.transmit(command)?;
                }
                self.tear = None;
                self.present = false;
                self.reader.remove();
                Err(ReaderError::CardRemoved)
            }
            _ => self.reader.transmit(command),
        }
    }
}

#[derive(Clone)]
struct TearingStation(Arc<Mutex<Tearing>>);

impl TearingStation {
    fn lock(&self) -> std::sync::MutexGuard<'_, Tearing> {
        self.0.lock().expect("tearing card")
    }

    fn wait(&self, present: bool, timeout: Duration) -> std::sync::MutexGuard<'_, Tearing> {
        let deadline = Instant::now() + timeout;
        loop {
            let card = self.lock();
            if card.present == present || Instant::now() >= deadline {
                return card;
            }
            drop(card);
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn tear_at(&self, apdu: usize, point: TearPoint) {
        let mut card = self.lock();
        (card.sent, card.tear) = (0, Some((apdu, point)));
    }

    fn insert(&self) {
        let mut card = self.lock();
        card.reader.insert();
        card.present = true;
    }

    fn balance(&self) -> Fen {
        self.lock().reader.card().image().purse.balance
    }
}

impl CardStation for TearingStation {
    fn with_card(
        &mut self,
        timeout: Duration,
        use_card: &mut dyn FnMut(&mut dyn Channel),
    ) -> Result<bool, ReaderError> {
        let mut card = self.wait(true, timeout);
        if !card.present {
            return Ok(false);
        }
        use_card(&mut *card);
        Ok(true)
    }

    fn wait_empty(&mut self, timeout: Duration) -> Result<bool, ReaderError> {
        Ok(!self.wait(false, timeout).present)
    }
}

#[test]
fn a_card_pulled_during_a_payment_is_told_the_truth_by_the_card() {
    let directory = tempfile::tempdir().expect("temp dir");
    let (_, card) = issue_card(directory.path(), 0, Fen(10_000));
    let station = TearingStation(Arc::new(Mutex::new(Tearing {
        reader: InProcess::new(card),
        present: true,
        sent: 0,
        tear: None,
    })));
    let served = Served::start(station.clone(), "http://127.0.0.1:9", None);
    served.wait_phase("card");
    let bill = json!({ "utility": "electricity", "account": "E-77", "amount_fen": 2_500 });

    // A bill's card APDUs: SELECT, READ BINARY (the card is the one shown), SELECT,
    // READ BINARY, INITIALIZE, DEBIT. Pulled before INITIALIZE reaches the card:
    // nothing was charged, and the page says so at once.
    station.tear_at(5, TearPoint::BeforeCommand);
    let state = served.post_ok("/api/bill", bill.clone());
    assert_eq!(message_code(&state), "card_removed_nothing_charged", "{state}");
    assert!(state["message"]["zh"].as_str().is_some_and(|zh| zh.contains("未扣款")), "{state}");
    let idle = served.wait_phase("idle");
    assert_eq!(message_code(&idle), "card_removed_nothing_charged", "kept on the idle page: {idle}");
    assert_eq!(station.balance(), Fen(10_000));
    station.insert();
    let back = served.wait_phase("card");
    assert_eq!(balance(&back), 10_000, "{back}");
    assert!(back["message"].is_null(), "nothing was left open: {back}");

    // Pulled after DEBIT was carried out, before its answer: the page cannot
    // know yet and asks for the card; the card's proof then says it was charged.
    station.tear_at(6, TearPoint::AfterCommand);
    let state = served.post_ok("/api/bill", bill.clone());
    assert_eq!(message_code(&state), "card_removed_check", "{state}");
    let idle = served.wait_phase("idle");
    assert_eq!(message_code(&idle), "card_removed_check", "{idle}");
    assert_eq!(station.balance(), Fen(7_500), "the card did debit");
    station.insert();
    let back = served.wait_for("the settled payment", |state| state["phase"] == "card" && !state["message"].is_null());
    assert_eq!(message_code(&back), "interrupted_charged", "{back}");
    assert!(back["message"]["en"].as_str().is_some_and(|en| en.contains("25.00 yuan was charged")), "{back}");
    assert_eq!(balance(&back), 7_500);
    let receipt = back["receipt"]["lines"].to_string();
    assert!(receipt.contains("E-77") && receipt.contains("************0001"), "{back}");

    // Pulled with DEBIT never reaching the card: not charged, once the card says so.
    station.tear_at(6, TearPoint::BeforeCommand);
    let state = served.post_ok("/api/bill", bill);
    assert_eq!(message_code(&state), "card_removed_check", "{state}");
    served.wait_phase("idle");
    station.insert();
    let back = served.wait_for("the settled payment", |state| state["phase"] == "card" && !state["message"].is_null());
    assert_eq!(message_code(&back), "interrupted_not_charged", "{back}");
    assert_eq!((balance(&back), station.balance()), (7_500, Fen(7_500)));
}

#[test]
fn a_card_pulled_during_a_top_up_is_told_the_truth_by_the_card() {
    let clearing = Clearing::start();
    let (clearing_address, _server) = clearing.serve();
    let directory = tempfile::tempdir().expect("temp dir");
    let (_, card) = issue_card(directory.path(), 0, Fen(1_000));
    let mut reader = InProcess::new(card);
    clearing.register(&mut reader, Fen(1_000));
    let station = TearingStation(Arc::new(Mutex::new(Tearing { reader, present: true, sent: 0, tear: None })));
    let served = Served::start(station.clone(), &format!("http://{clearing_address}"), None);
    served.wait_phase("card");
    let confirmed = |amount: u32| {
        clearing.count(&format!("SELECT COUNT(*) FROM topups WHERE state = 'confirmed' AND amount_fen = {amount}"))
    };

    // A top-up's card APDUs: SELECT, READ BINARY (the card is the one shown),
    // SELECT, READ BINARY, INITIALIZE FOR LOAD, CREDIT FOR LOAD. Pulled before
    // INITIALIZE: nothing loaded, nothing charged, said at once.
    station.tear_at(5, TearPoint::BeforeCommand);
    let state = served.post_ok("/api/topup", json!({ "amount_fen": 1_000 }));
    assert_eq!(message_code(&state), "card_removed_nothing_charged", "{state}");
    assert!(state["message"]["en"].as_str().is_some_and(|en| en.contains("nothing was loaded or charged")));
    served.wait_phase("idle");
    station.insert();
    assert_eq!(balance(&served.wait_phase("card")), 1_000);

    // Pulled after the card carried CREDIT out: unknown until the card is back,
    // then proved, confirmed at clearing, and told.
    station.tear_at(6, TearPoint::AfterCommand);
    let state = served.post_ok("/api/topup", json!({ "amount_fen": 2_000 }));
    assert_eq!(message_code(&state), "card_removed_check", "{state}");
    served.wait_phase("idle");
    assert_eq!((station.balance(), confirmed(2_000)), (Fen(3_000), 0), "loaded on the card, not yet confirmed");
    station.insert();
    let back = served.wait_for("the settled load", |state| state["phase"] == "card" && !state["message"].is_null());
    assert_eq!(message_code(&back), "interrupted_loaded", "{back}");
    assert_eq!(balance(&back), 3_000);
    assert_eq!(confirmed(2_000), 1, "the proved load is confirmed at clearing");

    // Pulled before CREDIT reached the card: not loaded, once the card says so.
    station.tear_at(6, TearPoint::BeforeCommand);
    let state = served.post_ok("/api/topup", json!({ "amount_fen": 5_000 }));
    assert_eq!(message_code(&state), "card_removed_check", "{state}");
    served.wait_phase("idle");
    station.insert();
    let back = served.wait_for("the settled load", |state| state["phase"] == "card" && !state["message"].is_null());
    assert_eq!(message_code(&back), "interrupted_not_loaded", "{back}");
    assert_eq!((balance(&back), station.balance(), confirmed(5_000)), (3_000, Fen(3_000), 0));
}

//! The terminal against a real clearing server: bus taps on in-process cards
//! are journaled, uploaded as signed batches over HTTP to `clearing serve`'s
//! router on 127.0.0.1 (SQLite in a temporary directory, an in-process HSM on a
//! fresh test key store), a batch whose acknowledgement was lost is sent again
//! and stored once, an outage keeps the records for later, and clearing's
//! run-day clears every record with nothing in quarantine. This proves the
//! terminal's batch JSON and signatures are what clearing parses and checks.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use card_host::card::CitizenCard;
use card_host::vpcd::TearPoint;
use card_host::{CardDateTime, Fen, TerminalNumber};
use clearing::registry;
use system_tests::clearing::{Clearing, serial_and_type};
use system_tests::{issue_card, issue_psam, terminal_binary};
use terminal::blacklist::Blacklist;
use terminal::bus::{BusSettings, Tap, Validator};
use terminal::journal::{Journal, UploadRecord};
use terminal::kiosk::{Bill, Kiosk, KioskError, Utility};
use terminal::psam::PsamSession;
use terminal::reader::Channel;
use terminal::reader::InProcess;
use terminal::tariff::Tariff;
use terminal::upload::{self, BatchDocument, ClearingClient, DeviceKey, RetryPolicy, UploadError};
use terminal::{CardSession, ReaderError};

/// The fixture bus terminal registered in `fixtures/merchants/test-merchants.json`.
const BUS: TerminalNumber = TerminalNumber([0x31, 0x00, 0x00, 0x00, 0x09, 0x01]);

fn quick_retry(attempts: u32) -> RetryPolicy {
    RetryPolicy { attempts, backoff_initial: Duration::from_millis(5), backoff_max: Duration::from_millis(20) }
}

fn client(address: SocketAddr, retry: RetryPolicy) -> ClearingClient {
    let key = DeviceKey::load(&card_host::issue::fixtures::directory().join("terminals/device-0901.key")).expect("key");
    ClearingClient::new(&format!("http://{address}"), BUS, key, retry)
}

/// A port nobody listens on: clearing is down.
fn dead_address() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address")
}

fn validator(directory: &Path) -> Validator {
    validator_on(&directory.join("journal.sqlite"))
}

fn validator_on(journal: &Path) -> Validator {
    let tariff = Tariff::load(&card_host::issue::fixtures::directory().join("tariffs/bus-flat.toml")).expect("tariff");
    let journal = Journal::open(journal).expect("journal");
    let settings = BusSettings { route: 42, station: 1, dedup_window_seconds: 10 };
    Validator::new(settings, tariff, Blacklist::empty(), journal, Duration::from_secs(86_400)).expect("validator")
}

#[test]
fn bus_taps_upload_once_survive_an_outage_and_clear_with_no_quarantine() {
    let clearing = Clearing::start();
    let directory = tempfile::tempdir().expect("temp dir");
    let balance = Fen(10_000);
    let mut cards: Vec<InProcess<CitizenCard>> =
        (0..2).map(|profile| InProcess::new(issue_card(directory.path(), profile, balance).1)).collect();
    for (n, card) in cards.iter_mut().enumerate() {
        let (serial, card_type) = serial_and_type(card);
        clearing.issue(serial, card_type, balance, u32::try_from(n).expect("small"));
    }
    let mut psam_reader = InProcess::new(issue_psam(directory.path(), BUS).1);
    let mut psam = PsamSession::open(CardSession::new(&mut psam_reader)).expect("PSAM");
    let mut validator = validator(directory.path());
    // Today at midnight UTC, a tap a minute (never inside the dedup window).
    let midnight = CardDateTime::now_utc().unix_seconds() / 86_400 * 86_400;
    let mut minute = 0u64;
    let mut tap = |validator: &Validator, card: &mut InProcess<CitizenCard>, psam: &mut PsamSession<'_>| {
        minute += 1;
        let at = CardDateTime::from_unix_seconds(midnight + minute * 60).expect("time");
        let tap = validator.tap(card, psam, at);
        assert!(matches!(tap, Tap::Paid { .. }), "{tap}");
    };

    // Three taps, uploaded; the acknowledgement of a fourth batch is lost.
    let (address, server) = clearing.serve();
    let online = client(address, quick_retry(3));
    for i in 0..3 {
        tap(&validator, &mut cards[i % 2], &mut psam);
    }
    let summary = upload::upload_pending(validator.journal(), &online, 2).expect("upload");
    assert_eq!((summary.batches, summary.records, summary.duplicates), (2, 3, 0));
    tap(&validator, &mut cards[0], &mut psam);
    let journal_identity = validator.journal().identity();
    let (id, rows) = validator
        .journal()
        .seal_batch(&BUS, 10, |first, last| upload::batch_id(&journal_identity, first, last))
        .expect("seal")
        .expect("a row waits");
    let report = online.upload_batch(&BatchDocument::new(&BUS, id.clone(), &rows)).expect("sent");
    assert!(!report.duplicate);
    // ... so the terminal sends it again: clearing answers `duplicate`, stores it once.
    let summary = upload::upload_pending(validator.journal(), &online, 10).expect("upload");
    assert_eq!((summary.batches, summary.records, summary.duplicates), (1, 1, 1));
    assert_eq!(clearing.count("SELECT COUNT(*) FROM transactions"), 4);
    assert_eq!(clearing.count("SELECT COUNT(*) FROM batches"), 3);

    // Clearing goes away for a while: taps go on, uploads fail, records stay.
    server.abort();
    let offline = client(dead_address(), quick_retry(3));
    for i in 0..4 {
        tap(&validator, &mut cards[i % 2], &mut psam);
    }
    for _ in 0..2 {
        let error = upload::upload_pending(validator.journal(), &offline, 3).expect_err("clearing is down");
        assert!(matches!(error, UploadError::Unavailable { attempts: 3, .. }), "{error}");
    }
    let waiting = validator.journal().pending_upload(100).expect("pending");
    assert_eq!(waiting.len(), 4, "kept until clearing acknowledges them");
    assert_eq!(clearing.count("SELECT COUNT(*) FROM transactions"), 4);

    // Back: everything arrives, once.
    let (address, _server) = clearing.serve();
    let back = client(address, quick_retry(3));
    let summary = upload::upload_pending(validator.journal(), &back, 3).expect("upload");
    assert_eq!((summary.batches, summary.records), (2, 4));
    assert!(validator.journal().pending_upload(100).expect("pending").is_empty());
    assert_eq!(upload::upload_pending(validator.journal(), &back, 3).expect("nothing left").batches, 0);
    assert_eq!(clearing.count("SELECT COUNT(*) FROM transactions"), 8);

    // run-day clears every record: the TACs, counters and balances agree.
    let day = CardDateTime::from_unix_seconds(midnight + 60).expect("time");
    let summary = clearing.run_day(&day);
    assert_eq!((summary.records, summary.cleared, summary.quarantined), (8, 8, 0), "{summary:?}");
    let charged = validator.journal().counts().expect("counts").completed_fen;
    assert_eq!(summary.purchases_fen, i64::try_from(charged).expect("small"));
    assert!(summary.card_float_matches_shadows && summary.settled_equals_cleared);

    // The issuer reports card 0 lost: the terminal downloads the blacklist and refuses it.
    let (serial, _) = serial_and_type(&mut cards[0]);
    clearing.runtime.block_on(registry::report_loss(&clearing.db, &serial, &day)).expect("loss");
    let list = upload::refresh_blacklist(&back, &Blacklist::empty()).expect("blacklist");
    assert!(list.contains(&serial) && list.version() >= 1);
    assert_eq!(upload::refresh_blacklist(&back, &list).expect("again"), list, "nothing newer");
    assert!(validator.update_blacklist(list));
    minute += 60;
    let at = CardDateTime::from_unix_seconds(midnight + minute * 60).expect("time");
    let refused = validator.tap(&mut cards[0], &mut psam, at);
    assert!(!refused.lets_through(), "{refused}");
}

#[test]
fn a_forged_signature_is_refused_and_the_records_stay() {
    let clearing = Clearing::start();
    let directory = tempfile::tempdir().expect("temp dir");
    let (address, _server) = clearing.serve();
    let mut card = InProcess::new(issue_card(directory.path(), 0, Fen(1_000)).1);
    let (serial, card_type) = serial_and_type(&mut card);
    clearing.issue(serial, card_type, Fen(1_000), 0);
    let mut psam_reader = InProcess::new(issue_psam(directory.path(), BUS).1);
    let mut psam = PsamSession::open(CardSession::new(&mut psam_reader)).expect("PSAM");
    let validator = validator(directory.path());
    let tap = validator.tap(&mut card, &mut psam, CardDateTime::now_utc());
    assert!(matches!(tap, Tap::Paid { .. }), "{tap}");
    // The shop terminal's key, claiming to be the bus.
    let wrong =
        DeviceKey::load(&card_host::issue::fixtures::directory().join("terminals/device-0902.key")).expect("key");
    let impostor = ClearingClient::new(&format!("http://{address}"), BUS, wrong, quick_retry(2));
    let error = upload::upload_pending(validator.journal(), &impostor, 10).expect_err("refused");
    assert_eq!(error.status(), Some(401), "{error}");
    assert_eq!(validator.journal().pending_upload(10).expect("pending").len(), 1);
    let summary = upload::upload_pending(validator.journal(), &client(address, quick_retry(2)), 10).expect("upload");
    assert_eq!(summary.records, 1);
}

/// A reinstalled validator: the same terminal with a new journal file, whose row
/// ids start from 1 again. Both journals' batches are stored (their ids carry
/// the journal's identity; with `TERMINAL-FIRST-LAST` the second was refused
/// 409 and wedged every later upload). A 409 that does happen names the batch,
/// and `terminal upload` fails with it.
#[test]
fn two_journals_of_one_terminal_both_upload_and_a_conflict_is_told() {
    let clearing = Clearing::start();
    let directory = tempfile::tempdir().expect("temp dir");
    let (address, _server) = clearing.serve();
    let (card_path, card) = issue_card(directory.path(), 0, Fen(5_000));
    let mut card = InProcess::new(card);
    clearing.register(&mut card, Fen(5_000));
    let (psam_path, psam_image) = issue_psam(directory.path(), BUS);
    let mut psam_reader = InProcess::new(psam_image);
    let mut psam = PsamSession::open(CardSession::new(&mut psam_reader)).expect("PSAM");
    let online = client(address, quick_retry(2));
    let midnight = CardDateTime::now_utc().unix_seconds() / 86_400 * 86_400;
    let at = |minute: u64| CardDateTime::from_unix_seconds(midnight + minute * 60).expect("time");

    let first = validator_on(&directory.path().join("first.sqlite"));
    let tap = first.tap(&mut card, &mut psam, at(1));
    assert!(matches!(tap, Tap::Paid { .. }), "{tap}");
    assert_eq!(upload::upload_pending(first.journal(), &online, 10).expect("upload").records, 1);
    // The validator is reinstalled: a new journal, the same terminal, row 1 again.
    let second = validator_on(&directory.path().join("second.sqlite"));
    assert_ne!(first.journal().identity(), second.journal().identity());
    let tap = second.tap(&mut card, &mut psam, at(30));
    assert!(matches!(tap, Tap::Paid { .. }), "{tap}");
    let summary = upload::upload_pending(second.journal(), &online, 10).expect("the new journal's batch is stored");
    assert_eq!((summary.batches, summary.records, summary.duplicates), (1, 1, 0));
    assert_eq!(clearing.count("SELECT COUNT(*) FROM batches WHERE terminal_id = '310000000901'"), 2);
    assert_eq!(clearing.count("SELECT COUNT(*) FROM transactions"), 2);
    for journal in [first.journal(), second.journal()] {
        assert!(journal.pending_upload(10).expect("pending").is_empty());
        let prefix = format!("{}-1-1", journal.identity());
        assert_eq!(clearing.count(&format!("SELECT COUNT(*) FROM batches WHERE batch_id = '{prefix}'")), 1);
    }
    let day = clearing.run_day(&at(1));
    assert_eq!((day.cleared, day.quarantined), (2, 0), "{day:?}");

    // Clearing holds other records under the id a third journal's batch takes
    // (forged here: the first journal's row sent under that id).
    let third_path = directory.path().join("third.sqlite");
    let third = validator_on(&third_path);
    let tap = third.tap(&mut card, &mut psam, at(60));
    assert!(matches!(tap, Tap::Paid { .. }), "{tap}");
    let taken = upload::batch_id(&third.journal().identity(), 1, 1);
    let first_rows: Vec<UploadRecord> = first
        .journal()
        .completed_for(&serial_and_type(&mut card).0)
        .expect("rows")
        .into_iter()
        .map(UploadRecord::Completed)
        .collect();
    online.upload_batch(&BatchDocument::new(&BUS, taken.clone(), &first_rows)).expect("the forged batch");
    let error = upload::upload_pending(third.journal(), &online, 10).expect_err("409");
    assert!(matches!(&error, UploadError::BatchConflict { batch, .. } if *batch == taken), "{error}");
    assert_eq!(third.journal().pending_upload(10).expect("pending").len(), 1, "the row is kept");
    let third_identity = third.journal().identity();
    let third_rows = third.journal().completed_for(&serial_and_type(&mut card).0).expect("rows");
    drop(third);
    let config = directory.path().join("bus.toml");
    std::fs::write(
        &config,
        format!(
            "[journal]\npath = {third_path:?}\n[clearing]\nurl = \"http://{address}\"\nterminal_id = \"310000000901\"\n\
             device_key = {:?}\n[reader]\nkind = \"in_process\"\ncards = [{card_path:?}]\npsam = {psam_path:?}\n",
            card_host::issue::fixtures::directory().join("terminals/device-0901.key"),
        ),
    )
    .expect("config");
    let output = std::process::Command::new(terminal_binary())
        .args(["upload", "--config"])
        .arg(&config)
        .env("RUST_LOG", "error")
        .output()
        .expect("terminal upload");
    let (out, err) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(!output.status.success(), "terminal upload fails on a 409: {out} {err}");
    assert!(out.contains(&taken) && out.contains("409"), "the summary line names the batch: {out}");
    assert!(err.contains("ERROR") && err.contains(&taken), "logged as an error naming the batch: {err}");
    assert!(out.contains("--reseal-conflicting"), "the way out is named: {out}");

    // The operator re-seals the wedged batch: its row goes under a new id, once.
    let upload = |extra: &[&str]| {
        let output = std::process::Command::new(terminal_binary())
            .arg("upload")
            .args(extra)
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "warn")
            .output()
            .expect("terminal upload");
        let out = String::from_utf8_lossy(&output.stdout).into_owned();
        let err = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(output.status.success(), "terminal upload {extra:?}: {out} {err}");
        (out, err)
    };
    let (out, err) = upload(&["--reseal-conflicting"]);
    let line = out.lines().find(|line| line.starts_with("re-sealed batch")).unwrap_or_else(|| panic!("{out}"));
    let resealed = line
        .strip_prefix(&format!("re-sealed batch {taken} as "))
        .and_then(|rest| rest.split_once(" (1 records)"))
        .map(|(id, _)| id.to_owned())
        .unwrap_or_else(|| panic!("{line}"));
    assert!(resealed.starts_with(&format!("{third_identity}-1-1.")) && resealed.len() <= 64, "{resealed}");
    assert!(resealed.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)), "{resealed}");
    assert!(out.contains("uploaded 1 records (0 grey) in 1 batches"), "{out}");
    assert!(err.contains("WARN") && err.contains(&taken) && err.contains(&resealed), "the re-seal is logged: {err}");
    let in_batch =
        |batch: &str| clearing.count(&format!("SELECT COUNT(*) FROM transactions WHERE batch_id = '{batch}'"));
    let [row] = third_rows.as_slice() else { panic!("{third_rows:?}") };
    assert_eq!(
        clearing.count(&format!(
            "SELECT COUNT(*) FROM transactions WHERE batch_id = '{resealed}' AND card_serial = '{}' AND counter = {}",
            row.entry.card.to_hex(),
            row.entry.offline_counter
        )),
        1,
        "the third journal's row is at clearing under the new id"
    );
    assert_eq!((in_batch(&resealed), in_batch(&taken)), (1, 1), "and the forged batch is untouched");
    let third = Journal::open(&third_path).expect("the third journal");
    assert!(third.pending_upload(10).expect("pending").is_empty(), "nothing left to send");
    assert_eq!(third.sealed_batch().expect("sealed"), None, "no batch waits");
    assert_eq!(third.completed_for(&row.entry.card).expect("rows"), third_rows, "the row is the same, not doubled");
    third.close();
    let (out, _) = upload(&[]);
    assert!(out.contains("uploaded 0 records"), "nothing wedged any more: {out}");
    // The day again: the two stored first, the re-sealed row; the forged copy
    // of the first journal's row is a duplicate by the card's counter.
    let day = clearing.run_day(&at(60));
    assert_eq!((day.records, day.cleared, day.quarantined), (4, 3, 1), "{day:?}");
    assert_eq!(day.quarantined_by_reason.get("duplicate"), Some(&1), "{day:?}");
}

/// The fixture shop terminal: the kiosk.
const SHOP: TerminalNumber = TerminalNumber([0x31, 0x00, 0x00, 0x00, 0x09, 0x02]);

/// An in-process reader whose card leaves at the `n`th APDU after
/// [`Tearing::tear_at`] (before the card sees it, or after it carried it out),
/// and stays out until [`Tearing::insert`].
struct Tearing {
    reader: InProcess<CitizenCard>,
    sent: usize,
    tear: Option<(usize, TearPoint)>,
    torn: bool,
}

impl Tearing {
    fn tear_at(&mut self, apdu: usize, point: TearPoint) {
        (self.sent, self.tear, self.torn) = (0, Some((apdu, point)), false);
    }

    fn insert(&mut self) {
        self.tear = None;
        self.reader.insert();
    }

    fn balance(&self) -> Fen {
        self.reader.card().image().purse.balance
    }
}

impl Channel for Tearing {
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

/// Grey records (灰记录) end to end: three bus taps torn at DEBIT — two after
/// the card carried it out (charged), one before (not charged) — left open,
/// flagged and uploaded as kind `unresolved` beside nothing else; clearing
/// stores them apart and the journal has nothing pending. Then the cards' later
/// records decide them at run-day: the first card back at this validator is
/// proved by GET TRANSACTION PROVE and its completed purchase follows in a later
/// batch (the grey record proved); the other two tap at another validator of the
/// same terminal (a reinstalled one: a new journal) — the charged card's grey
/// record is confirmed by its next purchase, the uncharged one's voided as the
/// card used that counter again. Every shadow account equals its card.
#[test]
fn grey_records_are_uploaded_and_decided_by_the_cards_later_records() {
    let clearing = Clearing::start();
    let directory = tempfile::tempdir().expect("temp dir");
    let (address, _server) = clearing.serve();
    let online = client(address, quick_retry(2));
    let opening = Fen(5_000);
    let mut paths = Vec::new();
    let mut cards: Vec<Tearing> = (0..3)
        .map(|profile| {
            let (path, card) = issue_card(directory.path(), profile, opening);
            paths.push(path);
            let mut reader = InProcess::new(card);
            clearing.register(&mut reader, opening);
            Tearing { reader, sent: 0, tear: None, torn: false }
        })
        .collect();
    let mut psam_reader = InProcess::new(issue_psam(directory.path(), BUS).1);
    let mut psam = PsamSession::open(CardSession::new(&mut psam_reader)).expect("PSAM");
    let midnight = CardDateTime::now_utc().unix_seconds() / 86_400 * 86_400;
    let at = |seconds: u64| CardDateTime::from_unix_seconds(midnight + 3_600 + seconds).expect("time");

    // A flat-fare tap's 6th card APDU is DEBIT.
    let first = validator_on(&directory.path().join("first.sqlite"));
    for (card, point) in [(0, TearPoint::AfterCommand), (1, TearPoint::AfterCommand), (2, TearPoint::BeforeCommand)] {
        cards[card].tear_at(6, point);
        let tap = first.tap(&mut cards[card], &mut psam, at(60 * card as u64));
        assert!(matches!(tap, Tap::PresentAgain { .. }) && cards[card].torn, "card {card}: {tap}");
        cards[card].insert();
    }
    assert_eq!(first.journal().counts().expect("counts").intents, 3);
    // Flagged once older than the age, 0 here: written before this millisecond
    // (the last intent may have been committed in the one the flagging reads).
    std::thread::sleep(Duration::from_millis(2));
    assert_eq!(first.journal().flag_unresolved_older_than(Duration::ZERO).expect("flag"), 3);
    let summary = upload::upload_pending(first.journal(), &online, 10).expect("upload");
    assert_eq!((summary.batches, summary.records, summary.unresolved, summary.rejected), (1, 3, 3, 0));
    assert!(first.journal().pending_upload(10).expect("pending").is_empty(), "nothing pending once acknowledged");
    assert_eq!(clearing.count("SELECT COUNT(*) FROM grey_records"), 3, "stored apart");
    assert_eq!(clearing.count("SELECT COUNT(*) FROM transactions"), 0);

    // Card 0 comes back here (within the dedup window): proved, let through, and
    // its completed purchase goes in a later batch.
    let tap = first.tap(&mut cards[0], &mut psam, at(5));
    assert!(matches!(tap, Tap::AlreadyPaid { .. }), "{tap}");
    let summary = upload::upload_pending(first.journal(), &online, 10).expect("upload");
    assert_eq!((summary.records, summary.unresolved), (1, 0), "the proved purchase, no grey record again");
    assert_eq!(first.journal().counts().expect("counts").intents, 2, "the other two stay intents here");
    assert!(first.journal().pending_upload(10).expect("pending").is_empty());

    // Cards 1 and 2 ride on with another validator of the same terminal.
    let second = validator_on(&directory.path().join("second.sqlite"));
    for card in [1, 2] {
        let tap = second.tap(&mut cards[card], &mut psam, at(600 + card as u64));
        assert!(matches!(tap, Tap::Paid { .. }), "card {card}: {tap}");
    }
    let summary = upload::upload_pending(second.journal(), &online, 10).expect("upload");
    assert_eq!((summary.records, summary.unresolved), (2, 0));

    let day = clearing.run_day(&at(0));
    println!("{day:?}");
    assert_eq!((day.cleared, day.quarantined), (3, 0), "{day:?}");
    assert_eq!(day.grey_confirmed, 1, "card 1's grey record confirmed by its next purchase: {day:?}");
    let states: Vec<(&str, i64)> = day.grey_by_state.iter().map(|(state, n)| (state.as_str(), *n)).collect();
    assert_eq!(states, [("confirmed", 1), ("proved", 1), ("voided", 1)], "{day:?}");
    assert!(day.settled_equals_cleared && day.card_float_matches_shadows, "{day:?}");
    let paths: Vec<&Path> = paths.iter().map(|path| path.as_path()).collect();
    clearing.assert_shadows_match(&paths);
}

fn shop_client(address: SocketAddr) -> ClearingClient {
    let key = DeviceKey::load(&card_host::issue::fixtures::directory().join("terminals/device-0902.key")).expect("key");
    ClearingClient::new(&format!("http://{address}"), SHOP, key, quick_retry(2))
}

#[test]
fn kiosk_top_up_torn_at_every_apdu_then_a_bill_agree_with_card_journal_and_clearing() {
    let clearing = Clearing::start();
    let directory = tempfile::tempdir().expect("temp dir");
    let (address, _server) = clearing.serve();
    let opening = Fen(1_000);
    let mut reader = InProcess::new(issue_card(directory.path(), 0, opening).1);
    let serial = clearing.register(&mut reader, opening);
    let mut card = Tearing { reader, sent: 0, tear: None, torn: false };
    let journal = Journal::open(&directory.path().join("kiosk.sqlite")).expect("journal");
    let kiosk = Kiosk::new(journal, shop_client(address));

    let loaded = kiosk.top_up(&mut card, Fen(500)).expect("top-up");
    assert!(loaded.confirmed);
    assert_eq!((loaded.balance, card.balance()), (Fen(1_500), Fen(1_500)));

    // Card, journal and clearing agree after every tear, once the card is back.
    let agree = |kiosk: &Kiosk, card: &Tearing, what: &str| {
        let loads = kiosk.journal().loads_for(&serial).expect("loads");
        let completed: Vec<_> = loads.iter().filter(|row| row.tac.is_some()).collect();
        let loaded: u32 = completed.iter().map(|row| row.entry.amount.0).sum();
        assert_eq!(card.balance(), Fen(opening.0 + loaded), "{what}: card = opening + journaled loads");
        assert!(completed.iter().all(|row| row.confirmed), "{what}: every load confirmed");
        let confirmed = clearing.count("SELECT COUNT(*) FROM topups WHERE state = 'confirmed'");
        assert_eq!(confirmed, i64::try_from(completed.len()).expect("small"), "{what}: clearing has each load once");
        // A load the card never got is voided at clearing too (its counter free for the next top-up).
        if let Some(last) = loads.iter().max_by_key(|row| row.id).filter(|row| row.tac.is_none()) {
            let voided = clearing.count(&format!(
                "SELECT COUNT(*) FROM topups WHERE card_serial = '{}' AND online_counter = {} AND state = 'voided'",
                last.entry.card.to_hex(),
                last.entry.online_counter
            ));
            assert_eq!(voided, 1, "{what}: clearing voided the load the card never got");
        }
    };
    for point in [TearPoint::BeforeCommand, TearPoint::AfterCommand] {
        for apdu in 1.. {
            card.tear_at(apdu, point);
            let result = kiosk.top_up(&mut card, Fen(100));
            if !card.torn {
                result.expect("a top-up with no tear");
                card.tear = None;
                break;
            }
            assert!(result.is_err(), "torn at {apdu} {point:?}");
            card.insert();
            let view = kiosk.read(&mut card).expect("the card is back");
            assert_eq!(view.balance, card.balance());
            agree(&kiosk, &card, &format!("torn at APDU {apdu} {point:?}"));
            assert!(apdu < 20, "a top-up is a handful of APDUs");
        }
    }
    agree(&kiosk, &card, "after the tears");
    let loads = kiosk.journal().loads_for(&serial).expect("loads");
    let voided = loads.iter().filter(|row| row.tac.is_none()).count();
    // CREDIT torn before the card saw it: voided; after: proved by the card.
    assert!(voided >= 1, "{loads:?}");
    assert!(loads.len() - voided >= 4, "the first, one per tear loop, and a proved one: {loads:?}");
    assert!(kiosk.journal().unconfirmed_loads().expect("unconfirmed").is_empty());

    // A gas bill from the purse with the kiosk's PSAM, then upload and run-day.
    let mut psam_reader = InProcess::new(issue_psam(directory.path(), SHOP).1);
    let mut psam = PsamSession::open(CardSession::new(&mut psam_reader)).expect("PSAM");
    let last_load = kiosk.journal().loads_for(&serial).expect("loads").last().expect("a load").entry.at;
    let at = CardDateTime::from_unix_seconds(last_load.unix_seconds() + 60).expect("time");
    let bill = Bill { utility: Utility::Gas, account: "GAS-0042".into(), amount: Fen(321) };
    let before = card.balance();
    let paid = kiosk.pay_bill(&mut card, &mut psam, &bill, at).expect("bill paid");
    assert_eq!(paid.entry.reference.as_deref(), Some("gas:GAS-0042"));
    assert_eq!(card.balance(), Fen(before.0 - 321));
    let summary = upload::upload_pending(kiosk.journal(), kiosk.client(), 10).expect("upload");
    assert_eq!(summary.records, 1);
    let day = clearing.run_day(&at);
    assert_eq!(day.quarantined, 0, "{day:?}");
    let shadow = clearing.runtime.block_on(registry::shadow(&clearing.db, &serial)).expect("shadow");
    assert_eq!(shadow.balance_fen, i64::from(card.balance().0), "clearing's shadow account equals the card");
}

#[test]
fn bill_payment_torn_at_every_apdu_agrees_with_the_card_and_clears_once() {
    let clearing = Clearing::start();
    let directory = tempfile::tempdir().expect("temp dir");
    let (address, _server) = clearing.serve();
    let opening = Fen(50_000);
    let mut reader = InProcess::new(issue_card(directory.path(), 0, opening).1);
    let serial = clearing.register(&mut reader, opening);
    let mut card = Tearing { reader, sent: 0, tear: None, torn: false };
    let kiosk =
        Kiosk::new(Journal::open(&directory.path().join("kiosk.sqlite")).expect("journal"), shop_client(address));
    let mut psam_reader = InProcess::new(issue_psam(directory.path(), SHOP).1);
    let mut psam = PsamSession::open(CardSession::new(&mut psam_reader)).expect("PSAM");
    let midnight = CardDateTime::now_utc().unix_seconds() / 86_400 * 86_400;
    let bill = Bill { utility: Utility::Water, account: "W-7".into(), amount: Fen(100) };

    let agree = |kiosk: &Kiosk, card: &Tearing, what: &str| {
        let counts = kiosk.journal().counts().expect("counts");
        assert_eq!(counts.intents, 0, "{what}: nothing left open once the card is back");
        assert_eq!(u64::from(card.balance().0), u64::from(opening.0) - counts.completed_fen, "{what}");
    };
    let mut minute = 0;
    let mut torn = 0;
    for point in [TearPoint::BeforeCommand, TearPoint::AfterCommand] {
        for apdu in 1.. {
            minute += 1;
            let at = CardDateTime::from_unix_seconds(midnight + minute * 60).expect("time");
            card.tear_at(apdu, point);
            let result = kiosk.pay_bill(&mut card, &mut psam, &bill, at);
            if !card.torn {
                result.expect("a payment with no tear");
                card.tear = None;
                break;
            }
            torn += 1;
            assert!(result.is_err(), "torn at {apdu} {point:?}");
            card.insert();
            kiosk.read(&mut card).expect("the card is back");
            agree(&kiosk, &card, &format!("torn at APDU {apdu} {point:?}"));
            assert!(apdu < 20, "a purchase is a handful of APDUs");
        }
    }
    assert!(torn >= 6, "{torn} tears");
    let rows = kiosk.journal().completed_for(&serial).expect("completed");
    assert!(rows.iter().all(|row| row.entry.reference.as_deref() == Some("water:W-7")));
    let summary = upload::upload_pending(kiosk.journal(), kiosk.client(), 10).expect("upload");
    assert_eq!(summary.records, rows.len() as u64);
    let day = clearing.run_day(&CardDateTime::from_unix_seconds(midnight).expect("time"));
    assert_eq!((day.cleared, day.quarantined), (i64::try_from(rows.len()).expect("small"), 0), "{day:?}");
    let shadow = clearing.runtime.block_on(registry::shadow(&clearing.db, &serial)).expect("shadow");
    assert_eq!(shadow.balance_fen, i64::from(card.balance().0), "nothing charged twice or lost");
}

/// A TCP forwarder to clearing that can be cut: open connections are shut and
/// new ones closed at once, as when the network to clearing goes down.
struct Link {
    address: SocketAddr,
    cut: Arc<std::sync::atomic::AtomicBool>,
}

impl Link {
    fn to(target: SocketAddr) -> Link {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("address");
        let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = Arc::clone(&cut);
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if flag.load(Ordering::SeqCst) {
                    continue;
                }
                let Ok(server) = std::net::TcpStream::connect(target) else { continue };
                for (mut from, mut to) in
                    [(client.try_clone().expect("clone"), server.try_clone().expect("clone")), (server, client)]
                {
                    let flag = Arc::clone(&flag);
                    from.set_read_timeout(Some(Duration::from_millis(20))).expect("timeout");
                    std::thread::spawn(move || {
                        use std::io::{Read, Write};
                        let mut buffer = [0u8; 16 * 1024];
                        while !flag.load(Ordering::SeqCst) {
                            match from.read(&mut buffer) {
                                Ok(0) => break,
                                Ok(n) => {
                                    if to.write_all(&buffer[..n]).is_err() {
                                        break;
                                    }
                                }
                                Err(error)
                                    if matches!(
                                        error.kind(),
                                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                                    ) => {}
                                Err(_) => break,
                            }
                        }
                        let _ = to.shutdown(std::net::Shutdown::Both);
                        let _ = from.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Link { address, cut }
    }
}

/// Cuts the link to clearing when CREDIT FOR LOAD (INS 52) goes to the card.
struct CutAtCredit<'a> {
    reader: &'a mut InProcess<CitizenCard>,
    cut: Arc<std::sync::atomic::AtomicBool>,
}

impl Channel for CutAtCredit<'_> {
    fn transmit(&mut self, command: &[u8]) -> Result<Vec<u8>, ReaderError> {
        if command.get(1) == Some(&0x52) {
            self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(60));
        }
        self.reader.transmit(command)
    }
}

#[test]
fn a_load_whose_confirmation_could_not_reach_clearing_is_confirmed_later() {
    let clearing = Clearing::start();
    let directory = tempfile::tempdir().expect("temp dir");
    let (address, _server) = clearing.serve();
    let mut reader = InProcess::new(issue_card(directory.path(), 0, Fen(1_000)).1);
    let serial = clearing.register(&mut reader, Fen(1_000));
    let journal = Journal::open(&directory.path().join("kiosk.sqlite")).expect("journal");
    let link = Link::to(address);
    let kiosk = Kiosk::new(journal, shop_client(link.address));
    let mut card = CutAtCredit { reader: &mut reader, cut: Arc::clone(&link.cut) };
    let loaded = kiosk.top_up(&mut card, Fen(2_000)).expect("loaded on the card");
    assert!(!loaded.confirmed, "clearing was cut off after authorising");
    assert_eq!(reader.card().image().purse.balance, Fen(3_000));
    assert_eq!(kiosk.journal().unconfirmed_loads().expect("unconfirmed").len(), 1);
    assert_eq!(clearing.count("SELECT COUNT(*) FROM topups WHERE state = 'confirmed'"), 0);

    // Clearing is reachable again: the kiosk confirms what it kept.
    let kiosk =
        Kiosk::new(Journal::open(&directory.path().join("kiosk.sqlite")).expect("reopen"), shop_client(address));
    assert_eq!(kiosk.confirm_pending().expect("confirm"), 1);
    assert!(kiosk.journal().unconfirmed_loads().expect("unconfirmed").is_empty());
    assert_eq!(clearing.count("SELECT COUNT(*) FROM topups WHERE state = 'confirmed'"), 1);
    let day = clearing.run_day(&loaded.row.entry.at);
    assert_eq!((day.cleared, day.quarantined, day.loads_fen), (1, 0, 2_000), "{day:?}");
    let shadow = clearing.runtime.block_on(registry::shadow(&clearing.db, &serial)).expect("shadow");
    assert_eq!(shadow.balance_fen, 3_000);
}

/// Sends CREDIT FOR LOAD (INS 52) once with its MAC2 altered: the card refuses
/// the load with a status word and does nothing.
struct WrongMac2<'a> {
    reader: &'a mut InProcess<CitizenCard>,
    armed: bool,
}

impl Channel for WrongMac2<'_> {
    fn transmit(&mut self, command: &[u8]) -> Result<Vec<u8>, ReaderError> {
        if self.armed && command.get(1) == Some(&0x52) {
            self.armed = false;
            // CLA INS P1 P2 Lc, the host date-time (7 bytes), then MAC2.
            let mut altered = command.to_vec();
            altered[5 + 7] ^= 0x01;
            return self.reader.transmit(&altered);
        }
        self.reader.transmit(command)
    }
}

/// A load the card refuses at CREDIT FOR LOAD (a wrong MAC2: status word
/// 9302) is voided in the journal and at clearing, where its authorisation
/// no longer holds the card's online counter: a top-up of another amount
/// takes the same counter (while the refused one was only voided locally,
/// clearing answered it 409, "another top-up holds this online counter").
#[test]
fn a_load_the_card_refuses_is_voided_at_clearing_and_frees_its_counter() {
    let clearing = Clearing::start();
    let directory = tempfile::tempdir().expect("temp dir");
    let (address, _server) = clearing.serve();
    let mut reader = InProcess::new(issue_card(directory.path(), 0, Fen(1_000)).1);
    let serial = clearing.register(&mut reader, Fen(1_000));
    let kiosk =
        Kiosk::new(Journal::open(&directory.path().join("kiosk.sqlite")).expect("journal"), shop_client(address));
    let mut card = WrongMac2 { reader: &mut reader, armed: true };

    let error = kiosk.top_up(&mut card, Fen(500)).expect_err("the card refuses the load");
    let KioskError::LoadRefused { voided, source } = &error else { panic!("not a refusal: {error}") };
    assert_eq!(source.status(), Some(card_host::status::StatusWord::MacInvalid), "{source}");
    assert_eq!((voided.tac, voided.entry.amount), (None, Fen(500)));
    assert_eq!(card.reader.card().image().purse.balance, Fen(1_000), "nothing loaded");
    let counter = voided.entry.online_counter;
    let state = |counter: u16| {
        let states = ["authorised", "confirmed", "voided"];
        states.map(|state| {
            clearing.count(&format!(
                "SELECT COUNT(*) FROM topups WHERE card_serial = '{}' AND online_counter = {counter} AND state = '{state}'",
                serial.to_hex()
            ))
        })
    };
    assert_eq!(state(counter), [0, 0, 1], "clearing voided the load the card refused");

    let loaded = kiosk.top_up(&mut card, Fen(300)).expect("a top-up of another amount");
    assert!(loaded.confirmed);
    assert_eq!(loaded.row.entry.online_counter, counter, "on the same online counter");
    assert_eq!((loaded.balance, card.reader.card().image().purse.balance), (Fen(1_300), Fen(1_300)));
    assert_eq!(state(counter), [0, 1, 0]);
    let loads = kiosk.journal().loads_for(&serial).expect("loads");
    assert_eq!(
        loads.iter().map(|row| (row.entry.amount, row.tac.is_some())).collect::<Vec<_>>(),
        [(Fen(500), false), (Fen(300), true)]
    );
    let day = clearing.run_day(&loaded.row.entry.at);
    assert_eq!((day.cleared, day.quarantined, day.loads_fen), (1, 0, 300), "{day:?}");
    let shadow = clearing.runtime.block_on(registry::shadow(&clearing.db, &serial)).expect("shadow");
    assert_eq!(shadow.balance_fen, 1_300, "clearing's shadow account equals the card");
}

/// Runs `terminal MODE --config FILE` with `input` on standard input; its standard output.
fn run_terminal(mode: &str, config: &Path, input: &str) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new(terminal_binary())
        .args([mode, "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("terminal");
    child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("write");
    let output = child.wait_with_output().expect("wait");
    assert!(output.status.success(), "terminal {mode}: {:?}", output.status);
    String::from_utf8(output.stdout).expect("utf-8")
}

#[test]
fn terminal_kiosk_and_upload_processes_talk_to_clearing() {
    let clearing = Clearing::start();
    let directory = tempfile::tempdir().expect("temp dir");
    let (address, _server) = clearing.serve();
    let (card_path, card) = issue_card(directory.path(), 0, Fen(1_000));
    let serial = clearing.register(&mut InProcess::new(card), Fen(1_000));
    let (psam_path, _) = issue_psam(directory.path(), SHOP);
    let key = card_host::issue::fixtures::directory().join("terminals/device-0902.key");
    let blacklist = directory.path().join("blacklist.toml");
    let config = directory.path().join("kiosk.toml");
    std::fs::write(
        &config,
        format!(
            // China Standard Time (the default), as clearing's host date-time for loads.
            "[journal]\npath = {:?}\n[blacklist]\npath = {:?}\n[clearing]\nurl = \"http://{address}\"\n\
             terminal_id = \"310000000902\"\ndevice_key = {:?}\n[reader]\nkind = \"in_process\"\ncards = [{:?}]\n\
             psam = {:?}\n",
            directory.path().join("journal.sqlite"),
            blacklist,
            key,
            card_path,
            psam_path
        ),
    )
    .expect("config");

    let out = run_terminal("kiosk", &config, "topup 500\nbill water W-1 120\nbalance\nupload\nquit\n");
    assert!(out.contains("loaded 5.00 balance 15.00"), "{out}");
    assert!(out.contains("paid water 1.20 W-1"), "{out}");
    assert!(out.contains("balance 13.80"), "{out}");
    assert!(out.contains("uploaded 1 records"), "{out}");
    assert_eq!(CitizenCard::open(&card_path).expect("card").image().purse.balance, Fen(1_380));

    let day = clearing.run_day(&CardDateTime::now_at_offset(480));
    assert_eq!((day.cleared, day.quarantined), (2, 0), "the load and the bill: {day:?}");

    // The card is reported lost: `terminal upload` brings the blacklist file up to date.
    clearing.runtime.block_on(registry::report_loss(&clearing.db, &serial, &CardDateTime::now_utc())).expect("loss");
    let out = run_terminal("upload", &config, "");
    assert!(out.contains("uploaded 0 records") && out.contains("blacklist version 1 (1 cards)"), "{out}");
    assert!(Blacklist::load(&blacklist).expect("blacklist file").contains(&serial));
    let out = run_terminal("upload", &config, "");
    assert!(out.contains("blacklist version 1 is the latest"), "{out}");
    // The kiosk keeps that list: the lost card is neither charged nor loaded.
    let out = run_terminal("kiosk", &config, "bill water W-1 120\ntopup 100\nbalance\nquit\n");
    assert!(out.contains("not paid: the card is blacklisted"), "{out}");
    assert!(out.contains("not loaded: the card is blacklisted"), "{out}");
    assert_eq!(CitizenCard::open(&card_path).expect("card").image().purse.balance, Fen(1_380));
}

#[test]
fn terminal_counter_process_takes_a_co_payment_that_clears() {
    let clearing = Clearing::start();
    let directory = tempfile::tempdir().expect("temp dir");
    let (address, _server) = clearing.serve();
    let (card_path, card) = issue_card(directory.path(), 0, Fen(5_000));
    clearing.register(&mut InProcess::new(card), Fen(5_000));
    let hospital = TerminalNumber([0x31, 0x00, 0x00, 0x00, 0x09, 0x03]);
    let (psam_path, _) = issue_psam(directory.path(), hospital);
    let key = card_host::issue::fixtures::directory().join("terminals/device-0903.key");
    let config = directory.path().join("counter.toml");
    std::fs::write(
        &config,
        format!(
            "utc_offset_minutes = 0\n[counter]\nhospital = \"310000000903\"\ndepartment = 12\n[journal]\npath = {:?}\n\
             [clearing]\nurl = \"http://{address}\"\nterminal_id = \"310000000903\"\ndevice_key = {:?}\n\
             [reader]\nkind = \"in_process\"\ncards = [{:?}]\npsam = {:?}\n",
            directory.path().join("journal.sqlite"),
            key,
            card_path,
            psam_path
        ),
    )
    .expect("config");
    let out = run_terminal("counter", &config, "patient 000000\npatient 123456\nvisit 123456 1 1550\nupload\nquit\n");
    assert!(out.contains("refused: VERIFY"), "wrong PIN: {out}");
    assert!(out.contains("patient P31000000001") && out.contains("0 earlier visits"), "{out}");
    assert!(!out.contains("123456"), "the PIN is never echoed: {out}");
    assert!(out.contains("co-payment 15.50"), "{out}");
    assert!(out.contains("uploaded 1 records"), "{out}");
    assert_eq!(CitizenCard::open(&card_path).expect("card").image().purse.balance, Fen(3_450));
    let day = clearing.run_day(&CardDateTime::now_utc());
    assert_eq!((day.cleared, day.quarantined, day.purchases_fen), (1, 0, 1_550), "{day:?}");
}

#[test]
fn a_running_bus_validator_uploads_on_its_own() {
    use std::io::Write;
    let clearing = Clearing::start();
    let directory = tempfile::tempdir().expect("temp dir");
    let (address, _server) = clearing.serve();
    let (card_path, card) = issue_card(directory.path(), 0, Fen(5_000));
    clearing.register(&mut InProcess::new(card), Fen(5_000));
    let (psam_path, _) = issue_psam(directory.path(), BUS);
    let fixtures = card_host::issue::fixtures::directory();
    let config = directory.path().join("bus.toml");
    std::fs::write(
        &config,
        format!(
            "utc_offset_minutes = 0\n[bus]\nroute = 42\ntariff = {:?}\n[journal]\npath = {:?}\n[clearing]\n\
             url = \"http://{address}\"\nterminal_id = \"310000000901\"\ndevice_key = {:?}\n\
             upload_interval_seconds = 1\n[reader]\nkind = \"in_process\"\ncards = [{:?}]\npsam = {:?}\n",
            fixtures.join("tariffs/bus-flat.toml"),
            directory.path().join("journal.sqlite"),
            fixtures.join("terminals/device-0901.key"),
            card_path,
            psam_path
        ),
    )
    .expect("config");
    let mut child = std::process::Command::new(terminal_binary())
        .args(["bus", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("terminal bus");
    let mut stdin = child.stdin.take().expect("stdin");
    let midnight = CardDateTime::now_utc().unix_seconds() / 86_400 * 86_400;
    for minute in [1, 30] {
        let at = CardDateTime::from_unix_seconds(midnight + minute * 60).expect("time");
        let digits: String = at.to_bytes().iter().map(|byte| format!("{byte:02x}")).collect();
        writeln!(stdin, "time {digits}\ntap 0").expect("write");
    }
    stdin.flush().expect("flush");
    // No upload command: the validator's uploader sends the taps within its interval.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while clearing.count("SELECT COUNT(*) FROM transactions") < 2 {
        assert!(std::time::Instant::now() < deadline, "the validator did not upload");
        std::thread::sleep(Duration::from_millis(100));
    }
    writeln!(stdin, "quit").expect("write");
    drop(stdin);
    let output = child.wait_with_output().expect("wait");
    assert!(output.status.success());
    let out = String::from_utf8(output.stdout).expect("utf-8");
    assert_eq!(out.lines().count(), 2, "{out}");
    let day = clearing.run_day(&CardDateTime::from_unix_seconds(midnight).expect("time"));
    assert_eq!((day.cleared, day.quarantined), (2, 0), "{day:?}");
}

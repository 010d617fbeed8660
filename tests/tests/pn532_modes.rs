//! The three terminal modes behind the PN532 emulator, as processes: `terminal
//! bus`, `terminal kiosk` and `terminal counter` (the real binary) with
//! `[reader] kind = "pn532"` on the link of a `card-host serve --card FILE
//! --pn532 PATH` process; the PSAM in-process or in vpcd's slot 1 through
//! pcscd. Each mode's card images, journal and clearing (a real server,
//! run-day) agree; garbage on the serial line in the middle of a session is
//! survived.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use card_host::card::CardImage;
use card_host::pn532::{Pn532, Pty, Uid, frame::FRAME_LENGTH_MAX};
use card_host::{CardDateTime, Fen, TerminalNumber};
use system_tests::clearing::Clearing;
use system_tests::terminal_process::TerminalProcess;
use system_tests::{Rig, assert_cards_agree_with_journal, card_host_binary, issue_card, issue_psam, psam_reader};
use terminal::journal::Journal;
use terminal::reader::InProcess;

const BUS: TerminalNumber = TerminalNumber([0x31, 0x00, 0x00, 0x00, 0x09, 0x01]);
const SHOP: TerminalNumber = TerminalNumber([0x31, 0x00, 0x00, 0x00, 0x09, 0x02]);
const HOSPITAL: TerminalNumber = TerminalNumber([0x31, 0x00, 0x00, 0x00, 0x09, 0x03]);
/// Clearing's local time (the terminals' default too): the business day of now.
const LOCAL_OFFSET_MINUTES: i32 = clearing::api::UTC_OFFSET_MINUTES_DEFAULT;
/// A `card-host serve --card FILE --pn532 LINK` process: an emulated PN532 with
/// the card in its field on a pty linked at LINK. Stopped with SIGTERM (the
/// emulator removes the link) when dropped.
struct Pn532Card {
    child: Child,
}

impl Pn532Card {
    fn serve(card: &Path, link: &Path) -> Pn532Card {
        Pn532Card::serve_with(card, link, &[])
    }

    /// [`Pn532Card::serve`] with more arguments (`--remove-after N`, `--remove-before N`).
    fn serve_with(card: &Path, link: &Path, arguments: &[&str]) -> Pn532Card {
        let mut child = Command::new(card_host_binary())
            .args(["serve", "--card"])
            .arg(card)
            .arg("--pn532")
            .arg(link)
            .args(arguments)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("card-host serve");
        // The line is printed once the pty is linked and the signals handled.
        let mut first = String::new();
        BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut first).expect("read");
        assert!(first.starts_with("PN532 on "), "card-host serve: {first:?}");
        Pn532Card { child }
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill").args([name, &self.child.id().to_string()]).status().expect("kill");
        assert!(status.success(), "kill {name}");
    }

    /// SIGUSR1: the card leaves the field; SIGUSR2: it comes back.
    fn remove(&self) {
        self.signal("-USR1");
    }

    fn insert(&self) {
        self.signal("-USR2");
    }
}

impl Drop for Pn532Card {
    fn drop(&mut self) {
        self.signal("-TERM");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn image(path: &Path) -> CardImage {
    card_host::storage::load(path).expect("card image")
}

/// The terminal's journal in the test's directory.
fn journal_of(directory: &Path) -> Journal {
    Journal::open(&directory.join("journal.sqlite")).expect("journal")
}

fn fixture(path: &str) -> PathBuf {
    card_host::issue::fixtures::directory().join(path)
}

fn write_bus_config(directory: &Path, link: &Path, psam: &Path, address: std::net::SocketAddr) -> PathBuf {
    let config = directory.join("bus.toml");
    std::fs::write(
        &config,
        format!(
            "[bus]\nroute = 42\ntariff = {:?}\ndedup_window_seconds = 600\n\
             [journal]\npath = {:?}\n[clearing]\nurl = \"http://{address}\"\nterminal_id = \"310000000901\"\n\
             device_key = {:?}\nupload_interval_seconds = 0\n\
             [reader]\nkind = \"pn532\"\ndevice = {link:?}\npsam_image = {psam:?}\n",
            fixture("tariffs/bus-flat.toml"),
            directory.join("journal.sqlite"),
            fixture("terminals/device-0901.key"),
        ),
    )
    .expect("config");
    config
}

/// Three cards (ordinary, student, senior) presented one after the other at a
/// `terminal bus` process on a PN532, the first one twice: one line per tap,
/// the second tap of the first card not charged; uploaded and cleared.
#[test]
fn bus_validator_on_a_pn532_taps_uploads_and_clears() {
    let clearing = Clearing::start();
    let (address, _server) = clearing.serve();
    let directory = tempfile::tempdir().expect("temp dir");
    let link = directory.path().join("ttyPN532");
    let opening = Fen(1_000);
    let cards: Vec<PathBuf> = (0..3)
        .map(|profile| {
            let (path, card) = issue_card(directory.path(), profile, opening);
            clearing.register(&mut InProcess::new(card), opening);
            path
        })
        .collect();
    let (psam, _) = issue_psam(directory.path(), BUS);
    let config = write_bus_config(directory.path(), &link, &psam, address);

    // The validator starts before any reader module is on the line: it waits.
    let terminal = TerminalProcess::start(&["bus", "--taps", "4"], &config);
    let mut lines = Vec::new();
    for card in [&cards[0], &cards[1], &cards[2], &cards[0]] {
        // A new emulator process for each presentation: the validator opens the
        // line again after the previous one closed.
        let served = Pn532Card::serve(card, &link);
        lines.push(terminal.line());
        drop(served);
    }
    assert!(terminal.finish(), "terminal bus exits after its taps");
    println!("{}", lines.join("\n"));
    assert!(lines[0].starts_with("PAID 2.00 yuan balance 8.00 card ************0001"), "{}", lines[0]);
    assert!(lines[1].starts_with("PAID 1.00 yuan (student -1.00) balance 9.00"), "{}", lines[1]);
    assert!(lines[2].starts_with("PAID 0.00 yuan (senior -2.00) balance 10.00"), "{}", lines[2]);
    assert!(lines[3].starts_with("ALREADY PAID 2.00 yuan"), "{}", lines[3]);
    let paths: Vec<&Path> = cards.iter().map(PathBuf::as_path).collect();
    let charged = assert_cards_agree_with_journal(&paths, &journal_of(directory.path())).completed_fen;
    assert_eq!(charged, 300);

    let upload = TerminalProcess::start(&["upload"], &config);
    let line = upload.line();
    assert!(line.starts_with("uploaded 3 records"), "{line}");
    assert!(upload.finish());
    let day = clearing.run_day(&CardDateTime::now_at_offset(LOCAL_OFFSET_MINUTES));
    assert_eq!((day.records, day.cleared, day.quarantined), (3, 3, 0), "{day:?}");
    assert_eq!(day.purchases_fen, 300);
    clearing.assert_shadows_match(&paths);
}

/// Two cards in the PN532's field at a `terminal bus` process: one line for
/// the rider (`ONE CARD ONLY`), not repeated while both stay, nothing charged;
/// when one is taken away, the card left in the field is paid at once.
#[test]
fn two_cards_at_a_pn532_validator_are_told_once_and_charged_nothing() {
    let directory = tempfile::tempdir().expect("temp dir");
    let link = directory.path().join("ttyPN532");
    let (first_path, first) = issue_card(directory.path(), 0, Fen(1_000));
    let (second_path, second) = issue_card(directory.path(), 1, Fen(1_000));
    let mut pty = Pty::open(Some(&link)).expect("pty linked");
    let mut chip =
        Pn532::with_cards(vec![(first, Uid::random_single([0, 0, 1])), (second, Uid::random_single([0, 0, 2]))])
            .expect("two cards");
    let control = chip.control();
    let emulator = std::thread::spawn(move || chip.serve(pty.master()).expect("the emulator serves"));
    let (psam, _) = issue_psam(directory.path(), BUS);
    let nobody = std::net::SocketAddr::from(([127, 0, 0, 1], 9));
    let config = write_bus_config(directory.path(), &link, &psam, nobody);

    let terminal = TerminalProcess::start(&["bus", "--taps", "2"], &config);
    assert_eq!(terminal.line(), "ONE CARD ONLY 请只出示一张卡");
    assert_eq!(terminal.line_within(Duration::from_millis(1_500)), None, "told once while both cards stay");
    control.set_present(0, false);
    let paid = terminal.line();
    assert!(paid.starts_with("PAID 1.00 yuan (student -1.00) balance 9.00"), "the card left alone: {paid}");
    assert!(terminal.finish(), "terminal bus exits after its two lines");
    control.stop();
    emulator.join().expect("emulator thread");
    assert_eq!(image(&first_path).purse.balance, Fen(1_000), "the first card was not touched");
    assert_eq!(image(&first_path).purse.offline_counter, 0);
    let counts = assert_cards_agree_with_journal(&[&first_path, &second_path], &journal_of(directory.path()));
    assert_eq!((counts.completed, counts.completed_fen), (1, 100));
}

/// The bus config of [`write_bus_config`] with a `[blacklist]` file.
fn write_bus_config_with_blacklist(
    directory: &Path,
    link: &Path,
    psam: &Path,
    address: std::net::SocketAddr,
) -> (PathBuf, PathBuf) {
    let config = write_bus_config(directory, link, psam, address);
    let blacklist = directory.join("blacklist.toml");
    let mut text = std::fs::read_to_string(&config).expect("config");
    text.push_str(&format!("[blacklist]\npath = {blacklist:?}\n"));
    std::fs::write(&config, text).expect("config");
    (config, blacklist)
}

/// Runs `terminal upload` on `config`: its summary line.
fn upload(config: &Path) -> String {
    let upload = TerminalProcess::start(&["upload"], config);
    let line = upload.line();
    assert!(upload.finish(), "terminal upload: {line}");
    line
}

const DAY_CARDS: u16 = 28;
/// The day's card below the fare (ordinary, 1.50), the one reported lost, the
/// one presented twice in a row.
const DAY_POOR: u16 = 4;
const DAY_LOST: u16 = 8;
const DAY_DOUBLE: u16 = 13;

/// A day on a flat-fare route at a `terminal bus` process on a PN532: 28 cards
/// of four types, each on its own `card-host serve --pn532` process at the same
/// link, one presented twice (charged once), one below the fare (refused), one
/// reported lost at clearing before the day (the blacklist file written by
/// `terminal upload`; refused and blocked). Every fare as the tariff's rules
/// say; the images agree with the journal; uploaded by `terminal upload`,
/// run-day clears every record, nothing in quarantine, shadows = cards.
/// (`bus_day.rs` is the pcscd version; both use `system_tests::bus_day`.)
#[test]
fn a_day_on_a_flat_route_through_the_pn532_clears_with_no_quarantine() {
    use system_tests::bus_day::{self, card_type, flat_fare};
    let started = Instant::now();
    let clearing = Clearing::start();
    let (address, _server) = clearing.serve();
    let directory = tempfile::tempdir().expect("temp dir");
    let link = directory.path().join("ttyPN532");
    let cards: Vec<PathBuf> = (0..DAY_CARDS)
        .map(|n| {
            let balance = if n == DAY_POOR { Fen(150) } else { Fen(5_000) };
            bus_day::issue_card(&clearing, directory.path(), n, balance).0
        })
        .collect();
    let (psam, _) = issue_psam(directory.path(), BUS);
    let (config, blacklist) = write_bus_config_with_blacklist(directory.path(), &link, &psam, address);
    let now = CardDateTime::now_at_offset(LOCAL_OFFSET_MINUTES);
    let lost = bus_day::serial(DAY_LOST);
    clearing.runtime.block_on(clearing::registry::report_loss(&clearing.db, &lost, &now)).expect("loss");
    let line = upload(&config);
    assert!(line.contains("blacklist version 1 (1 cards)"), "{line}");
    assert!(terminal::blacklist::Blacklist::load(&blacklist).expect("blacklist file").contains(&lost));

    let presentations: Vec<u16> =
        (0..DAY_CARDS).flat_map(|n| if n == DAY_DOUBLE { vec![n, n] } else { vec![n] }).collect();
    let taps = presentations.len().to_string();
    let terminal = TerminalProcess::start(&["bus", "--taps", &taps], &config);
    let mut charged = 0u64;
    let mut previous = None;
    for &n in &presentations {
        let served = Pn532Card::serve(&cards[usize::from(n)], &link);
        let line = terminal.line();
        drop(served);
        let fare = flat_fare(card_type(n), false);
        match n {
            DAY_LOST => assert!(line.starts_with("REFUSED card blocked (blacklist v1)"), "card {n}: {line}"),
            DAY_POOR => assert!(line.starts_with("REFUSED balance 1.50 below fare 2.00"), "card {n}: {line}"),
            _ if previous == Some(n) => assert!(line.starts_with("ALREADY PAID"), "card {n} again: {line}"),
            _ => {
                assert!(line.starts_with(&format!("PAID {} yuan", Fen(fare))), "card {n} ({:?}): {line}", card_type(n));
                charged += u64::from(fare);
            }
        }
        previous = Some(n);
    }
    assert!(terminal.finish(), "terminal bus exits after its taps");
    assert!(image(&cards[usize::from(DAY_LOST)]).purse.spent_total == 0);

    let journal = journal_of(directory.path());
    let completed = journal.counts().expect("counts").completed;
    let line = upload(&config);
    assert!(line.starts_with(&format!("uploaded {completed} records (0 grey)")), "{line}");
    let paths: Vec<&Path> = cards.iter().map(PathBuf::as_path).collect();
    let day = bus_day::assert_day_clears(&clearing, &journal, &paths, &now, charged);
    println!(
        "{DAY_CARDS} cards on a PN532: {completed} debits, {charged} fen, {} cleared in {:?}",
        day.cleared,
        started.elapsed()
    );
}

/// A tap through a `terminal bus` process on a PN532 torn at every card APDU
/// (`card-host serve --remove-before N` / `--remove-after N`, a new card each
/// time), the card then put back (SIGUSR2): each rider is charged exactly once
/// — never twice (a DEBIT the card carried out is proved, `ALREADY PAID`),
/// never lost (a torn one is paid on the second presentation); the images agree
/// with the journal, and after the upload run-day clears it all.
#[test]
fn a_tap_torn_at_every_apdu_on_the_pn532_is_charged_exactly_once() {
    use system_tests::bus_day::{self, card_type, flat_fare};
    let clearing = Clearing::start();
    let (address, _server) = clearing.serve();
    let directory = tempfile::tempdir().expect("temp dir");
    let link = directory.path().join("ttyPN532");
    let (psam, _) = issue_psam(directory.path(), BUS);
    let config = write_bus_config(directory.path(), &link, &psam, address);
    let terminal = TerminalProcess::start(&["bus"], &config);
    let mut cards = Vec::new();
    let mut charged = 0u64;
    let mut torn = 0;
    for point in ["--remove-before", "--remove-after"] {
        for apdu in 1u32.. {
            assert!(apdu < 20, "a tap is a handful of APDUs");
            let n = u16::try_from(cards.len()).expect("small");
            let (path, _) = bus_day::issue_card(&clearing, directory.path(), n, Fen(5_000));
            let fare = flat_fare(card_type(n), false);
            let served = Pn532Card::serve_with(&path, &link, &[point, &apdu.to_string()]);
            let first = terminal.line();
            cards.push(path.clone());
            charged += u64::from(fare);
            if first.starts_with("PAID") {
                // The tap took fewer APDUs: nothing torn, this point is done.
                drop(served);
                assert_eq!(image(&path).purse.spent_total, u64::from(fare));
                break;
            }
            torn += 1;
            assert!(first.starts_with("PRESENT CARD AGAIN"), "{point} {apdu}: {first}");
            served.insert();
            let second = terminal.line();
            drop(served);
            assert!(second.starts_with("PAID") || second.starts_with("ALREADY PAID"), "{point} {apdu}: {second}");
            let card = image(&path);
            assert_eq!(
                (card.purse.offline_counter, card.purse.spent_total),
                (1, u64::from(fare)),
                "{point} {apdu}: charged exactly once ({first} / {second})"
            );
            println!("{point} {apdu}: {first} / {second}");
        }
    }
    drop(terminal);
    assert!(torn >= 10, "{torn} torn taps");
    let journal = journal_of(directory.path());
    let line = upload(&config);
    assert!(line.starts_with(&format!("uploaded {} records", journal.counts().expect("counts").completed)), "{line}");
    let paths: Vec<&Path> = cards.iter().map(PathBuf::as_path).collect();
    bus_day::assert_day_clears(
        &clearing,
        &journal,
        &paths,
        &CardDateTime::now_at_offset(LOCAL_OFFSET_MINUTES),
        charged,
    );
}

const KILL_TRIALS: u64 = 24;
const KILL_CARDS: u16 = 6;

/// `kill -9` of a `terminal bus` process on a PN532 in the middle of its taps,
/// then a restart: no completed debit is missing from the journal. Six cards
/// take turns, each on its own `card-host serve --pn532` process; each trial
/// starts a validator on the card in the field and kills it — in odd trials
/// at a seeded random moment (`KILL_SEED` replays), in even ones as soon as
/// the journal shows the trial's intent (plus a seeded 0-2 ms: before DEBIT
/// is sent, while the card carries it out, before the completion is written),
/// so that some kills surely fall in the middle of a purchase. Then each card
/// is presented once more to a validator that runs to the end: every intent
/// settled by the card, one completed row per card debit, the money the same.
#[test]
fn kill_9_of_a_pn532_validator_mid_tap_loses_no_debit() {
    use rand::{Rng, SeedableRng};
    use system_tests::bus_day;
    let seed = std::env::var("KILL_SEED").ok().and_then(|text| text.parse().ok()).unwrap_or(0x5EED_u64);
    let mut random = rand::rngs::StdRng::seed_from_u64(seed);
    let clearing = Clearing::start();
    let directory = tempfile::tempdir().expect("temp dir");
    let link = directory.path().join("ttyPN532");
    let cards: Vec<PathBuf> =
        (0..KILL_CARDS).map(|n| bus_day::issue_card(&clearing, directory.path(), n, Fen(50_000)).0).collect();
    let (psam, _) = issue_psam(directory.path(), BUS);
    let nobody = std::net::SocketAddr::from(([127, 0, 0, 1], 9));
    let config = write_bus_config(directory.path(), &link, &psam, nobody);
    // Every tap charges (no dedup window): each kill may fall in a purchase.
    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(&config, text.replace("dedup_window_seconds = 600", "dedup_window_seconds = 0")).expect("config");
    journal_of(directory.path()).close();
    let mut watch = system_tests::JournalWatch::open(&directory.path().join("journal.sqlite"));

    let mut killed_with_intent = 0;
    for trial in 0..KILL_TRIALS {
        let served = Pn532Card::serve(&cards[(trial % u64::from(KILL_CARDS)) as usize], &link);
        let (before, _) = watch.newest_row();
        let terminal = TerminalProcess::start(&["bus"], &config);
        if trial % 2 == 0 {
            watch.wait_for_row_after(before, Duration::from_secs(10));
            std::thread::sleep(Duration::from_micros(random.random_range(0..2_000)));
        } else {
            std::thread::sleep(Duration::from_millis(random.random_range(0..800)));
        }
        drop(terminal); // SIGKILL
        let (after, open) = watch.newest_row();
        killed_with_intent += u32::from(after > before && open);
        drop(served);
    }
    // Each card once more, to a validator that finishes its tap.
    for card in &cards {
        let served = Pn532Card::serve(card, &link);
        let terminal = TerminalProcess::start(&["bus", "--taps", "1"], &config);
        let line = terminal.line();
        assert!(line.starts_with("PAID") || line.starts_with("ALREADY PAID"), "{line}");
        assert!(terminal.finish());
        drop(served);
    }
    let paths: Vec<&Path> = cards.iter().map(PathBuf::as_path).collect();
    let counts = assert_cards_agree_with_journal(&paths, &journal_of(directory.path()));
    println!(
        "seed {seed:#x}: {KILL_TRIALS} kills, {killed_with_intent} left an intent open, {} debits",
        counts.completed
    );
    // The even trials kill right after the intent is written: at least one of
    // them lands before the completion.
    assert!(killed_with_intent > 0, "no kill fell in a purchase (seed {seed:#x})");
    assert!(counts.completed >= u64::from(KILL_CARDS), "the final taps at least");
}

/// `terminal kiosk` with the card on a PN532 and the PSAM in vpcd's slot 1
/// through pcscd: a top-up authorised by a real clearing, a water bill, the
/// balance, the upload; run-day clears both, the shadow account is the card.
#[test]
fn kiosk_on_a_pn532_tops_up_and_pays_a_bill_that_clear() {
    let rig = Rig::new(SHOP);
    let clearing = Clearing::start();
    let (address, _server) = clearing.serve();
    let directory = tempfile::tempdir().expect("temp dir");
    let link = directory.path().join("ttyPN532");
    let (card_path, card) = issue_card(directory.path(), 0, Fen(1_000));
    clearing.register(&mut InProcess::new(card), Fen(1_000));
    let config = directory.path().join("kiosk.toml");
    std::fs::write(
        &config,
        format!(
            "[journal]\npath = {:?}\n[clearing]\nurl = \"http://{address}\"\n\
             terminal_id = \"310000000902\"\ndevice_key = {:?}\n\
             [reader]\nkind = \"pn532\"\ndevice = {link:?}\npsam_reader = {:?}\n",
            directory.path().join("journal.sqlite"),
            fixture("terminals/device-0902.key"),
            psam_reader(),
        ),
    )
    .expect("config");
    let served = Pn532Card::serve(&card_path, &link);
    let mut kiosk = TerminalProcess::start(&["kiosk"], &config);
    let loaded = kiosk.command("topup 500");
    assert_eq!(loaded, "loaded 5.00 balance 15.00", "{loaded}");
    let paid = kiosk.command("bill water W-7 120");
    assert_eq!(paid, "paid water 1.20 W-7");
    let balance = kiosk.command("balance");
    assert!(balance.ends_with("balance 13.80"), "{balance}");
    // The last 10 transactions follow the balance: the bill and the load.
    assert!(kiosk.line().contains("#1"));
    assert!(kiosk.line().contains("#"));
    // No card in the field: the kiosk says so and stays open for the next citizen.
    served.remove();
    // The emulator takes the card out when it handles the signal: until then a
    // balance still answers (with its two transaction lines), and a card taken
    // out in the middle of a read is refused (one line, `refused: …`).
    let mut refused = kiosk.command("balance");
    for _ in 0..50 {
        if refused.starts_with("ERROR") {
            break;
        }
        if !refused.starts_with("refused: ") {
            assert!(kiosk.line().contains('#') && kiosk.line().contains('#'), "{refused}");
        }
        std::thread::sleep(Duration::from_millis(100));
        refused = kiosk.command("balance");
    }
    assert!(refused.starts_with("ERROR no card presented"), "{refused}");
    served.insert();
    let mut balance = kiosk.command("balance");
    for _ in 0..50 {
        if !balance.starts_with("ERROR") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        balance = kiosk.command("balance");
    }
    assert!(balance.ends_with("balance 13.80"), "the kiosk still serves: {balance}");
    assert!(kiosk.line().contains("#1") && kiosk.line().contains("#"));
    let uploaded = kiosk.command("upload");
    assert!(uploaded.starts_with("uploaded 1 records"), "{uploaded}");
    kiosk.command_quit();
    drop(served);
    drop(rig);

    assert_eq!(image(&card_path).purse.balance, Fen(1_380));
    assert_eq!(assert_cards_agree_with_journal(&[&card_path], &journal_of(directory.path())).completed_fen, 120);
    let journal = Journal::open(&directory.path().join("journal.sqlite")).expect("journal");
    assert!(journal.unconfirmed_loads().expect("loads").is_empty(), "the load was confirmed");
    assert_eq!(clearing.count("SELECT COUNT(*) FROM topups WHERE state = 'confirmed'"), 1);
    let day = clearing.run_day(&CardDateTime::now_at_offset(LOCAL_OFFSET_MINUTES));
    assert_eq!((day.cleared, day.quarantined, day.loads_fen, day.purchases_fen), (2, 0, 500, 120), "{day:?}");
    clearing.assert_shadows_match(&[&card_path]);
}

/// `terminal counter` with the card on a PN532, the PSAM in-process: a wrong
/// PIN refused, the patient read, a visit with a co-payment; the PIN never on
/// the output; the visit on the card; run-day clears the co-payment.
#[test]
fn counter_on_a_pn532_reads_the_patient_and_takes_a_co_payment() {
    let clearing = Clearing::start();
    let (address, _server) = clearing.serve();
    let directory = tempfile::tempdir().expect("temp dir");
    let link = directory.path().join("ttyPN532");
    let (card_path, card) = issue_card(directory.path(), 0, Fen(5_000));
    clearing.register(&mut InProcess::new(card), Fen(5_000));
    let (psam, _) = issue_psam(directory.path(), HOSPITAL);
    let config = directory.path().join("counter.toml");
    std::fs::write(
        &config,
        format!(
            "[counter]\nhospital = \"310000000903\"\ndepartment = 12\n[journal]\npath = {:?}\n\
             [clearing]\nurl = \"http://{address}\"\nterminal_id = \"310000000903\"\ndevice_key = {:?}\n\
             [reader]\nkind = \"pn532\"\ndevice = {link:?}\npsam_image = {psam:?}\n",
            directory.path().join("journal.sqlite"),
            fixture("terminals/device-0903.key"),
        ),
    )
    .expect("config");
    let served = Pn532Card::serve(&card_path, &link);
    let mut counter = TerminalProcess::start(&["counter"], &config);
    let refused = counter.command("patient 000000");
    assert!(refused.starts_with("refused: VERIFY"), "{refused}");
    let patient = counter.command("patient 123456");
    assert!(patient.contains("patient P31000000001") && patient.contains("0 earlier visits"), "{patient}");
    let visit = counter.command("visit 123456 1 1550");
    assert!(visit.ends_with("co-payment 15.50"), "{visit}");
    let again = counter.command("patient 123456");
    assert!(again.contains("1 earlier visits"), "the visit is on the card: {again}");
    let uploaded = counter.command("upload");
    assert!(uploaded.starts_with("uploaded 1 records"), "{uploaded}");
    for line in [&refused, &patient, &visit, &again, &uploaded] {
        assert!(!line.contains("123456"), "the PIN is never echoed: {line}");
    }
    counter.command_quit();
    drop(served);

    assert_eq!(image(&card_path).purse.balance, Fen(3_450));
    assert_eq!(assert_cards_agree_with_journal(&[&card_path], &journal_of(directory.path())).completed_fen, 1_550);
    let day = clearing.run_day(&CardDateTime::now_at_offset(LOCAL_OFFSET_MINUTES));
    assert_eq!((day.cleared, day.quarantined, day.purchases_fen), (1, 0, 1_550), "{day:?}");
    clearing.assert_shadows_match(&[&card_path]);
}

/// Bytes a [`NoisyProxy`] put on the line.
#[derive(Default)]
struct Injected {
    garbage_to_terminal: AtomicUsize,
    broken_to_terminal: AtomicUsize,
    garbage_to_module: AtomicUsize,
}

/// Line noise: stray bytes, a wake-up, fake start codes, a frame cut short, a
/// frame with a bad checksum.
const GARBAGE: [&[u8]; 4] = [
    &[0x13, 0x37, 0x00, 0xFF, 0x42],
    &[0x55, 0x55, 0x00, 0x00, 0x00, 0x00, 0xFF, 0xFF, 0xFF, 0x7F],
    &[0x00, 0x00, 0xFF, 0x03, 0xFD, 0xD5, 0x41],
    &[0x00, 0x00, 0xFF, 0x03, 0xFD, 0xD5, 0x4B, 0x00, 0x00, 0x00],
];

/// A serial line between the terminal (on a pty linked at `link`) and the
/// emulated PN532 (its pty at `module`), forwarding both ways and putting
/// garbage on the line now and then in the middle of the sessions, and
/// breaking a frame to the terminal (one bit of its data flipped).
struct NoisyProxy {
    injected: Arc<Injected>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    _pty: Arc<std::sync::Mutex<Pty>>,
}

impl NoisyProxy {
    fn start(link: &Path, module: &Path) -> NoisyProxy {
        use serialport::SerialPort;
        let mut pty = Pty::open(Some(link)).expect("the terminal's pty");
        let mut to_terminal = pty.master().try_clone_native().expect("clone");
        let mut from_terminal = pty.master().try_clone_native().expect("clone");
        let mut module_port = serialport::new(module.to_string_lossy(), 115_200)
            .timeout(Duration::from_millis(10))
            .open_native()
            .expect("the module's pty");
        let mut to_module = module_port.try_clone_native().expect("clone");
        from_terminal.set_timeout(Duration::from_millis(10)).expect("timeout");
        module_port.set_timeout(Duration::from_millis(10)).expect("timeout");
        let injected = Arc::new(Injected::default());
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut threads = Vec::new();
        {
            let (injected, stop) = (Arc::clone(&injected), Arc::clone(&stop));
            threads.push(std::thread::spawn(move || {
                let mut buffer = [0u8; FRAME_LENGTH_MAX];
                let mut chunks = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let count = match module_port.read(&mut buffer) {
                        Ok(count) => count,
                        Err(error) if error.kind() == std::io::ErrorKind::TimedOut => continue,
                        Err(_) => break,
                    };
                    chunks += 1;
                    let mut chunk = buffer[..count].to_vec();
                    // After the start-up, now and then: garbage before the chunk,
                    // or a flipped bit in an answer's data (the terminal NACKs it).
                    if chunks > 6 && chunks.is_multiple_of(7) {
                        to_terminal.write_all(GARBAGE[chunks / 7 % GARBAGE.len()]).expect("garbage");
                        injected.garbage_to_terminal.fetch_add(1, Ordering::Relaxed);
                    }
                    if chunks > 6 && chunks.is_multiple_of(11) && chunk.len() > 8 {
                        let at = chunk.len() - 3;
                        chunk[at] ^= 0x10;
                        injected.broken_to_terminal.fetch_add(1, Ordering::Relaxed);
                    }
                    if to_terminal.write_all(&chunk).is_err() {
                        break;
                    }
                }
            }));
        }
        {
            let (injected, stop) = (Arc::clone(&injected), Arc::clone(&stop));
            threads.push(std::thread::spawn(move || {
                let mut buffer = [0u8; FRAME_LENGTH_MAX];
                let mut chunks = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let count = match from_terminal.read(&mut buffer) {
                        Ok(count) => count,
                        Err(error) if error.kind() == std::io::ErrorKind::TimedOut => continue,
                        Err(_) => {
                            std::thread::sleep(Duration::from_millis(10));
                            continue;
                        }
                    };
                    chunks += 1;
                    if chunks > 6 && chunks.is_multiple_of(5) {
                        to_module.write_all(GARBAGE[chunks / 5 % GARBAGE.len()]).expect("garbage");
                        injected.garbage_to_module.fetch_add(1, Ordering::Relaxed);
                    }
                    if to_module.write_all(&buffer[..count]).is_err() {
                        break;
                    }
                }
            }));
        }
        NoisyProxy { injected, stop, threads, _pty: Arc::new(std::sync::Mutex::new(pty)) }
    }
}

impl Drop for NoisyProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Garbage and broken frames on the serial line in the middle of the sessions
/// (both ways): the `terminal bus` process resynchronises, NACKs the broken
/// answers, and every tap is still one line and charged once.
#[test]
fn garbage_on_the_pn532_line_mid_session_is_survived() {
    let directory = tempfile::tempdir().expect("temp dir");
    let module = directory.path().join("ttyModule");
    let link = directory.path().join("ttyPN532");
    let (card_path, _) = issue_card(directory.path(), 0, Fen(1_000));
    let (psam, _) = issue_psam(directory.path(), BUS);
    // No clearing here (nothing is uploaded: upload_interval_seconds = 0).
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("address");
    let config = write_bus_config(directory.path(), &link, &psam, dead);
    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(&config, text.replace("dedup_window_seconds = 600", "dedup_window_seconds = 0")).expect("config");

    let served = Pn532Card::serve(&card_path, &module);
    let proxy = NoisyProxy::start(&link, &module);
    let terminal = TerminalProcess::start(&["bus", "--taps", "3"], &config);
    let mut lines = Vec::new();
    for tap in 0..3 {
        lines.push(terminal.line());
        if tap < 2 {
            // The rider walks away and taps again later.
            served.remove();
            std::thread::sleep(Duration::from_millis(1_500));
            served.insert();
        }
    }
    assert!(terminal.finish(), "terminal bus exits after its taps");
    println!("{}", lines.join("\n"));
    for (n, line) in lines.iter().enumerate() {
        let balance = 1_000 - 200 * (n + 1);
        assert!(
            line.starts_with(&format!("PAID 2.00 yuan balance {}.00", balance / 100)),
            "tap {n} through the noise: {line}"
        );
    }
    let injected = &proxy.injected;
    let (to_terminal, broken, to_module) = (
        injected.garbage_to_terminal.load(Ordering::Relaxed),
        injected.broken_to_terminal.load(Ordering::Relaxed),
        injected.garbage_to_module.load(Ordering::Relaxed),
    );
    println!("garbage to the terminal {to_terminal}, broken frames {broken}, garbage to the module {to_module}");
    assert!(to_terminal >= 3 && broken >= 1 && to_module >= 3, "{to_terminal} {broken} {to_module}");
    drop(proxy);
    drop(served);
    assert_eq!(image(&card_path).purse.balance, Fen(400));
    assert_eq!(assert_cards_agree_with_journal(&[&card_path], &journal_of(directory.path())).completed_fen, 600);
}

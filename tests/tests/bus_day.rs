//! A day on a bus route through the real pcscd + vpcd: 36 cards of mixed types
//! (ordinary, student, senior, disabled) tap in and out along a distance-tariff
//! route, one card changing to another route within the transfer window, one
//! tapping twice within seconds (charged once), one below the fare (refused at
//! tap-out), one reported lost (refused and blocked). Every fare is checked
//! against the tariff computed here from its rules; then the journal goes to a
//! real clearing server and run-day clears it: nothing in quarantine, each
//! card's shadow account is its image's balance.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use card_host::card::{CardImage, CitizenCard};
use card_host::issue;
use card_host::vpcd::{Control, SLOT0_PORT};
use card_host::{CardDateTime, Fen, SmartCard, TerminalNumber};
use clearing::registry;
use system_tests::bus_day::{assert_day_clears, card_type, distance_fare, issue_card, serial};
use system_tests::clearing::Clearing;
use system_tests::{Rig, ServedCard, assert_cards_agree_with_journal, card_reader, wait_for_reader};
use terminal::CardSession;
use terminal::blacklist::Blacklist;
use terminal::bus::{Boarding, BusSettings, Refusal, Tap, Validator};
use terminal::journal::Journal;
use terminal::psam::PsamSession;
use terminal::tariff::Tariff;
use terminal::upload::{self, ClearingClient, DeviceKey, RetryPolicy};

/// The fixture bus terminal clearing knows (merchant M-BUS-01).
const BUS: TerminalNumber = TerminalNumber([0x31, 0x00, 0x00, 0x00, 0x09, 0x01]);
const CARDS: u16 = 36;
const OPENING: Fen = Fen(5_000);
/// The card below the fare, the one tapping twice, the one changing routes,
/// the lost one.
const POOR: u16 = 5;
const DOUBLE_TAP: u16 = 9;
const TRANSFER: u16 = 12;
const LOST: u16 = 22;
const ROUTE: u16 = 42;
const OTHER_ROUTE: u16 = 43;

/// The day's cards behind one vpcd bridge: the one in the reader is
/// `current`'s. A swap is the bridge's [`Control::remove`], a new `current`,
/// [`Control::insert`]: pcscd sees the card go and a new one come.
struct Deck {
    cards: Vec<CitizenCard>,
    current: Arc<AtomicUsize>,
}

impl Deck {
    fn card(&mut self) -> &mut CitizenCard {
        let current = self.current.load(Ordering::SeqCst);
        &mut self.cards[current]
    }
}

impl SmartCard for Deck {
    fn atr(&self) -> Vec<u8> {
        self.cards[self.current.load(Ordering::SeqCst)].atr()
    }

    fn power_on(&mut self) {
        self.card().power_on();
    }

    fn power_off(&mut self) {
        self.card().power_off();
    }

    fn transmit(&mut self, command: &[u8]) -> Vec<u8> {
        self.card().transmit(command)
    }
}

/// Takes the card in the reader out and puts card `n` in.
fn swap(control: &Control, current: &AtomicUsize, n: u16) {
    control.remove();
    wait_for_reader(&card_reader(), false);
    current.store(usize::from(n), Ordering::SeqCst);
    control.insert();
    wait_for_reader(&card_reader(), true);
}

fn image(path: &Path) -> CardImage {
    card_host::storage::load(path).expect("card image")
}

/// The route's stops for card `n`: where it boards and where it alights.
fn trip(n: u16) -> (u16, u16) {
    let entry = n % 5;
    (entry, entry + 1 + (n * 7) % 20)
}

#[test]
fn a_day_on_a_bus_route_through_pcscd_clears_with_no_quarantine() {
    let started = Instant::now();
    let rig = Rig::new(BUS);
    let clearing = Clearing::start();
    let (address, _server) = clearing.serve();
    let key = DeviceKey::load(&issue::fixtures::directory().join("terminals/device-0901.key")).expect("key");
    let retry =
        RetryPolicy { attempts: 3, backoff_initial: Duration::from_millis(5), backoff_max: Duration::from_millis(20) };
    let client = ClearingClient::new(&format!("http://{address}"), BUS, key, retry);

    let mut cards = Vec::new();
    for n in 0..CARDS {
        let balance = if n == POOR { Fen(100) } else { OPENING };
        cards.push(issue_card(&clearing, rig.directory.path(), n, balance));
    }
    // The issuer reports one card lost before the day: the validator's
    // blacklist comes from clearing.
    let midnight = CardDateTime::now_utc().unix_seconds() / 86_400 * 86_400;
    let at = |seconds: u64| CardDateTime::from_unix_seconds(midnight + seconds).expect("time");
    clearing.runtime.block_on(registry::report_loss(&clearing.db, &serial(LOST), &at(0))).expect("loss");
    let blacklist = upload::refresh_blacklist(&client, &Blacklist::empty()).expect("blacklist");
    assert!(blacklist.contains(&serial(LOST)));

    let tariff = Tariff::load(&issue::fixtures::directory().join("tariffs/bus-distance.toml")).expect("tariff");
    let journal = Journal::open(&rig.directory.path().join("journal.sqlite")).expect("journal");
    let settings = BusSettings { route: ROUTE, station: 0, dedup_window_seconds: 10 };
    let mut validator =
        Validator::new(settings, tariff, blacklist, journal, Duration::from_secs(86_400)).expect("validator");
    let mut psam_channel = rig.psam_channel();
    let mut psam = PsamSession::open(CardSession::new(&mut psam_channel)).expect("PSAM");

    let mut charged = 0u64;
    let mut paths = Vec::new();
    let mut tap = |validator: &mut Validator, station: u16, seconds: u64| -> Tap {
        validator.set_station(station);
        let mut channel = rig.card_channel();
        let tap = validator.tap(&mut channel, &mut psam, at(seconds));
        channel.disconnect();
        tap
    };
    let (paths_by_card, cards): (Vec<PathBuf>, Vec<CitizenCard>) = cards.into_iter().unzip();
    let current = Arc::new(AtomicUsize::new(0));
    let served = ServedCard::serve(Deck { cards, current: Arc::clone(&current) }, SLOT0_PORT);
    for (n, path) in (0..CARDS).zip(paths_by_card) {
        // One card at a time in the reader: the previous one leaves first.
        if n > 0 {
            swap(served.control(), &current, n);
        }
        let kind = card_type(n);
        let (entry, exit) = trip(n);
        let boarding = 3_600 + u64::from(n) * 120;
        let tapped_in = tap(&mut validator, entry, boarding);
        if n == LOST {
            assert!(
                matches!(tapped_in, Tap::Refused { reason: Refusal::Blacklisted { blocked: true, .. }, .. }),
                "{tapped_in}"
            );
            // The block is on the card: presented again, it answers as blocked.
            let again = tap(&mut validator, entry, boarding + 30);
            assert!(matches!(again, Tap::Refused { reason: Refusal::CardBlocked, .. }), "{again}");
            paths.push((n, path));
            continue;
        }
        assert!(matches!(tapped_in, Tap::Paid { boarding: Boarding::TapIn { unfinished: None }, .. }), "{tapped_in}");
        if n == DOUBLE_TAP {
            // The rider taps again three seconds later: let through, not charged.
            let again = tap(&mut validator, entry, boarding + 3);
            assert!(matches!(again, Tap::AlreadyPaid { .. }), "{again}");
        }
        let stations = exit - entry;
        let tapped_out = tap(&mut validator, exit, boarding + 600 + u64::from(stations) * 90);
        let fare = distance_fare(stations, kind, false);
        if n == POOR {
            assert!(matches!(tapped_out, Tap::Refused { reason: Refusal::BelowFare(_), .. }), "{tapped_out}");
            assert!(fare > 100, "the fare is above the card's balance");
        } else {
            match &tapped_out {
                Tap::Paid { boarding: Boarding::TapOut { stations: counted }, quote, .. } => {
                    assert_eq!(*counted, stations, "card {n}");
                    assert_eq!(quote.amount, Fen(fare), "card {n} ({kind:?}, {stations} stations): {tapped_out}");
                }
                other => panic!("card {n}: {other}"),
            }
            charged += u64::from(fare);
        }
        if n == TRANSFER {
            // The same rider boards route 43 at once: a transfer, 1.00 off.
            validator.set_route(OTHER_ROUTE);
            let later = boarding + 600 + u64::from(stations) * 90 + 300;
            let tapped_in = tap(&mut validator, 2, later);
            assert!(matches!(tapped_in, Tap::Paid { boarding: Boarding::TapIn { .. }, .. }), "{tapped_in}");
            let tapped_out = tap(&mut validator, 12, later + 1_200);
            let fare = distance_fare(10, kind, true);
            match &tapped_out {
                Tap::Paid { quote, .. } => {
                    assert_eq!(quote.amount, Fen(fare), "{tapped_out}");
                    assert_eq!(quote.transfer_off, Fen(100), "{tapped_out}");
                }
                other => panic!("transfer: {other}"),
            }
            charged += u64::from(fare);
            validator.set_route(ROUTE);
        }
        println!("card {n:2} {kind:?}: {tapped_in} / {tapped_out}");
        paths.push((n, path));
    }
    drop(served);

    // Every card paid what the tariff says (its opening less its spending).
    let images: Vec<(u16, CardImage)> = paths.iter().map(|(n, path)| (*n, image(path))).collect();
    for (n, image) in &images {
        let opening = if *n == POOR { 100 } else { OPENING.0 };
        assert_eq!(u64::from(opening - image.purse.balance.0), image.purse.spent_total, "card {n}");
    }

    // Upload; the images agree with the journal; run-day clears every record
    // with nothing in quarantine, each shadow account its card.
    let completed = validator.journal().counts().expect("counts").completed;
    let summary = upload::upload_pending(validator.journal(), &client, 1_000).expect("upload");
    assert_eq!((summary.records, summary.rejected), (completed, 0), "{summary:?}");
    let card_paths: Vec<&Path> = paths.iter().map(|(_, path)| path.as_path()).collect();
    let day = assert_day_clears(&clearing, validator.journal(), &card_paths, &at(3_600), charged);
    let counts = validator.journal().counts().expect("counts");
    println!(
        "{CARDS} cards, {} debits, {} fen charged, {} records cleared in {:?}",
        counts.completed,
        charged,
        day.cleared,
        started.elapsed()
    );
}

/// The PSAM leaves its reader (slot 1, through pcscd) in the middle of a tap,
/// at INIT SAM FOR PURCHASE and at CREDIT SAM FOR PURCHASE, before and after
/// the PSAM acts, and comes back: the validator reconnects to it and opens the
/// PSAM session again without a restart; the rider's next tap is charged only
/// if the torn one was not. Also the PSAM taken out and back between taps.
#[test]
fn psam_reader_fault_mid_tap_reconnects_and_never_charges_twice() {
    use card_host::vpcd::{Tear, TearPoint};
    use system_tests::psam_reader;
    use terminal::reader::pcsc::PcscSlot;
    let mut rig = Rig::new(BUS);
    let card = rig.serve_card(0, OPENING);
    let tariff = Tariff::load(&issue::fixtures::directory().join("tariffs/bus-flat.toml")).expect("tariff");
    let journal = Journal::open(&rig.directory.path().join("journal.sqlite")).expect("journal");
    let settings = BusSettings { route: ROUTE, station: 1, dedup_window_seconds: 10 };
    let validator =
        Validator::new(settings, tariff, Blacklist::empty(), journal, Duration::from_secs(86_400)).expect("validator");
    let mut slot = PcscSlot::connect(&psam_reader(), Duration::from_secs(10)).expect("PSAM reader");
    let mut psam = PsamSession::open(CardSession::new(&mut slot)).expect("PSAM");
    let psam_back = |rig: &Rig| {
        wait_for_reader(&psam_reader(), false);
        rig.psam().control().insert();
        wait_for_reader(&psam_reader(), true);
    };
    let at = |minute: u64| CardDateTime::new(2026, 11, 25, 8, 0, 0).expect("valid").unix_seconds() + minute * 60;
    let at = |minute: u64, second: u64| CardDateTime::from_unix_seconds(at(minute) + second).expect("time");

    let mut expected = OPENING.0;
    let mut minute = 0;
    // PSAM APDUs of a flat-fare tap: INIT SAM FOR PURCHASE (1), CREDIT SAM FOR PURCHASE (2).
    for (apdu, point) in [
        (1, TearPoint::BeforeCommand),
        (1, TearPoint::AfterCommand),
        (2, TearPoint::BeforeCommand),
        (2, TearPoint::AfterCommand),
    ] {
        minute += 1;
        // A session left stale by the previous round opens first: 3 APDUs
        // (READ BINARY terminal number, SELECT, READ BINARY key index).
        let reopening = if psam.is_stale() { 3 } else { 0 };
        rig.psam().control().tear_at(Tear { apdu: apdu + reopening, point });
        let mut channel = rig.card_channel();
        let torn = validator.tap(&mut channel, &mut psam, at(minute, 0));
        channel.disconnect();
        assert!(
            matches!(&torn, Tap::Refused { reason: Refusal::TerminalFault(_), .. }),
            "PSAM torn at APDU {apdu} {point:?}: {torn}"
        );
        let debited = apdu == 2;
        if debited {
            expected -= 200;
        }
        assert_eq!(image(&card).purse.balance, Fen(expected), "PSAM torn at APDU {apdu} {point:?}: {torn}");
        psam_back(&rig);

        // The rider taps again two seconds later: the same validator, the PSAM back.
        let mut channel = rig.card_channel();
        let again = validator.tap(&mut channel, &mut psam, at(minute, 2));
        channel.disconnect();
        println!("PSAM torn at APDU {apdu} {point:?}: {torn} / {again}");
        if debited {
            // Let through by the dedup window: the PSAM is not needed.
            assert!(matches!(again, Tap::AlreadyPaid { .. }), "not charged again: {again}");
        } else {
            assert!(matches!(again, Tap::Paid { .. }), "{again}");
            assert!(!psam.is_stale(), "the PSAM session is open again");
            expected -= 200;
        }
        assert_eq!(image(&card).purse.balance, Fen(expected), "PSAM torn at APDU {apdu} {point:?}: charged once");
        assert_eq!(assert_cards_agree_with_journal(&[&card], validator.journal()).completed, minute);
    }

    // The PSAM taken out and put back between two taps: the next tap reconnects
    // and is charged once.
    rig.psam().control().remove();
    psam_back(&rig);
    minute += 1;
    let mut channel = rig.card_channel();
    let tap = validator.tap(&mut channel, &mut psam, at(minute, 0));
    channel.disconnect();
    assert!(matches!(tap, Tap::Paid { .. }), "after the PSAM came back: {tap}");
    expected -= 200;
    assert_eq!(image(&card).purse.balance, Fen(expected));
    assert_eq!(assert_cards_agree_with_journal(&[&card], validator.journal()).completed, minute);
}

/// A running `terminal bus` process (PC/SC readers): the PSAM taken out and
/// put back between two riders, then torn away at CREDIT SAM FOR PURCHASE in
/// the middle of a tap and put back. The process never restarts: it reconnects
/// and opens the PSAM session again; the rider whose tap was torn after the
/// card's DEBIT is let through at the next tap, not charged again.
#[test]
fn a_running_validator_process_gets_its_psam_back() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};

    use card_host::vpcd::{Tear, TearPoint};
    use system_tests::{psam_reader, terminal_binary};
    let mut rig = Rig::new(BUS);
    let config = rig.directory.path().join("bus.toml");
    let journal_path = rig.directory.path().join("journal.sqlite");
    std::fs::write(
        &config,
        format!(
            "[bus]\nroute = 42\ntariff = {:?}\ndedup_window_seconds = 600\n[journal]\npath = {journal_path:?}\n\
             [reader]\nkind = \"pcsc\"\ncard = {:?}\npsam = {:?}\n",
            issue::fixtures::directory().join("tariffs/bus-flat.toml"),
            card_reader(),
            psam_reader()
        ),
    )
    .expect("config");
    let first = rig.serve_card(0, OPENING);
    /// Killed if the test fails half-way.
    struct Process(std::process::Child);
    impl Drop for Process {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Process(
        Command::new(terminal_binary())
            .args(["bus", "--taps", "4", "--config"])
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .expect("terminal bus"),
    );
    let (send, lines) = std::sync::mpsc::channel();
    let stdout = child.0.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = send.send(line);
        }
    });
    let line = || {
        let line = lines.recv_timeout(Duration::from_secs(20)).expect("a line from terminal bus");
        println!("{line}");
        line
    };
    let psam_back = |rig: &Rig| {
        wait_for_reader(&psam_reader(), false);
        rig.psam().control().insert();
        wait_for_reader(&psam_reader(), true);
    };

    let mut out = vec![line()];
    // Between two riders the PSAM is taken out and put back.
    rig.psam().control().remove();
    psam_back(&rig);
    let second = rig.serve_card(1, OPENING);
    out.push(line());
    // The third rider: the PSAM is torn away at CREDIT SAM FOR PURCHASE, after
    // the card's DEBIT.
    rig.psam().control().tear_at(Tear { apdu: 2, point: TearPoint::BeforeCommand });
    let third = rig.serve_card(3, OPENING);
    out.push(line());
    psam_back(&rig);
    // The rider presents the card again: let through, not charged again.
    rig.card().control().remove();
    wait_for_reader(&card_reader(), false);
    rig.card().control().insert();
    out.push(line());
    assert!(child.0.wait().expect("wait").success(), "terminal bus ran its 4 taps without a restart");
    assert!(out[0].starts_with("PAID 2.00 yuan balance 48.00 card ************0001"), "{}", out[0]);
    assert!(out[1].starts_with("PAID 1.00 yuan (student -1.00) balance 49.00 card ************0002"), "{}", out[1]);
    assert!(out[2].starts_with("REFUSED terminal fault: MAC2 not checked"), "{}", out[2]);
    assert!(out[3].starts_with("ALREADY PAID 1.00 yuan"), "{}", out[3]);
    assert!(out[3].ends_with("card ************0004"), "{}", out[3]);
    rig.stop_card();
    let journal = Journal::open(&journal_path).expect("journal");
    assert_eq!(image(&first).purse.balance, Fen(4_800));
    assert_eq!(image(&second).purse.balance, Fen(4_900));
    assert_eq!(image(&third).purse.balance, Fen(4_900), "the torn tap's DEBIT, once: {}", out[2]);
    let counts = journal.counts().expect("counts");
    assert_eq!((counts.intents, counts.completed, counts.completed_fen), (0, 3, 400));
}

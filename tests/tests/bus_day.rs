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

use card_host::card::{CardImage, CardType, CitizenCard};
use card_host::issue::{self, IssueOptions, ProfileFile};
use card_host::vpcd::{Control, SLOT0_PORT};
use card_host::{ApplicationSerial, CardDateTime, Fen, SmartCard, TerminalNumber};
use clearing::registry;
use system_tests::clearing::Clearing;
use system_tests::{Rig, ServedCard, card_reader, master_keys, wait_for_reader};
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

fn card_type(n: u16) -> CardType {
    [CardType::Ordinary, CardType::Student, CardType::Senior, CardType::Disabled][usize::from(n % 4)]
}

fn serial(n: u16) -> ApplicationSerial {
    ApplicationSerial::parse_hex(&format!("310000000001{n:04X}")).expect("serial")
}

/// Issues card `n` (type by `n`, its own serial) into `directory`.
fn issue_card(directory: &Path, n: u16, balance: Fen) -> (PathBuf, CitizenCard) {
    let profiles = ProfileFile::load(&issue::fixtures::cardholders()).expect("fixture profiles");
    let holder = profiles.cardholder(usize::from(n % 6)).expect("profile");
    let options = IssueOptions {
        card_type: Some(card_type(n)),
        serial: Some(serial(n)),
        initial_balance: balance,
        ..IssueOptions::default()
    };
    let image = issue::issue(holder, &master_keys(), &options).expect("issue");
    let path = directory.join(format!("card-{n}.card"));
    card_host::storage::create(&path, &image, true).expect("write card image");
    (path.clone(), CitizenCard::open(&path).expect("open card image"))
}

/// The fixture tariff `bus-distance.toml`, recomputed from its rules: base 2.00
/// up to 6 stations, 1.00 per started block of 4 more, at most 5.00; senior
/// free, student 50 % off and disabled 25 % off (discount rounded down); a
/// transfer 1.00 off what is left.
fn expected_fare(stations: u16, card_type: CardType, transfer: bool) -> u32 {
    let base = if stations <= 6 { 200 } else { (200 + 100 * u32::from(stations - 6).div_ceil(4)).min(500) };
    let after_concession = match card_type {
        CardType::Senior => 0,
        CardType::Student => base - base * 50 / 100,
        CardType::Disabled => base - base * 25 / 100,
        _ => base,
    };
    if transfer { after_concession.saturating_sub(100) } else { after_concession }
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
        let (path, card) = issue_card(rig.directory.path(), n, balance);
        clearing.issue(serial(n), card_type(n).code(), balance, u32::from(n));
        cards.push((path, card));
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
        let fare = expected_fare(stations, kind, false);
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
            let fare = expected_fare(10, kind, true);
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

    // The card images and the journal agree; the money is the tariff's.
    let counts = validator.journal().counts().expect("counts");
    assert_eq!(counts.intents, 0);
    let images: Vec<(u16, CardImage)> = paths.iter().map(|(n, path)| (*n, image(path))).collect();
    let debits: u64 = images.iter().map(|(_, image)| u64::from(image.purse.offline_counter)).sum();
    let spent: u64 = images.iter().map(|(_, image)| image.purse.spent_total).sum();
    assert_eq!((debits, spent), (counts.completed, counts.completed_fen));
    assert_eq!(spent, charged, "every fare as the tariff says");
    for (n, image) in &images {
        let opening = if *n == POOR { 100 } else { OPENING.0 };
        assert_eq!(u64::from(opening - image.purse.balance.0), image.purse.spent_total, "card {n}");
    }

    // Upload and run-day: every record cleared, nothing in quarantine, each
    // shadow account equals its card.
    let summary = upload::upload_pending(validator.journal(), &client, 1_000).expect("upload");
    assert_eq!((summary.records, summary.rejected), (counts.completed, 0), "{summary:?}");
    let day = clearing.run_day(&at(3_600));
    let completed = i64::try_from(counts.completed).expect("small");
    assert_eq!((day.records, day.cleared, day.quarantined), (completed, completed, 0), "{day:?}");
    assert_eq!(day.purchases_fen, i64::try_from(charged).expect("small"));
    assert!(day.card_float_matches_shadows && day.settled_equals_cleared, "{day:?}");
    for (n, image) in &images {
        let shadow = clearing.runtime.block_on(registry::shadow(&clearing.db, &serial(*n))).expect("shadow");
        assert_eq!(shadow.balance_fen, i64::from(image.purse.balance.0), "card {n}");
    }
    println!(
        "{CARDS} cards, {} debits, {} fen charged, {} records cleared in {:?}",
        counts.completed,
        charged,
        day.cleared,
        started.elapsed()
    );
}

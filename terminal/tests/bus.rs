//! The bus validator in-process: fares and concessions, the dedup window, the
//! blacklist (refused and blocked), refusal below the fare, transfers, distance
//! fares from the tap-in record, and a tap torn at every APDU.

mod common;

use std::path::Path;
use std::time::Duration;

use card_host::card::{CardType, CitizenCard};
use card_host::vpcd::TearPoint;
use card_host::{CardDateTime, Fen};
use common::*;
use terminal::CardSession;
use terminal::blacklist::Blacklist;
use terminal::bus::{Boarding, BusSettings, Refusal, Tap, Validator};
use terminal::journal::Journal;
use terminal::psam::PsamSession;
use terminal::reader::InProcess;
use terminal::tariff::Tariff;

fn tariff(name: &str) -> Tariff {
    Tariff::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/tariffs").join(name)).expect("tariff")
}

fn validator(directory: &Path, tariff_name: &str, route: u16, blacklist: Blacklist) -> Validator {
    let journal = Journal::open(&directory.join(format!("journal-{route}.sqlite"))).expect("journal");
    let settings = BusSettings { route, station: 1, dedup_window_seconds: 10 };
    Validator::new(settings, tariff(tariff_name), blacklist, journal, Duration::from_secs(86_400)).expect("validator")
}

fn balance(reader: &InProcess<CitizenCard>) -> Fen {
    reader.card().image().purse.balance
}

/// Taps `reader` on `validator` at `now` and prints the display line.
fn tap(validator: &Validator, reader: &mut InProcess<CitizenCard>, now: CardDateTime) -> Tap {
    let mut psam_reader = InProcess::new(psam());
    let mut psam = PsamSession::open(CardSession::new(&mut psam_reader)).expect("PSAM");
    let tap = validator.tap(reader, &mut psam, now);
    println!("{tap}");
    tap
}

#[test]
fn flat_fare_with_concessions_one_line_each() {
    let directory = tempfile::tempdir().expect("temp dir");
    let bus = validator(directory.path(), "bus-flat.toml", 42, Blacklist::empty());
    let cases = [
        (CardType::Ordinary, Fen(200), "PAID 2.00 yuan balance 8.00 card ************0001"),
        (CardType::Student, Fen(100), "PAID 1.00 yuan (student -1.00) balance 9.00 card ************0002"),
        (CardType::Senior, Fen(0), "PAID 0.00 yuan (senior -2.00) balance 10.00 card ************0003"),
        (CardType::Disabled, Fen(100), "PAID 1.00 yuan (disabled -1.00) balance 9.00 card ************0004"),
    ];
    for (serial, (card_type, fare, line)) in (1u64..).zip(cases) {
        let mut reader = InProcess::new(card(card_type, serial, Fen(1_000), serial));
        let tap = tap(&bus, &mut reader, at(8, 0, 0));
        assert!(tap.lets_through());
        assert_eq!(tap.to_string(), line);
        assert!(!tap.to_string().contains('\n'), "one line");
        assert_eq!(balance(&reader), Fen(1_000 - fare.0));
    }
    assert_eq!(bus.journal().counts().expect("counts").completed_fen, 400);
}

#[test]
fn a_card_tapped_twice_within_seconds_is_charged_once() {
    let directory = tempfile::tempdir().expect("temp dir");
    let bus = validator(directory.path(), "bus-flat.toml", 42, Blacklist::empty());
    let mut reader = InProcess::new(card(CardType::Ordinary, 7, Fen(1_000), 7));
    assert!(matches!(tap(&bus, &mut reader, at(8, 0, 0)), Tap::Paid { .. }));
    let again = tap(&bus, &mut reader, at(8, 0, 3));
    assert!(matches!(again, Tap::AlreadyPaid { amount: Fen(200), .. }), "{again}");
    assert!(again.lets_through());
    assert!(again.to_string().starts_with("ALREADY PAID 2.00 yuan"), "{again}");
    assert_eq!(balance(&reader), Fen(800));
    // After the window, a new boarding is a new fare.
    assert!(matches!(tap(&bus, &mut reader, at(8, 0, 11)), Tap::Paid { .. }));
    assert_eq!(balance(&reader), Fen(600));
    assert_eq!(bus.journal().counts().expect("counts").completed, 2);
}

#[test]
fn a_blacklisted_card_is_refused_and_blocked() {
    let directory = tempfile::tempdir().expect("temp dir");
    let listed = card_host::ApplicationSerial(9u64.to_be_bytes());
    let mut blacklist = Blacklist::empty();
    assert!(blacklist.update(Blacklist::new(7, [listed]).expect("list")));
    let bus = validator(directory.path(), "bus-flat.toml", 42, blacklist);
    let mut reader = InProcess::new(card(CardType::Ordinary, 9, Fen(1_000), 9));
    let refused = tap(&bus, &mut reader, at(8, 0, 0));
    assert_eq!(
        refused,
        Tap::Refused { card: Some(listed), reason: Refusal::Blacklisted { version: 7, blocked: true } }
    );
    assert_eq!(refused.to_string(), "REFUSED card blocked (blacklist v7) card ************0009");
    assert!(!refused.lets_through());
    // The card itself is blocked now: any validator refuses it, listed or not.
    let other = validator(directory.path(), "bus-flat.toml", 43, Blacklist::empty());
    let again = tap(&other, &mut reader, at(8, 5, 0));
    assert!(matches!(again, Tap::Refused { reason: Refusal::CardBlocked, .. }), "{again}");
    assert_eq!(balance(&reader), Fen(1_000));
    assert_eq!(bus.journal().counts().expect("counts").completed, 0);
}

#[test]
fn refused_below_the_fare() {
    let directory = tempfile::tempdir().expect("temp dir");
    let bus = validator(directory.path(), "bus-flat.toml", 42, Blacklist::empty());
    let mut reader = InProcess::new(card(CardType::Ordinary, 11, Fen(150), 11));
    let refused = tap(&bus, &mut reader, at(8, 0, 0));
    assert_eq!(refused.to_string(), "REFUSED balance 1.50 below fare 2.00 card ************000B");
    assert_eq!(balance(&reader), Fen(150));
    let counts = bus.journal().counts().expect("counts");
    assert_eq!((counts.intents, counts.completed), (0, 0), "nothing journaled: the card refused INITIALIZE");
    // A student pays half and gets through.
    let mut student = InProcess::new(card(CardType::Student, 12, Fen(150), 12));
    assert!(tap(&bus, &mut student, at(8, 0, 0)).lets_through());
    assert_eq!(balance(&student), Fen(50));
}

#[test]
fn transfer_discount_within_the_window_on_another_route() {
    let directory = tempfile::tempdir().expect("temp dir");
    let route_1 = validator(directory.path(), "bus-flat.toml", 1, Blacklist::empty());
    let route_2 = validator(directory.path(), "bus-flat.toml", 2, Blacklist::empty());
    let route_3 = validator(directory.path(), "bus-flat.toml", 3, Blacklist::empty());
    let mut reader = InProcess::new(card(CardType::Ordinary, 13, Fen(2_000), 13));
    assert_eq!(
        tap(&route_1, &mut reader, at(8, 0, 0)).to_string(),
        "PAID 2.00 yuan balance 18.00 card ************000D"
    );
    let transfer = tap(&route_2, &mut reader, at(8, 40, 0));
    assert_eq!(transfer.to_string(), "PAID 1.00 yuan (transfer -1.00) balance 17.00 card ************000D");
    // The window counts from the first boarding (08:00), not from the transfer.
    let late = tap(&route_3, &mut reader, at(9, 31, 0));
    assert_eq!(late.to_string(), "PAID 2.00 yuan balance 15.00 card ************000D");
    // The same route again is no transfer.
    let same = tap(&route_3, &mut reader, at(9, 40, 0));
    assert_eq!(same.to_string(), "PAID 2.00 yuan balance 13.00 card ************000D");
}

#[test]
fn distance_fare_from_the_tap_in_record() {
    let directory = tempfile::tempdir().expect("temp dir");
    let mut bus = validator(directory.path(), "bus-distance.toml", 8, Blacklist::empty());
    let mut reader = InProcess::new(card(CardType::Ordinary, 14, Fen(2_000), 14));
    bus.set_station(2);
    let tap_in = tap(&bus, &mut reader, at(8, 0, 0));
    assert!(matches!(tap_in, Tap::Paid { boarding: Boarding::TapIn { unfinished: None }, .. }), "{tap_in}");
    assert_eq!(balance(&reader), Fen(2_000));
    bus.set_station(11);
    let tap_out = tap(&bus, &mut reader, at(8, 25, 0));
    // 9 stations: 6 included, one started block of 4 → 2.00 + 1.00.
    assert_eq!(tap_out.to_string(), "TAP OUT 9 stations 3.00 yuan balance 17.00 card ************000E");

    // A tap-in whose tap-out was missed is charged the maximum at the next tap-in.
    bus.set_station(3);
    tap(&bus, &mut reader, at(9, 0, 0));
    let next = tap(&bus, &mut reader, at(17, 0, 0));
    assert_eq!(next.to_string(), "TAP IN (missed tap-out charged 5.00) 5.00 yuan balance 12.00 card ************000E");
    assert_eq!(balance(&reader), Fen(1_200));

    // A student pays half of the distance fare.
    let mut student = InProcess::new(card(CardType::Student, 15, Fen(2_000), 15));
    bus.set_station(1);
    tap(&bus, &mut student, at(10, 0, 0));
    bus.set_station(4);
    assert_eq!(
        tap(&bus, &mut student, at(10, 10, 0)).to_string(),
        "TAP OUT 3 stations 1.00 yuan (student -1.00) balance 19.00 card ************000F"
    );
}

/// A flat-fare tap torn at each of its card APDUs, before and after the card
/// acts; then the rider presents the card again. Whatever the point, the card
/// is charged exactly once and the journal holds exactly that debit.
#[test]
fn bus_tap_torn_at_every_apdu_charges_exactly_once() {
    let mut apdu = 1;
    let mut points_tried = 0;
    loop {
        let mut torn_at_this_apdu = false;
        for point in [TearPoint::BeforeCommand, TearPoint::AfterCommand] {
            let directory = tempfile::tempdir().expect("temp dir");
            let bus = validator(directory.path(), "bus-flat.toml", 42, Blacklist::empty());
            let mut reader = Tearing::new(card(CardType::Ordinary, 16, Fen(1_000), 16));
            let mut psam_reader = InProcess::new(psam());
            let mut psam = PsamSession::open(CardSession::new(&mut psam_reader)).expect("PSAM");
            reader.tear_at(apdu, point);
            let first = bus.tap(&mut reader, &mut psam, at(8, 0, 0));
            if !reader.torn() {
                assert!(matches!(first, Tap::Paid { .. }), "{first}");
                continue;
            }
            torn_at_this_apdu = true;
            points_tried += 1;
            assert!(matches!(first, Tap::PresentAgain { .. }), "torn at APDU {apdu} {point:?}: {first}");
            reader.insert();
            let second = bus.tap(&mut reader, &mut psam, at(8, 0, 2));
            println!("torn at {apdu} {point:?}: {first} / {second}");
            assert!(second.lets_through(), "torn at APDU {apdu} {point:?}: {second}");
            let counts = bus.journal().counts().expect("counts");
            assert_eq!(counts.intents, 0);
            assert_eq!(counts.completed, 1, "torn at APDU {apdu} {point:?}: one debit journaled");
            assert_eq!(counts.completed_fen, 200);
            assert_eq!(reader.card().image().purse.balance, Fen(800), "torn at APDU {apdu} {point:?}: charged once");
        }
        if !torn_at_this_apdu {
            break;
        }
        apdu += 1;
        assert!(apdu < 20, "a tap has fewer than 20 APDUs");
    }
    // SELECT, READ BINARY, READ RECORD, INITIALIZE, UPDATE CAPP DATA CACHE, DEBIT.
    assert_eq!(points_tried, 12);
}

/// A transfer onto a distance route is decided at tap-in and granted at tap-out.
#[test]
fn transfer_onto_a_distance_route_is_granted_at_tap_out() {
    let directory = tempfile::tempdir().expect("temp dir");
    let flat = validator(directory.path(), "bus-flat.toml", 1, Blacklist::empty());
    let mut distance = validator(directory.path(), "bus-distance.toml", 8, Blacklist::empty());
    let mut reader = InProcess::new(card(CardType::Ordinary, 0x17, Fen(2_000), 17));
    tap(&flat, &mut reader, at(8, 0, 0));
    distance.set_station(2);
    tap(&distance, &mut reader, at(8, 30, 0));
    distance.set_station(5);
    let tap_out = tap(&distance, &mut reader, at(8, 50, 0));
    assert_eq!(
        tap_out.to_string(),
        "TAP OUT 3 stations 1.00 yuan (transfer -1.00) balance 17.00 card ************0017"
    );
    // Without a recent boarding elsewhere, no discount.
    distance.set_station(2);
    tap(&distance, &mut reader, at(11, 0, 0));
    distance.set_station(5);
    let later = tap(&distance, &mut reader, at(11, 20, 0));
    assert_eq!(later.to_string(), "TAP OUT 3 stations 2.00 yuan balance 15.00 card ************0017");
}

#[test]
fn a_refused_presentation_is_one_line_and_lets_nobody_through() {
    use terminal::reader::{Pn532Error, ReaderError};
    let several = Tap::refused_presentation(&ReaderError::SeveralCards(2)).expect("told to the rider");
    assert_eq!(several.to_string(), "ONE CARD ONLY 请只出示一张卡");
    assert!(!several.lets_through());
    let not_iso = Tap::refused_presentation(&ReaderError::Pn532(Pn532Error::NotIsoDep(0x08))).expect("told");
    assert_eq!(not_iso.to_string(), "REFUSED card not accepted: not an ISO/IEC 14443-4 card");
    assert!(Tap::refused_presentation(&ReaderError::UnknownReader("x".into())).is_none(), "a reader fault");
}

//! A day on a bus route, shared by its readers' versions — pcscd + vpcd
//! (`tests/tests/bus_day.rs`, the validator in the test) and the PN532
//! emulator (`tests/tests/pn532_modes.rs`, a `terminal bus` process): the
//! day's cards (type and serial by number, registered at clearing), the fares
//! the fixture tariffs' rules give, computed here from the rules, and the end
//! of the day — the card images agree with the journal, and after the upload
//! run-day clears every record with nothing in quarantine, each shadow account
//! equal to its card's balance.

use std::path::{Path, PathBuf};

use card_host::card::{CardType, CitizenCard};
use card_host::issue::{self, IssueOptions, ProfileFile};
use card_host::{ApplicationSerial, CardDateTime, Fen};

use crate::clearing::Clearing;

/// Card `n`'s type: ordinary, student, senior, disabled in turn.
pub fn card_type(n: u16) -> CardType {
    [CardType::Ordinary, CardType::Student, CardType::Senior, CardType::Disabled][usize::from(n % 4)]
}

/// Card `n`'s application serial.
pub fn serial(n: u16) -> ApplicationSerial {
    ApplicationSerial::parse_hex(&format!("310000000001{n:04X}")).expect("serial")
}

/// Issues card `n` (its type and serial by `n`) into `directory` as
/// `card-N.card`, registers it at `clearing` with the same opening balance,
/// and opens the image.
pub fn issue_card(clearing: &Clearing, directory: &Path, n: u16, balance: Fen) -> (PathBuf, CitizenCard) {
    let profiles = ProfileFile::load(&issue::fixtures::cardholders()).expect("fixture profiles");
    let holder = profiles.cardholder(usize::from(n % 6)).expect("profile");
    let options = IssueOptions {
        card_type: Some(card_type(n)),
        serial: Some(serial(n)),
        initial_balance: balance,
        ..IssueOptions::default()
    };
    let image = issue::issue(holder, &crate::master_keys(), &options).expect("issue");
    let path = directory.join(format!("card-{n}.card"));
    card_host::storage::create(&path, &image, true).expect("write card image");
    clearing.issue(serial(n), card_type(n).code(), balance, u32::from(n));
    (path.clone(), CitizenCard::open(&path).expect("open card image"))
}

/// The concession of the fixture tariffs (`bus-flat.toml`, `bus-distance.toml`)
/// on `base`: senior free, student 50 % off and disabled 1.00 off (flat) or
/// 25 % off (distance), a discount rounded down; then a transfer 1.00 off what
/// is left.
fn concession(base: u32, card_type: CardType, disabled_off: impl Fn(u32) -> u32, transfer: bool) -> u32 {
    let after_concession = match card_type {
        CardType::Senior => 0,
        CardType::Student => base - base * 50 / 100,
        CardType::Disabled => base.saturating_sub(disabled_off(base)),
        _ => base,
    };
    if transfer { after_concession.saturating_sub(100) } else { after_concession }
}

/// `bus-distance.toml`, recomputed from its rules: base 2.00 up to 6 stations,
/// 1.00 per started block of 4 more, at most 5.00; then the concession.
pub fn distance_fare(stations: u16, card_type: CardType, transfer: bool) -> u32 {
    let base = if stations <= 6 { 200 } else { (200 + 100 * u32::from(stations - 6).div_ceil(4)).min(500) };
    concession(base, card_type, |base| base * 25 / 100, transfer)
}

/// `bus-flat.toml`, recomputed from its rules: 2.00 a boarding; then the concession.
pub fn flat_fare(card_type: CardType, transfer: bool) -> u32 {
    concession(200, card_type, |_| 100, transfer)
}

/// The end of the day, once the journal is uploaded: the card images agree
/// with the journal (every intent settled, one completed row per card debit,
/// the money the fares the test counted: `charged`), run-day for `day` clears
/// every record with nothing in quarantine, the ledger and the float hold, and
/// each card's shadow account is its image's balance.
pub fn assert_day_clears(
    clearing: &Clearing,
    journal: &terminal::journal::Journal,
    cards: &[&Path],
    day: &CardDateTime,
    charged: u64,
) -> clearing::DaySummary {
    let counts = crate::assert_cards_agree_with_journal(cards, journal);
    assert_eq!(counts.completed_fen, charged, "every fare as the tariff says");
    assert!(journal.pending_upload(10).expect("pending").is_empty(), "the journal is uploaded");
    let summary = clearing.run_day(day);
    let completed = i64::try_from(counts.completed).expect("small");
    assert_eq!((summary.records, summary.cleared, summary.quarantined), (completed, completed, 0), "{summary:?}");
    assert_eq!(summary.purchases_fen, i64::try_from(charged).expect("small"), "{summary:?}");
    assert!(summary.card_float_matches_shadows && summary.settled_equals_cleared, "{summary:?}");
    clearing.assert_shadows_match(cards);
    summary
}

//! The README's first command runs the city day (`system_tests::city`): a small
//! day here on SQLite and on PostgreSQL in-process, and one through pcscd +
//! vpcd, with the summary's invariants asserted; the binary itself once.

use std::collections::BTreeMap;
use std::process::Command;

use system_tests::ReaderLock;
use system_tests::city::{self, CityOptions, Mode, report::CityReport};
use system_tests::clearing::TEST_POSTGRES_URL;

fn options(mode: Mode, postgres: bool) -> CityOptions {
    CityOptions {
        cards: 30,
        errands: 90,
        seed: 7,
        postgres: postgres.then(|| TEST_POSTGRES_URL.to_owned()),
        mode,
        progress: false,
    }
}

fn day(options: &CityOptions) -> CityReport {
    let report = city::run(options, &mut |line| println!("{line}")).expect("the city day");
    println!("{report}");
    report
}

/// What every city day must show.
fn assert_invariants(report: &CityReport) {
    assert_eq!(report.ledger_total_fen, 0, "ledger postings sum to zero");
    assert!(report.shadows_agree(), "shadow accounts = card images: {:?}", report.mismatches);
    assert_eq!(report.mismatches.len(), 1, "only the lost card differs, by its quarantined late fare");
    assert!(report.lost_late_fen > 0);
    assert!(report.loss.late_tap.starts_with("PAID"), "the validator without the new blacklist let it ride");
    assert!(report.lost_card_refused(), "the lost card refused after the loss: {:?}", report.loss);
    assert!(report.torn_counted_once(), "the torn purchase once: {:?}", report.torn);
    assert!(report.torn.pulled && report.torn.resolution == "Proof", "{:?}", report.torn);
    assert_eq!(report.torn.charged.0, 200, "an adult's flat fare, once: {:?}", report.torn);
    let expected: BTreeMap<String, u64> =
        [("blacklisted_card".to_owned(), 1), ("duplicate".to_owned(), 1)].into_iter().collect();
    assert_eq!(report.quarantine_reasons(), expected, "quarantined as planned");
    assert!(report.replay.second_duplicate && !report.replay.first_duplicate, "{:?}", report.replay);
    for merchant in &report.merchants {
        assert!(merchant.agrees(), "settled gross = journals less quarantine: {merchant:?}");
        assert_eq!(merchant.net_fen, merchant.gross_fen - merchant.fee_fen);
    }
    assert!(report.merchants.iter().all(|m| m.records > 0), "every merchant took money");
    assert!(report.taps() > 50 && report.kiosks.top_ups > 0 && report.kiosks.bills > 0 && report.counters.visits > 0);
    assert!(report.routes.iter().any(|r| r.stats.transfers > 0) && report.routes.iter().any(|r| r.stats.tap_outs > 0));
    assert!(report.all_checks_pass());
}

fn totals(report: &CityReport) -> (i64, i64, i64, u64) {
    (report.run_day.purchases_fen, report.run_day.loads_fen, report.run_day.fee_fen, report.taps())
}

#[test]
fn city_day_in_process_on_sqlite_and_postgres_same_seed_same_totals() {
    let sqlite = day(&options(Mode::InProcess, false));
    assert_invariants(&sqlite);
    assert!(sqlite.pcscd.is_none());
    let postgres = day(&options(Mode::InProcess, true));
    assert!(postgres.database.starts_with("PostgreSQL"));
    assert_invariants(&postgres);
    assert_eq!(totals(&sqlite), totals(&postgres), "the same seed gives the same totals");
}

#[test]
fn city_day_through_pcscd() {
    let _reader = ReaderLock::take();
    let report = day(&options(Mode::Pcscd, false));
    assert_invariants(&report);
    let pcscd = report.pcscd.as_ref().expect("route 1 through pcscd");
    assert!(pcscd.presentations >= 3 && pcscd.apdus > 10 * pcscd.presentations, "{pcscd:?}");
    assert!(report.torn.through_pcscd, "the tear through vpcd");
    let in_process = day(&options(Mode::InProcess, false));
    assert_eq!(totals(&report), totals(&in_process), "the same seed gives the same totals in either mode");
}

#[test]
fn demo_binary_runs_in_process_on_sqlite_and_postgres_and_refuses_bad_options() {
    let run =
        |arguments: &[&str]| Command::new(env!("CARGO_BIN_EXE_demo")).args(arguments).output().expect("demo runs");
    let output = run(&["--in-process", "--cards", "20", "--transactions", "40", "--seed", "3"]);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}\n{}", String::from_utf8_lossy(&output.stderr));
    for expected in ["readers    every terminal in-process", "settlement", "quarantine 2 records", "[ ok ] ledger"] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    assert!(!text.contains("FAIL"), "{text}");
    // On PostgreSQL by the environment variable (the README's one switch).
    let postgres = Command::new(env!("CARGO_BIN_EXE_demo"))
        .args(["--in-process", "--cards", "12", "--transactions", "30", "--seed", "3"])
        .env("CITIZEN_CARD_DATABASE_URL", TEST_POSTGRES_URL)
        .output()
        .expect("demo runs");
    let text = String::from_utf8_lossy(&postgres.stdout);
    assert!(postgres.status.success(), "{text}\n{}", String::from_utf8_lossy(&postgres.stderr));
    assert!(text.contains("clearing on PostgreSQL") && text.contains("[ ok ] ledger"), "{text}");
    let bad = run(&["--in-process", "--cards", "3"]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("--cards: 10 to 5000"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}

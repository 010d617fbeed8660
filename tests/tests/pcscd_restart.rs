//! pcscd restarts under a running `terminal bus` process (PC/SC readers: the
//! cards in vpcd slot 0, the PSAM in slot 1): the validator drops its PC/SC
//! context and establishes a new one, its PSAM slot connects again and the PSAM
//! session is opened again, all without the process restarting. Every tap is
//! charged once: the card lying on the reader while pcscd restarts is read
//! again by the new pcscd and let through as already paid, not charged twice.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use card_host::card::CardImage;
use card_host::issue;
use card_host::vpcd::Control;
use card_host::{Fen, TerminalNumber};
use system_tests::terminal_process::TerminalProcess;
use system_tests::{READER_TIMEOUT, Rig, assert_cards_agree_with_journal, card_reader, psam_reader, restart_pcscd};
use terminal::journal::Journal;

/// The fixture bus terminal (merchant M-BUS-01).
const BUS: TerminalNumber = TerminalNumber([0x31, 0x00, 0x00, 0x00, 0x09, 0x01]);
const OPENING: Fen = Fen(5_000);

fn image(path: &std::path::Path) -> CardImage {
    card_host::storage::load(path).expect("card image")
}

/// Waits until a served card has connected to vpcd again since `before`.
fn wait_reinserted(control: &Control, before: u64, what: &str) {
    let deadline = Instant::now() + READER_TIMEOUT;
    while control.insertions() == before || !control.is_connected() {
        assert!(Instant::now() < deadline, "the {what} did not reconnect to the restarted pcscd");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_running_validator_rides_out_a_pcscd_restart() {
    let started = Instant::now();
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
    let mut cards: Vec<PathBuf> = vec![rig.serve_card(0, OPENING)];
    let validator = TerminalProcess::start(&["bus", "--taps", "5"], &config);
    let mut out = Vec::new();
    let mut line = || {
        let line = validator.line();
        println!("{line}");
        out.push(line);
    };

    // Before: two riders; the second leaves the card on the reader.
    line();
    cards.push(rig.serve_card(1, OPENING));
    line();

    // pcscd restarts; the PSAM and the card lying on the reader come back.
    let (psam_before, card_before) = (rig.psam().control().insertions(), rig.card().control().insertions());
    restart_pcscd();
    wait_reinserted(rig.psam().control(), psam_before, "PSAM");
    wait_reinserted(rig.card().control(), card_before, "card");
    // The new pcscd sees the card lying there as a new one: read, not charged again.
    line();

    // After: two more riders, the first needs the PSAM session opened again.
    cards.push(rig.serve_card(5, OPENING));
    line();
    cards.push(rig.serve_card(3, OPENING));
    line();
    assert!(validator.finish(), "terminal bus ran its 5 taps as one process, without a restart");

    assert!(out[0].starts_with("PAID 2.00 yuan balance 48.00 card ************0001"), "{}", out[0]);
    assert!(out[1].starts_with("PAID 1.00 yuan (student -1.00) balance 49.00 card ************0002"), "{}", out[1]);
    assert!(out[2].starts_with("ALREADY PAID 1.00 yuan"), "{}", out[2]);
    assert!(out[2].ends_with("card ************0002"), "{}", out[2]);
    assert!(out[3].starts_with("PAID 2.00 yuan balance 48.00 card ************0006"), "{}", out[3]);
    assert!(out[4].starts_with("PAID 1.00 yuan (disabled -1.00) balance 49.00 card ************0004"), "{}", out[4]);
    rig.stop_card();

    // Each card debited once, for what its line said; the journal agrees.
    for (path, shown) in cards.iter().zip([&out[0], &out[1], &out[3], &out[4]]) {
        let purse = image(path).purse;
        assert_eq!(purse.offline_counter, 1, "charged exactly once: {shown}");
        assert_eq!(purse.balance.0 + u32::try_from(purse.spent_total).expect("small"), OPENING.0, "{shown}");
        assert!(
            shown.contains(&format!("balance {} card", purse.balance)),
            "the display shows the card's balance: {shown}"
        );
    }
    let journal = Journal::open(&journal_path).expect("journal");
    let paths: Vec<&std::path::Path> = cards.iter().map(PathBuf::as_path).collect();
    let counts = assert_cards_agree_with_journal(&paths, &journal);
    assert_eq!(counts.completed, 4, "four debits");
    println!("5 taps across a pcscd restart in {:?}", started.elapsed());
}

/// The hospital counter (`terminal counter`, commands on standard input) keeps
/// its readers across a pcscd restart too: the first command after it reads the
/// card (a new PC/SC context at once, not an error), and a co-payment opens the
/// PSAM session again. Each visit's co-payment is charged once.
#[test]
fn a_running_counter_rides_out_a_pcscd_restart() {
    const HOSPITAL: TerminalNumber = TerminalNumber([0x31, 0x00, 0x00, 0x00, 0x09, 0x03]);
    let mut rig = Rig::new(HOSPITAL);
    let card = rig.serve_card(0, OPENING);
    let journal_path = rig.directory.path().join("journal.sqlite");
    let config = rig.directory.path().join("counter.toml");
    std::fs::write(
        &config,
        format!(
            "[counter]\nhospital = \"310000000903\"\ndepartment = 12\n[journal]\npath = {journal_path:?}\n\
             [reader]\nkind = \"pcsc\"\ncard = {:?}\npsam = {:?}\n",
            card_reader(),
            psam_reader(),
        ),
    )
    .expect("config");
    let mut counter = TerminalProcess::start(&["counter"], &config);
    let visit = counter.command("visit 123456 1 1550");
    assert!(visit.ends_with("co-payment 15.50"), "{visit}");

    let (psam_before, card_before) = (rig.psam().control().insertions(), rig.card().control().insertions());
    restart_pcscd();
    wait_reinserted(rig.psam().control(), psam_before, "PSAM");
    wait_reinserted(rig.card().control(), card_before, "card");
    let patient = counter.command("patient 123456");
    assert!(patient.contains("patient P31000000001") && patient.contains("1 earlier visits"), "{patient}");
    let visit = counter.command("visit 123456 1 1550");
    assert!(visit.ends_with("co-payment 15.50"), "{visit}");
    counter.command_quit();

    rig.stop_card();
    let purse = image(&card).purse;
    assert_eq!((purse.offline_counter, purse.balance), (2, Fen(OPENING.0 - 2 * 1_550)), "two co-payments, once each");
    let journal = Journal::open(&journal_path).expect("journal");
    assert_eq!(assert_cards_agree_with_journal(&[&card], &journal).completed, 2);
}

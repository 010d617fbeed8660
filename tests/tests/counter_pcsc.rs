//! The hospital counter mode through the real pcscd + vpcd: a `terminal
//! counter` process with the patient's card in slot 0 and the counter's PSAM in
//! slot 1 reads the patient after the PIN, registers a visit on the card, takes
//! the co-payment, tells a missing card and stays open, uploads; run-day clears
//! the co-payment and clearing's shadow account equals the card.

use card_host::card::CardImage;
use card_host::{CardDateTime, Fen, TerminalNumber};
use system_tests::clearing::Clearing;
use system_tests::terminal_process::TerminalProcess;
use system_tests::{Rig, assert_cards_agree_with_journal, card_reader, psam_reader};
use terminal::journal::Journal;
use terminal::reader::InProcess;

/// The fixture hospital counter registered in `fixtures/merchants/test-merchants.json`.
const HOSPITAL: TerminalNumber = TerminalNumber([0x31, 0x00, 0x00, 0x00, 0x09, 0x03]);

#[test]
fn counter_through_pcscd_reads_the_patient_takes_a_co_payment_and_clears() {
    let clearing = Clearing::start();
    let (address, _server) = clearing.serve();
    let mut rig = Rig::new(HOSPITAL);
    let card_path = rig.serve_card(0, Fen(5_000));
    let card = card_host::card::CitizenCard::open(&card_path).expect("card image");
    clearing.register(&mut InProcess::new(card), Fen(5_000));
    let journal = rig.directory.path().join("journal.sqlite");
    let config = rig.directory.path().join("counter.toml");
    let key = card_host::issue::fixtures::directory().join("terminals/device-0903.key");
    std::fs::write(
        &config,
        format!(
            "[counter]\nhospital = \"310000000903\"\ndepartment = 12\n[journal]\npath = {journal:?}\n\
             [clearing]\nurl = \"http://{address}\"\nterminal_id = \"310000000903\"\ndevice_key = {key:?}\n\
             [reader]\nkind = \"pcsc\"\ncard = {:?}\npsam = {:?}\n",
            card_reader(),
            psam_reader(),
        ),
    )
    .expect("config");

    let mut counter = TerminalProcess::start(&["counter"], &config);
    let refused = counter.command("patient 000000");
    assert!(refused.starts_with("refused: VERIFY"), "{refused}");
    let patient = counter.command("patient 123456");
    assert!(patient.contains("patient P31000000001") && patient.contains("0 earlier visits"), "{patient}");
    let visit = counter.command("visit 123456 1 1550");
    assert!(visit.ends_with("co-payment 15.50"), "{visit}");
    // The patient takes the card away: the counter says so and stays open.
    rig.card().control().remove();
    let mut missing = counter.command("patient 123456");
    for _ in 0..50 {
        if missing.starts_with("ERROR") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        missing = counter.command("patient 123456");
    }
    assert!(missing.starts_with("ERROR no card presented"), "{missing}");
    rig.card().control().insert();
    let mut again = counter.command("patient 123456");
    for _ in 0..50 {
        if !again.starts_with("ERROR") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
        again = counter.command("patient 123456");
    }
    assert!(again.contains("1 earlier visits"), "the visit is on the card: {again}");
    let uploaded = counter.command("upload");
    assert!(uploaded.starts_with("uploaded 1 records"), "{uploaded}");
    for line in [&refused, &patient, &visit, &missing, &again, &uploaded] {
        assert!(!line.contains("123456"), "the PIN is never echoed: {line}");
    }
    counter.command_quit();
    rig.stop_card();

    let image: CardImage = card_host::storage::load(&card_path).expect("card image");
    assert_eq!(image.purse.balance, Fen(3_450));
    let counts = assert_cards_agree_with_journal(&[&card_path], &Journal::open(&journal).expect("journal"));
    assert_eq!(counts.completed_fen, 1_550);
    let day = clearing.run_day(&CardDateTime::now_at_offset(clearing::api::UTC_OFFSET_MINUTES_DEFAULT));
    assert_eq!((day.cleared, day.quarantined, day.purchases_fen), (1, 0, 1_550), "{day:?}");
    clearing.assert_shadows_match(&[&card_path]);
}

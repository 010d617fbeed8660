//! The software citizen card and PSAM through the real pcscd and its vpcd
//! reader, driven by an ordinary PC/SC client (the `pcsc` crate through the
//! terminal's reader layer) and by `opensc-tool`.

use std::time::Duration;

use card_host::status::StatusWord;
use card_host::vpcd::{SLOT0_PORT, Tear, TearPoint};
use card_host::{CardDateTime, Fen, TransactionType};
use system_tests::*;
use terminal::cardholder::SocialSecurity;
use terminal::compound::{CompoundRecord, TripState};
use terminal::psam::PsamSession;
use terminal::purse::{PurchaseRequest, Purse};
use terminal::reader::pcsc::{PcscChannel, PcscReaders};
use terminal::{CardError, CardSession, Channel, ReaderError};

fn at() -> CardDateTime {
    CardDateTime::new(2026, 11, 25, 8, 30, 0).expect("valid")
}

fn connect(readers: &PcscReaders, reader: &str) -> PcscChannel {
    readers.connect(reader, READER_TIMEOUT).expect("card in the reader")
}

/// A bus compound record (the 48-byte layout of docs/card.md) at tap-in or tap-out.
fn trip(state: TripState, fare: Fen) -> (u8, Vec<u8>) {
    let mut record = CompoundRecord::empty(card_host::issue::COMPOUND_BUS);
    record.state = state;
    record.route = 11;
    record.entry_station = 3;
    record.entry_terminal = terminal_number();
    record.entry_at = Some(at());
    record.max_fare = Fen(500);
    if state == TripState::TappedOut {
        record.exit_station = 7;
        record.exit_at = Some(at());
        record.fare = fare;
    }
    (record.identifier, record.to_bytes())
}

#[test]
fn cardholder_is_read_after_the_pin_through_pcscd() {
    let mut rig = Rig::new(terminal_number());
    rig.serve_card(0, Fen(0));
    assert!(rig.readers.list().expect("readers").contains(&card_reader()));
    let mut channel = rig.card_channel();
    assert_eq!(&channel.atr().expect("ATR")[..2], &[0x3B, 0x8C]);

    let mut social = SocialSecurity::select(CardSession::new(&mut channel)).expect("select SSSE");
    let information = social.card_information().expect("EF05 is free to read");
    assert_eq!(information.version, "3.00");
    let refused = social.cardholder().expect_err("EF06 needs the PIN");
    assert_eq!(refused.status(), Some(StatusWord::SecurityStatusNotSatisfied));
    assert_eq!(social.verify_pin("000000").expect_err("wrong PIN").status(), Some(StatusWord::PinTriesLeft(2)));
    social.verify_pin("123456").expect("right PIN");
    let holder = social.cardholder().expect("cardholder");
    assert_eq!(holder.name, "张伟");
    assert_eq!(holder.citizen_id, "310115198503121015");
    assert!(!format!("{holder:?}").contains("198503121015"), "Debug masks the citizen ID");
}

#[test]
fn load_purchase_and_compound_purchase_through_pcscd() {
    let mut rig = Rig::new(terminal_number());
    let card_path = rig.serve_card(1, Fen(0));
    let mut card_channel = rig.card_channel();
    let mut psam_channel = rig.psam_channel();
    let host = TestLoadHost::default();

    let mut purse = Purse::select(CardSession::new(&mut card_channel)).expect("select e-purse");
    let serial = purse.public_information().application_serial;
    assert_eq!(purse.balance().expect("balance"), Fen(0));

    // Online load: the card's MAC1, the host's MAC2, the card's TAC.
    let init = purse.initialize_load(1, Fen(5_000), &LOAD_TERMINAL).expect("INITIALIZE FOR LOAD");
    let mac2 = host.authorise(&serial, &init, Fen(5_000), &LOAD_TERMINAL, &at()).expect("MAC1 verifies");
    purse.credit_load(&at(), mac2).expect("CREDIT FOR LOAD");
    assert_eq!(purse.balance().expect("balance"), Fen(5_000));

    // A wrong MAC2 is refused and credits nothing.
    purse.initialize_load(1, Fen(100), &LOAD_TERMINAL).expect("INITIALIZE FOR LOAD");
    let refused = purse.credit_load(&at(), [0; 4]).expect_err("bad MAC2");
    assert_eq!(refused.status(), Some(StatusWord::MacInvalid));
    assert_eq!(purse.balance().expect("balance"), Fen(5_000));

    // Purchase with the PSAM in the second slot; clearing's TAC check passes.
    let mut psam = PsamSession::open(CardSession::new(&mut psam_channel)).expect("PSAM");
    let request = PurchaseRequest { amount: Fen(200), at: at(), compound_records: vec![] };
    let receipt = purse.purchase(&mut psam, &request).expect("purchase");
    assert_eq!(purse.balance().expect("balance"), Fen(4_800));
    let tac = host.purchase_tac(
        &serial,
        TransactionType::PursePurchase,
        Fen(200),
        &terminal_number(),
        receipt.terminal_serial,
        &at(),
    );
    assert_eq!(receipt.tac, tac);

    // Insufficient balance.
    let too_much = PurchaseRequest { amount: Fen(100_000), at: at(), compound_records: vec![] };
    let refused = purse.purchase(&mut psam, &too_much).expect_err("over the balance");
    assert_eq!(refused.status(), Some(StatusWord::InsufficientBalance));

    // Transit: tap in (fare 0, entry record), tap out (fare, exit record).
    let tap_in =
        PurchaseRequest { amount: Fen(0), at: at(), compound_records: vec![trip(TripState::TappedIn, Fen(0))] };
    purse.purchase(&mut psam, &tap_in).expect("tap in");
    let tap_out =
        PurchaseRequest { amount: Fen(300), at: at(), compound_records: vec![trip(TripState::TappedOut, Fen(300))] };
    let receipt = purse.purchase(&mut psam, &tap_out).expect("tap out");
    assert_eq!(receipt.kind, TransactionType::CompoundPurchase);
    assert_eq!(purse.balance().expect("balance"), Fen(4_500));
    let history = purse.history().expect("history");
    assert_eq!(history.len(), 4, "load, purchase, tap in, tap out");
    assert_eq!(history[0].amount, Fen(300));
    assert_eq!(history[3].kind, TransactionType::PurseLoad);
    let record = CompoundRecord::parse(&purse.compound_record(card_host::issue::COMPOUND_BUS).expect("read"))
        .expect("the compound record written with the debit");
    assert_eq!((record.state, record.exit_station, record.fare), (TripState::TappedOut, 7, Fen(300)));

    // The image on disk says the same.
    card_channel.disconnect();
    rig.stop_card();
    let saved = card_host::card::CitizenCard::open(&card_path).expect("image");
    assert_eq!(saved.image().purse.balance, Fen(4_500));
}

fn terminal_number() -> card_host::TerminalNumber {
    card_host::TerminalNumber([0x31, 0x00, 0x00, 0x00, 0x00, 0x07])
}

/// A purchase torn at each of the card's APDUs, before and after the card acted:
/// when the card comes back, GET TRANSACTION PROVE tells whether the debit
/// happened, and the balance agrees: never charged twice, never lost.
#[test]
fn torn_purchase_is_settled_by_the_card_through_pcscd() {
    let mut rig = Rig::new(terminal_number());
    rig.serve_card(2, Fen(10_000));
    let (served, readers) = (rig.card(), &rig.readers);
    let mut psam_channel = rig.psam_channel();
    let mut psam = PsamSession::open(CardSession::new(&mut psam_channel)).expect("PSAM");
    let host = TestLoadHost::default();
    let mut expected_balance = Fen(10_000);
    let mut debits = 0;

    // SELECT, READ BINARY, INITIALIZE, DEBIT: the card's four APDUs of a purchase.
    for apdu in 1..=4 {
        for point in [TearPoint::BeforeCommand, TearPoint::AfterCommand] {
            let (counter, balance) = {
                let mut channel = connect(readers, &card_reader());
                let mut purse = Purse::select(CardSession::new(&mut channel)).expect("select");
                let balance = purse.balance().expect("balance");
                let counter = card_counter(&mut purse);
                channel.disconnect();
                (counter, balance)
            };
            assert_eq!(balance, expected_balance);
            served.control().tear_at(Tear { apdu, point });
            let mut channel = connect(readers, &card_reader());
            let request = PurchaseRequest { amount: Fen(150), at: at(), compound_records: vec![] };
            let outcome =
                Purse::select(CardSession::new(&mut channel)).and_then(|mut purse| purse.purchase(&mut psam, &request));
            let error = outcome.expect_err("the card left");
            assert!(
                error.is_card_removed() || matches!(error, CardError::Reader(ReaderError::Pcsc(_))),
                "torn at APDU {apdu} {point:?}: {error}"
            );
            drop(channel);
            assert!(readers.wait_for(&card_reader(), false, READER_TIMEOUT).expect("status"), "card out");
            served.control().insert();

            // The card is back: ask it.
            let mut channel = connect(readers, &card_reader());
            let mut purse = Purse::select(CardSession::new(&mut channel)).expect("select");
            let serial = purse.public_information().application_serial;
            let proof = purse.prove(TransactionType::PursePurchase, counter + 1).expect("prove");
            let debited = apdu == 4 && point == TearPoint::AfterCommand;
            if debited {
                let proof = proof.expect("the debit happened: the card proves it");
                debits += 1;
                expected_balance = Fen(expected_balance.0 - 150);
                // The PSAM was reached twice (torn before DEBIT, then this one):
                // the debit used terminal transaction serial 2, and its TAC is
                // the genuine one clearing will recompute.
                let record = purse.history().expect("history").remove(0);
                assert_eq!(record.amount, Fen(150));
                let tac =
                    host.purchase_tac(&serial, TransactionType::PursePurchase, Fen(150), &terminal_number(), 2, &at());
                assert_eq!(proof.tac, tac, "the proved TAC is the genuine one");
            } else {
                assert_eq!(proof, None, "torn at APDU {apdu} {point:?}: no debit, nothing to prove");
            }
            assert_eq!(purse.balance().expect("balance"), expected_balance, "torn at APDU {apdu} {point:?}");
            channel.disconnect();
        }
    }
    assert_eq!(debits, 1);
}

/// The offline counter from the newest transaction record (0 on a fresh card).
fn card_counter(purse: &mut Purse<'_>) -> u16 {
    purse.history().expect("history").first().map_or(0, |record| record.number)
}

#[test]
fn application_block_with_the_psam_mac_through_pcscd() {
    let mut rig = Rig::new(terminal_number());
    let card_path = rig.serve_card(3, Fen(1_000));
    let mut card_channel = rig.card_channel();
    let mut psam_channel = rig.psam_channel();
    let mut psam = PsamSession::open(CardSession::new(&mut psam_channel)).expect("PSAM");
    let mut purse = Purse::select(CardSession::new(&mut card_channel)).expect("select");
    purse.application_block(&mut psam).expect("APPLICATION BLOCK");
    let request = PurchaseRequest { amount: Fen(100), at: at(), compound_records: vec![] };
    let refused = purse.purchase(&mut psam, &request).expect_err("blocked");
    assert_eq!(refused.status(), Some(StatusWord::FunctionNotSupported));
    // A blocked application still selects (with a warning status) or refuses:
    // either way nothing is debited.
    card_channel.disconnect();
    rig.stop_card();
    let saved = card_host::card::CitizenCard::open(&card_path).expect("image");
    assert_eq!(saved.image().purse.balance, Fen(1_000));
}

/// `opensc-tool`, an ordinary PC/SC client, talks to the card by hand (the
/// README's example).
#[test]
fn opensc_tool_reads_the_balance() {
    let mut rig = Rig::new(terminal_number());
    rig.serve_card(0, Fen(1_234));
    assert!(rig.readers.wait_for(&card_reader(), true, READER_TIMEOUT).expect("status"));
    let output = std::process::Command::new("opensc-tool")
        .args(["-r", &card_reader(), "-s", "00 A4 04 00 08 A0 00 00 06 32 01 01 05", "-s", "80 5C 00 02 04"])
        .output()
        .expect("opensc-tool runs (Debian package opensc)");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "opensc-tool failed: {text} {}", String::from_utf8_lossy(&output.stderr));
    assert!(text.contains("00 00 04 D2"), "balance 12.34 yuan = 0x4D2 fen: {text}");
}

/// The `card-host serve` binary: inserted on start, SIGUSR1 pulls the card out,
/// SIGUSR2 puts it back, SIGTERM stops it.
#[test]
fn card_host_serve_binary_obeys_signals() {
    let _reader = ReaderLock::take();
    let directory = tempfile::tempdir().expect("temp dir");
    let (path, card) = issue_card(directory.path(), 0, Fen(0));
    drop(card);
    let mut child = std::process::Command::new(card_host_binary())
        .args(["serve", "--card"])
        .arg(&path)
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("card-host serve");
    let readers = PcscReaders::establish().expect("PC/SC context");
    let signal = |name: &str| {
        let status =
            std::process::Command::new("kill").args([name, &child.id().to_string()]).status().expect("kill runs");
        assert!(status.success());
    };
    assert!(readers.wait_for(&card_reader(), true, READER_TIMEOUT).expect("status"), "inserted");
    signal("-USR1");
    assert!(readers.wait_for(&card_reader(), false, READER_TIMEOUT).expect("status"), "pulled out");
    signal("-USR2");
    assert!(readers.wait_for(&card_reader(), true, READER_TIMEOUT).expect("status"), "back in");
    let mut channel = connect(&readers, &card_reader());
    let mut purse = Purse::select(CardSession::new(&mut channel)).expect("select");
    assert_eq!(purse.balance().expect("balance"), Fen(0));
    channel.disconnect();
    signal("-TERM");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            assert!(status.success(), "clean exit on SIGTERM: {status}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "card-host serve did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// pcscd restarts under a served card: the bridge reconnects by itself and the
/// card is back in the reader for a new PC/SC context.
#[test]
fn served_card_comes_back_after_pcscd_restarts() {
    let _reader = ReaderLock::take();
    let directory = tempfile::tempdir().expect("temp dir");
    let (_, card) = issue_card(directory.path(), 0, Fen(4_321));
    let served = ServedCard::serve(card, SLOT0_PORT);
    let insertions = served.control().insertions();
    restart_pcscd();

    let deadline = std::time::Instant::now() + READER_TIMEOUT;
    while served.control().insertions() == insertions || !vpcd_available() {
        assert!(std::time::Instant::now() < deadline, "the card did not reconnect to the restarted pcscd");
        std::thread::sleep(Duration::from_millis(50));
    }
    let readers = PcscReaders::establish().expect("a new PC/SC context");
    let mut channel = connect(&readers, &card_reader());
    let mut purse = Purse::select(CardSession::new(&mut channel)).expect("select");
    assert_eq!(purse.balance().expect("balance"), Fen(4_321));
    channel.disconnect();
}

/// Extended-length APDUs (ISO/IEC 7816-4 5.1: Lc and Le on two bytes) pass
/// through pcscd and vpcd to the card, both ways.
#[test]
fn extended_length_apdus_pass_through_pcscd() {
    let mut rig = Rig::new(terminal_number());
    rig.serve_card(0, Fen(0));
    let mut channel = rig.card_channel();
    // SELECT by name, case 4E: 00 A4 04 00 | 00 00 08 | AID | 00 00. Sent as bytes
    // on the channel: a Command would choose the short form.
    let select = hex_bytes("00A40400000008A00000063201010500 00");
    let answer = channel.transmit(&select).expect("round trip");
    assert_eq!(&answer[answer.len() - 2..], [0x90, 0x00], "extended SELECT");
    // READ BINARY of the public information, case 2E with Le = 300: the 30 bytes.
    let answer = channel.transmit(&hex_bytes("00B09500 00012C")).expect("round trip");
    assert_eq!(answer.len(), 32, "30 bytes and the status word");
    assert_eq!(&answer[30..], [0x90, 0x00]);
}

fn hex_bytes(text: &str) -> Vec<u8> {
    let digits: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    (0..digits.len()).step_by(2).map(|i| u8::from_str_radix(&digits[i..i + 2], 16).expect("hex")).collect()
}

/// A hospital counter: the patient's PIN, the medical data, a visit registered.
#[test]
fn medical_data_and_a_visit_through_pcscd() {
    use terminal::medical::{Medical, Visit};
    let mut rig = Rig::new(terminal_number());
    rig.serve_card(0, Fen(0));
    let mut channel = rig.card_channel();
    let mut medical = Medical::select(CardSession::new(&mut channel)).expect("select medical");
    let refused = medical.patient().expect_err("patient data needs the PIN");
    assert_eq!(refused.status(), Some(StatusWord::SecurityStatusNotSatisfied));
    medical.verify_pin("123456").expect("PIN");
    let patient = medical.patient().expect("patient information");
    assert_eq!(patient.patient_number, "P31000000001");
    assert_eq!(patient.allergies(), ["penicillin"]);
    assert!(medical.visits().expect("visits").is_empty());
    let visit =
        Visit { date: [0x20, 0x26, 0x11, 0x25], hospital: [0x31, 0, 0, 0, 0x05, 0x01], department: 12, visit_type: 1 };
    medical.register_visit(&visit).expect("APPEND RECORD");
    assert_eq!(medical.visits().expect("visits"), [visit]);
}

/// `PcscChannel::reset` through pcscd: a warm reset on the channel's own
/// exclusive connection reaches the card (vpcd's reset), which forgets its
/// session — the PIN verified before is no longer (re-selecting the application
/// alone keeps it) — while the connection stays usable with the same ATR.
///
/// The other way a card is reset under a channel, another connection resetting
/// it (`PcscChannel::transmit`'s `SCARD_W_RESET_CARD` branch), cannot be made
/// through pcsc-lite: the channel holds the card exclusively, and a second
/// connection, shared or direct, is refused with `SCARD_E_SHARING_VIOLATION`.
#[test]
fn a_channel_reset_clears_the_cards_session_through_pcscd() {
    let mut rig = Rig::new(terminal_number());
    rig.serve_card(0, Fen(0));
    let mut channel = rig.card_channel();
    let atr = channel.atr().expect("ATR");
    let mut social = SocialSecurity::select(CardSession::new(&mut channel)).expect("select SSSE");
    social.verify_pin("123456").expect("right PIN");
    assert_eq!(social.cardholder().expect("cardholder after the PIN").name, "张伟");
    // Selecting the application again keeps the verified PIN ...
    let mut social = SocialSecurity::select(CardSession::new(&mut channel)).expect("select SSSE again");
    assert!(social.cardholder().is_ok(), "the PIN survives a SELECT");

    // ... a reset does not.
    channel.reset().expect("warm reset");
    assert_eq!(channel.atr().expect("ATR after the reset"), atr);
    let mut social = SocialSecurity::select(CardSession::new(&mut channel)).expect("select after the reset");
    let refused = social.cardholder().expect_err("the reset forgot the PIN");
    assert_eq!(refused.status(), Some(StatusWord::SecurityStatusNotSatisfied));
    social.verify_pin("123456").expect("the PIN again");
    assert!(social.cardholder().is_ok());
    // Nobody else can reach the card meanwhile: the connection is exclusive.
    let other = PcscReaders::establish().expect("another PC/SC context");
    let refused = other.connect(&card_reader(), Duration::from_millis(300)).err().expect("the card is held");
    assert!(matches!(&refused, ReaderError::Pcsc(error) if format!("{error:?}") == "SharingViolation"), "{refused:?}");
}

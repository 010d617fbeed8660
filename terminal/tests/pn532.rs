//! The PN532 driver against card-host's PN532 emulator on a real pseudo-terminal
//! pair: a software citizen card in the emulated field, the terminal's purse
//! client on top, the PSAM in-process.

mod common;

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use card_host::card::{CardType, CitizenCard};
use card_host::pn532::{Control, Pn532, Pty, Uid};
use card_host::vpcd::{Tear, TearPoint};
use card_host::{Fen, TransactionType};
use common::{at, card, psam};
use terminal::journal::Journal;
use terminal::psam::PsamSession;
use terminal::purse::{PurchaseRequest, Purse};
use terminal::reader::pn532::{FirmwareVersion, PORT_READ_TIMEOUT, Pn532Error, Pn532Options, Pn532Reader};
use terminal::reader::{Channel, InProcess, ReaderError};
use terminal::transaction::{self, Place, Recovered, TransactionError};
use terminal::{CardError, CardSession};

/// An emulated PN532 with `cards` in its field, served on a pty by a thread.
struct Field {
    control: Arc<Control>,
    server: Option<JoinHandle<Vec<CitizenCard>>>,
}

impl Field {
    fn start(cards: Vec<(CitizenCard, Uid)>, chunk_max: usize) -> (Field, serialport::TTYPort) {
        let mut pty = Pty::open(None).expect("pty pair");
        let mut host = pty.host_port().expect("host side");
        serialport::SerialPort::set_timeout(&mut host, PORT_READ_TIMEOUT).expect("timeout");
        let mut chip = Pn532::with_cards(cards).expect("cards").with_chunk_max(chunk_max);
        let control = chip.control();
        let server = std::thread::spawn(move || {
            chip.serve(pty.master()).expect("emulator runs");
            chip.into_cards()
        });
        (Field { control, server: Some(server) }, host)
    }

    fn stop(&mut self) -> Vec<CitizenCard> {
        self.control.stop();
        self.server.take().map(|server| server.join().expect("emulator thread")).unwrap_or_default()
    }
}

impl Drop for Field {
    fn drop(&mut self) {
        self.control.stop();
    }
}

fn one_card(balance: Fen) -> Vec<(CitizenCard, Uid)> {
    vec![(card(CardType::Ordinary, 0x3100_0000_0000_0101, balance, 1), Uid::random_single([1, 1, 1]))]
}

fn request(amount: u32) -> PurchaseRequest {
    PurchaseRequest { amount: Fen(amount), at: at(8, 30, 0), compound_records: vec![] }
}

/// Buys `amount` with the card in `reader` and the in-process PSAM; returns the
/// balance after.
fn buy<P: Read + Write>(reader: &mut Pn532Reader<P>, amount: u32) -> Result<Fen, CardError> {
    let mut psam_reader = InProcess::new(psam());
    let mut psam = PsamSession::open(CardSession::new(&mut psam_reader)).expect("PSAM");
    let mut purse = Purse::select(CardSession::new(reader))?;
    let before = purse.balance()?;
    let receipt = purse.purchase(&mut psam, &request(amount))?;
    assert_eq!(receipt.balance_before, before);
    let after = purse.balance()?;
    assert_eq!(after, Fen(before.0 - amount), "debited exactly once");
    Ok(after)
}

#[test]
fn purchase_through_the_pn532() {
    let (mut field, host) = Field::start(one_card(Fen(10_000)), 262);
    let mut reader = Pn532Reader::new(host);
    let firmware = reader.wake_up().expect("PN532 wakes up");
    assert_eq!(firmware, FirmwareVersion { ic: 0x32, version: 1, revision: 6, support: 7 });
    let target = reader.find_card().expect("listed").expect("a card");
    assert_eq!(target.uid, [0x08, 1, 1, 1]);
    assert_eq!(target.sak & 0x20, 0x20, "ISO 14443-4");
    assert_eq!(buy(&mut reader, 250).expect("purchase"), Fen(9_750));
    assert_eq!(buy(&mut reader, 1_000).expect("second purchase"), Fen(8_750));
    let history = Purse::select(CardSession::new(&mut reader)).expect("select").history().expect("history");
    assert_eq!(history.len(), 2);
    reader.release().expect("release");
    assert!(matches!(reader.transmit(&[0x00, 0xA4, 0x04, 0x00]), Err(ReaderError::CardRemoved)));
    let cards = field.stop();
    assert_eq!(cards[0].image().purse.balance, Fen(8_750));
}

#[test]
fn long_apdus_are_chained_both_ways() {
    // Small chunks on both sides: every APDU of a purchase is chained.
    let (mut field, host) = Field::start(one_card(Fen(5_000)), 5);
    let options = Pn532Options { chunk_max: 7, ..Pn532Options::default() };
    let mut reader = Pn532Reader::with_options(host, options);
    reader.wake_up().expect("awake");
    reader.find_card().expect("listed").expect("a card");
    assert_eq!(buy(&mut reader, 120).expect("purchase"), Fen(4_880));
    let history = Purse::select(CardSession::new(&mut reader)).expect("select").history().expect("history");
    assert_eq!(history[0].amount, Fen(120));
    field.stop();
}

#[test]
fn two_cards_in_the_field_are_refused_until_one_is_left() {
    let cards = vec![
        (card(CardType::Ordinary, 0x3100_0000_0000_0201, Fen(1_000), 1), Uid::random_single([2, 2, 1])),
        (card(CardType::Student, 0x3100_0000_0000_0202, Fen(1_000), 2), Uid::random_single([2, 2, 2])),
    ];
    let (mut field, host) = Field::start(cards, 262);
    let mut reader = Pn532Reader::new(host);
    reader.wake_up().expect("awake");
    let refused = reader.find_card();
    assert!(matches!(refused, Err(ReaderError::SeveralCards(2))), "{refused:?}");
    let message = refused.expect_err("refused").to_string();
    assert!(message.contains("present one card only"), "{message}");
    assert!(reader.target().is_none());
    assert!(matches!(reader.transmit(&[0x00, 0xB0, 0x95, 0x00, 0x1E]), Err(ReaderError::CardRemoved)));

    field.control.set_present(0, false);
    let target = reader.find_card().expect("listed").expect("one card left");
    assert_eq!(target.uid, [0x08, 2, 2, 2]);
    assert_eq!(buy(&mut reader, 100).expect("purchase"), Fen(900));
    let cards = field.stop();
    assert_eq!(cards[0].image().purse.balance, Fen(1_000), "the refused card was not touched");
    assert_eq!(cards[1].image().purse.balance, Fen(900));
}

/// The card leaves at DEBIT (the 5th APDU of [`buy`]: SELECT, READ BINARY,
/// GET BALANCE, INITIALIZE, DEBIT): the terminal sees a removal, and GET TRANSACTION PROVE
/// on the card's return tells whether the debit happened.
#[test]
fn card_removed_mid_apdu_is_reported_and_settled_by_prove() {
    for (point, debited) in [(TearPoint::BeforeCommand, false), (TearPoint::AfterCommand, true)] {
        let (mut field, host) = Field::start(one_card(Fen(2_000)), 262);
        let mut reader = Pn532Reader::new(host);
        reader.wake_up().expect("awake");
        reader.find_card().expect("listed").expect("a card");
        field.control.tear_at(Tear { apdu: 5, point });
        let outcome = buy(&mut reader, 300);
        let error = outcome.expect_err("torn");
        assert!(error.is_card_removed(), "{point:?}: {error:?}");
        assert!(matches!(reader.transmit(&[0x00, 0xB0, 0x95, 0x00, 0x1E]), Err(ReaderError::CardRemoved)));
        assert_eq!(reader.find_card().expect("listed"), None, "the field is empty");

        field.control.insert();
        reader.find_card().expect("listed").expect("the card is back");
        let mut purse = Purse::select(CardSession::new(&mut reader)).expect("select");
        let proof = purse.prove(TransactionType::PursePurchase, 1).expect("prove");
        assert_eq!(proof.is_some(), debited, "{point:?}");
        let balance = purse.balance().expect("balance");
        assert_eq!(balance, Fen(if debited { 1_700 } else { 2_000 }), "{point:?}");
        field.stop();
    }
}

/// The PN532's answer to DEBIT is lost on the line (the card debited): the
/// driver does not send DEBIT again (a second DEBIT would be refused and the
/// intent voided while the card was charged) but reports an unknown outcome;
/// the journal keeps the intent and GET TRANSACTION PROVE completes it. A read
/// whose answer is lost is simply sent again.
#[test]
fn a_lost_answer_to_debit_is_never_sent_again_and_is_settled_by_prove() {
    let (mut field, host) = Field::start(one_card(Fen(2_000)), 262);
    let options = Pn532Options { ack_timeout: Duration::from_millis(200), ..Pn532Options::default() };
    let mut reader = Pn532Reader::with_options(host, options);
    reader.wake_up().expect("awake");
    reader.find_card().expect("listed").expect("a card");
    let directory = tempfile::tempdir().expect("temp dir");
    let journal = Journal::open(&directory.path().join("journal.sqlite")).expect("journal");
    let mut psam_reader = InProcess::new(psam());
    let mut psam = PsamSession::open(CardSession::new(&mut psam_reader)).expect("PSAM");

    let mut purse = Purse::select(CardSession::new(&mut reader)).expect("select");
    // A read: its answer lost, it is sent again and answered.
    let before = field.control.apdus();
    field.control.lose_answer_at(1);
    assert_eq!(purse.balance().expect("GET BALANCE sent again"), Fen(2_000));
    assert_eq!(field.control.apdus() - before, 2, "GET BALANCE ran twice, harmlessly");

    // INITIALIZE is the 1st APDU from here, DEBIT the 2nd: DEBIT's answer is lost.
    let before = field.control.apdus();
    field.control.lose_answer_at(2);
    let outcome = transaction::purchase(&mut purse, &mut psam, &journal, &request(300), Place::default());
    let Err(TransactionError::Torn { source, .. }) = &outcome else { panic!("not torn: {outcome:?}") };
    assert!(
        matches!(source, CardError::Reader(ReaderError::Pn532(Pn532Error::OutcomeUnknown(_)))),
        "an unknown outcome: {source:?}"
    );
    assert_eq!(field.control.apdus() - before, 2, "INITIALIZE and DEBIT, each sent once");
    assert_eq!(journal.counts().expect("counts").intents, 1, "the intent is kept");

    // The card is read again: GET TRANSACTION PROVE shows the debit; completed once.
    reader.find_card().expect("listed").expect("the card is still there");
    let mut purse = Purse::select(CardSession::new(&mut reader)).expect("select");
    let recovered = transaction::recover_card(&mut purse, &journal).expect("recover");
    assert!(matches!(recovered.as_slice(), [Recovered::Completed(_)]), "{recovered:?}");
    assert_eq!(purse.balance().expect("balance"), Fen(1_700), "charged once");
    let counts = journal.counts().expect("counts");
    assert_eq!((counts.intents, counts.completed, counts.completed_fen), (0, 1, 300));
    let cards = field.stop();
    assert_eq!(cards[0].image().purse.balance, Fen(1_700));
    assert_eq!(cards[0].image().purse.offline_counter, 1, "one debit on the card");
}

/// A bus tap on a PN532 whose answer to INITIALIZE (the tap's 4th card APDU:
/// SELECT, READ BINARY, READ RECORD, INITIALIZE) or to UPDATE CAPP DATA CACHE
/// (the 5th) is lost on the line: the driver does not send it again, nothing
/// is journaled and nothing charged, and the rider is told `PRESENT CARD
/// AGAIN`, as for a PC/SC card pulled out at the same APDU (`bus.rs`, a tap
/// torn at every APDU). Presented again, the card is charged once.
#[test]
fn a_lost_answer_before_debit_at_a_validator_is_present_card_again() {
    use terminal::blacklist::Blacklist;
    use terminal::bus::{BusSettings, Tap, Validator};
    use terminal::tariff::Tariff;

    let serial = 0x3100_0000_0000_0301;
    let cards = vec![(card(CardType::Ordinary, serial, Fen(1_000), 3), Uid::random_single([3, 3, 1]))];
    let (mut field, host) = Field::start(cards, 262);
    let options = Pn532Options { ack_timeout: Duration::from_millis(200), ..Pn532Options::default() };
    let mut reader = Pn532Reader::with_options(host, options);
    reader.wake_up().expect("awake");
    let directory = tempfile::tempdir().expect("temp dir");
    let tariff = Tariff::parse("name = \"flat\"\nfare = { kind = \"flat\", amount_fen = 200 }\n").expect("tariff");
    let journal = Journal::open(&directory.path().join("journal.sqlite")).expect("journal");
    let settings = BusSettings { route: 42, station: 1, dedup_window_seconds: 10 };
    let validator =
        Validator::new(settings, tariff, Blacklist::empty(), journal, Duration::from_secs(86_400)).expect("validator");
    let mut psam_reader = InProcess::new(psam());
    let mut psam = PsamSession::open(CardSession::new(&mut psam_reader)).expect("PSAM");

    for (paid, (lost_apdu, what)) in [(4, "INITIALIZE"), (5, "UPDATE CAPP DATA CACHE")].into_iter().enumerate() {
        reader.find_card().expect("listed").expect("the card in the field");
        let before = field.control.apdus();
        field.control.lose_answer_at(lost_apdu);
        let tap = validator.tap(&mut reader, &mut psam, at(8, 10 * lost_apdu as u8, 0));
        assert!(matches!(tap, Tap::PresentAgain { card: Some(_) }), "{what}: {tap}");
        assert!(tap.to_string().starts_with("PRESENT CARD AGAIN card ************0301"), "{what}: {tap}");
        assert_eq!(field.control.apdus() - before, u64::from(lost_apdu), "{what}: nothing after it, nothing twice");
        let counts = validator.journal().counts().expect("counts");
        assert_eq!((counts.intents, counts.completed, counts.voided), (0, paid as u64, 0), "{what}: nothing journaled");

        reader.find_card().expect("listed").expect("the card presented again");
        let tap = validator.tap(&mut reader, &mut psam, at(8, 10 * lost_apdu as u8 + 1, 0));
        assert!(matches!(tap, Tap::Paid { .. }), "{what}, presented again: {tap}");
    }
    let counts = validator.journal().counts().expect("counts");
    assert_eq!((counts.intents, counts.completed, counts.completed_fen), (0, 2, 400));
    let cards = field.stop();
    assert_eq!(cards[0].image().purse.balance, Fen(600), "charged once a presentation that paid");
    assert_eq!(cards[0].image().purse.offline_counter, 2, "two debits on the card");
}

/// A serial line that injects garbage (with fake start codes) between reads
/// and writes, and breaks one answer frame in `break_every` (the driver asks
/// for it again with NACK) and one command frame in `break_every` (the PN532
/// does not acknowledge it; the driver sends it again).
struct NoisyLine<P> {
    inner: P,
    queue: VecDeque<u8>,
    reads: usize,
    writes: usize,
    answers: usize,
    break_every: usize,
    injected: usize,
    broken_answers: usize,
    broken_commands: usize,
}

const NOISE: [&[u8]; 4] = [
    &[0x13, 0x37, 0x00, 0xFF, 0x05, 0x22],
    &[0x55, 0x55, 0x00, 0x00, 0xFF, 0xFF, 0xFF, 0x01],
    &[0x00, 0xFF, 0x00],
    &[0xFE, 0xED, 0x00, 0x00, 0xFF, 0x03, 0xFD, 0xD5, 0x41],
];

impl<P> NoisyLine<P> {
    fn new(inner: P, break_every: usize) -> Self {
        NoisyLine {
            inner,
            queue: VecDeque::new(),
            reads: 0,
            writes: 0,
            answers: 0,
            break_every,
            injected: 0,
            broken_answers: 0,
            broken_commands: 0,
        }
    }
}

impl<P: Read> Read for NoisyLine<P> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        if self.queue.is_empty() {
            let mut chunk = [0u8; 300];
            let count = self.inner.read(&mut chunk)?;
            let mut chunk = chunk[..count].to_vec();
            self.reads += 1;
            // Break a whole answer frame now and then (its code byte after TFI D5).
            if let Some(at) = chunk.iter().position(|byte| *byte == 0xD5) {
                self.answers += 1;
                if self.answers.is_multiple_of(self.break_every) && at + 1 < chunk.len() {
                    chunk[at + 1] ^= 0x20;
                    self.broken_answers += 1;
                }
            }
            if self.reads.is_multiple_of(3) {
                self.queue.extend(NOISE[self.reads / 3 % NOISE.len()]);
                self.injected += 1;
            }
            self.queue.extend(chunk);
        }
        let count = buffer.len().min(self.queue.len());
        for (slot, byte) in buffer.iter_mut().zip(self.queue.drain(..count)) {
            *slot = byte;
        }
        Ok(count)
    }
}

impl<P: Write> Write for NoisyLine<P> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.writes += 1;
        if self.writes.is_multiple_of(4) {
            self.inner.write_all(NOISE[self.writes / 4 % NOISE.len()])?;
            self.injected += 1;
        }
        // Break a command frame (not an ACK/NACK) now and then: flip its last data byte.
        if bytes.len() > 8 && self.writes.is_multiple_of(self.break_every + 2) {
            let mut broken = bytes.to_vec();
            let at = broken.len() - 3;
            broken[at] ^= 0x01;
            self.broken_commands += 1;
            self.inner.write_all(&broken)?;
            return Ok(bytes.len());
        }
        self.inner.write_all(bytes)?;
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[test]
fn garbage_and_broken_frames_on_the_line_are_survived() {
    let (mut field, host) = Field::start(one_card(Fen(10_000)), 262);
    let mut reader = Pn532Reader::new(NoisyLine::new(host, 5));
    reader.wake_up().expect("awake through the noise");
    reader.find_card().expect("listed").expect("a card");
    let mut balance = Fen(10_000);
    for _ in 0..3 {
        match buy(&mut reader, 100) {
            Ok(after) => balance = after,
            Err(error) => panic!("purchase through noise: {error:?}"),
        }
    }
    assert_eq!(balance, Fen(9_700));
    let line = reader.into_port();
    assert!(line.injected >= 5, "noise injected: {}", line.injected);
    assert!(line.broken_answers >= 1, "answers broken: {}", line.broken_answers);
    assert!(line.broken_commands >= 1, "commands broken: {}", line.broken_commands);
    let cards = field.stop();
    assert_eq!(cards[0].image().purse.balance, Fen(9_700));
}

#[test]
fn a_silent_or_closed_line_is_an_error() {
    // A pty with nobody on the other side: no ACK, three attempts.
    let pty = Pty::open(None).expect("pty pair");
    let mut host = pty.host_port().expect("host side");
    serialport::SerialPort::set_timeout(&mut host, PORT_READ_TIMEOUT).expect("timeout");
    let options = Pn532Options { ack_timeout: Duration::from_millis(50), ..Pn532Options::default() };
    let mut reader = Pn532Reader::with_options(host, options);
    let outcome = reader.wake_up();
    assert!(
        matches!(outcome, Err(ReaderError::Pn532(Pn532Error::NoAck { command: 0x14, attempts: 3 }))),
        "{outcome:?}"
    );
    // The module's side closed: the serial line itself fails.
    drop(pty);
    let outcome = reader.find_card();
    assert!(matches!(outcome, Err(ReaderError::Serial(_))), "{outcome:?}");
}

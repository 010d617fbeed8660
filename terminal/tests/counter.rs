//! The hospital counter on an in-process card: the PIN, the cardholder and
//! medical data, the visit registered on the card, the co-payment journaled.

mod common;

use card_host::card::CardType;
use card_host::status::StatusWord;
use card_host::{Fen, TransactionType};
use common::*;
use terminal::CardSession;
use terminal::counter::{Counter, CounterError, CounterSettings};
use terminal::journal::{Counts, Journal};
use terminal::medical::Medical;
use terminal::psam::PsamSession;
use terminal::purse::Purse;
use terminal::reader::InProcess;

const SETTINGS: CounterSettings = CounterSettings { hospital: [0x31, 0, 0, 0, 0x09, 0x03], department: 12 };

#[test]
fn counter_reads_registers_and_takes_the_co_payment() {
    let directory = tempfile::tempdir().expect("temp dir");
    let mut counter = Counter::new(Journal::open(&directory.path().join("journal.sqlite")).expect("journal"), SETTINGS);
    let mut card = InProcess::new(card(CardType::Ordinary, 21, Fen(5_000), 3));
    let mut psam_reader = InProcess::new(psam());
    let mut psam = PsamSession::open(CardSession::new(&mut psam_reader)).expect("PSAM");

    let wrong = counter.read_patient(&mut card, "000000").expect_err("wrong PIN");
    assert!(matches!(&wrong, CounterError::Card(error) if matches!(error.status(), Some(StatusWord::PinTriesLeft(_)))));

    let done = counter.serve(&mut card, &mut psam, "123456", 1, Fen(1_550), at(9, 30, 0)).expect("served");
    assert_eq!(done.patient.medical.patient_number, "P31000000001");
    assert!(!done.patient.cardholder.name.is_empty());
    assert!(done.patient.visits.is_empty(), "no visit before this one");
    let debug = format!("{:?}", done.patient.cardholder);
    assert!(!debug.contains(&done.patient.cardholder.citizen_id), "identity masked in Debug: {debug}");
    assert_eq!(done.visit.date, [0x20, 0x26, 0x11, 0x25]);
    assert_eq!((done.visit.hospital, done.visit.department), (SETTINGS.hospital, 12));
    let paid = done.payment.expect("co-payment");
    assert_eq!(paid.entry.amount, Fen(1_550));
    assert_eq!(paid.entry.reference.as_deref(), Some("visit:12"));

    // The card holds the visit and the debit; the journal the purchase.
    let mut medical = Medical::select(CardSession::new(&mut card)).expect("medical");
    medical.verify_pin("123456").expect("PIN");
    assert_eq!(medical.visits().expect("visits"), std::slice::from_ref(&done.visit));
    let mut purse = Purse::select(CardSession::new(&mut card)).expect("purse");
    assert_eq!(purse.balance().expect("balance"), Fen(3_450));
    let proof = purse.prove(TransactionType::PursePurchase, 1).expect("prove").expect("debited");
    assert_eq!(proof.tac, paid.tac);
    let counts = counter.journal().counts().expect("counts");
    assert_eq!(counts, Counts { intents: 0, completed: 1, voided: 0, completed_fen: 1_550 });
    let pending = counter.journal().pending_upload(10).expect("pending");
    assert_eq!(pending.len(), 1, "the co-payment goes to clearing");

    // No co-payment due: nothing charged. A zero or huge amount is refused.
    let free = counter.serve(&mut card, &mut psam, "123456", 2, Fen(0), at(10, 0, 0)).expect("served");
    assert!(free.payment.is_none());
    assert_eq!(free.patient.visits.len(), 1);
    assert!(matches!(counter.co_payment(&mut card, &mut psam, Fen(0), at(10, 1, 0)), Err(CounterError::Amount)));
    assert_eq!(counter.journal().counts().expect("counts").completed, 1);

    // A blacklisted card pays nothing here.
    let serial = card_host::ApplicationSerial(21u64.to_be_bytes());
    assert!(counter.update_blacklist(terminal::blacklist::Blacklist::new(1, [serial]).expect("list")));
    let refused = counter.co_payment(&mut card, &mut psam, Fen(100), at(10, 2, 0));
    assert!(matches!(refused, Err(CounterError::Blacklisted)), "{refused:?}");
    assert_eq!(counter.journal().counts().expect("counts").completed, 1);
}

//! A served card process killed in the middle of a purchase reloads a
//! consistent image: balance, counter, transaction record and proof changed
//! together or not at all. First at each point of the atomic save (the fail
//! points of `card_host::storage`), then with `kill -9` at random moments.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use card_host::card::CitizenCard;
use card_host::{CardDateTime, Fen, TerminalNumber, TransactionType};
use system_tests::*;
use terminal::CardSession;
use terminal::psam::PsamSession;
use terminal::purse::{PurchaseRequest, Purse};

const TERMINAL: TerminalNumber = TerminalNumber([0x31, 0x00, 0x00, 0x00, 0x00, 0x08]);
const BALANCE: Fen = Fen(100_000);
/// Random kills per run.
const KILL_TRIALS: u64 = 20;

/// A `card-host serve` process, killed when dropped (also when a test fails).
struct Served(Child);

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(path: &std::path::Path, fail_point: Option<&str>) -> Served {
    let mut command = Command::new(card_host_binary());
    command.args(["serve", "--card"]).arg(path).stdout(Stdio::null());
    if let Some(point) = fail_point {
        command.env("CARD_HOST_FAILPOINT", point).env("CARD_HOST_FAILPOINT_SKIP", "0");
    }
    Served(command.spawn().expect("card-host serve"))
}

fn purchase_request() -> PurchaseRequest {
    PurchaseRequest {
        amount: Fen(1),
        at: CardDateTime::new(2026, 11, 25, 9, 0, 0).expect("valid"),
        compound_records: vec![],
    }
}

/// The image reloads, its invariants hold, and with 1-fen purchases only the
/// balance and the offline counter moved together.
fn assert_consistent(path: &std::path::Path) -> u16 {
    let card = CitizenCard::open(path).expect("the image reloads after the crash");
    let purse = &card.image().purse;
    assert!(purse.is_consistent());
    assert_eq!(BALANCE.0 - purse.balance.0, u32::from(purse.offline_counter), "balance and counter moved together");
    assert_eq!(purse.proofs.len(), usize::from(purse.offline_counter).min(card_host::card::PROOFS_MAX));
    purse.offline_counter
}

fn wait_exit(child: &mut Child) {
    for _ in 0..500 {
        if child.try_wait().expect("wait").is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    panic!("card-host serve did not end");
}

#[test]
fn card_killed_at_each_point_of_a_save_reloads_before_or_after() {
    let rig = Rig::new(TERMINAL);
    let (directory, readers) = (&rig.directory, &rig.readers);
    let mut psam_channel = rig.psam_channel();
    let mut psam = PsamSession::open(CardSession::new(&mut psam_channel)).expect("PSAM");

    for (point, debited) in [("before-temp-sync", false), ("before-rename", false), ("before-directory-sync", true)] {
        let (path, card) = issue_card(directory.path(), 0, BALANCE);
        drop(card);
        let mut child = serve(&path, Some(point));
        let mut channel = readers.connect(&card_reader(), READER_TIMEOUT).expect("card");
        let outcome = Purse::select(CardSession::new(&mut channel))
            .and_then(|mut purse| purse.purchase(&mut psam, &purchase_request()));
        assert!(outcome.is_err(), "{point}: the card died during DEBIT");
        drop(channel);
        wait_exit(&mut child.0);
        wait_for_reader(&card_reader(), false);

        let counter = assert_consistent(&path);
        assert_eq!(counter, u16::from(debited), "{point}: the image is the state before or after the debit");

        // Served again, the card proves exactly what its image says.
        let mut child = serve(&path, None);
        let mut channel = readers.connect(&card_reader(), READER_TIMEOUT).expect("card back");
        let mut purse = Purse::select(CardSession::new(&mut channel)).expect("select");
        let proof = purse.prove(TransactionType::PursePurchase, 1).expect("prove");
        assert_eq!(proof.is_some(), debited, "{point}");
        purse.purchase(&mut psam, &purchase_request()).expect("the card works after the crash");
        channel.disconnect();
        child.0.kill().expect("stop");
        wait_exit(&mut child.0);
        wait_for_reader(&card_reader(), false);
        assert_eq!(assert_consistent(&path), u16::from(debited) + 1);
    }
}

#[test]
fn card_killed_at_random_moments_reloads_consistent() {
    let rig = Rig::new(TERMINAL);
    let (directory, readers) = (&rig.directory, &rig.readers);
    let mut psam_channel = rig.psam_channel();
    let mut psam = PsamSession::open(CardSession::new(&mut psam_channel)).expect("PSAM");
    let (path, card) = issue_card(directory.path(), 1, BALANCE);
    drop(card);

    // A fixed seed (a simple LCG) so that a failure replays with the same delays.
    let mut state: u64 = 0x5EED_CA4D;
    let mut purchases_seen = 0;
    for trial in 0..KILL_TRIALS {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let delay = Duration::from_micros(2_000 + (state >> 33) % 20_000);
        let mut child = serve(&path, None);
        let pid = child.0.id();
        let mut channel = readers.connect(&card_reader(), READER_TIMEOUT).expect("card");
        let killer = std::thread::spawn(move || {
            std::thread::sleep(delay);
            Command::new("kill").args(["-9", &pid.to_string()]).status().expect("kill -9");
        });
        if let Ok(mut purse) = Purse::select(CardSession::new(&mut channel)) {
            while purse.purchase(&mut psam, &purchase_request()).is_ok() {
                purchases_seen += 1;
            }
        }
        killer.join().expect("killer");
        drop(channel);
        wait_exit(&mut child.0);
        wait_for_reader(&card_reader(), false);
        let counter = assert_consistent(&path);
        assert!(
            u32::from(counter) >= purchases_seen && u32::from(counter) <= purchases_seen + trial as u32 + 1,
            "trial {trial}: every acknowledged purchase is on the card, and at most one unacknowledged per kill"
        );
    }
    assert!(purchases_seen > 0, "the kills left time for some purchases");
}

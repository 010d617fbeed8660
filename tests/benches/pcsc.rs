//! The card through the real pcscd + vpcd against the same card in-process, in
//! one run: the bare APDU round trip, and a purchase (card INITIALIZE and DEBIT,
//! PSAM INIT SAM and CREDIT SAM: four round trips) against four bare round trips.
//! Run: `cargo bench -p system-tests --bench pcsc` (pcscd with vpcd must be running:
//! `bash scripts/test.sh` or `scripts/demo.sh` starts it).
//!
//! Figures are medians of batches; ratios are taken within the run.

use std::time::Duration;

use card_host::card::CitizenCard;
use card_host::psam::Psam;
use card_host::vpcd::{SLOT0_PORT, SLOT1_PORT};
use card_host::{CardDateTime, Fen, SmartCard, TerminalNumber};
use system_tests::bench::{bare_round_trip, median_per_operation};
use system_tests::{ReaderLock, ServedCard, card_reader, issue_card, issue_psam, psam_reader};
use terminal::CardSession;
use terminal::psam::PsamSession;
use terminal::purse::{PurchaseRequest, Purse};
use terminal::reader::pcsc::PcscReaders;
use terminal::reader::{Channel, InProcess};

const TERMINAL: TerminalNumber = TerminalNumber([0x31, 0x00, 0x00, 0x00, 0x00, 0x01]);

/// (bare GET BALANCE round trip, purchase) over the given channels.
fn measure(
    card: &mut dyn Channel,
    psam: &mut dyn Channel,
    bare_count: u32,
    purchase_count: u32,
) -> (Duration, Duration) {
    let bare = bare_round_trip(card, bare_count);
    let mut psam = PsamSession::open(CardSession::new(psam)).expect("PSAM");
    let mut purse = Purse::select(CardSession::new(card)).expect("select");
    let at = CardDateTime::new(2026, 11, 25, 8, 0, 0).expect("valid");
    let request = PurchaseRequest { amount: Fen(1), at, compound_records: vec![] };
    let purchase = median_per_operation(purchase_count, || {
        for _ in 0..purchase_count {
            purse.purchase(&mut psam, &request).expect("purchase");
        }
    });
    (bare, purchase)
}

fn main() {
    let _reader = ReaderLock::take();
    let directory = tempfile::tempdir().expect("temp dir");

    // In-process, images saved to files as the served cards do.
    let (_, card) = issue_card(directory.path(), 0, Fen(90_000));
    let (_, psam) = issue_psam(directory.path(), TERMINAL);
    let (in_bare, in_purchase) = measure(&mut InProcess::new(card), &mut InProcess::new(psam), 2_000, 50);

    // The same through pcscd + vpcd.
    let (_, card) = issue_card(directory.path(), 1, Fen(90_000));
    let (_, psam) = issue_psam(directory.path(), TERMINAL);
    let _card = ServedCard::serve(card, SLOT0_PORT);
    let _psam = ServedCard::serve(psam, SLOT1_PORT);
    let readers = PcscReaders::establish().expect("PC/SC");
    let mut card_channel = readers.connect(&card_reader(), Duration::from_secs(10)).expect("card");
    let mut psam_channel = readers.connect(&psam_reader(), Duration::from_secs(10)).expect("PSAM");
    let (pcsc_bare, pcsc_purchase) = measure(&mut card_channel, &mut psam_channel, 500, 50);

    // In memory: the card's own CPU cost, with no file and no reader.
    let memory = |profile: usize| {
        let (path, _) = issue_card(directory.path(), profile, Fen(90_000));
        let image = card_host::storage::load(&path).expect("image");
        let mut card = CitizenCard::with_seed(image, card_host::storage::Storage::Memory, 1);
        card.power_on();
        card
    };
    let mut memory_psam =
        Psam::new(Psam::issue(&system_tests::master_keys(), TERMINAL, 1), card_host::storage::Storage::Memory);
    memory_psam.power_on();
    let (memory_bare, memory_purchase) =
        measure(&mut InProcess::new(memory(2)), &mut InProcess::new(memory_psam), 20_000, 2_000);

    let micros = |d: Duration| d.as_secs_f64() * 1e6;
    let per_second = |d: Duration| 1.0 / d.as_secs_f64();
    println!("| path | bare APDU round trip | APDUs per second | purchase (4 round trips) | purchase ÷ (4 × bare) |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    for (name, bare, purchase) in [
        ("in-process, images in memory", memory_bare, memory_purchase),
        ("in-process, images saved with fsync", in_bare, in_purchase),
        ("pcscd + vpcd, images saved with fsync", pcsc_bare, pcsc_purchase),
    ] {
        println!(
            "| {name} | {:.2} µs | {:.0} | {:.1} µs | {:.2} |",
            micros(bare),
            per_second(bare),
            micros(purchase),
            purchase.as_secs_f64() / (4.0 * bare.as_secs_f64())
        );
    }
    println!();
    println!(
        "pcscd + vpcd purchase ÷ (4 × pcscd bare round trip + the in-process durable purchase's own cost): {:.2}",
        pcsc_purchase.as_secs_f64() / (4.0 * pcsc_bare.as_secs_f64() + in_purchase.as_secs_f64())
    );
}

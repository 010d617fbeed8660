//! In-process figures of the software card: what one APDU costs, what a whole
//! purchase costs against the same number of bare APDUs, and what durability
//! (the atomic, fsync'd image save) adds. Run: `cargo bench -p card-host --bench card`.
//!
//! Figures are medians of several batches, and ratios are taken within one run
//! (this machine is shared and noisy).

use std::hint::black_box;
use std::time::{Duration, Instant};

use card_host::card::CitizenCard;
use card_host::commands;
use card_host::issue::{self, IssueOptions, MasterKeySet, ProfileFile};
use card_host::psam::Psam;
use card_host::responses::{Debit, PsamPurchase, PurchaseInitialization};
use card_host::storage::Storage;
use card_host::{CardDateTime, Fen, SmartCard, TerminalNumber, TransactionType};

const BATCHES: usize = 15;

fn median_per_op(ops_per_batch: u32, mut batch: impl FnMut()) -> Duration {
    let mut times: Vec<Duration> = (0..BATCHES)
        .map(|_| {
            let start = Instant::now();
            batch();
            start.elapsed() / ops_per_batch
        })
        .collect();
    times.sort();
    times[BATCHES / 2]
}

fn new_pair(storage_dir: Option<&std::path::Path>) -> (CitizenCard, Psam) {
    let keys = MasterKeySet::load(&issue::fixtures::test_keyset()).expect("keys");
    let holder =
        ProfileFile::load(&issue::fixtures::cardholders()).expect("profiles").cardholder(0).expect("0").clone();
    let options = IssueOptions { initial_balance: Fen(100_000), ..IssueOptions::default() };
    let image = issue::issue(&holder, &keys, &options).expect("issue");
    let terminal = TerminalNumber([0x31, 0, 0, 0, 0, 1]);
    let psam_image = Psam::issue(&keys, terminal, 1);
    let (card_storage, psam_storage) = match storage_dir {
        None => (Storage::Memory, Storage::Memory),
        Some(dir) => {
            let card_path = dir.join("card.json");
            let psam_path = dir.join("psam.json");
            card_host::storage::create(&card_path, &image, true).expect("card image");
            card_host::storage::create(&psam_path, &psam_image, true).expect("psam image");
            (Storage::file(card_path), Storage::file(psam_path))
        }
    };
    let mut card = CitizenCard::with_seed(image, card_storage, 1);
    let mut psam = Psam::new(psam_image, psam_storage);
    card.power_on();
    psam.power_on();
    card.transmit(&commands::select_by_name(&issue::PURSE_AID).to_bytes());
    (card, psam)
}

/// One purchase of 1 fen: the four APDUs a validator sends after SELECT.
fn purchase(card: &mut CitizenCard, psam: &mut Psam, serial: [u8; 8], at: &CardDateTime) {
    let terminal = psam.terminal_number();
    let answer = card.transmit(&commands::initialize_for_purchase(1, Fen(1), &terminal).to_bytes());
    let init = PurchaseInitialization::parse(&answer[..answer.len() - 2]).expect("init");
    let input = commands::psam::PurchaseInput {
        card_random: init.card_random,
        offline_counter: init.offline_counter,
        amount: Fen(1),
        kind: TransactionType::PursePurchase,
        at: *at,
        key_version: init.key_version,
        algorithm_id: init.algorithm_id,
        application_serial: serial,
        higher_factors: &[],
    };
    let answer = psam.transmit(&commands::psam::init_for_purchase(&input).to_bytes());
    let sam = PsamPurchase::parse(&answer[..answer.len() - 2]).expect("8070");
    let answer = card.transmit(&commands::debit_for_purchase(sam.terminal_serial, at, sam.mac1).to_bytes());
    let debit = Debit::parse(&answer[..answer.len() - 2]).expect("debit");
    let answer = psam.transmit(&commands::psam::credit_for_purchase(debit.mac2).to_bytes());
    assert_eq!(answer, [0x90, 0x00]);
}

fn main() {
    let at = CardDateTime::new(2026, 11, 24, 8, 0, 0).expect("valid");
    let (mut card, mut psam) = new_pair(None);
    let serial = card.image().serial.0;
    let balance = commands::get_balance().to_bytes();

    let apdu = median_per_op(20_000, || {
        for _ in 0..20_000 {
            black_box(card.transmit(black_box(&balance)));
        }
    });
    let purchases_per_batch = 2_000;
    let in_memory = median_per_op(purchases_per_batch, || {
        for _ in 0..purchases_per_batch {
            purchase(&mut card, &mut psam, serial, &at);
        }
    });

    let directory = std::env::temp_dir().join(format!("card-host-bench-{}", std::process::id()));
    std::fs::create_dir_all(&directory).expect("temp dir");
    let (mut durable_card, mut durable_psam) = new_pair(Some(&directory));
    let durable = median_per_op(20, || {
        for _ in 0..20 {
            purchase(&mut durable_card, &mut durable_psam, serial, &at);
        }
    });
    std::fs::remove_dir_all(&directory).ok();

    let micros = |d: Duration| d.as_secs_f64() * 1e6;
    println!("| in process | per operation | per second | ratio |");
    println!("| --- | ---: | ---: | ---: |");
    println!("| bare APDU (GET BALANCE) | {:.2} µs | {:.0} | 1 |", micros(apdu), 1.0 / apdu.as_secs_f64());
    println!(
        "| purchase, 4 APDUs (card + PSAM), image in memory | {:.2} µs | {:.0} | {:.1} × 4 bare APDUs |",
        micros(in_memory),
        1.0 / in_memory.as_secs_f64(),
        in_memory.as_secs_f64() / (4.0 * apdu.as_secs_f64())
    );
    println!(
        "| purchase, card and PSAM images saved atomically with fsync | {:.0} µs | {:.0} | {:.1} × in memory |",
        micros(durable),
        1.0 / durable.as_secs_f64(),
        durable.as_secs_f64() / in_memory.as_secs_f64()
    );
}

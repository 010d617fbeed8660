//! A bus validator's tap (flat fare, journal on disk) in-process and through
//! pcscd + vpcd, each against the bare APDU round trip of the same path measured
//! in the same run, and the journal's fsync'd commit.
//!
//! Run: `cargo bench -p terminal --bench bus` (pcscd with vpcd must be running:
//! `bash scripts/test.sh` or `scripts/demo.sh` starts it). `cargo bench -p
//! terminal --bench bus -- cpu` runs only the in-process rows on a tmpfs (no
//! pcscd, no disk): the figures to compare with the CPU goal, and what to profile.
//!
//! A paid tap is 8 round trips: the card's SELECT, READ BINARY, READ RECORD,
//! INITIALIZE, UPDATE CAPP DATA CACHE and DEBIT, the PSAM's INIT SAM and CREDIT
//! SAM; and 2 journal commits, each fsync'd (the intent before DEBIT, its
//! completion after). Figures are medians of batches; ratios within the run.
//!
//! Beside each wall time the bench gives the process's CPU time per operation
//! (`getrusage(RUSAGE_SELF)`, user + system, every thread: the journal's sqlx
//! worker thread included), and for the in-process taps the card's and PSAM's
//! share of it (the time spent inside their `transmit`, measured on separate
//! taps), so the terminal's own CPU per tap is the difference.

use std::path::Path;
use std::time::{Duration, Instant};

use card_host::card::CitizenCard;
use card_host::psam::Psam;
use card_host::storage::Storage;
use card_host::vpcd::{SLOT0_PORT, SLOT1_PORT};
use card_host::{ApplicationSerial, CardDateTime, Fen, SmartCard, TerminalNumber, TransactionType};
use system_tests::bench::{BATCHES, bare_round_trip};
use system_tests::{ReaderLock, ServedCard, card_reader, issue_card, issue_psam, psam_reader};
use terminal::CardSession;
use terminal::blacklist::Blacklist;
use terminal::bus::{BusSettings, Tap, Validator};
use terminal::journal::{Entry, Journal, Resolution};
use terminal::psam::PsamSession;
use terminal::reader::pcsc::PcscReaders;
use terminal::reader::{Channel, InProcess};
use terminal::tariff::Tariff;

const TERMINAL: TerminalNumber = TerminalNumber([0x31, 0x00, 0x00, 0x00, 0x00, 0x44]);
/// Round trips of one paid tap (6 card, 2 PSAM).
const TAP_ROUND_TRIPS: u32 = 8;
const BALANCE: Fen = Fen(100_000);

fn validator(directory: &Path, name: &str) -> Validator {
    // One fen a ride, so a card's balance lasts the whole run; the work of a tap
    // does not depend on the amount.
    let tariff = Tariff::parse("name = \"bench\"\nfare = { kind = \"flat\", amount_fen = 1 }\n").expect("tariff");
    let journal = Journal::open(&directory.join(format!("{name}.sqlite"))).expect("journal");
    let settings = BusSettings { route: 42, station: 1, dedup_window_seconds: 10 };
    Validator::new(settings, tariff, Blacklist::empty(), journal, Duration::from_secs(86_400)).expect("validator")
}

/// The process's CPU time so far (user + system, all threads).
fn process_cpu() -> Duration {
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF).expect("getrusage");
    let time = |value: nix::sys::time::TimeVal| {
        Duration::new(u64::try_from(value.tv_sec()).expect("positive"), 0)
            + Duration::from_micros(u64::try_from(value.tv_usec()).expect("positive"))
    };
    time(usage.user_time()) + time(usage.system_time())
}

/// Wall and CPU time per operation: the medians over [`BATCHES`] runs of
/// `batch`, which does `operations` of them.
#[derive(Debug, Clone, Copy)]
struct PerOperation {
    wall: Duration,
    cpu: Duration,
}

fn median_wall_and_cpu(operations: u32, mut batch: impl FnMut()) -> PerOperation {
    let mut walls = Vec::with_capacity(BATCHES);
    let mut cpus = Vec::with_capacity(BATCHES);
    for _ in 0..BATCHES {
        let (start, cpu_start) = (Instant::now(), process_cpu());
        batch();
        cpus.push(process_cpu().saturating_sub(cpu_start) / operations);
        walls.push(start.elapsed() / operations);
    }
    walls.sort();
    cpus.sort();
    PerOperation { wall: walls[BATCHES / 2], cpu: cpus[BATCHES / 2] }
}

/// A channel that adds up the time spent in the channel under it: for an
/// in-process card (pure CPU on this thread), the card's own CPU.
struct Metered<'a> {
    inner: &'a mut dyn Channel,
    spent: Duration,
}

impl Channel for Metered<'_> {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, terminal::ReaderError> {
        let start = Instant::now();
        let answer = self.inner.transmit(apdu);
        self.spent += start.elapsed();
        answer
    }
}

/// What [`measure`] found: the bare GET BALANCE round trip, a paid tap, and
/// (with `share_taps`) the card's and PSAM's share of a tap.
struct Measured {
    bare: Duration,
    tap: PerOperation,
    card_share: Option<Duration>,
}

/// Measures the paid taps of a validator with its journal in `directory`.
/// Each tap is 20 s of card time after the last, beyond the dedup window. With
/// `share_taps` > 0 that many more taps are made through [`Metered`] channels
/// afterwards: the card's and PSAM's share per tap (in-process only).
fn measure(
    directory: &Path,
    name: &str,
    card: &mut dyn Channel,
    psam: &mut dyn Channel,
    counts: (u32, u32, u32),
) -> Measured {
    let (bare_count, tap_count, share_taps) = counts;
    let bare = bare_round_trip(card, bare_count);
    let validator = validator(directory, name);
    let start = CardDateTime::new(2026, 11, 25, 6, 0, 0).expect("valid").unix_seconds();
    let mut taps = 0u64;
    let mut next = move || {
        taps += 1;
        CardDateTime::from_unix_seconds(start + taps * 20).expect("valid")
    };
    let tap = {
        let mut psam = PsamSession::open(CardSession::new(&mut *psam)).expect("PSAM");
        median_wall_and_cpu(tap_count, || {
            for _ in 0..tap_count {
                let tap = validator.tap(&mut *card, &mut psam, next());
                assert!(matches!(tap, Tap::Paid { .. }), "{tap}");
            }
        })
    };
    let card_share = (share_taps > 0).then(|| {
        let mut card = Metered { inner: card, spent: Duration::ZERO };
        let mut psam_channel = Metered { inner: psam, spent: Duration::ZERO };
        let mut psam = PsamSession::open(CardSession::new(&mut psam_channel)).expect("PSAM");
        for _ in 0..share_taps {
            let tap = validator.tap(&mut card, &mut psam, next());
            assert!(matches!(tap, Tap::Paid { .. }), "{tap}");
        }
        (card.spent + psam_channel.spent) / share_taps
    });
    Measured { bare, tap, card_share }
}

/// One fsync'd journal commit: an intent written (and, separately, completed).
fn journal_commit(directory: &Path) -> (PerOperation, PerOperation) {
    let journal = Journal::open(&directory.join("commit.sqlite")).expect("journal");
    let at = CardDateTime::new(2026, 11, 25, 6, 0, 0).expect("valid");
    let mut counter = 0u16;
    let mut intents = Vec::new();
    let count = 50;
    let write = median_wall_and_cpu(count, || {
        for _ in 0..count {
            counter += 1;
            let entry = Entry {
                card: ApplicationSerial([0x31, 0, 0, 0, 0, 0, 0, 1]),
                offline_counter: counter,
                kind: TransactionType::PursePurchase,
                amount: Fen(200),
                balance_before: BALANCE,
                terminal: TERMINAL,
                terminal_serial: u32::from(counter),
                at,
                route: Some(42),
                station: Some(1),
                card_type: 1,
                reference: None,
            };
            intents.push(journal.write_intent(entry).expect("intent"));
        }
    });
    let mut intents = intents.into_iter();
    let complete = median_wall_and_cpu(count, || {
        for _ in 0..count {
            let intent = intents.next().expect("an intent per completion");
            intent.complete(&journal, [1; 4], [2; 4], Resolution::Answer).expect("complete");
        }
    });
    (write, complete)
}

/// The floor under any journal call: an empty statement through its connection.
fn journal_round_trip(directory: &Path) -> PerOperation {
    let journal = Journal::open(&directory.join("round-trip.sqlite")).expect("journal");
    let count = 2_000;
    median_wall_and_cpu(count, || {
        for _ in 0..count {
            journal.round_trip().expect("SELECT 1");
        }
    })
}

fn memory_card(directory: &Path, profile: usize) -> CitizenCard {
    let (path, _) = issue_card(directory, profile, BALANCE);
    let image = card_host::storage::load(&path).expect("image");
    let mut card = CitizenCard::with_seed(image, Storage::Memory, 1);
    card.power_on();
    card
}

fn memory_psam() -> Psam {
    let mut psam = Psam::new(Psam::issue(&system_tests::master_keys(), TERMINAL, 1), Storage::Memory);
    psam.power_on();
    psam
}

fn main() {
    // `-- cpu`: only the in-process rows on a tmpfs (no pcscd, no disk).
    let cpu_only = std::env::args().skip(1).any(|argument| argument == "cpu");
    let _reader = (!cpu_only).then(ReaderLock::take);
    // The journal on the disk it would be on (not a tmpfs) ...
    let directory = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
    let path = directory.path();
    // ... and on a tmpfs, where fsync costs nothing: what is left is CPU.
    let memory_directory = tempfile::tempdir_in("/dev/shm").expect("a tmpfs at /dev/shm");

    let micros = |d: Duration| d.as_secs_f64() * 1e6;
    let (cpu_write, cpu_complete) = journal_commit(memory_directory.path());
    let journal_floor = journal_round_trip(memory_directory.path());

    // In-process, cards in memory, journal on tmpfs: the terminal's own CPU
    // (with SQLite's and the software card's).
    let cpu = measure(
        memory_directory.path(),
        "cpu",
        &mut InProcess::new(memory_card(path, 0)),
        &mut InProcess::new(memory_psam()),
        (20_000, 200, 200),
    );
    let card_share = cpu.card_share.expect("measured");

    println!(
        "journal commit on tmpfs (no fsync cost: CPU and sqlx's hand-offs): intent {:.0} µs (CPU {:.0} µs), \
         completion {:.0} µs (CPU {:.0} µs)",
        micros(cpu_write.wall),
        micros(cpu_write.cpu),
        micros(cpu_complete.wall),
        micros(cpu_complete.cpu)
    );
    println!(
        "journal round trip (SELECT 1 through the same connection: sqlx's hand-off to its SQLite thread): {:.1} µs \
         (CPU {:.1} µs)",
        micros(journal_floor.wall),
        micros(journal_floor.cpu)
    );
    println!(
        "in-process paid tap, journal on tmpfs: {:.0} µs wall, {:.0} µs CPU of the process (all threads), of which \
         the software card's and PSAM's {:.1} µs: the terminal's own CPU {:.0} µs a tap (goal ≤ 50 µs)",
        micros(cpu.tap.wall),
        micros(cpu.tap.cpu),
        micros(card_share),
        micros(cpu.tap.cpu.saturating_sub(card_share))
    );
    if cpu_only {
        return;
    }

    let (write, complete) = journal_commit(path);

    // In-process, cards in memory, journal on disk.
    let memory = measure(
        path,
        "memory",
        &mut InProcess::new(memory_card(path, 3)),
        &mut InProcess::new(memory_psam()),
        (20_000, 100, 0),
    );

    // In-process, card and PSAM images saved with fsync as the served cards do.
    let (_, card) = issue_card(path, 1, BALANCE);
    let (_, psam) = issue_psam(path, TERMINAL);
    let file = measure(path, "file", &mut InProcess::new(card), &mut InProcess::new(psam), (2_000, 50, 0));

    // Through pcscd + vpcd.
    let (_, card) = issue_card(path, 2, BALANCE);
    let (_, psam) = issue_psam(path, TERMINAL);
    let _card = ServedCard::serve(card, SLOT0_PORT);
    let _psam = ServedCard::serve(psam, SLOT1_PORT);
    let readers = PcscReaders::establish().expect("PC/SC");
    let mut card_channel = readers.connect(&card_reader(), Duration::from_secs(10)).expect("card");
    let mut psam_channel = readers.connect(&psam_reader(), Duration::from_secs(10)).expect("PSAM");
    let pcsc = measure(path, "pcsc", &mut card_channel, &mut psam_channel, (500, 50, 0));

    let ratio = |tap: Duration, bare: Duration| tap.as_secs_f64() / (f64::from(TAP_ROUND_TRIPS) * bare.as_secs_f64());
    println!(
        "journal commit (fsync'd, on {}): intent {:.0} µs (CPU {:.0} µs), completion {:.0} µs (CPU {:.0} µs)",
        path.display(),
        micros(write.wall),
        micros(write.cpu),
        micros(complete.wall),
        micros(complete.cpu)
    );
    println!();
    println!(
        "| path | bare round trip | paid tap (8 round trips, 2 journal commits) | tap's CPU (process) | tap ÷ (8 × bare) |"
    );
    println!("| --- | ---: | ---: | ---: | ---: |");
    for (name, measured) in [
        ("in-process, cards in memory, journal on tmpfs (CPU)", &cpu),
        ("in-process, cards in memory, journal on disk", &memory),
        ("in-process, card images saved with fsync, journal on disk", &file),
        ("pcscd + vpcd, card images saved with fsync, journal on disk", &pcsc),
    ] {
        println!(
            "| {name} | {:.2} µs | {:.0} µs | {:.0} µs | {:.1} |",
            micros(measured.bare),
            micros(measured.tap.wall),
            micros(measured.tap.cpu),
            ratio(measured.tap.wall, measured.bare)
        );
    }
    println!();
    let card_saves = file.tap.wall.saturating_sub(memory.tap.wall);
    println!("the card's and PSAM's own image saves per tap (file − memory, in-process): {:.0} µs", micros(card_saves));
    println!(
        "pcscd tap ÷ (8 × pcscd bare + the tap in-process with card images saved and journal on disk): {:.2}",
        pcsc.tap.wall.as_secs_f64()
            / (f64::from(TAP_ROUND_TRIPS) * pcsc.bare.as_secs_f64() + file.tap.wall.as_secs_f64())
    );
    println!(
        "goal as written, pcscd tap ≤ 1.2 × 8 × bare + one journal commit: {:.0} µs against {:.0} µs",
        micros(pcsc.tap.wall),
        1.2 * f64::from(TAP_ROUND_TRIPS) * micros(pcsc.bare) + micros(write.wall)
    );
}

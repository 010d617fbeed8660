//! Support for the system tests and the demo: the real pcscd with its vpcd
//! reader, software cards and PSAMs served into it, and the issuer's host side
//! of a load played with the TEST-ONLY master keys (until the HSM takes it).

pub mod browser;
pub mod bus_day;
pub mod city;
pub mod clearing;
pub mod terminal_process;

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use card_host::card::CitizenCard;
use card_host::crypto;
use card_host::issue::{self, IssueOptions, MasterKeySet, ProfileFile};
use card_host::psam::Psam;
use card_host::responses::LoadInitialization;
use card_host::vpcd::{self, Bridge, Control};
use card_host::{ApplicationSerial, CardDateTime, Fen, SmartCard, TerminalNumber, TransactionType};
use terminal::reader::pcsc::{PcscChannel, PcscReaders};

/// How long a test waits for pcscd to see a card come or go.
pub const READER_TIMEOUT: Duration = Duration::from_secs(10);
/// The load terminal the tests' host side uses.
pub const LOAD_TERMINAL: TerminalNumber = TerminalNumber([0x31, 0x00, 0x00, 0x00, 0x09, 0x01]);

/// The vpcd reader's slots as pcscd names them.
pub fn card_reader() -> String {
    terminal::reader::pcsc::vpcd_reader_name(0)
}
pub fn psam_reader() -> String {
    terminal::reader::pcsc::vpcd_reader_name(1)
}

/// Whether pcscd runs with the vpcd driver: its reader is listed. (Probing the
/// port instead would look like a card being inserted.)
pub fn vpcd_available() -> bool {
    terminal::reader::pcsc::PcscReaders::establish()
        .and_then(|readers| readers.list())
        .is_ok_and(|names| names.contains(&card_reader()))
}

/// The vpcd reader has two slots and every test needs them to itself: this lock
/// (a file lock, so it also holds across test processes) serialises them.
pub struct ReaderLock {
    /// Held for its lock; closing it releases the reader.
    _file: File,
}

impl ReaderLock {
    /// Takes the reader, failing clearly if pcscd with vpcd is not running
    /// (`scripts/test.sh` starts it).
    pub fn take() -> ReaderLock {
        // The bridges' logs go to the test's captured output, shown on failure.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
            .with_test_writer()
            .try_init();
        let path = std::env::temp_dir().join("citizen-card-vpcd.lock");
        let file = File::options().create(true).truncate(false).write(true).open(&path).expect("lock file");
        file.lock().expect("lock the vpcd reader");
        // Checked under the lock: a test holding it may be restarting pcscd.
        assert!(
            vpcd_available(),
            "pcscd does not list the vpcd reader (its driver listens on 127.0.0.1:{}): run scripts/test.sh, which starts pcscd",
            vpcd::SLOT0_PORT
        );
        ReaderLock { _file: file }
    }
}

/// A software card (or PSAM) in a vpcd slot, served from a thread. Dropping it
/// pulls the card out, stops the thread and waits until pcscd has seen the slot
/// empty, so the next card served there is seen as a new one.
pub struct ServedCard {
    control: Arc<Control>,
    thread: Option<JoinHandle<()>>,
    reader: String,
}

/// Waits until pcscd sees the reader with or without a card. A card gone is
/// given [`vpcd::REMOVAL_TIME_MIN`] more, so that vpcd's next poll has let go of
/// it and a card connecting next is seen as a new insertion.
pub fn wait_for_reader(reader: &str, present: bool) {
    let readers = PcscReaders::establish().expect("PC/SC context");
    assert!(
        readers.wait_for(reader, present, READER_TIMEOUT).expect("reader status"),
        "pcscd did not see {reader} {}",
        if present { "with the card" } else { "empty" }
    );
    if !present {
        std::thread::sleep(vpcd::REMOVAL_TIME_MIN);
    }
}

impl ServedCard {
    pub fn serve<C: SmartCard + 'static>(card: C, port: u16) -> ServedCard {
        let reader = if port == vpcd::SLOT1_PORT { psam_reader() } else { card_reader() };
        wait_for_reader(&reader, false);
        let mut bridge = Bridge::new(card, SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
        let control = bridge.control();
        let thread = std::thread::spawn(move || {
            if let Err(error) = bridge.run() {
                tracing::error!(%error, "vpcd bridge failed");
            }
        });
        assert!(control.wait_connected(true, READER_TIMEOUT), "the card did not connect to vpcd");
        wait_for_reader(&reader, true);
        ServedCard { control, thread: Some(thread), reader }
    }

    pub fn control(&self) -> &Control {
        &self.control
    }
}

impl Drop for ServedCard {
    fn drop(&mut self) {
        self.control.stop();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        if !std::thread::panicking() {
            wait_for_reader(&self.reader, false);
        }
    }
}

pub fn master_keys() -> MasterKeySet {
    MasterKeySet::load(&issue::fixtures::test_keyset()).expect("TEST-ONLY key set in fixtures/")
}

/// Issues fixture cardholder `profile` into `directory` and opens the image.
pub fn issue_card(directory: &Path, profile: usize, balance: Fen) -> (PathBuf, CitizenCard) {
    let profiles = ProfileFile::load(&issue::fixtures::cardholders()).expect("fixture profiles");
    let holder = profiles.cardholder(profile).expect("profile");
    let options = IssueOptions { initial_balance: balance, ..IssueOptions::default() };
    let image = issue::issue(holder, &master_keys(), &options).expect("issue");
    let path = directory.join(format!("card-{profile}.card"));
    card_host::storage::create(&path, &image, true).expect("write card image");
    let card = CitizenCard::open(&path).expect("open card image");
    (path, card)
}

/// Issues a PSAM for `terminal` into `directory` and opens it.
pub fn issue_psam(directory: &Path, terminal: TerminalNumber) -> (PathBuf, Psam) {
    let image = Psam::issue(&master_keys(), terminal, 1);
    let path = directory.join(format!("psam-{terminal}.psam"));
    card_host::storage::create(&path, &image, true).expect("write PSAM image");
    (path.clone(), Psam::open(&path).expect("open PSAM image"))
}

/// The issuer's host side of an online load, with the master keys in memory
/// (TEST ONLY: in the product the HSM does this and no host sees a key).
pub struct TestLoadHost {
    keys: MasterKeySet,
}

/// Why the host refused a load.
#[derive(Debug, PartialEq, Eq)]
pub struct Mac1Mismatch;

impl Default for TestLoadHost {
    fn default() -> Self {
        TestLoadHost { keys: master_keys() }
    }
}

impl TestLoadHost {
    /// Checks the card's MAC1 and makes MAC2 for CREDIT FOR LOAD.
    pub fn authorise(
        &self,
        serial: &ApplicationSerial,
        init: &LoadInitialization,
        amount: Fen,
        terminal: &TerminalNumber,
        at: &CardDateTime,
    ) -> Result<[u8; 4], Mac1Mismatch> {
        let card_keys = self.keys.card_keys(serial);
        let dlk = &card_keys.load.first().expect("a load key").key;
        let session = crypto::load_session_key(card_keys.algorithm, dlk, init.card_random, init.online_counter);
        let mac1 = crypto::purse::load_mac1(&session, init.balance, amount, TransactionType::PurseLoad, terminal);
        if !crypto::constant_time_eq(&mac1, &init.mac1) {
            return Err(Mac1Mismatch);
        }
        Ok(crypto::purse::load_mac2(&session, amount, TransactionType::PurseLoad, terminal, at))
    }

    /// The TAC a genuine purchase carries, as clearing recomputes it.
    pub fn purchase_tac(
        &self,
        serial: &ApplicationSerial,
        kind: TransactionType,
        amount: Fen,
        terminal: &TerminalNumber,
        terminal_serial: u32,
        at: &CardDateTime,
    ) -> [u8; 4] {
        let card_keys = self.keys.card_keys(serial);
        crypto::purse::purchase_tac(card_keys.algorithm, &card_keys.tac, amount, kind, terminal, terminal_serial, at)
    }
}

/// The `card-host` binary cargo built beside this test or bench binary.
pub fn card_host_binary() -> PathBuf {
    let binary = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
        .map(|directory| if directory.ends_with("deps") { directory.join("..") } else { directory })
        .map(|profile| profile.join("card-host"))
        .expect("the target directory");
    assert!(binary.exists(), "{} is missing: cargo test --workspace builds it", binary.display());
    binary
}

/// The `terminal` binary beside this test, brought up to date first (cargo
/// builds only the tested package's targets before its tests).
pub fn terminal_binary() -> PathBuf {
    static BUILT: std::sync::Once = std::sync::Once::new();
    let binary = card_host_binary().with_file_name("terminal");
    let release =
        binary.parent().and_then(|profile| profile.canonicalize().ok()).is_some_and(|p| p.ends_with("release"));
    BUILT.call_once(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut command = std::process::Command::new(cargo);
        command.args(["build", "--quiet", "-p", "terminal", "--bin", "terminal"]);
        if release {
            command.arg("--release");
        }
        assert!(command.status().expect("cargo build").success(), "cargo build -p terminal");
    });
    assert!(binary.exists(), "{} is missing", binary.display());
    binary
}

/// A PC/SC test rig: the reader taken, a temporary directory, a PSAM in slot 1,
/// and a card in slot 0 once [`Rig::serve_card`] is called. Fields drop in
/// order: the card and the PSAM leave the reader before the lock is released.
pub struct Rig {
    pub readers: PcscReaders,
    card: Option<ServedCard>,
    psam: ServedCard,
    pub directory: tempfile::TempDir,
    _reader: ReaderLock,
}

impl Rig {
    /// Takes the reader and serves a new PSAM for `terminal` in slot 1.
    pub fn new(terminal: TerminalNumber) -> Rig {
        let reader = ReaderLock::take();
        let directory = tempfile::tempdir().expect("temp dir");
        let (_, psam) = issue_psam(directory.path(), terminal);
        let psam = ServedCard::serve(psam, vpcd::SLOT1_PORT);
        let readers = PcscReaders::establish().expect("PC/SC context");
        Rig { readers, card: None, psam, directory, _reader: reader }
    }

    /// Issues fixture cardholder `profile` and serves the card in slot 0 (a card
    /// served before leaves first); returns the image's path.
    pub fn serve_card(&mut self, profile: usize, balance: Fen) -> PathBuf {
        self.card = None;
        let (path, card) = issue_card(self.directory.path(), profile, balance);
        self.card = Some(ServedCard::serve(card, vpcd::SLOT0_PORT));
        path
    }

    /// Takes the card out of the reader for good (its image file stays).
    pub fn stop_card(&mut self) {
        self.card = None;
    }

    /// The served card's control (tears, removal).
    pub fn card(&self) -> &ServedCard {
        self.card.as_ref().expect("a card is served: Rig::serve_card")
    }

    pub fn psam(&self) -> &ServedCard {
        &self.psam
    }

    /// An exclusive connection to the card in slot 0.
    pub fn card_channel(&self) -> PcscChannel {
        self.readers.connect(&card_reader(), READER_TIMEOUT).expect("card in the reader")
    }

    /// An exclusive connection to the PSAM in slot 1.
    pub fn psam_channel(&self) -> PcscChannel {
        self.readers.connect(&psam_reader(), READER_TIMEOUT).expect("PSAM in the reader")
    }
}

/// Shared by the benchmarks that compare a flow with the bare round trips it needs.
pub mod bench {
    use std::time::{Duration, Instant};

    use terminal::reader::Channel;
    use terminal::{CardSession, purse::Purse};

    /// Batches a figure is the median of.
    pub const BATCHES: usize = 11;

    /// The median over [`BATCHES`] runs of `batch` of the time per operation,
    /// `batch` doing `operations` of them.
    pub fn median_per_operation(operations: u32, mut batch: impl FnMut()) -> Duration {
        let mut times: Vec<Duration> = (0..BATCHES)
            .map(|_| {
                let start = Instant::now();
                batch();
                start.elapsed() / operations
            })
            .collect();
        times.sort();
        times[BATCHES / 2]
    }

    /// The bare round trip: GET BALANCE straight through the channel (no
    /// APDU-level processing), the e-purse selected first; median per APDU.
    pub fn bare_round_trip(card: &mut dyn Channel, count: u32) -> Duration {
        let balance = card_host::commands::get_balance().to_bytes();
        Purse::select(CardSession::new(&mut *card)).expect("select the e-purse");
        median_per_operation(count, || {
            for _ in 0..count {
                let response = card.transmit(&balance).expect("round trip");
                assert_eq!(response[response.len() - 2..], [0x90, 0x00]);
            }
        })
    }
}

/// The cards' images and the terminal's journal agree: every intent settled,
/// one completed row per card debit, the same money. Returns the journal's counts.
pub fn assert_cards_agree_with_journal(
    cards: &[&Path],
    journal: &terminal::journal::Journal,
) -> terminal::journal::Counts {
    let counts = journal.counts().expect("journal counts");
    assert_eq!(counts.intents, 0, "every intent settled");
    let images: Vec<card_host::card::CardImage> =
        cards.iter().map(|path| card_host::storage::load(path).expect("card image")).collect();
    let debits: u64 = images.iter().map(|image| u64::from(image.purse.offline_counter)).sum();
    let spent: u64 = images.iter().map(|image| image.purse.spent_total).sum();
    assert_eq!(debits, counts.completed, "one journal row per card debit");
    assert_eq!(spent, counts.completed_fen, "the money matches");
    counts
}

/// A read-only watch on a terminal's journal file while its process owns it:
/// the random-kill tests look for the intent of a purchase in flight, to kill
/// the process in the middle of it.
pub struct JournalWatch {
    runtime: tokio::runtime::Runtime,
    connection: sqlx::sqlite::SqliteConnection,
}

impl JournalWatch {
    /// Watches the journal at `path`, which must exist (`Journal::open` made it).
    pub fn open(path: &Path) -> JournalWatch {
        use sqlx::ConnectOptions;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let options = sqlx::sqlite::SqliteConnectOptions::new().filename(path).read_only(true);
        let connection = runtime.block_on(options.connect()).expect("journal");
        JournalWatch { runtime, connection }
    }

    /// The newest row's id (0: none) and whether it is an unresolved intent.
    pub fn newest_row(&mut self) -> (i64, bool) {
        use sqlx::Row;
        let row = self
            .runtime
            .block_on(
                sqlx::query("SELECT id, state = 'intent' AS open FROM card_transaction ORDER BY id DESC LIMIT 1")
                    .fetch_optional(&mut self.connection),
            )
            .expect("query");
        row.map_or((0, false), |row| (row.get::<i64, _>("id"), row.get::<bool, _>("open")))
    }

    /// Waits (busily: a purchase in flight lasts milliseconds) until a row
    /// newer than `than` is written, at most `timeout`; whether one was.
    pub fn wait_for_row_after(&mut self, than: i64, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if self.newest_row().0 > than {
                return true;
            }
        }
        false
    }
}

/// Stops pcscd (the process `pgrep -x pcscd` names, by its id) and starts it
/// again, as an upgrade or an operator would; returns when pcscd lists the vpcd
/// reader again. Served cards reconnect to vpcd by themselves (wait for their
/// [`Control::insertions`] to move). The caller holds the [`ReaderLock`]: other
/// tests must not see pcscd away. If this fails half-way pcscd is started anyway.
pub fn restart_pcscd() {
    /// Starts pcscd again if it is not back when dropped (a panic half-way).
    struct StartAgain;
    impl Drop for StartAgain {
        fn drop(&mut self) {
            if !vpcd_available() {
                let _ = std::process::Command::new("pcscd").status();
            }
        }
    }
    let _start_again = StartAgain;
    let running = || {
        let output = std::process::Command::new("pgrep").args(["-x", "pcscd"]).output().expect("pgrep runs");
        String::from_utf8_lossy(&output.stdout).split_whitespace().map(str::to_owned).collect::<Vec<_>>()
    };
    let pids = running();
    assert!(!pids.is_empty(), "pcscd was running");
    for pid in &pids {
        let stopped = std::process::Command::new("kill").arg(pid).status().expect("kill runs");
        assert!(stopped.success(), "pcscd {pid} stopped");
    }
    let deadline = std::time::Instant::now() + READER_TIMEOUT;
    while !running().is_empty() {
        assert!(std::time::Instant::now() < deadline, "pcscd did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(std::process::Command::new("pcscd").status().expect("pcscd starts").success());
    let deadline = std::time::Instant::now() + READER_TIMEOUT;
    while !vpcd_available() {
        assert!(std::time::Instant::now() < deadline, "the restarted pcscd does not list the vpcd reader");
        std::thread::sleep(Duration::from_millis(50));
    }
}

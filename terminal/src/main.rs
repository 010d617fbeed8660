//! `terminal bus --config FILE`: the bus validator. Each tap prints one line on
//! standard output (what the rider's display shows); logs go to standard error.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use card_host::CardDateTime;
use card_host::card::CitizenCard;
use card_host::psam::Psam;
use clap::{Parser, Subcommand};
use terminal::CardSession;
use terminal::blacklist::Blacklist;
use terminal::bus::{Tap, Validator};
use terminal::config::{Config, PsamSource, ReaderConfig};
use terminal::journal::Journal;
use terminal::psam::PsamSession;
use terminal::reader::pcsc::{PcscSlot, PcscStation};
use terminal::reader::{CardStation, InProcess, Pn532Device, ReaderOutage};
use terminal::tariff::Tariff;

/// How long the validator waits for the PSAM at start.
const PSAM_WAIT: Duration = Duration::from_secs(10);
/// How long one wait for a card lasts before the validator looks at its
/// blacklist file again.
const CARD_POLL: Duration = Duration::from_secs(1);
/// How often a running validator flags intents left unresolved too long.
const FLAG_INTERVAL: Duration = Duration::from_secs(60);
/// How long a validator waits before trying a failed card reader again.
const READER_RETRY: Duration = Duration::from_millis(200);
/// The longest line of the in-process demo's standard input.
const COMMAND_LINE_BYTES_MAX: usize = 256;

#[derive(Parser)]
#[command(
    name = "terminal",
    about = "Citizen card terminal: bus validator, kiosk, hospital counter, upload to clearing"
)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// A bus validator on a route: one tap, one line of output.
    Bus {
        /// The terminal's configuration file (TOML; see fixtures/terminals/).
        #[arg(long)]
        config: PathBuf,
        /// Stop after this many taps (tests and demos); run until killed otherwise.
        #[arg(long)]
        taps: Option<u64>,
    },
    /// A self-service kiosk: commands on standard input (balance, topup FEN,
    /// bill water|electricity|gas ACCOUNT FEN, confirm, upload, card N, quit).
    Kiosk {
        #[arg(long)]
        config: PathBuf,
    },
    /// A hospital counter: commands on standard input (patient PIN,
    /// visit PIN TYPE CO-PAYMENT-FEN, upload, card N, quit).
    Counter {
        #[arg(long)]
        config: PathBuf,
    },
    /// Upload the journal to clearing (batches signed with the device key,
    /// retried with backoff) and download the blacklist; one round, then exit.
    Upload {
        #[arg(long)]
        config: PathBuf,
        /// A sealed batch clearing refuses with 409 (it holds other records
        /// under that id) is re-sealed under a new id (the journal identity,
        /// the row ids and a random suffix) and sent: the same rows, none
        /// dropped or added. For an operator, after the 409 was reported.
        #[arg(long)]
        reseal_conflicting: bool,
    },
    /// Delete from the journal what clearing holds and is older than
    /// --keep-days: acknowledged debits, confirmed loads, voided attempts.
    /// Intents and anything not yet acknowledged stay. For a maintenance job.
    Prune {
        #[arg(long)]
        config: PathBuf,
        /// Keep every row written in the last this many days (at least 1).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=3650))]
        keep_days: u32,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().mode {
        Mode::Bus { config, taps } => run_bus(&config, taps),
        Mode::Upload { config, reseal_conflicting } => run_upload(&config, reseal_conflicting),
        Mode::Prune { config, keep_days } => run_prune(&config, keep_days),
        Mode::Kiosk { config } => run_kiosk(&config),
        Mode::Counter { config } => run_counter(&config),
    }
}

/// Where the kiosk's card is.
enum KioskCards {
    InProcess {
        readers: Vec<InProcess<CitizenCard>>,
        current: usize,
    },
    /// A reader where cards are presented: PC/SC (a new context after pcscd
    /// restarted) or a PN532 module (opened again after its line failed).
    Station(Box<dyn CardStation>),
}

impl KioskCards {
    /// Runs `operation` on the card now presented.
    fn with_card<T>(&mut self, operation: impl FnOnce(&mut dyn terminal::reader::Channel) -> T) -> anyhow::Result<T> {
        match self {
            KioskCards::InProcess { readers, current } => {
                let reader = readers.get_mut(*current).context("no such card")?;
                Ok(operation(reader))
            }
            KioskCards::Station(station) => {
                terminal::reader::with_card(&mut **station, CARD_POLL, operation)?.context("no card presented")
            }
        }
    }
}

fn run_kiosk(config_path: &Path) -> anyhow::Result<()> {
    use terminal::kiosk::{Bill, Kiosk, Utility};
    let config = Config::load(config_path)?;
    let Some(clearing) = &config.clearing else { bail!("{}: no [clearing] section", config_path.display()) };
    let journal =
        Journal::open(&config.journal.path).with_context(|| format!("journal {}", config.journal.path.display()))?;
    journal.flag_unresolved_older_than(config.journal.flag_unresolved_after())?;
    let mut kiosk = Kiosk::new(journal, clearing.client()?);
    if let Some(blacklist) = config.blacklist.as_ref().filter(|blacklist| blacklist.path.exists()) {
        kiosk.update_blacklist(Blacklist::load(&blacklist.path)?);
    }
    let (mut cards, mut psam_channel) = open_readers(&config)?;
    let mut psam = PsamSession::open(CardSession::new(&mut *psam_channel)).context("PSAM")?;
    if psam.terminal_number() != clearing.terminal_number()? {
        bail!("the PSAM's terminal number is not clearing.terminal_id");
    }
    if let Some(screen) = &config.screen {
        return run_kiosk_screen(&config, screen, kiosk, cards, &mut psam);
    }
    command_loop(|words| {
        Ok(Reply::Line(match words {
            ["balance"] => match cards.with_card(|card| kiosk.read(card))? {
                Ok(view) => {
                    let mut text = format!("card {} balance {}", view.card, view.balance);
                    for record in view.recent.iter().take(10) {
                        text.push_str(&format!(
                            "\n  #{} {:?} {} at {}",
                            record.number,
                            record.kind,
                            record.amount,
                            hex::encode(record.at.to_bytes())
                        ));
                    }
                    text
                }
                Err(error) => format!("refused: {error}"),
            },
            ["topup", fen] => match fen.parse::<u32>() {
                Ok(amount) => match cards.with_card(|card| kiosk.top_up(card, card_host::Fen(amount)))? {
                    Ok(loaded) => format!(
                        "loaded {} balance {}{}",
                        loaded.row.entry.amount,
                        loaded.balance,
                        if loaded.confirmed { "" } else { " (clearing confirms later)" }
                    ),
                    Err(error) => format!("not loaded: {error}"),
                },
                Err(_) => "topup FEN: a whole number of fen".into(),
            },
            ["bill", utility, account, fen] => match (Utility::parse(utility), fen.parse::<u32>()) {
                (Some(utility), Ok(amount)) => {
                    let bill = Bill { utility, account: (*account).to_owned(), amount: card_host::Fen(amount) };
                    let now = config.now();
                    match cards.with_card(|card| kiosk.pay_bill(card, &mut psam, &bill, now))? {
                        Ok(paid) => format!("paid {} {} {}", utility.name(), paid.entry.amount, account),
                        Err(error) => format!("not paid: {error}"),
                    }
                }
                _ => "bill water|electricity|gas ACCOUNT FEN".into(),
            },
            ["confirm"] => format!("{} loads confirmed", kiosk.confirm_pending()?),
            ["upload"] => {
                let mut text = match upload_journal(kiosk.journal(), kiosk.client(), &config, None) {
                    Ok(summary) => format!("uploaded {} records ({} grey)", summary.records, summary.unresolved),
                    Err(error) => format!("upload stopped, records kept: {error}"),
                };
                match terminal::upload::refresh_blacklist(kiosk.client(), kiosk.blacklist()) {
                    Ok(newer) if newer.version() > kiosk.blacklist().version() => {
                        if let Some(blacklist) = &config.blacklist {
                            newer.save(&blacklist.path)?;
                        }
                        text.push_str(&format!("; blacklist version {}", newer.version()));
                        kiosk.update_blacklist(newer);
                    }
                    Ok(_) => {}
                    Err(error) => text.push_str(&format!("; blacklist not refreshed: {error}")),
                }
                text
            }
            ["card", number] => match (&mut cards, number.parse::<usize>()) {
                (KioskCards::InProcess { readers, current }, Ok(n)) if n < readers.len() => {
                    *current = n;
                    format!("card {n} presented")
                }
                _ => "no such card".into(),
            },
            ["quit"] => return Ok(Reply::Quit),
            [] => return Ok(Reply::Nothing),
            _ => "commands: balance, topup FEN, bill water|electricity|gas ACCOUNT FEN, confirm, upload, card N, quit"
                .into(),
        }))
    })
}

/// `terminal kiosk` with a `[screen]` section: the citizens' web page
/// (`terminal::screen`), this thread being the worker that owns the reader and
/// the PSAM. Standard input takes `quit`, and with in-process cards `card N`
/// (card N inserted) and `remove`; its end leaves the kiosk running.
fn run_kiosk_screen(
    config: &Config,
    screen: &terminal::config::ScreenConfig,
    kiosk: terminal::kiosk::Kiosk,
    cards: KioskCards,
    psam: &mut PsamSession<'_>,
) -> anyhow::Result<()> {
    use terminal::screen::{InProcessSlot, Screen, ScreenSettings};
    let settings = ScreenSettings {
        topup_amounts_fen: screen.topup_amounts_fen.clone(),
        terminal: psam.terminal_number(),
        blacklist: config.blacklist.as_ref().map(|blacklist| blacklist.path.clone()),
    };
    let clock = config.clone();
    let screen = Screen::bind(screen.address()?, kiosk, settings, Box::new(move || clock.now()))?;
    let handle = screen.handle();
    let (mut station, in_process): (Box<dyn CardStation>, _) = match cards {
        KioskCards::Station(station) => (station, None),
        KioskCards::InProcess { readers, .. } => {
            let slot = InProcessSlot::new(readers, None);
            (Box::new(slot.clone()), Some(slot))
        }
    };
    spawn_kiosk_rounds(config);
    println!("screen http://{}/", screen.address());
    std::io::stdout().flush()?;
    std::thread::spawn(move || {
        let _ = command_loop(|words| {
            Ok(match (words, &in_process) {
                (["quit"], _) => {
                    handle.stop();
                    Reply::Quit
                }
                (["card", n], Some(slot)) => Reply::Line(match n.parse::<usize>() {
                    Ok(n) if slot.present(n) => format!("card {n} presented"),
                    _ => "no such card".into(),
                }),
                (["remove"], Some(slot)) => {
                    slot.remove();
                    Reply::Line("card removed".into())
                }
                ([], _) => Reply::Nothing,
                (_, Some(_)) => Reply::Line("commands: card N, remove, quit".into()),
                (_, None) => Reply::Line("commands: quit".into()),
            })
        });
    });
    screen.run(&mut *station, psam)?;
    Ok(())
}

/// A kiosk with a screen has no `confirm` and `upload` commands: a thread of
/// its own, on its own journal connection, confirms the loads clearing has not
/// taken, uploads the journal and refreshes the blacklist file (which the
/// screen's worker reads again) at start and every `upload_interval_seconds`.
fn spawn_kiosk_rounds(config: &Config) {
    let Some(clearing) = &config.clearing else { return };
    if clearing.upload_interval_seconds == 0 {
        return;
    }
    let interval = Duration::from_secs(clearing.upload_interval_seconds);
    let config = config.clone();
    std::thread::spawn(move || {
        loop {
            let confirm = || -> anyhow::Result<u64> {
                let Some(clearing) = &config.clearing else { return Ok(0) };
                let kiosk = terminal::kiosk::Kiosk::new(Journal::open(&config.journal.path)?, clearing.client()?);
                Ok(kiosk.confirm_pending()?)
            };
            match confirm() {
                Ok(0) => {}
                Ok(confirmed) => tracing::info!(confirmed, "loads confirmed at clearing"),
                Err(error) => tracing::error!(%error, "load confirmation round"),
            }
            log_upload_round(upload_round(&config, None));
            std::thread::sleep(interval);
        }
    });
}

/// What a command of the kiosk's or counter's stdin loop answers.
enum Reply {
    /// One line for the operator.
    Line(String),
    /// An empty line: nothing to say.
    Nothing,
    Quit,
}

/// Reads commands from stdin, one a line (at most [`COMMAND_LINE_BYTES_MAX`]
/// bytes; a line may hold a PIN, so it is wiped after use), splits each into
/// words, and prints what `handle` answers, until end of input or `quit`.
fn command_loop(mut handle: impl FnMut(&[&str]) -> anyhow::Result<Reply>) -> anyhow::Result<()> {
    let out = std::io::stdout();
    let stdin = std::io::stdin();
    let mut line = zeroize::Zeroizing::new(String::new());
    loop {
        line.clear();
        if stdin.lock().read_line(&mut line)? == 0 {
            return Ok(());
        }
        if line.len() > COMMAND_LINE_BYTES_MAX {
            tracing::warn!("command line too long; ignored");
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        match handle(&words) {
            Ok(Reply::Line(answer)) => writeln!(out.lock(), "{answer}")?,
            Ok(Reply::Nothing) => {}
            Ok(Reply::Quit) => return Ok(()),
            // A command that failed (no card presented, a reader gone) is
            // told and the desk stays open for the next one.
            Err(error) => {
                tracing::warn!("{error:#}");
                writeln!(out.lock(), "ERROR {error:#}")?;
            }
        }
    }
}

/// The card readers and the PSAM of a kiosk or counter.
fn open_readers(config: &Config) -> anyhow::Result<(KioskCards, Box<dyn terminal::reader::Channel>)> {
    Ok(match &config.reader {
        ReaderConfig::Pcsc { card, psam } => {
            let psam_channel = PcscSlot::connect(psam, PSAM_WAIT).with_context(|| format!("PSAM in {psam:?}"))?;
            (KioskCards::Station(Box::new(PcscStation::new(card))), Box::new(psam_channel))
        }
        ReaderConfig::Pn532 { device, .. } => {
            (KioskCards::Station(Box::new(Pn532Device::new(device))), open_psam(config)?)
        }
        ReaderConfig::InProcess { cards, psam } => {
            let readers = cards
                .iter()
                .map(|path| {
                    CitizenCard::open(path).map(InProcess::new).with_context(|| format!("card {}", path.display()))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let psam = InProcess::new(Psam::open(psam).with_context(|| format!("PSAM {}", psam.display()))?);
            (KioskCards::InProcess { readers, current: 0 }, Box::new(psam))
        }
        _ => bail!("this reader kind is not supported here"),
    })
}

/// The PSAM's channel: a PC/SC slot that reconnects after a reader fault, or
/// an image in-process.
fn open_psam(config: &Config) -> anyhow::Result<Box<dyn terminal::reader::Channel>> {
    Ok(match config.reader.psam()? {
        PsamSource::Pcsc(reader) => {
            Box::new(PcscSlot::connect(reader, PSAM_WAIT).with_context(|| format!("PSAM in {reader:?}"))?)
        }
        PsamSource::Image(path) => {
            Box::new(InProcess::new(Psam::open(path).with_context(|| format!("PSAM {}", path.display()))?))
        }
    })
}

/// Where a validator's or kiosk's cards are presented, unless they are in-process.
fn card_station(reader: &ReaderConfig) -> Option<Box<dyn CardStation>> {
    match reader {
        ReaderConfig::Pcsc { card, .. } => Some(Box::new(PcscStation::new(card))),
        ReaderConfig::Pn532 { device, .. } => Some(Box::new(Pn532Device::new(device))),
        _ => None,
    }
}

/// A validator at a card reader: one tap per presentation, one line each,
/// until `taps` (or forever). A reader that fails is tried again: the station
/// and the PSAM's slot reconnect by themselves.
fn tap_loop(
    station: &mut dyn CardStation,
    psam: &mut PsamSession<'_>,
    validator: &mut Validator,
    blacklist: &mut BlacklistSource,
    config: &Config,
    taps: Option<u64>,
) -> anyhow::Result<()> {
    let out = std::io::stdout();
    let mut done = 0u64;
    let more = |done: u64| taps.is_none_or(|limit| done < limit);
    let mut flagged_at = std::time::Instant::now();
    let mut outage = ReaderOutage::default();
    // The line last shown for a refused presentation (several cards), until
    // the field changes.
    let mut refused: Option<String> = None;
    while more(done) {
        blacklist.refresh(validator);
        if flagged_at.elapsed() >= FLAG_INTERVAL {
            flagged_at = std::time::Instant::now();
            if let Err(error) = validator.flag_unresolved() {
                tracing::error!(%error, "flagging unresolved intents");
            }
        }
        let validator = &*validator;
        match terminal::reader::with_card(station, CARD_POLL, |card| validator.tap(card, psam, config.now())) {
            Ok(None) => {
                outage.succeeded();
                refused = None;
                continue;
            }
            Ok(Some(tap)) => {
                outage.succeeded();
                refused = None;
                writeln!(out.lock(), "{tap}")?;
                done += 1;
            }
            Err(error) => {
                match Tap::refused_presentation(&error) {
                    // Two cards, or one that is no ISO 14443-4 card: nothing
                    // charged, told once while the field stays as it is; the
                    // card left alone in the field is then tapped at once.
                    Some(tap) => {
                        outage.succeeded();
                        let line = tap.to_string();
                        if refused.as_ref() != Some(&line) {
                            tracing::info!(%error, "presentation refused");
                            writeln!(out.lock(), "{line}")?;
                            refused = Some(line);
                            done += 1;
                        }
                    }
                    None => outage.failed(&error),
                }
                std::thread::sleep(READER_RETRY);
                continue;
            }
        }
        // One presentation, one tap: wait until the card has left. A reader
        // that fails meanwhile (pcscd restarted) is waited on by `with_card`;
        // a card still lying there then is read again, and the dedup window
        // lets it through as already paid.
        while more(done) {
            match station.wait_empty(CARD_POLL) {
                Ok(true) => break,
                Ok(false) => {}
                Err(error) => {
                    outage.failed(&error);
                    break;
                }
            }
        }
    }
    Ok(())
}

fn run_counter(config_path: &Path) -> anyhow::Result<()> {
    use terminal::counter::Counter;
    let config = Config::load(config_path)?;
    let Some(settings) = &config.counter else { bail!("{}: no [counter] section", config_path.display()) };
    let journal =
        Journal::open(&config.journal.path).with_context(|| format!("journal {}", config.journal.path.display()))?;
    journal.flag_unresolved_older_than(config.journal.flag_unresolved_after())?;
    let mut counter = Counter::new(journal, settings.settings()?);
    if let Some(blacklist) = config.blacklist.as_ref().filter(|blacklist| blacklist.path.exists()) {
        counter.update_blacklist(Blacklist::load(&blacklist.path)?);
    }
    let client = config.clearing.as_ref().map(|clearing| clearing.client()).transpose()?;
    let (mut cards, mut psam_channel) = open_readers(&config)?;
    let mut psam = PsamSession::open(CardSession::new(&mut *psam_channel)).context("PSAM")?;
    command_loop(|words| {
        Ok(Reply::Line(match words {
            ["patient", pin] => match cards.with_card(|card| counter.read_patient(card, pin))? {
                Ok(patient) => format!(
                    "{} ({}) patient {} blood {} allergies {:?}, {} earlier visits",
                    patient.cardholder.name,
                    terminal::cardholder::mask_identity(&patient.cardholder.citizen_id),
                    patient.medical.patient_number,
                    patient.medical.blood_group(),
                    patient.medical.allergies(),
                    patient.visits.len()
                ),
                Err(error) => format!("refused: {error}"),
            },
            ["visit", pin, kind, fen] => match (kind.parse::<u8>(), fen.parse::<u32>()) {
                (Ok(kind), Ok(fen)) => {
                    let now = config.now();
                    match cards.with_card(|card| counter.serve(card, &mut psam, pin, kind, card_host::Fen(fen), now))? {
                        Ok(done) => format!(
                            "visit registered for {}; co-payment {}",
                            done.patient.cardholder.name,
                            done.payment.map_or("none".to_owned(), |paid| paid.entry.amount.to_string())
                        ),
                        Err(error) => format!("not done: {error}"),
                    }
                }
                _ => "visit PIN TYPE FEN".into(),
            },
            ["upload"] => match &client {
                Some(client) => match upload_journal(counter.journal(), client, &config, None) {
                    Ok(summary) => format!("uploaded {} records ({} grey)", summary.records, summary.unresolved),
                    Err(error) => format!("upload stopped, records kept: {error}"),
                },
                None => "no [clearing] section".into(),
            },
            ["card", number] => match (&mut cards, number.parse::<usize>()) {
                (KioskCards::InProcess { readers, current }, Ok(n)) if n < readers.len() => {
                    *current = n;
                    format!("card {n} presented")
                }
                _ => "no such card".into(),
            },
            ["quit"] => return Ok(Reply::Quit),
            [] => return Ok(Reply::Nothing),
            _ => "commands: patient PIN, visit PIN TYPE FEN, upload, card N, quit".into(),
        }))
    })
}

/// One upload round and a blacklist refresh; prints one summary line (and
/// one line per batch re-sealed with `--reseal-conflicting`).
fn run_upload(config_path: &Path, reseal_conflicting: bool) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    let mut resealed = Vec::new();
    let round = upload_round(&config, reseal_conflicting.then_some(&mut resealed));
    for batch in &resealed {
        println!(
            "re-sealed batch {} as {} ({} records): clearing held other records under its id",
            batch.from, batch.to, batch.records
        );
    }
    let (line, uploaded) = round?;
    println!("{line}");
    uploaded?;
    Ok(())
}

fn run_prune(config_path: &Path, keep_days: u32) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    let journal =
        Journal::open(&config.journal.path).with_context(|| format!("journal {}", config.journal.path.display()))?;
    let pruned = journal.prune_older_than(std::time::Duration::from_secs(u64::from(keep_days) * 86_400));
    journal.close();
    let pruned = pruned?;
    tracing::info!(transactions = pruned.transactions, loads = pruned.loads, keep_days, "journal pruned");
    println!(
        "pruned {} transactions and {} loads written more than {keep_days} days ago",
        pruned.transactions, pruned.loads
    );
    Ok(())
}

/// Uploads the journal and refreshes the blacklist file: a summary line, and
/// how the upload ended (records are kept when it failed). With `resealed`, a
/// batch clearing refuses with 409 is re-sealed under a new id and sent (see
/// `upload_pending_resealing_conflicts`), each re-seal pushed there.
fn upload_round(
    config: &Config,
    resealed: Option<&mut Vec<terminal::upload::Resealed>>,
) -> anyhow::Result<(String, Result<(), terminal::upload::UploadError>)> {
    let Some(clearing) = &config.clearing else { bail!("no [clearing] section") };
    let client = clearing.client()?;
    let journal =
        Journal::open(&config.journal.path).with_context(|| format!("journal {}", config.journal.path.display()))?;
    let uploaded = upload_journal(&journal, &client, config, resealed);
    journal.close();
    let mut line = match &uploaded {
        Ok(summary) => format!(
            "uploaded {} records ({} grey) in {} batches ({} already stored, {} refused)",
            summary.records, summary.unresolved, summary.batches, summary.duplicates, summary.rejected
        ),
        Err(error) => format!("upload stopped, records kept: {error}"),
    };
    if let Some(blacklist) = &config.blacklist {
        let current = if blacklist.path.exists() { Blacklist::load(&blacklist.path)? } else { Blacklist::empty() };
        match terminal::upload::refresh_blacklist(&client, &current) {
            Ok(newer) if newer.version() > current.version() => {
                newer.save(&blacklist.path)?;
                line.push_str(&format!("; blacklist version {} ({} cards)", newer.version(), newer.len()));
            }
            Ok(_) => line.push_str(&format!("; blacklist version {} is the latest", current.version())),
            Err(error) => line.push_str(&format!("; blacklist not refreshed: {error}")),
        }
    }
    Ok((line, uploaded.map(|_| ())))
}

/// One upload of `journal`: first the purchase intents unresolved for longer
/// than `[journal] flag_unresolved_after_seconds` are flagged, so their grey
/// records go in this round (every mode: bus, kiosk, counter, `terminal upload`).
/// With `resealed` (`terminal upload --reseal-conflicting`), a batch clearing
/// refuses with 409 is re-sealed under a new id and sent.
fn upload_journal(
    journal: &Journal,
    client: &terminal::upload::ClearingClient,
    config: &Config,
    resealed: Option<&mut Vec<terminal::upload::Resealed>>,
) -> Result<terminal::upload::UploadSummary, terminal::upload::UploadError> {
    journal.flag_unresolved_older_than(config.journal.flag_unresolved_after())?;
    let batch_records = config.clearing.as_ref().map_or(terminal::upload::BATCH_RECORDS_MAX, |c| c.batch_records);
    match resealed {
        None => terminal::upload::upload_pending(journal, client, batch_records),
        Some(resealed) => {
            terminal::upload::upload_pending_resealing_conflicts(journal, client, batch_records, resealed)
        }
    }
}

/// Logs how a background upload round ended: clearing away is a warning (the
/// rows wait for the next round), a refusal an error (it will not go away by
/// itself: a 409 names the batch that holds every later one back).
fn log_upload_round(round: anyhow::Result<(String, Result<(), terminal::upload::UploadError>)>) {
    match round {
        Ok((line, Ok(()))) => tracing::info!("{line}"),
        Ok((line, Err(terminal::upload::UploadError::Unavailable { .. }))) => tracing::warn!("{line}"),
        Ok((line, Err(_))) => tracing::error!("{line}"),
        Err(error) => tracing::error!("upload round: {error:#}"),
    }
}

/// A running validator's uploader: a round at start and every `upload_interval_seconds`, on
/// its own journal connection (it writes only the upload columns; the
/// validator notices the blacklist file change).
fn spawn_uploader(config: &Config) {
    let Some(clearing) = &config.clearing else { return };
    if clearing.upload_interval_seconds == 0 {
        return;
    }
    let interval = Duration::from_secs(clearing.upload_interval_seconds);
    let config = config.clone();
    std::thread::spawn(move || {
        // A round at start too: a validator back after hours offline sends at once.
        loop {
            log_upload_round(upload_round(&config, None));
            std::thread::sleep(interval);
        }
    });
}

/// The blacklist file and when it was last read.
struct BlacklistSource {
    path: Option<PathBuf>,
    modified: Option<SystemTime>,
}

impl BlacklistSource {
    /// Reads the file again if it changed, and offers it to the validator,
    /// which keeps the newer version.
    fn refresh(&mut self, validator: &mut Validator) {
        let Some(path) = &self.path else { return };
        let modified = std::fs::metadata(path).and_then(|metadata| metadata.modified()).ok();
        if modified.is_none() || modified == self.modified {
            return;
        }
        self.modified = modified;
        match Blacklist::load(path) {
            Ok(list) => {
                validator.update_blacklist(list);
            }
            Err(error) => tracing::error!(%error, "blacklist not read; keeping the one in use"),
        }
    }
}

fn run_bus(config_path: &Path, taps: Option<u64>) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    let Some(bus) = &config.bus else { bail!("{}: no [bus] section", config_path.display()) };
    let tariff = Tariff::load(&bus.tariff)?;
    let journal =
        Journal::open(&config.journal.path).with_context(|| format!("journal {}", config.journal.path.display()))?;
    let mut validator =
        Validator::new(bus.settings(), tariff, Blacklist::empty(), journal, config.journal.flag_unresolved_after())?;
    let mut blacklist = BlacklistSource { path: config.blacklist.as_ref().map(|b| b.path.clone()), modified: None };
    blacklist.refresh(&mut validator);
    spawn_uploader(&config);
    let out = std::io::stdout();
    let mut done = 0u64;
    let more = |done: u64| taps.is_none_or(|limit| done < limit);

    match &config.reader {
        ReaderConfig::Pcsc { .. } | ReaderConfig::Pn532 { .. } => {
            let mut station = card_station(&config.reader).context("a card reader")?;
            let mut psam_channel = open_psam(&config)?;
            let mut psam = PsamSession::open(CardSession::new(&mut *psam_channel)).context("PSAM")?;
            tracing::info!(terminal = %psam.terminal_number(), "waiting for cards");
            tap_loop(&mut *station, &mut psam, &mut validator, &mut blacklist, &config, taps)?;
        }
        ReaderConfig::InProcess { cards, psam } => {
            let mut readers = cards
                .iter()
                .map(|path| {
                    CitizenCard::open(path).map(InProcess::new).with_context(|| format!("card {}", path.display()))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let mut psam_reader = InProcess::new(Psam::open(psam).with_context(|| format!("PSAM {}", psam.display()))?);
            let mut psam = PsamSession::open(CardSession::new(&mut psam_reader)).context("PSAM")?;
            let mut clock: Option<CardDateTime> = None;
            let stdin = std::io::stdin();
            let mut line = String::new();
            while more(done) {
                line.clear();
                if stdin.lock().read_line(&mut line)? == 0 {
                    break;
                }
                if line.len() > COMMAND_LINE_BYTES_MAX {
                    tracing::warn!("command line too long; ignored");
                    continue;
                }
                let words: Vec<&str> = line.split_whitespace().collect();
                match words.as_slice() {
                    ["tap", number] => {
                        let Some(reader) = number.parse::<usize>().ok().and_then(|n| readers.get_mut(n)) else {
                            tracing::warn!(card = number, "no such card");
                            continue;
                        };
                        let now = clock.unwrap_or_else(|| config.now());
                        let tap = validator.tap(reader, &mut psam, now);
                        writeln!(out.lock(), "{tap}")?;
                        done += 1;
                    }
                    ["station", number] => match number.parse() {
                        Ok(station) => validator.set_station(station),
                        Err(_) => tracing::warn!(station = number, "not a station number"),
                    },
                    ["time", digits] => match card_host::model::bcd_from_digits(digits)
                        .ok()
                        .and_then(|bytes| CardDateTime::from_slice(&bytes).ok())
                    {
                        Some(at) => clock = Some(at),
                        None => tracing::warn!(time = digits, "not YYYYMMDDhhmmss"),
                    },
                    ["quit"] => break,
                    [] => {}
                    _ => tracing::warn!(command = line.trim(), "commands: tap N, station N, time YYYYMMDDhhmmss, quit"),
                }
            }
        }
        _ => bail!("this reader kind is not supported by the bus validator"),
    }
    validator.journal().counts().map(|counts| tracing::info!(?counts, "validator stopped"))?;
    Ok(())
}

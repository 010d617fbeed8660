//! `card-host`: issue software citizen cards and PSAMs, and put them behind a
//! reader (pcscd's vpcd driver).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use card_host::card::{CardType, CitizenCard};
use card_host::icc::SmartCard;
use card_host::issue::{self, IssueOptions, MasterKeySet, ProfileFile};
use card_host::model::{ApplicationSerial, Fen, TerminalNumber};
use card_host::pn532::{Pn532, Pty, Uid};
use card_host::psam::Psam;
use card_host::vpcd::{self, Bridge, Tear, TearPoint};
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(name = "card-host", version, about = "Software citizen cards and PSAMs behind real readers")]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Clone, Copy, ValueEnum)]
enum CardTypeArgument {
    Ordinary,
    Student,
    Senior,
    Disabled,
    Staff,
}

impl From<CardTypeArgument> for CardType {
    fn from(value: CardTypeArgument) -> Self {
        match value {
            CardTypeArgument::Ordinary => CardType::Ordinary,
            CardTypeArgument::Student => CardType::Student,
            CardTypeArgument::Senior => CardType::Senior,
            CardTypeArgument::Disabled => CardType::Disabled,
            CardTypeArgument::Staff => CardType::Staff,
        }
    }
}

#[derive(Subcommand)]
enum Commands {
    /// Write a new card image. With no other flag: the first fixture cardholder
    /// and the test keys (TEST ONLY).
    Issue {
        /// The card image file to write.
        #[arg(long)]
        out: PathBuf,
        /// Cardholder profile file.
        #[arg(long, default_value_os_t = issue::fixtures::cardholders())]
        profiles: PathBuf,
        /// Which cardholder of the profile file (0 = the first).
        #[arg(long, default_value_t = 0)]
        profile: usize,
        /// Master key set file.
        #[arg(long, default_value_os_t = issue::fixtures::test_keyset())]
        keys: PathBuf,
        /// Card type, overriding the profile's.
        #[arg(long, value_enum)]
        card_type: Option<CardTypeArgument>,
        /// Application serial number (16 hex digits), overriding the profile's.
        #[arg(long)]
        serial: Option<String>,
        /// Initial e-purse balance in yuan (e.g. 50 or 12.50).
        #[arg(long, default_value = "0")]
        balance: String,
        /// Replace an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Write a new PSAM image for a terminal.
    IssuePsam {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_os_t = issue::fixtures::test_keyset())]
        keys: PathBuf,
        /// Terminal number (12 hex digits).
        #[arg(long, default_value = "310000000001")]
        terminal: String,
        /// Purchase key index the PSAM uses.
        #[arg(long, default_value_t = 1)]
        key_index: u8,
        #[arg(long)]
        force: bool,
    },
    /// Put a card (or a PSAM) into a reader: pcscd's vpcd driver (connecting is
    /// inserting the card, disconnecting is pulling it out), or with --pn532 an
    /// emulated PN532 reader module on a pseudo-terminal. Signals: SIGUSR1 pulls
    /// the card out, SIGUSR2 puts it back, SIGINT/SIGTERM stop.
    Serve {
        /// The citizen card image to serve (changes are saved back to it).
        #[arg(long, required_unless_present = "psam", conflicts_with = "psam")]
        card: Option<PathBuf>,
        /// A PSAM image to serve instead, usually in the reader's second slot.
        #[arg(long)]
        psam: Option<PathBuf>,
        /// vpcd's address: port 35963 is slot 0, 35964 slot 1 (default: 35963 for
        /// a card, 35964 for a PSAM).
        #[arg(long, conflicts_with = "pn532")]
        vpcd: Option<std::net::SocketAddr>,
        /// Serve the card in the field of an emulated PN532 on a pseudo-terminal
        /// instead, and make PATH a symlink to its device (removed on exit). A
        /// host opens PATH as a serial port (libnfc: `pn532_uart:PATH`).
        #[arg(long, value_name = "PATH")]
        pn532: Option<PathBuf>,
        /// Pull the card out after it has executed its N-th command APDU, before
        /// the answer is sent (a tear after the card acted).
        #[arg(long, value_name = "N", conflicts_with = "remove_before")]
        remove_after: Option<u32>,
        /// Pull the card out when its N-th command APDU arrives, before the card
        /// sees it (a tear before the card acted).
        #[arg(long, value_name = "N")]
        remove_before: Option<u32>,
    },
    /// Show a card image: card type, masked serial, balance, counters.
    Show {
        #[arg(long)]
        card: PathBuf,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("card-host: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Commands::Issue { out, profiles, profile, keys, card_type, serial, balance, force } => {
            let profiles = ProfileFile::load(&profiles)?;
            let holder = profiles.cardholder(profile)?;
            let master_keys = MasterKeySet::load(&keys)?;
            if master_keys.test_only {
                tracing::warn!(keys = %keys.display(), "issuing with TEST-ONLY master keys");
            }
            let options = IssueOptions {
                card_type: card_type.map(CardType::from),
                serial: serial.as_deref().map(ApplicationSerial::parse_hex).transpose().context("--serial")?,
                initial_balance: Fen::parse_yuan(&balance).context("--balance")?,
                ..IssueOptions::default()
            };
            let image = issue::issue(holder, &master_keys, &options)?;
            card_host::storage::create(&out, &image, force)?;
            println!(
                "issued {:?} card {} with balance {} yuan to {}",
                image.card_type,
                image.serial.masked(),
                image.purse.balance,
                out.display()
            );
            Ok(())
        }
        Commands::IssuePsam { out, keys, terminal, key_index, force } => {
            let master_keys = MasterKeySet::load(&keys)?;
            let terminal = TerminalNumber::parse_hex(&terminal).context("--terminal")?;
            if !master_keys.purchase.iter().any(|k| k.index == key_index) {
                bail!("--key-index {key_index}: the key set has no purchase key with that index");
            }
            let image = Psam::issue(&master_keys, terminal, key_index);
            card_host::storage::create(&out, &image, force)?;
            println!("issued PSAM for terminal {terminal} to {}", out.display());
            Ok(())
        }
        Commands::Serve { card, psam, vpcd, pn532, remove_after, remove_before } => {
            let tear = match (remove_after, remove_before) {
                (Some(apdu), _) => Some(Tear { apdu, point: TearPoint::AfterCommand }),
                (None, Some(apdu)) => Some(Tear { apdu, point: TearPoint::BeforeCommand }),
                (None, None) => None,
            };
            let localhost = std::net::Ipv4Addr::LOCALHOST;
            match (card, psam) {
                (Some(path), _) => {
                    let card = CitizenCard::open(&path).with_context(|| format!("--card {}", path.display()))?;
                    tracing::info!(serial = %card.image().serial.masked(), "serving citizen card");
                    if let Some(link) = pn532 {
                        let serial = card.image().serial.0;
                        return serve_pn532(card, Uid::random_single([serial[5], serial[6], serial[7]]), &link, tear);
                    }
                    serve(card, vpcd.unwrap_or((localhost, vpcd::SLOT0_PORT).into()), tear)
                }
                (None, Some(path)) => {
                    let psam = Psam::open(&path).with_context(|| format!("--psam {}", path.display()))?;
                    tracing::info!(terminal = %psam.terminal_number(), "serving PSAM");
                    if let Some(link) = pn532 {
                        let terminal = psam.terminal_number().0;
                        return serve_pn532(
                            psam,
                            Uid::random_single([terminal[3], terminal[4], terminal[5]]),
                            &link,
                            tear,
                        );
                    }
                    serve(psam, vpcd.unwrap_or((localhost, vpcd::SLOT1_PORT).into()), tear)
                }
                (None, None) => bail!("--card or --psam is required"),
            }
        }
        Commands::Show { card } => {
            let card = CitizenCard::open(&card)?;
            let image = card.image();
            println!("card type        {:?}", image.card_type);
            println!("serial           {}", image.serial.masked());
            println!("balance          {} yuan", image.purse.balance);
            println!("offline counter  {}", image.purse.offline_counter);
            println!("online counter   {}", image.purse.online_counter);
            println!("PIN tries left   {}", image.pin.tries_left);
            Ok(())
        }
    }
}

/// What the signals act on: the vpcd bridge's control or the PN532's.
trait CardControl: Send + Sync + 'static {
    fn remove(&self);
    fn insert(&self);
    fn stop(&self);
}

impl CardControl for vpcd::Control {
    fn remove(&self) {
        vpcd::Control::remove(self)
    }
    fn insert(&self) {
        vpcd::Control::insert(self)
    }
    fn stop(&self) {
        vpcd::Control::stop(self)
    }
}

impl CardControl for card_host::pn532::emulator::Control {
    fn remove(&self) {
        card_host::pn532::emulator::Control::remove(self)
    }
    fn insert(&self) {
        card_host::pn532::emulator::Control::insert(self)
    }
    fn stop(&self) {
        card_host::pn532::emulator::Control::stop(self)
    }
}

/// Runs `serve` until SIGINT or SIGTERM stop it through `control`; SIGUSR1 pulls
/// the card out, SIGUSR2 puts it back.
fn under_signals<T>(control: std::sync::Arc<impl CardControl>, serve: impl FnOnce() -> T) -> anyhow::Result<T> {
    use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1, SIGUSR2};
    let mut signals =
        signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGUSR1, SIGUSR2]).context("signal handlers")?;
    let signal_handle = signals.handle();
    let watcher = std::thread::spawn(move || {
        for signal in signals.forever() {
            match signal {
                SIGUSR1 => control.remove(),
                SIGUSR2 => control.insert(),
                _ => {
                    control.stop();
                    break;
                }
            }
        }
    });
    let result = serve();
    signal_handle.close();
    let _ = watcher.join();
    Ok(result)
}

/// Runs the bridge into vpcd until SIGINT or SIGTERM.
fn serve<C: SmartCard>(card: C, address: std::net::SocketAddr, tear: Option<Tear>) -> anyhow::Result<()> {
    let mut bridge = Bridge::new(card, address);
    let control = bridge.control();
    if let Some(tear) = tear {
        control.tear_at(tear);
    }
    under_signals(control, || bridge.run())?.context("vpcd bridge")
}

/// Runs an emulated PN532 with the card in its field on a pseudo-terminal
/// linked at `link`, until SIGINT or SIGTERM.
fn serve_pn532<C: SmartCard>(card: C, uid: Uid, link: &std::path::Path, tear: Option<Tear>) -> anyhow::Result<()> {
    let mut pty = Pty::open(Some(link)).with_context(|| format!("--pn532 {}", link.display()))?;
    let mut chip = Pn532::new(card, uid);
    let control = chip.control();
    if let Some(tear) = tear {
        control.tear_at(tear);
    }
    // Announced once the signal handlers are in place: a test may signal at once.
    let result = under_signals(control, || {
        println!("PN532 on {} (linked at {})", pty.device().display(), link.display());
        chip.serve(pty.master())
    })?;
    drop(pty);
    result.context("PN532 emulator")
}

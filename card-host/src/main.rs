//! `card-host`: issue software citizen cards and PSAMs, and put them behind a
//! reader (pcscd's vpcd driver).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use card_host::card::{CardType, CitizenCard};
use card_host::issue::{self, IssueOptions, MasterKeySet, ProfileFile};
use card_host::model::{ApplicationSerial, Fen, TerminalNumber};
use card_host::psam::Psam;
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

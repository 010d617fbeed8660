//! `clearing`: the clearing back-end's command line.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use clearing::run_day::{RunOptions, Step};
use clearing::{BusinessDay, Db};
use hsm_sim::{ClientConfig, HsmClient};

#[derive(Parser)]
#[command(name = "clearing", about = "The citizen card clearing back-end")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serves the HTTP API.
    Serve {
        /// host:port to listen on.
        #[arg(long)]
        listen: String,
        #[arg(long)]
        database: String,
        /// The HSM, host:port.
        #[arg(long)]
        hsm: String,
        /// Bearer tokens: lines `ROLE SHA256-HEX` (operator, issuer).
        #[arg(long)]
        tokens: Option<PathBuf>,
        /// The secret that hides citizen IDs (HMAC key); without it cards are not issued.
        #[arg(long)]
        citizen_id_key_file: Option<PathBuf>,
        /// Personalise cards (keys from the HSM, images written here); without
        /// it the issuer API only records cards personalised elsewhere.
        #[arg(long, requires = "transport_key_file")]
        card_images: Option<PathBuf>,
        /// The personalisation station's copy of the transport key
        /// (`fixtures/keys/test-transport-key.json` is the TEST one).
        #[arg(long, requires = "card_images")]
        transport_key_file: Option<PathBuf>,
        /// The transport key's label in the HSM.
        #[arg(long, default_value = hsm_sim::keystore::TEST_TRANSPORT_KEY)]
        transport_key_label: String,
        /// Local time's offset east of UTC, in minutes, as the terminals' (480: China Standard Time).
        #[arg(long, default_value_t = clearing::api::UTC_OFFSET_MINUTES_DEFAULT,
              value_parser = clap::value_parser!(i32).range(-840..=840))]
        utc_offset_minutes: i32,
    },
    /// Clears a simulated day end to end and reports the rates (docs/benchmarks.md).
    Bench {
        #[arg(long, default_value_t = 1_000_000)]
        records: u64,
        /// `sqlite` (a temporary file) or a postgres:// URL (a fresh schema in it).
        #[arg(long, default_value = "sqlite")]
        database: String,
        /// Seconds each concurrent top-up load runs (0: none).
        #[arg(long, default_value_t = clearing::bench::TOPUP_LOAD_SECONDS_DEFAULT)]
        topup_load_seconds: u64,
        /// The `clearing` binary whose run-day is measured (default: this one), to
        /// compare builds side by side under the same bench.
        #[arg(long)]
        run_day_binary: Option<PathBuf>,
        /// The concurrent top-up loads: keep-alive connections of each, comma-separated.
        #[arg(long, value_delimiter = ',', default_values_t = clearing::bench::TOPUP_LOAD_CONNECTIONS_DEFAULT)]
        topup_load_connections: Vec<usize>,
    },
    /// Creates or upgrades the database schema.
    Migrate {
        #[arg(long)]
        database: String,
    },
    /// Loads merchants and terminals from a JSON file (fixtures/merchants/*.json).
    LoadMerchants {
        #[arg(long)]
        database: String,
        file: PathBuf,
    },
    /// Stores a batch document (as a terminal would upload it).
    Ingest {
        #[arg(long)]
        database: String,
        file: PathBuf,
    },
    /// Clears, settles and reports one business day.
    RunDay {
        #[arg(long)]
        date: String,
        #[arg(long)]
        database: String,
        /// The HSM, host:port.
        #[arg(long)]
        hsm: String,
        /// Where the settlement file, manifest and reconciliation report go.
        #[arg(long, default_value = ".")]
        out: PathBuf,
        #[arg(long, default_value_t = clearing::run_day::CHUNK_RECORDS_MAX)]
        chunk_records: i64,
        #[arg(long, default_value = clearing::run_day::SIGNING_KEY_DEFAULT)]
        signing_key: String,
    },
}

/// For crash tests only: `CLEARING_TEST_KILL_AT=chunk-committed:2` makes the job
/// kill itself with SIGKILL at that step, as `kill -9` from outside would.
fn kill_hook() -> Option<clearing::run_day::StepHook> {
    let target = std::env::var("CLEARING_TEST_KILL_AT").ok()?;
    Some(Arc::new(move |step: Step| {
        if step.name() == target {
            eprintln!("killing myself at {target}");
            let _ = std::process::Command::new("kill").args(["-9", &std::process::id().to_string()]).status();
            std::thread::sleep(std::time::Duration::from_secs(60));
        }
    }))
}

/// The process's peak resident memory (Linux `VmHWM`), 0 where unknown.
fn peak_memory_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmHWM:").and_then(|v| v.trim().strip_suffix("kB")))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Serve {
            listen,
            database,
            hsm,
            tokens,
            citizen_id_key_file,
            card_images,
            transport_key_file,
            transport_key_label,
            utc_offset_minutes,
        } => {
            let db = Db::connect(&database).await?;
            let hsm = HsmClient::connect(ClientConfig::new(hsm)).await.context("connecting to the HSM")?;
            let tokens = match tokens {
                Some(path) => clearing::api::Tokens::parse(
                    &std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?,
                )?,
                None => clearing::api::Tokens::default(),
            };
            let listener = tokio::net::TcpListener::bind(&listen).await.with_context(|| format!("binding {listen}"))?;
            eprintln!("clearing API on http://{}", listener.local_addr()?);
            let mut state = clearing::api::AppState::new(db, hsm, tokens).with_utc_offset_minutes(utc_offset_minutes);
            if let Some(path) = citizen_id_key_file {
                let secret = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
                anyhow::ensure!(secret.len() >= 16, "the citizen ID key must be at least 16 bytes");
                state = state.with_citizen_key(clearing::registry::CitizenIdKey::new(&secret));
            }
            if let (Some(directory), Some(path)) = (card_images, transport_key_file) {
                let transport = card_host::issue::TransportKey::load(&path)?;
                let station = clearing::personalise::Personaliser::new(&directory, &transport_key_label, &transport)?;
                eprintln!("personalising cards into {}", directory.display());
                state = state.with_personaliser(station);
            }
            clearing::api::serve(listener, state).await?;
        }
        Command::Bench { records, database, topup_load_seconds, run_day_binary, topup_load_connections } => {
            let binary = match run_day_binary {
                Some(path) => path,
                None => std::env::current_exe().context("the clearing binary")?,
            };
            let mut config = clearing::bench::BenchConfig::new(records, database, binary);
            config.topup_load_seconds = topup_load_seconds;
            config.topup_load_connections = topup_load_connections;
            let report = clearing::bench::run(&config).await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
        Command::Migrate { database } => {
            Db::connect(&database).await?;
            println!("schema up to date");
        }
        Command::LoadMerchants { database, file } => {
            let db = Db::connect(&database).await?;
            let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
            let merchants: clearing::registry::MerchantFile = serde_json::from_str(&text)?;
            clearing::registry::load_merchant_file(&db, &merchants).await?;
            println!("{} merchants, {} terminals", merchants.merchants.len(), merchants.terminals.len());
        }
        Command::Ingest { database, file } => {
            let db = Db::connect(&database).await?;
            let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let batch = clearing::batch::parse(&bytes)?;
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs() as i64;
            let report = clearing::ingest(&db, &batch, now).await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
        Command::RunDay { date, database, hsm, out, chunk_records, signing_key } => {
            let day = BusinessDay::parse(&date)?;
            anyhow::ensure!(
                (1..=clearing::run_day::CHUNK_RECORDS_MAX).contains(&chunk_records),
                "--chunk-records must be 1 to {}",
                clearing::run_day::CHUNK_RECORDS_MAX
            );
            let db = Db::connect(&database).await?;
            let hsm = HsmClient::connect(ClientConfig::new(hsm)).await.context("connecting to the HSM")?;
            let mut options = RunOptions::new(day, out);
            options.chunk_records = chunk_records;
            options.signing_key = signing_key;
            options.progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
            options.on_step = kill_hook();
            let started = std::time::Instant::now();
            let (summary, stats) = clearing::run_day(&db, &hsm, &options).await?;
            let elapsed = started.elapsed();
            println!("{}", serde_json::to_string_pretty(&summary)?);
            eprintln!(
                "day {}: {} records ({} cleared, {} quarantined); this run: {} records in {} chunks, {} TACs, \
                 {:.3} s ({:.0} records/s); gross {} fee {} net {} yuan; peak memory {} KiB",
                summary.business_day,
                summary.records,
                summary.cleared,
                summary.quarantined,
                stats.records_processed,
                stats.chunks,
                stats.tacs_verified,
                elapsed.as_secs_f64(),
                stats.records_processed as f64 / elapsed.as_secs_f64().max(1e-9),
                clearing::money::yuan(summary.gross_fen),
                clearing::money::yuan(summary.fee_fen),
                clearing::money::yuan(summary.net_fen),
                peak_memory_kib(),
            );
        }
    }
    Ok(())
}

//! `hsm-sim`: the server, and a benchmark.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use hsm_sim::audit::Audit;
use hsm_sim::keystore::{KeyStore, LmkSource, Opened};
use hsm_sim::{Hsm, LMK_ENVIRONMENT_VARIABLE, Lmk, Server, ServerConfig};

mod bench;

#[derive(Parser)]
#[command(version, about = "A simulated network HSM (payShield host protocol) for the citizen card")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HSM on TCP.
    Serve {
        #[arg(long, default_value = "127.0.0.1:1500")]
        listen: String,
        /// Key store directory. A missing or empty one becomes a TEST deployment.
        #[arg(long)]
        keystore: PathBuf,
        /// A file holding the LMK as 64 hex digits (else $HSM_SIM_LMK, else the test LMK of a test store).
        #[arg(long)]
        lmk_file: Option<PathBuf>,
        /// Message header length.
        #[arg(long, default_value_t = hsm_sim::wire::HEADER_LENGTH_DEFAULT)]
        header_length: usize,
        /// Largest message accepted, in bytes.
        #[arg(long, default_value_t = hsm_sim::wire::MESSAGE_MAX)]
        message_max: usize,
        /// Seconds a connection may stay without a complete request.
        #[arg(long, default_value_t = 60)]
        idle_timeout_seconds: u64,
        /// Accept clear-key import (`ZS`). Tests only.
        #[arg(long)]
        test_mode: bool,
    },
    /// Measure TAC verification in-process and over loopback (one at a time, pipelined, batched).
    Bench {
        /// TAC records per measurement.
        #[arg(long, default_value_t = 200_000)]
        records: usize,
    },
}

fn load_lmk(file: Option<&PathBuf>) -> anyhow::Result<LmkSource> {
    if let Some(path) = file {
        let text = zeroize::Zeroizing::new(
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
        );
        return Ok(LmkSource::Given(Lmk::parse_hex(&text).context("LMK file")?));
    }
    if let Ok(text) = std::env::var(LMK_ENVIRONMENT_VARIABLE) {
        let text = zeroize::Zeroizing::new(text);
        return Ok(LmkSource::Given(Lmk::parse_hex(&text).context(LMK_ENVIRONMENT_VARIABLE)?));
    }
    Ok(LmkSource::TestDefault)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Serve { listen, keystore, lmk_file, header_length, message_max, idle_timeout_seconds, test_mode } => {
            if header_length > hsm_sim::wire::HEADER_LENGTH_MAX {
                bail!("--header-length is at most {}", hsm_sim::wire::HEADER_LENGTH_MAX);
            }
            if !(header_length + 4..=hsm_sim::wire::MESSAGE_MAX).contains(&message_max) {
                bail!("--message-max is from the header length + 4 to {}", hsm_sim::wire::MESSAGE_MAX);
            }
            let lmk = load_lmk(lmk_file.as_ref())?;
            let (store, opened) =
                KeyStore::open(&keystore, lmk).with_context(|| format!("key store {}", keystore.display()))?;
            if opened == Opened::FreshTestDeployment || store.is_test_deployment() {
                tracing::warn!(
                    "TEST DEPLOYMENT: the key store in {} holds the published TEST keys from fixtures/ (and, unless an LMK was given, a test LMK saved beside it). Never use it for real cards or money.",
                    keystore.display()
                );
            }
            if opened == Opened::FreshTestDeployment {
                eprintln!(
                    "*** hsm-sim: NEW TEST DEPLOYMENT in {}: test LMK and TEST keys from fixtures/. NOT FOR PRODUCTION. ***",
                    keystore.display()
                );
            }
            if test_mode {
                tracing::warn!("test mode: clear-key import (ZS) is accepted");
            }
            let lmk_check = hex::encode_upper(store.lmk_check_value());
            let keys = store.len();
            let audit = Audit::to_file(&keystore.join("audit.log")).await.context("opening the audit log")?;
            let hsm = Arc::new(Hsm::new(store, test_mode));
            let config = ServerConfig {
                header_length,
                message_max,
                idle_timeout: Duration::from_secs(idle_timeout_seconds),
                ..ServerConfig::default()
            };
            let server =
                Server::bind(&listen, hsm, config, audit).await.with_context(|| format!("listening on {listen}"))?;
            tracing::info!(address = %server.local_addr()?, lmk_check = %lmk_check, keys, "hsm-sim serving");
            tokio::select! {
                () = server.run() => {}
                _ = tokio::signal::ctrl_c() => tracing::info!("interrupted; stopping"),
            }
            Ok(())
        }
        Command::Bench { records } => bench::run(records).await,
    }
}

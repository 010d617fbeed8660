//! The end-to-end demo on the embedded defaults: a whole simulated city day
//! (`docs/demo.md`). Cards are issued through clearing's issuer API with the
//! TEST-ONLY keys, riders tap on four bus routes, kiosks top up and take bills,
//! hospital counters take co-payments, one card is lost mid-day and one
//! purchase torn; the terminals upload signed batches, run-day clears and
//! settles, and the summary says what happened and whether it all adds up.
//! Route 1's validator reads cards through pcscd + vpcd when it runs (the demo
//! says so), every other terminal in-process.

use std::io::IsTerminal;

use anyhow::Context;
use clap::Parser;
use system_tests::city::{self, CityOptions, Mode};
use system_tests::vpcd_available;

/// A simulated city day on the citizen card system (TEST-ONLY keys, fictional people).
#[derive(Debug, Parser)]
#[command(name = "demo")]
struct Arguments {
    /// Cards to issue.
    #[arg(long, default_value_t = 300)]
    cards: usize,
    /// Errands in the day (bus journeys, top-ups, bills, hospital visits); default 3 per card.
    #[arg(long)]
    transactions: Option<usize>,
    /// The seed of the day's plan: the same seed gives the same totals.
    #[arg(long, default_value_t = 20261125)]
    seed: u64,
    /// Run clearing on PostgreSQL (a fresh schema, dropped at the end) instead
    /// of SQLite; default: the CITIZEN_CARD_DATABASE_URL environment variable.
    #[arg(long)]
    postgres: Option<String>,
    /// Every terminal in-process, even when pcscd with vpcd runs.
    #[arg(long)]
    in_process: bool,
    /// No progress bars (they are off anyway when stdout is not a terminal).
    #[arg(long)]
    quiet: bool,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "error".into()))
        .with_writer(std::io::stderr)
        .init();
    let arguments = Arguments::parse();
    let pcscd = !arguments.in_process && vpcd_available();
    let options = CityOptions {
        cards: arguments.cards,
        errands: arguments.transactions.unwrap_or(arguments.cards * 3),
        seed: arguments.seed,
        postgres: arguments
            .postgres
            .or_else(|| std::env::var("CITIZEN_CARD_DATABASE_URL").ok())
            .filter(|url| !url.is_empty()),
        mode: if pcscd { Mode::Pcscd } else { Mode::InProcess },
        progress: !arguments.quiet && std::io::stdout().is_terminal(),
    };
    println!(
        "citizen card city day — TEST-ONLY keys from fixtures/keys, fictional people; {} cards, {} errands, seed {}",
        options.cards, options.errands, options.seed
    );
    if !pcscd {
        println!(
            "pcscd: {}",
            if arguments.in_process { "not used (--in-process)" } else { "no pcscd with the vpcd reader here" }
        );
    }
    // The vpcd reader is shared with the system tests: wait for it.
    let _reader = pcscd.then(system_tests::ReaderLock::take);
    let report = city::run(&options, &mut |line| println!("{line}")).context("the city day")?;
    println!("{report}");
    if !report.all_checks_pass() {
        anyhow::bail!("a check failed (see above)");
    }
    Ok(())
}

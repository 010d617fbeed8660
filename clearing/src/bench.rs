//! `clearing bench`: a simulated day cleared end to end, with the HSM's own
//! batched TAC-verification rate measured in the same run.
//!
//! It starts an in-process `hsm-sim` on loopback (a fresh TEST key store), makes
//! a database (a temporary SQLite file, or a fresh schema in the PostgreSQL
//! given), registers the fixture merchants, opens the cards' shadow accounts in
//! bulk, generates the day's purchases with genuine TACs (card-host's crypto under
//! the published TEST keys), stores them as terminal batches, then runs the real
//! `clearing run-day` binary as a child process (so its peak memory is its own)
//! and reports the rates.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use card_host::crypto::{self, purse};
use card_host::issue::{self, MasterKeySet};
use card_host::model::{ApplicationSerial, CardDateTime, Fen, TerminalNumber, TransactionType};
use hsm_sim::HsmClient;
use serde::Serialize;

use crate::batch::{BATCH_RECORDS_MAX, Batch, Record, RecordKind};
use crate::db::Db;
use crate::error::Error;

/// The most records a bench day may have.
pub const BENCH_RECORDS_MAX: u64 = 50_000_000;
/// Records per card in the simulated day (a city rider: a few trips and a purchase).
pub const RECORDS_PER_CARD: u64 = 4;
/// How many records the standalone HSM measurement verifies.
pub const HSM_SAMPLE_MAX: usize = 200_000;
/// Cards opened per INSERT.
const CARDS_PER_INSERT: usize = 1_000;

#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub records: u64,
    /// `sqlite` for a temporary file, or a `postgres://` URL (a fresh schema is made in it and dropped).
    pub database: String,
    /// The `clearing` binary to run `run-day` with.
    pub clearing_binary: PathBuf,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub database: String,
    pub records: u64,
    pub cards: u64,
    pub generate_seconds: f64,
    pub ingest_seconds: f64,
    pub ingest_records_per_second: f64,
    pub hsm_sample: usize,
    pub hsm_batched_tacs_per_second: f64,
    pub run_day_seconds: f64,
    pub run_day_records_per_second: f64,
    pub run_day_to_hsm_ratio: f64,
    pub run_day_peak_memory_kib: u64,
    pub cleared: i64,
    pub quarantined: i64,
    /// Online top-up authorisations through the HTTP API (signed request, card
    /// look-up, HSM ZC, top-up row), paced at `topup_rate_per_second` on one
    /// keep-alive connection over loopback.
    pub topup_requests: usize,
    pub topup_rate_per_second: u64,
    pub topup_p50_micros: u64,
    pub topup_p99_micros: u64,
    pub topup_max_micros: u64,
}

fn config_error(message: impl std::fmt::Display) -> Error {
    Error::Config(message.to_string())
}

/// Runs the bench; prints progress on standard error.
pub async fn run(config: &BenchConfig) -> Result<BenchReport, Error> {
    if config.records == 0 || config.records > BENCH_RECORDS_MAX {
        return Err(Error::invalid("records", format!("1 to {BENCH_RECORDS_MAX}")));
    }
    let work = tempfile_dir()?;
    // The HSM.
    let (store, _) =
        hsm_sim::KeyStore::open(&work.join("hsm"), hsm_sim::LmkSource::TestDefault).map_err(config_error)?;
    let server = hsm_sim::Server::bind(
        "127.0.0.1:0",
        Arc::new(hsm_sim::Hsm::new(store, false)),
        hsm_sim::ServerConfig::default(),
        hsm_sim::audit::Audit::tracing_only(),
    )
    .await
    .map_err(config_error)?;
    let (hsm_address, hsm_task) = server.spawn().map_err(config_error)?;
    let mut client_config = hsm_sim::ClientConfig::new(hsm_address.to_string());
    client_config.connections = 4;
    let hsm = HsmClient::connect(client_config).await?;

    // The database.
    let (url, schema) = if config.database == "sqlite" {
        (format!("sqlite://{}", work.join("clearing.db").display()), None)
    } else if config.database.starts_with("postgres") {
        let schema = format!("clearing_bench_{}", std::process::id());
        let admin = Db::connect_plain(&config.database).await?;
        sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).execute(&admin).await?;
        sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(&admin).await?;
        admin.close().await;
        let separator = if config.database.contains('?') { '&' } else { '?' };
        (format!("{}{separator}options=-c%20search_path%3D{schema}", config.database), Some(schema))
    } else {
        return Err(Error::invalid("database", "sqlite, or a postgres:// URL"));
    };
    let db = Db::connect(&url).await?;
    let merchants_path = issue::fixtures::directory().join("merchants/test-merchants.json");
    let merchants: crate::registry::MerchantFile =
        serde_json::from_str(&std::fs::read_to_string(&merchants_path).map_err(config_error)?).map_err(config_error)?;
    crate::registry::load_merchant_file(&db, &merchants).await?;
    let terminals: Vec<TerminalNumber> = merchants
        .terminals
        .iter()
        .map(|t| TerminalNumber::parse_hex(&t.terminal_number))
        .collect::<Result<_, _>>()
        .map_err(config_error)?;
    let keys = MasterKeySet::load(&issue::fixtures::test_keyset()).map_err(config_error)?;

    let cards = config.records.div_ceil(RECORDS_PER_CARD);
    let balance_fen: i64 = 100_000;
    eprintln!("bench: {} records on {cards} cards, database {}", config.records, config.database);
    open_cards(&db, cards, balance_fen).await?;

    // Generate and store the day, batch by batch, as terminals would upload it.
    let mut generate = std::time::Duration::ZERO;
    let mut ingest = std::time::Duration::ZERO;
    let mut sample = Vec::with_capacity(HSM_SAMPLE_MAX);
    let mut made: u64 = 0;
    let mut batch_number = 0u64;
    let mut card = 0u64;
    while made < config.records {
        let started = Instant::now();
        let mut per_terminal: Vec<Vec<Record>> = vec![Vec::new(); terminals.len()];
        let mut in_batch = 0usize;
        while in_batch < BATCH_RECORDS_MAX && made < config.records {
            let serial = serial_of(card);
            let dtk = crypto::diversify(keys.algorithm, &keys.tac, &serial.0);
            let mut balance = balance_fen as u32;
            for i in 0..RECORDS_PER_CARD.min(config.records - made) {
                let terminal = terminals[((card + i) % terminals.len() as u64) as usize];
                let amount = 100 + ((card * 7 + i * 13) % 900) as u32;
                let at = CardDateTime::new(2026, 11, 24, 6 + (i * 4) as u8, (card % 60) as u8, (card / 60 % 60) as u8)
                    .map_err(config_error)?;
                let terminal_serial = (card * RECORDS_PER_CARD + i) as u32;
                let kind = TransactionType::PursePurchase;
                let tac = purse::purchase_tac(keys.algorithm, &dtk, Fen(amount), kind, &terminal, terminal_serial, &at);
                let record = Record {
                    kind: RecordKind::Purchase,
                    card_serial: serial,
                    card_type: 1,
                    counter: i as u16,
                    balance_before: Fen(balance),
                    amount: Fen(amount),
                    transaction_type: kind,
                    terminal_number: terminal,
                    terminal_serial,
                    at,
                    tac,
                };
                balance -= amount;
                if sample.len() < HSM_SAMPLE_MAX {
                    sample.push(hsm_sim::command::TacRecord::Purchase(hsm_sim::command::PurchaseTac {
                        serial,
                        amount: Fen(amount),
                        kind,
                        terminal,
                        terminal_serial,
                        at,
                        tac,
                    }));
                }
                per_terminal[((card + i) % terminals.len() as u64) as usize].push(record);
                made += 1;
                in_batch += 1;
            }
            card += 1;
        }
        generate += started.elapsed();
        let started = Instant::now();
        for (terminal, records) in terminals.iter().zip(per_terminal) {
            if records.is_empty() {
                continue;
            }
            batch_number += 1;
            let batch = Batch {
                terminal_id: *terminal,
                batch_id: format!("bench-{batch_number}"),
                raw_records: Vec::new(),
                digest: [0; 32],
                records: records.into_iter().map(|record| Ok(record.into())).collect(),
            };
            crate::ingest::ingest(
                &db,
                &batch,
                CardDateTime::new(2026, 11, 25, 1, 0, 0).map_err(config_error)?.unix_seconds() as i64,
            )
            .await?;
        }
        ingest += started.elapsed();
        if batch_number.is_multiple_of(30) {
            eprintln!("bench: stored {made} records");
        }
    }

    // The HSM alone: the same batched verification run-day does, on a sample.
    let started = Instant::now();
    let verdicts = hsm.verify_tacs("card", &sample).await?;
    let hsm_seconds = started.elapsed().as_secs_f64();
    if verdicts.iter().any(|v| *v != hsm_sim::TacVerdict::Valid) {
        return Err(Error::Inconsistent("a generated TAC did not verify".into()));
    }

    // run-day, as its own process.
    eprintln!("bench: run-day");
    let started = Instant::now();
    let output = child::output(
        std::process::Command::new(&config.clearing_binary)
            .env("RUST_LOG", std::env::var("CLEARING_BENCH_LOG").unwrap_or_else(|_| "warn".into()))
            .args(["run-day", "--date", "2026-11-24", "--database", &url, "--hsm", &hsm_address.to_string()])
            .arg("--out")
            .arg(work.join("out")),
    )
    .await?;
    let run_day_seconds = started.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&output.stderr);
    if std::env::var_os("CLEARING_BENCH_LOG").is_some() {
        eprintln!("{stderr}");
    }
    if !output.status.success() {
        return Err(Error::Config(format!("run-day failed: {stderr}")));
    }
    let summary: crate::run_day::DaySummary = serde_json::from_slice(&output.stdout).map_err(config_error)?;
    let peak = stderr
        .split("peak memory ")
        .nth(1)
        .and_then(|rest| rest.split(" KiB").next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    eprintln!("bench: online top-up authorisations");
    let topups = topup_latencies(&db, hsm, &keys, cards.min(TOPUP_REQUESTS as u64) as usize).await?;
    hsm_task.abort();
    if let Some(schema) = schema {
        db.close().await;
        let admin = Db::connect_plain(&config.database).await?;
        sqlx::query(&format!("DROP SCHEMA {schema} CASCADE")).execute(&admin).await?;
        admin.close().await;
    }
    if std::env::var_os("CLEARING_BENCH_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&work);
    } else {
        eprintln!("kept {}", work.display());
    }
    let hsm_rate = sample.len() as f64 / hsm_seconds;
    let run_day_rate = summary.records as f64 / run_day_seconds;
    Ok(BenchReport {
        database: if config.database == "sqlite" { "sqlite".into() } else { "postgres".into() },
        records: config.records,
        cards,
        generate_seconds: generate.as_secs_f64(),
        ingest_seconds: ingest.as_secs_f64(),
        ingest_records_per_second: config.records as f64 / ingest.as_secs_f64(),
        hsm_sample: sample.len(),
        hsm_batched_tacs_per_second: hsm_rate,
        run_day_seconds,
        run_day_records_per_second: run_day_rate,
        run_day_to_hsm_ratio: run_day_rate / hsm_rate,
        run_day_peak_memory_kib: peak,
        cleared: summary.cleared,
        quarantined: summary.quarantined,
        topup_requests: topups.len(),
        topup_rate_per_second: TOPUP_RATE_PER_SECOND,
        topup_p50_micros: percentile(&topups, 50),
        topup_p99_micros: percentile(&topups, 99),
        topup_max_micros: topups.last().copied().unwrap_or(0),
    })
}

/// Top-up authorisations measured.
pub const TOPUP_REQUESTS: usize = 3_000;
/// Their pace.
pub const TOPUP_RATE_PER_SECOND: u64 = 1_000;
/// The longest HTTP answer the bench reads.
const RESPONSE_BYTES_MAX: usize = 64 * 1024;

fn percentile(sorted: &[u64], percent: usize) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() * percent).div_ceil(100)).clamp(1, sorted.len()) - 1]
}

/// Sorted latencies (µs) of `count` top-up authorisations through the API.
async fn topup_latencies(db: &Db, hsm: HsmClient, keys: &MasterKeySet, count: usize) -> Result<Vec<u64>, Error> {
    use ::tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    let state = crate::api::AppState::new(db.clone(), hsm, crate::api::Tokens::default());
    let listener = ::tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(config_error)?;
    let address = listener.local_addr().map_err(config_error)?;
    let server = ::tokio::spawn(crate::api::serve(listener, state));
    // The fixture kiosk terminal (310000000902) and its TEST device key (seed 0x02 × 32).
    let terminal = TerminalNumber::parse_hex("310000000902").map_err(config_error)?;
    let device = ring::signature::Ed25519KeyPair::from_seed_unchecked(&[2; 32]).map_err(config_error)?;
    let load_key = keys.load.first().ok_or_else(|| config_error("the key set has no load key"))?;
    let mut stream =
        ::tokio::io::BufReader::new(::tokio::net::TcpStream::connect(address).await.map_err(config_error)?);
    let mut ticks = ::tokio::time::interval(std::time::Duration::from_micros(1_000_000 / TOPUP_RATE_PER_SECOND));
    ticks.set_missed_tick_behavior(::tokio::time::MissedTickBehavior::Delay);
    let mut latencies = Vec::with_capacity(count);
    for card in 0..count as u64 {
        let serial = serial_of(card);
        let dlk = crypto::diversify(keys.algorithm, &load_key.key, &serial.0);
        let random = (card as u32).to_be_bytes();
        let session = crypto::load_session_key(keys.algorithm, &dlk, random, 0);
        let (balance, amount) = (Fen(1_000), Fen(5_000));
        let mac1 = purse::load_mac1(&session, balance, amount, TransactionType::PurseLoad, &terminal);
        let body = serde_json::json!({
            "card_serial": serial.to_hex(), "key_index": load_key.index, "card_random": hex::encode(random),
            "online_counter": 0, "balance_before_fen": balance.0, "amount_fen": amount.0,
            "transaction_type": "02", "mac1": hex::encode(mac1),
        })
        .to_string();
        let path = "/v1/topups/authorise";
        let signature = device.sign(&crate::api::signed_message("POST", path, body.as_bytes()));
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: clearing\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             X-Terminal-Id: {terminal}\r\nX-Signature: {}\r\n\r\n{body}",
            body.len(),
            hex::encode(signature.as_ref())
        );
        ticks.tick().await;
        let started = Instant::now();
        stream.get_mut().write_all(request.as_bytes()).await.map_err(config_error)?;
        let mut status_line = String::new();
        stream.read_line(&mut status_line).await.map_err(config_error)?;
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            stream.read_line(&mut line).await.map_err(config_error)?;
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = value.trim().parse().map_err(config_error)?;
            }
        }
        if length > RESPONSE_BYTES_MAX {
            return Err(config_error("answer too long"));
        }
        let mut answer = vec![0; length];
        stream.read_exact(&mut answer).await.map_err(config_error)?;
        latencies.push(started.elapsed().as_micros() as u64);
        if !status_line.starts_with("HTTP/1.1 200") {
            return Err(config_error(format!("top-up refused: {status_line} {}", String::from_utf8_lossy(&answer))));
        }
    }
    server.abort();
    latencies.sort_unstable();
    Ok(latencies)
}

fn serial_of(card: u64) -> ApplicationSerial {
    let mut serial = [0u8; 8];
    serial[0] = 0x31;
    serial[3..].copy_from_slice(&card.to_be_bytes()[3..]);
    ApplicationSerial(serial)
}

fn tempfile_dir() -> Result<PathBuf, Error> {
    let path = std::env::temp_dir().join(format!("clearing-bench-{}", std::process::id()));
    std::fs::create_dir_all(&path).map_err(|source| Error::File { path: path.display().to_string(), source })?;
    Ok(path)
}

/// Opens the cards' shadow accounts in bulk (the bench skips cardholders), and
/// funds their balances in one ledger entry.
async fn open_cards(db: &Db, cards: u64, balance_fen: i64) -> Result<(), Error> {
    let mut tx = db.pool.begin().await?;
    let all: Vec<u64> = (0..cards).collect();
    for part in all.chunks(CARDS_PER_INSERT) {
        let sql = format!(
            "INSERT INTO cards (card_serial, card_type, key_set, status, issued_at, balance_fen, offline_counter,
             online_counter) VALUES {}",
            crate::db::row_placeholders(db.dialect, part.len(), 8, 1)
        );
        let mut insert = sqlx::query(&sql);
        for card in part {
            insert = insert
                .bind(serial_of(*card).to_hex())
                .bind(1_i64)
                .bind("card")
                .bind("active")
                .bind(0_i64)
                .bind(balance_fen)
                .bind(0_i64)
                .bind(0_i64);
        }
        insert.execute(&mut *tx).await?;
    }
    let total = balance_fen * cards as i64;
    crate::ledger::post(
        &mut tx,
        "bench:cards",
        "2026-11-01",
        &[(crate::ledger::Account::TopupFunding, total), (crate::ledger::Account::CardFloat, -total)],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Runs a child process to completion off the async threads.
mod child {
    pub async fn output(command: &mut std::process::Command) -> Result<std::process::Output, super::Error> {
        let mut command = std::mem::replace(command, std::process::Command::new("true"));
        ::tokio::task::spawn_blocking(move || command.output())
            .await
            .map_err(|e| super::Error::Config(e.to_string()))?
            .map_err(|e| super::Error::Config(format!("running clearing run-day: {e}")))
    }
}

//! `hsm-sim bench`: TAC verification rates measured side by side in one run:
//! in-process (the crypto's own limit, one core and all cores), and over
//! loopback TCP to a server in this process: one request at a time, pipelined
//! single requests, and batches. The anchor is the published payShield 10K
//! top-tier throughput of 2,500 commands per second.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use card_host::crypto;
use card_host::issue::{MasterKeySet, fixtures};
use card_host::{ApplicationSerial, CardDateTime, Fen, TerminalNumber, TransactionType};
use hsm_sim::audit::Audit;
use hsm_sim::command::{PurchaseTac, Request, TacRecord};
use hsm_sim::keystore::{KeyStore, LmkSource, TEST_SET_TRIPLE_DES};
use hsm_sim::{ClientConfig, Hsm, HsmClient, Server, ServerConfig, TacVerdict};

/// Published payShield 10K top-tier throughput, commands per second.
const PAYSHIELD_10K_TOP_TIER_PER_SECOND: f64 = 2_500.0;
/// Requests in flight at once in the pipelined measurement.
const PIPELINE_WINDOW: usize = 2_000;

fn records(count: usize) -> anyhow::Result<Vec<TacRecord>> {
    records_of(&MasterKeySet::load(&fixtures::test_keyset()).context("test key set")?, count)
}

fn records_of(keys: &MasterKeySet, count: usize) -> anyhow::Result<Vec<TacRecord>> {
    let terminal = TerminalNumber([0x31, 0, 0, 0, 0, 1]);
    let at = CardDateTime::new(2026, 11, 24, 8, 30, 0)?;
    Ok((0..count as u64)
        .map(|i| {
            let serial = ApplicationSerial((0x3100_0000_0000_0000 + i % 100_000).to_be_bytes());
            let dtk = crypto::diversify(keys.algorithm, &keys.tac, &serial.0);
            let amount = Fen(100 + (i % 1_000) as u32);
            let kind = TransactionType::PursePurchase;
            let tac = crypto::purse::purchase_tac(keys.algorithm, &dtk, amount, kind, &terminal, i as u32, &at);
            TacRecord::Purchase(PurchaseTac { serial, amount, kind, terminal, terminal_serial: i as u32, at, tac })
        })
        .collect())
}

struct Figure {
    name: &'static str,
    records: usize,
    seconds: f64,
}

impl Figure {
    fn rate(&self) -> f64 {
        self.records as f64 / self.seconds
    }
}

pub async fn run(count: usize) -> anyhow::Result<()> {
    anyhow::ensure!(count >= 10_000, "--records must be at least 10000");
    let directory = std::env::temp_dir().join(format!("hsm-sim-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&directory);
    let (store, _) = KeyStore::open(&directory, LmkSource::TestDefault).context("bench key store")?;
    let audit = Audit::to_file(&directory.join("audit.log")).await?;
    let hsm = Arc::new(Hsm::new(store, false));
    let server = Server::bind("127.0.0.1:0", hsm.clone(), ServerConfig::default(), audit).await?;
    let (address, _task) = server.spawn()?;
    let records = records(count)?;
    let mut figures = Vec::new();

    // In-process, one core (the crypto's own limit), then the batch path over
    // all cores: the same measurement `clearing bench` makes.
    let rates = hsm.measure_in_process(TEST_SET_TRIPLE_DES, &records).map_err(|code| anyhow::anyhow!("{code}"))?;
    figures.push(Figure {
        name: "in-process, one core",
        records: rates.records,
        seconds: rates.records as f64 / rates.one_core_per_second,
    });
    figures.push(Figure {
        name: "in-process, batch path, all cores",
        records: rates.records,
        seconds: rates.records as f64 / rates.all_cores_per_second,
    });

    // In-process, one core, SM4 cards (context: the SM4 profile's cost).
    let sm4_keys = MasterKeySet::load(&fixtures::test_keyset_sm4()).context("SM4 test key set")?;
    let sm4_records = records_of(&sm4_keys, records.len() / 4)?;
    let started = Instant::now();
    let valid =
        sm4_records.iter().filter(|record| hsm_sim::hsm::verify_one(sm4_keys.algorithm, &sm4_keys.tac, record)).count();
    let sm4_figure = Figure {
        name: "in-process, one core, SM4",
        records: sm4_records.len(),
        seconds: started.elapsed().as_secs_f64(),
    };
    anyhow::ensure!(valid == sm4_records.len(), "every SM4 benchmark TAC is valid");

    let client = HsmClient::connect(ClientConfig { connections: 2, ..ClientConfig::new(address.to_string()) }).await?;
    let client = Arc::new(client);

    // Loopback, one request at a time (a tenth of the records: it is slow).
    let some = &records[..records.len() / 10];
    let started = Instant::now();
    for record in some {
        let TacRecord::Purchase(record) = record else { continue };
        anyhow::ensure!(client.verify_purchase_tac(TEST_SET_TRIPLE_DES, record).await?);
    }
    figures.push(Figure {
        name: "loopback, one at a time (ZE)",
        records: some.len(),
        seconds: started.elapsed().as_secs_f64(),
    });

    // Loopback, single requests pipelined over 2 connections.
    let requests: Vec<Request> = records
        .iter()
        .filter_map(|record| match record {
            TacRecord::Purchase(record) => {
                Some(Request::VerifyPurchaseTac { key_set: TEST_SET_TRIPLE_DES.to_owned(), record: record.clone() })
            }
            TacRecord::Load(_) => None,
        })
        .collect();
    let started = Instant::now();
    for window in requests.chunks(PIPELINE_WINDOW) {
        for result in client.call_many(window).await {
            result?;
        }
    }
    figures.push(Figure {
        name: "loopback, pipelined (ZE, 2 connections)",
        records: requests.len(),
        seconds: started.elapsed().as_secs_f64(),
    });

    // Loopback, batches of 1,700 records pipelined over 2 connections.
    let started = Instant::now();
    let verdicts = client.verify_tacs(TEST_SET_TRIPLE_DES, &records).await?;
    figures.push(Figure {
        name: "loopback, batched (ZI, 1,700 a batch, 2 connections)",
        records: records.len(),
        seconds: started.elapsed().as_secs_f64(),
    });
    anyhow::ensure!(verdicts.iter().all(|verdict| *verdict == TacVerdict::Valid));
    figures.push(sm4_figure);

    let latencies = top_up_latencies(&client).await?;

    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let in_process = figures[0].rate();
    let in_process_all_cores = figures[1].rate();
    println!(
        "hsm-sim bench: {} TAC records (3DES purchase TACs), {cores} cores, server and client in one process",
        records.len()
    );
    println!();
    println!(
        "| measurement | records | TAC verifications/s | × in-process one core | × in-process all cores | × payShield 10K (2,500/s) |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    for figure in &figures {
        println!(
            "| {} | {} | {:.0} | {:.2} | {:.2} | {:.1} |",
            figure.name,
            figure.records,
            figure.rate(),
            figure.rate() / in_process,
            figure.rate() / in_process_all_cores,
            figure.rate() / PAYSHIELD_10K_TOP_TIER_PER_SECOND
        );
    }
    println!();
    println!(
        "Online top-up authorisation (ZC: MAC1 verified, MAC2 made) at {TOP_UP_PER_SECOND}/s for {} s over loopback: p50 {} µs, p99 {} µs, max {} µs ({} requests)",
        TOP_UP_SECONDS,
        percentile(&latencies, 50),
        percentile(&latencies, 99),
        latencies.last().copied().unwrap_or(0),
        latencies.len()
    );
    let _ = std::fs::remove_dir_all(&directory);
    Ok(())
}

/// The kiosk goal's rate: top-ups authorised per second.
const TOP_UP_PER_SECOND: u64 = 1_000;
const TOP_UP_SECONDS: u64 = 3;

fn percentile(sorted: &[u64], percent: usize) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) * percent).div_ceil(100)]
}

/// `ZC` requests started at a steady rate (each on its own task, as kiosks
/// would send them), their latencies in microseconds, sorted.
async fn top_up_latencies(client: &Arc<HsmClient>) -> anyhow::Result<Vec<u64>> {
    let keys = MasterKeySet::load(&fixtures::test_keyset()).context("test key set")?;
    let load_key = keys.load.first().context("a load key")?;
    let terminal = TerminalNumber([0x31, 0, 0, 0, 9, 1]);
    let at = CardDateTime::new(2026, 11, 24, 8, 30, 0)?;
    let count = TOP_UP_PER_SECOND * TOP_UP_SECONDS;
    let mut ticker = tokio::time::interval(std::time::Duration::from_micros(1_000_000 / TOP_UP_PER_SECOND));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::with_capacity(count as usize);
    for i in 0..count {
        let serial = ApplicationSerial((0x3100_0000_0000_0000 + i).to_be_bytes());
        let dlk = crypto::diversify(keys.algorithm, &load_key.key, &serial.0);
        let card_random = (i as u32).to_be_bytes();
        let online_counter = (i % 60_000) as u16;
        let session = crypto::load_session_key(keys.algorithm, &dlk, card_random, online_counter);
        let (old_balance, amount) = (Fen(1_000), Fen(5_000));
        let mac1 = crypto::purse::load_mac1(&session, old_balance, amount, TransactionType::PurseLoad, &terminal);
        let load = hsm_sim::LoadAuthorisation {
            serial,
            key_index: load_key.index,
            card_random,
            online_counter,
            old_balance,
            amount,
            kind: TransactionType::PurseLoad,
            terminal,
            at,
            mac1,
        };
        ticker.tick().await;
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let started = Instant::now();
            client.authorise_load(TEST_SET_TRIPLE_DES, &load).await.map(|_| started.elapsed().as_micros() as u64)
        }));
    }
    let mut latencies = Vec::with_capacity(tasks.len());
    for task in tasks {
        latencies.push(task.await??);
    }
    latencies.sort_unstable();
    Ok(latencies)
}

//! Test support: a fresh database per test (a temporary SQLite file, or a random
//! PostgreSQL schema dropped at the end), an in-process HSM on a fresh test key
//! store, and cards whose TACs are computed with the published TEST keys
//! (fixtures/keys), exactly as card-host's cards compute them.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use card_host::crypto::purse;
use card_host::issue::{self, MasterKeySet};
use card_host::model::{ApplicationSerial, CardDateTime, Fen, TerminalNumber, TransactionType};
use clearing::batch::{self, Entry, GreyRecord, Record, RecordKind};
use clearing::registry::{self, CitizenIdKey, MerchantFile, NewCard};
use clearing::{Db, IngestReport};
use hsm_sim::audit::Audit;
use hsm_sim::keystore::{KeyStore, LmkSource};
use hsm_sim::{ClientConfig, Hsm, HsmClient, Server, ServerConfig};

pub const POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
pub const BUS: &str = "310000000901";
pub const SHOP: &str = "310000000902";
pub const HOSPITAL: &str = "310000000903";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub struct TestDb {
    pub db: Db,
    pub url: String,
    schema: Option<String>,
    _directory: Option<tempfile::TempDir>,
}

impl TestDb {
    pub async fn new(backend: Backend) -> TestDb {
        match backend {
            Backend::Sqlite => {
                let directory = tempfile::tempdir().expect("temporary directory");
                let url = format!("sqlite://{}", directory.path().join("clearing.db").display());
                let db = Db::connect(&url).await.expect("sqlite");
                TestDb { db, url, schema: None, _directory: Some(directory) }
            }
            Backend::Postgres => {
                let schema = format!("clearing_test_{:016x}", rand::random::<u64>());
                let admin = admin_pool().await;
                sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(&admin).await.expect("create schema");
                admin.close().await;
                let url = format!("{POSTGRES_URL}?options=-c%20search_path%3D{schema}");
                let db = Db::connect(&url).await.expect("postgres");
                TestDb { db, url, schema: Some(schema), _directory: None }
            }
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some(schema) = self.schema.take() {
            // Drop the schema from a thread of its own (we may be inside a runtime).
            let _ = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
                runtime.block_on(async {
                    let admin = admin_pool().await;
                    let _ = sqlx::query(&format!("DROP SCHEMA {schema} CASCADE")).execute(&admin).await;
                    admin.close().await;
                });
            })
            .join();
        }
    }
}

async fn admin_pool() -> sqlx::PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(POSTGRES_URL)
        .await
        .expect("PostgreSQL at 127.0.0.1:5432")
}

pub struct TestHsm {
    pub address: SocketAddr,
    pub directory: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestHsm {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestHsm {
    pub async fn start() -> TestHsm {
        let directory = tempfile::tempdir().expect("temporary directory");
        let (store, _) = KeyStore::open(directory.path(), LmkSource::TestDefault).expect("key store");
        let audit = Audit::tracing_only();
        let server = Server::bind("127.0.0.1:0", Arc::new(Hsm::new(store, true)), ServerConfig::default(), audit)
            .await
            .expect("bind");
        let (address, task) = server.spawn().expect("spawn");
        TestHsm { address, directory, task }
    }

    pub async fn client(&self) -> HsmClient {
        HsmClient::connect(ClientConfig::new(self.address.to_string())).await.expect("connect")
    }
}

pub fn citizen_key() -> CitizenIdKey {
    CitizenIdKey::new(b"TEST ONLY citizen id key")
}

pub fn merchants() -> MerchantFile {
    let path = issue::fixtures::directory().join("merchants/test-merchants.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("merchant fixture")).expect("merchant fixture parses")
}

pub fn terminal(number: &str) -> TerminalNumber {
    TerminalNumber::parse_hex(number).expect("terminal number")
}

pub fn at(day: u8, hour: u8, minute: u8) -> CardDateTime {
    CardDateTime::new(2026, 11, day, hour, minute, 0).expect("valid")
}

/// Unix seconds of an hour after the given day's end (an on-time upload).
pub fn uploaded_after(day: u8) -> i64 {
    at(day, 23, 0).unix_seconds() as i64 + 3600
}

pub fn master_keys() -> MasterKeySet {
    MasterKeySet::load(&issue::fixtures::test_keyset()).expect("test key set")
}

/// A card as the tests drive it: its real TAC key (derived from the TEST master
/// keys), and its balance and counters as the card itself keeps them.
#[derive(Clone)]
pub struct TestCard {
    pub serial: ApplicationSerial,
    pub balance: Fen,
    pub offline_counter: u16,
    pub online_counter: u16,
    pub terminal_serial: u32,
    keys: Arc<MasterKeySet>,
}

impl TestCard {
    pub fn purchase(&mut self, amount: u32, terminal_number: &str, at: CardDateTime) -> Record {
        let terminal = terminal(terminal_number);
        let keys = self.keys.card_keys(&self.serial);
        self.terminal_serial += 1;
        let kind = TransactionType::PursePurchase;
        let tac =
            purse::purchase_tac(keys.algorithm, &keys.tac, Fen(amount), kind, &terminal, self.terminal_serial, &at);
        let record = Record {
            kind: RecordKind::Purchase,
            card_serial: self.serial,
            card_type: 1,
            counter: self.offline_counter,
            balance_before: self.balance,
            amount: Fen(amount),
            transaction_type: kind,
            terminal_number: terminal,
            terminal_serial: self.terminal_serial,
            at,
            tac,
        };
        self.balance = Fen(self.balance.0 - amount);
        self.offline_counter += 1;
        record
    }

    /// A purchase the terminal could not settle with the card: its grey record,
    /// and the purchase's own record (with its TAC) if the card did debit it.
    pub fn grey(
        &mut self,
        amount: u32,
        terminal_number: &str,
        at: CardDateTime,
        debited: bool,
    ) -> (GreyRecord, Option<Record>) {
        let before = self.clone();
        let record = self.purchase(amount, terminal_number, at);
        let grey = record.grey().expect("a purchase");
        if debited {
            (grey, Some(record))
        } else {
            // The card never took it: its purse is as before (the PSAM's serial moved on).
            self.balance = before.balance;
            self.offline_counter = before.offline_counter;
            (grey, None)
        }
    }

    pub fn load(&mut self, amount: u32, terminal_number: &str, at: CardDateTime) -> Record {
        let terminal = terminal(terminal_number);
        let keys = self.keys.card_keys(&self.serial);
        let kind = TransactionType::PurseLoad;
        let new_balance = Fen(self.balance.0 + amount);
        let tac = purse::load_tac(
            keys.algorithm,
            &keys.tac,
            new_balance,
            self.online_counter,
            Fen(amount),
            kind,
            &terminal,
            &at,
        );
        let record = Record {
            kind: RecordKind::Load,
            card_serial: self.serial,
            card_type: 1,
            counter: self.online_counter,
            balance_before: self.balance,
            amount: Fen(amount),
            transaction_type: kind,
            terminal_number: terminal,
            terminal_serial: 0,
            at,
            tac,
        };
        self.balance = new_balance;
        self.online_counter += 1;
        record
    }
}

/// A database with the fixture merchants, an HSM, and issued cards.
pub struct World {
    pub test_db: TestDb,
    pub hsm: TestHsm,
    pub client: HsmClient,
    pub out: tempfile::TempDir,
    keys: Arc<MasterKeySet>,
}

impl World {
    pub async fn new(backend: Backend) -> World {
        let (test_db, hsm) = tokio::join!(TestDb::new(backend), TestHsm::start());
        registry::load_merchant_file(&test_db.db, &merchants()).await.expect("merchants");
        let client = hsm.client().await;
        World {
            test_db,
            hsm,
            client,
            out: tempfile::tempdir().expect("temporary directory"),
            keys: Arc::new(master_keys()),
        }
    }

    pub fn db(&self) -> &Db {
        &self.test_db.db
    }

    /// Issues card number `n` with a balance (fen), on 2026-11-01.
    pub async fn issue(&self, n: u32, balance: u32) -> TestCard {
        let serial = ApplicationSerial::parse_hex(&format!("31000000{n:08}")).expect("serial");
        let card = NewCard {
            serial,
            card_type: 1,
            key_set: "card".into(),
            citizen_id: format!("3101011990{n:08}"),
            name: format!("Citizen {n}"),
            initial_balance: Fen(balance),
            issued_at: at(1, 9, 0),
        };
        registry::issue_card(self.db(), &citizen_key(), &card).await.expect("issue");
        TestCard {
            serial,
            balance: Fen(balance),
            offline_counter: 0,
            online_counter: 0,
            terminal_serial: 0,
            keys: Arc::clone(&self.keys),
        }
    }

    pub async fn upload<E: Into<Entry>>(
        &self,
        terminal_number: &str,
        batch_id: &str,
        records: impl IntoIterator<Item = E>,
        received_at: i64,
    ) -> IngestReport {
        let document = batch::document(&terminal(terminal_number), batch_id, records);
        let parsed = batch::parse(document.to_string().as_bytes()).expect("batch parses");
        clearing::ingest(self.db(), &parsed, received_at).await.expect("ingest")
    }

    pub fn options(&self, day: u8) -> clearing::RunOptions {
        let day = clearing::BusinessDay::parse(&format!("2026-11-{day:02}")).expect("day");
        clearing::RunOptions::new(day, self.out.path())
    }

    pub async fn run_day(&self, day: u8) -> clearing::DaySummary {
        let (summary, _) = clearing::run_day(self.db(), &self.client, &self.options(day)).await.expect("run-day");
        assert_eq!(clearing::ledger::total(self.db()).await.expect("ledger"), 0, "the ledger balances");
        summary
    }

    /// The quarantine reasons of a day's records, in transaction order (the
    /// records refused at upload, which have no transaction, first).
    pub async fn quarantine_reasons(&self, day: u8) -> Vec<String> {
        sqlx::query_scalar(
            "SELECT reason FROM quarantine WHERE business_day = $1 ORDER BY COALESCE(transaction_id, 0), quarantine_id",
        )
        .bind(format!("2026-11-{day:02}"))
        .fetch_all(&self.db().pool)
        .await
        .expect("quarantine")
    }
}

/// One test body run on both databases.
#[macro_export]
macro_rules! both {
    ($name:ident, $body:expr) => {
        mod $name {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                ($body)(support::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                ($body)(support::Backend::Postgres).await
            }
        }
    };
}

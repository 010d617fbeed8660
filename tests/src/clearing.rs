//! A clearing back-end for system tests and the demo: SQLite in a temporary
//! directory, an in-process HSM server on loopback with a fresh TEST key store,
//! the fixture merchants loaded, and the HTTP API served on demand. It runs in
//! a runtime of its own, as the terminal's calls block.

use std::net::SocketAddr;
use std::sync::Arc;

use card_host::{ApplicationSerial, CardDateTime, Fen};
use clearing::api::{AppState, Tokens};
use clearing::registry::{self, CitizenIdKey, MerchantFile, NewCard};
use hsm_sim::audit::Audit;
use hsm_sim::keystore::{KeyStore, LmkSource};
use hsm_sim::{ClientConfig, Hsm, HsmClient, Server, ServerConfig};
use terminal::purse::Purse;
use terminal::{CardSession, Channel};

/// The TEST-ONLY key that hides citizen IDs in the test deployments.
pub const TEST_CITIZEN_ID_KEY: &[u8] = b"TEST ONLY citizen id key";

/// A clearing back-end in a runtime of its own (the terminal's calls block).
pub struct Clearing {
    pub runtime: tokio::runtime::Runtime,
    pub db: clearing::Db,
    pub hsm: HsmClient,
    pub hsm_address: SocketAddr,
    _hsm_task: tokio::task::JoinHandle<()>,
    _directory: tempfile::TempDir,
    /// Where run-day writes its settlement files.
    pub out: tempfile::TempDir,
    /// The PostgreSQL server and the fresh schema this clearing runs in, dropped with it.
    schema: Option<(String, String)>,
}

/// The PostgreSQL database of the system tests (`scripts/setup.sh` starts it).
pub const TEST_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

impl Clearing {
    pub fn start() -> Clearing {
        Clearing::start_on(None)
    }

    /// [`Clearing::start`] on PostgreSQL at `postgres` (a `postgres://` URL) in a
    /// fresh schema of a random name, dropped with the value; SQLite when `None`.
    pub fn start_on(postgres: Option<&str>) -> Clearing {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        let directory = tempfile::tempdir().expect("temporary directory");
        let schema = postgres.map(|server| (server.to_owned(), format!("city_{:016x}", rand::random::<u64>())));
        let (db, hsm, hsm_address, hsm_task) = runtime.block_on(async {
            let db = match &schema {
                None => {
                    let url = format!("sqlite://{}", directory.path().join("clearing.db").display());
                    clearing::Db::connect(&url).await.expect("sqlite")
                }
                Some((server, name)) => {
                    let admin = clearing::Db::connect_plain(server).await.expect("PostgreSQL server");
                    sqlx::query(&format!("CREATE SCHEMA {name}")).execute(&admin).await.expect("create schema");
                    admin.close().await;
                    let separator = if server.contains('?') { '&' } else { '?' };
                    let url = format!("{server}{separator}options=-c%20search_path%3D{name}");
                    clearing::Db::connect(&url).await.expect("PostgreSQL schema")
                }
            };
            let (store, _) = KeyStore::open(&directory.path().join("hsm"), LmkSource::TestDefault).expect("key store");
            let server = Server::bind(
                "127.0.0.1:0",
                Arc::new(Hsm::new(store, true)),
                ServerConfig::default(),
                Audit::tracing_only(),
            )
            .await
            .expect("bind HSM");
            let (address, task) = server.spawn().expect("spawn HSM");
            let hsm = HsmClient::connect(ClientConfig::new(address.to_string())).await.expect("HSM client");
            let path = card_host::issue::fixtures::directory().join("merchants/test-merchants.json");
            let merchants: MerchantFile =
                serde_json::from_str(&std::fs::read_to_string(path).expect("merchants")).expect("merchants parse");
            registry::load_merchant_file(&db, &merchants).await.expect("load merchants");
            (db, hsm, address, task)
        });
        Clearing {
            runtime,
            db,
            hsm,
            hsm_address,
            _hsm_task: hsm_task,
            _directory: directory,
            out: tempfile::tempdir().expect("temporary directory"),
            schema,
        }
    }

    /// The database clearing runs on, for people: `SQLite` or `PostgreSQL (schema NAME)`.
    pub fn database(&self) -> String {
        match &self.schema {
            None => "SQLite".to_owned(),
            Some((_, name)) => format!("PostgreSQL (schema {name})"),
        }
    }

    /// Serves the HTTP API on a fresh port (no operator or issuer tokens); the
    /// task ends when aborted. The terminal tests' clearing.
    pub fn serve(&self) -> (SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>) {
        self.serve_with(Tokens::default())
    }

    /// [`Clearing::serve`] with `tokens` (operators, the issuer) and the
    /// TEST-ONLY citizen ID key, so the issuer API issues cards.
    pub fn serve_with(&self, tokens: Tokens) -> (SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>) {
        self.serve_state(tokens, None, clearing::clock::Clock::default())
    }

    /// [`Clearing::serve_with`] and a personalisation station: the issuer API
    /// also derives each card's keys in the HSM (under the TEST transport key)
    /// and writes its image into `images`; the server's local time is `clock`.
    pub fn serve_personalising(
        &self,
        tokens: Tokens,
        images: &std::path::Path,
        clock: clearing::clock::Clock,
    ) -> (SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>) {
        let transport = card_host::issue::TransportKey::load(&card_host::issue::fixtures::test_transport_key())
            .expect("TEST transport key in fixtures/");
        let station =
            clearing::personalise::Personaliser::new(images, hsm_sim::keystore::TEST_TRANSPORT_KEY, &transport)
                .expect("personalisation station");
        self.serve_state(tokens, Some(station), clock)
    }

    fn serve_state(
        &self,
        tokens: Tokens,
        station: Option<clearing::personalise::Personaliser>,
        clock: clearing::clock::Clock,
    ) -> (SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>) {
        self.runtime.block_on(async {
            let hsm = HsmClient::connect(ClientConfig::new(self.hsm_address.to_string())).await.expect("HSM client");
            let mut state = AppState::new(self.db.clone(), hsm, tokens)
                .with_citizen_key(CitizenIdKey::new(TEST_CITIZEN_ID_KEY))
                .with_clock(clock);
            if let Some(station) = station {
                state = state.with_personaliser(station);
            }
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let address = listener.local_addr().expect("address");
            (address, tokio::spawn(clearing::api::serve(listener, state)))
        })
    }

    /// Registers the card in `reader` with clearing (serial and card type read
    /// from the card), with its opening balance; returns its serial.
    pub fn register(&self, reader: &mut dyn Channel, balance: Fen) -> ApplicationSerial {
        let (serial, card_type) = serial_and_type(reader);
        self.issue(serial, card_type, balance, 0);
        serial
    }

    pub fn issue(&self, serial: ApplicationSerial, card_type: u8, balance: Fen, n: u32) {
        let card = NewCard {
            serial,
            card_type,
            key_set: "card".into(),
            citizen_id: format!("3101011990{n:08}"),
            name: format!("Citizen {n}"),
            initial_balance: balance,
            issued_at: CardDateTime::new(2026, 1, 1, 0, 0, 0).expect("valid"),
        };
        let key = CitizenIdKey::new(TEST_CITIZEN_ID_KEY);
        self.runtime.block_on(registry::issue_card(&self.db, &key, &card)).expect("issue in clearing");
    }

    pub fn count(&self, sql: &str) -> i64 {
        self.runtime.block_on(sqlx::query_scalar::<_, i64>(sql).fetch_one(&self.db.pool)).expect("count")
    }

    /// Clearing's shadow account of each card equals its image's balance.
    pub fn assert_shadows_match(&self, cards: &[&std::path::Path]) {
        for path in cards {
            let image: card_host::card::CardImage = card_host::storage::load(path).expect("card image");
            let shadow = self.runtime.block_on(registry::shadow(&self.db, &image.serial)).expect("shadow");
            assert_eq!(shadow.balance_fen, i64::from(image.purse.balance.0), "card {}", image.serial.masked());
        }
    }

    pub fn run_day(&self, at: &CardDateTime) -> clearing::DaySummary {
        let options = clearing::RunOptions::new(clearing::BusinessDay::of(at), self.out.path());
        let (summary, _) = self.runtime.block_on(clearing::run_day(&self.db, &self.hsm, &options)).expect("run-day");
        assert_eq!(self.runtime.block_on(clearing::ledger::total(&self.db)).expect("ledger"), 0);
        summary
    }
}

impl Drop for Clearing {
    fn drop(&mut self) {
        if let Some((server, name)) = self.schema.take() {
            self.runtime.block_on(async {
                self.db.close().await;
                if let Ok(admin) = clearing::Db::connect_plain(&server).await {
                    let _ = sqlx::query(&format!("DROP SCHEMA {name} CASCADE")).execute(&admin).await;
                    admin.close().await;
                }
            });
        }
    }
}

/// The serial and card type of the card in `reader`.
pub fn serial_and_type(reader: &mut dyn Channel) -> (ApplicationSerial, u8) {
    let purse = Purse::select(CardSession::new(reader)).expect("select");
    let public = purse.public_information();
    (public.application_serial, public.card_type)
}

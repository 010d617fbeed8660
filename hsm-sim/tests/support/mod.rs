//! Test support: a real server on 127.0.0.1, an ephemeral port, a fresh key
//! store in a temporary directory; cards issued by card-host on the same test keys.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use card_host::card::CitizenCard;
use card_host::issue::{self, Cardholder, IssueOptions, MasterKeySet, ProfileFile};
use card_host::storage::Storage;
use card_host::{CardDateTime, Command, Fen, Response, SmartCard, StatusWord};
use hsm_sim::audit::Audit;
use hsm_sim::keystore::{KeyStore, LmkSource};
use hsm_sim::{ClientConfig, Hsm, HsmClient, Server, ServerConfig};

pub struct TestHsm {
    pub address: SocketAddr,
    pub directory: tempfile::TempDir,
    pub task: tokio::task::JoinHandle<()>,
}

impl Drop for TestHsm {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestHsm {
    pub async fn client(&self) -> HsmClient {
        HsmClient::connect(ClientConfig::new(self.address.to_string())).await.expect("connect")
    }

    /// The audit log, after giving its writer task time to catch up.
    pub async fn audit_log(&self) -> String {
        tokio::time::sleep(Duration::from_millis(150)).await;
        std::fs::read_to_string(self.directory.path().join("audit.log")).unwrap_or_default()
    }
}

/// Starts a server on a fresh test key store.
pub async fn start_with(config: ServerConfig, test_mode: bool) -> TestHsm {
    let directory = tempfile::tempdir().expect("temporary directory");
    let task_and_address = serve(directory.path(), config, test_mode).await;
    TestHsm { address: task_and_address.0, task: task_and_address.1, directory }
}

/// Serves the store in `path` (a fresh test store if it is empty).
pub async fn serve(
    path: &std::path::Path,
    config: ServerConfig,
    test_mode: bool,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let (store, _) = KeyStore::open(path, LmkSource::TestDefault).expect("key store");
    let audit = Audit::to_file(&path.join("audit.log")).await.expect("audit log");
    let server = Server::bind("127.0.0.1:0", Arc::new(Hsm::new(store, test_mode)), config, audit).await.expect("bind");
    server.spawn().expect("spawn")
}

pub async fn start() -> TestHsm {
    start_with(ServerConfig::default(), true).await
}

pub fn short_idle() -> ServerConfig {
    ServerConfig { idle_timeout: Duration::from_millis(300), ..ServerConfig::default() }
}

// The card side, as card-host's own tests drive it.

pub fn master_keys() -> MasterKeySet {
    MasterKeySet::load(&issue::fixtures::test_keyset()).expect("test key set")
}

pub fn master_keys_sm4() -> MasterKeySet {
    MasterKeySet::load(&issue::fixtures::test_keyset_sm4()).expect("test key set")
}

pub fn cardholder(number: usize) -> Cardholder {
    ProfileFile::load(&issue::fixtures::cardholders()).expect("profiles").cardholder(number).expect("profile").clone()
}

pub fn at() -> CardDateTime {
    CardDateTime::new(2026, 11, 24, 8, 30, 0).expect("valid")
}

pub fn new_card(keys: &MasterKeySet, balance: Fen) -> CitizenCard {
    let options = IssueOptions { initial_balance: balance, issued_at: at(), ..IssueOptions::default() };
    let image = issue::issue(&cardholder(0), keys, &options).expect("issue");
    let mut card = CitizenCard::with_seed(image, Storage::Memory, 7);
    card.power_on();
    card
}

pub fn send(card: &mut dyn SmartCard, command: &Command) -> Response {
    Response::parse(&card.transmit(&command.to_bytes())).expect("card answers a response APDU")
}

pub fn ok(card: &mut dyn SmartCard, command: &Command) -> Vec<u8> {
    let response = send(card, command);
    assert_eq!(response.status(), StatusWord::Ok, "{command:?}");
    response.data().to_vec()
}

/// Raw frame: length, header, code, fields.
pub fn frame(header: &[u8], code: &[u8; 2], fields: &[u8]) -> Vec<u8> {
    let mut out = ((header.len() + 2 + fields.len()) as u16).to_be_bytes().to_vec();
    out.extend_from_slice(header);
    out.extend_from_slice(code);
    out.extend_from_slice(fields);
    out
}

/// Reads one raw response (without its length); `None` if the server closed.
pub async fn read_raw(stream: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut length = [0u8; 2];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut length)).await.expect("answer in time").ok()?;
    let mut message = vec![0u8; usize::from(u16::from_be_bytes(length))];
    stream.read_exact(&mut message).await.ok()?;
    Some(message)
}

/// Sends a raw frame on a new connection and returns the raw answer.
pub async fn raw_exchange(address: SocketAddr, bytes: &[u8]) -> Option<Vec<u8>> {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(address).await.expect("connect");
    stream.write_all(bytes).await.expect("write");
    read_raw(&mut stream).await
}

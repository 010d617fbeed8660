//! The async client used by clearing and issuance: a pool of connections, each
//! pipelined (requests go out without waiting; answers come back in order and
//! are matched by the echoed header), a timeout on every request, typed
//! requests and responses, and typed errors carrying the HSM's error code.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use card_host::crypto::Key16;
use card_host::model::ApplicationSerial;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use crate::command::{
    BATCH_RECORDS_MAX, BatchRecord, LoadAuthorisation, LoadTac, MacAlgorithm, MacRequest, MaintenanceFunction,
    PurchaseTac, Request, Response, TacRecord, WrappedCardKeys, WrappedKey,
};
use crate::error::ErrorCode;
use crate::keys::{KeyAlgorithm, KeyType};
use crate::keystore::KeyInfo;
use crate::wire::{HEADER_LENGTH_DEFAULT, HEADER_LENGTH_MAX, MESSAGE_MAX, ResponseFrame, encode_frame};

/// The most requests waiting on one connection.
pub const IN_FLIGHT_MAX: usize = 4_096;
/// The most connections in a pool.
pub const CONNECTIONS_MAX: usize = 64;

#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `host:port` of the HSM.
    pub address: String,
    pub header_length: usize,
    /// Connections in the pool (requests are spread round-robin).
    pub connections: usize,
    pub timeout: Duration,
}

impl ClientConfig {
    pub fn new(address: impl Into<String>) -> Self {
        ClientConfig {
            address: address.into(),
            header_length: HEADER_LENGTH_DEFAULT,
            connections: 2,
            timeout: Duration::from_secs(5),
        }
    }
}

/// What can go wrong with a request.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The HSM answered with an error code.
    #[error("the HSM answered error {0}")]
    Hsm(ErrorCode),
    #[error("connecting to the HSM: {0}")]
    Connect(std::io::Error),
    #[error("the connection to the HSM broke: {0}")]
    Connection(String),
    #[error("no answer from the HSM within {0:?}")]
    Timeout(Duration),
    /// The answer did not fit the request (wrong header echoed, wrong response
    /// code, fields that do not parse).
    #[error("the HSM's answer does not fit the protocol: {0}")]
    Protocol(String),
    #[error("the request is too large for one message")]
    TooLarge,
    /// The request cannot be encoded (a bad label, a count out of its field).
    #[error("invalid request: {0}")]
    InvalidRequest(&'static str),
}

impl ClientError {
    /// The HSM's error code, if it answered one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Hsm(code) => Some(*code),
            _ => None,
        }
    }
}

struct Outgoing {
    frame: Vec<u8>,
    header: Vec<u8>,
    reply: oneshot::Sender<Result<Vec<u8>, ClientError>>,
}

struct Waiting {
    header: Vec<u8>,
    reply: oneshot::Sender<Result<Vec<u8>, ClientError>>,
}

/// A pool of pipelined connections to one HSM.
pub struct HsmClient {
    config: ClientConfig,
    slots: Vec<Mutex<Option<mpsc::Sender<Outgoing>>>>,
    next_slot: AtomicUsize,
    next_header: AtomicU64,
}

impl std::fmt::Debug for HsmClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HsmClient").field("config", &self.config).finish()
    }
}

/// The verdict on one TAC of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TacVerdict {
    Valid,
    Invalid,
    /// The record's fields were rejected (`15`) or another per-record code.
    Rejected(ErrorCode),
}

/// What `NC` tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostics {
    pub lmk_check: [u8; 8],
    pub firmware: String,
}

impl HsmClient {
    /// A client; connections open on first use (and again after a break).
    pub async fn connect(config: ClientConfig) -> Result<HsmClient, ClientError> {
        assert!((1..=CONNECTIONS_MAX).contains(&config.connections), "pool size out of range");
        assert!(config.header_length <= HEADER_LENGTH_MAX, "header length out of range");
        let client = HsmClient {
            slots: (0..config.connections).map(|_| Mutex::new(None)).collect(),
            config,
            next_slot: AtomicUsize::new(0),
            next_header: AtomicU64::new(0),
        };
        // Open the first connection now so a wrong address fails here.
        client.sender(0).await?;
        Ok(client)
    }

    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    async fn sender(&self, slot: usize) -> Result<mpsc::Sender<Outgoing>, ClientError> {
        if let Some(sender) = self.slots[slot].lock().unwrap_or_else(|p| p.into_inner()).as_ref()
            && !sender.is_closed()
        {
            return Ok(sender.clone());
        }
        let stream = TcpStream::connect(&self.config.address).await.map_err(ClientError::Connect)?;
        let _ = stream.set_nodelay(true);
        let sender = spawn_connection(stream, self.config.header_length);
        let mut guard = self.slots[slot].lock().unwrap_or_else(|p| p.into_inner());
        match guard.as_ref() {
            // Another task reconnected meanwhile: use its connection, ours closes when dropped.
            Some(existing) if !existing.is_closed() => Ok(existing.clone()),
            _ => {
                *guard = Some(sender.clone());
                Ok(sender)
            }
        }
    }

    fn header(&self) -> Vec<u8> {
        let length = self.config.header_length;
        if length == 0 {
            return Vec::new();
        }
        let modulus = 10u64.saturating_pow(length.min(19) as u32);
        let value = self.next_header.fetch_add(1, Ordering::Relaxed) % modulus;
        format!("{value:0length$}").into_bytes()
    }

    /// Sends a request without waiting for its answer: the answer arrives on
    /// the returned receiver. This is how the client pipelines.
    async fn send(&self, request: &Request) -> Result<oneshot::Receiver<Result<Vec<u8>, ClientError>>, ClientError> {
        request.check().map_err(ClientError::InvalidRequest)?;
        let fields = request.encode();
        let header = self.header();
        if header.len() + 2 + fields.len() > MESSAGE_MAX {
            return Err(ClientError::TooLarge);
        }
        let mut frame = Vec::with_capacity(fields.len() + header.len() + 4);
        encode_frame(&mut frame, &header, request.code(), None, &fields);
        let slot = self.next_slot.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        let (reply, receiver) = oneshot::channel();
        let mut outgoing = Outgoing { frame, header, reply };
        // One retry on a fresh connection if the pooled one has just died.
        for _ in 0..2 {
            let sender = self.sender(slot).await?;
            match sender.send(outgoing).await {
                Ok(()) => return Ok(receiver),
                Err(mpsc::error::SendError(back)) => {
                    outgoing = back;
                    *self.slots[slot].lock().unwrap_or_else(|p| p.into_inner()) = None;
                }
            }
        }
        Err(ClientError::Connection("could not reach the HSM".to_owned()))
    }

    async fn wait(&self, receiver: oneshot::Receiver<Result<Vec<u8>, ClientError>>) -> Result<Vec<u8>, ClientError> {
        match tokio::time::timeout(self.config.timeout, receiver).await {
            Err(_) => Err(ClientError::Timeout(self.config.timeout)),
            Ok(Err(_)) => Err(ClientError::Connection("the connection closed".to_owned())),
            Ok(Ok(result)) => result,
        }
    }

    fn decode(&self, request: &Request, message: &[u8]) -> Result<Response, ClientError> {
        let frame = ResponseFrame::parse(message, self.config.header_length)
            .map_err(|error| ClientError::Protocol(error.to_string()))?;
        if Some(frame.code) != request.code().response() {
            return Err(ClientError::Protocol(format!("response code {} to command {}", frame.code, request.code())));
        }
        if !frame.error.is_ok() {
            return Err(ClientError::Hsm(frame.error));
        }
        Response::parse(request, frame.body).map_err(|error| ClientError::Protocol(error.to_string()))
    }

    /// Sends any request and waits for its typed answer.
    pub async fn call(&self, request: &Request) -> Result<Response, ClientError> {
        let receiver = self.send(request).await?;
        let message = self.wait(receiver).await?;
        self.decode(request, &message)
    }

    /// Sends many requests pipelined, then collects their answers in order.
    pub async fn call_many(&self, requests: &[Request]) -> Vec<Result<Response, ClientError>> {
        let mut receivers = Vec::with_capacity(requests.len());
        for request in requests {
            receivers.push(self.send(request).await);
        }
        let mut results = Vec::with_capacity(requests.len());
        for (request, receiver) in requests.iter().zip(receivers) {
            results.push(match receiver {
                Ok(receiver) => match self.wait(receiver).await {
                    Ok(message) => self.decode(request, &message),
                    Err(error) => Err(error),
                },
                Err(error) => Err(error),
            });
        }
        results
    }

    /// `NC`: LMK check value and firmware version.
    pub async fn diagnostics(&self) -> Result<Diagnostics, ClientError> {
        match self.call(&Request::Diagnostics).await? {
            Response::Diagnostics { lmk_check, firmware } => Ok(Diagnostics { lmk_check, firmware }),
            other => Err(unexpected(other)),
        }
    }

    /// `B2`.
    pub async fn echo(&self, data: &[u8]) -> Result<Vec<u8>, ClientError> {
        match self.call(&Request::Echo { data: data.to_vec() }).await? {
            Response::Echo { data } => Ok(data),
            other => Err(unexpected(other)),
        }
    }

    /// `N0`: 1 to 255 random bytes.
    pub async fn random(&self, length: usize) -> Result<Vec<u8>, ClientError> {
        match self.call(&Request::Random { length }).await? {
            Response::Random { bytes } => Ok(bytes),
            other => Err(unexpected(other)),
        }
    }

    /// `A0`: a new key in the store; its check value, and the key under
    /// `export_under` if given.
    pub async fn generate_key(
        &self,
        label: &str,
        key_type: KeyType,
        algorithm: KeyAlgorithm,
        export_under: Option<&str>,
    ) -> Result<([u8; 3], Option<[u8; 16]>), ClientError> {
        let request = Request::GenerateKey {
            key_type,
            algorithm,
            version: 1,
            label: label.to_owned(),
            export_under: export_under.map(str::to_owned),
        };
        match self.call(&request).await? {
            Response::GeneratedKey { check_value, exported } => Ok((check_value, exported)),
            other => Err(unexpected(other)),
        }
    }

    /// `A6`: imports a key encrypted under a transport key; answers its check value.
    pub async fn import_key(
        &self,
        label: &str,
        key_type: KeyType,
        algorithm: KeyAlgorithm,
        transport: &str,
        key: WrappedKey,
    ) -> Result<[u8; 3], ClientError> {
        let request = Request::ImportKey {
            key_type,
            algorithm,
            version: 1,
            label: label.to_owned(),
            transport: transport.to_owned(),
            key,
        };
        check_value(self.call(&request).await?)
    }

    /// `ZS`: imports a key in clear (test mode only).
    pub async fn import_clear_key(
        &self,
        label: &str,
        key_type: KeyType,
        algorithm: KeyAlgorithm,
        key: &Key16,
    ) -> Result<[u8; 3], ClientError> {
        let request =
            Request::ImportClearKey { key_type, algorithm, version: 1, label: label.to_owned(), key: key.clone() };
        check_value(self.call(&request).await?)
    }

    /// `A8`: a key under a transport key.
    pub async fn export_key(&self, label: &str, transport: &str) -> Result<WrappedKey, ClientError> {
        match self.call(&Request::ExportKey { label: label.to_owned(), transport: transport.to_owned() }).await? {
            Response::ExportedKey { key } => Ok(key),
            other => Err(unexpected(other)),
        }
    }

    /// `BU`.
    pub async fn key_check_value(&self, label: &str) -> Result<[u8; 3], ClientError> {
        check_value(self.call(&Request::KeyCheckValue { label: label.to_owned() }).await?)
    }

    /// `ZU`.
    pub async fn list_keys(&self) -> Result<Vec<KeyInfo>, ClientError> {
        match self.call(&Request::ListKeys).await? {
            Response::KeyList { keys } => Ok(keys),
            other => Err(unexpected(other)),
        }
    }

    /// `M6`: a 4-byte MAC (retail MAC for 3DES keys, SM4 CBC-MAC for SM4 keys).
    pub async fn generate_mac(
        &self,
        label: &str,
        algorithm: MacAlgorithm,
        iv: &[u8],
        message: &[u8],
    ) -> Result<[u8; 4], ClientError> {
        let request = Request::GenerateMac(MacRequest {
            algorithm,
            label: label.to_owned(),
            iv: iv.to_vec(),
            message: message.to_vec(),
        });
        match self.call(&request).await? {
            Response::Mac { mac } => Ok(mac),
            other => Err(unexpected(other)),
        }
    }

    /// `M8`: `Ok(false)` when the MAC is wrong.
    pub async fn verify_mac(
        &self,
        label: &str,
        algorithm: MacAlgorithm,
        iv: &[u8],
        message: &[u8],
        mac: [u8; 4],
    ) -> Result<bool, ClientError> {
        let request = MacRequest { algorithm, label: label.to_owned(), iv: iv.to_vec(), message: message.to_vec() };
        verdict(self.call(&Request::VerifyMac { request, mac }).await)
    }

    /// `ZA`: a card's application keys, under a transport key (issuance).
    pub async fn derive_card_keys(
        &self,
        key_set: &str,
        serial: ApplicationSerial,
        transport: &str,
    ) -> Result<WrappedCardKeys, ClientError> {
        let request = Request::DeriveCardKeys { key_set: key_set.to_owned(), serial, transport: transport.to_owned() };
        match self.call(&request).await? {
            Response::CardKeys(keys) => Ok(keys),
            other => Err(unexpected(other)),
        }
    }

    /// `ZC`: online top-up. Checks the card's MAC1 and answers MAC2 for CREDIT
    /// FOR LOAD; a wrong MAC1 is `Err(ClientError::Hsm(ErrorCode::VerificationFailure))`.
    pub async fn authorise_load(&self, key_set: &str, load: &LoadAuthorisation) -> Result<[u8; 4], ClientError> {
        match self.call(&Request::AuthoriseLoad { key_set: key_set.to_owned(), load: load.clone() }).await? {
            Response::LoadAuthorised { mac2 } => Ok(mac2),
            other => Err(unexpected(other)),
        }
    }

    /// `ZE`: `Ok(false)` when the TAC is wrong.
    pub async fn verify_purchase_tac(&self, key_set: &str, record: &PurchaseTac) -> Result<bool, ClientError> {
        verdict(self.call(&Request::VerifyPurchaseTac { key_set: key_set.to_owned(), record: record.clone() }).await)
    }

    /// `ZG`: `Ok(false)` when the TAC is wrong.
    pub async fn verify_load_tac(&self, key_set: &str, record: &LoadTac) -> Result<bool, ClientError> {
        verdict(self.call(&Request::VerifyLoadTac { key_set: key_set.to_owned(), record: record.clone() }).await)
    }

    /// `ZI`: verifies any number of TACs; they go as batches of up to
    /// [`BATCH_RECORDS_MAX`] records, pipelined over the pool. One verdict per
    /// record, in order.
    pub async fn verify_tacs(&self, key_set: &str, records: &[TacRecord]) -> Result<Vec<TacVerdict>, ClientError> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let requests: Vec<Request> = records
            .chunks(BATCH_RECORDS_MAX)
            .map(|chunk| Request::VerifyTacBatch {
                key_set: key_set.to_owned(),
                records: chunk.iter().cloned().map(BatchRecord::Tac).collect(),
            })
            .collect();
        let mut verdicts = Vec::with_capacity(records.len());
        for response in self.call_many(&requests).await {
            match response? {
                Response::TacBatch { results } => verdicts.extend(results.into_iter().map(|code| match code {
                    ErrorCode::Ok => TacVerdict::Valid,
                    ErrorCode::VerificationFailure => TacVerdict::Invalid,
                    other => TacVerdict::Rejected(other),
                })),
                other => return Err(unexpected(other)),
            }
        }
        Ok(verdicts)
    }

    /// `ZK`: the MAC for a card maintenance command over the card's challenge.
    pub async fn maintenance_mac(
        &self,
        key_set: &str,
        serial: ApplicationSerial,
        challenge: [u8; 4],
        function: MaintenanceFunction,
    ) -> Result<[u8; 4], ClientError> {
        let request = Request::MaintenanceMac { key_set: key_set.to_owned(), serial, challenge, function };
        match self.call(&request).await? {
            Response::Mac { mac } => Ok(mac),
            other => Err(unexpected(other)),
        }
    }

    /// `ZM`: signs a settlement file (its SHA-256, see [`settlement_digest`]).
    pub async fn sign_settlement(&self, label: &str, file: &[u8]) -> Result<[u8; 64], ClientError> {
        match self.call(&Request::SignSettlement { label: label.to_owned(), digest: settlement_digest(file) }).await? {
            Response::Signature { signature } => Ok(signature),
            other => Err(unexpected(other)),
        }
    }

    /// `ZO`: `Ok(false)` when the signature does not match the file.
    pub async fn verify_settlement(&self, label: &str, file: &[u8], signature: &[u8; 64]) -> Result<bool, ClientError> {
        let request = Request::VerifySettlement {
            label: label.to_owned(),
            digest: settlement_digest(file),
            signature: *signature,
        };
        verdict(self.call(&request).await)
    }

    /// `ZQ`: the Ed25519 public key, for whoever receives the settlement files.
    pub async fn settlement_public_key(&self, label: &str) -> Result<[u8; 32], ClientError> {
        match self.call(&Request::PublicKey { label: label.to_owned() }).await? {
            Response::PublicKey { key } => Ok(key),
            other => Err(unexpected(other)),
        }
    }
}

/// The SHA-256 of a settlement file: what `ZM` signs.
pub fn settlement_digest(file: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, file);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

fn unexpected(response: Response) -> ClientError {
    ClientError::Protocol(format!("unexpected response {response:?}"))
}

fn check_value(response: Response) -> Result<[u8; 3], ClientError> {
    match response {
        Response::CheckValue { check_value } => Ok(check_value),
        other => Err(unexpected(other)),
    }
}

fn verdict(result: Result<Response, ClientError>) -> Result<bool, ClientError> {
    match result {
        Ok(Response::Verified) => Ok(true),
        Ok(other) => Err(unexpected(other)),
        Err(ClientError::Hsm(ErrorCode::VerificationFailure)) => Ok(false),
        Err(error) => Err(error),
    }
}

/// Starts the writer and reader tasks of one connection; requests go in
/// through the returned sender.
fn spawn_connection(stream: TcpStream, header_length: usize) -> mpsc::Sender<Outgoing> {
    let (sender, mut requests) = mpsc::channel::<Outgoing>(IN_FLIGHT_MAX);
    let (waiting_sender, mut waiting_receiver) = mpsc::channel::<Waiting>(IN_FLIGHT_MAX);
    let (read_half, write_half) = stream.into_split();
    tokio::spawn(async move {
        let mut writer = BufWriter::with_capacity(128 * 1024, write_half);
        loop {
            let first = tokio::select! {
                received = requests.recv() => match received {
                    Some(first) => first,
                    None => return,
                },
                // The reader has given up on this connection: stop taking requests.
                () = waiting_sender.closed() => return,
            };
            let mut next = Some(first);
            while let Some(outgoing) = next.take() {
                if waiting_sender.send(Waiting { header: outgoing.header, reply: outgoing.reply }).await.is_err() {
                    return;
                }
                if writer.write_all(&outgoing.frame).await.is_err() {
                    return;
                }
                next = requests.try_recv().ok();
            }
            if writer.flush().await.is_err() {
                return;
            }
        }
    });
    tokio::spawn(async move {
        let mut reader = BufReader::with_capacity(128 * 1024, read_half);
        let mut pending: VecDeque<Waiting> = VecDeque::new();
        let failure = loop {
            let mut length = [0u8; 2];
            if let Err(error) = reader.read_exact(&mut length).await {
                break format!("read: {error}");
            }
            let mut message = vec![0u8; usize::from(u16::from_be_bytes(length))];
            if let Err(error) = reader.read_exact(&mut message).await {
                break format!("read: {error}");
            }
            let waiting = match pending.pop_front() {
                Some(waiting) => waiting,
                None => match waiting_receiver.recv().await {
                    Some(waiting) => waiting,
                    None => break "closed".to_owned(),
                },
            };
            if message.len() < header_length || message[..header_length] != waiting.header[..] {
                let _ = waiting.reply.send(Err(ClientError::Protocol("the answer echoes another header".to_owned())));
                break "header mismatch".to_owned();
            }
            let _ = waiting.reply.send(Ok(message));
            while let Ok(waiting) = waiting_receiver.try_recv() {
                pending.push_back(waiting);
            }
        };
        // Everything still waiting on this connection fails with it.
        waiting_receiver.close();
        while let Ok(waiting) = waiting_receiver.try_recv() {
            pending.push_back(waiting);
        }
        for waiting in pending {
            let _ = waiting.reply.send(Err(ClientError::Connection(failure.clone())));
        }
    });
    sender
}

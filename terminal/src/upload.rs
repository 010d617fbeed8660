//! Talking to clearing over HTTP (`docs/clearing.md`, "The HTTP API"): batch
//! upload of the journal, blacklist download, and the online top-up calls the
//! kiosk makes. Every request is signed with the terminal's Ed25519 device key
//! (`ring`) over `METHOD SP PATH-AND-QUERY LF BODY`, sent as `X-Terminal-Id`
//! and `X-Signature` (128 hex digits).
//!
//! The batch JSON is written by serde structs here that mirror clearing's batch
//! format field by field; the terminal does not link the clearing crate (the
//! system test `tests/tests/terminal_clearing.rs` proves the two agree).
//!
//! Upload ([`upload_pending`]): the oldest completed journal rows, and the grey
//! records (kind `unresolved`) of purchase intents flagged for clearing, are
//! **sealed** into a batch (the batch id is the journal's identity with the
//! first and last row ids, [`batch_id`], written to the rows in one
//! transaction) before the first attempt. A sealed batch is sent, with exactly the same records, until clearing
//! answers 201 (stored) or 200 (stored before: `duplicate`); only then are its
//! rows marked uploaded. So a batch whose acknowledgement was lost is sent
//! again under the same id and clearing stores it once. Connection failures and
//! 5xx answers are retried with capped exponential backoff; after
//! [`RetryPolicy::attempts`] the rows stay in the journal for the next round,
//! however long clearing is away. A 409 (clearing holds other records under the
//! sealed batch's id) is [`UploadError::BatchConflict`], logged as an error
//! naming the batch: the batch and every later one wait for an operator, whose
//! `terminal upload --reseal-conflicting` ([`upload_pending_resealing_conflicts`])
//! re-seals its rows under a new id and sends them.
//!
//! The client is blocking (`ureq`, plain HTTP/1.1, no TLS stack: clearing is
//! reached on a private network or through a local TLS proxy).

use std::path::Path;
use std::time::Duration;

use card_host::{ApplicationSerial, TerminalNumber};
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde::{Deserialize, Serialize};

use crate::blacklist::Blacklist;
use crate::journal::{Completed, Entry, Journal, JournalError, JournalIdentity, UploadRecord};

/// Clearing's batch format name.
pub const BATCH_FORMAT: &str = "clearing-batch/1";
/// The longest batch id clearing takes (its `batch::BATCH_ID_LENGTH_MAX`), of
/// the characters `A-Z a-z 0-9 . _ -`.
pub const BATCH_ID_LENGTH_MAX: usize = 64;
/// Decimal digits of the largest row id (`i64::MAX`).
const ROW_ID_DIGITS_MAX: usize = 19;
const _: () = assert!(
    JournalIdentity::HEX_DIGITS + 2 * (1 + ROW_ID_DIGITS_MAX) <= BATCH_ID_LENGTH_MAX,
    "every batch id fits clearing's limit"
);
/// Hex digits of a re-sealed batch id's random suffix ([`resealed_batch_id`])
/// that always fit clearing's limit, whatever the row ids.
pub const RESEAL_SUFFIX_DIGITS_MIN: usize =
    BATCH_ID_LENGTH_MAX - (JournalIdentity::HEX_DIGITS + 2 * (1 + ROW_ID_DIGITS_MAX)) - 1;
const _: () = assert!(RESEAL_SUFFIX_DIGITS_MIN >= 7, "at least 28 random bits in a re-sealed id");
/// Re-seals of conflicting batches one upload round makes at most.
pub const RESEALS_PER_ROUND_MAX: usize = 10;
/// Records one batch holds at most (clearing takes up to 10,000).
pub const BATCH_RECORDS_MAX: u32 = 1_000;
/// Batches one [`upload_pending`] round sends at most.
pub const BATCHES_PER_ROUND_MAX: u32 = 100;
/// Attempts of one request before the round gives up (the rows stay).
pub const ATTEMPTS_MAX: u32 = 5;
/// The first wait before a retry; it doubles each time up to [`BACKOFF_MAX`].
pub const BACKOFF_INITIAL: Duration = Duration::from_millis(500);
/// The longest wait between two attempts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How long one request may take in all (connect, send, answer).
pub const REQUEST_TIMEOUT_MAX: Duration = Duration::from_secs(30);
/// The largest answer read from clearing.
pub const ANSWER_BYTES_MAX: u64 = 8 * 1024 * 1024;
/// Blacklist pages one download reads at most.
pub const BLACKLIST_PAGES_MAX: u32 = 1_000;
/// The largest device key file read.
const DEVICE_KEY_FILE_BYTES_MAX: u64 = 1024;

/// What went wrong talking to clearing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UploadError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// No answer after every attempt (connection refused, timeout, 5xx).
    #[error("clearing unavailable after {attempts} attempts: {last}")]
    Unavailable { attempts: u32, last: String },
    /// Clearing answered with a refusal that retrying will not change.
    #[error("clearing refused {what}: HTTP {status}: {body}")]
    Refused { what: &'static str, status: u16, body: String },
    /// Clearing holds other records under this sealed batch's id (HTTP 409).
    /// The batch is sent first in every round, so no later batch goes either
    /// until an operator acts.
    #[error(
        "clearing holds other records under batch {batch} (HTTP 409): it and every later batch wait for an operator \
         (terminal upload --reseal-conflicting re-seals it under a new id): {body}"
    )]
    BatchConflict { batch: String, body: String },
    /// Clearing's answer does not parse or does not match the request.
    #[error("clearing's answer to {what}: {detail}")]
    BadAnswer { what: &'static str, detail: String },
    #[error("device key {path}: {detail}")]
    DeviceKey { path: String, detail: String },
}

impl UploadError {
    /// A refusal with this HTTP status.
    pub fn status(&self) -> Option<u16> {
        match self {
            UploadError::Refused { status, .. } => Some(*status),
            UploadError::BatchConflict { .. } => Some(409),
            _ => None,
        }
    }
}

/// The terminal's Ed25519 device key. The file holds the 32-byte seed as 64 hex
/// digits (the fixture terminals' keys are published TEST seeds).
pub struct DeviceKey(Ed25519KeyPair);

impl std::fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceKey(public {})", hex::encode(self.0.public_key().as_ref()))
    }
}

impl DeviceKey {
    pub fn from_seed(seed: &[u8; 32]) -> Result<DeviceKey, UploadError> {
        Ed25519KeyPair::from_seed_unchecked(seed)
            .map(DeviceKey)
            .map_err(|_| UploadError::DeviceKey { path: String::new(), detail: "not an Ed25519 seed".into() })
    }

    pub fn load(path: &Path) -> Result<DeviceKey, UploadError> {
        let name = path.display().to_string();
        let failed = |detail: String| UploadError::DeviceKey { path: name.clone(), detail };
        let size = std::fs::metadata(path).map_err(|error| failed(error.to_string()))?.len();
        if size > DEVICE_KEY_FILE_BYTES_MAX {
            return Err(failed("file too large".into()));
        }
        let text = zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(|error| failed(error.to_string()))?);
        let mut seed = zeroize::Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(text.trim(), &mut *seed).map_err(|_| failed("not 64 hex digits".into()))?;
        DeviceKey::from_seed(&seed).map_err(|_| failed("not an Ed25519 seed".into()))
    }

    /// The public key, as clearing's terminal registry holds it (hex).
    pub fn public_key_hex(&self) -> String {
        hex::encode(self.0.public_key().as_ref())
    }

    /// The signature clearing checks: over `METHOD SP PATH-AND-QUERY LF BODY`.
    pub fn sign(&self, method: &str, path_and_query: &str, body: &[u8]) -> String {
        let mut message = format!("{method} {path_and_query}\n").into_bytes();
        message.extend_from_slice(body);
        hex::encode(self.0.sign(&message).as_ref())
    }
}

/// How often and how patiently a request is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all (at least 1, at most [`ATTEMPTS_MAX`]).
    pub attempts: u32,
    pub backoff_initial: Duration,
    /// Capped at [`BACKOFF_MAX`].
    pub backoff_max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { attempts: ATTEMPTS_MAX, backoff_initial: BACKOFF_INITIAL, backoff_max: BACKOFF_MAX }
    }
}

impl RetryPolicy {
    /// The wait after failed attempt `n` (1-based): initial × 2ⁿ⁻¹, capped.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let cap = self.backoff_max.min(BACKOFF_MAX);
        let factor = 1u32.checked_shl(attempt.saturating_sub(1)).unwrap_or(u32::MAX);
        self.backoff_initial.checked_mul(factor).unwrap_or(cap).min(cap)
    }
}

/// One record of a batch, exactly as clearing's batch format names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchRecord {
    /// `purchase`, `load`, or `unresolved` (a grey record).
    pub kind: String,
    pub card_serial: String,
    pub card_type: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offline_counter: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub online_counter: Option<u16>,
    pub balance_before_fen: u32,
    pub amount_fen: u32,
    /// Two hex digits.
    pub transaction_type: String,
    pub terminal_number: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub terminal_serial: Option<u32>,
    /// `YYYYMMDDhhmmss`.
    pub date_time: String,
    /// Eight hex digits; none in a grey record.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tac: Option<String>,
}

impl BatchRecord {
    /// A completed debit as a `purchase` record.
    pub fn purchase(row: &Completed) -> BatchRecord {
        BatchRecord { tac: Some(hex::encode_upper(row.tac)), ..BatchRecord::debit("purchase", &row.entry) }
    }

    /// A purchase intent the card has not settled, flagged for clearing, as an
    /// `unresolved` record (a grey record, 灰记录): the purchase record's fields
    /// but the TAC, the counter being the one INITIALIZE FOR PURCHASE answered.
    pub fn unresolved(entry: &Entry) -> BatchRecord {
        BatchRecord::debit("unresolved", entry)
    }

    /// The record clearing takes for this journal record.
    pub fn of(record: &UploadRecord) -> BatchRecord {
        match record {
            UploadRecord::Completed(completed) => BatchRecord::purchase(completed),
            UploadRecord::Unresolved { entry, .. } => BatchRecord::unresolved(entry),
        }
    }

    fn debit(kind: &str, entry: &Entry) -> BatchRecord {
        BatchRecord {
            kind: kind.into(),
            card_serial: entry.card.to_hex(),
            card_type: entry.card_type,
            offline_counter: Some(entry.offline_counter),
            online_counter: None,
            balance_before_fen: entry.balance_before.0,
            amount_fen: entry.amount.0,
            transaction_type: format!("{:02X}", entry.kind.code()),
            terminal_number: entry.terminal.to_string(),
            terminal_serial: Some(entry.terminal_serial),
            date_time: hex::encode(entry.at.to_bytes()),
            tac: None,
        }
    }
}

/// A batch document (`clearing-batch/1`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchDocument {
    pub format: String,
    pub terminal_id: String,
    pub batch_id: String,
    pub records: Vec<BatchRecord>,
}

impl BatchDocument {
    pub fn new(terminal: &TerminalNumber, batch_id: String, records: &[UploadRecord]) -> BatchDocument {
        BatchDocument {
            format: BATCH_FORMAT.into(),
            terminal_id: terminal.to_string(),
            batch_id,
            records: records.iter().map(BatchRecord::of).collect(),
        }
    }
}

/// The batch id of the rows `first..=last` of the journal `journal`:
/// `IDENTITY-FIRST-LAST`, at most 56 characters. Clearing keys batches by
/// terminal and batch id (the document names the terminal), so the id must be
/// unique per terminal: a row is sealed into one batch only, and a reinstalled
/// terminal's new journal file has another identity. The same on every retry.
pub fn batch_id(journal: &JournalIdentity, first: i64, last: i64) -> String {
    let id = format!("{journal}-{first}-{last}");
    debug_assert!(id.len() <= BATCH_ID_LENGTH_MAX, "checked at compile time for any row ids");
    id
}

/// The id the rows `first..=last` are re-sealed under when clearing refused
/// their batch with 409: [`batch_id`] and a fresh random suffix,
/// `IDENTITY-FIRST-LAST.RANDOM`, RANDOM being as many hex digits of `fresh` as
/// fit clearing's 64 characters (16 while both row ids have at most 14 digits, never fewer than
/// [`RESEAL_SUFFIX_DIGITS_MIN`]). Never an id [`batch_id`] makes (those have
/// no dot).
pub fn resealed_batch_id(journal: &JournalIdentity, first: i64, last: i64, fresh: u64) -> String {
    let base = batch_id(journal, first, last);
    let digits = (BATCH_ID_LENGTH_MAX - base.len() - 1).min(16);
    let random = format!("{fresh:016x}");
    let id = format!("{base}.{}", &random[..digits]);
    debug_assert!(id.len() <= BATCH_ID_LENGTH_MAX);
    id
}

/// A sealed batch clearing refused with 409, re-sealed under a new id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resealed {
    /// The id clearing holds other records under.
    pub from: String,
    pub to: String,
    /// Records moved (the same rows, none dropped or added).
    pub records: u64,
}

/// Clearing's answer to an upload (its `IngestReport`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct IngestReport {
    pub terminal_id: String,
    pub batch_id: String,
    pub duplicate: bool,
    pub record_count: u64,
    pub accepted_count: u64,
    pub rejected_count: u64,
    /// The records clearing refused and quarantined (index, field, message).
    pub rejected: Vec<serde_json::Value>,
}

/// One blacklist change from clearing.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct BlacklistChange {
    pub version: i64,
    pub card_serial: String,
    /// `add` or `remove`.
    pub action: String,
    /// The card date-time the change takes effect from.
    pub listed_at: String,
}

/// The top-up authorisation request (`POST /v1/topups/authorise`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TopupRequest {
    pub card_serial: String,
    pub key_index: u8,
    pub card_random: String,
    pub online_counter: u16,
    pub balance_before_fen: u32,
    pub amount_fen: u32,
    pub transaction_type: String,
    pub mac1: String,
}

/// Clearing's authorisation: MAC2 for CREDIT FOR LOAD with this host date-time.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct TopupAuthorised {
    pub mac2: String,
    pub date_time: String,
}

/// The top-up confirmation (`POST /v1/topups/confirm`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TopupConfirm {
    pub card_serial: String,
    pub online_counter: u16,
    pub tac: String,
}

/// The void of a top-up whose CREDIT FOR LOAD never happened on the card (`POST /v1/topups/void`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TopupVoid {
    pub card_serial: String,
    pub online_counter: u16,
    /// The authorisation's host date-time (14 hex digits, as authorise answered).
    pub date_time: String,
}

/// Clearing's answer to a void: `voided_now` false when it was voided before.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct TopupVoided {
    pub state: String,
    pub voided_now: bool,
}

/// Clearing at a base URL (`http://host:port`), as this terminal.
pub struct ClearingClient {
    base: String,
    terminal: TerminalNumber,
    key: DeviceKey,
    agent: ureq::Agent,
    retry: RetryPolicy,
}

impl std::fmt::Debug for ClearingClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClearingClient").field("base", &self.base).field("terminal", &self.terminal).finish()
    }
}

/// How one attempt ended.
enum Attempt {
    Answer(u16, Vec<u8>),
    /// Worth trying again: no answer, or a 5xx.
    Again(String),
}

impl ClearingClient {
    pub fn new(base: &str, terminal: TerminalNumber, key: DeviceKey, retry: RetryPolicy) -> ClearingClient {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(REQUEST_TIMEOUT_MAX))
            .build()
            .into();
        let retry = RetryPolicy { attempts: retry.attempts.clamp(1, ATTEMPTS_MAX), ..retry };
        ClearingClient { base: base.trim_end_matches('/').to_owned(), terminal, key, agent, retry }
    }

    pub fn terminal(&self) -> TerminalNumber {
        self.terminal
    }

    fn attempt(&self, method: &str, path: &str, body: &[u8]) -> Attempt {
        let url = format!("{}{path}", self.base);
        let signature = self.key.sign(method, path, body);
        let terminal = self.terminal.to_string();
        let result = match method {
            "GET" => self.agent.get(&url).header("X-Terminal-Id", &terminal).header("X-Signature", &signature).call(),
            _ => self
                .agent
                .post(&url)
                .header("X-Terminal-Id", &terminal)
                .header("X-Signature", &signature)
                .header("Content-Type", "application/json")
                .send(body),
        };
        match result {
            Ok(mut response) => {
                let status = response.status().as_u16();
                match response.body_mut().with_config().limit(ANSWER_BYTES_MAX).read_to_vec() {
                    Ok(_) if status >= 500 => Attempt::Again(format!("HTTP {status}")),
                    Ok(bytes) => Attempt::Answer(status, bytes),
                    Err(error) => Attempt::Again(format!("reading the answer: {error}")),
                }
            }
            Err(error) => Attempt::Again(error.to_string()),
        }
    }

    /// Sends a request, retrying with backoff; (status, body) of the first
    /// answer below 500.
    fn request(&self, method: &str, path: &str, body: &[u8]) -> Result<(u16, Vec<u8>), UploadError> {
        let mut last = String::new();
        for attempt in 1..=self.retry.attempts {
            match self.attempt(method, path, body) {
                Attempt::Answer(status, bytes) => return Ok((status, bytes)),
                Attempt::Again(why) => {
                    tracing::warn!(path, attempt, error = %why, "clearing did not answer");
                    last = why;
                }
            }
            if attempt < self.retry.attempts {
                std::thread::sleep(self.retry.backoff(attempt));
            }
        }
        Err(UploadError::Unavailable { attempts: self.retry.attempts, last })
    }

    fn json<T: serde::de::DeserializeOwned>(
        &self,
        what: &'static str,
        method: &str,
        path: &str,
        body: &[u8],
        ok: &[u16],
    ) -> Result<T, UploadError> {
        let (status, bytes) = self.request(method, path, body)?;
        if !ok.contains(&status) {
            let body = String::from_utf8_lossy(&bytes).chars().take(512).collect();
            return Err(UploadError::Refused { what, status, body });
        }
        serde_json::from_slice(&bytes).map_err(|error| UploadError::BadAnswer { what, detail: error.to_string() })
    }

    /// Uploads one batch; clearing's report once it has stored it (201) or had
    /// stored it before (200, `duplicate`).
    pub fn upload_batch(&self, document: &BatchDocument) -> Result<IngestReport, UploadError> {
        let body = serde_json::to_vec(document).map_err(|error| UploadError::BadAnswer {
            what: "batch upload",
            detail: format!("serialising the batch: {error}"),
        })?;
        let report: IngestReport = self.json("batch upload", "POST", "/v1/batches", &body, &[200, 201])?;
        if report.batch_id != document.batch_id || report.terminal_id != document.terminal_id {
            return Err(UploadError::BadAnswer {
                what: "batch upload",
                detail: format!("acknowledged batch {} of {}", report.batch_id, report.terminal_id),
            });
        }
        Ok(report)
    }

    /// The blacklist changes after `since`, all pages.
    pub fn blacklist_since(&self, since: u64) -> Result<Vec<BlacklistChange>, UploadError> {
        let mut changes: Vec<BlacklistChange> = Vec::new();
        let mut since = since;
        for _ in 0..BLACKLIST_PAGES_MAX {
            let page: Vec<BlacklistChange> =
                self.json("blacklist download", "GET", &format!("/v1/blacklist?since={since}"), b"", &[200])?;
            let Some(last) = page.last() else { break };
            let next = u64::try_from(last.version).ok().filter(|next| *next > since).ok_or_else(|| {
                UploadError::BadAnswer { what: "blacklist download", detail: "versions do not increase".into() }
            })?;
            since = next;
            changes.extend(page);
        }
        Ok(changes)
    }

    /// Asks clearing to authorise a top-up: MAC2 and the host date-time.
    pub fn authorise_topup(&self, request: &TopupRequest) -> Result<TopupAuthorised, UploadError> {
        let body = serde_json::to_vec(request)
            .map_err(|error| UploadError::BadAnswer { what: "top-up authorisation", detail: error.to_string() })?;
        self.json("top-up authorisation", "POST", "/v1/topups/authorise", &body, &[200])
    }

    /// Confirms a top-up with the card's load TAC.
    pub fn confirm_topup(&self, confirm: &TopupConfirm) -> Result<serde_json::Value, UploadError> {
        let body = serde_json::to_vec(confirm)
            .map_err(|error| UploadError::BadAnswer { what: "top-up confirmation", detail: error.to_string() })?;
        self.json("top-up confirmation", "POST", "/v1/topups/confirm", &body, &[200])
    }

    /// Voids a top-up the card never got (GET TRANSACTION PROVE found no such
    /// load), so its counter is free again; idempotent. Refused (409) once confirmed.
    pub fn void_load(&self, void: &TopupVoid) -> Result<TopupVoided, UploadError> {
        let body = serde_json::to_vec(void)
            .map_err(|error| UploadError::BadAnswer { what: "top-up void", detail: error.to_string() })?;
        self.json("top-up void", "POST", "/v1/topups/void", &body, &[200])
    }
}

/// What one upload round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UploadSummary {
    /// Batches clearing acknowledged this round.
    pub batches: u64,
    /// Of them, batches clearing had stored before (an answer lost earlier).
    pub duplicates: u64,
    /// Records clearing took (completed debits and grey records).
    pub records: u64,
    /// Of them, grey records (flagged purchase intents).
    pub unresolved: u64,
    /// Records clearing refused as malformed (it keeps them in its quarantine).
    pub rejected: u64,
}

/// Uploads what the journal holds for clearing: first a batch sealed earlier
/// and not acknowledged, then new batches of at most `batch_records` records
/// (completed debits and the grey records of flagged purchase intents)
/// (≤ [`BATCH_RECORDS_MAX`]), until none is left (or [`BATCHES_PER_ROUND_MAX`]).
/// Records are marked uploaded only after clearing's acknowledgement; on an
/// error the unacknowledged batch stays sealed for the next round. A batch
/// clearing refuses with 409 stops the round ([`UploadError::BatchConflict`]).
pub fn upload_pending(
    journal: &Journal,
    client: &ClearingClient,
    batch_records: u32,
) -> Result<UploadSummary, UploadError> {
    upload_batches(journal, client, batch_records, None)
}

/// [`upload_pending`] for an operator who has seen a batch wedged by a 409
/// (`terminal upload --reseal-conflicting`): a sealed batch clearing refuses
/// because it holds other records under its id is re-sealed under a new id
/// ([`resealed_batch_id`], [`Journal::reseal_batch`]: the same rows, none
/// dropped or added) and sent again, and the round goes on; at most
/// [`RESEALS_PER_ROUND_MAX`] times. Each re-seal is pushed to `resealed` when
/// it is made, so it is told even if the round then fails.
pub fn upload_pending_resealing_conflicts(
    journal: &Journal,
    client: &ClearingClient,
    batch_records: u32,
    resealed: &mut Vec<Resealed>,
) -> Result<UploadSummary, UploadError> {
    upload_batches(journal, client, batch_records, Some(resealed))
}

fn upload_batches(
    journal: &Journal,
    client: &ClearingClient,
    batch_records: u32,
    mut resealed: Option<&mut Vec<Resealed>>,
) -> Result<UploadSummary, UploadError> {
    let limit = batch_records.clamp(1, BATCH_RECORDS_MAX);
    let terminal = client.terminal();
    let mut summary = UploadSummary::default();
    for _ in 0..BATCHES_PER_ROUND_MAX {
        let sealed = match journal.sealed_batch()? {
            Some(sealed) => Some(sealed),
            None => journal.seal_batch(&terminal, limit, |first, last| batch_id(&journal.identity(), first, last))?,
        };
        let Some((id, records)) = sealed else { break };
        if let Some(other) = records.iter().find(|record| record.entry().terminal != terminal) {
            return Err(UploadError::BadAnswer {
                what: "batch upload",
                detail: format!("sealed batch {id} holds a row of terminal {}", other.entry().terminal),
            });
        }
        let document = BatchDocument::new(&terminal, id, &records);
        let report = match client.upload_batch(&document) {
            Err(UploadError::Refused { status: 409, body, .. }) => {
                if let Some(resealed) = resealed.as_deref_mut().filter(|done| done.len() < RESEALS_PER_ROUND_MAX) {
                    let moved = journal
                        .reseal_batch(&document.batch_id, |first, last, fresh| {
                            resealed_batch_id(&journal.identity(), first, last, fresh)
                        })?
                        .ok_or_else(|| UploadError::BadAnswer {
                            what: "batch upload",
                            detail: format!("batch {} is no longer sealed in the journal", document.batch_id),
                        })?;
                    let (to, records) = moved;
                    tracing::warn!(
                        from = %document.batch_id,
                        to = %to,
                        records,
                        answer = %body,
                        "clearing holds other records under this sealed batch's id (HTTP 409): its rows re-sealed under a new id"
                    );
                    resealed.push(Resealed { from: document.batch_id, to, records });
                    continue;
                }
                tracing::error!(
                    batch = %document.batch_id,
                    records = records.len(),
                    answer = %body,
                    "clearing holds other records under this sealed batch's id (HTTP 409): this batch and every later one wait until an operator acts"
                );
                return Err(UploadError::BatchConflict { batch: document.batch_id, body });
            }
            answer => answer?,
        };
        let taken = journal.mark_batch_uploaded(&document.batch_id)?;
        let unresolved = records.iter().filter(|record| matches!(record, UploadRecord::Unresolved { .. })).count();
        if report.rejected_count > 0 {
            tracing::error!(batch = %report.batch_id, rejected = report.rejected_count, "clearing refused records (quarantined there)");
        }
        tracing::info!(batch = %report.batch_id, records = taken, unresolved, duplicate = report.duplicate, "batch acknowledged");
        summary.batches += 1;
        summary.duplicates += u64::from(report.duplicate);
        summary.records += records.len() as u64;
        summary.unresolved += unresolved as u64;
        summary.rejected += report.rejected_count;
    }
    Ok(summary)
}

/// Applies clearing's changes to `current`: a new blacklist with the adds in
/// and the removes out, at the newest version (or `current` again when there
/// are none).
pub fn apply_blacklist(current: &Blacklist, changes: &[BlacklistChange]) -> Result<Blacklist, UploadError> {
    let bad = |detail: String| UploadError::BadAnswer { what: "blacklist download", detail };
    let mut cards: std::collections::HashSet<ApplicationSerial> = current.cards().copied().collect();
    let mut version = current.version();
    for change in changes {
        let serial = ApplicationSerial::parse_hex(&change.card_serial)
            .ok()
            .filter(|_| change.card_serial.len() == 16)
            .ok_or_else(|| bad(format!("card_serial {:?}", change.card_serial)))?;
        match change.action.as_str() {
            "add" => cards.insert(serial),
            "remove" => cards.remove(&serial),
            other => return Err(bad(format!("action {other:?}"))),
        };
        version = version.max(u64::try_from(change.version).map_err(|_| bad("negative version".into()))?);
    }
    Blacklist::new(version, cards).map_err(|error| bad(error.to_string()))
}

/// Downloads the changes after `current`'s version and returns the updated
/// list (unchanged when clearing has nothing newer).
pub fn refresh_blacklist(client: &ClearingClient, current: &Blacklist) -> Result<Blacklist, UploadError> {
    let changes = client.blacklist_since(current.version())?;
    apply_blacklist(current, &changes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let policy = RetryPolicy::default();
        assert_eq!(policy.backoff(1), BACKOFF_INITIAL);
        assert_eq!(policy.backoff(2), BACKOFF_INITIAL * 2);
        assert_eq!(policy.backoff(3), BACKOFF_INITIAL * 4);
        assert_eq!(policy.backoff(40), BACKOFF_MAX);
        let huge = RetryPolicy { backoff_max: Duration::from_secs(3600), ..policy };
        assert_eq!(huge.backoff(30), BACKOFF_MAX, "never beyond BACKOFF_MAX");
    }

    #[test]
    fn signature_is_over_method_path_and_body() {
        let key = DeviceKey::from_seed(&[1; 32]).expect("seed");
        assert_eq!(
            key.public_key_hex(),
            "8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c",
            "the fixture terminal 310000000901's TEST key"
        );
        let signature = hex::decode(key.sign("POST", "/v1/batches", b"{}")).expect("hex");
        let public = ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, key.0.public_key().as_ref());
        public.verify(b"POST /v1/batches\n{}", &signature).expect("verifies");
    }

    fn debit_entry() -> Entry {
        Entry {
            card: ApplicationSerial::parse_hex("3100000000000001").expect("hex"),
            offline_counter: 7,
            kind: card_host::TransactionType::CompoundPurchase,
            amount: card_host::Fen(200),
            balance_before: card_host::Fen(5_000),
            terminal: TerminalNumber::parse_hex("310000000901").expect("hex"),
            terminal_serial: 42,
            at: card_host::CardDateTime::new(2026, 11, 25, 8, 0, 5).expect("valid"),
            route: Some(42),
            station: Some(3),
            card_type: 1,
            reference: None,
        }
    }

    /// A grey record is exactly the purchase record's fields minus `tac`, kind
    /// `unresolved`, the counter as INITIALIZE FOR PURCHASE answered (the
    /// `clearing-batch/1` record clearing takes for it).
    #[test]
    fn a_grey_record_is_the_purchase_record_without_its_tac() {
        let entry = debit_entry();
        let grey = serde_json::to_value(BatchRecord::of(&UploadRecord::Unresolved { id: 9, entry: entry.clone() }))
            .expect("json");
        assert_eq!(
            grey,
            serde_json::json!({
                "kind": "unresolved", "card_serial": "3100000000000001", "card_type": 1, "offline_counter": 7,
                "balance_before_fen": 5000, "amount_fen": 200, "transaction_type": "09",
                "terminal_number": "310000000901", "terminal_serial": 42, "date_time": "20261125080005"
            })
        );
        let completed = Completed {
            id: 9,
            entry,
            tac: [0xAB, 0xCD, 0x01, 0x23],
            mac2: [0; 4],
            resolution: crate::journal::Resolution::Proof,
        };
        let mut purchase = serde_json::to_value(BatchRecord::of(&UploadRecord::Completed(completed))).expect("json");
        assert_eq!(purchase["tac"], "ABCD0123");
        let object = purchase.as_object_mut().expect("object");
        object.remove("tac");
        object.insert("kind".into(), "unresolved".into());
        assert_eq!(purchase, grey, "the same fields but the TAC");
        // A batch holds both kinds, and reads back.
        let document = BatchDocument::new(
            &TerminalNumber::parse_hex("310000000901").expect("hex"),
            "0123456789abcdef-1-2".into(),
            &[UploadRecord::Unresolved { id: 1, entry: debit_entry() }],
        );
        let text = serde_json::to_string(&document).expect("json");
        assert!(!text.contains("tac") && !text.contains("online_counter"), "{text}");
        assert_eq!(serde_json::from_str::<BatchDocument>(&text).expect("parse"), document);
    }

    #[test]
    fn batch_ids_fit_clearing_whatever_the_row_ids() {
        let identity = crate::journal::JournalIdentity::parse_hex("0123456789abcdef").expect("hex");
        let longest = batch_id(&identity, i64::MAX, i64::MAX);
        assert!(longest.len() <= BATCH_ID_LENGTH_MAX, "{longest}");
        assert!(longest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
        assert_eq!(batch_id(&identity, 1, 20), "0123456789abcdef-1-20");
    }

    #[test]
    fn resealed_ids_fit_clearing_and_differ_from_sealed_ones() {
        let identity = crate::journal::JournalIdentity::parse_hex("0123456789abcdef").expect("hex");
        let fresh = 0xfedc_ba98_7654_3210;
        assert_eq!(resealed_batch_id(&identity, 1, 20, fresh), "0123456789abcdef-1-20.fedcba9876543210");
        let longest = resealed_batch_id(&identity, i64::MAX, i64::MAX, fresh);
        assert_eq!(longest.len(), BATCH_ID_LENGTH_MAX, "{longest}");
        assert!(longest.ends_with(".fedcba9"), "{longest}: {RESEAL_SUFFIX_DIGITS_MIN} digits at least");
        for id in [longest, resealed_batch_id(&identity, 1, 1, 0)] {
            assert!(id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)), "{id}");
            assert!(id.starts_with(&identity.to_string()));
        }
        assert_ne!(resealed_batch_id(&identity, 1, 1, 1), resealed_batch_id(&identity, 1, 1, 2));
    }

    #[test]
    fn blacklist_changes_add_and_remove() {
        let change = |version, serial: &str, action: &str| BlacklistChange {
            version,
            card_serial: serial.into(),
            action: action.into(),
            listed_at: "20261125090000".into(),
        };
        let list = apply_blacklist(
            &Blacklist::empty(),
            &[change(1, "3100000000000001", "add"), change(2, "3100000000000002", "add")],
        )
        .expect("apply");
        let list = apply_blacklist(&list, &[change(3, "3100000000000001", "remove")]).expect("apply");
        assert_eq!(list.version(), 3);
        assert!(!list.contains(&ApplicationSerial::parse_hex("3100000000000001").expect("hex")));
        assert!(list.contains(&ApplicationSerial::parse_hex("3100000000000002").expect("hex")));
        assert!(apply_blacklist(&list, &[change(4, "31", "add")]).is_err());
        assert!(apply_blacklist(&list, &[change(4, "3100000000000001", "maybe")]).is_err());
    }
}

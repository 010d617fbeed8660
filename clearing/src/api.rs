//! The HTTP API (axum): terminals upload batches, authorise and confirm online
//! top-ups and download the blacklist; the issuer reports losses; operators read
//! a day's summary and its quarantine; health and Prometheus metrics.
//!
//! Authentication:
//! - **terminals** sign each request with their device key (Ed25519): header
//!   `X-Terminal-Id` (12 hex digits) and `X-Signature` (128 hex digits) over
//!   `METHOD SP PATH-AND-QUERY LF BODY`. Unknown terminal or bad signature: 401;
//!   a revoked terminal: 403.
//! - **operators and the issuer** send `Authorization: Bearer TOKEN`; the server
//!   knows each token by its SHA-256 and a role. Missing or unknown: 401; a token
//!   of another role: 403.
//!
//! Errors are JSON `{"error": "...", "field": "..."}`: 422 for a body that does
//! not parse (naming the field), 409 for a conflict, 404, 401, 403; anything
//! internal is logged and answered with a generic 500 (503 when the HSM is
//! unreachable).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use card_host::model::{ApplicationSerial, CardDateTime, Fen, TerminalNumber, TransactionType};
use hsm_sim::HsmClient;
use hsm_sim::command::{LoadAuthorisation, LoadTac};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sqlx::Row;

use crate::batch::{self, BATCH_BYTES_MAX, FieldError, hex_field, integer, text};
use crate::db::Db;
use crate::error::Error;
use crate::money::BusinessDay;

/// The largest top-up: 1,000 yuan.
pub const TOPUP_FEN_MAX: u32 = 100_000;
/// The most quarantine rows in one answer.
pub const QUARANTINE_PAGE_MAX: i64 = 1_000;

/// A role a bearer token carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Operator,
    Issuer,
}

/// The tokens the server accepts, known by their SHA-256 only.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    by_digest: HashMap<[u8; 32], Role>,
}

impl Tokens {
    pub fn add(&mut self, token: &str, role: Role) {
        self.by_digest.insert(sha256(token.as_bytes()), role);
    }

    /// Lines `ROLE SHA256-HEX` (`operator` or `issuer`); `#` starts a comment.
    pub fn parse(text: &str) -> Result<Tokens, Error> {
        let mut tokens = Tokens::default();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
            let (role, digest) =
                line.split_once(' ').ok_or_else(|| Error::Config("a token line is ROLE SHA256".into()))?;
            let role = match role {
                "operator" => Role::Operator,
                "issuer" => Role::Issuer,
                other => return Err(Error::Config(format!("unknown role {other:?}"))),
            };
            let digest: [u8; 32] = hex::decode(digest.trim())
                .ok()
                .and_then(|d| d.try_into().ok())
                .ok_or_else(|| Error::Config("a token digest is 64 hex digits".into()))?;
            tokens.by_digest.insert(digest, role);
        }
        Ok(tokens)
    }

    fn role(&self, token: &str) -> Option<Role> {
        self.by_digest.get(&sha256(token.as_bytes())).copied()
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref());
    out
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct Metrics {
    batches_stored: AtomicU64,
    batches_duplicate: AtomicU64,
    records_accepted: AtomicU64,
    records_rejected: AtomicU64,
    topups_authorised: AtomicU64,
    topups_confirmed: AtomicU64,
    requests_refused: AtomicU64,
    internal_errors: AtomicU64,
}

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    pub hsm: Arc<HsmClient>,
    pub tokens: Arc<Tokens>,
    pub metrics: Arc<Metrics>,
    /// The key that hides citizen IDs; without it the server does not issue cards.
    pub citizen_key: Option<Arc<crate::registry::CitizenIdKey>>,
}

impl AppState {
    pub fn new(db: Db, hsm: HsmClient, tokens: Tokens) -> AppState {
        AppState {
            db,
            hsm: Arc::new(hsm),
            tokens: Arc::new(tokens),
            metrics: Arc::new(Metrics::default()),
            citizen_key: None,
        }
    }

    pub fn with_citizen_key(mut self, key: crate::registry::CitizenIdKey) -> AppState {
        self.citizen_key = Some(Arc::new(key));
        self
    }
}

/// The service.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/batches", post(upload_batch))
        .route("/v1/topups/authorise", post(authorise_topup))
        .route("/v1/topups/confirm", post(confirm_topup))
        .route("/v1/blacklist", get(blacklist))
        .route("/v1/issuer/cards", post(issue_card))
        .route("/v1/issuer/cards/{serial}/loss", post(report_loss))
        .route("/v1/issuer/cards/{serial}/replace", post(replace_card))
        .route("/v1/operator/days/{date}", get(day_summary))
        .route("/v1/operator/days/{date}/quarantine", get(day_quarantine))
        .route("/v1/operator/days/{date}/settlement", get(day_settlement))
        .route("/v1/operator/cards/{serial}/history", get(card_history))
        .route("/v1/operator/terminals", get(terminal_status))
        .route("/v1/operator/quarantine/{transaction_id}/release", post(release_quarantined))
        .layer(DefaultBodyLimit::max(BATCH_BYTES_MAX))
        .with_state(state)
}

/// Serves the API on a bound listener until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, state: AppState) -> std::io::Result<()> {
    axum::serve(listener, app(state)).await
}

/// An answer that is not a success.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    field: Option<String>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError { status, message: message.into(), field: None }
    }

    fn field(field: &str, message: impl Into<String>) -> Self {
        ApiError { status: StatusCode::UNPROCESSABLE_ENTITY, message: message.into(), field: Some(field.to_owned()) }
    }
}

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        match error {
            Error::Invalid { field, message } => ApiError::field(&field, message),
            Error::BatchConflict { .. } | Error::Conflict(_) => ApiError::new(StatusCode::CONFLICT, error.to_string()),
            Error::NotFound(what) => ApiError::new(StatusCode::NOT_FOUND, format!("not found: {what}")),
            Error::Hsm(hsm_sim::ClientError::Connect(_) | hsm_sim::ClientError::Timeout(_)) => {
                tracing::error!(%error, "HSM unreachable");
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the HSM is unreachable")
            }
            other => {
                tracing::error!(error = %other, "internal error");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
            }
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        Error::Database(error).into()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({ "error": self.message });
        if let Some(field) = self.field {
            body["field"] = field.into();
        }
        (self.status, Json(body)).into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

fn refused(state: &AppState, error: ApiError) -> ApiError {
    if error.status.is_server_error() {
        state.metrics.internal_errors.fetch_add(1, Ordering::Relaxed);
    } else {
        state.metrics.requests_refused.fetch_add(1, Ordering::Relaxed);
    }
    error
}

/// The message a terminal signs.
pub fn signed_message(method: &str, path_and_query: &str, body: &[u8]) -> Vec<u8> {
    let mut message = format!("{method} {path_and_query}\n").into_bytes();
    message.extend_from_slice(body);
    message
}

/// Checks a terminal's signature; returns its number.
async fn authenticate_terminal(
    state: &AppState,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> ApiResult<TerminalNumber> {
    let unauthorised = || ApiError::new(StatusCode::UNAUTHORIZED, "a terminal signature is required");
    let terminal = headers
        .get("x-terminal-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| batch::parse_terminal(v).ok())
        .ok_or_else(unauthorised)?;
    let signature = headers
        .get("x-signature")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| hex::decode(v).ok())
        .filter(|s| s.len() == 64)
        .ok_or_else(unauthorised)?;
    let row = sqlx::query("SELECT device_public_key, status FROM terminals WHERE terminal_number = $1")
        .bind(terminal.to_string())
        .fetch_optional(&state.db.pool)
        .await?
        .ok_or_else(unauthorised)?;
    let key: Vec<u8> = row.try_get("device_public_key")?;
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, key)
        .verify(&signed_message(method.as_str(), path, body), &signature)
        .map_err(|_| unauthorised())?;
    if row.try_get::<String, _>("status")? != "active" {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "the terminal is revoked"));
    }
    Ok(terminal)
}

fn authorise_token(state: &AppState, headers: &HeaderMap, role: Role) -> ApiResult<()> {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "a bearer token is required"))?;
    match state.tokens.role(token.trim()) {
        None => Err(ApiError::new(StatusCode::UNAUTHORIZED, "unknown token")),
        Some(held) if held != role => Err(ApiError::new(StatusCode::FORBIDDEN, "this token's role may not do that")),
        Some(_) => Ok(()),
    }
}

async fn health(State(state): State<AppState>) -> ApiResult<Json<Value>> {
    sqlx::query("SELECT 1").execute(&state.db.pool).await?;
    Ok(Json(serde_json::json!({ "status": "ok" })))
}

async fn metrics(State(state): State<AppState>) -> String {
    let m = &state.metrics;
    let mut out = String::new();
    for (name, help, value) in [
        ("clearing_batches_stored_total", "Batches stored.", &m.batches_stored),
        ("clearing_batches_duplicate_total", "Batches uploaded again (counted once).", &m.batches_duplicate),
        ("clearing_records_accepted_total", "Records accepted at upload.", &m.records_accepted),
        ("clearing_records_rejected_total", "Records refused at upload (quarantined).", &m.records_rejected),
        ("clearing_topups_authorised_total", "Online top-ups authorised.", &m.topups_authorised),
        ("clearing_topups_confirmed_total", "Online top-ups confirmed.", &m.topups_confirmed),
        ("clearing_requests_refused_total", "Requests answered 4xx.", &m.requests_refused),
        ("clearing_internal_errors_total", "Requests answered 5xx.", &m.internal_errors),
    ] {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}\n",
            value.load(Ordering::Relaxed)
        ));
    }
    out
}

async fn upload_batch(
    State(state): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let result = async {
        let terminal = authenticate_terminal(&state, &method, &uri, &headers, &body).await?;
        let parsed = batch::parse(&body)?;
        if parsed.terminal_id != terminal {
            return Err(ApiError::new(StatusCode::FORBIDDEN, "a terminal uploads only its own batches"));
        }
        let report = crate::ingest::ingest(&state.db, &parsed, unix_now()).await?;
        let m = &state.metrics;
        if report.duplicate {
            m.batches_duplicate.fetch_add(1, Ordering::Relaxed);
        } else {
            m.batches_stored.fetch_add(1, Ordering::Relaxed);
            m.records_accepted.fetch_add(report.accepted_count, Ordering::Relaxed);
            m.records_rejected.fetch_add(report.rejected_count, Ordering::Relaxed);
        }
        let status = if report.duplicate { StatusCode::OK } else { StatusCode::CREATED };
        Ok((status, Json(report)).into_response())
    }
    .await;
    result.map_err(|e| refused(&state, e))
}

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// A top-up authorisation request, parsed.
#[derive(Debug)]
struct TopupRequest {
    serial: ApplicationSerial,
    key_index: u8,
    card_random: [u8; 4],
    online_counter: u16,
    balance_before: Fen,
    amount: Fen,
    kind: TransactionType,
    mac1: [u8; 4],
}

fn object(body: &[u8], allowed: &[&str]) -> ApiResult<Map<String, Value>> {
    let value: Value = serde_json::from_slice(body).map_err(|e| ApiError::field("body", e.to_string()))?;
    let Value::Object(map) = value else {
        return Err(ApiError::field("body", "must be a JSON object"));
    };
    if let Some(unknown) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
        let name: String = unknown.chars().take(40).collect();
        return Err(ApiError::field(&name, "unknown field"));
    }
    Ok(map)
}

fn field_error((field, message): FieldError) -> ApiError {
    ApiError::field(field, message)
}

fn parse_topup(body: &[u8]) -> ApiResult<TopupRequest> {
    let map = object(
        body,
        &[
            "card_serial",
            "key_index",
            "card_random",
            "online_counter",
            "balance_before_fen",
            "amount_fen",
            "transaction_type",
            "mac1",
        ],
    )?;
    let serial = ApplicationSerial(hex_field::<8>(&map, "card_serial").map_err(field_error)?);
    let key_index = integer(&map, "key_index", u64::from(u8::MAX)).map_err(field_error)? as u8;
    let card_random = hex_field::<4>(&map, "card_random").map_err(field_error)?;
    let online_counter = integer(&map, "online_counter", u64::from(u16::MAX)).map_err(field_error)? as u16;
    let balance_before = Fen(integer(&map, "balance_before_fen", u64::from(u32::MAX)).map_err(field_error)? as u32);
    let amount = Fen(integer(&map, "amount_fen", u64::from(TOPUP_FEN_MAX)).map_err(field_error)? as u32);
    if amount.0 == 0 {
        return Err(ApiError::field("amount_fen", "must be at least 1"));
    }
    if balance_before.checked_add(amount).is_none() {
        return Err(ApiError::field("amount_fen", "the balance after the load overflows"));
    }
    let [code] = hex_field::<1>(&map, "transaction_type").map_err(field_error)?;
    let kind = TransactionType::from_code(code)
        .ok()
        .filter(|k| k.is_load())
        .ok_or_else(|| ApiError::field("transaction_type", "must be a load type (01 or 02)"))?;
    let mac1 = hex_field::<4>(&map, "mac1").map_err(field_error)?;
    Ok(TopupRequest { serial, key_index, card_random, online_counter, balance_before, amount, kind, mac1 })
}

/// The answer to an authorised top-up: MAC2 for CREDIT FOR LOAD with this host date-time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopupAuthorised {
    pub mac2: String,
    pub date_time: String,
}

async fn authorise_topup(
    State(state): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<TopupAuthorised>> {
    let result = async {
        let terminal = authenticate_terminal(&state, &method, &uri, &headers, &body).await?;
        let request = parse_topup(&body)?;
        let card = sqlx::query("SELECT status, key_set, online_counter FROM cards WHERE card_serial = $1")
            .bind(request.serial.to_hex())
            .fetch_optional(&state.db.pool)
            .await?
            .ok_or_else(|| ApiError::field("card_serial", "no such card"))?;
        if card.try_get::<String, _>("status")? != "active" {
            return Err(ApiError::new(StatusCode::FORBIDDEN, "the card is not active (lost or replaced)"));
        }
        if i64::from(request.online_counter) < card.try_get::<i64, _>("online_counter")? {
            return Err(ApiError::field("online_counter", "behind the card's cleared loads"));
        }
        let key_set: String = card.try_get("key_set")?;
        // The same authorisation again (a retry) gets the same host date-time, so the same MAC2.
        let existing = sqlx::query(
            "SELECT terminal_number, balance_before, amount_fen, transaction_type, host_date_time FROM topups
             WHERE card_serial = $1 AND online_counter = $2",
        )
        .bind(request.serial.to_hex())
        .bind(i64::from(request.online_counter))
        .fetch_optional(&state.db.pool)
        .await?;
        let at = match &existing {
            Some(row) => {
                let same = row.try_get::<String, _>("terminal_number")? == terminal.to_string()
                    && row.try_get::<i64, _>("balance_before")? == i64::from(request.balance_before.0)
                    && row.try_get::<i64, _>("amount_fen")? == i64::from(request.amount.0)
                    && row.try_get::<i64, _>("transaction_type")? == i64::from(request.kind.code());
                if !same {
                    return Err(ApiError::new(StatusCode::CONFLICT, "another top-up holds this online counter"));
                }
                stored_date_time(&row.try_get::<String, _>("host_date_time")?)?
            }
            None => CardDateTime::now_utc(),
        };
        let load = LoadAuthorisation {
            serial: request.serial,
            key_index: request.key_index,
            card_random: request.card_random,
            online_counter: request.online_counter,
            old_balance: request.balance_before,
            amount: request.amount,
            kind: request.kind,
            terminal,
            at,
            mac1: request.mac1,
        };
        let mac2 = match state.hsm.authorise_load(&key_set, &load).await {
            Ok(mac2) => mac2,
            Err(error) if error.code() == Some(hsm_sim::ErrorCode::VerificationFailure) => {
                return Err(ApiError::field("mac1", "the card's MAC1 is wrong"));
            }
            Err(error) if error.code() == Some(hsm_sim::ErrorCode::InvalidIndex) => {
                return Err(ApiError::field("key_index", "no load key of that index"));
            }
            Err(error) => return Err(Error::Hsm(error).into()),
        };
        if existing.is_none() {
            sqlx::query(
                "INSERT INTO topups (card_serial, online_counter, terminal_number, balance_before, amount_fen,
                 transaction_type, host_date_time, state) VALUES ($1, $2, $3, $4, $5, $6, $7, 'authorised')
                 ON CONFLICT (card_serial, online_counter) DO NOTHING",
            )
            .bind(request.serial.to_hex())
            .bind(i64::from(request.online_counter))
            .bind(terminal.to_string())
            .bind(i64::from(request.balance_before.0))
            .bind(i64::from(request.amount.0))
            .bind(i64::from(request.kind.code()))
            .bind(hex::encode(at.to_bytes()))
            .execute(&state.db.pool)
            .await?;
        }
        state.metrics.topups_authorised.fetch_add(1, Ordering::Relaxed);
        tracing::info!(card = %request.serial.masked(), amount_fen = request.amount.0, "top-up authorised");
        Ok(Json(TopupAuthorised { mac2: hex::encode_upper(mac2), date_time: hex::encode(at.to_bytes()) }))
    }
    .await;
    result.map_err(|e| refused(&state, e))
}

fn stored_date_time(text: &str) -> ApiResult<CardDateTime> {
    hex::decode(text)
        .ok()
        .and_then(|bytes| CardDateTime::from_slice(&bytes).ok())
        .ok_or_else(|| Error::Inconsistent("stored host date-time".into()).into())
}

async fn confirm_topup(
    State(state): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let result = async {
        let terminal = authenticate_terminal(&state, &method, &uri, &headers, &body).await?;
        let map = object(&body, &["card_serial", "online_counter", "tac"])?;
        let serial = ApplicationSerial(hex_field::<8>(&map, "card_serial").map_err(field_error)?);
        let online_counter = integer(&map, "online_counter", u64::from(u16::MAX)).map_err(field_error)? as u16;
        let tac = hex_field::<4>(&map, "tac").map_err(field_error)?;
        let row = sqlx::query(
            "SELECT t.terminal_number AS terminal_number, t.balance_before AS balance_before, t.amount_fen AS amount_fen,
             t.transaction_type AS transaction_type, t.host_date_time AS host_date_time, c.key_set AS key_set,
             c.card_type AS card_type
             FROM topups t JOIN cards c ON c.card_serial = t.card_serial
             WHERE t.card_serial = $1 AND t.online_counter = $2",
        )
        .bind(serial.to_hex())
        .bind(i64::from(online_counter))
        .fetch_optional(&state.db.pool)
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no authorised top-up for this card and counter"))?;
        if row.try_get::<String, _>("terminal_number")? != terminal.to_string() {
            return Err(ApiError::new(StatusCode::FORBIDDEN, "another terminal authorised this top-up"));
        }
        let balance_before = row.try_get::<i64, _>("balance_before")?;
        let amount = row.try_get::<i64, _>("amount_fen")?;
        let kind = TransactionType::from_code(row.try_get::<i64, _>("transaction_type")? as u8)
            .map_err(|e| Error::Inconsistent(e.to_string()))?;
        let date_time: String = row.try_get("host_date_time")?;
        let at = stored_date_time(&date_time)?;
        let key_set: String = row.try_get("key_set")?;
        let load = LoadTac {
            serial,
            new_balance: Fen((balance_before + amount) as u32),
            online_counter,
            amount: Fen(amount as u32),
            kind,
            terminal,
            at,
            tac,
        };
        if !state.hsm.verify_load_tac(&key_set, &load).await.map_err(Error::Hsm)? {
            return Err(ApiError::field("tac", "the card's load TAC is wrong"));
        }
        // The confirmed load becomes a one-record batch, cleared by run-day like any other.
        let record = batch::Record {
            kind: batch::RecordKind::Load,
            card_serial: serial,
            card_type: row.try_get::<i64, _>("card_type")? as u8,
            counter: online_counter,
            balance_before: Fen(balance_before as u32),
            amount: Fen(amount as u32),
            transaction_type: kind,
            terminal_number: terminal,
            terminal_serial: 0,
            at,
            tac,
        };
        let document = batch::document(&terminal, &format!("online-{}-{online_counter}", serial.to_hex()), &[record]);
        let parsed = batch::parse_value(document)?;
        crate::ingest::ingest(&state.db, &parsed, unix_now()).await?;
        sqlx::query("UPDATE topups SET state = 'confirmed' WHERE card_serial = $1 AND online_counter = $2")
            .bind(serial.to_hex())
            .bind(i64::from(online_counter))
            .execute(&state.db.pool)
            .await?;
        state.metrics.topups_confirmed.fetch_add(1, Ordering::Relaxed);
        Ok(Json(serde_json::json!({ "state": "confirmed", "business_day": BusinessDay::of(&at).to_string() })))
    }
    .await;
    result.map_err(|e| refused(&state, e))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SinceQuery {
    since: Option<i64>,
}

async fn blacklist(
    State(state): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Query(query): Query<SinceQuery>,
) -> ApiResult<Json<Vec<crate::registry::BlacklistEntry>>> {
    let result = async {
        authenticate_terminal(&state, &method, &uri, &headers, b"").await?;
        let since = query.since.unwrap_or(0);
        if since < 0 {
            return Err(ApiError::field("since", "must not be negative"));
        }
        Ok(Json(crate::registry::blacklist_since(&state.db, since).await?))
    }
    .await;
    result.map_err(|e| refused(&state, e))
}

async fn report_loss(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(serial): Path<String>,
) -> ApiResult<Json<Value>> {
    let result = async {
        authorise_token(&state, &headers, Role::Issuer)?;
        let serial = serial_from_path(&serial)?;
        let version = crate::registry::report_loss(&state.db, &serial, &CardDateTime::now_utc()).await?;
        Ok(Json(serde_json::json!({ "blacklist_version": version })))
    }
    .await;
    result.map_err(|e| refused(&state, e))
}

fn serial_from_path(serial: &str) -> ApiResult<ApplicationSerial> {
    ApplicationSerial::parse_hex(serial)
        .ok()
        .filter(|_| serial.len() == 16)
        .ok_or_else(|| ApiError::field("serial", "must be 16 hex digits"))
}

fn short_text(map: &Map<String, Value>, field: &'static str) -> ApiResult<String> {
    let value = text(map, field).map_err(field_error)?;
    if value.is_empty() || value.len() > crate::registry::NAME_LENGTH_MAX {
        return Err(ApiError::field(field, "1 to 100 characters"));
    }
    Ok(value.to_owned())
}

async fn issue_card(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> ApiResult<Response> {
    let result = async {
        authorise_token(&state, &headers, Role::Issuer)?;
        let key = state
            .citizen_key
            .clone()
            .ok_or_else(|| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "this server does not issue cards"))?;
        let map = object(&body, &["card_serial", "card_type", "key_set", "citizen_id", "name", "initial_balance_fen"])?;
        let card = crate::registry::NewCard {
            serial: ApplicationSerial(hex_field::<8>(&map, "card_serial").map_err(field_error)?),
            card_type: integer(&map, "card_type", u64::from(u8::MAX)).map_err(field_error)? as u8,
            key_set: short_text(&map, "key_set")?,
            citizen_id: short_text(&map, "citizen_id")?,
            name: short_text(&map, "name")?,
            initial_balance: Fen(
                integer(&map, "initial_balance_fen", u64::from(TOPUP_FEN_MAX)).map_err(field_error)? as u32
            ),
            issued_at: CardDateTime::now_utc(),
        };
        crate::registry::issue_card(&state.db, &key, &card).await?;
        Ok((StatusCode::CREATED, Json(serde_json::json!({ "card_serial": card.serial.to_hex() }))).into_response())
    }
    .await;
    result.map_err(|e| refused(&state, e))
}

async fn replace_card(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(serial): Path<String>,
    body: Bytes,
) -> ApiResult<Json<crate::registry::Replacement>> {
    let result = async {
        authorise_token(&state, &headers, Role::Issuer)?;
        let old = serial_from_path(&serial)?;
        let map = object(&body, &["new_card_serial", "card_type", "key_set"])?;
        let new = crate::registry::ReplacementCard {
            serial: ApplicationSerial(hex_field::<8>(&map, "new_card_serial").map_err(field_error)?),
            card_type: integer(&map, "card_type", u64::from(u8::MAX)).map_err(field_error)? as u8,
            key_set: short_text(&map, "key_set")?,
            issued_at: CardDateTime::now_utc(),
        };
        Ok(Json(crate::registry::replace_card(&state.db, &old, &new).await?))
    }
    .await;
    result.map_err(|e| refused(&state, e))
}

async fn day_summary(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(date): Path<String>,
) -> ApiResult<Json<crate::run_day::DaySummary>> {
    let result = async {
        authorise_token(&state, &headers, Role::Operator)?;
        let day = BusinessDay::parse(&date)?;
        Ok(Json(crate::run_day::summary(&state.db, &day.to_string()).await?))
    }
    .await;
    result.map_err(|e| refused(&state, e))
}

/// The most records in a card history answer, and terminals in a status answer.
pub const HISTORY_RECORDS_MAX: i64 = 1_000;
pub const TERMINALS_MAX: i64 = 10_000;

/// One record of a card's history, for operators.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub transaction_id: i64,
    pub kind: String,
    pub counter: i64,
    pub balance_before_fen: i64,
    pub amount_fen: i64,
    pub terminal_number: String,
    pub date_time: String,
    pub state: String,
    /// Why it was quarantined, if it was.
    pub reason: Option<String>,
}

async fn card_history(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(serial): Path<String>,
) -> ApiResult<Json<Vec<HistoryEntry>>> {
    let result = async {
        authorise_token(&state, &headers, Role::Operator)?;
        let serial = serial_from_path(&serial)?;
        let rows = sqlx::query(
            "SELECT t.transaction_id AS transaction_id, t.kind AS kind, t.counter AS counter,
             t.balance_before AS balance_before, t.amount_fen AS amount_fen, t.terminal_number AS terminal_number,
             t.occurred_at AS occurred_at, t.state AS state, q.reason AS reason
             FROM transactions t LEFT JOIN quarantine q ON q.transaction_id = t.transaction_id
             WHERE t.card_serial = $1 ORDER BY t.transaction_id DESC LIMIT $2",
        )
        .bind(serial.to_hex())
        .bind(HISTORY_RECORDS_MAX)
        .fetch_all(&state.db.pool)
        .await?;
        let entries = rows
            .iter()
            .map(|row| {
                Ok(HistoryEntry {
                    transaction_id: row.try_get("transaction_id")?,
                    kind: row.try_get("kind")?,
                    counter: row.try_get("counter")?,
                    balance_before_fen: row.try_get("balance_before")?,
                    amount_fen: row.try_get("amount_fen")?,
                    terminal_number: row.try_get("terminal_number")?,
                    date_time: row.try_get("occurred_at")?,
                    state: row.try_get("state")?,
                    reason: row.try_get("reason")?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        Ok(Json(entries))
    }
    .await;
    result.map_err(|e| refused(&state, e))
}

/// A terminal's status, for operators.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TerminalStatus {
    pub terminal_number: String,
    pub merchant_id: String,
    pub status: String,
    /// Unix seconds of its last batch, if any.
    pub last_upload_at: Option<i64>,
    pub pending_records: i64,
}

async fn terminal_status(State(state): State<AppState>, headers: HeaderMap) -> ApiResult<Json<Vec<TerminalStatus>>> {
    let result = async {
        authorise_token(&state, &headers, Role::Operator)?;
        let rows = sqlx::query(
            "SELECT m.terminal_number AS terminal_number, m.merchant_id AS merchant_id, m.status AS status,
             m.last_upload_at AS last_upload_at,
             (SELECT COUNT(*) FROM transactions t WHERE t.terminal_number = m.terminal_number AND t.state = 'pending')
               AS pending_records
             FROM terminals m ORDER BY m.terminal_number LIMIT $1",
        )
        .bind(TERMINALS_MAX)
        .fetch_all(&state.db.pool)
        .await?;
        let entries = rows
            .iter()
            .map(|row| {
                Ok(TerminalStatus {
                    terminal_number: row.try_get("terminal_number")?,
                    merchant_id: row.try_get("merchant_id")?,
                    status: row.try_get("status")?,
                    last_upload_at: row.try_get("last_upload_at")?,
                    pending_records: row.try_get("pending_records")?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        Ok(Json(entries))
    }
    .await;
    result.map_err(|e| refused(&state, e))
}

async fn release_quarantined(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(transaction_id): Path<String>,
) -> ApiResult<Json<Value>> {
    let result = async {
        authorise_token(&state, &headers, Role::Operator)?;
        let id: i64 = transaction_id
            .parse()
            .ok()
            .filter(|id| *id > 0)
            .ok_or_else(|| ApiError::field("transaction_id", "a positive whole number"))?;
        crate::registry::release_quarantined(&state.db, id, "operator", unix_now()).await?;
        Ok(Json(serde_json::json!({ "transaction_id": id, "state": "pending" })))
    }
    .await;
    result.map_err(|e| refused(&state, e))
}

/// The day's settlement file as `run-day` wrote it (CSV, derived from the
/// database alone, so the same bytes), signed by the HSM: `X-Settlement-Sha256`
/// and `X-Settlement-Signature` (Ed25519 over the SHA-256, as in the manifest).
async fn day_settlement(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(date): Path<String>,
) -> ApiResult<Response> {
    let result = async {
        authorise_token(&state, &headers, Role::Operator)?;
        let day = BusinessDay::parse(&date)?.to_string();
        let lines = crate::run_day::settlements(&state.db, &day).await?;
        if lines.is_empty() {
            return Err(ApiError::new(StatusCode::NOT_FOUND, format!("no settlement for {day}")));
        }
        let csv = crate::run_day::settlement_csv(&day, &lines);
        let signature =
            state.hsm.sign_settlement(crate::run_day::SIGNING_KEY_DEFAULT, csv.as_bytes()).await.map_err(Error::Hsm)?;
        Ok((
            [
                (axum::http::header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
                (
                    axum::http::HeaderName::from_static("x-settlement-sha256"),
                    hex::encode(hsm_sim::settlement_digest(csv.as_bytes())),
                ),
                (axum::http::HeaderName::from_static("x-settlement-signature"), hex::encode(signature)),
            ],
            csv,
        )
            .into_response())
    }
    .await;
    result.map_err(|e| refused(&state, e))
}

/// One quarantined record, for operators.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuarantineEntry {
    /// None for a record refused at upload (it never became a transaction).
    pub transaction_id: Option<i64>,
    pub terminal_id: String,
    pub batch_id: String,
    pub record_index: i64,
    pub reason: String,
    pub detail: String,
}

async fn day_quarantine(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(date): Path<String>,
) -> ApiResult<Json<Vec<QuarantineEntry>>> {
    let result = async {
        authorise_token(&state, &headers, Role::Operator)?;
        let day = BusinessDay::parse(&date)?;
        let rows = sqlx::query(
            "SELECT transaction_id, terminal_id, batch_id, record_index, reason, detail FROM quarantine
             WHERE business_day = $1
             ORDER BY quarantine_id LIMIT $2",
        )
        .bind(day.to_string())
        .bind(QUARANTINE_PAGE_MAX)
        .fetch_all(&state.db.pool)
        .await?;
        let entries = rows
            .iter()
            .map(|row| {
                Ok(QuarantineEntry {
                    transaction_id: row.try_get("transaction_id")?,
                    terminal_id: row.try_get("terminal_id")?,
                    batch_id: row.try_get("batch_id")?,
                    record_index: row.try_get("record_index")?,
                    reason: row.try_get("reason")?,
                    detail: row.try_get("detail")?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        Ok(Json(entries))
    }
    .await;
    result.map_err(|e| refused(&state, e))
}

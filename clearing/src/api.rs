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
//!
//! Every route is one line of [`routes`]; the router and `GET /openapi.json`
//! are both built from that list. A handler takes the typed extractors of
//! [`openapi`] ([`Signed`], [`Token`], [`Body`], [`Params`], [`QueryParams`]) and
//! answers `Result<_, Fails<(..refusals..)>>`, so the document lists every
//! status a route can give, derived from its types.

pub mod bodies;
pub mod openapi;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use aide::axum::ApiRouter;
use aide::axum::routing::ApiMethodRouter;
use aide::openapi::OpenApi;
use aide::operation::OperationHandler;
use aide::{OperationInput, OperationOutput};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Extension, State};
use axum::handler::Handler;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use card_host::model::{ApplicationSerial, CardDateTime, Fen, TerminalNumber, TransactionType};
use hsm_sim::HsmClient;
use hsm_sim::command::{LoadAuthorisation, LoadTac};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sqlx::Row;

pub use self::bodies::TOPUP_FEN_MAX;
use self::bodies::{IssueCard, ReplaceCard, TopupAuthorise, TopupConfirm, TopupVoid};
pub use self::openapi::{
    Body, Conflict, Created, ErrorBody, Fails, Forbidden, Issuers, NotFound, OpenApiJson, Operators, Params,
    QueryParams, SettlementCsv, Signed, Stored, Token, Unavailable, Unprocessable,
};
use crate::batch::{self, BATCH_BYTES_MAX};
use crate::db::Db;
use crate::error::Error;
use crate::money::BusinessDay;
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
    topups_voided: AtomicU64,
    requests_refused: AtomicU64,
    credentials_refused: AtomicU64,
    internal_errors: AtomicU64,
}

pub use crate::clock::UTC_OFFSET_MINUTES_DEFAULT;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    pub hsm: Arc<HsmClient>,
    pub tokens: Arc<Tokens>,
    pub metrics: Arc<Metrics>,
    /// The key that hides citizen IDs; without it the server does not issue cards.
    pub citizen_key: Option<Arc<crate::registry::CitizenIdKey>>,
    /// The card personalisation station; without it the server only records
    /// cards personalised elsewhere.
    pub personaliser: Option<Arc<crate::personalise::Personaliser>>,
    /// Local time: the date-times the server gives cards (a top-up's), loss
    /// reports and issue times are local, as the terminals' are
    /// (`utc_offset_minutes` in their configuration).
    pub clock: crate::clock::Clock,
}

impl AppState {
    pub fn new(db: Db, hsm: HsmClient, tokens: Tokens) -> AppState {
        AppState {
            db,
            hsm: Arc::new(hsm),
            tokens: Arc::new(tokens),
            metrics: Arc::new(Metrics::default()),
            citizen_key: None,
            personaliser: None,
            clock: crate::clock::Clock::default(),
        }
    }

    /// Local time at another offset than China Standard Time's.
    pub fn with_utc_offset_minutes(self, minutes: i32) -> AppState {
        self.with_clock(crate::clock::Clock::System { utc_offset_minutes: minutes })
    }

    /// Another clock (a simulation's).
    pub fn with_clock(mut self, clock: crate::clock::Clock) -> AppState {
        self.clock = clock;
        self
    }

    /// The local date and time now.
    pub fn now(&self) -> CardDateTime {
        self.clock.now()
    }

    pub fn with_personaliser(mut self, personaliser: crate::personalise::Personaliser) -> AppState {
        self.personaliser = Some(Arc::new(personaliser));
        self
    }

    pub fn with_citizen_key(mut self, key: crate::registry::CitizenIdKey) -> AppState {
        self.citizen_key = Some(Arc::new(key));
        self
    }
}

/// Every route the API serves, one line each: the router and `/openapi.json`
/// are both built from this list alone, so no route goes undocumented.
/// A handler's extractors and answer types say what the route documents.
pub fn routes() -> Vec<ApiRoute> {
    vec![
        ApiRoute::get("/healthz", health),
        ApiRoute::get("/metrics", metrics),
        ApiRoute::get("/openapi.json", openapi_json),
        ApiRoute::post("/v1/batches", upload_batch),
        ApiRoute::post("/v1/topups/authorise", authorise_topup),
        ApiRoute::post("/v1/topups/confirm", confirm_topup),
        ApiRoute::post("/v1/topups/void", void_topup),
        ApiRoute::get("/v1/blacklist", blacklist),
        ApiRoute::post("/v1/issuer/cards", issue_card),
        ApiRoute::post("/v1/issuer/cards/{serial}/loss", report_loss),
        ApiRoute::post("/v1/issuer/cards/{serial}/replace", replace_card),
        ApiRoute::get("/v1/operator/days/{date}", day_summary),
        ApiRoute::get("/v1/operator/days/{date}/quarantine", day_quarantine),
        ApiRoute::get("/v1/operator/days/{date}/settlement", day_settlement),
        ApiRoute::get("/v1/operator/days/{date}/grey-records", day_grey_records),
        ApiRoute::get("/v1/operator/cards/{serial}", card_account),
        ApiRoute::get("/v1/operator/cards/{serial}/history", card_history),
        ApiRoute::get("/v1/operator/days/{date}/hourly", crate::report::day_hourly),
        ApiRoute::get("/v1/operator/blacklist", crate::report::operator_blacklist),
        ApiRoute::get("/v1/operator/terminals", terminal_status),
        ApiRoute::post("/v1/operator/quarantine/{transaction_id}/release", release_quarantined),
    ]
}

/// One route: its method, its path and its documented handler.
pub struct ApiRoute {
    pub method: Method,
    pub path: &'static str,
    handler: ApiMethodRouter<AppState>,
}

impl ApiRoute {
    pub fn get<H, I, O, T>(path: &'static str, handler: H) -> ApiRoute
    where
        H: Handler<T, AppState> + OperationHandler<I, O>,
        I: OperationInput,
        O: OperationOutput,
        T: 'static,
    {
        ApiRoute { method: Method::GET, path, handler: aide::axum::routing::get(handler) }
    }

    pub fn post<H, I, O, T>(path: &'static str, handler: H) -> ApiRoute
    where
        H: Handler<T, AppState> + OperationHandler<I, O>,
        I: OperationInput,
        O: OperationOutput,
        T: 'static,
    {
        ApiRoute { method: Method::POST, path, handler: aide::axum::routing::post(handler) }
    }
}

fn documented_router() -> (Router<AppState>, OpenApi) {
    let mut api = OpenApi::default();
    let router = routes()
        .into_iter()
        .fold(ApiRouter::new(), |router, route| router.api_route(route.path, route.handler))
        .finish_api_with(&mut api, |doc| {
            use aide::openapi::{ApiKeyLocation, SecurityScheme};
            let bearer = |role: &str| SecurityScheme::Http {
                scheme: "bearer".into(),
                bearer_format: None,
                description: Some(format!("a token of role {role} (--tokens FILE keeps its SHA-256)")),
                extensions: Default::default(),
            };
            doc.title("clearing")
                .version(env!("CARGO_PKG_VERSION"))
                .description("The clearing back-end of the citizen card: terminal uploads, online top-ups, the issuer's cards, operators' reports. Generated from the handlers' types.")
                .security_scheme(
                    openapi::TERMINAL_SIGNATURE,
                    SecurityScheme::ApiKey {
                        location: ApiKeyLocation::Header,
                        name: "X-Signature".into(),
                        description: Some(
                            "the terminal's Ed25519 signature (128 hex digits) over `METHOD SP PATH-AND-QUERY LF BODY`, \
                             with its number in X-Terminal-Id (12 hex digits)"
                                .into(),
                        ),
                        extensions: Default::default(),
                    },
                )
                .security_scheme(Operators::SCHEME, bearer("operator"))
                .security_scheme(Issuers::SCHEME, bearer("issuer"))
        });
    (router, api)
}

/// The OpenAPI document of [`routes`], as `/openapi.json` serves it.
pub fn openapi_document() -> OpenApi {
    documented_router().1
}

/// The service.
pub fn app(state: AppState) -> Router {
    let (router, api) = documented_router();
    let document = serde_json::to_vec(&api).unwrap_or_else(|error| {
        tracing::error!(%error, "the OpenAPI document does not serialise");
        Vec::new()
    });
    router
        .merge(crate::screen::router())
        .layer(Extension(OpenApiJson(Arc::new(Bytes::from(document)))))
        .layer(axum::middleware::map_response_with_state(state.clone(), count_answer))
        .layer(DefaultBodyLimit::max(BATCH_BYTES_MAX))
        .with_state(state)
}

/// Counts 4xx and 5xx answers for `/metrics`, whichever extractor or handler gave them.
async fn count_answer(State(state): State<AppState>, response: Response) -> Response {
    if response.status().is_server_error() {
        state.metrics.internal_errors.fetch_add(1, Ordering::Relaxed);
    } else if response.status().is_client_error() {
        state.metrics.requests_refused.fetch_add(1, Ordering::Relaxed);
    }
    response
}

use self::openapi::RoleKind;

async fn openapi_json(Extension(document): Extension<OpenApiJson>) -> OpenApiJson {
    document
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

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    /// The request field that was wrong (a 422).
    pub fn field_name(&self) -> Option<&str> {
        self.field.as_deref()
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{} {field}: {}", self.status.as_u16(), self.message),
            None => write!(f, "{} {}", self.status.as_u16(), self.message),
        }
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
        (self.status, Json(ErrorBody { error: self.message, field: self.field })).into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

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
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    // Every refusal is logged (method, path, the terminal it claims, why) and
    // counted; never the signature or the body.
    let refuse = |status: StatusCode, terminal: Option<&TerminalNumber>, why: &str| {
        state.metrics.credentials_refused.fetch_add(1, Ordering::Relaxed);
        let terminal = terminal.map(ToString::to_string).unwrap_or_else(|| "-".into());
        tracing::warn!(%method, uri = %uri.path(), %terminal, status = status.as_u16(), why, "terminal request refused");
        let message = if status == StatusCode::FORBIDDEN {
            "the terminal is revoked"
        } else {
            "a terminal signature is required"
        };
        ApiError::new(status, message)
    };
    let terminal = headers
        .get("x-terminal-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| batch::parse_terminal(v).ok())
        .ok_or_else(|| refuse(StatusCode::UNAUTHORIZED, None, "no readable X-Terminal-Id"))?;
    let signature = headers
        .get("x-signature")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| hex::decode(v).ok())
        .filter(|s| s.len() == 64)
        .ok_or_else(|| refuse(StatusCode::UNAUTHORIZED, Some(&terminal), "no readable X-Signature"))?;
    let row = sqlx::query("SELECT device_public_key, status FROM terminals WHERE terminal_number = $1")
        .bind(terminal.to_string())
        .fetch_optional(&state.db.pool)
        .await?
        .ok_or_else(|| refuse(StatusCode::UNAUTHORIZED, Some(&terminal), "unknown terminal"))?;
    let key: Vec<u8> = row.try_get("device_public_key")?;
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, key)
        .verify(&signed_message(method.as_str(), path, body), &signature)
        .map_err(|_| refuse(StatusCode::UNAUTHORIZED, Some(&terminal), "bad signature"))?;
    if row.try_get::<String, _>("status")? != "active" {
        return Err(refuse(StatusCode::FORBIDDEN, Some(&terminal), "revoked terminal"));
    }
    Ok(terminal)
}

fn authorise_token(state: &AppState, headers: &HeaderMap, role: Role) -> ApiResult<()> {
    // Every refusal is logged (the role asked for, the role held, why) and
    // counted; never the token.
    let refuse = |status: StatusCode, held: Option<Role>, why: &'static str| {
        state.metrics.credentials_refused.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(required = ?role, held = ?held, status = status.as_u16(), why, "token request refused");
        ApiError::new(status, why)
    };
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| refuse(StatusCode::UNAUTHORIZED, None, "a bearer token is required"))?;
    match state.tokens.role(token.trim()) {
        None => Err(refuse(StatusCode::UNAUTHORIZED, None, "unknown token")),
        Some(held) if held != role => {
            Err(refuse(StatusCode::FORBIDDEN, Some(held), "this token's role may not do that"))
        }
        Some(_) => Ok(()),
    }
}

/// `GET /healthz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Health {
    /// `ok` when the database answers.
    pub status: String,
}

async fn health(State(state): State<AppState>) -> Result<Json<Health>, Fails<()>> {
    sqlx::query("SELECT 1").execute(&state.db.pool).await?;
    Ok(Json(Health { status: "ok".into() }))
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
        ("clearing_topups_voided_total", "Online top-ups voided (the load never reached the card).", &m.topups_voided),
        ("clearing_requests_refused_total", "Requests answered 4xx.", &m.requests_refused),
        (
            "clearing_credentials_refused_total",
            "Requests refused for missing or wrong credentials (401/403 of a signature or token; logged).",
            &m.credentials_refused,
        ),
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
    signed: Signed<batch::Batch>,
) -> Result<Stored<crate::IngestReport>, Fails<(Forbidden, Conflict)>> {
    let parsed = signed.body;
    if parsed.terminal_id != signed.terminal {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "a terminal uploads only its own batches").into());
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
    Ok(Stored { created: !report.duplicate, body: report })
}

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// The answer to an authorised top-up: MAC2 for CREDIT FOR LOAD with this host date-time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TopupAuthorised {
    /// 8 hex digits.
    pub mac2: String,
    /// The host date-time of CREDIT FOR LOAD (14 hex digits, BCD `YYYYMMDDhhmmss`).
    pub date_time: String,
}

async fn authorise_topup(
    State(state): State<AppState>,
    signed: Signed<TopupAuthorise>,
) -> Result<Json<TopupAuthorised>, Fails<(Forbidden, Conflict, Unprocessable, Unavailable)>> {
    let (terminal, request) = (signed.terminal, signed.body);
    let card = sqlx::query("SELECT status, key_set, online_counter FROM cards WHERE card_serial = $1")
        .bind(request.serial.to_hex())
        .fetch_optional(&state.db.pool)
        .await?
        .ok_or_else(|| ApiError::field("card_serial", "no such card"))?;
    if card.try_get::<String, _>("status")? != "active" {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "the card is not active (lost or replaced)").into());
    }
    if i64::from(request.online_counter) < card.try_get::<i64, _>("online_counter")? {
        return Err(ApiError::field("online_counter", "behind the card's cleared loads").into());
    }
    let key_set: String = card.try_get("key_set")?;
    // The same authorisation again (a retry) gets the same host date-time, so the same MAC2.
    // A voided one leaves the counter free: the card's online counter did not move.
    let existing = sqlx::query(
        "SELECT terminal_number, balance_before, amount_fen, transaction_type, host_date_time, state FROM topups
         WHERE card_serial = $1 AND online_counter = $2",
    )
    .bind(request.serial.to_hex())
    .bind(i64::from(request.online_counter))
    .fetch_optional(&state.db.pool)
    .await?;
    let voided = match &existing {
        Some(row) => row.try_get::<String, _>("state")? == "voided",
        None => false,
    };
    let at = match &existing {
        Some(row) if !voided => {
            let same = row.try_get::<String, _>("terminal_number")? == terminal.to_string()
                && row.try_get::<i64, _>("balance_before")? == i64::from(request.balance_before.0)
                && row.try_get::<i64, _>("amount_fen")? == i64::from(request.amount.0)
                && row.try_get::<i64, _>("transaction_type")? == i64::from(request.kind.code());
            if !same {
                return Err(ApiError::new(StatusCode::CONFLICT, "another top-up holds this online counter").into());
            }
            stored_date_time(&row.try_get::<String, _>("host_date_time")?)?
        }
        _ => state.now(),
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
            return Err(ApiError::field("mac1", "the card's MAC1 is wrong").into());
        }
        Err(error) if error.code() == Some(hsm_sim::ErrorCode::InvalidIndex) => {
            return Err(ApiError::field("key_index", "no load key of that index").into());
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
    } else if voided {
        // A new authorisation of a voided counter: only if it is still voided (a concurrent one wins once).
        let taken = sqlx::query(
            "UPDATE topups SET terminal_number = $3, balance_before = $4, amount_fen = $5, transaction_type = $6,
             host_date_time = $7, state = 'authorised'
             WHERE card_serial = $1 AND online_counter = $2 AND state = 'voided'",
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
        if taken.rows_affected() != 1 {
            return Err(ApiError::new(StatusCode::CONFLICT, "another top-up took this online counter").into());
        }
    }
    state.metrics.topups_authorised.fetch_add(1, Ordering::Relaxed);
    tracing::info!(card = %request.serial.masked(), amount_fen = request.amount.0, "top-up authorised");
    Ok(Json(TopupAuthorised { mac2: hex::encode_upper(mac2), date_time: hex::encode(at.to_bytes()) }))
}

fn stored_date_time(text: &str) -> ApiResult<CardDateTime> {
    hex::decode(text)
        .ok()
        .and_then(|bytes| CardDateTime::from_slice(&bytes).ok())
        .ok_or_else(|| Error::Inconsistent("stored host date-time".into()).into())
}

/// The answer to a confirmed top-up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TopupConfirmed {
    /// `confirmed`.
    pub state: String,
    /// The day run-day clears the load in (`YYYY-MM-DD`).
    pub business_day: String,
}

async fn confirm_topup(
    State(state): State<AppState>,
    signed: Signed<TopupConfirm>,
) -> Result<Json<TopupConfirmed>, Fails<(NotFound, Forbidden, Conflict, Unprocessable, Unavailable)>> {
    let (terminal, TopupConfirm { serial, online_counter, tac }) = (signed.terminal, signed.body);
    let row = sqlx::query(
        "SELECT t.terminal_number AS terminal_number, t.balance_before AS balance_before, t.amount_fen AS amount_fen,
         t.transaction_type AS transaction_type, t.host_date_time AS host_date_time, t.state AS state,
         c.key_set AS key_set, c.card_type AS card_type
         FROM topups t JOIN cards c ON c.card_serial = t.card_serial
         WHERE t.card_serial = $1 AND t.online_counter = $2",
    )
    .bind(serial.to_hex())
    .bind(i64::from(online_counter))
    .fetch_optional(&state.db.pool)
    .await?
    .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no authorised top-up for this card and counter"))?;
    if row.try_get::<String, _>("terminal_number")? != terminal.to_string() {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "another terminal authorised this top-up").into());
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
        return Err(ApiError::field("tac", "the card's load TAC is wrong").into());
    }
    // The card's TAC proves CREDIT FOR LOAD happened: a void before it was a mistake
    // of the terminal's, and the card's money is what counts. The state moves first
    // (a void racing with this answers 409 from now on), then the load is stored;
    // a confirmation cut between the two is repeated by the terminal and stores it then.
    if row.try_get::<String, _>("state")? == "voided" {
        tracing::warn!(card = %serial.masked(), online_counter, "a voided top-up is confirmed by the card's load TAC");
    }
    sqlx::query("UPDATE topups SET state = 'confirmed' WHERE card_serial = $1 AND online_counter = $2")
        .bind(serial.to_hex())
        .bind(i64::from(online_counter))
        .execute(&state.db.pool)
        .await?;
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
    state.metrics.topups_confirmed.fetch_add(1, Ordering::Relaxed);
    Ok(Json(TopupConfirmed { state: "confirmed".into(), business_day: BusinessDay::of(&at).to_string() }))
}

/// The answer to a voided top-up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TopupVoided {
    /// `voided`.
    pub state: String,
    /// False when it was voided before (the same answer again).
    pub voided_now: bool,
}

/// Voids an authorised top-up whose CREDIT FOR LOAD never happened on the card:
/// only the top-up's state changes (no shadow account, no ledger, no record),
/// and its online counter is free for a new authorisation. Idempotent; 409 when
/// confirmed, or when the counter now holds another authorisation.
async fn void_topup(
    State(state): State<AppState>,
    signed: Signed<TopupVoid>,
) -> Result<Json<TopupVoided>, Fails<(NotFound, Forbidden, Conflict)>> {
    let (terminal, TopupVoid { serial, online_counter, at }) = (signed.terminal, signed.body);
    let date_time = hex::encode(at.to_bytes());
    let row = sqlx::query(
        "SELECT terminal_number, host_date_time, state FROM topups WHERE card_serial = $1 AND online_counter = $2",
    )
    .bind(serial.to_hex())
    .bind(i64::from(online_counter))
    .fetch_optional(&state.db.pool)
    .await?
    .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no authorised top-up for this card and counter"))?;
    if row.try_get::<String, _>("terminal_number")? != terminal.to_string() {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "another terminal authorised this top-up").into());
    }
    if row.try_get::<String, _>("host_date_time")? != date_time {
        return Err(
            ApiError::new(StatusCode::CONFLICT, "this counter holds another authorisation (other date-time)").into()
        );
    }
    let voided = |voided_now| Json(TopupVoided { state: "voided".into(), voided_now });
    match row.try_get::<String, _>("state")?.as_str() {
        "voided" => return Ok(voided(false)),
        "confirmed" => {
            return Err(ApiError::new(StatusCode::CONFLICT, "the top-up is confirmed: the card was loaded").into());
        }
        _ => {}
    }
    // Guarded by the state read: a confirmation racing with this wins or loses whole.
    let done = sqlx::query(
        "UPDATE topups SET state = 'voided'
         WHERE card_serial = $1 AND online_counter = $2 AND host_date_time = $3 AND state = 'authorised'",
    )
    .bind(serial.to_hex())
    .bind(i64::from(online_counter))
    .bind(&date_time)
    .execute(&state.db.pool)
    .await?;
    if done.rows_affected() != 1 {
        return Err(ApiError::new(StatusCode::CONFLICT, "the top-up changed meanwhile (confirmed or voided)").into());
    }
    state.metrics.topups_voided.fetch_add(1, Ordering::Relaxed);
    tracing::info!(card = %serial.masked(), online_counter, "top-up voided");
    Ok(voided(true))
}

/// `?since=N`: blacklist changes after version N (default 0).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SinceQuery {
    pub since: Option<i64>,
}

async fn blacklist(
    State(state): State<AppState>,
    QueryParams(query): QueryParams<SinceQuery>,
    _signed: Signed<()>,
) -> Result<Json<Vec<crate::registry::BlacklistEntry>>, Fails<(Unprocessable,)>> {
    let since = query.since.unwrap_or(0);
    if since < 0 {
        return Err(ApiError::field("since", "must not be negative").into());
    }
    Ok(Json(crate::registry::blacklist_since(&state.db, since).await?))
}

/// A card in the path.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct CardPath {
    /// 16 hex digits.
    pub serial: String,
}

/// A business day in the path.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct DayPath {
    /// `YYYY-MM-DD`.
    pub date: String,
}

/// A transaction in the path.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct TransactionPath {
    /// A positive whole number.
    pub transaction_id: String,
}

/// The answer to a loss report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LossReported {
    /// The blacklist version that lists the card.
    pub blacklist_version: i64,
}

async fn report_loss(
    State(state): State<AppState>,
    _token: Token<Issuers>,
    Params(path): Params<CardPath>,
) -> Result<Json<LossReported>, Fails<(NotFound, Unprocessable)>> {
    let serial = serial_from_path(&path.serial)?;
    let version = crate::registry::report_loss(&state.db, &serial, &state.now()).await?;
    Ok(Json(LossReported { blacklist_version: version }))
}

fn serial_from_path(serial: &str) -> ApiResult<ApplicationSerial> {
    ApplicationSerial::parse_hex(serial)
        .ok()
        .filter(|_| serial.len() == 16)
        .ok_or_else(|| ApiError::field("serial", "must be 16 hex digits"))
}

/// The answer to an issued card.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct IssuedCard {
    pub card_serial: String,
    /// The new card image the personalisation station wrote, when the request
    /// asked for personalisation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub card_image: Option<String>,
}

async fn issue_card(
    State(state): State<AppState>,
    _token: Token<Issuers>,
    Body(request): Body<IssueCard>,
) -> Result<Created<IssuedCard>, Fails<(Conflict, Unprocessable, Unavailable)>> {
    let key = state
        .citizen_key
        .clone()
        .ok_or_else(|| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "this server does not issue cards"))?;
    if let Some(personalisation) = &request.personalisation {
        let station = state
            .personaliser
            .clone()
            .ok_or_else(|| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "this server does not personalise cards"))?;
        let card_type = card_host::card::CardType::from_code(request.card_type)
            .ok_or_else(|| ApiError::field("card_type", "not a card type code (1 to 5)"))?;
        let holder = personalisation.cardholder(request.serial, card_type, &request.name, &request.citizen_id)?;
        let options = card_host::issue::IssueOptions {
            serial: Some(request.serial),
            card_type: Some(card_type),
            initial_balance: request.initial_balance,
            issued_at: state.now(),
            ..card_host::issue::IssueOptions::default()
        };
        let issued = station.issue(&state.db, &state.hsm, &key, &request.key_set, &holder, &options).await?;
        return Ok(Created(IssuedCard {
            card_serial: issued.serial.to_hex(),
            card_image: Some(issued.image.display().to_string()),
        }));
    }
    let card = crate::registry::NewCard {
        serial: request.serial,
        card_type: request.card_type,
        key_set: request.key_set,
        citizen_id: request.citizen_id,
        name: request.name,
        initial_balance: request.initial_balance,
        issued_at: state.now(),
    };
    crate::registry::issue_card(&state.db, &key, &card).await?;
    Ok(Created(IssuedCard { card_serial: card.serial.to_hex(), card_image: None }))
}

async fn replace_card(
    State(state): State<AppState>,
    _token: Token<Issuers>,
    Params(path): Params<CardPath>,
    Body(request): Body<ReplaceCard>,
) -> Result<Json<ReplacedCard>, Fails<(NotFound, Conflict, Unprocessable, Unavailable)>> {
    let old = serial_from_path(&path.serial)?;
    let new = crate::registry::ReplacementCard {
        serial: request.serial,
        card_type: request.card_type,
        key_set: request.key_set,
        issued_at: state.now(),
    };
    let Some(personalisation) = request.personalisation else {
        let replacement = crate::registry::replace_card(&state.db, &old, &new).await?;
        return Ok(Json(ReplacedCard::from((replacement, None))));
    };
    let station = state
        .personaliser
        .clone()
        .ok_or_else(|| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "this server does not personalise cards"))?;
    let key = state
        .citizen_key
        .clone()
        .ok_or_else(|| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "this server does not issue cards"))?;
    let card_type = card_host::card::CardType::from_code(new.card_type)
        .ok_or_else(|| ApiError::field("card_type", "not a card type code (1 to 5)"))?;
    // The name comes from clearing's records; the station fills it in.
    let holder = personalisation.cardholder.cardholder(new.serial, card_type, "-", &personalisation.citizen_id)?;
    let (replacement, personalised) = station.replace(&state.db, &state.hsm, &key, &old, &new, &holder).await?;
    Ok(Json(ReplacedCard::from((replacement, Some(personalised.image.display().to_string())))))
}

/// The answer to a replacement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ReplacedCard {
    pub balance_moved_fen: i64,
    /// The blacklist version that lists the old card.
    pub blacklist_version: i64,
    /// The new card's image, when the request asked for personalisation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub card_image: Option<String>,
}

impl From<(crate::registry::Replacement, Option<String>)> for ReplacedCard {
    fn from((replacement, card_image): (crate::registry::Replacement, Option<String>)) -> Self {
        ReplacedCard {
            balance_moved_fen: replacement.balance_moved_fen,
            blacklist_version: replacement.blacklist_version,
            card_image,
        }
    }
}

async fn day_summary(
    State(state): State<AppState>,
    _token: Token<Operators>,
    Params(path): Params<DayPath>,
) -> Result<Json<crate::run_day::DaySummary>, Fails<(Unprocessable,)>> {
    let day = BusinessDay::parse(&path.date)?;
    Ok(Json(crate::run_day::summary(&state.db, &day.to_string()).await?))
}

/// The most records in a card history answer, and terminals in a status answer.
pub const HISTORY_RECORDS_MAX: i64 = 1_000;
pub const TERMINALS_MAX: i64 = 10_000;

/// A card as clearing holds it, for operators: its shadow account and its
/// cardholder, whose citizen ID only ever comes back masked (it is stored as
/// a keyed hash and a masked form: no query can read it whole).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CardAccount {
    pub card_serial: String,
    pub card_type: i64,
    /// `active`, `lost` or `replaced`.
    pub status: String,
    /// The card that replaced it, if any.
    pub replaced_by: Option<String>,
    /// Unix seconds (of the card's local date-time) it was issued.
    pub issued_at: i64,
    /// The shadow account: what clearing believes the card holds.
    pub balance_fen: i64,
    /// `balance_fen` as yuan, two decimals.
    pub balance_yuan: String,
    /// The next purchase's and the next load's expected counters.
    pub offline_counter: i64,
    pub online_counter: i64,
    /// None for a card issued without a cardholder.
    pub cardholder_name: Option<String>,
    /// Masked, e.g. `310*************34`.
    pub citizen_id_masked: Option<String>,
}

async fn card_account(
    State(state): State<AppState>,
    _token: Token<Operators>,
    Params(path): Params<CardPath>,
) -> Result<Json<CardAccount>, Fails<(NotFound, Unprocessable)>> {
    let serial = serial_from_path(&path.serial)?;
    let row = sqlx::query(
        "SELECT c.card_serial, c.card_type, c.status, c.replaced_by, c.issued_at, c.balance_fen, c.offline_counter,
         c.online_counter, h.name, h.citizen_id_masked
         FROM cards c LEFT JOIN cardholders h ON h.cardholder_id = c.cardholder_id WHERE c.card_serial = $1",
    )
    .bind(serial.to_hex())
    .fetch_optional(&state.db.pool)
    .await?
    .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no such card"))?;
    let balance_fen: i64 = row.try_get("balance_fen")?;
    Ok(Json(CardAccount {
        card_serial: row.try_get("card_serial")?,
        card_type: row.try_get("card_type")?,
        status: row.try_get("status")?,
        replaced_by: row.try_get("replaced_by")?,
        issued_at: row.try_get("issued_at")?,
        balance_fen,
        balance_yuan: crate::money::yuan(balance_fen),
        offline_counter: row.try_get("offline_counter")?,
        online_counter: row.try_get("online_counter")?,
        cardholder_name: row.try_get("name")?,
        citizen_id_masked: row.try_get("citizen_id_masked")?,
    }))
}

/// One record of a card's history, for operators.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
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
    _token: Token<Operators>,
    Params(path): Params<CardPath>,
) -> Result<Json<Vec<HistoryEntry>>, Fails<(Unprocessable,)>> {
    let serial = serial_from_path(&path.serial)?;
    let rows = sqlx::query(
        "SELECT t.transaction_id AS transaction_id, t.kind AS kind, t.counter AS counter,
         t.balance_before AS balance_before, t.amount_fen AS amount_fen, t.terminal_number AS terminal_number,
         t.occurred_at AS occurred_at, COALESCE(c.state, 'pending') AS state, q.reason AS reason
         FROM transactions t LEFT JOIN clearings c ON c.transaction_id = t.transaction_id
         LEFT JOIN quarantine q ON q.transaction_id = t.transaction_id
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

/// A terminal's status, for operators.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TerminalStatus {
    pub terminal_number: String,
    pub merchant_id: String,
    pub status: String,
    /// Unix seconds of its last batch, if any.
    pub last_upload_at: Option<i64>,
    pub pending_records: i64,
}

async fn terminal_status(
    State(state): State<AppState>,
    _token: Token<Operators>,
) -> Result<Json<Vec<TerminalStatus>>, Fails<()>> {
    // The pending records counted for all terminals in one pass over the
    // records, not one pass per terminal (no index on the terminal number:
    // 3 terminals and 1,000,000 records, 0.54 -> 0.36 s on SQLite, 0.53 ->
    // 0.21 s on PostgreSQL; the old form grew with the number of terminals).
    let rows = sqlx::query(
        "SELECT m.terminal_number AS terminal_number, m.merchant_id AS merchant_id, m.status AS status,
         m.last_upload_at AS last_upload_at, CAST(COALESCE(p.pending_records, 0) AS BIGINT) AS pending_records
         FROM terminals m LEFT JOIN
           (SELECT t.terminal_number AS terminal_number, COUNT(*) AS pending_records FROM transactions t
            WHERE NOT EXISTS (SELECT 1 FROM clearings c WHERE c.transaction_id = t.transaction_id)
            GROUP BY t.terminal_number) AS p ON p.terminal_number = m.terminal_number
         ORDER BY m.terminal_number LIMIT $1",
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

/// The answer to a released record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Released {
    pub transaction_id: i64,
    /// `pending`.
    pub state: String,
}

async fn release_quarantined(
    State(state): State<AppState>,
    _token: Token<Operators>,
    Params(path): Params<TransactionPath>,
) -> Result<Json<Released>, Fails<(NotFound, Unprocessable)>> {
    let id: i64 = path
        .transaction_id
        .parse()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiError::field("transaction_id", "a positive whole number"))?;
    crate::registry::release_quarantined(&state.db, id, "operator", unix_now()).await?;
    Ok(Json(Released { transaction_id: id, state: "pending".into() }))
}

/// The day's settlement file as `run-day` wrote it (CSV, derived from the
/// database alone, so the same bytes), signed by the HSM: `X-Settlement-Sha256`
/// and `X-Settlement-Signature` (Ed25519 over the SHA-256, as in the manifest).
async fn day_settlement(
    State(state): State<AppState>,
    _token: Token<Operators>,
    Params(path): Params<DayPath>,
) -> Result<SettlementCsv, Fails<(NotFound, Unprocessable, Unavailable)>> {
    let day = BusinessDay::parse(&path.date)?.to_string();
    let lines = crate::run_day::settlements(&state.db, &day).await?;
    if lines.is_empty() {
        return Err(ApiError::new(StatusCode::NOT_FOUND, format!("no settlement for {day}")).into());
    }
    let csv = crate::run_day::settlement_csv(&day, &lines);
    let signature =
        state.hsm.sign_settlement(crate::run_day::SIGNING_KEY_DEFAULT, csv.as_bytes()).await.map_err(Error::Hsm)?;
    Ok(SettlementCsv {
        sha256_hex: hex::encode(hsm_sim::settlement_digest(csv.as_bytes())),
        signature_hex: hex::encode(signature),
        csv,
    })
}

/// The day's grey records (purchases terminals could not settle with the card)
/// and what became of each, first [`QUARANTINE_PAGE_MAX`].
async fn day_grey_records(
    State(state): State<AppState>,
    _token: Token<Operators>,
    Params(path): Params<DayPath>,
) -> Result<Json<Vec<crate::grey::GreyRecordView>>, Fails<(Unprocessable,)>> {
    let day = BusinessDay::parse(&path.date)?;
    Ok(Json(crate::grey::of_day(&state.db, &day.to_string(), QUARANTINE_PAGE_MAX).await?))
}

/// One quarantined record, for operators.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
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
    _token: Token<Operators>,
    Params(path): Params<DayPath>,
) -> Result<Json<Vec<QuarantineEntry>>, Fails<(Unprocessable,)>> {
    let day = BusinessDay::parse(&path.date)?;
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

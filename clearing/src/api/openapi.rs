//! What makes `/openapi.json` follow the code: the extractors and answer types
//! of the handlers document themselves (aide), so the document is generated from
//! the routes' own types and cannot drift.
//!
//! - [`Signed<B>`]: a terminal-signed request with body `B` (401, 403, 413, and
//!   422 when `B` is parsed); [`Token<R>`]: a bearer token of role `R` (401, 403);
//!   [`Body<B>`]: a parsed body (413, 422); [`Params<T>`], [`QueryParams<T>`]:
//!   path and query parameters (422).
//! - [`Fails<R>`]: a handler's refusals, `R` a tuple of [`Refusal`] markers
//!   (`Fails<(NotFound, Conflict)>`); every route also documents 500. A refusal
//!   a handler gives that its type does not declare is a bug: logged, and a
//!   debug assertion in tests.
//! - [`Created<T>`], [`Stored<T>`], [`SettlementCsv`], [`OpenApiJson`]: answers
//!   whose status or media type is not plain JSON 200.

use std::marker::PhantomData;
use std::sync::Arc;

use aide::generate::GenContext;
use aide::openapi::{MediaType, Operation, Response as ResponseDoc, SchemaObject};
use aide::{OperationInput, OperationOutput};
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use card_host::model::TerminalNumber;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::bodies::RequestBody;
use super::{ApiError, AppState, Role};
use crate::batch::BATCH_BYTES_MAX;
use crate::error::Error;

/// The body of every refusal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ErrorBody {
    /// What was wrong.
    pub error: String,
    /// The request field that was wrong, for a 422.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// A status a route can refuse with, and when.
pub trait Refusal {
    const STATUS: u16;
    const WHEN: &'static str;
}

macro_rules! refusal {
    ($(#[$doc:meta])* $name:ident, $status:expr, $when:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy)]
        pub struct $name;
        impl Refusal for $name {
            const STATUS: u16 = $status;
            const WHEN: &'static str = $when;
        }
    };
}

refusal!(Unauthorised, 401, "no valid terminal signature or bearer token");
refusal!(Forbidden, 403, "not allowed for this terminal, token or card");
refusal!(NotFound, 404, "no such resource");
refusal!(Conflict, 409, "conflicts with what is stored");
refusal!(TooLarge, 413, "the body is larger than 8 MiB");
refusal!(Unprocessable, 422, "a field does not parse or is out of range (named in `field`)");
refusal!(Internal, 500, "internal error (logged)");
refusal!(Unavailable, 503, "the HSM is unreachable, or the service is not configured for this");

/// A set of refusals: a tuple of [`Refusal`] markers.
pub trait Refusals {
    fn list() -> Vec<(u16, &'static str)>;
}

impl Refusals for () {
    fn list() -> Vec<(u16, &'static str)> {
        Vec::new()
    }
}

macro_rules! refusals {
    ($($r:ident),+) => {
        impl<$($r: Refusal),+> Refusals for ($($r,)+) {
            fn list() -> Vec<(u16, &'static str)> {
                vec![$(($r::STATUS, $r::WHEN)),+]
            }
        }
    };
}

refusals!(A);
refusals!(A, B);
refusals!(A, B, C);
refusals!(A, B, C, D);
refusals!(A, B, C, D, E);
refusals!(A, B, C, D, E, F);

fn error_response(ctx: &mut GenContext, when: &str) -> ResponseDoc {
    let json_schema = ctx.schema.subschema_for::<ErrorBody>();
    let mut response = ResponseDoc { description: when.to_owned(), ..Default::default() };
    response.content.insert(
        "application/json".into(),
        MediaType {
            schema: Some(SchemaObject { json_schema, example: None, external_docs: None }),
            ..Default::default()
        },
    );
    response
}

fn responses(ctx: &mut GenContext, list: Vec<(u16, &'static str)>) -> Vec<(Option<u16>, ResponseDoc)> {
    list.into_iter().map(|(status, when)| (Some(status), error_response(ctx, when))).collect()
}

/// A handler's refusal, its possible statuses named by the type.
#[derive(Debug)]
pub struct Fails<R>(ApiError, PhantomData<fn() -> R>);

impl<R> Fails<R> {
    pub fn error(&self) -> &ApiError {
        &self.0
    }
}

impl<R> From<ApiError> for Fails<R> {
    fn from(error: ApiError) -> Self {
        Fails(error, PhantomData)
    }
}

impl<R> From<Error> for Fails<R> {
    fn from(error: Error) -> Self {
        Fails(error.into(), PhantomData)
    }
}

impl<R> From<sqlx::Error> for Fails<R> {
    fn from(error: sqlx::Error) -> Self {
        Fails(error.into(), PhantomData)
    }
}

impl<R: Refusals> IntoResponse for Fails<R> {
    fn into_response(self) -> Response {
        let status = self.0.status.as_u16();
        if status != Internal::STATUS && !R::list().iter().any(|(s, _)| *s == status) {
            tracing::error!(status, "a handler refused with a status its type does not document");
            debug_assert!(false, "undocumented status {status}: {}", self.0.message);
        }
        self.0.into_response()
    }
}

impl<R: Refusals> OperationOutput for Fails<R> {
    type Inner = ErrorBody;

    fn inferred_responses(ctx: &mut GenContext, _operation: &mut Operation) -> Vec<(Option<u16>, ResponseDoc)> {
        let mut list = R::list();
        list.push((Internal::STATUS, Internal::WHEN));
        responses(ctx, list)
    }
}

/// Extractors refuse with [`ApiError`]; what they can refuse is documented by
/// their [`OperationInput`] impls.
impl OperationOutput for ApiError {
    type Inner = ErrorBody;
}

fn read_body_error() -> ApiError {
    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "the body is larger than 8 MiB or could not be read")
}

fn document_body<B: RequestBody>(ctx: &mut GenContext, operation: &mut Operation) {
    if B::FIELDS.is_empty() {
        return;
    }
    let json_schema = ctx.schema.subschema_for::<B::Wire>();
    let mut body = aide::openapi::RequestBody { required: true, ..Default::default() };
    body.content.insert(
        "application/json".into(),
        MediaType {
            schema: Some(SchemaObject { json_schema, example: None, external_docs: None }),
            ..Default::default()
        },
    );
    aide::operation::set_body(ctx, operation, body);
}

fn body_refusals<B: RequestBody>() -> Vec<(u16, &'static str)> {
    if B::FIELDS.is_empty() {
        Vec::new()
    } else {
        vec![(TooLarge::STATUS, TooLarge::WHEN), (Unprocessable::STATUS, Unprocessable::WHEN)]
    }
}

fn require_security(operation: &mut Operation, scheme: &str) {
    if !operation.security.iter().any(|s| s.contains_key(scheme)) {
        let mut requirement = aide::openapi::SecurityRequirement::default();
        requirement.insert(scheme.to_owned(), Vec::new());
        operation.security.push(requirement);
    }
}

/// The security scheme of terminal signatures.
pub const TERMINAL_SIGNATURE: &str = "terminal_signature";

/// A request signed by an active terminal, with its parsed body.
#[derive(Debug)]
pub struct Signed<B> {
    pub terminal: TerminalNumber,
    pub body: B,
}

impl<B: RequestBody + Send> FromRequest<AppState> for Signed<B> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        let (parts, body) = request.into_parts();
        let bytes = axum::body::to_bytes(body, BATCH_BYTES_MAX).await.map_err(|_| read_body_error())?;
        let terminal = super::authenticate_terminal(state, &parts.method, &parts.uri, &parts.headers, &bytes).await?;
        Ok(Signed { terminal, body: B::parse(&bytes)? })
    }
}

impl<B: RequestBody> OperationInput for Signed<B> {
    fn operation_input(ctx: &mut GenContext, operation: &mut Operation) {
        require_security(operation, TERMINAL_SIGNATURE);
        document_body::<B>(ctx, operation);
    }

    fn inferred_early_responses(ctx: &mut GenContext, _operation: &mut Operation) -> Vec<(Option<u16>, ResponseDoc)> {
        let mut list = vec![
            (Unauthorised::STATUS, "no terminal signature, an unknown terminal or a bad signature"),
            (Forbidden::STATUS, "the terminal is revoked"),
        ];
        list.extend(body_refusals::<B>());
        responses(ctx, list)
    }
}

/// A role a bearer token must carry, as a type.
pub trait RoleKind {
    const ROLE: Role;
    /// Its security scheme's name in the document.
    const SCHEME: &'static str;
}

/// Operators' tokens.
#[derive(Debug)]
pub struct Operators;
impl RoleKind for Operators {
    const ROLE: Role = Role::Operator;
    const SCHEME: &'static str = "operator_token";
}

/// The issuer's tokens.
#[derive(Debug)]
pub struct Issuers;
impl RoleKind for Issuers {
    const ROLE: Role = Role::Issuer;
    const SCHEME: &'static str = "issuer_token";
}

/// A request carrying a bearer token of role `R`.
#[derive(Debug)]
pub struct Token<R>(PhantomData<fn() -> R>);

impl<R: RoleKind> FromRequestParts<AppState> for Token<R> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        super::authorise_token(state, &parts.headers, R::ROLE)?;
        Ok(Token(PhantomData))
    }
}

impl<R: RoleKind> OperationInput for Token<R> {
    fn operation_input(_ctx: &mut GenContext, operation: &mut Operation) {
        require_security(operation, R::SCHEME);
    }

    fn inferred_early_responses(ctx: &mut GenContext, _operation: &mut Operation) -> Vec<(Option<u16>, ResponseDoc)> {
        responses(
            ctx,
            vec![
                (Unauthorised::STATUS, "no bearer token, or an unknown one"),
                (Forbidden::STATUS, "the token is of another role"),
            ],
        )
    }
}

/// A parsed request body (routes whose caller is authenticated by a token).
#[derive(Debug)]
pub struct Body<B>(pub B);

impl<B: RequestBody + Send> FromRequest<AppState> for Body<B> {
    type Rejection = ApiError;

    async fn from_request(request: Request, _state: &AppState) -> Result<Self, ApiError> {
        let bytes = axum::body::to_bytes(request.into_body(), BATCH_BYTES_MAX).await.map_err(|_| read_body_error())?;
        Ok(Body(B::parse(&bytes)?))
    }
}

impl<B: RequestBody> OperationInput for Body<B> {
    fn operation_input(ctx: &mut GenContext, operation: &mut Operation) {
        document_body::<B>(ctx, operation);
    }

    fn inferred_early_responses(ctx: &mut GenContext, _operation: &mut Operation) -> Vec<(Option<u16>, ResponseDoc)> {
        responses(ctx, body_refusals::<B>())
    }
}

/// Path parameters; one that does not decode is a 422 naming `path`.
#[derive(Debug)]
pub struct Params<T>(pub T);

impl<T, S> FromRequestParts<S> for Params<T>
where
    T: serde::de::DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Path(value) = axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::field("path", e.body_text()))?;
        Ok(Params(value))
    }
}

impl<T: JsonSchema> OperationInput for Params<T> {
    fn operation_input(ctx: &mut GenContext, operation: &mut Operation) {
        axum::extract::Path::<T>::operation_input(ctx, operation);
    }

    fn inferred_early_responses(ctx: &mut GenContext, _operation: &mut Operation) -> Vec<(Option<u16>, ResponseDoc)> {
        responses(ctx, vec![(Unprocessable::STATUS, "a path parameter does not parse")])
    }
}

/// Query parameters; a query that does not decode is a 422 naming `query`.
#[derive(Debug)]
pub struct QueryParams<T>(pub T);

impl<T, S> FromRequestParts<S> for QueryParams<T>
where
    T: serde::de::DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let axum::extract::Query(value) =
            axum::extract::Query::<T>::try_from_uri(&parts.uri).map_err(|e| ApiError::field("query", e.body_text()))?;
        Ok(QueryParams(value))
    }
}

impl<T: JsonSchema> OperationInput for QueryParams<T> {
    fn operation_input(ctx: &mut GenContext, operation: &mut Operation) {
        axum::extract::Query::<T>::operation_input(ctx, operation);
    }

    fn inferred_early_responses(ctx: &mut GenContext, _operation: &mut Operation) -> Vec<(Option<u16>, ResponseDoc)> {
        responses(ctx, vec![(Unprocessable::STATUS, "a query parameter does not parse")])
    }
}

fn json_response<T: JsonSchema>(ctx: &mut GenContext, operation: &mut Operation) -> Option<ResponseDoc> {
    <axum::Json<T> as OperationOutput>::operation_response(ctx, operation)
}

/// A JSON answer with 201 Created.
#[derive(Debug)]
pub struct Created<T>(pub T);

impl<T: Serialize> IntoResponse for Created<T> {
    fn into_response(self) -> Response {
        (StatusCode::CREATED, axum::Json(self.0)).into_response()
    }
}

impl<T: JsonSchema> OperationOutput for Created<T> {
    type Inner = T;

    fn inferred_responses(ctx: &mut GenContext, operation: &mut Operation) -> Vec<(Option<u16>, ResponseDoc)> {
        json_response::<T>(ctx, operation).map(|r| vec![(Some(201), r)]).unwrap_or_default()
    }
}

/// A JSON answer that is 201 when stored now and 200 when stored before (a repeat).
#[derive(Debug)]
pub struct Stored<T> {
    pub created: bool,
    pub body: T,
}

impl<T: Serialize> IntoResponse for Stored<T> {
    fn into_response(self) -> Response {
        let status = if self.created { StatusCode::CREATED } else { StatusCode::OK };
        (status, axum::Json(self.body)).into_response()
    }
}

impl<T: JsonSchema> OperationOutput for Stored<T> {
    type Inner = T;

    fn inferred_responses(ctx: &mut GenContext, operation: &mut Operation) -> Vec<(Option<u16>, ResponseDoc)> {
        let Some(response) = json_response::<T>(ctx, operation) else {
            return Vec::new();
        };
        let mut repeat = response.clone();
        repeat.description = "stored before: the first answer again".into();
        vec![(Some(201), response), (Some(200), repeat)]
    }
}

/// The day's settlement file (CSV) with its SHA-256 and the HSM's signature in headers.
#[derive(Debug)]
pub struct SettlementCsv {
    pub csv: String,
    pub sha256_hex: String,
    pub signature_hex: String,
}

impl IntoResponse for SettlementCsv {
    fn into_response(self) -> Response {
        (
            [
                (axum::http::header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
                (axum::http::HeaderName::from_static("x-settlement-sha256"), self.sha256_hex),
                (axum::http::HeaderName::from_static("x-settlement-signature"), self.signature_hex),
            ],
            self.csv,
        )
            .into_response()
    }
}

impl OperationOutput for SettlementCsv {
    type Inner = String;

    fn inferred_responses(_ctx: &mut GenContext, _operation: &mut Operation) -> Vec<(Option<u16>, ResponseDoc)> {
        let mut response = ResponseDoc {
            description: "the settlement file as run-day wrote it; headers X-Settlement-Sha256 and \
                          X-Settlement-Signature (the HSM's Ed25519 signature over the SHA-256)"
                .into(),
            ..Default::default()
        };
        response.content.insert("text/csv".into(), MediaType::default());
        vec![(Some(200), response)]
    }
}

/// The OpenAPI document, serialised once.
#[derive(Debug, Clone)]
pub struct OpenApiJson(pub Arc<Bytes>);

impl IntoResponse for OpenApiJson {
    fn into_response(self) -> Response {
        ([(axum::http::header::CONTENT_TYPE, "application/json")], Bytes::clone(&self.0)).into_response()
    }
}

impl OperationOutput for OpenApiJson {
    type Inner = ();

    fn inferred_responses(_ctx: &mut GenContext, _operation: &mut Operation) -> Vec<(Option<u16>, ResponseDoc)> {
        let mut response = ResponseDoc {
            description: "this OpenAPI document, generated from the routes".into(),
            ..Default::default()
        };
        response.content.insert("application/json".into(), MediaType::default());
        vec![(Some(200), response)]
    }
}

//! The fleet server's routes (the table is in [`crate::api`]) and who may call them.
//!
//! Devices are recognised by the fingerprint of the certificate their TLS handshake verified,
//! looked up in the database on every request (so a revocation holds at once, on every
//! server); administrators by a bearer API token whose role must reach the route's. Bodies
//! (already buffered by the connection, at most 64 KiB) are held to each route's limit (413)
//! only after the caller is known, and parsed into types that refuse unknown fields; a parse
//! error names the field (400).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Extension, Json, Router};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::{dashboard, rollouts, PeerCert};
use crate::api::{
    self, ChannelRequest, CreateTokenRequest, EnrollRequest, EnrollResponse,
    EnrollmentTokensRequest, ErrorBody, Report, TagsRequest,
};
use crate::db::{self, devices::RateDecision, Actor, Db};
use crate::pki::{self, FleetCa};
use crate::signer::Signer;
use crate::token::{self, Role};

/// Largest admin request body (bytes).
pub(super) const MAX_ADMIN_BYTES: usize = 64 * 1024;
/// How long a client may take to send a body.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest enrollment token lifetime an operator may ask for (a year).
const MAX_ENROLL_TTL: u64 = 365 * 24 * 3600;

/// What every handler shares.
#[derive(Clone)]
pub struct State {
    /// The database.
    pub db: Db,
    /// The fleet CA (signs enrolled devices' certificates).
    pub ca: Arc<FleetCa>,
    /// Reports per device per minute.
    pub reports_per_minute: i64,
    /// The repository's signer (`serve --repo`); without it rollouts cannot change.
    pub signer: Option<Signer>,
}

/// An error answer: a status and a message ([`ErrorBody`]).
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub(super) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(ErrorBody {
                error: self.message,
            }),
        )
            .into_response();
        match self.status {
            StatusCode::UNAUTHORIZED => {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            StatusCode::TOO_MANY_REQUESTS => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            }
            _ => {}
        }
        response
    }
}

impl From<db::Error> for ApiError {
    fn from(e: db::Error) -> Self {
        match e {
            db::Error::NoDevice(_) | db::Error::NoToken(_) | db::Error::NoRollout(_) => {
                ApiError::new(StatusCode::NOT_FOUND, e.to_string())
            }
            db::Error::Conflict(m) => ApiError::new(StatusCode::CONFLICT, m),
            db::Error::Invalid(f) => bad_field(f),
            db::Error::TokenRefused => ApiError::new(StatusCode::FORBIDDEN, e.to_string()),
            // Busy, not broken: the client is told to come back (Retry-After), as for a rate
            // limit, and the server keeps serving.
            e if e.is_busy() => {
                tracing::warn!("database busy, answered 503: {:#}", anyhow::Error::new(e));
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the fleet's database is busy; try again shortly",
                )
            }
            e => {
                // The cause stays in the server's log; the client learns only that it failed.
                tracing::error!("{:#}", anyhow::Error::new(e));
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
            }
        }
    }
}

pub(super) type Answer<T> = Result<T, ApiError>;

/// The routes.
pub fn router(state: State) -> Router {
    Router::new()
        .route("/v1/health", get(|| async { "ok" }))
        .route("/v1/enroll", post(enroll))
        .route("/v1/devices", get(devices))
        .route("/v1/devices/{id}", get(device))
        .route("/v1/devices/{id}/report", post(report))
        .route("/v1/devices/{id}/revoke", post(revoke_device))
        .route("/v1/devices/{id}/tags", put(set_tags))
        .route("/v1/devices/{id}/channel", put(set_channel))
        .route("/v1/enrollment-tokens", post(enrollment_tokens))
        .route("/v1/tokens", get(tokens).post(create_token))
        .route("/v1/tokens/{id}/revoke", post(revoke_token))
        .route("/v1/audit", get(audit))
        .route("/v1/rollouts", get(rollouts::list).post(rollouts::start))
        .route("/v1/rollouts/{id}", get(rollouts::detail))
        .route("/v1/rollouts/{id}/series", get(rollouts::series))
        .route("/v1/rollouts/{id}/{verb}", post(rollouts::change))
        .merge(dashboard::router())
        .layer(Extension(state))
}

/// Read a body of at most `limit` bytes (413 beyond).
pub(super) async fn read_body(body: Body, limit: usize) -> Answer<Vec<u8>> {
    let collected = tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, limit).collect())
        .await
        .map_err(|_| ApiError::new(StatusCode::REQUEST_TIMEOUT, "the body took too long"))?;
    match collected {
        Ok(c) => Ok(c.to_bytes().to_vec()),
        Err(e) if e.is::<LengthLimitError>() => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is larger than {limit} bytes"),
        )),
        Err(e) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("reading the body: {e}"),
        )),
    }
}

/// Parse JSON; the error names the field that is wrong.
pub(super) fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Answer<T> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let message = if e.inner().is_syntax() || e.inner().is_eof() {
            format!("the body is not JSON: {}", e.inner())
        } else if e.path().to_string() == "." {
            format!("the body: {}", e.inner())
        } else {
            format!("field `{}`: {}", e.path(), e.inner())
        };
        ApiError::new(StatusCode::BAD_REQUEST, message)
    })?;
    de.end().map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("trailing data after the JSON: {e}"),
        )
    })?;
    Ok(value)
}

pub(super) fn bad_field(e: api::FieldError) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, e.to_string())
}

/// The administrator behind the request's bearer token, if their role reaches `need`.
pub(super) async fn admin(state: &State, headers: &HeaderMap, need: Role) -> Answer<Actor> {
    let secret = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "an API token is required"))?;
    let info =
        state.db.api_token(secret.trim()).await?.ok_or_else(|| {
            ApiError::new(StatusCode::UNAUTHORIZED, "unknown or revoked API token")
        })?;
    if info.role < need {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("this token's role is {}; this needs {need}", info.role),
        ));
    }
    Ok(Actor::token(&info.id, &info.name))
}

async fn enroll(Extension(state): Extension<State>, body: Body) -> Answer<Json<EnrollResponse>> {
    let req: EnrollRequest = parse(&read_body(body, api::MAX_ENROLL_BYTES).await?)?;
    api::check_name("serial", &req.serial).map_err(bad_field)?;
    let now = db::now();
    let bad_csr =
        |e: pki::Error| ApiError::new(StatusCode::BAD_REQUEST, format!("field `csr`: {e}"));
    let public_key = pki::csr_public_key_sha256(&req.csr).map_err(bad_csr)?;
    // Sign nothing for a token that cannot succeed; `Db::enroll` decides atomically below.
    // A used token still serves the key that used it, for the same device: the appliance
    // lost power between our answer and storing its certificate, and asks again.
    let resumed = if state.db.enrollment_token_usable(&req.token, now).await? {
        None
    } else {
        match state
            .db
            .resumable_enrollment(&req.token, &public_key, now)
            .await?
        {
            Some(id) => Some(id),
            None => return Err(db::Error::TokenRefused.into()),
        }
    };
    let device_id = resumed
        .clone()
        .unwrap_or_else(|| format!("dev-{}", token::random_hex(8)));
    let (certificate, der) = state
        .ca
        .sign_device(&req.csr, &device_id)
        .map_err(bad_csr)?;
    let fingerprint = pki::fingerprint(&der);
    if resumed.is_some() {
        state
            .db
            .resume_enrollment(&req.token, &device_id, &public_key, &fingerprint, now)
            .await?;
        tracing::info!("{device_id} resumed its enrollment (serial {})", req.serial);
    } else {
        state
            .db
            .enroll(
                &req.token,
                &device_id,
                &req.serial,
                &fingerprint,
                &public_key,
                now,
            )
            .await?;
        tracing::info!("enrolled {device_id} (serial {})", req.serial);
    }
    Ok(Json(EnrollResponse {
        device_id,
        certificate,
        ca: state.ca.pem().to_string(),
    }))
}

async fn report(
    Extension(state): Extension<State>,
    peer: Option<Extension<PeerCert>>,
    Path(id): Path<String>,
    body: Body,
) -> Answer<StatusCode> {
    let fingerprint = peer.and_then(|Extension(p)| p.0).ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "a client certificate issued by the fleet CA is required",
        )
    })?;
    let device = state
        .db
        .device_by_cert(&fingerprint)
        .await?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::FORBIDDEN,
                "this certificate belongs to no enrolled device, or its device is revoked",
            )
        })?;
    if device != id {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("this certificate is {device}'s; it may not report for {id}"),
        ));
    }
    let now = db::now();
    if state
        .db
        .take_report_slot(&device, state.reports_per_minute, now)
        .await?
        == RateDecision::Limited
    {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!("more than {} reports this minute", state.reports_per_minute),
        ));
    }
    let report: Report = parse(&read_body(body, api::MAX_REPORT_BYTES).await?)?;
    report.validate().map_err(bad_field)?;
    let halted = state.db.store_report(&device, &report, now).await?;
    if !halted.is_empty() {
        // Signed before the answer, so a halt is in the repository as soon as its report is
        // acknowledged; if signing fails, the periodic reconcile signs it.
        match &state.signer {
            Some(signer) => {
                signer.reconcile_logged(false).await;
            }
            None => tracing::warn!(
                "rollouts {:?} halted by their policy; this server has no --repo, so a server \
                 with one signs the halt at its next reconcile",
                halted.iter().map(|h| h.id).collect::<Vec<_>>()
            ),
        }
    }
    Ok(StatusCode::NO_CONTENT)
}

async fn devices(Extension(state): Extension<State>, headers: HeaderMap) -> Answer<Response> {
    admin(&state, &headers, Role::Viewer).await?;
    Ok(Json(state.db.devices().await?).into_response())
}

async fn device(
    Extension(state): Extension<State>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Answer<Response> {
    admin(&state, &headers, Role::Viewer).await?;
    Ok(Json(state.db.device_detail(&id).await?).into_response())
}

async fn revoke_device(
    Extension(state): Extension<State>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Answer<Response> {
    let actor = admin(&state, &headers, Role::Operator).await?;
    let device = state.db.revoke_device(&actor, &id, db::now()).await?;
    tracing::info!("{} revoked {id}", actor.0);
    Ok(Json(device).into_response())
}

async fn set_tags(
    Extension(state): Extension<State>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> Answer<Response> {
    let actor = admin(&state, &headers, Role::Operator).await?;
    let req: TagsRequest = parse(&read_body(body, MAX_ADMIN_BYTES).await?)?;
    if req.tags.len() > api::MAX_TAGS {
        return Err(bad_field(api::FieldError {
            field: "tags".into(),
            why: format!("at most {} tags", api::MAX_TAGS),
        }));
    }
    for (i, t) in req.tags.iter().enumerate() {
        api::check_name(&format!("tags[{i}]"), t).map_err(bad_field)?;
    }
    let device = state.db.set_tags(&actor, &id, &req.tags, db::now()).await?;
    Ok(Json(device).into_response())
}

async fn set_channel(
    Extension(state): Extension<State>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> Answer<Response> {
    let actor = admin(&state, &headers, Role::ReleaseManager).await?;
    let req: ChannelRequest = parse(&read_body(body, MAX_ADMIN_BYTES).await?)?;
    api::check_name("channel", &req.channel).map_err(bad_field)?;
    let device = state
        .db
        .set_channel(&actor, &id, &req.channel, db::now())
        .await?;
    Ok(Json(device).into_response())
}

async fn enrollment_tokens(
    Extension(state): Extension<State>,
    headers: HeaderMap,
    body: Body,
) -> Answer<Response> {
    let actor = admin(&state, &headers, Role::Operator).await?;
    let req: EnrollmentTokensRequest = parse(&read_body(body, MAX_ADMIN_BYTES).await?)?;
    if !(1..=1000).contains(&req.count) {
        return Err(bad_field(api::FieldError {
            field: "count".into(),
            why: "1 to 1000".into(),
        }));
    }
    if !(1..=MAX_ENROLL_TTL).contains(&req.expires_in) {
        return Err(bad_field(api::FieldError {
            field: "expires_in".into(),
            why: format!("1 to {MAX_ENROLL_TTL} seconds"),
        }));
    }
    let made = state
        .db
        .create_enrollment_tokens(&actor, req.count, req.expires_in, db::now())
        .await?;
    Ok(Json(made).into_response())
}

async fn tokens(Extension(state): Extension<State>, headers: HeaderMap) -> Answer<Response> {
    admin(&state, &headers, Role::Admin).await?;
    Ok(Json(state.db.api_tokens().await?).into_response())
}

async fn create_token(
    Extension(state): Extension<State>,
    headers: HeaderMap,
    body: Body,
) -> Answer<Response> {
    let actor = admin(&state, &headers, Role::Admin).await?;
    let req: CreateTokenRequest = parse(&read_body(body, MAX_ADMIN_BYTES).await?)?;
    api::check_name("name", &req.name).map_err(bad_field)?;
    let made = state
        .db
        .create_api_token(&actor, &req.name, req.role, db::now())
        .await?;
    Ok((StatusCode::CREATED, Json(made)).into_response())
}

async fn revoke_token(
    Extension(state): Extension<State>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Answer<Response> {
    let actor = admin(&state, &headers, Role::Admin).await?;
    let info = state.db.revoke_api_token(&actor, &id, db::now()).await?;
    Ok(Json(info).into_response())
}

/// `GET /v1/audit?limit=N`.
#[derive(Debug, Deserialize)]
struct AuditQuery {
    limit: Option<i64>,
}

async fn audit(
    Extension(state): Extension<State>,
    headers: HeaderMap,
    Query(q): Query<AuditQuery>,
) -> Answer<Response> {
    admin(&state, &headers, Role::Admin).await?;
    let limit = q.limit.unwrap_or(100).clamp(1, 10_000);
    Ok(Json(state.db.audit_log(limit).await?).into_response())
}

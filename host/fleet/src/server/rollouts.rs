//! The rollout routes ([`crate::api`] has the table): start (release-manager), read (viewer),
//! its series over time (viewer), pause and halt (operator), resume and cancel (release-manager), pin and unpin (operator).
//!
//! Each change commits in the database with its audit line, then the repository's record is
//! signed before the answer (`crate::signer`); the answer's `signed_state` says what the
//! repository holds, so a signature that failed shows (the periodic reconcile retries it).
//! Reading works on any server; changing needs one started with `--repo` (503 otherwise).

use aperture_release::rollout::RolloutMeta;
use axum::body::Body;
use axum::extract::Path;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};

use super::routes::{admin, bad_field, parse, read_body, Answer, ApiError, State, MAX_ADMIN_BYTES};
use crate::api::{self, PinRequest, RolloutAction, RolloutInfo, StartRollout};
use crate::db::rollouts::StateChange;
use crate::db::{self, Actor};
use crate::rollout::{check_reason, check_start};
use crate::signer::Signer;
use crate::token::Role;

/// The signer, or the 503 that names the flag.
fn signer(state: &State) -> Answer<&Signer> {
    state.signer.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "this server signs no rollouts: start it with `aperture-fleet serve --repo DIR` \
             (the TUF repository whose rollouts, snapshot and timestamp keys it holds), or ask \
             a server that was",
        )
    })
}

fn rollout_id(text: &str) -> Answer<u64> {
    text.parse().map_err(|_| {
        bad_field(api::FieldError {
            field: "id".into(),
            why: format!("{text:?} is not a rollout id (a number)"),
        })
    })
}

/// Fill in what the repository's records say (`signed_state`), when this server has one.
async fn with_signed(state: &State, mut infos: Vec<RolloutInfo>) -> Vec<RolloutInfo> {
    let Some(signer) = &state.signer else {
        return infos;
    };
    let held = match signer.signed().await {
        Ok(held) => held,
        Err(e) => {
            tracing::error!("reading the signed rollouts: {:#}", anyhow::Error::new(e));
            return infos;
        }
    };
    for info in &mut infos {
        let Ok(version) = info.version.parse() else {
            continue;
        };
        info.signed_state = held
            .get(&RolloutMeta::target_name_for(&info.channel, &version))
            .filter(|m| m.id == info.id)
            .map(|m| m.state);
    }
    infos
}

async fn one_signed(state: &State, info: RolloutInfo) -> RolloutInfo {
    with_signed(state, vec![info])
        .await
        .pop()
        .expect("one in, one out")
}

/// `POST /v1/rollouts`.
pub(super) async fn start(
    Extension(state): Extension<State>,
    headers: HeaderMap,
    body: Body,
) -> Answer<Response> {
    let actor = admin(&state, &headers, Role::ReleaseManager).await?;
    let signer = signer(&state)?;
    let req: StartRollout = parse(&read_body(body, MAX_ADMIN_BYTES).await?)?;
    let new = check_start(&req).map_err(bad_field)?;
    let published = signer.published().await.map_err(|e| {
        tracing::error!("reading the repository: {:#}", anyhow::Error::new(e));
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the repository could not be read",
        )
    })?;
    if !published
        .iter()
        .any(|(c, v)| *c == new.channel && *v == new.version)
    {
        let on_channel: Vec<String> = published
            .iter()
            .filter(|(c, _)| *c == new.channel)
            .map(|(_, v)| v.to_string())
            .collect();
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "no release {} on channel {} in the repository {} (it publishes {} there): \
                 publish it first (`aperture release publish --image DIR --repo {} --channel {}`)",
                new.version,
                new.channel,
                signer.dir().display(),
                if on_channel.is_empty() {
                    "nothing".into()
                } else {
                    on_channel.join(", ")
                },
                signer.dir().display(),
                new.channel,
            ),
        ));
    }
    let info = state.db.start_rollout(&actor, &new, db::now()).await?;
    tracing::info!(
        "{} started rollout {} of {} on {}",
        actor.0,
        info.id,
        info.version,
        info.channel
    );
    signer.reconcile_logged(false).await;
    let info = state.db.rollout(info.id).await?.rollout;
    Ok((StatusCode::CREATED, Json(one_signed(&state, info).await)).into_response())
}

/// `GET /v1/rollouts`.
pub(super) async fn list(
    Extension(state): Extension<State>,
    headers: HeaderMap,
) -> Answer<Response> {
    admin(&state, &headers, Role::Viewer).await?;
    let all = state.db.rollouts().await?;
    Ok(Json(with_signed(&state, all).await).into_response())
}

/// `GET /v1/rollouts/{id}`.
pub(super) async fn detail(
    Extension(state): Extension<State>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Answer<Response> {
    admin(&state, &headers, Role::Viewer).await?;
    let mut detail = state.db.rollout(rollout_id(&id)?).await?;
    detail.rollout = one_signed(&state, detail.rollout).await;
    Ok(Json(detail).into_response())
}

/// `GET /v1/rollouts/{id}/series`.
pub(super) async fn series(
    Extension(state): Extension<State>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Answer<Response> {
    admin(&state, &headers, Role::Viewer).await?;
    Ok(Json(state.db.rollout_series(rollout_id(&id)?).await?).into_response())
}

/// A verb of `POST /v1/rollouts/{id}/{verb}`.
enum Verb {
    State(StateChange),
    Pin(bool),
}

impl Verb {
    fn parse(verb: &str) -> Option<Self> {
        Some(match verb {
            "pause" => Verb::State(StateChange::Pause),
            "halt" => Verb::State(StateChange::Halt),
            "resume" => Verb::State(StateChange::Resume),
            "cancel" => Verb::State(StateChange::Cancel),
            "pin" => Verb::Pin(true),
            "unpin" => Verb::Pin(false),
            _ => return None,
        })
    }

    /// Who may: stopping and pinning is an operator's call; going on, or ending for good, a
    /// release manager's.
    fn role(&self) -> Role {
        match self {
            Verb::State(StateChange::Pause | StateChange::Halt) | Verb::Pin(_) => Role::Operator,
            Verb::State(StateChange::Resume | StateChange::Cancel) => Role::ReleaseManager,
        }
    }
}

/// `POST /v1/rollouts/{id}/{pause|halt|resume|cancel|pin|unpin}`.
pub(super) async fn change(
    Extension(state): Extension<State>,
    headers: HeaderMap,
    Path((id, verb)): Path<(String, String)>,
    body: Body,
) -> Answer<Response> {
    let Some(v) = Verb::parse(&verb) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no route /v1/rollouts/{id}/{verb}: pause, halt, resume, cancel, pin or unpin"),
        ));
    };
    let actor: Actor = admin(&state, &headers, v.role()).await?;
    let signer = signer(&state)?;
    let id = rollout_id(&id)?;
    let bytes = read_body(body, MAX_ADMIN_BYTES).await?;
    let now = db::now();
    let (info, changed) = match v {
        Verb::State(change) => {
            let req: RolloutAction = if bytes.iter().all(u8::is_ascii_whitespace) {
                RolloutAction::default()
            } else {
                parse(&bytes)?
            };
            check_reason(req.reason.as_deref()).map_err(bad_field)?;
            state
                .db
                .change_rollout_state(&actor, id, change, req.reason.as_deref(), now)
                .await?
        }
        Verb::Pin(pin) => {
            let req: PinRequest = parse(&bytes)?;
            api::check_name("device", &req.device).map_err(bad_field)?;
            state
                .db
                .pin_device(&actor, id, &req.device, pin, now)
                .await?
        }
    };
    if changed {
        tracing::info!("{} did {verb} on rollout {id}", actor.0);
        signer.reconcile_logged(false).await;
    }
    Ok(Json(one_signed(&state, info).await).into_response())
}

//! `/api/v1/restores`: restores requested, decided, cancelled and followed through the
//! platform, with the seeds' paths (`POST /api/v1/backups/{id}/restore`,
//! `/api/v1/recovery/point-in-time`, `/api/v1/recovery/{id}/status`, `…/approve`) answered by
//! the same handlers. What a restore may do, and when, is [`crate::jobs::restores`]'.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ErrorBody;
use super::extract::{ApiJson, ApiPath, ApiQuery};
use super::{database_for, decode_page_token, encode_page_token, page_size, require};
use super::{ApiError, AppState, Page};
use crate::domain::authz::{Access, Caller};
use crate::domain::is_generated_id;
use crate::domain::restore::{Restore, RestoreBody, RestoreStatus};
use crate::jobs::restores::{self, Source};
use crate::store;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_restores, create_restore))
        .routes(routes!(get_restore))
        .routes(routes!(restore_backup))
        .routes(routes!(approve_restore))
        .routes(routes!(reject_restore))
        .routes(routes!(cancel_restore))
}

/// The seeds' recovery paths on the same handlers (documented once, under `/api/v1/restores`).
pub fn add_seed_aliases(router: Router<AppState>) -> Router<AppState> {
    router
        .route("/api/v1/recovery/point-in-time", post(create_restore))
        .route("/api/v1/recovery/{id}/status", get(get_restore))
        .route("/api/v1/recovery/{id}/approve", post(approve_restore))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct RestoreQuery {
    workspace: Option<String>,
    /// A database id.
    database: Option<String>,
    status: Option<RestoreStatus>,
    page_size: Option<i64>,
    page_token: Option<String>,
}

/// A decision's or a cancellation's note.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DecisionBody {
    #[serde(default)]
    pub note: Option<String>,
}

fn check_id(id: &str) -> Result<(), ApiError> {
    if is_generated_id("rst", id) {
        Ok(())
    } else {
        Err(ApiError::not_found("restore", id))
    }
}

/// The restore `id` as the caller may see it (404 when it may not), with its job's progress.
fn visible(state: &AppState, caller: &Caller, id: &str) -> Result<Restore, ApiError> {
    check_id(id)?;
    let rtx = state.store.read()?;
    let r = store::restores::get(&rtx, id)?.ok_or_else(|| ApiError::not_found("restore", id))?;
    require(
        caller.access(&r.workspace_id, Some(&r.database_id)),
        Access::Read,
        "restore",
        id,
    )?;
    let job = match &r.job_id {
        Some(j) => store::jobs::get(&rtx, j)?,
        None => None,
    };
    Ok(restores::current(r, job.as_ref()))
}

#[utoipa::path(get, path = "/api/v1/restores", tag = "restores", params(RestoreQuery), security(("bearer" = [])),
    responses((status = 200, body = Page<Restore>, description = "In the order they were requested"),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn list_restores(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<RestoreQuery>,
) -> Result<Page<Restore>, ApiError> {
    let size = page_size(q.page_size)?;
    let after = decode_page_token(q.page_token.as_deref(), |s| is_generated_id("rst", s))?;
    let rtx = state.store.read()?;
    let scope = super::listing(&rtx, &caller, q.workspace.as_deref())?;
    if let Some(db) = &q.database {
        database_for(&rtx, &caller, db, Access::Read)?;
    }
    if matches!(scope, super::Listing::Nothing) {
        return Ok(Page::empty());
    }
    let (stored, more) = store::restores::list(
        &rtx,
        scope.workspace(),
        |r| {
            caller.access(&r.workspace_id, Some(&r.database_id)) >= Access::Read
                && q.database.as_ref().is_none_or(|d| *d == r.database_id)
        },
        after.as_deref(),
        size,
    )?;
    // The next page starts after the last restore read, whether or not `status` kept it.
    let last_read = stored.last().map(|r| r.id.clone());
    let mut items = Vec::new();
    for r in stored {
        let job = match &r.job_id {
            Some(j) => store::jobs::get(&rtx, j)?,
            None => None,
        };
        let r = restores::current(r, job.as_ref());
        if q.status.is_none_or(|s| s == r.status) {
            items.push(r);
        }
    }
    let next_page_token = more.then(|| encode_page_token(last_read.as_deref().unwrap_or("")));
    Ok(Page {
        items,
        next_page_token,
    })
}

/// Requests a restore. It waits for a second admin's approval when the database's policy has
/// `require_restore_approval` or the request sets `require_approval`; otherwise its job is
/// queued for the target agent at once. Replacing data needs `confirm` naming what is replaced
/// and takes a pre-restore backup first.
#[utoipa::path(post, path = "/api/v1/restores", tag = "restores", request_body = RestoreBody, security(("bearer" = [])),
    responses((status = 201, body = Restore), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
async fn create_restore(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<RestoreBody>,
) -> Result<(StatusCode, Json<Restore>), ApiError> {
    let (db, source) = {
        let rtx = state.store.read()?;
        match (&body.backup_id, &body.database_id) {
            (Some(b), None) => {
                let backup = store::backups::get(&rtx, b)?
                    .ok_or_else(|| ApiError::not_found("backup", b))?;
                let db = database_for(&rtx, &caller, &backup.database_id, Access::Write)
                    .map_err(|e| hide_backup(e, b))?;
                (db, Source::Backup(Box::new(backup)))
            }
            (None, Some(d)) => (
                database_for(&rtx, &caller, d, Access::Write)?,
                Source::Database,
            ),
            _ => {
                return Err(ApiError::validation(vec![crate::domain::Violation::new(
                    "",
                    "name exactly one of backup_id (that backup) or database_id (its latest state, or a point_in_time)",
                )]))
            }
        }
    };
    let r = restores::request(&state.store, &state.jobs, &caller, db, source, body).await?;
    Ok((StatusCode::CREATED, Json(r)))
}

/// A backup of a database the caller cannot see is as missing as one that does not exist.
fn hide_backup(e: ApiError, id: &str) -> ApiError {
    if e.status == StatusCode::NOT_FOUND {
        ApiError::not_found("backup", id)
    } else {
        e
    }
}

/// The seed's path: restores this backup (the body as for `POST /api/v1/restores`, without
/// `backup_id` or `database_id`).
#[utoipa::path(post, path = "/api/v1/backups/{id}/restore", tag = "restores", params(("id" = String, Path)),
    request_body = RestoreBody, security(("bearer" = [])),
    responses((status = 201, body = Restore), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
async fn restore_backup(
    state: State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(mut body): ApiJson<RestoreBody>,
) -> Result<(StatusCode, Json<Restore>), ApiError> {
    if body.backup_id.is_some() || body.database_id.is_some() {
        return Err(ApiError::validation(vec![crate::domain::Violation::new(
            "backup_id",
            "the path names the backup; leave backup_id and database_id out",
        )]));
    }
    body.backup_id = Some(id);
    create_restore(state, caller, ApiJson(body)).await
}

#[utoipa::path(get, path = "/api/v1/restores/{id}", tag = "restores", params(("id" = String, Path)), security(("bearer" = [])),
    responses((status = 200, body = Restore), (status = 404, body = ErrorBody)))]
async fn get_restore(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Restore>, ApiError> {
    Ok(Json(visible(&state, &caller, &id)?))
}

/// A second admin of the workspace approves (never the requester); the job is queued.
#[utoipa::path(post, path = "/api/v1/restores/{id}/approve", tag = "restores", params(("id" = String, Path)),
    request_body = DecisionBody, security(("bearer" = [])),
    responses((status = 200, body = Restore), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "Not waiting for approval, or expired")))]
async fn approve_restore(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    body: axum::body::Bytes,
) -> Result<Json<Restore>, ApiError> {
    decide(state, caller, id, true, body).await
}

/// A second admin of the workspace rejects, with a note.
#[utoipa::path(post, path = "/api/v1/restores/{id}/reject", tag = "restores", params(("id" = String, Path)),
    request_body = DecisionBody, security(("bearer" = [])),
    responses((status = 200, body = Restore), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
async fn reject_restore(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    body: axum::body::Bytes,
) -> Result<Json<Restore>, ApiError> {
    decide(state, caller, id, false, body).await
}

async fn decide(
    state: AppState,
    caller: Caller,
    id: String,
    approve: bool,
    body: axum::body::Bytes,
) -> Result<Json<Restore>, ApiError> {
    visible(&state, &caller, &id)?;
    // The body is optional: no note.
    let note = if body.is_empty() {
        None
    } else {
        serde_json::from_slice::<DecisionBody>(&body)
            .map_err(|e| {
                ApiError::bad_request(
                    "invalid_body",
                    format!("the body is not a decision ({{\"note\": \"…\"}}): {e}"),
                )
            })?
            .note
    };
    let r = restores::decide(&state.store, &state.jobs, &caller, id, approve, note).await?;
    Ok(Json(r))
}

/// The requester (or a workspace admin) withdraws a restore that has not started.
#[utoipa::path(post, path = "/api/v1/restores/{id}/cancel", tag = "restores", params(("id" = String, Path)), security(("bearer" = [])),
    responses((status = 200, body = Restore), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "Already running or finished")))]
async fn cancel_restore(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Restore>, ApiError> {
    visible(&state, &caller, &id)?;
    Ok(Json(restores::cancel(&state.store, &caller, id).await?))
}

//! `/api/v1/backups`: the catalog, read and filtered; manual backups are requested here (one
//! job per database, for one database, several, or a whole workspace) and may be deleted by hand.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::approvals::{self, ReasonQuery};
use super::databases::default_workspace;
use super::error::ErrorBody;
use super::extract::{actor, ApiJson, ApiPath, ApiQuery};
use super::{
    database_for, decode_page_token, encode_page_token, page_size, require, workspace_for,
    ApiError, AppState, Page,
};
use crate::domain::approval::Action;
use crate::domain::audit::Actor;
use crate::domain::authz::Access;
use crate::domain::authz::Caller;
use crate::domain::backup::{BackupRecord, BackupStatus, SnapshotKind};
use crate::domain::database::Database;
use crate::domain::job::{Job, ManualBackupBody, ManualBackupResponse, Target};
use crate::domain::policy::Priority;
use crate::domain::Violation;
use crate::jobs::{self, make::ManualRequest};
use crate::store::{self, backups::Scope};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_backups, create_backups))
        .routes(routes!(get_backup, delete_backup))
        .routes(routes!(verify_backup))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct BackupQuery {
    /// A database id.
    database: Option<String>,
    workspace: Option<String>,
    kind: Option<SnapshotKind>,
    status: Option<BackupStatus>,
    /// Started at or after (RFC 3339).
    from: Option<DateTime<Utc>>,
    /// Started before (RFC 3339).
    to: Option<DateTime<Utc>>,
    page_size: Option<i64>,
    page_token: Option<String>,
}

/// Catalog ids come from the job protocol (snapshot names such as
/// `backup-20260101T020000Z-automatic-1a2b3c4d` among them): letters, digits, `-`, `_`, `.`.
fn valid_backup_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && !id.starts_with('.')
}

/// Page tokens of the catalog carry `<started_ms>:<backup id>`.
fn parse_cursor(s: &str) -> Option<(i64, String)> {
    let (ms, id) = s.split_once(':')?;
    if !valid_backup_id(id) {
        return None;
    }
    Some((ms.parse().ok()?, id.to_string()))
}

#[utoipa::path(get, path = "/api/v1/backups", tag = "backups", params(BackupQuery), security(("bearer" = [])),
    responses((status = 200, body = Page<BackupRecord>, description = "Newest first"), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn list_backups(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<BackupQuery>,
) -> Result<Page<BackupRecord>, ApiError> {
    let size = page_size(q.page_size)?;
    let cursor = decode_page_token(q.page_token.as_deref(), |s| parse_cursor(s).is_some())?
        .and_then(|s| parse_cursor(&s));
    if let (Some(from), Some(to)) = (q.from, q.to) {
        if from >= to {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!("from ({from}) must be before to ({to})"),
            )
            .with_detail("from", "must be before `to`"));
        }
    }
    let rtx = state.store.read()?;
    if let Some(ws) = &q.workspace {
        workspace_for(&rtx, &caller, ws, Access::Read)?;
    }
    let database = match &q.database {
        Some(db) => Some(database_for(&rtx, &caller, db, Access::Read)?),
        None => None,
    };
    let default_ws = default_workspace(&caller);
    let scope = match (&database, &q.workspace, &default_ws) {
        (Some(db), _, _) => Scope::Database(&db.id),
        (None, Some(ws), _) => Scope::Workspace(ws),
        (None, None, Some(ws)) => Scope::Workspace(ws),
        (None, None, None) if caller.is_platform_admin() => Scope::Workspace(store::backups::ALL),
        (None, None, None) => return Ok(Page::empty()),
    };
    let filter = store::backups::Filter {
        kind: q.kind,
        status: q.status,
        from: q.from,
        to: q.to,
    };
    let (items, next) = store::backups::list(
        &rtx,
        scope,
        &filter,
        |b| {
            caller.access(&b.workspace_id, Some(&b.database_id)) >= Access::Read
                && q.workspace.as_ref().is_none_or(|ws| *ws == b.workspace_id)
        },
        cursor.as_ref(),
        size,
    )?;
    Ok(Page {
        items,
        next_page_token: next.map(|(ms, id)| encode_page_token(&format!("{ms}:{id}"))),
    })
}

fn backup_for(
    state: &AppState,
    caller: &Caller,
    id: &str,
    needed: Access,
) -> Result<BackupRecord, ApiError> {
    if !valid_backup_id(id) {
        return Err(ApiError::bad_request(
            "invalid_id",
            format!("'{id}' is not a backup id"),
        ));
    }
    let b = store::backups::get(&state.store.read()?, id)?
        .ok_or_else(|| ApiError::not_found("backup", id))?;
    require(
        caller.access(&b.workspace_id, Some(&b.database_id)),
        needed,
        "backup",
        id,
    )?;
    Ok(b)
}

#[utoipa::path(get, path = "/api/v1/backups/{id}", tag = "backups", params(("id" = String, Path)), security(("bearer" = [])),
    responses((status = 200, body = BackupRecord), (status = 404, body = ErrorBody)))]
async fn get_backup(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<BackupRecord>, ApiError> {
    Ok(Json(backup_for(&state, &caller, &id, Access::Read)?))
}

#[utoipa::path(delete, path = "/api/v1/backups/{id}", tag = "backups", params(("id" = String, Path), ReasonQuery), security(("bearer" = [])),
    responses((status = 202, body = Job, description = "The forget job that deletes the snapshot; the entry goes when the agent confirms. With four eyes on for the workspace: an `Approval` (`apr_…`) waiting for a second admin instead, nothing deleted yet"),
        (status = 204, description = "A backup without a snapshot (it failed): its entry is gone"),
        (status = 400, body = ErrorBody, description = "Automatic backups follow their policy's retention"),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "No live agent of the database's workspace can delete it"),
        (status = 422, body = ErrorBody, description = "Four eyes are on and `?reason=` is missing")))]
async fn delete_backup(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<ReasonQuery>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let b = backup_for(&state, &caller, &id, Access::Write)?;
    if approvals::four_eyes(&state, &b.workspace_id)? {
        store::backups::check_deletable(&b)?;
        let action = Action::DeleteBackup { backup_id: id };
        let request = (b.workspace_id.clone(), Some(b.database_id.clone()), action);
        return approvals::hold(&state, &caller, q.reason.as_deref(), request, None, |_| {
            Ok(())
        })
        .await;
    }
    Ok(match delete_backup_now(&state, actor(&caller), id).await? {
        Some(job) => (StatusCode::ACCEPTED, Json(job)).into_response(),
        None => StatusCode::NO_CONTENT.into_response(),
    })
}

/// Deletes a backup by hand as `actor` (the endpoint, or an approval carried out): its forget
/// job, or `None` when the entry had no snapshot and is gone already.
pub async fn delete_backup_now(
    state: &AppState,
    actor: Actor,
    id: String,
) -> Result<Option<Job>, ApiError> {
    let who = actor.name.clone();
    let max_attempts = state.jobs.settings.max_attempts;
    let job = state
        .store
        .write(actor, move |tx| {
            jobs::upkeep::forget_by_hand(tx, &id, &who, max_attempts)
        })
        .await?;
    if let Some(job) = &job {
        state.jobs.wake(&job.agent_id);
    }
    Ok(job)
}

#[utoipa::path(post, path = "/api/v1/backups/{id}/verify", tag = "backups", params(("id" = String, Path)), security(("bearer" = [])),
    responses((status = 202, body = Job, description = "The verify job; the entry's verified_at and verification follow its result"),
        (status = 400, body = ErrorBody, description = "The backup has no snapshot"),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "No live agent of the database's workspace can verify it")))]
async fn verify_backup(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<(StatusCode, Json<Job>), ApiError> {
    backup_for(&state, &caller, &id, Access::Write)?;
    let who = caller.user_name.clone();
    let max_attempts = state.jobs.settings.max_attempts;
    let job = state
        .store
        .write(actor(&caller), move |tx| {
            jobs::upkeep::verify_backup(tx, &id, &who, max_attempts)
        })
        .await?;
    state.jobs.wake(&job.agent_id);
    Ok((StatusCode::ACCEPTED, Json(job)))
}

/// Every database of `workspace` the caller may back up.
fn workspace_databases(
    rtx: &store::ReadTx,
    caller: &Caller,
    workspace: &str,
) -> Result<Vec<Database>, ApiError> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let (page, more) = store::databases::list(
            rtx,
            Some(workspace),
            None,
            |d| caller.access(&d.workspace_id, Some(&d.id)) >= Access::Write,
            after.as_deref(),
            super::MAX_PAGE_SIZE,
        )?;
        after = page.last().map(|d| d.id.clone());
        out.extend(page);
        if !more {
            return Ok(out);
        }
    }
}

/// Starts backups now or at `at`: one job per database, each run by the database's agent.
/// Nothing is queued unless every named database can be backed up and the quota admits them.
#[utoipa::path(post, path = "/api/v1/backups", tag = "backups", request_body = ManualBackupBody, security(("bearer" = [])),
    responses((status = 202, body = ManualBackupResponse, description = "One queued job per database"),
        (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "The workspace's quota would be passed"),
        (status = 422, body = ErrorBody)))]
async fn create_backups(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<ManualBackupBody>,
) -> Result<(StatusCode, Json<ManualBackupResponse>), ApiError> {
    let now = state.store.now();
    let (target, at) = body.check(now).map_err(ApiError::validation)?;
    let rtx = state.store.read()?;
    let databases = match &target {
        Target::Databases(ids) => ids
            .iter()
            .map(|id| database_for(&rtx, &caller, id, Access::Write))
            .collect::<Result<Vec<_>, _>>()?,
        Target::Workspace(ws) => {
            workspace_for(&rtx, &caller, ws, Access::Write)?;
            let all = workspace_databases(&rtx, &caller, ws)?;
            if all.is_empty() {
                return Err(ApiError::validation(vec![Violation::new(
                    "workspace_id",
                    format!("workspace '{ws}' has no database you may back up"),
                )]));
            }
            all
        }
    };
    drop(rtx);
    // Where each database was named in the body, for the violations below.
    let paths: Vec<String> = (0..databases.len())
        .map(|i| match &target {
            Target::Databases(_) if body.database_id.is_some() => "database_id".to_string(),
            Target::Databases(_) => format!("database_ids[{i}]"),
            Target::Workspace(_) => "workspace_id".to_string(),
        })
        .collect();
    let request = ManualRequest {
        databases: databases.into_iter().zip(paths).collect(),
        priority: body.priority.unwrap_or(Priority::High),
        at,
        requested_by: caller.user_name.clone(),
        notes: body.notes.clone(),
        tags: body.tags.clone(),
        storage_id: body.storage_id.clone(),
    };
    let jobs = jobs::make::manual(&state.store, &state.jobs, actor(&caller), request).await?;
    Ok((StatusCode::ACCEPTED, Json(ManualBackupResponse { jobs })))
}

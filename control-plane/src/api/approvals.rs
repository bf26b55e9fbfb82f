//! `/api/v1/approvals`: the four-eyes requests of destructive acts, read, approved (which
//! carries the act out), rejected and cancelled; and [`hold`], which the guarded endpoints
//! call instead of acting when their workspace has four eyes on. The life cycle is
//! [`crate::jobs::approvals`]'; the acts are the endpoints' own functions, called from
//! [`carry_out`].

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ErrorBody;
use super::extract::{ApiPath, ApiQuery};
use super::restores::DecisionBody;
use super::{decode_page_token, encode_page_token, page_size, require};
use super::{ApiError, AppState, Page};
use crate::domain::approval::{check_reason, Action, Approval, ApprovalKind, ApprovalStatus};
use crate::domain::authz::{Access, Caller};
use crate::domain::is_generated_id;
use crate::jobs::approvals::{self, Request};
use crate::store::{self, StoreError, Tx};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_approvals))
        .routes(routes!(get_approval))
        .routes(routes!(approve_approval))
        .routes(routes!(reject_approval))
        .routes(routes!(cancel_approval))
}

/// The reason a guarded request gives (`?reason=`). Unknown parameters are let through, as
/// these endpoints took no query before.
#[derive(Debug, Default, Deserialize, IntoParams)]
pub struct ReasonQuery {
    /// Why; required when the workspace has four eyes on (kept with the approval and in the
    /// audit log), ignored otherwise.
    pub reason: Option<String>,
}

/// Whether the acts of workspace `ws` wait for a second admin.
pub fn four_eyes(state: &AppState, ws: &str) -> Result<bool, ApiError> {
    Ok(approvals::required(&state.store.read()?, ws)?)
}

/// Stores `action` as waiting for a second admin instead of doing it: 202 with the approval.
/// The request was checked by its endpoint already; `check` runs what only the store can
/// check, in the same transaction. Without a reason: 422 naming `reason`.
pub async fn hold(
    state: &AppState,
    caller: &Caller,
    reason: Option<&str>,
    request: (String, Option<String>, Action),
    secret: Option<String>,
    check: impl FnOnce(&Tx) -> Result<(), StoreError> + Send + 'static,
) -> Result<Response, ApiError> {
    let reason = check_reason(reason).map_err(ApiError::validation)?;
    let (workspace_id, database_id, action) = request;
    let request = Request {
        workspace_id,
        database_id,
        action,
        reason,
        secret,
    };
    let a = approvals::request(&state.store, caller, request, check).await?;
    Ok((StatusCode::ACCEPTED, Json(a)).into_response())
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ApprovalQuery {
    workspace: Option<String>,
    status: Option<ApprovalStatus>,
    kind: Option<ApprovalKind>,
    page_size: Option<i64>,
    page_token: Option<String>,
}

fn check_id(id: &str) -> Result<(), ApiError> {
    if is_generated_id("apr", id) {
        Ok(())
    } else {
        Err(ApiError::not_found("approval", id))
    }
}

fn readable(caller: &Caller, a: &Approval) -> Access {
    caller.access(&a.workspace_id, a.database_id.as_deref())
}

/// The approval `id` as the caller may see it (404 when it may not).
fn visible(state: &AppState, caller: &Caller, id: &str) -> Result<Approval, ApiError> {
    check_id(id)?;
    let a = store::approvals::get(&state.store.read()?, id)?
        .ok_or_else(|| ApiError::not_found("approval", id))?;
    require(readable(caller, &a), Access::Read, "approval", id)?;
    Ok(a)
}

#[utoipa::path(get, path = "/api/v1/approvals", tag = "approvals", params(ApprovalQuery), security(("bearer" = [])),
    responses((status = 200, body = Page<Approval>, description = "In the order they were requested"),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn list_approvals(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<ApprovalQuery>,
) -> Result<Page<Approval>, ApiError> {
    let size = page_size(q.page_size)?;
    let after = decode_page_token(q.page_token.as_deref(), |s| is_generated_id("apr", s))?;
    let rtx = state.store.read()?;
    let scope = super::listing(&rtx, &caller, q.workspace.as_deref())?;
    if matches!(scope, super::Listing::Nothing) {
        return Ok(Page::empty());
    }
    let (items, more) = store::approvals::list(
        &rtx,
        scope.workspace(),
        |a| {
            readable(&caller, a) >= Access::Read
                && q.status.is_none_or(|s| s == a.status)
                && q.kind.is_none_or(|k| k == a.action.kind())
        },
        after.as_deref(),
        size,
    )?;
    let next_page_token = more.then(|| encode_page_token(&items.last().expect("non-empty").id));
    Ok(Page {
        items,
        next_page_token,
    })
}

#[utoipa::path(get, path = "/api/v1/approvals/{id}", tag = "approvals", params(("id" = String, Path)), security(("bearer" = [])),
    responses((status = 200, body = Approval), (status = 404, body = ErrorBody)))]
async fn get_approval(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Approval>, ApiError> {
    Ok(Json(visible(&state, &caller, &id)?))
}

/// The optional `{"note"}` body of a decision.
fn note_of(body: &[u8]) -> Result<Option<String>, ApiError> {
    if body.is_empty() {
        return Ok(None);
    }
    Ok(serde_json::from_slice::<DecisionBody>(body)
        .map_err(|e| {
            ApiError::bad_request(
                "invalid_body",
                format!("the body is not a decision ({{\"note\": \"…\"}}): {e}"),
            )
        })?
        .note)
}

/// A second admin of the workspace (never the requester) approves: the act is carried out now,
/// by the endpoint's own code. When the act is refused at this point (the backup is gone, the
/// storage holds backups again), the approval is recorded `failed` and the act's error answers.
#[utoipa::path(post, path = "/api/v1/approvals/{id}/approve", tag = "approvals", params(("id" = String, Path)),
    request_body = DecisionBody, security(("bearer" = [])),
    responses((status = 200, body = Approval, description = "Approved and carried out"),
        (status = 403, body = ErrorBody, description = "The requester, or not a workspace admin"),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "Not waiting for a decision, or expired")))]
async fn approve_approval(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    body: axum::body::Bytes,
) -> Result<Json<Approval>, ApiError> {
    visible(&state, &caller, &id)?;
    let note = note_of(&body)?;
    let approved = approvals::decide(&state.store, &caller, id.clone(), true, note).await?;
    match carry_out(&state, &caller, approved).await {
        Ok(result) => Ok(Json(
            approvals::finish(&state.store, &caller, id, Ok(result)).await?,
        )),
        Err(mut e) => {
            approvals::finish(&state.store, &caller, id.clone(), Err(e.message.clone())).await?;
            e.message = format!(
                "approval '{id}' was approved but carrying it out failed (recorded as failed): {}",
                e.message
            );
            Err(e)
        }
    }
}

/// The act of an approved request, run as its endpoint runs it, by the approver on the
/// requester's behalf (the audit entries name both).
async fn carry_out(
    state: &AppState,
    caller: &Caller,
    approved: approvals::Approved,
) -> Result<serde_json::Value, ApiError> {
    let a = approved.approval;
    let actor = approvals::act_actor(caller, &a);
    let ws = a.workspace_id.clone();
    match a.action {
        Action::DeleteBackup { backup_id } => {
            let job = super::backups::delete_backup_now(state, actor, backup_id).await?;
            Ok(serde_json::json!({ "forget_job_id": job.map(|j| j.id) }))
        }
        Action::ShortenRetention { before, after, .. } => {
            let policy =
                super::policies::update_policy_now(state, actor, *after, Some(*before)).await?;
            Ok(serde_json::json!({ "policy_id": policy.id }))
        }
        Action::DeleteStorage { storage_id } => {
            super::storages::delete_storage_now(state, actor, ws, storage_id.clone()).await?;
            Ok(serde_json::json!({ "deleted_storage_id": storage_id }))
        }
        Action::ReplaceRecoveryKey {} => {
            let Some(passphrase) = approved.secret else {
                return Err(ApiError::internal(format!(
                    "approval '{}' lost its sealed passphrase; request the replacement again",
                    a.id
                )));
            };
            crate::jobs::keys::choose_recovery_key(&state.store, actor, &ws, passphrase).await?;
            Ok(serde_json::json!({ "recovery_key": "replaced (sealed; never shown)" }))
        }
    }
}

/// A second admin of the workspace rejects, with a note; nothing is done.
#[utoipa::path(post, path = "/api/v1/approvals/{id}/reject", tag = "approvals", params(("id" = String, Path)),
    request_body = DecisionBody, security(("bearer" = [])),
    responses((status = 200, body = Approval), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
async fn reject_approval(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    body: axum::body::Bytes,
) -> Result<Json<Approval>, ApiError> {
    visible(&state, &caller, &id)?;
    let note = note_of(&body)?;
    let rejected = approvals::decide(&state.store, &caller, id, false, note).await?;
    Ok(Json(rejected.approval))
}

/// The requester (or a workspace admin) withdraws a request still waiting, with a note.
#[utoipa::path(post, path = "/api/v1/approvals/{id}/cancel", tag = "approvals", params(("id" = String, Path)),
    request_body = DecisionBody, security(("bearer" = [])),
    responses((status = 200, body = Approval), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "Already decided or expired")))]
async fn cancel_approval(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    body: axum::body::Bytes,
) -> Result<Json<Approval>, ApiError> {
    visible(&state, &caller, &id)?;
    let note = note_of(&body)?;
    Ok(Json(
        approvals::cancel(&state.store, &caller, id, note).await?,
    ))
}

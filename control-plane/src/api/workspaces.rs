//! `/api/v1/workspaces`: platform admins create and change workspaces (plan, quota, compliance
//! floor); members read their own.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::approvals::{self, ReasonQuery};
use super::error::ErrorBody;
use super::extract::{actor, ApiJson, ApiPath, ApiQuery};
use super::{
    decode_page_token, encode_page_token, page_size, workspace_for, ApiError, AppState, Page,
};
use crate::domain::approval::{Action, Approval};
use crate::domain::authz::{Access, Caller};
use crate::domain::check_slug;
use crate::domain::recovery::{RecoveryKeyShown, RecoveryPassphraseBody};
use crate::domain::workspace::{Safeguards, Workspace, WorkspaceBody, WorkspaceView};
use crate::{jobs, store};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_workspaces, create_workspace))
        .routes(routes!(get_workspace, update_workspace, delete_workspace))
        .routes(routes!(show_recovery_key, choose_recovery_key))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// 1..500, default 50.
    page_size: Option<i64>,
    page_token: Option<String>,
}

fn platform_only(caller: &Caller) -> Result<(), ApiError> {
    if caller.is_platform_admin() {
        Ok(())
    } else {
        Err(ApiError::forbidden(
            "only platform admins create, change or delete workspaces",
        ))
    }
}

#[utoipa::path(get, path = "/api/v1/workspaces", tag = "workspaces", params(ListQuery),
    security(("bearer" = [])),
    responses((status = 200, body = Page<WorkspaceView>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn list_workspaces(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Page<WorkspaceView>, ApiError> {
    let size = page_size(q.page_size)?;
    let after = decode_page_token(q.page_token.as_deref(), |s| check_slug(s).is_ok())?;
    let rtx = state.store.read()?;
    let (items, more) = match caller.visible_workspaces() {
        None => store::workspaces::list(&rtx, after.as_deref(), size)?,
        Some(ids) => {
            let mut items = Vec::new();
            for id in ids
                .into_iter()
                .filter(|id| after.as_deref().is_none_or(|a| *id > a))
            {
                items.extend(store::workspaces::get(&rtx, id)?);
            }
            let more = items.len() > size;
            items.truncate(size);
            (items, more)
        }
    };
    let next_page_token = more.then(|| encode_page_token(&items.last().expect("non-empty").id));
    let items = items
        .into_iter()
        .map(|w| view(&rtx, w))
        .collect::<Result<_, _>>()?;
    Ok(Page {
        items,
        next_page_token,
    })
}

/// The workspace with its safeguards, as answered.
fn view(rtx: &store::ReadTx, workspace: Workspace) -> Result<WorkspaceView, ApiError> {
    let safeguards = store::workspaces::safeguards(rtx, &workspace.id)?;
    Ok(WorkspaceView {
        workspace,
        safeguards,
    })
}

#[utoipa::path(post, path = "/api/v1/workspaces", tag = "workspaces", request_body = WorkspaceBody,
    security(("bearer" = [])),
    responses((status = 201, body = WorkspaceView), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn create_workspace(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<WorkspaceBody>,
) -> Result<(StatusCode, Json<WorkspaceView>), ApiError> {
    platform_only(&caller)?;
    let safeguards = body.safeguards(Safeguards::default());
    let ws = body
        .into_workspace(None, None, chrono::Utc::now())
        .map_err(ApiError::validation)?;
    let stored = ws.clone();
    state
        .store
        .write(actor(&caller), move |tx| {
            tx.create_workspace(&stored)?;
            tx.set_safeguards(&stored.id, safeguards)
        })
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(WorkspaceView {
            workspace: ws,
            safeguards,
        }),
    ))
}

#[utoipa::path(get, path = "/api/v1/workspaces/{id}", tag = "workspaces", params(("id" = String, Path)),
    security(("bearer" = [])),
    responses((status = 200, body = WorkspaceView), (status = 404, body = ErrorBody)))]
async fn get_workspace(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<WorkspaceView>, ApiError> {
    let rtx = state.store.read()?;
    let ws = workspace_for(&rtx, &caller, &id, Access::Read)?;
    Ok(Json(view(&rtx, ws)?))
}

#[utoipa::path(put, path = "/api/v1/workspaces/{id}", tag = "workspaces", params(("id" = String, Path)),
    request_body = WorkspaceBody, security(("bearer" = [])),
    responses((status = 200, body = WorkspaceView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
async fn update_workspace(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<WorkspaceBody>,
) -> Result<Json<WorkspaceView>, ApiError> {
    let rtx = state.store.read()?;
    let existing = workspace_for(&rtx, &caller, &id, Access::Read)?;
    let safeguards = body.safeguards(store::workspaces::safeguards(&rtx, &id)?);
    drop(rtx);
    platform_only(&caller)?;
    let ws = body
        .into_workspace(Some(&id), Some(&existing), chrono::Utc::now())
        .map_err(ApiError::validation)?;
    let stored = ws.clone();
    state
        .store
        .write(actor(&caller), move |tx| {
            tx.update_workspace(&stored)?;
            tx.set_safeguards(&stored.id, safeguards)
        })
        .await?;
    Ok(Json(WorkspaceView {
        workspace: ws,
        safeguards,
    }))
}

#[utoipa::path(delete, path = "/api/v1/workspaces/{id}", tag = "workspaces", params(("id" = String, Path)),
    security(("bearer" = [])),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn delete_workspace(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    workspace_for(&state.store.read()?, &caller, &id, Access::Read)?;
    platform_only(&caller)?;
    state
        .store
        .write(actor(&caller), move |tx| tx.delete_workspace(&id))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The workspace's recovery key, shown once: the key slot it opens in each of the workspace's
/// repositories restores backups with `bulwark-agent` alone, without the control plane. Made
/// now if no job has needed it yet. Later requests answer 410 saying when and to whom it was
/// shown (or who chose it).
#[utoipa::path(get, path = "/api/v1/workspaces/{id}/recovery-key", tag = "workspaces", params(("id" = String, Path)),
    security(("bearer" = [])),
    responses((status = 200, body = RecoveryKeyShown, description = "The key; it is never shown again"),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 410, body = ErrorBody, description = "Shown (or chosen) before")))]
async fn show_recovery_key(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<RecoveryKeyShown>, ApiError> {
    workspace_for(&state.store.read()?, &caller, &id, Access::Admin)?;
    let key = jobs::keys::show_recovery_key(&state.store, actor(&caller), &id).await?;
    Ok(Json(RecoveryKeyShown {
        workspace_id: id,
        recovery_key: key,
        usage: "write it to a file and run `bulwark-agent restore latest --database <id> --repo <storage location> --password-file <file>`".into(),
    }))
}

/// Chooses the recovery passphrase (at least 16 characters) instead of a generated key, while
/// no repository of the workspace exists yet (409 afterwards: their key slots hold the key they
/// were made with). It counts as shown: a later GET answers 410. Replacing a key that exists
/// already waits for a second admin when the workspace has four eyes on (202 with the approval;
/// the passphrase is kept sealed until then and never shown).
#[utoipa::path(put, path = "/api/v1/workspaces/{id}/recovery-key", tag = "workspaces", params(("id" = String, Path), ReasonQuery),
    request_body = RecoveryPassphraseBody, security(("bearer" = [])),
    responses((status = 204),
        (status = 202, body = Approval, description = "Four eyes are on and a key exists: waiting for a second admin, nothing replaced yet"),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "A repository of the workspace exists"),
        (status = 422, body = ErrorBody)))]
async fn choose_recovery_key(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<ReasonQuery>,
    ApiJson(body): ApiJson<RecoveryPassphraseBody>,
) -> Result<Response, ApiError> {
    let replaces = {
        let rtx = state.store.read()?;
        workspace_for(&rtx, &caller, &id, Access::Admin)?;
        store::recovery::get(&rtx, &id)?.is_some()
    };
    body.check().map_err(ApiError::validation)?;
    if replaces && approvals::four_eyes(&state, &id)? {
        let ws = id.clone();
        let request = (id, None, Action::ReplaceRecoveryKey {});
        return approvals::hold(
            &state,
            &caller,
            q.reason.as_deref(),
            request,
            Some(body.passphrase),
            move |tx| tx.check_recovery_key_choosable(&ws),
        )
        .await;
    }
    jobs::keys::choose_recovery_key(&state.store, actor(&caller), &id, body.passphrase).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

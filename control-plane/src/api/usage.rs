//! `GET /api/v1/workspaces/{id}/usage` (quota, bytes held, per-storage capacity, last sync and
//! last measured repository size, the last daily usage reconcile) and `GET /api/v1/alerts`
//! (quota, storage, verify and usage-drift alerts; recorded now, notified by a later issue).

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::databases::default_workspace;
use super::error::ErrorBody;
use super::extract::{ApiPath, ApiQuery};
use super::{
    decode_page_token, encode_page_token, page_size, workspace_for, ApiError, AppState, Page,
};
use crate::domain::authz::{Access, Caller};
use crate::domain::is_generated_id;
use crate::domain::quota::{percent, Alert, AlertState, StorageUsageView, WorkspaceUsage};
use crate::{jobs, store};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(workspace_usage))
        .routes(routes!(list_alerts))
}

#[utoipa::path(get, path = "/api/v1/workspaces/{id}/usage", tag = "storage",
    params(("id" = String, Path, description = "Workspace")), security(("bearer" = [])),
    responses((status = 200, body = WorkspaceUsage), (status = 404, body = ErrorBody)))]
async fn workspace_usage(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(ws): ApiPath<String>,
) -> Result<Json<WorkspaceUsage>, ApiError> {
    let rtx = state.store.read()?;
    let workspace = workspace_for(&rtx, &caller, &ws, Access::Read)?;
    let used = store::quota::used_bytes(&rtx, &ws)?;
    let mut storages = Vec::new();
    for s in store::storages::list(&rtx, &ws)? {
        let upkeep = jobs::upkeep::read_upkeep_state(&rtx, &ws, Some(&s.id))?;
        storages.push(StorageUsageView {
            id: s.id,
            pve_storage: s.pve_storage,
            capacity_bytes: s.capacity_bytes,
            status: s.status,
            last_sync: s.usage,
            repository_bytes: upkeep.repository_bytes,
            repository_measured_at: upkeep.repository_bytes_at,
        });
    }
    let reconcile = jobs::reconcile::latest(&rtx, &ws)?;
    Ok(Json(WorkspaceUsage {
        workspace_id: ws,
        quota_bytes: workspace.quota_bytes,
        used_bytes: used,
        percent: percent(used, workspace.quota_bytes),
        storages,
        reconcile,
    }))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AlertQuery {
    /// Default: the caller's workspace. Platform admins must name one.
    workspace: Option<String>,
    state: Option<AlertState>,
    page_size: Option<i64>,
    page_token: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/alerts", tag = "storage", params(AlertQuery), security(("bearer" = [])),
    responses((status = 200, body = Page<Alert>, description = "Oldest first"), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn list_alerts(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<AlertQuery>,
) -> Result<Page<Alert>, ApiError> {
    let size = page_size(q.page_size)?;
    let after = decode_page_token(q.page_token.as_deref(), |s| is_generated_id("alr", s))?;
    let Some(ws) = q.workspace.clone().or_else(|| default_workspace(&caller)) else {
        return Err(ApiError::bad_request(
            "invalid_query",
            "name the workspace whose alerts to list (workspace=…)",
        )
        .with_detail("workspace", "is required for platform admins"));
    };
    let rtx = state.store.read()?;
    workspace_for(&rtx, &caller, &ws, Access::Read)?;
    let (items, more) = store::quota::list_alerts(&rtx, &ws, q.state, after.as_deref(), size)?;
    let next_page_token = more.then(|| encode_page_token(&items.last().expect("non-empty").id));
    Ok(Page {
        items,
        next_page_token,
    })
}

//! `/api/v1/audit` (filtered reads, newest first) and `/api/v1/audit/verify` (re-walks the hash
//! chain). Entries are visible to whoever may read what they are about: the workspace's members
//! with a workspace-wide role, or for a database's entries also those bound to that database.

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ErrorBody;
use super::extract::ApiQuery;
use super::{decode_page_token, encode_page_token, page_size, ApiError, AppState, Page};
use crate::domain::audit::{AuditEntry, AuditRecord};
use crate::domain::authz::{Access, Caller, Role};
use crate::store::{self, audit::Verification};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_audit))
        .routes(routes!(verify_audit))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// User id or name.
    actor: Option<String>,
    /// `policy.create`, or a prefix such as `policy`.
    action: Option<String>,
    resource_type: Option<String>,
    resource_id: Option<String>,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    page_size: Option<i64>,
    page_token: Option<String>,
}

pub fn visible(caller: &Caller, e: &AuditEntry) -> bool {
    match (&e.workspace_id, &e.database_id) {
        _ if caller.is_platform_admin() => true,
        (None, _) => false,
        (Some(ws), Some(db)) => caller.access(ws, Some(db)) >= Access::Read,
        (Some(ws), None) => caller.workspace_wide(ws) && caller.access(ws, None) >= Access::Read,
    }
}

#[utoipa::path(get, path = "/api/v1/audit", tag = "audit", params(AuditQuery), security(("bearer" = [])),
    responses((status = 200, body = Page<AuditRecord>, description = "Newest first"), (status = 400, body = ErrorBody)))]
async fn list_audit(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> Result<Page<AuditRecord>, ApiError> {
    let size = page_size(q.page_size)?;
    let before = decode_page_token(q.page_token.as_deref(), |s| s.parse::<u64>().is_ok())?
        .and_then(|s| s.parse::<u64>().ok());
    let filter = store::audit::Filter {
        actor: q.actor,
        action: q.action,
        resource_type: q.resource_type,
        resource_id: q.resource_id,
        from: q.from,
        to: q.to,
    };
    let rtx = state.store.read()?;
    let (items, more) = store::audit::list(&rtx, &filter, |e| visible(&caller, e), before, size)?;
    let next_page_token =
        more.then(|| encode_page_token(&items.last().expect("non-empty").entry.seq.to_string()));
    Ok(Page {
        items,
        next_page_token,
    })
}

#[utoipa::path(get, path = "/api/v1/audit/verify", tag = "audit", security(("bearer" = [])),
    responses((status = 200, body = Verification, description = "`ok` is false and `first_broken` names the first bad entry when the chain is broken"),
        (status = 403, body = ErrorBody)))]
async fn verify_audit(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Verification>, ApiError> {
    let allowed = caller
        .roles
        .iter()
        .any(|b| matches!(b.role, Role::PlatformAdmin | Role::WorkspaceAdmin));
    if !allowed {
        return Err(ApiError::forbidden(
            "verifying the audit chain needs a platform-admin or workspace-admin role",
        ));
    }
    let store = state.store.clone();
    let report = tokio::task::spawn_blocking(move || store::audit::verify(&store.read()?))
        .await
        .map_err(|e| store::StoreError::Task(e.to_string()))??;
    Ok(Json(report))
}

//! `/api/v1/databases` (the seeds' applications): register what is backed up. Secrets are
//! accepted on writes and never returned: responses carry only the names of the stored secrets.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ErrorBody;
use super::extract::{actor, ApiJson, ApiPath, ApiQuery};
use super::{
    database_for, decode_page_token, encode_page_token, page_size, ApiError, AppState, Page,
};
use crate::domain::authz::{Access, Caller};
use crate::domain::check_slug;
use crate::domain::database::{DatabaseBody, DatabaseType, DatabaseView};
use crate::domain::pitr::{self, WalSeen};
use crate::domain::policy::Policy;
use crate::domain::retention::RetentionPlan;
use crate::store;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_databases, create_database))
        .routes(routes!(get_database, update_database, delete_database))
        .routes(routes!(database_policies))
        .routes(routes!(database_retention))
        .routes(routes!(application_policies))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DatabaseQuery {
    workspace: Option<String>,
    #[serde(rename = "type")]
    #[param(rename = "type")]
    db_type: Option<DatabaseType>,
    page_size: Option<i64>,
    page_token: Option<String>,
}

/// The workspace a listing without `workspace=` covers: all for platform admins, else the
/// caller's own.
pub fn default_workspace(caller: &Caller) -> Option<String> {
    if caller.is_platform_admin() {
        None
    } else {
        caller.roles.iter().find_map(|b| b.workspace_id.clone())
    }
}

#[utoipa::path(get, path = "/api/v1/databases", tag = "databases", params(DatabaseQuery), security(("bearer" = [])),
    responses((status = 200, body = Page<DatabaseView>), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn list_databases(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<DatabaseQuery>,
) -> Result<Page<DatabaseView>, ApiError> {
    let size = page_size(q.page_size)?;
    let after = decode_page_token(q.page_token.as_deref(), |s| check_slug(s).is_ok())?;
    let rtx = state.store.read()?;
    let scope = super::listing(&rtx, &caller, q.workspace.as_deref())?;
    if matches!(scope, super::Listing::Nothing) {
        return Ok(Page::empty());
    }
    let (items, more) = store::databases::list(
        &rtx,
        scope.workspace(),
        q.db_type,
        |db| caller.access(&db.workspace_id, Some(&db.id)) >= Access::Read,
        after.as_deref(),
        size,
    )?;
    let next_page_token = more.then(|| encode_page_token(&items.last().expect("non-empty").id));
    Ok(Page {
        items: items.iter().map(|d| d.view()).collect(),
        next_page_token,
    })
}

#[utoipa::path(post, path = "/api/v1/databases", tag = "databases", request_body = DatabaseBody, security(("bearer" = [])),
    responses((status = 201, body = DatabaseView), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn create_database(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<DatabaseBody>,
) -> Result<(StatusCode, Json<DatabaseView>), ApiError> {
    if let Some(ws) = &body.workspace_id {
        // An unknown workspace and one the caller cannot see answer alike.
        let visible = check_slug(ws).is_ok()
            && store::workspaces::get(&state.store.read()?, ws)?.is_some()
            && caller.access(ws, None) >= Access::Read;
        if !visible {
            return Err(ApiError::validation(vec![crate::domain::Violation::new(
                "workspace_id",
                format!("no workspace '{ws}' among yours"),
            )]));
        }
        if !caller.can_manage_databases(ws) {
            return Err(ApiError::forbidden(format!(
                "registering databases in workspace '{ws}' needs a workspace-wide workspace-admin or app-owner role"
            )));
        }
    }
    let db = body
        .into_database(None, None, chrono::Utc::now())
        .map_err(ApiError::validation)?;
    let view = db.view();
    state
        .store
        .write(actor(&caller), move |tx| tx.create_database(&db))
        .await?;
    Ok((StatusCode::CREATED, Json(view)))
}

#[utoipa::path(get, path = "/api/v1/databases/{id}", tag = "databases", params(("id" = String, Path)), security(("bearer" = [])),
    responses((status = 200, body = DatabaseView), (status = 404, body = ErrorBody)))]
async fn get_database(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<DatabaseView>, ApiError> {
    let rtx = state.store.read()?;
    let db = database_for(&rtx, &caller, &id, Access::Read)?;
    let backups = store::backups::of_database(&rtx, &db.id)?;
    let wal: Option<WalSeen> = store::jobs::schedule_record(&rtx, &pitr::wal_key(&db.id))?;
    let mut view = db.view();
    view.recoverable = pitr::window(&backups, wal.as_ref());
    Ok(Json(view))
}

/// What the next retention run would remove, and the rule that keeps each entry.
#[utoipa::path(get, path = "/api/v1/databases/{id}/retention", tag = "databases", params(("id" = String, Path)), security(("bearer" = [])),
    responses((status = 200, body = RetentionPlan), (status = 404, body = ErrorBody)))]
async fn database_retention(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<RetentionPlan>, ApiError> {
    let rtx = state.store.read()?;
    let db = database_for(&rtx, &caller, &id, Access::Read)?;
    Ok(Json(crate::jobs::upkeep::retention_plan(
        &rtx,
        &db.id,
        state.store.now(),
    )?))
}

#[utoipa::path(put, path = "/api/v1/databases/{id}", tag = "databases", params(("id" = String, Path)), request_body = DatabaseBody,
    security(("bearer" = [])),
    responses((status = 200, body = DatabaseView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn update_database(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<DatabaseBody>,
) -> Result<Json<DatabaseView>, ApiError> {
    let existing = database_for(&state.store.read()?, &caller, &id, Access::Write)?;
    let db = body
        .into_database(Some(&id), Some(&existing), chrono::Utc::now())
        .map_err(ApiError::validation)?;
    let view = db.view();
    state
        .store
        .write(actor(&caller), move |tx| tx.update_database(&db))
        .await?;
    Ok(Json(view))
}

#[utoipa::path(delete, path = "/api/v1/databases/{id}", tag = "databases", params(("id" = String, Path)), security(("bearer" = [])),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn delete_database(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let existing = database_for(&state.store.read()?, &caller, &id, Access::Read)?;
    if !caller.can_manage_databases(&existing.workspace_id) {
        return Err(ApiError::forbidden(
            "removing a database needs a workspace-wide workspace-admin or app-owner role",
        ));
    }
    state
        .store
        .write(actor(&caller), move |tx| tx.delete_database(&id))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The backup policies of one database.
#[derive(Serialize, ToSchema)]
pub struct DatabasePolicies {
    pub db_identifier: String,
    pub db_type: DatabaseType,
    pub policies: Vec<Policy>,
}

async fn policies_of(
    state: AppState,
    caller: Caller,
    id: String,
) -> Result<Json<DatabasePolicies>, ApiError> {
    let rtx = state.store.read()?;
    let db = database_for(&rtx, &caller, &id, Access::Read)?;
    let (policies, _) = store::policies::list(
        &rtx,
        store::policies::Scope::Database(&db.id),
        None,
        |_| true,
        None,
        super::MAX_PAGE_SIZE,
    )?;
    Ok(Json(DatabasePolicies {
        db_identifier: db.id,
        db_type: db.db_type,
        policies,
    }))
}

#[utoipa::path(get, path = "/api/v1/databases/{id}/backup-policy", tag = "databases", params(("id" = String, Path)),
    security(("bearer" = [])),
    responses((status = 200, body = DatabasePolicies), (status = 404, body = ErrorBody)))]
async fn database_policies(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<DatabasePolicies>, ApiError> {
    policies_of(state, caller, id).await
}

/// The seeds' name for the same answer.
#[utoipa::path(get, path = "/api/v1/applications/{id}/backup-policy", tag = "databases", params(("id" = String, Path)),
    security(("bearer" = [])),
    responses((status = 200, body = DatabasePolicies), (status = 404, body = ErrorBody)))]
async fn application_policies(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<DatabasePolicies>, ApiError> {
    policies_of(state, caller, id).await
}

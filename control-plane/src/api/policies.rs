//! `/api/v1/policies` (also answered at `/api/backup/policies`, the path the policy seed names)
//! and `POST /api/v1/policies/validate` for dry runs. Validation itself lives in
//! `domain::policy` and the rule table in `domain::rules`; this file only wires them to HTTP.

use crate::store::ReadTx;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
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
use crate::domain::approval::{self, Action, Approval};
use crate::domain::audit::Actor;
use crate::domain::authz::{Access, Caller};
use crate::domain::database::{Database, DatabaseType};
use crate::domain::policy::{self, Policy, PolicyBody};
use crate::domain::rules::{self, TechnologyRule};
use crate::domain::workspace::Workspace;
use crate::domain::{check_slug, is_generated_id, new_id, Violation};
use crate::store::{self, policies::Scope};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_policies, create_policy))
        .routes(routes!(get_policy, update_policy, delete_policy))
        .routes(routes!(validate_policy))
        .routes(routes!(policy_rules))
}

/// Serves the policy routes again under the seed's path and documents them there too, with
/// operation ids of their own (OpenAPI wants them unique).
pub fn add_seed_alias(
    router: Router<AppState>,
    openapi: &mut utoipa::openapi::OpenApi,
) -> Router<AppState> {
    for (from, to) in [
        ("/api/v1/policies", "/api/backup/policies"),
        ("/api/v1/policies/{id}", "/api/backup/policies/{id}"),
    ] {
        if let Some(mut item) = openapi.paths.paths.get(from).cloned() {
            for op in [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.delete,
            ]
            .into_iter()
            .flatten()
            {
                op.operation_id = op.operation_id.as_ref().map(|id| format!("{id}_seed_path"));
                op.tags = Some(vec!["policies".into()]);
            }
            openapi.paths.paths.insert(to.to_string(), item);
        }
    }
    router
        .route(
            "/api/backup/policies",
            get(list_policies).post(create_policy),
        )
        .route(
            "/api/backup/policies/{id}",
            get(get_policy).put(update_policy).delete(delete_policy),
        )
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PolicyQuery {
    workspace: Option<String>,
    /// A database id (`db_identifier`).
    database: Option<String>,
    db_type: Option<DatabaseType>,
    page_size: Option<i64>,
    page_token: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/policies", tag = "policies", params(PolicyQuery), security(("bearer" = [])),
    responses((status = 200, body = Page<Policy>), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn list_policies(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<PolicyQuery>,
) -> Result<Page<Policy>, ApiError> {
    let size = page_size(q.page_size)?;
    let after = decode_page_token(q.page_token.as_deref(), |s| is_generated_id("pol", s))?;
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
        (None, None, None) if caller.is_platform_admin() => Scope::All,
        (None, None, None) => return Ok(Page::empty()),
    };
    let (items, more) = store::policies::list(
        &rtx,
        scope,
        q.db_type,
        |p| {
            caller.access(&p.workspace_id, Some(&p.db_identifier)) >= Access::Read
                && q.workspace.as_ref().is_none_or(|ws| *ws == p.workspace_id)
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

/// The database a body names, if the caller can see it, with its workspace.
fn named_database(
    rtx: &ReadTx,
    caller: &Caller,
    id: &str,
) -> Result<Option<(Database, Option<Workspace>)>, ApiError> {
    if check_slug(id).is_err() {
        return Ok(None);
    }
    let Some(db) = store::databases::get(rtx, id)? else {
        return Ok(None);
    };
    if caller.access(&db.workspace_id, Some(&db.id)) == Access::None {
        return Ok(None);
    }
    let ws = store::workspaces::get(rtx, &db.workspace_id)?;
    Ok(Some((db, ws)))
}

/// Validates a body for `caller`; on success also checks write access to the named database.
fn checked_policy(
    rtx: &ReadTx,
    caller: &Caller,
    body: &PolicyBody,
    existing: Option<&Policy>,
    id: String,
) -> Result<Policy, ApiError> {
    let named = named_database(rtx, caller, &body.db_identifier)?;
    let ctx = policy::Context {
        database: named.as_ref().map(|(d, _)| d),
        workspace: named.as_ref().and_then(|(_, w)| w.as_ref()),
        existing,
        id,
        now: chrono::Utc::now(),
    };
    let policy = policy::validate(body, &ctx).map_err(ApiError::validation)?;
    require(
        caller.access(&policy.workspace_id, Some(&policy.db_identifier)),
        Access::Write,
        "database",
        &policy.db_identifier,
    )?;
    Ok(policy)
}

#[utoipa::path(post, path = "/api/v1/policies", tag = "policies", request_body = PolicyBody, security(("bearer" = [])),
    responses((status = 201, body = Policy), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn create_policy(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<PolicyBody>,
) -> Result<(StatusCode, Json<Policy>), ApiError> {
    let policy = checked_policy(&state.store.read()?, &caller, &body, None, new_id("pol"))?;
    let policy = state
        .store
        .write(actor(&caller), move |tx| {
            let policy = with_default_storage(tx, policy)?;
            tx.create_policy(&policy)?;
            Ok(policy)
        })
        .await?;
    Ok((StatusCode::CREATED, Json(policy)))
}

/// A policy that names no storage gets its workspace's only one, stored in the policy.
fn with_default_storage(tx: &store::Tx, mut policy: Policy) -> Result<Policy, store::StoreError> {
    if policy.storage_id.is_none() {
        policy.storage_id = tx
            .default_storage(&policy.workspace_id, "storage_id")?
            .map(|s| s.id);
    }
    Ok(policy)
}

pub(super) fn policy_for(
    rtx: &ReadTx,
    caller: &Caller,
    id: &str,
    needed: Access,
) -> Result<Policy, ApiError> {
    if !is_generated_id("pol", id) {
        return Err(ApiError::bad_request(
            "invalid_id",
            format!("'{id}' is not a policy id (pol_…)"),
        ));
    }
    let p = store::policies::get(rtx, id)?.ok_or_else(|| ApiError::not_found("policy", id))?;
    require(
        caller.access(&p.workspace_id, Some(&p.db_identifier)),
        needed,
        "policy",
        id,
    )?;
    Ok(p)
}

#[utoipa::path(get, path = "/api/v1/policies/{id}", tag = "policies", params(("id" = String, Path)), security(("bearer" = [])),
    responses((status = 200, body = Policy), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_policy(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Policy>, ApiError> {
    Ok(Json(policy_for(
        &state.store.read()?,
        &caller,
        &id,
        Access::Read,
    )?))
}

#[utoipa::path(put, path = "/api/v1/policies/{id}", tag = "policies", params(("id" = String, Path), ReasonQuery), request_body = PolicyBody,
    security(("bearer" = [])),
    responses((status = 200, body = Policy),
        (status = 202, body = Approval, description = "The change shortens retention and the workspace has four eyes on: waiting for a second admin, nothing changed yet"),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn update_policy(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<ReasonQuery>,
    ApiJson(body): ApiJson<PolicyBody>,
) -> Result<Response, ApiError> {
    let rtx = state.store.read()?;
    let existing = policy_for(&rtx, &caller, &id, Access::Write)?;
    let policy = checked_policy(&rtx, &caller, &body, Some(&existing), id.clone())?;
    drop(rtx);
    let shortened = approval::shortened(&existing, &policy);
    if !shortened.is_empty() && approvals::four_eyes(&state, &existing.workspace_id)? {
        let request = (
            existing.workspace_id.clone(),
            Some(existing.db_identifier.clone()),
            Action::ShortenRetention {
                policy_id: id,
                shortened,
                before: Box::new(existing),
                after: Box::new(policy),
            },
        );
        return approvals::hold(&state, &caller, q.reason.as_deref(), request, None, |_| {
            Ok(())
        })
        .await;
    }
    let policy = update_policy_now(&state, actor(&caller), policy, None).await?;
    Ok(Json(policy).into_response())
}

/// Stores the changed policy as `actor` (the endpoint, or an approval carried out). With
/// `expected`, only while the stored policy is still that one (409 otherwise: what was approved
/// was a change of that version).
pub async fn update_policy_now(
    state: &AppState,
    actor: Actor,
    policy: Policy,
    expected: Option<Policy>,
) -> Result<Policy, ApiError> {
    Ok(state
        .store
        .write(actor, move |tx| {
            if let Some(expected) = expected {
                if tx.policy(&policy.id)?.as_ref() != Some(&expected) {
                    return Err(store::StoreError::Conflict(format!(
                        "policy '{}' was changed or deleted since this change was requested; request it again",
                        policy.id
                    )));
                }
            }
            let policy = with_default_storage(tx, policy)?;
            tx.update_policy(&policy)?;
            Ok(policy)
        })
        .await?)
}

#[utoipa::path(delete, path = "/api/v1/policies/{id}", tag = "policies", params(("id" = String, Path)), security(("bearer" = [])),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn delete_policy(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    policy_for(&state.store.read()?, &caller, &id, Access::Write)?;
    state
        .store
        .write(actor(&caller), move |tx| tx.delete_policy(&id))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The answer of a dry run.
#[derive(Serialize, ToSchema)]
pub struct ValidationReport {
    pub valid: bool,
    pub violations: Vec<Violation>,
    /// The policy as it would be stored (defaults filled in), when valid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<Policy>,
}

#[utoipa::path(post, path = "/api/v1/policies/validate", tag = "policies", request_body = PolicyBody, security(("bearer" = [])),
    responses((status = 200, body = ValidationReport, description = "Valid or not; nothing is stored"),
        (status = 400, body = ErrorBody, description = "The body is not a policy at all (syntax, unknown fields, types)")))]
async fn validate_policy(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<PolicyBody>,
) -> Result<Json<ValidationReport>, ApiError> {
    let rtx = state.store.read()?;
    let named = named_database(&rtx, &caller, &body.db_identifier)?;
    let ctx = policy::Context {
        database: named.as_ref().map(|(d, _)| d),
        workspace: named.as_ref().and_then(|(_, w)| w.as_ref()),
        existing: None,
        id: "pol_dry_run".into(),
        now: chrono::Utc::now(),
    };
    Ok(Json(match policy::validate(&body, &ctx) {
        Ok(policy) => ValidationReport {
            valid: true,
            violations: vec![],
            policy: Some(policy),
        },
        Err(violations) => ValidationReport {
            valid: false,
            violations,
            policy: None,
        },
    }))
}

#[utoipa::path(get, path = "/api/v1/policies/rules", tag = "policies", security(("bearer" = [])),
    responses((status = 200, body = Vec<TechnologyRule>, description = "The per-technology rule table (docs/policies.md)")))]
async fn policy_rules(_caller: Caller) -> Json<&'static [TechnologyRule]> {
    Json(&rules::TABLE)
}

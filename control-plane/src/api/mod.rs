//! The HTTP API: one router file per resource, merged here with the OpenAPI document that
//! `utoipa-axum` builds from the same handler annotations — a route cannot exist without its
//! documentation, so `/api/v1/openapi.json` cannot drift from the code.

pub mod agents;
pub mod approvals;
pub mod audit;
pub mod backups;
pub mod clusters;
pub mod databases;
pub mod drills;
pub mod error;
pub mod extract;
pub mod health;
pub mod jobs;
pub mod policies;
pub mod reports;
pub mod restores;
pub mod schedule;
pub mod storages;
pub mod usage;
pub mod users;
pub mod workspaces;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use base64::Engine;
use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;

use crate::domain::authz::{Access, Caller};
use crate::domain::database::Database;
use crate::domain::workspace::Workspace;
use crate::state::AppState;
use crate::store::{self, ReadTx};
pub use error::ApiError;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Bulwark control plane API",
        description = "Workspaces, users and tokens, databases, backup policies, the backup catalog, restores with approval, the audit log, Proxmox clusters, backup storages, usage and alerts, agents, jobs and the schedule. Every request needs `Authorization: Bearer <token>` except /healthz, /readyz, /metrics, this document and the agent protocol under /agent/v1 (mutual TLS with the certificate from enrolment; `POST /agent/v1/enroll` takes a one-time enrolment token in its body). Errors are always `{\"error\": {\"code\", \"message\", \"details\": [{\"path\", \"problem\"}]}}`."
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "workspaces"), (name = "users"), (name = "databases"), (name = "policies"),
        (name = "backups"), (name = "restores"), (name = "drills"), (name = "reports"), (name = "approvals"), (name = "audit"), (name = "proxmox"), (name = "storage"), (name = "agents"), (name = "jobs"), (name = "health")
    )
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The whole application: API, OpenAPI document, health and metrics endpoints.
pub fn router(state: AppState) -> Router {
    let (api, openapi) = api_parts();
    let document = Arc::new(openapi.to_json().expect("the OpenAPI document serialises"));
    let metrics = state.metrics.clone();
    api.route(
        "/api/v1/openapi.json",
        get(move || async move {
            (
                [("content-type", "application/json")],
                document.as_str().to_owned(),
            )
        }),
    )
    .route_layer(axum::middleware::from_fn_with_state(
        metrics,
        crate::metrics::track,
    ))
    .fallback(|| async {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "no_route",
            "no such endpoint; see /api/v1/openapi.json",
        )
    })
    .method_not_allowed_fallback(|| async {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this endpoint does not answer that method; see /api/v1/openapi.json",
        )
    })
    .layer(DefaultBodyLimit::max(state.max_body_bytes))
    .with_state(state)
}

/// The OpenAPI document as served (for tests and docs/).
pub fn openapi() -> utoipa::openapi::OpenApi {
    api_parts().1
}

fn api_parts() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let (api, mut openapi) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(workspaces::routes())
        .merge(users::routes())
        .merge(databases::routes())
        .merge(policies::routes())
        .merge(backups::routes())
        .merge(restores::routes())
        .merge(drills::routes())
        .merge(reports::routes())
        .merge(approvals::routes())
        .merge(audit::routes())
        .merge(clusters::routes())
        .merge(storages::routes())
        .merge(usage::routes())
        .merge(agents::routes())
        .merge(jobs::routes())
        .merge(schedule::routes())
        .merge(health::routes())
        .split_for_parts();
    let api = policies::add_seed_alias(api, &mut openapi);
    let api = restores::add_seed_aliases(api);
    (api, openapi)
}

// ---- pagination ----------------------------------------------------------------------------

pub const DEFAULT_PAGE_SIZE: usize = 50;
pub const MAX_PAGE_SIZE: usize = 500;

/// One page of a listing; pass `next_page_token` back as `page_token` for the next one.
#[derive(Serialize, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_page_token: Option<String>,
}

impl<T> Page<T> {
    /// Nothing to show (the caller may see no workspace).
    pub fn empty() -> Self {
        Page {
            items: Vec::new(),
            next_page_token: None,
        }
    }
}

impl<T: Serialize> IntoResponse for Page<T> {
    fn into_response(self) -> axum::response::Response {
        axum::Json(self).into_response()
    }
}

pub fn page_size(requested: Option<i64>) -> Result<usize, ApiError> {
    match requested {
        None => Ok(DEFAULT_PAGE_SIZE),
        Some(n) if (1..=MAX_PAGE_SIZE as i64).contains(&n) => Ok(n as usize),
        Some(n) => Err(ApiError::bad_request(
            "invalid_query",
            format!("page_size must be between 1 and {MAX_PAGE_SIZE} (got {n})"),
        )
        .with_detail(
            "page_size",
            format!("must be between 1 and {MAX_PAGE_SIZE}"),
        )),
    }
}

pub fn encode_page_token(position: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(position)
}

/// The position inside a page token, which `check` must accept (tokens are opaque to clients,
/// but a hand-made one must still not reach the store unchecked).
pub fn decode_page_token(
    token: Option<&str>,
    check: impl Fn(&str) -> bool,
) -> Result<Option<String>, ApiError> {
    let Some(token) = token else { return Ok(None) };
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .filter(|s| check(s))
        .map(Some)
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_query",
                "page_token is not a token this listing issued; start again without it",
            )
            .with_detail("page_token", "unknown or damaged page token")
        })
}

// ---- access ----------------------------------------------------------------------------------

/// Turns an access level into 404 (cannot even see it), 403 (sees it, may not do this) or ok.
pub fn require(access: Access, needed: Access, kind: &str, id: &str) -> Result<(), ApiError> {
    if access == Access::None {
        return Err(ApiError::not_found(kind, id));
    }
    if access < needed {
        return Err(ApiError::forbidden(format!(
            "your role allows {} access to {kind} '{id}'; this needs {}",
            level(access),
            level(needed)
        )));
    }
    Ok(())
}

fn level(a: Access) -> &'static str {
    match a {
        Access::None => "no",
        Access::Read => "read",
        Access::Write => "write",
        Access::Admin => "admin",
    }
}

/// A database the caller may access at `needed`; invisible ones are 404 like missing ones.
pub fn database_for(
    rtx: &ReadTx,
    caller: &Caller,
    id: &str,
    needed: Access,
) -> Result<Database, ApiError> {
    let db = store::databases::get(rtx, id)?.ok_or_else(|| ApiError::not_found("database", id))?;
    require(
        caller.access(&db.workspace_id, Some(&db.id)),
        needed,
        "database",
        id,
    )?;
    Ok(db)
}

/// Which workspaces a listing covers.
pub enum Listing {
    Workspace(String),
    /// Every workspace (a platform admin who named none).
    All,
    /// None: the caller belongs to no workspace and named none.
    Nothing,
}

impl Listing {
    /// The workspace to scan, `None` for all (or nothing).
    pub fn workspace(&self) -> Option<&str> {
        match self {
            Listing::Workspace(ws) => Some(ws),
            Listing::All | Listing::Nothing => None,
        }
    }
}

/// The workspace a listing was asked for (which the caller must be able to read; 404 like a
/// missing one otherwise), else the caller's own workspace.
pub fn listing(rtx: &ReadTx, caller: &Caller, asked: Option<&str>) -> Result<Listing, ApiError> {
    if let Some(ws) = asked {
        workspace_for(rtx, caller, ws, Access::Read)?;
        return Ok(Listing::Workspace(ws.to_string()));
    }
    Ok(match databases::default_workspace(caller) {
        Some(ws) => Listing::Workspace(ws),
        None if caller.is_platform_admin() => Listing::All,
        None => Listing::Nothing,
    })
}

pub fn workspace_for(
    rtx: &ReadTx,
    caller: &Caller,
    id: &str,
    needed: Access,
) -> Result<Workspace, ApiError> {
    let ws =
        store::workspaces::get(rtx, id)?.ok_or_else(|| ApiError::not_found("workspace", id))?;
    require(caller.access(&ws.id, None), needed, "workspace", id)?;
    Ok(ws)
}

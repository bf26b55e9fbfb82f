//! `/api/v1/drills` and `POST /api/v1/policies/{id}/drills`: restore drills run on request and
//! followed, each with what it restored, its checks, and its RTO and RPO against the policy's
//! targets. When drills run, and how they are judged, is [`crate::jobs::drills`]'.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ErrorBody;
use super::extract::{ApiPath, ApiQuery};
use super::{database_for, decode_page_token, encode_page_token, page_size, require};
use super::{ApiError, AppState, Page};
use crate::domain::authz::{Access, Caller};
use crate::domain::drill::{Drill, DrillStatus};
use crate::domain::is_generated_id;
use crate::jobs::drills;
use crate::store::{self, drills::Scope};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(run_drill))
        .routes(routes!(list_drills))
        .routes(routes!(get_drill))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DrillQuery {
    workspace: Option<String>,
    /// A database id.
    database: Option<String>,
    policy: Option<String>,
    status: Option<DrillStatus>,
    page_size: Option<i64>,
    page_token: Option<String>,
}

/// Runs the policy's drill now (a policy without a `drill` block is drilled with the defaults
/// for its engine). Refused while another drill of the policy is queued or running (409), and
/// when the database has no backup of the kind the drill restores (422).
#[utoipa::path(post, path = "/api/v1/policies/{id}/drills", tag = "drills", params(("id" = String, Path)), security(("bearer" = [])),
    responses((status = 202, body = Drill, description = "Queued on the drilling agent"),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn run_drill(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<(StatusCode, Json<Drill>), ApiError> {
    super::policies::policy_for(&state.store.read()?, &caller, &id, Access::Write)?;
    let d = drills::request(&state.store, &state.jobs, &caller, id).await?;
    Ok((StatusCode::ACCEPTED, Json(d)))
}

/// The drill `id` as the caller may see it (404 when it may not), with its job's progress.
fn visible(state: &AppState, caller: &Caller, id: &str) -> Result<Drill, ApiError> {
    if !is_generated_id("drl", id) {
        return Err(ApiError::not_found("drill", id));
    }
    let rtx = state.store.read()?;
    let d = store::drills::get(&rtx, id)?.ok_or_else(|| ApiError::not_found("drill", id))?;
    require(
        caller.access(&d.workspace_id, Some(&d.database_id)),
        Access::Read,
        "drill",
        id,
    )?;
    let job = store::jobs::get(&rtx, &d.job_id)?;
    Ok(drills::current(d, job.as_ref()))
}

#[utoipa::path(get, path = "/api/v1/drills", tag = "drills", params(DrillQuery), security(("bearer" = [])),
    responses((status = 200, body = Page<Drill>, description = "In the order they were made"),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn list_drills(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<DrillQuery>,
) -> Result<Page<Drill>, ApiError> {
    let size = page_size(q.page_size)?;
    let after = decode_page_token(q.page_token.as_deref(), |s| is_generated_id("drl", s))?;
    let rtx = state.store.read()?;
    let listing = match &q.database {
        Some(db) => {
            database_for(&rtx, &caller, db, Access::Read)?;
            None
        }
        None => Some(super::listing(&rtx, &caller, q.workspace.as_deref())?),
    };
    let scope = match (&q.database, &listing) {
        (Some(db), _) => Scope::Database(db),
        (None, Some(super::Listing::Workspace(ws))) => Scope::Workspace(ws),
        (None, Some(super::Listing::All)) => Scope::All,
        _ => return Ok(Page::empty()),
    };
    let (stored, more) = store::drills::list(
        &rtx,
        scope,
        |d| {
            caller.access(&d.workspace_id, Some(&d.database_id)) >= Access::Read
                && q.policy.as_ref().is_none_or(|p| *p == d.policy_id)
                && q.workspace.as_ref().is_none_or(|w| *w == d.workspace_id)
        },
        after.as_deref(),
        size,
    )?;
    // The next page starts after the last drill read, whether or not `status` kept it.
    let last_read = stored.last().map(|d| d.id.clone());
    let mut items = Vec::new();
    for d in stored {
        let job = store::jobs::get(&rtx, &d.job_id)?;
        let d = drills::current(d, job.as_ref());
        if q.status.is_none_or(|s| s == d.status) {
            items.push(d);
        }
    }
    let next_page_token = more.then(|| encode_page_token(last_read.as_deref().unwrap_or("")));
    Ok(Page {
        items,
        next_page_token,
    })
}

#[utoipa::path(get, path = "/api/v1/drills/{id}", tag = "drills", params(("id" = String, Path)), security(("bearer" = [])),
    responses((status = 200, body = Drill), (status = 404, body = ErrorBody)))]
async fn get_drill(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Drill>, ApiError> {
    Ok(Json(visible(&state, &caller, &id)?))
}

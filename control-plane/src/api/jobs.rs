//! Jobs: listed for people (`/api/v1/jobs`), and the agent side of the job protocol
//! (`/agent/v1/jobs/…`, mutual TLS): long-poll for work, progress, result.
//!
//! Only the HTTP side lives here: what the poll waits for, how a job is handed out with its
//! workspace key and how results are recorded is [`crate::jobs`]'s.

use axum::extract::State;
use axum::Json;
use bulwark_core::api::{JobAck, JobProgress, JobResult, PollRequest, PollResponse};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ErrorBody;
use super::extract::{AgentIdentity, ApiJson, ApiPath, ApiQuery};
use super::{decode_page_token, encode_page_token, page_size, require, ApiError, AppState, Page};
use crate::domain::authz::{Access, Caller};
use crate::domain::is_generated_id;
use crate::domain::job::{Job, JobStatus};
use crate::{jobs, store};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_jobs))
        .routes(routes!(get_job))
        .routes(routes!(poll))
        .routes(routes!(progress))
        .routes(routes!(result))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct JobQuery {
    workspace: Option<String>,
    /// A database id.
    database: Option<String>,
    status: Option<JobStatus>,
    page_size: Option<i64>,
    page_token: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/jobs", tag = "jobs", params(JobQuery), security(("bearer" = [])),
    responses((status = 200, body = Page<Job>, description = "Newest first"), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn list_jobs(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<JobQuery>,
) -> Result<Page<Job>, ApiError> {
    let size = page_size(q.page_size)?;
    let before = decode_page_token(q.page_token.as_deref(), |s| is_generated_id("job", s))?;
    let rtx = state.store.read()?;
    let scope = super::listing(&rtx, &caller, q.workspace.as_deref())?;
    if let Some(db) = &q.database {
        super::database_for(&rtx, &caller, db, Access::Read)?;
    }
    if matches!(scope, super::Listing::Nothing) {
        return Ok(Page::empty());
    }
    let (items, more) = store::jobs::list(
        &rtx,
        scope.workspace(),
        |j| {
            caller.access(&j.workspace_id, Some(&j.database_id)) >= Access::Read
                && q.database.as_ref().is_none_or(|d| *d == j.database_id)
                && q.status.is_none_or(|s| s == j.status)
        },
        before.as_deref(),
        size,
    )?;
    let next_page_token = more.then(|| encode_page_token(&items.last().expect("non-empty").id));
    Ok(Page {
        items,
        next_page_token,
    })
}

#[utoipa::path(get, path = "/api/v1/jobs/{id}", tag = "jobs", params(("id" = String, Path)), security(("bearer" = [])),
    responses((status = 200, body = Job), (status = 404, body = ErrorBody)))]
async fn get_job(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Job>, ApiError> {
    check_job_id(&id)?;
    let job = store::jobs::get(&state.store.read()?, &id)?
        .ok_or_else(|| ApiError::not_found("job", &id))?;
    require(
        caller.access(&job.workspace_id, Some(&job.database_id)),
        Access::Read,
        "job",
        &id,
    )?;
    Ok(Json(job))
}

/// Body and answer: `bulwark_core::api::PollRequest` / `PollResponse`. Waits up to `wait_secs`
/// (at most 30) for a due job of this agent; the job carries the workspace key.
#[utoipa::path(post, path = "/agent/v1/jobs/poll", tag = "jobs",
    request_body(content = serde_json::Value, description = "PollRequest: {wait_secs?}"),
    responses((status = 200, description = "PollResponse: {job: null | {id, workspace_id, database_id, database_type, method, snapshot_kind, tags, attempt, workspace_key}}"),
        (status = 401, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn poll(
    State(state): State<AppState>,
    agent: AgentIdentity,
    ApiJson(req): ApiJson<PollRequest>,
) -> Result<Json<PollResponse>, ApiError> {
    let job = jobs::claim::poll(
        &state.store,
        &state.secrets,
        &state.jobs,
        &agent.agent,
        agent.actor(),
        req.wait_secs,
    )
    .await?;
    Ok(Json(PollResponse { job }))
}

fn check_job_id(id: &str) -> Result<(), ApiError> {
    if is_generated_id("job", id) {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "invalid_id",
            format!("'{id}' is not a job id"),
        ))
    }
}

fn ack(job: &Job, duplicate: bool) -> JobAck {
    JobAck {
        job_id: job.id.clone(),
        backup_id: job.id.clone(),
        status: job.status.as_str().to_string(),
        duplicate,
        cancel: job.status != JobStatus::Running,
    }
}

/// Body and answer: `bulwark_core::api::JobProgress` / `JobAck`. `cancel: true` tells the agent
/// the job was given up (e.g. failed as lost): stop it.
#[utoipa::path(post, path = "/agent/v1/jobs/{id}/progress", tag = "jobs", params(("id" = String, Path)),
    request_body(content = serde_json::Value, description = "JobProgress: {phase, bytes, percent?}"),
    responses((status = 200, description = "JobAck"), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
async fn progress(
    State(state): State<AppState>,
    agent: AgentIdentity,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<JobProgress>,
) -> Result<Json<JobAck>, ApiError> {
    check_job_id(&id)?;
    let job =
        jobs::results::progress(&state.store, &agent.agent.id, agent.actor(), id, req).await?;
    Ok(Json(ack(&job, false)))
}

/// Body and answer: `bulwark_core::api::JobResult` / `JobAck`. Idempotent: the same result sent
/// again answers `duplicate: true` and records nothing more.
#[utoipa::path(post, path = "/agent/v1/jobs/{id}/result", tag = "jobs", params(("id" = String, Path)),
    request_body(content = serde_json::Value, description = "JobResult: {succeeded, snapshot?, logical_bytes, stored_bytes, started_at, finished_at, error?, warnings}"),
    responses((status = 200, description = "JobAck"), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn result(
    State(state): State<AppState>,
    agent: AgentIdentity,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<JobResult>,
) -> Result<Json<JobAck>, ApiError> {
    check_job_id(&id)?;
    let (job, duplicate) = jobs::results::record(
        &state.store,
        &state.jobs,
        &agent.agent.id,
        agent.actor(),
        id,
        req,
    )
    .await?;
    Ok(Json(ack(&job, duplicate)))
}

//! Jobs: listed for people (`/api/v1/jobs`), and the agent side of the job protocol
//! (`/agent/v1/jobs/…`, mutual TLS): long-poll for work, progress, result.
//!
//! The poll is a read transaction while nothing is due, so a thousand idle agents cost no
//! writes; it waits on the agent's [`Board`](crate::scheduler::Board) notifier or until the
//! earliest queued job becomes due. The workspace key travels only inside a handed-out job, to
//! the agent whose certificate asked, for a database of that agent's own workspace.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use bulwark_core::api::{
    AgentJob, JobAck, JobProgress, JobResult, PollRequest, PollResponse, MAX_POLL_WAIT_SECS,
};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ErrorBody;
use super::extract::{AgentIdentity, ApiJson, ApiPath, ApiQuery};
use super::{decode_page_token, encode_page_token, page_size, require, ApiError, AppState, Page};
use crate::domain::authz::{Access, Caller};
use crate::domain::job::{check_progress, check_result, Job, JobStatus, Progress};
use crate::domain::{is_generated_id, Violation};
use crate::store;

const DEFAULT_POLL_WAIT_SECS: u32 = 25;

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
    let wait = req.wait_secs.unwrap_or(DEFAULT_POLL_WAIT_SECS);
    if wait > MAX_POLL_WAIT_SECS {
        return Err(ApiError::validation(vec![Violation::new(
            "wait_secs",
            format!("at most {MAX_POLL_WAIT_SECS} seconds (got {wait})"),
        )]));
    }
    let board = state.jobs.clone();
    let agent_id = agent.agent.id.clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(u64::from(wait));
    let notify = board.notifier(&agent_id);
    let mut closing = board.closing();
    loop {
        if *closing.borrow() {
            return Ok(Json(PollResponse { job: None }));
        }
        let woken = notify.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let now = chrono::Utc::now();
        let next_due = store::jobs::next_due_time(&state.store.read()?, &agent_id)?;
        if next_due.is_some_and(|ms| ms <= now.timestamp_millis()) {
            let id = agent_id.clone();
            let limits = board.settings.limits;
            let claimed = state
                .store
                .write(agent.actor(), move |tx| tx.claim_job(&id, limits))
                .await?;
            if let Some(job) = claimed {
                return Ok(Json(PollResponse {
                    job: Some(agent_job(&state, &agent, job).await?),
                }));
            }
        }
        // Sleep until woken, the deadline, or (if sooner) the next queued job's start; a job
        // held back by a limit is looked at again when something finishes (a wake) or in 5 s.
        let mut until = deadline;
        if let Some(ms) = next_due {
            let in_ms = (ms - now.timestamp_millis()).clamp(0, 3_600_000) as u64;
            let due = tokio::time::Instant::now() + Duration::from_millis(in_ms.max(5_000));
            until = until.min(due);
        }
        tokio::select! {
            _ = &mut woken => {}
            _ = tokio::time::sleep_until(until) => {}
            _ = closing.changed() => {}
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(Json(PollResponse { job: None }));
        }
    }
}

async fn agent_job(
    state: &AppState,
    agent: &AgentIdentity,
    job: Job,
) -> Result<AgentJob, ApiError> {
    // The claim already limits jobs to the agent's own queue; a job of another workspace in
    // it would be a bug, and must not carry that workspace's key.
    if job.workspace_id != agent.agent.workspace_id {
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("job '{}' is not of the agent's workspace", job.id),
        ));
    }
    let key =
        crate::scheduler::workspace_key(&state.store, &state.secrets, &job.workspace_id).await?;
    let mut tags = job.tags.clone();
    tags.insert("job".into(), job.id.clone());
    Ok(AgentJob {
        id: job.id.clone(),
        workspace_id: job.workspace_id.clone(),
        database_id: job.database_id.clone(),
        kind: bulwark_core::api::JobKind::Backup,
        database_type: job.db_type,
        method: job.method,
        snapshot_kind: job.kind,
        tags,
        attempt: job.attempt,
        workspace_key: key,
    })
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
    let problems = check_progress(&req.phase, req.percent);
    if !problems.is_empty() {
        return Err(ApiError::validation(problems));
    }
    let agent_id = agent.agent.id.clone();
    let job = state
        .store
        .write(agent.actor(), move |tx| {
            let at = tx.now;
            tx.job_progress(
                &agent_id,
                &id,
                Progress {
                    phase: req.phase,
                    bytes: req.bytes,
                    percent: req.percent,
                    at,
                },
            )
        })
        .await?;
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
    let problems = check_result(&req);
    if !problems.is_empty() {
        return Err(ApiError::validation(problems));
    }
    let agent_id = agent.agent.id.clone();
    let (job, duplicate) = state
        .store
        .write(agent.actor(), move |tx| tx.finish_job(&agent_id, &id, &req))
        .await?;
    if !duplicate {
        // A slot freed: the agent (and others waiting on the same storage) may take the next.
        state.jobs.wake(&job.agent_id);
        tracing::info!(job = %job.id, database = %job.database_id, status = job.status.as_str(), "job finished");
    }
    Ok(Json(ack(&job, duplicate)))
}

//! Agents: enrolment tokens and the agent list for people (`/api/v1/agents…`, API tokens), and
//! the agent protocol (`/agent/v1/…`, mutual TLS). `POST /agent/v1/enroll` is the one agent
//! endpoint without a client certificate: it authenticates with a one-time enrolment token and
//! turns a CSR into the agent's first certificate. Every other `/agent/v1` endpoint takes the
//! caller from its certificate ([`AgentIdentity`]); bearer tokens are not looked at there.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use bulwark_core::api::{
    EnrollRequest, EnrollResponse, Heartbeat, HeartbeatResponse, RenewRequest, RenewResponse,
};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ErrorBody;
use super::extract::{actor, AgentIdentity, ApiJson, ApiPath, ApiQuery};
use super::{
    decode_page_token, encode_page_token, page_size, require, workspace_for, ApiError, AppState,
    Page,
};
use crate::domain::agent::{
    check_agent_facts, hash_enrollment_secret, new_enrollment_secret, renew_after, Agent,
    AgentView, EnrollmentToken, EnrollmentTokenBody, NewEnrollmentToken, MAX_DECLARED_DATABASES,
};
use crate::domain::audit::Actor;
use crate::domain::authz::{Access, Caller};
use crate::domain::{is_generated_id, new_id, Violation};
use crate::pki::AgentCa;
use crate::store;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_enrollment_token))
        .routes(routes!(list_agents))
        .routes(routes!(get_agent, revoke_agent))
        .routes(routes!(enroll))
        .routes(routes!(heartbeat))
        .routes(routes!(renew))
}

fn pki(state: &AppState) -> Result<&Arc<AgentCa>, ApiError> {
    state.pki.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "agent_ca_unavailable",
            "this server runs without the built-in agent CA",
        )
    })
}

#[utoipa::path(post, path = "/api/v1/agents/enrollment-tokens", tag = "agents", request_body = EnrollmentTokenBody,
    security(("bearer" = [])),
    responses((status = 201, body = NewEnrollmentToken), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
async fn create_enrollment_token(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<EnrollmentTokenBody>,
) -> Result<(StatusCode, Json<NewEnrollmentToken>), ApiError> {
    let problems = body.check();
    if !problems.is_empty() {
        return Err(ApiError::validation(problems));
    }
    workspace_for(
        &state.store.read()?,
        &caller,
        &body.workspace_id,
        Access::Admin,
    )?;
    let now = chrono::Utc::now();
    let (secret, hash) = new_enrollment_secret();
    let token = EnrollmentToken {
        id: new_id("ent"),
        workspace_id: body.workspace_id.clone(),
        note: body.note.clone(),
        created_by: caller.user_id.clone(),
        created_at: now,
        expires_at: now + body.ttl(),
        used_at: None,
        used_by_agent: None,
    };
    let stored = token.clone();
    state
        .store
        .write(actor(&caller), move |tx| {
            tx.create_enrollment_token(&hash, &stored)
        })
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(NewEnrollmentToken { token, secret }),
    ))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AgentQuery {
    workspace: Option<String>,
    page_size: Option<i64>,
    page_token: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/agents", tag = "agents", params(AgentQuery), security(("bearer" = [])),
    responses((status = 200, body = Page<AgentView>), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn list_agents(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<AgentQuery>,
) -> Result<Page<AgentView>, ApiError> {
    let size = page_size(q.page_size)?;
    let after = decode_page_token(q.page_token.as_deref(), |s| is_generated_id("agt", s))?;
    let rtx = state.store.read()?;
    let scope = super::listing(&rtx, &caller, q.workspace.as_deref())?;
    if matches!(scope, super::Listing::Nothing) {
        return Ok(Page::empty());
    }
    let (items, more) = store::agents::list(
        &rtx,
        scope.workspace(),
        |a| caller.access(&a.workspace_id, None) >= Access::Read,
        after.as_deref(),
        size,
    )?;
    let next_page_token = more.then(|| encode_page_token(&items.last().expect("non-empty").id));
    Ok(Page {
        items: items.iter().map(Agent::view).collect(),
        next_page_token,
    })
}

fn agent_for(
    state: &AppState,
    caller: &Caller,
    id: &str,
    needed: Access,
) -> Result<Agent, ApiError> {
    let agent = store::agents::get(&state.store.read()?, id)?
        .ok_or_else(|| ApiError::not_found("agent", id))?;
    require(
        caller.access(&agent.workspace_id, None),
        needed,
        "agent",
        id,
    )?;
    Ok(agent)
}

#[utoipa::path(get, path = "/api/v1/agents/{id}", tag = "agents", params(("id" = String, Path)), security(("bearer" = [])),
    responses((status = 200, body = AgentView), (status = 404, body = ErrorBody)))]
async fn get_agent(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<AgentView>, ApiError> {
    Ok(Json(agent_for(&state, &caller, &id, Access::Read)?.view()))
}

/// Revokes the agent: its next request (with any of its certificates) is refused with 401.
#[utoipa::path(delete, path = "/api/v1/agents/{id}", tag = "agents", params(("id" = String, Path)), security(("bearer" = [])),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn revoke_agent(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    agent_for(&state, &caller, &id, Access::Admin)?;
    state
        .store
        .write(actor(&caller), move |tx| tx.revoke_agent(&id))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

fn check_request(hostname: &str, version: &str, databases: usize) -> Result<(), ApiError> {
    let mut problems = check_agent_facts(hostname, version);
    if databases > MAX_DECLARED_DATABASES {
        problems.push(Violation::new(
            "databases",
            format!("at most {MAX_DECLARED_DATABASES} databases per agent"),
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ApiError::validation(problems))
    }
}

/// Body and answer: `bulwark_core::api::EnrollRequest` / `EnrollResponse`. Authenticated by the
/// one-time enrolment token in the body, not by a certificate or bearer token.
#[utoipa::path(post, path = "/agent/v1/enroll", tag = "agents",
    request_body(content = serde_json::Value, description = "EnrollRequest: {token, csr_pem, hostname, agent_version, databases: [{id, type, server_version?}]}"),
    responses((status = 201, description = "EnrollResponse: {agent_id, workspace_id, certificate_pem, ca_certificate_pem, expires_at, renew_after, conflicts}"),
        (status = 401, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn enroll(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<EnrollRequest>,
) -> Result<(StatusCode, Json<EnrollResponse>), ApiError> {
    let pki = pki(&state)?.clone();
    check_request(&req.hostname, &req.agent_version, req.databases.len())?;
    let hash = hash_enrollment_secret(&req.token);
    // Checked here for a clear answer before any signing; checked again, atomically, when the
    // token is consumed.
    let token = store::agents::token(&state.store.read()?, &hash)?.ok_or_else(|| {
        ApiError::unauthorized(crate::domain::agent::TokenRefusal::Unknown.message())
    })?;
    token
        .usable(chrono::Utc::now())
        .map_err(|r| ApiError::unauthorized(r.message()))?;
    let agent_id = new_id("agt");
    let (cert, certificate_pem) = pki.issue(&req.csr_pem, &agent_id, &token.workspace_id)?;
    let agent = Agent {
        id: agent_id.clone(),
        workspace_id: token.workspace_id.clone(),
        hostname: req.hostname.clone(),
        version: req.agent_version.clone(),
        databases: Vec::new(),
        cert: cert.clone(),
        previous_cert: None,
        created_at: chrono::Utc::now(),
        last_heartbeat_at: None,
        revoked_at: None,
    };
    let actor = Actor {
        kind: "agent".into(),
        id: agent_id.clone(),
        name: req.hostname.clone(),
    };
    let declared = req.databases.clone();
    let conflicts = state
        .store
        .write(actor, move |tx| tx.enroll_agent(&hash, &agent, &declared))
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(EnrollResponse {
            agent_id,
            workspace_id: token.workspace_id,
            certificate_pem,
            ca_certificate_pem: pki.ca.cert_pem().to_string(),
            expires_at: cert.expires_at,
            renew_after: renew_after(&cert),
            conflicts,
        }),
    ))
}

/// Body and answer: `bulwark_core::api::Heartbeat` / `HeartbeatResponse`. Needs the agent's
/// client certificate; updates the last heartbeat, the version and the declared databases.
#[utoipa::path(post, path = "/agent/v1/heartbeat", tag = "agents",
    request_body(content = serde_json::Value, description = "Heartbeat: {agent_version, databases: [{id, type, server_version?}]}"),
    responses((status = 200, description = "HeartbeatResponse: {agent_id, workspace_id, received_at, certificate_expires_at, conflicts}"),
        (status = 401, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn heartbeat(
    State(state): State<AppState>,
    agent: AgentIdentity,
    ApiJson(req): ApiJson<Heartbeat>,
) -> Result<Json<HeartbeatResponse>, ApiError> {
    check_request(
        &agent.agent.hostname,
        &req.agent_version,
        req.databases.len(),
    )?;
    let id = agent.agent.id.clone();
    let fingerprint = agent.cert.fingerprint.clone();
    let (updated, conflicts) = state
        .store
        .write(agent.actor(), move |tx| {
            let answer =
                tx.agent_heartbeat(&id, &fingerprint, &req.agent_version, &req.databases)?;
            record_wal(tx, &answer.0, &req.wal)?;
            Ok(answer)
        })
        .await?;
    Ok(Json(HeartbeatResponse {
        agent_id: updated.id,
        workspace_id: updated.workspace_id,
        received_at: updated.last_heartbeat_at.unwrap_or_else(chrono::Utc::now),
        certificate_expires_at: agent.cert.expires_at,
        conflicts,
    }))
}

/// Keeps the last archived WAL file of each of the agent's databases (for the recoverable
/// window); reports about databases of other workspaces or agents are ignored.
fn record_wal(
    tx: &mut crate::store::Tx,
    agent: &crate::domain::agent::Agent,
    reports: &[bulwark_core::api::WalArchived],
) -> crate::store::Result<()> {
    use crate::domain::pitr::{wal_key, WalSeen};
    for w in reports {
        let Some(db) = tx.database(&w.database_id)? else {
            continue;
        };
        if db.workspace_id != agent.workspace_id
            || db.agent_id.as_deref().is_some_and(|a| a != agent.id)
        {
            continue;
        }
        let key = wal_key(&db.id);
        let before: Option<WalSeen> = tx.schedule_record(&key)?;
        if before
            .as_ref()
            .is_some_and(|b| b.archived_at >= Some(w.archived_at) && b.last_file == w.last_file)
        {
            continue;
        }
        let seen = WalSeen {
            last_file: w.last_file.clone(),
            archived_at: Some(w.archived_at),
            agent_id: agent.id.clone(),
            reported_at: Some(tx.now),
        };
        tx.put_schedule_record(&key, &seen)?;
    }
    Ok(())
}

/// Body and answer: `bulwark_core::api::RenewRequest` / `RenewResponse`. Needs the agent's
/// current certificate; the new one replaces it, and the old one stays valid until the new one
/// is first used or it expires.
#[utoipa::path(post, path = "/agent/v1/renew", tag = "agents",
    request_body(content = serde_json::Value, description = "RenewRequest: {csr_pem}"),
    responses((status = 200, description = "RenewResponse: {certificate_pem, expires_at, renew_after}"),
        (status = 401, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn renew(
    State(state): State<AppState>,
    agent: AgentIdentity,
    ApiJson(req): ApiJson<RenewRequest>,
) -> Result<Json<RenewResponse>, ApiError> {
    let pki = pki(&state)?.clone();
    let (cert, certificate_pem) =
        pki.issue(&req.csr_pem, &agent.agent.id, &agent.agent.workspace_id)?;
    let id = agent.agent.id.clone();
    let stored = cert.clone();
    state
        .store
        .write(agent.actor(), move |tx| tx.renew_agent_cert(&id, stored))
        .await?;
    Ok(Json(RenewResponse {
        certificate_pem,
        expires_at: cert.expires_at,
        renew_after: renew_after(&cert),
    }))
}

//! Extractors that turn every malformed request into an [`ApiError`] with the JSON error body:
//! the caller from the bearer token, JSON bodies (content type, size limit, syntax, unknown
//! fields, wrong types — with the JSON path of the problem), query strings and path ids.

use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;

use super::error::ApiError;
use super::AppState;
use crate::domain::agent::{Agent, AgentCert};
use crate::domain::audit::Actor;
use crate::domain::authz::Caller;
use crate::store::users;
use crate::tls::PeerCertificate;

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
            return Err(ApiError::unauthorized(
                "missing API token: send `Authorization: Bearer <token>` (the first one comes from `bulwark-control-plane admin bootstrap`)",
            ));
        };
        let secret = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                ApiError::unauthorized("the Authorization header must be `Bearer <token>`")
            })?;
        let rtx = state.store.read()?;
        let caller = users::authenticate(&rtx, secret)?.ok_or_else(|| {
            ApiError::unauthorized("the API token is unknown, revoked or expired")
        })?;
        // The per-token limit (the server's rate-limit middleware puts the limiter here; the
        // failures above count against the caller's address there). Platform admins are the
        // operator and are not limited per token.
        if let Some(limiter) = parts
            .extensions
            .get::<std::sync::Arc<crate::ratelimit::Limiter>>()
        {
            if !caller.is_platform_admin() {
                limiter.check_token(&caller.token_id)?;
            }
        }
        Ok(caller)
    }
}

/// The agent behind a `/agent/v1` request, from its verified client certificate. Bearer tokens
/// are not consulted: an API token never acts as an agent.
pub struct AgentIdentity {
    pub agent: Agent,
    /// The certificate this request came with (current, or previous during renewal).
    pub cert: AgentCert,
}

impl AgentIdentity {
    pub fn actor(&self) -> Actor {
        Actor {
            kind: "agent".into(),
            id: self.agent.id.clone(),
            name: self.agent.hostname.clone(),
        }
    }
}

impl FromRequestParts<AppState> for AgentIdentity {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let refuse = |code, message: String| ApiError::new(StatusCode::UNAUTHORIZED, code, message);
        let Some(peer) = parts.extensions.get::<PeerCertificate>() else {
            return Err(refuse(
                "client_certificate_required",
                "no client certificate: /agent/v1 endpoints need the certificate issued at enrolment (`bulwark-agent enroll`); API tokens are not accepted here".into(),
            ));
        };
        let agent = crate::store::agents::by_fingerprint(&state.store.read()?, &peer.fingerprint)?
            .ok_or_else(|| {
                refuse(
                    "unknown_agent",
                    format!(
                        "the client certificate (sha256 {}) belongs to no enrolled agent, or was replaced by a renewal",
                        peer.fingerprint
                    ),
                )
            })?;
        if let Some(at) = agent.revoked_at {
            return Err(refuse(
                "agent_revoked",
                format!(
                    "agent '{}' was revoked at {at}; enrol again with a new token",
                    agent.id
                ),
            ));
        }
        let cert = agent.cert_with(&peer.fingerprint).cloned().ok_or_else(|| {
            refuse(
                "unknown_agent",
                format!(
                    "the client certificate (sha256 {}) is no longer one of agent '{}'",
                    peer.fingerprint, agent.id
                ),
            )
        })?;
        if cert.expires_at <= chrono::Utc::now() {
            return Err(refuse(
                "certificate_expired",
                format!(
                    "the client certificate of agent '{}' expired at {}; enrol again",
                    agent.id, cert.expires_at
                ),
            ));
        }
        Ok(AgentIdentity { agent, cert })
    }
}

/// Who acts, as the audit log records it.
pub fn actor(caller: &Caller) -> Actor {
    Actor {
        kind: "user".into(),
        id: caller.user_id.clone(),
        name: caller.user_name.clone(),
    }
}

/// Oversized bodies up to this size are read to the end before the 413 is sent.
const DRAIN_LIMIT: usize = 1 << 20;

/// A JSON request body.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
        if !is_json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as JSON with `Content-Type: application/json`",
            ));
        }
        let limit = state.max_body_bytes;
        let too_large = || {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("the request body is larger than {limit} bytes"),
            )
        };
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > DRAIN_LIMIT as u64) {
            return Err(too_large());
        }
        // Read up to the limit; past it, keep reading (and dropping) up to DRAIN_LIMIT so the
        // client has sent everything before the 413 arrives — closing on unread data would
        // reset the connection and the client might never see the answer.
        let mut body = req.into_body();
        let mut bytes = Vec::new();
        let mut total = 0usize;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                if crate::timed_body::is_body_timeout(&e) {
                    ApiError::new(
                        StatusCode::REQUEST_TIMEOUT,
                        "body_timeout",
                        format!("the request body did not arrive in time: {e}"),
                    )
                } else {
                    ApiError::bad_request(
                        "body_unreadable",
                        format!("the request body could not be read: {e}"),
                    )
                }
            })?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            total += data.len();
            if total <= limit {
                bytes.extend_from_slice(&data);
            } else if total > DRAIN_LIMIT {
                return Err(too_large());
            }
        }
        if total > limit {
            return Err(too_large());
        }
        parse_json(&bytes).map(ApiJson)
    }
}

/// Parses a JSON body, naming the path of the first problem (`schedule.priority`).
///
/// serde_json reports a wrong JSON type in an enum field (`"plan": 5`) as a *syntax* error
/// ("expected value") without a path. So a body that fails is first checked for being JSON at
/// all: only then is an error malformed JSON; otherwise it is a schema error at its path.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if let Err(syntax) = serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
            return ApiError::bad_request(
                "malformed_json",
                format!("the body is not valid JSON: {syntax}"),
            )
            .with_detail("", syntax.to_string());
        }
        let problem = if inner.is_syntax() || inner.is_eof() {
            "has the wrong JSON type; expected one of the documented string values".to_string()
        } else {
            inner.to_string()
        };
        let path = if path == "." { String::new() } else { path };
        let message = if path.is_empty() {
            format!("the body does not match the schema: {problem}")
        } else {
            format!("the body does not match the schema: {path} {problem}")
        };
        ApiError::bad_request("invalid_body", message).with_detail(path, problem)
    })?;
    de.end().map_err(|e| {
        ApiError::bad_request("malformed_json", format!("the body is not valid JSON: {e}"))
            .with_detail("", e.to_string())
    })?;
    Ok(value)
}

/// A query string, with unknown parameters and wrong types refused.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        Query::<T>::try_from_uri(&parts.uri)
            .map(|q| ApiQuery(q.0))
            .map_err(|e| {
                let text = e.body_text();
                let problem = text
                    .strip_prefix("Failed to deserialize query string: ")
                    .unwrap_or(&text)
                    .to_string();
                ApiError::bad_request(
                    "invalid_query",
                    format!("the query string is not valid: {problem}"),
                )
                .with_detail("query", problem)
            })
    }
}

/// Path parameters, with undecodable ones answered in the JSON error shape.
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| ApiPath(p.0))
            .map_err(|e| ApiError::bad_request("invalid_path", e.body_text()))
    }
}

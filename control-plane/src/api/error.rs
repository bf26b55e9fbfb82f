//! The one place where failures become HTTP answers. Every error body has the same shape,
//! `{"error": {"code", "message", "details": [{"path", "problem"}]}}`, so clients need one parser
//! and forms can put each problem next to its field.
//!
//! A 500 never shows its internal text (a file path, a redb message, a stored record's damage):
//! the text is logged, inside the request's span, and the body names the request id instead
//! (`error.request_id`, also the `x-request-id` header), which is what an operator searches the
//! log for.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use crate::domain::Violation;
use crate::store::StoreError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Vec<Violation>,
    /// Seconds for `Retry-After` (429 answers).
    pub retry_after: Option<u64>,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorInfo,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorInfo {
    /// Stable, machine-readable: `not_found`, `validation_failed`, `invalid_body`, …
    pub code: String,
    pub message: String,
    pub details: Vec<Violation>,
    /// On 500 answers: the id under which the server logged what went wrong.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            details: Vec::new(),
            retry_after: None,
        }
    }

    pub fn with_detail(mut self, path: impl Into<String>, problem: impl Into<String>) -> Self {
        self.details.push(Violation::new(path, problem));
        self
    }

    /// The answer for anything missing *or* invisible to the caller: the two must not differ.
    pub fn not_found(kind: &str, id: &str) -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no {kind} '{id}'"),
        )
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn validation(details: Vec<Violation>) -> Self {
        let message = match details.as_slice() {
            [one] => format!("{}: {}", one.path, one.problem),
            many => format!("{} problems in the request; see details", many.len()),
        };
        ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "validation_failed",
            message,
            details,
            retry_after: None,
        }
    }

    /// A Proxmox VE cluster failed us (unreachable, TLS mismatch, refused token, its own error).
    pub fn proxmox(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_GATEWAY, "proxmox_error", message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// A rate limit refused the request; retry after `retry_after` seconds.
    pub fn too_many_requests(message: impl Into<String>, retry_after: u64) -> Self {
        let mut e = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message);
        e.retry_after = Some(retry_after);
        e
    }

    /// Something failed inside the server; `internal` is logged, never sent.
    pub fn internal(internal: impl Into<String>) -> Self {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", internal)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { kind, id } => ApiError::not_found(kind, &id),
            StoreError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            StoreError::Refused(m) => ApiError::bad_request("not_allowed", m),
            StoreError::QuotaExceeded(m) => {
                ApiError::new(StatusCode::CONFLICT, "quota_exceeded", m)
            }
            StoreError::Rejected(details) => ApiError::validation(details),
            StoreError::Unauthorized(m) => ApiError::unauthorized(m),
            other => ApiError::internal(format!("state store failure: {other}")),
        }
    }
}

impl From<crate::jobs::Error> for ApiError {
    fn from(e: crate::jobs::Error) -> Self {
        use crate::jobs::Error;
        match e {
            Error::Store(e) => e.into(),
            Error::Invalid(details) => ApiError::validation(details),
            Error::QuotaExceeded(m) => ApiError::new(StatusCode::CONFLICT, "quota_exceeded", m),
            Error::Forbidden(m) => ApiError::forbidden(m),
            e @ Error::RecoveryKeyShown { .. } => {
                ApiError::new(StatusCode::GONE, "already_shown", e.to_string())
            }
            e @ (Error::ForeignJob(_) | Error::WorkspaceKey { .. }) => {
                ApiError::internal(e.to_string())
            }
        }
    }
}

impl From<crate::proxmox::Error> for ApiError {
    fn from(e: crate::proxmox::Error) -> Self {
        use crate::proxmox::Error;
        match e {
            Error::Setting { field, problem } => {
                ApiError::validation(vec![Violation::new(field, problem)])
            }
            Error::Cluster(m) => ApiError::proxmox(m),
            Error::Parameters { message, details } => {
                let mut err = ApiError::validation(details);
                err.message = message;
                err
            }
            Error::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            e @ Error::SecretUnreadable { .. } => {
                ApiError::new(StatusCode::CONFLICT, "secret_unreadable", e.to_string())
            }
            Error::Store(e) => e.into(),
        }
    }
}

impl From<crate::pki::PkiError> for ApiError {
    fn from(e: crate::pki::PkiError) -> Self {
        match e {
            crate::pki::PkiError::BadCsr(reason) => {
                ApiError::validation(vec![Violation::new("csr_pem", reason)])
            }
            other => ApiError::internal(other.to_string()),
        }
    }
}

impl From<crate::ratelimit::Throttled> for ApiError {
    fn from(t: crate::ratelimit::Throttled) -> Self {
        let wait = t.retry_after_secs();
        ApiError::too_many_requests(t.reason.message(wait), wait)
    }
}

/// The rate-limit middleware answers with it directly.
impl IntoResponse for crate::ratelimit::Throttled {
    fn into_response(self) -> Response {
        ApiError::from(self).into_response()
    }
}

/// What a 500 says instead of its internal text.
pub fn internal_message(request_id: Option<&str>) -> String {
    match request_id {
        Some(id) => format!(
            "internal error; nothing about it is shown here: the server log has the details under request id {id}"
        ),
        None => "internal error; nothing about it is shown here: see the server log".into(),
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (message, details, request_id) = if self.status == StatusCode::INTERNAL_SERVER_ERROR {
            let request_id = crate::request_id::current();
            tracing::error!(code = self.code, error = %self.message, details = ?self.details, "internal error");
            (
                internal_message(request_id.as_deref()),
                Vec::new(),
                request_id,
            )
        } else {
            (self.message, self.details, None)
        };
        let mut response = (
            self.status,
            Json(ErrorBody {
                error: ErrorInfo {
                    code: self.code.to_string(),
                    message,
                    details,
                    request_id,
                },
            }),
        )
            .into_response();
        if let Some(secs) = self.retry_after {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(secs),
            );
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                "www-authenticate",
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body(response: Response) -> serde_json::Value {
        use http_body_util::BodyExt;
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn a_500_carries_the_request_id_and_no_internal_text() {
        let store_failure = StoreError::Corrupt {
            what: "database",
            key: "orders".into(),
            reason: "EOF while parsing /var/lib/bulwark/bulwark.redb".into(),
        };
        let response = crate::request_id::scope("req_00112233aabbccdd".into(), async {
            ApiError::from(store_failure).into_response()
        })
        .await;
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let v = body(response).await;
        let text = v.to_string();
        assert_eq!(v["error"]["code"], "internal");
        assert_eq!(v["error"]["request_id"], "req_00112233aabbccdd");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("req_00112233aabbccdd"),
            "{v}"
        );
        for secret in ["orders", "redb", "EOF", "/var/lib", "state store"] {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }
        // Other answers keep their message and carry no request id.
        let v = body(ApiError::not_found("database", "orders").into_response()).await;
        assert_eq!(v["error"]["message"], "no database 'orders'");
        assert!(v["error"].get("request_id").is_none(), "{v}");
    }

    #[tokio::test]
    async fn a_429_says_when_to_retry() {
        let response = ApiError::too_many_requests("slow down", 7).into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()["retry-after"], "7");
        assert_eq!(body(response).await["error"]["code"], "rate_limited");
    }
}

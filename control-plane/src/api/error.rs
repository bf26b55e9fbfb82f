//! The one place where failures become HTTP answers. Every error body has the same shape,
//! `{"error": {"code", "message", "details": [{"path", "problem"}]}}`, so clients need one parser
//! and forms can put each problem next to its field.

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
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            details: Vec::new(),
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
        }
    }

    /// A Proxmox VE cluster failed us (unreachable, TLS mismatch, refused token, its own error).
    pub fn proxmox(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_GATEWAY, "proxmox_error", message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
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
            other => {
                tracing::error!(error = %other, "state store failure");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    other.to_string(),
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(ErrorBody {
                error: ErrorInfo {
                    code: self.code.to_string(),
                    message: self.message,
                    details: self.details,
                },
            }),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                "www-authenticate",
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

//! `/healthz` (the process answers), `/readyz` (the state store answers and no shutdown is under
//! way) and `/metrics` (Prometheus text). None needs a token: probes and scrapers have none.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use redb::ReadableTableMetadata;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ApiError, AppState};
use crate::store;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
}

#[derive(Serialize, ToSchema)]
pub struct Health {
    pub status: &'static str,
    pub version: &'static str,
}

#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, body = Health)))]
async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok",
        version: env!("CARGO_PKG_VERSION"),
    })
}

#[utoipa::path(get, path = "/readyz", tag = "health",
    responses((status = 200, body = Health), (status = 503, body = super::error::ErrorBody)))]
async fn readyz(State(state): State<AppState>) -> Result<Json<Health>, ApiError> {
    if !state.ready.load(Ordering::Relaxed) {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the server is shutting down",
        ));
    }
    let rtx = state.store.read()?;
    rtx.open_table(store::audit::TABLE)
        .map_err(store::StoreError::from)?;
    Ok(Json(Health {
        status: "ready",
        version: env!("CARGO_PKG_VERSION"),
    }))
}

#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
async fn metrics(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let rtx = state.store.read()?;
    let count = |n: Result<u64, redb::StorageError>| n.map_err(store::StoreError::from);
    for (name, def) in [
        ("workspaces", store::workspaces::TABLE),
        ("users", store::users::USERS),
        ("tokens", store::users::TOKENS),
        ("databases", store::databases::TABLE),
        ("policies", store::policies::TABLE),
        ("backups", store::backups::TABLE),
        ("proxmox_clusters", store::clusters::TABLE),
        ("backup_storages", store::storages::TABLE),
        ("alerts", store::quota::ALERTS),
        ("agents", store::agents::AGENTS),
        ("jobs", store::jobs::JOBS),
    ] {
        let table = rtx.open_table(def).map_err(store::StoreError::from)?;
        state.metrics.set_rows(name, count(table.len())?);
    }
    // The work in flight: jobs waiting for their agent, and jobs running.
    let queued = rtx
        .open_table(store::jobs::QUEUE)
        .map_err(store::StoreError::from)?;
    state.metrics.set_rows("jobs_queued", count(queued.len())?);
    let running = rtx
        .open_table(store::jobs::RUNNING)
        .map_err(store::StoreError::from)?;
    state
        .metrics
        .set_rows("jobs_running", count(running.len())?);
    let audit = rtx
        .open_table(store::audit::TABLE)
        .map_err(store::StoreError::from)?;
    state.metrics.set_rows("audit", count(audit.len())?);
    Ok((
        [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
        state.metrics.render(),
    ))
}

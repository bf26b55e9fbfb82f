//! `/api/v1/proxmox-clusters` (platform admins only): register the Proxmox VE clusters backup
//! storage is provisioned on. Every save first calls the cluster's `version`; if that fails,
//! nothing is stored and the answer says what failed (TLS mismatch, refused token, unreachable).
//! The token secret is write-only.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ErrorBody;
use super::extract::{actor, ApiJson, ApiPath};
use super::{ApiError, AppState};
use crate::domain::authz::Caller;
use crate::domain::cluster::{CheckedCluster, ClusterBody, ClusterView, ProxmoxCluster};
use crate::domain::storage::BackupStorage;
use crate::proxmox::{Pve, Target};
use crate::store;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_clusters, create_cluster))
        .routes(routes!(get_cluster, update_cluster, delete_cluster))
        .routes(routes!(sync_cluster))
}

pub fn platform_only(caller: &Caller) -> Result<(), ApiError> {
    if caller.is_platform_admin() {
        Ok(())
    } else {
        Err(ApiError::forbidden(
            "only platform admins register, change or sync Proxmox clusters",
        ))
    }
}

/// Calls `version` with the given settings; the record to store on success.
async fn health_check(
    state: &AppState,
    checked: CheckedCluster,
    existing: Option<&ProxmoxCluster>,
) -> Result<ProxmoxCluster, ApiError> {
    let secret = match (&checked.token_secret, existing) {
        (Some(s), _) => s.clone(),
        (None, Some(e)) => state
            .secrets
            .open(&ProxmoxCluster::secret_aad(&e.id), &e.token_secret_sealed)
            .map_err(|e| {
                ApiError::validation(vec![crate::domain::Violation::new(
                    "token_secret",
                    format!("{e}; send the token secret again"),
                )])
            })?,
        (None, None) => unreachable!("checked: required on create"),
    };
    let pve = Pve::connect(&Target {
        cluster_id: &checked.id,
        url: &checked.url,
        token_id: &checked.token_id,
        token_secret: &secret,
        fingerprint: checked.fingerprint.as_deref(),
        ca_pem: checked.ca_pem.as_deref(),
    })?;
    let version = pve.client.version().await.map_err(|e| {
        let mut err = ApiError::from(pve.error(e));
        err.message = format!("health check failed, nothing was saved: {}", err.message);
        err
    })?;
    let now = chrono::Utc::now();
    let sealed = match (&checked.token_secret, existing) {
        (None, Some(e)) => e.token_secret_sealed.clone(),
        _ => state
            .secrets
            .seal(&ProxmoxCluster::secret_aad(&checked.id), &secret),
    };
    Ok(ProxmoxCluster {
        id: checked.id,
        name: checked.name,
        url: checked.url,
        token_id: checked.token_id,
        token_secret_sealed: sealed,
        fingerprint: checked.fingerprint,
        ca_pem: checked.ca_pem,
        version: Some(version.version),
        checked_at: Some(now),
        created_at: existing.map_or(now, |e| e.created_at),
        updated_at: now,
    })
}

fn cluster_for(state: &AppState, id: &str) -> Result<ProxmoxCluster, ApiError> {
    store::clusters::get(&state.store.read()?, id)?
        .ok_or_else(|| ApiError::not_found("proxmox cluster", id))
}

#[utoipa::path(get, path = "/api/v1/proxmox-clusters", tag = "proxmox", security(("bearer" = [])),
    responses((status = 200, body = Vec<ClusterView>), (status = 403, body = ErrorBody)))]
async fn list_clusters(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<ClusterView>>, ApiError> {
    platform_only(&caller)?;
    let clusters = store::clusters::list(&state.store.read()?)?;
    Ok(Json(clusters.iter().map(ProxmoxCluster::view).collect()))
}

#[utoipa::path(post, path = "/api/v1/proxmox-clusters", tag = "proxmox", request_body = ClusterBody,
    security(("bearer" = [])),
    responses((status = 201, body = ClusterView), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 502, body = ErrorBody, description = "The health check failed: TLS mismatch, refused token, unreachable")))]
async fn create_cluster(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<ClusterBody>,
) -> Result<(StatusCode, Json<ClusterView>), ApiError> {
    platform_only(&caller)?;
    let checked = body.check(None).map_err(ApiError::validation)?;
    if store::clusters::get(&state.store.read()?, &checked.id)?.is_some() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!(
                "a Proxmox cluster with id '{}' is already registered; choose another id",
                checked.id
            ),
        ));
    }
    let cluster = health_check(&state, checked, None).await?;
    let view = cluster.view();
    state
        .store
        .write(actor(&caller), move |tx| tx.create_cluster(&cluster))
        .await?;
    Ok((StatusCode::CREATED, Json(view)))
}

#[utoipa::path(get, path = "/api/v1/proxmox-clusters/{id}", tag = "proxmox", params(("id" = String, Path)),
    security(("bearer" = [])),
    responses((status = 200, body = ClusterView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_cluster(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<ClusterView>, ApiError> {
    platform_only(&caller)?;
    Ok(Json(cluster_for(&state, &id)?.view()))
}

#[utoipa::path(put, path = "/api/v1/proxmox-clusters/{id}", tag = "proxmox", params(("id" = String, Path)),
    request_body = ClusterBody, security(("bearer" = [])),
    responses((status = 200, body = ClusterView), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 502, body = ErrorBody, description = "The health check failed; nothing was changed")))]
async fn update_cluster(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<ClusterBody>,
) -> Result<Json<ClusterView>, ApiError> {
    platform_only(&caller)?;
    let existing = cluster_for(&state, &id)?;
    let checked = body.check(Some(&id)).map_err(ApiError::validation)?;
    let cluster = health_check(&state, checked, Some(&existing)).await?;
    let view = cluster.view();
    state
        .store
        .write(actor(&caller), move |tx| tx.update_cluster(&cluster))
        .await?;
    Ok(Json(view))
}

#[utoipa::path(delete, path = "/api/v1/proxmox-clusters/{id}", tag = "proxmox", params(("id" = String, Path)),
    security(("bearer" = [])),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "Backup storages still use the cluster")))]
async fn delete_cluster(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    platform_only(&caller)?;
    cluster_for(&state, &id)?;
    state
        .store
        .write(actor(&caller), move |tx| tx.delete_cluster(&id))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/v1/proxmox-clusters/{id}/sync", tag = "proxmox", params(("id" = String, Path)),
    security(("bearer" = [])),
    responses((status = 200, body = Vec<BackupStorage>, description = "The cluster's backup storages, refreshed"),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn sync_cluster(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Vec<BackupStorage>>, ApiError> {
    platform_only(&caller)?;
    cluster_for(&state, &id)?;
    Ok(Json(
        crate::proxmox::sync_cluster(&state.store, &state.secrets, &id).await?,
    ))
}

//! `/api/v1/workspaces/{id}/backup-storages[/{storage_id}]`: storage of a dedicated-plan
//! workspace on a Proxmox cluster. Reading needs read access to the workspace; creating,
//! changing and deleting need admin access (workspace admin or platform admin).
//!
//! Create records the storage `pending` (audited), creates it on the cluster (content `backup`,
//! restricted to the chosen nodes), reads its status on the first node and records `active` —
//! or `error` with the cluster's message, answering 502 and keeping the record so an admin
//! sees what failed and can delete it. Delete removes the storage from the cluster only if the
//! cluster had accepted its creation (`provisioned`).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use proxmox_client::{StorageCreate, StorageUpdate};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::approvals::{self, ReasonQuery};
use super::error::ErrorBody;
use super::extract::{actor, ApiJson, ApiPath, ApiQuery};
use super::{require, workspace_for, ApiError, AppState};
use crate::domain::approval::{Action, Approval};
use crate::domain::audit::Actor;
use crate::domain::authz::{Access, Caller};
use crate::domain::storage::{BackupStorage, StorageBody, StorageState, StorageUpdateBody};
use crate::domain::workspace::{Plan, Workspace};
use crate::domain::Violation;
use crate::proxmox::{apply_observation, observe, Observation, Pve};
use crate::store;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_storages, create_storage))
        .routes(routes!(get_storage, update_storage, delete_storage))
}

fn storage_for(
    state: &AppState,
    caller: &Caller,
    ws: &str,
    id: &str,
    needed: Access,
) -> Result<(Workspace, BackupStorage), ApiError> {
    let rtx = state.store.read()?;
    let workspace = workspace_for(&rtx, caller, ws, Access::Read)?;
    let storage = store::storages::get(&rtx, ws, id)?
        .ok_or_else(|| ApiError::not_found("backup storage", id))?;
    require(caller.access(ws, None), needed, "backup storage", id)?;
    Ok((workspace, storage))
}

fn pve_for(state: &AppState, cluster_id: &str) -> Result<Pve, ApiError> {
    let cluster = store::clusters::get(&state.store.read()?, cluster_id)?.ok_or_else(|| {
        ApiError::proxmox(format!(
            "the storage's Proxmox cluster '{cluster_id}' is no longer registered"
        ))
    })?;
    Ok(Pve::for_cluster(&cluster, &state.secrets)?)
}

#[utoipa::path(get, path = "/api/v1/workspaces/{id}/backup-storages", tag = "storage",
    params(("id" = String, Path, description = "Workspace")), security(("bearer" = [])),
    responses((status = 200, body = Vec<BackupStorage>), (status = 404, body = ErrorBody)))]
async fn list_storages(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(ws): ApiPath<String>,
) -> Result<Json<Vec<BackupStorage>>, ApiError> {
    let rtx = state.store.read()?;
    workspace_for(&rtx, &caller, &ws, Access::Read)?;
    Ok(Json(store::storages::list(&rtx, &ws)?))
}

#[utoipa::path(post, path = "/api/v1/workspaces/{id}/backup-storages", tag = "storage",
    params(("id" = String, Path, description = "Workspace")), request_body = StorageBody, security(("bearer" = [])),
    responses((status = 201, body = BackupStorage), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody, description = "Not an admin of the workspace, or the workspace is not on the dedicated plan"),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 502, body = ErrorBody, description = "The cluster failed; the record is kept with status error")))]
async fn create_storage(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(ws): ApiPath<String>,
    ApiJson(body): ApiJson<StorageBody>,
) -> Result<(StatusCode, Json<BackupStorage>), ApiError> {
    let workspace = workspace_for(&state.store.read()?, &caller, &ws, Access::Admin)?;
    if workspace.plan != Plan::Dedicated {
        return Err(ApiError::forbidden(format!(
            "workspace '{ws}' is on the shared plan; only workspaces on the dedicated plan get backup storage of their own"
        )));
    }
    let storage = body
        .into_storage(&ws, chrono::Utc::now())
        .map_err(ApiError::validation)?;
    {
        let rtx = state.store.read()?;
        if store::clusters::get(&rtx, &storage.cluster_id)?.is_none() {
            return Err(ApiError::validation(vec![Violation::new(
                "cluster_id",
                format!("no Proxmox cluster '{}' is registered", storage.cluster_id),
            )]));
        }
        if store::storages::get(&rtx, &ws, &storage.id)?.is_some() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                format!(
                    "workspace '{ws}' already has a backup storage '{}'",
                    storage.id
                ),
            ));
        }
    }
    let pve = pve_for(&state, &storage.cluster_id)?;
    // Unknown node names would only surface later as a failed status read; name them now.
    let nodes = pve.client.nodes().await.map_err(|e| pve.error(e))?;
    let unknown: Vec<Violation> = storage
        .nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| !nodes.iter().any(|c| &c.node == *n))
        .map(|(i, n)| {
            Violation::new(
                format!("nodes[{i}]"),
                format!(
                    "cluster '{}' has no node '{n}' (it has {})",
                    storage.cluster_id,
                    nodes
                        .iter()
                        .map(|c| c.node.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })
        .collect();
    if !unknown.is_empty() {
        return Err(ApiError::validation(unknown));
    }

    let pending = storage.clone();
    state
        .store
        .write(actor(&caller), move |tx| tx.create_storage(&pending))
        .await?;
    let node_refs: Vec<&str> = storage.nodes.iter().map(String::as_str).collect();
    let request = StorageCreate::backup(&storage.pve_storage, storage.pve_type(), &node_refs);
    let observation = match pve.client.create_storage(&request).await {
        Ok(_) => observe(&pve, &storage).await,
        Err(e) => {
            let message = pve.describe(&e);
            let failure = pve.error(e);
            let failed = storage.clone();
            state
                .store
                .write(actor(&caller), move |tx| {
                    apply_observation(tx, &failed, &Observation::Failed(message))
                })
                .await?;
            return Err(failure.into());
        }
    };
    let recorded = state
        .store
        .write(actor(&caller), move |tx| {
            let mut created = tx
                .storage(&storage.workspace_id, &storage.id)?
                .unwrap_or(storage);
            created.provisioned = true;
            tx.store_storage_usage(&created)?;
            apply_observation(tx, &created, &observation)
        })
        .await?;
    if recorded.status != StorageState::Active {
        return Err(ApiError::proxmox(format!(
            "backup storage '{}' was created on the cluster as '{}' but is not usable: {}; it is kept with status error, delete it or fix the cluster and sync",
            recorded.id,
            recorded.pve_storage,
            recorded.status_message.as_deref().unwrap_or("unknown")
        )));
    }
    Ok((StatusCode::CREATED, Json(recorded)))
}

#[utoipa::path(get, path = "/api/v1/workspaces/{id}/backup-storages/{storage_id}", tag = "storage",
    params(("id" = String, Path, description = "Workspace"), ("storage_id" = String, Path)), security(("bearer" = [])),
    responses((status = 200, body = BackupStorage), (status = 404, body = ErrorBody)))]
async fn get_storage(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((ws, id)): ApiPath<(String, String)>,
) -> Result<Json<BackupStorage>, ApiError> {
    Ok(Json(
        storage_for(&state, &caller, &ws, &id, Access::Read)?.1,
    ))
}

#[utoipa::path(put, path = "/api/v1/workspaces/{id}/backup-storages/{storage_id}", tag = "storage",
    params(("id" = String, Path, description = "Workspace"), ("storage_id" = String, Path)),
    request_body = StorageUpdateBody, security(("bearer" = [])),
    responses((status = 200, body = BackupStorage), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 502, body = ErrorBody)))]
async fn update_storage(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((ws, id)): ApiPath<(String, String)>,
    ApiJson(body): ApiJson<StorageUpdateBody>,
) -> Result<Json<BackupStorage>, ApiError> {
    let (_, existing) = storage_for(&state, &caller, &ws, &id, Access::Admin)?;
    let changed = body
        .apply(&existing, chrono::Utc::now())
        .map_err(ApiError::validation)?;
    if changed.nodes != existing.nodes {
        if !existing.provisioned {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                format!(
                    "backup storage '{id}' was not created by this control plane on the cluster (its creation as '{}' was refused), so its nodes cannot be changed there; delete it and create it again",
                    existing.pve_storage
                ),
            ));
        }
        let pve = pve_for(&state, &existing.cluster_id)?;
        let config = pve
            .client
            .storage(&existing.pve_storage)
            .await
            .map_err(|e| pve.error(e))?;
        let update = StorageUpdate {
            nodes: Some(changed.nodes.clone()),
            digest: config.digest,
            ..StorageUpdate::default()
        };
        pve.client
            .update_storage(&existing.pve_storage, &update)
            .await
            .map_err(|e| pve.error(e))?;
    }
    let stored = changed.clone();
    state
        .store
        .write(actor(&caller), move |tx| {
            tx.update_storage(&stored, "backup_storage.update")
        })
        .await?;
    Ok(Json(changed))
}

#[utoipa::path(delete, path = "/api/v1/workspaces/{id}/backup-storages/{storage_id}", tag = "storage",
    params(("id" = String, Path, description = "Workspace"), ("storage_id" = String, Path), ReasonQuery), security(("bearer" = [])),
    responses((status = 204),
        (status = 202, body = Approval, description = "Four eyes are on for the workspace: waiting for a second admin, nothing deleted yet"),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "Retained backups are still on the storage"),
        (status = 422, body = ErrorBody, description = "Four eyes are on and `?reason=` is missing"),
        (status = 502, body = ErrorBody)))]
async fn delete_storage(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((ws, id)): ApiPath<(String, String)>,
    ApiQuery(q): ApiQuery<ReasonQuery>,
) -> Result<Response, ApiError> {
    storage_for(&state, &caller, &ws, &id, Access::Admin)?;
    if approvals::four_eyes(&state, &ws)? {
        check_deletable(&state, &ws, &id)?;
        let action = Action::DeleteStorage {
            storage_id: id.clone(),
        };
        return approvals::hold(
            &state,
            &caller,
            q.reason.as_deref(),
            (ws, None, action),
            None,
            |_| Ok(()),
        )
        .await;
    }
    delete_storage_now(&state, actor(&caller), ws, id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// A storage is deleted only while no retained backup and no policy needs it (409).
fn check_deletable(state: &AppState, ws: &str, id: &str) -> Result<(), ApiError> {
    let retained = store::storages::retained_backups(&state.store.read()?, ws, id)?;
    if retained > 0 {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            store::storages::retained_message(id, retained),
        ));
    }
    let naming = store::storages::naming_policies(&state.store.read()?, ws, id)?;
    if !naming.is_empty() {
        return Err(
            store::StoreError::Conflict(store::storages::named_message(id, &naming)).into(),
        );
    }
    Ok(())
}

/// Deletes the storage as `actor` (the endpoint, or an approval carried out): on the cluster
/// when this control plane created it there, then its record.
pub async fn delete_storage_now(
    state: &AppState,
    actor: Actor,
    ws: String,
    id: String,
) -> Result<(), ApiError> {
    let existing = store::storages::get(&state.store.read()?, &ws, &id)?
        .ok_or_else(|| ApiError::not_found("backup storage", &id))?;
    check_deletable(state, &ws, &id)?;
    if existing.provisioned {
        let pve = pve_for(state, &existing.cluster_id)?;
        match pve.client.delete_storage(&existing.pve_storage).await {
            // Already removed on the cluster by hand: only the record is left.
            Ok(()) | Err(proxmox_client::Error::NotFound { .. }) => {}
            Err(e) => return Err(pve.error(e).into()),
        }
    }
    state
        .store
        .write(actor, move |tx| tx.delete_storage(&ws, &id).map(|_| ()))
        .await?;
    Ok(())
}

//! The daily usage reconcile pass: once a day per workspace that has backup storages or
//! policies, the catalog's usage counter is compared with what the workspace's repositories were
//! last measured to hold and with what Proxmox reports used on its storages
//! ([`crate::domain::reconcile`] has the comparison and why it never corrects the counter).
//!
//! Why here, beside upkeep: the repositories' figure is what upkeep's jobs measure (a gc, and the
//! scheduled verify of a whole storage, record it in the storage's upkeep state), and the pass
//! runs from the scheduler's tick like upkeep's. Its record is kept with the schedule records
//! under `reconcile:<workspace>`, and the usage endpoint shows the latest.

use chrono::Duration;
use serde::{Deserialize, Serialize};

use super::upkeep::{self, UpkeepState};
use crate::domain::quota::AlertKind;
use crate::domain::reconcile::{self, RepositoryFigure, UsageReconcile};
use crate::domain::storage::BackupStorage;
use crate::store::{self, ReadTx, StoreError, Tx};

/// What the pass keeps per workspace.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct ReconcileState {
    #[serde(default)]
    last: Option<UsageReconcile>,
}

fn key(workspace: &str) -> String {
    format!("reconcile:{workspace}")
}

/// The workspace's latest reconcile, if one ran.
pub fn latest(rtx: &ReadTx, workspace: &str) -> Result<Option<UsageReconcile>, StoreError> {
    Ok(store::jobs::schedule_record::<ReconcileState>(rtx, &key(workspace))?.last)
}

/// What a repository's upkeep state knows of its size.
fn measured(state: &UpkeepState) -> Option<RepositoryFigure> {
    match (state.repository_bytes, state.repository_bytes_at) {
        (Some(bytes), Some(at)) => Some(RepositoryFigure::Measured { bytes, at }),
        _ => None,
    }
}

/// What is known of each repository of `workspace`: one per backup storage, and the agents'
/// own repository when a policy of the workspace names no storage or it was ever measured.
fn repositories(
    tx: &Tx,
    workspace: &str,
    storages: &[BackupStorage],
    uses_agents_repository: bool,
) -> Result<Vec<RepositoryFigure>, StoreError> {
    let mut out = Vec::new();
    for s in storages {
        let figure = match measured(&upkeep::upkeep_state(tx, workspace, Some(&s.id))?) {
            Some(m) => m,
            // No job ever made its repository and no catalog entry is on it.
            None if !s.repository_exists && tx.retained_backups(workspace, &s.id)? == 0 => {
                RepositoryFigure::Empty
            }
            None => RepositoryFigure::Unmeasured,
        };
        out.push(figure);
    }
    match measured(&upkeep::upkeep_state(tx, workspace, None)?) {
        Some(m) => out.push(m),
        None if uses_agents_repository => out.push(RepositoryFigure::Unmeasured),
        None => {}
    }
    Ok(out)
}

/// Reconciles `workspace` now: stores the record and raises or resolves its `usage_drift`
/// alert (left as it is while the repositories' figure is not known).
pub fn reconcile_workspace(tx: &mut Tx, workspace: &str) -> Result<UsageReconcile, StoreError> {
    let storages = tx.storages_of(workspace)?;
    let uses_agents_repository = tx
        .all_policies()?
        .iter()
        .any(|p| p.workspace_id == workspace && p.storage_id.is_none());
    let figures = repositories(tx, workspace, &storages, uses_agents_repository)?;
    let proxmox: Vec<Option<u64>> = storages
        .iter()
        .map(|s| s.usage.as_ref().map(|u| u.used_bytes))
        .collect();
    let record = reconcile::reconcile(tx.now, tx.used_bytes(workspace)?, &figures, &proxmox);
    match reconcile::drift_condition(workspace, &record) {
        Some((true, message)) => {
            let raised = tx.raise_alert(workspace, AlertKind::UsageDrift, None, &message)?;
            if raised {
                tracing::warn!(workspace, "{message}");
            }
        }
        Some((false, _)) => tx.resolve_alert(workspace, AlertKind::UsageDrift, None)?,
        None => {}
    }
    tx.put_schedule_record(
        &key(workspace),
        &ReconcileState {
            last: Some(record.clone()),
        },
    )?;
    Ok(record)
}

/// The scheduler's pass: every workspace with backup storages or policies whose last reconcile
/// is a day old (or that has none) is reconciled. Returns the workspaces reconciled.
pub fn due(tx: &mut Tx) -> Result<Vec<String>, StoreError> {
    let now = tx.now;
    let with_policies: std::collections::BTreeSet<String> = tx
        .all_policies()?
        .into_iter()
        .map(|p| p.workspace_id)
        .collect();
    let mut done = Vec::new();
    for ws in tx.workspace_ids()? {
        if !with_policies.contains(&ws) && tx.storages_of(&ws)?.is_empty() {
            continue;
        }
        let last: ReconcileState = tx.schedule_record(&key(&ws))?;
        if last
            .last
            .is_some_and(|r| now - r.checked_at < Duration::days(1))
        {
            continue;
        }
        let r = reconcile_workspace(tx, &ws)?;
        tracing::info!(
            workspace = %ws,
            catalog_bytes = r.catalog_bytes,
            repository_bytes = ?r.repository_bytes,
            proxmox_used_bytes = ?r.proxmox_used_bytes,
            drift_bytes = ?r.drift_bytes,
            "usage reconciled"
        );
        done.push(ws);
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::audit::Actor;
    use crate::domain::backup::BackupRecord;
    use crate::domain::quota::{Alert, AlertState};
    use crate::domain::storage::StorageUsage;
    use crate::store::Store;

    const MIB: u64 = 1 << 20;

    fn actor() -> Actor {
        Actor {
            kind: "system".into(),
            id: "t".into(),
            name: "t".into(),
        }
    }

    fn storage(id: &str, repository_exists: bool) -> BackupStorage {
        serde_json::from_value(serde_json::json!({
            "id": id, "workspace_id": "ws", "cluster_id": "pve", "pve_storage": format!("bw-{id}"),
            "type": "local", "path": "/srv", "nodes": ["n1"], "capacity_bytes": 1u64 << 40,
            "status": "active", "repository_exists": repository_exists,
            "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z",
        }))
        .unwrap()
    }

    /// Workspace `ws` with two storages: `s1` used (its repository exists, Proxmox synced),
    /// `s2` never used; the catalog counts `catalog` bytes.
    fn setup(tx: &mut Tx, catalog: u64) -> Result<(), StoreError> {
        tx.create_workspace(
            &serde_json::from_value(serde_json::json!({
                "id": "ws", "name": "ws", "plan": "dedicated", "quota_bytes": 1u64 << 40,
                "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z",
            }))
            .unwrap(),
        )?;
        let mut s1 = storage("s1", true);
        s1.usage = Some(StorageUsage {
            total_bytes: 1 << 40,
            used_bytes: 3000 * MIB,
            avail_bytes: 1 << 39,
            active: true,
            node: "n1".into(),
            synced_at: tx.now,
        });
        tx.create_storage(&s1)?;
        let mut s2 = storage("s2", false);
        s2.usage = s1.usage.clone();
        tx.create_storage(&s2)?;
        let record: BackupRecord = serde_json::from_value(serde_json::json!({
            "id": "b1", "workspace_id": "ws", "database_id": "db", "db_type": "sqlite",
            "kind": "automatic", "status": "succeeded", "started_at": tx.now,
            "snapshot": "backup-1", "storage_id": "s1", "stored_bytes": catalog,
        }))
        .unwrap();
        tx.record_backup(&record)
    }

    fn drift_alerts(store: &Store) -> Vec<Alert> {
        store::quota::list_alerts(&store.read().unwrap(), "ws", None, None, 100)
            .unwrap()
            .0
            .into_iter()
            .filter(|a| a.kind == AlertKind::UsageDrift)
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn daily_reconcile_alerts_beyond_bounds_and_resolves_within() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        // Never measured: the figures are unknown, nothing is alerted.
        let done = store
            .write(actor(), |tx| {
                setup(tx, 1000 * MIB)?;
                due(tx)
            })
            .await
            .unwrap();
        assert_eq!(done, ["ws"]);
        let r = latest(&store.read().unwrap(), "ws").unwrap().unwrap();
        assert_eq!(r.catalog_bytes, 1000 * MIB);
        assert_eq!((r.repository_bytes, r.drift_bytes), (None, None));
        assert_eq!(r.proxmox_used_bytes, Some(6000 * MIB));
        assert!(drift_alerts(&store).is_empty());
        // Not again the same day.
        let again = store.write(actor(), due).await.unwrap();
        assert!(again.is_empty());

        // A gc measured s1 at 1500 MiB (s2 has no repository: 0): +50 %, beyond bounds.
        store
            .write(actor(), |tx| {
                upkeep::record_measured(tx, "ws", Some("s1"), 1500 * MIB)
            })
            .await
            .unwrap();
        let measured_at = store.now();
        store.advance_clock_for_tests(Duration::days(1));
        assert_eq!(store.write(actor(), due).await.unwrap(), ["ws"]);
        let r = latest(&store.read().unwrap(), "ws").unwrap().unwrap();
        assert_eq!(r.repository_bytes, Some(1500 * MIB));
        assert!(r.repository_measured_at.unwrap() <= measured_at);
        assert_eq!(r.drift_bytes, Some(500 * MIB as i64));
        assert_eq!(r.drift_percent, Some(50.0));
        let alerts = drift_alerts(&store);
        assert_eq!(alerts.len(), 1, "{alerts:?}");
        assert_eq!(alerts[0].state, AlertState::Open);
        assert!(alerts[0].message.contains("workspace 'ws'"), "{alerts:?}");

        // Still beyond a day later: the same alert stays open, none is added.
        store.advance_clock_for_tests(Duration::days(1));
        store.write(actor(), due).await.unwrap();
        assert_eq!(drift_alerts(&store).len(), 1);

        // Re-measured within 10 %: resolved.
        store
            .write(actor(), |tx| {
                upkeep::record_measured(tx, "ws", Some("s1"), 1050 * MIB)
            })
            .await
            .unwrap();
        store.advance_clock_for_tests(Duration::days(1));
        store.write(actor(), due).await.unwrap();
        let alerts = drift_alerts(&store);
        assert_eq!(alerts.len(), 1, "{alerts:?}");
        assert_eq!(alerts[0].state, AlertState::Resolved);
        let r = latest(&store.read().unwrap(), "ws").unwrap().unwrap();
        assert_eq!(r.drift_bytes, Some(50 * MIB as i64));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unmeasured_storage_leaves_an_open_alert_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .write(actor(), |tx| {
                setup(tx, 100 * MIB)?;
                upkeep::record_measured(tx, "ws", Some("s1"), 900 * MIB)?;
                reconcile_workspace(tx, "ws")
            })
            .await
            .unwrap();
        assert_eq!(drift_alerts(&store)[0].state, AlertState::Open);
        // A third storage whose repository exists but was never measured: unknown again.
        let r = store
            .write(actor(), |tx| {
                tx.create_storage(&storage("s3", true))?;
                reconcile_workspace(tx, "ws")
            })
            .await
            .unwrap();
        assert_eq!(r.repository_bytes, None);
        assert_eq!(r.proxmox_used_bytes, None, "s3 was never synced");
        let alerts = drift_alerts(&store);
        assert_eq!(
            (alerts.len(), alerts[0].state),
            (1, AlertState::Open),
            "{alerts:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn workspaces_without_storages_or_policies_are_not_reconciled() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let done = store
            .write(actor(), |tx| {
                tx.create_workspace(
                    &serde_json::from_value(serde_json::json!({
                        "id": "empty", "name": "empty", "plan": "dedicated", "quota_bytes": 1,
                        "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z",
                    }))
                    .unwrap(),
                )?;
                due(tx)
            })
            .await
            .unwrap();
        assert!(done.is_empty());
        assert_eq!(latest(&store.read().unwrap(), "empty").unwrap(), None);
    }
}

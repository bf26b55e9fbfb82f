//! The control plane's side of `proxmox-client`: a stored cluster record becomes a client (its
//! token secret opened with the control-plane key), client errors become [`Error`]s that say
//! what to fix, and the storage sync reads every backup storage's status from its cluster.
//!
//! The errors keep apart what the admin must fix on the cluster (unreachable, TLS mismatch,
//! refused token), what the cluster refused field by field, and a configuration that changed
//! meanwhile, because each asks for a different answer; `api/error.rs` gives them their
//! statuses (502, 422, 409).

use std::time::Duration;

use proxmox_client::{Client, ClientConfig, Credentials, Error as PveError, Trust};

use crate::domain::audit::Actor;
use crate::domain::cluster::ProxmoxCluster;
use crate::domain::quota::AlertKind;
use crate::domain::storage::{BackupStorage, StorageState, StorageUsage};
use crate::domain::Violation;
use crate::secrets::SecretKey;
use crate::store::{self, Store, StoreError};

/// Why a cluster could not be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A connection setting is not usable.
    #[error("{field}: {problem}")]
    Setting {
        field: &'static str,
        problem: String,
    },
    /// The cluster failed us: unreachable, TLS mismatch, refused token, its own error.
    #[error("{0}")]
    Cluster(String),
    /// The cluster refused the parameters, with its message for each.
    #[error("{message}")]
    Parameters {
        message: String,
        details: Vec<Violation>,
    },
    /// The cluster's configuration changed meanwhile.
    #[error("{0}")]
    Conflict(String),
    /// The stored token secret does not open with this control plane's key: the admin must
    /// register it again (not a server fault).
    #[error("the stored token secret of Proxmox cluster '{cluster}' cannot be opened with this control plane's secrets.key (was the data directory restored without it?); register the token secret again with PUT /api/v1/proxmox-clusters/{cluster}")]
    SecretUnreadable { cluster: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Whole-request timeout for calls made while an API request waits.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A client for one cluster, with what error messages need to name.
#[derive(Clone, Debug)]
pub struct Pve {
    pub client: Client,
    pub cluster_id: String,
    pub url: String,
    pub token_id: String,
}

/// Where and how to connect; the secret in clear (only in memory).
pub struct Target<'a> {
    pub cluster_id: &'a str,
    pub url: &'a str,
    pub token_id: &'a str,
    pub token_secret: &'a str,
    pub fingerprint: Option<&'a str>,
    pub ca_pem: Option<&'a str>,
}

impl Pve {
    pub fn connect(t: &Target<'_>) -> Result<Pve, Error> {
        let trust = match (t.fingerprint, t.ca_pem) {
            (Some(fp), _) => {
                Trust::Fingerprint(fp.parse().map_err(|e: PveError| Error::Setting {
                    field: "fingerprint",
                    problem: e.to_string(),
                })?)
            }
            (None, Some(pem)) => Trust::CaPem(pem.to_string()),
            (None, None) => {
                return Err(Error::Setting {
                    field: "fingerprint",
                    problem: "is required (or ca_pem)".into(),
                })
            }
        };
        let mut config =
            ClientConfig::new(t.url, trust, Credentials::token(t.token_id, t.token_secret));
        config.timeout = REQUEST_TIMEOUT;
        config.connect_timeout = CONNECT_TIMEOUT;
        let client = Client::new(config).map_err(|e| match e {
            PveError::Config(m) => Error::Setting {
                field: if t.ca_pem.is_some() { "ca_pem" } else { "url" },
                problem: m,
            },
            other => Error::Cluster(other.to_string()),
        })?;
        Ok(Pve {
            client,
            cluster_id: t.cluster_id.to_string(),
            url: t.url.to_string(),
            token_id: t.token_id.to_string(),
        })
    }

    /// A client for a stored cluster.
    pub fn for_cluster(cluster: &ProxmoxCluster, key: &SecretKey) -> Result<Pve, Error> {
        let secret = key
            .open(
                &ProxmoxCluster::secret_aad(&cluster.id),
                &cluster.token_secret_sealed,
            )
            .map_err(|e| {
                tracing::error!(cluster = %cluster.id, error = %e, "cannot open a stored token secret");
                Error::SecretUnreadable {
                    cluster: cluster.id.clone(),
                }
            })?;
        Pve::connect(&Target {
            cluster_id: &cluster.id,
            url: &cluster.url,
            token_id: &cluster.token_id,
            token_secret: &secret,
            fingerprint: cluster.fingerprint.as_deref(),
            ca_pem: cluster.ca_pem.as_deref(),
        })
    }

    /// What went wrong, in words an admin acts on (also kept as a storage's `status_message`).
    pub fn describe(&self, e: &PveError) -> String {
        let id = &self.cluster_id;
        match e {
            PveError::TlsMismatch {
                url,
                expected,
                found,
            } => format!(
                "the TLS certificate of Proxmox cluster '{id}' ({url}) does not match: expected {expected}, found {found}; if the cluster's certificate was renewed, update the cluster's fingerprint"
            ),
            PveError::Unauthorized { message } => format!(
                "Proxmox cluster '{id}' refused API token '{}' ({message}); check the token id and secret, and that the token has not expired",
                self.token_id
            ),
            PveError::Forbidden {
                message,
                path,
                privilege,
            } => match (privilege, path) {
                (Some(p), Some(on)) => format!(
                    "API token '{}' lacks the privilege {p} on {on} in Proxmox cluster '{id}'; grant it (e.g. the PVEDatastoreAdmin role on /storage, and clear privilege separation or grant the token too)",
                    self.token_id
                ),
                _ => format!(
                    "Proxmox cluster '{id}' denied API token '{}': {message}",
                    self.token_id
                ),
            },
            PveError::Unreachable { url, reason } => format!(
                "cannot reach Proxmox cluster '{id}' at {}: {reason}",
                if url.is_empty() { &self.url } else { url }
            ),
            other => format!("Proxmox cluster '{id}': {other}"),
        }
    }

    /// The error for a failed call.
    pub fn error(&self, e: PveError) -> Error {
        match &e {
            PveError::Parameter { message, errors } => {
                let mut details: Vec<Violation> = errors
                    .iter()
                    .map(|(k, v)| Violation::new(k.clone(), v.trim_end().to_string()))
                    .collect();
                if details.is_empty() {
                    details.push(Violation::new("", message.clone()));
                }
                Error::Parameters {
                    message: format!(
                        "Proxmox cluster '{}' refused the parameters: {}",
                        self.cluster_id,
                        e.to_string().trim_start_matches("invalid parameters: ")
                    ),
                    details,
                }
            }
            PveError::Conflict { .. } => {
                Error::Conflict(format!("{}; try again", self.describe(&e)))
            }
            _ => Error::Cluster(self.describe(&e)),
        }
    }
}

/// The actor of changes the control plane makes on its own.
pub fn sync_actor() -> Actor {
    Actor {
        kind: "system".into(),
        id: "storage-sync".into(),
        name: "backup storage sync".into(),
    }
}

/// What one status read says about a storage.
pub enum Observation {
    Status(proxmox_client::StorageStatus),
    Failed(String),
}

/// Reads one storage's status on its first node.
pub async fn observe(pve: &Pve, storage: &BackupStorage) -> Observation {
    match pve
        .client
        .storage_status(storage.status_node(), &storage.pve_storage)
        .await
    {
        Ok(s) => Observation::Status(s),
        Err(e) => Observation::Failed(pve.describe(&e)),
    }
}

/// Applies an observation to a storage record in `tx`: usage, status (`active` ⇄ `error`,
/// audited as `backup_storage.status` when it changes) and the `storage_error` alert.
pub fn apply_observation(
    tx: &mut store::Tx,
    storage: &BackupStorage,
    observation: &Observation,
) -> store::Result<BackupStorage> {
    let Some(mut s) = tx.storage(&storage.workspace_id, &storage.id)? else {
        return Ok(storage.clone());
    };
    let (state, message) = match observation {
        Observation::Status(st) => {
            s.usage = Some(StorageUsage {
                total_bytes: st.total,
                used_bytes: st.used,
                avail_bytes: st.avail,
                active: st.active,
                node: s.status_node().to_string(),
                synced_at: tx.now,
            });
            if st.active {
                (StorageState::Active, None)
            } else {
                (
                    StorageState::Error,
                    Some(format!(
                        "storage '{}' is not active on node '{}' (enabled: {}); check that the node can reach it (NFS server, Ceph, mount point)",
                        s.pve_storage,
                        s.status_node(),
                        st.enabled
                    )),
                )
            }
        }
        Observation::Failed(m) => (StorageState::Error, Some(m.clone())),
    };
    let changed = s.status != state || s.status_message != message;
    s.status = state;
    s.status_message = message.clone();
    if changed {
        s.updated_at = tx.now;
        tx.update_storage(&s, "backup_storage.status")?;
    } else {
        tx.store_storage_usage(&s)?;
    }
    match (&state, &message) {
        (StorageState::Error, Some(m)) => {
            tx.raise_alert(
                &s.workspace_id,
                AlertKind::StorageError,
                Some(&s.id),
                &format!("backup storage '{}': {m}", s.id),
            )?;
        }
        _ => tx.resolve_alert(&s.workspace_id, AlertKind::StorageError, Some(&s.id))?,
    }
    Ok(s)
}

/// Reads every storage of one cluster and records the results; returns the refreshed records.
/// An unreachable cluster (or one whose secret cannot be opened) marks each of its storages
/// `error`.
pub async fn sync_cluster(
    store: &Store,
    key: &SecretKey,
    cluster_id: &str,
) -> Result<Vec<BackupStorage>, Error> {
    let (cluster, storages) = {
        let rtx = store.read()?;
        let cluster =
            store::clusters::get(&rtx, cluster_id)?.ok_or_else(|| StoreError::NotFound {
                kind: "proxmox cluster",
                id: cluster_id.to_string(),
            })?;
        // A storage whose creation the cluster refused has a name someone else holds there:
        // reading that storage's status would adopt it into this record.
        let ours = store::storages::on_cluster(&rtx, cluster_id)?
            .into_iter()
            .filter(|s| s.provisioned)
            .collect::<Vec<_>>();
        (cluster, ours)
    };
    let mut observations = Vec::with_capacity(storages.len());
    match Pve::for_cluster(&cluster, key) {
        Ok(pve) => {
            for s in &storages {
                observations.push((s.clone(), observe(&pve, s).await));
            }
        }
        Err(e) => {
            for s in &storages {
                observations.push((s.clone(), Observation::Failed(e.to_string())));
            }
        }
    }
    let refreshed = store
        .write(sync_actor(), move |tx| {
            observations
                .iter()
                .map(|(s, o)| apply_observation(tx, s, o))
                .collect::<store::Result<Vec<_>>>()
        })
        .await?;
    Ok(refreshed)
}

/// One pass over every cluster (the periodic task).
pub async fn sync_all(store: &Store, key: &SecretKey) {
    let clusters = match store.read().and_then(|rtx| store::clusters::list(&rtx)) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "storage sync: cannot list the clusters");
            return;
        }
    };
    for c in clusters {
        match sync_cluster(store, key, &c.id).await {
            Ok(storages) => {
                let errors = storages
                    .iter()
                    .filter(|s| s.status == StorageState::Error)
                    .count();
                tracing::debug!(cluster = %c.id, storages = storages.len(), errors, "storage sync");
            }
            Err(e) => tracing::warn!(cluster = %c.id, error = %e, "storage sync failed"),
        }
    }
}

/// Runs [`sync_all`] every `period` until `stop` fires (the server's shutdown).
pub async fn run_sync(
    store: Store,
    key: SecretKey,
    period: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => tokio::select! {
                _ = sync_all(&store, &key) => {}
                _ = stop.changed() => break,
            },
            _ = stop.changed() => break,
        }
    }
}

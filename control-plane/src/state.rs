//! What every request handler shares: the store, the secrets key, the agent CA, the jobs'
//! wake-up board, the metrics. It has a module of its own because `server` builds it and `api`
//! uses it, and `api` must not depend on the server around it.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use crate::metrics::Metrics;
use crate::secrets::SecretKey;
use crate::store::Store;

#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub max_body_bytes: usize,
    /// Cleared when shutdown begins, so `/readyz` tells load balancers to go elsewhere.
    pub ready: Arc<AtomicBool>,
    /// Seals and opens secrets at rest (Proxmox token secrets).
    pub secrets: SecretKey,
    /// Period of the backup-storage sync task `server::serve` runs; `None`: no task.
    pub storage_sync: Option<Duration>,
    /// The built-in agent CA; `None` (tests of the API alone): agent endpoints answer 503.
    pub pki: Option<Arc<crate::pki::AgentCa>>,
    /// Job settings and the agents' long-poll wake-ups; the scheduler task shares it.
    pub jobs: Arc<crate::jobs::Board>,
}

impl AppState {
    pub fn new(store: Store, secrets: SecretKey, max_body_bytes: usize) -> Self {
        AppState {
            store,
            metrics: Arc::new(Metrics::default()),
            max_body_bytes,
            ready: Arc::new(AtomicBool::new(true)),
            secrets,
            storage_sync: None,
            pki: None,
            jobs: Arc::new(crate::jobs::Board::new(Default::default())),
        }
    }
}

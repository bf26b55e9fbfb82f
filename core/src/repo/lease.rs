//! Leases under `locks/`: how backups and GC stay out of each other's way without a server.
//!
//! A running backup holds a `backup-*` lease and refreshes it; GC's deletion phase holds a
//! `sweep-*` lease. A backup never starts while a sweep lease is live, and a sweep never starts
//! while a backup lease is live; both sides write their own lease *before* checking for the
//! other's, so whichever comes second sees the first. A lease whose `expires` has passed
//! belongs to a dead process and is ignored. The full argument is in `docs/CONCURRENCY.md`.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use crate::backend::DynBackend;
use crate::crypto::random_hex;
use crate::error::{Error, Result};
use crate::format;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LeaseKind {
    Backup,
    Sweep,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaseInfo {
    pub kind: LeaseKind,
    pub id: String,
    pub hostname: String,
    pub pid: u32,
    /// What the holder is doing, for messages ("backup of orders-db").
    pub purpose: String,
    pub created: DateTime<Utc>,
    pub expires: DateTime<Utc>,
}

impl LeaseInfo {
    pub fn is_live(&self, now: DateTime<Utc>) -> bool {
        self.expires > now
    }

    pub fn describe(&self) -> String {
        format!(
            "{} (pid {} on {}, since {})",
            self.purpose,
            self.pid,
            self.hostname,
            self.created.format("%Y-%m-%d %H:%M:%SZ")
        )
    }
}

/// A lease this process holds; refreshed in the background until released.
pub struct Lease {
    backend: DynBackend,
    path: String,
    refresher: JoinHandle<()>,
    released: bool,
    /// Expiry (Unix seconds) of the last successfully written copy of the lease.
    expires: Arc<AtomicI64>,
}

impl Lease {
    pub async fn write(backend: &DynBackend, kind: LeaseKind, purpose: &str) -> Result<Lease> {
        let now = Utc::now();
        let mut info = LeaseInfo {
            kind,
            id: random_hex(8),
            hostname: crate::keys::hostname(),
            pid: std::process::id(),
            purpose: purpose.to_string(),
            created: now,
            expires: now + chrono::Duration::seconds(format::LEASE_TTL_SECS),
        };
        let prefix = match kind {
            LeaseKind::Backup => "backup",
            LeaseKind::Sweep => "sweep",
        };
        let path = format!("{}{prefix}-{}", format::LOCKS_DIR, info.id);
        backend
            .write(&path, serde_json::to_vec(&info).expect("lease serializes"))
            .await?;
        let expires = Arc::new(AtomicI64::new(info.expires.timestamp()));
        let (b, p, e) = (backend.clone(), path.clone(), expires.clone());
        let refresher = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(format::LEASE_REFRESH_SECS)).await;
                info.expires = Utc::now() + chrono::Duration::seconds(format::LEASE_TTL_SECS);
                let bytes = serde_json::to_vec(&info).expect("lease serializes");
                match b.write(&p, bytes).await {
                    Ok(()) => e.store(info.expires.timestamp(), Ordering::SeqCst),
                    Err(err) => tracing::warn!(lease = %p, error = %err, "could not refresh lease"),
                }
            }
        });
        Ok(Lease {
            backend: backend.clone(),
            path,
            refresher,
            released: false,
            expires,
        })
    }

    /// Fails if the stored lease has expired (refreshes failed), because then GC may already
    /// have deleted chunks this process relies on. Keeps a margin for clock skew.
    pub fn ensure_valid(&self) -> Result<()> {
        let margin = format::LEASE_TTL_SECS / 5;
        if Utc::now().timestamp() + margin < self.expires.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(Error::Busy(format!(
                "lease {} expired because it could not be refreshed; garbage collection may have run, so nothing was committed",
                self.path
            )))
        }
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    pub async fn release(mut self) -> Result<()> {
        self.refresher.abort();
        self.released = true;
        self.backend.delete(&self.path).await
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.refresher.abort();
        if !self.released {
            // Best effort: an unreleased lease would otherwise block GC until it expires.
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                let (b, p) = (self.backend.clone(), self.path.clone());
                handle.spawn(async move {
                    let _ = b.delete(&p).await;
                });
            }
        }
    }
}

/// All leases, live and stale. Unparseable lease objects are reported as stale ones so GC can
/// clean them up, never as a reason to block forever.
pub async fn list(backend: &DynBackend) -> Result<Vec<(String, Option<LeaseInfo>)>> {
    let mut out = Vec::new();
    for path in backend.list(format::LOCKS_DIR).await? {
        let info = match backend.read(&path).await? {
            Some(bytes) => serde_json::from_slice(&bytes).ok(),
            None => continue,
        };
        out.push((path, info));
    }
    Ok(out)
}

pub async fn live(
    backend: &DynBackend,
    kind: LeaseKind,
    except: Option<&str>,
) -> Result<Vec<LeaseInfo>> {
    let now = Utc::now();
    Ok(list(backend)
        .await?
        .into_iter()
        .filter(|(path, _)| Some(path.as_str()) != except)
        .filter_map(|(_, info)| info)
        .filter(|i| i.kind == kind && i.is_live(now))
        .collect())
}

/// Takes a backup lease, waiting (up to `wait`) while a GC sweep is deleting chunks.
pub async fn acquire_backup(backend: &DynBackend, purpose: &str, wait: Duration) -> Result<Lease> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let lease = Lease::write(backend, LeaseKind::Backup, purpose).await?;
        let sweeps = live(backend, LeaseKind::Sweep, None).await?;
        if sweeps.is_empty() {
            return Ok(lease);
        }
        lease.release().await?;
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::Busy(format!(
                "backup could not start: garbage collection is deleting chunks ({}); try again later",
                sweeps[0].describe()
            )));
        }
        tracing::info!(holder = %sweeps[0].describe(), "waiting for garbage collection to finish deleting");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::OpendalBackend;

    #[tokio::test]
    async fn a_lease_whose_refreshes_failed_refuses_to_commit() {
        let backend: DynBackend = Arc::new(OpendalBackend::memory());
        let lease = Lease::write(&backend, LeaseKind::Backup, "backup of db")
            .await
            .unwrap();
        lease.ensure_valid().unwrap();
        lease
            .expires
            .store(Utc::now().timestamp() - 1, Ordering::SeqCst);
        let err = lease.ensure_valid().unwrap_err();
        assert!(err.to_string().contains("nothing was committed"), "{err}");
        assert_eq!(
            live(&backend, LeaseKind::Backup, None).await.unwrap().len(),
            1
        );
        lease.release().await.unwrap();
        assert!(live(&backend, LeaseKind::Backup, None)
            .await
            .unwrap()
            .is_empty());
    }
}

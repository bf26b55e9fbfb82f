//! Leases under `locks/`: how backups and GC stay out of each other's way without a server.
//!
//! A running backup holds a `backup-*` lease and refreshes it; GC's deletion phase holds a
//! `sweep-*` lease. A backup never starts while a sweep lease is live, and a sweep never starts
//! while a backup lease is live; both sides write their own lease *before* checking for the
//! other's, so whichever comes second sees the first. A lease whose `expires` has passed
//! belongs to a dead process and is ignored; so is one whose holder ran on this host (same
//! boot and pid namespace) and is gone, because waiting 300 s for it would block exactly the
//! GC that frees a full disk. A holder deletes its lease on every way out, including errors
//! and signals ([`release_all`]). The full argument is in `docs/CONCURRENCY.md`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::backend::DynBackend;
use crate::crypto::random_hex;
use crate::error::{Error, Result};
use crate::format;
use crate::process::{self, Liveness};

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
    /// Where `pid` means something ([`process::Holder::scope`]); absent in leases of older
    /// releases and where `/proc` is missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_scope: Option<String>,
    /// The holder's start time, to tell it from a later process that got the same pid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_start: Option<u64>,
    /// The enrolled agent that holds it ([`identify_holder`]): agents of several hosts share one
    /// storage's repository, and an operator clearing a lease by hand needs to know whose it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
}

static HOLDER: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Names this process's leases after an agent (its id at the control plane); the first call
/// wins. Processes that never call it (a one-shot CLI) write leases without a name.
pub fn identify_holder(agent: &str) {
    let _ = HOLDER.set(agent.to_string());
}

/// Why a lease does or does not hold others back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseState {
    Live,
    /// `expires` has passed: the holder stopped refreshing it.
    Expired,
    /// Written by a process of this host (same boot and pid namespace) that is no longer
    /// running: stale at once, without waiting for it to expire.
    HolderGone,
}

impl LeaseInfo {
    pub fn state(&self, now: DateTime<Utc>) -> LeaseState {
        if self.expires <= now {
            return LeaseState::Expired;
        }
        match &self.pid_scope {
            Some(scope) if process::liveness(scope, self.pid, self.pid_start) == Liveness::Gone => {
                LeaseState::HolderGone
            }
            _ => LeaseState::Live,
        }
    }

    pub fn is_live(&self, now: DateTime<Utc>) -> bool {
        self.state(now) == LeaseState::Live
    }

    pub fn describe(&self) -> String {
        let agent = self
            .agent
            .as_deref()
            .map_or_else(String::new, |a| format!("agent {a}, "));
        format!(
            "{} ({agent}pid {} on {}, since {})",
            self.purpose,
            self.pid,
            self.hostname,
            self.created.format("%Y-%m-%d %H:%M:%SZ")
        )
    }
}

/// What to tell an operator about a live lease stored at `path`: who holds it and how to clear
/// it by hand if that holder is in fact gone (another host, or a container we cannot see into).
pub fn how_to_clear(backend: &DynBackend, path: &str, info: &LeaseInfo) -> String {
    format!(
        "{}; it expires by itself at {} unless refreshed. If that process is no longer running \
         (check on {}: `ps -p {}`), delete {path} in the repository {}: that is safe only when \
         the process is gone",
        info.describe(),
        info.expires.format("%Y-%m-%d %H:%M:%SZ"),
        info.hostname,
        info.pid,
        backend.location()
    )
}

/// Leases this process holds, so every exit path can delete them: [`Lease::release`], the
/// best-effort task of [`Lease`]'s `Drop`, and [`release_all`] (the agent calls it before
/// exiting, after an error or a signal, when no destructor's task would still run).
static HELD: Mutex<Option<HashMap<String, Held>>> = Mutex::new(None);

#[derive(Clone)]
struct Held {
    backend: DynBackend,
    /// Set (under the lock) when the lease is being deleted; the refresher writes only while
    /// holding the lock and only if it is unset, so no refresh can land after the delete.
    stopped: Arc<tokio::sync::Mutex<bool>>,
    /// Set before waiting for that lock: a refresh already in flight when the release gave up
    /// waiting for it (a stalled storage) deletes the lease again after its write lands, instead
    /// of leaving it resurrected and refreshed for ever.
    stop: Arc<std::sync::atomic::AtomicBool>,
    wake: Arc<Notify>,
}

fn held() -> std::sync::MutexGuard<'static, Option<HashMap<String, Held>>> {
    HELD.lock().unwrap_or_else(|e| e.into_inner())
}

/// Stops the refresher, deletes the lease object, and forgets it once deleted.
async fn finish(path: &str, h: Held) -> Result<()> {
    h.stop.store(true, Ordering::SeqCst);
    match tokio::time::timeout(Duration::from_secs(10), h.stopped.lock()).await {
        Ok(mut stopped) => *stopped = true,
        Err(_) => {
            tracing::warn!(lease = %path, "a lease refresh is hanging; deleting the lease anyway")
        }
    }
    h.wake.notify_one();
    if let Err(e) = h.backend.delete(path).await {
        retry_release(path.to_string(), h);
        return Err(e);
    }
    forget(path);
    Ok(())
}

fn forget(path: &str) {
    if let Some(map) = held().as_mut() {
        map.remove(path);
    }
}

/// How often the delete of a lease that failed (its storage unreachable for a while) is tried
/// again in the background.
const RELEASE_RETRY: Duration = Duration::from_millis(if cfg!(test) { 50 } else { 5000 });

/// Keeps trying to delete a lease whose delete failed, until it is gone or would have expired
/// anyway. Without it, a backup that failed because its NFS server went away left its lease
/// behind once the server was back, and a live daemon's lease holds gc back until it expires.
fn retry_release(path: String, h: Held) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return; // a command exiting: release_all tries once more
    };
    let until = tokio::time::Instant::now() + Duration::from_secs(format::LEASE_TTL_SECS as u64);
    rt.spawn(async move {
        while tokio::time::Instant::now() < until {
            tokio::time::sleep(RELEASE_RETRY).await;
            let still_held = held().as_ref().is_some_and(|m| m.contains_key(&path));
            if !still_held {
                return;
            }
            match h.backend.delete(&path).await {
                Ok(()) => {
                    tracing::info!(lease = %path, "deleted a lease left behind while its storage was unreachable");
                    break;
                }
                Err(e) => tracing::debug!(lease = %path, error = %e, "a lease still cannot be deleted"),
            }
        }
        forget(&path);
    });
}

/// Deletes every lease this process still holds (waiting at most `wait`). For exit paths:
/// after a signal or an error the futures that owned the leases are gone, and tasks spawned by
/// their destructors would not run once the runtime shuts down.
pub async fn release_all(wait: Duration) {
    let all: Vec<(String, Held)> = held()
        .as_ref()
        .map(|m| m.iter().map(|(p, h)| (p.clone(), h.clone())).collect())
        .unwrap_or_default();
    let deletes = futures::future::join_all(all.iter().map(|(p, h)| finish(p, h.clone())));
    match tokio::time::timeout(wait, deletes).await {
        Ok(results) => {
            for ((path, _), r) in all.iter().zip(results) {
                if let Err(e) = r {
                    tracing::warn!(lease = %path, error = %e, "could not delete a lease before exiting");
                }
            }
        }
        Err(_) => tracing::warn!("leases not deleted within {wait:?}; they expire by themselves"),
    }
}

/// A lease this process holds; refreshed in the background until released.
pub struct Lease {
    path: String,
    released: bool,
    /// Expiry (Unix seconds) of the last successfully written copy of the lease.
    expires: Arc<AtomicI64>,
}

impl Lease {
    pub async fn write(backend: &DynBackend, kind: LeaseKind, purpose: &str) -> Result<Lease> {
        let now = Utc::now();
        let me = process::current();
        let mut info = LeaseInfo {
            kind,
            id: random_hex(8),
            hostname: crate::keys::hostname(),
            pid: std::process::id(),
            purpose: purpose.to_string(),
            created: now,
            expires: now + chrono::Duration::seconds(format::LEASE_TTL_SECS),
            pid_scope: me.map(|m| m.scope.clone()),
            pid_start: me.map(|m| m.start),
            agent: HOLDER.get().cloned(),
        };
        let prefix = match kind {
            LeaseKind::Backup => "backup",
            LeaseKind::Sweep => "sweep",
        };
        let path = format!("{}{prefix}-{}", format::LOCKS_DIR, info.id);
        let h = Held {
            backend: backend.clone(),
            stopped: Arc::new(tokio::sync::Mutex::new(false)),
            stop: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            wake: Arc::new(Notify::new()),
        };
        // Registered before the write, so an interrupted write is cleaned up too.
        held()
            .get_or_insert_with(HashMap::new)
            .insert(path.clone(), h.clone());
        if let Err(e) = backend
            .write(&path, serde_json::to_vec(&info).expect("lease serializes"))
            .await
        {
            let _ = finish(&path, h).await;
            return Err(e);
        }
        let expires = Arc::new(AtomicI64::new(info.expires.timestamp()));
        let (p, e) = (path.clone(), expires.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(format::LEASE_REFRESH_SECS)) => {}
                    _ = h.wake.notified() => {}
                }
                let stopped = h.stopped.lock().await;
                if *stopped || h.stop.load(Ordering::SeqCst) {
                    return;
                }
                info.expires = Utc::now() + chrono::Duration::seconds(format::LEASE_TTL_SECS);
                let bytes = serde_json::to_vec(&info).expect("lease serializes");
                match h.backend.write(&p, bytes).await {
                    Ok(()) => e.store(info.expires.timestamp(), Ordering::SeqCst),
                    Err(err) => tracing::warn!(lease = %p, error = %err, "could not refresh lease"),
                }
                if h.stop.load(Ordering::SeqCst) {
                    // The release stopped waiting for this write and may have deleted the
                    // lease before it landed: delete it again.
                    if let Err(err) = h.backend.delete(&p).await {
                        tracing::warn!(lease = %p, error = %err, "could not delete a lease refreshed while it was released; it expires by itself");
                    }
                    return;
                }
                drop(stopped);
            }
        });
        Ok(Lease {
            path,
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
        self.released = true;
        let h = held().as_ref().and_then(|m| m.get(&self.path).cloned());
        match h {
            Some(h) => finish(&self.path, h).await,
            None => Ok(()),
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        // Best effort while the runtime keeps running (the daemon); a command that exits calls
        // [`release_all`], which waits for this delete or does it itself.
        let h = held().as_ref().and_then(|m| m.get(&self.path).cloned());
        if let (Some(h), Ok(rt)) = (h, tokio::runtime::Handle::try_current()) {
            let path = self.path.clone();
            rt.spawn(async move {
                let _ = finish(&path, h).await;
            });
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

/// Live leases of `kind` (other than the one at `except`), with their paths.
pub async fn live(
    backend: &DynBackend,
    kind: LeaseKind,
    except: Option<&str>,
) -> Result<Vec<(String, LeaseInfo)>> {
    let now = Utc::now();
    Ok(list(backend)
        .await?
        .into_iter()
        .filter(|(path, _)| Some(path.as_str()) != except)
        .filter_map(|(path, info)| Some((path, info?)))
        .filter(|(_, i)| i.kind == kind && i.is_live(now))
        .collect())
}

/// Takes a backup lease, waiting (up to `wait`) while a GC sweep is deleting chunks. Then
/// removes the temporary files of killed writers (see [`crate::leftovers`]): each backup
/// cleans up after the ones that died before it.
pub async fn acquire_backup(backend: &DynBackend, purpose: &str, wait: Duration) -> Result<Lease> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let lease = Lease::write(backend, LeaseKind::Backup, purpose).await?;
        let sweeps = live(backend, LeaseKind::Sweep, None).await?;
        let Some((path, sweep)) = sweeps.first() else {
            let max_age = Duration::from_secs(format::LEASE_TTL_SECS as u64);
            match backend.remove_abandoned_temp_files(max_age).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(files = n, "removed temporary files of interrupted writes"),
                Err(e) => {
                    tracing::warn!(error = %e, "could not remove temporary files of interrupted writes")
                }
            }
            return Ok(lease);
        };
        lease.release().await?;
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::Busy(format!(
                "backup could not start: garbage collection is deleting chunks: {}",
                how_to_clear(backend, path, sweep)
            )));
        }
        tracing::info!(holder = %sweep.describe(), "waiting for garbage collection to finish deleting");
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

    #[tokio::test]
    async fn a_lease_whose_delete_failed_is_deleted_once_the_storage_is_back() {
        let faulty = Arc::new(crate::backend::FaultyBackend::new(
            Arc::new(OpendalBackend::memory()),
            u64::MAX,
        ));
        let backend: DynBackend = faulty.clone();
        let lease = Lease::write(&backend, LeaseKind::Backup, "backup of db")
            .await
            .unwrap();
        faulty.fail_next(1, false);
        assert!(lease.release().await.is_err());
        assert_eq!(
            live(&backend, LeaseKind::Backup, None).await.unwrap().len(),
            1,
            "the storage refused the delete"
        );
        tokio::time::sleep(RELEASE_RETRY * 2).await;
        assert!(
            live(&backend, LeaseKind::Backup, None)
                .await
                .unwrap()
                .is_empty(),
            "deleted in the background once the storage answered again"
        );
    }

    fn info_of(pid: u32, start: Option<u64>) -> LeaseInfo {
        let now = Utc::now();
        let me = process::current().expect("Linux with /proc");
        LeaseInfo {
            kind: LeaseKind::Backup,
            id: "00".into(),
            hostname: crate::keys::hostname(),
            pid,
            purpose: "backup of db".into(),
            created: now,
            expires: now + chrono::Duration::seconds(format::LEASE_TTL_SECS),
            pid_scope: Some(me.scope.clone()),
            pid_start: start,
            agent: Some("agent-7".into()),
        }
    }

    #[test]
    fn a_lease_of_a_gone_process_of_this_host_is_stale_at_once() {
        let now = Utc::now();
        let me = process::current().unwrap();
        assert_eq!(info_of(me.pid, Some(me.start)).state(now), LeaseState::Live);
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert_eq!(info_of(pid, None).state(now), LeaseState::HolderGone);
        // Our pid, another start time: a reused pid.
        assert_eq!(
            info_of(me.pid, Some(me.start + 1)).state(now),
            LeaseState::HolderGone
        );
        // Another host or container: only expiry counts.
        let mut elsewhere = info_of(pid, None);
        elsewhere.pid_scope = Some("000000000000".into());
        assert_eq!(elsewhere.state(now), LeaseState::Live);
        assert!(
            elsewhere.describe().contains("agent agent-7, pid"),
            "a lease says which agent holds it: {}",
            elsewhere.describe()
        );
        // A lease of an older release (no scope) is judged by expiry alone.
        let old: LeaseInfo = serde_json::from_str(&format!(
            r#"{{"kind":"backup","id":"9f","hostname":"db1","pid":{pid},"purpose":"backup of x","created":"2026-11-23T09:15:02Z","expires":"{}"}}"#,
            (now + chrono::Duration::seconds(60)).to_rfc3339()
        ))
        .unwrap();
        assert_eq!(old.state(now), LeaseState::Live);
    }

    #[tokio::test]
    async fn release_all_deletes_leases_whose_owner_was_dropped() {
        let backend: DynBackend = Arc::new(OpendalBackend::memory());
        let lease = Lease::write(&backend, LeaseKind::Backup, "backup of db")
            .await
            .unwrap();
        let path = lease.path().to_string();
        // Forgotten, as when the future that owned it is dropped and its destructor's task
        // never runs because the runtime shuts down.
        std::mem::forget(lease);
        assert!(backend.read(&path).await.unwrap().is_some());
        release_all(Duration::from_secs(5)).await;
        assert_eq!(backend.read(&path).await.unwrap(), None);
        assert!(held().as_ref().is_none_or(|m| !m.contains_key(&path)));
    }
}

//! Garbage collection: delete chunks that no snapshot references — and never one that a
//! running backup may still reference.
//!
//! Mark (list chunks, read every manifest) runs alongside backups. Before deleting, GC waits
//! until no backup lease is live, takes a sweep lease (new backups wait for it), re-reads the
//! manifests so that backups which finished in the meantime protect their chunks, and only then
//! deletes. If any manifest cannot be read, GC stops before deleting anything: an unreadable
//! manifest might be the only reference to a chunk. See `docs/CONCURRENCY.md`.

use std::collections::HashSet;
use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;
use serde::Serialize;

use super::lease::{self, Lease, LeaseKind};
use super::Repository;
use crate::crypto::ChunkId;
use crate::error::{Error, Result};
use crate::format;

#[derive(Debug, Clone)]
pub struct GcOptions {
    pub dry_run: bool,
    /// How long to wait for running backups before giving up (deleting nothing).
    pub wait: Duration,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct GcReport {
    pub snapshots: usize,
    pub stored_chunks: usize,
    pub referenced_chunks: usize,
    /// Unreferenced when marking; some may be referenced again by backups that finished.
    pub unreferenced_chunks: usize,
    pub deleted_chunks: usize,
    pub deleted_bytes: u64,
    /// Chunks spared because a backup that finished during GC references them.
    pub spared_by_new_backups: usize,
    pub stale_leases_removed: usize,
    pub temp_files_removed: usize,
    pub waited_for_backups_secs: u64,
    pub dry_run: bool,
}

/// Temporary files of interrupted writes older than this are removed (those of processes of
/// this host that are gone, at once), as at the start of every backup.
const TEMP_MAX_AGE: Duration = Duration::from_secs(format::LEASE_TTL_SECS as u64);

impl Repository {
    pub async fn gc(&self, opts: &GcOptions) -> Result<GcReport> {
        let mut report = GcReport {
            dry_run: opts.dry_run,
            ..Default::default()
        };
        let stored = self.stored_chunks().await?;
        report.stored_chunks = stored.len();
        let referenced = self.referenced_chunks(&mut report).await?;
        let mut candidates: Vec<ChunkId> = stored
            .into_iter()
            .filter(|id| !referenced.contains(id))
            .collect();
        report.unreferenced_chunks = candidates.len();
        if opts.dry_run {
            return Ok(report);
        }

        let started_wait = tokio::time::Instant::now();
        let sweep = self.acquire_sweep(opts.wait).await?;
        report.waited_for_backups_secs = started_wait.elapsed().as_secs();
        let result = self.sweep(&mut candidates, &mut report).await;
        sweep.release().await?;
        result?;
        self.ensure_reserve().await;
        Ok(report)
    }

    /// Writes [`format::RESERVE_PATH`] unless it is there (after a gc freed space, and when a
    /// repository is made). Best effort: a storage too full for it is what gc is for.
    pub(crate) async fn ensure_reserve(&self) {
        let backend = self.backend();
        match backend.stat(format::RESERVE_PATH).await {
            Ok(Some(_)) => {}
            Ok(None) => {
                if let Err(e) = backend
                    .write(format::RESERVE_PATH, vec![0; format::RESERVE_LEN])
                    .await
                {
                    tracing::warn!(error = %e, "could not write the space reserve for garbage collection");
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not look for the space reserve"),
        }
    }

    /// The sweep lease; on a storage too full for it, the reserve makes the room.
    async fn write_sweep_lease(&self) -> Result<Lease> {
        let backend = self.backend();
        match Lease::write(backend, LeaseKind::Sweep, "garbage collection").await {
            Err(e) if e.is_storage_full() => {
                if backend.stat(format::RESERVE_PATH).await?.is_none() {
                    return Err(e);
                }
                tracing::info!("the storage is full: using the space reserve for the gc lease");
                backend.delete(format::RESERVE_PATH).await?;
                Lease::write(backend, LeaseKind::Sweep, "garbage collection").await
            }
            other => other,
        }
    }

    async fn referenced_chunks(&self, report: &mut GcReport) -> Result<HashSet<ChunkId>> {
        let list = self.list_snapshots(None).await?;
        if let Some((path, err)) = list.damaged.into_iter().next() {
            return Err(Error::corrupt(
                path,
                format!("{err}; garbage collection stopped before deleting anything (remove or repair the manifest first)"),
            ));
        }
        report.snapshots = list.manifests.len();
        let set: HashSet<ChunkId> = list
            .manifests
            .iter()
            .flat_map(|m| m.streams.iter().flat_map(|s| s.chunks.iter().map(|c| c.id)))
            .collect();
        report.referenced_chunks = set.len();
        Ok(set)
    }

    /// Waits until no backup is running, then takes the sweep lease. Writing the lease before
    /// re-checking closes the race with a backup starting at the same moment.
    async fn acquire_sweep(&self, wait: Duration) -> Result<Lease> {
        let deadline = tokio::time::Instant::now() + wait;
        let backend = self.backend();
        loop {
            let running = lease::live(backend, LeaseKind::Backup, None).await?;
            if let Some((path, holder)) = running
                .first()
                .filter(|_| tokio::time::Instant::now() >= deadline)
            {
                return Err(Error::Busy(format!(
                    "garbage collection deleted nothing after waiting {}s (use --wait to wait longer); still running: {}",
                    wait.as_secs(),
                    lease::how_to_clear(backend, path, holder)
                )));
            }
            if running.is_empty() {
                let sweep = self.write_sweep_lease().await?;
                if lease::live(backend, LeaseKind::Backup, None)
                    .await?
                    .is_empty()
                {
                    return Ok(sweep);
                }
                sweep.release().await?;
            } else {
                tracing::info!(holder = %running[0].1.describe(), "waiting for running backups before deleting chunks");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn sweep(&self, candidates: &mut Vec<ChunkId>, report: &mut GcReport) -> Result<()> {
        let mut again = GcReport::default();
        let referenced = self.referenced_chunks(&mut again).await?;
        let before = candidates.len();
        candidates.retain(|id| !referenced.contains(id));
        report.spared_by_new_backups = before - candidates.len();

        let backend = self.backend();
        let paths: Vec<String> = candidates.iter().map(|id| id.path()).collect();
        let deleted: Vec<Result<u64>> = futures::stream::iter(paths)
            .map(|path| async move {
                let size = backend.stat(&path).await?.map_or(0, |s| s.size);
                backend.delete(&path).await?;
                Ok(size)
            })
            .buffer_unordered(16)
            .collect()
            .await;
        for r in deleted {
            report.deleted_bytes += r?;
            report.deleted_chunks += 1;
        }

        let now = Utc::now();
        for (path, info) in lease::list(backend).await? {
            if info.is_none_or(|i| !i.is_live(now)) {
                backend.delete(&path).await?;
                report.stale_leases_removed += 1;
            }
        }
        report.temp_files_removed = backend.remove_abandoned_temp_files(TEMP_MAX_AGE).await?;
        Ok(())
    }
}

//! A snapshot taken by a database driver, whoever asked for it.
//!
//! `bulwark-agent backup`, the pre-restore safety snapshot and the daemon's backup jobs must
//! agree on what a backup is: the same check before anything is written, the same manifest
//! fields, and above all the same end (committed, or aborted so that nothing is visible). They
//! differ only in who watches: a progress bar on a terminal, or progress reports to the control
//! plane that may come back with "cancel". That part is a [`Supervisor`] the caller plugs in.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use bulwark_core::manifest::{Manifest, SnapshotKind};
use bulwark_core::repo::backup::{BackupOptions, Progress};
use bulwark_core::repo::Repository;
use futures::future::BoxFuture;
use futures::FutureExt;

use crate::config::BackupMethod;
use crate::drivers::Driver;

/// What to back up, and how.
pub struct DriverBackup<'a> {
    pub driver: &'a dyn Driver,
    /// `None`: the configured method (or the driver's only one).
    pub method: Option<BackupMethod>,
    pub kind: SnapshotKind,
    pub tags: BTreeMap<String, String>,
    /// Record row counts ([`crate::drivers::BackupOptions::count_rows`]).
    pub count_rows: bool,
}

/// A committed snapshot.
pub struct Written {
    pub manifest: Manifest,
    pub warnings: Vec<String>,
    /// When the backup session started (after the driver's check).
    pub started: Instant,
}

/// The caller's part in a backup: it hears about each phase and may give the backup up.
pub trait Supervisor: Send + Sync {
    /// Whether to ask the driver for the database's size before reading (one more query to
    /// the engine), passed to [`Supervisor::reading`] as the estimate.
    fn wants_estimate(&self) -> bool {
        false
    }

    /// The driver's check is about to run.
    fn checking(&self) -> BoxFuture<'_, ()> {
        async {}.boxed()
    }

    /// The driver starts writing into the session; `progress` counts what it has read so far.
    /// What is returned is dropped as soon as the driver is done (or given up).
    fn reading(&self, progress: Arc<Progress>, estimate: Option<u64>) -> Box<dyn Send>;

    /// Resolves, with the reason, when the backup must be given up while the driver writes.
    fn interrupted(&self) -> BoxFuture<'_, String> {
        futures::future::pending().boxed()
    }

    /// The streams are written; the manifest is about to be.
    fn committing(&self) -> BoxFuture<'_, ()> {
        async {}.boxed()
    }
}

/// Checks, backs up and commits; on any failure or interruption the session is aborted and no
/// snapshot exists.
pub async fn run(
    repo: &Repository,
    backup: DriverBackup<'_>,
    supervisor: &dyn Supervisor,
) -> Result<Written> {
    let driver = backup.driver;
    let id = driver.database_id().to_string();
    supervisor.checking().await;
    driver
        .check()
        .await
        .with_context(|| format!("backup of {id} cannot start; no snapshot was written"))?;
    // The size the database reports (a dump is smaller than the files, so it stays an estimate).
    let estimate = match supervisor.wants_estimate() {
        true => driver
            .discover()
            .await
            .ok()
            .and_then(|d| d.size_bytes)
            .filter(|n| *n > 0),
        false => None,
    };
    let mut opts = BackupOptions::new(
        &id,
        driver.database_type().as_str(),
        backup.kind,
        driver.source(backup.method),
    );
    opts.tags = backup.tags;
    let started = Instant::now();
    let mut session = repo.start_backup(opts).await?;
    let watching = supervisor.reading(session.progress.clone(), estimate);
    let outcome = tokio::select! {
        r = driver.backup(
            &mut session,
            backup.method,
            crate::drivers::BackupOptions {
                count_rows: backup.count_rows,
            },
        ) => Ok(r),
        why = supervisor.interrupted() => Err(why),
    };
    drop(watching);
    let warnings = match outcome {
        Ok(Ok(w)) => w,
        Ok(Err(e)) => {
            session.abort().await;
            return Err(anyhow::Error::new(e)
                .context(format!("backup of {id} failed; no snapshot was written")));
        }
        Err(why) => {
            session.abort().await;
            anyhow::bail!("{why}; the backup was aborted and no snapshot was written (chunks already stored are reclaimed by `gc`)");
        }
    };
    supervisor.committing().await;
    let manifest = session
        .commit()
        .await
        .context("writing the snapshot manifest")?;
    Ok(Written {
        manifest,
        warnings,
        started,
    })
}

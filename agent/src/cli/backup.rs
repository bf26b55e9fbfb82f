//! `backup`: one snapshot from standard input (a dump) or a directory tree.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use bulwark_core::archive::{TreeReader, DATA_STREAM, INDEX_MEDIA_TYPE, INDEX_STREAM};
use bulwark_core::manifest::{parse_tag, Manifest, SnapshotKind, Source};
use bulwark_core::repo::backup::{BackupOptions, BackupSession, Progress};
use bulwark_core::repo::Repository;
use clap::ArgGroup;
use serde_json::json;

use super::output::{self, Bar};
use super::Global;
use crate::backup::{DriverBackup, Supervisor};
use crate::config::BackupMethod;
use crate::drivers::Driver;

#[derive(clap::Args, Debug)]
#[command(group(ArgGroup::new("input").args(["stdin", "path"])))]
#[command(
    after_help = "Without --stdin or --path the database must be declared in the agent \
configuration, and its driver takes the backup (pg_dump, a PostgreSQL base backup, SQLite's \
online backup)."
)]
pub struct Args {
    /// Database id the snapshot belongs to (letters, digits, '.', '_', '-')
    #[arg(long)]
    database: String,
    /// PostgreSQL: logical (pg_dump) or physical (base backup; needs WAL archiving)
    #[arg(long, value_parser = super::method_parser(), conflicts_with_all = ["stdin", "path"])]
    method: Option<BackupMethod>,
    /// Read one stream (for example a dump) from standard input
    #[arg(long)]
    stdin: bool,
    /// Back up this directory tree (modes, mtimes, symlinks and empty directories included)
    #[arg(long, value_name = "DIR")]
    path: Option<PathBuf>,
    /// Snapshot kind: manual, automatic or pre-restore
    #[arg(long, default_value = "manual")]
    kind: SnapshotKind,
    /// Database technology recorded in the manifest (default: stream or files)
    #[arg(long = "type", value_name = "TYPE")]
    database_type: Option<String>,
    /// A key=value tag (repeatable)
    #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = parse_tag_arg)]
    tags: Vec<(String, String)>,
}

fn parse_tag_arg(s: &str) -> Result<(String, String), String> {
    parse_tag(s).map_err(|e| e.to_string())
}

pub async fn run(g: &Global, a: Args) -> Result<ExitCode> {
    if !a.stdin && a.path.is_none() {
        let (_, driver) = g.database(&a.database)?;
        let tags = a.tags.into_iter().collect::<BTreeMap<_, _>>();
        let (manifest, warnings, started) =
            with_driver(g, &g.open().await?, driver.as_ref(), a.method, a.kind, tags).await?;
        report(g, &manifest, started, &warnings);
        return Ok(ExitCode::SUCCESS);
    }
    let repo = g.open().await?;
    let source = if a.stdin {
        Source::Stream
    } else {
        Source::Tree
    };
    let opts = BackupOptions {
        database_id: a.database.clone(),
        database_type: a
            .database_type
            .clone()
            .unwrap_or_else(|| if a.stdin { "stream" } else { "files" }.into()),
        kind: a.kind,
        source,
        tags: a.tags.into_iter().collect::<BTreeMap<_, _>>(),
    };
    let tree = match &a.path {
        Some(p) => Some(TreeReader::new(p)?),
        None => None,
    };
    let started = Instant::now();
    let mut session = repo.start_backup(opts).await?;
    let bar = Bar::start(
        g.progress(),
        &format!("backing up {}", a.database),
        None,
        session.progress.clone(),
        true,
    );
    let result = write_streams(&mut session, tree).await;
    drop(bar);
    let warnings = match result {
        Ok(w) => w,
        Err(e) => {
            session.abort().await;
            return Err(e.context(format!(
                "backup of {} failed; no snapshot was written",
                a.database
            )));
        }
    };
    let manifest = session
        .commit()
        .await
        .context("writing the snapshot manifest")?;
    report(g, &manifest, started, &warnings);
    Ok(ExitCode::SUCCESS)
}

/// A backup taken by a database driver, with the progress bar watching it.
pub async fn with_driver(
    g: &Global,
    repo: &Repository,
    driver: &dyn Driver,
    method: Option<BackupMethod>,
    kind: SnapshotKind,
    tags: BTreeMap<String, String>,
) -> Result<(Manifest, Vec<String>, Instant)> {
    let backup = DriverBackup {
        driver,
        method,
        kind,
        tags,
        // Counts are for drills, which the control plane runs.
        count_rows: false,
    };
    let bar = BarSupervisor {
        shown: g.progress(),
        database: driver.database_id().to_string(),
    };
    let w = crate::backup::run(repo, backup, &bar).await?;
    Ok((w.manifest, w.warnings, w.started))
}

/// A terminal's view of a backup: a bar while the driver reads (Ctrl-C ends the whole command).
struct BarSupervisor {
    shown: bool,
    database: String,
}

impl Supervisor for BarSupervisor {
    fn reading(&self, progress: Arc<Progress>, _estimate: Option<u64>) -> Box<dyn Send> {
        Box::new(Bar::start(
            self.shown,
            &format!("backing up {}", self.database),
            None,
            progress,
            true,
        ))
    }
}

async fn write_streams(
    session: &mut BackupSession,
    tree: Option<TreeReader>,
) -> Result<Vec<String>> {
    match tree {
        None => {
            session
                .add_stream(DATA_STREAM, "application/octet-stream", std::io::stdin())
                .await?;
            Ok(Vec::new())
        }
        Some(tree) => {
            let tree = session
                .add_stream(DATA_STREAM, "application/octet-stream", tree)
                .await?;
            session
                .add_stream(
                    INDEX_STREAM,
                    INDEX_MEDIA_TYPE,
                    std::io::Cursor::new(tree.index_bytes()),
                )
                .await?;
            Ok(tree.warnings)
        }
    }
}

fn report(g: &Global, m: &Manifest, started: Instant, warnings: &[String]) {
    let secs = started.elapsed().as_secs_f64();
    let s = &m.stats;
    if g.json {
        output::json(&json!({
            "snapshot": m.name,
            "database_id": m.database_id,
            "kind": m.kind,
            "logical_bytes": s.logical_bytes,
            "chunks": s.chunks,
            "new_chunks": s.new_chunks,
            "new_logical_bytes": s.new_logical_bytes,
            "new_stored_bytes": s.new_stored_bytes,
            "dedup_ratio": finite(s.dedup_ratio()),
            "duration_secs": secs,
            "warnings": warnings,
        }));
        return;
    }
    for w in warnings {
        eprintln!("warning: {w}");
    }
    println!("snapshot {} written", m.name);
    println!(
        "  {} read in {:.1}s ({}/s), {} chunks, {} new ({} stored), dedup ratio {}",
        output::bytes(s.logical_bytes),
        secs,
        output::bytes((s.logical_bytes as f64 / secs.max(0.001)) as u64),
        s.chunks,
        s.new_chunks,
        output::bytes(s.new_stored_bytes),
        ratio(s.dedup_ratio())
    );
}

/// JSON has no infinity: an all-duplicate backup reports `null`.
pub fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some((x * 100.0).round() / 100.0)
}

pub fn ratio(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.2}x")
    } else {
        "all reused".into()
    }
}

//! `restore`: a snapshot back to standard output, a file, or a directory.
//!
//! Files and directories are written under a temporary name and renamed into place only when
//! every chunk has been authenticated, so a failed restore never leaves a plausible-looking
//! partial result under the name the operator asked for.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use bulwark_core::archive::{restore_tree, DATA_STREAM};
use bulwark_core::manifest::{Manifest, Source};
use bulwark_core::repo::backup::Progress;
use bulwark_core::repo::Repository;
use clap::ArgGroup;
use serde_json::json;

use super::output::{self, Bar};
use super::{usage, Global};
use crate::drivers::{RecoveryTarget, Replacement, RestoreMode, RestoreRequest};
use bulwark_core::manifest::SnapshotKind;

#[derive(clap::Args, Debug)]
#[command(group(ArgGroup::new("dest").args(["stdout", "output", "target"])))]
#[command(group(ArgGroup::new("recovery_target").args(["target_time", "target_lsn", "target_name"])))]
#[command(
    after_help = "Without --stdout, --output or --target, the snapshot goes back into the \
database declared in the agent configuration for --database, through its driver:
  PostgreSQL logical:  [--into-database NAME] [--mode full|merge] [--schema S]... [--table T]... [--jobs N]
  PostgreSQL physical: --data-dir DIR [--target-time T | --target-lsn L | --target-name N] [--port P --start]
  SQLite:              [--to PATH]   (default: replace the configured file)
Replacing an existing database or file needs --confirm; a pre-restore snapshot of it is taken first."
)]
pub struct Args {
    /// Snapshot name, or `latest` (with --database)
    snapshot: String,
    /// Database the snapshot belongs to (needed for `latest`)
    #[arg(long)]
    database: Option<String>,
    /// Write a stream snapshot to standard output
    #[arg(long)]
    stdout: bool,
    /// Write a stream snapshot to this file (must not exist; appears only when complete)
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Restore a directory snapshot into this directory (must not exist or be empty)
    #[arg(long, value_name = "DIR")]
    target: Option<PathBuf>,
    /// Only this file or sub-tree of a directory snapshot (repeatable)
    #[arg(long, value_name = "PATH", requires = "target")]
    include: Vec<String>,
    /// PostgreSQL logical: restore into this database (created if missing)
    #[arg(long, value_name = "NAME", help_heading = "Database restore")]
    into_database: Option<String>,
    /// PostgreSQL logical: full drops and recreates the target; merge keeps existing objects
    #[arg(long, value_enum, help_heading = "Database restore")]
    mode: Option<RestoreMode>,
    /// PostgreSQL logical: only this schema (repeatable; e.g. one tenant's schema)
    #[arg(
        long = "schema",
        value_name = "SCHEMA",
        help_heading = "Database restore"
    )]
    schemas: Vec<String>,
    /// PostgreSQL logical: only this table (repeatable)
    #[arg(
        long = "table",
        value_name = "TABLE",
        help_heading = "Database restore"
    )]
    tables: Vec<String>,
    /// PostgreSQL logical: parallel pg_restore jobs (default: one per core)
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=64), help_heading = "Database restore")]
    jobs: Option<u32>,
    /// PostgreSQL physical: the new data directory (absent or empty)
    #[arg(long, value_name = "DIR", help_heading = "Database restore")]
    data_dir: Option<PathBuf>,
    /// PostgreSQL physical: port of the restored server
    #[arg(long, help_heading = "Database restore")]
    port: Option<u16>,
    /// PostgreSQL physical: start the server, recover to the target, promote, report the point
    #[arg(long, requires = "data_dir", help_heading = "Database restore")]
    start: bool,
    /// PostgreSQL physical: recover to this time (RFC 3339, e.g. 2026-11-23T09:15:00Z)
    #[arg(long, value_name = "TIME", help_heading = "Database restore")]
    target_time: Option<String>,
    /// PostgreSQL physical: recover to this WAL position (e.g. 0/3000148)
    #[arg(long, value_name = "LSN", help_heading = "Database restore")]
    target_lsn: Option<String>,
    /// PostgreSQL physical: recover to this named restore point (pg_create_restore_point)
    #[arg(long, value_name = "NAME", help_heading = "Database restore")]
    target_name: Option<String>,
    /// PostgreSQL physical: put tablespace OID (or name) in DIR (repeatable)
    #[arg(long, value_name = "OID=DIR", value_parser = parse_mapping, help_heading = "Database restore")]
    tablespace_map: Vec<(String, PathBuf)>,
    /// SQLite: write the restored database here instead of replacing the configured file
    #[arg(long, value_name = "PATH", help_heading = "Database restore")]
    to: Option<PathBuf>,
    /// Allow replacing an existing database or file
    #[arg(long, help_heading = "Database restore")]
    confirm: bool,
    /// Skip the pre-restore snapshot of what is replaced
    #[arg(long, help_heading = "Database restore")]
    no_safety_backup: bool,
    /// Directory for temporary files (a dump for parallel pg_restore); default the system's
    #[arg(long, value_name = "DIR", help_heading = "Database restore")]
    work_dir: Option<PathBuf>,
}

fn parse_mapping(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() && !v.is_empty() => Ok((k.to_string(), PathBuf::from(v))),
        _ => Err(format!("{s:?} is not OID=DIR")),
    }
}

impl Args {
    fn recovery_target(&self) -> Result<RecoveryTarget> {
        if let Some(t) = &self.target_time {
            let time = chrono::DateTime::parse_from_rfc3339(t).map_err(|e| {
                usage(format!(
                    "--target-time {t:?} is not an RFC 3339 time such as 2026-11-23T09:15:00Z: {e}"
                ))
            })?;
            return Ok(RecoveryTarget::Time(time));
        }
        if let Some(l) = &self.target_lsn {
            let ok = l.split_once('/').is_some_and(|(a, b)| {
                !a.is_empty()
                    && !b.is_empty()
                    && a.len() <= 8
                    && b.len() <= 8
                    && a.chars().chain(b.chars()).all(|c| c.is_ascii_hexdigit())
            });
            if !ok {
                return Err(usage(format!(
                    "--target-lsn {l:?} is not a WAL position such as 0/3000148"
                )));
            }
            return Ok(RecoveryTarget::Lsn(l.clone()));
        }
        if let Some(n) = &self.target_name {
            return Ok(RecoveryTarget::Name(n.clone()));
        }
        Ok(RecoveryTarget::Latest)
    }

    fn request(&self, g: &Global) -> Result<RestoreRequest> {
        Ok(RestoreRequest {
            into_database: self.into_database.clone(),
            mode: self.mode,
            schemas: self.schemas.clone(),
            tables: self.tables.clone(),
            jobs: self.jobs,
            data_dir: self.data_dir.clone(),
            port: self.port,
            start: self.start,
            target: self.recovery_target()?,
            tablespace_map: self.tablespace_map.clone(),
            to_path: self.to.clone(),
            confirm: self.confirm,
            work_dir: self.work_dir.clone(),
            config_path: g.config_path(),
            repository_args: g.repository_args(),
            progress: Arc::new(Progress::default()),
            ..RestoreRequest::default()
        })
    }
}

/// A restore through the database's driver.
async fn into_database(g: &Global, a: &Args) -> Result<ExitCode> {
    let Some(db) = &a.database else {
        return Err(usage(
            "say which database with --database ID (or write the snapshot out with --stdout, --output or --target)",
        ));
    };
    let (_, driver) = g.database(db)?;
    let req = a.request(g)?;
    let repo = g.open().await?;
    let manifest = if a.snapshot == "latest" {
        driver.find_latest(&repo, &req).await?
    } else {
        repo.find_snapshot(&a.snapshot, Some(db)).await?
    };
    if manifest.database_type != driver.database_type().as_str() {
        return Err(usage(format!(
            "snapshot {} is a {} backup, but {db} is configured as {}",
            manifest.name,
            manifest.database_type,
            driver.database_type().as_str()
        )));
    }
    let started = Instant::now();
    if driver.replaces_existing(&manifest, &req).await? {
        let Replacement {
            replaced,
            effect,
            beside,
        } = driver.replacement(&req);
        if !a.confirm {
            return Err(usage(format!(
                "restoring {} would replace the existing {replaced} ({effect}); pass --confirm to go ahead (a pre-restore snapshot is taken first), or restore beside it with {beside}",
                manifest.name,
            )));
        }
        if !a.no_safety_backup {
            let (safety_driver, method) = driver.pre_restore_backup(&req);
            let tags = [
                ("before-restore-of".to_string(), manifest.name.clone()),
                ("replaced".to_string(), replaced.clone()),
            ]
            .into();
            let (safety, _, _) = super::backup::with_driver(
                g,
                &repo,
                safety_driver.as_ref(),
                method,
                SnapshotKind::PreRestore,
                tags,
            )
            .await
            .context("the pre-restore snapshot failed, so nothing was replaced (use --no-safety-backup to skip it)")?;
            if !g.json {
                println!("pre-restore snapshot {} written", safety.name);
            }
        }
    }
    let bar = Bar::start(
        g.progress(),
        &format!("restoring {}", manifest.name),
        Some(manifest.stats.logical_bytes),
        req.progress.clone(),
        false,
    );
    tracing::info!(snapshot = %manifest.name, database = %db, "restore started");
    let report = driver.restore(&repo, &manifest, &req).await;
    drop(bar);
    let report =
        report.with_context(|| format!("restore of {} into {db} failed", manifest.name))?;
    tracing::info!(snapshot = %manifest.name, database = %db, secs = started.elapsed().as_secs_f64(), "restore finished");
    if g.json {
        let mut out = report.json;
        out["duration_secs"] = json!(started.elapsed().as_secs_f64());
        output::json(&out);
    } else {
        for line in &report.lines {
            println!("{line}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn run(g: &Global, a: Args) -> Result<ExitCode> {
    if !a.stdout && a.output.is_none() && a.target.is_none() {
        return into_database(g, &a).await;
    }
    let repo = g.open().await?;
    let manifest = repo
        .find_snapshot(&a.snapshot, a.database.as_deref())
        .await?;
    let progress = Arc::new(Progress::default());
    let started = Instant::now();
    let total = manifest.stream(DATA_STREAM).map(|s| s.size);
    let bar = Bar::start(
        g.progress(),
        &format!("restoring {}", manifest.name),
        total,
        progress.clone(),
        false,
    );

    let summary = if let Some(target) = &a.target {
        let s = restore_tree(&repo, &manifest, target, &a.include, progress.clone()).await?;
        json!({"snapshot": manifest.name, "target": target, "files": s.files, "dirs": s.dirs, "symlinks": s.symlinks, "hardlinks": s.hardlinks, "bytes": s.bytes})
    } else {
        if manifest.source == Source::Tree {
            return Err(usage(format!(
                "snapshot {} is a directory tree; restore it with --target DIR",
                manifest.name
            )));
        }
        let bytes = match &a.output {
            Some(path) => restore_to_file(&repo, &manifest, path, progress.clone()).await?,
            None => {
                let out = BufWriter::with_capacity(1 << 20, std::io::stdout());
                repo.restore_stream(&manifest, DATA_STREAM, out, progress.clone())
                    .await?;
                manifest.stats.logical_bytes
            }
        };
        json!({"snapshot": manifest.name, "output": a.output.as_ref().map(|p| p.display().to_string()).unwrap_or("-".into()), "bytes": bytes})
    };
    drop(bar);
    let secs = started.elapsed().as_secs_f64();
    // With --stdout the data owns stdout, so the summary goes to stderr.
    if g.json && !a.stdout {
        output::json(&summary);
    } else if g.json {
        eprintln!("{summary}");
    } else {
        let bytes = summary["bytes"].as_u64().unwrap_or(0);
        let line = format!(
            "restored {} ({}) in {secs:.1}s, {}/s",
            manifest.name,
            output::bytes(bytes),
            output::bytes((bytes as f64 / secs.max(0.001)) as u64)
        );
        if a.stdout {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A file being restored that starts the kernel's writeback of every [`WRITEBACK_STEP`] bytes
/// behind the writer, so disk writes overlap fetching and decrypting, and the final `fsync`
/// (which makes the file durable before it is renamed into place) has little left to wait for.
struct WritebackFile {
    file: File,
    written: u64,
    started: u64,
}

const WRITEBACK_STEP: u64 = 32 << 20;

impl WritebackFile {
    fn new(file: File) -> Self {
        WritebackFile {
            file,
            written: 0,
            started: 0,
        }
    }
}

impl std::io::Write for WritebackFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.written += n as u64;
        if self.written - self.started >= WRITEBACK_STEP {
            use std::os::fd::AsRawFd;
            // SAFETY: a plain syscall on a file descriptor we own; it only schedules writeback
            // (SYNC_FILE_RANGE_WRITE) and reads no memory of ours.
            unsafe {
                libc::sync_file_range(
                    self.file.as_raw_fd(),
                    self.started as libc::off64_t,
                    (self.written - self.started) as libc::off64_t,
                    libc::SYNC_FILE_RANGE_WRITE,
                );
            }
            self.started = self.written;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

async fn restore_to_file(
    repo: &Repository,
    m: &Manifest,
    path: &Path,
    progress: Arc<Progress>,
) -> Result<u64> {
    if path.symlink_metadata().is_ok() {
        return Err(usage(format!(
            "{} already exists; choose another --output or remove it",
            path.display()
        )));
    }
    let dir = bulwark_core::leftovers::parent_of(path);
    // Named after this process: the next restore here removes it if this one is killed.
    for stale in bulwark_core::leftovers::remove_stale_staging(dir).unwrap_or_default() {
        tracing::info!(path = %stale.display(), "removed the partial file of an interrupted restore");
    }
    let tmp = bulwark_core::leftovers::staging_path(path);
    let file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let result = async {
        let out = repo
            .restore_stream(m, DATA_STREAM, WritebackFile::new(file), progress)
            .await?;
        out.file.sync_all()?;
        std::fs::rename(&tmp, path).with_context(|| format!("renaming into {}", path.display()))?;
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e.context(format!(
            "restore of {} failed; {} was not created",
            m.name,
            path.display()
        )));
    }
    Ok(m.stats.logical_bytes)
}

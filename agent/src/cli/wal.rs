//! `wal-push` and `wal-fetch`: PostgreSQL's archive_command and restore_command.
//!
//! Exit codes are what PostgreSQL acts on: `wal-push` exits 0 only when the file is durable
//! in the repository; `wal-fetch` exits 0 when it wrote the file, 1 when the file is not
//! archived (the normal end of the archive), and 200 — above 125, so PostgreSQL aborts
//! recovery rather than ending it — when a segment is missing between archived ones.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use bulwark_core::repo::wal::WalPut;
use bulwark_core::repo::Repository;
use serde_json::json;

use super::{output, Global};
use crate::control::DEFAULT_STATE_DIR;
use crate::drivers::postgres::wal::{self, Fetched};

/// Exit code of `wal-fetch` for a hole in the archive.
pub const EXIT_WAL_GAP: u8 = 200;

#[derive(clap::Args, Debug)]
pub struct PushArgs {
    /// Database id the WAL belongs to
    #[arg(long)]
    database: String,
    /// The WAL file (PostgreSQL's %p, relative to the data directory)
    path: PathBuf,
    /// The daemon's state directory: when a physical backup job bound the database to a
    /// storage, its WAL goes there (unless --repo names a repository)
    #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR, env = "BULWARK_STATE_DIR")]
    state_dir: PathBuf,
}

#[derive(clap::Args, Debug)]
pub struct FetchArgs {
    /// Database id the WAL belongs to
    #[arg(long)]
    database: String,
    /// File name to fetch (PostgreSQL's %f)
    name: String,
    /// Where to write it (PostgreSQL's %p)
    dest: PathBuf,
    /// The daemon's state directory: when a physical backup job bound the database to a
    /// storage, its WAL is fetched from there (unless --repo names a repository)
    #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR, env = "BULWARK_STATE_DIR")]
    state_dir: PathBuf,
    /// The binding to follow instead of the database's own (a restored cluster's, written by
    /// the restore job)
    #[arg(long, value_name = "NAME")]
    binding: Option<String>,
}

/// The repository of `database`'s WAL: `--repo` when given, else the storage a physical backup
/// job bound it to ([`crate::wal_target`]), else agent.toml's `[repository]`; and whether it
/// was the binding.
async fn open_for(g: &Global, state_dir: &Path, database: &str) -> Result<(Repository, bool)> {
    if !g.repo_named() {
        if let Some(t) = crate::wal_target::target(state_dir, database)? {
            let location = crate::storage::location_for(&t.storage, &g.settings.storage);
            let backend = super::open_backend(&location, false)?;
            let repo = Repository::open(backend, t.workspace_key.as_bytes())
                .await
                .with_context(|| {
                    format!(
                        "opening the repository of storage {} ({location}) that database {database}'s WAL goes to",
                        t.storage.storage_id
                    )
                })?;
            return Ok((repo, true));
        }
    }
    Ok((g.open().await?, false))
}

pub async fn push(g: &Global, a: PushArgs) -> Result<ExitCode> {
    let (repo, bound) = open_for(g, &a.state_dir, &a.database).await?;
    let outcome = wal::push(&repo, &a.database, &a.path)
        .await
        .with_context(|| format!("archiving {} for database {}", a.path.display(), a.database))?;
    // Where the daemon bound the database, its heartbeat reports the last archived file.
    if let (true, Some(name)) = (bound, a.path.file_name().and_then(|n| n.to_str())) {
        let at = chrono::Utc::now();
        if let Err(e) = crate::wal_target::record_archived(&a.state_dir, &a.database, name, at) {
            tracing::warn!(error = %e, "archived, but could not note it for the heartbeat");
        }
    }
    if g.json {
        output::json(&json!({
            "database_id": a.database,
            "file": a.path,
            "already_archived": outcome == WalPut::AlreadyArchived,
        }));
    } else if outcome == WalPut::AlreadyArchived {
        eprintln!(
            "{} was already archived with the same contents",
            a.path.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn fetch(g: &Global, a: FetchArgs) -> Result<ExitCode> {
    let binding = a.binding.as_deref().unwrap_or(&a.database);
    let (repo, _) = open_for(g, &a.state_dir, binding).await?;
    let outcome = wal::fetch(&repo, &a.database, &a.name, &a.dest)
        .await
        .with_context(|| format!("fetching WAL {} of database {}", a.name, a.database))?;
    let code = match &outcome {
        Fetched::Restored { .. } => ExitCode::SUCCESS,
        Fetched::NotArchived => ExitCode::from(1),
        Fetched::Missing { later } => {
            eprintln!("{}", wal::gap_message(&a.database, &a.name, later));
            ExitCode::from(EXIT_WAL_GAP)
        }
    };
    if g.json {
        let status = match &outcome {
            Fetched::Restored { .. } => "restored",
            Fetched::NotArchived => "not-archived",
            Fetched::Missing { .. } => "missing",
        };
        output::json(&json!({"database_id": a.database, "name": a.name, "status": status}));
    }
    Ok(code)
}

//! `wal-push` and `wal-fetch`: PostgreSQL's archive_command and restore_command.
//!
//! Exit codes are what PostgreSQL acts on: `wal-push` exits 0 only when the file is durable
//! in the repository; `wal-fetch` exits 0 when it wrote the file, 1 when the file is not
//! archived (the normal end of the archive), and 200 — above 125, so PostgreSQL aborts
//! recovery rather than ending it — when a segment is missing between archived ones.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use bulwark_core::repo::wal::WalPut;
use serde_json::json;

use super::{output, Global};
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
}

pub async fn push(g: &Global, a: PushArgs) -> Result<ExitCode> {
    let repo = g.open().await?;
    let outcome = wal::push(&repo, &a.database, &a.path)
        .await
        .with_context(|| format!("archiving {} for database {}", a.path.display(), a.database))?;
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
    let repo = g.open().await?;
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

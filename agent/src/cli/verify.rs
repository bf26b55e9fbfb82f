//! `verify`: read back every chunk of one or all snapshots and prove it intact.
//!
//! A damaged chunk object is moved to `quarantine/` (unless `--no-quarantine`), so that the
//! next backup of the same data stores it again and heals every snapshot that uses it; the
//! report says which chunks moved and which snapshots they heal. Every problem is reported and
//! the run carries on: a manifest that cannot be read, a chunk the storage cannot return.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Result;
use bulwark_core::error::ErrorClass;
use bulwark_core::repo::backup::Progress;
use bulwark_core::repo::verify::{ChunkProblem, VerifyOptions};
use clap::ArgGroup;
use serde_json::json;

use super::output::{self, Bar};
use super::Global;

#[derive(clap::Args, Debug)]
#[command(group(ArgGroup::new("which").required(true).args(["snapshot", "all"])))]
#[command(
    after_help = "A chunk found damaged is moved to quarantine/<id>-<time> in the repository (never \
deleted), so the next backup of the same data stores a good copy and every snapshot using it \
becomes restorable again. A missing chunk heals the same way. Exit code 3 when anything is \
damaged, 1 when only the storage failed to return objects."
)]
pub struct Args {
    /// Snapshot name, or `latest` (with --database)
    snapshot: Option<String>,
    /// Verify every snapshot (of --database, if given)
    #[arg(long)]
    all: bool,
    #[arg(long)]
    database: Option<String>,
    /// Report damaged chunks but leave them in chunks/ (later backups keep reusing them)
    #[arg(long)]
    no_quarantine: bool,
}

pub async fn run(g: &Global, a: Args) -> Result<ExitCode> {
    let repo = g.open().await?;
    let (manifests, damaged) = match &a.snapshot {
        Some(name) => (
            vec![repo.find_snapshot(name, a.database.as_deref()).await?],
            Vec::new(),
        ),
        None => {
            let list = repo
                .list_snapshots_keep_going(a.database.as_deref())
                .await?;
            (list.manifests, list.damaged)
        }
    };
    let progress = Arc::new(Progress::default());
    let total = manifests.iter().map(|m| m.stats.logical_bytes).sum();
    let bar = Bar::start(
        g.progress(),
        "verifying",
        Some(total),
        progress.clone(),
        false,
    );
    let opts = VerifyOptions {
        quarantine: !a.no_quarantine,
        ..VerifyOptions::default()
    };
    let report = repo.verify(&manifests, opts, progress).await?;
    drop(bar);
    let results = &report.snapshots;
    let bad = results.iter().filter(|r| !r.problems.is_empty()).count() + damaged.len();
    let damage = report.found_damage()
        || damaged
            .iter()
            .any(|(_, e)| e.class() != ErrorClass::Storage);
    let quarantined = report.quarantined();
    let heals: Vec<_> = report
        .chunks
        .iter()
        .filter(|c| c.heals_on_next_backup())
        .collect();
    if g.json {
        let damaged: Vec<_> = damaged
            .iter()
            .map(|(p, e)| {
                json!({
                    "object": p,
                    "error": e.to_string(),
                    "unreadable": e.class() == ErrorClass::Storage,
                })
            })
            .collect();
        output::json(&json!({
            "snapshots": results,
            "damaged_manifests": damaged,
            "chunks": report.chunks,
            "quarantined": quarantined,
            "ok": bad == 0,
        }));
    } else {
        for r in results {
            if r.problems.is_empty() {
                println!(
                    "ok       {} ({} chunks, {})",
                    r.name,
                    r.chunks,
                    output::bytes(r.logical_bytes)
                );
            } else {
                let only_unreadable = r.problems.len() as u64 == r.unreadable_chunks;
                let label = if only_unreadable {
                    "UNREADABLE"
                } else {
                    "DAMAGED "
                };
                println!("{label} {}", r.name);
                for p in &r.problems {
                    println!("         {p}");
                }
            }
        }
        for (path, err) in &damaged {
            let label = if err.class() == ErrorClass::Storage {
                "UNREADABLE"
            } else {
                "DAMAGED "
            };
            println!("{label} {path}: {err}");
        }
        for c in &report.chunks {
            match (&c.quarantined_to, c.problem) {
                (Some(to), _) => println!("quarantined {} -> {to}", c.object),
                (None, ChunkProblem::Damaged) if a.no_quarantine => {
                    println!("left in place (--no-quarantine): {}", c.object)
                }
                _ => {}
            }
        }
        println!(
            "{} snapshot(s) checked, {bad} damaged",
            results.len() + damaged.len()
        );
        if !heals.is_empty() {
            let mut snapshots: Vec<&str> = heals
                .iter()
                .flat_map(|c| c.snapshots.iter().map(String::as_str))
                .collect();
            snapshots.sort_unstable();
            snapshots.dedup();
            println!(
                "{} chunk(s) are not stored now ({quarantined} moved to quarantine/, {} missing): the next backup of the same data stores them again, which heals {}",
                heals.len(),
                heals.len() - quarantined,
                snapshots.join(", ")
            );
        }
    }
    Ok(if damage {
        ExitCode::from(3)
    } else if bad > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

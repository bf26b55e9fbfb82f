//! `verify`: read back every chunk of one or all snapshots and prove it intact.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Result;
use bulwark_core::repo::backup::Progress;
use clap::ArgGroup;
use serde_json::json;

use super::output::{self, Bar};
use super::Global;

#[derive(clap::Args, Debug)]
#[command(group(ArgGroup::new("which").required(true).args(["snapshot", "all"])))]
pub struct Args {
    /// Snapshot name, or `latest` (with --database)
    snapshot: Option<String>,
    /// Verify every snapshot (of --database, if given)
    #[arg(long)]
    all: bool,
    #[arg(long)]
    database: Option<String>,
}

pub async fn run(g: &Global, a: Args) -> Result<ExitCode> {
    let repo = g.open().await?;
    let (manifests, damaged) = match &a.snapshot {
        Some(name) => (
            vec![repo.find_snapshot(name, a.database.as_deref()).await?],
            Vec::new(),
        ),
        None => {
            let list = repo.list_snapshots(a.database.as_deref()).await?;
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
    let results = repo.verify(&manifests, progress).await?;
    drop(bar);
    let bad = results.iter().filter(|r| !r.problems.is_empty()).count() + damaged.len();
    if g.json {
        let damaged: Vec<_> = damaged
            .iter()
            .map(|(p, e)| json!({"object": p, "error": e.to_string()}))
            .collect();
        output::json(&json!({"snapshots": results, "damaged_manifests": damaged, "ok": bad == 0}));
    } else {
        for r in &results {
            if r.problems.is_empty() {
                println!(
                    "ok       {} ({} chunks, {})",
                    r.name,
                    r.chunks,
                    output::bytes(r.logical_bytes)
                );
            } else {
                println!("DAMAGED  {}", r.name);
                for p in &r.problems {
                    println!("         {p}");
                }
            }
        }
        for (path, err) in &damaged {
            println!("DAMAGED  {path}: {err}");
        }
        println!(
            "{} snapshot(s) checked, {bad} damaged",
            results.len() + damaged.len()
        );
    }
    Ok(if bad == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}

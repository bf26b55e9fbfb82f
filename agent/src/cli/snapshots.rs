//! `snapshots`: what is in the repository, and what each backup cost.

use std::process::ExitCode;

use anyhow::Result;
use serde_json::json;

use super::backup::{finite, ratio};
use super::{output, Global};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Only this database's snapshots
    #[arg(long)]
    database: Option<String>,
}

pub async fn run(g: &Global, a: Args) -> Result<ExitCode> {
    let repo = g.open().await?;
    let list = repo.list_snapshots(a.database.as_deref()).await?;
    if g.json {
        let rows: Vec<_> = list
            .manifests
            .iter()
            .map(|m| {
                json!({
                    "database_id": m.database_id,
                    "name": m.name,
                    "time": m.started,
                    "finished": m.finished,
                    "kind": m.kind,
                    "database_type": m.database_type,
                    "source": m.source,
                    "hostname": m.hostname,
                    "tags": m.tags,
                    "logical_bytes": m.stats.logical_bytes,
                    "new_stored_bytes": m.stats.new_stored_bytes,
                    "new_logical_bytes": m.stats.new_logical_bytes,
                    "chunks": m.stats.chunks,
                    "new_chunks": m.stats.new_chunks,
                    "dedup_ratio": finite(m.stats.dedup_ratio()),
                })
            })
            .collect();
        let damaged: Vec<_> = list
            .damaged
            .iter()
            .map(|(p, e)| json!({"object": p, "error": e.to_string()}))
            .collect();
        output::json(&json!({"snapshots": rows, "damaged": damaged}));
    } else {
        println!(
            "{:<20} {:<46} {:<20} {:<11} {:>10} {:>10} {:>7} {:>10}",
            "DATABASE", "SNAPSHOT", "TIME", "KIND", "SIZE", "NEW", "CHUNKS", "DEDUP"
        );
        for m in &list.manifests {
            println!(
                "{:<20} {:<46} {:<20} {:<11} {:>10} {:>10} {:>7} {:>10}",
                m.database_id,
                m.name,
                m.started.format("%Y-%m-%d %H:%M:%S"),
                m.kind.as_str(),
                output::bytes(m.stats.logical_bytes),
                output::bytes(m.stats.new_stored_bytes),
                m.stats.chunks,
                ratio(m.stats.dedup_ratio())
            );
        }
        for (path, err) in &list.damaged {
            eprintln!("damaged: {path}: {err}");
        }
    }
    Ok(if list.damaged.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}

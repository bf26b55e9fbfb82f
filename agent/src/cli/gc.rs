//! `gc`: delete chunks no snapshot references, safely alongside running backups.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use bulwark_core::repo::gc::GcOptions;

use super::{output, Global};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Count what would be deleted, delete nothing
    #[arg(long)]
    dry_run: bool,
    /// Seconds to wait for running backups to finish before giving up (nothing is deleted then)
    #[arg(long, default_value_t = 3600)]
    wait: u64,
}

pub async fn run(g: &Global, a: Args) -> Result<ExitCode> {
    let repo = g.open().await?;
    let report = repo
        .gc(&GcOptions {
            dry_run: a.dry_run,
            wait: Duration::from_secs(a.wait),
        })
        .await?;
    if g.json {
        output::json(&report);
    } else if a.dry_run {
        println!(
            "{} snapshots reference {} of {} stored chunks; {} unreferenced chunks would be deleted",
            report.snapshots, report.referenced_chunks, report.stored_chunks, report.unreferenced_chunks
        );
    } else {
        println!(
            "deleted {} unreferenced chunks ({}); {} spared because backups that finished meanwhile use them; \
             {} stale leases and {} stale temporary files removed",
            report.deleted_chunks,
            output::bytes(report.deleted_bytes),
            report.spared_by_new_backups,
            report.stale_leases_removed,
            report.temp_files_removed
        );
    }
    Ok(ExitCode::SUCCESS)
}

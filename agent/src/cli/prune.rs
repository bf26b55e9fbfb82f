//! `prune`: apply retention rules; `--dry-run` prints the plan and deletes nothing.
//!
//! Manifests that cannot be read are listed in the plan, never deleted and never counted as
//! kept; their presence makes the command exit 3 after pruning, as `snapshots` does, so a
//! scheduled prune does not hide damage.

use std::process::ExitCode;

use anyhow::Result;
use bulwark_core::retention::{parse_duration, Rules};
use serde_json::json;

use super::{output, Global};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Only this database's snapshots (default: every database, each on its own)
    #[arg(long)]
    database: Option<String>,
    /// Keep the N newest snapshots
    #[arg(long, default_value_t = 0)]
    keep_last: u32,
    /// Keep the newest snapshot of each of the last N hours that have one
    #[arg(long, default_value_t = 0)]
    keep_hourly: u32,
    /// Keep the newest snapshot of each of the last N days that have one
    #[arg(long, default_value_t = 0)]
    keep_daily: u32,
    /// Keep the newest snapshot of each of the last N ISO weeks that have one
    #[arg(long, default_value_t = 0)]
    keep_weekly: u32,
    /// Keep the newest snapshot of each of the last N months that have one
    #[arg(long, default_value_t = 0)]
    keep_monthly: u32,
    /// Keep the newest snapshot of each of the last N years that have one
    #[arg(long, default_value_t = 0)]
    keep_yearly: u32,
    /// Keep every snapshot younger than this (e.g. 30d, 12h, 2w)
    #[arg(long, value_parser = parse_within)]
    keep_within: Option<chrono::Duration>,
    /// Never keep fewer than N snapshots per database, whatever the other rules say
    #[arg(long, default_value_t = 1)]
    keep_min: u32,
    /// Show what would be deleted and why, delete nothing
    #[arg(long)]
    dry_run: bool,
}

fn parse_within(s: &str) -> Result<chrono::Duration, String> {
    parse_duration(s).ok_or_else(|| format!("{s:?} is not a duration like 30d, 12h or 2w"))
}

pub async fn run(g: &Global, a: Args) -> Result<ExitCode> {
    let rules = Rules {
        keep_last: a.keep_last,
        keep_hourly: a.keep_hourly,
        keep_daily: a.keep_daily,
        keep_weekly: a.keep_weekly,
        keep_monthly: a.keep_monthly,
        keep_yearly: a.keep_yearly,
        keep_within: a.keep_within,
        keep_min: a.keep_min,
    };
    if !rules.has_selection_rule() {
        return Err(super::usage(
            "no --keep-* rule given: pass at least one of --keep-last, --keep-hourly, --keep-daily, --keep-weekly, --keep-monthly, --keep-yearly, --keep-within",
        ));
    }
    let repo = g.open().await?;
    let plans = repo
        .plan_prune(a.database.as_deref(), &rules, chrono::Utc::now())
        .await?;
    let deleted = if a.dry_run {
        0
    } else {
        repo.execute_prune(&plans).await?
    };
    let unreadable: usize = plans.iter().map(|p| p.unreadable.len()).sum();
    if g.json {
        output::json(
            &json!({"dry_run": a.dry_run, "deleted": deleted, "unreadable": unreadable, "databases": plans}),
        );
    } else {
        for p in &plans {
            println!("database {}", p.database_id);
            for u in &p.unreadable {
                println!(
                    "  UNREADABLE {}  left in place, not counted as kept: {}",
                    u.object, u.error
                );
            }
            for d in &p.decisions {
                let verb = match (d.keep, a.dry_run) {
                    (true, _) => "keep  ",
                    (false, true) => "would remove",
                    (false, false) => "removed",
                };
                println!("  {verb} {}  {}", d.name, d.reasons.join(", "));
            }
        }
        if a.dry_run {
            println!("dry run: nothing deleted");
        } else {
            println!("{deleted} snapshot(s) removed; run `gc` to reclaim the space of chunks no longer referenced");
        }
        if unreadable > 0 {
            eprintln!("{unreadable} manifest(s) could not be read and were left alone; `verify --all` reports them (gc refuses to run until they are repaired or removed)");
        }
    }
    Ok(if unreadable == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}

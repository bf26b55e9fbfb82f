//! `drill`: a restore drill from the command line — the newest snapshot of a configured
//! database (or its state at a point in time) restored into a private scratch instance under
//! the state directory, checked, timed and removed again. The same drill the daemon runs for
//! the control plane ([`crate::drill`]); here the repository is the configuration's (or
//! `--repo`), as for `restore`, and a physical copy fetches its WAL from that same repository.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Result;
use bulwark_core::api::SqlCheck;
use bulwark_core::repo::Repository;
use futures::future::BoxFuture;
use futures::FutureExt;
use serde_json::json;

use super::{output, usage, Global};
use crate::config::DatabaseType;
use crate::control::DEFAULT_STATE_DIR;
use crate::drill::{DrillHost, DrillSpec, Drilled, RowCounts};
use crate::drivers::{Driver, RecoveryTarget};

/// `--help`'s description (on the subcommand in `cli/mod.rs`, where clap takes it from).
pub(super) const LONG_ABOUT: &str =
    "Restore drill: proves that a database's backups come back, and how long that \
takes (the RTO).\n\n\
The newest snapshot of --database (a dump, a SQLite copy, or with --physical a PostgreSQL base \
backup recovered with its archived WAL to --to-time or to the end of the archive) is restored \
into a scratch instance in <state dir>/drills/<id>/, checked, then stopped and removed whatever \
happened. A PostgreSQL scratch server listens on no TCP port, only on a Unix socket in that \
directory (trust for local connections), so it collides with nothing and needs none of the \
original's credentials. Nothing of the original database is touched.\n\n\
Checks: the engine's own (pg_amcheck --all --heapallindexed, PRAGMA integrity_check), every \
table's row count against the counts the snapshot recorded (only snapshots of backups made for \
a policy with drills record them; for others the drill says so and skips the comparison), and \
any --check. This is the same drill the daemon runs for the control plane's drill jobs.";

#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  bulwark-agent drill --database app
  bulwark-agent drill --database app --physical --to-time 2026-11-23T09:15:00Z --no-integrity \\
      --check 'orders=select count(*) from orders=1234'

Output: the snapshot, the RTO (seconds from the command's start until the last check answered: \
opening the repository, restore, server start-up, recovery and checks), the point the copy \
holds, each check, and whether the scratch directory was removed; --json prints it as one \
document.

Exit codes: 0 every check passed and the scratch instance is gone; 1 a check failed, the copy \
could not be made or reached, or the scratch directory could not be removed; 2 invalid usage; \
3 repository damaged; 4 wrong passphrase; 130 interrupted (the scratch instance is stopped and removed all the \
same).")]
pub struct Args {
    /// Database to drill, as declared in the agent configuration
    #[arg(long, value_name = "ID")]
    database: String,
    /// PostgreSQL: restore the newest physical base backup and recover it with archived WAL
    /// (default: the newest dump)
    #[arg(long)]
    physical: bool,
    /// Recover to this time (RFC 3339, e.g. 2026-11-23T09:15:00Z); needs --physical
    #[arg(
        long,
        value_name = "TIME",
        requires = "physical",
        conflicts_with = "latest"
    )]
    to_time: Option<String>,
    /// Recover to the end of the archived WAL (the default)
    #[arg(long)]
    latest: bool,
    /// Skip the engine's own integrity check (pg_amcheck reads every page: the slowest check)
    #[arg(long)]
    no_integrity: bool,
    /// Skip comparing the copy's row counts with the ones the snapshot recorded
    #[arg(long)]
    no_row_counts: bool,
    /// A query and the answer it must give, NAME=SQL=EXPECTED (repeatable). The name ends at the
    /// first `=`, the answer starts after the last one, so the SQL may contain `=`. The answer
    /// is compared with the query's output, rows one per line, columns joined by `|`.
    #[arg(long = "check", value_name = "NAME=SQL=EXPECTED", value_parser = parse_check)]
    checks: Vec<SqlCheck>,
    /// The state directory: the scratch instance goes into DIR/drills/<id>/
    #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR, env = "BULWARK_STATE_DIR")]
    state_dir: PathBuf,
}

fn parse_check(s: &str) -> Result<SqlCheck, String> {
    let bad =
        || format!("{s:?} is not NAME=SQL=EXPECTED (e.g. 'users=select count(*) from users=42')");
    let (name, rest) = s.split_once('=').ok_or_else(bad)?;
    let (query, expect) = rest.rsplit_once('=').ok_or_else(bad)?;
    if name.trim().is_empty() || query.trim().is_empty() {
        return Err(bad());
    }
    if matches!(name.trim(), "integrity" | "row_counts") {
        return Err(format!(
            "a check cannot be named {:?}: that is the name of a built-in check",
            name.trim()
        ));
    }
    Ok(SqlCheck {
        name: name.trim().to_string(),
        query: query.trim().to_string(),
        expect: expect.to_string(),
    })
}

impl Args {
    fn target(&self) -> Result<RecoveryTarget> {
        match &self.to_time {
            Some(t) => {
                let time = chrono::DateTime::parse_from_rfc3339(t).map_err(|e| {
                    usage(format!(
                        "--to-time {t:?} is not an RFC 3339 time such as 2026-11-23T09:15:00Z: {e}"
                    ))
                })?;
                Ok(RecoveryTarget::Time(time))
            }
            None => Ok(RecoveryTarget::Latest),
        }
    }
}

/// The command line's part: the configured repository, no WAL binding (the scratch cluster's
/// restore_command names the repository itself), phases on stderr, Ctrl-C gives up.
struct CliHost<'a> {
    g: &'a Global,
    database: &'a str,
}

impl DrillHost for CliHost<'_> {
    fn driver(&self) -> Result<Box<dyn Driver>> {
        Ok(self.g.database(self.database)?.1)
    }

    fn open(&self) -> BoxFuture<'_, Result<Repository>> {
        self.g.open().boxed()
    }

    fn bind_wal(&self, _scratch: &Path) -> Result<Vec<String>> {
        Ok(Vec::new())
    }

    fn unbind_wal(&self) {}

    fn phase<'a>(&'a self, phase: &'a str) -> BoxFuture<'a, ()> {
        if !self.g.json {
            eprintln!("drill: {phase}");
        }
        async {}.boxed()
    }

    fn interrupted(&self) -> BoxFuture<'_, anyhow::Error> {
        async {
            super::shutdown_signal().await;
            anyhow::anyhow!("interrupted")
        }
        .boxed()
    }
}

/// The flags that make the scratch cluster's `wal-fetch` read the repository this drill
/// restores from: `--repo` always (also when the configuration named it, so that no WAL
/// binding of the database in the daemon's state directory takes its place), and
/// `--password-file` when given.
fn repository_args(g: &Global) -> Result<Vec<String>> {
    let mut args = g.repository_args();
    if !g.repo_named() {
        let location = g.location()?;
        let location = match location.contains("://") {
            true => location.to_string(),
            false => std::fs::canonicalize(location)
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_else(|_| location.to_string()),
        };
        args.splice(0..0, ["--repo".to_string(), location]);
    }
    Ok(args)
}

pub async fn run(g: &Global, a: Args) -> Result<ExitCode> {
    let clock = Instant::now();
    let (db, _) = g.database(&a.database)?;
    if a.physical && db.kind != DatabaseType::Postgresql {
        return Err(usage(format!(
            "--physical applies to PostgreSQL databases; {} is {}",
            a.database, db.kind
        )));
    }
    let id = format!(
        "cli-{}-{}",
        chrono::Utc::now().format("%Y%m%dT%H%M%S"),
        std::process::id()
    );
    let spec = DrillSpec {
        id,
        database_type: db.kind,
        physical: a.physical,
        target: a.target()?,
        integrity: !a.no_integrity,
        row_counts: match a.no_row_counts {
            true => RowCounts::No,
            false => RowCounts::WhenRecorded,
        },
        sql_checks: a.checks.clone(),
        config_path: g.config_path(),
        repository_args: repository_args(g)?,
    };
    let host = CliHost {
        g,
        database: &a.database,
    };
    let drilled = crate::drill::run(&a.state_dir, &spec, &host, clock).await;
    let error = drilled.error();
    let code = match (&drilled.ran, &error) {
        _ if drilled.interrupted => ExitCode::from(130),
        (Err(e), _) => ExitCode::from(super::exit_code(e)),
        (Ok(()), Some(_)) => ExitCode::from(1),
        (Ok(()), None) => ExitCode::SUCCESS,
    };
    if g.json {
        print_json(&a.database, &drilled, error.as_deref());
    } else {
        print_text(&a.database, &drilled);
    }
    if let Some(error) = error {
        eprintln!("error: {error}");
    }
    Ok(code)
}

fn print_json(database: &str, d: &Drilled, error: Option<&str>) {
    let mut out = serde_json::to_value(&d.outcome).unwrap_or_default();
    out["drill_id"] = json!(d.id);
    out["database_id"] = json!(database);
    out["passed"] = json!(error.is_none());
    out["scratch"] = json!(d.scratch);
    out["notes"] = json!(d.notes);
    out["error"] = json!(error);
    output::json(&out);
}

fn print_text(database: &str, d: &Drilled) {
    let o = &d.outcome;
    let verdict = match (d.error(), d.interrupted) {
        (_, true) => "INTERRUPTED",
        (None, _) => "passed",
        (Some(_), _) => "FAILED",
    };
    match o.snapshot.is_empty() {
        true => println!("drill {} of {database}: {verdict}", d.id),
        false => println!(
            "drill {} of {database}, snapshot {}: {verdict}",
            d.id, o.snapshot
        ),
    }
    if d.ran.is_ok() {
        println!(
            "  RTO (ready_secs):  {:.2} s (from the command's start until the last check answered)",
            o.ready_secs
        );
        if let Some(t) = o.recovered_to {
            println!("  recovered to:      {}", t.to_rfc3339());
        }
        if let Some(r) = &o.reached {
            println!("  recovery stopped:  {}", r.stop_reason);
        }
        if o.checks.is_empty() {
            println!("  checks:            none asked for (the copy was restored and started)");
        }
        for c in &o.checks {
            let mark = if c.passed { "passed" } else { "FAILED" };
            println!("  check {}: {mark} — {}", c.name, c.detail);
        }
    }
    for n in &d.notes {
        println!("  note: {n}");
    }
    println!(
        "  scratch removed:   {} ({})",
        if o.scratch_removed { "yes" } else { "NO" },
        d.scratch.display()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_check_splits_at_the_first_and_the_last_equals_sign() {
        let c = parse_check("paid=select count(*) from orders where paid = true=42").unwrap();
        assert_eq!(c.name, "paid");
        assert_eq!(c.query, "select count(*) from orders where paid = true");
        assert_eq!(c.expect, "42");
        let c = parse_check("empty=select ''=").unwrap();
        assert_eq!((c.query.as_str(), c.expect.as_str()), ("select ''", ""));
        assert!(parse_check("select 1").is_err());
        assert!(parse_check("one=select 1").is_err());
        assert!(parse_check("=select 1=1").is_err());
        assert!(parse_check("integrity=select 1=1").is_err());
    }
}

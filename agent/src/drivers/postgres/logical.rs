//! Logical backups: `pg_dump` in custom format streamed straight into the repository, and
//! `pg_restore` with parallel jobs.
//!
//! The dump is taken uncompressed (`-Z0`): pg_dump's zlib would cost more CPU than our zstd
//! on the worker pool and would hide repeated content from the chunker, so a second dump of
//! a mostly unchanged database would store everything again. Parallel `pg_restore` needs a
//! seekable file, so a restore first writes the dump to a private temporary file.

use bulwark_core::manifest::Manifest;
use bulwark_core::repo::backup::BackupSession;
use bulwark_core::repo::Repository;
use serde_json::json;
use std::io::BufWriter;

use super::{blocking, process, Postgres, DUMP_MEDIA_TYPE, DUMP_STREAM};
use crate::drivers::{DriverError, RestoreMode, RestoreReport, RestoreRequest, Result};

pub async fn backup(
    pg: &Postgres,
    session: &mut BackupSession,
    opts: crate::drivers::BackupOptions,
) -> Result<Vec<String>> {
    let (dbname, version) =
        blocking(|| Ok::<_, DriverError>((pg.dbname()?, pg.server_version_num()?)))?;
    // Row counts come from a transaction whose snapshot pg_dump then uses: they describe
    // exactly the dump. The transaction stays open (holding the snapshot) until the dump ends.
    let counted = match opts.count_rows {
        true => Some(blocking(|| SnapshotCounts::take(pg, &dbname))?),
        false => None,
    };
    let mut cmd = pg.tool("pg_dump")?;
    cmd.args(["--format=custom", "--compress=0"])
        .arg("-d")
        .arg(pg.conninfo(Some(&dbname), None));
    if let Some(c) = &counted {
        cmd.arg(format!("--snapshot={}", c.snapshot));
    }
    let (stdout, running) = process::spawn_stdout(pg.id(), "pg_dump", &mut cmd)?;
    if let Err(e) = session
        .add_stream(DUMP_STREAM, DUMP_MEDIA_TYPE, stdout)
        .await
    {
        running.kill();
        return Err(e.into());
    }
    let stderr = blocking(|| running.finish()).map_err(|e| pg.explain(e))?;
    session.set_detail("method", "logical");
    session.set_detail("format", "custom");
    session.set_detail("dbname", dbname);
    session.set_detail("server_version_num", version.to_string());
    if let Some(c) = counted {
        session.set_detail(
            crate::drivers::ROW_COUNTS_DETAIL,
            serde_json::to_string(&c.counts).expect("serialisable"),
        );
        blocking(|| c.finish(pg))?;
    }
    Ok(stderr
        .lines()
        .filter(|l| l.contains("warning"))
        .map(str::to_string)
        .collect())
}

/// One `schema.table<TAB>count` line per ordinary or partitioned table outside the system
/// schemas (psql `\gexec`), then a line `end-of-counts`: the same query for the backup's
/// snapshot and for a drill's restored copy.
pub const ROW_COUNTS_SQL: &str = "SELECT format('SELECT %L || chr(9) || count(*) FROM %I.%I', n.nspname || '.' || c.relname, n.nspname, c.relname) \
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%' \
ORDER BY 1 \\gexec\nSELECT 'end-of-counts';\n";

/// Reads [`ROW_COUNTS_SQL`]'s lines into table → count.
pub fn parse_counts(
    lines: impl Iterator<Item = String>,
) -> std::collections::BTreeMap<String, u64> {
    lines
        .take_while(|l| l.trim() != "end-of-counts")
        .filter_map(|l| {
            let (table, n) = l.rsplit_once('\t')?;
            Some((table.to_string(), n.trim().parse().ok()?))
        })
        .collect()
}

/// A psql session holding an exported snapshot, and the row counts it saw.
struct SnapshotCounts {
    child: std::process::Child,
    snapshot: String,
    counts: std::collections::BTreeMap<String, u64>,
}

impl SnapshotCounts {
    fn take(pg: &Postgres, dbname: &str) -> Result<SnapshotCounts> {
        use std::io::{BufRead, Write};
        let mut cmd = pg.tool("psql")?;
        cmd.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .arg("-d")
            .arg(pg.conninfo(Some(dbname), None))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null());
        let mut child = cmd
            .spawn()
            .map_err(|e| DriverError::io("starting psql to count rows", e))?;
        let mut stdin = child.stdin.take().expect("piped");
        let script = format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;\nSELECT pg_export_snapshot();\n{ROW_COUNTS_SQL}"
        );
        let failed = |what: &str| DriverError::Tool {
            database: pg.id().to_string(),
            tool: "psql".into(),
            status: "no answer".into(),
            stderr: format!("{what} (is the role allowed to read every table?)"),
        };
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| DriverError::io("sending the row count queries to psql", e))?;
        let mut lines = std::io::BufReader::new(child.stdout.take().expect("piped"))
            .lines()
            .map_while(|l| l.ok());
        let snapshot = lines
            .next()
            .filter(|s| !s.trim().is_empty())
            .ok_or_else(|| failed("exporting a snapshot for the row counts failed"))?;
        let counts = parse_counts(&mut lines);
        child.stdin = Some(stdin);
        Ok(SnapshotCounts {
            child,
            snapshot: snapshot.trim().to_string(),
            counts,
        })
    }

    /// Ends the transaction once pg_dump no longer needs its snapshot.
    fn finish(mut self, pg: &Postgres) -> Result<()> {
        use std::io::Write;
        if let Some(mut stdin) = self.child.stdin.take() {
            let _ = stdin.write_all(b"COMMIT;\n");
        }
        let status = self
            .child
            .wait()
            .map_err(|e| DriverError::io("waiting for psql", e))?;
        if !status.success() {
            return Err(DriverError::Tool {
                database: pg.id().to_string(),
                tool: "psql".into(),
                status: status.to_string(),
                stderr: "the row counts' transaction ended with an error".into(),
            });
        }
        Ok(())
    }
}

/// The database a restore writes into.
fn target_database(pg: &Postgres, req: &RestoreRequest) -> Result<String> {
    match &req.into_database {
        Some(name) => Ok(name.clone()),
        None => pg.dbname(),
    }
}

fn database_exists(pg: &Postgres, name: &str) -> Result<bool> {
    let out = pg.psql(
        Some("postgres"),
        &[("target", name)],
        "SELECT count(*) FROM pg_database WHERE datname = :'target';",
    )?;
    Ok(out.trim() == "1")
}

pub fn replaces_existing(pg: &Postgres, req: &RestoreRequest) -> Result<bool> {
    let mode = req.mode.unwrap_or(RestoreMode::Full);
    Ok(mode == RestoreMode::Full && database_exists(pg, &target_database(pg, req)?)?)
}

pub fn refuse_physical_options(pg: &Postgres, req: &RestoreRequest) -> Result<()> {
    if req.has_physical_options() {
        return Err(DriverError::invalid(
            pg.id(),
            "restore options",
            "--data-dir, --port, --start, --target-* and --tablespace-map apply to physical snapshots; this one is a logical dump (use --into-database, --mode, --schema, --table)",
        ));
    }
    req.refuse_sqlite_options(pg.id())
}

/// The newest logical snapshot: what restore options that only a dump takes need.
pub async fn latest_dump(pg: &Postgres, repo: &Repository) -> Result<Manifest> {
    let db = pg.id();
    let list = repo.list_snapshots(Some(db)).await?;
    let chosen = list
        .manifests
        .iter()
        .rfind(|m| m.details.get("method").map(String::as_str) == Some("logical"))
        .ok_or_else(|| {
            DriverError::Usage(format!(
                "there is no logical snapshot of {db} to restore with these options"
            ))
        })?;
    list.refuse_unreadable_newer_than(db, Some(chosen), None)?;
    Ok(chosen.clone())
}

pub async fn restore(
    pg: &Postgres,
    repo: &Repository,
    manifest: &Manifest,
    req: &RestoreRequest,
) -> Result<RestoreReport> {
    refuse_physical_options(pg, req)?;
    let mode = req.mode.unwrap_or(RestoreMode::Full);
    let target = blocking(|| target_database(pg, req))?;
    let selective = !req.schemas.is_empty() || !req.tables.is_empty();

    // The dump, as a private temporary file pg_restore can seek in.
    let work = req.work_dir.clone().unwrap_or_else(std::env::temp_dir);
    let tmp = tempfile::Builder::new()
        .prefix(".bulwark-restore-")
        .suffix(".dump")
        .tempfile_in(&work)
        .map_err(|e| {
            DriverError::io(
                format!("creating a temporary dump file in {}", work.display()),
                e,
            )
        })?;
    let file = tmp
        .reopen()
        .map_err(|e| DriverError::io("opening the temporary dump file", e))?;
    repo.restore_stream(
        manifest,
        DUMP_STREAM,
        BufWriter::with_capacity(1 << 20, file),
        req.progress.clone(),
    )
    .await?;

    blocking(|| {
        let exists = database_exists(pg, &target)?;
        let mut actions = Vec::new();
        if mode == RestoreMode::Full && exists && !selective {
            pg.psql(
                Some("postgres"),
                &[("target", &target)],
                "SELECT format('DROP DATABASE %I WITH (FORCE)', :'target') \\gexec",
            )?;
            actions.push(format!("dropped database {target}"));
        }
        if !exists || (mode == RestoreMode::Full && !selective) {
            pg.psql(
                Some("postgres"),
                &[("target", &target)],
                "SELECT format('CREATE DATABASE %I TEMPLATE template0', :'target') \\gexec",
            )?;
            actions.push(format!("created database {target}"));
        }
        // pg_restore --schema restores the objects in a schema but not the schema itself.
        for schema in &req.schemas {
            pg.psql(
                Some(&target),
                &[("schema", schema)],
                "SELECT format('CREATE SCHEMA IF NOT EXISTS %I', :'schema') \\gexec",
            )?;
        }
        let jobs = req.jobs.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(2)
        });
        let mut cmd = pg.tool("pg_restore")?;
        cmd.arg("-d")
            .arg(pg.conninfo(Some(&target), None))
            .arg(format!("--jobs={}", jobs.max(1)));
        match mode {
            RestoreMode::Full if selective => {
                cmd.args(["--clean", "--if-exists", "--exit-on-error"]);
            }
            RestoreMode::Full => {
                cmd.arg("--exit-on-error");
            }
            RestoreMode::Merge => {}
        }
        if req.skip_ownership {
            cmd.args(["--no-owner", "--no-privileges"]);
        }
        for s in &req.schemas {
            cmd.arg(format!("--schema={s}"));
        }
        for t in &req.tables {
            cmd.arg(format!("--table={t}"));
        }
        cmd.arg(tmp.path());
        let mut warnings = Vec::new();
        match process::output(pg.id(), "pg_restore", &mut cmd) {
            Ok(_) => {}
            // In merge mode existing objects make pg_restore report errors it skipped.
            Err(DriverError::Tool { stderr, .. })
                if mode == RestoreMode::Merge && stderr.contains("errors ignored on restore") =>
            {
                warnings.extend(
                    stderr
                        .lines()
                        .filter(|l| l.contains("error") || l.contains("errors ignored"))
                        .take(20)
                        .map(str::to_string),
                );
            }
            Err(e) => return Err(e),
        }
        let what = if selective {
            format!(
                "schemas [{}] tables [{}]",
                req.schemas.join(", "),
                req.tables.join(", ")
            )
        } else {
            "everything".to_string()
        };
        let mode_name = match mode {
            RestoreMode::Full => "full",
            RestoreMode::Merge => "merge",
        };
        let mut lines = actions.clone();
        lines.push(format!(
            "restored {what} of {} into database {target} ({mode_name}, {jobs} jobs)",
            manifest.name
        ));
        lines.extend(warnings.iter().map(|w| format!("warning: {w}")));
        Ok(RestoreReport {
            lines,
            json: json!({
                "snapshot": manifest.name,
                "method": "logical",
                "database": target,
                "mode": mode_name,
                "schemas": req.schemas,
                "tables": req.tables,
                "jobs": jobs,
                "actions": actions,
                "warnings": warnings,
            }),
        })
    })
}

//! Physical backups through PostgreSQL's low-level backup API, the way pgBackRest takes
//! them: `pg_backup_start` in a session we hold open, the data directory and every tablespace
//! read straight from disk into the repository as trees, then `pg_backup_stop`, whose backup
//! label and tablespace map are stored beside them.
//!
//! Reading the files ourselves (instead of `pg_basebackup -Ft -D -`, which refuses to write
//! more than one tablespace to a pipe) keeps every tablespace in one snapshot, streams
//! without a temporary copy, and lets restores use the repository's parallel tree restore.
//! Pages torn by concurrent writes are repaired by WAL replay from the start LSN, which is
//! why a physical backup is useless without the archived WAL and why `check` insists on
//! `archive_mode`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, ChildStdout};

use bulwark_core::archive::{restore_tree_streams, Selection, TreeReader, INDEX_MEDIA_TYPE};
use bulwark_core::manifest::Manifest;
use bulwark_core::repo::backup::BackupSession;
use bulwark_core::repo::Repository;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{blocking, process, recovery, Postgres};
use crate::drivers::{DriverError, RecoveryTarget, RestoreReport, RestoreRequest, Result};

pub const DATA_STREAM: &str = "data";
pub const INDEX_STREAM: &str = "index";
pub const LABEL_STREAM: &str = "backup_label";

/// How long `pg_backup_stop` may wait for the last WAL segment to be archived.
const STOP_TIMEOUT: &str = "15min";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Tablespace {
    pub oid: String,
    pub name: String,
    pub location: String,
}

fn tablespace_streams(oid: &str) -> (String, String) {
    (format!("tblspc-{oid}"), format!("tblspc-{oid}-index"))
}

/// What of a data directory goes into a backup (PostgreSQL's own list for base backups:
/// runtime state, temporary files, and WAL, which comes from the archive instead).
pub fn data_dir_selection(rel: &str) -> Selection {
    let name = rel.rsplit('/').next().unwrap_or(rel);
    if name.starts_with("pgsql_tmp") || name == "pg_internal.init" {
        return Selection::Exclude;
    }
    match rel {
        "postmaster.pid"
        | "postmaster.opts"
        | "backup_label"
        | "backup_label.old"
        | "tablespace_map"
        | "tablespace_map.old"
        | "backup_manifest"
        | "postgresql.auto.conf.tmp"
        | "recovery.signal"
        | "standby.signal"
        | "bulwark-recovery.log" => Selection::Exclude,
        "pg_wal" | "pg_replslot" | "pg_dynshmem" | "pg_notify" | "pg_serial" | "pg_snapshots"
        | "pg_stat_tmp" | "pg_subtrans" => Selection::DirectoryOnly,
        _ => Selection::Include,
    }
}

fn tablespace_selection(rel: &str) -> Selection {
    let name = rel.rsplit('/').next().unwrap_or(rel);
    if name.starts_with("pgsql_tmp") || name == "pg_internal.init" {
        Selection::Exclude
    } else {
        Selection::Include
    }
}

/// Physical backups need WAL archiving on; a base backup without its WAL cannot be made
/// consistent.
pub fn check_archiving(pg: &Postgres) -> Result<Vec<String>> {
    let out = pg.psql(None, &[], "SHOW archive_mode;\nSHOW archive_command;")?;
    let mut lines = out.lines();
    let mode = lines.next().unwrap_or_default().trim().to_string();
    let command = lines.next().unwrap_or_default().trim().to_string();
    let hint = format!(
        "set archive_mode = on and archive_command = 'bulwark-agent --config <file> wal-push --database {} %p' in postgresql.conf, then restart the server",
        pg.id()
    );
    if mode == "off" {
        return Err(DriverError::invalid(
            pg.id(),
            "archive_mode",
            format!("is off, so the WAL a physical backup needs would not be kept; {hint}"),
        ));
    }
    let mut warnings = Vec::new();
    if !command.contains("wal-push") {
        warnings.push(format!(
            "archive_command is {command:?}, not bulwark-agent wal-push: point-in-time restore from this repository needs the WAL in it ({hint})"
        ));
    }
    Ok(warnings)
}

/// A psql session holding a backup open (non-exclusive backups end with their session).
struct BackupApi {
    running: process::Running,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl BackupApi {
    fn open(pg: &Postgres) -> Result<BackupApi> {
        let mut cmd = pg.tool("psql")?;
        cmd.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(pg.conninfo(None, None))
            .args(["-f", "-"]);
        let (stdout, mut running) = process::spawn_session(pg.id(), "psql", &mut cmd)?;
        let stdin = running.child.stdin.take().expect("piped stdin");
        Ok(BackupApi {
            running,
            stdin,
            stdout: BufReader::new(stdout),
        })
    }

    /// Sends one statement and reads its one-line answer; a failed statement ends psql, and
    /// its stderr becomes the error.
    fn query(mut self, sql: &str) -> Result<(BackupApi, String)> {
        let sent = writeln!(self.stdin, "{sql}").and_then(|_| self.stdin.flush());
        let mut line = String::new();
        let read = sent.and_then(|_| self.stdout.read_line(&mut line));
        match read {
            Ok(n) if n > 0 => Ok((self, line.trim_end().to_string())),
            _ => {
                drop(self.stdin);
                Err(match self.running.finish() {
                    Err(e) => e,
                    Ok(stderr) => DriverError::Tool {
                        database: String::new(),
                        tool: "psql".into(),
                        status: "no answer".into(),
                        stderr,
                    },
                })
            }
        }
    }

    fn close(self) {
        drop(self.stdin);
        let _ = self.running.finish();
    }
}

struct Started {
    api: BackupApi,
    lsn: String,
    wal: String,
    timeline: String,
}

fn start(pg: &Postgres, label: &str) -> Result<Started> {
    let api = BackupApi::open(pg)?;
    let (api, _) = api.query(&format!(
        "SET statement_timeout = '{STOP_TIMEOUT}'; SELECT 1;"
    ))?;
    let (api, line) = api.query(&format!(
        "SELECT l, pg_walfile_name(l), (SELECT timeline_id FROM pg_control_checkpoint()) \
         FROM pg_backup_start('{label}', true) AS l;"
    ))?;
    let f: Vec<&str> = line.split('|').collect();
    let [lsn, wal, tli] = f.as_slice() else {
        api.close();
        return Err(DriverError::invalid(
            pg.id(),
            "pg_backup_start",
            format!("unexpected reply {line:?}"),
        ));
    };
    Ok(Started {
        lsn: lsn.to_string(),
        wal: wal.to_string(),
        timeline: format!("{:08X}", tli.parse::<u32>().unwrap_or(0)),
        api,
    })
}

struct Stopped {
    lsn: String,
    wal: String,
    label: Vec<u8>,
}

fn stop(pg: &Postgres, api: BackupApi) -> Result<Stopped> {
    let (api, line) = api.query(
        "SELECT lsn, pg_walfile_name(lsn), encode(convert_to(labelfile, 'UTF8'), 'hex') \
         FROM pg_backup_stop(true);",
    )
    .map_err(|e| match e {
        DriverError::Tool { stderr, .. } if stderr.contains("statement timeout") => DriverError::invalid(
            pg.id(),
            "WAL archiving",
            format!("pg_backup_stop waited {STOP_TIMEOUT} for the backup's last WAL segment to be archived; check archive_command and the server log"),
        ),
        e => e,
    })?;
    api.close();
    let f: Vec<&str> = line.split('|').collect();
    let [lsn, wal, label] = f.as_slice() else {
        return Err(DriverError::invalid(
            pg.id(),
            "pg_backup_stop",
            format!("unexpected reply {line:?}"),
        ));
    };
    Ok(Stopped {
        lsn: lsn.to_string(),
        wal: wal.to_string(),
        label: hex::decode(label).map_err(|_| {
            DriverError::invalid(pg.id(), "pg_backup_stop", "backup label is not hex")
        })?,
    })
}

pub async fn backup(pg: &Postgres, session: &mut BackupSession) -> Result<Vec<String>> {
    let data_dir = pg.data_dir()?.to_path_buf();
    let (mut warnings, server_dir, version, tablespaces) = blocking(|| {
        let warnings = check_archiving(pg)?;
        let out = pg.psql(
            None,
            &[],
            "SELECT current_setting('data_directory');\n\
             SELECT current_setting('server_version_num');\n\
             SELECT coalesce(json_agg(json_build_object('oid', oid::text, 'name', spcname, 'location', pg_tablespace_location(oid))), '[]') \
             FROM pg_tablespace WHERE spcname NOT IN ('pg_default', 'pg_global');",
        )?;
        let mut lines = out.lines();
        let dir = lines.next().unwrap_or_default().to_string();
        let version = lines.next().unwrap_or_default().to_string();
        let spc: Vec<Tablespace> = serde_json::from_str(lines.next().unwrap_or("[]"))
            .map_err(|e| DriverError::invalid(pg.id(), "tablespace list", e.to_string()))?;
        Ok::<_, DriverError>((warnings, dir, version, spc))
    })?;
    let same = |a: &Path, b: &Path| {
        std::fs::canonicalize(a)
            .ok()
            .is_some_and(|a| std::fs::canonicalize(b).ok() == Some(a))
    };
    if !same(&data_dir, Path::new(&server_dir)) {
        return Err(DriverError::invalid(
            pg.id(),
            "data_dir",
            format!(
                "is {} in the agent configuration but the server runs on {server_dir}",
                data_dir.display()
            ),
        ));
    }
    let label = format!("bulwark {}", session.started().format("%Y%m%dT%H%M%SZ"));
    let started = blocking(|| start(pg, &label))?;
    tracing::info!(database = pg.id(), lsn = %started.lsn, wal = %started.wal, tablespaces = tablespaces.len(), "base backup started");
    let api = started.api;

    let result = async {
        let tree = TreeReader::new(&data_dir)?.with_filter(Box::new(data_dir_selection));
        let tree = session
            .add_stream(DATA_STREAM, "application/octet-stream", tree)
            .await?;
        warnings.extend(tree.warnings.iter().cloned());
        session
            .add_stream(
                INDEX_STREAM,
                INDEX_MEDIA_TYPE,
                std::io::Cursor::new(tree.index_bytes()),
            )
            .await?;
        for t in &tablespaces {
            let (data, index) = tablespace_streams(&t.oid);
            let tree = TreeReader::new(Path::new(&t.location))?
                .with_filter(Box::new(tablespace_selection));
            let tree = session
                .add_stream(&data, "application/octet-stream", tree)
                .await?;
            warnings.extend(tree.warnings.iter().cloned());
            session
                .add_stream(
                    &index,
                    INDEX_MEDIA_TYPE,
                    std::io::Cursor::new(tree.index_bytes()),
                )
                .await?;
        }
        Ok::<_, DriverError>(())
    }
    .await;
    if let Err(e) = result {
        api.close(); // ends the session, which aborts the backup on the server
        return Err(e);
    }
    let stopped = blocking(|| stop(pg, api))?;
    tracing::info!(database = pg.id(), lsn = %stopped.lsn, wal = %stopped.wal, "base backup stopped; its WAL is archived");
    session
        .add_stream(
            LABEL_STREAM,
            "text/plain",
            std::io::Cursor::new(stopped.label),
        )
        .await?;
    session.set_detail("method", "physical");
    session.set_detail("server_version_num", version);
    session.set_detail("data_dir", data_dir.display().to_string());
    session.set_detail("start_lsn", started.lsn);
    session.set_detail("start_wal", started.wal);
    session.set_detail("stop_lsn", stopped.lsn);
    session.set_detail("stop_wal", stopped.wal);
    session.set_detail("timeline", started.timeline);
    session.set_detail(
        "tablespaces",
        serde_json::to_string(&tablespaces).expect("tablespaces serialize"),
    );
    Ok(warnings)
}

fn tablespaces_of(m: &Manifest) -> Result<Vec<Tablespace>> {
    match m.details.get("tablespaces") {
        None => Ok(Vec::new()),
        Some(s) => serde_json::from_str(s).map_err(|e| {
            DriverError::Repository(bulwark_core::Error::Corrupt {
                object: format!("snapshot {}", m.name),
                reason: format!("tablespace list: {e}"),
            })
        }),
    }
}

pub fn refuse_logical_options(pg: &Postgres, req: &RestoreRequest) -> Result<()> {
    if req.has_logical_options() {
        return Err(DriverError::invalid(
            pg.id(),
            "restore options",
            "--into-database, --mode, --schema, --table, --jobs and --work-dir apply to logical dumps; this snapshot is a physical base backup (use --data-dir, --target-*, --start)",
        ));
    }
    req.refuse_sqlite_options(pg.id())?;
    if req.start && req.port.is_none() {
        return Err(DriverError::invalid(
            pg.id(),
            "--start",
            "needs --port P, a port the restored server can listen on beside any running one",
        ));
    }
    Ok(())
}

/// For `latest` with a target time: the newest physical snapshot that ended before it.
fn choose_base<'a>(
    database: &str,
    manifests: &'a [Manifest],
    target: &RecoveryTarget,
) -> Result<&'a Manifest> {
    let physical = manifests
        .iter()
        .filter(|m| m.details.get("method").map(String::as_str) == Some("physical"));
    let chosen = match target {
        RecoveryTarget::Time(t) => physical.filter(|m| m.finished <= *t).next_back(),
        _ => physical.last(),
    };
    chosen.ok_or_else(|| match target {
        RecoveryTarget::Time(t) => DriverError::invalid(
            database,
            "--target-time",
            format!("{t} is before the end of the earliest physical backup; no base backup can recover to it"),
        ),
        _ => DriverError::invalid(database, "snapshot", "there is no physical backup of this database"),
    })
}

/// The newest base backup that can reach `target` (ended before it, for a time).
pub async fn latest_base(
    pg: &Postgres,
    repo: &Repository,
    target: &RecoveryTarget,
) -> Result<Manifest> {
    let db = pg.id();
    let list = repo.list_snapshots(Some(db)).await?;
    let chosen = choose_base(db, &list.manifests, target)?;
    let until = match target {
        RecoveryTarget::Time(t) => Some(t.with_timezone(&chrono::Utc)),
        _ => None,
    };
    list.refuse_unreadable_newer_than(db, Some(chosen), until)?;
    Ok(chosen.clone())
}

pub async fn restore(
    pg: &Postgres,
    repo: &Repository,
    manifest: &Manifest,
    req: &RestoreRequest,
) -> Result<RestoreReport> {
    refuse_logical_options(pg, req)?;
    let Some(data_dir) = req.data_dir.clone() else {
        return Err(DriverError::invalid(
            pg.id(),
            "--data-dir",
            "a physical snapshot is restored into a data directory: pass --data-dir DIR (absent or empty)",
        ));
    };
    if let RecoveryTarget::Time(t) = &req.target {
        if *t < manifest.finished {
            return Err(DriverError::invalid(
                pg.id(),
                "--target-time",
                format!(
                    "{t} is before the end of base backup {} ({}); choose an earlier snapshot, or `latest` to pick one",
                    manifest.name, manifest.finished
                ),
            ));
        }
    }
    let data_dir = absolute(&data_dir)?;
    let tablespaces = tablespaces_of(manifest)?;
    let mut relocations = BTreeMap::new();
    for t in &tablespaces {
        let dest = req
            .tablespace_map
            .iter()
            .find(|(k, _)| *k == t.oid || *k == t.name)
            .map(|(_, d)| d.clone())
            .unwrap_or_else(|| {
                let mut p = data_dir.clone().into_os_string();
                p.push(format!("-tblspc-{}", t.oid));
                PathBuf::from(p)
            });
        relocations.insert(t.oid.clone(), absolute(&dest)?);
    }

    let progress = req.progress.clone();
    let summary = restore_tree_streams(
        repo,
        manifest,
        (DATA_STREAM, INDEX_STREAM),
        &data_dir,
        &[],
        progress.clone(),
    )
    .await?;
    let mut bytes = summary.bytes;
    let result = async {
        for t in &tablespaces {
            let dest = &relocations[&t.oid];
            let (data, index) = tablespace_streams(&t.oid);
            let s =
                restore_tree_streams(repo, manifest, (&data, &index), dest, &[], progress.clone())
                    .await?;
            bytes += s.bytes;
            let link = data_dir.join("pg_tblspc").join(&t.oid);
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(dest, &link).map_err(|e| {
                DriverError::io(
                    format!("linking {} to {}", link.display(), dest.display()),
                    e,
                )
            })?;
        }
        let label = repo
            .restore_stream(manifest, LABEL_STREAM, Vec::new(), progress.clone())
            .await?;
        std::fs::write(data_dir.join("backup_label"), label).map_err(|e| {
            DriverError::io(
                format!("writing backup_label into {}", data_dir.display()),
                e,
            )
        })?;
        recovery::configure(pg, manifest, &data_dir, req)?;
        // One syncfs per file system instead of an fsync per file: the restored cluster is
        // durable before anything starts it.
        for dir in std::iter::once(&data_dir).chain(relocations.values()) {
            sync_filesystem(dir)?;
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&data_dir);
        for dest in relocations.values() {
            let _ = std::fs::remove_dir_all(dest);
        }
        return Err(e);
    }

    let mut lines = vec![format!(
        "restored base backup {} ({} files, {} bytes) into {}",
        manifest.name,
        summary.files,
        bytes,
        data_dir.display()
    )];
    for (oid, dest) in &relocations {
        lines.push(format!("tablespace {oid} restored into {}", dest.display()));
    }
    let mut out = json!({
        "snapshot": manifest.name,
        "method": "physical",
        "data_dir": data_dir,
        "tablespaces": relocations,
        "target": recovery::describe_target(&req.target),
        "started": false,
    });
    if req.start {
        let port = req.port.expect("checked: --start needs --port");
        let reached = blocking(|| recovery::start_and_wait(pg, &data_dir, port))?;
        lines.push(format!(
            "server started on port {port}, recovered and promoted: {}",
            reached.describe()
        ));
        out["started"] = json!(true);
        out["port"] = json!(port);
        out["reached"] = serde_json::to_value(&reached).expect("serializes");
    } else {
        lines.push(format!(
            "start it with: pg_ctl -D {} start   (recovery runs to {}, then promotes)",
            data_dir.display(),
            recovery::describe_target(&req.target)
        ));
    }
    Ok(RestoreReport { lines, json: out })
}

fn sync_filesystem(dir: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(dir)
        .map_err(|e| DriverError::io(format!("opening {}", dir.display()), e))?;
    // SAFETY: syncfs takes a file descriptor we own and touches no memory of ours.
    if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
        return Err(DriverError::io(
            format!("syncing the file system of {}", dir.display()),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

fn absolute(p: &Path) -> Result<PathBuf> {
    if p.is_absolute() {
        Ok(p.to_path_buf())
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .map_err(|e| DriverError::io("reading the current directory", e))
    }
}

//! Restore drills: a snapshot put back into a scratch cluster that only this agent can reach,
//! checked with PostgreSQL's own tools, then stopped.
//!
//! The scratch server listens on no TCP address at all, only on a Unix socket inside the
//! drill's own directory, with `trust` for local connections: nothing on the host can reach
//! it, no port can collide with a real server (every drill may use 5432), and no credentials of
//! the original are needed — the restoring host may hold none. A physical base is recovered
//! through the normal restore path (archived WAL up to the drill's point) with those settings
//! added; a dump goes into a fresh `initdb` cluster without owners or privileges, since the
//! original's roles do not exist there.

use std::path::{Path, PathBuf};

use bulwark_core::manifest::Manifest;
use bulwark_core::repo::Repository;

use super::{blocking, logical, physical, process, recovery, Postgres};
use crate::config::{Connection, DatabaseConfig, DatabaseType};
use crate::drivers::{
    DrillFindings, DrillRequest, DriverError, RestoreMode, RestoreRequest, Result,
};

/// The scratch server's port: only the name of its socket file, in a directory of its own.
const SCRATCH_PORT: u16 = 5432;

pub async fn drill(
    pg: &Postgres,
    repo: &Repository,
    manifest: &Manifest,
    req: &DrillRequest,
) -> Result<DrillFindings> {
    let data = req.scratch.join("data");
    let physical = super::manifest_method(manifest) == crate::config::BackupMethod::Physical;
    let user = scratch_user(pg);
    let started = match physical {
        true => recover_base(pg, repo, manifest, req, &data).await,
        false => restore_dump(pg, repo, manifest, req, &data, &user).await,
    };
    let findings = match started {
        Ok((reached, dbname)) => {
            let scratch = scratch_server(pg, &req.scratch, &user, &dbname);
            blocking(|| check(&scratch, req, &dbname, reached))
        }
        Err(e) => Err(e),
    };
    // Stopped whatever happened; the caller removes the directory.
    if data.join("postmaster.pid").exists() {
        if let Err(e) = blocking(|| stop(pg, &data)) {
            tracing::warn!(database = pg.id(), error = %e, "stopping the drill's scratch server failed");
        }
    }
    findings
}

/// The settings that keep the scratch server private: a socket in the drill's directory and
/// no TCP listener, trust for local connections only.
fn scratch_settings(scratch: &Path) -> Result<Vec<(String, String)>> {
    let hba = scratch.join("pg_hba.conf");
    std::fs::write(&hba, "local all all trust\n")
        .map_err(|e| DriverError::io(format!("writing {}", hba.display()), e))?;
    Ok(vec![
        ("listen_addresses".into(), String::new()),
        (
            "unix_socket_directories".into(),
            scratch.to_string_lossy().into_owned(),
        ),
        ("hba_file".into(), hba.to_string_lossy().into_owned()),
        ("archive_mode".into(), "off".into()),
        // A drill copy need not survive a crash: it is thrown away anyway.
        ("fsync".into(), "off".into()),
        ("synchronous_commit".into(), "off".into()),
    ])
}

/// Recovers a physical base into `data` up to the drill's point; returns where it stopped
/// and the database the checks run in.
async fn recover_base(
    pg: &Postgres,
    repo: &Repository,
    manifest: &Manifest,
    req: &DrillRequest,
    data: &Path,
) -> Result<(Option<serde_json::Value>, String)> {
    let restore = RestoreRequest {
        data_dir: Some(data.to_path_buf()),
        port: Some(SCRATCH_PORT),
        start: true,
        server_settings: scratch_settings(&req.scratch)?,
        ..req.restore.clone()
    };
    let report = physical::restore(pg, repo, manifest, &restore).await?;
    let dbname = pg
        .db
        .connection
        .dbname
        .clone()
        .unwrap_or_else(|| "postgres".into());
    Ok((report.json.get("reached").cloned(), dbname))
}

/// Restores a dump into a new scratch cluster in `data`.
async fn restore_dump(
    pg: &Postgres,
    repo: &Repository,
    manifest: &Manifest,
    req: &DrillRequest,
    data: &Path,
    user: &str,
) -> Result<(Option<serde_json::Value>, String)> {
    blocking(|| init_and_start(pg, &req.scratch, data, user))?;
    // The original's name, unless it is the maintenance database the scratch cluster has.
    let dbname = match manifest.details.get("dbname").map(String::as_str) {
        Some(name) if name != "postgres" => name.to_string(),
        _ => "bulwark_drill".to_string(),
    };
    let scratch = scratch_server(pg, &req.scratch, user, &dbname);
    let restore = RestoreRequest {
        into_database: Some(dbname.clone()),
        mode: Some(RestoreMode::Full),
        work_dir: Some(req.scratch.clone()),
        skip_ownership: true,
        progress: req.restore.progress.clone(),
        ..RestoreRequest::default()
    };
    logical::restore(&scratch, repo, manifest, &restore).await?;
    Ok((None, dbname))
}

fn init_and_start(pg: &Postgres, scratch: &Path, data: &Path, user: &str) -> Result<()> {
    let mut initdb = pg.tool("initdb")?;
    initdb
        .arg("-D")
        .arg(data)
        .args([
            "--auth=trust",
            "--no-sync",
            "--no-instructions",
            "-E",
            "UTF8",
        ])
        .arg(format!("--username={user}"))
        .env("LC_ALL", "C");
    process::output(pg.id(), "initdb", &mut initdb)?;
    let conf = data.join("postgresql.auto.conf");
    let mut text = String::from("\n# bulwark-agent restore drill: a private scratch server\n");
    for (k, v) in scratch_settings(scratch)? {
        text.push_str(&format!("{k} = '{}'\n", v.replace('\'', "''")));
    }
    text.push_str(&format!("port = {SCRATCH_PORT}\n"));
    std::fs::OpenOptions::new()
        .append(true)
        .open(&conf)
        .and_then(|mut f| std::io::Write::write_all(&mut f, text.as_bytes()))
        .map_err(|e| DriverError::io(format!("writing {}", conf.display()), e))?;
    let log = scratch.join("server.log");
    let mut ctl = pg.server_tool("pg_ctl", data)?;
    ctl.arg("-D")
        .arg(data)
        .arg("-l")
        .arg(&log)
        .args(["-w", "-t", "120", "start"]);
    let mut ctl = recovery::as_owner(data, ctl);
    process::output(pg.id(), "pg_ctl", &mut ctl).map_err(|e| DriverError::Recovery {
        database: pg.id().to_string(),
        reason: format!(
            "the drill's scratch server did not start ({e}): {}",
            std::fs::read_to_string(&log).unwrap_or_default().trim()
        ),
    })?;
    Ok(())
}

/// The checks, run in `dbname` of the scratch server.
fn check(
    scratch: &Postgres,
    req: &DrillRequest,
    dbname: &str,
    reached: Option<serde_json::Value>,
) -> Result<DrillFindings> {
    let integrity = req.integrity.then(|| amcheck(scratch));
    let row_counts = match req.row_counts {
        true => {
            let out = scratch.psql(Some(dbname), &[], logical::ROW_COUNTS_SQL)?;
            Some(logical::parse_counts(out.lines().map(str::to_string)))
        }
        false => None,
    };
    let answers = req
        .queries
        .iter()
        .map(|q| {
            scratch
                .psql(
                    Some(dbname),
                    &[],
                    &format!("{}\n;", q.trim().trim_end_matches(';')),
                )
                .map(|out| out.trim_end_matches('\n').to_string())
                .map_err(|e| e.to_string())
        })
        .collect();
    Ok(DrillFindings {
        integrity,
        row_counts,
        answers,
        reached,
        ready_at: std::time::Instant::now(),
    })
}

/// `pg_amcheck` over every database: heap pages and B-tree indexes, PostgreSQL's own
/// verification (the amcheck extension is installed in the scratch copy where missing).
fn amcheck(scratch: &Postgres) -> std::result::Result<String, String> {
    let mut cmd = match scratch.tool("pg_amcheck") {
        Ok(c) => c,
        Err(e) => return Err(e.to_string()),
    };
    // `-d` is a database *pattern* to pg_amcheck, not a connection string: the scratch
    // server's socket and role go in the environment, which every connection it makes (the
    // maintenance database's and each checked database's) reads.
    let c = &scratch.db.connection;
    if let Some(host) = &c.host {
        cmd.env("PGHOST", host);
    }
    if let Some(port) = c.port {
        cmd.env("PGPORT", port.to_string());
    }
    if let Some(user) = &c.user {
        cmd.env("PGUSER", user);
    }
    cmd.args([
        "--maintenance-db",
        "postgres",
        "--all",
        "--install-missing",
        "--heapallindexed",
    ]);
    match process::output(scratch.id(), "pg_amcheck", &mut cmd) {
        Ok(_) => Ok("pg_amcheck --all --heapallindexed: no corruption found".into()),
        Err(DriverError::Tool { stderr, status, .. }) => {
            let found: Vec<&str> = stderr.lines().take(10).collect();
            Err(format!("pg_amcheck ({status}): {}", found.join("; ")))
        }
        Err(e) => Err(e.to_string()),
    }
}

fn stop(pg: &Postgres, data: &Path) -> Result<()> {
    let mut ctl = pg.server_tool("pg_ctl", data)?;
    ctl.arg("-D")
        .arg(data)
        .args(["-m", "immediate", "-w", "stop"]);
    let mut ctl = recovery::as_owner(data, ctl);
    process::output(pg.id(), "pg_ctl", &mut ctl).map(|_| ())
}

/// A driver for the scratch server: its socket, a role of the restored cluster.
fn scratch_server(pg: &Postgres, scratch: &Path, user: &str, dbname: &str) -> Postgres {
    Postgres::new(DatabaseConfig {
        id: pg.db.id.clone(),
        kind: DatabaseType::Postgresql,
        method: None,
        data_dir: Some(PathBuf::from(scratch).join("data")),
        path: None,
        connection: Connection {
            host: Some(scratch.to_string_lossy().into_owned()),
            port: Some(SCRATCH_PORT),
            user: Some(user.to_string()),
            dbname: Some(dbname.to_string()),
            ..Connection::default()
        },
        bin_dir: pg.db.bin_dir.clone(),
    })
}

/// The role the checks connect as: the configured one (a physical copy has the original's
/// roles), else the name of the user this agent runs as (initdb's default superuser).
fn scratch_user(pg: &Postgres) -> String {
    if let Some(u) = &pg.db.connection.user {
        return u.clone();
    }
    // SAFETY: getpwuid returns a pointer into static storage or null; the name is copied out
    // at once, and the agent reads no other passwd entry concurrently.
    unsafe {
        let pw = libc::getpwuid(libc::geteuid());
        if !pw.is_null() {
            if let Ok(name) = std::ffi::CStr::from_ptr((*pw).pw_name).to_str() {
                return name.to_string();
            }
        }
    }
    "postgres".into()
}

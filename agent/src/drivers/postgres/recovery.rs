//! Turning a restored base backup into a running server: recovery settings, `pg_ctl start`,
//! waiting for promotion, and reading back where recovery stopped.
//!
//! Settings go into `postgresql.auto.conf` (read last, so they win over the restored
//! `postgresql.conf`); `recovery.signal` makes the server replay archived WAL through
//! `bulwark-agent wal-fetch` up to the target, then promote. A restored copy does not
//! archive into the original database's WAL archive unless it replaces the original
//! (same data directory), so two servers never write one archive.

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use bulwark_core::manifest::Manifest;
use serde::Serialize;

use super::{process, Postgres};
use crate::drivers::{DriverError, RecoveryTarget, RestoreRequest, Result};

pub const RECOVERY_LOG: &str = "bulwark-recovery.log";
/// Marker that `wal-fetch` prints when the archive has a hole, looked for in the server log.
pub const GAP_MARKER: &str = "bulwark wal-fetch: missing WAL";

pub fn describe_target(t: &RecoveryTarget) -> String {
    match t {
        RecoveryTarget::Latest => "the end of the archived WAL".into(),
        RecoveryTarget::Time(t) => format!("time {}", t.to_rfc3339()),
        RecoveryTarget::Lsn(l) => format!("LSN {l}"),
        RecoveryTarget::Name(n) => format!("restore point {n:?}"),
    }
}

/// One word of restore_command: single-quoted for `sh` unless plainly safe, and `%` doubled
/// (PostgreSQL expands `%f`, `%p`).
fn shell_word(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-:=@+,".contains(c));
    let word = if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    };
    word.replace('%', "%%")
}

/// A value for postgresql.conf: single-quoted, quotes doubled.
fn conf_value(v: &str) -> String {
    format!("'{}'", v.replace('\'', "''"))
}

pub fn configure(
    pg: &Postgres,
    manifest: &Manifest,
    data_dir: &Path,
    req: &RestoreRequest,
) -> Result<()> {
    let exe = std::env::current_exe()
        .map_err(|e| DriverError::io("finding the bulwark-agent executable", e))?;
    let config = std::fs::canonicalize(&req.config_path).unwrap_or(req.config_path.clone());
    let repository: String = req
        .repository_args
        .iter()
        .map(|a| format!(" {}", shell_word(a)))
        .collect();
    let fetch: String = req
        .fetch_args
        .iter()
        .map(|a| format!(" {}", shell_word(a)))
        .collect();
    let restore_command = format!(
        "\"{}\" --config \"{}\"{repository} wal-fetch{fetch} --database {} \"%f\" \"%p\"",
        exe.display(),
        config.display(),
        pg.id()
    );
    let mut settings = vec![
        ("restore_command", restore_command),
        ("recovery_target_timeline", "latest".to_string()),
        ("recovery_target_action", "promote".to_string()),
    ];
    match &req.target {
        RecoveryTarget::Latest => {}
        RecoveryTarget::Time(t) => settings.push(("recovery_target_time", t.to_rfc3339())),
        RecoveryTarget::Lsn(l) => settings.push(("recovery_target_lsn", l.clone())),
        RecoveryTarget::Name(n) => settings.push(("recovery_target_name", n.clone())),
    }
    if let Some(port) = req.port {
        settings.push(("port", port.to_string()));
    }
    let replaces_original = pg
        .db
        .data_dir
        .as_deref()
        .and_then(|d| std::fs::canonicalize(d).ok())
        .is_some_and(|d| d == data_dir);
    if !replaces_original {
        settings.push(("archive_mode", "off".to_string()));
    }
    let mut settings: Vec<(&str, String)> = settings;
    for (k, v) in &req.server_settings {
        settings.push((k.as_str(), v.clone()));
    }
    // A cluster laid out by pg_createcluster keeps postgresql.conf outside the data
    // directory, so its base backup has none; the server needs one to start.
    let conf = data_dir.join("postgresql.conf");
    if !conf.exists() {
        std::fs::write(
            &conf,
            b"# written by bulwark-agent restore: the original kept its configuration elsewhere\n",
        )
        .map_err(|e| DriverError::io(format!("writing {}", conf.display()), e))?;
        chown_like_parent_entry(data_dir, &[&conf]);
    }
    let path = data_dir.join("postgresql.auto.conf");
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&path)
        .map_err(|e| DriverError::io(format!("opening {}", path.display()), e))?;
    let mut text = format!(
        "\n# Added by bulwark-agent restore of {} at {}\n",
        manifest.name,
        chrono::Utc::now().to_rfc3339()
    );
    for (k, v) in settings {
        text.push_str(&format!("{k} = {}\n", conf_value(&v)));
    }
    file.write_all(text.as_bytes())
        .and_then(|_| file.sync_all())
        .map_err(|e| DriverError::io(format!("writing {}", path.display()), e))?;
    let signal = data_dir.join("recovery.signal");
    std::fs::write(&signal, b"")
        .map_err(|e| DriverError::io(format!("writing {}", signal.display()), e))?;
    chown_like_parent_entry(data_dir, &[&path, &signal]);
    Ok(())
}

/// Files we add get the data directory's owner (a root agent restoring for `postgres`).
fn chown_like_parent_entry(data_dir: &Path, files: &[&Path]) {
    use std::os::unix::fs::MetadataExt;
    if let Ok(meta) = std::fs::metadata(data_dir) {
        for f in files {
            let _ = std::os::unix::fs::chown(f, Some(meta.uid()), Some(meta.gid()));
        }
        let label = data_dir.join("backup_label");
        let _ = std::os::unix::fs::chown(label, Some(meta.uid()), Some(meta.gid()));
    }
}

/// A command run as the data directory's owner: PostgreSQL refuses to run as root.
pub(super) fn as_owner(data_dir: &Path, mut cmd: Command) -> Command {
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::process::CommandExt;
    let owner = std::fs::metadata(data_dir).map(|m| (m.uid(), m.gid())).ok();
    let is_root = std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false);
    if let (true, Some((uid, gid))) = (is_root, owner) {
        if uid != 0 {
            cmd.uid(uid).gid(gid);
        }
    }
    cmd
}

/// Where recovery ended, read from the server and its log.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Reached {
    /// The server's "recovery stopping …" line, or the end of the archive.
    pub stop_reason: String,
    pub last_transaction_time: Option<String>,
    pub redo_done_at: Option<String>,
    pub new_timeline: Option<String>,
    pub current_lsn: String,
    pub log: String,
}

impl Reached {
    pub fn describe(&self) -> String {
        let mut s = self.stop_reason.clone();
        if let Some(t) = &self.last_transaction_time {
            s.push_str(&format!("; last transaction at {t}"));
        }
        if let Some(tl) = &self.new_timeline {
            s.push_str(&format!("; now on timeline {tl}"));
        }
        s.push_str(&format!("; WAL position {}", self.current_lsn));
        s
    }
}

pub fn start_and_wait(pg: &Postgres, data_dir: &Path, port: u16) -> Result<Reached> {
    let log = data_dir.join(RECOVERY_LOG);
    let mut ctl = pg.server_tool("pg_ctl", data_dir)?;
    ctl.arg("-D")
        .arg(data_dir)
        .arg("-l")
        .arg(&log)
        .args(["-w", "-t", "86400", "start"]);
    let mut ctl = as_owner(data_dir, ctl);
    tracing::info!(database = pg.id(), data_dir = %data_dir.display(), port, "starting the restored server for recovery");
    let started = process::output(pg.id(), "pg_ctl", &mut ctl);
    let failed = |why: String| {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        DriverError::Recovery {
            database: pg.id().to_string(),
            reason: format!("{why}{}", explain_log(&text)),
        }
    };
    if let Err(e) = started {
        return Err(failed(format!("the server did not start ({e})")));
    }
    // Recovery is over when the control file says the cluster is in production (promoted),
    // or the server stops (failed). Read from the data directory, not through SQL: the
    // restoring host may hold no credentials for the restored cluster (the original's host is
    // gone, its password file with it), and needs none to start and promote it.
    let begun = Instant::now();
    let control = loop {
        match control_data(pg, data_dir) {
            Ok(c)
                if c.get("Database cluster state").map(String::as_str) == Some("in production") =>
            {
                break c
            }
            Ok(_) => {}
            Err(e) if begun.elapsed() > Duration::from_secs(30) => {
                return Err(failed(format!(
                    "cannot read the recovering cluster's state: {e}"
                )))
            }
            Err(_) => {}
        }
        if !data_dir.join("postmaster.pid").exists() {
            return Err(failed("the server stopped during recovery".into()));
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    let lsn = control
        .get("Latest checkpoint location")
        .cloned()
        .unwrap_or_default();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    Ok(reached_from_log(&text, lsn))
}

/// `pg_controldata`'s report of the cluster in `data_dir`, as name → value.
pub(super) fn control_data(
    pg: &Postgres,
    data_dir: &Path,
) -> Result<std::collections::BTreeMap<String, String>> {
    let mut cmd = pg.server_tool("pg_controldata", data_dir)?;
    cmd.arg("-D").arg(data_dir).env("LC_ALL", "C");
    let mut cmd = as_owner(data_dir, cmd);
    let out = process::output(pg.id(), "pg_controldata", &mut cmd)?;
    Ok(parse_control_data(&out))
}

fn parse_control_data(text: &str) -> std::collections::BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn after<'a>(line: &'a str, marker: &str) -> Option<&'a str> {
    line.find(marker).map(|i| line[i + marker.len()..].trim())
}

fn reached_from_log(log: &str, current_lsn: String) -> Reached {
    let mut r = Reached {
        stop_reason: "reached the end of the archived WAL".into(),
        current_lsn,
        ..Reached::default()
    };
    for line in log.lines() {
        if let Some(rest) = after(line, "LOG:  ") {
            if rest.starts_with("recovery stopping") {
                r.stop_reason = rest.to_string();
            } else if let Some(t) = after(rest, "last completed transaction was at log time") {
                r.last_transaction_time = Some(t.to_string());
            } else if let Some(t) = after(rest, "redo done at") {
                r.redo_done_at = t.split_whitespace().next().map(str::to_string);
            } else if let Some(t) = after(rest, "selected new timeline ID:") {
                r.new_timeline = Some(t.to_string());
            }
        }
    }
    r.log = log
        .lines()
        .filter(|l| l.contains("recovery") || l.contains("redo") || l.contains("timeline"))
        .take(40)
        .collect::<Vec<_>>()
        .join("\n");
    r
}

/// The lines of a server log that say why recovery failed, most telling first.
fn explain_log(log: &str) -> String {
    let gap: Vec<&str> = log.lines().filter(|l| l.contains(GAP_MARKER)).collect();
    let fatal: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("FATAL") || l.contains("PANIC"))
        .collect();
    let mut out = String::new();
    for l in gap.iter().take(3).chain(fatal.iter().take(5)) {
        out.push_str("\n  ");
        out.push_str(l.trim());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reached_point_is_read_from_the_server_log() {
        let log = "2026-11-23 10:00:00 UTC [1] LOG:  starting point-in-time recovery to 2026-11-23 09:59:00+00\n\
2026-11-23 10:00:01 UTC [1] LOG:  recovery stopping before commit of transaction 745, time 2026-11-23 09:59:01.5+00\n\
2026-11-23 10:00:01 UTC [1] LOG:  redo done at 0/3000100 system usage: CPU: user: 0.00 s\n\
2026-11-23 10:00:01 UTC [1] LOG:  last completed transaction was at log time 2026-11-23 09:58:59.1+00\n\
2026-11-23 10:00:01 UTC [1] LOG:  selected new timeline ID: 2\n";
        let r = reached_from_log(log, "0/3000200".into());
        let control = parse_control_data(
            "pg_control version number:            1300\nDatabase cluster state:               in production\nLatest checkpoint location:           0/3000148\n",
        );
        assert_eq!(control["Database cluster state"], "in production");
        assert_eq!(control["Latest checkpoint location"], "0/3000148");
        assert!(r
            .stop_reason
            .starts_with("recovery stopping before commit of transaction 745"));
        assert_eq!(
            r.last_transaction_time.as_deref(),
            Some("2026-11-23 09:58:59.1+00")
        );
        assert_eq!(r.redo_done_at.as_deref(), Some("0/3000100"));
        assert_eq!(r.new_timeline.as_deref(), Some("2"));
        assert!(r.describe().contains("timeline 2"));
        assert_eq!(shell_word("/srv/repo-1"), "/srv/repo-1");
        assert_eq!(
            shell_word("nfs://h/x?nfsport=1&mountport=2"),
            "'nfs://h/x?nfsport=1&mountport=2'"
        );
        assert_eq!(shell_word("/a b/it's 5%"), "'/a b/it'\\''s 5%%'");
        let failed = "x LOG:  y\nbulwark wal-fetch: missing WAL 000000010000000000000004 (database orders): later segments exist\nz FATAL:  could not restore file\n";
        let why = explain_log(failed);
        assert!(
            why.contains("000000010000000000000004") && why.contains("FATAL"),
            "{why}"
        );
    }

    #[test]
    fn conf_values_are_quoted() {
        assert_eq!(conf_value("it's"), "'it''s'");
    }
}

//! SQLite: a consistent copy through SQLite's online backup API while writers keep writing,
//! and a restore that replaces the database file atomically.
//!
//! The backup copies all pages in one step, inside one read transaction, so the copy is a
//! single point in time; in WAL mode writers carry on meanwhile, in rollback-journal mode they
//! wait (up to their busy timeout) for the copy to finish. The copy goes to a private
//! temporary file because the backup API writes into a database, not a stream. A restore
//! writes the new file beside the old one, checks it with `PRAGMA integrity_check`, and
//! renames it into place, so readers see the old database or the new one, never a mix;
//! stale `-wal`/`-shm` files of the old database are removed so they cannot be replayed onto
//! the new one.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bulwark_core::manifest::{Manifest, Source};
use bulwark_core::repo::backup::BackupSession;
use bulwark_core::repo::Repository;
use futures::future::BoxFuture;
use futures::FutureExt;
use rusqlite::{Connection, OpenFlags};
use serde_json::json;

use super::{Discovery, Driver, DriverError, Replacement, RestoreReport, RestoreRequest, Result};
use crate::config::{BackupMethod, DatabaseConfig, DatabaseType};

/// The file is the snapshot's `data` stream, so `restore --output` gives it back as it is.
pub const DB_STREAM: &str = bulwark_core::archive::DATA_STREAM;
pub const DB_MEDIA_TYPE: &str = "application/vnd.sqlite3";

pub struct Sqlite {
    db: DatabaseConfig,
}

impl Sqlite {
    pub fn new(db: DatabaseConfig) -> Self {
        Sqlite { db }
    }

    fn path(&self) -> &Path {
        self.db
            .path
            .as_deref()
            .expect("validated: sqlite databases have a path")
    }

    fn sql_error(&self, what: &str, e: rusqlite::Error) -> DriverError {
        DriverError::invalid(&self.db.id, what.to_string(), e.to_string())
    }

    fn open_source(&self) -> Result<Connection> {
        let path = self.path();
        if !path.is_file() {
            return Err(DriverError::invalid(
                &self.db.id,
                "path",
                format!("{} does not exist or is not a file", path.display()),
            ));
        }
        let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| self.sql_error(&format!("opening {}", path.display()), e))?;
        conn.busy_timeout(Duration::from_secs(30))
            .map_err(|e| self.sql_error("setting the busy timeout", e))?;
        Ok(conn)
    }

    /// Copies the database into `dest` with the online backup API.
    fn copy_to(&self, dest: &Path) -> Result<u64> {
        let src = self.open_source()?;
        let mut dst = Connection::open(dest)
            .map_err(|e| self.sql_error(&format!("creating {}", dest.display()), e))?;
        {
            use rusqlite::backup::StepResult;
            let backup = rusqlite::backup::Backup::new(&src, &mut dst)
                .map_err(|e| self.sql_error("starting the online backup", e))?;
            // All pages in one step (-1): one read transaction, so one point in time. Smaller
            // steps restart whenever a writer commits and may never finish under load.
            let deadline = std::time::Instant::now() + Duration::from_secs(600);
            loop {
                let step = backup.step(-1).map_err(|e| {
                    self.sql_error(&format!("copying {}", self.path().display()), e)
                })?;
                match step {
                    StepResult::Done => break,
                    StepResult::More => {}
                    StepResult::Busy | StepResult::Locked
                        if std::time::Instant::now() < deadline =>
                    {
                        std::thread::sleep(Duration::from_millis(50))
                    }
                    _ => {
                        return Err(DriverError::invalid(
                            &self.db.id,
                            "online backup",
                            format!(
                                "{} stayed locked by writers for 10 minutes",
                                self.path().display()
                            ),
                        ))
                    }
                }
            }
        }
        drop(dst);
        std::fs::metadata(dest)
            .map(|m| m.len())
            .map_err(|e| DriverError::io(format!("reading {}", dest.display()), e))
    }

    fn refuse_postgres_options(&self, req: &RestoreRequest) -> Result<()> {
        let pg = req.has_logical_options() || req.has_physical_options();
        if pg {
            return Err(DriverError::invalid(
                &self.db.id,
                "restore options",
                "only --to PATH (and --confirm to replace the configured file) apply to SQLite",
            ));
        }
        Ok(())
    }

    fn target(&self, req: &RestoreRequest) -> PathBuf {
        req.to_path
            .clone()
            .unwrap_or_else(|| self.path().to_path_buf())
    }
}

impl Driver for Sqlite {
    fn database_id(&self) -> &str {
        &self.db.id
    }

    fn database_type(&self) -> DatabaseType {
        DatabaseType::Sqlite
    }

    fn source(&self, _method: Option<BackupMethod>) -> Source {
        Source::Stream
    }

    fn discover(&self) -> BoxFuture<'_, Result<Discovery>> {
        async move {
            let conn = self.open_source()?;
            let tables: Vec<String> = conn
                .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")
                .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
                .map_err(|e| self.sql_error("listing tables", e))?;
            Ok(Discovery {
                database_id: self.db.id.clone(),
                database_type: "sqlite",
                server_version: rusqlite::version().to_string(),
                contents: tables,
                size_bytes: std::fs::metadata(self.path()).ok().map(|m| m.len()),
            })
        }
        .boxed()
    }

    fn check(&self) -> BoxFuture<'_, Result<()>> {
        async move {
            let conn = self.open_source()?;
            conn.query_row("SELECT count(*) FROM sqlite_schema", [], |r| {
                r.get::<_, i64>(0)
            })
            .map_err(|e| self.sql_error(&format!("reading {}", self.path().display()), e))?;
            Ok(())
        }
        .boxed()
    }

    fn backup<'a>(
        &'a self,
        session: &'a mut BackupSession,
        method: Option<BackupMethod>,
        opts: super::BackupOptions,
    ) -> BoxFuture<'a, Result<Vec<String>>> {
        async move {
            if method == Some(BackupMethod::Logical) {
                return Err(DriverError::invalid(
                    &self.db.id,
                    "method logical",
                    "SQLite is backed up by an online copy of its file (method physical, the default); there is no logical dump",
                ));
            }
            let dir = tempfile::tempdir()
                .map_err(|e| DriverError::io("creating a temporary directory", e))?;
            let copy = dir.path().join("copy.db");
            let size = tokio::task::block_in_place(|| self.copy_to(&copy))?;
            let file = std::fs::File::open(&copy)
                .map_err(|e| DriverError::io(format!("opening {}", copy.display()), e))?;
            session.add_stream(DB_STREAM, DB_MEDIA_TYPE, file).await?;
            session.set_detail("method", "online-backup");
            session.set_detail("sqlite_version", rusqlite::version());
            session.set_detail("path", self.path().display().to_string());
            session.set_detail("size", size.to_string());
            if opts.count_rows {
                // Counted in the copy: exactly what the snapshot holds.
                let counts = row_counts(&copy)
                    .map_err(|e| self.sql_error("counting the rows of the copy", e))?;
                session.set_detail(
                    super::ROW_COUNTS_DETAIL,
                    serde_json::to_string(&counts).expect("serialisable"),
                );
            }
            Ok(Vec::new())
        }
        .boxed()
    }

    fn replaces_existing<'a>(
        &'a self,
        _manifest: &'a Manifest,
        req: &'a RestoreRequest,
    ) -> BoxFuture<'a, Result<bool>> {
        async move {
            self.refuse_postgres_options(req)?;
            Ok(req.to_path.is_none() && self.path().exists())
        }
        .boxed()
    }

    fn restore<'a>(
        &'a self,
        repo: &'a Repository,
        manifest: &'a Manifest,
        req: &'a RestoreRequest,
    ) -> BoxFuture<'a, Result<RestoreReport>> {
        async move {
            self.refuse_postgres_options(req)?;
            let target = self.target(req);
            if req.to_path.is_some() && target.symlink_metadata().is_ok() {
                return Err(DriverError::invalid(
                    &self.db.id,
                    "--to",
                    format!("{} already exists; choose a new path", target.display()),
                ));
            }
            let dir = target
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
                .to_path_buf();
            let tmp = tempfile::Builder::new()
                .prefix(".bulwark-partial-")
                .tempfile_in(&dir)
                .map_err(|e| DriverError::io(format!("creating a temporary file in {}", dir.display()), e))?;
            let file = tmp
                .reopen()
                .map_err(|e| DriverError::io("opening the temporary file", e))?;
            let file = repo
                .restore_stream(manifest, DB_STREAM, file, req.progress.clone())
                .await?;
            let bytes = tokio::task::block_in_place(|| -> Result<u64> {
                file.sync_all()
                    .map_err(|e| DriverError::io("syncing the restored database", e))?;
                let conn = Connection::open_with_flags(tmp.path(), OpenFlags::SQLITE_OPEN_READ_ONLY)
                    .map_err(|e| self.sql_error("opening the restored copy", e))?;
                let check: String = conn
                    .query_row("PRAGMA integrity_check", [], |r| r.get(0))
                    .map_err(|e| self.sql_error("checking the restored copy", e))?;
                if check != "ok" {
                    return Err(DriverError::invalid(
                        &self.db.id,
                        format!("snapshot {}", manifest.name),
                        format!("restored file fails PRAGMA integrity_check: {check}"),
                    ));
                }
                drop(conn);
                if let Ok(meta) = std::fs::metadata(&target) {
                    let _ = std::fs::set_permissions(tmp.path(), meta.permissions());
                }
                Ok(file.metadata().map(|m| m.len()).unwrap_or(0))
            })?;
            tmp.persist(&target)
                .map_err(|e| DriverError::io(format!("moving the restored database onto {}", target.display()), e.error))?;
            for suffix in ["-wal", "-shm", "-journal"] {
                let mut stale = target.clone().into_os_string();
                stale.push(suffix);
                let _ = std::fs::remove_file(PathBuf::from(stale));
            }
            if let Ok(d) = std::fs::File::open(&dir) {
                let _ = d.sync_all();
            }
            Ok(RestoreReport {
                lines: vec![format!(
                    "restored {} ({bytes} bytes, integrity check ok) onto {}",
                    manifest.name,
                    target.display()
                )],
                json: json!({"snapshot": manifest.name, "path": target, "bytes": bytes, "integrity_check": "ok"}),
            })
        }
        .boxed()
    }

    fn drill<'a>(
        &'a self,
        repo: &'a Repository,
        manifest: &'a Manifest,
        req: &'a super::DrillRequest,
    ) -> BoxFuture<'a, Result<super::DrillFindings>> {
        async move {
            let copy = req.scratch.join("restored.sqlite");
            let file = std::fs::File::create(&copy)
                .map_err(|e| DriverError::io(format!("creating {}", copy.display()), e))?;
            repo.restore_stream(manifest, DB_STREAM, file, req.restore.progress.clone())
                .await?;
            tokio::task::block_in_place(|| {
                let conn = Connection::open_with_flags(&copy, OpenFlags::SQLITE_OPEN_READ_ONLY)
                    .map_err(|e| self.sql_error("opening the drill's copy", e))?;
                let integrity =
                    req.integrity
                        .then(|| match query_text(&conn, "PRAGMA integrity_check") {
                            Ok(t) if t == "ok" => Ok("PRAGMA integrity_check: ok".to_string()),
                            Ok(t) => Err(format!("PRAGMA integrity_check: {t}")),
                            Err(e) => Err(format!("PRAGMA integrity_check failed: {e}")),
                        });
                let row_counts = match req.row_counts {
                    true => Some(
                        row_counts(&copy)
                            .map_err(|e| self.sql_error("counting the rows of the copy", e))?,
                    ),
                    false => None,
                };
                let answers = req
                    .queries
                    .iter()
                    .map(|q| query_text(&conn, q).map_err(|e| e.to_string()))
                    .collect();
                Ok(super::DrillFindings {
                    integrity,
                    row_counts,
                    answers,
                    reached: None,
                    ready_at: std::time::Instant::now(),
                })
            })
        }
        .boxed()
    }

    fn replacement(&self, _req: &RestoreRequest) -> Replacement {
        Replacement {
            replaced: self.db.id.clone(),
            effect: "the file is replaced",
            beside: "--to PATH",
        }
    }

    fn pre_restore_backup(&self, _req: &RestoreRequest) -> (Box<dyn Driver>, Option<BackupMethod>) {
        (Box::new(Sqlite::new(self.db.clone())), None)
    }
}

/// Every table's exact row count in the SQLite file at `path` (opened read-only).
pub fn row_counts(path: &Path) -> rusqlite::Result<std::collections::BTreeMap<String, u64>> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let names: Vec<String> = conn
        .prepare(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
        )?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut counts = std::collections::BTreeMap::new();
    for name in names {
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        let n: i64 = conn.query_row(&format!("SELECT count(*) FROM {quoted}"), [], |r| r.get(0))?;
        counts.insert(name, n as u64);
    }
    Ok(counts)
}

/// A query's rows, one per line, columns joined by `|` (as `psql -A -t` prints them).
fn query_text(conn: &Connection, sql: &str) -> rusqlite::Result<String> {
    let mut stmt = conn.prepare(sql)?;
    let columns = stmt.column_count();
    let mut rows = stmt.query([])?;
    let mut lines = Vec::new();
    while let Some(row) = rows.next()? {
        let mut fields = Vec::with_capacity(columns);
        for i in 0..columns {
            use rusqlite::types::ValueRef;
            fields.push(match row.get_ref(i)? {
                ValueRef::Null => String::new(),
                ValueRef::Integer(n) => n.to_string(),
                ValueRef::Real(f) => f.to_string(),
                ValueRef::Text(t) | ValueRef::Blob(t) => String::from_utf8_lossy(t).into_owned(),
            });
        }
        lines.push(fields.join("|"));
    }
    Ok(lines.join("\n"))
}

//! Database drivers: one module per engine, all behind [`Driver`].
//!
//! The CLI and the daemon never branch on the engine: they open a backup session, hand it to
//! the driver, and commit or abort; for a restore the driver also says which snapshot `latest`
//! means, what a replacing restore destroys and how the pre-restore snapshot keeps it, so that
//! a new engine is a new module here and nothing else. A driver knows how to get a consistent copy out of its engine and how to
//! put one back, and reports every failure as a [`DriverError`] that names the database and
//! what the engine said.

pub mod postgres;
mod process;
pub mod sqlite;

use std::path::PathBuf;
use std::sync::Arc;

use bulwark_core::manifest::{Manifest, Source};
use bulwark_core::repo::backup::{BackupSession, Progress};
use bulwark_core::repo::Repository;
use futures::future::BoxFuture;
use futures::FutureExt;

use crate::config::{BackupMethod, DatabaseConfig, DatabaseType};

pub type Result<T, E = DriverError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("database {database}: cannot reach the server: {detail}")]
    Unreachable { database: String, detail: String },
    #[error("database {database}: the server refused the credentials: {detail} (check connection.user and the password file)")]
    Authentication { database: String, detail: String },
    #[error("database {database}: {tool} failed ({status}): {stderr}")]
    Tool {
        database: String,
        tool: String,
        status: String,
        stderr: String,
    },
    #[error("database {database}: {what}: {reason}")]
    Invalid {
        database: String,
        what: String,
        reason: String,
    },
    /// A request that cannot be carried out, in words of its own (exit code 2).
    #[error("{0}")]
    Usage(String),
    #[error("database {database}: recovery failed: {reason}")]
    Recovery { database: String, reason: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Repository(#[from] bulwark_core::Error),
}

impl DriverError {
    pub fn invalid(database: &str, what: impl Into<String>, reason: impl Into<String>) -> Self {
        DriverError::Invalid {
            database: database.to_string(),
            what: what.into(),
            reason: reason.into(),
        }
    }

    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        DriverError::Io {
            what: what.into(),
            source,
        }
    }

    /// True when the caller asked for something that cannot be done (exit code 2).
    pub fn is_usage(&self) -> bool {
        matches!(self, DriverError::Invalid { .. } | DriverError::Usage(_))
    }
}

/// What a backup records beyond the data.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BackupOptions {
    /// Each table's exact row count, from the backup's own point in time, in the manifest's
    /// `row_counts` detail (JSON: table → count) for restore drills to compare against.
    /// Engines whose backup has no single point in time (a physical base backup) skip it.
    pub count_rows: bool,
}

/// The manifest detail that holds [`BackupOptions::count_rows`]' counts.
pub const ROW_COUNTS_DETAIL: &str = "row_counts";

/// What a driver found on the host: shown by `bulwark-agent check` and, later, reported to
/// the control plane at enrolment.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Discovery {
    pub database_id: String,
    pub database_type: &'static str,
    pub server_version: String,
    /// Databases on the server (PostgreSQL) or the file (SQLite).
    pub contents: Vec<String>,
    pub size_bytes: Option<u64>,
}

/// How to restore, as the operator asked. Fields a driver does not use are refused by it
/// when set, so a PostgreSQL-only flag on a SQLite restore is an error, not silently ignored.
#[derive(Debug, Clone, Default)]
pub struct RestoreRequest {
    /// Logical: restore into this database (created if missing) instead of the original.
    pub into_database: Option<String>,
    /// Logical: `full` (drop and recreate) or `merge` (keep what exists).
    pub mode: Option<RestoreMode>,
    pub schemas: Vec<String>,
    pub tables: Vec<String>,
    pub jobs: Option<u32>,
    /// Physical: a new (empty or absent) data directory.
    pub data_dir: Option<PathBuf>,
    pub port: Option<u16>,
    pub start: bool,
    pub target: RecoveryTarget,
    /// `OID=DIR` relocations of tablespaces (physical).
    pub tablespace_map: Vec<(String, PathBuf)>,
    /// SQLite: write the restored file here instead of replacing the original.
    pub to_path: Option<PathBuf>,
    /// The operator confirmed that an existing database may be replaced.
    pub confirm: bool,
    /// Where large temporary files go (a logical dump for parallel pg_restore).
    pub work_dir: Option<PathBuf>,
    /// The agent's config file, for the restore_command written into a restored cluster.
    pub config_path: PathBuf,
    /// The flags that chose the repository this restore reads (`--repo`, `--password-file`),
    /// repeated in that restore_command so the restored cluster fetches WAL from the same one.
    pub repository_args: Vec<String>,
    /// Flags for `wal-fetch` itself in that restore_command (a restore job's WAL binding).
    pub fetch_args: Vec<String>,
    /// Bytes restored so far, for the caller's progress bar.
    pub progress: Arc<Progress>,
    /// Physical: settings written after the recovery settings (a drill's scratch server).
    pub server_settings: Vec<(String, String)>,
    /// Logical: restore without owners and privileges (a scratch server has none of the
    /// original's roles).
    pub skip_ownership: bool,
}

impl RestoreRequest {
    /// Options only a logical (pg_dump) restore uses.
    pub fn has_logical_options(&self) -> bool {
        self.into_database.is_some()
            || self.mode.is_some()
            || !self.schemas.is_empty()
            || !self.tables.is_empty()
            || self.jobs.is_some()
            || self.work_dir.is_some()
    }

    /// Options only a physical (base backup + WAL) restore uses.
    pub fn has_physical_options(&self) -> bool {
        self.data_dir.is_some()
            || self.port.is_some()
            || self.start
            || self.target != RecoveryTarget::Latest
            || !self.tablespace_map.is_empty()
    }

    /// Refuses `--to` outside SQLite restores.
    fn refuse_sqlite_options(&self, database: &str) -> Result<()> {
        match self.to_path {
            Some(_) => Err(DriverError::invalid(
                database,
                "--to",
                "applies to SQLite databases",
            )),
            None => Ok(()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RestoreMode {
    /// Drop the target database and recreate it from the snapshot
    Full,
    /// Keep existing objects; create what is missing and load data into it
    Merge,
}

/// Where point-in-time recovery stops.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum RecoveryTarget {
    /// The end of the archived WAL.
    #[default]
    Latest,
    Time(chrono::DateTime<chrono::FixedOffset>),
    Lsn(String),
    Name(String),
}

/// What a restore did, for text and `--json` output.
#[derive(Debug, Clone)]
pub struct RestoreReport {
    pub lines: Vec<String>,
    pub json: serde_json::Value,
}

/// A restore drill: the snapshot put back into a scratch instance under `scratch`, checked
/// there, and the instance stopped again. The caller makes `scratch` (empty) and removes it.
#[derive(Debug, Clone, Default)]
pub struct DrillRequest {
    pub scratch: PathBuf,
    /// The point to recover to, the restore_command's flags, progress: as for a restore.
    pub restore: RestoreRequest,
    /// Run the engine's own integrity check.
    pub integrity: bool,
    /// Count every table's rows in the copy (compared with the snapshot's own counts).
    pub row_counts: bool,
    /// SQL run in the copy; each answer's rows one per line, columns joined by `|`.
    pub queries: Vec<String>,
}

/// What a drill's scratch instance answered. Failed checks are findings, not errors: an
/// error means the copy could not be made or reached at all.
#[derive(Debug, Clone)]
pub struct DrillFindings {
    /// The engine's own integrity check, when asked: `Ok(summary)` or `Err(what it found)`.
    pub integrity: Option<std::result::Result<String, String>>,
    /// Table → rows in the copy, when asked.
    pub row_counts: Option<std::collections::BTreeMap<String, u64>>,
    /// One answer per query, in order.
    pub answers: Vec<std::result::Result<String, String>>,
    /// Where point-in-time recovery stopped (physical PostgreSQL).
    pub reached: Option<serde_json::Value>,
    /// When the last check answered, before the instance was stopped.
    pub ready_at: std::time::Instant,
}

/// What a restore that replaces existing data destroys, in the words of the confirmation the
/// CLI asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replacement {
    /// The database or file replaced.
    pub replaced: String,
    /// What happens to it ("the file is replaced").
    pub effect: &'static str,
    /// The options that restore beside it instead.
    pub beside: &'static str,
}

/// One engine's way of taking and putting back a consistent copy.
pub trait Driver: Send + Sync {
    fn database_id(&self) -> &str;
    fn database_type(&self) -> DatabaseType;
    /// Whether a backup by `method` is one stream or a directory tree.
    fn source(&self, method: Option<BackupMethod>) -> Source;
    /// The server (or file) as it is now: version, contents, size.
    fn discover(&self) -> BoxFuture<'_, Result<Discovery>>;
    /// Whether a backup could run now: reachable, credentials accepted, tools installed.
    fn check(&self) -> BoxFuture<'_, Result<()>>;
    /// Writes the database into `session` as one or more streams; returns warnings.
    fn backup<'a>(
        &'a self,
        session: &'a mut BackupSession,
        method: Option<BackupMethod>,
        opts: BackupOptions,
    ) -> BoxFuture<'a, Result<Vec<String>>>;
    /// Whether `restore` with this request would replace data that exists now (the CLI then
    /// asks for confirmation and takes a pre-restore safety snapshot first).
    fn replaces_existing<'a>(
        &'a self,
        manifest: &'a Manifest,
        req: &'a RestoreRequest,
    ) -> BoxFuture<'a, Result<bool>>;
    fn restore<'a>(
        &'a self,
        repo: &'a Repository,
        manifest: &'a Manifest,
        req: &'a RestoreRequest,
    ) -> BoxFuture<'a, Result<RestoreReport>>;
    /// Restores `manifest` into a scratch instance, runs the checks, stops the instance (also
    /// when a check or the restore fails).
    fn drill<'a>(
        &'a self,
        repo: &'a Repository,
        manifest: &'a Manifest,
        req: &'a DrillRequest,
    ) -> BoxFuture<'a, Result<DrillFindings>>;
    /// The snapshot `restore latest` means with this request. By default the newest; an engine
    /// with several methods picks the newest one `req` can be restored from. Either way a
    /// manifest that cannot be read and may be newer than the choice refuses (exit 3): it might
    /// be the one that should have been restored.
    fn find_latest<'a>(
        &'a self,
        repo: &'a Repository,
        _req: &'a RestoreRequest,
    ) -> BoxFuture<'a, Result<Manifest>> {
        async move {
            Ok(repo
                .find_snapshot("latest", Some(self.database_id()))
                .await?)
        }
        .boxed()
    }
    /// What a restore with `req` destroys when [`Driver::replaces_existing`] says it replaces
    /// something.
    fn replacement(&self, req: &RestoreRequest) -> Replacement;
    /// The driver and method of the pre-restore snapshot: a backup of exactly what a restore
    /// with `req` replaces, filed under this database's id.
    fn pre_restore_backup(&self, req: &RestoreRequest) -> (Box<dyn Driver>, Option<BackupMethod>);
}

/// The technologies this agent has a driver for.
pub const SUPPORTED: [DatabaseType; 2] = [DatabaseType::Postgresql, DatabaseType::Sqlite];

/// Why a database of type `t` cannot be backed up by this agent.
pub fn unsupported(t: DatabaseType) -> String {
    format!(
        "{t} is not supported by this agent (bulwark-agent {} backs up {}); upgrade the agent",
        env!("CARGO_PKG_VERSION"),
        SUPPORTED.map(|t| t.as_str()).join(", ")
    )
}

/// The driver for a configured database. Loading the configuration refuses types without one,
/// so the error is for configurations built in code.
pub fn driver_for(db: &DatabaseConfig) -> Result<Box<dyn Driver>> {
    match db.kind {
        DatabaseType::Postgresql => Ok(Box::new(postgres::Postgres::new(db.clone()))),
        DatabaseType::Sqlite => Ok(Box::new(sqlite::Sqlite::new(db.clone()))),
        other => Err(DriverError::invalid(&db.id, "type", unsupported(other))),
    }
}

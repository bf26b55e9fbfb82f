//! All state lives in one redb file (`<data-dir>/bulwark.redb`). This module owns the file, the
//! table layout and the transaction discipline; the submodules hold one resource each.
//!
//! Layout: every record is JSON under its id in a table of its own; secondary indexes are tables
//! of tuple keys with empty values (e.g. `(database, started_ms, backup_id)`), so filtered,
//! paginated listings are range scans, never full scans.
//!
//! Discipline: reads open a read transaction on the calling thread (microseconds); every change
//! runs in [`Store::write`] inside one write transaction of its own that also appends its audit
//! entry ([`Tx::audit`]). Either both are committed or neither.
//!
//! Group commit: redb runs write transactions one at a time and a durable commit costs an fsync,
//! so a burst of changes (a hundred backups requested at once, a thousand agents' heartbeats)
//! would queue behind one fsync each. Changes therefore go to one writer thread
//! ([`writer`]), which takes every change waiting, commits each in its own transaction without
//! fsync, and makes the whole group durable with the last commit; callers are answered only then.
//! Each change keeps its own transaction (a failing one aborts alone), and no acknowledged change
//! can be lost in a crash.

pub mod agents;
pub mod approvals;
pub mod audit;
pub mod backups;
pub mod clusters;
pub mod databases;
pub mod drills;
pub mod jobs;
pub mod policies;
pub mod quota;
pub mod recovery;
mod refs;
pub mod restores;
pub mod storages;
pub mod users;
pub mod workspaces;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use redb::{
    Database, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::domain::audit::Actor;
use crate::domain::Violation;

/// A consistent view of the whole store for a request's reads; callers outside `store/` pass
/// it to the read functions of the submodules and never look inside.
pub type ReadTx = ReadTransaction;

pub type Records = TableDefinition<'static, &'static str, &'static [u8]>;
pub type Index2 = TableDefinition<'static, (&'static str, &'static str), ()>;
pub type TimeIndex = TableDefinition<'static, (&'static str, i64, &'static str), ()>;

pub const FILE_NAME: &str = "bulwark.redb";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the state file {path} is in use by another process (a running control plane?); stop it first")]
    InUse { path: PathBuf },
    #[error("cannot open the state file {path}: {source}")]
    Open {
        path: PathBuf,
        source: redb::DatabaseError,
    },
    #[error("cannot create the state file {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Secrets(#[from] crate::secrets::SecretsError),
    #[error("state store: {0}")]
    Db(#[from] redb::Error),
    #[error("stored {what} '{key}' cannot be read: {reason}")]
    Corrupt {
        what: &'static str,
        key: String,
        reason: String,
    },
    #[error("no {kind} '{id}'")]
    NotFound { kind: &'static str, id: String },
    #[error("{0}")]
    Conflict(String),
    /// The request is well-formed but asks for something that is never allowed (400).
    #[error("{0}")]
    Refused(String),
    /// A backup would pass the workspace's quota (refused at admission).
    #[error("{0}")]
    QuotaExceeded(String),
    /// The caller's credentials (an enrolment token, an agent) do not allow this (401).
    #[error("{0}")]
    Unauthorized(String),
    #[error("the request breaks {} rule(s)", .0.len())]
    Rejected(Vec<Violation>),
    #[error("a state-store task failed: {0}")]
    Task(String),
}

macro_rules! db_error {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(e.into())
            }
        }
    )*};
}
db_error!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Clone)]
pub struct Store {
    /// Declared first: dropping the last handle stops (and joins) the writer thread before the
    /// database handle goes, so a reopened state file is never "in use".
    writer: Arc<writer::Writer>,
    db: Arc<Database>,
    path: PathBuf,
    secrets: crate::secrets::SecretKey,
    clock: Clock,
}

/// The control plane's clock: the system clock plus an offset that only tests move
/// ([`Store::advance_clock_for_tests`]), so retention and schedules can be tested over days.
#[derive(Clone, Default)]
pub struct Clock(Arc<std::sync::atomic::AtomicI64>);

impl Clock {
    pub fn now(&self) -> DateTime<Utc> {
        let offset = self.0.load(std::sync::atomic::Ordering::Relaxed);
        Utc::now() + chrono::Duration::milliseconds(offset)
    }
}

impl Store {
    /// Opens (or creates) `<data_dir>/bulwark.redb` and makes sure every table exists, so that
    /// read transactions never meet a missing table.
    pub fn open(data_dir: &Path) -> Result<Store> {
        let path = data_dir.join(FILE_NAME);
        create_private(&path)?;
        let secrets = crate::secrets::SecretKey::load_or_create(data_dir)?;
        let mut db = Database::create(&path).map_err(|source| match source {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::InUse { path: path.clone() },
            source => StoreError::Open {
                path: path.clone(),
                source,
            },
        })?;
        let mut tx = db.begin_write()?;
        let usage_is_new = !tx
            .list_tables()?
            .any(|t| redb::TableHandle::name(&t) == redb::TableHandle::name(&quota::USAGE));
        for def in [
            workspaces::TABLE,
            users::USERS,
            users::TOKENS,
            databases::TABLE,
            policies::TABLE,
            backups::TABLE,
            clusters::TABLE,
            storages::TABLE,
            quota::ALERTS,
            agents::AGENTS,
            agents::TOKENS,
            jobs::JOBS,
            jobs::SCHEDULE,
            recovery::TABLE,
            restores::TABLE,
            drills::TABLE,
            workspaces::SAFEGUARDS,
            approvals::TABLE,
            approvals::SECRETS,
        ] {
            tx.open_table(def)?;
        }
        for def in [
            users::USERS_BY_WORKSPACE,
            users::TOKENS_BY_USER,
            databases::BY_WORKSPACE,
            policies::BY_DATABASE,
            policies::BY_WORKSPACE,
            storages::BY_WORKSPACE,
            storages::BY_CLUSTER,
            quota::ALERTS_BY_WORKSPACE,
            agents::BY_WORKSPACE,
            jobs::BY_WORKSPACE,
            jobs::RUNNING,
            jobs::RUNNING_BY_STORAGE,
            restores::BY_WORKSPACE,
            drills::BY_WORKSPACE,
            drills::BY_DATABASE,
            approvals::BY_WORKSPACE,
        ] {
            tx.open_table(def)?;
        }
        for def in [backups::BY_DATABASE, backups::BY_WORKSPACE] {
            tx.open_table(def)?;
        }
        tx.open_table(audit::TABLE)?;
        tx.open_table(users::TOKEN_HASHES)?;
        tx.open_table(agents::CERTS)?;
        tx.open_table(jobs::QUEUE)?;
        tx.open_table(jobs::WORKSPACE_KEYS)?;
        tx.open_table(quota::USAGE)?;
        tx.open_table(quota::OPEN_ALERTS)?;
        if usage_is_new {
            // A state file from before usage counters: count what the catalog holds, once.
            quota::rebuild_usage(&tx)?;
        }
        let sealed = databases::seal_stored_in_clear(&mut tx, &secrets)?;
        tx.commit()?;
        if sealed > 0 {
            // The clear values stay in the pages this commit freed until redb reuses them;
            // compacting moves live pages into the freed ones and cuts off the rest of the
            // file. (Copies of the file made before remain in clear: replace them.)
            db.compact().map_err(|e| StoreError::Db(e.into()))?;
        }
        let db = Arc::new(db);
        let clock = Clock::default();
        Ok(Store {
            writer: Arc::new(writer::Writer::start(
                db.clone(),
                secrets.clone(),
                clock.clone(),
            )),
            db,
            path,
            secrets,
            clock,
        })
    }

    /// Now, by the control plane's clock (what every change's `tx.now` is).
    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// Moves the control plane's clock forward by `by`, for in-process tests of what takes
    /// days (retention, scheduled gc and verify). Not reachable through any API; the server
    /// never calls it.
    #[doc(hidden)]
    pub fn advance_clock_for_tests(&self, by: chrono::Duration) {
        self.clock
            .0
            .fetch_add(by.num_milliseconds(), std::sync::atomic::Ordering::Relaxed);
    }

    /// The key that seals the secrets this store keeps (`<data_dir>/secrets.key`).
    pub fn secrets(&self) -> &crate::secrets::SecretKey {
        &self.secrets
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn read(&self) -> Result<ReadTx> {
        Ok(self.db.begin_read()?)
    }

    /// Whether the state file answers: a read transaction opens and reads a table.
    pub fn check_readable(&self) -> Result<()> {
        self.read()?.open_table(audit::TABLE)?;
        Ok(())
    }

    /// How many records each table holds (the `/metrics` gauges): every record table, then the
    /// work in flight (`jobs_queued`, `jobs_running`), then the audit log.
    pub fn row_counts(&self) -> Result<Vec<(&'static str, u64)>> {
        use redb::ReadableTableMetadata;
        let rtx = self.read()?;
        let mut out = Vec::new();
        for (name, def) in [
            ("workspaces", workspaces::TABLE),
            ("users", users::USERS),
            ("tokens", users::TOKENS),
            ("databases", databases::TABLE),
            ("policies", policies::TABLE),
            ("backups", backups::TABLE),
            ("proxmox_clusters", clusters::TABLE),
            ("backup_storages", storages::TABLE),
            ("alerts", quota::ALERTS),
            ("agents", agents::AGENTS),
            ("jobs", jobs::JOBS),
        ] {
            out.push((name, rtx.open_table(def)?.len()?));
        }
        out.push(("jobs_queued", rtx.open_table(jobs::QUEUE)?.len()?));
        out.push(("jobs_running", rtx.open_table(jobs::RUNNING)?.len()?));
        out.push(("audit", rtx.open_table(audit::TABLE)?.len()?));
        Ok(out)
    }

    /// Runs `change` in one write transaction on the writer thread and commits it, with the
    /// audit entries it appended; answers once the commit is durable. An error from `change`
    /// aborts its transaction (and nothing else).
    pub async fn write<T, F>(&self, actor: Actor, change: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Tx) -> Result<T> + Send + 'static,
    {
        self.writer.write(actor, change).await
    }

    /// Runs `change` in a durable transaction of its own on the calling thread (tools and
    /// seeding; the server goes through [`Store::write`]).
    pub fn write_blocking<T>(
        &self,
        actor: Actor,
        change: impl FnOnce(&mut Tx) -> Result<T>,
    ) -> Result<T> {
        let mut tx = Tx {
            txn: self.db.begin_write()?,
            actor,
            now: self.clock.now(),
            secrets: self.secrets.clone(),
        };
        let out = change(&mut tx)?;
        tx.txn.commit()?;
        Ok(out)
    }
}

/// A write transaction plus who is acting and when: everything a change needs to record itself.
pub struct Tx {
    pub txn: WriteTransaction,
    pub actor: Actor,
    pub now: DateTime<Utc>,
    /// Seals the secrets a change stores (databases' connection secrets).
    pub secrets: crate::secrets::SecretKey,
}

/// Creates the state file owner-only (0600) if it does not exist yet, before redb opens it.
fn create_private(path: &Path) -> Result<()> {
    crate::files::create_new_private(path)
        .map(drop)
        .map_err(|source| StoreError::Create {
            path: path.to_path_buf(),
            source,
        })
}

pub fn get_json<T: DeserializeOwned>(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    what: &'static str,
    key: &str,
) -> Result<Option<T>> {
    match table.get(key)? {
        None => Ok(None),
        Some(bytes) => decode(what, key, bytes.value()).map(Some),
    }
}

pub fn decode<T: DeserializeOwned>(what: &'static str, key: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        what,
        key: key.to_string(),
        reason: e.to_string(),
    })
}

pub fn put_json<T: Serialize>(
    table: &mut redb::Table<'_, &'static str, &'static [u8]>,
    key: &str,
    value: &T,
) -> Result<()> {
    let bytes = serde_json::to_vec(value).expect("records serialise");
    table.insert(key, bytes.as_slice())?;
    Ok(())
}

/// Walks the ids under one prefix of a two-part index in order, starting after `after`, until
/// `visit` returns `false`.
pub fn scan_index(
    table: &impl ReadableTable<(&'static str, &'static str), ()>,
    prefix: &str,
    after: Option<&str>,
    mut visit: impl FnMut(&str) -> Result<bool>,
) -> Result<()> {
    use std::ops::Bound;
    let start = match after {
        Some(a) => Bound::Excluded((prefix, a)),
        None => Bound::Included((prefix, "")),
    };
    for item in table.range::<(&str, &str)>((start, Bound::Unbounded))? {
        let (key, _) = item?;
        let (p, id) = key.value();
        if p != prefix || !visit(id)? {
            break;
        }
    }
    Ok(())
}

/// One page of JSON records in id order after `after`: through a two-part index under `prefix`
/// when given, else over the whole table. Records `keep` rejects are skipped; the flag says
/// whether another page follows.
pub fn page<T: DeserializeOwned>(
    rtx: &ReadTransaction,
    table: Records,
    what: &'static str,
    index: Option<(Index2, &str)>,
    after: Option<&str>,
    limit: usize,
    keep: impl Fn(&T) -> bool,
) -> Result<(Vec<T>, bool)> {
    let records = rtx.open_table(table)?;
    let mut out = Vec::new();
    let mut more = false;
    let mut take = |record: T| {
        if !keep(&record) {
            return true;
        }
        if out.len() == limit {
            more = true;
            return false;
        }
        out.push(record);
        true
    };
    match index {
        Some((def, prefix)) => scan_index(&rtx.open_table(def)?, prefix, after, |id| {
            Ok(match get_json(&records, what, id)? {
                Some(record) => take(record),
                None => true,
            })
        })?,
        None => {
            use std::ops::Bound;
            let start = after.map_or(Bound::Unbounded, Bound::Excluded);
            for item in records.range::<&str>((start, Bound::Unbounded))? {
                let (k, v) = item?;
                if !take(decode(what, k.value(), v.value())?) {
                    break;
                }
            }
        }
    }
    Ok((out, more))
}

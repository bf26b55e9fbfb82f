//! The messages agents and the control plane exchange on `/agent/v1/…`: plain serde structs, so
//! both sides compile against one definition and neither can drift. No HTTP here — the agent's
//! client (`bulwark-agent`'s `control.rs`) and the control plane's handlers carry them.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use crate::manifest::SnapshotKind;

/// What a job asks an agent to do. New kinds arrive before every agent is upgraded, so an agent
/// reads the job's `kind` last and answers a kind it does not know with a failed result that
/// names it (see `bulwark-agent`'s daemon), rather than dropping the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum JobKind {
    /// Take a snapshot of one database.
    #[default]
    Backup,
    /// Delete named snapshots (retention, or a person's delete).
    Forget,
    /// Delete chunks no snapshot references, and WAL no kept base backup needs.
    Gc,
    /// Authenticate snapshots' chunks.
    Verify,
    /// Put a snapshot (or a point in time) back into a database, after a pre-restore backup of
    /// what it replaces.
    Restore,
    /// Restore into a throwaway instance, check it, measure how long it took, tear it down.
    Drill,
}

impl JobKind {
    pub const ALL: [JobKind; 6] = [
        JobKind::Backup,
        JobKind::Forget,
        JobKind::Gc,
        JobKind::Verify,
        JobKind::Restore,
        JobKind::Drill,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Backup => "backup",
            JobKind::Forget => "forget",
            JobKind::Gc => "gc",
            JobKind::Verify => "verify",
            JobKind::Restore => "restore",
            JobKind::Drill => "drill",
        }
    }
}

/// The database technologies the control plane registers. An agent may support fewer (it says
/// which at start-up); the names are the wire and configuration strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum DatabaseType {
    Postgresql,
    Mysql,
    Mariadb,
    Sqlite,
    Etcd,
    Cassandra,
    Files,
}

impl DatabaseType {
    pub const ALL: [DatabaseType; 7] = [
        DatabaseType::Postgresql,
        DatabaseType::Mysql,
        DatabaseType::Mariadb,
        DatabaseType::Sqlite,
        DatabaseType::Etcd,
        DatabaseType::Cassandra,
        DatabaseType::Files,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DatabaseType::Postgresql => "postgresql",
            DatabaseType::Mysql => "mysql",
            DatabaseType::Mariadb => "mariadb",
            DatabaseType::Sqlite => "sqlite",
            DatabaseType::Etcd => "etcd",
            DatabaseType::Cassandra => "cassandra",
            DatabaseType::Files => "files",
        }
    }
}

/// How a backup is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum BackupMethod {
    /// A dump the database writes itself (pg_dump, mysqldump/mariadb-dump).
    Logical,
    /// The database's files or native snapshot (base backup, mariabackup, SQLite online backup,
    /// etcd snapshot, Cassandra sstables, a directory tree).
    Physical,
}

impl BackupMethod {
    pub const ALL: [BackupMethod; 2] = [BackupMethod::Logical, BackupMethod::Physical];

    pub fn as_str(self) -> &'static str {
        match self {
            BackupMethod::Logical => "logical",
            BackupMethod::Physical => "physical",
        }
    }
}

/// A name that is not one of an enum's wire strings; says which were expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {given:?}; expected one of: {expected}")]
pub struct UnknownName {
    pub what: &'static str,
    pub given: String,
    pub expected: String,
}

macro_rules! wire_names {
    ($ty:ident, $what:literal) => {
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $ty {
            type Err = UnknownName;
            fn from_str(s: &str) -> Result<Self, UnknownName> {
                $ty::ALL
                    .into_iter()
                    .find(|v| v.as_str() == s)
                    .ok_or_else(|| UnknownName {
                        what: $what,
                        given: s.to_string(),
                        expected: $ty::ALL.map(|v| v.as_str()).join(", "),
                    })
            }
        }
    };
}

wire_names!(JobKind, "job kind");
wire_names!(DatabaseType, "database type");
wire_names!(BackupMethod, "backup method");

/// Prefix of enrolment tokens (`bwe_` + 64 hex digits), recognisable in logs and by scanners.
pub const ENROLLMENT_TOKEN_PREFIX: &str = "bwe_";

/// A database declared in the agent's configuration, as reported at enrolment and in heartbeats.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeclaredDatabase {
    /// The `id` of the `[[databases]]` entry; becomes the database id in the workspace.
    pub id: String,
    /// A [`DatabaseType`] name, kept as text so that a newer agent's type becomes a per-database
    /// conflict at enrolment rather than a refused request.
    #[serde(rename = "type")]
    pub db_type: String,
    /// What `discover` found, when the database answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_version: Option<String>,
}

/// `POST /agent/v1/enroll`: authenticated by the one-time token, not by a certificate.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    pub token: String,
    /// PKCS#10 request made on the host; the private key never leaves it.
    pub csr_pem: String,
    pub hostname: String,
    pub agent_version: String,
    #[serde(default)]
    pub databases: Vec<DeclaredDatabase>,
}

/// One declared database the control plane could not register (its id is taken elsewhere, or
/// it is not a valid id or type). Enrolment and heartbeats still succeed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabaseConflict {
    pub id: String,
    pub problem: String,
}

/// The answer to enrolment: the agent's identity and its first certificate.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnrollResponse {
    pub agent_id: String,
    pub workspace_id: String,
    pub certificate_pem: String,
    /// The control plane's agent CA (issues client certificates; not the server's TLS identity).
    pub ca_certificate_pem: String,
    pub expires_at: DateTime<Utc>,
    /// When the agent should ask for a new certificate (two thirds of its life).
    pub renew_after: DateTime<Utc>,
    #[serde(default)]
    pub conflicts: Vec<DatabaseConflict>,
}

/// `POST /agent/v1/heartbeat`, over mutual TLS.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    pub agent_version: String,
    #[serde(default)]
    pub databases: Vec<DeclaredDatabase>,
    /// The last WAL file archived for each PostgreSQL database whose WAL goes to a storage
    /// (how far a point-in-time restore can reach).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub wal: Vec<WalArchived>,
}

/// The newest WAL file `wal-push` archived for one database, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WalArchived {
    pub database_id: String,
    pub last_file: String,
    pub archived_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeartbeatResponse {
    pub agent_id: String,
    pub workspace_id: String,
    pub received_at: DateTime<Utc>,
    /// Expiry of the certificate this request came with.
    pub certificate_expires_at: DateTime<Utc>,
    #[serde(default)]
    pub conflicts: Vec<DatabaseConflict>,
}

/// `POST /agent/v1/renew`, over mutual TLS with the current certificate.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    pub csr_pem: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RenewResponse {
    pub certificate_pem: String,
    pub expires_at: DateTime<Utc>,
    pub renew_after: DateTime<Utc>,
}

/// Longest long-poll an agent may ask for; proxies and load balancers commonly cut idle
/// requests at 60 s, so half of that leaves room.
pub const MAX_POLL_WAIT_SECS: u32 = 30;

/// `POST /agent/v1/jobs/poll`: waits up to `wait_secs` for a job of this agent.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PollRequest {
    /// 0..=30 seconds; default 25.
    #[serde(default)]
    pub wait_secs: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PollResponse {
    /// `None`: nothing to do yet, poll again.
    pub job: Option<AgentJob>,
}

/// A job handed to an agent. Only the agent whose certificate asked receives it, and only for a
/// database or storage of its own workspace.
#[derive(Clone, Serialize, Deserialize)]
pub struct AgentJob {
    pub id: String,
    pub workspace_id: String,
    /// 1 for the first try, 2.. for retries.
    pub attempt: u32,
    /// The workspace key-encryption key, 64 hex digits: it opens (or first creates) the
    /// repository. Agents keep it in memory only.
    pub workspace_key: String,
    /// The storage whose repository the job works on; `None` (workspaces without a provisioned
    /// storage): the repository of the agent's own configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageTarget>,
    /// The workspace's recovery passphrase, sent while the storage's repository may not exist
    /// yet: the job that creates it adds a key slot for it, so the backups can be restored
    /// without the control plane.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_key: Option<String>,
    /// What to do, tagged by `kind`.
    #[serde(flatten)]
    pub task: JobTask,
}

/// The kinds of work, each with what it needs. `kind` is the tag on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum JobTask {
    Backup(BackupTask),
    Forget(ForgetTask),
    Gc(GcTask),
    Verify(VerifyTask),
    Restore(RestoreTask),
    Drill(DrillTask),
}

impl JobTask {
    pub fn kind(&self) -> JobKind {
        match self {
            JobTask::Backup(_) => JobKind::Backup,
            JobTask::Forget(_) => JobKind::Forget,
            JobTask::Gc(_) => JobKind::Gc,
            JobTask::Verify(_) => JobKind::Verify,
            JobTask::Restore(_) => JobKind::Restore,
            JobTask::Drill(_) => JobKind::Drill,
        }
    }

    /// The database the job is about, when it is about one.
    pub fn database_id(&self) -> Option<&str> {
        match self {
            JobTask::Backup(b) => Some(&b.database_id),
            JobTask::Forget(f) => Some(&f.database_id),
            JobTask::Restore(r) => Some(&r.database_id),
            JobTask::Drill(d) => Some(&d.database_id),
            JobTask::Gc(_) | JobTask::Verify(_) => None,
        }
    }
}

/// A snapshot of one database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupTask {
    pub database_id: String,
    /// As registered.
    pub database_type: DatabaseType,
    /// `None`: the agent configuration's method.
    #[serde(default)]
    pub method: Option<BackupMethod>,
    /// The snapshot kind recorded in the manifest.
    pub snapshot_kind: SnapshotKind,
    #[serde(default)]
    pub tags: std::collections::BTreeMap<String, String>,
    /// Authenticate every chunk of the new snapshot before reporting (the policy's
    /// `verify_after_backup`); the result's `verified` says what was found.
    #[serde(default)]
    pub verify_after: bool,
    /// Record each table's exact row count in the manifest, from the backup's own snapshot
    /// (the policy's drill compares a restored copy against them).
    #[serde(default)]
    pub count_rows: bool,
}

/// A job an agent received but cannot read: a kind, method or field from a newer control plane.
/// The agent still knows the job's id, so it answers with a failed result naming the reason
/// instead of dropping the job (which would leave it running until it is failed as lost).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnreadableJob {
    pub id: String,
    pub reason: String,
}

impl AgentJob {
    /// Reads a job from the poll answer's `job` value. `Err(None)`: not even an id.
    pub fn from_value(value: serde_json::Value) -> Result<AgentJob, Option<UnreadableJob>> {
        let id = value.get("id").and_then(|v| v.as_str()).map(str::to_string);
        serde_json::from_value(value).map_err(|e| {
            id.map(|id| UnreadableJob {
                id,
                reason: e.to_string(),
            })
        })
    }
}

impl std::fmt::Debug for AgentJob {
    /// Never prints the workspace key (jobs end up in logs).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentJob")
            .field("id", &self.id)
            .field("workspace_id", &self.workspace_id)
            .field("attempt", &self.attempt)
            .field("storage", &self.storage)
            .field("task", &self.task)
            .finish_non_exhaustive()
    }
}

/// Where a job's repository is: one backup storage of the workspace, as the control plane
/// provisioned it. Each storage holds one repository, shared by every agent of the workspace so
/// that chunks deduplicate across its databases; the agent never guesses a path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageTarget {
    /// The storage's id in its workspace (what agent.toml's `[[storage]]` entries name).
    pub storage_id: String,
    /// Its name on the Proxmox cluster, unique across workspaces: the repository lives in
    /// [`StorageTarget::repository_dir`] of the storage, so two workspaces given the same export
    /// never share a repository.
    pub pve_storage: String,
    #[serde(flatten)]
    pub access: StorageAccess,
}

impl StorageTarget {
    /// The repository's directory inside the storage (the export, the CephFS path, the node
    /// directory): `bulwark/<pve_storage>`.
    pub fn repository_dir(&self) -> String {
        format!("bulwark/{}", self.pve_storage)
    }
}

/// How the storage is reached, by type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum StorageAccess {
    /// An NFS export: the agent speaks NFS itself (v4.1, else v3) unless agent.toml maps the
    /// storage to a mount point.
    Nfs { server: String, export: String },
    /// A CephFS file system, reached through a mount point (kernel or ceph-fuse) that agent.toml
    /// names, by default `/mnt/pve/<pve_storage>` as on Proxmox nodes.
    Cephfs {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fs_name: Option<String>,
    },
    /// A directory on the Proxmox nodes (PVE `dir` storage), reached where the agent runs on a
    /// node or through a mount agent.toml names.
    Local { path: String },
}

/// What a forget job removes: snapshots of one database, by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForgetTask {
    pub database_id: String,
    pub snapshots: Vec<String>,
}

/// A garbage collection of the job's storage: unreferenced chunks, and archived WAL before the
/// oldest kept base backup of each database.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcTask {
    #[serde(default = "yes")]
    pub expire_wal: bool,
}

fn yes() -> bool {
    true
}

/// One snapshot, by database and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SnapshotRef {
    pub database_id: String,
    pub name: String,
}

/// A verification: the named snapshots, or every snapshot of the storage; all chunks, or part
/// `part` of `of` (so that `of` runs read every chunk once).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyTask {
    /// Empty: every snapshot in the repository.
    #[serde(default)]
    pub snapshots: Vec<SnapshotRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<crate::repo::verify::Subset>,
}

/// A restore, as the control plane checked and (where needed) approved it: which snapshot or
/// point, how, and where. The agent that receives it is the target; the source database may be
/// served by another agent, or by none any more (its host is gone).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreTask {
    /// The restore's id at the control plane (tags the pre-restore snapshot).
    pub restore_id: String,
    /// The database whose snapshot is restored.
    pub database_id: String,
    pub database_type: DatabaseType,
    /// The snapshot; `None`: the newest one that reaches `point` for this target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    #[serde(default)]
    pub point: RecoveryPoint,
    #[serde(default)]
    pub mode: RestoreMode,
    /// `selective`: only these schemas / tables.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schemas: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tables: Vec<String>,
    pub target: RestoreTarget,
    /// The requester confirmed that the database the target names may be replaced.
    #[serde(default)]
    pub confirmed: bool,
}

/// Where point-in-time recovery stops.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", content = "value", rename_all = "snake_case")]
pub enum RecoveryPoint {
    /// The newest state the repository holds (for PostgreSQL with archived WAL: its end).
    #[default]
    Latest,
    Time(DateTime<Utc>),
    Lsn(String),
    /// A restore point made with `pg_create_restore_point`.
    Name(String),
}

/// `full` replaces what the target holds; `merge` keeps existing objects and adds the
/// snapshot's; `selective` restores only the named schemas or tables.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum RestoreMode {
    #[default]
    Full,
    Merge,
    Selective,
}

impl RestoreMode {
    pub fn as_str(self) -> &'static str {
        match self {
            RestoreMode::Full => "full",
            RestoreMode::Merge => "merge",
            RestoreMode::Selective => "selective",
        }
    }
}

/// Where a restore writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum RestoreTarget {
    /// Over the database itself (a pre-restore backup of it is taken first).
    InPlace,
    /// A database of this name on the same server (PostgreSQL), created when missing.
    Database { name: String },
    /// A new location on the target agent's host: an empty PostgreSQL data directory (started
    /// on `port`, recovered to the point, promoted), or a SQLite file that must not exist.
    Location {
        path: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        port: Option<u16>,
    },
}

/// What a restore job did, for the restore's record.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreOutcome {
    /// The snapshot restored (the one `latest` or the point chose).
    pub snapshot: String,
    /// The backup of what the restore replaced, taken before anything changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_restore: Option<PreRestoreSnapshot>,
    /// PostgreSQL point-in-time recovery: where it stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reached: Option<ReachedPoint>,
    /// The driver's own report (target, actions, integrity check).
    #[serde(default)]
    pub details: serde_json::Value,
}

/// A pre-restore snapshot written by a restore job.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreRestoreSnapshot {
    pub snapshot: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<BackupMethod>,
    pub logical_bytes: u64,
    pub stored_bytes: u64,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
}

/// Where recovery of a restored PostgreSQL cluster stopped, as the server reported it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ReachedPoint {
    /// The server's "recovery stopping …" line, or the end of the archive.
    pub stop_reason: String,
    /// The time of the last transaction replayed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transaction_time: Option<String>,
    /// The WAL position of the end-of-recovery checkpoint (on the new timeline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lsn: Option<String>,
    /// The timeline the promoted server writes on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<String>,
}

/// A restore drill: the database's newest snapshot (or the state at `point`) restored into a
/// scratch instance on the agent that receives it, checked, measured and removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrillTask {
    pub drill_id: String,
    pub database_id: String,
    pub database_type: DatabaseType,
    /// `Latest`, or a time (point-in-time recovery onto a physical base).
    #[serde(default)]
    pub point: RecoveryPoint,
    /// Restore a physical base backup with WAL (PostgreSQL) rather than the newest dump.
    #[serde(default)]
    pub physical: bool,
    /// Run the engine's own integrity check (pg_amcheck, PRAGMA integrity_check).
    #[serde(default)]
    pub integrity: bool,
    /// Compare every table's row count with the counts the snapshot recorded.
    #[serde(default)]
    pub row_counts: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sql_checks: Vec<SqlCheck>,
}

/// A query run in the restored copy, and the text it must print (one value per line).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SqlCheck {
    pub name: String,
    pub query: String,
    pub expect: String,
}

/// What a drill found.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrillOutcome {
    /// The snapshot restored.
    pub snapshot: String,
    /// Seconds from the job's start until the restored copy answered every check.
    pub ready_secs: f64,
    /// The newest state the copy holds: the last replayed transaction (point-in-time), or the
    /// snapshot's end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovered_to: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reached: Option<ReachedPoint>,
    pub checks: Vec<CheckResult>,
    /// The scratch instance is gone again.
    pub scratch_removed: bool,
}

/// One check of a drill.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CheckResult {
    /// `integrity`, `row_counts`, or the SQL check's name.
    pub name: String,
    pub passed: bool,
    pub detail: String,
}

/// What a verification found about one snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotCheck {
    pub database_id: String,
    pub name: String,
    /// No problem found in what was checked.
    pub intact: bool,
    #[serde(default)]
    pub problems: Vec<String>,
}

/// `POST /agent/v1/jobs/{id}/progress`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobProgress {
    /// What the agent is doing: `checking`, `reading`, `committing`, …
    pub phase: String,
    /// Bytes read from the database so far.
    pub bytes: u64,
    /// 0..=100 when the total is known.
    #[serde(default)]
    pub percent: Option<f64>,
}

/// `POST /agent/v1/jobs/{id}/result`: sent until acknowledged; the same result sent twice
/// records one backup.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobResult {
    pub succeeded: bool,
    /// The snapshot's name in the repository, when one was written.
    #[serde(default)]
    pub snapshot: Option<String>,
    #[serde(default)]
    pub logical_bytes: u64,
    /// Bytes this backup added to the repository.
    #[serde(default)]
    pub stored_bytes: u64,
    /// backup: the method the snapshot was taken with, as its driver recorded it (a job may
    /// leave the method to the agent's configuration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<BackupMethod>,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub warnings: Vec<String>,
    /// forget: the snapshots now absent from the repository (deleted, or already gone).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forgotten: Vec<String>,
    /// gc: bytes deleted from the storage (chunks and expired WAL).
    #[serde(default)]
    pub freed_bytes: u64,
    /// verify, and backup with `verify_after`: what was found, per snapshot.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub verified: Vec<SnapshotCheck>,
    /// gc, and a verify of the whole storage: the bytes the repository holds after it (every
    /// object), for the usage reconcile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository_bytes: Option<u64>,
    /// This job created the storage's repository (with the recovery key's slot when one was
    /// sent).
    #[serde(default)]
    pub created_repository: bool,
    /// restore: what was restored and where recovery stopped; also on a failed restore whose
    /// pre-restore snapshot was written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<RestoreOutcome>,
    /// drill: what was restored, how long until it answered, and each check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drill: Option<DrillOutcome>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobAck {
    pub job_id: String,
    /// The catalog entry this job's backup is recorded under.
    pub backup_id: String,
    /// The job's status after this report (`running`, `succeeded`, `failed`).
    pub status: String,
    /// The result had been recorded before: nothing changed.
    #[serde(default)]
    pub duplicate: bool,
    /// The control plane no longer wants this job (it was cancelled or given up): stop it.
    #[serde(default)]
    pub cancel: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_are_refused_and_types_renamed() {
        let hb: Heartbeat = serde_json::from_str(
            r#"{"agent_version":"0.1.0","databases":[{"id":"orders","type":"postgresql"}]}"#,
        )
        .unwrap();
        assert_eq!(hb.databases[0].db_type, "postgresql");
        assert!(serde_json::from_str::<Heartbeat>(r#"{"agent_version":"1","x":1}"#).is_err());
    }

    #[test]
    fn enums_keep_their_wire_strings_and_name_what_was_expected() {
        for t in DatabaseType::ALL {
            let json = serde_json::to_string(&t).unwrap();
            assert_eq!(json, format!("\"{t}\""));
            assert_eq!(t.as_str().parse::<DatabaseType>().unwrap(), t);
        }
        assert_eq!(
            serde_json::to_string(&SnapshotKind::PreRestore).unwrap(),
            "\"pre-restore\""
        );
        assert_eq!(
            serde_json::to_string(&BackupMethod::Physical).unwrap(),
            "\"physical\""
        );
        let err = "oracle".parse::<DatabaseType>().unwrap_err().to_string();
        assert!(
            err.contains("\"oracle\"") && err.contains("postgresql, mysql"),
            "{err}"
        );
        let job: AgentJob = serde_json::from_str(
            r#"{"id":"j","kind":"backup","workspace_id":"w","database_id":"d","database_type":"sqlite",
                "method":"physical","snapshot_kind":"automatic","attempt":1,"workspace_key":"00"}"#,
        )
        .unwrap();
        assert_eq!(job.task.kind(), JobKind::Backup);
        let JobTask::Backup(b) = &job.task else {
            panic!("{job:?}")
        };
        assert_eq!(b.method, Some(BackupMethod::Physical));
        let forget: AgentJob = serde_json::from_value(serde_json::json!({
            "id": "f", "kind": "forget", "workspace_id": "w", "attempt": 1, "workspace_key": "00",
            "database_id": "d", "snapshots": ["backup-x"],
            "storage": {"storage_id": "main", "pve_storage": "bwk1-w-main", "type": "nfs",
                        "server": "10.0.0.5", "export": "/srv"}
        }))
        .unwrap();
        assert_eq!(forget.task.database_id(), Some("d"));
        assert_eq!(
            forget.storage.unwrap().repository_dir(),
            "bulwark/bwk1-w-main"
        );
        let newer = serde_json::json!({"id": "j2", "kind": "teleport", "workspace_id": "w",
            "attempt": 1, "workspace_key": "00"});
        let err = AgentJob::from_value(newer).unwrap_err().unwrap();
        assert_eq!(err.id, "j2");
        assert!(
            err.reason.contains("teleport") && err.reason.contains("backup"),
            "{}",
            err.reason
        );
        assert_eq!(
            AgentJob::from_value(serde_json::json!({"kind": 1})).unwrap_err(),
            None
        );
    }
}

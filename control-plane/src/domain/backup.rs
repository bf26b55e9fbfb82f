//! Entries of the backup catalog: one per backup the agents took (written by the job protocol,
//! under the job's id),
//! read and filtered by the API. The repository holds the data; the catalog is the index people
//! search.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::database::DatabaseType;

/// Manual, automatic or pre-restore: the kind the snapshot's manifest records too.
pub use bulwark_core::api::SnapshotKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum BackupStatus {
    Running,
    Succeeded,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BackupRecord {
    pub id: String,
    pub workspace_id: String,
    pub database_id: String,
    pub db_type: DatabaseType,
    pub kind: SnapshotKind,
    pub status: BackupStatus,
    pub started_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    /// The snapshot's name in the repository (`backup-<time>-<kind>-<id>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_id: Option<String>,
    /// How the snapshot was taken, when known (a physical PostgreSQL base backup starts a
    /// point-in-time window).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<bulwark_core::api::BackupMethod>,
    /// Bytes read from the database.
    #[serde(default)]
    pub logical_bytes: u64,
    /// Bytes this backup added to the repository (after dedup and compression).
    #[serde(default)]
    pub stored_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The job that took this backup (the same id for backups made through the job protocol).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    /// Free text given with a manual backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notes: Option<String>,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub tags: std::collections::BTreeMap<String, String>,
    /// When an agent last authenticated every chunk of the snapshot (or the part a scheduled
    /// verify checked), and what it found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<Verification>,
    /// A forget job is removing it from the repository; the entry goes when the agent confirms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forget_job: Option<String>,
}

/// The outcome of the last verification of a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Verification {
    Intact,
    /// A chunk or the manifest failed its checks: never counted as a good backup.
    Damaged,
}

impl BackupRecord {
    /// A backup that can be restored as far as anyone knows: it succeeded and no verify found
    /// it damaged.
    pub fn is_good(&self) -> bool {
        self.status == BackupStatus::Succeeded
            && self.snapshot.is_some()
            && self.verification != Some(Verification::Damaged)
    }
}

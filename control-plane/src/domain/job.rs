//! Jobs: the unit of work the control plane hands to agents. A job is created by a person
//! (`POST /api/v1/backups`), by the scheduler (a policy's slot came) or by a retry (its
//! predecessor was lost with its agent); it waits in the queue until its agent polls, runs, and
//! ends with the result the agent reports. The job id is also the id of its catalog entry, so a
//! result sent twice can only ever update one backup.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use bulwark_core::api::JobKind;

use super::backup::SnapshotKind;
use super::database::DatabaseType;
use super::policy::Priority;
use super::rules::BackupMethod;
use super::{check_slug, Violation};

/// How many attempts a job gets in all (the first plus retries after it was lost).
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// Most databases one `POST /api/v1/backups` may name.
pub const MAX_DATABASES_PER_REQUEST: usize = 1000;
/// How far ahead a manual backup may be planned.
pub const MAX_PLAN_AHEAD_DAYS: i64 = 366;
/// A requested start this far in the past is taken as "now" (clock skew), more is refused.
pub const PAST_TOLERANCE_SECS: i64 = 300;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
}

impl JobStatus {
    pub fn is_active(self) -> bool {
        matches!(self, JobStatus::Queued | JobStatus::Running)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
        }
    }
}

/// Progress as the agent last reported it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Progress {
    pub phase: String,
    pub bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Job {
    /// Also the id of the job's catalog entry (backups only: the other kinds have none).
    pub id: String,
    /// What the job does; records from before the other kinds read as backups.
    #[serde(default)]
    #[schema(value_type = String)]
    pub job_kind: JobKind,
    /// What a forget or verify job needs beyond its database and storage.
    #[serde(default, skip_serializing_if = "Work::is_none")]
    pub work: Work,
    pub workspace_id: String,
    pub database_id: String,
    pub db_type: DatabaseType,
    /// The agent that runs it (the database's agent when the job was made).
    pub agent_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_id: Option<String>,
    pub kind: SnapshotKind,
    pub priority: Priority,
    /// Absent: the agent configuration decides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<BackupMethod>,
    pub status: JobStatus,
    /// Not handed out before this time.
    pub not_before: DateTime<Utc>,
    /// Why the job exists: "manual, by alice", "schedule: daily …", "retry 2/3: …".
    pub reason: String,
    pub attempt: u32,
    pub max_attempts: u32,
    /// The job this one retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_of: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notes: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    pub created_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    #[serde(default)]
    pub logical_bytes: u64,
    #[serde(default)]
    pub stored_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// What a job of a kind other than backup works on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum Work {
    /// A backup (its database is the job's).
    #[default]
    None,
    /// A gc of the job's storage; once it ran, what it freed and what the repository holds.
    Gc {
        #[serde(default)]
        freed_bytes: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        repository_bytes: Option<u64>,
    },
    /// Remove these snapshots of the job's database from the repository; the catalog entries
    /// (same order) go when the agent confirms.
    Forget {
        snapshots: Vec<String>,
        backup_ids: Vec<String>,
    },
    /// Authenticate these snapshots (empty: every snapshot of the job's storage), all chunks or
    /// part `subset_part` of `subset_of`.
    Verify {
        snapshots: Vec<NamedSnapshot>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        subset_part: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        subset_of: Option<u32>,
    },
    /// Carry out restore `restore_id`, as checked (and approved) when it was requested.
    Restore {
        restore_id: String,
        #[schema(value_type = Object)]
        task: bulwark_core::api::RestoreTask,
    },
    /// Run drill `drill_id` on the job's agent.
    Drill {
        drill_id: String,
        #[schema(value_type = Object)]
        task: bulwark_core::api::DrillTask,
    },
}

impl Work {
    pub fn is_none(&self) -> bool {
        matches!(self, Work::None)
    }
}

/// A snapshot by database and name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NamedSnapshot {
    pub database_id: String,
    pub name: String,
}

impl Job {
    /// Whether the job stands for a catalog entry (only backups do).
    pub fn has_catalog_entry(&self) -> bool {
        self.job_kind == JobKind::Backup
    }

    /// Seconds the backup took, once it ended.
    pub fn duration_secs(&self) -> Option<i64> {
        Some((self.finished_at? - self.started_at?).num_seconds().max(0))
    }
}

/// Sort rank in the queue: smaller runs first.
pub fn priority_rank(p: Priority) -> u8 {
    match p {
        Priority::Critical => 0,
        Priority::High => 1,
        Priority::Normal => 2,
        Priority::Low => 3,
    }
}

/// `POST /api/v1/backups`: one database, several, or every database of a workspace.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ManualBackupBody {
    #[serde(default)]
    pub database_id: Option<String>,
    #[serde(default)]
    pub database_ids: Option<Vec<String>>,
    /// Every database of this workspace that has an agent.
    #[serde(default)]
    pub workspace_id: Option<String>,
    /// Start at this time (RFC 3339); default now.
    #[serde(default)]
    pub at: Option<DateTime<Utc>>,
    /// Free text kept with the catalog entry (at most 1000 characters).
    #[serde(default)]
    pub notes: Option<String>,
    /// Recorded in the catalog and in the snapshot's manifest (at most 20; keys are ids).
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// `high` by default: a person is waiting.
    #[serde(default)]
    #[schema(value_type = Option<Priority>)]
    pub priority: Option<Priority>,
    /// The backup storage of the databases' workspace to write to; default: the workspace's
    /// only storage (a workspace with several must name one; with none, each agent's own
    /// repository).
    #[serde(default)]
    pub storage_id: Option<String>,
}

/// Which databases a manual backup names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Databases(Vec<String>),
    Workspace(String),
}

impl ManualBackupBody {
    /// Checks the body on its own; the databases are looked up afterwards.
    pub fn check(&self, now: DateTime<Utc>) -> Result<(Target, DateTime<Utc>), Vec<Violation>> {
        let mut problems = Vec::new();
        let named = [
            self.database_id.is_some(),
            self.database_ids.is_some(),
            self.workspace_id.is_some(),
        ]
        .iter()
        .filter(|x| **x)
        .count();
        if named != 1 {
            problems.push(Violation::new(
                "",
                "name exactly one of database_id (one database), database_ids (several) or workspace_id (all databases of a workspace)",
            ));
        }
        let mut ids: Vec<String> = Vec::new();
        if let Some(id) = &self.database_id {
            ids.push(id.clone());
        }
        if let Some(list) = &self.database_ids {
            if list.is_empty() {
                problems.push(Violation::new("database_ids", "must not be empty"));
            }
            if list.len() > MAX_DATABASES_PER_REQUEST {
                problems.push(Violation::new(
                    "database_ids",
                    format!("at most {MAX_DATABASES_PER_REQUEST} databases per request"),
                ));
            }
            for (i, id) in list.iter().enumerate() {
                if ids.contains(id) {
                    problems.push(Violation::new(
                        format!("database_ids[{i}]"),
                        format!("'{id}' is named twice"),
                    ));
                }
                ids.push(id.clone());
            }
        }
        let path_of = |i: usize| match &self.database_id {
            Some(_) => "database_id".to_string(),
            None => format!("database_ids[{i}]"),
        };
        for (i, id) in ids.iter().enumerate() {
            if let Err(e) = check_slug(id) {
                problems.push(Violation::new(path_of(i), e));
            }
        }
        if let Some(ws) = &self.workspace_id {
            if let Err(e) = check_slug(ws) {
                problems.push(Violation::new("workspace_id", e));
            }
        }
        let start = match self.at {
            None => now,
            Some(at) if at < now - chrono::Duration::seconds(PAST_TOLERANCE_SECS) => {
                problems.push(Violation::new(
                    "at",
                    format!("{at} is in the past; leave `at` out to start now"),
                ));
                now
            }
            Some(at) if at > now + chrono::Duration::days(MAX_PLAN_AHEAD_DAYS) => {
                problems.push(Violation::new(
                    "at",
                    format!("at most {MAX_PLAN_AHEAD_DAYS} days ahead"),
                ));
                now
            }
            Some(at) => at.max(now),
        };
        if let Some(notes) = &self.notes {
            super::check_text(&mut problems, "notes", notes, 1000);
        }
        if self.tags.len() > 20 {
            problems.push(Violation::new("tags", "at most 20 tags"));
        }
        for (k, v) in &self.tags {
            if let Err(e) = check_slug(k) {
                problems.push(Violation::new(format!("tags.{k}"), format!("key: {e}")));
            }
            if let Some(p) = super::text_problem(v, 200) {
                problems.push(Violation::new(format!("tags.{k}"), format!("value: {p}")));
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let target = match &self.workspace_id {
            Some(ws) => Target::Workspace(ws.clone()),
            None => Target::Databases(ids),
        };
        Ok((target, start))
    }
}

/// The answer to a manual backup request: one job per database.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ManualBackupResponse {
    pub jobs: Vec<Job>,
}

/// Checks an agent's progress report.
pub fn check_progress(phase: &str, percent: Option<f64>) -> Vec<Violation> {
    let mut problems = Vec::new();
    if phase.is_empty() || phase.len() > 64 || phase.chars().any(char::is_control) {
        problems.push(Violation::new(
            "phase",
            "1 to 64 characters, no control characters",
        ));
    }
    if percent.is_some_and(|p| !(0.0..=100.0).contains(&p)) {
        problems.push(Violation::new("percent", "must be between 0 and 100"));
    }
    problems
}

/// Checks an agent's result report.
pub fn check_result(kind: JobKind, r: &bulwark_core::api::JobResult) -> Vec<Violation> {
    let mut problems = Vec::new();
    if kind == JobKind::Backup && r.succeeded && r.snapshot.is_none() {
        problems.push(Violation::new(
            "snapshot",
            "a successful backup names its snapshot",
        ));
    }
    if let Some(s) = &r.snapshot {
        if s.is_empty() || s.len() > 200 || !s.bytes().all(|b| b.is_ascii_graphic()) {
            problems.push(Violation::new("snapshot", "not a snapshot name"));
        }
    }
    if !r.succeeded && r.error.is_none() {
        problems.push(Violation::new("error", "a failed backup says why"));
    }
    if r.finished_at < r.started_at {
        problems.push(Violation::new(
            "finished_at",
            "must not be before started_at",
        ));
    }
    if let Some(d) = &r.drill {
        let long = |c: &bulwark_core::api::CheckResult| c.name.len() > 64 || c.detail.len() > 4096;
        if d.checks.len() > 64 || d.checks.iter().any(long) || d.snapshot.len() > 200 {
            problems.push(Violation::new(
                "drill.checks",
                "at most 64 checks, each a name of at most 64 bytes and a detail of at most 4096",
            ));
        }
    }
    if r.error.as_ref().is_some_and(|e| e.len() > 8192) || r.warnings.len() > 100 {
        problems.push(Violation::new(
            "error",
            "at most 8192 bytes of error and 100 warnings",
        ));
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(json: &str) -> ManualBackupBody {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn manual_targets_are_exactly_one_kind() {
        let now = Utc::now();
        let (t, at) = body(r#"{"database_id":"orders"}"#).check(now).unwrap();
        assert_eq!((t, at), (Target::Databases(vec!["orders".into()]), now));
        let (t, _) = body(r#"{"workspace_id":"acme"}"#).check(now).unwrap();
        assert_eq!(t, Target::Workspace("acme".into()));
        for bad in [
            r#"{}"#,
            r#"{"database_id":"a","workspace_id":"b"}"#,
            r#"{"database_ids":[]}"#,
            r#"{"database_ids":["a","a"]}"#,
            r#"{"database_id":"Bad Id"}"#,
            r#"{"database_id":"a","at":"2001-01-01T00:00:00Z"}"#,
            r#"{"database_id":"a","at":"2999-01-01T00:00:00Z"}"#,
            r#"{"database_id":"a","tags":{"Bad Key":"x"}}"#,
        ] {
            assert!(body(bad).check(now).is_err(), "{bad}");
        }
        let e = body(r#"{"database_ids":["ok","NO"],"notes":"x"}"#)
            .check(now)
            .unwrap_err();
        assert_eq!(e[0].path, "database_ids[1]");
        let later = now + chrono::Duration::hours(2);
        let (_, at) = body(&format!(
            r#"{{"database_id":"a","at":"{}"}}"#,
            later.to_rfc3339()
        ))
        .check(now)
        .unwrap();
        assert_eq!(at, later);
    }

    #[test]
    fn results_must_be_coherent() {
        let t = Utc::now();
        let mut r = bulwark_core::api::JobResult {
            succeeded: true,
            snapshot: None,
            logical_bytes: 1,
            stored_bytes: 1,
            started_at: t,
            finished_at: t,
            ..Default::default()
        };
        assert_eq!(check_result(JobKind::Backup, &r)[0].path, "snapshot");
        r.snapshot = Some("backup-x".into());
        assert!(check_result(JobKind::Backup, &r).is_empty());
        r.snapshot = None;
        assert!(check_result(JobKind::Forget, &r).is_empty());
        r.snapshot = Some("backup-x".into());
        r.succeeded = false;
        assert_eq!(check_result(JobKind::Backup, &r)[0].path, "error");
        r.drill = Some(bulwark_core::api::DrillOutcome {
            checks: vec![bulwark_core::api::CheckResult {
                name: "row_counts".into(),
                passed: false,
                detail: "x".repeat(5000),
            }],
            ..Default::default()
        });
        assert!(check_result(JobKind::Drill, &r)
            .iter()
            .any(|v| v.path == "drill.checks"));
        assert!(!check_progress("reading", Some(101.0)).is_empty());
        assert!(check_progress("reading", Some(50.0)).is_empty());
    }
}

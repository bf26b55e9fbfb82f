//! Restores through the control plane: who asked, why, what is put back where, and — when the
//! database's policy (or the request itself) asks for four eyes — who approved it.
//!
//! A restore is a record of its own, not just a job: it exists before any job (while it waits
//! for approval), it outlives its job's retries and it links the pre-restore backup that can
//! undo it. Its job carries the checked request to the target agent as a
//! [`RestoreTask`](bulwark_core::api::RestoreTask); while the job is queued or running the
//! restore's status and progress are read from it.
//!
//! Everything that can be refused is refused here, before anything is stored or changed: a
//! missing reason, a confirmation that does not name the database being replaced, a point in
//! time outside the recoverable window, options the engine has no use for.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use bulwark_core::api::{ReachedPoint, RecoveryPoint, RestoreMode, RestoreTarget};

use super::database::DatabaseType;
use super::job::Progress;
use super::pitr::RecoverableWindow;
use super::{check_slug, check_text, Violation};

/// How long a restore waits for approval unless the request says otherwise.
pub const DEFAULT_EXPIRY_HOURS: u32 = 24;
/// The longest a request may wait for approval.
pub const MAX_EXPIRY_HOURS: u32 = 168;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RestoreStatus {
    PendingApproval,
    /// Approved; its job is made in the same change, so this is seen only in the audit log.
    Approved,
    Rejected,
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    Expired,
}

impl RestoreStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RestoreStatus::PendingApproval => "pending_approval",
            RestoreStatus::Approved => "approved",
            RestoreStatus::Rejected => "rejected",
            RestoreStatus::Queued => "queued",
            RestoreStatus::Running => "running",
            RestoreStatus::Succeeded => "succeeded",
            RestoreStatus::Failed => "failed",
            RestoreStatus::Cancelled => "cancelled",
            RestoreStatus::Expired => "expired",
        }
    }

    pub fn is_final(self) -> bool {
        matches!(
            self,
            RestoreStatus::Rejected
                | RestoreStatus::Succeeded
                | RestoreStatus::Failed
                | RestoreStatus::Cancelled
                | RestoreStatus::Expired
        )
    }
}

/// A person and when they acted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Person {
    pub user_id: String,
    pub name: String,
}

/// The second person's decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Decision {
    pub by: Person,
    pub approved: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Restore {
    pub id: String,
    pub workspace_id: String,
    /// The database whose backup is restored.
    pub database_id: String,
    pub db_type: DatabaseType,
    /// The catalog entry restored, when the request named one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_id: Option<String>,
    /// Its snapshot; absent: the agent takes the newest that reaches `point`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    #[schema(value_type = Object)]
    pub point: RecoveryPoint,
    #[schema(value_type = String)]
    pub mode: RestoreMode,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schemas: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tables: Vec<String>,
    #[schema(value_type = Object)]
    pub target: RestoreTarget,
    /// The agent that restores (the database's own, or another of the workspace).
    pub agent_id: String,
    /// The backup storage read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_id: Option<String>,
    pub reason: String,
    /// What the request confirmed may be replaced (the database's id or the target's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirmed: Option<String>,
    pub requested_by: Person,
    pub requested_at: DateTime<Utc>,
    /// Why a second person must approve (`policy <id>`, `requested`); absent: no approval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_required: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<Decision>,
    /// A request still waiting for approval then expires.
    pub expires_at: DateTime<Utc>,
    pub status: RestoreStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    /// The catalog entry (kind `pre-restore`) of what the restore replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_restore_backup_id: Option<String>,
    /// The snapshot actually restored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_snapshot: Option<String>,
    /// PostgreSQL point-in-time recovery: where recovery stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reached: Option<ReachedPoint>,
    /// The driver's report (actions, target, integrity check).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub details: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_secs: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Who cancelled it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancelled_by: Option<Person>,
}

/// `POST /api/v1/restores`.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreBody {
    /// Restore this catalog entry; or name `database_id` (with `point_in_time` or
    /// `restore_point`; neither: the latest state).
    #[serde(default)]
    pub backup_id: Option<String>,
    #[serde(default)]
    pub database_id: Option<String>,
    /// `latest`, an RFC 3339 time (`2026-11-23T09:15:00Z`) or a PostgreSQL LSN (`0/3000148`).
    #[serde(default)]
    pub point_in_time: Option<String>,
    /// A restore point made with `pg_create_restore_point`.
    #[serde(default)]
    pub restore_point: Option<String>,
    /// `full` (default), `merge` or `selective` (with `schemas` / `tables`).
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub mode: Option<RestoreMode>,
    #[serde(default)]
    pub schemas: Vec<String>,
    #[serde(default)]
    pub tables: Vec<String>,
    /// `{"type":"in_place"}` (default), `{"type":"database","name":…}` or
    /// `{"type":"location","path":…,"port":…}`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub target: Option<RestoreTarget>,
    /// The agent that restores; default the database's own. Any agent of the workspace.
    #[serde(default)]
    pub agent_id: Option<String>,
    /// Why (kept in the restore's record and the audit log). Required.
    #[serde(default)]
    pub reason: Option<String>,
    /// Replacing data needs the id of the database being replaced (in place: the database's
    /// id; a `database` target: its name).
    #[serde(default)]
    pub confirm: Option<String>,
    /// Ask for a second person's approval even where the policy does not.
    #[serde(default)]
    pub require_approval: bool,
    /// Hours the request waits for approval (default 24, at most 168).
    #[serde(default)]
    pub expires_in_hours: Option<u32>,
}

/// A body that passed the checks that need no store.
#[derive(Debug, Clone, PartialEq)]
pub struct Checked {
    pub point: RecoveryPoint,
    pub mode: RestoreMode,
    pub target: RestoreTarget,
    pub reason: String,
    pub expires_in: Duration,
}

impl RestoreBody {
    /// Checks the body on its own, for a database of `db_type`; the source and the target
    /// agent are looked up afterwards.
    pub fn check(&self, db_type: DatabaseType) -> Result<Checked, Vec<Violation>> {
        let mut problems = Vec::new();
        let reason = match &self.reason {
            None => {
                problems.push(Violation::new(
                    "reason",
                    "say why this restore is needed (kept with the restore and in the audit log)",
                ));
                String::new()
            }
            Some(r) => {
                check_text(&mut problems, "reason", r, 1000);
                r.trim().to_string()
            }
        };
        let point = match (&self.point_in_time, &self.restore_point) {
            (Some(_), Some(_)) => {
                problems.push(Violation::new(
                    "restore_point",
                    "name either point_in_time or restore_point",
                ));
                RecoveryPoint::Latest
            }
            (None, Some(name)) => {
                check_text(&mut problems, "restore_point", name, 63);
                RecoveryPoint::Name(name.clone())
            }
            (Some(p), None) => match parse_point(p) {
                Ok(point) => point,
                Err(e) => {
                    problems.push(Violation::new("point_in_time", e));
                    RecoveryPoint::Latest
                }
            },
            (None, None) => RecoveryPoint::Latest,
        };
        if self.backup_id.is_some() && point != RecoveryPoint::Latest {
            problems.push(Violation::new(
                "point_in_time",
                "a backup_id names the point already; name database_id with a point_in_time instead",
            ));
        }
        let mode = self.mode.unwrap_or_default();
        let target = self.target.clone().unwrap_or(RestoreTarget::InPlace);
        let selective = !self.schemas.is_empty() || !self.tables.is_empty();
        match (mode, selective) {
            (RestoreMode::Selective, false) => problems.push(Violation::new(
                "schemas",
                "a selective restore names schemas or tables",
            )),
            (RestoreMode::Full | RestoreMode::Merge, true) => problems.push(Violation::new(
                "mode",
                "schemas and tables are restored with mode selective",
            )),
            _ => {}
        }
        for (path, names) in [("schemas", &self.schemas), ("tables", &self.tables)] {
            if names.len() > 100 {
                problems.push(Violation::new(path, "at most 100 names"));
            }
            for (i, n) in names.iter().enumerate() {
                check_text(&mut problems, &format!("{path}[{i}]"), n, 127);
            }
        }
        match &target {
            RestoreTarget::InPlace => {}
            RestoreTarget::Database { name } => {
                if db_type != DatabaseType::Postgresql {
                    problems.push(Violation::new(
                        "target",
                        format!("a {db_type} database has no databases of its own; restore in place or to a location"),
                    ));
                }
                if name.is_empty()
                    || name.len() > 63
                    || !name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                {
                    problems.push(Violation::new(
                        "target.name",
                        "1 to 63 letters, digits, '_' or '-'",
                    ));
                }
            }
            RestoreTarget::Location { path, port } => {
                if !path.starts_with('/') || path.contains('\0') || path.len() > 4096 {
                    problems.push(Violation::new(
                        "target.path",
                        "an absolute path on the target agent's host",
                    ));
                }
                match (db_type, port) {
                    (DatabaseType::Postgresql, None) => problems.push(Violation::new(
                        "target.port",
                        "the restored server is started: give it a free port",
                    )),
                    (DatabaseType::Postgresql, Some(p)) if *p < 1024 => {
                        problems.push(Violation::new("target.port", "a port from 1024 to 65535"))
                    }
                    (DatabaseType::Postgresql, _) => {}
                    (_, Some(_)) => problems.push(Violation::new(
                        "target.port",
                        format!("a {db_type} restore starts no server"),
                    )),
                    (_, None) => {}
                }
            }
        }
        let physical = matches!(target, RestoreTarget::Location { .. });
        if db_type == DatabaseType::Postgresql {
            if point != RecoveryPoint::Latest && !physical {
                problems.push(Violation::new(
                    "point_in_time",
                    "point-in-time recovery replays WAL onto a physical base backup: restore to {\"type\":\"location\",\"path\":…,\"port\":…}",
                ));
            }
            if physical && (mode != RestoreMode::Full || selective) {
                problems.push(Violation::new(
                    "mode",
                    "a restore to a new data directory restores the whole cluster (mode full)",
                ));
            }
        } else {
            if point != RecoveryPoint::Latest {
                problems.push(Violation::new(
                    "point_in_time",
                    format!("a {db_type} database is restored to its backups' own points; name a backup_id"),
                ));
            }
            if mode != RestoreMode::Full {
                problems.push(Violation::new(
                    "mode",
                    format!("a {db_type} database is restored whole (mode full)"),
                ));
            }
        }
        if let Some(agent) = &self.agent_id {
            if let Err(e) = check_slug(agent) {
                problems.push(Violation::new("agent_id", e));
            }
        }
        let hours = self.expires_in_hours.unwrap_or(DEFAULT_EXPIRY_HOURS);
        if !(1..=MAX_EXPIRY_HOURS).contains(&hours) {
            problems.push(Violation::new(
                "expires_in_hours",
                format!("from 1 to {MAX_EXPIRY_HOURS}"),
            ));
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Checked {
            point,
            mode,
            target,
            reason,
            expires_in: Duration::hours(hours as i64),
        })
    }
}

/// `latest`, an RFC 3339 time or an LSN.
pub fn parse_point(s: &str) -> Result<RecoveryPoint, String> {
    if s == "latest" {
        return Ok(RecoveryPoint::Latest);
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(RecoveryPoint::Time(t.with_timezone(&Utc)));
    }
    let lsn = s.split_once('/').is_some_and(|(a, b)| {
        (1..=8).contains(&a.len())
            && (1..=8).contains(&b.len())
            && a.chars().chain(b.chars()).all(|c| c.is_ascii_hexdigit())
    });
    if lsn {
        return Ok(RecoveryPoint::Lsn(s.to_string()));
    }
    Err(format!(
        "{s:?} is neither `latest`, an RFC 3339 time such as 2026-11-23T09:15:00Z, nor a WAL position such as 0/3000148"
    ))
}

/// What a restore to `target` replaces, when anything: the name the confirmation must give.
pub fn replaced(database_id: &str, target: &RestoreTarget) -> Option<String> {
    match target {
        RestoreTarget::InPlace => Some(database_id.to_string()),
        RestoreTarget::Database { name } => Some(name.clone()),
        RestoreTarget::Location { .. } => None,
    }
}

/// Checks the confirmation against what is replaced. For a `database` target it is optional (the
/// named database may not exist; the agent refuses to replace one without it).
pub fn check_confirmation(
    database_id: &str,
    target: &RestoreTarget,
    confirm: Option<&str>,
) -> Result<bool, Violation> {
    let Some(replaced) = replaced(database_id, target) else {
        return match confirm {
            None => Ok(false),
            Some(_) => Err(Violation::new(
                "confirm",
                "a restore to a new location replaces nothing; leave confirm out",
            )),
        };
    };
    match confirm {
        Some(c) if c == replaced => Ok(true),
        Some(c) => Err(Violation::new(
            "confirm",
            format!("{c:?} is not the database being replaced; to replace it, confirm with \"{replaced}\""),
        )),
        None if matches!(target, RestoreTarget::InPlace) => Err(Violation::new(
            "confirm",
            format!("this restore replaces database '{replaced}' (a pre-restore backup of it is taken first); confirm with \"{replaced}\""),
        )),
        None => Ok(false),
    }
}

/// Refuses a point outside what the catalog and the archived WAL can reach.
pub fn check_point(
    point: &RecoveryPoint,
    window: Option<&RecoverableWindow>,
) -> Result<(), Violation> {
    let Some(w) = window else {
        return Err(Violation::new(
            "database_id",
            "the database has no good backup to restore",
        ));
    };
    let RecoveryPoint::Time(t) = point else {
        return Ok(());
    };
    let from = match (w.point_in_time, w.point_in_time_from) {
        (true, Some(from)) => from,
        _ => {
            return Err(Violation::new(
                "point_in_time",
                "the database has no physical base backup with archived WAL: restore a backup_id instead",
            ))
        }
    };
    if *t < from || *t > w.latest {
        return Err(Violation::new(
            "point_in_time",
            format!(
                "{} is outside the recoverable window {} to {}",
                t.to_rfc3339(),
                from.to_rfc3339(),
                w.latest.to_rfc3339()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(json: serde_json::Value) -> RestoreBody {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn requests_are_refused_for_what_they_lack_before_anything_is_looked_up() {
        let e = body(serde_json::json!({"database_id": "crm"}))
            .check(DatabaseType::Postgresql)
            .unwrap_err();
        assert_eq!(e[0].path, "reason");
        let e = body(serde_json::json!({"database_id": "crm", "reason": "x",
            "point_in_time": "2026-11-23T09:15:00Z"}))
        .check(DatabaseType::Postgresql)
        .unwrap_err();
        assert!(e[0].problem.contains("location"), "{e:?}");
        let ok = body(
            serde_json::json!({"database_id": "crm", "reason": "bad deploy",
            "point_in_time": "0/3000148",
            "target": {"type": "location", "path": "/srv/pg", "port": 5499}}),
        )
        .check(DatabaseType::Postgresql)
        .unwrap();
        assert_eq!(ok.point, RecoveryPoint::Lsn("0/3000148".into()));
        let e = body(serde_json::json!({"database_id": "x", "reason": "r", "mode": "selective"}))
            .check(DatabaseType::Postgresql)
            .unwrap_err();
        assert_eq!(e[0].path, "schemas");
        let e = body(serde_json::json!({"database_id": "x", "reason": "r",
            "target": {"type": "database", "name": "copy"}}))
        .check(DatabaseType::Sqlite)
        .unwrap_err();
        assert_eq!(e[0].path, "target");
        assert!(parse_point("yesterday").is_err());
    }

    #[test]
    fn the_confirmation_must_name_what_is_replaced() {
        let in_place = RestoreTarget::InPlace;
        assert!(check_confirmation("crm", &in_place, None).is_err());
        assert!(check_confirmation("crm", &in_place, Some("orders")).is_err());
        assert_eq!(check_confirmation("crm", &in_place, Some("crm")), Ok(true));
        let copy = RestoreTarget::Database {
            name: "crm_copy".into(),
        };
        assert_eq!(check_confirmation("crm", &copy, None), Ok(false));
        assert!(check_confirmation("crm", &copy, Some("crm")).is_err());
    }

    #[test]
    fn points_outside_the_window_are_refused() {
        let now = Utc::now();
        let w = RecoverableWindow {
            earliest: now - Duration::hours(5),
            latest: now,
            point_in_time: true,
            point_in_time_from: Some(now - Duration::hours(5)),
            good_backups: 1,
            last_wal_file: None,
            last_wal_archived_at: None,
        };
        let at = |h: i64| RecoveryPoint::Time(now - Duration::hours(h));
        assert!(check_point(&at(1), Some(&w)).is_ok());
        assert!(check_point(&at(6), Some(&w)).is_err());
        assert!(check_point(&RecoveryPoint::Time(now + Duration::hours(1)), Some(&w)).is_err());
        assert!(check_point(&RecoveryPoint::Latest, None).is_err());
    }
}

//! The compliance report: for each database, what its policies promise (RPO, retention,
//! drills) against what the catalog, the archived WAL and the last drill show, and — when a
//! promise is not kept — why, in words an auditor can read.
//!
//! The judgement is a pure function of facts the API gathers, so the rules are tested here and
//! the JSON and CSV answers cannot disagree. A database passes when every rule holds; the
//! reasons list each that does not. Where a policy names no RPO target, 1.5× its backup
//! interval is the target (what a missed run would exceed).

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::Serialize;
use utoipa::ToSchema;

use super::backup::{BackupRecord, Verification};
use super::database::{Database, DatabaseType};
use super::drill::Drill;
use super::pitr::{self, WalSeen};
use super::policy::Policy;
use super::schedule::{human, Frequency};

/// How repositories are encrypted (every repository; there is no unencrypted mode).
pub const ENCRYPTION: &str = "XChaCha20-Poly1305, per-workspace key";

/// What the report is judged from, for one database.
pub struct Facts<'a> {
    pub database: &'a Database,
    pub policies: Vec<&'a Policy>,
    pub backups: &'a [BackupRecord],
    pub wal: Option<&'a WalSeen>,
    /// The newest drill that ended.
    pub last_drill: Option<&'a Drill>,
    /// Whether the repository of the newest backup's storage exists (so has its key slots).
    pub repository_exists: Option<bool>,
    pub open_alerts: Vec<String>,
}

/// One database's line of the report.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct ComplianceRow {
    pub database_id: String,
    pub db_type: DatabaseType,
    pub policies: Vec<String>,
    pub rpo_target_minutes: Option<u32>,
    /// `policy` (its rpo_target_minutes) or `frequency` (1.5× the backup interval).
    pub rpo_target_from: Option<&'static str>,
    /// Age of the newest restorable point (good backup or archived WAL), in seconds.
    pub rpo_measured_secs: Option<i64>,
    pub newest_restorable_point: Option<DateTime<Utc>>,
    pub retention_target_days: Option<u32>,
    pub min_snapshots: Option<u32>,
    pub good_backups: usize,
    pub oldest_restorable_point: Option<DateTime<Utc>>,
    /// Any second from `point_in_time_from` on can be restored.
    pub point_in_time_from: Option<DateTime<Utc>>,
    pub encryption: &'static str,
    /// The key slots of the repository: the workspace key and the recovery key.
    pub key_slots: &'static str,
    pub last_verified_at: Option<DateTime<Utc>>,
    pub last_verify: Option<&'static str>,
    pub last_drill_id: Option<String>,
    pub last_drill_status: Option<&'static str>,
    pub last_drill_at: Option<DateTime<Utc>>,
    pub last_drill_rto_secs: Option<f64>,
    pub rto_target_minutes: Option<u32>,
    pub last_drill_rpo_secs: Option<f64>,
    pub last_drill_targets_met: Option<bool>,
    /// Open alerts of the database's workspace, by kind.
    pub open_alerts: Vec<String>,
    pub compliant: bool,
    pub reasons: Vec<String>,
}

fn gap_seconds(frequency: &str, timezone: &str) -> Option<i64> {
    let tz: Tz = timezone.parse().unwrap_or(Tz::UTC);
    frequency
        .parse::<Frequency>()
        .and_then(|f| f.cadence(tz))
        .ok()
        .map(|c| c.avg_gap_seconds)
}

/// Judges one database at `now`.
pub fn judge(f: &Facts<'_>, now: DateTime<Utc>) -> ComplianceRow {
    let mut reasons = Vec::new();
    let enabled: Vec<&Policy> = f.policies.iter().copied().filter(|p| p.enabled).collect();
    if enabled.is_empty() {
        reasons.push("no enabled backup policy".to_string());
    }
    let window = pitr::window(f.backups, f.wal);
    let good = f.backups.iter().filter(|b| b.is_good()).count();
    if good == 0 {
        reasons.push("no good backup to restore".to_string());
    }

    // RPO: the policy's target, else 1.5× the shortest backup interval.
    let by_policy = enabled.iter().filter_map(|p| p.rpo_target_minutes).min();
    let by_frequency = enabled
        .iter()
        .filter_map(|p| gap_seconds(&p.schedule.frequency, &p.timezone))
        .min()
        .map(|gap| ((gap * 3 / 2 + 59) / 60) as u32);
    let (rpo_target, rpo_from) = match (by_policy, by_frequency) {
        (Some(t), _) => (Some(t), Some("policy")),
        (None, Some(t)) => (Some(t), Some("frequency")),
        (None, None) => (None, None),
    };
    let newest = window.as_ref().map(|w| w.latest);
    let rpo_measured = newest.map(|t| (now - t).num_seconds().max(0));
    if let (Some(target), Some(age)) = (rpo_target, rpo_measured) {
        if age > i64::from(target) * 60 {
            reasons.push(format!(
                "the newest restorable point is {} old; the RPO target is {target} min",
                human(age)
            ));
        }
    }

    let retention_days = enabled.iter().map(|p| p.retention.period_days).max();
    let min_snapshots = enabled.iter().map(|p| p.retention.min_snapshots).max();
    if let Some(min) = min_snapshots {
        if good > 0 && good < min as usize {
            reasons.push(format!(
                "holds {good} good backup(s); retention asks to keep at least {min}"
            ));
        }
    }

    let verified = f
        .backups
        .iter()
        .filter(|b| b.verified_at.is_some())
        .max_by_key(|b| b.verified_at);
    let last_verify = verified.and_then(|b| b.verification).map(|v| match v {
        Verification::Intact => "intact",
        Verification::Damaged => "damaged",
    });
    if let Some(b) = verified.filter(|b| b.verification == Some(Verification::Damaged)) {
        reasons.push(format!("the last verify found backup {} damaged", b.id));
    }

    let drilled: Vec<&Policy> = enabled
        .iter()
        .copied()
        .filter(|p| p.drill.is_some())
        .collect();
    match f.last_drill {
        None if !drilled.is_empty() => reasons.push("no restore drill has run yet".to_string()),
        None => {}
        Some(d) if !d.proves() => reasons.push(match (&d.error, d.misses.is_empty()) {
            (Some(e), _) => format!("the last drill ({}) failed: {}", d.id, first_line(e)),
            (None, false) => format!(
                "the last drill ({}) missed its targets: {}",
                d.id,
                d.misses.join("; ")
            ),
            (None, true) => format!("the last drill ({}) did not pass", d.id),
        }),
        Some(d) => {
            // Overdue: older than twice the shortest drill interval.
            let gap = drilled
                .iter()
                .filter_map(|p| gap_seconds(&p.drill.as_ref()?.frequency, &p.timezone))
                .min();
            let at = d.finished_at.unwrap_or(d.created_at);
            if let Some(gap) = gap {
                let age = (now - at).num_seconds();
                if age > 2 * gap {
                    reasons.push(format!(
                        "the last drill ({}) is {} old; drills are due every {}",
                        d.id,
                        human(age),
                        human(gap)
                    ));
                }
            }
        }
    }

    ComplianceRow {
        database_id: f.database.id.clone(),
        db_type: f.database.db_type,
        policies: f.policies.iter().map(|p| p.id.clone()).collect(),
        rpo_target_minutes: rpo_target,
        rpo_target_from: rpo_from,
        rpo_measured_secs: rpo_measured,
        newest_restorable_point: newest,
        retention_target_days: retention_days,
        min_snapshots,
        good_backups: good,
        oldest_restorable_point: window.as_ref().map(|w| w.earliest),
        point_in_time_from: window.as_ref().and_then(|w| w.point_in_time_from),
        encryption: ENCRYPTION,
        key_slots: match f.repository_exists {
            Some(true) => "workspace key, recovery key",
            Some(false) => "none yet (the first backup creates the repository)",
            None => "no repository in use",
        },
        last_verified_at: verified.and_then(|b| b.verified_at),
        last_verify,
        last_drill_id: f.last_drill.map(|d| d.id.clone()),
        last_drill_status: f.last_drill.map(|d| d.status.as_str()),
        last_drill_at: f.last_drill.and_then(|d| d.finished_at),
        last_drill_rto_secs: f.last_drill.and_then(|d| d.rto_secs),
        rto_target_minutes: enabled.iter().filter_map(|p| p.rto_target_minutes).min(),
        last_drill_rpo_secs: f.last_drill.and_then(|d| d.rpo_secs),
        last_drill_targets_met: f.last_drill.and_then(|d| d.targets_met),
        open_alerts: f.open_alerts.clone(),
        compliant: reasons.is_empty(),
        reasons,
    }
}

fn first_line(s: &str) -> &str {
    let line = s.lines().next().unwrap_or_default();
    match line.char_indices().nth(300) {
        Some((i, _)) => &line[..i],
        None => line,
    }
}

/// The CSV columns, in order.
pub const CSV_HEADER: [&str; 27] = [
    "database_id",
    "db_type",
    "compliant",
    "reasons",
    "policies",
    "rpo_target_minutes",
    "rpo_target_from",
    "rpo_measured_secs",
    "newest_restorable_point",
    "retention_target_days",
    "min_snapshots",
    "good_backups",
    "oldest_restorable_point",
    "point_in_time_from",
    "encryption",
    "key_slots",
    "last_verified_at",
    "last_verify",
    "last_drill_id",
    "last_drill_status",
    "last_drill_at",
    "last_drill_rto_secs",
    "rto_target_minutes",
    "last_drill_rpo_secs",
    "last_drill_targets_met",
    "open_alerts",
    "workspace_id",
];

impl ComplianceRow {
    /// The row as CSV fields (lists joined with "; ", absent values empty, times RFC 3339).
    pub fn csv_fields(&self, workspace: &str) -> Vec<String> {
        fn opt<T: ToString>(v: Option<T>) -> String {
            v.map(|v| v.to_string()).unwrap_or_default()
        }
        let time = |t: Option<DateTime<Utc>>| {
            opt(t.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)))
        };
        let secs = |s: Option<f64>| opt(s.map(|s| format!("{s:.1}")));
        vec![
            self.database_id.clone(),
            self.db_type.as_str().to_string(),
            self.compliant.to_string(),
            self.reasons.join("; "),
            self.policies.join("; "),
            opt(self.rpo_target_minutes),
            opt(self.rpo_target_from),
            opt(self.rpo_measured_secs),
            time(self.newest_restorable_point),
            opt(self.retention_target_days),
            opt(self.min_snapshots),
            self.good_backups.to_string(),
            time(self.oldest_restorable_point),
            time(self.point_in_time_from),
            self.encryption.to_string(),
            self.key_slots.to_string(),
            time(self.last_verified_at),
            opt(self.last_verify),
            opt(self.last_drill_id.clone()),
            opt(self.last_drill_status),
            time(self.last_drill_at),
            secs(self.last_drill_rto_secs),
            opt(self.rto_target_minutes),
            secs(self.last_drill_rpo_secs),
            opt(self.last_drill_targets_met),
            self.open_alerts.join("; "),
            workspace.to_string(),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    fn database() -> Database {
        serde_json::from_value(serde_json::json!({
            "id": "shop", "workspace_id": "acme", "db_type": "sqlite", "agent_id": null,
            "connection": {}, "secrets": {}, "labels": {}, "description": null,
            "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z"
        }))
        .expect("a database")
    }

    fn policy(extra: serde_json::Value) -> Policy {
        let mut v = serde_json::json!({
            "id": "pol_1", "workspace_id": "acme", "db_identifier": "shop", "db_type": "sqlite",
            "schedule": {"frequency": "daily", "preferred_window": "00:00-24:00", "priority": "normal"},
            "retention": {"period_days": 30, "min_snapshots": 2},
            "timezone": "UTC", "backup_method": "physical", "pitr": false,
            "verify_after_backup": false, "require_restore_approval": false, "enabled": true,
            "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z"
        });
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        serde_json::from_value(v).expect("a policy")
    }

    fn backup(id: &str, hours_ago: i64, now: DateTime<Utc>) -> BackupRecord {
        serde_json::from_value(serde_json::json!({
            "id": id, "workspace_id": "acme", "database_id": "shop", "db_type": "sqlite",
            "kind": "automatic", "status": "succeeded",
            "started_at": now - Duration::hours(hours_ago),
            "finished_at": now - Duration::hours(hours_ago),
            "snapshot": format!("backup-{id}"), "logical_bytes": 1, "stored_bytes": 1
        }))
        .expect("a backup")
    }

    #[test]
    fn each_broken_promise_is_a_reason() {
        let now = Utc::now();
        let db = database();
        let p = policy(serde_json::json!({}));
        let backups = vec![backup("a", 50, now), backup("b", 10, now)];
        let facts = Facts {
            database: &db,
            policies: vec![&p],
            backups: &backups,
            wal: None,
            last_drill: None,
            repository_exists: Some(true),
            open_alerts: vec![],
        };
        let row = judge(&facts, now);
        assert!(row.compliant, "{:?}", row.reasons);
        assert_eq!(
            (row.rpo_target_minutes, row.rpo_target_from),
            (Some(36 * 60), Some("frequency"))
        );
        assert_eq!(row.rpo_measured_secs, Some(10 * 3600));

        // A tighter RPO target, one backup too few, a drill block without a drill.
        let p = policy(
            serde_json::json!({"rpo_target_minutes": 60, "retention": {"period_days": 30, "min_snapshots": 3},
            "drill": {"frequency": "weekly", "point": "latest", "integrity": true, "row_counts": true}}),
        );
        let facts = Facts {
            policies: vec![&p],
            ..facts
        };
        let row = judge(&facts, now);
        assert!(!row.compliant);
        assert_eq!(row.reasons.len(), 3, "{:?}", row.reasons);
        assert!(
            row.reasons[0].contains("RPO target is 60 min"),
            "{:?}",
            row.reasons
        );
        assert!(row.reasons[1].contains("at least 3"), "{:?}", row.reasons);
        assert!(
            row.reasons[2].contains("no restore drill"),
            "{:?}",
            row.reasons
        );
        let fields = row.csv_fields("acme");
        assert_eq!(fields.len(), CSV_HEADER.len());
        assert_eq!(fields[2], "false");
    }
}

//! Which catalog entries a database's retention removes — decided here, from the catalog,
//! and carried out by an agent as a `forget` job.
//!
//! The repository's own planner (`bulwark_core::retention`) does the counting; this module
//! decides what it may count. The rules that make retention safe to run unattended live here
//! because they need the catalog, which the repository does not have:
//! - only a policy's own automatic backups are its to remove; manual and pre-restore backups
//!   stay until someone deletes them;
//! - a damaged snapshot (a verify found it so) never counts as one of the good copies
//!   `min_snapshots` protects, and retention leaves it for a person to look at;
//! - while the newest backup of the policy failed, nothing is removed (seed 004: "if backups
//!   fail, don't delete the existing backups"): the old copies may be all there is.
//!
//! A plan is a value: `GET /api/v1/databases/{id}/retention` shows it, the scheduler turns its
//! removals into a forget job.

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use super::backup::{BackupRecord, BackupStatus, SnapshotKind, Verification};
use super::policy::Policy;

/// The decision for one catalog entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct EntryDecision {
    pub backup_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    pub started_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_id: Option<String>,
    pub keep: bool,
    /// Every rule that keeps it, or why it goes.
    pub reasons: Vec<String>,
}

/// What the next retention run of one database would do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct RetentionPlan {
    pub database_id: String,
    /// Set when nothing is removed whatever the rules say, and why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held: Option<String>,
    /// Newest first.
    pub entries: Vec<EntryDecision>,
}

impl RetentionPlan {
    /// The entries the run removes.
    pub fn removals(&self) -> impl Iterator<Item = &EntryDecision> {
        self.entries.iter().filter(|e| !e.keep)
    }
}

/// The repository planner's rules for a policy: `period_days` keeps everything that young,
/// `min_snapshots` the newest good ones whatever their age, and the optional `keep_*` counts
/// add periodic copies beyond the period.
pub fn rules_of(policy: &Policy) -> bulwark_core::retention::Rules {
    bulwark_core::retention::Rules {
        keep_last: policy.keep_last.unwrap_or(0),
        keep_hourly: 0,
        keep_daily: policy.keep_daily.unwrap_or(0),
        keep_weekly: policy.keep_weekly.unwrap_or(0),
        keep_monthly: policy.keep_monthly.unwrap_or(0),
        keep_yearly: policy.keep_yearly.unwrap_or(0),
        keep_within: Some(Duration::days(i64::from(policy.retention.period_days))),
        keep_min: policy.retention.min_snapshots,
    }
}

/// Plans retention for one database from its catalog entries (any order) and its policies.
pub fn plan(
    database_id: &str,
    policies: &[Policy],
    backups: &[BackupRecord],
    now: DateTime<Utc>,
) -> RetentionPlan {
    let mut entries = Vec::new();
    let mut held = None;
    let mine: Vec<&BackupRecord> = backups
        .iter()
        .filter(|b| b.database_id == database_id && b.forget_job.is_none())
        .collect();
    for b in &mine {
        if b.kind != SnapshotKind::Automatic && b.status == BackupStatus::Succeeded {
            entries.push(decision(
                b,
                true,
                format!("{}: kept until deleted by hand", b.kind),
            ));
        }
    }
    for policy in policies {
        let of_policy: Vec<&BackupRecord> = mine
            .iter()
            .copied()
            .filter(|b| {
                b.kind == SnapshotKind::Automatic && b.policy_id.as_deref() == Some(&policy.id)
            })
            .collect();
        let newest_finished = of_policy
            .iter()
            .filter(|b| b.status != BackupStatus::Running)
            .max_by_key(|b| (b.started_at, b.id.clone()));
        let policy_held = newest_finished
            .filter(|b| b.status == BackupStatus::Failed)
            .map(|b| {
                format!(
                    "the newest backup of policy {} failed (started {}): nothing is removed until one succeeds",
                    policy.id,
                    b.started_at.format("%Y-%m-%d %H:%M:%SZ")
                )
            });
        let good: Vec<(String, DateTime<Utc>)> = of_policy
            .iter()
            .filter(|b| b.is_good())
            .map(|b| (b.id.clone(), b.started_at))
            .collect();
        let decided = bulwark_core::retention::plan(&good, &rules_of(policy), now);
        for d in decided {
            let Some(b) = of_policy.iter().find(|b| b.id == d.name) else {
                continue;
            };
            let mut e = EntryDecision {
                keep: d.keep,
                reasons: d.reasons,
                ..decision(b, true, String::new())
            };
            e.reasons.retain(|r| !r.is_empty());
            if let Some(why) = &policy_held {
                if !e.keep {
                    e.keep = true;
                    e.reasons = vec![why.clone()];
                }
            }
            entries.push(e);
        }
        for b in of_policy.iter().filter(|b| {
            b.status == BackupStatus::Succeeded && b.verification == Some(Verification::Damaged)
        }) {
            entries.push(decision(
                b,
                true,
                "damaged (a verify found it so): never counted as a good copy; delete it by hand"
                    .into(),
            ));
        }
        if held.is_none() {
            held = policy_held;
        }
    }
    entries.sort_by(|a, b| {
        b.started_at
            .cmp(&a.started_at)
            .then_with(|| b.backup_id.cmp(&a.backup_id))
    });
    RetentionPlan {
        database_id: database_id.to_string(),
        held,
        entries,
    }
}

fn decision(b: &BackupRecord, keep: bool, reason: String) -> EntryDecision {
    EntryDecision {
        backup_id: b.id.clone(),
        snapshot: b.snapshot.clone(),
        started_at: b.started_at,
        policy_id: b.policy_id.clone(),
        keep,
        reasons: vec![reason],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::database::DatabaseType;

    fn policy(period_days: u32, min: u32) -> Policy {
        let mut p: Policy = serde_json::from_value(serde_json::json!({
            "id": "p1", "workspace_id": "ws", "db_identifier": "db", "db_type": "sqlite",
            "schedule": {"frequency": "daily", "preferred_window": "00:00-06:00", "priority": "normal"},
            "retention": {"period_days": period_days, "min_snapshots": min},
            "timezone": "UTC", "backup_method": "physical", "pitr": false,
            "verify_after_backup": false, "require_restore_approval": false, "enabled": true,
            "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z"
        }))
        .expect("a policy");
        p.retention.period_days = period_days;
        p
    }

    fn backup(id: &str, days_ago: i64, status: BackupStatus, now: DateTime<Utc>) -> BackupRecord {
        BackupRecord {
            id: id.into(),
            workspace_id: "ws".into(),
            database_id: "db".into(),
            db_type: DatabaseType::Sqlite,
            kind: SnapshotKind::Automatic,
            status,
            started_at: now - Duration::days(days_ago),
            finished_at: Some(now - Duration::days(days_ago)),
            snapshot: (status == BackupStatus::Succeeded).then(|| format!("backup-{id}")),
            policy_id: Some("p1".into()),
            storage_id: Some("nfs".into()),
            method: None,
            logical_bytes: 1,
            stored_bytes: 1,
            error: None,
            job_id: Some(id.into()),
            notes: None,
            tags: Default::default(),
            verified_at: None,
            verification: None,
            forget_job: None,
        }
    }

    fn kept(plan: &RetentionPlan) -> Vec<&str> {
        plan.entries
            .iter()
            .filter(|e| e.keep)
            .map(|e| e.backup_id.as_str())
            .collect()
    }

    #[test]
    fn period_min_and_manual_backups() {
        let now = Utc::now();
        let mut all: Vec<BackupRecord> = (0..6)
            .map(|d| backup(&format!("b{d}"), d, BackupStatus::Succeeded, now))
            .collect();
        let mut manual = backup("m", 30, BackupStatus::Succeeded, now);
        manual.kind = SnapshotKind::Manual;
        all.push(manual);
        let plan = plan("db", &[policy(2, 1)], &all, now);
        assert_eq!(plan.held, None);
        // Within 2 days: b0, b1 (b2 is exactly 2 days old: kept by `within` too).
        assert_eq!(kept(&plan), vec!["b0", "b1", "b2", "m"]);
        assert!(
            plan.removals()
                .all(|e| e.reasons[0].contains("no keep rule")),
            "{plan:?}"
        );
    }

    #[test]
    fn a_failing_policy_removes_nothing_and_damage_never_counts() {
        let now = Utc::now();
        let mut all: Vec<BackupRecord> = (1..6)
            .map(|d| backup(&format!("b{d}"), d, BackupStatus::Succeeded, now))
            .collect();
        all.push(backup("f", 0, BackupStatus::Failed, now));
        let failing = plan("db", &[policy(1, 1)], &all, now);
        assert!(failing.held.is_some());
        assert_eq!(failing.removals().count(), 0, "{failing:?}");

        // The newest two succeeded but the newest is damaged: min 1 keeps b1, not b0.
        all.retain(|b| b.id != "f");
        all.push(backup("b0", 0, BackupStatus::Succeeded, now));
        all.last_mut().unwrap().verification = Some(Verification::Damaged);
        let p = plan("db", &[policy(1, 1)], &all, now);
        let b0 = p.entries.iter().find(|e| e.backup_id == "b0").unwrap();
        assert!(b0.keep && b0.reasons[0].contains("damaged"));
        let b1 = p.entries.iter().find(|e| e.backup_id == "b1").unwrap();
        assert!(b1.keep, "the newest good copy is kept: {p:?}");
        assert_eq!(p.removals().count(), 4, "{p:?}");
    }
}

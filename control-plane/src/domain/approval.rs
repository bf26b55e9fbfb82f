//! Four eyes for destructive acts: when a workspace turns it on ([`Safeguards::four_eyes`]),
//! deleting a manual backup, shortening a policy's retention, deleting a backup storage and
//! replacing the recovery key do not happen when asked. The request is checked as before and
//! stored as an [`Approval`]: what would be done, by whom, why. A second admin of the workspace
//! (never the requester) approves — and the act is carried out then, by the same code the
//! endpoint runs — or rejects; the requester may cancel; nobody deciding lets it expire.
//!
//! Why a stored pending action and not a client-side two-step ("are you sure?"): the second
//! person is a different session, maybe hours later, so the request must outlive the first
//! one; what is approved must be exactly what was requested (the stored action, not a body sent
//! again); and the audit log must hold both people. A secret an act carries (a chosen recovery
//! passphrase) is kept sealed beside the record, never in it.
//!
//! [`Safeguards::four_eyes`]: super::workspace::Safeguards

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::policy::Policy;
pub use super::restore::{Decision, Person, DEFAULT_EXPIRY_HOURS};
use super::{check_text, Violation};

/// The query parameter a guarded request gives its reason in (`?reason=…`).
pub const REASON_PARAM: &str = "reason";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalKind {
    DeleteBackup,
    ShortenRetention,
    DeleteStorage,
    ReplaceRecoveryKey,
}

/// What is carried out once approved. Holds no secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Action {
    /// `DELETE /api/v1/backups/{backup_id}`.
    DeleteBackup { backup_id: String },
    /// `PUT /api/v1/policies/{policy_id}` with `after`; approved only while the policy is still
    /// `before` (a policy changed meanwhile would make the approval mean something else).
    ShortenRetention {
        policy_id: String,
        /// What keeps less than before (see [`shortened`]).
        shortened: Vec<String>,
        before: Box<Policy>,
        after: Box<Policy>,
    },
    /// `DELETE /api/v1/workspaces/{ws}/backup-storages/{storage_id}`.
    DeleteStorage { storage_id: String },
    /// `PUT /api/v1/workspaces/{ws}/recovery-key`: the chosen passphrase is kept sealed apart.
    ReplaceRecoveryKey {},
}

impl Action {
    pub fn kind(&self) -> ApprovalKind {
        match self {
            Action::DeleteBackup { .. } => ApprovalKind::DeleteBackup,
            Action::ShortenRetention { .. } => ApprovalKind::ShortenRetention,
            Action::DeleteStorage { .. } => ApprovalKind::DeleteStorage,
            Action::ReplaceRecoveryKey {} => ApprovalKind::ReplaceRecoveryKey,
        }
    }

    /// The object acted on, as the audit log names it: (type, id).
    pub fn target<'a>(&'a self, workspace: &'a str) -> (&'static str, &'a str) {
        match self {
            Action::DeleteBackup { backup_id } => ("backup", backup_id),
            Action::ShortenRetention { policy_id, .. } => ("policy", policy_id),
            Action::DeleteStorage { storage_id } => ("backup_storage", storage_id),
            Action::ReplaceRecoveryKey {} => ("workspace", workspace),
        }
    }

    /// One line for people: what approving does.
    pub fn describe(&self, workspace: &str) -> String {
        match self {
            Action::DeleteBackup { backup_id } => format!("delete backup '{backup_id}'"),
            Action::ShortenRetention {
                policy_id,
                shortened,
                ..
            } => format!(
                "shorten the retention of policy '{policy_id}' ({})",
                shortened.join(", ")
            ),
            Action::DeleteStorage { storage_id } => {
                format!("delete backup storage '{storage_id}' of workspace '{workspace}'")
            }
            Action::ReplaceRecoveryKey {} => {
                format!("replace the recovery key of workspace '{workspace}'")
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalStatus {
    PendingApproval,
    /// Approved and being carried out; it stays so only if the control plane stopped midway.
    Approved,
    CarriedOut,
    /// Approved, but the act was refused when carried out (`error` says why).
    Failed,
    Rejected,
    Cancelled,
    Expired,
}

impl ApprovalStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalStatus::PendingApproval => "pending_approval",
            ApprovalStatus::Approved => "approved",
            ApprovalStatus::CarriedOut => "carried_out",
            ApprovalStatus::Failed => "failed",
            ApprovalStatus::Rejected => "rejected",
            ApprovalStatus::Cancelled => "cancelled",
            ApprovalStatus::Expired => "expired",
        }
    }
}

/// A destructive act waiting for (or decided by) a second person.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Approval {
    pub id: String,
    pub workspace_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_id: Option<String>,
    /// `{"kind": "delete_backup", "backup_id": …}`, `{"kind": "shorten_retention", "policy_id",
    /// "shortened", "before", "after"}`, `{"kind": "delete_storage", "storage_id"}` or
    /// `{"kind": "replace_recovery_key"}`.
    #[schema(value_type = Object)]
    pub action: Action,
    /// What approving does, in words.
    pub summary: String,
    pub reason: String,
    pub requested_by: Person,
    pub requested_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub status: ApprovalStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<Decision>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancelled_by: Option<Person>,
    /// The canceller's note.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel_note: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    /// What carrying it out gave (e.g. the forget job deleting the snapshot).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub result: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The reason a guarded request must give (`?reason=`), trimmed.
pub fn check_reason(reason: Option<&str>) -> Result<String, Vec<Violation>> {
    let Some(r) = reason.map(str::trim).filter(|r| !r.is_empty()) else {
        return Err(vec![Violation::new(
            REASON_PARAM,
            "four eyes are on for this workspace: say why in the query parameter ?reason=… (a second admin reads it before approving)",
        )]);
    };
    let mut problems = Vec::new();
    check_text(&mut problems, REASON_PARAM, r, 1000);
    if problems.is_empty() {
        Ok(r.to_string())
    } else {
        Err(problems)
    }
}

/// Where `after` keeps less than `before`, one line each; empty: not shorter.
///
/// Shorter means any of: `retention.period_days` or `retention.min_snapshots` lowered, or a
/// `keep_*` count lowered or removed (a removed count keeps none of those copies). Raising or
/// adding a count, or changing anything else, is not shorter — even if another count is lowered
/// in the same change, the lowered one is named: any loss needs the second person.
pub fn shortened(before: &Policy, after: &Policy) -> Vec<String> {
    let mut out = Vec::new();
    let mut lower = |name: &str, was: Option<u32>, now: Option<u32>| match (was, now) {
        (Some(w), None) => out.push(format!("{name} {w} removed")),
        (Some(w), Some(n)) if n < w => out.push(format!("{name} {w} → {n}")),
        _ => {}
    };
    lower(
        "retention.period_days",
        Some(before.retention.period_days),
        Some(after.retention.period_days),
    );
    lower(
        "retention.min_snapshots",
        Some(before.retention.min_snapshots),
        Some(after.retention.min_snapshots),
    );
    lower("keep_last", before.keep_last, after.keep_last);
    lower("keep_daily", before.keep_daily, after.keep_daily);
    lower("keep_weekly", before.keep_weekly, after.keep_weekly);
    lower("keep_monthly", before.keep_monthly, after.keep_monthly);
    lower("keep_yearly", before.keep_yearly, after.keep_yearly);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(json: serde_json::Value) -> Policy {
        let mut base = serde_json::json!({
            "id": "pol_1", "workspace_id": "acme", "db_identifier": "crm", "db_type": "postgresql",
            "schedule": {"frequency": "daily", "preferred_window": "01:00-05:00", "priority": "normal"},
            "retention": {"period_days": 30, "min_snapshots": 7},
            "timezone": "UTC", "keep_daily": 7, "keep_weekly": 4,
            "backup_method": "logical", "pitr": false, "verify_after_backup": false,
            "require_restore_approval": false, "enabled": true,
            "created_at": "2026-12-01T00:00:00Z", "updated_at": "2026-12-01T00:00:00Z",
        });
        for (k, v) in json.as_object().unwrap() {
            if v.is_null() {
                base.as_object_mut().unwrap().remove(k);
            } else {
                base[k] = v.clone();
            }
        }
        serde_json::from_value(base).expect("a policy")
    }

    #[test]
    fn shorter_retention_is_any_count_lowered_or_removed() {
        let before = policy(serde_json::json!({}));
        // (change, what is named as shortened)
        let table: &[(serde_json::Value, &[&str])] = &[
            (serde_json::json!({}), &[]),
            (serde_json::json!({"timezone": "Europe/Berlin"}), &[]),
            (
                serde_json::json!({"retention": {"period_days": 60, "min_snapshots": 9}, "keep_monthly": 12}),
                &[],
            ),
            (
                serde_json::json!({"retention": {"period_days": 7, "min_snapshots": 7}}),
                &["retention.period_days 30 → 7"],
            ),
            (
                serde_json::json!({"retention": {"period_days": 30, "min_snapshots": 1}}),
                &["retention.min_snapshots 7 → 1"],
            ),
            (
                serde_json::json!({"keep_daily": null}),
                &["keep_daily 7 removed"],
            ),
            (
                serde_json::json!({"keep_weekly": 2, "keep_yearly": 5}),
                &["keep_weekly 4 → 2"],
            ),
            (
                serde_json::json!({"retention": {"period_days": 90, "min_snapshots": 3}, "keep_daily": 30}),
                &["retention.min_snapshots 7 → 3"],
            ),
        ];
        for (change, expected) in table {
            let after = policy(change.clone());
            assert_eq!(shortened(&before, &after), *expected, "{change}");
        }
    }

    #[test]
    fn a_guarded_request_needs_a_reason() {
        let e = check_reason(None).unwrap_err();
        assert_eq!(e[0].path, "reason");
        assert!(e[0].problem.contains("?reason="), "{e:?}");
        assert!(check_reason(Some("   ")).is_err());
        assert_eq!(
            check_reason(Some(" old test data ")).unwrap(),
            "old test data"
        );
    }

    #[test]
    fn the_action_names_its_kind_and_target_and_carries_no_secret() {
        let a = Action::ReplaceRecoveryKey {};
        assert_eq!(
            serde_json::to_value(&a).unwrap(),
            serde_json::json!({"kind": "replace_recovery_key"})
        );
        assert_eq!(a.target("acme"), ("workspace", "acme"));
        let d = Action::DeleteBackup {
            backup_id: "b1".into(),
        };
        assert_eq!(d.kind(), ApprovalKind::DeleteBackup);
        let back: Action = serde_json::from_value(serde_json::to_value(&d).unwrap()).unwrap();
        assert_eq!(back, d);
    }
}

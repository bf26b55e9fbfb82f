//! Quotas and alerts. A workspace's usage is the physical bytes its repositories hold: the sum
//! of `stored_bytes` over its catalog entries (an entry leaves the catalog when its backup is
//! deleted). The store keeps it as a running counter per workspace, changed in the same
//! transaction as the catalog.
//!
//! Alerts are raised once per crossing: a kind is not raised again while one of that kind is
//! open for the workspace (for `storage_error`: for that storage), and an open alert is resolved
//! when the condition ends — usage back under its threshold (for `quota_exceeded`, under 90 %),
//! the storage active again, the usage reconcile's drift back within bounds. Notification is a
//! later issue; alerts are only recorded.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::storage::StorageUsage;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// Usage reached 80 % of the quota.
    #[serde(rename = "quota_80")]
    Quota80,
    /// Usage reached 90 % of the quota.
    #[serde(rename = "quota_90")]
    Quota90,
    /// A backup was refused at admission because it would pass the quota.
    QuotaExceeded,
    /// A backup storage is inactive, or its cluster cannot be reached.
    StorageError,
    /// A verify found a snapshot damaged (raised once per storage while open).
    VerifyFailed,
    /// The daily reconcile found the catalog's usage figure far from what the repositories
    /// were measured to hold (`domain::reconcile`).
    UsageDrift,
    /// A restore (or its pre-restore backup) failed.
    RestoreFailed,
    /// A restore drill failed its checks, or passed them later or further back than the
    /// policy's RTO / RPO targets allow.
    DrillFailed,
}

impl AlertKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::Quota80 => "quota_80",
            AlertKind::Quota90 => "quota_90",
            AlertKind::QuotaExceeded => "quota_exceeded",
            AlertKind::StorageError => "storage_error",
            AlertKind::VerifyFailed => "verify_failed",
            AlertKind::UsageDrift => "usage_drift",
            AlertKind::RestoreFailed => "restore_failed",
            AlertKind::DrillFailed => "drill_failed",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AlertState {
    Open,
    Resolved,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Alert {
    pub id: String,
    pub workspace_id: String,
    pub kind: AlertKind,
    pub state: AlertState,
    pub message: String,
    /// The backup storage a `storage_error` is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_id: Option<String>,
    pub created_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_at: Option<DateTime<Utc>>,
}

/// Usage in percent of the quota, one decimal (a zero quota is 0 % when empty, else 100 %+).
pub fn percent(used: u64, quota: u64) -> f64 {
    if quota == 0 {
        return if used == 0 { 0.0 } else { 100.0 };
    }
    ((used as f64 / quota as f64) * 1000.0).round() / 10.0
}

/// Whether `used` is at or above `pct` % of `quota` (exact integer arithmetic).
pub fn reached(used: u64, quota: u64, pct: u64) -> bool {
    used as u128 * 100 >= quota as u128 * pct as u128
}

/// For each usage-driven kind, whether its condition holds now: `(kind, holds, message)`.
/// `quota_exceeded` is raised only by a refused admission, but resolved here when usage falls
/// under 90 %.
pub fn quota_conditions(
    workspace: &str,
    used: u64,
    quota: u64,
) -> Vec<(AlertKind, Option<bool>, String)> {
    let pct = percent(used, quota);
    let msg = |level: u64| {
        format!(
            "workspace '{workspace}' uses {used} of its {quota} bytes quota ({pct} %), at or above {level} %"
        )
    };
    vec![
        (AlertKind::Quota80, Some(reached(used, quota, 80)), msg(80)),
        (AlertKind::Quota90, Some(reached(used, quota, 90)), msg(90)),
        // Never raised by usage alone; resolved once usage is under 90 % again.
        (
            AlertKind::QuotaExceeded,
            (!reached(used, quota, 90)).then_some(false),
            String::new(),
        ),
    ]
}

/// Why a backup is refused at admission, or `None` when it fits.
pub fn admission_refusal(
    workspace: &str,
    database: &str,
    used: u64,
    expected: u64,
    quota: u64,
) -> Option<String> {
    let after = used.saturating_add(expected);
    (after > quota).then(|| {
        format!(
            "backup of database '{database}' refused: workspace '{workspace}' holds {used} bytes and the backup is expected to add {expected}, which would pass its quota of {quota} bytes by {} bytes; delete backups, shorten retention or raise the quota",
            after - quota
        )
    })
}

/// `GET /api/v1/workspaces/{id}/usage`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WorkspaceUsage {
    pub workspace_id: String,
    pub quota_bytes: u64,
    /// Physical bytes the workspace's repositories hold (sum of the catalog's `stored_bytes`).
    pub used_bytes: u64,
    /// `used_bytes` in percent of `quota_bytes`, one decimal.
    pub percent: f64,
    pub storages: Vec<StorageUsageView>,
    /// The last daily reconcile of `used_bytes` with what the repositories hold (`null` before
    /// the first).
    pub reconcile: Option<super::reconcile::UsageReconcile>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StorageUsageView {
    pub id: String,
    pub pve_storage: String,
    pub capacity_bytes: u64,
    pub status: super::storage::StorageState,
    /// From the last sync with the cluster (absent before the first).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_sync: Option<StorageUsage>,
    /// What the storage's repository held when an agent last measured it (a gc, or the
    /// scheduled verify of the whole storage); `null` before the first measurement.
    pub repository_bytes: Option<u64>,
    pub repository_measured_at: Option<DateTime<Utc>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_and_admission() {
        assert!(!reached(79, 100, 80));
        assert!(reached(80, 100, 80));
        assert!(reached(u64::MAX, u64::MAX, 90));
        assert_eq!(percent(1, 3), 33.3);
        assert_eq!(percent(0, 0), 0.0);
        let c = quota_conditions("a", 85, 100);
        assert_eq!(c[0].1, Some(true));
        assert_eq!(c[1].1, Some(false));
        assert_eq!(c[2].1, Some(false));
        let c = quota_conditions("a", 95, 100);
        assert_eq!((c[0].1, c[1].1, c[2].1), (Some(true), Some(true), None));
        assert!(admission_refusal("a", "db", 90, 10, 100).is_none());
        let m = admission_refusal("a", "db", 90, 11, 100).unwrap();
        assert!(m.contains("quota of 100 bytes by 1 bytes"), "{m}");
    }
}

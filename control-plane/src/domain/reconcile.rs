//! The daily usage reconcile, as plain functions: the catalog's figure of what a workspace's
//! repositories hold, against what they were last measured to hold and what Proxmox says its
//! storages use.
//!
//! Why compare at all: the usage counter (`store::quota`) is bookkeeping — raised by each
//! backup's `stored_bytes`, lowered by each gc's `freed_bytes` — so anything that reaches a
//! repository without a job result (PostgreSQL WAL archived by `wal-push` between backups, the
//! chunks of a backup interrupted before its result, objects removed by hand) makes it drift from
//! the truth, silently, and quotas are enforced on the counter. The repository's figure is
//! measured by the agents (gc, and the scheduled verify of a whole storage: every object listed
//! and stat'ed), so it is only as fresh as the oldest of those measurements; a drift is therefore
//! only alerted on when it is large both relatively and absolutely, so a day of backups since the
//! last measurement does not raise it. Proxmox's figure is the whole storage's (other data may
//! share the export), so it is shown, never compared.
//!
//! Nothing here corrects the counter: which side is wrong is not known from the numbers alone
//! (a lost object makes the repository smaller than the truth the catalog remembers), so the
//! drift is shown and alerted on, and a person decides.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A drift is alerted on only beyond this share of the larger figure…
pub const DRIFT_ALERT_PERCENT: u64 = 10;
/// …and beyond this many bytes.
pub const DRIFT_ALERT_BYTES: u64 = 64 << 20;

/// What is known of one repository of a workspace (one backup storage, or the repository the
/// agents configure themselves).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepositoryFigure {
    /// An agent measured it to hold `bytes` at `at`.
    Measured { bytes: u64, at: DateTime<Utc> },
    /// No repository was ever made there and the catalog has nothing on it: it holds nothing.
    Empty,
    /// It may hold data, but no gc or storage-wide verify measured it yet.
    Unmeasured,
}

/// One reconcile of a workspace's usage (kept with the schedule records; shown by
/// `GET /api/v1/workspaces/{id}/usage`). A figure that is not known is `null`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UsageReconcile {
    pub checked_at: DateTime<Utc>,
    /// The usage counter: what backups added minus what gc freed.
    pub catalog_bytes: u64,
    /// What the workspace's repositories hold, summed over their last measurements; `null`
    /// while one that may hold data was never measured.
    pub repository_bytes: Option<u64>,
    /// The oldest of the measurements summed in `repository_bytes`.
    pub repository_measured_at: Option<DateTime<Utc>>,
    /// What Proxmox last reported used on the workspace's storages (the whole storages,
    /// whatever else they hold); `null` unless every storage was synced.
    pub proxmox_used_bytes: Option<u64>,
    /// `repository_bytes − catalog_bytes`: positive when the repositories hold more than the
    /// catalog counts.
    pub drift_bytes: Option<i64>,
    /// `drift_bytes` in percent of `catalog_bytes`, one decimal (`null` when the catalog counts
    /// nothing).
    pub drift_percent: Option<f64>,
}

/// The reconcile of a workspace at `now`: its counter, its repositories, and each of its
/// storages' last Proxmox `used` figure (`None`: never synced).
pub fn reconcile(
    now: DateTime<Utc>,
    catalog_bytes: u64,
    repositories: &[RepositoryFigure],
    proxmox_used: &[Option<u64>],
) -> UsageReconcile {
    let mut repository = Some(0u64);
    let mut measured_at: Option<DateTime<Utc>> = None;
    for r in repositories {
        match *r {
            RepositoryFigure::Measured { bytes, at } => {
                repository = repository.map(|sum| sum.saturating_add(bytes));
                measured_at = Some(measured_at.map_or(at, |m| m.min(at)));
            }
            RepositoryFigure::Empty => {}
            RepositoryFigure::Unmeasured => repository = None,
        }
    }
    let measured_at = repository.and(measured_at);
    let proxmox = if proxmox_used.is_empty() {
        None
    } else {
        proxmox_used
            .iter()
            .try_fold(0u64, |sum, u| u.map(|u| sum.saturating_add(u)))
    };
    let drift = repository.map(|r| i128::from(r) - i128::from(catalog_bytes));
    UsageReconcile {
        checked_at: now,
        catalog_bytes,
        repository_bytes: repository,
        repository_measured_at: measured_at,
        proxmox_used_bytes: proxmox,
        drift_bytes: drift.map(|d| d.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64),
        drift_percent: drift
            .filter(|_| catalog_bytes > 0)
            .map(|d| ((d as f64 / catalog_bytes as f64) * 1000.0).round() / 10.0),
    }
}

/// Whether `repository` and `catalog` are apart by more than [`DRIFT_ALERT_PERCENT`] % of the
/// larger and more than [`DRIFT_ALERT_BYTES`] (exact integer arithmetic).
pub fn drift_beyond_bounds(repository: u64, catalog: u64) -> bool {
    let apart = repository.abs_diff(catalog);
    let larger = repository.max(catalog);
    apart > DRIFT_ALERT_BYTES
        && u128::from(apart) * 100 > u128::from(larger) * u128::from(DRIFT_ALERT_PERCENT)
}

/// Whether the `usage_drift` alert's condition holds for `r`, with the alert's message; `None`
/// when the repositories' figure is not known (an open alert then stays as it is).
pub fn drift_condition(workspace: &str, r: &UsageReconcile) -> Option<(bool, String)> {
    let repository = r.repository_bytes?;
    let holds = drift_beyond_bounds(repository, r.catalog_bytes);
    let drift = r.drift_bytes.unwrap_or_default();
    let percent = r.drift_percent.map_or_else(String::new, |p| {
        format!(", {p:+} % of the catalog's figure")
    });
    let measured = r
        .repository_measured_at
        .map_or_else(String::new, |t| format!(" (measured at {t} or later)"));
    let proxmox = match r.proxmox_used_bytes {
        Some(u) => format!("; Proxmox reports {u} bytes used on its storages"),
        None => String::new(),
    };
    let cause = if drift > 0 {
        "the repositories hold more than job results counted: WAL archived between backups and \
         the leftovers of interrupted backups count in the repository but not in the catalog; a \
         gc removes leftovers and re-measures"
    } else {
        "the repositories hold less than the catalog counts: objects may have been removed \
         outside Bulwark (check the storage, then run a verify), or the measurement predates \
         recent backups; a gc re-measures"
    };
    Some((
        holds,
        format!(
            "workspace '{workspace}': its repositories hold {repository} bytes{measured}, the \
             catalog counts {} bytes, a drift of {drift:+} bytes{percent}{proxmox}. {cause}. \
             Quotas are enforced on the catalog's figure, which is not corrected automatically",
            r.catalog_bytes
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn at(h: i64) -> DateTime<Utc> {
        DateTime::<Utc>::from_timestamp(1_780_000_000, 0).unwrap() + chrono::Duration::hours(h)
    }

    fn measured(bytes: u64, h: i64) -> RepositoryFigure {
        RepositoryFigure::Measured { bytes, at: at(h) }
    }

    #[test]
    fn figures_sum_over_repositories_with_the_oldest_measurement() {
        let r = reconcile(
            at(30),
            1000 * MIB,
            &[
                measured(600 * MIB, 5),
                RepositoryFigure::Empty,
                measured(500 * MIB, 2),
            ],
            &[Some(2000 * MIB), Some(10)],
        );
        assert_eq!(r.checked_at, at(30));
        assert_eq!(r.repository_bytes, Some(1100 * MIB));
        assert_eq!(r.repository_measured_at, Some(at(2)));
        assert_eq!(r.proxmox_used_bytes, Some(2000 * MIB + 10));
        assert_eq!(r.drift_bytes, Some(100 * MIB as i64));
        assert_eq!(r.drift_percent, Some(10.0));
    }

    #[test]
    fn an_unmeasured_repository_leaves_the_figures_unknown() {
        let r = reconcile(
            at(0),
            5 * MIB,
            &[measured(600 * MIB, 5), RepositoryFigure::Unmeasured],
            &[Some(1), None],
        );
        assert_eq!(
            (
                r.repository_bytes,
                r.repository_measured_at,
                r.drift_bytes,
                r.drift_percent
            ),
            (None, None, None, None)
        );
        assert_eq!(r.proxmox_used_bytes, None, "one storage was never synced");
        assert_eq!(drift_condition("acme", &r), None);
        // No storages at all (the agents' own repository): no Proxmox figure either.
        let r = reconcile(at(0), 0, &[RepositoryFigure::Empty], &[]);
        assert_eq!(r.repository_bytes, Some(0));
        assert_eq!(r.repository_measured_at, None);
        assert_eq!(r.proxmox_used_bytes, None);
        assert_eq!(
            (r.drift_bytes, r.drift_percent),
            (Some(0), None),
            "no percent of nothing"
        );
    }

    #[test]
    fn drift_is_alerted_beyond_ten_percent_and_64_mib() {
        // Within 10 %, however many bytes.
        assert!(!drift_beyond_bounds(10_000 * MIB, 10_900 * MIB));
        // Beyond 10 % but not beyond 64 MiB: a small workspace's noise.
        assert!(!drift_beyond_bounds(100 * MIB, 40 * MIB));
        assert!(!drift_beyond_bounds(0, 64 * MIB));
        // Beyond both, either way round.
        assert!(drift_beyond_bounds(0, 64 * MIB + 1));
        assert!(drift_beyond_bounds(1000 * MIB, 800 * MIB));
        assert!(drift_beyond_bounds(800 * MIB, 1000 * MIB));
        // Exactly 10 % of the larger is within.
        assert!(!drift_beyond_bounds(900 * MIB, 1000 * MIB));
        assert!(drift_beyond_bounds(u64::MAX, 0));
    }

    #[test]
    fn the_message_names_the_workspace_the_figures_and_what_to_do() {
        let r = reconcile(at(9), 800 * MIB, &[measured(1000 * MIB, 1)], &[Some(7)]);
        let (holds, m) = drift_condition("acme", &r).unwrap();
        assert!(holds);
        for part in [
            "workspace 'acme'",
            &format!("hold {} bytes", 1000 * MIB),
            &format!("counts {} bytes", 800 * MIB),
            &format!("drift of +{} bytes", 200 * MIB),
            "+25 %",
            "Proxmox reports 7 bytes",
            "WAL archived",
            "a gc",
        ] {
            assert!(m.contains(part), "{part:?} not in {m}");
        }
        let r = reconcile(at(9), 1000 * MIB, &[measured(800 * MIB, 1)], &[]);
        let (holds, m) = drift_condition("acme", &r).unwrap();
        assert!(holds);
        assert!(m.contains("drift of -") && m.contains("removed"), "{m}");
        let r = reconcile(at(9), 1000 * MIB, &[measured(990 * MIB, 1)], &[]);
        assert!(!drift_condition("acme", &r).unwrap().0);
    }
}

//! How far back and how far forward a database can be restored, shown on
//! `GET /api/v1/databases/{id}` so that a service owner sees the promise before needing it.
//!
//! The catalog alone gives the discrete points: each good backup. A PostgreSQL physical base
//! backup plus the WAL archived after it gives every second from the end of that base up to
//! the last archived WAL file, which the database's agent reports in its heartbeats (`wal-push`
//! notes each file it archived). gc expires WAL older than the oldest retained base, so the
//! window starts at the oldest good physical base.

use bulwark_core::api::BackupMethod;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::backup::BackupRecord;
use super::database::DatabaseType;

/// The last WAL file an agent reported archived for a database.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct WalSeen {
    pub last_file: String,
    pub archived_at: Option<DateTime<Utc>>,
    pub agent_id: String,
    pub reported_at: Option<DateTime<Utc>>,
}

/// Where the [`WalSeen`] of `database` is kept (with the scheduler's records).
pub fn wal_key(database: &str) -> String {
    format!("wal:{database}")
}

/// What a restore of the database can reach.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RecoverableWindow {
    /// The earliest point: the end of the oldest good backup.
    pub earliest: DateTime<Utc>,
    /// The latest point: the newest good backup's end, or the time the last WAL file was
    /// archived when that is later and a physical base precedes it.
    pub latest: DateTime<Utc>,
    /// Any second from `point_in_time_from` to `latest` can be restored (PostgreSQL physical
    /// base backups with archived WAL); before it, only the backups' own points.
    pub point_in_time: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub point_in_time_from: Option<DateTime<Utc>>,
    /// Good backups in the catalog (succeeded, not found damaged).
    pub good_backups: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_wal_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_wal_archived_at: Option<DateTime<Utc>>,
}

/// The window of one database's `backups`, given what its agent last reported of its WAL.
/// `None`: no good backup, nothing can be restored.
pub fn window(backups: &[BackupRecord], wal: Option<&WalSeen>) -> Option<RecoverableWindow> {
    let good: Vec<(&BackupRecord, DateTime<Utc>)> = backups
        .iter()
        .filter(|b| b.is_good())
        .filter_map(|b| Some((b, b.finished_at?)))
        .collect();
    let earliest = good.iter().map(|(_, t)| *t).min()?;
    let newest = good.iter().map(|(_, t)| *t).max()?;
    let oldest_base = good
        .iter()
        .filter(|(b, _)| {
            b.db_type == DatabaseType::Postgresql && b.method == Some(BackupMethod::Physical)
        })
        .map(|(_, t)| *t)
        .min();
    let archived = wal.and_then(|w| Some((w.last_file.clone(), w.archived_at?)));
    let (point_in_time, latest) = match (oldest_base, &archived) {
        (Some(base), Some((_, at))) if *at >= base => (true, newest.max(*at)),
        (Some(_), _) => (true, newest),
        _ => (false, newest),
    };
    Some(RecoverableWindow {
        earliest,
        latest,
        point_in_time,
        point_in_time_from: oldest_base.filter(|_| point_in_time),
        good_backups: good.len(),
        last_wal_file: archived.as_ref().map(|(f, _)| f.clone()),
        last_wal_archived_at: archived.map(|(_, t)| t),
    })
}

#[cfg(test)]
mod tests {
    use chrono::Duration;

    use super::*;
    use crate::domain::backup::{BackupStatus, SnapshotKind, Verification};

    fn backup(hours_ago: i64, method: Option<BackupMethod>, now: DateTime<Utc>) -> BackupRecord {
        let end = now - Duration::hours(hours_ago);
        BackupRecord {
            id: format!("job_{hours_ago}"),
            workspace_id: "acme".into(),
            database_id: "orders".into(),
            db_type: DatabaseType::Postgresql,
            kind: SnapshotKind::Automatic,
            status: BackupStatus::Succeeded,
            started_at: end - Duration::minutes(5),
            finished_at: Some(end),
            snapshot: Some(format!("backup-{hours_ago}")),
            policy_id: None,
            storage_id: None,
            method,
            logical_bytes: 1,
            stored_bytes: 1,
            error: None,
            job_id: None,
            notes: None,
            tags: Default::default(),
            verified_at: None,
            verification: None,
            forget_job: None,
        }
    }

    #[test]
    fn physical_bases_with_wal_reach_every_second_up_to_the_last_archived_file() {
        let now = Utc::now();
        let wal = WalSeen {
            last_file: "000000010000000000000009".into(),
            archived_at: Some(now - Duration::minutes(1)),
            agent_id: "agt_1".into(),
            reported_at: Some(now),
        };
        let mut damaged = backup(72, Some(BackupMethod::Physical), now);
        damaged.verification = Some(Verification::Damaged);
        let backups = vec![
            damaged,
            backup(48, Some(BackupMethod::Logical), now),
            backup(24, Some(BackupMethod::Physical), now),
            backup(2, Some(BackupMethod::Physical), now),
        ];
        let w = window(&backups, Some(&wal)).unwrap();
        assert_eq!(
            w.earliest,
            now - Duration::hours(48),
            "a damaged backup reaches nothing"
        );
        assert_eq!(w.point_in_time_from, Some(now - Duration::hours(24)));
        assert_eq!(w.latest, now - Duration::minutes(1));
        assert!(w.point_in_time);
        assert_eq!(w.good_backups, 3);
        assert_eq!(w.last_wal_file.as_deref(), Some("000000010000000000000009"));
    }

    #[test]
    fn without_a_physical_base_only_the_backups_themselves_count() {
        let now = Utc::now();
        let wal = WalSeen {
            last_file: "000000010000000000000009".into(),
            archived_at: Some(now),
            ..WalSeen::default()
        };
        let backups = vec![
            backup(30, Some(BackupMethod::Logical), now),
            backup(6, None, now),
        ];
        let w = window(&backups, Some(&wal)).unwrap();
        assert!(!w.point_in_time);
        assert_eq!(w.point_in_time_from, None);
        assert_eq!(
            (w.earliest, w.latest),
            (now - Duration::hours(30), now - Duration::hours(6))
        );
        // WAL reported before the only base cannot extend it.
        let early = WalSeen {
            archived_at: Some(now - Duration::hours(10)),
            ..wal
        };
        let w = window(
            &[backup(6, Some(BackupMethod::Physical), now)],
            Some(&early),
        )
        .unwrap();
        assert!(w.point_in_time);
        assert_eq!(w.latest, now - Duration::hours(6));

        let mut failed = backup(1, Some(BackupMethod::Physical), now);
        failed.status = BackupStatus::Failed;
        assert_eq!(window(&[failed], None), None);
    }
}

//! The backup catalog: `backups` (id → BackupRecord) with time-ordered indexes
//! `(database, started_ms, id)` and `(workspace, started_ms, id)`, so "the newest 50 backups of
//! this database between these dates" is one reverse range scan.

use std::ops::Bound;

use chrono::{DateTime, Utc};
use redb::{ReadTransaction, ReadableTable};

use super::{get_json, put_json, Records, Result, StoreError, TimeIndex, Tx};
use crate::domain::backup::{BackupRecord, BackupStatus, SnapshotKind};

pub const TABLE: Records = Records::new("backups");
pub const BY_DATABASE: TimeIndex = TimeIndex::new("backups_by_database");
pub const BY_WORKSPACE: TimeIndex = TimeIndex::new("backups_by_workspace");
/// The prefix under which `BY_WORKSPACE` also indexes every backup, for platform-wide listings
/// (workspace ids are never empty).
pub const ALL: &str = "";

pub fn get(rtx: &ReadTransaction, id: &str) -> Result<Option<BackupRecord>> {
    get_json(&rtx.open_table(TABLE)?, "backup", id)
}

#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub kind: Option<SnapshotKind>,
    pub status: Option<BackupStatus>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
}

/// Where a listing scans: one database's or one workspace's index.
pub enum Scope<'a> {
    Database(&'a str),
    Workspace(&'a str),
}

/// Position after the last entry of a page: (started_ms, id).
pub type Cursor = (i64, String);

/// Newest first, strictly older than `cursor`, matching `filter` and `visible`.
pub fn list(
    rtx: &ReadTransaction,
    scope: Scope<'_>,
    filter: &Filter,
    visible: impl Fn(&BackupRecord) -> bool,
    cursor: Option<&Cursor>,
    limit: usize,
) -> Result<(Vec<BackupRecord>, Option<Cursor>)> {
    let (def, prefix) = match scope {
        Scope::Database(d) => (BY_DATABASE, d),
        Scope::Workspace(w) => (BY_WORKSPACE, w),
    };
    let index = rtx.open_table(def)?;
    let table = rtx.open_table(TABLE)?;
    let from_ms = filter.from.map_or(i64::MIN, |t| t.timestamp_millis());
    let lower = Bound::Included((prefix, from_ms, ""));
    let upper = match (cursor, filter.to) {
        (Some((ms, id)), _) => Bound::Excluded((prefix, *ms, id.as_str())),
        (None, Some(to)) => Bound::Excluded((prefix, to.timestamp_millis(), "")),
        (None, None) => Bound::Excluded((prefix, i64::MAX, "")),
    };
    let to_ms = filter.to.map(|t| t.timestamp_millis());
    let mut out: Vec<BackupRecord> = Vec::new();
    for item in index.range::<(&str, i64, &str)>((lower, upper))?.rev() {
        let (key, _) = item?;
        let (_, ms, id) = key.value();
        if to_ms.is_some_and(|to| ms >= to) {
            continue;
        }
        let Some(record) = get_json::<BackupRecord>(&table, "backup", id)? else {
            continue;
        };
        if filter.kind.is_some_and(|k| k != record.kind)
            || filter.status.is_some_and(|s| s != record.status)
            || !visible(&record)
        {
            continue;
        }
        if out.len() == limit {
            let last = out.last().expect("limit is at least 1");
            return Ok((
                out.clone(),
                Some((last.started_at.timestamp_millis(), last.id.clone())),
            ));
        }
        out.push(record);
    }
    Ok((out, None))
}

impl Tx {
    pub fn backup(&self, id: &str) -> Result<Option<BackupRecord>> {
        get_json(&self.txn.open_table(TABLE)?, "backup", id)
    }

    /// Adds or replaces a catalog entry (the job protocol reports a backup as it progresses).
    pub fn record_backup(&mut self, record: &BackupRecord) -> Result<()> {
        let before = self.backup(&record.id)?;
        if let Some(old) = &before {
            if old.database_id != record.database_id || old.started_at != record.started_at {
                return Err(StoreError::Conflict(format!(
                    "backup '{}' is already recorded for another database or start time",
                    record.id
                )));
            }
        }
        put_json(&mut self.txn.open_table(TABLE)?, &record.id, record)?;
        let ms = record.started_at.timestamp_millis();
        self.txn
            .open_table(BY_DATABASE)?
            .insert((record.database_id.as_str(), ms, record.id.as_str()), ())?;
        let mut by_ws = self.txn.open_table(BY_WORKSPACE)?;
        by_ws.insert((record.workspace_id.as_str(), ms, record.id.as_str()), ())?;
        by_ws.insert((ALL, ms, record.id.as_str()), ())?;
        drop(by_ws);
        let action = if before.is_some() {
            "backup.update"
        } else {
            "backup.record"
        };
        self.audit(
            action,
            "backup",
            &record.id,
            Some(&record.workspace_id),
            Some(&record.database_id),
            before.as_ref(),
            Some(record),
        )?;
        // Usage: the workspace's repositories now hold this entry's stored bytes instead of the
        // previous report's.
        match &before {
            Some(old) if old.workspace_id != record.workspace_id => {
                self.add_usage(&old.workspace_id, -(old.stored_bytes as i128))?;
                self.add_usage(&record.workspace_id, record.stored_bytes as i128)?;
            }
            _ => {
                let old = before.as_ref().map_or(0, |b| b.stored_bytes);
                self.add_usage(
                    &record.workspace_id,
                    record.stored_bytes as i128 - old as i128,
                )?;
            }
        }
        Ok(())
    }

    /// Every catalog entry of `database`, newest first.
    pub fn backups_of(&self, database: &str) -> Result<Vec<BackupRecord>> {
        let index = self.txn.open_table(BY_DATABASE)?;
        let table = self.txn.open_table(TABLE)?;
        let mut out = Vec::new();
        let range = (
            Bound::Included((database, i64::MIN, "")),
            Bound::Included((database, i64::MAX, "")),
        );
        for item in index.range::<(&str, i64, &str)>(range)?.rev() {
            let (key, _) = item?;
            if let Some(r) = get_json::<BackupRecord>(&table, "backup", key.value().2)? {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// Whether an entry of `workspace` on `storage` is marked damaged (scans the workspace's
    /// entries: only verify and forget results ask).
    pub fn any_damaged(&self, workspace: &str, storage: Option<&str>) -> Result<bool> {
        let index = self.txn.open_table(BY_WORKSPACE)?;
        let table = self.txn.open_table(TABLE)?;
        let range = (
            Bound::Included((workspace, i64::MIN, "")),
            Bound::Included((workspace, i64::MAX, "")),
        );
        for item in index.range::<(&str, i64, &str)>(range)? {
            let (key, _) = item?;
            if let Some(r) = get_json::<BackupRecord>(&table, "backup", key.value().2)? {
                if r.storage_id.as_deref() == storage
                    && r.verification == Some(crate::domain::backup::Verification::Damaged)
                {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// The catalog entry of `database` whose snapshot is `name`.
    pub fn backup_by_snapshot(&self, database: &str, name: &str) -> Result<Option<BackupRecord>> {
        Ok(self
            .backups_of(database)?
            .into_iter()
            .find(|b| b.snapshot.as_deref() == Some(name)))
    }

    /// Changes an entry in place (verification, forget job) with its audit entry; usage stays.
    pub fn update_backup(
        &mut self,
        id: &str,
        change: impl FnOnce(&mut BackupRecord),
    ) -> Result<BackupRecord> {
        let before = self.backup(id)?.ok_or_else(|| StoreError::NotFound {
            kind: "backup",
            id: id.to_string(),
        })?;
        let mut after = before.clone();
        change(&mut after);
        if after != before {
            put_json(&mut self.txn.open_table(TABLE)?, id, &after)?;
            self.audit(
                "backup.update",
                "backup",
                id,
                Some(&after.workspace_id),
                Some(&after.database_id),
                Some(&before),
                Some(&after),
            )?;
        }
        Ok(after)
    }

    /// Takes an entry out of the catalog once its snapshot is gone from the repository (a
    /// forget job confirmed it, or there never was one). Usage does not change: the snapshot's
    /// chunks stay in the repository until a gc deletes them, and the gc's result lowers usage
    /// by what it freed ([`Tx::record_freed`]).
    pub fn remove_backup(&mut self, id: &str) -> Result<Option<BackupRecord>> {
        let Some(before) = self.backup(id)? else {
            return Ok(None);
        };
        let ms = before.started_at.timestamp_millis();
        self.txn.open_table(TABLE)?.remove(id)?;
        self.txn
            .open_table(BY_DATABASE)?
            .remove((before.database_id.as_str(), ms, id))?;
        let mut by_ws = self.txn.open_table(BY_WORKSPACE)?;
        by_ws.remove((before.workspace_id.as_str(), ms, id))?;
        by_ws.remove((ALL, ms, id))?;
        drop(by_ws);
        self.audit(
            "backup.delete",
            "backup",
            id,
            Some(&before.workspace_id),
            Some(&before.database_id),
            Some(&before),
            None::<&()>,
        )?;
        Ok(Some(before))
    }

    /// A gc of `workspace`'s storage deleted `freed` bytes: usage falls by exactly that.
    pub fn record_freed(&mut self, workspace: &str, freed: u64) -> Result<()> {
        self.add_usage(workspace, -(freed as i128))
    }
}

/// Whether a person may delete the backup by hand: manual and pre-restore backups are theirs,
/// automatic ones follow their policy's retention.
/// Every catalog entry of `database`, newest first (the read side of [`Tx::backups_of`]).
pub fn of_database(rtx: &ReadTransaction, database: &str) -> Result<Vec<BackupRecord>> {
    let all = list(
        rtx,
        Scope::Database(database),
        &Filter::default(),
        |_| true,
        None,
        usize::MAX,
    )?;
    Ok(all.0)
}

pub fn check_deletable(b: &BackupRecord) -> Result<()> {
    if b.kind == SnapshotKind::Automatic {
        return Err(StoreError::Refused(format!(
            "backup '{}' is automatic; only manual and pre-restore backups can be deleted by hand, automatic ones follow their policy's retention",
            b.id
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::Store;
    use super::*;
    use crate::domain::audit::Actor;
    use crate::domain::database::DatabaseType;

    fn entry(id: &str, bytes: u64) -> BackupRecord {
        BackupRecord {
            id: id.into(),
            workspace_id: "acme".into(),
            database_id: "orders".into(),
            db_type: DatabaseType::Sqlite,
            kind: SnapshotKind::Manual,
            status: BackupStatus::Succeeded,
            started_at: Utc::now(),
            finished_at: None,
            snapshot: Some(format!("backup-{id}")),
            policy_id: None,
            storage_id: None,
            method: None,
            logical_bytes: bytes,
            stored_bytes: bytes,
            error: None,
            job_id: None,
            notes: None,
            tags: Default::default(),
            verified_at: None,
            verification: None,
            forget_job: None,
        }
    }

    /// Forgetting a snapshot leaves its chunks in the repository: only the gc's freed bytes
    /// lower usage (before, removing an entry subtracted its stored bytes, and the gc that
    /// really freed them would have counted them a second time).
    #[test]
    fn usage_falls_by_what_gc_freed_not_by_what_was_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let actor = Actor {
            kind: "system".into(),
            id: "t".into(),
            name: "t".into(),
        };
        store
            .write_blocking(actor.clone(), |tx| {
                tx.record_backup(&entry("b1", 1000))?;
                tx.record_backup(&entry("b2", 500))?;
                assert_eq!(tx.used_bytes("acme")?, 1500);
                assert!(tx.remove_backup("b1")?.is_some());
                assert_eq!(tx.used_bytes("acme")?, 1500, "forgetting frees nothing yet");
                assert_eq!(tx.backups_of("orders")?.len(), 1);
                tx.record_freed("acme", 700)?;
                assert_eq!(tx.used_bytes("acme")?, 800);
                tx.record_freed("acme", 10_000)?;
                assert_eq!(tx.used_bytes("acme")?, 0, "never below zero");
                Ok(())
            })
            .unwrap();
    }
}

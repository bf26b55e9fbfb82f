//! Backup storages: `backup_storages` (`<workspace>/<id>` → BackupStorage; slugs hold no `/`),
//! `backup_storages_by_workspace` `(workspace, id)` and `backup_storages_by_cluster`
//! `(cluster, <workspace>/<id>)`.

use redb::{ReadTransaction, ReadableTable};

use super::{
    backups, get_json, policies, put_json, scan_index, Index2, Records, Result, StoreError, Tx,
};
use crate::domain::policy::Policy;
use crate::domain::storage::BackupStorage;

pub const TABLE: Records = Records::new("backup_storages");
pub const BY_WORKSPACE: Index2 = Index2::new("backup_storages_by_workspace");
pub const BY_CLUSTER: Index2 = Index2::new("backup_storages_by_cluster");

pub fn key(workspace: &str, id: &str) -> String {
    format!("{workspace}/{id}")
}

pub fn get(rtx: &ReadTransaction, workspace: &str, id: &str) -> Result<Option<BackupStorage>> {
    get_json(
        &rtx.open_table(TABLE)?,
        "backup storage",
        &key(workspace, id),
    )
}

/// The storages of one workspace, in id order.
pub fn list(rtx: &ReadTransaction, workspace: &str) -> Result<Vec<BackupStorage>> {
    let table = rtx.open_table(TABLE)?;
    let mut out = Vec::new();
    scan_index(&rtx.open_table(BY_WORKSPACE)?, workspace, None, |id| {
        out.extend(get_json(&table, "backup storage", &key(workspace, id))?);
        Ok(true)
    })?;
    Ok(out)
}

/// The storages on one cluster.
pub fn on_cluster(rtx: &ReadTransaction, cluster: &str) -> Result<Vec<BackupStorage>> {
    let table = rtx.open_table(TABLE)?;
    let mut out = Vec::new();
    for k in keys_on_cluster(&rtx.open_table(BY_CLUSTER)?, cluster)? {
        out.extend(get_json(&table, "backup storage", &k)?);
    }
    Ok(out)
}

pub fn keys_on_cluster(
    index: &impl ReadableTable<(&'static str, &'static str), ()>,
    cluster: &str,
) -> Result<Vec<String>> {
    let mut out = Vec::new();
    scan_index(index, cluster, None, |k| {
        out.push(k.to_string());
        Ok(true)
    })?;
    Ok(out)
}

/// Catalog entries of the workspace still on this storage (entries leave the catalog when
/// their backup is deleted).
pub fn retained_backups(rtx: &ReadTransaction, workspace: &str, storage: &str) -> Result<usize> {
    let index = rtx.open_table(backups::BY_WORKSPACE)?;
    let table = rtx.open_table(backups::TABLE)?;
    count_retained(&index, &table, workspace, storage)
}

fn count_retained(
    index: &impl ReadableTable<(&'static str, i64, &'static str), ()>,
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    workspace: &str,
    storage: &str,
) -> Result<usize> {
    use std::ops::Bound;
    let range = (
        Bound::Included((workspace, i64::MIN, "")),
        Bound::Included((workspace, i64::MAX, "\u{10ffff}")),
    );
    let mut n = 0;
    for item in index.range::<(&str, i64, &str)>(range)? {
        let (k, _) = item?;
        let (_, _, id) = k.value();
        let record: Option<crate::domain::backup::BackupRecord> = get_json(table, "backup", id)?;
        if record.is_some_and(|r| r.storage_id.as_deref() == Some(storage)) {
            n += 1;
        }
    }
    Ok(n)
}

impl Tx {
    pub fn storage(&self, workspace: &str, id: &str) -> Result<Option<BackupStorage>> {
        get_json(
            &self.txn.open_table(TABLE)?,
            "backup storage",
            &key(workspace, id),
        )
    }

    /// Records a new storage (status `pending`) before it is created on the cluster.
    pub fn create_storage(&mut self, s: &BackupStorage) -> Result<()> {
        if self.storage(&s.workspace_id, &s.id)?.is_some() {
            return Err(StoreError::Conflict(format!(
                "workspace '{}' already has a backup storage '{}'; choose another id",
                s.workspace_id, s.id
            )));
        }
        // Derived names are injective, but records made under an older rule keep theirs: the
        // cluster-wide name must still be one record's only.
        {
            let table = self.txn.open_table(TABLE)?;
            for other in keys_on_cluster(&self.txn.open_table(BY_CLUSTER)?, &s.cluster_id)? {
                let holder: Option<BackupStorage> = get_json(&table, "backup storage", &other)?;
                if holder.is_some_and(|h| h.pve_storage == s.pve_storage) {
                    return Err(StoreError::Conflict(format!(
                        "the cluster storage '{}' already belongs to another backup storage; choose another id",
                        s.pve_storage
                    )));
                }
            }
        }
        let k = key(&s.workspace_id, &s.id);
        put_json(&mut self.txn.open_table(TABLE)?, &k, s)?;
        self.txn
            .open_table(BY_WORKSPACE)?
            .insert((s.workspace_id.as_str(), s.id.as_str()), ())?;
        self.txn
            .open_table(BY_CLUSTER)?
            .insert((s.cluster_id.as_str(), k.as_str()), ())?;
        self.audit(
            "backup_storage.create",
            "backup_storage",
            &s.id,
            Some(&s.workspace_id),
            None,
            None::<&()>,
            Some(s),
        )?;
        Ok(())
    }

    /// Replaces a storage record. `action` is `backup_storage.update` for a change asked through
    /// the API, `backup_storage.status` for a status change (creation, sync).
    pub fn update_storage(&mut self, s: &BackupStorage, action: &str) -> Result<BackupStorage> {
        let before = self
            .storage(&s.workspace_id, &s.id)?
            .ok_or_else(|| StoreError::NotFound {
                kind: "backup storage",
                id: s.id.clone(),
            })?;
        put_json(
            &mut self.txn.open_table(TABLE)?,
            &key(&s.workspace_id, &s.id),
            s,
        )?;
        self.audit(
            action,
            "backup_storage",
            &s.id,
            Some(&s.workspace_id),
            None,
            Some(&before),
            Some(s),
        )?;
        Ok(before)
    }

    /// Stores the usage a sync read without an audit entry (an observation, not a change; a
    /// status change goes through [`Tx::update_storage`]).
    pub fn store_storage_usage(&mut self, s: &BackupStorage) -> Result<()> {
        let k = key(&s.workspace_id, &s.id);
        if get_json::<BackupStorage>(&self.txn.open_table(TABLE)?, "backup storage", &k)?.is_none()
        {
            return Ok(());
        }
        put_json(&mut self.txn.open_table(TABLE)?, &k, s)
    }

    /// Refused while catalog entries on the storage are retained.
    pub fn delete_storage(&mut self, workspace: &str, id: &str) -> Result<BackupStorage> {
        let before = self
            .storage(workspace, id)?
            .ok_or_else(|| StoreError::NotFound {
                kind: "backup storage",
                id: id.to_string(),
            })?;
        let retained = self.retained_backups(workspace, id)?;
        if retained > 0 {
            return Err(StoreError::Conflict(retained_message(id, retained)));
        }
        let naming: Vec<String> = self
            .policies_of(workspace)?
            .into_iter()
            .filter(|p| p.storage_id.as_deref() == Some(id))
            .map(|p| p.id)
            .collect();
        if !naming.is_empty() {
            return Err(StoreError::Conflict(named_message(id, &naming)));
        }
        let k = key(workspace, id);
        self.txn.open_table(TABLE)?.remove(k.as_str())?;
        self.txn.open_table(BY_WORKSPACE)?.remove((workspace, id))?;
        self.txn
            .open_table(BY_CLUSTER)?
            .remove((before.cluster_id.as_str(), k.as_str()))?;
        self.audit(
            "backup_storage.delete",
            "backup_storage",
            id,
            Some(workspace),
            None,
            Some(&before),
            None::<&()>,
        )?;
        Ok(before)
    }

    /// The storages of one workspace, in id order.
    pub fn storages_of(&self, workspace: &str) -> Result<Vec<BackupStorage>> {
        let table = self.txn.open_table(TABLE)?;
        let mut out = Vec::new();
        scan_index(&self.txn.open_table(BY_WORKSPACE)?, workspace, None, |id| {
            out.extend(get_json(&table, "backup storage", &key(workspace, id))?);
            Ok(true)
        })?;
        Ok(out)
    }

    /// Notes that the repository of storage `id` exists (a job on it succeeded or created it);
    /// from then on its jobs carry no recovery key.
    pub fn note_repository_exists(&mut self, workspace: &str, id: &str) -> Result<()> {
        let Some(mut s) = self.storage(workspace, id)? else {
            return Ok(());
        };
        if s.repository_exists {
            return Ok(());
        }
        s.repository_exists = true;
        self.update_storage(&s, "backup_storage.repository")?;
        Ok(())
    }

    pub fn retained_backups(&self, workspace: &str, storage: &str) -> Result<usize> {
        let index = self.txn.open_table(backups::BY_WORKSPACE)?;
        let table = self.txn.open_table(backups::TABLE)?;
        count_retained(&index, &table, workspace, storage)
    }
}

/// The policies of `workspace` that name storage `id` (it cannot be deleted while any does).
pub fn naming_policies(rtx: &ReadTransaction, workspace: &str, id: &str) -> Result<Vec<String>> {
    let table = rtx.open_table(policies::TABLE)?;
    let mut out = Vec::new();
    scan_index(
        &rtx.open_table(policies::BY_WORKSPACE)?,
        workspace,
        None,
        |pid| {
            let policy: Option<Policy> = get_json(&table, "policy", pid)?;
            if policy.is_some_and(|p| p.storage_id.as_deref() == Some(id)) {
                out.push(pid.to_string());
            }
            Ok(true)
        },
    )?;
    Ok(out)
}

pub fn named_message(id: &str, policies: &[String]) -> String {
    format!(
        "backup storage '{id}' is named by policy {}; move those policies to another storage or delete them first",
        policies.join(", ")
    )
}

pub fn retained_message(id: &str, retained: usize) -> String {
    format!(
        "backup storage '{id}' still holds {retained} retained backup(s); they must expire or be deleted before the storage can be removed"
    )
}

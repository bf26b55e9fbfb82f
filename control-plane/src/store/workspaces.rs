//! Workspaces table: `id → Workspace`, and beside it `workspace_safeguards` (`id → Safeguards`,
//! four eyes): a table of its own so that records written before it read as "off".

use redb::ReadTransaction;

use super::{databases, get_json, put_json, users, Records, Result, StoreError, Tx};
use crate::domain::workspace::{Safeguards, Workspace};

pub const TABLE: Records = Records::new("workspaces");
pub const SAFEGUARDS: Records = Records::new("workspace_safeguards");

/// The workspace's safeguards (all off when none were ever set).
pub fn safeguards(rtx: &ReadTransaction, id: &str) -> Result<Safeguards> {
    Ok(get_json(&rtx.open_table(SAFEGUARDS)?, "workspace safeguards", id)?.unwrap_or_default())
}

pub fn get(rtx: &ReadTransaction, id: &str) -> Result<Option<Workspace>> {
    get_json(&rtx.open_table(TABLE)?, "workspace", id)
}

/// All workspaces in id order, starting after `after`.
pub fn list(
    rtx: &ReadTransaction,
    after: Option<&str>,
    limit: usize,
) -> Result<(Vec<Workspace>, bool)> {
    use std::ops::Bound;
    let table = rtx.open_table(TABLE)?;
    let start = after.map_or(Bound::Unbounded, Bound::Excluded);
    let mut out = Vec::new();
    for item in table.range::<&str>((start, Bound::Unbounded))? {
        let (k, v) = item?;
        if out.len() == limit {
            return Ok((out, true));
        }
        out.push(super::decode("workspace", k.value(), v.value())?);
    }
    Ok((out, false))
}

impl Tx {
    pub fn workspace(&self, id: &str) -> Result<Option<Workspace>> {
        get_json(&self.txn.open_table(TABLE)?, "workspace", id)
    }

    pub fn safeguards(&self, id: &str) -> Result<Safeguards> {
        Ok(get_json(
            &self.txn.open_table(SAFEGUARDS)?,
            "workspace safeguards",
            id,
        )?
        .unwrap_or_default())
    }

    /// Stores the workspace's safeguards, audited as `workspace.safeguards` when they change.
    pub fn set_safeguards(&mut self, id: &str, safeguards: Safeguards) -> Result<()> {
        let before = self.safeguards(id)?;
        if before == safeguards {
            return Ok(());
        }
        put_json(&mut self.txn.open_table(SAFEGUARDS)?, id, &safeguards)?;
        self.audit(
            "workspace.safeguards",
            "workspace",
            id,
            Some(id),
            None,
            Some(&before),
            Some(&safeguards),
        )?;
        Ok(())
    }

    /// Every workspace's id, in order (for the scheduler's passes over workspaces).
    pub fn workspace_ids(&self) -> Result<Vec<String>> {
        use redb::ReadableTable;
        let table = self.txn.open_table(TABLE)?;
        let mut out = Vec::new();
        for item in table.iter()? {
            out.push(item?.0.value().to_string());
        }
        Ok(out)
    }

    pub fn create_workspace(&mut self, ws: &Workspace) -> Result<()> {
        if self.workspace(&ws.id)?.is_some() {
            return Err(StoreError::Conflict(format!(
                "workspace '{}' already exists; choose another id",
                ws.id
            )));
        }
        put_json(&mut self.txn.open_table(TABLE)?, &ws.id, ws)?;
        self.audit(
            "workspace.create",
            "workspace",
            &ws.id,
            Some(&ws.id),
            None,
            None::<&()>,
            Some(ws),
        )?;
        Ok(())
    }

    pub fn update_workspace(&mut self, ws: &Workspace) -> Result<Workspace> {
        let before = self
            .workspace(&ws.id)?
            .ok_or_else(|| StoreError::NotFound {
                kind: "workspace",
                id: ws.id.clone(),
            })?;
        put_json(&mut self.txn.open_table(TABLE)?, &ws.id, ws)?;
        self.audit(
            "workspace.update",
            "workspace",
            &ws.id,
            Some(&ws.id),
            None,
            Some(&before),
            Some(ws),
        )?;
        Ok(before)
    }

    /// Refused while the workspace still holds databases or users: deleting it must not orphan
    /// anything or lose track of backups.
    pub fn delete_workspace(&mut self, id: &str) -> Result<Workspace> {
        let before = self.workspace(id)?.ok_or_else(|| StoreError::NotFound {
            kind: "workspace",
            id: id.to_string(),
        })?;
        let mut has_dbs = false;
        super::scan_index(
            &self.txn.open_table(databases::BY_WORKSPACE)?,
            id,
            None,
            |_| {
                has_dbs = true;
                Ok(false)
            },
        )?;
        let mut has_users = false;
        super::scan_index(
            &self.txn.open_table(users::USERS_BY_WORKSPACE)?,
            id,
            None,
            |_| {
                has_users = true;
                Ok(false)
            },
        )?;
        if has_dbs || has_users {
            return Err(StoreError::Conflict(format!(
                "workspace '{id}' still has {}; delete those first",
                match (has_dbs, has_users) {
                    (true, true) => "databases and users",
                    (true, false) => "databases",
                    _ => "users",
                }
            )));
        }
        self.txn.open_table(TABLE)?.remove(id)?;
        self.txn.open_table(SAFEGUARDS)?.remove(id)?;
        self.audit(
            "workspace.delete",
            "workspace",
            id,
            Some(id),
            None,
            Some(&before),
            None::<&()>,
        )?;
        Ok(before)
    }
}

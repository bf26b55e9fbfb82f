//! Policies: `policies` (id → Policy) with indexes by database and by workspace.

use redb::ReadTransaction;

use super::{get_json, put_json, scan_index, Index2, Records, Result, StoreError, Tx};
use crate::domain::database::DatabaseType;
use crate::domain::policy::Policy;

pub const TABLE: Records = Records::new("policies");
pub const BY_DATABASE: Index2 = Index2::new("policies_by_database");
pub const BY_WORKSPACE: Index2 = Index2::new("policies_by_workspace");

pub fn get(rtx: &ReadTransaction, id: &str) -> Result<Option<Policy>> {
    get_json(&rtx.open_table(TABLE)?, "policy", id)
}

/// Where a listing starts.
pub enum Scope<'a> {
    All,
    Workspace(&'a str),
    Database(&'a str),
}

/// Policies in id (= creation) order after `after`, of one type if given, that `visible` allows.
pub fn list(
    rtx: &ReadTransaction,
    scope: Scope<'_>,
    db_type: Option<DatabaseType>,
    visible: impl Fn(&Policy) -> bool,
    after: Option<&str>,
    limit: usize,
) -> Result<(Vec<Policy>, bool)> {
    let index = match scope {
        Scope::Workspace(ws) => Some((BY_WORKSPACE, ws)),
        Scope::Database(db) => Some((BY_DATABASE, db)),
        Scope::All => None,
    };
    super::page(rtx, TABLE, "policy", index, after, limit, |p: &Policy| {
        db_type.is_none_or(|t| t == p.db_type) && visible(p)
    })
}

/// The policies of one database (a database has at most a few).
pub fn of_database(rtx: &ReadTransaction, database: &str) -> Result<Vec<Policy>> {
    let limit = crate::domain::policy::MAX_POLICIES_PER_DATABASE + 1;
    Ok(list(rtx, Scope::Database(database), None, |_| true, None, limit)?.0)
}

impl Tx {
    /// Every policy (the scheduler's pass).
    pub fn all_policies(&self) -> Result<Vec<Policy>> {
        use redb::ReadableTable;
        let table = self.txn.open_table(TABLE)?;
        let mut out = Vec::new();
        for item in table.iter()? {
            let (k, v) = item?;
            out.push(super::decode("policy", k.value(), v.value())?);
        }
        Ok(out)
    }

    /// The policies of one workspace, in id order.
    pub fn policies_of(&self, workspace: &str) -> Result<Vec<Policy>> {
        let table = self.txn.open_table(TABLE)?;
        let mut out = Vec::new();
        scan_index(&self.txn.open_table(BY_WORKSPACE)?, workspace, None, |id| {
            out.extend(get_json(&table, "policy", id)?);
            Ok(true)
        })?;
        Ok(out)
    }

    pub fn policy(&self, id: &str) -> Result<Option<Policy>> {
        get_json(&self.txn.open_table(TABLE)?, "policy", id)
    }

    /// One policy per schedule on a database, and at most
    /// [`MAX_POLICIES_PER_DATABASE`](crate::domain::policy::MAX_POLICIES_PER_DATABASE) policies.
    fn check_unique_schedule(&self, policy: &Policy) -> Result<()> {
        let table = self.txn.open_table(TABLE)?;
        let key = policy.schedule_key();
        let mut clash = None;
        let (mut others, mut update) = (0, false);
        scan_index(
            &self.txn.open_table(BY_DATABASE)?,
            &policy.db_identifier,
            None,
            |id| {
                update |= id == policy.id;
                if id != policy.id {
                    others += 1;
                    if let Some(other) = get_json::<Policy>(&table, "policy", id)? {
                        if other.schedule_key() == key {
                            clash = Some(other.id);
                            return Ok(false);
                        }
                    }
                }
                Ok(true)
            },
        )?;
        match clash {
            Some(other) => Err(StoreError::Conflict(format!(
                "database '{}' already has policy {other} with the same schedule ({} in {}); update that policy instead, or use a different schedule",
                policy.db_identifier, policy.schedule.frequency, policy.schedule.preferred_window
            ))),
            // Only a new policy is refused: records from before the limit can still be changed.
            None if !update && others >= crate::domain::policy::MAX_POLICIES_PER_DATABASE => {
                Err(StoreError::Conflict(format!(
                    "database '{}' already has {others} backup policies, the most one database may have; change or delete one of them",
                    policy.db_identifier
                )))
            }
            None => Ok(()),
        }
    }

    pub fn create_policy(&mut self, policy: &Policy) -> Result<()> {
        self.check_policy_refs(policy, None)?;
        self.check_unique_schedule(policy)?;
        put_json(&mut self.txn.open_table(TABLE)?, &policy.id, policy)?;
        self.txn
            .open_table(BY_DATABASE)?
            .insert((policy.db_identifier.as_str(), policy.id.as_str()), ())?;
        self.txn
            .open_table(BY_WORKSPACE)?
            .insert((policy.workspace_id.as_str(), policy.id.as_str()), ())?;
        self.audit(
            "policy.create",
            "policy",
            &policy.id,
            Some(&policy.workspace_id),
            Some(&policy.db_identifier),
            None::<&()>,
            Some(policy),
        )?;
        Ok(())
    }

    /// Replaces a policy. Moving it to another database re-indexes it.
    pub fn update_policy(&mut self, policy: &Policy) -> Result<Policy> {
        let before = self
            .policy(&policy.id)?
            .ok_or_else(|| StoreError::NotFound {
                kind: "policy",
                id: policy.id.clone(),
            })?;
        self.check_policy_refs(policy, Some(&before))?;
        self.check_unique_schedule(policy)?;
        put_json(&mut self.txn.open_table(TABLE)?, &policy.id, policy)?;
        if before.db_identifier != policy.db_identifier
            || before.workspace_id != policy.workspace_id
        {
            let mut by_db = self.txn.open_table(BY_DATABASE)?;
            by_db.remove((before.db_identifier.as_str(), policy.id.as_str()))?;
            by_db.insert((policy.db_identifier.as_str(), policy.id.as_str()), ())?;
            drop(by_db);
            let mut by_ws = self.txn.open_table(BY_WORKSPACE)?;
            by_ws.remove((before.workspace_id.as_str(), policy.id.as_str()))?;
            by_ws.insert((policy.workspace_id.as_str(), policy.id.as_str()), ())?;
        }
        self.audit(
            "policy.update",
            "policy",
            &policy.id,
            Some(&policy.workspace_id),
            Some(&policy.db_identifier),
            Some(&before),
            Some(policy),
        )?;
        Ok(before)
    }

    pub fn delete_policy(&mut self, id: &str) -> Result<Policy> {
        let before = self.policy(id)?.ok_or_else(|| StoreError::NotFound {
            kind: "policy",
            id: id.to_string(),
        })?;
        self.txn.open_table(TABLE)?.remove(id)?;
        self.txn
            .open_table(BY_DATABASE)?
            .remove((before.db_identifier.as_str(), id))?;
        self.txn
            .open_table(BY_WORKSPACE)?
            .remove((before.workspace_id.as_str(), id))?;
        self.audit(
            "policy.delete",
            "policy",
            id,
            Some(&before.workspace_id),
            Some(&before.db_identifier),
            Some(&before),
            None::<&()>,
        )?;
        Ok(before)
    }
}

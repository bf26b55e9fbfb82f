//! Restores: `restores` (id → Restore) and `restores_by_workspace`. Every change is stored
//! with its audit entry (`restore.request`, `restore.approve`, …) in the same transaction.

use redb::ReadTransaction;

use super::{get_json, page, put_json, Index2, Records, Result, StoreError, Tx};
use crate::domain::restore::Restore;

pub const TABLE: Records = Records::new("restores");
pub const BY_WORKSPACE: Index2 = Index2::new("restores_by_workspace");

pub fn get(rtx: &ReadTransaction, id: &str) -> Result<Option<Restore>> {
    get_json(&rtx.open_table(TABLE)?, "restore", id)
}

/// One page of restores in the order they were requested (of one workspace, or all).
pub fn list(
    rtx: &ReadTransaction,
    workspace: Option<&str>,
    keep: impl Fn(&Restore) -> bool,
    after: Option<&str>,
    limit: usize,
) -> Result<(Vec<Restore>, bool)> {
    page(
        rtx,
        TABLE,
        "restore",
        workspace.map(|ws| (BY_WORKSPACE, ws)),
        after,
        limit,
        keep,
    )
}

impl Tx {
    pub fn restore(&self, id: &str) -> Result<Option<Restore>> {
        get_json(&self.txn.open_table(TABLE)?, "restore", id)
    }

    /// The restore `id`, which must exist.
    pub fn existing_restore(&self, id: &str) -> Result<Restore> {
        self.restore(id)?.ok_or_else(|| StoreError::NotFound {
            kind: "restore",
            id: id.to_string(),
        })
    }

    pub fn create_restore(&mut self, restore: &Restore) -> Result<()> {
        if self.restore(&restore.id)?.is_some() {
            return Err(StoreError::Conflict(format!(
                "restore '{}' exists",
                restore.id
            )));
        }
        put_json(&mut self.txn.open_table(TABLE)?, &restore.id, restore)?;
        self.txn
            .open_table(BY_WORKSPACE)?
            .insert((restore.workspace_id.as_str(), restore.id.as_str()), ())?;
        self.audit(
            "restore.request",
            "restore",
            &restore.id,
            Some(&restore.workspace_id),
            Some(&restore.database_id),
            None::<&()>,
            Some(restore),
        )?;
        Ok(())
    }

    /// Stores a changed restore, audited as `restore.<action>` (`before` → `after`).
    pub fn save_restore(&mut self, action: &str, before: &Restore, after: &Restore) -> Result<()> {
        put_json(&mut self.txn.open_table(TABLE)?, &after.id, after)?;
        self.audit(
            &format!("restore.{action}"),
            "restore",
            &after.id,
            Some(&after.workspace_id),
            Some(&after.database_id),
            Some(before),
            Some(after),
        )?;
        Ok(())
    }

    /// Restores still waiting for approval (for the expiry sweep).
    pub fn pending_restores(&self) -> Result<Vec<Restore>> {
        use redb::ReadableTable;
        let table = self.txn.open_table(TABLE)?;
        let mut out = Vec::new();
        for item in table.iter()? {
            let (k, v) = item?;
            let r: Restore = super::decode("restore", k.value(), v.value())?;
            if r.status == crate::domain::restore::RestoreStatus::PendingApproval {
                out.push(r);
            }
        }
        Ok(out)
    }
}

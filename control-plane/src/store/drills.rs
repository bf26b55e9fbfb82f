//! Restore drills: `drills` (id → Drill) with indexes by workspace and by database (ids grow
//! with time, so an index's last entry is the newest drill). Every change is stored with its
//! audit entry (`drill.request`, `drill.pass`, `drill.fail`) in the same transaction.

use redb::{ReadTransaction, ReadableTable};

use super::{get_json, page, put_json, Index2, Records, Result, StoreError, Tx};
use crate::domain::drill::Drill;

pub const TABLE: Records = Records::new("drills");
pub const BY_WORKSPACE: Index2 = Index2::new("drills_by_workspace");
pub const BY_DATABASE: Index2 = Index2::new("drills_by_database");

pub fn get(rtx: &ReadTransaction, id: &str) -> Result<Option<Drill>> {
    get_json(&rtx.open_table(TABLE)?, "drill", id)
}

/// Where a listing starts.
pub enum Scope<'a> {
    All,
    Workspace(&'a str),
    Database(&'a str),
}

/// One page of drills in the order they were made.
pub fn list(
    rtx: &ReadTransaction,
    scope: Scope<'_>,
    keep: impl Fn(&Drill) -> bool,
    after: Option<&str>,
    limit: usize,
) -> Result<(Vec<Drill>, bool)> {
    let index = match scope {
        Scope::All => None,
        Scope::Workspace(ws) => Some((BY_WORKSPACE, ws)),
        Scope::Database(db) => Some((BY_DATABASE, db)),
    };
    page(rtx, TABLE, "drill", index, after, limit, keep)
}

/// The newest drill of `database` that `keep` accepts (for example: one that has ended).
pub fn newest_of_database(
    rtx: &ReadTransaction,
    database: &str,
    keep: impl Fn(&Drill) -> bool,
) -> Result<Option<Drill>> {
    newest(
        &rtx.open_table(BY_DATABASE)?,
        &rtx.open_table(TABLE)?,
        database,
        keep,
    )
}

fn newest(
    index: &impl ReadableTable<(&'static str, &'static str), ()>,
    records: &impl ReadableTable<&'static str, &'static [u8]>,
    database: &str,
    keep: impl Fn(&Drill) -> bool,
) -> Result<Option<Drill>> {
    // Ids are ASCII: every id of the database sorts below DEL.
    for item in index.range((database, "")..(database, "\u{7f}"))?.rev() {
        let (key, _) = item?;
        if let Some(d) = get_json::<Drill>(records, "drill", key.value().1)? {
            if keep(&d) {
                return Ok(Some(d));
            }
        }
    }
    Ok(None)
}

impl Tx {
    pub fn drill(&self, id: &str) -> Result<Option<Drill>> {
        get_json(&self.txn.open_table(TABLE)?, "drill", id)
    }

    /// The drill `id`, which must exist.
    pub fn existing_drill(&self, id: &str) -> Result<Drill> {
        self.drill(id)?.ok_or_else(|| StoreError::NotFound {
            kind: "drill",
            id: id.to_string(),
        })
    }

    pub fn create_drill(&mut self, drill: &Drill) -> Result<()> {
        if self.drill(&drill.id)?.is_some() {
            return Err(StoreError::Conflict(format!("drill '{}' exists", drill.id)));
        }
        put_json(&mut self.txn.open_table(TABLE)?, &drill.id, drill)?;
        self.txn
            .open_table(BY_WORKSPACE)?
            .insert((drill.workspace_id.as_str(), drill.id.as_str()), ())?;
        self.txn
            .open_table(BY_DATABASE)?
            .insert((drill.database_id.as_str(), drill.id.as_str()), ())?;
        self.audit(
            "drill.request",
            "drill",
            &drill.id,
            Some(&drill.workspace_id),
            Some(&drill.database_id),
            None::<&()>,
            Some(drill),
        )?;
        Ok(())
    }

    /// Stores a changed drill, audited as `drill.<action>` (`before` → `after`).
    pub fn save_drill(&mut self, action: &str, before: &Drill, after: &Drill) -> Result<()> {
        put_json(&mut self.txn.open_table(TABLE)?, &after.id, after)?;
        self.audit(
            &format!("drill.{action}"),
            "drill",
            &after.id,
            Some(&after.workspace_id),
            Some(&after.database_id),
            Some(before),
            Some(after),
        )?;
        Ok(())
    }

    /// The newest drill of `policy` on `database` (one runs at a time per policy).
    pub fn newest_drill_of(&self, database: &str, policy: &str) -> Result<Option<Drill>> {
        newest(
            &self.txn.open_table(BY_DATABASE)?,
            &self.txn.open_table(TABLE)?,
            database,
            |d| d.policy_id == policy,
        )
    }
}

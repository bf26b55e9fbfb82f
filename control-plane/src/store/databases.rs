//! Databases: `databases` (id → Database, secrets included) and `databases_by_workspace`.
//! Audit entries carry the secret-free view, never the secrets.

use redb::ReadTransaction;

use super::{get_json, policies, put_json, scan_index, Index2, Records, Result, StoreError, Tx};
use crate::domain::database::{Database, DbType};

pub const TABLE: Records = Records::new("databases");
pub const BY_WORKSPACE: Index2 = Index2::new("databases_by_workspace");

pub fn get(rtx: &ReadTransaction, id: &str) -> Result<Option<Database>> {
    get_json(&rtx.open_table(TABLE)?, "database", id)
}

/// Databases of one workspace (or all), of one type if given, in id order after `after`.
pub fn list(
    rtx: &ReadTransaction,
    workspace: Option<&str>,
    db_type: Option<DbType>,
    visible: impl Fn(&Database) -> bool,
    after: Option<&str>,
    limit: usize,
) -> Result<(Vec<Database>, bool)> {
    super::page(
        rtx,
        TABLE,
        "database",
        workspace.map(|ws| (BY_WORKSPACE, ws)),
        after,
        limit,
        |db: &Database| db_type.is_none_or(|t| t == db.db_type) && visible(db),
    )
}

impl Tx {
    pub fn database(&self, id: &str) -> Result<Option<Database>> {
        get_json(&self.txn.open_table(TABLE)?, "database", id)
    }

    pub fn create_database(&mut self, db: &Database) -> Result<()> {
        if self.database(&db.id)?.is_some() {
            return Err(StoreError::Conflict(format!(
                "a database with id '{}' is already registered; database ids are unique across the platform, choose another",
                db.id
            )));
        }
        self.check_database_agent(db)?;
        put_json(&mut self.txn.open_table(TABLE)?, &db.id, db)?;
        self.txn
            .open_table(BY_WORKSPACE)?
            .insert((db.workspace_id.as_str(), db.id.as_str()), ())?;
        self.audit(
            "database.create",
            "database",
            &db.id,
            Some(&db.workspace_id),
            Some(&db.id),
            None::<&()>,
            Some(&db.view()),
        )?;
        Ok(())
    }

    pub fn update_database(&mut self, db: &Database) -> Result<Database> {
        let before = self.database(&db.id)?.ok_or_else(|| StoreError::NotFound {
            kind: "database",
            id: db.id.clone(),
        })?;
        if before.db_type != db.db_type && self.has_policies(&db.id)? {
            return Err(StoreError::Conflict(format!(
                "database '{}' has backup policies for type '{}'; delete them before changing its type",
                db.id,
                before.db_type.as_str()
            )));
        }
        // An agent revoked since it was named does not block other changes.
        if db.agent_id != before.agent_id {
            self.check_database_agent(db)?;
        }
        put_json(&mut self.txn.open_table(TABLE)?, &db.id, db)?;
        self.audit(
            "database.update",
            "database",
            &db.id,
            Some(&db.workspace_id),
            Some(&db.id),
            Some(&before.view()),
            Some(&db.view()),
        )?;
        Ok(before)
    }

    /// Refused while policies still refer to the database. Its catalog entries stay: they
    /// describe backups that still exist in the repository.
    pub fn delete_database(&mut self, id: &str) -> Result<Database> {
        let before = self.database(id)?.ok_or_else(|| StoreError::NotFound {
            kind: "database",
            id: id.to_string(),
        })?;
        if self.has_policies(id)? {
            return Err(StoreError::Conflict(format!(
                "database '{id}' still has backup policies; delete them first"
            )));
        }
        self.txn.open_table(TABLE)?.remove(id)?;
        self.txn
            .open_table(BY_WORKSPACE)?
            .remove((before.workspace_id.as_str(), id))?;
        self.audit(
            "database.delete",
            "database",
            id,
            Some(&before.workspace_id),
            Some(id),
            Some(&before.view()),
            None::<&()>,
        )?;
        Ok(before)
    }

    fn has_policies(&self, database: &str) -> Result<bool> {
        let mut found = false;
        scan_index(
            &self.txn.open_table(policies::BY_DATABASE)?,
            database,
            None,
            |_| {
                found = true;
                Ok(false)
            },
        )?;
        Ok(found)
    }
}

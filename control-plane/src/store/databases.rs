//! Databases: `databases` (id → Database, secrets sealed) and `databases_by_workspace`.
//! Audit entries carry the secret-free view, never the secrets.
//!
//! Connection secrets (passwords, TLS keys) are sealed like the Proxmox token secret: each value
//! with the control-plane key (`secrets.rs`), bound to its database and name
//! (`database:<id>:<name>`), so a copy of `bulwark.redb` alone reveals none, and a sealed value
//! moved to another database or name does not open. They are sealed here, on every write: a
//! `Database` read from the store carries sealed values (nothing but the agent that connects
//! needs them in clear, through [`open_secrets`]), and writing it back keeps them as they are.
//! A record carries `"secrets_sealed": true`; records from before sealing are sealed once when
//! the store opens ([`seal_stored_in_clear`]).

use std::collections::BTreeMap;

use redb::{ReadTransaction, ReadableTable, WriteTransaction};
use serde::Serialize;

use super::{get_json, policies, scan_index, Index2, Records, Result, StoreError, Tx};
use crate::domain::database::{Database, DatabaseType};
use crate::secrets::SecretKey;

pub const TABLE: Records = Records::new("databases");
pub const BY_WORKSPACE: Index2 = Index2::new("databases_by_workspace");

pub fn get(rtx: &ReadTransaction, id: &str) -> Result<Option<Database>> {
    get_json(&rtx.open_table(TABLE)?, "database", id)
}

/// Databases of one workspace (or all), of one type if given, in id order after `after`.
pub fn list(
    rtx: &ReadTransaction,
    workspace: Option<&str>,
    db_type: Option<DatabaseType>,
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

/// The associated data that binds a sealed secret to its database and name.
pub fn secret_aad(database: &str, name: &str) -> String {
    format!("database:{database}:{name}")
}

/// `db` with every secret sealed: values sealed for this database and name already (read from
/// the store), or unchanged from `before` (a damaged one stays as it is rather than being
/// taken for a new secret), are kept; any other value is new and sealed now.
fn seal(key: &SecretKey, db: &Database, before: Option<&Database>) -> Database {
    let mut out = db.clone();
    for (name, value) in out.secrets.iter_mut() {
        let aad = secret_aad(&db.id, name);
        let unchanged = before.and_then(|b| b.secrets.get(name)) == Some(&*value);
        if !unchanged && key.open(&aad, value).is_err() {
            *value = key.seal(&aad, value);
        }
    }
    out
}

/// A database record as stored: marked as holding sealed secrets.
#[derive(Serialize)]
struct Sealed<'a> {
    #[serde(flatten)]
    db: &'a Database,
    secrets_sealed: bool,
}

fn put_sealed(txn: &mut WriteTransaction, db: &Database) -> Result<()> {
    let bytes = serde_json::to_vec(&Sealed {
        db,
        secrets_sealed: true,
    })
    .expect("records serialise");
    txn.open_table(TABLE)?
        .insert(db.id.as_str(), bytes.as_slice())?;
    Ok(())
}

/// The clear connection secrets of `db` (as read from the store), for the agent that connects.
pub fn open_secrets(key: &SecretKey, db: &Database) -> Result<BTreeMap<String, String>> {
    db.secrets
        .iter()
        .map(|(name, sealed)| {
            key.open(&secret_aad(&db.id, name), sealed)
                .map(|clear| (name.clone(), clear))
                .map_err(|e| StoreError::Corrupt {
                    what: "database secret",
                    key: format!("{}/{name}", db.id),
                    reason: format!("{e}; send the database's secrets again"),
                })
        })
        .collect()
}

/// Seals the secrets of every record written before they were sealed (once, when the store
/// opens); returns how many records it sealed.
pub(super) fn seal_stored_in_clear(txn: &mut WriteTransaction, key: &SecretKey) -> Result<usize> {
    let mut clear = Vec::new();
    for item in txn.open_table(TABLE)?.iter()? {
        let (id, bytes) = item?;
        let Ok(value) = serde_json::from_slice::<serde_json::Value>(bytes.value()) else {
            continue; // A damaged record answers its own error when read.
        };
        if value.get("secrets_sealed").is_some() {
            continue;
        }
        if let Ok(db) = serde_json::from_value::<Database>(value) {
            clear.push((id.value().to_string(), db));
        }
    }
    for (_, db) in &clear {
        let mut sealed = db.clone();
        for (name, value) in sealed.secrets.iter_mut() {
            *value = key.seal(&secret_aad(&db.id, name), value);
        }
        put_sealed(txn, &sealed)?;
    }
    if !clear.is_empty() {
        tracing::info!(
            databases = clear.len(),
            "sealed the connection secrets of databases stored before secrets were sealed"
        );
    }
    Ok(clear.len())
}

impl Tx {
    /// The clear connection secrets of database `id` (`None`: no such database).
    pub fn database_secrets(&self, id: &str) -> Result<Option<BTreeMap<String, String>>> {
        self.database(id)?
            .map(|db| open_secrets(&self.secrets, &db))
            .transpose()
    }

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
        let stored = seal(&self.secrets, db, None);
        put_sealed(&mut self.txn, &stored)?;
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
        let stored = seal(&self.secrets, db, Some(&before));
        put_sealed(&mut self.txn, &stored)?;
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

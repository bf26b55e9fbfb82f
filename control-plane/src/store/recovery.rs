//! Recovery keys: `recovery_keys` (workspace → RecoveryKey, the key sealed with the secrets
//! key). The key itself is never written to the audit log; its creation, its one showing and
//! a chosen passphrase are.

use redb::ReadTransaction;

use super::{get_json, put_json, Records, Result, StoreError, Tx};
use crate::domain::recovery::{aad, RecoveryKey};

pub const TABLE: Records = Records::new("recovery_keys");

pub fn get(rtx: &ReadTransaction, workspace: &str) -> Result<Option<RecoveryKey>> {
    get_json(&rtx.open_table(TABLE)?, "recovery key", workspace)
}

/// What showing the recovery key found.
pub enum Showing {
    /// The key, opened; it is now recorded as shown to the actor.
    Shown(String),
    /// It was shown (or chosen) before.
    Already(RecoveryKey),
}

impl Tx {
    pub fn recovery_key(&self, workspace: &str) -> Result<Option<RecoveryKey>> {
        get_json(&self.txn.open_table(TABLE)?, "recovery key", workspace)
    }

    /// The workspace's recovery key in clear, made with `make` if it has none yet (the first
    /// of two racing writers is kept).
    pub fn recovery_key_or_make(
        &mut self,
        workspace: &str,
        make: impl FnOnce() -> String,
    ) -> Result<String> {
        let record = match self.recovery_key(workspace)? {
            Some(r) => r,
            None => {
                let record = RecoveryKey {
                    sealed: self.secrets.seal(&aad(workspace), &make()),
                    chosen: false,
                    created_at: self.now,
                    shown_at: None,
                    shown_to: None,
                };
                put_json(&mut self.txn.open_table(TABLE)?, workspace, &record)?;
                self.audit(
                    "recovery_key.create",
                    "workspace",
                    workspace,
                    Some(workspace),
                    None,
                    None::<&()>,
                    Some(&serde_json::json!({"recovery_key": "generated (sealed; shown once)"})),
                )?;
                record
            }
        };
        Ok(self.secrets.open(&aad(workspace), &record.sealed)?)
    }

    /// Shows the recovery key once (made now if there is none): recorded as shown to the
    /// actor, audited as `recovery_key.show` without the key.
    pub fn show_recovery_key(
        &mut self,
        workspace: &str,
        make: impl FnOnce() -> String,
    ) -> Result<Showing> {
        if let Some(r) = self.recovery_key(workspace)? {
            if r.shown_at.is_some() {
                return Ok(Showing::Already(r));
            }
        }
        let key = self.recovery_key_or_make(workspace, make)?;
        let mut record = self.recovery_key(workspace)?.expect("just made");
        record.shown_at = Some(self.now);
        record.shown_to = Some(self.actor.name.clone());
        put_json(&mut self.txn.open_table(TABLE)?, workspace, &record)?;
        self.audit(
            "recovery_key.show",
            "workspace",
            workspace,
            Some(workspace),
            None,
            None::<&()>,
            Some(&serde_json::json!({"shown_to": record.shown_to, "shown_at": record.shown_at})),
        )?;
        Ok(Showing::Shown(key))
    }

    /// Refused (409) once a repository of the workspace exists: its key slot holds the current
    /// key, so a chosen passphrase would open nothing.
    pub fn check_recovery_key_choosable(&self, workspace: &str) -> Result<()> {
        let made: Vec<String> = self
            .storages_of(workspace)?
            .into_iter()
            .filter(|s| s.repository_exists)
            .map(|s| s.id)
            .collect();
        if !made.is_empty() {
            return Err(StoreError::Conflict(format!(
                "the repository of backup storage {} already exists with the current recovery key in its key slot; a recovery passphrase can only be chosen before a workspace's first repository is made",
                made.join(", ")
            )));
        }
        Ok(())
    }

    /// Replaces the recovery key by a passphrase a workspace admin chose; refused (409) once a
    /// repository of the workspace exists, since its slot holds the old key.
    pub fn choose_recovery_key(&mut self, workspace: &str, passphrase: &str) -> Result<()> {
        self.check_recovery_key_choosable(workspace)?;
        let record = RecoveryKey {
            sealed: self.secrets.seal(&aad(workspace), passphrase),
            chosen: true,
            created_at: self.now,
            shown_at: Some(self.now),
            shown_to: Some(self.actor.name.clone()),
        };
        put_json(&mut self.txn.open_table(TABLE)?, workspace, &record)?;
        self.audit(
            "recovery_key.choose",
            "workspace",
            workspace,
            Some(workspace),
            None,
            None::<&()>,
            Some(&serde_json::json!({"recovery_key": "chosen by a workspace admin (sealed; never shown)", "chosen_by": record.shown_to})),
        )?;
        Ok(())
    }
}

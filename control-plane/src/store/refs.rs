//! References one record makes to another by id — a database's agent, a policy's storage, a
//! job's agent and database — resolved inside the referring record's workspace, in the write
//! transaction that stores the reference.
//!
//! Why here and not only in the handlers: a handler checks what the *caller* may see, but the
//! invariant that matters is between records ("a database of workspace B is served by an agent
//! of B"), and it must hold however a record is written (API, enrolment, scheduler, retries).
//! A database of B once named an agent of A in `agent_id`; A's agent was then handed B's job.
//! Checking in the transaction of the write also leaves no gap between the check and the write.
//! An object of another workspace is answered exactly like a missing one (`NotFound`, 404), so
//! a body cannot be used to probe another tenant's ids.

use super::{Result, StoreError, Tx};
use crate::domain::agent::Agent;
use crate::domain::database::Database;
use crate::domain::job::Job;
use crate::domain::policy::Policy;
use crate::domain::storage::{BackupStorage, StorageState};
use crate::domain::Violation;

fn not_found(kind: &'static str, id: &str) -> StoreError {
    StoreError::NotFound {
        kind,
        id: id.to_string(),
    }
}

impl Tx {
    /// The agent `id` if it belongs to `workspace`.
    pub fn agent_in(&self, workspace: &str, id: &str) -> Result<Agent> {
        self.agent(id)?
            .filter(|a| a.workspace_id == workspace)
            .ok_or_else(|| not_found("agent", id))
    }

    /// The database `id` if it belongs to `workspace`.
    pub fn database_in(&self, workspace: &str, id: &str) -> Result<Database> {
        self.database(id)?
            .filter(|d| d.workspace_id == workspace)
            .ok_or_else(|| not_found("database", id))
    }

    /// The backup storage `id` of `workspace` (storage ids are per workspace, so the lookup
    /// cannot leave it).
    pub fn storage_in(&self, workspace: &str, id: &str) -> Result<BackupStorage> {
        self.storage(workspace, id)?
            .ok_or_else(|| not_found("backup storage", id))
    }

    /// Checks the agent a database names: of the database's own workspace and not revoked.
    pub(crate) fn check_database_agent(&self, db: &Database) -> Result<()> {
        let Some(id) = &db.agent_id else {
            return Ok(());
        };
        let agent = self.agent_in(&db.workspace_id, id)?;
        if agent.revoked_at.is_some() {
            return Err(StoreError::Rejected(vec![Violation::new(
                "agent_id",
                format!(
                    "agent '{id}' is revoked; name an enrolled agent of workspace '{}'",
                    db.workspace_id
                ),
            )]));
        }
        Ok(())
    }

    /// Checks what a policy names: its database and its backup storage (when given, and on an
    /// update when changed), both of the policy's workspace; the storage must be active.
    pub(crate) fn check_policy_refs(&self, policy: &Policy, before: Option<&Policy>) -> Result<()> {
        self.database_in(&policy.workspace_id, &policy.db_identifier)?;
        let changed = before.is_none_or(|b| b.storage_id != policy.storage_id);
        if let (Some(storage), true) = (&policy.storage_id, changed) {
            self.active_storage_in(&policy.workspace_id, storage, "storage_id")?;
        }
        Ok(())
    }

    /// The backup storage `id` of `workspace` if it is active (`Rejected` at `field` when not:
    /// a storage still being created or in error takes no backups).
    pub fn active_storage_in(
        &self,
        workspace: &str,
        id: &str,
        field: &str,
    ) -> Result<BackupStorage> {
        let storage = self.storage_in(workspace, id)?;
        if storage.status != StorageState::Active {
            return Err(StoreError::Rejected(vec![Violation::new(
                field,
                format!(
                    "backup storage '{id}' is {}, not active{}; wait until it is active or name another",
                    storage.status.as_str(),
                    storage
                        .status_message
                        .as_deref()
                        .map(|m| format!(" ({m})"))
                        .unwrap_or_default()
                ),
            )]));
        }
        Ok(storage)
    }

    /// The storage a job or policy of `workspace` uses when none is named: `None` when the
    /// workspace has no storage (the agent's own configured repository is used), its only
    /// storage, or its only active one; with several to choose from, `Rejected` at `field`
    /// naming them.
    pub fn default_storage(&self, workspace: &str, field: &str) -> Result<Option<BackupStorage>> {
        let all = self.storages_of(workspace)?;
        if all.len() <= 1 {
            return Ok(all.into_iter().next());
        }
        let names = all
            .iter()
            .map(|s| s.id.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let mut active: Vec<BackupStorage> = all
            .iter()
            .filter(|s| s.status == StorageState::Active)
            .cloned()
            .collect();
        if active.len() == 1 {
            return Ok(active.pop());
        }
        Err(StoreError::Rejected(vec![Violation::new(
            field,
            format!(
                "workspace '{workspace}' has {} backup storages ({names}); name the one to use",
                all.len()
            ),
        )]))
    }

    /// Checks what a job names: its database and agent, both of the job's workspace.
    /// A storage-wide job (gc, a verify of the whole storage) names no database.
    pub(crate) fn check_job_refs(&self, job: &Job) -> Result<()> {
        if !job.database_id.is_empty() {
            self.database_in(&job.workspace_id, &job.database_id)?;
        }
        self.agent_in(&job.workspace_id, &job.agent_id)?;
        Ok(())
    }

    /// The agent that may run jobs of `db`: the one it names, if that is a live agent of the
    /// database's workspace. Records written before references were checked may name another
    /// workspace's agent; they are served by none (and the scheduler says so) rather than
    /// handing the job to a stranger.
    pub fn serving_agent(&self, db: &Database) -> Result<Option<Agent>> {
        let Some(id) = &db.agent_id else {
            return Ok(None);
        };
        match self.agent_in(&db.workspace_id, id) {
            Ok(a) if a.revoked_at.is_none() => Ok(Some(a)),
            Ok(_) | Err(StoreError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

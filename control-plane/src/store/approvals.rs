//! Four-eyes approvals: `approvals` (id → Approval), `approvals_by_workspace`, and
//! `approval_secrets` (id → a secret the act carries, sealed with the secrets key and bound to
//! `approval:<id>`; removed once the approval is decided). Every change is stored with its
//! audit entry (`approval.request`, `approval.approve`, …) in the same transaction; the
//! record, and so the audit log, never holds the secret.

use redb::{ReadTransaction, ReadableTable};

use super::{get_json, page, put_json, Index2, Records, Result, StoreError, Tx};
use crate::domain::approval::{Approval, ApprovalStatus};

pub const TABLE: Records = Records::new("approvals");
pub const BY_WORKSPACE: Index2 = Index2::new("approvals_by_workspace");
pub const SECRETS: Records = Records::new("approval_secrets");

fn secret_aad(id: &str) -> String {
    format!("approval:{id}")
}

pub fn get(rtx: &ReadTransaction, id: &str) -> Result<Option<Approval>> {
    get_json(&rtx.open_table(TABLE)?, "approval", id)
}

/// One page of approvals in the order they were requested (of one workspace, or all).
pub fn list(
    rtx: &ReadTransaction,
    workspace: Option<&str>,
    keep: impl Fn(&Approval) -> bool,
    after: Option<&str>,
    limit: usize,
) -> Result<(Vec<Approval>, bool)> {
    page(
        rtx,
        TABLE,
        "approval",
        workspace.map(|ws| (BY_WORKSPACE, ws)),
        after,
        limit,
        keep,
    )
}

impl Tx {
    pub fn approval(&self, id: &str) -> Result<Option<Approval>> {
        get_json(&self.txn.open_table(TABLE)?, "approval", id)
    }

    /// The approval `id`, which must exist.
    pub fn existing_approval(&self, id: &str) -> Result<Approval> {
        self.approval(id)?.ok_or_else(|| StoreError::NotFound {
            kind: "approval",
            id: id.to_string(),
        })
    }

    /// Stores a new request (and its secret, sealed), audited as `approval.request`.
    pub fn create_approval(&mut self, approval: &Approval, secret: Option<&str>) -> Result<()> {
        if self.approval(&approval.id)?.is_some() {
            return Err(StoreError::Conflict(format!(
                "approval '{}' exists",
                approval.id
            )));
        }
        put_json(&mut self.txn.open_table(TABLE)?, &approval.id, approval)?;
        self.txn
            .open_table(BY_WORKSPACE)?
            .insert((approval.workspace_id.as_str(), approval.id.as_str()), ())?;
        if let Some(secret) = secret {
            let sealed = self.secrets.seal(&secret_aad(&approval.id), secret);
            self.txn
                .open_table(SECRETS)?
                .insert(approval.id.as_str(), sealed.as_bytes())?;
        }
        self.audit_approval("request", None, approval)
    }

    /// Stores a changed approval, audited as `approval.<action>` (`before` → `after`). Once it
    /// is no longer pending its secret is no longer needed and goes.
    pub fn save_approval(
        &mut self,
        action: &str,
        before: &Approval,
        after: &Approval,
    ) -> Result<()> {
        put_json(&mut self.txn.open_table(TABLE)?, &after.id, after)?;
        if !matches!(
            after.status,
            ApprovalStatus::PendingApproval | ApprovalStatus::Approved
        ) {
            self.txn.open_table(SECRETS)?.remove(after.id.as_str())?;
        }
        self.audit_approval(action, Some(before), after)
    }

    fn audit_approval(
        &mut self,
        action: &str,
        before: Option<&Approval>,
        after: &Approval,
    ) -> Result<()> {
        self.audit(
            &format!("approval.{action}"),
            "approval",
            &after.id,
            Some(&after.workspace_id),
            after.database_id.as_deref(),
            before,
            Some(after),
        )?;
        Ok(())
    }

    /// The secret stored with the approval, opened (`None`: it carries none).
    pub fn approval_secret(&self, id: &str) -> Result<Option<String>> {
        let table = self.txn.open_table(SECRETS)?;
        let Some(v) = table.get(id)? else {
            return Ok(None);
        };
        let sealed = String::from_utf8(v.value().to_vec()).map_err(|e| StoreError::Corrupt {
            what: "approval secret",
            key: id.to_string(),
            reason: e.to_string(),
        })?;
        Ok(Some(self.secrets.open(&secret_aad(id), &sealed)?))
    }

    /// Approvals still waiting (of one workspace, or all: the expiry sweep).
    pub fn pending_approvals(&self, workspace: Option<&str>) -> Result<Vec<Approval>> {
        let table = self.txn.open_table(TABLE)?;
        let mut out = Vec::new();
        for item in table.iter()? {
            let (k, v) = item?;
            let a: Approval = super::decode("approval", k.value(), v.value())?;
            if a.status == ApprovalStatus::PendingApproval
                && workspace.is_none_or(|ws| ws == a.workspace_id)
            {
                out.push(a);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::super::Store;
    use super::*;
    use crate::domain::approval::{Action, Person};
    use crate::domain::audit::Actor;

    #[tokio::test]
    async fn the_secret_is_sealed_apart_and_gone_once_decided() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let now = chrono::Utc::now();
        let a = Approval {
            id: "apr_1".into(),
            workspace_id: "acme".into(),
            database_id: None,
            action: Action::ReplaceRecoveryKey {},
            summary: "replace".into(),
            reason: "rotation".into(),
            requested_by: Person {
                user_id: "u1".into(),
                name: "bob".into(),
            },
            requested_at: now,
            expires_at: now,
            status: ApprovalStatus::PendingApproval,
            decision: None,
            cancelled_by: None,
            cancel_note: None,
            finished_at: None,
            result: serde_json::Value::Null,
            error: None,
        };
        let actor = Actor {
            kind: "user".into(),
            id: "u1".into(),
            name: "bob".into(),
        };
        let stored = a.clone();
        store
            .write(actor.clone(), move |tx| {
                tx.create_approval(&stored, Some("correct horse battery staple"))
            })
            .await
            .unwrap();
        let bytes = std::fs::read(dir.path().join(super::super::FILE_NAME)).unwrap();
        assert!(!bytes
            .windows(b"battery staple".len())
            .any(|w| w == b"battery staple"));
        let (secret, after) = store
            .write(actor, move |tx| {
                let secret = tx.approval_secret("apr_1")?;
                let mut after = a.clone();
                after.status = ApprovalStatus::Cancelled;
                tx.save_approval("cancel", &a, &after)?;
                Ok((secret, tx.approval_secret("apr_1")?))
            })
            .await
            .unwrap();
        assert_eq!(secret.as_deref(), Some("correct horse battery staple"));
        assert_eq!(after, None);
    }
}

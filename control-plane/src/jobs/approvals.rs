//! A four-eyes approval's life ([`crate::domain::approval`]): requested by someone allowed to
//! do the act (checked by its endpoint first, exactly as without four eyes), approved or
//! rejected with a note by a second admin of the workspace — never the requester — cancelled by
//! its requester (or an admin), expired when nobody decided in time (default 24 h).
//!
//! Approving only claims the approval (`approved`, in one transaction, so two admins cannot
//! both carry it out); the caller then runs the act with the endpoint's own function and
//! reports the outcome with [`finish`] (`carried_out` or `failed`). The act itself needs what
//! the HTTP layer holds (a Proxmox client for a storage), which is why it is not run here.

use chrono::Duration;

use super::decision::{check_decider, check_note, person, user_actor};
use super::Error;
use crate::domain::approval::{Action, Approval, ApprovalStatus, Decision, DEFAULT_EXPIRY_HOURS};
use crate::domain::audit::Actor;
use crate::domain::authz::{Access, Caller};
use crate::domain::new_id;
use crate::store::{self, ReadTx, Store, StoreError, Tx};

/// What a guarded endpoint asks to have done.
pub struct Request {
    pub workspace_id: String,
    pub database_id: Option<String>,
    pub action: Action,
    pub reason: String,
    /// Kept sealed beside the approval, handed back only to whoever approves it.
    pub secret: Option<String>,
}

/// An approval just approved, with the secret its act needs.
pub struct Approved {
    pub approval: Approval,
    pub secret: Option<String>,
}

/// Whether four eyes guard the destructive acts of workspace `ws`.
pub fn required(rtx: &ReadTx, ws: &str) -> Result<bool, Error> {
    Ok(store::workspaces::safeguards(rtx, ws)?.four_eyes)
}

/// Stores the request as waiting for approval. `check` runs in the same transaction first
/// (what the act would refuse that only the store knows); a second request for the same act
/// while one waits is refused (409) naming it.
pub async fn request(
    store: &Store,
    caller: &Caller,
    req: Request,
    check: impl FnOnce(&Tx) -> Result<(), StoreError> + Send + 'static,
) -> Result<Approval, Error> {
    let requester = person(caller);
    let approval = store
        .write(user_actor(caller), move |tx| {
            check(tx)?;
            let target = req.action.target(&req.workspace_id);
            if let Some(waiting) = tx
                .pending_approvals(Some(&req.workspace_id))?
                .into_iter()
                .find(|a| a.action.kind() == req.action.kind() && a.action.target(&a.workspace_id) == target)
            {
                return Err(StoreError::Conflict(format!(
                    "approval '{}' already waits for a second admin to {}; approve, reject or cancel it first",
                    waiting.id, waiting.summary
                )));
            }
            let approval = Approval {
                id: new_id("apr"),
                workspace_id: req.workspace_id.clone(),
                database_id: req.database_id,
                summary: req.action.describe(&req.workspace_id),
                action: req.action,
                reason: req.reason,
                requested_by: requester,
                requested_at: tx.now,
                expires_at: tx.now + Duration::hours(i64::from(DEFAULT_EXPIRY_HOURS)),
                status: ApprovalStatus::PendingApproval,
                decision: None,
                cancelled_by: None,
                cancel_note: None,
                finished_at: None,
                result: serde_json::Value::Null,
                error: None,
            };
            tx.create_approval(&approval, req.secret.as_deref())?;
            Ok(approval)
        })
        .await?;
    Ok(approval)
}

/// The stored approval `id` (the caller's right to see it was checked by the handler).
fn readable(store: &Store, id: &str) -> Result<Approval, Error> {
    Ok(
        store::approvals::get(&store.read()?, id)?.ok_or_else(|| StoreError::NotFound {
            kind: "approval",
            id: id.to_string(),
        })?,
    )
}

/// A second admin's decision. Approved: the approval is claimed (`approved`) and handed back
/// with its secret for the caller to carry out, then [`finish`]. Rejected: final, nothing done.
pub async fn decide(
    store: &Store,
    caller: &Caller,
    id: String,
    approve: bool,
    note: Option<String>,
) -> Result<Approved, Error> {
    check_note(note.as_deref())?;
    let by = person(caller);
    let approval = readable(store, &id)?;
    check_decider(
        caller,
        &approval.requested_by,
        &approval.workspace_id,
        &format!("approval '{id}' ({})", approval.summary),
        approve,
    )?;
    let outcome = store
        .write(user_actor(caller), move |tx| {
            let before = tx.existing_approval(&id)?;
            if before.status != ApprovalStatus::PendingApproval {
                return Err(StoreError::Conflict(format!(
                    "approval '{id}' is {}, not waiting for a decision",
                    before.status.as_str()
                )));
            }
            let mut after = before.clone();
            if expire_if_due(tx, &mut after)? {
                // Committed, so the expiry stays recorded; the caller hears why.
                return Ok(Err(after));
            }
            after.decision = Some(Decision {
                by,
                approved: approve,
                note,
                at: tx.now,
            });
            if !approve {
                after.status = ApprovalStatus::Rejected;
                after.finished_at = Some(tx.now);
                tx.save_approval("reject", &before, &after)?;
                return Ok(Ok(Approved {
                    approval: after,
                    secret: None,
                }));
            }
            after.status = ApprovalStatus::Approved;
            let secret = tx.approval_secret(&id)?;
            tx.save_approval("approve", &before, &after)?;
            Ok(Ok(Approved {
                approval: after,
                secret,
            }))
        })
        .await?;
    outcome.map_err(|expired| {
        Error::Store(StoreError::Conflict(format!(
            "approval '{}' expired at {} before anyone approved it; request the act again",
            expired.id,
            expired.expires_at.to_rfc3339()
        )))
    })
}

/// The name the audit log gives an approved act: the approver, and whose request it was.
pub fn act_actor(caller: &Caller, approval: &Approval) -> Actor {
    Actor {
        kind: "user".into(),
        id: caller.user_id.clone(),
        name: format!(
            "{} (approving {} requested by {})",
            caller.user_name, approval.id, approval.requested_by.name
        ),
    }
}

/// Records how carrying out an approved act went: `carried_out` with what it gave, or `failed`
/// with the act's refusal.
pub async fn finish(
    store: &Store,
    caller: &Caller,
    id: String,
    outcome: Result<serde_json::Value, String>,
) -> Result<Approval, Error> {
    Ok(store
        .write(user_actor(caller), move |tx| {
            let before = tx.existing_approval(&id)?;
            if before.status != ApprovalStatus::Approved {
                return Err(StoreError::Conflict(format!(
                    "approval '{id}' is {}, not approved and being carried out",
                    before.status.as_str()
                )));
            }
            let mut after = before.clone();
            after.finished_at = Some(tx.now);
            let action = match outcome {
                Ok(result) => {
                    after.status = ApprovalStatus::CarriedOut;
                    after.result = result;
                    "carry_out"
                }
                Err(error) => {
                    after.status = ApprovalStatus::Failed;
                    after.error = Some(error);
                    "fail"
                }
            };
            tx.save_approval(action, &before, &after)?;
            Ok(after)
        })
        .await?)
}

/// The requester (or an admin of the workspace) withdraws a request still waiting.
pub async fn cancel(
    store: &Store,
    caller: &Caller,
    id: String,
    note: Option<String>,
) -> Result<Approval, Error> {
    check_note(note.as_deref())?;
    let by = person(caller);
    let approval = readable(store, &id)?;
    let admin = caller.access(&approval.workspace_id, None) >= Access::Admin;
    if approval.requested_by.user_id != by.user_id && !admin {
        return Err(Error::Forbidden(format!(
            "only its requester or an admin of workspace '{}' may cancel approval '{id}'",
            approval.workspace_id
        )));
    }
    Ok(store
        .write(user_actor(caller), move |tx| {
            let before = tx.existing_approval(&id)?;
            if before.status != ApprovalStatus::PendingApproval {
                return Err(StoreError::Conflict(format!(
                    "approval '{id}' is {}; only a request still waiting can be cancelled",
                    before.status.as_str()
                )));
            }
            let mut after = before.clone();
            if expire_if_due(tx, &mut after)? {
                return Ok(after);
            }
            after.status = ApprovalStatus::Cancelled;
            after.finished_at = Some(tx.now);
            after.cancelled_by = Some(by);
            after.cancel_note = note;
            tx.save_approval("cancel", &before, &after)?;
            Ok(after)
        })
        .await?)
}

/// Marks a pending approval past its expiry as expired; `true` when it was.
fn expire_if_due(tx: &mut Tx, a: &mut Approval) -> Result<bool, StoreError> {
    if a.status != ApprovalStatus::PendingApproval || tx.now <= a.expires_at {
        return Ok(false);
    }
    let before = a.clone();
    a.status = ApprovalStatus::Expired;
    a.finished_at = Some(tx.now);
    a.error = Some(format!(
        "nobody approved it before {}",
        a.expires_at.to_rfc3339()
    ));
    tx.save_approval("expire", &before, a)?;
    Ok(true)
}

/// The scheduler's sweep: every approval nobody decided in time expires.
pub fn expire_due(tx: &mut Tx) -> Result<usize, StoreError> {
    let mut n = 0;
    for mut a in tx.pending_approvals(None)? {
        if expire_if_due(tx, &mut a)? {
            n += 1;
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::authz::{Role, RoleBinding};

    fn admin(id: &str) -> Caller {
        Caller {
            user_id: id.into(),
            user_name: id.into(),
            token_id: format!("tok-{id}"),
            roles: vec![RoleBinding {
                role: Role::WorkspaceAdmin,
                workspace_id: Some("acme".into()),
                database_id: None,
            }],
        }
    }

    fn delete(backup: &str) -> Request {
        Request {
            workspace_id: "acme".into(),
            database_id: Some("crm".into()),
            action: Action::DeleteBackup {
                backup_id: backup.into(),
            },
            reason: "test data".into(),
            secret: Some("s3cret passphrase".into()),
        }
    }

    fn status(e: Error) -> String {
        match e {
            Error::Forbidden(m) => format!("403 {m}"),
            Error::Store(StoreError::Conflict(m)) => format!("409 {m}"),
            e => format!("other {e}"),
        }
    }

    #[tokio::test]
    async fn a_request_waits_for_a_second_admin_and_is_decided_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (bob, alice) = (admin("bob"), admin("alice"));
        let a = request(&store, &bob, delete("b1"), |_| Ok(()))
            .await
            .unwrap();
        assert_eq!(a.status, ApprovalStatus::PendingApproval);
        assert_eq!(a.requested_by.name, "bob");
        // The same act again while it waits: refused, naming the waiting one.
        let e = request(&store, &alice, delete("b1"), |_| Ok(()))
            .await
            .unwrap_err();
        assert!(status(e).starts_with(&format!("409 approval '{}'", a.id)));
        // A check of the act refuses before anything is stored.
        let e = request(&store, &bob, delete("b2"), |_| {
            Err(StoreError::Conflict("no".into()))
        })
        .await
        .unwrap_err();
        assert_eq!(status(e), "409 no");
        // The requester cannot decide it; a second admin can, once.
        let e = decide(&store, &bob, a.id.clone(), true, None)
            .await
            .err()
            .unwrap();
        assert!(status(e).starts_with("403"), "self-approval");
        let got = decide(&store, &alice, a.id.clone(), true, Some("ok".into()))
            .await
            .unwrap();
        assert_eq!(got.approval.status, ApprovalStatus::Approved);
        assert_eq!(got.secret.as_deref(), Some("s3cret passphrase"));
        let e = decide(&store, &admin("carol"), a.id.clone(), true, None)
            .await
            .err()
            .unwrap();
        assert!(status(e).starts_with("409"), "claimed once");
        let done = finish(
            &store,
            &alice,
            a.id.clone(),
            Ok(serde_json::json!({"x": 1})),
        )
        .await
        .unwrap();
        assert_eq!(done.status, ApprovalStatus::CarriedOut);
        assert_eq!(done.decision.unwrap().by.name, "alice");
        // Rejected and cancelled requests are final.
        let r = request(&store, &bob, delete("b3"), |_| Ok(()))
            .await
            .unwrap();
        let rejected = decide(&store, &alice, r.id.clone(), false, None)
            .await
            .unwrap();
        assert_eq!(rejected.approval.status, ApprovalStatus::Rejected);
        assert!(status(cancel(&store, &bob, r.id, None).await.unwrap_err()).starts_with("409"));
        let c = request(&store, &bob, delete("b4"), |_| Ok(()))
            .await
            .unwrap();
        let cancelled = cancel(&store, &bob, c.id, Some("not needed".into()))
            .await
            .unwrap();
        assert_eq!(cancelled.status, ApprovalStatus::Cancelled);
        assert_eq!(cancelled.cancelled_by.unwrap().name, "bob");
        assert_eq!(cancelled.cancel_note.as_deref(), Some("not needed"));
    }

    #[tokio::test]
    async fn an_expired_request_cannot_be_approved() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let a = request(&store, &admin("bob"), delete("b1"), |_| Ok(()))
            .await
            .unwrap();
        let b = request(&store, &admin("bob"), delete("b2"), |_| Ok(()))
            .await
            .unwrap();
        store.advance_clock_for_tests(Duration::hours(25));
        let e = decide(&store, &admin("alice"), a.id.clone(), true, None)
            .await
            .err()
            .unwrap();
        assert!(status(e).contains("expired"));
        assert_eq!(
            readable(&store, &a.id).unwrap().status,
            ApprovalStatus::Expired
        );
        let swept = store
            .write(crate::jobs::system_actor(), expire_due)
            .await
            .unwrap();
        assert_eq!(swept, 1);
        assert_eq!(
            readable(&store, &b.id).unwrap().status,
            ApprovalStatus::Expired
        );
    }
}

//! Four eyes for destructive acts (issue 13), as users of a workspace notice them: with the
//! workspace's `four_eyes` on, deleting a manual backup, deleting a storage, shortening
//! retention and replacing the recovery key answer 202 with an approval and change nothing
//! until a second workspace admin approves — never the requester; rejected, cancelled and
//! expired requests change nothing; with four eyes off everything acts at once, as before.
//! The control plane runs in-process; Proxmox is the simulator; catalog entries are written
//! through the store, standing in for the job protocol.

use std::path::Path;
use std::time::Duration;

use bulwark_control_plane::domain::audit::Actor;
use bulwark_control_plane::domain::backup::{BackupRecord, BackupStatus, SnapshotKind};
use bulwark_control_plane::domain::database::DatabaseType;
use bulwark_tests::control_plane::TestServer;
use bulwark_tests::pve_sim::PveSim;
use reqwest::StatusCode;
use serde_json::{json, Value};

async fn start(dir: &Path) -> TestServer {
    TestServer::start(dir, Duration::from_secs(300)).await
}

/// Workspace `ws` on `plan` with four eyes `on`, its admin `bob` (the requester) and a second
/// admin `alice`: (bob, alice).
async fn workspace(srv: &TestServer, ws: &str, plan: &str, on: bool) -> (String, String) {
    let bob = srv.workspace(ws, plan, 1 << 40).await;
    let (s, v) = srv
        .put(
            &format!("/api/v1/workspaces/{ws}"),
            &srv.admin,
            json!({"name": ws, "plan": plan, "quota_bytes": 1u64 << 40, "four_eyes": on}),
        )
        .await;
    assert_eq!((s, &v["four_eyes"]), (StatusCode::OK, &json!(on)), "{v}");
    let alice = srv
        .user(&format!("{ws}-alice"), "workspace-admin", ws)
        .await;
    (bob, alice)
}

/// Database `crm` of `ws` with the manual backup `id` in its catalog.
async fn manual_backup(srv: &TestServer, ws: &str, token: &str, id: &str) {
    let (s, v) = srv
        .post(
            "/api/v1/databases",
            token,
            json!({"id": "crm", "workspace_id": ws, "type": "sqlite", "connection": {"path": "/srv/crm.db"}}),
        )
        .await;
    assert!(s == StatusCode::CREATED || s == StatusCode::CONFLICT, "{v}");
    let now = chrono::Utc::now();
    let b = BackupRecord {
        id: id.into(),
        workspace_id: ws.into(),
        database_id: "crm".into(),
        db_type: DatabaseType::Sqlite,
        kind: SnapshotKind::Manual,
        status: BackupStatus::Failed,
        started_at: now,
        finished_at: Some(now),
        snapshot: None,
        policy_id: None,
        storage_id: None,
        method: None,
        logical_bytes: 0,
        stored_bytes: 0,
        error: Some("disk full".into()),
        job_id: None,
        notes: None,
        tags: Default::default(),
        verified_at: None,
        verification: None,
        forget_job: None,
    };
    let actor = Actor {
        kind: "system".into(),
        id: "job-protocol-stand-in".into(),
        name: "test".into(),
    };
    srv.store
        .write(actor, move |tx| tx.record_backup(&b))
        .await
        .unwrap();
}

async fn audit_text(srv: &TestServer) -> String {
    let (s, v) = srv.get("/api/v1/audit?page_size=500", &srv.admin).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v.to_string()
}

/// `POST /api/v1/approvals/{id}/{verb}` (`approve`, `reject`, `cancel`) as `token`.
async fn decide(
    srv: &TestServer,
    id: &str,
    verb: &str,
    token: &str,
    body: Value,
) -> (StatusCode, Value) {
    srv.post(&format!("/api/v1/approvals/{id}/{verb}"), token, body)
        .await
}

/// Approves `id` as `token` and expects the act carried out.
async fn approve(srv: &TestServer, id: &str, token: &str) -> Value {
    let (s, done) = decide(srv, id, "approve", token, json!({})).await;
    assert_eq!(
        (s, &done["status"]),
        (StatusCode::OK, &json!("carried_out")),
        "{done}"
    );
    done
}

fn approval_id(v: &Value) -> String {
    let id = v["id"].as_str().unwrap_or_default();
    assert!(id.starts_with("apr_"), "not an approval: {v}");
    id.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_backup_is_deleted_only_when_a_second_admin_approves() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(dir.path()).await;
    let (bob, alice) = workspace(&srv, "acme", "shared", true).await;
    let viewer = srv.user("vera", "viewer", "acme").await;
    manual_backup(&srv, "acme", &bob, "b1").await;

    // Without a reason: refused, naming the query parameter.
    let (s, e) = srv.delete("/api/v1/backups/b1", &bob).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    assert_eq!(e["error"]["details"][0]["path"], "reason", "{e}");
    // With one: 202 with the approval; the backup is still there.
    let (s, a) = srv
        .delete("/api/v1/backups/b1?reason=test%20data%20only", &bob)
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{a}");
    let id = approval_id(&a);
    assert_eq!(
        (&a["status"], &a["action"]["kind"], &a["reason"]),
        (
            &json!("pending_approval"),
            &json!("delete_backup"),
            &json!("test data only")
        ),
        "{a}"
    );
    assert_eq!(srv.get("/api/v1/backups/b1", &bob).await.0, StatusCode::OK);
    // Listed for the workspace's admins.
    let (_, list) = srv
        .get(
            "/api/v1/approvals?workspace=acme&status=pending_approval",
            &alice,
        )
        .await;
    assert_eq!(list["items"][0]["id"], json!(id), "{list}");

    // Neither the requester nor a viewer may approve it.
    let (s, e) = decide(&srv, &id, "approve", &bob, json!({})).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("requested by you"),
        "{e}"
    );
    let (s, e) = decide(&srv, &id, "approve", &viewer, json!({})).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{e}");
    assert_eq!(srv.get("/api/v1/backups/b1", &bob).await.0, StatusCode::OK);

    // A second admin's approval deletes it.
    let (s, done) = decide(
        &srv,
        &id,
        "approve",
        &alice,
        json!({"note": "checked with the team"}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{done}");
    assert_eq!(done["status"], "carried_out", "{done}");
    assert_eq!(done["decision"]["by"]["name"], "acme-alice", "{done}");
    assert_eq!(
        srv.get("/api/v1/backups/b1", &bob).await.0,
        StatusCode::NOT_FOUND
    );
    // Decided once.
    let (s, _) = decide(&srv, &id, "approve", &alice, json!({})).await;
    assert_eq!(s, StatusCode::CONFLICT);
    // The audit log names both people.
    let audit = audit_text(&srv).await;
    for needle in [
        "approval.request",
        "approval.approve",
        "approval.carry_out",
        "approving",
        "requested by acme-admin",
    ] {
        assert!(audit.contains(needle), "{needle} is not in the audit log");
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_or_cancelled_storage_delete_leaves_the_storage() {
    let sim = PveSim::start_default();
    let dir = tempfile::tempdir().unwrap();
    let srv = start(dir.path()).await;
    srv.register_pve(&sim).await;
    let (bob, alice) = workspace(&srv, "acme", "dedicated", true).await;
    let base = "/api/v1/workspaces/acme/backup-storages";
    let (s, v) = srv
        .post(
            base,
            &bob,
            json!({"id": "main", "cluster_id": "pve", "type": "nfs", "server": "10.0.0.10",
                "export": "/srv/backup/main", "nodes": ["pve1"], "capacity_bytes": 1u64 << 40}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let main = format!("{base}/main");

    let (s, a) = srv.delete(&format!("{main}?reason=moving"), &bob).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{a}");
    let id = approval_id(&a);
    // A second request for the same act while one waits is refused, naming it.
    let (s, e) = srv.delete(&format!("{main}?reason=again"), &alice).await;
    assert_eq!(s, StatusCode::CONFLICT, "{e}");
    assert!(e["error"]["message"].as_str().unwrap().contains(&id), "{e}");
    let (s, r) = decide(
        &srv,
        &id,
        "reject",
        &alice,
        json!({"note": "we still need it"}),
    )
    .await;
    assert_eq!(
        (s, &r["status"]),
        (StatusCode::OK, &json!("rejected")),
        "{r}"
    );
    assert_eq!(r["decision"]["note"], "we still need it");
    assert_eq!(srv.get(&main, &bob).await.0, StatusCode::OK);
    // Rejected is final.
    let (s, _) = decide(&srv, &id, "approve", &alice, json!({})).await;
    assert_eq!(s, StatusCode::CONFLICT);

    // The requester withdraws the next request.
    let (_, a) = srv.delete(&format!("{main}?reason=moving"), &bob).await;
    let id = approval_id(&a);
    let (s, c) = decide(&srv, &id, "cancel", &bob, json!({"note": "wrong storage"})).await;
    assert_eq!(
        (s, &c["status"]),
        (StatusCode::OK, &json!("cancelled")),
        "{c}"
    );
    assert_eq!(c["cancel_note"], "wrong storage", "{c}");
    assert_eq!(srv.get(&main, &bob).await.0, StatusCode::OK);

    // Approved, it is deleted, on the cluster too.
    let (_, a) = srv.delete(&format!("{main}?reason=moving"), &bob).await;
    let id = approval_id(&a);
    approve(&srv, &id, &alice).await;
    assert_eq!(srv.get(&main, &bob).await.0, StatusCode::NOT_FOUND);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_request_cannot_be_approved() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(dir.path()).await;
    let (bob, alice) = workspace(&srv, "acme", "shared", true).await;
    manual_backup(&srv, "acme", &bob, "b1").await;
    let (s, a) = srv.delete("/api/v1/backups/b1?reason=cleanup", &bob).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{a}");
    let id = approval_id(&a);
    srv.store
        .advance_clock_for_tests(chrono::Duration::hours(25));
    let (s, e) = decide(&srv, &id, "approve", &alice, json!({})).await;
    assert_eq!(s, StatusCode::CONFLICT, "{e}");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("expired"),
        "{e}"
    );
    let (_, a) = srv.get(&format!("/api/v1/approvals/{id}"), &bob).await;
    assert_eq!(a["status"], "expired", "{a}");
    assert_eq!(srv.get("/api/v1/backups/b1", &bob).await.0, StatusCode::OK);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shortening_retention_and_replacing_the_recovery_key_wait_for_approval() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(dir.path()).await;
    let (bob, alice) = workspace(&srv, "acme", "shared", true).await;
    manual_backup(&srv, "acme", &bob, "b1").await;
    let policy = |days: u32, min: u32| {
        json!({"db_identifier": "crm", "db_type": "sqlite",
            "schedule": {"frequency": "daily", "preferred_window": "01:00-05:00", "priority": "normal"},
            "retention": {"period_days": days, "min_snapshots": min}})
    };
    let (s, p) = srv.post("/api/v1/policies", &bob, policy(30, 7)).await;
    assert_eq!(s, StatusCode::CREATED, "{p}");
    let path = format!("/api/v1/policies/{}", p["id"].as_str().unwrap());
    // Keeping more is not guarded.
    let (s, p) = srv.put(&path, &bob, policy(60, 7)).await;
    assert_eq!(
        (s, &p["retention"]["period_days"]),
        (StatusCode::OK, &json!(60)),
        "{p}"
    );
    // Keeping less waits; bad input is still refused first.
    let (s, e) = srv
        .put(&format!("{path}?reason=x"), &bob, policy(0, 7))
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    assert!(e.to_string().contains("retention.period_days"), "{e}");
    let (s, a) = srv
        .put(
            &format!("{path}?reason=storage%20costs"),
            &bob,
            policy(14, 7),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{a}");
    assert_eq!(
        a["action"]["shortened"],
        json!(["retention.period_days 60 → 14"]),
        "{a}"
    );
    let (_, now) = srv.get(&path, &bob).await;
    assert_eq!(now["retention"]["period_days"], 60, "{now}");
    approve(&srv, &approval_id(&a), &alice).await;
    let (_, now) = srv.get(&path, &bob).await;
    assert_eq!(now["retention"]["period_days"], 14, "{now}");

    // The recovery key exists once shown; replacing it waits, and the chosen passphrase
    // appears in no answer and no audit entry.
    let key = "/api/v1/workspaces/acme/recovery-key";
    let (s, v) = srv.get(key, &bob).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let secret = "correct horse battery staple 42";
    let (s, a) = srv
        .put(
            &format!("{key}?reason=rotation"),
            &bob,
            json!({"passphrase": secret}),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{a}");
    let id = approval_id(&a);
    let done = approve(&srv, &id, &alice).await;
    let (s, e) = srv.get(key, &bob).await;
    assert_eq!(s, StatusCode::GONE, "{e}");
    assert!(e.to_string().contains("chosen by"), "{e}");
    for text in [a.to_string(), done.to_string(), audit_text(&srv).await] {
        assert!(
            !text.contains("battery staple"),
            "the passphrase leaked: {text}"
        );
    }
    let opened =
        bulwark_control_plane::jobs::keys::recovery_key(&srv.store, srv.store.secrets(), "acme")
            .await
            .unwrap();
    assert_eq!(opened, secret);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_four_eyes_off_the_acts_happen_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(dir.path()).await;
    let (bob, _) = workspace(&srv, "acme", "shared", false).await;
    let (_, ws) = srv.get("/api/v1/workspaces/acme", &bob).await;
    assert_eq!(ws["four_eyes"], false, "{ws}");
    manual_backup(&srv, "acme", &bob, "b1").await;
    let (s, v) = srv.delete("/api/v1/backups/b1", &bob).await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    assert_eq!(
        srv.get("/api/v1/backups/b1", &bob).await.0,
        StatusCode::NOT_FOUND
    );
    let (s, list) = srv.get("/api/v1/approvals?workspace=acme", &bob).await;
    assert_eq!((s, &list["items"]), (StatusCode::OK, &json!([])), "{list}");
    srv.stop().await;
}

//! Backup storages as the home of a workspace's backups, over real HTTPS: policies name an
//! active storage of their own workspace (and default to its only one), a storage a policy
//! names cannot be deleted, and the workspace's recovery key is shown once.

mod common;

use bulwark_control_plane::domain::audit::Actor;
use bulwark_control_plane::domain::storage::{BackupStorage, StorageKind, StorageState};
use common::{postgres_db, seed_policy, Server};
use reqwest::StatusCode;
use serde_json::{json, Value};

fn system() -> Actor {
    Actor {
        kind: "system".into(),
        id: "test".into(),
        name: "test".into(),
    }
}

/// A storage record as a provisioning would leave it (no cluster is needed for these tests).
fn storage(ws: &str, id: &str, status: StorageState) -> BackupStorage {
    let now = chrono::Utc::now();
    BackupStorage {
        id: id.into(),
        workspace_id: ws.into(),
        cluster_id: "pve".into(),
        pve_storage: format!("bwk{}-{ws}-{id}", ws.len()),
        kind: StorageKind::Nfs,
        server: Some("10.0.0.10".into()),
        export: Some(format!("/srv/{ws}/{id}")),
        fs_name: None,
        monhost: Vec::new(),
        path: None,
        nodes: vec!["pve1".into()],
        capacity_bytes: 1 << 40,
        status,
        provisioned: false,
        repository_exists: false,
        status_message: (status == StorageState::Error).then(|| "unreachable".into()),
        usage: None,
        created_at: now,
        updated_at: now,
    }
}

async fn add_storage(s: &Server, st: BackupStorage) {
    s.store
        .write(system(), move |tx| tx.create_storage(&st))
        .await
        .unwrap();
}

fn policy(db: &str, storage: Option<&str>, frequency: &str) -> Value {
    let mut p = seed_policy(db, "postgresql");
    p["schedule"]["frequency"] = json!(frequency);
    p["retention"]["min_snapshots"] = json!(3);
    if let Some(id) = storage {
        p["storage_id"] = json!(id);
    }
    p
}

fn message(e: &Value) -> String {
    e.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_name_an_active_storage_of_their_own_workspace() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path()).await;
    let a = s.workspace_with_admin("alpha").await;
    let _b = s.workspace_with_admin("beta").await;
    for db in ["orders", "ledger"] {
        let (st, v) = s
            .post("/api/v1/databases", &a, postgres_db(db, "alpha"))
            .await;
        assert_eq!(st, StatusCode::CREATED, "{v}");
    }

    // No storage in the workspace: the policy names none (agents use their own repository).
    let (st, p) = s
        .post("/api/v1/policies", &a, policy("orders", None, "daily"))
        .await;
    assert_eq!(st, StatusCode::CREATED, "{p}");
    assert!(p["storage_id"].is_null(), "{p}");

    add_storage(&s, storage("alpha", "main", StorageState::Active)).await;
    add_storage(&s, storage("alpha", "spare", StorageState::Pending)).await;
    add_storage(&s, storage("beta", "theirs", StorageState::Active)).await;

    // Another workspace's storage is answered like a missing one.
    for id in ["theirs", "missing"] {
        let (st, e) = s
            .post("/api/v1/policies", &a, policy("ledger", Some(id), "daily"))
            .await;
        assert_eq!(st, StatusCode::NOT_FOUND, "{e}");
        assert!(message(&e).contains(id), "{e}");
    }
    // One that is not active yet: 422 saying so.
    let (st, e) = s
        .post(
            "/api/v1/policies",
            &a,
            policy("ledger", Some("spare"), "daily"),
        )
        .await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    assert_eq!(e["error"]["details"][0]["path"], "storage_id", "{e}");
    assert!(message(&e).contains("pending"), "{e}");

    // Omitted: the workspace's only active storage, stored in the policy.
    let (st, p2) = s
        .post("/api/v1/policies", &a, policy("ledger", None, "daily"))
        .await;
    assert_eq!(st, StatusCode::CREATED, "{p2}");
    assert_eq!(p2["storage_id"], "main", "{p2}");
    let (_, got) = s
        .get(
            &format!("/api/v1/policies/{}", p2["id"].as_str().unwrap()),
            &a,
        )
        .await;
    assert_eq!(got["storage_id"], "main", "{got}");

    // Two active storages and none named: 422 naming the choices.
    add_storage(&s, storage("alpha", "second", StorageState::Active)).await;
    let (st, e) = s
        .post("/api/v1/policies", &a, policy("ledger", None, "0 2 * * 0"))
        .await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    let text = message(&e);
    assert!(
        text.contains("main") && text.contains("second") && text.contains("spare"),
        "{e}"
    );
    let (st, p3) = s
        .post(
            "/api/v1/policies",
            &a,
            policy("ledger", Some("second"), "0 2 * * 0"),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{p3}");

    // A storage a policy names cannot be deleted; the answer names the policies.
    let (st, e) = s
        .delete("/api/v1/workspaces/alpha/backup-storages/main", &a)
        .await;
    assert_eq!(st, StatusCode::CONFLICT, "{e}");
    assert!(message(&e).contains(p2["id"].as_str().unwrap()), "{e}");
    // Moved to the other storage, it can.
    let mut moved = policy("ledger", Some("second"), "daily");
    moved["enabled"] = json!(true);
    let (st, v) = s
        .put(
            &format!("/api/v1/policies/{}", p2["id"].as_str().unwrap()),
            &a,
            moved,
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let (st, e) = s
        .delete("/api/v1/workspaces/alpha/backup-storages/main", &a)
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT, "{e}");
    let (st, e) = s
        .delete("/api/v1/workspaces/alpha/backup-storages/second", &a)
        .await;
    assert_eq!(st, StatusCode::CONFLICT, "{e}");
    assert!(
        message(&e).contains(p2["id"].as_str().unwrap())
            && message(&e).contains(p3["id"].as_str().unwrap()),
        "{e}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_recovery_key_is_shown_once_and_chosen_only_before_a_repository_exists() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path()).await;
    let a = s.workspace_with_admin("alpha").await;
    let b = s.workspace_with_admin("beta").await;
    let path = "/api/v1/workspaces/alpha/recovery-key";

    // Not for another workspace's admin (invisible), nor a viewer (forbidden).
    let (st, e) = s.get(path, &b).await;
    assert_eq!(st, StatusCode::NOT_FOUND, "{e}");
    let (st, viewer) = s
        .post(
            "/api/v1/users",
            &a,
            json!({"name": "watcher", "roles": [{"role": "viewer", "workspace_id": "alpha"}]}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{viewer}");
    let v = s.token_for(viewer["id"].as_str().unwrap(), &a).await;
    let (st, e) = s.get(path, &v).await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{e}");

    // Chosen passphrases are checked; unknown fields are refused.
    let (st, e) = s.put(path, &a, json!({"passphrase": "too short"})).await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    let (st, e) = s
        .put(
            path,
            &a,
            json!({"passphrase": "x".repeat(20), "hint": "no"}),
        )
        .await;
    assert!(st.is_client_error(), "{st} {e}");

    // Once: 200 with the key, then 410 naming who saw it.
    let (st, shown) = s.get(path, &a).await;
    assert_eq!(st, StatusCode::OK, "{shown}");
    let key = shown["recovery_key"].as_str().unwrap().to_string();
    assert_eq!(key.len(), 79, "{key}");
    let (st, gone) = s.get(path, &a).await;
    assert_eq!(st, StatusCode::GONE, "{gone}");
    assert!(message(&gone).contains("alpha-admin"), "{gone}");
    let (st, gone) = s.get(path, &s.admin).await;
    assert_eq!(st, StatusCode::GONE, "{gone}");

    // The audit log records the showing, never the key.
    let (st, audit) = s.get("/api/v1/audit?page_size=500", &s.admin).await;
    assert_eq!(st, StatusCode::OK, "{audit}");
    let text = audit.to_string();
    assert!(text.contains("recovery_key.show"), "{text}");
    assert!(!text.contains(&key), "the key is in the audit log");
    let state = std::fs::read(dir.path().join("bulwark.redb")).unwrap();
    assert!(
        !state.windows(key.len()).any(|w| w == key.as_bytes()),
        "the key is in the state file in clear"
    );

    // Before any repository exists a workspace admin may still choose a passphrase.
    let chosen = "correct horse battery staple";
    let (st, e) = s.put(path, &a, json!({"passphrase": chosen})).await;
    assert_eq!(st, StatusCode::NO_CONTENT, "{e}");
    let (st, gone) = s.get(path, &a).await;
    assert_eq!(st, StatusCode::GONE, "{gone}");
    assert!(message(&gone).contains("chosen by"), "{gone}");

    // Once a storage's repository exists, no longer.
    add_storage(&s, storage("alpha", "main", StorageState::Active)).await;
    s.store
        .write(system(), |tx| tx.note_repository_exists("alpha", "main"))
        .await
        .unwrap();
    let (st, e) = s.put(path, &a, json!({"passphrase": chosen})).await;
    assert_eq!(st, StatusCode::CONFLICT, "{e}");
    assert!(message(&e).contains("main"), "{e}");

    // Another workspace's key is its own, shown to its own admin.
    let (st, other) = s.get("/api/v1/workspaces/beta/recovery-key", &b).await;
    assert_eq!(st, StatusCode::OK, "{other}");
    assert_ne!(other["recovery_key"], shown["recovery_key"]);
    s.stop().await;
}

//! The API over real HTTPS against a real redb file: resources, tenancy, bad input, the
//! catalog, the audit chain and the OpenAPI document.

mod common;

use bulwark_control_plane::domain::audit::Actor;
use bulwark_control_plane::domain::backup::{BackupRecord, BackupStatus, SnapshotKind};
use bulwark_control_plane::domain::database::DatabaseType;
use chrono::{Duration, TimeZone, Utc};
use common::{postgres_db, seed_policy, Server};
use redb::ReadableTable;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

fn system() -> Actor {
    Actor {
        kind: "system".into(),
        id: "test".into(),
        name: "test".into(),
    }
}

fn record(id: &str, ws: &str, db: &str, kind: SnapshotKind, minutes: i64) -> BackupRecord {
    let started = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap() + Duration::minutes(minutes);
    BackupRecord {
        id: id.into(),
        workspace_id: ws.into(),
        database_id: db.into(),
        db_type: DatabaseType::Postgresql,
        kind,
        status: if minutes % 7 == 0 {
            BackupStatus::Failed
        } else {
            BackupStatus::Succeeded
        },
        started_at: started,
        finished_at: Some(started + Duration::minutes(3)),
        snapshot: None,
        policy_id: None,
        storage_id: None,
        method: None,
        logical_bytes: 1000,
        stored_bytes: 100,
        error: None,
        job_id: None,
        notes: None,
        tags: Default::default(),
        verified_at: None,
        verification: None,
        forget_job: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_at_both_paths_with_validation_conflicts_and_write_only_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path()).await;
    let a = s.workspace_with_admin("team-a").await;
    let (st, db) = s
        .post("/api/v1/databases", &a, postgres_db("orders", "team-a"))
        .await;
    assert_eq!(st, StatusCode::CREATED, "{db}");
    assert_eq!(db["secrets_set"], json!(["password"]));

    // The seed path and schema, exactly.
    let (st, p) = s
        .post(
            "/api/backup/policies",
            &a,
            seed_policy("orders", "postgresql"),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{p}");
    let id = p["id"].as_str().unwrap();
    assert_eq!(
        (
            p["backup_method"].as_str(),
            p["enabled"].as_bool(),
            p["timezone"].as_str()
        ),
        (Some("logical"), Some(true), Some("UTC"))
    );
    for path in [
        format!("/api/v1/policies/{id}"),
        format!("/api/backup/policies/{id}"),
    ] {
        let (st, got) = s.get(&path, &a).await;
        assert_eq!((st, &got), (StatusCode::OK, &p));
    }
    let (_, one) = s.get("/api/v1/applications/orders/backup-policy", &a).await;
    assert_eq!(one["policies"][0]["id"], p["id"]);

    // Same schedule again: conflict; another schedule: a second policy.
    let (st, e) = s
        .post("/api/v1/policies", &a, seed_policy("orders", "postgresql"))
        .await;
    assert_eq!(st, StatusCode::CONFLICT, "{e}");
    let mut weekly = seed_policy("orders", "postgresql");
    weekly["schedule"]["frequency"] = json!("0 2 * * 0");
    weekly["backup_method"] = json!("physical");
    weekly["pitr"] = json!(true);
    weekly["retention"]["min_snapshots"] = json!(4);
    let (st, w) = s.post("/api/v1/policies", &a, weekly).await;
    assert_eq!(st, StatusCode::CREATED, "{w}");
    let (_, list) = s
        .get("/api/v1/policies?database=orders&db_type=postgresql", &a)
        .await;
    assert_eq!(list["items"].as_array().unwrap().len(), 2);

    // Every violation at once, with paths; the dry run stores nothing.
    let bad = json!({"db_identifier": "orders", "db_type": "postgresql",
        "schedule": {"frequency": "every 1m", "preferred_window": "25:00-01:00", "priority": "urgent"},
        "retention": {"period_days": 0, "min_snapshots": 0}, "pitr": true});
    let (st, e) = s.post("/api/v1/policies", &a, bad.clone()).await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY);
    let paths: Vec<&str> = e["error"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["path"].as_str().unwrap())
        .collect();
    for want in [
        "schedule.frequency",
        "schedule.preferred_window",
        "schedule.priority",
        "retention.period_days",
        "retention.min_snapshots",
        "pitr",
    ] {
        assert!(paths.contains(&want), "{want} missing in {e}");
    }
    let (st, report) = s.post("/api/v1/policies/validate", &a, bad).await;
    assert_eq!(
        (st, report["valid"].as_bool()),
        (StatusCode::OK, Some(false))
    );
    let (_, report) = s
        .post(
            "/api/v1/policies/validate",
            &a,
            seed_policy("orders", "postgresql"),
        )
        .await;
    assert_eq!(report["valid"], true, "{report}");
    let (_, list) = s.get("/api/v1/policies", &a).await;
    assert_eq!(
        list["items"].as_array().unwrap().len(),
        2,
        "dry runs store nothing"
    );

    // etcd may not run every 5 minutes.
    let (st, _) = s
        .post("/api/v1/databases", &a, json!({"id": "kv", "workspace_id": "team-a", "type": "etcd", "connection": {"endpoints": ["http://127.0.0.1:2379"]}}))
        .await;
    assert_eq!(st, StatusCode::CREATED);
    let mut etcd = seed_policy("kv", "etcd");
    etcd["schedule"] =
        json!({"frequency": "every 5m", "preferred_window": "00:00-24:00", "priority": "normal"});
    let (st, e) = s.post("/api/v1/policies", &a, etcd).await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        e["error"]["message"].as_str().unwrap().contains("15m"),
        "{e}"
    );

    // Update and delete.
    let mut changed = seed_policy("orders", "postgresql");
    changed["retention"]["period_days"] = json!(60);
    let (st, u) = s
        .put(&format!("/api/backup/policies/{id}"), &a, changed)
        .await;
    assert_eq!(
        (st, u["retention"]["period_days"].as_u64()),
        (StatusCode::OK, Some(60))
    );
    assert_eq!(u["created_at"], p["created_at"]);
    let (st, _) = s
        .delete(
            &format!("/api/v1/policies/{}", w["id"].as_str().unwrap()),
            &a,
        )
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);

    // Secrets: write-only everywhere, including the audit log; an update without secrets keeps them.
    let mut db_update = postgres_db("orders", "team-a");
    db_update.as_object_mut().unwrap().remove("secrets");
    let (st, v) = s.put("/api/v1/databases/orders", &a, db_update).await;
    assert_eq!(
        (st, &v["secrets_set"]),
        (StatusCode::OK, &json!(["password"]))
    );
    for path in [
        "/api/v1/databases/orders",
        "/api/v1/databases",
        "/api/v1/audit?page_size=500",
    ] {
        let (_, body) = s.get(path, &a).await;
        assert!(
            !body.to_string().contains("very-secret"),
            "{path} leaked a secret"
        );
    }
    let (_, audit) = s.get("/api/v1/audit?resource_type=policy", &a).await;
    let actions: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "policy.delete",
            "policy.update",
            "policy.create",
            "policy.create"
        ]
    );
    assert!(
        audit["items"][1]["before"]["retention"]["period_days"] == 30
            && audit["items"][1]["after"]["retention"]["period_days"] == 60
    );
    s.stop().await;
}

/// A workspace admin of A walks every endpoint with B's ids and sees only 404s (never 403, never
/// data), and B's things never show up in A's listings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_workspace_is_invisible_on_every_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path()).await;
    let a = s.workspace_with_admin("alpha").await;
    let b = s.workspace_with_admin("beta").await;
    s.post("/api/v1/databases", &a, postgres_db("a-db", "alpha"))
        .await;
    s.post("/api/v1/databases", &b, postgres_db("b-db", "beta"))
        .await;
    s.post("/api/v1/policies", &a, seed_policy("a-db", "postgresql"))
        .await;
    let (_, bp) = s
        .post("/api/v1/policies", &b, seed_policy("b-db", "postgresql"))
        .await;
    let b_policy = bp["id"].as_str().unwrap().to_string();
    let (_, b_me) = s.get("/api/v1/me", &b).await;
    let b_user = b_me["user_id"].as_str().unwrap().to_string();
    let b_token = b_me["token_id"].as_str().unwrap().to_string();
    s.store
        .write(system(), |tx| {
            tx.record_backup(&record("b-backup", "beta", "b-db", SnapshotKind::Manual, 1))?;
            tx.record_backup(&record(
                "a-backup",
                "alpha",
                "a-db",
                SnapshotKind::Manual,
                2,
            ))
        })
        .await
        .unwrap();

    let db_body = postgres_db("b-db", "beta");
    let ws_body = json!({"name": "x", "plan": "shared", "quota_bytes": 1});
    let user_body = json!({"name": "x", "roles": [{"role": "viewer", "workspace_id": "beta"}]});
    let walk: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, "/api/v1/workspaces/beta".into(), None),
        (Method::PUT, "/api/v1/workspaces/beta".into(), Some(ws_body)),
        (Method::DELETE, "/api/v1/workspaces/beta".into(), None),
        (Method::GET, format!("/api/v1/users/{b_user}"), None),
        (
            Method::PUT,
            format!("/api/v1/users/{b_user}"),
            Some(user_body),
        ),
        (Method::DELETE, format!("/api/v1/users/{b_user}"), None),
        (Method::GET, format!("/api/v1/users/{b_user}/tokens"), None),
        (
            Method::POST,
            format!("/api/v1/users/{b_user}/tokens"),
            Some(json!({"name": "steal"})),
        ),
        (
            Method::DELETE,
            format!("/api/v1/users/{b_user}/tokens/{b_token}"),
            None,
        ),
        (Method::GET, "/api/v1/databases/b-db".into(), None),
        (Method::PUT, "/api/v1/databases/b-db".into(), Some(db_body)),
        (Method::DELETE, "/api/v1/databases/b-db".into(), None),
        (
            Method::GET,
            "/api/v1/databases/b-db/backup-policy".into(),
            None,
        ),
        (
            Method::GET,
            "/api/v1/applications/b-db/backup-policy".into(),
            None,
        ),
        (Method::GET, format!("/api/v1/policies/{b_policy}"), None),
        (
            Method::PUT,
            format!("/api/v1/policies/{b_policy}"),
            Some(seed_policy("b-db", "postgresql")),
        ),
        (Method::DELETE, format!("/api/v1/policies/{b_policy}"), None),
        (
            Method::GET,
            format!("/api/backup/policies/{b_policy}"),
            None,
        ),
        (
            Method::PUT,
            format!("/api/backup/policies/{b_policy}"),
            Some(seed_policy("b-db", "postgresql")),
        ),
        (
            Method::DELETE,
            format!("/api/backup/policies/{b_policy}"),
            None,
        ),
        (Method::GET, "/api/v1/backups/b-backup".into(), None),
        (Method::DELETE, "/api/v1/backups/b-backup".into(), None),
        (Method::GET, "/api/v1/policies?workspace=beta".into(), None),
        (Method::GET, "/api/v1/policies?database=b-db".into(), None),
        (Method::GET, "/api/v1/databases?workspace=beta".into(), None),
        (Method::GET, "/api/v1/backups?database=b-db".into(), None),
        (Method::GET, "/api/v1/backups?workspace=beta".into(), None),
        (Method::GET, "/api/v1/users?workspace=beta".into(), None),
        (Method::GET, "/api/v1/workspaces/beta/usage".into(), None),
        (Method::GET, "/api/v1/alerts?workspace=beta".into(), None),
        (
            Method::GET,
            "/api/v1/workspaces/beta/backup-storages".into(),
            None,
        ),
        (
            Method::POST,
            "/api/v1/workspaces/beta/backup-storages".into(),
            Some(
                json!({"id": "main", "cluster_id": "pve", "type": "local", "path": "/srv/b",
                "nodes": ["pve1"], "capacity_bytes": 1}),
            ),
        ),
        (
            Method::GET,
            "/api/v1/workspaces/beta/backup-storages/main".into(),
            None,
        ),
        (
            Method::PUT,
            "/api/v1/workspaces/beta/backup-storages/main".into(),
            Some(json!({"capacity_bytes": 2})),
        ),
        (
            Method::DELETE,
            "/api/v1/workspaces/beta/backup-storages/main".into(),
            None,
        ),
    ];
    for (method, path, body) in walk {
        let (st, v) = s.call(method.clone(), &path, Some(&a), body).await;
        assert_eq!(st, StatusCode::NOT_FOUND, "{method} {path}: {v}");
        assert!(
            !v.to_string().contains("b-db\",\"type") && !v.to_string().contains("pw-b-db"),
            "{v}"
        );
    }
    // Naming B's database in a body reads exactly like naming one that does not exist.
    let (_, e1) = s
        .post("/api/v1/policies", &a, seed_policy("b-db", "postgresql"))
        .await;
    let (_, e2) = s
        .post("/api/v1/policies", &a, seed_policy("no-db", "postgresql"))
        .await;
    assert_eq!(
        e1["error"]["details"][0]["problem"]
            .as_str()
            .unwrap()
            .replace("b-db", "X"),
        e2["error"]["details"][0]["problem"]
            .as_str()
            .unwrap()
            .replace("no-db", "X")
    );
    // Listings hold only A's things, and the audit log only A's entries.
    for (path, key) in [
        ("/api/v1/workspaces", "id"),
        ("/api/v1/databases", "workspace_id"),
        ("/api/v1/policies", "workspace_id"),
        ("/api/v1/backups", "workspace_id"),
        ("/api/v1/users", "workspace_id"),
        ("/api/v1/audit?page_size=500", "workspace_id"),
    ] {
        let (st, list) = s.get(path, &a).await;
        assert_eq!(st, StatusCode::OK, "{path}");
        let items = list["items"].as_array().unwrap();
        assert!(!items.is_empty(), "{path}");
        assert!(items.iter().all(|i| i[key] == "alpha"), "{path}: {list}");
    }
    // B is intact.
    let (st, _) = s.get(&format!("/api/v1/policies/{b_policy}"), &b).await;
    assert_eq!(st, StatusCode::OK);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_4xx_with_the_error_shape() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path()).await;
    let a = s.workspace_with_admin("alpha").await;
    s.post("/api/v1/databases", &a, postgres_db("orders", "alpha"))
        .await;
    let url = |p: &str| format!("{}{p}", s.base);
    let raw = |body: &'static str| {
        s.client
            .post(url("/api/v1/policies"))
            .bearer_auth(&a)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    for (body, code) in [
        ("{\"db_identifier\": ", "malformed_json"),
        ("[1,2]", "invalid_body"),
        ("{} trailing", "invalid_body"),
    ] {
        let r = raw(body).await.unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{body}");
        let v: Value = r.json().await.unwrap();
        assert!(
            v["error"]["code"] == code || v["error"]["code"] == "malformed_json",
            "{body}: {v}"
        );
    }
    let mut unknown = seed_policy("orders", "postgresql");
    unknown["schedule"]["color"] = json!("red");
    let (st, e) = s.post("/api/v1/policies", &a, unknown).await;
    assert_eq!(
        (st, e["error"]["details"][0]["path"].as_str()),
        (StatusCode::BAD_REQUEST, Some("schedule.color")),
        "{e}"
    );
    assert!(e["error"]["message"].as_str().unwrap().contains("color"));
    let mut wrong_type = seed_policy("orders", "postgresql");
    wrong_type["retention"]["period_days"] = json!("thirty");
    let (st, e) = s.post("/api/v1/policies", &a, wrong_type).await;
    assert_eq!(
        (st, e["error"]["details"][0]["path"].as_str()),
        (StatusCode::BAD_REQUEST, Some("retention.period_days"))
    );
    let (st, e) = s
        .post(
            "/api/v1/databases",
            &a,
            json!({"id": "x", "workspace_id": "alpha", "type": "oracle"}),
        )
        .await;
    assert_eq!(
        (st, e["error"]["details"][0]["path"].as_str()),
        (StatusCode::BAD_REQUEST, Some("type"))
    );

    // A wrong JSON type in an enum field names the field, like every other body error.
    for (path, body, field) in [
        (
            "/api/v1/workspaces",
            json!({"id": "w2", "name": "W", "plan": 5, "quota_bytes": 1}),
            "plan",
        ),
        (
            "/api/v1/databases",
            json!({"id": "x", "workspace_id": "alpha", "type": 5}),
            "type",
        ),
        (
            "/api/v1/users",
            json!({"name": "u", "roles": [{"role": 7, "workspace_id": "alpha"}]}),
            "roles[0].role",
        ),
        (
            "/api/v1/backups",
            json!({"database_id": "orders", "priority": true}),
            "priority",
        ),
        (
            "/api/v1/backups",
            json!({"database_id": "orders", "priority": ["high"]}),
            "priority",
        ),
    ] {
        let (st, e) = s.post(path, &s.admin, body.clone()).await;
        assert_eq!(
            (st, e["error"]["details"][0]["path"].as_str()),
            (StatusCode::BAD_REQUEST, Some(field)),
            "{path} {body}: {e}"
        );
        assert!(
            e["error"]["message"]
                .as_str()
                .unwrap()
                .contains(field.rsplit('.').next().unwrap()),
            "{path} {body}: {e}"
        );
    }
    // Regression: a misspelt `databse_id` in a role binding was ignored, widening a
    // one-database grant to the whole workspace.
    let (st, e) = s
        .post(
            "/api/v1/users",
            &a,
            json!({"name": "narrow", "roles": [{"role": "viewer", "workspace_id": "alpha", "databse_id": "orders"}]}),
        )
        .await;
    assert_eq!(
        (st, e["error"]["details"][0]["path"].as_str()),
        (StatusCode::BAD_REQUEST, Some("roles[0].databse_id")),
        "{e}"
    );
    let (_, users) = s.get("/api/v1/users?workspace=alpha", &a).await;
    assert!(
        !users["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u["name"] == "narrow"),
        "{users}"
    );
    // Names, notes and hosts refuse NUL, control and bidirectional-override characters.
    for (path, body, field) in [
        (
            "/api/v1/workspaces",
            json!({"id": "w3", "name": "a\u{0}b", "plan": "shared", "quota_bytes": 1}),
            "name",
        ),
        (
            "/api/v1/databases",
            json!({"id": "y", "workspace_id": "alpha", "type": "postgresql",
            "connection": {"host": "db1"}, "description": "invoice\u{202E}fdp.exe"}),
            "description",
        ),
        (
            "/api/v1/databases",
            json!({"id": "y", "workspace_id": "alpha", "type": "postgresql",
            "connection": {"host": "db\u{7}1"}}),
            "connection.host",
        ),
        (
            "/api/v1/backups",
            json!({"database_id": "orders", "notes": "line\u{1b}[2J"}),
            "notes",
        ),
        (
            "/api/v1/agents/enrollment-tokens",
            json!({"workspace_id": "alpha", "note": "\u{2066}x"}),
            "note",
        ),
    ] {
        let (st, e) = s.post(path, &s.admin, body.clone()).await;
        assert_eq!(
            (st, e["error"]["details"][0]["path"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some(field)),
            "{path} {body}: {e}"
        );
        assert!(
            e["error"]["details"][0]["problem"]
                .as_str()
                .unwrap()
                .contains("character U+"),
            "{e}"
        );
    }

    let big = format!("{{\"name\": \"{}\"}}", "x".repeat(100_000));
    let r = s
        .client
        .post(url("/api/v1/workspaces"))
        .bearer_auth(&s.admin)
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let r = s
        .client
        .post(url("/api/v1/workspaces"))
        .bearer_auth(&s.admin)
        .body("id=x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);

    for (path, want) in [
        ("/api/v1/policies/not-an-id", StatusCode::BAD_REQUEST),
        (
            "/api/v1/policies/pol_0000000000000000000000000000",
            StatusCode::NOT_FOUND,
        ),
        ("/api/v1/databases/NOPE", StatusCode::NOT_FOUND),
        ("/api/v1/backups/..%2F..", StatusCode::BAD_REQUEST),
        ("/api/v1/policies?page_size=0", StatusCode::BAD_REQUEST),
        ("/api/v1/policies?page_size=abc", StatusCode::BAD_REQUEST),
        ("/api/v1/policies?page_size=100000", StatusCode::BAD_REQUEST),
        (
            "/api/v1/policies?page_token=garbage!",
            StatusCode::BAD_REQUEST,
        ),
        ("/api/v1/policies?colour=red", StatusCode::BAD_REQUEST),
        ("/api/v1/policies?db_type=oracle", StatusCode::BAD_REQUEST),
        ("/api/v1/backups?kind=sometimes", StatusCode::BAD_REQUEST),
        ("/api/v1/backups?from=yesterday", StatusCode::BAD_REQUEST),
        (
            "/api/v1/backups?from=2026-02-01T00:00:00Z&to=2026-01-01T00:00:00Z",
            StatusCode::BAD_REQUEST,
        ),
        ("/api/v1/nothing-here", StatusCode::NOT_FOUND),
    ] {
        let (st, v) = s.get(path, &a).await;
        assert_eq!(st, want, "{path}: {v}");
    }
    let (st, _) = s
        .call(Method::PATCH, "/api/v1/policies", Some(&a), None)
        .await;
    assert_eq!(st, StatusCode::METHOD_NOT_ALLOWED);
    let (st, _) = s.call(Method::GET, "/api/v1/policies", None, None).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let (st, _) = s
        .call(Method::GET, "/api/v1/policies", Some("bwk_forged"), None)
        .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    // Viewers read but do not write; nothing changed by any of the above.
    let (_, viewer) = s
        .post(
            "/api/v1/users",
            &a,
            json!({"name": "v", "roles": [{"role": "viewer", "workspace_id": "alpha"}]}),
        )
        .await;
    let v = s.token_for(viewer["id"].as_str().unwrap(), &a).await;
    let (st, _) = s
        .post("/api/v1/policies", &v, seed_policy("orders", "postgresql"))
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (_, list) = s.get("/api/v1/policies", &v).await;
    assert_eq!(list["items"], json!([]));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_filters_pages_and_deletes_only_manual_backups() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path()).await;
    let a = s.workspace_with_admin("alpha").await;
    s.post("/api/v1/databases", &a, postgres_db("orders", "alpha"))
        .await;
    s.store
        .write(system(), |tx| {
            for i in 0..120 {
                let kind = if i % 3 == 0 {
                    SnapshotKind::Manual
                } else {
                    SnapshotKind::Automatic
                };
                tx.record_backup(&record(
                    &format!("b{i:03}"),
                    "alpha",
                    "orders",
                    kind,
                    i * 60,
                ))?;
            }
            // Ids may be snapshot names, capitals included.
            tx.record_backup(&record(
                "backup-20250101T000000Z-manual-0a1b2c3d",
                "alpha",
                "orders",
                SnapshotKind::Manual,
                -60,
            ))?;
            Ok(())
        })
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let path = match &token {
            Some(t) => format!("/api/v1/backups?database=orders&page_size=50&page_token={t}"),
            None => "/api/v1/backups?database=orders&page_size=50".to_string(),
        };
        let (st, page) = s.get(&path, &a).await;
        assert_eq!(st, StatusCode::OK, "{page}");
        seen.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b["id"].as_str().unwrap().to_string()),
        );
        match page["next_page_token"].as_str() {
            Some(t) => token = Some(t.to_string()),
            None => break,
        }
    }
    let mut expected: Vec<String> = (0..120).rev().map(|i| format!("b{i:03}")).collect();
    expected.push("backup-20250101T000000Z-manual-0a1b2c3d".into());
    assert_eq!(seen, expected, "every backup once, newest first");
    let (_, manual) = s
        .get(
            "/api/v1/backups?database=orders&kind=manual&page_size=500",
            &a,
        )
        .await;
    assert_eq!(manual["items"].as_array().unwrap().len(), 41);
    let (st, _) = s
        .get(
            "/api/v1/backups/backup-20250101T000000Z-manual-0a1b2c3d",
            &a,
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    let (_, failed) = s
        .get(
            "/api/v1/backups?database=orders&status=failed&page_size=500",
            &a,
        )
        .await;
    assert!(failed["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|b| b["status"] == "failed"));
    let (_, range) = s
        .get(
            "/api/v1/backups?database=orders&from=2026-01-01T10:00:00Z&to=2026-01-01T20:00:00Z",
            &a,
        )
        .await;
    let ids: Vec<&str> = range["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.first(), Some(&"b019"));
    assert_eq!(ids.last(), Some(&"b010"));

    let (st, e) = s.delete("/api/v1/backups/b001", &a).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "automatic: {e}");
    let (st, _) = s.delete("/api/v1/backups/b003", &a).await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (st, _) = s.delete("/api/v1/backups/b003", &a).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, _) = s.get("/api/v1/backups/b001", &a).await;
    assert_eq!(st, StatusCode::OK, "the refused delete changed nothing");
    s.stop().await;
}

/// Deleting, verifying and planning over HTTP: a manual backup's delete is a forget job (and
/// needs a live agent), an automatic one is refused, a failed one's entry goes at once; the
/// retention plan says what goes and why each entry stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_and_verifies_are_jobs_and_the_retention_plan_is_shown() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path()).await;
    let a = s.workspace_with_admin("alpha").await;
    s.post("/api/v1/databases", &a, postgres_db("orders", "alpha"))
        .await;
    let (st, policy) = s
        .post("/api/v1/policies", &a, seed_policy("orders", "postgresql"))
        .await;
    assert_eq!(st, StatusCode::CREATED, "{policy}");
    let policy_id = policy["id"].as_str().unwrap().to_string();
    s.store
        .write(system(), move |tx| {
            for (id, kind, minutes, snapshot) in [
                ("m-ok", SnapshotKind::Manual, 1, true),
                ("m-failed", SnapshotKind::Manual, 2, false),
                ("a-ok", SnapshotKind::Automatic, 3, true),
            ] {
                let mut r = record(id, "alpha", "orders", kind, minutes);
                r.status = if snapshot {
                    BackupStatus::Succeeded
                } else {
                    BackupStatus::Failed
                };
                r.snapshot = snapshot.then(|| format!("backup-{id}"));
                if kind == SnapshotKind::Automatic {
                    r.policy_id = Some(policy_id.clone());
                }
                tx.record_backup(&r)?;
            }
            Ok(())
        })
        .await
        .unwrap();
    let used = |s: &Server| {
        bulwark_control_plane::store::quota::used_bytes(&s.store.read().unwrap(), "alpha").unwrap()
    };
    assert_eq!(used(&s), 300);

    // No agent serves the database: nothing can delete or verify its snapshots yet.
    let (st, e) = s.delete("/api/v1/backups/m-ok", &a).await;
    assert_eq!(st, StatusCode::CONFLICT, "{e}");
    let (st, e) = s.post("/api/v1/backups/m-ok/verify", &a, json!({})).await;
    assert_eq!(st, StatusCode::CONFLICT, "{e}");
    let (st, e) = s
        .post("/api/v1/backups/m-failed/verify", &a, json!({}))
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "nothing to verify: {e}");
    let (st, _) = s.post("/api/v1/backups/nope/verify", &a, json!({})).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    // Automatic: its policy's retention decides.
    let (st, e) = s.delete("/api/v1/backups/a-ok", &a).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{e}");
    // A failed manual backup has no snapshot: its entry goes at once; usage stays (only a gc
    // frees bytes).
    let (st, _) = s.delete("/api/v1/backups/m-failed", &a).await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (st, _) = s.get("/api/v1/backups/m-failed", &a).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert_eq!(used(&s), 300);

    let (st, plan) = s.get("/api/v1/databases/orders/retention", &a).await;
    assert_eq!(st, StatusCode::OK, "{plan}");
    assert_eq!(plan["database_id"], "orders");
    let entries = plan["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{plan}");
    assert!(
        entries
            .iter()
            .all(|e| e["keep"] == true && !e["reasons"].as_array().unwrap().is_empty()),
        "{plan}"
    );
    let (st, _) = s.get("/api/v1/databases/nope/retention", &a).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verify_catches_an_entry_edited_behind_the_servers_back() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path()).await;
    let a = s.workspace_with_admin("alpha").await;
    s.post("/api/v1/databases", &a, postgres_db("orders", "alpha"))
        .await;
    s.post("/api/v1/policies", &a, seed_policy("orders", "postgresql"))
        .await;
    let (_, v) = s.get("/api/v1/audit/verify", &s.admin).await;
    assert_eq!(
        (v["ok"].as_bool(), v["checked"].as_u64()),
        (Some(true), Some(7)),
        "{v}"
    );
    let (_, entries) = s.get("/api/v1/audit?action=policy.create", &a).await;
    let seq = entries["items"][0]["seq"].as_u64().unwrap();
    let admin = s.admin.clone();
    s.stop().await;

    // Someone with access to the file quietly lengthens the retention in the record.
    {
        let db = redb::Database::open(dir.path().join("bulwark.redb")).unwrap();
        let tx = db.begin_write().unwrap();
        {
            let mut t = tx
                .open_table(bulwark_control_plane::store::audit::TABLE)
                .unwrap();
            let stored = String::from_utf8(t.get(seq).unwrap().unwrap().value().to_vec()).unwrap();
            let edited = stored.replace("\"period_days\":30", "\"period_days\":3");
            assert_ne!(stored, edited);
            t.insert(seq, edited.as_bytes()).unwrap();
        }
        tx.commit().unwrap();
    }

    let s = Server::start(dir.path()).await;
    assert_eq!(s.admin, admin);
    let (st, v) = s.get("/api/v1/audit/verify", &s.admin).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["first_broken"]["seq"].as_u64(), Some(seq), "{v}");
    assert!(
        v["first_broken"]["problem"]
            .as_str()
            .unwrap()
            .contains("changed"),
        "{v}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_documents_every_route_and_metrics_count_requests() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path()).await;
    let (st, doc) = s
        .call(Method::GET, "/api/v1/openapi.json", None, None)
        .await;
    assert_eq!(st, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/api/v1/policies",
        "/api/backup/policies/{id}",
        "/api/v1/policies/validate",
        "/api/v1/audit/verify",
        "/api/v1/backups",
        "/api/v1/proxmox-clusters",
        "/api/v1/proxmox-clusters/{id}",
        "/api/v1/proxmox-clusters/{id}/sync",
        "/api/v1/workspaces/{id}/backup-storages",
        "/api/v1/workspaces/{id}/backup-storages/{storage_id}",
        "/api/v1/workspaces/{id}/usage",
        "/api/v1/workspaces/{id}/recovery-key",
        "/api/v1/alerts",
        "/api/v1/agents",
        "/api/v1/agents/{id}",
        "/api/v1/agents/enrollment-tokens",
        "/agent/v1/enroll",
        "/agent/v1/heartbeat",
        "/agent/v1/renew",
    ] {
        assert!(paths.contains_key(p), "{p} is not documented");
    }
    for (path, item) in paths {
        for method in item.as_object().unwrap().keys() {
            let m: Method = method.to_uppercase().parse().unwrap();
            let concrete = path
                .replace("{id}", "pol_0000000000000000000000000000")
                .replace("{token_id}", "tok_0000000000000000000000000000");
            let body = matches!(m, Method::POST | Method::PUT).then(|| json!({}));
            let (st, v) = s.call(m.clone(), &concrete, Some(&s.admin), body).await;
            assert!(
                st != StatusCode::METHOD_NOT_ALLOWED && v["error"]["code"] != "no_route",
                "documented {method} {path} is not served: {st} {v}"
            );
            assert!(!st.is_server_error(), "{method} {path}: {st} {v}");
        }
    }
    let (st, _) = s.call(Method::GET, "/healthz", None, None).await;
    assert_eq!(st, StatusCode::OK);
    let (st, _) = s.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(st, StatusCode::OK);
    let text = s.metrics_text().await;
    assert!(text.contains("bulwark_http_requests_total{method=\"GET\",route=\"/api/v1/openapi.json\",status=\"200\"}"), "{text}");
    assert!(
        text.contains("bulwark_http_request_duration_seconds_bucket"),
        "{text}"
    );
    assert!(
        text.contains("bulwark_state_rows{table=\"users\"} 1"),
        "{text}"
    );
    s.stop().await;
}

/// `/schedule/upcoming` with many frequent policies: the answer is the soonest `limit` runs of
/// all of them, in order, marked truncated; the work is bounded (the slots past the soonest
/// ones are never planned), and an eleventh policy on one database is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upcoming_runs_are_the_soonest_of_all_policies_and_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path()).await;
    let a = s.workspace_with_admin("alpha").await;
    s.post("/api/v1/databases", &a, postgres_db("orders", "alpha"))
        .await;
    for i in 0..10 {
        let mut p = seed_policy("orders", "postgresql");
        p["schedule"]["frequency"] = json!(format!("every {}m", 5 + i));
        p["schedule"]["preferred_window"] = json!("00:00-24:00");
        p["retention"] = json!({"period_days": 30, "min_snapshots": 1});
        let (st, e) = s.post("/api/v1/policies", &a, p).await;
        assert_eq!(st, StatusCode::CREATED, "{e}");
    }
    let (st, e) = s
        .post("/api/v1/policies", &a, seed_policy("orders", "postgresql"))
        .await;
    assert_eq!(st, StatusCode::CONFLICT, "{e}");

    let (st, v) = s
        .get("/api/v1/schedule/upcoming?hours=744&limit=5000", &a)
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let items = v["items"].as_array().unwrap();
    assert_eq!((items.len(), v["truncated"].as_bool()), (5000, Some(true)));
    let times: Vec<&str> = items.iter().map(|i| i["at"].as_str().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "not soonest first");
    // Every policy contributes, in proportion to its frequency: the 5-minute one most.
    let count = |f: &str| {
        items
            .iter()
            .filter(|i| i["reason"].as_str().unwrap().contains(f))
            .count()
    };
    assert!(count("every 5m") > count("every 14m"), "{}", items[0]);
    assert!(count("every 14m") > 0);
    // Two daily policies, one slot each in a day, and room for one: the answer says it left
    // one out, whichever comes first.
    let b = s.workspace_with_admin("beta").await;
    s.post("/api/v1/databases", &b, postgres_db("billing", "beta"))
        .await;
    for window in ["01:00-05:00", "13:00-17:00"] {
        let mut p = seed_policy("billing", "postgresql");
        p["schedule"]["preferred_window"] = json!(window);
        let (st, e) = s.post("/api/v1/policies", &b, p).await;
        assert_eq!(st, StatusCode::CREATED, "{e}");
    }
    let (_, one) = s
        .get(
            "/api/v1/schedule/upcoming?hours=24&limit=1&workspace=beta",
            &b,
        )
        .await;
    assert_eq!(
        (
            one["items"].as_array().unwrap().len(),
            one["truncated"].as_bool()
        ),
        (1, Some(true)),
        "{one}"
    );
    // The same question with a small limit gives the same first runs.
    let (_, small) = s
        .get("/api/v1/schedule/upcoming?hours=744&limit=20", &a)
        .await;
    let first: Vec<&Value> = items.iter().take(20).collect();
    let small: Vec<&Value> = small["items"].as_array().unwrap().iter().collect();
    assert_eq!(
        first.iter().map(|i| &i["at"]).collect::<Vec<_>>(),
        small.iter().map(|i| &i["at"]).collect::<Vec<_>>()
    );
    s.stop().await;
}

/// Every object a request body may contain refuses unknown fields (`additionalProperties:
/// false` in the served document, which utoipa derives from `deny_unknown_fields`). A nested
/// struct without it once let a misspelt `databse_id` in a role binding widen a grant silently;
/// this walks every body schema so the next such struct is caught here.
#[test]
fn every_request_body_object_refuses_unknown_fields() {
    let doc: Value =
        serde_json::from_str(&bulwark_control_plane::api::openapi().to_json().unwrap()).unwrap();
    let schemas = &doc["components"]["schemas"];
    fn walk(
        x: &Value,
        at: String,
        schemas: &Value,
        seen: &mut Vec<String>,
        open: &mut Vec<String>,
    ) {
        let (x, at) = match x["$ref"].as_str() {
            Some(r) => {
                let name = r.rsplit('/').next().unwrap().to_string();
                if seen.contains(&name) {
                    return;
                }
                seen.push(name.clone());
                (&schemas[&name], name)
            }
            None => (x, at),
        };
        for k in ["allOf", "oneOf", "anyOf"] {
            for y in x[k].as_array().into_iter().flatten() {
                walk(y, at.clone(), schemas, seen, open);
            }
        }
        if let Some(props) = x["properties"].as_object() {
            if x["additionalProperties"] != Value::Bool(false) {
                open.push(at.clone());
            }
            for (p, y) in props {
                walk(y, format!("{at}.{p}"), schemas, seen, open);
            }
        }
        if x["items"].is_object() {
            walk(&x["items"], format!("{at}[]"), schemas, seen, open);
        }
        if x["additionalProperties"].is_object() {
            walk(
                &x["additionalProperties"],
                format!("{at}{{}}"),
                schemas,
                seen,
                open,
            );
        }
    }
    let (mut bodies, mut open) = (0, Vec::new());
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let schema = &op["requestBody"]["content"]["application/json"]["schema"];
            if schema.is_object() {
                bodies += 1;
                walk(
                    schema,
                    format!("{method} {path}"),
                    schemas,
                    &mut Vec::new(),
                    &mut open,
                );
            }
        }
    }
    assert!(bodies > 20, "only {bodies} request bodies found");
    assert!(open.is_empty(), "accept unknown fields: {open:?}");
}

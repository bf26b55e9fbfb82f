//! The control plane's Proxmox half (issue 6) for real: the control plane in-process on HTTPS,
//! a simulated Proxmox VE cluster (`bulwark_tests::pve_sim`; Proxmox itself cannot run here) on
//! HTTPS with its own CA. Clusters are registered with the health check, storages provisioned,
//! resized and synced, quotas enforced at admission (driven through the store, as the job
//! protocol of issue 5 will), and deletion refused while backups are retained.

use std::path::Path;
use std::time::{Duration, Instant};

use bulwark_control_plane::domain::audit::Actor;
use bulwark_control_plane::domain::backup::{BackupRecord, BackupStatus, SnapshotKind};
use bulwark_control_plane::domain::database::DatabaseType;
use bulwark_control_plane::store::quota::Admission;
use bulwark_control_plane::store::Store;
use bulwark_tests::control_plane::TestServer;
use bulwark_tests::pve_sim::{Fault, PveSim};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// The shared in-process control plane, plus the steps these tests repeat.
struct Server(TestServer);

impl std::ops::Deref for Server {
    type Target = TestServer;
    fn deref(&self) -> &TestServer {
        &self.0
    }
}

impl Server {
    async fn start(dir: &Path, storage_sync: Duration) -> Server {
        Server(TestServer::start(dir, storage_sync).await)
    }

    async fn stop(self) {
        self.0.stop().await
    }

    async fn register(&self, sim: &PveSim, id: &str) {
        let (s, v) = self
            .post(
                "/api/v1/proxmox-clusters",
                &self.admin,
                cluster_body(sim, id),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }

    /// Every audit entry, as text.
    async fn audit_text(&self) -> String {
        let (s, v) = self.get("/api/v1/audit?page_size=500", &self.admin).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v.to_string()
    }
}

fn cluster_body(sim: &PveSim, id: &str) -> Value {
    json!({
        "id": id, "name": "Simulated PVE", "url": sim.url,
        "token_id": sim.token_id, "token_secret": sim.token_secret,
        "fingerprint": sim.fingerprint,
    })
}

fn nfs(id: &str, nodes: &[&str]) -> Value {
    json!({"id": id, "cluster_id": "pve", "type": "nfs", "server": "10.0.0.10",
        "export": format!("/srv/backup/{id}"), "nodes": nodes, "capacity_bytes": 1u64 << 40})
}

fn system() -> Actor {
    Actor {
        kind: "system".into(),
        id: "job-protocol-stand-in".into(),
        name: "test".into(),
    }
}

fn backup(id: &str, ws: &str, storage: &str, stored: u64) -> BackupRecord {
    let started = chrono::Utc::now();
    BackupRecord {
        id: id.into(),
        workspace_id: ws.into(),
        database_id: "orders".into(),
        db_type: DatabaseType::Postgresql,
        kind: SnapshotKind::Manual,
        status: BackupStatus::Succeeded,
        started_at: started,
        finished_at: Some(started),
        snapshot: None,
        policy_id: None,
        storage_id: Some(storage.into()),
        method: None,
        logical_bytes: stored * 3,
        stored_bytes: stored,
        error: None,
        job_id: None,
        notes: None,
        tags: Default::default(),
        verified_at: None,
        verification: None,
        forget_job: None,
    }
}

async fn record(store: &Store, b: BackupRecord) {
    store
        .write(system(), move |tx| tx.record_backup(&b))
        .await
        .unwrap();
}

async fn alerts(s: &Server, ws: &str, token: &str) -> Vec<Value> {
    let (st, v) = s
        .get(&format!("/api/v1/alerts?workspace={ws}"), token)
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    v["items"].as_array().unwrap().clone()
}

fn of_kind<'a>(alerts: &'a [Value], kind: &str) -> Vec<&'a Value> {
    alerts.iter().filter(|a| a["kind"] == kind).collect()
}

fn storage<'a>(list: &'a Value, id: &str) -> &'a Value {
    list.as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == id)
        .unwrap_or_else(|| panic!("no storage {id} in {list}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_clusters_with_a_health_check_and_never_show_the_secret() {
    let sim = PveSim::start_default();
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), Duration::from_secs(300)).await;
    let path = "/api/v1/proxmox-clusters";

    // A wrong fingerprint: refused, both fingerprints named, nothing stored.
    let wrong = "AA:".repeat(31) + "AA";
    let mut body = cluster_body(&sim, "pve");
    body["fingerprint"] = json!(wrong);
    let (st, e) = s.post(path, &s.admin, body).await;
    assert_eq!(st, StatusCode::BAD_GATEWAY, "{e}");
    assert_eq!(e["error"]["code"], "proxmox_error");
    let msg = e["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains(&wrong) && msg.contains(&sim.fingerprint),
        "{msg}"
    );
    let (_, list) = s.get(path, &s.admin).await;
    assert_eq!(list, json!([]));

    // A wrong secret: the token is named.
    let mut body = cluster_body(&sim, "pve");
    body["token_secret"] = json!("00000000-0000-0000-0000-000000000000");
    let (st, e) = s.post(path, &s.admin, body).await;
    assert_eq!(st, StatusCode::BAD_GATEWAY, "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&sim.token_id),
        "{e}"
    );

    // Nothing listening: the URL is named.
    let closed = format!("https://127.0.0.1:{}", bulwark_tests::free_port());
    let mut body = cluster_body(&sim, "pve");
    body["url"] = json!(closed);
    let (st, e) = s.post(path, &s.admin, body).await;
    assert_eq!(st, StatusCode::BAD_GATEWAY, "{e}");
    let msg = e["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("cannot reach") && msg.contains(&closed),
        "{msg}"
    );

    // Bad input never reaches the cluster.
    let mut body = cluster_body(&sim, "pve");
    body["token_id"] = json!("root@pam");
    body["fingerprint"] = json!("nope");
    let (st, e) = s.post(path, &s.admin, body).await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    assert_eq!(e["error"]["details"].as_array().unwrap().len(), 2, "{e}");
    let (_, list) = s.get(path, &s.admin).await;
    assert_eq!(list, json!([]));

    // The right settings: stored with the version; the secret is write-only.
    let (st, c) = s.post(path, &s.admin, cluster_body(&sim, "pve")).await;
    assert_eq!(st, StatusCode::CREATED, "{c}");
    assert_eq!(c["token_secret_set"], true);
    assert!(c.get("token_secret").is_none(), "{c}");
    assert!(
        c["version"].is_string() && c["checked_at"].is_string(),
        "{c}"
    );
    let (st, again) = s.post(path, &s.admin, cluster_body(&sim, "pve")).await;
    assert_eq!(st, StatusCode::CONFLICT, "{again}");

    // Update without the secret keeps it (the health check still passes); by CA works too.
    let mut body = cluster_body(&sim, "pve");
    body.as_object_mut().unwrap().remove("token_secret");
    body.as_object_mut().unwrap().remove("fingerprint");
    body["ca_pem"] = json!(sim.ca_pem);
    body["name"] = json!("Renamed");
    let (st, c) = s.put(&format!("{path}/pve"), &s.admin, body).await;
    assert_eq!(st, StatusCode::OK, "{c}");
    assert_eq!(
        (c["name"].as_str(), c["token_secret_set"].as_bool()),
        (Some("Renamed"), Some(true))
    );
    // A failing health check on update changes nothing.
    let mut body = cluster_body(&sim, "pve");
    body["fingerprint"] = json!(wrong);
    let (st, _) = s.put(&format!("{path}/pve"), &s.admin, body).await;
    assert_eq!(st, StatusCode::BAD_GATEWAY);
    let (_, c) = s.get(&format!("{path}/pve"), &s.admin).await;
    assert_eq!(c["name"], "Renamed");
    assert!(
        c.get("fingerprint").is_none() && c["ca_pem"].is_string(),
        "{c}"
    );

    // Platform admins only.
    let ws_admin = s.workspace("acme", "dedicated", 1 << 30).await;
    let (st, _) = s.get(path, &ws_admin).await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, _) = s
        .post(&format!("{path}/pve/sync"), &ws_admin, json!({}))
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);

    // The secret is nowhere in the audit log, nor in the state file.
    let audit = s.audit_text().await;
    assert!(audit.contains("proxmox_cluster.create") && audit.contains("proxmox_cluster.update"));
    assert!(
        !audit.contains(&sim.token_secret),
        "the token secret leaked into the audit log"
    );
    let state_file = std::fs::read(dir.path().join("bulwark.redb")).unwrap();
    assert!(
        !state_file
            .windows(sim.token_secret.len())
            .any(|w| w == sim.token_secret.as_bytes()),
        "the token secret is stored in clear"
    );
    let key = std::fs::metadata(dir.path().join("secrets.key")).unwrap();
    assert_eq!(key.len(), 32);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(key.permissions().mode() & 0o777, 0o600);

    let (st, _) = s.delete(&format!("{path}/pve"), &s.admin).await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provision_resize_sync_quota_and_delete_storages() {
    let sim = PveSim::start_default();
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), Duration::from_secs(300)).await;
    s.register(&sim, "pve").await;
    let acme = s.workspace("acme", "dedicated", 1000).await;
    let shared = s.workspace("small", "shared", 1000).await;
    let other = s.workspace("other", "dedicated", 1000).await;
    let base = "/api/v1/workspaces/acme/backup-storages";

    // The plan, the tenancy and the role come before anything reaches the cluster.
    let (st, e) = s
        .post(
            "/api/v1/workspaces/small/backup-storages",
            &shared,
            nfs("main", &["pve1"]),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{e}");
    let msg = e["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("shared plan") && msg.contains("dedicated"),
        "{msg}"
    );
    let (st, e) = s.post(base, &other, nfs("main", &["pve1"])).await;
    assert_eq!(st, StatusCode::NOT_FOUND, "{e}");
    let (st, _) = s.get(&format!("{base}/main"), &other).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let mut unknown = nfs("main", &["pve1"]);
    unknown["cluster_id"] = json!("nope");
    let (st, e) = s.post(base, &acme, unknown).await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    let (st, e) = s.post(base, &acme, nfs("main", &["pve9"])).await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("pve9"),
        "{e}"
    );
    assert_eq!(sim.count("POST", "/storage"), 0);

    // NFS and local storages, provisioned with content backup and the node restriction.
    let (st, main) = s.post(base, &acme, nfs("main", &["pve1"])).await;
    assert_eq!(st, StatusCode::CREATED, "{main}");
    assert_eq!(
        (main["status"].as_str(), main["pve_storage"].as_str()),
        (Some("active"), Some("bwk4-acme-main"))
    );
    let cfg = sim.storage("bwk4-acme-main").expect("on the cluster");
    assert_eq!(
        (
            cfg["type"].as_str(),
            cfg["content"].as_str(),
            cfg["nodes"].as_str(),
            cfg["export"].as_str()
        ),
        ("nfs", "backup", "pve1", "/srv/backup/main")
    );
    let (st, local) = s
        .post(
            base,
            &acme,
            json!({"id": "fast", "cluster_id": "pve", "type": "local", "path": "/srv/bulwark/acme",
                "nodes": ["pve1", "pve2"], "capacity_bytes": 500_000}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{local}");
    let cfg = sim.storage("bwk4-acme-fast").unwrap();
    assert_eq!(
        (
            cfg["type"].as_str(),
            cfg["content"].as_str(),
            cfg["nodes"].as_str(),
            cfg["path"].as_str()
        ),
        ("dir", "backup", "pve1,pve2", "/srv/bulwark/acme")
    );
    let (st, e) = s.post(base, &acme, nfs("main", &["pve1"])).await;
    assert_eq!(st, StatusCode::CONFLICT, "{e}");

    // Resize, and move to other nodes (an update with the cluster's digest).
    let (st, up) = s
        .put(
            &format!("{base}/main"),
            &acme,
            json!({"capacity_bytes": 2_000_000, "nodes": ["pve1", "pve2"]}),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{up}");
    assert_eq!(up["capacity_bytes"], 2_000_000);
    assert_eq!(sim.storage("bwk4-acme-main").unwrap()["nodes"], "pve1,pve2");
    assert!(sim.requests().iter().any(|r| r.method == "PUT"
        && r.path == "/storage/bwk4-acme-main"
        && r.params.contains_key("digest")));
    let (st, e) = s
        .put(&format!("{base}/main"), &acme, json!({"export": "/x"}))
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{e}");

    // Sync picks up capacity changes on the cluster.
    sim.set_storage_usage("bwk4-acme-main", 10_000, 4_000);
    let (st, synced) = s
        .post("/api/v1/proxmox-clusters/pve/sync", &s.admin, json!({}))
        .await;
    assert_eq!(st, StatusCode::OK, "{synced}");
    let m = storage(&synced, "main");
    assert_eq!(
        (
            &m["usage"]["total_bytes"],
            &m["usage"]["used_bytes"],
            &m["usage"]["avail_bytes"],
            &m["usage"]["active"]
        ),
        (&json!(10_000), &json!(4_000), &json!(6_000), &json!(true))
    );

    // An inactive storage: error + one storage_error alert, however often it is synced.
    sim.inject(Fault::StorageInactive("bwk4-acme-main".into()));
    for _ in 0..2 {
        let (_, synced) = s
            .post("/api/v1/proxmox-clusters/pve/sync", &s.admin, json!({}))
            .await;
        let m = storage(&synced, "main");
        assert_eq!(m["status"], "error", "{m}");
        assert!(
            m["status_message"].as_str().unwrap().contains("not active"),
            "{m}"
        );
        assert_eq!(storage(&synced, "fast")["status"], "active");
    }
    let errs = alerts(&s, "acme", &acme).await;
    let errs = of_kind(&errs, "storage_error");
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(
        (errs[0]["state"].as_str(), errs[0]["storage_id"].as_str()),
        (Some("open"), Some("main"))
    );
    // Recovery: active again, the alert resolved.
    sim.inject(Fault::StorageActive("bwk4-acme-main".into()));
    let (_, synced) = s
        .post("/api/v1/proxmox-clusters/pve/sync", &s.admin, json!({}))
        .await;
    assert_eq!(storage(&synced, "main")["status"], "active");
    let all = alerts(&s, "acme", &acme).await;
    assert_eq!(of_kind(&all, "storage_error")[0]["state"], "resolved");
    let audit = s.audit_text().await;
    assert!(audit.contains("backup_storage.status") && audit.contains("backup_storage.update"));

    // Usage from the catalog; 80 % and 90 % alerts once per crossing.
    let steps = [("b1", 500u64), ("b2", 300), ("b3", 50), ("b4", 60)];
    let records: Vec<BackupRecord> = steps
        .iter()
        .map(|(id, bytes)| backup(id, "acme", "main", *bytes))
        .collect();
    for r in &records {
        record(&s.store, r.clone()).await;
    }
    // Reporting the same backup again changes nothing.
    record(&s.store, records[3].clone()).await;
    let (st, u) = s.get("/api/v1/workspaces/acme/usage", &acme).await;
    assert_eq!(st, StatusCode::OK, "{u}");
    assert_eq!(
        (
            u["quota_bytes"].as_u64(),
            u["used_bytes"].as_u64(),
            u["percent"].as_f64()
        ),
        (Some(1000), Some(910), Some(91.0))
    );
    let um = storage(&u["storages"], "main");
    assert_eq!(
        (
            um["capacity_bytes"].as_u64(),
            um["last_sync"]["total_bytes"].as_u64()
        ),
        (Some(2_000_000), Some(10_000))
    );
    let all = alerts(&s, "acme", &acme).await;
    assert_eq!(of_kind(&all, "quota_80").len(), 1, "{all:?}");
    assert_eq!(of_kind(&all, "quota_90").len(), 1, "{all:?}");
    assert!(of_kind(&all, "quota_80")[0]["message"]
        .as_str()
        .unwrap()
        .contains("80 %"));

    // Admission: a backup that would pass the quota is refused, with the alert recorded once.
    for _ in 0..2 {
        let admission = s
            .store
            .write(system(), |tx| tx.admit_backup("acme", "orders", 200))
            .await
            .unwrap();
        let Admission::Refused(message) = admission else {
            panic!("admitted over quota: {admission:?}")
        };
        assert!(
            message.contains("quota of 1000 bytes by 110 bytes") && message.contains("orders"),
            "{message}"
        );
    }
    let admitted = s
        .store
        .write(system(), |tx| tx.admit_backup("acme", "orders", 90))
        .await
        .unwrap();
    assert_eq!(
        admitted,
        Admission::Admitted {
            used: 910,
            quota: 1000
        }
    );
    let all = alerts(&s, "acme", &acme).await;
    assert_eq!(of_kind(&all, "quota_exceeded").len(), 1, "{all:?}");
    let (_, other_alerts) = s.get("/api/v1/alerts?workspace=acme", &other).await;
    assert_eq!(other_alerts["error"]["code"], "not_found");

    // Deleting a storage that holds retained backups: 409 with the count.
    let (st, e) = s.delete(&format!("{base}/main"), &acme).await;
    assert_eq!(st, StatusCode::CONFLICT, "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("4 retained"),
        "{e}"
    );
    assert!(sim.storage("bwk4-acme-main").is_some());
    // Their entries go (forget jobs confirmed) and a gc frees what they stored: usage falls by
    // what the gc freed, not by the entries leaving the catalog.
    for id in ["b1", "b2", "b3", "b4"] {
        s.store
            .write(system(), move |tx| {
                let gone = tx.remove_backup(id)?.expect("the entry exists");
                tx.record_freed(&gone.workspace_id, gone.stored_bytes)
            })
            .await
            .unwrap();
    }
    let (_, u) = s.get("/api/v1/workspaces/acme/usage", &acme).await;
    assert_eq!(u["used_bytes"], 0);
    let all = alerts(&s, "acme", &acme).await;
    assert!(
        all.iter()
            .filter(|a| a["kind"] != "storage_error")
            .all(|a| a["state"] == "resolved"),
        "{all:?}"
    );

    // The cluster cannot go while storages live on it.
    let (st, e) = s.delete("/api/v1/proxmox-clusters/pve", &s.admin).await;
    assert_eq!(st, StatusCode::CONFLICT, "{e}");
    for id in ["main", "fast"] {
        let (st, e) = s.delete(&format!("{base}/{id}"), &acme).await;
        assert_eq!(st, StatusCode::NO_CONTENT, "{e}");
        assert!(sim.storage(&format!("bwk4-acme-{id}")).is_none());
    }
    let (_, list) = s.get(base, &acme).await;
    assert_eq!(list, json!([]));
    let (st, _) = s.delete("/api/v1/proxmox-clusters/pve", &s.admin).await;
    assert_eq!(st, StatusCode::NO_CONTENT);

    let audit = s.audit_text().await;
    for action in [
        "backup_storage.create",
        "backup_storage.delete",
        "proxmox_cluster.delete",
        "alert.raise",
    ] {
        assert!(audit.contains(action), "{action} is not audited");
    }
    let (_, verify) = s.get("/api/v1/audit/verify", &s.admin).await;
    assert_eq!(verify["ok"], true, "{verify}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_creation_is_kept_as_error_and_can_be_deleted() {
    let sim = PveSim::start_default();
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), Duration::from_secs(300)).await;
    s.register(&sim, "pve").await;
    let acme = s.workspace("acme", "dedicated", 1 << 30).await;
    let base = "/api/v1/workspaces/acme/backup-storages";
    // One 500 on the first call (GET /nodes) is absorbed by the client's retry.
    sim.inject(Fault::ServerErrors(1));
    let (st, e) = s.post(base, &acme, nfs("main", &["pve1"])).await;
    assert_eq!(st, StatusCode::CREATED, "{e}");
    // The cluster refuses the creation: an id already defined there (not by us). The record
    // is kept as error with the cluster's message; deleting it leaves the cluster's storage.
    let dir_type = proxmox_client::StorageType::Dir {
        path: "/srv/theirs".into(),
        shared: None,
        is_mountpoint: None,
    };
    sim.client()
        .create_storage(&proxmox_client::StorageCreate::backup(
            "bwk4-acme-taken",
            dir_type,
            &[],
        ))
        .await
        .unwrap();
    let (st, e) = s.post(base, &acme, nfs("taken", &["pve1"])).await;
    assert_eq!(st, StatusCode::BAD_GATEWAY, "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("already defined"),
        "{e}"
    );
    let (st, rec) = s.get(&format!("{base}/taken"), &acme).await;
    assert_eq!(
        (st, rec["status"].as_str(), rec["provisioned"].as_bool()),
        (StatusCode::OK, Some("error"), Some(false))
    );
    assert!(
        rec["status_message"]
            .as_str()
            .unwrap()
            .contains("already defined"),
        "{rec}"
    );
    // Never adopted: a sync does not read the cluster's storage of that name into our record
    // (it is active there), and a node change is refused instead of rewriting theirs.
    let (st, e) = s
        .post("/api/v1/proxmox-clusters/pve/sync", &s.admin, json!({}))
        .await;
    assert_eq!(st, StatusCode::OK, "{e}");
    let (_, rec) = s.get(&format!("{base}/taken"), &acme).await;
    assert_eq!(
        (rec["status"].as_str(), rec["usage"].is_null()),
        (Some("error"), true),
        "{rec}"
    );
    let (st, e) = s
        .put(
            &format!("{base}/taken"),
            &acme,
            json!({"capacity_bytes": 1u64 << 30, "nodes": ["pve1", "pve2"]}),
        )
        .await;
    assert_eq!(st, StatusCode::CONFLICT, "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("was not created by this control plane"),
        "{e}"
    );
    assert!(!sim
        .storage("bwk4-acme-taken")
        .unwrap()
        .contains_key("nodes"));
    let (st, _) = s.delete(&format!("{base}/taken"), &acme).await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    assert_eq!(
        sim.storage("bwk4-acme-taken").unwrap()["path"],
        "/srv/theirs"
    );
    // A storage the cluster creates but cannot activate: kept as error, answered 502.
    sim.inject(Fault::StorageInactive("bwk4-acme-dead".into()));
    let (st, e) = s.post(base, &acme, nfs("dead", &["pve1"])).await;
    assert_eq!(st, StatusCode::BAD_GATEWAY, "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not active"),
        "{e}"
    );
    let (st, rec) = s.get(&format!("{base}/dead"), &acme).await;
    assert_eq!(
        (st, rec["status"].as_str()),
        (StatusCode::OK, Some("error"))
    );
    let (st, _) = s.delete(&format!("{base}/dead"), &acme).await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    assert!(sim.storage("bwk4-acme-dead").is_none());
    s.stop().await;
}

/// Regression: `wsa` + `x-main` and `wsa-x` + `main` were both `bwk-wsa-x-main` on the cluster,
/// so the second tenant's creation adopted (and could then change) the first one's storage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storages_of_two_workspaces_never_share_a_cluster_storage() {
    let sim = PveSim::start_default();
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), Duration::from_secs(300)).await;
    s.register(&sim, "pve").await;
    let a = s.workspace("wsa", "dedicated", 1 << 30).await;
    let b = s.workspace("wsa-x", "dedicated", 1 << 30).await;
    let (st, first) = s
        .post(
            "/api/v1/workspaces/wsa/backup-storages",
            &a,
            nfs("x-main", &["pve1"]),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{first}");
    let (st, second) = s
        .post(
            "/api/v1/workspaces/wsa-x/backup-storages",
            &b,
            nfs("main", &["pve2"]),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{second}");
    assert_eq!(first["pve_storage"], "bwk3-wsa-x-main");
    assert_eq!(second["pve_storage"], "bwk5-wsa-x-main");
    assert_eq!(sim.storage("bwk3-wsa-x-main").unwrap()["nodes"], "pve1");
    assert_eq!(sim.storage("bwk5-wsa-x-main").unwrap()["nodes"], "pve2");
    // Deleting one leaves the other on the cluster.
    let (st, _) = s
        .delete("/api/v1/workspaces/wsa-x/backup-storages/main", &b)
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    assert!(sim.storage("bwk5-wsa-x-main").is_none());
    assert!(sim.storage("bwk3-wsa-x-main").is_some());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_periodic_sync_notices_an_inactive_storage_and_stops_with_the_server() {
    let sim = PveSim::start_default();
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), Duration::from_millis(300)).await;
    s.register(&sim, "pve").await;
    let acme = s.workspace("acme", "dedicated", 1 << 30).await;
    let (st, v) = s
        .post(
            "/api/v1/workspaces/acme/backup-storages",
            &acme,
            nfs("main", &["pve1"]),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    sim.inject(Fault::StorageInactive("bwk4-acme-main".into()));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, v) = s
            .get("/api/v1/workspaces/acme/backup-storages/main", &acme)
            .await;
        if v["status"] == "error" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the sync task did not notice: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let all = alerts(&s, "acme", &acme).await;
    assert_eq!(of_kind(&all, "storage_error").len(), 1, "{all:?}");
    s.stop().await;
}

//! Restores through the control plane (issue 13), for real: a real PostgreSQL 15 archiving WAL
//! through `wal-push`, two real `bulwark-agent run` daemons of one workspace, the control plane
//! in-process, and the Proxmox simulator's NFS storage on a real NFS-Ganesha export.
//!
//! What a user would notice: a point-in-time restore onto another host, approved by a second
//! admin (never the requester), lands at the second asked for; an in-place restore keeps a
//! pre-restore backup in the catalog that undoes it; one tenant's schema comes back into a new
//! database; and every request that should not run is refused before anything changes.
//!
//! Needs root (the agents and the server run as the db user), Ganesha and rpcbind
//! (scripts/setup.sh).

use std::time::Duration;

use bulwark_control_plane::jobs::upkeep::UpkeepSettings;
use bulwark_control_plane::scheduler::JobSettings;
use bulwark_control_plane::store::jobs::Limits;
use bulwark_tests::control_plane::TestServer;
use bulwark_tests::daemon::{wait_for, Daemon};
use bulwark_tests::free_port;
use bulwark_tests::nfs::NfsServer;
use bulwark_tests::pg::{give_to_db_user, AgentSetup, PgCluster, PgOptions, RunningServer};
use bulwark_tests::pve_sim::PveSim;
use reqwest::StatusCode;
use serde_json::{json, Value};

fn settings() -> JobSettings {
    JobSettings {
        tick: Duration::from_secs(1),
        lost_after: Duration::from_secs(120),
        limits: Limits {
            per_agent: 1,
            per_storage: 4,
        },
        max_attempts: 1,
        retry_delay: Duration::from_secs(1),
        upkeep: UpkeepSettings {
            gc_interval_days: 365,
            gc_after_forgets: 100,
            verify_interval_hours: 100 * 24,
            verify_parts: 1,
        },
    }
}

struct World {
    srv: TestServer,
    /// The requester (a workspace admin) and a second admin.
    alice: String,
    bob: String,
    logs: Vec<std::path::PathBuf>,
}

impl World {
    fn logs(&self) -> String {
        self.logs
            .iter()
            .map(|l| std::fs::read_to_string(l).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n----\n")
    }

    async fn backup(&self, db: &str) -> Value {
        let (s, v) = self
            .srv
            .post("/api/v1/backups", &self.alice, json!({"database_id": db}))
            .await;
        assert_eq!(s, StatusCode::ACCEPTED, "{v}");
        let id = v["jobs"][0]["id"].as_str().unwrap().to_string();
        wait_for(120, &format!("backup job {id}"), || async {
            let (_, j) = self
                .srv
                .get(&format!("/api/v1/jobs/{id}"), &self.alice)
                .await;
            match j["status"].as_str() {
                Some("succeeded") => Some(j),
                Some("failed") => panic!("backup {id} failed: {j}\n{}", self.logs()),
                _ => None,
            }
        })
        .await
    }

    async fn request(&self, token: &str, body: Value) -> (StatusCode, Value) {
        self.srv.post("/api/v1/restores", token, body).await
    }

    /// Waits until restore `id` has ended; returns it.
    async fn ended(&self, id: &str) -> Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(180);
        loop {
            let (s, r) = self
                .srv
                .get(&format!("/api/v1/restores/{id}"), &self.alice)
                .await;
            assert_eq!(s, StatusCode::OK, "{r}");
            if matches!(r["status"].as_str(), Some("succeeded" | "failed")) {
                return r;
            }
            if std::time::Instant::now() > deadline {
                let job = match r["job_id"].as_str() {
                    Some(j) => {
                        self.srv
                            .get(&format!("/api/v1/jobs/{j}"), &self.alice)
                            .await
                            .1
                    }
                    None => Value::Null,
                };
                panic!("restore {id} did not end: {r}\njob: {job}\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    async fn succeeded(&self, body: Value) -> Value {
        let (s, r) = self.request(&self.alice, body).await;
        assert_eq!(s, StatusCode::CREATED, "{r}");
        assert_eq!(r["status"], "queued", "{r}");
        let r = self.ended(r["id"].as_str().unwrap()).await;
        assert_eq!(r["status"], "succeeded", "{r}\n{}", self.logs());
        r
    }
}

fn refused(what: &str, (s, v): (StatusCode, Value), status: StatusCode, path: &str) {
    assert_eq!(s, status, "{what}: {v}");
    if !path.is_empty() {
        let details = v["error"]["details"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert!(
            details.iter().any(|d| d["path"] == path),
            "{what}: expected a problem at {path}: {v}"
        );
    }
}

fn rows(server: &impl Fn(&str, &str) -> String, db: &str, table: &str) -> String {
    server(
        db,
        &format!("SELECT coalesce(string_agg(id::text, ',' ORDER BY id), '') FROM {table}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restores_through_the_api_with_approval_pre_restore_backups_and_refusals() {
    if !bulwark_tests::pg::is_root() {
        eprintln!("skipped: needs root (the agents run as the db user)");
        return;
    }
    let nfs = NfsServer::start();
    give_to_db_user(&nfs.export);
    let sim = PveSim::start_default();
    let tmp = tempfile::tempdir().unwrap();
    let srv =
        TestServer::start_with_jobs(&tmp.path().join("cp"), Duration::from_secs(300), settings())
            .await;
    let alice = srv.workspace("acme", "dedicated", 50 << 30).await;
    let bob = srv.user("bob", "workspace-admin", "acme").await;
    srv.provision_nfs_storage(&sim, &nfs, "acme", &alice).await;

    // Agent one serves `shop` (physical, WAL archived) and `crm` (logical, a schema per
    // tenant) of one cluster; agent two serves nothing: it is where the original host's
    // databases come back when that host is gone.
    let mut one = AgentSetup::new();
    let pg = PgCluster::start(PgOptions {
        archive_command: Some(one.wal_push_command("shop")),
        ..Default::default()
    });
    pg.create_database("shop");
    pg.create_database("crm");
    one.add_postgres("shop", "physical", &pg, "shop");
    one.add_postgres("crm", "logical", &pg, "crm");
    let two = AgentSetup::new();
    for setup in [&one, &two] {
        let text = format!("{}{}", setup.config_text(), nfs.storage_entry(None));
        std::fs::write(&setup.config, text).unwrap();
        give_to_db_user(&setup.config);
    }
    let mut daemons = Vec::new();
    for setup in [&one, &two] {
        let token = srv.enrollment_token(&alice, "acme").await;
        let mut d = Daemon::enroll(&srv, setup, &token);
        d.start(setup);
        daemons.push(d);
    }
    let mut w = World {
        srv,
        alice,
        bob,
        logs: daemons.iter().map(|d| d.log.clone()).collect(),
    };
    let srv = &w.srv;
    let agent_one = wait_for(30, "shop and crm to be declared", || async {
        let (_, crm) = srv.get("/api/v1/databases/crm", &w.alice).await;
        let (_, shop) = srv.get("/api/v1/databases/shop", &w.alice).await;
        shop["agent_id"].as_str()?;
        crm["agent_id"].as_str().map(str::to_string)
    })
    .await;
    let (_, agents) = srv.get("/api/v1/agents?workspace=acme", &w.alice).await;
    let agent_two = agents["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap().to_string())
        .find(|id| *id != agent_one)
        .expect("two agents");
    // An agent of another workspace (enrolled, never started).
    let globex = srv.workspace("globex", "dedicated", 1 << 30).await;
    let stranger_setup = AgentSetup::new();
    let _stranger = Daemon::enroll(
        srv,
        &stranger_setup,
        &srv.enrollment_token(&globex, "globex").await,
    );
    let (_, agents) = srv.get("/api/v1/agents?workspace=globex", &globex).await;
    let stranger = agents["items"][0]["id"].as_str().unwrap().to_string();

    // shop's policy asks for a second person's approval of every restore.
    let (s, policy) = srv
        .post(
            "/api/v1/policies",
            &w.alice,
            json!({"db_identifier": "shop", "db_type": "postgresql", "storage_id": "main",
                "require_restore_approval": true,
                "schedule": {"frequency": "daily", "preferred_window": "00:00-24:00", "priority": "normal"},
                "retention": {"period_days": 30, "min_snapshots": 1}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{policy}");
    srv.set_next_due(
        policy["id"].as_str().unwrap(),
        srv.store.now() + chrono::Duration::days(1000),
    )
    .await;

    // ---- shop: a base backup, rows on both sides of a noted second, archived WAL ----------
    pg.psql(
        "shop",
        "CREATE TABLE orders (id int PRIMARY KEY, created timestamptz DEFAULT clock_timestamp())",
    );
    let insert = |id: u32| pg.psql("shop", &format!("INSERT INTO orders (id) VALUES ({id})"));
    for id in 1..=3 {
        insert(id);
    }
    let base = w.backup("shop").await;
    for id in 4..=6 {
        insert(id);
    }
    std::thread::sleep(Duration::from_millis(1100));
    let noted = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    std::thread::sleep(Duration::from_millis(1100));
    for id in 7..=8 {
        insert(id);
    }
    let last = pg.psql("postgres", "SELECT pg_walfile_name(pg_switch_wal())");
    wait_for(60, "the heartbeat to report the last WAL file", || async {
        let (_, v) = srv.get("/api/v1/databases/shop", &w.alice).await;
        (v["recoverable"]["last_wal_file"] == last.as_str()).then_some(())
    })
    .await;

    let data_dir = two.path("shop-restored");
    w.logs.push(data_dir.join("bulwark-recovery.log"));
    let port = free_port();
    let pitr = json!({"database_id": "shop", "point_in_time": noted, "agent_id": agent_two,
        "target": {"type": "location", "path": data_dir, "port": port},
        "reason": "orders 7 and 8 were written by the faulty release"});

    // ---- refused before anything changes ----------------------------------------------------
    let mut no_reason = pitr.clone();
    no_reason.as_object_mut().unwrap().remove("reason");
    refused(
        "no reason",
        w.request(&w.alice, no_reason).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "reason",
    );
    let mut too_early = pitr.clone();
    too_early["point_in_time"] = json!((chrono::Utc::now() - chrono::Duration::hours(3))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    refused(
        "a point before the window",
        w.request(&w.alice, too_early).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "point_in_time",
    );
    let mut foreign = pitr.clone();
    foreign["agent_id"] = json!(stranger);
    refused(
        "an agent of another workspace",
        w.request(&w.alice, foreign).await,
        StatusCode::NOT_FOUND,
        "",
    );
    refused(
        "in place without confirmation",
        w.request(
            &w.alice,
            json!({"database_id": "crm", "reason": "test", "confirm": "shop"}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "confirm",
    );
    refused(
        "another workspace cannot see the database",
        w.request(
            &globex,
            json!({"database_id": "crm", "reason": "x", "confirm": "crm"}),
        )
        .await,
        StatusCode::NOT_FOUND,
        "",
    );
    let (_, listed) = srv.get("/api/v1/restores?workspace=acme", &w.alice).await;
    assert_eq!(
        listed["items"],
        json!([]),
        "refusals store nothing: {listed}"
    );

    // ---- PITR onto the other agent, approved by the second admin -----------------------------
    let (s, r) = w.request(&w.alice, pitr.clone()).await;
    assert_eq!(s, StatusCode::CREATED, "{r}");
    assert_eq!(r["status"], "pending_approval", "{r}");
    assert_eq!(
        r["approval_required"],
        format!("policy {}", policy["id"].as_str().unwrap())
    );
    let id = r["id"].as_str().unwrap().to_string();
    assert!(r.get("job_id").is_none(), "no job before approval: {r}");
    let (s, v) = srv
        .post(
            &format!("/api/v1/restores/{id}/approve"),
            &w.alice,
            json!({}),
        )
        .await;
    assert_eq!(
        s,
        StatusCode::FORBIDDEN,
        "the requester cannot approve: {v}"
    );
    let restored = RunningServer::attach(&data_dir, port);
    let (s, v) = srv
        .post(
            &format!("/api/v1/recovery/{id}/approve"),
            &w.bob,
            json!({"note": "checked with the shop team"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["status"], "queued", "{v}");
    assert_eq!(v["decision"]["by"]["name"], "bob", "{v}");
    let r = w.ended(&id).await;
    assert_eq!(r["status"], "succeeded", "{r}\n{}", w.logs());
    assert_eq!(r["agent_id"], agent_two.as_str());
    assert_eq!(r["restored_snapshot"], base["snapshot"], "{r}");
    assert!(
        r["reached"]["stop_reason"]
            .as_str()
            .unwrap()
            .contains("recovery stopping"),
        "{r}"
    );
    assert!(r["reached"]["timeline"].is_string(), "{r}");
    assert_eq!(
        rows(&|db, sql| restored.psql(db, sql), "shop", "orders"),
        "1,2,3,4,5,6",
        "recovered to {noted}: {r}"
    );
    let (_, status) = srv
        .get(&format!("/api/v1/recovery/{id}/status"), &w.bob)
        .await;
    assert_eq!(status["status"], "succeeded");
    let (_, audit) = srv
        .get(
            &format!("/api/v1/audit?resource_type=restore&resource_id={id}&page_size=500"),
            &w.alice,
        )
        .await;
    let actions: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    for a in [
        "restore.request",
        "restore.approve",
        "restore.queue",
        "restore.succeed",
    ] {
        assert!(actions.contains(&a), "{a} audited: {actions:?}");
    }
    drop(restored);

    // ---- crm: full in place with a pre-restore backup that undoes it -------------------------
    for t in ["tenant_a", "tenant_b"] {
        pg.psql(
            "crm",
            &format!("CREATE SCHEMA {t}; CREATE TABLE {t}.customers (id int PRIMARY KEY)"),
        );
    }
    pg.psql("crm", "INSERT INTO tenant_a.customers VALUES (1), (2)");
    pg.psql("crm", "INSERT INTO tenant_b.customers VALUES (10)");
    let good = w.backup("crm").await;
    pg.psql("crm", "DELETE FROM tenant_a.customers WHERE id = 2");
    pg.psql("crm", "INSERT INTO tenant_b.customers VALUES (11)");
    let crm = |db: &str, sql: &str| pg.psql(db, sql);
    let r = w
        .succeeded(
            json!({"backup_id": good["id"], "reason": "undo the bad migration",
            "confirm": "crm"}),
        )
        .await;
    assert_eq!(rows(&crm, "crm", "tenant_a.customers"), "1,2");
    assert_eq!(rows(&crm, "crm", "tenant_b.customers"), "10");
    let pre = r["pre_restore_backup_id"]
        .as_str()
        .expect("a pre-restore backup");
    let (_, entry) = srv.get(&format!("/api/v1/backups/{pre}"), &w.alice).await;
    assert_eq!(entry["kind"], "pre-restore", "{entry}");
    assert_eq!(entry["tags"]["restore"], r["id"], "{entry}");
    assert_eq!(entry["status"], "succeeded", "{entry}");
    // Restoring the pre-restore backup (through the seed's path) undoes the restore.
    let (s, undo) = srv
        .post(
            &format!("/api/v1/backups/{pre}/restore"),
            &w.alice,
            json!({"reason": "the old data was right after all", "confirm": "crm"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{undo}");
    let undo = w.ended(undo["id"].as_str().unwrap()).await;
    assert_eq!(undo["status"], "succeeded", "{undo}");
    assert_eq!(rows(&crm, "crm", "tenant_a.customers"), "1");
    assert_eq!(rows(&crm, "crm", "tenant_b.customers"), "10,11");

    // ---- selective: one tenant's schema into a new database ----------------------------------
    w.succeeded(
        json!({"backup_id": good["id"], "reason": "tenant a asks for its old rows",
        "mode": "selective", "schemas": ["tenant_a"],
        "target": {"type": "database", "name": "crm_tenant_a"}}),
    )
    .await;
    assert_eq!(rows(&crm, "crm_tenant_a", "tenant_a.customers"), "1,2");
    assert_eq!(
        pg.psql(
            "crm_tenant_a",
            "SELECT count(*) FROM information_schema.schemata WHERE schema_name = 'tenant_b'"
        ),
        "0",
        "only the one schema"
    );
    assert_eq!(
        rows(&crm, "crm", "tenant_a.customers"),
        "1",
        "crm untouched"
    );

    // ---- a failed restore raises an alert ----------------------------------------------------
    let occupied = two.path("occupied");
    std::fs::create_dir_all(&occupied).unwrap();
    std::fs::write(occupied.join("PG_VERSION"), "15\n").unwrap();
    give_to_db_user(&occupied);
    let (s, r) = w
        .request(
            &w.alice,
            json!({"backup_id": base["id"], "agent_id": agent_two, "reason": "drill by hand",
                "target": {"type": "location", "path": occupied, "port": free_port()}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{r}");
    let id = r["id"].as_str().unwrap();
    let (s, v) = srv
        .post(&format!("/api/v1/restores/{id}/approve"), &w.bob, json!({}))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let r = w.ended(id).await;
    assert_eq!(r["status"], "failed", "{r}");
    assert!(r["error"].as_str().unwrap().contains("occupied"), "{r}");
    let (_, alerts) = srv.get("/api/v1/alerts?workspace=acme", &w.alice).await;
    assert!(
        alerts["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["kind"] == "restore_failed" && a["message"].as_str().unwrap().contains(id)),
        "{alerts}"
    );

    // ---- cancelled, rejected and expired requests never run ----------------------------------
    let wait = json!({"database_id": "crm", "reason": "later", "confirm": "crm",
        "require_approval": true, "expires_in_hours": 1});
    let (_, c) = w.request(&w.alice, wait.clone()).await;
    let cid = c["id"].as_str().unwrap();
    let (s, v) = srv
        .post(&format!("/api/v1/restores/{cid}/cancel"), &w.bob, json!({}))
        .await;
    assert_eq!(s, StatusCode::OK, "an admin may cancel: {v}");
    assert_eq!(v["status"], "cancelled");
    let (_, j) = w.request(&w.alice, wait.clone()).await;
    let (s, v) = srv
        .post(
            &format!("/api/v1/restores/{}/reject", j["id"].as_str().unwrap()),
            &w.bob,
            json!({"note": "not during the sale"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["status"], "rejected");
    let (_, e) = w.request(&w.alice, wait).await;
    let eid = e["id"].as_str().unwrap();
    srv.store
        .advance_clock_for_tests(chrono::Duration::hours(2));
    let (s, v) = srv
        .post(
            &format!("/api/v1/restores/{eid}/approve"),
            &w.bob,
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "expired: {v}");
    let (_, v) = srv.get(&format!("/api/v1/restores/{eid}"), &w.alice).await;
    assert_eq!(v["status"], "expired", "{v}");
    assert!(v.get("job_id").is_none(), "{v}");
    assert_eq!(
        rows(&crm, "crm", "tenant_b.customers"),
        "10,11",
        "nothing ran"
    );
    drop(daemons);
}

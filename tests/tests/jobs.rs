//! Jobs end to end (issue 5): the control plane in-process on real HTTPS with its built-in CA,
//! the real `bulwark-agent run` daemon enrolled over mutual TLS, a real PostgreSQL 15 cluster.
//! A policy's slot (the "test clock": the stored next-due time is set to now) and manual
//! requests become backups in the catalog that restore; a control-plane restart in the middle
//! of a backup loses nothing; a job lost with its agent is failed and retried; SIGTERM aborts a
//! backup cleanly. The protocol's refusals (other workspace, revoked agent, bearer token,
//! duplicate results) are checked with hand-made agents over HTTPS.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bulwark_control_plane::domain::audit::Actor;
use bulwark_control_plane::scheduler::JobSettings;
use bulwark_control_plane::store::jobs::{Limits, ScheduleState};
use bulwark_tests::control_plane::{client_with, TestServer};
use bulwark_tests::daemon::{wait_for, Daemon};
use bulwark_tests::pg::{AgentSetup, PgCluster, PgOptions};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

fn fast_jobs() -> JobSettings {
    JobSettings {
        tick: Duration::from_secs(1),
        lost_after: Duration::from_secs(6),
        limits: Limits {
            per_agent: 1,
            per_storage: 4,
        },
        max_attempts: 3,
        retry_delay: Duration::from_secs(1),
        upkeep: Default::default(),
    }
}

async fn start(dir: &Path) -> TestServer {
    TestServer::start_with_jobs(dir, Duration::from_secs(300), fast_jobs()).await
}

fn test_actor() -> Actor {
    Actor {
        kind: "system".into(),
        id: "test".into(),
        name: "test clock".into(),
    }
}

/// What the scheduler stored for `policy`.
fn schedule_state(srv: &TestServer, policy: &str) -> ScheduleState {
    bulwark_control_plane::store::jobs::schedule_state(&srv.store.read().unwrap(), policy).unwrap()
}

async fn job(srv: &TestServer, token: &str, id: &str) -> Value {
    let (s, v) = srv.get(&format!("/api/v1/jobs/{id}"), token).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v
}

async fn wait_job_status(
    srv: &TestServer,
    token: &str,
    id: &str,
    status: &str,
    secs: u64,
) -> Value {
    wait_for(secs, &format!("job {id} to be {status}"), || async {
        let j = job(srv, token, id).await;
        if j["status"] == status {
            Some(j)
        } else {
            assert!(
                !(status == "succeeded" && j["status"] == "failed"),
                "job {id} failed: {j}"
            );
            None
        }
    })
    .await
}

async fn catalog(srv: &TestServer, token: &str, db: &str) -> Vec<Value> {
    let (s, v) = srv
        .get(&format!("/api/v1/backups?database={db}"), token)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v["items"].as_array().unwrap().clone()
}

async fn manual_backup(srv: &TestServer, token: &str, body: Value) -> Vec<Value> {
    let (s, v) = srv.post("/api/v1/backups", token, body).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    v["jobs"].as_array().unwrap().clone()
}

fn snapshot_names(setup: &AgentSetup, db: &str) -> Vec<String> {
    let v = setup.agent_json(&["snapshots", "--database", db]);
    v.as_array()
        .or_else(|| v["snapshots"].as_array())
        .unwrap_or_else(|| panic!("snapshots: {v}"))
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_and_manual_backups_reach_the_catalog_and_restore() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = start(&tmp.path().join("cp")).await;
    let acme = srv.workspace("acme", "dedicated", 50 << 30).await;
    let pg = PgCluster::start(PgOptions::default());
    pg.create_database("shop");
    pg.pgbench_init("shop", 1);
    let mut setup = AgentSetup::new();
    setup.add_postgres("shop", "logical", &pg, "shop");
    // The operator's passphrase repository: the first job adds a slot for the workspace key.
    setup.init();
    let token = srv.enrollment_token(&acme, "acme").await;
    let mut daemon = Daemon::enroll(&srv, &setup, &token);
    daemon.start(&setup);

    let (s, policy) = srv
        .post(
            "/api/v1/policies",
            &acme,
            json!({"db_identifier": "shop", "db_type": "postgresql", "backup_method": "logical",
                "schedule": {"frequency": "every 5m", "preferred_window": "00:00-24:00", "priority": "normal"},
                "retention": {"period_days": 7, "min_snapshots": 1}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{policy}");
    let policy_id = policy["id"].as_str().unwrap().to_string();
    // The scheduler plans the policy's first slot in the future, not now.
    let first = wait_for(10, "the scheduler to plan the policy", || async {
        schedule_state(&srv, &policy_id).next_due
    })
    .await;
    assert!(first > chrono::Utc::now(), "{first}");
    let (s, up) = srv.get("/api/v1/schedule/upcoming?hours=1", &acme).await;
    assert_eq!(s, StatusCode::OK, "{up}");
    let runs: Vec<&Value> = up["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["policy_id"] == policy_id.as_str())
        .collect();
    assert!((11..=13).contains(&runs.len()), "{up}");
    let at: chrono::DateTime<chrono::Utc> = runs[0]["at"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        at, first,
        "the listing starts at the slot the scheduler stored"
    );
    assert!(
        runs[0]["reason"].as_str().unwrap().contains("00:00-24:00"),
        "{up}"
    );
    let (s, bad) = srv.get("/api/v1/schedule/upcoming?hours=0", &acme).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}");

    // The test clock: the slot has come.
    srv.set_next_due(
        &policy_id,
        chrono::Utc::now() - chrono::Duration::seconds(1),
    )
    .await;
    let auto_job = wait_for(20, "the scheduled job", || async {
        let (_, v) = srv.get("/api/v1/jobs?database=shop", &acme).await;
        v["items"].as_array().unwrap().first().cloned()
    })
    .await;
    let auto_id = auto_job["id"].as_str().unwrap().to_string();
    assert!(
        auto_job["reason"]
            .as_str()
            .unwrap()
            .starts_with("schedule:"),
        "{auto_job}"
    );
    let done = wait_job_status(&srv, &acme, &auto_id, "succeeded", 90).await;
    assert_eq!(done["kind"], "automatic");
    let entries = catalog(&srv, &acme, "shop").await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    let e = &entries[0];
    assert_eq!(
        (
            e["id"].as_str(),
            e["status"].as_str(),
            e["kind"].as_str(),
            e["policy_id"].as_str()
        ),
        (
            Some(auto_id.as_str()),
            Some("succeeded"),
            Some("automatic"),
            Some(policy_id.as_str())
        )
    );
    assert!(
        e["stored_bytes"].as_u64().unwrap() > 0 && e["logical_bytes"].as_u64().unwrap() > 0,
        "{e}"
    );
    // Next slot in the future (not an immediate repeat), duration learned.
    let st = schedule_state(&srv, &policy_id);
    assert!(
        st.next_due.unwrap() > chrono::Utc::now() && st.expected_secs.is_some(),
        "{st:?}"
    );

    // A manual backup with notes and tags.
    let jobs = manual_backup(
        &srv,
        &acme,
        json!({"database_ids": ["shop"], "notes": "before the migration", "tags": {"ticket": "chg-42"}}),
    )
    .await;
    assert_eq!(
        (
            jobs.len(),
            jobs[0]["status"].as_str(),
            jobs[0]["priority"].as_str()
        ),
        (1, Some("queued"), Some("high"))
    );
    let manual_id = jobs[0]["id"].as_str().unwrap().to_string();
    let manual = wait_job_status(&srv, &acme, &manual_id, "succeeded", 90).await;
    let entries = catalog(&srv, &acme, "shop").await;
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0]["id"], manual_id.as_str(), "newest first");
    assert_eq!(entries[0]["kind"], "manual");
    assert_eq!(entries[0]["notes"], "before the migration");
    assert_eq!(entries[0]["tags"]["ticket"], "chg-42");

    // The repository holds both snapshots; the workspace key got its own slot.
    let names = snapshot_names(&setup, "shop");
    for id in [&auto_id, &manual_id] {
        let snap = job(&srv, &acme, id).await["snapshot"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(names.contains(&snap), "{snap} not in {names:?}");
    }
    let keys = setup.agent_ok(&["repo", "key", "list"]);
    assert!(keys.contains("workspace key (control plane)"), "{keys}");
    // …and the manual one restores (with the operator's passphrase) into a new database.
    let snap = manual["snapshot"].as_str().unwrap();
    setup.agent_ok(&[
        "restore",
        snap,
        "--database",
        "shop",
        "--into-database",
        "shop_copy",
    ]);
    assert_eq!(
        pg.table_fingerprints("shop"),
        pg.table_fingerprints("shop_copy")
    );

    // Runs missed (as if the control plane had been down for three hours) are caught up once.
    srv.set_next_due(&policy_id, chrono::Utc::now() - chrono::Duration::hours(3))
        .await;
    let catch_up = wait_for(20, "the catch-up job", || async {
        let (_, v) = srv.get("/api/v1/jobs?database=shop", &acme).await;
        let items = v["items"].as_array().unwrap().clone();
        (items.len() == 3).then(|| items[0].clone())
    })
    .await;
    assert!(
        catch_up["reason"].as_str().unwrap().starts_with("catch-up"),
        "{catch_up}"
    );
    wait_job_status(
        &srv,
        &acme,
        catch_up["id"].as_str().unwrap(),
        "succeeded",
        90,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, v) = srv.get("/api/v1/jobs?database=shop", &acme).await;
    assert_eq!(
        v["items"].as_array().unwrap().len(),
        3,
        "one catch-up, not one per missed slot"
    );

    // A changed schedule is planned again at the next tick (inside the new window); a disabled
    // policy forgets its slot and makes no jobs.
    let (s, v) = srv
        .put(
            &format!("/api/v1/policies/{policy_id}"),
            &acme,
            json!({"db_identifier": "shop", "db_type": "postgresql", "backup_method": "logical",
                "schedule": {"frequency": "daily", "preferred_window": "02:00-03:00", "priority": "normal"},
                "retention": {"period_days": 7, "min_snapshots": 1}}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let replanned = wait_for(10, "the new slot", || async {
        schedule_state(&srv, &policy_id)
            .next_due
            .filter(|d| chrono::Timelike::hour(d) == 2)
    })
    .await;
    assert!(replanned > chrono::Utc::now());
    let (s, v) = srv
        .put(
            &format!("/api/v1/policies/{policy_id}"),
            &acme,
            json!({"db_identifier": "shop", "db_type": "postgresql", "backup_method": "logical", "enabled": false,
                "schedule": {"frequency": "daily", "preferred_window": "02:00-03:00", "priority": "normal"},
                "retention": {"period_days": 7, "min_snapshots": 1}}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    wait_for(10, "the disabled policy to forget its slot", || async {
        schedule_state(&srv, &policy_id)
            .next_due
            .is_none()
            .then_some(())
    })
    .await;
    let (_, up) = srv.get("/api/v1/schedule/upcoming?hours=48", &acme).await;
    assert!(
        up["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["policy_id"] != policy_id.as_str()),
        "{up}"
    );

    // Revoking the agent cuts it off: the daemon stops with an error telling to enrol again.
    let (_, agents) = srv.get("/api/v1/agents", &acme).await;
    let agent_id = agents["items"][0]["id"].as_str().unwrap();
    let (s, _) = srv
        .delete(&format!("/api/v1/agents/{agent_id}"), &acme)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert!(!daemon.wait_exit(40), "a revoked agent exits with an error");
    assert!(
        daemon.log_text().contains("enrol it again"),
        "{}",
        daemon.log_text()
    );
    srv.stop().await;
}

/// Holds an ACCESS EXCLUSIVE lock on `table` in a session of its own, so a pg_dump waits on
/// it; released by [`release`].
fn hold_lock(pg: &Arc<PgCluster>, db: &str, table: &str) -> std::thread::JoinHandle<()> {
    let (pg, db, table) = (pg.clone(), db.to_string(), table.to_string());
    let handle = std::thread::spawn(move || {
        let _ = pg.try_psql(
            &db,
            &format!("BEGIN; LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(600) /* bulwark-test-lock */; COMMIT;"),
        );
    });
    handle
}

fn release(pg: &PgCluster) {
    pg.psql(
        "postgres",
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE '%bulwark-test-lock */%' AND pid <> pg_backend_pid();",
    );
}

/// Waits until the lock is held (so the next dump really waits).
async fn wait_locked(pg: &Arc<PgCluster>) {
    let pg = pg.clone();
    wait_for(20, "the test lock", || {
        let pg = pg.clone();
        async move {
            let n = pg.psql(
                "postgres",
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%bulwark-test-lock */%' AND pid <> pg_backend_pid();",
            );
            (n.trim() == "1").then_some(())
        }
    })
    .await;
}

/// A manual backup of database "big" whose pg_dump waits on a lock of table `t`: returns the
/// lock holder (see [`release`]) and the running job's id.
async fn blocked_backup(
    srv: &TestServer,
    token: &str,
    pg: &Arc<PgCluster>,
) -> (std::thread::JoinHandle<()>, String) {
    let locker = hold_lock(pg, "big", "t");
    wait_locked(pg).await;
    let id = manual_backup(srv, token, json!({"database_id": "big"})).await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    wait_job_status(srv, token, &id, "running", 30).await;
    // "running" is set when the agent takes the job; its lease is written a moment later, when
    // the backup session starts, and "reading" is reported only after that.
    wait_for(30, "the backup to be reading", || async {
        (job(srv, token, &id).await["progress"]["phase"] == "reading").then_some(())
    })
    .await;
    (locker, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_lost_agents_and_sigterm_lose_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = start(&tmp.path().join("cp")).await;
    let acme = srv.workspace("acme", "dedicated", 50 << 30).await;
    let pg = Arc::new(PgCluster::start(PgOptions::default()));
    pg.create_database("big");
    pg.psql(
        "big",
        "CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 20000) g;",
    );
    let mut setup = AgentSetup::new();
    setup.add_postgres("big", "logical", &pg, "big");
    setup.init();
    let token = srv.enrollment_token(&acme, "acme").await;
    let mut daemon = Daemon::enroll(&srv, &setup, &token);
    daemon.start(&setup);

    // 1. The control plane restarts while a backup runs: its result waits on the agent's disk
    //    and is recorded once the control plane is back.
    let (locker, id) = blocked_backup(&srv, &acme, &pg).await;
    // Progress reaches the control plane while pg_dump waits: phase, bytes, an estimate.
    let progress = wait_for(20, "a progress report", || async {
        let p = job(&srv, &acme, &id).await["progress"].clone();
        (p["phase"] == "reading").then_some(p)
    })
    .await;
    assert!(
        progress["percent"]
            .as_f64()
            .is_some_and(|p| (0.0..=99.0).contains(&p)),
        "{progress}"
    );
    let stopped = srv.stop_for_restart().await;
    release(&pg);
    locker.join().unwrap();
    let kept = wait_for(60, "the result kept on the agent's disk", || async {
        daemon.pending_results().into_iter().next()
    })
    .await;
    assert!(kept.ends_with(format!("{id}.json")), "{}", kept.display());
    assert_eq!(
        snapshot_names(&setup, "big").len(),
        1,
        "the snapshot is written"
    );
    let srv = stopped.start().await;
    let done = wait_job_status(&srv, &acme, &id, "succeeded", 60).await;
    assert_eq!(done["attempt"], 1);
    let entries = catalog(&srv, &acme, "big").await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0]["snapshot"], done["snapshot"]);
    assert!(daemon.pending_results().is_empty());
    // The same result again (a retry after a lost answer) records nothing more.
    let (_, usage) = srv.get("/api/v1/workspaces/acme/usage", &acme).await;
    let result: Value = json!({
        "succeeded": true, "snapshot": done["snapshot"], "logical_bytes": done["logical_bytes"],
        "stored_bytes": done["stored_bytes"], "started_at": done["started_at"], "finished_at": done["finished_at"],
    });
    let agent_client = daemon.client(&srv);
    let (s, ack) = srv
        .call(
            &agent_client,
            Method::POST,
            &format!("/agent/v1/jobs/{id}/result"),
            None,
            Some(result),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{ack}");
    assert_eq!(
        (ack["duplicate"].as_bool(), ack["backup_id"].as_str()),
        (Some(true), Some(id.as_str()))
    );
    assert_eq!(catalog(&srv, &acme, "big").await.len(), 1);
    let (_, usage_after) = srv.get("/api/v1/workspaces/acme/usage", &acme).await;
    assert_eq!(usage["used_bytes"], usage_after["used_bytes"]);

    // 2. A job lost with its agent (killed mid-backup) is failed after the timeout and retried;
    //    the retry runs once the agent is back.
    let (locker, lost) = blocked_backup(&srv, &acme, &pg).await;
    daemon.signal("KILL");
    daemon.wait_exit(10);
    let failed = wait_job_status(&srv, &acme, &lost, "failed", 30).await;
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("lost with its agent"),
        "{failed}"
    );
    let retry = wait_for(10, "the retry", || async {
        let (_, v) = srv.get("/api/v1/jobs?database=big", &acme).await;
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["retry_of"] == lost.as_str())
            .cloned()
    })
    .await;
    assert_eq!(retry["attempt"], 2);
    release(&pg);
    locker.join().unwrap();
    daemon.start(&setup);
    wait_job_status(&srv, &acme, retry["id"].as_str().unwrap(), "succeeded", 90).await;
    let entries = catalog(&srv, &acme, "big").await;
    let statuses: Vec<&str> = entries
        .iter()
        .map(|e| e["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        ["succeeded", "failed", "succeeded"],
        "{entries:?}"
    );

    // 3. SIGTERM during a backup: the agent aborts it after --stop-timeout, reports it failed,
    //    writes no snapshot, and exits 0.
    let before = snapshot_names(&setup, "big").len();
    // (The agent killed above could not release its lease: any later run may remove it as the
    // lease of a dead process, so only the new backup's own lease is counted.)
    let leases_before = leases(&setup);
    let (locker, term) = blocked_backup(&srv, &acme, &pg).await;
    let held: Vec<String> = leases(&setup)
        .into_iter()
        .filter(|l| !leases_before.contains(l))
        .collect();
    assert_eq!(held.len(), 1, "the running backup holds a lease");
    daemon.signal("TERM");
    assert!(daemon.wait_exit(30), "{}", daemon.log_text());
    let aborted = wait_job_status(&srv, &acme, &term, "failed", 10).await;
    assert!(
        aborted["error"].as_str().unwrap().contains("SIGTERM"),
        "{aborted}"
    );
    release(&pg);
    locker.join().unwrap();
    assert_eq!(snapshot_names(&setup, "big").len(), before);
    // The aborted backup released its lease.
    assert!(!leases(&setup).contains(&held[0]), "{held:?} left behind");
    srv.stop().await;
}

/// The lease objects in the set-up's repository.
fn leases(setup: &AgentSetup) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(Path::new(&setup.repo).join("locks"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// A hand-made agent: enrolled over HTTPS with a CSR, declaring one SQLite database.
async fn http_agent(srv: &TestServer, admin: &str, ws: &str, db: &str) -> reqwest::Client {
    let token = srv.enrollment_token(admin, ws).await;
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    let (s, v) = srv
        .post(
            "/agent/v1/enroll",
            "unused",
            json!({"token": token, "csr_pem": csr, "hostname": format!("{ws}-host"), "agent_version": "t",
                "databases": [{"id": db, "type": "sqlite"}]}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    client_with(
        &srv.dir,
        srv.port,
        Some((v["certificate_pem"].as_str().unwrap(), &key.serialize_pem())),
    )
}

async fn agent_call(
    srv: &TestServer,
    client: &reqwest::Client,
    path: &str,
    body: Value,
) -> (StatusCode, Value) {
    srv.call(client, Method::POST, path, None, Some(body)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_job_protocol_keeps_workspaces_apart_and_refuses_bad_requests() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = start(&tmp.path().join("cp")).await;
    let a = srv.workspace("ws-a", "dedicated", 1000).await;
    let b = srv.workspace("ws-b", "dedicated", 1 << 30).await;
    let agent_a = http_agent(&srv, &a, "ws-a", "a-db").await;
    let agent_b = http_agent(&srv, &b, "ws-b", "b-db").await;

    // Bad manual requests: nothing queued.
    for (body, status, path) in [
        (json!({}), StatusCode::UNPROCESSABLE_ENTITY, ""),
        (
            json!({"database_id": "a-db", "workspace_id": "ws-a"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "",
        ),
        (
            json!({"database_id": "a-db", "at": "2001-01-01T00:00:00Z"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "at",
        ),
        (
            json!({"database_ids": ["a-db", "a-db"]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "database_ids[1]",
        ),
        (json!({"database_id": "b-db"}), StatusCode::NOT_FOUND, ""),
        (
            json!({"database_id": "a-db", "priority": "urgent"}),
            StatusCode::BAD_REQUEST,
            "",
        ),
    ] {
        let (s, v) = srv.post("/api/v1/backups", &a, body.clone()).await;
        assert_eq!(s, status, "{body}: {v}");
        if !path.is_empty() {
            assert_eq!(v["error"]["details"][0]["path"], path, "{v}");
        }
    }
    // A database without an agent cannot be backed up.
    let (s, v) = srv
        .post("/api/v1/databases", &a, json!({"id": "orphan", "workspace_id": "ws-a", "type": "sqlite", "connection": {"path": "/x.db"}}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = srv
        .post(
            "/api/v1/backups",
            &a,
            json!({"database_ids": ["a-db", "orphan"]}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert!(
        v["error"]["details"][0]["problem"]
            .as_str()
            .unwrap()
            .contains("no agent"),
        "{v}"
    );
    let (_, v) = srv.get("/api/v1/jobs", &a).await;
    assert!(v["items"].as_array().unwrap().is_empty(), "{v}");

    // "All of a workspace" makes one job per database with an agent; a later start waits.
    let at = (chrono::Utc::now() + chrono::Duration::hours(2)).to_rfc3339();
    let (s, v) = srv
        .post(
            "/api/v1/backups",
            &a,
            json!({"workspace_id": "ws-a", "at": at}),
        )
        .await;
    assert_eq!(
        s,
        StatusCode::UNPROCESSABLE_ENTITY,
        "orphan has no agent: {v}"
    );
    let later = manual_backup(&srv, &a, json!({"database_id": "a-db", "at": at})).await;
    let (s, poll) = agent_call(
        &srv,
        &agent_a,
        "/agent/v1/jobs/poll",
        json!({"wait_secs": 0}),
    )
    .await;
    assert_eq!(
        (s, &poll["job"]),
        (StatusCode::OK, &Value::Null),
        "not due for two hours"
    );
    let (_, up) = srv.get("/api/v1/schedule/upcoming", &a).await;
    assert_eq!(up["items"][0]["job_id"], later[0]["id"], "{up}");
    assert_eq!(up["items"][0]["kind"], "queued");
    let metrics = srv
        .client
        .get(format!("{}/metrics", srv.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"state_rows{table="jobs_queued"} 1"#),
        "{metrics}"
    );

    // Now: the agent of the other workspace neither sees the job nor may report on it.
    let now_job = manual_backup(&srv, &a, json!({"database_id": "a-db"})).await;
    let id = now_job[0]["id"].as_str().unwrap();
    let (s, v) = agent_call(
        &srv,
        &agent_b,
        "/agent/v1/jobs/poll",
        json!({"wait_secs": 1}),
    )
    .await;
    assert_eq!((s, &v["job"]), (StatusCode::OK, &Value::Null));
    let t = chrono::Utc::now().to_rfc3339();
    let result = json!({"succeeded": true, "snapshot": "backup-20260101T000000Z-manual-0000", "logical_bytes": 10,
        "stored_bytes": 600, "started_at": t, "finished_at": t});
    let (s, _) = agent_call(
        &srv,
        &agent_b,
        &format!("/agent/v1/jobs/{id}/result"),
        result.clone(),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = agent_call(
        &srv,
        &agent_b,
        &format!("/agent/v1/jobs/{id}/progress"),
        json!({"phase": "reading", "bytes": 1}),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // Its own agent gets it, with the workspace key; only one at a time.
    let (s, v) = agent_call(
        &srv,
        &agent_a,
        "/agent/v1/jobs/poll",
        json!({"wait_secs": 5}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["job"]["id"], id);
    let key_a = v["job"]["workspace_key"].as_str().unwrap().to_string();
    assert_eq!(key_a.len(), 64);
    let (s, v) = agent_call(
        &srv,
        &agent_a,
        "/agent/v1/jobs/poll",
        json!({"wait_secs": 31}),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    let (s, v) = agent_call(
        &srv,
        &agent_a,
        &format!("/agent/v1/jobs/{id}/progress"),
        json!({"phase": "reading", "bytes": 5, "percent": 150.0}),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    let (s, v) = agent_call(
        &srv,
        &agent_a,
        &format!("/agent/v1/jobs/{id}/progress"),
        json!({"phase": "reading", "bytes": 5}),
    )
    .await;
    assert_eq!(
        (s, v["cancel"].as_bool()),
        (StatusCode::OK, Some(false)),
        "{v}"
    );
    let (_, j) = srv.get(&format!("/api/v1/jobs/{id}"), &a).await;
    assert_eq!(j["progress"]["bytes"], 5);
    // While it runs, the agent gets nothing more (one job per agent); queued meanwhile: a low
    // and then a critical one.
    let low = manual_backup(&srv, &a, json!({"database_id": "a-db", "priority": "low"})).await;
    let critical = manual_backup(
        &srv,
        &a,
        json!({"database_id": "a-db", "priority": "critical"}),
    )
    .await;
    let (_, v) = agent_call(
        &srv,
        &agent_a,
        "/agent/v1/jobs/poll",
        json!({"wait_secs": 1}),
    )
    .await;
    assert_eq!(v["job"], Value::Null, "the agent is at its limit: {v}");
    // Results: incoherent refused; the same one twice records one backup.
    let (s, v) = agent_call(
        &srv,
        &agent_a,
        &format!("/agent/v1/jobs/{id}/result"),
        json!({"succeeded": true, "started_at": t, "finished_at": t}),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    for duplicate in [false, true] {
        let (s, v) = agent_call(
            &srv,
            &agent_a,
            &format!("/agent/v1/jobs/{id}/result"),
            result.clone(),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["duplicate"].as_bool(), Some(duplicate), "{v}");
    }
    let entries = catalog(&srv, &a, "a-db").await;
    assert_eq!(entries.len(), 1);
    assert_eq!(
        (
            entries[0]["stored_bytes"].as_u64(),
            entries[0]["status"].as_str()
        ),
        (Some(600), Some("succeeded"))
    );
    // A different result for a finished job is a conflict, not a second backup.
    let mut other = result.clone();
    other["snapshot"] = json!("backup-20260101T000001Z-manual-0001");
    let (s, _) = agent_call(
        &srv,
        &agent_a,
        &format!("/agent/v1/jobs/{id}/result"),
        other,
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT);

    // The slot is free: the critical job goes first, though queued after the low one. The
    // quota (1000 bytes, 600 used) admitted both; after another 600 it refuses.
    let next_id = critical[0]["id"].as_str().unwrap();
    let (_, v) = agent_call(
        &srv,
        &agent_a,
        "/agent/v1/jobs/poll",
        json!({"wait_secs": 5}),
    )
    .await;
    assert_eq!(
        v["job"]["id"], next_id,
        "critical before low ({})",
        low[0]["id"]
    );
    assert_eq!(
        v["job"]["workspace_key"],
        key_a.as_str(),
        "one key per workspace"
    );
    let mut r2 = result.clone();
    r2["snapshot"] = json!("backup-20260101T000002Z-manual-0002");
    agent_call(
        &srv,
        &agent_a,
        &format!("/agent/v1/jobs/{next_id}/result"),
        r2,
    )
    .await;
    let (s, v) = srv
        .post("/api/v1/backups", &a, json!({"database_id": "a-db"}))
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert_eq!(v["error"]["code"], "quota_exceeded");
    // A scheduled run over the quota is recorded as a failed job and catalog entry saying why.
    let (s, policy) = srv
        .post(
            "/api/v1/policies",
            &a,
            json!({"db_identifier": "a-db", "db_type": "sqlite",
                "schedule": {"frequency": "every 5m", "preferred_window": "00:00-24:00", "priority": "normal"},
                "retention": {"period_days": 7, "min_snapshots": 1}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{policy}");
    let pid = policy["id"].as_str().unwrap().to_string();
    wait_for(10, "the policy's first slot", || async {
        schedule_state(&srv, &pid).next_due
    })
    .await;
    srv.set_next_due(&pid, chrono::Utc::now() - chrono::Duration::seconds(1))
        .await;
    let refused = wait_for(10, "the refused scheduled run", || async {
        let (_, v) = srv
            .get("/api/v1/jobs?database=a-db&status=failed", &a)
            .await;
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["policy_id"] == pid.as_str())
            .cloned()
    })
    .await;
    assert!(
        refused["error"].as_str().unwrap().contains("quota"),
        "{refused}"
    );
    let (_, entry) = srv
        .get(
            &format!("/api/v1/backups/{}", refused["id"].as_str().unwrap()),
            &a,
        )
        .await;
    assert_eq!(
        (entry["status"].as_str(), entry["kind"].as_str()),
        (Some("failed"), Some("automatic")),
        "{entry}"
    );

    // Workspace B's key is its own.
    manual_backup(&srv, &b, json!({"database_id": "b-db"})).await;
    let (_, v) = agent_call(
        &srv,
        &agent_b,
        "/agent/v1/jobs/poll",
        json!({"wait_secs": 5}),
    )
    .await;
    let key_b = v["job"]["workspace_key"].as_str().unwrap();
    assert_ne!(key_b, key_a);
    // People do not see the other workspace's jobs.
    let (s, _) = srv.get(&format!("/api/v1/jobs/{id}"), &b).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // A bearer token is no agent; a revoked agent is cut off.
    let (s, _) = srv
        .call(
            &srv.client,
            Method::POST,
            "/agent/v1/jobs/poll",
            Some(&a),
            Some(json!({})),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (_, agents) = srv.get("/api/v1/agents", &a).await;
    let agent_id = agents["items"][0]["id"].as_str().unwrap();
    let (s, _) = srv.delete(&format!("/api/v1/agents/{agent_id}"), &a).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, v) = agent_call(
        &srv,
        &agent_a,
        "/agent/v1/jobs/poll",
        json!({"wait_secs": 0}),
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    // Its queued jobs can never run: the scheduler fails them, saying why.
    let low_id = low[0]["id"].as_str().unwrap().to_string();
    let cancelled = wait_job_status(&srv, &a, &low_id, "failed", 10).await;
    assert!(
        cancelled["error"].as_str().unwrap().contains("revoked"),
        "{cancelled}"
    );
    srv.stop().await;
}

/// Regression: a database of workspace B could name an agent of workspace A in `agent_id`; its
/// backup was then handed to A's agent, whose poll got a 500 while the job stayed `running`
/// forever, holding every later backup of A behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_cannot_name_another_workspaces_agent_or_storage() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = start(&tmp.path().join("cp")).await;
    let a = srv.workspace("ws-a", "dedicated", 1 << 30).await;
    let b = srv.workspace("ws-b", "dedicated", 1 << 30).await;
    let agent_a = http_agent(&srv, &a, "ws-a", "a-db").await;
    let (_, list) = srv.get("/api/v1/agents?workspace=ws-a", &a).await;
    let a_id = list["items"][0]["id"].as_str().unwrap().to_string();
    let missing = "agt_0000000000000000000000000000";

    // Another workspace's agent is answered exactly like one that does not exist.
    let body = |id: &str, agent: &str| {
        json!({"id": id, "workspace_id": "ws-b", "type": "sqlite", "agent_id": agent,
            "connection": {"path": "/srv/b.db"}})
    };
    let (s1, e1) = srv.post("/api/v1/databases", &b, body("b-x", &a_id)).await;
    let (s2, e2) = srv
        .post("/api/v1/databases", &b, body("b-x", missing))
        .await;
    assert_eq!(
        (s1, s2),
        (StatusCode::NOT_FOUND, StatusCode::NOT_FOUND),
        "{e1} {e2}"
    );
    assert_eq!(e1["error"]["code"], e2["error"]["code"]);
    assert_eq!(
        e1["error"]["message"],
        format!("no agent '{a_id}'").as_str(),
        "{e1}"
    );
    // Nor can an update move a database of B onto A's agent.
    let (s, v) = srv
        .post(
            "/api/v1/databases",
            &b,
            json!({"id": "b-x", "workspace_id": "ws-b", "type": "sqlite", "connection": {"path": "/srv/b.db"}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, e) = srv
        .put("/api/v1/databases/b-x", &b, body("b-x", &a_id))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{e}");
    let (_, db) = srv.get("/api/v1/databases/b-x", &b).await;
    assert!(db["agent_id"].is_null(), "{db}");
    // A policy may name only a storage of its own workspace: A has a storage "main" (recorded
    // directly: no Proxmox cluster here), B has none.
    let storage: bulwark_control_plane::domain::storage::StorageBody = serde_json::from_value(
        json!({"id": "main", "cluster_id": "pve", "type": "nfs", "server": "10.0.0.10",
            "export": "/srv/backup/a", "nodes": ["pve1"], "capacity_bytes": 1u64 << 30}),
    )
    .unwrap();
    let mut storage = storage.into_storage("ws-a", chrono::Utc::now()).unwrap();
    // As the cluster reported it: policies name only active storages.
    storage.status = bulwark_control_plane::domain::storage::StorageState::Active;
    srv.store
        .write(test_actor(), move |tx| tx.create_storage(&storage))
        .await
        .unwrap();
    let mut policy = json!({"db_identifier": "a-db", "db_type": "sqlite",
        "schedule": {"frequency": "daily", "preferred_window": "00:00-24:00", "priority": "normal"},
        "retention": {"period_days": 7, "min_snapshots": 1}, "storage_id": "main"});
    let (s, e) = srv.post("/api/v1/policies", &a, policy.clone()).await;
    assert_eq!(s, StatusCode::CREATED, "A's own storage: {e}");
    policy["db_identifier"] = json!("b-x");
    let (s, e) = srv.post("/api/v1/policies", &b, policy.clone()).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{e}");
    assert_eq!(e["error"]["message"], "no backup storage 'main'", "{e}");
    policy["storage_id"] = Value::Null;
    let (s, e) = srv.post("/api/v1/policies", &b, policy.clone()).await;
    assert_eq!(s, StatusCode::CREATED, "{e}");
    // At most ten policies per database.
    for i in 1..10 {
        policy["schedule"]["frequency"] = json!(format!("every {}h", i + 1));
        let (s, e) = srv.post("/api/v1/policies", &b, policy.clone()).await;
        assert_eq!(s, StatusCode::CREATED, "{e}");
    }
    policy["schedule"]["frequency"] = json!("every 12h");
    let (s, e) = srv.post("/api/v1/policies", &b, policy.clone()).await;
    assert_eq!(s, StatusCode::CONFLICT, "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("already has 10 backup policies"),
        "{e}"
    );

    // A's agent still gets A's own jobs, and nothing of B.
    let jobs = manual_backup(&srv, &a, json!({"database_id": "a-db"})).await;
    let (s, poll) = agent_call(
        &srv,
        &agent_a,
        "/agent/v1/jobs/poll",
        json!({"wait_secs": 5}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{poll}");
    assert_eq!(poll["job"]["id"], jobs[0]["id"], "{poll}");
    assert_eq!(poll["job"]["workspace_id"], "ws-a");
    srv.stop().await;
}

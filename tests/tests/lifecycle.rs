//! Retention, deletion, gc and verification end to end (issue 12): the control plane
//! in-process, the real `bulwark-agent run` daemon enrolled over mutual TLS, a SQLite database.
//! The control plane's test clock moves a day between scheduled runs; after each run exactly the
//! entries the retention plan keeps remain, in the catalog and in the repository; gc frees bytes
//! and usage falls by exactly what it freed; a backup that fails removes nothing; a manual
//! backup's DELETE deletes its snapshot; a flipped chunk is found by a verify job (one asked for,
//! then the scheduled one of the whole storage), marks the
//! snapshot damaged, raises `verify_failed`, and retention does not count it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bulwark_control_plane::domain::job::{Job, Work};
use bulwark_control_plane::jobs::upkeep::UpkeepSettings;
use bulwark_control_plane::scheduler::JobSettings;
use bulwark_control_plane::store::jobs::Limits;
use bulwark_core::api::JobKind;
use bulwark_tests::control_plane::TestServer;
use bulwark_tests::daemon::{wait_for, Daemon};
use bulwark_tests::pg::{give_to_db_user, AgentSetup};
use reqwest::StatusCode;
use serde_json::{json, Value};

fn settings() -> JobSettings {
    JobSettings {
        tick: Duration::from_secs(1),
        lost_after: Duration::from_secs(30),
        limits: Limits {
            per_agent: 1,
            per_storage: 4,
        },
        max_attempts: 1,
        retry_delay: Duration::from_secs(1),
        // A gc after every forget; the scheduled verify only when the test moves 100 days.
        upkeep: UpkeepSettings {
            gc_interval_days: 365,
            gc_after_forgets: 1,
            verify_interval_hours: 100 * 24,
            verify_parts: 1,
        },
    }
}

fn all_jobs(srv: &TestServer) -> Vec<Job> {
    bulwark_control_plane::store::jobs::list(
        &srv.store.read().unwrap(),
        Some("acme"),
        |_| true,
        None,
        10_000,
    )
    .unwrap()
    .0
}

/// Waits until no job of the workspace is queued or running (a backup's forget and gc done).
async fn settle(srv: &TestServer) {
    // The scheduler's next pass may still make the gc a forget called for.
    for _ in 0..2 {
        wait_for(60, "the workspace's jobs to finish", || async {
            all_jobs(srv)
                .iter()
                .all(|j| !j.status.is_active())
                .then_some(())
        })
        .await;
        tokio::time::sleep(Duration::from_millis(2500)).await;
    }
    wait_for(60, "the workspace's jobs to finish", || async {
        all_jobs(srv)
            .iter()
            .all(|j| !j.status.is_active())
            .then_some(())
    })
    .await;
}

async fn job_status(srv: &TestServer, token: &str, id: &str, secs: u64) -> Value {
    wait_for(secs, &format!("job {id} to end"), || async {
        let (s, j) = srv.get(&format!("/api/v1/jobs/{id}"), token).await;
        assert_eq!(s, StatusCode::OK, "{j}");
        (j["status"] == "succeeded" || j["status"] == "failed").then_some(j)
    })
    .await
}

/// The database's catalog entries that succeeded, newest first.
async fn good_entries(srv: &TestServer, token: &str) -> Vec<Value> {
    let (s, v) = srv
        .get("/api/v1/backups?database=app&status=succeeded", token)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v["items"].as_array().unwrap().clone()
}

fn repository_snapshots(setup: &AgentSetup) -> BTreeSet<String> {
    let v = setup.agent_json(&["snapshots", "--database", "app"]);
    v["snapshots"]
        .as_array()
        .or_else(|| v.as_array())
        .unwrap_or_else(|| panic!("{v}"))
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect()
}

fn names(entries: &[Value]) -> BTreeSet<String> {
    entries
        .iter()
        .map(|e| e["snapshot"].as_str().unwrap().to_string())
        .collect()
}

/// Makes the policy's slot due by the control plane's clock and waits for its backup job.
async fn scheduled_run(srv: &TestServer, token: &str, policy: &str) -> Value {
    let before: BTreeSet<String> = all_jobs(srv).into_iter().map(|j| j.id).collect();
    srv.set_next_due(policy, srv.store.now() - chrono::Duration::seconds(1))
        .await;
    let id = wait_for(20, "the scheduled backup job", || async {
        all_jobs(srv)
            .into_iter()
            .find(|j| j.job_kind == JobKind::Backup && !before.contains(&j.id))
            .map(|j| j.id)
    })
    .await;
    // The run just planned the policy's next slot (every 5 minutes of real time): push it out
    // of reach, so a slot boundary passing while this run is slow adds no backup of its own.
    srv.set_next_due(policy, srv.store.now() + chrono::Duration::days(1000))
        .await;
    job_status(srv, token, &id, 60).await
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn used_bytes(srv: &TestServer) -> u64 {
    bulwark_control_plane::store::quota::used_bytes(&srv.store.read().unwrap(), "acme").unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletion_gc_and_verify_run_as_jobs() {
    let tmp = tempfile::tempdir().unwrap();
    let srv =
        TestServer::start_with_jobs(&tmp.path().join("cp"), Duration::from_secs(300), settings())
            .await;
    let acme = srv.workspace("acme", "dedicated", 50 << 30).await;
    let mut setup = AgentSetup::new();
    let db = setup.path("app.db");
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL);")
            .unwrap();
    }
    give_to_db_user(&db);
    setup.add_sqlite("app", &db);
    setup.init();
    let token = srv.enrollment_token(&acme, "acme").await;
    let mut daemon = Daemon::enroll(&srv, &setup, &token);
    daemon.start(&setup);

    let (s, policy) = srv
        .post(
            "/api/v1/policies",
            &acme,
            json!({"db_identifier": "app", "db_type": "sqlite",
                "schedule": {"frequency": "every 5m", "preferred_window": "00:00-24:00", "priority": "normal"},
                "retention": {"period_days": 1, "min_snapshots": 2}, "keep_daily": 3}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{policy}");
    let policy_id = policy["id"].as_str().unwrap().to_string();
    wait_for(10, "the scheduler to plan the policy", || async {
        bulwark_control_plane::store::jobs::schedule_state(&srv.store.read().unwrap(), &policy_id)
            .unwrap()
            .next_due
    })
    .await;

    // Runs a day apart: new rows each time, so each backup adds chunks and each forget leaves
    // some for gc to free.
    for run in 0..5usize {
        {
            let conn = rusqlite::Connection::open(&db).unwrap();
            conn.execute(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000) \
                 INSERT INTO items (name) SELECT printf('run-%d-%d-%s', ?1, i, hex(randomblob(40))) FROM n",
                [run as i64],
            )
            .unwrap();
        }
        let j = scheduled_run(&srv, &acme, &policy_id).await;
        assert_eq!(j["status"], "succeeded", "run {run}: {j}");
        settle(&srv).await;
        let entries = good_entries(&srv, &acme).await;
        let (s, plan) = srv.get("/api/v1/databases/app/retention", &acme).await;
        assert_eq!(s, StatusCode::OK, "{plan}");
        let kept: BTreeSet<String> = plan["entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["keep"] == true)
            .map(|e| e["snapshot"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            names(&entries),
            kept,
            "run {run}: the catalog holds what the plan keeps: {plan}"
        );
        assert_eq!(entries.len(), (run + 1).min(3), "run {run}: {plan}");
        assert_eq!(
            repository_snapshots(&setup),
            names(&entries),
            "run {run}: the repository holds what the catalog does"
        );
        srv.store.advance_clock_for_tests(chrono::Duration::days(1));
    }

    // gc ran after the forgets and freed bytes; usage is what backups added minus what gc freed.
    let jobs = all_jobs(&srv);
    let added: u64 = jobs
        .iter()
        .filter(|j| j.job_kind == JobKind::Backup && j.status.as_str() == "succeeded")
        .map(|j| j.stored_bytes)
        .sum();
    let freed: Vec<u64> = jobs
        .iter()
        .filter(|j| j.job_kind == JobKind::Gc && j.status.as_str() == "succeeded")
        .map(|j| match j.work {
            Work::Gc { freed_bytes, .. } => freed_bytes,
            _ => 0,
        })
        .collect();
    assert!(freed.len() >= 2, "a gc after each forget: {jobs:?}");
    assert!(freed.iter().sum::<u64>() > 0, "gc freed bytes: {freed:?}");
    assert_eq!(used_bytes(&srv), added - freed.iter().sum::<u64>());

    // A day later the usage reconcile compares that counter with what the last gc measured.
    let measured = jobs
        .iter()
        .filter(|j| j.job_kind == JobKind::Gc && j.status.as_str() == "succeeded")
        .max_by_key(|j| j.finished_at)
        .and_then(|j| match j.work {
            Work::Gc {
                repository_bytes, ..
            } => repository_bytes,
            _ => None,
        })
        .expect("the last gc measured the repository");
    srv.store.advance_clock_for_tests(chrono::Duration::days(1));
    let since = srv.store.now();
    let usage = wait_for(10, "the day's usage reconcile", || async {
        let (s, u) = srv.get("/api/v1/workspaces/acme/usage", &acme).await;
        assert_eq!(s, StatusCode::OK, "{u}");
        let checked: Option<chrono::DateTime<chrono::Utc>> =
            serde_json::from_value(u["reconcile"]["checked_at"].clone()).ok();
        checked.is_some_and(|t| t >= since).then_some(u)
    })
    .await;
    let r = &usage["reconcile"];
    assert_eq!(r["catalog_bytes"], usage["used_bytes"], "{usage}");
    assert_eq!(r["repository_bytes"], measured, "{usage}");
    assert_eq!(
        r["drift_bytes"],
        measured as i64 - usage["used_bytes"].as_i64().unwrap(),
        "{usage}"
    );

    // A backup that fails removes nothing, however much time passes.
    let kept_before = names(&good_entries(&srv, &acme).await);
    let moved = setup.path("app.db.away");
    std::fs::rename(&db, &moved).unwrap();
    let j = scheduled_run(&srv, &acme, &policy_id).await;
    assert_eq!(j["status"], "failed", "{j}");
    srv.store.advance_clock_for_tests(chrono::Duration::days(3));
    tokio::time::sleep(Duration::from_secs(3)).await;
    settle(&srv).await;
    assert_eq!(names(&good_entries(&srv, &acme).await), kept_before);
    assert_eq!(repository_snapshots(&setup), kept_before);
    std::fs::rename(&moved, &db).unwrap();

    // A manual backup: DELETE → 202 with the forget job → entry and snapshot gone.
    let (s, v) = srv
        .post("/api/v1/backups", &acme, json!({"database_id": "app"}))
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let manual_id = v["jobs"][0]["id"].as_str().unwrap().to_string();
    let j = job_status(&srv, &acme, &manual_id, 60).await;
    assert_eq!(j["status"], "succeeded", "{j}");
    let manual_snapshot = j["snapshot"].as_str().unwrap().to_string();
    assert!(repository_snapshots(&setup).contains(&manual_snapshot));
    let (s, forget) = srv
        .delete(&format!("/api/v1/backups/{manual_id}"), &acme)
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{forget}");
    assert_eq!(forget["job_kind"], "forget", "{forget}");
    let f = job_status(&srv, &acme, forget["id"].as_str().unwrap(), 60).await;
    assert_eq!(f["status"], "succeeded", "{f}");
    let (s, _) = srv
        .get(&format!("/api/v1/backups/{manual_id}"), &acme)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(!repository_snapshots(&setup).contains(&manual_snapshot));
    // An automatic one is refused, as before.
    let newest = good_entries(&srv, &acme).await[0].clone();
    let newest_id = newest["id"].as_str().unwrap().to_string();
    let (s, e) = srv
        .delete(&format!("/api/v1/backups/{newest_id}"), &acme)
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
    settle(&srv).await;

    // Flipped chunks: the verify job marks the snapshot damaged and raises verify_failed;
    // retention does not count it as a good copy.
    for chunk in files_under(&Path::new(&setup.repo).join("chunks")) {
        let mut bytes = std::fs::read(&chunk).unwrap();
        let at = bytes.len() / 2;
        bytes[at] ^= 0x04;
        std::fs::write(&chunk, bytes).unwrap();
    }
    let (s, v) = srv
        .post(
            &format!("/api/v1/backups/{newest_id}/verify"),
            &acme,
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    assert_eq!(v["job_kind"], "verify", "{v}");
    job_status(&srv, &acme, v["id"].as_str().unwrap(), 60).await;
    let (_, b) = srv
        .get(&format!("/api/v1/backups/{newest_id}"), &acme)
        .await;
    assert_eq!(b["verification"], "damaged", "{b}");
    assert!(b["verified_at"].is_string(), "{b}");
    let (_, alerts) = srv.get("/api/v1/alerts?workspace=acme", &acme).await;
    assert!(
        alerts["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["kind"] == "verify_failed" && a["state"] == "open"),
        "{alerts}"
    );
    let (_, plan) = srv.get("/api/v1/databases/app/retention", &acme).await;
    let decision = plan["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["backup_id"] == newest_id.as_str())
        .cloned()
        .unwrap_or_else(|| panic!("{plan}"));
    assert!(
        decision["reasons"][0].as_str().unwrap().contains("damaged"),
        "{decision}"
    );

    // The scheduled verify of the whole storage (part 1 of 1) finds the others damaged too
    // (the policy's next slot is put off, so no new backup rewrites the damaged chunks first).
    srv.set_next_due(&policy_id, srv.store.now() + chrono::Duration::days(1000))
        .await;
    let flipped: BTreeSet<String> = good_entries(&srv, &acme)
        .await
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    srv.store
        .advance_clock_for_tests(chrono::Duration::days(101));
    let scheduled = wait_for(30, "the scheduled verify", || async {
        all_jobs(&srv)
            .into_iter()
            .find(|j| j.job_kind == JobKind::Verify && j.database_id.is_empty())
    })
    .await;
    job_status(&srv, &acme, &scheduled.id, 60).await;
    let entries: Vec<Value> = good_entries(&srv, &acme)
        .await
        .into_iter()
        .filter(|e| flipped.contains(e["id"].as_str().unwrap()))
        .collect();
    assert_eq!(entries.len(), flipped.len(), "{entries:?}");
    assert!(entries.len() >= 2, "{entries:?}");
    for e in &entries {
        assert_eq!(e["verification"], "damaged", "{e}");
    }
    srv.stop().await;
}

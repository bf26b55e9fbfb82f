//! Restore drills through the control plane (issue 13), for real: a real PostgreSQL 15 (one
//! database dumped, one backed up physically with its WAL archived), a real SQLite file, one
//! real `bulwark-agent run` daemon and the control plane in-process, its clock moved by the test.
//!
//! What a user would notice: a drill restores into a scratch instance that is gone afterwards,
//! its row counts and SQL checks pass, its RTO and RPO are recorded against the policy's
//! targets; a point-in-time drill lands at "now minus a minute"; the weekly drill comes by
//! itself a week later; a drill of a damaged backup fails and raises `drill_failed`; and the
//! compliance report (read as CSV by Python's `csv` module) shows both.
//!
//! Needs root (the agent and the server run as the db user).

use std::path::Path;
use std::time::Duration;

use bulwark_control_plane::jobs::upkeep::UpkeepSettings;
use bulwark_control_plane::scheduler::JobSettings;
use bulwark_control_plane::store::jobs::Limits;
use bulwark_tests::control_plane::TestServer;
use bulwark_tests::daemon::{wait_for, Daemon};
use bulwark_tests::nfs::NfsServer;
use bulwark_tests::pg::{give_to_db_user, AgentSetup, PgCluster, PgOptions};
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
    token: String,
    log: std::path::PathBuf,
}

impl World {
    async fn policy(&self, body: Value) -> String {
        let (s, p) = self.srv.post("/api/v1/policies", &self.token, body).await;
        assert_eq!(s, StatusCode::CREATED, "{p}");
        let id = p["id"].as_str().unwrap().to_string();
        // Backups come when the test asks for them.
        self.srv
            .set_next_due(&id, self.srv.store.now() + chrono::Duration::days(1000))
            .await;
        id
    }

    async fn backup(&self, db: &str) {
        let (s, v) = self
            .srv
            .post("/api/v1/backups", &self.token, json!({"database_id": db}))
            .await;
        assert_eq!(s, StatusCode::ACCEPTED, "{v}");
        let id = v["jobs"][0]["id"].as_str().unwrap().to_string();
        wait_for(120, &format!("backup job {id}"), || async {
            let (_, j) = self
                .srv
                .get(&format!("/api/v1/jobs/{id}"), &self.token)
                .await;
            match j["status"].as_str() {
                Some("succeeded") => Some(()),
                Some("failed") => panic!("backup {id} failed: {j}\n{}", self.logs()),
                _ => None,
            }
        })
        .await
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Asks for a drill of `policy` now.
    async fn drill(&self, policy: &str) -> String {
        let (s, d) = self
            .srv
            .post(
                &format!("/api/v1/policies/{policy}/drills"),
                &self.token,
                json!({}),
            )
            .await;
        assert_eq!(s, StatusCode::ACCEPTED, "{d}");
        assert_eq!(d["status"], "queued", "{d}");
        d["id"].as_str().unwrap().to_string()
    }

    /// Waits until drill `id` has ended; returns it.
    async fn ended(&self, id: &str) -> Value {
        wait_for(180, &format!("drill {id} to end"), || async {
            let (s, d) = self
                .srv
                .get(&format!("/api/v1/drills/{id}"), &self.token)
                .await;
            assert_eq!(s, StatusCode::OK, "{d}");
            matches!(d["status"].as_str(), Some("passed" | "failed")).then_some(d)
        })
        .await
    }

    async fn passed(&self, id: &str) -> Value {
        let d = self.ended(id).await;
        assert_eq!(d["status"], "passed", "{d}\n{}", self.logs());
        assert_eq!(d["scratch_removed"], true, "{d}");
        d
    }
}

fn check<'a>(drill: &'a Value, name: &str) -> &'a Value {
    drill["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no {name} check: {drill}"))
}

/// Flips a byte in the middle of every chunk of every repository under `dir`.
fn damage_chunks(dir: &Path, inside: bool) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            n += damage_chunks(&p, inside || p.file_name().is_some_and(|f| f == "chunks"));
        } else if inside {
            let mut bytes = std::fs::read(&p).unwrap();
            let mid = bytes.len() / 2;
            bytes[mid] ^= 0x5a;
            std::fs::write(&p, bytes).unwrap();
            n += 1;
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drills_prove_policies_and_catch_damaged_backups() {
    if !bulwark_tests::pg::is_root() {
        eprintln!("skipped: needs root (the agent runs as the db user)");
        return;
    }
    let nfs = NfsServer::start();
    give_to_db_user(&nfs.export);
    let sim = PveSim::start_default();
    let tmp = tempfile::tempdir().unwrap();
    let srv =
        TestServer::start_with_jobs(&tmp.path().join("cp"), Duration::from_secs(300), settings())
            .await;
    let token = srv.workspace("acme", "dedicated", 50 << 30).await;
    // The storage the control plane provisioned: backups and archived WAL land there.
    srv.provision_nfs_storage(&sim, &nfs, "acme", &token).await;

    let mut setup = AgentSetup::new();
    let pg = PgCluster::start(PgOptions {
        archive_command: Some(setup.wal_push_command("shop")),
        ..Default::default()
    });
    pg.create_database("shop");
    pg.create_database("crm");
    setup.add_postgres("shop", "physical", &pg, "shop");
    setup.add_postgres("crm", "logical", &pg, "crm");
    let notes = setup.path("notes.db");
    {
        let conn = rusqlite::Connection::open(&notes).unwrap();
        conn.execute_batch(
            "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL);
             INSERT INTO notes (body) VALUES ('a'), ('b'), ('c'), ('d');",
        )
        .unwrap();
    }
    give_to_db_user(&notes);
    setup.add_sqlite("notes", &notes);
    let text = format!("{}{}", setup.config_text(), nfs.storage_entry(None));
    std::fs::write(&setup.config, text).unwrap();
    give_to_db_user(&setup.config);
    let mut daemon = Daemon::enroll(&srv, &setup, &srv.enrollment_token(&token, "acme").await);
    daemon.start(&setup);
    let w = World {
        srv,
        token,
        log: daemon.log.clone(),
    };
    let srv = &w.srv;
    wait_for(30, "the databases to be declared", || async {
        let (_, v) = srv.get("/api/v1/databases/notes", &w.token).await;
        v["agent_id"].as_str().map(str::to_string)
    })
    .await;

    // ---- policies with drills; refusals name the field ------------------------------------
    let (s, v) = srv
        .post(
            "/api/v1/policies/validate",
            &w.token,
            json!({"db_identifier": "crm", "db_type": "postgresql",
                "schedule": {"frequency": "daily", "preferred_window": "00:00-24:00", "priority": "normal"},
                "retention": {"period_days": 30, "min_snapshots": 1},
                "drill": {"point": "now-1h", "frequency": "every 5m"}, "rto_target_minutes": 0}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let paths: Vec<&str> = v["violations"]
        .as_array()
        .unwrap_or_else(|| panic!("{v}"))
        .iter()
        .filter_map(|x| x["path"].as_str())
        .collect();
    for p in ["drill.frequency", "drill.point", "rto_target_minutes"] {
        assert!(paths.contains(&p), "{p} refused: {v}");
    }
    let schedule =
        json!({"frequency": "daily", "preferred_window": "00:00-24:00", "priority": "normal"});
    let retention = json!({"period_days": 30, "min_snapshots": 1});
    let crm_policy = w
        .policy(json!({"db_identifier": "crm", "db_type": "postgresql", "backup_method": "logical", "storage_id": "main",
            "schedule": schedule, "retention": retention,
            "rto_target_minutes": 30, "rpo_target_minutes": 60,
            "drill": {"frequency": "weekly", "sql_checks": [
                {"name": "open orders", "query": "SELECT count(*) FROM orders WHERE NOT shipped", "expect": "2"}]}}))
        .await;
    let shop_policy = w
        .policy(json!({"db_identifier": "shop", "db_type": "postgresql", "backup_method": "physical", "storage_id": "main",
            "pitr": true, "schedule": schedule, "retention": retention, "rpo_target_minutes": 60,
            "drill": {"frequency": "monthly", "point": "now-1m", "sql_checks": [
                {"name": "orders", "query": "SELECT string_agg(id::text, ',' ORDER BY id) FROM orders", "expect": "1,2,3,4,5,6"}]}}))
        .await;
    let notes_policy = w
        .policy(
            json!({"db_identifier": "notes", "db_type": "sqlite", "storage_id": "main",
            "schedule": schedule, "retention": retention, "drill": {"frequency": "monthly"}}),
        )
        .await;
    let (s, v) = srv
        .post(
            &format!("/api/v1/policies/{crm_policy}/drills"),
            &w.token,
            json!({}),
        )
        .await;
    assert_eq!(
        s,
        StatusCode::UNPROCESSABLE_ENTITY,
        "no backup yet, nothing to drill: {v}"
    );

    // ---- shop: a base backup, rows after it; the point-in-time drill comes last -----------
    pg.psql(
        "shop",
        "CREATE TABLE orders (id int PRIMARY KEY); INSERT INTO orders VALUES (1), (2), (3)",
    );
    w.backup("shop").await;
    pg.psql("shop", "INSERT INTO orders VALUES (4), (5), (6)");
    let rows_4_to_6 = std::time::Instant::now();

    // ---- crm: a dump with row counts, checked in a scratch cluster -------------------------
    pg.psql(
        "crm",
        "CREATE TABLE orders (id int PRIMARY KEY, shipped bool NOT NULL);
         INSERT INTO orders SELECT i, i > 2 FROM generate_series(1, 40) i;
         CREATE TABLE customers (id int PRIMARY KEY); INSERT INTO customers SELECT generate_series(1, 7);",
    );
    w.backup("crm").await;
    let id = w.drill(&crm_policy).await;
    let (s, v) = srv
        .post(
            &format!("/api/v1/policies/{crm_policy}/drills"),
            &w.token,
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "one drill at a time: {v}");
    let d = w.passed(&id).await;
    assert_eq!(d["trigger"], "manual");
    assert_eq!(check(&d, "integrity")["passed"], true, "{d}");
    let counts = check(&d, "row_counts");
    assert_eq!(counts["passed"], true, "{d}");
    assert!(
        counts["detail"].as_str().unwrap().contains("47 rows"),
        "{d}"
    );
    assert_eq!(check(&d, "open orders")["passed"], true, "{d}");
    let rto = d["rto_secs"].as_f64().unwrap();
    assert!(rto > 0.0 && rto < 30.0 * 60.0, "{d}");
    assert!(d["rpo_secs"].as_f64().unwrap() < 3600.0, "{d}");
    assert_eq!(d["targets_met"], true, "{d}");
    assert!(
        !daemon.state.join("drills").join(&id).exists(),
        "the scratch instance is gone"
    );
    let (_, listed) = srv.get("/api/v1/drills?database=crm", &w.token).await;
    assert_eq!(listed["items"][0]["id"], id.as_str(), "{listed}");

    // ---- notes: the SQLite copy checked ----------------------------------------------------
    w.backup("notes").await;
    let d = w.passed(&w.drill(&notes_policy).await).await;
    assert_eq!(check(&d, "integrity")["passed"], true, "{d}");
    assert!(
        check(&d, "row_counts")["detail"]
            .as_str()
            .unwrap()
            .contains("4 rows"),
        "{d}"
    );

    // ---- shop: "now minus one minute", with rows on both sides ----------------------------
    let wait = Duration::from_secs(62).saturating_sub(rows_4_to_6.elapsed());
    tokio::time::sleep(wait).await;
    pg.psql("shop", "INSERT INTO orders VALUES (7), (8)");
    let last = pg.psql("postgres", "SELECT pg_walfile_name(pg_switch_wal())");
    wait_for(60, "the heartbeat to report the last WAL file", || async {
        let (_, v) = srv.get("/api/v1/databases/shop", &w.token).await;
        (v["recoverable"]["last_wal_file"] == last.as_str()).then_some(())
    })
    .await;
    let d = w.passed(&w.drill(&shop_policy).await).await;
    assert_eq!(d["physical"], true, "{d}");
    assert_eq!(check(&d, "orders")["passed"], true, "{d}");
    assert!(d["target_time"].is_string(), "{d}");
    let rpo = d["rpo_secs"].as_f64().unwrap();
    assert!((0.0..60.0).contains(&rpo), "{d}");
    assert!(d["reached"]["stop_reason"].is_string(), "{d}");

    // ---- a week later the weekly drill comes by itself -------------------------------------
    srv.store
        .advance_clock_for_tests(chrono::Duration::days(7) + chrono::Duration::minutes(1));
    let scheduled = wait_for(60, "the weekly drill of crm", || async {
        let (_, v) = srv
            .get(
                &format!("/api/v1/drills?policy={crm_policy}&database=crm"),
                &w.token,
            )
            .await;
        v["items"]
            .as_array()?
            .iter()
            .find(|d| d["trigger"] == "scheduled")
            .map(|d| d["id"].as_str().unwrap().to_string())
    })
    .await;
    w.passed(&scheduled).await;
    let (_, v) = srv.get("/api/v1/drills?workspace=acme", &w.token).await;
    let triggers: Vec<&str> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["trigger"].as_str().unwrap())
        .collect();
    assert_eq!(
        triggers.iter().filter(|t| **t == "scheduled").count(),
        1,
        "only crm's weekly drill was due: {v}"
    );

    // ---- a damaged backup fails its drill and raises drill_failed --------------------------
    let damaged = damage_chunks(&nfs.export, false);
    assert!(damaged > 0);
    let d = w.ended(&w.drill(&notes_policy).await).await;
    assert_eq!(d["status"], "failed", "{d}");
    assert_eq!(d["targets_met"], false, "{d}");
    assert!(d["error"].as_str().unwrap().contains("drill"), "{d}");
    let (_, alerts) = srv
        .get("/api/v1/alerts?workspace=acme&state=open", &w.token)
        .await;
    let alert = alerts["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["kind"] == "drill_failed")
        .unwrap_or_else(|| panic!("a drill_failed alert: {alerts}"));
    assert!(
        alert["message"].as_str().unwrap().contains("notes"),
        "{alert}"
    );

    // ---- the compliance report, as a spreadsheet would read it ------------------------------
    let (s, v) = srv
        .get(
            "/api/v1/reports/compliance?workspace=acme&format=csv",
            &w.token,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let rows = python_csv(v.as_str().expect("CSV text"));
    let row = |db: &str| {
        rows.iter()
            .find(|r| r["database_id"] == db)
            .unwrap_or_else(|| panic!("a row for {db}: {rows:?}"))
            .clone()
    };
    let notes_row = row("notes");
    assert_eq!(notes_row["compliant"], "false", "{notes_row}");
    assert_eq!(notes_row["last_drill_status"], "failed", "{notes_row}");
    assert!(
        notes_row["reasons"]
            .as_str()
            .unwrap()
            .contains("the last drill"),
        "{notes_row}"
    );
    assert!(
        notes_row["open_alerts"]
            .as_str()
            .unwrap()
            .contains("drill_failed"),
        "{notes_row}"
    );
    let crm_row = row("crm");
    assert_eq!(crm_row["last_drill_status"], "passed", "{crm_row}");
    assert_eq!(crm_row["last_drill_targets_met"], "true", "{crm_row}");
    assert_eq!(crm_row["rto_target_minutes"], "30", "{crm_row}");
    assert!(
        crm_row["last_drill_rto_secs"]
            .as_str()
            .unwrap()
            .parse::<f64>()
            .unwrap()
            > 0.0
    );
    assert_eq!(crm_row["rpo_target_minutes"], "60", "{crm_row}");
    assert_eq!(crm_row["rpo_target_from"], "policy", "{crm_row}");
    // The clock moved a week past the last backup: the RPO is missed, and said so.
    assert_eq!(crm_row["compliant"], "false", "{crm_row}");
    let reasons = crm_row["reasons"].as_str().unwrap();
    assert!(reasons.contains("RPO target is 60 min"), "{crm_row}");
    assert!(
        !reasons.contains("drill"),
        "crm's drill proved it: {crm_row}"
    );
    assert_eq!(
        row("shop")["point_in_time_from"]
            .as_str()
            .map(str::is_empty),
        Some(false)
    );
    let (_, json) = srv
        .get("/api/v1/reports/compliance?workspace=acme", &w.token)
        .await;
    assert_eq!(
        json["databases"].as_array().unwrap().len(),
        rows.len(),
        "{json}"
    );
    assert_eq!(json["not_compliant"], 3, "{json}");
    drop(daemon);
}

/// The rows of a CSV file as Python's `csv.DictReader` reads them.
fn python_csv(text: &str) -> Vec<Value> {
    use std::io::Write;
    let mut child = std::process::Command::new("python3")
        .args([
            "-c",
            "import csv, json, sys; print(json.dumps(list(csv.DictReader(sys.stdin))))",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "python's csv module read it");
    serde_json::from_slice(&out.stdout).unwrap()
}

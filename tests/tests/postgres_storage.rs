//! PostgreSQL physical backups through the control plane's jobs onto the storage it
//! provisioned (issue 12), for real: a real PostgreSQL 15 whose archive_command is
//! `bulwark-agent wal-push`, a real `bulwark-agent run` daemon, the control plane in-process,
//! the Proxmox simulator's NFS storage pointing at a real NFS-Ganesha export reached through the
//! agent's own NFS client.
//!
//! What a user would notice: the base backups and their WAL land in the storage's repository
//! (not in whatever `[repository]` agent.toml names), the database shows how far a restore
//! reaches, gc expires the WAL older than the oldest kept base, and a point-in-time restore
//! inside the window works with the workspace's recovery key alone.
//!
//! Needs root (the agent and the server run as the db user), Ganesha and rpcbind
//! (scripts/setup.sh).

use std::path::Path;
use std::time::Duration;

use bulwark_control_plane::jobs::upkeep::UpkeepSettings;
use bulwark_control_plane::scheduler::JobSettings;
use bulwark_control_plane::store::jobs::Limits;
use bulwark_tests::control_plane::TestServer;
use bulwark_tests::daemon::{wait_for, Daemon};
use bulwark_tests::free_port;
use bulwark_tests::nfs::NfsServer;
use bulwark_tests::pg::{
    give_to_db_user, write_private_file, AgentSetup, PgCluster, PgOptions, RunningServer,
};
use bulwark_tests::pve_sim::PveSim;
use reqwest::StatusCode;
use serde_json::{json, Value};

fn settings() -> JobSettings {
    JobSettings {
        tick: Duration::from_secs(1),
        lost_after: Duration::from_secs(60),
        limits: Limits {
            per_agent: 1,
            per_storage: 4,
        },
        max_attempts: 1,
        retry_delay: Duration::from_secs(1),
        // A gc after every forget; no scheduled verify during the test.
        upkeep: UpkeepSettings {
            gc_interval_days: 365,
            gc_after_forgets: 1,
            verify_interval_hours: 100 * 24,
            verify_parts: 1,
        },
    }
}

async fn job_done(srv: &TestServer, token: &str, id: &str, daemon: &Daemon) -> Value {
    wait_for(120, &format!("job {id} to end"), || async {
        let (s, j) = srv.get(&format!("/api/v1/jobs/{id}"), token).await;
        assert_eq!(s, StatusCode::OK, "{j}");
        match j["status"].as_str() {
            Some("succeeded") => Some(j),
            Some("failed") => panic!("job {id} failed: {j}\n{}", daemon.log_text()),
            _ => None,
        }
    })
    .await
}

async fn manual_backup(srv: &TestServer, token: &str, daemon: &Daemon) -> Value {
    let (s, v) = srv
        .post("/api/v1/backups", token, json!({"database_id": "shop"}))
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    job_done(srv, token, v["jobs"][0]["id"].as_str().unwrap(), daemon).await
}

/// Names of the archived WAL files of `shop` on timeline 1 in the repository at `repo`.
fn archived(repo: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(repo.join("wal/shop/00000001"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn physical_backups_through_jobs_keep_their_wal_on_the_storage_and_gc_expires_it() {
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
    let acme = srv.workspace("acme", "dedicated", 50 << 30).await;
    let pve_storage = srv.provision_nfs_storage(&sim, &nfs, "acme", &acme).await;
    let repo = nfs.export.join("bulwark").join(&pve_storage);

    // The server archives through wal-push; agent.toml's own [repository] is never made, so
    // WAL that went there instead of the storage would fail the archiver.
    let mut setup = AgentSetup::new();
    let pg = PgCluster::start(PgOptions {
        archive_command: Some(setup.wal_push_command("shop")),
        ..Default::default()
    });
    pg.create_database("shop");
    setup.add_postgres("shop", "physical", &pg, "shop");
    let text = format!("{}{}", setup.config_text(), nfs.storage_entry(None));
    std::fs::write(&setup.config, text).unwrap();
    give_to_db_user(&setup.config);
    let token = srv.enrollment_token(&acme, "acme").await;
    let mut daemon = Daemon::enroll(&srv, &setup, &token);
    daemon.start(&setup);
    wait_for(30, "shop to be declared by its agent", || async {
        let (s, v) = srv.get("/api/v1/databases/shop", &acme).await;
        (s == StatusCode::OK && v["agent_id"].is_string()).then_some(())
    })
    .await;
    // A policy on the storage (so its gc runs), whose own schedule stays out of the way.
    let (s, policy) = srv
        .post(
            "/api/v1/policies",
            &acme,
            json!({"db_identifier": "shop", "db_type": "postgresql", "storage_id": "main",
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

    pg.psql(
        "shop",
        "CREATE TABLE orders (id int PRIMARY KEY, created timestamptz DEFAULT clock_timestamp())",
    );
    let insert = |id: u32| pg.psql("shop", &format!("INSERT INTO orders (id) VALUES ({id})"));
    let first = manual_backup(&srv, &acme, &daemon).await;
    let first_segments = archived(&repo);
    assert!(
        !first_segments.is_empty(),
        "the first base backup's WAL is on the storage: {first}"
    );
    for id in 1..=3 {
        insert(id);
    }
    pg.psql("postgres", "SELECT pg_switch_wal()");
    let second = manual_backup(&srv, &acme, &daemon).await;
    let (_, b) = srv
        .get(
            &format!("/api/v1/backups/{}", second["id"].as_str().unwrap()),
            &acme,
        )
        .await;
    assert_eq!(b["method"], "physical", "{b}");
    for id in 4..=6 {
        insert(id);
    }
    std::thread::sleep(Duration::from_millis(1100));
    let target_time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    std::thread::sleep(Duration::from_millis(1100));
    for id in 7..=8 {
        insert(id);
    }
    let last = pg.psql("postgres", "SELECT pg_walfile_name(pg_switch_wal())");
    wait_for(
        60,
        &format!("{last} to be archived on the storage"),
        || async { archived(&repo).contains(&last).then_some(()) },
    )
    .await;

    // The database shows its window: every second from the older base to the last WAL file.
    let db = wait_for(30, "the heartbeat to report the last WAL file", || async {
        let (_, v) = srv.get("/api/v1/databases/shop", &acme).await;
        (v["recoverable"]["last_wal_file"] == last.as_str()).then_some(v)
    })
    .await;
    let w = &db["recoverable"];
    assert_eq!(w["point_in_time"], true, "{db}");
    assert_eq!(w["good_backups"], 2, "{db}");
    assert_eq!(w["point_in_time_from"], first["finished_at"], "{db}");
    assert!(
        w["latest"].as_str().unwrap() > second["finished_at"].as_str().unwrap(),
        "{db}"
    );

    // The older base goes by hand; the gc after it expires the WAL only it needed.
    let (s, forget) = srv
        .delete(
            &format!("/api/v1/backups/{}", first["id"].as_str().unwrap()),
            &acme,
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{forget}");
    job_done(&srv, &acme, forget["id"].as_str().unwrap(), &daemon).await;
    let gc = wait_for(60, "the gc after the forget", || async {
        let (_, jobs) = srv.get("/api/v1/jobs?workspace=acme", &acme).await;
        jobs["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["job_kind"] == "gc")
            .cloned()
    })
    .await;
    let gc = job_done(&srv, &acme, gc["id"].as_str().unwrap(), &daemon).await;
    let kept = archived(&repo);
    let expired: Vec<&String> = first_segments
        .iter()
        .filter(|n| n.len() == 24 && !kept.contains(n))
        .collect();
    assert!(
        !expired.is_empty(),
        "WAL before the remaining base is gone: before {first_segments:?}, after {kept:?}, gc {gc}"
    );
    assert!(kept.contains(&last), "{kept:?}");
    let (_, db) = srv.get("/api/v1/databases/shop", &acme).await;
    assert_eq!(
        db["recoverable"]["point_in_time_from"], second["finished_at"],
        "the window starts at the remaining base: {db}"
    );

    // A point-in-time restore inside the window, with the recovery key and the storage alone.
    let (s, shown) = srv.get("/api/v1/workspaces/acme/recovery-key", &acme).await;
    assert_eq!(s, StatusCode::OK, "{shown}");
    let key_file = setup.path("recovery-key");
    write_private_file(
        &key_file,
        &format!("{}\n", shown["recovery_key"].as_str().unwrap()),
    );
    drop(daemon);
    srv.stop().await;
    let data_dir = setup.path("restored");
    let port = free_port();
    let server = RunningServer::attach(&data_dir, port);
    let (dir, port_arg, repo_arg, key_arg) = (
        data_dir.to_string_lossy().into_owned(),
        port.to_string(),
        repo.to_string_lossy().into_owned(),
        key_file.to_string_lossy().into_owned(),
    );
    let report = setup.agent_json(&[
        "restore",
        "latest",
        "--database",
        "shop",
        "--data-dir",
        &dir,
        "--port",
        &port_arg,
        "--start",
        "--target-time",
        &target_time,
        "--repo",
        &repo_arg,
        "--password-file",
        &key_arg,
    ]);
    assert_eq!(report["snapshot"], second["snapshot"], "{report}");
    assert_eq!(
        server.psql(
            "shop",
            "SELECT string_agg(id::text, ',' ORDER BY id) FROM orders"
        ),
        "1,2,3,4,5,6",
        "recovery to {target_time}: {report}"
    );
}

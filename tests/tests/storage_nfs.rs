//! Backups land on the storage the control plane provisioned (issue 12), for real: the control
//! plane in-process on HTTPS, the Proxmox simulator on which it provisions an NFS storage that
//! points at a real NFS-Ganesha (loopback, free ports, a temporary export), and two real
//! `bulwark-agent run` daemons of one workspace (two state directories, two SQLite databases
//! that share most of their bytes) that back up at the same time into the one repository the
//! storage is. Then the control plane is stopped and its data directory deleted, and both
//! databases are restored from the export with the workspace's recovery key alone.
//!
//! A second test checks over the job protocol, with a hand-made agent, which storage a job
//! goes to, what it carries, and that a storage not active at hand-out fails the job.
//!
//! Needs root (the agents run as the db user), Ganesha and rpcbind (scripts/setup.sh).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bulwark_control_plane::scheduler::JobSettings;
use bulwark_control_plane::store::jobs::Limits;
use bulwark_tests::control_plane::TestServer;
use bulwark_tests::daemon::{wait_for, Daemon};
use bulwark_tests::nfs::NfsServer;
use bulwark_tests::pg::{give_to_db_user, write_private_file, AgentSetup};
use bulwark_tests::pve_sim::PveSim;
use reqwest::StatusCode;
use serde_json::{json, Value};

/// Rows of 32 KiB random data in the shared part of both databases (32 MiB: large against
/// the chunks, 1 MiB on average and up to 4 MiB, that differ where the files do).
const SHARED_ROWS: usize = 1024;
const ROW: usize = 32 * 1024;

fn fast_jobs() -> JobSettings {
    JobSettings {
        tick: Duration::from_secs(1),
        lost_after: Duration::from_secs(30),
        limits: Limits {
            per_agent: 1,
            per_storage: 4,
        },
        max_attempts: 1,
        retry_delay: Duration::from_secs(1),
        ..JobSettings::default()
    }
}

/// A SQLite database of `SHARED_ROWS` rows of seeded random data, plus `own` rows of its own.
fn make_db(path: &Path, own: usize, own_seed: u64) {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch(
        "PRAGMA page_size = 4096; CREATE TABLE blobs (id INTEGER PRIMARY KEY, data BLOB NOT NULL);",
    )
    .unwrap();
    let insert = |id: usize, seed: u64| {
        conn.execute(
            "INSERT INTO blobs (id, data) VALUES (?1, ?2)",
            rusqlite::params![id as i64, bulwark_tests::random_bytes(ROW, seed)],
        )
        .unwrap();
    };
    conn.execute_batch("BEGIN").unwrap();
    for i in 0..SHARED_ROWS {
        insert(i, 1000 + i as u64);
    }
    conn.execute_batch("COMMIT; BEGIN").unwrap();
    for i in 0..own {
        insert(SHARED_ROWS + i, own_seed + i as u64);
    }
    conn.execute_batch("COMMIT").unwrap();
    conn.close().unwrap();
    give_to_db_user(path);
}

/// The agent config of `setup` with a `[[storage]]` entry giving the built-in NFS client the
/// server's (free) ports; written after every `add_*`.
fn add_storage_entry(setup: &AgentSetup, nfs: &NfsServer) {
    let text = format!("{}{}", setup.config_text(), nfs.storage_entry(None));
    std::fs::write(&setup.config, text).unwrap();
    give_to_db_user(&setup.config);
}

async fn job(srv: &TestServer, token: &str, id: &str) -> Value {
    let (s, v) = srv.get(&format!("/api/v1/jobs/{id}"), token).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v
}

async fn wait_succeeded(srv: &TestServer, token: &str, id: &str, daemons: &[&Daemon]) -> Value {
    wait_for(180, &format!("job {id} to succeed"), || async {
        let j = job(srv, token, id).await;
        match j["status"].as_str() {
            Some("succeeded") => Some(j),
            Some("failed") => panic!(
                "job {id} failed: {j}\n{}",
                daemons
                    .iter()
                    .map(|d| d.log_text())
                    .collect::<Vec<_>>()
                    .join("\n---\n")
            ),
            _ => None,
        }
    })
    .await
}

fn files_under(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        let meta = e.metadata().unwrap();
        if meta.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push((p, meta.len()));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_share_one_repository_on_the_provisioned_nfs_storage_and_the_recovery_key_restores_it(
) {
    if !bulwark_tests::pg::is_root() {
        eprintln!("skipped: needs root (the agents run as the db user)");
        return;
    }
    let nfs = NfsServer::start();
    // The agents run as the db user, and the server checks their AUTH_SYS credentials: the
    // export is theirs to write, as a storage's export is the agents' on a cluster.
    give_to_db_user(&nfs.export);
    let sim = PveSim::start_default();
    let tmp = tempfile::tempdir().unwrap();
    let cp_dir = tmp.path().join("cp");
    let srv = TestServer::start_with_jobs(&cp_dir, Duration::from_secs(300), fast_jobs()).await;
    let acme = srv.workspace("acme", "dedicated", 50 << 30).await;

    // The cluster and the NFS storage on it, pointing at the real server's export.
    let pve_storage = srv.provision_nfs_storage(&sim, &nfs, "acme", &acme).await;
    let repo_dir = nfs.export.join("bulwark").join(&pve_storage);

    // Two agents, two databases sharing 32 MiB of rows (the second has 16 rows more).
    let mut setups = Vec::new();
    let mut daemons = Vec::new();
    let mut originals = Vec::new();
    for (i, (db, own)) in [("app1", 0usize), ("app2", 16)].into_iter().enumerate() {
        let mut setup = AgentSetup::new();
        let file = setup.path(&format!("{db}.db"));
        make_db(&file, own, 5000 + 100 * i as u64);
        setup.add_sqlite(db, &file);
        add_storage_entry(&setup, &nfs);
        let token = srv.enrollment_token(&acme, "acme").await;
        let mut daemon = Daemon::enroll(&srv, &setup, &token);
        daemon.start(&setup);
        originals.push((db, file.clone(), std::fs::read(&file).unwrap()));
        setups.push(setup);
        daemons.push(daemon);
    }
    for (db, _, _) in &originals {
        wait_for(30, &format!("{db} to be declared by its agent"), || async {
            let (s, v) = srv.get(&format!("/api/v1/databases/{db}"), &acme).await;
            (s == StatusCode::OK && v["agent_id"].is_string()).then_some(())
        })
        .await;
    }

    // Both back up at the same time into the one repository (one manual request, a job each).
    let (s, v) = srv
        .post("/api/v1/backups", &acme, json!({"workspace_id": "acme"}))
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let jobs = v["jobs"].as_array().unwrap().clone();
    assert_eq!(jobs.len(), 2, "{v}");
    for j in &jobs {
        assert_eq!(
            j["storage_id"], "main",
            "the job names the workspace's storage: {j}"
        );
    }
    let refs: Vec<&Daemon> = daemons.iter().collect();
    let mut done = Vec::new();
    for j in &jobs {
        done.push(wait_succeeded(&srv, &acme, j["id"].as_str().unwrap(), &refs).await);
    }

    // One repository: one config, one snapshot of each database, on the export.
    let files = files_under(&repo_dir);
    let names: Vec<String> = files
        .iter()
        .map(|(p, _)| {
            p.strip_prefix(&repo_dir)
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(
        names.iter().filter(|n| *n == "config").count(),
        1,
        "{names:?}"
    );
    for (db, _, _) in &originals {
        let snaps = names
            .iter()
            .filter(|n| n.starts_with(&format!("snapshots/{db}/")))
            .count();
        assert_eq!(snaps, 1, "{db}: {names:?}");
    }
    assert!(
        names.iter().filter(|n| n.starts_with("keys/")).count() >= 2,
        "a workspace slot and a recovery slot: {names:?}"
    );
    // The shared 32 MiB are stored once: all chunks together are far less than both files.
    let sizes: Vec<u64> = originals.iter().map(|(_, _, b)| b.len() as u64).collect();
    let chunk_bytes: u64 = files
        .iter()
        .zip(&names)
        .filter(|(_, n)| n.starts_with("chunks/"))
        .map(|((_, len), _)| *len)
        .sum();
    eprintln!("chunks on the export: {chunk_bytes} bytes for databases of {sizes:?}");
    assert!(
        chunk_bytes < sizes[0] + sizes[1] / 3,
        "chunks hold {chunk_bytes} bytes for databases of {sizes:?}"
    );
    // The storage knows its repository exists now (its jobs no longer carry the recovery key).
    let (_, st) = srv
        .get("/api/v1/workspaces/acme/backup-storages/main", &acme)
        .await;
    assert_eq!(st["repository_exists"], true, "{st}");

    // The second database again, after a few more rows: only what changed is added.
    {
        let conn = rusqlite::Connection::open(&originals[1].1).unwrap();
        conn.execute(
            "INSERT INTO blobs (id, data) VALUES (?1, ?2)",
            rusqlite::params![100_000i64, bulwark_tests::random_bytes(ROW, 99)],
        )
        .unwrap();
    }
    originals[1].2 = std::fs::read(&originals[1].1).unwrap();
    let (s, v) = srv
        .post("/api/v1/backups", &acme, json!({"database_id": "app2"}))
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let again = wait_succeeded(&srv, &acme, v["jobs"][0]["id"].as_str().unwrap(), &refs).await;
    let stored = again["stored_bytes"].as_u64().unwrap();
    assert!(
        stored < sizes[1] / 4,
        "the second backup of app2 stored {stored} bytes of {}: {again}",
        sizes[1]
    );

    // The recovery key, once.
    let (s, shown) = srv.get("/api/v1/workspaces/acme/recovery-key", &acme).await;
    assert_eq!(s, StatusCode::OK, "{shown}");
    let key = shown["recovery_key"].as_str().unwrap().to_string();
    let (s, gone) = srv.get("/api/v1/workspaces/acme/recovery-key", &acme).await;
    assert_eq!(s, StatusCode::GONE, "{gone}");

    // The control plane is gone, and with it the workspace key.
    drop(daemons);
    srv.stop().await;
    std::fs::remove_dir_all(&cp_dir).unwrap();

    // Each database restores from the export with the recovery key alone, byte for byte.
    let url = nfs.url_v3(&format!("bulwark/{pve_storage}"));
    for ((db, _, bytes), setup) in originals.iter().zip(&setups) {
        let key_file = setup.path("recovery-key");
        write_private_file(&key_file, &format!("{key}\n"));
        let to = setup.path(&format!("{db}-restored.db"));
        let out = setup.agent_json(&[
            "restore",
            "latest",
            "--database",
            db,
            "--repo",
            &url,
            "--password-file",
            &key_file.to_string_lossy(),
            "--to",
            &to.to_string_lossy(),
        ]);
        assert_eq!(out["integrity_check"], "ok", "{out}");
        let restored = std::fs::read(&to).unwrap();
        // Byte for byte, but for the header's file change counter (bytes 24..28) and its copy
        // "version valid for" (92..96), which SQLite's online backup API, which took the
        // snapshot, bumps when it commits the copy.
        let counters = |i: usize| (24..28).contains(&i) || (92..96).contains(&i);
        assert_eq!(restored.len(), bytes.len(), "{db}: the restored size");
        let differ: Vec<usize> = (0..bytes.len())
            .filter(|&i| restored[i] != bytes[i] && !counters(i))
            .collect();
        assert!(
            differ.is_empty(),
            "{db}: the restored file differs from the original at {} byte(s), first {:?}",
            differ.len(),
            &differ[..differ.len().min(10)]
        );
    }
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
    bulwark_tests::control_plane::client_with(
        &srv.dir,
        srv.port,
        Some((v["certificate_pem"].as_str().unwrap(), &key.serialize_pem())),
    )
}

async fn poll(srv: &TestServer, agent: &reqwest::Client) -> Value {
    let (s, v) = srv
        .call(
            agent,
            reqwest::Method::POST,
            "/agent/v1/jobs/poll",
            None,
            Some(json!({"wait_secs": 1})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v["job"].clone()
}

async fn set_status(srv: &TestServer, ws: &str, id: &str, status: &str) {
    use bulwark_control_plane::domain::storage::StorageState;
    let status = match status {
        "active" => StorageState::Active,
        _ => StorageState::Error,
    };
    let (ws, id) = (ws.to_string(), id.to_string());
    srv.store
        .write(bulwark_control_plane::jobs::system_actor(), move |tx| {
            let mut s = tx.storage(&ws, &id)?.expect("storage");
            s.status = status;
            tx.update_storage(&s, "backup_storage.status").map(|_| ())
        })
        .await
        .unwrap();
}

/// Which storage a job goes to and what it carries, over the job protocol with a hand-made
/// agent (no NFS needed): several storages → the request must name one; the job carries its
/// target and, until the storage's repository exists, the recovery key; a storage that is not
/// active when the job would be handed out fails the job instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_carry_their_storage_and_the_recovery_key_until_the_repository_exists() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = TestServer::start_with_jobs(
        &tmp.path().join("cp"),
        Duration::from_secs(300),
        fast_jobs(),
    )
    .await;
    let acme = srv.workspace("acme", "dedicated", 50 << 30).await;
    let agent = http_agent(&srv, &acme, "acme", "app").await;
    for id in ["main", "spare"] {
        let body: bulwark_control_plane::domain::storage::StorageBody =
            serde_json::from_value(json!({"id": id, "cluster_id": "pve", "type": "nfs",
                "server": "10.0.0.10", "export": format!("/srv/{id}"), "nodes": ["pve1"],
                "capacity_bytes": 1u64 << 30}))
            .unwrap();
        let storage = body.into_storage("acme", chrono::Utc::now()).unwrap();
        srv.store
            .write(bulwark_control_plane::jobs::system_actor(), move |tx| {
                tx.create_storage(&storage)
            })
            .await
            .unwrap();
        set_status(&srv, "acme", id, "active").await;
    }

    // Two storages and none named: 422 naming both; a storage that is not active: 422.
    let (s, e) = srv
        .post("/api/v1/backups", &acme, json!({"database_id": "app"}))
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    let text = e.to_string();
    assert!(text.contains("main") && text.contains("spare"), "{e}");
    set_status(&srv, "acme", "spare", "error").await;
    let (s, e) = srv
        .post(
            "/api/v1/backups",
            &acme,
            json!({"database_id": "app", "storage_id": "spare"}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    assert_eq!(e["error"]["details"][0]["path"], "storage_id", "{e}");
    let (s, e) = srv
        .post(
            "/api/v1/backups",
            &acme,
            json!({"database_id": "app", "storage_id": "nowhere"}),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{e}");

    // Named: the job carries the storage's target and the recovery key.
    let (s, v) = srv
        .post(
            "/api/v1/backups",
            &acme,
            json!({"database_id": "app", "storage_id": "main"}),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let job = poll(&srv, &agent).await;
    assert_eq!(job["storage"]["storage_id"], "main", "{job}");
    assert_eq!(job["storage"]["pve_storage"], "bwk4-acme-main", "{job}");
    assert_eq!(job["storage"]["export"], "/srv/main", "{job}");
    let key = job["recovery_key"]
        .as_str()
        .expect("a recovery key")
        .to_string();
    let first = job["id"].as_str().unwrap().to_string();
    let t = chrono::Utc::now().to_rfc3339();
    let (s, v) = srv
        .call(
            &agent,
            reqwest::Method::POST,
            &format!("/agent/v1/jobs/{}/result", job["id"].as_str().unwrap()),
            None,
            Some(
                json!({"succeeded": true, "snapshot": "backup-20260101T000000Z-manual-0000",
                "logical_bytes": 10, "stored_bytes": 10, "started_at": t, "finished_at": t,
                "created_repository": true}),
            ),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (_, st) = srv
        .get("/api/v1/workspaces/acme/backup-storages/main", &acme)
        .await;
    assert_eq!(st["repository_exists"], true, "{st}");

    // The repository exists: the next job carries no recovery key.
    let (s, v) = srv
        .post(
            "/api/v1/backups",
            &acme,
            json!({"database_id": "app", "storage_id": "main"}),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let job = poll(&srv, &agent).await;
    assert_eq!(job["storage"]["storage_id"], "main", "{job}");
    assert!(job["recovery_key"].is_null(), "{job}");
    let (s, v) = srv
        .call(
            &agent,
            reqwest::Method::POST,
            &format!("/agent/v1/jobs/{}/result", job["id"].as_str().unwrap()),
            None,
            Some(json!({"succeeded": false, "started_at": t, "finished_at": t, "error": "test"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");

    // Queued while active, not active when it would be handed out: failed, never handed out.
    let (s, v) = srv
        .post(
            "/api/v1/backups",
            &acme,
            json!({"database_id": "app", "storage_id": "main"}),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let id = v["jobs"][0]["id"].as_str().unwrap().to_string();
    set_status(&srv, "acme", "main", "error").await;
    assert!(poll(&srv, &agent).await.is_null());
    let (_, j) = srv.get(&format!("/api/v1/jobs/{id}"), &acme).await;
    assert_eq!(j["status"], "failed", "{j}");
    assert!(j["error"].as_str().unwrap().contains("not active"), "{j}");

    // A forget that cannot be handed out (its storage is not active) unmarks its entry, so a
    // later retention run or delete may take it again.
    let (s, v) = srv.delete(&format!("/api/v1/backups/{first}"), &acme).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let (_, b) = srv.get(&format!("/api/v1/backups/{first}"), &acme).await;
    assert!(
        b["forget_job"].is_string(),
        "marked while the forget is queued: {b}"
    );
    assert!(poll(&srv, &agent).await.is_null());
    let (_, b) = srv.get(&format!("/api/v1/backups/{first}"), &acme).await;
    assert_eq!(b["status"], "succeeded", "the entry stays: {b}");
    assert!(
        b["forget_job"].is_null(),
        "unmarked once its forget failed: {b}"
    );

    // The key the job carried is the one shown once.
    let (s, shown) = srv.get("/api/v1/workspaces/acme/recovery-key", &acme).await;
    assert_eq!(s, StatusCode::OK, "{shown}");
    assert_eq!(shown["recovery_key"], key.as_str());
    srv.stop().await;
}

/// One agent of `acme` declaring the SQLite database `app` at `file`, reaching the storage
/// through the built-in NFS client (no mount), which waits `retry_secs` for a server that is
/// gone before the job fails; running, and its database declared.
async fn app_agent(
    srv: &TestServer,
    acme: &str,
    nfs: &NfsServer,
    setup: &mut AgentSetup,
    file: &Path,
    retry_secs: u32,
) -> Daemon {
    setup.add_sqlite("app", file);
    let text = format!(
        "{}{}",
        setup.config_text(),
        nfs.storage_entry(Some(retry_secs))
    );
    std::fs::write(&setup.config, text).unwrap();
    give_to_db_user(&setup.config);
    let token = srv.enrollment_token(acme, "acme").await;
    let mut daemon = Daemon::enroll(srv, setup, &token);
    daemon.start(setup);
    wait_for(30, "app to be declared by its agent", || async {
        let (s, v) = srv.get("/api/v1/databases/app", acme).await;
        (s == StatusCode::OK && v["agent_id"].is_string()).then_some(())
    })
    .await;
    daemon
}

/// Adds `rows` rows of 32 KiB random data (ids from `first`, seeds from `seed`) to `path`.
fn add_rows(path: &Path, first: usize, rows: usize, seed: u64) {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch(
        "PRAGMA page_size = 4096; CREATE TABLE IF NOT EXISTS blobs (id INTEGER PRIMARY KEY, data BLOB NOT NULL); BEGIN",
    )
    .unwrap();
    for i in 0..rows {
        conn.execute(
            "INSERT INTO blobs (id, data) VALUES (?1, ?2)",
            rusqlite::params![
                (first + i) as i64,
                bulwark_tests::random_bytes(ROW, seed + i as u64)
            ],
        )
        .unwrap();
    }
    conn.execute_batch("COMMIT").unwrap();
    conn.close().unwrap();
    give_to_db_user(path);
}

fn backup_jobs(srv: &TestServer) -> Vec<bulwark_control_plane::domain::job::Job> {
    bulwark_control_plane::store::jobs::list(
        &srv.store.read().unwrap(),
        Some("acme"),
        |j| j.job_kind == bulwark_core::api::JobKind::Backup,
        None,
        10_000,
    )
    .unwrap()
    .0
}

/// Makes the policy's next slot come now (by the control plane's clock) and returns the job
/// the scheduler made for it; then pushes the slot after that out of reach, so only the test
/// decides when the policy runs.
async fn scheduled_run(srv: &TestServer, policy: &str) -> String {
    wait_for(20, "the scheduler to plan the policy", || async {
        bulwark_control_plane::store::jobs::schedule_state(&srv.store.read().unwrap(), policy)
            .unwrap()
            .next_due
    })
    .await;
    let before: Vec<String> = backup_jobs(srv).into_iter().map(|j| j.id).collect();
    srv.set_next_due(policy, srv.store.now() - chrono::Duration::seconds(1))
        .await;
    let id = wait_for(20, "the scheduled backup job", || async {
        backup_jobs(srv)
            .into_iter()
            .find(|j| !before.contains(&j.id))
            .map(|j| j.id)
    })
    .await;
    srv.set_next_due(policy, srv.store.now() + chrono::Duration::days(1000))
        .await;
    id
}

async fn wait_ended(srv: &TestServer, token: &str, id: &str, secs: u64) -> Value {
    wait_for(secs, &format!("job {id} to end"), || async {
        let j = job(srv, token, id).await;
        (j["status"] == "succeeded" || j["status"] == "failed").then_some(j)
    })
    .await
}

/// Restores `snapshot` of `app` from the repository at `url` with the recovery key `key`
/// through the agent's CLI, and checks it is `original` (but for the header counters SQLite's
/// online backup bumps when it commits the copy: bytes 24..28 and 92..96).
fn restores_to(setup: &AgentSetup, url: &str, key: &str, snapshot: &str, original: &[u8]) {
    let key_file = setup.path("recovery-key");
    write_private_file(&key_file, &format!("{key}\n"));
    let to = setup.path(&format!("restored-{snapshot}.db"));
    let out = setup.agent_json(&[
        "restore",
        snapshot,
        "--database",
        "app",
        "--repo",
        url,
        "--password-file",
        &key_file.to_string_lossy(),
        "--to",
        &to.to_string_lossy(),
    ]);
    assert_eq!(out["integrity_check"], "ok", "{out}");
    let restored = std::fs::read(&to).unwrap();
    assert_eq!(
        restored.len(),
        original.len(),
        "{snapshot}: the restored size"
    );
    let counters = |i: usize| (24..28).contains(&i) || (92..96).contains(&i);
    let differ = (0..original.len())
        .filter(|&i| restored[i] != original[i] && !counters(i))
        .count();
    assert_eq!(
        differ, 0,
        "{snapshot}: the restored file differs at {differ} byte(s)"
    );
    std::fs::remove_file(&to).unwrap();
}

/// The snapshot manifests of `app` on the export.
fn manifests_on_export(repo_dir: &Path) -> Vec<PathBuf> {
    files_under(&repo_dir.join("snapshots").join("app"))
        .into_iter()
        .map(|(p, _)| p)
        .collect()
}

/// Issue 12, "Tested for real": the NFS server stops in the middle of a scheduled backup (the
/// agent reaches it through its built-in client, no mount). The job fails with an error naming
/// the server as `host:port`; nothing of it is visible (no manifest on the export, no succeeded
/// catalog entry). Once the server is back, the policy's next run succeeds, its
/// `verify_after_backup` has the agent authenticate the snapshot it just wrote (the catalog
/// records `verified_at` and "intact"), and the snapshot restores to the database's content.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_nfs_server_stopped_mid_backup_fails_the_job_naming_it_and_the_next_run_succeeds() {
    if !bulwark_tests::pg::is_root() {
        eprintln!("skipped: needs root (the agents run as the db user)");
        return;
    }
    let started = Instant::now();
    let mut nfs = NfsServer::start();
    give_to_db_user(&nfs.export);
    let sim = PveSim::start_default();
    let tmp = tempfile::tempdir().unwrap();
    let srv = TestServer::start_with_jobs(
        &tmp.path().join("cp"),
        Duration::from_secs(300),
        fast_jobs(),
    )
    .await;
    let acme = srv.workspace("acme", "dedicated", 50 << 30).await;
    let pve_storage = srv.provision_nfs_storage(&sim, &nfs, "acme", &acme).await;
    let repo_dir = nfs.export.join("bulwark").join(&pve_storage);

    // 192 MiB of random rows: nothing dedups or compresses, so the backup writes for seconds.
    let mut setup = AgentSetup::new();
    let file = setup.path("app.db");
    add_rows(&file, 0, 6 * SHARED_ROWS, 7000);
    let original = std::fs::read(&file).unwrap();
    // A server gone for 5 s fails the job (the default, 120 s, would make this test slow).
    let daemon = app_agent(&srv, &acme, &nfs, &mut setup, &file, 5).await;
    let (s, policy) = srv
        .post(
            "/api/v1/policies",
            &acme,
            json!({"db_identifier": "app", "db_type": "sqlite", "storage_id": "main",
                "schedule": {"frequency": "every 5m", "preferred_window": "00:00-24:00", "priority": "normal"},
                "retention": {"period_days": 7, "min_snapshots": 2},
                "verify_after_backup": true}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{policy}");
    let policy_id = policy["id"].as_str().unwrap().to_string();
    eprintln!("set up in {:.1} s", started.elapsed().as_secs_f64());

    // The first run: the server goes while the backup writes, once the job is running (its
    // agent reported progress) and its first chunks are on the export. Polled closely: the
    // agent's reports of bytes read come every 3 s, and on an idle machine the whole backup
    // takes about that long.
    let first = scheduled_run(&srv, &policy_id).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let progress = loop {
        let j = job(&srv, &acme, &first).await;
        assert!(
            !matches!(j["status"].as_str(), Some("succeeded" | "failed")),
            "the backup ended before the server could be stopped while it wrote (make the database larger): {j}\n{}",
            daemon.log_text()
        );
        let chunks = files_under(&repo_dir.join("chunks")).len();
        if j["status"] == "running" && j["progress"].is_object() && chunks > 0 {
            break json!({"progress": j["progress"], "chunks_on_export": chunks});
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for the backup to write: {j}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    nfs.stop();
    eprintln!(
        "server stopped at {progress} after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let failed = wait_ended(&srv, &acme, &first, 120).await;
    eprintln!(
        "first run failed after {:.1} s: {}",
        started.elapsed().as_secs_f64(),
        failed["error"]
    );
    assert_eq!(failed["status"], "failed", "{failed}");
    let error = failed["error"].as_str().unwrap();
    let server = format!("NFS server 127.0.0.1:{}", nfs.nfs_port);
    assert!(
        error.contains(&server) && error.contains("unreachable"),
        "the error names the server ({server}) and says what is wrong: {error}"
    );
    assert!(failed["snapshot"].is_null(), "{failed}");
    assert_eq!(
        manifests_on_export(&repo_dir),
        Vec::<PathBuf>::new(),
        "no snapshot of the failed run on the export"
    );
    let (s, entry) = srv.get(&format!("/api/v1/backups/{first}"), &acme).await;
    assert_eq!(s, StatusCode::OK, "{entry}");
    assert_eq!(entry["status"], "failed", "{entry}");
    assert!(entry["snapshot"].is_null(), "{entry}");
    let (s, good) = srv
        .get("/api/v1/backups?database=app&status=succeeded", &acme)
        .await;
    assert_eq!(s, StatusCode::OK, "{good}");
    assert_eq!(good["items"], json!([]), "{good}");

    // The server is back: the policy's next run succeeds and verifies what it wrote.
    nfs.restart();
    let second = scheduled_run(&srv, &policy_id).await;
    assert_ne!(second, first);
    let done = wait_succeeded(&srv, &acme, &second, &[&daemon]).await;
    eprintln!(
        "the next run succeeded after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let snapshot = done["snapshot"].as_str().unwrap().to_string();
    let (s, entry) = srv.get(&format!("/api/v1/backups/{second}"), &acme).await;
    assert_eq!(s, StatusCode::OK, "{entry}");
    assert_eq!(entry["status"], "succeeded", "{entry}");
    assert_eq!(entry["policy_id"], policy_id.as_str(), "{entry}");
    assert_eq!(entry["verification"], "intact", "{entry}");
    let verified_at: chrono::DateTime<chrono::Utc> = entry["verified_at"]
        .as_str()
        .unwrap_or_else(|| panic!("verified_at is set: {entry}"))
        .parse()
        .unwrap();
    let backup_started: chrono::DateTime<chrono::Utc> =
        entry["started_at"].as_str().unwrap().parse().unwrap();
    assert!(verified_at >= backup_started, "{entry}");
    // The failed run's lease, which could not be deleted while the server was down, is gone
    // too (deleted in the background once the server answered), so gc is not held back.
    wait_for(40, "the failed run's lease to go", || async {
        let leases: Vec<String> = std::fs::read_dir(repo_dir.join("locks"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        leases.is_empty().then_some(())
    })
    .await;
    let manifests = manifests_on_export(&repo_dir);
    assert_eq!(manifests.len(), 1, "{manifests:?}");
    assert!(
        manifests[0].to_string_lossy().contains(&snapshot),
        "{manifests:?} holds {snapshot}"
    );

    let (s, shown) = srv.get("/api/v1/workspaces/acme/recovery-key", &acme).await;
    assert_eq!(s, StatusCode::OK, "{shown}");
    let url = nfs.url_v3(&format!("bulwark/{pve_storage}"));
    restores_to(
        &setup,
        &url,
        shown["recovery_key"].as_str().unwrap(),
        &snapshot,
        &original,
    );
    drop(daemon);
    srv.stop().await;
    eprintln!("done in {:.1} s", started.elapsed().as_secs_f64());
}

/// Issue 12, "Tested for real": an export that fills up. A first small backup succeeds; a
/// larger one than the export has room for fails with an error saying the export on the
/// server (`host:port`) is full; the catalog keeps the first as the good backup, no manifest of
/// the failed one is on the export, the first snapshot still restores, and a verify job of it
/// (asked for through the API) finds it intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_nfs_export_that_fills_up_fails_the_job_clearly_and_keeps_the_repository() {
    if !bulwark_tests::pg::is_root() {
        eprintln!("skipped: needs root (the agents run as the db user)");
        return;
    }
    let started = Instant::now();
    let Some(nfs) = NfsServer::start_small("48m") else {
        eprintln!("skipped: cannot mount a tmpfs");
        return;
    };
    give_to_db_user(&nfs.export);
    let sim = PveSim::start_default();
    let tmp = tempfile::tempdir().unwrap();
    let srv = TestServer::start_with_jobs(
        &tmp.path().join("cp"),
        Duration::from_secs(300),
        fast_jobs(),
    )
    .await;
    let acme = srv.workspace("acme", "dedicated", 50 << 30).await;
    let pve_storage = srv.provision_nfs_storage(&sim, &nfs, "acme", &acme).await;
    let repo_dir = nfs.export.join("bulwark").join(&pve_storage);

    let mut setup = AgentSetup::new();
    let file = setup.path("app.db");
    add_rows(&file, 0, 128, 8000);
    let small = std::fs::read(&file).unwrap();
    let daemon = app_agent(&srv, &acme, &nfs, &mut setup, &file, 5).await;

    let backup_now = || async {
        let (s, v) = srv
            .post("/api/v1/backups", &acme, json!({"database_id": "app"}))
            .await;
        assert_eq!(s, StatusCode::ACCEPTED, "{v}");
        v["jobs"][0]["id"].as_str().unwrap().to_string()
    };
    let first = backup_now().await;
    let done = wait_succeeded(&srv, &acme, &first, &[&daemon]).await;
    let snapshot = done["snapshot"].as_str().unwrap().to_string();

    // 64 MiB more random rows: more than the 48 MiB export has left.
    add_rows(&file, 128, 2 * SHARED_ROWS, 9000);
    let second = backup_now().await;
    let failed = wait_ended(&srv, &acme, &second, 120).await;
    eprintln!(
        "the second backup failed after {:.1} s: {}",
        started.elapsed().as_secs_f64(),
        failed["error"]
    );
    assert_eq!(failed["status"], "failed", "{failed}");
    let error = failed["error"].as_str().unwrap();
    let export_full = format!("the NFS export on 127.0.0.1:{} is full", nfs.nfs_port);
    assert!(
        error.contains("No space left on device") && error.contains(&export_full),
        "the error says the export on the server is full: {error}"
    );
    assert!(
        !error.contains("recovery="),
        "no client-internal retry guidance in the message: {error}"
    );
    assert!(failed["snapshot"].is_null(), "{failed}");

    // The repository holds the first snapshot only, and the catalog says so.
    let manifests = manifests_on_export(&repo_dir);
    assert_eq!(manifests.len(), 1, "{manifests:?}");
    assert!(
        manifests[0].to_string_lossy().contains(&snapshot),
        "{manifests:?}"
    );
    let (s, good) = srv
        .get("/api/v1/backups?database=app&status=succeeded", &acme)
        .await;
    assert_eq!(s, StatusCode::OK, "{good}");
    let good = good["items"].as_array().unwrap();
    assert_eq!(good.len(), 1, "{good:?}");
    assert_eq!(good[0]["id"], first.as_str(), "{good:?}");
    let (_, entry) = srv.get(&format!("/api/v1/backups/{second}"), &acme).await;
    assert_eq!(entry["status"], "failed", "{entry}");

    // The first snapshot restores, and a verify job finds it intact.
    let (s, shown) = srv.get("/api/v1/workspaces/acme/recovery-key", &acme).await;
    assert_eq!(s, StatusCode::OK, "{shown}");
    let url = nfs.url_v3(&format!("bulwark/{pve_storage}"));
    restores_to(
        &setup,
        &url,
        shown["recovery_key"].as_str().unwrap(),
        &snapshot,
        &small,
    );
    let (s, v) = srv
        .post(&format!("/api/v1/backups/{first}/verify"), &acme, json!({}))
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    assert_eq!(v["job_kind"], "verify", "{v}");
    wait_succeeded(&srv, &acme, v["id"].as_str().unwrap(), &[&daemon]).await;
    let (_, entry) = srv.get(&format!("/api/v1/backups/{first}"), &acme).await;
    assert_eq!(entry["status"], "succeeded", "{entry}");
    assert_eq!(entry["verification"], "intact", "{entry}");
    assert!(entry["verified_at"].is_string(), "{entry}");
    drop(daemon);
    srv.stop().await;
    eprintln!("done in {:.1} s", started.elapsed().as_secs_f64());
}

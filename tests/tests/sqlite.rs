//! The SQLite driver, tested for real: the `bulwark-agent` binary (run as the `postgres` OS
//! user when the tests run as root, like every driver test) copies a live database file with
//! SQLite's online backup API while a writer keeps committing, and restores it beside the
//! original or, when confirmed, in its place.
//!
//! Each test has its own agent set-up (config, repository, database files in its directory),
//! removed on drop.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use bulwark_tests::failure;
use bulwark_tests::pg::{give_to_db_user, AgentSetup};
use rusqlite::Connection;

/// Rows per writer transaction: a committed state always holds whole batches.
const BATCH: i64 = 10;

fn open(path: &Path) -> Connection {
    let conn = Connection::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    conn.busy_timeout(Duration::from_secs(30)).unwrap();
    conn
}

fn count(conn: &Connection, sql: &str) -> i64 {
    conn.query_row(sql, [], |r| r.get(0))
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

fn integrity(path: &Path) -> String {
    open(path)
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap()
}

/// Inserts batch `b` (BATCH rows) in one transaction.
fn insert_batch(conn: &mut Connection, b: i64) {
    let tx = conn.transaction().unwrap();
    {
        let mut stmt = tx
            .prepare_cached("INSERT INTO events (batch, seq, payload) VALUES (?1, ?2, ?3)")
            .unwrap();
        for seq in 0..BATCH {
            stmt.execute(rusqlite::params![
                b,
                seq,
                format!("{b:08}-{seq:02}-{}", "x".repeat(180))
            ])
            .unwrap();
        }
    }
    tx.commit().unwrap();
}

fn snapshots(setup: &AgentSetup) -> Vec<serde_json::Value> {
    setup.agent_json(&["snapshots", "--database", "app"])["snapshots"]
        .as_array()
        .expect("snapshots array")
        .clone()
}

fn agent_fails(setup: &AgentSetup, args: &[&str]) -> (i32, String) {
    failure(&setup.agent(args))
}

/// `agent_json` with a deadline: a backup that never finishes while a writer keeps writing (an
/// online backup that restarts on every change) fails the test instead of hanging it.
fn agent_json_within(setup: &AgentSetup, args: &[&str], limit: Duration) -> serde_json::Value {
    let mut with_json = vec!["--json"];
    with_json.extend_from_slice(args);
    let child = setup
        .cmd(&with_json)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run bulwark-agent");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(limit) {
        Ok(out) => out.expect("wait for bulwark-agent"),
        Err(_) => {
            // SIGTERM to the process we started (runuser passes it on to the agent).
            let _ = Command::new("kill").arg(pid.to_string()).status();
            let _ = rx.recv_timeout(Duration::from_secs(10));
            panic!("bulwark-agent {args:?} did not finish within {limit:?} while the writer kept writing");
        }
    };
    assert!(
        out.status.success(),
        "bulwark-agent {args:?} failed ({}):\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON output")
}

/// A small `items` database in rollback-journal mode, closed, owned by the db user.
fn items_database(setup: &mut AgentSetup, rows: i64) -> std::path::PathBuf {
    let db = setup.path("app.db");
    let conn = open(&db);
    conn.execute_batch(
        "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL); \
         CREATE INDEX items_name ON items (name);",
    )
    .unwrap();
    conn.execute(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1) \
         INSERT INTO items SELECT i, 'item-' || i FROM n",
        [rows],
    )
    .unwrap();
    drop(conn);
    give_to_db_user(&db);
    setup.add_sqlite("app", &db);
    setup.init();
    db
}

/// 1. A backup taken while a writer commits batch after batch (WAL mode) restores to a file
/// that passes the integrity check and holds exactly the batches of one committed state.
#[test]
fn online_backup_under_a_writer_restores_a_committed_state() {
    let mut setup = AgentSetup::new();
    let db = setup.path("app.db");
    let mut conn = open(&db);
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    conn.execute_batch(
        "CREATE TABLE events (batch INTEGER NOT NULL, seq INTEGER NOT NULL, payload TEXT NOT NULL, \
         PRIMARY KEY (batch, seq))",
    )
    .unwrap();
    // A few MB to begin with, so the copy takes a moment.
    let initial = 2000;
    for b in 0..initial {
        insert_batch(&mut conn, b);
    }
    // The agent (db user) needs the database, -wal and -shm files; the writer's connection
    // stays open so they stay.
    give_to_db_user(setup.dir.path());
    setup.add_sqlite("app", &db);
    setup.init();

    let committed = Arc::new(AtomicI64::new(initial));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let committed = committed.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut b = initial;
            while !stop.load(Ordering::SeqCst) {
                insert_batch(&mut conn, b);
                b += 1;
                committed.store(b, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(2));
            }
            conn
        })
    };
    // Let the writer get going, then back up while it writes.
    while committed.load(Ordering::SeqCst) < initial + 20 {
        assert!(!writer.is_finished(), "the writer stopped early");
        std::thread::sleep(Duration::from_millis(5));
    }
    let before = committed.load(Ordering::SeqCst);
    let report = agent_json_within(
        &setup,
        &["backup", "--database", "app"],
        Duration::from_secs(60),
    );
    let after = committed.load(Ordering::SeqCst);
    // Keep writing a little longer, then stop.
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::SeqCst);
    let conn = match writer.join() {
        Ok(c) => c,
        Err(panic) => std::panic::resume_unwind(panic),
    };
    assert!(
        after > before,
        "the writer committed nothing during the backup ({before} batches before, {after} after)"
    );
    let snapshot = report["snapshot"].as_str().unwrap().to_string();

    let restored = setup.path("restored.db");
    let restored_arg = restored.to_string_lossy().into_owned();
    let out = setup.agent_json(&[
        "restore",
        "latest",
        "--database",
        "app",
        "--to",
        &restored_arg,
    ]);
    assert_eq!(out["snapshot"], snapshot.as_str(), "{out}");
    assert_eq!(out["integrity_check"], "ok", "{out}");

    assert_eq!(integrity(&restored), "ok");
    let copy = open(&restored);
    let rows = count(&copy, "SELECT count(*) FROM events");
    let batches = count(&copy, "SELECT count(DISTINCT batch) FROM events");
    let max = count(&copy, "SELECT max(batch) FROM events");
    let partial = count(
        &copy,
        &format!("SELECT count(*) FROM (SELECT batch FROM events GROUP BY batch HAVING count(*) != {BATCH})"),
    );
    assert_eq!(rows % BATCH, 0, "{rows} rows is not whole batches");
    assert_eq!(partial, 0, "a batch is incomplete in the copy");
    assert_eq!(rows, batches * BATCH);
    assert_eq!(max + 1, batches, "batches 0..{batches} without a gap");
    assert!(
        (before..=after).contains(&batches),
        "the copy holds {batches} batches: not a state committed during the backup ({before}..={after})"
    );
    // The source kept everything the writer committed.
    assert_eq!(
        count(&conn, "SELECT count(*) FROM events"),
        committed.load(Ordering::SeqCst) * BATCH
    );
}

/// 2. Restoring over the configured file needs --confirm; with it the file is replaced by a
/// new one (renamed into place, same permissions) and a pre-restore snapshot keeps the old one.
#[test]
fn in_place_restore_needs_confirm_and_keeps_a_pre_restore_snapshot() {
    let mut setup = AgentSetup::new();
    let db = items_database(&mut setup, 100);
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o640)).unwrap();
    let snapshot = setup.agent_json(&["backup", "--database", "app"])["snapshot"]
        .as_str()
        .unwrap()
        .to_string();

    {
        let conn = open(&db);
        conn.execute_batch(
            "INSERT INTO items SELECT id + 1000, 'later-' || id FROM items WHERE id <= 50; \
             DELETE FROM items WHERE id <= 10;",
        )
        .unwrap();
    }
    let changed = std::fs::read(&db).unwrap();
    let old_inode = std::fs::metadata(&db).unwrap().ino();

    // Without --confirm: refused, the file as it was, no snapshot written.
    let (code, err) = agent_fails(&setup, &["restore", &snapshot, "--database", "app"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--confirm") && err.contains("--to"),
        "the message says how to go ahead or restore beside it: {err}"
    );
    assert!(std::fs::read(&db).unwrap() == changed, "the file changed");
    assert_eq!(snapshots(&setup).len(), 1);

    let out = setup.agent_json(&["restore", &snapshot, "--database", "app", "--confirm"]);
    assert_eq!(out["integrity_check"], "ok", "{out}");
    assert_eq!(integrity(&db), "ok");
    {
        let conn = open(&db);
        assert_eq!(count(&conn, "SELECT count(*) FROM items"), 100);
        assert_eq!(
            count(&conn, "SELECT count(*) FROM items WHERE id > 1000"),
            0
        );
    }
    let meta = std::fs::metadata(&db).unwrap();
    assert_ne!(
        meta.ino(),
        old_inode,
        "a new file renamed into place, not a rewrite"
    );
    assert_eq!(meta.mode() & 0o777, 0o640, "permissions kept");
    let leftovers: Vec<_> = std::fs::read_dir(setup.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("bulwark-partial"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");

    // The pre-restore snapshot holds the file as it was just before.
    let all = snapshots(&setup);
    let safety: Vec<_> = all.iter().filter(|s| s["kind"] == "pre-restore").collect();
    assert_eq!(safety.len(), 1, "{all:?}");
    assert_eq!(safety[0]["tags"]["before-restore-of"], snapshot.as_str());
    let before = setup.path("before-restore.db");
    let before_arg = before.to_string_lossy().into_owned();
    setup.agent_json(&[
        "restore",
        safety[0]["name"].as_str().unwrap(),
        "--database",
        "app",
        "--to",
        &before_arg,
    ]);
    let conn = open(&before);
    assert_eq!(count(&conn, "SELECT count(*) FROM items"), 140);
    assert_eq!(
        count(&conn, "SELECT count(*) FROM items WHERE id > 1000"),
        50
    );
}

/// 3. `--to` an existing path, and PostgreSQL-only options on a SQLite restore: exit 2, and
/// neither the existing file, the database nor the repository changes.
#[test]
fn restore_refuses_an_existing_to_path_and_postgres_options() {
    let mut setup = AgentSetup::new();
    let db = items_database(&mut setup, 20);
    setup.agent_json(&["backup", "--database", "app"]);
    let source = std::fs::read(&db).unwrap();

    let existing = setup.path("existing.db");
    std::fs::write(&existing, "keep me\n").unwrap();
    give_to_db_user(&existing);
    let existing_arg = existing.to_string_lossy().into_owned();
    let (code, err) = agent_fails(
        &setup,
        &[
            "restore",
            "latest",
            "--database",
            "app",
            "--to",
            &existing_arg,
        ],
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("already exists") && err.contains(&existing_arg),
        "the message names the path: {err}"
    );
    assert_eq!(std::fs::read_to_string(&existing).unwrap(), "keep me\n");

    let fresh = setup.path("fresh.db");
    let fresh_arg = fresh.to_string_lossy().into_owned();
    let (code, err) = agent_fails(
        &setup,
        &[
            "restore",
            "latest",
            "--database",
            "app",
            "--to",
            &fresh_arg,
            "--schema",
            "x",
        ],
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("SQLite"),
        "the message says the option does not apply to SQLite: {err}"
    );
    assert!(!fresh.exists());

    // SQLite has no logical dump: its one method is the online copy (physical), which is
    // also what the control plane's rule table names as its default.
    let (code, err) = agent_fails(
        &setup,
        &["backup", "--database", "app", "--method", "logical"],
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("method logical") && err.contains("online copy"),
        "{err}"
    );
    assert_eq!(snapshots(&setup).len(), 1);

    // The same option on an in-place restore: refused before anything is replaced, and before
    // a pre-restore snapshot is written for a restore that cannot happen.
    let (code, err) = agent_fails(
        &setup,
        &[
            "restore",
            "latest",
            "--database",
            "app",
            "--schema",
            "x",
            "--confirm",
        ],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("SQLite"), "{err}");
    assert!(
        std::fs::read(&db).unwrap() == source,
        "the database changed"
    );
    let kinds: Vec<_> = snapshots(&setup)
        .iter()
        .map(|s| s["kind"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        kinds,
        ["manual"],
        "a refused restore wrote a pre-restore snapshot"
    );
}

//! The PostgreSQL driver, tested for real: the `bulwark-agent` binary backs up and restores
//! real PostgreSQL 15 clusters (tests/src/pg.rs), logically (pg_dump / pg_restore) and
//! physically (base backup + WAL archived by the agent's own `wal-push` as archive_command),
//! with point-in-time recovery, selective and merge restores, and the ways it must refuse bad
//! input without touching the source.
//!
//! Each test owns one cluster, one agent set-up (config, repository) and the servers it
//! restores; everything is stopped and removed on drop, also when an assertion fails. Guards
//! for restored servers are declared after the set-up whose directory holds their data, so
//! they are dropped (stopped) first.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use bulwark_tests::pg::{
    give_to_db_user, toml_str, write_private_file, AgentSetup, PgCluster, PgOptions, RunningServer,
    PG_BIN_DIR,
};
use bulwark_tests::{failure, free_port};

type Fingerprints = BTreeMap<String, (i64, String)>;

/// An initialised repository and a cluster whose archive_command is the agent's `wal-push`
/// into it, with database `dbname` declared as `id` (default method physical). The repository
/// exists before the server starts, so the archiver never sees a missing repository.
fn archiving_cluster(id: &str, dbname: &str) -> (AgentSetup, PgCluster) {
    let mut setup = AgentSetup::new();
    setup.init();
    let pg = PgCluster::start(PgOptions {
        archive_command: Some(setup.wal_push_command(id)),
        ..Default::default()
    });
    pg.create_database(dbname);
    setup.add_postgres(id, "physical", &pg, dbname);
    (setup, pg)
}

/// Ends the current WAL segment (`pg_switch_wal`, in a call of its own) and returns its name.
fn switch_wal(pg: &PgCluster) -> String {
    pg.psql("postgres", "SELECT pg_walfile_name(pg_switch_wal())")
}

/// Where the agent keeps archived WAL file `name` of database `id` in a directory repository.
fn wal_object(setup: &AgentSetup, id: &str, name: &str) -> PathBuf {
    Path::new(&setup.repo)
        .join("wal")
        .join(id)
        .join(&name[..8])
        .join(name)
}

/// Waits until the server reports `name` (or a later segment) archived and the object is in
/// the repository.
fn wait_archived(setup: &AgentSetup, pg: &PgCluster, id: &str, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let last = pg.psql(
            "postgres",
            "SELECT coalesce(last_archived_wal, '') || '|' || failed_count || '|' || coalesce(last_failed_wal, '') FROM pg_stat_archiver",
        );
        let done = last.split('|').next().unwrap_or("");
        if done >= name && wal_object(setup, id, name).exists() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "WAL segment {name} not archived after 60 s (pg_stat_archiver: last archived|failed count|last failed = {last})\nserver log:\n{}",
            bulwark_tests::pg::tail(&pg.log, 30)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `restore SNAPSHOT --database ID --data-dir <setup>/NAME --port P --start [target…] --json`.
/// The guard for the restored server exists before the agent runs, so a server left running by
/// a failed assertion is stopped too.
fn restore_started(
    setup: &AgentSetup,
    id: &str,
    snapshot: &str,
    dir_name: &str,
    target: &[&str],
) -> (RunningServer, serde_json::Value) {
    let data_dir = setup.path(dir_name);
    let port = free_port();
    let server = RunningServer::attach(&data_dir, port);
    let dir = data_dir.to_string_lossy().into_owned();
    let port_arg = port.to_string();
    let mut args = vec![
        "restore",
        snapshot,
        "--database",
        id,
        "--data-dir",
        &dir,
        "--port",
        &port_arg,
        "--start",
    ];
    args.extend_from_slice(target);
    let report = setup.agent_json(&args);
    (server, report)
}

fn snapshot_name(report: &serde_json::Value) -> String {
    report["snapshot"]
        .as_str()
        .unwrap_or_else(|| panic!("no snapshot name in {report}"))
        .to_string()
}

fn snapshots(setup: &AgentSetup, id: &str) -> Vec<serde_json::Value> {
    setup.agent_json(&["snapshots", "--database", id])["snapshots"]
        .as_array()
        .expect("snapshots array")
        .clone()
}

/// Runs the agent, expects it to fail; returns (exit code, stderr, stdout).
fn agent_fails(setup: &AgentSetup, args: &[&str]) -> (i32, String, String) {
    let out = setup.agent(args);
    let (code, stderr) = failure(&out);
    (
        code,
        stderr,
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// The names of the entries of a directory, sorted.
fn dir_entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// 1. A pgbench database at scale 10, backed up logically and physically (with pgbench
/// transactions running during the physical backup), comes back table for table.
#[test]
fn pgbench_database_round_trips_logically_and_physically() {
    let (setup, pg) = archiving_cluster("bench", "bench");
    pg.pgbench_init("bench", 10);

    let checked = setup.agent_json(&["check", "--database", "bench"]);
    assert_eq!(checked["databases"][0]["ok"], true, "{checked}");

    let source = pg.table_fingerprints("bench");
    assert_eq!(source["public.pgbench_accounts"].0, 1_000_000);

    // Logical: pg_dump into the repository, pg_restore with two jobs into a new database.
    let logical = setup.agent_json(&["backup", "--database", "bench", "--method", "logical"]);
    let logical_name = snapshot_name(&logical);
    assert!(
        logical["logical_bytes"].as_u64().unwrap() > 10 << 20,
        "a scale-10 dump is tens of MB: {logical}"
    );
    let restored = setup.agent_json(&[
        "restore",
        &logical_name,
        "--database",
        "bench",
        "--into-database",
        "bench_logical",
        "--jobs",
        "2",
    ]);
    assert_eq!(restored["database"], "bench_logical", "{restored}");
    assert_eq!(restored["jobs"], 2, "{restored}");
    assert_eq!(pg.table_fingerprints("bench_logical"), source);

    // Physical, while pgbench keeps writing: rounds of 2 clients × 20 transactions until told
    // to stop. The backup starts once the first round has finished.
    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicU32::new(0));
    let (first_round_tx, first_round_rx) = mpsc::channel();
    let writer = {
        let client = pg.client.clone();
        let stop = stop.clone();
        let rounds = rounds.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                client.pgbench_run("bench", 2, 20);
                if rounds.fetch_add(1, Ordering::SeqCst) == 0 {
                    let _ = first_round_tx.send(());
                }
            }
        })
    };
    if first_round_rx
        .recv_timeout(Duration::from_secs(120))
        .is_err()
    {
        stop.store(true, Ordering::SeqCst);
        match writer.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => panic!("pgbench did not finish a round in 120 s"),
        }
    }
    let rounds_before = rounds.load(Ordering::SeqCst);
    let physical = setup.agent_json(&["backup", "--database", "bench", "--method", "physical"]);
    let rounds_after = rounds.load(Ordering::SeqCst);
    stop.store(true, Ordering::SeqCst);
    if let Err(panic) = writer.join() {
        std::panic::resume_unwind(panic);
    }
    assert!(
        rounds_after > rounds_before,
        "no pgbench round finished during the physical backup ({rounds_before} before, {rounds_after} after): the test did not test a backup under load"
    );
    let physical_name = snapshot_name(&physical);

    // Everything pgbench committed is in archived WAL once the current segment is switched out.
    let at_end = pg.table_fingerprints("bench");
    assert!(at_end["public.pgbench_history"].0 > 0);
    assert_ne!(at_end, source, "pgbench changed nothing");
    let last = switch_wal(&pg);
    wait_archived(&setup, &pg, "bench", &last);

    let (server, report) = restore_started(&setup, "bench", "latest", "bench-physical", &[]);
    assert_eq!(report["snapshot"], physical_name.as_str(), "{report}");
    assert_eq!(report["started"], true, "{report}");
    assert!(report["reached"].is_object(), "{report}");
    assert_eq!(server.psql("postgres", "SELECT pg_is_in_recovery()"), "f");
    assert_eq!(server.table_fingerprints("bench"), at_end);
}

/// 2. Point-in-time recovery from a base backup plus archived WAL: to a time between two
/// groups of inserts, to a named restore point, and to the end of the archive.
#[test]
fn point_in_time_recovery_to_a_time_a_restore_point_and_the_end() {
    let (setup, pg) = archiving_cluster("shop", "shop");
    pg.psql(
        "shop",
        "CREATE TABLE orders (id int PRIMARY KEY, created timestamptz DEFAULT clock_timestamp())",
    );
    let base = setup.agent_json(&["backup", "--database", "shop"]);
    let base_name = snapshot_name(&base);

    // One transaction per row (a multi-statement -c would be one transaction).
    let insert = |id: u32| pg.psql("shop", &format!("INSERT INTO orders (id) VALUES ({id})"));
    for id in 1..=3 {
        insert(id);
    }
    let after_three = pg.psql("postgres", "SELECT pg_current_wal_insert_lsn()");
    std::thread::sleep(Duration::from_millis(1100));
    let target_time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    std::thread::sleep(Duration::from_millis(1100));
    for id in 4..=6 {
        insert(id);
    }
    pg.psql("shop", "SELECT pg_create_restore_point('before-x')");
    for id in 7..=8 {
        insert(id);
    }
    let last = switch_wal(&pg);
    wait_archived(&setup, &pg, "shop", &last);
    let ids = |server: &RunningServer| {
        server.psql(
            "shop",
            "SELECT coalesce(string_agg(id::text, ',' ORDER BY id), '') FROM orders",
        )
    };

    {
        let (server, report) = restore_started(
            &setup,
            "shop",
            "latest",
            "pitr-time",
            &["--target-time", &target_time],
        );
        assert_eq!(report["snapshot"], base_name.as_str(), "{report}");
        assert_eq!(ids(&server), "1,2,3", "recovery to {target_time}: {report}");
        let reason = report["reached"]["stop_reason"].as_str().unwrap_or("");
        assert!(
            reason.contains("recovery stopping before commit"),
            "the report says where recovery stopped: {report}"
        );
        assert_eq!(server.psql("postgres", "SELECT pg_is_in_recovery()"), "f");
    }
    {
        let (server, report) = restore_started(
            &setup,
            "shop",
            "latest",
            "pitr-name",
            &["--target-name", "before-x"],
        );
        assert_eq!(ids(&server), "1,2,3,4,5,6", "{report}");
        let reason = report["reached"]["stop_reason"].as_str().unwrap_or("");
        assert!(reason.contains("before-x"), "{report}");
    }
    {
        let (server, report) = restore_started(
            &setup,
            "shop",
            "latest",
            "pitr-lsn",
            &["--target-lsn", &after_three],
        );
        assert_eq!(
            ids(&server),
            "1,2,3",
            "recovery to LSN {after_three}: {report}"
        );
    }
    {
        let (server, report) = restore_started(&setup, "shop", "latest", "pitr-latest", &[]);
        assert_eq!(ids(&server), "1,2,3,4,5,6,7,8", "{report}");
        // The promoted copy is writable.
        server.psql("shop", "INSERT INTO orders (id) VALUES (100)");
    }

    // The restored copies did not archive their new timeline into the source's archive, and
    // the source kept all its rows.
    let archive = Path::new(&setup.repo).join("wal").join("shop");
    assert_eq!(dir_entries(&archive), ["00000001"]);
    assert_eq!(
        pg.psql(
            "shop",
            "SELECT string_agg(id::text, ',' ORDER BY id) FROM orders"
        ),
        "1,2,3,4,5,6,7,8"
    );
}

/// 3. Logical restores: one tenant's schema into a new database (other tenants stay out), a
/// merge into a database with objects of its own (they stay), and a confirmed full restore
/// over the source (a pre-restore snapshot holds what was replaced).
#[test]
fn logical_restores_one_schema_merge_and_confirmed_full() {
    let mut setup = AgentSetup::new();
    setup.init();
    let pg = PgCluster::start(PgOptions::default());
    pg.create_database("saas");
    pg.psql(
        "saas",
        "CREATE TABLE public.plans (id int PRIMARY KEY, name text); \
         INSERT INTO public.plans VALUES (1, 'free'), (2, 'pro')",
    );
    for (n, tenant) in ["tenant_a", "tenant_b", "tenant_c"].iter().enumerate() {
        let rows = 100 * (n + 1);
        pg.psql(
            "saas",
            &format!(
                "CREATE SCHEMA {tenant}; \
                 CREATE TABLE {tenant}.users (id int PRIMARY KEY, name text NOT NULL, plan int); \
                 CREATE TABLE {tenant}.invoices (id serial PRIMARY KEY, user_id int REFERENCES {tenant}.users, amount numeric(10,2)); \
                 INSERT INTO {tenant}.users SELECT i, '{tenant}-user-' || i, 1 + i % 2 FROM generate_series(1, {rows}) i; \
                 INSERT INTO {tenant}.invoices (user_id, amount) SELECT 1 + i % {rows}, i * 1.25 FROM generate_series(1, {rows} * 3) i"
            ),
        );
    }
    setup.add_postgres("saas", "logical", &pg, "saas");
    let snap = snapshot_name(&setup.agent_json(&["backup", "--database", "saas"]));
    let source = pg.table_fingerprints("saas");
    assert_eq!(source.len(), 7);

    // One tenant into a new database.
    let report = setup.agent_json(&[
        "restore",
        &snap,
        "--database",
        "saas",
        "--schema",
        "tenant_a",
        "--into-database",
        "only_a",
    ]);
    assert_eq!(report["database"], "only_a", "{report}");
    let tenant_a: Fingerprints = source
        .iter()
        .filter(|(k, _)| k.starts_with("tenant_a."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    assert_eq!(tenant_a.len(), 2);
    assert_eq!(pg.table_fingerprints("only_a"), tenant_a);
    assert_eq!(
        pg.psql(
            "only_a",
            "SELECT string_agg(nspname, ',' ORDER BY nspname) FROM pg_namespace WHERE nspname LIKE 'tenant%'"
        ),
        "tenant_a"
    );

    // Merge into a database that has objects of its own.
    pg.create_database("merged");
    pg.psql(
        "merged",
        "CREATE SCHEMA local; \
         CREATE TABLE local.notes (id int PRIMARY KEY, body text); \
         INSERT INTO local.notes VALUES (1, 'keep me'), (2, 'me too'); \
         CREATE TABLE public.audit (at timestamptz, what text); \
         INSERT INTO public.audit VALUES ('2026-01-01', 'created')",
    );
    let own = pg.table_fingerprints("merged");
    let report = setup.agent_json(&[
        "restore",
        &snap,
        "--database",
        "saas",
        "--into-database",
        "merged",
        "--mode",
        "merge",
    ]);
    assert_eq!(report["mode"], "merge", "{report}");
    let merged = pg.table_fingerprints("merged");
    let mut expected = source.clone();
    expected.extend(own.clone());
    assert_eq!(
        merged, expected,
        "merge kept the database's own tables and added the snapshot's"
    );

    // A full restore over the source itself (with --confirm): the source is back as it was at
    // the backup, and a pre-restore snapshot holds what it replaced.
    pg.psql("saas", "DELETE FROM tenant_b.invoices WHERE id % 2 = 0");
    pg.psql("saas", "INSERT INTO public.plans VALUES (3, 'enterprise')");
    let changed = pg.table_fingerprints("saas");
    assert_ne!(changed, source);
    setup.agent_json(&["restore", &snap, "--database", "saas", "--confirm"]);
    assert_eq!(pg.table_fingerprints("saas"), source);
    let all = snapshots(&setup, "saas");
    let safety: Vec<_> = all.iter().filter(|s| s["kind"] == "pre-restore").collect();
    assert_eq!(safety.len(), 1, "one pre-restore snapshot: {all:?}");
    assert_eq!(
        safety[0]["tags"]["before-restore-of"],
        snap.as_str(),
        "{all:?}"
    );
    let safety_name = safety[0]["name"].as_str().unwrap();
    setup.agent_json(&[
        "restore",
        safety_name,
        "--database",
        "saas",
        "--into-database",
        "saas_before",
    ]);
    assert_eq!(pg.table_fingerprints("saas_before"), changed);
}

/// 3b. A full restore into another database that exists (--into-database) replaces it, so it
/// needs --confirm, and, as `restore --help` promises for everything replaced, a pre-restore
/// snapshot of that database is taken first.
#[test]
fn full_restore_over_another_existing_database_keeps_a_pre_restore_snapshot() {
    let mut setup = AgentSetup::new();
    setup.init();
    let pg = PgCluster::start(PgOptions::default());
    pg.create_database("crm");
    pg.psql(
        "crm",
        "CREATE TABLE contacts (id int PRIMARY KEY, name text); \
         INSERT INTO contacts SELECT i, 'contact ' || i FROM generate_series(1, 300) i",
    );
    setup.add_postgres("crm", "logical", &pg, "crm");
    let snap = snapshot_name(&setup.agent_json(&["backup", "--database", "crm"]));
    let source = pg.table_fingerprints("crm");

    pg.create_database("crm_staging");
    pg.psql(
        "crm_staging",
        "CREATE TABLE work_in_progress (id int, note text); \
         INSERT INTO work_in_progress VALUES (1, 'unsaved analysis')",
    );
    let staging = pg.table_fingerprints("crm_staging");

    let (code, err, _) = agent_fails(
        &setup,
        &[
            "restore",
            &snap,
            "--database",
            "crm",
            "--into-database",
            "crm_staging",
        ],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--confirm"), "{err}");
    assert_eq!(pg.table_fingerprints("crm_staging"), staging);

    setup.agent_json(&[
        "restore",
        &snap,
        "--database",
        "crm",
        "--into-database",
        "crm_staging",
        "--confirm",
    ]);
    assert_eq!(pg.table_fingerprints("crm_staging"), source);
    assert_eq!(
        pg.table_fingerprints("crm"),
        source,
        "the source is untouched"
    );
    let all = snapshots(&setup, "crm");
    let safety: Vec<_> = all.iter().filter(|s| s["kind"] == "pre-restore").collect();
    assert_eq!(
        safety.len(),
        1,
        "replacing crm_staging (its table work_in_progress is gone now) took no pre-restore snapshot: {all:?}"
    );
    setup.agent_json(&[
        "restore",
        safety[0]["name"].as_str().unwrap(),
        "--database",
        "crm",
        "--into-database",
        "crm_staging_before",
    ]);
    assert_eq!(pg.table_fingerprints("crm_staging_before"), staging);
}

/// 4c. Options that do not apply to a logical dump, given with --confirm: the restore is
/// refused (exit 2) before anything happens, so no pre-restore snapshot is written (pg_dump of
/// the whole source) for a restore that cannot run.
#[test]
fn a_refused_restore_writes_no_pre_restore_snapshot() {
    let mut setup = AgentSetup::new();
    setup.init();
    let pg = PgCluster::start(PgOptions::default());
    pg.create_database("notes");
    pg.psql(
        "notes",
        "CREATE TABLE notes (id int PRIMARY KEY, body text); \
         INSERT INTO notes SELECT i, 'note ' || i FROM generate_series(1, 100) i",
    );
    setup.add_postgres("notes", "logical", &pg, "notes");
    let snap = snapshot_name(&setup.agent_json(&["backup", "--database", "notes"]));
    let source = pg.table_fingerprints("notes");

    let data_dir = setup.path("pgdata");
    let dir = data_dir.to_string_lossy().into_owned();
    for physical_option in [
        vec!["--target-time", "2026-01-01T00:00:00Z"],
        vec!["--data-dir", dir.as_str()],
    ] {
        let mut args = vec!["restore", snap.as_str(), "--database", "notes", "--confirm"];
        args.extend_from_slice(&physical_option);
        let (code, err, _) = agent_fails(&setup, &args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(
            err.contains("physical"),
            "{args:?}: the message says why: {err}"
        );
        assert_eq!(pg.table_fingerprints("notes"), source);
        assert!(!data_dir.exists());
        let kinds: Vec<_> = snapshots(&setup, "notes")
            .iter()
            .map(|s| s["kind"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            kinds,
            ["manual"],
            "{args:?} was refused but wrote a pre-restore snapshot first"
        );
    }
}

/// A `[[databases]]` entry for `dbname` on 127.0.0.1:`port` with the password in `password_file`.
fn postgres_entry(id: &str, port: u16, dbname: &str, password_file: &Path) -> String {
    format!(
        "id = {}\ntype = \"postgresql\"\nmethod = \"logical\"\nbin_dir = {}\nconnection = {{ host = \"127.0.0.1\", port = {port}, user = \"postgres\", dbname = {}, password_file = {} }}\n",
        toml_str(id),
        toml_str(PG_BIN_DIR),
        toml_str(dbname),
        toml_str(&password_file.to_string_lossy())
    )
}

/// 4a. A server nobody listens for and a wrong password: exit 1, the message says which, no
/// snapshot is written and the source is untouched.
#[test]
fn unreachable_server_and_wrong_password_are_named() {
    let mut setup = AgentSetup::new();
    setup.init();
    let pg = PgCluster::start(PgOptions::default());
    pg.create_database("app");
    pg.psql(
        "app",
        "CREATE TABLE t (x int); INSERT INTO t SELECT generate_series(1, 50)",
    );
    let source = pg.table_fingerprints("app");

    let closed_port = free_port(); // bound and released: nothing listens there
    setup.add_database_toml(&postgres_entry(
        "down",
        closed_port,
        "app",
        &pg.password_file,
    ));
    let wrong = setup.path("wrong-pg-password");
    write_private_file(&wrong, "not-the-password\n");
    setup.add_database_toml(&postgres_entry("badpw", pg.port, "app", &wrong));

    let (code, err, _) = agent_fails(&setup, &["backup", "--database", "down"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("cannot reach") && err.contains("down"),
        "the message says the server cannot be reached: {err}"
    );
    let (code, err, out) = agent_fails(&setup, &["check", "--database", "down"]);
    assert_eq!(code, 1, "{err}{out}");
    assert!(
        out.contains("cannot reach"),
        "check names the problem: {out}"
    );

    let (code, err, _) = agent_fails(&setup, &["backup", "--database", "badpw"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("credentials") && err.contains("badpw"),
        "the message names the credentials: {err}"
    );
    assert!(
        !err.contains("not-the-password"),
        "the password itself is not printed: {err}"
    );
    let (code, err, out) = agent_fails(&setup, &["check", "--database", "badpw"]);
    assert_eq!(code, 1, "{err}{out}");
    assert!(out.contains("credentials"), "{out}");

    assert!(snapshots(&setup, "down").is_empty());
    assert!(snapshots(&setup, "badpw").is_empty());
    assert_eq!(pg.table_fingerprints("app"), source);
}

/// 4b. Restores that must be refused, each leaving everything as it was: a target time before
/// the base backup, a data directory that is not empty, a full restore over the source without
/// --confirm; and a WAL segment missing in the middle of the archive stops recovery with a
/// message naming it.
#[test]
fn bad_restores_are_refused_and_change_nothing() {
    let (setup, pg) = archiving_cluster("ledger", "ledger");
    pg.psql(
        "ledger",
        "CREATE TABLE entries (id int PRIMARY KEY, amount int); \
         INSERT INTO entries SELECT i, i * 7 FROM generate_series(1, 1000) i",
    );
    let logical = snapshot_name(&setup.agent_json(&[
        "backup",
        "--database",
        "ledger",
        "--method",
        "logical",
    ]));
    let before_base = chrono::Utc::now() - chrono::Duration::seconds(1);
    let base = snapshot_name(&setup.agent_json(&["backup", "--database", "ledger"]));
    let source = pg.table_fingerprints("ledger");
    let count = snapshots(&setup, "ledger").len();

    // A target time before the base backup ended: exit 2, no data directory.
    let early = before_base.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let too_early = setup.path("too-early");
    let dir = too_early.to_string_lossy().into_owned();
    let (code, err, _) = agent_fails(
        &setup,
        &[
            "restore",
            &base,
            "--database",
            "ledger",
            "--data-dir",
            &dir,
            "--target-time",
            &early,
        ],
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--target-time") && err.contains("before") && err.contains(&base),
        "the message names the target time and the base backup: {err}"
    );
    assert!(!too_early.exists(), "no data directory is created");
    // The same with `latest`: no physical backup ends before that time.
    let (code, err, _) = agent_fails(
        &setup,
        &[
            "restore",
            "latest",
            "--database",
            "ledger",
            "--data-dir",
            &dir,
            "--target-time",
            &early,
        ],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--target-time"), "{err}");
    assert!(!too_early.exists());

    // A data directory that is not empty: exit 2, its contents untouched.
    let busy = setup.path("busy");
    std::fs::create_dir(&busy).unwrap();
    std::fs::write(busy.join("keep.txt"), "precious\n").unwrap();
    give_to_db_user(&busy);
    let busy_arg = busy.to_string_lossy().into_owned();
    let (code, err, _) = agent_fails(
        &setup,
        &[
            "restore",
            "latest",
            "--database",
            "ledger",
            "--data-dir",
            &busy_arg,
        ],
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("not empty") && err.contains(&busy_arg),
        "the message names the directory: {err}"
    );
    assert_eq!(dir_entries(&busy), ["keep.txt"]);
    assert_eq!(
        std::fs::read_to_string(busy.join("keep.txt")).unwrap(),
        "precious\n"
    );
    assert!(
        dir_entries(&setup.path(""))
            .iter()
            .all(|n| !n.contains("bulwark-partial")),
        "no staging directory left behind: {:?}",
        dir_entries(&setup.path(""))
    );

    // A full logical restore over the existing source without --confirm: exit 2, nothing
    // dropped, no pre-restore snapshot.
    let (code, err, _) = agent_fails(&setup, &["restore", &logical, "--database", "ledger"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--confirm"),
        "the message says how to go ahead: {err}"
    );
    assert_eq!(pg.table_fingerprints("ledger"), source);
    assert_eq!(snapshots(&setup, "ledger").len(), count);

    // A hole in the archive: three segments after the base backup, the middle one deleted.
    let mut segments = Vec::new();
    for round in 0..3 {
        pg.psql(
            "ledger",
            &format!("INSERT INTO entries VALUES ({}, 1)", 2000 + round),
        );
        segments.push(switch_wal(&pg));
    }
    wait_archived(&setup, &pg, "ledger", &segments[2]);
    assert!(
        segments[0] < segments[1] && segments[1] < segments[2],
        "{segments:?}"
    );
    let missing = &segments[1];
    std::fs::remove_file(wal_object(&setup, "ledger", missing)).unwrap();

    // wal-fetch tells the hole (200) from the end of the archive (1).
    let spool = setup.path("spool");
    std::fs::create_dir(&spool).unwrap();
    give_to_db_user(&spool);
    let dest = spool.join("x").to_string_lossy().into_owned();
    let out = setup.agent(&["wal-fetch", "--database", "ledger", missing, &dest]);
    let (code, err) = failure(&out);
    assert_eq!(code, 200, "{err}");
    assert!(
        err.contains(missing.as_str()) && err.contains(&segments[2]),
        "{err}"
    );
    let beyond = format!("{}{}", &segments[2][..16], "000000FF");
    let out = setup.agent(&["wal-fetch", "--database", "ledger", &beyond, &dest]);
    assert_eq!(failure(&out).0, 1, "end of the archive");

    let gap_dir = setup.path("gap");
    let port = free_port();
    let _server = RunningServer::attach(&gap_dir, port);
    let gap_arg = gap_dir.to_string_lossy().into_owned();
    let port_arg = port.to_string();
    let started = Instant::now();
    let (code, err, out) = agent_fails(
        &setup,
        &[
            "restore",
            "latest",
            "--database",
            "ledger",
            "--data-dir",
            &gap_arg,
            "--port",
            &port_arg,
            "--start",
        ],
    );
    assert!(
        code == 1 || code == 3,
        "exit {code} (expected 1: recovery failed):\n{err}{out}"
    );
    assert!(
        err.contains(missing.as_str()),
        "the message names the missing segment {missing}:\n{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(120),
        "the failure is reported promptly, not after a long wait"
    );
    assert!(
        !bulwark_tests::pg::pg_is_running(&gap_dir),
        "the half-recovered server is not left running"
    );

    // The source is as it was (plus the three rows written to make segments).
    assert_eq!(
        pg.psql("ledger", "SELECT count(*) FROM entries"),
        "1003",
        "source changed"
    );
    assert_eq!(snapshots(&setup, "ledger").len(), count);
}

/// 5. `wal-push` is what PostgreSQL retries after a crash: the same file again succeeds, other
/// bytes under an archived name are refused and the archived copy is kept.
#[test]
fn wal_push_is_idempotent_and_refuses_different_contents() {
    let (setup, pg) = archiving_cluster("walpush", "walpush");
    pg.psql(
        "walpush",
        "CREATE TABLE t AS SELECT generate_series(1, 1000) AS x",
    );
    let segment = switch_wal(&pg);
    wait_archived(&setup, &pg, "walpush", &segment);

    let spool = setup.path("spool");
    for d in ["a", "b", "c", "d"] {
        std::fs::create_dir_all(spool.join(d)).unwrap();
    }
    give_to_db_user(&spool);
    let path = |d: &str, name: &str| spool.join(d).join(name).to_string_lossy().into_owned();

    // Fetch it (restore_command's job) and push it again (what the server does on a retry).
    let fetched = path("a", &segment);
    let out = setup.agent_ok(&["wal-fetch", "--database", "walpush", &segment, &fetched]);
    assert!(out.is_empty() || !out.contains("error"), "{out}");
    let original = std::fs::read(&fetched).unwrap();
    assert_eq!(original.len(), 16 << 20, "a whole 16 MiB segment");
    for _ in 0..2 {
        let pushed = setup.agent_json(&["wal-push", "--database", "walpush", &fetched]);
        assert_eq!(pushed["already_archived"], true, "{pushed}");
    }

    // Other bytes under the archived name: refused, saying the contents differ.
    let mut changed = original.clone();
    changed[8192 + 100] ^= 0xff;
    let forged = path("b", &segment);
    std::fs::write(&forged, &changed).unwrap();
    give_to_db_user(Path::new(&forged));
    let (code, err, _) = agent_fails(&setup, &["wal-push", "--database", "walpush", &forged]);
    assert_ne!(code, 0);
    assert!(
        err.contains("differ") && err.contains(&segment),
        "the message says the contents differ and names the file: {err}"
    );
    let again = path("c", &segment);
    setup.agent_ok(&["wal-fetch", "--database", "walpush", &segment, &again]);
    assert!(
        std::fs::read(&again).unwrap() == original,
        "the archived copy is unchanged"
    );

    // A name not archived yet: stored once, then recognised.
    let fresh_name = format!("0000000A{}", &segment[8..]);
    let fresh = path("d", &fresh_name);
    std::fs::write(&fresh, &original).unwrap();
    give_to_db_user(Path::new(&fresh));
    let first = setup.agent_json(&["wal-push", "--database", "walpush", &fresh]);
    assert_eq!(first["already_archived"], false, "{first}");
    let second = setup.agent_json(&["wal-push", "--database", "walpush", &fresh]);
    assert_eq!(second["already_archived"], true, "{second}");

    // The server's own archiving carries on without failures.
    pg.psql("walpush", "INSERT INTO t VALUES (1001)");
    let next = switch_wal(&pg);
    wait_archived(&setup, &pg, "walpush", &next);
    assert_eq!(
        pg.psql("postgres", "SELECT failed_count FROM pg_stat_archiver"),
        "0"
    );
}

/// Waits until archived WAL file `name` of database `id` is in the repository.
fn wait_for_object(setup: &AgentSetup, id: &str, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !wal_object(setup, id, name).exists() {
        assert!(
            Instant::now() < deadline,
            "{name} of {id} not archived after 60 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Timeline history is archived and followed: the source is replaced by a point-in-time copy
/// (same data directory, so it keeps archiving, onto timeline 2), writes continue there, and a
/// later restore of the original timeline-1 base backup to `latest` follows the history file to
/// timeline 2 and finds the new rows.
#[test]
fn recovery_follows_archived_timeline_history() {
    let (setup, pg) = archiving_cluster("tl", "tl");
    pg.psql("tl", "CREATE TABLE t (id int PRIMARY KEY)");
    let base = snapshot_name(&setup.agent_json(&["backup", "--database", "tl"]));
    for id in 1..=3 {
        pg.psql("tl", &format!("INSERT INTO t VALUES ({id})"));
    }
    let last = switch_wal(&pg);
    wait_archived(&setup, &pg, "tl", &last);

    // Disaster: the cluster is lost and restored in place (its configured data directory).
    pg.stop();
    let lost = setup.path("lost-data");
    std::fs::rename(&pg.data_dir, &lost).unwrap();
    let data_dir = pg.data_dir.to_string_lossy().into_owned();
    let port = pg.port.to_string();
    let replaced = RunningServer::attach(&pg.data_dir, pg.port);
    let report = setup.agent_json(&[
        "restore",
        &base,
        "--database",
        "tl",
        "--data-dir",
        &data_dir,
        "--port",
        &port,
        "--start",
    ]);
    assert_eq!(report["reached"]["new_timeline"], "2", "{report}");
    assert_eq!(
        replaced.psql("tl", "SELECT string_agg(id::text, ',' ORDER BY id) FROM t"),
        "1,2,3"
    );
    // Life goes on on timeline 2, archived by the replaced server into the same database id.
    for id in 4..=5 {
        replaced.psql("tl", &format!("INSERT INTO t VALUES ({id})"));
    }
    let last = replaced.psql("postgres", "SELECT pg_walfile_name(pg_switch_wal())");
    assert!(last.starts_with("00000002"), "{last}");
    wait_for_object(&setup, "tl", "00000002.history");
    wait_for_object(&setup, "tl", &last);

    // The timeline-1 base backup, recovered to the end, follows the history onto timeline 2.
    let (server, report) = restore_started(&setup, "tl", &base, "follow", &[]);
    assert_eq!(
        server.psql("tl", "SELECT string_agg(id::text, ',' ORDER BY id) FROM t"),
        "1,2,3,4,5",
        "{report}"
    );
    assert_eq!(report["reached"]["new_timeline"], "3", "{report}");
}

/// Tablespaces are part of a physical backup and can be put elsewhere on restore.
#[test]
fn physical_backups_carry_tablespaces_and_restore_them_relocated() {
    let (setup, pg) = archiving_cluster("spc", "spc");
    let location = setup.path("fast-disk");
    std::fs::create_dir(&location).unwrap();
    give_to_db_user(&location);
    pg.psql(
        "postgres",
        &format!(
            "CREATE TABLESPACE fast LOCATION '{}'",
            location.to_string_lossy()
        ),
    );
    pg.psql("spc", "CREATE TABLE hot (id int, pad text) TABLESPACE fast");
    pg.psql(
        "spc",
        "INSERT INTO hot SELECT g, md5(g::text) FROM generate_series(1, 20000) g",
    );
    setup.agent_json(&["backup", "--database", "spc"]);
    pg.psql(
        "spc",
        "INSERT INTO hot SELECT g, md5(g::text) FROM generate_series(20001, 25000) g",
    );
    let last = switch_wal(&pg);
    wait_archived(&setup, &pg, "spc", &last);
    let source = pg.table_fingerprints("spc");

    let moved = setup.path("fast-disk-restored");
    let mapping = format!("fast={}", moved.to_string_lossy());
    let (server, report) = restore_started(
        &setup,
        "spc",
        "latest",
        "spc-restored",
        &["--tablespace-map", &mapping],
    );
    assert_eq!(server.table_fingerprints("spc"), source, "{report}");
    assert_eq!(source["public.hot"].0, 25000);
    assert_eq!(
        server.psql(
            "postgres",
            "SELECT pg_tablespace_location(oid) FROM pg_tablespace WHERE spcname = 'fast'"
        ),
        moved.to_string_lossy()
    );
    assert!(
        std::fs::read_dir(&moved).unwrap().next().is_some(),
        "the tablespace's files are in the new location"
    );
    // The source's tablespace is untouched and still serves the source.
    assert_eq!(pg.table_fingerprints("spc"), source);
}

/// Connections from a libpq DSN with the password in an environment variable, and the
/// `--repo` / `--password-file` flags overriding the configuration's repository.
#[test]
fn dsn_connections_password_env_and_repository_flags() {
    let mut setup = AgentSetup::new();
    setup.init();
    let pg = PgCluster::start(PgOptions::default());
    pg.create_database("ledger");
    pg.psql(
        "ledger",
        "CREATE TABLE entries AS SELECT g AS id, md5(g::text) AS memo FROM generate_series(1, 5000) g",
    );
    let dsn = format!(
        "host=127.0.0.1 port={} user=postgres dbname=ledger",
        pg.port
    );
    setup.add_database_toml(&format!(
        "id = \"ledger\"\ntype = \"postgresql\"\nmethod = \"logical\"\nbin_dir = {}\nconnection = {{ dsn = {}, password_env = \"LEDGER_PGPASSWORD\" }}",
        toml_str(PG_BIN_DIR),
        toml_str(&dsn)
    ));
    // Without the variable the agent says which one is missing.
    let (code, err, _) = agent_fails(&setup, &["backup", "--database", "ledger"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("LEDGER_PGPASSWORD"), "{err}");

    setup
        .extra_env
        .push(("LEDGER_PGPASSWORD".into(), pg.password.clone()));
    let backup = setup.agent_json(&["backup", "--database", "ledger"]);
    setup.agent_json(&[
        "restore",
        &snapshot_name(&backup),
        "--database",
        "ledger",
        "--into-database",
        "ledger_copy",
    ]);
    assert_eq!(
        pg.table_fingerprints("ledger_copy"),
        pg.table_fingerprints("ledger")
    );

    // --repo and --password-file win over [repository]: an empty directory is not a repository.
    let elsewhere = setup.path("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    give_to_db_user(&elsewhere);
    let other = elsewhere.to_string_lossy().into_owned();
    let (code, err, _) = agent_fails(&setup, &["snapshots", "--repo", &other]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains(&other), "{err}");
    let wrong = setup.path("wrong-passphrase");
    write_private_file(&wrong, "not the passphrase\n");
    let wrong = wrong.to_string_lossy().into_owned();
    let (code, err, _) = agent_fails(&setup, &["snapshots", "--password-file", &wrong]);
    assert_eq!(code, 4, "{err}");
}

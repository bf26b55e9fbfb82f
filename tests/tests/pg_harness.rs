//! Self-test of the PostgreSQL harness (tests/src/pg.rs): a real cluster starts on its own port,
//! takes pgbench data, is fingerprinted, stops and starts again, and is gone after drop.

use bulwark_tests::pg::{PgCluster, PgOptions, RunningServer};

#[test]
fn cluster_starts_fills_fingerprints_and_cleans_up() {
    let pg = PgCluster::start(PgOptions::default());
    assert_eq!(pg.psql("postgres", "SELECT 1 + 1"), "2");
    assert!(pg
        .try_psql("postgres", "SELECT * FROM no_such_table")
        .is_err());
    assert_eq!(pg.psql("postgres", "SHOW wal_level"), "replica");
    assert_eq!(pg.psql("postgres", "SHOW archive_mode"), "off");
    assert_eq!(pg.psql("postgres", "SHOW fsync"), "on");

    pg.pgbench_init("bench", 1);
    let prints = pg.table_fingerprints("bench");
    let keys: Vec<_> = prints.keys().cloned().collect();
    assert_eq!(
        keys,
        [
            "public.pgbench_accounts",
            "public.pgbench_branches",
            "public.pgbench_history",
            "public.pgbench_tellers"
        ]
    );
    assert_eq!(prints["public.pgbench_accounts"].0, 100_000);
    assert_eq!(prints["public.pgbench_branches"].0, 1);
    assert_eq!(prints["public.pgbench_tellers"].0, 10);
    assert_eq!(prints["public.pgbench_history"].0, 0);
    assert_eq!(prints["public.pgbench_accounts"].1.len(), 32);
    // Same data, same fingerprint; one changed row, another one.
    assert_eq!(pg.table_fingerprints("bench"), prints);
    pg.psql(
        "bench",
        "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 7",
    );
    let after = pg.table_fingerprints("bench");
    assert_ne!(
        after["public.pgbench_accounts"],
        prints["public.pgbench_accounts"]
    );
    assert_eq!(
        after["public.pgbench_tellers"],
        prints["public.pgbench_tellers"]
    );

    // Quoted names and other schemas are included.
    pg.psql(
        "bench",
        "CREATE SCHEMA \"Odd Schema\"; CREATE TABLE \"Odd Schema\".\"My Table\" (x int); \
         INSERT INTO \"Odd Schema\".\"My Table\" VALUES (1), (2)",
    );
    assert_eq!(pg.table_fingerprints("bench")["Odd Schema.My Table"].0, 2);

    // Stop and start again on the same port; data survives.
    pg.stop();
    assert!(!pg.is_running());
    assert!(pg.try_psql("postgres", "SELECT 1").is_err());
    pg.start_again();
    assert_eq!(
        pg.table_fingerprints("bench"),
        pg.table_fingerprints("bench")
    );
    assert_eq!(
        pg.psql("bench", "SELECT count(*) FROM pgbench_accounts"),
        "100000"
    );

    // A cold copy of the data directory runs as a RunningServer on another port.
    pg.stop();
    let copy = pg.path("copy");
    let status = std::process::Command::new("cp")
        .args(["-a"])
        .arg(&pg.data_dir)
        .arg(&copy)
        .status()
        .unwrap();
    assert!(status.success());
    pg.start_again();
    let port = bulwark_tests::free_port();
    {
        let copy_server = RunningServer::start(&copy, port, &[]);
        assert_eq!(
            copy_server.table_fingerprints("bench"),
            pg.table_fingerprints("bench")
        );
        assert!(copy_server.is_running());
    }
    // The guard stopped the copy on drop.
    assert!(bulwark_tests::pg::PgClient {
        port,
        password: pg.password.clone()
    }
    .try_psql("postgres", "SELECT 1")
    .is_err());

    let dir = pg.dir.path().to_path_buf();
    let data_dir = pg.data_dir.clone();
    drop(pg);
    assert!(!dir.exists(), "cluster directory left behind");
    assert!(!bulwark_tests::pg::pg_is_running(&data_dir));
}

#[test]
fn archive_command_and_extra_conf_are_applied() {
    let pg = PgCluster::start(PgOptions {
        // Quotes survive postgresql.conf (AgentSetup::wal_push_command quotes its paths).
        archive_command: Some("/bin/sh -c 'exit 0' '%p'".into()),
        extra_conf: vec!["work_mem = '8MB'".into()],
    });
    assert_eq!(pg.psql("postgres", "SHOW archive_mode"), "on");
    assert_eq!(
        pg.psql("postgres", "SHOW archive_command"),
        "/bin/sh -c 'exit 0' '%p'"
    );
    assert_eq!(pg.psql("postgres", "SHOW work_mem"), "8MB");
    // The archiver runs the command for a finished segment.
    pg.psql(
        "postgres",
        "CREATE TABLE t AS SELECT generate_series(1, 1000) x",
    );
    pg.psql("postgres", "SELECT pg_switch_wal()");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let archived = pg.psql("postgres", "SELECT archived_count FROM pg_stat_archiver");
        if archived != "0" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "nothing archived");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

#[test]
fn agent_setup_writes_a_config_the_db_user_can_read() {
    let pg = PgCluster::start(PgOptions::default());
    let mut setup = bulwark_tests::pg::AgentSetup::new();
    let app_db = setup.path("app.db");
    setup
        .add_postgres("orders", "logical", &pg, "orders")
        .add_sqlite("app", &app_db);
    let text = std::fs::read_to_string(&setup.config).unwrap();
    assert!(text.starts_with("[repository]\nlocation = "), "{text}");
    assert!(text.contains(&format!("port = {}", pg.port)), "{text}");
    assert!(text.contains("type = \"sqlite\""), "{text}");
    // The db user can read the config and the password files, and write the directory.
    let sh = std::path::Path::new("/bin/sh");
    let out = bulwark_tests::pg::as_db_user(sh)
        .arg("-c")
        .arg(format!(
            "cat {} {} {} >/dev/null && touch {}",
            setup.config.display(),
            setup.password_file.display(),
            pg.password_file.display(),
            setup.path("probe").display()
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_panicking_test_leaves_no_server_or_directory() {
    let seen = std::sync::Mutex::new(None);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let pg = PgCluster::start(PgOptions::default());
        *seen.lock().unwrap() = Some((pg.dir.path().to_path_buf(), pg.data_dir.clone(), pg.port));
        panic!("test failure while the cluster runs");
    }));
    assert!(result.is_err());
    let (dir, data_dir, port) = seen.lock().unwrap().clone().unwrap();
    assert!(!dir.exists(), "cluster directory left behind");
    assert!(!bulwark_tests::pg::pg_is_running(&data_dir));
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "server still listening on {port}"
    );
}

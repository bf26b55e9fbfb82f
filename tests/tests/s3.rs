//! The same commands against a real S3-protocol server (moto), through OpenDAL's `s3` service.

use bulwark_core::backend::{Backend, OpendalBackend};
use bulwark_tests::{dump_text, failure, random_bytes, Env, S3Server};

fn s3_env(server: &S3Server, bucket: &str) -> Env {
    let (status, _) = server.http("PUT", &format!("/{bucket}"), b"");
    assert_eq!(status, 200, "create bucket {bucket}");
    let mut env = Env::with_repo(&format!("s3://{bucket}/team-a/repo"));
    env.extra_env = server.env();
    env
}

#[test]
fn backup_restore_dedup_verify_prune_gc_on_s3() {
    let server = S3Server::start();
    let env = s3_env(&server, "backups");
    env.init();
    let data = dump_text(8 << 20, 3);
    env.backup_stdin("orders", &data);
    let second = env.backup_stdin("orders", &data);
    assert_eq!(
        second["new_chunks"], 0,
        "identical second backup stores nothing: {second}"
    );
    let out = env
        .cmd(&["restore", "latest", "--database", "orders", "--stdout"])
        .output()
        .unwrap();
    assert!(out.status.success() && out.stdout == data);

    // Directory snapshots work the same way.
    let src = env.path("tree");
    std::fs::create_dir_all(src.join("a/empty")).unwrap();
    std::fs::write(src.join("a/file"), random_bytes(300_000, 1)).unwrap();
    let snap = env.json(&[
        "backup",
        "--database",
        "files",
        "--path",
        src.to_str().unwrap(),
    ]);
    let target = env.path("restored");
    env.ok(&[
        "restore",
        snap["snapshot"].as_str().unwrap(),
        "--target",
        target.to_str().unwrap(),
    ]);
    assert_eq!(
        std::fs::read(target.join("a/file")).unwrap(),
        random_bytes(300_000, 1)
    );
    assert!(target.join("a/empty").is_dir());

    // Objects sit under the prefix with the documented names.
    let (_, listing) = server.http("GET", "/backups?list-type=2&prefix=team-a/repo/", b"");
    let listing = String::from_utf8_lossy(&listing);
    for key in [
        "team-a/repo/config",
        "team-a/repo/keys/",
        "team-a/repo/chunks/",
        "team-a/repo/snapshots/orders/backup-",
    ] {
        assert!(listing.contains(key), "{key} in {listing}");
    }

    env.backup_stdin("orders", &random_bytes(2 << 20, 9));
    env.ok(&["prune", "--keep-last", "1", "--database", "orders"]);
    let gc = env.json(&["gc"]);
    assert!(gc["deleted_chunks"].as_u64().unwrap() > 0, "{gc}");
    assert_eq!(env.json(&["verify", "--all"])["ok"], true);
}

#[test]
fn a_damaged_object_on_s3_is_named() {
    let server = S3Server::start();
    let env = s3_env(&server, "damage");
    env.init();
    let snap = env.backup_stdin("db", &random_bytes(3 << 20, 4))["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    // Damage one chunk through a signed client (moto refuses unsigned object reads). Tests that
    // open S3 in their own process set the variables there (nextest runs each test in a
    // process of its own); the others pass them to child processes.
    for (k, v) in server.env() {
        std::env::set_var(k, v);
    }
    let key = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let backend = OpendalBackend::open("s3://damage/team-a/repo", false).unwrap();
        let key = backend.list("chunks/").await.unwrap().remove(0);
        let mut blob = backend.read(&key).await.unwrap().unwrap();
        blob[1000] ^= 1;
        backend.write(&key, blob).await.unwrap();
        key
    });
    let (code, err) = failure(&env.run(&["restore", &snap, "--stdout"]));
    assert_eq!(code, 3);
    assert!(
        err.contains(&key) && err.contains("authentication failed"),
        "{err}"
    );

    let wrong_bucket = Env {
        repo: "s3://no-such-bucket/x".into(),
        ..s3_env(&server, "unused")
    };
    let (code, err) = failure(&wrong_bucket.run(&["snapshots"]));
    assert_ne!(code, 0);
    assert!(
        err.contains("no-such-bucket") || err.contains("NoSuchBucket"),
        "{err}"
    );
}

/// The backend contract on a real S3 server, exclusive create (a conditional PUT) included:
/// two agents creating one storage's repository rely on it.
#[test]
fn the_s3_backend_keeps_the_contract() {
    let server = S3Server::start();
    let (status, _) = server.http("PUT", "/contract", b"");
    assert_eq!(status, 200);
    for (k, v) in server.env() {
        std::env::set_var(k, v);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let backend = OpendalBackend::open("s3://contract/repo", false).unwrap();
        bulwark_core::backend::contract(&backend).await;
    });
}

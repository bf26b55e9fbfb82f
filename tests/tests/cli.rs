//! The agent's commands end to end on a directory repository.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, SystemTime};

use bulwark_tests::{dump_text, failure, mutate_clustered, Env};

#[test]
fn stream_round_trip_and_a_second_backup_stores_only_what_changed() {
    let env = Env::new();
    env.init();
    let data = dump_text(24 << 20, 1);
    let first = env.backup_stdin("orders", &data);
    assert_eq!(first["logical_bytes"], data.len() as u64);
    assert!(
        first["new_stored_bytes"].as_u64().unwrap() < data.len() as u64 / 3,
        "dump text compresses: {first}"
    );

    let mut changed = data.clone();
    mutate_clustered(&mut changed, 0.05, 2, 7);
    let second = env.backup_stdin("orders", &changed);
    let (new, total) = (
        second["new_logical_bytes"].as_u64().unwrap(),
        second["logical_bytes"].as_u64().unwrap(),
    );
    assert!(
        new < total / 2,
        "a 5% clustered change stores far less than the whole: {second}"
    );

    let snaps = env.snapshots("orders");
    assert_eq!(snaps.len(), 2);
    for field in [
        "name",
        "time",
        "kind",
        "logical_bytes",
        "new_stored_bytes",
        "chunks",
        "dedup_ratio",
    ] {
        assert!(
            !snaps[1][field].is_null(),
            "snapshots --json has {field}: {}",
            snaps[1]
        );
    }
    assert!(snaps[1]["dedup_ratio"].as_f64().unwrap() > 2.0);
    let text = env.ok(&["snapshots"]);
    assert!(
        text.contains("DEDUP") && text.contains(snaps[1]["name"].as_str().unwrap()),
        "{text}"
    );

    let out = env
        .cmd(&["restore", "latest", "--database", "orders", "--stdout"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(
        out.stdout == changed,
        "latest restores the second backup byte for byte"
    );
    let file = env.path("first.sql");
    let name = snaps[0]["name"].as_str().unwrap();
    env.ok(&["restore", name, "--output", file.to_str().unwrap()]);
    assert!(fs::read(&file).unwrap() == data);
    let (code, err) = failure(&env.run(&["restore", name, "--output", file.to_str().unwrap()]));
    assert_eq!(code, 2);
    assert!(err.contains("already exists"), "{err}");
}

fn set_mtime(path: &Path, secs: u64) {
    let t = SystemTime::UNIX_EPOCH + Duration::new(secs, 123_000_000);
    fs::File::open(path).unwrap().set_modified(t).unwrap();
}

/// A tree with every kind of entry the format promises to keep.
fn make_tree(root: &Path) {
    fs::create_dir_all(root.join("etc/conf.d")).unwrap();
    fs::create_dir_all(root.join("var/empty")).unwrap();
    fs::create_dir_all(root.join("data")).unwrap();
    fs::write(root.join("etc/app.conf"), "listen = 5432\n").unwrap();
    fs::write(root.join("etc/conf.d/secret"), "token").unwrap();
    fs::set_permissions(
        root.join("etc/conf.d/secret"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    fs::write(
        root.join("data/big.bin"),
        bulwark_tests::random_bytes(5 << 20, 3),
    )
    .unwrap();
    fs::write(root.join("data/empty-file"), "").unwrap();
    fs::write(root.join("run.sh"), "#!/bin/sh\n").unwrap();
    fs::set_permissions(root.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(
        root.join(std::ffi::OsStr::from_bytes(b"caf\xe9-latin1.txt")),
        "non-UTF-8 name",
    )
    .unwrap();
    std::os::unix::fs::symlink("../etc/app.conf", root.join("data/link-to-conf")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/target", root.join("dangling")).unwrap();
    fs::set_permissions(root.join("var"), fs::Permissions::from_mode(0o750)).unwrap();
    for (i, p) in [
        "etc/app.conf",
        "data/big.bin",
        "run.sh",
        "etc/conf.d",
        "var/empty",
        "etc",
    ]
    .iter()
    .enumerate()
    {
        set_mtime(&root.join(p), 1_700_000_000 + i as u64 * 1000);
    }
}

/// Every entry below `root` with what a restore must keep.
fn describe(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let m = fs::symlink_metadata(&p).unwrap();
            if m.file_type().is_symlink() {
                out.push(format!(
                    "link {rel} -> {}",
                    fs::read_link(&p).unwrap().display()
                ));
            } else if m.is_dir() {
                out.push(format!(
                    "dir {rel} {:o} {}.{}",
                    m.mode() & 0o7777,
                    m.mtime(),
                    m.mtime_nsec()
                ));
                stack.push(p);
            } else {
                let sum: u64 = fs::read(&p).unwrap().iter().map(|b| *b as u64).sum();
                out.push(format!(
                    "file {rel} {:o} {}.{} {} {sum}",
                    m.mode() & 0o7777,
                    m.mtime(),
                    m.mtime_nsec(),
                    m.len()
                ));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn directory_round_trip_keeps_modes_mtimes_symlinks_and_empty_dirs() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    make_tree(&src);
    let backup = env.json(&[
        "backup",
        "--database",
        "files",
        "--path",
        src.to_str().unwrap(),
        "--tag",
        "env=test",
    ]);
    let name = backup["snapshot"].as_str().unwrap();

    let target = env.path("restored");
    env.ok(&["restore", name, "--target", target.to_str().unwrap()]);
    assert_eq!(describe(&target), describe(&src));

    // A single file and a sub-tree, by path.
    let one = env.path("one");
    env.ok(&[
        "restore",
        name,
        "--target",
        one.to_str().unwrap(),
        "--include",
        "etc/conf.d/secret",
    ]);
    assert_eq!(fs::read(one.join("etc/conf.d/secret")).unwrap(), b"token");
    assert!(!one.join("etc/app.conf").exists() && !one.join("data").exists());
    let sub = env.path("sub");
    env.ok(&[
        "restore",
        name,
        "--target",
        sub.to_str().unwrap(),
        "--include",
        "data",
    ]);
    assert_eq!(
        fs::read_link(sub.join("data/link-to-conf")).unwrap(),
        Path::new("../etc/app.conf")
    );
    assert_eq!(
        fs::metadata(sub.join("data/big.bin")).unwrap().len(),
        5 << 20
    );
    assert!(!sub.join("etc").exists());

    // An unknown path and a non-empty target are refused, and the target is left alone.
    let (code, err) = failure(&env.run(&[
        "restore",
        name,
        "--target",
        env.path("x").to_str().unwrap(),
        "--include",
        "nope",
    ]));
    assert_eq!(code, 2);
    assert!(err.contains("nope"), "{err}");
    let (code, err) = failure(&env.run(&["restore", name, "--target", target.to_str().unwrap()]));
    assert_eq!(code, 2);
    assert!(err.contains("not empty"), "{err}");
    assert_eq!(describe(&target), describe(&src));
    let (code, err) = failure(&env.run(&["restore", name, "--stdout"]));
    assert_eq!(code, 2);
    assert!(err.contains("--target"), "{err}");
}

#[test]
fn wrong_passphrase_exits_4_and_keys_can_be_added_and_removed() {
    let env = Env::new();
    env.init();
    env.backup_stdin("db", b"hello");
    let wrong = env.path("wrong");
    fs::write(&wrong, "not it\n").unwrap();
    let (code, err) = failure(
        &env.cmd(&["snapshots", "--password-file", wrong.to_str().unwrap()])
            .output()
            .unwrap(),
    );
    assert_eq!(code, 4);
    assert!(
        err.contains("wrong passphrase") && err.contains(&env.repo),
        "{err}"
    );

    let second = env.path("second");
    fs::write(&second, "second passphrase\n").unwrap();
    let added = env.json(&[
        "repo",
        "key",
        "add",
        "--new-password-file",
        second.to_str().unwrap(),
        "--kdf-memory-mib",
        "8",
        "--kdf-iterations",
        "1",
        "--label",
        "dr",
    ]);
    let keys = env.json(&["repo", "key", "list"]);
    assert_eq!(keys.as_array().unwrap().len(), 2);
    let first_id = keys
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] != added["key_id"])
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let with_second = |args: &[&str]| {
        let mut c = env.cmd(args);
        c.env("BULWARK_PASSWORD_FILE", &second);
        c.output().unwrap()
    };
    let out = with_second(&["restore", "latest", "--database", "db", "--stdout"]);
    assert_eq!(out.stdout, b"hello", "the master key did not change");
    assert!(with_second(&["repo", "key", "remove", &first_id])
        .status
        .success());
    let (code, _) = failure(&env.run(&["snapshots"]));
    assert_eq!(
        code, 4,
        "the removed passphrase no longer opens the repository"
    );
    let (code, err) = failure(&with_second(&[
        "repo",
        "key",
        "remove",
        added["key_id"].as_str().unwrap(),
    ]));
    assert_eq!(code, 2);
    assert!(err.contains("last intact key slot"), "{err}");
}

#[test]
fn prune_dry_run_explains_and_prune_then_gc_reclaims() {
    let env = Env::new();
    env.init();
    for seed in 0..3 {
        env.backup_stdin("db", &bulwark_tests::random_bytes(2 << 20, seed));
    }
    let plan = env.ok(&["prune", "--keep-last", "1", "--dry-run"]);
    assert!(
        plan.contains("would remove")
            && plan.contains("matches no keep rule")
            && plan.contains("last 1"),
        "{plan}"
    );
    assert_eq!(env.snapshots("db").len(), 3, "dry run deleted nothing");
    let (code, err) = failure(&env.run(&["prune"]));
    assert_eq!(code, 2);
    assert!(err.contains("--keep-"), "{err}");

    let pruned = env.json(&["prune", "--keep-last", "1"]);
    assert_eq!(pruned["deleted"], 2);
    let remaining = env.snapshots("db");
    assert_eq!(remaining.len(), 1);
    let dry = env.json(&["gc", "--dry-run"]);
    assert!(dry["unreferenced_chunks"].as_u64().unwrap() >= 2, "{dry}");
    let gc = env.json(&["gc"]);
    assert_eq!(gc["deleted_chunks"], dry["unreferenced_chunks"]);
    assert!(gc["deleted_bytes"].as_u64().unwrap() >= 4 << 20, "{gc}");
    assert_eq!(env.json(&["verify", "--all"])["ok"], true);
    let out = env
        .cmd(&["restore", "latest", "--database", "db", "--stdout"])
        .output()
        .unwrap();
    assert!(out.stdout == bulwark_tests::random_bytes(2 << 20, 2));
}

#[test]
fn help_explains_and_bad_flags_exit_2() {
    let env = Env::new();
    let help = env.ok(&["--help"]);
    assert!(
        help.contains("Exit codes") && help.contains("s3://bucket/prefix"),
        "{help}"
    );
    let backup_help = env.ok(&["backup", "--help"]);
    assert!(
        backup_help.contains("--stdin") && backup_help.contains("--tag"),
        "{backup_help}"
    );
    let (code, err) = failure(&env.run(&["backup", "--database", "db"]));
    assert_eq!(code, 2, "{err}");
    let (code, err) = failure(&env.run(&["snapshots"]));
    assert_eq!(code, 2, "no repository yet: {err}");
    assert!(err.contains("repo init"), "{err}");
    env.init();
    let (code, err) = failure(&env.run_stdin(&["backup", "--database", "../etc", "--stdin"], b"x"));
    assert_eq!(code, 2);
    assert!(err.contains("database id"), "{err}");
    let (code, err) = failure(&env.run(&["repo", "init"]));
    assert_eq!(code, 2);
    assert!(err.contains("already exists"), "{err}");
}

#[test]
fn a_generated_machine_key_opens_the_repository_and_is_never_overwritten() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    env.init();
    env.backup_stdin("db", b"machine");
    let key = env.path("machine.key");
    let added = env.json(&[
        "repo",
        "key",
        "add",
        "--generate",
        key.to_str().unwrap(),
        "--label",
        "wal",
    ]);
    let text = fs::read_to_string(&key).unwrap();
    assert_eq!(text.trim().len(), 64, "a 256-bit key in hex: {text:?}");
    assert_eq!(
        fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let keys = env.json(&["repo", "key", "list"]);
    let slot = keys
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == added["key_id"])
        .unwrap();
    assert_eq!(slot["kdf"]["memory_kib"], 8192);
    let out = env
        .cmd(&["restore", "latest", "--database", "db", "--stdout"])
        .env("BULWARK_PASSWORD_FILE", &key)
        .output()
        .unwrap();
    assert_eq!(out.stdout, b"machine");
    let (code, err) =
        failure(&env.run(&["repo", "key", "add", "--generate", key.to_str().unwrap()]));
    assert_ne!(code, 0);
    assert!(err.contains("must not exist"), "{err}");
    assert_eq!(
        fs::read_to_string(&key).unwrap(),
        text,
        "the existing key file is untouched"
    );
}

/// A repository path that is a file gets our message, not the storage library's.
#[test]
fn a_repository_path_that_is_a_file_is_named_as_such() {
    let env = Env::new();
    let file = env.path("not-a-dir");
    fs::write(&file, "x").unwrap();
    let (code, err) = failure(&env.run(&["snapshots", "--repo", file.to_str().unwrap()]));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(file.to_str().unwrap()) && err.contains("is a file, not a directory"),
        "{err}"
    );
    assert!(
        !err.contains("NotADirectory") && !err.contains("context:"),
        "{err}"
    );
}

/// A passphrase file that cannot be read is a usage error (2) naming the file and the flag.
#[test]
fn a_missing_passphrase_file_is_a_usage_error() {
    let env = Env::new();
    env.init();
    let missing = env.path("no-such-passphrase");
    let (code, err) =
        failure(&env.run(&["snapshots", "--password-file", missing.to_str().unwrap()]));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(missing.to_str().unwrap()) && err.contains("--password-file"),
        "{err}"
    );
}

/// An edited repository id is not a wrong passphrase: every slot was made for another id.
#[test]
fn an_edited_repository_id_is_not_a_wrong_passphrase() {
    let env = Env::new();
    env.init();
    let config = Path::new(&env.repo).join("config");
    let text = fs::read_to_string(&config).unwrap();
    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
    let id = value["id"].as_str().unwrap().to_string();
    let edited = format!(
        "{}{}",
        if id.starts_with('0') { "1" } else { "0" },
        &id[1..]
    );
    fs::write(&config, text.replace(&id, &edited)).unwrap();
    let (code, err) = failure(&env.run(&["snapshots"]));
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("repository config id") && err.contains(&edited) && err.contains(&id),
        "{err}"
    );
    assert!(!err.contains("wrong passphrase"), "{err}");
}

/// An empty keys/ is not a wrong passphrase either.
#[test]
fn an_empty_keys_directory_is_not_a_wrong_passphrase() {
    let env = Env::new();
    env.init();
    for slot in fs::read_dir(Path::new(&env.repo).join("keys")).unwrap() {
        fs::remove_file(slot.unwrap().path()).unwrap();
    }
    let (code, err) = failure(&env.run(&["snapshots"]));
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("no key slots under keys/") && err.contains("keys are missing"),
        "{err}"
    );
}

//! A backup and garbage collection running at the same time, as separate processes.

use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

use bulwark_tests::{random_bytes, Env};

/// The dangerous case: GC marks while a backup is running that reuses chunks no snapshot
/// references any more (their snapshot was just pruned). GC must spare them.
#[test]
fn gc_during_a_backup_that_reuses_unreferenced_chunks() {
    let env = Env::new();
    env.init();
    let data = random_bytes(12 << 20, 5);
    env.backup_stdin("db", &data);
    env.backup_stdin("db", b"newer, unrelated");
    env.ok(&["prune", "--keep-last", "1"]); // the chunks of `data` are now garbage
    assert!(
        env.json(&["gc", "--dry-run"])["unreferenced_chunks"]
            .as_u64()
            .unwrap()
            >= 3
    );

    // A slow backup of the same data: it knows those chunks as stored and will not rewrite them.
    let mut backup = env
        .cmd(&["--json", "backup", "--database", "db2", "--stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = backup.stdin.take().unwrap();
    stdin.write_all(&data[..4 << 20]).unwrap();
    std::thread::sleep(Duration::from_millis(500)); // the backup has its lease and chunk list

    let started = Instant::now();
    let gc = env
        .cmd(&["--json", "gc", "--wait", "120"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    stdin.write_all(&data[4 << 20..]).unwrap();
    drop(stdin);
    let backup = backup.wait_with_output().unwrap();
    assert!(
        backup.status.success(),
        "{}",
        String::from_utf8_lossy(&backup.stderr)
    );
    let gc = gc.wait_with_output().unwrap();
    assert!(
        gc.status.success(),
        "{}",
        String::from_utf8_lossy(&gc.stderr)
    );
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "gc waited for the running backup"
    );

    let b: serde_json::Value = serde_json::from_slice(&backup.stdout).unwrap();
    let g: serde_json::Value = serde_json::from_slice(&gc.stdout).unwrap();
    assert_eq!(b["new_chunks"], 0, "the backup reused the old chunks: {b}");
    assert!(g["spared_by_new_backups"].as_u64().unwrap() >= 3, "{g}");
    assert_eq!(g["deleted_chunks"], 0, "{g}");

    assert_eq!(env.json(&["verify", "--all"])["ok"], true);
    let out = env
        .cmd(&["restore", "latest", "--database", "db2", "--stdout"])
        .output()
        .unwrap();
    assert!(out.status.success() && out.stdout == data);
}

/// Two backups and a GC started together all succeed; GC deletes only true garbage.
#[test]
fn concurrent_backups_and_gc_leave_every_snapshot_restorable() {
    let env = Env::new();
    env.init();
    env.backup_stdin("old", &random_bytes(3 << 20, 40));
    env.backup_stdin("old", b"x");
    env.ok(&["prune", "--keep-last", "1"]);
    let inputs: Vec<Vec<u8>> = (0..2).map(|i| random_bytes(6 << 20, 50 + i)).collect();
    let backups: Vec<_> = inputs
        .iter()
        .enumerate()
        .map(|(i, data)| {
            let mut c = env
                .cmd(&["backup", "--database", &format!("db{i}"), "--stdin"])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let mut stdin = c.stdin.take().unwrap();
            let data = data.clone();
            std::thread::spawn(move || stdin.write_all(&data));
            c
        })
        .collect();
    let gc = env.cmd(&["--json", "gc"]).output().unwrap();
    for b in backups {
        let out = b.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(
        gc.status.success(),
        "{}",
        String::from_utf8_lossy(&gc.stderr)
    );
    assert_eq!(env.json(&["verify", "--all"])["ok"], true);
    for (i, data) in inputs.iter().enumerate() {
        let out = env
            .cmd(&[
                "restore",
                "latest",
                "--database",
                &format!("db{i}"),
                "--stdout",
            ])
            .output()
            .unwrap();
        assert!(out.stdout == *data, "db{i} restores");
    }
}

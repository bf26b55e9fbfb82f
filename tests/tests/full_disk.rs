//! A backup that fills the disk: the repository stays consistent and, once space is freed,
//! the next backup succeeds. Uses a real, small tmpfs (needs root, as CI has); set
//! BULWARK_SKIP_MOUNT_TESTS=1 to skip on a machine where mounting is not allowed.

use std::path::Path;
use std::process::Command;

use bulwark_tests::{failure, random_bytes, Env};

struct Mount(std::path::PathBuf);

impl Mount {
    fn tmpfs(dir: &Path, size: &str) -> Option<Mount> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            assert!(
                std::env::var("BULWARK_SKIP_MOUNT_TESTS").is_ok(),
                "cannot mount a tmpfs at {} (not root?); set BULWARK_SKIP_MOUNT_TESTS=1 to skip this test",
                dir.display()
            );
            return None;
        }
        Some(Mount(dir.to_path_buf()))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_during_backup() {
    let scratch = Env::new();
    let mount_dir = scratch.path("small-disk");
    let Some(_mount) = Mount::tmpfs(&mount_dir, "24m") else {
        return;
    };
    let env = Env::with_repo(mount_dir.join("repo").to_str().unwrap());
    env.init();
    let first = random_bytes(4 << 20, 1);
    env.backup_stdin("db", &first);

    let (code, err) = failure(&env.run_stdin(
        &["backup", "--database", "db", "--stdin"],
        &random_bytes(40 << 20, 2),
    ));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("No space left on device") && err.contains("no snapshot was written"),
        "{err}"
    );

    // Consistent: one snapshot, intact, no leftover lease.
    assert_eq!(env.snapshots("db").len(), 1);
    assert_eq!(env.json(&["verify", "--all"])["ok"], true);
    assert_eq!(
        std::fs::read_dir(mount_dir.join("repo/locks"))
            .map(|d| d.count())
            .unwrap_or(0),
        0
    );

    // gc reclaims what the failed backup stored; the next backup succeeds.
    let gc = env.json(&["gc"]);
    assert!(gc["deleted_chunks"].as_u64().unwrap() > 0, "{gc}");
    let third = random_bytes(6 << 20, 3);
    env.backup_stdin("db", &third);
    assert_eq!(env.json(&["verify", "--all"])["ok"], true);
    let out = env
        .cmd(&["restore", "latest", "--database", "db", "--stdout"])
        .output()
        .unwrap();
    assert!(out.stdout == third);
}

/// The disk fills up after the chunks are stored, so the manifest write is what fails: the
/// lease is still released, and gc (what frees the space) runs at once on the full disk.
#[test]
fn a_full_disk_at_the_manifest_write_releases_the_lease() {
    use std::io::Write;
    use std::process::Stdio;

    let scratch = Env::new();
    let mount_dir = scratch.path("small-disk");
    let Some(_mount) = Mount::tmpfs(&mount_dir, "16m") else {
        return;
    };
    let env = Env::with_repo(mount_dir.join("repo").to_str().unwrap());
    env.init();
    let data = random_bytes(2 << 20, 5);
    env.backup_stdin("db", &data);
    // A second snapshot of the same data writes no chunk: only its lease and its manifest.
    let mut backup = env
        .cmd(&["backup", "--database", "db", "--stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let locks = mount_dir.join("repo/locks");
    let count = |dir: &Path| std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while count(&locks) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the backup took no lease"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // Now fill the disk to the last byte.
    let mut filler = std::fs::File::create(mount_dir.join("filler")).unwrap();
    let block = vec![0xa5u8; 64 << 10];
    loop {
        match filler.write(&block) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(28) => break,
            Err(e) => panic!("{e}"),
        }
    }
    for size in [4096, 512, 1] {
        while filler.write(&block[..size]).is_ok_and(|n| n > 0) {}
    }
    let mut stdin = backup.stdin.take().unwrap();
    stdin.write_all(&data).unwrap();
    drop(stdin);
    let out = backup.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("No space left on device") && err.contains("manifest"),
        "{err}"
    );
    assert_eq!(count(&locks), 0, "the failed commit left its lease");

    let gc = env.json(&["gc", "--wait", "0"]);
    assert_eq!(gc["stale_leases_removed"], 0, "{gc}");
    assert_eq!(env.snapshots("db").len(), 1);
}

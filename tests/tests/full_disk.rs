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

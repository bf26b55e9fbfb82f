//! What interrupted processes leave behind: leases (SIGTERM releases them; a killed process's
//! lease is stale at once on its own host), `tmp/` files of killed backups (removed by the next
//! backup, a live one's kept) and a killed restore's partial file (removed by the next restore
//! into the same directory).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bulwark_tests::{failure, random_bytes, Env};

/// A backup reading from a pipe we keep open: it holds its lease until we close or kill it.
fn blocked_backup(env: &Env, db: &str) -> Child {
    let mut child = env
        .cmd(&["backup", "--database", db, "--stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .as_mut()
        .unwrap()
        .write_all(b"some bytes, more to come")
        .unwrap();
    child
}

fn locks(env: &Env) -> Vec<PathBuf> {
    entries(&Path::new(&env.repo).join("locks"))
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default()
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until `pid` holds a lease in the repository.
fn wait_for_lease_of(env: &Env, pid: u32) {
    wait_for("the backup's lease", || {
        locks(env).iter().any(|p| {
            std::fs::read_to_string(p).is_ok_and(|t| t.contains(&format!("\"pid\":{pid},")))
        })
    });
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {}", child.id());
}

/// The `tmp/` directory of process `pid` (named `<scope>-<pid>-<start>.<n>`).
fn temp_dir_of(env: &Env, pid: u32) -> PathBuf {
    let dirs = entries(&Path::new(&env.repo).join("tmp"));
    dirs.into_iter()
        .find(|d| {
            d.file_name()
                .unwrap()
                .to_string_lossy()
                .contains(&format!("-{pid}-"))
        })
        .unwrap_or_else(|| panic!("no tmp/ directory of pid {pid}"))
}

#[test]
fn sigterm_releases_the_lease_and_a_live_holder_is_named_with_how_to_clear_it() {
    let env = Env::new();
    env.init();
    let mut backup = blocked_backup(&env, "db");
    // Busy when the signal comes: data keeps flowing until the pipe breaks.
    let mut stdin = backup.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || {
        let block = random_bytes(1 << 20, 9);
        while stdin.write_all(&block).is_ok() {}
    });
    wait_for_lease_of(&env, backup.id());

    // A live backup: gc refuses, naming the holder, the file, and when deleting it is safe.
    let (code, err) = failure(&env.run(&["gc", "--wait", "0"]));
    assert_eq!(code, 1, "{err}");
    let lease = locks(&env).pop().unwrap();
    let name = format!("locks/{}", lease.file_name().unwrap().to_string_lossy());
    for part in [
        "deleted nothing",
        "backup of db",
        &format!("pid {}", backup.id()),
        &name,
        "safe only when the process is gone",
    ] {
        assert!(err.contains(part), "{part:?} missing from: {err}");
    }

    signal(&backup, "-TERM");
    let out = backup.wait_with_output().unwrap();
    feeder.join().unwrap();
    assert_eq!(out.status.code(), Some(130), "{out:?}");
    assert!(locks(&env).is_empty(), "lease left: {:?}", locks(&env));
    // Idle when the signal comes, several times over: the release must not be a race with the
    // process exiting.
    for round in 0..8 {
        let idle = blocked_backup(&env, "db");
        wait_for_lease_of(&env, idle.id());
        signal(&idle, "-TERM");
        let out = idle.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(130), "{out:?}");
        assert!(
            locks(&env).is_empty(),
            "round {round}: lease left: {:?}",
            locks(&env)
        );
    }
    let started = Instant::now();
    let gc = env.json(&["gc", "--wait", "0"]);
    assert_eq!(gc["stale_leases_removed"], 0, "{gc}");
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[test]
fn a_killed_backups_lease_is_stale_at_once_and_its_temp_files_go_with_the_next_backup() {
    let env = Env::new();
    env.init();
    let mut killed = blocked_backup(&env, "db");
    let pid = killed.id();
    wait_for_lease_of(&env, pid);
    let dead_tmp = temp_dir_of(&env, pid);
    signal(&killed, "-KILL");
    killed.wait().unwrap();
    assert_eq!(locks(&env).len(), 1, "kill -9 cannot release its lease");
    // What a write in flight at the kill leaves: a partial object in the writer's directory.
    std::fs::write(dead_tmp.join("0123abcd.partial"), random_bytes(1 << 20, 1)).unwrap();

    // A live backup's temporary files must survive the clean-up.
    let mut live = blocked_backup(&env, "other");
    wait_for_lease_of(&env, live.id());
    let live_file = temp_dir_of(&env, live.id()).join("in-flight.partial");
    std::fs::write(&live_file, b"being written").unwrap();

    env.backup_stdin("db", &random_bytes(100_000, 2));
    assert!(!dead_tmp.exists(), "{} left behind", dead_tmp.display());
    assert!(
        live_file.exists(),
        "a live backup's temporary file was removed"
    );

    signal(&live, "-TERM");
    live.wait().unwrap();
    // The killed backup's lease is 300 s from expiring, but its process is gone: gc goes ahead.
    let started = Instant::now();
    let gc = env.json(&["gc", "--wait", "0"]);
    assert_eq!(gc["stale_leases_removed"], 1, "{gc}");
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(locks(&env).is_empty());
}

#[test]
fn a_killed_restores_partial_file_goes_with_the_next_restore_into_the_same_directory() {
    let env = Env::new();
    env.init();
    let data = random_bytes(48 << 20, 3);
    env.backup_stdin("db", &data);
    let out_dir = env.path("restored");
    std::fs::create_dir(&out_dir).unwrap();
    let partials = || -> Vec<PathBuf> {
        entries(&out_dir)
            .into_iter()
            .filter(|p| p.to_string_lossy().contains("bulwark-partial"))
            .collect()
    };

    let first = out_dir.join("first.bin");
    let mut restore = env
        .cmd(&["restore", "latest", "--database", "db", "--output"])
        .arg(&first)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("a partial file with data in it", || {
        partials()
            .iter()
            .any(|p| std::fs::metadata(p).is_ok_and(|m| m.len() > 0))
    });
    signal(&restore, "-KILL");
    restore.wait().unwrap();
    assert_eq!(partials().len(), 1, "the killed restore's partial file");
    assert!(!first.exists());

    let second = out_dir.join("second.bin");
    env.ok(&[
        "restore",
        "latest",
        "--database",
        "db",
        "--output",
        second.to_str().unwrap(),
    ]);
    assert!(partials().is_empty(), "left behind: {:?}", partials());
    assert!(std::fs::read(&second).unwrap() == data);
}

#[test]
fn a_killed_tree_restores_staging_directory_goes_with_the_next_restore() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("big"), random_bytes(32 << 20, 4)).unwrap();
    env.ok(&["backup", "--database", "t", "--path", src.to_str().unwrap()]);
    let parent = env.path("out");
    std::fs::create_dir(&parent).unwrap();
    let staging = || -> Vec<PathBuf> {
        entries(&parent)
            .into_iter()
            .filter(|p| p.to_string_lossy().contains("bulwark-partial"))
            .collect()
    };
    let mut restore = env
        .cmd(&["restore", "latest", "--database", "t", "--target"])
        .arg(parent.join("a"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("a staging directory with data in it", || {
        staging()
            .iter()
            .any(|p| std::fs::metadata(p.join("big")).is_ok_and(|m| m.len() > 0))
    });
    signal(&restore, "-KILL");
    restore.wait().unwrap();
    assert_eq!(staging().len(), 1);

    env.ok(&[
        "restore",
        "latest",
        "--database",
        "t",
        "--target",
        parent.join("b").to_str().unwrap(),
    ]);
    assert!(staging().is_empty(), "left behind: {:?}", staging());
    assert!(!parent.join("a").exists());
    assert_eq!(
        std::fs::read(parent.join("b/big")).unwrap(),
        std::fs::read(src.join("big")).unwrap()
    );
}

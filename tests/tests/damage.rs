//! Damaged repositories and hostile snapshots: every case fails with a clear message naming the
//! object, a distinct exit code, and no partial output under the requested name.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bulwark_core::archive::{Entry, EntryKind, PathBytes, INDEX_MEDIA_TYPE};
use bulwark_core::backend::{DynBackend, OpendalBackend};
use bulwark_core::manifest::{SnapshotKind, Source};
use bulwark_core::repo::backup::BackupOptions;
use bulwark_core::repo::Repository;
use bulwark_tests::{failure, random_bytes, Env};

/// A repository with one 6 MiB stream snapshot; returns its name.
fn repo_with_snapshot(env: &Env) -> String {
    env.init();
    env.backup_stdin("db", &random_bytes(6 << 20, 1))["snapshot"]
        .as_str()
        .unwrap()
        .to_string()
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

fn chunk_files(env: &Env) -> Vec<PathBuf> {
    files_under(&Path::new(&env.repo).join("chunks"))
}

fn flip(path: &Path, offset: usize) {
    let mut bytes = fs::read(path).unwrap();
    let at = offset.min(bytes.len() - 1);
    bytes[at] ^= 0x04;
    fs::write(path, bytes).unwrap();
}

/// Restoring to a file fails with exit 3 naming `object`, and the file is not created.
fn assert_restore_fails(env: &Env, snapshot: &str, object: &str) {
    let out = env.path("restored.bin");
    let (code, err) = failure(&env.run(&["restore", snapshot, "--output", out.to_str().unwrap()]));
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains(object) && err.contains(snapshot),
        "message names {object} and the snapshot: {err}"
    );
    assert!(!out.exists(), "no partial output under the final name");
    let leftovers: Vec<_> = fs::read_dir(env.dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("partial"))
        .collect();
    assert!(leftovers.is_empty(), "temporary file removed");
    let (code, report) = failure(&env.run(&["verify", "--all"]));
    assert_eq!(code, 3);
    let report =
        String::from_utf8_lossy(&env.run(&["verify", "--all"]).stdout).into_owned() + &report;
    assert!(
        report.contains("DAMAGED") && report.contains(object),
        "{report}"
    );
}

fn rel(env: &Env, p: &Path) -> String {
    p.strip_prefix(&env.repo)
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

#[test]
fn a_flipped_bit_in_a_chunk() {
    let env = Env::new();
    let snap = repo_with_snapshot(&env);
    let chunk = chunk_files(&env)[0].clone();
    flip(&chunk, 5000);
    assert_restore_fails(&env, &snap, &rel(&env, &chunk));
}

#[test]
fn a_flipped_bit_in_a_chunk_header() {
    let env = Env::new();
    let snap = repo_with_snapshot(&env);
    let chunk = chunk_files(&env)[1].clone();
    flip(&chunk, 9); // the plaintext length field
    assert_restore_fails(&env, &snap, &rel(&env, &chunk));
}

#[test]
fn a_truncated_chunk() {
    let env = Env::new();
    let snap = repo_with_snapshot(&env);
    let chunk = chunk_files(&env)[0].clone();
    let bytes = fs::read(&chunk).unwrap();
    fs::write(&chunk, &bytes[..bytes.len() / 2]).unwrap();
    assert_restore_fails(&env, &snap, &rel(&env, &chunk));
}

#[test]
fn a_missing_chunk() {
    let env = Env::new();
    let snap = repo_with_snapshot(&env);
    let chunk = chunk_files(&env).pop().unwrap();
    fs::remove_file(&chunk).unwrap();
    assert_restore_fails(&env, &snap, &rel(&env, &chunk));
    let out = env.run(&["verify", "--all"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("missing"));
}

#[test]
fn an_unknown_blob_version() {
    let env = Env::new();
    let snap = repo_with_snapshot(&env);
    let chunk = chunk_files(&env)[0].clone();
    let mut bytes = fs::read(&chunk).unwrap();
    bytes[4] = 9;
    fs::write(&chunk, bytes).unwrap();
    let out = env.run(&["verify", &snap]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stdout.contains("blob format version 9 is not supported"),
        "{stdout}"
    );
}

#[test]
fn a_flipped_bit_in_a_manifest() {
    let env = Env::new();
    let snap = repo_with_snapshot(&env);
    let manifest = Path::new(&env.repo).join("snapshots/db").join(&snap);
    flip(&manifest, 200);
    let (code, err) = failure(&env.run(&["restore", &snap, "--stdout"]));
    assert_eq!(code, 3);
    assert!(
        err.contains(&format!("snapshots/db/{snap}")) && err.contains("authentication failed"),
        "{err}"
    );
    let out = env.run(&["snapshots"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "snapshots reports the damaged manifest"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains(&snap));
}

#[test]
fn a_flipped_bit_in_the_key_slot() {
    let env = Env::new();
    repo_with_snapshot(&env);
    let slot = files_under(&Path::new(&env.repo).join("keys")).remove(0);
    flip(&slot, 150);
    let (code, err) = failure(&env.run(&["snapshots"]));
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains(&rel(&env, &slot)) && err.contains("damaged"),
        "{err}"
    );
}

#[test]
fn an_unknown_repository_version() {
    let env = Env::new();
    repo_with_snapshot(&env);
    let config = Path::new(&env.repo).join("config");
    let text = fs::read_to_string(&config)
        .unwrap()
        .replace("\"version\": 1", "\"version\": 7");
    fs::write(&config, text).unwrap();
    let (code, err) = failure(&env.run(&["snapshots"]));
    assert_eq!(code, 2);
    assert!(
        err.contains("format version 7") && err.contains("upgrade"),
        "{err}"
    );
}

fn entry(path: &[u8], kind: EntryKind) -> Entry {
    Entry::new(path, kind)
}

/// Writes a tree snapshot whose index is `entries` (as a malicious or buggy writer holding the
/// key could), through the library.
fn hostile_snapshot(env: &Env, entries: Vec<Entry>) -> String {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let backend: DynBackend = Arc::new(OpendalBackend::open(&env.repo, false).unwrap());
        let repo = Repository::open(backend, b"correct horse battery staple")
            .await
            .unwrap();
        let opts = BackupOptions {
            database_id: "files".into(),
            database_type: "files".into(),
            kind: SnapshotKind::Manual,
            source: Source::Tree,
            tags: BTreeMap::new(),
        };
        let mut s = repo.start_backup(opts).await.unwrap();
        s.add_stream(
            "data",
            "application/octet-stream",
            std::io::Cursor::new(b"pwned!".to_vec()),
        )
        .await
        .unwrap();
        let index: Vec<u8> = entries
            .iter()
            .flat_map(|e| serde_json::to_vec(e).unwrap().into_iter().chain([b'\n']))
            .collect();
        s.add_stream("index", INDEX_MEDIA_TYPE, std::io::Cursor::new(index))
            .await
            .unwrap();
        s.commit().await.unwrap().name
    })
}

#[test]
fn restore_paths_that_escape_the_target_are_refused() {
    let env = Env::new();
    env.init();
    let outside = env.path("outside");
    fs::create_dir(&outside).unwrap();
    let evil_file = |path: &[u8]| {
        let mut f = entry(path, EntryKind::File);
        f.size = 6;
        f
    };
    let mut link = entry(b"ln", EntryKind::Symlink);
    link.target = Some(PathBytes(outside.to_string_lossy().as_bytes().to_vec()));
    let cases: Vec<(&str, Vec<Entry>)> = vec![
        (
            "parent",
            vec![entry(b"", EntryKind::Dir), evil_file(b"../outside/pwned")],
        ),
        (
            "absolute",
            vec![
                entry(b"", EntryKind::Dir),
                evil_file(outside.join("pwned").to_string_lossy().as_bytes()),
            ],
        ),
        (
            "symlink then file",
            vec![
                entry(b"", EntryKind::Dir),
                link.clone(),
                evil_file(b"ln/pwned"),
            ],
        ),
        (
            "file then symlink",
            vec![
                entry(b"", EntryKind::Dir),
                evil_file(b"ln/pwned"),
                link.clone(),
            ],
        ),
    ];
    for (label, entries) in cases {
        let snap = hostile_snapshot(&env, entries);
        let target = env.path(&format!("target-{}", label.replace(' ', "-")));
        let (code, err) =
            failure(&env.run(&["restore", &snap, "--target", target.to_str().unwrap()]));
        assert_eq!(code, 2, "{label}: {err}");
        assert!(
            err.contains("restore refused") && err.contains(&snap),
            "{label}: {err}"
        );
        assert!(!target.exists(), "{label}: nothing under the target name");
        assert!(
            fs::read_dir(&outside).unwrap().next().is_none(),
            "{label}: nothing written outside"
        );
    }
    let staging: Vec<_> = fs::read_dir(env.dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("partial"))
        .collect();
    assert!(staging.is_empty());
}

fn quarantined(env: &Env) -> Vec<PathBuf> {
    let dir = Path::new(&env.repo).join("quarantine");
    if dir.exists() {
        files_under(&dir)
    } else {
        Vec::new()
    }
}

fn restored(env: &Env, snapshot: &str) -> Vec<u8> {
    let out = env.run(&["restore", snapshot, "--stdout"]);
    assert!(
        out.status.success(),
        "restore {snapshot}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A damaged chunk used to be "reused" by every later backup of the same data, each new
/// snapshot as unrestorable as the first. Verify moves it to quarantine/, the next backup
/// stores it again, and every snapshot that uses it restores byte for byte.
#[test]
fn verify_quarantines_a_damaged_chunk_and_the_next_backup_heals_old_and_new_snapshots() {
    let env = Env::new();
    env.init();
    let data = random_bytes(6 << 20, 7);
    let first = env.backup_stdin("db", &data)["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    let chunk = chunk_files(&env)[0].clone();
    flip(&chunk, 5000);

    let second = env.backup_stdin("db", &data);
    assert_eq!(
        second["new_chunks"], 0,
        "the damaged chunk is reused: {second}"
    );
    let second = second["snapshot"].as_str().unwrap().to_string();
    let (code, _) = failure(&env.run(&["restore", &second, "--stdout"]));
    assert_eq!(code, 3, "the new snapshot cannot be restored");

    let out = env.run(&["--json", "verify", "--all"]);
    assert_eq!(out.status.code(), Some(3));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["quarantined"], 1, "{report}");
    let finding = &report["chunks"][0];
    assert_eq!(finding["object"], rel(&env, &chunk));
    assert_eq!(finding["problem"], "damaged");
    assert_eq!(
        finding["snapshots"].as_array().unwrap().len(),
        2,
        "{finding}"
    );
    assert!(!chunk.exists(), "moved out of chunks/");
    let evidence = quarantined(&env);
    assert_eq!(evidence.len(), 1);
    assert_eq!(
        rel(&env, &evidence[0]),
        finding["quarantined_to"].as_str().unwrap()
    );

    let third = env.backup_stdin("db", &data);
    assert_eq!(third["new_chunks"], 1, "the chunk is stored again: {third}");
    let third = third["snapshot"].as_str().unwrap().to_string();
    for snap in [&first, &second, &third] {
        assert!(
            restored(&env, snap) == data,
            "{snap} restores byte for byte"
        );
    }
    let text = env.ok(&["verify", "--all"]);
    assert!(text.contains("3 snapshot(s) checked, 0 damaged"), "{text}");
    assert_eq!(quarantined(&env).len(), 1, "evidence kept");
}

/// A missing chunk has nothing to quarantine; verify says which snapshots it hurts and that a
/// backup of the same data heals them.
#[test]
fn verify_says_a_backup_heals_snapshots_missing_a_chunk() {
    let env = Env::new();
    env.init();
    let data = random_bytes(3 << 20, 8);
    let snap = env.backup_stdin("db", &data)["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    let chunk = chunk_files(&env).pop().unwrap();
    fs::remove_file(&chunk).unwrap();
    let out = env.run(&["verify", "--all"]);
    assert_eq!(out.status.code(), Some(3));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("{} is missing", rel(&env, &chunk)))
            && text.contains("next backup of the same data stores them again")
            && text.contains(&snap),
        "{text}"
    );
    env.backup_stdin("db", &data);
    assert!(restored(&env, &snap) == data);
}

/// Every damaged or unreadable object is reported, and verify carries on past each one.
#[test]
fn verify_reports_every_damaged_object_and_carries_on() {
    let env = Env::new();
    env.init();
    // Chunks of each snapshot: what each backup added to chunks/.
    let mut seen: Vec<PathBuf> = Vec::new();
    let mut backup = |db: &str, seed: u64| {
        let snap = env.backup_stdin(db, &random_bytes(3 << 20, seed))["snapshot"]
            .as_str()
            .unwrap()
            .to_string();
        let added: Vec<PathBuf> = chunk_files(&env)
            .into_iter()
            .filter(|p| !seen.contains(p))
            .collect();
        seen.extend(added.iter().cloned());
        (snap, added)
    };
    let (a, chunks_a) = backup("a", 9);
    let (b, chunks_b) = backup("b", 10);
    let (c, _) = backup("c", 11);
    // A chunk the storage cannot return (a directory where the object should be), a
    // flipped chunk, and a damaged manifest.
    let unreadable = chunks_a[0].clone();
    fs::remove_file(&unreadable).unwrap();
    fs::create_dir(&unreadable).unwrap();
    let flipped = chunks_b[0].clone();
    flip(&flipped, 3000);
    let manifest = Path::new(&env.repo).join("snapshots/c").join(&c);
    flip(&manifest, 100);

    let out = env.run(&["verify", "--all"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(3), "{text}");
    for object in [
        rel(&env, &unreadable),
        rel(&env, &flipped),
        rel(&env, &manifest),
    ] {
        assert!(text.contains(&object), "reports {object}: {text}");
    }
    assert!(text.contains("could not be read"), "{text}");
    let line = text
        .lines()
        .find(|l| l.contains("could not be read"))
        .unwrap()
        .to_lowercase();
    assert_eq!(
        line.matches("is a directory").count(),
        1,
        "the storage's text once: {line}"
    );
    let checked: usize = [&a, &b]
        .iter()
        .filter(|s| text.contains(s.as_str()))
        .count();
    assert_eq!(checked, 2, "both readable snapshots are checked: {text}");
}

fn backups_a_second_apart(env: &Env, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            if i > 0 {
                std::thread::sleep(std::time::Duration::from_millis(1100));
            }
            env.backup_stdin("db", format!("version {i}").as_bytes())["snapshot"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

/// `restore latest` used to restore the older snapshot silently when the newest manifest was
/// damaged. It refuses (exit 3) naming the damaged one; a named snapshot still restores.
#[test]
fn restore_latest_refuses_when_the_newest_manifest_is_damaged() {
    let env = Env::new();
    env.init();
    let snaps = backups_a_second_apart(&env, 2);
    let newest = format!("snapshots/db/{}", snaps[1]);
    flip(&Path::new(&env.repo).join(&newest), 100);
    let (code, err) = failure(&env.run(&["restore", "latest", "--database", "db", "--stdout"]));
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains(&newest) && err.contains("refusing") && err.contains(&snaps[0]),
        "names the damaged manifest and the newest readable snapshot: {err}"
    );
    assert_eq!(restored(&env, &snaps[0]), b"version 0");
    let (code, _) = failure(&env.run(&["verify", "latest", "--database", "db"]));
    assert_eq!(code, 3);
}

/// Prune's plan names the manifests it could not read, keeps them, and does not count them
/// among the snapshots a rule keeps.
#[test]
fn prune_names_unreadable_manifests_and_never_counts_or_deletes_them() {
    let env = Env::new();
    env.init();
    let snaps = backups_a_second_apart(&env, 3);
    let newest = format!("snapshots/db/{}", snaps[2]);
    flip(&Path::new(&env.repo).join(&newest), 100);

    let out = env.run(&["prune", "--keep-last", "1", "--dry-run"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(3), "{text}");
    assert!(text.contains(&format!("UNREADABLE {newest}")), "{text}");
    assert!(
        text.contains(&format!("keep   {}", snaps[1])),
        "the newest readable one is kept: {text}"
    );
    assert!(
        text.contains(&format!("would remove {}", snaps[0])),
        "{text}"
    );

    let out = env.run(&["--json", "prune", "--keep-last", "1"]);
    assert_eq!(out.status.code(), Some(3));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["deleted"], 1, "{plan}");
    assert_eq!(plan["databases"][0]["unreadable"][0]["object"], newest);
    assert!(Path::new(&env.repo).join(&newest).exists(), "never deleted");
    assert_eq!(restored(&env, &snaps[1]), b"version 1");
}

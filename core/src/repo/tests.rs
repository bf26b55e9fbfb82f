//! Repository tests on the in-memory and fault-injecting backends. Cross-process tests of the
//! same behaviour through the CLI, on fs and S3, live in the workspace `tests/` crate.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::Arc;

use super::backup::{BackupOptions, Progress};
use super::gc::GcOptions;
use super::verify::{ChunkProblem, VerifyOptions};
use super::Repository;
use crate::backend::{DynBackend, FaultyBackend, OpendalBackend};
use crate::error::Error;
use crate::keys::tests::FAST;
use crate::manifest::{Manifest, SnapshotKind, Source};

const REPORT_ONLY: VerifyOptions = VerifyOptions {
    quarantine: false,
    subset: None,
};

/// Deterministic pseudo-random bytes (xorshift) for the repository tests of every module.
pub(crate) fn noise(len: usize, mut state: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

fn opts(db: &str) -> BackupOptions {
    BackupOptions {
        database_id: db.into(),
        database_type: "stream".into(),
        kind: SnapshotKind::Manual,
        source: Source::Stream,
        tags: BTreeMap::new(),
    }
}

async fn backup(repo: &Repository, db: &str, data: Vec<u8>) -> crate::Result<Manifest> {
    let mut s = repo.start_backup(opts(db)).await?;
    match s
        .add_stream("data", "application/octet-stream", Cursor::new(data))
        .await
    {
        Ok(_) => s.commit().await,
        Err(e) => {
            s.abort().await;
            Err(e)
        }
    }
}

async fn restore(repo: &Repository, m: &Manifest) -> crate::Result<Vec<u8>> {
    repo.restore_stream(m, "data", Vec::new(), Arc::new(Progress::default()))
        .await
}

async fn new_repo() -> (DynBackend, Repository) {
    let backend: DynBackend = Arc::new(OpendalBackend::memory());
    let repo = Repository::init(backend.clone(), b"pw", "test", FAST)
        .await
        .unwrap();
    (backend, repo)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_and_dedup_of_a_nearly_identical_second_backup() {
    let (_, repo) = new_repo().await;
    let data = noise(12 << 20, 1);
    let first = backup(&repo, "db1", data.clone()).await.unwrap();
    assert_eq!(restore(&repo, &first).await.unwrap(), data);
    assert_eq!(first.stats.new_chunks, first.stats.chunks);

    let mut edited = data.clone();
    edited[6 << 20..(6 << 20) + 100].fill(7);
    let second = backup(&repo, "db1", edited.clone()).await.unwrap();
    assert_eq!(restore(&repo, &second).await.unwrap(), edited);
    assert!(second.stats.new_chunks <= 2, "{:?}", second.stats);
    assert!(second.stats.new_logical_bytes < 5 << 20);
    assert!(second.stats.dedup_ratio() > 2.0);
    let list = repo.list_snapshots(None).await.unwrap();
    assert_eq!(list.manifests.len(), 2);
}

#[tokio::test]
async fn wrong_passphrase_and_reopen() {
    let (backend, _) = new_repo().await;
    let err = Repository::open(backend.clone(), b"nope")
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::WrongPassphrase { tried: 1, .. }),
        "{err}"
    );
    Repository::open(backend, b"pw").await.unwrap();
}

#[tokio::test]
async fn adding_a_key_keeps_the_master_key_and_the_last_key_cannot_go() {
    let (backend, repo) = new_repo().await;
    let m = backup(&repo, "db", b"hello".to_vec()).await.unwrap();
    let slot = repo.add_key(b"second", "dr", FAST).await.unwrap();
    let by_second = Repository::open(backend.clone(), b"second").await.unwrap();
    assert_eq!(restore(&by_second, &m).await.unwrap(), b"hello");
    let keys = repo.list_keys().await.unwrap();
    assert_eq!(keys.len(), 2);
    let first_id = keys.iter().find(|k| k.id != slot.id).unwrap().id.clone();
    repo.remove_key(&first_id).await.unwrap();
    assert!(Repository::open(backend.clone(), b"pw").await.is_err());
    let err = by_second.remove_key(&slot.id).await.unwrap_err();
    assert!(err.to_string().contains("last intact key slot"), "{err}");
}

#[tokio::test]
async fn flipped_bits_in_chunks_and_manifests_name_the_object() {
    let (backend, repo) = new_repo().await;
    // Chunk boundaries depend on the (random) master key, so only chunk 0 surely exists.
    let m = backup(&repo, "db", noise(3 << 20, 4)).await.unwrap();
    let chunk = m.streams[0].chunks[0].id.path();
    let mut blob = backend.read(&chunk).await.unwrap().unwrap();
    blob[100] ^= 0x10;
    backend.write(&chunk, blob).await.unwrap();
    let err = restore(&repo, &m).await.unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    assert!(
        err.to_string().contains(&chunk) && err.to_string().contains(&m.name),
        "{err}"
    );
    let report = repo
        .verify(&[m.clone()], REPORT_ONLY, Arc::new(Progress::default()))
        .await
        .unwrap()
        .snapshots;
    assert_eq!(report[0].problems.len(), 1, "{:?}", report[0].problems);

    backend.delete(&chunk).await.unwrap();
    let report = repo
        .verify(&[m.clone()], REPORT_ONLY, Arc::new(Progress::default()))
        .await
        .unwrap()
        .snapshots;
    assert!(
        report[0].problems[0].contains("missing"),
        "{:?}",
        report[0].problems
    );

    let path = m.path();
    let mut blob = backend.read(&path).await.unwrap().unwrap();
    let last = blob.len() - 1;
    blob[last] ^= 1;
    backend.write(&path, blob).await.unwrap();
    let err = repo.load_manifest(&path).await.unwrap_err();
    assert!(
        err.to_string().contains(&path) && err.to_string().contains("authentication"),
        "{err}"
    );
}

#[tokio::test]
async fn a_manifest_copied_under_another_name_is_refused() {
    let (backend, repo) = new_repo().await;
    let m = backup(&repo, "db", b"x".to_vec()).await.unwrap();
    let blob = backend.read(&m.path()).await.unwrap().unwrap();
    let other = "snapshots/db/backup-20200101T000000Z-manual-00000000";
    backend.write(other, blob).await.unwrap();
    assert!(matches!(
        repo.load_manifest(other).await,
        Err(Error::Corrupt { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_leaves_the_repository_consistent_and_the_next_backup_works() {
    let inner: DynBackend = Arc::new(OpendalBackend::memory());
    let faulty = Arc::new(FaultyBackend::new(inner.clone(), u64::MAX));
    let backend: DynBackend = faulty.clone();
    let repo = Repository::init(backend.clone(), b"pw", "", FAST)
        .await
        .unwrap();
    let first = backup(&repo, "db", noise(2 << 20, 1)).await.unwrap();

    faulty.set_capacity(3 << 20);
    let err = backup(&repo, "db", noise(20 << 20, 2)).await.unwrap_err();
    assert!(err.to_string().contains("No space left on device"), "{err}");
    let list = repo.list_snapshots(None).await.unwrap();
    assert_eq!(
        list.manifests.len(),
        1,
        "no snapshot from the failed backup"
    );
    assert!(
        inner.list("locks/").await.unwrap().is_empty(),
        "lease released"
    );
    let report = repo
        .verify(
            &list.manifests,
            VerifyOptions::default(),
            Arc::new(Progress::default()),
        )
        .await
        .unwrap();
    assert!(report.snapshots[0].problems.is_empty());
    assert!(report.chunks.is_empty());

    // GC reclaims what the failed backup stored, and the next backup succeeds. The disk is
    // as full as the failed backup left it (to the last byte, when parallel writes landed just
    // so): the reserve the repository was made with gives the gc room for its lease.
    for size in [16 << 10, 512, 16] {
        while backend
            .write(
                &format!("fill/{}", crate::crypto::random_hex(8)),
                vec![0; size],
            )
            .await
            .is_ok()
        {}
    }
    assert!(
        backend.write("fill/last", vec![0; 64]).await.is_err(),
        "full"
    );
    let gc = repo
        .gc(&GcOptions {
            dry_run: false,
            wait: std::time::Duration::from_secs(5),
        })
        .await
        .unwrap();
    assert!(gc.deleted_chunks > 0);
    faulty.set_capacity(8 << 20);
    let third = backup(&repo, "db", noise(4 << 20, 3)).await.unwrap();
    assert_eq!(restore(&repo, &third).await.unwrap(), noise(4 << 20, 3));
    assert_eq!(restore(&repo, &first).await.unwrap(), noise(2 << 20, 1));
}

/// A chunk unreferenced when GC marks, reused by a backup running meanwhile, must survive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_spares_chunks_that_a_concurrent_backup_reuses() {
    let (_, repo) = new_repo().await;
    let data = noise(6 << 20, 9);
    let old = backup(&repo, "db", data.clone()).await.unwrap();
    // Forget the old snapshot: its chunks become garbage...
    repo.backend().delete(&old.path()).await.unwrap();
    // ...but a backup of the same data has started and knows them as stored.
    let mut session = repo.start_backup(opts("db")).await.unwrap();
    let gc_repo = repo.clone();
    let gc = tokio::spawn(async move {
        gc_repo
            .gc(&GcOptions {
                dry_run: false,
                wait: std::time::Duration::from_secs(30),
            })
            .await
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!gc.is_finished(), "gc waits for the running backup");
    session
        .add_stream(
            "data",
            "application/octet-stream",
            Cursor::new(data.clone()),
        )
        .await
        .unwrap();
    let new = session.commit().await.unwrap();
    assert_eq!(new.stats.new_chunks, 0, "all chunks were reused");
    let report = gc.await.unwrap().unwrap();
    assert_eq!(report.deleted_chunks, 0, "{report:?}");
    assert!(report.spared_by_new_backups > 0);
    assert_eq!(restore(&repo, &new).await.unwrap(), data);
}

#[tokio::test]
async fn gc_refuses_to_delete_when_a_manifest_is_damaged() {
    let (backend, repo) = new_repo().await;
    let m = backup(&repo, "db", noise(1 << 20, 2)).await.unwrap();
    backend
        .write(
            "chunks/00/0000000000000000000000000000000000000000000000000000000000000000",
            vec![1],
        )
        .await
        .unwrap();
    backend.write(&m.path(), b"garbage".to_vec()).await.unwrap();
    let err = repo
        .gc(&GcOptions {
            dry_run: false,
            wait: std::time::Duration::from_secs(1),
        })
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("stopped before deleting anything"),
        "{err}"
    );
    assert!(backend
        .read("chunks/00/0000000000000000000000000000000000000000000000000000000000000000")
        .await
        .unwrap()
        .is_some());
}

#[tokio::test]
async fn unknown_repository_version_is_refused_before_the_passphrase() {
    let (backend, _) = new_repo().await;
    let config = backend.read("config").await.unwrap().unwrap();
    let text = String::from_utf8(config)
        .unwrap()
        .replace("\"version\": 1", "\"version\": 2");
    backend.write("config", text.into_bytes()).await.unwrap();
    let err = Repository::open(backend, b"wrong anyway")
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::UnsupportedVersion {
                found: 2,
                supported: 1,
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn a_damaged_key_slot_is_reported_as_damaged() {
    let (backend, _) = new_repo().await;
    let slot = backend.list("keys/").await.unwrap().remove(0);
    let mut bytes = backend.read(&slot).await.unwrap().unwrap();
    let i = bytes.len() / 2;
    bytes[i] ^= 0x01;
    backend.write(&slot, bytes).await.unwrap();
    let err = Repository::open(backend, b"pw").await.unwrap_err();
    assert!(
        matches!(err, Error::Corrupt { .. }) && err.to_string().contains(&slot),
        "{err}"
    );
}

/// Regression: a slot with a valid checksum but unusable fields (planted by someone with write
/// access to storage) must not stop the intact slots from opening the repository.
#[tokio::test]
async fn a_planted_slot_with_bad_parameters_does_not_block_opening() {
    let (backend, _) = new_repo().await;
    let good = backend.list("keys/").await.unwrap().remove(0);
    let mut slot =
        crate::keys::KeySlot::from_bytes(&good, &backend.read(&good).await.unwrap().unwrap())
            .unwrap();
    slot.id = "0000000000000000".into();
    slot.kdf.params.memory_kib = 1; // out of range
    slot.created = chrono::DateTime::from_timestamp(0, 0).unwrap(); // sorts first
    let planted = serde_json::to_value(&slot).unwrap();
    let mut planted: crate::keys::KeySlot = serde_json::from_value(planted).unwrap();
    planted.checksum = String::new();
    let checksum = blake3::hash(&serde_json::to_vec(&planted).unwrap())
        .to_hex()
        .to_string();
    planted.checksum = checksum;
    backend
        .write(&planted.path(), planted.to_bytes())
        .await
        .unwrap();
    let repo = Repository::open(backend, b"pw").await.unwrap();
    assert_eq!(repo.damaged_slots(), ["keys/0000000000000000".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_files_are_idempotent_refuse_conflicts_and_survive_gc() {
    use super::wal::WalPut;
    let (backend, repo) = new_repo().await;
    let seg = "000000010000000000000003";
    let data = noise(16 << 20, 7);
    assert_eq!(
        repo.put_wal("orders", seg, data.clone()).await.unwrap(),
        WalPut::Stored
    );
    assert_eq!(
        repo.put_wal("orders", seg, data.clone()).await.unwrap(),
        WalPut::AlreadyArchived
    );
    let mut other = data.clone();
    other[100] ^= 1;
    let err = repo.put_wal("orders", seg, other).await.unwrap_err();
    assert!(matches!(err, Error::Conflict { .. }), "{err}");
    assert!(err.to_string().contains(seg), "{err}");
    assert_eq!(repo.get_wal("orders", seg).await.unwrap().unwrap(), data);
    assert_eq!(
        repo.get_wal("orders", "000000010000000000000004")
            .await
            .unwrap(),
        None
    );
    assert_eq!(repo.get_wal("other-db", seg).await.unwrap(), None);
    repo.put_wal(
        "orders",
        "00000002.history",
        b"1\t0/3000000\tno recovery target specified\n".to_vec(),
    )
    .await
    .unwrap();
    assert_eq!(
        repo.list_wal("orders", "00000001").await.unwrap(),
        vec![seg.to_string()]
    );
    assert_eq!(
        repo.list_wal("orders", "00000002").await.unwrap(),
        vec!["00000002.history".to_string()]
    );

    // GC collects chunks only: WAL is not referenced by manifests, and must stay.
    repo.gc(&GcOptions {
        dry_run: false,
        wait: std::time::Duration::from_secs(5),
    })
    .await
    .unwrap();
    assert_eq!(repo.get_wal("orders", seg).await.unwrap().unwrap(), data);

    // A WAL object copied under another name fails authentication (the path is bound in).
    let path = super::wal::wal_path("orders", seg).unwrap();
    let blob = backend.read(&path).await.unwrap().unwrap();
    let moved = super::wal::wal_path("orders", "000000010000000000000009").unwrap();
    backend.write(&moved, blob).await.unwrap();
    let err = repo
        .get_wal("orders", "000000010000000000000009")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    // Names that are not WAL names never become paths.
    assert!(repo
        .put_wal("orders", "../../config", vec![1])
        .await
        .is_err());
}

/// A damaged chunk is reused by every later backup of the same data until verify moves it to
/// quarantine; then the next backup stores it again and every snapshot using it is healed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_quarantines_a_damaged_chunk_and_the_next_backup_heals_every_snapshot() {
    let (backend, repo) = new_repo().await;
    let data = noise(3 << 20, 21);
    let first = backup(&repo, "db", data.clone()).await.unwrap();
    let chunk = first.streams[0].chunks[0].id.path();
    let mut blob = backend.read(&chunk).await.unwrap().unwrap();
    blob[200] ^= 0x08;
    backend.write(&chunk, blob.clone()).await.unwrap();

    let second = backup(&repo, "db", data.clone()).await.unwrap();
    assert_eq!(second.stats.new_chunks, 0, "the damaged chunk is reused");
    assert!(restore(&repo, &second).await.is_err());

    let report = repo
        .verify(
            &[first.clone(), second.clone()],
            VerifyOptions::default(),
            Arc::new(Progress::default()),
        )
        .await
        .unwrap();
    assert_eq!(report.chunks.len(), 1, "{:?}", report.chunks);
    let finding = &report.chunks[0];
    assert_eq!(finding.object, chunk);
    assert_eq!(finding.problem, ChunkProblem::Damaged);
    assert_eq!(
        finding.snapshots,
        vec![first.name.clone(), second.name.clone()]
    );
    let moved_to = finding.quarantined_to.clone().expect("quarantined");
    assert!(moved_to.starts_with("quarantine/"), "{moved_to}");
    assert_eq!(
        backend.read(&moved_to).await.unwrap().unwrap(),
        blob,
        "the damaged bytes are kept as evidence"
    );
    assert_eq!(backend.read(&chunk).await.unwrap(), None);
    assert!(report.found_damage());

    let third = backup(&repo, "db", data.clone()).await.unwrap();
    assert_eq!(third.stats.new_chunks, 1, "the chunk is stored again");
    for m in [&first, &second, &third] {
        assert_eq!(restore(&repo, m).await.unwrap(), data, "{} healed", m.name);
    }
    let again = repo
        .verify(
            &[first, second, third],
            VerifyOptions::default(),
            Arc::new(Progress::default()),
        )
        .await
        .unwrap();
    assert!(again.chunks.is_empty() && !again.found_damage());
    let gc = repo
        .gc(&GcOptions {
            dry_run: false,
            wait: std::time::Duration::from_secs(5),
        })
        .await
        .unwrap();
    assert_eq!(gc.deleted_chunks, 0);
    assert!(
        backend.read(&moved_to).await.unwrap().is_some(),
        "gc leaves quarantine/ alone"
    );
}

/// A chunk whose header names a newer format is reported and left in place: an older build's
/// scheduled verify must not move every chunk a newer release wrote out of `chunks/`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_never_quarantines_a_chunk_of_a_format_it_does_not_know() {
    let (backend, repo) = new_repo().await;
    let m = backup(&repo, "db", noise(2 << 20, 23)).await.unwrap();
    let chunk = m.streams[0].chunks[0].id.path();
    let mut blob = backend.read(&chunk).await.unwrap().unwrap();
    blob[4] = crate::format::BLOB_VERSION + 1;
    backend.write(&chunk, blob.clone()).await.unwrap();
    let report = repo
        .verify(
            std::slice::from_ref(&m),
            VerifyOptions::default(),
            Arc::new(Progress::default()),
        )
        .await
        .unwrap();
    assert_eq!(report.chunks.len(), 1, "{:?}", report.chunks);
    assert_eq!(report.chunks[0].problem, ChunkProblem::Unsupported);
    assert_eq!(report.chunks[0].quarantined_to, None);
    assert_eq!(
        backend.read(&chunk).await.unwrap().unwrap(),
        blob,
        "left in place"
    );
    assert!(report.found_damage(), "still a problem to report");
}

/// Without quarantine the damage is only reported; a missing chunk has nothing to move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_reports_every_problem_and_leaves_chunks_when_told_to() {
    let (backend, repo) = new_repo().await;
    let m = backup(&repo, "db", noise(9 << 20, 22)).await.unwrap();
    assert!(
        m.streams[0].chunks.len() >= 3,
        "{}",
        m.streams[0].chunks.len()
    );
    let damaged = m.streams[0].chunks[0].id.path();
    let missing = m.streams[0].chunks[1].id.path();
    let mut blob = backend.read(&damaged).await.unwrap().unwrap();
    blob[60] ^= 1;
    backend.write(&damaged, blob).await.unwrap();
    backend.delete(&missing).await.unwrap();
    let report = repo
        .verify(&[m.clone()], REPORT_ONLY, Arc::new(Progress::default()))
        .await
        .unwrap();
    assert_eq!(
        report.snapshots[0].problems.len(),
        2,
        "{:?}",
        report.snapshots
    );
    let problems: Vec<_> = report
        .chunks
        .iter()
        .map(|c| (c.object.clone(), c.problem))
        .collect();
    let mut expected = vec![
        (damaged.clone(), ChunkProblem::Damaged),
        (missing.clone(), ChunkProblem::Missing),
    ];
    expected.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(problems, expected);
    assert_eq!(report.quarantined(), 0);
    assert!(
        backend.read(&damaged).await.unwrap().is_some(),
        "left in place"
    );
    assert!(backend.list("quarantine/").await.unwrap().is_empty());
}

/// `latest` never silently falls back to an older snapshot when the newest manifest of the
/// database is damaged; a damaged *older* manifest does not get in the way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_refuses_when_the_newest_manifest_is_damaged() {
    let (backend, repo) = new_repo().await;
    let old = backup(&repo, "db", b"old".to_vec()).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let new = backup(&repo, "db", b"new".to_vec()).await.unwrap();
    assert_eq!(
        repo.find_snapshot("latest", Some("db")).await.unwrap().name,
        new.name
    );

    let mut blob = backend.read(&new.path()).await.unwrap().unwrap();
    blob[40] ^= 1;
    backend.write(&new.path(), blob).await.unwrap();
    let err = repo.find_snapshot("latest", Some("db")).await.unwrap_err();
    assert!(matches!(err, Error::LatestUnreadable { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains(&new.path()) && text.contains(&old.name),
        "names the damaged manifest and the newest readable one: {text}"
    );
    assert_eq!(err.class(), crate::error::ErrorClass::Integrity);
    // Naming the older snapshot still works.
    assert_eq!(
        repo.find_snapshot(&old.name, Some("db"))
            .await
            .unwrap()
            .name,
        old.name
    );

    // Damage only in an older manifest: `latest` is the intact newest one.
    backend.delete(&new.path()).await.unwrap();
    let newest = backup(&repo, "db", b"newest".to_vec()).await.unwrap();
    let mut blob = backend.read(&old.path()).await.unwrap().unwrap();
    blob[40] ^= 1;
    backend.write(&old.path(), blob).await.unwrap();
    assert_eq!(
        repo.find_snapshot("latest", Some("db")).await.unwrap().name,
        newest.name
    );
}

/// Prune lists manifests it cannot read, deletes none of them, and does not count them as kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_lists_unreadable_manifests_and_never_counts_them() {
    let (backend, repo) = new_repo().await;
    let mut made = Vec::new();
    for i in 0..3u8 {
        made.push(backup(&repo, "db", vec![i; 10]).await.unwrap());
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    }
    // The newest is damaged: `keep_last 1` must keep the newest *readable* one.
    let newest = made[2].path();
    let mut blob = backend.read(&newest).await.unwrap().unwrap();
    blob[40] ^= 1;
    backend.write(&newest, blob).await.unwrap();
    let rules = crate::retention::Rules {
        keep_last: 1,
        keep_min: 1,
        ..Default::default()
    };
    let plans = repo
        .plan_prune(Some("db"), &rules, chrono::Utc::now())
        .await
        .unwrap();
    assert_eq!(plans.len(), 1);
    let plan = &plans[0];
    assert_eq!(plan.unreadable.len(), 1);
    assert_eq!(plan.unreadable[0].object, newest);
    let kept: Vec<_> = plan
        .decisions
        .iter()
        .filter(|d| d.keep)
        .map(|d| &d.name)
        .collect();
    assert_eq!(kept, vec![&made[1].name], "{:?}", plan.decisions);
    assert!(plan.decisions.iter().all(|d| d.name != made[2].name));
    assert_eq!(repo.execute_prune(&plans).await.unwrap(), 1);
    assert!(
        backend.read(&newest).await.unwrap().is_some(),
        "never deleted"
    );
}

/// A storage that drops a few calls mid-backup no longer aborts it: the retries ride it out and
/// the backup commits; a permanent failure still fails the backup at once, naming the object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_rides_out_transient_storage_failures_and_fails_fast_on_permanent_ones() {
    use crate::backend::{RetryPolicy, Retrying};
    use std::sync::atomic::Ordering;
    use std::time::Duration;
    let faulty = Arc::new(FaultyBackend::new(
        Arc::new(OpendalBackend::memory()),
        u64::MAX,
    ));
    let policy = RetryPolicy {
        first_delay: Duration::from_millis(2),
        max_delay: Duration::from_millis(20),
        budget: Duration::from_secs(10),
        call_timeout: Duration::from_secs(10),
    };
    let backend: DynBackend = Arc::new(Retrying::new(faulty.clone(), policy));
    let repo = Repository::init(backend.clone(), b"pw", "", FAST)
        .await
        .unwrap();
    let data = noise(5 << 20, 31);
    faulty.fail_next(6, true);
    let m = backup(&repo, "db", data.clone()).await.unwrap();
    assert_eq!(
        faulty.injected.load(Ordering::SeqCst),
        6,
        "every failure was hit"
    );
    faulty.fail_next(4, true);
    assert_eq!(restore(&repo, &m).await.unwrap(), data);

    faulty.fail_next(1, false);
    let started = std::time::Instant::now();
    let err = backup(&repo, "db", noise(1 << 20, 32)).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "no retry of a permanent error"
    );
    assert!(err.to_string().contains("access denied"), "{err}");
    assert!(err.to_string().starts_with("storage error on "), "{err}");
    faulty.fail_next(0, false);
    assert_eq!(repo.list_snapshots(None).await.unwrap().manifests.len(), 1);
}

/// Two agents whose first job finds no repository on one storage create it at the same time:
/// exactly one `config` wins, the losers remove their slots, and everyone ends up in the one
/// repository (with the winner's recovery slot too), on the fs backend the NFS and CephFS
/// mounts use.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_inits_make_exactly_one_repository() {
    let dir = tempfile::tempdir().unwrap();
    let location = dir.path().to_str().unwrap().to_string();
    let mut racers = Vec::new();
    for _ in 0..6 {
        let location = location.clone();
        racers.push(tokio::spawn(async move {
            // One backend per racer: separate processes share nothing but the directory.
            let backend: DynBackend = Arc::new(OpendalBackend::open(&location, true).unwrap());
            let slots = [
                super::NewSlot {
                    passphrase: b"workspace-key",
                    label: "workspace",
                    kdf: FAST,
                },
                super::NewSlot {
                    passphrase: b"recovery-key",
                    label: "recovery",
                    kdf: FAST,
                },
            ];
            match Repository::init_with(backend.clone(), &slots).await {
                Ok(repo) => Ok(repo.config().id.clone()),
                Err(Error::AlreadyExists { .. }) => Err(backend),
                Err(e) => panic!("init failed: {e}"),
            }
        }));
    }
    let mut winners = Vec::new();
    for r in racers {
        if let Ok(id) = r.await.unwrap() {
            winners.push(id);
        }
    }
    assert_eq!(winners.len(), 1, "exactly one init wins: {winners:?}");
    let backend: DynBackend = Arc::new(OpendalBackend::open(&location, false).unwrap());
    let slots = backend.list("keys/").await.unwrap();
    assert_eq!(
        slots.len(),
        2,
        "only the winner's two slots remain: {slots:?}"
    );
    for pass in [&b"workspace-key"[..], b"recovery-key"] {
        let repo = Repository::open(backend.clone(), pass).await.unwrap();
        assert_eq!(repo.config().id, winners[0]);
    }
}

/// A verify spread over runs: the parts are disjoint, together they read every chunk once, and
/// a damaged chunk is found by exactly the run whose part holds it.
#[tokio::test]
async fn verify_subsets_cover_every_chunk_once_and_find_damage_in_their_part() {
    use super::verify::Subset;
    let (backend, repo) = new_repo().await;
    let m = backup(&repo, "db", noise(12 << 20, 5)).await.unwrap();
    let total = m.streams[0].chunks.len() as u64;
    let damaged = m.streams[0].chunks[0].id;
    let mut blob = backend.read(&damaged.path()).await.unwrap().unwrap();
    blob[60] ^= 1;
    backend.write(&damaged.path(), blob).await.unwrap();
    let mut checked = 0;
    let mut found_in = Vec::new();
    for part in 0..3 {
        let opts = VerifyOptions {
            subset: Some(Subset::new(part, 3).unwrap()),
            ..REPORT_ONLY
        };
        let report = repo
            .verify(
                std::slice::from_ref(&m),
                opts,
                Arc::new(Progress::default()),
            )
            .await
            .unwrap();
        checked += report.checked_chunks;
        if report.found_damage() {
            found_in.push(part);
        }
    }
    assert_eq!(checked, total, "the parts together read every chunk once");
    assert_eq!(
        found_in.len(),
        1,
        "one part holds the damaged chunk: {found_in:?}"
    );
    assert!(Subset::new(found_in[0], 3).unwrap().contains(&damaged));
    assert!(Subset::new(3, 3).is_err() && Subset::new(0, 0).is_err());
}

/// Forget deletes exactly the named snapshots and is idempotent; WAL expiry then removes the
/// segments before the oldest remaining base backup and keeps everything a kept base needs.
#[tokio::test]
async fn forget_then_expire_wal_keeps_what_the_oldest_base_needs() {
    let (_backend, repo) = new_repo().await;
    let mut bases = Vec::new();
    for (i, start) in ["000000010000000000000002", "000000010000000000000005"]
        .into_iter()
        .enumerate()
    {
        let mut s = repo.start_backup(opts("pg")).await.unwrap();
        s.add_stream("data", "x", Cursor::new(noise(1000, i as u64 + 1)))
            .await
            .unwrap();
        s.set_detail("method", "physical");
        s.set_detail("start_wal", start);
        bases.push(s.commit().await.unwrap());
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    }
    for seg in 1..=6u8 {
        let name = format!("0000000100000000000000{seg:02X}");
        repo.put_wal("pg", &name, vec![seg; 100]).await.unwrap();
    }
    repo.put_wal("pg", "00000001.history", b"h".to_vec())
        .await
        .unwrap();
    // While the older base is kept, only WAL before it goes.
    let dry = repo.expire_wal(true).await.unwrap();
    assert_eq!(dry[0].deleted_files, 1, "{dry:?}");
    assert_eq!(
        repo.list_wal("pg", "00000001").await.unwrap().len(),
        7,
        "dry run deletes nothing"
    );

    let gone = vec![bases[0].name.clone()];
    let first = repo.forget("pg", &gone).await.unwrap();
    assert_eq!(first.deleted, gone);
    let again = repo.forget("pg", &gone).await.unwrap();
    assert_eq!(
        (again.deleted.len(), again.already_gone.len()),
        (0, 1),
        "idempotent"
    );
    assert!(repo.forget("pg", &["../config".to_string()]).await.is_err());
    assert_eq!(
        repo.list_snapshots(Some("pg"))
            .await
            .unwrap()
            .manifests
            .len(),
        1
    );

    let done = repo.expire_wal(false).await.unwrap();
    assert_eq!(
        done[0].deleted_files, 4,
        "segments 1-4 precede the kept base: {done:?}"
    );
    assert!(done[0].deleted_bytes > 0);
    let left = repo.list_wal("pg", "00000001").await.unwrap();
    assert_eq!(
        left,
        vec![
            "00000001.history".to_string(),
            "000000010000000000000005".into(),
            "000000010000000000000006".into()
        ]
    );
    // Without any physical base, nothing is expired.
    repo.forget("pg", &[bases[1].name.clone()]).await.unwrap();
    let none = repo.expire_wal(false).await.unwrap();
    assert_eq!(none[0].deleted_files, 0);
    assert!(none[0].kept_because.is_some());
}

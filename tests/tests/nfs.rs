//! The NFS backend (crate bulwark-nfs, a userspace client) against a real NFS-Ganesha, over
//! NFSv3 and NFSv4.1: core's backend contract, a repository's backup and restore, a full
//! export, and a server that dies and comes back.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::Arc;
use std::time::Duration;

use bulwark_core::backend::{DynBackend, RetryPolicy};
use bulwark_core::keys::KdfParams;
use bulwark_core::manifest::{Manifest, SnapshotKind, Source};
use bulwark_core::repo::backup::{BackupOptions, Progress};
use bulwark_core::repo::gc::GcOptions;
use bulwark_core::repo::Repository;
use bulwark_tests::nfs::NfsServer;
use bulwark_tests::random_bytes;

const FAST: KdfParams = KdfParams {
    memory_kib: 8 * 1024,
    iterations: 1,
    parallelism: 1,
};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Retries for a few seconds only, so a test of a dead server does not wait two minutes.
fn short_retries() -> RetryPolicy {
    RetryPolicy {
        first_delay: Duration::from_millis(100),
        max_delay: Duration::from_millis(500),
        budget: Duration::from_secs(3),
        call_timeout: Duration::from_secs(10),
    }
}

/// What the NFS backend adds to the contract: big objects in many READ/WRITE pieces, nested
/// listings, parallel writers of one chunk, a modification time, and no temporary leftovers.
async fn nfs_specifics(b: &DynBackend, server: &NfsServer, sub: &str) {
    let big = random_bytes(9 << 20, 7);
    b.write("chunks/cd/big", big.clone()).await.unwrap();
    assert!(b.read("chunks/cd/big").await.unwrap().unwrap() == big);
    let info = b.stat("chunks/cd/big").await.unwrap().unwrap();
    assert_eq!(info.size, big.len() as u64);
    let age = chrono::Utc::now() - info.modified.unwrap();
    assert!(age.num_seconds().abs() < 60, "mtime {:?}", info.modified);

    // Eight writers of the same chunk, as two agents deduplicating into one repository do.
    let chunk = random_bytes(1 << 20, 8);
    let writers: Vec<_> = (0..8)
        .map(|_| {
            let (b, chunk) = (b.clone(), chunk.clone());
            tokio::spawn(async move { b.write("chunks/ef/same", chunk).await })
        })
        .collect();
    for w in writers {
        w.await.unwrap().unwrap();
    }
    assert!(b.read("chunks/ef/same").await.unwrap().unwrap() == chunk);

    let mut all = b.list("chunks/").await.unwrap();
    all.sort();
    assert_eq!(all, vec!["chunks/cd/big", "chunks/ef/same"]);
    let mut snaps = b.list("snapshots/db/s").await.unwrap();
    snaps.sort();
    assert_eq!(
        snaps,
        vec!["snapshots/db/s1"],
        "a prefix that is not a directory"
    );

    // Only this process's (empty) temporary directory is left under tmp/.
    let tmp = server.export.join(sub).join("tmp");
    let files: Vec<_> = walk(&tmp).into_iter().filter(|p| p.is_file()).collect();
    assert!(files.is_empty(), "temporary files left: {files:?}");
    // The bytes on the server are the object's.
    assert!(std::fs::read(server.export.join(sub).join("chunks/cd/big")).unwrap() == big);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            }
            out.push(p);
        }
    }
    out
}

#[test]
fn the_backend_contract_over_nfsv3_and_nfsv4() {
    let server = NfsServer::start();
    runtime().block_on(async {
        for (sub, url) in [
            ("v3repo", server.url_v3("v3repo")),
            ("v4repo", server.url_v4("v4repo")),
        ] {
            let b = bulwark_nfs::open(&url, true).await.unwrap();
            bulwark_core::backend::contract(&*b).await;
            nfs_specifics(&b, &server, sub).await;
        }
        // Without a version: NFSv4.1 (the export's pseudo path is also a real path here only
        // for v4, so use the pseudo URL).
        let url = server.url_v4("v4repo").replace("version=4&", "");
        let b = bulwark_nfs::NfsBackend::connect(&url, false).await.unwrap();
        assert_eq!(b.version().await.unwrap(), bulwark_nfs::Version::V41);
        // A repository directory that does not exist is no repository (unless creating).
        let err = bulwark_nfs::open(&server.url_v3("absent"), false)
            .await
            .err()
            .unwrap();
        assert!(
            matches!(err, bulwark_core::Error::NotARepository { .. }),
            "{err}"
        );
    });
}

#[test]
fn errors_name_the_server_and_what_is_wrong() {
    let server = NfsServer::start();
    runtime().block_on(async {
        let wrong = format!(
            "nfs://127.0.0.1/no/such/export?version=3&nfsport={}&mountport={}",
            server.nfs_port, server.mount_port
        );
        let err = bulwark_nfs::open(&wrong, true)
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("127.0.0.1") && err.contains("no export /no/such/export"),
            "{err}"
        );
        // Both versions tried, and both named, when no version is given.
        let wrong = format!(
            "nfs://127.0.0.1/nowhere?nfsport={}&mountport={}",
            server.nfs_port, server.mount_port
        );
        let err = bulwark_nfs::open(&wrong, true)
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("NFSv4.1") && err.contains("NFSv3"), "{err}");

        let port = bulwark_tests::free_port();
        let nobody = format!("nfs://127.0.0.1/x?version=3&nfsport={port}&mountport={port}");
        let err = bulwark_nfs::open(&nobody, true).await.err().unwrap();
        assert!(err.is_transient(), "{err}");
        let text = err.to_string();
        assert!(
            text.contains(&format!("127.0.0.1:{port}")) && text.contains("unreachable"),
            "{text}"
        );

        let err = bulwark_nfs::open("nfs://127.0.0.1/x?version=7", true)
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("version"), "{err}");
    });
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

async fn backup(repo: &Repository, db: &str, data: Vec<u8>) -> bulwark_core::Result<Manifest> {
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

async fn restore(repo: &Repository, m: &Manifest) -> Vec<u8> {
    repo.restore_stream(m, "data", Vec::new(), Arc::new(Progress::default()))
        .await
        .unwrap()
}

#[test]
fn a_repository_on_nfs_backs_up_and_restores() {
    let server = NfsServer::start();
    runtime().block_on(async {
        for url in [server.url_v4("repo4"), server.url_v3("repo3")] {
            let backend = bulwark_nfs::open(&url, true).await.unwrap();
            let repo = Repository::init(backend, b"pw", "test", FAST)
                .await
                .unwrap();
            let data = random_bytes(24 << 20, 1);
            let m = backup(&repo, "db", data.clone()).await.unwrap();
            let again = backup(&repo, "db", data.clone()).await.unwrap();
            assert!(restore(&repo, &m).await == data);
            assert!(restore(&repo, &again).await == data);
            // A second process opens it from scratch.
            let reopened = Repository::open(bulwark_nfs::open(&url, false).await.unwrap(), b"pw")
                .await
                .unwrap();
            assert_eq!(
                reopened.list_snapshots(None).await.unwrap().manifests.len(),
                2
            );
            assert!(restore(&reopened, &m).await == data);
        }
    });
}

#[test]
fn a_full_export_fails_clearly_and_the_repository_stays_consistent() {
    let Some(server) = NfsServer::start_small("24m") else {
        return;
    };
    runtime().block_on(async {
        for (url, sub) in [
            (server.url_v3("repo"), "repo"),
            (server.url_v4("repo4"), "repo4"),
        ] {
            let backend = bulwark_nfs::open(&url, true).await.unwrap();
            let repo = Repository::init(backend.clone(), b"pw", "", FAST)
                .await
                .unwrap();
            let first = random_bytes(2 << 20, 1);
            backup(&repo, "db", first.clone()).await.unwrap();
            let err = backup(&repo, "db", random_bytes(40 << 20, 2))
                .await
                .unwrap_err();
            assert!(!err.is_transient(), "{err}");
            let text = err.to_string();
            assert!(
                text.contains("No space left on device") && text.contains("127.0.0.1"),
                "{text}"
            );
            let list = repo.list_snapshots(None).await.unwrap();
            assert_eq!(
                list.manifests.len(),
                1,
                "no snapshot from the failed backup"
            );
            assert!(
                backend.list("locks/").await.unwrap().is_empty(),
                "lease released"
            );
            // Writes still in flight when the backup failed remove their temporary files as
            // they are dropped: gone within moments.
            let tmp = server.export.join(sub).join("tmp");
            let mut files: Vec<_> = Vec::new();
            for _ in 0..50 {
                files = walk(&tmp).into_iter().filter(|p| p.is_file()).collect();
                if files.is_empty() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            // A write dropped while its mount was being replaced may keep its temporary file
            // (its removal went through the old mount); it can only be in this process's own
            // temporary directory, which no reader looks at and the 1-hour rule removes.
            let own = format!("-{}-", std::process::id());
            assert!(
                files.iter().all(|f| f.to_string_lossy().contains(&own)),
                "temporary files of another process left: {files:?}"
            );

            // gc frees what the failed backup stored; the next backup works.
            let gc = repo
                .gc(&GcOptions {
                    dry_run: false,
                    wait: Duration::from_secs(0),
                })
                .await
                .unwrap();
            assert!(gc.deleted_chunks > 0, "{gc:?}");
            let third = random_bytes(3 << 20, 3);
            let m = backup(&repo, "db", third.clone()).await.unwrap();
            assert!(restore(&repo, &m).await == third);
            assert!(restore(&repo, &list.manifests[0]).await == first);
            // Make room for the other protocol's round.
            std::fs::remove_dir_all(server.export.join(sub)).unwrap();
        }
    });
}

#[test]
fn a_server_that_stops_is_named_and_works_again_once_back() {
    let mut server = NfsServer::start();
    let rt = runtime();
    for (url, version) in [(server.url_v4("r4"), "v4"), (server.url_v3("r3"), "v3")] {
        let backend = rt
            .block_on(bulwark_nfs::open_with_policy(&url, true, short_retries()))
            .unwrap();
        let repo = rt
            .block_on(Repository::init(backend.clone(), b"pw", "", FAST))
            .unwrap();
        let first = random_bytes(3 << 20, 4);
        rt.block_on(backup(&repo, "db", first.clone())).unwrap();

        server.stop();
        let err = rt
            .block_on(backup(&repo, "db", random_bytes(3 << 20, 5)))
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(&format!("127.0.0.1:{}", server.nfs_port))
                && text.contains("still failing"),
            "{version}: {text}"
        );

        server.restart();
        // The same backend reconnects by itself.
        let second = random_bytes(3 << 20, 6);
        let m = rt.block_on(backup(&repo, "db", second.clone())).unwrap();
        assert!(rt.block_on(restore(&repo, &m)) == second, "{version}");
        let list = rt.block_on(repo.list_snapshots(None)).unwrap();
        assert_eq!(list.manifests.len(), 2, "{version}");
    }

    // A server that comes back within the retry budget: the backup does not even fail.
    let url = server.url_v4("r4");
    let backend = rt.block_on(bulwark_nfs::open(&url, false)).unwrap();
    let repo = rt.block_on(Repository::open(backend, b"pw")).unwrap();
    server.stop();
    let data = random_bytes(2 << 20, 9);
    let backup_thread = {
        let repo = repo.clone();
        let data = data.clone();
        std::thread::spawn(move || runtime().block_on(backup(&repo, "db", data)))
    };
    std::thread::sleep(Duration::from_secs(2));
    server.restart();
    let m = backup_thread.join().unwrap().unwrap();
    assert!(rt.block_on(restore(&repo, &m)) == data);
}

/// The one number for docs/ARCHITECTURE.md: a 256 MiB object written through the backend
/// (temporary name, pipelined WRITEs, COMMIT, RENAME) against libnfs' `nfs-cp` of the same
/// bytes over the same protocol. Run with `--run-ignored only`; it prints, asserts nothing.
#[test]
#[ignore]
fn write_256_mib_against_nfs_cp() {
    let server = NfsServer::start();
    let data = random_bytes(256 << 20, 42);
    let file = server.export.parent().unwrap().join("random-256m");
    std::fs::write(&file, &data).unwrap();
    let rt = runtime();
    for (name, url) in [("v3", server.url_v3("b3")), ("v4.1", server.url_v4("b4"))] {
        let b = rt.block_on(bulwark_nfs::open(&url, true)).unwrap();
        rt.block_on(b.write("warm", vec![1; 1 << 20])).unwrap();
        let started = std::time::Instant::now();
        rt.block_on(b.write("big", data.clone())).unwrap();
        let secs = started.elapsed().as_secs_f64();
        println!(
            "bulwark-nfs {name}: 256 MiB in {secs:.2} s = {:.0} MiB/s",
            256.0 / secs
        );
    }
    let target = format!(
        "nfs://127.0.0.1{}/copy?nfsport={}&mountport={}&version=3",
        server.export.display(),
        server.nfs_port,
        server.mount_port
    );
    let started = std::time::Instant::now();
    let out = std::process::Command::new("nfs-cp")
        .arg(&file)
        .arg(&target)
        .output()
        .unwrap();
    let secs = started.elapsed().as_secs_f64();
    assert!(out.status.success(), "{out:?}");
    println!(
        "nfs-cp v3: 256 MiB in {secs:.2} s = {:.0} MiB/s ({target})",
        256.0 / secs
    );
    assert!(std::fs::read(server.export.join("copy")).unwrap() == data);
}

//! Benchmark: backup and restore through the agent to an NFS export (the agent's own userspace
//! client), against a plain copy of the same bytes over the same protocol (`nfs-cp`, libnfs)
//! and against a local directory; and gc time per 100 000 chunks on the export.
//!
//! Run through `scripts/bench-nfs.sh` (it builds the release binaries and installs what is
//! needed). Every timed step runs three times and the median counts: this VM's speed swings
//! between minutes. Results are a Markdown table on stdout.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use bulwark_tests::nfs::NfsServer;
use bulwark_tests::{dump_text, random_bytes};

const ROUNDS: usize = 3;

/// Where round `r`'s repository is: on the server, or under the local work directory.
type Location = fn(usize, &NfsServer, &Path) -> String;

fn main() {
    let mib: usize = std::env::var("BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512);
    let gc_chunks: usize = std::env::var("BENCH_GC_CHUNKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let agent = sibling("bulwark-agent");
    let work = tempfile::tempdir().expect("work dir");
    let dir = work.path();
    let random = dir.join("random.bin");
    let dump = dir.join("dump.sql");
    std::fs::write(&random, random_bytes(mib << 20, 11)).unwrap();
    std::fs::write(&dump, dump_text(mib << 20, 12)).unwrap();
    std::fs::write(dir.join("pw"), "bench-passphrase\n").unwrap();
    let server = NfsServer::start();
    let bytes = (mib << 20) as f64;
    let rate = |secs: f64| bytes / secs / 1_048_576.0;

    println!("| step | input | median s | MiB/s |");
    println!("|---|---|---|---|");
    // The plain copy: what NFS itself gives one client on this machine.
    let plain = median(|round| {
        let url = format!(
            "nfs://127.0.0.1{}/plain-{round}?nfsport={}&mountport={}&version=3",
            server.export.display(),
            server.nfs_port,
            server.mount_port
        );
        time(Command::new("nfs-cp").arg(&random).arg(&url))
    });
    println!(
        "| nfs-cp (NFSv3) | random | {plain:.2} | {:.0} |",
        rate(plain)
    );

    for (label, input) in [("random", &random), ("dump", &dump)] {
        let targets: [(&str, Location); 3] = [
            ("NFSv3", |r, s, _| s.url_v3(&format!("repo-v3-{r}"))),
            ("NFSv4.1", |r, s, _| s.url_v4(&format!("repo-v4-{r}"))),
            ("local dir", |r, _, d| {
                d.join(format!("local-{r}")).display().to_string()
            }),
        ];
        for (target, location) in targets {
            let mut restores = Vec::new();
            let backup = median(|round| {
                let repo = location(round, &server, dir);
                let repo = match repo.split_once('?') {
                    Some((path, query)) => format!("{path}-{label}?{query}"),
                    None => format!("{repo}-{label}"),
                };
                let cmd = |args: &[&str]| {
                    let mut c = Command::new(&agent);
                    c.args(args)
                        .env("BULWARK_REPO", &repo)
                        .env("BULWARK_PASSWORD_FILE", dir.join("pw"))
                        .env("BULWARK_LOG", "warn");
                    c
                };
                run(cmd(&["repo", "init"]));
                let file = std::fs::File::open(input).unwrap();
                let secs = time(
                    cmd(&["backup", "--database", "bench", "--stdin"]).stdin(Stdio::from(file)),
                );
                let out = dir.join("restored");
                restores.push(time(&mut cmd(&[
                    "restore",
                    "latest",
                    "--database",
                    "bench",
                    "--output",
                    out.to_str().unwrap(),
                ])));
                assert_eq!(
                    std::fs::metadata(&out).unwrap().len(),
                    bytes as u64,
                    "restored size"
                );
                std::fs::remove_file(&out).unwrap();
                secs
            });
            restores.sort_by(f64::total_cmp);
            let restore = restores[restores.len() / 2];
            println!(
                "| backup to {target} | {label} | {backup:.2} | {:.0} |",
                rate(backup)
            );
            println!(
                "| restore from {target} | {label} | {restore:.2} | {:.0} |",
                rate(restore)
            );
        }
    }

    // gc of `gc_chunks` unreferenced chunk objects on the export: listing, marking and
    // deleting all of them.
    let repo = server.url_v3("repo-gc");
    let cmd = |args: &[&str]| {
        let mut c = Command::new(&agent);
        c.args(args)
            .env("BULWARK_REPO", &repo)
            .env("BULWARK_PASSWORD_FILE", dir.join("pw"))
            .env("BULWARK_LOG", "warn");
        c
    };
    run(cmd(&["repo", "init"]));
    let chunks = server.export.join("repo-gc").join("chunks");
    for i in 0..gc_chunks {
        let name = format!(
            "{:064x}",
            (i as u128).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c)
        );
        let sub = chunks.join(&name[..2]);
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::write(sub.join(&name), [0u8; 64]).unwrap();
    }
    let gc = time(&mut cmd(&["gc"]));
    println!(
        "| gc over NFSv3 | {gc_chunks} unreferenced chunks | {gc:.2} | {:.1} s per 100 000 |",
        gc * 100_000.0 / gc_chunks as f64
    );
}

/// The median of [`ROUNDS`] runs of `step` (given the round number), in seconds.
fn median(mut step: impl FnMut(usize) -> f64) -> f64 {
    let mut t: Vec<f64> = (0..ROUNDS).map(&mut step).collect();
    t.sort_by(f64::total_cmp);
    t[ROUNDS / 2]
}

fn time(cmd: &mut Command) -> f64 {
    let start = Instant::now();
    run(cmd);
    start.elapsed().as_secs_f64()
}

fn run(mut cmd: impl std::borrow::BorrowMut<Command>) {
    let out = cmd
        .borrow_mut()
        .stdout(Stdio::null())
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{:?} failed: {}",
        cmd.borrow_mut(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A binary next to this one (`target/release/…`).
fn sibling(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("own path");
    exe.parent().expect("target dir").join(name)
}

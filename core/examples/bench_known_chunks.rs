//! Benchmark of a backup into a repository of millions of chunks, without storing them.
//!
//! `bench_known_chunks REPO_DIR INPUT_FILE SYNTHETIC_CHUNKS` backs `INPUT_FILE` up into the `fs`
//! repository at `REPO_DIR` (created on first use, passphrase `bench`) through a backend whose
//! listing of `chunks/` also yields `SYNTHETIC_CHUNKS` generated chunk names: the repository
//! looks, to the backup, as if it held that many chunks (ten million ≈ 10 TB), while every
//! other call goes to the real directory. A generated id is never read or written; a backup of
//! other data only asks about one if its 48-bit prefix collides with a real chunk's (about once
//! in 28 million new chunks at ten million), and is then told, truthfully, that it is missing.
//!
//! Prints one JSON line: seconds to start the backup (lease + listing + index), seconds and
//! MiB/s for the whole backup, peak RSS of the process (`VmHWM`), chunk counts. One backup per
//! process, so the peak belongs to it. `scripts/bench-known-chunks.sh` runs it for the code
//! before issue 11 (a git worktree; the lines between the `new-api` markers are removed there,
//! as that code has no `list_each`) and for this tree.

use std::sync::Arc;
use std::time::Instant;

use bulwark_core::backend::{Backend, DynBackend, ObjectInfo, OpendalBackend};
use bulwark_core::keys::KdfParams;
use bulwark_core::manifest::{SnapshotKind, Source};
use bulwark_core::repo::backup::BackupOptions;
use bulwark_core::repo::Repository;
use bulwark_core::Result;
use futures::future::BoxFuture;
use futures::FutureExt;

/// A real backend whose `chunks/` listing is padded with `extra` generated chunk names.
struct SyntheticListing {
    inner: DynBackend,
    extra: u64,
}

/// The generated id number `n`: 32 pseudo-random bytes (splitmix64), as a chunk path.
fn synthetic_path(n: u64, out: &mut String) {
    let mut state = n.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5eed;
    let mut bytes = [0u8; 32];
    for word in bytes.chunks_mut(8) {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        word.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    let mut hex = [0u8; 64];
    hex::encode_to_slice(bytes, &mut hex).expect("64 hex digits");
    let hex = std::str::from_utf8(&hex).expect("hex is ASCII");
    out.clear();
    out.push_str("chunks/");
    out.push_str(&hex[..2]);
    out.push('/');
    out.push_str(hex);
}

impl Backend for SyntheticListing {
    fn location(&self) -> &str {
        self.inner.location()
    }
    fn read<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>>> {
        self.inner.read(path)
    }
    fn write<'a>(&'a self, path: &'a str, data: Vec<u8>) -> BoxFuture<'a, Result<()>> {
        self.inner.write(path, data)
    }
    fn create_new<'a>(&'a self, path: &'a str, data: Vec<u8>) -> BoxFuture<'a, Result<bool>> {
        self.inner.create_new(path, data)
    }
    /// What the code before issue 11 calls: the whole listing as strings.
    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<String>>> {
        async move {
            let mut paths = self.inner.list(prefix).await?;
            if prefix == "chunks/" {
                let mut path = String::new();
                for n in 0..self.extra {
                    synthetic_path(n, &mut path);
                    paths.push(path.clone());
                }
            }
            Ok(paths)
        }
        .boxed()
    }
    // new-api:begin
    fn list_each<'a>(
        &'a self,
        prefix: &'a str,
        each: &'a mut (dyn FnMut(&str) + Send),
    ) -> BoxFuture<'a, Result<()>> {
        async move {
            self.inner.list_each(prefix, &mut *each).await?;
            if prefix == "chunks/" {
                let mut path = String::new();
                for n in 0..self.extra {
                    synthetic_path(n, &mut path);
                    each(&path);
                }
            }
            Ok(())
        }
        .boxed()
    }
    // new-api:end
    fn stat<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<Option<ObjectInfo>>> {
        self.inner.stat(path)
    }
    fn delete<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<()>> {
        self.inner.delete(path)
    }
    fn make_durable<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<()>> {
        self.inner.make_durable(path)
    }
}

/// A field of `/proc/self/status` in KiB (`VmHWM` is the peak RSS).
fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap_or(0)
}

#[allow(clippy::vec_init_then_push)] // `dedup` below: one push, or none in the old tree
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, repo_dir, input, extra] = args.as_slice() else {
        eprintln!("usage: bench_known_chunks REPO_DIR INPUT_FILE SYNTHETIC_CHUNKS");
        std::process::exit(2);
    };
    let extra: u64 = extra.parse().expect("SYNTHETIC_CHUNKS is a number");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let fresh = !std::path::Path::new(repo_dir).join("config").exists();
        let fs: DynBackend = Arc::new(OpendalBackend::open(repo_dir, true).expect("open repo dir"));
        let backend: DynBackend = Arc::new(SyntheticListing { inner: fs, extra });
        // Light key derivation: the benchmark is about the backup, not Argon2id.
        let kdf = KdfParams {
            memory_kib: 8 * 1024,
            iterations: 1,
            parallelism: 1,
        };
        let repo = if fresh {
            Repository::init(backend, b"bench", "bench", kdf).await
        } else {
            Repository::open(backend, b"bench").await
        }
        .expect("open repository");
        let rss_before = status_kib("VmRSS");

        let started = Instant::now();
        let opts = BackupOptions::new("bench", "stream", SnapshotKind::Manual, Source::Stream);
        let mut session = repo.start_backup(opts).await.expect("start backup");
        let start_secs = started.elapsed().as_secs_f64();
        let rss_started = status_kib("VmRSS");
        let file = std::fs::File::open(input).expect("open input");
        let size = file.metadata().expect("stat input").len();
        session
            .add_stream("data", "application/octet-stream", file)
            .await
            .expect("back up the input");
        // Without the `new-api` lines nothing is pushed, so it needs no `mut` there.
        #[allow(unused_mut)]
        let mut dedup: Vec<serde_json::Value> = Vec::new();
        // new-api:begin
        dedup.push(serde_json::to_value(session.dedup()).expect("counters serialize"));
        // new-api:end
        let manifest = session.commit().await.expect("commit");
        let secs = started.elapsed().as_secs_f64();
        let line = serde_json::json!({
            "synthetic_chunks": extra,
            "input_mib": size as f64 / 1048576.0,
            "start_backup_secs": (start_secs * 1000.0).round() / 1000.0,
            "backup_secs": (secs * 1000.0).round() / 1000.0,
            "mib_per_sec": (size as f64 / 1048576.0 / secs).round(),
            "rss_before_mib": rss_before / 1024,
            "rss_after_start_mib": rss_started / 1024,
            "peak_rss_mib": status_kib("VmHWM") / 1024,
            "chunks": manifest.stats.chunks,
            "new_chunks": manifest.stats.new_chunks,
            "dedup": dedup.first(),
        });
        println!("{line}");
    });
}

//! Writing a snapshot: input → chunks → ids → (new ones) compressed and sealed → storage.
//!
//! The pipeline has three stages that overlap: one blocking thread reads and cuts chunks, the
//! CPU stage hashes, deduplicates, compresses and encrypts on the fixed CPU worker pool (one
//! chunk per core in flight, results taken in input order), and up to [`WRITE_WINDOW`] writes run as
//! async tasks. Deduplication asks [`KnownChunks`]: a chunk whose id was not listed under
//! `chunks/` is sealed in the same worker job that hashed it; one whose 48-bit prefix was
//! listed is looked up on the storage first (see [`super::known`] for why a prefix alone never
//! skips a write), and up to [`CONFIRM_WINDOW`] more chunks are let in while such look-ups
//! are outstanding, so that their round trips overlap. Every stage is bounded, so memory stays at a few dozen MiB whatever the input
//! size. Chunk buffers come from a small pool: a fresh multi-MiB allocation per chunk costs more
//! than compressing it.

use std::collections::{BTreeMap, VecDeque};
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use futures::{StreamExt, TryStreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::known::{DedupCounters, KnownChunks, StoredPrefixes, Verdict};
use super::lease::{self, Lease};
use super::{with_codec, Repository};
use crate::blob::BlobKind;
use crate::chunker::Chunker;
use crate::crypto::ChunkId;
use crate::error::{Error, Result};
use crate::manifest::{
    snapshot_name, validate_database_id, ChunkRef, Manifest, SnapshotKind, Source, Stats, Stream,
};

/// Concurrent object writes per backup: enough to hide S3 latency, few enough to bound memory.
const WRITE_WINDOW: usize = 6;
/// Chunks buffered between the reader thread and the CPU stage.
const READ_AHEAD: usize = 4;
/// Chunks kept in flight beyond one per core while they wait for the storage to confirm that
/// they are stored ([`KnownChunks::confirm`]): on S3 each is a HEAD round trip, and with only
/// cores + 1 chunks in flight a 20 ms round trip would hold reuse to ~150 MiB/s. Each holds its
/// buffer (1 MiB on average, 4 MiB at most) while it waits.
const CONFIRM_WINDOW: usize = 8;
/// How long a backup waits for a running GC sweep before giving up.
const SWEEP_WAIT: Duration = Duration::from_secs(600);

/// Counters a caller can poll to draw a progress bar.
#[derive(Debug, Default)]
pub struct Progress {
    pub bytes_read: AtomicU64,
    pub bytes_stored: AtomicU64,
}

pub struct BackupOptions {
    pub database_id: String,
    pub database_type: String,
    pub kind: SnapshotKind,
    pub source: Source,
    pub tags: BTreeMap<String, String>,
}

impl BackupOptions {
    /// Options for a snapshot of `database_id` with no tags.
    pub fn new(database_id: &str, database_type: &str, kind: SnapshotKind, source: Source) -> Self {
        BackupOptions {
            database_id: database_id.to_string(),
            database_type: database_type.to_string(),
            kind,
            source,
            tags: BTreeMap::new(),
        }
    }
}

/// A backup in progress: holds a lease that keeps GC from deleting chunks it reuses.
pub struct BackupSession {
    repo: Repository,
    opts: BackupOptions,
    lease: Option<Lease>,
    known: Arc<KnownChunks>,
    streams: Vec<Stream>,
    stats: Stats,
    started: chrono::DateTime<Utc>,
    details: BTreeMap<String, String>,
    /// One written chunk path per `chunks/xx/` directory, whose entries must be made
    /// durable before the manifest that references them.
    touched_dirs: BTreeMap<String, String>,
    pool: BufferPool,
    pub progress: Arc<Progress>,
}

struct Processed {
    chunk: ChunkRef,
    /// The sealed blob, if this chunk was not stored yet.
    blob: Option<Vec<u8>>,
}

impl Repository {
    /// Starts a backup: takes a lease (waiting out a GC sweep), then learns which chunks exist
    /// (a compact index of the listing's id prefixes, [`StoredPrefixes`]).
    pub async fn start_backup(&self, opts: BackupOptions) -> Result<BackupSession> {
        validate_database_id(&opts.database_id)?;
        let purpose = format!("backup of {}", opts.database_id);
        let lease = lease::acquire_backup(self.backend(), &purpose, SWEEP_WAIT).await?;
        let stored = match StoredPrefixes::list(self.backend()).await {
            Ok(stored) => stored,
            Err(e) => {
                // Nothing was written: the lease must not hold GC back until it expires.
                if let Err(release) = lease.release().await {
                    tracing::warn!(error = %release, "could not remove the lease of a backup that failed to start");
                }
                return Err(e);
            }
        };
        Ok(BackupSession {
            repo: self.clone(),
            opts,
            lease: Some(lease),
            known: Arc::new(KnownChunks::new(stored)),
            streams: Vec::new(),
            stats: Stats::default(),
            started: Utc::now(),
            details: BTreeMap::new(),
            touched_dirs: BTreeMap::new(),
            pool: BufferPool::default(),
            progress: Arc::new(Progress::default()),
        })
    }
}

impl BackupSession {
    /// Chunks, deduplicates and stores everything `reader` yields as stream `name`, and hands
    /// the reader back (a tree reader carries the index built while reading).
    pub async fn add_stream<R: Read + Send + 'static>(
        &mut self,
        name: &str,
        media_type: &str,
        reader: R,
    ) -> Result<R> {
        let repo = self.repo.clone();
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(READ_AHEAD);
        let seed = repo.keys().chunker_seed;
        let (pool, progress) = (self.pool.clone(), self.progress.clone());
        let stream_name = name.to_string();
        let reader_task = tokio::task::spawn_blocking(move || -> Result<R> {
            let mut chunker = Chunker::new(reader, seed);
            while let Some(chunk) = chunker
                .next_chunk()
                .map_err(|e| Error::io(format!("reading the input of stream {stream_name}"), e))?
            {
                let mut buf = pool.get();
                buf.extend_from_slice(chunk);
                progress
                    .bytes_read
                    .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                if tx.blocking_send(buf).is_err() {
                    break; // the pipeline failed; its error is reported there
                }
            }
            Ok(chunker.into_inner())
        });

        let window = crate::workers::count() + 1;
        let mut cpu: VecDeque<tokio::task::JoinHandle<Result<Processed>>> = VecDeque::new();
        let mut writes: JoinSet<Result<u64>> = JoinSet::new();
        let mut chunks = Vec::new();
        let mut size = 0u64;
        let mut input_done = false;
        loop {
            let extra = self.known.confirming().min(CONFIRM_WINDOW);
            while !input_done && cpu.len() < window + extra {
                match rx.recv().await {
                    Some(buf) => cpu.push_back(self.spawn_process(buf)),
                    None => input_done = true,
                }
            }
            let Some(mut next) = cpu.pop_front() else {
                break;
            };
            // While the oldest chunk is not done, a chunk behind it that starts waiting for its
            // confirmation makes room for one more: let it in then, not only when the oldest
            // finishes, or round trips that started together would end together and never
            // overlap with the next ones.
            let p = loop {
                let extra = self.known.confirming().min(CONFIRM_WINDOW);
                let room = !input_done && cpu.len() + 1 < window + extra;
                tokio::select! {
                    done = &mut next => break done,
                    buf = rx.recv(), if room => match buf {
                        Some(buf) => cpu.push_back(self.spawn_process(buf)),
                        None => input_done = true,
                    },
                    _ = self.known.confirmation_started(), if !input_done && !room => {}
                }
            };
            let p = p.expect("chunk processing task panicked")?;
            size += p.chunk.len as u64;
            self.stats.chunks += 1;
            if let Some(blob) = p.blob {
                self.stats.new_chunks += 1;
                self.stats.new_logical_bytes += p.chunk.len as u64;
                while writes.len() >= WRITE_WINDOW {
                    self.stats.new_stored_bytes += writes
                        .join_next()
                        .await
                        .expect("non-empty")
                        .expect("write task")?;
                }
                let (backend, path, progress) = (
                    repo.backend().clone(),
                    p.chunk.id.path(),
                    self.progress.clone(),
                );
                let dir = path.rsplit_once('/').map_or("", |(d, _)| d).to_string();
                self.touched_dirs.entry(dir).or_insert_with(|| path.clone());
                writes.spawn(async move {
                    let len = blob.len() as u64;
                    backend.write(&path, blob).await?;
                    progress.bytes_stored.fetch_add(len, Ordering::Relaxed);
                    Ok(len)
                });
            }
            chunks.push(p.chunk);
        }
        while let Some(r) = writes.join_next().await {
            self.stats.new_stored_bytes += r.expect("write task")?;
        }
        let reader = reader_task.await.expect("reader task panicked")?;
        self.stats.logical_bytes += size;
        self.streams.push(Stream {
            name: name.to_string(),
            media_type: media_type.to_string(),
            size,
            chunks,
        });
        Ok(reader)
    }

    /// Records a driver fact in the manifest (see [`Manifest::details`]).
    pub fn set_detail(&mut self, key: &str, value: impl Into<String>) {
        self.details.insert(key.to_string(), value.into());
    }

    /// When the backup started (the snapshot's time).
    pub fn started(&self) -> chrono::DateTime<Utc> {
        self.started
    }

    /// How the dedup decisions of this backup were reached so far.
    pub fn dedup(&self) -> DedupCounters {
        self.known.counters()
    }

    /// Hashes a chunk and decides whether it is stored; seals it if not.
    fn spawn_process(&self, buf: Vec<u8>) -> tokio::task::JoinHandle<Result<Processed>> {
        let repo = self.repo.clone();
        let known = self.known.clone();
        let pool = self.pool.clone();
        tokio::spawn(async move {
            let (r, k) = (repo.clone(), known.clone());
            let (id, verdict, mut blob, buf) = crate::workers::run(move || {
                let id = r.keys().chunk_id(&buf);
                let verdict = k.classify(id);
                let blob = (verdict == Verdict::New).then(|| seal(&r, id, &buf));
                (id, verdict, blob, buf)
            })
            .await;
            let buf = if verdict == Verdict::Confirm && known.confirm(id, repo.backend()).await? {
                let r = repo.clone();
                let (sealed, buf) = crate::workers::run(move || (seal(&r, id, &buf), buf)).await;
                blob = Some(sealed);
                buf
            } else {
                buf
            };
            let chunk = ChunkRef {
                id,
                len: buf.len() as u32,
            };
            pool.put(buf);
            Ok(Processed { chunk, blob })
        })
    }

    /// Writes the manifest (the moment the snapshot comes into existence) and releases the
    /// lease.
    pub async fn commit(mut self) -> Result<Manifest> {
        let now = Utc::now();
        let manifest = Manifest {
            version: crate::manifest::MANIFEST_VERSION,
            name: snapshot_name(self.started, self.opts.kind),
            database_id: self.opts.database_id.clone(),
            database_type: self.opts.database_type.clone(),
            kind: self.opts.kind,
            source: self.opts.source,
            started: self.started,
            finished: now,
            hostname: crate::keys::hostname(),
            tool_versions: BTreeMap::from([(
                "bulwark".to_string(),
                env!("CARGO_PKG_VERSION").to_string(),
            )]),
            tags: std::mem::take(&mut self.opts.tags),
            details: std::mem::take(&mut self.details),
            streams: std::mem::take(&mut self.streams),
            stats: self.stats.clone(),
        };
        if let Err(e) = self.write_durably(&manifest).await {
            // Nothing was committed (a full disk, say): the lease must not hold GC back, which
            // may be exactly what frees the space.
            self.abort().await;
            return Err(e);
        }
        if let Some(lease) = self.lease.take() {
            // The snapshot exists now; a lease left behind only delays GC until it expires.
            if let Err(e) = lease.release().await {
                tracing::warn!(error = %e, "snapshot written, but its lease could not be removed");
            }
        }
        Ok(manifest)
    }

    async fn write_durably(&self, manifest: &Manifest) -> Result<()> {
        if let Some(lease) = &self.lease {
            lease.ensure_valid()?;
        }
        // A manifest must never outlive a power cut that its chunks did not.
        let backend = self.repo.backend();
        futures::stream::iter(self.touched_dirs.values())
            .map(|chunk| backend.make_durable(chunk))
            .buffer_unordered(16)
            .try_collect::<Vec<()>>()
            .await?;
        if let Some(dir) = self.touched_dirs.keys().next() {
            backend.make_durable(dir).await?; // `chunks/` itself, for new `chunks/xx/`
        }
        self.repo.write_manifest(manifest).await
    }

    /// Gives up: releases the lease. Chunks already written stay until GC finds them
    /// unreferenced.
    pub async fn abort(mut self) {
        if let Some(lease) = self.lease.take() {
            let _ = lease.release().await;
        }
    }
}

fn seal(repo: &Repository, id: ChunkId, plain: &[u8]) -> Vec<u8> {
    let keys = repo.keys();
    with_codec(|c| c.seal(BlobKind::Chunk, &keys.chunk_cipher, &id.0, plain))
}

/// A few reusable chunk buffers shared by the reader thread and the CPU workers.
#[derive(Clone, Default)]
struct BufferPool(Arc<Mutex<Vec<Vec<u8>>>>);

impl BufferPool {
    fn get(&self) -> Vec<u8> {
        self.0
            .lock()
            .expect("buffer pool")
            .pop()
            .unwrap_or_default()
    }

    fn put(&self, mut buf: Vec<u8>) {
        buf.clear();
        let mut pool = self.0.lock().expect("buffer pool");
        if pool.len() < READ_AHEAD + 8 {
            pool.push(buf);
        }
    }
}

//! Which chunks a backup may leave unwritten, in memory that grows by 4 bytes per stored chunk.
//!
//! A backup must not compress, encrypt and upload a chunk the repository already holds, so it
//! needs to know which of the ids it computes are stored. Until issue 11 it listed `chunks/`
//! into a `Vec<String>` and then a `HashSet<ChunkId>`: for a 10 TB repository (about ten million
//! 1 MiB chunks) that is ~1 GiB of path strings plus a 16 M-bucket table of 33 bytes a bucket
//! (~530 MiB), on the database host, before the first byte of the dump is read.
//!
//! Now the listing is streamed ([`Backend::list_each`](crate::backend::Backend::list_each)) into
//! [`StoredPrefixes`]: the first 48 bits of each listed id, sorted, kept as 65 536 buckets by the
//! first 16 bits with the next 32 bits stored — 4 bytes per chunk plus 512 KiB of bucket bounds,
//! 40 MB for ten million chunks. Building it holds one `u64` per chunk (80 MB for ten million)
//! that is then packed in place, two tails per word, and shrunk, so the peak is the `u64`s alone.
//!
//! A prefix is not an id: a hit only says "probably stored", and a false "already stored" would
//! be silent data loss (a snapshot pointing at a chunk nobody wrote). So [`KnownChunks`] never
//! skips a write on a prefix alone:
//! - prefix miss → the id was not listed: write it (exactly what the full set did);
//! - prefix hit → `stat` the chunk's own object. Present (and long enough to be a blob) → reuse;
//!   absent → write. A prefix shared by another id (probability n / 2^48 per new chunk, about
//!   one in 28 million at ten million chunks) therefore costs one `stat`, never a lost chunk;
//! - every id this backup has written or confirmed goes into an exact `HashSet`, so a chunk
//!   repeated inside one backup is written once and confirmed once. That set grows with the
//!   backup's own size, like the manifest's chunk list does, not with the repository's.
//!
//! The `stat` is one HEAD (S3) or `stat(2)` (fs) per deduplicated chunk of ~1 MiB, cheap next
//! to reading, hashing and comparing that MiB, and it reads the storage's state *now*: a chunk
//! that `verify` moved to `quarantine/` after the listing, or that GC on another host removed
//! before this backup took its lease, is written again instead of being referenced. No
//! local cache survives from one backup to the next, so nothing stale can be trusted.
//!
//! Deduplicating against the previous snapshot's chunk list first (what Proxmox Backup Server's
//! client does) would save those `stat`s for unchanged data, but the list would have to be
//! checked against the storage anyway (a listed chunk may have been quarantined since), and
//! loading a large database's manifest costs ~80 bytes per MiB of it again; see
//! docs/ARCHITECTURE.md "Where we differ".

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::backend::DynBackend;
use crate::crypto::ChunkId;
use crate::error::Result;
use crate::format;

/// Bits of an id that choose its bucket.
const BUCKET_BITS: u32 = 16;
const BUCKETS: usize = 1 << BUCKET_BITS;
/// The smallest object that can be a chunk blob: a header and a tag around no ciphertext.
/// Anything shorter under a chunk's name is not a usable copy and is written again.
const MIN_BLOB_LEN: u64 = (format::BLOB_HEADER_LEN + format::TAG_LEN) as u64;

/// The first 64 bits of an id, big-endian, so that sorting them sorts by bucket first.
fn prefix64(id: &ChunkId) -> u64 {
    u64::from_be_bytes(id.0[..8].try_into().expect("8 bytes"))
}

fn bucket_of(prefix: u64) -> usize {
    (prefix >> (64 - BUCKET_BITS)) as usize
}

/// The 32 bits after the bucket bits.
fn tail_of(prefix: u64) -> u32 {
    (prefix >> (64 - BUCKET_BITS - 32)) as u32
}

/// The 48-bit prefixes of a set of ids, sorted and deduplicated: "maybe present" or "absent".
pub(crate) struct StoredPrefixes {
    /// `bounds[b]..bounds[b + 1]` are the indexes of bucket `b`'s tails.
    bounds: Vec<usize>,
    /// Tails in ascending order within each bucket, two per word (index `i` is in word `i / 2`,
    /// the low half for even `i`).
    words: Vec<u64>,
    len: usize,
}

impl StoredPrefixes {
    /// Lists `chunks/` (streamed: no path is kept) into an index. Objects that are not
    /// canonically named chunks are ignored, as everywhere else.
    pub(crate) async fn list(backend: &DynBackend) -> Result<StoredPrefixes> {
        let mut prefixes = Vec::new();
        backend
            .list_each(format::CHUNKS_DIR, &mut |path| {
                if let Some(id) = ChunkId::from_path(path) {
                    prefixes.push(prefix64(&id));
                }
            })
            .await?;
        // Sorting ten million words takes about a second: not on an async thread.
        Ok(crate::workers::run(move || StoredPrefixes::from_prefixes(prefixes)).await)
    }

    /// Builds the index from the ids' first 64 bits, reusing their memory.
    fn from_prefixes(mut words: Vec<u64>) -> StoredPrefixes {
        words.sort_unstable();
        let mut bounds = vec![0usize; BUCKETS + 1];
        // Pack in place: entry `i` is read from word `i` before anything is written to word
        // `i / 2`, and `i / 2 < i` for every `i > 0`, so no unread word is overwritten.
        let mut len = 0usize;
        let mut last: Option<(usize, u32)> = None;
        for i in 0..words.len() {
            let prefix = words[i];
            let key = (bucket_of(prefix), tail_of(prefix));
            if last == Some(key) {
                continue; // two stored ids with the same 48-bit prefix: one entry serves both
            }
            last = Some(key);
            bounds[key.0 + 1] += 1;
            let (word, shift) = (len / 2, (len % 2) * 32);
            let kept = if shift == 0 {
                0
            } else {
                words[word] & 0xffff_ffff
            };
            words[word] = kept | (u64::from(key.1) << shift);
            len += 1;
        }
        for b in 0..BUCKETS {
            bounds[b + 1] += bounds[b];
        }
        words.truncate(len.div_ceil(2));
        words.shrink_to_fit();
        StoredPrefixes { bounds, words, len }
    }

    fn tail(&self, i: usize) -> u32 {
        (self.words[i / 2] >> ((i % 2) * 32)) as u32
    }

    /// Whether an id with the same first 48 bits was listed. `false` is certain; `true` is a
    /// "maybe" that must be confirmed before anything relies on it.
    pub(crate) fn may_contain(&self, id: &ChunkId) -> bool {
        let prefix = prefix64(id);
        let (b, want) = (bucket_of(prefix), tail_of(prefix));
        let (mut lo, mut hi) = (self.bounds[b], self.bounds[b + 1]);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.tail(mid).cmp(&want) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return true,
            }
        }
        false
    }

    /// Distinct 48-bit prefixes held.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Bytes of memory the index holds.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.bounds.capacity() * std::mem::size_of::<usize>()
            + self.words.capacity() * std::mem::size_of::<u64>()
    }
}

/// What a backup does with a chunk it has just hashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Stored, or being written by this backup: reference it.
    Known,
    /// Not stored: this backup has claimed it and must write it.
    New,
    /// Its prefix was listed: ask the storage with [`KnownChunks::confirm`].
    Confirm,
}

/// Counters of how the dedup decisions were reached, for tests and the benchmark.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct DedupCounters {
    /// Distinct 48-bit prefixes listed under `chunks/` at the start.
    pub listed: usize,
    /// Bytes the prefix index holds.
    pub index_bytes: usize,
    /// Prefix hits that a `stat` confirmed as stored.
    pub confirmed: u64,
    /// Prefix hits whose object was missing (another id's prefix, or removed since the
    /// listing): written.
    pub unconfirmed: u64,
}

/// The dedup state of one backup: the listed prefixes, plus the exact ids it wrote or
/// confirmed.
pub(crate) struct KnownChunks {
    stored: StoredPrefixes,
    exact: Mutex<HashSet<ChunkId>>,
    counters: Mutex<DedupCounters>,
    /// Confirmations waiting for the storage right now.
    confirming: AtomicUsize,
    /// Signalled when a confirmation starts: the backup may let another chunk in.
    started: tokio::sync::Notify,
}

/// Counts a confirmation as outstanding until dropped, also on an error or cancellation.
struct Outstanding<'a>(&'a AtomicUsize);

impl Drop for Outstanding<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl KnownChunks {
    pub(crate) fn new(stored: StoredPrefixes) -> KnownChunks {
        let counters = DedupCounters {
            listed: stored.len(),
            index_bytes: stored.heap_bytes(),
            ..DedupCounters::default()
        };
        KnownChunks {
            stored,
            exact: Mutex::new(HashSet::new()),
            counters: Mutex::new(counters),
            confirming: AtomicUsize::new(0),
            started: tokio::sync::Notify::new(),
        }
    }

    /// Decides what it can without the storage. [`Verdict::New`] claims the id: a second
    /// occurrence of it in this backup is [`Verdict::Known`].
    pub(crate) fn classify(&self, id: ChunkId) -> Verdict {
        let mut exact = self.exact.lock().expect("known-chunk set");
        if exact.contains(&id) {
            Verdict::Known
        } else if self.stored.may_contain(&id) {
            Verdict::Confirm
        } else {
            exact.insert(id);
            Verdict::New
        }
    }

    /// Settles a [`Verdict::Confirm`] by looking at the chunk's object: `true` if this backup
    /// must write it (and has claimed it), `false` if it is stored or claimed by another chunk
    /// of this backup.
    pub(crate) async fn confirm(&self, id: ChunkId, backend: &DynBackend) -> Result<bool> {
        self.confirming.fetch_add(1, Ordering::Relaxed);
        let _outstanding = Outstanding(&self.confirming);
        self.started.notify_one();
        let present = backend
            .stat(&id.path())
            .await?
            .is_some_and(|o| o.size >= MIN_BLOB_LEN);
        let claimed = self.exact.lock().expect("known-chunk set").insert(id);
        let mut c = self.counters.lock().expect("dedup counters");
        if present {
            c.confirmed += 1;
        } else {
            c.unconfirmed += 1;
        }
        Ok(claimed && !present)
    }

    /// How many chunks are waiting for their confirmation now: the backup keeps that many
    /// more in flight (up to a limit), so that storage round trips overlap.
    pub(crate) fn confirming(&self) -> usize {
        self.confirming.load(Ordering::Relaxed)
    }

    /// Resolves when a confirmation has started since the last call (at once if one has).
    pub(crate) async fn confirmation_started(&self) {
        self.started.notified().await
    }

    pub(crate) fn counters(&self) -> DedupCounters {
        *self.counters.lock().expect("dedup counters")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::io::Cursor;
    use std::sync::Arc;

    use futures::future::BoxFuture;
    use futures::FutureExt;

    use crate::backend::{Backend, ObjectInfo, OpendalBackend};
    use crate::manifest::{Manifest, SnapshotKind, Source};
    use crate::repo::backup::{BackupOptions, Progress};
    use crate::repo::tests::noise;
    use crate::repo::Repository;

    fn id(seed: u64) -> ChunkId {
        ChunkId(*blake3::hash(&seed.to_le_bytes()).as_bytes())
    }

    fn index(ids: &[ChunkId]) -> StoredPrefixes {
        StoredPrefixes::from_prefixes(ids.iter().map(prefix64).collect())
    }

    #[test]
    fn listed_ids_are_found_and_others_are_not() {
        let listed: Vec<ChunkId> = (0..50_000).map(id).collect();
        let idx = index(&listed);
        assert_eq!(idx.len(), listed.len());
        assert!(listed.iter().all(|i| idx.may_contain(i)));
        // 50 000 others against 50 000 listed 48-bit prefixes: a false hit has odds of 1 in
        // 2^48 / 50 000 each, so none here.
        assert!((50_000..100_000).map(id).all(|i| !idx.may_contain(&i)));
        // 4 bytes per entry, two per word, plus the bucket bounds.
        assert_eq!(idx.words.len(), 25_000);
        assert_eq!(idx.heap_bytes(), 25_000 * 8 + (BUCKETS + 1) * 8);
    }

    #[test]
    fn packing_keeps_odd_counts_duplicates_and_bucket_edges() {
        let mut ids: Vec<ChunkId> = (0..8).map(id).collect();
        // Same bucket, neighbouring tails, and the lowest and highest possible prefixes.
        for (a, b) in [(0u8, 0u8), (0xff, 0xff), (0x12, 0x34)] {
            for t in [0u8, 1, 0xff] {
                let mut x = [t; 32];
                x[0] = a;
                x[1] = b;
                ids.push(ChunkId(x));
            }
        }
        let dup = ids[3];
        ids.push(dup);
        let mut also_same_prefix = dup;
        also_same_prefix.0[31] ^= 1; // differs only after the first 48 bits
        ids.push(also_same_prefix);
        let idx = index(&ids);
        let distinct: BTreeSet<(usize, u32)> = ids
            .iter()
            .map(|i| (bucket_of(prefix64(i)), tail_of(prefix64(i))))
            .collect();
        assert_eq!(idx.len(), distinct.len());
        assert_eq!(
            idx.len() % 2,
            1,
            "an odd count exercises the half-filled last word"
        );
        assert!(ids.iter().all(|i| idx.may_contain(i)));
        let mut near = ids[7];
        near.0[5] ^= 1; // same bucket, tail one bit off
        assert!(!idx.may_contain(&near));
        assert!(!index(&[]).may_contain(&ids[0]));
    }

    #[test]
    fn a_prefix_twin_is_a_maybe_never_a_known() {
        let stored = id(1);
        let mut twin = stored;
        twin.0[20] ^= 0x80;
        let known = KnownChunks::new(index(&[stored]));
        assert_eq!(known.classify(twin), Verdict::Confirm);
        assert_eq!(known.classify(id(2)), Verdict::New);
        assert_eq!(
            known.classify(id(2)),
            Verdict::Known,
            "claimed by the first occurrence"
        );
    }

    async fn new_repo(backend: DynBackend) -> Repository {
        Repository::init(backend, b"pw", "test", crate::keys::tests::FAST)
            .await
            .unwrap()
    }

    fn opts() -> BackupOptions {
        BackupOptions::new("db1", "stream", SnapshotKind::Manual, Source::Stream)
    }

    /// One backup of `data`, also returning how its dedup decisions were reached.
    async fn backup(repo: &Repository, data: &[u8]) -> (Manifest, DedupCounters) {
        let mut s = repo.start_backup(opts()).await.unwrap();
        s.add_stream(
            "data",
            "application/octet-stream",
            Cursor::new(data.to_vec()),
        )
        .await
        .unwrap();
        let counters = s.dedup();
        (s.commit().await.unwrap(), counters)
    }

    async fn restore(repo: &Repository, m: &Manifest) -> Vec<u8> {
        repo.restore_stream(m, "data", Vec::new(), Arc::new(Progress::default()))
            .await
            .unwrap()
    }

    fn ids(m: &Manifest) -> Vec<ChunkId> {
        m.streams[0].chunks.iter().map(|c| c.id).collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_second_backup_of_the_same_data_writes_nothing_and_confirms_each_chunk_once() {
        let backend: DynBackend = Arc::new(OpendalBackend::memory());
        let repo = new_repo(backend).await;
        // The same 8 MiB three times: the content-defined cuts fall in step again within the
        // second copy, so its chunks repeat those of the first inside one backup, and must be
        // written only once.
        let part = noise(8 << 20, 7);
        let data = [part.clone(), part.clone(), part].concat();
        let (first, c1) = backup(&repo, &data).await;
        let distinct: BTreeSet<ChunkId> = ids(&first).into_iter().collect();
        assert!(
            distinct.len() < first.stats.chunks as usize,
            "{:?}",
            first.stats
        );
        assert_eq!(first.stats.new_chunks as usize, distinct.len());
        assert_eq!((c1.listed, c1.confirmed, c1.unconfirmed), (0, 0, 0));

        let (second, c2) = backup(&repo, &data).await;
        assert_eq!(second.stats.new_chunks, 0, "{:?}", second.stats);
        assert_eq!(c2.listed, distinct.len());
        assert_eq!(
            c2.confirmed as usize,
            distinct.len(),
            "one stat per distinct chunk"
        );
        assert_eq!(c2.unconfirmed, 0);
        assert_eq!(restore(&repo, &second).await, data);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_chunk_removed_after_the_listing_is_written_again() {
        // What `verify` does to a damaged chunk (moves it out of `chunks/`) can happen while a
        // backup runs: the listing is then stale, and only the confirmation sees it.
        let backend: DynBackend = Arc::new(OpendalBackend::memory());
        let repo = new_repo(backend.clone()).await;
        let data = noise(4 << 20, 11);
        let (first, _) = backup(&repo, &data).await;
        let gone = ids(&first)[1];

        let mut s = repo.start_backup(opts()).await.unwrap();
        backend.delete(&gone.path()).await.unwrap();
        s.add_stream(
            "data",
            "application/octet-stream",
            Cursor::new(data.clone()),
        )
        .await
        .unwrap();
        let c = s.dedup();
        let second = s.commit().await.unwrap();
        assert_eq!(second.stats.new_chunks, 1, "{:?}", second.stats);
        assert_eq!(c.unconfirmed, 1);
        assert!(backend.stat(&gone.path()).await.unwrap().is_some());
        assert_eq!(
            restore(&repo, &first).await,
            data,
            "the old snapshot is healed too"
        );
        assert_eq!(restore(&repo, &second).await, data);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn another_id_with_the_same_prefix_or_a_truncated_object_is_not_taken_for_the_chunk() {
        let backend: DynBackend = Arc::new(OpendalBackend::memory());
        let repo = new_repo(backend.clone()).await;
        let data = noise(4 << 20, 13);
        let (first, _) = backup(&repo, &data).await;
        let chunks = ids(&first);
        // Chunk 0 is replaced by a twin: a stored object whose id shares its first 48 bits.
        let blob = backend.read(&chunks[0].path()).await.unwrap().unwrap();
        let mut twin = chunks[0];
        twin.0[31] ^= 1;
        backend.write(&twin.path(), blob).await.unwrap();
        backend.delete(&chunks[0].path()).await.unwrap();
        // Chunk 1's object is cut short: present, but no blob.
        backend
            .write(&chunks[1].path(), vec![0; MIN_BLOB_LEN as usize - 1])
            .await
            .unwrap();

        let (second, c) = backup(&repo, &data).await;
        assert_eq!(second.stats.new_chunks, 2, "{:?}", second.stats);
        assert_eq!(c.unconfirmed, 2);
        assert_eq!(c.confirmed as usize, chunks.len() - 2);
        assert_eq!(restore(&repo, &second).await, data);
    }

    /// Answers `stat` of chunks after a delay, like an S3 HEAD, counting how many are
    /// outstanding.
    struct SlowStat {
        inner: DynBackend,
        in_flight: AtomicUsize,
        most: AtomicUsize,
    }

    impl Backend for SlowStat {
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
        fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<String>>> {
            self.inner.list(prefix)
        }
        fn stat<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<Option<ObjectInfo>>> {
            if !path.starts_with(crate::format::CHUNKS_DIR) {
                return self.inner.stat(path); // not a chunk's confirmation (the reserve)
            }
            async move {
                let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                self.most.fetch_max(now, Ordering::SeqCst);
                // A slow round trip that waits (up to 2 s) for more than the CPU window's worth
                // of others to be in flight: the answer does not depend on how fast a loaded
                // machine cuts and hashes the chunks behind it.
                let enough = crate::workers::count() + 2;
                let until = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
                while self.most.load(Ordering::SeqCst) < enough
                    && tokio::time::Instant::now() < until
                {
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
                tokio::time::sleep(std::time::Duration::from_millis(30)).await;
                self.in_flight.fetch_sub(1, Ordering::SeqCst);
                self.inner.stat(path).await
            }
            .boxed()
        }
        fn delete<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<()>> {
            self.inner.delete(path)
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn confirmations_overlap_beyond_the_cpu_window() {
        let slow = Arc::new(SlowStat {
            inner: Arc::new(OpendalBackend::memory()),
            in_flight: AtomicUsize::new(0),
            most: AtomicUsize::new(0),
        });
        let repo = new_repo(slow.clone()).await;
        let data = noise(24 << 20, 17);
        let (first, _) = backup(&repo, &data).await;
        assert_eq!(
            slow.most.load(Ordering::SeqCst),
            0,
            "nothing listed, nothing to confirm"
        );
        let (second, c) = backup(&repo, &data).await;
        assert_eq!(second.stats.new_chunks, 0);
        assert_eq!(c.confirmed, first.stats.chunks);
        // One chunk per core plus one would mean at most that many round trips at a time.
        let most = slow.most.load(Ordering::SeqCst);
        assert!(most > crate::workers::count() + 1, "{most} stats at a time");
        assert!(
            most <= crate::workers::count() + 1 + 8,
            "{most} stats at a time"
        );
    }

    /// Fails the listing of `chunks/`, as a storage outage would.
    struct FailingList(DynBackend);

    impl Backend for FailingList {
        fn location(&self) -> &str {
            self.0.location()
        }
        fn read<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>>> {
            self.0.read(path)
        }
        fn write<'a>(&'a self, path: &'a str, data: Vec<u8>) -> BoxFuture<'a, Result<()>> {
            self.0.write(path, data)
        }
        fn create_new<'a>(&'a self, path: &'a str, data: Vec<u8>) -> BoxFuture<'a, Result<bool>> {
            self.0.create_new(path, data)
        }
        fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<String>>> {
            if prefix == format::CHUNKS_DIR {
                let e = std::io::Error::other("listing refused");
                return async move { Err(crate::error::Error::io("listing chunks/", e)) }.boxed();
            }
            self.0.list(prefix)
        }
        fn stat<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<Option<ObjectInfo>>> {
            self.0.stat(path)
        }
        fn delete<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<()>> {
            self.0.delete(path)
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_listing_leaves_no_lease_behind() {
        let inner: DynBackend = Arc::new(OpendalBackend::memory());
        new_repo(inner.clone()).await;
        let failing: DynBackend = Arc::new(FailingList(inner.clone()));
        let repo = Repository::open(failing, b"pw").await.unwrap();
        let err = repo
            .start_backup(opts())
            .await
            .err()
            .expect("listing fails");
        assert!(err.to_string().contains("listing refused"), "{err}");
        assert_eq!(
            inner.list(format::LOCKS_DIR).await.unwrap(),
            Vec::<String>::new()
        );
    }
}

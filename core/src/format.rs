//! Every constant of the repository format in one place, with where its value comes from.
//!
//! Changing any value here changes what a repository written by this release looks like on
//! disk, so each one is named in `docs/repository-format.md`, and raising a version constant
//! is the only way to make an incompatible change.

/// Version of the repository layout and the `config` object. A reader refuses a repository
/// with a higher version, naming both numbers, instead of guessing at its meaning.
pub const REPOSITORY_VERSION: u32 = 1;

/// Magic bytes that open every encrypted blob ("BuLwark Blob").
pub const BLOB_MAGIC: [u8; 4] = *b"BLWB";
/// Version of the blob framing. Bumped when the header layout or cipher changes.
pub const BLOB_VERSION: u8 = 1;
/// magic (4) + version (1) + kind (1) + flags (1) + reserved (1) + plaintext length (4, LE)
/// + XChaCha20 nonce (24).
pub const BLOB_HEADER_LEN: usize = 36;
/// XChaCha20-Poly1305 nonce length.
pub const NONCE_LEN: usize = 24;
/// Poly1305 authentication tag length, appended after the ciphertext.
pub const TAG_LEN: usize = 16;
/// Flag bit: the payload is zstd-compressed. Any other flag bit set is an error.
pub const FLAG_ZSTD: u8 = 0b0000_0001;
/// Largest plaintext a manifest blob may claim; refuses allocation bombs from a forged header
/// before authentication can run (a manifest of 1 TiB of chunks is about 80 MiB).
pub const MAX_MANIFEST_LEN: usize = 1 << 30;

/// FastCDC parameters. DESIGN.md: average about 1 MiB, min 256 KiB, max 4 MiB — large enough
/// that per-object overhead on S3/NFS is small, small enough that a change in a dump touches
/// little data.
pub const CHUNK_MIN: usize = 256 * 1024;
pub const CHUNK_AVG: usize = 1024 * 1024;
pub const CHUNK_MAX: usize = 4 * 1024 * 1024;

/// zstd level 3: the library default, measured at several hundred MB/s per core on dump text.
pub const ZSTD_LEVEL: i32 = 3;
/// Shortest match zstd looks for: 6 bytes instead of level 3's 5. Dumps repeat long tokens
/// (column values, keywords), and skipping 5-byte matches gave 2.4 % fewer bytes at the same
/// speed on the benchmark's dump text in 1.75 MiB pieces (`zstd -b3 -B1835008
/// --zstd=mml=6`). Readers are unaffected: it only changes which matches the encoder tries.
pub const ZSTD_MIN_MATCH: u32 = 6;
/// zstd level 1 for archived WAL: about twice level 3's speed for a few per cent more bytes,
/// because `wal-push` compresses a whole segment on one core while PostgreSQL waits for it.
pub const WAL_ZSTD_LEVEL: i32 = 1;

/// Argon2id defaults for passphrase key slots: 64 MiB, 3 passes, 1 lane. About a quarter of a
/// second here — paid once per command, never per chunk.
pub const KDF_MEMORY_KIB: u32 = 64 * 1024;
pub const KDF_ITERATIONS: u32 = 3;
pub const KDF_PARALLELISM: u32 = 1;

/// Object paths under the storage root.
pub const CONFIG_PATH: &str = "config";
pub const KEYS_DIR: &str = "keys/";
pub const CHUNKS_DIR: &str = "chunks/";
pub const SNAPSHOTS_DIR: &str = "snapshots/";
pub const LOCKS_DIR: &str = "locks/";
/// Archived write-ahead log: `wal/<database-id>/<timeline>/<file name>`, one whole file per
/// object (not chunked: a WAL segment never repeats, so there is nothing to deduplicate).
pub const WAL_DIR: &str = "wal/";
/// Largest WAL file a blob may claim: PostgreSQL's largest `--wal-segsize` is 1 GiB.
pub const MAX_WAL_LEN: usize = 1 << 30;
/// Room held back for garbage collection: a storage that filled up still has space for the
/// small lease gc must write before it may delete anything (it deletes this object first when
/// the lease does not fit, and writes it again after its sweep). Zeros, never read.
pub const RESERVE_PATH: &str = "reserve";
pub const RESERVE_LEN: usize = 256 * 1024;
/// Where the `fs` backend writes objects before renaming them into place.
pub const TMP_DIR: &str = "tmp/";
/// Where `verify` moves chunk objects it finds damaged: `quarantine/<64 hex>-<UTC time>`.
/// Outside `chunks/`, so backups no longer count the chunk as stored (the next backup of the
/// same data writes it again) and GC never looks here; nothing deletes these but an operator.
pub const QUARANTINE_DIR: &str = "quarantine/";

/// Retrying storage calls that fail transiently (a dropped connection, a timeout, an S3 5xx or
/// SlowDown): the first retry after 0.5 s, each wait twice the last (with up to 25 % jitter,
/// so agents that failed together do not retry together), at most 15 s apart, and no new
/// attempt once 120 s have passed since the call first failed — about a dozen attempts, which
/// rides out the 40 s stalls seen on RGW without letting a dead endpoint hold a backup for
/// long. Permanent errors (a full disk, a missing permission, a damaged object) are never
/// retried. Every `Backend` call is idempotent (writes are whole-object and atomic), so a call
/// that failed after the storage acted on it can safely be made again.
pub const STORAGE_RETRY_FIRST_DELAY_MS: u64 = 500;
pub const STORAGE_RETRY_MAX_DELAY_MS: u64 = 15_000;
pub const STORAGE_RETRY_BUDGET_SECS: u64 = 120;
/// One attempt at a small call (stat, delete, directory sync) that has not answered in this
/// long is abandoned and counts as a transient failure. Writes get this plus one second per
/// MiB (a 1 GiB WAL segment: about 18 minutes); reads and listings, whose size is not known
/// beforehand, are not cut short.
pub const STORAGE_CALL_TIMEOUT_SECS: u64 = 60;

/// A lease not refreshed for this long belongs to a process that died; GC ignores it.
pub const LEASE_TTL_SECS: i64 = 300;
/// How often a running backup rewrites its lease.
pub const LEASE_REFRESH_SECS: u64 = 60;

/// Key-derivation contexts (BLAKE3 `derive_key`). Each purpose gets its own sub-key so that a
/// weakness in one use never exposes another.
pub const CTX_CHUNK_ID: &str = "bulwark 2026-11 chunk id";
pub const CTX_CHUNK_BLOB: &str = "bulwark 2026-11 chunk blob";
pub const CTX_MANIFEST_BLOB: &str = "bulwark 2026-11 manifest blob";
pub const CTX_CONFIG_MAC: &str = "bulwark 2026-11 config mac";
pub const CTX_CHUNKER_SEED: &str = "bulwark 2026-11 chunker seed";
pub const CTX_WAL_BLOB: &str = "bulwark 2026-11 wal blob";

/// Object path of a chunk: `chunks/<first 2 hex>/<64 hex>`.
pub fn chunk_path(hex_id: &str) -> String {
    format!("{CHUNKS_DIR}{}/{hex_id}", &hex_id[..2])
}

/// Object path of a quarantined copy of chunk `hex_id`, moved there at `time`.
pub fn quarantine_path(hex_id: &str, time: chrono::DateTime<chrono::Utc>) -> String {
    format!(
        "{QUARANTINE_DIR}{hex_id}-{}",
        time.format("%Y%m%dT%H%M%S%.3fZ")
    )
}

/// Object path of a snapshot manifest.
pub fn snapshot_path(database_id: &str, name: &str) -> String {
    format!("{SNAPSHOTS_DIR}{database_id}/{name}")
}

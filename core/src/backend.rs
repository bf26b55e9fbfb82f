//! Where objects live: the one storage trait the repository code sees.
//!
//! Everything goes through Apache OpenDAL (`fs` for a local directory or an NFS/CephFS mount,
//! `s3` for Ceph RGW or any S3 endpoint, `memory` for tests); nothing above this module
//! branches on the backend. Writes are atomic on every backend: `fs` writes to `tmp/`, fsyncs
//! and renames; S3 PUTs are atomic by nature. [`FaultyBackend`] wraps any backend to inject a
//! full disk, which is how the tests prove a failed backup leaves the repository consistent.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use futures::{FutureExt, TryStreamExt};
use opendal::{services, ErrorKind, Operator};

use crate::error::{Error, Result};
use crate::format;

/// An object as listed: its path relative to the repository root.
#[derive(Debug, Clone)]
pub struct ObjectInfo {
    pub path: String,
    pub size: u64,
    pub modified: Option<DateTime<Utc>>,
}

pub trait Backend: Send + Sync + 'static {
    /// Human-readable location (`/srv/backup/repo`, `s3://bucket/prefix`), used in messages.
    fn location(&self) -> &str;
    /// The object's bytes, or `None` if it does not exist.
    fn read<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>>>;
    /// Writes the whole object atomically: readers see the old state or the new object.
    fn write<'a>(&'a self, path: &'a str, data: Vec<u8>) -> BoxFuture<'a, Result<()>>;
    /// [`Backend::write`] from a shared buffer, for a caller that may need the bytes again (a
    /// retry) without copying them. The default copies.
    fn write_buffer<'a>(
        &'a self,
        path: &'a str,
        data: opendal::Buffer,
    ) -> BoxFuture<'a, Result<()>> {
        self.write(path, data.to_vec())
    }
    /// Writes the object only if no object has that name yet, atomically with respect to other
    /// writers on any host: `Ok(true)` when this call created it, `Ok(false)` when it existed.
    /// Two agents creating one repository at once rely on it (only one `config` may win).
    fn create_new<'a>(&'a self, path: &'a str, data: Vec<u8>) -> BoxFuture<'a, Result<bool>>;
    /// Paths of all objects under `prefix` (recursive), in no particular order.
    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<String>>>;
    /// Calls `each` with the path of every object under `prefix` (recursive), in no particular
    /// order, without holding the whole listing: `chunks/` of a 10 TB repository lists ten
    /// million paths, about 1 GiB as `String`s. The default collects [`Backend::list`].
    fn list_each<'a>(
        &'a self,
        prefix: &'a str,
        each: &'a mut (dyn FnMut(&str) + Send),
    ) -> BoxFuture<'a, Result<()>> {
        async move {
            for path in self.list(prefix).await? {
                each(&path);
            }
            Ok(())
        }
        .boxed()
    }
    /// Size and modification time, or `None` if it does not exist.
    fn stat<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<Option<ObjectInfo>>>;
    /// Deletes the object; deleting a missing object succeeds.
    fn delete<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<()>>;
    /// Removes temporary files that killed writers left behind, and any older than `max_age`
    /// (see [`crate::leftovers`]); returns how many. Object stores write nothing temporary.
    fn remove_abandoned_temp_files(
        &self,
        _max_age: std::time::Duration,
    ) -> BoxFuture<'_, Result<usize>> {
        async { Ok(0) }.boxed()
    }
    /// Makes a completed `write` of `path` survive a power cut. Object stores are durable
    /// once a PUT returns; a directory needs its entry for the renamed file synced.
    fn make_durable<'a>(&'a self, _path: &'a str) -> BoxFuture<'a, Result<()>> {
        async { Ok(()) }.boxed()
    }
}

pub type DynBackend = Arc<dyn Backend>;

/// A backend on an OpenDAL operator.
pub struct OpendalBackend {
    op: Operator,
    location: String,
    /// The root directory of an `fs` backend, for syncing directory entries.
    fs_root: Option<std::path::PathBuf>,
    /// The `fs` backend's directory for temporary files, named after this process so that a
    /// later run can tell whether its writer died.
    own_tmp: Option<std::path::PathBuf>,
}

impl OpendalBackend {
    /// Opens `location`: `s3://bucket[/prefix]` or a directory path. S3 settings come from the
    /// standard `AWS_*` environment variables, plus `BULWARK_S3_ENDPOINT` (or
    /// `AWS_ENDPOINT_URL`) for a non-AWS endpoint such as Ceph RGW. `create` makes a missing
    /// directory (for `repo init`).
    pub fn open(location: &str, create: bool) -> Result<Self> {
        if let Some(rest) = location.strip_prefix("s3://") {
            return Self::s3(location, rest);
        }
        if location.contains("://") {
            return Err(Error::invalid(
                "repository location",
                format!("{location:?}: only a directory path or s3://bucket/prefix is supported"),
            ));
        }
        Self::fs(location, create)
    }

    fn fs(location: &str, create: bool) -> Result<Self> {
        let path = std::path::Path::new(location);
        let not_a_dir = || {
            Error::invalid(
                "repository location",
                format!("{location} is a file, not a directory: a repository is a directory (or s3://bucket/prefix); give the directory that holds `config`"),
            )
        };
        if path.exists() && !path.is_dir() {
            return Err(not_a_dir());
        }
        if create {
            std::fs::create_dir_all(path)
                .map_err(|e| Error::io(format!("creating repository directory {location}"), e))?;
        }
        let abs = std::fs::canonicalize(path).map_err(|_| Error::NotARepository {
            location: location.to_string(),
        })?;
        if !abs.is_dir() {
            return Err(not_a_dir());
        }
        let root = abs.to_string_lossy().to_string();
        let own_tmp = crate::leftovers::temp_dir_for_this_process(&abs.join(format::TMP_DIR));
        let builder = services::Fs::default()
            .root(&root)
            .atomic_write_dir(&own_tmp.to_string_lossy());
        let op = Operator::new(builder).map_err(|e| storage_error(location, e))?;
        Ok(OpendalBackend {
            op,
            fs_root: Some(abs),
            own_tmp: Some(own_tmp),
            location: root,
        })
    }

    fn s3(location: &str, rest: &str) -> Result<Self> {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(Error::invalid(
                "repository location",
                format!("{location:?} names no bucket"),
            ));
        }
        install_http_transport();
        let env = |names: &[&str]| names.iter().find_map(|n| std::env::var(n).ok());
        let mut builder = services::S3::default()
            .bucket(bucket)
            .root(&format!("/{}", prefix.trim_matches('/')))
            .region(
                &env(&["AWS_REGION", "AWS_DEFAULT_REGION"]).unwrap_or_else(|| "us-east-1".into()),
            )
            .disable_ec2_metadata();
        if let Some(endpoint) = env(&["BULWARK_S3_ENDPOINT", "AWS_ENDPOINT_URL"]) {
            builder = builder.endpoint(&endpoint);
        }
        let op = Operator::new(builder).map_err(|e| storage_error(location, e))?;
        Ok(OpendalBackend {
            op,
            location: location.trim_end_matches('/').to_string(),
            fs_root: None,
            own_tmp: None,
        })
    }

    /// An in-memory backend for tests.
    pub fn memory() -> Self {
        OpendalBackend {
            op: Operator::new(services::Memory::default()).expect("memory backend"),
            location: "memory".into(),
            fs_root: None,
            own_tmp: None,
        }
    }
}

/// Once per process: rustls with the `ring` provider, and reqwest as OpenDAL's HTTP transport.
fn install_http_transport() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Fails only if another provider was installed first, which is just as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
        opendal_http_transport_reqwest::install_default();
    });
}

fn storage_error(object: &str, cause: opendal::Error) -> Error {
    Error::Storage {
        object: object.to_string(),
        cause,
    }
}

/// Writes `data` to a temporary file in `tmp_dir`, syncs it, and links it to `target` unless
/// that name exists; the temporary name goes either way. `Ok(false)`: `target` existed.
fn link_new(
    tmp_dir: &std::path::Path,
    target: &std::path::Path,
    data: &[u8],
) -> std::io::Result<bool> {
    use std::io::Write;
    std::fs::create_dir_all(tmp_dir)?;
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = tmp_dir.join(format!("new-{}", crate::crypto::random_hex(8)));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        file.write_all(data)?;
        file.sync_all()?;
        match std::fs::hard_link(&tmp, target) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(e),
        }
        if let Some(parent) = target.parent() {
            std::fs::File::open(parent)?.sync_all()?;
        }
        Ok(true)
    })();
    let _ = std::fs::remove_file(&tmp);
    result
}

impl Drop for OpendalBackend {
    fn drop(&mut self) {
        // Empty unless a write is in flight; a killed process's directory is removed by the
        // next backup (`remove_abandoned_temp_files`).
        if let (Some(own), Some(root)) = (&self.own_tmp, &self.fs_root) {
            if own != &root.join(format::TMP_DIR) {
                let _ = std::fs::remove_dir(own);
            }
        }
    }
}

impl Backend for OpendalBackend {
    fn location(&self) -> &str {
        &self.location
    }

    fn remove_abandoned_temp_files(
        &self,
        max_age: std::time::Duration,
    ) -> BoxFuture<'_, Result<usize>> {
        let (Some(root), Some(own)) = (self.fs_root.clone(), self.own_tmp.clone()) else {
            return async { Ok(0) }.boxed();
        };
        async move {
            let tmp = root.join(format::TMP_DIR);
            tokio::task::spawn_blocking(move || {
                crate::leftovers::remove_abandoned_temp_files(&tmp, &own, max_age)
            })
            .await
            .expect("temporary file clean-up panicked")
            .map_err(|e| {
                Error::io(
                    format!("removing abandoned temporary files of {}", self.location),
                    e,
                )
            })
        }
        .boxed()
    }

    fn read<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>>> {
        async move {
            match self.op.read(path).await {
                Ok(buf) => Ok(Some(buf.to_vec())),
                Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
                Err(e) => Err(storage_error(path, e)),
            }
        }
        .boxed()
    }

    fn write<'a>(&'a self, path: &'a str, data: Vec<u8>) -> BoxFuture<'a, Result<()>> {
        self.write_buffer(path, data.into())
    }

    fn write_buffer<'a>(
        &'a self,
        path: &'a str,
        data: opendal::Buffer,
    ) -> BoxFuture<'a, Result<()>> {
        async move {
            self.op
                .write(path, data)
                .await
                .map(|_| ())
                .map_err(|e| storage_error(path, e))
        }
        .boxed()
    }

    fn create_new<'a>(&'a self, path: &'a str, data: Vec<u8>) -> BoxFuture<'a, Result<bool>> {
        async move {
            if let (Some(root), Some(own)) = (self.fs_root.clone(), self.own_tmp.clone()) {
                // A hard link fails with EEXIST when the name is taken, on local file systems
                // and over NFS alike (LINK is one operation on the server); rename would not.
                let target = root.join(path);
                let what = format!("creating {path} in {}", self.location);
                return tokio::task::spawn_blocking(move || link_new(&own, &target, &data))
                    .await
                    .expect("exclusive create task panicked")
                    .map_err(|e| Error::io(what, e));
            }
            if self.location == "memory" {
                // Tests only: one process, so a lock makes stat-then-write exclusive.
                static MEMORY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
                let _guard = MEMORY.lock().await;
                if self.stat(path).await?.is_some() {
                    return Ok(false);
                }
                self.write(path, data).await?;
                return Ok(true);
            }
            // S3: a conditional PUT (If-None-Match: *), which Ceph RGW and AWS honour.
            match self.op.write_with(path, data).if_not_exists(true).await {
                Ok(_) => Ok(true),
                Err(e) if e.kind() == ErrorKind::ConditionNotMatch => Ok(false),
                Err(e) => Err(storage_error(path, e)),
            }
        }
        .boxed()
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<String>>> {
        async move {
            match self.op.list_with(prefix).recursive(true).await {
                Ok(entries) => Ok(entries
                    .into_iter()
                    .filter(|e| e.metadata().is_file())
                    .map(|e| e.path().trim_start_matches('/').to_string())
                    .collect()),
                Err(e) if e.kind() == ErrorKind::NotFound => Ok(Vec::new()),
                Err(e) => Err(storage_error(prefix, e)),
            }
        }
        .boxed()
    }

    fn list_each<'a>(
        &'a self,
        prefix: &'a str,
        each: &'a mut (dyn FnMut(&str) + Send),
    ) -> BoxFuture<'a, Result<()>> {
        async move {
            let mut lister = match self.op.lister_with(prefix).recursive(true).await {
                Ok(lister) => lister,
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(storage_error(prefix, e)),
            };
            while let Some(entry) = lister
                .try_next()
                .await
                .map_err(|e| storage_error(prefix, e))?
            {
                if entry.metadata().is_file() {
                    each(entry.path().trim_start_matches('/'));
                }
            }
            Ok(())
        }
        .boxed()
    }

    fn stat<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<Option<ObjectInfo>>> {
        async move {
            match self.op.stat(path).await {
                Ok(meta) => Ok(Some(ObjectInfo {
                    path: path.to_string(),
                    size: meta.content_length(),
                    modified: meta
                        .last_modified()
                        .and_then(|t| DateTime::from_timestamp(t.into_inner().as_second(), 0)),
                })),
                Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
                Err(e) => Err(storage_error(path, e)),
            }
        }
        .boxed()
    }

    fn make_durable<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<()>> {
        async move {
            let Some(root) = &self.fs_root else {
                return Ok(());
            };
            let dir = root.join(path);
            let dir = dir.parent().unwrap_or(root).to_path_buf();
            tokio::task::spawn_blocking(move || std::fs::File::open(&dir)?.sync_all())
                .await
                .expect("directory sync task panicked")
                .map_err(|e| Error::io(format!("syncing the directory of {path}"), e))
        }
        .boxed()
    }

    fn delete<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<()>> {
        async move {
            match self.op.delete(path).await {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
                Err(e) => Err(storage_error(path, e)),
            }
        }
        .boxed()
    }
}

/// Wraps a backend and fails every write once `capacity` bytes have been written (less what
/// deletes freed), the way a full disk does; and, on demand, fails the next few calls of any kind with a transient error
/// (a dropped connection) or a permanent one (a missing permission). For tests of what a failed
/// backup leaves behind and of the retries in [`Retrying`].
pub struct FaultyBackend {
    inner: DynBackend,
    written: AtomicU64,
    capacity: AtomicU64,
    /// Calls still to fail, and whether their failure is transient.
    failing: AtomicU64,
    transient: std::sync::atomic::AtomicBool,
    /// Calls failed on demand so far.
    pub injected: AtomicU64,
}

impl FaultyBackend {
    pub fn new(inner: DynBackend, capacity: u64) -> Self {
        FaultyBackend {
            inner,
            written: AtomicU64::new(0),
            capacity: AtomicU64::new(capacity),
            failing: AtomicU64::new(0),
            transient: false.into(),
            injected: AtomicU64::new(0),
        }
    }

    /// Frees the disk again.
    pub fn set_capacity(&self, capacity: u64) {
        self.capacity.store(capacity, Ordering::SeqCst);
        self.written.store(0, Ordering::SeqCst);
    }

    /// Fails the next `calls` calls (of any kind), transiently or permanently.
    pub fn fail_next(&self, calls: u64, transient: bool) {
        self.transient.store(transient, Ordering::SeqCst);
        self.failing.store(calls, Ordering::SeqCst);
    }

    fn injected_failure(&self, path: &str) -> Option<Error> {
        let take = self
            .failing
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        take.ok()?;
        self.injected.fetch_add(1, Ordering::SeqCst);
        let cause = if self.transient.load(Ordering::SeqCst) {
            opendal::Error::new(ErrorKind::Unexpected, "connection reset by peer (injected)")
                .set_temporary()
        } else {
            opendal::Error::new(ErrorKind::PermissionDenied, "access denied (injected)")
        };
        Some(storage_error(path, cause))
    }
}

impl Backend for FaultyBackend {
    fn location(&self) -> &str {
        self.inner.location()
    }
    fn read<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>>> {
        if let Some(e) = self.injected_failure(path) {
            return async move { Err(e) }.boxed();
        }
        self.inner.read(path)
    }
    fn write<'a>(&'a self, path: &'a str, data: Vec<u8>) -> BoxFuture<'a, Result<()>> {
        self.write_buffer(path, data.into())
    }
    fn write_buffer<'a>(
        &'a self,
        path: &'a str,
        data: opendal::Buffer,
    ) -> BoxFuture<'a, Result<()>> {
        if let Some(e) = self.injected_failure(path) {
            return async move { Err(e) }.boxed();
        }
        let total = self.written.fetch_add(data.len() as u64, Ordering::SeqCst) + data.len() as u64;
        if total > self.capacity.load(Ordering::SeqCst) {
            self.written.fetch_sub(data.len() as u64, Ordering::SeqCst);
            let err = std::io::Error::from_raw_os_error(28); // ENOSPC
            return async move { Err(Error::io(format!("writing {path}"), err)) }.boxed();
        }
        self.inner.write_buffer(path, data)
    }
    fn create_new<'a>(&'a self, path: &'a str, data: Vec<u8>) -> BoxFuture<'a, Result<bool>> {
        if let Some(e) = self.injected_failure(path) {
            return async move { Err(e) }.boxed();
        }
        self.inner.create_new(path, data)
    }
    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<String>>> {
        if let Some(e) = self.injected_failure(prefix) {
            return async move { Err(e) }.boxed();
        }
        self.inner.list(prefix)
    }
    fn list_each<'a>(
        &'a self,
        prefix: &'a str,
        each: &'a mut (dyn FnMut(&str) + Send),
    ) -> BoxFuture<'a, Result<()>> {
        if let Some(e) = self.injected_failure(prefix) {
            return async move { Err(e) }.boxed();
        }
        self.inner.list_each(prefix, each)
    }
    fn stat<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<Option<ObjectInfo>>> {
        if let Some(e) = self.injected_failure(path) {
            return async move { Err(e) }.boxed();
        }
        self.inner.stat(path)
    }
    fn delete<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<()>> {
        if let Some(e) = self.injected_failure(path) {
            return async move { Err(e) }.boxed();
        }
        async move {
            // A delete frees what the object took, as on a disk.
            let size = self.inner.stat(path).await?.map_or(0, |i| i.size);
            self.inner.delete(path).await?;
            let _ = self
                .written
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |w| {
                    Some(w.saturating_sub(size))
                });
            Ok(())
        }
        .boxed()
    }
    fn make_durable<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<()>> {
        self.inner.make_durable(path)
    }
}

/// How [`Retrying`] spaces its attempts; the defaults are the constants in [`format`].
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub first_delay: Duration,
    pub max_delay: Duration,
    /// No new attempt starts once this long has passed since the call first failed.
    pub budget: Duration,
    /// An attempt at a small call that takes longer than this is abandoned as failed.
    pub call_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            first_delay: Duration::from_millis(format::STORAGE_RETRY_FIRST_DELAY_MS),
            max_delay: Duration::from_millis(format::STORAGE_RETRY_MAX_DELAY_MS),
            budget: Duration::from_secs(format::STORAGE_RETRY_BUDGET_SECS),
            call_timeout: Duration::from_secs(format::STORAGE_CALL_TIMEOUT_SECS),
        }
    }
}

/// Makes the same call again, with exponential backoff, when a backend fails transiently
/// ([`Error::is_transient`]), for a bounded time; anything else fails at once.
///
/// Retrying here rather than with OpenDAL's `RetryLayer` (one layer down): every `Backend`
/// call is a whole-object operation, so a retry repeats the whole atomic write (temporary
/// name + rename on `fs`, one PUT on S3) instead of a piece of a stream, the time budget
/// covers the whole call, each retry is logged with the object it is about, and the same code
/// is exercised in tests through [`FaultyBackend`] below it. All calls are idempotent: reads,
/// stats and listings change nothing; a write replaces the whole object with the same bytes; a
/// delete of a missing object succeeds.
pub struct Retrying {
    inner: DynBackend,
    policy: RetryPolicy,
}

impl Retrying {
    pub fn new(inner: DynBackend, policy: RetryPolicy) -> Self {
        Retrying { inner, policy }
    }

    /// Backoff before attempt `attempt + 1`: doubling from `first_delay`, capped, with up to
    /// 25 % random jitter.
    fn delay(&self, attempt: u32) -> Duration {
        let base = self
            .policy
            .first_delay
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
            .min(self.policy.max_delay);
        let mut r = [0u8; 2];
        crate::crypto::random_bytes(&mut r);
        let jitter = f64::from(u16::from_le_bytes(r)) / f64::from(u16::MAX) * 0.25;
        base.mul_f64(1.0 + jitter)
    }

    /// Runs `call` until it succeeds, fails permanently, or the budget is spent. `timeout`
    /// bounds each attempt (a hung call counts as a transient failure).
    async fn run<'a, T>(
        &'a self,
        op: &str,
        object: &str,
        timeout: Option<Duration>,
        mut call: impl FnMut() -> BoxFuture<'a, Result<T>>,
    ) -> Result<T> {
        let mut attempt = 1u32;
        let mut first_failure: Option<tokio::time::Instant> = None;
        loop {
            let result = match timeout {
                Some(limit) => match tokio::time::timeout(limit, call()).await {
                    Ok(r) => r,
                    Err(_) => Err(Error::io(
                        format!("{op} {object}: no answer within {} s", limit.as_secs()),
                        std::io::ErrorKind::TimedOut.into(),
                    )),
                },
                None => call().await,
            };
            match result {
                Ok(v) => return Ok(v),
                Err(e) => self.pause(object, attempt, &mut first_failure, e).await?,
            }
            attempt += 1;
        }
    }

    /// After a failed attempt: waits out the backoff when the failure is transient and the
    /// budget allows another attempt, or gives the error to return.
    async fn pause(
        &self,
        object: &str,
        attempt: u32,
        first_failure: &mut Option<tokio::time::Instant>,
        err: Error,
    ) -> Result<()> {
        if !err.is_transient() {
            return Err(if attempt == 1 {
                err
            } else {
                self.exhausted(attempt, *first_failure, err)
            });
        }
        let since = *first_failure.get_or_insert_with(tokio::time::Instant::now);
        let wait = self.delay(attempt);
        if since.elapsed() + wait > self.policy.budget {
            return Err(self.exhausted(attempt, *first_failure, err));
        }
        tracing::warn!(object, attempt, error = %err, "storage call failed; retrying in {:.1} s", wait.as_secs_f64());
        tokio::time::sleep(wait).await;
        Ok(())
    }

    fn exhausted(
        &self,
        attempts: u32,
        first_failure: Option<tokio::time::Instant>,
        last: Error,
    ) -> Error {
        Error::RetriesExhausted {
            attempts,
            secs: first_failure.map_or(0, |t| t.elapsed().as_secs()),
            last: Box::new(last),
        }
    }

    fn write_timeout(&self, len: usize) -> Duration {
        self.policy.call_timeout + Duration::from_secs((len >> 20) as u64)
    }
}

impl Backend for Retrying {
    fn location(&self) -> &str {
        self.inner.location()
    }
    fn remove_abandoned_temp_files(&self, max_age: Duration) -> BoxFuture<'_, Result<usize>> {
        self.inner.remove_abandoned_temp_files(max_age)
    }
    fn read<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>>> {
        self.run("reading", path, None, move || self.inner.read(path))
            .boxed()
    }
    fn write<'a>(&'a self, path: &'a str, data: Vec<u8>) -> BoxFuture<'a, Result<()>> {
        self.write_buffer(path, data.into())
    }
    fn write_buffer<'a>(
        &'a self,
        path: &'a str,
        data: opendal::Buffer,
    ) -> BoxFuture<'a, Result<()>> {
        let timeout = Some(self.write_timeout(data.len()));
        self.run("writing", path, timeout, move || {
            self.inner.write_buffer(path, data.clone())
        })
        .boxed()
    }
    /// A retry after a lost answer may find the object its own first attempt made and say
    /// `false`; callers compare the contents (see `Repository::init_with`).
    fn create_new<'a>(&'a self, path: &'a str, data: Vec<u8>) -> BoxFuture<'a, Result<bool>> {
        let timeout = Some(self.write_timeout(data.len()));
        self.run("creating", path, timeout, move || {
            self.inner.create_new(path, data.clone())
        })
        .boxed()
    }
    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<String>>> {
        self.run("listing", prefix, None, move || self.inner.list(prefix))
            .boxed()
    }
    /// A listing that fails part way starts again from the beginning, so after a retry `each`
    /// may see a path a second time.
    fn list_each<'a>(
        &'a self,
        prefix: &'a str,
        each: &'a mut (dyn FnMut(&str) + Send),
    ) -> BoxFuture<'a, Result<()>> {
        async move {
            let mut attempt = 1u32;
            let mut first_failure: Option<tokio::time::Instant> = None;
            loop {
                match self.inner.list_each(prefix, &mut *each).await {
                    Ok(()) => return Ok(()),
                    Err(e) => self.pause(prefix, attempt, &mut first_failure, e).await?,
                }
                attempt += 1;
            }
        }
        .boxed()
    }
    fn stat<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<Option<ObjectInfo>>> {
        let timeout = Some(self.policy.call_timeout);
        self.run("reading the metadata of", path, timeout, move || {
            self.inner.stat(path)
        })
        .boxed()
    }
    fn delete<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<()>> {
        let timeout = Some(self.policy.call_timeout);
        self.run("deleting", path, timeout, move || self.inner.delete(path))
            .boxed()
    }
    fn make_durable<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<()>> {
        let timeout = Some(self.policy.call_timeout);
        self.run("syncing", path, timeout, move || {
            self.inner.make_durable(path)
        })
        .boxed()
    }
}

/// Opens the repository storage at `location` (see [`OpendalBackend::open`]) with transient
/// failures retried ([`Retrying`] with the default policy): what every command uses.
pub fn open(location: &str, create: bool) -> Result<DynBackend> {
    let backend: DynBackend = Arc::new(OpendalBackend::open(location, create)?);
    Ok(Arc::new(Retrying::new(backend, RetryPolicy::default())))
}

/// The contract every backend keeps (it panics on a breach): run against memory and fs in this
/// crate's tests, and against real NFS and S3 servers in the end-to-end tests (feature
/// `testing`).
#[cfg(any(test, feature = "testing"))]
pub async fn contract(b: &dyn Backend) {
    assert_eq!(b.read("chunks/ab/x").await.unwrap(), None);
    b.write("chunks/ab/x", b"one".to_vec()).await.unwrap();
    b.write("chunks/ab/x", b"two".to_vec()).await.unwrap();
    b.write("snapshots/db/s1", b"m".to_vec()).await.unwrap();
    assert_eq!(b.read("chunks/ab/x").await.unwrap().unwrap(), b"two");
    assert_eq!(b.stat("chunks/ab/x").await.unwrap().unwrap().size, 3);
    assert!(b.stat("nope").await.unwrap().is_none());
    let mut all = b.list("chunks/").await.unwrap();
    all.sort();
    assert_eq!(all, vec!["chunks/ab/x".to_string()]);
    assert!(b.list("locks/").await.unwrap().is_empty());
    let mut each = Vec::new();
    b.list_each("chunks/", &mut |p| each.push(p.to_string()))
        .await
        .unwrap();
    assert_eq!(each, all, "list_each yields what list does");
    b.list_each("locks/", &mut |p| panic!("nothing under locks/, got {p}"))
        .await
        .unwrap();
    b.delete("chunks/ab/x").await.unwrap();
    b.delete("chunks/ab/x").await.unwrap();
    assert_eq!(b.read("chunks/ab/x").await.unwrap(), None);
    assert!(b.create_new("config", b"first".to_vec()).await.unwrap());
    assert!(!b.create_new("config", b"second".to_vec()).await.unwrap());
    assert_eq!(b.read("config").await.unwrap().unwrap(), b"first");
    b.delete("config").await.unwrap();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_and_fs_backends_keep_the_contract() {
        contract(&OpendalBackend::memory()).await;
        let dir = tempfile::tempdir().unwrap();
        let fs = OpendalBackend::open(dir.path().to_str().unwrap(), true).unwrap();
        contract(&fs).await;
        // Temporary files live in this process's own directory under tmp/.
        let left: Vec<_> = walkdir::WalkDir::new(dir.path().join("tmp"))
            .into_iter()
            .map(|e| e.unwrap())
            .filter(|e| !e.file_type().is_dir())
            .collect();
        assert!(left.is_empty(), "temp files left: {left:?}");
        drop(fs);
        assert!(
            std::fs::read_dir(dir.path().join("tmp"))
                .unwrap()
                .next()
                .is_none(),
            "closing the backend removes its empty temporary directory"
        );
    }

    #[tokio::test]
    async fn faulty_backend_fails_writes_past_capacity() {
        let b = FaultyBackend::new(Arc::new(OpendalBackend::memory()), 5);
        b.write("a", vec![0; 4]).await.unwrap();
        let err = b.write("b", vec![0; 4]).await.unwrap_err();
        assert!(err.to_string().contains("No space left"), "{err}");
        assert_eq!(b.read("b").await.unwrap(), None);
    }

    /// A transient failure is retried until it goes away; a permanent one is not retried.
    #[tokio::test]
    async fn transient_failures_are_retried_and_permanent_ones_are_not() {
        let faulty = Arc::new(FaultyBackend::new(
            Arc::new(OpendalBackend::memory()),
            u64::MAX,
        ));
        let policy = RetryPolicy {
            first_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(5),
            budget: Duration::from_secs(5),
            call_timeout: Duration::from_secs(5),
        };
        let b = Retrying::new(faulty.clone(), policy);
        faulty.fail_next(3, true);
        b.write("a", b"x".to_vec()).await.unwrap();
        assert_eq!(faulty.injected.load(Ordering::SeqCst), 3);
        faulty.fail_next(2, true);
        assert_eq!(b.read("a").await.unwrap().unwrap(), b"x");
        faulty.fail_next(1, true);
        let mut seen = Vec::new();
        b.list_each("", &mut |p| seen.push(p.to_string()))
            .await
            .unwrap();
        assert_eq!(seen, vec!["a".to_string()]);

        faulty.fail_next(1, false);
        let before = faulty.injected.load(Ordering::SeqCst);
        let err = b.read("a").await.unwrap_err();
        assert_eq!(
            faulty.injected.load(Ordering::SeqCst),
            before + 1,
            "tried once"
        );
        assert!(!err.is_transient());
        assert!(
            err.to_string().contains("access denied") && err.to_string().contains(" a:"),
            "{err}"
        );

        // A storage that keeps failing is given up on within the budget, saying so.
        let short = Retrying::new(
            faulty.clone(),
            RetryPolicy {
                budget: Duration::from_millis(50),
                ..policy
            },
        );
        faulty.fail_next(u64::MAX, true);
        let started = std::time::Instant::now();
        let err = short.stat("a").await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(matches!(err, Error::RetriesExhausted { .. }), "{err}");
        assert!(err.to_string().contains("still failing after"), "{err}");
        faulty.fail_next(0, true);
    }

    /// A full disk on a file system is not worth a retry, whatever OpenDAL calls it.
    #[test]
    fn a_full_disk_is_not_transient() {
        let io = std::io::Error::from_raw_os_error(28);
        assert!(!Error::io("writing x", io).is_transient());
        let wrapped = opendal::Error::new(ErrorKind::Unexpected, "no space")
            .set_temporary()
            .set_source(std::io::Error::from_raw_os_error(28));
        assert!(!storage_error("x", wrapped).is_transient());
        let reset = opendal::Error::new(ErrorKind::Unexpected, "send http request").set_temporary();
        assert!(storage_error("x", reset).is_transient());
    }

    /// Our message says what the storage said once, not twice.
    #[tokio::test]
    async fn storage_errors_are_not_repeated() {
        let dir = tempfile::tempdir().unwrap();
        let b = OpendalBackend::open(dir.path().to_str().unwrap(), false).unwrap();
        std::fs::create_dir_all(dir.path().join("chunks/ab/x")).unwrap();
        let err = b.read("chunks/ab/x").await.unwrap_err();
        let text = format!("{:#}", anyhow_like(&err));
        assert!(text.contains("chunks/ab/x"), "{text}");
        let lower = text.to_lowercase().replace([':', ',', '(', ')'], " ");
        let words: Vec<&str> = lower.split_whitespace().collect();
        let mut seen = std::collections::HashSet::new();
        let repeated: Vec<_> = words
            .windows(3)
            .filter(|w| !seen.insert(w.join(" ")))
            .collect();
        assert!(repeated.is_empty(), "repeated {repeated:?} in {text}");
    }

    /// What `{:#}` of an anyhow error prints: the message and every source after it.
    fn anyhow_like(err: &Error) -> String {
        let mut text = err.to_string();
        let mut next = std::error::Error::source(err);
        while let Some(e) = next {
            text = format!("{text}: {e}");
            next = e.source();
        }
        text
    }

    #[test]
    fn a_file_is_not_a_repository_directory() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("repo");
        std::fs::write(&file, "x").unwrap();
        let err = OpendalBackend::open(file.to_str().unwrap(), false)
            .err()
            .unwrap();
        assert!(
            err.to_string().contains("is a file, not a directory"),
            "{err}"
        );
    }

    #[test]
    fn bad_locations_are_named() {
        let err = OpendalBackend::open("ftp://x/y", false).err().unwrap();
        assert!(err.to_string().contains("ftp://x/y"));
        let err = OpendalBackend::open("/nonexistent/bulwark/repo", false)
            .err()
            .unwrap();
        assert!(matches!(err, Error::NotARepository { .. }));
    }
}

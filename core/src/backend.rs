//! Where objects live: the one storage trait the repository code sees.
//!
//! Everything goes through Apache OpenDAL (`fs` for a local directory or an NFS/CephFS mount,
//! `s3` for Ceph RGW or any S3 endpoint, `memory` for tests); nothing above this module
//! branches on the backend. Writes are atomic on every backend: `fs` writes to `tmp/`, fsyncs
//! and renames; S3 PUTs are atomic by nature. [`FaultyBackend`] wraps any backend to inject a
//! full disk, which is how the tests prove a failed backup leaves the repository consistent.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

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
        if create {
            std::fs::create_dir_all(path)
                .map_err(|e| Error::io(format!("creating repository directory {location}"), e))?;
        }
        let abs = std::fs::canonicalize(path).map_err(|_| Error::NotARepository {
            location: location.to_string(),
        })?;
        let root = abs.to_string_lossy().to_string();
        let builder = services::Fs::default()
            .root(&root)
            .atomic_write_dir(&format!("{root}/{}", format::TMP_DIR));
        let op = Operator::new(builder).map_err(|e| storage_error(location, e))?;
        Ok(OpendalBackend {
            op,
            fs_root: Some(abs),
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
        })
    }

    /// An in-memory backend for tests.
    pub fn memory() -> Self {
        OpendalBackend {
            op: Operator::new(services::Memory::default()).expect("memory backend"),
            location: "memory".into(),
            fs_root: None,
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

fn storage_error(object: &str, source: opendal::Error) -> Error {
    Error::Storage {
        object: object.to_string(),
        source,
    }
}

impl Backend for OpendalBackend {
    fn location(&self) -> &str {
        &self.location
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
        async move {
            self.op
                .write(path, data)
                .await
                .map(|_| ())
                .map_err(|e| storage_error(path, e))
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

/// Wraps a backend and fails every write once `capacity` bytes have been written, the way a
/// full disk does. For tests of what a failed backup leaves behind.
pub struct FaultyBackend {
    inner: DynBackend,
    written: AtomicU64,
    capacity: AtomicU64,
}

impl FaultyBackend {
    pub fn new(inner: DynBackend, capacity: u64) -> Self {
        FaultyBackend {
            inner,
            written: AtomicU64::new(0),
            capacity: AtomicU64::new(capacity),
        }
    }

    /// Frees the disk again.
    pub fn set_capacity(&self, capacity: u64) {
        self.capacity.store(capacity, Ordering::SeqCst);
        self.written.store(0, Ordering::SeqCst);
    }
}

impl Backend for FaultyBackend {
    fn location(&self) -> &str {
        self.inner.location()
    }
    fn read<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>>> {
        self.inner.read(path)
    }
    fn write<'a>(&'a self, path: &'a str, data: Vec<u8>) -> BoxFuture<'a, Result<()>> {
        let total = self.written.fetch_add(data.len() as u64, Ordering::SeqCst) + data.len() as u64;
        if total > self.capacity.load(Ordering::SeqCst) {
            self.written.fetch_sub(data.len() as u64, Ordering::SeqCst);
            let err = std::io::Error::from_raw_os_error(28); // ENOSPC
            return async move { Err(Error::io(format!("writing {path}"), err)) }.boxed();
        }
        self.inner.write(path, data)
    }
    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<String>>> {
        self.inner.list(prefix)
    }
    fn list_each<'a>(
        &'a self,
        prefix: &'a str,
        each: &'a mut (dyn FnMut(&str) + Send),
    ) -> BoxFuture<'a, Result<()>> {
        self.inner.list_each(prefix, each)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The contract every backend keeps; run against memory and fs here, and against a real
    /// S3 server in the end-to-end tests.
    pub(crate) async fn contract(b: &dyn Backend) {
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
    }

    #[tokio::test]
    async fn memory_and_fs_backends_keep_the_contract() {
        contract(&OpendalBackend::memory()).await;
        let dir = tempfile::tempdir().unwrap();
        let fs = OpendalBackend::open(dir.path().to_str().unwrap(), true).unwrap();
        contract(&fs).await;
        assert!(
            std::fs::read_dir(dir.path().join("tmp"))
                .unwrap()
                .next()
                .is_none(),
            "no temp files left"
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

//! The repository's objects as files on an NFS export, reached without a kernel mount.
//!
//! Same layout and the same guarantees as the `fs` backend on a mounted export, so a
//! repository can be used both ways: an object is written under `tmp/<process tag>.<n>/`,
//! written stably (WRITE + COMMIT, which `nfs_rs::write_all` pipelines at the server's wsize),
//! then renamed onto its name, so nobody ever sees half an object under its final name and
//! two hosts writing the same chunk at once each rename a complete copy. Directories
//! (`chunks/ab/`) are made on first use and `EEXIST` from a racing agent is success.
//!
//! One mount per backend: the client multiplexes RPCs on its connection (many chunks are in
//! flight at once) and caches nothing but directory handles. A dropped connection or a stale
//! handle (the server restarted) throws the mount away, the call fails as transient, and
//! [`bulwark_core::backend::Retrying`] calls again, which mounts afresh.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bulwark_core::backend::{Backend, ObjectInfo};
use bulwark_core::error::{Error, Result};
use bulwark_core::process::{Holder, Liveness};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, TryStreamExt};
use nfs_rs::{Mount, NfsError as ClientError};

use crate::error::{describe, meaning, Meaning, NfsError};
use crate::location::{Location, Version};

/// NF3REG / NF4REG and NF3DIR / NF4DIR.
const TYPE_FILE: u32 = 1;
const TYPE_DIR: u32 = 2;
/// READs in flight for one object.
const READS_IN_FLIGHT: usize = 8;
/// See `bulwark_core::leftovers`: a temporary file whose writer cannot be judged goes only
/// after this long, and such an empty directory after a day.
const UNJUDGED_MIN_AGE: Duration = Duration::from_secs(3600);
const EMPTY_DIR_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

struct Session {
    mount: Box<dyn Mount>,
    version: Version,
    /// The repository directory.
    root: Bytes,
    /// Bytes per READ (the server's rtmax, which is also the NFSv4.1 session's reply limit).
    rsize: u32,
    /// Directory handles by repository-relative path (`chunks/ab`).
    dirs: Mutex<HashMap<String, Bytes>>,
}

/// Removes a temporary file when the write that made it is dropped before it finished.
struct TmpGuard {
    session: Arc<Session>,
    dir: Bytes,
    name: String,
    armed: bool,
}

impl Drop for TmpGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (session, dir, name) = (self.session.clone(), self.dir.clone(), self.name.clone());
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = session.mount.remove(dir, &name).await;
            });
        }
    }
}

pub struct NfsBackend {
    location: Location,
    server: String,
    session: Mutex<Option<Arc<Session>>>,
    connecting: tokio::sync::Mutex<()>,
    /// Make the repository directory on the first mount (`repo init`).
    create: std::sync::atomic::AtomicBool,
    /// This backend's temporary directory, `tmp/<tag>.<n>`, named like the `fs` backend's.
    own_tmp: String,
}

impl std::fmt::Debug for NfsBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NfsBackend")
            .field("location", &self.location.text)
            .finish()
    }
}

/// `"chunks/ab/x"` → `("chunks/ab", "x")`.
fn split(path: &str) -> (&str, &str) {
    path.trim_matches('/')
        .rsplit_once('/')
        .unwrap_or(("", path.trim_matches('/')))
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

fn time(t: &nfs_rs::Time) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(i64::from(t.seconds), t.nseconds)
}

impl NfsBackend {
    /// Mounts the export and finds (or with `create`, makes) the repository directory.
    pub async fn connect(location: &str, create: bool) -> Result<NfsBackend, ConnectError> {
        let backend = NfsBackend::new(location, create)?;
        backend.session().await?;
        Ok(backend)
    }

    /// A backend that mounts on its first call (for callers that cannot wait here): a bad
    /// location fails now, an unreachable server at the first call, where it is retried.
    pub fn new(location: &str, create: bool) -> Result<NfsBackend, NfsError> {
        let location = Location::parse(location)?;
        let own_tmp = bulwark_core::leftovers::temp_dir_for_this_process(std::path::Path::new(
            bulwark_core::format::TMP_DIR,
        ))
        .to_string_lossy()
        .trim_end_matches('/')
        .to_string();
        Ok(NfsBackend {
            server: location.server(),
            location,
            session: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            create: create.into(),
            own_tmp,
        })
    }

    /// The protocol version in use (after the fallback from NFSv4.1 to NFSv3, if any).
    pub async fn version(&self) -> Result<Version, ConnectError> {
        Ok(self.session().await?.version)
    }

    async fn session(&self) -> Result<Arc<Session>, ConnectError> {
        if let Some(s) = self.session.lock().expect("session lock").clone() {
            return Ok(s);
        }
        let _one = self.connecting.lock().await;
        if let Some(s) = self.session.lock().expect("session lock").clone() {
            return Ok(s);
        }
        let create = self.create.load(std::sync::atomic::Ordering::SeqCst);
        let s = Arc::new(connect(&self.location, create).await?);
        self.create
            .store(false, std::sync::atomic::Ordering::SeqCst);
        tracing::debug!(location = %self.location.text, version = s.version.name(), "NFS export mounted");
        *self.session.lock().expect("session lock") = Some(s.clone());
        Ok(s)
    }

    /// The typed error for `err`; forgets the mount when it is broken, so the retry mounts
    /// again.
    fn failed(&self, s: &Arc<Session>, err: &ClientError) -> NfsError {
        if matches!(meaning(err), Meaning::Stale | Meaning::Connection) {
            let mut current = self.session.lock().expect("session lock");
            if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, s)) {
                tracing::warn!(location = %self.location.text, error = %err, "NFS mount lost; reconnecting on the next call");
                *current = None;
            }
        }
        NfsError::from_client(&self.server, err)
    }

    fn core(&self, what: String, err: NfsError) -> Error {
        err.into_core(format!("{what} on {}", self.location.text))
    }

    /// The handle of repository directory `dir`, made (with its parents) when `create`;
    /// `None` when it does not exist.
    async fn dir(
        &self,
        s: &Session,
        dir: &str,
        create: bool,
    ) -> Result<Option<Bytes>, ClientError> {
        let dir = dir.trim_matches('/');
        if dir.is_empty() {
            return Ok(Some(s.root.clone()));
        }
        if let Some(fh) = s.dirs.lock().expect("dir cache").get(dir) {
            return Ok(Some(fh.clone()));
        }
        let mut fh = s.root.clone();
        let mut path = String::new();
        for name in dir.split('/') {
            path = join(&path, name);
            let cached = s.dirs.lock().expect("dir cache").get(&path).cloned();
            fh = match cached {
                Some(fh) => fh,
                None => {
                    let found = match s.mount.lookup(fh.clone(), name).await {
                        Ok(o) => o.fh,
                        Err(e) if e.is_not_found() && create => {
                            match s.mount.mkdir(fh.clone(), name, 0o755).await {
                                Ok(o) => o.fh,
                                // Another writer made it first.
                                Err(e) if e.is_exist() => {
                                    s.mount.lookup(fh.clone(), name).await?.fh
                                }
                                Err(e) => return Err(e),
                            }
                        }
                        Err(e) if e.is_not_found() => return Ok(None),
                        Err(e) => return Err(e),
                    };
                    s.dirs
                        .lock()
                        .expect("dir cache")
                        .insert(path.clone(), found.clone());
                    found
                }
            };
        }
        Ok(Some(fh))
    }

    async fn read_object(&self, s: &Session, path: &str) -> Result<Option<Vec<u8>>, ClientError> {
        let (dir, name) = split(path);
        let Some(dir) = self.dir(s, dir, false).await? else {
            return Ok(None);
        };
        let obj = match s.mount.lookup(dir, name).await {
            Ok(o) => o,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e),
        };
        let attr = match obj.attr {
            Some(a) => a,
            None => s.mount.getattr(obj.fh.clone()).await?,
        };
        if attr.type_ == TYPE_DIR {
            return Err(ClientError::Nfs3(nfs_rs::Nfs3ErrorCode::NFS3ERR_ISDIR));
        }
        let size = attr.filesize;
        let piece = u64::from(s.rsize);
        let pieces = futures::stream::iter((0..size).step_by(piece as usize))
            .map(|offset| {
                let fh = obj.fh.clone();
                let len = piece.min(size - offset) as usize;
                async move {
                    let mut buf = Vec::with_capacity(len);
                    while buf.len() < len {
                        let got = s
                            .mount
                            .read(
                                fh.clone(),
                                offset + buf.len() as u64,
                                (len - buf.len()) as u32,
                            )
                            .await?;
                        if got.is_empty() {
                            // Objects never shrink; a short file is one replaced meanwhile.
                            return Err(ClientError::Nfs3(nfs_rs::Nfs3ErrorCode::NFS3ERR_STALE));
                        }
                        buf.extend_from_slice(&got);
                    }
                    Ok::<_, ClientError>(buf)
                }
            })
            .buffered(READS_IN_FLIGHT);
        let mut data = Vec::with_capacity(size as usize);
        futures::pin_mut!(pieces);
        while let Some(piece) = pieces.try_next().await? {
            data.extend_from_slice(&piece);
        }
        Ok(Some(data))
    }

    /// Writes `data` under a temporary name and then renames it onto `path` (or, `exclusive`,
    /// links it there unless the name is taken). `Ok(false)`: exclusive and `path` existed.
    async fn put(
        &self,
        s: &Arc<Session>,
        path: &str,
        data: Bytes,
        exclusive: bool,
    ) -> Result<bool, ClientError> {
        let (dir, name) = split(path);
        let tmp_dir = self
            .dir(s, &self.own_tmp, true)
            .await?
            .expect("created directories exist");
        let tmp_name = bulwark_core::crypto::random_hex(8);
        let file = s
            .mount
            .create(tmp_dir.clone(), &tmp_name, Some(0o644))
            .await?;
        // The repository drops the writes still in flight when a backup fails (a full export,
        // say); the guard removes the temporary file of a write dropped half-way.
        let mut guard = TmpGuard {
            session: s.clone(),
            dir: tmp_dir.clone(),
            name: tmp_name.clone(),
            armed: true,
        };
        let placed = async {
            nfs_rs::write_all(&*s.mount, file.fh.clone(), 0, data).await?;
            s.mount.close(file.fh.clone()).await?;
            let target = self
                .dir(s, dir, true)
                .await?
                .expect("created directories exist");
            if exclusive {
                // LINK fails with EEXIST when the name is taken, in one server operation;
                // RENAME would replace.
                match s.mount.link(file.fh.clone(), target, name).await {
                    Ok(_) => Ok(true),
                    Err(e) if e.is_exist() => Ok(false),
                    Err(e) => Err(e),
                }
            } else {
                s.mount
                    .rename(tmp_dir.clone(), &tmp_name, target, name)
                    .await?;
                Ok(true)
            }
        }
        .await;
        guard.armed = false;
        if exclusive || placed.is_err() {
            let _ = s.mount.remove(tmp_dir, &tmp_name).await;
        }
        placed
    }

    async fn stat_object(
        &self,
        s: &Session,
        path: &str,
    ) -> Result<Option<ObjectInfo>, ClientError> {
        let (dir, name) = split(path);
        let Some(dir) = self.dir(s, dir, false).await? else {
            return Ok(None);
        };
        let obj = match s.mount.lookup(dir, name).await {
            Ok(o) => o,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e),
        };
        let attr = match obj.attr {
            Some(a) => a,
            None => s.mount.getattr(obj.fh).await?,
        };
        Ok(Some(ObjectInfo {
            path: path.to_string(),
            size: attr.filesize,
            modified: time(&attr.mtime),
        }))
    }

    async fn delete_object(&self, s: &Session, path: &str) -> Result<(), ClientError> {
        let (dir, name) = split(path);
        let Some(dir) = self.dir(s, dir, false).await? else {
            return Ok(());
        };
        match s.mount.remove(dir, name).await {
            Err(e) if !e.is_not_found() => Err(e),
            _ => Ok(()),
        }
    }

    /// Entries of directory `fh`: (name, handle, type, mtime), without `.` and `..`.
    async fn entries(&self, s: &Session, fh: Bytes) -> Result<Vec<Entry>, ClientError> {
        let mut out = Vec::new();
        let mut stream = s.mount.readdirplus(fh.clone()).await;
        while let Some(e) = stream.try_next().await? {
            if e.file_name == "." || e.file_name == ".." {
                continue;
            }
            let (handle, attr) = match (e.handle.is_empty(), e.attr) {
                (false, Some(attr)) => (e.handle, attr),
                _ => match s.mount.lookup(fh.clone(), &e.file_name).await {
                    Ok(o) => {
                        let attr = match o.attr {
                            Some(a) => a,
                            None => s.mount.getattr(o.fh.clone()).await?,
                        };
                        (o.fh, attr)
                    }
                    Err(err) if err.is_not_found() => continue, // removed meanwhile
                    Err(err) => return Err(err),
                },
            };
            out.push(Entry {
                name: e.file_name,
                handle,
                kind: attr.type_,
                modified: SystemTime::UNIX_EPOCH
                    + Duration::new(u64::from(attr.mtime.seconds), attr.mtime.nseconds),
            });
        }
        Ok(out)
    }

    async fn walk(
        &self,
        s: &Session,
        prefix: &str,
        each: &mut (dyn FnMut(&str) + Send),
    ) -> Result<(), ClientError> {
        let (dir, first) = match prefix.rsplit_once('/') {
            Some((dir, first)) => (dir, first),
            None => ("", prefix),
        };
        let Some(fh) = self.dir(s, dir, false).await? else {
            return Ok(());
        };
        let mut todo = vec![(fh, dir.to_string(), first)];
        while let Some((fh, rel, starts)) = todo.pop() {
            let entries = match self.entries(s, fh).await {
                Ok(e) => e,
                // A directory removed between listing its parent and reading it.
                Err(e) if e.is_not_found() && rel != dir => continue,
                Err(e) => return Err(e),
            };
            for e in entries {
                if !e.name.starts_with(starts) {
                    continue;
                }
                let path = join(&rel, &e.name);
                match e.kind {
                    TYPE_DIR => todo.push((e.handle, path, "")),
                    TYPE_FILE => each(&path),
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// `bulwark_core::leftovers::remove_abandoned_temp_files`, over NFS: the process tags
    /// of the directories under `tmp/` say whose they are.
    async fn remove_leftovers(&self, s: &Session, max_age: Duration) -> Result<usize, ClientError> {
        let tmp = bulwark_core::format::TMP_DIR.trim_end_matches('/');
        let Some(tmp_fh) = self.dir(s, tmp, false).await? else {
            return Ok(0);
        };
        let own = split(&self.own_tmp).1;
        let older = |e: &Entry, age: Duration| {
            SystemTime::now()
                .duration_since(e.modified)
                .is_ok_and(|a| a > age)
        };
        let mut removed = 0;
        for entry in self.entries(s, tmp_fh.clone()).await? {
            if entry.name == own {
                continue;
            }
            if entry.kind != TYPE_DIR {
                // An older release wrote straight into tmp/: only age tells.
                if older(&entry, max_age.max(UNJUDGED_MIN_AGE))
                    && gone_ok(s.mount.remove(tmp_fh.clone(), &entry.name).await)?
                {
                    removed += 1;
                }
                continue;
            }
            let liveness = entry
                .name
                .split_once('.')
                .and_then(|(tag, _)| Holder::parse_tag(tag))
                .map_or(Liveness::Unknown, |h| h.liveness());
            if liveness == Liveness::Running {
                continue;
            }
            let files = match self.entries(s, entry.handle.clone()).await {
                Ok(f) => f,
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(e),
            };
            let mut left = 0;
            for file in files {
                if liveness == Liveness::Gone || older(&file, max_age.max(UNJUDGED_MIN_AGE)) {
                    if gone_ok(s.mount.remove(entry.handle.clone(), &file.name).await)? {
                        removed += 1;
                    }
                } else {
                    left += 1;
                }
            }
            if left == 0 && (liveness == Liveness::Gone || older(&entry, EMPTY_DIR_MAX_AGE)) {
                // Fails harmlessly if a write just started in it.
                let _ = s.mount.rmdir(tmp_fh.clone(), &entry.name).await;
                s.dirs
                    .lock()
                    .expect("dir cache")
                    .remove(&join(tmp, &entry.name));
            }
        }
        Ok(removed)
    }

    /// The current mount, or core's error for `what`.
    async fn current(&self, what: &(dyn Fn() -> String + Sync)) -> Result<Arc<Session>> {
        self.session().await.map_err(|e| match e {
            ConnectError::Missing(_) => Error::NotARepository {
                location: self.location.text.clone(),
            },
            ConnectError::Nfs(e) => self.core(what(), e),
        })
    }

    /// Core's error for `what` having failed with `err` on mount `s`.
    fn fail(&self, s: &Arc<Session>, what: String, err: ClientError) -> Error {
        let err = self.failed(s, &err);
        self.core(what, err)
    }
}

/// `Ok(true)` removed, `Ok(false)` already gone.
fn gone_ok(r: Result<(), ClientError>) -> Result<bool, ClientError> {
    match r {
        Ok(()) => Ok(true),
        Err(e) if e.is_not_found() => Ok(false),
        Err(e) => Err(e),
    }
}

struct Entry {
    name: String,
    handle: Bytes,
    kind: u32,
    modified: SystemTime,
}

/// Why a backend could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Nfs(#[from] NfsError),
    /// The export mounts but the repository directory under it does not exist.
    #[error("{0} does not exist on the server")]
    Missing(String),
}

async fn connect(loc: &Location, create: bool) -> Result<Session, ConnectError> {
    let server = loc.server();
    let mut tried = Vec::new();
    let mut all_unreachable = true;
    for &version in &loc.versions {
        match connect_version(loc, version, create).await {
            Ok(s) => return Ok(s),
            Err(ConnectError::Nfs(e)) if loc.versions.len() > 1 => {
                all_unreachable &= matches!(e, NfsError::Unreachable { .. });
                tracing::debug!(location = %loc.text, version = version.name(), error = %e, "NFS mount failed");
                tried.push(format!("{}: {e}", version.name()));
            }
            Err(e) => return Err(e),
        }
    }
    let tried = tried.join("; ");
    Err(if all_unreachable {
        NfsError::Unreachable {
            server,
            cause: tried,
        }
    } else {
        NfsError::NoVersion { server, tried }
    }
    .into())
}

async fn connect_version(
    loc: &Location,
    version: Version,
    create: bool,
) -> Result<Session, ConnectError> {
    let server = loc.server();
    let full = format!("/{}", loc.path.join("/"));
    let mut mounted = None;
    let mut first_missing = None;
    for (mount_path, below) in loc.mount_candidates() {
        match nfs_rs::parse_url_and_mount(&loc.client_url(version, &mount_path)).await {
            Ok(m) => {
                mounted = Some((m, below));
                break;
            }
            Err(e) => {
                match meaning(&e) {
                    // Maybe a path under the export (Ganesha refuses those with ACCES): try
                    // the shorter one.
                    m @ (Meaning::NotFound | Meaning::Denied) => {
                        first_missing.get_or_insert((m, describe(&e)));
                    }
                    Meaning::Connection => {
                        return Err(NfsError::Unreachable {
                            server,
                            cause: describe(&e),
                        }
                        .into())
                    }
                    _ => return Err(NfsError::from_client(&server, &e).into()),
                }
            }
        }
    }
    let Some((mount, below)) = mounted else {
        let (_, cause) = first_missing.expect("one path was tried");
        return Err(NfsError::ExportNotFound {
            server,
            export: full,
            cause,
        }
        .into());
    };
    let failed = |e: &ClientError| ConnectError::Nfs(NfsError::from_client(&server, e));
    let mut root = mount.getfh().await;
    for name in &below {
        root = match mount.lookup(root.clone(), name).await {
            Ok(o) => o.fh,
            Err(e) if e.is_not_found() && create => {
                match mount.mkdir(root.clone(), name, 0o755).await {
                    Ok(o) => o.fh,
                    Err(e) if e.is_exist() => {
                        mount
                            .lookup(root.clone(), name)
                            .await
                            .map_err(|e| failed(&e))?
                            .fh
                    }
                    Err(e) => return Err(failed(&e)),
                }
            }
            Err(e) if e.is_not_found() => return Err(ConnectError::Missing(full)),
            Err(e) => return Err(failed(&e)),
        };
    }
    let info = mount.fsinfo().await.map_err(|e| failed(&e))?;
    let rsize = match info.rtmax {
        0 => 64 << 10,
        n => n.min(1 << 20),
    };
    Ok(Session {
        mount,
        version,
        root,
        rsize,
        dirs: Mutex::new(HashMap::new()),
    })
}

impl Drop for NfsBackend {
    fn drop(&mut self) {
        // Empty unless a write is in flight; if this does not get to run, the next backup's
        // clean-up removes the directory of a process that is gone.
        let Some(s) = self.session.lock().ok().and_then(|mut s| s.take()) else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let tmp = bulwark_core::format::TMP_DIR
            .trim_end_matches('/')
            .to_string();
        let own = split(&self.own_tmp).1.to_string();
        let created = s
            .dirs
            .lock()
            .map(|d| d.contains_key(&self.own_tmp))
            .unwrap_or(false);
        runtime.spawn(async move {
            if created {
                if let Some(tmp_fh) = s.dirs.lock().ok().and_then(|d| d.get(&tmp).cloned()) {
                    let _ = s.mount.rmdir(tmp_fh, &own).await;
                }
            }
            let _ = s.mount.umount().await;
        });
    }
}

impl Backend for NfsBackend {
    fn location(&self) -> &str {
        &self.location.text
    }

    fn read<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>>> {
        async move {
            let what = || format!("reading {path}");
            let s = self.current(&what).await?;
            let r = self.read_object(&s, path).await;
            r.map_err(|e| self.fail(&s, what(), e))
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
            let what = || format!("writing {path}");
            let s = self.current(&what).await?;
            let r = self.put(&s, path, data.to_bytes(), false).await;
            r.map(|_| ()).map_err(|e| self.fail(&s, what(), e))
        }
        .boxed()
    }

    fn create_new<'a>(&'a self, path: &'a str, data: Vec<u8>) -> BoxFuture<'a, Result<bool>> {
        async move {
            let what = || format!("creating {path}");
            let s = self.current(&what).await?;
            let r = self.put(&s, path, Bytes::from(data), true).await;
            r.map_err(|e| self.fail(&s, what(), e))
        }
        .boxed()
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<String>>> {
        async move {
            let mut all = Vec::new();
            self.list_each(prefix, &mut |p| all.push(p.to_string()))
                .await?;
            Ok(all)
        }
        .boxed()
    }

    fn list_each<'a>(
        &'a self,
        prefix: &'a str,
        each: &'a mut (dyn FnMut(&str) + Send),
    ) -> BoxFuture<'a, Result<()>> {
        async move {
            let what = || format!("listing {prefix}");
            let s = self.current(&what).await?;
            let r = self.walk(&s, prefix, each).await;
            r.map_err(|e| self.fail(&s, what(), e))
        }
        .boxed()
    }

    fn stat<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<Option<ObjectInfo>>> {
        async move {
            let what = || format!("reading the metadata of {path}");
            let s = self.current(&what).await?;
            let r = self.stat_object(&s, path).await;
            r.map_err(|e| self.fail(&s, what(), e))
        }
        .boxed()
    }

    fn delete<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<()>> {
        async move {
            let what = || format!("deleting {path}");
            let s = self.current(&what).await?;
            let r = self.delete_object(&s, path).await;
            r.map_err(|e| self.fail(&s, what(), e))
        }
        .boxed()
    }

    fn remove_abandoned_temp_files(&self, max_age: Duration) -> BoxFuture<'_, Result<usize>> {
        async move {
            let what = || "removing abandoned temporary files".to_string();
            let s = self.current(&what).await?;
            let r = self.remove_leftovers(&s, max_age).await;
            r.map_err(|e| self.fail(&s, what(), e))
        }
        .boxed()
    }

    /// Nothing to do: an NFS server makes CREATE, MKDIR, RENAME and LINK stable before it
    /// answers (RFC 1813 §3.3, RFC 8881 §18), and the data was committed before the rename.
    fn make_durable<'a>(&'a self, _path: &'a str) -> BoxFuture<'a, Result<()>> {
        async { Ok(()) }.boxed()
    }
}

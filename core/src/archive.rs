//! Directory trees as two streams: `data` (every regular file's bytes, in walk order) and
//! `index` (one JSON line per entry: path, type, mode, owner, mtime, and for files the byte
//! range in `data`).
//!
//! What the index expresses is restored exactly: permission bits including setuid/setgid and
//! sticky (set after the owner, because `chown` clears them), numeric owners (as root),
//! mtimes to the nanosecond (before the epoch too, and of symlinks themselves), hard links
//! within the tree (a later path of an inode is a `hardlink` entry naming the first), and
//! sparse files (holes are found with `SEEK_HOLE` when reading and left unwritten when
//! restoring). What it does not hold — xattrs, ACLs, file capabilities, SELinux labels,
//! atime/ctime, special files — is listed in `docs/repository-format.md` §11.
//!
//! Keeping contents in one stream lets small files share chunks and lets the chunker
//! deduplicate across files; the index makes single files and sub-trees restorable without
//! reading the rest. Restores never trust the index: every path is checked (no `..`, no
//! absolute paths, nothing below a symlink or a file), files are created with `O_EXCL` so an
//! existing link is never followed, symlinks are created last, and everything is written into a
//! hidden sibling directory that is renamed onto the target only when complete.

use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::fs::{self, File, FileTimes, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::leftovers;
use crate::manifest::{ChunkRef, Manifest, Source};
use crate::repo::backup::Progress;
use crate::repo::Repository;

pub const DATA_STREAM: &str = "data";
pub const INDEX_STREAM: &str = "index";
pub const INDEX_MEDIA_TYPE: &str = "application/x-bulwark-index+jsonl";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    Dir,
    File,
    Symlink,
    /// Another name of a file listed earlier (`target`): restored with `link(2)`, no data.
    Hardlink,
}

/// One index line. Paths are relative, `/`-separated; the root directory is `""`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub path: PathBytes,
    pub kind: EntryKind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub mtime_nsec: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub size: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub offset: u64,
    /// Symlinks: the link's content. Hard links: the path of the file entry they share an
    /// inode with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<PathBytes>,
    /// Files: the file had holes; all-zero blocks are left unwritten on restore.
    #[serde(default, skip_serializing_if = "is_false")]
    pub sparse: bool,
}

impl Entry {
    /// An entry with neutral metadata (mode 0644, owner 0, mtime at the epoch, no data), for
    /// building or testing indexes.
    pub fn new(path: &[u8], kind: EntryKind) -> Entry {
        Entry {
            path: PathBytes(path.to_vec()),
            kind,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 0,
            mtime_nsec: 0,
            size: 0,
            offset: 0,
            target: None,
            sparse: false,
        }
    }
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

fn is_false(v: &bool) -> bool {
    !*v
}

/// File names are bytes on Unix. Stored as a JSON string when they are UTF-8 (nearly always)
/// and as `{"hex": …}` otherwise, so no name is ever lost or mangled.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct PathBytes(pub Vec<u8>);

impl PathBytes {
    pub fn display(&self) -> String {
        String::from_utf8_lossy(&self.0).into_owned()
    }
}

impl Serialize for PathBytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match std::str::from_utf8(&self.0) {
            Ok(text) => s.serialize_str(text),
            Err(_) => {
                use serde::ser::SerializeMap;
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("hex", &hex::encode(&self.0))?;
                m.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for PathBytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Text(String),
            Raw { hex: String },
        }
        match Repr::deserialize(d)? {
            Repr::Text(t) => Ok(PathBytes(t.into_bytes())),
            Repr::Raw { hex } => hex::decode(hex)
                .map(PathBytes)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// What a [`TreeFilter`] says about one path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection {
    Include,
    /// Leave the entry (and, for a directory, everything below it) out.
    Exclude,
    /// Keep the directory itself, with its metadata, but none of its contents (for a
    /// database's scratch directories that must exist but need not be copied).
    DirectoryOnly,
}

/// Decides per relative path (`/`-separated, never empty) what goes into the backup.
pub type TreeFilter = Box<dyn Fn(&str) -> Selection + Send>;

/// A `Read` over the contents of every regular file under a root, in sorted walk order,
/// building the index as it goes. A file's size is what was actually read, so a file that
/// grows or shrinks during the backup is still described exactly.
pub struct TreeReader {
    root: PathBuf,
    walker: walkdir::IntoIter,
    filter: Option<TreeFilter>,
    current: Option<(File, usize)>,
    offset: u64,
    /// (device, inode) of files with more than one link, and the index entry that got the data.
    links: HashMap<(u64, u64), usize>,
    pub entries: Vec<Entry>,
    /// Files skipped (vanished, special files), for the backup summary.
    pub warnings: Vec<String>,
}

impl TreeReader {
    pub fn new(root: &Path) -> Result<Self> {
        let meta =
            fs::metadata(root).map_err(|e| Error::io(format!("reading {}", root.display()), e))?;
        if !meta.is_dir() {
            return Err(Error::invalid(
                "--path",
                format!(
                    "{} is not a directory (back up a single file with --stdin < FILE)",
                    root.display()
                ),
            ));
        }
        Ok(TreeReader {
            root: root.to_path_buf(),
            walker: walkdir::WalkDir::new(root)
                .follow_links(false)
                .sort_by_file_name()
                .into_iter(),
            filter: None,
            current: None,
            offset: 0,
            links: HashMap::new(),
            entries: Vec::new(),
            warnings: Vec::new(),
        })
    }

    /// Applies `filter` to every path below the root.
    pub fn with_filter(mut self, filter: TreeFilter) -> Self {
        self.filter = Some(filter);
        self
    }

    /// Moves to the next regular file, recording directories and symlinks on the way.
    /// Returns false at the end of the tree.
    fn advance(&mut self) -> io::Result<bool> {
        loop {
            let Some(next) = self.walker.next() else {
                return Ok(false);
            };
            let dent = next.map_err(|e| {
                let path = e
                    .path()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                io::Error::other(format!("walking {path}: {e}"))
            })?;
            let rel = dent
                .path()
                .strip_prefix(&self.root)
                .expect("walkdir stays under the root");
            let path = PathBytes(rel.as_os_str().as_bytes().to_vec());
            let selection = match (&self.filter, rel.to_str()) {
                (Some(f), Some(r)) if !r.is_empty() => f(r),
                _ => Selection::Include,
            };
            let is_dir = dent.file_type().is_dir();
            match selection {
                Selection::Include => {}
                Selection::Exclude => {
                    if is_dir {
                        self.walker.skip_current_dir();
                    }
                    continue;
                }
                Selection::DirectoryOnly if is_dir => self.walker.skip_current_dir(),
                Selection::DirectoryOnly => continue,
            }
            let meta = match dent.metadata() {
                Ok(m) => m,
                Err(e)
                    if e.io_error()
                        .is_some_and(|io| io.kind() == io::ErrorKind::NotFound) =>
                {
                    self.warnings.push(format!(
                        "{} vanished during the backup",
                        dent.path().display()
                    ));
                    continue;
                }
                Err(e) => {
                    return Err(io::Error::other(format!(
                        "reading {}: {e}",
                        dent.path().display()
                    )))
                }
            };
            let mut entry = Entry {
                path,
                kind: EntryKind::Dir,
                mode: meta.mode() & 0o7777,
                uid: meta.uid(),
                gid: meta.gid(),
                mtime: meta.mtime(),
                mtime_nsec: meta.mtime_nsec() as u32,
                size: 0,
                offset: 0,
                target: None,
                sparse: false,
            };
            let ft = meta.file_type();
            if ft.is_dir() {
                self.entries.push(entry);
            } else if ft.is_symlink() {
                let target = fs::read_link(dent.path()).map_err(|e| {
                    io::Error::other(format!("reading link {}: {e}", dent.path().display()))
                })?;
                entry.kind = EntryKind::Symlink;
                entry.target = Some(PathBytes(target.as_os_str().as_bytes().to_vec()));
                self.entries.push(entry);
            } else if ft.is_file() {
                let inode = (meta.dev(), meta.ino());
                if meta.nlink() > 1 {
                    if let Some(&first) = self.links.get(&inode) {
                        entry.kind = EntryKind::Hardlink;
                        entry.target = Some(self.entries[first].path.clone());
                        self.entries.push(entry);
                        continue;
                    }
                }
                let file = match File::open(dent.path()) {
                    Ok(f) => f,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        self.warnings.push(format!(
                            "{} vanished during the backup",
                            dent.path().display()
                        ));
                        continue;
                    }
                    Err(e) => {
                        return Err(io::Error::new(
                            e.kind(),
                            format!("opening {}: {e}", dent.path().display()),
                        ))
                    }
                };
                entry.kind = EntryKind::File;
                entry.offset = self.offset;
                entry.sparse = has_holes(&file, &meta);
                if meta.nlink() > 1 {
                    self.links.insert(inode, self.entries.len());
                }
                self.entries.push(entry);
                self.current = Some((file, self.entries.len() - 1));
                return Ok(true);
            } else {
                self.warnings.push(format!(
                    "{} is a special file (fifo, socket or device); skipped",
                    dent.path().display()
                ));
            }
        }
    }

    /// The index as JSON lines.
    pub fn index_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for e in &self.entries {
            serde_json::to_writer(&mut out, e).expect("entries serialize");
            out.push(b'\n');
        }
        out
    }
}

impl Read for TreeReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if let Some((file, idx)) = &mut self.current {
                let n = file.read(buf).map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("reading {}: {e}", self.entries[*idx].path.display()),
                    )
                })?;
                if n > 0 {
                    self.entries[*idx].size += n as u64;
                    self.offset += n as u64;
                    return Ok(n);
                }
                self.current = None;
            }
            if !self.advance()? {
                return Ok(0);
            }
        }
    }
}

/// Whether a file has holes: fewer blocks allocated than its size needs, and `SEEK_HOLE`
/// finding one before the end (file systems without hole support report none).
fn has_holes(file: &File, meta: &fs::Metadata) -> bool {
    if meta.blocks().saturating_mul(512) >= meta.size() {
        return false;
    }
    // SAFETY: lseek on a file descriptor we own; it only moves the offset, reset below.
    let hole = unsafe { libc::lseek(file.as_raw_fd(), 0, libc::SEEK_HOLE) };
    let reset = unsafe { libc::lseek(file.as_raw_fd(), 0, libc::SEEK_SET) };
    reset == 0 && hole >= 0 && (hole as u64) < meta.size()
}

/// Parses and checks an index: every path safe, no duplicates, nothing below a non-directory.
pub fn parse_index(snapshot: &str, bytes: &[u8], data_size: u64) -> Result<Vec<Entry>> {
    let mut entries = Vec::new();
    for (n, line) in bytes
        .split(|b| *b == b'\n')
        .enumerate()
        .filter(|(_, l)| !l.is_empty())
    {
        let e: Entry = serde_json::from_slice(line).map_err(|err| {
            Error::corrupt(
                format!("index of snapshot {snapshot}"),
                format!("line {}: {err}", n + 1),
            )
        })?;
        entries.push(e);
    }
    let mut kinds: HashMap<&[u8], EntryKind> = HashMap::new();
    for e in &entries {
        let p = &e.path.0;
        check_relative(p).map_err(|why| {
            Error::UnsafeRestore(format!(
                "snapshot {snapshot} has an entry {:?} that {why}",
                e.path.display()
            ))
        })?;
        if p.is_empty() && e.kind != EntryKind::Dir {
            return Err(Error::UnsafeRestore(format!(
                "snapshot {snapshot}: the root entry is not a directory"
            )));
        }
        if e.kind == EntryKind::File
            && e.offset
                .checked_add(e.size)
                .is_none_or(|end| end > data_size)
        {
            return Err(Error::corrupt(
                format!("index of snapshot {snapshot}"),
                format!(
                    "{:?} points past the end of the data stream",
                    e.path.display()
                ),
            ));
        }
        if e.kind == EntryKind::Hardlink {
            let target = e
                .target
                .as_ref()
                .map(|t| t.0.as_slice())
                .unwrap_or_default();
            if kinds.get(target) != Some(&EntryKind::File) {
                return Err(Error::UnsafeRestore(format!(
                    "snapshot {snapshot} has a hard link {:?} to {:?}, which is not a file listed before it",
                    e.path.display(),
                    String::from_utf8_lossy(target)
                )));
            }
        }
        for (i, _) in p.iter().enumerate().filter(|(_, b)| **b == b'/') {
            match kinds.get(&p[..i]) {
                Some(EntryKind::Dir) | None => {}
                Some(other) => {
                    return Err(Error::UnsafeRestore(format!(
                        "snapshot {snapshot} has an entry {:?} below {:?}, which is a {other:?}, not a directory (a symlink trick?)",
                        e.path.display(),
                        String::from_utf8_lossy(&p[..i])
                    )))
                }
            }
        }
        if kinds.insert(p, e.kind).is_some() {
            return Err(Error::UnsafeRestore(format!(
                "snapshot {snapshot} lists {:?} twice",
                e.path.display()
            )));
        }
    }
    // A later entry may be a symlink that an earlier entry lies below.
    for e in &entries {
        let p = &e.path.0;
        for (i, _) in p.iter().enumerate().filter(|(_, b)| **b == b'/') {
            if let Some(kind @ (EntryKind::Symlink | EntryKind::File | EntryKind::Hardlink)) =
                kinds.get(&p[..i])
            {
                return Err(Error::UnsafeRestore(format!(
                    "snapshot {snapshot} has an entry {:?} below {:?}, which is a {kind:?} (a symlink trick?)",
                    e.path.display(),
                    String::from_utf8_lossy(&p[..i])
                )));
            }
        }
    }
    Ok(entries)
}

/// Why a stored path may not be joined onto a restore target, if it may not.
fn check_relative(p: &[u8]) -> std::result::Result<(), &'static str> {
    if p.is_empty() {
        return Ok(());
    }
    if p[0] == b'/' {
        return Err("is absolute");
    }
    if p.contains(&0) {
        return Err("contains a NUL byte");
    }
    for comp in p.split(|b| *b == b'/') {
        match comp {
            b"" => return Err("has an empty component"),
            b"." | b".." => return Err("escapes the target with '.' or '..'"),
            _ => {}
        }
    }
    Ok(())
}

/// Restricts entries to `include` paths (each a file or a sub-tree), keeping their parent
/// directories so they are recreated with their metadata.
pub fn select(entries: Vec<Entry>, include: &[String], snapshot: &str) -> Result<Vec<Entry>> {
    if include.is_empty() {
        return Ok(entries);
    }
    let wanted: Vec<Vec<u8>> = include
        .iter()
        .map(|p| p.trim_matches('/').as_bytes().to_vec())
        .collect();
    for w in &wanted {
        if !entries.iter().any(|e| &e.path.0 == w) {
            return Err(Error::invalid(
                "--include",
                format!(
                    "{:?} is not in snapshot {snapshot}",
                    String::from_utf8_lossy(w)
                ),
            ));
        }
    }
    let under = |p: &[u8], w: &[u8]| {
        w.is_empty() || p == w || (p.starts_with(w) && p.get(w.len()) == Some(&b'/'))
    };
    let files: HashMap<Vec<u8>, Entry> = entries
        .iter()
        .filter(|e| e.kind == EntryKind::File)
        .map(|e| (e.path.0.clone(), e.clone()))
        .collect();
    let mut picked: Vec<Entry> = entries
        .into_iter()
        .filter(|e| {
            wanted
                .iter()
                .any(|w| under(&e.path.0, w) || under(w, &e.path.0))
        })
        .collect();
    // A hard link whose file was left out: the first selected name of that inode gets the
    // data, later ones link to it.
    let selected: std::collections::HashSet<Vec<u8>> = picked
        .iter()
        .filter(|e| e.kind == EntryKind::File)
        .map(|e| e.path.0.clone())
        .collect();
    let mut moved: HashMap<Vec<u8>, PathBytes> = HashMap::new();
    for e in picked.iter_mut().filter(|e| e.kind == EntryKind::Hardlink) {
        let target = e.target.clone().unwrap_or_default();
        if selected.contains(&target.0) {
            continue;
        }
        if let Some(first) = moved.get(&target.0) {
            e.target = Some(first.clone());
        } else if let Some(file) = files.get(&target.0) {
            moved.insert(target.0.clone(), e.path.clone());
            e.kind = EntryKind::File;
            e.target = None;
            e.offset = file.offset;
            e.size = file.size;
            e.sparse = file.sparse;
        }
    }
    Ok(picked)
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RestoreSummary {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub hardlinks: u64,
    pub bytes: u64,
}

/// Restores a tree snapshot (or the `include`d parts of it) into `target`, which must not
/// exist or be an empty directory. Nothing appears under `target` unless everything succeeded.
pub async fn restore_tree(
    repo: &Repository,
    manifest: &Manifest,
    target: &Path,
    include: &[String],
    progress: Arc<Progress>,
) -> Result<RestoreSummary> {
    restore_tree_streams(
        repo,
        manifest,
        (DATA_STREAM, INDEX_STREAM),
        target,
        include,
        progress,
    )
    .await
}

/// [`restore_tree`] for a tree stored under other stream names (a snapshot may hold several
/// trees, such as a database's data directory and each of its tablespaces).
pub async fn restore_tree_streams(
    repo: &Repository,
    manifest: &Manifest,
    (data_stream, index_stream): (&str, &str),
    target: &Path,
    include: &[String],
    progress: Arc<Progress>,
) -> Result<RestoreSummary> {
    if manifest.source != Source::Tree {
        return Err(Error::invalid(
            "restore target",
            format!(
                "snapshot {} holds a single stream; restore it with --stdout or --output FILE",
                manifest.name
            ),
        ));
    }
    let data = manifest
        .stream(data_stream)
        .ok_or_else(|| {
            Error::corrupt(
                format!("snapshot {}", manifest.name),
                format!("has no {data_stream:?} stream"),
            )
        })?
        .clone();
    let index = repo
        .restore_stream(
            manifest,
            index_stream,
            Vec::new(),
            Arc::new(Progress::default()),
        )
        .await?;
    let entries = select(
        parse_index(&manifest.name, &index, data.size)?,
        include,
        &manifest.name,
    )?;
    check_target(target)?;
    let parent = leftovers::parent_of(target);
    match leftovers::remove_stale_staging(parent) {
        Ok(removed) => {
            for p in removed {
                tracing::info!(path = %p.display(), "removed the staging entry of an interrupted restore");
            }
        }
        Err(e) => {
            tracing::warn!(dir = %parent.display(), error = %e, "could not remove staging entries of interrupted restores")
        }
    }
    let staging = staging_dir(target)?;

    let (needed, offsets) = needed_chunks(&data.chunks, &entries);
    let rx = repo.chunk_stream(needed, format!("snapshot {}", manifest.name));
    let staging_clone = staging.clone();
    let result = tokio::task::spawn_blocking(move || {
        extract(&staging_clone, entries, rx, offsets, &progress)
    })
    .await
    .expect("extract task panicked");
    let finish = result.and_then(|summary| {
        if target.exists() {
            fs::remove_dir(target).map_err(|e| {
                Error::io(format!("replacing empty directory {}", target.display()), e)
            })?;
        }
        fs::rename(&staging, target)
            .map_err(|e| Error::io(format!("moving the restore into {}", target.display()), e))?;
        Ok(summary)
    });
    if finish.is_err() {
        let _ = fs::remove_dir_all(&staging);
    }
    finish
}

fn check_target(target: &Path) -> Result<()> {
    match fs::symlink_metadata(target) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(
            format!("checking restore target {}", target.display()),
            e,
        )),
        Ok(m) if m.is_dir() => {
            let empty = fs::read_dir(target)
                .map_err(|e| Error::io(format!("reading {}", target.display()), e))?
                .next()
                .is_none();
            if empty {
                Ok(())
            } else {
                Err(Error::invalid(
                    "restore target",
                    format!("{} exists and is not empty", target.display()),
                ))
            }
        }
        Ok(_) => Err(Error::invalid(
            "restore target",
            format!("{} exists and is not a directory", target.display()),
        )),
    }
}

/// A hidden sibling of the target, so the final rename stays on one file system; named after
/// this process, so that the next restore can remove it if this one is killed.
fn staging_dir(target: &Path) -> Result<PathBuf> {
    let parent = leftovers::parent_of(target);
    let dir = leftovers::staging_path(target);
    fs::create_dir_all(parent)
        .map_err(|e| Error::io(format!("creating {}", parent.display()), e))?;
    fs::create_dir(&dir)
        .map_err(|e| Error::io(format!("creating staging directory {}", dir.display()), e))?;
    Ok(dir)
}

/// The chunks that hold any selected file's bytes, with each one's offset in the data stream.
fn needed_chunks(chunks: &[ChunkRef], entries: &[Entry]) -> (Vec<ChunkRef>, Vec<u64>) {
    let mut ranges: Vec<(u64, u64)> = entries
        .iter()
        .filter(|e| e.kind == EntryKind::File && e.size > 0)
        .map(|e| (e.offset, e.offset + e.size))
        .collect();
    ranges.sort();
    let (mut needed, mut offsets) = (Vec::new(), Vec::new());
    let mut start = 0u64;
    let mut r = ranges.iter().peekable();
    for c in chunks {
        let end = start + c.len as u64;
        while r.peek().is_some_and(|(_, re)| *re <= start) {
            r.next();
        }
        if r.peek().is_some_and(|(rs, _)| *rs < end) {
            needed.push(c.clone());
            offsets.push(start);
        }
        start = end;
    }
    (needed, offsets)
}

fn extract(
    root: &Path,
    mut entries: Vec<Entry>,
    mut rx: tokio::sync::mpsc::Receiver<Result<Vec<u8>>>,
    offsets: Vec<u64>,
    progress: &Progress,
) -> Result<RestoreSummary> {
    let mut summary = RestoreSummary::default();
    // SAFETY: geteuid has no preconditions.
    let as_root = unsafe { libc::geteuid() } == 0;
    let join = |e: &Entry| root.join(OsStr::from_bytes(&e.path.0));
    let io_err = |what: &str, e: &Entry, err: io::Error| {
        Error::io(format!("{what} {}", e.path.display()), err)
    };

    // Directories first (no symlink exists yet, so nothing can redirect them).
    for e in entries.iter().filter(|e| e.kind == EntryKind::Dir) {
        fs::create_dir_all(join(e)).map_err(|err| io_err("creating directory", e, err))?;
        summary.dirs += 1;
    }
    // Files in data-stream order, consuming chunks as they arrive.
    entries.sort_by_key(|e| (e.kind != EntryKind::File, e.offset));
    let mut current: Option<(u64, Vec<u8>)> = None;
    let mut next_chunk = 0usize;
    for e in entries.iter().filter(|e| e.kind == EntryKind::File) {
        let path = join(e);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(|err| io_err("creating parent of", e, err))?;
        }
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|err| io_err("creating file", e, err))?;
        let mut out = FileWriter::new(file, e.sparse);
        let (mut pos, end) = (e.offset, e.offset + e.size);
        while pos < end {
            let covers = current
                .as_ref()
                .is_some_and(|(start, c)| *start <= pos && pos < start + c.len() as u64);
            if !covers {
                let chunk = rx.blocking_recv().ok_or_else(|| {
                    Error::io(
                        "reading restored data",
                        io::Error::other("chunk stream ended early"),
                    )
                })??;
                current = Some((offsets[next_chunk], chunk));
                next_chunk += 1;
                continue;
            }
            let (start, chunk) = current.as_ref().expect("checked above");
            let from = (pos - start) as usize;
            let to = chunk.len().min((end - start) as usize);
            out.write(&chunk[from..to])
                .map_err(|err| io_err("writing", e, err))?;
            progress
                .bytes_read
                .fetch_add((to - from) as u64, Ordering::Relaxed);
            pos = start + to as u64;
        }
        let file = out.finish().map_err(|err| io_err("writing", e, err))?;
        // Owner before mode: chown clears setuid and setgid.
        if as_root {
            let _ = std::os::unix::fs::fchown(&file, Some(e.uid), Some(e.gid));
        }
        file.set_permissions(Permissions::from_mode(e.mode))
            .map_err(|err| io_err("setting mode of", e, err))?;
        file.set_times(FileTimes::new().set_modified(mtime(e)))
            .map_err(|err| io_err("setting mtime of", e, err))?;
        summary.files += 1;
        summary.bytes += e.size;
    }
    // Hard links: their file exists now, and no symlink does yet.
    for e in entries.iter().filter(|e| e.kind == EntryKind::Hardlink) {
        let target = e.target.as_ref().map(|t| t.0.clone()).unwrap_or_default();
        fs::hard_link(root.join(OsStr::from_bytes(&target)), join(e))
            .map_err(|err| io_err("creating hard link", e, err))?;
        summary.hardlinks += 1;
    }
    // Symlinks last: from here on nothing else is written below them.
    for e in entries.iter().filter(|e| e.kind == EntryKind::Symlink) {
        let target = e.target.as_ref().map(|t| t.0.clone()).unwrap_or_default();
        let path = join(e);
        std::os::unix::fs::symlink(OsStr::from_bytes(&target), &path)
            .map_err(|err| io_err("creating symlink", e, err))?;
        if as_root {
            let _ = std::os::unix::fs::lchown(&path, Some(e.uid), Some(e.gid));
        }
        set_symlink_mtime(&path, e).map_err(|err| io_err("setting mtime of symlink", e, err))?;
        summary.symlinks += 1;
    }
    // Directory metadata deepest first, so setting a child's mtime does not disturb its parent.
    let mut dirs: Vec<&Entry> = entries
        .iter()
        .filter(|e| e.kind == EntryKind::Dir)
        .collect();
    dirs.sort_by_key(|e| {
        std::cmp::Reverse(
            e.path.0.iter().filter(|b| **b == b'/').count() + !e.path.0.is_empty() as usize,
        )
    });
    for e in dirs {
        let path = join(e);
        if as_root {
            let _ = std::os::unix::fs::chown(&path, Some(e.uid), Some(e.gid));
        }
        fs::set_permissions(&path, Permissions::from_mode(e.mode | 0o700))
            .map_err(|err| io_err("setting mode of", e, err))?;
        File::open(&path)
            .and_then(|d| d.set_times(FileTimes::new().set_modified(mtime(e))))
            .map_err(|err| io_err("setting mtime of", e, err))?;
        fs::set_permissions(&path, Permissions::from_mode(e.mode))
            .map_err(|err| io_err("setting mode of", e, err))?;
    }
    Ok(summary)
}

/// Block size for finding zero runs in sparse files: the page and file system block size
/// almost everywhere, so a skipped block is an unallocated one.
const SPARSE_BLOCK: usize = 4096;

/// Writes a restored file's bytes; for a sparse file, leaves aligned all-zero blocks unwritten
/// (holes) and sets the length at the end, so the file takes no more space than it did.
struct FileWriter {
    file: File,
    sparse: bool,
    /// Bytes written or skipped so far, minus `carry`.
    pos: u64,
    /// The start of an incomplete block (sparse files only), until the next write completes it.
    carry: Vec<u8>,
}

impl FileWriter {
    fn new(file: File, sparse: bool) -> Self {
        FileWriter {
            file,
            sparse,
            pos: 0,
            carry: Vec::new(),
        }
    }

    fn write(&mut self, mut data: &[u8]) -> io::Result<()> {
        if !self.sparse {
            self.file.write_all(data)?;
            self.pos += data.len() as u64;
            return Ok(());
        }
        if !self.carry.is_empty() {
            let take = (SPARSE_BLOCK - self.carry.len()).min(data.len());
            self.carry.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.carry.len() < SPARSE_BLOCK {
                return Ok(());
            }
            let block = std::mem::take(&mut self.carry);
            self.blocks(&block)?;
        }
        let whole = data.len() - data.len() % SPARSE_BLOCK;
        self.blocks(&data[..whole])?;
        self.carry.extend_from_slice(&data[whole..]);
        Ok(())
    }

    /// Writes whole blocks at `pos`, each run of non-zero blocks with one call.
    fn blocks(&mut self, data: &[u8]) -> io::Result<()> {
        let mut run_start = None;
        for (i, block) in data.chunks(SPARSE_BLOCK).enumerate() {
            let zero = block.iter().all(|b| *b == 0);
            match (zero, run_start) {
                (false, None) => run_start = Some(i),
                (true, Some(s)) => {
                    self.file.write_all_at(
                        &data[s * SPARSE_BLOCK..i * SPARSE_BLOCK],
                        self.pos + (s * SPARSE_BLOCK) as u64,
                    )?;
                    run_start = None;
                }
                _ => {}
            }
        }
        if let Some(s) = run_start {
            self.file.write_all_at(
                &data[s * SPARSE_BLOCK..],
                self.pos + (s * SPARSE_BLOCK) as u64,
            )?;
        }
        self.pos += data.len() as u64;
        Ok(())
    }

    fn finish(mut self) -> io::Result<File> {
        if self.sparse {
            let tail = std::mem::take(&mut self.carry);
            if tail.iter().any(|b| *b != 0) {
                self.file.write_all_at(&tail, self.pos)?;
            }
            self.file.set_len(self.pos + tail.len() as u64)?;
        }
        Ok(self.file)
    }
}

/// Sets a symlink's own mtime (`utimensat` with `AT_SYMLINK_NOFOLLOW`; std only follows links).
fn set_symlink_mtime(path: &Path, e: &Entry) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let times = [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        libc::timespec {
            tv_sec: e.mtime as libc::time_t,
            tv_nsec: e.mtime_nsec.min(999_999_999) as libc::c_long,
        },
    ];
    // SAFETY: a valid NUL-terminated path and two timespecs, as utimensat expects.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// An index time as a `SystemTime`. Seconds and nanoseconds come from `stat`, where a time
/// before the epoch has negative seconds and a non-negative fraction (-1.25 s is -2 s +
/// 0.75 s).
/// The entry's modification time; one the system cannot represent (an index made by a buggy
/// or hostile writer holding the key) is restored as the epoch rather than panicking.
fn mtime(e: &Entry) -> SystemTime {
    let nanos = Duration::from_nanos(u64::from(e.mtime_nsec.min(999_999_999)));
    let secs = Duration::from_secs(e.mtime.unsigned_abs());
    let whole = if e.mtime >= 0 {
        UNIX_EPOCH.checked_add(secs)
    } else {
        UNIX_EPOCH.checked_sub(secs)
    };
    whole
        .and_then(|t| t.checked_add(nanos))
        .unwrap_or(UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, kind: EntryKind) -> Entry {
        Entry::new(path.as_bytes(), kind)
    }

    #[test]
    fn filters_leave_out_entries_or_keep_only_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for d in ["base/1", "pg_wal/archive_status", "pgsql_tmp"] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        for (f, body) in [
            ("base/1/1259", "table"),
            ("pg_wal/000000010000000000000001", "wal"),
            ("pg_wal/archive_status/x.done", ""),
            ("postmaster.pid", "123"),
            ("pgsql_tmp/t1", "tmp"),
            ("PG_VERSION", "15"),
        ] {
            fs::write(root.join(f), body).unwrap();
        }
        let mut tree =
            TreeReader::new(root)
                .unwrap()
                .with_filter(Box::new(|rel: &str| match rel {
                    "postmaster.pid" | "pgsql_tmp" => Selection::Exclude,
                    "pg_wal" => Selection::DirectoryOnly,
                    _ => Selection::Include,
                }));
        let mut data = Vec::new();
        tree.read_to_end(&mut data).unwrap();
        let paths: Vec<String> = tree.entries.iter().map(|e| e.path.display()).collect();
        assert_eq!(
            paths,
            ["", "PG_VERSION", "base", "base/1", "base/1/1259", "pg_wal"]
        );
        assert_eq!(data, b"15table");
    }

    fn index(entries: &[Entry]) -> Vec<u8> {
        entries
            .iter()
            .flat_map(|e| {
                let mut l = serde_json::to_vec(e).unwrap();
                l.push(b'\n');
                l
            })
            .collect()
    }

    #[test]
    fn escaping_paths_are_refused() {
        for bad in ["../x", "a/../../x", "/etc/passwd", "a//b", "./a"] {
            let idx = index(&[entry("", EntryKind::Dir), entry(bad, EntryKind::File)]);
            let err = parse_index("s1", &idx, 0).unwrap_err();
            assert!(matches!(err, Error::UnsafeRestore(_)), "{bad}: {err}");
            assert!(err.to_string().contains("s1"), "{err}");
        }
    }

    #[test]
    fn entries_below_symlinks_or_files_are_refused_in_either_order() {
        let mut link = entry("link", EntryKind::Symlink);
        link.target = Some(PathBytes(b"/etc".to_vec()));
        let file = entry("link/passwd", EntryKind::File);
        for order in [
            vec![link.clone(), file.clone()],
            vec![file.clone(), link.clone()],
        ] {
            let err = parse_index("s1", &index(&order), 0).unwrap_err();
            assert!(err.to_string().contains("symlink trick"), "{err}");
        }
        let dup = index(&[entry("a", EntryKind::File), entry("a", EntryKind::File)]);
        assert!(parse_index("s1", &dup, 0).is_err());
    }

    #[test]
    fn non_utf8_names_round_trip() {
        let e = Entry {
            path: PathBytes(vec![b'a', 0xff, b'b']),
            ..entry("", EntryKind::File)
        };
        let json = serde_json::to_string(&e).unwrap();
        assert!(json.contains("\"hex\""), "{json}");
        assert_eq!(serde_json::from_str::<Entry>(&json).unwrap(), e);
    }

    #[test]
    fn selection_keeps_subtrees_and_their_parents() {
        let all = vec![
            entry("", EntryKind::Dir),
            entry("a", EntryKind::Dir),
            entry("a/b", EntryKind::Dir),
            entry("a/b/f", EntryKind::File),
            entry("a/bc", EntryKind::File),
            entry("z", EntryKind::File),
        ];
        let picked: Vec<_> = select(all.clone(), &["a/b".into()], "s")
            .unwrap()
            .into_iter()
            .map(|e| e.path.display())
            .collect();
        assert_eq!(picked, vec!["", "a", "a/b", "a/b/f"]);
        assert!(select(all, &["nope".into()], "s").is_err());
    }

    #[test]
    fn needed_chunks_cover_exactly_the_selected_ranges() {
        let id = crate::crypto::ChunkId([0; 32]);
        let chunks: Vec<ChunkRef> = (0..5).map(|_| ChunkRef { id, len: 10 }).collect();
        let mut f = entry("f", EntryKind::File);
        f.offset = 15;
        f.size = 10; // bytes 15..25 → chunks 1 and 2
        let (needed, offsets) = needed_chunks(&chunks, &[f]);
        assert_eq!(needed.len(), 2);
        assert_eq!(offsets, vec![10, 20]);
    }

    #[test]
    fn times_the_system_cannot_hold_do_not_panic() {
        for secs in [i64::MAX, i64::MIN] {
            let mut e = entry("f", EntryKind::File);
            e.mtime = secs;
            e.mtime_nsec = 999_999_999;
            let t = mtime(&e);
            assert!(t == UNIX_EPOCH || (t > UNIX_EPOCH) == (secs > 0), "{t:?}");
        }
    }

    #[test]
    fn times_before_the_epoch_keep_their_fraction() {
        let mut e = entry("f", EntryKind::File);
        (e.mtime, e.mtime_nsec) = (-2, 750_000_000); // stat's form of -1.25 s
        assert_eq!(mtime(&e), UNIX_EPOCH - Duration::from_millis(1250));
        (e.mtime, e.mtime_nsec) = (3, 250_000_000);
        assert_eq!(mtime(&e), UNIX_EPOCH + Duration::from_millis(3250));
    }

    #[test]
    fn sparse_writes_leave_zero_blocks_unallocated_and_keep_the_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let mut want = vec![0u8; 8 << 20];
        want[..10].copy_from_slice(b"head bytes");
        want[5 << 20] = 7; // one non-zero byte in the middle
        let n = want.len();
        want[n - 3..].copy_from_slice(b"end");
        let path = dir.path().join("f");
        let mut w = FileWriter::new(File::create(&path).unwrap(), true);
        // Odd-sized pieces, so blocks straddle writes.
        for piece in want.chunks(10_001) {
            w.write(piece).unwrap();
        }
        w.finish().unwrap();
        assert_eq!(fs::read(&path).unwrap(), want);
        let allocated = fs::metadata(&path).unwrap().blocks() * 512;
        assert!(allocated <= 64 * 1024, "{allocated} bytes allocated");

        // A file ending in zeros gets its full length.
        let tail = dir.path().join("g");
        let mut w = FileWriter::new(File::create(&tail).unwrap(), true);
        w.write(b"x").unwrap();
        w.write(&vec![0u8; 100_000]).unwrap();
        w.finish().unwrap();
        assert_eq!(fs::metadata(&tail).unwrap().len(), 100_001);
    }

    #[test]
    fn hard_links_need_an_earlier_file_and_follow_a_partial_selection() {
        let mut file = entry("a/data", EntryKind::File);
        (file.offset, file.size) = (0, 5);
        let link = |p: &str, t: &str| Entry {
            target: Some(PathBytes(t.as_bytes().to_vec())),
            ..entry(p, EntryKind::Hardlink)
        };
        let all = vec![
            entry("", EntryKind::Dir),
            entry("a", EntryKind::Dir),
            file.clone(),
            entry("b", EntryKind::Dir),
            link("b/one", "a/data"),
            link("b/two", "a/data"),
        ];
        parse_index("s1", &index(&all), 5).unwrap();
        // Before its file, to a directory, or to nothing: refused.
        for bad in [
            vec![entry("", EntryKind::Dir), link("x", "y"), file.clone()],
            vec![
                entry("", EntryKind::Dir),
                entry("d", EntryKind::Dir),
                link("x", "d"),
            ],
            vec![entry("", EntryKind::Dir), link("x", "nothing")],
        ] {
            let err = parse_index("s1", &index(&bad), 5).unwrap_err();
            assert!(matches!(err, Error::UnsafeRestore(_)), "{err}");
        }
        // Only b/ selected: b/one gets the data, b/two links to it.
        let picked = select(all, &["b".into()], "s1").unwrap();
        let one = picked.iter().find(|e| e.path.0 == b"b/one").unwrap();
        assert_eq!((one.kind, one.offset, one.size), (EntryKind::File, 0, 5));
        let two = picked.iter().find(|e| e.path.0 == b"b/two").unwrap();
        assert_eq!(two.kind, EntryKind::Hardlink);
        assert_eq!(two.target.as_ref().unwrap().0, b"b/one");
        assert!(picked.iter().all(|e| e.path.0 != b"a/data"));
    }

    #[test]
    fn an_index_of_an_older_release_still_parses() {
        // Written before hard links and sparse files were recorded.
        let old = br#"{"path":"","kind":"dir","mode":493,"uid":0,"gid":0,"mtime":1795161600,"mtime_nsec":0}
{"path":"data.bin","kind":"file","mode":416,"uid":70,"gid":70,"mtime":1795161600,"mtime_nsec":250000000,"size":524288}
{"path":"etc","kind":"dir","mode":493,"uid":0,"gid":0,"mtime":1795161600,"mtime_nsec":0}
{"path":"etc/current","kind":"symlink","mode":511,"uid":0,"gid":0,"mtime":1795161600,"mtime_nsec":0,"target":"app.conf"}
"#;
        let entries = parse_index("old", old, 524288).unwrap();
        assert_eq!(entries.len(), 4);
        assert!(entries.iter().all(|e| !e.sparse));
        assert_eq!(entries[1].size, 524288);
    }

    #[tokio::test]
    async fn a_snapshot_of_an_older_release_still_restores() {
        use crate::backend::{DynBackend, OpendalBackend};
        use crate::manifest::SnapshotKind;
        use crate::repo::backup::BackupOptions;

        let backend: DynBackend = Arc::new(OpendalBackend::memory());
        let repo = Repository::init(backend, b"pw", "test", crate::keys::tests::FAST)
            .await
            .unwrap();
        // The streams exactly as an older release wrote them: no `sparse`, no hard links.
        let index = br#"{"path":"","kind":"dir","mode":493,"uid":0,"gid":0,"mtime":1795161600,"mtime_nsec":0}
{"path":"a.txt","kind":"file","mode":416,"uid":0,"gid":0,"mtime":-2,"mtime_nsec":750000000,"size":5}
{"path":"d","kind":"dir","mode":448,"uid":0,"gid":0,"mtime":1795161600,"mtime_nsec":0}
{"path":"d/b.txt","kind":"file","mode":420,"uid":0,"gid":0,"mtime":1795161600,"mtime_nsec":0,"size":3,"offset":5}
{"path":"d/link","kind":"symlink","mode":511,"uid":0,"gid":0,"mtime":1795161600,"mtime_nsec":0,"target":"b.txt"}
"#;
        let opts = BackupOptions::new("old", "files", SnapshotKind::Manual, Source::Tree);
        let mut s = repo.start_backup(opts).await.unwrap();
        s.add_stream(
            DATA_STREAM,
            "application/octet-stream",
            io::Cursor::new(b"helloabc".to_vec()),
        )
        .await
        .unwrap();
        s.add_stream(
            INDEX_STREAM,
            INDEX_MEDIA_TYPE,
            io::Cursor::new(index.to_vec()),
        )
        .await
        .unwrap();
        let m = s.commit().await.unwrap();

        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out");
        let summary = restore_tree(&repo, &m, &target, &[], Arc::new(Progress::default()))
            .await
            .unwrap();
        assert_eq!((summary.files, summary.dirs, summary.symlinks), (2, 2, 1));
        assert_eq!(fs::read(target.join("a.txt")).unwrap(), b"hello");
        assert_eq!(fs::read(target.join("d/link")).unwrap(), b"abc");
        let a = fs::metadata(target.join("a.txt")).unwrap();
        assert_eq!(
            (a.mode() & 0o7777, a.mtime(), a.mtime_nsec()),
            (0o640, -2, 750_000_000)
        );
        assert_eq!(
            fs::metadata(target.join("d")).unwrap().mode() & 0o7777,
            0o700
        );
    }
}

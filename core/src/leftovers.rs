//! What killed processes leave behind on local disks, and when it is safe to remove it.
//!
//! Two kinds of leftovers: the `fs` backend's temporary files under `tmp/` (an object being
//! written when the process died) and a restore's hidden staging entry next to its target (a
//! partial file or tree, possibly hundreds of MB). Both are named after the process that made
//! them ([`crate::process::Holder::tag`]), so the next run of the same kind can tell a dead
//! process's leftovers from a live one's: it removes them when their process is certainly gone
//! (same host, boot and pid namespace) and, for temporary files, when they are older than
//! any live write could leave them. Another host's or container's live entries are never
//! touched.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime};

use crate::process::{self, Holder, Liveness};

/// Marks a restore's staging entry: `.<target name>.bulwark-partial-<tag>`.
pub const STAGING_MARK: &str = ".bulwark-partial-";

/// An empty temporary directory whose process we cannot judge is removed after this long
/// (its process recreates it on its next write if it is still running).
const EMPTY_DIR_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// A temporary file whose process cannot be judged (another host or container, an older
/// release) goes only after this long at least: far longer than one write may take with its
/// retries (a minute and a second per MiB an attempt), so a live writer stalled on a slow
/// export is never cut off.
const UNJUDGED_MIN_AGE: Duration = Duration::from_secs(3600);

/// This process's own directory under `tmp_root`, `<tag>.<n>` (one per opened backend, so a
/// backend closing never pulls the directory from under another one still writing), or
/// `tmp_root` itself where processes cannot be told apart.
pub fn temp_dir_for_this_process(tmp_root: &Path) -> PathBuf {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    match process::current() {
        Some(me) => tmp_root.join(format!(
            "{}.{}",
            me.tag(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        )),
        None => tmp_root.to_path_buf(),
    }
}

/// Removes from `tmp_root` the temporary files of processes that are gone, and any temporary
/// file older than `max_age` (an atomic write takes seconds; if one really is that slow, its
/// rename fails and the write reports an error, nothing is corrupted). `own` is this
/// backend's directory, left alone. Returns how many files were removed.
pub fn remove_abandoned_temp_files(
    tmp_root: &Path,
    own: &Path,
    max_age: Duration,
) -> io::Result<usize> {
    let mut removed = 0;
    let entries = match fs::read_dir(tmp_root) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        if path == own {
            continue;
        }
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue; // removed meanwhile
        };
        if !meta.is_dir() {
            // An older release wrote straight into `tmp/`: only age tells.
            if older_than(&meta, max_age.max(UNJUDGED_MIN_AGE)) && remove_file(&path)? {
                removed += 1;
            }
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        let holder = name
            .split_once('.')
            .and_then(|(tag, _)| Holder::parse_tag(tag));
        let liveness = holder.map_or(Liveness::Unknown, |h| h.liveness());
        if liveness == Liveness::Gone {
            removed += count_files(&path);
            remove_dir_all(&path)?;
            continue;
        }
        // A running holder's files are its writes in progress, whatever their age.
        let limit = match liveness {
            Liveness::Running => continue,
            _ => max_age.max(UNJUDGED_MIN_AGE),
        };
        let files = match fs::read_dir(&path) {
            Ok(f) => f,
            // Its process closed its backend (removing the directory) since the listing.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let mut left = 0;
        for file in files {
            let Ok(file) = file.map(|f| f.path()) else {
                continue;
            };
            match fs::symlink_metadata(&file) {
                Ok(m) if older_than(&m, limit) => {
                    if remove_file(&file)? {
                        removed += 1;
                    }
                }
                Ok(_) => left += 1,
                Err(_) => {}
            }
        }
        if left == 0 && liveness == Liveness::Unknown && older_than(&meta, EMPTY_DIR_MAX_AGE) {
            let _ = fs::remove_dir(&path); // fails harmlessly if a write just started
        }
    }
    Ok(removed)
}

/// The hidden staging path for restoring into `target` (a sibling, so the final rename stays on
/// one file system), named after this process.
pub fn staging_path(target: &Path) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "restore".into());
    let tag = match process::current() {
        Some(me) => me.tag(),
        None => format!("{}", std::process::id()),
    };
    let random = crate::crypto::random_hex(4);
    parent_of(target).join(format!(".{name}{STAGING_MARK}{tag}.{random}"))
}

/// The directory a target lives in (`.` for a bare name).
pub fn parent_of(target: &Path) -> &Path {
    target
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Removes staging entries in `dir` left by restores whose process is gone. Entries of live
/// processes, of other hosts or containers, and of older releases (not named after their
/// process) stay. Returns the paths removed.
pub fn remove_stale_staging(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with('.') {
            continue;
        }
        let Some((_, rest)) = name.rsplit_once(STAGING_MARK) else {
            continue;
        };
        let Some(holder) = rest
            .rsplit_once('.')
            .and_then(|(tag, _)| Holder::parse_tag(tag))
        else {
            continue;
        };
        if holder.liveness() != Liveness::Gone {
            continue;
        }
        let path = entry.path();
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => remove_dir_all(&path)?,
            Ok(_) => {
                remove_file(&path)?;
            }
            Err(_) => continue,
        }
        removed.push(path);
    }
    Ok(removed)
}

fn older_than(meta: &fs::Metadata, age: Duration) -> bool {
    meta.modified()
        .ok()
        .and_then(|m| SystemTime::now().duration_since(m).ok())
        .is_some_and(|a| a > age)
}

fn count_files(dir: &Path) -> usize {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| !e.file_type().is_dir())
        .count()
}

/// Removes a file; one already gone is fine (another cleaner got there first).
fn remove_file(path: &Path) -> io::Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("removing {}: {e}", path.display()),
        )),
    }
}

fn remove_dir_all(path: &Path) -> io::Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("removing {}: {e}", path.display()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tag of a process that has exited (same host, so it is certainly gone).
    fn dead_tag() -> String {
        let me = process::current().unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        Holder {
            scope: me.scope.clone(),
            pid,
            start: 1,
        }
        .tag()
    }

    #[test]
    fn temp_files_of_gone_processes_and_old_ones_go_live_ones_stay() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path();
        let own = temp_dir_for_this_process(tmp);
        fs::create_dir_all(&own).unwrap();
        fs::write(own.join("mine.x"), "in flight").unwrap();
        let dead = tmp.join(format!("{}.0", dead_tag()));
        fs::create_dir_all(&dead).unwrap();
        fs::write(dead.join("chunk.a"), "abandoned").unwrap();
        let elsewhere = tmp.join("0123456789ab-77-5.0");
        fs::create_dir_all(&elsewhere).unwrap();
        fs::write(elsewhere.join("chunk.b"), "another host, in flight").unwrap();
        fs::write(tmp.join("legacy.c"), "old release, fresh").unwrap();

        assert_eq!(
            remove_abandoned_temp_files(tmp, &own, Duration::from_secs(300)).unwrap(),
            1
        );
        assert!(!dead.exists());
        assert!(own.join("mine.x").exists());
        assert!(elsewhere.join("chunk.b").exists());
        assert!(tmp.join("legacy.c").exists());

        // A file of a process that cannot be judged goes once it is older than any write could
        // be (an hour), a running process's never: here another backend of this process.
        let sibling = tmp.join(format!("{}.999", crate::process::current().unwrap().tag()));
        fs::create_dir_all(&sibling).unwrap();
        fs::write(sibling.join("chunk.d"), "this process, in flight").unwrap();
        assert_eq!(
            remove_abandoned_temp_files(tmp, &own, Duration::ZERO).unwrap(),
            0,
            "younger than an hour counts as in flight whatever max_age says"
        );
        let two_hours_ago = SystemTime::now() - Duration::from_secs(7200);
        for f in [
            elsewhere.join("chunk.b"),
            tmp.join("legacy.c"),
            sibling.join("chunk.d"),
            own.join("mine.x"),
        ] {
            fs::File::options()
                .write(true)
                .open(&f)
                .unwrap()
                .set_modified(two_hours_ago)
                .unwrap();
        }
        assert_eq!(
            remove_abandoned_temp_files(tmp, &own, Duration::from_secs(300)).unwrap(),
            2
        );
        assert!(!elsewhere.join("chunk.b").exists() && !tmp.join("legacy.c").exists());
        assert!(own.join("mine.x").exists() && sibling.join("chunk.d").exists());
    }

    #[test]
    fn staging_entries_of_gone_processes_go_others_stay() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("db");
        let mine = staging_path(&target);
        fs::create_dir(&mine).unwrap();
        let dead_dir = dir
            .path()
            .join(format!(".db{STAGING_MARK}{}.0a0b", dead_tag()));
        fs::create_dir_all(dead_dir.join("base")).unwrap();
        fs::write(dead_dir.join("base/1"), "partial").unwrap();
        let dead_file = dir
            .path()
            .join(format!(".dump.sql{STAGING_MARK}{}.ffff", dead_tag()));
        fs::write(&dead_file, "partial").unwrap();
        let legacy = dir.path().join(format!(".db{STAGING_MARK}1234"));
        fs::write(&legacy, "older release").unwrap();

        let mut removed = remove_stale_staging(dir.path()).unwrap();
        removed.sort();
        let mut expected = vec![dead_dir, dead_file];
        expected.sort();
        assert_eq!(removed, expected);
        assert!(mine.exists() && legacy.exists());
    }
}

//! The data directory holds the state file (with sealed secrets, hashes of tokens, the catalog),
//! the secrets key, the CA key and the TLS key: nobody but the server's own user may read any of
//! it. Everything the server creates there is created private; at every start the directory is
//! also walked and whatever is looser (a copy restored with `cp -r`, a file made by hand, a state
//! file from before this rule) is tightened — directories to 0700 and files to 0600 at most —
//! with a log line naming each path, so the operator learns it was open.
//!
//! Every private file and directory is made here, so none is ever created with the process's
//! umask first and tightened after (a window in which another user could open it): the mode is
//! given to the `open`/`mkdir` that creates it.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[error("cannot make {path} private to the server's user: {source}; make the server's user own it (chown) or remove it")]
pub struct PermissionError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

/// Creates `path` and its missing parents owner-only (0700); an existing directory is left as
/// it is ([`make_private`] tightens it).
pub fn create_private_dir(path: &Path) -> std::io::Result<()> {
    if path.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
}

/// Creates `path` owner-only (0600) and opens it for writing; `None` when it exists already.
pub fn create_new_private(path: &Path) -> std::io::Result<Option<std::fs::File>> {
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(file) => Ok(Some(file)),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes `bytes` durably into a new owner-only file; an existing `path` is an error, never
/// overwritten.
pub fn write_new_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Writes `bytes` durably into `path`, owner-only when it is created; an existing file is
/// replaced in place.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Removes group and other permissions from `dir` and everything under it (symbolic links are
/// neither followed nor changed). Returns each path tightened, with its old and new mode.
pub fn make_private(dir: &Path) -> Result<Vec<(PathBuf, u32, u32)>, PermissionError> {
    let mut tightened = Vec::new();
    // The data directory itself may be a link (`/var/lib/bulwark` → a bigger disk): what it
    // points at is what must be private; links below it are not followed.
    let root = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let mut pending = vec![root];
    while let Some(path) = pending.pop() {
        let err = |source| PermissionError {
            path: path.clone(),
            source,
        };
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            // Gone since it was listed (a temporary file): nothing to protect.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(err(e)),
        };
        if meta.file_type().is_symlink() {
            continue;
        }
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            let private = mode & !0o077;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(private))
                .map_err(err)?;
            tracing::warn!(
                path = %path.display(),
                from = format!("{mode:04o}"),
                to = format!("{private:04o}"),
                "tightened the permissions of a data-directory path that others could read"
            );
            tightened.push((path.clone(), mode, private));
        }
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path).map_err(err)? {
                pending.push(entry.map_err(err)?.path());
            }
        }
    }
    Ok(tightened)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn looser_paths_are_tightened_and_reported_private_ones_left_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        std::fs::create_dir_all(dir.join("tls")).unwrap();
        let set = |p: &Path, m: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
        };
        std::fs::write(dir.join("bulwark.redb"), b"x").unwrap();
        std::fs::write(dir.join("secrets.key"), b"k").unwrap();
        std::fs::write(dir.join("tls/server.key"), b"k").unwrap();
        set(&dir, 0o755);
        set(&dir.join("bulwark.redb"), 0o644);
        set(&dir.join("secrets.key"), 0o600);
        set(&dir.join("tls"), 0o775);
        set(&dir.join("tls/server.key"), 0o640);
        // A link to a public file outside is neither followed nor changed.
        let outside = tmp.path().join("outside");
        std::fs::write(&outside, b"o").unwrap();
        set(&outside, 0o644);
        std::os::unix::fs::symlink(&outside, dir.join("link")).unwrap();

        let mut changed: Vec<_> = make_private(&dir)
            .unwrap()
            .into_iter()
            .map(|(p, from, to)| (p.strip_prefix(&dir).unwrap().to_path_buf(), from, to))
            .collect();
        changed.sort();
        let expect: Vec<(PathBuf, u32, u32)> = vec![
            ("".into(), 0o755, 0o700),
            ("bulwark.redb".into(), 0o644, 0o600),
            ("tls".into(), 0o775, 0o700),
            ("tls/server.key".into(), 0o640, 0o600),
        ];
        assert_eq!(changed, expect);
        assert_eq!(mode(&dir.join("secrets.key")), 0o600);
        assert_eq!(mode(&outside), 0o644);
        assert!(make_private(&dir).unwrap().is_empty(), "nothing left to do");
    }
}

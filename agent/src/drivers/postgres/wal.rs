//! `archive_command` and `restore_command`: one WAL file into the repository, one out.
//!
//! PostgreSQL reads exit codes only: 0 from `wal-push` means "safe to recycle", and for
//! `wal-fetch` any exit from 1 to 125 means "not in the archive", which ends recovery there.
//! That is right at the true end of the archive but silently loses data when a segment in
//! the middle is missing, so `fetch` tells the two apart: when later segments of the same
//! timeline exist, the archive has a hole, and the CLI exits with a code above 125, which
//! makes PostgreSQL abort recovery instead of promoting early.

use std::io::Write;
use std::path::Path;

use bulwark_core::repo::wal::{classify_wal_name, WalFileKind, WalPut};
use bulwark_core::repo::Repository;

use super::recovery::GAP_MARKER;
use crate::drivers::{DriverError, Result};

/// Archives the file at `path` (relative to the server's data directory, where
/// archive_command runs) under its own name.
pub async fn push(repo: &Repository, database: &str, path: &Path) -> Result<WalPut> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| {
            DriverError::invalid(
                database,
                "WAL path",
                format!("{} has no file name", path.display()),
            )
        })?
        .to_string();
    classify_wal_name(&name)?;
    let data = tokio::fs::read(path)
        .await
        .map_err(|e| DriverError::io(format!("reading WAL file {}", path.display()), e))?;
    Ok(repo.put_wal(database, &name, data).await?)
}

#[derive(Debug, PartialEq, Eq)]
pub enum Fetched {
    Restored {
        bytes: usize,
    },
    /// Not archived, and nothing after it either: the end of the archive.
    NotArchived,
    /// Not archived, but later segments of the same timeline are: a hole.
    Missing {
        later: String,
    },
}

/// Writes archived file `name` to `dest` (atomically: PostgreSQL must never read half a
/// segment).
pub async fn fetch(repo: &Repository, database: &str, name: &str, dest: &Path) -> Result<Fetched> {
    let kind = classify_wal_name(name)?;
    let Some(data) = repo.get_wal(database, name).await? else {
        if kind == WalFileKind::Segment {
            let later = repo
                .list_wal(database, &name[..8])
                .await?
                .into_iter()
                .find(|n| n.len() == 24 && n.as_str() > name);
            if let Some(later) = later {
                return Ok(Fetched::Missing { later });
            }
        }
        return Ok(Fetched::NotArchived);
    };
    let bytes = data.len();
    let dest = dest.to_path_buf();
    tokio::task::spawn_blocking(move || write_atomically(&dest, &data))
        .await
        .expect("WAL write task panicked")?;
    Ok(Fetched::Restored { bytes })
}

fn write_atomically(dest: &Path, data: &[u8]) -> Result<()> {
    let dir = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".bulwark-wal-")
        .tempfile_in(dir)
        .map_err(|e| {
            DriverError::io(format!("creating a temporary file in {}", dir.display()), e)
        })?;
    tmp.write_all(data)
        .and_then(|_| tmp.as_file().sync_all())
        .map_err(|e| DriverError::io(format!("writing {}", dest.display()), e))?;
    tmp.persist(dest)
        .map_err(|e| DriverError::io(format!("moving WAL into {}", dest.display()), e.error))?;
    Ok(())
}

/// The line `wal-fetch` prints for a hole; the restore command finds it in the server log.
pub fn gap_message(database: &str, name: &str, later: &str) -> String {
    format!(
        "{GAP_MARKER} {name} (database {database}) is not in the archive although later segment {later} is; \
         recovery must stop here — restore the segment or choose a target before it"
    )
}

//! Where a PostgreSQL database's archived WAL goes when its backups land on a storage the
//! control plane provisioned.
//!
//! A physical base backup restores only with the WAL written while it ran, and point-in-time
//! recovery needs the WAL after it: both must be in the repository the base went to. But
//! `archive_command` (`wal-push`) runs as the database server's user, outside the daemon, and the
//! storage and the workspace key reach this host only inside jobs. So before each physical
//! backup job the daemon binds the database to the job's storage:
//! `<state dir>/wal/<database>/target.json` (the storage and the workspace key), owned by the
//! data directory's owner, mode 0400, in a directory only that user can enter. `wal-push` notes
//! the last file it archived in `last-archived.json` beside it, which heartbeats report, so the
//! control plane can show how far a point-in-time restore reaches.
//!
//! The state directory itself is traversable (0711) for this; everything else in it stays
//! owner-only. Which repository `wal-push` / `wal-fetch` use: `--repo` (or BULWARK_REPO) if
//! given, else this binding, else agent.toml's `[repository]`.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use bulwark_core::api::{StorageTarget, WalArchived};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum WalTargetError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} cannot be read as a WAL binding ({source}); the next physical backup job rewrites it")]
    Unreadable {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot give {path} to uid {uid}, the owner of the data directory, so its archive_command could not read it ({source}); run the agent as root or as that user")]
    Owner {
        path: PathBuf,
        uid: u32,
        source: std::io::Error,
    },
    #[error("database id {0:?} cannot name a WAL binding: {1}")]
    BadDatabase(String, String),
}

type Result<T, E = WalTargetError> = std::result::Result<T, E>;

/// The repository a database's WAL goes to.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WalTarget {
    pub workspace_id: String,
    pub storage: StorageTarget,
    pub workspace_key: String,
    /// The job that wrote it.
    pub job_id: String,
    pub written_at: DateTime<Utc>,
}

impl std::fmt::Debug for WalTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WalTarget")
            .field("workspace_id", &self.workspace_id)
            .field("storage", &self.storage)
            .field("job_id", &self.job_id)
            .field("written_at", &self.written_at)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct LastArchived {
    file: String,
    archived_at: DateTime<Utc>,
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> WalTargetError {
    let path = path.to_path_buf();
    move |source| WalTargetError::Io { what, path, source }
}

fn database_dir(state: &Path, database: &str) -> Result<PathBuf> {
    bulwark_core::manifest::validate_database_id(database)
        .map_err(|e| WalTargetError::BadDatabase(database.to_string(), e.to_string()))?;
    Ok(state.join("wal").join(database))
}

/// Binds `database` to `target` for the server whose data directory is `data_dir` (its owner
/// gets the files). Rewritten atomically, so a `wal-push` running meanwhile reads the old or
/// the new binding, never half of one.
pub fn bind(state: &Path, database: &str, target: &WalTarget, data_dir: &Path) -> Result<()> {
    let uid = std::fs::metadata(data_dir)
        .map_err(io("reading the owner of data directory", data_dir))?
        .uid();
    let wal = state.join("wal");
    for dir in [state, &wal] {
        std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))
            .map_err(io("setting the mode of", dir))?;
    }
    let dir = database_dir(state, database)?;
    std::fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
        .map_err(io("setting the mode of", &dir))?;
    give(&dir, uid)?;
    let path = dir.join("target.json");
    let tmp = dir.join(".target.json.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o400)
        .open(&tmp)
        .map_err(io("creating", &tmp))?;
    f.write_all(&serde_json::to_vec_pretty(target).expect("serialisable"))
        .and_then(|_| f.sync_all())
        .map_err(io("writing", &tmp))?;
    give(&tmp, uid)?;
    std::fs::rename(&tmp, &path).map_err(io("replacing", &path))
}

fn give(path: &Path, uid: u32) -> Result<()> {
    let meta = std::fs::metadata(path).map_err(io("reading", path))?;
    if meta.uid() == uid {
        return Ok(());
    }
    std::os::unix::fs::chown(path, Some(uid), None).map_err(|source| WalTargetError::Owner {
        path: path.to_path_buf(),
        uid,
        source,
    })
}

/// Removes the binding of `database` (a drill's, once its scratch server is gone).
pub fn unbind(state: &Path, database: &str) -> Result<()> {
    let dir = database_dir(state, database)?;
    match std::fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io("removing", &dir)(e)),
        _ => Ok(()),
    }
}

/// The binding of `database`, if a physical backup job made one.
pub fn target(state: &Path, database: &str) -> Result<Option<WalTarget>> {
    let path = database_dir(state, database)?.join("target.json");
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        // Not bound, or a state dir this user cannot enter: the configured repository applies.
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
            ) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(io("reading", &path)(e)),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| WalTargetError::Unreadable { path, source })
}

/// Notes that `file` was archived for `database` (by `wal-push`, after the file is durable).
pub fn record_archived(state: &Path, database: &str, file: &str, at: DateTime<Utc>) -> Result<()> {
    let dir = database_dir(state, database)?;
    let path = dir.join("last-archived.json");
    let tmp = dir.join(format!(".last-archived.{}.tmp", std::process::id()));
    let record = LastArchived {
        file: file.to_string(),
        archived_at: at,
    };
    std::fs::write(&tmp, serde_json::to_vec(&record).expect("serialisable"))
        .map_err(io("writing", &tmp))?;
    std::fs::rename(&tmp, &path).map_err(io("replacing", &path))
}

/// The last archived file of every bound database, for the heartbeat. Unreadable entries are
/// skipped (a heartbeat must not fail over them).
pub fn all_archived(state: &Path) -> Vec<WalArchived> {
    let Ok(entries) = std::fs::read_dir(state.join("wal")) else {
        return Vec::new();
    };
    let mut out: Vec<WalArchived> = entries
        .flatten()
        .filter_map(|e| {
            let database_id = e.file_name().to_str()?.to_string();
            let bytes = std::fs::read(e.path().join("last-archived.json")).ok()?;
            let last: LastArchived = serde_json::from_slice(&bytes).ok()?;
            Some(WalArchived {
                database_id,
                last_file: last.file,
                archived_at: last.archived_at,
            })
        })
        .collect();
    out.sort_by(|a, b| a.database_id.cmp(&b.database_id));
    out
}

#[cfg(test)]
mod tests {
    use bulwark_core::api::StorageAccess;

    use super::*;

    fn target() -> WalTarget {
        WalTarget {
            workspace_id: "acme".into(),
            storage: StorageTarget {
                storage_id: "bst_1".into(),
                pve_storage: "bulwark-acme".into(),
                access: StorageAccess::Local {
                    path: "/srv/b".into(),
                },
            },
            workspace_key: "k".repeat(43),
            job_id: "job_1".into(),
            written_at: Utc::now(),
        }
    }

    #[test]
    fn a_binding_is_private_rewritten_whole_and_reported_with_its_last_file() {
        let tmp = tempfile::tempdir().unwrap();
        let (state, data) = (tmp.path().join("state"), tmp.path().join("data"));
        std::fs::create_dir_all(&data).unwrap();
        assert_eq!(super::target(&state, "orders").unwrap(), None);
        let t = target();
        bind(&state, "orders", &t, &data).unwrap();
        bind(&state, "orders", &t, &data).unwrap();
        assert_eq!(super::target(&state, "orders").unwrap(), Some(t));
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&state), 0o711);
        assert_eq!(mode(&state.join("wal/orders")), 0o700);
        assert_eq!(mode(&state.join("wal/orders/target.json")), 0o400);
        assert!(all_archived(&state).is_empty());

        let at = Utc::now();
        record_archived(&state, "orders", "000000010000000000000003", at).unwrap();
        let seen = all_archived(&state);
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].database_id, "orders");
        assert_eq!(seen[0].last_file, "000000010000000000000003");
        assert_eq!(seen[0].archived_at, at);

        std::fs::remove_file(state.join("wal/orders/target.json")).unwrap();
        std::fs::write(state.join("wal/orders/target.json"), b"{").unwrap();
        let e = super::target(&state, "orders").unwrap_err().to_string();
        assert!(e.contains("target.json") && e.contains("rewrites"), "{e}");
        assert!(bind(&state, "../x", &target(), &data).is_err());
    }
}

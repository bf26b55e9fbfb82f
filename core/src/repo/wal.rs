//! The write-ahead-log archive: whole WAL files beside the snapshots, for point-in-time
//! recovery.
//!
//! PostgreSQL calls `archive_command` once per file and treats exit 0 as "this file is safe,
//! recycle it", so [`Repository::put_wal`] returns only once the object and its directory entry
//! are durable. The server may call it again for a file it already archived (after a crash
//! between our exit and its bookkeeping); that must succeed when the bytes are the same and
//! fail loudly when they differ, because a different file under the same name means two
//! clusters (or two timelines gone wrong) share one archive. WAL files are stored as single
//! sealed blobs, not chunks: segments never repeat, and recovery wants one read per file.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{with_codec, Repository};
use crate::blob::BlobKind;
use crate::error::{Error, Result};
use crate::format;
use crate::manifest::validate_database_id;

/// What `put_wal` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalPut {
    Stored,
    /// The same bytes were already archived under this name.
    AlreadyArchived,
}

/// What [`Repository::expire_wal`] did for one database.
#[derive(Debug, Clone, Serialize)]
pub struct WalExpiry {
    pub database_id: String,
    /// The WAL segment the oldest kept base backup starts in.
    pub oldest_base_start: Option<String>,
    /// Why nothing was deleted, when that was a decision.
    pub kept_because: Option<String>,
    pub deleted_files: usize,
    pub deleted_bytes: u64,
}

/// Whether WAL file `name` lies wholly before segment `start` (and on its timeline or an
/// earlier one): segments, partial segments and backup labels by position; never a history
/// file or anything unrecognised.
fn wal_before(name: &str, start: &str) -> bool {
    let positional = matches!(
        classify_wal_name(name),
        Ok(WalFileKind::Segment | WalFileKind::Partial | WalFileKind::BackupLabel)
    );
    positional && name[..8] <= start[..8] && name[8..24] < start[8..24]
}

/// The kinds of file PostgreSQL hands to `archive_command` / asks of `restore_command`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalFileKind {
    /// `000000010000000A000000FF`: timeline, log, segment.
    Segment,
    /// `00000002.history`: how a timeline branched off its parent.
    History,
    /// `000000010000000A000000FF.00000028.backup`: a base backup's label.
    BackupLabel,
    /// `000000010000000A000000FF.partial`: the last segment of a timeline left at promotion.
    Partial,
}

/// Checks a WAL file name and says what it is. Names become object paths, so anything else is
/// refused.
pub fn classify_wal_name(name: &str) -> Result<WalFileKind> {
    let hex = |s: &str| !s.is_empty() && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'A'..=b'F'));
    let kind = match name.len() {
        24 if hex(name) => Some(WalFileKind::Segment),
        16 if name.ends_with(".history") && hex(&name[..8]) => Some(WalFileKind::History),
        32 if name.ends_with(".partial") && hex(&name[..24]) => Some(WalFileKind::Partial),
        40 if name.ends_with(".backup")
            && hex(&name[..24])
            && &name[24..25] == "."
            && hex(&name[25..33]) =>
        {
            Some(WalFileKind::BackupLabel)
        }
        _ => None,
    };
    kind.ok_or_else(|| {
        Error::invalid(
            "WAL file name",
            format!("{name:?} is not a WAL segment, timeline history, backup label or partial segment name"),
        )
    })
}

/// `wal/<database>/<timeline>/<name>`; the timeline is the first 8 hex digits of the name.
pub fn wal_path(database_id: &str, name: &str) -> Result<String> {
    validate_database_id(database_id)?;
    classify_wal_name(name)?;
    Ok(format!(
        "{}{database_id}/{}/{name}",
        format::WAL_DIR,
        &name[..8]
    ))
}

impl Repository {
    /// Archives one WAL file durably. Idempotent for identical bytes; a different file under
    /// an archived name is [`Error::Conflict`].
    pub async fn put_wal(&self, database_id: &str, name: &str, data: Vec<u8>) -> Result<WalPut> {
        let path = wal_path(database_id, name)?;
        if let Some(existing) = self.get_wal(database_id, name).await? {
            if existing == data {
                return Ok(WalPut::AlreadyArchived);
            }
            return Err(Error::Conflict {
                object: path,
                reason: format!(
                    "the archived file has {} bytes, the one offered has {} and differs; \
                     two clusters may be archiving into one database id — check the \
                     archive_command of every server using {database_id}",
                    existing.len(),
                    data.len()
                ),
            });
        }
        let keys = self.keys.clone();
        let aad = path.clone();
        let blob = crate::workers::run(move || {
            with_codec(|c| {
                c.seal_at(
                    format::WAL_ZSTD_LEVEL,
                    BlobKind::Wal,
                    &keys.wal_cipher,
                    aad.as_bytes(),
                    &data,
                )
            })
        })
        .await;
        self.backend().write(&path, blob).await?;
        self.backend().make_durable(&path).await?;
        Ok(WalPut::Stored)
    }

    /// An archived WAL file's bytes, authenticated, or `None` if it was never archived.
    pub async fn get_wal(&self, database_id: &str, name: &str) -> Result<Option<Vec<u8>>> {
        let path = wal_path(database_id, name)?;
        let Some(blob) = self.backend().read(&path).await? else {
            return Ok(None);
        };
        let keys = self.keys.clone();
        crate::workers::run(move || {
            let mut plain = Vec::new();
            with_codec(|c| {
                c.open(
                    BlobKind::Wal,
                    &keys.wal_cipher,
                    path.as_bytes(),
                    blob,
                    format::MAX_WAL_LEN,
                    &mut plain,
                )
            })
            .map_err(|e| Error::corrupt(format!("archived WAL file {path}"), e.to_string()))?;
            Ok(Some(plain))
        })
        .await
    }

    /// Deletes archived WAL that no retained base backup can use: files of every database under
    /// `wal/` whose position is before the start of that database's oldest physical snapshot
    /// (on its timeline or an earlier one), so the point-in-time window is what retention keeps.
    /// Timeline history files stay (they are tiny and recovery may need any of them). A
    /// database with no physical snapshot, or with a manifest that cannot be read (it might be
    /// the oldest base), keeps all of its WAL.
    pub async fn expire_wal(&self, dry_run: bool) -> Result<Vec<WalExpiry>> {
        let list = self.list_snapshots(None).await?;
        let mut files: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut each = |path: &str| {
            if let Some((db, _)) = path
                .strip_prefix(format::WAL_DIR)
                .and_then(|rest| rest.split_once('/'))
            {
                files
                    .entry(db.to_string())
                    .or_default()
                    .push(path.to_string());
            }
        };
        self.backend().list_each(format::WAL_DIR, &mut each).await?;
        let mut out = Vec::new();
        for (database_id, paths) in files {
            let damaged = list.damaged.iter().any(|(path, _)| {
                path.strip_prefix(format::SNAPSHOTS_DIR)
                    .is_some_and(|rest| rest.starts_with(&format!("{database_id}/")))
            });
            let oldest = list
                .manifests
                .iter()
                .filter(|m| m.database_id == database_id)
                .filter_map(|m| m.details.get("start_wal"))
                .filter(|w| matches!(classify_wal_name(w), Ok(WalFileKind::Segment)))
                .min_by_key(|w| &w[8..24]);
            let mut expiry = WalExpiry {
                database_id: database_id.clone(),
                oldest_base_start: oldest.cloned(),
                kept_because: None,
                deleted_files: 0,
                deleted_bytes: 0,
            };
            match (damaged, oldest) {
                (true, _) => {
                    expiry.kept_because = Some("a snapshot manifest of this database cannot be read; it might be the oldest base backup".into())
                }
                (false, None) => {
                    expiry.kept_because = Some("no physical base backup of this database is kept".into())
                }
                (false, Some(start)) => {
                    for path in paths {
                        let name = path.rsplit('/').next().unwrap_or_default();
                        if !wal_before(name, start) {
                            continue;
                        }
                        let size = self.backend().stat(&path).await?.map_or(0, |i| i.size);
                        if !dry_run {
                            self.backend().delete(&path).await?;
                        }
                        expiry.deleted_files += 1;
                        expiry.deleted_bytes += size;
                    }
                }
            }
            out.push(expiry);
        }
        Ok(out)
    }

    /// Names of the archived WAL files of one database and timeline (8 hex digits), sorted.
    pub async fn list_wal(&self, database_id: &str, timeline: &str) -> Result<Vec<String>> {
        validate_database_id(database_id)?;
        if timeline.len() != 8 || !timeline.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::invalid(
                "timeline",
                format!("{timeline:?} is not 8 hex digits"),
            ));
        }
        let prefix = format!("{}{database_id}/{timeline}/", format::WAL_DIR);
        let mut names: Vec<String> = self
            .backend()
            .list(&prefix)
            .await?
            .into_iter()
            .filter_map(|p| p.rsplit('/').next().map(str::to_string))
            .filter(|n| classify_wal_name(n).is_ok())
            .collect();
        names.sort();
        Ok(names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wal_names_are_classified_and_everything_else_refused() {
        use WalFileKind::*;
        for (name, kind) in [
            ("000000010000000A000000FF", Segment),
            ("00000002.history", History),
            ("000000010000000000000002.00000028.backup", BackupLabel),
            ("000000010000000000000005.partial", Partial),
        ] {
            assert_eq!(classify_wal_name(name).unwrap(), kind, "{name}");
        }
        for bad in [
            "",
            "../../config",
            "000000010000000a000000ff",
            "00000001000000000000000",
            "0000000100000000000000050",
            "00000002.histor",
            "000000010000000000000002.0000002.backup",
        ] {
            assert!(classify_wal_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            wal_path("orders", "00000002.history").unwrap(),
            "wal/orders/00000002/00000002.history"
        );
    }

    #[test]
    fn only_wal_before_the_oldest_base_expires() {
        let start = "00000002000000000000000A";
        assert!(
            wal_before("000000010000000000000009", start),
            "older timeline, earlier"
        );
        assert!(wal_before("000000020000000000000009", start));
        assert!(wal_before("000000020000000000000009.partial", start));
        assert!(wal_before(
            "000000020000000000000009.00000028.backup",
            start
        ));
        assert!(
            !wal_before("00000002000000000000000A", start),
            "the base's own segment"
        );
        assert!(!wal_before(
            "00000002000000000000000A.00000028.backup",
            start
        ));
        assert!(
            !wal_before("00000003000000000000000A", start),
            "later timeline"
        );
        assert!(
            !wal_before("000000030000000000000009", start),
            "later timeline, kept"
        );
        assert!(!wal_before("00000001.history", start), "history files stay");
    }
}

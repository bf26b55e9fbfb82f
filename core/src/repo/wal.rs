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
}

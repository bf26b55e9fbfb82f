//! The manifest: what one backup is, and which chunks hold it.
//!
//! A manifest is JSON, zstd-compressed and sealed as a [`BlobKind::Manifest`] blob under
//! `snapshots/<database-id>/<snapshot-name>`; the path is part of the associated data, so a
//! manifest cannot be passed off as another snapshot's. Streams are ordered chunk lists; a
//! directory backup has a `data` stream (file contents, concatenated) and an `index` stream
//! (one JSON line per entry, see [`crate::archive`]).
//!
//! [`BlobKind::Manifest`]: crate::blob::BlobKind::Manifest

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::crypto::{random_hex, ChunkId};
use crate::error::{Error, Result};

pub const MANIFEST_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum SnapshotKind {
    Manual,
    Automatic,
    PreRestore,
}

impl SnapshotKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            SnapshotKind::Manual => "manual",
            SnapshotKind::Automatic => "automatic",
            SnapshotKind::PreRestore => "pre-restore",
        }
    }
}

impl fmt::Display for SnapshotKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SnapshotKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "manual" => Ok(SnapshotKind::Manual),
            "automatic" => Ok(SnapshotKind::Automatic),
            "pre-restore" => Ok(SnapshotKind::PreRestore),
            _ => Err(Error::invalid(
                "snapshot kind",
                format!("{s:?}; expected manual, automatic or pre-restore"),
            )),
        }
    }
}

/// What the snapshot's streams hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// One byte stream (a dump read from stdin or a file).
    Stream,
    /// A directory tree: `data` and `index` streams.
    Tree,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    pub id: ChunkId,
    pub len: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stream {
    pub name: String,
    pub media_type: String,
    pub size: u64,
    pub chunks: Vec<ChunkRef>,
}

/// What writing the snapshot cost, for `snapshots` and the catalog.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Bytes of all streams, as the database produced them.
    pub logical_bytes: u64,
    pub chunks: u64,
    /// Chunks this backup had to store (all others already existed).
    pub new_chunks: u64,
    /// Plaintext bytes of the new chunks.
    pub new_logical_bytes: u64,
    /// Bytes the new chunks take on storage (compressed, encrypted).
    pub new_stored_bytes: u64,
}

impl Stats {
    /// Logical bytes per newly stored logical byte: 1.0 for a first backup, large for a
    /// backup that found almost everything already stored.
    pub fn dedup_ratio(&self) -> f64 {
        if self.new_logical_bytes == 0 {
            if self.logical_bytes == 0 {
                1.0
            } else {
                f64::INFINITY
            }
        } else {
            self.logical_bytes as f64 / self.new_logical_bytes as f64
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    pub name: String,
    pub database_id: String,
    /// Database technology (`postgresql`, `sqlite`, …) or `stream` / `files`.
    pub database_type: String,
    pub kind: SnapshotKind,
    pub source: Source,
    pub started: DateTime<Utc>,
    pub finished: DateTime<Utc>,
    pub hostname: String,
    pub tool_versions: BTreeMap<String, String>,
    pub tags: BTreeMap<String, String>,
    /// Facts the database driver recorded (for a physical PostgreSQL backup: `method`,
    /// `start_lsn`, `stop_lsn`, `timeline`, `start_wal`, `server_version`). Written by the
    /// agent, read back by its restore; absent in manifests that have none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub details: BTreeMap<String, String>,
    pub streams: Vec<Stream>,
    pub stats: Stats,
}

impl Manifest {
    pub fn stream(&self, name: &str) -> Option<&Stream> {
        self.streams.iter().find(|s| s.name == name)
    }

    pub fn path(&self) -> String {
        crate::format::snapshot_path(&self.database_id, &self.name)
    }
}

/// `backup-<UTC yyyymmddThhmmssZ>-<kind>-<8 hex>`: sorts by time, unique without coordination.
pub fn snapshot_name(time: DateTime<Utc>, kind: SnapshotKind) -> String {
    format!(
        "backup-{}-{}-{}",
        time.format("%Y%m%dT%H%M%SZ"),
        kind,
        random_hex(4)
    )
}

/// Checks a snapshot name before it is used as part of an object path.
pub fn validate_snapshot_name(name: &str) -> Result<()> {
    let ok = name.starts_with("backup-")
        && name.len() <= 100
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "snapshot name",
            format!("{name:?} is not of the form backup-<time>-<kind>-<id>"),
        ))
    }
}

/// Database ids become object path components, so they are restricted to a safe alphabet.
pub fn validate_database_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "database id",
            format!("{id:?}: use 1-128 letters, digits, '.', '_' or '-', not starting with '.'"),
        ))
    }
}

/// Tags are `key=value` with a non-empty key.
pub fn parse_tag(s: &str) -> Result<(String, String)> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(Error::invalid("tag", format!("{s:?} is not key=value"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_design_and_ids_are_checked() {
        let t = DateTime::parse_from_rfc3339("2026-11-23T09:15:02Z")
            .unwrap()
            .to_utc();
        let name = snapshot_name(t, SnapshotKind::PreRestore);
        assert!(
            name.starts_with("backup-20261123T091502Z-pre-restore-"),
            "{name}"
        );
        validate_snapshot_name(&name).unwrap();
        assert!(validate_snapshot_name("backup-../../x").is_err());
        validate_database_id("orders-db_1.prod").unwrap();
        for bad in ["", "..", "a/b", ".hidden", "x y"] {
            assert!(validate_database_id(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_tag("env=prod").unwrap(),
            ("env".into(), "prod".into())
        );
        assert!(parse_tag("=x").is_err());
    }
}

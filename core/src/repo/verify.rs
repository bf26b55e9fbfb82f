//! Verify: prove that snapshots can be restored, without restoring them — and quarantine what
//! cannot be.
//!
//! Every chunk a snapshot references is read, authenticated, decompressed and re-hashed; a
//! chunk shared by many snapshots is checked once. Problems are collected, not raised, so one
//! run reports every damaged snapshot and every bad object, and a chunk that cannot even be
//! read (a storage error) is reported and skipped rather than ending the run.
//!
//! Why quarantine: backups learn which chunks are stored from the `chunks/` listing, so a
//! damaged chunk left in place is "reused" by every later backup of the same data, and each of
//! those snapshots is as unrestorable as the first. Verify therefore moves a damaged chunk
//! object to `quarantine/<id>-<time>` (a copy first, then the delete: evidence is never
//! destroyed). The chunk is then simply absent, the next backup of the same data writes a good
//! copy under the same id, and every snapshot that references that id — old and new — is
//! restorable again. A *missing* chunk heals the same way with nothing to move.
//!
//! Only chunk objects are quarantined. A damaged manifest stays where it is: it may be the only
//! reference to its chunks, and GC refuses to delete anything while one exists.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures::StreamExt;
use serde::Serialize;

use super::backup::Progress;
use super::read::{decode_chunk, DecodeError};
use super::Repository;
use crate::crypto::ChunkId;
use crate::error::Result;
use crate::format;
use crate::manifest::{ChunkRef, Manifest};

#[derive(Debug, Clone, Copy)]
pub struct VerifyOptions {
    /// Move damaged chunk objects to `quarantine/` so that the next backup stores them again.
    pub quarantine: bool,
    /// Check only one part of the chunks (all of them when `None`).
    pub subset: Option<Subset>,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions {
            quarantine: true,
            subset: None,
        }
    }
}

/// Part `part` of `of` equal parts of the chunks, by chunk id (keyed hashes, so the parts are
/// even and fixed): verifying parts 0, 1, … `of - 1` in turn reads every chunk once, the way
/// restic's `--read-data-subset n/t` and PBS's verify jobs spread a large repository's reads
/// over a period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Subset {
    pub part: u32,
    pub of: u32,
}

impl Subset {
    pub fn new(part: u32, of: u32) -> Result<Subset> {
        if of == 0 || part >= of {
            return Err(crate::error::Error::invalid(
                "verify subset",
                format!("part {part} of {of}: give 0 <= part < of, of >= 1"),
            ));
        }
        Ok(Subset { part, of })
    }

    pub fn contains(&self, id: &ChunkId) -> bool {
        let n = u64::from_le_bytes(id.0[..8].try_into().expect("8 bytes"));
        n % u64::from(self.of) == u64::from(self.part)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SnapshotVerification {
    pub database_id: String,
    pub name: String,
    pub chunks: u64,
    pub logical_bytes: u64,
    /// Empty when the snapshot is intact.
    pub problems: Vec<String>,
    /// How many of `problems` are chunks the storage failed to return (not known damage).
    pub unreadable_chunks: u64,
}

/// What is wrong with one chunk that at least one verified snapshot references.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChunkProblem {
    /// The object fails authentication or decoding, or does not hash to its id.
    Damaged,
    /// No object under the chunk's name.
    Missing,
    /// The object is intact but a manifest claims another length for it (the manifest is wrong).
    LengthMismatch,
    /// The storage failed to return it (after retries): nothing is known about its contents.
    Unreadable,
    /// Its header names a format this build does not know (a newer release's, or a damaged
    /// header): reported, never quarantined.
    Unsupported,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChunkFinding {
    /// `chunks/<xx>/<id>`.
    pub object: String,
    pub problem: ChunkProblem,
    pub reason: String,
    /// Where the damaged object was moved, when it was.
    pub quarantined_to: Option<String>,
    /// Names of the verified snapshots that reference the chunk.
    pub snapshots: Vec<String>,
}

impl ChunkFinding {
    /// True when the next backup of the same data writes this chunk again (it is absent).
    pub fn heals_on_next_backup(&self) -> bool {
        self.problem == ChunkProblem::Missing || self.quarantined_to.is_some()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// Chunks read and checked (each once, however many snapshots share it).
    pub checked_chunks: u64,
    /// The part of the chunks this run checked, when not all.
    pub subset: Option<Subset>,
    pub snapshots: Vec<SnapshotVerification>,
    /// Every chunk with a problem, in object-name order.
    pub chunks: Vec<ChunkFinding>,
}

impl VerifyReport {
    pub fn quarantined(&self) -> usize {
        self.chunks
            .iter()
            .filter(|c| c.quarantined_to.is_some())
            .count()
    }

    /// True when some problem is damage (as opposed to the storage failing to answer).
    pub fn found_damage(&self) -> bool {
        self.snapshots
            .iter()
            .any(|s| s.problems.len() as u64 > s.unreadable_chunks)
    }
}

/// The outcome of checking one chunk.
enum Checked {
    Intact,
    Problem(ChunkProblem, String),
}

impl Repository {
    pub async fn verify(
        &self,
        manifests: &[Manifest],
        opts: VerifyOptions,
        progress: Arc<Progress>,
    ) -> Result<VerifyReport> {
        let mut unique: HashMap<ChunkId, ChunkRef> = HashMap::new();
        for m in manifests {
            for s in &m.streams {
                for c in &s.chunks {
                    if opts.subset.is_none_or(|sub| sub.contains(&c.id)) {
                        unique.entry(c.id).or_insert_with(|| c.clone());
                    }
                }
            }
        }
        let checked_chunks = unique.len() as u64;
        let parallel = 2 * std::thread::available_parallelism().map_or(2, |n| n.get());
        let results: Vec<(ChunkRef, Checked)> = futures::stream::iter(unique.into_values())
            .map(|chunk| {
                let progress = progress.clone();
                async move {
                    let checked = self.check_chunk(&chunk).await;
                    progress
                        .bytes_read
                        .fetch_add(chunk.len as u64, Ordering::Relaxed);
                    (chunk, checked)
                }
            })
            .buffer_unordered(parallel)
            .collect()
            .await;

        let bad: Vec<(ChunkRef, ChunkProblem, String)> = results
            .into_iter()
            .filter_map(|(chunk, checked)| match checked {
                Checked::Intact => None,
                Checked::Problem(problem, reason) => Some((chunk, problem, reason)),
            })
            .collect();
        // Which snapshots use each bad chunk: looked up for the (few) bad ones only, so that
        // verifying a large repository does not hold a list of snapshots per chunk.
        let mut users: HashMap<ChunkId, Vec<String>> =
            bad.iter().map(|(c, _, _)| (c.id, Vec::new())).collect();
        for m in manifests {
            for c in m.streams.iter().flat_map(|s| &s.chunks) {
                if let Some(names) = users.get_mut(&c.id) {
                    if names.last() != Some(&m.name) {
                        names.push(m.name.clone());
                    }
                }
            }
        }

        let mut findings: BTreeMap<String, ChunkFinding> = BTreeMap::new();
        let mut problems: HashMap<ChunkId, (String, bool)> = HashMap::new();
        for (chunk, problem, reason) in bad {
            let object = chunk.id.path();
            let mut quarantined_to = None;
            let mut reason = reason;
            if problem == ChunkProblem::Damaged && opts.quarantine {
                match self.quarantine_chunk(&chunk).await {
                    Ok(to) => quarantined_to = to,
                    // The damage is still reported; the failure to move it is part of it.
                    Err(e) => reason = format!("{reason} (could not move it to quarantine: {e})"),
                }
            }
            let text = match problem {
                ChunkProblem::Missing => format!("chunk {object} is missing"),
                ChunkProblem::Damaged => format!("chunk {object} is damaged: {reason}"),
                ChunkProblem::LengthMismatch => {
                    format!("chunk {object} does not match the manifest: {reason}")
                }
                ChunkProblem::Unreadable => format!("chunk {object} could not be read: {reason}"),
                ChunkProblem::Unsupported => format!(
                    "chunk {object} is in a format this build cannot check ({reason}); left in place: upgrade bulwark, or if no newer release wrote it, its header is damaged"
                ),
            };
            problems.insert(chunk.id, (text, problem == ChunkProblem::Unreadable));
            findings.insert(
                object.clone(),
                ChunkFinding {
                    object,
                    problem,
                    reason,
                    quarantined_to,
                    snapshots: users.remove(&chunk.id).unwrap_or_default(),
                },
            );
        }

        let snapshots = manifests
            .iter()
            .map(|m| {
                let mut found = Vec::new();
                let mut unreadable_chunks = 0;
                for s in &m.streams {
                    let sum: u64 = s.chunks.iter().map(|c| c.len as u64).sum();
                    if sum != s.size {
                        found.push(format!(
                            "stream {} has {sum} bytes in chunks but claims {}",
                            s.name, s.size
                        ));
                    }
                    for c in &s.chunks {
                        if let Some((problem, unreadable)) = problems.get(&c.id) {
                            if !found.contains(problem) {
                                found.push(problem.clone());
                                unreadable_chunks += u64::from(*unreadable);
                            }
                        }
                    }
                }
                SnapshotVerification {
                    database_id: m.database_id.clone(),
                    name: m.name.clone(),
                    chunks: m.streams.iter().map(|s| s.chunks.len() as u64).sum(),
                    logical_bytes: m.stats.logical_bytes,
                    problems: found,
                    unreadable_chunks,
                }
            })
            .collect();
        Ok(VerifyReport {
            checked_chunks,
            subset: opts.subset,
            snapshots,
            chunks: findings.into_values().collect(),
        })
    }

    async fn check_chunk(&self, chunk: &ChunkRef) -> Checked {
        let blob = match self.backend().read(&chunk.id.path()).await {
            Ok(Some(blob)) => blob,
            Ok(None) => return Checked::Problem(ChunkProblem::Missing, "not stored".into()),
            Err(e) => return Checked::Problem(ChunkProblem::Unreadable, e.to_string()),
        };
        match self.decode_on_workers(chunk, blob).await {
            Ok(()) => Checked::Intact,
            Err(e @ DecodeError::Damaged(_)) => Checked::Problem(ChunkProblem::Damaged, e.reason()),
            Err(e @ DecodeError::WrongLength { .. }) => {
                Checked::Problem(ChunkProblem::LengthMismatch, e.reason())
            }
            Err(e @ DecodeError::Unsupported(_)) => {
                Checked::Problem(ChunkProblem::Unsupported, e.reason())
            }
        }
    }

    async fn decode_on_workers(
        &self,
        chunk: &ChunkRef,
        blob: Vec<u8>,
    ) -> std::result::Result<(), DecodeError> {
        let (repo, chunk) = (self.clone(), chunk.clone());
        crate::workers::run(move || decode_chunk(repo.keys(), &chunk, blob).map(|_| ())).await
    }

    /// Moves a damaged chunk object to `quarantine/`: reads it again and re-checks it (a backup
    /// may have stored a good copy since it was found damaged), writes the copy and makes it
    /// durable, and only then deletes the original. Returns where it went, or `None` when there
    /// was nothing damaged left to move.
    async fn quarantine_chunk(&self, chunk: &ChunkRef) -> Result<Option<String>> {
        let backend = self.backend();
        let path = chunk.id.path();
        let Some(blob) = backend.read(&path).await? else {
            return Ok(None);
        };
        if let Err(DecodeError::Damaged(_)) = self.decode_on_workers(chunk, blob.clone()).await {
            let to = format::quarantine_path(&chunk.id.to_hex(), chrono::Utc::now());
            backend.write(&to, blob.clone()).await?;
            backend.make_durable(&to).await?;
            // A backup writes a fresh copy of a chunk whose object is too short to be a blob, so
            // one may have landed since the re-check: delete only the bytes that were copied.
            if backend.read(&path).await?.as_deref() != Some(&blob[..]) {
                return Ok(None);
            }
            backend.delete(&path).await?;
            tracing::debug!(chunk = %path, quarantine = %to, "damaged chunk moved to quarantine");
            return Ok(Some(to));
        }
        Ok(None)
    }
}

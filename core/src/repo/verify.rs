//! Verify: prove that snapshots can be restored, without restoring them.
//!
//! Every chunk a snapshot references is read, authenticated, decompressed and re-hashed; a
//! chunk shared by many snapshots is checked once. Problems are collected, not raised, so one
//! run reports every damaged snapshot and every bad object.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures::StreamExt;
use serde::Serialize;

use super::backup::Progress;
use super::Repository;
use crate::crypto::ChunkId;
use crate::error::Result;
use crate::manifest::{ChunkRef, Manifest};

#[derive(Debug, Clone, Serialize)]
pub struct SnapshotVerification {
    pub database_id: String,
    pub name: String,
    pub chunks: u64,
    pub logical_bytes: u64,
    /// Empty when the snapshot is intact.
    pub problems: Vec<String>,
}

impl Repository {
    pub async fn verify(
        &self,
        manifests: &[Manifest],
        progress: Arc<Progress>,
    ) -> Result<Vec<SnapshotVerification>> {
        let mut unique: HashMap<ChunkId, (ChunkRef, String)> = HashMap::new();
        for m in manifests {
            for s in &m.streams {
                for c in &s.chunks {
                    unique
                        .entry(c.id)
                        .or_insert_with(|| (c.clone(), format!("snapshot {}", m.name)));
                }
            }
        }
        let parallel = 2 * std::thread::available_parallelism().map_or(2, |n| n.get());
        let results: HashMap<ChunkId, Option<String>> = futures::stream::iter(unique.into_values())
            .map(|(chunk, by)| {
                let progress = progress.clone();
                async move {
                    let r = self.load_chunk(&chunk, &by).await;
                    progress
                        .bytes_read
                        .fetch_add(chunk.len as u64, Ordering::Relaxed);
                    (chunk.id, r)
                }
            })
            .buffer_unordered(parallel)
            .map(|(id, r)| match r {
                Ok(_) => Ok((id, None)),
                Err(crate::Error::Missing { .. }) => {
                    Ok((id, Some(format!("chunk {} is missing", id.path()))))
                }
                Err(crate::Error::Corrupt { reason, .. }) => Ok((
                    id,
                    Some(format!("chunk {} is damaged: {reason}", id.path())),
                )),
                Err(e) => Err(e),
            })
            .collect::<Vec<Result<_>>>()
            .await
            .into_iter()
            .collect::<Result<_>>()?;

        Ok(manifests
            .iter()
            .map(|m| {
                let mut problems = Vec::new();
                for s in &m.streams {
                    let sum: u64 = s.chunks.iter().map(|c| c.len as u64).sum();
                    if sum != s.size {
                        problems.push(format!(
                            "stream {} has {sum} bytes in chunks but claims {}",
                            s.name, s.size
                        ));
                    }
                    for c in &s.chunks {
                        if let Some(Some(problem)) = results.get(&c.id) {
                            if !problems.contains(problem) {
                                problems.push(problem.clone());
                            }
                        }
                    }
                }
                SnapshotVerification {
                    database_id: m.database_id.clone(),
                    name: m.name.clone(),
                    chunks: m.streams.iter().map(|s| s.chunks.len() as u64).sum(),
                    logical_bytes: m.stats.logical_bytes,
                    problems,
                }
            })
            .collect())
    }
}

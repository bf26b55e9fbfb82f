//! Reading chunks back: fetch, authenticate, decompress, re-hash — in parallel, in order.
//!
//! [`Repository::chunk_stream`] keeps a window of fetch tasks running ahead of the consumer
//! (each one a storage read plus decryption on the CPU workers) and hands out plaintext in
//! manifest order through a bounded channel, so restores use every core and a fixed amount of
//! memory. A chunk that fails any check stops the stream with an error naming the chunk and the
//! snapshot that references it.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::mpsc;

use super::backup::Progress;
use super::{with_codec, Repository};
use crate::blob::{BlobError, BlobKind};
use crate::crypto::Keys;
use crate::error::{Error, Result};
use crate::format;
use crate::manifest::{ChunkRef, Manifest};

/// Chunks fetched ahead of the consumer.
const FETCH_WINDOW: usize = 8;

/// Why a stored chunk object could not be turned back into the plaintext a manifest expects.
pub(crate) enum DecodeError {
    /// The object itself is bad: it fails authentication or decoding, or its content does not
    /// hash to its id. Verify quarantines such an object.
    Damaged(String),
    /// The object is intact, but the manifest claims another length: the manifest is wrong,
    /// not the chunk, so the chunk must stay where it is.
    WrongLength { stored: usize, expected: u32 },
    /// The header names a format this build does not know (a newer version, unknown flags, a
    /// reserved byte in use, a larger limit): written by a newer release, or damaged in its
    /// header — this build cannot tell, so the object must stay where it is.
    Unsupported(String),
}

impl DecodeError {
    pub(crate) fn reason(&self) -> String {
        match self {
            DecodeError::Damaged(reason) | DecodeError::Unsupported(reason) => reason.clone(),
            DecodeError::WrongLength { stored, expected } => {
                format!("{stored} bytes, manifest says {expected}")
            }
        }
    }
}

/// Authenticates, decompresses and re-hashes one chunk blob (CPU work: call it on the workers).
pub(crate) fn decode_chunk(
    keys: &Keys,
    chunk: &ChunkRef,
    blob: Vec<u8>,
) -> std::result::Result<Vec<u8>, DecodeError> {
    let mut plain = Vec::new();
    with_codec(|c| {
        c.open(
            BlobKind::Chunk,
            &keys.chunk_cipher,
            &chunk.id.0,
            blob,
            format::CHUNK_MAX,
            &mut plain,
        )
    })
    .map_err(|e| match e {
        BlobError::UnsupportedVersion(_)
        | BlobError::UnknownFlags(_)
        | BlobError::Reserved(_)
        | BlobError::TooLarge(_) => DecodeError::Unsupported(e.to_string()),
        e => DecodeError::Damaged(e.to_string()),
    })?;
    if keys.chunk_id(&plain) != chunk.id {
        return Err(DecodeError::Damaged(
            "content does not hash to the chunk id".into(),
        ));
    }
    if plain.len() != chunk.len as usize {
        return Err(DecodeError::WrongLength {
            stored: plain.len(),
            expected: chunk.len,
        });
    }
    Ok(plain)
}

impl Repository {
    /// Reads one chunk and checks everything about it: present, authentic, expected length,
    /// and hashing back to its id.
    pub async fn load_chunk(&self, chunk: &ChunkRef, referenced_by: &str) -> Result<Vec<u8>> {
        let path = chunk.id.path();
        let blob = self
            .backend()
            .read(&path)
            .await?
            .ok_or_else(|| Error::Missing {
                object: format!("chunk {path}"),
                referenced_by: referenced_by.to_string(),
            })?;
        let repo = self.clone();
        let (chunk, referenced_by) = (chunk.clone(), referenced_by.to_string());
        crate::workers::run(move || {
            decode_chunk(repo.keys(), &chunk, blob).map_err(|e| {
                Error::corrupt(format!("chunk {path} (in {referenced_by})"), e.reason())
            })
        })
        .await
    }

    /// Plaintext of `chunks`, in order, fetched ahead in parallel. The stream ends after the
    /// first error.
    pub fn chunk_stream(
        &self,
        chunks: Vec<ChunkRef>,
        referenced_by: String,
    ) -> mpsc::Receiver<Result<Vec<u8>>> {
        let (tx, rx) = mpsc::channel(4);
        let repo = self.clone();
        let referenced_by = Arc::new(referenced_by);
        tokio::spawn(async move {
            let mut pending = chunks.into_iter();
            let mut window = VecDeque::new();
            loop {
                while window.len() < FETCH_WINDOW {
                    let Some(chunk) = pending.next() else { break };
                    let (repo, by) = (repo.clone(), referenced_by.clone());
                    window.push_back(tokio::spawn(
                        async move { repo.load_chunk(&chunk, &by).await },
                    ));
                }
                let Some(next) = window.pop_front() else {
                    break;
                };
                let result = next.await.expect("chunk fetch task panicked");
                let failed = result.is_err();
                if tx.send(result).await.is_err() || failed {
                    break;
                }
            }
            for task in window {
                task.abort();
            }
        });
        rx
    }

    /// Writes stream `stream` of a snapshot to `out` (on a blocking thread) and returns it.
    pub async fn restore_stream<W: Write + Send + 'static>(
        &self,
        manifest: &Manifest,
        stream: &str,
        mut out: W,
        progress: Arc<Progress>,
    ) -> Result<W> {
        let s = manifest.stream(stream).ok_or_else(|| {
            Error::corrupt(
                format!("snapshot {}", manifest.name),
                format!("has no stream {stream:?}"),
            )
        })?;
        let mut rx = self.chunk_stream(s.chunks.clone(), format!("snapshot {}", manifest.name));
        tokio::task::spawn_blocking(move || {
            while let Some(chunk) = rx.blocking_recv() {
                let chunk = chunk?;
                out.write_all(&chunk)
                    .map_err(|e| Error::io("writing restored data", e))?;
                progress
                    .bytes_read
                    .fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
            out.flush()
                .map_err(|e| Error::io("writing restored data", e))?;
            Ok(out)
        })
        .await
        .expect("restore writer panicked")
    }
}

//! The encrypted blob: how one chunk or manifest is framed on storage.
//!
//! ```text
//! 0      4        5     6      7         8             12            36          end-16   end
//! | magic | version | kind | flags | reserved | plain length | nonce (24) | ciphertext | tag |
//! ```
//! The 36-byte header and the object's identity (chunk id or manifest path) are the AEAD's
//! associated data: a blob copied under another name, given another kind, or with a flipped
//! header bit fails authentication. The plaintext length lets the reader size its buffer and
//! refuse absurd values before decrypting; compression is decided per blob, so incompressible
//! data is stored as is.

use chacha20poly1305::aead::AeadInOut;
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};

use crate::crypto::random_bytes;
use crate::format::{
    BLOB_HEADER_LEN, BLOB_MAGIC, BLOB_VERSION, FLAG_ZSTD, NONCE_LEN, TAG_LEN, ZSTD_LEVEL,
    ZSTD_MIN_MATCH,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum BlobKind {
    Chunk = 1,
    Manifest = 2,
    /// An archived PostgreSQL WAL file (segment, history or backup label), stored whole.
    Wal = 3,
}

/// Why a blob could not be opened. The caller adds the object name.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BlobError {
    #[error("blob is {0} bytes, shorter than the {min}-byte minimum (truncated?)", min = BLOB_HEADER_LEN + TAG_LEN)]
    TooShort(usize),
    #[error("blob does not start with the Bulwark magic bytes")]
    BadMagic,
    #[error("blob format version {0} is not supported (this build reads version {BLOB_VERSION}); upgrade bulwark")]
    UnsupportedVersion(u8),
    #[error("blob is of kind {found}, expected {expected}")]
    WrongKind { found: u8, expected: u8 },
    #[error("blob has unknown flag bits {0:#04x}")]
    UnknownFlags(u8),
    #[error("blob has a non-zero reserved byte {0:#04x}")]
    Reserved(u8),
    #[error("blob claims a plaintext of {0} bytes, over the limit for its kind")]
    TooLarge(usize),
    #[error("authentication failed: the blob was modified, truncated, renamed, or encrypted with another key")]
    Authentication,
    #[error("decompression failed: {0}")]
    Decompress(String),
    #[error("plaintext is {found} bytes, header says {expected}")]
    LengthMismatch { found: usize, expected: usize },
}

/// Per-thread reusable state for sealing and opening: a zstd context and a scratch buffer.
/// Creating a zstd context and fresh buffers per chunk costs more than compressing
/// incompressible data does.
pub struct BlobCodec {
    compressor: zstd::bulk::Compressor<'static>,
    /// The compressor's current level.
    level: i32,
    decompressor: zstd::bulk::Decompressor<'static>,
    scratch: Vec<u8>,
}

impl Default for BlobCodec {
    fn default() -> Self {
        Self::new()
    }
}

impl BlobCodec {
    pub fn new() -> Self {
        let mut compressor = zstd::bulk::Compressor::new(ZSTD_LEVEL).expect("zstd context");
        compressor
            .set_parameter(zstd::zstd_safe::CParameter::MinMatch(ZSTD_MIN_MATCH))
            .expect("valid zstd minimum match");
        BlobCodec {
            compressor,
            level: ZSTD_LEVEL,
            decompressor: zstd::bulk::Decompressor::new().expect("zstd context"),
            scratch: Vec::new(),
        }
    }

    /// Compresses (when it pays) and encrypts `plaintext` into a new blob.
    pub fn seal(
        &mut self,
        kind: BlobKind,
        cipher: &XChaCha20Poly1305,
        object_id: &[u8],
        plaintext: &[u8],
    ) -> Vec<u8> {
        self.seal_at(ZSTD_LEVEL, kind, cipher, object_id, plaintext)
    }

    /// [`seal`](Self::seal) at another zstd level (readers do not care which level wrote a
    /// blob). WAL uses a faster level: one 16 MiB segment is compressed on one core while
    /// PostgreSQL waits for `archive_command`.
    pub fn seal_at(
        &mut self,
        level: i32,
        kind: BlobKind,
        cipher: &XChaCha20Poly1305,
        object_id: &[u8],
        plaintext: &[u8],
    ) -> Vec<u8> {
        if level != self.level {
            // The match length is tuned for chunks at ZSTD_LEVEL; 0 = the level's default.
            let min_match = if level == ZSTD_LEVEL {
                ZSTD_MIN_MATCH
            } else {
                0
            };
            self.compressor
                .set_compression_level(level)
                .and_then(|_| {
                    self.compressor
                        .set_parameter(zstd::zstd_safe::CParameter::MinMatch(min_match))
                })
                .expect("valid zstd level and minimum match");
            self.level = level;
        }
        let bound = zstd::zstd_safe::compress_bound(plaintext.len());
        self.scratch.clear();
        self.scratch.reserve(bound);
        let compressed = self
            .compressor
            .compress_to_buffer(plaintext, &mut self.scratch)
            .is_ok()
            && self.scratch.len() < plaintext.len();
        let (flags, payload) = if compressed {
            (FLAG_ZSTD, &self.scratch[..])
        } else {
            (0, plaintext)
        };
        let mut out = Vec::with_capacity(BLOB_HEADER_LEN + payload.len() + TAG_LEN);
        out.extend_from_slice(&BLOB_MAGIC);
        out.push(BLOB_VERSION);
        out.push(kind as u8);
        out.push(flags);
        out.push(0);
        out.extend_from_slice(&(plaintext.len() as u32).to_le_bytes());
        let mut nonce = [0u8; NONCE_LEN];
        random_bytes(&mut nonce);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(payload);
        let (header, body) = out.split_at_mut(BLOB_HEADER_LEN);
        let aad = associated_data(header, object_id);
        let tag = cipher
            .encrypt_inout_detached(&XNonce::from(nonce), &aad, body.into())
            .expect("XChaCha20-Poly1305 accepts messages of this size");
        out.extend_from_slice(&tag);
        out
    }

    /// Authenticates, decrypts and decompresses a blob into `out` (replacing its contents).
    /// `blob` is consumed as the decryption buffer to avoid a copy.
    pub fn open(
        &mut self,
        kind: BlobKind,
        cipher: &XChaCha20Poly1305,
        object_id: &[u8],
        mut blob: Vec<u8>,
        max_plain: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), BlobError> {
        if blob.len() < BLOB_HEADER_LEN + TAG_LEN {
            return Err(BlobError::TooShort(blob.len()));
        }
        if blob[..4] != BLOB_MAGIC {
            return Err(BlobError::BadMagic);
        }
        if blob[4] != BLOB_VERSION {
            return Err(BlobError::UnsupportedVersion(blob[4]));
        }
        if blob[5] != kind as u8 {
            return Err(BlobError::WrongKind {
                found: blob[5],
                expected: kind as u8,
            });
        }
        let flags = blob[6];
        if flags & !FLAG_ZSTD != 0 {
            return Err(BlobError::UnknownFlags(flags));
        }
        if blob[7] != 0 {
            return Err(BlobError::Reserved(blob[7]));
        }
        let plain_len = u32::from_le_bytes(blob[8..12].try_into().expect("4 bytes")) as usize;
        if plain_len > max_plain {
            return Err(BlobError::TooLarge(plain_len));
        }
        let nonce = XNonce::try_from(&blob[12..BLOB_HEADER_LEN]).expect("24 bytes");
        let tag_at = blob.len() - TAG_LEN;
        let tag = Tag::try_from(&blob[tag_at..]).expect("16 bytes");
        let (header, rest) = blob.split_at_mut(BLOB_HEADER_LEN);
        let body = &mut rest[..tag_at - BLOB_HEADER_LEN];
        let aad = associated_data(header, object_id);
        cipher
            .decrypt_inout_detached(&nonce, &aad, body.into(), &tag)
            .map_err(|_| BlobError::Authentication)?;
        out.clear();
        if flags & FLAG_ZSTD != 0 {
            out.reserve(plain_len);
            self.decompressor
                .decompress_to_buffer(&*body, out)
                .map_err(|e| BlobError::Decompress(e.to_string()))?;
        } else {
            blob.truncate(tag_at);
            blob.drain(..BLOB_HEADER_LEN);
            *out = blob;
        }
        if out.len() != plain_len {
            return Err(BlobError::LengthMismatch {
                found: out.len(),
                expected: plain_len,
            });
        }
        Ok(())
    }
}

fn associated_data(header: &[u8], object_id: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(header.len() + object_id.len());
    aad.extend_from_slice(header);
    aad.extend_from_slice(object_id);
    aad
}

#[cfg(test)]
mod tests {
    use super::*;
    use chacha20poly1305::KeyInit;

    fn cipher(byte: u8) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(&[byte; 32].into())
    }

    fn open(blob: &[u8], id: &[u8]) -> Result<Vec<u8>, BlobError> {
        let mut out = Vec::new();
        BlobCodec::new().open(
            BlobKind::Chunk,
            &cipher(1),
            id,
            blob.to_vec(),
            1 << 20,
            &mut out,
        )?;
        Ok(out)
    }

    #[test]
    fn compressible_and_random_data_round_trip() {
        let text = b"INSERT INTO t VALUES (1, 'hello');\n".repeat(1000);
        let mut random = vec![0u8; 100_000];
        random_bytes(&mut random);
        let mut codec = BlobCodec::new();
        for data in [&text[..], &random[..], b""] {
            let blob = codec.seal(BlobKind::Chunk, &cipher(1), b"id", data);
            assert_eq!(open(&blob, b"id").unwrap(), data);
        }
        let blob = codec.seal(BlobKind::Chunk, &cipher(1), b"id", &text);
        assert!(blob.len() < text.len() / 10, "text is compressed");
        assert_eq!(blob[6] & FLAG_ZSTD, FLAG_ZSTD);
        let blob = codec.seal(BlobKind::Chunk, &cipher(1), b"id", &random);
        assert_eq!(blob[6], 0, "random data is stored uncompressed");
        assert_eq!(blob.len(), random.len() + BLOB_HEADER_LEN + TAG_LEN);
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let data = b"some chunk data".repeat(10);
        let blob = BlobCodec::new().seal(BlobKind::Chunk, &cipher(1), b"id", &data);
        for byte in 0..blob.len() {
            for bit in 0..8 {
                let mut bad = blob.clone();
                bad[byte] ^= 1 << bit;
                assert!(
                    open(&bad, b"id").is_err(),
                    "flip of byte {byte} bit {bit} undetected"
                );
            }
        }
    }

    #[test]
    fn wrong_name_key_kind_version_and_truncation_are_refused() {
        let blob = BlobCodec::new().seal(BlobKind::Chunk, &cipher(1), b"id", b"payload");
        assert_eq!(open(&blob, b"other"), Err(BlobError::Authentication));
        let mut out = Vec::new();
        let mut codec = BlobCodec::new();
        let r = codec.open(
            BlobKind::Chunk,
            &cipher(2),
            b"id",
            blob.clone(),
            100,
            &mut out,
        );
        assert_eq!(r, Err(BlobError::Authentication));
        let r = codec.open(
            BlobKind::Manifest,
            &cipher(1),
            b"id",
            blob.clone(),
            100,
            &mut out,
        );
        assert!(matches!(r, Err(BlobError::WrongKind { .. })));
        let mut v2 = blob.clone();
        v2[4] = 2;
        assert_eq!(open(&v2, b"id"), Err(BlobError::UnsupportedVersion(2)));
        assert_eq!(
            open(&blob[..blob.len() - 1], b"id"),
            Err(BlobError::Authentication)
        );
        assert_eq!(open(&blob[..20], b"id"), Err(BlobError::TooShort(20)));
    }
}

//! Keys and the primitives built on them.
//!
//! One random 256-bit master key per repository; everything else is derived from it with
//! BLAKE3's key-derivation mode, one context string per purpose (see [`crate::format`]). Chunk
//! ids are *keyed* BLAKE3 hashes, so the storage never sees a plain content hash it could match
//! against known files.

use std::fmt;

use chacha20poly1305::{KeyInit, XChaCha20Poly1305};
use serde::{Deserialize, Serialize};

use crate::format;

/// Fill `buf` from the operating system's CSPRNG.
pub fn random_bytes(buf: &mut [u8]) {
    getrandom::fill(buf).expect("the operating system's random number generator failed");
}

pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    random_bytes(&mut buf);
    hex::encode(buf)
}

/// The repository master key. Never written anywhere except wrapped in a key slot.
#[derive(Clone, PartialEq, Eq)]
pub struct MasterKey(pub(crate) [u8; 32]);

impl MasterKey {
    pub fn generate() -> Self {
        let mut k = [0u8; 32];
        random_bytes(&mut k);
        MasterKey(k)
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

/// Sub-keys derived from the master key, one per purpose.
pub struct Keys {
    chunk_id: [u8; 32],
    pub(crate) chunk_cipher: XChaCha20Poly1305,
    pub(crate) manifest_cipher: XChaCha20Poly1305,
    pub(crate) wal_cipher: XChaCha20Poly1305,
    config_mac: [u8; 32],
    /// Seed XOR-ed into the FastCDC gear table, so chunk boundaries (and thus object sizes)
    /// do not reveal which well-known file was backed up.
    pub chunker_seed: u64,
}

impl Keys {
    pub fn derive(master: &MasterKey) -> Self {
        let sub = |ctx: &str| blake3::derive_key(ctx, &master.0);
        let seed = sub(format::CTX_CHUNKER_SEED);
        Keys {
            chunk_id: sub(format::CTX_CHUNK_ID),
            chunk_cipher: XChaCha20Poly1305::new(&sub(format::CTX_CHUNK_BLOB).into()),
            manifest_cipher: XChaCha20Poly1305::new(&sub(format::CTX_MANIFEST_BLOB).into()),
            wal_cipher: XChaCha20Poly1305::new(&sub(format::CTX_WAL_BLOB).into()),
            config_mac: sub(format::CTX_CONFIG_MAC),
            chunker_seed: u64::from_le_bytes(seed[..8].try_into().expect("8 bytes")),
        }
    }

    pub fn chunk_id(&self, plaintext: &[u8]) -> ChunkId {
        ChunkId(*blake3::keyed_hash(&self.chunk_id, plaintext).as_bytes())
    }

    pub fn config_mac(&self, canonical: &[u8]) -> String {
        blake3::keyed_hash(&self.config_mac, canonical)
            .to_hex()
            .to_string()
    }
}

/// A chunk's name: the keyed BLAKE3 hash of its plaintext.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(s: &str) -> Option<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(ChunkId(out))
    }

    pub fn path(&self) -> String {
        format::chunk_path(&self.to_hex())
    }

    /// Parses a `chunks/xx/<64 hex>` object path back into an id.
    pub fn from_path(path: &str) -> Option<Self> {
        let rest = path.strip_prefix(format::CHUNKS_DIR)?;
        let (dir, name) = rest.split_once('/')?;
        // Only the canonical lowercase spelling is a chunk; anything else is a stray object.
        // Checked without allocating: a backup parses every path of `chunks/`.
        let lower_hex = |b: &u8| b.is_ascii_digit() || (b'a'..=b'f').contains(b);
        if name.len() != 64 || !name.as_bytes().iter().all(lower_hex) || dir != &name[..2] {
            return None;
        }
        ChunkId::from_hex(name)
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({})", &self.to_hex()[..16])
    }
}

impl Serialize for ChunkId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for ChunkId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ChunkId::from_hex(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("invalid chunk id {s:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_ids_depend_on_the_repository_key() {
        let a = Keys::derive(&MasterKey::generate());
        let b = Keys::derive(&MasterKey::generate());
        assert_ne!(a.chunk_id(b"same data"), b.chunk_id(b"same data"));
        assert_eq!(a.chunk_id(b"same data"), a.chunk_id(b"same data"));
        assert_ne!(
            a.chunk_id(b"same data").0,
            *blake3::hash(b"same data").as_bytes()
        );
    }

    #[test]
    fn chunk_paths_round_trip_and_reject_misplaced_objects() {
        let id = Keys::derive(&MasterKey::generate()).chunk_id(b"x");
        assert_eq!(ChunkId::from_path(&id.path()), Some(id));
        let hex = id.to_hex();
        assert_eq!(ChunkId::from_path(&format!("chunks/zz/{hex}")), None);
        assert_eq!(
            ChunkId::from_path(&format!("chunks/{}/{}", &hex[..2], &hex[..10])),
            None
        );
        let upper = hex.to_uppercase();
        assert_eq!(
            ChunkId::from_path(&format!("chunks/{}/{upper}", &hex[..2])),
            None
        );
        assert_eq!(
            ChunkId::from_path(&format!("chunks/{}/{upper}", &upper[..2])),
            None
        );
        assert_eq!(
            ChunkId::from_path(&format!("chunks/{}/x/{hex}", &hex[..2])),
            None
        );
        assert_eq!(
            ChunkId::from_path(&format!("chunks/{}/é{}", &hex[..2], &hex[2..])),
            None
        );
    }
}

//! The `config` object: what a reader must know before it can read anything else.
//!
//! It is plain JSON so that a reader can refuse an unknown format version *before* asking for
//! a passphrase, and it carries a MAC keyed from the master key so that, once the key is
//! unlocked, any change to it (for example the chunker parameters) is detected.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::crypto::{random_hex, Keys};
use crate::error::{Error, Result};
use crate::format;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChunkerParams {
    pub algorithm: String,
    pub min_size: u32,
    pub avg_size: u32,
    pub max_size: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RepoConfig {
    pub version: u32,
    pub id: String,
    pub created: DateTime<Utc>,
    pub chunker: ChunkerParams,
    /// Keyed BLAKE3 of this object serialized with `mac` empty.
    pub mac: String,
}

impl RepoConfig {
    pub fn new(keys: &Keys) -> Self {
        let mut c = RepoConfig {
            version: format::REPOSITORY_VERSION,
            id: random_hex(16),
            created: Utc::now(),
            chunker: ChunkerParams {
                algorithm: "fastcdc-2020".into(),
                min_size: format::CHUNK_MIN as u32,
                avg_size: format::CHUNK_AVG as u32,
                max_size: format::CHUNK_MAX as u32,
            },
            mac: String::new(),
        };
        c.mac = c.compute_mac(keys);
        c
    }

    /// Parses `config`, refusing a newer format version before anything else is read.
    pub fn parse(location: &str, bytes: &[u8]) -> Result<Self> {
        #[derive(Deserialize)]
        struct VersionOnly {
            version: u32,
        }
        let v: VersionOnly = serde_json::from_slice(bytes).map_err(|e| {
            Error::corrupt(
                format!("{location}/config"),
                format!("not valid JSON with a version: {e}"),
            )
        })?;
        if v.version != format::REPOSITORY_VERSION {
            return Err(Error::UnsupportedVersion {
                location: location.to_string(),
                found: v.version,
                supported: format::REPOSITORY_VERSION,
            });
        }
        let config: RepoConfig = serde_json::from_slice(bytes)
            .map_err(|e| Error::corrupt(format!("{location}/config"), e.to_string()))?;
        let expected = ChunkerParams {
            algorithm: "fastcdc-2020".into(),
            min_size: format::CHUNK_MIN as u32,
            avg_size: format::CHUNK_AVG as u32,
            max_size: format::CHUNK_MAX as u32,
        };
        if config.chunker != expected {
            return Err(Error::corrupt(
                format!("{location}/config"),
                format!("unsupported chunker parameters {:?}", config.chunker),
            ));
        }
        Ok(config)
    }

    pub fn verify_mac(&self, location: &str, keys: &Keys) -> Result<()> {
        if self.mac == self.compute_mac(keys) {
            Ok(())
        } else {
            Err(Error::corrupt(
                format!("{location}/config"),
                "MAC mismatch: the config was modified or belongs to another repository's key",
            ))
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("config serializes")
    }

    fn compute_mac(&self, keys: &Keys) -> String {
        let mut copy = self.clone();
        copy.mac = String::new();
        keys.config_mac(&serde_json::to_vec(&copy).expect("config serializes"))
    }
}

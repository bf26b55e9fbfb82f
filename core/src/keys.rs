//! Key slots: the master key wrapped by a passphrase (Argon2id) or, later, by the control
//! plane's workspace key.
//!
//! A slot is a small JSON object under `keys/<slot-id>`. Adding or removing a slot never
//! changes the master key, so no chunk is ever re-encrypted. Each slot carries a checksum over
//! its own fields: a damaged slot is reported as damaged, not as a wrong passphrase, and the
//! AEAD binds the wrapped key to the repository id and the slot id.

use argon2::{Algorithm, Argon2, Params, Version};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use chacha20poly1305::aead::AeadInOut;
use chacha20poly1305::{KeyInit, Tag, XChaCha20Poly1305, XNonce};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::crypto::{random_bytes, random_hex, MasterKey};
use crate::error::{Error, Result};
use crate::format;

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct KdfParams {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl Default for KdfParams {
    fn default() -> Self {
        KdfParams {
            memory_kib: format::KDF_MEMORY_KIB,
            iterations: format::KDF_ITERATIONS,
            parallelism: format::KDF_PARALLELISM,
        }
    }
}

impl KdfParams {
    /// Refuses parameters that are too weak to protect a key or too large to open it again.
    pub fn validate(&self) -> Result<()> {
        if !(8 * 1024..=4 * 1024 * 1024).contains(&self.memory_kib) {
            return Err(Error::invalid(
                "Argon2id memory",
                format!("{} KiB is outside 8 MiB..4 GiB", self.memory_kib),
            ));
        }
        if !(1..=64).contains(&self.iterations) || !(1..=16).contains(&self.parallelism) {
            return Err(Error::invalid(
                "Argon2id parameters",
                "iterations must be 1..=64 and parallelism 1..=16",
            ));
        }
        Ok(())
    }

    fn derive(&self, passphrase: &[u8], salt: &[u8]) -> Result<[u8; 32]> {
        let params = Params::new(self.memory_kib, self.iterations, self.parallelism, Some(32))
            .map_err(|e| Error::invalid("Argon2id parameters", e.to_string()))?;
        let mut out = [0u8; 32];
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password_into(passphrase, salt, &mut out)
            .map_err(|e| Error::invalid("passphrase", e.to_string()))?;
        Ok(out)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Kdf {
    pub algorithm: String,
    #[serde(flatten)]
    pub params: KdfParams,
    pub salt: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeySlot {
    pub version: u32,
    pub id: String,
    pub label: String,
    pub hostname: String,
    pub created: DateTime<Utc>,
    pub kdf: Kdf,
    pub nonce: String,
    pub wrapped_key: String,
    /// The id of the repository the slot was made for (also bound into the wrapped key's
    /// associated data). Only for messages: when `config`'s id was edited, every slot fails to
    /// open, and this says why instead of "wrong passphrase". Absent in slots made before it
    /// existed, which serialize (and so checksum) exactly as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    /// BLAKE3 of this object serialized with `checksum` empty.
    pub checksum: String,
}

impl KeySlot {
    pub fn path(&self) -> String {
        format!("{}{}", format::KEYS_DIR, self.id)
    }

    pub fn wrap(
        master: &MasterKey,
        passphrase: &[u8],
        repository_id: &str,
        label: &str,
        params: KdfParams,
    ) -> Result<KeySlot> {
        params.validate()?;
        let mut salt = [0u8; 16];
        random_bytes(&mut salt);
        let mut nonce = [0u8; format::NONCE_LEN];
        random_bytes(&mut nonce);
        let id = random_hex(8);
        let kek = params.derive(passphrase, &salt)?;
        let mut wrapped = master.0.to_vec();
        let tag = XChaCha20Poly1305::new(&kek.into())
            .encrypt_inout_detached(
                &XNonce::from(nonce),
                &slot_aad(repository_id, &id),
                wrapped.as_mut_slice().into(),
            )
            .expect("32-byte message");
        wrapped.extend_from_slice(&tag);
        let mut slot = KeySlot {
            version: 1,
            id,
            label: label.to_string(),
            hostname: hostname(),
            created: Utc::now(),
            kdf: Kdf {
                algorithm: "argon2id".into(),
                params,
                salt: B64.encode(salt),
            },
            nonce: B64.encode(nonce),
            wrapped_key: B64.encode(wrapped),
            repository: Some(repository_id.to_string()),
            checksum: String::new(),
        };
        slot.checksum = slot.compute_checksum();
        Ok(slot)
    }

    /// `Ok(None)` when the passphrase is not the one of this slot.
    pub fn unwrap(&self, passphrase: &[u8], repository_id: &str) -> Result<Option<MasterKey>> {
        let object = self.path();
        let bad = |what: &str| {
            Error::corrupt(
                &object,
                format!("{what} is not valid base64 of the right length"),
            )
        };
        let salt = B64.decode(&self.kdf.salt).map_err(|_| bad("salt"))?;
        let nonce: [u8; format::NONCE_LEN] = B64
            .decode(&self.nonce)
            .ok()
            .and_then(|n| n.try_into().ok())
            .ok_or_else(|| bad("nonce"))?;
        let mut wrapped = B64
            .decode(&self.wrapped_key)
            .map_err(|_| bad("wrapped key"))?;
        if wrapped.len() != 32 + format::TAG_LEN {
            return Err(bad("wrapped key"));
        }
        self.kdf.params.validate()?;
        let kek = self.kdf.params.derive(passphrase, &salt)?;
        let tag = Tag::try_from(&wrapped[32..]).expect("16 bytes");
        let ok = XChaCha20Poly1305::new(&kek.into())
            .decrypt_inout_detached(
                &XNonce::from(nonce),
                &slot_aad(repository_id, &self.id),
                (&mut wrapped[..32]).into(),
                &tag,
            )
            .is_ok();
        Ok(ok.then(|| MasterKey(wrapped[..32].try_into().expect("32 bytes"))))
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("key slots serialize")
    }

    /// Parses a slot read from `object`, checking its checksum and that it sits under its own
    /// id, so a damaged or misplaced slot is reported as such.
    pub fn from_bytes(object: &str, bytes: &[u8]) -> Result<KeySlot> {
        let slot: KeySlot = serde_json::from_slice(bytes)
            .map_err(|e| Error::corrupt(object, format!("not a valid key slot: {e}")))?;
        if slot.version != 1 {
            return Err(Error::corrupt(
                object,
                format!("unknown key slot version {}", slot.version),
            ));
        }
        if slot.checksum != slot.compute_checksum() {
            return Err(Error::corrupt(
                object,
                "checksum mismatch (the slot was modified or damaged)",
            ));
        }
        if slot.path() != object || slot.kdf.algorithm != "argon2id" {
            return Err(Error::corrupt(
                object,
                "slot id or algorithm does not match its name",
            ));
        }
        Ok(slot)
    }

    fn compute_checksum(&self) -> String {
        let mut copy = self.clone();
        copy.checksum = String::new();
        blake3::hash(&serde_json::to_vec(&copy).expect("key slots serialize"))
            .to_hex()
            .to_string()
    }
}

fn slot_aad(repository_id: &str, slot_id: &str) -> Vec<u8> {
    format!("bulwark key slot\0{repository_id}\0{slot_id}").into_bytes()
}

pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const FAST: KdfParams = KdfParams {
        memory_kib: 8 * 1024,
        iterations: 1,
        parallelism: 1,
    };

    #[test]
    fn wrap_unwrap_and_wrong_passphrase() {
        let master = MasterKey::generate();
        let slot = KeySlot::wrap(&master, b"correct horse", "repo1", "ops", FAST).unwrap();
        let parsed = KeySlot::from_bytes(&slot.path(), &slot.to_bytes()).unwrap();
        assert_eq!(
            parsed.unwrap(b"correct horse", "repo1").unwrap(),
            Some(master)
        );
        assert_eq!(parsed.unwrap(b"wrong", "repo1").unwrap(), None);
        assert_eq!(
            parsed.unwrap(b"correct horse", "repo2").unwrap(),
            None,
            "bound to the repository"
        );
    }

    #[test]
    fn a_flipped_bit_is_reported_as_damage_not_as_a_wrong_passphrase() {
        let master = MasterKey::generate();
        let slot = KeySlot::wrap(&master, b"pw", "repo1", "", FAST).unwrap();
        let bytes = slot.to_bytes();
        let mut damaged = 0;
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x01;
            match KeySlot::from_bytes(&slot.path(), &bad) {
                Err(Error::Corrupt { .. }) => damaged += 1,
                Ok(s) => assert_ne!(
                    s.unwrap(b"pw", "repo1").ok().flatten(),
                    Some(master.clone()),
                    "byte {i}"
                ),
                Err(e) => panic!("byte {i}: unexpected {e}"),
            }
        }
        assert!(
            damaged > bytes.len() * 9 / 10,
            "{damaged} of {}",
            bytes.len()
        );
    }

    #[test]
    fn a_slot_written_before_the_repository_field_still_parses_and_opens() {
        let master = MasterKey::generate();
        let mut slot = KeySlot::wrap(&master, b"pw", "repo1", "", FAST).unwrap();
        assert!(String::from_utf8(slot.to_bytes())
            .unwrap()
            .contains("\"repository\": \"repo1\""));
        slot.repository = None;
        slot.checksum = slot.compute_checksum();
        let old = slot.to_bytes();
        assert!(!String::from_utf8_lossy(&old).contains("repository"));
        let parsed = KeySlot::from_bytes(&slot.path(), &old).unwrap();
        assert_eq!(parsed.repository, None);
        assert_eq!(parsed.unwrap(b"pw", "repo1").unwrap(), Some(master));
    }

    #[test]
    fn weak_parameters_are_refused() {
        let weak = KdfParams {
            memory_kib: 1024,
            ..FAST
        };
        assert!(KeySlot::wrap(&MasterKey::generate(), b"pw", "r", "", weak).is_err());
    }
}

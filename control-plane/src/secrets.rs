//! Secrets at rest: the control-plane key `<data-dir>/secrets.key` (32 random bytes, mode 0600,
//! made on first start) and XChaCha20-Poly1305 around every secret the state file keeps for the
//! server's own use (Proxmox API token secrets, databases' connection secrets).
//!
//! A sealed value is `base64(nonce (24) || ciphertext || tag (16))`. The associated data names
//! the record the secret belongs to (`proxmox-cluster:<id>`, `database:<id>:<name>`), so a
//! sealed value copied into another record does not open. The key never enters the redb file: a copy of `bulwark.redb`
//! alone reveals no secret.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use chacha20poly1305::aead::AeadInOut;
use chacha20poly1305::{KeyInit, Tag, XChaCha20Poly1305, XNonce};

pub const KEY_FILE: &str = "secrets.key";
const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("cannot read the secrets key {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create the secrets key {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the secrets key {path} holds {len} bytes instead of {KEY_LEN}; restore the original file (secrets sealed with another key cannot be opened)")]
    WrongSize { path: PathBuf, len: usize },
    #[error("a stored secret ({aad}) cannot be opened: it was damaged, moved to another record, or sealed with another secrets key")]
    Open { aad: String },
}

/// The control plane's key for secrets at rest.
#[derive(Clone)]
pub struct SecretKey {
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(..)")
    }
}

impl SecretKey {
    /// Reads `<data_dir>/secrets.key`, creating it (owner-only) when it does not exist yet.
    /// Refuses a key file it cannot read or of the wrong size rather than making a new key,
    /// which would make every stored secret unreadable.
    pub fn load_or_create(data_dir: &Path) -> Result<SecretKey, SecretsError> {
        let path = data_dir.join(KEY_FILE);
        match crate::files::create_new_private(&path) {
            Ok(Some(mut file)) => {
                let mut key = [0u8; KEY_LEN];
                getrandom::fill(&mut key).expect("the operating system's random source failed");
                file.write_all(&key)
                    .and_then(|()| file.sync_all())
                    .map_err(|source| SecretsError::Create {
                        path: path.clone(),
                        source,
                    })?;
                tracing::info!(path = %path.display(), "created the secrets key");
                return Ok(SecretKey::from_bytes(key));
            }
            Ok(None) => {}
            Err(source) => return Err(SecretsError::Create { path, source }),
        }
        let mut bytes = Vec::with_capacity(KEY_LEN);
        std::fs::File::open(&path)
            .and_then(|f| f.take(KEY_LEN as u64 + 1).read_to_end(&mut bytes))
            .map_err(|source| SecretsError::Read {
                path: path.clone(),
                source,
            })?;
        let key: [u8; KEY_LEN] =
            bytes
                .as_slice()
                .try_into()
                .map_err(|_| SecretsError::WrongSize {
                    path: path.clone(),
                    len: bytes.len(),
                })?;
        Ok(SecretKey::from_bytes(key))
    }

    pub fn from_bytes(key: [u8; KEY_LEN]) -> SecretKey {
        SecretKey {
            cipher: XChaCha20Poly1305::new(&key.into()),
        }
    }

    /// Encrypts `plaintext` bound to `aad` (e.g. `proxmox-cluster:pve-east`).
    pub fn seal(&self, aad: &str, plaintext: &str) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).expect("the operating system's random source failed");
        let mut body = plaintext.as_bytes().to_vec();
        let tag = self
            .cipher
            .encrypt_inout_detached(
                &XNonce::from(nonce),
                aad.as_bytes(),
                body.as_mut_slice().into(),
            )
            .expect("XChaCha20-Poly1305 accepts messages of this size");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&body);
        out.extend_from_slice(&tag);
        B64.encode(out)
    }

    /// Decrypts a value made by [`SecretKey::seal`] with the same `aad`.
    pub fn open(&self, aad: &str, sealed: &str) -> Result<String, SecretsError> {
        let fail = || SecretsError::Open {
            aad: aad.to_string(),
        };
        let bytes = B64.decode(sealed).map_err(|_| fail())?;
        if bytes.len() < NONCE_LEN + TAG_LEN {
            return Err(fail());
        }
        let nonce: [u8; NONCE_LEN] = bytes[..NONCE_LEN].try_into().expect("24 bytes");
        let (body, tag) = bytes[NONCE_LEN..].split_at(bytes.len() - NONCE_LEN - TAG_LEN);
        let tag = Tag::try_from(tag).map_err(|_| fail())?;
        let mut body = body.to_vec();
        self.cipher
            .decrypt_inout_detached(
                &XNonce::from(nonce),
                aad.as_bytes(),
                body.as_mut_slice().into(),
                &tag,
            )
            .map_err(|_| fail())?;
        String::from_utf8(body).map_err(|_| fail())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn key_file_is_made_once_owner_only_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let key = SecretKey::load_or_create(dir.path()).unwrap();
        let path = dir.path().join(KEY_FILE);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let sealed = key.seal("proxmox-cluster:a", "s3cret");
        let again = SecretKey::load_or_create(dir.path()).unwrap();
        assert_eq!(again.open("proxmox-cluster:a", &sealed).unwrap(), "s3cret");
        // Bound to its record, and tamper-evident.
        assert!(again.open("proxmox-cluster:b", &sealed).is_err());
        let mut raw = B64.decode(&sealed).unwrap();
        raw[30] ^= 1;
        assert!(again.open("proxmox-cluster:a", &B64.encode(raw)).is_err());
        assert!(again.open("proxmox-cluster:a", "not base64!").is_err());
        // A truncated key file stops the server instead of being replaced.
        std::fs::write(&path, [1u8; 31]).unwrap();
        let e = SecretKey::load_or_create(dir.path()).unwrap_err();
        assert!(matches!(e, SecretsError::WrongSize { len: 31, .. }), "{e}");
    }
}

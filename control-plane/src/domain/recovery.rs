//! A workspace's recovery key: a second key slot in every repository the workspace's jobs
//! create, so its backups can be restored with `bulwark-agent restore --password-file` alone
//! when the control plane (and with it the workspace key) is lost.
//!
//! The control plane makes it when a job first needs it (or a workspace admin chooses a
//! passphrase while no repository exists yet), keeps it sealed like the workspace key, and
//! shows it exactly once through the API: whoever fetched it is recorded, and later requests
//! are answered with who did and when.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::Violation;

/// Shortest passphrase an admin may choose.
pub const MIN_PASSPHRASE_CHARS: usize = 16;
/// Longest passphrase an admin may choose.
pub const MAX_PASSPHRASE_CHARS: usize = 1024;

/// The stored recovery key of one workspace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveryKey {
    /// The key (or chosen passphrase), sealed with the secrets key.
    pub sealed: String,
    /// Whether a workspace admin chose it (then it counts as shown to them).
    #[serde(default)]
    pub chosen: bool,
    pub created_at: DateTime<Utc>,
    #[serde(default)]
    pub shown_at: Option<DateTime<Utc>>,
    /// The user it was shown to (or who chose it).
    #[serde(default)]
    pub shown_to: Option<String>,
}

/// What `GET /api/v1/workspaces/{id}/recovery-key` answers, once.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RecoveryKeyShown {
    pub workspace_id: String,
    /// The recovery key: keep it safe, outside the control plane. It is never shown again.
    pub recovery_key: String,
    /// How to use it without the control plane.
    pub usage: String,
}

/// What a workspace admin sends to choose the recovery passphrase.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecoveryPassphraseBody {
    /// At least 16 characters.
    pub passphrase: String,
}

impl RecoveryPassphraseBody {
    pub fn check(&self) -> Result<(), Vec<Violation>> {
        let n = self.passphrase.chars().count();
        let problem = if n < MIN_PASSPHRASE_CHARS {
            format!("at least {MIN_PASSPHRASE_CHARS} characters (got {n})")
        } else if n > MAX_PASSPHRASE_CHARS {
            format!("at most {MAX_PASSPHRASE_CHARS} characters (got {n})")
        } else if self.passphrase.trim() != self.passphrase {
            "no leading or trailing white space (a password file's line end is trimmed)".into()
        } else if self.passphrase.chars().any(char::is_control) {
            "no control characters".into()
        } else {
            return Ok(());
        };
        Err(vec![Violation::new("passphrase", problem)])
    }
}

/// A new random recovery key: 32 random bytes as 16 groups of 4 hex digits joined by `-`,
/// easy to copy and to read out.
pub fn generate() -> String {
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).expect("the operating system's random source failed");
    let hex = hex::encode(key);
    hex.as_bytes()
        .chunks(4)
        .map(|c| std::str::from_utf8(c).expect("hex is ASCII"))
        .collect::<Vec<_>>()
        .join("-")
}

/// Additional data the sealed key is bound to.
pub fn aad(workspace: &str) -> String {
    format!("recovery-key:{workspace}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_grouped_hex_and_differ() {
        let a = generate();
        assert_eq!(a.len(), 64 + 15);
        assert!(a.split('-').all(|g| g.len() == 4 && hex::decode(g).is_ok()));
        assert_ne!(a, generate());
    }

    #[test]
    fn passphrases_are_checked() {
        let body = |p: &str| RecoveryPassphraseBody {
            passphrase: p.into(),
        };
        assert!(body("short").check().is_err());
        assert!(body(" sixteen chars long ").check().is_err());
        assert!(body("correct horse battery staple").check().is_ok());
    }
}

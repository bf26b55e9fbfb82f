//! Audit entries and their hash chain.
//!
//! Each entry is stored as `{"hash": …, "body": {…}}` where `hash` = BLAKE3 (in derive-key mode,
//! context [`HASH_CONTEXT`]) over the body's exact stored bytes, and the body carries the hash of
//! the previous entry. Hashing the stored bytes, not a re-serialisation, means verification does
//! not depend on how a JSON library orders keys; any edit of a stored entry — or a deleted or
//! reordered one — breaks the chain at that point.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::ToSchema;

pub const HASH_CONTEXT: &str = "bulwark control-plane audit chain v1";
/// The `prev_hash` of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Actor {
    /// `user`, or `system` for the server itself and `admin bootstrap`.
    pub kind: String,
    pub id: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ResourceRef {
    /// `workspace`, `user`, `token`, `database`, `policy`, `backup`, …
    #[serde(rename = "type")]
    pub kind: String,
    pub id: String,
}

/// The content of one entry, as hashed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AuditEntry {
    pub seq: u64,
    pub at: DateTime<Utc>,
    pub actor: Actor,
    /// `<resource>.<verb>`, e.g. `policy.create`.
    pub action: String,
    pub resource: ResourceRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_id: Option<String>,
    #[schema(value_type = Object)]
    pub before: Option<serde_json::Value>,
    #[schema(value_type = Object)]
    pub after: Option<serde_json::Value>,
    pub prev_hash: String,
}

/// An entry as the API returns it: the content plus its hash.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AuditRecord {
    #[serde(flatten)]
    pub entry: AuditEntry,
    pub hash: String,
}

#[derive(Deserialize)]
struct Stored<'a> {
    hash: String,
    #[serde(borrow)]
    body: &'a RawValue,
}

pub fn hash_body(body: &str) -> String {
    hex::encode(blake3::derive_key(HASH_CONTEXT, body.as_bytes()))
}

/// Serialises an entry for storage and returns (stored bytes, hash).
pub fn seal(entry: &AuditEntry) -> (Vec<u8>, String) {
    let body = serde_json::to_string(entry).expect("audit entries serialise");
    let hash = hash_body(&body);
    let stored = format!("{{\"hash\":\"{hash}\",\"body\":{body}}}");
    (stored.into_bytes(), hash)
}

/// Why a stored entry is not a valid link of the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Broken {
    Unreadable(String),
    HashMismatch,
    WrongSeq { found: u64 },
    WrongPrev,
}

impl std::fmt::Display for Broken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Broken::Unreadable(e) => write!(f, "the entry cannot be read: {e}"),
            Broken::HashMismatch => write!(f, "the entry's content does not match its hash: it was changed after it was written"),
            Broken::WrongSeq { found } => write!(f, "the entry says it is number {found}: entries were moved or removed"),
            Broken::WrongPrev => write!(f, "the entry does not point at the previous entry's hash: an entry before it was changed, removed or inserted"),
        }
    }
}

/// Checks one stored entry as the link after (`seq - 1`, `prev_hash`) and returns it with its hash.
pub fn open_link(stored: &[u8], seq: u64, prev_hash: &str) -> Result<(AuditEntry, String), Broken> {
    let s: Stored<'_> =
        serde_json::from_slice(stored).map_err(|e| Broken::Unreadable(e.to_string()))?;
    if hash_body(s.body.get()) != s.hash {
        return Err(Broken::HashMismatch);
    }
    let entry: AuditEntry =
        serde_json::from_str(s.body.get()).map_err(|e| Broken::Unreadable(e.to_string()))?;
    if entry.seq != seq {
        return Err(Broken::WrongSeq { found: entry.seq });
    }
    if entry.prev_hash != prev_hash {
        return Err(Broken::WrongPrev);
    }
    Ok((entry, s.hash))
}

/// Reads a stored entry without checking the chain (for listing).
pub fn read(stored: &[u8]) -> Result<AuditRecord, String> {
    let s: Stored<'_> = serde_json::from_slice(stored).map_err(|e| e.to_string())?;
    let entry = serde_json::from_str(s.body.get()).map_err(|e| e.to_string())?;
    Ok(AuditRecord {
        entry,
        hash: s.hash,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64, prev: &str) -> AuditEntry {
        AuditEntry {
            seq,
            at: Utc::now(),
            actor: Actor {
                kind: "user".into(),
                id: "usr_1".into(),
                name: "ann".into(),
            },
            action: "policy.create".into(),
            resource: ResourceRef {
                kind: "policy".into(),
                id: "pol_1".into(),
            },
            workspace_id: Some("a".into()),
            database_id: None,
            before: None,
            after: Some(serde_json::json!({"b": 1, "a": [1, 2]})),
            prev_hash: prev.into(),
        }
    }

    #[test]
    fn chain_links_and_tampering() {
        let (first, h1) = seal(&entry(1, GENESIS));
        let (second, _) = seal(&entry(2, &h1));
        assert!(open_link(&first, 1, GENESIS).is_ok());
        assert!(open_link(&second, 2, &h1).is_ok());
        assert_eq!(
            open_link(&second, 2, GENESIS).unwrap_err(),
            Broken::WrongPrev
        );
        assert_eq!(
            open_link(&second, 3, &h1).unwrap_err(),
            Broken::WrongSeq { found: 2 }
        );
        let edited = String::from_utf8(first)
            .unwrap()
            .replace("\"b\":1", "\"b\":2");
        assert_eq!(
            open_link(edited.as_bytes(), 1, GENESIS).unwrap_err(),
            Broken::HashMismatch
        );
        assert!(matches!(
            open_link(b"{", 1, GENESIS),
            Err(Broken::Unreadable(_))
        ));
    }
}

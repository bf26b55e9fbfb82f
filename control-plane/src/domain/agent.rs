//! Agents and their enrolment tokens.
//!
//! An enrolment token (`bwe_` + 64 hex digits) is made by a workspace admin, shown once, stored
//! only as its BLAKE3 hash (like API tokens, but under its own derive-key context so one can
//! never pass for the other), valid for one enrolment before its expiry. Enrolment turns it
//! into an agent: an id, the workspace of the token, and a client certificate from the built-in
//! CA, recorded by SHA-256 fingerprint, serial and validity. During renewal the previous
//! certificate stays valid until the new one is first used (or the old one expires).

use bulwark_core::api::{DeclaredDatabase, ENROLLMENT_TOKEN_PREFIX};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::database::DatabaseType;
use super::{check_slug, Violation};

pub const DEFAULT_ENROLLMENT_TTL_SECS: i64 = 3600;
pub const ENROLLMENT_TTL_RANGE: std::ops::RangeInclusive<i64> = 60..=7 * 86_400;
/// Most databases one agent may declare (a heartbeat body stays small).
pub const MAX_DECLARED_DATABASES: usize = 256;

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrollmentTokenBody {
    /// The workspace the enrolled agent will belong to.
    pub workspace_id: String,
    /// Seconds until the token expires: 60 to 604800 (7 days), default 3600.
    #[serde(default)]
    pub expires_in_secs: Option<i64>,
    /// Free text, e.g. the host it is meant for (at most 200 characters).
    #[serde(default)]
    pub note: Option<String>,
}

impl EnrollmentTokenBody {
    pub fn check(&self) -> Vec<Violation> {
        let mut problems = Vec::new();
        if let Err(e) = check_slug(&self.workspace_id) {
            problems.push(Violation::new("workspace_id", e));
        }
        if let Some(n) = self.expires_in_secs {
            if !ENROLLMENT_TTL_RANGE.contains(&n) {
                problems.push(Violation::new(
                    "expires_in_secs",
                    format!(
                        "must be between {} and {} seconds (7 days) (got {n})",
                        ENROLLMENT_TTL_RANGE.start(),
                        ENROLLMENT_TTL_RANGE.end()
                    ),
                ));
            }
        }
        if let Some(note) = &self.note {
            super::check_text(&mut problems, "note", note, 200);
        }
        problems
    }

    pub fn ttl(&self) -> chrono::Duration {
        chrono::Duration::seconds(self.expires_in_secs.unwrap_or(DEFAULT_ENROLLMENT_TTL_SECS))
    }
}

/// An enrolment token as stored and shown (never the secret).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EnrollmentToken {
    pub id: String,
    pub workspace_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// Set when an agent enrolled with it; it cannot be used again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_by_agent: Option<String>,
}

/// Why an enrolment token cannot be used now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenRefusal {
    Unknown,
    Used { at: DateTime<Utc> },
    Expired { at: DateTime<Utc> },
}

impl TokenRefusal {
    pub fn message(&self) -> String {
        match self {
            TokenRefusal::Unknown => "the enrolment token is unknown; create one with POST /api/v1/agents/enrollment-tokens".into(),
            TokenRefusal::Used { at } => format!(
                "the enrolment token was already used (at {at}); tokens are one-time, create a new one"
            ),
            TokenRefusal::Expired { at } => {
                format!("the enrolment token expired at {at}; create a new one")
            }
        }
    }
}

impl EnrollmentToken {
    /// Whether it may enrol an agent at `now`.
    pub fn usable(&self, now: DateTime<Utc>) -> Result<(), TokenRefusal> {
        if let Some(at) = self.used_at {
            return Err(TokenRefusal::Used { at });
        }
        if now >= self.expires_at {
            return Err(TokenRefusal::Expired {
                at: self.expires_at,
            });
        }
        Ok(())
    }
}

/// The answer to token creation: the only time the secret is shown.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct NewEnrollmentToken {
    #[serde(flatten)]
    pub token: EnrollmentToken,
    /// Give this to `bulwark-agent enroll --token`. It is not stored and cannot be shown again.
    pub secret: String,
}

/// A fresh enrolment secret and the hash under which it is stored.
pub fn new_enrollment_secret() -> (String, String) {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system's random source failed");
    let secret = format!("{ENROLLMENT_TOKEN_PREFIX}{}", hex::encode(bytes));
    let hash = hash_enrollment_secret(&secret);
    (secret, hash)
}

pub fn hash_enrollment_secret(secret: &str) -> String {
    hex::encode(blake3::derive_key(
        "bulwark control-plane enrollment token v1",
        secret.trim().as_bytes(),
    ))
}

/// One certificate issued to an agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AgentCert {
    pub serial: String,
    /// SHA-256 of the DER, `AA:BB:…`.
    pub fingerprint: String,
    pub not_before: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// A database an agent declared, as last reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AgentDatabase {
    pub id: String,
    #[serde(rename = "type")]
    pub db_type: DatabaseType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_version: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Agent {
    pub id: String,
    pub workspace_id: String,
    pub hostname: String,
    pub version: String,
    pub databases: Vec<AgentDatabase>,
    pub cert: AgentCert,
    /// The certificate before the last renewal, valid until the new one is first used.
    #[serde(default)]
    pub previous_cert: Option<AgentCert>,
    pub created_at: DateTime<Utc>,
    #[serde(default)]
    pub last_heartbeat_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub revoked_at: Option<DateTime<Utc>>,
}

/// An agent as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AgentView {
    pub id: String,
    pub workspace_id: String,
    pub hostname: String,
    pub version: String,
    pub databases: Vec<AgentDatabase>,
    pub created_at: DateTime<Utc>,
    pub last_heartbeat_at: Option<DateTime<Utc>>,
    pub certificate_serial: String,
    pub certificate_expires_at: DateTime<Utc>,
    pub revoked: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<DateTime<Utc>>,
}

impl Agent {
    pub fn view(&self) -> AgentView {
        AgentView {
            id: self.id.clone(),
            workspace_id: self.workspace_id.clone(),
            hostname: self.hostname.clone(),
            version: self.version.clone(),
            databases: self.databases.clone(),
            created_at: self.created_at,
            last_heartbeat_at: self.last_heartbeat_at,
            certificate_serial: self.cert.serial.clone(),
            certificate_expires_at: self.cert.expires_at,
            revoked: self.revoked_at.is_some(),
            revoked_at: self.revoked_at,
        }
    }

    /// The certificate (current or previous) with this fingerprint.
    pub fn cert_with(&self, fingerprint: &str) -> Option<&AgentCert> {
        std::iter::once(&self.cert)
            .chain(self.previous_cert.as_ref())
            .find(|c| c.fingerprint == fingerprint)
    }
}

/// When an agent should renew a certificate: two thirds into its life.
pub fn renew_after(cert: &AgentCert) -> DateTime<Utc> {
    cert.not_before + (cert.expires_at - cert.not_before) * 2 / 3
}

/// Checks what an agent says about itself (host name, version, databases). The databases that
/// pass come back with their types; the others are reported per database, not as a failure.
pub fn check_agent_facts(hostname: &str, version: &str) -> Vec<Violation> {
    let mut problems = Vec::new();
    super::check_text(&mut problems, "hostname", hostname, 253);
    super::check_text(&mut problems, "agent_version", version, 64);
    problems
}

/// A declared database as the control plane will record it, or why it cannot.
pub fn check_declared(db: &DeclaredDatabase) -> Result<AgentDatabase, String> {
    check_slug(&db.id)?;
    let db_type: DatabaseType = db.db_type.parse().map_err(|e| format!("{e}"))?;
    if db.server_version.as_ref().is_some_and(|v| v.len() > 200) {
        return Err("server_version is longer than 200 characters".into());
    }
    Ok(AgentDatabase {
        id: db.id.clone(),
        db_type,
        server_version: db.server_version.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(expires_in: i64) -> EnrollmentToken {
        let now = Utc::now();
        EnrollmentToken {
            id: "ent_1".into(),
            workspace_id: "acme".into(),
            note: None,
            created_by: "u".into(),
            created_at: now,
            expires_at: now + chrono::Duration::seconds(expires_in),
            used_at: None,
            used_by_agent: None,
        }
    }

    #[test]
    fn tokens_are_prefixed_hashed_one_time_and_expire() {
        let (secret, hash) = new_enrollment_secret();
        assert!(secret.starts_with("bwe_") && secret.len() == 4 + 64);
        assert_eq!(hash, hash_enrollment_secret(&secret));
        assert_ne!(hash, crate::domain::user::hash_secret(&secret));
        assert!(!hash.contains(&secret[4..]));
        let now = Utc::now();
        assert!(token(60).usable(now).is_ok());
        assert!(matches!(
            token(-1).usable(now),
            Err(TokenRefusal::Expired { .. })
        ));
        let mut used = token(60);
        used.used_at = Some(now);
        assert!(matches!(used.usable(now), Err(TokenRefusal::Used { .. })));
        assert!(used
            .usable(now)
            .unwrap_err()
            .message()
            .contains("already used"));
    }

    #[test]
    fn token_bodies_are_checked() {
        let body = |ws: &str, secs: Option<i64>| EnrollmentTokenBody {
            workspace_id: ws.into(),
            expires_in_secs: secs,
            note: None,
        };
        assert!(body("acme", None).check().is_empty());
        assert_eq!(body("acme", None).ttl().num_seconds(), 3600);
        assert!(body("acme", Some(7 * 86_400)).check().is_empty());
        assert_eq!(
            body("acme", Some(7 * 86_400 + 1)).check()[0].path,
            "expires_in_secs"
        );
        assert_eq!(body("acme", Some(59)).check()[0].path, "expires_in_secs");
        assert_eq!(body("Bad Ws", None).check()[0].path, "workspace_id");
    }

    #[test]
    fn declared_databases_and_renewal_time() {
        let d = |id: &str, t: &str| DeclaredDatabase {
            id: id.into(),
            db_type: t.into(),
            server_version: None,
        };
        assert_eq!(
            check_declared(&d("orders", "postgresql")).unwrap().db_type,
            DatabaseType::Postgresql
        );
        assert!(check_declared(&d("orders", "oracle")).is_err());
        assert!(check_declared(&d("../x", "sqlite")).is_err());
        let t0 = Utc::now();
        let cert = AgentCert {
            serial: "01".into(),
            fingerprint: "AA".into(),
            not_before: t0,
            expires_at: t0 + chrono::Duration::days(30),
        };
        assert_eq!(renew_after(&cert), t0 + chrono::Duration::days(20));
        assert!(check_agent_facts("db1.example", "0.1.0").is_empty());
        assert_eq!(check_agent_facts("", "0.1.0")[0].path, "hostname");
    }
}

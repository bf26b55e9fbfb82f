//! The messages agents and the control plane exchange on `/agent/v1/…`: plain serde structs, so
//! both sides compile against one definition and neither can drift. No HTTP here — the agent's
//! client (`bulwark-agent`'s `control.rs`) and the control plane's handlers carry them.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Prefix of enrolment tokens (`bwe_` + 64 hex digits), recognisable in logs and by scanners.
pub const ENROLLMENT_TOKEN_PREFIX: &str = "bwe_";

/// A database declared in the agent's configuration, as reported at enrolment and in heartbeats.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeclaredDatabase {
    /// The `id` of the `[[databases]]` entry; becomes the database id in the workspace.
    pub id: String,
    /// `postgresql`, `sqlite`, …
    #[serde(rename = "type")]
    pub db_type: String,
    /// What `discover` found, when the database answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_version: Option<String>,
}

/// `POST /agent/v1/enroll`: authenticated by the one-time token, not by a certificate.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    pub token: String,
    /// PKCS#10 request made on the host; the private key never leaves it.
    pub csr_pem: String,
    pub hostname: String,
    pub agent_version: String,
    #[serde(default)]
    pub databases: Vec<DeclaredDatabase>,
}

/// One declared database the control plane could not register (its id is taken elsewhere, or
/// it is not a valid id or type). Enrolment and heartbeats still succeed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabaseConflict {
    pub id: String,
    pub problem: String,
}

/// The answer to enrolment: the agent's identity and its first certificate.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnrollResponse {
    pub agent_id: String,
    pub workspace_id: String,
    pub certificate_pem: String,
    /// The control plane's agent CA (issues client certificates; not the server's TLS identity).
    pub ca_certificate_pem: String,
    pub expires_at: DateTime<Utc>,
    /// When the agent should ask for a new certificate (two thirds of its life).
    pub renew_after: DateTime<Utc>,
    #[serde(default)]
    pub conflicts: Vec<DatabaseConflict>,
}

/// `POST /agent/v1/heartbeat`, over mutual TLS.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    pub agent_version: String,
    #[serde(default)]
    pub databases: Vec<DeclaredDatabase>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeartbeatResponse {
    pub agent_id: String,
    pub workspace_id: String,
    pub received_at: DateTime<Utc>,
    /// Expiry of the certificate this request came with.
    pub certificate_expires_at: DateTime<Utc>,
    #[serde(default)]
    pub conflicts: Vec<DatabaseConflict>,
}

/// `POST /agent/v1/renew`, over mutual TLS with the current certificate.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    pub csr_pem: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RenewResponse {
    pub certificate_pem: String,
    pub expires_at: DateTime<Utc>,
    pub renew_after: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_are_refused_and_types_renamed() {
        let hb: Heartbeat = serde_json::from_str(
            r#"{"agent_version":"0.1.0","databases":[{"id":"orders","type":"postgresql"}]}"#,
        )
        .unwrap();
        assert_eq!(hb.databases[0].db_type, "postgresql");
        assert!(serde_json::from_str::<Heartbeat>(r#"{"agent_version":"1","x":1}"#).is_err());
    }
}

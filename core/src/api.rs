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

/// Longest long-poll an agent may ask for; proxies and load balancers commonly cut idle
/// requests at 60 s, so half of that leaves room.
pub const MAX_POLL_WAIT_SECS: u32 = 30;

/// `POST /agent/v1/jobs/poll`: waits up to `wait_secs` for a job of this agent.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PollRequest {
    /// 0..=30 seconds; default 25.
    #[serde(default)]
    pub wait_secs: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PollResponse {
    /// `None`: nothing to do yet, poll again.
    pub job: Option<AgentJob>,
}

/// A job handed to an agent. Only the agent whose certificate asked receives it, and only for a
/// database of its own workspace.
#[derive(Clone, Serialize, Deserialize)]
pub struct AgentJob {
    pub id: String,
    pub workspace_id: String,
    pub database_id: String,
    /// `postgresql`, `sqlite`, … as registered.
    pub database_type: String,
    /// `logical` / `physical`; `None`: the agent configuration's method.
    #[serde(default)]
    pub method: Option<String>,
    /// `manual` or `automatic`: the snapshot kind recorded in the manifest.
    pub snapshot_kind: String,
    #[serde(default)]
    pub tags: std::collections::BTreeMap<String, String>,
    /// 1 for the first try, 2.. for retries.
    pub attempt: u32,
    /// The workspace key-encryption key, 64 hex digits: it opens (or first creates) the agent's
    /// repository. Agents keep it in memory only.
    pub workspace_key: String,
}

impl std::fmt::Debug for AgentJob {
    /// Never prints the workspace key (jobs end up in logs).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentJob")
            .field("id", &self.id)
            .field("workspace_id", &self.workspace_id)
            .field("database_id", &self.database_id)
            .field("method", &self.method)
            .field("snapshot_kind", &self.snapshot_kind)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

/// `POST /agent/v1/jobs/{id}/progress`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobProgress {
    /// What the agent is doing: `checking`, `reading`, `committing`, …
    pub phase: String,
    /// Bytes read from the database so far.
    pub bytes: u64,
    /// 0..=100 when the total is known.
    #[serde(default)]
    pub percent: Option<f64>,
}

/// `POST /agent/v1/jobs/{id}/result`: sent until acknowledged; the same result sent twice
/// records one backup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobResult {
    pub succeeded: bool,
    /// The snapshot's name in the repository, when one was written.
    #[serde(default)]
    pub snapshot: Option<String>,
    #[serde(default)]
    pub logical_bytes: u64,
    /// Bytes this backup added to the repository.
    #[serde(default)]
    pub stored_bytes: u64,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobAck {
    pub job_id: String,
    /// The catalog entry this job's backup is recorded under.
    pub backup_id: String,
    /// The job's status after this report (`running`, `succeeded`, `failed`).
    pub status: String,
    /// The result had been recorded before: nothing changed.
    #[serde(default)]
    pub duplicate: bool,
    /// The control plane no longer wants this job (it was cancelled or given up): stop it.
    #[serde(default)]
    pub cancel: bool,
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

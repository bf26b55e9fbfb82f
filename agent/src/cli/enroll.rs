//! `enroll` and `heartbeat`: join a control plane and talk to it over mutual TLS.
//!
//! `enroll` makes the key pair here, sends a CSR with the one-time token and the databases of
//! the configuration (with what `discover` finds; a database that does not answer is still
//! declared), and keeps the certificate, key and server pin in the state directory.
//! `heartbeat` reports once (the daemon will do it periodically) and renews the certificate
//! when two thirds of its life have passed.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use bulwark_core::api::{DeclaredDatabase, EnrollRequest, Heartbeat};
use serde_json::json;

use super::{output, Global};
use crate::control::{
    new_key_and_csr, write_private, AgentState, Client, Fingerprint, StateDir, DEFAULT_STATE_DIR,
};
use crate::drivers::driver_for;

/// How long one database may take to answer `discover` before it is declared without facts.
const DISCOVER_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(clap::Args, Debug)]
#[command(after_help = "\
Example:
  bulwark-agent enroll --server https://bulwark.example:8443 --token bwe_… \\
      --ca-fingerprint sha256:3f2a…   # the sha256 the control plane logs at start

The token comes from POST /api/v1/agents/enrollment-tokens (one-time, expiring). The key pair is \
made on this host; only a certificate signing request is sent.")]
pub struct EnrollArgs {
    /// Control plane URL, e.g. https://bulwark.example:8443
    #[arg(long, value_name = "URL")]
    server: String,
    /// One-time enrolment token (bwe_…)
    #[arg(long, env = "BULWARK_ENROLL_TOKEN", hide_env_values = true)]
    token: String,
    /// SHA-256 fingerprint of the control plane's TLS certificate, as it logs it at start
    /// (sha256:<hex>, colons allowed); pinned for this and every later call
    #[arg(long, value_name = "sha256:HEX")]
    ca_fingerprint: String,
    /// Where the key, certificates and state are kept
    #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR, env = "BULWARK_STATE_DIR")]
    state_dir: PathBuf,
    /// Host name to register (default: this host's name)
    #[arg(long)]
    hostname: Option<String>,
    /// Enrol again even though the state directory already holds an enrolment
    #[arg(long)]
    force: bool,
}

#[derive(clap::Args, Debug)]
pub struct HeartbeatArgs {
    /// Where `enroll` kept the key, certificates and state
    #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR, env = "BULWARK_STATE_DIR")]
    state_dir: PathBuf,
    /// Renew the certificate now, even before two thirds of its life have passed
    #[arg(long)]
    renew: bool,
}

/// The configured databases, each with its server version when `discover` answers in time.
pub(super) async fn declared_databases(g: &Global) -> Vec<DeclaredDatabase> {
    let mut out = Vec::new();
    for db in &g.settings.databases {
        let driver = driver_for(db);
        let server_version = match tokio::time::timeout(DISCOVER_TIMEOUT, driver.discover()).await {
            Ok(Ok(found)) => Some(found.server_version),
            Ok(Err(e)) => {
                tracing::warn!(database = %db.id, error = %e, "discovery failed; declaring the database without it");
                None
            }
            Err(_) => {
                tracing::warn!(database = %db.id, "discovery timed out; declaring the database without it");
                None
            }
        };
        out.push(DeclaredDatabase {
            id: db.id.clone(),
            db_type: db.kind.as_str().to_string(),
            server_version,
        });
    }
    out
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates on success.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc == 0 {
        let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
        if let Ok(name) = std::str::from_utf8(&buf[..end]) {
            if !name.is_empty() {
                return name.to_string();
            }
        }
    }
    "localhost".to_string()
}

pub async fn enroll(g: &Global, a: EnrollArgs) -> Result<ExitCode> {
    let pin = Fingerprint::parse(&a.ca_fingerprint).map_err(|e| super::usage(e.to_string()))?;
    let dir = StateDir::new(&a.state_dir);
    if dir.state().exists() && !a.force {
        let known = dir.load().map(|s| s.agent_id).unwrap_or_default();
        return Err(super::usage(format!(
            "{} already holds an enrolment (agent {known}); pass --force to enrol again or choose another --state-dir",
            dir.path.display()
        )));
    }
    let client = Client::new(&a.server, pin, None).map_err(usage_or)?;
    dir.create()?;
    let hostname = a.hostname.unwrap_or_else(hostname);
    let (key_pem, csr_pem) = new_key_and_csr(&hostname)?;
    let databases = declared_databases(g).await;
    let answer = client
        .enroll(&EnrollRequest {
            token: a.token,
            csr_pem,
            hostname: hostname.clone(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            databases: databases.clone(),
        })
        .await?;
    dir.store_identity(&answer.certificate_pem, &key_pem)?;
    write_private(&dir.ca(), answer.ca_certificate_pem.as_bytes())?;
    dir.save(&AgentState {
        agent_id: answer.agent_id.clone(),
        workspace_id: answer.workspace_id.clone(),
        server_url: a.server.trim_end_matches('/').to_string(),
        server_fingerprint: pin.to_string(),
        certificate_expires_at: answer.expires_at,
        renew_after: answer.renew_after,
    })?;
    if g.json {
        output::json(&json!({
            "agent_id": answer.agent_id,
            "workspace_id": answer.workspace_id,
            "hostname": hostname,
            "state_dir": dir.path,
            "certificate_expires_at": answer.expires_at,
            "renew_after": answer.renew_after,
            "databases": databases,
            "conflicts": answer.conflicts,
        }));
    } else {
        println!(
            "enrolled as agent {} in workspace {} (certificate valid until {}; state in {})",
            answer.agent_id,
            answer.workspace_id,
            answer.expires_at,
            dir.path.display()
        );
        for d in &databases {
            println!("  declared database {} ({})", d.id, d.db_type);
        }
        for c in &answer.conflicts {
            println!("  NOT registered: {}: {}", c.id, c.problem);
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn heartbeat(g: &Global, a: HeartbeatArgs) -> Result<ExitCode> {
    let dir = StateDir::new(&a.state_dir);
    let (client, mut state) = Client::enrolled(&dir).map_err(usage_or)?;
    let answer = client
        .heartbeat(&Heartbeat {
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            databases: declared_databases(g).await,
        })
        .await?;
    let due = a.renew || chrono::Utc::now() >= state.renew_after;
    let renewed = if due {
        let new = dir.renew(&client).await?;
        state.certificate_expires_at = new.expires_at;
        state.renew_after = new.renew_after;
        true
    } else {
        false
    };
    if g.json {
        output::json(&json!({
            "agent_id": answer.agent_id,
            "received_at": answer.received_at,
            "renewed": renewed,
            "certificate_expires_at": state.certificate_expires_at,
            "renew_after": state.renew_after,
            "conflicts": answer.conflicts,
        }));
    } else {
        println!("heartbeat accepted at {}", answer.received_at);
        if renewed {
            println!(
                "certificate renewed; valid until {}",
                state.certificate_expires_at
            );
        }
        for c in &answer.conflicts {
            println!("  NOT registered: {}: {}", c.id, c.problem);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Usage mistakes (a bad URL, not enrolled) exit 2; the rest stays a runtime failure.
pub(super) fn usage_or(e: crate::control::ControlError) -> anyhow::Error {
    if e.is_usage() {
        super::usage(e.to_string())
    } else {
        e.into()
    }
}

//! `enroll` and `heartbeat`: join a control plane and talk to it over mutual TLS.
//!
//! `enroll` makes the key pair here, sends a CSR with the one-time token and the databases of
//! the configuration (with what `discover` finds; a database that does not answer is still
//! declared), and keeps the certificate, key and server pin in the state directory.
//! `heartbeat` reports once (the daemon will do it periodically) and renews the certificate
//! when two thirds of its life have passed.
//!
//! The enrolment token is never a command-line argument: every user of the host can read a
//! process's arguments (`ps`, `/proc/<pid>/cmdline`) and shells keep them in their history. It
//! comes from a file (`--token-file`), from stdin (`--token-file -`) or from the environment
//! (`BULWARK_ENROLL_TOKEN`, readable only by the same user and root).

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
  bulwark-agent enroll --server https://bulwark.example:8443 --token-file /root/enroll-token \\
      --ca-fingerprint sha256:3f2a…   # the sha256 the control plane logs at start
  echo \"$TOKEN\" | bulwark-agent enroll --token-file - --server … --ca-fingerprint …
  BULWARK_ENROLL_TOKEN=bwe_… bulwark-agent enroll --server … --ca-fingerprint …

The token comes from POST /api/v1/agents/enrollment-tokens (one-time, expiring). It is never \
taken from the command line, where other users of the host could read it. The key pair is made \
on this host; only a certificate signing request is sent.")]
pub struct EnrollArgs {
    /// Control plane URL, e.g. https://bulwark.example:8443
    #[arg(long, value_name = "URL")]
    server: String,
    /// File holding the one-time enrolment token (bwe_…), or `-` for stdin. Without it, the
    /// token is read from the environment variable BULWARK_ENROLL_TOKEN
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Refused: a token on the command line is readable by every user of the host
    #[arg(long, hide = true, value_name = "TOKEN")]
    token: Option<String>,
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
pub(crate) async fn declared_databases(g: &Global) -> Vec<DeclaredDatabase> {
    let mut out = Vec::new();
    for db in &g.settings.databases {
        // Loading the configuration refused types without a driver.
        let Ok(driver) = driver_for(db) else { continue };
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

/// The environment variable that may hold the enrolment token.
pub const TOKEN_ENV: &str = "BULWARK_ENROLL_TOKEN";
/// Longer than any token; a bigger "token file" is the wrong file.
const MAX_TOKEN_FILE: u64 = 4096;

/// The enrolment token from `--token-file` (a path, or `-` for stdin) or, without it, from
/// [`TOKEN_ENV`]; surrounding whitespace (a trailing newline) is dropped.
fn enrollment_token(
    token_file: Option<&std::path::Path>,
    from_env: Option<String>,
    stdin: impl std::io::Read,
) -> Result<String> {
    use std::io::Read;
    let (text, origin) = match token_file {
        Some(path) if path.as_os_str() == "-" => {
            let mut text = String::new();
            stdin
                .take(MAX_TOKEN_FILE + 1)
                .read_to_string(&mut text)
                .map_err(|e| super::usage(format!("cannot read the enrolment token from stdin: {e}")))?;
            (text, "stdin".to_string())
        }
        Some(path) => {
            let mut text = String::new();
            std::fs::File::open(path)
                .and_then(|f| f.take(MAX_TOKEN_FILE + 1).read_to_string(&mut text))
                .map_err(|e| {
                    super::usage(format!(
                        "cannot read the enrolment token file {}: {e}",
                        path.display()
                    ))
                })?;
            (text, path.display().to_string())
        }
        None => match from_env {
            Some(text) => (text, TOKEN_ENV.to_string()),
            None => {
                return Err(super::usage(format!(
                    "no enrolment token: pass --token-file FILE, --token-file - (stdin) or set {TOKEN_ENV}"
                )))
            }
        },
    };
    let token = text.trim();
    if token.is_empty() || text.len() as u64 > MAX_TOKEN_FILE || token.contains(char::is_whitespace)
    {
        return Err(super::usage(format!(
            "{origin} does not hold one enrolment token (bwe_…, from POST /api/v1/agents/enrollment-tokens)"
        )));
    }
    Ok(token.to_string())
}

pub async fn enroll(g: &Global, a: EnrollArgs) -> Result<ExitCode> {
    if a.token.is_some() {
        return Err(super::usage(format!(
            "--token is not accepted: a token on the command line can be read by every user of this host (ps, /proc) and stays in shell history; pass --token-file FILE, --token-file - (stdin) or set {TOKEN_ENV}"
        )));
    }
    let token = enrollment_token(
        a.token_file.as_deref(),
        std::env::var(TOKEN_ENV).ok(),
        std::io::stdin(),
    )?;
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
            token,
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
            wal: crate::wal_target::all_archived(&dir.path),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_comes_from_a_file_stdin_or_the_environment_never_elsewhere() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "bwe_0123abcd\n").unwrap();
        let none = std::io::empty();
        assert_eq!(
            enrollment_token(Some(&file), Some("bwe_env".into()), none).unwrap(),
            "bwe_0123abcd",
            "the file wins over the environment"
        );
        let dash = std::path::Path::new("-");
        assert_eq!(
            enrollment_token(Some(dash), None, &b"  bwe_stdin\r\n"[..]).unwrap(),
            "bwe_stdin"
        );
        assert_eq!(
            enrollment_token(None, Some("bwe_env\n".into()), std::io::empty()).unwrap(),
            "bwe_env"
        );
        let e = enrollment_token(None, None, std::io::empty())
            .unwrap_err()
            .to_string();
        assert!(e.contains("--token-file") && e.contains(TOKEN_ENV), "{e}");
        let missing = dir.path().join("nope");
        let e = enrollment_token(Some(&missing), None, std::io::empty())
            .unwrap_err()
            .to_string();
        assert!(e.contains(&missing.display().to_string()), "{e}");
        for bad in ["", "\n", "bwe_a bwe_b", &"x".repeat(5000)] {
            std::fs::write(&file, bad).unwrap();
            let e = enrollment_token(Some(&file), None, std::io::empty()).unwrap_err();
            assert!(
                e.to_string().contains("does not hold one enrolment token"),
                "{e}"
            );
        }
    }
}

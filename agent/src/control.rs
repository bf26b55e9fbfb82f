//! The agent's side of the agent protocol: a small HTTPS client of the control plane and the
//! state directory that holds the agent's identity.
//!
//! **Trust of the server.** The control plane's TLS certificate is self-signed by default, not
//! issued by its agent CA, so the agent pins it: `enroll --ca-fingerprint sha256:<hex>` names the
//! SHA-256 fingerprint the control plane logs at start (`sha256=` of its server certificate, or
//! of any certificate of the chain it presents), the first call is accepted only from a server
//! presenting it, and the same pin is kept in `state.json` for every later call. Handshake
//! signatures are still verified, so a peer must hold the pinned certificate's key. A server
//! certificate change therefore needs a new enrolment (or an edit of `state.json`).
//!
//! **Identity of the agent.** The key pair is made on the host ([`new_key_and_csr`]); only the
//! CSR leaves it. `key.pem`, `cert.pem`, `ca.pem` (the agent CA, kept for reference) and
//! `state.json` live in the state directory (0711: traversable, not listable; files 0600).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bulwark_core::api::{
    AgentJob, EnrollRequest, EnrollResponse, Heartbeat, HeartbeatResponse, JobAck, JobProgress,
    JobResult, PollRequest, RenewRequest, RenewResponse, UnreadableJob,
};
use chrono::{DateTime, Utc};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde::{Deserialize, Serialize};

pub const DEFAULT_STATE_DIR: &str = "/var/lib/bulwark-agent";
const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("{0}")]
    Usage(String),
    #[error("the server at {url} presented a certificate with SHA-256 {found}, not the pinned {expected}; check --ca-fingerprint against the fingerprint the control plane logs at start")]
    Mismatch {
        url: String,
        expected: String,
        found: String,
    },
    #[error("cannot reach the control plane at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("the control plane refused {what} ({status} {code}): {message}")]
    Refused {
        what: &'static str,
        status: u16,
        code: String,
        message: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    State { path: PathBuf, reason: String },
    #[error("cannot make a key pair or CSR: {0}")]
    Key(String),
}

impl ControlError {
    pub fn is_usage(&self) -> bool {
        matches!(self, ControlError::Usage(_))
    }

    /// The control plane refused this agent's identity (revoked, unknown, expired certificate):
    /// retrying cannot help; the agent must be enrolled again.
    pub fn is_identity_refused(&self) -> bool {
        matches!(self, ControlError::Refused { status: 401, .. })
    }

    /// The request may succeed later (server down, restarting, overloaded).
    pub fn is_transient(&self) -> bool {
        match self {
            ControlError::Unreachable { .. } => true,
            ControlError::Refused { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }
}

type Result<T, E = ControlError> = std::result::Result<T, E>;

/// A SHA-256 certificate fingerprint.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    pub fn of(der: &[u8]) -> Fingerprint {
        let digest = ring::digest::digest(&ring::digest::SHA256, der);
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.as_ref());
        Fingerprint(out)
    }

    /// `sha256:<64 hex digits>`, with or without colons between pairs, any case; the `sha256:`
    /// prefix is optional.
    pub fn parse(s: &str) -> Result<Fingerprint> {
        let body = s.trim();
        let body = body
            .strip_prefix("sha256:")
            .or_else(|| body.strip_prefix("SHA256:"))
            .unwrap_or(body);
        let hex: String = body.chars().filter(|c| *c != ':').collect();
        let mut out = [0u8; 32];
        match hex::decode(&hex) {
            Ok(bytes) if bytes.len() == 32 => {
                out.copy_from_slice(&bytes);
                Ok(Fingerprint(out))
            }
            _ => Err(ControlError::Usage(format!(
                "'{s}' is not a SHA-256 fingerprint: expected sha256: followed by 64 hex digits (colons allowed), as the control plane logs it"
            ))),
        }
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.0))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// What `state.json` records.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentState {
    pub agent_id: String,
    pub workspace_id: String,
    pub server_url: String,
    /// `sha256:<hex>` of the server certificate (or a certificate of its chain).
    pub server_fingerprint: String,
    pub certificate_expires_at: DateTime<Utc>,
    pub renew_after: DateTime<Utc>,
}

/// The agent's state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    pub path: PathBuf,
}

impl StateDir {
    pub fn new(path: impl Into<PathBuf>) -> StateDir {
        StateDir { path: path.into() }
    }

    pub fn key(&self) -> PathBuf {
        self.path.join("key.pem")
    }
    pub fn cert(&self) -> PathBuf {
        self.path.join("cert.pem")
    }
    pub fn ca(&self) -> PathBuf {
        self.path.join("ca.pem")
    }
    pub fn state(&self) -> PathBuf {
        self.path.join("state.json")
    }

    /// Creates the directory (and sets the mode of an existing one): 0711, so that a
    /// database server's user can reach its own WAL binding ([`crate::wal_target`]) but list
    /// nothing; every file and other directory in it is owner-only.
    pub fn create(&self) -> Result<()> {
        create_dir_with_mode(&self.path, 0o711)
    }

    /// `<state>/results/`: finished jobs' results until the control plane has them (made 0700).
    pub fn results(&self) -> Result<PathBuf> {
        let path = self.path.join("results");
        create_private_dir(&path)?;
        Ok(path)
    }

    /// Replaces the certificate with a new one for a fresh key (asked for with `client`, the
    /// current identity) and records its dates in `state.json`.
    pub async fn renew(&self, client: &Client) -> Result<RenewResponse> {
        let mut state = self.load()?;
        let (key_pem, csr_pem) = new_key_and_csr(&state.agent_id)?;
        let new = client.renew(&RenewRequest { csr_pem }).await?;
        self.store_identity(&new.certificate_pem, &key_pem)?;
        state.certificate_expires_at = new.expires_at;
        state.renew_after = new.renew_after;
        self.save(&state)?;
        Ok(new)
    }

    pub fn load(&self) -> Result<AgentState> {
        let path = self.state();
        let text = std::fs::read_to_string(&path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                ControlError::Usage(format!(
                    "this host is not enrolled ({} does not exist): run `bulwark-agent enroll` first, or pass --state-dir",
                    path.display()
                ))
            } else {
                ControlError::Io {
                    path: path.clone(),
                    source,
                }
            }
        })?;
        serde_json::from_str(&text).map_err(|e| ControlError::State {
            path,
            reason: e.to_string(),
        })
    }

    pub fn save(&self, state: &AgentState) -> Result<()> {
        let text = serde_json::to_string_pretty(state).expect("state serialises");
        write_private(&self.state(), text.as_bytes())
    }

    fn read(&self, path: &Path) -> Result<String> {
        std::fs::read_to_string(path).map_err(|source| ControlError::Io {
            path: path.to_path_buf(),
            source,
        })
    }

    /// The certificate and key this agent authenticates with.
    pub fn identity(&self) -> Result<(String, String)> {
        Ok((self.read(&self.cert())?, self.read(&self.key())?))
    }

    /// Replaces key and certificate (each written to a temporary file, then renamed).
    pub fn store_identity(&self, cert_pem: &str, key_pem: &str) -> Result<()> {
        write_private(&self.key(), key_pem.as_bytes())?;
        write_private(&self.cert(), cert_pem.as_bytes())
    }
}

/// Writes a file owner-only: a temporary file beside it, fsync, rename.
/// Makes `path` (and its parents) with mode 0700, and sets 0700 if it existed.
pub fn create_private_dir(path: &Path) -> Result<()> {
    create_dir_with_mode(path, 0o700)
}

fn create_dir_with_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let io = |source| ControlError::Io {
        path: path.to_path_buf(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io)
}

pub fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let io = |source| ControlError::Io {
        path: path.to_path_buf(),
        source,
    };
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(bytes).and_then(|()| f.sync_all()).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// A new key pair (ECDSA P-256) and a CSR for it; the key stays on this host.
pub fn new_key_and_csr(hostname: &str) -> Result<(String, String)> {
    let key = rcgen::KeyPair::generate().map_err(|e| ControlError::Key(e.to_string()))?;
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, hostname);
    let csr = params
        .serialize_request(&key)
        .and_then(|c| c.pem())
        .map_err(|e| ControlError::Key(e.to_string()))?;
    Ok((key.serialize_pem(), csr))
}

/// An HTTPS client of one control plane, trusting only the pinned server certificate and
/// presenting the agent's certificate when it has one.
pub struct Client {
    http: reqwest::Client,
    base: String,
    pin: Fingerprint,
    mismatch: Arc<Mutex<Option<String>>>,
}

impl Client {
    pub fn new(server: &str, pin: Fingerprint, identity: Option<(&str, &str)>) -> Result<Client> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let base = server.trim_end_matches('/').to_string();
        if !base.starts_with("https://") {
            return Err(ControlError::Usage(format!(
                "the server URL must start with https:// (got '{server}')"
            )));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mismatch = Arc::new(Mutex::new(None));
        let verifier = Arc::new(PinnedVerifier {
            expected: pin,
            provider: provider.clone(),
            mismatch: mismatch.clone(),
        });
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ControlError::Key(format!("TLS: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let config = match identity {
            None => builder.with_no_client_auth(),
            Some((cert_pem, key_pem)) => {
                let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| ControlError::Key(format!("certificate: {e}")))?;
                let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
                    .map_err(|e| ControlError::Key(format!("private key: {e}")))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| ControlError::Key(format!("certificate and key: {e}")))?
            }
        };
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(config)
            .https_only(true)
            .timeout(TIMEOUT)
            .user_agent(concat!("bulwark-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ControlError::Key(format!("HTTP client: {e}")))?;
        Ok(Client {
            http,
            base,
            pin,
            mismatch,
        })
    }

    /// A client for an enrolled agent: the recorded server, pin and identity.
    pub fn enrolled(dir: &StateDir) -> Result<(Client, AgentState)> {
        let state = dir.load()?;
        let pin =
            Fingerprint::parse(&state.server_fingerprint).map_err(|_| ControlError::State {
                path: dir.state(),
                reason: "server_fingerprint is not a SHA-256 fingerprint".into(),
            })?;
        let (cert, key) = dir.identity()?;
        Ok((
            Client::new(&state.server_url, pin, Some((&cert, &key)))?,
            state,
        ))
    }

    async fn post<B: Serialize, R: serde::de::DeserializeOwned>(
        &self,
        what: &'static str,
        path: &str,
        body: &B,
    ) -> Result<R> {
        let url = format!("{}{path}", self.base);
        let response = match self.http.post(&url).json(body).send().await {
            Ok(r) => r,
            Err(e) => {
                if let Some(found) = self
                    .mismatch
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take()
                {
                    return Err(ControlError::Mismatch {
                        url,
                        expected: self.pin.to_string(),
                        found,
                    });
                }
                return Err(ControlError::Unreachable {
                    url,
                    reason: error_chain(&e),
                });
            }
        };
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| ControlError::Unreachable {
                url: url.clone(),
                reason: error_chain(&e),
            })?;
        if !status.is_success() {
            let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            return Err(ControlError::Refused {
                what,
                status: status.as_u16(),
                code: v["error"]["code"].as_str().unwrap_or("unknown").to_string(),
                message: v["error"]["message"]
                    .as_str()
                    .map_or_else(|| text.clone(), str::to_string),
            });
        }
        serde_json::from_str(&text).map_err(|e| ControlError::Unreachable {
            url,
            reason: format!("unexpected answer: {e}"),
        })
    }

    pub async fn enroll(&self, req: &EnrollRequest) -> Result<EnrollResponse> {
        self.post("the enrolment", "/agent/v1/enroll", req).await
    }

    pub async fn heartbeat(&self, req: &Heartbeat) -> Result<HeartbeatResponse> {
        self.post("the heartbeat", "/agent/v1/heartbeat", req).await
    }

    pub async fn renew(&self, req: &RenewRequest) -> Result<RenewResponse> {
        self.post("the certificate renewal", "/agent/v1/renew", req)
            .await
    }

    /// Waits up to `wait_secs` (≤ 30, below the client's 30 s timeout with the margin the
    /// server needs) for the next job, if one is due. A job this agent cannot read (a newer kind) comes back as
    /// `Some(Err(..))`, so the caller can fail it by its id.
    pub async fn poll(&self, wait_secs: u32) -> Result<Option<Result<AgentJob, UnreadableJob>>> {
        /// [`PollResponse`] with the job left unread.
        #[derive(serde::Deserialize)]
        struct Raw {
            job: Option<serde_json::Value>,
        }
        let req = PollRequest {
            wait_secs: Some(wait_secs.min(25)),
        };
        let raw: Raw = self
            .post("the job poll", "/agent/v1/jobs/poll", &req)
            .await?;
        let Some(value) = raw.job else {
            return Ok(None);
        };
        match AgentJob::from_value(value) {
            Ok(job) => Ok(Some(Ok(job))),
            Err(Some(unreadable)) => Ok(Some(Err(unreadable))),
            Err(None) => Err(ControlError::Unreachable {
                url: format!("{}/agent/v1/jobs/poll", self.base),
                reason: "unexpected answer: a job without an id".into(),
            }),
        }
    }

    pub async fn progress(&self, job: &str, req: &JobProgress) -> Result<JobAck> {
        self.post(
            "the progress report",
            &format!("/agent/v1/jobs/{job}/progress"),
            req,
        )
        .await
    }

    pub async fn result(&self, job: &str, req: &JobResult) -> Result<JobAck> {
        self.post(
            "the job result",
            &format!("/agent/v1/jobs/{job}/result"),
            req,
        )
        .await
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[derive(Debug)]
struct PinnedVerifier {
    expected: Fingerprint,
    provider: Arc<CryptoProvider>,
    mismatch: Arc<Mutex<Option<String>>>,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let pinned = std::iter::once(end_entity)
            .chain(intermediates)
            .any(|c| Fingerprint::of(c.as_ref()) == self.expected);
        if pinned {
            Ok(ServerCertVerified::assertion())
        } else {
            *self.mismatch.lock().unwrap_or_else(|p| p.into_inner()) =
                Some(Fingerprint::of(end_entity.as_ref()).to_string());
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_parse_in_every_usual_form() {
        let hex = "ab".repeat(32);
        let colons = vec!["AB"; 32].join(":");
        for s in [
            format!("sha256:{hex}"),
            hex.clone(),
            colons.clone(),
            format!("sha256:{colons}"),
        ] {
            assert_eq!(Fingerprint::parse(&s).unwrap().0, [0xab; 32], "{s}");
        }
        assert_eq!(
            Fingerprint::parse(&hex).unwrap().to_string(),
            format!("sha256:{hex}")
        );
        for bad in ["", "sha256:abcd", "sha256:zz", &"ab".repeat(33)] {
            assert!(Fingerprint::parse(bad).unwrap_err().is_usage(), "{bad}");
        }
    }

    #[test]
    fn keys_stay_local_and_files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let (key, csr) = new_key_and_csr("db1").unwrap();
        assert!(key.contains("PRIVATE KEY") && csr.contains("CERTIFICATE REQUEST"));
        assert!(!csr.contains(key.lines().nth(1).unwrap()));
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(tmp.path().join("state"));
        dir.create().unwrap();
        dir.store_identity("cert", &key).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.path), 0o711);
        assert_eq!(mode(&dir.key()), 0o600);
        assert_eq!(mode(&dir.cert()), 0o600);
        assert!(dir.load().unwrap_err().is_usage());
    }
}

//! The server's TLS identity. With no certificate configured, a self-signed one is made on first
//! start and kept in `<data-dir>/tls/` so clients can pin it across restarts (its SHA-256
//! fingerprint is logged).
//!
//! The same listener serves people (API tokens, no client certificate) and agents: it *asks*
//! for a client certificate and verifies any presented one against the built-in agent CA
//! ([`crate::pki`]); a certificate from another CA, or an expired one, fails the handshake.
//! The verified certificate reaches handlers as a [`PeerCertificate`] request extension, set
//! once per connection by the accept loop.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the TLS {what} {path}: {reason}")]
    Read {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("cannot write the self-signed certificate into {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot generate a self-signed certificate: {0}")]
    Generate(String),
    #[error("the TLS certificate {cert} and key {key} do not form a usable pair: {reason}")]
    Config {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
}

/// Where the self-signed pair lives.
pub fn self_signed_paths(data_dir: &Path) -> (PathBuf, PathBuf) {
    let dir = data_dir.join("tls");
    (dir.join("server.crt"), dir.join("server.key"))
}

/// Makes the self-signed pair if it does not exist yet; returns its paths.
pub fn ensure_self_signed(data_dir: &Path) -> Result<(PathBuf, PathBuf), TlsError> {
    let (cert_path, key_path) = self_signed_paths(data_dir);
    if cert_path.exists() && key_path.exists() {
        return Ok((cert_path, key_path));
    }
    let dir = cert_path.parent().expect("has a parent");
    crate::files::create_private_dir(dir).map_err(|source| TlsError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    if let Ok(host) = std::fs::read_to_string("/etc/hostname") {
        let host = host.trim();
        if !host.is_empty() {
            names.push(host.to_string());
        }
    }
    let pair =
        rcgen::generate_simple_self_signed(names).map_err(|e| TlsError::Generate(e.to_string()))?;
    write_private(&key_path, pair.signing_key.serialize_pem().as_bytes())?;
    write_private(&cert_path, pair.cert.pem().as_bytes())?;
    tracing::info!(cert = %cert_path.display(), "generated a self-signed TLS certificate");
    Ok((cert_path, key_path))
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    crate::files::write_private(path, bytes).map_err(|source| TlsError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// The client certificate a connection presented, already verified against the agent CA.
#[derive(Debug, Clone)]
pub struct PeerCertificate {
    /// SHA-256 of the DER, `AA:BB:…`: the key under which the control plane records it.
    pub fingerprint: Arc<str>,
}

/// A rustls server configuration for the certificate chain and key in these PEM files; with
/// `client_ca`, client certificates are requested (optional) and verified against it.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&CertificateDer<'static>>,
) -> Result<(Arc<rustls::ServerConfig>, String), TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| TlsError::Read {
            what: "certificate",
            path: cert.to_path_buf(),
            reason: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::Read {
            what: "certificate",
            path: cert.to_path_buf(),
            reason: "no PEM certificate in it".into(),
        });
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Read {
        what: "key",
        path: key.to_path_buf(),
        reason: e.to_string(),
    })?;
    let fingerprint = fingerprint(&chain[0]);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config_error = |reason: String| TlsError::Config {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        reason,
    };
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| config_error(e.to_string()))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots
                .add(ca.clone())
                .map_err(|e| config_error(format!("agent CA: {e}")))?;
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .allow_unauthenticated()
                    .build()
                    .map_err(|e| config_error(format!("agent CA: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, private)
        .map_err(|e| config_error(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((Arc::new(config), fingerprint))
}

/// SHA-256 of the certificate, colon-separated, as browsers and `openssl x509 -fingerprint` show it.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    let digest = ring_sha256(cert.as_ref());
    digest
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn ring_sha256(data: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .to_vec()
}

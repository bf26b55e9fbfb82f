//! The built-in certificate authority of the agent protocol. It is made on first start in
//! `<data-dir>/ca/`: `ca.crt` (PEM, public) and `ca.key.sealed` (the PEM private key sealed with
//! the control-plane key of [`crate::secrets`], associated data `agent-ca`), so a copy of the
//! data directory without `secrets.key` cannot issue certificates.
//!
//! It signs one kind of certificate: an agent's client certificate, from a CSR made on the
//! agent's host (the agent's private key never leaves it). Whatever the CSR asks for is ignored
//! except its public key (whose possession the CSR's signature proves): the subject is
//! `CN=<agent id>`, the SANs are the URIs `bulwark:agent:<id>` and `bulwark:workspace:<id>`,
//! the extended key usage is client authentication only, the serial is 128 random bits and the
//! validity is `agent_cert_days` (default 30). The control plane identifies a presented
//! certificate by its SHA-256 fingerprint, recorded at issuance — no X.509 parsing on the
//! request path.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::CertificateDer;

use crate::domain::agent::AgentCert;
use crate::secrets::SecretKey;

pub const CA_DIR: &str = "ca";
pub const CA_CERT_FILE: &str = "ca.crt";
pub const CA_KEY_FILE: &str = "ca.key.sealed";
const CA_KEY_AAD: &str = "agent-ca";
/// The CA itself lives long; agents' certificates are short-lived and renewed.
const CA_VALIDITY_DAYS: i64 = 3650;
/// Issued certificates start a little in the past, so a host whose clock is slightly behind
/// does not see a certificate that is not valid yet.
const BACKDATE_SECS: i64 = 300;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot read the agent CA {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("cannot write the agent CA into {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the agent CA key cannot be opened: {0}")]
    Secrets(#[from] crate::secrets::SecretsError),
    #[error("cannot make a certificate: {0}")]
    Generate(String),
    #[error("the certificate signing request is not valid: {0}")]
    BadCsr(String),
}

/// A certificate the CA issued.
#[derive(Debug, Clone)]
pub struct Issued {
    pub pem: String,
    pub der: Vec<u8>,
    /// Hex, as `openssl x509 -serial` shows it.
    pub serial: String,
    /// SHA-256 of the DER, `AA:BB:…` (the same form as the server's logged fingerprint).
    pub fingerprint: String,
    pub not_before: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
}

/// The agent CA: its certificate and its signing key (held in memory only).
pub struct Ca {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ca({})", self.fingerprint())
    }
}

impl Ca {
    /// Loads `<data_dir>/ca/`, creating the CA on first start. A half-present CA (certificate
    /// without key or the reverse) is an error, not a reason to make a new one: certificates
    /// already issued would stop working.
    pub fn load_or_create(data_dir: &Path, secrets: &SecretKey) -> Result<Ca, PkiError> {
        let dir = data_dir.join(CA_DIR);
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        match (cert_path.exists(), key_path.exists()) {
            (true, true) => Ca::load(&cert_path, &key_path, secrets),
            (false, false) => Ca::create(&dir, &cert_path, &key_path, secrets),
            (has_cert, _) => Err(PkiError::Read {
                path: if has_cert { key_path } else { cert_path },
                reason: "missing while the rest of the agent CA exists; restore it from a backup of the data directory".into(),
            }),
        }
    }

    fn load(cert_path: &Path, key_path: &Path, secrets: &SecretKey) -> Result<Ca, PkiError> {
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|e| PkiError::Read {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })
        };
        let cert_pem = read(cert_path)?;
        let key_pem = secrets.open(CA_KEY_AAD, read(key_path)?.trim())?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| PkiError::Read {
            path: key_path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let bad_cert = |reason: String| PkiError::Read {
            path: cert_path.to_path_buf(),
            reason,
        };
        let cert_der = rustls::pki_types::pem::PemObject::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| bad_cert(e.to_string()))?;
        let issuer =
            Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|e| bad_cert(e.to_string()))?;
        Ok(Ca {
            cert_pem,
            cert_der,
            issuer,
        })
    }

    fn create(
        dir: &Path,
        cert_path: &Path,
        key_path: &Path,
        secrets: &SecretKey,
    ) -> Result<Ca, PkiError> {
        let key = KeyPair::generate().map_err(|e| PkiError::Generate(e.to_string()))?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, "Bulwark agent CA");
        name.push(DnType::OrganizationName, "Bulwark");
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial());
        let now = Utc::now();
        params.not_before = to_time(now - chrono::Duration::seconds(BACKDATE_SECS))?;
        params.not_after = to_time(now + chrono::Duration::days(CA_VALIDITY_DAYS))?;
        let cert = params
            .self_signed(&key)
            .map_err(|e| PkiError::Generate(e.to_string()))?;
        crate::files::create_private_dir(dir).map_err(|e| PkiError::Write {
            path: dir.to_path_buf(),
            source: std::io::Error::other(format!(
                "cannot create the data directory {}: {e}",
                dir.display()
            )),
        })?;
        let sealed = secrets.seal(CA_KEY_AAD, &key.serialize_pem());
        // Key first: a crash in between leaves a key without certificate, which load refuses
        // loudly instead of silently making a second CA.
        write_private(key_path, sealed.as_bytes())?;
        write_private(cert_path, cert.pem().as_bytes())?;
        tracing::info!(cert = %cert_path.display(), "created the agent CA");
        Ok(Ca {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    pub fn fingerprint(&self) -> String {
        crate::tls::fingerprint(&self.cert_der)
    }

    /// Signs an agent certificate for the public key in `csr_pem`, valid from `not_before`
    /// (moved back a few minutes for clock skew) to `not_after`.
    pub fn issue(
        &self,
        csr_pem: &str,
        agent_id: &str,
        workspace_id: &str,
        not_before: DateTime<Utc>,
        not_after: DateTime<Utc>,
    ) -> Result<Issued, PkiError> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| PkiError::BadCsr(e.to_string()))?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, agent_id);
        name.push(DnType::OrganizationalUnitName, workspace_id);
        params.distinguished_name = name;
        let uri = |s: String| {
            s.try_into()
                .map(SanType::URI)
                .map_err(|e: rcgen::Error| PkiError::Generate(e.to_string()))
        };
        params.subject_alt_names = vec![
            uri(format!("bulwark:agent:{agent_id}"))?,
            uri(format!("bulwark:workspace:{workspace_id}"))?,
        ];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let serial = random_serial();
        let serial_hex = hex::encode(serial.as_ref());
        params.serial_number = Some(serial);
        let not_before = not_before - chrono::Duration::seconds(BACKDATE_SECS);
        params.not_before = to_time(not_before)?;
        params.not_after = to_time(not_after)?;
        csr.params = params;
        let cert = csr
            .signed_by(&self.issuer)
            .map_err(|e| PkiError::Generate(e.to_string()))?;
        Ok(Issued {
            pem: cert.pem(),
            der: cert.der().to_vec(),
            serial: serial_hex,
            fingerprint: crate::tls::fingerprint(cert.der()),
            not_before,
            not_after,
        })
    }
}

/// The built-in CA and how long its agent certificates live: what enrolment and renewal use.
pub struct AgentCa {
    pub ca: Ca,
    pub cert_days: u32,
}

impl AgentCa {
    /// A certificate for the key in `csr_pem`, valid `cert_days` from now, and its PEM.
    pub fn issue(
        &self,
        csr_pem: &str,
        agent_id: &str,
        workspace_id: &str,
    ) -> Result<(AgentCert, String), PkiError> {
        let now = Utc::now();
        let until = now + chrono::Duration::days(i64::from(self.cert_days));
        let issued = self.ca.issue(csr_pem, agent_id, workspace_id, now, until)?;
        Ok((
            AgentCert {
                serial: issued.serial,
                fingerprint: issued.fingerprint,
                not_before: issued.not_before,
                expires_at: issued.not_after,
            },
            issued.pem,
        ))
    }
}

/// 128 random bits with the top bit clear (a positive INTEGER of at most 16 bytes).
fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the operating system's random source failed");
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}

fn to_time(t: DateTime<Utc>) -> Result<time::OffsetDateTime, PkiError> {
    time::OffsetDateTime::from_unix_timestamp(t.timestamp())
        .map_err(|e| PkiError::Generate(format!("time out of range: {e}")))
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), PkiError> {
    crate::files::write_new_private(path, bytes).map_err(|source| PkiError::Write {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csr() -> String {
        let key = KeyPair::generate().unwrap();
        CertificateParams::new(vec!["ignored.example".to_string()])
            .unwrap()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap()
    }

    #[test]
    fn made_once_key_sealed_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let secrets = SecretKey::load_or_create(dir.path()).unwrap();
        let ca = Ca::load_or_create(dir.path(), &secrets).unwrap();
        let sealed = std::fs::read_to_string(dir.path().join("ca").join(CA_KEY_FILE)).unwrap();
        assert!(!sealed.contains("PRIVATE KEY"), "the key is sealed at rest");
        let again = Ca::load_or_create(dir.path(), &secrets).unwrap();
        assert_eq!(ca.fingerprint(), again.fingerprint());
        // Another secrets key cannot open it.
        let other = SecretKey::from_bytes([7; 32]);
        assert!(matches!(
            Ca::load_or_create(dir.path(), &other),
            Err(PkiError::Secrets(_))
        ));
        // A certificate without its key is refused, not replaced.
        std::fs::remove_file(dir.path().join("ca").join(CA_KEY_FILE)).unwrap();
        assert!(matches!(
            Ca::load_or_create(dir.path(), &secrets),
            Err(PkiError::Read { .. })
        ));
    }

    #[test]
    fn issues_client_certificates_that_chain_to_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        let secrets = SecretKey::load_or_create(dir.path()).unwrap();
        let ca = Ca::load_or_create(dir.path(), &secrets).unwrap();
        let now = Utc::now();
        let a = ca
            .issue(
                &csr(),
                "agt_1",
                "acme",
                now,
                now + chrono::Duration::days(30),
            )
            .unwrap();
        let b = ca
            .issue(
                &csr(),
                "agt_1",
                "acme",
                now,
                now + chrono::Duration::days(30),
            )
            .unwrap();
        assert_ne!(a.serial, b.serial);
        assert_ne!(a.fingerprint, b.fingerprint);
        assert_eq!(a.serial.len(), 32);
        // rustls accepts it as a client certificate of this CA.
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.cert_der().clone()).unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                .build()
                .unwrap();
        let der = CertificateDer::from(a.der.clone());
        verifier
            .verify_client_cert(&der, &[], rustls::pki_types::UnixTime::now())
            .unwrap();
        // An expired one is not.
        let old = ca
            .issue(
                &csr(),
                "agt_1",
                "acme",
                now - chrono::Duration::days(40),
                now - chrono::Duration::days(10),
            )
            .unwrap();
        let der = CertificateDer::from(old.der.clone());
        assert!(verifier
            .verify_client_cert(&der, &[], rustls::pki_types::UnixTime::now())
            .is_err());
        // Garbage and a tampered request are refused.
        assert!(matches!(
            ca.issue("nope", "a", "b", now, now),
            Err(PkiError::BadCsr(_))
        ));
    }
}

//! How the client decides to trust a Proxmox VE node. Every PVE cluster makes its own CA and
//! signs each node's certificate with it (NOTES.md A1), so public roots never apply. We accept
//! exactly two things, and never "any certificate":
//!
//! - **a pinned SHA-256 fingerprint** of the node's end-entity certificate, in the `AA:BB:…`
//!   form the PVE GUI and `GET /nodes` (`ssl_fingerprint`) show. The name in the certificate is
//!   not checked (PVE pins the same way between its own nodes); the handshake signatures are
//!   still verified with the ring provider's algorithms, so a peer must hold the pinned
//!   certificate's private key;
//! - **a CA certificate** (PEM), with normal WebPKI chain and name validation.
//!
//! A refused certificate is recorded in a [`MismatchSlot`] so the client can report
//! `Error::TlsMismatch { expected, found }` instead of reqwest's generic connect error.

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::error::{Error, Result};

/// A SHA-256 certificate fingerprint.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The fingerprint of a DER certificate.
    pub fn of(cert_der: &[u8]) -> Fingerprint {
        let digest = ring::digest::digest(&ring::digest::SHA256, cert_der);
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.as_ref());
        Fingerprint(out)
    }
}

impl fmt::Display for Fingerprint {
    /// `AA:BB:…:FF`, upper case, as PVE shows it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

impl FromStr for Fingerprint {
    type Err = Error;

    /// Accepts the PVE form (`([A-Fa-f0-9]{2}:){31}[A-Fa-f0-9]{2}`, the schema's pattern for
    /// `fingerprint`) and, for convenience, 64 hex digits without separators.
    fn from_str(s: &str) -> Result<Fingerprint> {
        let s = s.trim();
        let hex: String = if s.contains(':') {
            let parts: Vec<&str> = s.split(':').collect();
            if parts.len() != 32 || parts.iter().any(|p| p.len() != 2) {
                return Err(Error::Config(format!(
                    "fingerprint '{s}' is not 32 colon-separated pairs of hex digits (AA:BB:…)"
                )));
            }
            parts.concat()
        } else {
            s.to_string()
        };
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::Config(format!(
                "fingerprint '{s}' is not a SHA-256 fingerprint (32 pairs of hex digits, AA:BB:…)"
            )));
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("checked hex");
        }
        Ok(Fingerprint(out))
    }
}

/// What the client trusts.
#[derive(Clone, Debug)]
pub enum Trust {
    /// The node certificate's SHA-256 fingerprint.
    Fingerprint(Fingerprint),
    /// A CA certificate (or several) in PEM.
    CaPem(String),
}

/// The last certificate the verifier refused: (what was expected, fingerprint found).
#[derive(Clone, Debug, Default)]
pub struct MismatchSlot(Arc<Mutex<Option<(String, String)>>>);

impl MismatchSlot {
    fn record(&self, expected: String, found: &CertificateDer<'_>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((expected, Fingerprint::of(found.as_ref()).to_string()));
    }

    /// Takes the recorded refusal, if any.
    pub fn take(&self) -> Option<(String, String)> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// A rustls client configuration trusting exactly `trust`, on the ring provider.
pub fn rustls_config(trust: &Trust) -> Result<(rustls::ClientConfig, MismatchSlot)> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let slot = MismatchSlot::default();
    let verifier: Arc<dyn ServerCertVerifier> = match trust {
        Trust::Fingerprint(expected) => Arc::new(PinnedVerifier {
            expected: *expected,
            provider: provider.clone(),
            slot: slot.clone(),
        }),
        Trust::CaPem(pem) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                let cert = cert.map_err(|e| Error::Config(format!("CA certificate PEM: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| Error::Config(format!("CA certificate: {e}")))?;
            }
            if roots.is_empty() {
                return Err(Error::Config("the CA PEM holds no certificate".to_string()));
            }
            let inner =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| Error::Config(format!("CA certificate: {e}")))?;
            Arc::new(CaVerifier {
                inner,
                slot: slot.clone(),
            })
        }
    };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(format!("TLS: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok((config, slot))
}

#[derive(Debug)]
struct PinnedVerifier {
    expected: Fingerprint,
    provider: Arc<CryptoProvider>,
    slot: MismatchSlot,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let found = Fingerprint::of(end_entity.as_ref());
        // Not secret, so no constant-time comparison is needed.
        if found == self.expected {
            Ok(ServerCertVerified::assertion())
        } else {
            self.slot.record(self.expected.to_string(), end_entity);
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

/// WebPKI validation against the configured CA, recording what it refused.
#[derive(Debug)]
struct CaVerifier {
    inner: Arc<WebPkiServerVerifier>,
    slot: MismatchSlot,
}

impl ServerCertVerifier for CaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            .inspect_err(|e| {
                self.slot.record(
                    format!(
                        "a certificate for {} issued by the configured CA ({e})",
                        server_name.to_str()
                    ),
                    end_entity,
                )
            })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PVE: &str = "4E:9A:0C:71:3D:55:2B:E8:90:1F:7C:6D:AA:03:B4:5E:12:C9:88:F0:67:3B:D2:1A:0E:5F:44:9C:B7:2D:81:6A";

    #[test]
    fn parses_and_shows_the_pve_form() {
        let fp: Fingerprint = PVE.parse().unwrap();
        assert_eq!(fp.0[0], 0x4E);
        assert_eq!(fp.0[31], 0x6A);
        assert_eq!(fp.to_string(), PVE);
        let lower: Fingerprint = PVE.to_lowercase().parse().unwrap();
        assert_eq!(lower, fp);
        let bare: Fingerprint = PVE.replace(':', "").parse().unwrap();
        assert_eq!(bare, fp);
        assert_eq!(
            format!(" {PVE}\n").parse::<Fingerprint>().unwrap(),
            fp,
            "surrounding whitespace from a pasted value is ignored"
        );
    }

    #[test]
    fn refuses_malformed_fingerprints() {
        for bad in [
            "",
            "AA:BB",
            &PVE[3..],                 // 31 pairs
            &format!("{PVE}:00"),      // 33 pairs
            &PVE.replace("4E", "4G"),  // not hex
            &PVE.replacen(":", "", 1), // a 4-digit group
            &PVE.replace(':', "-"),    // wrong separator
            "SHA256:4E9A0C713D552BE8901F7C6DAA03B45E12C988F0673BD21A0E5F449CB72D816A", // prefix
        ] {
            assert!(bad.parse::<Fingerprint>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn fingerprint_of_der_is_sha256() {
        // SHA-256 of the empty input, a fixed vector.
        assert_eq!(
            Fingerprint::of(b"").to_string().replace(':', ""),
            "E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855"
        );
    }

    #[test]
    fn an_empty_ca_is_refused() {
        assert!(matches!(
            rustls_config(&Trust::CaPem(String::new())),
            Err(Error::Config(_))
        ));
    }
}

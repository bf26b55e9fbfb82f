//! Proxmox VE clusters the platform provisions backup storage on. Registered by platform admins;
//! the API token secret is write-only: it is stored sealed with the control-plane key
//! (`secrets.rs`) and never appears in a response or an audit entry.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{check_slug, Violation};

/// What a client sends to register or change a cluster.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClusterBody {
    /// Required on create; immutable.
    #[serde(default)]
    pub id: Option<String>,
    pub name: String,
    /// The API of one node, `https://pve1.example.com:8006`.
    pub url: String,
    /// `user@realm!tokenname`.
    pub token_id: String,
    /// Write-only. Required on create; on update, leaving it out keeps the stored one.
    #[serde(default)]
    pub token_secret: Option<String>,
    /// SHA-256 fingerprint of the node certificate, `AA:BB:…` (as the PVE GUI shows it).
    #[serde(default)]
    pub fingerprint: Option<String>,
    /// The cluster CA (`/etc/pve/pve-root-ca.pem`) instead of a fingerprint.
    #[serde(default)]
    pub ca_pem: Option<String>,
}

/// A cluster as stored: the token secret only sealed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProxmoxCluster {
    pub id: String,
    pub name: String,
    pub url: String,
    pub token_id: String,
    /// `secrets::SecretKey::seal` output, associated data [`ProxmoxCluster::secret_aad`].
    pub token_secret_sealed: String,
    pub fingerprint: Option<String>,
    pub ca_pem: Option<String>,
    /// `version` of the last successful health check.
    pub version: Option<String>,
    pub checked_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A cluster as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ClusterView {
    pub id: String,
    pub name: String,
    pub url: String,
    pub token_id: String,
    pub token_secret_set: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
    /// Proxmox VE version reported at the last health check, e.g. `9.1.1`.
    pub version: Option<String>,
    pub checked_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl ProxmoxCluster {
    /// The associated data that binds a sealed token secret to this record.
    pub fn secret_aad(id: &str) -> String {
        format!("proxmox-cluster:{id}")
    }

    pub fn view(&self) -> ClusterView {
        ClusterView {
            id: self.id.clone(),
            name: self.name.clone(),
            url: self.url.clone(),
            token_id: self.token_id.clone(),
            token_secret_set: !self.token_secret_sealed.is_empty(),
            fingerprint: self.fingerprint.clone(),
            ca_pem: self.ca_pem.clone(),
            version: self.version.clone(),
            checked_at: self.checked_at,
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
    }
}

/// A checked body: the record without its sealed secret (the caller seals `token_secret`).
#[derive(Debug, Clone)]
pub struct CheckedCluster {
    pub id: String,
    pub name: String,
    pub url: String,
    pub token_id: String,
    /// `None` on an update that keeps the stored secret.
    pub token_secret: Option<String>,
    pub fingerprint: Option<String>,
    pub ca_pem: Option<String>,
}

impl ClusterBody {
    /// Checks every field. `path_id` is the id in the URL on update.
    pub fn check(self, path_id: Option<&str>) -> Result<CheckedCluster, Vec<Violation>> {
        let mut problems = Vec::new();
        let id = match (self.id, path_id) {
            (Some(id), Some(path)) if id != path => {
                problems.push(Violation::new(
                    "id",
                    format!("'{id}' differs from the cluster in the URL ('{path}'); ids cannot be changed"),
                ));
                path.to_string()
            }
            (_, Some(path)) => path.to_string(),
            (Some(id), None) => {
                if let Err(e) = check_slug(&id) {
                    problems.push(Violation::new("id", e));
                }
                id
            }
            (None, None) => {
                problems.push(Violation::new(
                    "id",
                    "is required when registering a cluster",
                ));
                String::new()
            }
        };
        let name = self.name.trim().to_string();
        super::check_text(&mut problems, "name", &name, 200);
        let url = self.url.trim().trim_end_matches('/').to_string();
        if let Err(e) = check_url(&url) {
            problems.push(Violation::new("url", e));
        }
        if let Err(e) = check_token_id(&self.token_id) {
            problems.push(Violation::new("token_id", e));
        }
        match (&self.token_secret, path_id) {
            (None, None) => problems.push(Violation::new(
                "token_secret",
                "is required when registering a cluster",
            )),
            (Some(s), _)
                if s.is_empty()
                    || s.len() > 256
                    || s.chars().any(|c| c.is_whitespace() || c.is_control()) =>
            {
                problems.push(Violation::new(
                    "token_secret",
                    "must be 1 to 256 characters without spaces (PVE shows it once, as a UUID)",
                ))
            }
            _ => {}
        }
        let fingerprint = match (&self.fingerprint, &self.ca_pem) {
            (Some(_), Some(_)) => {
                problems.push(Violation::new(
                    "ca_pem",
                    "give either fingerprint or ca_pem, not both",
                ));
                None
            }
            (None, None) => {
                problems.push(Violation::new(
                    "fingerprint",
                    "is required (or ca_pem): the cluster's certificate is trusted only by its pinned SHA-256 fingerprint or its CA",
                ));
                None
            }
            (Some(f), None) => match f.parse::<proxmox_client::Fingerprint>() {
                Ok(fp) => Some(fp.to_string()),
                Err(_) => {
                    problems.push(Violation::new(
                        "fingerprint",
                        format!("'{f}' is not a SHA-256 fingerprint: 32 colon-separated pairs of hex digits (AA:BB:…)"),
                    ));
                    None
                }
            },
            (None, Some(pem)) => {
                if !pem.contains("-----BEGIN CERTIFICATE-----") || pem.len() > 32 * 1024 {
                    problems.push(Violation::new(
                        "ca_pem",
                        "must be one or more PEM certificates (-----BEGIN CERTIFICATE-----), at most 32 KiB",
                    ));
                }
                None
            }
        };
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(CheckedCluster {
            id,
            name,
            url,
            token_id: self.token_id,
            token_secret: self.token_secret,
            fingerprint,
            ca_pem: self.ca_pem,
        })
    }
}

/// `https://host[:port]` and nothing else: the client adds `/api2/json`.
pub fn check_url(url: &str) -> Result<(), String> {
    let Some(rest) = url.strip_prefix("https://") else {
        return Err(format!(
            "'{url}' must start with https:// (e.g. https://pve1.example.com:8006)"
        ));
    };
    let rest = rest.strip_suffix("/api2/json").unwrap_or(rest);
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (h, Some(p)),
        _ => (rest, None),
    };
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.[]:".contains(&b));
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|n| n > 0));
    if !host_ok || !port_ok {
        return Err(format!(
            "'{url}' is not https://host:port (e.g. https://pve1.example.com:8006), without a path"
        ));
    }
    Ok(())
}

/// `user@realm!tokenname` (pve-access-control `pve-tokenid`).
pub fn check_token_id(token_id: &str) -> Result<(), String> {
    let bad = || {
        format!(
            "'{}' is not an API token id of the form user@realm!tokenname (e.g. bulwark@pve!provisioner)",
            token_id.escape_debug()
        )
    };
    let (userid, name) = token_id.split_once('!').ok_or_else(bad)?;
    let (user, realm) = userid.rsplit_once('@').ok_or_else(bad)?;
    let ident = |s: &str| {
        s.len() >= 2
            && s.len() <= 64
            && s.as_bytes()[0].is_ascii_alphabetic()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    };
    let user_ok = !user.is_empty()
        && user.len() <= 64
        && !user
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == ':' || c == '/');
    if user_ok && ident(realm) && ident(name) {
        Ok(())
    } else {
        Err(bad())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body() -> ClusterBody {
        ClusterBody {
            id: Some("pve-east".into()),
            name: "East".into(),
            url: "https://pve1.example.com:8006/".into(),
            token_id: "bulwark@pve!prov".into(),
            token_secret: Some("0b9e-uuid".into()),
            fingerprint: Some(
                "aa:bb:cc:dd:ee:ff:00:11:22:33:44:55:66:77:88:99:aa:bb:cc:dd:ee:ff:00:11:22:33:44:55:66:77:88:99".into(),
            ),
            ca_pem: None,
        }
    }

    #[test]
    fn cluster_bodies() {
        let c = body().check(None).unwrap();
        assert_eq!(c.url, "https://pve1.example.com:8006");
        assert!(c.fingerprint.unwrap().starts_with("AA:BB:"));
        let mut b = body();
        b.url = "http://pve1:8006".into();
        b.token_id = "bulwark@pve".into();
        b.token_secret = None;
        b.fingerprint = Some("AA:BB".into());
        let paths: Vec<String> = b
            .check(None)
            .unwrap_err()
            .into_iter()
            .map(|v| v.path)
            .collect();
        assert_eq!(paths, ["url", "token_id", "token_secret", "fingerprint"]);
        // On update the secret may be left out.
        let mut b = body();
        b.token_secret = None;
        assert!(b.check(Some("pve-east")).unwrap().token_secret.is_none());
        for ok in ["https://10.0.0.1:8006", "https://pve", "https://[::1]:8006"] {
            assert!(check_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "https://",
            "https://pve:99999",
            "https://pve:8006/x",
            "ftp://pve",
        ] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
        for ok in ["root@pam!bulwark", "svc.backup@ldap-corp!t1"] {
            assert!(check_token_id(ok).is_ok(), "{ok}");
        }
        for bad in ["root@pam", "root!x", "@pam!x", "root@pam!", "ro ot@pam!x"] {
            assert!(check_token_id(bad).is_err(), "{bad}");
        }
    }
}

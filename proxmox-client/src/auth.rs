//! The two ways PVE authenticates an API caller (NOTES.md A2):
//!
//! - an **API token**: one stateless header, `Authorization: PVEAPIToken=USER@REALM!TOKENID=SECRET`,
//!   no CSRF token. This is what the control plane should use.
//! - a **ticket**: `POST /access/ticket` with user and password answers a ticket and a CSRF
//!   token; requests then carry `Cookie: PVEAuthCookie=<ticket>`, and every method except GET
//!   also `CSRFPreventionToken: <token>`. A ticket lives 2 h. We renew it (by posting the
//!   current ticket as the password) once it is older than [`TICKET_RENEW_AFTER`], the point
//!   where Proxmox's own `proxmox-login` starts renewing, and log in again once on a 401 (the
//!   ticket may have expired early, e.g. after the signing key rotated).

use std::fmt;
use std::time::{Duration, Instant};

use serde::Deserialize;

/// PVE's ticket lifetime (`$ticket_lifetime` in pve-access-control `AccessControl.pm`).
pub const TICKET_LIFETIME: Duration = Duration::from_secs(2 * 3600);
/// Renew during the last 30 minutes (proxmox-login `REFRESH_EARLY_BY = 1800`).
pub const TICKET_RENEW_AFTER: Duration = Duration::from_secs(3600 + 30 * 60);

/// How the client proves who it is.
#[derive(Clone)]
pub enum Credentials {
    /// `user@realm!tokenid` and the token's secret (a UUID shown once at creation).
    Token { token_id: String, secret: String },
    /// `user@realm` and the password, exchanged for a ticket.
    Password { username: String, password: String },
}

impl Credentials {
    /// A token from its full id (`root@pam!bulwark`) and secret.
    pub fn token(token_id: impl Into<String>, secret: impl Into<String>) -> Credentials {
        Credentials::Token {
            token_id: token_id.into(),
            secret: secret.into(),
        }
    }

    pub fn password(username: impl Into<String>, password: impl Into<String>) -> Credentials {
        Credentials::Password {
            username: username.into(),
            password: password.into(),
        }
    }

    /// Checks the token id shape PVE's `split_tokenid` expects: `user@realm!tokenid`.
    pub(crate) fn validate(&self) -> Result<(), String> {
        match self {
            Credentials::Token { token_id, secret } => {
                let Some((user, token)) = token_id.split_once('!') else {
                    return Err(format!(
                        "token id '{token_id}' is not of the form user@realm!tokenid"
                    ));
                };
                if !user.contains('@') || token.is_empty() {
                    return Err(format!(
                        "token id '{token_id}' is not of the form user@realm!tokenid"
                    ));
                }
                if secret.is_empty() {
                    return Err("the token secret is empty".into());
                }
                Ok(())
            }
            Credentials::Password { username, .. } => {
                if username.contains('@') {
                    Ok(())
                } else {
                    Err(format!(
                        "user '{username}' has no realm (user@pam, user@pve)"
                    ))
                }
            }
        }
    }

    /// The `Authorization` header value of a token.
    pub(crate) fn token_header(&self) -> Option<String> {
        match self {
            Credentials::Token { token_id, secret } => {
                Some(format!("PVEAPIToken={token_id}={secret}"))
            }
            Credentials::Password { .. } => None,
        }
    }
}

impl fmt::Debug for Credentials {
    /// Never prints a secret or password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Token { token_id, .. } => write!(f, "Token({token_id}, secret: ***)"),
            Credentials::Password { username, .. } => write!(f, "Password({username}, ***)"),
        }
    }
}

/// The answer of `POST /access/ticket`.
#[derive(Clone, Deserialize)]
pub(crate) struct TicketResponse {
    pub username: String,
    pub ticket: Option<String>,
    #[serde(rename = "CSRFPreventionToken")]
    pub csrf: Option<String>,
}

/// A ticket in use.
#[derive(Clone)]
pub(crate) struct Ticket {
    pub ticket: String,
    pub csrf: String,
    pub obtained: Instant,
}

impl Ticket {
    pub fn needs_renewal(&self, renew_after: Duration) -> bool {
        self.obtained.elapsed() >= renew_after
    }

    pub fn cookie(&self) -> String {
        format!("PVEAuthCookie={}", self.ticket)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_header_shape() {
        let c = Credentials::token("root@pam!bulwark", "0f1e2d3c-aaaa-bbbb-cccc-123456789abc");
        assert_eq!(
            c.token_header().unwrap(),
            "PVEAPIToken=root@pam!bulwark=0f1e2d3c-aaaa-bbbb-cccc-123456789abc"
        );
        assert!(c.validate().is_ok());
        assert!(format!("{c:?}").contains("***"));
        assert!(!format!("{c:?}").contains("0f1e2d3c"));
    }

    #[test]
    fn token_ids_must_name_user_realm_and_token() {
        for bad in ["root@pam", "root!bulwark", "root@pam!", ""] {
            assert!(Credentials::token(bad, "s").validate().is_err(), "{bad}");
        }
        assert!(Credentials::token("root@pam!x", "").validate().is_err());
        assert!(Credentials::password("root", "pw").validate().is_err());
        assert!(Credentials::password("root@pam", "pw").validate().is_ok());
    }

    #[test]
    fn renewal_age() {
        let t = Ticket {
            ticket: "PVE:root@pam:65000000::sig".into(),
            csrf: "65000000:mac".into(),
            obtained: Instant::now(),
        };
        assert!(!t.needs_renewal(TICKET_RENEW_AFTER));
        assert!(t.needs_renewal(Duration::ZERO));
        assert_eq!(t.cookie(), "PVEAuthCookie=PVE:root@pam:65000000::sig");
        assert!(TICKET_RENEW_AFTER < TICKET_LIFETIME);
    }
}

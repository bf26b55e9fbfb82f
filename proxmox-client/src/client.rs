//! The transport every typed call goes through: one reqwest client over the TLS trust of
//! `tls.rs`, authentication from `auth.rs`, PVE's envelope (`{"data": …}` on success,
//! `{"data": null, "message", "errors"}` or only a reason phrase on failure), and retries.
//!
//! **Retries.** A failed call is sent again, with exponential backoff (by default 3 attempts,
//! waiting 200 ms then 800 ms), only when repeating it cannot do harm:
//! - GET, on connection errors, timeouts, 5xx and PVE's 595–599 proxy statuses;
//! - PUT and DELETE only when the connection could not be made (the request never left);
//! - POST never: a storage create that timed out may have been applied, and PVE would answer a
//!   repeat with "already defined".
//!
//! Errors that will not change by asking again (parameters, not found, permissions) are never
//! retried.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::Method;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::auth::{Credentials, Ticket, TicketResponse, TICKET_RENEW_AFTER};
use crate::error::{Error, Result};
use crate::params::Params;
use crate::tls::{MismatchSlot, Trust};

/// The PVE API's default port (pveproxy).
pub const DEFAULT_PORT: u16 = 8006;
const API_BASE: &str = "/api2/json";

/// Exponential backoff for idempotent calls.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    /// Total attempts, including the first (1 disables retries).
    pub attempts: u32,
    /// Wait before the second attempt; each further wait is four times longer.
    pub first_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 3,
            first_delay: Duration::from_millis(200),
        }
    }
}

impl RetryPolicy {
    pub fn delay(&self, retry: u32) -> Duration {
        self.first_delay * 4u32.saturating_pow(retry)
    }
}

/// Everything needed to talk to one cluster.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// `https://host:8006` (a trailing `/api2/json` is accepted and ignored).
    pub url: String,
    pub trust: Trust,
    pub credentials: Credentials,
    /// Whole-request timeout.
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub retry: RetryPolicy,
    /// Age after which a ticket is renewed before use (tests shorten it).
    pub ticket_renew_after: Duration,
}

impl ClientConfig {
    pub fn new(url: impl Into<String>, trust: Trust, credentials: Credentials) -> ClientConfig {
        ClientConfig {
            url: url.into(),
            trust,
            credentials,
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            retry: RetryPolicy::default(),
            ticket_renew_after: TICKET_RENEW_AFTER,
        }
    }
}

/// A client for one PVE cluster. Cheap to clone; clones share the connection pool and ticket.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    /// `https://host:port/api2/json`
    base: String,
    config: std::sync::Arc<ClientConfig>,
    mismatch: MismatchSlot,
    ticket: std::sync::Arc<tokio::sync::Mutex<Option<Ticket>>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .field("credentials", &self.config.credentials)
            .finish()
    }
}

impl Client {
    pub fn new(config: ClientConfig) -> Result<Client> {
        // reqwest is built without a default provider; ours is ring (as in bulwark-core).
        let _ = rustls::crypto::ring::default_provider().install_default();
        config.credentials.validate().map_err(Error::Config)?;
        let base = base_url(&config.url)?;
        let (tls, mismatch) = crate::tls::rustls_config(&config.trust)?;
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .https_only(true)
            .timeout(config.timeout)
            .connect_timeout(config.connect_timeout)
            .user_agent(concat!(
                "bulwark-proxmox-client/",
                env!("CARGO_PKG_VERSION")
            ))
            .build()
            .map_err(|e| Error::Config(format!("HTTP client: {e}")))?;
        Ok(Client {
            http,
            base,
            config: std::sync::Arc::new(config),
            mismatch,
            ticket: Default::default(),
        })
    }

    /// `https://host:port/api2/json`.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// GET and decode `data`.
    pub(crate) async fn get<T: DeserializeOwned>(&self, path: &str, params: Params) -> Result<T> {
        let data = self.call(Method::GET, path, params).await?;
        self.decode(path, data)
    }

    pub(crate) fn decode<T: DeserializeOwned>(&self, path: &str, data: Value) -> Result<T> {
        serde_json::from_value(data).map_err(|e| Error::Decode {
            url: format!("{}{path}", self.base),
            reason: e.to_string(),
        })
    }

    /// Sends one API call and returns its `data`. `path` is below `/api2/json` and already
    /// percent-encoded per segment (`params::segment`). This is public so callers can reach
    /// endpoints without a typed wrapper; parameters must already be in PVE's encoding.
    pub async fn call(&self, method: Method, path: &str, params: Params) -> Result<Value> {
        let url = format!("{}{path}", self.base);
        let retry = self.config.retry;
        let mut attempt = 0u32;
        let mut reauthenticated = false;
        loop {
            attempt += 1;
            let outcome = self.send_once(&method, &url, &params).await;
            let err = match outcome {
                Ok(data) => return Ok(data),
                Err(e) => e,
            };
            let err = match err {
                Failure::Unauthorized(e) => {
                    if matches!(self.config.credentials, Credentials::Password { .. })
                        && !reauthenticated
                    {
                        tracing::debug!(%url, "401 with a ticket: logging in again once");
                        reauthenticated = true;
                        *self.ticket.lock().await = None;
                        attempt -= 1;
                        continue;
                    }
                    return Err(e);
                }
                Failure::NotSent(e) => {
                    if method == Method::POST {
                        return Err(e);
                    }
                    e
                }
                Failure::Other(e) => {
                    if method != Method::GET || !e.is_transient() {
                        return Err(e);
                    }
                    e
                }
            };
            if attempt >= retry.attempts {
                return Err(err);
            }
            let delay = retry.delay(attempt - 1);
            tracing::debug!(%url, %method, attempt, ?delay, error = %err, "retrying");
            tokio::time::sleep(delay).await;
        }
    }

    async fn send_once(
        &self,
        method: &Method,
        url: &str,
        params: &Params,
    ) -> Result<Value, Failure> {
        let mut req = self.http.request(method.clone(), url);
        req = if *method == Method::GET || *method == Method::DELETE {
            // A body on GET/DELETE gets 501 "Unexpected content".
            if params.is_empty() {
                req
            } else {
                req.query(params.pairs())
            }
        } else {
            req.form(params.pairs())
        };
        req = match &self.config.credentials {
            c @ Credentials::Token { .. } => {
                req.header("Authorization", c.token_header().expect("token"))
            }
            Credentials::Password { .. } => {
                let ticket = self.current_ticket().await.map_err(Failure::classify)?;
                let req = req.header("Cookie", ticket.cookie());
                if *method == Method::GET {
                    req
                } else {
                    req.header("CSRFPreventionToken", &ticket.csrf)
                }
            }
        };
        let resp = req.send().await.map_err(|e| self.transport_error(url, e))?;
        let result = self.read_response(url, resp).await;
        match result {
            Err(e @ Error::Unauthorized { .. }) => Err(Failure::Unauthorized(e)),
            Err(e) => Err(Failure::Other(e)),
            Ok(v) => Ok(v),
        }
    }

    fn transport_error(&self, url: &str, e: reqwest::Error) -> Failure {
        if let Some((expected, found)) = self.mismatch.take() {
            return Failure::Other(Error::TlsMismatch {
                url: url.to_string(),
                expected,
                found,
            });
        }
        let reason = error_chain(&e);
        let err = Error::Unreachable {
            url: url.to_string(),
            reason,
        };
        if e.is_connect() && !e.is_timeout() {
            Failure::NotSent(err)
        } else {
            Failure::Other(err)
        }
    }

    async fn read_response(&self, url: &str, resp: reqwest::Response) -> Result<Value> {
        let status = resp.status().as_u16();
        let reason = resp
            .extensions()
            .get::<hyper::ext::ReasonPhrase>()
            .map(|r| String::from_utf8_lossy(r.as_bytes()).into_owned())
            .or_else(|| resp.status().canonical_reason().map(str::to_string))
            .unwrap_or_default();
        let body = resp.bytes().await.map_err(|e| Error::Unreachable {
            url: url.to_string(),
            reason: format!("reading the answer: {}", error_chain(&e)),
        })?;
        if (200..300).contains(&status) {
            let envelope: Value = serde_json::from_slice(&body).map_err(|e| Error::Decode {
                url: url.to_string(),
                reason: format!("not JSON: {e}"),
            })?;
            return match envelope {
                Value::Object(mut map) => Ok(map.remove("data").unwrap_or(Value::Null)),
                other => Err(Error::Decode {
                    url: url.to_string(),
                    reason: format!("expected {{\"data\": …}}, got {other}"),
                }),
            };
        }
        let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let message = parsed
            .get("message")
            .and_then(Value::as_str)
            .map(str::to_string)
            .filter(|m| !m.trim().is_empty())
            .unwrap_or(reason);
        let mut errors = BTreeMap::new();
        if let Some(Value::Object(map)) = parsed.get("errors") {
            for (k, v) in map {
                let text = v.as_str().map_or_else(|| v.to_string(), str::to_string);
                errors.insert(k.clone(), text.trim_end().to_string());
            }
        }
        let mut err = Error::from_response(status, message, errors);
        if let Error::Unreachable { url: u, .. } = &mut err {
            *u = url.to_string();
        }
        Err(err)
    }

    /// A ticket fit for use: the current one, renewed, or a new login.
    async fn current_ticket(&self) -> Result<Ticket> {
        let Credentials::Password { username, password } = &self.config.credentials else {
            unreachable!("tickets only with password credentials")
        };
        let mut slot = self.ticket.lock().await;
        if let Some(t) = slot.as_ref() {
            if !t.needs_renewal(self.config.ticket_renew_after) {
                return Ok(t.clone());
            }
            // Renew by posting the current ticket as the password (NOTES.md A2).
            match self.login(username, &t.ticket).await {
                Ok(new) => {
                    tracing::debug!("renewed the PVE ticket");
                    *slot = Some(new.clone());
                    return Ok(new);
                }
                Err(e) => tracing::debug!(error = %e, "ticket renewal failed; logging in again"),
            }
        }
        let new = self.login(username, password).await?;
        *slot = Some(new.clone());
        Ok(new)
    }

    /// `POST /access/ticket` (no authentication, never retried).
    async fn login(&self, username: &str, password: &str) -> Result<Ticket> {
        let url = format!("{}/access/ticket", self.base);
        let params = Params::new()
            .set("username", username)
            .set("password", password);
        let resp = self
            .http
            .post(&url)
            .form(params.pairs())
            .send()
            .await
            .map_err(|e| match self.transport_error(&url, e) {
                Failure::NotSent(e) | Failure::Other(e) | Failure::Unauthorized(e) => e,
            })?;
        let data = self.read_response(&url, resp).await?;
        let answer: TicketResponse = self.decode("/access/ticket", data)?;
        match (answer.ticket, answer.csrf) {
            (Some(ticket), Some(csrf)) => Ok(Ticket {
                ticket,
                csrf,
                obtained: std::time::Instant::now(),
            }),
            _ => Err(Error::Unauthorized {
                message: format!(
                    "no ticket issued for {} (two-factor authentication is not supported)",
                    answer.username
                ),
            }),
        }
    }
}

/// How one attempt failed, for the retry decision.
enum Failure {
    /// 401: maybe log in again.
    Unauthorized(Error),
    /// The connection was never made, so nothing was sent.
    NotSent(Error),
    Other(Error),
}

impl Failure {
    fn classify(e: Error) -> Failure {
        match e {
            e @ Error::Unauthorized { .. } => Failure::Unauthorized(e),
            e => Failure::Other(e),
        }
    }
}

fn base_url(url: &str) -> Result<String> {
    let trimmed = url.trim().trim_end_matches('/');
    let trimmed = trimmed.strip_suffix(API_BASE).unwrap_or(trimmed);
    let parsed = reqwest::Url::parse(trimmed)
        .map_err(|e| Error::Config(format!("Proxmox URL '{url}': {e}")))?;
    if parsed.scheme() != "https" {
        return Err(Error::Config(format!(
            "Proxmox URL '{url}' must use https (the API is only served over TLS)"
        )));
    }
    if parsed.host_str().is_none() || parsed.path() != "/" || parsed.query().is_some() {
        return Err(Error::Config(format!(
            "Proxmox URL '{url}' must be https://host[:port] (default port {DEFAULT_PORT})"
        )));
    }
    let port = parsed.port().unwrap_or(DEFAULT_PORT);
    let host = parsed.host_str().expect("checked");
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    Ok(format!("https://{host}:{port}{API_BASE}"))
}

/// The error and its causes on one line ("error sending request: connection refused").
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls() {
        assert_eq!(
            base_url("https://pve1.example.com").unwrap(),
            "https://pve1.example.com:8006/api2/json"
        );
        assert_eq!(
            base_url("https://10.0.0.5:8006/api2/json/").unwrap(),
            "https://10.0.0.5:8006/api2/json"
        );
        assert_eq!(
            base_url("https://127.0.0.1:4443").unwrap(),
            "https://127.0.0.1:4443/api2/json"
        );
        assert_eq!(
            base_url("https://[::1]:8006").unwrap(),
            "https://[::1]:8006/api2/json"
        );
        assert!(base_url("http://pve1:8006").is_err());
        assert!(base_url("https://pve1:8006/other").is_err());
        assert!(base_url("pve1").is_err());
    }

    #[test]
    fn backoff_grows_by_four() {
        let p = RetryPolicy::default();
        assert_eq!(p.delay(0), Duration::from_millis(200));
        assert_eq!(p.delay(1), Duration::from_millis(800));
    }
}

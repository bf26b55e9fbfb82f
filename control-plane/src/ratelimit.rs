//! Rate limits: one tenant's script, one agent stuck in a loop, or one address guessing tokens
//! must not take the server's capacity from everyone else. Answers beyond a limit are `429` with
//! `Retry-After` (whole seconds) and counted in `bulwark_rate_limited{reason}`.
//!
//! Who is limited by what — each request by the one credential it carries, so that many clients
//! behind one address (1 000 agents on a host, everyone behind a NAT, the load benchmark on
//! loopback) do not share one budget:
//! - a connection with a verified agent certificate: per agent (certificate fingerprint);
//! - a request with an API token: per token, once the token is known to be valid (platform-admin
//!   tokens, the operator's own automation, are not limited per token);
//! - a request with no credential at all (`/healthz`, `/metrics`, the OpenAPI document, a missing
//!   token): per source address;
//! - every failed authentication (any `401` outside agents' mutual TLS: unknown API token, wrong
//!   enrolment token) spends from a per-address failure budget; an address that has spent it is
//!   refused everything but agents' mutual-TLS requests until the budget refills, so guesses are
//!   refused before they are checked.
//!
//! An IPv6 client is keyed by its /64 (one host or LAN gets a /64 and can pick any address in
//! it), an IPv4-mapped one by its IPv4 address.
//!
//! The limits are GCRA token buckets from `governor`, keyed in memory; keys idle long enough to
//! be full again are dropped every minute, so a flood of distinct keys does not stay resident.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota};

use crate::metrics::Metrics;
use crate::tls::PeerCertificate;

/// The one endpoint a client without a certificate or API token uses with a credential (the
/// enrolment token travels in its body): its successes are not anonymous traffic, its failures
/// count like any other failed authentication.
pub const ENROLL_PATH: &str = "/agent/v1/enroll";

/// The source address of a connection, set by the accept loop on every request.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// The key of a source address: IPv4 as is, IPv6 by its /64.
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
    }
}

/// A sustained rate with a burst allowance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Requests allowed on average per `per`.
    pub count: NonZeroU32,
    pub per: Duration,
    /// Requests allowed at once from a full bucket.
    pub burst: NonZeroU32,
}

impl Rate {
    fn quota(&self) -> Quota {
        let period = (self.per / self.count.get()).max(Duration::from_nanos(1));
        Quota::with_period(period)
            .expect("a non-zero period")
            .allow_burst(self.burst)
    }
}

/// Which limits apply; `None` turns one off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitSettings {
    pub token: Option<Rate>,
    pub agent: Option<Rate>,
    pub address: Option<Rate>,
    pub auth_failures: Option<Rate>,
}

fn rate(count: u32, per: Duration, burst: u32) -> Option<Rate> {
    Some(Rate {
        count: NonZeroU32::new(count)?,
        per,
        burst: NonZeroU32::new(burst)?,
    })
}

impl LimitSettings {
    /// No limit at all.
    pub fn off() -> Self {
        LimitSettings {
            token: None,
            agent: None,
            address: None,
            auth_failures: None,
        }
    }

    pub fn per_second(count: u32, burst: u32) -> Option<Rate> {
        rate(count, Duration::from_secs(1), burst)
    }

    pub fn per_minute(count: u32, burst: u32) -> Option<Rate> {
        rate(count, Duration::from_secs(60), burst)
    }
}

impl Default for LimitSettings {
    /// 50 requests/s per tenant token (burst 200), 20/s per agent (burst 100; an agent needs
    /// well under 1/s), 20/s per address without credentials (burst 100), 30 failed
    /// authentications per minute per address (burst 30).
    fn default() -> Self {
        LimitSettings {
            token: Self::per_second(50, 200),
            agent: Self::per_second(20, 100),
            address: Self::per_second(20, 100),
            auth_failures: Self::per_minute(30, 30),
        }
    }
}

/// Why a request was refused; the `reason` label of `bulwark_rate_limited`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Token,
    Agent,
    Address,
    AuthFailures,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Token => "token",
            Reason::Agent => "agent",
            Reason::Address => "address",
            Reason::AuthFailures => "auth_failures",
        }
    }

    pub fn message(self, wait: u64) -> String {
        let what = match self {
            Reason::Token => "too many requests with this API token",
            Reason::Agent => "too many requests from this agent",
            Reason::Address => "too many requests without credentials from this address",
            Reason::AuthFailures => {
                "too many failed authentications from this address; requests from it are refused for now"
            }
        };
        format!("{what}; retry in {wait} s (Retry-After)")
    }
}

/// A refusal: the reason and how long until a retry can succeed (a 429, made in `api/error.rs`).
#[derive(Debug, Clone, Copy)]
pub struct Throttled {
    pub reason: Reason,
    pub retry_after: Duration,
}

impl Throttled {
    /// Whole seconds for `Retry-After`, rounded up, at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        let d = self.retry_after;
        (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
    }
}

struct Keyed<K: Hash + Eq + Clone> {
    limiter: DefaultKeyedRateLimiter<K>,
    reason: Reason,
}

impl<K: Hash + Eq + Clone> Keyed<K> {
    fn new(rate: Option<Rate>, reason: Reason) -> Option<Self> {
        rate.map(|r| Keyed {
            limiter: DefaultKeyedRateLimiter::keyed(r.quota()),
            reason,
        })
    }

    fn check(&self, key: &K) -> Result<(), Throttled> {
        self.limiter.check_key(key).map_err(|not_until| Throttled {
            reason: self.reason,
            retry_after: not_until.wait_time_from(self.limiter.clock().now()),
        })
    }

    fn forget_idle(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

/// The server's limits and the state behind them (shared by every connection).
pub struct Limiter {
    token: Option<Keyed<String>>,
    agent: Option<Keyed<Arc<str>>>,
    address: Option<Keyed<IpAddr>>,
    failures: Option<Keyed<IpAddr>>,
    /// Addresses that spent their failure budget, until when.
    blocked: Mutex<HashMap<IpAddr, Instant>>,
    metrics: Arc<Metrics>,
}

impl Limiter {
    pub fn new(settings: &LimitSettings, metrics: Arc<Metrics>) -> Self {
        Limiter {
            token: Keyed::new(settings.token, Reason::Token),
            agent: Keyed::new(settings.agent, Reason::Agent),
            address: Keyed::new(settings.address, Reason::Address),
            failures: Keyed::new(settings.auth_failures, Reason::AuthFailures),
            blocked: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    fn counted<T>(&self, result: Result<T, Throttled>) -> Result<T, Throttled> {
        if let Err(t) = &result {
            self.metrics.rate_limited(t.reason.as_str());
        }
        result
    }

    /// One request with the (valid) API token `token_id`.
    pub fn check_token(&self, token_id: &str) -> Result<(), Throttled> {
        let Some(k) = &self.token else { return Ok(()) };
        self.counted(k.check(&token_id.to_string()))
    }

    /// One request over a connection with the agent certificate `fingerprint`.
    pub fn check_agent(&self, fingerprint: &Arc<str>) -> Result<(), Throttled> {
        let Some(k) = &self.agent else { return Ok(()) };
        self.counted(k.check(fingerprint))
    }

    /// One request without any credential from `ip`.
    pub fn check_address(&self, ip: IpAddr) -> Result<(), Throttled> {
        let Some(k) = &self.address else {
            return Ok(());
        };
        self.counted(k.check(&ip))
    }

    /// Refuses `ip` while it is blocked for failed authentications.
    pub fn check_blocked(&self, ip: IpAddr) -> Result<(), Throttled> {
        let now = Instant::now();
        let until = self.blocked.lock().expect("not poisoned").get(&ip).copied();
        match until {
            Some(until) if until > now => self.counted(Err(Throttled {
                reason: Reason::AuthFailures,
                retry_after: until - now,
            })),
            _ => Ok(()),
        }
    }

    /// Records a failed authentication from `ip`; once its budget is spent, `ip` is blocked
    /// until the budget holds one attempt again.
    pub fn failed(&self, ip: IpAddr) {
        self.metrics.auth_failure();
        let Some(k) = &self.failures else { return };
        if let Err(t) = k.check(&ip) {
            let until = Instant::now() + t.retry_after;
            let mut blocked = self.blocked.lock().expect("not poisoned");
            if blocked.insert(ip, until).is_none() {
                tracing::warn!(%ip, retry_after_secs = t.retry_after_secs(), "too many failed authentications; refusing this address for now");
            }
        }
    }

    /// Drops keys that are full again and expired blocks (every minute from the server).
    pub fn forget_idle(&self) {
        if let Some(k) = &self.token {
            k.forget_idle();
        }
        if let Some(k) = &self.agent {
            k.forget_idle();
        }
        if let Some(k) = &self.address {
            k.forget_idle();
        }
        if let Some(k) = &self.failures {
            k.forget_idle();
        }
        let now = Instant::now();
        self.blocked
            .lock()
            .expect("not poisoned")
            .retain(|_, until| *until > now);
    }
}

/// Middleware in front of the whole application: agent, address and failure limits (the token
/// limit is applied by the `Caller` extractor, which knows whether the token is valid). It also
/// puts the limiter into the request's extensions for that extractor.
pub async fn limit(State(limiter): State<Arc<Limiter>>, mut req: Request, next: Next) -> Response {
    if let Some(cert) = req.extensions().get::<PeerCertificate>() {
        // Mutual TLS: the certificate was verified in the handshake; its own budget only.
        if let Err(t) = limiter.check_agent(&cert.fingerprint) {
            return t.into_response();
        }
        req.extensions_mut().insert(limiter);
        return next.run(req).await;
    }
    let ip = req
        .extensions()
        .get::<PeerAddr>()
        .map(|p| address_key(p.0.ip()));
    if let Some(ip) = ip {
        if let Err(t) = limiter.check_blocked(ip) {
            return t.into_response();
        }
        let has_credential =
            req.headers().contains_key(header::AUTHORIZATION) || req.uri().path() == ENROLL_PATH;
        if !has_credential {
            if let Err(t) = limiter.check_address(ip) {
                return t.into_response();
            }
        }
    }
    req.extensions_mut().insert(limiter.clone());
    let response = next.run(req).await;
    if response.status() == StatusCode::UNAUTHORIZED {
        if let Some(ip) = ip {
            limiter.failed(ip);
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(settings: LimitSettings) -> Limiter {
        Limiter::new(&settings, Arc::new(Metrics::default()))
    }

    #[test]
    fn each_key_has_its_own_budget_and_refusals_say_when_to_retry() {
        let l = limiter(LimitSettings {
            token: LimitSettings::per_minute(1, 2),
            ..LimitSettings::off()
        });
        assert!(l.check_token("tok_a").is_ok());
        assert!(l.check_token("tok_a").is_ok());
        let t = l.check_token("tok_a").unwrap_err();
        assert_eq!(t.reason, Reason::Token);
        // One request a minute: the next one is allowed within a minute, not sooner than ~59 s.
        assert!((59..=60).contains(&t.retry_after_secs()), "{t:?}");
        assert!(
            l.check_token("tok_b").is_ok(),
            "another token is not affected"
        );
        let m = l.metrics.render();
        assert!(
            m.contains("bulwark_rate_limited_total{reason=\"token\"} 1"),
            "{m}"
        );
    }

    #[test]
    fn an_address_that_spent_its_failure_budget_is_blocked_then_let_go() {
        let l = limiter(LimitSettings {
            auth_failures: Some(Rate {
                count: NonZeroU32::new(1).unwrap(),
                per: Duration::from_millis(300),
                burst: NonZeroU32::new(2).unwrap(),
            }),
            ..LimitSettings::off()
        });
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let other: IpAddr = "192.0.2.8".parse().unwrap();
        l.failed(ip);
        l.failed(ip);
        assert!(l.check_blocked(ip).is_ok(), "within the burst");
        l.failed(ip);
        let t = l.check_blocked(ip).unwrap_err();
        assert_eq!(t.reason, Reason::AuthFailures);
        assert_eq!(t.retry_after_secs(), 1);
        assert!(l.check_blocked(other).is_ok());
        std::thread::sleep(Duration::from_millis(350));
        assert!(l.check_blocked(ip).is_ok(), "the budget refilled");
        l.forget_idle();
        assert!(l.blocked.lock().unwrap().is_empty());
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_64() {
        let key = |s: &str| address_key(s.parse().unwrap()).to_string();
        assert_eq!(key("192.0.2.1"), "192.0.2.1");
        assert_eq!(key("::ffff:192.0.2.1"), "192.0.2.1");
        assert_eq!(key("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::");
        assert_eq!(key("2001:db8:1:2:ffff:ffff:ffff:ffff"), "2001:db8:1:2::");
        assert_ne!(key("2001:db8:1:3::1"), key("2001:db8:1:2::1"));
    }

    #[test]
    fn turned_off_limits_never_refuse() {
        let l = limiter(LimitSettings::off());
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        for _ in 0..1000 {
            l.failed(ip);
            assert!(l.check_address(ip).is_ok());
            assert!(l.check_token("t").is_ok());
            assert!(l.check_agent(&Arc::from("AA")).is_ok());
        }
        assert!(l.check_blocked(ip).is_ok());
    }
}

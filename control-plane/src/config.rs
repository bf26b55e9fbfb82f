//! `/etc/bulwark/control-plane.toml`: read raw, then validated into [`Settings`] at start-up so a
//! typo stops the server with the key's name instead of surfacing at the first request.
//! Command-line flags override the file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub const DEFAULT_CONFIG: &str = "/etc/bulwark/control-plane.toml";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8443";
pub const DEFAULT_DATA_DIR: &str = "/var/lib/bulwark";
/// Largest request body accepted; policies and databases are a few hundred bytes.
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024;
/// How often the backup storages' status is read from their Proxmox clusters.
pub const DEFAULT_STORAGE_SYNC_SECS: u64 = 300;
/// Allowed range of `storage_sync_secs`: often enough to notice, rarely enough not to load PVE.
pub const STORAGE_SYNC_RANGE: std::ops::RangeInclusive<i64> = 10..=86_400;
/// Lifetime of agent certificates; agents renew at two thirds of it.
pub const DEFAULT_AGENT_CERT_DAYS: u32 = 30;
/// Allowed range of `agent_cert_days`: short-lived, but long enough to survive a long weekend.
pub const AGENT_CERT_DAYS_RANGE: std::ops::RangeInclusive<i64> = 1..=365;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    #[serde(default)]
    pub tls: RawTls,
    pub max_body_bytes: Option<i64>,
    /// `text` or `json`.
    pub log_format: Option<String>,
    /// Seconds between two reads of every backup storage's status (10..=86400, default 300).
    pub storage_sync_secs: Option<i64>,
    /// Days an agent certificate is valid (1..=365, default 30).
    pub agent_cert_days: Option<i64>,
    /// Seconds between two scheduler passes (due policies, lost jobs): 1..=300, default 15.
    pub scheduler_tick_secs: Option<i64>,
    /// A running job whose agent sent no heartbeat or progress for this long is failed and
    /// retried: 10..=86400, default 120.
    pub job_lost_secs: Option<i64>,
    /// Jobs one agent runs at once: 1..=64, default 1.
    pub max_jobs_per_agent: Option<i64>,
    /// Jobs writing to one backup storage at once: 1..=1024, default 4.
    pub max_jobs_per_storage: Option<i64>,
    /// Attempts per job (the first and the retries after it was lost): 1..=10, default 3.
    pub job_max_attempts: Option<i64>,
    /// Days between gc runs of a storage: 1..=365, default 7.
    pub gc_interval_days: Option<i64>,
    /// A storage's gc runs early once this many snapshots were forgotten on it: 1..=100000,
    /// default 20.
    pub gc_after_forgets: Option<i64>,
    /// Hours between scheduled verifies of a storage: 1..=8760, default 24.
    pub verify_interval_hours: Option<i64>,
    /// Each scheduled verify reads one of this many parts of the chunks, so every chunk is
    /// read once per this many runs: 1..=1000, default 7 (with daily runs, every week).
    pub verify_parts: Option<i64>,
    /// Open connections at most; further clients wait in the listen queue: 1..=1000000,
    /// default 4096 (an agent holds two).
    pub max_connections: Option<i64>,
    /// Seconds a client has for its TLS handshake: 1..=300, default 10.
    pub tls_handshake_timeout_secs: Option<i64>,
    /// Seconds a client has to send a request's header, and that an idle kept-alive
    /// connection stays open: 1..=300, default 30.
    pub header_read_timeout_secs: Option<i64>,
    /// Seconds a client has to send a request's whole body, from its start: 1..=3600, default 30.
    pub body_read_timeout_secs: Option<i64>,
    /// Requests per second per API token (not platform admins'): 0 (off)..=1000000, default 50.
    pub rate_limit_token_per_sec: Option<i64>,
    /// Burst per API token: 1..=1000000, default 200.
    pub rate_limit_token_burst: Option<i64>,
    /// Requests per second per agent certificate: 0 (off)..=1000000, default 20.
    pub rate_limit_agent_per_sec: Option<i64>,
    /// Burst per agent: 1..=1000000, default 100.
    pub rate_limit_agent_burst: Option<i64>,
    /// Requests per second per source address without any credential: 0 (off)..=1000000,
    /// default 20.
    pub rate_limit_address_per_sec: Option<i64>,
    /// Burst per address without credentials: 1..=1000000, default 100.
    pub rate_limit_address_burst: Option<i64>,
    /// Failed authentications per minute per source address: 0 (off)..=1000000, default 30.
    pub auth_failures_per_min: Option<i64>,
    /// Burst of failed authentications per address: 1..=1000000, default 30.
    pub auth_failures_burst: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Validated settings the server runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// Certificate and key files; `None` means a self-signed pair kept in `<data_dir>/tls/`.
    pub tls: Option<(PathBuf, PathBuf)>,
    pub max_body_bytes: usize,
    pub log_format: LogFormat,
    /// Period of the backup-storage sync task.
    pub storage_sync: std::time::Duration,
    /// Lifetime of the agent certificates the built-in CA issues.
    pub agent_cert_days: u32,
    /// Scheduler period, lost-job timeout, concurrency limits, attempts.
    pub jobs: crate::jobs::JobSettings,
    /// Connection cap, timeouts for slow clients, rate limits.
    pub http: HttpSettings,
}

/// What protects the server from slow, numerous or abusive clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpSettings {
    pub max_connections: usize,
    pub tls_handshake_timeout: Duration,
    /// Also how long an idle kept-alive connection stays open.
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    pub limits: crate::ratelimit::LimitSettings,
}

pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            tls_handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(30),
            body_read_timeout: Duration::from_secs(30),
            limits: Default::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("configuration file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("configuration ({origin}): `{key}` {problem}")]
    Invalid {
        origin: String,
        key: &'static str,
        problem: String,
    },
}

/// Command-line values that take precedence over the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
}

impl RawConfig {
    /// Reads `path`. A missing file is fine only when it is the default path (a fresh install
    /// runs on defaults); a file named on the command line must exist.
    pub fn load(path: &Path, explicit: bool) -> Result<RawConfig, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
                return Ok(RawConfig::default())
            }
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })
    }

    pub fn validate(self, origin: &str, overrides: &Overrides) -> Result<Settings, ConfigError> {
        let invalid = |key, problem: String| ConfigError::Invalid {
            origin: origin.to_string(),
            key,
            problem,
        };
        let ranged = |key: &'static str,
                      value: Option<i64>,
                      range: std::ops::RangeInclusive<i64>,
                      default: i64,
                      unit: &str| match value {
            None => Ok(default),
            Some(n) if range.contains(&n) => Ok(n),
            Some(n) => Err(invalid(
                key,
                format!(
                    "must be between {} and {}{unit} (got {n})",
                    range.start(),
                    range.end()
                ),
            )),
        };
        let http = http_settings(&self, &ranged)?;
        let listen_text = overrides
            .listen
            .clone()
            .or(self.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.to_string());
        let listen = listen_text.parse().map_err(|_| {
            invalid(
                "listen",
                format!("'{listen_text}' is not an address:port such as 0.0.0.0:8443 or [::]:8443"),
            )
        })?;
        let data_dir = overrides
            .data_dir
            .clone()
            .or(self.data_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        if data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "must not be empty".into()));
        }
        let tls = match (self.tls.cert, self.tls.key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            (Some(_), None) => {
                return Err(invalid(
                    "tls.key",
                    "is required when tls.cert is set".into(),
                ))
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "tls.cert",
                    "is required when tls.key is set".into(),
                ))
            }
        };
        let max_body_bytes = match self.max_body_bytes {
            None => DEFAULT_MAX_BODY_BYTES,
            Some(n) if (1024..=16 * 1024 * 1024).contains(&n) => n as usize,
            Some(n) => {
                return Err(invalid(
                    "max_body_bytes",
                    format!("must be between 1024 and 16777216 (got {n})"),
                ))
            }
        };
        let log_format = match self.log_format.as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(invalid(
                    "log_format",
                    format!("'{other}' is not one of text, json"),
                ))
            }
        };
        let storage_sync_secs = ranged(
            "storage_sync_secs",
            self.storage_sync_secs,
            STORAGE_SYNC_RANGE,
            DEFAULT_STORAGE_SYNC_SECS as i64,
            " seconds",
        )?;
        let agent_cert_days = ranged(
            "agent_cert_days",
            self.agent_cert_days,
            AGENT_CERT_DAYS_RANGE,
            i64::from(DEFAULT_AGENT_CERT_DAYS),
            " days",
        )?;
        let defaults = crate::jobs::JobSettings::default();
        let secs = |d: std::time::Duration| d.as_secs() as i64;
        let jobs = crate::jobs::JobSettings {
            tick: std::time::Duration::from_secs(ranged(
                "scheduler_tick_secs",
                self.scheduler_tick_secs,
                1..=300,
                secs(defaults.tick),
                " seconds",
            )? as u64),
            lost_after: std::time::Duration::from_secs(ranged(
                "job_lost_secs",
                self.job_lost_secs,
                10..=86_400,
                secs(defaults.lost_after),
                " seconds",
            )? as u64),
            limits: crate::store::jobs::Limits {
                per_agent: ranged(
                    "max_jobs_per_agent",
                    self.max_jobs_per_agent,
                    1..=64,
                    defaults.limits.per_agent as i64,
                    "",
                )? as usize,
                per_storage: ranged(
                    "max_jobs_per_storage",
                    self.max_jobs_per_storage,
                    1..=1024,
                    defaults.limits.per_storage as i64,
                    "",
                )? as usize,
            },
            max_attempts: ranged(
                "job_max_attempts",
                self.job_max_attempts,
                1..=10,
                i64::from(defaults.max_attempts),
                "",
            )? as u32,
            retry_delay: defaults.retry_delay,
            upkeep: crate::jobs::upkeep::UpkeepSettings {
                gc_interval_days: ranged(
                    "gc_interval_days",
                    self.gc_interval_days,
                    1..=365,
                    i64::from(defaults.upkeep.gc_interval_days),
                    " days",
                )? as u32,
                gc_after_forgets: ranged(
                    "gc_after_forgets",
                    self.gc_after_forgets,
                    1..=100_000,
                    i64::from(defaults.upkeep.gc_after_forgets),
                    "",
                )? as u32,
                verify_interval_hours: ranged(
                    "verify_interval_hours",
                    self.verify_interval_hours,
                    1..=8760,
                    i64::from(defaults.upkeep.verify_interval_hours),
                    " hours",
                )? as u32,
                verify_parts: ranged(
                    "verify_parts",
                    self.verify_parts,
                    1..=1000,
                    i64::from(defaults.upkeep.verify_parts),
                    "",
                )? as u32,
            },
        };
        Ok(Settings {
            listen,
            data_dir,
            tls,
            max_body_bytes,
            log_format,
            storage_sync: std::time::Duration::from_secs(storage_sync_secs as u64),
            agent_cert_days: agent_cert_days as u32,
            jobs,
            http,
        })
    }
}

/// `validate`'s checker of one integer key: name, value, allowed range, default, unit.
type Ranged<'a> = dyn Fn(
        &'static str,
        Option<i64>,
        std::ops::RangeInclusive<i64>,
        i64,
        &str,
    ) -> Result<i64, ConfigError>
    + 'a;

/// The connection, timeout and rate-limit keys, checked one by one.
fn http_settings(raw: &RawConfig, ranged: &Ranged<'_>) -> Result<HttpSettings, ConfigError> {
    use crate::ratelimit::LimitSettings;
    let d = HttpSettings::default();
    let secs = |key, value, range, default: Duration| {
        ranged(key, value, range, default.as_secs() as i64, " seconds")
            .map(|n| Duration::from_secs(n as u64))
    };
    const MANY: i64 = 1_000_000;
    // A rate: requests per period (0 turns the limit off) and a burst; defaults from
    // `LimitSettings::default()`.
    let rate = |count_key,
                count: Option<i64>,
                burst_key,
                burst: Option<i64>,
                default: Option<crate::ratelimit::Rate>,
                per_minute: bool|
     -> Result<Option<crate::ratelimit::Rate>, ConfigError> {
        let (c, b) = default.map_or((0, 1), |r| (r.count.get(), r.burst.get()));
        let c = ranged(count_key, count, 0..=MANY, i64::from(c), "")? as u32;
        let b = ranged(burst_key, burst, 1..=MANY, i64::from(b), "")? as u32;
        Ok(if per_minute {
            LimitSettings::per_minute(c, b)
        } else {
            LimitSettings::per_second(c, b)
        })
    };
    Ok(HttpSettings {
        max_connections: ranged(
            "max_connections",
            raw.max_connections,
            1..=MANY,
            d.max_connections as i64,
            "",
        )? as usize,
        tls_handshake_timeout: secs(
            "tls_handshake_timeout_secs",
            raw.tls_handshake_timeout_secs,
            1..=300,
            d.tls_handshake_timeout,
        )?,
        header_read_timeout: secs(
            "header_read_timeout_secs",
            raw.header_read_timeout_secs,
            1..=300,
            d.header_read_timeout,
        )?,
        body_read_timeout: secs(
            "body_read_timeout_secs",
            raw.body_read_timeout_secs,
            1..=3600,
            d.body_read_timeout,
        )?,
        limits: LimitSettings {
            token: rate(
                "rate_limit_token_per_sec",
                raw.rate_limit_token_per_sec,
                "rate_limit_token_burst",
                raw.rate_limit_token_burst,
                d.limits.token,
                false,
            )?,
            agent: rate(
                "rate_limit_agent_per_sec",
                raw.rate_limit_agent_per_sec,
                "rate_limit_agent_burst",
                raw.rate_limit_agent_burst,
                d.limits.agent,
                false,
            )?,
            address: rate(
                "rate_limit_address_per_sec",
                raw.rate_limit_address_per_sec,
                "rate_limit_address_burst",
                raw.rate_limit_address_burst,
                d.limits.address,
                false,
            )?,
            auth_failures: rate(
                "auth_failures_per_min",
                raw.auth_failures_per_min,
                "auth_failures_burst",
                raw.auth_failures_burst,
                d.limits.auth_failures,
                true,
            )?,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Settings, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: "t.toml".into(),
            message: e.to_string(),
        })?;
        raw.validate("t.toml", &Overrides::default())
    }

    #[test]
    fn errors_name_the_key() {
        let s = parse("listen = \"0.0.0.0:9443\"\ndata_dir = \"/srv/b\"\n").unwrap();
        assert_eq!(s.listen.port(), 9443);
        let e = parse("lisen = \"x\"").unwrap_err().to_string();
        assert!(e.contains("lisen"), "{e}");
        let e = parse("listen = \"nope\"").unwrap_err().to_string();
        assert!(e.contains("`listen`") && e.contains("nope"), "{e}");
        let e = parse("[tls]\ncert = \"/c.pem\"").unwrap_err().to_string();
        assert!(e.contains("tls.key"), "{e}");
        let e = parse("max_body_bytes = 5").unwrap_err().to_string();
        assert!(e.contains("max_body_bytes"), "{e}");
        let e = parse("max_body_bytes = \"big\"").unwrap_err().to_string();
        assert!(e.contains("max_body_bytes"), "{e}");
        assert_eq!(parse("").unwrap().storage_sync.as_secs(), 300);
        assert_eq!(
            parse("storage_sync_secs = 60")
                .unwrap()
                .storage_sync
                .as_secs(),
            60
        );
        for bad in ["storage_sync_secs = 9", "storage_sync_secs = 86401"] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains("`storage_sync_secs`"), "{e}");
        }
        assert_eq!(parse("").unwrap().agent_cert_days, 30);
        assert_eq!(parse("agent_cert_days = 7").unwrap().agent_cert_days, 7);
        for bad in ["agent_cert_days = 0", "agent_cert_days = 366"] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains("`agent_cert_days`"), "{e}");
        }
        let s =
            parse("scheduler_tick_secs = 2\njob_lost_secs = 30\nmax_jobs_per_agent = 2").unwrap();
        assert_eq!(
            (
                s.jobs.tick.as_secs(),
                s.jobs.lost_after.as_secs(),
                s.jobs.limits.per_agent,
                s.jobs.limits.per_storage
            ),
            (2, 30, 2, 4)
        );
        for bad in [
            "scheduler_tick_secs = 0",
            "job_lost_secs = 5",
            "max_jobs_per_storage = 0",
            "job_max_attempts = 11",
            "gc_interval_days = 0",
            "verify_parts = 1001",
        ] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains(bad.split(' ').next().unwrap()), "{e}");
        }
        let e = parse("storage_sync = 60").unwrap_err().to_string();
        assert!(e.contains("storage_sync"), "{e}");
    }

    #[test]
    fn connection_limits_timeouts_and_rate_limits_are_checked() {
        assert_eq!(parse("").unwrap().http, HttpSettings::default());
        let s = parse(
            "max_connections = 10\nheader_read_timeout_secs = 2\nbody_read_timeout_secs = 3\n\
             tls_handshake_timeout_secs = 4\nrate_limit_token_per_sec = 5\nrate_limit_token_burst = 6\n\
             rate_limit_agent_per_sec = 0\nauth_failures_per_min = 7",
        )
        .unwrap()
        .http;
        assert_eq!(s.max_connections, 10);
        assert_eq!(
            (
                s.header_read_timeout.as_secs(),
                s.body_read_timeout.as_secs(),
                s.tls_handshake_timeout.as_secs()
            ),
            (2, 3, 4)
        );
        let token = s.limits.token.unwrap();
        assert_eq!(
            (token.count.get(), token.burst.get(), token.per.as_secs()),
            (5, 6, 1)
        );
        assert_eq!(s.limits.agent, None, "0 turns a limit off");
        let failures = s.limits.auth_failures.unwrap();
        assert_eq!(
            (
                failures.count.get(),
                failures.burst.get(),
                failures.per.as_secs()
            ),
            (7, 30, 60)
        );
        for bad in [
            "max_connections = 0",
            "header_read_timeout_secs = 0",
            "body_read_timeout_secs = 3601",
            "tls_handshake_timeout_secs = 301",
            "rate_limit_token_per_sec = -1",
            "rate_limit_token_burst = 0",
            "rate_limit_address_burst = 1000001",
            "auth_failures_burst = 0",
        ] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(
                e.contains(&format!("`{}`", bad.split(' ').next().unwrap())),
                "{e}"
            );
        }
    }
}

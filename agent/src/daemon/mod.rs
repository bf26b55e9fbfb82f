//! The agent as a daemon (`bulwark-agent run`): it heartbeats, long-polls the control plane for
//! jobs, hands each to the runner of its kind ([`runners`]) and delivers the result until the
//! control plane acknowledges it.
//!
//! This module is what every job shares — the connection, the stop, the results — so that a new
//! kind of job is only a runner. What must never be lost is a finished job's result: it is
//! written to `<state-dir>/results/<job>.json` before the first delivery attempt and removed only
//! once acknowledged, so neither a control-plane restart nor an agent restart in between loses
//! it (results are idempotent on the server, so a re-delivery is harmless). Every call to the
//! control plane retries with capped exponential backoff and jitter while it is unreachable.
//!
//! A stop (SIGTERM/SIGINT, or the control plane refusing the agent's identity) ends polling at
//! once; a running job gets the stop timeout to finish (see the runners). The workspace key
//! arrives inside each job and is kept in memory only.

mod runners;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bulwark_core::api::JobResult;
use chrono::Utc;
use tokio::sync::watch;

use crate::cli::{declared_databases, Global};
use crate::control::{write_private, Client, ControlError, StateDir};

/// Long-poll length asked for (the server allows 30; the HTTP client times out at 30).
const POLL_WAIT_SECS: u32 = 25;
/// How often the configured databases are discovered again for heartbeats.
const REDISCOVER_EVERY: Duration = Duration::from_secs(600);

/// How the daemon runs, as `run`'s options say.
pub struct Settings {
    /// Where `enroll` kept the key, certificates and state.
    pub state: StateDir,
    /// The state directory's `results/`, for results not yet acknowledged.
    pub results: PathBuf,
    pub heartbeat_every: Duration,
    /// How long a running job may take to finish once a stop is requested.
    pub stop_timeout: Duration,
}

/// The client, replaced when the certificate is renewed.
type SharedClient = Arc<RwLock<Arc<Client>>>;

fn current(client: &SharedClient) -> Arc<Client> {
    client.read().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Runs until `stop_requested` resolves (then `Ok`), or until the control plane refuses this
/// agent's identity (a revoked or unknown certificate: that error).
pub async fn run(
    g: &Global,
    client: Client,
    settings: Settings,
    stop_requested: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ControlError> {
    let client: SharedClient = Arc::new(RwLock::new(Arc::new(client)));
    let (stop_tx, stop) = watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    let on_signal = stop_tx.clone();
    tokio::spawn(async move {
        stop_requested.await;
        tracing::info!(
            "stop requested: no new jobs; a running backup gets the stop timeout to finish"
        );
        let _ = on_signal.send(true);
    });
    let heartbeats = tokio::spawn(heartbeat_loop(
        g.clone(),
        settings.state.clone(),
        client.clone(),
        settings.heartbeat_every,
        stop_tx.clone(),
    ));
    let daemon = Daemon {
        runners: runners::Context {
            g: g.clone(),
            state: settings.state.clone(),
            client,
            stop,
            stop_timeout: settings.stop_timeout,
        },
        results: settings.results,
    };
    let outcome = daemon.job_loop().await;
    let _ = stop_tx.send(true);
    // A heartbeat refused for the agent's identity stopped the loop too.
    let refused = match tokio::time::timeout(Duration::from_secs(2), heartbeats).await {
        Ok(Ok(Err(e))) => Some(e),
        _ => None,
    };
    match (outcome, refused) {
        (Err(e), _) | (Ok(()), Some(e)) => Err(e),
        (Ok(()), None) => Ok(()),
    }
}

/// Capped exponential backoff with jitter: 1 s, 2 s, 4 s, 8 s, then every 15 s (a restarted
/// control plane sees its agents back within seconds; a thousand agents do not retry in step).
struct Backoff(u32);

impl Backoff {
    fn next(&mut self) -> Duration {
        let base = 1u64 << self.0.min(4);
        self.0 += 1;
        let jitter = u64::from(rand_u16()) % 1000;
        Duration::from_millis((base * 1000).min(15_000) + jitter)
    }
}

fn rand_u16() -> u16 {
    u16::from_str_radix(&bulwark_core::crypto::random_hex(2), 16).unwrap_or(0)
}

/// Sleeps `d`, or less if a stop is requested; `true` if stopped.
async fn sleep_or_stop(d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    if *stop.borrow() {
        return true;
    }
    let stopped = tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = stop.wait_for(|s| *s) => true,
    };
    stopped || *stop.borrow()
}

/// Heartbeats until stopped. A refusal of the agent's identity (revoked, unknown certificate)
/// stops the daemon (gracefully, through `stop`) and is returned.
async fn heartbeat_loop(
    g: Global,
    dir: StateDir,
    client: SharedClient,
    every: Duration,
    stop_tx: Arc<watch::Sender<bool>>,
) -> Result<(), ControlError> {
    let mut stop = stop_tx.subscribe();
    let mut databases = declared_databases(&g).await;
    let mut discovered = tokio::time::Instant::now();
    loop {
        if discovered.elapsed() >= REDISCOVER_EVERY {
            databases = declared_databases(&g).await;
            discovered = tokio::time::Instant::now();
        }
        let hb = bulwark_core::api::Heartbeat {
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            databases: databases.clone(),
            wal: crate::wal_target::all_archived(&dir.path),
        };
        match current(&client).heartbeat(&hb).await {
            Ok(answer) => {
                for c in &answer.conflicts {
                    tracing::warn!(database = %c.id, "not registered: {}", c.problem);
                }
                if let Err(e) = renew_if_due(&dir, &client).await {
                    tracing::warn!(error = %e, "certificate renewal failed; retried at the next heartbeat");
                }
            }
            Err(e) if e.is_identity_refused() => {
                tracing::error!(error = %e, "the control plane refused this agent; stopping");
                let _ = stop_tx.send(true);
                return Err(e);
            }
            Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
        }
        if sleep_or_stop(every, &mut stop).await {
            return Ok(());
        }
    }
}

/// Renews the certificate at two thirds of its life and switches to the new one.
async fn renew_if_due(dir: &StateDir, client: &SharedClient) -> anyhow::Result<()> {
    if Utc::now() < dir.load()?.renew_after {
        return Ok(());
    }
    let new = dir.renew(&current(client)).await?;
    let (fresh, _) = Client::enrolled(dir)?;
    *client.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(fresh);
    tracing::info!(expires_at = %new.expires_at, "certificate renewed");
    Ok(())
}

struct Daemon {
    runners: runners::Context,
    results: PathBuf,
}

impl Daemon {
    /// Polls and runs jobs until stopped. Only a refused identity ends it with an error.
    async fn job_loop(&self) -> Result<(), ControlError> {
        let mut stop = self.runners.stop.clone();
        self.deliver_pending().await?;
        let mut backoff = Backoff(0);
        loop {
            if *stop.borrow() {
                return Ok(());
            }
            let client = current(&self.runners.client);
            let polled = tokio::select! {
                r = client.poll(POLL_WAIT_SECS) => r,
                _ = stop.wait_for(|s| *s) => return Ok(()),
            };
            match polled {
                Ok(answer) => {
                    backoff = Backoff(0);
                    if let Some(job) = answer {
                        let (id, result) = runners::answer(&self.runners, job).await;
                        self.keep_and_deliver(&id, &result).await?;
                    }
                }
                Err(e) if e.is_identity_refused() => return Err(e),
                Err(e) => {
                    let wait = backoff.next();
                    tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "polling for jobs failed");
                    if sleep_or_stop(wait, &mut stop).await {
                        return Ok(());
                    }
                    // The control plane is back: results it missed go first.
                    self.deliver_pending().await?;
                }
            }
        }
    }

    async fn keep_and_deliver(&self, job: &str, result: &JobResult) -> Result<(), ControlError> {
        let path = self.results.join(format!("{job}.json"));
        let bytes = serde_json::to_vec(result).expect("results serialise");
        if let Err(e) = write_private(&path, &bytes) {
            tracing::error!(error = %e, "cannot keep the result on disk; delivering from memory only");
        }
        self.deliver(job, result, &path).await
    }

    /// Sends a result until acknowledged, or until stopped (it stays on disk for the next start).
    async fn deliver(
        &self,
        job: &str,
        result: &JobResult,
        path: &Path,
    ) -> Result<(), ControlError> {
        let mut stop = self.runners.stop.clone();
        let mut backoff = Backoff(0);
        let mut stopping_tries = 0;
        loop {
            match current(&self.runners.client).result(job, result).await {
                Ok(ack) => {
                    let _ = std::fs::remove_file(path);
                    tracing::info!(job, status = %ack.status, duplicate = ack.duplicate, "result delivered");
                    return Ok(());
                }
                Err(e) if e.is_identity_refused() => return Err(e),
                Err(e) if !e.is_transient() => {
                    // The control plane will never take it (e.g. the job is unknown there):
                    // keeping it would retry forever.
                    let _ = std::fs::remove_file(path);
                    tracing::error!(job, error = %e, "result refused; dropped");
                    return Ok(());
                }
                Err(e) => {
                    if *stop.borrow() {
                        stopping_tries += 1;
                        if stopping_tries >= 2 {
                            tracing::warn!(job, file = %path.display(), "stopping with an undelivered result; it is sent at the next start");
                            return Ok(());
                        }
                    }
                    let wait = backoff.next();
                    tracing::warn!(job, error = %e, retry_in_ms = wait.as_millis() as u64, "delivering the result failed");
                    sleep_or_stop(wait, &mut stop).await;
                }
            }
        }
    }

    /// Results kept from before (an earlier run, or while the control plane was away).
    async fn deliver_pending(&self) -> Result<(), ControlError> {
        let Ok(entries) = std::fs::read_dir(&self.results) else {
            return Ok(());
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(job) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".json"))
                .map(str::to_string)
            else {
                continue;
            };
            let parsed = std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<JobResult>(&b).ok());
            match parsed {
                Some(result) => self.deliver(&job, &result, &path).await?,
                None => {
                    tracing::error!(file = %path.display(), "unreadable kept result; moved aside");
                    let _ = std::fs::rename(&path, path.with_extension("damaged"));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped() {
        let mut b = Backoff(0);
        let waits: Vec<u64> = (0..8).map(|_| b.next().as_secs()).collect();
        assert_eq!(&waits[..4], &[1, 2, 4, 8]);
        assert!(waits[4..].iter().all(|w| *w == 15), "{waits:?}");
    }
}

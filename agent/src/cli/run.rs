//! `run`: the agent as a daemon. It heartbeats, long-polls the control plane for jobs, runs each
//! backup with the database's driver, reports progress, and delivers the result until the
//! control plane acknowledges it.
//!
//! What must never be lost is a finished backup's result: it is written to
//! `<state-dir>/results/<job>.json` before the first delivery attempt and removed only once
//! acknowledged, so neither a control-plane restart nor an agent restart in between loses it
//! (results are idempotent on the server, so a re-delivery is harmless). Every call to the
//! control plane retries with capped exponential backoff and jitter while it is unreachable.
//!
//! SIGTERM/SIGINT stop polling at once; a running backup gets `--stop-timeout` seconds to finish,
//! then it is aborted between chunk writes (no manifest, lease released, nothing visible) and
//! reported as failed. The workspace key arrives inside each job and is kept in memory only.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Result;
use bulwark_core::api::{AgentJob, JobKind, JobProgress, JobResult, UnreadableJob};
use bulwark_core::repo::backup::Progress;
use bulwark_core::repo::Repository;
use chrono::Utc;
use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::sync::watch;

use super::enroll::{declared_databases, usage_or};
use super::Global;
use crate::backup::{DriverBackup, Supervisor};
use crate::control::{write_private, Client, ControlError, StateDir, DEFAULT_STATE_DIR};

/// Long-poll length asked for (the server allows 30; the HTTP client times out at 30).
const POLL_WAIT_SECS: u32 = 25;
/// How often a running backup reports progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(3);
/// How often the configured databases are discovered again for heartbeats.
const REDISCOVER_EVERY: Duration = Duration::from_secs(600);
/// Label of the key slot the workspace key opens.
const WORKSPACE_SLOT_LABEL: &str = "workspace key (control plane)";

#[derive(clap::Args, Debug)]
#[command(after_help = "\
Runs until SIGTERM or SIGINT (systemd: `bulwark-agent run`, Type=simple). Needs an enrolment \
(`bulwark-agent enroll`) and a [repository] location in the agent configuration; the repository \
is opened with the workspace key each job brings, and created with it if it does not exist yet. \
A repository made earlier with a passphrase (password_file) gets a key slot for the workspace \
key on the first job.")]
pub struct RunArgs {
    /// Where `enroll` kept the key, certificates and state
    #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR, env = "BULWARK_STATE_DIR")]
    state_dir: PathBuf,
    /// Seconds between two heartbeats
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=300))]
    heartbeat_secs: u64,
    /// Seconds a running backup may take to finish after SIGTERM before it is aborted
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(0..=3600))]
    stop_timeout: u64,
}

/// The client, replaced when the certificate is renewed.
type SharedClient = Arc<RwLock<Arc<Client>>>;

fn current(client: &SharedClient) -> Arc<Client> {
    client.read().unwrap_or_else(|p| p.into_inner()).clone()
}

pub async fn run(g: &Global, a: RunArgs) -> Result<ExitCode> {
    let dir = StateDir::new(&a.state_dir);
    let (client, state) = Client::enrolled(&dir).map_err(usage_or)?;
    g.location()?;
    let results = dir.results()?;
    let client: SharedClient = Arc::new(RwLock::new(Arc::new(client)));
    let (stop_tx, stop) = watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    let on_signal = stop_tx.clone();
    tokio::spawn(async move {
        super::shutdown_signal().await;
        tracing::info!(
            "stop requested: no new jobs; a running backup gets the stop timeout to finish"
        );
        let _ = on_signal.send(true);
    });
    tracing::info!(agent = %state.agent_id, server = %state.server_url, "agent running");
    let heartbeats = tokio::spawn(heartbeat_loop(
        g.clone(),
        dir.clone(),
        client.clone(),
        Duration::from_secs(a.heartbeat_secs),
        stop_tx.clone(),
    ));
    let daemon = Daemon {
        g: g.clone(),
        client,
        results,
        stop,
        stop_timeout: Duration::from_secs(a.stop_timeout),
    };
    let outcome = daemon.job_loop().await;
    let _ = stop_tx.send(true);
    // A heartbeat refused for the agent's identity stopped the loop too.
    let refused = match tokio::time::timeout(Duration::from_secs(2), heartbeats).await {
        Ok(Ok(Err(e))) => Some(e),
        _ => None,
    };
    match (outcome, refused) {
        (Err(e), _) | (Ok(()), Some(e)) => Err(anyhow::Error::new(e).context(
            "the control plane no longer accepts this agent; enrol it again (`bulwark-agent enroll --force`)",
        )),
        (Ok(()), None) => {
            tracing::info!("agent stopped");
            Ok(ExitCode::SUCCESS)
        }
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
async fn renew_if_due(dir: &StateDir, client: &SharedClient) -> Result<()> {
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
    g: Global,
    client: SharedClient,
    results: PathBuf,
    stop: watch::Receiver<bool>,
    stop_timeout: Duration,
}

impl Daemon {
    /// Polls and runs jobs until stopped. Only a refused identity ends it with an error.
    async fn job_loop(&self) -> Result<(), ControlError> {
        let mut stop = self.stop.clone();
        self.deliver_pending().await?;
        let mut backoff = Backoff(0);
        loop {
            if *stop.borrow() {
                return Ok(());
            }
            let client = current(&self.client);
            let polled = tokio::select! {
                r = client.poll(POLL_WAIT_SECS) => r,
                _ = stop.wait_for(|s| *s) => return Ok(()),
            };
            match polled {
                Ok(answer) => {
                    backoff = Backoff(0);
                    match answer {
                        Some(Ok(job)) => self.execute(job).await?,
                        Some(Err(unreadable)) => self.refuse(unreadable).await?,
                        None => {}
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

    async fn execute(&self, job: AgentJob) -> Result<(), ControlError> {
        tracing::info!(job = %job.id, kind = %job.kind, database = %job.database_id, attempt = job.attempt, "job started");
        let result = match job.kind {
            JobKind::Backup => self.backup(&job).await,
        };
        match &result.error {
            None => tracing::info!(job = %job.id, snapshot = ?result.snapshot, "backup written"),
            Some(e) => tracing::warn!(job = %job.id, error = %e, "backup failed"),
        }
        self.keep_and_deliver(&job.id, &result).await
    }

    /// Answers a job this agent cannot read with a failed result that says why.
    async fn refuse(&self, job: UnreadableJob) -> Result<(), ControlError> {
        let now = Utc::now();
        let error = format!(
            "bulwark-agent {} cannot run job {}: {}; upgrade the agent",
            env!("CARGO_PKG_VERSION"),
            job.id,
            job.reason
        );
        tracing::error!(job = %job.id, error = %error, "job refused");
        let result = JobResult {
            succeeded: false,
            snapshot: None,
            logical_bytes: 0,
            stored_bytes: 0,
            started_at: now,
            finished_at: now,
            error: Some(error),
            warnings: Vec::new(),
        };
        self.keep_and_deliver(&job.id, &result).await
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
        let mut stop = self.stop.clone();
        let mut backoff = Backoff(0);
        let mut stopping_tries = 0;
        loop {
            match current(&self.client).result(job, result).await {
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

    /// Runs the backup a job asks for; every failure becomes a failed result naming why.
    async fn backup(&self, job: &AgentJob) -> JobResult {
        let started_at = Utc::now();
        match self.try_backup(job).await {
            Ok((manifest, warnings)) => JobResult {
                succeeded: true,
                snapshot: Some(manifest.name.clone()),
                logical_bytes: manifest.stats.logical_bytes,
                stored_bytes: manifest.stats.new_stored_bytes,
                started_at,
                finished_at: Utc::now(),
                error: None,
                warnings,
            },
            Err(e) => JobResult {
                succeeded: false,
                snapshot: None,
                logical_bytes: 0,
                stored_bytes: 0,
                started_at,
                finished_at: Utc::now(),
                error: Some(format!("{e:#}")),
                warnings: Vec::new(),
            },
        }
    }

    async fn try_backup(
        &self,
        job: &AgentJob,
    ) -> Result<(bulwark_core::manifest::Manifest, Vec<String>)> {
        let (db, driver) = self.g.database(&job.database_id)?;
        if db.kind != job.database_type {
            anyhow::bail!(
                "job {}: the control plane registered {} as {}, but this agent's configuration declares it as {}; no snapshot was written",
                job.id, job.database_id, job.database_type, db.kind
            );
        }
        let repo = open_with_workspace_key(&self.g, &job.workspace_key).await?;
        // The policy's method goes to the driver as it is: one the engine cannot take (logical
        // for SQLite) fails the job with the driver's reason instead of being swapped silently.
        let backup = DriverBackup {
            driver: driver.as_ref(),
            method: job.method,
            kind: job.snapshot_kind,
            tags: job.tags.clone(),
        };
        let reporting = Reporting {
            daemon: self,
            job,
            cancel: Arc::new(watch::channel(false).0),
        };
        let written = crate::backup::run(&repo, backup, &reporting).await?;
        Ok((written.manifest, written.warnings))
    }

    async fn report(&self, job: &AgentJob, phase: &str, bytes: u64) {
        let report = JobProgress {
            phase: phase.into(),
            bytes,
            percent: None,
        };
        if let Err(e) = current(&self.client).progress(&job.id, &report).await {
            tracing::debug!(error = %e, "progress report failed");
        }
    }
}

/// The control plane's view of a backup job: phases and progress reports, and the two ways it
/// ends early (the control plane cancels it; the agent is stopped and the grace time is over).
struct Reporting<'a> {
    daemon: &'a Daemon,
    job: &'a AgentJob,
    /// Set when a progress report is answered with "cancel".
    cancel: Arc<watch::Sender<bool>>,
}

impl Supervisor for Reporting<'_> {
    // Percentages are taken against the size the database reports (the last report before
    // the end says at most 99 %).
    fn wants_estimate(&self) -> bool {
        true
    }

    fn checking(&self) -> BoxFuture<'_, ()> {
        self.daemon.report(self.job, "checking", 0).boxed()
    }

    fn reading(&self, progress: Arc<Progress>, estimate: Option<u64>) -> Box<dyn Send> {
        let client = self.daemon.client.clone();
        let id = self.job.id.clone();
        let cancel = self.cancel.clone();
        let reporter = tokio::spawn(async move {
            loop {
                tokio::time::sleep(PROGRESS_EVERY).await;
                let bytes = progress
                    .bytes_read
                    .load(std::sync::atomic::Ordering::Relaxed);
                let report = JobProgress {
                    phase: "reading".into(),
                    bytes,
                    percent: estimate.map(|total| percent_of(bytes, total)),
                };
                match current(&client).progress(&id, &report).await {
                    Ok(ack) if ack.cancel => {
                        let _ = cancel.send(true);
                        return;
                    }
                    Ok(_) => {}
                    Err(e) => tracing::debug!(error = %e, "progress report failed"),
                }
            }
        });
        Box::new(AbortOnDrop(reporter))
    }

    fn interrupted(&self) -> BoxFuture<'_, String> {
        let mut cancel = self.cancel.subscribe();
        let mut stop = self.daemon.stop.clone();
        let grace = self.daemon.stop_timeout;
        async move {
            let why = tokio::select! {
                _ = cancel.wait_for(|c| *c) => "the control plane cancelled the job",
                _ = async {
                    let _ = stop.wait_for(|s| *s).await;
                    tokio::time::sleep(grace).await;
                } => "the agent was stopped (SIGTERM) before the backup finished",
            };
            why.to_string()
        }
        .boxed()
    }

    fn committing(&self) -> BoxFuture<'_, ()> {
        self.daemon.report(self.job, "committing", 0).boxed()
    }
}

/// A task that ends with its owner.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// `done` of `total` in percent, one decimal, at most 99 (only the result says "finished").
fn percent_of(done: u64, total: u64) -> f64 {
    ((done as f64 * 1000.0 / total as f64).round() / 10.0).min(99.0)
}

/// Opens the configured repository with the workspace key; creates the repository with it when
/// there is none, and gives an existing passphrase repository a slot for it.
async fn open_with_workspace_key(g: &Global, key: &str) -> Result<Repository> {
    use bulwark_core::Error;
    let backend = g.backend(true)?;
    match Repository::open(backend.clone(), key.as_bytes()).await {
        Ok(repo) => Ok(repo),
        Err(Error::NotARepository { .. }) => {
            let location = g.location()?;
            tracing::info!(%location, "creating the repository with the workspace key");
            match Repository::init(
                backend.clone(),
                key.as_bytes(),
                WORKSPACE_SLOT_LABEL,
                super::repo::MACHINE_KEY_KDF,
            )
            .await
            {
                Ok(repo) => Ok(repo),
                // Another process made it meanwhile.
                Err(Error::AlreadyExists { .. }) => {
                    Ok(Repository::open(backend, key.as_bytes()).await?)
                }
                Err(e) => Err(e.into()),
            }
        }
        Err(e @ Error::WrongPassphrase { .. }) => {
            let pass = g.passphrase().map_err(|_| {
                anyhow::anyhow!("{e}: the repository has no key slot for this workspace's key, and no password_file is configured to add one")
            })?;
            let repo = Repository::open(backend, &pass).await?;
            repo.add_key(
                key.as_bytes(),
                WORKSPACE_SLOT_LABEL,
                super::repo::MACHINE_KEY_KDF,
            )
            .await?;
            tracing::info!("added a key slot for the workspace key to the repository");
            Ok(repo)
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_are_estimates_below_100_and_backoff_is_capped() {
        assert_eq!(percent_of(0, 1000), 0.0);
        assert_eq!(percent_of(333, 1000), 33.3);
        assert_eq!(percent_of(5000, 1000), 99.0);
        let mut b = Backoff(0);
        let waits: Vec<u64> = (0..8).map(|_| b.next().as_secs()).collect();
        assert_eq!(&waits[..4], &[1, 2, 4, 8]);
        assert!(waits[4..].iter().all(|w| *w == 15), "{waits:?}");
    }
}

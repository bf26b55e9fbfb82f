//! `run`: the agent as a daemon ([`crate::daemon`]). Only what a command line decides is here:
//! the options, the enrolment the daemon starts from, the signals that stop it, and the exit.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;

use super::enroll::usage_or;
use super::Global;
use crate::control::{Client, StateDir, DEFAULT_STATE_DIR};
use crate::daemon;

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

pub async fn run(g: &Global, a: RunArgs) -> Result<ExitCode> {
    let dir = StateDir::new(&a.state_dir);
    let (client, state) = Client::enrolled(&dir).map_err(usage_or)?;
    if g.location().is_err() {
        // Jobs for a provisioned storage carry their repository; only jobs of workspaces
        // without one need the configured repository (they fail naming it).
        tracing::info!("no [repository] configured: jobs must name the control plane's storage");
    }
    // Leases in the shared repository say which agent holds them.
    bulwark_core::repo::lease::identify_holder(&state.agent_id);
    let results = dir.results()?;
    let settings = daemon::Settings {
        state: dir,
        results,
        heartbeat_every: Duration::from_secs(a.heartbeat_secs),
        stop_timeout: Duration::from_secs(a.stop_timeout),
    };
    tracing::info!(agent = %state.agent_id, server = %state.server_url, "agent running");
    match daemon::run(g, client, settings, super::shutdown_signal()).await {
        Err(e) => Err(anyhow::Error::new(e).context(
            "the control plane no longer accepts this agent; enrol it again (`bulwark-agent enroll --force`)",
        )),
        Ok(()) => {
            tracing::info!("agent stopped");
            Ok(ExitCode::SUCCESS)
        }
    }
}

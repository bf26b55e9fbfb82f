//! A real `bulwark-agent run` daemon for end-to-end tests: enrolled with a one-time token
//! against a [`TestServer`], run as the db user when the tests run as root (as an agent on a
//! database host runs beside its server), killed on drop — also after a failed assertion.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::control_plane::TestServer;
use crate::pg::AgentSetup;

/// Polls `check` every 200 ms until it gives a value; panics naming `what` after `secs`.
pub async fn wait_for<T, F, Fut>(secs: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub struct Daemon {
    pub state: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Daemon {
    /// Enrols `setup`'s agent (state dir `<setup>/agent-state`); not started yet.
    pub fn enroll(srv: &TestServer, setup: &AgentSetup, token: &str) -> Daemon {
        let state = setup.path("agent-state");
        let url = format!("https://127.0.0.1:{}", srv.port);
        let out = setup.agent_stdin(
            &[
                "enroll",
                "--server",
                &url,
                "--token-file",
                "-",
                "--ca-fingerprint",
                &srv.fingerprint(),
                "--state-dir",
                &state.to_string_lossy(),
            ],
            token.as_bytes(),
        );
        assert!(
            out.status.success(),
            "enroll failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Daemon {
            log: setup.path("agent.log"),
            state,
            child: None,
        }
    }

    /// Starts `run` with 1 s heartbeats and a 1 s stop timeout; its log goes to `self.log`.
    pub fn start(&mut self, setup: &AgentSetup) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = setup.cmd(&[
            "run",
            "--state-dir",
            &self.state.to_string_lossy(),
            "--heartbeat-secs",
            "1",
            "--stop-timeout",
            "1",
        ]);
        cmd.env("BULWARK_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        self.child = Some(cmd.spawn().unwrap());
    }

    /// Sends `signal` to the agent process itself, not to runuser in front of it (which runs
    /// as root; the agent as the db user).
    pub fn signal(&self, signal: &str) {
        assert!(
            kill_agent(&self.state, signal),
            "no agent process to send {signal} to"
        );
    }

    /// Waits for the process to exit; returns whether it exited with status 0.
    pub fn wait_exit(&mut self, secs: u64) -> bool {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "the agent did not exit within {secs}s:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Results the daemon still holds for the control plane.
    pub fn pending_results(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.state.join("results"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    }

    /// A client presenting this agent's certificate.
    pub fn client(&self, srv: &TestServer) -> reqwest::Client {
        let cert = std::fs::read_to_string(self.state.join("cert.pem")).unwrap();
        let key = std::fs::read_to_string(self.state.join("key.pem")).unwrap();
        crate::control_plane::client_with(&srv.dir, srv.port, Some((&cert, &key)))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill_agent(&self.state, "KILL");
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Signals the `run` process of state dir `state` (as the db user when root); whether one
/// was there.
pub fn kill_agent(state: &Path, signal: &str) -> bool {
    let mut cmd = std::process::Command::new("pkill");
    cmd.arg(format!("-{signal}"));
    if crate::pg::is_root() {
        cmd.args(["-u", "postgres"]);
    }
    cmd.args(["-f", &format!("run --state-dir {}", state.display())])
        .status()
        .is_ok_and(|s| s.success())
}

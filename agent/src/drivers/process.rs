//! Running the engines' own tools (pg_dump, pg_restore, psql, pg_ctl) as child processes and
//! turning their exit status and stderr into [`DriverError`]s that say what went wrong.
//!
//! stderr is always drained on its own thread: a tool that writes many warnings would
//! otherwise block on a full pipe while we wait for its stdout.

use std::io::Read;
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;

use super::{DriverError, Result};

/// Longest stderr excerpt carried in an error message.
const STDERR_LIMIT: usize = 4000;

/// Runs `cmd` to completion with stdin closed; returns stdout on success.
pub fn output(database: &str, tool: &str, cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| spawn_error(database, tool, e))?;
    stdout_or_failure(database, tool, out)
}

fn stdout_or_failure(database: &str, tool: &str, out: std::process::Output) -> Result<String> {
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(failure(
            database,
            tool,
            out.status,
            &String::from_utf8_lossy(&out.stderr),
        ))
    }
}

/// Runs `cmd` with `input` on stdin (SQL with psql variables, which `-c` would not expand).
pub fn output_with_input(
    database: &str,
    tool: &str,
    cmd: &mut Command,
    input: &str,
) -> Result<String> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| spawn_error(database, tool, e))?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let input = input.to_string();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        let _ = stdin.write_all(input.as_bytes());
    });
    let out = child
        .wait_with_output()
        .map_err(|e| DriverError::io(format!("waiting for {tool}"), e))?;
    let _ = writer.join();
    stdout_or_failure(database, tool, out)
}

/// A child whose stdout is being consumed elsewhere.
pub struct Running {
    pub child: Child,
    stderr: Option<JoinHandle<String>>,
    database: String,
    tool: String,
}

/// Starts `cmd` with stdout piped for streaming (stdin closed).
pub fn spawn_stdout(
    database: &str,
    tool: &str,
    cmd: &mut Command,
) -> Result<(ChildStdout, Running)> {
    spawn(database, tool, cmd.stdin(Stdio::null()))
}

/// Starts `cmd` with stdin and stdout piped: a session we talk to statement by statement.
pub fn spawn_session(
    database: &str,
    tool: &str,
    cmd: &mut Command,
) -> Result<(ChildStdout, Running)> {
    spawn(database, tool, cmd.stdin(Stdio::piped()))
}

fn spawn(database: &str, tool: &str, cmd: &mut Command) -> Result<(ChildStdout, Running)> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| spawn_error(database, tool, e))?;
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = drain(child.stderr.take().expect("piped stderr"));
    Ok((
        stdout,
        Running {
            child,
            stderr: Some(stderr),
            database: database.to_string(),
            tool: tool.to_string(),
        },
    ))
}

fn drain(mut pipe: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        text.push_str(&String::from_utf8_lossy(&buf));
        text
    })
}

impl Running {
    /// Waits for the exit; a non-zero status becomes an error carrying stderr.
    pub fn finish(mut self) -> Result<String> {
        let status = self
            .child
            .wait()
            .map_err(|e| DriverError::io(format!("waiting for {}", self.tool), e))?;
        let stderr = self
            .stderr
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        if status.success() {
            Ok(stderr)
        } else {
            Err(failure(&self.database, &self.tool, status, &stderr))
        }
    }

    /// Stops the child (the backup failed elsewhere) and reaps it.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_error(database: &str, tool: &str, e: std::io::Error) -> DriverError {
    if e.kind() == std::io::ErrorKind::NotFound {
        DriverError::invalid(
            database,
            tool,
            "is not installed or not in the configured bin_dir (install the PostgreSQL client \
             packages, or set bin_dir in the agent configuration)",
        )
    } else {
        DriverError::io(format!("starting {tool} for database {database}"), e)
    }
}

/// Classifies a failed tool run by what libpq and the tools print.
pub fn failure(database: &str, tool: &str, status: ExitStatus, stderr: &str) -> DriverError {
    let text = excerpt(stderr);
    let lower = stderr.to_ascii_lowercase();
    let auth = [
        "password authentication failed",
        "no password supplied",
        "authentication failed",
        "role \"",
    ];
    let unreachable = [
        "connection refused",
        "could not translate host name",
        "timeout expired",
        "no route to host",
        "could not connect to server",
        "no such file or directory\n\tis the server running",
        "is the server running",
        "server closed the connection unexpectedly",
    ];
    if auth.iter().any(|p| lower.contains(p)) && lower.contains("connection to server") {
        DriverError::Authentication {
            database: database.to_string(),
            detail: text,
        }
    } else if unreachable.iter().any(|p| lower.contains(p)) {
        DriverError::Unreachable {
            database: database.to_string(),
            detail: text,
        }
    } else {
        DriverError::Tool {
            database: database.to_string(),
            tool: tool.to_string(),
            status: status.to_string(),
            stderr: text,
        }
    }
}

fn excerpt(stderr: &str) -> String {
    let t = stderr.trim();
    if t.len() <= STDERR_LIMIT {
        t.to_string()
    } else {
        let mut cut = STDERR_LIMIT;
        while !t.is_char_boundary(cut) {
            cut -= 1;
        }
        format!("{}… ({} more bytes)", &t[..cut], t.len() - cut)
    }
}

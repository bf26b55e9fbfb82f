//! Harness for the end-to-end tests: runs the real `bulwark-agent` binary against real storage
//! (directories, a tmpfs that fills up, an S3-protocol server) in temporary directories.

pub mod control_plane;
pub mod daemon;
pub mod nfs;
pub mod pg;
pub mod pve_sim;

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The agent binary built next to this test binary (`target/<profile>/bulwark-agent`).
pub fn agent_bin() -> PathBuf {
    workspace_bin("bulwark-agent")
}

/// A binary of this workspace, built next to the test executables.
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps");
    let bin = dir.join(name);
    assert!(
        bin.exists(),
        "{} not found: run `cargo build --workspace --bins` first (scripts/test.sh does)",
        bin.display()
    );
    bin
}

/// A scratch directory with a passphrase file and a repository location.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub repo: String,
    pub password_file: PathBuf,
    pub extra_env: Vec<(String, String)>,
}

impl Env {
    pub fn new() -> Env {
        let dir = tempfile::tempdir().expect("temp dir");
        let password_file = dir.path().join("passphrase");
        std::fs::write(&password_file, "correct horse battery staple\n").unwrap();
        let repo = dir.path().join("repo").to_string_lossy().into_owned();
        Env {
            dir,
            repo,
            password_file,
            extra_env: Vec::new(),
        }
    }

    pub fn with_repo(repo: &str) -> Env {
        let mut env = Env::new();
        env.repo = repo.to_string();
        env
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(agent_bin());
        c.args(args)
            .env("BULWARK_REPO", &self.repo)
            .env("BULWARK_PASSWORD_FILE", &self.password_file)
            .env_remove("BULWARK_PASSWORD")
            .env("BULWARK_LOG", "warn");
        for (k, v) in &self.extra_env {
            c.env(k, v);
        }
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args)
            .stdin(Stdio::null())
            .output()
            .expect("run bulwark-agent")
    }

    pub fn run_stdin(&self, args: &[&str], input: &[u8]) -> Output {
        run_with_stdin(self.cmd(args), input)
    }

    /// Runs and expects success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        check(self.run(args), args)
    }

    pub fn ok_stdin(&self, args: &[&str], input: &[u8]) -> String {
        check(self.run_stdin(args, input), args)
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut with_json = vec!["--json"];
        with_json.extend_from_slice(args);
        serde_json::from_str(&self.ok(&with_json)).expect("JSON output")
    }

    /// `repo init` with cheap Argon2id parameters (tests open the repository hundreds of times).
    pub fn init(&self) {
        self.ok(&[
            "repo",
            "init",
            "--kdf-memory-mib",
            "8",
            "--kdf-iterations",
            "1",
        ]);
    }

    pub fn backup_stdin(&self, db: &str, data: &[u8]) -> serde_json::Value {
        let out = self.ok_stdin(&["--json", "backup", "--database", db, "--stdin"], data);
        serde_json::from_str(&out).unwrap()
    }

    pub fn snapshots(&self, db: &str) -> Vec<serde_json::Value> {
        self.json(&["snapshots", "--database", db])["snapshots"]
            .as_array()
            .unwrap()
            .clone()
    }
}

impl Default for Env {
    fn default() -> Self {
        Env::new()
    }
}

fn check(out: Output, args: &[&str]) -> String {
    assert!(
        out.status.success(),
        "bulwark-agent {args:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// Runs `cmd` with `input` on its stdin (written from another thread, so a child that answers
/// before reading everything cannot deadlock us) and collects its output.
pub fn run_with_stdin(mut cmd: Command, input: &[u8]) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run bulwark-agent");
    let mut stdin = child.stdin.take().unwrap();
    let data = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

/// Exit code and stderr of a run that must fail.
pub fn failure(out: &Output) -> (i32, String) {
    assert!(
        !out.status.success(),
        "expected failure, got success: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Dump-like text: SQL INSERT lines with varied numbers and names, as pg_dump/mysqldump emit.
pub fn dump_text(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = XorShift::seeded(seed);
    let names = [
        "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy",
    ];
    let cities = [
        "Berlin", "Lisbon", "Osaka", "Lima", "Oslo", "Quito", "Accra", "Perth",
    ];
    let mut out = Vec::with_capacity(len + 200);
    let mut id = 1u64;
    while out.len() < len {
        let r = rng.next();
        let line = format!(
            "INSERT INTO public.orders (id, customer, city, amount, status, created_at) VALUES ({id}, '{}-{}', '{}', {}.{:02}, '{}', '2026-{:02}-{:02} {:02}:{:02}:{:02}');\n",
            names[(r % 10) as usize],
            r % 100_000,
            cities[((r >> 8) % 8) as usize],
            (r >> 16) % 10_000,
            (r >> 32) % 100,
            if r >> 40 & 1 == 0 { "shipped" } else { "pending" },
            1 + (r >> 20) % 12,
            1 + (r >> 24) % 28,
            (r >> 28) % 24,
            (r >> 34) % 60,
            (r >> 44) % 60,
        );
        out.extend_from_slice(line.as_bytes());
        id += 1 + (r >> 50) % 3;
    }
    out.truncate(len);
    out
}

/// Incompressible bytes.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = XorShift::seeded(seed);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        out.extend_from_slice(&rng.next().to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Changes `fraction` of `data` in `runs` clustered runs (each rewritten with other bytes of the
/// same length, spread evenly), the way updates to a few table regions change a dump.
pub fn mutate_clustered(data: &mut [u8], fraction: f64, runs: usize, seed: u64) {
    let mut rng = XorShift::seeded(seed);
    let run_len = ((data.len() as f64 * fraction) as usize / runs).max(1);
    let len = data.len();
    for i in 0..runs {
        let slot = len / runs;
        let start = i * slot + (rng.next() as usize % slot.saturating_sub(run_len).max(1));
        for b in &mut data[start..(start + run_len).min(len)] {
            *b = b'a' + (rng.next() % 26) as u8;
        }
    }
}

pub struct XorShift(pub u64);

impl XorShift {
    /// Distinct seeds give distinct streams (a plain `seed | 1` would merge 0 and 1).
    pub fn seeded(seed: u64) -> Self {
        XorShift(seed.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A real S3-protocol server (moto, from PyPI) on a free loopback port, stopped on drop.
pub struct S3Server {
    child: Child,
    pub endpoint: String,
}

impl S3Server {
    pub fn start() -> S3Server {
        let port = free_port();
        let child = Command::new("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 -m moto.server (install with scripts/setup.sh)");
        let endpoint = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto server did not start on port {port}: is moto[server] installed? run scripts/setup.sh");
            std::thread::sleep(Duration::from_millis(100));
        }
        S3Server { child, endpoint }
    }

    /// Raw HTTP request (moto accepts unsigned requests); returns (status, body).
    pub fn http(&self, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
        use std::io::Read;
        let addr = self.endpoint.trim_start_matches("http://");
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        let head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(body).unwrap();
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).unwrap();
        let split = resp
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("HTTP response");
        let status = String::from_utf8_lossy(&resp[9..12]).parse().unwrap();
        let head = String::from_utf8_lossy(&resp[..split]).to_lowercase();
        let mut body = resp[split + 4..].to_vec();
        if head.contains("transfer-encoding: chunked") {
            body = dechunk(&body);
        }
        (status, body)
    }

    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("BULWARK_S3_ENDPOINT".into(), self.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID".into(), "testing".into()),
            ("AWS_SECRET_ACCESS_KEY".into(), "testing".into()),
            ("AWS_REGION".into(), "us-east-1".into()),
        ]
    }
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = body.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&body[..eol]).trim(), 16).unwrap_or(0);
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&body[eol + 2..eol + 2 + size]);
        body = &body[eol + 4 + size..];
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

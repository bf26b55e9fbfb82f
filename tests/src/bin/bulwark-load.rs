//! Load generator for the control plane (issue 5, docs/benchmarks.md): starts the real
//! `bulwark-control-plane` binary on a fresh data directory, creates N workspaces (tenants) each
//! with a workspace-admin token, enrols one simulated agent per workspace (its own TLS identity
//! and HTTP client), then for `--duration` seconds runs every agent's heartbeat (every 10 s) and
//! long-poll loop (jobs get 2 progress reports 1 s apart and a result), waves of `--wave`
//! concurrent manual backups every `--wave-every` seconds after a warm-up, and a reader of
//! `GET /api/v1/backups` about 5 times a second. Records each request's latency per endpoint
//! and samples the control plane's CPU and RSS from /proc every second.
//!
//! Usage: bulwark-load [--control-plane BIN] [--agents 1000] [--duration 60] [--wave 100]
//!        [--wave-every 15] [--warmup 10] [--setup-concurrency 16] [--pool-idle 2] [--json]
//!        [--keep DIR]
//!
//! Exit status 1 when any request failed (the counts are in the output).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use reqwest::{Client, RequestBuilder, StatusCode};
use serde_json::{json, Value};

struct Opts {
    control_plane: PathBuf,
    agents: usize,
    duration: u64,
    wave: usize,
    wave_every: u64,
    warmup: u64,
    setup_concurrency: usize,
    pool_idle: usize,
    json: bool,
    keep: Option<PathBuf>,
}

fn parse_args() -> anyhow::Result<Opts> {
    let mut o = Opts {
        control_plane: PathBuf::from("target/release/bulwark-control-plane"),
        agents: 1000,
        duration: 60,
        wave: 100,
        wave_every: 15,
        warmup: 10,
        setup_concurrency: 16,
        pool_idle: 2,
        json: false,
        keep: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--control-plane" => o.control_plane = PathBuf::from(val()?),
            "--agents" => o.agents = val()?.parse()?,
            "--duration" => o.duration = val()?.parse()?,
            "--wave" => o.wave = val()?.parse()?,
            "--wave-every" => o.wave_every = val()?.parse()?,
            "--warmup" => o.warmup = val()?.parse()?,
            "--setup-concurrency" => o.setup_concurrency = val()?.parse()?,
            "--pool-idle" => o.pool_idle = val()?.parse()?,
            "--keep" => o.keep = Some(PathBuf::from(val()?)),
            "--json" => o.json = true,
            "-h" | "--help" => {
                println!(
                    "{}",
                    include_str!("bulwark-load.rs")
                        .lines()
                        .take(14)
                        .collect::<Vec<_>>()
                        .join("\n")
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}"),
        }
    }
    anyhow::ensure!(
        o.agents > 0 && o.wave <= o.agents,
        "--wave must be at most --agents"
    );
    Ok(o)
}

// ---------------------------------------------------------------------------------------------
// Latency records

#[derive(Default)]
struct Endpoint {
    ms: Vec<f64>,
    errors: u64,
    first_errors: Vec<String>,
}

#[derive(Default)]
struct Stats {
    eps: Mutex<BTreeMap<&'static str, Endpoint>>,
    idle_polls: AtomicU64,
    jobs_done: AtomicU64,
    unexpected_jobs: AtomicU64,
}

impl Stats {
    fn ok(&self, name: &'static str, d: Duration) {
        self.eps
            .lock()
            .unwrap()
            .entry(name)
            .or_default()
            .ms
            .push(d.as_secs_f64() * 1000.0);
    }
    fn err(&self, name: &'static str, msg: String) {
        let mut eps = self.eps.lock().unwrap();
        let e = eps.entry(name).or_default();
        e.errors += 1;
        if e.first_errors.len() < 3 {
            e.first_errors.push(msg);
        }
    }
}

/// Sends `rb`, reads the whole answer; records its latency under `name` when the status is
/// `want`, an error otherwise.
async fn send(
    stats: &Stats,
    name: &'static str,
    rb: RequestBuilder,
    want: StatusCode,
) -> Option<(Value, Duration)> {
    send_timed(stats, name, rb, want, true).await
}

/// [`send`]; `timed: false` records only errors (long polls, whose duration is their wait).
async fn send_timed(
    stats: &Stats,
    name: &'static str,
    rb: RequestBuilder,
    want: StatusCode,
    timed: bool,
) -> Option<(Value, Duration)> {
    let t = Instant::now();
    let r = async {
        let resp = rb.send().await?;
        let status = resp.status();
        let text = resp.text().await?;
        Ok::<_, reqwest::Error>((status, text))
    }
    .await;
    let d = t.elapsed();
    match r {
        Ok((s, text)) if s == want => {
            if timed {
                stats.ok(name, d);
            }
            Some((serde_json::from_str(&text).unwrap_or(Value::Null), d))
        }
        Ok((s, text)) => {
            stats.err(
                name,
                format!("{s}: {}", text.chars().take(300).collect::<String>()),
            );
            None
        }
        Err(e) => {
            stats.err(name, format!("{e:#}"));
            None
        }
    }
}

fn pct(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

// ---------------------------------------------------------------------------------------------
// The control plane process

fn clk_tck() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime + stime in clock ticks.
fn cpu_ticks(pid: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields after the command: state is field 3, utime 14, stime 15 (1-based in proc(5)).
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// (VmRSS, VmHWM) in KiB.
fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |k: &str| {
        s.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

struct ControlPlane {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        for _ in 0..100 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn start_control_plane(bin: &Path, dir: &Path) -> anyhow::Result<(ControlPlane, String)> {
    let out = Command::new(bin)
        .args(["admin", "bootstrap", "--json", "--data-dir"])
        .arg(dir)
        .output()
        .with_context(|| format!("cannot run {}", bin.display()))?;
    anyhow::ensure!(
        out.status.success(),
        "bootstrap: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout)?;
    let admin = v["token"]
        .as_str()
        .context("bootstrap printed no token")?
        .to_string();
    // An explicit, empty configuration: defaults only, never /etc/bulwark/control-plane.toml.
    let config = dir.join("bench.toml");
    std::fs::write(&config, "# bulwark-load: defaults\n")?;
    let port = free_port()?;
    let log = std::fs::File::create(dir.join("control-plane.log"))?;
    let child = Command::new(bin)
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(dir)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    Ok((
        ControlPlane {
            child,
            dir: dir.to_path_buf(),
            port,
        },
        admin,
    ))
}

fn client(
    cp: &ControlPlane,
    identity: Option<(&str, &str)>,
    pool_idle: usize,
) -> anyhow::Result<Client> {
    ControlPlaneRef {
        dir: cp.dir.clone(),
        port: cp.port,
    }
    .client(identity, pool_idle)
}

// ---------------------------------------------------------------------------------------------
// Setup: tenants and agents

struct Tenant {
    ws: String,
    db: String,
    token: String,
}

struct Agent {
    db: String,
    client: Client,
}

/// Runs `f(i)` for i in 0..n with `conc` workers; the first error stops the rest.
async fn bounded<T, F, Fut>(n: usize, conc: usize, f: F) -> anyhow::Result<Vec<T>>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<T>> + Send + 'static,
{
    let next = Arc::new(AtomicUsize::new(0));
    let f = Arc::new(f);
    let mut workers = Vec::new();
    for _ in 0..conc {
        let (next, f) = (next.clone(), f.clone());
        workers.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, anyhow::Error>(out);
                }
                match f(i).await {
                    Ok(v) => out.push((i, v)),
                    Err(e) => {
                        next.store(n, Ordering::Relaxed);
                        return Err(e.context(format!("item {i}")));
                    }
                }
            }
        }));
    }
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await??);
    }
    all.sort_by_key(|(i, _)| *i);
    Ok(all.into_iter().map(|(_, v)| v).collect())
}

async fn post_json(
    c: &Client,
    url: String,
    token: Option<&str>,
    body: Value,
    want: StatusCode,
) -> anyhow::Result<Value> {
    let mut rb = c.post(&url).json(&body);
    if let Some(t) = token {
        rb = rb.bearer_auth(t);
    }
    let resp = rb.send().await.with_context(|| format!("POST {url}"))?;
    let s = resp.status();
    let text = resp.text().await?;
    anyhow::ensure!(s == want, "POST {url}: {s} {text}");
    Ok(serde_json::from_str(&text)?)
}

// ---------------------------------------------------------------------------------------------
// The run

struct Shared {
    base: String,
    stats: Stats,
    /// database id → when its manual backup was requested (POST sent).
    pending: Mutex<HashMap<String, Instant>>,
    deadline: Instant,
}

fn xorshift(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

async fn heartbeats(sh: Arc<Shared>, a: Arc<Agent>, mut seed: u64) {
    let body =
        json!({"agent_version": "bulwark-load", "databases": [{"id": a.db, "type": "sqlite"}]});
    let first = Duration::from_millis(xorshift(&mut seed) % 10_000);
    let mut at = tokio::time::Instant::now() + first;
    loop {
        tokio::time::sleep_until(at).await;
        if Instant::now() >= sh.deadline {
            return;
        }
        let rb = a
            .client
            .post(format!("{}/agent/v1/heartbeat", sh.base))
            .json(&body);
        send(&sh.stats, "POST /agent/v1/heartbeat", rb, StatusCode::OK).await;
        at += Duration::from_secs(10);
    }
}

async fn poll_loop(sh: Arc<Shared>, a: Arc<Agent>, mut seed: u64) {
    while Instant::now() < sh.deadline {
        let rb = a
            .client
            .post(format!("{}/agent/v1/jobs/poll", sh.base))
            .json(&json!({"wait_secs": 25}));
        let Some((v, _)) = send_timed(
            &sh.stats,
            "POST /agent/v1/jobs/poll (errors only)",
            rb,
            StatusCode::OK,
            false,
        )
        .await
        else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        let job = &v["job"];
        if job.is_null() {
            sh.stats.idle_polls.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let returned = Instant::now();
        let db = job["database_id"].as_str().unwrap_or_default().to_string();
        match sh.pending.lock().unwrap().remove(&db) {
            Some(asked) => sh.stats.ok(
                "dispatch (POST /api/v1/backups → poll returns the job)",
                returned - asked,
            ),
            None => {
                sh.stats.unexpected_jobs.fetch_add(1, Ordering::Relaxed);
            }
        }
        let id = job["id"].as_str().unwrap_or_default().to_string();
        let started = chrono::Utc::now();
        for (k, pct) in [(1u64, 40.0), (2, 80.0)] {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let rb = a
                .client
                .post(format!("{}/agent/v1/jobs/{id}/progress", sh.base))
                .json(&json!({"phase": "reading", "bytes": k << 20, "percent": pct}));
            send(
                &sh.stats,
                "POST /agent/v1/jobs/{id}/progress",
                rb,
                StatusCode::OK,
            )
            .await;
        }
        let finished = chrono::Utc::now();
        let snapshot = format!(
            "backup-{}-manual-{:08x}",
            started.format("%Y%m%dT%H%M%SZ"),
            xorshift(&mut seed) as u32
        );
        let result = bulwark_core::api::JobResult {
            succeeded: true,
            snapshot: Some(snapshot),
            logical_bytes: 3 << 20,
            stored_bytes: 1 << 20,
            started_at: started,
            finished_at: finished,
            ..Default::default()
        };
        let rb = a
            .client
            .post(format!("{}/agent/v1/jobs/{id}/result", sh.base))
            .json(&result);
        if let Some((ack, _)) = send(
            &sh.stats,
            "POST /agent/v1/jobs/{id}/result",
            rb,
            StatusCode::OK,
        )
        .await
        {
            if ack["status"] == "succeeded" {
                sh.stats.jobs_done.fetch_add(1, Ordering::Relaxed);
            } else {
                sh.stats
                    .err("POST /agent/v1/jobs/{id}/result", format!("ack {ack}"));
            }
        }
    }
}

#[derive(Clone, Copy, Default)]
struct Sample {
    t: f64,
    ticks: u64,
    rss: u64,
    self_ticks: u64,
}

fn main() -> anyhow::Result<()> {
    let opts = parse_args()?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let code = rt.block_on(run(opts))?;
    rt.shutdown_timeout(Duration::from_secs(1));
    std::process::exit(code)
}

async fn run(o: Opts) -> anyhow::Result<i32> {
    let tmp;
    let dir = match &o.keep {
        Some(d) => {
            anyhow::ensure!(!d.exists(), "{} exists; use a new directory", d.display());
            d.clone()
        }
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().join("cp")
        }
    };
    let (cp, admin) = start_control_plane(&o.control_plane, &dir)?;
    let pid = cp.child.id();
    let base = format!("https://localhost:{}", cp.port);
    // Ready: the certificate exists and /readyz answers.
    let t0 = Instant::now();
    let admin_client = loop {
        if t0.elapsed() > Duration::from_secs(30) {
            bail!(
                "the control plane did not become ready; see {}",
                dir.join("control-plane.log").display()
            );
        }
        if dir.join("tls/server.crt").exists() {
            let c = client(&cp, None, 64)?;
            if c.get(format!("{base}/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                break c;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let tck = clk_tck();
    let spid = pid.to_string();
    eprintln!(
        "control plane pid {pid} on port {}, data {}",
        cp.port,
        dir.display()
    );

    // Tenants: workspace, workspace admin, its token.
    let t_ws = Instant::now();
    let tenants: Vec<Tenant> = {
        let (c, b, admin) = (admin_client.clone(), base.clone(), admin.clone());
        bounded(o.agents, o.setup_concurrency, move |i| {
            let (c, b, admin) = (c.clone(), b.clone(), admin.clone());
            async move {
                let ws = format!("ws-{i:04}");
                post_json(&c, format!("{b}/api/v1/workspaces"), Some(&admin),
                    json!({"id": ws, "name": format!("Tenant {i}"), "plan": "dedicated", "quota_bytes": 1u64 << 40}),
                    StatusCode::CREATED).await?;
                let user = post_json(&c, format!("{b}/api/v1/users"), Some(&admin),
                    json!({"name": format!("{ws}-admin"), "roles": [{"role": "workspace-admin", "workspace_id": ws}]}),
                    StatusCode::CREATED).await?;
                let uid = user["id"].as_str().context("user id")?;
                let t = post_json(&c, format!("{b}/api/v1/users/{uid}/tokens"), Some(&admin),
                    json!({"name": "bench"}), StatusCode::CREATED).await?;
                Ok(Tenant {
                    db: format!("db-{i}"),
                    ws,
                    token: t["secret"].as_str().context("token secret")?.to_string(),
                })
            }
        })
        .await?
    };
    let ws_secs = t_ws.elapsed().as_secs_f64();
    eprintln!(
        "{} workspaces with admin tokens in {ws_secs:.1} s",
        tenants.len()
    );

    // Agents: enrolment token, key and CSR, enrolment, own client.
    let t_en = Instant::now();
    let tenants = Arc::new(tenants);
    let agents: Vec<Arc<Agent>> = {
        let (c, b, admin, ts) = (
            admin_client.clone(),
            base.clone(),
            admin.clone(),
            tenants.clone(),
        );
        let cert_dir = dir.clone();
        let port = cp.port;
        let pool_idle = o.pool_idle;
        bounded(o.agents, o.setup_concurrency, move |i| {
            let (c, b, admin, ts, cert_dir) = (c.clone(), b.clone(), admin.clone(), ts.clone(), cert_dir.clone());
            async move {
                let t = &ts[i];
                let et = post_json(&c, format!("{b}/api/v1/agents/enrollment-tokens"), Some(&admin),
                    json!({"workspace_id": t.ws}), StatusCode::CREATED).await?;
                let key = rcgen::KeyPair::generate()?;
                let csr = rcgen::CertificateParams::default().serialize_request(&key)?.pem()?;
                let v = post_json(&c, format!("{b}/agent/v1/enroll"), None,
                    json!({"token": et["secret"], "csr_pem": csr, "hostname": format!("host-{i}"),
                        "agent_version": "bulwark-load", "databases": [{"id": t.db, "type": "sqlite"}]}),
                    StatusCode::CREATED).await?;
                anyhow::ensure!(v["conflicts"].as_array().is_none_or(|a| a.is_empty()), "conflicts: {v}");
                let cert = v["certificate_pem"].as_str().context("certificate")?;
                let fake = ControlPlaneRef { dir: cert_dir, port };
                Ok(Arc::new(Agent {
                    db: t.db.clone(),
                    client: fake.client(Some((cert, &key.serialize_pem())), pool_idle)?,
                }))
            }
        })
        .await?
    };
    let enrol_secs = t_en.elapsed().as_secs_f64();
    let setup_rss = rss_kib(pid).unwrap_or_default();
    eprintln!(
        "{} agents enrolled in {enrol_secs:.1} s; running {} s",
        agents.len(),
        o.duration
    );

    // The run.
    let start = Instant::now();
    let sh = Arc::new(Shared {
        base: base.clone(),
        stats: Stats::default(),
        pending: Mutex::new(HashMap::new()),
        deadline: start + Duration::from_secs(o.duration),
    });
    let mut tasks = Vec::new();
    for (i, a) in agents.iter().enumerate() {
        let seed = 0x9E37_79B9_7F4A_7C15u64
            ^ ((i as u64 + 1) * 0x1000_0001)
            ^ start.elapsed().as_nanos() as u64;
        tasks.push(tokio::spawn(heartbeats(sh.clone(), a.clone(), seed | 1)));
        tasks.push(tokio::spawn(poll_loop(
            sh.clone(),
            a.clone(),
            seed.rotate_left(17) | 1,
        )));
    }
    // Waves of manual backups, each on `wave` workspaces not used by the previous waves.
    let waves = {
        let (sh, ts, c) = (sh.clone(), tenants.clone(), admin_client.clone());
        let (warm, every, wave, dur) = (o.warmup, o.wave_every, o.wave, o.duration);
        tokio::spawn(async move {
            let mut k = 0usize;
            loop {
                let at = warm + every * k as u64;
                // A wave needs about 3 s to finish (dispatch, 2 progress reports 1 s apart, result).
                if at + 4 > dur {
                    return k;
                }
                tokio::time::sleep_until((start + Duration::from_secs(at)).into()).await;
                let mut posts = Vec::new();
                for j in 0..wave {
                    let t = &ts[(k * wave + j) % ts.len()];
                    let (sh, c, db, token) = (sh.clone(), c.clone(), t.db.clone(), t.token.clone());
                    posts.push(tokio::spawn(async move {
                        sh.pending
                            .lock()
                            .unwrap()
                            .insert(db.clone(), Instant::now());
                        let rb = c
                            .post(format!("{}/api/v1/backups", sh.base))
                            .bearer_auth(&token)
                            .json(&json!({"database_id": db}));
                        send(&sh.stats, "POST /api/v1/backups", rb, StatusCode::ACCEPTED).await;
                    }));
                }
                for p in posts {
                    let _ = p.await;
                }
                k += 1;
            }
        })
    };
    // The reader: GET /api/v1/backups about 5 times a second, alternately as the platform admin
    // (all workspaces) and as a workspace admin (one workspace that has backups).
    let reader = {
        let (sh, ts, c, admin) = (
            sh.clone(),
            tenants.clone(),
            admin_client.clone(),
            admin.clone(),
        );
        let first_wave = o.wave.clamp(1, tenants.len());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut n = 0usize;
            while Instant::now() < sh.deadline {
                tick.tick().await;
                n += 1;
                if n % 2 == 0 {
                    let rb = c
                        .get(format!("{}/api/v1/backups?page_size=50", sh.base))
                        .bearer_auth(&admin);
                    send(
                        &sh.stats,
                        "GET /api/v1/backups (platform admin, all tenants)",
                        rb,
                        StatusCode::OK,
                    )
                    .await;
                } else {
                    let t = &ts[(n / 2) % first_wave];
                    let rb = c
                        .get(format!(
                            "{}/api/v1/backups?workspace={}&page_size=50",
                            sh.base, t.ws
                        ))
                        .bearer_auth(&t.token);
                    send(
                        &sh.stats,
                        "GET /api/v1/backups?workspace= (workspace admin)",
                        rb,
                        StatusCode::OK,
                    )
                    .await;
                }
            }
        })
    };
    // Samples of the control plane (and of this generator) every second.
    let mut samples = Vec::new();
    let sample = |t: f64| Sample {
        t,
        ticks: cpu_ticks(&spid).unwrap_or(0),
        rss: rss_kib(pid).map(|r| r.0).unwrap_or(0),
        self_ticks: cpu_ticks("self").unwrap_or(0),
    };
    samples.push(sample(0.0));
    let mut tick = tokio::time::interval_at(
        (start + Duration::from_secs(1)).into(),
        Duration::from_secs(1),
    );
    while Instant::now() < sh.deadline {
        tick.tick().await;
        samples.push(sample(start.elapsed().as_secs_f64()));
    }
    let wave_count = waves.await.unwrap_or(0);
    let _ = reader.await;
    for t in &tasks {
        t.abort();
    }
    let (_, hwm) = rss_kib(pid).unwrap_or_default();
    let exited = !Path::new(&format!("/proc/{pid}")).exists();
    drop(agents);

    // Report.
    let first = samples[0];
    let last = *samples.last().unwrap();
    let wall = last.t - first.t;
    let cpu_avg = last.ticks.saturating_sub(first.ticks) as f64 / tck / wall * 100.0;
    let self_avg = last.self_ticks.saturating_sub(first.self_ticks) as f64 / tck / wall * 100.0;
    let cpu_peak = samples
        .windows(2)
        .map(|w| w[1].ticks.saturating_sub(w[0].ticks) as f64 / tck / (w[1].t - w[0].t) * 100.0)
        .fold(0.0, f64::max);
    let rss_max = samples.iter().map(|s| s.rss).max().unwrap_or(0);
    let mib = |k: u64| k as f64 / 1024.0;
    let stats = &sh.stats;
    let eps = stats.eps.lock().unwrap();
    let mut rows = Vec::new();
    let mut errors = 0;
    for (name, e) in eps.iter() {
        let mut v = e.ms.clone();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        errors += e.errors;
        rows.push(json!({"endpoint": name, "count": v.len(), "errors": e.errors, "p50_ms": pct(&v, 0.5),
            "p99_ms": pct(&v, 0.99), "max_ms": v.last().copied().unwrap_or(f64::NAN), "first_errors": e.first_errors}));
    }
    let requested = (wave_count * o.wave) as u64;
    let done = stats.jobs_done.load(Ordering::Relaxed);
    let unexpected = stats.unexpected_jobs.load(Ordering::Relaxed);
    let report = json!({
        "agents": o.agents, "workspaces": tenants.len(), "duration_s": o.duration, "wave": o.wave,
        "waves": wave_count, "jobs_requested": requested, "jobs_succeeded": done,
        "unexpected_jobs": unexpected, "idle_polls": stats.idle_polls.load(Ordering::Relaxed),
        "setup": {"workspaces_s": ws_secs, "enrolment_s": enrol_secs, "rss_after_setup_mib": mib(setup_rss.0)},
        "control_plane": {"cpu_avg_pct_of_one_core": cpu_avg, "cpu_peak_1s_pct": cpu_peak,
            "rss_max_during_run_mib": rss_max as f64 / 1024.0, "rss_end_mib": mib(last.rss), "vmhwm_mib": mib(hwm),
            "exited_early": exited},
        "generator_cpu_avg_pct_of_one_core": self_avg,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "endpoints": rows,
    });
    if o.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{} agents in {} workspaces, {} s; {wave_count} waves of {} manual backups ({requested} jobs, {done} succeeded)",
            o.agents, tenants.len(), o.duration, o.wave
        );
        println!("setup (not measured below): {} workspaces + admin tokens {ws_secs:.1} s, {} enrolments {enrol_secs:.1} s", tenants.len(), o.agents);
        println!();
        println!("| endpoint | requests | errors | p50 ms | p99 ms | max ms |");
        println!("|---|---|---|---|---|---|");
        for r in &rows {
            println!(
                "| {} | {} | {} | {:.1} | {:.1} | {:.1} |",
                r["endpoint"].as_str().unwrap(),
                r["count"],
                r["errors"],
                r["p50_ms"].as_f64().unwrap_or(f64::NAN),
                r["p99_ms"].as_f64().unwrap_or(f64::NAN),
                r["max_ms"].as_f64().unwrap_or(f64::NAN)
            );
        }
        println!(
            "| long polls that ended empty (25 s, not timed) | {} | | | | |",
            stats.idle_polls.load(Ordering::Relaxed)
        );
        println!();
        println!("| control plane | value |");
        println!("|---|---|");
        println!("| CPU, average over the run, % of one core | {cpu_avg:.0} |");
        println!("| CPU, busiest second, % of one core | {cpu_peak:.0} |");
        println!("| RSS after setup, MiB | {:.1} |", mib(setup_rss.0));
        println!(
            "| RSS, highest 1 s sample during the run, MiB | {:.1} |",
            rss_max as f64 / 1024.0
        );
        println!(
            "| peak RSS (VmHWM, setup included), MiB | {:.1} |",
            mib(hwm)
        );
        println!("| load generator CPU, average, % of one core | {self_avg:.0} |");
        for r in &rows {
            for e in r["first_errors"].as_array().unwrap() {
                eprintln!(
                    "error on {}: {}",
                    r["endpoint"].as_str().unwrap(),
                    e.as_str().unwrap_or("")
                );
            }
        }
    }
    let mut failed = errors > 0 || exited || unexpected > 0;
    if done != requested {
        eprintln!("{requested} backups requested, {done} succeeded");
        failed = true;
    }
    drop(eps);
    drop(cp);
    Ok(if failed { 1 } else { 0 })
}

/// What [`client`] needs of a [`ControlPlane`], for the setup workers (which cannot hold it).
struct ControlPlaneRef {
    dir: PathBuf,
    port: u16,
}

impl ControlPlaneRef {
    fn client(&self, identity: Option<(&str, &str)>, pool_idle: usize) -> anyhow::Result<Client> {
        let pem = std::fs::read(self.dir.join("tls/server.crt"))?;
        let mut b = Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(&pem)?])
            .resolve("localhost", ([127, 0, 0, 1], self.port).into())
            .pool_max_idle_per_host(pool_idle)
            .timeout(Duration::from_secs(60));
        if let Some((cert, key)) = identity {
            b = b.identity(reqwest::Identity::from_pem(
                format!("{cert}\n{key}").as_bytes(),
            )?);
        }
        Ok(b.build()?)
    }
}

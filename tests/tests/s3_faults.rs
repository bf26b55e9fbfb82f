//! Storage that fails: the real agent against a real S3-protocol server (moto) behind a proxy
//! that answers some requests itself — `503 SlowDown` (transient: the agent retries and the
//! backup commits) or `403 AccessDenied` (permanent: the command fails at once, saying so).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bulwark_tests::{failure, random_bytes, Env, S3Server};

/// What the proxy does with the requests it lets through and the ones it answers itself.
struct Faults {
    /// Answer every `every`-th request with 503 SlowDown, `budget` times in all.
    every: AtomicU64,
    budget: AtomicU64,
    /// Answer every request with 403 AccessDenied.
    deny_all: std::sync::atomic::AtomicBool,
    seen: AtomicU64,
    injected: AtomicU64,
}

struct Proxy {
    endpoint: String,
    faults: Arc<Faults>,
}

impl Proxy {
    fn start(upstream: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let upstream = upstream.trim_start_matches("http://").to_string();
        let faults = Arc::new(Faults {
            every: AtomicU64::new(0),
            budget: AtomicU64::new(0),
            deny_all: false.into(),
            seen: AtomicU64::new(0),
            injected: AtomicU64::new(0),
        });
        let f = faults.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (f, upstream) = (f.clone(), upstream.clone());
                std::thread::spawn(move || serve(conn, &upstream, &f));
            }
        });
        Proxy { endpoint, faults }
    }
}

/// One request from `r`: head and body, or `None` at the end of the connection.
fn read_request(r: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if r.read(&mut byte).ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).expect("ASCII request head");
    let lower = head.to_lowercase();
    assert!(
        !lower.contains("transfer-encoding: chunked"),
        "the proxy does not speak chunked requests: {head}"
    );
    let len = lower
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse::<usize>().unwrap());
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).ok()?;
    Some((head, body))
}

fn answer(c: &mut TcpStream, status: &str, code: &str, message: &str) {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>{message}</Message></Error>"
    );
    let _ = write!(
        c,
        "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// Serves requests of one client connection, one upstream connection per request.
fn serve(mut client: TcpStream, upstream: &str, f: &Faults) {
    while let Some((head, body)) = read_request(&mut client) {
        let n = f.seen.fetch_add(1, Ordering::SeqCst) + 1;
        if f.deny_all.load(Ordering::SeqCst) {
            f.injected.fetch_add(1, Ordering::SeqCst);
            answer(
                &mut client,
                "403 Forbidden",
                "AccessDenied",
                "Access Denied",
            );
            return;
        }
        let every = f.every.load(Ordering::SeqCst);
        if every > 0
            && n % every == 0
            && f.budget
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| b.checked_sub(1))
                .is_ok()
        {
            f.injected.fetch_add(1, Ordering::SeqCst);
            answer(
                &mut client,
                "503 Slow Down",
                "SlowDown",
                "Please reduce your request rate.",
            );
            return;
        }
        // Forward with `Connection: close`, so the whole answer is what upstream sends.
        let mut head: String = head
            .trim_end()
            .lines()
            .filter(|l| !l.to_lowercase().starts_with("connection:"))
            .collect::<Vec<_>>()
            .join("\r\n");
        head.push_str("\r\nConnection: close\r\n\r\n");
        let mut up = TcpStream::connect(upstream).unwrap();
        up.write_all(head.as_bytes()).unwrap();
        up.write_all(&body).unwrap();
        let mut response = Vec::new();
        up.read_to_end(&mut response).unwrap();
        if client.write_all(&response).is_err() {
            return;
        }
        // The response said `Connection: close`: the client opens a new connection.
        return;
    }
}

fn s3_env(server: &S3Server, proxy: &Proxy, bucket: &str) -> Env {
    let (status, _) = server.http("PUT", &format!("/{bucket}"), b"");
    assert_eq!(status, 200, "create bucket {bucket}");
    let mut env = Env::with_repo(&format!("s3://{bucket}/repo"));
    env.extra_env = server.env();
    env.extra_env
        .retain(|(k, _)| k.as_str() != "BULWARK_S3_ENDPOINT");
    env.extra_env
        .push(("BULWARK_S3_ENDPOINT".into(), proxy.endpoint.clone()));
    env
}

/// Before: the first 503 from S3 ended the backup. Now it is retried and the backup commits.
#[test]
fn a_backup_on_s3_rides_out_slow_down_answers_and_commits() {
    let server = S3Server::start();
    let proxy = Proxy::start(&server.endpoint);
    let env = s3_env(&server, &proxy, "flaky");
    env.init();
    let data = random_bytes(12 << 20, 5);
    // Every third request answered with 503 SlowDown, eight times in all.
    proxy.faults.every.store(3, Ordering::SeqCst);
    proxy.faults.budget.store(8, Ordering::SeqCst);
    let out = env.backup_stdin("db", &data);
    assert_eq!(
        proxy.faults.injected.load(Ordering::SeqCst),
        8,
        "every injected failure was hit"
    );
    let snap = out["snapshot"].as_str().unwrap().to_string();
    let restored = env.run(&["restore", &snap, "--stdout"]);
    assert!(restored.status.success() && restored.stdout == data);
    env.ok(&["verify", &snap]);
}

/// A permanent error (403) is not retried: the command fails within seconds and says what the
/// storage said, once.
#[test]
fn a_permanent_s3_error_fails_at_once_with_a_clear_message() {
    let server = S3Server::start();
    let proxy = Proxy::start(&server.endpoint);
    let env = s3_env(&server, &proxy, "denied");
    env.init();
    proxy.faults.deny_all.store(true, Ordering::SeqCst);
    let started = Instant::now();
    let (code, err) = failure(&env.run_stdin(&["backup", "--database", "db", "--stdin"], b"data"));
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "no retries of a permanent error: {:?}",
        started.elapsed()
    );
    assert_eq!(code, 1, "{err}");
    assert_eq!(
        proxy.faults.injected.load(Ordering::SeqCst),
        1,
        "one request, not retried: {err}"
    );
    assert!(
        err.contains("storage error on config") && err.contains("Access Denied"),
        "{err}"
    );
    assert_eq!(err.matches("Access Denied").count(), 1, "said once: {err}");
}

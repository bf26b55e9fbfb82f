//! The server against slow, numerous and abusive clients (issue 11, "Abuse and exposure"): rate
//! limits per credential with 429 and Retry-After, failed authentications throttled per address
//! without starving agents, slow headers and bodies cut off, a cap on connections, early answers
//! that an uploading client can still read, a private data directory, 500s without internal text.

mod common;

use std::num::NonZeroU32;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bulwark_control_plane::config::HttpSettings;
use bulwark_control_plane::ratelimit::{LimitSettings, Rate};
use common::Server;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

fn http(f: impl FnOnce(&mut HttpSettings)) -> HttpSettings {
    let mut h = HttpSettings {
        limits: LimitSettings::off(),
        ..Default::default()
    };
    f(&mut h);
    h
}

/// A TLS connection to the server that trusts exactly its certificate, for raw HTTP/1.1.
async fn raw(srv: &Server, dir: &std::path::Path) -> TlsStream<TcpStream> {
    let pem = std::fs::read(dir.join("tls/server.crt")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject;
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = TcpStream::connect(("127.0.0.1", srv.port)).await.unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap()
}

/// Everything the server sends until it closes (an error after some bytes counts as the end;
/// an error before any byte is returned as such).
async fn read_to_close(conn: &mut TlsStream<TcpStream>) -> std::io::Result<String> {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match conn.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if out.is_empty() => return Err(e),
            Err(_) => break,
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_a_header_or_a_slow_body_is_cut_off_within_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start_with_http(
        dir.path(),
        http(|h| {
            h.header_read_timeout = Duration::from_secs(1);
            h.body_read_timeout = Duration::from_secs(1);
        }),
    )
    .await;
    // Half a header, then nothing: the server closes the connection after about a second.
    let mut conn = raw(&srv, dir.path()).await;
    conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let answer = tokio::time::timeout(Duration::from_secs(10), read_to_close(&mut conn))
        .await
        .expect("the server must not keep a half-sent header open");
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(4),
        "closed after {took:?}: {answer:?}"
    );
    assert!(!answer.unwrap_or_default().contains("200 OK"));

    // A body that stops arriving: 408, then the connection closes.
    let mut conn = raw(&srv, dir.path()).await;
    let head = format!(
        "POST /api/v1/workspaces HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"id\":",
        srv.admin
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let answer = tokio::time::timeout(Duration::from_secs(15), read_to_close(&mut conn))
        .await
        .expect("the server must not wait minutes for a body")
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(8), "{answer}");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body_timeout"), "{answer}");
    drop(conn);
    // The server still answers everyone else, and counted the cut-off.
    let (s, _) = srv.get("/api/v1/workspaces", &srv.admin).await;
    assert_eq!(s, StatusCode::OK);
    let metrics = srv.metrics_text().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("bulwark_slow_clients_cut_off_total{reason=\"body\"} ")),
        "{metrics}"
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_wait_until_slow_ones_are_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start_with_http(
        dir.path(),
        http(|h| {
            h.max_connections = 2;
            h.tls_handshake_timeout = Duration::from_secs(1);
        }),
    )
    .await;
    // Let the bootstrap client's connections (if any) go: a fresh client per request below.
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Two clients that connect and never start TLS hold both slots...
    let mut silent = Vec::new();
    for _ in 0..2 {
        silent.push(TcpStream::connect(("127.0.0.1", srv.port)).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    // ...so a third one waits (it is not refused) until the handshake timeout frees a slot.
    let pem = std::fs::read(dir.path().join("tls/server.crt")).unwrap();
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&pem).unwrap()])
        .resolve("localhost", ([127, 0, 0, 1], srv.port).into())
        .build()
        .unwrap();
    let answer = tokio::time::timeout(
        Duration::from_secs(10),
        client.get(format!("{}/healthz", srv.base)).send(),
    )
    .await
    .expect("the server stays responsive at its connection cap")
    .unwrap();
    let waited = started.elapsed();
    assert_eq!(answer.status(), StatusCode::OK);
    assert!(
        waited >= Duration::from_millis(500),
        "answered after {waited:?}: the cap of 2 connections was not applied"
    );
    // The silent ones were closed by the server.
    for mut s in silent {
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("a silent connection is closed by the handshake timeout");
        assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_uploads_first_reads_the_early_401_and_413() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start_with_http(dir.path(), http(|_| {})).await;
    // Larger than every socket buffer on the way, so the server cannot have read it by chance.
    let body = vec![b' '; 16 << 20];
    for (token, expect) in [
        ("bwk_wrong", "HTTP/1.1 401"),
        (srv.admin.as_str(), "HTTP/1.1 413"),
    ] {
        let mut conn = raw(&srv, dir.path()).await;
        let head = format!(
            "POST /api/v1/workspaces HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        conn.write_all(head.as_bytes()).await.unwrap();
        // The client sends everything before it reads (as curl and most libraries do).
        conn.write_all(&body)
            .await
            .unwrap_or_else(|e| panic!("{expect}: the server reset the upload: {e}"));
        conn.flush().await.unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(20), read_to_close(&mut conn))
            .await
            .expect("the answer arrives")
            .unwrap_or_else(|e| panic!("{expect}: the answer was lost: {e}"));
        assert!(answer.starts_with(expect), "{answer}");
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_requests_without_credentials_are_limited_each_on_its_own_budget() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start_with_http(
        dir.path(),
        http(|h| {
            h.limits.token = LimitSettings::per_minute(1, 3);
            h.limits.address = LimitSettings::per_minute(1, 3);
        }),
    )
    .await;
    let tenant = srv.workspace_with_admin("acme").await;
    let other = srv.workspace_with_admin("globex").await;
    for _ in 0..3 {
        let (s, v) = srv.get("/api/v1/workspaces/acme", &tenant).await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }
    let answer = srv
        .client
        .get(format!("{}/api/v1/workspaces/acme", srv.base))
        .bearer_auth(&tenant)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = answer.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    let v: Value = answer.json().await.unwrap();
    assert_eq!(v["error"]["code"], "rate_limited", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("API token"),
        "{v}"
    );
    // Another tenant's token and the platform admin are not affected.
    let (s, _) = srv.get("/api/v1/workspaces/globex", &other).await;
    assert_eq!(s, StatusCode::OK);
    for _ in 0..10 {
        let (s, _) = srv.get("/api/v1/workspaces", &srv.admin).await;
        assert_eq!(s, StatusCode::OK);
    }
    // Requests without any credential share their address's budget.
    for _ in 0..3 {
        let r = srv
            .client
            .get(format!("{}/healthz", srv.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
    let r = srv
        .client
        .get(format!("{}/healthz", srv.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(r.headers().contains_key("retry-after"));
    // ...which authenticated requests do not spend.
    let (s, _) = srv.get("/api/v1/workspaces", &srv.admin).await;
    assert_eq!(s, StatusCode::OK);
    srv.stop().await;
}

/// An enrolled agent's client (mutual TLS with a certificate from the built-in CA).
async fn enrolled_agent(srv: &Server, dir: &std::path::Path, ws: &str) -> reqwest::Client {
    let (s, t) = srv
        .post(
            "/api/v1/agents/enrollment-tokens",
            &srv.admin,
            json!({"workspace_id": ws}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{t}");
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    let (s, v) = srv
        .call(
            reqwest::Method::POST,
            "/agent/v1/enroll",
            None,
            Some(json!({"token": t["secret"], "csr_pem": csr, "hostname": "h1", "agent_version": "test"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let identity = format!(
        "{}\n{}",
        v["certificate_pem"].as_str().unwrap(),
        key.serialize_pem()
    );
    let pem = std::fs::read(dir.join("tls/server.crt")).unwrap();
    reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&pem).unwrap()])
        .identity(reqwest::Identity::from_pem(identity.as_bytes()).unwrap())
        .resolve("localhost", ([127, 0, 0, 1], srv.port).into())
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_authentications_block_the_address_but_not_agents() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start_with_http(
        dir.path(),
        http(|h| {
            // Three failures at once, then one every two seconds.
            h.limits.auth_failures = Some(Rate {
                count: NonZeroU32::new(1).unwrap(),
                per: Duration::from_secs(2),
                burst: NonZeroU32::new(3).unwrap(),
            });
            h.limits.agent = LimitSettings::per_second(100, 100);
        }),
    )
    .await;
    srv.workspace_with_admin("acme").await;
    let agent = enrolled_agent(&srv, dir.path(), "acme").await;
    let heartbeat = || async {
        agent
            .post(format!("{}/agent/v1/heartbeat", srv.base))
            .json(&json!({"agent_version": "test"}))
            .send()
            .await
            .unwrap()
            .status()
    };
    assert_eq!(heartbeat().await, StatusCode::OK);
    // Wrong API tokens and a wrong enrolment token: 401 while the budget lasts...
    let wrong_enrolment =
        json!({"token": "bwe_0000", "csr_pem": "x", "hostname": "h", "agent_version": "t"});
    let (s, _) = srv
        .call(
            reqwest::Method::POST,
            "/agent/v1/enroll",
            None,
            Some(wrong_enrolment.clone()),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    for _ in 0..3 {
        let (s, _) = srv.get("/api/v1/workspaces", "bwk_guess").await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
    }
    // ...then this address is refused before anything is checked, valid token or not.
    for token in ["bwk_guess", srv.admin.as_str()] {
        let r = srv
            .client
            .get(format!("{}/api/v1/workspaces", srv.base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        let retry: u64 = r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=2).contains(&retry), "{retry}");
        let v: Value = r.json().await.unwrap();
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("failed authentications"),
            "{v}"
        );
    }
    let (s, _) = srv
        .call(
            reqwest::Method::POST,
            "/agent/v1/enroll",
            None,
            Some(wrong_enrolment),
        )
        .await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
    // Agents on the same address, over mutual TLS, are not starved.
    for _ in 0..20 {
        assert_eq!(heartbeat().await, StatusCode::OK);
    }
    // Once the budget refills, the address is served again; the refusals were counted.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (s, _) = srv.get("/api/v1/workspaces", &srv.admin).await;
    assert_eq!(s, StatusCode::OK);
    let metrics = srv.metrics_text().await;
    let counter = |name: &str| -> u64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing:\n{metrics}"))
    };
    assert!(counter("bulwark_rate_limited_total{reason=\"auth_failures\"}") >= 3);
    assert!(counter("bulwark_auth_failures_total") >= 4);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_agent_has_a_budget_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start_with_http(
        dir.path(),
        http(|h| h.limits.agent = LimitSettings::per_minute(1, 3)),
    )
    .await;
    srv.workspace_with_admin("acme").await;
    let (first, second) = (
        enrolled_agent(&srv, dir.path(), "acme").await,
        enrolled_agent(&srv, dir.path(), "acme").await,
    );
    let heartbeat = |agent: &reqwest::Client| {
        agent
            .post(format!("{}/agent/v1/heartbeat", srv.base))
            .json(&json!({"agent_version": "test"}))
            .send()
    };
    for _ in 0..3 {
        assert_eq!(heartbeat(&first).await.unwrap().status(), StatusCode::OK);
    }
    let r = heartbeat(&first).await.unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(r.headers().contains_key("retry-after"));
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error"]["message"].as_str().unwrap().contains("agent"),
        "{v}"
    );
    // The other agent, from the same address, is not affected.
    assert_eq!(heartbeat(&second).await.unwrap().status(), StatusCode::OK);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_directory_is_private_and_tightened_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let check = |what: &str| {
        for entry in walk(&dir) {
            let meta = std::fs::symlink_metadata(&entry).unwrap();
            let mode = meta.permissions().mode() & 0o777;
            let limit = if meta.is_dir() { 0o700 } else { 0o600 };
            assert_eq!(mode & !limit, 0, "{what}: {} is {mode:o}", entry.display());
        }
    };
    let srv = Server::start(&dir).await;
    srv.stop().await;
    check("a fresh data directory");
    assert!(dir.join("bulwark.redb").exists());
    // Loosened behind the server's back (a copy, an operator's chmod): tightened at start.
    for (path, mode) in [
        (dir.clone(), 0o755),
        (dir.join("bulwark.redb"), 0o644),
        (dir.join("secrets.key"), 0o644),
        (dir.join("tls"), 0o777),
        (dir.join("tls/server.key"), 0o666),
    ] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let srv = Server::start(&dir).await;
    check("after a restart");
    srv.stop().await;
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        if out[i].is_dir() {
            let more: Vec<_> = std::fs::read_dir(&out[i])
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            out.extend(more);
        }
        i += 1;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_500_names_its_request_id_and_nothing_internal() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start_with_http(dir.path(), http(|_| {})).await;
    srv.workspace_with_admin("acme").await;
    // A stored record damaged behind the server's back.
    srv.store
        .write_blocking(
            bulwark_control_plane::domain::audit::Actor {
                kind: "system".into(),
                id: "t".into(),
                name: "t".into(),
            },
            |tx| {
                tx.txn
                    .open_table(bulwark_control_plane::store::databases::TABLE)?
                    .insert("broken", b"{\"id\": \"broken\", truncated".as_slice())?;
                Ok(())
            },
        )
        .unwrap();
    let r = srv
        .client
        .get(format!("{}/api/v1/databases/broken", srv.base))
        .bearer_auth(&srv.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert!(id.starts_with("req_"), "{id}");
    let text = r.text().await.unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["error"]["code"], "internal");
    assert_eq!(v["error"]["request_id"], id.as_str(), "{v}");
    for internal in [
        "broken",
        "truncated",
        "cannot be read",
        "line 1",
        "state store",
    ] {
        assert!(!text.contains(internal), "'{internal}' leaked: {text}");
    }
    // Every answer carries an id of its own.
    let (a, b) = (
        srv.client
            .get(format!("{}/healthz", srv.base))
            .send()
            .await
            .unwrap(),
        srv.client
            .get(format!("{}/healthz", srv.base))
            .send()
            .await
            .unwrap(),
    );
    assert_ne!(a.headers()["x-request-id"], b.headers()["x-request-id"]);
    srv.stop().await;
}

/// The clear secrets of database `db`, as the store opens them.
fn clear(srv: &Server, db: &str) -> std::collections::BTreeMap<String, String> {
    use bulwark_control_plane::store::databases;
    let d = databases::get(&srv.store.read().unwrap(), db)
        .unwrap()
        .unwrap();
    databases::open_secrets(srv.store.secrets(), &d).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_secrets_are_sealed_in_the_state_file_and_old_clear_ones_are_sealed_at_start() {
    use bulwark_control_plane::store::databases;
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(dir.path()).await;
    let acme = srv.workspace_with_admin("acme").await;
    let (s, v) = srv
        .post(
            "/api/v1/databases",
            &acme,
            common::postgres_db("orders", "acme"),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["secrets_set"], json!(["password"]));

    assert_eq!(clear(&srv, "orders")["password"], "pw-orders-very-secret");
    // An update without secrets keeps them; one with a new secret replaces it.
    let mut body = common::postgres_db("orders", "acme");
    body.as_object_mut().unwrap().remove("secrets");
    let (s, v) = srv
        .put("/api/v1/databases/orders", &acme, body.clone())
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(clear(&srv, "orders")["password"], "pw-orders-very-secret");
    body["secrets"] = json!({"password": "pw-orders-rotated"});
    let (s, v) = srv.put("/api/v1/databases/orders", &acme, body).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(clear(&srv, "orders")["password"], "pw-orders-rotated");

    // A record written before secrets were sealed: clear in the file.
    let legacy = json!({
        "id": "legacy", "workspace_id": "acme", "db_type": "postgresql", "agent_id": null,
        "connection": {"host": "db2.internal"}, "secrets": {"password": "pw-legacy-in-clear"},
        "labels": {}, "description": null,
        "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z"
    });
    srv.store
        .write_blocking(
            bulwark_control_plane::domain::audit::Actor {
                kind: "system".into(),
                id: "t".into(),
                name: "t".into(),
            },
            move |tx| {
                let bytes = serde_json::to_vec(&legacy).unwrap();
                tx.txn
                    .open_table(databases::TABLE)?
                    .insert("legacy", bytes.as_slice())?;
                tx.txn
                    .open_table(databases::BY_WORKSPACE)?
                    .insert(("acme", "legacy"), ())?;
                Ok(())
            },
        )
        .unwrap();
    srv.stop().await;
    let state = || std::fs::read(dir.path().join("bulwark.redb")).unwrap();
    let contains =
        |hay: &[u8], needle: &str| hay.windows(needle.len()).any(|w| w == needle.as_bytes());
    assert!(
        contains(&state(), "pw-legacy-in-clear"),
        "the legacy record is in clear"
    );
    for sealed in ["pw-orders-very-secret", "pw-orders-rotated"] {
        assert!(
            !contains(&state(), sealed),
            "{sealed} is in the state file in clear"
        );
    }

    // The next start seals it; it still reads, and the file no longer holds it in clear.
    let srv = Server::start(dir.path()).await;
    let (s, v) = srv.get("/api/v1/databases/legacy", &acme).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["secrets_set"], json!(["password"]));
    assert!(!v.to_string().contains("pw-legacy"), "{v}");
    assert_eq!(clear(&srv, "legacy")["password"], "pw-legacy-in-clear");
    srv.stop().await;
    let file = state();
    for secret in [
        "pw-legacy-in-clear",
        "pw-orders-very-secret",
        "pw-orders-rotated",
    ] {
        assert!(
            !contains(&file, secret),
            "{secret} is in the state file in clear"
        );
    }
}

//! Agents and the control plane over mutual TLS (issue 5, first part): the control plane runs
//! in-process on real HTTPS with its built-in CA; the real `bulwark-agent` binary enrols with a
//! one-time token, sends heartbeats and renews its certificate. Refused on the way: a reused or
//! expired token, a certificate from another CA, an expired certificate, a certificate the
//! control plane never recorded, a bearer token on /agent/v1, a revoked agent, and a renewed
//! agent's old certificate once the new one has been used.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use bulwark_control_plane::domain::agent::{hash_enrollment_secret, EnrollmentToken};
use bulwark_control_plane::domain::audit::Actor;
use bulwark_control_plane::pki::Ca;
use bulwark_control_plane::secrets::SecretKey;
use bulwark_tests::control_plane::{client_with, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// The shared in-process control plane, plus the agent-side steps these tests repeat.
struct Server(TestServer);

impl std::ops::Deref for Server {
    type Target = TestServer;
    fn deref(&self) -> &TestServer {
        &self.0
    }
}

impl Server {
    async fn start(dir: &Path) -> Server {
        Server(TestServer::start(dir, Duration::from_secs(300)).await)
    }

    async fn stop(self) {
        self.0.stop().await
    }

    /// A workspace and a token of its workspace admin.
    async fn workspace(&self, ws: &str) -> String {
        self.0.workspace(ws, "shared", 1_000_000_000).await
    }

    /// Sends a heartbeat with `client` (which may carry any client certificate).
    async fn heartbeat_with(
        &self,
        client: &reqwest::Client,
    ) -> Result<(StatusCode, Value), String> {
        let resp = client
            .post(format!(
                "https://localhost:{}/agent/v1/heartbeat",
                self.port
            ))
            .json(&json!({"agent_version": "test", "databases": []}))
            .send()
            .await
            .map_err(|e| format!("{e:?}"))?;
        let status = resp.status();
        let v: Value = resp.json().await.map_err(|e| format!("{e:?}"))?;
        Ok((status, v))
    }
}

/// A key and a CSR, as an agent makes them.
fn key_and_csr() -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    (key.serialize_pem(), csr)
}

/// Runs the agent binary (off the runtime's worker threads).
async fn agent(args: Vec<String>) -> Output {
    agent_with(args, None, None).await
}

/// [`agent`] with `stdin` as its input and `env_token` in `BULWARK_ENROLL_TOKEN`.
async fn agent_with(args: Vec<String>, stdin: Option<String>, env_token: Option<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        let mut cmd = std::process::Command::new(bulwark_tests::agent_bin());
        cmd.args(&args)
            .env("BULWARK_LOG", "warn")
            .env_remove("BULWARK_ENROLL_TOKEN");
        if let Some(token) = env_token {
            cmd.env("BULWARK_ENROLL_TOKEN", token);
        }
        match stdin {
            Some(input) => bulwark_tests::run_with_stdin(cmd, input.as_bytes()),
            None => cmd.output().unwrap(),
        }
    })
    .await
    .unwrap()
}

fn ok_json(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "bulwark-agent failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// An agent configuration declaring a SQLite database that exists, a PostgreSQL server that
/// does not answer (declared without discovery), and an id another workspace already holds.
fn agent_config(dir: &Path) -> PathBuf {
    let db = dir.join("orders.sqlite");
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch("create table t(x); insert into t values (1);")
        .unwrap();
    let cfg = dir.join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[[databases]]
id = "orders"
type = "sqlite"
path = "{}"

[[databases]]
id = "pgmain"
type = "postgresql"
connection = {{ host = "127.0.0.1", port = 1, user = "nobody", dbname = "nothing" }}

[[databases]]
id = "taken"
type = "sqlite"
path = "{}"
"#,
            db.display(),
            db.display()
        ),
    )
    .unwrap();
    cfg
}

fn s(v: &str) -> String {
    v.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrol_heartbeat_renew_and_revoke_with_the_real_agent() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("cp");
    let srv = Server::start(&data).await;
    let acme = srv.workspace("acme").await;
    let other = srv.workspace("other").await;
    // Another workspace already holds the id "taken".
    let (st, v) = srv
        .post(
            "/api/v1/databases",
            &other,
            json!({"id": "taken", "workspace_id": "other", "type": "sqlite", "connection": {"path": "/x.db"}}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    // Tokens are made by an admin of the workspace, for that workspace only.
    let (st, _) = srv
        .post(
            "/api/v1/agents/enrollment-tokens",
            &acme,
            json!({"workspace_id": "other"}),
        )
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, viewer) = srv
        .post(
            "/api/v1/users",
            &srv.admin,
            json!({"name": "acme-viewer", "roles": [{"role": "viewer", "workspace_id": "acme"}]}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{viewer}");
    let (_, vt) = srv
        .post(
            &format!("/api/v1/users/{}/tokens", viewer["id"].as_str().unwrap()),
            &srv.admin,
            json!({"name": "v"}),
        )
        .await;
    let (st, v) = srv
        .post(
            "/api/v1/agents/enrollment-tokens",
            vt["secret"].as_str().unwrap(),
            json!({"workspace_id": "acme"}),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{v}");
    let (st, v) = srv
        .post(
            "/api/v1/agents/enrollment-tokens",
            &acme,
            json!({"workspace_id": "acme", "expires_in_secs": 8 * 86_400}),
        )
        .await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(v["error"]["details"][0]["path"], "expires_in_secs");
    let token = srv.enrollment_token(&acme, "acme").await;

    let cfg = agent_config(tmp.path());
    let state = tmp.path().join("agent-state");
    let server_url = format!("https://127.0.0.1:{}", srv.port);
    // The token travels in a file (never on the command line); one file per attempt.
    let token_files = tmp.path().join("tokens");
    std::fs::create_dir_all(&token_files).unwrap();
    let enroll = |token: &str, state: &Path, fingerprint: &str| {
        let file = token_files.join(format!(
            "{}.token",
            state.file_name().unwrap().to_string_lossy()
        ));
        std::fs::write(&file, format!("{token}\n")).unwrap();
        vec![
            s("--config"),
            cfg.display().to_string(),
            s("--json"),
            s("enroll"),
            s("--server"),
            server_url.clone(),
            s("--token-file"),
            file.display().to_string(),
            s("--ca-fingerprint"),
            fingerprint.to_string(),
            s("--state-dir"),
            state.display().to_string(),
            s("--hostname"),
            s("db1.test"),
        ]
    };
    // A token on the command line is refused (exit 2) before anything is sent.
    let mut on_the_command_line = enroll(&token, &tmp.path().join("argv"), &srv.fingerprint());
    let at = on_the_command_line
        .iter()
        .position(|a| a == "--token-file")
        .unwrap();
    on_the_command_line[at] = s("--token");
    on_the_command_line[at + 1] = token.clone();
    let out = agent(on_the_command_line).await;
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--token-file") && err.contains("BULWARK_ENROLL_TOKEN"),
        "{err}"
    );
    // A wrong pin: nothing is sent, and the token stays usable.
    let wrong = format!("sha256:{}", "00".repeat(32));
    let out = agent(enroll(&token, &tmp.path().join("wrong"), &wrong)).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not the pinned"), "{err}");

    let out = agent(enroll(&token, &state, &srv.fingerprint())).await;
    let enrolled = ok_json(&out);
    let agent_id = enrolled["agent_id"].as_str().unwrap().to_string();
    assert!(agent_id.starts_with("agt_"), "{enrolled}");
    assert_eq!(enrolled["workspace_id"], "acme");
    assert_eq!(enrolled["conflicts"][0]["id"], "taken", "{enrolled}");
    assert!(enrolled["conflicts"][0]["problem"]
        .as_str()
        .unwrap()
        .contains("another workspace"));
    assert_eq!(mode(&state), 0o711);
    for f in ["key.pem", "cert.pem", "ca.pem", "state.json"] {
        assert_eq!(mode(&state.join(f)), 0o600, "{f}");
    }
    let key = std::fs::read_to_string(state.join("key.pem")).unwrap();
    assert!(key.contains("PRIVATE KEY"));

    // The agent, as people see it.
    let (st, list) = srv.get("/api/v1/agents?workspace=acme", &acme).await;
    assert_eq!(st, StatusCode::OK, "{list}");
    let item = &list["items"][0];
    assert_eq!(item["id"], agent_id.as_str());
    assert_eq!(item["hostname"], "db1.test");
    assert_eq!(item["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(item["revoked"], false);
    assert!(item["last_heartbeat_at"].is_null());
    let dbs: Vec<&str> = item["databases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(dbs, ["orders", "pgmain"], "{item}");
    assert!(item["databases"][0]["server_version"].is_string(), "{item}");
    assert!(item["databases"][1]["server_version"].is_null(), "{item}");
    let expires: chrono::DateTime<chrono::Utc> = item["certificate_expires_at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let days = (expires - chrono::Utc::now()).num_hours();
    assert!((29 * 24..=30 * 24).contains(&days), "{expires}");
    // Its databases are registered in its workspace, pointing at it.
    let (st, dbs) = srv.get("/api/v1/databases?workspace=acme", &acme).await;
    assert_eq!(st, StatusCode::OK);
    let ids: Vec<&str> = dbs["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["orders", "pgmain"], "{dbs}");
    assert_eq!(dbs["items"][0]["agent_id"], agent_id.as_str());
    // ... and "taken" is still the other workspace's.
    let (st, _) = srv.get("/api/v1/databases/taken", &other).await;
    assert_eq!(st, StatusCode::OK);
    // Another workspace does not see the agent.
    let (st, _) = srv.get(&format!("/api/v1/agents/{agent_id}"), &other).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    // Enrolment is audited.
    let (st, audit) = srv.get("/api/v1/audit?action=agent.enroll", &acme).await;
    assert_eq!(st, StatusCode::OK, "{audit}");
    let actions: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert!(actions.contains(&"agent.enroll"), "{actions:?}");

    // The token was used once; using it again (from stdin this time) is refused.
    let mut from_stdin = enroll(&token, &tmp.path().join("again"), &srv.fingerprint());
    let at = from_stdin.iter().position(|a| a == "--token-file").unwrap();
    from_stdin[at + 1] = s("-");
    let out = agent_with(from_stdin, Some(format!("{token}\n")), None).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("401") && err.contains("already used"), "{err}");
    // An expired token is refused.
    let (secret, hash) = bulwark_control_plane::domain::agent::new_enrollment_secret();
    let now = chrono::Utc::now();
    let expired = EnrollmentToken {
        id: "ent_expired".into(),
        workspace_id: "acme".into(),
        note: None,
        created_by: "test".into(),
        created_at: now - chrono::Duration::hours(2),
        expires_at: now - chrono::Duration::hours(1),
        used_at: None,
        used_by_agent: None,
    };
    assert_eq!(hash, hash_enrollment_secret(&secret));
    srv.store
        .write(
            Actor {
                kind: "system".into(),
                id: "test".into(),
                name: "test".into(),
            },
            move |tx| tx.create_enrollment_token(&hash, &expired),
        )
        .await
        .unwrap();
    // This time the token comes from the environment.
    let mut from_env = enroll("unused", &tmp.path().join("late"), &srv.fingerprint());
    let at = from_env.iter().position(|a| a == "--token-file").unwrap();
    from_env.drain(at..at + 2);
    let out = agent_with(from_env, None, Some(secret)).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("expired"), "{err}");

    // A heartbeat over mutual TLS.
    let heartbeat = |extra: &[&str]| {
        let mut args = vec![
            s("--config"),
            cfg.display().to_string(),
            s("--json"),
            s("heartbeat"),
            s("--state-dir"),
            state.display().to_string(),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        args
    };
    let hb = ok_json(&agent(heartbeat(&[])).await);
    assert_eq!(hb["agent_id"], agent_id.as_str());
    assert_eq!(hb["renewed"], false);
    let (_, a) = srv.get(&format!("/api/v1/agents/{agent_id}"), &acme).await;
    assert!(a["last_heartbeat_at"].is_string(), "{a}");
    // A database added to the configuration is registered by the next heartbeat.
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str(&format!(
        "\n[[databases]]\nid = \"invoices\"\ntype = \"sqlite\"\npath = \"{}\"\n",
        tmp.path().join("orders.sqlite").display()
    ));
    std::fs::write(&cfg, text).unwrap();
    ok_json(&agent(heartbeat(&[])).await);
    let (_, a) = srv.get(&format!("/api/v1/agents/{agent_id}"), &acme).await;
    let dbs: Vec<&str> = a["databases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(dbs, ["invoices", "orders", "pgmain"], "{a}");
    let (st, db) = srv.get("/api/v1/databases/invoices", &acme).await;
    assert_eq!(st, StatusCode::OK, "{db}");
    assert_eq!(db["agent_id"], agent_id.as_str());

    // A bearer token is no agent identity.
    let (st, v) = srv
        .call(
            &srv.client,
            Method::POST,
            "/agent/v1/heartbeat",
            Some(&srv.admin),
            Some(json!({"agent_version": "x", "databases": []})),
        )
        .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    assert_eq!(v["error"]["code"], "client_certificate_required", "{v}");

    // A certificate from another CA fails the handshake.
    let foreign_key = rcgen::KeyPair::generate().unwrap();
    let mut foreign_params = rcgen::CertificateParams::default();
    foreign_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let foreign_ca = foreign_params.self_signed(&foreign_key).unwrap();
    let issuer = rcgen::Issuer::new(foreign_params, foreign_key);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let mut leaf_params = rcgen::CertificateParams::new(vec![]).unwrap();
    leaf_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, agent_id.as_str());
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
    drop(foreign_ca);
    let foreign = client_with(
        &data,
        srv.port,
        Some((&leaf.pem(), &leaf_key.serialize_pem())),
    );
    let r = srv.heartbeat_with(&foreign).await;
    assert!(r.is_err(), "a foreign certificate was accepted: {r:?}");

    // Certificates of our CA: an expired one fails the handshake; a valid one the control
    // plane never recorded is an unknown agent.
    let ca = Ca::load_or_create(&data, &SecretKey::load_or_create(&data).unwrap()).unwrap();
    let (k, csr) = key_and_csr();
    let old = ca
        .issue(
            &csr,
            &agent_id,
            "acme",
            now - chrono::Duration::days(40),
            now - chrono::Duration::days(10),
        )
        .unwrap();
    let r = srv
        .heartbeat_with(&client_with(&data, srv.port, Some((&old.pem, &k))))
        .await;
    assert!(r.is_err(), "an expired certificate was accepted: {r:?}");
    let stray = ca
        .issue(
            &csr,
            &agent_id,
            "acme",
            now,
            now + chrono::Duration::days(1),
        )
        .unwrap();
    let (st, v) = srv
        .heartbeat_with(&client_with(&data, srv.port, Some((&stray.pem, &k))))
        .await
        .unwrap();
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    assert_eq!(v["error"]["code"], "unknown_agent", "{v}");

    // Renewal when two thirds of the life have passed: the agent does it on its own.
    let old_cert = std::fs::read_to_string(state.join("cert.pem")).unwrap();
    let old_key = std::fs::read_to_string(state.join("key.pem")).unwrap();
    let mut st_json: Value =
        serde_json::from_str(&std::fs::read_to_string(state.join("state.json")).unwrap()).unwrap();
    st_json["renew_after"] = json!((now - chrono::Duration::minutes(1)).to_rfc3339());
    std::fs::write(state.join("state.json"), st_json.to_string()).unwrap();
    let hb = ok_json(&agent(heartbeat(&[])).await);
    assert_eq!(hb["renewed"], true, "{hb}");
    let new_cert = std::fs::read_to_string(state.join("cert.pem")).unwrap();
    assert_ne!(old_cert, new_cert);
    assert_eq!(mode(&state.join("key.pem")), 0o600);
    let (_, a) = srv.get(&format!("/api/v1/agents/{agent_id}"), &acme).await;
    let serial_after = a["certificate_serial"].as_str().unwrap().to_string();
    // The old certificate still works until the new one is used ...
    let old_client = client_with(&data, srv.port, Some((&old_cert, &old_key)));
    let (st, v) = srv.heartbeat_with(&old_client).await.unwrap();
    assert_eq!(st, StatusCode::OK, "{v}");
    // ... the new one works (and retires the old one) ...
    let hb = ok_json(&agent(heartbeat(&[])).await);
    assert_eq!(hb["renewed"], false, "{hb}");
    let (st, v) = srv
        .heartbeat_with(&client_with(&data, srv.port, Some((&old_cert, &old_key))))
        .await
        .unwrap();
    assert_eq!(st, StatusCode::UNAUTHORIZED, "{v}");
    assert_eq!(v["error"]["code"], "unknown_agent", "{v}");
    let (_, a) = srv.get(&format!("/api/v1/agents/{agent_id}"), &acme).await;
    assert_eq!(a["certificate_serial"], serial_after.as_str());

    // Revocation cuts the agent off on its next request, naming why.
    let (st, v) = srv
        .call(
            &srv.client,
            Method::DELETE,
            &format!("/api/v1/agents/{agent_id}"),
            Some(&other),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND, "{v}");
    let (st, v) = srv
        .call(
            &srv.client,
            Method::DELETE,
            &format!("/api/v1/agents/{agent_id}"),
            Some(&acme),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT, "{v}");
    let out = agent(heartbeat(&[])).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("401") && err.contains("revoked"), "{err}");
    let (_, a) = srv.get(&format!("/api/v1/agents/{agent_id}"), &acme).await;
    assert_eq!(a["revoked"], true, "{a}");
    let (st, audit) = srv.get("/api/v1/audit/verify", &srv.admin).await;
    assert_eq!(st, StatusCode::OK, "{audit}");
    srv.stop().await;
}

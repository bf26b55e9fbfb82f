//! The `bulwark-control-plane` binary as an operator runs it: bootstrap once, a config file
//! checked at start, HTTPS on the configured port, a clean exit on SIGTERM.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bulwark_tests::workspace_bin;

fn cp() -> Command {
    Command::new(workspace_bin("bulwark-control-plane"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn bootstrap_once_serve_with_a_checked_config_and_stop_on_sigterm() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = cp()
        .args(["admin", "bootstrap", "--json", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let boot: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let token = boot["token"].as_str().unwrap().to_string();
    assert!(token.starts_with("bwk_"));
    let again = cp()
        .args(["admin", "bootstrap", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert_eq!(
        again.status.code(),
        Some(3),
        "a second bootstrap is refused"
    );
    assert!(String::from_utf8_lossy(&again.stderr).contains("already has a platform admin"));

    let config = dir.path().join("cp.toml");
    std::fs::write(&config, "listen = \"127.0.0.1:1\"\nmax_body_bytes = 12\n").unwrap();
    let bad = cp()
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("`max_body_bytes`"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    std::fs::write(&config, "listn = \"x\"\n").unwrap();
    let bad = cp()
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("listn"));

    let port = free_port();
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:1\"\ndata_dir = \"{}\"\n",
            data.display()
        ),
    )
    .unwrap();
    let mut server = cp()
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pem = std::fs::read(data.join("tls/server.crt"));
    let started = Instant::now();
    let pem = loop {
        match std::fs::read(data.join("tls/server.crt")) {
            Ok(p) if !p.is_empty() => break p,
            _ if started.elapsed() > Duration::from_secs(20) => panic!("no certificate: {pem:?}"),
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&pem).unwrap()])
        .build()
        .unwrap();
    let base = format!("https://127.0.0.1:{port}");
    let me = loop {
        match client
            .get(format!("{base}/api/v1/me"))
            .bearer_auth(&token)
            .send()
            .await
        {
            Ok(r) => break r,
            Err(_) if started.elapsed() < Duration::from_secs(20) => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("the server did not come up: {e}"),
        }
    };
    assert_eq!(me.status(), 200);
    let me: serde_json::Value = me.json().await.unwrap();
    assert_eq!(me["roles"][0]["role"], "platform-admin");
    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .send()
        .await;
    assert!(
        plain.map_or(true, |r| !r.status().is_success()),
        "plain HTTP is not served"
    );

    Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = server.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status}");
}

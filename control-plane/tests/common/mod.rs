//! A real control plane for tests: its own data directory, a self-signed certificate, HTTPS on
//! a free loopback port, and a client that trusts exactly that certificate.

#![allow(dead_code)]

use std::path::Path;
use std::sync::Once;

use bulwark_control_plane::config::{HttpSettings, LogFormat, Settings};
use bulwark_control_plane::store::Store;
use reqwest::{Method, StatusCode};
use serde_json::Value;

pub struct Server {
    pub base: String,
    pub port: u16,
    pub client: reqwest::Client,
    pub store: Store,
    pub admin: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

fn install_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

impl Server {
    /// Bootstraps (once per directory) and starts a server on `dir`.
    pub async fn start(dir: &Path) -> Server {
        Self::start_with_http(dir, Default::default()).await
    }

    /// [`Server::start`] with its own connection limits, timeouts and rate limits.
    pub async fn start_with_http(dir: &Path, http: HttpSettings) -> Server {
        install_provider();
        let admin = match bulwark_control_plane::cli::try_bootstrap(dir, "root").unwrap() {
            Some((_, _, secret)) => secret,
            None => std::fs::read_to_string(dir.join("test-admin-token")).unwrap(),
        };
        std::fs::write(dir.join("test-admin-token"), &admin).unwrap();
        let settings = Settings {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.to_path_buf(),
            tls: None,
            max_body_bytes: 64 * 1024,
            log_format: LogFormat::Text,
            storage_sync: std::time::Duration::from_secs(300),
            agent_cert_days: 30,
            jobs: Default::default(),
            http,
        };
        let store = Store::open(dir).unwrap();
        let (listener, tls, state) =
            bulwark_control_plane::server::start_with(&settings, store.clone())
                .await
                .unwrap();
        let port = listener.local_addr().unwrap().port();
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(bulwark_control_plane::server::serve(
            listener,
            tls,
            state,
            async {
                let _ = stopped.await;
            },
        ));
        let pem = std::fs::read(dir.join("tls/server.crt")).unwrap();
        let client = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(&pem).unwrap()])
            .resolve("localhost", ([127, 0, 0, 1], port).into())
            .build()
            .unwrap();
        Server {
            base: format!("https://localhost:{port}"),
            port,
            client,
            store,
            admin,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Stops the server and waits until it has let go of the state file.
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap();
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if status.is_client_error() || status.is_server_error() {
            assert!(
                value["error"]["code"].is_string() && value["error"]["message"].is_string(),
                "{method_path} answered {status} without the error shape: {value}",
                method_path = path
            );
        }
        (status, value)
    }

    pub async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(token), Some(body)).await
    }

    pub async fn put(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::PUT, path, Some(token), Some(body)).await
    }

    pub async fn delete(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.call(Method::DELETE, path, Some(token), None).await
    }

    /// Creates a workspace, its admin user and a token for them; returns the token.
    /// The Prometheus text `/metrics` answers.
    pub async fn metrics_text(&self) -> String {
        self.client
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub async fn workspace_with_admin(&self, ws: &str) -> String {
        let (s, v) = self
            .post("/api/v1/workspaces", &self.admin, serde_json::json!({"id": ws, "name": ws, "plan": "dedicated", "quota_bytes": 1u64 << 40}))
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let (s, user) = self
            .post("/api/v1/users", &self.admin, serde_json::json!({"name": format!("{ws}-admin"), "roles": [{"role": "workspace-admin", "workspace_id": ws}]}))
            .await;
        assert_eq!(s, StatusCode::CREATED, "{user}");
        self.token_for(user["id"].as_str().unwrap(), &self.admin)
            .await
    }

    pub async fn token_for(&self, user_id: &str, by: &str) -> String {
        let (s, t) = self
            .post(
                &format!("/api/v1/users/{user_id}/tokens"),
                by,
                serde_json::json!({"name": "test"}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{t}");
        t["secret"].as_str().unwrap().to_string()
    }
}

pub fn seed_policy(db: &str, db_type: &str) -> Value {
    serde_json::json!({
        "db_identifier": db,
        "db_type": db_type,
        "schedule": {"frequency": "daily", "preferred_window": "01:00-05:00", "priority": "high"},
        "retention": {"period_days": 30, "min_snapshots": 7}
    })
}

pub fn postgres_db(id: &str, ws: &str) -> Value {
    serde_json::json!({
        "id": id, "workspace_id": ws, "type": "postgresql",
        "connection": {"host": "db1.internal", "port": 5432, "user": "backup", "database": "orders"},
        "secrets": {"password": format!("pw-{id}-very-secret")},
        "labels": {"team": "payments"}
    })
}

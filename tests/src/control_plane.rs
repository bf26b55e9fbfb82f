//! The control plane in-process on real HTTPS, for end-to-end tests in this crate that need its
//! internals too (the store, to drive what the job protocol will do): bootstrapped in a
//! temporary directory, on a free port, with its self-signed certificate trusted by the client,
//! stopped (and its background tasks with it) by [`TestServer::stop`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use bulwark_control_plane::config::{LogFormat, Settings};
use bulwark_control_plane::scheduler::JobSettings;
use bulwark_control_plane::store::Store;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

pub struct TestServer {
    pub dir: PathBuf,
    pub base: String,
    pub port: u16,
    /// Trusts the server's certificate; presents no client certificate.
    pub client: reqwest::Client,
    pub store: Store,
    /// The bootstrap platform admin's token.
    pub admin: String,
    pub jobs: JobSettings,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

/// A stopped [`TestServer`], ready to start again where it was.
pub struct Stopped {
    pub dir: PathBuf,
    pub port: u16,
    admin: String,
    jobs: JobSettings,
}

impl Stopped {
    pub async fn start(self) -> TestServer {
        TestServer::serve(
            &self.dir,
            self.port,
            Duration::from_secs(300),
            self.jobs,
            self.admin,
        )
        .await
    }
}

impl TestServer {
    /// Bootstraps `dir` (which must be new) and serves it; storages are synced every
    /// `storage_sync`.
    pub async fn start(dir: &Path, storage_sync: Duration) -> TestServer {
        Self::start_with_jobs(dir, storage_sync, JobSettings::default()).await
    }

    /// [`start`](Self::start) with these job settings (scheduler tick, lost-job timeout, …).
    pub async fn start_with_jobs(
        dir: &Path,
        storage_sync: Duration,
        jobs: JobSettings,
    ) -> TestServer {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let (_, _, admin) = bulwark_control_plane::cli::try_bootstrap(dir, "root")
            .unwrap()
            .unwrap();
        Self::serve(dir, 0, storage_sync, jobs, admin).await
    }

    /// Stops the server, keeping what is needed to start it again on the same data directory
    /// and port (agents keep the URL they enrolled with), as a restart of the service would.
    pub async fn stop_for_restart(self) -> Stopped {
        let stopped = Stopped {
            dir: self.dir.clone(),
            port: self.port,
            admin: self.admin.clone(),
            jobs: self.jobs,
        };
        self.stop().await;
        stopped
    }

    /// `sha256:<hex>` of the server's (self-signed) certificate, as agents pin it.
    pub fn fingerprint(&self) -> String {
        use rustls::pki_types::pem::PemObject;
        let pem = std::fs::read(self.dir.join("tls/server.crt")).unwrap();
        let der = rustls::pki_types::CertificateDer::from_pem_slice(&pem).unwrap();
        let digest = ring::digest::digest(&ring::digest::SHA256, der.as_ref());
        format!("sha256:{}", hex::encode(digest.as_ref()))
    }

    async fn serve(
        dir: &Path,
        port: u16,
        storage_sync: Duration,
        jobs: JobSettings,
        admin: String,
    ) -> TestServer {
        let settings = Settings {
            listen: ([127, 0, 0, 1], port).into(),
            data_dir: dir.to_path_buf(),
            tls: None,
            max_body_bytes: 64 * 1024,
            log_format: LogFormat::Text,
            storage_sync,
            agent_cert_days: 30,
            jobs,
            http: Default::default(),
        };
        // After a restart, the last connection tasks of the stopped server may still be
        // letting go of the state file.
        let mut tries = 0;
        let store = loop {
            match Store::open(dir) {
                Ok(s) => break s,
                Err(e) if tries < 100 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("cannot open the state store: {e}"),
            }
        };
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
        TestServer {
            dir: dir.to_path_buf(),
            base: format!("https://localhost:{port}"),
            port,
            client: client_with(dir, port, None),
            store,
            admin,
            jobs,
            stop,
            task,
        }
    }

    /// Stops the server and waits for it and its background tasks to end.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .expect("the server (and its background tasks) stop")
            .unwrap();
    }

    /// One request with `client`; every failure must carry the API's error shape.
    pub async fn call(
        &self,
        client: &reqwest::Client,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = client.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if !status.is_success() {
            assert!(
                value["error"]["code"].is_string() && value["error"]["message"].is_string(),
                "{path} answered {status} without the error shape: {value}"
            );
        }
        (status, value)
    }

    pub async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.call(&self.client, Method::GET, path, Some(token), None)
            .await
    }
    pub async fn post(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.call(&self.client, Method::POST, path, Some(token), Some(body))
            .await
    }
    pub async fn put(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.call(&self.client, Method::PUT, path, Some(token), Some(body))
            .await
    }
    pub async fn delete(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.call(&self.client, Method::DELETE, path, Some(token), None)
            .await
    }

    /// The test clock: the policy's stored next slot becomes `when`, as if that time had come
    /// (or, far ahead, as if it never would).
    pub async fn set_next_due(&self, policy: &str, when: chrono::DateTime<chrono::Utc>) {
        let policy = policy.to_string();
        self.store
            .write(bulwark_control_plane::jobs::system_actor(), move |tx| {
                let mut st = tx.schedule_state(&policy)?;
                st.next_due = Some(when);
                tx.put_schedule_state(&policy, &st)
            })
            .await
            .unwrap();
    }

    /// Registers the simulator as the Proxmox cluster `pve`.
    pub async fn register_pve(&self, sim: &crate::pve_sim::PveSim) {
        let (s, v) = self
            .post(
                "/api/v1/proxmox-clusters",
                &self.admin,
                json!({"id": "pve", "name": "Simulated PVE", "url": sim.url,
                    "token_id": sim.token_id, "token_secret": sim.token_secret,
                    "fingerprint": sim.fingerprint}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }

    /// Registers the simulator as cluster `pve` and provisions the NFS storage `main` of `ws`
    /// (token `ws_token`) on it, pointing at `nfs`'s export; returns the storage's name on the
    /// cluster (its repository is `bulwark/<that>` on the export).
    pub async fn provision_nfs_storage(
        &self,
        sim: &crate::pve_sim::PveSim,
        nfs: &crate::nfs::NfsServer,
        ws: &str,
        ws_token: &str,
    ) -> String {
        self.register_pve(sim).await;
        let (s, storage) = self
            .post(
                &format!("/api/v1/workspaces/{ws}/backup-storages"),
                ws_token,
                json!({"id": "main", "cluster_id": "pve", "type": "nfs", "server": "127.0.0.1",
                    "export": nfs.export.to_string_lossy(), "nodes": ["pve1"],
                    "capacity_bytes": 1u64 << 34}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{storage}");
        assert_eq!(storage["status"], "active", "{storage}");
        storage["pve_storage"].as_str().unwrap().to_string()
    }

    /// A one-time enrolment token for `ws`, made by `admin` (`bwe_` + 64 hex digits).
    pub async fn enrollment_token(&self, admin: &str, ws: &str) -> String {
        let (s, v) = self
            .post(
                "/api/v1/agents/enrollment-tokens",
                admin,
                json!({"workspace_id": ws, "note": "db1"}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let secret = v["secret"].as_str().unwrap().to_string();
        assert!(secret.starts_with("bwe_") && secret.len() == 68, "{secret}");
        secret
    }

    /// A workspace on `plan` with `quota` bytes, and a token of its workspace admin.
    pub async fn workspace(&self, ws: &str, plan: &str, quota: u64) -> String {
        let (s, v) = self
            .post(
                "/api/v1/workspaces",
                &self.admin,
                json!({"id": ws, "name": ws, "plan": plan, "quota_bytes": quota}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        self.user(&format!("{ws}-admin"), "workspace-admin", ws)
            .await
    }

    /// A user `name` with `role` on workspace `ws`, and a token of theirs.
    pub async fn user(&self, name: &str, role: &str, ws: &str) -> String {
        let (s, user) = self
            .post(
                "/api/v1/users",
                &self.admin,
                json!({"name": name, "roles": [{"role": role, "workspace_id": ws}]}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{user}");
        let (s, t) = self
            .post(
                &format!("/api/v1/users/{}/tokens", user["id"].as_str().unwrap()),
                &self.admin,
                json!({"name": "test"}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{t}");
        t["secret"].as_str().unwrap().to_string()
    }
}

/// A client trusting the server in `dir` on `port`, presenting `identity` (PEM certificate and
/// key) if given.
pub fn client_with(dir: &Path, port: u16, identity: Option<(&str, &str)>) -> reqwest::Client {
    let pem = std::fs::read(dir.join("tls/server.crt")).unwrap();
    let mut builder = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&pem).unwrap()])
        .resolve("localhost", ([127, 0, 0, 1], port).into());
    if let Some((cert, key)) = identity {
        let both = format!("{cert}\n{key}");
        builder = builder.identity(reqwest::Identity::from_pem(both.as_bytes()).unwrap());
    }
    builder.build().unwrap()
}

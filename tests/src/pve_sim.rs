//! A Proxmox VE API simulator. **Proxmox VE cannot run here, so the client's tests run against
//! this instead of a real cluster.** It serves the endpoints `proxmox-client` uses over HTTPS
//! on 127.0.0.1, with PVE's envelopes and status codes, and validates every request with the
//! rules of the real API schema (`proxmox-client/schema/pve-api-subset.json`, see
//! `pve_sim/schema.rs`); storage behaviour follows the `storage_semantics` and `storage_types`
//! sections of that file (see `pve_sim/api.rs`). What it does *not* reproduce: the 3 s delay
//! of a 401 (configurable, 0 by default), cluster forwarding between nodes, real mounts, `df`.
//!
//! Like a cluster, it has its own CA; the node certificate is signed by it, so a client can
//! trust it by the CA ([`PveSim::ca_pem`]) or by the node certificate's SHA-256 fingerprint
//! ([`PveSim::fingerprint`], the `AA:BB:…` form PVE shows).
//!
//! Credentials: the user `root@pam` (password [`PveSim::password`]) and its token
//! [`PveSim::token_id`] have every privilege; the token [`PveSim::readonly_token_id`]
//! (`monitor@pve!ro`) only `Datastore.Audit` and `Sys.Audit`, like a privilege-separated token
//! with a read-only role.
//!
//! Faults ([`Fault`]) make it slow, fail with 500s, expire tickets, or report a storage
//! inactive or full. The server runs on its own thread and runtime; dropping the `PveSim` stops
//! it.

mod api;
mod schema;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use serde_json::{json, Value};

use api::{ApiError, Caller, State};
pub use api::{Usage, Volume};

/// How to start the simulator.
#[derive(Clone, Debug)]
pub struct PveSimOptions {
    pub nodes: Vec<String>,
    /// Lifetime of a ticket (PVE: 2 h).
    pub ticket_lifetime: Duration,
    /// Size reported for a storage without [`PveSim::set_storage_usage`].
    pub default_total: u64,
    /// How long a volume-delete task runs.
    pub volume_delete_duration: Duration,
    /// PVE delays every 401 by 3 s; tests rarely want that.
    pub auth_failure_delay: Duration,
}

impl Default for PveSimOptions {
    fn default() -> Self {
        PveSimOptions {
            nodes: vec!["pve1".into(), "pve2".into()],
            ticket_lifetime: Duration::from_secs(2 * 3600),
            default_total: 1 << 40,
            volume_delete_duration: Duration::from_millis(300),
            auth_failure_delay: Duration::ZERO,
        }
    }
}

/// Something to go wrong.
#[derive(Clone, Debug)]
pub enum Fault {
    /// The next `requests` requests are answered only after `duration`.
    Delay { duration: Duration, requests: usize },
    /// The next `n` API requests (not logins) fail with 500.
    ServerErrors(usize),
    /// Every ticket issued so far stops being valid.
    ExpireTickets,
    /// The storage cannot be activated (e.g. the NFS server went away): `active: 0`, sizes 0.
    StorageInactive(String),
    /// Undoes [`Fault::StorageInactive`].
    StorageActive(String),
    /// The storage is full: `used == total`, `avail == 0`.
    DiskFull(String),
}

/// One request as the simulator saw it.
#[derive(Clone, Debug)]
pub struct RequestRecord {
    pub method: String,
    /// Path below `/api2/json`, percent-decoded.
    pub path: String,
    /// Query and body parameters as received (before validation).
    pub params: BTreeMap<String, String>,
    pub content_type: Option<String>,
    /// `token`, `ticket` or `none`.
    pub auth: &'static str,
    pub csrf: bool,
    pub status: u16,
}

struct TicketInfo {
    user: String,
    csrf: String,
    issued: Instant,
    expired: bool,
}

struct Inner {
    state: State,
    tickets: HashMap<String, TicketInfo>,
    tickets_issued: usize,
    /// token id → (secret, user, privileges)
    tokens: BTreeMap<String, (String, BTreeSet<String>)>,
    delay: Option<(Duration, usize)>,
    server_errors: usize,
    log: Vec<RequestRecord>,
}

pub struct PveSim {
    /// `https://127.0.0.1:<port>`
    pub url: String,
    pub port: u16,
    /// SHA-256 of the node certificate, `AA:BB:…`.
    pub fingerprint: String,
    /// The simulated cluster CA's certificate.
    pub ca_pem: String,
    pub username: String,
    pub password: String,
    pub token_id: String,
    pub token_secret: String,
    pub readonly_token_id: String,
    pub readonly_token_secret: String,
    options: PveSimOptions,
    inner: Arc<Mutex<Inner>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

const ALL_PRIVILEGES: [&str; 9] = [
    "Datastore.Allocate",
    "Datastore.AllocateSpace",
    "Datastore.AllocateTemplate",
    "Datastore.Audit",
    "Sys.Audit",
    "Sys.Modify",
    "Permissions.Modify",
    "Pool.Allocate",
    "Pool.Audit",
];

impl PveSim {
    pub fn start(options: PveSimOptions) -> PveSim {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let (tls, fingerprint, ca_pem) = make_tls();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let token_secret = random_uuid();
        let readonly_token_secret = random_uuid();
        let all: BTreeSet<String> = ALL_PRIVILEGES.iter().map(|s| s.to_string()).collect();
        let mut tokens = BTreeMap::new();
        tokens.insert("root@pam!bulwark".to_string(), (token_secret.clone(), all));
        tokens.insert(
            "monitor@pve!ro".to_string(),
            (
                readonly_token_secret.clone(),
                ["Datastore.Audit", "Sys.Audit"]
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
            ),
        );
        let state = State {
            schema: schema::Schema::load(),
            nodes: options.nodes.clone(),
            fingerprint: fingerprint.clone(),
            storages: BTreeMap::new(),
            secrets: BTreeMap::new(),
            usage: BTreeMap::new(),
            default_total: options.default_total,
            inactive: BTreeSet::new(),
            volumes: BTreeMap::new(),
            tasks: BTreeMap::new(),
            task_counter: 0,
            config_version: 0,
            volume_delete_duration: options.volume_delete_duration,
        };
        let inner = Arc::new(Mutex::new(Inner {
            state,
            tickets: HashMap::new(),
            tickets_issued: 0,
            tokens,
            delay: None,
            server_errors: 0,
            log: Vec::new(),
        }));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let server_inner = inner.clone();
        let server_options = options.clone();
        let thread = std::thread::Builder::new()
            .name(format!("pve-sim-{port}"))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(serve(listener, tls, server_inner, server_options, rx));
            })
            .expect("spawn simulator thread");
        PveSim {
            url: format!("https://127.0.0.1:{port}"),
            port,
            fingerprint,
            ca_pem,
            username: "root@pam".into(),
            password: "sim-password".into(),
            token_id: "root@pam!bulwark".into(),
            token_secret,
            readonly_token_id: "monitor@pve!ro".into(),
            readonly_token_secret,
            options,
            inner,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }

    pub fn start_default() -> PveSim {
        PveSim::start(PveSimOptions::default())
    }

    pub fn options(&self) -> &PveSimOptions {
        &self.options
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn inject(&self, fault: Fault) {
        let mut g = self.lock();
        match fault {
            Fault::Delay { duration, requests } => g.delay = Some((duration, requests)),
            Fault::ServerErrors(n) => g.server_errors = n,
            Fault::ExpireTickets => g.tickets.values_mut().for_each(|t| t.expired = true),
            Fault::StorageInactive(id) => {
                g.state.inactive.insert(id);
            }
            Fault::StorageActive(id) => {
                g.state.inactive.remove(&id);
            }
            Fault::DiskFull(id) => {
                let total = g
                    .state
                    .usage
                    .get(&id)
                    .map_or(g.state.default_total, |u| u.total);
                g.state.usage.insert(id, Usage { total, used: total });
            }
        }
    }

    /// Sets what the storage's status reports on every node.
    pub fn set_storage_usage(&self, id: &str, total: u64, used: u64) {
        self.lock()
            .state
            .usage
            .insert(id.to_string(), Usage { total, used });
    }

    /// The storage's configuration entry (`storage.cfg`), values as PVE stored them.
    pub fn storage(&self, id: &str) -> Option<BTreeMap<String, String>> {
        self.lock().state.storages.get(id).cloned()
    }

    /// A sensitive option (keyring, password), kept apart like /etc/pve/priv.
    pub fn storage_secret(&self, id: &str, key: &str) -> Option<String> {
        self.lock()
            .state
            .secrets
            .get(id)
            .and_then(|s| s.get(key).cloned())
    }

    /// Puts a backup file on a storage; returns its volume id.
    pub fn add_backup(&self, storage: &str, vmid: u64, size: u64) -> String {
        let mut g = self.lock();
        let n = g.state.volumes.get(storage).map_or(0, Vec::len);
        let volid = format!(
            "{storage}:backup/vzdump-qemu-{vmid}-2026_01_{:02}-00_00_00.vma.zst",
            n + 1
        );
        g.state
            .volumes
            .entry(storage.to_string())
            .or_default()
            .push(Volume {
                volid: volid.clone(),
                content: "backup".into(),
                format: "vma.zst".into(),
                size,
                ctime: 1_767_225_600 + n as u64,
                vmid: Some(vmid),
            });
        volid
    }

    /// Starts a task that runs for `duration` and ends with `exitstatus`; returns its UPID.
    pub fn start_task(
        &self,
        node: &str,
        task_type: &str,
        duration: Duration,
        exitstatus: &str,
    ) -> String {
        self.lock()
            .state
            .start_task(node, task_type, "root@pam!bulwark", duration, exitstatus)
    }

    /// The configuration digest `GET /storage` currently reports.
    pub fn digest(&self) -> String {
        self.lock().state.digest()
    }

    pub fn requests(&self) -> Vec<RequestRecord> {
        self.lock().log.clone()
    }

    /// Requests with this method whose path is exactly `path`.
    pub fn count(&self, method: &str, path: &str) -> usize {
        self.lock()
            .log
            .iter()
            .filter(|r| r.method == method && r.path == path)
            .count()
    }

    pub fn tickets_issued(&self) -> usize {
        self.lock().tickets_issued
    }

    /// A client configuration trusting this simulator by fingerprint, with the full token.
    pub fn client_config(&self) -> proxmox_client::ClientConfig {
        let mut c = proxmox_client::ClientConfig::new(
            self.url.clone(),
            proxmox_client::Trust::Fingerprint(self.fingerprint.parse().expect("fingerprint")),
            proxmox_client::Credentials::token(self.token_id.clone(), self.token_secret.clone()),
        );
        c.timeout = Duration::from_secs(10);
        c.retry.first_delay = Duration::from_millis(50);
        c
    }

    pub fn client(&self) -> proxmox_client::Client {
        proxmox_client::Client::new(self.client_config()).expect("client")
    }
}

impl Drop for PveSim {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A cluster CA and a node certificate it signed, like `pve-root-ca.pem` + `pve-ssl.pem`.
fn make_tls() -> (Arc<rustls::ServerConfig>, String, String) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(
        DnType::CommonName,
        "Proxmox Virtual Environment (simulated)",
    );
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key).expect("CA cert");
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().expect("node key");
    let mut leaf_params =
        CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into(), "pve1".into()])
            .expect("node params");
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "pve1.simulated");
    leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf = leaf_params
        .signed_by(&leaf_key, &issuer)
        .expect("node cert");
    let fingerprint = proxmox_client::Fingerprint::of(leaf.der().as_ref()).to_string();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone()], key)
        .expect("server TLS config");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    (Arc::new(config), fingerprint, ca_cert.pem())
}

fn random_bytes<const N: usize>() -> [u8; N] {
    use ring::rand::SecureRandom;
    let mut out = [0u8; N];
    ring::rand::SystemRandom::new()
        .fill(&mut out)
        .expect("random");
    out
}

fn random_uuid() -> String {
    let h = hex::encode(random_bytes::<16>());
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

async fn serve(
    listener: std::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    inner: Arc<Mutex<Inner>>,
    options: PveSimOptions,
    mut shutdown: tokio::sync::oneshot::Receiver<()>,
) {
    let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(_) => continue,
            },
            _ = &mut shutdown => return,
        };
        let acceptor = acceptor.clone();
        let inner = inner.clone();
        let options = options.clone();
        tokio::spawn(async move {
            // A client that refuses our certificate ends here, as with pveproxy.
            let Ok(stream) = acceptor.accept(tcp).await else {
                return;
            };
            let service = hyper::service::service_fn(move |req| {
                let inner = inner.clone();
                let options = options.clone();
                async move { Ok::<_, Infallible>(handle(req, inner, options).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

type Resp = Response<Full<Bytes>>;

fn respond(status: u16, body: Option<Value>, message: Option<&str>) -> Resp {
    let bytes = body.map(|b| b.to_string()).unwrap_or_default();
    let mut resp = Response::builder()
        .status(status)
        .header("Server", "pve-api-daemon/3.0 (simulated)")
        .header("Content-Type", "application/json;charset=UTF-8")
        .body(Full::new(Bytes::from(bytes)))
        .expect("response");
    if let Some(m) = message {
        // PVE puts the first line of the message in the reason phrase.
        let line = m.lines().next().unwrap_or("").to_string();
        if let Ok(reason) = hyper::ext::ReasonPhrase::try_from(line) {
            resp.extensions_mut().insert(reason);
        }
    }
    resp
}

fn error_response(e: &ApiError) -> Resp {
    if e.status == 401 {
        return respond(401, None, Some(&e.message));
    }
    let mut body = json!({ "data": null, "message": format!("{}\n", e.message) });
    if !e.errors.is_empty() {
        body["errors"] = json!(e.errors);
    }
    respond(e.status, Some(body), Some(&e.message))
}

async fn handle(req: Request<Incoming>, inner: Arc<Mutex<Inner>>, options: PveSimOptions) -> Resp {
    let delay = {
        let mut g = inner.lock().unwrap_or_else(|e| e.into_inner());
        match g.delay {
            Some((d, n)) if n > 0 => {
                g.delay = if n > 1 { Some((d, n - 1)) } else { None };
                Some(d)
            }
            _ => None,
        }
    };
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    let method = req.method().as_str().to_string();
    let raw_path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let headers = req.headers().clone();
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let content_type = header("content-type");
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return respond(400, None, Some("bad request body")),
    };

    let mut record = RequestRecord {
        method: method.clone(),
        path: String::new(),
        params: BTreeMap::new(),
        content_type: content_type.clone(),
        auth: "none",
        csrf: header("csrfpreventiontoken").is_some(),
        status: 0,
    };
    let (result, auth_failed) = {
        let mut g = inner.lock().unwrap_or_else(|e| e.into_inner());
        let r = process(
            &mut g,
            &options,
            &method,
            &raw_path,
            &query,
            &header,
            content_type.as_deref(),
            &body,
            &mut record,
        );
        let auth_failed = matches!(&r, Err(e) if e.status == 401);
        (r, auth_failed)
    };
    if auth_failed && !options.auth_failure_delay.is_zero() {
        tokio::time::sleep(options.auth_failure_delay).await;
    }
    let resp = match result {
        Ok(data) => respond(200, Some(json!({ "data": data })), None),
        Err(e) => error_response(&e),
    };
    record.status = resp.status().as_u16();
    inner
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .log
        .push(record);
    resp
}

#[allow(clippy::too_many_arguments)]
fn process(
    g: &mut Inner,
    options: &PveSimOptions,
    method: &str,
    raw_path: &str,
    query: &str,
    header: &dyn Fn(&str) -> Option<String>,
    content_type: Option<&str>,
    body: &[u8],
    record: &mut RequestRecord,
) -> Result<Value, ApiError> {
    let Some(rest) = raw_path.strip_prefix("/api2/json") else {
        return Err(ApiError::new(
            501,
            format!("Method '{method} {raw_path}' not implemented"),
        ));
    };
    let segments: Vec<String> = rest
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode)
        .collect();
    record.path = format!("/{}", segments.join("/"));

    // Parameters: query, then the body (form or JSON); PVE merges both.
    let mut params: BTreeMap<String, String> = parse_form(query);
    if !body.is_empty() {
        if method == "GET" || method == "DELETE" {
            return Err(ApiError::new(
                501,
                format!("Unexpected content for method '{method}'"),
            ));
        }
        let body_params = if content_type.is_some_and(|c| c.starts_with("application/json")) {
            parse_json_body(body)?
        } else {
            parse_form(&String::from_utf8_lossy(body))
        };
        params.extend(body_params);
    }
    record.params = params.clone();

    let (template, vars, rules) = match g.state.schema.route(method, &segments) {
        schema::Route::Found {
            template,
            vars,
            rules,
        } => (template, vars, rules),
        _ => {
            return Err(ApiError::new(
                501,
                format!("Method '{method} {}' not implemented", record.path),
            ))
        }
    };
    let perms = rules.permissions.clone();
    let allowtoken = rules.allowtoken;

    // Authentication.
    let caller = if template == "/access/ticket" && method == "POST" {
        None
    } else {
        Some(authenticate(
            g, options, method, &template, allowtoken, header, record,
        )?)
    };

    if g.server_errors > 0 && caller.is_some() {
        g.server_errors -= 1;
        return Err(ApiError::new(500, "simulated internal server error"));
    }

    for (k, v) in &vars {
        if let Some(existing) = params.get(k) {
            if existing != v {
                let mut errors = BTreeMap::new();
                errors.insert(
                    k.clone(),
                    "duplicate parameter (already defined in URI) with conflicting values!".into(),
                );
                return Err(ApiError::params(errors));
            }
        }
        params.insert(k.clone(), v.clone());
    }
    let rules = match g.state.schema.route(method, &segments) {
        schema::Route::Found { rules, .. } => rules,
        _ => unreachable!(),
    };
    let errors = g.state.schema.validate(rules, &params);
    if !errors.is_empty() {
        return Err(ApiError::params(errors));
    }

    let Some(caller) = caller else {
        return login(g, options, &params);
    };
    api::check_permissions(&perms, &vars, &caller)?;
    api::handle(&mut g.state, &caller, method, &template, &params)
}

fn authenticate(
    g: &mut Inner,
    options: &PveSimOptions,
    method: &str,
    template: &str,
    allowtoken: bool,
    header: &dyn Fn(&str) -> Option<String>,
    record: &mut RequestRecord,
) -> Result<Caller, ApiError> {
    let authz = header("authorization").unwrap_or_default();
    if let Some(value) = authz.strip_prefix("PVEAPIToken=") {
        record.auth = "token";
        let Some((token_id, secret)) = value.rsplit_once('=') else {
            return Err(ApiError::new(401, "authentication failure"));
        };
        let Some((stored, privileges)) = g.tokens.get(token_id) else {
            return Err(ApiError::new(401, "authentication failure"));
        };
        if stored != secret {
            return Err(ApiError::new(401, "authentication failure"));
        }
        if !allowtoken {
            return Err(ApiError::new(
                403,
                format!("URI '{template}' not available with API token, need proper ticket."),
            ));
        }
        return Ok(Caller {
            user: token_id.to_string(),
            privileges: privileges.clone(),
        });
    }
    let cookie_ticket = header("cookie").and_then(|c| {
        c.split(';')
            .filter_map(|kv| kv.trim().split_once('='))
            .find(|(k, _)| *k == "PVEAuthCookie")
            .map(|(_, v)| percent_decode(v))
    });
    let ticket = cookie_ticket.or_else(|| authz.strip_prefix("PVEAuthCookie=").map(str::to_string));
    let Some(ticket) = ticket else {
        return Err(ApiError::new(401, "No ticket"));
    };
    record.auth = "ticket";
    let Some(info) = g.tickets.get(&ticket) else {
        return Err(ApiError::new(401, "authentication failure"));
    };
    if info.expired || info.issued.elapsed() > options.ticket_lifetime {
        return Err(ApiError::new(401, "authentication failure"));
    }
    // Every method but GET needs the CSRF token with a ticket.
    if method != "GET" && header("csrfpreventiontoken").as_deref() != Some(info.csrf.as_str()) {
        return Err(ApiError::new(401, "Permission denied - invalid csrf token"));
    }
    Ok(Caller {
        user: info.user.clone(),
        privileges: ALL_PRIVILEGES.iter().map(|s| s.to_string()).collect(),
    })
}

/// `POST /access/ticket`: the password, or a valid ticket of the same user, buys a new ticket.
fn login(
    g: &mut Inner,
    options: &PveSimOptions,
    params: &BTreeMap<String, String>,
) -> Result<Value, ApiError> {
    let username = params.get("username").cloned().unwrap_or_default();
    let username = match params.get("realm") {
        Some(realm) if !username.contains('@') => format!("{username}@{realm}"),
        _ => username,
    };
    let password = params.get("password").cloned().unwrap_or_default();
    let by_password = username == "root@pam" && password == "sim-password";
    let by_ticket = g.tickets.get(&password).is_some_and(|t| {
        t.user == username && !t.expired && t.issued.elapsed() <= options.ticket_lifetime
    });
    if !by_password && !by_ticket {
        return Err(ApiError::new(401, "authentication failure"));
    }
    let now = unix_now();
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let ticket = format!(
        "PVE:{username}:{now:08X}::{}",
        b64.encode(random_bytes::<48>())
    );
    let csrf = format!(
        "{now:08X}:{}",
        b64.encode(random_bytes::<32>()).trim_end_matches('=')
    );
    g.tickets.insert(
        ticket.clone(),
        TicketInfo {
            user: username.clone(),
            csrf: csrf.clone(),
            issued: Instant::now(),
            expired: false,
        },
    );
    g.tickets_issued += 1;
    Ok(json!({
        "username": username,
        "ticket": ticket,
        "CSRFPreventionToken": csrf,
        "clustername": "simulated",
        "cap": {},
    }))
}

fn parse_json_body(body: &[u8]) -> Result<BTreeMap<String, String>, ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::new(400, format!("unable to parse JSON body: {e}")))?;
    let Value::Object(map) = v else {
        return Err(ApiError::new(400, "JSON body is not an object"));
    };
    Ok(map
        .into_iter()
        .map(|(k, v)| {
            let s = match v {
                Value::Bool(b) => if b { "1" } else { "0" }.to_string(),
                Value::String(s) => s,
                // The PVE 8 legacy join of arrays for `-list` parameters.
                Value::Array(items) => items
                    .iter()
                    .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_string))
                    .collect::<Vec<_>>()
                    .join(","),
                other => other.to_string(),
            };
            (k, s)
        })
        .collect())
}

fn parse_form(s: &str) -> BTreeMap<String, String> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (
                percent_decode(&k.replace('+', " ")),
                percent_decode(&v.replace('+', " ")),
            )
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push(h * 16 + l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

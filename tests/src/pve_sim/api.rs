//! The simulated cluster's state and the endpoint handlers. Behaviour follows
//! `storage_semantics` in the schema file and NOTES.md A6–A9: storage create/update/delete are
//! synchronous; type-specific checks fail as 500 with only a message; status of an inactive,
//! disabled or foreign-node storage is `active: 0` with zero sizes; only an unknown id gives
//! 400 `No such storage.`; deleting a volume runs a task and answers its UPID.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use super::schema::{truthy, Schema};

/// A handler's failure, rendered by the server in PVE's envelope.
#[derive(Debug)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    pub errors: BTreeMap<String, String>,
}

impl ApiError {
    pub fn new(status: u16, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            errors: BTreeMap::new(),
        }
    }

    pub fn params(errors: BTreeMap<String, String>) -> ApiError {
        ApiError {
            status: 400,
            message: "Parameter verification failed.".into(),
            errors,
        }
    }

    fn field(name: &str, reason: &str) -> ApiError {
        let mut errors = BTreeMap::new();
        errors.insert(name.to_string(), reason.to_string());
        ApiError::params(errors)
    }
}

pub type ApiResult = Result<Value, ApiError>;

/// A backup file (or other volume) on a storage.
#[derive(Clone, Debug)]
pub struct Volume {
    pub volid: String,
    pub content: String,
    pub format: String,
    pub size: u64,
    pub ctime: u64,
    pub vmid: Option<u64>,
}

#[derive(Clone, Debug)]
pub struct Task {
    pub upid: String,
    pub node: String,
    pub task_type: String,
    pub user: String,
    pub started: Instant,
    pub starttime: u64,
    pub duration: Duration,
    pub exitstatus: String,
}

/// Capacity of a storage as its `df` would report it (the same on every node: the simulated
/// storages are shared or identical).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    pub total: u64,
    pub used: u64,
}

pub struct State {
    pub schema: Schema,
    pub nodes: Vec<String>,
    pub fingerprint: String,
    /// Storage id → its `storage.cfg` entry (values as written, `type` included).
    pub storages: BTreeMap<String, BTreeMap<String, String>>,
    /// Sensitive values kept apart, as PVE keeps them under /etc/pve/priv.
    pub secrets: BTreeMap<String, BTreeMap<String, String>>,
    pub usage: BTreeMap<String, Usage>,
    pub default_total: u64,
    pub inactive: BTreeSet<String>,
    pub volumes: BTreeMap<String, Vec<Volume>>,
    pub tasks: BTreeMap<String, Task>,
    pub task_counter: u32,
    /// Bumped on every configuration change; the digest is derived from it and the content.
    pub config_version: u64,
    pub volume_delete_duration: Duration,
}

impl State {
    /// SHA-1 hex over the serialised configuration, like PVE's digest of `storage.cfg`.
    pub fn digest(&self) -> String {
        let text = format!("{}{:?}", self.config_version, self.storages);
        let d = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, text.as_bytes());
        d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
    }

    fn node_exists(&self, node: &str) -> Result<(), ApiError> {
        if self.nodes.iter().any(|n| n == node) {
            Ok(())
        } else {
            // What pveproxy answers when `proxyto` cannot resolve the node.
            Err(ApiError::new(
                500,
                format!("hostname lookup '{node}' failed - failed to get address info for: {node}: Name or service not known"),
            ))
        }
    }

    fn type_table(&self, ty: &str) -> Result<&Value, ApiError> {
        let t = &self.schema.storage_types[ty];
        if t.is_object() {
            Ok(t)
        } else {
            Err(ApiError::new(
                500,
                format!("storage type '{ty}' is not simulated"),
            ))
        }
    }

    /// A config entry as JSON: booleans and integers as numbers, the rest as strings.
    fn entry_json(&self, id: &str, cfg: &BTreeMap<String, String>) -> Value {
        let props = self
            .schema
            .endpoints
            .iter()
            .find(|(p, m, _)| p == "/storage" && m == "POST")
            .map(|(_, _, r)| &r.properties);
        let mut out = Map::new();
        for (k, v) in cfg {
            let ty = props
                .and_then(|p| p.get(k))
                .and_then(|p| p["type"].as_str())
                .unwrap_or("string");
            let value = match ty {
                "boolean" | "integer" => v.parse::<i64>().map_or_else(|_| json!(v), |n| json!(n)),
                _ => json!(v),
            };
            out.insert(k.clone(), value);
        }
        out.insert("storage".into(), json!(id));
        out.insert("digest".into(), json!(self.digest()));
        Value::Object(out)
    }

    fn enabled_on(&self, cfg: &BTreeMap<String, String>, node: &str) -> bool {
        if cfg.get("disable").is_some_and(|d| d == "1") {
            return false;
        }
        match cfg.get("nodes") {
            Some(list) => proxmox_client::de::split_list(list)
                .iter()
                .any(|n| n == node),
            None => true,
        }
    }

    fn is_shared(&self, cfg: &BTreeMap<String, String>) -> bool {
        let ty = cfg.get("type").map(String::as_str).unwrap_or("");
        let always = self.schema.storage_semantics["shared_types"]
            .as_array()
            .is_some_and(|a| a.iter().any(|t| t == ty));
        always || cfg.get("shared").is_some_and(|s| s == "1")
    }

    /// What `storage_info` reports for one storage on one node.
    fn status_json(&self, id: &str, node: &str) -> Value {
        let cfg = &self.storages[id];
        let enabled = self.enabled_on(cfg, node);
        let active = enabled && !self.inactive.contains(id);
        let usage = self.usage.get(id).copied().unwrap_or(Usage {
            total: self.default_total,
            used: 0,
        });
        let (total, used) = if active {
            (usage.total, usage.used.min(usage.total))
        } else {
            (0, 0)
        };
        json!({
            "type": cfg["type"],
            "content": cfg.get("content").cloned().unwrap_or_default(),
            "shared": self.is_shared(cfg) as u8,
            "enabled": enabled as u8,
            "active": active as u8,
            "total": total,
            "used": used,
            "avail": total - used,
        })
    }

    pub fn new_upid(&mut self, node: &str, task_type: &str, id: &str, user: &str) -> (String, u64) {
        self.task_counter += 1;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let upid = format!(
            "UPID:{node}:{:08X}:{:08X}:{:08X}:{task_type}:{id}:{user}:",
            0x1000 + self.task_counter,
            0x0012_0000 + self.task_counter,
            now
        );
        (upid, now)
    }

    pub fn start_task(
        &mut self,
        node: &str,
        task_type: &str,
        user: &str,
        duration: Duration,
        exitstatus: &str,
    ) -> String {
        let (upid, starttime) = self.new_upid(node, task_type, "", user);
        self.tasks.insert(
            upid.clone(),
            Task {
                upid: upid.clone(),
                node: node.to_string(),
                task_type: task_type.to_string(),
                user: user.to_string(),
                started: Instant::now(),
                starttime,
                duration,
                exitstatus: exitstatus.to_string(),
            },
        );
        upid
    }
}

/// Who is calling, and what they may do.
pub struct Caller {
    pub user: String,
    pub privileges: BTreeSet<String>,
}

impl Caller {
    fn has(&self, p: &str) -> bool {
        self.privileges.contains(p)
    }
}

/// Applies the schema's `permissions.check` (`["perm", path, [privs], "any", 1]`).
pub fn check_permissions(
    perm: &Value,
    vars: &BTreeMap<String, String>,
    caller: &Caller,
) -> Result<(), ApiError> {
    let Some(check) = perm["check"].as_array() else {
        return Ok(());
    };
    if check.first().and_then(Value::as_str) != Some("perm") {
        return Ok(());
    }
    let mut path = check
        .get(1)
        .and_then(Value::as_str)
        .unwrap_or("/")
        .to_string();
    for (k, v) in vars {
        path = path.replace(&format!("{{{k}}}"), v);
    }
    let privs: Vec<&str> = check
        .get(2)
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let any = check.get(3).and_then(Value::as_str) == Some("any");
    let ok = if any {
        privs.iter().any(|p| caller.has(p))
    } else {
        privs.iter().all(|p| caller.has(p))
    };
    if ok {
        return Ok(());
    }
    let named = if any {
        privs.join("|")
    } else {
        privs
            .iter()
            .find(|p| !caller.has(p))
            .map(|s| s.to_string())
            .unwrap_or_default()
    };
    Err(ApiError::new(
        403,
        format!("Permission check failed ({path}, {named})"),
    ))
}

/// Dispatches a validated request.
pub fn handle(
    state: &mut State,
    caller: &Caller,
    method: &str,
    template: &str,
    params: &BTreeMap<String, String>,
) -> ApiResult {
    let p = |k: &str| params.get(k).map(String::as_str).unwrap_or("");
    match (method, template) {
        ("GET", "/version") => Ok(json!({
            "version": "9.1.1",
            "release": "9.1",
            "repoid": "5ab7e8f2c41d9e03",
            "console": "html5",
        })),
        ("GET", "/nodes") => Ok(Value::Array(
            state
                .nodes
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    json!({
                        "node": n, "status": "online", "level": "",
                        "ssl_fingerprint": state.fingerprint,
                        "cpu": 0.0123 + i as f64 / 100.0, "maxcpu": 8,
                        "mem": 4_000_000_000u64, "maxmem": 16_000_000_000u64,
                        "uptime": 86_400 + i as u64,
                    })
                })
                .collect(),
        )),
        ("GET", "/cluster/resources") => Ok(cluster_resources(
            state,
            params.get("type").map(String::as_str),
        )),
        ("GET", "/storage") => Ok(Value::Array(
            state
                .storages
                .iter()
                .filter(|(_, cfg)| {
                    params
                        .get("type")
                        .is_none_or(|t| cfg.get("type") == Some(t))
                })
                .filter(|_| caller.has("Datastore.Audit") || caller.has("Datastore.AllocateSpace"))
                .map(|(id, cfg)| state.entry_json(id, cfg))
                .collect(),
        )),
        ("GET", "/storage/{storage}") => {
            let id = p("storage");
            let cfg = state
                .storages
                .get(id)
                .ok_or_else(|| ApiError::new(500, format!("storage '{id}' does not exist")))?;
            Ok(state.entry_json(id, cfg))
        }
        ("POST", "/storage") => create_storage(state, params),
        ("PUT", "/storage/{storage}") => update_storage(state, params),
        ("DELETE", "/storage/{storage}") => {
            let id = p("storage");
            if state.storages.remove(id).is_none() {
                return Err(ApiError::new(
                    500,
                    format!("delete storage failed: storage '{id}' does not exist"),
                ));
            }
            state.secrets.remove(id);
            state.config_version += 1;
            Ok(Value::Null)
        }
        ("GET", "/nodes/{node}/storage") => {
            let node = p("node");
            state.node_exists(node)?;
            let mut out = Vec::new();
            for (id, cfg) in &state.storages {
                if params.get("storage").is_some_and(|s| s != id) {
                    continue;
                }
                if let Some(c) = params.get("content") {
                    let have = proxmox_client::de::split_list(
                        cfg.get("content").map_or("", String::as_str),
                    );
                    if !proxmox_client::de::split_list(c)
                        .iter()
                        .all(|w| have.contains(w))
                    {
                        continue;
                    }
                }
                let mut st = state.status_json(id, node);
                if params.get("enabled").is_some_and(|e| e == "1") && st["enabled"] == 0 {
                    continue;
                }
                st["storage"] = json!(id);
                let total = st["total"].as_u64().unwrap_or(0);
                if total > 0 {
                    st["used_fraction"] =
                        json!(st["used"].as_u64().unwrap_or(0) as f64 / total as f64);
                }
                out.push(st);
            }
            Ok(Value::Array(out))
        }
        ("GET", "/nodes/{node}/storage/{storage}/status") => {
            let (node, id) = (p("node"), p("storage"));
            state.node_exists(node)?;
            if !state.storages.contains_key(id) {
                return Err(ApiError::field("storage", "No such storage."));
            }
            Ok(state.status_json(id, node))
        }
        ("GET", "/nodes/{node}/storage/{storage}/content") => {
            let (node, id) = (p("node"), p("storage"));
            state.node_exists(node)?;
            if !state.storages.contains_key(id) {
                return Err(ApiError::new(500, format!("storage '{id}' does not exist")));
            }
            let vols = state.volumes.get(id).cloned().unwrap_or_default();
            Ok(Value::Array(
                vols.iter()
                    .filter(|v| params.get("content").is_none_or(|c| *c == v.content))
                    .filter(|v| {
                        params
                            .get("vmid")
                            .is_none_or(|id| v.vmid.map(|x| x.to_string()).as_ref() == Some(id))
                    })
                    .map(|v| {
                        let mut item = json!({
                            "volid": v.volid, "content": v.content, "format": v.format,
                            "size": v.size, "ctime": v.ctime,
                        });
                        if let Some(vmid) = v.vmid {
                            item["vmid"] = json!(vmid);
                        }
                        item
                    })
                    .collect(),
            ))
        }
        ("DELETE", "/nodes/{node}/storage/{storage}/content/{volume}") => {
            let (node, id, volume) = (p("node"), p("storage"), p("volume"));
            state.node_exists(node)?;
            if !state.storages.contains_key(id) {
                return Err(ApiError::new(500, format!("storage '{id}' does not exist")));
            }
            let volid = if volume.contains(':') {
                volume.to_string()
            } else {
                format!("{id}:{volume}")
            };
            let vols = state.volumes.entry(id.to_string()).or_default();
            let Some(pos) = vols.iter().position(|v| v.volid == volid) else {
                return Err(ApiError::new(
                    500,
                    format!("volume '{volid}' does not exist"),
                ));
            };
            vols.remove(pos);
            let duration = state.volume_delete_duration;
            let upid = state.start_task(node, "imgdel", &caller.user, duration, "OK");
            Ok(json!(upid))
        }
        ("GET", "/nodes/{node}/tasks/{upid}/status") => {
            let (node, upid) = (p("node"), p("upid"));
            state.node_exists(node)?;
            if upid.parse::<proxmox_client::Upid>().is_err() {
                return Err(ApiError::field("upid", "unable to parse worker upid"));
            }
            let task = state
                .tasks
                .get(upid)
                .filter(|t| t.node == node)
                .ok_or_else(|| ApiError::new(500, format!("task '{upid}' does not exist")))?;
            let running = task.started.elapsed() < task.duration;
            let mut out = json!({
                "upid": task.upid, "node": task.node, "pid": 0x1000, "pstart": 0x0012_0000,
                "starttime": task.starttime, "type": task.task_type, "id": "", "user": task.user,
                "status": if running { "running" } else { "stopped" },
            });
            if !running {
                out["exitstatus"] = json!(task.exitstatus);
            }
            Ok(out)
        }
        _ => Err(ApiError::new(
            501,
            format!("Method '{method} {template}' not implemented"),
        )),
    }
}

fn cluster_resources(state: &State, ty: Option<&str>) -> Value {
    let mut out = Vec::new();
    if ty.is_none() || ty == Some("node") {
        for n in &state.nodes {
            out.push(json!({
                "id": format!("node/{n}"), "type": "node", "node": n, "status": "online",
                "maxcpu": 8, "cpu": 0.01, "maxmem": 16_000_000_000u64, "mem": 4_000_000_000u64,
                "disk": 10_000_000_000u64, "maxdisk": 100_000_000_000u64, "uptime": 86_400,
            }));
        }
    }
    if ty.is_none() || ty == Some("storage") {
        for n in &state.nodes {
            for (id, cfg) in &state.storages {
                if !state.enabled_on(cfg, n) {
                    continue;
                }
                let st = state.status_json(id, n);
                out.push(json!({
                    "id": format!("storage/{n}/{id}"), "type": "storage", "node": n, "storage": id,
                    "disk": st["used"], "maxdisk": st["total"],
                    "status": if st["active"] == 1 { "available" } else { "unknown" },
                    "content": st["content"], "plugintype": cfg["type"], "shared": st["shared"],
                }));
            }
        }
    }
    Value::Array(out)
}

const META: [&str; 2] = ["storage", "type"];

fn create_storage(state: &mut State, params: &BTreeMap<String, String>) -> ApiResult {
    let id = params["storage"].clone();
    let ty = params["type"].clone();
    let table = state.type_table(&ty)?.clone();
    let options = table["options"].as_object().cloned().unwrap_or_default();
    let mut cfg: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in params {
        if META.contains(&k.as_str()) {
            continue;
        }
        if !options.contains_key(k) {
            return Err(ApiError::new(500, format!("unexpected property '{k}'")));
        }
        cfg.insert(k.clone(), v.clone());
    }
    if matches!(ty.as_str(), "nfs" | "cifs" | "cephfs") && !cfg.contains_key("path") {
        cfg.insert("path".into(), format!("/mnt/pve/{id}"));
    }
    for (k, o) in &options {
        if !truthy(&o["optional"]) && !cfg.contains_key(k) {
            return Err(ApiError::new(
                500,
                format!("missing value for required option '{k}'"),
            ));
        }
    }
    let content = match cfg.get("content") {
        Some(c) => normalize_content(&table, c)?,
        None => table["content_default"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default(),
    };
    cfg.insert("content".into(), content);
    if state.storages.contains_key(&id) {
        return Err(ApiError::new(
            500,
            format!("create storage failed: storage ID '{id}' already defined"),
        ));
    }
    let sensitive: Vec<String> = table["sensitive_properties"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let mut secrets = BTreeMap::new();
    for s in &sensitive {
        if let Some(v) = cfg.remove(s) {
            secrets.insert(s.clone(), v);
        }
    }
    cfg.insert("type".into(), ty.clone());
    state.storages.insert(id.clone(), cfg);
    state.secrets.insert(id.clone(), secrets);
    state.config_version += 1;
    Ok(json!({ "storage": id, "type": ty }))
}

/// Valid words the type does not support are dropped (PVE warns, does not refuse).
fn normalize_content(table: &Value, value: &str) -> Result<String, ApiError> {
    let words = proxmox_client::de::split_list(value);
    if words.iter().any(|w| w == "none") && words.len() > 1 {
        return Err(ApiError::new(
            500,
            "unable to combine content type 'none' with other content types",
        ));
    }
    let allowed: Vec<&str> = table["content_allowed"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut kept: Vec<String> = words
        .into_iter()
        .filter(|w| allowed.contains(&w.as_str()))
        .collect();
    kept.sort();
    kept.dedup();
    if kept.is_empty() {
        return Err(ApiError::new(500, "no valid content types given"));
    }
    Ok(kept.join(","))
}

fn update_storage(state: &mut State, params: &BTreeMap<String, String>) -> ApiResult {
    let id = params["storage"].clone();
    let fail = |m: String| ApiError::new(500, format!("update storage failed: {m}"));
    if let Some(d) = params.get("digest") {
        if *d != state.digest() {
            return Err(fail(
                "detected modified configuration - file changed by other user? Try again.".into(),
            ));
        }
    }
    let Some(cfg) = state.storages.get(&id).cloned() else {
        return Err(fail(format!("storage '{id}' does not exist")));
    };
    let ty = cfg["type"].clone();
    let table = state.type_table(&ty)?.clone();
    let options = table["options"].as_object().cloned().unwrap_or_default();
    let mut new = cfg.clone();
    let deletes = params
        .get("delete")
        .map(|d| proxmox_client::de::split_list(d))
        .unwrap_or_default();
    for (k, v) in params {
        if matches!(k.as_str(), "storage" | "digest" | "delete") {
            continue;
        }
        let Some(o) = options.get(k) else {
            return Err(fail(format!("unexpected property '{k}'")));
        };
        if truthy(&o["fixed"]) {
            return Err(fail(format!("can't change value of fixed parameter '{k}'")));
        }
        if deletes.contains(k) {
            return Err(fail(format!(
                "cannot set and delete property '{k}' at the same time!"
            )));
        }
        let v = if k == "content" {
            normalize_content(&table, v)?
        } else {
            v.clone()
        };
        new.insert(k.clone(), v);
    }
    for k in &deletes {
        let Some(o) = options.get(k) else {
            return Err(fail(format!("unexpected property '{k}'")));
        };
        if !truthy(&o["optional"]) {
            return Err(fail(format!("unable to delete required option '{k}'")));
        }
        if truthy(&o["fixed"]) {
            return Err(fail(format!("unable to delete fixed option '{k}'")));
        }
        new.remove(k);
    }
    let sensitive: Vec<String> = table["sensitive_properties"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    for s in &sensitive {
        if let Some(v) = new.remove(s) {
            state
                .secrets
                .entry(id.clone())
                .or_default()
                .insert(s.clone(), v);
        }
    }
    state.storages.insert(id.clone(), new);
    state.config_version += 1;
    Ok(json!({ "storage": id, "type": ty }))
}

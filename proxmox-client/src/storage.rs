//! Cluster storage configuration (`/storage`, the entries of `storage.cfg`): list, get, create,
//! update, delete for the types Bulwark provisions backup space on.
//!
//! PVE's `POST /storage` schema is the union of every storage type's properties, so the schema
//! alone cannot say what `nfs` accepts; the per-type table (`storage_types` in the schema file,
//! read from pve-storage's plugins) can. The request types here encode that table in Rust:
//! each [`StorageType`] variant carries exactly the options its type takes, the required ones
//! as plain fields. What is cheap to check is checked before sending, with the same rules PVE
//! applies (the `pve-storage-id` format, node names, absolute paths, and the content types the
//! type supports — PVE silently *drops* a valid content type the type does not support, e.g.
//! `backup` on `rbd`, which would leave us with a storage that cannot hold backups).
//!
//! Create, update and delete are synchronous in PVE: they answer `{storage, type}` or `null`,
//! never a task id (NOTES.md A6).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use reqwest::Method;
use serde::Deserialize;
use serde_json::Value;

use crate::client::Client;
use crate::de;
use crate::error::{Error, Result};
use crate::params::{segment, Params};

/// A content type a storage can hold (`pve-storage-content`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ContentType {
    Images,
    Rootdir,
    Vztmpl,
    Iso,
    Backup,
    Snippets,
    Import,
    None,
}

impl ContentType {
    pub const ALL: [ContentType; 8] = [
        ContentType::Images,
        ContentType::Rootdir,
        ContentType::Vztmpl,
        ContentType::Iso,
        ContentType::Backup,
        ContentType::Snippets,
        ContentType::Import,
        ContentType::None,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ContentType::Images => "images",
            ContentType::Rootdir => "rootdir",
            ContentType::Vztmpl => "vztmpl",
            ContentType::Iso => "iso",
            ContentType::Backup => "backup",
            ContentType::Snippets => "snippets",
            ContentType::Import => "import",
            ContentType::None => "none",
        }
    }
}

impl fmt::Display for ContentType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ContentType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        ContentType::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| format!("invalid content type '{s}'"))
    }
}

/// The storage types this client provisions, with the options each takes
/// (`storage_types` in the schema file). Fixed options (set only at creation) are marked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StorageType {
    /// An NFS export, mounted by every node at `path` (default `/mnt/pve/<storage>`).
    Nfs {
        /// Server address (fixed).
        server: String,
        /// Exported path on the server (fixed).
        export: String,
        /// Local mount point (fixed); PVE fills in `/mnt/pve/<storage>`.
        path: Option<String>,
        /// Mount options, e.g. `vers=4.2,soft` (one word, no spaces).
        options: Option<String>,
    },
    /// A CephFS file system, mounted at `path` (default `/mnt/pve/<storage>`).
    CephFs {
        /// Local mount point (fixed); PVE fills in `/mnt/pve/<storage>`.
        path: Option<String>,
        /// The CephFS file system (default: the cluster's first).
        fs_name: Option<String>,
        /// Monitors of an external Ceph cluster.
        monhost: Vec<String>,
        username: Option<String>,
        /// The keyring secret of an external cluster (kept under /etc/pve/priv, never read back).
        keyring: Option<String>,
        /// Sub-directory of the file system to mount.
        subdir: Option<String>,
    },
    /// A Ceph RBD pool. Holds only disk images: PVE's RBD plugin has no `backup` content.
    Rbd {
        pool: Option<String>,
        monhost: Vec<String>,
        username: Option<String>,
        keyring: Option<String>,
        krbd: Option<bool>,
        namespace: Option<String>,
    },
    /// A local directory (or a mount point managed outside PVE).
    Dir {
        /// Absolute path (fixed).
        path: String,
        /// Declares the directory shared between nodes (e.g. a cluster file system).
        shared: Option<bool>,
        /// `yes` or a path: the storage is active only when this is a mount point.
        is_mountpoint: Option<String>,
    },
}

impl StorageType {
    pub fn name(&self) -> &'static str {
        match self {
            StorageType::Nfs { .. } => "nfs",
            StorageType::CephFs { .. } => "cephfs",
            StorageType::Rbd { .. } => "rbd",
            StorageType::Dir { .. } => "dir",
        }
    }

    /// Content types PVE keeps for this type (`content_allowed` in the schema file).
    pub fn allowed_content(&self) -> &'static [ContentType] {
        use ContentType::*;
        match self {
            StorageType::Nfs { .. } => &[Backup, Images, Import, Iso, Rootdir, Snippets, Vztmpl],
            StorageType::CephFs { .. } => &[Backup, Import, Iso, Snippets, Vztmpl],
            StorageType::Rbd { .. } => &[Images, Rootdir],
            StorageType::Dir { .. } => {
                &[Backup, Images, Import, Iso, None, Rootdir, Snippets, Vztmpl]
            }
        }
    }

    fn params(&self, p: Params) -> Params {
        match self {
            StorageType::Nfs {
                server,
                export,
                path,
                options,
            } => p
                .set("server", server)
                .set("export", export)
                .opt("path", path.as_ref())
                .opt("options", options.as_ref()),
            StorageType::CephFs {
                path,
                fs_name,
                monhost,
                username,
                keyring,
                subdir,
            } => p
                .opt("path", path.as_ref())
                .opt("fs-name", fs_name.as_ref())
                .list("monhost", monhost)
                .opt("username", username.as_ref())
                .opt("keyring", keyring.as_ref())
                .opt("subdir", subdir.as_ref()),
            StorageType::Rbd {
                pool,
                monhost,
                username,
                keyring,
                krbd,
                namespace,
            } => p
                .opt("pool", pool.as_ref())
                .list("monhost", monhost)
                .opt("username", username.as_ref())
                .opt("keyring", keyring.as_ref())
                .opt_bool("krbd", *krbd)
                .opt("namespace", namespace.as_ref()),
            StorageType::Dir {
                path,
                shared,
                is_mountpoint,
            } => p
                .set("path", path)
                .opt_bool("shared", *shared)
                .opt("is_mountpoint", is_mountpoint.as_ref()),
        }
    }

    fn validate(&self, errors: &mut BTreeMap<String, String>) {
        let mut path = |name: &str, value: &str| {
            if !is_storage_path(value) {
                errors.insert(
                    name.to_string(),
                    "invalid format - value does not look like a valid absolute path".into(),
                );
            }
        };
        match self {
            StorageType::Nfs {
                server,
                export,
                path: mount,
                options,
            } => {
                path("export", export);
                if let Some(m) = mount {
                    path("path", m);
                }
                if server.trim().is_empty() || server.contains(char::is_whitespace) {
                    errors.insert(
                        "server".into(),
                        "invalid format - value does not look like a valid server name or IP address".into(),
                    );
                }
                if options
                    .as_ref()
                    .is_some_and(|o| o.is_empty() || o.contains(char::is_whitespace))
                {
                    errors.insert("options".into(), "invalid format - invalid options".into());
                }
            }
            StorageType::CephFs {
                path: mount,
                subdir,
                ..
            } => {
                if let Some(m) = mount {
                    path("path", m);
                }
                if let Some(s) = subdir {
                    path("subdir", s);
                }
            }
            StorageType::Rbd { .. } => {}
            StorageType::Dir { path: dir, .. } => path("path", dir),
        }
    }
}

/// `POST /storage`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StorageCreate {
    /// The storage id (`pve-storage-id`: a letter, then letters, digits, `-_.`, at least 2 long).
    pub storage: String,
    pub kind: StorageType,
    /// Empty: the type's default (nfs `images`, cephfs `backup`, dir `images,rootdir`).
    pub content: Vec<ContentType>,
    /// Nodes that may use the storage; empty means all.
    pub nodes: Vec<String>,
    pub disable: Option<bool>,
    /// Retention property string, e.g. `keep-all=1` or `keep-daily=7,keep-weekly=4`.
    pub prune_backups: Option<String>,
    /// `-1` for unlimited.
    pub max_protected_backups: Option<i64>,
}

impl StorageCreate {
    /// A storage for Bulwark's backups: content `backup` only, on the given nodes.
    pub fn backup(storage: impl Into<String>, kind: StorageType, nodes: &[&str]) -> StorageCreate {
        StorageCreate {
            storage: storage.into(),
            kind,
            content: vec![ContentType::Backup],
            nodes: nodes.iter().map(|n| n.to_string()).collect(),
            disable: None,
            prune_backups: None,
            max_protected_backups: None,
        }
    }

    /// Checks what PVE would refuse, before sending.
    pub fn validate(&self) -> Result<()> {
        let mut errors = BTreeMap::new();
        if let Err(e) = validate_storage_id(&self.storage) {
            errors.insert("storage".into(), e);
        }
        self.kind.validate(&mut errors);
        validate_content(&self.kind, &self.content, &mut errors);
        validate_nodes(&self.nodes, &mut errors);
        if matches!(self.kind, StorageType::Rbd { .. }) {
            // Not in the RBD plugin's options: PVE would answer "unexpected property".
            if self.prune_backups.is_some() {
                errors.insert(
                    "prune-backups".into(),
                    "storage type 'rbd' does not take this option".into(),
                );
            }
            if self.max_protected_backups.is_some() {
                errors.insert(
                    "max-protected-backups".into(),
                    "storage type 'rbd' does not take this option".into(),
                );
            }
        }
        if self.max_protected_backups.is_some_and(|m| m < -1) {
            errors.insert(
                "max-protected-backups".into(),
                "value must have a minimum value of -1".into(),
            );
        }
        finish(errors)
    }

    /// The form parameters, in the schema's names and encodings.
    pub fn params(&self) -> Params {
        let p = Params::new()
            .set("storage", &self.storage)
            .set("type", self.kind.name());
        let content: Vec<&str> = self.content.iter().map(|c| c.as_str()).collect();
        self.kind
            .params(p)
            .list("content", &content)
            .list("nodes", &self.nodes)
            .opt_bool("disable", self.disable)
            .opt("prune-backups", self.prune_backups.as_ref())
            .opt("max-protected-backups", self.max_protected_backups)
    }
}

/// `PUT /storage/{storage}`: only the options that may change after creation. `None` leaves an
/// option as it is; `delete` unsets options (e.g. `nodes` to lift a node restriction).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StorageUpdate {
    pub content: Option<Vec<ContentType>>,
    pub nodes: Option<Vec<String>>,
    pub disable: Option<bool>,
    /// nfs/cephfs mount options.
    pub options: Option<String>,
    pub prune_backups: Option<String>,
    pub max_protected_backups: Option<i64>,
    /// Options to unset.
    pub delete: Vec<String>,
    /// The `digest` from a previous GET: the update fails with [`Error::Conflict`] if the
    /// configuration changed since.
    pub digest: Option<String>,
}

impl StorageUpdate {
    pub fn validate(&self) -> Result<()> {
        let mut errors = BTreeMap::new();
        if let Some(content) = &self.content {
            if content.is_empty() {
                errors.insert(
                    "content".into(),
                    "an empty content list is not allowed".into(),
                );
            }
            if content.contains(&ContentType::None) && content.len() > 1 {
                errors.insert(
                    "content".into(),
                    "'none' cannot be combined with other content types".into(),
                );
            }
        }
        if let Some(nodes) = &self.nodes {
            validate_nodes(nodes, &mut errors);
        }
        for d in &self.delete {
            if !is_config_id(d) {
                errors.insert(
                    "delete".into(),
                    format!("invalid format - invalid configuration ID '{d}'"),
                );
            }
        }
        if self.digest.as_ref().is_some_and(|d| d.len() > 64) {
            errors.insert(
                "digest".into(),
                "value may only be 64 characters long".into(),
            );
        }
        if self
            .options
            .as_ref()
            .is_some_and(|o| o.is_empty() || o.contains(char::is_whitespace))
        {
            errors.insert("options".into(), "invalid format - invalid options".into());
        }
        finish(errors)
    }

    pub fn params(&self) -> Params {
        let content: Option<Vec<&str>> = self
            .content
            .as_ref()
            .map(|c| c.iter().map(|c| c.as_str()).collect());
        let mut p = Params::new();
        if let Some(content) = content {
            p = p.list("content", &content);
        }
        if let Some(nodes) = &self.nodes {
            p = p.list("nodes", nodes);
        }
        p.opt_bool("disable", self.disable)
            .opt("options", self.options.as_ref())
            .opt("prune-backups", self.prune_backups.as_ref())
            .opt("max-protected-backups", self.max_protected_backups)
            .list("delete", &self.delete)
            .opt("digest", self.digest.as_ref())
    }
}

/// The answer of create and update.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct StorageChanged {
    pub storage: String,
    #[serde(rename = "type")]
    pub storage_type: String,
    /// Server-generated configuration (e.g. a PBS encryption key).
    #[serde(default)]
    pub config: Option<BTreeMap<String, Value>>,
}

/// A storage configuration entry as `GET /storage[/{storage}]` returns it. Sensitive options
/// (keyring, password) are never returned by PVE.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct StorageConfig {
    pub storage: String,
    #[serde(rename = "type")]
    pub storage_type: String,
    /// SHA-1 of `storage.cfg`; pass it back in [`StorageUpdate::digest`].
    #[serde(default)]
    pub digest: Option<String>,
    #[serde(default, deserialize_with = "de::list")]
    pub content: Vec<String>,
    /// Empty: available on all nodes.
    #[serde(default, deserialize_with = "de::list")]
    pub nodes: Vec<String>,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub server: Option<String>,
    #[serde(default)]
    pub export: Option<String>,
    #[serde(default)]
    pub options: Option<String>,
    #[serde(default)]
    pub pool: Option<String>,
    #[serde(default, rename = "fs-name")]
    pub fs_name: Option<String>,
    #[serde(default, deserialize_with = "de::opt_bool_any")]
    pub disable: Option<bool>,
    #[serde(default, deserialize_with = "de::opt_bool_any")]
    pub shared: Option<bool>,
    #[serde(default, rename = "prune-backups")]
    pub prune_backups: Option<String>,
    #[serde(
        default,
        rename = "max-protected-backups",
        deserialize_with = "de::opt_i64_any"
    )]
    pub max_protected_backups: Option<i64>,
    /// Every other option, as PVE returned it.
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

impl StorageConfig {
    pub fn has_content(&self, c: ContentType) -> bool {
        self.content.iter().any(|x| x == c.as_str())
    }

    pub fn is_disabled(&self) -> bool {
        self.disable.unwrap_or(false)
    }
}

impl Client {
    /// `GET /storage`, optionally only one type. Lists only the storages the caller may audit.
    pub async fn storages(&self, storage_type: Option<&str>) -> Result<Vec<StorageConfig>> {
        self.get("/storage", Params::new().opt("type", storage_type))
            .await
    }

    /// `GET /storage/{storage}`.
    pub async fn storage(&self, id: &str) -> Result<StorageConfig> {
        check_id(id)?;
        self.get(&format!("/storage/{}", segment(id)), Params::new())
            .await
    }

    /// `POST /storage`. Never retried (see `client.rs`).
    pub async fn create_storage(&self, request: &StorageCreate) -> Result<StorageChanged> {
        request.validate()?;
        let data = self
            .call(Method::POST, "/storage", request.params())
            .await?;
        self.decode("/storage", data)
    }

    /// `PUT /storage/{storage}`.
    pub async fn update_storage(&self, id: &str, update: &StorageUpdate) -> Result<StorageChanged> {
        check_id(id)?;
        update.validate()?;
        let path = format!("/storage/{}", segment(id));
        let data = self.call(Method::PUT, &path, update.params()).await?;
        self.decode(&path, data)
    }

    /// `DELETE /storage/{storage}`: removes the configuration entry; data on the share stays.
    pub async fn delete_storage(&self, id: &str) -> Result<()> {
        check_id(id)?;
        self.call(
            Method::DELETE,
            &format!("/storage/{}", segment(id)),
            Params::new(),
        )
        .await?;
        Ok(())
    }
}

fn finish(errors: BTreeMap<String, String>) -> Result<()> {
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Error::Parameter {
            message: "refused by the client before sending".into(),
            errors,
        })
    }
}

pub(crate) fn check_id(id: &str) -> Result<()> {
    validate_storage_id(id).map_err(|e| {
        let mut errors = BTreeMap::new();
        errors.insert("storage".to_string(), e);
        Error::Parameter {
            message: "refused by the client before sending".into(),
            errors,
        }
    })
}

/// `pve-storage-id`: `^[a-z][a-z0-9\-_.]*[a-z0-9]$`, case-insensitive, at least 2 characters
/// (pve-common `JSONSchema.pm` `parse_id`).
pub fn validate_storage_id(id: &str) -> Result<(), String> {
    if id.len() < 2 {
        return Err(format!(
            "invalid format - storage ID '{id}' cannot be shorter than 2 characters"
        ));
    }
    let b = id.as_bytes();
    let ok = b[0].is_ascii_alphabetic()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid format - storage ID '{id}' contains illegal characters"
        ))
    }
}

/// `pve-node`: `^([a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?)$`.
pub fn is_node_name(n: &str) -> bool {
    let b = n.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
}

/// `pve-configid`: `^[a-z][a-z0-9_-]+$`, case-insensitive.
fn is_config_id(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 2
        && b[0].is_ascii_alphabetic()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-'))
}

/// `pve-storage-path`: `^/[^;()]+`.
fn is_storage_path(p: &str) -> bool {
    p.len() >= 2 && p.starts_with('/') && !p.contains([';', '(', ')'])
}

fn validate_nodes(nodes: &[String], errors: &mut BTreeMap<String, String>) {
    if let Some(bad) = nodes.iter().find(|n| !is_node_name(n)) {
        errors.insert(
            "nodes".into(),
            format!("invalid format - value '{bad}' does not look like a valid node name"),
        );
    }
}

fn validate_content(
    kind: &StorageType,
    content: &[ContentType],
    errors: &mut BTreeMap<String, String>,
) {
    if content.contains(&ContentType::None) && content.len() > 1 {
        errors.insert(
            "content".into(),
            "'none' cannot be combined with other content types".into(),
        );
        return;
    }
    let unsupported: Vec<&str> = content
        .iter()
        .filter(|c| !kind.allowed_content().contains(c))
        .map(|c| c.as_str())
        .collect();
    if !unsupported.is_empty() {
        errors.insert(
            "content".into(),
            format!(
                "storage type '{}' does not support content {} (PVE would silently drop it)",
                kind.name(),
                unsupported.join(",")
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nfs() -> StorageType {
        StorageType::Nfs {
            server: "10.0.0.10".into(),
            export: "/srv/backup".into(),
            path: None,
            options: Some("vers=4.2".into()),
        }
    }

    #[test]
    fn storage_ids_follow_pve_storage_id() {
        for ok in ["bk", "bk-ws1", "Bk_1.a", "a0"] {
            assert!(validate_storage_id(ok).is_ok(), "{ok}");
        }
        for bad in [
            "b", "", "1bk", "bk-", "bk ws", "bk/ws", "-bk", "bk.", "bk:1",
        ] {
            assert!(validate_storage_id(bad).is_err(), "{bad}");
        }
        assert!(validate_storage_id("b")
            .unwrap_err()
            .contains("shorter than 2"));
        assert!(validate_storage_id("1bk")
            .unwrap_err()
            .contains("illegal characters"));
    }

    #[test]
    fn nfs_create_is_encoded_like_the_notes_example() {
        // NOTES.md A6: type=nfs&storage=bk-ws1&server=10.0.0.10&export=/srv/backup
        //              &content=backup&nodes=pve1,pve2&options=vers=4.2
        let req = StorageCreate {
            disable: Some(false),
            ..StorageCreate::backup("bk-ws1", nfs(), &["pve1", "pve2"])
        };
        req.validate().unwrap();
        let p = req.params();
        assert_eq!(p.get("type"), Some("nfs"));
        assert_eq!(p.get("storage"), Some("bk-ws1"));
        assert_eq!(p.get("server"), Some("10.0.0.10"));
        assert_eq!(p.get("export"), Some("/srv/backup"));
        assert_eq!(p.get("content"), Some("backup"));
        assert_eq!(p.get("nodes"), Some("pve1,pve2"));
        assert_eq!(p.get("options"), Some("vers=4.2"));
        assert_eq!(p.get("disable"), Some("0"));
        assert_eq!(p.get("path"), None, "PVE fills in /mnt/pve/<storage>");
    }

    #[test]
    fn dir_and_cephfs_params() {
        let dir = StorageCreate::backup(
            "d1",
            StorageType::Dir {
                path: "/srv/bk".into(),
                shared: Some(true),
                is_mountpoint: Some("yes".into()),
            },
            &[],
        );
        let p = dir.params();
        assert_eq!(p.get("path"), Some("/srv/bk"));
        assert_eq!(p.get("shared"), Some("1"));
        assert_eq!(
            p.get("is_mountpoint"),
            Some("yes"),
            "a string in the schema, not a boolean"
        );
        assert_eq!(p.get("nodes"), None);
        let ceph = StorageCreate::backup(
            "cfs-ws1",
            StorageType::CephFs {
                path: None,
                fs_name: Some("cephfs".into()),
                monhost: vec!["10.0.0.1".into(), "10.0.0.2".into()],
                username: None,
                keyring: None,
                subdir: None,
            },
            &["pve1"],
        );
        ceph.validate().unwrap();
        assert_eq!(ceph.params().get("fs-name"), Some("cephfs"));
        assert_eq!(ceph.params().get("monhost"), Some("10.0.0.1,10.0.0.2"));
    }

    #[test]
    fn client_side_refusals_name_the_field() {
        let field = |r: Result<()>| match r {
            Err(Error::Parameter { errors, .. }) => errors.into_keys().collect::<Vec<_>>(),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            field(StorageCreate::backup("x", nfs(), &[]).validate()),
            ["storage"]
        );
        let rbd = StorageType::Rbd {
            pool: Some("rbd".into()),
            monhost: vec![],
            username: None,
            keyring: None,
            krbd: Some(false),
            namespace: None,
        };
        assert_eq!(
            field(StorageCreate::backup("r1", rbd, &[]).validate()),
            ["content"],
            "rbd cannot hold backups"
        );
        assert_eq!(
            field(
                StorageCreate::backup(
                    "d1",
                    StorageType::Dir {
                        path: "srv".into(),
                        shared: None,
                        is_mountpoint: None
                    },
                    &[]
                )
                .validate()
            ),
            ["path"]
        );
        assert_eq!(
            field(StorageCreate::backup("n1", nfs(), &["pve_1"]).validate()),
            ["nodes"]
        );
        let upd = StorageUpdate {
            delete: vec!["nodes".into(), "1x".into()],
            ..Default::default()
        };
        assert_eq!(field(upd.validate()), ["delete"]);
    }

    #[test]
    fn update_params() {
        let upd = StorageUpdate {
            content: Some(vec![ContentType::Backup, ContentType::Iso]),
            disable: Some(true),
            delete: vec!["nodes".into(), "prune-backups".into()],
            digest: Some("0123abcd".into()),
            ..Default::default()
        };
        upd.validate().unwrap();
        let p = upd.params();
        assert_eq!(p.get("content"), Some("backup,iso"));
        assert_eq!(p.get("disable"), Some("1"));
        assert_eq!(p.get("delete"), Some("nodes,prune-backups"));
        assert_eq!(p.get("digest"), Some("0123abcd"));
        assert_eq!(p.get("nodes"), None);
    }

    #[test]
    fn storage_config_decodes_pve_shapes() {
        let json = r#"{"storage":"bk","type":"nfs","digest":"ab12","content":"backup,iso",
            "nodes":"pve1,pve2","server":"10.0.0.10","export":"/srv/backup","path":"/mnt/pve/bk",
            "disable":1,"max-protected-backups":"-1","shared":1,"preallocation":"metadata"}"#;
        let c: StorageConfig = serde_json::from_str(json).unwrap();
        assert_eq!(c.content, ["backup", "iso"]);
        assert!(c.has_content(ContentType::Backup));
        assert_eq!(c.nodes, ["pve1", "pve2"]);
        assert!(c.is_disabled());
        assert_eq!(c.max_protected_backups, Some(-1));
        assert_eq!(c.other["preallocation"], "metadata");
    }

    #[test]
    fn content_table_matches_the_schema() {
        let schema: Value = serde_json::from_str(crate::schema::SCHEMA_JSON).unwrap();
        let kinds = [
            nfs(),
            StorageType::CephFs {
                path: None,
                fs_name: None,
                monhost: vec![],
                username: None,
                keyring: None,
                subdir: None,
            },
            StorageType::Rbd {
                pool: None,
                monhost: vec![],
                username: None,
                keyring: None,
                krbd: None,
                namespace: None,
            },
            StorageType::Dir {
                path: "/x".into(),
                shared: None,
                is_mountpoint: None,
            },
        ];
        for kind in kinds {
            let table = &schema["storage_types"][kind.name()];
            let mut want: Vec<&str> = table["content_allowed"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap())
                .collect();
            want.sort();
            let mut have: Vec<&str> = kind.allowed_content().iter().map(|c| c.as_str()).collect();
            have.sort();
            assert_eq!(have, want, "{}", kind.name());
            // Every option we send exists for the type.
            let is_rbd = kind.name() == "rbd";
            let full = StorageCreate {
                disable: Some(true),
                prune_backups: (!is_rbd).then(|| "keep-all=1".to_string()),
                max_protected_backups: (!is_rbd).then_some(-1),
                content: vec![],
                ..StorageCreate::backup("ab", kind.clone(), &["pve1"])
            };
            for (name, _) in full.params().pairs() {
                if name == "storage" || name == "type" {
                    continue;
                }
                assert!(
                    table["options"].get(name).is_some(),
                    "{} does not take {name}",
                    kind.name()
                );
            }
        }
    }
}

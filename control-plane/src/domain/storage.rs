//! Backup storages: storage of one workspace on a Proxmox VE cluster (plan `dedicated` only).
//! The record names the storage inside the workspace (`id`); on the cluster it is
//! `bwk-<workspace>-<id>` ([`pve_storage_id`]), restricted to the chosen nodes, content `backup`.
//!
//! Status: `pending` while it is being created on the cluster, `active` once the cluster reports
//! it active, `error` when creation failed or a later sync finds it inactive or the cluster
//! unreachable (back to `active` when a sync sees it active again).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{check_slug, Violation};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    /// An NFS export (`server`, `export`).
    Nfs,
    /// A CephFS file system of the cluster's Ceph (`fs_name`), or of an external one (`monhost`).
    Cephfs,
    /// A directory on the nodes (`path`): a PVE `dir` storage.
    Local,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum StorageState {
    Pending,
    Active,
    Error,
}

impl StorageState {
    pub fn as_str(self) -> &'static str {
        match self {
            StorageState::Pending => "pending",
            StorageState::Active => "active",
            StorageState::Error => "error",
        }
    }
}

/// What a client sends to create a backup storage.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StorageBody {
    /// Unique inside the workspace; lowercase letters, digits, `-`, `_`, `.`.
    pub id: String,
    /// A registered Proxmox cluster.
    pub cluster_id: String,
    #[serde(rename = "type")]
    pub kind: StorageKind,
    /// nfs: the NFS server (name or address).
    #[serde(default)]
    pub server: Option<String>,
    /// nfs: the exported path.
    #[serde(default)]
    pub export: Option<String>,
    /// cephfs: the file system (default: the cluster's first).
    #[serde(default)]
    pub fs_name: Option<String>,
    /// cephfs: monitors of an external Ceph cluster.
    #[serde(default)]
    pub monhost: Vec<String>,
    /// local: the directory on each node.
    #[serde(default)]
    pub path: Option<String>,
    /// Nodes that may use the storage (at least one); the storage is restricted to them.
    pub nodes: Vec<String>,
    /// Space set aside for this workspace on the storage.
    pub capacity_bytes: i64,
}

/// What a client sends to change a backup storage: only these may change after creation.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StorageUpdateBody {
    #[serde(default)]
    pub capacity_bytes: Option<i64>,
    #[serde(default)]
    pub nodes: Option<Vec<String>>,
}

/// The last status read from the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StorageUsage {
    pub total_bytes: u64,
    pub used_bytes: u64,
    pub avail_bytes: u64,
    pub active: bool,
    /// The node the status was read on (the first of `nodes`).
    pub node: String,
    pub synced_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BackupStorage {
    pub id: String,
    pub workspace_id: String,
    pub cluster_id: String,
    /// The storage id on the cluster.
    pub pve_storage: String,
    #[serde(rename = "type")]
    pub kind: StorageKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fs_name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub monhost: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    pub nodes: Vec<String>,
    pub capacity_bytes: u64,
    pub status: StorageState,
    /// Whether the cluster accepted the storage's creation (so deleting the record also
    /// deletes it there; a storage whose creation failed is never removed from the cluster —
    /// the id might belong to someone else's storage).
    #[serde(default)]
    pub provisioned: bool,
    /// Whether the storage's repository exists: set by the first job on the storage that
    /// succeeded or reported creating it. Until then jobs on it carry the workspace's recovery
    /// key, so the repository that job creates gets a recovery slot.
    #[serde(default)]
    pub repository_exists: bool,
    /// Why the status is `error` (the cluster's message).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<StorageUsage>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl BackupStorage {
    /// Where agents find the storage's repository, as jobs carry it. The record was validated
    /// at creation, so every type has the fields it needs.
    pub fn target(&self) -> bulwark_core::api::StorageTarget {
        use bulwark_core::api::{StorageAccess, StorageTarget};
        let access = match self.kind {
            StorageKind::Nfs => StorageAccess::Nfs {
                server: self.server.clone().unwrap_or_default(),
                export: self.export.clone().unwrap_or_default(),
            },
            StorageKind::Cephfs => StorageAccess::Cephfs {
                fs_name: self.fs_name.clone(),
            },
            StorageKind::Local => StorageAccess::Local {
                path: self.path.clone().unwrap_or_default(),
            },
        };
        StorageTarget {
            storage_id: self.id.clone(),
            pve_storage: self.pve_storage.clone(),
            access,
        }
    }
}

/// Longest storage id we create on a cluster. PVE's `pve-storage-id` format sets no maximum,
/// but the id becomes a mount point (`/mnt/pve/<id>`) and a section header in `storage.cfg`;
/// 63 keeps it a single DNS-label-sized word like our own ids.
pub const MAX_PVE_STORAGE_ID: usize = 63;
/// Prefix of every storage the control plane creates, so an admin tells them apart on the
/// cluster.
pub const PVE_PREFIX: &str = "bwk";

/// `bwk<n>-<workspace>-<id>`, where `<n>` is the length of the workspace id, checked against
/// PVE's `pve-storage-id` format and our length limit.
///
/// The length makes the name injective: ids may contain `-`, so a plain `bwk-<ws>-<id>` gave
/// workspace `wsa` with storage `x-main` and workspace `wsa-x` with storage `main` the same
/// cluster storage — one tenant could read, change or pre-empt another's. With the length, the
/// workspace part is read back exactly and the rest is the storage id. Names made before this
/// rule (`bwk-…`) stay as stored in each record; they cannot collide with new ones, whose fourth
/// character is a digit.
pub fn pve_storage_id(workspace: &str, id: &str) -> Result<String, String> {
    let pve = format!("{PVE_PREFIX}{}-{workspace}-{id}", workspace.len());
    if pve.len() > MAX_PVE_STORAGE_ID {
        let fixed = pve.len() - workspace.len() - id.len();
        return Err(format!(
            "the storage would be '{pve}' on the cluster, {} characters; workspace id and storage id together may have at most {} characters",
            pve.len(),
            MAX_PVE_STORAGE_ID - fixed
        ));
    }
    proxmox_client::storage::validate_storage_id(&pve).map_err(|e| {
        format!("the storage would be '{pve}' on the cluster, which Proxmox refuses ({e}); end the id with a letter or digit")
    })?;
    Ok(pve)
}

fn check_nodes(nodes: &[String], problems: &mut Vec<Violation>) {
    if nodes.is_empty() {
        problems.push(Violation::new(
            "nodes",
            "name at least one cluster node the storage is restricted to",
        ));
    }
    if nodes.len() > 64 {
        problems.push(Violation::new("nodes", "at most 64 nodes"));
    }
    for (i, n) in nodes.iter().enumerate() {
        if !proxmox_client::storage::is_node_name(n) {
            problems.push(Violation::new(
                format!("nodes[{i}]"),
                format!(
                    "'{}' is not a node name (letters, digits and '-')",
                    n.escape_debug()
                ),
            ));
        } else if nodes[..i].contains(n) {
            problems.push(Violation::new(
                format!("nodes[{i}]"),
                format!("'{n}' is listed twice"),
            ));
        }
    }
}

fn check_capacity(capacity: i64, problems: &mut Vec<Violation>) {
    if capacity <= 0 {
        problems.push(Violation::new(
            "capacity_bytes",
            format!("must be positive (got {capacity})"),
        ));
    }
}

/// `pve-storage-path`: absolute, without `;`, `(` or `)`.
fn is_storage_path(p: &str) -> bool {
    p.len() >= 2
        && p.starts_with('/')
        && !p.contains([';', '(', ')'])
        && !p.contains(char::is_whitespace)
        && super::text_problem(p, 4096).is_none()
}

impl StorageBody {
    /// Checks every field for the storage type and builds the `pending` record.
    pub fn into_storage(
        self,
        workspace: &str,
        now: DateTime<Utc>,
    ) -> Result<BackupStorage, Vec<Violation>> {
        let mut problems = Vec::new();
        let mut pve_storage = String::new();
        match check_slug(&self.id) {
            Err(e) => problems.push(Violation::new("id", e)),
            Ok(()) => match pve_storage_id(workspace, &self.id) {
                Ok(p) => pve_storage = p,
                Err(e) => problems.push(Violation::new("id", e)),
            },
        }
        if let Err(e) = check_slug(&self.cluster_id) {
            problems.push(Violation::new("cluster_id", e));
        }
        let kind_name = match self.kind {
            StorageKind::Nfs => "nfs",
            StorageKind::Cephfs => "cephfs",
            StorageKind::Local => "local",
        };
        let mut not_for = |field: &str, given: bool| {
            if given {
                problems.push(Violation::new(
                    field,
                    format!("does not apply to type '{kind_name}'"),
                ));
            }
        };
        match self.kind {
            StorageKind::Nfs => {
                not_for("fs_name", self.fs_name.is_some());
                not_for("monhost", !self.monhost.is_empty());
                not_for("path", self.path.is_some());
            }
            StorageKind::Cephfs => {
                not_for("server", self.server.is_some());
                not_for("export", self.export.is_some());
                not_for("path", self.path.is_some());
            }
            StorageKind::Local => {
                not_for("server", self.server.is_some());
                not_for("export", self.export.is_some());
                not_for("fs_name", self.fs_name.is_some());
                not_for("monhost", !self.monhost.is_empty());
            }
        }
        match self.kind {
            StorageKind::Nfs => {
                match &self.server {
                    None => problems.push(Violation::new("server", "is required for type 'nfs'")),
                    Some(s)
                        if s.is_empty()
                            || s.len() > 253
                            || !s
                                .bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b)) =>
                    {
                        problems.push(Violation::new(
                            "server",
                            format!("'{}' is not a server name or IP address", s.escape_debug()),
                        ))
                    }
                    Some(_) => {}
                }
                match &self.export {
                    None => problems.push(Violation::new("export", "is required for type 'nfs'")),
                    Some(e) if !is_storage_path(e) => problems.push(Violation::new(
                        "export",
                        format!("'{}' is not an absolute path", e.escape_debug()),
                    )),
                    Some(_) => {}
                }
            }
            StorageKind::Cephfs => {
                if let Some(f) = &self.fs_name {
                    if f.is_empty()
                        || f.len() > 128
                        || !f
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                    {
                        problems.push(Violation::new(
                            "fs_name",
                            format!("'{}' is not a CephFS name", f.escape_debug()),
                        ));
                    }
                }
                for (i, m) in self.monhost.iter().enumerate() {
                    if m.is_empty()
                        || !m
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
                    {
                        problems.push(Violation::new(
                            format!("monhost[{i}]"),
                            format!("'{}' is not a monitor address", m.escape_debug()),
                        ));
                    }
                }
            }
            StorageKind::Local => match &self.path {
                None => problems.push(Violation::new("path", "is required for type 'local'")),
                Some(p) if !is_storage_path(p) => problems.push(Violation::new(
                    "path",
                    format!("'{}' is not an absolute path", p.escape_debug()),
                )),
                Some(_) => {}
            },
        }
        check_nodes(&self.nodes, &mut problems);
        check_capacity(self.capacity_bytes, &mut problems);
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(BackupStorage {
            id: self.id,
            workspace_id: workspace.to_string(),
            cluster_id: self.cluster_id,
            pve_storage,
            kind: self.kind,
            server: self.server,
            export: self.export,
            fs_name: self.fs_name,
            monhost: self.monhost,
            path: self.path,
            nodes: self.nodes,
            capacity_bytes: self.capacity_bytes as u64,
            status: StorageState::Pending,
            provisioned: false,
            repository_exists: false,
            status_message: None,
            usage: None,
            created_at: now,
            updated_at: now,
        })
    }
}

impl StorageUpdateBody {
    /// The changed record.
    pub fn apply(
        self,
        existing: &BackupStorage,
        now: DateTime<Utc>,
    ) -> Result<BackupStorage, Vec<Violation>> {
        let mut problems = Vec::new();
        if let Some(c) = self.capacity_bytes {
            check_capacity(c, &mut problems);
        }
        if let Some(n) = &self.nodes {
            check_nodes(n, &mut problems);
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let mut out = existing.clone();
        if let Some(c) = self.capacity_bytes {
            out.capacity_bytes = c as u64;
        }
        if let Some(n) = self.nodes {
            out.nodes = n;
        }
        out.updated_at = now;
        Ok(out)
    }
}

impl BackupStorage {
    /// The storage as `proxmox-client` creates it.
    pub fn pve_type(&self) -> proxmox_client::StorageType {
        use proxmox_client::StorageType;
        match self.kind {
            StorageKind::Nfs => StorageType::Nfs {
                server: self.server.clone().unwrap_or_default(),
                export: self.export.clone().unwrap_or_default(),
                path: None,
                options: None,
            },
            StorageKind::Cephfs => StorageType::CephFs {
                path: None,
                fs_name: self.fs_name.clone(),
                monhost: self.monhost.clone(),
                username: None,
                keyring: None,
                subdir: None,
            },
            StorageKind::Local => StorageType::Dir {
                path: self.path.clone().unwrap_or_default(),
                shared: None,
                is_mountpoint: None,
            },
        }
    }

    /// The node whose status view the control plane reads.
    pub fn status_node(&self) -> &str {
        self.nodes.first().map_or("", String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nfs() -> StorageBody {
        StorageBody {
            id: "main".into(),
            cluster_id: "pve-east".into(),
            kind: StorageKind::Nfs,
            server: Some("10.0.0.10".into()),
            export: Some("/srv/backup".into()),
            fs_name: None,
            monhost: vec![],
            path: None,
            nodes: vec!["pve1".into()],
            capacity_bytes: 1 << 30,
        }
    }

    #[test]
    fn pve_ids_are_derived_and_checked() {
        assert_eq!(pve_storage_id("acme", "main").unwrap(), "bwk4-acme-main");
        assert_eq!(pve_storage_id("a.b", "c_d").unwrap(), "bwk3-a.b-c_d");
        let e = pve_storage_id("acme", "main-").unwrap_err();
        assert!(e.contains("bwk4-acme-main-"), "{e}");
        let e = pve_storage_id(&"w".repeat(40), &"s".repeat(20)).unwrap_err();
        assert!(e.contains("at most 56"), "{e}");
        assert!(pve_storage_id(&"w".repeat(40), &"s".repeat(16)).is_ok());
    }

    /// Regression: `wsa` + `x-main` and `wsa-x` + `main` both became `bwk-wsa-x-main`.
    #[test]
    fn pve_ids_of_different_workspaces_never_collide() {
        assert_ne!(
            pve_storage_id("wsa", "x-main").unwrap(),
            pve_storage_id("wsa-x", "main").unwrap()
        );
        // Every split of the same characters into (workspace, storage) gives its own name.
        let joined = "a-b-c-d.e_f-g";
        let names: std::collections::HashSet<String> = joined
            .match_indices(['-', '.', '_'])
            .map(|(i, _)| pve_storage_id(&joined[..i], &joined[i + 1..]).unwrap())
            .collect();
        assert_eq!(names.len(), joined.matches(['-', '.', '_']).count());
        // The workspace is read back from the name alone.
        let name = pve_storage_id("wsa-x", "main").unwrap();
        let (len, rest) = name["bwk".len()..].split_once('-').unwrap();
        let len: usize = len.parse().unwrap();
        assert_eq!((&rest[..len], &rest[len + 1..]), ("wsa-x", "main"));
    }

    #[test]
    fn bodies_are_checked_per_type() {
        let s = nfs().into_storage("acme", Utc::now()).unwrap();
        assert_eq!(
            (s.pve_storage.as_str(), s.status),
            ("bwk4-acme-main", StorageState::Pending)
        );
        let mut b = nfs();
        b.server = None;
        b.path = Some("/x".into());
        b.nodes = vec!["pve1".into(), "bad node".into(), "pve1".into()];
        b.capacity_bytes = 0;
        let paths: Vec<String> = b
            .into_storage("acme", Utc::now())
            .unwrap_err()
            .into_iter()
            .map(|v| v.path)
            .collect();
        assert_eq!(
            paths,
            ["path", "server", "nodes[1]", "nodes[2]", "capacity_bytes"]
        );
        let mut b = nfs();
        b.kind = StorageKind::Local;
        b.server = None;
        b.export = None;
        b.path = Some("relative".into());
        b.nodes = vec![];
        let paths: Vec<String> = b
            .into_storage("acme", Utc::now())
            .unwrap_err()
            .into_iter()
            .map(|v| v.path)
            .collect();
        assert_eq!(paths, ["path", "nodes"]);
        let mut b = nfs();
        b.kind = StorageKind::Cephfs;
        b.server = None;
        b.export = None;
        b.fs_name = Some("cephfs".into());
        let s = b.into_storage("acme", Utc::now()).unwrap();
        assert_eq!(s.pve_type().name(), "cephfs");
    }

    #[test]
    fn updates_change_only_capacity_and_nodes() {
        let s = nfs().into_storage("acme", Utc::now()).unwrap();
        let u = StorageUpdateBody {
            capacity_bytes: Some(5),
            nodes: Some(vec!["pve2".into()]),
        }
        .apply(&s, Utc::now())
        .unwrap();
        assert_eq!(
            (u.capacity_bytes, u.nodes.clone()),
            (5, vec!["pve2".to_string()])
        );
        assert_eq!(u.export, s.export);
        let e = StorageUpdateBody {
            capacity_bytes: Some(-1),
            nodes: Some(vec![]),
        }
        .apply(&s, Utc::now())
        .unwrap_err();
        assert_eq!(e.len(), 2);
    }
}

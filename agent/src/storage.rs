//! Where a job's repository is on this host.
//!
//! The control plane names the storage it provisioned ([`StorageTarget`]); this module turns
//! that into a repository location. An NFS storage is reached by the agent's own userspace NFS
//! client (`bulwark-nfs`), so nothing needs mounting — the only way in from an unprivileged LXC
//! container. Where the operator has mounted a storage (the kernel NFS client is faster; CephFS
//! has no userspace path here), a `[[storage]]` entry in agent.toml maps it to that mount point
//! and the repository is a directory under it. Either way the repository is the same
//! `bulwark/<pve-storage>` directory of the storage, so agents that mount and agents that do
//! not share one repository.

use std::path::{Path, PathBuf};

use bulwark_core::api::{StorageAccess, StorageTarget};
use serde::Deserialize;

/// A `[[storage]]` entry of agent.toml.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// The storage's id at the control plane (`GET /api/v1/storages`).
    pub id: String,
    /// Where the storage is mounted on this host; the repository is `bulwark/<pve-storage>`
    /// under it. Without it, NFS storages are reached by the built-in client and CephFS and
    /// local storages at `/mnt/pve/<pve-storage>`, where Proxmox nodes mount them.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Built-in NFS client: the server's NFS port when it is not 2049.
    #[serde(default)]
    pub nfs_port: Option<u16>,
    /// Built-in NFS client (NFSv3): the mount daemon's port, instead of asking the portmapper.
    #[serde(default)]
    pub mount_port: Option<u16>,
    /// Built-in NFS client: `3` or `4` (4.1) to insist on one; by default 4.1, then 3.
    #[serde(default)]
    pub nfs_version: Option<String>,
    /// Built-in NFS client: how long, in seconds, a call that fails because the server is
    /// unreachable, restarting or busy is tried again before the job fails (by default core's
    /// budget, 120 s); more for a server that fails over slowly.
    #[serde(default)]
    pub nfs_retry_secs: Option<u32>,
}

impl StorageConfig {
    /// Problems with the entry, for the configuration check at start-up.
    pub fn check(&self) -> Result<(), String> {
        if let Some(v) = &self.nfs_version {
            if !matches!(v.as_str(), "3" | "4" | "4.1" | "4.0") {
                return Err(format!("nfs_version = {v:?}: give 3, 4 (4.1) or 4.0"));
            }
        }
        if self.path.as_deref().is_some_and(|p| !p.is_absolute()) {
            return Err("path must be absolute (the storage's mount point)".into());
        }
        if self.nfs_port == Some(0) || self.mount_port == Some(0) {
            return Err("ports must be 1-65535".into());
        }
        Ok(())
    }
}

/// The repository location of `target` on this host: a directory or an `nfs://` URL.
pub fn location_for(target: &StorageTarget, configured: &[StorageConfig]) -> String {
    let entry = configured.iter().find(|c| c.id == target.storage_id);
    let dir = target.repository_dir();
    if let Some(mount) = entry.and_then(|c| c.path.as_deref()) {
        return under(mount, &dir);
    }
    match &target.access {
        StorageAccess::Nfs { server, export } => {
            let host = if server.contains(':') && !server.starts_with('[') {
                format!("[{server}]")
            } else {
                server.clone()
            };
            let mut url = format!("nfs://{host}/{}/{dir}", export.trim_matches('/'));
            let mut query = Vec::new();
            if let Some(c) = entry {
                if let Some(v) = &c.nfs_version {
                    query.push(format!("version={v}"));
                }
                if let Some(p) = c.nfs_port {
                    query.push(format!("nfsport={p}"));
                }
                if let Some(p) = c.mount_port {
                    query.push(format!("mountport={p}"));
                }
                if let Some(s) = c.nfs_retry_secs {
                    query.push(format!("retrysecs={s}"));
                }
            }
            if !query.is_empty() {
                url.push('?');
                url.push_str(&query.join("&"));
            }
            url
        }
        StorageAccess::Cephfs { .. } | StorageAccess::Local { .. } => {
            under(&Path::new("/mnt/pve").join(&target.pve_storage), &dir)
        }
    }
}

fn under(mount: &Path, dir: &str) -> String {
    mount.join(dir).to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nfs() -> StorageTarget {
        StorageTarget {
            storage_id: "main".into(),
            pve_storage: "bwk4-acme-main".into(),
            access: StorageAccess::Nfs {
                server: "10.0.0.5".into(),
                export: "/srv/backups/".into(),
            },
        }
    }

    #[test]
    fn nfs_storages_use_the_built_in_client_unless_mounted() {
        assert_eq!(
            location_for(&nfs(), &[]),
            "nfs://10.0.0.5/srv/backups/bulwark/bwk4-acme-main"
        );
        let ports = StorageConfig {
            id: "main".into(),
            path: None,
            nfs_port: Some(20049),
            mount_port: Some(20048),
            nfs_version: Some("3".into()),
            nfs_retry_secs: None,
        };
        assert_eq!(
            location_for(&nfs(), std::slice::from_ref(&ports)),
            "nfs://10.0.0.5/srv/backups/bulwark/bwk4-acme-main?version=3&nfsport=20049&mountport=20048"
        );
        let patient = StorageConfig {
            nfs_retry_secs: Some(600),
            ..ports.clone()
        };
        assert_eq!(
            location_for(&nfs(), &[patient]),
            "nfs://10.0.0.5/srv/backups/bulwark/bwk4-acme-main?version=3&nfsport=20049&mountport=20048&retrysecs=600"
        );
        let mounted = StorageConfig {
            path: Some("/mnt/backups".into()),
            ..ports
        };
        assert_eq!(
            location_for(&nfs(), &[mounted]),
            "/mnt/backups/bulwark/bwk4-acme-main"
        );
    }

    #[test]
    fn cephfs_is_reached_through_its_mount_point() {
        let ceph = StorageTarget {
            access: StorageAccess::Cephfs { fs_name: None },
            ..nfs()
        };
        assert_eq!(
            location_for(&ceph, &[]),
            "/mnt/pve/bwk4-acme-main/bulwark/bwk4-acme-main"
        );
        let bad = StorageConfig {
            id: "x".into(),
            path: Some("relative".into()),
            nfs_port: None,
            mount_port: None,
            nfs_version: Some("5".into()),
            nfs_retry_secs: None,
        };
        assert!(bad.check().unwrap_err().contains("nfs_version"));
    }
}

//! Proxmox clusters: `proxmox_clusters` (id → ProxmoxCluster, token secret sealed). Audit
//! entries carry the secret-free view.

use redb::{ReadTransaction, ReadableTable};

use super::{get_json, put_json, storages, Records, Result, StoreError, Tx};
use crate::domain::cluster::ProxmoxCluster;

pub const TABLE: Records = Records::new("proxmox_clusters");

pub fn get(rtx: &ReadTransaction, id: &str) -> Result<Option<ProxmoxCluster>> {
    get_json(&rtx.open_table(TABLE)?, "proxmox cluster", id)
}

/// Every cluster, in id order (a platform has a handful).
pub fn list(rtx: &ReadTransaction) -> Result<Vec<ProxmoxCluster>> {
    let table = rtx.open_table(TABLE)?;
    let mut out = Vec::new();
    for item in table.iter()? {
        let (k, v) = item?;
        out.push(super::decode("proxmox cluster", k.value(), v.value())?);
    }
    Ok(out)
}

impl Tx {
    pub fn cluster(&self, id: &str) -> Result<Option<ProxmoxCluster>> {
        get_json(&self.txn.open_table(TABLE)?, "proxmox cluster", id)
    }

    pub fn create_cluster(&mut self, c: &ProxmoxCluster) -> Result<()> {
        if self.cluster(&c.id)?.is_some() {
            return Err(StoreError::Conflict(format!(
                "a Proxmox cluster with id '{}' is already registered; choose another id",
                c.id
            )));
        }
        put_json(&mut self.txn.open_table(TABLE)?, &c.id, c)?;
        self.audit(
            "proxmox_cluster.create",
            "proxmox_cluster",
            &c.id,
            None,
            None,
            None::<&()>,
            Some(&c.view()),
        )?;
        Ok(())
    }

    pub fn update_cluster(&mut self, c: &ProxmoxCluster) -> Result<ProxmoxCluster> {
        let before = self.cluster(&c.id)?.ok_or_else(|| StoreError::NotFound {
            kind: "proxmox cluster",
            id: c.id.clone(),
        })?;
        put_json(&mut self.txn.open_table(TABLE)?, &c.id, c)?;
        self.audit(
            "proxmox_cluster.update",
            "proxmox_cluster",
            &c.id,
            None,
            None,
            Some(&before.view()),
            Some(&c.view()),
        )?;
        Ok(before)
    }

    /// Refused while backup storages live on the cluster.
    pub fn delete_cluster(&mut self, id: &str) -> Result<ProxmoxCluster> {
        let before = self.cluster(id)?.ok_or_else(|| StoreError::NotFound {
            kind: "proxmox cluster",
            id: id.to_string(),
        })?;
        let used_by = storages::keys_on_cluster(&self.txn.open_table(storages::BY_CLUSTER)?, id)?;
        if !used_by.is_empty() {
            return Err(StoreError::Conflict(format!(
                "Proxmox cluster '{id}' still holds {} backup storage(s) ({}); delete them first",
                used_by.len(),
                used_by.join(", ")
            )));
        }
        self.txn.open_table(TABLE)?.remove(id)?;
        self.audit(
            "proxmox_cluster.delete",
            "proxmox_cluster",
            id,
            None,
            None,
            Some(&before.view()),
            None::<&()>,
        )?;
        Ok(before)
    }
}

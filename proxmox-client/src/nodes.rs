//! What the cluster and its nodes report: `version`, the node list, `cluster/resources`, and per
//! node the storages' live status and content.
//!
//! Capacity comes from two places with different freshness (NOTES.md A7):
//! `GET /nodes/{node}/storage/{storage}/status` runs `df` on that node now (2 s timeout), while
//! `GET /cluster/resources?type=storage` is the cluster's periodic status broadcast, one entry per
//! (node, storage), cheap to read for the whole cluster at once. A storage that is disabled,
//! restricted to other nodes, or not mounted answers `active: 0` with all sizes 0 rather than an
//! error; only an unknown id is an error.

use serde::Deserialize;

use crate::client::Client;
use crate::de;
use crate::error::Result;
use crate::params::{segment, Params};
use crate::storage::{check_id, ContentType};

/// `GET /version`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Version {
    pub version: String,
    pub release: String,
    pub repoid: String,
    #[serde(default)]
    pub console: Option<String>,
}

/// One entry of `GET /nodes`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Node {
    pub node: String,
    /// `online`, `offline` or `unknown`.
    pub status: String,
    /// The node certificate's SHA-256 fingerprint (`AA:BB:…`), for pinning.
    #[serde(default)]
    pub ssl_fingerprint: Option<String>,
    #[serde(default, deserialize_with = "de::opt_f64_any")]
    pub cpu: Option<f64>,
    #[serde(default, deserialize_with = "de::opt_u64_any")]
    pub maxcpu: Option<u64>,
    #[serde(default, deserialize_with = "de::opt_u64_any")]
    pub mem: Option<u64>,
    #[serde(default, deserialize_with = "de::opt_u64_any")]
    pub maxmem: Option<u64>,
    #[serde(default, deserialize_with = "de::opt_u64_any")]
    pub uptime: Option<u64>,
}

impl Node {
    pub fn is_online(&self) -> bool {
        self.status == "online"
    }
}

/// The `type` filter of `GET /cluster/resources`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResourceType {
    Vm,
    Storage,
    Node,
    Sdn,
}

impl ResourceType {
    fn as_str(self) -> &'static str {
        match self {
            ResourceType::Vm => "vm",
            ResourceType::Storage => "storage",
            ResourceType::Node => "node",
            ResourceType::Sdn => "sdn",
        }
    }
}

/// One entry of `GET /cluster/resources` (the fields a storage or node entry carries).
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct ClusterResource {
    /// `storage/<node>/<storage>`, `node/<node>`, `qemu/<vmid>`…
    pub id: String,
    #[serde(rename = "type")]
    pub resource_type: String,
    #[serde(default)]
    pub node: Option<String>,
    #[serde(default)]
    pub storage: Option<String>,
    /// Used bytes.
    #[serde(default, deserialize_with = "de::opt_u64_any")]
    pub disk: Option<u64>,
    /// Size in bytes.
    #[serde(default, deserialize_with = "de::opt_u64_any")]
    pub maxdisk: Option<u64>,
    /// For storage: `available` or `unknown`.
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default, deserialize_with = "de::list")]
    pub content: Vec<String>,
    /// The storage type (`nfs`, `dir`…).
    #[serde(default)]
    pub plugintype: Option<String>,
    #[serde(default, deserialize_with = "de::opt_bool_any")]
    pub shared: Option<bool>,
}

/// `GET /nodes/{node}/storage/{storage}/status`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct StorageStatus {
    #[serde(rename = "type")]
    pub storage_type: String,
    #[serde(default, deserialize_with = "de::list")]
    pub content: Vec<String>,
    #[serde(default, deserialize_with = "de::bool_or_false")]
    pub active: bool,
    #[serde(default, deserialize_with = "de::bool_or_false")]
    pub enabled: bool,
    #[serde(default, deserialize_with = "de::bool_or_false")]
    pub shared: bool,
    #[serde(default, deserialize_with = "de::u64_or_zero")]
    pub total: u64,
    #[serde(default, deserialize_with = "de::u64_or_zero")]
    pub used: u64,
    #[serde(default, deserialize_with = "de::u64_or_zero")]
    pub avail: u64,
}

/// One entry of `GET /nodes/{node}/storage`: the status plus the id.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct NodeStorage {
    pub storage: String,
    #[serde(flatten)]
    pub status: StorageStatus,
    #[serde(default, deserialize_with = "de::opt_f64_any")]
    pub used_fraction: Option<f64>,
}

/// One volume of `GET /nodes/{node}/storage/{storage}/content`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct ContentItem {
    /// `<storage>:<type>/<name>`, e.g. `bk:backup/vzdump-qemu-100-….vma.zst`.
    pub volid: String,
    pub format: String,
    #[serde(deserialize_with = "de::u64_any")]
    pub size: u64,
    /// The content type of the volume (`backup`, `images`…).
    #[serde(default)]
    pub content: Option<String>,
    #[serde(default, deserialize_with = "de::opt_u64_any")]
    pub ctime: Option<u64>,
    #[serde(default, deserialize_with = "de::opt_u64_any")]
    pub vmid: Option<u64>,
    #[serde(default, deserialize_with = "de::opt_u64_any")]
    pub used: Option<u64>,
    #[serde(default)]
    pub notes: Option<String>,
    #[serde(default, deserialize_with = "de::opt_bool_any")]
    pub protected: Option<bool>,
}

impl Client {
    /// `GET /version`.
    pub async fn version(&self) -> Result<Version> {
        self.get("/version", Params::new()).await
    }

    /// `GET /nodes`.
    pub async fn nodes(&self) -> Result<Vec<Node>> {
        self.get("/nodes", Params::new()).await
    }

    /// `GET /cluster/resources[?type=…]`.
    pub async fn cluster_resources(
        &self,
        filter: Option<ResourceType>,
    ) -> Result<Vec<ClusterResource>> {
        self.get(
            "/cluster/resources",
            Params::new().opt("type", filter.map(ResourceType::as_str)),
        )
        .await
    }

    /// `GET /cluster/resources?type=storage`: every (node, storage) pair of the cluster.
    pub async fn storage_resources(&self) -> Result<Vec<ClusterResource>> {
        self.cluster_resources(Some(ResourceType::Storage)).await
    }

    /// `GET /nodes/{node}/storage[?content=…&enabled=1]`.
    pub async fn node_storages(
        &self,
        node: &str,
        content: Option<ContentType>,
        enabled_only: bool,
    ) -> Result<Vec<NodeStorage>> {
        let mut params = Params::new().opt("content", content.map(ContentType::as_str));
        if enabled_only {
            params = params.bool("enabled", true);
        }
        self.get(&format!("/nodes/{}/storage", segment(node)), params)
            .await
    }

    /// `GET /nodes/{node}/storage/{storage}/status`.
    pub async fn storage_status(&self, node: &str, storage: &str) -> Result<StorageStatus> {
        check_id(storage)?;
        self.get(
            &format!(
                "/nodes/{}/storage/{}/status",
                segment(node),
                segment(storage)
            ),
            Params::new(),
        )
        .await
    }

    /// `GET /nodes/{node}/storage/{storage}/content[?content=…]`.
    pub async fn storage_content(
        &self,
        node: &str,
        storage: &str,
        content: Option<ContentType>,
    ) -> Result<Vec<ContentItem>> {
        check_id(storage)?;
        self.get(
            &format!(
                "/nodes/{}/storage/{}/content",
                segment(node),
                segment(storage)
            ),
            Params::new().opt("content", content.map(ContentType::as_str)),
        )
        .await
    }
}

//! `proxmox-client`: a typed async client for the parts of the Proxmox VE API Bulwark uses —
//! provisioning backup storage on a customer's cluster and watching its capacity.
//!
//! It conforms to PVE 9.1's own schema (`schema/pve-api-subset.json`, copied from
//! `../shared/proxmox-api/`): the same paths, methods, parameter names and encodings (booleans
//! `0`/`1`, comma lists, form bodies), tolerant decoding of what the Perl server sends back, and
//! errors classified the way the server really reports them. Nothing here was tested against a
//! live Proxmox VE: the tests run against the simulator in `tests/src/pve_sim.rs`.
//!
//! | module | concern |
//! |---|---|
//! | `client.rs` | transport: envelope, error mapping, retries with backoff for idempotent calls |
//! | `auth.rs` | API token header; ticket login, CSRF header, renewal |
//! | `tls.rs` | trust by pinned SHA-256 fingerprint or by a CA, never "anything" |
//! | `error.rs` | the one error enum |
//! | `params.rs`, `de.rs` | request encoding and tolerant response decoding |
//! | `storage.rs` | `/storage` configuration: typed create/update per storage type |
//! | `nodes.rs` | version, nodes, cluster resources, per-node storage status and content |
//! | `tasks.rs` | UPIDs and polling a task to its exit status |
//! | `schema.rs` | the embedded schema, and tests that requests match it |
//!
//! ```no_run
//! # async fn demo() -> proxmox_client::Result<()> {
//! use proxmox_client::*;
//! let trust = Trust::Fingerprint("AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99".parse()?);
//! let client = Client::new(ClientConfig::new(
//!     "https://pve1.example.com:8006",
//!     trust,
//!     Credentials::token("bulwark@pve!provisioner", "a-uuid-secret"),
//! ))?;
//! let nfs = StorageType::Nfs { server: "10.0.0.10".into(), export: "/srv/backup".into(), path: None, options: None };
//! client.create_storage(&StorageCreate::backup("bk-ws1", nfs, &["pve1", "pve2"])).await?;
//! let status = client.storage_status("pve1", "bk-ws1").await?;
//! println!("{} of {} bytes used", status.used, status.total);
//! # Ok(()) }
//! ```

pub mod auth;
pub mod client;
pub mod de;
pub mod error;
pub mod nodes;
pub mod params;
pub mod schema;
pub mod storage;
pub mod tasks;
pub mod tls;

pub use auth::Credentials;
pub use client::{Client, ClientConfig, RetryPolicy};
pub use error::{Error, Result};
pub use nodes::{
    ClusterResource, ContentItem, Node, NodeStorage, ResourceType, StorageStatus, Version,
};
pub use params::Params;
pub use reqwest::Method;
pub use storage::{
    ContentType, StorageChanged, StorageConfig, StorageCreate, StorageType, StorageUpdate,
};
pub use tasks::{TaskStatus, Upid};
pub use tls::{Fingerprint, Trust};

//! `bulwark-control-plane`: the HTTPS API, the redb state, tenancy, backup policies, the backup
//! catalog and the audit log.
//!
//! The layering a newcomer should keep in mind:
//! - `domain/` holds the rules: who may do what (`authz`), what a valid policy is (`policy`,
//!   `rules`, `schedule`), what a database, workspace or user record looks like. It knows nothing
//!   of HTTP or redb, so the rules are unit-tested as plain functions.
//! - `store/` is the only code that touches redb. Every change goes through one write transaction
//!   that also appends the audit entry, so a change without its audit record cannot exist.
//! - `api/` is one router file per resource: extract, authorise, call the store or a service,
//!   answer. Errors of the store and of the services become HTTP statuses in one place
//!   (`api/error.rs`); the services themselves know nothing of HTTP.
//! - The services each return their own error: `jobs/` (the life of a job: made and admitted,
//!   claimed by an agent's long poll, its result recorded by kind, given up when lost),
//!   `proxmox.rs` (stored cluster → client, and the backup-storage sync) and `pki.rs` (the
//!   built-in CA that issues agents' client certificates). `scheduler.rs` only decides which
//!   policies are due; `secrets.rs` seals secrets at rest with the control-plane key.
//! - `state.rs` is what handlers share; `server.rs` builds it, so `api` never depends on the
//!   server. `server.rs`, `tls.rs`, `config.rs`, `metrics.rs` and `cli.rs` are the process
//!   around it; `ratelimit.rs`, `request_id.rs`, `timed_body.rs` and `files.rs` protect it (429s,
//!   request ids in logs and 500s, slow bodies cut off, owner-only files made in one place).

pub mod api;
pub mod cli;
pub mod config;
pub mod domain;
pub mod files;
pub mod jobs;
pub mod metrics;
pub mod pki;
pub mod proxmox;
pub mod ratelimit;
pub mod request_id;
pub mod scheduler;
pub mod secrets;
pub mod server;
pub mod state;
pub mod store;
pub mod timed_body;
pub mod tls;

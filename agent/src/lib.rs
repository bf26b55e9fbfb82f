//! The Bulwark agent: the process on a database host that takes snapshots and writes them into
//! a repository. It has the one-shot commands ([`cli`]), the daemon that runs the control
//! plane's jobs ([`daemon`]), the database drivers ([`drivers`]), the backup both of them take
//! ([`backup`]) and the restore drill both of them run ([`drill`]), and the mutual-TLS client
//! of the control plane ([`control`]: enrolment, heartbeats, renewal); see
//! docs/ARCHITECTURE.md.

pub mod backup;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod drill;
pub mod drivers;
pub mod storage;
pub mod wal_target;

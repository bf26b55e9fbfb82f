//! The Bulwark agent: the process on a database host that takes snapshots and writes them into
//! a repository. It has the one-shot commands, the database drivers ([`drivers`]) and the
//! mutual-TLS client of the control plane ([`control`]: enrolment, heartbeats, renewal); the
//! daemon that runs jobs grows in a later issue (see docs/ARCHITECTURE.md).

pub mod backup;
pub mod cli;
pub mod config;
pub mod control;
pub mod drivers;
pub mod storage;

//! The Bulwark agent: the process on a database host that takes snapshots and writes them into
//! a repository. It has the one-shot commands and the database drivers ([`drivers`]); the
//! daemon that talks to the control plane grows in a later issue (see docs/ARCHITECTURE.md).

pub mod cli;
pub mod config;
pub mod drivers;

//! The Bulwark agent: the process on a database host that takes snapshots and writes them into
//! a repository. This release has the one-shot commands; the daemon and the database drivers
//! grow in later issues (see docs/ARCHITECTURE.md).

pub mod cli;

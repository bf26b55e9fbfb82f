//! `bulwark-core`: the repository format and everything that reads or writes it.
//!
//! The agent (and, for maintenance jobs, the control plane) use this crate; it owns no runtime
//! and speaks no HTTP. The modules follow the objects a newcomer meets in the format
//! description (`docs/repository-format.md`): chunks are cut by [`chunker`], named and sealed
//! by [`crypto`] and [`blob`], described by [`manifest`]s, guarded by [`keys`], stored through
//! a [`backend`], and managed as a whole by [`repo`]. [`retention`] is pure planning; [`archive`]
//! turns directory trees into a stream plus an index and back.

pub mod api;
pub mod archive;
pub mod backend;
pub mod blob;
pub mod chunker;
pub mod crypto;
pub mod error;
pub mod format;
pub mod keys;
pub mod leftovers;
pub mod manifest;
pub mod process;
pub mod repo;
pub mod retention;
pub mod workers;

pub use error::{Error, Result};

//! `repo init` and `repo key add|list|remove`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use bulwark_core::keys::KdfParams;
use bulwark_core::repo::Repository;
use clap::{Args, Subcommand};
use serde_json::json;

use super::{output, read_secret, Global};

#[derive(Subcommand, Debug)]
pub enum RepoCommand {
    /// Create a new repository with one passphrase key slot
    Init(InitArgs),
    /// Manage the passphrase key slots (the master key never changes)
    #[command(subcommand)]
    Key(KeyCommand),
}

#[derive(Args, Debug)]
pub struct KdfArgs {
    /// Argon2id memory in MiB for the new key slot
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(8..=4096))]
    kdf_memory_mib: u32,
    /// Argon2id passes for the new key slot
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=64))]
    kdf_iterations: u32,
    /// A note stored with the key slot (who holds this passphrase)
    #[arg(long, default_value = "")]
    label: String,
}

impl KdfArgs {
    fn params(&self) -> KdfParams {
        KdfParams {
            memory_kib: self.kdf_memory_mib * 1024,
            iterations: self.kdf_iterations,
            parallelism: 1,
        }
    }
}

#[derive(Args, Debug)]
pub struct InitArgs {
    #[command(flatten)]
    kdf: KdfArgs,
}

#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// Add a key slot for another passphrase (read from --new-password-file or BULWARK_NEW_PASSWORD)
    Add {
        #[arg(long, env = "BULWARK_NEW_PASSWORD_FILE", value_name = "FILE")]
        new_password_file: Option<PathBuf>,
        #[command(flatten)]
        kdf: KdfArgs,
    },
    /// List key slots
    List,
    /// Remove a key slot (never the last intact one)
    Remove {
        /// Slot id as shown by `repo key list`
        id: String,
    },
}

pub async fn run(g: &Global, cmd: RepoCommand) -> Result<ExitCode> {
    match cmd {
        RepoCommand::Init(a) => {
            let pass = g.passphrase()?;
            let backend = g.backend(true)?;
            let repo = Repository::init(backend, &pass, &a.kdf.label, a.kdf.params()).await?;
            let slot = &repo.list_keys().await?[0];
            if g.json {
                output::json(
                    &json!({"repository_id": repo.config().id, "location": repo.location(), "key_id": slot.id}),
                );
            } else {
                println!(
                    "created repository {} at {}",
                    repo.config().id,
                    repo.location()
                );
                println!("key slot {} protects the master key; keep the passphrase safe: without it the data cannot be read", slot.id);
            }
        }
        RepoCommand::Key(KeyCommand::Add {
            new_password_file,
            kdf,
        }) => {
            let repo = g.open().await?;
            let new = read_secret(
                new_password_file.as_deref(),
                "BULWARK_NEW_PASSWORD",
                "--new-password-file",
            )?;
            let slot = repo.add_key(&new, &kdf.label, kdf.params()).await?;
            if g.json {
                output::json(&json!({"key_id": slot.id, "label": slot.label}));
            } else {
                println!("added key slot {}", slot.id);
            }
        }
        RepoCommand::Key(KeyCommand::List) => {
            let repo = g.open().await?;
            let keys = repo.list_keys().await?;
            if g.json {
                output::json(&keys);
            } else {
                println!(
                    "{:<18} {:<22} {:<16} {:<10} LABEL",
                    "ID", "CREATED", "HOST", "KDF"
                );
                for k in keys {
                    match &k.error {
                        Some(e) => println!("{:<18} DAMAGED: {e}", k.id),
                        None => println!(
                            "{:<18} {:<22} {:<16} {:<10} {}",
                            k.id,
                            k.created
                                .map(|c| c.format("%Y-%m-%d %H:%M:%SZ").to_string())
                                .unwrap_or_default(),
                            k.hostname,
                            k.kdf
                                .map(|p| format!("{}MiB/{}", p.memory_kib / 1024, p.iterations))
                                .unwrap_or_default(),
                            k.label
                        ),
                    }
                }
            }
        }
        RepoCommand::Key(KeyCommand::Remove { id }) => {
            let repo = g.open().await?;
            repo.remove_key(&id).await?;
            if g.json {
                output::json(&json!({"removed": id}));
            } else {
                println!("removed key slot {id}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

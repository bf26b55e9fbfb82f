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
        /// Instead of a passphrase, write a random 256-bit machine key into FILE (mode 0600,
        /// must not exist) and protect a slot with it. A full-entropy key needs no slow key
        /// derivation, so commands run once per WAL segment (wal-push, wal-fetch) open the
        /// repository in milliseconds; point [repository] password_file at FILE.
        #[arg(long, value_name = "FILE", conflicts_with = "new_password_file")]
        generate: Option<PathBuf>,
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

/// Argon2id's floor for slots protected by a generated 256-bit key: stretching a secret that
/// already has full entropy adds cost, not security.
pub(crate) const MACHINE_KEY_KDF: KdfParams = KdfParams {
    memory_kib: 8 * 1024,
    iterations: 1,
    parallelism: 1,
};

/// Writes a new random key (64 hex digits and a newline) to `path`, readable by its owner only.
fn write_machine_key(path: &std::path::Path) -> Result<Vec<u8>> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let key = bulwark_core::crypto::random_hex(32);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| {
            anyhow::anyhow!(
                "creating machine key file {}: {e} (it must not exist yet)",
                path.display()
            )
        })?;
    file.write_all(format!("{key}\n").as_bytes())
        .and_then(|_| file.sync_all())
        .map_err(|e| anyhow::anyhow!("writing machine key file {}: {e}", path.display()))?;
    Ok(key.into_bytes())
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
            generate,
            kdf,
        }) => {
            let repo = g.open().await?;
            let (new, params) = match &generate {
                Some(file) => (write_machine_key(file)?, MACHINE_KEY_KDF),
                None => (
                    read_secret(
                        new_password_file.as_deref(),
                        "BULWARK_NEW_PASSWORD",
                        "--new-password-file",
                    )?,
                    kdf.params(),
                ),
            };
            let slot = match repo.add_key(&new, &kdf.label, params).await {
                Ok(slot) => slot,
                Err(e) => {
                    if let Some(file) = &generate {
                        let _ = std::fs::remove_file(file);
                    }
                    return Err(e.into());
                }
            };
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

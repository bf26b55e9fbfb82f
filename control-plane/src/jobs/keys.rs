//! The workspace key-encryption key: what lets an agent open (and create) the workspace's
//! repositories without the repository passphrase. It is made on first use, kept sealed with
//! the secrets key, and leaves the control plane only inside a job handed to an agent of that
//! workspace ([`claim`](super::claim)).
//!
//! Beside it, the workspace's recovery key ([`crate::domain::recovery`]): jobs that may create
//! a repository carry it too, so the repository gets a second key slot that opens it without
//! the control plane. It is shown to a person once ([`show_recovery_key`]).

use super::{system_actor, Error};
use crate::domain::audit::Actor;
use crate::domain::recovery;
use crate::secrets::SecretKey;
use crate::store::recovery::Showing;
use crate::store::{self, Store};

/// The workspace key as agents receive it (64 hex digits), made on first use.
pub async fn workspace_key(
    store: &Store,
    secrets: &SecretKey,
    workspace: &str,
) -> Result<String, Error> {
    let aad = format!("workspace-key:{workspace}");
    let ws = workspace.to_string();
    let seal_key = secrets.clone();
    let seal_aad = aad.clone();
    let existing = store::jobs::workspace_key_sealed(&store.read()?, workspace)?;
    let sealed = match existing {
        Some(sealed) => sealed,
        // Made once per workspace (the store keeps the first if two race).
        None => {
            store
                .write(system_actor(), move |tx| {
                    tx.workspace_key_sealed(&ws, || {
                        let mut key = [0u8; 32];
                        getrandom::fill(&mut key)
                            .expect("the operating system's random source failed");
                        seal_key.seal(&seal_aad, &hex::encode(key))
                    })
                })
                .await?
        }
    };
    secrets
        .open(&aad, &sealed)
        .map_err(|source| Error::WorkspaceKey {
            workspace: workspace.to_string(),
            source,
        })
}

/// The workspace's recovery key as jobs carry it, made on first use.
pub async fn recovery_key(
    store: &Store,
    secrets: &SecretKey,
    workspace: &str,
) -> Result<String, Error> {
    if let Some(record) = store::recovery::get(&store.read()?, workspace)? {
        return open_recovery(secrets, workspace, &record.sealed);
    }
    let ws = workspace.to_string();
    Ok(store
        .write(system_actor(), move |tx| {
            tx.recovery_key_or_make(&ws, recovery::generate)
        })
        .await?)
}

/// The recovery key for the person `actor`, once: later calls fail with
/// [`Error::RecoveryKeyShown`].
pub async fn show_recovery_key(
    store: &Store,
    actor: Actor,
    workspace: &str,
) -> Result<String, Error> {
    let ws = workspace.to_string();
    match store
        .write(actor, move |tx| {
            tx.show_recovery_key(&ws, recovery::generate)
        })
        .await?
    {
        Showing::Shown(key) => Ok(key),
        Showing::Already(record) => Err(Error::RecoveryKeyShown {
            workspace: workspace.to_string(),
            chosen: record.chosen,
            at: record.shown_at.unwrap_or(record.created_at),
            to: record.shown_to.unwrap_or_else(|| "unknown".into()),
        }),
    }
}

/// Replaces the recovery key by `passphrase` while no repository of the workspace exists.
pub async fn choose_recovery_key(
    store: &Store,
    actor: Actor,
    workspace: &str,
    passphrase: String,
) -> Result<(), Error> {
    let ws = workspace.to_string();
    Ok(store
        .write(actor, move |tx| tx.choose_recovery_key(&ws, &passphrase))
        .await?)
}

fn open_recovery(secrets: &SecretKey, workspace: &str, sealed: &str) -> Result<String, Error> {
    secrets
        .open(&recovery::aad(workspace), sealed)
        .map_err(|source| Error::WorkspaceKey {
            workspace: workspace.to_string(),
            source,
        })
}

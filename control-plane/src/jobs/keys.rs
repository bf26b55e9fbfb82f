//! The workspace key-encryption key: what lets an agent open (and create) the workspace's
//! repositories without the repository passphrase. It is made on first use, kept sealed with
//! the secrets key, and leaves the control plane only inside a job handed to an agent of that
//! workspace ([`claim`](super::claim)).

use super::{system_actor, Error};
use crate::secrets::SecretKey;
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

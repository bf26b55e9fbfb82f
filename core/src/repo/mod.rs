//! A repository: open it with a passphrase, then back up, read, verify, prune and collect.
//!
//! [`Repository`] is cheap to clone (everything behind `Arc`) so that pipeline tasks can own a
//! handle. Each operation lives in its own module: [`backup`], [`read`], [`verify`],
//! [`prune`], [`gc`]; [`lease`] keeps backups and GC apart.

pub mod backup;
pub mod config;
pub mod gc;
pub mod known;
pub mod lease;
pub mod prune;
pub mod read;
pub mod verify;
pub mod wal;

use std::cell::RefCell;
use std::sync::Arc;

use chrono::SubsecRound;
use futures::{StreamExt, TryStreamExt};

use crate::backend::DynBackend;
use crate::blob::{BlobCodec, BlobKind};
use crate::crypto::{Keys, MasterKey};
use crate::error::{Error, Result};
use crate::format;
use crate::keys::{KdfParams, KeySlot};
use crate::manifest::{validate_database_id, validate_snapshot_name, Manifest};

pub use config::RepoConfig;

thread_local! {
    /// One codec (zstd contexts + scratch buffer) per thread, reused for every blob.
    static CODEC: RefCell<BlobCodec> = RefCell::new(BlobCodec::new());
}

pub(crate) fn with_codec<T>(f: impl FnOnce(&mut BlobCodec) -> T) -> T {
    CODEC.with(|c| f(&mut c.borrow_mut()))
}

#[derive(Clone)]
pub struct Repository {
    backend: DynBackend,
    config: Arc<RepoConfig>,
    keys: Arc<Keys>,
    master: Arc<MasterKey>,
    /// Key slots that could not be parsed when the repository was opened.
    damaged_slots: Arc<Vec<String>>,
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repository")
            .field("location", &self.location())
            .field("id", &self.config.id)
            .finish()
    }
}

/// A key slot to create with a new repository.
#[derive(Clone, Copy)]
pub struct NewSlot<'a> {
    pub passphrase: &'a [u8],
    pub label: &'a str,
    pub kdf: KdfParams,
}

/// A key slot as `repo key list` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SlotSummary {
    pub id: String,
    pub label: String,
    pub hostname: String,
    pub created: Option<chrono::DateTime<chrono::Utc>>,
    pub kdf: Option<KdfParams>,
    /// Set when the slot object is damaged.
    pub error: Option<String>,
}

impl Repository {
    /// Creates a repository with one passphrase slot (see [`Repository::init_with`]).
    pub async fn init(
        backend: DynBackend,
        passphrase: &[u8],
        label: &str,
        kdf: KdfParams,
    ) -> Result<Repository> {
        Repository::init_with(
            backend,
            &[NewSlot {
                passphrase,
                label,
                kdf,
            }],
        )
        .await
    }

    /// Creates a repository: a random master key, a slot per passphrase (the first opens the
    /// returned handle), then `config` last and only if none exists, so that a half-finished
    /// init never looks like a repository and two hosts creating one storage's repository at
    /// once make exactly one. The loser removes its slots and gets [`Error::AlreadyExists`];
    /// it opens the winner's repository instead (agents of one workspace share its key).
    pub async fn init_with(backend: DynBackend, slots: &[NewSlot<'_>]) -> Result<Repository> {
        let location = backend.location().to_string();
        if slots.is_empty() {
            return Err(Error::invalid("repository init", "no key slot to create"));
        }
        if backend.read(format::CONFIG_PATH).await?.is_some() {
            return Err(Error::AlreadyExists { location });
        }
        let master = MasterKey::generate();
        let keys = Keys::derive(&master);
        let config = RepoConfig::new(&keys);
        let mut written = Vec::new();
        for new in slots {
            let (m, pass, id) = (master.clone(), new.passphrase.to_vec(), config.id.clone());
            let (label, kdf) = (new.label.to_string(), new.kdf);
            let slot =
                tokio::task::spawn_blocking(move || KeySlot::wrap(&m, &pass, &id, &label, kdf))
                    .await
                    .expect("key wrapping task panicked")?;
            backend.write(&slot.path(), slot.to_bytes()).await?;
            written.push(slot.path());
        }
        let bytes = config.to_bytes();
        let won = backend.create_new(format::CONFIG_PATH, bytes.clone()).await?
            // A retried create may find the object its own first attempt made.
            || backend.read(format::CONFIG_PATH).await?.as_deref() == Some(&bytes[..]);
        if !won {
            for path in &written {
                if let Err(e) = backend.delete(path).await {
                    tracing::warn!(slot = %path, error = %e, "cannot remove the key slot of a repository another process created first");
                }
            }
            return Err(Error::AlreadyExists { location });
        }
        let repo = Repository {
            backend,
            config: Arc::new(config),
            keys: Arc::new(keys),
            master: Arc::new(master),
            damaged_slots: Arc::new(Vec::new()),
        };
        repo.ensure_reserve().await;
        Ok(repo)
    }

    /// Opens a repository with a passphrase: reads `config` (refusing unknown versions), then
    /// tries every key slot.
    pub async fn open(backend: DynBackend, passphrase: &[u8]) -> Result<Repository> {
        let location = backend.location().to_string();
        let bytes =
            backend
                .read(format::CONFIG_PATH)
                .await?
                .ok_or_else(|| Error::NotARepository {
                    location: location.clone(),
                })?;
        let config = RepoConfig::parse(&location, &bytes)?;
        let (mut slots, mut damaged) = read_slots(&backend).await?;
        if slots.is_empty() && damaged.is_empty() {
            return Err(Error::NoKeySlots { location });
        }
        // Every slot names the repository it was made for, and none names this one: no
        // passphrase can open them, because `config`'s id is not the one they are bound to.
        let made_for: Vec<&str> = slots
            .iter()
            .filter_map(|s| s.repository.as_deref())
            .collect();
        if !slots.is_empty()
            && made_for.len() == slots.len()
            && made_for.iter().all(|r| *r != config.id)
        {
            return Err(Error::ConfigIdMismatch {
                location,
                config_id: config.id.clone(),
                slot_repository: made_for[0].to_string(),
                slots: slots
                    .iter()
                    .map(|s| s.path())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        // Cheapest key derivation first: a machine's high-entropy key file in a slot with
        // light Argon2id parameters (for `wal-push`, run once per WAL segment) must not wait
        // for the operators' expensive passphrase slots to fail first.
        slots.sort_by_key(|s| {
            u64::from(s.kdf.params.memory_kib) * u64::from(s.kdf.params.iterations)
        });
        let mut master = None;
        let mut tried = 0;
        for slot in &slots {
            let (s, pass, id) = (slot.clone(), passphrase.to_vec(), config.id.clone());
            // Argon2id is deliberately slow: keep it off the async threads.
            let opened = tokio::task::spawn_blocking(move || s.unwrap(&pass, &id))
                .await
                .expect("key derivation task panicked");
            match opened {
                Ok(Some(key)) => {
                    master = Some(key);
                    break;
                }
                Ok(None) => tried += 1,
                // A slot whose fields are unusable must not stop the others from being tried.
                Err(e) => damaged.push((slot.path(), e)),
            }
        }
        let Some(master) = master else {
            if tried == 0 {
                if let Some(first) = damaged.into_iter().next() {
                    return Err(first.1);
                }
            }
            return Err(Error::WrongPassphrase { location, tried });
        };
        let keys = Keys::derive(&master);
        config.verify_mac(&location, &keys)?;
        for (path, err) in &damaged {
            tracing::warn!(slot = %path, error = %err, "damaged key slot ignored");
        }
        Ok(Repository {
            backend,
            config: Arc::new(config),
            keys: Arc::new(keys),
            master: Arc::new(master),
            damaged_slots: Arc::new(damaged.into_iter().map(|(p, _)| p).collect()),
        })
    }

    pub fn backend(&self) -> &DynBackend {
        &self.backend
    }

    pub fn location(&self) -> &str {
        self.backend.location()
    }

    pub fn config(&self) -> &RepoConfig {
        &self.config
    }

    pub(crate) fn keys(&self) -> &Keys {
        &self.keys
    }

    pub fn damaged_slots(&self) -> &[String] {
        &self.damaged_slots
    }

    /// Adds a passphrase slot. The master key, and so every stored object, stays the same.
    pub async fn add_key(&self, passphrase: &[u8], label: &str, kdf: KdfParams) -> Result<KeySlot> {
        let (master, id, label) = (
            self.master.clone(),
            self.config.id.clone(),
            label.to_string(),
        );
        let pass = passphrase.to_vec();
        let slot =
            tokio::task::spawn_blocking(move || KeySlot::wrap(&master, &pass, &id, &label, kdf))
                .await
                .expect("key derivation task panicked")?;
        self.backend.write(&slot.path(), slot.to_bytes()).await?;
        Ok(slot)
    }

    pub async fn list_keys(&self) -> Result<Vec<SlotSummary>> {
        let (slots, damaged) = read_slots(&self.backend).await?;
        let mut out: Vec<SlotSummary> = slots
            .into_iter()
            .map(|s| SlotSummary {
                id: s.id,
                label: s.label,
                hostname: s.hostname,
                created: Some(s.created),
                kdf: Some(s.kdf.params),
                error: None,
            })
            .collect();
        out.extend(damaged.into_iter().map(|(path, err)| SlotSummary {
            id: path.trim_start_matches(format::KEYS_DIR).to_string(),
            label: String::new(),
            hostname: String::new(),
            created: None,
            kdf: None,
            error: Some(err.to_string()),
        }));
        out.sort_by(|a, b| a.created.cmp(&b.created));
        Ok(out)
    }

    /// Removes a slot, refusing to remove the last intact one.
    pub async fn remove_key(&self, id: &str) -> Result<()> {
        let (slots, damaged) = read_slots(&self.backend).await?;
        let path = format!("{}{id}", format::KEYS_DIR);
        let is_intact = slots.iter().any(|s| s.id == id);
        if !is_intact && !damaged.iter().any(|(p, _)| *p == path) {
            return Err(Error::invalid(
                "key slot",
                format!("no key slot {id:?} in {}", self.location()),
            ));
        }
        if is_intact && slots.len() == 1 {
            return Err(Error::invalid(
                "key slot",
                format!("{id} is the last intact key slot; add another with `repo key add` before removing it"),
            ));
        }
        self.backend.delete(&path).await
    }

    /// Encrypts and stores a manifest under its path (atomically).
    pub async fn write_manifest(&self, manifest: &Manifest) -> Result<()> {
        validate_database_id(&manifest.database_id)?;
        validate_snapshot_name(&manifest.name)?;
        let path = manifest.path();
        let json = serde_json::to_vec(manifest).expect("manifests serialize");
        if json.len() > format::MAX_MANIFEST_LEN {
            return Err(Error::invalid(
                "snapshot",
                format!(
                    "manifest of {path} would be {} bytes, over the {} limit",
                    json.len(),
                    format::MAX_MANIFEST_LEN
                ),
            ));
        }
        let keys = self.keys.clone();
        let aad = path.clone();
        let blob = tokio::task::spawn_blocking(move || {
            with_codec(|c| {
                c.seal(
                    BlobKind::Manifest,
                    &keys.manifest_cipher,
                    aad.as_bytes(),
                    &json,
                )
            })
        })
        .await
        .expect("sealing task panicked");
        self.backend.write(&path, blob).await?;
        self.backend.make_durable(&path).await?;
        // The database's directory may be new: its entry in `snapshots/` must last too.
        let dir = path.rsplit_once('/').map_or(path.as_str(), |(d, _)| d);
        self.backend.make_durable(dir).await
    }

    /// Reads, authenticates and parses the manifest at `path` (`snapshots/<db>/<name>`).
    pub async fn load_manifest(&self, path: &str) -> Result<Manifest> {
        let blob = self
            .backend
            .read(path)
            .await?
            .ok_or_else(|| Error::Missing {
                object: path.to_string(),
                referenced_by: "the snapshot list".into(),
            })?;
        let keys = self.keys.clone();
        let p = path.to_string();
        let manifest = crate::workers::run(move || -> Result<Manifest> {
            let mut plain = Vec::new();
            with_codec(|c| {
                c.open(
                    BlobKind::Manifest,
                    &keys.manifest_cipher,
                    p.as_bytes(),
                    blob,
                    format::MAX_MANIFEST_LEN,
                    &mut plain,
                )
            })
            .map_err(|e| Error::corrupt(format!("snapshot manifest {p}"), e.to_string()))?;
            let m: Manifest = serde_json::from_slice(&plain).map_err(|e| {
                Error::corrupt(
                    format!("snapshot manifest {p}"),
                    format!("invalid JSON: {e}"),
                )
            })?;
            if m.version != crate::manifest::MANIFEST_VERSION {
                return Err(Error::corrupt(
                    format!("snapshot manifest {p}"),
                    format!("manifest version {} is not supported (this build reads {}); upgrade bulwark", m.version, crate::manifest::MANIFEST_VERSION),
                ));
            }
            if m.path() != p {
                return Err(Error::corrupt(
                    format!("snapshot manifest {p}"),
                    "describes another snapshot",
                ));
            }
            Ok(m)
        })
        .await?;
        Ok(manifest)
    }

    /// Paths of all snapshot manifests, optionally of one database.
    pub async fn snapshot_paths(&self, database_id: Option<&str>) -> Result<Vec<String>> {
        let prefix = match database_id {
            Some(db) => {
                validate_database_id(db)?;
                format!("{}{db}/", format::SNAPSHOTS_DIR)
            }
            None => format::SNAPSHOTS_DIR.to_string(),
        };
        let mut paths = self.backend.list(&prefix).await?;
        paths.sort();
        Ok(paths)
    }

    /// Every snapshot's manifest, oldest first, plus the manifests that could not be read
    /// because they are damaged. A storage error ends the listing.
    pub async fn list_snapshots(&self, database_id: Option<&str>) -> Result<SnapshotList> {
        self.list_snapshots_inner(database_id, false).await
    }

    /// Like [`Repository::list_snapshots`], but a manifest the storage fails to return is
    /// listed in `damaged` too instead of ending the listing: for `verify`, which reports every
    /// object it could not check and carries on.
    pub async fn list_snapshots_keep_going(
        &self,
        database_id: Option<&str>,
    ) -> Result<SnapshotList> {
        self.list_snapshots_inner(database_id, true).await
    }

    async fn list_snapshots_inner(
        &self,
        database_id: Option<&str>,
        keep_going: bool,
    ) -> Result<SnapshotList> {
        let paths = self.snapshot_paths(database_id).await?;
        let results: Vec<(String, Result<Manifest>)> = futures::stream::iter(paths)
            .map(|p| async move {
                let r = self.load_manifest(&p).await;
                (p, r)
            })
            .buffer_unordered(8)
            .collect()
            .await;
        let mut list = SnapshotList::default();
        for (path, r) in results {
            match r {
                Ok(m) => list.manifests.push(m),
                // Deleted (by a concurrent prune) between listing and reading: not damage.
                Err(Error::Missing { .. }) => {}
                Err(e) if e.class() == crate::error::ErrorClass::Storage && !keep_going => {
                    return Err(e)
                }
                Err(e) => list.damaged.push((path, e)),
            }
        }
        list.manifests
            .sort_by(|a, b| a.started.cmp(&b.started).then_with(|| a.name.cmp(&b.name)));
        list.damaged.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(list)
    }

    /// Finds a snapshot by name, or the newest one of a database for `latest` — refusing
    /// `latest` when a manifest of that database that cannot be read may be newer than the
    /// newest readable one, so that a damaged newest backup is never silently replaced by an
    /// older one.
    pub async fn find_snapshot(&self, name: &str, database_id: Option<&str>) -> Result<Manifest> {
        if name == "latest" {
            let Some(db) = database_id else {
                return Err(Error::invalid(
                    "snapshot",
                    "`latest` needs --database to say which database",
                ));
            };
            let list = self.list_snapshots(Some(db)).await?;
            list.refuse_unreadable_newer_than(db, list.manifests.last(), None)?;
            return list
                .manifests
                .into_iter()
                .next_back()
                .ok_or_else(|| Error::SnapshotNotFound(format!("latest of database {db}")));
        }
        validate_snapshot_name(name)?;
        let paths = self.snapshot_paths(database_id).await?;
        let found: Vec<_> = paths
            .iter()
            .filter(|p| p.rsplit('/').next() == Some(name))
            .collect();
        match found.as_slice() {
            [one] => self.load_manifest(one).await,
            [] => Err(Error::SnapshotNotFound(name.to_string())),
            _ => Err(Error::invalid(
                "snapshot",
                format!("{name} exists for several databases; add --database"),
            )),
        }
    }

    /// Every chunk id present in storage, for GC (32 bytes each; the listing is streamed, not
    /// held as paths). Objects under `chunks/` that are not canonically named chunks are
    /// ignored. Backups use the compact [`known::StoredPrefixes`] instead.
    pub(crate) async fn stored_chunks(&self) -> Result<Vec<crate::crypto::ChunkId>> {
        let mut ids = Vec::new();
        self.backend
            .list_each(format::CHUNKS_DIR, &mut |path| {
                ids.extend(crate::crypto::ChunkId::from_path(path));
            })
            .await?;
        // A listing restarted after a transient error may repeat paths.
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }
}

#[derive(Debug, Default)]
pub struct SnapshotList {
    pub manifests: Vec<Manifest>,
    /// Manifests that exist but failed authentication or parsing (or, from
    /// [`Repository::list_snapshots_keep_going`], could not be read at all), by path.
    pub damaged: Vec<(String, Error)>,
}

impl SnapshotList {
    /// Fails when a manifest of `database` that could not be read may be newer than `chosen`
    /// (the snapshot a caller picked as the newest that fits) and, with `until`, started no
    /// later than that (a backup started after a recovery target cannot be its base). A
    /// manifest's name carries its start time; one whose name does not parse might be
    /// anything, so it counts as newer.
    pub fn refuse_unreadable_newer_than(
        &self,
        database: &str,
        chosen: Option<&Manifest>,
        until: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<()> {
        let prefix = format!("{}{database}/", format::SNAPSHOTS_DIR);
        let newer = self.damaged.iter().find(|(path, _)| {
            path.starts_with(&prefix)
                && match name_time(path) {
                    Some(t) => {
                        chosen.is_none_or(|m| t >= m.started.trunc_subsecs(0))
                            && until.is_none_or(|u| t <= u)
                    }
                    None => true,
                }
        });
        match newer {
            Some((path, err)) => Err(Error::LatestUnreadable {
                database: database.to_string(),
                object: path.clone(),
                reason: err.to_string(),
                newest_readable: chosen.map(|m| m.name.clone()),
            }),
            None => Ok(()),
        }
    }
}

/// The start time in a snapshot path `snapshots/<db>/backup-<yyyymmddThhmmssZ>-<kind>-<id>`.
fn name_time(path: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    let name = path.rsplit('/').next()?;
    let stamp = name.strip_prefix("backup-")?.get(..16)?;
    chrono::NaiveDateTime::parse_from_str(stamp, "%Y%m%dT%H%M%SZ")
        .ok()
        .map(|t| t.and_utc())
}

async fn read_slots(backend: &DynBackend) -> Result<(Vec<KeySlot>, Vec<(String, Error)>)> {
    let mut slots = Vec::new();
    let mut damaged = Vec::new();
    let paths = backend.list(format::KEYS_DIR).await?;
    let reads: Vec<_> = futures::stream::iter(paths)
        .map(|p| async move { backend.read(&p).await.map(|b| (p, b)) })
        .buffer_unordered(8)
        .try_collect()
        .await?;
    for (path, bytes) in reads {
        let Some(bytes) = bytes else { continue };
        match KeySlot::from_bytes(&path, &bytes) {
            Ok(s) => slots.push(s),
            Err(e) => damaged.push((path, e)),
        }
    }
    slots.sort_by(|a, b| a.created.cmp(&b.created));
    Ok((slots, damaged))
}

#[cfg(test)]
mod tests;

//! Prune: apply retention rules per database, as a plan first and deletions second.
//!
//! Only manifests are deleted here; the chunks they alone referenced are reclaimed by
//! [`gc`](super::gc). Damaged manifests are never considered: prune cannot tell what they
//! are, so it never deletes one, and never counts one among the snapshots a rule keeps (a
//! `--keep-last 3` keeps three *readable* snapshots). The plan lists them per database so the
//! operator sees them, instead of a plan that quietly pretends they do not exist.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::Repository;
use crate::error::{Error, Result};
use crate::format;
use crate::manifest::{validate_database_id, validate_snapshot_name};
use crate::retention::{self, Decision, Rules};

#[derive(Debug, Clone, Serialize)]
pub struct DatabasePlan {
    pub database_id: String,
    pub decisions: Vec<Decision>,
    /// Manifests of this database that could not be read: left in place, counted as nothing.
    pub unreadable: Vec<UnreadableManifest>,
}

/// What [`Repository::forget`] did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ForgetReport {
    pub deleted: Vec<String>,
    /// Named but not (or no longer) in the repository.
    pub already_gone: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct UnreadableManifest {
    pub object: String,
    pub error: String,
}

impl Repository {
    pub async fn plan_prune(
        &self,
        database_id: Option<&str>,
        rules: &Rules,
        now: DateTime<Utc>,
    ) -> Result<Vec<DatabasePlan>> {
        if rules.keeps_nothing() {
            return Err(Error::invalid(
                "retention rules",
                "no --keep-* option given: pruning would delete every snapshot; pass at least one",
            ));
        }
        let list = self.list_snapshots(database_id).await?;
        type Entry = (Vec<(String, DateTime<Utc>)>, Vec<UnreadableManifest>);
        let mut by_db: std::collections::BTreeMap<String, Entry> = Default::default();
        for m in list.manifests {
            by_db
                .entry(m.database_id)
                .or_default()
                .0
                .push((m.name, m.started));
        }
        for (path, err) in list.damaged {
            // `snapshots/<database>/<name>`: the path says whose it is, the contents cannot.
            let db = path
                .strip_prefix(format::SNAPSHOTS_DIR)
                .and_then(|rest| rest.split_once('/'))
                .map_or_else(|| path.clone(), |(db, _)| db.to_string());
            by_db.entry(db).or_default().1.push(UnreadableManifest {
                object: path,
                error: err.to_string(),
            });
        }
        Ok(by_db
            .into_iter()
            .map(|(database_id, (snaps, unreadable))| DatabasePlan {
                decisions: retention::plan(&snaps, rules, now),
                database_id,
                unreadable,
            })
            .collect())
    }

    /// Deletes the named snapshots of one database: the control plane's retention plan or a
    /// person's delete, carried out by an agent. Names that are already gone count as done, so a
    /// forget job retried after a lost answer succeeds. Chunks are reclaimed by gc.
    pub async fn forget(&self, database_id: &str, names: &[String]) -> Result<ForgetReport> {
        validate_database_id(database_id)?;
        for name in names {
            validate_snapshot_name(name)?;
        }
        let mut report = ForgetReport::default();
        for name in names {
            let path = format::snapshot_path(database_id, name);
            if self.backend().stat(&path).await?.is_some() {
                self.backend().delete(&path).await?;
                report.deleted.push(name.clone());
            } else {
                report.already_gone.push(name.clone());
            }
        }
        Ok(report)
    }

    /// Deletes the manifests the plan removes; returns how many.
    pub async fn execute_prune(&self, plans: &[DatabasePlan]) -> Result<usize> {
        let mut deleted = 0;
        for plan in plans {
            for d in plan.decisions.iter().filter(|d| !d.keep) {
                self.backend()
                    .delete(&format::snapshot_path(&plan.database_id, &d.name))
                    .await?;
                deleted += 1;
            }
        }
        Ok(deleted)
    }
}

//! Prune: apply retention rules per database, as a plan first and deletions second.
//!
//! Only manifests are deleted here; the chunks they alone referenced are reclaimed by
//! [`gc`](super::gc). Damaged manifests are never considered: prune cannot tell what they
//! are, so it leaves them for an operator.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::Repository;
use crate::error::{Error, Result};
use crate::format;
use crate::retention::{self, Decision, Rules};

#[derive(Debug, Clone, Serialize)]
pub struct DatabasePlan {
    pub database_id: String,
    pub decisions: Vec<Decision>,
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
        let mut by_db: std::collections::BTreeMap<String, Vec<(String, DateTime<Utc>)>> =
            Default::default();
        for m in list.manifests {
            by_db
                .entry(m.database_id)
                .or_default()
                .push((m.name, m.started));
        }
        Ok(by_db
            .into_iter()
            .map(|(database_id, snaps)| DatabasePlan {
                decisions: retention::plan(&snaps, rules, now),
                database_id,
            })
            .collect())
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

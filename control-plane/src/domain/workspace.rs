//! Workspaces: the tenancy boundary. Everything else (databases, policies, backups, users,
//! audit entries) belongs to exactly one workspace.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{check_slug, Violation};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Plan {
    /// Backups go to storage the platform shares between workspaces.
    Shared,
    /// The workspace gets storage of its own on the Proxmox cluster (issue 6).
    Dedicated,
}

/// Longest retention any policy may ask for, and therefore the highest sensible floor.
pub const MAX_PERIOD_DAYS: i64 = 3650;

/// What a client sends to create or replace a workspace.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceBody {
    /// Chosen by the creator; lowercase letters, digits, `-`, `_`, `.`. Required on create; on
    /// update it may be omitted, and must match the path when given.
    #[serde(default)]
    pub id: Option<String>,
    pub name: String,
    pub plan: Plan,
    /// Physical bytes this workspace's repositories may hold.
    pub quota_bytes: i64,
    /// Compliance floor: no policy in this workspace may keep backups for fewer days.
    #[serde(default)]
    pub min_retention_days: Option<i64>,
    /// Four eyes for destructive acts (deleting a manual backup, shortening retention, deleting
    /// a storage, replacing the recovery key): they wait for a second workspace admin's
    /// approval. Default off on create; omitted on update: unchanged.
    #[serde(default)]
    pub four_eyes: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Workspace {
    pub id: String,
    pub name: String,
    pub plan: Plan,
    pub quota_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_retention_days: Option<u32>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Settings kept beside the workspace record, in a table of their own (`workspace_safeguards`):
/// workspaces from before them read as all off.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Safeguards {
    /// Destructive acts wait for a second admin's approval (`/api/v1/approvals`).
    #[serde(default)]
    pub four_eyes: bool,
}

/// A workspace as the API answers it: the record and its safeguards.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WorkspaceView {
    #[serde(flatten)]
    pub workspace: Workspace,
    #[serde(flatten)]
    pub safeguards: Safeguards,
}

impl WorkspaceBody {
    /// The safeguards the body asks for: what it names, else what the workspace has.
    pub fn safeguards(&self, existing: Safeguards) -> Safeguards {
        Safeguards {
            four_eyes: self.four_eyes.unwrap_or(existing.four_eyes),
        }
    }

    /// Checks every field and builds the record. `existing` is the stored workspace on update.
    pub fn into_workspace(
        self,
        path_id: Option<&str>,
        existing: Option<&Workspace>,
        now: DateTime<Utc>,
    ) -> Result<Workspace, Vec<Violation>> {
        let mut problems = Vec::new();
        let id = match (&self.id, path_id) {
            (Some(id), Some(path)) if id != path => {
                problems.push(Violation::new(
                    "id",
                    format!("'{id}' differs from the workspace in the URL ('{path}'); ids cannot be changed"),
                ));
                path.to_string()
            }
            (_, Some(path)) => path.to_string(),
            (Some(id), None) => {
                if let Err(e) = check_slug(id) {
                    problems.push(Violation::new("id", e));
                }
                id.clone()
            }
            (None, None) => {
                problems.push(Violation::new(
                    "id",
                    "is required when creating a workspace",
                ));
                String::new()
            }
        };
        let name = self.name.trim().to_string();
        super::check_text(&mut problems, "name", &name, 200);
        if self.quota_bytes < 0 {
            problems.push(Violation::new(
                "quota_bytes",
                format!("must not be negative (got {})", self.quota_bytes),
            ));
        }
        if let Some(days) = self.min_retention_days {
            if !(1..=MAX_PERIOD_DAYS).contains(&days) {
                problems.push(Violation::new(
                    "min_retention_days",
                    format!("must be between 1 and {MAX_PERIOD_DAYS} days (got {days})"),
                ));
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Workspace {
            id,
            name,
            plan: self.plan,
            quota_bytes: self.quota_bytes as u64,
            min_retention_days: self.min_retention_days.map(|d| d as u32),
            created_at: existing.map_or(now, |w| w.created_at),
            updated_at: now,
        })
    }
}

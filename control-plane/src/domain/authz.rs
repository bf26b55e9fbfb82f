//! Who may do what. A caller carries role bindings; every handler asks one question —
//! "what access does this caller have to workspace W (and database D)?" — and the answer decides
//! between acting, 403, and 404. Resources the caller may not even read are reported as missing
//! (404), never as forbidden: a workspace must not learn what another workspace holds.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Everything, everywhere. Not bound to a workspace.
    PlatformAdmin,
    /// Everything inside one workspace, including its users and tokens.
    WorkspaceAdmin,
    /// Registers databases and manages their policies and backups (a workspace or one database).
    AppOwner,
    /// Reads (a workspace or one database), including the audit entries about it.
    Viewer,
}

/// A role granted on a scope. `platform-admin` has no scope; the others have a workspace and,
/// when bound to one database, that database too (its workspace is recorded so access checks need
/// no extra lookup).
///
/// Unknown fields are refused: a misspelt `databse_id` once turned a one-database grant into a
/// workspace-wide one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RoleBinding {
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_id: Option<String>,
}

/// What a caller may do on one scope, in increasing order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    None,
    Read,
    Write,
    Admin,
}

/// The authenticated principal of a request.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user_id: String,
    pub user_name: String,
    pub token_id: String,
    pub roles: Vec<RoleBinding>,
}

impl Caller {
    pub fn is_platform_admin(&self) -> bool {
        self.roles.iter().any(|b| b.role == Role::PlatformAdmin)
    }

    /// Access to a workspace as a whole (its settings, users, audit) or, with `database`, to one
    /// of its databases and everything hanging off it (policies, backups).
    pub fn access(&self, workspace: &str, database: Option<&str>) -> Access {
        self.roles
            .iter()
            .map(|b| binding_access(b, workspace, database))
            .max()
            .unwrap_or(Access::None)
    }

    /// Whether the caller may register and remove databases in a workspace: a workspace-wide
    /// admin or app-owner binding (one bound to a single database may not add others).
    pub fn can_manage_databases(&self, workspace: &str) -> bool {
        self.is_platform_admin()
            || self.roles.iter().any(|b| {
                matches!(b.role, Role::WorkspaceAdmin | Role::AppOwner)
                    && b.workspace_id.as_deref() == Some(workspace)
                    && b.database_id.is_none()
            })
    }

    /// Whether the caller holds a role over the whole workspace (not just one database of it):
    /// needed to read workspace-level records such as its users and its audit entries.
    pub fn workspace_wide(&self, workspace: &str) -> bool {
        self.is_platform_admin()
            || self
                .roles
                .iter()
                .any(|b| b.workspace_id.as_deref() == Some(workspace) && b.database_id.is_none())
    }

    /// Workspaces this caller can see at all; `None` means every workspace.
    pub fn visible_workspaces(&self) -> Option<Vec<&str>> {
        if self.is_platform_admin() {
            return None;
        }
        let mut ids: Vec<&str> = self
            .roles
            .iter()
            .filter_map(|b| b.workspace_id.as_deref())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        Some(ids)
    }
}

fn binding_access(binding: &RoleBinding, workspace: &str, database: Option<&str>) -> Access {
    if binding.role == Role::PlatformAdmin {
        return Access::Admin;
    }
    if binding.workspace_id.as_deref() != Some(workspace) {
        return Access::None;
    }
    let level = match binding.role {
        Role::PlatformAdmin | Role::WorkspaceAdmin => Access::Admin,
        Role::AppOwner => Access::Write,
        Role::Viewer => Access::Read,
    };
    match (&binding.database_id, database) {
        // Workspace-wide binding: full level on the workspace and all its databases, except that
        // an app owner only reads the workspace's own settings.
        (None, Some(_)) => level,
        (None, None) if binding.role == Role::AppOwner => Access::Read,
        (None, None) => level,
        // Bound to one database: that database at the role's level; the workspace is readable
        // (its name, plan and quota) but nothing else in it.
        (Some(bound), Some(db)) if bound == db => level.min(Access::Write),
        (Some(_), Some(_)) => Access::None,
        (Some(_), None) => Access::Read,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(roles: Vec<RoleBinding>) -> Caller {
        Caller {
            user_id: "usr".into(),
            user_name: "u".into(),
            token_id: "tok".into(),
            roles,
        }
    }

    fn bind(role: Role, ws: &str, db: Option<&str>) -> RoleBinding {
        RoleBinding {
            role,
            workspace_id: Some(ws.into()),
            database_id: db.map(Into::into),
        }
    }

    #[test]
    fn access_table() {
        let admin_a = caller(vec![bind(Role::WorkspaceAdmin, "a", None)]);
        let owner_a = caller(vec![bind(Role::AppOwner, "a", None)]);
        let owner_db = caller(vec![bind(Role::AppOwner, "a", Some("orders"))]);
        let viewer_db = caller(vec![bind(Role::Viewer, "a", Some("orders"))]);
        let platform = caller(vec![RoleBinding {
            role: Role::PlatformAdmin,
            workspace_id: None,
            database_id: None,
        }]);
        let table = [
            (&admin_a, "a", None, Access::Admin),
            (&admin_a, "a", Some("orders"), Access::Admin),
            (&admin_a, "b", None, Access::None),
            (&admin_a, "b", Some("x"), Access::None),
            (&owner_a, "a", None, Access::Read),
            (&owner_a, "a", Some("orders"), Access::Write),
            (&owner_db, "a", Some("orders"), Access::Write),
            (&owner_db, "a", Some("billing"), Access::None),
            (&owner_db, "a", None, Access::Read),
            (&viewer_db, "a", Some("orders"), Access::Read),
            (&viewer_db, "b", Some("orders"), Access::None),
            (&platform, "zzz", Some("q"), Access::Admin),
        ];
        for (who, ws, db, want) in table {
            assert_eq!(who.access(ws, db), want, "{:?} on {ws}/{db:?}", who.roles);
        }
        assert_eq!(admin_a.visible_workspaces(), Some(vec!["a"]));
        assert_eq!(platform.visible_workspaces(), Option::None);
    }
}

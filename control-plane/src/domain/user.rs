//! Users and their API tokens. A token is 32 random bytes shown once; the store keeps only its
//! BLAKE3 hash (the token has full entropy, so a slow password hash would add nothing but
//! latency to every request).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::authz::{Role, RoleBinding};
use super::Violation;

/// Every token starts with this, so a leaked one is recognisable in logs and by secret scanners.
pub const TOKEN_PREFIX: &str = "bwk_";

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserBody {
    pub name: String,
    #[serde(default)]
    pub email: Option<String>,
    pub roles: Vec<RoleBinding>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct User {
    pub id: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// The workspace the user belongs to; absent for platform admins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace_id: Option<String>,
    pub roles: Vec<RoleBinding>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenBody {
    pub name: String,
    /// Days until the token stops working; absent means it never expires.
    #[serde(default)]
    pub expires_in_days: Option<i64>,
}

/// A token as stored and listed: never the secret itself.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Token {
    pub id: String,
    pub user_id: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
}

/// The answer to token creation: the only time the secret is shown.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct NewToken {
    #[serde(flatten)]
    pub token: Token,
    /// Put this in `Authorization: Bearer …`. It is not stored and cannot be shown again.
    pub secret: String,
}

/// A fresh secret and the hash under which it is stored.
pub fn new_secret() -> (String, String) {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system's random source failed");
    let secret = format!("{TOKEN_PREFIX}{}", hex::encode(bytes));
    let hash = hash_secret(&secret);
    (secret, hash)
}

pub fn hash_secret(secret: &str) -> String {
    blake3::derive_key("bulwark control-plane api token v1", secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl TokenBody {
    pub fn check(&self) -> Vec<Violation> {
        let mut problems = Vec::new();
        super::check_text(&mut problems, "name", &self.name, 100);
        if let Some(days) = self.expires_in_days {
            if !(1..=3650).contains(&days) {
                problems.push(Violation::new(
                    "expires_in_days",
                    format!("must be between 1 and 3650 (got {days})"),
                ));
            }
        }
        problems
    }
}

impl UserBody {
    /// Shape checks that need no lookups. Whether the referenced workspace and databases exist,
    /// and whether the caller may grant these roles, is checked by the API against the store.
    pub fn check(&self) -> Vec<Violation> {
        let mut problems = Vec::new();
        super::check_text(&mut problems, "name", &self.name, 100);
        if let Some(email) = &self.email {
            if email.len() > 254
                || !email.contains('@')
                || super::text_problem(email, 254).is_some()
            {
                problems.push(Violation::new("email", "is not an e-mail address"));
            }
        }
        if self.roles.is_empty() {
            problems.push(Violation::new("roles", "a user needs at least one role"));
        }
        if self.roles.len() > 50 {
            problems.push(Violation::new("roles", "at most 50 role bindings"));
        }
        for (i, b) in self.roles.iter().enumerate() {
            let path = format!("roles[{i}]");
            match b.role {
                Role::PlatformAdmin if b.workspace_id.is_some() || b.database_id.is_some() => {
                    problems.push(Violation::new(
                        path,
                        "platform-admin is not scoped: leave out workspace_id and database_id",
                    ))
                }
                Role::PlatformAdmin => {}
                _ if b.workspace_id.is_none() && b.database_id.is_none() => {
                    problems.push(Violation::new(
                        path,
                        "needs a workspace_id or a database_id to say where the role applies",
                    ))
                }
                _ => {}
            }
        }
        problems
    }

    /// The one workspace all scoped roles must share (users belong to one workspace).
    pub fn home_workspace(&self) -> Result<Option<String>, Violation> {
        let mut home: Option<&str> = None;
        for b in &self.roles {
            if let Some(ws) = b.workspace_id.as_deref() {
                match home {
                    Some(h) if h != ws => {
                        return Err(Violation::new(
                            "roles",
                            "all roles of a user must be in one workspace; create one user per workspace",
                        ))
                    }
                    _ => home = Some(ws),
                }
            }
        }
        Ok(home.map(str::to_string))
    }
}

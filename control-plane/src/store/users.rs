//! Users and tokens.
//!
//! Tables: `users` (id → User), `users_by_workspace` ((workspace or "" for platform admins, id)),
//! `tokens` (id → token record with its hash), `token_hashes` (hash → token id, the lookup every
//! request makes), `tokens_by_user` ((user, token id)).

use redb::ReadTransaction;
use serde::{Deserialize, Serialize};

use super::{get_json, put_json, scan_index, Index2, Records, Result, StoreError, Tx};
use crate::domain::authz::Caller;
use crate::domain::user::{hash_secret, Token, User};

pub const USERS: Records = Records::new("users");
pub const USERS_BY_WORKSPACE: Index2 = Index2::new("users_by_workspace");
pub const TOKENS: Records = Records::new("tokens");
pub const TOKEN_HASHES: redb::TableDefinition<'static, &'static str, &'static str> =
    redb::TableDefinition::new("token_hashes");
pub const TOKENS_BY_USER: Index2 = Index2::new("tokens_by_user");

#[derive(Serialize, Deserialize)]
struct StoredToken {
    #[serde(flatten)]
    token: Token,
    hash: String,
}

fn home(user: &User) -> &str {
    user.workspace_id.as_deref().unwrap_or("")
}

pub fn get(rtx: &ReadTransaction, id: &str) -> Result<Option<User>> {
    get_json(&rtx.open_table(USERS)?, "user", id)
}

/// Users of one workspace (`Some`) or of all (`None`), in id order after `after`.
pub fn list(
    rtx: &ReadTransaction,
    workspace: Option<&str>,
    after: Option<&str>,
    limit: usize,
) -> Result<(Vec<User>, bool)> {
    let users = rtx.open_table(USERS)?;
    let mut out = Vec::new();
    let mut more = false;
    let mut take = |id: &str| -> Result<bool> {
        if out.len() == limit {
            more = true;
            return Ok(false);
        }
        if let Some(u) = get_json(&users, "user", id)? {
            out.push(u);
        }
        Ok(true)
    };
    match workspace {
        Some(ws) => scan_index(&rtx.open_table(USERS_BY_WORKSPACE)?, ws, after, take)?,
        None => {
            use std::ops::Bound;
            let start = after.map_or(Bound::Unbounded, Bound::Excluded);
            for item in users.range::<&str>((start, Bound::Unbounded))? {
                if !take(item?.0.value())? {
                    break;
                }
            }
        }
    }
    Ok((out, more))
}

pub fn tokens_of(rtx: &ReadTransaction, user_id: &str) -> Result<Vec<Token>> {
    let tokens = rtx.open_table(TOKENS)?;
    let mut out = Vec::new();
    scan_index(&rtx.open_table(TOKENS_BY_USER)?, user_id, None, |id| {
        if let Some(t) = get_json::<StoredToken>(&tokens, "token", id)? {
            out.push(t.token);
        }
        Ok(true)
    })?;
    Ok(out)
}

/// The caller a bearer secret stands for, if the token exists and has not expired.
pub fn authenticate(rtx: &ReadTransaction, secret: &str) -> Result<Option<Caller>> {
    let hash = hash_secret(secret);
    let Some(token_id) = rtx
        .open_table(TOKEN_HASHES)?
        .get(hash.as_str())?
        .map(|v| v.value().to_string())
    else {
        return Ok(None);
    };
    let Some(stored) = get_json::<StoredToken>(&rtx.open_table(TOKENS)?, "token", &token_id)?
    else {
        return Ok(None);
    };
    if stored
        .token
        .expires_at
        .is_some_and(|t| t <= chrono::Utc::now())
    {
        return Ok(None);
    }
    let Some(user) = get(rtx, &stored.token.user_id)? else {
        return Ok(None);
    };
    Ok(Some(Caller {
        user_id: user.id,
        user_name: user.name,
        token_id,
        roles: user.roles,
    }))
}

/// Whether any platform admin exists (bootstrap runs only once).
pub fn has_platform_admin(rtx: &ReadTransaction) -> Result<bool> {
    let mut found = false;
    scan_index(&rtx.open_table(USERS_BY_WORKSPACE)?, "", None, |_| {
        found = true;
        Ok(false)
    })?;
    Ok(found)
}

pub fn has_platform_admin_tx(tx: &Tx) -> Result<bool> {
    let mut found = false;
    scan_index(&tx.txn.open_table(USERS_BY_WORKSPACE)?, "", None, |_| {
        found = true;
        Ok(false)
    })?;
    Ok(found)
}

impl Tx {
    pub fn user(&self, id: &str) -> Result<Option<User>> {
        get_json(&self.txn.open_table(USERS)?, "user", id)
    }

    pub fn create_user(&mut self, user: &User) -> Result<()> {
        put_json(&mut self.txn.open_table(USERS)?, &user.id, user)?;
        self.txn
            .open_table(USERS_BY_WORKSPACE)?
            .insert((home(user), user.id.as_str()), ())?;
        self.audit(
            "user.create",
            "user",
            &user.id,
            user.workspace_id.as_deref(),
            None,
            None::<&()>,
            Some(user),
        )?;
        Ok(())
    }

    pub fn update_user(&mut self, user: &User) -> Result<User> {
        let before = self.user(&user.id)?.ok_or_else(|| StoreError::NotFound {
            kind: "user",
            id: user.id.clone(),
        })?;
        if home(&before) != home(user) {
            return Err(StoreError::Conflict(
                "a user cannot move to another workspace; create a new user there".into(),
            ));
        }
        put_json(&mut self.txn.open_table(USERS)?, &user.id, user)?;
        self.audit(
            "user.update",
            "user",
            &user.id,
            user.workspace_id.as_deref(),
            None,
            Some(&before),
            Some(user),
        )?;
        Ok(before)
    }

    /// Deletes the user and revokes every token of theirs.
    pub fn delete_user(&mut self, id: &str) -> Result<User> {
        let before = self.user(id)?.ok_or_else(|| StoreError::NotFound {
            kind: "user",
            id: id.to_string(),
        })?;
        let mut token_ids = Vec::new();
        scan_index(&self.txn.open_table(TOKENS_BY_USER)?, id, None, |t| {
            token_ids.push(t.to_string());
            Ok(true)
        })?;
        for t in token_ids {
            self.delete_token(id, &t)?;
        }
        self.txn.open_table(USERS)?.remove(id)?;
        self.txn
            .open_table(USERS_BY_WORKSPACE)?
            .remove((home(&before), id))?;
        self.audit(
            "user.delete",
            "user",
            id,
            before.workspace_id.as_deref(),
            None,
            Some(&before),
            None::<&()>,
        )?;
        Ok(before)
    }

    /// Stores a token under the hash of its secret; the secret itself is never stored.
    pub fn create_token(
        &mut self,
        token: &Token,
        hash: &str,
        workspace_id: Option<&str>,
    ) -> Result<()> {
        let stored = StoredToken {
            token: token.clone(),
            hash: hash.to_string(),
        };
        put_json(&mut self.txn.open_table(TOKENS)?, &token.id, &stored)?;
        self.txn
            .open_table(TOKEN_HASHES)?
            .insert(hash, token.id.as_str())?;
        self.txn
            .open_table(TOKENS_BY_USER)?
            .insert((token.user_id.as_str(), token.id.as_str()), ())?;
        self.audit(
            "token.create",
            "token",
            &token.id,
            workspace_id,
            None,
            None::<&()>,
            Some(token),
        )?;
        Ok(())
    }

    pub fn delete_token(&mut self, user_id: &str, token_id: &str) -> Result<Token> {
        let stored: StoredToken = get_json(&self.txn.open_table(TOKENS)?, "token", token_id)?
            .filter(|t: &StoredToken| t.token.user_id == user_id)
            .ok_or_else(|| StoreError::NotFound {
                kind: "token",
                id: token_id.to_string(),
            })?;
        self.txn.open_table(TOKENS)?.remove(token_id)?;
        self.txn
            .open_table(TOKEN_HASHES)?
            .remove(stored.hash.as_str())?;
        self.txn
            .open_table(TOKENS_BY_USER)?
            .remove((user_id, token_id))?;
        let ws = self.user(user_id)?.and_then(|u| u.workspace_id);
        self.audit(
            "token.delete",
            "token",
            token_id,
            ws.as_deref(),
            None,
            Some(&stored.token),
            None::<&()>,
        )?;
        Ok(stored.token)
    }
}

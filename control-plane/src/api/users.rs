//! `/api/v1/users`, their tokens, and `/api/v1/me`. Platform admins manage everyone; a
//! workspace admin manages the users of their workspace and may grant only roles inside it;
//! everybody manages their own tokens.

use crate::store::ReadTx;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ErrorBody;
use super::extract::{actor, ApiJson, ApiPath, ApiQuery};
use super::{
    decode_page_token, encode_page_token, page_size, require, workspace_for, ApiError, AppState,
    Page,
};
use crate::domain::authz::{Access, Caller, Role, RoleBinding};
use crate::domain::user::{new_secret, NewToken, Token, TokenBody, User, UserBody};
use crate::domain::{is_generated_id, new_id, Violation};
use crate::store;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(me))
        .routes(routes!(list_users, create_user))
        .routes(routes!(get_user, update_user, delete_user))
        .routes(routes!(list_tokens, create_token))
        .routes(routes!(delete_token))
}

#[derive(Serialize, ToSchema)]
pub struct Me {
    pub user_id: String,
    pub name: String,
    pub token_id: String,
    pub roles: Vec<RoleBinding>,
}

#[utoipa::path(get, path = "/api/v1/me", tag = "users", security(("bearer" = [])),
    responses((status = 200, body = Me), (status = 401, body = ErrorBody)))]
async fn me(caller: Caller) -> Json<Me> {
    Json(Me {
        user_id: caller.user_id,
        name: caller.user_name,
        token_id: caller.token_id,
        roles: caller.roles,
    })
}

/// Access to a user record: yourself (read, tokens), or the admins of the user's workspace.
fn user_access(caller: &Caller, user: &User) -> Access {
    let by_role = match &user.workspace_id {
        Some(ws) if caller.workspace_wide(ws) => caller.access(ws, None),
        Some(_) => Access::None,
        None if caller.is_platform_admin() => Access::Admin,
        None => Access::None,
    };
    if caller.user_id == user.id {
        by_role.max(Access::Write)
    } else {
        by_role
    }
}

fn user_for(rtx: &ReadTx, caller: &Caller, id: &str, needed: Access) -> Result<User, ApiError> {
    if !is_generated_id("usr", id) {
        return Err(ApiError::bad_request(
            "invalid_id",
            format!("'{id}' is not a user id (usr_…)"),
        ));
    }
    let user = store::users::get(rtx, id)?.ok_or_else(|| ApiError::not_found("user", id))?;
    require(user_access(caller, &user), needed, "user", id)?;
    Ok(user)
}

/// Checks that the caller may grant these roles, fills in the workspace of database-bound
/// roles, and returns the user's workspace.
fn resolve_roles(
    rtx: &ReadTx,
    caller: &Caller,
    body: &mut UserBody,
) -> Result<Option<String>, ApiError> {
    let mut problems = body.check();
    for (i, b) in body.roles.iter_mut().enumerate() {
        let path = format!("roles[{i}]");
        if b.role == Role::PlatformAdmin {
            if !caller.is_platform_admin() {
                problems.push(Violation::new(
                    path,
                    "only platform admins may grant platform-admin",
                ));
            }
            continue;
        }
        if let Some(db_id) = &b.database_id {
            match store::databases::get(rtx, db_id)?
                .filter(|db| caller.access(&db.workspace_id, None) == Access::Admin)
            {
                None => problems.push(Violation::new(
                    format!("{path}.database_id"),
                    format!("no database '{db_id}' in a workspace you administer"),
                )),
                Some(db)
                    if b.workspace_id
                        .as_ref()
                        .is_some_and(|w| *w != db.workspace_id) =>
                {
                    problems.push(Violation::new(
                        format!("{path}.workspace_id"),
                        format!(
                            "database '{db_id}' is not in workspace '{}'",
                            b.workspace_id.as_deref().unwrap_or_default()
                        ),
                    ))
                }
                Some(db) => b.workspace_id = Some(db.workspace_id),
            }
        } else if let Some(ws) = &b.workspace_id {
            let visible = store::workspaces::get(rtx, ws)?.is_some()
                && caller.access(ws, None) == Access::Admin;
            if !visible {
                problems.push(Violation::new(
                    format!("{path}.workspace_id"),
                    format!("no workspace '{ws}' that you administer"),
                ));
            }
        }
    }
    if !problems.is_empty() {
        return Err(ApiError::validation(problems));
    }
    body.home_workspace()
        .map_err(|v| ApiError::validation(vec![v]))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct UserQuery {
    /// Only users of this workspace.
    workspace: Option<String>,
    page_size: Option<i64>,
    page_token: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/users", tag = "users", params(UserQuery), security(("bearer" = [])),
    responses((status = 200, body = Page<User>), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn list_users(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<UserQuery>,
) -> Result<Page<User>, ApiError> {
    let size = page_size(q.page_size)?;
    let after = decode_page_token(q.page_token.as_deref(), |s| is_generated_id("usr", s))?;
    let rtx = state.store.read()?;
    let scope = match (&q.workspace, caller.is_platform_admin()) {
        (Some(ws), _) => {
            workspace_for(&rtx, &caller, ws, Access::Read)?;
            Some(ws.clone())
        }
        (None, true) => None,
        (None, false) => caller.roles.iter().find_map(|b| b.workspace_id.clone()),
    };
    let (mut items, more) = store::users::list(&rtx, scope.as_deref(), after.as_deref(), size)?;
    items.retain(|u| user_access(&caller, u) >= Access::Read);
    let next_page_token =
        more.then(|| encode_page_token(&items.last().map_or(String::new(), |u| u.id.clone())));
    Ok(Page {
        items,
        next_page_token,
    })
}

#[utoipa::path(post, path = "/api/v1/users", tag = "users", request_body = UserBody, security(("bearer" = [])),
    responses((status = 201, body = User), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn create_user(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(mut body): ApiJson<UserBody>,
) -> Result<(StatusCode, Json<User>), ApiError> {
    if !caller.is_platform_admin() && !caller.roles.iter().any(|b| b.role == Role::WorkspaceAdmin) {
        return Err(ApiError::forbidden(
            "only platform and workspace admins create users",
        ));
    }
    let home = resolve_roles(&state.store.read()?, &caller, &mut body)?;
    let now = chrono::Utc::now();
    let user = User {
        id: new_id("usr"),
        name: body.name.trim().to_string(),
        email: body.email,
        workspace_id: home,
        roles: body.roles,
        created_at: now,
        updated_at: now,
    };
    let stored = user.clone();
    state
        .store
        .write(actor(&caller), move |tx| tx.create_user(&stored))
        .await?;
    Ok((StatusCode::CREATED, Json(user)))
}

#[utoipa::path(get, path = "/api/v1/users/{id}", tag = "users", params(("id" = String, Path)), security(("bearer" = [])),
    responses((status = 200, body = User), (status = 404, body = ErrorBody)))]
async fn get_user(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<User>, ApiError> {
    Ok(Json(user_for(
        &state.store.read()?,
        &caller,
        &id,
        Access::Read,
    )?))
}

#[utoipa::path(put, path = "/api/v1/users/{id}", tag = "users", params(("id" = String, Path)), request_body = UserBody,
    security(("bearer" = [])),
    responses((status = 200, body = User), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn update_user(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(mut body): ApiJson<UserBody>,
) -> Result<Json<User>, ApiError> {
    let rtx = state.store.read()?;
    let existing = user_for(&rtx, &caller, &id, Access::Read)?;
    if existing.id == caller.user_id {
        return Err(ApiError::forbidden(
            "you cannot change your own user and roles; ask another admin",
        ));
    }
    require(user_access(&caller, &existing), Access::Admin, "user", &id)?;
    let home = resolve_roles(&rtx, &caller, &mut body)?;
    drop(rtx);
    let user = User {
        id: existing.id.clone(),
        name: body.name.trim().to_string(),
        email: body.email,
        workspace_id: home,
        roles: body.roles,
        created_at: existing.created_at,
        updated_at: chrono::Utc::now(),
    };
    let stored = user.clone();
    state
        .store
        .write(actor(&caller), move |tx| tx.update_user(&stored))
        .await?;
    Ok(Json(user))
}

#[utoipa::path(delete, path = "/api/v1/users/{id}", tag = "users", params(("id" = String, Path)), security(("bearer" = [])),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn delete_user(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let existing = user_for(&state.store.read()?, &caller, &id, Access::Read)?;
    if existing.id == caller.user_id {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            "you cannot delete yourself; ask another admin",
        ));
    }
    require(user_access(&caller, &existing), Access::Admin, "user", &id)?;
    state
        .store
        .write(actor(&caller), move |tx| tx.delete_user(&id))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/users/{id}/tokens", tag = "users", params(("id" = String, Path)), security(("bearer" = [])),
    responses((status = 200, body = Vec<Token>), (status = 404, body = ErrorBody)))]
async fn list_tokens(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Vec<Token>>, ApiError> {
    let rtx = state.store.read()?;
    user_for(&rtx, &caller, &id, Access::Write)?;
    Ok(Json(store::users::tokens_of(&rtx, &id)?))
}

#[utoipa::path(post, path = "/api/v1/users/{id}/tokens", tag = "users", params(("id" = String, Path)), request_body = TokenBody,
    security(("bearer" = [])),
    responses((status = 201, body = NewToken, description = "The secret is in the answer once and never again"),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn create_token(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<TokenBody>,
) -> Result<(StatusCode, Json<NewToken>), ApiError> {
    let user = user_for(&state.store.read()?, &caller, &id, Access::Write)?;
    let problems = body.check();
    if !problems.is_empty() {
        return Err(ApiError::validation(problems));
    }
    let now = chrono::Utc::now();
    let token = Token {
        id: new_id("tok"),
        user_id: user.id.clone(),
        name: body.name.trim().to_string(),
        created_at: now,
        expires_at: body
            .expires_in_days
            .map(|d| now + chrono::Duration::days(d)),
    };
    let (secret, hash) = new_secret();
    let stored = token.clone();
    state
        .store
        .write(actor(&caller), move |tx| {
            tx.create_token(&stored, &hash, user.workspace_id.as_deref())
        })
        .await?;
    Ok((StatusCode::CREATED, Json(NewToken { token, secret })))
}

#[utoipa::path(delete, path = "/api/v1/users/{id}/tokens/{token_id}", tag = "users",
    params(("id" = String, Path), ("token_id" = String, Path)), security(("bearer" = [])),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn delete_token(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((id, token_id)): ApiPath<(String, String)>,
) -> Result<StatusCode, ApiError> {
    user_for(&state.store.read()?, &caller, &id, Access::Write)?;
    if !is_generated_id("tok", &token_id) {
        return Err(ApiError::bad_request(
            "invalid_id",
            format!("'{token_id}' is not a token id (tok_…)"),
        ));
    }
    state
        .store
        .write(actor(&caller), move |tx| {
            tx.delete_token(&id, &token_id).map(|_| ())
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

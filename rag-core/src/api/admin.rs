//! `/api/v1/admin/*`: manage the caller's organization. Needs the `admin` scope; every
//! operation is confined to the caller's organization (others' ids answer 404).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::ApiError;
use super::extract::{ApiJson, Auth, Ctx};
use super::state::AppState;
use crate::tenancy::{self, PLANS, Role, Scope};

fn plan_limit(state: &AppState, plan: &str) -> i64 {
    let t = &state.cfg.tenancy;
    match plan {
        "pro" => t.chunk_limit_pro,
        "enterprise" => t.chunk_limit_enterprise,
        _ => t.chunk_limit_free,
    }
}

fn check_name(field: &str, v: &str) -> Result<String, ApiError> {
    let v = v.trim();
    if v.is_empty() || v.chars().count() > 200 || v.chars().any(char::is_control) {
        return Err(ApiError::unprocessable(
            "invalid_request",
            format!("{field} must be 1–200 printable characters"),
        ));
    }
    Ok(v.to_string())
}

fn conflict(e: crate::store::StoreError, what: &str) -> ApiError {
    match &e {
        crate::store::StoreError::Sqlite(rusqlite::Error::SqliteFailure(f, _))
            if f.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                format!("{what} already exists"),
            )
        }
        _ => e.into(),
    }
}

pub async fn organization(
    State(state): State<AppState>,
    Ctx(ctx): Ctx,
    auth: Auth,
) -> Result<axum::Json<Value>, ApiError> {
    let org_id = auth.require(Scope::Admin)?.organization_id.clone();
    let org = state
        .store
        .read(move |c| tenancy::get_organization(c, &org_id))
        .await?
        .ok_or_else(ApiError::internal)?;
    Ok(axum::Json(
        json!({"organization": org, "request_id": ctx.request_id}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewOrganization {
    name: String,
    owner_email: String,
    #[serde(default)]
    plan: Option<String>,
}

/// Creates a new organization (a sign-up on behalf of someone): its default workspace, its
/// owner and an admin key for that owner, shown once.
pub async fn create_organization(
    State(state): State<AppState>,
    Ctx(ctx): Ctx,
    auth: Auth,
    ApiJson(body): ApiJson<NewOrganization>,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    auth.require(Scope::Admin)?;
    let name = check_name("name", &body.name)?;
    let email = check_name("owner_email", &body.owner_email)?;
    let plan = body.plan.unwrap_or_else(|| "free".into());
    if !PLANS.contains(&plan.as_str()) {
        return Err(ApiError::unprocessable(
            "invalid_request",
            format!("plan must be one of {PLANS:?}"),
        ));
    }
    let limit = plan_limit(&state, &plan);
    let trial = state.cfg.tenancy.trial_days;
    let b = state
        .store
        .write(move |c| tenancy::bootstrap_org(c, &name, &email, &plan, limit, trial))
        .await?;
    tracing::info!(event = "audit.organization.created", new_organization_id = %b.organization_id, "organization created");
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({
            "organization_id": b.organization_id, "workspace_id": b.workspace_id, "user_id": b.user_id,
            "api_key": b.api_key, "request_id": ctx.request_id,
        })),
    ))
}

pub async fn list_workspaces(
    State(state): State<AppState>,
    Ctx(ctx): Ctx,
    auth: Auth,
) -> Result<axum::Json<Value>, ApiError> {
    let org = auth.require(Scope::Admin)?.organization_id.clone();
    let ws = state
        .store
        .read(move |c| tenancy::list_workspaces(c, &org))
        .await?;
    Ok(axum::Json(
        json!({"workspaces": ws, "request_id": ctx.request_id}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewWorkspace {
    name: String,
}

pub async fn create_workspace(
    State(state): State<AppState>,
    Ctx(ctx): Ctx,
    auth: Auth,
    ApiJson(body): ApiJson<NewWorkspace>,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    let p = auth.require(Scope::Admin)?;
    let name = check_name("name", &body.name)?;
    let limit = plan_limit(&state, &p.plan);
    let org = p.organization_id.clone();
    let ws = state
        .store
        .write(move |c| tenancy::create_workspace(c, &org, &name, limit))
        .await?;
    tracing::info!(event = "audit.workspace.created", new_workspace_id = %ws.id, "workspace created");
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({"workspace": ws, "request_id": ctx.request_id})),
    ))
}

pub async fn list_users(
    State(state): State<AppState>,
    Ctx(ctx): Ctx,
    auth: Auth,
) -> Result<axum::Json<Value>, ApiError> {
    let org = auth.require(Scope::Admin)?.organization_id.clone();
    let users = state
        .store
        .read(move |c| tenancy::list_users(c, &org))
        .await?;
    Ok(axum::Json(
        json!({"users": users, "request_id": ctx.request_id}),
    ))
}

fn parse_role(s: &str) -> Result<Role, ApiError> {
    Role::parse(s).ok_or_else(|| {
        ApiError::unprocessable(
            "invalid_request",
            "role must be owner, admin, editor or reader",
        )
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    email: String,
    role: String,
}

pub async fn create_user(
    State(state): State<AppState>,
    Ctx(ctx): Ctx,
    auth: Auth,
    ApiJson(body): ApiJson<NewUser>,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    let p = auth.require(Scope::Admin)?;
    let role = parse_role(&body.role)?;
    if role == Role::Owner && p.role != Role::Owner {
        return Err(ApiError::forbidden(
            "only an owner can create another owner",
        ));
    }
    let email = check_name("email", &body.email)?;
    if !email.contains('@') {
        return Err(ApiError::unprocessable(
            "invalid_request",
            "email must contain @",
        ));
    }
    let org = p.organization_id.clone();
    let user = state
        .store
        .write(move |c| tenancy::create_user(c, &org, &email, role))
        .await
        .map_err(|e| conflict(e, "a user with this email"))?;
    tracing::info!(event = "audit.user.created", target_user_id = %user.id, role = role.as_str(), "user created");
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({"user": user, "request_id": ctx.request_id})),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleChange {
    role: String,
}

pub async fn change_role(
    State(state): State<AppState>,
    Ctx(ctx): Ctx,
    auth: Auth,
    Path(user_id): Path<String>,
    ApiJson(body): ApiJson<RoleChange>,
) -> Result<axum::Json<Value>, ApiError> {
    let p = auth.require(Scope::Admin)?;
    let role = parse_role(&body.role)?;
    let org = p.organization_id.clone();
    let caller_role = p.role;
    let target = user_id.clone();
    let outcome = state
        .store
        .write(move |c| {
            let tx = c.transaction()?;
            let Some(current) = tenancy::user_role(&tx, &target, &org)? else {
                return Ok(Err("not_found"));
            };
            if (current == Role::Owner || role == Role::Owner) && caller_role != Role::Owner {
                return Ok(Err("owner_only"));
            }
            if current == Role::Owner
                && role != Role::Owner
                && tenancy::count_owners(&tx, &org)? <= 1
            {
                return Ok(Err("last_owner"));
            }
            tenancy::set_user_role(&tx, &target, &org, role)?;
            tx.commit()?;
            Ok(Ok(()))
        })
        .await?;
    match outcome {
        Ok(()) => {
            tracing::info!(event = "audit.user.role_changed", target_user_id = %user_id, role = role.as_str(), "role changed");
            Ok(axum::Json(
                json!({"user_id": user_id, "role": role, "request_id": ctx.request_id}),
            ))
        }
        Err("not_found") => Err(ApiError::not_found(format!(
            "no user {user_id:?} in this organization"
        ))),
        Err("last_owner") => Err(ApiError::new(
            StatusCode::CONFLICT,
            "last_owner",
            "an organization keeps at least one owner",
        )),
        Err(_) => Err(ApiError::forbidden(
            "only an owner can grant or remove the owner role",
        )),
    }
}

pub async fn list_keys(
    State(state): State<AppState>,
    Ctx(ctx): Ctx,
    auth: Auth,
) -> Result<axum::Json<Value>, ApiError> {
    let org = auth.require(Scope::Admin)?.organization_id.clone();
    let keys = state
        .store
        .read(move |c| tenancy::list_keys(c, &org))
        .await?;
    Ok(axum::Json(
        json!({"keys": keys, "request_id": ctx.request_id}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    workspace_id: Option<String>,
    #[serde(default)]
    user_id: Option<String>,
    scopes: Vec<String>,
}

pub async fn create_key(
    State(state): State<AppState>,
    Ctx(ctx): Ctx,
    auth: Auth,
    ApiJson(body): ApiJson<NewKey>,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    let p = auth.require(Scope::Admin)?.clone();
    let scopes = body
        .scopes
        .iter()
        .map(|s| {
            Scope::parse(s).ok_or_else(|| {
                ApiError::unprocessable(
                    "invalid_request",
                    format!("unknown scope {s:?}; use read, write, admin"),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if scopes.is_empty() {
        return Err(ApiError::unprocessable(
            "invalid_request",
            "a key needs at least one scope",
        ));
    }
    let name = check_name("name", body.name.as_deref().unwrap_or("api key"))?;
    let ws = body.workspace_id.unwrap_or_else(|| p.workspace_id.clone());
    let user = body.user_id.unwrap_or_else(|| p.user_id.clone());
    let org = p.organization_id.clone();
    let created = state
        .store
        .write(move |c| {
            if !tenancy::workspace_in_org(c, &ws, &org)? {
                return Ok(Err(format!("no workspace {ws:?} in this organization")));
            }
            let Some(role) = tenancy::user_role(c, &user, &org)? else {
                return Ok(Err(format!("no user {user:?} in this organization")));
            };
            if let Some(s) = scopes.iter().find(|s| !role.allows(**s)) {
                return Ok(Err(format!(
                    "a {} cannot hold the {} scope",
                    role.as_str(),
                    s.as_str()
                )));
            }
            Ok(Ok(tenancy::create_key(c, &ws, &user, &name, &scopes)?))
        })
        .await?;
    match created {
        Ok(k) => {
            tracing::info!(event = "audit.api_key.created", key_id = %k.info.id, key_workspace_id = %k.info.workspace_id, "API key created");
            let mut v = serde_json::to_value(&k).map_err(|_| ApiError::internal())?;
            v["request_id"] = json!(ctx.request_id);
            Ok((StatusCode::CREATED, axum::Json(v)))
        }
        Err(msg) if msg.starts_with("no ") => Err(ApiError::not_found(msg)),
        Err(msg) => Err(ApiError::unprocessable("invalid_request", msg)),
    }
}

pub async fn revoke_key(
    State(state): State<AppState>,
    Ctx(ctx): Ctx,
    auth: Auth,
    Path(key_id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    let org = auth.require(Scope::Admin)?.organization_id.clone();
    let id = key_id.clone();
    if !state
        .store
        .write(move |c| tenancy::revoke_key(c, &id, &org))
        .await?
    {
        return Err(ApiError::not_found(format!(
            "no active key {key_id:?} in this organization"
        )));
    }
    tracing::info!(event = "audit.api_key.revoked", key_id = %key_id, "API key revoked");
    Ok(axum::Json(
        json!({"revoked": key_id, "request_id": ctx.request_id}),
    ))
}

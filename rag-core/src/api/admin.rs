//! `/api/v1/admin/*`: manage the caller's organization. Needs the `admin` scope; every
//! operation is confined to the caller's organization (others' ids answer 404).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::ApiError;
use super::extract::{ApiJson, Auth, Ctx};
use super::state::AppState;
use crate::audit::{self, Origin};
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
    let origin = Origin::api(auth.require(Scope::Admin)?, &ctx.request_id);
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
        .write(move |c| tenancy::bootstrap_org(c, &name, &email, &plan, limit, trial, &origin))
        .await?;
    b.audit.log();
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
    let origin = Origin::api(p, &ctx.request_id);
    let (ws, rec) = state
        .store
        .write(move |c| {
            let tx = c.transaction()?;
            let ws = tenancy::create_workspace(&tx, &org, &name, limit)?;
            let rec = audit::append(
                &tx,
                origin
                    .event("workspace.created")
                    .organization(&org)
                    .workspace(&ws.id)
                    .target(ws.id.clone())
                    .after(json!({"name": ws.name, "chunk_limit": ws.chunk_limit})),
            )?;
            tx.commit()?;
            Ok((ws, rec))
        })
        .await?;
    rec.log();
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
    let origin = Origin::api(p, &ctx.request_id);
    let (user, rec) = state
        .store
        .write(move |c| {
            let tx = c.transaction()?;
            let user = tenancy::create_user(&tx, &org, &email, role)?;
            // The email is personal data: the record names the user by id only.
            let rec = audit::append(
                &tx,
                origin
                    .event("user.created")
                    .organization(&org)
                    .target(user.id.clone())
                    .after(json!({"role": role.as_str()})),
            )?;
            tx.commit()?;
            Ok((user, rec))
        })
        .await
        .map_err(|e| conflict(e, "a user with this email"))?;
    rec.log();
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
    let origin = Origin::api(p, &ctx.request_id);
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
            let rec = audit::append(
                &tx,
                origin
                    .event("user.role_changed")
                    .organization(&org)
                    .target(target.clone())
                    .before(json!({"role": current.as_str()}))
                    .after(json!({"role": role.as_str()})),
            )?;
            tx.commit()?;
            Ok(Ok(rec))
        })
        .await?;
    match outcome {
        Ok(rec) => {
            rec.log();
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
    let origin = Origin::api(&p, &ctx.request_id);
    let created = state
        .store
        .write(move |c| {
            let c = c.transaction()?;
            if !tenancy::workspace_in_org(&c, &ws, &org)? {
                return Ok(Err(format!("no workspace {ws:?} in this organization")));
            }
            let Some(role) = tenancy::user_role(&c, &user, &org)? else {
                return Ok(Err(format!("no user {user:?} in this organization")));
            };
            if let Some(s) = scopes.iter().find(|s| !role.allows(**s)) {
                return Ok(Err(format!(
                    "a {} cannot hold the {} scope",
                    role.as_str(),
                    s.as_str()
                )));
            }
            let k = tenancy::create_key(&c, &ws, &user, &name, &scopes)?;
            let rec = audit::append(
                &c,
                origin
                    .event("api_key.created")
                    .organization(&org)
                    .workspace(&ws)
                    .target(k.info.id.clone())
                    .after(json!({
                        "name": k.info.name, "prefix": k.info.prefix, "user_id": k.info.user_id,
                        "scopes": k.info.scopes,
                    })),
            )?;
            c.commit()?;
            Ok(Ok((k, rec)))
        })
        .await?;
    match created {
        Ok((k, rec)) => {
            rec.log();
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
    let p = auth.require(Scope::Admin)?;
    let org = p.organization_id.clone();
    let origin = Origin::api(p, &ctx.request_id);
    let id = key_id.clone();
    let revoked = state
        .store
        .write(move |c| {
            let tx = c.transaction()?;
            if !tenancy::revoke_key(&tx, &id, &org)? {
                return Ok(None);
            }
            let rec = audit::append(
                &tx,
                origin
                    .event("api_key.revoked")
                    .organization(&org)
                    .target(id.clone()),
            )?;
            tx.commit()?;
            Ok(Some(rec))
        })
        .await?;
    let Some(rec) = revoked else {
        return Err(ApiError::not_found(format!(
            "no active key {key_id:?} in this organization"
        )));
    };
    rec.log();
    Ok(axum::Json(
        json!({"revoked": key_id, "request_id": ctx.request_id}),
    ))
}

//! Tenancy records and the operations on them (blocking; run through `Store`).

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use super::keys;
use crate::obs::context::random_hex;
use crate::store::StoreError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Read,
    Write,
    Admin,
}

impl Scope {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "read" => Some(Self::Read),
            "write" => Some(Self::Write),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Admin => "admin",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Owner,
    Admin,
    Editor,
    Reader,
}

impl Role {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "owner" => Some(Self::Owner),
            "admin" => Some(Self::Admin),
            "editor" => Some(Self::Editor),
            "reader" => Some(Self::Reader),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Owner => "owner",
            Self::Admin => "admin",
            Self::Editor => "editor",
            Self::Reader => "reader",
        }
    }
    /// The most a key of a user with this role may do, whatever scopes the key lists.
    pub fn allows(self, scope: Scope) -> bool {
        match self {
            Self::Owner | Self::Admin => true,
            Self::Editor => scope != Scope::Admin,
            Self::Reader => scope == Scope::Read,
        }
    }
}

pub const PLANS: &[&str] = &["free", "pro", "enterprise"];
/// `incomplete`, `unpaid` and `paused` mirror Stripe's subscription statuses (docs/billing.md).
pub const BILLING_STATUSES: &[&str] = &[
    "trialing",
    "active",
    "past_due",
    "canceled",
    "expired",
    "incomplete",
    "unpaid",
    "paused",
];

/// Who is calling, resolved from an API key.
#[derive(Debug, Clone, Serialize)]
pub struct Principal {
    pub key_id: String,
    pub user_id: String,
    pub role: Role,
    pub workspace_id: String,
    #[serde(skip)]
    pub workspace_seq: i64,
    pub organization_id: String,
    pub plan: String,
    pub billing_status: String,
    /// The organization's trial and subscription ends, so the billing guard decides from
    /// the principal without another read.
    #[serde(skip)]
    pub trial_ends_at: Option<String>,
    #[serde(skip)]
    pub subscription_expires_at: Option<String>,
    pub scopes: Vec<Scope>,
    pub chunk_total: i64,
    pub chunk_limit: i64,
}

impl Principal {
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }
}

pub fn now() -> String {
    crate::obs::log::timestamp_now()
}

pub fn new_id(kind: &str) -> String {
    format!("{kind}_{}", random_hex(8))
}

/// Looks a presented key up; None for unknown, malformed or revoked keys.
pub fn resolve_key(conn: &Connection, presented: &str) -> Result<Option<Principal>, StoreError> {
    let Some(prefix) = keys::prefix_of(presented) else {
        return Ok(None);
    };
    let row = conn
        .query_row(
            "SELECT k.id, k.hash, k.scopes, k.revoked_at, u.id, u.role, w.id, w.seq, \
                    o.id, o.plan, o.billing_status, w.chunk_count, w.chunk_limit, \
                    o.trial_ends_at, o.subscription_expires_at \
             FROM api_keys k JOIN users u ON u.id = k.user_id \
             JOIN workspaces w ON w.id = k.workspace_id \
             JOIN organizations o ON o.id = w.organization_id \
             WHERE k.prefix = ?1 AND w.deleting_at IS NULL",
            [prefix],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Option<String>>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, String>(5)?,
                    r.get::<_, String>(6)?,
                    r.get::<_, i64>(7)?,
                    r.get::<_, String>(8)?,
                    r.get::<_, String>(9)?,
                    r.get::<_, String>(10)?,
                    r.get::<_, i64>(11)?,
                    r.get::<_, i64>(12)?,
                    r.get::<_, Option<String>>(13)?,
                    r.get::<_, Option<String>>(14)?,
                ))
            },
        )
        .optional()?;
    let Some((
        key_id,
        hash,
        scopes,
        revoked,
        user_id,
        role,
        ws_id,
        ws_seq,
        org_id,
        plan,
        billing,
        count,
        limit,
        trial_ends_at,
        subscription_expires_at,
    )) = row
    else {
        return Ok(None);
    };
    if revoked.is_some() || !keys::digest_eq(&keys::hash_key(presented), &hash) {
        return Ok(None);
    }
    let role = Role::parse(&role).unwrap_or(Role::Reader);
    let scopes = scopes
        .split(',')
        .filter_map(Scope::parse)
        .filter(|s| role.allows(*s))
        .collect();
    Ok(Some(Principal {
        key_id,
        user_id,
        role,
        workspace_id: ws_id,
        workspace_seq: ws_seq,
        organization_id: org_id,
        plan,
        billing_status: billing,
        trial_ends_at,
        subscription_expires_at,
        scopes,
        chunk_total: count,
        chunk_limit: limit,
    }))
}

#[derive(Debug, Serialize)]
pub struct Organization {
    pub id: String,
    pub name: String,
    pub plan: String,
    pub billing_status: String,
    pub trial_ends_at: Option<String>,
    pub subscription_expires_at: Option<String>,
    pub created_at: String,
}

#[derive(Debug, Serialize)]
pub struct Workspace {
    pub id: String,
    pub organization_id: String,
    pub name: String,
    pub chunk_limit: i64,
    pub chunk_count: i64,
    pub created_at: String,
}

#[derive(Debug, Serialize)]
pub struct User {
    pub id: String,
    pub organization_id: String,
    pub email: String,
    pub role: Role,
    pub created_at: String,
}

#[derive(Debug, Serialize)]
pub struct ApiKeyInfo {
    pub id: String,
    pub prefix: String,
    pub workspace_id: String,
    pub user_id: String,
    pub name: String,
    pub scopes: Vec<Scope>,
    pub created_at: String,
    pub revoked_at: Option<String>,
}

/// A freshly created key: the only time the secret is visible.
#[derive(Debug, Serialize)]
pub struct CreatedKey {
    #[serde(flatten)]
    pub info: ApiKeyInfo,
    pub api_key: String,
}

pub fn create_organization(
    conn: &Connection,
    name: &str,
    plan: &str,
    trial_days: i64,
) -> Result<Organization, StoreError> {
    let org = Organization {
        id: new_id("org"),
        name: name.to_string(),
        plan: plan.to_string(),
        billing_status: "trialing".into(),
        trial_ends_at: Some(
            (chrono::Utc::now() + chrono::Duration::days(trial_days))
                .format("%Y-%m-%dT%H:%M:%S%.3fZ")
                .to_string(),
        ),
        subscription_expires_at: None,
        created_at: now(),
    };
    conn.execute(
        "INSERT INTO organizations (id, name, plan, billing_status, trial_ends_at, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            org.id,
            org.name,
            org.plan,
            org.billing_status,
            org.trial_ends_at,
            org.created_at
        ],
    )?;
    Ok(org)
}

pub fn create_workspace(
    conn: &Connection,
    organization_id: &str,
    name: &str,
    chunk_limit: i64,
) -> Result<Workspace, StoreError> {
    let ws = Workspace {
        id: new_id("ws"),
        organization_id: organization_id.to_string(),
        name: name.to_string(),
        chunk_limit,
        chunk_count: 0,
        created_at: now(),
    };
    conn.execute(
        "INSERT INTO workspaces (id, organization_id, name, chunk_limit, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![ws.id, ws.organization_id, ws.name, ws.chunk_limit, ws.created_at],
    )?;
    Ok(ws)
}

pub fn create_user(
    conn: &Connection,
    organization_id: &str,
    email: &str,
    role: Role,
) -> Result<User, StoreError> {
    let user = User {
        id: new_id("usr"),
        organization_id: organization_id.to_string(),
        email: email.to_string(),
        role,
        created_at: now(),
    };
    conn.execute(
        "INSERT INTO users (id, organization_id, email, role, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![user.id, user.organization_id, user.email, role.as_str(), user.created_at],
    )?;
    Ok(user)
}

pub fn create_key(
    conn: &Connection,
    workspace_id: &str,
    user_id: &str,
    name: &str,
    scopes: &[Scope],
) -> Result<CreatedKey, StoreError> {
    let k = keys::generate();
    let mut scopes = scopes.to_vec();
    scopes.sort();
    scopes.dedup();
    let info = ApiKeyInfo {
        id: new_id("key"),
        prefix: k.prefix.clone(),
        workspace_id: workspace_id.to_string(),
        user_id: user_id.to_string(),
        name: name.to_string(),
        scopes: scopes.clone(),
        created_at: now(),
        revoked_at: None,
    };
    let scope_text: Vec<&str> = scopes.iter().map(|s| s.as_str()).collect();
    conn.execute(
        "INSERT INTO api_keys (id, prefix, hash, workspace_id, user_id, name, scopes, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            info.id,
            info.prefix,
            k.hash,
            info.workspace_id,
            info.user_id,
            info.name,
            scope_text.join(","),
            info.created_at
        ],
    )?;
    Ok(CreatedKey {
        info,
        api_key: k.key,
    })
}

#[derive(Debug, Serialize)]
pub struct Bootstrap {
    pub organization_id: String,
    pub workspace_id: String,
    pub user_id: String,
    pub api_key: String,
    /// The `organization.created` audit record; log it (`Record::log`) once committed.
    #[serde(skip)]
    pub audit: crate::audit::Record,
}

/// Creates an organization with one workspace, an owner and an admin key, in one
/// transaction.
pub fn bootstrap_org(
    conn: &mut Connection,
    org_name: &str,
    email: &str,
    plan: &str,
    chunk_limit: i64,
    trial_days: i64,
    origin: &crate::audit::Origin,
) -> Result<Bootstrap, StoreError> {
    let tx = conn.transaction()?;
    let org = create_organization(&tx, org_name, plan, trial_days)?;
    let ws = create_workspace(&tx, &org.id, "default", chunk_limit)?;
    let user = create_user(&tx, &org.id, email, Role::Owner)?;
    let key = create_key(
        &tx,
        &ws.id,
        &user.id,
        "bootstrap",
        &[Scope::Read, Scope::Write, Scope::Admin],
    )?;
    let audit = crate::audit::append(
        &tx,
        origin
            .event("organization.created")
            .organization(&org.id)
            .workspace(&ws.id)
            .target(org.id.clone())
            .after(serde_json::json!({
                "name": org.name, "plan": org.plan, "billing_status": org.billing_status,
                "trial_ends_at": org.trial_ends_at, "workspace_id": ws.id,
                "owner_user_id": user.id, "key_id": key.info.id,
            })),
    )?;
    tx.commit()?;
    Ok(Bootstrap {
        organization_id: org.id,
        workspace_id: ws.id,
        user_id: user.id,
        api_key: key.api_key,
        audit,
    })
}

pub fn is_empty(conn: &Connection) -> Result<bool, StoreError> {
    let n: i64 = conn.query_row("SELECT COUNT(*) FROM organizations", [], |r| r.get(0))?;
    Ok(n == 0)
}

pub fn get_organization(conn: &Connection, id: &str) -> Result<Option<Organization>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT id, name, plan, billing_status, trial_ends_at, subscription_expires_at, created_at \
             FROM organizations WHERE id = ?1",
            [id],
            |r| {
                Ok(Organization {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    plan: r.get(2)?,
                    billing_status: r.get(3)?,
                    trial_ends_at: r.get(4)?,
                    subscription_expires_at: r.get(5)?,
                    created_at: r.get(6)?,
                })
            },
        )
        .optional()?)
}

pub fn list_workspaces(
    conn: &Connection,
    organization_id: &str,
) -> Result<Vec<Workspace>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT id, organization_id, name, chunk_limit, chunk_count, created_at FROM workspaces \
         WHERE organization_id = ?1 AND deleting_at IS NULL ORDER BY seq",
    )?;
    let rows = stmt.query_map([organization_id], |r| {
        Ok(Workspace {
            id: r.get(0)?,
            organization_id: r.get(1)?,
            name: r.get(2)?,
            chunk_limit: r.get(3)?,
            chunk_count: r.get(4)?,
            created_at: r.get(5)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// True when the workspace exists, belongs to the organization and is not being deleted.
pub fn workspace_in_org(
    conn: &Connection,
    workspace_id: &str,
    organization_id: &str,
) -> Result<bool, StoreError> {
    Ok(conn
        .query_row(
            "SELECT 1 FROM workspaces WHERE id = ?1 AND organization_id = ?2 AND deleting_at IS NULL",
            [workspace_id, organization_id],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

pub fn list_users(conn: &Connection, organization_id: &str) -> Result<Vec<User>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT id, organization_id, email, role, created_at FROM users WHERE organization_id = ?1 ORDER BY created_at, id",
    )?;
    let rows = stmt.query_map([organization_id], |r| {
        Ok(User {
            id: r.get(0)?,
            organization_id: r.get(1)?,
            email: r.get(2)?,
            role: Role::parse(&r.get::<_, String>(3)?).unwrap_or(Role::Reader),
            created_at: r.get(4)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn user_role(
    conn: &Connection,
    user_id: &str,
    organization_id: &str,
) -> Result<Option<Role>, StoreError> {
    let role: Option<String> = conn
        .query_row(
            "SELECT role FROM users WHERE id = ?1 AND organization_id = ?2",
            [user_id, organization_id],
            |r| r.get(0),
        )
        .optional()?;
    Ok(role.as_deref().and_then(Role::parse))
}

pub fn set_user_role(
    conn: &Connection,
    user_id: &str,
    organization_id: &str,
    role: Role,
) -> Result<bool, StoreError> {
    let n = conn.execute(
        "UPDATE users SET role = ?1 WHERE id = ?2 AND organization_id = ?3",
        params![role.as_str(), user_id, organization_id],
    )?;
    Ok(n == 1)
}

pub fn count_owners(conn: &Connection, organization_id: &str) -> Result<i64, StoreError> {
    Ok(conn.query_row(
        "SELECT COUNT(*) FROM users WHERE organization_id = ?1 AND role = 'owner'",
        [organization_id],
        |r| r.get(0),
    )?)
}

pub fn list_keys(conn: &Connection, organization_id: &str) -> Result<Vec<ApiKeyInfo>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT k.id, k.prefix, k.workspace_id, k.user_id, k.name, k.scopes, k.created_at, k.revoked_at \
         FROM api_keys k JOIN workspaces w ON w.id = k.workspace_id \
         WHERE w.organization_id = ?1 ORDER BY k.created_at, k.id",
    )?;
    let rows = stmt.query_map([organization_id], |r| {
        Ok(ApiKeyInfo {
            id: r.get(0)?,
            prefix: r.get(1)?,
            workspace_id: r.get(2)?,
            user_id: r.get(3)?,
            name: r.get(4)?,
            scopes: r
                .get::<_, String>(5)?
                .split(',')
                .filter_map(Scope::parse)
                .collect(),
            created_at: r.get(6)?,
            revoked_at: r.get(7)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Revokes a key of the organization; false when no such key (or another org's).
pub fn revoke_key(
    conn: &Connection,
    key_id: &str,
    organization_id: &str,
) -> Result<bool, StoreError> {
    let n = conn.execute(
        "UPDATE api_keys SET revoked_at = ?1 WHERE id = ?2 AND revoked_at IS NULL AND workspace_id IN \
         (SELECT id FROM workspaces WHERE organization_id = ?3)",
        params![now(), key_id, organization_id],
    )?;
    Ok(n == 1)
}

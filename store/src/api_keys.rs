//! API keys: how scripts, integrations and `fleetctl` reach the management API.
//!
//! # Format
//!
//! ```text
//! fpk_<env>_<key id: 12 base62>_<secret: 43 base62><checksum: 6 base62>
//! ```
//!
//! `env` is 1 to 8 lowercase letters or digits (`live` by default; a test installation may say
//! `test`), so a leaked key says where it works. The key id is public (listings, URLs, the audit
//! trail). The secret is 43 characters from the CSPRNG (256 bits). The checksum
//! ([`crate::credentials`]) lets a scanner recognise a key offline and catches a typo before any
//! lookup.
//!
//! # What is stored
//!
//! The key id, the argon2id hash of the secret, and a fingerprint: 16 hex characters of
//! `SHA-256("fleetplane.api-key.v1\0" || key text)`. None of them rebuilds the key. The
//! fingerprint is how a presented key is found ([`locate`]): it is computed from the whole key,
//! so a well-formed but wrong key finds nothing and costs one indexed lookup, never an argon2
//! run; argon2 runs only for a key whose fingerprint matches, and the API caches that outcome.
//!
//! Role, group scope, expiry, CIDRs and CORS origins are fixed at creation. Keys are revoked,
//! never deleted; a revocation is announced on [`CHANGED_CHANNEL`] so that every fleetd drops
//! the key from its cache, and every request re-reads the revocation in its own transaction
//! ([`check_live`]), so a revoked key is refused on the next request even before that.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::audit::{self, Action, Actor, Target};
use crate::credentials::{self, SecretHash, CHECKSUM_LEN};
use crate::device_directory::begin_without_tenant;
use crate::{ApiKeyId, AppDb, DeviceGroupId, StoreError, TenantId, TenantTx, API_KEY_ID_LEN};

/// What every API key starts with.
pub const KEY_PREFIX: &str = "fpk_";

/// Characters of a key's secret.
pub const SECRET_LEN: usize = 43;

/// The notification channel for key revocations: the payload is the key id.
pub const CHANGED_CHANNEL: &str = "fleet_api_key_changed";

/// Longest key name, in bytes.
pub const MAX_NAME_LEN: usize = 200;
/// Most groups in a key's scope.
pub const MAX_SCOPE_GROUPS: usize = 64;
/// Most CIDRs a key may allow.
pub const MAX_CIDRS: usize = 64;
/// Most CORS origins a key may allow.
pub const MAX_ORIGINS: usize = 16;

const FINGERPRINT_DOMAIN: &[u8] = b"fleetplane.api-key.v1\0";

/// What a key may do: one of four roles, ordered by power.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything, including other owners and the tenant's settings.
    Owner,
    /// Also API keys and enrollment tokens.
    Admin,
    /// Devices, groups, patch and telemetry views, device revocation.
    Operator,
    /// Reads everything and exports the audit trail; changes nothing.
    Auditor,
}

impl Role {
    /// Every role, most powerful first.
    pub const ALL: [Role; 4] = [Role::Owner, Role::Admin, Role::Operator, Role::Auditor];

    /// The stored and displayed name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Auditor => "auditor",
        }
    }

    /// The role with this name.
    pub fn from_name(name: &str) -> Option<Self> {
        Role::ALL.into_iter().find(|r| r.as_str() == name)
    }

    /// Power, for "never more than its own": owner 3, admin 2, operator 1, auditor 0. An
    /// auditor may change nothing, so it is below the operator even though it reads more.
    pub fn rank(self) -> u8 {
        match self {
            Role::Owner => 3,
            Role::Admin => 2,
            Role::Operator => 1,
            Role::Auditor => 0,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a key works, as written in it: 1 to 8 lowercase letters or digits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyEnv(String);

impl KeyEnv {
    /// Checks and wraps an environment name.
    pub fn new(name: &str) -> Result<Self, StoreError> {
        if is_env(name) {
            Ok(Self(name.to_owned()))
        } else {
            Err(StoreError::Invalid {
                field: "key environment",
                reason: "must be 1 to 8 lowercase letters or digits".into(),
            })
        }
    }

    /// The default, `live`.
    pub fn live() -> Self {
        Self("live".into())
    }
}

fn is_env(name: &str) -> bool {
    (1..=8).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// A key as presented in `Authorization: Bearer …`: well formed, checksum verified.
pub struct PresentedKey {
    id: ApiKeyId,
    secret: Zeroizing<String>,
    fingerprint: String,
}

impl fmt::Debug for PresentedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PresentedKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// The text is not a well-formed API key (or its checksum does not match). Without detail: a
/// caller answers it as it answers a wrong key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a well-formed API key")]
pub struct MalformedKey;

impl PresentedKey {
    /// Parses the exact format above.
    pub fn parse(text: &str) -> Result<Self, MalformedKey> {
        let body = text.strip_prefix(KEY_PREFIX).ok_or(MalformedKey)?;
        credentials::split_checksum(text).ok_or(MalformedKey)?;
        let body = &body[..body.len() - CHECKSUM_LEN];
        let (env, rest) = body.split_once('_').ok_or(MalformedKey)?;
        let (id, secret) = rest.split_once('_').ok_or(MalformedKey)?;
        if !is_env(env)
            || id.len() != API_KEY_ID_LEN
            || secret.len() != SECRET_LEN
            || !credentials::is_base62(secret)
        {
            return Err(MalformedKey);
        }
        Ok(Self {
            id: id.parse().map_err(|_| MalformedKey)?,
            secret: Zeroizing::new(secret.to_owned()),
            fingerprint: fingerprint(text),
        })
    }

    /// The key id it names.
    pub fn id(&self) -> &ApiKeyId {
        &self.id
    }

    /// The secret part, to verify against the stored hash.
    pub fn secret(&self) -> &[u8] {
        self.secret.as_bytes()
    }

    /// The fingerprint to locate the key with.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }
}

/// 16 hex characters of `SHA-256(domain || key text)`.
fn fingerprint(text: &str) -> String {
    let digest = Sha256::new()
        .chain_update(FINGERPRINT_DOMAIN)
        .chain_update(text.as_bytes())
        .finalize();
    hex::encode(&digest[..8])
}

/// The complete key text, shown once at creation. Wiped when dropped; `Debug` hides it.
pub struct KeyString(Zeroizing<String>);

impl KeyString {
    /// The key text.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for KeyString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyString(<redacted>)")
    }
}

/// What a caller asks for when creating a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewApiKey {
    /// Display name.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// The groups it is limited to; `None`: every group.
    pub group_scope: Option<Vec<DeviceGroupId>>,
    /// When it stops working; `None`: never.
    pub expires_at: Option<OffsetDateTime>,
    /// Where it may be used from; `None`: anywhere.
    pub allowed_cidrs: Option<Vec<IpNet>>,
    /// Browser origins allowed to use it (CORS); `None`: none.
    pub cors_origins: Option<Vec<String>>,
}

/// A key as stored, without its hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiKey {
    /// Its tenant.
    pub tenant_id: TenantId,
    /// Its public id.
    pub id: ApiKeyId,
    /// Display name.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// The groups it is limited to; `None`: every group.
    pub group_scope: Option<Vec<DeviceGroupId>>,
    /// When it stops working.
    pub expires_at: Option<OffsetDateTime>,
    /// Where it may be used from.
    pub allowed_cidrs: Option<Vec<IpNet>>,
    /// Browser origins allowed to use it.
    pub cors_origins: Option<Vec<String>>,
    /// When it was created.
    pub created_at: OffsetDateTime,
    /// Who created it (audit actor text).
    pub created_by: String,
    /// When it was revoked.
    pub revoked_at: Option<OffsetDateTime>,
    /// Who revoked it.
    pub revoked_by: Option<String>,
    /// When it was last used (written at most once a minute per fleetd).
    pub last_used_at: Option<OffsetDateTime>,
    /// From where.
    pub last_used_ip: Option<IpAddr>,
}

impl ApiKey {
    /// Whether it has expired at `now`.
    pub fn is_expired(&self, now: OffsetDateTime) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    /// Whether `source` may use it. IPv4-mapped IPv6 addresses count as their IPv4 address.
    pub fn allows_source(&self, source: IpAddr) -> bool {
        let source = source.to_canonical();
        self.allowed_cidrs
            .as_ref()
            .is_none_or(|nets| nets.iter().any(|net| net.contains(&source)))
    }
}

/// A new key and its text, which is never available again.
#[derive(Debug)]
pub struct IssuedKey {
    /// The stored key.
    pub key: ApiKey,
    /// The complete key to hand over, once.
    pub secret: KeyString,
}

/// An `api_keys` row as selected (without its hash): the macros' target.
struct KeyRow {
    tenant_id: TenantId,
    key_id: String,
    name: String,
    role: String,
    group_scope: Option<Vec<DeviceGroupId>>,
    expires_at: Option<OffsetDateTime>,
    allowed_cidrs: Option<Vec<String>>,
    cors_origins: Option<Vec<String>>,
    created_at: OffsetDateTime,
    created_by: String,
    revoked_at: Option<OffsetDateTime>,
    revoked_by: Option<String>,
    last_used_at: Option<OffsetDateTime>,
    last_used_ip: Option<String>,
    /// Selected only to authenticate (NULL elsewhere): nothing else needs the hash.
    secret_hash: Option<String>,
}

/// Creates a key in the transaction's tenant and records it in the audit trail. The returned
/// text is the only copy. The caller decides whether `actor` may create such a key.
pub async fn create(
    tx: &mut TenantTx,
    new: &NewApiKey,
    env: &KeyEnv,
    actor: &Actor,
) -> Result<IssuedKey, StoreError> {
    create_audited(tx, new, env, actor, Action::ApiKeyCreate).await
}

/// Creates an owner key on the database, bypassing the API: for bootstrap and for an owner
/// locked out of the API. Audited as `api_key.break_glass_create`.
pub async fn create_break_glass(
    tx: &mut TenantTx,
    name: &str,
    env: &KeyEnv,
    actor: &Actor,
) -> Result<IssuedKey, StoreError> {
    let new = NewApiKey {
        name: name.to_owned(),
        role: Role::Owner,
        group_scope: None,
        expires_at: None,
        allowed_cidrs: None,
        cors_origins: None,
    };
    create_audited(tx, &new, env, actor, Action::ApiKeyBreakGlassCreate).await
}

async fn create_audited(
    tx: &mut TenantTx,
    new: &NewApiKey,
    env: &KeyEnv,
    actor: &Actor,
    action: Action,
) -> Result<IssuedKey, StoreError> {
    check_new(new)?;
    check_scope_exists(tx, new.group_scope.as_deref()).await?;
    let id = ApiKeyId::new_random();
    let secret = Zeroizing::new(credentials::random_base62(SECRET_LEN));
    let mut text = Zeroizing::new(format!("{KEY_PREFIX}{}_{id}_{}", env.0, secret.as_str()));
    credentials::push_checksum(&mut text);
    let hash = credentials::hash_off_executor(secret.as_bytes().to_vec()).await?;
    let cidrs: Option<Vec<String>> = new
        .allowed_cidrs
        .as_ref()
        .map(|nets| nets.iter().map(ToString::to_string).collect());
    let scope: Option<Vec<uuid::Uuid>> = new
        .group_scope
        .as_ref()
        .map(|groups| groups.iter().map(|g| g.0).collect());
    let key: ApiKey = sqlx::query_as!(
        KeyRow,
        r#"INSERT INTO api_keys (tenant_id, key_id, name, role, group_scope, expires_at,
                                 allowed_cidrs, cors_origins, secret_hash, fingerprint, created_by)
           VALUES ($1, $2, $3, $4, $5, $6, $7::text[]::cidr[], $8, $9, $10, $11)
           RETURNING tenant_id AS "tenant_id: TenantId", key_id, name, role,
                     group_scope AS "group_scope: Vec<DeviceGroupId>", expires_at,
                     allowed_cidrs::text[] AS allowed_cidrs, cors_origins, created_at, created_by,
                     revoked_at, revoked_by, last_used_at, host(last_used_ip) AS last_used_ip,
                     NULL::text AS "secret_hash?""#,
        tx.tenant() as TenantId,
        id.as_str(),
        new.name,
        new.role.as_str(),
        scope.as_deref(),
        new.expires_at,
        cidrs.as_deref(),
        new.cors_origins.as_deref(),
        hash.as_str(),
        fingerprint(&text),
        actor.to_string(),
    )
    .fetch_one(tx.conn())
    .await?
    .try_into()?;
    audit::append(
        tx,
        actor,
        action,
        &Target::ApiKey(id),
        &json!({
            "name": key.name,
            "role": key.role.as_str(),
            "group_scope": scope,
            "expires_at": key.expires_at.map(OffsetDateTime::unix_timestamp),
            "allowed_cidrs": cidrs,
            "cors_origins": key.cors_origins,
        }),
    )
    .await?;
    Ok(IssuedKey {
        key,
        secret: KeyString(text),
    })
}

/// Keys of the transaction's tenant ordered by id, after `after`, at most `limit`.
pub async fn list(
    tx: &mut TenantTx,
    after: Option<&ApiKeyId>,
    limit: i64,
) -> Result<Vec<ApiKey>, StoreError> {
    let rows = sqlx::query_as!(
        KeyRow,
        r#"SELECT tenant_id AS "tenant_id: TenantId", key_id, name, role,
                  group_scope AS "group_scope: Vec<DeviceGroupId>", expires_at,
                  allowed_cidrs::text[] AS allowed_cidrs, cors_origins, created_at, created_by,
                  revoked_at, revoked_by, last_used_at, host(last_used_ip) AS last_used_ip,
                  NULL::text AS "secret_hash?"
             FROM api_keys WHERE ($1::text IS NULL OR key_id > $1)
            ORDER BY key_id LIMIT $2"#,
        after.map(ApiKeyId::as_str),
        limit,
    )
    .fetch_all(tx.conn())
    .await?;
    rows.into_iter().map(ApiKey::try_from).collect()
}

/// One key of the transaction's tenant.
pub async fn get(tx: &mut TenantTx, id: &ApiKeyId) -> Result<Option<ApiKey>, StoreError> {
    read_one(tx, id, false)
        .await?
        .map(ApiKey::try_from)
        .transpose()
}

/// One key's row, with its hash only when `with_hash` (authentication).
async fn read_one(
    tx: &mut TenantTx,
    id: &ApiKeyId,
    with_hash: bool,
) -> Result<Option<KeyRow>, StoreError> {
    Ok(sqlx::query_as!(
        KeyRow,
        r#"SELECT tenant_id AS "tenant_id: TenantId", key_id, name, role,
                  group_scope AS "group_scope: Vec<DeviceGroupId>", expires_at,
                  allowed_cidrs::text[] AS allowed_cidrs, cors_origins, created_at, created_by,
                  revoked_at, revoked_by, last_used_at, host(last_used_ip) AS last_used_ip,
                  CASE WHEN $2 THEN secret_hash END AS "secret_hash?"
             FROM api_keys WHERE key_id = $1"#,
        id.as_str(),
        with_hash,
    )
    .fetch_optional(tx.conn())
    .await?)
}

/// What [`revoke`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyRevocation {
    /// The key was live and is now revoked.
    Revoked,
    /// It had been revoked before; nothing changed.
    AlreadyRevoked,
}

/// Revokes a key of the transaction's tenant, records it, and announces it on
/// [`CHANGED_CHANNEL`] (delivered at commit). [`StoreError::NotFound`] when there is no such key.
pub async fn revoke(
    tx: &mut TenantTx,
    id: &ApiKeyId,
    actor: &Actor,
) -> Result<KeyRevocation, StoreError> {
    let revoked = sqlx::query!(
        "UPDATE api_keys SET revoked_at = now(), revoked_by = $2
          WHERE key_id = $1 AND revoked_at IS NULL",
        id.as_str(),
        actor.to_string(),
    )
    .execute(tx.conn())
    .await?;
    if revoked.rows_affected() == 0 {
        return match get(tx, id).await? {
            Some(_) => Ok(KeyRevocation::AlreadyRevoked),
            None => Err(StoreError::NotFound("API key")),
        };
    }
    audit::append(
        tx,
        actor,
        Action::ApiKeyRevoke,
        &Target::ApiKey(id.clone()),
        &json!({}),
    )
    .await?;
    sqlx::query!("SELECT pg_notify($1, $2)", CHANGED_CHANNEL, id.as_str())
        .fetch_one(tx.conn())
        .await?;
    Ok(KeyRevocation::Revoked)
}

/// Where the key with this fingerprint lives: its tenant and id. No listing is possible.
pub async fn locate(
    app: &AppDb,
    presented: &PresentedKey,
) -> Result<Option<(TenantId, ApiKeyId)>, StoreError> {
    let mut tx = begin_without_tenant(app).await?;
    let row = sqlx::query!(
        r#"SELECT tenant_id AS "tenant_id!: TenantId", key_id AS "key_id!"
             FROM fleet_api_key_locate($1)"#,
        presented.fingerprint(),
    )
    .fetch_optional(tx.conn())
    .await?;
    tx.commit().await?;
    let Some(row) = row else { return Ok(None) };
    Ok(Some((row.tenant_id, stored_key_id(&row.key_id)?)))
}

/// The key and its hash, to verify a presented secret against.
pub async fn load_for_auth(
    tx: &mut TenantTx,
    id: &ApiKeyId,
) -> Result<Option<(ApiKey, SecretHash)>, StoreError> {
    let row = read_one(tx, id, true).await?;
    row.map(|mut row| {
        // NOT NULL in the schema; an empty hash would never verify.
        let hash = row.secret_hash.take().unwrap_or_default();
        Ok((row.try_into()?, SecretHash::from_stored(hash)))
    })
    .transpose()
}

/// Whether the key is still unrevoked, read in the request's own transaction.
pub async fn check_live(tx: &mut TenantTx, id: &ApiKeyId) -> Result<bool, StoreError> {
    let live = sqlx::query_scalar!(
        r#"SELECT revoked_at IS NULL AS "live!" FROM api_keys WHERE key_id = $1"#,
        id.as_str(),
    )
    .fetch_optional(tx.conn())
    .await?;
    Ok(live.unwrap_or(false))
}

/// [`check_live`], and records the key as used now from `ip`. `None`: the key is revoked (or
/// gone), nothing is written; `Some(new_address)`: it is live, and `new_address` says whether
/// `ip` differs from the address of its previous recorded use (true on its first use).
pub async fn touch(
    tx: &mut TenantTx,
    id: &ApiKeyId,
    ip: IpAddr,
) -> Result<Option<bool>, StoreError> {
    // Every part of one statement sees the same snapshot: `previous` is the row before the
    // update.
    let new_address = sqlx::query_scalar!(
        r#"WITH previous AS (SELECT last_used_ip FROM api_keys WHERE key_id = $1)
           UPDATE api_keys SET last_used_at = now(), last_used_ip = $2::text::inet
            WHERE key_id = $1 AND revoked_at IS NULL
           RETURNING (SELECT p.last_used_ip IS DISTINCT FROM $2::text::inet FROM previous p)
                  AS "new_address!""#,
        id.as_str(),
        ip.to_canonical().to_string(),
    )
    .fetch_optional(tx.conn())
    .await?;
    Ok(new_address)
}

fn check_new(new: &NewApiKey) -> Result<(), StoreError> {
    let invalid = |field: &'static str, reason: &str| {
        Err(StoreError::Invalid {
            field,
            reason: reason.into(),
        })
    };
    let name = new.name.trim();
    if name.is_empty() || new.name.len() > MAX_NAME_LEN || new.name.chars().any(char::is_control) {
        return invalid("name", "must be 1 to 200 bytes without control characters");
    }
    if let Some(scope) = &new.group_scope {
        if scope.is_empty() || scope.len() > MAX_SCOPE_GROUPS {
            return invalid("group_scope", "must name 1 to 64 groups (omit it for all)");
        }
    }
    if new
        .expires_at
        .is_some_and(|at| at <= OffsetDateTime::now_utc())
    {
        return invalid("expires_at", "must be in the future");
    }
    if let Some(nets) = &new.allowed_cidrs {
        if nets.is_empty() || nets.len() > MAX_CIDRS {
            return invalid(
                "allowed_cidrs",
                "must list 1 to 64 networks (omit it for anywhere)",
            );
        }
    }
    if let Some(origins) = &new.cors_origins {
        if origins.is_empty() || origins.len() > MAX_ORIGINS {
            return invalid("cors_origins", "must list 1 to 16 origins");
        }
        if let Some(bad) = origins.iter().find(|o| !is_origin(o)) {
            return Err(StoreError::Invalid {
                field: "cors_origins",
                reason: format!("{bad:?} is not an origin such as https://console.example.com"),
            });
        }
    }
    Ok(())
}

/// `https://host[:port]` or `http://host[:port]`, without path, query or trailing slash.
fn is_origin(origin: &str) -> bool {
    let Some(rest) = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
    else {
        return false;
    };
    !rest.is_empty()
        && rest.len() <= 253
        && rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
}

async fn check_scope_exists(
    tx: &mut TenantTx,
    scope: Option<&[DeviceGroupId]>,
) -> Result<(), StoreError> {
    let Some(scope) = scope else { return Ok(()) };
    let ids: Vec<uuid::Uuid> = scope.iter().map(|g| g.0).collect();
    let found = sqlx::query_scalar!(
        r#"SELECT count(*) AS "count!" FROM device_groups WHERE group_id = ANY($1::uuid[])"#,
        &ids,
    )
    .fetch_one(tx.conn())
    .await?;
    let distinct = ids.iter().collect::<std::collections::HashSet<_>>().len();
    if usize::try_from(found).unwrap_or(0) != distinct {
        return Err(StoreError::Invalid {
            field: "group_scope",
            reason: "names a group that does not exist".into(),
        });
    }
    Ok(())
}

/// A stored key id, checked again on the way out.
fn stored_key_id(text: &str) -> Result<ApiKeyId, StoreError> {
    text.parse().map_err(|_| StoreError::Invalid {
        field: "stored API key id",
        reason: "not 12 base62 characters".into(),
    })
}

impl TryFrom<KeyRow> for ApiKey {
    type Error = StoreError;
    fn try_from(row: KeyRow) -> Result<Self, StoreError> {
        let role = Role::from_name(&row.role).ok_or_else(|| StoreError::Invalid {
            field: "stored role",
            reason: format!("unknown value {:?}", row.role),
        })?;
        let allowed_cidrs = row
            .allowed_cidrs
            .map(|texts| crate::text::parse_stored_cidrs("stored allowed_cidrs", &texts))
            .transpose()?;
        Ok(ApiKey {
            tenant_id: row.tenant_id,
            id: stored_key_id(&row.key_id)?,
            name: row.name,
            role,
            group_scope: row.group_scope,
            expires_at: row.expires_at,
            allowed_cidrs,
            cors_origins: row.cors_origins,
            created_at: row.created_at,
            created_by: row.created_by,
            revoked_at: row.revoked_at,
            revoked_by: row.revoked_by,
            last_used_at: row.last_used_at,
            last_used_ip: row.last_used_ip.and_then(|t| t.parse().ok()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_text(env: &str, id: &str, secret: &str) -> String {
        let mut text = format!("{KEY_PREFIX}{env}_{id}_{secret}");
        credentials::push_checksum(&mut text);
        text
    }

    #[test]
    fn a_well_formed_key_parses_and_names_its_id() {
        let secret = "a".repeat(SECRET_LEN);
        let text = key_text("live", "AbCdEf123456", &secret);
        let key = PresentedKey::parse(&text).unwrap();
        assert_eq!(key.id().as_str(), "AbCdEf123456");
        assert_eq!(key.secret(), secret.as_bytes());
        assert_eq!(key.fingerprint().len(), 16);
        assert!(!format!("{key:?}").contains(&secret));
    }

    #[test]
    fn anything_else_is_malformed_before_any_lookup() {
        let secret = "a".repeat(SECRET_LEN);
        let good = key_text("live", "AbCdEf123456", &secret);
        let bad = [
            String::new(),
            good.replacen("fpk_", "fpe_", 1),
            good.replacen("AbCd", "AbCe", 1), // typo: checksum fails
            good[..good.len() - 1].to_string(),
            format!("{good} "),
            key_text("LIVE", "AbCdEf123456", &secret),
            key_text("toolongenv", "AbCdEf123456", &secret),
            key_text("live", "AbCdEf12345", &secret),
            key_text("live", "AbCdEf123456", &"a".repeat(SECRET_LEN - 1)),
            key_text(
                "live",
                "AbCdEf123456",
                &format!("{}_", "a".repeat(SECRET_LEN - 1)),
            ),
            key_text("live", "AbCdEf-23456", &secret),
        ];
        for text in bad {
            assert_eq!(
                PresentedKey::parse(&text).unwrap_err(),
                MalformedKey,
                "{text:?}"
            );
        }
    }

    #[test]
    fn fingerprints_differ_for_keys_that_differ_anywhere() {
        let a = key_text("live", "AbCdEf123456", &"a".repeat(SECRET_LEN));
        let b = key_text(
            "live",
            "AbCdEf123456",
            &format!("{}b", "a".repeat(SECRET_LEN - 1)),
        );
        assert_ne!(fingerprint(&a), fingerprint(&b));
        assert!(fingerprint(&a).bytes().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn roles_rank_and_parse() {
        assert!(Role::Owner.rank() > Role::Admin.rank());
        assert!(Role::Admin.rank() > Role::Operator.rank());
        assert!(Role::Operator.rank() > Role::Auditor.rank());
        for role in Role::ALL {
            assert_eq!(Role::from_name(role.as_str()), Some(role));
        }
        assert_eq!(Role::from_name("root"), None);
    }

    #[test]
    fn origins_are_scheme_and_host_only() {
        assert!(is_origin("https://console.example.com"));
        assert!(is_origin("http://localhost:8080"));
        for bad in [
            "console.example.com",
            "https://",
            "https://a/b",
            "ftp://a",
            "https://a?b",
        ] {
            assert!(!is_origin(bad), "{bad}");
        }
    }

    #[test]
    fn the_well_formed_key_seeds_parse() {
        let seeds = corpus::seeds("api_key");
        for seed in &seeds[..2] {
            let text = std::str::from_utf8(seed).unwrap();
            assert!(PresentedKey::parse(text).is_ok(), "{text}");
        }
        assert!(PresentedKey::parse(std::str::from_utf8(&seeds[2]).unwrap()).is_err());
    }

    corpus::proptest::proptest! {
        #![proptest_config(corpus::config())]

        /// The stable-toolchain fuzzing of API key parsing (seeds: corpus/seeds/api_key).
        #[test]
        fn mutated_keys_are_refused_or_parsed_never_a_panic(bytes in corpus::mutated("api_key")) {
            let _ = PresentedKey::parse(&String::from_utf8_lossy(&bytes));
        }
    }
}

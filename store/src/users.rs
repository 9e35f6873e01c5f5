//! People: users of a tenant with the roles and group scopes of API keys, passwords (argon2id,
//! [`credentials::PASSWORD_PARAMS`]), the second factor's stored state, recovery codes,
//! invitations, and failed sign-ins counted per attempted email.
//!
//! Every change writes its audit event in the same transaction. Times come from the caller
//! (`now`): the API's clock, which tests advance.
//!
//! The TOTP secret arrives here already sealed (the API holds the key, outside the database);
//! this module stores and hands back bytes it cannot read.

use std::collections::HashSet;
use std::fmt;
use std::sync::OnceLock;

use serde_json::json;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::api_keys::Role;
use crate::audit::{self, Action, Actor, Target};
use crate::credentials::SecretHash;
use crate::people_tokens::{PeopleToken, TokenKind};
use crate::{DeviceGroupId, InvitationId, StoreError, TenantId, TenantTx, UserId};

/// Shortest password accepted.
pub const MIN_PASSWORD_LEN: usize = 12;
/// Longest password accepted, in bytes (argon2 takes any length; this bounds the request).
pub const MAX_PASSWORD_LEN: usize = 1024;
/// Recovery codes given at each TOTP enrolment.
pub const RECOVERY_CODES: usize = 10;

/// An email address as a sign-in name: trimmed, lower-cased, checked.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Email(String);

impl fmt::Debug for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Email({})", self.0)
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Email {
    /// Checks and normalises an address: `local@domain`, 3 to 254 bytes, no spaces or control
    /// characters. Compared ignoring case (stored lower-cased).
    pub fn parse(text: &str) -> Result<Self, StoreError> {
        let email = text.trim().to_lowercase();
        let ok = (3..=254).contains(&email.len())
            && !email.chars().any(|c| c.is_control() || c.is_whitespace())
            && email
                .split_once('@')
                .is_some_and(|(local, domain)| !local.is_empty() && !domain.is_empty())
            && email.matches('@').count() == 1;
        if ok {
            Ok(Self(email))
        } else {
            Err(StoreError::Invalid {
                field: "email",
                reason: "must be an address such as alice@example.com".into(),
            })
        }
    }

    /// The normalised text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A password a person typed: wiped when dropped; `Debug` hides it.
pub struct Password(Zeroizing<String>);

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

impl Password {
    /// Wraps a typed password (any text: a sign-in checks it against the hash only).
    pub fn new(text: String) -> Self {
        Self(Zeroizing::new(text))
    }

    /// The bytes to hash or verify.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// Whether it may be set as a new password: at least [`MIN_PASSWORD_LEN`] characters, at
    /// most [`MAX_PASSWORD_LEN`] bytes, and not in the shipped list of common passwords
    /// (compared ignoring case).
    pub fn check_policy(&self) -> Result<(), StoreError> {
        let invalid = |reason: &str| StoreError::Invalid {
            field: "password",
            reason: reason.into(),
        };
        if self.0.chars().count() < MIN_PASSWORD_LEN {
            return Err(invalid("must be at least 12 characters"));
        }
        if self.0.len() > MAX_PASSWORD_LEN {
            return Err(invalid("must be at most 1024 bytes"));
        }
        if common_passwords().contains(self.0.to_lowercase().as_str()) {
            return Err(invalid(
                "is one of the most common passwords; choose another",
            ));
        }
        Ok(())
    }
}

/// The shipped list (see the file's header), lower-cased.
fn common_passwords() -> &'static HashSet<&'static str> {
    static LIST: OnceLock<HashSet<&'static str>> = OnceLock::new();
    LIST.get_or_init(|| {
        include_str!("common-passwords.txt")
            .lines()
            .filter(|line| !line.starts_with('#') && !line.is_empty())
            .collect()
    })
}

/// A user as stored, without secrets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    /// Its tenant.
    pub tenant_id: TenantId,
    /// Its id.
    pub id: UserId,
    /// The sign-in name, lower-cased.
    pub email: String,
    /// Its role.
    pub role: Role,
    /// The groups it is limited to; `None`: every group.
    pub group_scope: Option<Vec<DeviceGroupId>>,
    /// Whether it has a password (single sign-on users may not).
    pub has_password: bool,
    /// When TOTP was enrolled; `None`: not enrolled.
    pub totp_enabled_at: Option<OffsetDateTime>,
    /// When it was created.
    pub created_at: OffsetDateTime,
    /// Who created it (audit actor text).
    pub created_by: String,
    /// When it was disabled; `None`: it may sign in.
    pub disabled_at: Option<OffsetDateTime>,
}

struct UserRow {
    tenant_id: TenantId,
    user_id: UserId,
    email: String,
    role: String,
    group_scope: Option<Vec<DeviceGroupId>>,
    has_password: bool,
    totp_enabled_at: Option<OffsetDateTime>,
    created_at: OffsetDateTime,
    created_by: String,
    disabled_at: Option<OffsetDateTime>,
}

impl TryFrom<UserRow> for User {
    type Error = StoreError;
    fn try_from(row: UserRow) -> Result<Self, StoreError> {
        Ok(User {
            tenant_id: row.tenant_id,
            id: row.user_id,
            email: row.email,
            role: stored_role(&row.role)?,
            group_scope: row.group_scope,
            has_password: row.has_password,
            totp_enabled_at: row.totp_enabled_at,
            created_at: row.created_at,
            created_by: row.created_by,
            disabled_at: row.disabled_at,
        })
    }
}

fn stored_role(text: &str) -> Result<Role, StoreError> {
    Role::from_name(text).ok_or_else(|| StoreError::Invalid {
        field: "stored role",
        reason: format!("unknown value {text:?}"),
    })
}

fn scope_uuids(scope: Option<&[DeviceGroupId]>) -> Option<Vec<uuid::Uuid>> {
    scope.map(|groups| groups.iter().map(|g| g.0).collect())
}

/// One user of the transaction's tenant.
pub async fn get(tx: &mut TenantTx, id: UserId) -> Result<Option<User>, StoreError> {
    let row = sqlx::query_as!(
        UserRow,
        r#"SELECT tenant_id AS "tenant_id: TenantId", user_id AS "user_id: UserId", email, role,
                  group_scope AS "group_scope: Vec<DeviceGroupId>",
                  password_hash IS NOT NULL AS "has_password!", totp_enabled_at, created_at,
                  created_by, disabled_at
             FROM users WHERE user_id = $1"#,
        id as UserId,
    )
    .fetch_optional(tx.conn())
    .await?;
    row.map(User::try_from).transpose()
}

/// The user with this email in the transaction's tenant.
pub async fn get_by_email(tx: &mut TenantTx, email: &Email) -> Result<Option<User>, StoreError> {
    Ok(load_for_sign_in(tx, email).await?.map(|(user, _)| user))
}

/// Users of the transaction's tenant ordered by email.
pub async fn list(tx: &mut TenantTx) -> Result<Vec<User>, StoreError> {
    let rows = sqlx::query_as!(
        UserRow,
        r#"SELECT tenant_id AS "tenant_id: TenantId", user_id AS "user_id: UserId", email, role,
                  group_scope AS "group_scope: Vec<DeviceGroupId>",
                  password_hash IS NOT NULL AS "has_password!", totp_enabled_at, created_at,
                  created_by, disabled_at
             FROM users ORDER BY email"#,
    )
    .fetch_all(tx.conn())
    .await?;
    rows.into_iter().map(User::try_from).collect()
}

/// The user with this email and its password hash, to verify a sign-in against.
pub async fn load_for_sign_in(
    tx: &mut TenantTx,
    email: &Email,
) -> Result<Option<(User, Option<SecretHash>)>, StoreError> {
    let row = sqlx::query!(
        r#"SELECT tenant_id AS "tenant_id: TenantId", user_id AS "user_id: UserId", email, role,
                  group_scope AS "group_scope: Vec<DeviceGroupId>", password_hash,
                  totp_enabled_at, created_at, created_by, disabled_at
             FROM users WHERE email = $1"#,
        email.as_str(),
    )
    .fetch_optional(tx.conn())
    .await?;
    let Some(row) = row else { return Ok(None) };
    let hash = row.password_hash.map(SecretHash::from_stored);
    let user = User::try_from(UserRow {
        tenant_id: row.tenant_id,
        user_id: row.user_id,
        email: row.email,
        role: row.role,
        group_scope: row.group_scope,
        has_password: hash.is_some(),
        totp_enabled_at: row.totp_enabled_at,
        created_at: row.created_at,
        created_by: row.created_by,
        disabled_at: row.disabled_at,
    })?;
    Ok(Some((user, hash)))
}

/// What a new user is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewUser {
    /// The sign-in name.
    pub email: Email,
    /// Its role.
    pub role: Role,
    /// The groups it is limited to; `None`: every group.
    pub group_scope: Option<Vec<DeviceGroupId>>,
}

async fn insert(
    tx: &mut TenantTx,
    new: &NewUser,
    password: Option<&SecretHash>,
    actor: &Actor,
    action: Action,
    now: OffsetDateTime,
) -> Result<User, StoreError> {
    check_scope(new.group_scope.as_deref())?;
    let id = UserId::new_random();
    let scope = scope_uuids(new.group_scope.as_deref());
    let inserted = sqlx::query!(
        "INSERT INTO users (tenant_id, user_id, email, role, group_scope, password_hash,
                            created_at, created_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (tenant_id, email) DO NOTHING",
        tx.tenant() as TenantId,
        id as UserId,
        new.email.as_str(),
        new.role.as_str(),
        scope.as_deref(),
        password.map(SecretHash::as_str),
        now,
        actor.to_string(),
    )
    .execute(tx.conn())
    .await?;
    if inserted.rows_affected() == 0 {
        return Err(StoreError::Conflict("a user with this email exists"));
    }
    audit::append(
        tx,
        actor,
        action,
        &Target::User(id),
        &json!({ "email": new.email.as_str(), "role": new.role.as_str(), "group_scope": scope }),
    )
    .await?;
    get(tx, id).await?.ok_or(StoreError::NotFound("user"))
}

fn check_scope(scope: Option<&[DeviceGroupId]>) -> Result<(), StoreError> {
    if scope.is_some_and(|s| s.is_empty() || s.len() > crate::api_keys::MAX_SCOPE_GROUPS) {
        return Err(StoreError::Invalid {
            field: "group_scope",
            reason: "must name 1 to 64 groups (omit it for all)".into(),
        });
    }
    Ok(())
}

/// The user with this verified email, created with `role` and no password if there is none
/// (just-in-time creation for single sign-on, audited as `user.create` by `actor`). The bool
/// says whether it was created. An existing user is returned as it is (disabled or not: the
/// caller refuses a disabled one); its role is not changed.
pub async fn find_or_create_verified(
    tx: &mut TenantTx,
    email: &Email,
    role: Role,
    actor: &Actor,
    now: OffsetDateTime,
) -> Result<(User, bool), StoreError> {
    if let Some(user) = get_by_email(tx, email).await? {
        return Ok((user, false));
    }
    let new = NewUser {
        email: email.clone(),
        role,
        group_scope: None,
    };
    let user = insert(tx, &new, None, actor, Action::UserCreate, now).await?;
    Ok((user, true))
}

/// Creates an owner with a password on the database (`fleetctl user create-owner`), audited
/// as break-glass. The owner enrols TOTP at first sign-in.
pub async fn create_owner_break_glass(
    tx: &mut TenantTx,
    email: &Email,
    password: &Password,
    actor: &Actor,
    now: OffsetDateTime,
) -> Result<User, StoreError> {
    password.check_policy()?;
    let hash = crate::credentials::hash_password(password.as_bytes()).await?;
    let new = NewUser {
        email: email.clone(),
        role: Role::Owner,
        group_scope: None,
    };
    insert(
        tx,
        &new,
        Some(&hash),
        actor,
        Action::UserBreakGlassCreateOwner,
        now,
    )
    .await
}

/// Sets a user's password (policy checked) and ends its sessions but `keep` (the session that
/// changed it). `action`: [`Action::UserPasswordChange`] or the break-glass one.
pub async fn set_password(
    tx: &mut TenantTx,
    id: UserId,
    password: &Password,
    keep: Option<&[u8; 32]>,
    actor: &Actor,
    action: Action,
) -> Result<(), StoreError> {
    password.check_policy()?;
    let hash = crate::credentials::hash_password(password.as_bytes()).await?;
    let updated = sqlx::query!(
        "UPDATE users SET password_hash = $2 WHERE user_id = $1",
        id as UserId,
        hash.as_str(),
    )
    .execute(tx.conn())
    .await?;
    if updated.rows_affected() == 0 {
        return Err(StoreError::NotFound("user"));
    }
    let ended = crate::sessions::delete_all_but(tx, id, keep).await?;
    audit::append(
        tx,
        actor,
        action,
        &Target::User(id),
        &json!({ "sessions_ended": ended }),
    )
    .await?;
    Ok(())
}

/// Whether some owner other than `id` is enabled; locks the owners' rows so that two
/// concurrent demotions cannot both see the other.
async fn another_owner_remains(tx: &mut TenantTx, id: UserId) -> Result<bool, StoreError> {
    let others = sqlx::query_scalar!(
        r#"SELECT user_id AS "user_id: UserId" FROM users
            WHERE role = 'owner' AND disabled_at IS NULL FOR UPDATE"#,
    )
    .fetch_all(tx.conn())
    .await?;
    Ok(others.iter().any(|other| *other != id))
}

async fn refuse_if_last_owner(tx: &mut TenantTx, user: &User) -> Result<(), StoreError> {
    if user.role == Role::Owner && !another_owner_remains(tx, user.id).await? {
        return Err(StoreError::Conflict(
            "this is the tenant's last enabled owner",
        ));
    }
    Ok(())
}

async fn existing(tx: &mut TenantTx, id: UserId) -> Result<User, StoreError> {
    get(tx, id).await?.ok_or(StoreError::NotFound("user"))
}

/// Changes a user's role and group scope. The last enabled owner cannot be demoted.
pub async fn change_role(
    tx: &mut TenantTx,
    id: UserId,
    role: Role,
    scope: Option<&[DeviceGroupId]>,
    actor: &Actor,
) -> Result<User, StoreError> {
    check_scope(scope)?;
    let before = existing(tx, id).await?;
    if role != Role::Owner {
        refuse_if_last_owner(tx, &before).await?;
    }
    let uuids = scope_uuids(scope);
    sqlx::query!(
        "UPDATE users SET role = $2, group_scope = $3 WHERE user_id = $1",
        id as UserId,
        role.as_str(),
        uuids.as_deref(),
    )
    .execute(tx.conn())
    .await?;
    audit::append(
        tx,
        actor,
        Action::UserRoleChange,
        &Target::User(id),
        &json!({
            "role": { "from": before.role.as_str(), "to": role.as_str() },
            "group_scope": { "from": scope_uuids(before.group_scope.as_deref()), "to": uuids },
        }),
    )
    .await?;
    existing(tx, id).await
}

/// Disables (ending every session) or re-enables a user. The last enabled owner cannot be
/// disabled. Changing nothing writes nothing.
pub async fn set_disabled(
    tx: &mut TenantTx,
    id: UserId,
    disabled: bool,
    actor: &Actor,
    now: OffsetDateTime,
) -> Result<User, StoreError> {
    let before = existing(tx, id).await?;
    if before.disabled_at.is_some() == disabled {
        return Ok(before);
    }
    if disabled {
        refuse_if_last_owner(tx, &before).await?;
    }
    sqlx::query!(
        "UPDATE users SET disabled_at = $2 WHERE user_id = $1",
        id as UserId,
        disabled.then_some(now),
    )
    .execute(tx.conn())
    .await?;
    let ended = crate::sessions::delete_all_but(tx, id, None).await?;
    let action = if disabled {
        Action::UserDisable
    } else {
        Action::UserEnable
    };
    audit::append(
        tx,
        actor,
        action,
        &Target::User(id),
        &json!({ "sessions_ended": ended }),
    )
    .await?;
    existing(tx, id).await
}

/// Removes a user, its sessions and recovery codes. The last enabled owner cannot be removed.
pub async fn remove(tx: &mut TenantTx, id: UserId, actor: &Actor) -> Result<(), StoreError> {
    let before = existing(tx, id).await?;
    refuse_if_last_owner(tx, &before).await?;
    sqlx::query!("DELETE FROM users WHERE user_id = $1", id as UserId)
        .execute(tx.conn())
        .await?;
    audit::append(
        tx,
        actor,
        Action::UserRemove,
        &Target::User(id),
        &json!({ "email": before.email }),
    )
    .await?;
    Ok(())
}

/// A user's sealed TOTP secrets and the last step accepted.
#[derive(Clone, Default)]
pub struct TotpState {
    /// The confirmed secret, sealed.
    pub sealed: Option<Vec<u8>>,
    /// The secret being enrolled, sealed.
    pub pending: Option<Vec<u8>>,
    /// The last step whose code was accepted.
    pub last_step: Option<i64>,
}

impl fmt::Debug for TotpState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TotpState")
            .field("enrolled", &self.sealed.is_some())
            .field("pending", &self.pending.is_some())
            .field("last_step", &self.last_step)
            .finish()
    }
}

/// The user's TOTP state.
pub async fn totp_state(tx: &mut TenantTx, id: UserId) -> Result<TotpState, StoreError> {
    let row = sqlx::query!(
        "SELECT totp_sealed, totp_pending_sealed, totp_last_step FROM users WHERE user_id = $1",
        id as UserId,
    )
    .fetch_optional(tx.conn())
    .await?
    .ok_or(StoreError::NotFound("user"))?;
    Ok(TotpState {
        sealed: row.totp_sealed,
        pending: row.totp_pending_sealed,
        last_step: row.totp_last_step,
    })
}

/// Stores a secret being enrolled (replacing any earlier one not confirmed).
pub async fn set_pending_totp(
    tx: &mut TenantTx,
    id: UserId,
    sealed: &[u8],
) -> Result<(), StoreError> {
    sqlx::query!(
        "UPDATE users SET totp_pending_sealed = $2 WHERE user_id = $1",
        id as UserId,
        sealed,
    )
    .execute(tx.conn())
    .await?;
    Ok(())
}

/// Makes the pending secret the user's second factor (its code for `step` was right), replaces
/// the recovery codes with `codes` (stored hashed), and records the enrolment.
pub async fn confirm_totp(
    tx: &mut TenantTx,
    id: UserId,
    step: i64,
    codes: &[RecoveryCode],
    actor: &Actor,
    now: OffsetDateTime,
) -> Result<(), StoreError> {
    let updated = sqlx::query!(
        "UPDATE users SET totp_sealed = totp_pending_sealed, totp_pending_sealed = NULL,
                          totp_enabled_at = $2, totp_last_step = $3
          WHERE user_id = $1 AND totp_pending_sealed IS NOT NULL",
        id as UserId,
        now,
        step,
    )
    .execute(tx.conn())
    .await?;
    if updated.rows_affected() == 0 {
        return Err(StoreError::Conflict("no TOTP enrolment is in progress"));
    }
    delete_recovery_codes(tx, id).await?;
    for code in codes {
        sqlx::query!(
            "INSERT INTO user_recovery_codes (tenant_id, user_id, code_sha256) VALUES ($1, $2, $3)",
            tx.tenant() as TenantId,
            id as UserId,
            &code.digest(id)[..],
        )
        .execute(tx.conn())
        .await?;
    }
    audit::append(
        tx,
        actor,
        Action::UserTotpEnrol,
        &Target::User(id),
        &json!({ "recovery_codes": codes.len() }),
    )
    .await?;
    Ok(())
}

async fn delete_recovery_codes(tx: &mut TenantTx, id: UserId) -> Result<(), StoreError> {
    sqlx::query!(
        "DELETE FROM user_recovery_codes WHERE user_id = $1",
        id as UserId
    )
    .execute(tx.conn())
    .await?;
    Ok(())
}

/// Records `step` as used if it is later than the last one used; false when it is not (a code
/// replayed, or one older than the last accepted). One statement, so two concurrent sign-ins
/// with one code cannot both pass.
pub async fn accept_totp_step(
    tx: &mut TenantTx,
    id: UserId,
    step: i64,
) -> Result<bool, StoreError> {
    let updated = sqlx::query!(
        "UPDATE users SET totp_last_step = $2
          WHERE user_id = $1 AND (totp_last_step IS NULL OR totp_last_step < $2)",
        id as UserId,
        step,
    )
    .execute(tx.conn())
    .await?;
    Ok(updated.rows_affected() == 1)
}

/// Uses a recovery code: true (and it never works again) if it is one of the user's unused ones.
pub async fn use_recovery_code(
    tx: &mut TenantTx,
    id: UserId,
    code: &RecoveryCode,
    actor: &Actor,
    now: OffsetDateTime,
) -> Result<bool, StoreError> {
    let updated = sqlx::query!(
        "UPDATE user_recovery_codes SET used_at = $3
          WHERE user_id = $1 AND code_sha256 = $2 AND used_at IS NULL",
        id as UserId,
        &code.digest(id)[..],
        now,
    )
    .execute(tx.conn())
    .await?;
    if updated.rows_affected() == 0 {
        return Ok(false);
    }
    let left = sqlx::query_scalar!(
        r#"SELECT count(*) AS "n!" FROM user_recovery_codes WHERE user_id = $1 AND used_at IS NULL"#,
        id as UserId,
    )
    .fetch_one(tx.conn())
    .await?;
    audit::append(
        tx,
        actor,
        Action::UserRecoveryCodeUse,
        &Target::User(id),
        &json!({ "unused_left": left }),
    )
    .await?;
    Ok(true)
}

/// Removes a user's TOTP and recovery codes (`fleetctl user reset-mfa`) and ends its sessions:
/// it enrols again at its next sign-in.
pub async fn reset_mfa_break_glass(
    tx: &mut TenantTx,
    id: UserId,
    actor: &Actor,
) -> Result<(), StoreError> {
    let updated = sqlx::query!(
        "UPDATE users SET totp_sealed = NULL, totp_pending_sealed = NULL, totp_enabled_at = NULL,
                          totp_last_step = NULL WHERE user_id = $1",
        id as UserId,
    )
    .execute(tx.conn())
    .await?;
    if updated.rows_affected() == 0 {
        return Err(StoreError::NotFound("user"));
    }
    delete_recovery_codes(tx, id).await?;
    let ended = crate::sessions::delete_all_but(tx, id, None).await?;
    audit::append(
        tx,
        actor,
        Action::UserBreakGlassResetMfa,
        &Target::User(id),
        &json!({ "sessions_ended": ended }),
    )
    .await?;
    Ok(())
}

/// A recovery code: 16 base62 characters (95 random bits) shown once, as `xxxx-xxxx-xxxx-xxxx`.
/// Stored as `SHA-256(domain || user id || code)`; dashes and spaces typed are ignored.
pub struct RecoveryCode(Zeroizing<String>);

impl fmt::Debug for RecoveryCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RecoveryCode(<redacted>)")
    }
}

impl RecoveryCode {
    /// A fresh code.
    pub fn new_random() -> Self {
        Self(Zeroizing::new(crate::credentials::random_base62(16)))
    }

    /// A code as typed (dashes and spaces ignored).
    pub fn typed(text: &str) -> Self {
        Self(Zeroizing::new(
            text.chars().filter(char::is_ascii_alphanumeric).collect(),
        ))
    }

    /// The code to show, in four groups.
    pub fn display(&self) -> String {
        let chars: Vec<char> = self.0.chars().collect();
        chars
            .chunks(4)
            .map(|c| c.iter().collect::<String>())
            .collect::<Vec<_>>()
            .join("-")
    }

    fn digest(&self, user: UserId) -> [u8; 32] {
        Sha256::new()
            .chain_update(b"fleetplane.recovery-code.v1\0")
            .chain_update(user.0.as_bytes())
            .chain_update(self.0.as_bytes())
            .finalize()
            .into()
    }
}

/// Whether `email` has failed [`SignInLimit::failures`] times in the current window: the
/// seconds until the window ends.
pub async fn sign_in_blocked(
    tx: &mut TenantTx,
    email: &str,
    limit: SignInLimit,
    now: OffsetDateTime,
) -> Result<Option<u64>, StoreError> {
    let row = sqlx::query!(
        "SELECT window_started_at, failures FROM sign_in_failures WHERE email = $1",
        email,
    )
    .fetch_optional(tx.conn())
    .await?;
    let Some(row) = row else { return Ok(None) };
    let ends = row.window_started_at + limit.window;
    if row.failures < limit.failures || ends <= now {
        return Ok(None);
    }
    Ok(Some(
        u64::try_from((ends - now).whole_seconds())
            .unwrap_or(0)
            .max(1),
    ))
}

/// At most `failures` failed sign-ins per attempted email per `window`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SignInLimit {
    /// Failures allowed in a window.
    pub failures: i32,
    /// The window.
    pub window: time::Duration,
}

impl Default for SignInLimit {
    /// 5 per 15 minutes.
    fn default() -> Self {
        Self {
            failures: 5,
            window: time::Duration::minutes(15),
        }
    }
}

/// Counts a failed sign-in for `email` (known or not) and records it in the audit trail with the
/// attempted name as actor. `reason` is for the audit trail only; the answer never says it.
pub async fn record_sign_in_failure(
    tx: &mut TenantTx,
    email: &str,
    user: Option<UserId>,
    reason: &str,
    limit: SignInLimit,
    now: OffsetDateTime,
) -> Result<(), StoreError> {
    let window_start_before = now - limit.window;
    sqlx::query!(
        "INSERT INTO sign_in_failures (tenant_id, email, window_started_at, failures)
         VALUES ($1, $2, $3, 1)
         ON CONFLICT (tenant_id, email) DO UPDATE SET
            failures = CASE WHEN sign_in_failures.window_started_at <= $4 THEN 1
                            ELSE sign_in_failures.failures + 1 END,
            window_started_at = CASE WHEN sign_in_failures.window_started_at <= $4 THEN $3
                                     ELSE sign_in_failures.window_started_at END",
        tx.tenant() as TenantId,
        email,
        now,
        window_start_before,
    )
    .execute(tx.conn())
    .await?;
    let target = match user {
        Some(id) => Target::User(id),
        None => Target::Tenant(tx.tenant()),
    };
    audit::append(
        tx,
        &Actor::SignIn(email.to_owned()),
        Action::UserSignInFailed,
        &target,
        &json!({ "reason": reason }),
    )
    .await?;
    Ok(())
}

/// Audits a single sign-on refused before anyone was identified (a replayed state, a forged
/// token, the provider's own refusal): `user.sign_in_failed` with the reason. No email is known
/// yet, so no per-account failure is counted; the actor is the provider sign-in itself.
pub async fn record_sso_refusal(tx: &mut TenantTx, reason: &str) -> Result<(), StoreError> {
    let tenant = tx.tenant();
    audit::append(
        tx,
        &Actor::SignIn(SSO_SIGN_IN.to_owned()),
        Action::UserSignInFailed,
        &Target::Tenant(tenant),
        &json!({ "reason": reason, "via": "oidc" }),
    )
    .await?;
    Ok(())
}

/// The attempted name of a single sign-on refused before the provider named anyone.
pub const SSO_SIGN_IN: &str = "(single sign-on)";

/// Forgets the failures of `email` (a successful sign-in).
pub async fn clear_sign_in_failures(tx: &mut TenantTx, email: &str) -> Result<(), StoreError> {
    sqlx::query!("DELETE FROM sign_in_failures WHERE email = $1", email)
        .execute(tx.conn())
        .await?;
    Ok(())
}

/// The tenant whose name (ignoring case) is `name`, for sign-in. `None` when there is none.
pub async fn tenant_by_name(
    app: &crate::AppDb,
    name: &str,
) -> Result<Option<TenantId>, StoreError> {
    let mut tx = crate::device_directory::begin_without_tenant(app).await?;
    let id = sqlx::query_scalar!(r#"SELECT fleet_tenant_by_name($1) AS "id: TenantId""#, name)
        .fetch_one(tx.conn())
        .await?;
    tx.commit().await?;
    Ok(id)
}

/// A tenant's rules for people: session lifetimes, and whether every role must use TOTP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeoplePolicy {
    /// A session unused this long ends.
    pub idle_timeout: time::Duration,
    /// A session this old ends, used or not.
    pub absolute_timeout: time::Duration,
    /// Whether operators and auditors must enrol TOTP too (owners and admins always must).
    pub totp_required_for_all: bool,
}

/// The transaction's tenant's [`PeoplePolicy`].
pub async fn policy(tx: &mut TenantTx) -> Result<PeoplePolicy, StoreError> {
    let row = sqlx::query!(
        "SELECT session_idle_timeout_secs, session_absolute_timeout_secs, totp_required_for_all
           FROM tenants WHERE tenant_id = $1",
        tx.tenant() as TenantId,
    )
    .fetch_optional(tx.conn())
    .await?
    .ok_or(StoreError::NotFound("tenant"))?;
    Ok(PeoplePolicy {
        idle_timeout: time::Duration::seconds(row.session_idle_timeout_secs.into()),
        absolute_timeout: time::Duration::seconds(row.session_absolute_timeout_secs.into()),
        totp_required_for_all: row.totp_required_for_all,
    })
}

/// Changes the transaction's tenant's [`PeoplePolicy`] (`None`: unchanged), audited as a
/// settings update.
pub async fn update_policy(
    tx: &mut TenantTx,
    idle_secs: Option<i32>,
    absolute_secs: Option<i32>,
    totp_required_for_all: Option<bool>,
    actor: &Actor,
) -> Result<PeoplePolicy, StoreError> {
    if idle_secs.is_some_and(|s| !(60..=2_592_000).contains(&s)) {
        return Err(StoreError::Invalid {
            field: "session_idle_timeout_secs",
            reason: "must be 60 to 2592000 seconds".into(),
        });
    }
    if absolute_secs.is_some_and(|s| !(300..=31_536_000).contains(&s)) {
        return Err(StoreError::Invalid {
            field: "session_absolute_timeout_secs",
            reason: "must be 300 to 31536000 seconds".into(),
        });
    }
    let before = policy(tx).await?;
    sqlx::query!(
        "UPDATE tenants SET
            session_idle_timeout_secs = coalesce($2, session_idle_timeout_secs),
            session_absolute_timeout_secs = coalesce($3, session_absolute_timeout_secs),
            totp_required_for_all = coalesce($4, totp_required_for_all)
          WHERE tenant_id = $1",
        tx.tenant() as TenantId,
        idle_secs,
        absolute_secs,
        totp_required_for_all,
    )
    .execute(tx.conn())
    .await?;
    let after = policy(tx).await?;
    audit::append(
        tx,
        actor,
        Action::TenantSettingsUpdate,
        &Target::Tenant(tx.tenant()),
        &json!({
            "session_idle_timeout_secs": { "from": before.idle_timeout.whole_seconds(), "to": after.idle_timeout.whole_seconds() },
            "session_absolute_timeout_secs": { "from": before.absolute_timeout.whole_seconds(), "to": after.absolute_timeout.whole_seconds() },
            "totp_required_for_all": { "from": before.totp_required_for_all, "to": after.totp_required_for_all },
        }),
    )
    .await?;
    Ok(after)
}

/// An invitation as stored, without its token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invitation {
    /// Its id.
    pub id: InvitationId,
    /// Who is invited.
    pub email: String,
    /// The role the user will have.
    pub role: Role,
    /// The groups the user will be limited to.
    pub group_scope: Option<Vec<DeviceGroupId>>,
    /// When it was made.
    pub created_at: OffsetDateTime,
    /// By whom.
    pub created_by: String,
    /// When it stops working.
    pub expires_at: OffsetDateTime,
    /// When it was accepted.
    pub accepted_at: Option<OffsetDateTime>,
}

/// Invites `new.email` (no user of that email may exist). The token is the only copy.
pub async fn invite(
    tx: &mut TenantTx,
    new: &NewUser,
    ttl: time::Duration,
    actor: &Actor,
    now: OffsetDateTime,
) -> Result<(Invitation, PeopleToken), StoreError> {
    check_scope(new.group_scope.as_deref())?;
    if get_by_email(tx, &new.email).await?.is_some() {
        return Err(StoreError::Conflict("a user with this email exists"));
    }
    let id = InvitationId::new_random();
    let token = PeopleToken::new_random(TokenKind::Invitation, tx.tenant());
    let scope = scope_uuids(new.group_scope.as_deref());
    sqlx::query!(
        "INSERT INTO user_invitations (tenant_id, invitation_id, email, role, group_scope,
                                       token_sha256, created_at, created_by, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        tx.tenant() as TenantId,
        id as InvitationId,
        new.email.as_str(),
        new.role.as_str(),
        scope.as_deref(),
        &token.digest()[..],
        now,
        actor.to_string(),
        now + ttl,
    )
    .execute(tx.conn())
    .await?;
    audit::append(
        tx,
        actor,
        Action::UserInvite,
        &Target::Invitation(id),
        &json!({
            "email": new.email.as_str(), "role": new.role.as_str(), "group_scope": scope,
            "expires_at": (now + ttl).unix_timestamp(),
        }),
    )
    .await?;
    let invitation = Invitation {
        id,
        email: new.email.as_str().to_owned(),
        role: new.role,
        group_scope: new.group_scope.clone(),
        created_at: now,
        created_by: actor.to_string(),
        expires_at: now + ttl,
        accepted_at: None,
    };
    Ok((invitation, token))
}

/// Accepts an invitation: creates its user with `password` (policy checked) and marks it used.
/// [`StoreError::NotFound`] for an unknown, used or expired token (one answer for all).
pub async fn accept_invitation(
    tx: &mut TenantTx,
    token: &PeopleToken,
    password: &Password,
    now: OffsetDateTime,
) -> Result<User, StoreError> {
    password.check_policy()?;
    let row = sqlx::query!(
        r#"UPDATE user_invitations SET accepted_at = $2
            WHERE token_sha256 = $1 AND accepted_at IS NULL AND expires_at > $2
           RETURNING invitation_id AS "id: InvitationId", email, role,
                     group_scope AS "group_scope: Vec<DeviceGroupId>""#,
        &token.digest()[..],
        now,
    )
    .fetch_optional(tx.conn())
    .await?
    .ok_or(StoreError::NotFound("invitation"))?;
    let hash = crate::credentials::hash_password(password.as_bytes()).await?;
    let new = NewUser {
        email: Email::parse(&row.email)?,
        role: stored_role(&row.role)?,
        group_scope: row.group_scope,
    };
    insert(
        tx,
        &new,
        Some(&hash),
        &Actor::Invitation(row.id),
        Action::UserInvitationAccept,
        now,
    )
    .await
}

/// The tenant's invitations, newest first.
pub async fn list_invitations(tx: &mut TenantTx) -> Result<Vec<Invitation>, StoreError> {
    let rows = sqlx::query!(
        r#"SELECT invitation_id AS "id: InvitationId", email, role,
                  group_scope AS "group_scope: Vec<DeviceGroupId>", created_at, created_by,
                  expires_at, accepted_at
             FROM user_invitations ORDER BY created_at DESC, invitation_id"#,
    )
    .fetch_all(tx.conn())
    .await?;
    rows.into_iter()
        .map(|r| {
            Ok(Invitation {
                id: r.id,
                email: r.email,
                role: stored_role(&r.role)?,
                group_scope: r.group_scope,
                created_at: r.created_at,
                created_by: r.created_by,
                expires_at: r.expires_at,
                accepted_at: r.accepted_at,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalised_and_checked() {
        assert_eq!(
            Email::parse(" Alice@Example.COM ").unwrap().as_str(),
            "alice@example.com"
        );
        for bad in ["", "alice", "@x", "a@", "a b@c", "a@b@c", "a\n@b"] {
            assert!(Email::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn passwords_are_long_and_not_common() {
        assert!(Password::new("correct horse battery".into())
            .check_policy()
            .is_ok());
        assert!(Password::new("short".into()).check_policy().is_err());
        // In the shipped list (Django's common passwords), in any case.
        assert!(Password::new("Q1W2E3R4T5Y6".into()).check_policy().is_err());
        assert!(!format!("{:?}", Password::new("secret-secret".into())).contains("secret"));
    }

    #[test]
    fn recovery_codes_show_in_groups_and_read_back_as_typed() {
        let code = RecoveryCode::new_random();
        let shown = code.display();
        assert_eq!(shown.len(), 19);
        let user = UserId::new_random();
        assert_eq!(RecoveryCode::typed(&shown).digest(user), code.digest(user));
        assert_ne!(code.digest(user), code.digest(UserId::new_random()));
    }
}

//! Sessions of people: opaque 256-bit ids ([`PeopleToken`], kind `Session`) of which only the
//! SHA-256 is stored, with their stage, address, user agent and times.
//!
//! A session is `full` (signed in) or half-way through sign-in: the password was right and the
//! second factor (`second_factor`) or TOTP enrolment (`enrol_totp`) comes next. Completing
//! sign-in never promotes a half-way id: it is deleted and a new full session started, so an id
//! seen before the second factor is worth nothing after it.
//!
//! Expiry is decided by the caller from the tenant's [`crate::users::PeoplePolicy`] and its own
//! clock ([`Session::expired`]); this module stores the times it is given.

use std::net::IpAddr;

use serde_json::json;
use time::OffsetDateTime;

use crate::audit::{self, Action, Actor, Target};
use crate::people_tokens::{PeopleToken, TokenKind};
use crate::users::PeoplePolicy;
use crate::{StoreError, TenantId, TenantTx, UserId};

/// How far sign-in has come.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Signed in.
    Full,
    /// Password right; a TOTP or recovery code is next.
    SecondFactor,
    /// Password right; TOTP must be enrolled (owners, admins, or the tenant says everyone).
    EnrolTotp,
}

impl Stage {
    fn as_str(self) -> &'static str {
        match self {
            Stage::Full => "full",
            Stage::SecondFactor => "second_factor",
            Stage::EnrolTotp => "enrol_totp",
        }
    }

    fn from_stored(text: &str) -> Result<Self, StoreError> {
        match text {
            "full" => Ok(Stage::Full),
            "second_factor" => Ok(Stage::SecondFactor),
            "enrol_totp" => Ok(Stage::EnrolTotp),
            other => Err(StoreError::Invalid {
                field: "stored session stage",
                reason: format!("unknown value {other:?}"),
            }),
        }
    }
}

/// How long a half-way session lasts: the second step must follow within it.
pub const HALF_WAY_LIFETIME: time::Duration = time::Duration::minutes(10);

/// A stored session (without its id).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// Its user.
    pub user_id: UserId,
    /// How far sign-in has come.
    pub stage: Stage,
    /// When it started.
    pub created_at: OffsetDateTime,
    /// When it was last used.
    pub last_used_at: OffsetDateTime,
    /// The address it started from.
    pub address: Option<IpAddr>,
    /// The user agent it started with.
    pub user_agent: Option<String>,
    /// The first 16 hex characters of its stored digest: names it in listings without revealing
    /// anything that rebuilds it.
    pub handle: String,
}

impl Session {
    /// Whether it has ended at `now` under `policy` (idle or absolute), or, half-way, after
    /// [`HALF_WAY_LIFETIME`].
    pub fn expired(&self, policy: &PeoplePolicy, now: OffsetDateTime) -> bool {
        if self.stage != Stage::Full {
            return now - self.created_at >= HALF_WAY_LIFETIME;
        }
        now - self.last_used_at >= policy.idle_timeout
            || now - self.created_at >= policy.absolute_timeout
    }
}

/// Where a session comes from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Origin {
    /// The client address.
    pub address: Option<IpAddr>,
    /// The `User-Agent` header, cut to 512 bytes.
    pub user_agent: Option<String>,
}

/// Starts a session for `user` at `stage` and returns its id, the only copy. A full session is
/// audited as `user.sign_in` by the user, with `how` (e.g. `password+totp`, `oidc`).
pub async fn start(
    tx: &mut TenantTx,
    user: UserId,
    stage: Stage,
    origin: &Origin,
    how: &str,
    now: OffsetDateTime,
) -> Result<PeopleToken, StoreError> {
    let token = PeopleToken::new_random(TokenKind::Session, tx.tenant());
    let agent = origin.user_agent.as_deref().map(|a| cut(a, 512));
    sqlx::query!(
        "INSERT INTO user_sessions (tenant_id, session_sha256, user_id, stage, created_at,
                                    last_used_at, address, user_agent)
         VALUES ($1, $2, $3, $4, $5, $5, $6::text::inet, $7)",
        tx.tenant() as TenantId,
        &token.digest()[..],
        user as UserId,
        stage.as_str(),
        now,
        origin.address.map(|a| a.to_canonical().to_string()),
        agent,
    )
    .execute(tx.conn())
    .await?;
    if stage == Stage::Full {
        audit::append(
            tx,
            &Actor::User(user),
            Action::UserSignIn,
            &Target::User(user),
            &json!({ "how": how, "address": origin.address.map(|a| a.to_canonical().to_string()) }),
        )
        .await?;
    }
    Ok(token)
}

fn cut(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

struct SessionRow {
    user_id: UserId,
    stage: String,
    created_at: OffsetDateTime,
    last_used_at: OffsetDateTime,
    address: Option<String>,
    user_agent: Option<String>,
    handle: String,
}

impl TryFrom<SessionRow> for Session {
    type Error = StoreError;
    fn try_from(row: SessionRow) -> Result<Self, StoreError> {
        Ok(Session {
            user_id: row.user_id,
            stage: Stage::from_stored(&row.stage)?,
            created_at: row.created_at,
            last_used_at: row.last_used_at,
            address: row.address.and_then(|a| a.parse().ok()),
            user_agent: row.user_agent,
            handle: row.handle,
        })
    }
}

/// The session with this id in the transaction's tenant.
pub async fn find(tx: &mut TenantTx, token: &PeopleToken) -> Result<Option<Session>, StoreError> {
    let row = sqlx::query_as!(
        SessionRow,
        r#"SELECT user_id AS "user_id: UserId", stage, created_at, last_used_at,
                  host(address) AS address, user_agent,
                  left(encode(session_sha256, 'hex'), 16) AS "handle!"
             FROM user_sessions WHERE session_sha256 = $1"#,
        &token.digest()[..],
    )
    .fetch_optional(tx.conn())
    .await?;
    row.map(Session::try_from).transpose()
}

/// Records a use of the session at `now`.
pub async fn touch(
    tx: &mut TenantTx,
    token: &PeopleToken,
    now: OffsetDateTime,
) -> Result<(), StoreError> {
    sqlx::query!(
        "UPDATE user_sessions SET last_used_at = $2 WHERE session_sha256 = $1",
        &token.digest()[..],
        now,
    )
    .execute(tx.conn())
    .await?;
    Ok(())
}

/// Ends one session (expired, or half-way and completed), without an audit event of its own.
pub async fn delete(tx: &mut TenantTx, token: &PeopleToken) -> Result<bool, StoreError> {
    let deleted = sqlx::query!(
        "DELETE FROM user_sessions WHERE session_sha256 = $1",
        &token.digest()[..],
    )
    .execute(tx.conn())
    .await?;
    Ok(deleted.rows_affected() == 1)
}

/// Signs out: ends this session, audited as `user.sign_out`.
pub async fn sign_out(
    tx: &mut TenantTx,
    token: &PeopleToken,
    user: UserId,
) -> Result<(), StoreError> {
    delete(tx, token).await?;
    audit::append(
        tx,
        &Actor::User(user),
        Action::UserSignOut,
        &Target::User(user),
        &json!({}),
    )
    .await?;
    Ok(())
}

/// Signs out everywhere: ends every session of `user`, audited with how many.
pub async fn sign_out_everywhere(tx: &mut TenantTx, user: UserId) -> Result<u64, StoreError> {
    end_all(tx, user, &Actor::User(user)).await
}

/// Ends every session of `user` on behalf of `actor` (the user itself, or an admin), audited as
/// `user.sign_out_everywhere` by `actor` with how many ended.
pub async fn end_all(tx: &mut TenantTx, user: UserId, actor: &Actor) -> Result<u64, StoreError> {
    let ended = delete_all_but(tx, user, None).await?;
    audit::append(
        tx,
        actor,
        Action::UserSignOutEverywhere,
        &Target::User(user),
        &json!({ "sessions_ended": ended }),
    )
    .await?;
    Ok(ended)
}

/// Ends every session of `user` except the one whose digest is `keep`; how many ended. The
/// callers (password change, disabling) write the audit event.
pub(crate) async fn delete_all_but(
    tx: &mut TenantTx,
    user: UserId,
    keep: Option<&[u8; 32]>,
) -> Result<u64, StoreError> {
    let deleted = sqlx::query!(
        "DELETE FROM user_sessions WHERE user_id = $1 AND ($2::bytea IS NULL OR session_sha256 <> $2)",
        user as UserId,
        keep.map(|k| &k[..]),
    )
    .execute(tx.conn())
    .await?;
    Ok(deleted.rows_affected())
}

/// The signed-in sessions of `user`, most recently used first.
pub async fn list(tx: &mut TenantTx, user: UserId) -> Result<Vec<Session>, StoreError> {
    let rows = sqlx::query_as!(
        SessionRow,
        r#"SELECT user_id AS "user_id: UserId", stage, created_at, last_used_at,
                  host(address) AS address, user_agent,
                  left(encode(session_sha256, 'hex'), 16) AS "handle!"
             FROM user_sessions WHERE user_id = $1 AND stage = 'full'
            ORDER BY last_used_at DESC"#,
        user as UserId,
    )
    .fetch_all(tx.conn())
    .await?;
    rows.into_iter().map(Session::try_from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(stage: Stage, created: i64, used: i64) -> Session {
        Session {
            user_id: UserId::new_random(),
            stage,
            created_at: OffsetDateTime::from_unix_timestamp(created).unwrap(),
            last_used_at: OffsetDateTime::from_unix_timestamp(used).unwrap(),
            address: None,
            user_agent: None,
            handle: String::new(),
        }
    }

    #[test]
    fn sessions_end_when_idle_or_old_and_half_way_ones_soon() {
        let policy = PeoplePolicy {
            idle_timeout: time::Duration::hours(8),
            absolute_timeout: time::Duration::days(30),
            totp_required_for_all: false,
        };
        let at = |secs: i64| OffsetDateTime::from_unix_timestamp(secs).unwrap();
        let s = session(Stage::Full, 0, 0);
        assert!(!s.expired(&policy, at(8 * 3600 - 1)));
        assert!(s.expired(&policy, at(8 * 3600)));
        let busy = session(Stage::Full, 0, 30 * 86400 - 10);
        assert!(busy.expired(&policy, at(30 * 86400)));
        let half = session(Stage::SecondFactor, 0, 0);
        assert!(!half.expired(&policy, at(599)));
        assert!(half.expired(&policy, at(600)));
    }

    #[test]
    fn user_agents_are_cut_on_a_character_boundary() {
        assert_eq!(cut("ééé", 3), "é");
        assert_eq!(cut("abc", 512), "abc");
    }
}

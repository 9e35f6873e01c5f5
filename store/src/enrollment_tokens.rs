//! Enrollment tokens: the bootstrap credential a device exchanges, once, for its certificate.
//!
//! A token belongs to one tenant and says where enrollments may come from (CIDRs), how many a
//! UTC day may bring, until when, optionally how many in total, and which group and labels the
//! enrolled devices get. Its secret is shown once at [`create`] and stored only as a SHA-256
//! hash (argon2id for tokens created before migration 0008); the format and the hashing are
//! described in [`secret`].
//!
//! Enrollment runs in one [`TenantTx`] of the tenant named in the token:
//!
//! 1. [`load_for_enrollment`] reads the token row (under row-level security, so only that
//!    tenant's tokens can be found);
//! 2. [`TokenHash::check`] compares the presented secret's digest in constant time; for a token
//!    with a legacy argon2id hash the caller ends the transaction, runs
//!    [`secret::verify_legacy`] off the executor, and starts again;
//! 3. [`admit`] checks revocation, expiry and the source address, then takes one use with a
//!    single conditional `UPDATE`: the row lock serialises racing enrollments and each re-checks
//!    the limits on the row as the previous one left it, so two cannot take the last slot.

pub mod secret;

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::json;
use sqlx::types::Json;
use time::{Date, OffsetDateTime, Time};

pub use secret::{
    HashCheck, MalformedToken, PresentedToken, SecretHash, TokenHash, TokenSecret, TokenString,
};

use crate::audit::{self, Action, Actor, Target};
use crate::text::{check_labels, check_text};
use crate::{device_groups, EnrollmentTokenId, StoreError, TenantId, TenantTx};

/// Longest accepted token name, group name, label key or label value, in bytes.
pub use crate::text::MAX_TEXT_LEN;

/// Most labels a token may give its devices.
pub use crate::text::MAX_LABELS;

/// Most CIDRs a token may allow.
pub const MAX_CIDRS: usize = 64;

/// What an operator asks for when creating a token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewEnrollmentToken {
    /// Display name.
    pub name: String,
    /// Where enrollments may come from; at least one (`0.0.0.0/0` and `::/0` mean anywhere).
    pub allowed_cidrs: Vec<IpNet>,
    /// Enrollments per UTC day.
    pub daily_limit: u32,
    /// Enrollments in total, when limited.
    pub max_uses: Option<u64>,
    /// When the token stops working.
    pub expires_at: OffsetDateTime,
    /// The group enrolled devices join.
    pub device_group: String,
    /// The labels enrolled devices get.
    pub device_labels: BTreeMap<String, String>,
}

/// A token as stored, without its hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnrollmentToken {
    /// Its tenant.
    pub tenant_id: TenantId,
    /// Its public id.
    pub id: EnrollmentTokenId,
    /// Display name.
    pub name: String,
    /// Where enrollments may come from.
    pub allowed_cidrs: Vec<IpNet>,
    /// Enrollments per UTC day.
    pub daily_limit: u32,
    /// Enrollments in total, when limited.
    pub max_uses: Option<u64>,
    /// When the token stops working.
    pub expires_at: OffsetDateTime,
    /// The group enrolled devices join.
    pub device_group: String,
    /// The labels enrolled devices get.
    pub device_labels: BTreeMap<String, String>,
    /// When it was created.
    pub created_at: OffsetDateTime,
    /// Who created it.
    pub created_by: String,
    /// When it was revoked, if it was.
    pub revoked_at: Option<OffsetDateTime>,
    /// Who revoked it, if anyone did.
    pub revoked_by: Option<String>,
    /// Enrollments so far.
    pub uses: u64,
    /// Enrollments on the current UTC day.
    pub used_today: u32,
    /// When it last enrolled a device.
    pub last_used_at: Option<OffsetDateTime>,
}

/// Whether a token can enroll now, and if not, why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenState {
    /// It can enroll (within today's limit).
    Active,
    /// Revoked by an operator.
    Revoked,
    /// Past its expiry.
    Expired,
    /// Its total uses are spent.
    UsedUp,
}

impl TokenState {
    /// The displayed name.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenState::Active => "active",
            TokenState::Revoked => "revoked",
            TokenState::Expired => "expired",
            TokenState::UsedUp => "used_up",
        }
    }
}

impl EnrollmentToken {
    /// Its state at `now`: revocation first, then expiry, then the use limit.
    pub fn state(&self, now: OffsetDateTime) -> TokenState {
        if self.revoked_at.is_some() {
            TokenState::Revoked
        } else if self.expires_at <= now {
            TokenState::Expired
        } else if self.max_uses.is_some_and(|max| self.uses >= max) {
            TokenState::UsedUp
        } else {
            TokenState::Active
        }
    }

    /// Whether `source` lies in one of the allowed CIDRs. IPv4-mapped IPv6 addresses count as
    /// their IPv4 address.
    pub fn allows_source(&self, source: IpAddr) -> bool {
        let source = source.to_canonical();
        self.allowed_cidrs.iter().any(|net| net.contains(&source))
    }
}

/// A new token and its secret, which is never available again.
#[derive(Debug)]
pub struct IssuedToken {
    /// The stored token.
    pub token: EnrollmentToken,
    /// The complete token string to hand to the operator, once.
    pub secret: TokenString,
}

/// An `enrollment_tokens` row as selected (without its hash): the macros' target.
struct TokenRow {
    tenant_id: TenantId,
    token_id: EnrollmentTokenId,
    name: String,
    allowed_cidrs: Vec<String>,
    daily_limit: i32,
    max_uses: Option<i64>,
    expires_at: OffsetDateTime,
    device_group: String,
    device_labels: Json<BTreeMap<String, String>>,
    created_at: OffsetDateTime,
    created_by: String,
    revoked_at: Option<OffsetDateTime>,
    revoked_by: Option<String>,
    uses: i64,
    used_today: i32,
    last_used_at: Option<OffsetDateTime>,
    /// Selected only for enrollment (NULL elsewhere): nothing else needs the hash.
    secret_hash: Option<String>,
}

/// Creates a token in the transaction's tenant and records it in the audit trail. The returned
/// secret is the only copy.
pub async fn create(
    tx: &mut TenantTx,
    new: &NewEnrollmentToken,
    actor: &Actor,
) -> Result<IssuedToken, StoreError> {
    check_new(new)?;
    if device_groups::id_by_name(tx, &new.device_group)
        .await?
        .is_none()
    {
        return Err(StoreError::Invalid {
            field: "device_group",
            reason: format!("no device group named {:?}", new.device_group),
        });
    }
    let tenant = tx.tenant();
    let id = EnrollmentTokenId::new_random();
    let token_secret = TokenSecret::generate();
    let text = secret::format_token(tenant, id, &token_secret);
    let hash = secret::hash(&token_secret).to_stored();
    drop(token_secret);
    let cidrs: Vec<String> = new
        .allowed_cidrs
        .iter()
        .map(|n| n.trunc().to_string())
        .collect();
    let token: EnrollmentToken = sqlx::query_as!(
        TokenRow,
        r#"INSERT INTO enrollment_tokens
               (tenant_id, token_id, name, secret_hash, allowed_cidrs, daily_limit, max_uses,
                expires_at, device_group, device_labels, created_by)
           VALUES ($1, $2, $3, $4, $5::text[]::cidr[], $6, $7, $8, $9, $10, $11)
           RETURNING tenant_id AS "tenant_id: TenantId", token_id AS "token_id: EnrollmentTokenId", name,
                     allowed_cidrs::text[] AS "allowed_cidrs!", daily_limit, max_uses, expires_at,
                     device_group, device_labels AS "device_labels: Json<BTreeMap<String, String>>",
                     created_at, created_by, revoked_at, revoked_by, uses,
                     CASE WHEN used_day = (now() AT TIME ZONE 'UTC')::date THEN used_today ELSE 0 END
                         AS "used_today!",
                     last_used_at, NULL::text AS "secret_hash?""#,
        tenant as TenantId,
        id as EnrollmentTokenId,
        new.name,
        hash,
        &cidrs,
        i32::try_from(new.daily_limit).expect("checked"),
        new.max_uses.map(|n| i64::try_from(n).expect("checked")),
        new.expires_at,
        new.device_group,
        Json(&new.device_labels) as _,
        actor.to_string(),
    )
    .fetch_one(tx.conn())
    .await?
    .try_into()?;
    audit::append(
        tx,
        actor,
        Action::EnrollmentTokenCreate,
        &Target::EnrollmentToken(id),
        &json!({
            "name": token.name,
            "allowed_cidrs": cidrs,
            "daily_limit": token.daily_limit,
            "max_uses": token.max_uses,
            "expires_at": token.expires_at.unix_timestamp(),
            "device_group": token.device_group,
            "device_labels": token.device_labels,
        }),
    )
    .await?;
    Ok(IssuedToken {
        token,
        secret: text,
    })
}

/// Tokens of the transaction's tenant ordered by id, after `after`, at most `limit`.
pub async fn list(
    tx: &mut TenantTx,
    after: Option<EnrollmentTokenId>,
    limit: i64,
) -> Result<Vec<EnrollmentToken>, StoreError> {
    let rows = sqlx::query_as!(
        TokenRow,
        r#"SELECT tenant_id AS "tenant_id: TenantId", token_id AS "token_id: EnrollmentTokenId", name,
                  allowed_cidrs::text[] AS "allowed_cidrs!", daily_limit, max_uses, expires_at,
                  device_group, device_labels AS "device_labels: Json<BTreeMap<String, String>>",
                  created_at, created_by, revoked_at, revoked_by, uses,
                  CASE WHEN used_day = (now() AT TIME ZONE 'UTC')::date THEN used_today ELSE 0 END
                      AS "used_today!",
                  last_used_at, NULL::text AS "secret_hash?"
             FROM enrollment_tokens WHERE ($1::uuid IS NULL OR token_id > $1)
            ORDER BY token_id LIMIT $2"#,
        after as Option<EnrollmentTokenId>,
        limit,
    )
    .fetch_all(tx.conn())
    .await?;
    rows.into_iter().map(EnrollmentToken::try_from).collect()
}

/// One token of the transaction's tenant, if it exists there.
pub async fn get(
    tx: &mut TenantTx,
    id: EnrollmentTokenId,
) -> Result<Option<EnrollmentToken>, StoreError> {
    read_one(tx, id, false)
        .await?
        .map(EnrollmentToken::try_from)
        .transpose()
}

/// One token's row, with its hash only when `with_hash` (enrollment).
async fn read_one(
    tx: &mut TenantTx,
    id: EnrollmentTokenId,
    with_hash: bool,
) -> Result<Option<TokenRow>, StoreError> {
    Ok(sqlx::query_as!(
        TokenRow,
        r#"SELECT tenant_id AS "tenant_id: TenantId", token_id AS "token_id: EnrollmentTokenId", name,
                  allowed_cidrs::text[] AS "allowed_cidrs!", daily_limit, max_uses, expires_at,
                  device_group, device_labels AS "device_labels: Json<BTreeMap<String, String>>",
                  created_at, created_by, revoked_at, revoked_by, uses,
                  CASE WHEN used_day = (now() AT TIME ZONE 'UTC')::date THEN used_today ELSE 0 END
                      AS "used_today!",
                  last_used_at, CASE WHEN $2 THEN secret_hash END AS "secret_hash?"
             FROM enrollment_tokens WHERE token_id = $1"#,
        id as EnrollmentTokenId,
        with_hash,
    )
    .fetch_optional(tx.conn())
    .await?)
}

/// What [`revoke`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenRevocation {
    /// The token was active and is now revoked.
    Revoked,
    /// The token had been revoked before; nothing changed.
    AlreadyRevoked,
}

/// Revokes a token of the transaction's tenant and records it in the audit trail.
/// [`StoreError::NotFound`] when the tenant has no such token.
pub async fn revoke(
    tx: &mut TenantTx,
    id: EnrollmentTokenId,
    actor: &Actor,
) -> Result<TokenRevocation, StoreError> {
    let revoked = sqlx::query!(
        "UPDATE enrollment_tokens SET revoked_at = now(), revoked_by = $2
          WHERE token_id = $1 AND revoked_at IS NULL",
        id as EnrollmentTokenId,
        actor.to_string(),
    )
    .execute(tx.conn())
    .await?;
    if revoked.rows_affected() == 0 {
        return match get(tx, id).await? {
            Some(_) => Ok(TokenRevocation::AlreadyRevoked),
            None => Err(StoreError::NotFound("enrollment token")),
        };
    }
    audit::append(
        tx,
        actor,
        Action::EnrollmentTokenRevoke,
        &Target::EnrollmentToken(id),
        &json!({}),
    )
    .await?;
    Ok(TokenRevocation::Revoked)
}

/// A token row as enrollment needs it: the token and its stored hash.
#[derive(Debug)]
pub struct EnrollmentCandidate {
    /// The token.
    pub token: EnrollmentToken,
    /// The hash to check the presented secret against.
    pub hash: TokenHash,
}

/// Reads the token `id` of the transaction's tenant with its hash, for enrollment.
pub async fn load_for_enrollment(
    tx: &mut TenantTx,
    id: EnrollmentTokenId,
) -> Result<Option<EnrollmentCandidate>, StoreError> {
    let row = read_one(tx, id, true).await?;
    row.map(|mut row| {
        // NOT NULL in the schema; an empty hash would never verify.
        let hash = row.secret_hash.take().unwrap_or_default();
        Ok(EnrollmentCandidate {
            token: row.try_into()?,
            hash: TokenHash::from_stored(hash),
        })
    })
    .transpose()
}

/// Why a token whose secret verified does not admit an enrollment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The token was revoked.
    Revoked,
    /// The token's expiry has passed.
    Expired,
    /// The client address is in none of the token's CIDRs.
    SourceNotAllowed,
    /// Today's enrollments are used up; more are possible from `resets_at` (next UTC midnight).
    DailyLimitReached {
        /// When the daily count starts again.
        resets_at: OffsetDateTime,
    },
    /// The token's total enrollments are used up, for good.
    UseLimitReached,
}

/// One use taken from a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Admission {
    /// Enrollments of the token so far, this one included.
    pub uses: u64,
    /// Enrollments of the token today, this one included.
    pub used_today: u32,
}

/// Checks a token whose secret verified against the request's source address and takes one
/// use from it, or says why not. Call it in the transaction that then creates the device: if
/// that transaction rolls back, the use is given back.
pub async fn admit(
    tx: &mut TenantTx,
    token: &EnrollmentToken,
    source: IpAddr,
) -> Result<Result<Admission, Refusal>, StoreError> {
    let now = OffsetDateTime::now_utc();
    if token.revoked_at.is_some() {
        return Ok(Err(Refusal::Revoked));
    }
    if token.expires_at <= now {
        return Ok(Err(Refusal::Expired));
    }
    if !token.allows_source(source) {
        return Ok(Err(Refusal::SourceNotAllowed));
    }
    take_use(tx, token.id).await
}

/// The conditional update that takes one use. Concurrent callers queue on the row lock; each
/// re-evaluates the `WHERE` on the row as the one before it left it (READ COMMITTED), so the
/// limits hold under any interleaving.
async fn take_use(
    tx: &mut TenantTx,
    id: EnrollmentTokenId,
) -> Result<Result<Admission, Refusal>, StoreError> {
    let taken = sqlx::query!(
        "UPDATE enrollment_tokens t
            SET uses = t.uses + 1,
                used_today = CASE WHEN t.used_day = d.today THEN t.used_today + 1 ELSE 1 END,
                used_day = d.today,
                last_used_at = now()
           FROM (SELECT (now() AT TIME ZONE 'UTC')::date AS today) d
          WHERE t.token_id = $1
            AND t.revoked_at IS NULL
            AND t.expires_at > now()
            AND (t.max_uses IS NULL OR t.uses < t.max_uses)
            AND (t.used_day IS DISTINCT FROM d.today OR t.used_today < t.daily_limit)
      RETURNING t.uses, t.used_today",
        id as EnrollmentTokenId,
    )
    .fetch_optional(tx.conn())
    .await?;
    match taken {
        Some(row) => Ok(Ok(Admission {
            uses: to_u64(row.uses),
            used_today: to_u32(row.used_today),
        })),
        None => Ok(Err(why_not_taken(tx, id).await?)),
    }
}

/// After the update matched nothing: which condition failed, on the row as it is now.
async fn why_not_taken(tx: &mut TenantTx, id: EnrollmentTokenId) -> Result<Refusal, StoreError> {
    let row = sqlx::query!(
        r#"SELECT revoked_at IS NOT NULL AS "revoked!", expires_at <= now() AS "expired!",
                  (max_uses IS NOT NULL AND uses >= max_uses) AS "used_up!"
             FROM enrollment_tokens WHERE token_id = $1"#,
        id as EnrollmentTokenId,
    )
    .fetch_optional(tx.conn())
    .await?
    .ok_or(StoreError::NotFound("enrollment token"))?;
    Ok(if row.revoked {
        Refusal::Revoked
    } else if row.expired {
        Refusal::Expired
    } else if row.used_up {
        Refusal::UseLimitReached
    } else {
        Refusal::DailyLimitReached {
            resets_at: next_utc_midnight(OffsetDateTime::now_utc()),
        }
    })
}

/// The start of the UTC day after `now`.
pub fn next_utc_midnight(now: OffsetDateTime) -> OffsetDateTime {
    let today: Date = now.to_offset(time::UtcOffset::UTC).date();
    today
        .next_day()
        .expect("not the last day of the calendar")
        .with_time(Time::MIDNIGHT)
        .assume_utc()
}

fn check_new(new: &NewEnrollmentToken) -> Result<(), StoreError> {
    check_text("name", &new.name)?;
    check_text("device_group", &new.device_group)?;
    let invalid = |field: &'static str, reason: &str| StoreError::Invalid {
        field,
        reason: reason.into(),
    };
    if new.allowed_cidrs.is_empty() {
        return Err(invalid(
            "allowed_cidrs",
            "at least one is required (0.0.0.0/0 or ::/0 for anywhere)",
        ));
    }
    if new.allowed_cidrs.len() > MAX_CIDRS {
        return Err(invalid("allowed_cidrs", "at most 64"));
    }
    if new.daily_limit == 0 || i32::try_from(new.daily_limit).is_err() {
        return Err(invalid("daily_limit", "must be between 1 and 2147483647"));
    }
    if let Some(max) = new.max_uses {
        if max == 0 || i64::try_from(max).is_err() {
            return Err(invalid("max_uses", "must be at least 1"));
        }
    }
    if new.expires_at <= OffsetDateTime::now_utc() {
        return Err(invalid("expires_at", "must be in the future"));
    }
    check_labels("device_labels", &new.device_labels)
}

impl TryFrom<TokenRow> for EnrollmentToken {
    type Error = StoreError;
    fn try_from(row: TokenRow) -> Result<Self, StoreError> {
        let allowed_cidrs = crate::text::parse_stored_cidrs("allowed CIDRs", &row.allowed_cidrs)?;
        Ok(EnrollmentToken {
            tenant_id: row.tenant_id,
            id: row.token_id,
            name: row.name,
            allowed_cidrs,
            daily_limit: to_u32(row.daily_limit),
            max_uses: row.max_uses.map(to_u64),
            expires_at: row.expires_at,
            device_group: row.device_group,
            device_labels: row.device_labels.0,
            created_at: row.created_at,
            created_by: row.created_by,
            revoked_at: row.revoked_at,
            revoked_by: row.revoked_by,
            uses: to_u64(row.uses),
            used_today: to_u32(row.used_today),
            last_used_at: row.last_used_at,
        })
    }
}

/// Counters the schema keeps non-negative.
fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

fn to_u32(n: i32) -> u32 {
    u32::try_from(n).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_token() -> NewEnrollmentToken {
        NewEnrollmentToken {
            name: "line 3".into(),
            allowed_cidrs: vec!["10.0.0.0/8".parse().unwrap()],
            daily_limit: 5,
            max_uses: None,
            expires_at: OffsetDateTime::now_utc() + time::Duration::days(1),
            device_group: "default".into(),
            device_labels: BTreeMap::new(),
        }
    }

    #[test]
    fn new_tokens_are_checked_before_the_database() {
        assert!(check_new(&new_token()).is_ok());
        let cases: [fn(&mut NewEnrollmentToken); 8] = [
            |t| t.name = " ".into(),
            |t| t.allowed_cidrs.clear(),
            |t| t.daily_limit = 0,
            |t| t.max_uses = Some(0),
            |t| t.expires_at = OffsetDateTime::now_utc(),
            |t| t.device_group = "x".repeat(201),
            |t| {
                t.device_labels.insert("k".into(), "a\nb".into());
            },
            |t| {
                t.device_labels.insert(String::new(), "v".into());
            },
        ];
        for (i, change) in cases.iter().enumerate() {
            let mut token = new_token();
            change(&mut token);
            assert!(check_new(&token).is_err(), "case {i} was accepted");
        }
    }

    #[test]
    fn sources_match_cidrs_including_mapped_ipv4() {
        let mut token = EnrollmentToken {
            tenant_id: TenantId::new_random(),
            id: EnrollmentTokenId::new_random(),
            name: "t".into(),
            allowed_cidrs: vec![
                "10.0.0.0/8".parse().unwrap(),
                "2001:db8::/32".parse().unwrap(),
            ],
            daily_limit: 1,
            max_uses: None,
            expires_at: OffsetDateTime::now_utc(),
            device_group: "g".into(),
            device_labels: BTreeMap::new(),
            created_at: OffsetDateTime::now_utc(),
            created_by: "test".into(),
            revoked_at: None,
            revoked_by: None,
            uses: 0,
            used_today: 0,
            last_used_at: None,
        };
        assert!(token.allows_source("10.1.2.3".parse().unwrap()));
        assert!(token.allows_source("::ffff:10.1.2.3".parse().unwrap()));
        assert!(token.allows_source("2001:db8::1".parse().unwrap()));
        assert!(!token.allows_source("192.168.1.1".parse().unwrap()));
        assert!(!token.allows_source("::ffff:192.168.1.1".parse().unwrap()));
        token.allowed_cidrs = vec!["0.0.0.0/0".parse().unwrap()];
        assert!(token.allows_source("203.0.113.9".parse().unwrap()));
        assert!(!token.allows_source("2001:db8::1".parse().unwrap()));
    }

    #[test]
    fn the_daily_count_resets_at_the_next_utc_midnight() {
        let day = |d| Date::from_calendar_date(2026, time::Month::November, d).unwrap();
        let now = day(24).with_hms(23, 59, 59).unwrap().assume_utc();
        let midnight = day(25).midnight().assume_utc();
        assert_eq!(next_utc_midnight(now), midnight);
        // 00:30 at +01:00 is still the 24th in UTC.
        let offset = day(25)
            .with_hms(0, 30, 0)
            .unwrap()
            .assume_offset(time::UtcOffset::from_hms(1, 0, 0).unwrap());
        assert_eq!(next_utc_midnight(offset), midnight);
    }
}

//! Who is calling: an API key from `Authorization: Bearer …`, resolved once per request into a
//! typed [`Caller`] (tenant, role, group scope) before any handler runs.
//!
//! # Cost
//!
//! A presented key is checked in this order, cheapest first, and stops at the first failure:
//!
//! 1. the source address is not being slowed for earlier failures ([`FailureLimiter`]);
//! 2. the text is a well-formed key with a matching checksum (no I/O);
//! 3. the [`KeyCache`], keyed by SHA-256 of the presented text: a hit skips 4 and 5;
//! 4. the fingerprint lookup (one indexed query; a wrong key finds nothing and ends here);
//! 5. argon2id of the secret (about 25 ms), off the executor, at most `verify_concurrency` at
//!    once, with no database connection held.
//!
//! Role, scope, expiry, CIDRs and origins are fixed at key creation, so a cached key is the key.
//! Revocation is not cached: [`Caller::begin`] re-reads it in the request's own transaction, so a
//! revoked key is refused by the next request on every fleetd, and is then dropped from the
//! cache. Revoking through this fleetd also drops it at once.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap};
use sha2::{Digest, Sha256};
use store::api_keys::{self, ApiKey, PresentedKey, Role};
use store::audit::Actor;
use store::device_groups::GroupScope;
use store::{credentials, ApiKeyId, TenantId, TenantTx};

use crate::error::ApiError;
use crate::Ctx;

/// Bounds on authentication work. (The verified-key cache has its own settings:
/// [`KeyCache::new`].)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuthLimits {
    /// Failed authentications one address may make per window before it is slowed (429).
    pub failures_per_window: u32,
    /// The window of `failures_per_window`.
    pub failure_window: Duration,
    /// argon2 verifications running at once.
    pub verify_concurrency: usize,
}

impl Default for AuthLimits {
    fn default() -> Self {
        Self {
            failures_per_window: 20,
            failure_window: Duration::from_secs(60),
            verify_concurrency: std::thread::available_parallelism().map_or(2, |n| n.get()),
        }
    }
}

/// How often a key's last-used time and address are written, per fleetd.
const TOUCH_INTERVAL: Duration = Duration::from_secs(60);

/// The authenticated caller of a request: an API key or a signed-in person, with the same
/// tenant, role and group scope either way, checked by the same permission table.
#[derive(Clone, Debug)]
pub struct Caller {
    who: Who,
    scope: GroupScope,
    source: IpAddr,
    touch: bool,
}

#[derive(Clone, Debug)]
enum Who {
    Key(Arc<ApiKey>),
    Person(Arc<crate::people::Person>),
}

impl Caller {
    /// The caller's tenant: the only one this request may touch.
    pub fn tenant(&self) -> TenantId {
        match &self.who {
            Who::Key(key) => key.tenant_id,
            Who::Person(person) => person.user.tenant_id,
        }
    }

    /// The caller's role.
    pub fn role(&self) -> Role {
        match &self.who {
            Who::Key(key) => key.role,
            Who::Person(person) => person.user.role,
        }
    }

    /// The groups the caller may see.
    pub fn scope(&self) -> &GroupScope {
        &self.scope
    }

    /// Whether the caller is limited to some groups.
    pub fn is_scoped(&self) -> bool {
        self.scope != GroupScope::All
    }

    /// The key, when the caller is an API key.
    pub fn key(&self) -> Option<&ApiKey> {
        match &self.who {
            Who::Key(key) => Some(key),
            Who::Person(_) => None,
        }
    }

    /// The person, when the caller signed in with a session cookie.
    pub(crate) fn person(&self) -> Option<&crate::people::Person> {
        match &self.who {
            Who::Key(_) => None,
            Who::Person(person) => Some(person),
        }
    }

    /// When the caller's credential stops working (a key's expiry; a session has none fixed).
    pub fn expires_at(&self) -> Option<time::OffsetDateTime> {
        self.key().and_then(|key| key.expires_at)
    }

    /// The audit actor for what this caller changes.
    pub fn actor(&self) -> Actor {
        match &self.who {
            Who::Key(key) => Actor::ApiKey(key.id.clone()),
            Who::Person(person) => Actor::User(person.user.id),
        }
    }

    /// A caller signed in with a session (the permission check makes it).
    pub(crate) fn from_person(person: crate::people::Person, source: IpAddr) -> Self {
        let scope = GroupScope::from_key(person.user.group_scope.as_deref());
        Self {
            who: Who::Person(Arc::new(person)),
            scope,
            source,
            touch: false,
        }
    }

    /// Opens the request's transaction in the caller's tenant, after re-reading in it that the
    /// key is not revoked (or the session not ended). Handlers reach the database only through
    /// this.
    pub(crate) async fn begin(&self, ctx: &Ctx) -> Result<TenantTx, ApiError> {
        let key = match &self.who {
            Who::Key(key) => key,
            Who::Person(person) => return crate::people::begin_for(ctx, person).await,
        };
        let mut tx = ctx.state.app.begin(self.tenant()).await?;
        let live = if self.touch {
            let touched = api_keys::touch(&mut tx, &key.id, self.source).await?;
            if touched == Some(true) {
                tracing::info!(tenant = %key.tenant_id, key = %key.id, source = %self.source, "API key used from a new address");
            }
            touched.is_some()
        } else {
            api_keys::check_live(&mut tx, &key.id).await?
        };
        if !live {
            ctx.key_cache.purge(&key.id);
            ctx.metrics.auth_refusal("revoked");
            return Err(ApiError::InvalidApiKey);
        }
        Ok(tx)
    }
}

/// Marks an answer to a browser request whose origin the key allows, so that the answer carries
/// `Access-Control-Allow-Origin`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct OriginAllowed;

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, ApiError> {
        parts.extensions.get::<Caller>().cloned().ok_or_else(|| {
            ApiError::Internal("no caller: route outside the permission table".into())
        })
    }
}

/// Resolves the caller of a request, or says why not (and counts it).
pub(crate) async fn authenticate(
    ctx: &Ctx,
    headers: &HeaderMap,
    source: IpAddr,
) -> Result<Caller, ApiError> {
    let caller = authenticate_key(ctx, bearer(headers), source).await?;
    check_origin(caller, headers)
}

/// Resolves the caller presenting the key `text` (`None`: no key) from `source`, or says why
/// not (and counts it): the whole check of [`authenticate`] but the browser origin, for
/// callers that do not come over HTTP (live streams).
pub(crate) async fn authenticate_key(
    ctx: &Ctx,
    text: Option<&str>,
    source: IpAddr,
) -> Result<Caller, ApiError> {
    if let Some(retry_after_secs) = ctx.failures.blocked(source) {
        ctx.metrics.auth_refusal("slowed");
        return Err(ApiError::TooManyFailures { retry_after_secs });
    }
    match resolve(ctx, text, source).await {
        Ok(caller) => Ok(caller),
        Err(Refused(reason)) => {
            ctx.failures.record(source);
            ctx.metrics.auth_refusal(reason);
            tracing::info!(%source, reason, "API key refused");
            Err(ApiError::InvalidApiKey)
        }
        Err(Failed(e)) => Err(e),
    }
}

/// Why authentication did not produce a caller.
enum Failure {
    /// The key is not good; the label is for metrics and logs.
    Refused(&'static str),
    /// The server could not decide (database down).
    Failed(ApiError),
}
use Failure::{Failed, Refused};

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Self {
        Failed(e)
    }
}

impl From<store::StoreError> for Failure {
    fn from(e: store::StoreError) -> Self {
        Failed(e.into())
    }
}

async fn resolve(ctx: &Ctx, text: Option<&str>, source: IpAddr) -> Result<Caller, Failure> {
    let text = text.ok_or(Refused("missing"))?;
    let presented = PresentedKey::parse(text).map_err(|_| Refused("malformed"))?;
    let digest: [u8; 32] = Sha256::digest(text.as_bytes()).into();
    let cached = ctx.key_cache.get(&digest, source);
    ctx.metrics
        .key_cache(if cached.is_some() { "hit" } else { "miss" });
    let (key, touch) = match cached {
        Some(hit) => hit,
        None => {
            let key = Arc::new(verify(ctx, &presented).await?);
            ctx.key_cache.insert(digest, key.clone(), source);
            (key, true)
        }
    };
    let now = time::OffsetDateTime::now_utc();
    if key.revoked_at.is_some() {
        return Err(Refused("revoked"));
    }
    if key.is_expired(now) {
        ctx.key_cache.purge(&key.id);
        return Err(Refused("expired"));
    }
    if !key.allows_source(source) {
        return Err(Refused("source_not_allowed"));
    }
    let scope = GroupScope::from_key(key.group_scope.as_deref());
    Ok(Caller {
        who: Who::Key(key),
        scope,
        source,
        touch,
    })
}

/// Finds the key by fingerprint and verifies the secret: the uncached path.
async fn verify(ctx: &Ctx, presented: &PresentedKey) -> Result<ApiKey, Failure> {
    let (tenant, id) = api_keys::locate(&ctx.state.app, presented)
        .await?
        .ok_or(Refused("unknown"))?;
    if &id != presented.id() {
        return Err(Refused("unknown"));
    }
    // A short transaction for the row; the connection goes back before the hash runs.
    let mut tx = ctx.state.app.begin(tenant).await?;
    let loaded = api_keys::load_for_auth(&mut tx, &id).await?;
    tx.commit().await?;
    let (key, hash) = loaded.ok_or(Refused("unknown"))?;
    let permit = ctx
        .key_verify_permits
        .acquire()
        .await
        .map_err(|_| Failed(ApiError::Internal("verification permits closed".into())))?;
    let secret = zeroize::Zeroizing::new(presented.secret().to_vec());
    let matches = tokio::task::spawn_blocking(move || credentials::verify(Some(&hash), &secret))
        .await
        .map_err(ApiError::from)?;
    drop(permit);
    if matches {
        Ok(key)
    } else {
        Err(Refused("wrong_secret"))
    }
}

pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// A browser request (it carries `Origin`) is allowed only from the key's CORS origins.
fn check_origin(caller: Caller, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(caller);
    };
    let origin = origin.to_str().unwrap_or("");
    let allowed = caller
        .key()
        .and_then(|key| key.cors_origins.as_ref())
        .is_some_and(|origins| origins.iter().any(|o| o == origin));
    if allowed {
        Ok(caller)
    } else {
        Err(ApiError::OriginNotAllowed(origin.to_owned()))
    }
}

/// Verified keys by SHA-256 of the presented text, shared by every request of this fleetd. Holds
/// no secret: a digest of a 256-bit key is as hard to invert as the key, and entries expire
/// after `ttl`. Cheap to clone (one shared map).
#[derive(Clone)]
pub struct KeyCache(Arc<KeyCacheInner>);

struct KeyCacheInner {
    entries: Mutex<HashMap<[u8; 32], CacheEntry>>,
    ttl: Duration,
    capacity: usize,
}

impl std::fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyCache").finish_non_exhaustive()
    }
}

struct CacheEntry {
    key: Arc<ApiKey>,
    verified_at: Instant,
    touched_at: Instant,
    /// The address of the last use written (the request that verified the key writes it).
    touched_from: IpAddr,
}

/// How long a verified key stays in the cache by default.
pub const DEFAULT_KEY_CACHE_TTL: Duration = Duration::from_secs(300);
/// Most keys in the cache (per fleetd) by default.
pub const DEFAULT_KEY_CACHE_CAPACITY: usize = 10_000;

impl Default for KeyCache {
    fn default() -> Self {
        Self::new(DEFAULT_KEY_CACHE_TTL, DEFAULT_KEY_CACHE_CAPACITY)
    }
}

impl KeyCache {
    /// An empty cache whose entries live `ttl` (zero: nothing is cached, every request verifies
    /// its key), holding at most `capacity` keys.
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Self(Arc::new(KeyCacheInner {
            entries: Mutex::new(HashMap::new()),
            ttl,
            capacity: capacity.max(1),
        }))
    }

    /// The cached key and whether its last use is due to be written: every `TOUCH_INTERVAL`,
    /// and at once from an address other than the last one written (so a key used from a new
    /// address is noticed on its first request from there).
    fn get(&self, digest: &[u8; 32], source: IpAddr) -> Option<(Arc<ApiKey>, bool)> {
        let mut entries = self.0.entries.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let entry = entries.get_mut(digest)?;
        if now.duration_since(entry.verified_at) >= self.0.ttl {
            entries.remove(digest);
            return None;
        }
        let touch =
            now.duration_since(entry.touched_at) >= TOUCH_INTERVAL || entry.touched_from != source;
        if touch {
            entry.touched_at = now;
            entry.touched_from = source;
        }
        Some((entry.key.clone(), touch))
    }

    fn insert(&self, digest: [u8; 32], key: Arc<ApiKey>, source: IpAddr) {
        if self.0.ttl.is_zero() {
            return;
        }
        let mut entries = self.0.entries.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if entries.len() >= self.0.capacity {
            entries.retain(|_, e| now.duration_since(e.verified_at) < self.0.ttl);
        }
        if entries.len() >= self.0.capacity {
            // Still full of live keys: forget one; it costs its owner one verification.
            if let Some(victim) = entries.keys().next().copied() {
                entries.remove(&victim);
            }
        }
        entries.insert(
            digest,
            CacheEntry {
                key,
                verified_at: now,
                touched_at: now,
                touched_from: source,
            },
        );
    }

    /// Drops every entry of this key (revoked, expired).
    pub fn purge(&self, id: &ApiKeyId) {
        let mut entries = self.0.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.retain(|_, e| &e.key.id != id);
    }

    /// Drops every entry (revocations may have been missed).
    pub fn clear(&self) {
        self.0
            .entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Keeps purging keys as any fleetd revokes them, until the task is aborted.
    pub async fn follow_revocations(
        self,
        mut listener: store::revocations::ApiKeyRevocationListener,
    ) {
        loop {
            match listener.recv().await {
                store::revocations::KeyRevocation::Key(id) => self.purge(&id),
                store::revocations::KeyRevocation::MaybeMissed => self.clear(),
            }
        }
    }
}

/// Failed attempts per source address in a fixed window; past the limit the address is answered
/// 429 before any lookup until the window ends. Bounded in memory. One instance counts API key
/// failures, another failed enrollments.
pub(crate) struct FailureLimiter {
    windows: Mutex<HashMap<IpAddr, (u32, Instant)>>,
    limit: u32,
    window: Duration,
}

/// Most addresses tracked at once; beyond it, expired windows are dropped first.
const MAX_TRACKED_SOURCES: usize = 100_000;

impl FailureLimiter {
    pub(crate) fn new(limit: u32, window: Duration) -> Self {
        Self {
            windows: Mutex::new(HashMap::new()),
            limit: limit.max(1),
            window,
        }
    }

    /// Seconds to wait when `source` is over the limit.
    pub(crate) fn blocked(&self, source: IpAddr) -> Option<u64> {
        let windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let (count, started) = windows.get(&source)?;
        let elapsed = started.elapsed();
        (*count >= self.limit && elapsed < self.window)
            .then(|| (self.window - elapsed).as_secs().max(1))
    }

    pub(crate) fn record(&self, source: IpAddr) {
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let entry = self.current_window(&mut windows, source);
        entry.0 = entry.0.saturating_add(1);
    }

    /// Counts an attempt of `source` as failed before it runs, or returns the seconds to wait
    /// when `source` is over the limit. Concurrent attempts cannot overshoot the limit this way;
    /// an attempt that does not fail is handed back with [`FailureLimiter::give_back`].
    pub(crate) fn try_take(&self, source: IpAddr) -> Result<(), u64> {
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let (limit, window) = (self.limit, self.window);
        let entry = self.current_window(&mut windows, source);
        if entry.0 >= limit {
            return Err((window.saturating_sub(entry.1.elapsed())).as_secs().max(1));
        }
        entry.0 += 1;
        Ok(())
    }

    /// Hands back an attempt taken with [`FailureLimiter::try_take`] that did not fail.
    pub(crate) fn give_back(&self, source: IpAddr) {
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = windows.get_mut(&source) {
            entry.0 = entry.0.saturating_sub(1);
        }
    }

    /// The count and start of `source`'s window, a new one if the last has ended.
    fn current_window<'a>(
        &self,
        windows: &'a mut HashMap<IpAddr, (u32, Instant)>,
        source: IpAddr,
    ) -> &'a mut (u32, Instant) {
        let now = Instant::now();
        if windows.len() >= MAX_TRACKED_SOURCES {
            windows.retain(|_, (_, started)| now.duration_since(*started) < self.window);
        }
        let entry = windows.entry(source).or_insert((0, now));
        if now.duration_since(entry.1) >= self.window {
            *entry = (0, now);
        }
        entry
    }
}

/// Whether `creator` may create a key with `role` and `scope`: never more power than its own
/// (a lower or equal role, a scope within its own).
pub(crate) fn may_create_key(
    creator: &Caller,
    role: Role,
    scope: Option<&[store::DeviceGroupId]>,
) -> Result<(), ApiError> {
    if role.rank() > creator.role().rank() {
        return Err(ApiError::Forbidden(format!(
            "a key with role {} cannot create a key with role {role}",
            creator.role()
        )));
    }
    if let GroupScope::Only(own) = creator.scope() {
        let within = scope.is_some_and(|asked| asked.iter().all(|g| own.contains(g)));
        if !within {
            return Err(ApiError::Forbidden(
                "a group-scoped key can only create keys limited to its own groups".into(),
            ));
        }
    }
    Ok(())
}

/// Whether `caller` may revoke `target`: only keys of a role at most its own.
pub(crate) fn may_revoke_key(caller: &Caller, target: &ApiKey) -> Result<(), ApiError> {
    if target.role.rank() > caller.role().rank() {
        return Err(ApiError::Forbidden(format!(
            "a key with role {} cannot revoke a key with role {}",
            caller.role(),
            target.role
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_slowed_per_address_and_forgotten_after_the_window() {
        let limiter = FailureLimiter::new(3, Duration::from_millis(200));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(limiter.blocked(a), None);
            limiter.record(a);
        }
        assert!(limiter.blocked(a).is_some());
        assert_eq!(limiter.blocked(b), None);
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(limiter.blocked(a), None);
    }

    #[test]
    fn attempts_taken_ahead_stop_at_the_limit_and_only_for_that_address() {
        let limiter = FailureLimiter::new(2, Duration::from_secs(60));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert_eq!(limiter.try_take(a), Ok(()));
        assert_eq!(limiter.try_take(a), Ok(()));
        let wait = limiter.try_take(a).unwrap_err();
        assert!((59..=60).contains(&wait), "{wait}");
        assert_eq!(limiter.try_take(b), Ok(()));
        // An attempt that succeeded is handed back: the address may try again.
        limiter.give_back(a);
        assert_eq!(limiter.try_take(a), Ok(()));
        assert!(limiter.try_take(a).is_err());
    }

    #[test]
    fn bearer_takes_only_the_bearer_scheme() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer(&headers), None);
        headers.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer(&headers), None);
        headers.insert(header::AUTHORIZATION, "bearer fpk_x".parse().unwrap());
        assert_eq!(bearer(&headers), Some("fpk_x"));
    }
}

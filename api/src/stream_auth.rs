//! Live streams' API keys: the broker's subscribers log in with an API key (username = its id,
//! password = the key), checked exactly as a management request's `Authorization: Bearer` key
//! ([`crate::auth`]: the failure limiter, the verified-key cache, argon2, expiry, revocation,
//! allowed CIDRs, the last-used touch), then against [`permissions::LIVE_STREAM`].

use std::collections::HashSet;
use std::net::IpAddr;

use store::api_keys::{self, Role};
use store::device_groups::GroupScope;
use store::devices::{self, DeviceFilter};
use store::{ApiKeyId, DeviceId, TenantId};

use crate::error::ApiError;
use crate::permissions;
use crate::Ctx;

/// Devices read per query when a group scope is expanded.
const SCOPE_PAGE: i64 = 1000;

/// A key allowed to read its tenant's live stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamCaller {
    /// The key's tenant.
    pub tenant: TenantId,
    /// The key's public id.
    pub key_id: ApiKeyId,
    /// Its role.
    pub role: Role,
    /// Its groups.
    pub scope: GroupScope,
}

/// Why a key may not read the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamDenial {
    /// No key, a bad one (unknown, wrong, malformed, revoked, expired, not from this address,
    /// an address being slowed), or a username that is not the key's id.
    BadCredentials,
    /// A good key whose role or scope the permission table does not allow.
    NotAuthorized,
}

/// Checks live-stream keys with the management API's own authentication: made by
/// [`crate::router_and_stream_auth`], sharing the router's cache, limiter and permits.
#[derive(Clone)]
pub struct StreamAuth(pub(crate) Ctx);

impl std::fmt::Debug for StreamAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamAuth").finish_non_exhaustive()
    }
}

impl StreamAuth {
    /// Checks the login of a new subscriber from `source`. `Err`: the server could not decide
    /// (the database is away): refuse, fail closed.
    pub async fn authenticate(
        &self,
        key_id: &str,
        key: &str,
        source: IpAddr,
    ) -> Result<Result<StreamCaller, StreamDenial>, ApiError> {
        let ctx = &self.0;
        let caller = match crate::auth::authenticate_key(ctx, Some(key), source).await {
            Ok(caller) => caller,
            Err(ApiError::InvalidApiKey | ApiError::TooManyFailures { .. }) => {
                return Ok(Err(StreamDenial::BadCredentials));
            }
            Err(e) => return Err(e),
        };
        let Some(key) = caller.key() else {
            return Err(ApiError::Internal("a stream caller is always a key".into()));
        };
        if key.id.as_str() != key_id {
            ctx.metrics.auth_refusal("username_not_key_id");
            return Ok(Err(StreamDenial::BadCredentials));
        }
        // Re-reads revocation and records the use, as every management request does.
        match caller.begin(ctx).await {
            Ok(tx) => tx.commit().await?,
            Err(ApiError::InvalidApiKey) => return Ok(Err(StreamDenial::BadCredentials)),
            Err(e) => return Err(e),
        }
        Ok(permitted(StreamCaller {
            tenant: key.tenant_id,
            key_id: key.id.clone(),
            role: key.role,
            scope: caller.scope().clone(),
        }))
    }

    /// Checks a live subscriber's key again: still there, unrevoked, unexpired, and allowed.
    pub async fn recheck(
        &self,
        tenant: TenantId,
        key_id: &ApiKeyId,
    ) -> Result<Result<StreamCaller, StreamDenial>, ApiError> {
        let mut tx = self.0.state.app.begin(tenant).await?;
        let key = api_keys::get(&mut tx, key_id).await?;
        tx.rollback().await?;
        let now = time::OffsetDateTime::now_utc();
        let Some(key) = key.filter(|key| key.revoked_at.is_none() && !key.is_expired(now)) else {
            self.0.key_cache.purge(key_id);
            return Ok(Err(StreamDenial::BadCredentials));
        };
        Ok(permitted(StreamCaller {
            tenant: key.tenant_id,
            key_id: key.id,
            role: key.role,
            scope: GroupScope::from_key(key.group_scope.as_deref()),
        }))
    }

    /// The devices a scoped caller may see now (`None`: every device of the tenant).
    pub async fn scope_devices(
        &self,
        caller: &StreamCaller,
    ) -> Result<Option<HashSet<DeviceId>>, ApiError> {
        if caller.scope == GroupScope::All {
            return Ok(None);
        }
        let mut tx = self.0.state.app.begin(caller.tenant).await?;
        let mut devices_in_scope = HashSet::new();
        let mut after = None;
        loop {
            let page = devices::list(
                &mut tx,
                &caller.scope,
                &DeviceFilter::default(),
                after,
                SCOPE_PAGE,
            )
            .await?;
            after = page.last().map(|device| device.id);
            let full = page.len() as i64 == SCOPE_PAGE;
            devices_in_scope.extend(page.into_iter().map(|device| device.id));
            if !full {
                break;
            }
        }
        tx.rollback().await?;
        Ok(Some(devices_in_scope))
    }
}

/// The caller, if the permission table lets its role and scope read the stream.
fn permitted(caller: StreamCaller) -> Result<StreamCaller, StreamDenial> {
    let scoped = caller.scope != GroupScope::All;
    if permissions::LIVE_STREAM.allows(caller.role, scoped) {
        Ok(caller)
    } else {
        Err(StreamDenial::NotAuthorized)
    }
}

//! Device -> tenant resolution with a small per-instance cache.
//!
//! The answer comes from `fleet_device_directory` ([`store::device_directory`]). A device never
//! changes tenant, so a positive answer is reused for `directory_ttl`; "unknown" only for
//! `directory_negative_ttl`. Revocation is not taken from the cache: every batch transaction
//! reads the device's status under its lock, so a revoked device's records are refused from the
//! first batch after the revocation commits.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use store::device_directory::{self, DirectoryEntry};
use store::{AppDb, DeviceId, StoreError, TenantId};

/// Cached lookups.
pub(crate) struct Directory {
    app: AppDb,
    entries: HashMap<DeviceId, (Option<TenantId>, Instant)>,
    ttl: Duration,
    negative_ttl: Duration,
    capacity: usize,
}

impl Directory {
    pub(crate) fn new(app: AppDb, ttl: Duration, negative_ttl: Duration, capacity: usize) -> Self {
        Self {
            app,
            entries: HashMap::new(),
            ttl,
            negative_ttl,
            capacity: capacity.max(1),
        }
    }

    /// The tenant of `device`, or `None` when no tenant has it.
    pub(crate) async fn tenant_of(
        &mut self,
        device: DeviceId,
    ) -> Result<Option<TenantId>, StoreError> {
        let now = Instant::now();
        if let Some((tenant, expires)) = self.entries.get(&device) {
            if *expires > now {
                return Ok(*tenant);
            }
        }
        let found: Vec<DirectoryEntry> = device_directory::lookup(&self.app, &[device]).await?;
        let tenant = found.first().map(|entry| entry.tenant_id);
        self.remember(device, tenant, now);
        Ok(tenant)
    }

    fn remember(&mut self, device: DeviceId, tenant: Option<TenantId>, now: Instant) {
        if self.entries.len() >= self.capacity {
            self.entries.retain(|_, (_, expires)| *expires > now);
            if self.entries.len() >= self.capacity {
                self.entries.clear();
            }
        }
        let ttl = if tenant.is_some() {
            self.ttl
        } else {
            self.negative_ttl
        };
        self.entries.insert(device, (tenant, now + ttl));
    }
}

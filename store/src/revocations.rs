//! Device revocations across processes: Postgres `NOTIFY` on [`CHANNEL`], `LISTEN` in every
//! fleetd.
//!
//! [`crate::devices::revoke`] queues `pg_notify(CHANNEL, '<tenant>:<device>')` in the revoking
//! transaction; Postgres delivers it at commit to every session listening, on any host, so
//! `fleetctl device revoke` run anywhere reaches every broker. [`RevocationListener`] is the
//! receiving end.
//!
//! # What a consumer must do
//!
//! NOTIFY is not durable: a notification sent while the listener's connection is down is lost.
//! The listener reconnects by itself and then returns [`Revocation::MaybeMissed`]; the consumer
//! must then re-check every live device connection with [`crate::devices::is_active`] (and keep
//! checking at every handshake, which does not depend on notifications at all).
//!
//! A notification is a hint, not an authority: any role that can connect may `NOTIFY` on any
//! channel. Payloads that do not parse are logged and skipped; the consumer must re-read the
//! device's status (by device id: the payload's tenant is not trusted either) before closing a
//! connection, so that a forged notification costs one query, not a disconnect. It must also
//! re-check every live connection once after [`RevocationListener::connect`]: connections
//! admitted before the listener listened were covered by no notification.

use std::time::Duration;

use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::PgPool;

use crate::{AppDb, DeviceId, StoreError, TenantId, TenantTx};

/// The notification channel for device revocations.
pub const CHANNEL: &str = "fleet_device_revoked";

const RECONNECT_BACKOFF_START: Duration = Duration::from_millis(100);
const RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// What the listener reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Revocation {
    /// This device of this tenant was revoked: close its live connections.
    Device {
        /// Its tenant.
        tenant_id: TenantId,
        /// The device.
        device_id: DeviceId,
    },
    /// The connection to Postgres was lost and has been re-established: revocations in between
    /// may have been missed. Re-check every live connection with `devices::is_active`.
    MaybeMissed,
}

/// Queues the notification for `device` in the caller's transaction (delivered at commit).
pub(crate) async fn notify(tx: &mut TenantTx, device: DeviceId) -> Result<(), StoreError> {
    let payload = format!("{}:{}", tx.tenant(), device);
    sqlx::query!("SELECT pg_notify($1, $2)", CHANNEL, payload)
        .fetch_one(tx.conn())
        .await?;
    Ok(())
}

/// Parses a `<tenant uuid>:<device uuid>` payload.
fn parse_payload(payload: &str) -> Option<Revocation> {
    let (tenant, device) = payload.split_once(':')?;
    Some(Revocation::Device {
        tenant_id: tenant.parse().ok()?,
        device_id: device.parse().ok()?,
    })
}

/// Receives device revocations from every process that writes to the database.
///
/// It owns one dedicated connection (as the application role; `LISTEN` needs no privilege),
/// separate from the application pool.
pub struct RevocationListener {
    channel: ChannelListener,
}

impl RevocationListener {
    /// Connects and starts listening. Notifications committed after this returns are received.
    pub async fn connect(app: &AppDb) -> Result<Self, StoreError> {
        Ok(Self {
            channel: ChannelListener::connect(app, CHANNEL, "fleetd-revocations").await?,
        })
    }

    /// The next revocation, or [`Revocation::MaybeMissed`] after a reconnect. Never fails: a lost
    /// connection is re-established with backoff (up to 5 s between attempts), and waiting
    /// continues until it is. Cancel-safe: dropping the future loses no notification that
    /// Postgres already delivered to the connection's buffer.
    pub async fn recv(&mut self) -> Revocation {
        loop {
            match self.channel.recv().await {
                None => return Revocation::MaybeMissed,
                Some(payload) => match parse_payload(&payload) {
                    Some(revocation) => return revocation,
                    None => tracing::warn!(
                        channel = CHANNEL,
                        payload,
                        "ignoring a malformed revocation notification"
                    ),
                },
            }
        }
    }
}

/// What [`ApiKeyRevocationListener`] reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyRevocation {
    /// This key was revoked: drop it from every cache.
    Key(crate::ApiKeyId),
    /// Notifications may have been missed while the connection was down: drop every cached key.
    MaybeMissed,
}

/// Receives API key revocations ([`crate::api_keys::CHANGED_CHANNEL`]) from every process that
/// writes to the database, so that each fleetd drops the key from its cache at once. (Requests
/// re-read revocation in their own transaction anyway: this keeps the cache clean, it is not
/// what refuses a revoked key.)
pub struct ApiKeyRevocationListener {
    channel: ChannelListener,
}

impl ApiKeyRevocationListener {
    /// Connects and starts listening.
    pub async fn connect(app: &AppDb) -> Result<Self, StoreError> {
        Ok(Self {
            channel: ChannelListener::connect(
                app,
                crate::api_keys::CHANGED_CHANNEL,
                "fleetd-key-revocations",
            )
            .await?,
        })
    }

    /// The next revoked key, or [`KeyRevocation::MaybeMissed`] after a reconnect. Never fails.
    pub async fn recv(&mut self) -> KeyRevocation {
        loop {
            match self.channel.recv().await {
                None => return KeyRevocation::MaybeMissed,
                Some(payload) => match payload.parse() {
                    Ok(id) => return KeyRevocation::Key(id),
                    Err(_) => tracing::warn!(
                        channel = crate::api_keys::CHANGED_CHANNEL,
                        payload,
                        "ignoring a malformed key notification"
                    ),
                },
            }
        }
    }
}

/// One `LISTEN` on one channel over a dedicated connection, reconnecting with backoff.
struct ChannelListener {
    pool: PgPool,
    listener: Option<PgListener>,
    channel: &'static str,
}

impl ChannelListener {
    async fn connect(
        app: &AppDb,
        channel: &'static str,
        application_name: &str,
    ) -> Result<Self, StoreError> {
        let options = app.pool().connect_options().as_ref().clone();
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .max_lifetime(None)
            .idle_timeout(None)
            .connect_lazy_with(options.application_name(application_name));
        let listener = listen(&pool, channel).await?;
        Ok(Self {
            pool,
            listener: Some(listener),
            channel,
        })
    }

    /// The next payload; `None` after the connection was lost and re-established.
    async fn recv(&mut self) -> Option<String> {
        loop {
            let Some(listener) = self.listener.as_mut() else {
                self.listener = Some(self.reconnect().await);
                return None;
            };
            match listener.try_recv().await {
                Ok(Some(notification)) => return Some(notification.payload().to_owned()),
                // Lost and (eagerly) re-established by sqlx.
                Ok(None) => return None,
                Err(e) => {
                    tracing::warn!(error = %e, channel = self.channel, "listener lost its connection");
                    self.listener = None;
                }
            }
        }
    }

    async fn reconnect(&self) -> PgListener {
        let mut backoff = RECONNECT_BACKOFF_START;
        loop {
            match listen(&self.pool, self.channel).await {
                Ok(listener) => {
                    tracing::info!(channel = self.channel, "listener reconnected");
                    return listener;
                }
                Err(e) => {
                    tracing::warn!(error = %e, channel = self.channel, retry_in = ?backoff, "listener cannot reconnect");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(RECONNECT_BACKOFF_MAX);
                }
            }
        }
    }
}

async fn listen(pool: &PgPool, channel: &str) -> Result<PgListener, StoreError> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(channel).await?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_parse_strictly() {
        let tenant = TenantId::new_random();
        let device = DeviceId::new_random();
        assert_eq!(
            parse_payload(&format!("{tenant}:{device}")),
            Some(Revocation::Device {
                tenant_id: tenant,
                device_id: device
            })
        );
        for bad in ["", ":", "x:y", &tenant.to_string(), &format!("{tenant}:")] {
            assert_eq!(parse_payload(bad), None, "{bad:?}");
        }
    }
}

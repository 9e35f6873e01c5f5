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
//! channel. Payloads that do not parse are logged and skipped; a consumer that wants to be
//! strict re-checks `is_active` before closing a connection (a forged notification then costs
//! one query, not a disconnect).

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
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(payload)
        .execute(tx.conn())
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
    pool: PgPool,
    listener: Option<PgListener>,
}

impl RevocationListener {
    /// Connects and starts listening. Notifications committed after this returns are received.
    pub async fn connect(app: &AppDb) -> Result<Self, StoreError> {
        let options = app.pool().connect_options().as_ref().clone();
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .max_lifetime(None)
            .idle_timeout(None)
            .connect_lazy_with(options.application_name("fleetd-revocations"));
        let listener = listen(&pool).await?;
        Ok(Self {
            pool,
            listener: Some(listener),
        })
    }

    /// The next revocation, or [`Revocation::MaybeMissed`] after a reconnect. Never fails: a lost
    /// connection is re-established with backoff (up to 5 s between attempts), and waiting
    /// continues until it is. Cancel-safe: dropping the future loses no notification that
    /// Postgres already delivered to the connection's buffer.
    pub async fn recv(&mut self) -> Revocation {
        loop {
            let Some(listener) = self.listener.as_mut() else {
                self.listener = Some(self.reconnect().await);
                return Revocation::MaybeMissed;
            };
            match listener.try_recv().await {
                Ok(Some(notification)) => match parse_payload(notification.payload()) {
                    Some(revocation) => return revocation,
                    None => tracing::warn!(
                        channel = CHANNEL,
                        payload = notification.payload(),
                        "ignoring a malformed revocation notification"
                    ),
                },
                // Lost and (eagerly) re-established by sqlx.
                Ok(None) => return Revocation::MaybeMissed,
                Err(e) => {
                    tracing::warn!(error = %e, "revocation listener lost its connection");
                    self.listener = None;
                }
            }
        }
    }

    async fn reconnect(&self) -> PgListener {
        let mut backoff = RECONNECT_BACKOFF_START;
        loop {
            match listen(&self.pool).await {
                Ok(listener) => {
                    tracing::info!("revocation listener reconnected");
                    return listener;
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "revocation listener cannot reconnect");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(RECONNECT_BACKOFF_MAX);
                }
            }
        }
    }
}

async fn listen(pool: &PgPool) -> Result<PgListener, StoreError> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(CHANNEL).await?;
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

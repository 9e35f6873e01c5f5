//! Certificate renewal while running: checked at start and every `renewal.check` (±25 %),
//! due once a third of the lifetime remains; a renewed certificate is installed, reported
//! as an event, and the broker link reconnects with it.

use tokio::time::Instant;
use tracing::{error, info, warn};
use wire::{AgentEvent, Body, CertificateRenewed, UnixMillis};

use super::link::Link;
use super::{check_not_expired, Agent, RunError};
use crate::certinfo::{self, rfc3339};
use crate::enroll::{self, EnrollError};

impl Agent {
    pub(super) async fn check_renewal(&mut self) -> Result<(), RunError> {
        let check = self.config.renewal.check;
        self.next_renewal_check = Instant::now() + check.mul_f64(0.75 + fastrand::f64() * 0.5);
        check_not_expired(&self.identity)?;
        if !self.identity.validity.renewal_due(certinfo::now_secs()) {
            return Ok(());
        }
        info!(expires = %rfc3339(self.identity.validity.not_after), "renewing the device certificate");
        let timeout = self.config.renewal.timeout;
        match enroll::renew(&self.dir, &self.identity, timeout).await {
            Ok(identity) => {
                info!(expires = %rfc3339(identity.validity.not_after), "certificate renewed");
                let not_after = UnixMillis((identity.validity.not_after.max(0) as u64) * 1000);
                self.identity = identity;
                self.append(Body::Event(AgentEvent::CertificateRenewed(
                    CertificateRenewed { not_after },
                )))
                .await?;
                // Reconnect with the new certificate.
                self.link = Link::Idle {
                    retry_at: Instant::now(),
                };
            }
            Err(err @ EnrollError::Refused { .. }) => error!("{err}"),
            Err(err) => warn!("{err}; will retry"),
        }
        Ok(())
    }
}

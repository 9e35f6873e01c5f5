//! The fleet PKI as fleetd uses it: the issuing CA (loaded, or a development PKI created on
//! first start) and a fresh server certificate for the listeners at every start.

use std::sync::Arc;

use anyhow::Context;
use certs::{IssuingCa, Pki, PkiOrigin, ServerCertParams, ServerCertificate};

use crate::Config;

/// What the listeners need from the PKI.
pub struct ServerPki {
    /// Signs device certificates at enrollment.
    pub issuing_ca: Arc<IssuingCa>,
    /// The API's and broker's certificate chain and key, issued at this start.
    pub server_cert: ServerCertificate,
}

/// Loads the configured PKI, or the development PKI in the data directory (creating it on
/// first start), and issues the server certificate. The root key is never read.
pub fn prepare(config: &Config) -> anyhow::Result<ServerPki> {
    let dir = config.pki_dir();
    let issuing_ca = if config.uses_dev_pki() {
        if config.data_dir.exists() {
            certs::check_trusted_path(&config.data_dir).context("data_dir")?;
        }
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating data_dir {}", config.data_dir.display()))?;
        let (issuing_ca, origin) = Pki::load_or_generate_dev(&dir)
            .with_context(|| format!("development PKI in {}", dir.display()))?;
        if origin == PkiOrigin::Generated {
            tracing::warn!(
                dir = %dir.display(),
                "created a development PKI; for production create one with `fleetctl pki init --dir DIR`, \
                 keep root-ca.key offline and set pki.dir"
            );
        }
        issuing_ca
    } else {
        IssuingCa::load(&dir)
            .with_context(|| format!("loading the PKI in pki.dir {}", dir.display()))?
    };
    let params = ServerCertParams::new(
        config.pki.server_names.clone(),
        config.pki.server_ips.clone(),
    );
    let server_cert = issuing_ca
        .issue_server_cert(&params)
        .context("issuing the server certificate (pki.server_names, pki.server_ips)")?;
    tracing::info!(
        pki = %dir.display(),
        names = ?config.pki.server_names,
        ips = ?config.pki.server_ips,
        expires = %server_cert.not_after(),
        "server certificate issued"
    );
    Ok(ServerPki {
        issuing_ca: Arc::new(issuing_ca),
        server_cert,
    })
}

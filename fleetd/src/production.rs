//! Production mode (`production = true`, `--production`): fleetd refuses to start on the
//! development defaults that make the quickstart work. Checked before anything is created on
//! disk, so a refused start leaves no development PKI behind.

use std::net::SocketAddr;

use crate::Config;

/// Why production mode refused to start: every reason found, so one run tells all.
#[derive(Debug, thiserror::Error)]
#[error("production mode refuses to start: {}", reasons.join("; "))]
pub struct ProductionRefusal {
    /// One sentence per development default in use, naming the setting or file.
    pub reasons: Vec<String>,
}

/// Refuses, in production mode, a generated (development) PKI, a root CA key on this host and
/// non-loopback listeners without a configured PKI. Logs which mode fleetd starts in either way.
pub fn check(config: &Config) -> Result<(), ProductionRefusal> {
    if !config.production {
        tracing::info!(
            "production mode off: development defaults are allowed (a generated PKI in data_dir); \
             set production = true or --production to refuse them"
        );
        return Ok(());
    }
    let reasons = development_defaults(config);
    if !reasons.is_empty() {
        return Err(ProductionRefusal { reasons });
    }
    tracing::info!(pki = %config.pki_dir().display(), "production mode on: configured PKI, root key offline");
    Ok(())
}

/// The development defaults `config` relies on, one sentence each.
fn development_defaults(config: &Config) -> Vec<String> {
    let mut reasons = Vec::new();
    if config.uses_dev_pki() {
        reasons.push(format!(
            "pki.dir is unset, so fleetd would use or generate a development PKI in {} with its \
             root key on this host (create one with `fleetctl pki init --dir DIR`, move \
             root-ca.key offline, set pki.dir)",
            config.pki_dir().display()
        ));
        let exposed = exposed_listeners(config);
        if !exposed.is_empty() {
            reasons.push(format!(
                "{} listen beyond loopback without a configured PKI",
                exposed.join(", ")
            ));
        }
    } else {
        let root_key = certs::PkiLayout::in_dir(&config.pki_dir()).root_key;
        match root_key.try_exists() {
            Ok(false) => {}
            Ok(true) => reasons.push(format!(
                "the root CA key {} is on this host: move it offline (fleetd needs only \
                 root-ca.pem, issuing-ca.pem and issuing-ca.key)",
                root_key.display()
            )),
            Err(e) => reasons.push(format!(
                "cannot tell whether the root CA key {} is on this host: {e}",
                root_key.display()
            )),
        }
    }
    reasons
}

/// The listeners bound to something other than a loopback address, as `field address`.
fn exposed_listeners(config: &Config) -> Vec<String> {
    let mut listeners: Vec<(&str, SocketAddr)> = vec![
        ("api_listen", config.api_listen),
        ("metrics_listen", config.metrics_listen),
    ];
    if config.external_broker.url.is_none() {
        listeners.push(("broker_listen", config.broker_listen));
    }
    listeners
        .into_iter()
        .filter(|(_, addr)| !addr.ip().is_loopback())
        .map(|(field, addr)| format!("{field} {addr}"))
        .collect()
}

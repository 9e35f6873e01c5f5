//! Production mode (`production = true`, `--production`): fleetd refuses to start on the
//! development defaults that make the quickstart work. Checked before anything is created on
//! disk, so a refused start leaves no development PKI behind.
//!
//! One of those defaults is refused in every mode: the development PKI (its root key on this
//! host) behind a listener beyond loopback. Without production mode fleetd still starts on the
//! development PKI, but only in a loopback-only configuration.

use std::net::SocketAddr;

use crate::Config;

/// Why production mode refused to start: every reason found, so one run tells all.
#[derive(Debug, thiserror::Error)]
#[error("production mode refuses to start: {}", reasons.join("; "))]
pub struct ProductionRefusal {
    /// One sentence per development default in use, naming the setting or file.
    pub reasons: Vec<String>,
}

/// The development PKI behind a listener beyond loopback, refused whatever the mode.
#[derive(Debug, thiserror::Error)]
#[error(
    "refusing to start: the development PKI (pki.dir is unset, its root key is on this host) \
     behind a listener beyond loopback: {}; listen on loopback only, or create a PKI with \
     `fleetctl pki init --dir DIR`, move root-ca.key offline and set pki.dir",
    listeners.join(", ")
)]
pub struct ExposedDevelopmentPki {
    /// The exposed listeners, as `field address`.
    pub listeners: Vec<String>,
}

/// Why fleetd refused to start on development defaults.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// Production mode found development defaults.
    #[error(transparent)]
    Production(#[from] ProductionRefusal),
    /// The development PKI behind an exposed listener (any mode).
    #[error(transparent)]
    ExposedDevelopmentPki(#[from] ExposedDevelopmentPki),
}

/// Refuses, in production mode, a generated (development) PKI, a root CA key on this host and
/// non-loopback listeners without a configured PKI; in every mode, the development PKI behind
/// a listener beyond loopback. Logs which mode fleetd starts in.
pub fn check(config: &Config) -> Result<(), Refusal> {
    if !config.production {
        if config.uses_dev_pki() {
            let listeners = exposed_listeners(config);
            if !listeners.is_empty() {
                return Err(ExposedDevelopmentPki { listeners }.into());
            }
        }
        tracing::info!(
            "production mode off: development defaults are allowed (a generated PKI in data_dir, \
             on loopback listeners only); set production = true or --production to refuse them"
        );
        return Ok(());
    }
    let reasons = development_defaults(config);
    if !reasons.is_empty() {
        return Err(ProductionRefusal { reasons }.into());
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

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::path::PathBuf;

    use super::*;

    fn exposed(addr: &str) -> SocketAddr {
        addr.parse().unwrap()
    }

    #[test]
    fn the_development_pki_is_refused_behind_an_exposed_listener_in_every_mode() {
        for production in [false, true] {
            let config = Config {
                production,
                api_listen: exposed("0.0.0.0:8443"),
                metrics_listen: exposed("[::]:9464"),
                ..Config::default()
            };
            let message = check(&config).unwrap_err().to_string();
            assert!(
                message.contains("api_listen 0.0.0.0:8443")
                    && message.contains("metrics_listen [::]:9464"),
                "production {production}: {message}"
            );
            assert!(!message.contains("broker_listen"), "{message}");
        }
        let broker_only = Config {
            broker_listen: exposed("192.0.2.1:8883"),
            ..Config::default()
        };
        assert!(matches!(
            check(&broker_only),
            Err(Refusal::ExposedDevelopmentPki(ExposedDevelopmentPki { listeners }))
                if listeners == ["broker_listen 192.0.2.1:8883"]
        ));
    }

    #[test]
    fn loopback_only_configurations_start_on_the_development_pki_outside_production_mode() {
        let loopback = Config {
            api_listen: exposed("[::1]:8443"),
            broker_listen: exposed("127.0.0.2:8883"),
            ..Config::default()
        };
        check(&loopback).unwrap();
        let production = Config {
            production: true,
            ..loopback
        };
        assert!(matches!(check(&production), Err(Refusal::Production(_))));
    }

    #[test]
    fn a_configured_pki_may_listen_beyond_loopback() {
        let pki = tempfile::tempdir().unwrap();
        let mut config = Config {
            api_listen: exposed("0.0.0.0:8443"),
            broker_listen: exposed("0.0.0.0:8883"),
            ..Config::default()
        };
        config.pki.dir = Some(PathBuf::from(pki.path()));
        check(&config).unwrap();
        config.production = true;
        check(&config).unwrap();
    }
}

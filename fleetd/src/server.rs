//! Start-up in order (PKI, database, then listeners), and shutdown in reverse.

use std::net::SocketAddr;

use anyhow::Context;
use store::{Database, Purpose};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::pki::ServerPki;
use crate::Config;

/// A started fleetd.
pub struct Running {
    config: Config,
    pki: ServerPki,
    database: Database,
    api_addr: SocketAddr,
    stop: watch::Sender<bool>,
    api: JoinHandle<std::io::Result<()>>,
}

/// Loads the PKI, opens the database (creating and starting the private cluster when no URL is
/// configured, applying migrations, checking every tenant's audit chain head) and starts the
/// listeners. A failure after the database is open closes it again.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    let pki = crate::pki::prepare(&config)?;
    let database = Database::open(&config.database_settings(), Purpose::Server)
        .await
        .context("opening the database")?;
    let (stop, stopped) = watch::channel(false);
    let api = match start_api(&config, &pki, &database, stopped).await {
        Ok(api) => api,
        Err(e) => {
            database.close().await.ok();
            return Err(e);
        }
    };
    let (api_addr, api) = api;
    tracing::info!(
        api = %format!("https://{api_addr}"),
        database = if config.database_url.is_empty() { "private cluster" } else { "external" },
        data_dir = %config.data_dir.display(),
        "fleetd ready",
    );
    Ok(Running { config, pki, database, api_addr, stop, api })
}

/// The HTTPS API: enrollment, health.
async fn start_api(
    config: &Config,
    pki: &ServerPki,
    database: &Database,
    mut stopped: watch::Receiver<bool>,
) -> anyhow::Result<(SocketAddr, JoinHandle<std::io::Result<()>>)> {
    let listener = TcpListener::bind(config.api_listen)
        .await
        .with_context(|| format!("binding api_listen {}", config.api_listen))?;
    let addr = listener.local_addr()?;
    let tls = api::tls_server_config_for(&pki.server_cert).context("API TLS configuration")?;
    let state = api::ApiState {
        device_cert_lifetime: config.pki.device_cert_lifetime,
        trusted_proxies: config.enrollment.trusted_proxies.clone(),
        ..api::ApiState::new(database.app.clone(), pki.issuing_ca.clone(), config.broker_url())
    };
    let shutdown = async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    };
    let task = tokio::spawn(api::serve_tls(listener, tls, api::router(state), shutdown));
    Ok((addr, task))
}

impl Running {
    /// Where the HTTPS API listens (useful with port 0).
    pub fn api_addr(&self) -> SocketAddr {
        self.api_addr
    }

    /// The PKI in use.
    pub fn pki(&self) -> &ServerPki {
        &self.pki
    }

    /// The open database.
    pub fn database(&self) -> &Database {
        &self.database
    }

    /// Resolves if the private cluster dies under us: fleetd cannot go on without it.
    pub async fn fatal(&self) -> String {
        match self.database.cluster() {
            Some(cluster) => cluster.exited().await,
            None => std::future::pending().await,
        }
    }

    /// Stops accepting, lets in-flight requests finish (up to `shutdown_grace`), closes the
    /// database and stops the private cluster.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        tracing::info!("fleetd stopping");
        let _ = self.stop.send(true);
        match tokio::time::timeout(self.config.shutdown_grace, self.api).await {
            Ok(joined) => joined.context("API task")?.context("API listener")?,
            Err(_) => tracing::warn!("in-flight requests did not finish within shutdown_grace"),
        }
        self.database.close().await.context("closing the database")?;
        tracing::info!("fleetd stopped");
        Ok(())
    }
}

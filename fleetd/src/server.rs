//! Start-up in order (database, then listeners), and shutdown in reverse.

use std::net::SocketAddr;

use anyhow::Context;
use store::{Database, Purpose};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::{http, Config};

/// A started fleetd.
pub struct Running {
    api_addr: SocketAddr,
    database: Database,
    stop: watch::Sender<bool>,
    api: JoinHandle<std::io::Result<()>>,
    config: Config,
    pki: crate::pki::ServerPki,
}

/// Opens the database (creating and starting the private cluster when no URL is configured,
/// applying migrations, checking every tenant's audit chain head) and starts the listeners.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    let pki = crate::pki::prepare(&config)?;
    let database = Database::open(&config.database_settings(), Purpose::Server)
        .await
        .context("opening the database")?;
    let listener = match tokio::net::TcpListener::bind(config.api_listen).await {
        Ok(listener) => listener,
        Err(e) => {
            database.close().await.ok();
            return Err(e).with_context(|| format!("binding api_listen {}", config.api_listen));
        }
    };
    let api_addr = listener.local_addr()?;
    let (stop, stopped) = watch::channel(false);
    let api = tokio::spawn(serve(listener, http::router(database.app.clone()), stopped));
    tracing::info!(
        api = %format!("http://{api_addr}"),
        database = if config.database_url.is_empty() { "private cluster" } else { "external" },
        data_dir = %config.data_dir.display(),
        "fleetd ready",
    );
    Ok(Running {
        api_addr,
        database,
        stop,
        api,
        config,
        pki,
    })
}

async fn serve(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    mut stopped: watch::Receiver<bool>,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        })
        .await
}

impl Running {
    /// Where the HTTP listener is (useful with port 0).
    pub fn api_addr(&self) -> SocketAddr {
        self.api_addr
    }

    /// The PKI in use.
    pub fn pki(&self) -> &crate::pki::ServerPki {
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
        self.database
            .close()
            .await
            .context("closing the database")?;
        tracing::info!("fleetd stopped");
        Ok(())
    }
}

//! Serving over TLS: a rustls configuration (the server side's one policy, `certs::tls`) and an axum
//! [`Listener`] that runs each handshake in its own task with a timeout.
//!
//! A plain accept loop that awaits each handshake lets one silent TCP connection stall every
//! client behind it. Here the accept loop only accepts: every connection gets its own task that
//! performs the handshake (bounded by [`TlsLimits::handshake_timeout`], and by a cap on how many
//! are in flight), and hands the finished TLS stream to axum through a channel. axum's
//! `serve(...).with_graceful_shutdown(...)` works unchanged on top.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::Listener;
use axum::Router;
use certs::tls::ClientCertificates;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::client_addr::TlsPeer;

/// A rustls server configuration for the API: the policy of `certs::tls` (ring, TLS 1.3 and
/// 1.2, AEAD suites only), ALPN `http/1.1`.
///
/// With `client_root`, the server requests (but does not require) a client certificate chaining
/// to that root: `/v1/renew` needs one, `/v1/enroll` works without. A presented certificate
/// that does not verify (unknown CA, expired, not for client authentication) fails the
/// handshake. Without `client_root`, no client certificate is requested.
pub fn tls_server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_root: Option<CertificateDer<'static>>,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let builder = certs::tls::server_builder()?;
    let builder = match client_root {
        None => builder.with_no_client_auth(),
        Some(root) => builder.with_client_cert_verifier(certs::tls::client_cert_verifier(
            root,
            ClientCertificates::Optional,
        )?),
    };
    let mut config = builder.with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

pub fn tls_server_config_for(
    cert: &certs::ServerCertificate,
    client_root: CertificateDer<'static>,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    tls_server_config(
        cert.chain_der(),
        PrivateKeyDer::Pkcs8(cert.key().to_pkcs8_der()),
        Some(client_root),
    )
}

/// Bounds on the TLS accept path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlsLimits {
    /// A handshake not finished by then is dropped.
    pub handshake_timeout: Duration,
    /// Handshakes in progress at once; accepting pauses at the cap.
    pub max_handshakes_in_flight: usize,
}

impl Default for TlsLimits {
    /// 10 s per handshake, 1,024 in flight.
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            max_handshakes_in_flight: 1024,
        }
    }
}

/// Established TLS connections waiting for axum to take them.
const READY_QUEUE: usize = 64;

/// A TCP listener that yields connections only after their TLS handshake succeeded.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local_addr: SocketAddr,
    accept_task: JoinHandle<()>,
}

impl TlsListener {
    /// Starts accepting on `listener` (in a task of its own, stopped when this value is dropped).
    pub fn new(
        listener: TcpListener,
        config: Arc<ServerConfig>,
        limits: TlsLimits,
    ) -> io::Result<Self> {
        let local_addr = listener.local_addr()?;
        let (ready_tx, ready) = mpsc::channel(READY_QUEUE);
        let accept_task = tokio::spawn(accept_loop(
            listener,
            TlsAcceptor::from(config),
            limits,
            ready_tx,
        ));
        Ok(Self {
            ready,
            local_addr,
            accept_task,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

impl Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(connection) => connection,
            // The accept loop ended (it only does when the listener is dropped): accept nothing.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local_addr)
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    limits: TlsLimits,
    ready: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    let handshakes = Arc::new(Semaphore::new(limits.max_handshakes_in_flight.max(1)));
    loop {
        let Ok(permit) = handshakes.clone().acquire_owned().await else {
            return;
        };
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_error(e).await;
                    continue;
                }
            },
            () = ready.closed() => return,
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            let handshake = tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp));
            let outcome = handshake.await;
            drop(permit);
            match outcome {
                Ok(Ok(tls)) => {
                    let _ = ready.send((tls, peer)).await;
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}

/// Per-connection errors (the peer reset before accept) are ignored; resource exhaustion (out of
/// file descriptors) pauses accepting briefly instead of spinning.
async fn accept_error(e: io::Error) {
    use io::ErrorKind::*;
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused
    ) {
        return;
    }
    tracing::error!(error = %e, "accepting a TCP connection failed");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// Serves `router` over TLS on `listener` until `shutdown` resolves, then lets in-flight
/// requests finish (the caller bounds how long it waits). Handlers see the TCP peer and the
/// verified client certificate chain, if any, as [`TlsPeer`] connect info.
pub async fn serve_tls(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let listener = TlsListener::new(listener, tls, TlsLimits::default())?;
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<TlsPeer>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

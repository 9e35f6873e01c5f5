//! Serving over TLS: a rustls configuration (the server side's one policy, `certs::tls`) and an axum
//! [`Listener`] that runs each handshake in its own task with a timeout.
//!
//! A plain accept loop that awaits each handshake lets one silent TCP connection stall every
//! client behind it. Here the accept loop only accepts: every connection gets its own task that
//! performs the handshake (bounded by [`TlsLimits::handshake_timeout`], and by a cap on how many
//! are in flight), and hands the finished TLS stream to axum through a channel. axum's
//! `serve(...).with_graceful_shutdown(...)` works unchanged on top.
//!
//! When hyper is done with a connection whose request body it did not read (a 413 answered from
//! `Content-Length` alone), closing the socket with the client's bytes still arriving makes the
//! kernel send a reset, and the client loses the answer it had not read yet. So a connection is
//! closed lingering, as web servers do: the write side is shut, and what the client still sends
//! is read and discarded until it closes, for at most [`LINGER_TIMEOUT`] and
//! [`LINGER_MAX_BYTES`].

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::serve::Listener;
use axum::Router;
use certs::tls::ClientCertificates;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ServerConfig, ServerConnection};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
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
    type Io = ServedConnection;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some((tls, peer)) => (ServedConnection { tls: Some(tls) }, peer),
            // The accept loop ended (it only does when the listener is dropped): accept nothing.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local_addr)
    }
}

/// How long a closed connection keeps reading what its client still sends.
pub const LINGER_TIMEOUT: Duration = Duration::from_secs(5);
/// Most bytes a closed connection reads and discards before it gives up on the client.
pub const LINGER_MAX_BYTES: usize = 16 * 1024 * 1024;

/// An established TLS connection as axum serves it; closed lingering when dropped (see the module
/// documentation).
pub struct ServedConnection {
    /// `None` only once dropped.
    tls: Option<TlsStream<TcpStream>>,
}

impl ServedConnection {
    /// The TCP stream and the TLS state.
    pub fn get_ref(&self) -> (&TcpStream, &ServerConnection) {
        self.tls.as_ref().expect("present until dropped").get_ref()
    }

    fn tls(self: Pin<&mut Self>) -> Pin<&mut TlsStream<TcpStream>> {
        Pin::new(self.get_mut().tls.as_mut().expect("present until dropped"))
    }
}

impl AsyncRead for ServedConnection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.tls().poll_read(cx, buf)
    }
}

impl AsyncWrite for ServedConnection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.tls().poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.tls().poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.tls().poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.tls().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tls.as_ref().is_some_and(|tls| tls.is_write_vectored())
    }
}

impl Drop for ServedConnection {
    fn drop(&mut self) {
        let Some(tls) = self.tls.take() else { return };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(linger(tls.into_inner().0));
        }
    }
}

/// Shuts the write side (TLS close_notify has been sent by hyper's shutdown, or the connection
/// is being abandoned), then discards what the client still sends until it closes or the bounds
/// are reached; only then is the socket closed.
async fn linger(mut tcp: TcpStream) {
    let _ = tcp.shutdown().await;
    let drain = async {
        let mut discarded = 0usize;
        let mut buf = vec![0u8; 16 * 1024];
        while discarded < LINGER_MAX_BYTES {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => discarded += n,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_TIMEOUT, drain).await;
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

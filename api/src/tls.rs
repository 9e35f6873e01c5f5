//! Serving over TLS: a rustls configuration (the server side's one policy, `certs::tls`), an
//! accept loop that runs each handshake in its own task with a timeout, and hyper's HTTP/1.1
//! connection with a header-read timeout and an idle timeout on top.
//!
//! A plain accept loop that awaits each handshake lets one silent TCP connection stall every
//! client behind it. Here the accept loop only accepts: every connection gets its own task that
//! performs the handshake (bounded by [`TlsLimits::handshake_timeout`], by a cap on how many are
//! in flight and a cap per source address), then serves HTTP/1.1 on it. Connections above
//! [`TlsLimits::max_connections`] are closed at once, so the API cannot take the descriptors the
//! device broker needs. `axum::serve` sets no header-read timeout (hyper's needs a timer) and no
//! idle timeout: a client that sends a header byte every few seconds (slowloris), or nothing at
//! all after its handshake, would hold its connection forever. So [`serve_tls`] drives hyper
//! itself.
//!
//! When hyper is done with a connection whose request body it did not read (a 413 answered from
//! `Content-Length` alone), closing the socket with the client's bytes still arriving makes the
//! kernel send a reset, and the client loses the answer it had not read yet. So a connection is
//! closed lingering, as web servers do: the write side is shut, and what the client still sends
//! is read and discarded until it closes, for at most [`LINGER_TIMEOUT`] and
//! [`LINGER_MAX_BYTES`]. A lingering connection keeps its place under
//! [`TlsLimits::max_connections`] until its socket is closed.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::ConnectInfo;
use axum::Router;
use certs::tls::{ClientCertificates, PerKeyLimit, PerKeyPermit};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::{Instant, Sleep};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::client_addr::TlsPeer;
use crate::metrics::ListenerMetrics;
use crate::ApiMetrics;

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
    config.alpn_protocols = vec![ALPN.to_vec()];
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

/// The one ALPN protocol the API speaks.
const ALPN: &[u8] = b"http/1.1";

/// The TLS policy in force on the API, as data read from the configuration code itself (for
/// the compliance evidence report): what [`tls_server_config`] builds from `certs::tls`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct TlsPolicy {
    /// Protocol versions, newest first (e.g. `TLSv1_3`).
    pub versions: Vec<String>,
    /// Cipher suites in preference order.
    pub cipher_suites: Vec<String>,
    /// Key exchange groups in preference order.
    pub key_exchange_groups: Vec<String>,
    /// ALPN protocols.
    pub alpn: Vec<String>,
    /// The `Strict-Transport-Security` header on every response.
    pub hsts: String,
    /// How device client certificates are asked for on the API.
    pub device_client_certificates: String,
}

/// The policy of [`tls_server_config`].
pub fn policy() -> TlsPolicy {
    let provider = certs::tls::provider();
    TlsPolicy {
        versions: certs::tls::PROTOCOL_VERSIONS
            .iter()
            .map(|v| format!("{:?}", v.version))
            .collect(),
        cipher_suites: provider
            .cipher_suites
            .iter()
            .map(|s| format!("{:?}", s.suite()))
            .collect(),
        key_exchange_groups: provider
            .kx_groups
            .iter()
            .map(|g| format!("{:?}", g.name()))
            .collect(),
        alpn: vec![String::from_utf8_lossy(ALPN).into_owned()],
        hsts: crate::HSTS.to_owned(),
        device_client_certificates: format!(
            "{:?} on the API, chaining to the tenant issuing CA: /v1/renew requires one, \
             /v1/enroll takes an enrollment token",
            ClientCertificates::Optional
        ),
    }
}

/// Bounds on the TLS accept path and on each connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlsLimits {
    /// A handshake not finished by then is dropped.
    pub handshake_timeout: Duration,
    /// Handshakes in progress at once; accepting pauses at the cap.
    pub max_handshakes_in_flight: usize,
    /// Handshakes in progress at once from one source IP address; above it a new connection
    /// from that address is closed at once.
    pub max_handshakes_per_address: usize,
    /// Connections at once (handshaking or established); above it a new one is closed at once.
    pub max_connections: usize,
    /// Time a connection has to send a request's headers, counted from when the server starts
    /// waiting for them: right after the handshake, and after each response (keep-alive).
    pub header_read_timeout: Duration,
    /// A connection on which no byte moved either way for this long is closed (a client that
    /// stalls its body, or stops reading the response).
    pub idle_timeout: Duration,
}

/// Default [`TlsLimits::max_connections`]: far above what enrollment and management need, far
/// below the broker's share of the descriptors.
pub const DEFAULT_API_MAX_CONNECTIONS: usize = 4096;

impl Default for TlsLimits {
    /// 10 s per handshake, 1,024 in flight and 32 per address, 4,096 connections, 10 s to
    /// send headers, 60 s idle.
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            max_handshakes_in_flight: 1024,
            max_handshakes_per_address: 32,
            max_connections: DEFAULT_API_MAX_CONNECTIONS,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

impl TlsLimits {
    /// The name of the first field out of range, and why.
    pub fn invalid_field(&self) -> Option<(&'static str, &'static str)> {
        let checks: [(bool, &'static str, &'static str); 6] = [
            (
                self.handshake_timeout.is_zero(),
                "handshake_timeout",
                "must be positive",
            ),
            (
                self.max_handshakes_in_flight == 0,
                "max_handshakes_in_flight",
                "must be at least 1",
            ),
            (
                self.max_handshakes_per_address == 0,
                "max_handshakes_per_address",
                "must be at least 1",
            ),
            (
                self.max_connections == 0,
                "max_connections",
                "must be at least 1",
            ),
            (
                self.header_read_timeout.is_zero(),
                "header_read_timeout",
                "must be positive",
            ),
            (
                self.idle_timeout.is_zero(),
                "idle_timeout",
                "must be positive",
            ),
        ];
        checks
            .into_iter()
            .find(|(failed, _, _)| *failed)
            .map(|(_, field, why)| (field, why))
    }
}

/// Established TLS connections waiting for the server loop to take them.
const READY_QUEUE: usize = 64;

/// At most one log line per refusal kind in this many seconds.
const REFUSAL_LOG_INTERVAL_SECS: u64 = 10;

/// An established TLS connection, holding its place under [`TlsLimits::max_connections`].
pub struct TlsConnection {
    /// The TLS stream.
    pub stream: TlsStream<TcpStream>,
    /// The TCP peer.
    pub peer: SocketAddr,
    _connection: ConnectionSlot,
}

/// A connection's place under [`TlsLimits::max_connections`], counted in
/// `fleet_api_connections_active` until dropped.
struct ConnectionSlot {
    _permit: OwnedSemaphorePermit,
    metrics: ListenerMetrics,
}

impl ConnectionSlot {
    fn new(permit: OwnedSemaphorePermit, metrics: &ListenerMetrics) -> Self {
        metrics.active.inc();
        Self {
            _permit: permit,
            metrics: metrics.clone(),
        }
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.metrics.active.dec();
    }
}

/// A TCP listener that yields connections only after their TLS handshake succeeded.
pub struct TlsListener {
    ready: mpsc::Receiver<TlsConnection>,
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
        Self::observed(listener, config, limits, &ApiMetrics::default())
    }

    /// [`Self::new`], counting connections, refusals and handshake failures in `metrics`.
    pub fn observed(
        listener: TcpListener,
        config: Arc<ServerConfig>,
        limits: TlsLimits,
        metrics: &ApiMetrics,
    ) -> io::Result<Self> {
        let local_addr = listener.local_addr()?;
        let (ready_tx, ready) = mpsc::channel(READY_QUEUE);
        let accept_task = tokio::spawn(accept_loop(
            listener,
            TlsAcceptor::from(config),
            limits,
            ready_tx,
            metrics.listener.clone(),
        ));
        Ok(Self {
            ready,
            local_addr,
            accept_task,
        })
    }

    /// The next established connection.
    pub async fn accept(&mut self) -> TlsConnection {
        match self.ready.recv().await {
            Some(connection) => connection,
            // The accept loop ended (it only does when the listener is dropped): accept nothing.
            None => std::future::pending().await,
        }
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

/// Why the accept loop closed a connection at once.
#[derive(Clone, Copy, Debug)]
enum Refusal {
    ConnectionLimit,
    AddressHandshakeLimit,
}

impl Refusal {
    /// The `reason` label of `fleet_api_connections_refused_total`.
    fn as_str(self) -> &'static str {
        match self {
            Self::ConnectionLimit => "connection_limit",
            Self::AddressHandshakeLimit => "address_handshake_limit",
        }
    }
}

/// The refusals so far, logged at most once per kind every [`REFUSAL_LOG_INTERVAL_SECS`].
struct RefusalLog {
    counts: [AtomicU64; 2],
    logged_at: [AtomicU64; 2],
    metrics: ListenerMetrics,
}

impl RefusalLog {
    fn refused(&self, refusal: Refusal, peer: IpAddr) {
        self.metrics.refused(refusal.as_str());
        let slot = refusal as usize;
        let total = self.counts[slot].fetch_add(1, Ordering::Relaxed) + 1;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_secs());
        let last = self.logged_at[slot].load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < REFUSAL_LOG_INTERVAL_SECS {
            return;
        }
        if self.logged_at[slot]
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            tracing::warn!(?refusal, %peer, refused_so_far = total, "API connection refused (logged at most every {REFUSAL_LOG_INTERVAL_SECS} s per kind)");
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    limits: TlsLimits,
    ready: mpsc::Sender<TlsConnection>,
    metrics: ListenerMetrics,
) {
    let handshakes = Arc::new(Semaphore::new(limits.max_handshakes_in_flight.max(1)));
    let per_address = PerKeyLimit::new(limits.max_handshakes_per_address);
    let connections = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let refusals = RefusalLog {
        counts: Default::default(),
        logged_at: Default::default(),
        metrics: metrics.clone(),
    };
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
        metrics.accepted.inc();
        let Ok(connection) = connections.clone().try_acquire_owned() else {
            refusals.refused(Refusal::ConnectionLimit, peer.ip());
            continue;
        };
        let connection = ConnectionSlot::new(connection, &metrics);
        let Some(address) = per_address.try_acquire(peer.ip()) else {
            refusals.refused(Refusal::AddressHandshakeLimit, peer.ip());
            continue;
        };
        let _ = tcp.set_nodelay(true);
        tokio::spawn(handshake(
            acceptor.clone(),
            tcp,
            peer,
            (permit, address),
            connection,
            limits.handshake_timeout,
            ready.clone(),
        ));
    }
}

/// One connection's handshake; the established connection goes to the server loop.
async fn handshake(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    slot: (OwnedSemaphorePermit, PerKeyPermit<IpAddr>),
    connection: ConnectionSlot,
    limit: Duration,
    ready: mpsc::Sender<TlsConnection>,
) {
    let outcome = tokio::time::timeout(limit, acceptor.accept(tcp)).await;
    drop(slot);
    match outcome {
        Ok(Ok(stream)) => {
            let _ = ready
                .send(TlsConnection {
                    stream,
                    peer,
                    _connection: connection,
                })
                .await;
        }
        Ok(Err(e)) => {
            connection.metrics.handshake_failed("error");
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
        }
        Err(_) => {
            connection.metrics.handshake_failed("timeout");
            tracing::debug!(%peer, "TLS handshake timed out");
        }
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

/// Serves `router` over TLS on `listener` with the default [`TlsLimits`]; see
/// [`serve_tls_with`].
pub async fn serve_tls(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    serve_tls_with(listener, tls, router, TlsLimits::default(), shutdown).await
}

/// Serves `router` over TLS on `listener` within `limits` until `shutdown` resolves, then lets
/// in-flight requests finish (the caller bounds how long it waits). Handlers see the TCP peer
/// and the verified client certificate chain, if any, as [`TlsPeer`] connect info.
pub async fn serve_tls_with(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    router: Router,
    limits: TlsLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    serve_tls_observed(
        listener,
        tls,
        router,
        limits,
        ApiMetrics::default(),
        shutdown,
    )
    .await
}

/// [`serve_tls_with`], counting the listener's connections, refusals and TLS handshake failures
/// in `metrics` (the `fleet_api_connections_*` and `fleet_api_tls_*` series).
pub async fn serve_tls_observed(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    router: Router,
    limits: TlsLimits,
    metrics: ApiMetrics,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let mut listener = TlsListener::observed(listener, tls, limits, &metrics)?;
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let mut shutdown = pin!(shutdown);
    loop {
        let connection = tokio::select! {
            connection = listener.accept() => connection,
            () = &mut shutdown => break,
        };
        let TlsConnection {
            stream,
            peer,
            _connection: permit,
        } = connection;
        let service = TowerToHyperService::new(WithPeer {
            router: router.clone(),
            peer: TlsPeer::of(&stream, peer),
        });
        let io = TokioIo::new(IdleTimeout::new(
            Lingering::new(stream, permit),
            limits.idle_timeout,
        ));
        let served = graceful.watch(http.serve_connection(io, service));
        tokio::spawn(async move {
            if let Err(error) = served.await {
                tracing::debug!(%peer, %error, "API connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// The router, with the connection's [`TlsPeer`] as connect info on every request.
#[derive(Clone)]
struct WithPeer {
    router: Router,
    peer: TlsPeer,
}

impl tower_service::Service<hyper::Request<Incoming>> for WithPeer {
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = axum::routing::future::RouteFuture<std::convert::Infallible>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        tower_service::Service::<hyper::Request<Incoming>>::poll_ready(&mut self.router, cx)
    }

    fn call(&mut self, mut request: hyper::Request<Incoming>) -> Self::Future {
        request
            .extensions_mut()
            .insert(ConnectInfo(self.peer.clone()));
        self.router.call(request)
    }
}

/// A stream that fails once no byte moved either way for `limit`: hyper's header-read timeout
/// covers a client slow to send its headers, this one a client that stalls later.
struct IdleTimeout<S> {
    inner: S,
    limit: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl<S> IdleTimeout<S> {
    fn new(inner: S, limit: Duration) -> Self {
        Self {
            inner,
            limit,
            deadline: Box::pin(tokio::time::sleep(limit)),
        }
    }

    fn moved(&mut self) {
        self.deadline.as_mut().reset(Instant::now() + self.limit);
    }

    /// On a pending read or write: an error once the deadline passed.
    fn check_idle(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "connection idle for longer than idle_timeout",
            )),
            Poll::Pending => Ok(()),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for IdleTimeout<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    self.moved();
                }
                Poll::Ready(result)
            }
            Poll::Pending => self.pending(cx),
        }
    }
}

impl<S> IdleTimeout<S> {
    fn pending<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        match self.check_idle(cx) {
            Ok(()) => Poll::Pending,
            Err(error) => Poll::Ready(Err(error)),
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for IdleTimeout<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Ready(Ok(written)) => {
                if written > 0 {
                    self.moved();
                }
                Poll::Ready(Ok(written))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => self.pending(cx),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Pending => self.pending(cx),
            ready => ready,
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_shutdown(cx) {
            Poll::Pending => self.pending(cx),
            ready => ready,
        }
    }
}

/// How long a closed connection keeps reading what its client still sends.
pub const LINGER_TIMEOUT: Duration = Duration::from_secs(5);
/// Most bytes a closed connection reads and discards before it gives up on the client.
pub const LINGER_MAX_BYTES: usize = 16 * 1024 * 1024;

/// An established connection as hyper serves it: closed lingering when hyper drops it (see the
/// module documentation), holding its connection permit until the socket is closed.
struct Lingering {
    /// `None` only once dropped.
    stream: Option<TlsStream<TcpStream>>,
    permit: Option<ConnectionSlot>,
}

impl Lingering {
    fn new(stream: TlsStream<TcpStream>, permit: ConnectionSlot) -> Self {
        Self {
            stream: Some(stream),
            permit: Some(permit),
        }
    }

    fn stream(self: Pin<&mut Self>) -> Pin<&mut TlsStream<TcpStream>> {
        Pin::new(
            self.get_mut()
                .stream
                .as_mut()
                .expect("present until dropped"),
        )
    }
}

impl AsyncRead for Lingering {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.stream().poll_read(cx, buf)
    }
}

impl AsyncWrite for Lingering {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.stream().poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.stream().poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.stream().poll_shutdown(cx)
    }
}

impl Drop for Lingering {
    fn drop(&mut self) {
        let (Some(stream), permit) = (self.stream.take(), self.permit.take()) else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(linger(stream.into_inner().0, permit));
        }
    }
}

/// Shuts the write side (hyper's shutdown has sent the TLS close_notify, or the connection is
/// being abandoned), then discards what the client still sends until it closes or the bounds are
/// reached; only then are the socket and its connection permit released.
async fn linger(mut tcp: TcpStream, permit: Option<ConnectionSlot>) {
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
    drop(permit);
}

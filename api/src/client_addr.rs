//! Who the client is: the TCP peer, or what a trusted proxy says in `X-Forwarded-For`.
//!
//! `X-Forwarded-For` is read only when the peer is a trusted proxy. Each proxy appends the
//! address it received the request from, so the list is read right to left, skipping trusted
//! proxies; the first address that is not one is the client (an untrusted hop may have written
//! anything to its left). If every hop is trusted, the left-most is the client. A header that
//! does not parse, from a trusted proxy, is refused rather than guessed around.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::HeaderMap;
use axum::serve::IncomingStream;
use ipnet::IpNet;
use rustls::pki_types::CertificateDer;

use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use crate::error::ApiError;

const X_FORWARDED_FOR: &str = "x-forwarded-for";

/// The TCP peer of a connection, as connect info for handlers
/// (`ConnectInfo<PeerAddr>`); provided by [`crate::serve_tls`] and by plain `axum::serve`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

impl Connected<IncomingStream<'_, tokio::net::TcpListener>> for PeerAddr {
    fn connect_info(stream: IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        PeerAddr(*stream.remote_addr())
    }
}

/// The connect info of a TLS connection, as [`crate::serve_tls`] provides it
/// (`ConnectInfo<TlsPeer>`): the TCP peer, and the client certificate chain (leaf first) if the
/// client presented one. rustls verified that chain during the handshake (it chains to the
/// configured client root, is unexpired and allows client authentication); a connection whose
/// certificate did not verify never reaches axum.
#[derive(Clone, Debug)]
pub struct TlsPeer {
    /// The TCP peer.
    pub addr: SocketAddr,
    /// The verified client certificate chain, leaf first; `None` without a client certificate.
    pub client_chain: Option<Arc<Vec<CertificateDer<'static>>>>,
}

impl TlsPeer {
    /// The peer of an established TLS connection from `addr`.
    pub(crate) fn of(stream: &TlsStream<TcpStream>, addr: SocketAddr) -> Self {
        let (_, connection) = stream.get_ref();
        let client_chain = connection
            .peer_certificates()
            .filter(|chain| !chain.is_empty())
            .map(|chain| Arc::new(chain.iter().map(|c| c.clone().into_owned()).collect()));
        TlsPeer { addr, client_chain }
    }
}

/// The TCP peer of the request and its verified client certificate chain, from [`TlsPeer`] or
/// [`PeerAddr`] connect info, whichever the server provides (with [`PeerAddr`], no chain).
pub(crate) struct Peer {
    pub(crate) addr: SocketAddr,
    pub(crate) client_chain: Option<Arc<Vec<CertificateDer<'static>>>>,
}

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        if let Some(ConnectInfo(tls)) = parts.extensions.get::<ConnectInfo<TlsPeer>>() {
            return Ok(Peer {
                addr: tls.addr,
                client_chain: tls.client_chain.clone(),
            });
        }
        if let Some(ConnectInfo(PeerAddr(addr))) = parts.extensions.get::<ConnectInfo<PeerAddr>>() {
            return Ok(Peer {
                addr: *addr,
                client_chain: None,
            });
        }
        Err(ApiError::Internal(
            "no connect info: serve the router with serve_tls".into(),
        ))
    }
}

/// The client's address for a request from `peer` with `headers`.
pub(crate) fn client_ip(
    peer: IpAddr,
    headers: &HeaderMap,
    trusted: &[IpNet],
) -> Result<IpAddr, ApiError> {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    let mut client = peer.to_canonical();
    if !is_trusted(&client) {
        return Ok(client);
    }
    let hops = forwarded_hops(headers)?;
    for hop in hops.iter().rev() {
        client = hop.to_canonical();
        if !is_trusted(&client) {
            break;
        }
    }
    Ok(client)
}

/// Every address in every `X-Forwarded-For` header, in order.
fn forwarded_hops(headers: &HeaderMap) -> Result<Vec<IpAddr>, ApiError> {
    let malformed = || ApiError::InvalidRequest("malformed X-Forwarded-For header".into());
    let mut hops = Vec::new();
    for value in headers.get_all(X_FORWARDED_FOR) {
        let value = value.to_str().map_err(|_| malformed())?;
        for entry in value.split(',') {
            hops.push(parse_hop(entry.trim()).ok_or_else(malformed)?);
        }
    }
    Ok(hops)
}

/// An address, with or without a port (`192.0.2.1`, `192.0.2.1:443`, `2001:db8::1`,
/// `[2001:db8::1]:443`).
fn parse_hop(entry: &str) -> Option<IpAddr> {
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|s| s.ip()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for v in values {
            map.append(X_FORWARDED_FOR, HeaderValue::from_str(v).unwrap());
        }
        map
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_forwards() {
        let got = client_ip(
            ip("203.0.113.7"),
            &headers(&["10.1.1.1"]),
            &nets(&["10.0.0.0/8"]),
        );
        assert_eq!(got.unwrap(), ip("203.0.113.7"));
    }

    #[test]
    fn a_trusted_proxy_names_the_client() {
        let trusted = nets(&["10.0.0.0/8"]);
        let got = client_ip(ip("10.0.0.2"), &headers(&["198.51.100.4"]), &trusted);
        assert_eq!(got.unwrap(), ip("198.51.100.4"));
        // No header: the proxy itself.
        let got = client_ip(ip("10.0.0.2"), &HeaderMap::new(), &trusted);
        assert_eq!(got.unwrap(), ip("10.0.0.2"));
    }

    #[test]
    fn the_right_most_untrusted_hop_wins_over_spoofed_entries() {
        let trusted = nets(&["10.0.0.0/8"]);
        // The client sent "1.1.1.1" itself; 198.51.100.4 is what our first proxy saw.
        let got = client_ip(
            ip("10.0.0.2"),
            &headers(&["1.1.1.1, 198.51.100.4", "10.0.0.9"]),
            &trusted,
        );
        assert_eq!(got.unwrap(), ip("198.51.100.4"));
        // Every hop trusted: the left-most.
        let got = client_ip(ip("10.0.0.2"), &headers(&["10.3.3.3, 10.0.0.9"]), &trusted);
        assert_eq!(got.unwrap(), ip("10.3.3.3"));
    }

    #[test]
    fn ports_brackets_and_mapped_addresses_are_understood() {
        let trusted = nets(&["10.0.0.0/8"]);
        let got = client_ip(
            ip("::ffff:10.0.0.2"),
            &headers(&["[2001:db8::5]:443"]),
            &trusted,
        );
        assert_eq!(got.unwrap(), ip("2001:db8::5"));
        let got = client_ip(ip("10.0.0.2"), &headers(&["192.0.2.1:5000"]), &trusted);
        assert_eq!(got.unwrap(), ip("192.0.2.1"));
    }

    #[test]
    fn garbage_from_a_trusted_proxy_is_refused() {
        let trusted = nets(&["10.0.0.0/8"]);
        for bad in ["unknown", "", "1.2.3.4,,5.6.7.8", "1.2.3.999"] {
            let got = client_ip(ip("10.0.0.2"), &headers(&[bad]), &trusted);
            assert!(
                matches!(got, Err(ApiError::InvalidRequest(_))),
                "{bad:?}: {got:?}"
            );
        }
    }
}

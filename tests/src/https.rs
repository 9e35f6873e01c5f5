//! A small HTTPS client for tests: tokio-rustls and a hand-written HTTP/1.1 request, trusting
//! exactly the fleet root. Keeps the test dependency tree lean (no hyper client, no reqwest).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use certs::IssuingCa;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;

/// An HTTP response, read whole.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text, for failure messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Checks the status is `status`, showing the body when it is not.
    #[track_caller]
    pub fn assert_status(&self, status: u16) -> &Self {
        assert_eq!(self.status, status, "{}", self.text());
        self
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// Checks this is a problem+json answer with `status` and problem type `slug`; returns it.
    #[track_caller]
    pub fn assert_problem(&self, status: u16, slug: &str) -> serde_json::Value {
        self.assert_status(status);
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json")
        );
        let problem = self.json();
        assert_eq!(problem["status"], status);
        assert_eq!(problem["type"], format!("urn:fleetplane:problem:{slug}"));
        assert!(problem["title"].is_string() && problem["detail"].is_string());
        problem
    }
}

/// A TLS client that trusts exactly the fleet root.
pub fn client_config(ca: &IssuingCa) -> Arc<rustls::ClientConfig> {
    client_config_as(ca, None)
}

/// A TLS client that trusts exactly the fleet root and presents `client` (chain, leaf first, and
/// key) as its certificate, or none.
pub fn client_config_as(
    ca: &IssuingCa,
    client: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.root_der().clone()).unwrap();
    let builder = certs::tls::client_builder(roots).unwrap();
    Arc::new(match client {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).unwrap(),
        None => builder.with_no_client_auth(),
    })
}

fn request_bytes(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut request = head.into_bytes();
    request.extend_from_slice(body);
    request
}

/// One request on a fresh TLS connection (`Connection: close`).
pub async fn https_request(
    addr: SocketAddr,
    ca: &IssuingCa,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let tcp = TcpStream::connect(addr).await.unwrap();
    request_on(tcp, ca, method, path, headers, body).await
}

/// [`https_request`] from the local address `source` (e.g. 127.0.0.2, another client as the
/// server sees it).
pub async fn https_request_from(
    source: IpAddr,
    addr: SocketAddr,
    ca: &IssuingCa,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let socket = match source {
        IpAddr::V4(_) => TcpSocket::new_v4(),
        IpAddr::V6(_) => TcpSocket::new_v6(),
    }
    .unwrap();
    socket.bind(SocketAddr::new(source, 0)).unwrap();
    let tcp = socket.connect(addr).await.unwrap();
    request_on(tcp, ca, method, path, headers, body).await
}

async fn request_on(
    tcp: TcpStream,
    ca: &IssuingCa,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let connector = TlsConnector::from(client_config(ca));
    let mut tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake with the API");
    let request = request_bytes(method, path, headers, body);
    // The server may answer (413) and close before reading everything: read what it said.
    let _ = tls.write_all(&request).await;
    let _ = tls.flush().await;
    let mut raw = Vec::new();
    let read = tls.read_to_end(&mut raw).await;
    if raw.is_empty() {
        panic!("no response: {read:?}");
    }
    parse_response(&raw).unwrap()
}

/// One request on a fresh TLS connection trusting exactly the fleet root, presenting `client`
/// (chain and key) as the client certificate if given. `Err` when TLS failed before an answer
/// was read (e.g. the server refused the client certificate).
pub async fn https_request_as(
    addr: SocketAddr,
    ca: &IssuingCa,
    client: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Response, String> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let connector = TlsConnector::from(client_config_as(ca, client));
    let mut tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let request = request_bytes(method, path, headers, body);
    // With TLS 1.3 the server judges the client certificate after the client's handshake is
    // done: a refusal shows up as an error here.
    tls.write_all(&request)
        .await
        .map_err(|e| format!("write: {e}"))?;
    tls.flush().await.map_err(|e| format!("flush: {e}"))?;
    let mut raw = Vec::new();
    tls.read_to_end(&mut raw)
        .await
        .map_err(|e| format!("read: {e}"))?;
    parse_response(&raw)
}

/// An HTTP/1.1 answer read whole: a `Content-Length` or chunked body.
fn parse_response(raw: &[u8]) -> Result<Response, String> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("no HTTP answer ({} bytes)", raw.len()))?;
    let head = std::str::from_utf8(&raw[..split]).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .map(|line| {
            let (name, value) = line.split_once(':').unwrap();
            (name.trim().to_ascii_lowercase(), value.trim().to_owned())
        })
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n").unwrap();
        let size_text = std::str::from_utf8(&data[..line_end]).unwrap();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).unwrap();
        data = &data[line_end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// One TLS connection that sends requests one after another (HTTP/1.1 keep-alive), for load:
/// benchmarks reuse it so that they measure requests, not handshakes.
pub struct KeepAlive {
    tls: tokio_rustls::client::TlsStream<TcpStream>,
}

impl KeepAlive {
    /// Connects from `from` to the API at `addr`, trusting `ca`'s root.
    pub async fn connect(addr: SocketAddr, ca: &IssuingCa, from: IpAddr) -> Self {
        let socket = TcpSocket::new_v4().expect("socket");
        socket.bind(SocketAddr::new(from, 0)).expect("bind");
        let tcp = socket.connect(addr).await.expect("connect");
        // As wrk does: a request goes out whole at once, never behind Nagle's wait.
        tcp.set_nodelay(true).expect("TCP_NODELAY");
        let connector = TlsConnector::from(client_config(ca));
        let name = ServerName::try_from("localhost").unwrap();
        let tls = connector.connect(name, tcp).await.expect("TLS");
        Self { tls }
    }

    /// Sends `method path` with `headers` and `body`, reads the whole answer; returns its
    /// status, or `None` if the server closed the connection.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Option<u16> {
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n");
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        self.tls.write_all(head.as_bytes()).await.ok()?;
        self.tls.write_all(body).await.ok()?;
        let mut raw = Vec::new();
        let mut buf = [0u8; 16384];
        let split = loop {
            if let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                break split;
            }
            let n = self.tls.read(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            raw.extend_from_slice(&buf[..n]);
        };
        let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
        let status = head.split(' ').nth(1)?.parse().ok()?;
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while raw.len() < split + 4 + length {
            let n = self.tls.read(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            raw.extend_from_slice(&buf[..n]);
        }
        Some(status)
    }

    /// POSTs an enrollment request body to /v1/enroll.
    pub async fn enroll(&mut self, body: &[u8]) -> Option<u16> {
        let json = [("Content-Type", "application/json")];
        self.request("POST", "/v1/enroll", &json, body).await
    }
}

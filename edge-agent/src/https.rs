//! A minimal HTTPS client for the two calls the agent makes to the API: enrollment and
//! certificate renewal. One `POST` with a JSON body, HTTP/1.1, `Connection: close`, over
//! rustls with the caller's configuration (pinned root, optional client certificate).
//!
//! Hand-written rather than hyper or reqwest: it is about 200 lines, and the agent has a
//! 2 MiB budget for its whole binary.

use std::sync::Arc;
use std::time::Duration;

use rustls::client::ClientConfig;
use rustls_pki_types::ServerName;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::url::Url;

/// Largest response the agent reads (a certificate chain is a few KiB).
const MAX_RESPONSE_BYTES: usize = 256 * 1024;

/// A response: status and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// HTTP status code.
    pub status: u16,
    /// `Retry-After` in seconds, when the server sent one.
    pub retry_after: Option<u64>,
    /// The body (de-chunked).
    pub body: Vec<u8>,
}

/// Why a request got no HTTP response.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// Connecting, the TLS handshake or the exchange failed.
    #[error("{0}")]
    Transport(String),
    /// The server did not answer in time.
    #[error("no answer from {0} within {1:?}")]
    Timeout(String, Duration),
    /// The answer is not HTTP/1.x as this client understands it.
    #[error("malformed HTTP response: {0}")]
    Malformed(&'static str),
}

/// Sends `POST {url}{endpoint}` with a JSON body and reads the whole response.
pub async fn post_json(
    url: &Url,
    endpoint: &str,
    body: &[u8],
    tls: ClientConfig,
    timeout: Duration,
) -> Result<Response, HttpError> {
    let target = format!("{}:{}", url.host, url.port);
    let exchange = exchange(url, endpoint, body, tls);
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| HttpError::Timeout(target, timeout))?
}

async fn exchange(
    url: &Url,
    endpoint: &str,
    body: &[u8],
    mut tls: ClientConfig,
) -> Result<Response, HttpError> {
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = ServerName::try_from(url.host.clone())
        .map_err(|_| HttpError::Transport(format!("{:?} is not a valid server name", url.host)))?;
    let target = format!("{}:{}", url.host, url.port);
    let tcp = TcpStream::connect((url.host.as_str(), url.port))
        .await
        .map_err(|err| HttpError::Transport(format!("connecting to {target}: {err}")))?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let mut stream = connector
        .connect(name, tcp)
        .await
        .map_err(|err| HttpError::Transport(format!("TLS handshake with {target}: {err}")))?;
    let request = request_bytes(url, endpoint, body);
    stream
        .write_all(&request)
        .await
        .map_err(|err| HttpError::Transport(format!("sending to {target}: {err}")))?;
    let mut raw = Vec::new();
    let read = (&mut stream)
        .take(MAX_RESPONSE_BYTES as u64 + 1)
        .read_to_end(&mut raw)
        .await;
    // A server that closes without close_notify after a complete response is common;
    // the parse below decides whether what arrived is whole.
    if let Err(err) = read {
        if raw.is_empty() {
            return Err(HttpError::Transport(format!(
                "reading from {target}: {err}"
            )));
        }
    }
    if raw.len() > MAX_RESPONSE_BYTES {
        return Err(HttpError::Malformed("response too large"));
    }
    parse_response(&raw)
}

/// The request bytes.
pub fn request_bytes(url: &Url, endpoint: &str, body: &[u8]) -> Vec<u8> {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: fleet-agent/{version}\r\n\
         Accept: application/json, application/problem+json\r\n\
         Content-Type: application/json\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n",
        path = url.path(endpoint),
        host = url.authority(),
        version = env!("CARGO_PKG_VERSION"),
        len = body.len(),
    )
    .into_bytes();
    request.extend_from_slice(body);
    request
}

/// Parses a complete HTTP/1.x response (Content-Length, chunked, or read to close).
pub fn parse_response(raw: &[u8]) -> Result<Response, HttpError> {
    let head_end = find(raw, b"\r\n\r\n").ok_or(HttpError::Malformed("no end of headers"))?;
    let head = std::str::from_utf8(&raw[..head_end])
        .map_err(|_| HttpError::Malformed("headers are not text"))?;
    let rest = &raw[head_end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") {
        return Err(HttpError::Malformed("not an HTTP/1.x status line"));
    }
    let status = parts
        .next()
        .and_then(|code| code.parse().ok())
        .ok_or(HttpError::Malformed("no status code"))?;
    let mut content_length = None;
    let mut chunked = false;
    let mut retry_after = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => {
                content_length = Some(
                    value
                        .parse::<usize>()
                        .map_err(|_| HttpError::Malformed("bad Content-Length"))?,
                )
            }
            "transfer-encoding" => chunked = value.to_ascii_lowercase().contains("chunked"),
            "retry-after" => retry_after = value.parse().ok(),
            _ => {}
        }
    }
    let body = if chunked {
        dechunk(rest)?
    } else if let Some(len) = content_length {
        rest.get(..len)
            .ok_or(HttpError::Malformed("body shorter than Content-Length"))?
            .to_vec()
    } else {
        rest.to_vec()
    };
    Ok(Response {
        status,
        retry_after,
        body,
    })
}

fn dechunk(mut input: &[u8]) -> Result<Vec<u8>, HttpError> {
    let mut body = Vec::new();
    loop {
        let line_end = find(input, b"\r\n").ok_or(HttpError::Malformed("truncated chunk"))?;
        let size_text = std::str::from_utf8(&input[..line_end])
            .map_err(|_| HttpError::Malformed("bad chunk size"))?;
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| HttpError::Malformed("bad chunk size"))?;
        input = &input[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        let chunk = input
            .get(..size)
            .ok_or(HttpError::Malformed("truncated chunk"))?;
        body.extend_from_slice(chunk);
        input = input
            .get(size + 2..)
            .ok_or(HttpError::Malformed("truncated chunk"))?;
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// An RFC 7807 problem document (the fields the agent shows).
#[derive(Debug, Default, Deserialize)]
pub struct Problem {
    /// `title`.
    #[serde(default)]
    pub title: String,
    /// `detail`.
    #[serde(default)]
    pub detail: String,
}

impl Problem {
    /// Parses a problem body; anything else yields an empty problem.
    pub fn from_body(body: &[u8]) -> Self {
        serde_json::from_slice(body).unwrap_or_default()
    }

    /// `detail`, else `title`, else nothing; one line, at most 200 characters.
    pub fn summary(&self) -> Option<String> {
        let text = if self.detail.trim().is_empty() {
            self.title.trim()
        } else {
            self.detail.trim()
        };
        if text.is_empty() {
            return None;
        }
        let line: String = text
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .take(200)
            .collect();
        Some(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_has_length_host_and_close() {
        let url = Url::parse("https://[::1]:8443", crate::url::Scheme::Https).unwrap();
        let text = String::from_utf8(request_bytes(&url, "/v1/enroll", b"{}")).unwrap();
        assert!(text.starts_with("POST /v1/enroll HTTP/1.1\r\n"));
        assert!(text.contains("Host: [::1]:8443\r\n"));
        assert!(text.contains("Content-Length: 2\r\n"));
        assert!(text.contains("Connection: close\r\n"));
        assert!(text.ends_with("\r\n\r\n{}"));
    }

    #[test]
    fn parses_content_length_response() {
        let raw = b"HTTP/1.1 201 Created\r\ncontent-type: application/json\r\nContent-Length: 2\r\n\r\n{}extra";
        let response = parse_response(raw).unwrap();
        assert_eq!(response.status, 201);
        assert_eq!(response.body, b"{}");
        assert_eq!(response.retry_after, None);
    }

    #[test]
    fn parses_chunked_response_and_retry_after() {
        let raw = b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 3600\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3;x=y\r\n:1}\r\n0\r\n\r\n";
        let response = parse_response(raw).unwrap();
        assert_eq!(response.status, 429);
        assert_eq!(response.retry_after, Some(3600));
        assert_eq!(response.body, b"{\"a\":1}");
    }

    #[test]
    fn parses_response_read_to_close() {
        let response = parse_response(b"HTTP/1.0 200 OK\r\n\r\nhello").unwrap();
        assert_eq!(response.body, b"hello");
    }

    #[test]
    fn malformed_responses_are_errors() {
        for raw in [
            &b"garbage"[..],
            b"SMTP 220 hello\r\n\r\n",
            b"HTTP/1.1 abc OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nab",
        ] {
            assert!(
                parse_response(raw).is_err(),
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn problem_summary_prefers_detail_and_stays_on_one_line() {
        let problem = Problem::from_body(
            br#"{"type":"urn:x","title":"Gone","status":410,"detail":"token expired\nat noon"}"#,
        );
        assert_eq!(problem.summary().unwrap(), "token expired at noon");
        let problem = Problem::from_body(br#"{"title":"Gone"}"#);
        assert_eq!(problem.summary().unwrap(), "Gone");
        assert_eq!(Problem::from_body(b"<html>").summary(), None);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn connection_refused_is_a_transport_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let url = Url::parse(
            &format!("https://127.0.0.1:{port}"),
            crate::url::Scheme::Https,
        )
        .unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let dir = crate::identity::StateDir::new(tmp.path());
        crate::identity::tests::install_fake(&dir);
        let identity = crate::identity::load(&dir).unwrap();
        let tls = crate::tls::anonymous_client(&identity.root).unwrap();
        let err = post_json(&url, "/v1/enroll", b"{}", tls, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(err, HttpError::Transport(_)), "{err}");
    }
}

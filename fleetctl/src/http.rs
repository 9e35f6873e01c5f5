//! The management API over HTTPS (`api/CONTRACT.md`): one client per run, rustls with ring
//! (the project's one TLS stack), the API key as a bearer token, problem details turned into
//! [`Failure`]s, and list pages followed by their cursors.

use std::error::Error as StdError;
use std::io::{self, Write};
use std::path::Path;
use std::time::Duration;

use reqwest::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use reqwest::{Method, StatusCode, Url};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use zeroize::Zeroizing;

use crate::error::{Exit, Failure};

/// The environment variable holding the API key.
pub const API_KEY_ENV: &str = "FLEETCTL_API_KEY";

/// The problem type URNs of the API start with this; the rest is the slug.
const PROBLEM_PREFIX: &str = "urn:fleetplane:problem:";

/// The most items the API gives per page.
pub const MAX_PAGE: u32 = 500;

/// The most of an error body read: problem details are small, and a misbehaving proxy's page
/// must not be read whole.
const MAX_ERROR_BODY: usize = 64 * 1024;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Between two reads of an answer (an audit export streams for as long as it needs).
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// What requests accept unless told otherwise.
const DEFAULT_ACCEPT: &str = "application/json, text/csv, application/problem+json";

/// A client of one fleetd's management API, authenticated with one API key.
pub struct ApiClient {
    http: reqwest::Client,
    /// The server's URL, ending in `/`.
    base: Url,
    /// `Bearer <key>`, marked sensitive so that no debug output shows it.
    authorization: HeaderValue,
}

/// The API key, from `--api-key-file` when given, else from [`API_KEY_ENV`]; checked for the key
/// format (and checksum) so that a truncated copy is caught before anything is sent.
pub fn load_api_key(file: Option<&Path>) -> Result<Zeroizing<String>, Failure> {
    let (text, source) = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| Failure::usage(format!("--api-key-file {}: {e}", path.display())))?;
            (
                Zeroizing::new(text),
                format!("--api-key-file {}", path.display()),
            )
        }
        None => match std::env::var(API_KEY_ENV) {
            Ok(text) if !text.trim().is_empty() => (Zeroizing::new(text), API_KEY_ENV.to_owned()),
            _ => {
                return Err(Failure::new(
                    Exit::Auth,
                    "no-api-key",
                    format!("no API key: set {API_KEY_ENV} or pass --api-key-file FILE"),
                ))
            }
        },
    };
    let key = Zeroizing::new(text.trim().to_owned());
    if store::api_keys::PresentedKey::parse(&key).is_err() {
        return Err(Failure::new(
            Exit::Auth,
            "invalid-api-key",
            format!("{source} does not hold a well-formed API key (fpk_<env>_<id>_<secret>); is the copy complete?"),
        ));
    }
    Ok(key)
}

/// The TLS configuration: the server side's policy (`certs::tls`), trusting the fleet root CA
/// of `ca` or, without one, the system's roots.
pub fn tls_config(ca: Option<&Path>) -> Result<rustls::ClientConfig, Failure> {
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| Failure::usage(format!("--ca {}: {e}", path.display())))?;
            for cert in certs {
                roots.add(cert).map_err(|e| {
                    Failure::usage(format!(
                        "--ca {}: not a usable CA certificate: {e}",
                        path.display()
                    ))
                })?;
            }
            if roots.is_empty() {
                return Err(Failure::usage(format!(
                    "--ca {}: no certificate in the file (expected the fleet root CA in PEM)",
                    path.display()
                )));
            }
        }
        None => {
            // Certificates the system lists but rustls cannot use are skipped, as browsers do.
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                return Err(Failure::new(
                    Exit::Unavailable,
                    "tls",
                    "no system root certificates found: pass --ca with the fleet root CA",
                ));
            }
        }
    }
    let config = certs::tls::client_builder(roots)
        .map_err(|e| Failure::new(Exit::Unavailable, "tls", format!("TLS set-up: {e}")))?
        .with_no_client_auth();
    Ok(config)
}

/// Checks a `--server` value: an `https://` URL without query or fragment.
pub fn parse_server(text: &str) -> Result<Url, String> {
    let mut url = Url::parse(text).map_err(|e| format!("{text:?} is not a URL: {e}"))?;
    if url.scheme() != "https" {
        return Err(format!(
            "{text:?}: fleetctl talks HTTPS only (the API key must not travel in clear)"
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "{text:?}: no query or fragment, only https://host[:port][/path]"
        ));
    }
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok(url)
}

/// How much of a list to fetch.
#[derive(Clone, Debug, Default)]
pub struct Paging {
    /// At most this many items in all; `None`: every page.
    pub limit: Option<u32>,
    /// Start after this cursor (from a previous `next_cursor`).
    pub cursor: Option<String>,
}

/// Items of a list, as the API answers one page: `next_cursor` continues after the last item.
#[derive(Debug, Serialize, Deserialize)]
pub struct Page<T = Value> {
    /// The items.
    pub items: Vec<T>,
    /// Where the next page starts; `None` at the end.
    pub next_cursor: Option<String>,
}

#[derive(Deserialize)]
struct Problem {
    #[serde(rename = "type")]
    kind: Option<String>,
    title: Option<String>,
    detail: Option<String>,
    field: Option<String>,
}

impl ApiClient {
    /// A client of `server` trusting `tls`, authenticated with `key`.
    pub fn new(server: Url, tls: rustls::ClientConfig, key: &str) -> Result<Self, Failure> {
        let mut authorization = HeaderValue::from_str(&Zeroizing::new(format!("Bearer {key}")))
            .map_err(|_| {
                Failure::new(
                    Exit::Auth,
                    "invalid-api-key",
                    "the API key holds characters a header cannot",
                )
            })?;
        authorization.set_sensitive(true);
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .https_only(true)
            // An API answers where it is asked; following a redirect would carry the key along.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .user_agent(concat!("fleetctl/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| {
                Failure::new(
                    Exit::Unavailable,
                    "tls",
                    format!("HTTPS client set-up: {e}"),
                )
            })?;
        Ok(Self {
            http,
            base: server,
            authorization,
        })
    }

    /// `GET path` with `query`, answered with JSON.
    pub async fn get(&self, path: &str, query: &[(&str, String)]) -> Result<Value, Failure> {
        let response = self.send(Method::GET, path, query, None).await?;
        self.json(response).await
    }

    /// `POST path` with a JSON body, answered with JSON.
    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, Failure> {
        let response = self.send(Method::POST, path, &[], Some(body)).await?;
        self.json(response).await
    }

    /// `PATCH path` with a JSON body, answered with JSON.
    pub async fn patch(&self, path: &str, body: &Value) -> Result<Value, Failure> {
        let response = self.send(Method::PATCH, path, &[], Some(body)).await?;
        self.json(response).await
    }

    /// `DELETE path`; `None` when the answer has no body (204).
    pub async fn delete(&self, path: &str) -> Result<Option<Value>, Failure> {
        let response = self.send(Method::DELETE, path, &[], None).await?;
        if response.status() == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        self.json(response).await.map(Some)
    }

    /// A list, following `next_cursor` until `paging.limit` items or the end.
    pub async fn list(
        &self,
        path: &str,
        filters: &[(&str, String)],
        paging: &Paging,
    ) -> Result<Page, Failure> {
        let mut items = Vec::new();
        let mut cursor = paging.cursor.clone();
        loop {
            let left = paging
                .limit
                .map(|limit| limit.saturating_sub(len_u32(&items)));
            if left == Some(0) {
                break;
            }
            let mut query = filters.to_vec();
            query.push(("limit", left.unwrap_or(MAX_PAGE).min(MAX_PAGE).to_string()));
            if let Some(cursor) = &cursor {
                query.push(("cursor", cursor.clone()));
            }
            let page: Page = decode(self.get(path, &query).await?)?;
            items.extend(page.items);
            match page.next_cursor {
                // A cursor that does not move would page forever.
                Some(next) if Some(&next) != cursor.as_ref() => cursor = Some(next),
                _ => {
                    cursor = None;
                    break;
                }
            }
        }
        Ok(Page {
            items,
            next_cursor: cursor,
        })
    }

    /// `GET path` with `query`, its body copied to `out` as it arrives; returns the bytes
    /// written. A reader of `out` that went away ends the copy quietly.
    pub async fn download(
        &self,
        path: &str,
        query: &[(&str, String)],
        out: &mut dyn Write,
    ) -> Result<u64, Failure> {
        self.download_as(path, query, DEFAULT_ACCEPT, out).await
    }

    /// [`Self::download`] asking for the media type `accept` (a route that answers HTML or
    /// JSON by `Accept`).
    pub async fn download_as(
        &self,
        path: &str,
        query: &[(&str, String)],
        accept: &str,
        out: &mut dyn Write,
    ) -> Result<u64, Failure> {
        let mut response = self
            .send_accepting(Method::GET, path, query, None, accept)
            .await?;
        let mut written = 0u64;
        while let Some(chunk) = response.chunk().await.map_err(|e| self.transport(&e))? {
            match out.write_all(&chunk) {
                Ok(()) => written += chunk.len() as u64,
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(written),
                Err(e) => {
                    return Err(Failure::new(
                        Exit::Refused,
                        "output",
                        format!("writing the export: {e}"),
                    ))
                }
            }
        }
        match out.flush() {
            Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(Failure::new(
                Exit::Refused,
                "output",
                format!("writing the export: {e}"),
            )),
            _ => Ok(written),
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<reqwest::Response, Failure> {
        self.send_accepting(method, path, query, body, DEFAULT_ACCEPT)
            .await
    }

    async fn send_accepting(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
        accept: &str,
    ) -> Result<reqwest::Response, Failure> {
        let url = self.base.join(path).map_err(|e| {
            Failure::usage(format!("{path:?} does not make a URL with --server: {e}"))
        })?;
        let mut request = self
            .http
            .request(method, url)
            .header(AUTHORIZATION, self.authorization.clone())
            .header(ACCEPT, accept);
        if !query.is_empty() {
            request = request.query(query);
        }
        if let Some(body) = body {
            request = request
                .header(CONTENT_TYPE, "application/json")
                .body(body.to_string());
        }
        let response = request.send().await.map_err(|e| self.transport(&e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let body = read_limited(response, MAX_ERROR_BODY).await;
        Err(problem_failure(status, &body, retry_after))
    }

    async fn json(&self, response: reqwest::Response) -> Result<Value, Failure> {
        let bytes = response.bytes().await.map_err(|e| self.transport(&e))?;
        serde_json::from_slice(&bytes).map_err(|e| {
            Failure::new(
                Exit::Unavailable,
                "bad-response",
                format!("the server's answer is not JSON: {e}"),
            )
        })
    }

    /// A request that got no HTTP answer: TLS, connection, timeout.
    fn transport(&self, e: &reqwest::Error) -> Failure {
        let server = self.base.as_str().trim_end_matches('/');
        if let Some(tls) = rustls_error(e) {
            let hint = match tls {
                rustls::Error::InvalidCertificate(_) => {
                    "; pass --ca (or FLEETCTL_CA) with the fleet root CA, fleetd's <data_dir>/pki/root-ca.pem"
                }
                _ => "",
            };
            return Failure::new(
                Exit::Unavailable,
                "tls",
                format!("TLS with {server} failed: {tls}{hint}"),
            );
        }
        if e.is_timeout() {
            return Failure::new(
                Exit::Unavailable,
                "timeout",
                format!("{server} did not answer in time"),
            );
        }
        let cause = innermost(e);
        if e.is_connect() {
            return Failure::new(
                Exit::Unavailable,
                "unreachable",
                format!("cannot connect to {server}: {cause}"),
            );
        }
        Failure::new(
            Exit::Unavailable,
            "unreachable",
            format!("talking to {server}: {cause}"),
        )
    }
}

/// Turns JSON from the API into a type, or says the answer was not what the contract promises.
pub fn decode<T: DeserializeOwned>(value: Value) -> Result<T, Failure> {
    serde_json::from_value(value).map_err(|e| {
        Failure::new(
            Exit::Unavailable,
            "bad-response",
            format!("unexpected answer from the server: {e}"),
        )
    })
}

/// The failure for a non-2xx answer: the problem's slug and detail when it is a problem document,
/// else the status; the exit code from the status.
fn problem_failure(status: StatusCode, body: &[u8], retry_after: Option<u64>) -> Failure {
    let exit = match status.as_u16() {
        401 | 403 => Exit::Auth,
        404 => Exit::NotFound,
        500..=599 => Exit::Unavailable,
        _ => Exit::Refused,
    };
    let problem: Option<Problem> = serde_json::from_slice(body).ok();
    let slug = problem
        .as_ref()
        .and_then(|p| p.kind.as_deref())
        .and_then(|kind| kind.strip_prefix(PROBLEM_PREFIX))
        .filter(|slug| !slug.is_empty())
        .map_or_else(|| format!("http-{}", status.as_u16()), str::to_owned);
    let mut detail = problem
        .as_ref()
        .and_then(|p| p.detail.clone().or_else(|| p.title.clone()))
        .filter(|d| !d.trim().is_empty())
        .unwrap_or_else(|| format!("the server answered {status}"));
    if let Some(field) = problem.as_ref().and_then(|p| p.field.as_deref()) {
        if !detail.contains(field) {
            detail = format!("{field}: {detail}");
        }
    }
    if let Some(secs) = retry_after {
        detail.push_str(&format!("; retry after {secs} s"));
    }
    Failure::new(exit, slug, detail)
}

async fn read_limited(mut response: reqwest::Response, max: usize) -> Vec<u8> {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        body.extend_from_slice(&chunk);
        if body.len() >= max {
            body.truncate(max);
            break;
        }
    }
    body
}

/// The rustls error behind a failed request, if TLS is what failed. It sits inside `io::Error`s
/// (nested: the connector wraps tokio-rustls's), whose `source()` skips the error they wrap, so
/// the chain is walked by hand.
fn rustls_error<'a>(e: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    let mut current = Some(e);
    while let Some(err) = current {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        current = match err.downcast_ref::<io::Error>().and_then(io::Error::get_ref) {
            Some(inner) => Some(inner as &(dyn StdError + 'static)),
            None => err.source(),
        };
    }
    None
}

/// The most specific message of an error chain ("Connection refused (os error 111)").
fn innermost(e: &(dyn StdError + 'static)) -> String {
    let mut current = e;
    while let Some(source) = current.source() {
        current = source;
    }
    current.to_string()
}

fn len_u32<T>(items: &[T]) -> u32 {
    u32::try_from(items.len()).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_become_failures_with_the_apis_slug_and_our_exit_code() {
        let body = br#"{"type":"urn:fleetplane:problem:not-found","title":"Not Found","status":404,"detail":"device not found"}"#;
        let f = problem_failure(StatusCode::NOT_FOUND, body, None);
        assert_eq!(f.to_string(), "device not found (not-found)");
        assert_eq!(f.exit, Exit::NotFound);

        let body = br#"{"type":"urn:fleetplane:problem:invalid-field","title":"x","status":422,"detail":"must be 1 to 500","field":"limit"}"#;
        let f = problem_failure(StatusCode::UNPROCESSABLE_ENTITY, body, None);
        assert_eq!(f.to_string(), "limit: must be 1 to 500 (invalid-field)");
        assert_eq!(f.exit, Exit::Refused);

        let body = br#"{"type":"urn:fleetplane:problem:too-many-failures","title":"x","status":429,"detail":"too many failed authentications"}"#;
        let f = problem_failure(StatusCode::TOO_MANY_REQUESTS, body, Some(30));
        assert_eq!(
            f.detail,
            "too many failed authentications; retry after 30 s"
        );

        for (status, exit) in [
            (401, Exit::Auth),
            (403, Exit::Auth),
            (409, Exit::Refused),
            (502, Exit::Unavailable),
        ] {
            let f = problem_failure(StatusCode::from_u16(status).unwrap(), b"<html>", None);
            assert_eq!(f.exit, exit, "{status}");
            assert_eq!(f.slug, format!("http-{status}"));
        }
    }

    #[test]
    fn servers_are_https_urls() {
        assert_eq!(
            parse_server("https://fleet.example:8443").unwrap().as_str(),
            "https://fleet.example:8443/"
        );
        assert_eq!(
            parse_server("https://lb.example/fleet").unwrap().as_str(),
            "https://lb.example/fleet/"
        );
        assert!(parse_server("http://fleet.example").is_err());
        assert!(parse_server("fleet.example").is_err());
        assert!(parse_server("https://fleet.example/?x=1").is_err());
    }
}

//! Talking to the identity provider: its discovery document and keys, fetched over HTTPS (or
//! HTTP to a loopback address, for a provider on the same machine) and cached per tenant, and
//! the token request.
//!
//! The cache holds what a provider publishes (endpoints, public keys), per (tenant, issuer):
//! one tenant's provider never answers for another's, as the design's "no cache shared across
//! tenants" asks, even when both name the same issuer. Entries live [`CACHE_TTL`]; a token whose
//! `kid` is not in the cached keys makes one fresh fetch of the keys (providers rotate keys by
//! publishing the new one first), at most once per [`MIN_REFETCH_INTERVAL`] per provider.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use store::TenantId;
use url::Url;

use super::jws::JwkSet;
use super::secret::ClientSecret;
use super::OidcError;

/// How long discovery documents and keys are used before they are fetched again.
pub const CACHE_TTL: Duration = Duration::from_secs(3600);
/// The least time between two fetches of one provider's keys for unknown `kid`s.
pub const MIN_REFETCH_INTERVAL: Duration = Duration::from_secs(10);
/// Largest document read from a provider.
const MAX_DOCUMENT_BYTES: usize = 256 * 1024;
/// How long one request to a provider may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The parts of a discovery document (OpenID Connect Discovery 1.0, section 3) fleetd uses.
#[derive(Clone, Debug, Deserialize)]
pub struct Discovery {
    /// Must be the configured issuer exactly.
    pub issuer: String,
    /// Where the browser is sent.
    pub authorization_endpoint: String,
    /// Where the code is exchanged.
    pub token_endpoint: String,
    /// The provider's keys.
    pub jwks_uri: String,
}

/// A provider's published state, as cached.
#[derive(Clone, Debug)]
pub struct Published {
    /// Its discovery document, checked.
    pub discovery: Discovery,
    /// Its keys.
    pub keys: Arc<JwkSet>,
    fetched_at: Instant,
    /// When the keys were last fetched again for an unknown `kid`.
    keys_refetched_at: Option<Instant>,
}

/// The HTTP client for providers and the per-tenant cache. Cheap to clone.
#[derive(Clone)]
pub struct Providers {
    http: reqwest::Client,
    cache: Arc<Mutex<HashMap<(TenantId, String), Published>>>,
    /// Whether plain HTTP to a loopback address is allowed ([`checked_url`]).
    loopback_http: bool,
}

impl std::fmt::Debug for Providers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Providers").finish_non_exhaustive()
    }
}

impl Default for Providers {
    fn default() -> Self {
        Self::new(tls_config())
    }
}

/// rustls with ring and the system's roots: identity providers have public certificates.
fn tls_config() -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        // A root the system holds but rustls cannot parse is skipped, as browsers do.
        let _ = roots.add(cert);
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

impl Providers {
    /// A client with this TLS configuration (no redirects followed: every URL fleetd fetches is
    /// checked first).
    pub fn new(tls: rustls::ClientConfig) -> Self {
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(REQUEST_TIMEOUT)
            .build()
            .expect("a client with a preconfigured rustls configuration builds");
        Self {
            http,
            cache: Arc::default(),
            loopback_http: false,
        }
    }

    /// Allows (or not, the default) providers over plain HTTP on a loopback address: for a
    /// provider on the same machine, in development and tests. Off, a tenant owner cannot make
    /// fleetd fetch from its own host's loopback services (its metrics, the database) by naming
    /// them as an issuer; fleetd allows it outside production mode only.
    pub fn with_loopback_http(mut self, allowed: bool) -> Self {
        self.loopback_http = allowed;
        self
    }

    /// `text` as a URL fleetd may fetch or send a browser to, under this client's rule.
    pub fn checked_url(&self, text: &str) -> Result<Url, OidcError> {
        checked_url(text, self.loopback_http)
    }

    /// The provider's discovery document and keys, from the cache or fetched.
    pub async fn published(&self, tenant: TenantId, issuer: &str) -> Result<Published, OidcError> {
        let key = (tenant, issuer.to_owned());
        if let Some(hit) = self.lock().get(&key) {
            if hit.fetched_at.elapsed() < CACHE_TTL {
                return Ok(hit.clone());
            }
        }
        let discovery = self.discover(issuer).await?;
        let keys = Arc::new(self.fetch_keys(&discovery).await?);
        let published = Published {
            discovery,
            keys,
            fetched_at: Instant::now(),
            keys_refetched_at: None,
        };
        self.lock().insert(key, published.clone());
        Ok(published)
    }

    /// The keys fetched again because a token names a `kid` the cached ones lack; `None` when
    /// there is nothing newer to try: the keys were fetched again less than
    /// [`MIN_REFETCH_INTERVAL`] ago and are the ones already tried.
    pub async fn refetch_keys(
        &self,
        tenant: TenantId,
        published: &Published,
    ) -> Result<Option<Arc<JwkSet>>, OidcError> {
        let key = (tenant, published.discovery.issuer.clone());
        let cached = self
            .lock()
            .get(&key)
            .map(|p| (p.keys.clone(), p.keys_refetched_at));
        if let Some((keys, Some(at))) = &cached {
            if at.elapsed() < MIN_REFETCH_INTERVAL {
                let newer = !Arc::ptr_eq(keys, &published.keys);
                return Ok(newer.then(|| keys.clone()));
            }
        }
        let keys = Arc::new(self.fetch_keys(&published.discovery).await?);
        if let Some(entry) = self.lock().get_mut(&key) {
            entry.keys = keys.clone();
            entry.keys_refetched_at = Some(Instant::now());
        }
        Ok(Some(keys))
    }

    /// Forgets the cached documents of `tenant` (its provider changed).
    pub fn forget(&self, tenant: TenantId) {
        self.lock().retain(|(t, _), _| *t != tenant);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(TenantId, String), Published>> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn discover(&self, issuer: &str) -> Result<Discovery, OidcError> {
        let base = issuer.trim_end_matches('/');
        let url = self.checked_url(&format!("{base}/.well-known/openid-configuration"))?;
        let bytes = self.get(url).await?;
        let discovery: Discovery = serde_json::from_slice(&bytes).map_err(|e| {
            OidcError::ProviderUnavailable(format!("the discovery document does not parse: {e}"))
        })?;
        // OpenID Connect Discovery 1.0, section 4.3: the issuer must be the one asked for.
        if discovery.issuer != issuer {
            return Err(OidcError::ProviderUnavailable(format!(
                "the discovery document names issuer {:?}, not {issuer:?}",
                discovery.issuer
            )));
        }
        for endpoint in [
            &discovery.authorization_endpoint,
            &discovery.token_endpoint,
            &discovery.jwks_uri,
        ] {
            self.checked_url(endpoint)?;
        }
        Ok(discovery)
    }

    async fn fetch_keys(&self, discovery: &Discovery) -> Result<JwkSet, OidcError> {
        let bytes = self.get(self.checked_url(&discovery.jwks_uri)?).await?;
        serde_json::from_slice(&bytes)
            .map_err(|e| OidcError::ProviderUnavailable(format!("the JWKS does not parse: {e}")))
    }

    async fn get(&self, url: Url) -> Result<Vec<u8>, OidcError> {
        let response = self
            .http
            .get(url.clone())
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|e| unreachable_provider(&url, &e))?;
        if !response.status().is_success() {
            return Err(OidcError::ProviderUnavailable(format!(
                "{url} answered {}",
                response.status()
            )));
        }
        read_bounded(response, &url).await
    }

    /// Exchanges `code` at the token endpoint (client_secret_basic, RFC 6749 section 2.3.1);
    /// returns the ID token.
    pub async fn exchange_code(
        &self,
        discovery: &Discovery,
        client_id: &str,
        secret: &ClientSecret,
        code: &str,
        redirect_uri: &str,
        verifier: &str,
    ) -> Result<String, OidcError> {
        let url = self.checked_url(&discovery.token_endpoint)?;
        // The id and secret are form-encoded before they are joined (section 2.3.1).
        let encode = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let response = self
            .http
            .post(url.clone())
            .basic_auth(encode(client_id), Some(encode(secret.expose())))
            .header("accept", "application/json")
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", redirect_uri),
                ("code_verifier", verifier),
            ])
            .send()
            .await
            .map_err(|e| unreachable_provider(&url, &e))?;
        let status = response.status();
        let bytes = read_bounded(response, &url).await?;
        #[derive(Deserialize)]
        struct TokenAnswer {
            id_token: Option<String>,
            error: Option<String>,
        }
        let answer: TokenAnswer = serde_json::from_slice(&bytes).map_err(|_| {
            OidcError::ProviderUnavailable(format!(
                "the token endpoint answered {status} without JSON"
            ))
        })?;
        if let Some(error) = answer.error {
            // The provider's own error code (invalid_grant: a spent or foreign code, a PKCE
            // mismatch), never its free-text description, which we cannot vouch for.
            return Err(OidcError::TokenRequestRefused(clip(&error)));
        }
        if !status.is_success() {
            return Err(OidcError::ProviderUnavailable(format!(
                "the token endpoint answered {status}"
            )));
        }
        answer
            .id_token
            .ok_or(OidcError::Refused(super::Refusal::NoIdToken))
    }
}

/// Reads a provider's answer, refusing more than [`MAX_DOCUMENT_BYTES`].
async fn read_bounded(mut response: reqwest::Response, url: &Url) -> Result<Vec<u8>, OidcError> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| unreachable_provider(url, &e))?
    {
        if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
            return Err(OidcError::ProviderUnavailable(format!(
                "{url} answered more than {MAX_DOCUMENT_BYTES} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn unreachable_provider(url: &Url, e: &reqwest::Error) -> OidcError {
    OidcError::ProviderUnavailable(format!("{url}: {}", error_chain(e)))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

fn clip(text: &str) -> String {
    text.chars()
        .filter(|c| c.is_ascii_graphic())
        .take(64)
        .collect()
}

/// A URL fleetd may fetch or send a browser to: `https`, or (when `loopback_http`) `http` to a
/// loopback address, a provider on this machine; no credentials, no fragment.
pub fn checked_url(text: &str, loopback_http: bool) -> Result<Url, OidcError> {
    let refuse = |why: &str| OidcError::InvalidProviderUrl(format!("{text:?}: {why}"));
    let url = Url::parse(text).map_err(|e| refuse(&e.to_string()))?;
    if url.fragment().is_some() || !url.username().is_empty() || url.password().is_some() {
        return Err(refuse("must have no fragment and no credentials"));
    }
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        None => return Err(refuse("has no host")),
    };
    match url.scheme() {
        "https" => Ok(url),
        "http" if loopback && loopback_http => Ok(url),
        "http" if loopback => Err(refuse(
            "must be https (plain http to a loopback address only outside production mode)",
        )),
        "http" => Err(refuse(
            "must be https (plain http only to a loopback address)",
        )),
        _ => Err(refuse("must be an https URL")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_https_or_loopback_http_urls_are_used() {
        for good in [
            "https://idp.example.com",
            "https://idp.example.com/realms/x",
            "http://127.0.0.1:8080",
            "http://[::1]:9000/",
            "http://localhost:3000",
        ] {
            assert!(checked_url(good, true).is_ok(), "{good}");
            let https = good.starts_with("https:");
            assert_eq!(checked_url(good, false).is_ok(), https, "{good}");
        }
        for bad in [
            "http://idp.example.com",
            "http://10.0.0.1",
            "ftp://idp.example.com",
            "https://user:pw@idp.example.com",
            "https://idp.example.com/#x",
            "not a url",
            "file:///etc/passwd",
        ] {
            assert!(
                matches!(
                    checked_url(bad, true),
                    Err(OidcError::InvalidProviderUrl(_))
                ),
                "{bad}"
            );
        }
    }
}

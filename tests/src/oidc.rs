//! A real OpenID provider for the single sign-on tests, and a browser to sign in through it.
//!
//! [`Provider::start`] runs `tests/oidc-provider/provider.js` (the certified `oidc-provider`
//! package, installed with `npm ci` from the committed lock file) with Node on an ephemeral
//! loopback port. [`Browser`] follows redirects, keeps the provider's cookies and submits its
//! login and consent forms, as a person's browser would, until the provider sends it back to
//! the redirect URI.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The provider's directory in the workspace.
pub fn provider_dir() -> PathBuf {
    crate::npm::project_dir("oidc-provider")
}

/// A running provider; stopped when dropped.
pub struct Provider {
    _child: Child,
    /// Its issuer URL, `http://127.0.0.1:PORT`.
    pub issuer: String,
    /// Its signing key (RSA, PKCS#8 DER), so tests can sign tokens that verify.
    pub signing_key: Vec<u8>,
    /// The key's id.
    pub kid: String,
    _dir: tempfile::TempDir,
}

/// What Linux says a process is doing (its state and where it waits), for a failure message.
fn process_state(pid: Option<u32>) -> String {
    let Some(pid) = pid else {
        return "the process has exited".into();
    };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let state = status
        .lines()
        .find(|l| l.starts_with("State:"))
        .unwrap_or("State: unknown");
    let wchan = std::fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default();
    format!("pid {pid} {state}, waiting in {wchan:?}")
}

/// The `kid` of the provider's signing key.
pub const PROVIDER_KID: &str = "test-rs256";

impl Provider {
    /// Starts the provider with clients `fleet` and `other`, both with `client_secret` and
    /// `redirect_uris`.
    pub async fn start(redirect_uris: &[String], client_secret: &str) -> Self {
        Self::start_with(redirect_uris, client_secret, PROVIDER_KID, 0).await
    }

    /// [`Provider::start`] with the signing key's id `kid`, on `port` (0: any free one).
    pub async fn start_with(
        redirect_uris: &[String],
        client_secret: &str,
        kid: &str,
        port: u16,
    ) -> Self {
        install_packages().await;
        let dir = tempfile::tempdir().unwrap();
        let key_path = dir.path().join("signing-key.pem");
        // A provider that has not said it listens within the bound is killed and started
        // again: once in a CI run, one Node process of five stayed silent for 30 s after
        // loading the package (its state is printed, to find out why).
        let mut attempt = 1;
        let (child, line, mut lines) = loop {
            let mut child = Command::new("node")
                .arg("provider.js")
                .current_dir(provider_dir())
                .env("OIDC_REDIRECT_URIS", redirect_uris.join(" "))
                .env("OIDC_CLIENT_SECRET", client_secret)
                .env("OIDC_KEY_OUT", &key_path)
                .env("OIDC_KID", kid)
                .env("OIDC_PORT", port.to_string())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .expect("node runs (is Node.js installed?)");
            let stdout = child.stdout.take().unwrap();
            let mut lines = BufReader::new(stdout).lines();
            match tokio::time::timeout(Duration::from_secs(20), lines.next_line()).await {
                Ok(line) => {
                    let line = line.unwrap().expect("the provider prints its issuer");
                    break (child, line, lines);
                }
                Err(_) if attempt < 3 => {
                    eprintln!(
                        "oidc-provider: silent for 20 s (attempt {attempt}), restarting it; {}",
                        process_state(child.id())
                    );
                    let _ = child.kill().await;
                    attempt += 1;
                }
                Err(_) => panic!(
                    "the provider did not start in 3 attempts of 20 s; {}",
                    process_state(child.id())
                ),
            }
        };
        // The provider keeps writing (its warnings): drained, or it dies of a broken pipe.
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("oidc-provider: {line}");
            }
        });
        let ready: serde_json::Value = serde_json::from_str(&line).unwrap();
        let issuer = ready["issuer"].as_str().unwrap().to_owned();
        let pem = std::fs::read_to_string(&key_path).unwrap();
        Provider {
            _child: child,
            issuer,
            signing_key: pem_body(&pem),
            kid: kid.to_owned(),
            _dir: dir,
        }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        url::Url::parse(&self.issuer).unwrap().port().unwrap()
    }

    /// A token signed RS256 with the provider's own key.
    pub fn sign(&self, claims: &serde_json::Value) -> String {
        let header = serde_json::json!({"alg": "RS256", "kid": self.kid, "typ": "JWT"});
        let signed = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let pair = ring::signature::RsaKeyPair::from_pkcs8(&self.signing_key).unwrap();
        let mut sig = vec![0; pair.public().modulus_len()];
        pair.sign(
            &ring::signature::RSA_PKCS1_SHA256,
            &ring::rand::SystemRandom::new(),
            signed.as_bytes(),
            &mut sig,
        )
        .unwrap();
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig))
    }
}

/// The provider's packages, installed once.
async fn install_packages() {
    crate::npm::ensure_installed(&provider_dir(), "oidc-provider").await;
}

fn pem_body(pem: &str) -> Vec<u8> {
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap()
}

/// A browser for the provider's pages: no redirects followed by the client itself, cookies
/// kept by name (the provider's paths are all on one host).
pub struct Browser {
    http: reqwest::Client,
    cookies: BTreeMap<String, String>,
}

impl Default for Browser {
    fn default() -> Self {
        // The provider speaks plain HTTP; reqwest still wants a TLS configuration, since the
        // build's reqwest has rustls without a default crypto provider (api's features).
        let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        Self {
            http: reqwest::Client::builder()
                .use_preconfigured_tls(tls)
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            cookies: BTreeMap::new(),
        }
    }
}

impl Browser {
    /// Signs in at the provider as `login` from `authorization_url` (login, then consent) and
    /// returns the URL the provider sends the browser back to (under `redirect_prefix`).
    pub async fn sign_in(
        &mut self,
        authorization_url: &str,
        login: &str,
        redirect_prefix: &str,
    ) -> String {
        let mut url = url::Url::parse(authorization_url).unwrap();
        let mut form: Option<Vec<(&str, &str)>> = None;
        for _ in 0..20 {
            let request = match form.take() {
                Some(fields) => self.http.post(url.clone()).form(&fields),
                None => self.http.get(url.clone()),
            };
            let cookie = self
                .cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; ");
            let response = request.header("cookie", cookie).send().await.unwrap();
            for value in response.headers().get_all("set-cookie") {
                let pair = value.to_str().unwrap().split(';').next().unwrap();
                if let Some((name, value)) = pair.split_once('=') {
                    if value.is_empty() {
                        self.cookies.remove(name);
                    } else {
                        self.cookies.insert(name.to_owned(), value.to_owned());
                    }
                }
            }
            let status = response.status().as_u16();
            if let Some(location) = response.headers().get("location") {
                let next = url.join(location.to_str().unwrap()).unwrap();
                if next.as_str().starts_with(redirect_prefix) {
                    return next.into();
                }
                url = next;
                continue;
            }
            let page = response.text().await.unwrap();
            assert_eq!(status, 200, "provider page {url}: {page}");
            // The development interactions' forms post to the page's own URL.
            form = Some(if page.contains(r#"name="prompt" value="login""#) {
                vec![("prompt", "login"), ("login", login), ("password", "any")]
            } else if page.contains(r#"name="prompt" value="consent""#) {
                vec![("prompt", "consent")]
            } else {
                panic!("unexpected provider page {url}: {page}");
            });
        }
        panic!("the provider did not send the browser back after 20 steps");
    }
}

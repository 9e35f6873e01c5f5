//! A real API server for tests: fresh database, fresh PKI, TLS on 127.0.0.1, and a small
//! HTTPS client (tokio-rustls and a hand-written HTTP/1.1 request) that keeps the test
//! dependency tree lean. Keys and certificates are generated here; no PEM is pasted.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use api::{ApiState, EnrollLimits, TlsLimits};
use base64::Engine;
use certs::{IssuingCa, Pki, PkiParams, ServerCertParams};
use fleet_tests::TestDb;
use ipnet::IpNet;
use rcgen::{CertificateParams, KeyPair, SignatureAlgorithm, PKCS_ECDSA_P256_SHA256};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use store::enrollment_tokens::{self, IssuedToken, NewEnrollmentToken};
use store::{tenants, Database, TenantId};
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use wire::enrollment::CertificateResponse;

pub const BROKER_URL: &str = "mqtts://broker.test:8883";

/// A running API with its database and PKI.
pub struct TestServer {
    pub addr: SocketAddr,
    pub ca: Arc<IssuingCa>,
    pub db: Database,
    pub test_db: TestDb,
    pub tenant: TenantId,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    _pki_dir: tempfile::TempDir,
}

impl TestServer {
    /// A server that trusts no proxy.
    pub async fn start() -> Self {
        Self::start_with(Vec::new()).await
    }

    /// A server that believes `X-Forwarded-For` from `trusted_proxies`.
    pub async fn start_with(trusted_proxies: Vec<IpNet>) -> Self {
        Self::start_configured(trusted_proxies, TlsLimits::default()).await
    }

    /// A server whose listener applies `limits`.
    pub async fn start_limited(limits: TlsLimits) -> Self {
        Self::start_configured(Vec::new(), limits).await
    }

    async fn start_configured(trusted_proxies: Vec<IpNet>, limits: TlsLimits) -> Self {
        let test_db = TestDb::new().await;
        let db = test_db.open().await;
        let tenant = tenants::create(&db.app, "acme", &store::audit::Actor::System)
            .await
            .unwrap()
            .id;
        let pki_dir = tempfile::tempdir().unwrap();
        let ca = Arc::new(
            Pki::generate(&pki_dir.path().join("pki"), &PkiParams::default())
                .unwrap()
                .into_issuing_ca(),
        );
        let server_cert = ca
            .issue_server_cert(&ServerCertParams::new(
                vec!["localhost".into()],
                vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
            ))
            .unwrap();
        let tls = api::tls_server_config_for(&server_cert, ca.root_der().clone()).unwrap();
        let state = ApiState {
            trusted_proxies,
            // Debug builds run argon2 unoptimised (~0.5 s a verification): let the queue wait.
            enroll_limits: EnrollLimits {
                max_concurrent_verifications: 2,
                max_wait: Duration::from_secs(120),
                ..EnrollLimits::default()
            },
            ..ApiState::new(db.app.clone(), ca.clone(), BROKER_URL.into())
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(api::serve_tls_with(
            listener,
            tls,
            api::router(state),
            limits,
            async {
                let _ = stopped.await;
            },
        ));
        Self {
            addr,
            ca,
            db,
            test_db,
            tenant,
            stop: Some(stop),
            task: Some(task),
            _pki_dir: pki_dir,
        }
    }

    /// A second tenant in the same database.
    pub async fn other_tenant(&self) -> TenantId {
        tenants::create(&self.db.app, "globex", &store::audit::Actor::System)
            .await
            .unwrap()
            .id
    }

    /// Creates a token for `tenant`, changed by `edit` from [`default_token`].
    pub async fn token_for(
        &self,
        tenant: TenantId,
        edit: impl FnOnce(&mut NewEnrollmentToken),
    ) -> IssuedToken {
        let mut new = default_token();
        edit(&mut new);
        let mut tx = self.db.app.begin(tenant).await.unwrap();
        fleet_tests::ensure_group(&mut tx, &new.device_group).await;
        let issued = enrollment_tokens::create(&mut tx, &new, &store::audit::Actor::System)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        issued
    }

    /// A token of the server's tenant.
    pub async fn token(&self, edit: impl FnOnce(&mut NewEnrollmentToken)) -> IssuedToken {
        self.token_for(self.tenant, edit).await
    }

    /// `POST /v1/enroll` with `token` and a fresh P-256 CSR.
    pub async fn enroll(&self, token: &str) -> Response {
        self.enroll_with(token, &p256_csr(), &[]).await
    }

    /// `POST /v1/enroll` with a CSR and extra headers of the caller's choosing.
    pub async fn enroll_with(&self, token: &str, csr: &str, headers: &[(&str, &str)]) -> Response {
        let body = serde_json::json!({ "token": token, "csr": csr }).to_string();
        let mut all = vec![("Content-Type", "application/json")];
        all.extend_from_slice(headers);
        self.request("POST", "/v1/enroll", &all, body.as_bytes())
            .await
    }

    /// `POST /v1/enroll` from the local address `source`, with `token` and `csr`.
    pub async fn enroll_from(&self, source: IpAddr, token: &str, csr: &str) -> Response {
        let body = serde_json::json!({ "token": token, "csr": csr }).to_string();
        fleet_tests::https::https_request_from(
            source,
            self.addr,
            &self.ca,
            "POST",
            "/v1/enroll",
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        )
        .await
    }

    /// Any request over HTTPS.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        https_request(self.addr, &self.ca, method, path, headers, body).await
    }

    /// `POST /v1/renew` with `csr`, presenting `client` (chain and key) as the TLS client
    /// certificate, or none. `Err` when the TLS connection failed (e.g. the server refused the
    /// client certificate) before an HTTP answer arrived.
    pub async fn renew(
        &self,
        client: Option<&DeviceCredentials>,
        csr: &str,
    ) -> Result<Response, String> {
        let body = serde_json::json!({ "csr": csr }).to_string();
        fleet_tests::https::https_request_as(
            self.addr,
            &self.ca,
            client.map(DeviceCredentials::client_cert),
            "POST",
            "/v1/renew",
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        )
        .await
    }

    /// Enrolls a new device with a fresh token and key: its credentials and the answer.
    pub async fn enroll_device(&self) -> (DeviceCredentials, CertificateResponse) {
        let issued = self.token(|_| {}).await;
        let (key, csr) = fleet_tests::device::key_and_csr();
        let response = self.enroll_with(issued.secret.expose(), &csr, &[]).await;
        let answer = self.certificate_answer(&response);
        let credentials = DeviceCredentials::new(&key, &answer.certificate_chain);
        (credentials, answer)
    }

    /// Checks that `response` is a 201 with a JSON certificate answer for this server's tenant:
    /// the configured broker, the fleet root and a chain ending in the issuing CA; returns it.
    #[track_caller]
    pub fn certificate_answer(&self, response: &Response) -> CertificateResponse {
        response.assert_status(201);
        assert_eq!(response.header("content-type"), Some("application/json"));
        let answer: CertificateResponse = serde_json::from_slice(&response.body).unwrap();
        assert_eq!(answer.tenant_id, self.tenant);
        assert_eq!(answer.broker_url, BROKER_URL);
        assert_eq!(answer.ca_certificate, self.ca.root_pem());
        assert!(answer.certificate_chain.ends_with(&self.ca.pem()));
        answer
    }

    /// Counts rows of a tenant table for `tenant`, as the owner (behind RLS's back).
    pub async fn count(&self, table: &str, tenant: TenantId) -> i64 {
        let mut owner = self.test_db.connect_as_owner().await;
        sqlx::query_scalar(&format!(
            "SELECT count(*) FROM {table} WHERE tenant_id = $1"
        ))
        .bind(tenant)
        .fetch_one(&mut owner)
        .await
        .unwrap()
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("server stops")
                .unwrap()
                .unwrap();
        }
        self.db.close().await.unwrap();
    }
}

/// A token that admits anything from loopback: 127.0.0.0/8, 5 a day, a week.
pub fn default_token() -> NewEnrollmentToken {
    NewEnrollmentToken {
        name: "line 3".into(),
        allowed_cidrs: vec!["127.0.0.0/8".parse().unwrap()],
        daily_limit: 5,
        max_uses: None,
        expires_at: OffsetDateTime::now_utc() + time::Duration::days(7),
        device_group: "default".into(),
        device_labels: BTreeMap::new(),
    }
}

/// A CSR as a device makes it, with a key of `alg`.
pub fn csr_with(alg: &'static SignatureAlgorithm) -> String {
    let key = KeyPair::generate_for(alg).unwrap();
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "chosen-by-device");
    params.serialize_request(&key).unwrap().pem().unwrap()
}

/// What a device presents as its TLS client certificate: its chain (leaf first) and key.
pub struct DeviceCredentials {
    pub chain: Vec<CertificateDer<'static>>,
    pub key_pkcs8: Vec<u8>,
}

impl DeviceCredentials {
    /// From a key and a chain in PEM (as `certificate_chain` in an enrollment answer).
    pub fn new(key: &KeyPair, chain_pem: &str) -> Self {
        Self {
            chain: pem_certs(chain_pem),
            key_pkcs8: key.serialize_der(),
        }
    }

    /// The chain and key as a TLS client presents them.
    pub fn client_cert(&self) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        (
            self.chain.clone(),
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_pkcs8.clone())),
        )
    }
}

/// Every certificate in `pem_text`, in order, as DER.
pub fn pem_certs(pem_text: &str) -> Vec<CertificateDer<'static>> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let mut out = Vec::new();
    let mut rest = pem_text;
    while let Some(start) = rest.find(BEGIN) {
        let end = rest.find(END).unwrap();
        let b64: String = rest[start + BEGIN.len()..end]
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        out.push(CertificateDer::from(
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap(),
        ));
        rest = &rest[end + END.len()..];
    }
    out
}

pub fn p256_csr() -> String {
    csr_with(&PKCS_ECDSA_P256_SHA256)
}

/// An RSA CSR from the openssl tool (ring cannot make RSA keys); `None` without openssl.
pub fn rsa_csr() -> Option<String> {
    let dir = tempfile::tempdir().unwrap();
    let out = fleet_tests::openssl::openssl()?
        .args([
            "req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=rsa",
        ])
        .arg("-keyout")
        .arg(dir.path().join("rsa.key"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8(out.stdout).unwrap())
}

pub use fleet_tests::https::{https_request, Response};

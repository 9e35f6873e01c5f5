//! A real API server for tests: fresh database, fresh PKI, TLS on 127.0.0.1, and a small
//! HTTPS client (tokio-rustls and a hand-written HTTP/1.1 request) that keeps the test
//! dependency tree lean. Keys and certificates are generated here; no PEM is pasted.

#![allow(dead_code)] // each test binary uses a different subset

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use api::{ApiState, EnrollLimits};
use certs::{IssuingCa, Pki, PkiParams, ServerCertParams};
use fleet_tests::TestDb;
use ipnet::IpNet;
use rcgen::{CertificateParams, KeyPair, SignatureAlgorithm, PKCS_ECDSA_P256_SHA256};
use store::enrollment_tokens::{self, IssuedToken, NewEnrollmentToken};
use store::{tenants, Database, TenantId};
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

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
        let test_db = TestDb::new().await;
        let db = test_db.open().await;
        let tenant = tenants::create(&db.app, "acme", "test").await.unwrap().id;
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
        let tls = api::tls_server_config_for(&server_cert).unwrap();
        let state = ApiState {
            trusted_proxies,
            // Debug builds run argon2 unoptimised (~0.5 s a verification): let the queue wait.
            enroll_limits: EnrollLimits {
                max_concurrent_verifications: 2,
                max_wait: Duration::from_secs(120),
            },
            ..ApiState::new(db.app.clone(), ca.clone(), BROKER_URL.into())
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(api::serve_tls(listener, tls, api::router(state), async {
            let _ = stopped.await;
        }));
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
        tenants::create(&self.db.app, "globex", "test")
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
        let issued = enrollment_tokens::create(&mut tx, &new, "operator:test")
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

pub fn p256_csr() -> String {
    csr_with(&PKCS_ECDSA_P256_SHA256)
}

/// An RSA CSR from the openssl tool (ring cannot make RSA keys); `None` without openssl.
pub fn rsa_csr() -> Option<String> {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("openssl")
        .args([
            "req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=rsa",
        ])
        .arg("-keyout")
        .arg(dir.path().join("rsa.key"))
        .output()
        .ok()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8(out.stdout).unwrap())
}

pub use fleet_tests::https::{https_request, Response};

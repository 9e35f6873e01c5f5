//! `POST /v1/renew` over real mutual TLS against a real Postgres: the happy path and every
//! refusal, and enrollment still working without a client certificate.

use std::time::Duration;

use crate::common::{p256_csr, pem_certs, DeviceCredentials, TestServer};
use certs::{DeviceCertificate, DeviceIdentity, Pki, PkiParams, Validity};
use fleet_tests::device::key_and_csr;
use rcgen::PKCS_ECDSA_P384_SHA384;
use rustls::pki_types::UnixTime;
use store::audit::{self, ChainVerdict};
use store::{device_certificates, devices, DeviceId};
use time::OffsetDateTime;

/// Credentials for `identity` signed by `ca`, valid over `validity`.
fn credentials_from(
    ca: &certs::IssuingCa,
    identity: DeviceIdentity,
    validity: Validity,
) -> DeviceCredentials {
    let device = fleet_tests::device::issue(ca, identity, validity);
    DeviceCredentials::new(&device.key, &device.chain_pem)
}

fn leaf_of(chain_pem: &str) -> DeviceCertificate {
    DeviceCertificate::from_der(&pem_certs(chain_pem)[0]).unwrap()
}

#[tokio::test]
async fn a_device_renews_with_its_current_certificate_and_keeps_its_identity() {
    let server = TestServer::start().await;
    let (credentials, enrolled) = server.enroll_device().await;
    let old_leaf = leaf_of(&enrolled.certificate_chain);

    let (_, csr) = key_and_csr();
    let response = server.renew(Some(&credentials), &csr).await.unwrap();
    let answer = server.certificate_answer(&response);
    assert_eq!(answer.device_id, enrolled.device_id);

    // Same identity, new serial, the new key, and a chain that verifies to the root.
    let new_leaf = leaf_of(&answer.certificate_chain);
    assert_eq!(new_leaf.identity(), old_leaf.identity());
    assert_ne!(new_leaf.serial(), old_leaf.serial());
    let expires = OffsetDateTime::parse(
        &answer.expires_at,
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert_eq!(expires, new_leaf.not_after());
    let chain = pem_certs(&answer.certificate_chain);
    let verifier = certs::tls::client_cert_verifier(
        server.ca.root_der().clone(),
        certs::tls::ClientCertificates::Required,
    )
    .unwrap();
    verifier
        .verify_client_cert(&chain[0], &chain[1..], UnixTime::now())
        .expect("the renewed chain verifies against the fleet root");

    // Two certificate records, the new one without a token; the audit event names both serials.
    let mut tx = server.db.app.begin(server.tenant).await.unwrap();
    let records = device_certificates::list_for_device(&mut tx, answer.device_id)
        .await
        .unwrap();
    assert_eq!(records.len(), 2);
    let renewed = records
        .iter()
        .find(|r| r.serial == new_leaf.serial().to_string())
        .expect("the new certificate is recorded");
    assert_eq!(renewed.enrollment_token_id, None);
    assert_eq!(renewed.not_after, new_leaf.not_after());
    let events = audit::list_after(&mut tx, 0, 100).await.unwrap();
    let event = events
        .iter()
        .find(|e| e.action == "device.certificate_renewed")
        .expect("audit event");
    assert_eq!(event.target, format!("device:{}", answer.device_id));
    assert_eq!(event.actor, format!("device:{}", answer.device_id));
    assert!(event.details.contains(&old_leaf.serial().to_string()));
    assert!(event.details.contains(&new_leaf.serial().to_string()));
    assert!(matches!(
        audit::verify(&mut tx).await.unwrap(),
        ChainVerdict::Intact { .. }
    ));
    tx.rollback().await.unwrap();

    // The old certificate is marked superseded, the new one is not.
    let mut tx = server.db.app.begin(server.tenant).await.unwrap();
    let records = device_certificates::list_for_device(&mut tx, answer.device_id)
        .await
        .unwrap();
    for record in &records {
        let is_old = record.serial == old_leaf.serial().to_string();
        assert_eq!(record.superseded_at.is_some(), is_old, "{}", record.serial);
    }
    tx.rollback().await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn twelve_back_to_back_renewals_are_refused_after_the_first_with_429_and_retry_after() {
    let server = TestServer::start().await;
    let (credentials, _) = server.enroll_device().await;
    let (new_key, csr) = key_and_csr();
    let first = server.renew(Some(&credentials), &csr).await.unwrap();
    assert_eq!(first.status, 201);
    let renewed = DeviceCredentials::new(
        &new_key,
        &server.certificate_answer(&first).certificate_chain,
    );
    let mut refused = 0;
    for attempt in 1..12 {
        // Alternate the old (superseded, still in its grace period) and the new certificate:
        // neither may renew again within the hour.
        let presented = match attempt % 2 {
            0 => &credentials,
            _ => &renewed,
        };
        let response = server.renew(Some(presented), &p256_csr()).await.unwrap();
        assert_eq!(response.status, 429, "attempt {attempt}");
        let retry_after: u64 = response
            .header("retry-after")
            .expect("Retry-After")
            .parse()
            .unwrap();
        assert!(
            (3500..=3600).contains(&retry_after),
            "retry after {retry_after}"
        );
        let problem: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
        assert_eq!(problem["type"], "urn:fleetplane:problem:renewal-too-soon");
        refused += 1;
    }
    assert_eq!(refused, 11);
    assert_eq!(server.count("device_certificates", server.tenant).await, 2);
    server.stop().await;
}

#[tokio::test]
async fn without_a_client_certificate_renewal_is_401_and_enrollment_still_works() {
    let server = TestServer::start().await;
    let response = server.renew(None, &p256_csr()).await.unwrap();
    response.assert_problem(401, "device-certificate-required");
    // Also through the shared client, which never offers a certificate.
    let body = serde_json::json!({ "csr": p256_csr() }).to_string();
    server
        .request(
            "POST",
            "/v1/renew",
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        )
        .await
        .assert_problem(401, "device-certificate-required");

    let issued = server.token(|_| {}).await;
    assert_eq!(server.enroll(issued.secret.expose()).await.status, 201);
    assert_eq!(server.count("device_certificates", server.tenant).await, 1);
    server.stop().await;
}

#[tokio::test]
async fn a_revoked_device_gets_403_and_nothing_is_issued() {
    let server = TestServer::start().await;
    let (credentials, enrolled) = server.enroll_device().await;
    let mut tx = server.db.app.begin(server.tenant).await.unwrap();
    devices::revoke(
        &mut tx,
        enrolled.device_id,
        &store::device_groups::GroupScope::All,
        &store::audit::Actor::System,
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();

    let response = server.renew(Some(&credentials), &p256_csr()).await.unwrap();
    response.assert_problem(403, "device-not-allowed");
    assert_eq!(server.count("device_certificates", server.tenant).await, 1);
    server.stop().await;
}

#[tokio::test]
async fn a_certificate_of_our_ca_for_an_unknown_device_or_never_recorded_gets_403() {
    let server = TestServer::start().await;
    // Unknown device.
    let stranger = credentials_from(
        &server.ca,
        DeviceIdentity {
            tenant_id: server.tenant,
            device_id: DeviceId::new_random(),
        },
        Validity::from_now(Duration::from_secs(3600)).unwrap(),
    );
    let response = server.renew(Some(&stranger), &p256_csr()).await.unwrap();
    response.assert_problem(403, "device-not-allowed");
    // A real device, but a certificate the server never recorded for it.
    let (_, enrolled) = server.enroll_device().await;
    let unrecorded = credentials_from(
        &server.ca,
        DeviceIdentity {
            tenant_id: enrolled.tenant_id,
            device_id: enrolled.device_id,
        },
        Validity::from_now(Duration::from_secs(3600)).unwrap(),
    );
    let response = server.renew(Some(&unrecorded), &p256_csr()).await.unwrap();
    response.assert_problem(403, "device-not-allowed");
    assert_eq!(server.count("device_certificates", server.tenant).await, 1);
    server.stop().await;
}

#[tokio::test]
async fn a_certificate_from_another_ca_or_expired_is_refused() {
    let server = TestServer::start().await;
    let (_, enrolled) = server.enroll_device().await;
    let identity = DeviceIdentity {
        tenant_id: enrolled.tenant_id,
        device_id: enrolled.device_id,
    };
    let other_dir = tempfile::tempdir().unwrap();
    let other_ca = Pki::generate(&other_dir.path().join("pki"), &PkiParams::default())
        .unwrap()
        .into_issuing_ca();
    let forged = credentials_from(
        &other_ca,
        identity,
        Validity::from_now(Duration::from_secs(3600)).unwrap(),
    );
    let expired = credentials_from(
        &server.ca,
        identity,
        Validity::between(
            OffsetDateTime::now_utc() - time::Duration::hours(2),
            OffsetDateTime::now_utc() - time::Duration::hours(1),
        )
        .unwrap(),
    );
    for (what, credentials) in [("other CA", &forged), ("expired", &expired)] {
        // The TLS handshake refuses these (TLS 1.3: seen by the client on its first read);
        // a 401 would be acceptable too, a 201 never.
        match server.renew(Some(credentials), &p256_csr()).await {
            Err(_) => {}
            Ok(response) => {
                response.assert_problem(401, "device-certificate-required");
                panic!("{what}: expected a handshake refusal, got 401");
            }
        }
    }
    assert_eq!(server.count("device_certificates", server.tenant).await, 1);
    server.stop().await;
}

#[tokio::test]
async fn bad_csrs_get_400_as_for_enrollment() {
    let server = TestServer::start().await;
    let (credentials, _) = server.enroll_device().await;
    server
        .renew(Some(&credentials), "not a csr")
        .await
        .unwrap()
        .assert_problem(400, "invalid-csr");
    server
        .renew(
            Some(&credentials),
            &crate::common::csr_with(&PKCS_ECDSA_P384_SHA384),
        )
        .await
        .unwrap()
        .assert_problem(400, "unsupported-key");
    let missing = fleet_tests::https::https_request_as(
        server.addr,
        &server.ca,
        Some(credentials.client_cert()),
        "POST",
        "/v1/renew",
        &[("Content-Type", "application/json")],
        b"{}",
    )
    .await
    .unwrap();
    missing.assert_problem(400, "invalid-request");
    assert_eq!(server.count("device_certificates", server.tenant).await, 1);
    server.stop().await;
}

//! `POST /v1/enroll` over real HTTPS against a real Postgres: the happy path and every refusal.

use crate::common::{csr_with, p256_csr, rsa_csr, TestServer};
use base64::Engine;
use rcgen::PKCS_ECDSA_P384_SHA384;
use store::audit::{self, ChainVerdict};
use store::devices::{self, DeviceStatus};
use store::{device_certificates, enrollment_tokens, DeviceId, TenantId};

/// The first PEM block of `pem`, as DER.
fn first_cert_der(pem_text: &str) -> Vec<u8> {
    let start = pem_text.find("-----BEGIN CERTIFICATE-----").unwrap();
    let end = pem_text.find("-----END CERTIFICATE-----").unwrap() + 25;
    let b64: String = pem_text[start + 27..end - 25]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap()
}

#[tokio::test]
async fn a_device_enrolls_over_https_and_gets_a_certificate_for_its_new_identity() {
    let server = TestServer::start().await;
    let issued = server
        .token(|t| {
            t.device_group = "line-3".into();
            t.device_labels.insert("site".into(), "berlin".into());
        })
        .await;

    let response = server.enroll(issued.secret.expose()).await;
    let answer = server.certificate_answer(&response);
    assert_eq!(
        response.header("strict-transport-security"),
        Some("max-age=31536000")
    );

    // The certificate says what the server decided, not what the CSR asked for.
    let leaf =
        certs::DeviceCertificate::from_der(&first_cert_der(&answer.certificate_chain)).unwrap();
    assert_eq!(leaf.identity().tenant_id, server.tenant);
    assert_eq!(leaf.identity().device_id, answer.device_id);
    let expires = time::OffsetDateTime::parse(
        &answer.expires_at,
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert_eq!(expires, leaf.not_after());

    // The device, its certificate record, the token's count and the audit event are stored.
    let mut tx = server.db.app.begin(server.tenant).await.unwrap();
    let device = devices::get(&mut tx, answer.device_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(device.group, "line-3");
    assert_eq!(
        device.labels.get("site").map(String::as_str),
        Some("berlin")
    );
    assert_eq!(device.status, DeviceStatus::Active);
    let certs = device_certificates::list_for_device(&mut tx, answer.device_id)
        .await
        .unwrap();
    assert_eq!(certs.len(), 1);
    assert_eq!(certs[0].serial, leaf.serial().to_string());
    assert_eq!(certs[0].not_after, leaf.not_after());
    assert_eq!(certs[0].enrollment_token_id, Some(issued.token.id));
    let token = enrollment_tokens::get(&mut tx, issued.token.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((token.uses, token.used_today), (1, 1));
    let events = audit::list_after(&mut tx, 0, 100).await.unwrap();
    let enrolled = events.iter().find(|e| e.action == "device.enroll").unwrap();
    assert_eq!(enrolled.target, format!("device:{}", answer.device_id));
    assert_eq!(
        enrolled.actor,
        format!("enrollment_token:{}", issued.token.id)
    );
    assert!(enrolled.details.contains("127.0.0.1"));
    assert!(events.iter().any(|e| e.action == "enrollment_token.create"));
    assert!(matches!(
        audit::verify(&mut tx).await.unwrap(),
        ChainVerdict::Intact { .. }
    ));
    tx.rollback().await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn unknown_tokens_wrong_secrets_and_unknown_tenants_get_one_identical_401() {
    let server = TestServer::start().await;
    let issued = server.token(|_| {}).await;
    let good = issued.secret.expose().to_owned();
    let tenant_hex = server.tenant.0.simple().to_string();
    let token_hex = issued.token.id.0.simple().to_string();
    let secret = &good[70..];
    // Same length and alphabet, first character changed.
    let first = if secret.starts_with('A') { "B" } else { "A" };
    let other_secret = format!("{first}{}", &secret[1..]);
    let random = uuid::Uuid::new_v4().simple().to_string();
    let cases = [
        (
            "wrong secret",
            format!("fpe_{tenant_hex}_{token_hex}_{other_secret}"),
        ),
        (
            "unknown token",
            format!("fpe_{tenant_hex}_{random}_{secret}"),
        ),
        (
            "unknown tenant",
            format!("fpe_{random}_{token_hex}_{secret}"),
        ),
        ("malformed", "fpe_nonsense".to_owned()),
        ("empty", String::new()),
    ];
    let mut bodies = Vec::new();
    for (case, token) in &cases {
        let response = server.enroll(token).await;
        let problem = response.assert_problem(401, "invalid-token");
        println!("{case}: {problem}");
        bodies.push(response.body);
    }
    assert!(
        bodies.windows(2).all(|w| w[0] == w[1]),
        "401 answers differ"
    );
    assert_eq!(server.count("devices", server.tenant).await, 0);
    // The real token still works: the failures did not count against it.
    assert_eq!(server.enroll(&good).await.status, 201);
    server.stop().await;
}

#[tokio::test]
async fn a_token_of_tenant_a_cannot_enroll_into_tenant_b() {
    let server = TestServer::start().await;
    let tenant_b = server.other_tenant().await;
    let issued = server.token(|_| {}).await;
    // B's tenant id with A's token id and A's secret.
    let forged = format!(
        "fpe_{}{}",
        tenant_b.0.simple(),
        &issued.secret.expose()[36..]
    );
    assert_eq!(forged.len(), issued.secret.expose().len());
    server
        .enroll(&forged)
        .await
        .assert_problem(401, "invalid-token");
    assert_eq!(server.count("devices", tenant_b).await, 0);
    assert_eq!(server.count("devices", server.tenant).await, 0);
    server.stop().await;
}

#[tokio::test]
async fn a_source_outside_the_allowed_cidrs_gets_403_and_nothing_is_stored() {
    let server = TestServer::start().await;
    let issued = server
        .token(|t| t.allowed_cidrs = vec!["10.0.0.0/8".parse().unwrap()])
        .await;
    let problem = server
        .enroll(issued.secret.expose())
        .await
        .assert_problem(403, "source-not-allowed");
    assert!(!problem["detail"].as_str().unwrap().contains("10.0.0.0"));
    assert_eq!(server.count("devices", server.tenant).await, 0);
    let mut tx = server.db.app.begin(server.tenant).await.unwrap();
    let token = enrollment_tokens::get(&mut tx, issued.token.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(token.uses, 0);
    tx.rollback().await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn over_the_daily_limit_the_answer_is_429_until_the_next_utc_day() {
    let server = TestServer::start().await;
    let issued = server.token(|t| t.daily_limit = 1).await;
    assert_eq!(server.enroll(issued.secret.expose()).await.status, 201);
    let response = server.enroll(issued.secret.expose()).await;
    response.assert_problem(429, "daily-limit-reached");
    let retry_after: i64 = response.header("retry-after").unwrap().parse().unwrap();
    let midnight = enrollment_tokens::next_utc_midnight(time::OffsetDateTime::now_utc());
    let expected = (midnight - time::OffsetDateTime::now_utc()).whole_seconds();
    assert!(
        (expected - 5..=expected + 5).contains(&retry_after) && retry_after >= 1,
        "Retry-After {retry_after}, expected about {expected}"
    );

    // Yesterday's count does not hold today back.
    let mut owner = server.test_db.connect_as_owner().await;
    sqlx::query("UPDATE enrollment_tokens SET used_day = used_day - 1 WHERE token_id = $1")
        .bind(issued.token.id)
        .execute(&mut owner)
        .await
        .unwrap();
    assert_eq!(server.enroll(issued.secret.expose()).await.status, 201);
    server.stop().await;
}

#[tokio::test]
async fn expired_revoked_and_used_up_tokens_get_410() {
    let server = TestServer::start().await;

    let expired = server.token(|_| {}).await;
    let mut owner = server.test_db.connect_as_owner().await;
    sqlx::query(
        "UPDATE enrollment_tokens SET expires_at = now() - interval '1 second' WHERE token_id = $1",
    )
    .bind(expired.token.id)
    .execute(&mut owner)
    .await
    .unwrap();
    server
        .enroll(expired.secret.expose())
        .await
        .assert_problem(410, "token-expired");

    let revoked = server.token(|_| {}).await;
    let mut tx = server.db.app.begin(server.tenant).await.unwrap();
    enrollment_tokens::revoke(&mut tx, revoked.token.id, &store::audit::Actor::System)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    server
        .enroll(revoked.secret.expose())
        .await
        .assert_problem(410, "token-revoked");

    let once = server.token(|t| t.max_uses = Some(1)).await;
    assert_eq!(server.enroll(once.secret.expose()).await.status, 201);
    server
        .enroll(once.secret.expose())
        .await
        .assert_problem(410, "token-used-up");

    assert_eq!(server.count("devices", server.tenant).await, 1);
    server.stop().await;
}

#[tokio::test]
async fn twenty_concurrent_enrollments_against_a_daily_limit_of_five_make_exactly_five_devices() {
    let server = TestServer::start().await;
    let issued = server.token(|t| t.daily_limit = 5).await;
    let csrs: Vec<String> = (0..20).map(|_| p256_csr()).collect();
    let attempts = csrs.iter().map(|csr| {
        let token = issued.secret.expose();
        let server = &server;
        async move { server.enroll_with(token, csr, &[]).await }
    });
    let responses = futures_join_all(attempts).await;
    let created = responses.iter().filter(|r| r.status == 201).count();
    let limited = responses
        .iter()
        .filter(|r| r.status == 429 && r.header("retry-after").is_some())
        .count();
    assert_eq!((created, limited), (5, 15), "{:?}", statuses(&responses));
    assert_eq!(server.count("devices", server.tenant).await, 5);
    assert_eq!(server.count("device_certificates", server.tenant).await, 5);
    let mut tx = server.db.app.begin(server.tenant).await.unwrap();
    let token = enrollment_tokens::get(&mut tx, issued.token.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((token.uses, token.used_today), (5, 5));
    tx.rollback().await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn the_total_use_limit_holds_under_concurrency() {
    let server = TestServer::start().await;
    let issued = server
        .token(|t| {
            t.daily_limit = 100;
            t.max_uses = Some(3);
        })
        .await;
    let attempts = (0..8).map(|_| server.enroll(issued.secret.expose()));
    let responses = futures_join_all(attempts).await;
    let created = responses.iter().filter(|r| r.status == 201).count();
    let used_up = responses.iter().filter(|r| r.status == 410).count();
    assert_eq!((created, used_up), (3, 5), "{:?}", statuses(&responses));
    assert_eq!(server.count("devices", server.tenant).await, 3);
    server.stop().await;
}

#[tokio::test]
async fn malformed_csrs_and_other_key_types_get_400_naming_what_was_found() {
    let server = TestServer::start().await;
    let issued = server.token(|t| t.daily_limit = 100).await;
    let token = issued.secret.expose();

    let problem = server
        .enroll_with(token, "not a csr", &[])
        .await
        .assert_problem(400, "invalid-csr");
    assert!(problem["detail"].as_str().unwrap().contains("PEM"));

    let problem = server
        .enroll_with(token, &csr_with(&PKCS_ECDSA_P384_SHA384), &[])
        .await
        .assert_problem(400, "unsupported-key");
    assert!(
        problem["detail"].as_str().unwrap().contains("ECDSA P-384"),
        "{problem}"
    );

    match rsa_csr() {
        Some(rsa) => {
            let problem = server
                .enroll_with(token, &rsa, &[])
                .await
                .assert_problem(400, "unsupported-key");
            assert!(
                problem["detail"].as_str().unwrap().contains("RSA"),
                "{problem}"
            );
        }
        None => eprintln!("openssl not installed: RSA case skipped"),
    }
    assert_eq!(server.count("devices", server.tenant).await, 0);
    server.stop().await;
}

#[tokio::test]
async fn malformed_json_oversize_bodies_and_wrong_content_types_are_refused() {
    let server = TestServer::start().await;
    let json = [("Content-Type", "application/json")];
    server
        .request("POST", "/v1/enroll", &json, b"{not json")
        .await
        .assert_problem(400, "invalid-request");
    let problem = server
        .request("POST", "/v1/enroll", &json, br#"{"token": "fpe_x"}"#)
        .await
        .assert_problem(400, "invalid-request");
    assert!(problem["detail"].as_str().unwrap().contains("csr"));
    let huge = format!(
        r#"{{"token": "x", "csr": "{}"}}"#,
        "A".repeat(api::MAX_BODY_LEN + 1)
    );
    server
        .request("POST", "/v1/enroll", &json, huge.as_bytes())
        .await
        .assert_problem(413, "body-too-large");
    server
        .request(
            "POST",
            "/v1/enroll",
            &[("Content-Type", "text/plain")],
            b"{}",
        )
        .await
        .assert_problem(415, "unsupported-media-type");
    server
        .request("GET", "/v1/enroll", &[], b"")
        .await
        .assert_problem(405, "method-not-allowed");
    server.stop().await;
}

#[tokio::test]
async fn x_forwarded_for_is_believed_only_from_a_trusted_proxy() {
    let forwarded = [("X-Forwarded-For", "198.51.100.7")];
    let only_forwarded_source = |t: &mut store::enrollment_tokens::NewEnrollmentToken| {
        t.allowed_cidrs = vec!["198.51.100.0/24".parse().unwrap()];
    };

    // Loopback is a trusted proxy: the forwarded address is the client.
    let server = TestServer::start_with(vec!["127.0.0.1/32".parse().unwrap()]).await;
    let issued = server.token(only_forwarded_source).await;
    let response = server
        .enroll_with(issued.secret.expose(), &p256_csr(), &forwarded)
        .await;
    response.assert_status(201);
    let device: DeviceId = serde_json::from_value(response.json()["device_id"].clone()).unwrap();
    let mut tx = server.db.app.begin(server.tenant).await.unwrap();
    let events = audit::list_after(&mut tx, 0, 100).await.unwrap();
    let enrolled = events
        .iter()
        .find(|e| e.target == format!("device:{device}"))
        .unwrap();
    assert!(enrolled.details.contains("198.51.100.7"), "{enrolled:?}");
    tx.rollback().await.unwrap();
    // From a trusted proxy, garbage is refused rather than guessed around.
    server
        .enroll_with(
            issued.secret.expose(),
            &p256_csr(),
            &[("X-Forwarded-For", "unknown")],
        )
        .await
        .assert_problem(400, "invalid-request");
    server.stop().await;

    // No trusted proxies: the header is ignored and the peer (127.0.0.1) is refused.
    let server = TestServer::start().await;
    let issued = server.token(only_forwarded_source).await;
    server
        .enroll_with(issued.secret.expose(), &p256_csr(), &forwarded)
        .await
        .assert_problem(403, "source-not-allowed");
    server.stop().await;
}

#[tokio::test]
async fn every_answer_carries_hsts_and_health_routes_answer() {
    let server = TestServer::start().await;
    for (method, path, status) in [
        ("GET", "/healthz", 200),
        ("GET", "/readyz", 200),
        ("GET", "/no-such-route", 404),
        ("POST", "/v1/enroll", 415),
    ] {
        let response = server.request(method, path, &[], b"").await;
        assert_eq!(response.status, status, "{method} {path}");
        assert_eq!(
            response.header("strict-transport-security"),
            Some(api::HSTS),
            "{method} {path}"
        );
    }
    let ready = server.request("GET", "/readyz", &[], b"").await;
    assert_eq!(ready.json()["status"], "ready");
    server.stop().await;
}

#[tokio::test]
async fn a_revoked_device_is_no_longer_active() {
    let server = TestServer::start().await;
    let issued = server.token(|_| {}).await;
    let response = server.enroll(issued.secret.expose()).await;
    let device: DeviceId = serde_json::from_value(response.json()["device_id"].clone()).unwrap();
    let tenant: TenantId = serde_json::from_value(response.json()["tenant_id"].clone()).unwrap();
    let mut tx = server.db.app.begin(tenant).await.unwrap();
    assert!(devices::is_active(&mut tx, device).await.unwrap());
    devices::revoke(
        &mut tx,
        device,
        &store::device_groups::GroupScope::All,
        &store::audit::Actor::System,
    )
    .await
    .unwrap();
    assert!(!devices::is_active(&mut tx, device).await.unwrap());
    tx.commit().await.unwrap();
    server.stop().await;
}

fn statuses(responses: &[crate::common::Response]) -> Vec<u16> {
    responses.iter().map(|r| r.status).collect()
}

/// Runs futures concurrently on this task (no extra dependency for join_all).
async fn futures_join_all<F: std::future::Future>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output> {
    let mut set = Vec::new();
    for f in futures {
        set.push(Box::pin(f));
    }
    let mut outputs: Vec<Option<F::Output>> = (0..set.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in set.iter_mut().enumerate() {
            if outputs[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(out) => outputs[i] = Some(out),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().map(Option::unwrap).collect()
}

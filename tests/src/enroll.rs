//! A device's certificate lifecycle against a real API over HTTPS: enrollment with a fresh token,
//! and renewal presenting the current certificate (mutual TLS).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use certs::IssuingCa;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use store::enrollment_tokens::{self, NewEnrollmentToken};
use store::{AppDb, TenantId};

use crate::https::{https_request, https_request_as, Response};
use crate::mqtt::DeviceCredentials;

/// Enrolls a new device of `tenant` through `POST /v1/enroll` at `api`, with a one-use token
/// from loopback into the group "default", and returns its credentials.
pub async fn enroll(
    api: SocketAddr,
    ca: &IssuingCa,
    app: &AppDb,
    tenant: TenantId,
) -> DeviceCredentials {
    let token = loopback_token(app, tenant, "default", 10, Some(1)).await;
    let (key, csr) = crate::device::key_and_csr();
    let body = enroll_body(&token, &csr);
    let headers = [("content-type", "application/json")];
    let response = https_request(api, ca, "POST", "/v1/enroll", &headers, &body).await;
    response.assert_status(201);
    credentials(key, &response)
}

/// Renews `device` through `POST /v1/renew` at `api`, presenting its certificate: the answer,
/// and the new credentials when it was 201.
pub async fn renew(
    api: SocketAddr,
    ca: &IssuingCa,
    device: &DeviceCredentials,
) -> (Response, Option<DeviceCredentials>) {
    let (key, csr) = crate::device::key_and_csr();
    let body = serde_json::json!({ "csr": csr }).to_string();
    let client_key = PrivateKeyDer::Pkcs8(device.key.serialize_der().into());
    let response = https_request_as(
        api,
        ca,
        Some((device.chain.clone(), client_key)),
        "POST",
        "/v1/renew",
        &[("content-type", "application/json")],
        body.as_bytes(),
    )
    .await
    .expect("the API answers");
    let renewed = (response.status == 201).then(|| credentials(key, &response));
    (response, renewed)
}

fn credentials(key: rcgen::KeyPair, response: &Response) -> DeviceCredentials {
    let answer = response.json();
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(answer["certificate_chain"].as_str().unwrap().as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
    DeviceCredentials {
        device_id: answer["device_id"].as_str().unwrap().parse().unwrap(),
        key,
        chain,
    }
}

/// A token of `tenant` for any number of devices from loopback (127.0.0.0/8) into the group
/// "bench", `daily_limit` a day: the benchmarks' shared token. Returns its secret.
pub async fn shared_token(app: &AppDb, tenant: TenantId, daily_limit: u32) -> String {
    loopback_token(app, tenant, "bench", daily_limit, None).await
}

/// A token of `tenant` from loopback (127.0.0.0/8) into `group` (created if missing),
/// `daily_limit` a day, `max_uses` in all, valid for a day, created by the system; its secret.
async fn loopback_token(
    app: &AppDb,
    tenant: TenantId,
    group: &str,
    daily_limit: u32,
    max_uses: Option<u64>,
) -> String {
    let mut tx = app.begin(tenant).await.unwrap();
    crate::ensure_group(&mut tx, group).await;
    let issued = enrollment_tokens::create(
        &mut tx,
        &NewEnrollmentToken {
            name: format!("{group} token"),
            allowed_cidrs: vec!["127.0.0.0/8".parse().unwrap()],
            daily_limit,
            max_uses,
            expires_at: time::OffsetDateTime::now_utc() + time::Duration::days(1),
            device_group: group.into(),
            device_labels: BTreeMap::new(),
        },
        &store::audit::Actor::System,
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    issued.secret.expose().to_owned()
}

/// The JSON body of `POST /v1/enroll`: `token` and a CSR.
pub fn enroll_body(token: &str, csr: &str) -> Vec<u8> {
    serde_json::json!({ "token": token, "csr": csr })
        .to_string()
        .into_bytes()
}

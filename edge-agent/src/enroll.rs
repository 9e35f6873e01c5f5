//! Enrollment (`POST /v1/enroll`, token + CSR) and certificate renewal (`POST /v1/renew`,
//! CSR over mutual TLS with the current certificate). The device key is generated here and
//! never leaves the device: only the CSR is sent. The paths and the JSON bodies are the
//! contract in [`wire::enrollment`], which the API parses with the same types.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use wire::enrollment::{self, CertificateResponse, RenewRequest, ENROLL_PATH, RENEW_PATH};
use wire::DeviceId;
use zeroize::Zeroize;

use crate::certinfo::{self, Validity};
use crate::https::{self, Problem, Response};
use crate::identity::{self, DeviceRecord, Identity, NewCredentials, SecretPem, StateDir};
use crate::tls;
use crate::url::{Scheme, Url};

/// Timeout of the enrollment request.
const ENROLL_TIMEOUT: Duration = Duration::from_secs(60);

/// Which call a refusal answers (the wording of the messages differs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// `POST /v1/enroll`.
    Enroll,
    /// `POST /v1/renew`.
    Renew,
}

/// Why enrollment or renewal did not happen.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// The state directory already holds an identity.
    #[error("already enrolled as device {0}; to enroll again, stop the agent and empty the state directory")]
    AlreadyEnrolled(DeviceId),
    /// The server answered with a refusal (one line, for the user).
    #[error("{message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// One-line explanation.
        message: String,
    },
    /// Anything else: bad input, unreachable server, bad answer, disk error.
    #[error("{0}")]
    Failed(String),
}

/// A fresh P-256 key and a CSR for it. The CSR's subject is a placeholder: the server
/// decides the certificate's subject from the token (enroll) or the presented certificate
/// (renew) and uses only the CSR's public key.
pub fn new_key_and_csr() -> Result<(SecretPem, String), EnrollError> {
    let failed =
        |err: rcgen::Error| EnrollError::Failed(format!("generating the device key: {err}"));
    let mut key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(failed)?;
    let mut params = rcgen::CertificateParams::new(Vec::new()).map_err(failed)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "fleet-agent");
    let csr = params.serialize_request(&key).map_err(failed)?;
    let csr_pem = csr.pem().map_err(failed)?;
    let pem = SecretPem::new(key.serialize_pem());
    // rcgen's copy of the key (its PKCS#8 DER) is not wiped on drop: wipe it now.
    key.zeroize();
    Ok((pem, csr_pem))
}

/// The one-line message for a refusal, by status (RFC 7807 `detail` appended when given).
pub fn refusal_message(call: Call, response: &Response) -> String {
    let status = response.status;
    let problem = Problem::from_body(&response.body);
    let retry = response.retry_after.map(describe_wait);
    let what = match call {
        Call::Enroll => "enrollment refused",
        Call::Renew => "certificate renewal refused",
    };
    let reason = match (call, status) {
        (Call::Enroll, 401) => "the enrollment token is not valid".to_owned(),
        (Call::Renew, 401) => {
            "the server did not accept the device certificate (expired or unknown)".to_owned()
        }
        (Call::Enroll, 403) => {
            "this device's network address is not allowed to use the token".to_owned()
        }
        (Call::Renew, 403) => "this device has been revoked".to_owned(),
        (Call::Enroll, 410) => "the token has expired, was revoked or is used up".to_owned(),
        (_, 429) => format!(
            "the daily limit is reached; retry {}",
            retry.clone().unwrap_or_else(|| "tomorrow".to_owned())
        ),
        (_, 400) => "the server rejected the certificate request".to_owned(),
        (_, 413) => "the request is too large for the server".to_owned(),
        (_, 503) => format!(
            "the server is busy; retry {}",
            retry.clone().unwrap_or_else(|| "later".to_owned())
        ),
        (_, 404) => "the server has no such endpoint (is the --server URL right?)".to_owned(),
        (_, status) if status >= 500 => "the server failed".to_owned(),
        _ => "unexpected answer".to_owned(),
    };
    match problem.summary() {
        Some(detail) => format!("{what}: {reason} (HTTP {status}: {detail})"),
        None => format!("{what}: {reason} (HTTP {status})"),
    }
}

/// "in 1h 5m", "in 30s".
fn describe_wait(secs: u64) -> String {
    match (secs / 3600, secs % 3600 / 60, secs % 60) {
        (0, 0, s) => format!("in {s}s"),
        (0, m, _) => format!("in {m}m"),
        (h, m, _) => format!("in {h}h {m}m"),
    }
}

/// Checks a 201 answer and turns it into credentials.
fn parse_success(
    call: Call,
    response: &Response,
) -> Result<(CertificateResponse, Validity), EnrollError> {
    if !(200..300).contains(&response.status) {
        return Err(EnrollError::Refused {
            status: response.status,
            message: refusal_message(call, response),
        });
    }
    let answer: CertificateResponse = serde_json::from_slice(&response.body).map_err(|err| {
        EnrollError::Failed(format!("the server's answer is not understood: {err}"))
    })?;
    let chain = identity::parse_certs(&answer.certificate_chain, "certificate_chain")
        .map_err(|err| EnrollError::Failed(err.to_string()))?;
    identity::parse_certs(&answer.ca_certificate, "ca_certificate")
        .map_err(|err| EnrollError::Failed(err.to_string()))?;
    Url::parse(&answer.broker_url, Scheme::Mqtts).map_err(EnrollError::Failed)?;
    let validity = certinfo::validity(&chain[0])
        .map_err(|err| EnrollError::Failed(format!("certificate_chain: {err}")))?;
    Ok((answer, validity))
}

/// What `fleet-agent enroll` needs. Its `Debug` never prints the token.
pub struct Enrollment<'a> {
    /// The API server, `https://host:port`.
    pub server: &'a str,
    /// The enrollment token (never logged).
    pub token: &'a str,
    /// The fleet root CA file to trust for this call.
    pub ca_file: &'a Path,
}

impl fmt::Debug for Enrollment<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Enrollment")
            .field("server", &self.server)
            .field("token", &"<redacted>")
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

/// Enrolls: key, CSR, `POST /v1/enroll`, store the identity.
pub async fn enroll(dir: &StateDir, request: &Enrollment<'_>) -> Result<DeviceRecord, EnrollError> {
    if let Ok(record) = identity::load_record(dir) {
        return Err(EnrollError::AlreadyEnrolled(record.device_id));
    }
    let url = Url::parse(request.server, Scheme::Https).map_err(EnrollError::Failed)?;
    let token = request.token.trim();
    if token.is_empty() {
        return Err(EnrollError::Failed(
            "the enrollment token is empty".to_owned(),
        ));
    }
    let ca_pem = std::fs::read_to_string(request.ca_file).map_err(|err| {
        EnrollError::Failed(format!("reading --ca {}: {err}", request.ca_file.display()))
    })?;
    let anchor = identity::parse_certs(&ca_pem, "--ca")
        .map_err(|err| EnrollError::Failed(err.to_string()))?
        .remove(0);
    let tls = tls::anonymous_client(&anchor).map_err(|err| EnrollError::Failed(err.to_string()))?;
    let (key, csr) = new_key_and_csr()?;
    let body = enrollment::EnrollRequest {
        token: token.to_owned(),
        csr,
    };
    let body = serde_json::to_vec(&body).expect("serializes");
    let response = https::post_json(&url, ENROLL_PATH, &body, tls, ENROLL_TIMEOUT)
        .await
        .map_err(|err| EnrollError::Failed(format!("enrollment failed: {err}")))?;
    let (answer, _) = parse_success(Call::Enroll, &response)?;
    check_root_is_the_anchor(&answer, &anchor)?;
    let record = DeviceRecord {
        device_id: answer.device_id,
        tenant_id: answer.tenant_id,
        server_url: request.server.trim_end_matches('/').to_owned(),
        broker_url: answer.broker_url.clone(),
        generation: 1,
        enrolled_at: certinfo::now_secs(),
        renewed_at: None,
    };
    store(dir, &record, &key, &answer, Some(&answer.ca_certificate))?;
    Ok(record)
}

/// The root the server returns is pinned from now on: it must be the `--ca` this enrollment
/// trusted, not one the server chose.
fn check_root_is_the_anchor(
    answer: &CertificateResponse,
    anchor: &CertificateDer<'_>,
) -> Result<(), EnrollError> {
    let returned = identity::parse_certs(&answer.ca_certificate, "ca_certificate")
        .map_err(|err| EnrollError::Failed(err.to_string()))?;
    if returned.len() == 1 && returned[0].as_ref() == anchor.as_ref() {
        Ok(())
    } else {
        Err(EnrollError::Failed(
            "the server's ca_certificate is not the --ca root this enrollment trusted; refusing to pin it".to_owned(),
        ))
    }
}

/// Renews the certificate: new key and CSR, `POST /v1/renew` presenting the current
/// certificate, install the new pair under the next generation. Returns the new identity.
pub async fn renew(
    dir: &StateDir,
    current: &Identity,
    timeout: Duration,
) -> Result<Identity, EnrollError> {
    let url = Url::parse(&current.record.server_url, Scheme::Https).map_err(EnrollError::Failed)?;
    let tls = tls::device_client(current).map_err(|err| EnrollError::Failed(err.to_string()))?;
    let (key, csr) = new_key_and_csr()?;
    let body = serde_json::to_vec(&RenewRequest { csr }).expect("serializes");
    let response = https::post_json(&url, RENEW_PATH, &body, tls, timeout)
        .await
        .map_err(|err| EnrollError::Failed(format!("certificate renewal failed: {err}")))?;
    let (answer, _) = parse_success(Call::Renew, &response)?;
    let record = renewed_record(&current.record, &answer)?;
    store(dir, &record, &key, &answer, None)?;
    identity::load(dir).map_err(|err| EnrollError::Failed(err.to_string()))
}

/// The device record after a renewal; the answer must name the same device and tenant.
fn renewed_record(
    current: &DeviceRecord,
    answer: &CertificateResponse,
) -> Result<DeviceRecord, EnrollError> {
    if answer.device_id != current.device_id || answer.tenant_id != current.tenant_id {
        return Err(EnrollError::Failed(format!(
            "the renewal answer is for device {} of tenant {}, not this device; keeping the current certificate",
            answer.device_id, answer.tenant_id
        )));
    }
    Ok(DeviceRecord {
        broker_url: answer.broker_url.clone(),
        generation: current.generation + 1,
        renewed_at: Some(certinfo::now_secs()),
        ..current.clone()
    })
}

/// Installs the credentials and checks the key fits the certificate before committing.
fn store(
    dir: &StateDir,
    record: &DeviceRecord,
    key: &SecretPem,
    answer: &CertificateResponse,
    root_pem: Option<&str>,
) -> Result<(), EnrollError> {
    let candidate = Identity {
        record: record.clone(),
        key: key.clone(),
        chain: identity::parse_certs(&answer.certificate_chain, "certificate_chain")
            .map_err(|err| EnrollError::Failed(err.to_string()))?,
        root: identity::parse_certs(root_pem.unwrap_or(&answer.ca_certificate), "ca_certificate")
            .map_err(|err| EnrollError::Failed(err.to_string()))?
            .remove(0),
        validity: certinfo::validity(
            &identity::parse_certs(&answer.certificate_chain, "certificate_chain")
                .map_err(|err| EnrollError::Failed(err.to_string()))?[0],
        )
        .map_err(|err| EnrollError::Failed(err.to_string()))?,
    };
    tls::device_client(&candidate).map_err(|err| {
        EnrollError::Failed(format!(
            "the server's certificate does not fit the device key: {err}"
        ))
    })?;
    identity::install(
        dir,
        &NewCredentials {
            record,
            key,
            chain_pem: &answer.certificate_chain,
            root_pem,
        },
    )
    .map_err(|err| EnrollError::Failed(format!("storing the identity: {err}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u16, retry_after: Option<u64>, body: &str) -> Response {
        Response {
            status,
            retry_after,
            body: body.as_bytes().to_vec(),
        }
    }

    fn problem(status: u16, detail: &str) -> String {
        format!(
            r#"{{"type":"urn:fleetplane:problem:x","title":"t","status":{status},"detail":"{detail}"}}"#
        )
    }

    #[test]
    fn the_enrollment_request_never_prints_its_token() {
        let request = Enrollment {
            server: "https://fleet.example",
            token: "fpe_secret-token-text",
            ca_file: Path::new("/etc/fleet-agent/ca.pem"),
        };
        let printed = format!("{request:?}");
        assert!(!printed.contains("secret-token-text"), "{printed}");
        assert!(printed.contains("<redacted>") && printed.contains("fleet.example"));
    }

    #[test]
    fn each_enrollment_refusal_has_its_own_one_line_message() {
        let cases = [
            (401, None, "the enrollment token is not valid"),
            (403, None, "network address is not allowed"),
            (429, Some(3_900), "daily limit is reached; retry in 1h 5m"),
            (410, None, "expired, was revoked or is used up"),
            (400, None, "rejected the certificate request"),
            (413, None, "too large"),
            (503, Some(1), "busy; retry in 1s"),
            (404, None, "no such endpoint"),
            (500, None, "the server failed"),
            (302, None, "unexpected answer"),
        ];
        for (status, retry, expected) in cases {
            let message = refusal_message(
                Call::Enroll,
                &response(status, retry, &problem(status, "why")),
            );
            assert!(message.starts_with("enrollment refused: "), "{message}");
            assert!(message.contains(expected), "{status}: {message}");
            assert!(
                message.contains(&format!("HTTP {status}: why")),
                "{message}"
            );
            assert!(!message.contains('\n'));
        }
    }

    #[test]
    fn refusal_without_problem_body_still_reads_well() {
        let message = refusal_message(Call::Enroll, &response(429, None, "<html>"));
        assert_eq!(
            message,
            "enrollment refused: the daily limit is reached; retry tomorrow (HTTP 429)"
        );
    }

    #[test]
    fn renewal_refusals_name_revocation_and_expiry() {
        let revoked = refusal_message(Call::Renew, &response(403, None, ""));
        assert!(revoked.contains("revoked"), "{revoked}");
        let expired = refusal_message(Call::Renew, &response(401, None, ""));
        assert!(expired.contains("expired or unknown"), "{expired}");
    }

    #[test]
    fn refusal_becomes_refused_error_with_status() {
        let err = parse_success(Call::Enroll, &response(410, None, &problem(410, "used up")))
            .unwrap_err();
        assert!(
            matches!(err, EnrollError::Refused { status: 410, .. }),
            "{err}"
        );
    }

    #[test]
    fn malformed_success_answers_are_failures() {
        for body in ["not json", r#"{"device_id":"x"}"#] {
            let err = parse_success(Call::Enroll, &response(201, None, body)).unwrap_err();
            assert!(matches!(err, EnrollError::Failed(_)), "{err}");
        }
        let (root, chain, _) = crate::identity::tests::fake_credentials();
        let answer = |broker: &str, chain: &str| {
            serde_json::json!({
                "device_id": "6f1c2e0a-4b7d-4c1e-9a53-2f8e1d0c7b94",
                "tenant_id": "11111111-2222-4333-8444-555555555555",
                "certificate_chain": chain, "ca_certificate": root,
                "broker_url": broker, "expires_at": "2026-12-01T00:00:00Z"
            })
            .to_string()
        };
        assert!(parse_success(
            Call::Enroll,
            &response(201, None, &answer("mqtts://b:8883", &chain))
        )
        .is_ok());
        assert!(parse_success(
            Call::Enroll,
            &response(201, None, &answer("tcp://b:1883", &chain))
        )
        .is_err());
        assert!(parse_success(
            Call::Enroll,
            &response(201, None, &answer("mqtts://b:8883", "junk"))
        )
        .is_err());
        // `expires_at` is part of the shared answer (wire::enrollment): required.
        let mut without_expiry: serde_json::Value =
            serde_json::from_str(&answer("mqtts://b:8883", &chain)).unwrap();
        without_expiry.as_object_mut().unwrap().remove("expires_at");
        let err = parse_success(
            Call::Enroll,
            &response(201, None, &without_expiry.to_string()),
        )
        .unwrap_err();
        assert!(err.to_string().contains("expires_at"), "{err}");
    }

    #[test]
    fn csr_is_pem_and_key_is_p256_pkcs8() {
        let (key, csr) = new_key_and_csr().unwrap();
        assert!(csr.starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
        assert!(key.expose().starts_with("-----BEGIN PRIVATE KEY-----"));
        assert!(!csr.contains("PRIVATE"));
        assert!(key.to_der().is_ok());
    }

    #[test]
    fn token_is_not_in_debug_output() {
        let body = enrollment::EnrollRequest {
            token: "fpe_secret".into(),
            csr: "x".into(),
        };
        assert!(!format!("{body:?}").contains("fpe_secret"));
    }

    #[test]
    fn request_bodies_are_the_shared_contract() {
        let body = enrollment::EnrollRequest {
            token: "fpe_t".into(),
            csr: "CSR".into(),
        };
        assert_eq!(
            serde_json::to_value(&body).unwrap(),
            serde_json::json!({"token": "fpe_t", "csr": "CSR"})
        );
        let body = RenewRequest { csr: "CSR".into() };
        assert_eq!(
            serde_json::to_value(&body).unwrap(),
            serde_json::json!({"csr": "CSR"})
        );
        assert_eq!((ENROLL_PATH, RENEW_PATH), ("/v1/enroll", "/v1/renew"));
    }

    #[test]
    fn renewal_answer_for_another_device_is_refused() {
        let current = crate::identity::tests::record(3);
        let mut answer = CertificateResponse {
            device_id: current.device_id,
            tenant_id: current.tenant_id,
            certificate_chain: String::new(),
            ca_certificate: String::new(),
            broker_url: "mqtts://new:8883".into(),
            expires_at: "2030-01-01T00:00:00Z".into(),
        };
        let renewed = renewed_record(&current, &answer).unwrap();
        assert_eq!(renewed.generation, 4);
        assert_eq!(renewed.broker_url, "mqtts://new:8883");
        assert!(renewed.renewed_at.is_some());
        answer.device_id = DeviceId(wire::Uuid::nil());
        assert!(renewed_record(&current, &answer).is_err());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn enrolling_twice_is_refused_before_any_network_call() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(tmp.path());
        crate::identity::tests::install_fake(&dir);
        let err = enroll(
            &dir,
            &Enrollment {
                server: "https://127.0.0.1:1",
                token: "t",
                ca_file: Path::new("/nonexistent"),
            },
        )
        .await
        .unwrap_err();
        assert!(matches!(err, EnrollError::AlreadyEnrolled(_)), "{err}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn bad_inputs_fail_with_a_clear_message() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(tmp.path().join("state"));
        let ca = tmp.path().join("ca.pem");
        std::fs::write(&ca, "not a cert").unwrap();
        let cases = [
            ("http://x", "t", ca.as_path(), "https://"),
            ("https://x", " ", ca.as_path(), "token is empty"),
            (
                "https://x",
                "t",
                Path::new("/nonexistent/ca.pem"),
                "reading --ca",
            ),
            ("https://x", "t", ca.as_path(), "--ca"),
        ];
        for (server, token, ca_file, expected) in cases {
            let err = enroll(
                &dir,
                &Enrollment {
                    server,
                    token,
                    ca_file,
                },
            )
            .await
            .unwrap_err()
            .to_string();
            assert!(err.contains(expected), "{err}");
        }
    }
}

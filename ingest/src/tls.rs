//! The rustls client configuration for the external broker: ring as the only crypto provider
//! (aws-lc-rs never enters the build), the fleet root CA as the only trust anchor, and ingest's
//! service client certificate.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

use crate::IngestError;

/// Builds the client configuration from PEM text.
pub(crate) fn client_config(
    ca_pem: &str,
    chain_pem: &str,
    key_pem: &str,
) -> Result<ClientConfig, IngestError> {
    let tls = |what: &str, e: &dyn std::fmt::Display| IngestError::Tls(format!("{what}: {e}"));
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let cert = cert.map_err(|e| tls("CA certificate", &e))?;
        roots.add(cert).map_err(|e| tls("CA certificate", &e))?;
    }
    if roots.is_empty() {
        return Err(IngestError::Tls("no CA certificate in ca_pem".into()));
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| tls("client certificate chain", &e))?;
    if chain.is_empty() {
        return Err(IngestError::Tls(
            "no certificate in the client chain".into(),
        ));
    }
    let key =
        PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| tls("client key", &e))?;
    certs::tls::client_builder(roots)
        .map_err(|e| tls("protocol versions", &e))?
        .with_client_auth_cert(chain, key)
        .map_err(|e| tls("client certificate", &e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_or_garbled_material_is_refused_with_a_reason() {
        let err = client_config("", "", "").unwrap_err().to_string();
        assert!(err.contains("no CA certificate"), "{err}");
        let garbage = "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n";
        let err = client_config(garbage, "", "").unwrap_err().to_string();
        assert!(err.contains("CA certificate"), "{err}");
    }
}

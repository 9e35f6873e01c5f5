//! PEM encoding and decoding of certificates.

use rustls_pki_types::CertificateDer;

const CERTIFICATE_LABEL: &str = "CERTIFICATE";

/// Encodes one certificate as PEM, with Unix line endings.
pub(crate) fn certificate_pem(der: &CertificateDer<'_>) -> String {
    pem::encode_config(&pem::Pem::new(CERTIFICATE_LABEL, der.as_ref()), config())
}

/// Encodes certificates as concatenated PEM blocks, in order.
pub(crate) fn certificates_pem(ders: &[CertificateDer<'_>]) -> String {
    ders.iter().map(certificate_pem).collect()
}

/// Decodes text holding exactly one PEM `CERTIFICATE` block.
pub(crate) fn parse_single_certificate(text: &str) -> Option<CertificateDer<'static>> {
    match pem::parse_many(text).ok()?.as_slice() {
        [block] if block.tag() == CERTIFICATE_LABEL => {
            Some(CertificateDer::from(block.contents().to_vec()))
        }
        _ => None,
    }
}

fn config() -> pem::EncodeConfig {
    pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF)
}

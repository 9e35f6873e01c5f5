//! Certificate signing requests from devices: parsed, checked, reduced to a public key.

use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::oid_registry::{
    Oid, OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_NIST_EC_P521,
    OID_PKCS1_RSAENCRYPTION, OID_SIG_ED25519, OID_SIG_ED448,
};
use x509_parser::prelude::FromDer;
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::error::{CsrError, KeyAlgorithm};

/// Largest CSR we look at, PEM or DER. A P-256 request is about 400 bytes of PEM; the
/// bound keeps a hostile client from making the parser walk megabytes.
pub const MAX_CSR_LEN: usize = 16 * 1024;

/// PEM labels that hold a PKCS#10 request: the standard one (RFC 7468) and the one
/// older OpenSSL versions write.
const CSR_PEM_LABELS: [&str; 2] = ["CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST"];

/// A device's certificate signing request that passed our policy.
///
/// Holding one means: the input was a well-formed PKCS#10 request, its key is ECDSA
/// P-256, and its self-signature verifies, so the requester holds the private key.
/// Everything else in the request (subject, requested extensions, attributes) has been
/// dropped: only the public key is kept, because the server alone decides what the
/// certificate says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceCsr {
    /// DER `SubjectPublicKeyInfo` of the device key.
    public_key_spki: Vec<u8>,
}

impl DeviceCsr {
    /// Parses and checks a PEM-encoded request (`-----BEGIN CERTIFICATE REQUEST-----`).
    pub fn from_pem(pem: &[u8]) -> Result<Self, CsrError> {
        check_len(pem)?;
        let block = pem::parse(pem).map_err(|_| CsrError::NotPem)?;
        if !CSR_PEM_LABELS.contains(&block.tag()) {
            return Err(CsrError::WrongPemLabel);
        }
        Self::from_der(block.contents())
    }

    /// Parses and checks a DER-encoded request.
    pub fn from_der(der: &[u8]) -> Result<Self, CsrError> {
        check_len(der)?;
        let (rest, csr) =
            X509CertificationRequest::from_der(der).map_err(|_| CsrError::Malformed)?;
        if !rest.is_empty() {
            return Err(CsrError::TrailingData);
        }

        // Key type first: it is the more useful answer for an RSA or P-384 request, and
        // ring would refuse some of those signatures for reasons of its own anyway.
        let spki = &csr.certification_request_info.subject_pki;
        match KeyAlgorithm::of(spki) {
            KeyAlgorithm::EcdsaP256 => {}
            found => return Err(CsrError::UnsupportedKey { found }),
        }
        csr.verify_signature().map_err(|_| CsrError::BadSignature)?;

        Ok(Self {
            public_key_spki: spki.raw.to_vec(),
        })
    }

    /// DER `SubjectPublicKeyInfo` of the device's key.
    pub fn public_key_spki_der(&self) -> &[u8] {
        &self.public_key_spki
    }
}

fn check_len(input: &[u8]) -> Result<(), CsrError> {
    match input.len() {
        len if len > MAX_CSR_LEN => Err(CsrError::TooLarge {
            len,
            max: MAX_CSR_LEN,
        }),
        _ => Ok(()),
    }
}

impl KeyAlgorithm {
    /// Classifies the key in a `SubjectPublicKeyInfo`.
    pub(crate) fn of(spki: &SubjectPublicKeyInfo<'_>) -> Self {
        let algorithm = &spki.algorithm.algorithm;
        if *algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok());
            Self::of_curve(curve.as_ref())
        } else if *algorithm == OID_PKCS1_RSAENCRYPTION {
            Self::Rsa
        } else if *algorithm == OID_SIG_ED25519 {
            Self::Ed25519
        } else if *algorithm == OID_SIG_ED448 {
            Self::Ed448
        } else {
            Self::Other {
                oid: algorithm.to_id_string(),
            }
        }
    }

    fn of_curve(curve: Option<&Oid<'_>>) -> Self {
        match curve {
            Some(c) if *c == OID_EC_P256 => Self::EcdsaP256,
            Some(c) if *c == OID_NIST_EC_P384 => Self::EcdsaP384,
            Some(c) if *c == OID_NIST_EC_P521 => Self::EcdsaP521,
            _ => Self::EcdsaOtherCurve,
        }
    }
}

#[cfg(test)]
mod hostile_input {
    use super::DeviceCsr;

    #[test]
    fn the_p256_seeds_parse_and_the_other_keys_are_refused_as_unsupported() {
        let (pem, der) = (corpus::seeds("csr"), corpus::seeds("csr_der"));
        assert!(DeviceCsr::from_pem(&pem[0]).is_ok(), "P-256");
        assert!(DeviceCsr::from_der(&der[0]).is_ok(), "P-256");
        for refused in [
            DeviceCsr::from_pem(&pem[1]),
            DeviceCsr::from_pem(&pem[2]),
            DeviceCsr::from_der(&der[1]),
        ] {
            assert!(
                matches!(refused, Err(super::CsrError::UnsupportedKey { .. })),
                "P-384 and RSA"
            );
        }
    }

    corpus::proptest::proptest! {
        #![proptest_config(corpus::config())]

        /// The stable-toolchain fuzzing of CSR parsing (seeds: corpus/seeds/csr, csr_der).
        #[test]
        fn mutated_requests_are_refused_or_parsed_never_a_panic(
            pem in corpus::mutated("csr"),
            der in corpus::mutated("csr_der"),
        ) {
            let _ = DeviceCsr::from_pem(&pem);
            let _ = DeviceCsr::from_der(&der);
        }
    }
}

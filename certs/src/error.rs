//! One error type per concern, each variant documented.
//!
//! None of these carries key material: a variant names the file, the field or the
//! algorithm that was wrong, never the bytes of a private key. Values that come from a
//! peer (a CSR, a certificate) are not echoed back either, so an error can be logged or
//! turned into an API answer without further scrubbing.

use std::fmt;
use std::path::PathBuf;

use time::OffsetDateTime;

/// Why a certificate signing request was refused.
///
/// Every variant maps to "400 Bad Request" at the enrollment API: the device sent
/// something we will not sign.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CsrError {
    /// The input is larger than [`crate::MAX_CSR_LEN`]; it was not parsed at all.
    #[error("CSR is {len} bytes, more than the {max} allowed")]
    TooLarge {
        /// Length of the input in bytes.
        len: usize,
        /// The limit it exceeded.
        max: usize,
    },

    /// The input is not PEM: no `-----BEGIN ...-----` block could be decoded.
    #[error("CSR is not valid PEM")]
    NotPem,

    /// The input is PEM, but its first block is not a `CERTIFICATE REQUEST`.
    #[error("PEM block is not a CERTIFICATE REQUEST")]
    WrongPemLabel,

    /// The DER inside is not a PKCS#10 certification request.
    #[error("CSR is not a well-formed PKCS#10 request")]
    Malformed,

    /// A well-formed request is followed by more bytes.
    #[error("CSR is followed by trailing data")]
    TrailingData,

    /// The request's public key is of a kind we do not sign; only ECDSA P-256 is accepted.
    #[error("CSR key is {found}; only ECDSA P-256 is accepted")]
    UnsupportedKey {
        /// The kind of key the request carried.
        found: KeyAlgorithm,
    },

    /// The request's self-signature does not verify with its own public key: it was
    /// tampered with, or the requester does not hold the private key.
    #[error("CSR signature does not verify")]
    BadSignature,
}

/// A public key algorithm, as found in a `SubjectPublicKeyInfo`.
///
/// Used to say precisely what was refused in [`CsrError::UnsupportedKey`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyAlgorithm {
    /// ECDSA on NIST P-256: the one we accept.
    EcdsaP256,
    /// ECDSA on NIST P-384.
    EcdsaP384,
    /// ECDSA on NIST P-521.
    EcdsaP521,
    /// ECDSA on some other curve, or with missing curve parameters.
    EcdsaOtherCurve,
    /// RSA (`rsaEncryption`).
    Rsa,
    /// Ed25519.
    Ed25519,
    /// Ed448.
    Ed448,
    /// Anything else, named by its algorithm OID.
    Other {
        /// Dotted-decimal OID of the key algorithm.
        oid: String,
    },
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::EcdsaP256 => f.write_str("ECDSA P-256"),
            Self::EcdsaP384 => f.write_str("ECDSA P-384"),
            Self::EcdsaP521 => f.write_str("ECDSA P-521"),
            Self::EcdsaOtherCurve => f.write_str("ECDSA on an unsupported curve"),
            Self::Rsa => f.write_str("RSA"),
            Self::Ed25519 => f.write_str("Ed25519"),
            Self::Ed448 => f.write_str("Ed448"),
            Self::Other { oid } => write!(f, "an unknown key type (OID {oid})"),
        }
    }
}

/// Why a device identity could not be read from a certificate.
///
/// The broker sees these only for certificates that already chained to our issuing CA,
/// so any of them means a certificate we did not issue in this shape: refuse the
/// connection and log it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The bytes are not a DER X.509 certificate.
    #[error("not a well-formed X.509 certificate")]
    MalformedCertificate,

    /// A well-formed certificate is followed by more bytes.
    #[error("certificate is followed by trailing data")]
    TrailingData,

    /// The subject has no common name (CN), which must hold the device id.
    #[error("certificate subject has no common name")]
    MissingCommonName,

    /// The subject has more than one common name.
    #[error("certificate subject has more than one common name")]
    DuplicateCommonName,

    /// The subject has no organization (O), which must hold the tenant id.
    #[error("certificate subject has no organization")]
    MissingOrganization,

    /// The subject has more than one organization.
    #[error("certificate subject has more than one organization")]
    DuplicateOrganization,

    /// The common name is not a UUID in canonical form (lowercase, hyphenated).
    #[error("certificate common name is not a canonical device id")]
    MalformedDeviceId,

    /// The organization is not a UUID in canonical form (lowercase, hyphenated).
    #[error("certificate organization is not a canonical tenant id")]
    MalformedTenantId,

    /// The certificate has no subject alternative name extension.
    #[error("certificate has no subject alternative name")]
    MissingSubjectAltName,

    /// The subject alternative name extension is unparseable or appears twice.
    #[error("certificate subject alternative name is malformed")]
    MalformedSubjectAltName,

    /// The subject alternative names hold something other than one identity URI.
    #[error("certificate has a subject alternative name other than the identity URI")]
    UnexpectedSubjectAltName,

    /// No subject alternative name is a `urn:fleetplane:device:` URI.
    #[error("certificate has no identity URI")]
    MissingIdentityUri,

    /// The identity URI does not read `urn:fleetplane:device:<tenant>:<device>` with
    /// canonical UUIDs.
    #[error("certificate identity URI is malformed")]
    MalformedIdentityUri,

    /// The identity URI names a different tenant or device than the subject.
    #[error("certificate identity URI disagrees with its subject")]
    InconsistentIdentity,
}

/// Why a certificate is not valid at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ValidityError {
    /// The time is before the certificate's `notBefore`.
    #[error("certificate is not valid before {not_before}")]
    NotYetValid {
        /// Start of the validity period.
        not_before: OffsetDateTime,
    },

    /// The time is after the certificate's `notAfter`.
    #[error("certificate expired at {not_after}")]
    Expired {
        /// End of the validity period.
        not_after: OffsetDateTime,
    },
}

/// Why a certificate could not be issued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IssueError {
    /// The requested lifetime is zero, or so long that the end date overflows.
    #[error("certificate lifetime must be positive and end before the year 9999")]
    InvalidLifetime,

    /// `not_after` is not later than `not_before`.
    #[error("certificate validity ends before it starts")]
    EmptyValidity,

    /// The issuing CA expires before the requested certificate would start.
    #[error("issuing CA expires before the certificate would start")]
    IssuerExpired,

    /// A server certificate was requested without any DNS name or IP address.
    #[error("server certificate needs at least one DNS name or IP address")]
    NoServerNames,

    /// A DNS name is not a plain ASCII host name.
    #[error("invalid DNS name {name:?} for a server certificate")]
    InvalidDnsName {
        /// The name that was refused (operator configuration, not a secret).
        name: String,
    },

    /// A revocation list entry's serial is not the lowercase hex of 1 to 20 bytes.
    #[error("invalid certificate serial {serial:?} for a revocation list")]
    InvalidSerial {
        /// What was given.
        serial: String,
    },

    /// Key generation or signing failed in the crypto provider.
    #[error("crypto provider failed: {reason}")]
    Crypto {
        /// rcgen's description of the failure (never key material).
        reason: String,
    },
}

impl From<rcgen::Error> for IssueError {
    fn from(error: rcgen::Error) -> Self {
        Self::Crypto {
            reason: error.to_string(),
        }
    }
}

/// Why a private key could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The text is not a PEM-encoded PKCS#8 private key ring can use. Deliberately
    /// vague: the parser's message could quote the key.
    #[error("not a PKCS#8 private key in PEM")]
    Malformed,

    /// The key is valid but not ECDSA P-256.
    #[error("private key is not ECDSA P-256")]
    NotP256,

    /// Generating a fresh key failed in the crypto provider.
    #[error("key generation failed")]
    Generation,
}

/// Why a PKI directory could not be created or loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PkiError {
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A file that generation would create already exists; nothing was overwritten.
    #[error("{} already exists; refusing to overwrite a PKI", path.display())]
    AlreadyExists {
        /// The existing file.
        path: PathBuf,
    },

    /// A file that loading needs does not exist.
    #[error("{} does not exist", path.display())]
    Missing {
        /// The missing file.
        path: PathBuf,
    },

    /// Some PKI files exist and some do not: neither loading nor generating is safe.
    #[error("incomplete PKI: {} is missing while other PKI files exist", missing.display())]
    Incomplete {
        /// The first missing file.
        missing: PathBuf,
    },

    /// A private key file may be read by group or others (mode `& 0o077 != 0`).
    /// The same rule as OpenSSH: fix it with `chmod 600`.
    #[error("{} has mode {mode:o}; a private key must not be readable by group or others (chmod 600)", path.display())]
    InsecureKeyPermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },

    /// A PKI directory or file could be replaced by someone other than the user fleetd runs as:
    /// it is owned by another user, or group or others may write it.
    #[error("{} is {found}; required: {required}", path.display())]
    UntrustedPath {
        /// The directory or file.
        path: PathBuf,
        /// Its owner and mode.
        found: String,
        /// What is required of it.
        required: String,
    },

    /// A file is larger than any PEM certificate or key we write.
    #[error("{} is larger than {max} bytes", path.display())]
    FileTooLarge {
        /// The file.
        path: PathBuf,
        /// The limit.
        max: u64,
    },

    /// A private key file could not be used.
    #[error("{}: {source}", path.display())]
    Key {
        /// The key file.
        path: PathBuf,
        /// What was wrong with it.
        #[source]
        source: KeyError,
    },

    /// A certificate file is not one PEM `CERTIFICATE` holding a well-formed X.509
    /// certificate.
    #[error("{} is not a PEM certificate", path.display())]
    MalformedCertificate {
        /// The certificate file.
        path: PathBuf,
    },

    /// A certificate that must be a CA is not one (no `cA` basic constraint).
    #[error("{} is not a CA certificate", path.display())]
    NotACa {
        /// The certificate file.
        path: PathBuf,
    },

    /// A private key does not belong to the certificate beside it.
    #[error("{} does not match the public key of its certificate", path.display())]
    KeyMismatch {
        /// The key file.
        path: PathBuf,
    },

    /// A certificate is not signed by the CA that should have issued it.
    #[error("{} is not signed by {}", path.display(), issuer.display())]
    NotSignedBy {
        /// The certificate file.
        path: PathBuf,
        /// The issuer's certificate file.
        issuer: PathBuf,
    },

    /// Creating the CA certificates failed.
    #[error("creating the PKI failed: {0}")]
    Issue(#[from] IssueError),
}

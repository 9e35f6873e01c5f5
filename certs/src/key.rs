//! Private keys: generation, PEM encoding, and files at mode 0600.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use rcgen::{KeyPair, PublicKeyData, SigningKey, PKCS_ECDSA_P256_SHA256};
use rustls_pki_types::PrivatePkcs8KeyDer;
use zeroize::{Zeroize, Zeroizing};

use crate::error::{KeyError, PkiError};

/// Mode of every private key file we create: owner read and write, nothing else.
pub const KEY_FILE_MODE: u32 = 0o600;

/// Mode of certificate files: they are public.
const CERT_FILE_MODE: u32 = 0o644;

/// Upper bound on a PEM file we read. Ours are well under 2 KiB; the bound stops a
/// misconfigured path (a log, a device node) from being read whole into memory.
pub(crate) const MAX_PEM_FILE_LEN: u64 = 64 * 1024;

/// An ECDSA P-256 private key.
///
/// `Debug` prints `PrivateKey(<redacted>)` and there is no `Display`, so a key cannot
/// reach a log by accident. On drop, rcgen's PKCS#8 copy of the key is zeroized; ring
/// keeps a parsed copy of its own that it does not zeroize, which no safe code here can
/// reach.
pub struct PrivateKey(KeyPair);

impl PrivateKey {
    /// Generates a fresh P-256 key from the operating system's random source.
    pub fn generate() -> Result<Self, KeyError> {
        KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map(Self)
            .map_err(|_| KeyError::Generation)
    }

    /// Parses a PEM-encoded PKCS#8 key, refusing any algorithm but ECDSA P-256.
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, KeyError> {
        let key = KeyPair::from_pem(pem).map_err(|_| KeyError::Malformed)?;
        if key.algorithm() != &PKCS_ECDSA_P256_SHA256 {
            return Err(KeyError::NotP256);
        }
        Ok(Self(key))
    }

    /// The key as PEM-encoded PKCS#8, in a buffer that is zeroized when dropped.
    pub fn to_pkcs8_pem(&self) -> Zeroizing<String> {
        Zeroizing::new(self.0.serialize_pem())
    }

    /// The key as DER PKCS#8, the form rustls takes for a server or client key.
    pub fn to_pkcs8_der(&self) -> PrivatePkcs8KeyDer<'static> {
        PrivatePkcs8KeyDer::from(self.0.serialize_der())
    }

    /// DER `SubjectPublicKeyInfo` of the public half, as it appears in a certificate.
    pub fn public_key_spki_der(&self) -> Vec<u8> {
        self.0.subject_public_key_info()
    }

    /// Loads a key file written by [`PrivateKey::write_new_file`].
    ///
    /// Refuses a file that group or others may read ([`PkiError::InsecureKeyPermissions`]):
    /// a key that was exposed should be replaced, not used, and saying so loudly at
    /// start-up is the only moment anyone will notice. The mode is read from the open
    /// file, so the check and the read see the same inode.
    pub fn load_file(path: &Path) -> Result<Self, PkiError> {
        let file = File::open(path).map_err(|e| open_error(path, e))?;
        let metadata = file.metadata().map_err(|e| io_error(path, e))?;
        check_trusted(path, &metadata)?;
        let mode = metadata.mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(PkiError::InsecureKeyPermissions {
                path: path.to_owned(),
                mode,
            });
        }
        let pem = Zeroizing::new(read_bounded(file, path)?);
        Self::from_pkcs8_pem(&pem).map_err(|source| PkiError::Key {
            path: path.to_owned(),
            source,
        })
    }

    /// Writes the key as PEM to a new file created with mode 0600.
    ///
    /// The mode is given to `open(2)`, so the key is never on disk with wider
    /// permissions, not even for an instant (no chmod after writing). Fails with
    /// [`PkiError::AlreadyExists`] rather than replacing an existing file.
    pub fn write_new_file(&self, path: &Path) -> Result<(), PkiError> {
        write_new_file(path, self.to_pkcs8_pem().as_bytes(), KEY_FILE_MODE)
    }

    pub(crate) fn key_pair(&self) -> &KeyPair {
        &self.0
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey(<redacted>)")
    }
}

impl Drop for PrivateKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// Lets rcgen sign with a [`PrivateKey`] it owns (inside an `rcgen::Issuer`) without
/// making rcgen's traits part of this crate's public API.
pub(crate) struct CaKey(pub(crate) PrivateKey);

impl PublicKeyData for CaKey {
    fn der_bytes(&self) -> &[u8] {
        self.0.key_pair().der_bytes()
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        PublicKeyData::algorithm(self.0.key_pair())
    }
}

impl SigningKey for CaKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.0.key_pair().sign(msg)
    }
}

/// Writes a public certificate file (mode 0644), refusing to replace an existing file.
pub(crate) fn write_new_cert_file(path: &Path, pem: &str) -> Result<(), PkiError> {
    write_new_file(path, pem.as_bytes(), CERT_FILE_MODE)
}

/// Reads a PEM file of at most [`MAX_PEM_FILE_LEN`] bytes.
pub(crate) fn read_pem_file(path: &Path) -> Result<String, PkiError> {
    let file = File::open(path).map_err(|e| open_error(path, e))?;
    check_trusted(path, &file.metadata().map_err(|e| io_error(path, e))?)?;
    read_bounded(file, path)
}

/// Refuses a PKI directory or file that someone other than this process's user could replace:
/// one owned by another user (root excepted: it can replace anything anyway) or writable by
/// group or others. Mode bits alone say nothing when the owner is someone else.
pub(crate) fn check_trusted(path: &Path, metadata: &std::fs::Metadata) -> Result<(), PkiError> {
    let euid = nix::unistd::geteuid().as_raw();
    let (owner, mode) = (metadata.uid(), metadata.mode() & 0o7777);
    if (owner == euid || owner == 0) && mode & 0o022 == 0 {
        return Ok(());
    }
    Err(PkiError::UntrustedPath {
        path: path.to_owned(),
        found: format!("owned by uid {owner} with mode {mode:o}"),
        required: format!(
            "owned by uid {euid} (the user this process runs as) or root, and not writable by \
             group or others (chown {euid}; chmod go-w)"
        ),
    })
}

/// [`check_trusted`] for a directory (or any path) by name, following symbolic links as opening
/// its files does.
pub fn check_trusted_path(path: &Path) -> Result<(), PkiError> {
    let metadata = std::fs::metadata(path).map_err(|e| open_error(path, e))?;
    check_trusted(path, &metadata)
}

fn write_new_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), PkiError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => PkiError::AlreadyExists {
                path: path.to_owned(),
            },
            _ => io_error(path, e),
        })?;
    file.write_all(contents).map_err(|e| io_error(path, e))?;
    // A CA key lost to a power cut after "PKI created" was logged is a CA that must be
    // replaced on every device: flush to disk before reporting success.
    file.sync_all().map_err(|e| io_error(path, e))
}

fn read_bounded(file: File, path: &Path) -> Result<String, PkiError> {
    let mut text = String::new();
    file.take(MAX_PEM_FILE_LEN + 1)
        .read_to_string(&mut text)
        .map_err(|e| io_error(path, e))?;
    if text.len() as u64 > MAX_PEM_FILE_LEN {
        text.zeroize();
        return Err(PkiError::FileTooLarge {
            path: path.to_owned(),
            max: MAX_PEM_FILE_LEN,
        });
    }
    Ok(text)
}

fn open_error(path: &Path, error: std::io::Error) -> PkiError {
    match error.kind() {
        std::io::ErrorKind::NotFound => PkiError::Missing {
            path: path.to_owned(),
        },
        _ => io_error(path, error),
    }
}

pub(crate) fn io_error(path: &Path, source: std::io::Error) -> PkiError {
    PkiError::Io {
        path: path.to_owned(),
        source,
    }
}

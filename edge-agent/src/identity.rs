//! The state directory: the device identity (key, certificate chain, pinned root, ids),
//! the run state `status` reads, and the outbox.
//!
//! ```text
//! /var/lib/fleet-agent/          (--state-dir; 0700, owned by the fleet-agent user)
//!   device.json                  ids, server and broker URLs, current key generation
//!   device-<N>.key               P-256 private key, PKCS#8 PEM, mode 0600, never sent
//!   device-<N>.crt               certificate chain PEM: device certificate, issuing CA
//!   root-ca.pem                  the pinned fleet root CA (the only trust anchor)
//!   state.json                   written by `run`: connection state, last ack, outbox depth
//!   outbox/                      unacknowledged records (see crate::outbox)
//! ```
//!
//! Key and certificate files carry a generation number so that a renewal can switch both at
//! once: the new pair is written and flushed under the next number, then `device.json`,
//! which names the generation, is replaced atomically. A crash at any point leaves either
//! the old or the new pair in force, never a key with a certificate that does not match.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use wire::{DeviceId, TenantId};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::certinfo::{self, Validity};

/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/fleet-agent";

const DEVICE_FILE: &str = "device.json";
const ROOT_CA_FILE: &str = "root-ca.pem";
const STATE_FILE: &str = "state.json";
const OUTBOX_DIR: &str = "outbox";

/// Paths inside the state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// The state directory at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The directory itself.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// `device.json`.
    pub fn device_file(&self) -> PathBuf {
        self.root.join(DEVICE_FILE)
    }

    /// `root-ca.pem`.
    pub fn root_ca_file(&self) -> PathBuf {
        self.root.join(ROOT_CA_FILE)
    }

    /// `device-<generation>.key`.
    pub fn key_file(&self, generation: u64) -> PathBuf {
        self.root.join(format!("device-{generation}.key"))
    }

    /// `device-<generation>.crt`.
    pub fn cert_file(&self, generation: u64) -> PathBuf {
        self.root.join(format!("device-{generation}.crt"))
    }

    /// `state.json`.
    pub fn state_file(&self) -> PathBuf {
        self.root.join(STATE_FILE)
    }

    /// `outbox/`.
    pub fn outbox_dir(&self) -> PathBuf {
        self.root.join(OUTBOX_DIR)
    }

    /// Creates the directory (mode 0700) if it does not exist.
    pub fn create(&self) -> Result<(), IdentityError> {
        fs::create_dir_all(&self.root).map_err(|e| IdentityError::io(&self.root, e))?;
        let mut permissions = fs::metadata(&self.root)
            .map_err(|e| IdentityError::io(&self.root, e))?
            .permissions();
        if permissions.mode() & 0o077 != 0 {
            permissions.set_mode(0o700);
            fs::set_permissions(&self.root, permissions)
                .map_err(|e| IdentityError::io(&self.root, e))?;
        }
        Ok(())
    }
}

/// `device.json`: who this device is and where it talks to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRecord {
    /// The device id (also the MQTT client id and the certificate's identity).
    pub device_id: DeviceId,
    /// The tenant the device belongs to.
    pub tenant_id: TenantId,
    /// The HTTPS server enrollment went to; renewal goes there too.
    pub server_url: String,
    /// `mqtts://host:port`.
    pub broker_url: String,
    /// Which `device-<N>.key` / `device-<N>.crt` pair is current.
    pub generation: u64,
    /// When the device enrolled (seconds since the epoch).
    pub enrolled_at: i64,
    /// When the certificate was last renewed, if ever.
    #[serde(default)]
    pub renewed_at: Option<i64>,
}

/// A PEM private key. Its `Debug` never shows the key; every copy is wiped from memory when
/// dropped.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct SecretPem(String);

impl SecretPem {
    /// Wraps PEM text.
    pub fn new(pem: String) -> Self {
        Self(pem)
    }

    /// The PEM text, for writing to disk.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The key for rustls. Wrap it in `Zeroizing` (or hand it over at once): the DER is the key.
    pub fn to_der(&self) -> Result<PrivateKeyDer<'static>, IdentityError> {
        PrivateKeyDer::from_pem_slice(self.0.as_bytes())
            .map_err(|_| IdentityError::Invalid("the device key is not a PEM private key".into()))
    }
}

impl fmt::Debug for SecretPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretPem(<redacted>)")
    }
}

/// Everything needed to connect as the device.
#[derive(Debug, Clone)]
pub struct Identity {
    /// `device.json`.
    pub record: DeviceRecord,
    /// The private key.
    pub key: SecretPem,
    /// Device certificate first, then the issuing CA.
    pub chain: Vec<CertificateDer<'static>>,
    /// The pinned fleet root.
    pub root: CertificateDer<'static>,
    /// Validity of the device certificate.
    pub validity: Validity,
}

/// Why the identity cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The device has not enrolled (no `device.json`).
    #[error("not enrolled: {0} does not exist (run `fleet-agent enroll` first)")]
    NotEnrolled(PathBuf),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A file's content is unusable.
    #[error("{0}")]
    Invalid(String),
}

impl IdentityError {
    fn io(path: &Path, source: io::Error) -> Self {
        Self::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// Reads `device.json` alone (for `status`, which must work with a partial state).
pub fn load_record(dir: &StateDir) -> Result<DeviceRecord, IdentityError> {
    let path = dir.device_file();
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            return Err(IdentityError::NotEnrolled(path))
        }
        Err(err) => return Err(IdentityError::io(&path, err)),
    };
    serde_json::from_str(&text)
        .map_err(|err| IdentityError::Invalid(format!("{}: {err}", path.display())))
}

/// Reads the whole identity and checks that it hangs together.
pub fn load(dir: &StateDir) -> Result<Identity, IdentityError> {
    let record = load_record(dir)?;
    let key_path = dir.key_file(record.generation);
    check_private_mode(&key_path)?;
    let key = SecretPem::new(read_text(&key_path)?);
    drop(Zeroizing::new(key.to_der()?));
    let chain = read_certs(&dir.cert_file(record.generation))?;
    let root = read_certs(&dir.root_ca_file())?
        .into_iter()
        .next()
        .expect("read_certs returns at least one");
    let validity = certinfo::validity(&chain[0]).map_err(|err| {
        IdentityError::Invalid(format!(
            "{}: {err}",
            dir.cert_file(record.generation).display()
        ))
    })?;
    Ok(Identity {
        record,
        key,
        chain,
        root,
        validity,
    })
}

/// Reads the validity of the current certificate (for `status`).
pub fn load_validity(dir: &StateDir, record: &DeviceRecord) -> Result<Validity, IdentityError> {
    let path = dir.cert_file(record.generation);
    let chain = read_certs(&path)?;
    certinfo::validity(&chain[0])
        .map_err(|err| IdentityError::Invalid(format!("{}: {err}", path.display())))
}

/// Parses a PEM bundle of certificates; at least one is required.
pub fn parse_certs(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| IdentityError::Invalid(format!("{what}: not PEM certificates ({err})")))?;
    if certs.is_empty() {
        return Err(IdentityError::Invalid(format!(
            "{what}: no certificate in it"
        )));
    }
    Ok(certs)
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
    parse_certs(&read_text(path)?, &path.display().to_string())
}

fn read_text(path: &Path) -> Result<String, IdentityError> {
    fs::read_to_string(path).map_err(|err| IdentityError::io(path, err))
}

/// Refuses a key file that others may read, as ssh does.
fn check_private_mode(path: &Path) -> Result<(), IdentityError> {
    let mode = fs::metadata(path)
        .map_err(|err| IdentityError::io(path, err))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(IdentityError::Invalid(format!(
            "{} is accessible by other users (mode {:o}); it must be 0600",
            path.display(),
            mode & 0o777
        )));
    }
    Ok(())
}

/// A new key and certificate to install (after enrollment or renewal).
#[derive(Debug)]
pub struct NewCredentials<'a> {
    /// The ids and URLs; its `generation` is where the files go.
    pub record: &'a DeviceRecord,
    /// The private key PEM.
    pub key: &'a SecretPem,
    /// The certificate chain PEM.
    pub chain_pem: &'a str,
    /// The root CA PEM (written only at enrollment: the pin never changes afterwards).
    pub root_pem: Option<&'a str>,
}

/// Writes key, chain and (at enrollment) root under `record.generation`, then commits by
/// replacing `device.json`; removes the previous generation's files afterwards.
pub fn install(dir: &StateDir, new: &NewCredentials<'_>) -> Result<(), IdentityError> {
    dir.create()?;
    let generation = new.record.generation;
    write_atomic(
        &dir.key_file(generation),
        new.key.expose().as_bytes(),
        0o600,
    )?;
    write_atomic(&dir.cert_file(generation), new.chain_pem.as_bytes(), 0o644)?;
    if let Some(root_pem) = new.root_pem {
        write_atomic(&dir.root_ca_file(), root_pem.as_bytes(), 0o644)?;
    }
    let json = serde_json::to_vec_pretty(new.record).expect("a record always serializes");
    write_atomic(&dir.device_file(), &json, 0o644)?;
    if generation > 1 {
        let _ = fs::remove_file(dir.key_file(generation - 1));
        let _ = fs::remove_file(dir.cert_file(generation - 1));
    }
    Ok(())
}

/// Writes `bytes` to `path` through a temporary file with `mode`, flushed, renamed over and
/// the directory flushed: readers see the old or the new content, never a mix.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), IdentityError> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|err| IdentityError::io(&tmp, err))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|err| IdentityError::io(&tmp, err))?;
    fs::rename(&tmp, path).map_err(|err| IdentityError::io(path, err))?;
    if let Some(parent) = path.parent() {
        File::open(parent)
            .and_then(|dir| dir.sync_all())
            .map_err(|err| IdentityError::io(parent, err))?;
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Compiles only for types that wipe themselves when dropped.
    fn wiped_on_drop<T: ZeroizeOnDrop>(_: &T) {}

    #[test]
    fn the_device_key_is_wiped_from_memory_after_use() {
        let (_, _, key) = fake_credentials();
        wiped_on_drop(&key);
        let mut copy = key.clone();
        assert!(copy.expose().contains("PRIVATE KEY"));
        // What drop does to every copy.
        copy.zeroize();
        assert!(copy.expose().is_empty());
        // The DER handed out is wiped too when wrapped as `to_der` asks.
        let mut der = Zeroizing::new(key.to_der().unwrap());
        assert!(!der.secret_der().is_empty());
        der.zeroize();
        assert!(der.secret_der().is_empty());
    }

    /// A self-signed "root" and a device certificate signed by it, as PEM, plus the key.
    pub(crate) fn fake_credentials() -> (String, String, SecretPem) {
        let root_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut root_params = rcgen::CertificateParams::new(Vec::new()).unwrap();
        root_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let root = root_params.self_signed(&root_key).unwrap();
        let issuer = rcgen::Issuer::new(root_params, root_key);
        let device_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let device_params = rcgen::CertificateParams::new(vec!["device".to_owned()]).unwrap();
        let device = device_params.signed_by(&device_key, &issuer).unwrap();
        (
            root.pem(),
            format!("{}{}", device.pem(), root.pem()),
            SecretPem::new(device_key.serialize_pem()),
        )
    }

    pub(crate) fn record(generation: u64) -> DeviceRecord {
        DeviceRecord {
            device_id: "6f1c2e0a-4b7d-4c1e-9a53-2f8e1d0c7b94".parse().unwrap(),
            tenant_id: "11111111-2222-4333-8444-555555555555".parse().unwrap(),
            server_url: "https://fleet.example:8443".to_owned(),
            broker_url: "mqtts://127.0.0.1:1".to_owned(),
            generation,
            enrolled_at: 1_700_000_000,
            renewed_at: None,
        }
    }

    /// Installs a fake identity in `dir`.
    pub(crate) fn install_fake(dir: &StateDir) {
        let (root, chain, key) = fake_credentials();
        install(
            dir,
            &NewCredentials {
                record: &record(1),
                key: &key,
                chain_pem: &chain,
                root_pem: Some(&root),
            },
        )
        .unwrap();
    }

    #[test]
    fn install_then_load_round_trips() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(tmp.path().join("state"));
        install_fake(&dir);
        let identity = load(&dir).unwrap();
        assert_eq!(identity.record, record(1));
        assert_eq!(identity.chain.len(), 2);
        let mode = fs::metadata(dir.key_file(1)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let dir_mode = fs::metadata(dir.path()).unwrap().permissions().mode();
        assert_eq!(dir_mode & 0o777, 0o700);
    }

    #[test]
    fn renewal_switches_generation_and_removes_the_old_pair() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(tmp.path());
        install_fake(&dir);
        let (_, chain, key) = fake_credentials();
        install(
            &dir,
            &NewCredentials {
                record: &record(2),
                key: &key,
                chain_pem: &chain,
                root_pem: None,
            },
        )
        .unwrap();
        assert_eq!(load(&dir).unwrap().record.generation, 2);
        assert!(!dir.key_file(1).exists());
        assert!(!dir.cert_file(1).exists());
    }

    #[test]
    fn uncommitted_new_generation_is_ignored() {
        // A crash after writing the new pair but before device.json: the old pair is used.
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(tmp.path());
        install_fake(&dir);
        write_atomic(&dir.key_file(2), b"garbage", 0o600).unwrap();
        write_atomic(&dir.cert_file(2), b"garbage", 0o644).unwrap();
        assert_eq!(load(&dir).unwrap().record.generation, 1);
    }

    #[test]
    fn missing_device_file_means_not_enrolled() {
        let tmp = tempfile::tempdir().unwrap();
        let err = load(&StateDir::new(tmp.path())).unwrap_err();
        assert!(matches!(err, IdentityError::NotEnrolled(_)), "{err}");
        assert!(err.to_string().contains("fleet-agent enroll"));
    }

    #[test]
    fn key_readable_by_others_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(tmp.path());
        install_fake(&dir);
        fs::set_permissions(dir.key_file(1), fs::Permissions::from_mode(0o644)).unwrap();
        let err = load(&dir).unwrap_err().to_string();
        assert!(err.contains("0600"), "{err}");
    }

    #[test]
    fn damaged_files_are_reported_not_panicked_on() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(tmp.path());
        install_fake(&dir);
        fs::write(dir.cert_file(1), "not a certificate").unwrap();
        assert!(load(&dir)
            .unwrap_err()
            .to_string()
            .contains("no certificate"));
        install_fake(&dir);
        fs::write(dir.device_file(), "{").unwrap();
        assert!(matches!(load(&dir).unwrap_err(), IdentityError::Invalid(_)));
        install_fake(&dir);
        write_atomic(&dir.key_file(1), b"nope", 0o600).unwrap();
        assert!(load(&dir).unwrap_err().to_string().contains("private key"));
    }

    #[test]
    fn secret_debug_is_redacted() {
        let (_, _, key) = fake_credentials();
        let shown = format!("{key:?}");
        assert!(!shown.contains("PRIVATE KEY"), "{shown}");
        let identity_dir = tempfile::tempdir().unwrap();
        let dir = StateDir::new(identity_dir.path());
        install_fake(&dir);
        let shown = format!("{:?}", load(&dir).unwrap());
        assert!(!shown.contains("PRIVATE KEY"));
    }
}

//! The PKI directory: four PEM files, created once, loaded at every start.
//!
//! ```text
//! <dir>/            mode 0700 when we create it
//!   root-ca.pem     root certificate            0644
//!   root-ca.key     root key                    0600  (may be moved offline)
//!   issuing-ca.pem  issuing certificate         0644
//!   issuing-ca.key  issuing key                 0600
//! ```
//!
//! Loading checks what it reads: each key matches its certificate, both certificates are
//! CAs, the root is self-signed and the issuing CA is signed by the root. A key file that
//! group or others may read is refused (see [`PrivateKey::load_file`]). The directory and every
//! file read must be owned by the user the process runs as (or root) and not writable by group
//! or others ([`PkiError::UntrustedPath`]): mode bits mean nothing under another owner.

use std::fs::DirBuilder;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use crate::ca::{IssuingCa, PkiParams, RootCa};
use crate::error::PkiError;
use crate::key::{check_trusted_path, io_error, read_pem_file, write_new_cert_file, PrivateKey};

/// Where each PKI file lives inside a PKI directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PkiLayout {
    /// `root-ca.pem`: the root certificate, pinned by agents.
    pub root_cert: PathBuf,
    /// `root-ca.key`: the root key, needed only to create or rotate the issuing CA.
    pub root_key: PathBuf,
    /// `issuing-ca.pem`: the issuing CA certificate.
    pub issuing_cert: PathBuf,
    /// `issuing-ca.key`: the issuing key fleetd signs with.
    pub issuing_key: PathBuf,
}

impl PkiLayout {
    /// The standard file names inside `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            root_cert: dir.join("root-ca.pem"),
            root_key: dir.join("root-ca.key"),
            issuing_cert: dir.join("issuing-ca.pem"),
            issuing_key: dir.join("issuing-ca.key"),
        }
    }

    fn all(&self) -> [&Path; 4] {
        [
            &self.root_cert,
            &self.root_key,
            &self.issuing_cert,
            &self.issuing_key,
        ]
    }

    /// The files the online process needs: everything but the root key.
    fn online(&self) -> [&Path; 3] {
        [&self.root_cert, &self.issuing_cert, &self.issuing_key]
    }
}

/// Whether [`Pki::load_or_generate_dev`] found a PKI or made one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PkiOrigin {
    /// An existing PKI was loaded.
    Loaded,
    /// No PKI existed; a new one was generated (fleetd should log that loudly).
    Generated,
}

/// A complete PKI: the root CA with its key, and the issuing CA.
///
/// Needed by `fleetctl pki init` and for rotating the issuing CA. A running fleetd needs
/// only the [`IssuingCa`] ([`IssuingCa::load`]).
#[derive(Debug)]
pub struct Pki {
    root: RootCa,
    issuing: IssuingCa,
}

impl Pki {
    /// Creates a new root and issuing CA and writes them into `dir`.
    ///
    /// Creates `dir` (mode 0700) if needed. Refuses with [`PkiError::AlreadyExists`] if
    /// any of the four files exists: replacing a CA strands every device that pinned
    /// it, so that is never done implicitly. If writing fails midway, the files written
    /// by this call are removed again.
    pub fn generate(dir: &Path, params: &PkiParams) -> Result<Self, PkiError> {
        let layout = PkiLayout::in_dir(dir);
        if let Some(existing) = first_existing(&layout.all())? {
            return Err(PkiError::AlreadyExists { path: existing });
        }
        if dir.try_exists().map_err(|e| io_error(dir, e))? {
            check_trusted_path(dir)?;
        }
        let root = RootCa::generate(params)?;
        let issuing = root.issue_issuing_ca(params)?;
        let pki = Self { root, issuing };

        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| io_error(dir, e))?;
        pki.write(&layout)?;
        Ok(pki)
    }

    /// Loads and checks a complete PKI, root key included.
    pub fn load(dir: &Path) -> Result<Self, PkiError> {
        check_trusted_path(dir)?;
        let layout = PkiLayout::in_dir(dir);
        let root_cert = CaCertificate::load(&layout.root_cert)?;
        let root_key = load_key_for(&layout.root_key, &root_cert)?;
        root_cert.check_signed_by(&root_cert)?;
        let root = RootCa::from_parts(root_cert.der.clone(), root_key, root_cert.not_after)
            .map_err(|_| root_cert.malformed())?;
        let issuing = IssuingCa::load_from(&layout, root_cert)?;
        Ok(Self { root, issuing })
    }

    /// fleetd's first start: loads the PKI in `dir`, or generates a development PKI
    /// there if the directory holds none of its files.
    ///
    /// Only the files the online process needs must exist to load (the root key may
    /// have been moved offline). If some PKI files exist but not all of those, that is
    /// [`PkiError::Incomplete`]: generating would overwrite, loading cannot work.
    pub fn load_or_generate_dev(dir: &Path) -> Result<(IssuingCa, PkiOrigin), PkiError> {
        let layout = PkiLayout::in_dir(dir);
        if first_existing(&layout.all())?.is_none() {
            let pki = Self::generate(dir, &PkiParams::default())?;
            return Ok((pki.into_issuing_ca(), PkiOrigin::Generated));
        }
        if let Some(missing) = first_missing(&layout.online())? {
            return Err(PkiError::Incomplete { missing });
        }
        Ok((IssuingCa::load(dir)?, PkiOrigin::Loaded))
    }

    /// The root CA.
    pub fn root(&self) -> &RootCa {
        &self.root
    }

    /// The issuing CA.
    pub fn issuing_ca(&self) -> &IssuingCa {
        &self.issuing
    }

    /// Drops the root (and its key) and keeps the issuing CA, for the online process.
    pub fn into_issuing_ca(self) -> IssuingCa {
        self.issuing
    }

    fn write(&self, layout: &PkiLayout) -> Result<(), PkiError> {
        let mut written = Vec::new();
        let result = self.write_files(layout, &mut written);
        if result.is_err() {
            // Leave no half-made PKI behind: it would block the next attempt.
            for path in written {
                let _ = std::fs::remove_file(path);
            }
        }
        result
    }

    fn write_files<'a>(
        &self,
        layout: &'a PkiLayout,
        written: &mut Vec<&'a Path>,
    ) -> Result<(), PkiError> {
        self.root.key().write_new_file(&layout.root_key)?;
        written.push(&layout.root_key);
        write_new_cert_file(&layout.root_cert, &self.root.pem())?;
        written.push(&layout.root_cert);
        self.issuing.key().write_new_file(&layout.issuing_key)?;
        written.push(&layout.issuing_key);
        write_new_cert_file(&layout.issuing_cert, &self.issuing.pem())?;
        written.push(&layout.issuing_cert);
        Ok(())
    }
}

impl IssuingCa {
    /// Loads the issuing CA from a PKI directory without touching the root key.
    ///
    /// Reads `issuing-ca.pem`, `issuing-ca.key` and `root-ca.pem`, and checks that the
    /// key matches, that both are CAs and that the root signed the issuing CA. This is
    /// what fleetd runs with.
    pub fn load(dir: &Path) -> Result<Self, PkiError> {
        check_trusted_path(dir)?;
        let layout = PkiLayout::in_dir(dir);
        let root_cert = CaCertificate::load(&layout.root_cert)?;
        root_cert.check_signed_by(&root_cert)?;
        Self::load_from(&layout, root_cert)
    }

    fn load_from(layout: &PkiLayout, root_cert: CaCertificate) -> Result<Self, PkiError> {
        let issuing_cert = CaCertificate::load(&layout.issuing_cert)?;
        issuing_cert.check_signed_by(&root_cert)?;
        let issuing_key = load_key_for(&layout.issuing_key, &issuing_cert)?;
        Self::from_parts(
            issuing_cert.der.clone(),
            issuing_key,
            issuing_cert.not_after,
            root_cert.der,
        )
        .map_err(|_| issuing_cert.malformed())
    }
}

/// A CA certificate read from a file and checked to be a CA.
struct CaCertificate {
    path: PathBuf,
    der: CertificateDer<'static>,
    not_after: OffsetDateTime,
}

impl CaCertificate {
    fn load(path: &Path) -> Result<Self, PkiError> {
        let malformed = || PkiError::MalformedCertificate {
            path: path.to_owned(),
        };
        let der =
            crate::pem::parse_single_certificate(&read_pem_file(path)?).ok_or_else(malformed)?;
        let cert = parse(&der).ok_or_else(malformed)?;
        if !cert.is_ca() {
            return Err(PkiError::NotACa {
                path: path.to_owned(),
            });
        }
        let not_after = cert.validity().not_after.to_datetime();
        Ok(Self {
            path: path.to_owned(),
            der,
            not_after,
        })
    }

    fn check_signed_by(&self, issuer: &CaCertificate) -> Result<(), PkiError> {
        let (Some(cert), Some(issuer_cert)) = (parse(&self.der), parse(&issuer.der)) else {
            return Err(self.malformed());
        };
        cert.verify_signature(Some(issuer_cert.public_key()))
            .map_err(|_| PkiError::NotSignedBy {
                path: self.path.clone(),
                issuer: issuer.path.clone(),
            })
    }

    fn public_key_spki_der(&self) -> Vec<u8> {
        parse(&self.der)
            .map(|cert| cert.public_key().raw.to_vec())
            .unwrap_or_default()
    }

    fn malformed(&self) -> PkiError {
        PkiError::MalformedCertificate {
            path: self.path.clone(),
        }
    }
}

/// Loads a key file and checks it is the key of `cert`.
fn load_key_for(path: &Path, cert: &CaCertificate) -> Result<PrivateKey, PkiError> {
    let key = PrivateKey::load_file(path)?;
    if key.public_key_spki_der() != cert.public_key_spki_der() {
        return Err(PkiError::KeyMismatch {
            path: path.to_owned(),
        });
    }
    Ok(key)
}

fn parse<'a>(der: &'a CertificateDer<'_>) -> Option<X509Certificate<'a>> {
    match X509Certificate::from_der(der.as_ref()) {
        Ok(([], cert)) => Some(cert),
        _ => None,
    }
}

fn first_existing(paths: &[&Path]) -> Result<Option<PathBuf>, PkiError> {
    for path in paths {
        if path.try_exists().map_err(|e| io_error(path, e))? {
            return Ok(Some(path.to_path_buf()));
        }
    }
    Ok(None)
}

fn first_missing(paths: &[&Path]) -> Result<Option<PathBuf>, PkiError> {
    for path in paths {
        if !path.try_exists().map_err(|e| io_error(path, e))? {
            return Ok(Some(path.to_path_buf()));
        }
    }
    Ok(None)
}

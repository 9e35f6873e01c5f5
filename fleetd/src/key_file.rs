//! Secret key files that fleetd keeps outside the database: 32 bytes, mode 0600, created at
//! first start. Shared by the sealing key ([`crate::sealing_key`]) and the audit checkpoint key
//! ([`crate::audit_checkpoints`]).

use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::{bail, Context};
use zeroize::Zeroizing;

/// The 32 bytes in `path`, or `new()`'s written there (mode 0600, its directory created 0700)
/// if the file is absent; `what` names the key in the log. An existing file must be trusted as
/// the PKI's files are (owned by fleetd's user or root, writable by nobody else) and readable by
/// nobody else: it holds a secret.
pub fn load_or_create(
    path: &Path,
    what: &str,
    new: impl FnOnce() -> Zeroizing<[u8; 32]>,
) -> anyhow::Result<Zeroizing<[u8; 32]>> {
    match std::fs::OpenOptions::new().read(true).open(path) {
        Ok(mut file) => {
            certs::check_trusted_path(path)
                .with_context(|| format!("checking {}", path.display()))?;
            let mode = file
                .metadata()
                .with_context(|| format!("reading {}", path.display()))?
                .permissions()
                .mode()
                & 0o777;
            if mode & 0o077 != 0 {
                bail!(
                    "{} has mode {mode:o}; it holds a secret key: chmod 600",
                    path.display()
                );
            }
            let mut bytes = Zeroizing::new(Vec::new());
            Read::by_ref(&mut file)
                .take(33)
                .read_to_end(&mut bytes)
                .with_context(|| format!("reading {}", path.display()))?;
            let Ok(key) = <&[u8; 32]>::try_from(bytes.as_slice()) else {
                bail!("{} must hold exactly 32 bytes", path.display());
            };
            Ok(Zeroizing::new(*key))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // With an external database and the PKI elsewhere, nothing else made the directory.
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            let bytes = new();
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .with_context(|| format!("creating {}", path.display()))?;
            file.write_all(&bytes[..])
                .and_then(|()| file.sync_all())
                .with_context(|| format!("writing {}", path.display()))?;
            tracing::info!(path = %path.display(), "created {what}");
            Ok(bytes)
        }
        Err(e) => Err(e).with_context(|| format!("opening {}", path.display())),
    }
}

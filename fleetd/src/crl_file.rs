//! `pki.crl_file`: the fleet's CRL (PEM) on disk for an external broker (Mosquitto `crlfile`),
//! rewritten atomically at start, on every device revocation (the same Postgres notification
//! that closes sessions on the embedded broker) and every [`REFRESH`] (superseded certificates
//! enter the list when their grace period ends, and the CRL must be re-signed before its
//! `nextUpdate`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use certs::IssuingCa;
use store::revocations::RevocationListener;
use store::AppDb;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How often the file is rewritten without a revocation.
pub const REFRESH: Duration = Duration::from_secs(5 * 60);

/// Where and how the CRL file is kept.
pub struct CrlFile {
    /// The application database.
    pub app: AppDb,
    /// The CA that signs it.
    pub ca: Arc<IssuingCa>,
    /// `pki.superseded_grace`.
    pub superseded_grace: Duration,
    /// `pki.crl_file`.
    pub path: PathBuf,
}

impl CrlFile {
    /// Writes the file once (an error here stops start-up: a broker told to read a CRL must
    /// find one), then keeps it current until `stopped`.
    pub async fn start(self, stopped: watch::Receiver<bool>) -> anyhow::Result<JoinHandle<()>> {
        let listener = RevocationListener::connect(&self.app)
            .await
            .context("listening for revocations for pki.crl_file")?;
        self.write()
            .await
            .with_context(|| format!("writing pki.crl_file {}", self.path.display()))?;
        Ok(tokio::spawn(self.keep_current(listener, stopped)))
    }

    async fn keep_current(
        self,
        mut listener: RevocationListener,
        mut stopped: watch::Receiver<bool>,
    ) {
        let mut refresh = tokio::time::interval(REFRESH);
        refresh.tick().await;
        loop {
            tokio::select! {
                _ = stopped.wait_for(|stop| *stop) => return,
                _ = listener.recv() => {}
                _ = refresh.tick() => {}
            }
            // Keep the previous file on failure: it is still a valid (older) list.
            if let Err(e) = self.write().await {
                tracing::error!(path = %self.path.display(), "writing the CRL: {e:#}");
            }
        }
    }

    async fn write(&self) -> anyhow::Result<()> {
        let crl = api::current_crl(&self.app, &self.ca, self.superseded_grace).await?;
        let path = self.path.clone();
        let pem = crl.pem().to_owned();
        tokio::task::spawn_blocking(move || replace_atomically(&path, pem.as_bytes())).await??;
        tracing::debug!(path = %self.path.display(), "CRL written");
        Ok(())
    }
}

/// Writes `content` to a temporary file beside `path`, syncs it and renames it over `path`: a
/// reader sees the old file or the new one, never half of one.
fn replace_atomically(path: &Path, content: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("pki.crl_file has no file name"))?;
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(name);
    temp_name.push(".tmp");
    let temp = path.with_file_name(temp_name);
    let mut file = std::fs::File::create(&temp)?;
    file.write_all(content)?;
    file.sync_all()?;
    std::fs::rename(&temp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_is_replaced_whole_and_no_temporary_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("crl.pem");
        replace_atomically(&path, b"first").unwrap();
        replace_atomically(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
        assert!(replace_atomically(&dir.path().join("missing/crl.pem"), b"x").is_err());
    }
}

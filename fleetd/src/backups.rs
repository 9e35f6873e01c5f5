//! Scheduled backups (`[backup]` in the configuration, off by default): every interval,
//! `store::backup::create` into the backup directory (what `fleetctl backup create` makes), then
//! rotation to the newest `keep`. A failed run is logged and the next one tries again; the key
//! file is read at start, so a missing or loose key refuses the start instead of every run.

use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;

use anyhow::Context;
use store::backup::{self, BackupKey, BackupSecret, PgAccess};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::BackupSettings;

/// Starts the schedule when enabled.
pub fn start(
    settings: &BackupSettings,
    dir: PathBuf,
    access: PgAccess,
    mut stopped: watch::Receiver<bool>,
) -> anyhow::Result<Option<JoinHandle<()>>> {
    if !settings.enabled {
        return Ok(None);
    }
    let key_file = settings
        .key_file
        .as_ref()
        .context("backup.key_file is required when backups are enabled")?;
    let secret = BackupSecret::Key(BackupKey::load(key_file).context("backup.key_file")?);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("backup.dir {}", dir.display()))?;
    let (interval, keep) = (settings.interval, settings.keep);
    Ok(Some(tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = stopped.wait_for(|stop| *stop) => return,
            }
            let out = dir.join(backup::scheduled_file_name(time::OffsetDateTime::now_utc()));
            match backup::create(&access, &out, &secret).await {
                Ok(created) => tracing::info!(
                    file = %out.display(),
                    dump_bytes = created.trailer.dump_bytes,
                    dump_sha256 = %created.trailer.dump_sha256,
                    "backup written"
                ),
                Err(e) => tracing::warn!(file = %out.display(), error = %e, "backup failed"),
            }
            match backup::rotate(&dir, keep) {
                Ok(removed) if !removed.is_empty() => {
                    tracing::info!(removed = removed.len(), keep, "old backups removed")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "backup rotation failed"),
            }
        }
    })))
}

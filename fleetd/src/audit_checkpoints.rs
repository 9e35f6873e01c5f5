//! The audit checkpoint task: every `audit.checkpoint_interval` and once more at shutdown,
//! signs the chain of every tenant with new events (store::audit_checkpoints) and writes each
//! checkpoint to `audit.checkpoint_dir`. The key is `audit.checkpoint_key`, a 32-byte Ed25519
//! seed created 0600 at first start like the sealing key; its public half, which verifiers pin,
//! is logged at start and printed by `fleetctl audit public-key`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use store::audit_checkpoints::{CheckpointKey, Checkpointer};
use store::AppDb;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Config;

/// The checkpointer of `config`: its key loaded or created, its directory made.
pub fn prepare(config: &Config) -> anyhow::Result<Arc<Checkpointer>> {
    let path = config.audit_checkpoint_key();
    let seed = crate::key_file::load_or_create(
        &path,
        "the key that signs audit checkpoints",
        CheckpointKey::new_seed,
    )
    .context("the key that signs audit checkpoints (audit.checkpoint_key)")?;
    let key = CheckpointKey::from_seed(&seed)?;
    let dir = config.audit_checkpoint_dir();
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("creating audit.checkpoint_dir {}", dir.display()))?;
    tracing::info!(
        key = %path.display(),
        fingerprint = %key.public_key().fingerprint(),
        dir = %dir.display(),
        "audit checkpoints signed by this key"
    );
    Ok(Arc::new(Checkpointer::new(key, dir)))
}

/// Runs the checkpointer every `interval` until `stopped`, then once more.
pub fn spawn(
    checkpointer: Arc<Checkpointer>,
    app: AppDb,
    interval: Duration,
    mut stopped: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let stop = tokio::select! {
                () = tokio::time::sleep(interval) => false,
                _ = stopped.wait_for(|stop| *stop) => true,
            };
            match checkpointer.run(&app).await {
                Ok(run) if run.written > 0 || run.failed > 0 => {
                    tracing::info!(
                        written = run.written,
                        failed = run.failed,
                        "audit checkpoints"
                    )
                }
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "audit checkpoint run failed"),
            }
            if stop {
                break;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn the_key_is_created_0600_once_and_read_back_and_an_open_file_is_refused() {
        let parent = tempfile::tempdir().unwrap();
        let config = Config {
            data_dir: parent.path().join("data"),
            ..Config::default()
        };
        let first = prepare(&config).unwrap().public_key();
        let path = config.audit_checkpoint_key();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(config.audit_checkpoint_dir().is_dir());
        assert_eq!(prepare(&config).unwrap().public_key(), first);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let refused = prepare(&config).unwrap_err();
        assert!(format!("{refused:#}").contains("chmod 600"), "{refused:#}");
    }
}

//! Creating a cluster with `initdb`: run as a child of the runtime (it takes seconds), never
//! blocking an executor thread.

use std::path::Path;
use std::process::Stdio;

use tokio::process::Command;

use super::error::{io_error, ClusterError};
use super::run_as::RunAs;
use super::{ClusterOptions, SUPERUSER};

/// Creates the cluster in `options.dir` (which must exist and be empty).
pub(super) async fn run_initdb(
    bindir: &Path,
    options: &ClusterOptions,
    run_as: Option<&RunAs>,
) -> Result<(), ClusterError> {
    let mut command = std::process::Command::new(bindir.join("initdb"));
    command
        .arg("--pgdata")
        .arg(&options.dir)
        .args([
            "--username",
            SUPERUSER,
            "--auth",
            "trust",
            "--encoding",
            "UTF8",
            "--locale",
            "C",
        ])
        .stdin(Stdio::null());
    if !options.durable {
        command.arg("--no-sync");
    }
    if let Some(user) = run_as {
        user.apply(&mut command);
    }
    let output = Command::from(command)
        .output()
        .await
        .map_err(io_error("running initdb"))?;
    if !output.status.success() {
        let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stderr));
        return Err(ClusterError::InitdbFailed {
            status: output.status,
            output: text,
        });
    }
    Ok(())
}

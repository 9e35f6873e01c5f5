//! Test-only Node packages (the OpenID provider, the accessibility engine), each installed
//! with `npm ci` from the lock file committed next to its `package.json`. CI installs them
//! beforehand, bounded, in `.ci/run`; a developer's first test run does it here.

use std::path::{Path, PathBuf};

use tokio::process::Command;
use tokio::sync::Mutex;

/// `tests/<name>`, the directory of one test-only Node project.
pub fn project_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(name)
}

/// Runs `npm ci` in `dir` unless `node_modules/<package>` is there. One install at a time:
/// two tests of one binary never run npm in the same directory together.
pub async fn ensure_installed(dir: &Path, package: &str) {
    static INSTALLING: Mutex<()> = Mutex::const_new(());
    let _one_at_a_time = INSTALLING.lock().await;
    if dir.join("node_modules").join(package).exists() {
        return;
    }
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(dir)
        .status()
        .await
        .expect("npm runs");
    assert!(status.success(), "npm ci in {}", dir.display());
}

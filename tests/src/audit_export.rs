//! Runs the standalone verifier of audit exports, `tools/verify_audit_export.py` (Python standard
//! library and openssl), as an auditor would: outside fleetplane.

use std::path::Path;

/// Runs the script on `export` with the pinned `pem`: (exit code, stdout).
pub fn python_verify(export: &Path, pem: &Path) -> (i32, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/verify_audit_export.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .arg(export)
        .arg("--public-key")
        .arg(pem)
        .output()
        .expect("python3 runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

//! Where the PostgreSQL server binaries are.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::Command;

use super::error::ClusterError;

/// The directory with `initdb` and `postgres`: the configured one, else `pg_config --bindir`,
/// else the newest `/usr/lib/postgresql/<major>/bin` (Debian's layout).
pub async fn find_bindir(configured: Option<&Path>) -> Result<PathBuf, ClusterError> {
    let has_server = |dir: &Path| dir.join("postgres").is_file() && dir.join("initdb").is_file();
    if let Some(dir) = configured {
        return if has_server(dir) {
            Ok(dir.to_path_buf())
        } else {
            Err(ClusterError::BinariesNotFound {
                searched: dir.display().to_string(),
            })
        };
    }
    let from_pg_config = Command::new("pg_config")
        .arg("--bindir")
        .stdin(Stdio::null())
        .output()
        .await
        .ok()
        .filter(|out| out.status.success())
        .map(|out| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    if let Some(dir) = from_pg_config.filter(|dir| has_server(dir)) {
        return Ok(dir);
    }
    newest_debian_bindir()
        .filter(|dir| has_server(dir))
        .ok_or_else(|| ClusterError::BinariesNotFound {
            searched: "`pg_config --bindir` and /usr/lib/postgresql/*/bin".into(),
        })
}

fn newest_debian_bindir() -> Option<PathBuf> {
    let entries = fs::read_dir("/usr/lib/postgresql").ok()?;
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let major: u32 = entry.file_name().to_str()?.parse().ok()?;
            Some((major, entry.path().join("bin")))
        })
        .max_by_key(|(major, _)| *major)
        .map(|(_, bin)| bin)
}

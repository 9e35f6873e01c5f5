//! The cluster directory: creating it, handing it to the cluster's user, the socket and log
//! paths inside it, and the log's tail for error messages.

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::error::{io_error, ClusterError};
use super::run_as::RunAs;
use super::{MAX_SOCKET_PATH, SOCKET_PORT};

pub(super) fn prepare_dir(dir: &Path, run_as: Option<&RunAs>) -> Result<(), ClusterError> {
    if let Some(parent) = dir.parent() {
        if parent.exists() {
            check_trusted(parent, &metadata(parent)?, run_as)?;
        }
        fs::create_dir_all(parent).map_err(io_error(format!("creating {}", parent.display())))?;
    }
    if dir.exists() {
        check_trusted_tree(dir, run_as)?;
    }
    if !dir.exists() {
        fs::create_dir(dir).map_err(io_error(format!("creating {}", dir.display())))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(io_error(format!("restricting {}", dir.display())))?;
    }
    if let Some(user) = run_as {
        user.chown(dir)?;
        check_traversable(dir, user)?;
    }
    Ok(())
}

/// Refuses a cluster directory in which anything (the directory, a file, a subdirectory, at any
/// depth) is owned by someone other than this process's user, the cluster's user or root, or is
/// writable by group or others. Symbolic links are not followed (their own owner is checked);
/// sockets are skipped: postgres makes its socket 0777 inside the 0700 directory.
pub(super) fn check_trusted_tree(dir: &Path, run_as: Option<&RunAs>) -> Result<(), ClusterError> {
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        let meta = metadata(&path)?;
        if meta.file_type().is_socket() {
            continue;
        }
        check_trusted(&path, &meta, run_as)?;
        if meta.is_dir() {
            let entries =
                fs::read_dir(&path).map_err(io_error(format!("reading {}", path.display())))?;
            for entry in entries {
                let entry = entry.map_err(io_error(format!("reading {}", path.display())))?;
                pending.push(entry.path());
            }
        }
    }
    Ok(())
}

fn metadata(path: &Path) -> Result<fs::Metadata, ClusterError> {
    fs::symlink_metadata(path).map_err(io_error(format!("reading {}", path.display())))
}

fn check_trusted(
    path: &Path,
    meta: &fs::Metadata,
    run_as: Option<&RunAs>,
) -> Result<(), ClusterError> {
    let euid = nix::unistd::geteuid().as_raw();
    let owner_ok =
        meta.uid() == euid || meta.uid() == 0 || run_as.is_some_and(|u| u.uid == meta.uid());
    // A symbolic link's own mode is always 0777 and never used.
    let mode = meta.mode() & 0o7777;
    let mode_ok = meta.file_type().is_symlink() || mode & 0o022 == 0;
    if owner_ok && mode_ok {
        return Ok(());
    }
    let owners = match run_as {
        Some(user) => format!(
            "uid {euid} (this process), uid {} ({}) or root",
            user.uid, user.name
        ),
        None => format!("uid {euid} (this process) or root"),
    };
    Err(ClusterError::UntrustedPath {
        path: path.to_path_buf(),
        found: format!("owned by uid {} with mode {mode:o}", meta.uid()),
        required: format!("owned by {owners}, and not writable by group or others"),
    })
}

/// Every directory above the cluster must let its user pass, or postgres fails obscurely.
fn check_traversable(dir: &Path, user: &RunAs) -> Result<(), ClusterError> {
    let absolute =
        fs::canonicalize(dir).map_err(io_error(format!("resolving {}", dir.display())))?;
    for ancestor in absolute.ancestors().skip(1) {
        let meta =
            fs::metadata(ancestor).map_err(io_error(format!("reading {}", ancestor.display())))?;
        let mode = meta.mode();
        let passable = mode & 0o001 != 0
            || (meta.uid() == user.uid && mode & 0o100 != 0)
            || (meta.gid() == user.gid && mode & 0o010 != 0);
        if !passable {
            return Err(ClusterError::DirectoryNotReachable {
                user: user.name.clone(),
                blocked: ancestor.to_path_buf(),
            });
        }
    }
    Ok(())
}

/// `dir` made absolute against the current directory (without resolving symbolic links).
pub(super) fn absolute(dir: &Path) -> Result<PathBuf, ClusterError> {
    std::path::absolute(dir).map_err(io_error(format!("resolving {}", dir.display())))
}

pub(super) fn socket_path(dir: &Path) -> PathBuf {
    dir.join(format!(".s.PGSQL.{SOCKET_PORT}"))
}

pub(super) fn check_socket_path(dir: &Path) -> Result<(), ClusterError> {
    let path = std::path::absolute(socket_path(dir)).unwrap_or_else(|_| socket_path(dir));
    let len = path.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        return Err(ClusterError::SocketPathTooLong { path, len });
    }
    Ok(())
}

/// Inside the cluster directory, so a throw-away cluster leaves nothing behind.
pub(super) fn log_path(dir: &Path) -> PathBuf {
    dir.join("fleetd-postgres.log")
}

pub(super) fn start_failed(reason: String, log: &Path) -> ClusterError {
    ClusterError::StartFailed {
        reason,
        log: log.to_path_buf(),
        log_tail: tail(log, 4096),
    }
}

fn tail(path: &Path, max_bytes: u64) -> String {
    let Ok(mut file) = fs::File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(max_bytes)));
    let mut bytes = Vec::new();
    let _ = file.read_to_end(&mut bytes);
    String::from_utf8_lossy(&bytes).into_owned()
}

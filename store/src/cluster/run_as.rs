//! The system user the cluster runs as when this process is root (PostgreSQL refuses root).

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use super::error::{io_error, ClusterError};

/// The system user the cluster runs as when this process is root.
#[derive(Clone, Debug)]
pub struct RunAs {
    /// User name.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
}

impl RunAs {
    /// `None` when this process is not root (the cluster runs as us); the `postgres` user when
    /// it is.
    pub fn detect() -> Result<Option<RunAs>, ClusterError> {
        if !nix::unistd::geteuid().is_root() {
            return Ok(None);
        }
        let user = nix::unistd::User::from_name("postgres")
            .map_err(|e| io_error("looking up the postgres system user")(e.into()))?
            .ok_or(ClusterError::RootWithoutPostgresUser)?;
        Ok(Some(RunAs {
            name: user.name,
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
        }))
    }

    /// Hands `path` to this user.
    pub fn chown(&self, path: &Path) -> Result<(), ClusterError> {
        std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid)).map_err(io_error(format!(
            "handing {} to user {}",
            path.display(),
            self.name
        )))
    }

    /// Makes `command` run as this user.
    pub(super) fn apply(&self, command: &mut Command) {
        command.uid(self.uid).gid(self.gid);
    }
}

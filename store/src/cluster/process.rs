//! The running `postgres`: started under a stop-on-EOF wrapper and watched by a thread of its
//! own.
//!
//! This stays on `std::process`: the child is waited for on a dedicated supervisor thread rather
//! than on the runtime that started it, because a cluster may outlive that runtime (the tests'
//! shared cluster is started by whichever `#[tokio::test]` runtime comes first and serves the
//! others). A tokio child would be reaped, and its exit reported, only while that runtime lives.
//! Spawning itself (fork and exec) does not block.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};

use tokio::sync::watch;

use super::error::{io_error, ClusterError};
use super::run_as::RunAs;
use super::{ClusterOptions, SOCKET_PORT};

/// Runs `postgres` under the stop-on-EOF wrapper (see the module docs). Stdin of a background
/// job is /dev/null in a non-interactive shell, so the pipe is kept on descriptor 3 for the reader.
const WRAPPER: &str = r#"exec 3<&0
"$@" 3<&- &
pg=$!
(read -r _ <&3; kill -INT "$pg" 2>/dev/null) &
wait "$pg"
status=$?
[ -z "$FLEET_REMOVE_WHEN_STOPPED" ] || rm -rf -- "$FLEET_REMOVE_WHEN_STOPPED"
exit "$status"
"#;

pub(super) fn spawn_postgres(
    bindir: &Path,
    options: &ClusterOptions,
    run_as: Option<&RunAs>,
    log: &Path,
) -> Result<(ChildStdin, watch::Receiver<Option<String>>), ClusterError> {
    let log_file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(io_error(format!("opening {}", log.display())))?;
    let log_file_err = log_file
        .try_clone()
        .map_err(io_error("duplicating the log handle"))?;
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(WRAPPER)
        .arg("fleet-postgres")
        .arg(bindir.join("postgres"))
        .arg("-D")
        .arg(&options.dir)
        .arg("-k")
        .arg(&options.dir)
        .args(["-p", &SOCKET_PORT.to_string()])
        .args([
            "-c",
            "listen_addresses=",
            "-c",
            "unix_socket_permissions=0700",
            // No JIT: it writes machine code into memory it then makes executable, which
            // fleetd's systemd unit forbids (MemoryDenyWriteExecute=yes) for fleetd and the
            // cluster it starts; fleetd's queries are short, where JIT only costs.
            "-c",
            "jit=off",
        ]);
    if options.remove_when_stopped {
        command.env("FLEET_REMOVE_WHEN_STOPPED", &options.dir);
    }
    if !options.durable {
        command.args([
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
        ]);
    }
    // A process group of its own: a terminal's Ctrl-C reaches fleetd, which then stops the cluster
    // in order, instead of reaching postgres first.
    command
        .process_group(0)
        .stdin(Stdio::piped())
        .stdout(Stdio::from(log_file))
        .stderr(Stdio::from(log_file_err));
    if let Some(user) = run_as {
        user.apply(&mut command);
    }
    let mut child = command.spawn().map_err(io_error("starting postgres"))?;
    let stop_pipe = child.stdin.take().expect("stdin was piped");
    let (tx, rx) = watch::channel(None);
    std::thread::Builder::new()
        .name("postgres-supervisor".into())
        .spawn(move || watch_exit(child, tx))
        .map_err(io_error("starting the supervisor thread"))?;
    Ok((stop_pipe, rx))
}

fn watch_exit(mut child: Child, exited: watch::Sender<Option<String>>) {
    let description = match child.wait() {
        Ok(status) => status.to_string(),
        Err(e) => format!("unknown: {e}"),
    };
    exited.send_replace(Some(description));
}

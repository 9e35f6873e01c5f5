//! The outbox as the async agent uses it: every call that touches the disk (open and its
//! recovery scan, append and its fdatasync, ack and its meta-file replacement, reading
//! pending records, the final flush) runs on tokio's blocking pool, so the one runtime
//! thread keeps serving the MQTT event loop and the timers while the flash is slow.
//!
//! Crash safety is the outbox's own (see [`crate::outbox`]) and is unchanged: the same
//! calls run in the same order, one at a time, and the agent awaits each to completion
//! before it goes on; in particular a record is published only after `pending` (which
//! flushes first) has returned it. The outbox sits behind a mutex only so that it can be
//! lent to the blocking pool; the runtime thread never takes that lock. What the agent
//! reads between calls (depth, next and last-acked sequence numbers) comes from a
//! [`Snapshot`] taken at the end of each call.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::outbox::{Depth, Epoch, OpenReport, Outbox, OutboxConfig, Seq};

use super::RunError;

/// The outbox's counters as of the end of the last call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Snapshot {
    /// Records and bytes not yet acknowledged.
    pub(super) depth: Depth,
    /// The sequence number the next append gets.
    pub(super) next_seq: Seq,
    /// The highest acknowledged sequence number.
    pub(super) last_acked: Option<Seq>,
    /// The sequence space.
    pub(super) epoch: Epoch,
    /// Drop reports wait to be turned into events.
    pub(super) drops_waiting: bool,
}

impl Snapshot {
    fn of(outbox: &Outbox) -> Self {
        Self {
            depth: outbox.depth(),
            next_seq: outbox.next_seq(),
            last_acked: outbox.last_acked(),
            epoch: outbox.epoch(),
            drops_waiting: !outbox.drop_reports().is_empty(),
        }
    }

    /// The last sequence number appended (0 before the first).
    pub(super) fn last_appended(&self) -> Seq {
        self.next_seq - 1
    }
}

/// The outbox, lent to the blocking pool for every call.
pub(super) struct Queue {
    outbox: Arc<Mutex<Outbox>>,
    snapshot: Snapshot,
}

impl Queue {
    /// Opens (and recovers) the outbox in `dir` on the blocking pool.
    pub(super) async fn open(
        dir: PathBuf,
        config: OutboxConfig,
    ) -> Result<(Self, OpenReport), RunError> {
        let opened = tokio::task::spawn_blocking(move || Outbox::open(dir, config))
            .await
            .map_err(|err| RunError::Fatal(format!("opening the outbox: {err}")))?;
        let (outbox, report) = opened.map_err(|err| RunError::Fatal(err.to_string()))?;
        let queue = Self {
            snapshot: Snapshot::of(&outbox),
            outbox: Arc::new(Mutex::new(outbox)),
        };
        Ok((queue, report))
    }

    /// The counters as of the end of the last call (no I/O, no lock).
    pub(super) fn snapshot(&self) -> Snapshot {
        self.snapshot
    }

    /// Runs `op` on the outbox on the blocking pool, waits for it, and refreshes the
    /// snapshot. Fails only if `op` panicked (the outbox is then not used again).
    pub(super) async fn with<R, F>(&mut self, op: F) -> Result<R, RunError>
    where
        F: FnOnce(&mut Outbox) -> R + Send + 'static,
        R: Send + 'static,
    {
        let outbox = Arc::clone(&self.outbox);
        let (result, snapshot) = tokio::task::spawn_blocking(move || {
            let mut outbox = outbox.lock().map_err(|_| "an earlier call panicked")?;
            let result = op(&mut outbox);
            Ok::<_, &str>((result, Snapshot::of(&outbox)))
        })
        .await
        .map_err(|err| RunError::Fatal(format!("outbox: {err}")))?
        .map_err(|why| RunError::Fatal(format!("outbox: {why}")))?;
        self.snapshot = snapshot;
        Ok(result)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::outbox::FsyncPolicy;

    async fn queue(dir: &std::path::Path) -> Queue {
        let config = OutboxConfig {
            fsync: FsyncPolicy::Always,
            ..OutboxConfig::default()
        };
        Queue::open(dir.to_owned(), config).await.unwrap().0
    }

    #[tokio::test(flavor = "current_thread")]
    async fn outbox_calls_run_off_the_runtime_thread() {
        let tmp = tempfile::tempdir().unwrap();
        let mut queue = queue(tmp.path()).await;
        let runtime_thread = std::thread::current().id();
        let call_thread = queue
            .with(|outbox| {
                outbox.append(b"x").unwrap();
                std::thread::current().id()
            })
            .await
            .unwrap();
        assert_ne!(call_thread, runtime_thread);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_runtime_thread_keeps_running_tasks_during_a_slow_call() {
        let tmp = tempfile::tempdir().unwrap();
        let mut queue = queue(tmp.path()).await;
        let ticks = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let ticker = tokio::spawn({
            let ticks = Arc::clone(&ticks);
            async move {
                loop {
                    ticks.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        });
        let (started, finished) = (
            Arc::new(std::sync::Barrier::new(2)),
            Arc::new(std::sync::Barrier::new(2)),
        );
        let call = queue.with({
            let (started, finished) = (Arc::clone(&started), Arc::clone(&finished));
            move |outbox| {
                started.wait();
                // Held here until the test has seen the ticker run meanwhile.
                finished.wait();
                outbox.append(b"slow").unwrap()
            }
        });
        let watch = async {
            tokio::task::spawn_blocking(move || started.wait())
                .await
                .unwrap();
            let before = ticks.load(std::sync::atomic::Ordering::SeqCst);
            while ticks.load(std::sync::atomic::Ordering::SeqCst) < before + 3 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            tokio::task::spawn_blocking(move || finished.wait())
                .await
                .unwrap();
        };
        let (seq, ()) = tokio::join!(call, watch);
        assert_eq!(seq.unwrap(), 1);
        ticker.abort();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_snapshot_follows_appends_and_acks_and_survives_reopening() {
        let tmp = tempfile::tempdir().unwrap();
        let mut queue = queue(tmp.path()).await;
        assert_eq!(queue.snapshot().last_appended(), 0);
        queue
            .with(|outbox| {
                for _ in 0..3 {
                    outbox.append(b"record").unwrap();
                }
            })
            .await
            .unwrap();
        let snapshot = queue.snapshot();
        assert_eq!((snapshot.next_seq, snapshot.depth.records), (4, 3));
        queue.with(|outbox| outbox.ack(2)).await.unwrap().unwrap();
        assert_eq!(queue.snapshot().last_acked, Some(2));
        assert_eq!(queue.snapshot().depth.records, 1);
        queue.with(Outbox::sync).await.unwrap().unwrap();
        drop(queue);
        let reopened = self::queue(tmp.path()).await;
        assert_eq!(reopened.snapshot().last_acked, Some(2));
        assert_eq!(reopened.snapshot().last_appended(), 3);
    }
}

//! The collection schedules: telemetry on a jittered interval, patch status at start, on
//! its interval and when the package database changes (polled by modification time), the
//! package-manager commands on the blocking pool, and collector problems reported only
//! when they change.

use std::time::SystemTime;

use tokio::task::{JoinError, JoinHandle};
use tokio::time::Instant;
use tracing::{debug, info};
use wire::UnixMillis;

use super::{Agent, RunError};
use crate::collect::packages::{self, collect_patch_status};
use crate::collect::system::collect_system;
use crate::records;

/// A patch-status collection on the blocking pool: the status and when the lists were
/// refreshed.
pub(super) type PatchJob = JoinHandle<(packages::PatchStatus, Option<UnixMillis>)>;

/// How a [`PatchJob`] ended.
pub(super) type PatchResult = Result<(packages::PatchStatus, Option<UnixMillis>), JoinError>;

/// Waits for the running patch job, if any (forever when there is none, for `select!`).
pub(super) async fn join_patch(job: &mut Option<PatchJob>) -> PatchResult {
    match job {
        Some(handle) => {
            let result = handle.await;
            *job = None;
            result
        }
        None => std::future::pending().await,
    }
}

impl Agent {
    /// Appends a collector-error event when the set of problems of `collector` changed
    /// (so a container without thermal zones does not report it every minute).
    pub(super) async fn report_problems(
        &mut self,
        collector: &'static str,
        problems: Vec<String>,
    ) -> Result<(), RunError> {
        if self.last_problems.get(collector) == Some(&problems) {
            return Ok(());
        }
        if !problems.is_empty() {
            for problem in &problems {
                debug!(collector, "{problem}");
            }
            let message = format!("{} problem(s); first: {}", problems.len(), problems[0]);
            self.append(records::collector_error(collector, &message))
                .await?;
        }
        self.last_problems.insert(collector, problems);
        Ok(())
    }

    pub(super) async fn collect_telemetry(&mut self) -> Result<(), RunError> {
        let metrics = collect_system(&self.root, &mut self.cpu);
        self.append(records::telemetry(&metrics)).await?;
        self.report_problems("system", metrics.problems).await
    }

    pub(super) fn package_db_stamp(&self) -> Vec<Option<SystemTime>> {
        self.manager
            .map(|manager| packages::database_stamp(&self.root, manager))
            .unwrap_or_default()
    }

    pub(super) async fn poll_package_db(&mut self) {
        self.next_patch_poll = Instant::now() + self.config.patch.poll;
        let stamp = self.package_db_stamp();
        let changed = stamp != self.db_stamp;
        if changed || Instant::now() >= self.next_patch {
            if changed {
                info!("package database changed: collecting patch status");
            }
            self.db_stamp = stamp;
            self.start_patch_job().await;
        }
    }

    pub(super) async fn start_patch_job(&mut self) {
        self.next_patch = Instant::now() + self.config.patch.interval;
        if self.patch_job.is_some() {
            return;
        }
        let Some(manager) = self.manager else {
            let problem = "no supported package manager (dpkg, apk, opkg) found".to_owned();
            // As before the split: an outbox failure here surfaces at the next append.
            let _ = self.report_problems("patch", vec![problem]).await;
            return;
        };
        let (root, runner) = (self.root.clone(), self.runner);
        self.patch_job = Some(tokio::task::spawn_blocking(move || {
            let status = collect_patch_status(&root, manager, &runner);
            let refreshed = packages::lists_refreshed_at(&root, manager).map(UnixMillis::from);
            (status, refreshed)
        }));
    }

    pub(super) async fn collect_patch_now(&mut self) -> Result<(), RunError> {
        self.start_patch_job().await;
        if self.patch_job.is_some() {
            let result = join_patch(&mut self.patch_job).await;
            self.on_patch_done(result).await?;
        }
        Ok(())
    }

    pub(super) async fn on_patch_done(&mut self, result: PatchResult) -> Result<(), RunError> {
        let (status, refreshed) = match result {
            Ok(done) => done,
            Err(err) => {
                let problem = format!("patch collection failed: {err}");
                return self.report_problems("patch", vec![problem]).await;
            }
        };
        self.append(records::patch_status(&status, refreshed))
            .await?;
        let problems = status.problems.iter().map(|p| format!("{p:?}")).collect();
        self.report_problems("patch", problems).await
    }
}

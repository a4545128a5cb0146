//! The job registry: one module per job, each implementing [`Job`], all
//! registered in [`Registry::standard`]. A job gets its [`JobContext`] (the
//! JobHistory row, payload, JobConfig, organization, source configs, database
//! pool, cancellation token) and runs inside the `job` span, so every log line
//! it writes has the FAQ's `[JobName:ORG:<JobHistory ID>]` shape.
//!
//! Jobs stop at their next await point once `ctx.cancel` fires; the runner
//! aborts a job that does not stop within a grace period.

pub mod asset_sync;
pub mod bulk_update;
pub mod cloud_decom;
pub mod diagnostic;
pub mod exception;
pub mod launch_intent;
pub mod rescan;
pub mod rescan_queue;
pub mod scan_close;
pub mod scan_sync;
pub mod ticket_sync;
pub mod ticketing;
pub mod vuln_sync;

use std::collections::HashMap;
use std::sync::Arc;

use aegis_shared::model::job_config::JobConfig;
use aegis_shared::model::job_history::JobHistory;
use aegis_shared::model::organization::Organization;
use aegis_shared::model::source_config::SourceConfig;
use aegis_shared::model::ModelError;
use aegis_shared::ratelimit::settings::LimitsCache;
use aegis_shared::ratelimit::Limiter;
use aegis_shared::source_http::SourceClient;
use aegis_shared::Settings;
use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use sqlx::MySqlPool;
use tokio_util::sync::CancellationToken;

/// Why a job failed; the text becomes JobHistory.LastError.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("malformed payload for {job}: {reason}")]
    BadPayload { job: String, reason: String },
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
    #[error("{0:#}")]
    Failed(#[from] anyhow::Error),
    #[error("cancelled")]
    Cancelled,
}

/// Everything a job run needs. Owned, so the job's future is `'static`.
/// (The scanner and ticketing jobs read the config and source configs;
/// DiagnosticJob does not.)
#[derive(Clone)]
#[allow(dead_code)]
pub struct JobContext {
    pub history: JobHistory,
    pub config: Option<JobConfig>,
    pub org: Option<Organization>,
    pub sources_in: Vec<SourceConfig>,
    pub sources_out: Vec<SourceConfig>,
    pub pool: MySqlPool,
    pub settings: Arc<Settings>,
    pub worker_id: String,
    /// The claim's attempt number (1 for the first run of this row).
    pub attempt: i32,
    pub cancel: CancellationToken,
    /// The fleet-wide rate limiter and the SQL-backed limits every vendor client uses.
    pub limiter: Limiter,
    pub limits: LimitsCache,
}

impl JobContext {
    /// Parses the JobHistory payload (`{}` when empty) into the job's payload type.
    pub fn payload<T: DeserializeOwned>(&self) -> Result<T, JobError> {
        let text = self
            .history
            .payload
            .as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .unwrap_or("{}");
        serde_json::from_str(text).map_err(|e| JobError::BadPayload {
            job: self.history.job_name.clone(),
            reason: e.to_string(),
        })
    }

    /// The rate-limited HTTP client of one of this job's source configs.
    pub fn client(&self, sc: &SourceConfig) -> Result<SourceClient, JobError> {
        SourceClient::new(
            sc,
            self.settings.keyring.as_ref(),
            self.limiter.clone(),
            self.limits.clone(),
        )
        .map_err(|e| JobError::Config(e.to_string()))
    }

    /// The job's scanner (its first in-source): the source config, the
    /// scanner's Source.ID and a rate-limited client for it.
    pub fn scanner_in(
        &self,
        job: &str,
    ) -> Result<
        (
            SourceConfig,
            String,
            Box<dyn crate::vendors::scanner::Scanner>,
        ),
        JobError,
    > {
        let sc = self
            .sources_in
            .first()
            .cloned()
            .ok_or_else(|| JobError::Config(format!("{job} needs a scanner in-source")))?;
        let source_id = sc.source_id.clone().ok_or_else(|| {
            JobError::Config(format!(
                "source config {} has no SourceID (scanner Source.ID)",
                sc.id
            ))
        })?;
        let scanner = crate::vendors::scanner::for_source(&sc, self.client(&sc)?)
            .map_err(|e| JobError::Failed(e.into()))?;
        Ok((sc, source_id, scanner))
    }

    /// Waits `duration`, or returns `Err(Cancelled)` as soon as the job is cancelled.
    pub async fn sleep(&self, duration: std::time::Duration) -> Result<(), JobError> {
        tokio::select! {
            _ = tokio::time::sleep(duration) => Ok(()),
            _ = self.cancel.cancelled() => Err(JobError::Cancelled),
        }
    }
}

/// One kind of job.
pub trait Job: Send + Sync + 'static {
    /// The `Job.Struct` name this implementation runs.
    fn name(&self) -> &'static str;
    /// Whether a run needs a JobConfig with in and out source configs
    /// (DiagnosticJob does not).
    fn needs_sources(&self) -> bool {
        true
    }
    /// Runs once. Return an error to end the row as ERROR with its text.
    fn run(&self, ctx: JobContext) -> BoxFuture<'static, Result<(), JobError>>;
}

/// Job implementations by name.
#[derive(Clone, Default)]
pub struct Registry {
    jobs: HashMap<&'static str, Arc<dyn Job>>,
}

impl Registry {
    /// Every job this build of the worker can run.
    pub fn standard() -> Self {
        let mut r = Registry::default();
        r.register(diagnostic::DiagnosticJob);
        r.register(ticketing::TicketingJob);
        r.register(ticket_sync::TicketSyncJob);
        r.register(exception::ExceptionJob);
        r.register(bulk_update::BulkUpdateJob);
        r.register(asset_sync::AssetSyncJob);
        r.register(vuln_sync::VulnSyncJob);
        r.register(rescan_queue::RescanQueueJob);
        r.register(rescan::RescanJob);
        r.register(scan_sync::ScanSyncJob);
        r.register(scan_close::ScanCloseJob);
        r
    }

    pub fn register(&mut self, job: impl Job) {
        self.jobs.insert(job.name(), Arc::new(job));
    }

    pub fn get(&self, name: &str) -> Option<Arc<dyn Job>> {
        self.jobs.get(name).cloned()
    }

    pub fn names(&self) -> Vec<&'static str> {
        let mut n: Vec<_> = self.jobs.keys().copied().collect();
        n.sort_unstable();
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_the_coordinator_does_not_dispatch_are_the_ones_no_worker_runs() {
        let r = Registry::standard();
        for name in aegis_shared::model::job::NOT_DISPATCHED {
            assert!(
                r.get(name).is_none(),
                "{name} is implemented now: remove it from job::NOT_DISPATCHED"
            );
        }
    }
}

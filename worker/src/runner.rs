//! Running claimed jobs: loading their context, running them under a panic
//! guard and a cancellation token, heartbeating their leases, and writing the
//! final status only while the row is still ours.
//!
//! Invariants:
//! * A panic or a lost worker is never recorded as success.
//! * A cancel request (StatusId -1) is seen by the heartbeat within
//!   `AEGIS_HEARTBEAT_INTERVAL`; the job is then stopped at its next await point,
//!   or aborted after [`CANCEL_GRACE`].
//! * If the lease cannot be extended for longer than the lease itself (database
//!   unreachable), the job is stopped: the reaper may already have handed the row
//!   to another worker.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use aegis_shared::model::job_history::{self, Claim, Finished, Outcome};
use aegis_shared::model::{job_config, organization, source_config, ModelError};
use aegis_shared::ratelimit::settings::LimitsCache;
use aegis_shared::ratelimit::Limiter;
use aegis_shared::Settings;
use sqlx::MySqlPool;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::jobs::{JobContext, JobError, Registry};

/// How long a cancelled job may take to reach an await point before it is aborted.
pub const CANCEL_GRACE: Duration = Duration::from_secs(2);

pub static CLAIMS: LazyLock<prometheus::IntCounterVec> = LazyLock::new(|| {
    aegis_shared::metrics::counter_vec(
        "aegis_job_claims_total",
        "Job messages by claim result: won, or not dispatchable (duplicate, cancelled, finished)",
        &["job", "result"],
    )
});
pub static COMPLETED: LazyLock<prometheus::IntCounterVec> = LazyLock::new(|| {
    aegis_shared::metrics::counter_vec(
        "aegis_jobs_finished_total",
        "Job runs finished, by job and status",
        &["job", "status"],
    )
});
pub static DURATION: LazyLock<prometheus::HistogramVec> = LazyLock::new(|| {
    aegis_shared::metrics::histogram_vec(
        "aegis_job_duration_seconds",
        "Job run durations",
        &["job"],
        vec![0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0, 3600.0],
    )
});

/// Why a running job's token was cancelled.
const STOP_NONE: u8 = 0;
const STOP_CANCEL_REQUESTED: u8 = 1;
const STOP_LEASE_LOST: u8 = 2;
const STOP_SHUTDOWN: u8 = 3;

struct Running {
    cancel: CancellationToken,
    stop: Arc<AtomicU8>,
}

/// The jobs this worker is running, by JobHistory ID.
#[derive(Clone, Default)]
pub struct RunningJobs(Arc<Mutex<HashMap<String, Running>>>);

impl RunningJobs {
    fn insert(&self, id: &str, cancel: CancellationToken, stop: Arc<AtomicU8>) {
        if let Ok(mut m) = self.0.lock() {
            m.insert(id.to_string(), Running { cancel, stop });
        }
    }
    fn remove(&self, id: &str) {
        if let Ok(mut m) = self.0.lock() {
            m.remove(id);
        }
    }
    pub fn ids(&self) -> Vec<String> {
        self.0
            .lock()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }
    pub fn len(&self) -> usize {
        self.0.lock().map(|m| m.len()).unwrap_or(0)
    }
    /// Stops one job, recording why (the first reason wins).
    fn stop(&self, id: &str, reason: u8) {
        if let Ok(m) = self.0.lock() {
            if let Some(r) = m.get(id) {
                let _ =
                    r.stop
                        .compare_exchange(STOP_NONE, reason, Ordering::SeqCst, Ordering::SeqCst);
                r.cancel.cancel();
            }
        }
    }
    /// Stops every job (shutdown grace over, or lease lost).
    pub fn stop_all_for_shutdown(&self) {
        for id in self.ids() {
            self.stop(&id, STOP_SHUTDOWN);
        }
    }
    fn stop_all_lease_lost(&self) {
        for id in self.ids() {
            self.stop(&id, STOP_LEASE_LOST);
        }
    }
}

/// Extends the leases of running jobs and notices cancel requests, forever.
pub async fn heartbeat(
    pool: MySqlPool,
    settings: Arc<Settings>,
    running: RunningJobs,
    stop: CancellationToken,
) {
    let w = &settings.worker;
    let mut last_ok = Instant::now();
    let mut failing = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(w.heartbeat_interval) => {}
            _ = stop.cancelled() => return,
        }
        let ids = running.ids();
        if ids.is_empty() {
            last_ok = Instant::now();
            continue;
        }
        match job_history::heartbeat(&pool, &w.worker_id, &ids, w.lease).await {
            Ok((owned, cancelled)) => {
                last_ok = Instant::now();
                if failing {
                    tracing::info!("Job Runner: heartbeats succeed again");
                    failing = false;
                }
                for id in &ids {
                    if !owned.contains(id) {
                        tracing::warn!(job_id = %id, "Job Runner: lost the lease of job [{id}] (reaped or taken over); stopping it");
                        running.stop(id, STOP_LEASE_LOST);
                    }
                }
                for id in cancelled {
                    tracing::info!(job_id = %id, "Dispatcher: Cancelling Job with Id [{id}]");
                    running.stop(&id, STOP_CANCEL_REQUESTED);
                }
            }
            Err(e) => {
                if !failing {
                    tracing::error!(error = %e, "Job Runner: cannot extend job leases");
                    failing = true;
                }
                if last_ok.elapsed() > w.lease {
                    tracing::error!("Job Runner: leases expired while the database was unreachable; stopping {} job(s)", ids.len());
                    running.stop_all_lease_lost();
                }
            }
        }
    }
}

/// Loads the JobConfig, organization and source configs of a claimed row.
async fn load_context(
    pool: &MySqlPool,
    settings: &Arc<Settings>,
    vendors: &VendorAccess,
    claim: &Claim,
    needs_sources: bool,
    cancel: CancellationToken,
) -> Result<JobContext, JobError> {
    let history = job_history::by_id(pool, &claim.id).await?;
    let config = match &history.config_id {
        Some(id) => Some(job_config::by_id(pool, id).await?),
        None => None,
    };
    let org = match config.as_ref().and_then(|c| c.organization_id.clone()) {
        Some(org_id) => Some(organization::by_id(pool, &org_id).await?),
        None => None,
    };
    let (mut sources_in, mut sources_out) = (Vec::new(), Vec::new());
    if needs_sources {
        let Some(cfg) = &config else {
            return Err(JobError::Config(format!(
                "{} needs a JobConfig (ConfigID) naming its source configs; job history {} has none",
                history.job_name, history.id
            )));
        };
        let (ins, outs) = (cfg.data_in(), cfg.data_out());
        if ins.is_empty() || outs.is_empty() {
            return Err(JobError::Config(format!(
                "job history {} had an empty data in config or data out config (JobConfig {})",
                history.id, cfg.id
            )));
        }
        for (ids, into) in [(ins, &mut sources_in), (outs, &mut sources_out)] {
            for id in ids {
                let sc = source_config::by_id(pool, &id).await.map_err(|e| match e {
                    ModelError::NotFound { .. } => {
                        JobError::Config(format!("no source config found for [{id}]"))
                    }
                    other => other.into(),
                })?;
                if !sc.active {
                    return Err(JobError::Config(format!(
                        "source config [{id}] is inactive"
                    )));
                }
                into.push(sc);
            }
        }
    }
    Ok(JobContext {
        history,
        config,
        org,
        sources_in,
        sources_out,
        pool: pool.clone(),
        settings: settings.clone(),
        worker_id: claim.worker_id.clone(),
        attempt: claim.attempt,
        cancel,
        limiter: vendors.limiter.clone(),
        limits: vendors.limits.clone(),
    })
}

/// What every job needs to talk to vendors: one limiter and one limits cache per worker.
#[derive(Clone)]
pub struct VendorAccess {
    pub limiter: Limiter,
    pub limits: LimitsCache,
}

/// Turns a panic payload into text.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-text panic payload)".into()
    }
}

/// Runs a claimed row to its end and records the result.
#[allow(clippy::too_many_arguments)]
pub async fn run_claimed(
    pool: MySqlPool,
    settings: Arc<Settings>,
    vendors: VendorAccess,
    registry: Arc<Registry>,
    running: RunningJobs,
    claim: Claim,
    job_name: String,
    span: tracing::Span,
) {
    let cancel = CancellationToken::new();
    let stop = Arc::new(AtomicU8::new(STOP_NONE));
    running.insert(&claim.id, cancel.clone(), stop.clone());
    let started = Instant::now();

    let outcome = async {
        tracing::info!("Job Runner: Pulled job [{}:{}] from job channel - Beginning processing...", job_name, claim.id);
        let Some(job) = registry.get(&job_name) else {
            return Outcome::Failed(format!(
                "no job named {job_name} is implemented in this worker (it runs: {})",
                registry.names().join(", ")
            ));
        };
        let ctx = match load_context(&pool, &settings, &vendors, &claim, job.needs_sources(), cancel.clone()).await {
            Ok(ctx) => ctx,
            Err(e) => return Outcome::Failed(e.to_string()),
        };
        if let Some(org) = &ctx.org {
            tracing::Span::current().record("org", org.code.as_str());
        }
        let mut handle = tokio::spawn(job.run(ctx).instrument(tracing::Span::current()));
        let result = tokio::select! {
            r = &mut handle => r,
            _ = cancel.cancelled() => {
                match tokio::time::timeout(CANCEL_GRACE, &mut handle).await {
                    Ok(r) => r,
                    Err(_) => {
                        tracing::warn!("Job Runner: job did not stop within {CANCEL_GRACE:?} of its cancellation; aborting it");
                        handle.abort();
                        return Outcome::Cancelled;
                    }
                }
            }
        };
        match result {
            Ok(Ok(())) if !cancel.is_cancelled() => Outcome::Completed,
            Ok(Ok(())) | Ok(Err(JobError::Cancelled)) => Outcome::Cancelled,
            Ok(Err(e)) => Outcome::Failed(e.to_string()),
            Err(join) if join.is_panic() => Outcome::Failed(format!("job panicked: {}", panic_message(&*join.into_panic()))),
            Err(_) => Outcome::Cancelled,
        }
    }
    .instrument(span.clone())
    .await;

    let reason = stop.load(Ordering::SeqCst);
    let outcome = match (reason, outcome) {
        (STOP_LEASE_LOST, _) => Outcome::Failed(
            "the worker lost the job's lease (database unreachable or row reaped)".into(),
        ),
        (_, o) => o,
    };
    let recorded = if reason == STOP_SHUTDOWN {
        match retry_db(|| job_history::release(&pool, &claim)).await {
            Ok(true) => span.in_scope(|| tracing::info!("Job Runner: released job [{}] for another worker (shutting down)", claim.id)),
            Ok(false) => {}
            Err(e) => span.in_scope(|| tracing::error!(error = %e, "Job Runner: could not release the job; its lease will expire")),
        }
        None
    } else {
        match retry_db(|| job_history::finish(&pool, &claim, &outcome)).await {
            Ok(f) => Some(f),
            Err(e) => {
                span.in_scope(|| tracing::error!(error = %e, "Job Runner: could not record the job's end; its lease will expire and the reaper decides"));
                None
            }
        }
    };
    DURATION
        .with_label_values(&[&job_name])
        .observe(started.elapsed().as_secs_f64());
    span.in_scope(|| match (&outcome, recorded) {
        (_, Some(Finished::NotOwner)) => tracing::warn!("Job Runner: the row was no longer ours; nothing recorded"),
        (Outcome::Completed, Some(Finished::Rearmed)) => tracing::info!("Job iteration completed; waiting for the next one"),
        (Outcome::Failed(e), Some(Finished::Rearmed)) => tracing::error!(error = %e, "error during job processing; waiting for the next iteration"),
        (Outcome::Completed, Some(_)) => tracing::info!("Job completed successfully"),
        (Outcome::Failed(e), Some(_)) => tracing::error!(error = %e, "Job failed to complete, exited with ERROR status"),
        (Outcome::Cancelled, Some(_)) => tracing::info!("Job cancelled"),
        (_, None) => {}
    });
    if let Some(f) = recorded {
        let status = match f {
            Finished::Final(s) => job_history::status_name(s),
            Finished::Rearmed => "REARMED",
            Finished::NotOwner => "LOST",
        };
        COMPLETED.with_label_values(&[&job_name, status]).inc();
    }
    running.remove(&claim.id);
}

/// Retries a database write a few times with backoff (a restart of MariaDB
/// should not lose a job's result).
async fn retry_db<T, F, Fut>(mut f: F) -> Result<T, ModelError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ModelError>>,
{
    let mut delay = Duration::from_millis(100);
    let mut attempt = 0;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(ModelError::Sql(e)) if attempt < 8 => {
                tracing::warn!(error = %e, "Job Runner: database write failed; retrying in {delay:?}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

//! ScanSyncJob: polls the organization's unfinished scans of one scanner
//! config and moves each one on (spec `original-jobs-rescan.md` §3).
//!
//! In- and out-source: the scanner config. Payload: `{"scan_timeout": <seconds>}`
//! (default 86400); `scheduled_scans` is accepted and ignored (scheduled scans
//! are not tracked yet).
//!
//! * **finished** (Qualys: Finished and processed): the summary is marked
//!   `finished` and its ScanCloseJob queued **in one transaction**, with a
//!   compare-and-set on the status, so a close is never lost and never queued
//!   twice, even with several ScanSyncJobs; the tickets' leases move to it.
//! * **error, canceled, stopped**: the summary takes that status, its tickets
//!   are released (the next RescanQueueJob rescans them), and the scan's
//!   temporary scanner objects are deleted.
//! * **still running after `scan_timeout`**: the scan is abandoned — cancelled
//!   on the scanner (best effort), marked `error`, its tickets released and its
//!   temporary objects deleted — with a log naming the scan and its age.
//! * anything else: the status is written and the scan polled again.
//! * a launch intent (`launching`, no scanner ID yet) is not polled; once its
//!   RescanJob has ended and it is older than `launch_timeout` (payload,
//!   seconds, default 600) its scan is adopted if the scanner has it, or it is
//!   marked `error` and its tickets released (`launch_intent::settle_orphan`).

use aegis_shared::model::job_history::NewJob;
use aegis_shared::model::scan_summary::{self, ScanSummary};
use chrono::Utc;
use futures::future::BoxFuture;
use serde::Deserialize;
use serde_json::Value;

use super::launch_intent;
use super::rescan::{child_config, org, ScanClosePayload};
use super::{Job, JobContext, JobError};
use crate::vendors::scans::{self, ScanLauncher};

const DEFAULT_TIMEOUT_SECS: i64 = 24 * 3600;

#[derive(Debug, Deserialize)]
struct Payload {
    #[serde(default)]
    scan_timeout: Option<i64>,
    #[serde(default)]
    #[allow(dead_code)]
    scheduled_scans: Option<Value>,
}

pub struct ScanSyncJob;

impl Job for ScanSyncJob {
    fn name(&self) -> &'static str {
        "ScanSyncJob"
    }

    fn run(&self, ctx: JobContext) -> BoxFuture<'static, Result<(), JobError>> {
        Box::pin(run(ctx))
    }
}

async fn run(ctx: JobContext) -> Result<(), JobError> {
    let p: Payload = ctx.payload()?;
    let timeout = chrono::Duration::seconds(p.scan_timeout.unwrap_or(DEFAULT_TIMEOUT_SECS).max(1));
    let (org_id, _) = org(&ctx, "ScanSyncJob")?;
    let Some(scanner_sc) = ctx.sources_in.first() else {
        return Err(JobError::Config(
            "ScanSyncJob needs a scanner in-source".into(),
        ));
    };
    let pending = scan_summary::unfinished(&ctx.pool, &org_id, &scanner_sc.id).await?;
    if pending.is_empty() {
        tracing::debug!("no unfinished scans");
        return Ok(());
    }
    let launcher =
        scans::for_source(scanner_sc, ctx.client(scanner_sc)?).map_err(JobError::Config)?;
    tracing::debug!(
        "{} unfinished {} scan(s) to poll",
        pending.len(),
        launcher.vendor().source_name()
    );
    let close_config = child_config(&ctx.pool, &org_id, "ScanCloseJob", &scanner_sc.id).await?;
    for s in &pending {
        if ctx.cancel.is_cancelled() {
            return Err(JobError::Cancelled);
        }
        if s.is_intent() {
            // Not a scan yet: no scanner ID to poll (see launch_intent).
            launch_intent::settle_orphan(&ctx, launcher.as_ref(), s).await;
            continue;
        }
        if let Err(e) = sync_one(&ctx, launcher.as_ref(), s, close_config.as_deref(), timeout).await
        {
            tracing::error!("scan {}: {e}", s.source_key);
        }
    }
    Ok(())
}

async fn sync_one(
    ctx: &JobContext,
    launcher: &dyn ScanLauncher,
    s: &ScanSummary,
    close_config: Option<&str>,
    timeout: chrono::Duration,
) -> Result<(), JobError> {
    let payload: ScanClosePayload =
        serde_json::from_str(&s.scan_close_payload).map_err(|e| JobError::BadPayload {
            job: "ScanSyncJob".into(),
            reason: format!("ScanClosePayload of scan {}: {e}", s.source_key),
        })?;
    let age = Utc::now() - s.created_date;
    let status = match launcher.status(&payload.scan).await {
        Ok(st) => st,
        Err(e) if age > timeout => {
            tracing::warn!("scan {}: could not read its status ({e})", s.source_key);
            String::new()
        }
        Err(e) => return Err(JobError::Failed(anyhow::anyhow!("reading its status: {e}"))),
    };
    if status == "finished" {
        let Some(config) = close_config else {
            return Err(JobError::Config(format!(
                "scan {} finished, but no ScanCloseJob JobConfig of this organization uses its scanner config; it stays unfinished",
                s.source_key
            )));
        };
        let close = NewJob {
            job_name: "ScanCloseJob".into(),
            config_id: Some(config.to_string()),
            priority: None,
            payload: Some(s.scan_close_payload.clone()),
            parent_job_id: Some(s.parent_job_id.clone()),
            created_by: "SCAN SYNC JOB".into(),
            idempotency_key: Some(format!("scanclose:{}:{}", s.org_id, s.source_key)),
            trace_parent: None,
        };
        match scan_summary::finish_and_queue_close(&ctx.pool, s, &close).await? {
            Some(id) => tracing::info!("scan {} finished; ScanCloseJob {id} queued", s.source_key),
            None => tracing::info!(
                "scan {} was already handled by another ScanSyncJob",
                s.source_key
            ),
        }
        return Ok(());
    }
    if scan_summary::is_terminal(&status) {
        if scan_summary::end_and_release(&ctx.pool, s, &status).await? {
            tracing::warn!(
                "scan {} ended {status}; its ticket(s) {} are released for the next rescan",
                s.source_key,
                payload.tickets.unwrap_or_default().join(", ")
            );
            clean_up(launcher, &payload.scan, &s.source_key).await;
        }
        return Ok(());
    }
    if age > timeout {
        if let Err(e) = launcher.cancel(&payload.scan).await {
            tracing::info!("scan {}: cancel refused ({e})", s.source_key);
        }
        if scan_summary::end_and_release(&ctx.pool, s, "error").await? {
            tracing::error!(
                "scan {} abandoned: still {:?} after {} s (scan_timeout {} s); its ticket(s) {} are released for the next rescan",
                s.source_key,
                status,
                age.num_seconds(),
                timeout.num_seconds(),
                payload.tickets.unwrap_or_default().join(", ")
            );
            clean_up(launcher, &payload.scan, &s.source_key).await;
        }
        return Ok(());
    }
    scan_summary::set_status(&ctx.pool, s, &status).await?;
    Ok(())
}

async fn clean_up(launcher: &dyn ScanLauncher, scan: &Value, key: &str) {
    if let Err(e) = launcher.clean_up(scan).await {
        tracing::warn!("scan {key}: could not delete its temporary scanner objects: {e}");
    }
}

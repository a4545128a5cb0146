//! Launch intents: how a RescanJob makes its scan launches survive a worker
//! killed between asking the scanner for a scan and recording it.
//!
//! The rule (see `docs/rescan.md`, "Launching exactly once"):
//!
//! 1. Just before the launch call, the launcher hands the scan object (a name
//!    unique to this launch, its temporary objects, no scan ID yet) to the
//!    RescanJob's [`IntentJournal`], which writes the scan's ScanSummary row in
//!    status `launching` under a placeholder key and points the tickets'
//!    leases at it, in one transaction. The tickets stay leased.
//! 2. When the scanner answers, [`IntentJournal::confirm`] turns the intent
//!    into the scan (its real key, `queued`, leases moved) in one transaction.
//! 3. An intent found later has lost its answer. The job's retry
//!    ([`resolve`]) — or ScanSyncJob ([`settle_orphan`]) once the job has ended
//!    and the intent is older than `launch_timeout` — asks the scanner for a
//!    scan of that name: found, it is **adopted** (step 2 with the scanner's
//!    scan); not found, the intent's temporary objects are deleted and the
//!    intent is dropped (the retry launches those tickets again; ScanSyncJob
//!    marks it `error` and releases them).

use std::collections::HashMap;
use std::sync::Mutex;

use aegis_shared::model::scan_summary::{self, NewScanSummary, ScanSummary};
use chrono::Utc;
use futures::future::BoxFuture;
use serde::Deserialize;
use serde_json::Value;
use sqlx::MySqlPool;

use super::rescan::ScanClosePayload;
use super::scan_close::decision::RescanType;
use super::{JobContext, JobError};
use crate::vendors::scans::{scan_field, LaunchJournal, LaunchedScan, ScanLauncher, ScanTarget};

/// How long ScanSyncJob leaves an intent of an ended RescanJob alone (the
/// scanner may show a just-started scan late). ScanSyncJob payload key
/// `launch_timeout` (seconds).
const DEFAULT_LAUNCH_TIMEOUT_SECS: i64 = 600;

/// The ScanClosePayload of a scan (or of an intent, with `scan_id` empty).
pub fn close_payload(
    group: &str,
    kind: RescanType,
    scan: &Value,
    targets: &[ScanTarget],
) -> ScanClosePayload {
    ScanClosePayload {
        group: group.to_string(),
        tickets: Some(targets.iter().map(|t| t.ticket.clone()).collect()),
        kind,
        scan: scan.clone(),
        devices: Some(targets.iter().map(|t| t.ip.clone()).collect()),
        scan_id: scan_field(scan, "scanId").to_string(),
    }
}

fn to_text(p: &ScanClosePayload) -> Result<String, String> {
    serde_json::to_string(p).map_err(|e| e.to_string())
}

/// A RescanJob's journal: one `launching` ScanSummary row per scan about to
/// be launched, remembered by the scan's unique name.
pub struct IntentJournal {
    pool: MySqlPool,
    org_id: String,
    source_id: String,
    scanner_source_config_id: String,
    job_id: String,
    group: String,
    kind: RescanType,
    recorded: Mutex<HashMap<String, String>>,
}

impl IntentJournal {
    pub fn new(
        ctx: &JobContext,
        org_id: &str,
        source_id: &str,
        scanner_source_config_id: &str,
        group: &str,
        kind: RescanType,
    ) -> Self {
        IntentJournal {
            pool: ctx.pool.clone(),
            org_id: org_id.to_string(),
            source_id: source_id.to_string(),
            scanner_source_config_id: scanner_source_config_id.to_string(),
            job_id: ctx.history.id.clone(),
            group: group.to_string(),
            kind,
            recorded: Mutex::new(HashMap::new()),
        }
    }

    fn recorded(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.recorded.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records the launched scan: its intent becomes the scan (key, status
    /// `queued`, leases), in one transaction.
    pub async fn confirm(&self, scan: &LaunchedScan) -> Result<(), JobError> {
        let name = scan_field(&scan.scan, "name").to_string();
        let payload = to_text(&close_payload(
            &self.group,
            self.kind,
            &scan.scan,
            &scan.targets,
        ))
        .map_err(|e| JobError::Failed(anyhow::anyhow!(e)))?;
        let Some(intent) = self.recorded().remove(&name) else {
            return Err(JobError::Failed(anyhow::anyhow!(
                "scan {} ({name:?}) was launched without a recorded intent",
                scan.scan_id
            )));
        };
        if !scan_summary::confirm_intent(&self.pool, &self.org_id, &intent, &scan.scan_id, &payload)
            .await?
        {
            return Err(JobError::Failed(anyhow::anyhow!(
                "the launch intent {intent} of scan {} was gone when the scan was recorded",
                scan.scan_id
            )));
        }
        Ok(())
    }

    /// Drops the intents of launches that failed (their temporary objects
    /// were deleted by the launcher); their tickets stay unscanned.
    pub async fn discard_unlaunched(&self) -> Result<(), JobError> {
        let left: Vec<(String, String)> = self.recorded().drain().collect();
        for (name, intent) in left {
            tracing::debug!("launch intent {intent} ({name:?}) dropped: the launch failed");
            scan_summary::discard_intent(&self.pool, &self.org_id, &intent).await?;
        }
        Ok(())
    }
}

impl LaunchJournal for IntentJournal {
    fn record<'a>(
        &'a self,
        scan: &'a Value,
        targets: &'a [ScanTarget],
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let payload = to_text(&close_payload(&self.group, self.kind, scan, targets))?;
            let intent = scan_summary::intent_key();
            let tickets: Vec<String> = targets.iter().map(|t| t.ticket.clone()).collect();
            scan_summary::insert_intent(
                &self.pool,
                &NewScanSummary {
                    source_id: &self.source_id,
                    org_id: &self.org_id,
                    scanner_source_config_id: &self.scanner_source_config_id,
                    source_key: &intent,
                    payload: &payload,
                    parent_job_id: &self.job_id,
                },
                &tickets,
            )
            .await
            .map_err(|e| e.to_string())?;
            self.recorded()
                .insert(scan_field(scan, "name").to_string(), intent);
            Ok(())
        })
    }
}

/// Adopts the scanner's scan of an intent, or deletes the intent's temporary
/// objects and drops it. Returns the adopted scan's tickets.
async fn adopt_or_drop(
    pool: &MySqlPool,
    launcher: &dyn ScanLauncher,
    s: &ScanSummary,
    if_not_launched: IfNotLaunched,
) -> Result<Option<Vec<String>>, JobError> {
    let mut payload: ScanClosePayload =
        serde_json::from_str(&s.scan_close_payload).map_err(|e| JobError::BadPayload {
            job: "launch intent".into(),
            reason: format!("ScanClosePayload of {}: {e}", s.source_key),
        })?;
    let name = scan_field(&payload.scan, "name").to_string();
    let found = launcher.find_launched(&payload.scan).await.map_err(|e| {
        JobError::Failed(anyhow::anyhow!(
            "asking the scanner whether scan {name:?} (launch intent {}) was launched: {e}",
            s.source_key
        ))
    })?;
    match found {
        Some(scan) => {
            let id = scan_field(&scan, "scanId").to_string();
            payload.scan = scan;
            payload.scan_id = id.clone();
            let text = to_text(&payload).map_err(|e| JobError::Failed(anyhow::anyhow!(e)))?;
            let tickets = payload.tickets.unwrap_or_default();
            if scan_summary::confirm_intent(pool, &s.org_id, &s.source_key, &id, &text).await? {
                tracing::warn!(
                    "scan {id} ({name:?}) was launched but not recorded (its worker stopped); adopted for ticket(s) {}",
                    tickets.join(", ")
                );
            }
            Ok(Some(tickets))
        }
        None => {
            if let Err(e) = launcher.clean_up(&payload.scan).await {
                tracing::warn!(
                    "launch intent {}: could not delete its temporary scanner objects: {e}",
                    s.source_key
                );
            }
            let tickets = payload.tickets.unwrap_or_default().join(", ");
            match if_not_launched {
                IfNotLaunched::Discard => {
                    scan_summary::discard_intent(pool, &s.org_id, &s.source_key).await?;
                    tracing::info!(
                        "scan {name:?} was never launched (its worker stopped first); ticket(s) {tickets} are launched again"
                    );
                }
                IfNotLaunched::Release => {
                    if scan_summary::end_and_release(pool, s, "error").await? {
                        tracing::error!(
                            "launch intent {} ({name:?}) of RescanJob {} abandoned: the scanner has no such scan {} s after it was recorded; its ticket(s) {tickets} are released for the next rescan",
                            s.source_key,
                            s.parent_job_id,
                            (Utc::now() - s.created_date).num_seconds()
                        );
                    }
                }
            }
            Ok(None)
        }
    }
}

#[derive(Clone, Copy)]
enum IfNotLaunched {
    /// The job that wrote it launches the tickets again.
    Discard,
    /// Nobody will: mark the intent `error` and release its tickets.
    Release,
}

/// A RescanJob's intents left by an earlier attempt: each is adopted or
/// dropped. Returns the tickets now in an adopted scan.
pub async fn resolve(
    ctx: &JobContext,
    org_id: &str,
    launcher: &dyn ScanLauncher,
) -> Result<Vec<String>, JobError> {
    let intents = scan_summary::intents_of_job(&ctx.pool, org_id, &ctx.history.id).await?;
    let mut adopted = Vec::new();
    for s in &intents {
        if let Some(tickets) = adopt_or_drop(&ctx.pool, launcher, s, IfNotLaunched::Discard).await?
        {
            adopted.extend(tickets);
        }
    }
    Ok(adopted)
}

#[derive(Debug, Default, Deserialize)]
struct SyncPayload {
    #[serde(default)]
    launch_timeout: Option<i64>,
}

/// ScanSyncJob's handling of an intent: left alone while its RescanJob may
/// still resolve it or it is younger than `launch_timeout`; then adopted when
/// the scanner has its scan, otherwise marked `error` and its tickets released.
pub async fn settle_orphan(ctx: &JobContext, launcher: &dyn ScanLauncher, s: &ScanSummary) {
    let timeout = ctx
        .payload::<SyncPayload>()
        .ok()
        .and_then(|p| p.launch_timeout)
        .unwrap_or(DEFAULT_LAUNCH_TIMEOUT_SECS)
        .max(0);
    let outcome = async {
        if scan_summary::parent_is_live(&ctx.pool, s).await? {
            tracing::debug!(
                "launch intent {}: RescanJob {} is still pending or running",
                s.source_key,
                s.parent_job_id
            );
            return Ok(());
        }
        if (Utc::now() - s.created_date).num_seconds() < timeout {
            return Ok(());
        }
        adopt_or_drop(&ctx.pool, launcher, s, IfNotLaunched::Release)
            .await
            .map(drop)
    }
    .await;
    if let Err(e) = outcome {
        tracing::error!("launch intent {}: {e}", s.source_key);
    }
}

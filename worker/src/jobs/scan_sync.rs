//! ScanSyncJob: polls the organization's unfinished scans of one scanner
//! config and moves each one on (spec `original-jobs-rescan.md` §3).
//!
//! In- and out-source: the scanner config. Payload: `{"scan_timeout": <seconds>,
//! "scheduled_scans": ["<scan object JSON>", …]}` (timeout default 86400).
//!
//! **Scheduled scans** (Qualys; spec §3.2 steps 4–7): each `scheduled_scans`
//! entry is a scan object as JSON text, normally `{"name": "<schedule title>",
//! "groupId": "<group(s)>"}`. A name is looked up among the scans scheduled in
//! Qualys that are running now (queued, loading, running, paused) by exact
//! title; each one found is tracked with a ScanSummary (`queued`, type
//! `SCHEDULED`, `scan` = the entry with `scanId` = the scan reference,
//! `created` = its launch time, `scheduled: true`; parent = this JobHistory
//! row). The summary's primary key is the scan's natural key, so a second run,
//! or a run racing on another worker, never tracks a scan twice. From then on
//! the scan is polled like any other, and its ScanCloseJob decides the group's
//! tickets. An entry that is not a JSON object is logged and skipped; Nexpose
//! has no scheduled scans Aegis can track, so its entries are ignored with one
//! warning per run. An abandoned scheduled scan is not cancelled on the scanner
//! (it is not Aegis's).
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
use aegis_shared::model::scan_summary::{self, NewScanSummary, ScanSummary};
use aegis_shared::model::source_config::SourceConfig;
use chrono::Utc;
use futures::future::BoxFuture;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::launch_intent;
use super::rescan::{child_config, org, ScanClosePayload};
use super::scan_close::decision::RescanType;
use super::{Job, JobContext, JobError};
use crate::vendors::scans::{self, ScanLauncher, ScheduledScan};

const DEFAULT_TIMEOUT_SECS: i64 = 24 * 3600;

#[derive(Debug, Deserialize)]
struct Payload {
    #[serde(default)]
    scan_timeout: Option<i64>,
    #[serde(default)]
    scheduled_scans: Option<Vec<Value>>,
}

/// A `scheduled_scans` entry as a scan object: JSON text holding an object
/// (the original's form), or an object written inline. It must name the scan
/// (`name` or `scanId`) and its asset group(s) (`groupId`: the close selects
/// the group's tickets and reads the group's detections).
fn parse_entry(entry: &Value) -> Result<Map<String, Value>, String> {
    let value = match entry {
        Value::String(text) => serde_json::from_str::<Value>(text).map_err(|e| e.to_string())?,
        other => other.clone(),
    };
    let scan = match value {
        Value::Object(scan) => scan,
        other => return Err(format!("expected a JSON object, found {other}")),
    };
    if text_field(&scan, "name").is_empty() && text_field(&scan, "scanId").is_empty() {
        return Err("it has neither a name nor a scanId".into());
    }
    if text_field(&scan, "groupId").is_empty() {
        return Err("it has no groupId".into());
    }
    Ok(scan)
}

/// A scan object's text field (strings, or numbers as text), trimmed.
fn text_field(scan: &Map<String, Value>, key: &str) -> String {
    match scan.get(key) {
        Some(Value::String(s)) => s.trim().to_string(),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    }
}

/// The scan objects to track for the entries: an entry naming a `scanId` as
/// it is, an entry naming only a `name` once per running scheduled scan of
/// exactly that title (with `scanId`, `created` and `scheduled` filled in).
fn scheduled_scan_objects(
    entries: &[Map<String, Value>],
    running: &[ScheduledScan],
    now: chrono::DateTime<Utc>,
) -> Vec<Map<String, Value>> {
    let mut out = Vec::new();
    for entry in entries {
        let mut found = Vec::new();
        if !text_field(entry, "scanId").is_empty() {
            found.push((text_field(entry, "scanId"), None));
        } else {
            let name = text_field(entry, "name");
            found.extend(
                running
                    .iter()
                    .filter(|r| !name.is_empty() && r.title == name)
                    .map(|r| (r.reference.clone(), r.launched)),
            );
        }
        for (reference, launched) in found {
            let mut scan = entry.clone();
            scan.insert("scanId".into(), Value::String(reference));
            if let Some(t) = launched {
                scan.insert("created".into(), Value::String(t.to_rfc3339()));
            } else if text_field(&scan, "created").is_empty() {
                scan.insert("created".into(), Value::String(now.to_rfc3339()));
            }
            scan.insert("scheduled".into(), Value::Bool(true));
            out.push(scan);
        }
    }
    out
}

/// Starts tracking the running scheduled scans the payload names.
async fn track_scheduled(
    ctx: &JobContext,
    launcher: &dyn ScanLauncher,
    scanner_sc: &SourceConfig,
    org_id: &str,
    raw: &[Value],
) -> Result<(), JobError> {
    let mut entries = Vec::new();
    for entry in raw {
        match parse_entry(entry) {
            Ok(scan) => entries.push(scan),
            Err(e) => tracing::error!(
                "scheduled_scans entry {entry} skipped: it is not a usable scan object ({e})"
            ),
        }
    }
    if entries.is_empty() {
        return Ok(());
    }
    let running = match launcher.running_scheduled_scans().await {
        Ok(Some(running)) => running,
        Ok(None) => {
            let named: Vec<String> = entries
                .iter()
                .map(|e| serde_json::Value::Object(e.clone()).to_string())
                .collect();
            tracing::warn!(
                "scheduled scans are not supported for {}: scheduled_scans entries {} ignored",
                launcher.vendor().source_name(),
                named.join(", ")
            );
            return Ok(());
        }
        Err(e) => {
            return Err(JobError::Failed(anyhow::anyhow!(
                "listing the running scheduled scans: {e}"
            )))
        }
    };
    let source_id = scanner_sc.source_id.clone().unwrap_or_default();
    for scan in scheduled_scan_objects(&entries, &running, Utc::now()) {
        let scan_id = text_field(&scan, "scanId");
        let name = text_field(&scan, "name");
        let payload = ScanClosePayload {
            group: text_field(&scan, "groupId"),
            tickets: None,
            kind: RescanType::Scheduled,
            scan: Value::Object(scan),
            devices: None,
            scan_id: scan_id.clone(),
        };
        let text = serde_json::to_string(&payload).map_err(|e| JobError::Failed(e.into()))?;
        let tracked = scan_summary::track(
            &ctx.pool,
            &NewScanSummary {
                source_id: &source_id,
                org_id,
                scanner_source_config_id: &scanner_sc.id,
                source_key: &scan_id,
                payload: &text,
                parent_job_id: &ctx.history.id,
            },
        )
        .await?;
        if tracked {
            tracing::info!(
                "scheduled scan {name:?} ({scan_id}) of group {:?} is tracked",
                payload.group
            );
        }
    }
    Ok(())
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
    let scheduled = p.scheduled_scans.unwrap_or_default();
    let mut pending = scan_summary::unfinished(&ctx.pool, &org_id, &scanner_sc.id).await?;
    if pending.is_empty() && scheduled.is_empty() {
        tracing::debug!("no unfinished scans");
        return Ok(());
    }
    let launcher =
        scans::for_source(scanner_sc, ctx.client(scanner_sc)?).map_err(JobError::Config)?;
    if !scheduled.is_empty() {
        // A failure here must not stop the polling of the scans already tracked.
        match track_scheduled(&ctx, launcher.as_ref(), scanner_sc, &org_id, &scheduled).await {
            Ok(()) => {
                pending = scan_summary::unfinished(&ctx.pool, &org_id, &scanner_sc.id).await?
            }
            Err(e) => tracing::error!("scheduled scans: {e}"),
        }
    }
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
        // A scheduled scan is not Aegis's to cancel: only its tracking ends.
        if payload.kind != RescanType::Scheduled {
            if let Err(e) = launcher.cancel(&payload.scan).await {
                tracing::info!("scan {}: cancel refused ({e})", s.source_key);
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().expect("object")
    }

    #[test]
    fn entries_are_json_text_or_inline_objects_and_anything_else_is_refused() {
        let scan = parse_entry(&json!(r#"{"name":"Weekly DMZ","groupId":"42"}"#)).expect("text");
        assert_eq!(text_field(&scan, "name"), "Weekly DMZ");
        assert_eq!(
            text_field(
                &parse_entry(&json!({"name": "x", "groupId": 42})).expect("inline"),
                "groupId"
            ),
            "42"
        );
        assert!(parse_entry(&json!("{not json")).is_err());
        assert!(parse_entry(&json!(r#"{"name":"no group"}"#)).is_err());
        assert!(parse_entry(&json!(r#"{"groupId":"42"}"#)).is_err());
        assert!(parse_entry(&json!("[1, 2]")).is_err());
        assert!(parse_entry(&json!(7)).is_err());
    }

    #[test]
    fn a_name_is_tracked_once_per_running_scheduled_scan_of_exactly_that_title() {
        let launched = chrono::DateTime::parse_from_rfc3339("2026-12-05T10:00:00Z")
            .expect("time")
            .with_timezone(&Utc);
        let running = vec![
            ScheduledScan {
                title: "Weekly DMZ".into(),
                reference: "scan/1.1".into(),
                launched: Some(launched),
            },
            ScheduledScan {
                title: "Weekly DMZ (copy)".into(),
                reference: "scan/1.2".into(),
                launched: Some(launched),
            },
        ];
        let entries = vec![
            obj(json!({"name": "Weekly DMZ", "groupId": "42"})),
            obj(json!({"name": "Monthly", "groupId": "43"})),
            obj(json!({"name": "given", "scanId": "scan/9.9", "groupId": "44"})),
        ];
        let scans = scheduled_scan_objects(&entries, &running, launched);
        assert_eq!(scans.len(), 2, "{scans:?}");
        assert_eq!(
            Value::Object(scans[0].clone()),
            json!({"name": "Weekly DMZ", "groupId": "42", "scanId": "scan/1.1",
                   "created": "2026-12-05T10:00:00+00:00", "scheduled": true})
        );
        assert_eq!(text_field(&scans[1], "scanId"), "scan/9.9");
        assert_eq!(scans[1]["scheduled"], json!(true));
    }

    #[test]
    fn the_close_payload_of_a_scheduled_scan_has_the_original_shape() {
        let p = ScanClosePayload {
            group: "42".into(),
            tickets: None,
            kind: RescanType::Scheduled,
            scan: json!({"name": "n"}),
            devices: None,
            scan_id: "scan/1.1".into(),
        };
        assert_eq!(
            serde_json::to_string(&p).expect("json"),
            r#"{"group":"42","tickets":null,"type":"SCHEDULED","scan":{"name":"n"},"devices":null,"scan_id":"scan/1.1"}"#
        );
    }
}

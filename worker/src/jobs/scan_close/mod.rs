//! ScanCloseJob: applies a finished scan's results to its tickets (and, for a
//! decommission scan, every other live ticket of the same devices), then
//! updates the Detection table and releases the tickets' leases (spec
//! `original-jobs-rescan.md` §4).
//!
//! In-source: the scanner config. Out-source: JIRA. Payload: the scan's
//! ScanClosePayload (`group`, `tickets`, `type`, `scan`, `devices`, `scan_id`),
//! queued by ScanSyncJob.
//!
//! What to do with each ticket is [`decision::decide`] (first match wins);
//! this module gathers the evidence and carries the decision out:
//! transitions with their comments (the workflow is walked hop by hop),
//! the Ignore row (TypeId 2) of a device found dead by a decommission scan,
//! and Detection rows. Every action is idempotent — a transition to the
//! status a ticket already has does nothing, the Ignore row is an upsert — so
//! a run retried after its worker died ends with every ticket in the same
//! state as one uninterrupted run.
//!
//! Differences from the original: the scanner's results are read in full
//! before any ticket is touched, and a failure to read them fails the job (the
//! original could block forever on a stream nobody closed); a ticket without
//! an IP is decided from the device's detections (never a panic); a ticket
//! whose vulnerability was found on another port only is left as is and logged
//! (never closed); a device with no data at all is Scan-Error.

pub mod decision;

use std::collections::{BTreeMap, HashMap, HashSet};

use aegis_shared::model::scan_summary;
use aegis_shared::model::{detection, ignore, rescan_lease};
use futures::future::BoxFuture;
use futures::TryStreamExt;

use self::decision::{Decision, Evidence, Finding, RescanType, TicketState, Tracking};
use super::cloud_decom;
use super::rescan::{aegis_status, connect_jira, load_tickets, org, ScanClosePayload};
use super::ticket_sync::parse_service_port;
use super::{Job, JobContext, JobError};
use crate::vendors::jira::jql::Field;
use crate::vendors::scanner::{DetectionState, ScannedDetection};
use crate::vendors::scans::{self, ScanResults};
use crate::vendors::ticketing::{field, status, Ticket, TicketEngine, TransitionOptions};

pub struct ScanCloseJob;

impl Job for ScanCloseJob {
    fn name(&self) -> &'static str {
        "ScanCloseJob"
    }

    fn run(&self, ctx: JobContext) -> BoxFuture<'static, Result<(), JobError>> {
        Box::pin(run(ctx))
    }
}

/// Statuses of the other tickets of a device a decommission scan decides too.
const DECOMMISSION_RELATED: [&str; 9] = [
    status::OPEN,
    status::REOPENED,
    status::IN_PROGRESS,
    status::RESOLVED_REMEDIATED,
    status::RESOLVED_FALSE_POSITIVE,
    status::RESOLVED_DECOMMISSIONED,
    status::RESOLVED_EXCEPTION,
    status::CLOSED_EXCEPTION,
    status::CLOSED_FALSE_POSITIVE,
];

fn finding(state: DetectionState) -> Finding {
    match state {
        DetectionState::Vulnerable => Finding::Vulnerable,
        DetectionState::Fixed => Finding::Fixed,
        DetectionState::DeadHost => Finding::DeadHost,
        DetectionState::Potential => Finding::Potential,
        DetectionState::Informational => Finding::Informational,
        DetectionState::Exceptioned => Finding::Other("exceptioned".into()),
    }
}

/// What the scan says about one ticket; Err(reason) when the ticket cannot be
/// matched safely (its Service Port is not `"<port> <protocol>"`).
fn evidence(
    t: &Ticket,
    results: &ScanResults,
    by_asset: &HashMap<&str, &[ScannedDetection]>,
    tracking: Tracking,
    scan_created: chrono::DateTime<chrono::Utc>,
) -> Result<Evidence, String> {
    let asset = t.field(field::DEVICE_ID).trim();
    let vuln = t
        .field(field::VULNERABILITY_ID)
        .split(';')
        .next()
        .unwrap_or_default()
        .trim();
    let (port, protocol) = parse_service_port(t.field(field::SERVICE_PORT))?;
    let detections = by_asset.get(asset).copied().unwrap_or(&[]);
    let same_vuln: Vec<&ScannedDetection> =
        detections.iter().filter(|d| d.vuln_id == vuln).collect();
    let exact = same_vuln
        .iter()
        .find(|d| d.port == port && d.protocol.eq_ignore_ascii_case(&protocol));
    let ip = t.field(field::IP_ADDRESS).trim();
    Ok(Evidence {
        device_has_detections: !detections.is_empty(),
        detection: exact.map(|d| decision::Detection {
            finding: finding(d.state),
            last_updated: d.last_updated,
            proof: d.proof.clone(),
            inactive_kernel: d.active_kernel.unwrap_or(0) == 0,
        }),
        vulnerability_on_other_port: exact.is_none() && !same_vuln.is_empty(),
        dead_proof: if ip.is_empty() {
            None
        } else {
            results.dead.get(ip).cloned()
        },
        tracking,
        scan_created,
        cloud_decommission_group: false,
    })
}

async fn run(ctx: JobContext) -> Result<(), JobError> {
    let p: ScanClosePayload = ctx.payload()?;
    if p.scan_id.is_empty() {
        return Err(JobError::BadPayload {
            job: "ScanCloseJob".into(),
            reason: "no scan_id".into(),
        });
    }
    let (org_id, org_code) = org(&ctx, "ScanCloseJob")?;
    let (Some(scanner_sc), Some(jira_sc)) = (ctx.sources_in.first(), ctx.sources_out.first())
    else {
        return Err(JobError::Config(
            "ScanCloseJob needs a scanner in-source and a JIRA out-source".into(),
        ));
    };
    let scanner_source_id = scanner_sc.source_id.clone().unwrap_or_default();
    let summary = scan_summary::by_key(&ctx.pool, &org_id, &p.scan_id)
        .await?
        .ok_or_else(|| {
            JobError::Failed(anyhow::anyhow!("no ScanSummary for scan {}", p.scan_id))
        })?;
    let engine = connect_jira(&ctx, jira_sc).await?;
    let launcher =
        scans::for_source(scanner_sc, ctx.client(scanner_sc)?).map_err(JobError::Config)?;

    // The scanner's results, whole, before any ticket changes.
    let results = launcher.results(&p.scan).await.map_err(|e| {
        JobError::Failed(anyhow::anyhow!(
            "reading the results of scan {}: {e}",
            p.scan_id
        ))
    })?;
    let by_asset: HashMap<&str, &[ScannedDetection]> = results
        .hosts
        .iter()
        .map(|h| (h.asset_id.as_str(), h.detections.as_slice()))
        .collect();
    tracing::info!(
        "scan {}: {} host(s) with detections, {} dead IP(s)",
        p.scan_id,
        results.hosts.len(),
        results.dead.len()
    );

    // When the scan was requested (second precision, as the scanner's dates):
    // a detection not updated since was not checked by this scan.
    let scan_created = p
        .scan
        .get("created")
        .and_then(serde_json::Value::as_str)
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&chrono::Utc))
        .unwrap_or(summary.created_date);
    let scan_created =
        chrono::DateTime::from_timestamp(scan_created.timestamp(), 0).unwrap_or(scan_created);
    let keys = p.tickets.clone().unwrap_or_default();
    let mut tickets = load_tickets(&engine, &keys).await;
    if p.kind == RescanType::Decommissioned {
        let related = related_tickets(&engine, &tickets, &org_code).await?;
        tickets.extend(related);
    }

    let mut decommissioned: HashSet<String> = HashSet::new();
    let mut failures = Vec::new();
    // Whether the payload's group hands dead IPs to a CloudDecommissionJob.
    let cloud =
        cloud_decom::qualify(&ctx.pool, &org_id, &org_code, &p.group, &scanner_sc.id).await?;
    let mut to_cloud: Vec<(String, String)> = Vec::new();
    let mut tracking_cache: HashMap<String, Tracking> = HashMap::new();
    for t in &tickets {
        let asset = t.field(field::DEVICE_ID).trim().to_string();
        let tracking = match tracking_cache.get(&asset) {
            Some(tr) => *tr,
            None => {
                let m: Option<(Option<String>,)> = sqlx::query_as(
                    "SELECT TrackingMethod FROM Device WHERE OrganizationID = ? AND SourceID = ? AND AssetID = ? LIMIT 1",
                )
                .bind(&org_id)
                .bind(&scanner_source_id)
                .bind(&asset)
                .fetch_optional(&ctx.pool)
                .await?;
                let tr = Tracking::parse(&m.and_then(|(m,)| m).unwrap_or_default());
                tracking_cache.insert(asset.clone(), tr);
                tr
            }
        };
        let state = TicketState {
            status: aegis_status(&engine, &t.status),
            ip: t.field(field::IP_ADDRESS).trim().to_string(),
        };
        let mut ev = match evidence(t, &results, &by_asset, tracking, scan_created) {
            Ok(ev) => ev,
            Err(why) => {
                tracing::warn!("ticket {} left unchanged: {why}", t.key);
                continue;
            }
        };
        ev.cloud_decommission_group = cloud.is_ok();
        let d = decision::decide(p.kind, &state, &ev, &p.scan_id);
        let routed = matches!(d, Decision::CloudDecommission(_));
        if let (true, Err(missing)) = (routed, &cloud) {
            tracing::warn!("ticket {}: the scan found its IP dead, but it cannot go to cloud decommission: {missing}; left unchanged", t.key);
            continue;
        }
        let outcome = apply(
            &ctx,
            &engine,
            t,
            &state,
            &asset,
            d,
            &scanner_source_id,
            &org_id,
            &mut decommissioned,
        )
        .await;
        match outcome {
            Ok(()) if routed => to_cloud.push((state.ip.clone(), t.key.clone())),
            Ok(()) => {}
            Err(e) => {
                tracing::error!("ticket {}: {e}", t.key);
                failures.push(format!("{}: {e}", t.key));
            }
        }
    }

    update_detections(&ctx, &org_id, &scanner_source_id, &results).await?;
    cloud_decom::hand_off_from_close(&ctx, &org_id, &cloud, to_cloud).await?;
    if let Err(e) = launcher.clean_up(&p.scan).await {
        tracing::warn!(
            "scan {}: could not delete its temporary scanner objects: {e}",
            p.scan_id
        );
    }
    if !failures.is_empty() {
        // The leases stay with this run; a retry (or, after it ends, the next
        // RescanQueueJob) decides these tickets again.
        return Err(JobError::Failed(anyhow::anyhow!(
            "{} ticket(s) could not be updated: {}",
            failures.len(),
            failures.join("; ")
        )));
    }
    let mut tx = ctx.pool.begin().await?;
    let released = rescan_lease::release_scan(&mut tx, &org_id, &p.scan_id).await?;
    tx.commit().await?;
    tracing::info!(
        "scan {}: {} ticket(s) decided, {released} lease(s) released",
        p.scan_id,
        tickets.len()
    );
    Ok(())
}

/// Every other live ticket of the tickets' devices (decommission scans decide a device as a whole).
async fn related_tickets(
    engine: &dyn TicketEngine,
    tickets: &[Ticket],
    org_code: &str,
) -> Result<Vec<Ticket>, JobError> {
    let known: HashSet<String> = tickets.iter().map(|t| t.key.clone()).collect();
    let devices: BTreeMap<String, ()> = tickets
        .iter()
        .map(|t| (t.field(field::DEVICE_ID).trim().to_string(), ()))
        .filter(|(d, _)| !d.is_empty())
        .collect();
    let statuses: Vec<String> = DECOMMISSION_RELATED
        .iter()
        .map(|s| engine.status_name(s))
        .collect();
    let mut out = Vec::new();
    let mut seen = known.clone();
    for device in devices.keys() {
        let q = engine
            .query()
            .contains(Field::aegis(field::DEVICE_ID), device.clone())
            .contains(Field::aegis(field::ORG), org_code.to_string())
            .any_of(Field::STATUS, statuses.clone());
        let found: Vec<Ticket> = engine.search(q).try_collect().await.map_err(|e| {
            JobError::Failed(anyhow::anyhow!(
                "searching the other tickets of device {device}: {e}"
            ))
        })?;
        for t in found {
            if t.field(field::DEVICE_ID).trim() == device
                && t.field(field::ORG).eq_ignore_ascii_case(org_code)
                && seen.insert(t.key.clone())
            {
                out.push(t);
            }
        }
    }
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
async fn apply(
    ctx: &JobContext,
    engine: &dyn TicketEngine,
    t: &Ticket,
    state: &TicketState,
    asset: &str,
    d: Decision,
    scanner_source_id: &str,
    org_id: &str,
    decommissioned: &mut HashSet<String>,
) -> Result<(), String> {
    let move_to = |target: &'static str, comment: String| async move {
        engine
            .transition(
                &t.key,
                target,
                TransitionOptions {
                    comment: Some(comment),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| format!("moving to {target}: {e}"))?;
        tracing::info!("ticket {} {} → {target}", t.key, state.status);
        Ok::<(), String>(())
    };
    match d {
        Decision::Leave(why) => {
            tracing::info!("ticket {} ({}) left unchanged: {why}", t.key, state.status);
            Ok(())
        }
        Decision::Unmatched(why) => {
            tracing::warn!("ticket {} ({}) left unchanged: {why}", t.key, state.status);
            Ok(())
        }
        Decision::ScanError(c) => move_to(status::SCAN_ERROR, c).await,
        Decision::ResolvedDecommissioned(c) => move_to(status::RESOLVED_DECOMMISSIONED, c).await,
        Decision::CloseRemediated(c) => move_to(status::CLOSED_REMEDIATED, c).await,
        Decision::Reopen(c) => move_to(status::REOPENED, c).await,
        Decision::CloseDecommissioned(c) => {
            if !asset.is_empty() && decommissioned.insert(asset.to_string()) {
                let id = ignore::decommission_device(
                    &ctx.pool,
                    org_id,
                    scanner_source_id,
                    asset,
                    "ScanCloseJob",
                )
                .await
                .map_err(|e| format!("writing the Ignore row of device {asset}: {e}"))?;
                tracing::info!("device {asset} marked decommissioned (Ignore {id})");
            }
            if decision::is_closed(&state.status) {
                tracing::info!(
                    "ticket {} already {}; device decommissioned",
                    t.key,
                    state.status
                );
                return Ok(());
            }
            move_to(status::CLOSED_DECOMMISSION, c).await
        }
        Decision::CloudDecommission(comment) => {
            cloud_decom::comment_routed(engine, &t.key, comment.as_deref()).await
        }
    }
}

/// Writes the scan's detections onto the existing Detection rows (status, last
/// found, last updated, proof). Devices and detections Aegis does not know are
/// left to AssetSyncJob.
async fn update_detections(
    ctx: &JobContext,
    org_id: &str,
    source_id: &str,
    results: &ScanResults,
) -> Result<(), JobError> {
    let statuses = detection::statuses(&ctx.pool).await?;
    let mut updated = 0u64;
    for h in &results.hosts {
        for d in &h.detections {
            let Some(status_id) = statuses.get(d.state.as_str()) else {
                continue;
            };
            let r = sqlx::query(
                "UPDATE Detection D JOIN VulnerabilityInfo V ON V.ID = D.VulnerabilityID
                    SET D.DetectionStatusId = ?, D.LastFound = COALESCE(?, D.LastFound),
                        D.LastUpdated = COALESCE(?, D.LastUpdated), D.Proof = ?, D.Updated = UTC_TIMESTAMP(3),
                        D.UpdatedBy = 'ScanCloseJob'
                  WHERE D.OrganizationID = ? AND D.DeviceID = ? AND V.SourceVulnId = ? AND V.SourceID = ?
                    AND D.Port = ? AND D.Protocol = ?",
            )
            .bind(status_id)
            .bind(d.last_found)
            .bind(d.last_updated)
            .bind(&d.proof)
            .bind(org_id)
            .bind(&h.asset_id)
            .bind(&d.vuln_id)
            .bind(source_id)
            .bind(d.port)
            .bind(&d.protocol)
            .execute(&ctx.pool)
            .await?;
            updated += r.rows_affected();
        }
    }
    tracing::info!("{updated} detection row(s) updated from the scan");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vendors::scanner::ScannedHost;

    fn ticket(port: &str) -> Ticket {
        let mut t = Ticket {
            key: "VULN-1".into(),
            ..Default::default()
        };
        for (k, v) in [
            (field::DEVICE_ID, "1001"),
            (field::VULNERABILITY_ID, "38739"),
            (field::SERVICE_PORT, port),
            (field::IP_ADDRESS, "10.0.0.1"),
        ] {
            t.fields.insert(k.into(), v.into());
        }
        t
    }

    fn results() -> ScanResults {
        ScanResults {
            hosts: vec![ScannedHost {
                asset_id: "1001".into(),
                detections: vec![ScannedDetection {
                    vuln_id: "38739".into(),
                    state: DetectionState::Fixed,
                    port: 8443,
                    protocol: "tcp".into(),
                    proof: String::new(),
                    detected: None,
                    last_found: None,
                    last_updated: None,
                    times_seen: 1,
                    active_kernel: None,
                }],
                ..Default::default()
            }],
            dead: HashMap::new(),
        }
    }

    fn decide_for(port: &str) -> Result<Decision, String> {
        let r = results();
        let by_asset: HashMap<&str, &[ScannedDetection]> = r
            .hosts
            .iter()
            .map(|h| (h.asset_id.as_str(), h.detections.as_slice()))
            .collect();
        let ev = evidence(
            &ticket(port),
            &r,
            &by_asset,
            Tracking::Ip,
            chrono::Utc::now(),
        )?;
        let state = TicketState {
            status: "Resolved-Remediated".into(),
            ip: "10.0.0.1".into(),
        };
        Ok(decision::decide(RescanType::Normal, &state, &ev, "scan/1"))
    }

    #[test]
    fn a_ticket_whose_finding_is_reported_on_another_port_is_left_not_closed() {
        assert!(matches!(decide_for("443 tcp"), Ok(Decision::Unmatched(_))));
    }

    #[test]
    fn a_ticket_whose_service_port_cannot_be_read_is_not_decided() {
        assert!(decide_for("443/tcp").is_err());
    }

    #[test]
    fn the_same_port_and_protocol_match_case_insensitively() {
        assert!(matches!(
            decide_for("8443 TCP"),
            Ok(Decision::CloseRemediated(_))
        ));
    }
}

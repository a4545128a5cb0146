//! ScanCloseJob: applies a finished scan's results to its tickets, then
//! updates the Detection table and releases the tickets' leases (spec
//! `original-jobs-rescan.md` §4).
//!
//! In-source: the scanner config. Out-source: JIRA. Payload: the scan's
//! ScanClosePayload (`group`, `tickets`, `type`, `scan`, `devices`, `scan_id`),
//! queued by ScanSyncJob.
//!
//! Which tickets (§4.1 step 3): the payload's, and
//! * NORMAL: the scanned devices' other live tickets (Open, Reopened,
//!   Resolved-Exception, Resolved-Decommissioned, In-Progress) of the batch's
//!   vulnerabilities each device has no rescanned ticket for;
//! * DECOMMISSIONED: every other live ticket of the scanned devices;
//! * SCHEDULED (a scan scheduled in Qualys; `tickets` is null): what NORMAL's
//!   and DECOMMISSIONED's RescanQueueJob select, in the scan's group(s) — the
//!   group applies to both statuses (the original's precedence applied it to
//!   DECOMMISSIONED's only).
//!
//! Those extra tickets are leased to this job and its scan before they are
//! decided; one another rescan or scan holds is skipped with a log — it is that
//! scan's to decide.
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

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use aegis_shared::model::scan_summary;
use aegis_shared::model::{detection, ignore, rescan_lease};
use futures::future::BoxFuture;
use futures::TryStreamExt;

use self::decision::{Decision, Evidence, Finding, RescanType, TicketState, Tracking};
use super::cloud_decom;
use super::rescan::{aegis_status, connect_jira, load_tickets, org, ScanClosePayload};
use super::rescan_queue::{base_query, linked_children, selection};
use super::ticket_sync::parse_service_port;
use super::{Job, JobContext, JobError};
use crate::vendors::jira::jql::{Cond, Field};
use crate::vendors::scanner::{DetectionState, ScannedDetection};
use crate::vendors::scans::{self, ScanResults};
use crate::vendors::ticketing::{field, status, Query, Ticket, TicketEngine, TransitionOptions};

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
    let method_of_discovery = scanner_sc.source.clone().unwrap_or_default();
    let more = match p.kind {
        RescanType::Decommissioned => related_tickets(&engine, &tickets, &org_code).await?,
        RescanType::Normal => {
            normal_related_tickets(&engine, &tickets, &org_code, &method_of_discovery).await?
        }
        RescanType::Scheduled => {
            scheduled_tickets(&engine, &p.group, &org_code, &method_of_discovery).await?
        }
        RescanType::Passive | RescanType::Exceptions => Vec::new(),
    };
    if !more.is_empty() {
        let taken = take_leases(&ctx, &org_id, &p, more).await?;
        tickets.extend(taken);
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

/// Statuses of the other tickets of a device a NORMAL rescan decides too.
const NORMAL_RELATED: [&str; 5] = [
    status::OPEN,
    status::REOPENED,
    status::RESOLVED_EXCEPTION,
    status::RESOLVED_DECOMMISSIONED,
    status::IN_PROGRESS,
];

/// A ticket's vulnerability ID (the part before `;`).
fn vuln_of(t: &Ticket) -> &str {
    t.field(field::VULNERABILITY_ID)
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
}

/// For each device of the rescanned tickets, the batch's vulnerabilities it
/// has no ticket for in the batch (device → vulnerabilities, both sorted).
fn missing_vulnerabilities(tickets: &[Ticket]) -> BTreeMap<String, Vec<String>> {
    let batch: BTreeSet<&str> = tickets
        .iter()
        .map(vuln_of)
        .filter(|v| !v.is_empty())
        .collect();
    let mut had: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for t in tickets {
        let device = t.field(field::DEVICE_ID).trim();
        if !device.is_empty() {
            had.entry(device).or_default().insert(vuln_of(t));
        }
    }
    had.into_iter()
        .map(|(device, own)| {
            let missing = batch
                .iter()
                .filter(|v| !own.contains(*v))
                .map(|v| v.to_string())
                .collect();
            (device.to_string(), missing)
        })
        .collect()
}

/// NORMAL's other tickets among JIRA's answers (a word match): the device is
/// exactly one of the rescanned devices, the vulnerability is one of the batch's
/// that this device has no rescanned ticket for, the Org is exact, and each
/// ticket is kept once and never when it is already rescanned.
fn normal_related_filter(
    rescanned: &[Ticket],
    candidates: Vec<Ticket>,
    org_code: &str,
) -> Vec<Ticket> {
    let missing = missing_vulnerabilities(rescanned);
    let mut seen: HashSet<String> = rescanned.iter().map(|t| t.key.clone()).collect();
    candidates
        .into_iter()
        .filter(|t| {
            missing
                .get(t.field(field::DEVICE_ID).trim())
                .is_some_and(|vs| vs.iter().any(|v| v == vuln_of(t)))
                && t.field(field::ORG).eq_ignore_ascii_case(org_code)
                && seen.insert(t.key.clone())
        })
        .collect()
}

/// NORMAL: the live tickets of the rescanned devices for the batch's other
/// vulnerabilities — a Qualys rescan checks every QID of its search list on
/// every target, so the scan decides them too (spec §4.1 step 3). Unlike the
/// original, the query keeps the Method of Discovery: a device ID is only
/// meaningful to the scanner that issued it.
async fn normal_related_tickets(
    engine: &dyn TicketEngine,
    tickets: &[Ticket],
    org_code: &str,
    method_of_discovery: &str,
) -> Result<Vec<Ticket>, JobError> {
    let statuses: Vec<String> = NORMAL_RELATED
        .iter()
        .map(|s| engine.status_name(s))
        .collect();
    let mut found = Vec::new();
    for (device, vulns) in missing_vulnerabilities(tickets) {
        // JQL length stays reasonable with large batches.
        for chunk in vulns.chunks(100) {
            let q = base_query(engine, method_of_discovery, org_code)
                .contains(Field::aegis(field::DEVICE_ID), device.clone())
                .any_of(Field::STATUS, statuses.clone())
                .and(Cond::Any(
                    chunk
                        .iter()
                        .map(|v| Cond::Contains(Field::aegis(field::VULNERABILITY_ID), v.clone()))
                        .collect(),
                ));
            let page: Vec<Ticket> = engine.search(q).try_collect().await.map_err(|e| {
                JobError::Failed(anyhow::anyhow!(
                    "searching the other tickets of device {device}: {e}"
                ))
            })?;
            found.extend(page);
        }
    }
    let related = normal_related_filter(tickets, found, org_code);
    if !related.is_empty() {
        tracing::info!(
            "{} other ticket(s) of the rescanned devices decided too: {}",
            related.len(),
            related
                .iter()
                .map(|t| t.key.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(related)
}

/// The plain asset group IDs of a scheduled scan's `groupId` (a comma list;
/// `tag-` and `web-` items select no ticket group).
fn scan_groups(group: &str) -> Vec<String> {
    group
        .split(',')
        .map(str::trim)
        .filter(|g| !g.is_empty() && !g.starts_with("tag-") && !g.starts_with("web-"))
        .map(str::to_string)
        .collect()
}

/// SCHEDULED: every ticket NORMAL's and DECOMMISSIONED's RescanQueueJob would
/// select (with NORMAL's linked tickets), in the scan's group(s). The group
/// condition holds for the whole status selection — the original's operator
/// precedence applied it to the DECOMMISSIONED status only.
async fn scheduled_tickets(
    engine: &dyn TicketEngine,
    group: &str,
    org_code: &str,
    method_of_discovery: &str,
) -> Result<Vec<Ticket>, JobError> {
    let groups = scan_groups(group);
    if groups.is_empty() {
        tracing::warn!(
            "SCHEDULED - the scan names no asset group ({group:?}): no ticket to decide"
        );
        return Ok(Vec::new());
    }
    let q = scheduled_query(
        base_query(engine, method_of_discovery, org_code),
        &|s| engine.status_name(s),
        &groups,
    );
    let found: Vec<Ticket> = engine
        .search(q)
        .try_collect()
        .await
        .map_err(|e| JobError::Failed(anyhow::anyhow!("error while loading tickets: {e}")))?;
    let in_scope = |t: &Ticket| {
        t.field(field::ORG).eq_ignore_ascii_case(org_code)
            && groups.iter().any(|g| g == t.field(field::GROUP_ID).trim())
    };
    let mut tickets: Vec<Ticket> = found.into_iter().filter(|t| in_scope(t)).collect();
    let remediated = engine.status_name(status::RESOLVED_REMEDIATED);
    let parents: Vec<Ticket> = tickets
        .iter()
        .filter(|t| t.status.eq_ignore_ascii_case(&remediated))
        .cloned()
        .collect();
    let children = linked_children(engine, &parents, org_code, method_of_discovery).await;
    let mut seen: HashSet<String> = tickets.iter().map(|t| t.key.clone()).collect();
    tickets.extend(
        children
            .into_iter()
            .filter(|t| in_scope(t) && seen.insert(t.key.clone())),
    );
    tracing::info!(
        "SCHEDULED - {} ticket(s) of group(s) {} selected",
        tickets.len(),
        groups.join(",")
    );
    Ok(tickets)
}

/// `base AND (<NORMAL selection> OR <DECOMMISSIONED selection>) AND (<group> …)`.
fn scheduled_query(base: Query, status_name: &dyn Fn(&str) -> String, groups: &[String]) -> Query {
    base.and(selection(
        status_name,
        RescanType::Scheduled,
        chrono::Utc::now(),
        &[],
    ))
    .and(Cond::Any(
        groups
            .iter()
            .map(|g| Cond::Contains(Field::aegis(field::GROUP_ID), g.clone()))
            .collect(),
    ))
}

/// The tickets a close decides beyond its scan's own, minus those another
/// rescan holds: no lease, or a lease of this job or this scan.
fn not_held_by_others(
    tickets: Vec<Ticket>,
    holders: &HashMap<String, rescan_lease::Holder>,
    job_id: &str,
    scan_key: &str,
) -> (Vec<Ticket>, Vec<(Ticket, rescan_lease::Holder)>) {
    let mut free = Vec::new();
    let mut held = Vec::new();
    for t in tickets {
        match holders.get(&t.key) {
            Some(h)
                if h.job_history_id != job_id && h.scan_source_key.as_deref() != Some(scan_key) =>
            {
                held.push((t, h.clone()))
            }
            _ => free.push(t),
        }
    }
    (free, held)
}

/// Leases the extra tickets to this job and scan (so no RescanQueueJob queues
/// them while they are decided; released with the scan's), skipping — with a
/// log — every ticket another rescan or scan holds: it is that scan's to decide.
async fn take_leases(
    ctx: &JobContext,
    org_id: &str,
    p: &ScanClosePayload,
    tickets: Vec<Ticket>,
) -> Result<Vec<Ticket>, JobError> {
    let job_id = ctx.history.id.as_str();
    let keys: Vec<String> = tickets.iter().map(|t| t.key.clone()).collect();
    let holders = rescan_lease::holders(&ctx.pool, org_id, &keys).await?;
    let (free, held) = not_held_by_others(tickets, &holders, job_id, &p.scan_id);
    for (t, h) in &held {
        tracing::info!(
            "ticket {} skipped: it is in another rescan (job {}, scan {})",
            t.key,
            h.job_history_id,
            h.scan_source_key.as_deref().unwrap_or("not launched yet")
        );
    }
    let keys: Vec<String> = free.iter().map(|t| t.key.clone()).collect();
    let mut tx = ctx.pool.begin().await?;
    let won =
        rescan_lease::take_for_scan(&mut tx, org_id, job_id, &p.scan_id, p.kind.as_str(), &keys)
            .await?;
    tx.commit().await?;
    let won: HashSet<String> = won.into_iter().collect();
    Ok(free
        .into_iter()
        .filter(|t| {
            let mine = won.contains(&t.key);
            if !mine {
                tracing::info!(
                    "ticket {} skipped: another rescan leased it just now",
                    t.key
                );
            }
            mine
        })
        .collect())
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

    fn t(key: &str, device: &str, vuln: &str) -> Ticket {
        let mut t = Ticket {
            key: key.into(),
            ..Default::default()
        };
        for (k, v) in [
            (field::DEVICE_ID, device),
            (field::VULNERABILITY_ID, vuln),
            (field::ORG, "ACME"),
        ] {
            t.fields.insert(k.into(), v.into());
        }
        t
    }

    fn keys(ts: &[Ticket]) -> Vec<&str> {
        ts.iter().map(|t| t.key.as_str()).collect()
    }

    #[test]
    fn normal_related_tickets_are_the_exact_devices_other_batch_vulnerabilities_once() {
        // Rescanned: device 1001 for 38739, device 1002 for 38740.
        let rescanned = [t("V-1", "1001", "38739"), t("V-2", "1002", "38740")];
        let mut other_org = t("V-9", "1001", "38740");
        other_org.fields.insert(field::ORG.into(), "ACME-EU".into());
        let candidates = vec![
            t("V-3", "1001", "38740"),  // kept: 1001's other batch vulnerability
            t("V-3", "1001", "38740"),  // the same ticket from a second query: once
            t("V-4", "10011", "38740"), // word match only: another device
            t("V-5", "1001", "38739"),  // 1001 already has its 38739 ticket rescanned
            t("V-6", "1001", "99999"),  // not a vulnerability of the batch
            t("V-1", "1001", "38739"),  // already rescanned
            t("V-7", "1002", "38739"),  // kept: 1002's other batch vulnerability
            t("V-8", "1003", "38739"),  // a device not rescanned
            other_org,                  // Org word match only
        ];
        let kept = normal_related_filter(&rescanned, candidates, "acme");
        assert_eq!(keys(&kept), vec!["V-3", "V-7"]);
        assert_eq!(
            missing_vulnerabilities(&rescanned).get("1001"),
            Some(&vec!["38740".to_string()])
        );
    }

    #[test]
    fn related_tickets_another_scan_holds_are_skipped() {
        let holder = |job: &str, scan: Option<&str>| rescan_lease::Holder {
            job_history_id: job.into(),
            scan_source_key: scan.map(str::to_string),
        };
        let holders: HashMap<String, rescan_lease::Holder> = [
            ("V-2".to_string(), holder("close-1", Some("scan/1"))), // this job (a retry)
            ("V-3".to_string(), holder("rescan-9", None)),          // a RescanJob not launched yet
            ("V-4".to_string(), holder("rescan-8", Some("scan/2"))), // another scan in flight
            ("V-5".to_string(), holder("close-0", Some("scan/1"))), // this scan
        ]
        .into_iter()
        .collect();
        let tickets = ["V-1", "V-2", "V-3", "V-4", "V-5"]
            .iter()
            .map(|k| t(k, "1001", "1"))
            .collect();
        let (free, held) = not_held_by_others(tickets, &holders, "close-1", "scan/1");
        assert_eq!(keys(&free), vec!["V-1", "V-2", "V-5"]);
        assert_eq!(
            held.iter().map(|(t, _)| t.key.as_str()).collect::<Vec<_>>(),
            vec!["V-3", "V-4"]
        );
    }

    #[test]
    fn the_scheduled_selection_applies_the_group_to_every_status() {
        let resolve = |f: &Field| -> Result<String, String> {
            Ok(match f {
                Field::System(s) => s.to_string(),
                Field::Aegis(n) => format!("\"{n}\""),
            })
        };
        let q = scheduled_query(
            Query::new().eq(Field::PROJECT, "VULN"),
            &|s| s.to_string(),
            &scan_groups("42, tag-7,43"),
        );
        assert_eq!(
            q.render(&resolve, 0).expect("renders"),
            r#"project = "VULN" AND (status = "Resolved-Remediated" OR status = "Resolved-Decommissioned") AND ("GroupID" ~ "\"42\"" OR "GroupID" ~ "\"43\"")"#
        );
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

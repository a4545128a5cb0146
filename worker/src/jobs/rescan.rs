//! RescanJob: launches the scans of one group's tickets (spec
//! `original-jobs-rescan.md` §2), and the plumbing the four rescan jobs share
//! (payloads, the JIRA connection, child-job configs).
//!
//! In-source: the scanner config. Out-source: JIRA. Payload (from
//! RescanQueueJob): `{"group","tickets","type"}`. Each ticket becomes a
//! [`ScanTarget`] (IP Address, DeviceID, VulnerabilityID up to `;`, GroupID or
//! the payload's group, and the InstanceId and Region of an EC2-tracked
//! device); the scanner launches one scan per group (a discovery scan for
//! DECOMMISSIONED; Qualys EC2 groups: one per 10 instances), and each scan gets a ScanSummary row whose
//! ScanClosePayload names its tickets, inserted in the transaction that records
//! the scan on the tickets' leases. Each launch is recorded before the
//! scanner is asked (a `launching` ScanSummary row, see [`launch_intent`]), so a
//! retry after the worker died mid-launch adopts the scan the scanner started
//! instead of launching a second one. A ticket that cannot be scanned (no IP, an
//! IP outside every scannable group, a failed launch) is logged and its lease
//! released, so the next RescanQueueJob may try it again; the rest of the
//! batch goes ahead. No ticket is changed when a scan starts.

use aegis_shared::model::source_config::SourceConfig;
use aegis_shared::model::{device, rescan_lease};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::MySqlPool;

use super::launch_intent::{self, IntentJournal};
use super::scan_close::decision::RescanType;
use super::{Job, JobContext, JobError};
use crate::vendors::jira::JiraClient;
use crate::vendors::scans::{self, ScanKind, ScanTarget};
use crate::vendors::ticketing::{field, status, Ticket, TicketEngine};

/// Tickets per launch (the original's batch).
const BATCH: usize = 400;

/// RescanJob's payload (spec §1.8).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RescanPayload {
    #[serde(default)]
    pub group: String,
    #[serde(default)]
    pub tickets: Vec<String>,
    #[serde(rename = "type", default = "normal")]
    pub kind: RescanType,
}

/// ScanCloseJob's payload, stored in ScanSummary.ScanClosePayload (spec §2.4).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ScanClosePayload {
    #[serde(default)]
    pub group: String,
    #[serde(default)]
    pub tickets: Option<Vec<String>>,
    #[serde(rename = "type", default = "normal")]
    pub kind: RescanType,
    #[serde(default)]
    pub scan: Value,
    #[serde(default)]
    pub devices: Option<Vec<String>>,
    #[serde(default)]
    pub scan_id: String,
}

fn normal() -> RescanType {
    RescanType::Normal
}

impl RescanType {
    pub fn as_str(self) -> &'static str {
        match self {
            RescanType::Normal => "NORMAL",
            RescanType::Decommissioned => "DECOMMISSIONED",
            RescanType::Passive => "PASSIVE",
            RescanType::Exceptions => "EXCEPTIONS",
            RescanType::Scheduled => "SCHEDULED",
        }
    }
}

/// The organization's ID and code, or a config error naming the job.
pub(crate) fn org(ctx: &JobContext, job: &str) -> Result<(String, String), JobError> {
    ctx.org
        .as_ref()
        .map(|o| (o.id.clone(), o.code.clone()))
        .ok_or_else(|| JobError::Config(format!("{job} needs a JobConfig with an organization")))
}

pub(crate) async fn connect_jira(
    ctx: &JobContext,
    sc: &SourceConfig,
) -> Result<JiraClient, JobError> {
    JiraClient::connect(ctx.client(sc)?, sc, ctx.settings.keyring.as_ref())
        .await
        .map_err(|e| JobError::Failed(anyhow::anyhow!("could not connect to JIRA: {e}")))
}

/// Every Aegis status, to read a ticket's project status back as one.
const AEGIS_STATUSES: [&str; 14] = [
    status::OPEN,
    status::IN_PROGRESS,
    status::REOPENED,
    status::RESOLVED_REMEDIATED,
    status::RESOLVED_FALSE_POSITIVE,
    status::RESOLVED_DECOMMISSIONED,
    status::RESOLVED_EXCEPTION,
    status::CLOSED_EXCEPTION,
    status::CLOSED_FALSE_POSITIVE,
    status::CLOSED_DECOMMISSION,
    status::CLOSED_REMEDIATED,
    status::CLOSED_CERF,
    status::CLOSED_ERROR,
    status::SCAN_ERROR,
];

/// The Aegis status of a project status name (the name itself when unmapped).
pub(crate) fn aegis_status(engine: &dyn TicketEngine, project_status: &str) -> String {
    AEGIS_STATUSES
        .iter()
        .find(|s| engine.status_name(s).eq_ignore_ascii_case(project_status))
        .map(|s| s.to_string())
        .unwrap_or_else(|| project_status.to_string())
}

/// The org's first active JobConfig of `job` whose sources include `source_config`
/// (the original's `GetJobConfigByOrgIDAndJobIDWithSC`, with an exact match and an order).
pub(crate) async fn child_config(
    pool: &MySqlPool,
    org_id: &str,
    job: &str,
    source_config: &str,
) -> Result<Option<String>, JobError> {
    Ok(
        aegis_shared::model::job_config::for_source(pool, org_id, job, source_config)
            .await?
            .map(|(id, _)| id),
    )
}

/// Loads tickets one by one; a ticket that cannot be read is logged and left out
/// (the original failed the whole job when the *last* one failed).
pub(crate) async fn load_tickets(engine: &dyn TicketEngine, keys: &[String]) -> Vec<Ticket> {
    let mut out = Vec::with_capacity(keys.len());
    for key in keys {
        match engine.get(key).await {
            Ok(t) => out.push(t),
            Err(e) => tracing::warn!("could not load ticket {key} from JIRA, skipping it: {e}"),
        }
    }
    out
}

pub struct RescanJob;

impl Job for RescanJob {
    fn name(&self) -> &'static str {
        "RescanJob"
    }

    fn run(&self, ctx: JobContext) -> BoxFuture<'static, Result<(), JobError>> {
        Box::pin(async move {
            let result = run(&ctx).await;
            // Tickets this run did not put in a scan go back to the pool, whatever happened.
            if let Some(o) = &ctx.org {
                match rescan_lease::release_unscanned(&ctx.pool, &o.id, &ctx.history.id).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!("released {n} ticket(s) that were not scanned"),
                    Err(e) => tracing::warn!("could not release unscanned tickets: {e}"),
                }
            }
            result
        })
    }
}

async fn run(ctx: &JobContext) -> Result<(), JobError> {
    let p: RescanPayload = ctx.payload()?;
    if p.tickets.is_empty() {
        return Err(JobError::BadPayload {
            job: "RescanJob".into(),
            reason: "no tickets".into(),
        });
    }
    let (org_id, _) = org(ctx, "RescanJob")?;
    let (Some(scanner_sc), Some(jira_sc)) = (ctx.sources_in.first(), ctx.sources_out.first())
    else {
        return Err(JobError::Config(
            "RescanJob needs a scanner in-source and a JIRA out-source".into(),
        ));
    };
    let engine = connect_jira(ctx, jira_sc).await?;
    let launcher =
        scans::for_source(scanner_sc, ctx.client(scanner_sc)?).map_err(JobError::Config)?;
    let kind = match p.kind {
        RescanType::Decommissioned => ScanKind::Discovery,
        RescanType::Scheduled => {
            return Err(JobError::BadPayload {
                job: "RescanJob".into(),
                reason: "type SCHEDULED comes from ScanSyncJob only".into(),
            })
        }
        _ => ScanKind::Vulnerability,
    };
    let tickets = load_tickets(&engine, &p.tickets).await;
    let mut targets = Vec::new();
    for t in &tickets {
        let ip = t.field(field::IP_ADDRESS).trim().to_string();
        let group = match t.field(field::GROUP_ID).trim() {
            "" => p.group.clone(),
            g => g.to_string(),
        };
        targets.push(ScanTarget {
            ticket: t.key.clone(),
            ip,
            asset_id: t.field(field::DEVICE_ID).trim().to_string(),
            vuln_id: t
                .field(field::VULNERABILITY_ID)
                .split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_string(),
            group,
            instance_id: String::new(),
            region: String::new(),
        });
    }
    let source_id = scanner_sc.source_id.clone().unwrap_or_default();
    // EC2-tracked devices are scanned by instance ID where the scanner is set up for it.
    let asset_ids: Vec<String> = targets.iter().map(|t| t.asset_id.clone()).collect();
    let ec2 = device::ec2_identities(&ctx.pool, &org_id, &source_id, &asset_ids).await?;
    for t in &mut targets {
        if let Some(id) = ec2.get(&t.asset_id) {
            t.instance_id = id.instance_id.clone();
            t.region = id.region.clone();
        }
    }
    // An earlier attempt of this row may have died mid-launch: adopt the scans
    // it started, and never launch again a ticket already in a scan of this job.
    let adopted = launch_intent::resolve(ctx, &org_id, launcher.as_ref()).await?;
    let in_scan: std::collections::HashSet<String> =
        rescan_lease::scanned_by(&ctx.pool, &org_id, &ctx.history.id)
            .await?
            .into_iter()
            .chain(adopted)
            .collect();
    if !in_scan.is_empty() {
        tracing::info!(
            "ticket(s) {} already in a scan of this job (earlier attempt)",
            in_scan.iter().cloned().collect::<Vec<_>>().join(", ")
        );
        targets.retain(|t| !in_scan.contains(&t.ticket));
    }
    let journal = IntentJournal::new(ctx, &org_id, &source_id, &scanner_sc.id, &p.group, p.kind);
    let (mut launched, mut failed_batches) = (usize::from(!in_scan.is_empty()), Vec::new());
    for (n, batch) in targets.chunks(BATCH).enumerate() {
        // Unique to this row, attempt and batch: the scanner can be asked later
        // whether this very launch happened.
        let tag = format!("{}:{}:{n}", ctx.history.id, ctx.attempt);
        let report = launcher
            .launch(kind, batch, &tag, &journal, &ctx.cancel)
            .await;
        for (t, why) in &report.skipped {
            tracing::warn!(
                "{} - ticket {} ({}) not rescanned: {why}",
                p.kind.as_str(),
                t.ticket,
                if t.ip.is_empty() { "no IP" } else { &t.ip }
            );
        }
        for (ts, why) in &report.failed {
            let keys: Vec<&str> = ts.iter().map(|t| t.ticket.as_str()).collect();
            tracing::error!(
                "scan launch failed for ticket(s) {}: {why}",
                keys.join(", ")
            );
            failed_batches.push(why.clone());
        }
        for scan in &report.launched {
            journal.confirm(scan).await?;
            launched += 1;
            let keys: Vec<&str> = scan.targets.iter().map(|t| t.ticket.as_str()).collect();
            tracing::info!(
                "{} scan {} launched for ticket(s) {}",
                p.kind.as_str(),
                scan.scan_id,
                keys.join(", ")
            );
        }
        journal.discard_unlaunched().await?;
    }
    if launched == 0 && !failed_batches.is_empty() {
        return Err(JobError::Failed(anyhow::anyhow!(
            "no scan launched: {}",
            failed_batches.join("; ")
        )));
    }
    Ok(())
}

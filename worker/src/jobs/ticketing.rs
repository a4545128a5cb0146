//! TicketingJob: opens one JIRA ticket per eligible finding of the Detection
//! table (spec `original-jobs-sync-ticketing.md` §6).
//!
//! In-source: the scanner config (its Source name is the Method of Discovery,
//! its Source ID keys category rules and the IP assignment table). Out-source:
//! the JIRA config. Payload (all optional):
//!
//! ```json
//! {"mindate": "2026-01-01T00:00:00Z", "groups": ["42"], "devices": [],
//!  "last_updated_after": null, "ip_correlation": false,
//!  "ticket_inactive_kernels": false, "parallelism": 8}
//! ```
//!
//! Exactly one ticket per finding: every finding is claimed in `TicketClaim`
//! before JIRA is touched (see `aegis_shared::model::ticket`), and every issue
//! carries the finding's label, searched before creating, so two workers, a
//! retried run, or a run killed between the JIRA create and the database write
//! never open a second ticket. `AssetGroup.LastTicketing` only moves past
//! detections that were ticketed or deliberately skipped.
//!
//! Deliberate differences from the original (spec §15): JIRA is checked as well
//! as the database (5); the OS rule tests the OS (2); a tag-mapped assignment
//! group survives when no rule or IP match gives one (3); LastTicketing does
//! not move past failures (6); a detection without LastFound is dated by its
//! AlertDate (7); active Ignore rows suppress tickets even before AssetSync
//! attached them; failures fail the job instead of being masked (14).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aegis_shared::model::organization::OrgPayload;
use aegis_shared::model::ticket::{self, Claim, Holder, NewTicketRow};
use chrono::{DateTime, NaiveDate, Utc};
use futures::future::BoxFuture;
use futures::stream::{self, StreamExt};
use regex::Regex;
use serde::Deserialize;
use sqlx::MySqlPool;

use super::{Job, JobContext, JobError};
use crate::vendors::jira::JiraClient;
use crate::vendors::ticketing::{field, status, FieldValue, NewTicket, Ticket, TicketEngine};

#[derive(Debug, Default, Deserialize)]
struct Payload {
    #[serde(default)]
    mindate: Option<String>,
    #[serde(default)]
    groups: Option<Vec<String>>,
    #[serde(default)]
    devices: Option<Vec<String>>,
    #[serde(default)]
    last_updated_after: Option<String>,
    #[serde(default)]
    ip_correlation: bool,
    #[serde(default)]
    ticket_inactive_kernels: bool,
    /// Tickets in flight at once per run (the source's limiter still applies).
    #[serde(default)]
    parallelism: Option<usize>,
}

fn parse_time(name: &str, v: &Option<String>) -> Result<Option<DateTime<Utc>>, JobError> {
    match v.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(s) => crate::vendors::jira::dates::parse_any(s)
            .map(Some)
            .ok_or_else(|| JobError::BadPayload {
                job: "TicketingJob".into(),
                reason: format!("{name} {s:?} is not an RFC 3339 time"),
            }),
    }
}

pub struct TicketingJob;

impl Job for TicketingJob {
    fn name(&self) -> &'static str {
        "TicketingJob"
    }

    fn run(&self, ctx: JobContext) -> BoxFuture<'static, Result<(), JobError>> {
        Box::pin(run(ctx))
    }
}

/// One row of the eligible-detection query.
#[derive(Clone, Debug, sqlx::FromRow)]
struct Finding {
    #[sqlx(rename = "ID")]
    id: String,
    #[sqlx(rename = "DeviceID")]
    asset_id: String,
    #[sqlx(rename = "Detected")]
    detected: Option<DateTime<Utc>>,
    #[sqlx(rename = "Proof")]
    proof: Option<String>,
    #[sqlx(rename = "Port")]
    port: i32,
    #[sqlx(rename = "Protocol")]
    protocol: String,
    #[sqlx(rename = "Changed")]
    changed: DateTime<Utc>,
    #[sqlx(rename = "DeviceUUID")]
    device_uuid: String,
    #[sqlx(rename = "Ip")]
    ip: String,
    #[sqlx(rename = "HostName")]
    hostname: String,
    #[sqlx(rename = "MAC")]
    mac: Option<String>,
    #[sqlx(rename = "GroupID")]
    group_id: Option<String>,
    #[sqlx(rename = "OS")]
    os: Option<String>,
    #[sqlx(rename = "TrackingMethod")]
    tracking_method: Option<String>,
    #[sqlx(rename = "SourceVulnId")]
    source_vuln_id: String,
    #[sqlx(rename = "Title")]
    title: Option<String>,
    #[sqlx(rename = "CVSS")]
    cvss: f32,
    #[sqlx(rename = "CVSS3")]
    cvss3: Option<f32>,
    #[sqlx(rename = "Description")]
    description: String,
    #[sqlx(rename = "Threat")]
    threat: Option<String>,
    #[sqlx(rename = "Solution")]
    solution: String,
    #[sqlx(rename = "Patchable")]
    patchable: Option<String>,
    #[sqlx(rename = "Category")]
    category: Option<String>,
    #[sqlx(rename = "VulnSourceID")]
    vuln_source_id: Option<String>,
}

/// Columns and joins shared by group and device mode. Eligibility: in the org,
/// no IgnoreID and no active Ignore row matching it, not fixed, kernel active
/// (unless asked), changed after `after`.
const SELECT_FINDINGS: &str = "
SELECT d.ID, d.DeviceID, d.VulnerabilityID, d.ParentDetectionId,
       COALESCE(d.LastFound, d.AlertDate) AS Detected, d.Proof, d.Port, d.Protocol,
       GREATEST(d.Created, COALESCE(d.Updated, d.Created)) AS Changed,
       dev.ID AS DeviceUUID, dev.Ip, dev.HostName, dev.MAC, dev.GroupID, dev.OS, dev.TrackingMethod,
       v.SourceVulnId, v.Title, v.CVSS, v.CVSS3, v.Description, v.Threat, v.Solution, v.Patchable,
       v.Category, v.SourceID AS VulnSourceID
FROM Detection d
JOIN DetectionStatus ds ON ds.Id = d.DetectionStatusId
JOIN Device dev ON dev.AssetID = d.DeviceID AND dev.OrganizationID = d.OrganizationID
     AND (d.SourceID IS NULL OR dev.SourceID IS NULL OR dev.SourceID = d.SourceID)
JOIN VulnerabilityInfo v ON v.ID = d.VulnerabilityID
WHERE d.OrganizationID = ? AND d.IgnoreID IS NULL AND ds.Status <> 'fixed'
  AND (? OR d.ActiveKernel IS NULL OR d.ActiveKernel = 1)
  AND (d.Updated > ? OR d.Created > ?)
  AND NOT EXISTS (
      SELECT 1 FROM `Ignore` i
      WHERE i.OrganizationID = d.OrganizationID AND i.Active = 1 AND i.DeviceID = d.DeviceID
        AND ((i.TypeId = 2 AND i.VulnerabilityId = '')
             OR (i.VulnerabilityId = v.SourceVulnId
                 AND (i.Port IS NULL OR i.Port = '' OR i.Port = CONCAT(d.Port, ' ', d.Protocol))
                 AND (i.TypeId <> 0 OR i.DueDate IS NULL OR i.DueDate > UTC_TIMESTAMP(3)))))";

struct Rule {
    assignment_group: Option<String>,
    assignee: Option<String>,
    application_name: Option<String>,
    group_id: Option<String>,
    vuln_title: Option<Regex>,
    exclude_vuln_title: Option<Regex>,
    hostname: Option<Regex>,
    os: Option<Regex>,
    category: Option<Regex>,
    tag: Option<(i32, Regex)>,
    ports: Option<Vec<String>>,
    exclude_ports: Option<Vec<String>>,
}

type RuleRow = (
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<i32>,
    Option<String>,
    Option<String>,
    Option<String>,
);

async fn load_rules(pool: &MySqlPool, org_id: &str) -> Result<Vec<Rule>, JobError> {
    let rows: Vec<RuleRow> = sqlx::query_as(
        "SELECT AssignmentGroup, Assignee, ApplicationName, GroupID, VulnTitleRegex, ExcludeVulnTitleRegex,
                HostnameRegex, OSRegex, CategoryRegex, TagKeyID, TagKeyRegex, PortCSV, ExcludePortCSV
         FROM AssignmentRules WHERE OrganizationID = ? ORDER BY Priority DESC, ID",
    )
    .bind(org_id)
    .fetch_all(pool)
    .await?;
    let nonempty = |s: Option<String>| s.filter(|s| !s.is_empty());
    let re = |name: &str, s: Option<String>| -> Result<Option<Regex>, JobError> {
        nonempty(s)
            .map(|s| {
                Regex::new(&s)
                    .map_err(|e| JobError::Config(format!("assignment rule {name} {s:?}: {e}")))
            })
            .transpose()
    };
    let csv = |s: Option<String>| nonempty(s).map(|s| s.split(',').map(str::to_string).collect());
    let mut rules = Vec::with_capacity(rows.len());
    for (
        ag,
        assignee,
        app,
        group,
        title,
        ex_title,
        host,
        os,
        cat,
        tag_id,
        tag_re,
        ports,
        ex_ports,
    ) in rows
    {
        let tag = match (tag_id, nonempty(tag_re)) {
            (Some(id), Some(r)) => Some((
                id,
                Regex::new(&r).map_err(|e| JobError::Config(format!("assignment rule TagKeyRegex {r:?}: {e}")))?,
            )),
            (None, None) => None,
            _ => {
                return Err(JobError::Config(
                    "an assignment rule sets only one of TagKeyID and TagKeyRegex (both or neither: xor)".into(),
                ))
            }
        };
        rules.push(Rule {
            assignment_group: nonempty(ag),
            assignee: nonempty(assignee),
            application_name: nonempty(app),
            group_id: nonempty(group),
            vuln_title: re("VulnTitleRegex", title)?,
            exclude_vuln_title: re("ExcludeVulnTitleRegex", ex_title)?,
            hostname: re("HostnameRegex", host)?,
            os: re("OSRegex", os)?,
            category: re("CategoryRegex", cat)?,
            tag,
            ports: csv(ports),
            exclude_ports: csv(ex_ports),
        });
    }
    Ok(rules)
}

struct CategoryRule {
    title: Option<String>,
    category: Option<String>,
    kind: Option<String>,
    result: String,
}

struct TagMap {
    ticketing_tag: String,
    cloud_tag: String,
    options: String,
}

/// A device's tag: (TagKeyId, KeyValue, Value).
type DeviceTag = (i32, String, String);

/// Per-run caches of lookups many findings share.
#[derive(Default)]
struct Caches {
    os_types: Mutex<HashMap<String, String>>,
    references: Mutex<HashMap<String, Vec<String>>>,
    tags: Mutex<HashMap<String, Vec<DeviceTag>>>,
}

/// Everything one run shares between its findings.
struct Run {
    pool: MySqlPool,
    engine: Arc<dyn TicketEngine>,
    org_id: String,
    org_code: String,
    policy: OrgPayload,
    payload: Payload,
    mindate: Option<DateTime<Utc>>,
    holder: Holder,
    scanner_name: String,
    scanner_source_id: String,
    rules: Vec<Rule>,
    categories: Vec<CategoryRule>,
    tag_maps: Vec<TagMap>,
    closed: Vec<String>,
    open_status: String,
    caches: Caches,
    cancel: tokio_util::sync::CancellationToken,
}

/// What happened to one finding.
#[derive(Debug)]
enum Outcome {
    Created,
    Adopted,
    AlreadyTicketed,
    Skipped,
    /// Another live run holds the finding: not done by us.
    Busy,
    Failed(String),
}

impl Outcome {
    /// Whether LastTicketing may move past the finding.
    fn settled(&self) -> bool {
        !matches!(self, Outcome::Busy | Outcome::Failed(_))
    }
}

async fn run(ctx: JobContext) -> Result<(), JobError> {
    let payload: Payload = ctx.payload()?;
    let mindate = parse_time("mindate", &payload.mindate)?;
    let org = ctx.org.clone().ok_or_else(|| {
        JobError::Config("TicketingJob needs a JobConfig with an organization".into())
    })?;
    let policy = OrgPayload::parse(org.payload.as_deref().unwrap_or("{}")).map_err(|e| {
        JobError::Config(format!(
            "error while processing the organization Payload: {e}"
        ))
    })?;
    let (Some(scanner), Some(jira_sc)) = (ctx.sources_in.first(), ctx.sources_out.first()) else {
        return Err(JobError::Config(
            "TicketingJob needs a scanner in-source and a JIRA out-source".into(),
        ));
    };
    let engine: Arc<dyn TicketEngine> = Arc::new(
        JiraClient::connect(ctx.client(jira_sc)?, jira_sc, ctx.settings.keyring.as_ref())
            .await
            .map_err(|e| JobError::Failed(anyhow::anyhow!("could not connect to JIRA: {e}")))?,
    );
    let pool = ctx.pool.clone();
    let rules = load_rules(&pool, &org.id).await?;
    let categories = sqlx::query_as::<_, (Option<String>, Option<String>, Option<String>, String)>(
        "SELECT VulnerabilityTitle, VulnerabilityCategory, VulnerabilityType, Category FROM CategoryRule
         WHERE OrganizationID = ? AND (SourceID = ? OR SourceID IS NULL) ORDER BY ID",
    )
    .bind(&org.id)
    .bind(scanner.source_id.as_deref().unwrap_or_default())
    .fetch_all(&pool)
    .await?
    .into_iter()
    .map(|(title, category, kind, result)| CategoryRule { title, category, kind, result })
    .collect();
    let tag_maps = sqlx::query_as::<_, (String, String, String)>(
        "SELECT TicketingTag, CloudTag, Options FROM TagMap WHERE OrganizationID = ? AND Active = 1 ORDER BY ID",
    )
    .bind(&org.id)
    .fetch_all(&pool)
    .await?
    .into_iter()
    .map(|(ticketing_tag, cloud_tag, options)| TagMap { ticketing_tag, cloud_tag, options })
    .collect();
    let closed = status::CLOSED
        .iter()
        .map(|s| engine.status_name(s))
        .collect();
    let open_status = engine.status_name(status::OPEN);
    let devices = payload.devices.clone().unwrap_or_default();
    let run = Arc::new(Run {
        pool: pool.clone(),
        engine,
        org_id: org.id.clone(),
        org_code: org.code.clone(),
        policy,
        mindate,
        holder: Holder {
            job_history_id: ctx.history.id.clone(),
            attempt: ctx.attempt,
        },
        scanner_name: scanner.source.clone().unwrap_or_default(),
        scanner_source_id: scanner.source_id.clone().unwrap_or_default(),
        rules,
        categories,
        tag_maps,
        closed,
        open_status,
        caches: Caches::default(),
        cancel: ctx.cancel.clone(),
        payload,
    });

    let mut failures: Vec<String> = Vec::new();
    if !devices.is_empty() {
        for asset in &devices {
            let findings = load_device(&run, asset).await?;
            let outcomes = process(&run, findings).await?;
            failures.extend(summarize(&format!("device {asset}"), &outcomes));
        }
    } else {
        let groups = match run.payload.groups.clone().filter(|g| !g.is_empty()) {
            Some(g) => g,
            None => sqlx::query_as::<_, (String,)>(
                "SELECT DISTINCT GroupID FROM AssetGroup WHERE OrganizationID = ?",
            )
            .bind(&run.org_id)
            .fetch_all(&pool)
            .await?
            .into_iter()
            .map(|(g,)| g)
            .collect(),
        };
        for group in &groups {
            if group.trim().is_empty() {
                failures.push("empty group id in payload".into());
                continue;
            }
            failures.extend(ticket_group(&run, group).await?);
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(JobError::Failed(anyhow::anyhow!("{}", failures.join("; "))))
    }
}

/// Tickets one group and moves its LastTicketing; returns failure summaries.
async fn ticket_group(run: &Arc<Run>, group: &str) -> Result<Vec<String>, JobError> {
    let last: Option<(Option<DateTime<Utc>>,)> = sqlx::query_as(
        "SELECT MAX(LastTicketing) FROM AssetGroup WHERE OrganizationID = ? AND GroupID = ? HAVING COUNT(*) > 0",
    )
    .bind(&run.org_id)
    .bind(group)
    .fetch_optional(&run.pool)
    .await?;
    let Some((last,)) = last else {
        tracing::warn!(group, "no AssetGroup row for this group; skipped");
        return Ok(Vec::new());
    };
    let after = last.unwrap_or(DateTime::UNIX_EPOCH);
    let found_after = parse_time("last_updated_after", &run.payload.last_updated_after)?
        .unwrap_or(DateTime::UNIX_EPOCH);
    // Captured before reading: detections changed while we read are read next time.
    let started: (DateTime<Utc>,) = sqlx::query_as("SELECT UTC_TIMESTAMP(3)")
        .fetch_one(&run.pool)
        .await?;
    let sql = format!("{SELECT_FINDINGS} AND COALESCE(d.LastFound, d.AlertDate) > ? AND dev.GroupID = ? ORDER BY dev.TrackingMethod, d.Created");
    let findings: Vec<Finding> = sqlx::query_as(&sql)
        .bind(&run.org_id)
        .bind(run.payload.ticket_inactive_kernels)
        .bind(after)
        .bind(after)
        .bind(found_after)
        .bind(group)
        .fetch_all(&run.pool)
        .await?;
    tracing::info!(group, detections = findings.len(), "ticketing group");
    let outcomes = process(run, findings.clone()).await?;
    // Move past everything settled, but not past the oldest unsettled change.
    let mut next = started.0;
    for (f, o) in findings.iter().zip(&outcomes) {
        if !o.settled() {
            next = next.min(f.changed - chrono::Duration::milliseconds(1));
        }
    }
    if next > after {
        if let Err(e) = sqlx::query(
            "UPDATE AssetGroup SET LastTicketing = ? WHERE OrganizationID = ? AND GroupID = ?
             AND (LastTicketing IS NULL OR LastTicketing < ?)",
        )
        .bind(next)
        .bind(&run.org_id)
        .bind(group)
        .bind(next)
        .execute(&run.pool)
        .await
        {
            tracing::error!(group, error = %e, "could not update AssetGroup.LastTicketing");
        }
    }
    link_children(run, &findings).await;
    Ok(summarize(&format!("group {group}"), &outcomes)
        .into_iter()
        .collect())
}

async fn load_device(run: &Arc<Run>, asset: &str) -> Result<Vec<Finding>, JobError> {
    let after: Option<(Option<DateTime<Utc>>,)> = sqlx::query_as(
        "SELECT MAX(ag.LastTicketing) FROM Device dev JOIN AssetGroup ag ON ag.GroupID = dev.GroupID
         AND ag.OrganizationID = dev.OrganizationID WHERE dev.OrganizationID = ? AND dev.AssetID = ?",
    )
    .bind(&run.org_id)
    .bind(asset)
    .fetch_optional(&run.pool)
    .await?;
    let after = after.and_then(|(a,)| a).unwrap_or(DateTime::UNIX_EPOCH);
    let sql =
        format!("{SELECT_FINDINGS} AND d.DeviceID = ? ORDER BY dev.TrackingMethod, d.Created");
    Ok(sqlx::query_as(&sql)
        .bind(&run.org_id)
        .bind(run.payload.ticket_inactive_kernels)
        .bind(after)
        .bind(after)
        .bind(asset)
        .fetch_all(&run.pool)
        .await?)
}

fn summarize(what: &str, outcomes: &[Outcome]) -> Option<String> {
    let (mut created, mut adopted, mut failed, mut busy) = (0, 0, 0, 0);
    let mut first = None;
    for o in outcomes {
        match o {
            Outcome::Created => created += 1,
            Outcome::Adopted => adopted += 1,
            Outcome::Busy => busy += 1,
            Outcome::Failed(e) => {
                failed += 1;
                first.get_or_insert(e.clone());
            }
            _ => {}
        }
    }
    tracing::info!(
        "{what}: {created} ticket(s) created, {adopted} adopted from JIRA, {busy} held by another run, {failed} failed, {} total",
        outcomes.len()
    );
    first.map(|e| {
        format!(
            "{failed} of {} findings in {what} could not be ticketed (first: {e})",
            outcomes.len()
        )
    })
}

/// The in-run duplicate suppression of the original (stage 1): agent findings
/// are deduplicated by device and vulnerability, others also by port and
/// protocol, and a non-agent finding already reported by an agent is dropped.
fn in_run_duplicates(run: &Run, findings: &[Finding]) -> Vec<bool> {
    let (mut agent, mut other_bare, mut other_full) =
        (HashSet::new(), HashSet::new(), HashSet::new());
    findings
        .iter()
        .map(|f| {
            let bare = if run.payload.ip_correlation {
                format!(
                    "{}-{}-{}",
                    f.group_id.as_deref().unwrap_or_default(),
                    f.ip,
                    f.source_vuln_id
                )
            } else {
                format!("{}-{}", f.asset_id, f.source_vuln_id)
            };
            let is_agent = f
                .tracking_method
                .as_deref()
                .is_some_and(|t| t.eq_ignore_ascii_case("agent"));
            let dup = if is_agent {
                agent.contains(&bare) || other_bare.contains(&bare) || !agent.insert(bare.clone())
            } else {
                let full = format!("{bare}-{}-{}", f.port, f.protocol);
                let dup = agent.contains(&bare) || other_full.contains(&full);
                other_bare.insert(bare.clone());
                other_full.insert(full);
                dup
            };
            if dup {
                tracing::info!("ALREADY PROCESSED: {bare} (detection {})", f.id);
            }
            dup
        })
        .collect()
}

/// Runs the pipeline over a batch, `parallelism` findings at a time; the
/// outcomes are in the order of `findings`.
async fn process(run: &Arc<Run>, findings: Vec<Finding>) -> Result<Vec<Outcome>, JobError> {
    let dups = in_run_duplicates(run, &findings);
    let parallelism = run.payload.parallelism.unwrap_or(8).clamp(1, 64);
    let mut outcomes: Vec<Option<Outcome>> = (0..findings.len()).map(|_| None).collect();
    let indexed: Vec<(usize, Finding)> = findings.into_iter().enumerate().collect();
    for chunk in indexed.chunks(50) {
        if run.cancel.is_cancelled() {
            return Err(JobError::Cancelled);
        }
        // One JIRA search for the chunk's labels: issues opened by anyone
        // (a dead worker, an earlier deployment) before this point are adopted.
        let labels: Vec<String> = chunk
            .iter()
            .filter(|(i, _)| !dups[*i])
            .map(|(_, f)| ticket::finding_label(&finding_key(run, f)))
            .collect();
        let known = match run.engine.find_by_labels(&labels).await {
            Ok(found) => Some(index_by_label(found)),
            Err(e) => {
                tracing::warn!(error = %e, "searching JIRA for the batch's labels failed; searching per finding");
                None
            }
        };
        let known = Arc::new(known);
        let results: Vec<(usize, Outcome)> = stream::iter(chunk.iter().cloned())
            .map(|(i, f)| {
                let run = run.clone();
                let known = known.clone();
                let dup = dups[i];
                async move {
                    if dup {
                        return (i, Outcome::Skipped);
                    }
                    (i, ticket_finding(&run, &f, known.as_ref().as_ref()).await)
                }
            })
            .buffer_unordered(parallelism)
            .collect()
            .await;
        for (i, o) in results {
            outcomes[i] = Some(o);
        }
    }
    Ok(outcomes
        .into_iter()
        .map(|o| o.unwrap_or(Outcome::Skipped))
        .collect())
}

fn index_by_label(tickets: Vec<Ticket>) -> HashMap<String, Vec<Ticket>> {
    let mut m: HashMap<String, Vec<Ticket>> = HashMap::new();
    for t in tickets {
        for l in t.labels.iter().filter(|l| l.starts_with("aegis-")) {
            m.entry(l.clone()).or_default().push(t.clone());
        }
    }
    m
}

fn finding_key(run: &Run, f: &Finding) -> String {
    let asset = if run.payload.ip_correlation {
        format!("ip:{}|{}", f.group_id.as_deref().unwrap_or_default(), f.ip)
    } else {
        f.asset_id.clone()
    };
    ticket::finding_key(&run.org_id, &asset, &f.source_vuln_id, f.port, &f.protocol)
}

/// The chosen CVSS score: CVSS3 when the org asks for it and it exists.
fn score(policy: &OrgPayload, f: &Finding) -> f64 {
    match (policy.cvss_version, f.cvss3) {
        (3, Some(s)) => f64::from(s),
        _ => f64::from(f.cvss),
    }
}

/// The highest severity band whose `cvss_min` the score reaches.
fn band(policy: &OrgPayload, score: f64) -> Option<&aegis_shared::model::organization::Severity> {
    let mut bands: Vec<_> = policy.severities.iter().collect();
    bands.sort_by(|a, b| a.cvss_min.total_cmp(&b.cvss_min));
    bands.into_iter().rev().find(|b| b.cvss_min <= score + 1e-9)
}

/// `now + duration`, or `mindate + duration` when that is later.
fn due_date(now: DateTime<Utc>, mindate: Option<DateTime<Utc>>, days: i64) -> NaiveDate {
    let d = chrono::Duration::days(days);
    let due = match mindate {
        Some(m) if m + d > now + d => m + d,
        _ => now + d,
    };
    due.date_naive()
}

fn is_closed(run: &Run, t: &Ticket) -> bool {
    run.closed.iter().any(|c| c.eq_ignore_ascii_case(&t.status))
}

async fn ticket_finding(
    run: &Run,
    f: &Finding,
    known: Option<&HashMap<String, Vec<Ticket>>>,
) -> Outcome {
    if run.cancel.is_cancelled() {
        return Outcome::Busy;
    }
    let Some(detected) = f.detected else {
        tracing::error!(detection = %f.id, "the detection has no LastFound or AlertDate; not ticketed");
        return Outcome::Skipped;
    };
    let cvss = score(&run.policy, f);
    if cvss < run.policy.lowest_ticketed_cvss {
        tracing::debug!(
            "Skipping vulnerability {} with CVSS {cvss:.1}",
            f.source_vuln_id
        );
        return Outcome::Skipped;
    }
    let Some(severity) = band(&run.policy, cvss) else {
        tracing::debug!("Skipping vulnerability with CVSS {cvss:.1}: no severity band applies");
        return Outcome::Skipped;
    };
    let key = finding_key(run, f);
    let label = ticket::finding_label(&key);
    let claim = match ticket::claim(
        &run.pool,
        &run.org_id,
        &key,
        &f.id,
        &run.holder,
        &run.closed,
    )
    .await
    {
        Ok(c) => c,
        Err(e) => return Outcome::Failed(format!("claiming detection {}: {e}", f.id)),
    };
    match claim {
        Claim::Ticketed(title) => {
            tracing::info!(
                "EXISTING TICKET: [{title}] for vulnerability [{}] on device [{}]. Skipping...",
                f.source_vuln_id,
                f.asset_id
            );
            return Outcome::AlreadyTicketed;
        }
        Claim::Busy => return Outcome::Busy,
        Claim::Acquired { fresh, previous } => {
            // A fresh claim can only have an orphan issue if it was opened
            // before the batch search; otherwise search again now.
            let found = match known.filter(|_| fresh) {
                Some(k) => Ok(k.get(&label).cloned().unwrap_or_default()),
                None => {
                    run.engine
                        .find_by_labels(std::slice::from_ref(&label))
                        .await
                }
            };
            match found {
                Ok(list) => {
                    if let Some(t) = list
                        .iter()
                        .find(|t| !is_closed(run, t) && Some(&t.key) != previous.as_ref())
                    {
                        return record(
                            run,
                            f,
                            &key,
                            &t.key,
                            &t.status,
                            severity.duration,
                            None,
                            true,
                        )
                        .await;
                    }
                }
                Err(e) => {
                    release(run, &key).await;
                    return Outcome::Failed(format!("searching JIRA for {label}: {e}"));
                }
            }
        }
    }
    tracing::info!(
        "No ticket found for vulnerability [{}] on device [{}]. Creating new ticket...",
        f.source_vuln_id,
        f.asset_id
    );
    let new = match build_ticket(run, f, cvss, severity, detected, &label).await {
        Ok(t) => t,
        Err(e) => {
            release(run, &key).await;
            return Outcome::Failed(format!("preparing the ticket of detection {}: {e}", f.id));
        }
    };
    let group = new
        .fields
        .get(field::ASSIGNMENT_GROUP)
        .and_then(|v| match v {
            FieldValue::Text(s) => Some(s.clone()),
            _ => None,
        });
    // POST is not idempotent: after an ambiguous failure, look for the label
    // before trying again.
    let mut attempt = 0;
    loop {
        attempt += 1;
        match run.engine.create(&new).await {
            Ok(c) => {
                tracing::info!(
                    "Ticket created for vulnerability [{}] on device [{}]. [Title: {}]",
                    f.source_vuln_id,
                    f.asset_id,
                    c.key
                );
                let status = run.open_status.clone();
                return record(
                    run,
                    f,
                    &key,
                    &c.key,
                    &status,
                    severity.duration,
                    group,
                    false,
                )
                .await;
            }
            Err(e) if e.is_ambiguous() && attempt < 4 => {
                tracing::warn!(error = %e, attempt, "creating the ticket may have failed; checking JIRA before retrying");
                tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                match run
                    .engine
                    .find_by_labels(std::slice::from_ref(&label))
                    .await
                {
                    Ok(list) => {
                        if let Some(t) = list.iter().find(|t| !is_closed(run, t)) {
                            return record(
                                run,
                                f,
                                &key,
                                &t.key,
                                &t.status,
                                severity.duration,
                                group,
                                true,
                            )
                            .await;
                        }
                    }
                    Err(se) => {
                        // Unknown whether it exists: keep the claim for the
                        // next run to search and adopt.
                        return Outcome::Failed(format!(
                            "creating the ticket: {e}; then searching JIRA: {se}"
                        ));
                    }
                }
            }
            Err(e) => {
                if !e.is_ambiguous() {
                    release(run, &key).await;
                }
                return Outcome::Failed(format!("creating the ticket of detection {}: {e}", f.id));
            }
        }
    }
}

async fn release(run: &Run, key: &str) {
    if let Err(e) = ticket::release_claim(&run.pool, &run.org_id, key, &run.holder).await {
        tracing::warn!(error = %e, "could not release a ticket claim; it expires with this run");
    }
}

#[allow(clippy::too_many_arguments)]
async fn record(
    run: &Run,
    f: &Finding,
    key: &str,
    title: &str,
    status: &str,
    days: i64,
    group: Option<String>,
    adopted: bool,
) -> Outcome {
    if adopted {
        tracing::info!(
            "adopting [{title}] found in JIRA for vulnerability [{}] on device [{}]",
            f.source_vuln_id,
            f.asset_id
        );
    }
    let row = NewTicketRow {
        title: title.to_string(),
        status: status.to_string(),
        detection_id: f.id.clone(),
        org_id: run.org_id.clone(),
        due_date: due_date(Utc::now(), run.mindate, days),
        assignment_group: group,
        assignee: None,
    };
    match ticket::record_ticket(&run.pool, key, &run.holder, &row).await {
        Ok(true) => {}
        Ok(false) => tracing::warn!("the claim on [{title}] was taken over while creating it; the next holder adopts it by label"),
        Err(e) => return Outcome::Failed(format!("JIRA issue {title} exists but recording it failed: {e}")),
    }
    if adopted {
        Outcome::Adopted
    } else {
        Outcome::Created
    }
}

// ------------------------------------------------------------------ the ticket

async fn build_ticket(
    run: &Run,
    f: &Finding,
    cvss: f64,
    severity: &aegis_shared::model::organization::Severity,
    detected: DateTime<Utc>,
    label: &str,
) -> Result<NewTicket, JobError> {
    let title = f.title.clone().unwrap_or_default();
    let mut fields: BTreeMap<String, FieldValue> = BTreeMap::new();
    let mut put = |name: &str, v: FieldValue| {
        fields.insert(name.to_string(), v);
    };
    put(
        field::SOLUTION,
        FieldValue::Text(strip_html(&f.solution, true)),
    );
    put(
        field::VULNERABILITY,
        FieldValue::Text(truncate(&title, 255)),
    );
    put(field::VULNERABILITY_ID, f.source_vuln_id.as_str().into());
    put(field::DEVICE_ID, f.asset_id.as_str().into());
    put(
        field::GROUP_ID,
        f.group_id.clone().unwrap_or_default().into(),
    );
    put(field::IP_ADDRESS, FieldValue::Text(truncate(&f.ip, 255)));
    put(field::MAC_ADDRESS, f.mac.clone().unwrap_or_default().into());
    put(
        field::SERVICE_PORT,
        service_port(f.port, &f.protocol).into(),
    );
    put(field::METHOD_OF_DISCOVERY, run.scanner_name.as_str().into());
    put(
        field::CVSS,
        FieldValue::Text(if (0.0..=10.0).contains(&cvss) {
            format!("{cvss:.1}")
        } else {
            "None".into()
        }),
    );
    put(field::PRIORITY, severity.name.as_str().into());
    put(field::ALERT_DATE, FieldValue::Date(detected.date_naive()));
    put(
        field::OPERATING_SYSTEM,
        os_type(run, f.os.as_deref().unwrap_or_default())
            .await
            .into(),
    );
    put(field::OS_DETAILED, f.os.clone().unwrap_or_default().into());
    put(
        field::TRACKING_METHOD,
        f.tracking_method.clone().unwrap_or_default().into(),
    );
    if let Some(p) = f.patchable.as_deref().filter(|p| !p.is_empty()) {
        let p = match p.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => "Yes".to_string(),
            "false" | "0" | "no" => "No".to_string(),
            _ => p.to_string(),
        };
        put(field::PATCHABLE, p.into());
    }
    let category = run
        .categories
        .iter()
        .find(|r| {
            r.title.as_deref().is_none_or(|t| t == title)
                && r.category
                    .as_deref()
                    .is_none_or(|c| c == f.category.as_deref().unwrap_or_default())
                && r.kind.as_deref().is_none_or(str::is_empty)
        })
        .map(|r| r.result.clone())
        .unwrap_or_default();
    put(field::CATEGORY, category.as_str().into());
    let refs = references(run, f).await?;
    let (cves, vendor): (Vec<_>, Vec<_>) = refs.iter().partition(|r| r.contains("CVE"));
    put(
        field::CVE_REFERENCES,
        cves.iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(",")
            .into(),
    );
    put(
        field::VENDOR_REF,
        vendor
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(",")
            .into(),
    );
    put(
        field::CONFIG,
        (if vendor.is_empty() { "True" } else { "" }).into(),
    );
    put(field::ORG, run.org_code.as_str().into());

    // Tag mapping, then assignment.
    let mut hostname = f.hostname.clone();
    let mut labels: Vec<String> = Vec::new();
    let mut system_name = String::new();
    let mut tag_group: Option<String> = None;
    let tags = device_tags(run, &f.device_uuid).await?;
    let mut mapping_ok = true;
    'tags: for (_, key, value) in &tags {
        for m in run
            .tag_maps
            .iter()
            .filter(|m| m.cloud_tag.eq_ignore_ascii_case(key))
        {
            let append = match m.options.as_str() {
                "Append" => true,
                "Overwrite" => false,
                other => {
                    tracing::error!("unrecognized tag mapping option {other:?}; the ticket is created without assignment");
                    mapping_ok = false;
                    break 'tags;
                }
            };
            let stack = |existing: &str, v: &str| {
                if append && !existing.is_empty() {
                    format!("{existing},{v}")
                } else {
                    v.to_string()
                }
            };
            match m.ticketing_tag.to_lowercase().as_str() {
                "hostname" => hostname = stack(&hostname, value),
                "assignmentgroup" => {
                    tag_group = Some(stack(tag_group.as_deref().unwrap_or_default(), value))
                }
                "labels" => {
                    let l = format!("{}-{}", m.cloud_tag.to_lowercase(), value).replace(' ', "-");
                    if !append {
                        labels.clear();
                    }
                    labels.push(l);
                }
                "systemname" => system_name = stack(&system_name, value),
                _ => {}
            }
        }
    }
    put(field::HOSTNAME, FieldValue::Text(truncate(&hostname, 255)));
    put(field::SYSTEM_NAME, system_name.into());
    let mut assignee = None;
    let mut group = tag_group;
    if mapping_ok {
        if let Some(rule) = run.rules.iter().find(|r| rule_matches(r, f, &title, &tags)) {
            assignee = rule.assignee.clone();
            if rule.assignment_group.is_some() {
                group = rule.assignment_group.clone();
            }
            if let Some(app) = &rule.application_name {
                put(field::APPLICATION_NAME, app.as_str().into());
            }
        }
        let ruled = group.is_some();
        if !ruled && !f.ip.is_empty() {
            let row: Option<(String,)> = sqlx::query_as(
                "SELECT GroupName FROM AssignmentGroup WHERE SourceID = ? AND OrganizationID = ? AND IpAddress = ? LIMIT 1",
            )
            .bind(&run.scanner_source_id)
            .bind(&run.org_id)
            .bind(&f.ip)
            .fetch_optional(&run.pool)
            .await?;
            group = row.map(|(g,)| g);
        }
    }
    if let Some(g) = group.filter(|g| !g.is_empty()) {
        put(field::ASSIGNMENT_GROUP, g.into());
    }

    let mut description = String::new();
    let threat = strip_html(f.threat.as_deref().unwrap_or_default(), false);
    if !threat.is_empty() {
        description.push_str(&format!("*Threat:*\n{threat}\n"));
    }
    description.push_str(&format!(
        "*Impact:*\n\t{}\n\t*Proof:*\n\t{}",
        strip_html(&f.description, false),
        strip_html(f.proof.as_deref().unwrap_or_default(), false)
    ));
    if let Some(footer) = run
        .policy
        .description_footer
        .as_deref()
        .filter(|s| !s.is_empty())
    {
        description.push_str(&format!("\n\n{footer}"));
    }
    labels.push(label.to_string());
    Ok(NewTicket {
        summary: truncate(
            // The device's own hostname, as the original built the summary
            // before tag mapping.
            &strip_html(&format!("VRR ({} - {}): {title}", f.ip, f.hostname), false),
            255,
        ),
        description,
        due_date: Some(due_date(Utc::now(), run.mindate, severity.duration)),
        labels,
        assignee,
        fields,
    })
}

fn rule_matches(r: &Rule, f: &Finding, title: &str, tags: &[DeviceTag]) -> bool {
    let port = f.port.to_string();
    r.group_id.as_deref().is_none_or(|g| Some(g) == f.group_id.as_deref())
        && r.vuln_title.as_ref().is_none_or(|re| re.is_match(title))
        && r.exclude_vuln_title.as_ref().is_none_or(|re| !re.is_match(title))
        && r.hostname.as_ref().is_none_or(|re| re.is_match(&f.hostname))
        // The original tested OSRegex against the hostname (spec §15.2).
        && r.os.as_ref().is_none_or(|re| re.is_match(f.os.as_deref().unwrap_or_default()))
        && r.category.as_ref().is_none_or(|re| re.is_match(f.category.as_deref().unwrap_or_default()))
        && r.tag.as_ref().is_none_or(|(id, re)| tags.iter().find(|(k, _, _)| k == id).is_some_and(|(_, _, v)| re.is_match(v)))
        && r.ports.as_ref().is_none_or(|p| p.contains(&port))
        && r.exclude_ports.as_ref().is_none_or(|p| !p.contains(&port))
}

fn service_port(port: i32, protocol: &str) -> String {
    if (0..=65535).contains(&port) && !protocol.is_empty() {
        format!("{port} {protocol}")
    } else {
        String::new()
    }
}

async fn os_type(run: &Run, os: &str) -> String {
    if let Some(t) = run
        .caches
        .os_types
        .lock()
        .ok()
        .and_then(|c| c.get(os).cloned())
    {
        return t;
    }
    let found: Result<Option<(Option<String>,)>, _> = sqlx::query_as(
        "SELECT Type FROM OperatingSystemType WHERE LOCATE(LOWER(`Match`), LOWER(?)) > 0 OR `Match` = ''
         ORDER BY Priority DESC, Id LIMIT 1",
    )
    .bind(os)
    .fetch_optional(&run.pool)
    .await;
    let t = match found {
        Ok(Some((Some(t),))) => t,
        _ => "Unknown".to_string(),
    };
    if let Ok(mut c) = run.caches.os_types.lock() {
        c.insert(os.to_string(), t.clone());
    }
    t
}

async fn references(run: &Run, f: &Finding) -> Result<Vec<String>, JobError> {
    let cache_key = format!(
        "{}|{}",
        f.source_vuln_id,
        f.vuln_source_id.as_deref().unwrap_or_default()
    );
    if let Some(r) = run
        .caches
        .references
        .lock()
        .ok()
        .and_then(|c| c.get(&cache_key).cloned())
    {
        return Ok(r);
    }
    let rows: Vec<(Option<String>,)> = sqlx::query_as(
        "SELECT Reference FROM Vulnerability_Reference WHERE VulnInfoID = ? AND (SourceID <=> ?) ORDER BY ID",
    )
    .bind(&f.source_vuln_id)
    .bind(&f.vuln_source_id)
    .fetch_all(&run.pool)
    .await?;
    let refs: Vec<String> = rows
        .into_iter()
        .filter_map(|(r,)| r)
        .filter(|r| !r.is_empty())
        .collect();
    if let Ok(mut c) = run.caches.references.lock() {
        c.insert(cache_key, refs.clone());
    }
    Ok(refs)
}

async fn device_tags(run: &Run, device_uuid: &str) -> Result<Vec<DeviceTag>, JobError> {
    if let Some(t) = run
        .caches
        .tags
        .lock()
        .ok()
        .and_then(|c| c.get(device_uuid).cloned())
    {
        return Ok(t);
    }
    let rows: Vec<DeviceTag> = sqlx::query_as(
        "SELECT t.TagKeyId, k.KeyValue, t.Value FROM Tag t JOIN TagKey k ON k.Id = t.TagKeyId
         WHERE t.DeviceID = ? ORDER BY t.TagKeyId",
    )
    .bind(device_uuid)
    .fetch_all(&run.pool)
    .await?;
    if let Ok(mut c) = run.caches.tags.lock() {
        c.insert(device_uuid.to_string(), rows.clone());
    }
    Ok(rows)
}

/// Links each child detection's ticket to its parent's (group mode), skipping
/// links that already exist.
async fn link_children(run: &Arc<Run>, findings: &[Finding]) {
    let parents: HashSet<&str> = findings.iter().map(|f| f.id.as_str()).collect();
    if parents.is_empty() {
        return;
    }
    let mut pairs: Vec<(String, String)> = Vec::new();
    let ids: Vec<&str> = parents.into_iter().collect();
    for chunk in ids.chunks(500) {
        let sql = format!(
            "SELECT ID, ParentDetectionId FROM Detection WHERE OrganizationID = ? AND ParentDetectionId IN ({})",
            vec!["?"; chunk.len()].join(",")
        );
        let mut q = sqlx::query_as::<_, (String, String)>(&sql).bind(&run.org_id);
        for id in chunk {
            q = q.bind(*id);
        }
        match q.fetch_all(&run.pool).await {
            Ok(rows) => pairs.extend(rows),
            Err(e) => {
                tracing::error!(error = %e, "could not load child detections");
                return;
            }
        }
    }
    stream::iter(pairs)
        .for_each_concurrent(4, |(child, parent)| {
            let run = run.clone();
            async move {
                let (Ok(Some(parent_key)), Ok(Some(child_key))) = (
                    ticket::newest_for_detection(&run.pool, &run.org_id, &parent).await,
                    ticket::newest_for_detection(&run.pool, &run.org_id, &child).await,
                ) else {
                    return;
                };
                match run.engine.get(&child_key).await {
                    Ok(t) if t.linked.contains(&parent_key) => {}
                    Ok(_) => match run.engine.link(&child_key, &parent_key).await {
                        Ok(()) => tracing::info!("linked [{child_key}] to its parent [{parent_key}]"),
                        Err(e) => tracing::error!(error = %e, "could not link [{child_key}] to [{parent_key}]"),
                    },
                    Err(e) => tracing::error!(error = %e, "could not read [{child_key}] to link it"),
                }
            }
        })
        .await;
}

fn truncate(s: &str, max: usize) -> String {
    crate::vendors::jira::truncate(s, max)
}

/// Text for JIRA from scanner HTML: scripts and tags removed, entities
/// decoded, and (when `links`) `<a href=U>T</a>` turned into JIRA's `[T|U]`.
pub fn strip_html(s: &str, links: bool) -> String {
    static SCRIPT: std::sync::LazyLock<Regex> = std::sync::LazyLock::new(|| {
        Regex::new(r"(?is)<script\b.*?</script\s*>").expect("valid regex")
    });
    static LINK: std::sync::LazyLock<Regex> = std::sync::LazyLock::new(|| {
        Regex::new(r#"(?is)<a\b[^>]*?href\s*=\s*["']?([^"'\s>]+)["']?[^>]*>(.*?)</a\s*>"#)
            .expect("valid regex")
    });
    static TAG: std::sync::LazyLock<Regex> =
        std::sync::LazyLock::new(|| Regex::new(r"(?s)<[^>]*>").expect("valid regex"));
    let s = SCRIPT.replace_all(s, "");
    let s = if links {
        LINK.replace_all(&s, |c: &regex::Captures| {
            let text = TAG.replace_all(&c[2], "").trim().to_string();
            if text.is_empty() {
                format!("[{}]", &c[1])
            } else {
                format!("[{text}|{}]", &c[1])
            }
        })
    } else {
        s
    };
    let s = TAG.replace_all(&s, "");
    s.replace("&nbsp;", " ")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
        .trim()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use aegis_shared::model::organization::Severity;

    fn policy(version: u8) -> OrgPayload {
        OrgPayload {
            cvss_version: version,
            ..OrgPayload::default()
        }
    }

    #[test]
    fn the_highest_band_reached_wins_and_below_the_lowest_none() {
        let p = policy(2);
        assert_eq!(band(&p, 9.8).map(|b| b.name.as_str()), Some("Critical"));
        assert_eq!(band(&p, 7.0).map(|b| b.name.as_str()), Some("High"));
        assert_eq!(band(&p, 4.0).map(|b| b.name.as_str()), Some("Medium"));
        assert!(band(&p, 3.9).is_none());
        let unsorted = OrgPayload {
            severities: vec![
                Severity {
                    name: "Hi".into(),
                    duration: 1,
                    cvss_min: 7.0,
                },
                Severity {
                    name: "Lo".into(),
                    duration: 2,
                    cvss_min: 1.0,
                },
            ],
            ..p
        };
        assert_eq!(band(&unsorted, 8.0).map(|b| b.name.as_str()), Some("Hi"));
    }

    #[test]
    fn mindate_floors_the_due_date_only_when_later() {
        let now = DateTime::parse_from_rfc3339("2026-01-01T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(due_date(now, None, 30).to_string(), "2026-01-31");
        let past = now - chrono::Duration::days(10);
        assert_eq!(due_date(now, Some(past), 30).to_string(), "2026-01-31");
        let future = now + chrono::Duration::days(10);
        assert_eq!(due_date(now, Some(future), 30).to_string(), "2026-02-10");
    }

    #[test]
    fn html_becomes_jira_text() {
        assert_eq!(
            strip_html(
                r#"Apply <b>patch</b> from <a href="https://v.example/kb?a=1&amp;b=2">the vendor</a><script>alert(1)</script>."#,
                true
            ),
            "Apply patch from [the vendor|https://v.example/kb?a=1&b=2]."
        );
        assert_eq!(strip_html("a &lt;b&gt; <br/>c", false), "a <b> c");
    }

    fn finding() -> Finding {
        Finding {
            id: "d1".into(),
            asset_id: "1001".into(),
            detected: None,
            proof: None,
            port: 443,
            protocol: "tcp".into(),
            changed: Utc::now(),
            device_uuid: "u1".into(),
            ip: "10.0.0.5".into(),
            hostname: "web1".into(),
            mac: None,
            group_id: Some("42".into()),
            os: Some("Ubuntu Linux 18.04".into()),
            tracking_method: Some("IP".into()),
            source_vuln_id: "38739".into(),
            title: Some("SSL weak ciphers".into()),
            cvss: 7.5,
            cvss3: Some(9.0),
            description: String::new(),
            threat: None,
            solution: String::new(),
            patchable: None,
            category: Some("Network".into()),
            vuln_source_id: None,
        }
    }

    fn rule() -> Rule {
        Rule {
            assignment_group: None,
            assignee: None,
            application_name: None,
            group_id: None,
            vuln_title: None,
            exclude_vuln_title: None,
            hostname: None,
            os: None,
            category: None,
            tag: None,
            ports: None,
            exclude_ports: None,
        }
    }

    #[test]
    fn assignment_rules_test_every_condition_and_the_os_against_the_os() {
        let f = finding();
        let t = "SSL weak ciphers";
        let re = |s: &str| Some(Regex::new(s).unwrap());
        assert!(
            rule_matches(&rule(), &f, t, &[]),
            "a rule without conditions matches"
        );
        assert!(rule_matches(
            &Rule {
                os: re("(?i)ubuntu"),
                ..rule()
            },
            &f,
            t,
            &[]
        ));
        assert!(
            !rule_matches(
                &Rule {
                    os: re("^web"),
                    ..rule()
                },
                &f,
                t,
                &[]
            ),
            "OSRegex is not tested against the hostname"
        );
        assert!(rule_matches(
            &Rule {
                hostname: re("^web"),
                ..rule()
            },
            &f,
            t,
            &[]
        ));
        assert!(!rule_matches(
            &Rule {
                group_id: Some("43".into()),
                ..rule()
            },
            &f,
            t,
            &[]
        ));
        assert!(rule_matches(
            &Rule {
                vuln_title: re("SSL"),
                ..rule()
            },
            &f,
            t,
            &[]
        ));
        assert!(!rule_matches(
            &Rule {
                exclude_vuln_title: re("SSL"),
                ..rule()
            },
            &f,
            t,
            &[]
        ));
        assert!(rule_matches(
            &Rule {
                category: re("^Net"),
                ..rule()
            },
            &f,
            t,
            &[]
        ));
        assert!(rule_matches(
            &Rule {
                ports: Some(vec!["80".into(), "443".into()]),
                ..rule()
            },
            &f,
            t,
            &[]
        ));
        assert!(
            !rule_matches(
                &Rule {
                    ports: Some(vec!["80".into(), " 443".into()]),
                    ..rule()
                },
                &f,
                t,
                &[]
            ),
            "no trimming"
        );
        assert!(!rule_matches(
            &Rule {
                exclude_ports: Some(vec!["443".into()]),
                ..rule()
            },
            &f,
            t,
            &[]
        ));
        let tags = [(3, "Team".to_string(), "payments".to_string())];
        assert!(rule_matches(
            &Rule {
                tag: Some((3, Regex::new("^pay").unwrap())),
                ..rule()
            },
            &f,
            t,
            &tags
        ));
        assert!(
            !rule_matches(
                &Rule {
                    tag: Some((4, Regex::new(".*").unwrap())),
                    ..rule()
                },
                &f,
                t,
                &tags
            ),
            "no tag of that key"
        );
    }

    #[test]
    fn cvss3_is_used_only_when_asked_for_and_present() {
        let f = finding();
        assert_eq!(score(&policy(2), &f), 7.5);
        assert_eq!(score(&policy(3), &f), 9.0);
        assert_eq!(
            score(
                &policy(3),
                &Finding {
                    cvss3: None,
                    ..finding()
                }
            ),
            7.5
        );
    }

    #[test]
    fn service_port_needs_a_protocol_and_a_valid_port() {
        assert_eq!(service_port(443, "tcp"), "443 tcp");
        assert_eq!(service_port(0, "tcp"), "0 tcp");
        assert_eq!(service_port(443, ""), "");
        assert_eq!(service_port(70000, "tcp"), "");
    }
}

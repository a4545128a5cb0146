//! RescanQueueJob: selects the tickets due for a rescan and queues one
//! RescanJob per device group (spec `original-jobs-rescan.md` §1).
//!
//! In-source: JIRA. Out-source: the scanner config (its Source name is the
//! Method of Discovery). Payload: `{"type": "NORMAL" | "DECOMMISSIONED" |
//! "PASSIVE" | "EXCEPTIONS", "agent_ticket_rescan_delay_wait_in_minutes": n,
//! "include_exceptions": ["CERF-…"]}`.
//!
//! | type | tickets |
//! |---|---|
//! | NORMAL | Resolved-Remediated |
//! | DECOMMISSIONED | Resolved-Decommissioned |
//! | PASSIVE | Open, In-Progress, Reopened, Resolved-Exception, due within 15 days or created 20 or more days ago |
//! | EXCEPTIONS | Closed-Exception whose CERF is an active exception due within 30 days, or in `include_exceptions` |
//!
//! Each query is restricted to the project, the Method of Discovery and the Org.
//! A ticket is queued when its device's group (Device.GroupID in the database)
//! belongs to this scanner config, the group is not marked RescanQueueSkip, an
//! AGENT device's delay has passed, and **it wins its lease**: the leases
//! (`RescanLease`) and the RescanJob row are written in one transaction, so a
//! ticket already in a pending or running rescan, or in an unfinished scan, is
//! never queued twice, whatever other RescanQueueJobs run at the same time.
//!
//! DECOMMISSIONED, for groups that qualify for cloud decommission (see
//! `cloud_decom`): a ticket that cannot be rescanned now (its group skips the
//! RSQ, an AGENT delay, already in a rescan) has its IP handed to one
//! CloudDecommissionJob per group, parent = this row; a ticket whose IP is
//! already in a pending or running CloudDecommissionJob is neither queued nor
//! handed off again.
//!
//! Differences from the original: the exception list is the organization's
//! own; an empty CERF list ends the EXCEPTIONS run at once (the original hung);
//! the agent delay is measured from the ticket's last JIRA update, so it needs
//! no process memory; linked child tickets of NORMAL parents are read from the
//! parents' links rather than a `linkedIssues()` query.

use std::collections::{BTreeMap, HashMap};

use aegis_shared::model::job_history::{self, NewJob};
use aegis_shared::model::rescan_lease;
use chrono::{Duration, Utc};
use futures::future::BoxFuture;
use futures::TryStreamExt;
use serde::Deserialize;

use super::cloud_decom;
use super::rescan::{child_config, connect_jira, org, RescanPayload};
use super::scan_close::decision::RescanType;
use super::{Job, JobContext, JobError};
use crate::vendors::jira::jql::{Cond, Field};
use crate::vendors::ticketing::{field, status, Query, Ticket, TicketEngine};

#[derive(Debug, Deserialize)]
struct Payload {
    #[serde(rename = "type", default)]
    kind: Option<RescanType>,
    #[serde(default)]
    agent_ticket_rescan_delay_wait_in_minutes: Option<i64>,
    #[serde(default)]
    include_exceptions: Option<Vec<String>>,
}

pub struct RescanQueueJob;

impl Job for RescanQueueJob {
    fn name(&self) -> &'static str {
        "RescanQueueJob"
    }

    fn run(&self, ctx: JobContext) -> BoxFuture<'static, Result<(), JobError>> {
        Box::pin(run(ctx))
    }
}

/// Names of the organization's active exceptions due within 30 days.
async fn exceptions_due(ctx: &JobContext, org_id: &str) -> Result<Vec<String>, JobError> {
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT DISTINCT Approval FROM `Ignore`
          WHERE OrganizationID = ? AND TypeId = 0 AND Active = 1 AND Approval <> '' AND Approval NOT LIKE 'JobID%'
            AND DueDate <= DATE_ADD(UTC_TIMESTAMP(3), INTERVAL 30 DAY)
          ORDER BY Approval",
    )
    .bind(org_id)
    .fetch_all(&ctx.pool)
    .await
    .map_err(|e| JobError::Failed(anyhow::anyhow!("error while gathering exceptions: {e}")))?;
    Ok(rows.into_iter().map(|(a,)| a).collect())
}

/// NORMAL also rescans the live tickets linked to the resolved ones (the
/// original's `issue in linkedIssues(…)` query): Resolved-Remediated, Open,
/// In-Progress or Reopened, same Method of Discovery and Org, parents first.
/// They are read from the parents' links, one by one; one that cannot be read
/// is logged and skipped.
pub(crate) async fn linked_children(
    engine: &dyn TicketEngine,
    parents: &[Ticket],
    org_code: &str,
    method_of_discovery: &str,
) -> Vec<Ticket> {
    let live: Vec<String> = [
        status::RESOLVED_REMEDIATED,
        status::OPEN,
        status::IN_PROGRESS,
        status::REOPENED,
    ]
    .iter()
    .map(|s| engine.status_name(s))
    .collect();
    let mut seen: std::collections::HashSet<String> =
        parents.iter().map(|t| t.key.clone()).collect();
    let mut out = Vec::new();
    for key in parents.iter().flat_map(|t| t.linked.iter()) {
        if !seen.insert(key.clone()) {
            continue;
        }
        match engine.get(key).await {
            Ok(t)
                if live.iter().any(|s| s.eq_ignore_ascii_case(&t.status))
                    && t.field(field::ORG).eq_ignore_ascii_case(org_code)
                    && t.field(field::METHOD_OF_DISCOVERY)
                        .eq_ignore_ascii_case(method_of_discovery) =>
            {
                out.push(t)
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("could not load linked ticket {key}: {e}"),
        }
    }
    if !out.is_empty() {
        tracing::info!(
            "{} linked ticket(s) of resolved tickets selected too",
            out.len()
        );
    }
    out
}

/// Every selection's restriction: the project, the Method of Discovery (the
/// scanner's Source name) and the Org (a word match; callers check it exactly).
pub(crate) fn base_query(
    engine: &dyn TicketEngine,
    method_of_discovery: &str,
    org_code: &str,
) -> Query {
    engine
        .query()
        .eq(
            Field::aegis(field::METHOD_OF_DISCOVERY),
            method_of_discovery.to_string(),
        )
        .contains(Field::aegis(field::ORG), org_code.to_string())
}

/// The status (and date or CERF) condition selecting the tickets of a rescan
/// type, as one condition, so that a caller can combine selections and add
/// conditions that hold for all of them (ScanCloseJob's SCHEDULED selection).
/// `cerfs` is used by EXCEPTIONS only; SCHEDULED is NORMAL's and
/// DECOMMISSIONED's together.
pub(crate) fn selection(
    status_name: &dyn Fn(&str) -> String,
    kind: RescanType,
    now: chrono::DateTime<Utc>,
    cerfs: &[String],
) -> Cond {
    let names = |ss: &[&str]| ss.iter().map(|s| status_name(s)).collect::<Vec<_>>();
    match kind {
        RescanType::Normal => Cond::Eq(Field::STATUS, status_name(status::RESOLVED_REMEDIATED)),
        RescanType::Decommissioned => {
            Cond::Eq(Field::STATUS, status_name(status::RESOLVED_DECOMMISSIONED))
        }
        RescanType::Passive => Cond::All(vec![
            Cond::In(
                Field::STATUS,
                names(&[
                    status::OPEN,
                    status::IN_PROGRESS,
                    status::REOPENED,
                    status::RESOLVED_EXCEPTION,
                ]),
            ),
            Cond::Any(vec![
                Cond::Time(Field::DUE, "<=", now + Duration::days(15)),
                Cond::Time(Field::CREATED, "<=", now - Duration::days(20)),
            ]),
        ]),
        RescanType::Exceptions => Cond::All(vec![
            Cond::Eq(Field::STATUS, status_name(status::CLOSED_EXCEPTION)),
            Cond::In(Field::aegis(field::CERF), cerfs.to_vec()),
        ]),
        RescanType::Scheduled => Cond::Any(vec![
            selection(status_name, RescanType::Normal, now, cerfs),
            selection(status_name, RescanType::Decommissioned, now, cerfs),
        ]),
    }
}

/// Collects a ticket of a cloud-decommission group for the hand-off; false
/// when its group is not one.
fn collect_for_cloud(
    to_cloud: &mut BTreeMap<String, Vec<(String, String)>>,
    in_cloud: &HashMap<String, (String, String)>,
    key: &str,
) -> bool {
    match in_cloud.get(key) {
        Some((ip, group)) => {
            to_cloud
                .entry(group.clone())
                .or_default()
                .push((ip.clone(), key.to_string()));
            true
        }
        None => false,
    }
}

async fn run(ctx: JobContext) -> Result<(), JobError> {
    let p: Payload = ctx.payload()?;
    let kind = p.kind.unwrap_or(RescanType::Normal);
    if kind == RescanType::Scheduled {
        return Err(JobError::BadPayload {
            job: "RescanQueueJob".into(),
            reason: "type SCHEDULED comes from ScanSyncJob only".into(),
        });
    }
    let (org_id, org_code) = org(&ctx, "RescanQueueJob")?;
    let (Some(jira_sc), Some(scanner_sc)) = (ctx.sources_in.first(), ctx.sources_out.first())
    else {
        return Err(JobError::Config(
            "RescanQueueJob needs a JIRA in-source and a scanner out-source".into(),
        ));
    };
    let method_of_discovery = scanner_sc.source.clone().unwrap_or_default();
    let scanner_source_id = scanner_sc.source_id.clone().unwrap_or_default();
    let engine = connect_jira(&ctx, jira_sc).await?;
    let now = Utc::now();
    let cerfs = if kind == RescanType::Exceptions {
        let mut cerfs = exceptions_due(&ctx, &org_id).await?;
        cerfs.extend(p.include_exceptions.clone().unwrap_or_default());
        cerfs.sort();
        cerfs.dedup();
        if cerfs.is_empty() {
            tracing::info!("EXCEPTIONS - no exception is due within 30 days and include_exceptions is empty: nothing to rescan");
            return Ok(());
        }
        cerfs
    } else {
        Vec::new()
    };
    let order = match kind {
        RescanType::Normal | RescanType::Decommissioned => Field::DUE,
        _ => Field::CREATED,
    };
    let q = base_query(&engine, &method_of_discovery, &org_code)
        .and(selection(&|s| engine.status_name(s), kind, now, &cerfs))
        .order_by(order, true);
    let tickets: Vec<Ticket> = engine
        .search(q)
        .try_collect()
        .await
        .map_err(|e| JobError::Failed(anyhow::anyhow!("error while loading tickets: {e}")))?;
    let mut tickets: Vec<Ticket> = tickets
        .into_iter()
        .filter(|t| t.field(field::ORG).eq_ignore_ascii_case(&org_code))
        .collect();
    if kind == RescanType::Normal {
        let children = linked_children(&engine, &tickets, &org_code, &method_of_discovery).await;
        tickets.extend(children);
    }
    let prefix = if kind == RescanType::Normal {
        String::new()
    } else {
        format!("{} - ", kind.as_str())
    };
    tracing::info!("{prefix}{} ticket(s) selected from JIRA", tickets.len());
    if tickets.is_empty() {
        return Ok(());
    }

    // Groups of this scanner config, and every group's RescanQueueSkip flag.
    let groups: Vec<(String, String, bool)> = sqlx::query_as(
        "SELECT GroupID, ScannerSourceConfigID, RescanQueueSkip FROM AssetGroup WHERE OrganizationID = ?",
    )
    .bind(&org_id)
    .fetch_all(&ctx.pool)
    .await?;
    let skip: HashMap<&str, bool> = groups.iter().map(|(g, _, s)| (g.as_str(), *s)).collect();
    let allowed: HashMap<&str, bool> = groups
        .iter()
        .filter(|(_, sc, _)| *sc == scanner_sc.id)
        .map(|(g, _, s)| (g.as_str(), *s))
        .collect();

    // DECOMMISSIONED: groups backed by a cloud inventory hand the IPs of the
    // tickets they cannot rescan now (skipped, agent-delayed, already in a
    // rescan) to a CloudDecommissionJob; an IP already in a pending one is in
    // flight, neither queued nor handed off again.
    let (cloud_groups, cloud_pending) = if kind == RescanType::Decommissioned {
        (
            cloud_decom::qualifying_groups(&ctx.pool, &org_id, &org_code, &scanner_sc.id).await?,
            cloud_decom::pending_ips(&ctx.pool, &org_id).await?,
        )
    } else {
        Default::default()
    };
    // Ticket → (IP, cloud group) of the tickets in cloud groups.
    let mut in_cloud: HashMap<String, (String, String)> = HashMap::new();
    let mut to_cloud: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();

    let mut by_group: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for t in &tickets {
        let ip = t.field(field::IP_ADDRESS).trim().to_string();
        let jira_group = t.field(field::GROUP_ID).trim();
        if cloud_groups.contains_key(jira_group) {
            in_cloud.insert(t.key.clone(), (ip.clone(), jira_group.to_string()));
        }
        if in_cloud.contains_key(&t.key) && cloud_pending.contains(&ip) {
            tracing::info!(
                "{prefix}ticket {}: IP {ip} is already in a pending CloudDecommissionJob; not queued",
                t.key
            );
            continue;
        }
        if skip.get(t.field(field::GROUP_ID)).copied().unwrap_or(false) {
            if !collect_for_cloud(&mut to_cloud, &in_cloud, &t.key) {
                tracing::info!(
                    "{prefix}skipping queuing {}: its group is marked to skip the RSQ",
                    t.key
                );
            }
            continue;
        }
        let device: Option<(Option<String>, Option<String>)> = sqlx::query_as(
            "SELECT GroupID, TrackingMethod FROM Device WHERE OrganizationID = ? AND SourceID = ? AND AssetID = ? LIMIT 1",
        )
        .bind(&org_id)
        .bind(&scanner_source_id)
        .bind(t.field(field::DEVICE_ID))
        .fetch_optional(&ctx.pool)
        .await?;
        let Some((group, tracking)) = device else {
            tracing::warn!(
                "{prefix}ticket {}: device {:?} is not in the database; not queued",
                t.key,
                t.field(field::DEVICE_ID)
            );
            continue;
        };
        let Some(group) = group.filter(|g| allowed.contains_key(g.as_str())) else {
            tracing::warn!("{prefix}ticket {}: the device's group is not an asset group of scanner config {}; not queued", t.key, scanner_sc.id);
            continue;
        };
        if !in_cloud.contains_key(&t.key) && cloud_groups.contains_key(group.as_str()) {
            if cloud_pending.contains(&ip) {
                tracing::info!(
                    "{prefix}ticket {}: IP {ip} is already in a pending CloudDecommissionJob; not queued",
                    t.key
                );
                continue;
            }
            in_cloud.insert(t.key.clone(), (ip.clone(), group.clone()));
        }
        if allowed.get(group.as_str()).copied().unwrap_or(false) {
            if !collect_for_cloud(&mut to_cloud, &in_cloud, &t.key) {
                tracing::info!(
                    "{prefix}skipping queuing {}: group {group} is marked to skip the RSQ",
                    t.key
                );
            }
            continue;
        }
        if let (Some(delay), Some(updated)) =
            (p.agent_ticket_rescan_delay_wait_in_minutes, t.updated)
        {
            if tracking
                .as_deref()
                .is_some_and(|m| m.eq_ignore_ascii_case("AGENT"))
                && now < updated + Duration::minutes(delay)
            {
                tracing::debug!(
                    "{prefix}agent ticket {} is ready for rescan at {}",
                    t.key,
                    updated + Duration::minutes(delay)
                );
                collect_for_cloud(&mut to_cloud, &in_cloud, &t.key);
                continue;
            }
        }
        by_group.entry(group).or_default().push(t.key.clone());
    }
    let cloud_caller = cloud_decom::Caller {
        job_id: &ctx.history.id,
        created_by: "RESCAN QUEUE JOB",
        idempotency_key: None,
    };
    if by_group.is_empty() {
        return cloud_decom::hand_off_groups(
            &ctx.pool,
            &org_id,
            &cloud_groups,
            to_cloud,
            &cloud_caller,
            &prefix,
        )
        .await;
    }

    match rescan_lease::reclaim_stale(&ctx.pool, &org_id).await {
        Ok(0) => {}
        Ok(n) => tracing::info!("{prefix}took back {n} stale rescan lease(s)"),
        Err(e) => tracing::warn!("{prefix}could not take back stale rescan leases: {e}"),
    }
    let config = child_config(&ctx.pool, &org_id, "RescanJob", &scanner_sc.id)
        .await?
        .ok_or_else(|| {
            JobError::Config(format!(
                "no RescanJob JobConfig of this organization uses scanner config {}",
                scanner_sc.id
            ))
        })?;
    let (mut queued, mut busy) = (0usize, 0usize);
    for (group, keys) in by_group {
        let holder = uuid::Uuid::now_v7().to_string();
        let mut tx = ctx.pool.begin().await?;
        let won = rescan_lease::acquire(&mut tx, &org_id, &holder, kind.as_str(), &keys).await?;
        busy += keys.len() - won.len();
        for key in keys.iter().filter(|k| !won.contains(k)) {
            if let Some((ip, g)) = in_cloud.get(key) {
                to_cloud
                    .entry(g.clone())
                    .or_default()
                    .push((ip.clone(), key.clone()));
            }
        }
        if won.is_empty() {
            tx.rollback().await?;
            continue;
        }
        let payload = RescanPayload {
            group: group.clone(),
            tickets: won.clone(),
            kind,
        };
        let job = job_history::insert(
            &mut tx,
            &NewJob {
                job_name: "RescanJob".into(),
                config_id: Some(config.clone()),
                priority: None,
                payload: Some(
                    serde_json::to_string(&payload).map_err(|e| JobError::Failed(e.into()))?,
                ),
                parent_job_id: Some(ctx.history.id.clone()),
                created_by: "RESCAN QUEUE JOB".into(),
                idempotency_key: None,
                trace_parent: None,
            },
        )
        .await?;
        rescan_lease::assign(&mut tx, &org_id, &holder, &job.id).await?;
        tx.commit().await?;
        queued += won.len();
        tracing::info!(
            "{prefix}RescanJob {} queued for group {group}: {}",
            job.id,
            won.join(", ")
        );
    }
    tracing::info!("{prefix}{queued} ticket(s) queued for rescan, {busy} already in a rescan");
    cloud_decom::hand_off_groups(
        &ctx.pool,
        &org_id,
        &cloud_groups,
        to_cloud,
        &cloud_caller,
        &prefix,
    )
    .await
}

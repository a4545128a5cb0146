//! ExceptionJob: turns closed JIRA tickets into `Ignore` rows (spec §8) —
//! Closed-Exception tickets with a CERF and an expiration in the future become
//! exceptions, Closed-False-Positive tickets false positives — then clears
//! expired exceptions from detections. AssetSync attaches the Ignore rows to
//! detections on its next run. The installer's config is Continuous (60 s),
//! MaxInstances 1, AutoStart.
//!
//! In-source: JIRA. Out-source: the scanner config (its Source name filters
//! on Method of Discovery; its Source ID is written as `Ignore.SourceID`).
//! Payload: `{}`. A search or database error fails the run, so the window
//! (the last successful start) does not move past unprocessed tickets.

use chrono::{DateTime, TimeZone, Utc};
use futures::future::BoxFuture;
use futures::stream::TryStreamExt;
use sqlx::MySqlPool;

use super::ticket_sync::{connect, JiraSide};
use super::{Job, JobContext, JobError};
use crate::vendors::jira::jql::{Cond, Field};
use crate::vendors::ticketing::{field, status, Ticket, TicketEngine};

pub struct ExceptionJob;

impl Job for ExceptionJob {
    fn name(&self) -> &'static str {
        "ExceptionJob"
    }

    fn run(&self, ctx: JobContext) -> BoxFuture<'static, Result<(), JobError>> {
        Box::pin(run(ctx))
    }
}

const EXCEPTION: i32 = 0;
const FALSE_POSITIVE: i32 = 1;

async fn run(ctx: JobContext) -> Result<(), JobError> {
    let side = connect(&ctx, "ExceptionJob").await?;
    let closed_exception = side.engine.status_name(status::CLOSED_EXCEPTION);
    let closed_fp = side.engine.status_name(status::CLOSED_FALSE_POSITIVE);
    let q = side
        .engine
        .query()
        .contains(Field::aegis(field::ORG), side.org_code.clone())
        .eq(
            Field::aegis(field::METHOD_OF_DISCOVERY),
            side.method_of_discovery.clone(),
        )
        .and(Cond::Any(vec![
            Cond::All(vec![
                Cond::Eq(Field::STATUS, closed_exception.clone()),
                Cond::IsNotEmpty(Field::aegis(field::CERF)),
            ]),
            Cond::Eq(Field::STATUS, closed_fp.clone()),
        ]))
        .on_or_after(Field::UPDATED, side.since)
        .order_by(Field::UPDATED, true);
    let tickets: Result<Vec<Ticket>, _> = side.engine.search(q).try_collect().await;
    let search_result = match tickets {
        Ok(tickets) => {
            let mut saved = 0;
            for t in tickets
                .iter()
                .filter(|t| t.field(field::ORG).eq_ignore_ascii_case(&side.org_code))
            {
                if ctx.cancel.is_cancelled() {
                    return Err(JobError::Cancelled);
                }
                if process(&ctx.pool, &side, t, &closed_exception, &closed_fp).await? {
                    saved += 1;
                }
            }
            tracing::info!(
                "{saved} Ignore row(s) created or updated from {} ticket(s)",
                tickets.len()
            );
            Ok(())
        }
        Err(e) => Err(JobError::Failed(anyhow::anyhow!(
            "searching JIRA for closed tickets: {e}"
        ))),
    };
    // Always, as the original: clear expired exceptions from detections.
    let cleared = sqlx::query(
        "UPDATE Detection d JOIN `Ignore` i ON i.ID = d.IgnoreID
         SET d.IgnoreID = NULL, d.Updated = UTC_TIMESTAMP(3)
         WHERE d.OrganizationID = ? AND i.TypeId = 0 AND i.DueDate < UTC_TIMESTAMP(3)",
    )
    .bind(&side.org_id)
    .execute(&ctx.pool)
    .await?
    .rows_affected();
    if cleared > 0 {
        tracing::info!("{cleared} detection(s) lost an expired exception");
    }
    search_result
}

/// Saves the ticket's Ignore row; false when the ticket does not qualify.
async fn process(
    pool: &MySqlPool,
    side: &JiraSide,
    t: &Ticket,
    exception: &str,
    fp: &str,
) -> Result<bool, JobError> {
    let port = t.field(field::SERVICE_PORT).to_string();
    if t.status.eq_ignore_ascii_case(exception) {
        let cerf = t.field(field::CERF).trim();
        if cerf.is_empty() || cerf == "Empty" {
            tracing::warn!(ticket = %t.key, "empty CERF found");
            return Ok(false);
        }
        let Some(expiration) = t
            .field_time(field::EXCEPTION_EXPIRATION)
            .filter(|e| *e > Utc::now())
        else {
            tracing::debug!(
                "Skipping update for {}: CERF {cerf} expired in the past (or has no expiration)",
                t.key
            );
            return Ok(false);
        };
        tracing::info!("Creating/updating EXCEPTION {}", t.key);
        save_ignore(pool, side, EXCEPTION, t, expiration, cerf, &port).await?;
        Ok(true)
    } else if t.status.eq_ignore_ascii_case(fp) {
        tracing::info!("Creating/updating FALSE POSITIVE {}", t.key);
        let far_past = Utc
            .with_ymd_and_hms(1111, 1, 1, 1, 1, 0)
            .single()
            .unwrap_or(DateTime::UNIX_EPOCH);
        save_ignore(pool, side, FALSE_POSITIVE, t, far_past, &t.key, &port).await?;
        Ok(true)
    } else {
        tracing::warn!(ticket = %t.key, status = %t.status, "unrecognized status for exception processing");
        Ok(false)
    }
}

/// The original's SaveIgnore: an upsert keyed on (DeviceID, VulnerabilityID,
/// Port, organization); the SourceID of an existing row stays.
async fn save_ignore(
    pool: &MySqlPool,
    side: &JiraSide,
    type_id: i32,
    t: &Ticket,
    due: DateTime<Utc>,
    approval: &str,
    port: &str,
) -> Result<(), JobError> {
    let (device, vuln) = (t.field(field::DEVICE_ID), t.field(field::VULNERABILITY_ID));
    let mut tx = pool.begin().await?;
    let existing: Option<(String,)> = sqlx::query_as(
        "SELECT ID FROM `Ignore` WHERE OrganizationID = ? AND DeviceID = ? AND VulnerabilityId = ? AND (Port <=> ?)
         ORDER BY DBCreatedDate LIMIT 1 FOR UPDATE",
    )
    .bind(&side.org_id)
    .bind(device)
    .bind(vuln)
    .bind(port)
    .fetch_optional(&mut *tx)
    .await?;
    match existing {
        Some((id,)) => {
            sqlx::query(
                "UPDATE `Ignore` SET TypeId = ?, DueDate = ?, Approval = ?, Active = 1, DBUpdatedDate = UTC_TIMESTAMP(3),
                 UpdatedBy = 'ExceptionJob' WHERE ID = ?",
            )
            .bind(type_id)
            .bind(due)
            .bind(approval)
            .bind(&id)
            .execute(&mut *tx)
            .await?;
        }
        None => {
            sqlx::query(
                "INSERT INTO `Ignore` (ID, SourceID, OrganizationID, TypeId, VulnerabilityId, DeviceID, DueDate, Approval,
                                       Active, Port, CreatedBy)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1, ?, 'ExceptionJob')",
            )
            .bind(uuid::Uuid::new_v4().to_string())
            .bind(Some(side.scanner_source_id.as_str()).filter(|s| !s.is_empty()))
            .bind(&side.org_id)
            .bind(type_id)
            .bind(vuln)
            .bind(device)
            .bind(due)
            .bind(approval)
            .bind(port)
            .execute(&mut *tx)
            .await?;
        }
    }
    tx.commit().await?;
    Ok(())
}

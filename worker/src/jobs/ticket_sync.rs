//! TicketSyncJob: copies JIRA tickets updated since the last successful run
//! into the `Ticket` table (status, assignment, dates), and inserts the ones
//! the database does not know (spec §7).
//!
//! In-source: JIRA. Out-source: the scanner config, whose Source name is the
//! Method of Discovery filter. Payload: `{}`.
//!
//! Differences from the original: the window starts at the minute of the last
//! successful start and uses `>=` (JQL has minute precision; the original's `>`
//! lost tickets updated in the same minute), the Org match is checked exactly
//! after JIRA's word search, and a search or database error fails the run, so
//! the window does not move past tickets that were not synced.

use aegis_shared::model::ticket::{self, SyncedTicket};
use chrono::{DateTime, Timelike, Utc};
use futures::future::BoxFuture;
use futures::stream::TryStreamExt;

use super::{Job, JobContext, JobError};
use crate::vendors::jira::jql::Field;
use crate::vendors::jira::JiraClient;
use crate::vendors::ticketing::{field, Ticket, TicketEngine};

pub struct TicketSyncJob;

impl Job for TicketSyncJob {
    fn name(&self) -> &'static str {
        "TicketSyncJob"
    }

    fn run(&self, ctx: JobContext) -> BoxFuture<'static, Result<(), JobError>> {
        Box::pin(run(ctx))
    }
}

/// The JIRA connection, org and Method of Discovery that the sync and
/// exception jobs share: in-source JIRA, out-source scanner.
pub(crate) struct JiraSide {
    pub engine: JiraClient,
    pub org_id: String,
    pub org_code: String,
    pub method_of_discovery: String,
    pub scanner_source_id: String,
    /// The start of the last successful run, floored to the minute (JQL's precision).
    pub since: DateTime<Utc>,
}

pub(crate) async fn connect(ctx: &JobContext, job: &str) -> Result<JiraSide, JobError> {
    let org = ctx
        .org
        .clone()
        .ok_or_else(|| JobError::Config(format!("{job} needs a JobConfig with an organization")))?;
    let (Some(jira), Some(scanner)) = (ctx.sources_in.first(), ctx.sources_out.first()) else {
        return Err(JobError::Config(format!(
            "{job} needs a JIRA in-source and a scanner out-source"
        )));
    };
    let engine = JiraClient::connect(ctx.client(jira)?, jira, ctx.settings.keyring.as_ref())
        .await
        .map_err(|e| JobError::Failed(anyhow::anyhow!("could not connect to JIRA: {e}")))?;
    let since = ctx
        .config
        .as_ref()
        .and_then(|c| c.last_job_start)
        .unwrap_or(DateTime::UNIX_EPOCH);
    let since = since
        .with_second(0)
        .and_then(|t| t.with_nanosecond(0))
        .unwrap_or(since);
    Ok(JiraSide {
        engine,
        org_id: org.id,
        org_code: org.code,
        method_of_discovery: scanner.source.clone().unwrap_or_default(),
        scanner_source_id: scanner.source_id.clone().unwrap_or_default(),
        since,
    })
}

/// `"443 tcp"` → (443, "tcp"); `""` → (0, ""); anything else is an error.
pub(crate) fn parse_service_port(s: &str) -> Result<(i32, String), String> {
    let s = s.trim();
    if s.is_empty() {
        return Ok((0, String::new()));
    }
    match s.split(' ').collect::<Vec<_>>().as_slice() {
        [port, proto] => port
            .parse::<i32>()
            .map(|p| (p, proto.to_string()))
            .map_err(|_| format!("port formatting error: {s:?}")),
        _ => Err(format!("port formatting error: {s:?}")),
    }
}

async fn run(ctx: JobContext) -> Result<(), JobError> {
    let side = connect(&ctx, "TicketSyncJob").await?;
    let q = side
        .engine
        .query()
        .on_or_after(Field::UPDATED, side.since)
        .contains(Field::aegis(field::ORG), side.org_code.clone())
        .eq(
            Field::aegis(field::METHOD_OF_DISCOVERY),
            side.method_of_discovery.clone(),
        )
        .order_by(Field::UPDATED, true);
    let side = &side;
    let pool = &ctx.pool;
    let results: Vec<Result<bool, String>> = side
        .engine
        .search(q)
        .map_err(|e| JobError::Failed(anyhow::anyhow!("searching JIRA for updated tickets: {e}")))
        .try_filter(|t| {
            std::future::ready(t.field(field::ORG).eq_ignore_ascii_case(&side.org_code))
        })
        .map_ok(|t| async move { Ok::<_, JobError>(sync_one(pool, side, &t).await) })
        .try_buffer_unordered(16)
        .try_collect()
        .await?;
    let failures: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    let synced = results.iter().filter(|r| matches!(r, Ok(true))).count();
    tracing::info!(
        "{synced} ticket(s) synced, {} skipped or failed",
        results.len() - synced
    );
    if let Some(first) = failures.iter().find(|e| e.starts_with("database")) {
        return Err(JobError::Failed(anyhow::anyhow!(
            "{} ticket(s) could not be synced (first: {first})",
            failures.len()
        )));
    }
    Ok(())
}

/// Ok(true) synced, Ok(false) skipped, Err(reason) failed.
async fn sync_one(pool: &sqlx::MySqlPool, side: &JiraSide, t: &Ticket) -> Result<bool, String> {
    let row = SyncedTicket {
        title: t.key.clone(),
        status: t.status.clone(),
        org_id: side.org_id.clone(),
        assignment_group: Some(t.field(field::ASSIGNMENT_GROUP).to_string())
            .filter(|s| !s.is_empty()),
        assignee: t.assignee.clone(),
        due_date: t
            .due_date
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .map(|d| d.and_utc()),
        created: t.created,
        updated: t.updated,
        resolution_date: t.resolution_date,
        exception_date: t.field_time(field::EXCEPTION_DATE),
    };
    match ticket::update_from_jira(pool, &row).await {
        Ok(true) => return Ok(true),
        Ok(false) => {}
        Err(e) => {
            tracing::error!(ticket = %t.key, error = %e, "could not update the ticket");
            return Err(format!("database: {e}"));
        }
    }
    let (port, protocol) = match parse_service_port(t.field(field::SERVICE_PORT)) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(ticket = %t.key, "{e}");
            return Ok(false);
        }
    };
    let detection: Result<Option<(String,)>, _> = sqlx::query_as(
        "SELECT d.ID FROM Detection d JOIN VulnerabilityInfo v ON v.ID = d.VulnerabilityID
         WHERE d.OrganizationID = ? AND d.DeviceID = ? AND v.SourceVulnId = ? AND d.Port = ? AND d.Protocol = ?
         ORDER BY d.Created DESC LIMIT 1",
    )
    .bind(&side.org_id)
    .bind(t.field(field::DEVICE_ID))
    .bind(t.field(field::VULNERABILITY_ID))
    .bind(port)
    .bind(&protocol)
    .fetch_optional(pool)
    .await;
    match detection {
        Ok(Some((id,))) => match ticket::insert_from_jira(pool, &row, &id).await {
            Ok(()) => Ok(true),
            Err(e) => Err(format!("database: {e}")),
        },
        Ok(None) => {
            tracing::error!(ticket = %t.key, "could not find detection for ticket {}", t.key);
            Ok(false)
        }
        Err(e) => Err(format!("database: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_service_port;

    #[test]
    fn service_ports_parse_like_the_original() {
        assert_eq!(parse_service_port("443 tcp"), Ok((443, "tcp".into())));
        assert_eq!(parse_service_port(""), Ok((0, String::new())));
        assert!(parse_service_port("443").is_err());
        assert!(parse_service_port("x tcp").is_err());
        assert!(parse_service_port("443  tcp").is_err());
    }
}

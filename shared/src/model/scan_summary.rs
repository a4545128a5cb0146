//! Scan summaries (`ScanSummary`): one row per scan a RescanJob launched, or a
//! ScanSyncJob started tracking (a Qualys scheduled scan), with the
//! ScanClosePayload its ScanCloseJob will get. The status is written by
//! ScanSyncJob; its move to a terminal status is a compare-and-set, so two
//! ScanSyncJobs never queue two ScanCloseJobs for one scan.
//!
//! **Launch intents.** Before a RescanJob asks the scanner to start a scan it
//! writes the scan's row in status [`LAUNCHING`], under a placeholder key
//! (`launching:<uuid>`, see [`intent_key`]), with the scan object as far as it
//! is known (its unique name, its temporary objects) and its tickets' leases
//! pointing at that key. Once the scanner names the scan, [`confirm_intent`]
//! rewrites the key to the scan's ID and the status to `queued` (leases too, same
//! transaction). A worker killed in between leaves the intent behind, and
//! whoever finds it (the job's retry, or ScanSyncJob once the job has ended)
//! asks the scanner for a scan of that name and adopts it, or discards the intent.

use chrono::{DateTime, Utc};
use sqlx::{MySql, MySqlPool, Transaction};

use super::job_history::{self, NewJob};
use super::{rescan_lease, ModelError};

/// Statuses after which a scan is no longer polled (spec §0.3).
pub const TERMINAL: [&str; 4] = ["finished", "canceled", "stopped", "error"];

pub fn is_terminal(status: &str) -> bool {
    TERMINAL.iter().any(|t| t.eq_ignore_ascii_case(status))
}

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct ScanSummary {
    #[sqlx(rename = "SourceId")]
    pub source_id: String,
    #[sqlx(rename = "OrgID")]
    pub org_id: String,
    #[sqlx(rename = "ScannerSourceConfigID")]
    pub scanner_source_config_id: Option<String>,
    #[sqlx(rename = "SourceKey")]
    pub source_key: String,
    #[sqlx(rename = "ScanStatus")]
    pub scan_status: Option<String>,
    #[sqlx(rename = "ParentJobId")]
    pub parent_job_id: String,
    #[sqlx(rename = "ScanClosePayload")]
    pub scan_close_payload: String,
    #[sqlx(rename = "CreatedDate")]
    pub created_date: DateTime<Utc>,
}

const SELECT: &str = "SELECT SourceId, OrgID, ScannerSourceConfigID, SourceKey, ScanStatus, ParentJobId, ScanClosePayload, CreatedDate FROM ScanSummary";

/// A launched scan.
#[derive(Clone, Debug)]
pub struct NewScanSummary<'a> {
    pub source_id: &'a str,
    pub org_id: &'a str,
    pub scanner_source_config_id: &'a str,
    pub source_key: &'a str,
    pub payload: &'a str,
    pub parent_job_id: &'a str,
}

/// Inserts the summary (status `queued`) of a launched scan.
pub async fn insert(
    tx: &mut Transaction<'_, MySql>,
    s: &NewScanSummary<'_>,
) -> Result<(), ModelError> {
    insert_with_status(tx, s, "queued").await
}

/// Inserts the summary with `status`.
async fn insert_with_status(
    tx: &mut Transaction<'_, MySql>,
    s: &NewScanSummary<'_>,
    status: &str,
) -> Result<(), ModelError> {
    sqlx::query(
        "INSERT INTO ScanSummary (SourceId, OrgID, ScannerSourceConfigID, SourceKey, ScanStatus, ParentJobId, ScanClosePayload, CreatedDate)
         VALUES (?, ?, ?, ?, ?, ?, ?, UTC_TIMESTAMP(3))",
    )
    .bind(s.source_id)
    .bind(s.org_id)
    .bind(s.scanner_source_config_id)
    .bind(s.source_key)
    .bind(status)
    .bind(s.parent_job_id)
    .bind(s.payload)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Starts tracking a scan Aegis did not launch (a scheduled scan), status
/// `queued`. Returns false when the scan is already tracked: the natural key
/// (scanner Source, organization, scan ID) is the primary key, so a second
/// ScanSyncJob run, or one racing on another worker, never inserts it twice.
pub async fn track(pool: &MySqlPool, s: &NewScanSummary<'_>) -> Result<bool, ModelError> {
    let mut tx = pool.begin().await?;
    match insert(&mut tx, s).await {
        Ok(()) => {
            tx.commit().await?;
            Ok(true)
        }
        Err(ModelError::Sql(e)) if super::is_duplicate_key(&e) => {
            tx.rollback().await?;
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// Status of a launch intent: written before the launch call, not a scan yet.
pub const LAUNCHING: &str = "launching";

/// Prefix of an intent's placeholder SourceKey.
pub const INTENT_PREFIX: &str = "launching:";

/// A fresh placeholder key for a launch intent.
pub fn intent_key() -> String {
    format!("{INTENT_PREFIX}{}", uuid::Uuid::now_v7())
}

impl ScanSummary {
    /// A launch intent (no scanner ID yet), not a scan to poll.
    pub fn is_intent(&self) -> bool {
        self.scan_status.as_deref() == Some(LAUNCHING)
    }
}

/// Records a launch intent (status `launching`, `s.source_key` an [`intent_key`])
/// and points the tickets' leases held by the job at it, in one transaction.
pub async fn insert_intent(
    pool: &MySqlPool,
    s: &NewScanSummary<'_>,
    tickets: &[String],
) -> Result<(), ModelError> {
    let mut tx = pool.begin().await?;
    insert_with_status(&mut tx, s, LAUNCHING).await?;
    rescan_lease::set_scan(&mut tx, s.org_id, s.parent_job_id, s.source_key, tickets).await?;
    tx.commit().await?;
    Ok(())
}

/// Turns an intent into the launched scan `scan_key` (status `queued`, its final
/// ScanClosePayload) and moves its leases to that key, in one transaction.
/// Returns false when the intent was already confirmed or discarded.
pub async fn confirm_intent(
    pool: &MySqlPool,
    org_id: &str,
    intent_key: &str,
    scan_key: &str,
    payload: &str,
) -> Result<bool, ModelError> {
    let mut tx = pool.begin().await?;
    let r = sqlx::query(
        "UPDATE ScanSummary SET SourceKey = ?, ScanStatus = 'queued', ScanClosePayload = ?, UpdatedDate = UTC_TIMESTAMP(3)
          WHERE OrgID = ? AND SourceKey = ? AND ScanStatus = 'launching'",
    )
    .bind(scan_key)
    .bind(payload)
    .bind(org_id)
    .bind(intent_key)
    .execute(&mut *tx)
    .await?;
    if r.rows_affected() == 0 {
        tx.rollback().await?;
        return Ok(false);
    }
    sqlx::query(
        "UPDATE RescanLease SET ScanSourceKey = ? WHERE OrganizationID = ? AND ScanSourceKey = ?",
    )
    .bind(scan_key)
    .bind(org_id)
    .bind(intent_key)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(true)
}

/// Forgets an intent whose scan was never launched: the row is deleted and its
/// tickets' leases stay with their job, unscanned (the job may launch them
/// again, or releases them when it ends).
pub async fn discard_intent(
    pool: &MySqlPool,
    org_id: &str,
    intent_key: &str,
) -> Result<(), ModelError> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "DELETE FROM ScanSummary WHERE OrgID = ? AND SourceKey = ? AND ScanStatus = 'launching'",
    )
    .bind(org_id)
    .bind(intent_key)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE RescanLease SET ScanSourceKey = NULL WHERE OrganizationID = ? AND ScanSourceKey = ?",
    )
    .bind(org_id)
    .bind(intent_key)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// The organization's summaries that match `filter` (a condition on one `?`,
/// bound to `value`, and any ORDER BY / LIMIT).
async fn select(
    pool: &MySqlPool,
    org_id: &str,
    filter: &str,
    value: &str,
) -> Result<Vec<ScanSummary>, ModelError> {
    Ok(
        sqlx::query_as(&format!("{SELECT} WHERE OrgID = ? AND {filter}"))
            .bind(org_id)
            .bind(value)
            .fetch_all(pool)
            .await?,
    )
}

/// The launch intents a job left behind, oldest first.
pub async fn intents_of_job(
    pool: &MySqlPool,
    org_id: &str,
    job_id: &str,
) -> Result<Vec<ScanSummary>, ModelError> {
    select(
        pool,
        org_id,
        "ParentJobId = ? AND ScanStatus = 'launching' ORDER BY CreatedDate",
        job_id,
    )
    .await
}

/// Whether the job that wrote an intent may still resolve it itself (pending,
/// running, or cancel-requested while running).
pub async fn parent_is_live(pool: &MySqlPool, s: &ScanSummary) -> Result<bool, ModelError> {
    let row: Option<(i32,)> = sqlx::query_as("SELECT StatusId FROM JobHistory WHERE ID = ?")
        .bind(&s.parent_job_id)
        .fetch_optional(pool)
        .await?;
    Ok(matches!(row, Some((1 | 2 | -1,))))
}

/// The unfinished scans of one scanner SourceConfig in an organization, oldest first.
pub async fn unfinished(
    pool: &MySqlPool,
    org_id: &str,
    source_config_id: &str,
) -> Result<Vec<ScanSummary>, ModelError> {
    select(
        pool,
        org_id,
        "ScannerSourceConfigID = ?
           AND COALESCE(ScanStatus, '') NOT IN ('finished', 'canceled', 'stopped', 'error')
         ORDER BY CreatedDate",
        source_config_id,
    )
    .await
}

/// The summary of a scan by its key.
pub async fn by_key(
    pool: &MySqlPool,
    org_id: &str,
    source_key: &str,
) -> Result<Option<ScanSummary>, ModelError> {
    let mut found = select(
        pool,
        org_id,
        "SourceKey = ? ORDER BY CreatedDate DESC LIMIT 1",
        source_key,
    )
    .await?;
    Ok(found.pop())
}

/// Writes a non-terminal status.
pub async fn set_status(pool: &MySqlPool, s: &ScanSummary, status: &str) -> Result<(), ModelError> {
    sqlx::query(
        "UPDATE ScanSummary SET ScanStatus = ?, UpdatedDate = UTC_TIMESTAMP(3)
          WHERE SourceId = ? AND OrgID = ? AND SourceKey = ?
            AND COALESCE(ScanStatus, '') NOT IN ('finished', 'canceled', 'stopped', 'error')",
    )
    .bind(status)
    .bind(&s.source_id)
    .bind(&s.org_id)
    .bind(&s.source_key)
    .execute(pool)
    .await?;
    Ok(())
}

async fn mark_terminal(
    tx: &mut Transaction<'_, MySql>,
    s: &ScanSummary,
    status: &str,
) -> Result<bool, ModelError> {
    let r = sqlx::query(
        "UPDATE ScanSummary SET ScanStatus = ?, UpdatedDate = UTC_TIMESTAMP(3)
          WHERE SourceId = ? AND OrgID = ? AND SourceKey = ?
            AND COALESCE(ScanStatus, '') NOT IN ('finished', 'canceled', 'stopped', 'error')",
    )
    .bind(status)
    .bind(&s.source_id)
    .bind(&s.org_id)
    .bind(&s.source_key)
    .execute(&mut **tx)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Marks the scan `finished` and queues its ScanCloseJob in one transaction,
/// handing the scan's ticket leases to that job. Returns the new job's ID, or
/// None when another ScanSyncJob got there first (nothing is written then).
pub async fn finish_and_queue_close(
    pool: &MySqlPool,
    s: &ScanSummary,
    close: &NewJob,
) -> Result<Option<String>, ModelError> {
    let mut tx = pool.begin().await?;
    if !mark_terminal(&mut tx, s, "finished").await? {
        tx.rollback().await?;
        return Ok(None);
    }
    let job = job_history::insert(&mut tx, close).await?;
    rescan_lease::hand_to_close(&mut tx, &s.org_id, &s.source_key, &job.id).await?;
    tx.commit().await?;
    Ok(Some(job.id))
}

/// Ends the scan in a terminal status other than `finished` (its error,
/// cancellation, or abandonment) and releases its tickets in the same
/// transaction. Returns false when it was already terminal.
pub async fn end_and_release(
    pool: &MySqlPool,
    s: &ScanSummary,
    status: &str,
) -> Result<bool, ModelError> {
    let mut tx = pool.begin().await?;
    if !mark_terminal(&mut tx, s, status).await? {
        tx.rollback().await?;
        return Ok(false);
    }
    rescan_lease::release_scan(&mut tx, &s.org_id, &s.source_key).await?;
    tx.commit().await?;
    Ok(true)
}

//! Rescan leases (`RescanLease`): one row per ticket that is in a pending or
//! running rescan, or in an unfinished scan. The primary key (organization,
//! ticket) makes queueing atomic: a ticket belongs to at most one rescan at a
//! time, whatever number of RescanQueueJobs of whatever types run at once.
//! See `migrations/20261124000030_rescan.sql` for the life of a lease.

use sqlx::{MySql, MySqlPool, Transaction};

use super::ModelError;

/// Deletes the organization's stale leases: their JobHistory row has ended
/// (or is gone) and their scan, if any, is no longer unfinished. Returns how
/// many were taken back.
pub async fn reclaim_stale(pool: &MySqlPool, org_id: &str) -> Result<u64, ModelError> {
    let r = sqlx::query(
        "DELETE L FROM RescanLease L LEFT JOIN JobHistory J ON J.ID = L.JobHistoryID
          WHERE L.OrganizationID = ?
            AND (J.ID IS NULL OR J.StatusId IN (3, 4, 5))
            AND (L.ScanSourceKey IS NULL OR NOT EXISTS (
                   SELECT 1 FROM ScanSummary S
                    WHERE S.OrgID = L.OrganizationID AND S.SourceKey = L.ScanSourceKey
                      AND COALESCE(S.ScanStatus, '') NOT IN ('finished', 'canceled', 'stopped', 'error')))",
    )
    .bind(org_id)
    .execute(pool)
    .await?;
    Ok(r.rows_affected())
}

/// Leases every ticket of `keys` that nobody holds to `holder` (a fresh ID the
/// caller then moves to the job it inserts with [`assign`]), and returns the
/// keys this call won. Run inside the transaction that inserts the job.
pub async fn acquire(
    tx: &mut Transaction<'_, MySql>,
    org_id: &str,
    holder: &str,
    rescan_type: &str,
    keys: &[String],
) -> Result<Vec<String>, ModelError> {
    lease_free(tx, org_id, holder, rescan_type, None, keys).await
}

/// Moves the leases of `from` (a holder ID or a job) to the job `to`.
pub async fn assign(
    tx: &mut Transaction<'_, MySql>,
    org_id: &str,
    from: &str,
    to: &str,
) -> Result<(), ModelError> {
    sqlx::query(
        "UPDATE RescanLease SET JobHistoryID = ? WHERE OrganizationID = ? AND JobHistoryID = ?",
    )
    .bind(to)
    .bind(org_id)
    .bind(from)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Records the launched scan on the job's leases of `keys`.
pub async fn set_scan(
    tx: &mut Transaction<'_, MySql>,
    org_id: &str,
    job_id: &str,
    scan_key: &str,
    keys: &[String],
) -> Result<(), ModelError> {
    for key in keys {
        sqlx::query(
            "UPDATE RescanLease SET ScanSourceKey = ? WHERE OrganizationID = ? AND JobHistoryID = ? AND TicketKey = ?",
        )
        .bind(scan_key)
        .bind(org_id)
        .bind(job_id)
        .bind(key)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// The tickets the job holds that are already in a scan (launched, or an
/// intent to launch).
pub async fn scanned_by(
    pool: &MySqlPool,
    org_id: &str,
    job_id: &str,
) -> Result<Vec<String>, ModelError> {
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT TicketKey FROM RescanLease WHERE OrganizationID = ? AND JobHistoryID = ? AND ScanSourceKey IS NOT NULL ORDER BY TicketKey",
    )
    .bind(org_id)
    .bind(job_id)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|(k,)| k).collect())
}

/// Moves a scan's leases to the ScanCloseJob that will decide its tickets.
pub async fn hand_to_close(
    tx: &mut Transaction<'_, MySql>,
    org_id: &str,
    scan_key: &str,
    close_job_id: &str,
) -> Result<u64, ModelError> {
    let r = sqlx::query(
        "UPDATE RescanLease SET JobHistoryID = ? WHERE OrganizationID = ? AND ScanSourceKey = ?",
    )
    .bind(close_job_id)
    .bind(org_id)
    .bind(scan_key)
    .execute(&mut **tx)
    .await?;
    Ok(r.rows_affected())
}

/// Releases a scan's tickets (closed, failed or abandoned scan).
pub async fn release_scan(
    tx: &mut Transaction<'_, MySql>,
    org_id: &str,
    scan_key: &str,
) -> Result<u64, ModelError> {
    let r = sqlx::query("DELETE FROM RescanLease WHERE OrganizationID = ? AND ScanSourceKey = ?")
        .bind(org_id)
        .bind(scan_key)
        .execute(&mut **tx)
        .await?;
    Ok(r.rows_affected())
}

/// Releases the job's leases of tickets it did not put in a scan.
pub async fn release_unscanned(
    pool: &MySqlPool,
    org_id: &str,
    job_id: &str,
) -> Result<u64, ModelError> {
    let r = sqlx::query(
        "DELETE FROM RescanLease WHERE OrganizationID = ? AND JobHistoryID = ? AND ScanSourceKey IS NULL",
    )
    .bind(org_id)
    .bind(job_id)
    .execute(pool)
    .await?;
    Ok(r.rows_affected())
}

/// The tickets leased in the organization (tests, operators).
pub async fn leased(pool: &MySqlPool, org_id: &str) -> Result<Vec<String>, ModelError> {
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT TicketKey FROM RescanLease WHERE OrganizationID = ? ORDER BY TicketKey",
    )
    .bind(org_id)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|(k,)| k).collect())
}

/// Who holds a lease: the JobHistory row and, once launched, the scan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    pub job_history_id: String,
    pub scan_source_key: Option<String>,
}

/// The current holders of the leases of `keys` (tickets nobody holds are absent).
pub async fn holders(
    pool: &MySqlPool,
    org_id: &str,
    keys: &[String],
) -> Result<std::collections::HashMap<String, Holder>, ModelError> {
    let mut out = std::collections::HashMap::new();
    for chunk in keys.chunks(500) {
        let marks = vec!["?"; chunk.len()].join(", ");
        let sql = format!(
            "SELECT TicketKey, JobHistoryID, ScanSourceKey FROM RescanLease
              WHERE OrganizationID = ? AND TicketKey IN ({marks})"
        );
        let mut q = sqlx::query_as::<_, (String, String, Option<String>)>(&sql).bind(org_id);
        for k in chunk {
            q = q.bind(k);
        }
        for (key, job_history_id, scan_source_key) in q.fetch_all(pool).await? {
            out.insert(
                key,
                Holder {
                    job_history_id,
                    scan_source_key,
                },
            );
        }
    }
    Ok(out)
}

/// Leases the tickets of `keys` that nobody holds to the ScanCloseJob `job_id`
/// deciding scan `scan_key` (tickets a close decides beyond the scan's own:
/// NORMAL's other tickets of the scanned devices, a SCHEDULED scan's tickets),
/// and returns the keys of `keys` this job now holds — won here, or already its
/// own (a retried run). [`release_scan`] deletes them with the scan's leases.
pub async fn take_for_scan(
    tx: &mut Transaction<'_, MySql>,
    org_id: &str,
    job_id: &str,
    scan_key: &str,
    rescan_type: &str,
    keys: &[String],
) -> Result<Vec<String>, ModelError> {
    lease_free(tx, org_id, job_id, rescan_type, Some(scan_key), keys).await
}

/// Inserts a lease to `holder` (in the scan `scan_key`, if given) for every
/// ticket of `keys` nobody holds, and returns the keys of `keys` that `holder`
/// now holds (in that scan, if given): [`acquire`] and [`take_for_scan`].
async fn lease_free(
    tx: &mut Transaction<'_, MySql>,
    org_id: &str,
    holder: &str,
    rescan_type: &str,
    scan_key: Option<&str>,
    keys: &[String],
) -> Result<Vec<String>, ModelError> {
    // One lock order for every caller, so concurrent queues cannot deadlock.
    let mut ordered: Vec<&String> = keys.iter().collect();
    ordered.sort();
    ordered.dedup();
    for key in ordered {
        sqlx::query(
            "INSERT IGNORE INTO RescanLease (OrganizationID, TicketKey, JobHistoryID, RescanType, ScanSourceKey, LeasedAt)
             VALUES (?, ?, ?, ?, ?, UTC_TIMESTAMP(3))",
        )
        .bind(org_id)
        .bind(key)
        .bind(holder)
        .bind(rescan_type)
        .bind(scan_key)
        .execute(&mut **tx)
        .await?;
    }
    let sql = match scan_key {
        None => "SELECT TicketKey FROM RescanLease WHERE OrganizationID = ? AND JobHistoryID = ? ORDER BY TicketKey",
        Some(_) => "SELECT TicketKey FROM RescanLease WHERE OrganizationID = ? AND JobHistoryID = ? AND ScanSourceKey = ?",
    };
    let mut query = sqlx::query_as::<_, (String,)>(sql)
        .bind(org_id)
        .bind(holder);
    if let Some(scan_key) = scan_key {
        query = query.bind(scan_key);
    }
    let held = query.fetch_all(&mut **tx).await?;
    let held: std::collections::HashSet<String> = held.into_iter().map(|(k,)| k).collect();
    Ok(keys.iter().filter(|k| held.contains(*k)).cloned().collect())
}

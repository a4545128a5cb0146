//! Tickets: the `Ticket` table (one row per JIRA issue Aegis knows) and the
//! `TicketClaim` table that guarantees exactly one open ticket per finding.
//!
//! A finding is (organization, scanner asset id, scanner vulnerability id,
//! port, protocol). Before a worker may open a JIRA issue for a finding it must
//! hold the finding's claim: insert the `TicketClaim` row (primary key =
//! organization + [`finding_key`]) or take over a claim whose holder is gone
//! (its JobHistory row is no longer running that attempt under a live lease)
//! or whose ticket is closed. The issue carries the label [`finding_label`], so
//! an issue created by a holder that died before recording it is found in JIRA
//! and adopted by the next holder instead of being opened twice.

use chrono::{DateTime, NaiveDate, Utc};
use sha2::{Digest, Sha256};
use sqlx::{MySql, MySqlPool, Transaction};

use super::{is_duplicate_key, ModelError};

/// The finding's key: hex of the first 128 bits of SHA-256 over its parts.
/// With `ip_correlation` the caller passes `ip:<group>|<ip>` as the asset.
pub fn finding_key(org_id: &str, asset: &str, vuln: &str, port: i32, protocol: &str) -> String {
    let mut h = Sha256::new();
    for part in [
        org_id,
        asset,
        vuln,
        &port.to_string(),
        &protocol.to_ascii_lowercase(),
    ] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    hex::encode(&h.finalize()[..16])
}

/// The JIRA label carrying a finding key (labels cannot contain spaces).
pub fn finding_label(key: &str) -> String {
    format!("aegis-{key}")
}

/// Who holds a claim: a JobHistory row and its attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    pub job_history_id: String,
    pub attempt: i32,
}

/// The result of trying to claim a finding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// The caller holds the claim and may open a ticket. `fresh` when no claim
    /// existed; otherwise `previous` is the closed ticket being replaced, or
    /// None when a dead holder's claim was taken over (look for its orphan in
    /// JIRA before creating).
    Acquired {
        fresh: bool,
        previous: Option<String>,
    },
    /// The finding already has this open ticket.
    Ticketed(String),
    /// Another live run is ticketing it now.
    Busy,
}

/// Statuses (JIRA names, compared case-insensitively) the original's DB
/// dedup treats as open, for tickets Aegis knows without a claim (created
/// before claims existed, or found by TicketSync).
const LEGACY_OPEN: &str =
    "'Open','In-Progress','Reopened','Resolved-Remediated','Resolved-FalsePositive','Resolved-Decommissioned','Resolved-Exception','Approved-Exception','Scan-Error'";

fn is_deadlock(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("40001") || db.message().contains("Deadlock"))
}

/// Claims the finding `key` for `holder`. `closed` are the project's closed
/// status names: a finding whose ticket is closed may be ticketed again.
pub async fn claim(
    pool: &MySqlPool,
    org_id: &str,
    key: &str,
    detection_id: &str,
    holder: &Holder,
    closed: &[String],
) -> Result<Claim, ModelError> {
    let mut tries = 0;
    loop {
        tries += 1;
        match try_claim(pool, org_id, key, detection_id, holder, closed).await {
            Err(ModelError::Sql(e)) if is_deadlock(&e) && tries < 5 => continue,
            other => return other,
        }
    }
}

async fn try_claim(
    pool: &MySqlPool,
    org_id: &str,
    key: &str,
    detection_id: &str,
    holder: &Holder,
    closed: &[String],
) -> Result<Claim, ModelError> {
    let inserted = sqlx::query(
        "INSERT INTO TicketClaim (OrganizationID, FindingKey, DetectionID, JobHistoryID, Attempt, ClaimedAt)
         VALUES (?, ?, ?, ?, ?, UTC_TIMESTAMP(3))",
    )
    .bind(org_id)
    .bind(key)
    .bind(detection_id)
    .bind(&holder.job_history_id)
    .bind(holder.attempt)
    .execute(pool)
    .await;
    match inserted {
        Ok(_) => {
            // A ticket Aegis knows without a claim (older data, TicketSync)
            // still counts: record it as the finding's ticket.
            if let Some(title) = legacy_open_ticket(pool, org_id, detection_id).await? {
                sqlx::query(
                    "UPDATE TicketClaim SET Title = ?, JobHistoryID = NULL, Updated = UTC_TIMESTAMP(3)
                     WHERE OrganizationID = ? AND FindingKey = ?",
                )
                .bind(&title)
                .bind(org_id)
                .bind(key)
                .execute(pool)
                .await?;
                return Ok(Claim::Ticketed(title));
            }
            return Ok(Claim::Acquired {
                fresh: true,
                previous: None,
            });
        }
        Err(e) if is_duplicate_key(&e) => {}
        Err(e) => return Err(e.into()),
    }

    let mut tx = pool.begin().await?;
    let row: Option<(Option<String>, Option<String>, i32)> = sqlx::query_as(
        "SELECT Title, JobHistoryID, Attempt FROM TicketClaim WHERE OrganizationID = ? AND FindingKey = ? FOR UPDATE",
    )
    .bind(org_id)
    .bind(key)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((title, job, attempt)) = row else {
        // Deleted between the insert and the lock: try again from the top.
        tx.rollback().await?;
        return Ok(Claim::Busy);
    };
    let previous = match title {
        Some(title) => {
            let status: Option<(String,)> =
                sqlx::query_as("SELECT Status FROM Ticket WHERE OrganizationID = ? AND Title = ?")
                    .bind(org_id)
                    .bind(&title)
                    .fetch_optional(&mut *tx)
                    .await?;
            let is_closed =
                status.is_some_and(|(s,)| closed.iter().any(|c| c.eq_ignore_ascii_case(&s)));
            if !is_closed {
                tx.rollback().await?;
                return Ok(Claim::Ticketed(title));
            }
            Some(title)
        }
        None => {
            if let Some(job) = job {
                if job == holder.job_history_id && attempt == holder.attempt {
                    // Our own run already holds it (a duplicate row in one batch).
                    tx.rollback().await?;
                    return Ok(Claim::Busy);
                }
                let alive: Option<(i32,)> = sqlx::query_as(
                    "SELECT 1 FROM JobHistory WHERE ID = ? AND Attempt = ? AND StatusId IN (2, -1)
                     AND LeaseUntil > UTC_TIMESTAMP(3)",
                )
                .bind(&job)
                .bind(attempt)
                .fetch_optional(&mut *tx)
                .await?;
                if alive.is_some() {
                    tx.rollback().await?;
                    return Ok(Claim::Busy);
                }
            }
            None
        }
    };
    sqlx::query(
        "UPDATE TicketClaim SET Title = NULL, PreviousTitle = COALESCE(?, PreviousTitle), DetectionID = ?,
                JobHistoryID = ?, Attempt = ?, ClaimedAt = UTC_TIMESTAMP(3), Updated = UTC_TIMESTAMP(3)
         WHERE OrganizationID = ? AND FindingKey = ?",
    )
    .bind(&previous)
    .bind(detection_id)
    .bind(&holder.job_history_id)
    .bind(holder.attempt)
    .bind(org_id)
    .bind(key)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Claim::Acquired {
        fresh: false,
        previous,
    })
}

/// The newest ticket Aegis knows for the detection's finding with an open
/// status of the original's list (no claim involved).
async fn legacy_open_ticket(
    pool: &MySqlPool,
    org_id: &str,
    detection_id: &str,
) -> Result<Option<String>, ModelError> {
    let sql = format!(
        "SELECT t.Title FROM Ticket t
         JOIN Detection d ON d.ID = t.DetectionID
         JOIN Detection me ON me.ID = ?
         WHERE t.OrganizationID = ? AND d.DeviceID = me.DeviceID AND d.VulnerabilityID = me.VulnerabilityID
           AND d.Port = me.Port AND d.Protocol = me.Protocol AND t.Status IN ({LEGACY_OPEN})
         ORDER BY t.Created DESC LIMIT 1"
    );
    let row: Option<(String,)> = sqlx::query_as(&sql)
        .bind(detection_id)
        .bind(org_id)
        .fetch_optional(pool)
        .await?;
    Ok(row.map(|(t,)| t))
}

/// A new `Ticket` row.
#[derive(Clone, Debug)]
pub struct NewTicketRow {
    pub title: String,
    pub status: String,
    pub detection_id: String,
    pub org_id: String,
    pub due_date: NaiveDate,
    pub assignment_group: Option<String>,
    pub assignee: Option<String>,
}

/// Records the finding's ticket: completes the claim held by `holder` and
/// writes the Ticket row, in one transaction. Returns false when the claim was
/// no longer ours (taken over); the Ticket row is written either way, since the
/// JIRA issue exists.
pub async fn record_ticket(
    pool: &MySqlPool,
    key: &str,
    holder: &Holder,
    row: &NewTicketRow,
) -> Result<bool, ModelError> {
    let mut tx = pool.begin().await?;
    let done = sqlx::query(
        "UPDATE TicketClaim SET Title = ?, JobHistoryID = NULL, Updated = UTC_TIMESTAMP(3)
         WHERE OrganizationID = ? AND FindingKey = ? AND JobHistoryID = ? AND Attempt = ?",
    )
    .bind(&row.title)
    .bind(&row.org_id)
    .bind(key)
    .bind(&holder.job_history_id)
    .bind(holder.attempt)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    insert_ticket(&mut tx, row).await?;
    tx.commit().await?;
    Ok(done)
}

async fn insert_ticket(
    tx: &mut Transaction<'_, MySql>,
    row: &NewTicketRow,
) -> Result<(), ModelError> {
    sqlx::query(
        "INSERT INTO Ticket (Title, Status, DetectionID, OrganizationID, AssignmentGroup, Assignee, Created, UpdatedDate, DueDate)
         VALUES (?, ?, ?, ?, ?, ?, UTC_TIMESTAMP(3), UTC_TIMESTAMP(3), ?)
         ON DUPLICATE KEY UPDATE DetectionID = VALUES(DetectionID)",
    )
    .bind(&row.title)
    .bind(&row.status)
    .bind(&row.detection_id)
    .bind(&row.org_id)
    .bind(&row.assignment_group)
    .bind(&row.assignee)
    .bind(row.due_date.and_hms_opt(0, 0, 0).map(|t| t.and_utc()))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Gives a claim back (the ticket could not be opened), so another run may
/// take it at once.
pub async fn release_claim(
    pool: &MySqlPool,
    org_id: &str,
    key: &str,
    holder: &Holder,
) -> Result<(), ModelError> {
    sqlx::query(
        "UPDATE TicketClaim SET JobHistoryID = NULL, Updated = UTC_TIMESTAMP(3)
         WHERE OrganizationID = ? AND FindingKey = ? AND JobHistoryID = ? AND Attempt = ? AND Title IS NULL",
    )
    .bind(org_id)
    .bind(key)
    .bind(&holder.job_history_id)
    .bind(holder.attempt)
    .execute(pool)
    .await?;
    Ok(())
}

/// A ticket as JIRA reports it, for TicketSync.
#[derive(Clone, Debug)]
pub struct SyncedTicket {
    pub title: String,
    pub status: String,
    pub org_id: String,
    pub assignment_group: Option<String>,
    pub assignee: Option<String>,
    pub due_date: Option<DateTime<Utc>>,
    pub created: Option<DateTime<Utc>>,
    pub updated: Option<DateTime<Utc>>,
    pub resolution_date: Option<DateTime<Utc>>,
    pub exception_date: Option<DateTime<Utc>>,
}

/// Refreshes a known ticket's row; false when the database does not know it.
pub async fn update_from_jira(pool: &MySqlPool, t: &SyncedTicket) -> Result<bool, ModelError> {
    let n = sqlx::query(
        "UPDATE Ticket SET Status = ?, AssignmentGroup = ?, Assignee = ?, DueDate = COALESCE(?, DueDate),
                Created = COALESCE(?, Created), UpdatedDate = ?, ResolutionDate = ?, ExceptionDate = ?
         WHERE OrganizationID = ? AND Title = ?",
    )
    .bind(&t.status)
    .bind(&t.assignment_group)
    .bind(&t.assignee)
    .bind(t.due_date)
    .bind(t.created)
    .bind(t.updated)
    .bind(t.resolution_date)
    .bind(t.exception_date)
    .bind(&t.org_id)
    .bind(&t.title)
    .execute(pool)
    .await?
    .rows_affected();
    if n > 0 {
        return Ok(true);
    }
    // MySQL reports 0 for an UPDATE that changed nothing: check existence.
    let exists: Option<(i32,)> =
        sqlx::query_as("SELECT 1 FROM Ticket WHERE OrganizationID = ? AND Title = ?")
            .bind(&t.org_id)
            .bind(&t.title)
            .fetch_optional(pool)
            .await?;
    Ok(exists.is_some())
}

/// Inserts a ticket the database did not know (TicketSync).
pub async fn insert_from_jira(
    pool: &MySqlPool,
    t: &SyncedTicket,
    detection_id: &str,
) -> Result<(), ModelError> {
    sqlx::query(
        "INSERT INTO Ticket (Title, Status, DetectionID, OrganizationID, AssignmentGroup, Assignee, Created,
                             UpdatedDate, ResolutionDate, ExceptionDate, DueDate)
         VALUES (?, ?, ?, ?, ?, ?, UTC_TIMESTAMP(3), ?, ?, ?, COALESCE(?, ?, UTC_TIMESTAMP(3)))
         ON DUPLICATE KEY UPDATE Status = VALUES(Status)",
    )
    .bind(&t.title)
    .bind(&t.status)
    .bind(detection_id)
    .bind(&t.org_id)
    .bind(&t.assignment_group)
    .bind(&t.assignee)
    .bind(t.updated)
    .bind(t.resolution_date)
    .bind(t.exception_date)
    .bind(t.due_date)
    .bind(t.created)
    .execute(pool)
    .await
    .map_err(ModelError::from)?;
    Ok(())
}

/// The newest ticket of a detection (child linking).
pub async fn newest_for_detection(
    pool: &MySqlPool,
    org_id: &str,
    detection_id: &str,
) -> Result<Option<String>, ModelError> {
    let row: Option<(String,)> = sqlx::query_as(
        "SELECT Title FROM Ticket WHERE OrganizationID = ? AND DetectionID = ? ORDER BY Created DESC LIMIT 1",
    )
    .bind(org_id)
    .bind(detection_id)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(t,)| t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finding_keys_are_stable_and_distinct() {
        let k = finding_key("org", "1001", "38739", 443, "tcp");
        assert_eq!(k.len(), 32);
        assert_eq!(k, finding_key("org", "1001", "38739", 443, "TCP"));
        assert_ne!(k, finding_key("org", "1001", "38739", 443, "udp"));
        assert_ne!(k, finding_key("org", "100", "138739", 443, "tcp"));
        assert_eq!(finding_label(&k), format!("aegis-{k}"));
    }
}

//! `JobHistory`: one row per unit of work, and every state change of its
//! lifecycle. This module is the only place that writes `StatusId`.
//!
//! ```text
//!  insert ─► 1 pending ─(coordinator claims: DispatchedAt set, message published)─► 1 dispatched
//!    1 dispatched ─(worker claims: conditional UPDATE, lease)─► 2 running ─► 3 | 4 | 5
//!    2 running, continuous ─► 1 pending with NotBefore = now + WaitInSeconds (same row)
//!    2 running, lease expired ─(reaper)─► 1 pending (attempts left) | 4 error
//!    -1 cancel requested: not running ─(coordinator)─► 5; running ─(its worker)─► 5
//! ```
//!
//! Invariants:
//! * Only a worker whose claim succeeded (`WorkerID` and `Attempt` match and the
//!   status is still 2 or -1) writes a final status; every such write is conditional.
//! * A dispatched row that is not claimed is published again; a claim can win only once.
//! * Times are written by the database in UTC (`UTC_TIMESTAMP(3)`).

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{MySql, MySqlPool, Transaction};

use super::ModelError;

pub const STATUS_CANCEL_REQUESTED: i32 = -1;
pub const STATUS_PENDING: i32 = 1;
pub const STATUS_IN_PROGRESS: i32 = 2;
pub const STATUS_COMPLETED: i32 = 3;
pub const STATUS_ERROR: i32 = 4;
pub const STATUS_CANCELLED: i32 = 5;

/// The operator's word for a status code.
pub fn status_name(status: i32) -> &'static str {
    match status {
        -1 => "CANCEL REQUESTED",
        0 => "UNKNOWN",
        1 => "PENDING",
        2 => "IN PROGRESS",
        3 => "COMPLETED",
        4 => "ERROR",
        5 => "CANCELED",
        _ => "?",
    }
}

/// A JobHistory row with its job name.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct JobHistory {
    #[sqlx(rename = "ID")]
    pub id: String,
    #[sqlx(rename = "JobId")]
    pub job_id: i32,
    #[sqlx(rename = "Struct")]
    pub job_name: String,
    #[sqlx(rename = "ConfigID")]
    pub config_id: Option<String>,
    #[sqlx(rename = "StatusId")]
    pub status_id: i32,
    #[sqlx(rename = "ParentJobID")]
    pub parent_job_id: Option<String>,
    #[sqlx(rename = "Priority")]
    pub priority: i32,
    #[sqlx(rename = "Payload")]
    pub payload: Option<String>,
    #[sqlx(rename = "CreatedDate")]
    pub created_date: DateTime<Utc>,
    #[sqlx(rename = "CreatedBy")]
    pub created_by: Option<String>,
    #[sqlx(rename = "NotBefore")]
    pub not_before: Option<DateTime<Utc>>,
    #[sqlx(rename = "DispatchedAt")]
    pub dispatched_at: Option<DateTime<Utc>>,
    #[sqlx(rename = "WorkerID")]
    pub worker_id: Option<String>,
    #[sqlx(rename = "LeaseUntil")]
    pub lease_until: Option<DateTime<Utc>>,
    #[sqlx(rename = "Attempt")]
    pub attempt: i32,
    #[sqlx(rename = "MaxAttempts")]
    pub max_attempts: Option<i32>,
    #[sqlx(rename = "StartedAt")]
    pub started_at: Option<DateTime<Utc>>,
    #[sqlx(rename = "FinishedAt")]
    pub finished_at: Option<DateTime<Utc>>,
    #[sqlx(rename = "LastError")]
    pub last_error: Option<String>,
    #[sqlx(rename = "TraceParent")]
    pub trace_parent: Option<String>,
}

const SELECT: &str = "SELECT jh.ID, jh.JobId, j.Struct, jh.ConfigID, jh.StatusId, jh.ParentJobID, jh.Priority, jh.Payload,
        jh.CreatedDate, jh.CreatedBy, jh.NotBefore, jh.DispatchedAt, jh.WorkerID, jh.LeaseUntil, jh.Attempt,
        jh.MaxAttempts, jh.StartedAt, jh.FinishedAt, jh.LastError, jh.TraceParent
   FROM JobHistory jh JOIN Job j ON j.Id = jh.JobId";

pub async fn by_id(pool: &MySqlPool, id: &str) -> Result<JobHistory, ModelError> {
    sqlx::query_as::<_, JobHistory>(&format!("{SELECT} WHERE jh.ID = ?"))
        .bind(id)
        .fetch_optional(pool)
        .await?
        .ok_or_else(|| ModelError::NotFound {
            what: "JobHistory row",
            key: id.to_string(),
        })
}

/// Recent rows, newest first, optionally filtered by status and job name.
pub async fn recent(
    pool: &MySqlPool,
    status: Option<i32>,
    job_name: Option<&str>,
    limit: u32,
) -> Result<Vec<JobHistory>, ModelError> {
    Ok(sqlx::query_as::<_, JobHistory>(&format!(
        "{SELECT} WHERE (? IS NULL OR jh.StatusId = ?) AND (? IS NULL OR j.Struct = ?)
          ORDER BY jh.CreatedDate DESC LIMIT ?"
    ))
    .bind(status)
    .bind(status)
    .bind(job_name)
    .bind(job_name)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// A new pending row.
#[derive(Clone, Debug, Default)]
pub struct NewJob {
    pub job_name: String,
    pub config_id: Option<String>,
    pub priority: Option<i32>,
    pub payload: Option<String>,
    pub parent_job_id: Option<String>,
    pub created_by: String,
    pub idempotency_key: Option<String>,
    pub trace_parent: Option<String>,
}

/// The outcome of [`insert`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Inserted {
    pub id: String,
    /// False when the idempotency key named an existing row, whose ID is returned.
    pub created: bool,
}

/// Inserts a pending JobHistory row with an application-generated ID.
///
/// With a config: the job must match the config's job, the priority defaults to
/// `PriorityOverride ?? Job.Priority` and the payload to the config's. Without
/// one, the job name alone decides (DiagnosticJob needs no config). A repeated
/// idempotency key returns the existing row instead of creating a second one.
pub async fn insert(tx: &mut Transaction<'_, MySql>, new: &NewJob) -> Result<Inserted, ModelError> {
    if let Some(key) = &new.idempotency_key {
        if key.len() > 200 {
            return Err(ModelError::invalid(
                "idempotency_key",
                "must be at most 200 characters",
            ));
        }
        let existing: Option<(String,)> =
            sqlx::query_as("SELECT ID FROM JobHistory WHERE IdempotencyKey = ?")
                .bind(key)
                .fetch_optional(&mut **tx)
                .await?;
        if let Some((id,)) = existing {
            return Ok(Inserted { id, created: false });
        }
    }
    let job: Option<(i32, i32)> = sqlx::query_as("SELECT Id, Priority FROM Job WHERE Struct = ?")
        .bind(&new.job_name)
        .fetch_optional(&mut **tx)
        .await?;
    let (job_id, job_priority) = job.ok_or_else(|| ModelError::NotFound {
        what: "job type",
        key: format!(
            "{:?} (known: {})",
            new.job_name,
            super::job::JOB_NAMES.join(", ")
        ),
    })?;
    let (priority, payload) = match &new.config_id {
        Some(config_id) => {
            let cfg: Option<(i32, Option<i32>, Option<String>, bool)> = sqlx::query_as(
                "SELECT JobId, PriorityOverride, Payload, Active FROM JobConfig WHERE ID = ?",
            )
            .bind(config_id)
            .fetch_optional(&mut **tx)
            .await?;
            let (cfg_job, override_priority, cfg_payload, active) =
                cfg.ok_or_else(|| ModelError::NotFound {
                    what: "job config",
                    key: config_id.clone(),
                })?;
            if cfg_job != job_id {
                return Err(ModelError::invalid(
                    "config_id",
                    format!("job config {config_id} is not a {} config", new.job_name),
                ));
            }
            if !active {
                return Err(ModelError::invalid(
                    "config_id",
                    format!("job config {config_id} is inactive"),
                ));
            }
            (
                new.priority.or(override_priority).unwrap_or(job_priority),
                new.payload
                    .clone()
                    .or(cfg_payload)
                    .unwrap_or_else(|| "{}".into()),
            )
        }
        None => (
            new.priority.unwrap_or(job_priority),
            new.payload.clone().unwrap_or_else(|| "{}".into()),
        ),
    };
    let id = uuid::Uuid::new_v4().to_string();
    let result = sqlx::query(
        "INSERT INTO JobHistory (ID, JobId, ConfigID, StatusId, ParentJobID, Priority, Payload, PulseDate,
                                 CreatedDate, CreatedBy, IdempotencyKey, TraceParent)
         VALUES (?, ?, ?, 1, ?, ?, ?, UTC_TIMESTAMP(3), UTC_TIMESTAMP(3), ?, ?, ?)",
    )
    .bind(&id)
    .bind(job_id)
    .bind(&new.config_id)
    .bind(&new.parent_job_id)
    .bind(priority)
    .bind(&payload)
    .bind(&new.created_by)
    .bind(&new.idempotency_key)
    .bind(&new.trace_parent)
    .execute(&mut **tx)
    .await;
    match result {
        Ok(_) => Ok(Inserted { id, created: true }),
        // Two submitters raced with one idempotency key: the other one won.
        Err(e) if super::is_duplicate_key(&e) && new.idempotency_key.is_some() => {
            let (id,): (String,) =
                sqlx::query_as("SELECT ID FROM JobHistory WHERE IdempotencyKey = ?")
                    .bind(&new.idempotency_key)
                    .fetch_one(&mut **tx)
                    .await?;
            Ok(Inserted { id, created: false })
        }
        Err(e) => Err(e.into()),
    }
}

/// Asks for a job to stop: pending rows end as 5 without running, running rows
/// are stopped by their worker. Returns the status the row had, or `None` when
/// it had already finished (nothing to cancel).
pub async fn request_cancel(pool: &MySqlPool, id: &str) -> Result<Option<i32>, ModelError> {
    let mut tx = pool.begin().await?;
    let row: Option<(i32,)> =
        sqlx::query_as("SELECT StatusId FROM JobHistory WHERE ID = ? FOR UPDATE")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
    let (status,) = row.ok_or_else(|| ModelError::NotFound {
        what: "JobHistory row",
        key: id.to_string(),
    })?;
    if !matches!(
        status,
        STATUS_PENDING | STATUS_IN_PROGRESS | STATUS_CANCEL_REQUESTED
    ) {
        return Ok(None);
    }
    sqlx::query("UPDATE JobHistory SET StatusId = -1, UpdatedDate = UTC_TIMESTAMP(3) WHERE ID = ?")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Some(status))
}

/// A row claimed by a worker.
#[derive(Clone, Debug)]
pub struct Claim {
    pub id: String,
    pub worker_id: String,
    pub attempt: i32,
}

/// The worker's conditional claim: only a dispatched pending row can be claimed,
/// and only once. Returns `None` when someone else won or the row is no longer
/// dispatchable (cancelled, finished, running elsewhere).
pub async fn claim(
    pool: &MySqlPool,
    id: &str,
    worker_id: &str,
    lease: std::time::Duration,
) -> Result<Option<Claim>, ModelError> {
    let done = sqlx::query(
        "UPDATE JobHistory
            SET StatusId = 2, WorkerID = ?, LeaseUntil = UTC_TIMESTAMP(3) + INTERVAL ? MICROSECOND,
                StartedAt = UTC_TIMESTAMP(3), FinishedAt = NULL, Attempt = Attempt + 1,
                PulseDate = UTC_TIMESTAMP(3), UpdatedDate = UTC_TIMESTAMP(3), UpdatedBy = ?
          WHERE ID = ? AND StatusId = 1 AND DispatchedAt IS NOT NULL",
    )
    .bind(worker_id)
    .bind(lease.as_micros() as u64)
    .bind(worker_id)
    .bind(id)
    .execute(pool)
    .await?;
    if done.rows_affected() != 1 {
        return Ok(None);
    }
    let (attempt,): (i32,) = sqlx::query_as("SELECT Attempt FROM JobHistory WHERE ID = ?")
        .bind(id)
        .fetch_one(pool)
        .await?;
    Ok(Some(Claim {
        id: id.to_string(),
        worker_id: worker_id.to_string(),
        attempt,
    }))
}

/// Extends the leases of a worker's running rows; returns the rows it still owns
/// and, among them, those whose cancel was requested.
pub async fn heartbeat(
    pool: &MySqlPool,
    worker_id: &str,
    ids: &[String],
    lease: std::time::Duration,
) -> Result<(Vec<String>, Vec<String>), ModelError> {
    if ids.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let mut qb = sqlx::QueryBuilder::<MySql>::new(
        "UPDATE JobHistory SET LeaseUntil = UTC_TIMESTAMP(3) + INTERVAL ",
    );
    qb.push_bind(lease.as_micros() as u64)
        .push(" MICROSECOND, PulseDate = UTC_TIMESTAMP(3) WHERE WorkerID = ")
        .push_bind(worker_id)
        .push(" AND StatusId IN (2, -1) AND ID IN (");
    let mut sep = qb.separated(", ");
    for id in ids {
        sep.push_bind(id);
    }
    qb.push(")");
    qb.build().execute(pool).await?;

    let mut qb =
        sqlx::QueryBuilder::<MySql>::new("SELECT ID, StatusId FROM JobHistory WHERE WorkerID = ");
    qb.push_bind(worker_id)
        .push(" AND StatusId IN (2, -1) AND ID IN (");
    let mut sep = qb.separated(", ");
    for id in ids {
        sep.push_bind(id);
    }
    qb.push(")");
    let rows: Vec<(String, i32)> = qb.build_query_as().fetch_all(pool).await?;
    let owned = rows.iter().map(|(id, _)| id.clone()).collect();
    let cancelled = rows
        .into_iter()
        .filter(|(_, s)| *s == STATUS_CANCEL_REQUESTED)
        .map(|(id, _)| id)
        .collect();
    Ok((owned, cancelled))
}

/// How a run ended, from the worker's point of view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Completed,
    Failed(String),
    Cancelled,
}

/// What [`finish`] did to the row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finished {
    /// The row took its final status.
    Final(i32),
    /// A continuous job's row went back to pending for its next iteration.
    Rearmed,
    /// The row was no longer ours (lease lost); nothing was written.
    NotOwner,
}

/// Writes the end of a run, only if the row is still the claimant's.
///
/// A continuous config (read now, so an operator's change applies) re-arms the
/// same row: pending again with `NotBefore = now + WaitInSeconds`. A cancel
/// request always wins over re-arming. On success the config's `LastJobStart`
/// advances to the run's start.
pub async fn finish(
    pool: &MySqlPool,
    claim: &Claim,
    outcome: &Outcome,
) -> Result<Finished, ModelError> {
    let mut tx = pool.begin().await?;
    let row: Option<(i32, Option<String>, Option<DateTime<Utc>>)> = sqlx::query_as(
        "SELECT StatusId, ConfigID, StartedAt FROM JobHistory
          WHERE ID = ? AND WorkerID = ? AND Attempt = ? AND StatusId IN (2, -1) FOR UPDATE",
    )
    .bind(&claim.id)
    .bind(&claim.worker_id)
    .bind(claim.attempt)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((status, config_id, started_at)) = row else {
        return Ok(Finished::NotOwner);
    };
    let config: Option<(bool, i32, bool)> = match &config_id {
        Some(c) => {
            sqlx::query_as("SELECT Continuous, WaitInSeconds, Active FROM JobConfig WHERE ID = ?")
                .bind(c)
                .fetch_optional(&mut *tx)
                .await?
        }
        None => None,
    };
    if *outcome == Outcome::Completed {
        if let (Some(c), Some(started)) = (&config_id, started_at) {
            sqlx::query("UPDATE JobConfig SET LastJobStart = ? WHERE ID = ?")
                .bind(started)
                .bind(c)
                .execute(&mut *tx)
                .await?;
        }
    }
    let cancel_requested = status == STATUS_CANCEL_REQUESTED || *outcome == Outcome::Cancelled;
    let error = match outcome {
        Outcome::Failed(e) => Some(e.as_str()),
        _ => None,
    };
    let result = match config {
        Some((true, wait, true)) if !cancel_requested => {
            sqlx::query(
                "UPDATE JobHistory
                    SET StatusId = 1, DispatchedAt = NULL, DispatchedBy = NULL, LeaseUntil = NULL,
                        NotBefore = UTC_TIMESTAMP(3) + INTERVAL ? SECOND, FinishedAt = UTC_TIMESTAMP(3),
                        Attempt = 0, LastError = ?, CurrentIteration = COALESCE(CurrentIteration, 0) + 1,
                        UpdatedDate = UTC_TIMESTAMP(3)
                  WHERE ID = ?",
            )
            .bind(wait.max(0))
            .bind(error)
            .bind(&claim.id)
            .execute(&mut *tx)
            .await?;
            Finished::Rearmed
        }
        _ => {
            let final_status = if cancel_requested {
                STATUS_CANCELLED
            } else if error.is_some() {
                STATUS_ERROR
            } else {
                STATUS_COMPLETED
            };
            let error = match (final_status, error) {
                (STATUS_CANCELLED, None) => Some("cancelled by request while running"),
                (_, e) => e,
            };
            sqlx::query(
                "UPDATE JobHistory
                    SET StatusId = ?, LeaseUntil = NULL, FinishedAt = UTC_TIMESTAMP(3),
                        LastError = COALESCE(?, LastError), UpdatedDate = UTC_TIMESTAMP(3)
                  WHERE ID = ?",
            )
            .bind(final_status)
            .bind(error)
            .bind(&claim.id)
            .execute(&mut *tx)
            .await?;
            Finished::Final(final_status)
        }
    };
    tx.commit().await?;
    Ok(result)
}

/// Gives a claimed row back (worker shutting down): pending again, not counted
/// as an attempt; a row whose cancel was requested ends as 5 instead.
pub async fn release(pool: &MySqlPool, claim: &Claim) -> Result<bool, ModelError> {
    let done = sqlx::query(
        "UPDATE JobHistory
            SET FinishedAt = IF(StatusId = -1, UTC_TIMESTAMP(3), NULL),
                DispatchedAt = NULL, DispatchedBy = NULL, LeaseUntil = NULL,
                Attempt = GREATEST(Attempt - 1, 0), UpdatedDate = UTC_TIMESTAMP(3),
                LastError = 'released by worker shutdown',
                -- Last: MySQL applies SET assignments left to right.
                StatusId = IF(StatusId = -1, 5, 1)
          WHERE ID = ? AND WorkerID = ? AND Attempt = ? AND StatusId IN (2, -1)",
    )
    .bind(&claim.id)
    .bind(&claim.worker_id)
    .bind(claim.attempt)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

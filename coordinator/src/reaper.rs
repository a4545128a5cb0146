//! The reaper: rows whose worker stopped heartbeating, and cancel requests for
//! rows no worker is running.
//!
//! * A running row whose lease expired goes back to pending (its next claim is
//!   the next attempt), or ends as ERROR with a LastError saying so once its
//!   attempts are used up. A cancel-requested row in that state ends as CANCELED.
//! * `StatusId = -1` on a row that is not running (pending, dispatched, or a
//!   continuous job waiting for its next iteration) ends as CANCELED at once; the
//!   worker that gets its message finds nothing to claim.

use std::sync::LazyLock;

use prometheus::IntCounterVec;
use sqlx::{Acquire, MySqlPool};

pub static REAPED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    aegis_shared::metrics::counter_vec(
        "aegis_leases_reaped_total",
        "Rows whose worker lease expired, by what became of them",
        &["outcome"],
    )
});
pub static CANCELLED: LazyLock<prometheus::IntCounter> = LazyLock::new(|| {
    let c = aegis_shared::metrics::counter_vec(
        "aegis_jobs_cancelled_before_start_total",
        "Cancel requests honoured before a worker ran the row",
        &[],
    );
    c.with_label_values(&[])
});

/// Ends cancel-requested rows that no worker holds. Returns how many.
pub async fn cancel_waiting(pool: &MySqlPool) -> anyhow::Result<u64> {
    let done = sqlx::query(
        "UPDATE JobHistory
            SET FinishedAt = UTC_TIMESTAMP(3), UpdatedDate = UTC_TIMESTAMP(3),
                LastError = COALESCE(LastError, 'cancelled before it ran'), DispatchedAt = NULL,
                StatusId = 5
          WHERE StatusId = -1 AND LeaseUntil IS NULL",
    )
    .execute(pool)
    .await?;
    let n = done.rows_affected();
    if n > 0 {
        CANCELLED.inc_by(n);
        tracing::info!("Dispatcher: Cancelled [{n}] jobs that were not running");
    }
    Ok(n)
}

#[derive(sqlx::FromRow)]
struct Expired {
    #[sqlx(rename = "ID")]
    id: String,
    #[sqlx(rename = "StatusId")]
    status: i32,
    #[sqlx(rename = "Attempt")]
    attempt: i32,
    #[sqlx(rename = "MaxAttempts")]
    max_attempts: i32,
    #[sqlx(rename = "WorkerID")]
    worker: Option<String>,
}

/// Requeues or fails rows whose lease expired. Returns how many were handled.
pub async fn reap_expired(pool: &MySqlPool, default_max_attempts: u32) -> anyhow::Result<usize> {
    let mut conn = pool.acquire().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
        .execute(&mut *conn)
        .await?;
    let mut tx = conn.begin().await?;
    let rows: Vec<Expired> = sqlx::query_as(
        "SELECT ID, StatusId, Attempt, COALESCE(MaxAttempts, ?) AS MaxAttempts, WorkerID FROM JobHistory
          WHERE StatusId IN (2, -1) AND LeaseUntil < UTC_TIMESTAMP(3)
          LIMIT 500 FOR UPDATE SKIP LOCKED",
    )
    .bind(default_max_attempts as i32)
    .fetch_all(&mut *tx)
    .await?;
    for r in &rows {
        let worker = r.worker.as_deref().unwrap_or("?");
        let (status, error, outcome) = if r.status == -1 {
            (
                5,
                format!("cancelled; its worker {worker} stopped responding"),
                "cancelled",
            )
        } else if r.attempt >= r.max_attempts {
            (
                4,
                format!(
                    "worker {worker} stopped heartbeating (lease expired) on attempt {} of {}; giving up",
                    r.attempt, r.max_attempts
                ),
                "failed",
            )
        } else {
            (
                1,
                format!("worker {worker} stopped heartbeating (lease expired) on attempt {} of {}; retrying", r.attempt, r.max_attempts),
                "requeued",
            )
        };
        sqlx::query(
            "UPDATE JobHistory
                SET LeaseUntil = NULL, DispatchedAt = NULL, DispatchedBy = NULL, LastError = ?,
                    FinishedAt = IF(? = 1, NULL, UTC_TIMESTAMP(3)), UpdatedDate = UTC_TIMESTAMP(3),
                    StatusId = ?
              WHERE ID = ?",
        )
        .bind(&error)
        .bind(status)
        .bind(status)
        .bind(&r.id)
        .execute(&mut *tx)
        .await?;
        REAPED.with_label_values(&[outcome]).inc();
        tracing::warn!(job_id = %r.id, "Job Runner: {error}");
    }
    tx.commit().await?;
    Ok(rows.len())
}

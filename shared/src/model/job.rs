//! The `Job` catalogue: one row per job type, keyed by its `Struct` name.

use sqlx::MySqlPool;

use super::ModelError;

/// The job names seeded by the migrations, in the original's order, plus DiagnosticJob.
pub const JOB_NAMES: [&str; 15] = [
    "RescanQueueJob",
    "RescanJob",
    "ExceptionJob",
    "TicketingJob",
    "ScanSyncJob",
    "ScanCloseJob",
    "BulkUpdateJob",
    "VulnSyncJob",
    "CloudSyncJob",
    "AssetSyncJob",
    "CISRescanJob",
    "TicketSyncJob",
    "CloudDecommissionJob",
    "ImageRescanJob",
    "DiagnosticJob",
];

/// Jobs other jobs queue but no worker implements yet (CloudDecommissionJob:
/// the cloud-inventory check is out of scope). The coordinator does not
/// dispatch their rows, so they stay pending (StatusId 1, not dispatched) —
/// listed by `aegis job list`, counted by the rescan loop's in-flight checks,
/// cancellable with `StatusId = -1` — instead of being claimed and failed by
/// a worker that cannot run them. Remove a name once a worker implements it.
pub const NOT_DISPATCHED: [&str; 1] = ["CloudDecommissionJob"];

/// A row of the `Job` table.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Job {
    #[sqlx(rename = "Id")]
    pub id: i32,
    #[sqlx(rename = "Struct")]
    pub name: String,
    #[sqlx(rename = "Priority")]
    pub priority: i32,
}

pub async fn by_name(pool: &MySqlPool, name: &str) -> Result<Job, ModelError> {
    sqlx::query_as::<_, Job>("SELECT Id, Struct, Priority FROM Job WHERE Struct = ?")
        .bind(name)
        .fetch_optional(pool)
        .await?
        .ok_or_else(|| ModelError::NotFound {
            what: "job type",
            key: format!("{name:?} (known: {})", JOB_NAMES.join(", ")),
        })
}

pub async fn all(pool: &MySqlPool) -> Result<Vec<Job>, ModelError> {
    Ok(
        sqlx::query_as::<_, Job>("SELECT Id, Struct, Priority FROM Job ORDER BY Id")
            .fetch_all(pool)
            .await?,
    )
}

//! AutoStart: at coordinator start, one pending row per active AutoStart
//! JobConfig that has none pending or running.
//!
//! Unlike the original, nothing else is touched: other coordinators' and
//! workers' rows, and manually queued rows, stay as they are. The JobConfig row
//! is locked while checking, so coordinators starting together create one row.

use aegis_shared::model::job_history::{self, NewJob};
use sqlx::MySqlPool;

/// Creates the AutoStart rows; returns how many were created.
pub async fn create_autostart_rows(pool: &MySqlPool) -> anyhow::Result<usize> {
    let configs: Vec<(String, String)> = sqlx::query_as(
        "SELECT jc.ID, j.Struct FROM JobConfig jc
           JOIN Job j ON j.Id = jc.JobId
           LEFT JOIN Organization o ON o.ID = jc.OrganizationID
          WHERE jc.AutoStart = 1 AND jc.Active = 1 AND (o.ID IS NULL OR o.Active = 1)",
    )
    .fetch_all(pool)
    .await?;
    let mut created = 0;
    for (config_id, job) in configs {
        let mut tx = pool.begin().await?;
        sqlx::query("SELECT ID FROM JobConfig WHERE ID = ? FOR UPDATE")
            .bind(&config_id)
            .execute(&mut *tx)
            .await?;
        let (existing,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM JobHistory WHERE ConfigID = ? AND StatusId IN (-1, 1, 2)",
        )
        .bind(&config_id)
        .fetch_one(&mut *tx)
        .await?;
        if existing == 0 {
            let row = job_history::insert(
                &mut tx,
                &NewJob {
                    job_name: job.clone(),
                    config_id: Some(config_id.clone()),
                    created_by: "RUNNER".into(),
                    ..Default::default()
                },
            )
            .await?;
            tracing::info!(job_id = %row.id, "Job Runner: AutoStart created a {job} job for config {config_id}");
            created += 1;
        }
        tx.commit().await?;
    }
    Ok(created)
}

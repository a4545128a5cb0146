//! DiagnosticJob: an operator's smoke test of a deployment.
//!
//! Payload (all optional, unknown keys rejected):
//! * `sleep_ms`: sleep this long (cancellable);
//! * `fail`: end as ERROR with this message;
//! * `panic`: panic with this message (the row must end as ERROR, never COMPLETED);
//! * `record`: insert a `DiagnosticRun` row (job, worker, attempt) so tests and
//!   operators can count executions;
//! * `message`: log this line inside the job.
//!
//! ```sql
//! INSERT INTO JobHistory (JobId, StatusId, Priority, Payload)
//! VALUES ((SELECT Id FROM Job WHERE Struct = 'DiagnosticJob'), 1, 0, '{"sleep_ms": 500, "record": true}');
//! ```

use futures::future::BoxFuture;
use serde::Deserialize;

use super::{Job, JobContext, JobError};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Payload {
    #[serde(default)]
    sleep_ms: u64,
    #[serde(default)]
    fail: Option<String>,
    #[serde(default)]
    panic: Option<String>,
    #[serde(default)]
    record: bool,
    #[serde(default)]
    message: Option<String>,
}

pub struct DiagnosticJob;

impl Job for DiagnosticJob {
    fn name(&self) -> &'static str {
        "DiagnosticJob"
    }

    fn needs_sources(&self) -> bool {
        false
    }

    fn run(&self, ctx: JobContext) -> BoxFuture<'static, Result<(), JobError>> {
        Box::pin(async move {
            let p: Payload = ctx.payload()?;
            if p.record {
                sqlx::query(
                    "INSERT INTO DiagnosticRun (JobHistoryID, WorkerID, Attempt) VALUES (?, ?, ?)",
                )
                .bind(&ctx.history.id)
                .bind(&ctx.worker_id)
                .bind(ctx.attempt)
                .execute(&ctx.pool)
                .await?;
            }
            if let Some(m) = &p.message {
                tracing::info!("{m}");
            }
            if p.sleep_ms > 0 {
                ctx.sleep(std::time::Duration::from_millis(p.sleep_ms))
                    .await?;
            }
            if let Some(message) = p.panic {
                panic!("{message}");
            }
            if let Some(message) = p.fail {
                return Err(JobError::Failed(anyhow::anyhow!(message)));
            }
            Ok(())
        })
    }
}

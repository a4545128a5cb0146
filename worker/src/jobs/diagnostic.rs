//! DiagnosticJob: an operator's smoke test of a deployment.
//!
//! Payload (all optional, unknown keys rejected):
//! * `sleep_ms`: sleep this long (cancellable);
//! * `fail`: end as ERROR with this message;
//! * `panic`: panic with this message (the row must end as ERROR, never COMPLETED);
//! * `record`: insert a `DiagnosticRun` row (job, worker, attempt) so tests and
//!   operators can count executions;
//! * `message`: log this line inside the job;
//! * `probe`: `{"source_config": "<SourceConfig ID>", "requests": 10, "path": null}` —
//!   send N requests to that source's health endpoint (JIRA `/rest/api/2/serverInfo`,
//!   Qualys `/msp/about.php`, Nexpose `/api/3/administration/info`, or `path`)
//!   through the fleet's rate-limited client, and log latency and limiter waits. The
//!   job fails when any request failed, with the report in its error.
//!
//! ```sql
//! INSERT INTO JobHistory (JobId, StatusId, Priority, Payload)
//! VALUES ((SELECT Id FROM Job WHERE Struct = 'DiagnosticJob'), 1, 0, '{"sleep_ms": 500, "record": true}');
//! ```

use aegis_shared::model::source_config;
use aegis_shared::source_http;
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
    #[serde(default)]
    probe: Option<Probe>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Probe {
    source_config: String,
    #[serde(default = "default_requests")]
    requests: u32,
    #[serde(default)]
    path: Option<String>,
}

fn default_requests() -> u32 {
    10
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
            if let Some(probe) = &p.probe {
                let sc = source_config::by_id(&ctx.pool, &probe.source_config).await?;
                let client = ctx.client(&sc)?;
                let report = source_http::probe(
                    &client,
                    probe.requests.clamp(1, 10_000),
                    probe.path.as_deref(),
                )
                .await
                .map_err(|e| {
                    JobError::Failed(anyhow::anyhow!("probe of source config {}: {e}", sc.id))
                })?;
                let text = serde_json::to_string(&report).unwrap_or_default();
                if report.errors > 0 {
                    return Err(JobError::Failed(anyhow::anyhow!(
                        "probe of {} saw {} failed request(s): {text}",
                        sc.id,
                        report.errors
                    )));
                }
                tracing::info!(
                    "Probe of {} {}: {text}",
                    sc.source.as_deref().unwrap_or("source"),
                    sc.id
                );
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

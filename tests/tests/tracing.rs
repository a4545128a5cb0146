//! One trace covers a job end to end: the coordinator's dispatch span, the
//! worker's job span (carried through RabbitMQ in the W3C `traceparent`
//! header) with the job name, org code and JobHistory ID as attributes, and the
//! vendor HTTP calls and rate-limiter waits inside the job. Exported over
//! OTLP/HTTP protobuf to a local receiver, as to Jaeger.

use std::time::Duration;

use aegis_shared::model::source_config::{self, NewSourceConfig, Vendor};
use aegis_sim::{SimConfig, Simulator};
use aegis_tests::eventually;
use aegis_tests::fleet::Fleet;
use aegis_tests::otlp::Receiver;

#[tokio::test]
async fn one_trace_covers_dispatch_job_vendor_calls_and_limiter_waits() -> anyhow::Result<()> {
    let receiver = Receiver::default();
    let endpoint = receiver.start().await?;
    let sim = Simulator::start(SimConfig::default()).await?;
    let mut f = Fleet::new().await?;
    f.env.insert("OTEL_EXPORTER_OTLP_ENDPOINT".into(), endpoint);
    f.env.insert("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into());
    // An organization, a JIRA source config on the simulator, and a DiagnosticJob
    // config whose payload probes it twice (two vendor calls, two limiter waits).
    let mut tx = f.pool().begin().await?;
    aegis_tests::setup::organization(&mut tx, "NORTON").await?;
    let (jira, _) = source_config::create(
        &mut tx,
        &NewSourceConfig {
            delay_ns: 10_000_000,
            concurrency: 1,
            payload: serde_json::from_str(r#"{"project":"VULN"}"#)?,
            ..aegis_tests::setup::source("NORTON", Vendor::Jira, &sim.jira_url())
        },
        None,
    )
    .await?;
    let (org_id,): (String,) = sqlx::query_as("SELECT ID FROM Organization WHERE Code = 'NORTON'")
        .fetch_one(&mut *tx)
        .await?;
    let config = uuid::Uuid::new_v4().to_string();
    sqlx::query("INSERT INTO JobConfig (ID, JobId, OrganizationID, Payload) VALUES (?, (SELECT Id FROM Job WHERE Struct = 'DiagnosticJob'), ?, ?)")
        .bind(&config)
        .bind(&org_id)
        .bind(format!(r#"{{"probe": {{"source_config": "{}", "requests": 2}}}}"#, jira.id))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    f.coordinator()?;
    f.worker()?;
    let id = uuid::Uuid::new_v4().to_string();
    sqlx::query("INSERT INTO JobHistory (ID, JobId, ConfigID, StatusId, Priority, Payload) SELECT ?, JobId, ID, 1, 0, Payload FROM JobConfig WHERE ID = ?")
        .bind(&id)
        .bind(&config)
        .execute(f.pool())
        .await?;
    f.wait_status(&id, 3, Duration::from_secs(30)).await?;

    let (dispatch, job) = eventually(
        "the dispatch and job spans",
        Duration::from_secs(20),
        || async {
            let spans = receiver.spans();
            let dispatch = spans
                .iter()
                .find(|s| {
                    s.name == "dispatch DiagnosticJob" && s.attributes.get("job_id") == Some(&id)
                })
                .cloned();
            let job = spans
                .iter()
                .find(|s| s.name == "job DiagnosticJob" && s.attributes.get("job_id") == Some(&id))
                .cloned();
            Ok(dispatch.zip(job))
        },
    )
    .await?;
    assert_eq!(dispatch.service, "aegis-coordinator");
    assert_eq!(job.service, "aegis-worker");
    assert_eq!(
        job.trace_id, dispatch.trace_id,
        "one trace across the broker"
    );
    assert_eq!(
        job.parent_span_id, dispatch.span_id,
        "the job span is the dispatch span's child"
    );
    assert_eq!(
        job.attributes.get("job").map(String::as_str),
        Some("DiagnosticJob")
    );
    assert!(job.attributes.contains_key("org"), "{:?}", job.attributes);
    Ok(())
}

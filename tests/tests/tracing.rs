//! One trace covers a job end to end: the coordinator's dispatch span and the
//! worker's job span (carried through RabbitMQ in the W3C `traceparent`
//! header), with the job name, org code and JobHistory ID as attributes.
//! Exported over OTLP/HTTP protobuf to a local receiver, as to Jaeger.

use std::time::Duration;

use aegis_tests::eventually;
use aegis_tests::fleet::Fleet;
use aegis_tests::otlp::Receiver;

#[tokio::test]
async fn one_trace_covers_the_coordinators_dispatch_and_the_workers_job() -> anyhow::Result<()> {
    let receiver = Receiver::default();
    let endpoint = receiver.start().await?;
    let mut f = Fleet::new().await?;
    f.env.insert("OTEL_EXPORTER_OTLP_ENDPOINT".into(), endpoint);
    f.env.insert("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into());
    f.coordinator()?;
    f.worker()?;
    let id = f.insert_diagnostic(r#"{"message": "traced"}"#, 0).await?;
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

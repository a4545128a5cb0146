//! Jobs submitted by queue: a documented JSON message on `aegis.submit` becomes a
//! JobHistory row and runs; the sender gets the row's ID on its reply-to queue;
//! malformed messages go to the dead-letter queue with the reason; a repeated
//! idempotency key creates no second row.

use std::time::Duration;

use aegis_shared::broker::{header_string, SubmissionReply, SubmitClient, Topology, ERROR_HEADER};
use aegis_shared::services;
use aegis_tests::eventually;
use aegis_tests::fleet::Fleet;
use lapin::options::{BasicGetOptions, BasicPublishOptions};
use lapin::{BasicProperties, Channel};

const T: Duration = Duration::from_secs(30);

struct Client {
    channel: Channel,
    topology: Topology,
    submit: SubmitClient,
    _conn: lapin::Connection,
}

impl Client {
    async fn new(f: &Fleet) -> anyhow::Result<Self> {
        let settings = f.settings()?;
        let conn = services::connect_amqp(&settings.amqp_url, "submission-test").await?;
        let channel = conn.create_channel().await?;
        let topology = Topology::new(&settings);
        topology.declare(&channel).await?;
        let submit = SubmitClient::connect(&settings, "submission-test").await?;
        Ok(Client {
            channel,
            topology,
            submit,
            _conn: conn,
        })
    }

    /// Publishes a raw body the way any AMQP client would, and waits for the reply.
    async fn submit(&mut self, body: &[u8]) -> anyhow::Result<SubmissionReply> {
        Ok(self.submit.submit_raw(body, T).await?)
    }

    /// The next dead-lettered message's reason and body.
    async fn dead_letter(&self) -> anyhow::Result<(String, Vec<u8>)> {
        eventually("a dead-lettered message", T, || async {
            let got = self
                .channel
                .basic_get(
                    &self.topology.dead_letter_queue,
                    BasicGetOptions { no_ack: true },
                )
                .await?;
            Ok(got.map(|m| {
                let reason = m
                    .delivery
                    .properties
                    .headers()
                    .as_ref()
                    .and_then(|h| header_string(h, ERROR_HEADER))
                    .unwrap_or_default();
                (reason, m.delivery.data.clone())
            }))
        })
        .await
    }
}

#[tokio::test]
async fn submission_creates_a_row_that_runs_and_replies_with_its_id() -> anyhow::Result<()> {
    let mut f = Fleet::new().await?;
    f.coordinator()?;
    f.worker()?;
    let mut c = Client::new(&f).await?;
    let reply = c.submit(br#"{"job": "DiagnosticJob", "payload": {"record": true}, "priority": 1, "idempotency_key": "demo-42"}"#).await?;
    assert_eq!(reply.status, "created", "{reply:?}");
    let id = reply.id.expect("an ID");
    f.wait_status(&id, 3, T).await?;
    let (created_by, priority): (Option<String>, i32) =
        sqlx::query_as("SELECT CreatedBy, Priority FROM JobHistory WHERE ID = ?")
            .bind(&id)
            .fetch_one(f.pool())
            .await?;
    assert_eq!((created_by.as_deref(), priority), (Some("QUEUE"), 1));

    // Same idempotency key: the first row's ID, and no second row.
    let again = c.submit(br#"{"job": "DiagnosticJob", "payload": {"record": true}, "idempotency_key": "demo-42"}"#).await?;
    assert_eq!(
        (again.status.as_str(), again.id.as_deref()),
        ("duplicate", Some(id.as_str()))
    );
    let (rows,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM JobHistory")
        .fetch_one(f.pool())
        .await?;
    assert_eq!(rows, 1);

    // The CLI's queue path says the same.
    let out = std::process::Command::new(aegis_tests::binary("aegis"))
        .args([
            "job",
            "submit",
            "--queue",
            "--job",
            "DiagnosticJob",
            "--payload",
            "{}",
        ])
        .envs(&f.env)
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8(out.stdout)?;
    assert!(line.trim().ends_with("(created)"), "{line}");
    Ok(())
}

#[tokio::test]
async fn malformed_submissions_and_job_messages_go_to_the_dead_letter_queue_with_a_reason(
) -> anyhow::Result<()> {
    let mut f = Fleet::new().await?;
    f.coordinator()?;
    f.worker()?;
    let mut c = Client::new(&f).await?;

    let reply = c.submit(b"this is not json").await?;
    assert_eq!(reply.status, "rejected");
    let (reason, body) = c.dead_letter().await?;
    assert!(reason.contains("not a valid submission"), "{reason}");
    assert_eq!(body, b"this is not json", "the message is kept whole");

    let reply = c.submit(br#"{"job": "NoSuchJob"}"#).await?;
    assert_eq!(reply.status, "rejected");
    assert!(reply
        .error
        .as_deref()
        .unwrap_or_default()
        .contains("NoSuchJob"));
    let (reason, _) = c.dead_letter().await?;
    assert!(reason.contains("NoSuchJob"), "{reason}");

    // A broken message on a job queue: the worker dead-letters it and carries on.
    c.channel
        .basic_publish(
            &c.topology.jobs_exchange,
            "DiagnosticJob",
            BasicPublishOptions::default(),
            b"{\"oops\":",
            BasicProperties::default(),
        )
        .await?;
    let (reason, _) = c.dead_letter().await?;
    assert!(reason.contains("not a job message"), "{reason}");
    let id = f.insert_diagnostic("{}", 0).await?;
    f.wait_status(&id, 3, T).await?;
    Ok(())
}

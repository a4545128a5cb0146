//! Queue submissions: JSON messages on `aegis.submit` become pending JobHistory
//! rows, and then run like any other job (see `docs/submit.md`).
//!
//! * A valid submission is inserted (idempotency key honoured) and the sender's
//!   `reply_to` queue gets `{"status":"created"|"duplicate","id":…}` with the
//!   request's `correlation_id`.
//! * A malformed submission, or one naming an unknown job or config, goes to the
//!   dead-letter queue with the reason in the `x-aegis-error` header; the sender
//!   gets `{"status":"rejected","error":…}`. Nothing is lost either way.
//! * A database error leaves the message unacknowledged (requeued) to try again.

use std::sync::Arc;
use std::sync::LazyLock;

use aegis_shared::broker::{self, Submission, SubmissionReply, Topology};
use aegis_shared::model::job_history::{self, NewJob};
use aegis_shared::model::ModelError;
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel};
use sqlx::MySqlPool;
use tokio::sync::Notify;
use tracing::Instrument;

pub static SUBMISSIONS: LazyLock<prometheus::IntCounterVec> = LazyLock::new(|| {
    aegis_shared::metrics::counter_vec(
        "aegis_submissions_total",
        "Queue submissions, by result",
        &["result"],
    )
});

/// Consumes submissions until the channel closes.
pub async fn consume(
    channel: Channel,
    topology: Topology,
    pool: MySqlPool,
    wake_dispatch: Arc<Notify>,
    consumer_tag: String,
) -> anyhow::Result<()> {
    channel.basic_qos(64, BasicQosOptions::default()).await?;
    let mut consumer = channel
        .basic_consume(
            &topology.submit_queue,
            &consumer_tag,
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    while let Some(delivery) = consumer.next().await {
        let delivery = delivery?;
        let span = tracing::info_span!("submission", otel.name = "submit");
        broker::adopt_trace(&span, delivery.properties.headers().as_ref());
        handle(&channel, &topology, &pool, &wake_dispatch, delivery)
            .instrument(span)
            .await?;
    }
    Ok(())
}

async fn handle(
    channel: &Channel,
    topology: &Topology,
    pool: &MySqlPool,
    wake_dispatch: &Notify,
    delivery: Delivery,
) -> anyhow::Result<()> {
    let submission = match Submission::parse(&delivery.data) {
        Ok(s) => s,
        Err(reason) => return reject(channel, topology, delivery, reason).await,
    };
    let job_name = match &submission.job {
        Some(job) => job.clone(),
        None => {
            // parse() guarantees a config when there is no job name.
            let config_id = submission.config_id.clone().unwrap_or_default();
            let row: Option<(String,)> = sqlx::query_as(
                "SELECT j.Struct FROM JobConfig jc JOIN Job j ON j.Id = jc.JobId WHERE jc.ID = ?",
            )
            .bind(&config_id)
            .fetch_optional(pool)
            .await?;
            match row {
                Some((name,)) => name,
                None => {
                    return reject(
                        channel,
                        topology,
                        delivery,
                        format!("no job config found for {config_id:?}"),
                    )
                    .await
                }
            }
        }
    };
    let new = NewJob {
        job_name,
        config_id: submission.config_id.clone(),
        priority: submission.priority,
        payload: submission.payload_text(),
        parent_job_id: None,
        created_by: submission
            .created_by
            .clone()
            .unwrap_or_else(|| "QUEUE".into()),
        idempotency_key: submission.idempotency_key.clone(),
        trace_parent: broker::traceparent_of(&tracing::Span::current()),
    };
    let mut tx = pool.begin().await?;
    let inserted = match job_history::insert(&mut tx, &new).await {
        Ok(i) => i,
        Err(e @ (ModelError::NotFound { .. } | ModelError::Invalid { .. })) => {
            drop(tx);
            return reject(channel, topology, delivery, e.to_string()).await;
        }
        Err(e) => {
            // Transient (database): try again later.
            drop(tx);
            tracing::warn!(error = %e, "Job Runner: could not record a submission; it will be retried");
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            delivery
                .nack(BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                })
                .await?;
            return Ok(());
        }
    };
    tx.commit().await?;
    wake_dispatch.notify_one();
    let status = if inserted.created {
        "created"
    } else {
        "duplicate"
    };
    SUBMISSIONS.with_label_values(&[status]).inc();
    tracing::info!(job_id = %inserted.id, "Job Runner: queue submission {status} a {} job", new.job_name);
    reply(
        channel,
        &delivery,
        SubmissionReply {
            status: status.into(),
            id: Some(inserted.id),
            error: None,
        },
    )
    .await;
    delivery.ack(BasicAckOptions::default()).await?;
    Ok(())
}

/// Dead-letters a submission with its reason, tells the sender, and acks it.
async fn reject(
    channel: &Channel,
    topology: &Topology,
    delivery: Delivery,
    reason: String,
) -> anyhow::Result<()> {
    SUBMISSIONS.with_label_values(&["rejected"]).inc();
    tracing::warn!(error = %reason, "Job Runner: rejected a queue submission; it is in the dead-letter queue");
    let mut headers = delivery.properties.headers().clone().unwrap_or_default();
    headers.insert(
        broker::ERROR_HEADER.into(),
        AMQPValue::LongString(reason.clone().into()),
    );
    headers.insert(
        "x-aegis-source-queue".into(),
        AMQPValue::LongString(topology.submit_queue.clone().into()),
    );
    let props = BasicProperties::default()
        .with_delivery_mode(2)
        .with_headers(headers);
    let confirm = channel
        .basic_publish(
            &topology.dead_letter_exchange,
            "",
            BasicPublishOptions::default(),
            &delivery.data,
            props,
        )
        .await?;
    confirm.await?;
    reply(
        channel,
        &delivery,
        SubmissionReply {
            status: "rejected".into(),
            id: None,
            error: Some(reason),
        },
    )
    .await;
    delivery.ack(BasicAckOptions::default()).await?;
    Ok(())
}

async fn reply(channel: &Channel, delivery: &Delivery, body: SubmissionReply) {
    let Some(reply_to) = delivery.properties.reply_to() else {
        return;
    };
    let Ok(bytes) = serde_json::to_vec(&body) else {
        return;
    };
    let mut props = BasicProperties::default().with_content_type("application/json".into());
    if let Some(c) = delivery.properties.correlation_id() {
        props = props.with_correlation_id(c.clone());
    }
    match channel
        .basic_publish(
            "",
            reply_to.as_str(),
            BasicPublishOptions::default(),
            &bytes,
            props,
        )
        .await
    {
        Ok(confirm) => {
            if let Err(e) = confirm.await {
                tracing::warn!(error = %e, "Job Runner: could not reply to a submission");
            }
        }
        Err(e) => tracing::warn!(error = %e, "Job Runner: could not reply to a submission"),
    }
}

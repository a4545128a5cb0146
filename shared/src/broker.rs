//! The RabbitMQ topology and message formats shared by the coordinator, the
//! workers and anyone who submits jobs by queue.
//!
//! ```text
//!  coordinator ──publish(job name)──► aegis.jobs (direct) ──► aegis.jobs.<JobName> ──► workers
//!  submitters ──publish──► aegis.submit (direct) ──► aegis.submit ──► coordinators
//!  anyone ──unparsable message──► aegis.dead-letter (fanout) ──► aegis.dead-letter
//! ```
//!
//! All names carry the `AEGIS_NAMESPACE` prefix. Exchanges and queues are
//! durable, messages persistent; job queues have priorities (`x-max-priority`).
//! A job message is only a *notice* that a JobHistory row is ready: the database
//! decides who runs it, so a lost message is republished and a duplicate is
//! dropped at claim time. Trace context travels in the W3C `traceparent` header.

use std::collections::HashMap;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, ExchangeKind};
use opentelemetry::propagation::{Extractor, Injector};
use serde::{Deserialize, Serialize};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::model::job::JOB_NAMES;
use crate::Settings;

/// Header carrying the reason a message was dead-lettered.
pub const ERROR_HEADER: &str = "x-aegis-error";
/// Highest AMQP priority used on job queues.
pub const MAX_PRIORITY: u8 = 9;

/// Exchange and queue names for one namespace.
#[derive(Clone, Debug)]
pub struct Topology {
    pub jobs_exchange: String,
    pub submit_exchange: String,
    pub submit_queue: String,
    pub dead_letter_exchange: String,
    pub dead_letter_queue: String,
    prefix: String,
}

impl Topology {
    pub fn new(settings: &Settings) -> Self {
        Topology {
            jobs_exchange: settings.namespaced("aegis.jobs"),
            submit_exchange: settings.namespaced("aegis.submit"),
            submit_queue: settings.namespaced("aegis.submit"),
            dead_letter_exchange: settings.namespaced("aegis.dead-letter"),
            dead_letter_queue: settings.namespaced("aegis.dead-letter"),
            prefix: settings.namespaced("aegis.jobs."),
        }
    }

    /// The queue of one job type, e.g. `aegis.jobs.TicketingJob`.
    pub fn job_queue(&self, job_name: &str) -> String {
        format!("{}{}", self.prefix, job_name)
    }

    /// Declares every exchange and queue (idempotent; both binaries call it).
    pub async fn declare(&self, channel: &Channel) -> Result<(), lapin::Error> {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .exchange_declare(
                &self.jobs_exchange,
                ExchangeKind::Direct,
                durable,
                FieldTable::default(),
            )
            .await?;
        channel
            .exchange_declare(
                &self.submit_exchange,
                ExchangeKind::Direct,
                durable,
                FieldTable::default(),
            )
            .await?;
        channel
            .exchange_declare(
                &self.dead_letter_exchange,
                ExchangeKind::Fanout,
                durable,
                FieldTable::default(),
            )
            .await?;
        let q = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .queue_declare(&self.dead_letter_queue, q, FieldTable::default())
            .await?;
        channel
            .queue_bind(
                &self.dead_letter_queue,
                &self.dead_letter_exchange,
                "",
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let mut dlx = FieldTable::default();
        dlx.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(self.dead_letter_exchange.clone().into()),
        );
        channel
            .queue_declare(&self.submit_queue, q, dlx.clone())
            .await?;
        channel
            .queue_bind(
                &self.submit_queue,
                &self.submit_exchange,
                "submit",
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        for name in JOB_NAMES {
            let mut args = dlx.clone();
            args.insert(
                "x-max-priority".into(),
                AMQPValue::ShortShortUInt(MAX_PRIORITY),
            );
            let queue = self.job_queue(name);
            channel.queue_declare(&queue, q, args).await?;
            channel
                .queue_bind(
                    &queue,
                    &self.jobs_exchange,
                    name,
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        Ok(())
    }
}

/// JobHistory.Priority (0 runs first) as an AMQP priority (higher runs first).
pub fn amqp_priority(job_priority: i32) -> u8 {
    (MAX_PRIORITY as i32 - job_priority.clamp(0, MAX_PRIORITY as i32)) as u8
}

/// The notice that a JobHistory row was dispatched.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobMessage {
    /// The JobHistory ID the worker must claim.
    pub job_history_id: String,
    /// The job name (also the routing key).
    pub job: String,
}

/// A job submitted by queue (`aegis.submit`, routing key `submit`). See
/// `docs/submit.md`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Submission {
    /// The job name, e.g. `TicketingJob`. Optional when `config_id` is given.
    #[serde(default)]
    pub job: Option<String>,
    /// A JobConfig ID; its payload and priority are the defaults.
    #[serde(default)]
    pub config_id: Option<String>,
    /// The payload: a JSON object (or a string holding one).
    #[serde(default)]
    pub payload: Option<serde_json::Value>,
    /// JobHistory.Priority: 0 runs first.
    #[serde(default)]
    pub priority: Option<i32>,
    /// A repeated key creates no second row; the reply names the first.
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// Recorded as JobHistory.CreatedBy (default `QUEUE`).
    #[serde(default)]
    pub created_by: Option<String>,
}

/// The reply sent to a submission's `reply_to` queue.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct SubmissionReply {
    /// `created`, `duplicate` or `rejected`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Submission {
    /// Parses a submission body; the error says what is wrong with it.
    pub fn parse(body: &[u8]) -> Result<Self, String> {
        let s: Submission =
            serde_json::from_slice(body).map_err(|e| format!("not a valid submission: {e}"))?;
        if s.job.is_none() && s.config_id.is_none() {
            return Err(
                "a submission needs \"job\" (a job name) or \"config_id\" (a JobConfig ID)".into(),
            );
        }
        if let Some(p) = &s.payload {
            match p {
                serde_json::Value::Object(_) => {}
                serde_json::Value::String(text) => {
                    if !matches!(
                        serde_json::from_str::<serde_json::Value>(text),
                        Ok(serde_json::Value::Object(_))
                    ) {
                        return Err(
                            "\"payload\" is a string that does not hold a JSON object".into()
                        );
                    }
                }
                _ => return Err("\"payload\" must be a JSON object".into()),
            }
        }
        Ok(s)
    }

    /// The payload as the text stored in JobHistory.Payload.
    pub fn payload_text(&self) -> Option<String> {
        self.payload.as_ref().map(|p| match p {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    }
}

/// A client that submits jobs by queue and waits for each reply: what the
/// `aegis job submit --queue` command, the tests and the benchmark use, and an
/// example for other AMQP clients (docs/submit.md).
pub struct SubmitClient {
    connection: lapin::Connection,
    channel: Channel,
    exchange: String,
    reply_queue: String,
    replies: lapin::Consumer,
}

impl SubmitClient {
    pub async fn connect(settings: &Settings, name: &str) -> Result<Self, SubmitError> {
        let connection = crate::services::connect_amqp(&settings.amqp_url, name)
            .await
            .map_err(|e| SubmitError::Broker(e.to_string()))?;
        let channel = connection.create_channel().await?;
        let queue = channel
            .queue_declare(
                "",
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        let replies = channel
            .basic_consume(
                queue.name().as_str(),
                name,
                lapin::options::BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        Ok(SubmitClient {
            connection,
            channel,
            exchange: Topology::new(settings).submit_exchange,
            reply_queue: queue.name().to_string(),
            replies,
        })
    }

    /// Publishes a raw submission body and waits (up to `timeout`) for its reply.
    pub async fn submit_raw(
        &mut self,
        body: &[u8],
        timeout: std::time::Duration,
    ) -> Result<SubmissionReply, SubmitError> {
        use futures::StreamExt;
        let correlation = uuid::Uuid::new_v4().to_string();
        let props = lapin::BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_reply_to(self.reply_queue.clone().into())
            .with_correlation_id(correlation.clone().into());
        self.channel
            .basic_publish(
                &self.exchange,
                "submit",
                lapin::options::BasicPublishOptions::default(),
                body,
                props,
            )
            .await?;
        let wait = async {
            while let Some(delivery) = self.replies.next().await {
                let delivery = delivery?;
                if delivery
                    .properties
                    .correlation_id()
                    .as_ref()
                    .map(|c| c.as_str())
                    == Some(correlation.as_str())
                {
                    return serde_json::from_slice::<SubmissionReply>(&delivery.data)
                        .map_err(|e| SubmitError::Broker(format!("unreadable reply: {e}")));
                }
            }
            Err(SubmitError::Broker("the reply queue closed".into()))
        };
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| SubmitError::NoReply(timeout))?
    }

    /// Submits a job and waits for its reply.
    pub async fn submit(
        &mut self,
        submission: &Submission,
        timeout: std::time::Duration,
    ) -> Result<SubmissionReply, SubmitError> {
        let body =
            serde_json::to_vec(submission).map_err(|e| SubmitError::Broker(e.to_string()))?;
        self.submit_raw(&body, timeout).await
    }

    pub async fn close(self) {
        let _ = self.connection.close(200, "done").await;
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("RabbitMQ: {0}")]
    Broker(String),
    #[error("no reply from a coordinator within {0:?}; is aegis-coordinator running?")]
    NoReply(std::time::Duration),
}

impl From<lapin::Error> for SubmitError {
    fn from(e: lapin::Error) -> Self {
        SubmitError::Broker(e.to_string())
    }
}

struct HeaderInjector<'a>(&'a mut FieldTable);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(
            ShortString::from(key.to_string()),
            AMQPValue::LongString(value.into()),
        );
    }
}

struct HeaderExtractor(HashMap<String, String>);

impl Extractor for HeaderExtractor {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

/// Writes the current span's trace context (W3C `traceparent`) into headers.
pub fn inject_trace(span: &tracing::Span, headers: &mut FieldTable) {
    let cx = span.context();
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&cx, &mut HeaderInjector(headers))
    });
}

/// The `traceparent` of a span, for storing beside a row (empty without tracing).
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    let mut headers = FieldTable::default();
    inject_trace(span, &mut headers);
    header_string(&headers, "traceparent")
}

/// Makes `span` a child of the trace context found in `headers`, if any.
pub fn adopt_trace(span: &tracing::Span, headers: Option<&FieldTable>) {
    if let Some(headers) = headers {
        adopt_traceparent(span, header_string(headers, "traceparent").as_deref());
    }
}

/// Makes `span` a child of a stored `traceparent`, if any.
pub fn adopt_traceparent(span: &tracing::Span, traceparent: Option<&str>) {
    let Some(tp) = traceparent.filter(|t| !t.is_empty()) else {
        return;
    };
    let extractor = HeaderExtractor(HashMap::from([("traceparent".to_string(), tp.to_string())]));
    let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(&extractor));
    span.set_parent(cx);
}

/// A string header's value.
pub fn header_string(headers: &FieldTable, key: &str) -> Option<String> {
    match headers.inner().get(key)? {
        AMQPValue::LongString(s) => Some(s.to_string()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_zero_maps_to_the_highest_amqp_priority() {
        assert_eq!(amqp_priority(0), 9);
        assert_eq!(amqp_priority(5), 4);
        assert_eq!(amqp_priority(-3), 9);
        assert_eq!(amqp_priority(42), 0);
    }

    #[test]
    fn submissions_are_checked_with_a_reason() {
        let s =
            Submission::parse(br#"{"job":"DiagnosticJob","payload":{"sleep_ms":5},"priority":1}"#)
                .expect("valid");
        assert_eq!(s.payload_text().as_deref(), Some(r#"{"sleep_ms":5}"#));
        assert!(Submission::parse(b"not json")
            .expect_err("bad")
            .contains("not a valid submission"));
        assert!(Submission::parse(b"{}")
            .expect_err("bad")
            .contains("\"job\""));
        assert!(Submission::parse(br#"{"job":"X","payload":[1]}"#)
            .expect_err("bad")
            .contains("payload"));
        assert!(Submission::parse(br#"{"job":"X","colour":"red"}"#)
            .expect_err("bad")
            .contains("colour"));
    }
}

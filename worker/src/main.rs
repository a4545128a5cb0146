//! `aegis-worker`: consumes job messages and runs the jobs.
//!
//! One consume loop, one shutdown signal. For each job message: wait for a free
//! slot (`AEGIS_WORKER_CONCURRENCY`, also the prefetch), claim the row in the
//! database (only one worker can win; a loser drops the message), acknowledge the
//! message, and run the job ([`runner`]) while a heartbeat extends its lease.
//! Messages are acknowledged at claim time, not at the end, because jobs run for
//! hours and RabbitMQ closes channels whose deliveries stay unacknowledged.
//!
//! On SIGTERM: stop consuming, let running jobs finish within
//! `AEGIS_SHUTDOWN_GRACE`, then stop the rest and release their rows to pending
//! so another worker resumes them. Broker outages are survived by reconnecting
//! with backoff; running jobs carry on meanwhile.

mod jobs;
mod vendors;
mod runner;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use aegis_shared::broker::{self, JobMessage, Topology};
use aegis_shared::metrics::{self, Readiness};
use aegis_shared::model::job::JOB_NAMES;
use aegis_shared::model::job_history;
use aegis_shared::ratelimit::settings::LimitsCache;
use aegis_shared::ratelimit::Limiter;
use aegis_shared::startup::{self, Started};
use aegis_shared::{job_span, services, Settings};
use anyhow::Context;
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection};
use sqlx::MySqlPool;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::jobs::Registry;
use crate::runner::RunningJobs;

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("aegis-worker: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// What every delivery handler shares.
struct Shared {
    settings: Arc<Settings>,
    pool: MySqlPool,
    topology: Topology,
    registry: Arc<Registry>,
    running: RunningJobs,
    vendors: runner::VendorAccess,
}

async fn run() -> anyhow::Result<()> {
    let Started {
        settings,
        pool,
        mut telemetry,
    } = startup::start("aegis-worker").await?;
    // A job's panic is caught by the runner and recorded as ERROR; log it as one
    // line in the job's span instead of the default hook's stderr dump.
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        tracing::error!(
            "Job Runner: panic{location}: {}",
            runner::panic_message(info.payload())
        );
    }));
    let jobs: Vec<String> = if settings.worker.jobs.is_empty() {
        JOB_NAMES.iter().map(|s| s.to_string()).collect()
    } else {
        for name in &settings.worker.jobs {
            if !JOB_NAMES.contains(&name.as_str()) {
                anyhow::bail!(
                    "AEGIS_WORKER_JOBS: {name:?} is not a job name; expected some of {}",
                    JOB_NAMES.join(", ")
                );
            }
        }
        settings.worker.jobs.clone()
    };
    let readiness = Readiness::default();
    if let Some(addr) = settings.http_addr {
        let bound = metrics::serve(addr, readiness.clone())
            .await
            .with_context(|| format!("AEGIS_HTTP_ADDR: cannot listen on {addr}"))?;
        tracing::info!("Job Runner: metrics and health on http://{bound}/metrics");
    }
    let settings = Arc::new(settings);
    let shared = Arc::new(Shared {
        topology: Topology::new(&settings),
        settings: settings.clone(),
        pool: pool.clone(),
        registry: Arc::new(Registry::standard()),
        running: RunningJobs::default(),
        vendors: runner::VendorAccess {
            limiter: Limiter::new(&settings).context("setting up the rate limiter (AEGIS_REDIS_URL)")?,
            limits: LimitsCache::new(pool.clone()),
        },
    });
    tracing::info!(
        "Job Runner: worker {} started; concurrency {}, jobs: {}",
        settings.worker.worker_id,
        settings.worker.concurrency,
        jobs.join(", ")
    );

    let shutdown = CancellationToken::new();
    {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            startup::shutdown_signal().await;
            shutdown.cancel();
        });
    }
    let heartbeat_stop = CancellationToken::new();
    let heartbeat = tokio::spawn(runner::heartbeat(
        pool.clone(),
        settings.clone(),
        shared.running.clone(),
        heartbeat_stop.clone(),
    ));
    let slots = Arc::new(Semaphore::new(settings.worker.concurrency as usize));
    let tracker = TaskTracker::new();

    // The consume loop: reconnect with backoff until shut down.
    let mut backoff = Duration::from_millis(250);
    let mut connection: Option<Connection> = None;
    while !shutdown.is_cancelled() {
        match open_consumer(&shared, &jobs).await {
            Ok((conn, channel, consumers)) => {
                tracing::info!("Job Runner: consuming from RabbitMQ");
                readiness.set(true);
                backoff = Duration::from_millis(250);
                consume(&shared, &channel, consumers, &slots, &tracker, &shutdown).await;
                readiness.set(false);
                let _ = channel.close(200, "consumer stopped").await;
                connection = Some(conn);
                if !shutdown.is_cancelled() {
                    tracing::warn!("Job Runner: lost the RabbitMQ consumer; reconnecting");
                    if let Some(c) = connection.take() {
                        let _ = c.close(200, "reconnecting").await;
                    }
                }
            }
            Err(e) => {
                tracing::error!(
                    error = format!("{e:#}"),
                    "Job Runner: cannot consume from RabbitMQ; retrying in {backoff:?}"
                );
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.cancelled() => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(15));
            }
        }
    }

    // Drain: running jobs get the grace period, then are stopped and released.
    readiness.set(false);
    tracker.close();
    let grace = settings.worker.shutdown_grace;
    tracing::info!(
        "Job Runner: shutting down; waiting up to {grace:?} for {} running job(s)",
        shared.running.len()
    );
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!(
            "Job Runner: grace period over; releasing {} job(s) to other workers",
            shared.running.len()
        );
        shared.running.stop_all_for_shutdown();
        let _ = tokio::time::timeout(
            runner::CANCEL_GRACE + Duration::from_secs(5),
            tracker.wait(),
        )
        .await;
    }
    heartbeat_stop.cancel();
    let _ = heartbeat.await;
    if let Some(c) = connection {
        let _ = c.close(200, "worker shutting down").await;
    }
    tracing::info!("Job Runner: worker stopped");
    telemetry.shutdown();
    Ok(())
}

type Consumers = futures::stream::SelectAll<lapin::Consumer>;

async fn open_consumer(
    shared: &Shared,
    jobs: &[String],
) -> anyhow::Result<(Connection, Channel, Consumers)> {
    let s = &shared.settings;
    let conn = services::connect_amqp(&s.amqp_url, &s.worker.worker_id).await?;
    let channel = conn.create_channel().await?;
    shared
        .topology
        .declare(&channel)
        .await
        .context("declaring the RabbitMQ topology")?;
    // Prefetch shared by all this channel's consumers: at most `concurrency`
    // messages wait here unclaimed.
    channel
        .basic_qos(s.worker.concurrency, BasicQosOptions { global: true })
        .await?;
    let mut consumers = Vec::new();
    for job in jobs {
        let queue = shared.topology.job_queue(job);
        let tag = format!("{}:{}", s.worker.worker_id, job);
        consumers.push(
            channel
                .basic_consume(
                    &queue,
                    &tag,
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?,
        );
    }
    Ok((conn, channel, futures::stream::select_all(consumers)))
}

/// Takes deliveries until the consumer fails or shutdown; each runs in its own task.
async fn consume(
    shared: &Arc<Shared>,
    channel: &Channel,
    mut consumers: Consumers,
    slots: &Arc<Semaphore>,
    tracker: &TaskTracker,
    shutdown: &CancellationToken,
) {
    loop {
        let delivery = tokio::select! {
            _ = shutdown.cancelled() => return,
            next = consumers.next() => match next {
                Some(Ok(d)) => d,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "Job Runner: RabbitMQ delivery error");
                    return;
                }
                None => return,
            },
        };
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = shutdown.cancelled() => {
                let _ = delivery.nack(BasicNackOptions { requeue: true, ..Default::default() }).await;
                return;
            }
        };
        let (shared, channel) = (shared.clone(), channel.clone());
        tracker.spawn(async move { handle_delivery(shared, channel, delivery, permit).await });
    }
}

/// Claims the row a message names and runs it; drops messages whose row is not
/// dispatchable; dead-letters messages that cannot be parsed.
async fn handle_delivery(
    shared: Arc<Shared>,
    channel: Channel,
    delivery: Delivery,
    _slot: OwnedSemaphorePermit,
) {
    let message: JobMessage = match serde_json::from_slice(&delivery.data) {
        Ok(m) => m,
        Err(e) => {
            dead_letter(
                &shared.topology,
                &channel,
                &delivery,
                format!("not a job message: {e}"),
            )
            .await;
            return;
        }
    };
    let span = job_span!(message.job, "", message.job_history_id);
    broker::adopt_trace(&span, delivery.properties.headers().as_ref());
    let w = &shared.settings.worker;
    match job_history::claim(&shared.pool, &message.job_history_id, &w.worker_id, w.lease).await {
        Ok(Some(claim)) => {
            runner::CLAIMS
                .with_label_values(&[&message.job, "won"])
                .inc();
            if let Err(e) = delivery.ack(BasicAckOptions::default()).await {
                // The claim holds; a redelivered copy will find nothing to claim.
                tracing::debug!(error = %e, "Job Runner: ack after claim failed");
            }
            runner::run_claimed(
                shared.pool.clone(),
                shared.settings.clone(),
                shared.vendors.clone(),
                shared.registry.clone(),
                shared.running.clone(),
                claim,
                message.job,
                span,
            )
            .await;
        }
        Ok(None) => {
            runner::CLAIMS
                .with_label_values(&[&message.job, "not dispatchable"])
                .inc();
            span.in_scope(|| {
                tracing::debug!(
                    "Job Runner: job [{}] is no longer dispatchable; dropping its message",
                    message.job_history_id
                )
            });
            let _ = delivery.ack(BasicAckOptions::default()).await;
        }
        Err(e) => {
            span.in_scope(|| tracing::warn!(error = %e, "Job Runner: could not claim the job; it will be redelivered"));
            tokio::time::sleep(Duration::from_secs(1)).await;
            let _ = delivery
                .nack(BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                })
                .await;
        }
    }
}

/// Moves an unparsable message to the dead-letter queue with its reason.
async fn dead_letter(topology: &Topology, channel: &Channel, delivery: &Delivery, reason: String) {
    tracing::error!(error = %reason, "Job Runner: moving a broken job message to the dead-letter queue");
    let mut headers = delivery.properties.headers().clone().unwrap_or_default();
    headers.insert(
        broker::ERROR_HEADER.into(),
        AMQPValue::LongString(reason.into()),
    );
    headers.insert(
        "x-aegis-source-queue".into(),
        AMQPValue::LongString(delivery.routing_key.to_string().into()),
    );
    let props = BasicProperties::default()
        .with_delivery_mode(2)
        .with_headers(headers);
    match channel
        .basic_publish(
            &topology.dead_letter_exchange,
            "",
            BasicPublishOptions::default(),
            &delivery.data,
            props,
        )
        .await
    {
        Ok(_) => {
            let _ = delivery.ack(BasicAckOptions::default()).await;
        }
        Err(e) => {
            tracing::error!(error = %e, "Job Runner: could not dead-letter a message; rejecting it to the queue's dead-letter exchange");
            let _ = delivery
                .nack(BasicNackOptions {
                    requeue: false,
                    ..Default::default()
                })
                .await;
        }
    }
}

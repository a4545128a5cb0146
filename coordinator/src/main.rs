//! `aegis-coordinator`: finds due work and dispatches it to the workers.
//!
//! One loop, one way to stop it (SIGTERM/Ctrl-C). Each cycle, every duty runs
//! as its own short transaction, so any number of coordinators can run at once:
//!
//! 1. cancel rows whose cancel was requested before a worker ran them ([`reaper`]);
//! 2. requeue or fail rows whose worker lease expired ([`reaper`]);
//! 3. fire due JobSchedule slots ([`schedule`], every `AEGIS_SCHEDULE_INTERVAL`);
//! 4. claim and publish due pending rows, and republish unclaimed ones ([`dispatch`]).
//!
//! At start it creates the AutoStart rows ([`autostart`]); while connected to
//! RabbitMQ it also turns queue submissions into rows ([`submission`]). A broker
//! outage pauses dispatch (rows wait in the database) and the loop reconnects
//! with backoff; database errors are logged and retried on the next cycle.

mod autostart;
mod dispatch;
mod reaper;
mod schedule;
mod submission;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aegis_shared::broker::Topology;
use aegis_shared::logging::HEARTBEAT_TARGET;
use aegis_shared::metrics::{self, Readiness};
use aegis_shared::startup::{self, Started};
use aegis_shared::{services, Settings};
use anyhow::Context;
use lapin::options::ConfirmSelectOptions;
use lapin::{Channel, Connection};
use sqlx::MySqlPool;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("aegis-coordinator: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let Started {
        settings,
        pool,
        mut telemetry,
    } = startup::start("aegis-coordinator").await?;
    let readiness = Readiness::default();
    if let Some(addr) = settings.http_addr {
        let bound = metrics::serve(addr, readiness.clone())
            .await
            .with_context(|| format!("AEGIS_HTTP_ADDR: cannot listen on {addr}"))?;
        tracing::info!("Job Runner: metrics and health on http://{bound}/metrics");
    }
    let id = format!(
        "coordinator-{}-{}",
        std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into()),
        std::process::id()
    );
    let created = autostart::create_autostart_rows(&pool)
        .await
        .context("creating AutoStart jobs")?;
    tracing::info!("Job Runner: started as {id}; AutoStart created {created} job(s)");

    let coordinator = Coordinator {
        topology: Topology::new(&settings),
        settings,
        pool,
        id,
        readiness,
        wake: Arc::new(Notify::new()),
    };
    let shutdown = startup::shutdown_signal();
    tokio::pin!(shutdown);
    coordinator.run(&mut shutdown).await;
    tracing::info!("Job Runner: stopped");
    telemetry.shutdown();
    Ok(())
}

struct Coordinator {
    settings: Settings,
    pool: MySqlPool,
    topology: Topology,
    id: String,
    readiness: Readiness,
    /// Woken by a queue submission so it is dispatched without waiting a poll.
    wake: Arc<Notify>,
}

/// The broker connection while it is up.
struct BrokerSession {
    connection: Connection,
    publish: Channel,
    submissions: JoinHandle<()>,
}

impl BrokerSession {
    fn healthy(&self) -> bool {
        self.connection.status().connected()
            && self.publish.status().connected()
            && !self.submissions.is_finished()
    }
}

impl Coordinator {
    async fn open_broker(&self) -> anyhow::Result<BrokerSession> {
        let connection = services::connect_amqp(&self.settings.amqp_url, &self.id).await?;
        let publish = connection.create_channel().await?;
        publish
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        self.topology
            .declare(&publish)
            .await
            .context("declaring the RabbitMQ topology")?;
        let submit_channel = connection.create_channel().await?;
        submit_channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let (topology, pool, wake, tag) = (
            self.topology.clone(),
            self.pool.clone(),
            self.wake.clone(),
            self.id.clone(),
        );
        let submissions = tokio::spawn(async move {
            if let Err(e) = submission::consume(submit_channel, topology, pool, wake, tag).await {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "Job Runner: submission consumer stopped"
                );
            }
        });
        Ok(BrokerSession {
            connection,
            publish,
            submissions,
        })
    }

    async fn run(&self, shutdown: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>) {
        let cfg = &self.settings.coordinator;
        let mut session: Option<BrokerSession> = None;
        let mut backoff = Duration::from_millis(250);
        let mut next_connect = Instant::now();
        let mut broker_down_logged = false;
        let mut next_schedule = Instant::now();
        let mut next_republish = Instant::now() + Duration::from_secs(1);
        let mut next_idle_log = Instant::now();

        loop {
            if session.as_ref().is_some_and(|s| !s.healthy()) {
                tracing::warn!(
                    "Job Runner: lost the RabbitMQ connection; dispatch paused until it returns"
                );
                session = None;
            }
            if session.is_none() && Instant::now() >= next_connect {
                match self.open_broker().await {
                    Ok(s) => {
                        tracing::info!("Job Runner: connected to RabbitMQ");
                        session = Some(s);
                        backoff = Duration::from_millis(250);
                        broker_down_logged = false;
                    }
                    Err(e) => {
                        if !broker_down_logged {
                            tracing::error!(
                                error = format!("{e:#}"),
                                "Job Runner: cannot reach RabbitMQ; retrying with backoff"
                            );
                            broker_down_logged = true;
                        }
                        next_connect = Instant::now() + backoff;
                        backoff = (backoff * 2).min(Duration::from_secs(15));
                    }
                }
            }
            self.readiness.set(session.is_some());

            log_failure(
                reaper::cancel_waiting(&self.pool).await,
                "Job Runner: Error getting jobs to cancel from the database",
            );
            log_failure(
                reaper::reap_expired(&self.pool, cfg.max_attempts).await,
                "Job Runner: Error while reaping expired leases",
            );
            if Instant::now() >= next_schedule {
                log_failure(
                    schedule::run_due_schedules(&self.pool).await,
                    "Job Runner: Error while checking scheduled jobs",
                );
                next_schedule = Instant::now() + cfg.schedule_interval;
            }

            let mut more = false;
            if let Some(s) = &session {
                match dispatch::dispatch_due(
                    &self.pool,
                    &s.publish,
                    &self.topology,
                    &self.id,
                    cfg.dispatch_batch,
                    cfg.dispatch_window,
                )
                .await
                {
                    Ok(pass) => more = pass.more,
                    Err(e) => tracing::error!(
                        error = format!("{e:#}"),
                        "Job Runner: Error while retrieving job queue"
                    ),
                }
                if Instant::now() >= next_republish {
                    log_failure(
                        dispatch::republish_stale(
                            &self.pool,
                            &s.publish,
                            &self.topology,
                            &self.id,
                            cfg.dispatch_timeout,
                            cfg.dispatch_batch,
                        )
                        .await,
                        "Job Runner: Error while republishing unclaimed jobs",
                    );
                    next_republish = Instant::now()
                        + (cfg.dispatch_timeout / 4)
                            .clamp(Duration::from_millis(200), Duration::from_secs(30));
                }
            }
            if more {
                tokio::task::yield_now().await;
                continue;
            }

            let tasks = tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks();
            let secs = cfg.poll_interval.as_secs_f64();
            if Instant::now() >= next_idle_log {
                tracing::info!(target: HEARTBEAT_TARGET, "Job Runner: Sleeping for {secs} seconds - [{tasks} tasks]");
                next_idle_log = Instant::now() + self.settings.coordinator.idle_log_interval;
            } else {
                tracing::debug!(target: HEARTBEAT_TARGET, "Job Runner: Sleeping for {secs} seconds - [{tasks} tasks]");
            }
            tokio::select! {
                _ = tokio::time::sleep(cfg.poll_interval) => {}
                _ = self.wake.notified() => {}
                _ = shutdown.as_mut() => break,
            }
        }
        self.readiness.set(false);
        if let Some(s) = session {
            s.submissions.abort();
            let _ = s.connection.close(200, "coordinator shutting down").await;
        }
    }
}

fn log_failure<T>(result: anyhow::Result<T>, what: &str) {
    if let Err(e) = result {
        tracing::error!(error = format!("{e:#}"), "{what}");
    }
}

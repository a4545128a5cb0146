//! `aegis job …`: submit, cancel, list, show and wait for jobs.

use std::time::{Duration, Instant};

use aegis_shared::broker::{Submission, SubmissionReply, SubmitClient};
use aegis_shared::model::job_history::{self, status_name, NewJob};
use aegis_shared::model::ModelError;
use aegis_shared::Settings;
use clap::{Args, Subcommand};
use sqlx::MySqlPool;

use crate::output;

#[derive(Subcommand)]
pub enum JobCommand {
    /// Queue a job (a pending JobHistory row), by job name or JobConfig ID.
    Submit(SubmitArgs),
    /// Ask a job to stop: pending rows end as CANCELED, running ones are stopped by their worker.
    Cancel {
        /// The JobHistory ID (it appears in every log line of the job).
        id: String,
    },
    /// List recent jobs, newest first.
    List {
        /// Only this status: a code (-1..5) or a name (pending, running, completed, error, cancelled).
        #[arg(long)]
        status: Option<String>,
        /// Only this job name, e.g. TicketingJob.
        #[arg(long)]
        job: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[arg(long)]
        json: bool,
    },
    /// Show one job: status, attempts, worker, timings, last error.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Wait until a job has finished (completed, error or cancelled); exit 1 unless it completed.
    Wait {
        id: String,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
    },
}

#[derive(Args)]
pub struct SubmitArgs {
    /// Job name, e.g. DiagnosticJob or TicketingJob.
    #[arg(long, required_unless_present = "config")]
    job: Option<String>,
    /// JobConfig ID: its payload and priority are the defaults.
    #[arg(long)]
    config: Option<String>,
    /// Payload as JSON or @file.
    #[arg(long)]
    payload: Option<String>,
    /// Priority: 0 runs first.
    #[arg(long)]
    priority: Option<i32>,
    /// Submitting again with the same key creates no second job.
    #[arg(long)]
    idempotency_key: Option<String>,
    /// Submit through RabbitMQ (aegis.submit) and wait for the reply, instead of
    /// inserting into the database directly.
    #[arg(long)]
    queue: bool,
}

fn parse_status(text: &str) -> anyhow::Result<i32> {
    Ok(match text.to_ascii_lowercase().as_str() {
        "cancel" | "cancel-requested" => -1,
        "pending" => 1,
        "running" | "in-progress" | "in progress" => 2,
        "completed" | "done" => 3,
        "error" | "failed" => 4,
        "cancelled" | "canceled" => 5,
        other => other.parse().map_err(|_| {
            ModelError::invalid("--status", format!("{other:?} is not a status; use -1..5 or pending, running, completed, error, cancelled"))
        })?,
    })
}

fn time(t: Option<chrono::DateTime<chrono::Utc>>) -> String {
    t.map(|t| t.format("%Y-%m-%d %H:%M:%S%.3f").to_string())
        .unwrap_or_default()
}

pub async fn run(cmd: JobCommand, pool: &MySqlPool, settings: &Settings) -> anyhow::Result<()> {
    match cmd {
        JobCommand::Submit(a) => {
            let payload = match &a.payload {
                Some(p) => Some(serde_json::Value::Object(crate::json_object_arg(
                    "--payload",
                    p,
                )?)),
                None => None,
            };
            if a.queue {
                let reply = submit_by_queue(
                    settings,
                    &Submission {
                        job: a.job,
                        config_id: a.config,
                        payload,
                        priority: a.priority,
                        idempotency_key: a.idempotency_key,
                        created_by: Some(crate::operator()),
                    },
                )
                .await?;
                match (reply.status.as_str(), reply.id) {
                    ("rejected", _) => anyhow::bail!(
                        "the coordinator rejected the submission: {}",
                        reply.error.unwrap_or_default()
                    ),
                    (status, Some(id)) => println!("{id} ({status})"),
                    (status, None) => anyhow::bail!("unexpected reply {status:?} without an ID"),
                }
                return Ok(());
            }
            let job_name = match (&a.job, &a.config) {
                (Some(j), _) => j.clone(),
                (None, Some(c)) => {
                    aegis_shared::model::job_config::by_id(pool, c)
                        .await?
                        .job_name
                }
                (None, None) => anyhow::bail!("give --job NAME or --config ID"),
            };
            let mut tx = pool.begin().await?;
            let inserted = job_history::insert(
                &mut tx,
                &NewJob {
                    job_name,
                    config_id: a.config,
                    priority: a.priority,
                    payload: payload.map(|p| p.to_string()),
                    parent_job_id: None,
                    created_by: crate::operator(),
                    idempotency_key: a.idempotency_key,
                    trace_parent: None,
                },
            )
            .await?;
            tx.commit().await?;
            println!(
                "{} ({})",
                inserted.id,
                if inserted.created {
                    "created"
                } else {
                    "duplicate"
                }
            );
            Ok(())
        }
        JobCommand::Cancel { id } => {
            match job_history::request_cancel(pool, &id).await? {
                None => println!("job {id} has already finished; nothing to cancel"),
                Some(2) | Some(-1) => println!(
                    "cancel requested for running job {id}; its worker stops it within seconds"
                ),
                Some(_) => println!("cancel requested for pending job {id}; it will not run"),
            }
            Ok(())
        }
        JobCommand::List {
            status,
            job,
            limit,
            json,
        } => {
            let status = status.as_deref().map(parse_status).transpose()?;
            let rows = job_history::recent(pool, status, job.as_deref(), limit).await?;
            if json {
                return output::json(&rows);
            }
            let table: Vec<Vec<String>> = rows
                .iter()
                .map(|r| {
                    vec![
                        r.id.clone(),
                        r.job_name.clone(),
                        status_name(r.status_id).to_string(),
                        r.priority.to_string(),
                        r.attempt.to_string(),
                        time(Some(r.created_date)),
                        r.last_error
                            .clone()
                            .unwrap_or_default()
                            .chars()
                            .take(60)
                            .collect(),
                    ]
                })
                .collect();
            output::table(
                &[
                    "ID",
                    "JOB",
                    "STATUS",
                    "PRIO",
                    "ATTEMPT",
                    "CREATED",
                    "LAST ERROR",
                ],
                &table,
            );
            Ok(())
        }
        JobCommand::Show { id, json } => {
            let r = job_history::by_id(pool, &id).await?;
            if json {
                return output::json(&r);
            }
            output::record(&[
                ("ID", r.id.clone()),
                ("Job", r.job_name.clone()),
                (
                    "Status",
                    format!("{} ({})", status_name(r.status_id), r.status_id),
                ),
                ("Config", r.config_id.clone().unwrap_or_default()),
                ("Priority", r.priority.to_string()),
                ("Payload", r.payload.clone().unwrap_or_default()),
                (
                    "Attempt",
                    format!(
                        "{}{}",
                        r.attempt,
                        r.max_attempts
                            .map(|m| format!(" of {m}"))
                            .unwrap_or_default()
                    ),
                ),
                ("Worker", r.worker_id.clone().unwrap_or_default()),
                (
                    "Created",
                    format!(
                        "{} by {}",
                        time(Some(r.created_date)),
                        r.created_by.clone().unwrap_or_default()
                    ),
                ),
                ("Not before", time(r.not_before)),
                ("Dispatched", time(r.dispatched_at)),
                ("Started", time(r.started_at)),
                ("Finished", time(r.finished_at)),
                ("Lease until", time(r.lease_until)),
                ("Last error", r.last_error.clone().unwrap_or_default()),
            ]);
            Ok(())
        }
        JobCommand::Wait { id, timeout } => {
            let deadline = Instant::now() + Duration::from_secs(timeout);
            loop {
                let r = job_history::by_id(pool, &id).await?;
                match r.status_id {
                    3 => {
                        println!("{id} COMPLETED");
                        return Ok(());
                    }
                    4 | 5 => anyhow::bail!(
                        "{id} {}: {}",
                        status_name(r.status_id),
                        r.last_error.unwrap_or_default()
                    ),
                    _ if Instant::now() > deadline => {
                        anyhow::bail!("{id} still {} after {timeout} s", status_name(r.status_id))
                    }
                    _ => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        }
    }
}

/// Publishes a submission with a private reply queue and waits for the answer.
async fn submit_by_queue(
    settings: &Settings,
    submission: &Submission,
) -> anyhow::Result<SubmissionReply> {
    let mut client = SubmitClient::connect(settings, "aegis-cli").await?;
    let reply = client.submit(submission, Duration::from_secs(30)).await?;
    client.close().await;
    Ok(reply)
}

//! Dispatch: claim due pending JobHistory rows in the database and publish one
//! job message per row, and republish dispatched rows no worker claimed.
//!
//! Claiming is transactional and safe with any number of coordinators:
//! candidate rows are locked with `FOR UPDATE SKIP LOCKED`, MaxInstances is
//! counted under a lock on the JobConfig row, and the dispatch marker
//! (`DispatchedAt`) is written in the same transaction. A row whose message could
//! not be published goes back to pending. At most `AEGIS_DISPATCH_WINDOW` rows
//! are dispatched-but-unclaimed at once, so the database (ordered by Priority,
//! then age) stays the real queue and a busy broker cannot invert priorities.

use std::collections::HashMap;
use std::sync::LazyLock;

use aegis_shared::broker::{self, JobMessage, Topology};
use aegis_shared::model::job::NOT_DISPATCHED;
use lapin::options::BasicPublishOptions;
use lapin::publisher_confirm::Confirmation;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};
use prometheus::IntCounterVec;
use sqlx::{Acquire, MySql, MySqlPool, QueryBuilder};
use tracing::Instrument;

pub static DISPATCHED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    aegis_shared::metrics::counter_vec(
        "aegis_jobs_dispatched_total",
        "Job messages published, by job",
        &["job"],
    )
});
pub static REPUBLISHED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    aegis_shared::metrics::counter_vec(
        "aegis_jobs_republished_total",
        "Dispatched rows published again because no worker claimed them in time",
        &["job"],
    )
});
pub static QUEUE_LAG: LazyLock<prometheus::HistogramVec> = LazyLock::new(|| {
    aegis_shared::metrics::histogram_vec(
        "aegis_dispatch_lag_seconds",
        "Time from a row becoming due to its dispatch",
        &["job"],
        vec![
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0,
        ],
    )
});

/// A row chosen for dispatch.
#[derive(Clone, Debug, sqlx::FromRow)]
struct Candidate {
    #[sqlx(rename = "ID")]
    id: String,
    #[sqlx(rename = "ConfigID")]
    config_id: Option<String>,
    #[sqlx(rename = "Priority")]
    priority: i32,
    #[sqlx(rename = "Struct")]
    job: String,
    #[sqlx(rename = "MaxInstances")]
    max_instances: i32,
    #[sqlx(rename = "TraceParent")]
    trace_parent: Option<String>,
    #[sqlx(rename = "LagMs")]
    lag_ms: i64,
}

/// What one dispatch pass did.
#[derive(Debug, Default)]
pub struct Pass {
    /// True when the batch was full, so another pass should follow at once.
    pub more: bool,
}

fn in_list<'a>(qb: &mut QueryBuilder<'a, MySql>, ids: impl IntoIterator<Item = &'a String>) {
    qb.push("(");
    let mut sep = qb.separated(", ");
    for id in ids {
        sep.push_bind(id);
    }
    qb.push(")");
}

/// One pass: claim up to `batch` due rows (within the window) and publish them.
pub async fn dispatch_due(
    pool: &MySqlPool,
    channel: &Channel,
    topology: &Topology,
    coordinator_id: &str,
    batch: u32,
    window: u32,
) -> anyhow::Result<Pass> {
    let (outstanding,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM JobHistory WHERE StatusId = 1 AND DispatchedAt IS NOT NULL",
    )
    .fetch_one(pool)
    .await?;
    let room = (window as i64 - outstanding).clamp(0, batch as i64);
    if room == 0 {
        return Ok(Pass::default());
    }
    // Candidates, read without locks, in queue order. Rows of jobs no worker
    // implements stay pending, undispatched (`job::NOT_DISPATCHED`).
    let not_dispatched = vec!["?"; NOT_DISPATCHED.len()].join(", ");
    let sql = format!(
        "SELECT jh.ID, jh.ConfigID, jh.Priority, j.Struct, COALESCE(jc.MaxInstances, 0) AS MaxInstances, jh.TraceParent,
                CAST(GREATEST(TIMESTAMPDIFF(MICROSECOND, COALESCE(jh.NotBefore, jh.CreatedDate), UTC_TIMESTAMP(3)), 0) / 1000 AS SIGNED) AS LagMs
           FROM JobHistory jh
           JOIN Job j ON j.Id = jh.JobId
           LEFT JOIN JobConfig jc ON jc.ID = jh.ConfigID
           LEFT JOIN Organization o ON o.ID = jc.OrganizationID
          WHERE jh.StatusId = 1 AND jh.DispatchedAt IS NULL
            AND (jh.NotBefore IS NULL OR jh.NotBefore <= UTC_TIMESTAMP(3))
            AND (jh.ConfigID IS NULL OR (jc.Active = 1 AND (o.ID IS NULL OR o.Active = 1)))
            AND j.Struct NOT IN ({not_dispatched})
          ORDER BY jh.Priority, jh.CreatedDate
          LIMIT ?"
    );
    let mut q = sqlx::query_as(&sql);
    for name in NOT_DISPATCHED {
        q = q.bind(name);
    }
    let candidates: Vec<Candidate> = q.bind(room).fetch_all(pool).await?;
    if candidates.is_empty() {
        return Ok(Pass::default());
    }
    let full = candidates.len() as i64 == room;

    let mut conn = pool.acquire().await?;
    // READ COMMITTED: counts below must see other coordinators' committed claims.
    sqlx::query("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
        .execute(&mut *conn)
        .await?;
    let mut tx = conn.begin().await?;

    let mut qb = QueryBuilder::<MySql>::new("SELECT ID FROM JobHistory WHERE ID IN ");
    in_list(&mut qb, candidates.iter().map(|c| &c.id));
    qb.push(" AND StatusId = 1 AND DispatchedAt IS NULL FOR UPDATE SKIP LOCKED");
    let locked: Vec<(String,)> = qb.build_query_as().fetch_all(&mut *tx).await?;
    let locked: std::collections::HashSet<String> = locked.into_iter().map(|(id,)| id).collect();

    // MaxInstances: lock the limited configs (in ID order: no deadlocks between
    // coordinators), then count their active rows.
    let mut limited: Vec<&String> = candidates
        .iter()
        .filter(|c| locked.contains(&c.id) && c.max_instances > 0)
        .filter_map(|c| c.config_id.as_ref())
        .collect();
    limited.sort();
    limited.dedup();
    let mut active: HashMap<String, i64> = HashMap::new();
    if !limited.is_empty() {
        let mut qb = QueryBuilder::<MySql>::new("SELECT ID FROM JobConfig WHERE ID IN ");
        in_list(&mut qb, limited.iter().copied());
        qb.push(" ORDER BY ID FOR UPDATE");
        qb.build().execute(&mut *tx).await?;
        let mut qb = QueryBuilder::<MySql>::new(
            "SELECT ConfigID, COUNT(*) FROM JobHistory WHERE ConfigID IN ",
        );
        in_list(&mut qb, limited.iter().copied());
        qb.push(
            " AND (StatusId = 2 OR (StatusId = 1 AND DispatchedAt IS NOT NULL) OR (StatusId = -1 AND LeaseUntil IS NOT NULL))
              GROUP BY ConfigID",
        );
        let counts: Vec<(String, i64)> = qb.build_query_as().fetch_all(&mut *tx).await?;
        active.extend(counts);
    }

    let mut admitted = Vec::new();
    let mut waiting = 0;
    for c in candidates.into_iter().filter(|c| locked.contains(&c.id)) {
        if c.max_instances > 0 {
            let key = c.config_id.clone().unwrap_or_default();
            let n = active.entry(key).or_insert(0);
            if *n >= c.max_instances as i64 {
                tracing::debug!(
                    "Job Runner: waiting to start [{}] as its config currently has {} running instances which is its maximum",
                    c.id,
                    n
                );
                waiting += 1;
                continue;
            }
            *n += 1;
        }
        admitted.push(c);
    }
    if admitted.is_empty() {
        tx.commit().await?;
        if waiting > 0 {
            tracing::debug!("Job Runner: {waiting} job(s) waiting for MaxInstances");
        }
        return Ok(Pass { more: false });
    }
    let mut qb = QueryBuilder::<MySql>::new(
        "UPDATE JobHistory SET DispatchedAt = UTC_TIMESTAMP(3), DispatchedBy = ",
    );
    qb.push_bind(coordinator_id).push(" WHERE ID IN ");
    in_list(&mut qb, admitted.iter().map(|c| &c.id));
    qb.build().execute(&mut *tx).await?;
    tx.commit().await?;

    let failed = publish(channel, topology, &admitted).await;
    for c in &admitted {
        QUEUE_LAG
            .with_label_values(&[&c.job])
            .observe(c.lag_ms as f64 / 1000.0);
    }
    if !failed.is_empty() {
        tracing::warn!(
            count = failed.len(),
            "Job Runner: could not publish job messages; returning the rows to pending"
        );
        let mut qb = QueryBuilder::<MySql>::new(
            "UPDATE JobHistory SET DispatchedAt = NULL, DispatchedBy = NULL WHERE ID IN ",
        );
        in_list(&mut qb, failed.iter());
        qb.push(" AND StatusId = 1 AND DispatchedBy = ")
            .push_bind(coordinator_id);
        qb.build().execute(pool).await?;
    }
    let dispatched = admitted.len() - failed.len();
    if dispatched > 0 {
        tracing::info!("Job Runner: [{dispatched}] jobs found for processing");
    }
    Ok(Pass {
        more: full && failed.is_empty(),
    })
}

/// Publishes one message per row with publisher confirms; returns the IDs that
/// were not confirmed.
async fn publish(channel: &Channel, topology: &Topology, rows: &[Candidate]) -> Vec<String> {
    let mut pending = Vec::with_capacity(rows.len());
    let mut failed = Vec::new();
    for c in rows {
        let span = tracing::info_span!("dispatch", job = %c.job, job_id = %c.id, otel.name = %format!("dispatch {}", c.job));
        broker::adopt_traceparent(&span, c.trace_parent.as_deref());
        let mut headers = FieldTable::default();
        broker::inject_trace(&span, &mut headers);
        let body = match serde_json::to_vec(&JobMessage {
            job_history_id: c.id.clone(),
            job: c.job.clone(),
        }) {
            Ok(b) => b,
            Err(_) => {
                failed.push(c.id.clone());
                continue;
            }
        };
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_priority(broker::amqp_priority(c.priority))
            .with_content_type("application/json".into())
            .with_message_id(c.id.clone().into())
            .with_headers(headers);
        let sent = channel
            .basic_publish(
                &topology.jobs_exchange,
                &c.job,
                BasicPublishOptions::default(),
                &body,
                props,
            )
            .instrument(span)
            .await;
        match sent {
            Ok(confirm) => pending.push((c, confirm)),
            Err(e) => {
                tracing::warn!(error = %e, job_id = %c.id, "Job Runner: publish failed");
                failed.push(c.id.clone());
            }
        }
    }
    for (c, confirm) in pending {
        match confirm.await {
            Ok(Confirmation::Ack(_)) | Ok(Confirmation::NotRequested) => {
                DISPATCHED.with_label_values(&[&c.job]).inc();
            }
            Ok(other) => {
                tracing::warn!(job_id = %c.id, "Job Runner: broker did not confirm the job message: {other:?}");
                failed.push(c.id.clone());
            }
            Err(e) => {
                tracing::warn!(error = %e, job_id = %c.id, "Job Runner: broker confirmation failed");
                failed.push(c.id.clone());
            }
        }
    }
    failed
}

/// Publishes again the rows dispatched longer than `timeout` ago that no worker
/// claimed (a message lost with a coordinator, or stuck behind a dead consumer).
pub async fn republish_stale(
    pool: &MySqlPool,
    channel: &Channel,
    topology: &Topology,
    coordinator_id: &str,
    timeout: std::time::Duration,
    batch: u32,
) -> anyhow::Result<usize> {
    let mut conn = pool.acquire().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
        .execute(&mut *conn)
        .await?;
    let mut tx = conn.begin().await?;
    let rows: Vec<Candidate> = sqlx::query_as(
        "SELECT jh.ID, jh.ConfigID, jh.Priority, j.Struct, 0 AS MaxInstances, jh.TraceParent, CAST(0 AS SIGNED) AS LagMs
           FROM JobHistory jh JOIN Job j ON j.Id = jh.JobId
          WHERE jh.StatusId = 1 AND jh.DispatchedAt < UTC_TIMESTAMP(3) - INTERVAL ? MICROSECOND
          ORDER BY jh.Priority, jh.CreatedDate
          LIMIT ? FOR UPDATE SKIP LOCKED",
    )
    .bind(timeout.as_micros() as u64)
    .bind(batch)
    .fetch_all(&mut *tx)
    .await?;
    if rows.is_empty() {
        tx.commit().await?;
        return Ok(0);
    }
    let mut qb = QueryBuilder::<MySql>::new(
        "UPDATE JobHistory SET DispatchedAt = UTC_TIMESTAMP(3), DispatchedBy = ",
    );
    qb.push_bind(coordinator_id).push(" WHERE ID IN ");
    in_list(&mut qb, rows.iter().map(|c| &c.id));
    qb.build().execute(&mut *tx).await?;
    tx.commit().await?;
    for c in &rows {
        REPUBLISHED.with_label_values(&[&c.job]).inc();
    }
    tracing::warn!(
        count = rows.len(),
        "Job Runner: republishing dispatched jobs that no worker claimed within {timeout:?}"
    );
    let failed = publish(channel, topology, &rows).await;
    Ok(rows.len() - failed.len())
}

//! Benchmark of the job runner fleet: 1 coordinator + 2 workers on this machine,
//! real MariaDB and RabbitMQ, DiagnosticJobs that do no work.
//!
//! Prints a markdown table: end-to-end throughput, SQL-insert-to-start and
//! queue-submit-to-start latency (p50/p99), cancel latency, and idle RSS of each
//! binary. Reproduce (release binaries):
//!
//! ```sh
//! cargo build --release --workspace --bins && cargo run --release -p aegis-tests --bin bench_fleet
//! ```

use std::time::{Duration, Instant};

use aegis_shared::broker::SubmitClient;
use aegis_tests::eventually;
use aegis_tests::fleet::Fleet;

const THROUGHPUT_JOBS: usize = 20_000;
const LATENCY_SAMPLES: usize = 200;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn rss_mb(pid: i32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).map(|l| {
                l.split_whitespace()
                    .nth(1)
                    .unwrap_or("0")
                    .parse::<f64>()
                    .unwrap_or(0.0)
            })
        })
        .unwrap_or(0.0)
        / 1024.0
}

async fn completed(f: &Fleet) -> anyhow::Result<i64> {
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM JobHistory WHERE StatusId = 3")
        .fetch_one(f.pool())
        .await?;
    Ok(n)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut f = Fleet::new().await?;
    // The shipped defaults, except a short idle line so nothing waits on it.
    for k in [
        "AEGIS_POLL_INTERVAL",
        "AEGIS_SCHEDULE_INTERVAL",
        "AEGIS_HEARTBEAT_INTERVAL",
        "AEGIS_LEASE",
        "AEGIS_DISPATCH_TIMEOUT",
        "AEGIS_SHUTDOWN_GRACE",
    ] {
        f.env.remove(k);
    }
    f.env.insert("RUST_LOG".into(), "warn".into());
    let coordinator = f.coordinator()?;
    let w1 = f.worker()?;
    let w2 = f.worker()?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle = [
        ("aegis-coordinator", rss_mb(f.processes[coordinator].pid())),
        (
            "aegis-worker",
            rss_mb(f.processes[w1].pid()).max(rss_mb(f.processes[w2].pid())),
        ),
    ];

    // Throughput: a backlog inserted at once, until every row is completed.
    let job_id: (i32,) = sqlx::query_as("SELECT Id FROM Job WHERE Struct = 'DiagnosticJob'")
        .fetch_one(f.pool())
        .await?;
    let mut tx = f.pool().begin().await?;
    for chunk in 0..THROUGHPUT_JOBS / 1000 {
        let values: Vec<String> = (0..1000)
            .map(|i| {
                format!(
                    "('{}', {}, 1, {}, '{{}}')",
                    uuid::Uuid::new_v4(),
                    job_id.0,
                    (chunk + i) % 6
                )
            })
            .collect();
        sqlx::query(&format!(
            "INSERT INTO JobHistory (ID, JobId, StatusId, Priority, Payload) VALUES {}",
            values.join(",")
        ))
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    let start = Instant::now();
    eventually(
        "the backlog to complete",
        Duration::from_secs(600),
        || async { Ok((completed(&f).await? as usize >= THROUGHPUT_JOBS).then_some(())) },
    )
    .await?;
    let throughput = THROUGHPUT_JOBS as f64 / start.elapsed().as_secs_f64();

    // SQL insert → started, one row at a time on an idle fleet.
    let mut sql_latency = Vec::new();
    for _ in 0..LATENCY_SAMPLES / 4 {
        let id = f.insert_diagnostic("{}", 0).await?;
        f.wait_status(&id, 3, Duration::from_secs(30)).await?;
        let (ms,): (f64,) = sqlx::query_as("SELECT CAST(TIMESTAMPDIFF(MICROSECOND, CreatedDate, StartedAt) AS DOUBLE) / 1000 FROM JobHistory WHERE ID = ?")
            .bind(&id)
            .fetch_one(f.pool())
            .await?;
        sql_latency.push(ms);
        tokio::time::sleep(Duration::from_millis(rand_ms())).await;
    }

    // Queue submit → started.
    let mut client = SubmitClient::connect(&f.settings()?, "bench").await?;
    let mut queue_latency = Vec::new();
    for _ in 0..LATENCY_SAMPLES {
        let sent = chrono::Utc::now();
        let reply = client
            .submit_raw(br#"{"job":"DiagnosticJob"}"#, Duration::from_secs(30))
            .await?;
        let id = reply
            .id
            .ok_or_else(|| anyhow::anyhow!("rejected: {:?}", reply.error))?;
        f.wait_status(&id, 3, Duration::from_secs(30)).await?;
        let (started,): (chrono::DateTime<chrono::Utc>,) =
            sqlx::query_as("SELECT StartedAt FROM JobHistory WHERE ID = ?")
                .bind(&id)
                .fetch_one(f.pool())
                .await?;
        queue_latency.push((started - sent).num_microseconds().unwrap_or(0) as f64 / 1000.0);
    }

    // Cancel latency of a running job.
    let mut cancel_latency = Vec::new();
    for _ in 0..10 {
        let id = f.insert_diagnostic(r#"{"sleep_ms": 600000}"#, 0).await?;
        f.wait_status(&id, 2, Duration::from_secs(30)).await?;
        let asked = Instant::now();
        sqlx::query("UPDATE JobHistory SET StatusId = -1 WHERE ID = ?")
            .bind(&id)
            .execute(f.pool())
            .await?;
        f.wait_status(&id, 5, Duration::from_secs(30)).await?;
        cancel_latency.push(asked.elapsed().as_secs_f64() * 1000.0);
    }

    for v in [&mut sql_latency, &mut queue_latency, &mut cancel_latency] {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    }
    println!("| measure | result | goal |");
    println!("|---|---|---|");
    println!("| throughput, 1 coordinator + 2 workers, {THROUGHPUT_JOBS} DiagnosticJobs | {throughput:.0} jobs/s | ≥ 1,000 jobs/s |");
    println!(
        "| SQL INSERT → started (poll interval 1 s), p50 / p99 | {:.0} ms / {:.0} ms | a few seconds |",
        percentile(&sql_latency, 0.5),
        percentile(&sql_latency, 0.99)
    );
    println!(
        "| queue submit → started, p50 / p99 | {:.1} ms / {:.1} ms | p99 ≤ 100 ms |",
        percentile(&queue_latency, 0.5),
        percentile(&queue_latency, 0.99)
    );
    println!(
        "| cancel of a running job → CANCELED, p50 / max | {:.0} ms / {:.0} ms | ≤ 2 s |",
        percentile(&cancel_latency, 0.5),
        cancel_latency.last().copied().unwrap_or(f64::NAN)
    );
    for (name, mb) in idle {
        println!("| idle RSS of {name} | {mb:.1} MB | ≤ 40 MB |");
    }
    client.close().await;
    Ok(())
}

/// A spread of think times between samples so inserts land at random points of the poll cycle.
fn rand_ms() -> u64 {
    (uuid::Uuid::new_v4().as_u128() % 900) as u64 + 50
}

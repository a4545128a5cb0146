//! Benchmark of TicketingJob against the in-process JIRA simulator: tickets
//! created per second by a fleet of 1 coordinator + 2 workers (one run per
//! asset group, so both workers work), first with no limit on the JIRA
//! source, then with Delay 50 ms / Concurrency 4 (a limit of 20 requests/s),
//! where the achieved request rate is reported as a share of the limit.
//! Rates are measured from the simulator's journal: first JIRA request of the
//! runs to the end of the last one.
//!
//! Reproduce (MariaDB, RabbitMQ and Redis on loopback; about 1 minute):
//!
//! ```text
//! cargo build --release --workspace --bins && cargo run --release -p aegis-tests --bin bench_ticketing
//! ```
//!
//! `BENCH_FINDINGS` (default 4000) and `BENCH_LIMITED_FINDINGS` (default 400)
//! set the estate sizes.

use std::time::{Duration, Instant};

use aegis_sim::{EstateSpec, SimConfig, Simulator, Vendor};
use aegis_tests::estate::{start_job, Estate, Host, Vuln};
use aegis_tests::fleet::Fleet;
use serde_json::json;

struct Result {
    findings: usize,
    tickets: usize,
    requests: usize,
    wall: Duration,
    jira_span: Duration,
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Seeds `findings` findings over two groups, runs one TicketingJob per group
/// and waits for both.
async fn scenario(
    code: &str,
    findings: usize,
    limits: (u64, u32, u32),
    parallelism: usize,
) -> anyhow::Result<Result> {
    let sim = Simulator::start(SimConfig {
        estate: EstateSpec {
            hosts: 1,
            detections_per_host: 1,
            seed: 1,
        },
        ..Default::default()
    })
    .await?;
    let mut f = Fleet::new().await?;
    f.env.insert("RUST_LOG".into(), "warn".into());
    let pool = f.pool().clone();
    let e = Estate::create(&pool, code, &sim.source_configs()["jira"], limits).await?;
    let per_host = 10;
    let mut vulns = Vec::new();
    for v in 0..per_host {
        vulns.push(
            e.vuln(
                &pool,
                &Vuln::new(
                    &format!("{}", 30000 + v),
                    &format!("Benchmark finding {v}"),
                    7.5,
                ),
            )
            .await?,
        );
    }
    let hosts = findings.div_ceil(per_host);
    for g in ["g1", "g2"] {
        e.asset_group(&pool, g).await?;
    }
    // Detections in multi-row inserts: seeding is not what is measured.
    for h in 0..hosts {
        let asset = format!("{}", 100_000 + h);
        let group = if h % 2 == 0 { "g1" } else { "g2" };
        e.device(
            &pool,
            &Host::new(
                &asset,
                &format!("10.{}.{}.{}", h / 62500, (h / 250) % 250, h % 250 + 1),
                &format!("host{h}"),
                "Linux",
                group,
            ),
        )
        .await?;
        let mut sql = String::from(
            "INSERT INTO Detection (ID, OrganizationID, SourceID, DeviceID, VulnerabilityID, LastFound, Port, Protocol, DetectionStatusId) VALUES ",
        );
        let rows: Vec<String> = vulns
            .iter()
            .map(|_| "(UUID(), ?, ?, ?, ?, UTC_TIMESTAMP(3), 443, 'tcp', 2)".to_string())
            .collect();
        sql.push_str(&rows.join(","));
        let mut q = sqlx::query(&sql);
        for v in &vulns {
            q = q
                .bind(&e.org_id)
                .bind(&e.scanner_source_id)
                .bind(&asset)
                .bind(v);
        }
        q.execute(&pool).await?;
    }
    let findings = hosts * per_host;
    let config = e
        .job_config(&pool, "TicketingJob", &e.scanner_sc, &e.jira_sc, json!({}))
        .await?;
    f.coordinator()?;
    f.worker()?;
    f.worker()?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    sim.clear_request_log();
    let start = Instant::now();
    let runs = [
        start_job(
            &pool,
            &config,
            &json!({"groups": ["g1"], "parallelism": parallelism}),
        )
        .await?,
        start_job(
            &pool,
            &config,
            &json!({"groups": ["g2"], "parallelism": parallelism}),
        )
        .await?,
    ];
    for id in &runs {
        f.wait_status(id, 3, Duration::from_secs(240)).await?;
    }
    let wall = start.elapsed();
    let log: Vec<_> = sim
        .request_log()
        .into_iter()
        .filter(|r| r.vendor == Vendor::Jira)
        .collect();
    let first = log.iter().map(|r| r.started_us).min().unwrap_or(0);
    let last = log.iter().filter_map(|r| r.ended_us).max().unwrap_or(first);
    let tickets = log
        .iter()
        .filter(|r| r.method == "POST" && r.path == "/rest/api/2/issue" && r.status == Some(201))
        .count();
    let result = Result {
        findings,
        tickets,
        requests: log.len(),
        wall,
        jira_span: Duration::from_micros(last - first),
    };
    sim.shutdown().await;
    Ok(result)
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{cpus} × {model}")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n = env_usize("BENCH_FINDINGS", 4000);
    let n_limited = env_usize("BENCH_LIMITED_FINDINGS", 400);
    eprintln!("machine: {}", machine());
    eprintln!("no limit: {n} findings …");
    let free = scenario("BENCHFREE", n, (0, 64, 3), 16).await?;
    eprintln!("limited (Delay 50 ms, Concurrency 4): {n_limited} findings …");
    let limited = scenario("BENCHLIM", n_limited, (50_000_000, 4, 3), 8).await?;

    let rate = |count: usize, d: Duration| count as f64 / d.as_secs_f64().max(1e-9);
    println!("| scenario | findings | tickets created | JIRA requests | wall time | tickets/s (JIRA span) | tickets/s (wall) | requests/s | share of limit | goal |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| no limit, 2 workers | {} | {} | {} | {:.1} s | {:.0} | {:.0} | {:.0} | – | ≥ 100 tickets/s |",
        free.findings,
        free.tickets,
        free.requests,
        free.wall.as_secs_f64(),
        rate(free.tickets, free.jira_span),
        rate(free.tickets, free.wall),
        rate(free.requests, free.jira_span),
    );
    let limit = 20.0;
    println!(
        "| Delay 50 ms, Concurrency 4, 2 workers | {} | {} | {} | {:.1} s | {:.1} | {:.1} | {:.1} | {:.0}% | ≥ 90% |",
        limited.findings,
        limited.tickets,
        limited.requests,
        limited.wall.as_secs_f64(),
        rate(limited.tickets, limited.jira_span),
        rate(limited.tickets, limited.wall),
        rate(limited.requests, limited.jira_span),
        100.0 * rate(limited.requests, limited.jira_span) / limit,
    );
    anyhow::ensure!(
        free.tickets == free.findings && limited.tickets == limited.findings,
        "not every finding got its ticket"
    );
    Ok(())
}

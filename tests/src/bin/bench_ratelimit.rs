//! Benchmark of the fleet-wide rate limiter: for a grid of (Delay, Concurrency)
//! and 1, 3 and 6 `limit_probe` processes (3 tasks each) against a local
//! recording server, prints a markdown table of the achieved rate against the
//! limit, spacing and in-flight violations, the acquire overhead, and what a
//! per-process limiter like the original's would have allowed (N × the limit).
//!
//! Reproduce (Redis on loopback; about 1 minute):
//!
//! ```text
//! export CARGO_TARGET_DIR=/work/cache/target-limit
//! cargo build -p aegis-tests --bins && $CARGO_TARGET_DIR/debug/bench_ratelimit
//! ```
//!
//! `AEGIS_TEST_REDIS_URL` overrides the Redis URL; `BENCH_SECONDS` the length
//! of each cell (default 3).

use std::time::{Duration, Instant};

use aegis_tests::ratelimit_support::{max_in_flight, spacing_violations, start_rate, ProbeArgs, ProbeProcess, Recorder};
use aegis_tests::{binary, unique_name};

struct Cell {
    delay: Duration,
    concurrency: u32,
    /// How long the server takes to answer.
    service: Duration,
}

impl Cell {
    /// Requests per second the limit allows for one limiter.
    fn limit(&self) -> f64 {
        let by_concurrency = f64::from(self.concurrency) / self.service.as_secs_f64();
        if self.delay.is_zero() {
            by_concurrency
        } else {
            (1.0 / self.delay.as_secs_f64()).min(by_concurrency)
        }
    }
}

fn f(v: &serde_json::Value, path: &[&str]) -> f64 {
    let mut v = v;
    for p in path {
        v = &v[*p];
    }
    v.as_f64().unwrap_or(0.0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let redis_url = std::env::var("AEGIS_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into());
    let seconds: u64 = std::env::var("BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    let probe = binary("limit_probe");
    anyhow::ensure!(probe.exists(), "{} is missing: run `cargo build -p aegis-tests --bins` first", probe.display());

    // One Redis round trip, for comparison with the acquire overhead.
    let client = redis::Client::open(redis_url.as_str())?;
    let mut con = client.get_multiplexed_async_connection().await?;
    let mut pings = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        let _: String = redis::cmd("PING").query_async(&mut con).await?;
        pings.push(t.elapsed());
    }
    let ping = aegis_shared::source_http::Summary::of(&pings);

    let grid = [
        Cell { delay: Duration::from_millis(20), concurrency: 4, service: Duration::from_millis(2) },
        Cell { delay: Duration::from_millis(5), concurrency: 8, service: Duration::from_millis(2) },
        Cell { delay: Duration::from_millis(10), concurrency: 1, service: Duration::from_millis(2) },
        Cell { delay: Duration::ZERO, concurrency: 2, service: Duration::from_millis(20) },
    ];
    let started = Instant::now();
    println!("Redis PING round trip: p50 {:.3} ms, p99 {:.3} ms\n", ping.p50_ms, ping.p99_ms);
    println!("| Delay | Concurrency | Processes × tasks | Limit (req/s) | Achieved (req/s) | % of limit | Spacing violations | Max in flight | Acquire overhead p50 / p99 (ms) | Redis calls per acquire (max) | Per-process limiter would allow (req/s) |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for cell in &grid {
        for processes in [1usize, 3, 6] {
            let rec = Recorder::start().await?;
            let args = ProbeArgs {
                redis_url: redis_url.clone(),
                namespace: unique_name("rlbench"),
                database: None,
                fixed: Some((rec.base_url(), u64::try_from(cell.delay.as_micros())?, cell.concurrency)),
                tasks: 3,
                duration: Duration::from_secs(seconds),
                path: format!("/work?ms={}", cell.service.as_millis()),
                lease_ttl: Duration::from_secs(30),
            };
            let mut running = Vec::new();
            for i in 0..processes {
                running.push(ProbeProcess::spawn(&probe, &format!("p{i}"), &args).await?);
            }
            let mut summaries = Vec::new();
            for p in running {
                summaries.push(p.finish(Duration::from_secs(seconds + 30)).await?);
            }
            let hits = rec.hits();
            let violations = if cell.delay.is_zero() {
                0
            } else {
                spacing_violations(&hits, cell.delay.saturating_sub(Duration::from_millis(2))).len()
            };
            let in_flight = max_in_flight(&hits);
            let rate = start_rate(&hits);
            let limit = cell.limit();
            let mut p50s: Vec<f64> = summaries.iter().map(|s| f(s, &["acquire_redis_time", "p50_ms"])).collect();
            p50s.sort_by(f64::total_cmp);
            let p50 = p50s.get(p50s.len() / 2).copied().unwrap_or(0.0);
            let p99 = summaries.iter().map(|s| f(s, &["acquire_redis_time", "p99_ms"])).fold(0.0, f64::max);
            let calls = summaries.iter().map(|s| f(s, &["max_redis_calls"])).fold(0.0, f64::max);
            let delay = if cell.delay.is_zero() { "0".to_string() } else { format!("{} ms", cell.delay.as_millis()) };
            println!(
                "| {delay} | {} | {processes} × 3 | {limit:.0} | {rate:.1} | {:.1} % | {violations} | {in_flight} (limit {}) | {p50:.2} / {p99:.2} | {calls:.0} | {:.0} |",
                cell.concurrency,
                100.0 * rate / limit,
                cell.concurrency,
                limit * processes as f64,
            );
        }
    }
    println!("\n{} cells in {:.0} s", grid.len() * 3, started.elapsed().as_secs_f64());
    Ok(())
}

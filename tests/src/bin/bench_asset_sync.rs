//! AssetSyncJob throughput: a first sync, a no-change re-sync (incremental
//! where the scanner allows it) and a forced full no-change re-sync of a
//! generated estate from the Qualys and the Nexpose simulators into MariaDB,
//! through a real coordinator and worker, with the worker's peak RSS.
//!
//! ```sh
//! cargo build --release --workspace --bins
//! cargo run --release -p aegis-tests --bin bench_asset_sync
//! # sizes: BENCH_HOSTS (50000), BENCH_DETECTIONS (20), BENCH_NEXPOSE_HOSTS (10000)
//! ```
//!
//! Prints a Markdown table (the one in docs/BENCHMARKS.md).

use std::time::{Duration, Instant};

use aegis_shared::model::job_config;
use aegis_shared::model::source_config::{self, NewSourceConfig, Vendor};
use aegis_sim::{EstateSpec, SimConfig, Simulator};
use aegis_tests::fleet::Fleet;
use serde_json::json;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Peak resident set size of a process (VmHWM), in MB.
fn peak_rss_mb(pid: i32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(str::to_string)
        })
        .and_then(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

async fn setup(
    f: &Fleet,
    code: &str,
    vendor: Vendor,
    address: &str,
    groups: Vec<String>,
) -> anyhow::Result<(String, String, String)> {
    let mut tx = f.pool().begin().await?;
    let org = aegis_tests::setup::organization(&mut tx, code).await?;
    let (sc, _) = source_config::create(
        &mut tx,
        &NewSourceConfig {
            concurrency: 8,
            retries: 2,
            created_by: "bench".into(),
            ..aegis_tests::setup::source(code, vendor, address)
        },
        None,
    )
    .await?;
    let jc = |name: &str, payload: serde_json::Value| {
        aegis_tests::setup::job(name, &sc.id, &sc.id, payload)
    };
    let vuln = job_config::create(&mut tx, &org.id, &jc("VulnSyncJob", json!({})), "bench").await?;
    let asset = job_config::create(
        &mut tx,
        &org.id,
        &jc("AssetSyncJob", json!({"groups": groups})),
        "bench",
    )
    .await?;
    tx.commit().await?;
    Ok((org.id, vuln, asset))
}

/// Runs a job config once; returns its wall time (insert to COMPLETED).
async fn run(f: &Fleet, config: &str) -> anyhow::Result<Duration> {
    run_with(f, config, "{}").await
}

/// Runs a job config once with `extra` merged into its payload (MariaDB's JSON_MERGE_PATCH).
async fn run_with(f: &Fleet, config: &str, extra: &str) -> anyhow::Result<Duration> {
    let id = uuid::Uuid::new_v4().to_string();
    let started = Instant::now();
    sqlx::query("INSERT INTO JobHistory (ID, JobId, ConfigID, StatusId, Priority, Payload) SELECT ?, JobId, ID, 1, 0, JSON_MERGE_PATCH(Payload, ?) FROM JobConfig WHERE ID = ?")
        .bind(&id)
        .bind(extra)
        .bind(config)
        .execute(f.pool())
        .await?;
    f.wait_status(&id, 3, Duration::from_secs(900)).await?;
    Ok(started.elapsed())
}

async fn count(f: &Fleet, org: &str) -> anyhow::Result<i64> {
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM Detection WHERE OrganizationID = ?")
        .bind(org)
        .fetch_one(f.pool())
        .await?;
    Ok(n)
}

struct Row {
    scanner: &'static str,
    hosts: usize,
    detections: i64,
    first: Duration,
    resync: Duration,
    full_resync: Duration,
    rss: f64,
}

async fn bench(vendor: Vendor, hosts: usize, per_host: usize) -> anyhow::Result<Row> {
    let mut cfg = SimConfig {
        estate: EstateSpec {
            hosts,
            detections_per_host: per_host,
            seed: 11,
        },
        ..Default::default()
    };
    cfg.qualys.concurrency_limit = 8;
    let sim = Simulator::start(cfg).await?;
    let mut f = Fleet::new().await?;
    f.env
        .insert("RUST_LOG".into(), "info,sqlx=warn,lapin=warn".into());
    f.coordinator()?;
    let worker = f.worker()?;
    let groups: Vec<String> = (1..=hosts.div_ceil(1000)).map(|g| g.to_string()).collect();
    let (address, name) = match vendor {
        Vendor::Nexpose => (sim.nexpose_url(), "Nexpose"),
        _ => (sim.qualys_url(), "Qualys"),
    };
    let (org, vuln, asset) = setup(&f, "BENCH", vendor, &address, groups).await?;
    run(&f, &vuln).await?;
    eprintln!("{name}: knowledge base synced; first AssetSync of {hosts} hosts x {per_host}…");
    let first = run(&f, &asset).await?;
    let detections = count(&f, &org).await?;
    eprintln!("{name}: first sync {detections} detections in {first:?}; re-sync…");
    let resync = run(&f, &asset).await?;
    eprintln!("{name}: re-sync in {resync:?}; forced full re-sync…");
    let full_resync = run_with(&f, &asset, r#"{"full_sync": true}"#).await?;
    let rss = peak_rss_mb(f.processes[worker].pid());
    anyhow::ensure!(
        count(&f, &org).await? == detections,
        "the re-syncs changed the row count"
    );
    let progress = f.processes[worker]
        .output()
        .lines()
        .filter(|l| l.contains("Synced "))
        .count();
    eprintln!("{name}: full re-sync in {full_resync:?}; worker peak RSS {rss:.0} MB; {progress} progress lines logged");
    drop(f);
    sim.shutdown().await;
    Ok(Row {
        scanner: name,
        hosts,
        detections,
        first,
        resync,
        full_resync,
        rss,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let hosts = env_usize("BENCH_HOSTS", 50_000);
    let per_host = env_usize("BENCH_DETECTIONS", 20);
    let nexpose_hosts = env_usize("BENCH_NEXPOSE_HOSTS", 10_000);
    let mut rows = vec![bench(Vendor::Qualys, hosts, per_host).await?];
    if nexpose_hosts > 0 {
        rows.push(bench(Vendor::Nexpose, nexpose_hosts, per_host).await?);
    }
    println!("| scanner | hosts × detections | detections | first sync | detections/s | no-change re-sync | speed-up | forced full re-sync | speed-up | worker peak RSS |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} × {} | {} | {:.1} s | {:.0} | {:.1} s | {:.1}× | {:.1} s | {:.1}× | {:.0} MB |",
            r.scanner,
            r.hosts,
            per_host,
            r.detections,
            r.first.as_secs_f64(),
            r.detections as f64 / r.first.as_secs_f64(),
            r.resync.as_secs_f64(),
            r.first.as_secs_f64() / r.resync.as_secs_f64(),
            r.full_resync.as_secs_f64(),
            r.first.as_secs_f64() / r.full_resync.as_secs_f64(),
            r.rss
        );
    }
    Ok(())
}

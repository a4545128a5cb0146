//! One "worker" of the multi-process rate-limit tests and benchmark: runs
//! `--tasks` concurrent loops of GETs through a real `SourceClient` (so through
//! the fleet-wide limiter) for `--duration-ms`, then prints a JSON summary.
//!
//! It prints `ready` once the client is built, then the summary as the last
//! line. Limits come from a SourceConfig row (`--database URL --source-config
//! ID`, re-read as operators change them) or are fixed (`--address URL
//! --delay-us N --concurrency N`).

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aegis_shared::model::source_config::{self, SourceConfig, SourceLimits};
use aegis_shared::ratelimit::{Limiter, LimiterOptions, LimitsCache};
use aegis_shared::source_http::{RequestSpec, SourceClient, Summary};
use anyhow::Context;
use reqwest::header::{HeaderName, HeaderValue};

#[derive(Default)]
struct Totals {
    sent: u64,
    ok: u64,
    errors: u64,
    local: u64,
    waits: Vec<Duration>,
    /// (request number, wall-clock µs when handed to the connection).
    sent_at: Vec<(u64, u128)>,
    redis: Vec<Duration>,
    max_calls: u32,
}

fn arg<'a>(args: &'a HashMap<String, String>, name: &str) -> anyhow::Result<&'a str> {
    args.get(name).map(String::as_str).with_context(|| format!("--{name} is required"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let args: HashMap<String, String> = raw
        .chunks(2)
        .filter_map(|c| Some((c.first()?.trim_start_matches("--").to_string(), c.get(1)?.clone())))
        .collect();
    let name = arg(&args, "name")?.to_string();
    // Warnings (fallback to the local limit, lost leases) go to stderr.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")))
        .init();
    let tasks: u32 = arg(&args, "tasks")?.parse().context("--tasks")?;
    let duration = Duration::from_millis(arg(&args, "duration-ms")?.parse().context("--duration-ms")?);
    let full_path = arg(&args, "path")?.to_string();
    let lease_ttl = Duration::from_millis(arg(&args, "lease-ttl-ms")?.parse().context("--lease-ttl-ms")?);

    let options = LimiterOptions { lease_ttl, ..LimiterOptions::from_env()? };
    let limiter = Limiter::with_options(arg(&args, "redis")?, arg(&args, "namespace")?, options)?;

    let (sc, limits) = if let Some(db) = args.get("database") {
        let pool = aegis_shared::db::connect(db, 2).await?;
        let sc = source_config::by_id(&pool, arg(&args, "source-config")?).await?;
        (sc, LimitsCache::new(pool))
    } else {
        let id = format!("bench-{}", arg(&args, "namespace")?);
        let sc = SourceConfig {
            id: id.clone(),
            source: Some("JIRA".into()),
            source_id: None,
            organization_id: None,
            address: Some(arg(&args, "address")?.to_string()),
            port: None,
            auth_info: r#"{"Username":"probe","Password":"probe-password"}"#.into(),
            payload: "{}".into(),
            active: true,
        };
        let fixed = SourceLimits {
            delay: Duration::from_micros(arg(&args, "delay-us")?.parse().context("--delay-us")?),
            concurrency: Some(arg(&args, "concurrency")?.parse().context("--concurrency")?),
            retries: 0,
            limit_key: id.clone(),
        };
        (sc, LimitsCache::fixed([(id, fixed)]))
    };
    let client = SourceClient::new(&sc, None, limiter, limits)?;

    let (path, query) = match full_path.split_once('?') {
        Some((p, q)) => (p.to_string(), q.split('&').filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect()),
        None => (full_path.clone(), Vec::new()),
    };
    let probe_id = HeaderValue::from_str(&name).context("--name must be a header value")?;

    println!("ready");
    std::io::stdout().flush()?;

    let totals = Arc::new(Mutex::new(Totals::default()));
    let deadline = Instant::now() + duration;
    let mut handles = Vec::new();
    let seq = Arc::new(std::sync::atomic::AtomicU64::new(0));
    for _ in 0..tasks {
        let client = client.clone();
        let totals = Arc::clone(&totals);
        let mut spec = RequestSpec::get("/probe", path.clone()).header(HeaderName::from_static("x-probe-id"), probe_id.clone());
        spec.query = query.clone();
        let seq = Arc::clone(&seq);
        handles.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let n = seq.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut spec = spec.clone();
                spec.headers.insert(HeaderName::from_static("x-request-seq"), HeaderValue::from(n));
                let result = client.send(spec).await;
                let lock = || totals.lock().unwrap_or_else(|p| p.into_inner());
                match result {
                    Ok(r) => {
                        {
                            let mut t = lock();
                            t.sent += 1;
                            t.waits.push(r.limiter_wait());
                            let at = r.sent_at().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros()).unwrap_or(0);
                            t.sent_at.push((n, at));
                            if r.permit_is_global() {
                                t.redis.push(r.limiter_redis_time());
                                t.max_calls = t.max_calls.max(r.limiter_redis_calls());
                            } else {
                                t.local += 1;
                            }
                        }
                        let success = r.status().is_success();
                        let body = r.bytes().await;
                        let mut t = lock();
                        if success && body.is_ok() {
                            t.ok += 1;
                        } else {
                            t.errors += 1;
                        }
                    }
                    Err(e) => {
                        let mut t = lock();
                        t.sent += 1;
                        t.errors += 1;
                        eprintln!("limit_probe {}: {e}", std::process::id());
                    }
                }
            }
        }));
    }
    for h in handles {
        h.await?;
    }
    let t = totals.lock().unwrap_or_else(|p| p.into_inner());
    let summary = serde_json::json!({
        "name": name,
        "sent": t.sent,
        "ok": t.ok,
        "errors": t.errors,
        "local_permits": t.local,
        "limiter_wait": Summary::of(&t.waits),
        "acquire_redis_time": Summary::of(&t.redis),
        "max_redis_calls": t.max_calls,
        "sent_at_us": t.sent_at,
    });
    println!("{summary}");
    Ok(())
}

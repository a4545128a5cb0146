//! Shared by the rate-limit tests and `bench_ratelimit`: a local HTTP server
//! that records when every request started and how many were in flight, the
//! SourceConfig rows the limit probes read, and `limit_probe` processes.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use sqlx::MySqlPool;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// One request as the server saw it.
#[derive(Clone, Debug)]
pub struct Hit {
    /// Since the recorder started.
    pub start: Duration,
    pub end: Option<Duration>,
    /// Requests in flight at this one's start, itself included.
    pub in_flight: u32,
    pub path: String,
    /// The `x-probe-id` header: which process sent it.
    pub probe: String,
    /// The `x-request-seq` header: the request's number within its process.
    pub seq: u64,
    pub status: u16,
    pub authorization: Option<String>,
    pub body: Vec<u8>,
}

struct Shared {
    epoch: Instant,
    hits: Mutex<Vec<Hit>>,
    in_flight: AtomicU32,
    /// Answers queued for the next requests (status, Retry-After seconds).
    scripted: Mutex<Vec<(u16, Option<u64>)>>,
    holds_released: tokio::sync::watch::Sender<bool>,
}

/// A recording HTTP server on loopback.
///
/// Paths: `/hold` answers only after [`Recorder::release_holds`] (or 120 s);
/// any path with `?ms=N` answers after N ms; otherwise at once with `{"ok":true}`.
#[derive(Clone)]
pub struct Recorder {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

#[derive(Deserialize)]
struct Params {
    ms: Option<u64>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Recorder {
    pub async fn start() -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (tx, _rx) = tokio::sync::watch::channel(false);
        let shared = Arc::new(Shared {
            epoch: Instant::now(),
            hits: Mutex::new(Vec::new()),
            in_flight: AtomicU32::new(0),
            scripted: Mutex::new(Vec::new()),
            holds_released: tx,
        });
        let app = axum::Router::new().fallback(handle).with_state(Arc::clone(&shared));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Recorder { addr, shared })
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Time since the recorder started, on the clock of [`Hit::start`].
    pub fn now(&self) -> Duration {
        self.shared.epoch.elapsed()
    }

    pub fn hits(&self) -> Vec<Hit> {
        let mut h = lock(&self.shared.hits).clone();
        h.sort_by_key(|h| h.start);
        h
    }

    pub fn in_flight(&self) -> u32 {
        self.shared.in_flight.load(Ordering::SeqCst)
    }

    /// The next request is answered with `status` (and `Retry-After` if given).
    pub fn script(&self, status: u16, retry_after_secs: Option<u64>) {
        lock(&self.shared.scripted).push((status, retry_after_secs));
    }

    pub fn release_holds(&self) {
        let _ = self.shared.holds_released.send(true);
    }
}

async fn handle(State(s): State<Arc<Shared>>, uri: Uri, Query(p): Query<Params>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let start = s.epoch.elapsed();
    let in_flight = s.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    let scripted = {
        let mut q = lock(&s.scripted);
        if q.is_empty() {
            None
        } else {
            Some(q.remove(0))
        }
    };
    let index = {
        let mut hits = lock(&s.hits);
        hits.push(Hit {
            start,
            end: None,
            in_flight,
            path: uri.path().to_string(),
            probe: headers.get("x-probe-id").and_then(|v| v.to_str().ok()).unwrap_or("").to_string(),
            seq: headers.get("x-request-seq").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()).unwrap_or(0),
            status: 200,
            authorization: headers.get("authorization").and_then(|v| v.to_str().ok()).map(str::to_string),
            body: body.to_vec(),
        });
        hits.len() - 1
    };
    if uri.path() == "/hold" {
        let mut rx = s.holds_released.subscribe();
        let _ = tokio::time::timeout(Duration::from_secs(120), rx.wait_for(|released| *released)).await;
    } else if let Some(ms) = p.ms {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let response = match scripted {
        Some((status, retry_after)) => {
            let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            match retry_after {
                Some(secs) => (code, [("retry-after", secs.to_string())], "slow down").into_response(),
                None => (code, "scripted").into_response(),
            }
        }
        None => (StatusCode::OK, [("content-type", "application/json")], "{\"ok\":true}").into_response(),
    };
    {
        let mut hits = lock(&s.hits);
        if let Some(h) = hits.get_mut(index) {
            h.end = Some(s.epoch.elapsed());
            h.status = response.status().as_u16();
        }
    }
    s.in_flight.fetch_sub(1, Ordering::SeqCst);
    response
}

/// Pairs of consecutive starts closer than `min_gap`.
pub fn spacing_violations(hits: &[Hit], min_gap: Duration) -> Vec<(Duration, Duration)> {
    hits.windows(2).filter(|w| w[1].start - w[0].start < min_gap).map(|w| (w[0].start, w[1].start)).collect()
}

pub fn max_in_flight(hits: &[Hit]) -> u32 {
    hits.iter().map(|h| h.in_flight).max().unwrap_or(0)
}

/// Starts per second between the first and the last start of `hits`.
pub fn start_rate(hits: &[Hit]) -> f64 {
    match (hits.first(), hits.last()) {
        (Some(a), Some(b)) if hits.len() > 1 && b.start > a.start => (hits.len() - 1) as f64 / (b.start - a.start).as_secs_f64(),
        _ => 0.0,
    }
}

/// Inserts a JIRA SourceConfig with the given AuthInfo limits; returns its ID.
pub async fn insert_source(pool: &MySqlPool, address: &str, auth: serde_json::Value) -> anyhow::Result<String> {
    let id = uuid::Uuid::new_v4().to_string();
    sqlx::query("INSERT INTO SourceConfig (ID, Source, Address, AuthInfo, Payload) VALUES (?, 'JIRA', ?, ?, '{\"project\":\"VULN\"}')")
        .bind(&id)
        .bind(address)
        .bind(auth.to_string())
        .execute(pool)
        .await?;
    Ok(id)
}

/// A running `limit_probe` process. Killed when dropped.
pub struct ProbeProcess {
    pub child: Child,
    pub name: String,
    output: tokio::task::JoinHandle<Vec<String>>,
}

/// What a `limit_probe` process needs.
#[derive(Clone, Debug)]
pub struct ProbeArgs {
    pub redis_url: String,
    pub namespace: String,
    /// `Some((database URL, SourceConfig ID))`: limits from SQL. `None`: `fixed`.
    pub database: Option<(String, String)>,
    /// Address, Delay (µs) and Concurrency when no database is used.
    pub fixed: Option<(String, u64, u32)>,
    pub tasks: u32,
    pub duration: Duration,
    pub path: String,
    pub lease_ttl: Duration,
}

impl ProbeProcess {
    /// Starts `binary` and waits until it says it is ready.
    pub async fn spawn(binary: &Path, name: &str, args: &ProbeArgs) -> anyhow::Result<Self> {
        let mut cmd = Command::new(binary);
        cmd.arg("--name")
            .arg(name)
            .arg("--redis")
            .arg(&args.redis_url)
            .arg("--namespace")
            .arg(&args.namespace)
            .arg("--tasks")
            .arg(args.tasks.to_string())
            .arg("--duration-ms")
            .arg(args.duration.as_millis().to_string())
            .arg("--path")
            .arg(&args.path)
            .arg("--lease-ttl-ms")
            .arg(args.lease_ttl.as_millis().to_string());
        if let Some((db, id)) = &args.database {
            cmd.arg("--database").arg(db).arg("--source-config").arg(id);
        }
        if let Some((address, delay_us, concurrency)) = &args.fixed {
            cmd.arg("--address").arg(address).arg("--delay-us").arg(delay_us.to_string()).arg("--concurrency").arg(concurrency.to_string());
        }
        cmd.stdout(Stdio::piped()).stderr(Stdio::inherit()).kill_on_drop(true);
        let mut child = cmd.spawn()?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?;
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let output = tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            let mut ready = Some(ready_tx);
            let mut out = Vec::new();
            while let Ok(Some(line)) = lines.next_line().await {
                if line.trim() == "ready" {
                    if let Some(tx) = ready.take() {
                        let _ = tx.send(());
                    }
                    continue;
                }
                out.push(line);
            }
            out
        });
        tokio::time::timeout(Duration::from_secs(30), ready_rx)
            .await
            .map_err(|_| anyhow::anyhow!("limit_probe {name} did not become ready within 30 s"))??;
        Ok(ProbeProcess { child, name: name.to_string(), output })
    }

    /// Waits for the process to end and returns its JSON summary line.
    pub async fn finish(mut self, timeout: Duration) -> anyhow::Result<serde_json::Value> {
        let status = tokio::time::timeout(timeout, self.child.wait())
            .await
            .map_err(|_| anyhow::anyhow!("limit_probe {} did not finish within {timeout:?}", self.name))??;
        anyhow::ensure!(status.success(), "limit_probe {} exited with {status}", self.name);
        let lines = (&mut self.output).await?;
        let last = lines.last().ok_or_else(|| anyhow::anyhow!("limit_probe {} printed no summary", self.name))?;
        Ok(serde_json::from_str(last)?)
    }

    /// `kill -9`.
    pub async fn kill9(&mut self) -> anyhow::Result<()> {
        self.child.start_kill()?;
        self.child.wait().await?;
        Ok(())
    }
}

/// A throwaway `redis-server` on a free loopback port, as a child process.
pub struct ThrowawayRedis {
    pub port: u16,
    child: Option<Child>,
}

impl ThrowawayRedis {
    pub async fn start() -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut r = ThrowawayRedis { port, child: None };
        r.restart().await?;
        Ok(r)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Starts it (again) on the same port and waits until it answers PING.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--daemonize", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        self.child = Some(child);
        let client = redis::Client::open(self.url())?;
        crate::eventually("throwaway redis answers PING", Duration::from_secs(10), || {
            let client = client.clone();
            async move {
                match client.get_multiplexed_async_connection().await {
                    Ok(mut con) => Ok(redis::cmd("PING").query_async::<String>(&mut con).await.ok()),
                    Err(_) => Ok(None),
                }
            }
        })
        .await?;
        Ok(())
    }

    /// `kill -9` of the server.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut c) = self.child.take() {
            c.start_kill()?;
            c.wait().await?;
        }
        Ok(())
    }
}

/// For each pair of `hits` starting closer than `min_gap` at the server, the
/// same pair's gap when the probes handed them to their connections (from the
/// probes' `sent_at_us`), to tell the limiter's spacing from delivery jitter.
pub fn client_gaps(pairs: &[(Duration, Duration)], hits: &[Hit], summaries: &[serde_json::Value]) -> Vec<String> {
    let sent = |probe: &str, seq: u64| -> Option<i128> {
        let s = summaries.iter().find(|s| s["name"] == probe)?;
        s["sent_at_us"].as_array()?.iter().find(|e| e[0].as_u64() == Some(seq)).and_then(|e| e[1].as_i64()).map(i128::from)
    };
    pairs
        .iter()
        .filter_map(|(a, b)| {
            let ha = hits.iter().find(|h| h.start == *a)?;
            let hb = hits.iter().find(|h| h.start == *b)?;
            let client = match (sent(&ha.probe, ha.seq), sent(&hb.probe, hb.seq)) {
                (Some(x), Some(y)) => format!("{:.1} ms", (y - x) as f64 / 1000.0),
                _ => "?".into(),
            };
            Some(format!("server gap {:.1} ms ({}→{}), client gap {client}", (*b - *a).as_secs_f64() * 1000.0, ha.probe, hb.probe))
        })
        .collect()
}

/// Every request's hand-off time (wall clock, µs) as the probes reported it, sorted.
pub fn client_sends(summaries: &[serde_json::Value]) -> Vec<i128> {
    let mut all: Vec<i128> = summaries
        .iter()
        .filter_map(|s| s["sent_at_us"].as_array())
        .flatten()
        .filter_map(|e| e[1].as_i64().map(i128::from))
        .collect();
    all.sort_unstable();
    all
}

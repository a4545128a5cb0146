//! Prometheus metrics and the `/metrics`, `/healthz` and `/readyz` endpoints that
//! both binaries serve (on `AEGIS_HTTP_ADDR`).
//!
//! Metrics are process-wide statics registered in one registry; modules that own
//! a behaviour also own its metric here, so the full list is in one place.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};

use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus::{Encoder, IntCounter, IntCounterVec, Opts, Registry, TextEncoder};

/// The registry every Aegis metric lives in.
pub static REGISTRY: LazyLock<Registry> = LazyLock::new(Registry::new);

fn register<T: prometheus::core::Collector + Clone + 'static>(metric: T) -> T {
    // Registration only fails for duplicate names, which would be a programming
    // error caught by the tests; the metric still works unregistered.
    let _ = REGISTRY.register(Box::new(metric.clone()));
    metric
}

/// Log lines the `Logs` table writer could not keep up with.
pub static LOG_LINES_DROPPED: LazyLock<IntCounter> = LazyLock::new(|| {
    register(
        IntCounter::new(
            "aegis_log_lines_dropped_total",
            "Log lines not written to the Logs table because its writer fell behind",
        )
        .unwrap_or_else(|_| unreachable_counter()),
    )
});

/// Counter family helper for the modules that own a labelled counter.
/// Metric definitions are constants, so an invalid one is a programming error.
pub fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    match IntCounterVec::new(Opts::new(name, help), labels) {
        Ok(c) => register(c),
        Err(_) => panic!("metric {name} has an invalid definition"),
    }
}

fn unreachable_counter() -> IntCounter {
    IntCounter::new("aegis_invalid_metric", "invalid metric definition")
        .unwrap_or_else(|_| panic!("invalid metric"))
}

/// Prometheus text exposition of every registered metric.
pub fn render() -> String {
    let mut buf = Vec::new();
    let _ = TextEncoder::new().encode(&REGISTRY.gather(), &mut buf);
    String::from_utf8(buf).unwrap_or_default()
}

/// Whether the process is ready for work (`/readyz`). Liveness (`/healthz`) is
/// simply the server answering.
#[derive(Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::SeqCst);
    }
    pub fn get(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz`; returns the bound address.
pub async fn serve(addr: SocketAddr, readiness: Readiness) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(|| async { render() }))
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let ready = readiness.get();
                async move {
                    if ready {
                        (StatusCode::OK, "ready").into_response()
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response()
                    }
                }
            }),
        );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics server stopped");
        }
    });
    Ok(bound)
}

/// Histogram family helper (buckets in seconds).
pub fn histogram_vec(
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: Vec<f64>,
) -> prometheus::HistogramVec {
    let opts = prometheus::HistogramOpts::new(name, help).buckets(buckets);
    match prometheus::HistogramVec::new(opts, labels) {
        Ok(h) => register(h),
        Err(_) => panic!("metric {name} has an invalid definition"),
    }
}

/// Gauge family helper.
pub fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> prometheus::IntGaugeVec {
    match prometheus::IntGaugeVec::new(Opts::new(name, help), labels) {
        Ok(g) => register(g),
        Err(_) => panic!("metric {name} has an invalid definition"),
    }
}

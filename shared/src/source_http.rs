//! The one HTTP client every vendor request (JIRA, Qualys, Nexpose) goes through.
//!
//! A [`SourceClient`] is built from a SourceConfig row. For every attempt of a
//! request it reads the source's live limits ([`LimitsCache`]), takes a
//! fleet-wide [`Permit`] from the [`Limiter`], sends with connect and request
//! timeouts, and keeps the permit until the caller has read or dropped the body
//! of the [`SourceResponse`] (long Qualys downloads stay inside the limit).
//!
//! What it guarantees:
//! * TLS certificates are verified unless AuthInfo says `"VerifyTLS": false`
//!   (the original passed that flag inverted);
//! * connection errors, timeouts, 408, 425, 429, 500, 502, 503 and 504 are retried
//!   with capped exponential backoff and full jitter, `Retries` extra times, for
//!   idempotent requests only (POST only when the connection failed before
//!   anything was sent, or when the caller marks it idempotent); bodies are
//!   resent intact;
//! * `Retry-After` (seconds or HTTP date) on 429/503, Qualys
//!   `X-RateLimit-ToWait-Sec` and JIRA `X-RateLimit-Reset` pause the source for
//!   the whole fleet;
//! * credentials come from the secrets layer as [`Secret`]s and are sent only
//!   as a sensitive `Authorization` header: spans, logs and errors name the
//!   SourceConfig ID, method and path *template*, never credentials or URLs
//!   with query strings;
//! * a garbage response fails the call with [`SourceHttpError`], never the process.
//!
//! [`probe`] sends N requests to a source's health endpoint and reports latency
//! and limiter waits (used by DiagnosticJob).

// The error names the source config, method and path of every failure; boxing it
// would only move that cost elsewhere.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::StreamExt;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts};
use rand::Rng;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use serde::Serialize;
use tokio::time::Instant;
use tracing::Instrument;

use crate::model::source_config::{SourceConfig, Vendor};
use crate::ratelimit::{LimitError, Limiter, LimitsCache, Permit};
use crate::secrets::{Keyring, Secret};

/// Retries beyond this are ignored, whatever AuthInfo says.
pub const MAX_RETRIES: u32 = 10;

/// Why a source request failed. Messages name the SourceConfig, the method and
/// the path template; they never hold credentials.
#[derive(Debug, thiserror::Error)]
pub enum SourceHttpError {
    #[error("SourceConfig {source_config}: {reason}")]
    Config {
        source_config: String,
        reason: String,
    },
    #[error("{method} {path} on SourceConfig {source_config}: {source}")]
    Limiter {
        source_config: String,
        method: Method,
        path: String,
        #[source]
        source: Box<LimitError>,
    },
    #[error("{method} {path} on SourceConfig {source_config} failed after {attempts} attempt(s): {source}")]
    Transport {
        source_config: String,
        method: Method,
        path: String,
        attempts: u32,
        #[source]
        source: reqwest::Error,
    },
    #[error("{method} {path} on SourceConfig {source_config} answered {status}")]
    Status {
        source_config: String,
        method: Method,
        path: String,
        status: StatusCode,
    },
    #[error("{method} {path} on SourceConfig {source_config}: reading the response body failed: {source}")]
    Body {
        source_config: String,
        method: Method,
        path: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{method} {path} on SourceConfig {source_config}: the response is not the expected JSON: {source}")]
    Decode {
        source_config: String,
        method: Method,
        path: String,
        #[source]
        source: serde_json::Error,
    },
}

/// Timeouts and backoff of a [`SourceClient`].
#[derive(Clone, Debug)]
pub struct ClientOptions {
    pub connect_timeout: Duration,
    /// Whole-request timeout (headers and body) unless a request sets its own.
    pub request_timeout: Duration,
    /// The longest silence while reading a response.
    pub read_timeout: Duration,
    /// First backoff ceiling; doubles per attempt up to `backoff_cap`.
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    /// The longest pause a vendor header may impose (guards against nonsense dates).
    pub max_pause: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(120),
            read_timeout: Duration::from_secs(60),
            backoff_base: Duration::from_millis(500),
            backoff_cap: Duration::from_secs(30),
            max_pause: Duration::from_secs(3600),
        }
    }
}

/// One request, rebuildable for every attempt.
#[derive(Clone, Debug)]
pub struct RequestSpec {
    pub method: Method,
    /// The path with placeholders (`/rest/api/2/issue/{key}`): what spans,
    /// metrics and errors show.
    pub path_template: String,
    /// The real path, relative to the source's address.
    pub url_path: String,
    pub query: Vec<(String, String)>,
    pub headers: HeaderMap,
    pub body: Option<Bytes>,
    /// `None`: decided by the method (GET, HEAD, PUT, DELETE, OPTIONS are idempotent).
    pub idempotent: Option<bool>,
    /// Overrides [`ClientOptions::request_timeout`] (e.g. long Qualys downloads).
    pub timeout: Option<Duration>,
}

impl RequestSpec {
    pub fn new(
        method: Method,
        path_template: impl Into<String>,
        url_path: impl Into<String>,
    ) -> Self {
        RequestSpec {
            method,
            path_template: path_template.into(),
            url_path: url_path.into(),
            query: Vec::new(),
            headers: HeaderMap::new(),
            body: None,
            idempotent: None,
            timeout: None,
        }
    }

    pub fn get(path_template: impl Into<String>, url_path: impl Into<String>) -> Self {
        Self::new(Method::GET, path_template, url_path)
    }

    pub fn query(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.query.push((key.into(), value.into()));
        self
    }

    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.insert(name, value);
        self
    }

    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = Some(body.into());
        self
    }

    /// A JSON body with `Content-Type: application/json`.
    pub fn json<T: Serialize + ?Sized>(mut self, value: &T) -> Result<Self, serde_json::Error> {
        self.body = Some(Bytes::from(serde_json::to_vec(value)?));
        self.headers.insert(
            reqwest::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        Ok(self)
    }

    pub fn idempotent(mut self, idempotent: bool) -> Self {
        self.idempotent = Some(idempotent);
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    fn is_idempotent(&self) -> bool {
        self.idempotent.unwrap_or(matches!(
            self.method,
            Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS
        ))
    }
}

struct Metrics {
    requests: IntCounterVec,
    errors: IntCounterVec,
    in_flight: IntGaugeVec,
    wait: HistogramVec,
    duration: HistogramVec,
    retries: IntCounterVec,
}

fn register<T: prometheus::core::Collector + Clone + 'static>(metric: T) -> T {
    // Fails only for a duplicate name; the metric still works unregistered.
    let _ = crate::metrics::REGISTRY.register(Box::new(metric.clone()));
    metric
}

static METRICS: LazyLock<Option<Metrics>> = LazyLock::new(|| {
    let buckets = vec![
        0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0,
    ];
    Some(Metrics {
        requests: register(
            IntCounterVec::new(
                Opts::new("aegis_source_http_requests_total", "Vendor HTTP attempts by source config, method and status (\"error\" when no response)"),
                &["source_config", "method", "status"],
            )
            .ok()?,
        ),
        errors: register(
            IntCounterVec::new(
                Opts::new("aegis_source_http_errors_total", "Vendor HTTP calls that failed, by kind (connect, timeout, transport, status, body, decode, limiter)"),
                &["source_config", "kind"],
            )
            .ok()?,
        ),
        in_flight: register(
            IntGaugeVec::new(Opts::new("aegis_source_http_in_flight", "Vendor HTTP requests of this process holding a permit"), &["source_config"]).ok()?,
        ),
        wait: register(
            HistogramVec::new(
                HistogramOpts::new("aegis_source_http_limiter_wait_seconds", "Time an attempt waited for its rate-limit permit").buckets(buckets.clone()),
                &["source_config"],
            )
            .ok()?,
        ),
        duration: register(
            HistogramVec::new(
                HistogramOpts::new("aegis_source_http_request_duration_seconds", "Time from sending an attempt to its response headers").buckets(buckets),
                &["source_config"],
            )
            .ok()?,
        ),
        retries: register(
            IntCounterVec::new(Opts::new("aegis_source_http_retries_total", "Vendor HTTP attempts that were retried"), &["source_config"]).ok()?,
        ),
    })
});

fn count_error(source_config: &str, kind: &str) {
    if let Some(m) = METRICS.as_ref() {
        m.errors.with_label_values(&[source_config, kind]).inc();
    }
}

/// How requests authenticate.
enum Auth {
    None,
    Basic { username: String, password: Secret },
    Bearer(Secret),
}

/// The rate-limited HTTP client of one SourceConfig. Cheap to clone.
#[derive(Clone)]
pub struct SourceClient {
    inner: Arc<ClientInner>,
}

struct ClientInner {
    http: reqwest::Client,
    base: Url,
    source_config_id: String,
    vendor: Vendor,
    auth: Auth,
    limiter: Limiter,
    limits: LimitsCache,
    options: ClientOptions,
}

impl std::fmt::Debug for SourceClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceClient")
            .field("source_config", &self.inner.source_config_id)
            .field("vendor", &self.inner.vendor)
            .field("base", &self.inner.base.as_str())
            .finish()
    }
}

impl SourceClient {
    /// A client for `sc`, with credentials opened by `keyring`.
    pub fn new(
        sc: &SourceConfig,
        keyring: Option<&Keyring>,
        limiter: Limiter,
        limits: LimitsCache,
    ) -> Result<Self, SourceHttpError> {
        Self::with_options(sc, keyring, limiter, limits, ClientOptions::default())
    }

    pub fn with_options(
        sc: &SourceConfig,
        keyring: Option<&Keyring>,
        limiter: Limiter,
        limits: LimitsCache,
        options: ClientOptions,
    ) -> Result<Self, SourceHttpError> {
        let config_err = |reason: String| SourceHttpError::Config {
            source_config: sc.id.clone(),
            reason,
        };
        let vendor = sc.vendor().map_err(|e| config_err(e.to_string()))?;
        let auth_info = sc.auth().map_err(|e| config_err(e.to_string()))?;
        let creds = sc
            .credentials(keyring)
            .map_err(|e| config_err(e.to_string()))?;
        let base = base_url(sc, &auth_info).map_err(config_err)?;

        // "VerifyTLS": false is the only way to turn verification off; the
        // original read it inverted.
        let verify_tls = auth_info
            .get("VerifyTLS")
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(true);
        if !verify_tls {
            tracing::warn!(source_config = %sc.id, "TLS certificate verification is off for this source (AuthInfo VerifyTLS=false)");
        }
        let mut default_headers = HeaderMap::new();
        if vendor == Vendor::Qualys {
            default_headers.insert(
                HeaderName::from_static("x-requested-with"),
                HeaderValue::from_static("Aegis"),
            );
        }
        let http = reqwest::Client::builder()
            .user_agent(concat!("aegis/", env!("CARGO_PKG_VERSION")))
            .default_headers(default_headers)
            .connect_timeout(options.connect_timeout)
            .read_timeout(options.read_timeout)
            .danger_accept_invalid_certs(!verify_tls)
            .build()
            .map_err(|e| {
                config_err(format!("cannot build the HTTP client: {}", e.without_url()))
            })?;

        let auth = match vendor {
            // OAuth 1.0a: the JIRA client signs each request itself.
            Vendor::Jira if !creds.private_key.is_empty() && !creds.consumer_key.is_empty() => {
                Auth::None
            }
            Vendor::Jira if creds.username.is_empty() && !creds.token.is_empty() => {
                Auth::Bearer(creds.token)
            }
            Vendor::Jira if creds.password.is_empty() && !creds.token.is_empty() => Auth::Basic {
                username: creds.username,
                password: creds.token,
            },
            _ if creds.username.is_empty() => Auth::None,
            _ => Auth::Basic {
                username: creds.username,
                password: creds.password,
            },
        };
        Ok(SourceClient {
            inner: Arc::new(ClientInner {
                http,
                base,
                source_config_id: sc.id.clone(),
                vendor,
                auth,
                limiter,
                limits,
                options,
            }),
        })
    }

    pub fn source_config_id(&self) -> &str {
        &self.inner.source_config_id
    }

    pub fn vendor(&self) -> Vendor {
        self.inner.vendor
    }

    /// `GET path`; `path_template` is what spans and metrics show.
    pub async fn get(
        &self,
        path_template: &str,
        path: &str,
    ) -> Result<SourceResponse, SourceHttpError> {
        self.send(RequestSpec::get(path_template, path)).await
    }

    /// Sends `spec`, retrying as the module documentation says. Any final
    /// status is returned as a response; use [`SourceResponse::error_for_status`]
    /// to turn non-2xx into an error.
    pub async fn send(&self, spec: RequestSpec) -> Result<SourceResponse, SourceHttpError> {
        let inner = &self.inner;
        let span = tracing::info_span!(
            "source_http",
            source_config = %inner.source_config_id,
            vendor = inner.vendor.source_name(),
            method = %spec.method,
            path = %spec.path_template,
            status = tracing::field::Empty,
            attempts = tracing::field::Empty,
            limiter_wait_ms = tracing::field::Empty,
            otel.name = %format!("{} {}", spec.method, spec.path_template),
        );
        self.send_attempts(spec).instrument(span).await
    }

    async fn send_attempts(&self, spec: RequestSpec) -> Result<SourceResponse, SourceHttpError> {
        let inner = &self.inner;
        let id = inner.source_config_id.as_str();
        let span = tracing::Span::current();
        let url = self.url(&spec)?;
        let idempotent = spec.is_idempotent();
        let mut waited = Duration::ZERO;
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            let limits = inner.limits.get(id).await.map_err(|e| {
                count_error(id, "limiter");
                self.limiter_error(&spec, e)
            })?;
            let attempts_allowed = 1 + limits.retries.min(MAX_RETRIES);
            let wait_span = tracing::info_span!("limiter_wait", limit_key = %limits.limit_key, otel.name = "limiter wait");
            let permit = inner
                .limiter
                .acquire(&limits)
                .instrument(wait_span)
                .await
                .map_err(|e| {
                    count_error(id, "limiter");
                    self.limiter_error(&spec, e)
                })?;
            waited += permit.waited();
            span.record("limiter_wait_ms", waited.as_secs_f64() * 1000.0);
            span.record("attempts", attempt);
            if let Some(m) = METRICS.as_ref() {
                m.wait
                    .with_label_values(&[id])
                    .observe(permit.waited().as_secs_f64());
            }
            let in_flight = InFlight::start(id);

            let sent = Instant::now();
            let sent_at = SystemTime::now();
            let result = self.request(&spec, url.clone()).send().await;
            if let Some(m) = METRICS.as_ref() {
                m.duration
                    .with_label_values(&[id])
                    .observe(sent.elapsed().as_secs_f64());
            }
            let last = attempt >= attempts_allowed;
            match result {
                Ok(response) => {
                    let status = response.status();
                    if let Some(m) = METRICS.as_ref() {
                        m.requests
                            .with_label_values(&[id, spec.method.as_str(), status.as_str()])
                            .inc();
                    }
                    let pause = pause_hint(
                        status,
                        response.headers(),
                        SystemTime::now(),
                        inner.options.max_pause,
                    );
                    let mut paused_fleet = false;
                    if let Some(pause) = pause {
                        match inner.limiter.pause(&limits.limit_key, pause).await {
                            Ok(()) => paused_fleet = true,
                            Err(e) => {
                                tracing::warn!(error = %e, "could not pause the source fleet-wide")
                            }
                        }
                    }
                    let retry = idempotent && !last && retryable_status(status, pause.is_some());
                    if retry {
                        tracing::info!(
                            status = status.as_u16(),
                            attempt,
                            "retrying after a retryable status"
                        );
                        if let Some(m) = METRICS.as_ref() {
                            m.retries.with_label_values(&[id]).inc();
                        }
                        drop(response);
                        drop(in_flight);
                        drop(permit);
                        // The fleet-wide pause makes the next acquire wait;
                        // without it, wait here.
                        let backoff = self.backoff(attempt);
                        let wait = match pause {
                            Some(p) if !paused_fleet => backoff.max(p),
                            _ => backoff,
                        };
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                    span.record("status", status.as_u16());
                    if !status.is_success() {
                        count_error(id, "status");
                    }
                    return Ok(SourceResponse {
                        response,
                        permit,
                        _in_flight: in_flight,
                        attempts: attempt,
                        limiter_wait: waited,
                        sent_at,
                        source_config: inner.source_config_id.clone(),
                        method: spec.method.clone(),
                        path: spec.path_template.clone(),
                    });
                }
                Err(e) => {
                    let kind = if e.is_connect() {
                        "connect"
                    } else if e.is_timeout() {
                        "timeout"
                    } else {
                        "transport"
                    };
                    if let Some(m) = METRICS.as_ref() {
                        m.requests
                            .with_label_values(&[id, spec.method.as_str(), "error"])
                            .inc();
                    }
                    // A connect error means nothing was sent, so even a POST
                    // can go again; other failures only for idempotent requests.
                    let retry = !last
                        && (e.is_connect()
                            || (idempotent && (e.is_timeout() || e.is_request() || e.is_body())));
                    drop(in_flight);
                    drop(permit);
                    if retry {
                        tracing::info!(error = %e.without_url(), attempt, "retrying after a transport error");
                        if let Some(m) = METRICS.as_ref() {
                            m.retries.with_label_values(&[id]).inc();
                        }
                        tokio::time::sleep(self.backoff(attempt)).await;
                        continue;
                    }
                    count_error(id, kind);
                    return Err(SourceHttpError::Transport {
                        source_config: inner.source_config_id.clone(),
                        method: spec.method.clone(),
                        path: spec.path_template.clone(),
                        attempts: attempt,
                        source: e.without_url(),
                    });
                }
            }
        }
    }

    fn url(&self, spec: &RequestSpec) -> Result<Url, SourceHttpError> {
        let mut url = self.inner.base.clone();
        let base_path = url.path().trim_end_matches('/').to_string();
        let path = spec.url_path.trim_start_matches('/');
        url.set_path(&format!("{base_path}/{path}"));
        if !spec.query.is_empty() {
            url.query_pairs_mut().extend_pairs(spec.query.iter());
        }
        Ok(url)
    }

    fn request(&self, spec: &RequestSpec, url: Url) -> reqwest::RequestBuilder {
        let mut req = self
            .inner
            .http
            .request(spec.method.clone(), url)
            .headers(spec.headers.clone())
            .timeout(spec.timeout.unwrap_or(self.inner.options.request_timeout));
        req = match &self.inner.auth {
            Auth::None => req,
            // Both set the Authorization header as sensitive.
            Auth::Basic { username, password } => req.basic_auth(username, Some(password.expose())),
            Auth::Bearer(token) => req.bearer_auth(token.expose()),
        };
        if let Some(body) = &spec.body {
            req = req.body(body.clone());
        }
        req
    }

    /// Full jitter: a random time up to `min(cap, base × 2^(attempt-1))`.
    fn backoff(&self, attempt: u32) -> Duration {
        let o = &self.inner.options;
        let ceiling = o
            .backoff_base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
            .min(o.backoff_cap);
        ceiling.mul_f64(rand::thread_rng().gen_range(0.0..=1.0))
    }

    fn limiter_error(&self, spec: &RequestSpec, source: LimitError) -> SourceHttpError {
        SourceHttpError::Limiter {
            source_config: self.inner.source_config_id.clone(),
            method: spec.method.clone(),
            path: spec.path_template.clone(),
            source: Box::new(source),
        }
    }
}

/// The source's base URL: `Address` (or AuthInfo `Host`), with `Port` when the
/// address has none.
fn base_url(
    sc: &SourceConfig,
    auth: &serde_json::Map<String, serde_json::Value>,
) -> Result<Url, String> {
    let address = sc
        .address
        .as_deref()
        .filter(|a| !a.trim().is_empty())
        .or_else(|| auth.get("Host").and_then(serde_json::Value::as_str))
        .map(str::trim)
        .ok_or_else(|| "has no Address".to_string())?;
    let mut url =
        Url::parse(address).map_err(|e| format!("Address {address:?} is not a URL ({e})"))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(format!(
            "Address {address:?} must start with https:// or http://"
        ));
    }
    let port = sc
        .port
        .as_deref()
        .and_then(|p| p.trim().parse::<u16>().ok())
        .or_else(|| {
            auth.get("Port")
                .and_then(serde_json::Value::as_u64)
                .and_then(|p| u16::try_from(p).ok())
        })
        .filter(|p| *p > 0);
    if let (None, Some(port)) = (url.port(), port) {
        url.set_port(Some(port))
            .map_err(|_| format!("Address {address:?} cannot take a port"))?;
    }
    Ok(url)
}

/// Counts a request in the in-flight gauge while it lives.
struct InFlight(String);

impl InFlight {
    fn start(source_config: &str) -> Self {
        if let Some(m) = METRICS.as_ref() {
            m.in_flight.with_label_values(&[source_config]).inc();
        }
        InFlight(source_config.to_string())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(m) = METRICS.as_ref() {
            m.in_flight.with_label_values(&[&self.0]).dec();
        }
    }
}

/// Statuses worth another attempt; `rate_limited` marks a vendor rate-limit
/// signal (a Qualys 409 with `X-RateLimit-ToWait-Sec`).
fn retryable_status(status: StatusCode, rate_limited: bool) -> bool {
    matches!(status.as_u16(), 408 | 425 | 429 | 500 | 502 | 503 | 504)
        || (status == StatusCode::CONFLICT && rate_limited)
}

/// How long the vendor asks the whole fleet to hold off, from:
/// `Retry-After` (seconds or HTTP date) on 429 and 503; Qualys
/// `X-RateLimit-ToWait-Sec` > 0 on any response; JIRA `X-RateLimit-Reset` (an
/// ISO 8601 time) on a 429 or when `X-RateLimit-Remaining` is 0. Capped at `max`.
pub fn pause_hint(
    status: StatusCode,
    headers: &HeaderMap,
    now: SystemTime,
    max: Duration,
) -> Option<Duration> {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    let until = |t: SystemTime| t.duration_since(now).unwrap_or(Duration::ZERO);
    let mut hint: Option<Duration> = None;
    let rate_limited =
        status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE;
    if rate_limited {
        if let Some(v) = text("retry-after") {
            hint = match v.parse::<u64>() {
                Ok(secs) => Some(Duration::from_secs(secs)),
                Err(_) => httpdate_to_system(v).map(until),
            };
        }
    }
    if let Some(secs) = text("x-ratelimit-towait-sec")
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|s| *s > 0)
    {
        hint = hint.max(Some(Duration::from_secs(secs)));
    }
    let exhausted = text("x-ratelimit-remaining").and_then(|v| v.parse::<i64>().ok()) == Some(0);
    if status == StatusCode::TOO_MANY_REQUESTS || exhausted {
        if let Some(reset) = text("x-ratelimit-reset").and_then(iso_to_system) {
            hint = hint.max(Some(until(reset)));
        }
    }
    hint.filter(|d| !d.is_zero()).map(|d| d.min(max))
}

fn httpdate_to_system(text: &str) -> Option<SystemTime> {
    let t = chrono::DateTime::parse_from_rfc2822(text).ok()?;
    Some(SystemTime::from(t.with_timezone(&chrono::Utc)))
}

/// JIRA's `X-RateLimit-Reset`: RFC 3339, or Atlassian's `2024-05-06T13:25Z`.
fn iso_to_system(text: &str) -> Option<SystemTime> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Some(SystemTime::from(t.with_timezone(&chrono::Utc)));
    }
    let naive = chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%MZ").ok()?;
    Some(SystemTime::from(naive.and_utc()))
}

/// A response whose permit is held until it is dropped or its body consumed.
pub struct SourceResponse {
    response: reqwest::Response,
    permit: Permit,
    _in_flight: InFlight,
    attempts: u32,
    limiter_wait: Duration,
    sent_at: SystemTime,
    source_config: String,
    method: Method,
    path: String,
}

impl std::fmt::Debug for SourceResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceResponse")
            .field("source_config", &self.source_config)
            .field("method", &self.method)
            .field("path", &self.path)
            .field("status", &self.response.status())
            .field("attempts", &self.attempts)
            .finish()
    }
}

impl SourceResponse {
    pub fn status(&self) -> StatusCode {
        self.response.status()
    }

    pub fn headers(&self) -> &HeaderMap {
        self.response.headers()
    }

    /// Attempts made, 1 when the first one was final.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// When the final attempt was handed to the HTTP connection (wall clock).
    pub fn sent_at(&self) -> SystemTime {
        self.sent_at
    }

    /// Total time the attempts waited for rate-limit permits.
    pub fn limiter_wait(&self) -> Duration {
        self.limiter_wait
    }

    /// Time the final attempt's permit spent in Redis calls (acquire overhead).
    pub fn limiter_redis_time(&self) -> Duration {
        self.permit.redis_time()
    }

    /// Redis round trips of the final attempt's permit.
    pub fn limiter_redis_calls(&self) -> u32 {
        self.permit.redis_calls()
    }

    /// Whether the permit was fleet-wide (false: Redis was unreachable).
    pub fn permit_is_global(&self) -> bool {
        self.permit.is_global()
    }

    /// Fails with [`SourceHttpError::Status`] unless the status is 2xx.
    pub fn error_for_status(self) -> Result<Self, SourceHttpError> {
        if self.status().is_success() {
            Ok(self)
        } else {
            Err(SourceHttpError::Status {
                source_config: self.source_config,
                method: self.method,
                path: self.path,
                status: self.response.status(),
            })
        }
    }

    /// The next piece of a streamed body; `None` at the end.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, SourceHttpError> {
        match self.response.chunk().await {
            Ok(c) => Ok(c),
            Err(e) => Err(self.body_error(e)),
        }
    }

    /// The whole body; the permit is released afterwards.
    pub async fn bytes(self) -> Result<Bytes, SourceHttpError> {
        let SourceResponse {
            response,
            permit,
            _in_flight,
            source_config,
            method,
            path,
            ..
        } = self;
        let body = response.bytes().await;
        // Released here rather than in the background on drop, so a process
        // that ends right after its last request leaves no lease behind.
        if let Err(e) = permit.release().await {
            tracing::debug!(error = %e, "could not release a lease; it expires by itself");
        }
        body.map_err(|e| {
            count_error(&source_config, "body");
            SourceHttpError::Body {
                source_config,
                method,
                path,
                source: e.without_url(),
            }
        })
    }

    pub async fn text(self) -> Result<String, SourceHttpError> {
        let bytes = self.bytes().await?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// The body as JSON; garbage fails with [`SourceHttpError::Decode`].
    pub async fn json<T: serde::de::DeserializeOwned>(self) -> Result<T, SourceHttpError> {
        let (source_config, method, path) = (
            self.source_config.clone(),
            self.method.clone(),
            self.path.clone(),
        );
        let bytes = self.bytes().await?;
        serde_json::from_slice(&bytes).map_err(|source| {
            count_error(&source_config, "decode");
            SourceHttpError::Decode {
                source_config,
                method,
                path,
                source,
            }
        })
    }

    fn body_error(&self, e: reqwest::Error) -> SourceHttpError {
        count_error(&self.source_config, "body");
        SourceHttpError::Body {
            source_config: self.source_config.clone(),
            method: self.method.clone(),
            path: self.path.clone(),
            source: e.without_url(),
        }
    }
}

/// The health endpoint probed when no path is given.
pub fn health_path(vendor: Vendor) -> &'static str {
    match vendor {
        Vendor::Jira => "/rest/api/2/serverInfo",
        Vendor::Qualys => "/msp/about.php",
        Vendor::Nexpose => "/api/3/administration/info",
    }
}

/// p50, p99 and maximum, in milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Summary {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Summary {
    pub fn of(values: &[Duration]) -> Self {
        let mut ms: Vec<f64> = values.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
        ms.sort_by(f64::total_cmp);
        let at = |q: f64| -> f64 {
            if ms.is_empty() {
                return 0.0;
            }
            let i = ((ms.len() as f64 - 1.0) * q).round() as usize;
            ms[i.min(ms.len() - 1)]
        };
        Summary {
            p50_ms: at(0.5),
            p99_ms: at(0.99),
            max_ms: ms.last().copied().unwrap_or(0.0),
        }
    }
}

/// What [`probe`] found.
#[derive(Clone, Debug, Serialize)]
pub struct ProbeReport {
    pub source_config: String,
    pub path: String,
    /// Requests sent.
    pub count: u32,
    /// Requests answered with a 2xx status.
    pub ok: u32,
    /// Requests that failed (no response, or a non-2xx status).
    pub errors: u32,
    /// Time from sending to the end of the body, per request.
    pub latency: Summary,
    /// Time waiting for rate-limit permits, per request.
    pub limiter_wait: Summary,
    /// Requests limited locally because Redis was unreachable.
    pub local_permits: u32,
    /// Answers by HTTP status.
    pub statuses: BTreeMap<u16, u32>,
    /// The first few error messages (no credentials in them).
    pub failures: Vec<String>,
}

/// Sends `requests` GETs (at most 1000) to `path`, or the vendor's health
/// endpoint, through `client` (so through the fleet-wide limit), concurrently,
/// and reports latency, limiter waits and statuses. Failed requests are counted,
/// not returned as errors.
pub async fn probe(
    client: &SourceClient,
    requests: u32,
    path: Option<&str>,
) -> Result<ProbeReport, SourceHttpError> {
    let path = path
        .filter(|p| !p.trim().is_empty())
        .unwrap_or(health_path(client.vendor()))
        .to_string();
    if requests == 0 || requests > 1000 {
        return Err(SourceHttpError::Config {
            source_config: client.source_config_id().to_string(),
            reason: format!("a probe sends 1 to 1000 requests, not {requests}"),
        });
    }
    let outcomes: Vec<_> = futures::stream::iter(0..requests)
        .map(|_| {
            let path = path.clone();
            async move {
                let started = Instant::now();
                let response = client.get(&path, &path).await?;
                let wait = response.limiter_wait();
                let status = response.status().as_u16();
                let global = response.permit_is_global();
                response.bytes().await?;
                Ok::<_, SourceHttpError>((
                    status,
                    wait,
                    started.elapsed().saturating_sub(wait),
                    global,
                ))
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let mut report = ProbeReport {
        source_config: client.source_config_id().to_string(),
        path,
        count: requests,
        ok: 0,
        errors: 0,
        latency: Summary::default(),
        limiter_wait: Summary::default(),
        local_permits: 0,
        statuses: BTreeMap::new(),
        failures: Vec::new(),
    };
    let (mut latencies, mut waits) = (Vec::new(), Vec::new());
    for outcome in outcomes {
        match outcome {
            Ok((status, wait, latency, global)) => {
                *report.statuses.entry(status).or_default() += 1;
                if (200..300).contains(&status) {
                    report.ok += 1;
                } else {
                    report.errors += 1;
                }
                if !global {
                    report.local_permits += 1;
                }
                latencies.push(latency);
                waits.push(wait);
            }
            Err(e) => {
                report.errors += 1;
                if report.failures.len() < 5 {
                    report.failures.push(e.to_string());
                }
            }
        }
    }
    report.latency = Summary::of(&latencies);
    report.limiter_wait = Summary::of(&waits);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                HeaderName::from_static(k),
                HeaderValue::from_str(v).expect("header"),
            );
        }
        h
    }

    const MAX: Duration = Duration::from_secs(3600);

    #[test]
    fn retry_after_in_seconds_or_http_date_pauses_on_429_and_503() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480); // Wed, 21 Oct 2015 07:28:00 GMT
        let h = headers(&[("retry-after", "2")]);
        assert_eq!(
            pause_hint(StatusCode::TOO_MANY_REQUESTS, &h, now, MAX),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            pause_hint(StatusCode::SERVICE_UNAVAILABLE, &h, now, MAX),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            pause_hint(StatusCode::OK, &h, now, MAX),
            None,
            "Retry-After on a 200 is not a rate limit"
        );
        let h = headers(&[("retry-after", "Wed, 21 Oct 2015 07:28:30 GMT")]);
        assert_eq!(
            pause_hint(StatusCode::TOO_MANY_REQUESTS, &h, now, MAX),
            Some(Duration::from_secs(30))
        );
        let h = headers(&[("retry-after", "Wed, 21 Oct 2015 07:27:00 GMT")]);
        assert_eq!(
            pause_hint(StatusCode::TOO_MANY_REQUESTS, &h, now, MAX),
            None,
            "a date in the past is no pause"
        );
        let h = headers(&[("retry-after", "soon")]);
        assert_eq!(
            pause_hint(StatusCode::TOO_MANY_REQUESTS, &h, now, MAX),
            None
        );
        let h = headers(&[("retry-after", "999999")]);
        assert_eq!(
            pause_hint(StatusCode::TOO_MANY_REQUESTS, &h, now, MAX),
            Some(MAX)
        );
    }

    #[test]
    fn qualys_and_jira_rate_limit_headers_pause() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_715_001_900); // 2024-05-06T13:25:00Z
        let h = headers(&[
            ("x-ratelimit-towait-sec", "7"),
            ("x-ratelimit-remaining", "0"),
        ]);
        assert_eq!(
            pause_hint(StatusCode::CONFLICT, &h, now, MAX),
            Some(Duration::from_secs(7))
        );
        assert!(retryable_status(StatusCode::CONFLICT, true));
        assert!(!retryable_status(StatusCode::CONFLICT, false));
        let h = headers(&[("x-ratelimit-towait-sec", "0")]);
        assert_eq!(pause_hint(StatusCode::OK, &h, now, MAX), None);
        let h = headers(&[("x-ratelimit-reset", "2024-05-06T13:26Z")]);
        assert_eq!(
            pause_hint(StatusCode::TOO_MANY_REQUESTS, &h, now, MAX),
            Some(Duration::from_secs(60))
        );
        let h = headers(&[
            ("x-ratelimit-reset", "2024-05-06T13:25:10Z"),
            ("x-ratelimit-remaining", "0"),
        ]);
        assert_eq!(
            pause_hint(StatusCode::OK, &h, now, MAX),
            Some(Duration::from_secs(10))
        );
        let h = headers(&[
            ("x-ratelimit-reset", "2024-05-06T13:25:10Z"),
            ("x-ratelimit-remaining", "5"),
        ]);
        assert_eq!(pause_hint(StatusCode::OK, &h, now, MAX), None);
    }

    #[test]
    fn only_transient_statuses_are_retried() {
        for s in [408, 425, 429, 500, 502, 503, 504] {
            assert!(
                retryable_status(StatusCode::from_u16(s).expect("status"), false),
                "{s}"
            );
        }
        for s in [301, 400, 401, 403, 404, 409, 422] {
            assert!(
                !retryable_status(StatusCode::from_u16(s).expect("status"), false),
                "{s}"
            );
        }
    }

    #[test]
    fn methods_decide_idempotency_unless_the_caller_does() {
        assert!(RequestSpec::get("/a", "/a").is_idempotent());
        assert!(RequestSpec::new(Method::PUT, "/a", "/a").is_idempotent());
        assert!(!RequestSpec::new(Method::POST, "/a", "/a").is_idempotent());
        assert!(RequestSpec::new(Method::POST, "/a", "/a")
            .idempotent(true)
            .is_idempotent());
    }
}

//! The fleet-wide rate limiter: every vendor request of every worker takes a
//! [`Permit`] here first (see `docs/ratelimit.md`).
//!
//! A limit is identified by its *limit key* (the SourceConfig ID, or the
//! `LimitKey` of AuthInfo for sources sharing one vendor account) and holds two
//! rules for the whole fleet:
//!
//! * `Delay`: at least this long between two request starts (GCRA with τ = 0;
//!   the next start is reserved, so callers queue instead of polling);
//! * `Concurrency`: at most this many permits held at once (a sorted set of
//!   leases that expire by themselves, so a killed worker's slots come back).
//!
//! Both rules, and a fleet-wide pause set from `Retry-After`, are checked by one
//! atomic Lua script ([`script.lua`](script.lua)) that uses only Redis's clock.
//! When no wait is needed an acquire is one Redis round trip.
//!
//! Invariants this module keeps:
//! * a permit never outlives its lease unnoticed: long requests extend it, and a
//!   lost lease is logged and counted;
//! * releasing is idempotent (a `ZREM` of a lease id) and happens on drop;
//! * if Redis is unreachable the process falls back to a conservative local
//!   limit ([`LimiterOptions::fallback_share`]), never to no limit, and returns
//!   to the global limit once Redis answers again.

mod local;
pub mod settings;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts};
use rand::Rng;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::model::source_config::SourceLimits;

pub use settings::LimitsCache;

use local::{LocalLimiter, LocalPermit};

/// `Concurrency` used when AuthInfo has none: one request in flight. The
/// original refused to start; we run, safely, and warn once per limit key.
pub const DEFAULT_CONCURRENCY: u32 = 1;

/// A caller waiting for a reserved start checks the pause key this long
/// before the start; a pause set later than that does not stop its request.
const PAUSE_CHECK_LEAD: Duration = Duration::from_millis(5);

/// A reserved start missed by more than this (the process was not scheduled
/// in time) is given up and a new one taken, at most [`MAX_MISSED_STARTS`]
/// times per request: late starts would land closer than Delay to the next.
const MAX_LATENESS: Duration = Duration::from_millis(2);
const MAX_MISSED_STARTS: u32 = 3;

/// The environment variable naming how many processes the local fallback
/// assumes share a limit.
pub const FALLBACK_SHARE_VAR: &str = "AEGIS_RATELIMIT_FALLBACK_SHARE";

static SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(include_str!("script.lua")));

/// Why a permit could not be had.
#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    #[error("rate limit {limit_key}: no permit within {waited:?} (limit of the wait: {max_wait:?}); the source is paused or its Concurrency is held by long requests")]
    WaitTooLong {
        limit_key: String,
        waited: Duration,
        max_wait: Duration,
    },
    #[error("AEGIS_REDIS_URL {url:?} is not a valid Redis URL: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("{setting}: {reason}")]
    BadSetting { setting: &'static str, reason: String },
    #[error("Redis at {url}: {source}")]
    Redis {
        url: String,
        #[source]
        source: redis::RedisError,
    },
    #[error("rate limits of SourceConfig {source_config}: {source}")]
    Limits {
        source_config: String,
        #[source]
        source: crate::model::ModelError,
    },
}

/// Tunables of a [`Limiter`]. [`LimiterOptions::from_env`] gives the defaults.
#[derive(Clone, Debug)]
pub struct LimiterOptions {
    /// How long a lease lasts without extension. A killed worker's slots come
    /// back within this. Requests longer than half of it are extended.
    pub lease_ttl: Duration,
    /// The longest one `acquire` waits before failing with [`LimitError::WaitTooLong`].
    pub max_wait: Duration,
    /// The longest start time ahead that is reserved; beyond it callers poll.
    pub max_ahead: Duration,
    /// `AEGIS_RATELIMIT_FALLBACK_SHARE` (default 4): while Redis is unreachable
    /// each process assumes up to this many processes share a limit, and uses
    /// `Delay × share` and `max(1, Concurrency / share)` on its own.
    pub fallback_share: u32,
    /// Timeout of one Redis call; beyond it Redis counts as unreachable.
    pub redis_timeout: Duration,
    /// While in fallback, how often Redis is tried again.
    pub redis_retry_interval: Duration,
    /// The longest sleep between two attempts while the concurrency is full.
    pub concurrency_poll: Duration,
}

impl Default for LimiterOptions {
    fn default() -> Self {
        LimiterOptions {
            lease_ttl: Duration::from_secs(30),
            max_wait: Duration::from_secs(15 * 60),
            max_ahead: Duration::from_secs(60),
            fallback_share: 4,
            redis_timeout: Duration::from_millis(500),
            redis_retry_interval: Duration::from_secs(1),
            concurrency_poll: Duration::from_millis(20),
        }
    }
}

impl LimiterOptions {
    /// The defaults, with `AEGIS_RATELIMIT_FALLBACK_SHARE` from the environment.
    pub fn from_env() -> Result<Self, LimitError> {
        let mut options = LimiterOptions::default();
        if let Ok(text) = std::env::var(FALLBACK_SHARE_VAR) {
            if !text.trim().is_empty() {
                options.fallback_share = text
                    .trim()
                    .parse()
                    .ok()
                    .filter(|n: &u32| *n >= 1)
                    .ok_or_else(|| LimitError::BadSetting {
                        setting: FALLBACK_SHARE_VAR,
                        reason: format!("{text:?} is not a number of processes >= 1"),
                    })?;
            }
        }
        Ok(options)
    }
}

/// The Redis keys of one limit. All share the hash tag `{<limit key>}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitKeys {
    pub tat: String,
    pub leases: String,
    pub pause: String,
}

impl LimitKeys {
    /// `{namespace.}aegis:rl:{<limit key>}:tat|leases|pause`.
    pub fn new(namespace: &str, limit_key: &str) -> Self {
        let prefix = if namespace.is_empty() { String::new() } else { format!("{namespace}.") };
        let base = format!("{prefix}aegis:rl:{{{limit_key}}}");
        LimitKeys {
            tat: format!("{base}:tat"),
            leases: format!("{base}:leases"),
            pause: format!("{base}:pause"),
        }
    }
}

/// The rules of one limit as the script applies them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EffectiveLimits {
    pub limit_key: String,
    /// Microseconds between starts, `Delay` rounded up; 0 means no spacing.
    pub delay_us: u64,
    /// Permits held at once; [`DEFAULT_CONCURRENCY`] when AuthInfo has none.
    pub concurrency: u32,
}

impl EffectiveLimits {
    pub fn from_limits(limits: &SourceLimits) -> Self {
        let nanos = limits.delay.as_nanos();
        EffectiveLimits {
            limit_key: limits.limit_key.clone(),
            delay_us: u64::try_from(nanos.div_ceil(1000)).unwrap_or(u64::MAX),
            concurrency: limits.concurrency.unwrap_or(DEFAULT_CONCURRENCY).max(1),
        }
    }

    pub fn delay(&self) -> Duration {
        Duration::from_micros(self.delay_us)
    }
}

/// What the script answered to `acquire`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grant {
    /// Start in `wait` (zero: now); the lease is held.
    Granted { wait: Duration },
    /// Not now; ask again after `retry_after`.
    Denied { retry_after: Duration, reason: DenyReason },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DenyReason {
    Paused,
    ConcurrencyFull,
    QueueTooLong,
}

struct Metrics {
    fallback: IntGaugeVec,
    wait: HistogramVec,
    redis_errors: IntCounterVec,
    pauses: IntCounterVec,
    leases_lost: IntCounterVec,
    missed_starts: IntCounterVec,
}

fn register<T: prometheus::core::Collector + Clone + 'static>(metric: T) -> T {
    // Fails only for a duplicate name; the metric still works unregistered.
    let _ = crate::metrics::REGISTRY.register(Box::new(metric.clone()));
    metric
}

static METRICS: LazyLock<Option<Metrics>> = LazyLock::new(|| {
    let label = &["limit_key"];
    Some(Metrics {
        fallback: register(
            IntGaugeVec::new(
                Opts::new("aegis_ratelimit_fallback", "1 while this process limits the key locally because Redis is unreachable"),
                label,
            )
            .ok()?,
        ),
        wait: register(
            HistogramVec::new(
                HistogramOpts::new("aegis_ratelimit_wait_seconds", "Time from asking for a permit to the permitted start")
                    .buckets(vec![0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0]),
                label,
            )
            .ok()?,
        ),
        redis_errors: register(
            IntCounterVec::new(Opts::new("aegis_ratelimit_redis_errors_total", "Limiter calls to Redis that failed"), label).ok()?,
        ),
        pauses: register(
            IntCounterVec::new(Opts::new("aegis_ratelimit_pauses_total", "Fleet-wide pauses set from vendor rate-limit signals"), label)
                .ok()?,
        ),
        missed_starts: register(
            IntCounterVec::new(
                Opts::new("aegis_ratelimit_missed_starts_total", "Reserved starts given up because this process woke too late for them"),
                label,
            )
            .ok()?,
        ),
        leases_lost: register(
            IntCounterVec::new(
                Opts::new("aegis_ratelimit_leases_lost_total", "Leases that expired while their request still ran (lease TTL too short)"),
                label,
            )
            .ok()?,
        ),
    })
});

/// The fleet-wide limiter of one process. Cheap to clone; clones share the
/// Redis connection and the fallback state.
#[derive(Clone)]
pub struct Limiter {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("redis", &self.inner.url)
            .field("namespace", &self.inner.namespace)
            .field("options", &self.inner.options)
            .finish()
    }
}

struct Inner {
    client: redis::Client,
    /// The URL without its password, for messages.
    url: String,
    namespace: String,
    options: LimiterOptions,
    connection: tokio::sync::Mutex<Option<ConnectionManager>>,
    health: Mutex<Health>,
    clock: Mutex<RedisClock>,
    locals: Mutex<HashMap<String, Arc<LocalLimiter>>>,
    warned_default: Mutex<HashSet<String>>,
}

/// Whether Redis answered lately. `down_since` is set for the length of an outage.
struct Health {
    down_since: Option<Instant>,
    last_try: Option<Instant>,
}

/// Maps start times on Redis's clock onto this process's clock.
///
/// A granted start is `wait` after the script ran. Counting `wait` from when
/// the reply arrived would add the reply's own delay, which varies from call to
/// call (scheduling on a busy machine), and that variation would show up as
/// starts closer than `Delay`. Instead, like NTP, the offset between the clocks
/// is estimated as the smallest (arrival − Redis time) seen in the last 5–10 s,
/// and a start goes out at `Redis start + offset`. The correction never moves
/// a start later than the naive estimate, nor more than [`MAX_CLOCK_CORRECTION`]
/// earlier, so a jump of Redis's wall clock cannot cause early starts beyond that.
struct RedisClock {
    base: Instant,
    best: Option<i128>,
    previous_best: Option<i128>,
    window_start: Instant,
}

const MAX_CLOCK_CORRECTION: Duration = Duration::from_millis(5);
const CLOCK_WINDOW: Duration = Duration::from_secs(5);

impl RedisClock {
    fn new() -> Self {
        let now = Instant::now();
        RedisClock { base: now, best: None, previous_best: None, window_start: now }
    }

    /// Records one reply and returns the local instant of the start `wait`
    /// after `redis_now_us`.
    fn start(&mut self, received: Instant, redis_now_us: u64, wait: Duration) -> Instant {
        let naive = received + wait;
        if redis_now_us == 0 {
            return naive;
        }
        if received - self.window_start > CLOCK_WINDOW {
            self.previous_best = self.best.take();
            self.window_start = received;
        }
        let local_us = i128::try_from((received - self.base).as_micros()).unwrap_or(i128::MAX);
        let sample = local_us - i128::from(redis_now_us);
        self.best = Some(self.best.map_or(sample, |b| b.min(sample)));
        let offset = match (self.best, self.previous_best) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) => a,
            _ => sample,
        };
        // How much later than the best-known delay this reply arrived.
        let late_us = u64::try_from(sample - offset).unwrap_or(0);
        let correction = Duration::from_micros(late_us).min(MAX_CLOCK_CORRECTION);
        naive.checked_sub(correction).unwrap_or(naive)
    }
}

impl Limiter {
    /// The limiter of a process: `AEGIS_REDIS_URL`, `AEGIS_NAMESPACE`, and
    /// [`LimiterOptions::from_env`]. Does not connect yet.
    pub fn new(settings: &Settings) -> Result<Self, LimitError> {
        Self::with_options(&settings.redis_url, &settings.namespace, LimiterOptions::from_env()?)
    }

    /// A limiter with explicit options. Does not connect yet: a Redis that is
    /// down at start-up means the local fallback, not a failed start.
    pub fn with_options(redis_url: &str, namespace: &str, options: LimiterOptions) -> Result<Self, LimitError> {
        let url = crate::db::redact_url(redis_url);
        let client = redis::Client::open(redis_url).map_err(|e| LimitError::BadUrl { url: url.clone(), reason: e.to_string() })?;
        if options.fallback_share == 0 {
            return Err(LimitError::BadSetting { setting: FALLBACK_SHARE_VAR, reason: "must be at least 1".into() });
        }
        Ok(Limiter {
            inner: Arc::new(Inner {
                client,
                url,
                namespace: namespace.to_string(),
                options,
                connection: tokio::sync::Mutex::new(None),
                health: Mutex::new(Health { down_since: None, last_try: None }),
                clock: Mutex::new(RedisClock::new()),
                locals: Mutex::new(HashMap::new()),
                warned_default: Mutex::new(HashSet::new()),
            }),
        })
    }

    pub fn options(&self) -> &LimiterOptions {
        &self.inner.options
    }

    pub fn keys(&self, limit_key: &str) -> LimitKeys {
        LimitKeys::new(&self.inner.namespace, limit_key)
    }

    /// Whether this process is limiting locally because Redis is unreachable.
    pub fn in_fallback(&self) -> bool {
        lock(&self.inner.health).down_since.is_some()
    }

    /// Waits until `limits` allow one more request to start, fleet-wide, and
    /// returns its permit. Hold the permit until the response body has been
    /// read or dropped.
    pub async fn acquire(&self, limits: &SourceLimits) -> Result<Permit, LimitError> {
        let missing_concurrency = limits.concurrency.is_none();
        let limits = EffectiveLimits::from_limits(limits);
        if missing_concurrency && lock(&self.inner.warned_default).insert(limits.limit_key.clone()) {
            tracing::warn!(
                limit_key = %limits.limit_key,
                "AuthInfo has no Concurrency; allowing {DEFAULT_CONCURRENCY} request(s) in flight across the fleet. Set \"Concurrency\" in AuthInfo to change it"
            );
        }
        let asked = Instant::now();
        let deadline = asked + self.inner.options.max_wait;
        let keys = self.keys(&limits.limit_key);
        let (mut redis_time, mut redis_calls, mut missed) = (Duration::ZERO, 0u32, 0u32);
        loop {
            if self.skip_redis() {
                return Ok(self.local_permit(&limits, asked).await);
            }
            let lease_id = uuid::Uuid::new_v4().simple().to_string();
            let call = Instant::now();
            let result = self.grant_timed(&keys, &limits, &lease_id).await;
            redis_time += call.elapsed();
            redis_calls += 1;
            match result {
                Err(e) => {
                    self.mark_down(&limits.limit_key, &e);
                    return Ok(self.local_permit(&limits, asked).await);
                }
                Ok((grant, start)) => {
                    self.mark_up();
                    set_fallback_gauge(&limits.limit_key, false);
                    match grant {
                        Grant::Granted { wait } => {
                            let permit = self.global_permit(keys.clone(), &limits, lease_id, start);
                            // A pause set while this caller waited for its reserved
                            // start also holds for it. The check runs shortly before
                            // the start, so its round trip does not delay the start
                            // (that delay would be jitter against the spacing).
                            if wait > PAUSE_CHECK_LEAD && start > Instant::now() + PAUSE_CHECK_LEAD {
                                tokio::time::sleep_until(start - PAUSE_CHECK_LEAD).await;
                                let call = Instant::now();
                                let paused = self.paused(&keys, &limits.limit_key).await;
                                redis_time += call.elapsed();
                                redis_calls += 1;
                                match paused {
                                    Ok(false) => {}
                                    Ok(true) => {
                                        drop(permit);
                                        continue;
                                    }
                                    // Redis went away while this caller waited: its
                                    // grant can no longer be trusted to be counted,
                                    // so it joins the local limit.
                                    Err(e) => {
                                        drop(permit);
                                        self.mark_down(&limits.limit_key, &e);
                                        return Ok(self.local_permit(&limits, asked).await);
                                    }
                                }
                            }
                            tokio::time::sleep_until(start).await;
                            // A caller that wakes (or got its reply) much later than
                            // its reserved start would go out too close to the next
                            // caller's start: it gives the slot up and takes a new one.
                            if Instant::now().saturating_duration_since(start) > MAX_LATENESS && missed < MAX_MISSED_STARTS {
                                missed += 1;
                                if let Some(m) = METRICS.as_ref() {
                                    m.missed_starts.with_label_values(&[&limits.limit_key]).inc();
                                }
                                drop(permit);
                                continue;
                            }
                            let mut permit = permit;
                            permit.waited = asked.elapsed();
                            permit.redis_time = redis_time;
                            permit.redis_calls = redis_calls;
                            observe_wait(&limits.limit_key, permit.waited);
                            return Ok(permit);
                        }
                        Grant::Denied { retry_after, reason } => {
                            let now = Instant::now();
                            if now >= deadline {
                                return Err(LimitError::WaitTooLong {
                                    limit_key: limits.limit_key.clone(),
                                    waited: now - asked,
                                    max_wait: self.inner.options.max_wait,
                                });
                            }
                            let base = match reason {
                                DenyReason::ConcurrencyFull => retry_after.min(self.inner.options.concurrency_poll),
                                // Re-check at least every second so a changed
                                // limit or a lifted pause is seen.
                                DenyReason::Paused | DenyReason::QueueTooLong => retry_after.min(Duration::from_secs(1)),
                            };
                            let sleep = jitter(base).min(deadline - now);
                            tokio::time::sleep(sleep).await;
                        }
                    }
                }
            }
        }
    }

    /// Runs the script's `acquire` once: the building block of
    /// [`Limiter::acquire`], public for tests of the script's edge cases. A
    /// granted lease is `lease_id`; release it with [`Limiter::release_lease`].
    pub async fn try_grant(&self, keys: &LimitKeys, limits: &EffectiveLimits, lease_id: &str) -> Result<Grant, LimitError> {
        Ok(self.grant_timed(keys, limits, lease_id).await?.0)
    }

    /// [`Limiter::try_grant`], plus the local instant a granted start maps to.
    async fn grant_timed(&self, keys: &LimitKeys, limits: &EffectiveLimits, lease_id: &str) -> Result<(Grant, Instant), LimitError> {
        let ttl_ms = duration_ms(self.inner.options.lease_ttl).max(1);
        let ahead_us = u64::try_from(self.inner.options.max_ahead.as_micros()).unwrap_or(u64::MAX);
        let mut inv = SCRIPT.prepare_invoke();
        inv.key(&keys.tat)
            .key(&keys.leases)
            .key(&keys.pause)
            .arg("acquire")
            .arg(limits.delay_us)
            .arg(limits.concurrency)
            .arg(ttl_ms)
            .arg(lease_id)
            .arg(ahead_us);
        let reply: (i64, i64, i64, i64) = self.run(&limits.limit_key, inv).await?;
        let received = Instant::now();
        let micros = Duration::from_micros(u64::try_from(reply.1).unwrap_or(0));
        let grant = match reply {
            (1, _, _, _) => Grant::Granted { wait: micros },
            (_, _, 1, _) => Grant::Denied { retry_after: micros, reason: DenyReason::Paused },
            (_, _, 3, _) => Grant::Denied { retry_after: micros, reason: DenyReason::QueueTooLong },
            _ => Grant::Denied { retry_after: micros, reason: DenyReason::ConcurrencyFull },
        };
        let redis_now = u64::try_from(reply.3).unwrap_or(0);
        let start = lock(&self.inner.clock).start(received, redis_now, micros);
        Ok((grant, start))
    }

    /// Removes a lease; `true` if it was still held. Idempotent.
    pub async fn release_lease(&self, keys: &LimitKeys, limit_key: &str, lease_id: &str) -> Result<bool, LimitError> {
        let mut inv = SCRIPT.prepare_invoke();
        inv.key(&keys.tat).key(&keys.leases).key(&keys.pause).arg("release").arg(lease_id);
        let removed: i64 = self.run(limit_key, inv).await?;
        Ok(removed > 0)
    }

    /// Extends a held lease to now + lease TTL; `false` if it had expired.
    pub async fn extend_lease(&self, keys: &LimitKeys, limit_key: &str, lease_id: &str) -> Result<bool, LimitError> {
        let mut inv = SCRIPT.prepare_invoke();
        inv.key(&keys.tat)
            .key(&keys.leases)
            .key(&keys.pause)
            .arg("extend")
            .arg(lease_id)
            .arg(duration_ms(self.inner.options.lease_ttl).max(1));
        let extended: i64 = self.run(limit_key, inv).await?;
        Ok(extended > 0)
    }

    /// Pauses `limit_key` for the whole fleet for `duration` from now (Redis's
    /// clock). A longer pause already set is kept.
    pub async fn pause(&self, limit_key: &str, duration: Duration) -> Result<(), LimitError> {
        let keys = self.keys(limit_key);
        let mut inv = SCRIPT.prepare_invoke();
        inv.key(&keys.tat)
            .key(&keys.leases)
            .key(&keys.pause)
            .arg("pause")
            .arg(u64::try_from(duration.as_micros()).unwrap_or(u64::MAX));
        let _: i64 = self.run(limit_key, inv).await?;
        if let Some(m) = METRICS.as_ref() {
            m.pauses.with_label_values(&[limit_key]).inc();
        }
        tracing::info!(limit_key, pause_ms = duration_ms(duration), "source paused for the whole fleet");
        Ok(())
    }

    /// Whether `keys` is paused now (one `PTTL`).
    async fn paused(&self, keys: &LimitKeys, limit_key: &str) -> Result<bool, LimitError> {
        let result = async {
            let mut con = self.connection().await?;
            match tokio::time::timeout(self.inner.options.redis_timeout, redis::cmd("PTTL").arg(&keys.pause).query_async::<i64>(&mut con)).await {
                Ok(r) => r,
                Err(_) => Err(redis::RedisError::from((redis::ErrorKind::IoError, "timed out"))),
            }
        }
        .await;
        result.map(|ms| ms > 0).map_err(|source| self.redis_error(limit_key, source))
    }

    fn redis_error(&self, limit_key: &str, source: redis::RedisError) -> LimitError {
        if let Some(m) = METRICS.as_ref() {
            m.redis_errors.with_label_values(&[limit_key]).inc();
        }
        LimitError::Redis { url: self.inner.url.clone(), source }
    }

    async fn run<T: redis::FromRedisValue>(&self, limit_key: &str, inv: redis::ScriptInvocation<'_>) -> Result<T, LimitError> {
        let result = async {
            let mut con = self.connection().await?;
            match tokio::time::timeout(self.inner.options.redis_timeout, inv.invoke_async::<T>(&mut con)).await {
                Ok(r) => r,
                Err(_) => Err(redis::RedisError::from((redis::ErrorKind::IoError, "timed out"))),
            }
        }
        .await;
        result.map_err(|source| self.redis_error(limit_key, source))
    }

    async fn connection(&self) -> Result<ConnectionManager, redis::RedisError> {
        let mut slot = self.inner.connection.lock().await;
        if let Some(con) = slot.as_ref() {
            return Ok(con.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(self.inner.options.redis_timeout)
            .set_response_timeout(self.inner.options.redis_timeout)
            .set_number_of_retries(1)
            .set_max_delay(1000);
        let con = match tokio::time::timeout(
            self.inner.options.redis_timeout * 2,
            ConnectionManager::new_with_config(self.inner.client.clone(), config),
        )
        .await
        {
            Ok(r) => r?,
            Err(_) => return Err(redis::RedisError::from((redis::ErrorKind::IoError, "connect timed out"))),
        };
        *slot = Some(con.clone());
        Ok(con)
    }

    /// In fallback, Redis is tried again only every `redis_retry_interval`.
    fn skip_redis(&self) -> bool {
        let mut h = lock(&self.inner.health);
        if h.down_since.is_none() {
            return false;
        }
        let now = Instant::now();
        match h.last_try {
            Some(t) if now - t < self.inner.options.redis_retry_interval => true,
            _ => {
                h.last_try = Some(now);
                false
            }
        }
    }

    fn mark_down(&self, limit_key: &str, error: &LimitError) {
        let mut h = lock(&self.inner.health);
        h.last_try = Some(Instant::now());
        if h.down_since.is_none() {
            h.down_since = Some(Instant::now());
            let share = self.inner.options.fallback_share;
            tracing::warn!(
                error = %error,
                limit_key,
                fallback_share = share,
                "Redis is unreachable: limiting requests locally with Delay × {share} and Concurrency / {share} until it is back"
            );
        }
        drop(h);
        set_fallback_gauge(limit_key, true);
    }

    fn mark_up(&self) {
        let mut h = lock(&self.inner.health);
        if let Some(since) = h.down_since.take() {
            tracing::info!(outage_ms = duration_ms(since.elapsed()), "Redis is reachable again: fleet-wide rate limits apply again");
            // Every key's gauge returns to 0 with its next global grant.
        }
    }

    async fn local_permit(&self, limits: &EffectiveLimits, asked: Instant) -> Permit {
        set_fallback_gauge(&limits.limit_key, true);
        let share = self.inner.options.fallback_share.max(1);
        let local = {
            let mut locals = lock(&self.inner.locals);
            Arc::clone(locals.entry(limits.limit_key.clone()).or_insert_with(|| Arc::new(LocalLimiter::new())))
        };
        let delay = limits.delay().saturating_mul(share);
        let concurrency = (limits.concurrency / share).max(1);
        let permit = local.acquire(delay, concurrency).await;
        let waited = asked.elapsed();
        observe_wait(&limits.limit_key, waited);
        Permit { waited, redis_time: Duration::ZERO, redis_calls: 0, global: false, inner: Some(PermitInner::Local(permit)) }
    }

    fn global_permit(&self, keys: LimitKeys, limits: &EffectiveLimits, lease_id: String, start: Instant) -> Permit {
        let cancel = CancellationToken::new();
        // Extend the lease while the request runs past half of its TTL.
        let limiter = self.clone();
        let extend_keys = keys.clone();
        let limit_key = limits.limit_key.clone();
        let id = lease_id.clone();
        let stop = cancel.clone();
        tokio::spawn(async move {
            let ttl = limiter.inner.options.lease_ttl;
            let mut next = start + ttl / 2;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep_until(next) => {}
                }
                match limiter.extend_lease(&extend_keys, &limit_key, &id).await {
                    Ok(true) => {}
                    Ok(false) => {
                        lease_lost(&limit_key);
                        return;
                    }
                    Err(e) => tracing::debug!(error = %e, limit_key = %limit_key, "could not extend a lease"),
                }
                next = Instant::now() + ttl / 3;
            }
        });
        Permit {
            waited: Duration::ZERO,
            redis_time: Duration::ZERO,
            redis_calls: 0,
            global: true,
            inner: Some(PermitInner::Global { limiter: self.clone(), keys, limit_key: limits.limit_key.clone(), lease_id, cancel }),
        }
    }
}

fn lease_lost(limit_key: &str) {
    if let Some(m) = METRICS.as_ref() {
        m.leases_lost.with_label_values(&[limit_key]).inc();
    }
    tracing::warn!(limit_key, "a rate-limit lease expired while its request still ran; the lease TTL is shorter than the request");
}

fn set_fallback_gauge(limit_key: &str, on: bool) {
    if let Some(m) = METRICS.as_ref() {
        m.fallback.with_label_values(&[limit_key]).set(i64::from(on));
    }
}

fn observe_wait(limit_key: &str, waited: Duration) {
    if let Some(m) = METRICS.as_ref() {
        m.wait.with_label_values(&[limit_key]).observe(waited.as_secs_f64());
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `base` plus 0–20 % at random, so waiting callers do not retry in step.
fn jitter(base: Duration) -> Duration {
    let extra = rand::thread_rng().gen_range(0.0..0.2);
    base + base.mul_f64(extra)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Permission for one request to start. Hold it until the response body has
/// been read or dropped; dropping it releases the concurrency slot.
pub struct Permit {
    waited: Duration,
    redis_time: Duration,
    redis_calls: u32,
    global: bool,
    inner: Option<PermitInner>,
}

enum PermitInner {
    Global { limiter: Limiter, keys: LimitKeys, limit_key: String, lease_id: String, cancel: CancellationToken },
    Local(LocalPermit),
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit").field("waited", &self.waited).field("global", &self.global).finish()
    }
}

impl Permit {
    /// Time from asking to the permitted start.
    pub fn waited(&self) -> Duration {
        self.waited
    }

    /// Time spent in Redis calls for this permit: the acquire overhead.
    pub fn redis_time(&self) -> Duration {
        self.redis_time
    }

    /// Redis round trips this permit took (1 when no wait was needed).
    pub fn redis_calls(&self) -> u32 {
        self.redis_calls
    }

    /// `true` for a fleet-wide permit, `false` for one of the local fallback.
    pub fn is_global(&self) -> bool {
        self.global
    }

    /// Releases now and reports whether the lease was still held (`true` for
    /// local permits). Dropping a permit releases it too, in the background.
    pub async fn release(mut self) -> Result<bool, LimitError> {
        match self.inner.take() {
            Some(PermitInner::Global { limiter, keys, limit_key, lease_id, cancel }) => {
                cancel.cancel();
                limiter.release_lease(&keys, &limit_key, &lease_id).await
            }
            Some(PermitInner::Local(p)) => {
                drop(p);
                Ok(true)
            }
            None => Ok(true),
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(PermitInner::Global { limiter, keys, limit_key, lease_id, cancel }) = self.inner.take() {
            cancel.cancel();
            // Without a runtime (process exit) the lease simply expires.
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move {
                    if let Err(e) = limiter.release_lease(&keys, &limit_key, &lease_id).await {
                        tracing::debug!(error = %e, limit_key = %limit_key, "could not release a lease; it expires by itself");
                    }
                });
            }
        }
    }
}

/// Edge cases of the script, against the real Redis of the test environment
/// (`AEGIS_TEST_REDIS_URL`, default loopback); each test has its own namespace.
#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(lease_ttl: Duration) -> Limiter {
        let url = std::env::var("AEGIS_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into());
        let ns = format!("rltest_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        Limiter::with_options(&url, &ns, LimiterOptions { lease_ttl, ..LimiterOptions::default() }).expect("limiter")
    }

    fn limits(delay: Duration, concurrency: u32) -> EffectiveLimits {
        EffectiveLimits { limit_key: "sc1".into(), delay_us: u64::try_from(delay.as_micros()).expect("us"), concurrency }
    }

    async fn grant(l: &Limiter, lim: &EffectiveLimits, id: &str) -> Grant {
        l.try_grant(&l.keys(&lim.limit_key), lim, id).await.expect("redis reachable")
    }

    #[tokio::test]
    async fn delay_zero_means_no_spacing() {
        let l = limiter(Duration::from_secs(30));
        let lim = limits(Duration::ZERO, 100);
        for i in 0..20 {
            assert_eq!(grant(&l, &lim, &format!("l{i}")).await, Grant::Granted { wait: Duration::ZERO });
        }
    }

    #[tokio::test]
    async fn spacing_reserves_consecutive_starts_one_delay_apart() {
        let l = limiter(Duration::from_secs(30));
        let lim = limits(Duration::from_millis(100), 10);
        let mut waits = Vec::new();
        for i in 0..4 {
            match grant(&l, &lim, &format!("l{i}")).await {
                Grant::Granted { wait } => waits.push(wait),
                other => panic!("expected a grant, got {other:?}"),
            }
        }
        assert_eq!(waits[0], Duration::ZERO);
        // Each reservation is one Delay after the previous, by Redis's clock;
        // the calls themselves take a little time, so the waits shrink by that.
        for (i, w) in waits.iter().enumerate().skip(1) {
            let expected = Duration::from_millis(100 * i as u64);
            assert!(*w <= expected && *w + Duration::from_millis(50) > expected, "wait {i} was {w:?}");
        }
    }

    #[tokio::test]
    async fn idle_time_is_not_banked_as_a_burst() {
        let l = limiter(Duration::from_secs(30));
        let lim = limits(Duration::from_millis(50), 10);
        assert_eq!(grant(&l, &lim, "a").await, Grant::Granted { wait: Duration::ZERO });
        // Wait (by polling Redis's own decision) until the reserved slot has passed.
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let keys = l.keys("sc1");
            let mut con = l.connection().await.expect("connection");
            let pttl: i64 = redis::cmd("PTTL").arg(&keys.tat).query_async(&mut con).await.expect("pttl");
            // The tat key lives until tat + 1 s; below 1 s left means tat is past.
            if pttl < 950 {
                break;
            }
            assert!(Instant::now() < deadline, "tat never passed");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(grant(&l, &lim, "b").await, Grant::Granted { wait: Duration::ZERO });
        match grant(&l, &lim, "c").await {
            Grant::Granted { wait } => assert!(wait > Duration::from_millis(40), "second start after idle only {wait:?} later"),
            other => panic!("expected a grant, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn concurrency_one_admits_one_until_released_and_release_is_idempotent() {
        let l = limiter(Duration::from_secs(30));
        let lim = limits(Duration::ZERO, 1);
        let keys = l.keys("sc1");
        assert_eq!(grant(&l, &lim, "a").await, Grant::Granted { wait: Duration::ZERO });
        assert!(matches!(grant(&l, &lim, "b").await, Grant::Denied { reason: DenyReason::ConcurrencyFull, .. }));
        assert!(l.release_lease(&keys, "sc1", "a").await.expect("release"));
        assert!(!l.release_lease(&keys, "sc1", "a").await.expect("second release"), "a second release finds nothing");
        assert_eq!(grant(&l, &lim, "b").await, Grant::Granted { wait: Duration::ZERO });
    }

    #[tokio::test]
    async fn an_unreleased_lease_expires_by_itself() {
        let l = limiter(Duration::from_millis(300));
        let lim = limits(Duration::ZERO, 1);
        let asked = Instant::now();
        assert_eq!(grant(&l, &lim, "crashed").await, Grant::Granted { wait: Duration::ZERO });
        let retry_after = match grant(&l, &lim, "next").await {
            Grant::Denied { retry_after, reason: DenyReason::ConcurrencyFull } => retry_after,
            other => panic!("expected a denial, got {other:?}"),
        };
        assert!(retry_after <= Duration::from_millis(300), "hint {retry_after:?} is beyond the lease");
        loop {
            if let Grant::Granted { .. } = grant(&l, &lim, "next").await {
                break;
            }
            assert!(asked.elapsed() < Duration::from_secs(2), "the lease never expired");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(asked.elapsed() >= Duration::from_millis(250), "the lease expired early: {:?}", asked.elapsed());
        let keys = l.keys("sc1");
        assert!(!l.extend_lease(&keys, "sc1", "crashed").await.expect("extend"), "an expired lease cannot be extended");
        assert!(l.extend_lease(&keys, "sc1", "next").await.expect("extend"));
    }

    #[tokio::test]
    async fn a_pause_denies_everyone_until_it_ends() {
        let l = limiter(Duration::from_secs(30));
        let lim = limits(Duration::ZERO, 5);
        l.pause("sc1", Duration::from_millis(400)).await.expect("pause");
        // A shorter pause does not shorten a longer one.
        l.pause("sc1", Duration::from_millis(10)).await.expect("pause");
        match grant(&l, &lim, "a").await {
            Grant::Denied { retry_after, reason: DenyReason::Paused } => {
                assert!(retry_after > Duration::from_millis(300) && retry_after <= Duration::from_millis(400), "{retry_after:?}")
            }
            other => panic!("expected a pause, got {other:?}"),
        }
        let source_limits = SourceLimits { delay: Duration::ZERO, concurrency: Some(5), retries: 0, limit_key: "sc1".into() };
        let started = Instant::now();
        let permit = l.acquire(&source_limits).await.expect("permit after the pause");
        assert!(started.elapsed() >= Duration::from_millis(300), "granted during the pause");
        assert!(permit.is_global());
        assert!(permit.release().await.expect("release"));
    }

    #[tokio::test]
    async fn keys_share_one_hash_tag_and_the_namespace() {
        let k = LimitKeys::new("ns1", "sc-9");
        assert_eq!(k.tat, "ns1.aegis:rl:{sc-9}:tat");
        assert_eq!(k.leases, "ns1.aegis:rl:{sc-9}:leases");
        assert_eq!(k.pause, "ns1.aegis:rl:{sc-9}:pause");
        assert_eq!(LimitKeys::new("", "x").tat, "aegis:rl:{x}:tat");
    }

    #[test]
    fn missing_concurrency_and_nanosecond_delays_have_defined_meanings() {
        let e = EffectiveLimits::from_limits(&SourceLimits {
            delay: Duration::from_nanos(10),
            concurrency: None,
            retries: 0,
            limit_key: "k".into(),
        });
        assert_eq!(e.concurrency, DEFAULT_CONCURRENCY);
        assert_eq!(e.delay_us, 1, "10 ns rounds up to 1 µs, in effect no spacing");
    }

    #[tokio::test]
    async fn an_unreachable_redis_falls_back_to_a_local_limit() {
        // Port 1 on loopback refuses connections at once.
        let l = Limiter::with_options("redis://127.0.0.1:1/0", "x", LimiterOptions::default()).expect("limiter");
        let limits = SourceLimits { delay: Duration::from_millis(10), concurrency: Some(8), retries: 0, limit_key: "sc1".into() };
        let a = l.acquire(&limits).await.expect("local permit");
        assert!(!a.is_global());
        assert!(l.in_fallback());
        let started = Instant::now();
        let b = l.acquire(&limits).await.expect("local permit");
        // Delay × 4 (the default share) between local starts.
        assert!(started.elapsed() >= Duration::from_millis(35), "local spacing was {:?}", started.elapsed());
        // Concurrency 8 / 4 = 2 permits locally: a third waits.
        assert!(tokio::time::timeout(Duration::from_millis(300), l.acquire(&limits)).await.is_err());
        drop((a, b));
    }
}

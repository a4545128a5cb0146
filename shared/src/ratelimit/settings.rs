//! The live rate-limit settings of each SourceConfig, read from
//! `SourceConfig.AuthInfo` in MariaDB.
//!
//! Operators change `Delay` and `Concurrency` with SQL; each process re-reads a
//! SourceConfig's AuthInfo at most every [`REFRESH`] (one query per source per
//! refresh, not per request), so a change is seen fleet-wide within 5 seconds
//! without a restart. When the database is unreachable at refresh, the last
//! known settings stay in force.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::MySqlPool;
use tokio::time::Instant;

use super::LimitError;
use crate::model::source_config::{limits_from_auth, SourceLimits};
use crate::model::ModelError;

/// How old cached settings may get before they are read again.
pub const REFRESH: Duration = Duration::from_secs(2);

/// Rate-limit settings by SourceConfig ID, refreshed from the database.
#[derive(Clone)]
pub struct LimitsCache {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for LimitsCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LimitsCache").field("refresh", &self.inner.refresh).finish()
    }
}

struct Inner {
    source: Source,
    refresh: Duration,
    entries: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Entry>>>>>,
}

enum Source {
    Database(MySqlPool),
    Fixed(HashMap<String, SourceLimits>),
}

struct Entry {
    limits: SourceLimits,
    read_at: Instant,
}

impl LimitsCache {
    /// Settings read from `SourceConfig` through `pool`, refreshed every [`REFRESH`].
    pub fn new(pool: MySqlPool) -> Self {
        Self::with_refresh(pool, REFRESH)
    }

    pub fn with_refresh(pool: MySqlPool, refresh: Duration) -> Self {
        Self::build(Source::Database(pool), refresh)
    }

    /// Settings that never change, for benchmarks and tools without a database.
    pub fn fixed(limits: impl IntoIterator<Item = (String, SourceLimits)>) -> Self {
        Self::build(Source::Fixed(limits.into_iter().collect()), Duration::MAX)
    }

    fn build(source: Source, refresh: Duration) -> Self {
        LimitsCache { inner: Arc::new(Inner { source, refresh, entries: Mutex::new(HashMap::new()) }) }
    }

    /// The current settings of a SourceConfig. Reads the database when the
    /// cached value is older than the refresh interval; concurrent callers for
    /// one SourceConfig share that one read.
    pub async fn get(&self, source_config_id: &str) -> Result<SourceLimits, LimitError> {
        let pool = match &self.inner.source {
            Source::Fixed(map) => {
                return map.get(source_config_id).cloned().ok_or_else(|| LimitError::Limits {
                    source_config: source_config_id.to_string(),
                    source: ModelError::NotFound { what: "source config", key: source_config_id.to_string() },
                })
            }
            Source::Database(pool) => pool,
        };
        let slot = {
            let mut entries = self.inner.entries.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(entries.entry(source_config_id.to_string()).or_default())
        };
        let mut entry = slot.lock().await;
        if let Some(e) = entry.as_ref() {
            if e.read_at.elapsed() < self.inner.refresh {
                return Ok(e.limits.clone());
            }
        }
        match read(pool, source_config_id).await {
            Ok(limits) => {
                if let Some(old) = entry.as_ref() {
                    if old.limits != limits {
                        tracing::info!(
                            source_config = source_config_id,
                            delay_ns = u64::try_from(limits.delay.as_nanos()).unwrap_or(u64::MAX),
                            concurrency = ?limits.concurrency,
                            limit_key = %limits.limit_key,
                            "rate-limit settings changed"
                        );
                    }
                }
                *entry = Some(Entry { limits: limits.clone(), read_at: Instant::now() });
                Ok(limits)
            }
            Err(e) => match entry.as_mut() {
                // A database blip must not stop requests: keep the last known
                // settings and try again at the next refresh.
                Some(old) => {
                    tracing::warn!(error = %e, source_config = source_config_id, "could not re-read rate-limit settings; keeping the last known ones");
                    old.read_at = Instant::now();
                    Ok(old.limits.clone())
                }
                None => Err(e),
            },
        }
    }
}

async fn read(pool: &MySqlPool, id: &str) -> Result<SourceLimits, LimitError> {
    let wrap = |source: ModelError| LimitError::Limits { source_config: id.to_string(), source };
    let text: Option<String> = sqlx::query_scalar("SELECT AuthInfo FROM SourceConfig WHERE ID = ?")
        .bind(id)
        .fetch_optional(pool)
        .await
        .map_err(|e| wrap(ModelError::from(e)))?;
    let text = text.ok_or_else(|| wrap(ModelError::NotFound { what: "source config", key: id.to_string() }))?;
    let auth = match serde_json::from_str(&text) {
        Ok(serde_json::Value::Object(m)) => m,
        Ok(_) => return Err(wrap(ModelError::invalid(format!("SourceConfig {id} AuthInfo"), "is not a JSON object"))),
        Err(e) => return Err(wrap(ModelError::invalid(format!("SourceConfig {id} AuthInfo"), e.to_string()))),
    };
    limits_from_auth(id, &auth).map_err(wrap)
}

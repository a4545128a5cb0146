//! Typed configuration for every Aegis binary, read once at start-up.
//!
//! Values come from environment variables (`AEGIS_*`, plus the standard
//! `OTEL_EXPORTER_OTLP_ENDPOINT` and `RUST_LOG`) and, optionally, from a TOML file
//! named by `AEGIS_CONFIG_FILE` whose keys are the variable names in lower case
//! without the `AEGIS_` prefix (`database_url = "mysql://…"`). The environment wins
//! over the file. Every default points at the loopback services, so a
//! zero-configuration run works on a developer machine.
//!
//! A bad value fails start-up with the setting's name and what was expected; see
//! [`ConfigError`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::secrets::{Keyring, SecretsError};

/// The configuration of one Aegis process. Binaries use the parts they need.
#[derive(Clone, Debug)]
pub struct Settings {
    /// `AEGIS_DATABASE_URL`: the MySQL/MariaDB holding JobHistory and friends.
    pub database_url: String,
    /// `AEGIS_DATABASE_MAX_CONNECTIONS`: pool size of this process.
    pub database_max_connections: u32,
    /// `AEGIS_AMQP_URL`: RabbitMQ.
    pub amqp_url: String,
    /// `AEGIS_REDIS_URL`: Redis, for the fleet-wide rate limits.
    pub redis_url: String,
    /// `AEGIS_NAMESPACE`: prefix of queue, exchange and Redis key names, so two
    /// environments (or two test runs) can share servers. Empty by default.
    pub namespace: String,
    /// `AEGIS_ENCRYPTION_KEY` / `AEGIS_ENCRYPTION_KEY_FILE`: the keyring that seals
    /// SourceConfig secrets. `None` when neither is set.
    pub keyring: Option<Keyring>,
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`: where traces go; no export when unset.
    pub otlp_endpoint: Option<String>,
    /// `AEGIS_LOG_FORMAT`: `text` (the original's line shape) or `json`.
    pub log_format: LogFormat,
    /// `AEGIS_LOG_COLOR`: `auto` (colour only on a terminal), `always` or `never`.
    pub log_color: LogColor,
    /// `AEGIS_LOG_TO_DB`: also write job log lines into the `Logs` table.
    pub log_to_db: bool,
    /// `AEGIS_HTTP_ADDR`: where `/metrics`, `/healthz` and `/readyz` are served.
    /// `off` disables the endpoint.
    pub http_addr: Option<SocketAddr>,
    pub coordinator: CoordinatorSettings,
    pub worker: WorkerSettings,
}

/// Settings only the coordinator reads.
#[derive(Clone, Debug)]
pub struct CoordinatorSettings {
    /// `AEGIS_POLL_INTERVAL`: how often pending JobHistory rows are looked for.
    pub poll_interval: Duration,
    /// `AEGIS_SCHEDULE_INTERVAL`: how often JobSchedule rows are evaluated.
    pub schedule_interval: Duration,
    /// `AEGIS_DISPATCH_TIMEOUT`: a dispatched row no worker claimed within this is published again.
    pub dispatch_timeout: Duration,
    /// `AEGIS_MAX_ATTEMPTS`: attempts before a row whose worker vanished ends as ERROR.
    pub max_attempts: u32,
    /// `AEGIS_DISPATCH_BATCH`: rows claimed per poll.
    pub dispatch_batch: u32,
    /// `AEGIS_DISPATCH_WINDOW`: at most this many rows are dispatched but not yet
    /// claimed; the rest wait in the database, where Priority orders them.
    pub dispatch_window: u32,
    /// `AEGIS_IDLE_LOG_INTERVAL`: how often the `Job Runner: Sleeping for …` line is logged at INFO.
    pub idle_log_interval: Duration,
}

/// Settings only the worker reads.
#[derive(Clone, Debug)]
pub struct WorkerSettings {
    /// `AEGIS_WORKER_CONCURRENCY`: jobs run at once (also the AMQP prefetch).
    pub concurrency: u16,
    /// `AEGIS_WORKER_JOBS`: comma-separated job names this worker subscribes to; empty means all.
    pub jobs: Vec<String>,
    /// `AEGIS_WORKER_ID`: a stable name for this worker; defaults to host name + process id.
    pub worker_id: String,
    /// `AEGIS_LEASE`: how long a claim lasts without a heartbeat.
    pub lease: Duration,
    /// `AEGIS_HEARTBEAT_INTERVAL`: how often the lease is extended and cancel requests are seen.
    pub heartbeat_interval: Duration,
    /// `AEGIS_SHUTDOWN_GRACE`: on SIGTERM, how long running jobs may finish before their rows are released.
    pub shutdown_grace: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogColor {
    Auto,
    Always,
    Never,
}

/// Why the configuration could not be read. Every variant names the setting.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{setting}: {value:?} is not valid; expected {expected}")]
    Invalid {
        setting: String,
        value: String,
        expected: String,
    },
    #[error("AEGIS_CONFIG_FILE: cannot read {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("{setting}: {source}")]
    Secrets {
        setting: &'static str,
        #[source]
        source: SecretsError,
    },
}

/// Where settings are looked up: the environment first, then the optional file.
struct Source {
    env: HashMap<String, String>,
    file: HashMap<String, String>,
}

impl Source {
    fn get(&self, name: &str) -> Option<String> {
        if let Some(v) = self.env.get(name) {
            return Some(v.clone());
        }
        let key = name
            .strip_prefix("AEGIS_")
            .unwrap_or(name)
            .to_ascii_lowercase();
        self.file.get(&key).cloned()
    }

    fn string(&self, name: &str, default: &str) -> String {
        self.get(name)
            .filter(|v| !v.trim().is_empty())
            .unwrap_or_else(|| default.to_string())
    }

    fn parse<T: std::str::FromStr>(
        &self,
        name: &str,
        default: T,
        expected: &str,
    ) -> Result<T, ConfigError> {
        match self.get(name).filter(|v| !v.trim().is_empty()) {
            None => Ok(default),
            Some(v) => v.trim().parse().map_err(|_| invalid(name, &v, expected)),
        }
    }

    fn duration(&self, name: &str, default: Duration) -> Result<Duration, ConfigError> {
        match self.get(name).filter(|v| !v.trim().is_empty()) {
            None => Ok(default),
            Some(v) => parse_duration(&v).ok_or_else(|| {
                invalid(
                    name,
                    &v,
                    "a duration such as 500ms, 5s, 2m or a number of seconds",
                )
            }),
        }
    }

    fn bool(&self, name: &str, default: bool) -> Result<bool, ConfigError> {
        match self.get(name).filter(|v| !v.trim().is_empty()) {
            None => Ok(default),
            Some(v) => match v.trim().to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "on" => Ok(true),
                "0" | "false" | "no" | "off" => Ok(false),
                _ => Err(invalid(name, &v, "true or false")),
            },
        }
    }
}

fn invalid(setting: &str, value: &str, expected: &str) -> ConfigError {
    ConfigError::Invalid {
        setting: setting.to_string(),
        value: value.to_string(),
        expected: expected.to_string(),
    }
}

/// Parses `250ms`, `5s`, `2m`, `1h` or a bare number of seconds (fractions allowed).
pub fn parse_duration(text: &str) -> Option<Duration> {
    let t = text.trim();
    let (number, unit) = match t.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => (&t[..i], &t[i..]),
        None => (t, "s"),
    };
    let n: f64 = number.trim().parse().ok()?;
    if !n.is_finite() || n < 0.0 {
        return None;
    }
    let seconds = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    };
    Some(Duration::from_secs_f64(seconds))
}

impl Settings {
    /// Reads the process environment (and `AEGIS_CONFIG_FILE` if set).
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(std::env::vars().collect())
    }

    /// Reads settings from the given variables; `from_env` with a testable input.
    pub fn from_vars(env: HashMap<String, String>) -> Result<Self, ConfigError> {
        let file = match env.get("AEGIS_CONFIG_FILE").filter(|p| !p.is_empty()) {
            Some(path) => read_file(PathBuf::from(path))?,
            None => HashMap::new(),
        };
        let src = Source { env, file };

        let keyring = match (
            src.get("AEGIS_ENCRYPTION_KEY")
                .filter(|v| !v.trim().is_empty()),
            src.get("AEGIS_ENCRYPTION_KEY_FILE")
                .filter(|v| !v.trim().is_empty()),
        ) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "AEGIS_ENCRYPTION_KEY",
                    "(set)",
                    "either AEGIS_ENCRYPTION_KEY or AEGIS_ENCRYPTION_KEY_FILE, not both",
                ))
            }
            (Some(text), None) => {
                Some(
                    Keyring::parse(&text).map_err(|source| ConfigError::Secrets {
                        setting: "AEGIS_ENCRYPTION_KEY",
                        source,
                    })?,
                )
            }
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path.trim()).map_err(|e| {
                    invalid(
                        "AEGIS_ENCRYPTION_KEY_FILE",
                        &path,
                        &format!("a readable key file ({e})"),
                    )
                })?;
                Some(
                    Keyring::parse(&text).map_err(|source| ConfigError::Secrets {
                        setting: "AEGIS_ENCRYPTION_KEY_FILE",
                        source,
                    })?,
                )
            }
            (None, None) => None,
        };

        let database_url = src.string("AEGIS_DATABASE_URL", "mysql://root@127.0.0.1:3306/aegis");
        if !database_url.starts_with("mysql://") && !database_url.starts_with("mariadb://") {
            return Err(invalid(
                "AEGIS_DATABASE_URL",
                &database_url,
                "a mysql:// URL such as mysql://root@127.0.0.1:3306/aegis",
            ));
        }
        let amqp_url = src.string("AEGIS_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f");
        if !amqp_url.starts_with("amqp://") && !amqp_url.starts_with("amqps://") {
            return Err(invalid(
                "AEGIS_AMQP_URL",
                &amqp_url,
                "an amqp:// or amqps:// URL such as amqp://guest:guest@127.0.0.1:5672/%2f",
            ));
        }
        let redis_url = src.string("AEGIS_REDIS_URL", "redis://127.0.0.1:6379/0");
        if !redis_url.starts_with("redis://") && !redis_url.starts_with("rediss://") {
            return Err(invalid(
                "AEGIS_REDIS_URL",
                &redis_url,
                "a redis:// or rediss:// URL such as redis://127.0.0.1:6379/0",
            ));
        }
        let namespace = src.string("AEGIS_NAMESPACE", "");
        if !namespace
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            return Err(invalid(
                "AEGIS_NAMESPACE",
                &namespace,
                "letters, digits, '-', '_' or '.'",
            ));
        }

        let log_format = match src.string("AEGIS_LOG_FORMAT", "text").as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => return Err(invalid("AEGIS_LOG_FORMAT", other, "text or json")),
        };
        let log_color = match src.string("AEGIS_LOG_COLOR", "auto").as_str() {
            "auto" => LogColor::Auto,
            "always" => LogColor::Always,
            "never" => LogColor::Never,
            other => return Err(invalid("AEGIS_LOG_COLOR", other, "auto, always or never")),
        };
        let http_addr = match src.string("AEGIS_HTTP_ADDR", "127.0.0.1:0").as_str() {
            "off" | "none" => None,
            text => Some(text.parse().map_err(|_| {
                invalid(
                    "AEGIS_HTTP_ADDR",
                    text,
                    "host:port such as 0.0.0.0:9090, or off",
                )
            })?),
        };

        let concurrency: u16 = src.parse(
            "AEGIS_WORKER_CONCURRENCY",
            16,
            "a number of jobs from 1 to 65535",
        )?;
        if concurrency == 0 {
            return Err(invalid(
                "AEGIS_WORKER_CONCURRENCY",
                "0",
                "a number of jobs from 1 to 65535",
            ));
        }
        let jobs = src
            .string("AEGIS_WORKER_JOBS", "")
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        let default_worker_id = format!(
            "{}-{}",
            std::env::var("HOSTNAME")
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "worker".into()),
            std::process::id()
        );
        let lease = src.duration("AEGIS_LEASE", Duration::from_secs(30))?;
        let heartbeat_interval =
            src.duration("AEGIS_HEARTBEAT_INTERVAL", Duration::from_secs(1))?;
        if heartbeat_interval.is_zero() || heartbeat_interval * 3 > lease {
            return Err(invalid(
                "AEGIS_HEARTBEAT_INTERVAL",
                &format!("{heartbeat_interval:?}"),
                &format!("a positive duration at most a third of AEGIS_LEASE ({lease:?})"),
            ));
        }
        let max_attempts: u32 = src.parse("AEGIS_MAX_ATTEMPTS", 3, "a number of attempts >= 1")?;
        if max_attempts == 0 {
            return Err(invalid(
                "AEGIS_MAX_ATTEMPTS",
                "0",
                "a number of attempts >= 1",
            ));
        }

        Ok(Settings {
            database_url,
            database_max_connections: src.parse(
                "AEGIS_DATABASE_MAX_CONNECTIONS",
                10,
                "a number of connections",
            )?,
            amqp_url,
            redis_url,
            namespace,
            keyring,
            otlp_endpoint: src
                .get("OTEL_EXPORTER_OTLP_ENDPOINT")
                .filter(|v| !v.trim().is_empty()),
            log_format,
            log_color,
            log_to_db: src.bool("AEGIS_LOG_TO_DB", false)?,
            http_addr,
            coordinator: CoordinatorSettings {
                poll_interval: src.duration("AEGIS_POLL_INTERVAL", Duration::from_secs(1))?,
                schedule_interval: src
                    .duration("AEGIS_SCHEDULE_INTERVAL", Duration::from_secs(30))?,
                dispatch_timeout: src
                    .duration("AEGIS_DISPATCH_TIMEOUT", Duration::from_secs(300))?,
                max_attempts,
                dispatch_batch: src.parse("AEGIS_DISPATCH_BATCH", 500, "a number of rows")?,
                dispatch_window: src.parse("AEGIS_DISPATCH_WINDOW", 2000, "a number of rows")?,
                idle_log_interval: src
                    .duration("AEGIS_IDLE_LOG_INTERVAL", Duration::from_secs(60))?,
            },
            worker: WorkerSettings {
                concurrency,
                jobs,
                worker_id: src.string("AEGIS_WORKER_ID", &default_worker_id),
                lease,
                heartbeat_interval,
                shutdown_grace: src.duration("AEGIS_SHUTDOWN_GRACE", Duration::from_secs(30))?,
            },
        })
    }

    /// A name prefixed with the namespace: `aegis.jobs` or `test42.aegis.jobs`.
    pub fn namespaced(&self, name: &str) -> String {
        if self.namespace.is_empty() {
            name.to_string()
        } else {
            format!("{}.{}", self.namespace, name)
        }
    }
}

fn read_file(path: PathBuf) -> Result<HashMap<String, String>, ConfigError> {
    let text = std::fs::read_to_string(&path).map_err(|e| ConfigError::File {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigError::File {
            path: path.clone(),
            reason: e.to_string(),
        })?;
    let mut out = HashMap::new();
    for (key, value) in table {
        let text = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Array(items) => items
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| v.to_string())
                })
                .collect::<Vec<_>>()
                .join(","),
            other => {
                return Err(ConfigError::File {
                    path,
                    reason: format!("key {key}: {other} is not a string, number, boolean or list"),
                })
            }
        };
        out.insert(key.to_ascii_lowercase(), text);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn zero_configuration_points_at_loopback_services() {
        let s = Settings::from_vars(HashMap::new()).expect("defaults are valid");
        assert_eq!(s.database_url, "mysql://root@127.0.0.1:3306/aegis");
        assert_eq!(s.amqp_url, "amqp://guest:guest@127.0.0.1:5672/%2f");
        assert_eq!(s.redis_url, "redis://127.0.0.1:6379/0");
        assert!(s.keyring.is_none());
        assert_eq!(s.namespaced("aegis.jobs"), "aegis.jobs");
    }

    #[test]
    fn bad_value_names_the_setting_and_what_was_expected() {
        let err = Settings::from_vars(vars(&[("AEGIS_WORKER_CONCURRENCY", "many")]))
            .expect_err("must fail");
        let text = err.to_string();
        assert!(text.contains("AEGIS_WORKER_CONCURRENCY"), "{text}");
        assert!(text.contains("expected a number of jobs"), "{text}");

        let err = Settings::from_vars(vars(&[("AEGIS_DATABASE_URL", "postgres://x")]))
            .expect_err("must fail");
        assert!(err.to_string().contains("AEGIS_DATABASE_URL"));

        let err =
            Settings::from_vars(vars(&[("AEGIS_POLL_INTERVAL", "soon")])).expect_err("must fail");
        assert!(err.to_string().contains("AEGIS_POLL_INTERVAL"));
    }

    #[test]
    fn durations_accept_units_and_plain_seconds() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("-1"), None);
        assert_eq!(parse_duration("3 weeks"), None);
    }

    #[test]
    fn file_values_apply_and_environment_wins() {
        let dir = std::env::temp_dir().join(format!("aegis-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("aegis.toml");
        std::fs::write(
            &path,
            "namespace = \"fromfile\"\nworker_concurrency = 4\nworker_jobs = [\"AssetSyncJob\", \"TicketingJob\"]\n",
        )
        .expect("write");
        let s = Settings::from_vars(vars(&[
            ("AEGIS_CONFIG_FILE", path.to_str().expect("utf8")),
            ("AEGIS_WORKER_CONCURRENCY", "7"),
        ]))
        .expect("valid");
        assert_eq!(s.namespace, "fromfile");
        assert_eq!(s.worker.concurrency, 7);
        assert_eq!(s.worker.jobs, vec!["AssetSyncJob", "TicketingJob"]);
        assert_eq!(s.namespaced("aegis.jobs"), "fromfile.aegis.jobs");
    }
}

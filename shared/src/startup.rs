//! The start-up steps every daemon shares: read the configuration, install
//! logging and tracing, connect to a migrated database, and refuse to run
//! without a key when sealed credentials exist.

use anyhow::Context;
use sqlx::MySqlPool;

use crate::logging::{self, Telemetry};
use crate::model::source_config;
use crate::{db, Settings};

/// What a daemon has once it started.
pub struct Started {
    pub settings: Settings,
    pub pool: MySqlPool,
    pub telemetry: Telemetry,
}

/// Reads settings, installs logging, connects to the database and checks the
/// schema and the keyring. Errors say which setting or service to fix.
pub async fn start(service: &str) -> anyhow::Result<Started> {
    let settings = Settings::from_env()?;
    let mut telemetry = logging::init(&settings, service).map_err(anyhow::Error::msg)?;
    let pool = db::connect(&settings.database_url, settings.database_max_connections).await?;
    db::check_schema(&pool)
        .await
        .context("checking the database schema")?;
    telemetry.attach_database(pool.clone());
    if settings.keyring.is_none() {
        let sealed = source_config::count_sealed(&pool).await?;
        if sealed > 0 {
            anyhow::bail!(
                "{sealed} SourceConfig row(s) hold encrypted credentials but no key is configured: \
                 set AEGIS_ENCRYPTION_KEY or AEGIS_ENCRYPTION_KEY_FILE"
            );
        }
    }
    Ok(Started {
        settings,
        pool,
        telemetry,
    })
}

/// Resolves when the process receives SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

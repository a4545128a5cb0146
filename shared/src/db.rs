//! Database access: the connection pool every binary uses, and the schema
//! migrations (`aegis migrate`).
//!
//! Every connection runs in UTC (`time_zone = '+00:00'`, which sqlx sets on
//! connect) so that `NOW()` and the times Aegis writes agree. The migrations in
//! `migrations/` are compiled into the binaries.

use std::collections::HashSet;
use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::{MigrateDatabase, Migrator};
use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
use sqlx::{MySql, MySqlPool, Row};

/// The schema migrations, embedded at build time.
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("AEGIS_DATABASE_URL is not a valid MySQL URL: {0}")]
    BadUrl(String),
    #[error("cannot connect to the database at {url}: {source}. Is MariaDB/MySQL running and the URL right (AEGIS_DATABASE_URL)?")]
    Connect {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("the database was migrated by a newer Aegis: it has migration(s) {0} that this build does not know. Run the newer `aegis` binary, or restore a backup made before the upgrade")]
    NewerSchema(String),
    #[error("the database has no Aegis schema yet (or an old one): run `aegis migrate` first")]
    NotMigrated,
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
}

/// Hides the password of a database URL so it can be printed.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{}:***{}", &url[..scheme + 3], user, &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

fn options(url: &str) -> Result<MySqlConnectOptions, DbError> {
    let opts = MySqlConnectOptions::from_str(url).map_err(|e| DbError::BadUrl(e.to_string()))?;
    // UTC on every connection; sqlx also keeps the server's strict sql_mode.
    Ok(opts.timezone(Some("+00:00".to_string())))
}

/// Opens a pool to an existing, migrated database.
pub async fn connect(url: &str, max_connections: u32) -> Result<MySqlPool, DbError> {
    let pool = MySqlPoolOptions::new()
        .max_connections(max_connections.max(1))
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options(url)?)
        .await
        .map_err(|source| DbError::Connect {
            url: redact_url(url),
            source,
        })?;
    Ok(pool)
}

/// Fails with [`DbError::NotMigrated`] or [`DbError::NewerSchema`] unless the
/// database holds exactly the migrations this build knows.
pub async fn check_schema(pool: &MySqlPool) -> Result<(), DbError> {
    let applied = applied_versions(pool).await?;
    let known: HashSet<i64> = MIGRATOR.iter().map(|m| m.version).collect();
    let newer: Vec<String> = applied
        .iter()
        .filter(|v| !known.contains(v))
        .map(i64::to_string)
        .collect();
    if !newer.is_empty() {
        return Err(DbError::NewerSchema(newer.join(", ")));
    }
    if known.iter().any(|v| !applied.contains(v)) {
        return Err(DbError::NotMigrated);
    }
    Ok(())
}

async fn applied_versions(pool: &MySqlPool) -> Result<HashSet<i64>, DbError> {
    let exists: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM information_schema.TABLES
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = '_sqlx_migrations'",
    )
    .fetch_one(pool)
    .await?;
    if exists == 0 {
        return Ok(HashSet::new());
    }
    let rows = sqlx::query("SELECT version FROM _sqlx_migrations WHERE success = 1")
        .fetch_all(pool)
        .await?;
    Ok(rows.iter().map(|r| r.get::<i64, _>(0)).collect())
}

/// What `aegis migrate` did.
#[derive(Debug, PartialEq, Eq)]
pub struct MigrateReport {
    pub created_database: bool,
    pub applied: Vec<String>,
}

/// Creates the database if it is missing and applies the migrations this build
/// has not applied yet. Idempotent; refuses a database migrated by a newer build.
pub async fn migrate(url: &str) -> Result<MigrateReport, DbError> {
    let created_database =
        if MySql::database_exists(url)
            .await
            .map_err(|source| DbError::Connect {
                url: redact_url(url),
                source,
            })?
        {
            false
        } else {
            MySql::create_database(url).await?;
            true
        };
    let pool = connect(url, 2).await?;
    let before = applied_versions(&pool).await?;
    let known: HashSet<i64> = MIGRATOR.iter().map(|m| m.version).collect();
    let newer: Vec<String> = before
        .iter()
        .filter(|v| !known.contains(v))
        .map(i64::to_string)
        .collect();
    if !newer.is_empty() {
        pool.close().await;
        return Err(DbError::NewerSchema(newer.join(", ")));
    }
    MIGRATOR.run(&pool).await?;
    let applied = MIGRATOR
        .iter()
        .filter(|m| !before.contains(&m.version))
        .map(|m| format!("{} {}", m.version, m.description))
        .collect();
    pool.close().await;
    Ok(MigrateReport {
        created_database,
        applied,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_printed_without_their_password() {
        assert_eq!(
            redact_url("mysql://aegis:s3cret@db:3306/aegis"),
            "mysql://aegis:***@db:3306/aegis"
        );
        assert_eq!(
            redact_url("mysql://root@127.0.0.1/aegis"),
            "mysql://root@127.0.0.1/aegis"
        );
    }
}

//! Helpers for Aegis's integration tests: a fresh, migrated database per test,
//! unique namespaces for broker and Redis names, the paths of the built
//! binaries, and polling with a deadline (never a bare sleep).

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub mod estate;
pub mod fleet;
pub mod otlp;
pub mod rescan_rig;
pub mod setup;

use aegis_shared::db;

pub mod ratelimit_support;
use sqlx::MySqlPool;

/// The MariaDB server tests run against (`AEGIS_TEST_DATABASE_SERVER`, default loopback root).
pub fn server_url() -> String {
    std::env::var("AEGIS_TEST_DATABASE_SERVER")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into())
}

/// A unique short name for this test's database, queues and Redis keys.
pub fn unique_name(prefix: &str) -> String {
    format!(
        "{prefix}_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// A migrated database that exists for one test and is dropped afterwards.
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub pool: MySqlPool,
}

impl TestDb {
    /// Creates and migrates `aegis_test_<random>`.
    pub async fn create() -> anyhow::Result<Self> {
        Self::create_named(&unique_name("aegis_test")).await
    }

    /// Creates and migrates a database with the given name (dropped first if it exists).
    pub async fn create_named(name: &str) -> anyhow::Result<Self> {
        let admin = db::connect(&format!("{}/mysql", server_url()), 1).await?;
        sqlx::query(&format!("DROP DATABASE IF EXISTS `{name}`"))
            .execute(&admin)
            .await?;
        admin.close().await;
        let url = format!("{}/{}", server_url(), name);
        db::migrate(&url).await?;
        let pool = db::connect(&url, 8).await?;
        Ok(TestDb {
            name: name.to_string(),
            url,
            pool,
        })
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if std::env::var("AEGIS_TEST_KEEP_DB").is_ok() {
            eprintln!("keeping test database {}", self.name);
            return;
        }
        let name = self.name.clone();
        // Drop runs outside async context; use a short-lived runtime on a thread.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(admin) = db::connect(&format!("{}/mysql", server_url()), 1).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS `{name}`"))
                        .execute(&admin)
                        .await;
                    admin.close().await;
                }
            });
        })
        .join();
    }
}

/// Polls `check` until it returns `Some`, or fails after `timeout` with `what`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await? {
            return Ok(v);
        }
        if Instant::now() > deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The path of a workspace binary built by `cargo build` (e.g. `aegis`).
pub fn binary(name: &str) -> PathBuf {
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    target.join(profile).join(name)
}

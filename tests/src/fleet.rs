//! A fleet under test: a fresh database, a unique broker namespace, and real
//! `aegis-coordinator` / `aegis-worker` processes started from the built
//! binaries with fast intervals. Processes are killed and the namespace's
//! queues deleted when the fleet is dropped.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use aegis_shared::broker::Topology;
use aegis_shared::model::job::JOB_NAMES;
use aegis_shared::Settings;
use anyhow::Context;
use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use tokio::process::{Child, Command};

use crate::{binary, eventually, unique_name, TestDb};

/// One started process and where its output goes.
pub struct Process {
    pub child: Child,
    pub log: PathBuf,
    pub name: String,
}

impl Process {
    pub fn pid(&self) -> i32 {
        self.child.id().map(|p| p as i32).unwrap_or(0)
    }

    /// SIGKILL: the process dies without any clean-up (a crashed worker).
    pub fn kill_9(&mut self) {
        let _ = self.child.start_kill();
    }

    /// SIGTERM: the process shuts down gracefully.
    pub fn terminate(&self) {
        let pid = self.pid();
        if pid > 0 {
            // SAFETY: sending a signal to a child process we started.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
    }

    /// Waits for exit; returns the exit code (None if killed by a signal).
    pub async fn wait(&mut self, timeout: Duration) -> anyhow::Result<Option<i32>> {
        let status = tokio::time::timeout(timeout, self.child.wait())
            .await
            .with_context(|| format!("{} did not exit within {timeout:?}", self.name))??;
        Ok(status.code())
    }

    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

pub struct Fleet {
    pub db: TestDb,
    pub namespace: String,
    pub env: HashMap<String, String>,
    pub processes: Vec<Process>,
    log_dir: PathBuf,
}

impl Fleet {
    /// A new database and namespace; no process started yet.
    pub async fn new() -> anyhow::Result<Self> {
        let db = TestDb::create().await?;
        let namespace = unique_name("t");
        let log_dir = std::env::temp_dir()
            .join("aegis-test-logs")
            .join(&namespace);
        std::fs::create_dir_all(&log_dir)?;
        let env: HashMap<String, String> = [
            ("AEGIS_DATABASE_URL", db.url.as_str()),
            ("AEGIS_NAMESPACE", namespace.as_str()),
            ("AEGIS_POLL_INTERVAL", "200ms"),
            ("AEGIS_SCHEDULE_INTERVAL", "300ms"),
            ("AEGIS_HEARTBEAT_INTERVAL", "300ms"),
            ("AEGIS_LEASE", "3s"),
            ("AEGIS_DISPATCH_TIMEOUT", "5s"),
            ("AEGIS_SHUTDOWN_GRACE", "5s"),
            ("AEGIS_HTTP_ADDR", "127.0.0.1:0"),
            ("AEGIS_LOG_COLOR", "never"),
            ("AEGIS_IDLE_LOG_INTERVAL", "1s"),
            ("RUST_LOG", "info,sqlx=warn,lapin=warn"),
            ("RUST_BACKTRACE", "0"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        Ok(Fleet {
            db,
            namespace,
            env,
            processes: Vec::new(),
            log_dir,
        })
    }

    pub fn pool(&self) -> &sqlx::MySqlPool {
        &self.db.pool
    }

    /// Starts a binary with the fleet's environment plus `extra`.
    pub fn spawn(&mut self, bin: &str, extra: &[(&str, &str)]) -> anyhow::Result<usize> {
        let path = binary(bin);
        anyhow::ensure!(
            path.exists(),
            "{} is missing: run `cargo build --workspace --bins` before the tests",
            path.display()
        );
        let name = format!("{bin}-{}", self.processes.len());
        let log = self.log_dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log)?;
        let mut cmd = Command::new(&path);
        cmd.env_clear();
        if let Ok(p) = std::env::var("PATH") {
            cmd.env("PATH", p);
        }
        cmd.envs(&self.env);
        cmd.env("AEGIS_WORKER_ID", &name);
        for (k, v) in extra {
            cmd.env(k, v);
        }
        cmd.stdout(Stdio::from(file.try_clone()?))
            .stderr(Stdio::from(file))
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", path.display()))?;
        self.processes.push(Process { child, log, name });
        Ok(self.processes.len() - 1)
    }

    pub fn coordinator(&mut self) -> anyhow::Result<usize> {
        self.spawn("aegis-coordinator", &[])
    }

    pub fn worker(&mut self) -> anyhow::Result<usize> {
        self.spawn("aegis-worker", &[])
    }

    /// SIGKILLs the fleet's process `name` (as a JobHistory row's WorkerID
    /// names it); panics when the fleet has no such process.
    pub fn kill_9(&mut self, name: &str) {
        self.processes
            .iter_mut()
            .find(|p| p.name == name)
            .expect("the worker is ours")
            .kill_9();
    }

    /// Inserts a DiagnosticJob row the way an operator would.
    pub async fn insert_diagnostic(&self, payload: &str, priority: i32) -> anyhow::Result<String> {
        let id = uuid::Uuid::new_v4().to_string();
        sqlx::query(
            "INSERT INTO JobHistory (ID, JobId, StatusId, Priority, Payload)
             VALUES (?, (SELECT Id FROM Job WHERE Struct = 'DiagnosticJob'), 1, ?, ?)",
        )
        .bind(&id)
        .bind(priority)
        .bind(payload)
        .execute(self.pool())
        .await?;
        Ok(id)
    }

    /// Inserts a pending run of a job config (with `payload`, or the config's
    /// own) the way an operator would; returns its JobHistory ID.
    pub async fn start_config(
        &self,
        config: &str,
        payload: Option<serde_json::Value>,
    ) -> anyhow::Result<String> {
        let id = uuid::Uuid::new_v4().to_string();
        sqlx::query(
            "INSERT INTO JobHistory (ID, JobId, ConfigID, StatusId, Priority, Payload)
             SELECT ?, JobId, ID, 1, 0, COALESCE(?, Payload) FROM JobConfig WHERE ID = ?",
        )
        .bind(&id)
        .bind(payload.map(|p| p.to_string()))
        .bind(config)
        .execute(self.pool())
        .await?;
        Ok(id)
    }

    pub async fn status(&self, id: &str) -> anyhow::Result<i32> {
        let (s,): (i32,) = sqlx::query_as("SELECT StatusId FROM JobHistory WHERE ID = ?")
            .bind(id)
            .fetch_one(self.pool())
            .await?;
        Ok(s)
    }

    /// Waits until the row has `status`.
    pub async fn wait_status(
        &self,
        id: &str,
        status: i32,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let result = eventually(
            &format!("JobHistory {id} to reach status {status}"),
            timeout,
            || async { Ok((self.status(id).await? == status).then_some(())) },
        )
        .await;
        if result.is_err() {
            let row: Option<(i32, Option<String>, i32)> =
                sqlx::query_as("SELECT StatusId, LastError, Attempt FROM JobHistory WHERE ID = ?")
                    .bind(id)
                    .fetch_optional(self.pool())
                    .await?;
            anyhow::bail!("JobHistory {id} did not reach status {status} within {timeout:?}; it is {row:?}\n{}", self.logs());
        }
        Ok(())
    }

    /// Every process's output, for failure messages.
    pub fn logs(&self) -> String {
        self.processes
            .iter()
            .map(|p| format!("----- {} -----\n{}", p.name, p.output()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The settings the fleet's processes use (for topology names).
    pub fn settings(&self) -> anyhow::Result<Settings> {
        Ok(Settings::from_vars(self.env.clone())?)
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for p in &mut self.processes {
            let _ = p.child.start_kill();
        }
        let Ok(settings) = self.settings() else {
            return;
        };
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let _ = delete_namespace(&settings).await;
            });
        })
        .join();
    }
}

/// Deletes the queues and exchanges of a test namespace.
pub async fn delete_namespace(settings: &Settings) -> anyhow::Result<()> {
    let t = Topology::new(settings);
    let conn =
        aegis_shared::services::connect_amqp(&settings.amqp_url, "aegis-tests-cleanup").await?;
    let ch = conn.create_channel().await?;
    let mut queues: Vec<String> = JOB_NAMES.iter().map(|j| t.job_queue(j)).collect();
    queues.push(t.submit_queue.clone());
    queues.push(t.dead_letter_queue.clone());
    for q in queues {
        let _ = ch.queue_delete(&q, QueueDeleteOptions::default()).await;
    }
    for e in [
        &t.jobs_exchange,
        &t.submit_exchange,
        &t.dead_letter_exchange,
    ] {
        let _ = ch
            .exchange_delete(e, ExchangeDeleteOptions::default())
            .await;
    }
    let _ = conn.close(200, "cleanup").await;
    Ok(())
}

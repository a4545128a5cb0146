//! RabbitMQ restarting mid-run loses no job: the database is the source of
//! truth, messages are persistent, and both binaries reconnect.
//!
//! This test restarts the machine's RabbitMQ application (`rabbitmqctl
//! stop_app` / `start_app`), so it lives in its own test binary: cargo runs test
//! binaries one after another, and nothing else uses the broker meanwhile.

use std::time::Duration;

use aegis_tests::eventually;
use aegis_tests::fleet::Fleet;

fn rabbitmqctl(args: &[&str]) -> anyhow::Result<()> {
    let out = std::process::Command::new("rabbitmqctl")
        .args(args)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[tokio::test]
async fn rabbitmq_restart_mid_run_loses_nothing() -> anyhow::Result<()> {
    let mut f = Fleet::new().await?;
    let values: Vec<String> = (0..400)
        .map(|_| format!("('{}', (SELECT Id FROM Job WHERE Struct = 'DiagnosticJob'), 1, 0, '{{\"record\": true, \"sleep_ms\": 50}}')", uuid::Uuid::new_v4()))
        .collect();
    sqlx::query(&format!(
        "INSERT INTO JobHistory (ID, JobId, StatusId, Priority, Payload) VALUES {}",
        values.join(",")
    ))
    .execute(f.pool())
    .await?;
    f.env.insert("AEGIS_WORKER_CONCURRENCY".into(), "2".into());
    f.coordinator()?;
    f.worker()?;
    f.worker()?;
    eventually(
        "the run to be under way",
        Duration::from_secs(30),
        || async {
            let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM JobHistory WHERE StatusId = 3")
                .fetch_one(f.pool())
                .await?;
            Ok((n >= 20).then_some(()))
        },
    )
    .await?;
    rabbitmqctl(&["stop_app"])?;
    let (done_at_stop,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM JobHistory WHERE StatusId = 3")
            .fetch_one(f.pool())
            .await?;
    assert!(done_at_stop < 400, "the broker stopped mid-run");
    tokio::time::sleep(Duration::from_secs(2)).await;
    rabbitmqctl(&["start_app"])?;
    eventually(
        "all 400 jobs completed after the restart",
        Duration::from_secs(120),
        || async {
            let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM JobHistory WHERE StatusId = 3")
                .fetch_one(f.pool())
                .await?;
            Ok((n == 400).then_some(()))
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", f.logs()))?;
    let (distinct,): (i64,) =
        sqlx::query_as("SELECT COUNT(DISTINCT JobHistoryID) FROM DiagnosticRun")
            .fetch_one(f.pool())
            .await?;
    assert_eq!(distinct, 400, "every job ran");
    let logs = f.logs();
    assert!(
        logs.contains("lost the RabbitMQ"),
        "both binaries noticed the outage and reconnected:\n{logs}"
    );
    let (errors,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM JobHistory WHERE StatusId <> 3")
        .fetch_one(f.pool())
        .await?;
    assert_eq!(errors, 0);
    Ok(())
}

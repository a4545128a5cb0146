//! The job runner as a fleet, end to end: real coordinator and worker processes
//! against real MariaDB and RabbitMQ, each test in its own database and
//! namespace. Jobs are DiagnosticJobs (the operator's smoke test), which can
//! sleep, fail, panic and record each execution in `DiagnosticRun`.

use std::time::{Duration, Instant};

use aegis_tests::eventually;
use aegis_tests::fleet::Fleet;

const T: Duration = Duration::from_secs(30);

/// An organization and a DiagnosticJob JobConfig; returns (org code, config id).
async fn diagnostic_config(
    f: &Fleet,
    continuous: bool,
    wait: i32,
    max_instances: i32,
    auto_start: bool,
    payload: &str,
) -> anyhow::Result<String> {
    let org = uuid::Uuid::new_v4().to_string();
    sqlx::query("INSERT INTO Organization (ID, Code, Description, Payload) VALUES (?, 'NORTON', 'test', '{}')")
        .bind(&org)
        .execute(f.pool())
        .await
        .or_else(|e| if e.to_string().contains("Duplicate") { Ok(Default::default()) } else { Err(e) })?;
    let (org,): (String,) = sqlx::query_as("SELECT ID FROM Organization WHERE Code = 'NORTON'")
        .fetch_one(f.pool())
        .await?;
    let id = uuid::Uuid::new_v4().to_string();
    sqlx::query(
        "INSERT INTO JobConfig (ID, JobId, OrganizationID, Payload, Continuous, WaitInSeconds, MaxInstances, AutoStart, CreatedBy)
         VALUES (?, (SELECT Id FROM Job WHERE Struct = 'DiagnosticJob'), ?, ?, ?, ?, ?, ?, 'test')",
    )
    .bind(&id)
    .bind(&org)
    .bind(payload)
    .bind(continuous)
    .bind(wait)
    .bind(max_instances)
    .bind(auto_start)
    .execute(f.pool())
    .await?;
    Ok(id)
}

async fn rows_of_config(f: &Fleet, config: &str) -> anyhow::Result<i64> {
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM JobHistory WHERE ConfigID = ?")
        .bind(config)
        .fetch_one(f.pool())
        .await?;
    Ok(n)
}

async fn last_error(f: &Fleet, id: &str) -> anyhow::Result<String> {
    let (e,): (Option<String>,) = sqlx::query_as("SELECT LastError FROM JobHistory WHERE ID = ?")
        .bind(id)
        .fetch_one(f.pool())
        .await?;
    Ok(e.unwrap_or_default())
}

async fn runs_of(f: &Fleet, id: &str) -> anyhow::Result<i64> {
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM DiagnosticRun WHERE JobHistoryID = ?")
        .bind(id)
        .fetch_one(f.pool())
        .await?;
    Ok(n)
}

#[tokio::test]
async fn faq_insert_runs_a_job_to_completed_with_the_original_log_line() -> anyhow::Result<()> {
    let mut f = Fleet::new().await?;
    let config = diagnostic_config(
        &f,
        false,
        0,
        1,
        false,
        r#"{"record": true, "message": "Ticket created for vulnerability"}"#,
    )
    .await?;
    // The FAQ's INSERT with the job name replaced, as the FAQ says to.
    let faq = "INSERT INTO `JobHistory` (`JobId`, `ConfigID`, `StatusId`, `Priority`, `Payload`)
                VALUES
(
                (select ID from Job where Struct = 'DiagnosticJob'),
                (select ID from JobConfig where JobID = (select ID from Job where Struct = 'DiagnosticJob' LIMIT 1) LIMIT 1),
                '1',
                '0',
                (select Payload from JobConfig where JobID = (select ID from Job where Struct = 'DiagnosticJob') LIMIT 1)
);";
    sqlx::query(faq).execute(f.pool()).await?;
    let (id,): (String,) = sqlx::query_as("SELECT ID FROM JobHistory WHERE ConfigID = ?")
        .bind(&config)
        .fetch_one(f.pool())
        .await?;
    f.coordinator()?;
    f.worker()?;
    f.wait_status(&id, 3, T).await?;
    assert_eq!(runs_of(&f, &id).await?, 1);
    let (started, finished, attempt): (
        Option<chrono::DateTime<chrono::Utc>>,
        Option<chrono::DateTime<chrono::Utc>>,
        i32,
    ) = sqlx::query_as("SELECT StartedAt, FinishedAt, Attempt FROM JobHistory WHERE ID = ?")
        .bind(&id)
        .fetch_one(f.pool())
        .await?;
    assert!(started.is_some() && finished >= started && attempt == 1);

    // Log lines: `YYYY-MM-DD HH:MM:SS | [INFO] [DiagnosticJob:NORTON:<id>] - text`, no colour codes.
    let worker_log = f.processes[1].output();
    let wanted = format!("| [INFO] [DiagnosticJob:NORTON:{id}] - Ticket created for vulnerability");
    let line = worker_log
        .lines()
        .find(|l| l.contains(&wanted))
        .unwrap_or_else(|| panic!("no line with {wanted:?} in:\n{worker_log}"));
    let stamp = &line[..19];
    assert!(
        chrono::NaiveDateTime::parse_from_str(stamp, "%Y-%m-%d %H:%M:%S").is_ok(),
        "{line}"
    );
    assert_eq!(&line[19..22], " | ");
    assert!(
        !worker_log.contains('\x1b'),
        "no colour codes when not on a terminal"
    );
    assert!(worker_log.contains(&format!(
        "[DiagnosticJob:NORTON:{id}] - Job completed successfully"
    )));
    let coordinator_log = f.processes[0].output();
    let idle = coordinator_log
        .lines()
        .find(|l| l.contains("Job Runner: Sleeping for 0.2 seconds - ["))
        .expect("idle line");
    assert!(idle.trim_end().ends_with("tasks]"), "{idle}");
    Ok(())
}

#[tokio::test]
async fn failing_and_panicking_jobs_end_as_error_with_their_reason() -> anyhow::Result<()> {
    let mut f = Fleet::new().await?;
    let failing = f
        .insert_diagnostic(r#"{"fail": "the scanner said no"}"#, 0)
        .await?;
    let panicking = f
        .insert_diagnostic(r#"{"panic": "index out of bounds"}"#, 0)
        .await?;
    let malformed = f.insert_diagnostic(r#"{"sleep_ms": "soon"}"#, 0).await?;
    let unknown_job: String = uuid::Uuid::new_v4().to_string();
    sqlx::query("INSERT INTO JobHistory (ID, JobId, StatusId, Priority, Payload) VALUES (?, (SELECT Id FROM Job WHERE Struct = 'CloudSyncJob'), 1, 0, '{}')")
        .bind(&unknown_job)
        .execute(f.pool())
        .await?;
    f.coordinator()?;
    f.worker()?;
    for id in [&failing, &panicking, &malformed, &unknown_job] {
        f.wait_status(id, 4, T).await?;
    }
    assert_eq!(last_error(&f, &failing).await?, "the scanner said no");
    assert_eq!(
        last_error(&f, &panicking).await?,
        "job panicked: index out of bounds"
    );
    assert!(last_error(&f, &malformed)
        .await?
        .contains("malformed payload for DiagnosticJob"));
    assert!(last_error(&f, &unknown_job).await?.contains("CloudSyncJob"));
    // The worker survived all of it.
    let ok = f.insert_diagnostic("{}", 0).await?;
    f.wait_status(&ok, 3, T).await?;
    Ok(())
}

#[tokio::test]
async fn autostart_with_two_coordinators_creates_one_row_and_touches_nothing_else(
) -> anyhow::Result<()> {
    let mut f = Fleet::new().await?;
    let auto = diagnostic_config(&f, false, 0, 1, true, "{}").await?;
    let manual_config = diagnostic_config(&f, false, 0, 1, true, "{}").await?;
    // Someone else's running row (live lease) and a manually queued row for an AutoStart config.
    let running = uuid::Uuid::new_v4().to_string();
    sqlx::query(
        "INSERT INTO JobHistory (ID, JobId, StatusId, Priority, Payload, WorkerID, LeaseUntil, Attempt)
         VALUES (?, (SELECT Id FROM Job WHERE Struct = 'DiagnosticJob'), 2, 0, '{}', 'elsewhere', UTC_TIMESTAMP() + INTERVAL 1 HOUR, 1)",
    )
    .bind(&running)
    .execute(f.pool())
    .await?;
    let manual = uuid::Uuid::new_v4().to_string();
    sqlx::query("INSERT INTO JobHistory (ID, JobId, ConfigID, StatusId, Priority, Payload) VALUES (?, (SELECT Id FROM Job WHERE Struct = 'DiagnosticJob'), ?, 1, 0, '{\"custom\": true}')")
        .bind(&manual)
        .bind(&manual_config)
        .execute(f.pool())
        .await?;
    f.coordinator()?;
    f.coordinator()?;
    eventually("both coordinators to be up", T, || async {
        Ok(f.processes
            .iter()
            .all(|p| p.output().contains("AutoStart created"))
            .then_some(()))
    })
    .await?;
    assert_eq!(
        rows_of_config(&f, &auto).await?,
        1,
        "one AutoStart row however many coordinators start"
    );
    assert_eq!(
        rows_of_config(&f, &manual_config).await?,
        1,
        "the manual row counts as pending: no second row"
    );
    assert_eq!(
        f.status(&running).await?,
        2,
        "another worker's running row is left alone"
    );
    let (payload,): (String,) = sqlx::query_as("SELECT Payload FROM JobHistory WHERE ID = ?")
        .bind(&manual)
        .fetch_one(f.pool())
        .await?;
    assert_eq!(
        payload, "{\"custom\": true}",
        "manually queued rows keep their payload"
    );
    Ok(())
}

#[tokio::test]
async fn continuous_job_rearms_the_same_row_and_honours_a_wait_change() -> anyhow::Result<()> {
    let mut f = Fleet::new().await?;
    let config = diagnostic_config(&f, true, 1, 1, false, r#"{"record": true}"#).await?;
    let id = uuid::Uuid::new_v4().to_string();
    sqlx::query("INSERT INTO JobHistory (ID, JobId, ConfigID, StatusId, Priority, Payload) SELECT ?, JobId, ID, 1, 0, Payload FROM JobConfig WHERE ID = ?")
        .bind(&id)
        .bind(&config)
        .execute(f.pool())
        .await?;
    f.coordinator()?;
    f.worker()?;
    eventually("two iterations of the same row", T, || async {
        Ok((runs_of(&f, &id).await? >= 2).then_some(()))
    })
    .await?;
    let (rows,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM JobHistory")
        .fetch_one(f.pool())
        .await?;
    assert_eq!(rows, 1, "a continuous job keeps one JobHistory row");

    // The FAQ's UPDATE: takes effect from the next cycle.
    sqlx::query("UPDATE JobConfig Set WaitInSeconds = 120 where ID = (select ConfigID from JobHistory where ID = ?)")
        .bind(&id)
        .execute(f.pool())
        .await?;
    let before = runs_of(&f, &id).await?;
    eventually("the iteration after the change", T, || async {
        Ok((runs_of(&f, &id).await? > before).then_some(()))
    })
    .await?;
    let gap: (i32, Option<i64>) = eventually("the row to be waiting again", T, || async {
        let r: (i32, Option<i64>) = sqlx::query_as("SELECT StatusId, TIMESTAMPDIFF(SECOND, UTC_TIMESTAMP(3), NotBefore) FROM JobHistory WHERE ID = ?")
            .bind(&id)
            .fetch_one(f.pool())
            .await?;
        Ok((r.0 == 1).then_some(r))
    })
    .await?;
    let wait = gap.1.unwrap_or(0);
    assert!(
        (100..=120).contains(&wait),
        "next iteration about 120 s away, got {wait}"
    );
    Ok(())
}

#[tokio::test]
async fn cancel_stops_pending_running_and_waiting_jobs() -> anyhow::Result<()> {
    let mut f = Fleet::new().await?;
    // Pending, before any process runs: never runs.
    let pending = f.insert_diagnostic(r#"{"record": true}"#, 0).await?;
    sqlx::query("UPDATE JobHistory SET StatusId = -1 WHERE ID = ?")
        .bind(&pending)
        .execute(f.pool())
        .await?;
    f.coordinator()?;
    f.worker()?;
    f.wait_status(&pending, 5, T).await?;
    assert_eq!(runs_of(&f, &pending).await?, 0);

    // Running: stopped within about two seconds.
    let running = f
        .insert_diagnostic(r#"{"record": true, "sleep_ms": 600000}"#, 0)
        .await?;
    f.wait_status(&running, 2, T).await?;
    let asked = Instant::now();
    sqlx::query("UPDATE JobHistory SET StatusId = -1 WHERE ID = ?")
        .bind(&running)
        .execute(f.pool())
        .await?;
    f.wait_status(&running, 5, Duration::from_secs(10)).await?;
    assert!(
        asked.elapsed() < Duration::from_secs(3),
        "cancelled in {:?}",
        asked.elapsed()
    );

    // A continuous job waiting for its next iteration.
    let config = diagnostic_config(&f, true, 3600, 1, false, r#"{"record": true}"#).await?;
    let waiting = uuid::Uuid::new_v4().to_string();
    sqlx::query("INSERT INTO JobHistory (ID, JobId, ConfigID, StatusId, Priority, Payload) SELECT ?, JobId, ID, 1, 0, Payload FROM JobConfig WHERE ID = ?")
        .bind(&waiting)
        .bind(&config)
        .execute(f.pool())
        .await?;
    eventually("the first iteration", T, || async {
        Ok((runs_of(&f, &waiting).await? == 1 && f.status(&waiting).await? == 1).then_some(()))
    })
    .await?;
    sqlx::query("UPDATE JobHistory SET StatusId = -1 WHERE ID = ?")
        .bind(&waiting)
        .execute(f.pool())
        .await?;
    f.wait_status(&waiting, 5, T).await?;
    assert_eq!(runs_of(&f, &waiting).await?, 1);
    Ok(())
}

#[tokio::test]
async fn schedule_fires_once_per_slot_with_two_coordinators_and_catches_up_once(
) -> anyhow::Result<()> {
    let mut f = Fleet::new().await?;
    let config = diagnostic_config(&f, false, 0, 0, false, "{}").await?;
    let soon = (chrono::Utc::now() + chrono::Duration::seconds(3)).time();
    sqlx::query("INSERT INTO JobSchedule (ConfigID, DaysOfWeek, TimeOfDay, CreatedBy) VALUES (?, '1234567', ?, 'test')")
        .bind(&config)
        .bind(soon)
        .execute(f.pool())
        .await?;
    // A second schedule whose slot was missed three days running while nothing ran.
    let missed = diagnostic_config(&f, false, 0, 0, false, "{}").await?;
    sqlx::query(
        "INSERT INTO JobSchedule (ConfigID, DaysOfWeek, TimeOfDay, CreatedBy, NextRunAt)
         VALUES (?, '1234567', '03:00:00', 'test', UTC_TIMESTAMP() - INTERVAL 3 DAY)",
    )
    .bind(&missed)
    .execute(f.pool())
    .await?;
    f.coordinator()?;
    f.coordinator()?;
    eventually("the scheduled slot to fire", T, || async {
        Ok((rows_of_config(&f, &config).await? >= 1).then_some(()))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await; // both coordinators evaluate several more times
    assert_eq!(rows_of_config(&f, &config).await?, 1, "one row per slot");
    assert_eq!(
        rows_of_config(&f, &missed).await?,
        1,
        "missed slots fire once on return"
    );
    let (next,): (chrono::DateTime<chrono::Utc>,) =
        sqlx::query_as("SELECT NextRunAt FROM JobSchedule WHERE ConfigID = ?")
            .bind(&missed)
            .fetch_one(f.pool())
            .await?;
    assert!(
        next > chrono::Utc::now(),
        "the next fire time moved to the future"
    );
    Ok(())
}

#[tokio::test]
async fn job_of_a_killed_worker_completes_on_another_worker() -> anyhow::Result<()> {
    let mut f = Fleet::new().await?;
    f.coordinator()?;
    let a = f.spawn("aegis-worker", &[])?;
    let id = f
        .insert_diagnostic(r#"{"record": true, "sleep_ms": 2000}"#, 0)
        .await?;
    f.wait_status(&id, 2, T).await?;
    // Kill it mid-job: after the first run recorded itself, during its sleep.
    eventually("the first run to start its work", T, || async {
        Ok((runs_of(&f, &id).await? == 1).then_some(()))
    })
    .await?;
    f.processes[a].kill_9();
    f.worker()?;
    f.wait_status(&id, 3, T).await?;
    let (attempt, worker): (i32, String) =
        sqlx::query_as("SELECT Attempt, WorkerID FROM JobHistory WHERE ID = ?")
            .bind(&id)
            .fetch_one(f.pool())
            .await?;
    assert_eq!(attempt, 2);
    assert_ne!(worker, f.processes[a].name);
    assert_eq!(
        runs_of(&f, &id).await?,
        2,
        "it ran again after the crash (at least once)"
    );
    Ok(())
}

#[tokio::test]
async fn max_instances_holds_across_the_fleet() -> anyhow::Result<()> {
    let mut f = Fleet::new().await?;
    let config = diagnostic_config(&f, false, 0, 2, false, r#"{"sleep_ms": 400}"#).await?;
    for _ in 0..8 {
        sqlx::query("INSERT INTO JobHistory (JobId, ConfigID, StatusId, Priority, Payload) SELECT JobId, ID, 1, 0, Payload FROM JobConfig WHERE ID = ?")
            .bind(&config)
            .execute(f.pool())
            .await?;
    }
    f.coordinator()?;
    f.coordinator()?;
    f.worker()?;
    f.worker()?;
    let mut most = 0;
    let deadline = Instant::now() + T;
    loop {
        let (running, done): (i64, i64) = sqlx::query_as(
            "SELECT CAST(COALESCE(SUM(StatusId = 2), 0) AS SIGNED), CAST(COALESCE(SUM(StatusId = 3), 0) AS SIGNED) FROM JobHistory WHERE ConfigID = ?",
        )
        .bind(&config)
        .fetch_one(f.pool())
        .await?;
        most = most.max(running);
        if done == 8 {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "not all done: {done}/8\n{}",
            f.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        most <= 2,
        "at most MaxInstances=2 running at once, saw {most}"
    );
    assert_eq!(most, 2, "and the limit is used");
    Ok(())
}

#[tokio::test]
async fn high_priority_job_overtakes_a_backlog() -> anyhow::Result<()> {
    let mut f = Fleet::new().await?;
    f.env.insert("AEGIS_DISPATCH_WINDOW".into(), "6".into());
    f.env.insert("AEGIS_WORKER_CONCURRENCY".into(), "2".into());
    let mut values = Vec::new();
    for _ in 0..120 {
        values.push(format!("('{}', (SELECT Id FROM Job WHERE Struct = 'DiagnosticJob'), 1, 5, '{{\"sleep_ms\": 50}}')", uuid::Uuid::new_v4()));
    }
    sqlx::query(&format!(
        "INSERT INTO JobHistory (ID, JobId, StatusId, Priority, Payload) VALUES {}",
        values.join(",")
    ))
    .execute(f.pool())
    .await?;
    f.coordinator()?;
    f.worker()?;
    eventually("the backlog to start draining", T, || async {
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM JobHistory WHERE StatusId = 3")
            .fetch_one(f.pool())
            .await?;
        Ok((n >= 10).then_some(()))
    })
    .await?;
    let urgent = f.insert_diagnostic("{}", 0).await?;
    f.wait_status(&urgent, 3, T).await?;
    let (later,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM JobHistory WHERE Priority = 5 AND (StartedAt IS NULL OR StartedAt > (SELECT StartedAt FROM JobHistory WHERE ID = ?))",
    )
    .bind(&urgent)
    .fetch_one(f.pool())
    .await?;
    assert!(later >= 80, "the priority-0 job started before most of the backlog; only {later} of 120 started after it");
    Ok(())
}

#[tokio::test]
async fn sigterm_drains_running_jobs_and_releases_the_rest() -> anyhow::Result<()> {
    let mut f = Fleet::new().await?;
    f.coordinator()?;
    let a = f.spawn("aegis-worker", &[("AEGIS_SHUTDOWN_GRACE", "1500ms")])?;
    let quick = f
        .insert_diagnostic(r#"{"sleep_ms": 800, "record": true}"#, 0)
        .await?;
    let slow = f
        .insert_diagnostic(r#"{"sleep_ms": 5000, "record": true}"#, 0)
        .await?;
    f.wait_status(&quick, 2, T).await?;
    f.wait_status(&slow, 2, T).await?;
    f.processes[a].terminate();
    let code = f.processes[a].wait(Duration::from_secs(15)).await?;
    assert_eq!(code, Some(0), "{}", f.logs());
    assert_eq!(
        f.status(&quick).await?,
        3,
        "a job that finishes within the grace period completes"
    );
    let (status, attempt): (i32, i32) =
        sqlx::query_as("SELECT StatusId, Attempt FROM JobHistory WHERE ID = ?")
            .bind(&slow)
            .fetch_one(f.pool())
            .await?;
    assert_eq!(
        (status, attempt),
        (1, 0),
        "the slow job went back to pending, not counted as an attempt"
    );
    f.worker()?;
    f.wait_status(&slow, 3, T).await?;
    Ok(())
}

#[tokio::test]
async fn two_coordinators_and_three_workers_run_5000_jobs_exactly_once() -> anyhow::Result<()> {
    let mut f = Fleet::new().await?;
    for chunk in 0..10 {
        let values: Vec<String> = (0..500)
            .map(|i| format!("('{}', (SELECT Id FROM Job WHERE Struct = 'DiagnosticJob'), 1, {}, '{{\"record\": true}}')", uuid::Uuid::new_v4(), (chunk + i) % 6))
            .collect();
        sqlx::query(&format!(
            "INSERT INTO JobHistory (ID, JobId, StatusId, Priority, Payload) VALUES {}",
            values.join(",")
        ))
        .execute(f.pool())
        .await?;
    }
    f.coordinator()?;
    f.coordinator()?;
    f.worker()?;
    f.worker()?;
    f.worker()?;
    eventually("5000 completed jobs", Duration::from_secs(180), || async {
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM JobHistory WHERE StatusId = 3")
            .fetch_one(f.pool())
            .await?;
        Ok((n == 5000).then_some(()))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", f.logs()))?;
    let (runs, distinct): (i64, i64) =
        sqlx::query_as("SELECT COUNT(*), COUNT(DISTINCT JobHistoryID) FROM DiagnosticRun")
            .fetch_one(f.pool())
            .await?;
    assert_eq!((runs, distinct), (5000, 5000), "every job ran exactly once");
    let (workers,): (i64,) = sqlx::query_as("SELECT COUNT(DISTINCT WorkerID) FROM DiagnosticRun")
        .fetch_one(f.pool())
        .await?;
    assert_eq!(workers, 3, "all three workers took part");
    Ok(())
}

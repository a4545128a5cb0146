//! A 429 with `Retry-After: 2` seen by one process pauses every process.

use std::path::Path;
use std::time::Duration;

use aegis_tests::ratelimit_support::{insert_source, ProbeArgs, ProbeProcess, Recorder};
use aegis_tests::{eventually, unique_name, TestDb};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_with_retry_after_pauses_every_process_for_that_long() -> anyhow::Result<()> {
    let db = TestDb::create().await?;
    let rec = Recorder::start().await?;
    let id = insert_source(&db.pool, &rec.base_url(), json!({"Username": "u", "Password": "p", "Delay": 50_000_000u64, "Concurrency": 2, "Retries": 1})).await?;
    let args = ProbeArgs {
        redis_url: std::env::var("AEGIS_TEST_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into()),
        namespace: unique_name("rlpause"),
        database: Some((db.url.clone(), id)),
        fixed: None,
        tasks: 2,
        // Long enough that, after the 2 s pause, every process gets more turns
        // even when process start-up is slow on a loaded machine.
        duration: Duration::from_secs(12),
        path: "/work?ms=2".into(),
        lease_ttl: Duration::from_secs(30),
    };
    let bin = Path::new(env!("CARGO_BIN_EXE_limit_probe"));
    let mut running = Vec::new();
    for i in 0..3 {
        running.push(ProbeProcess::spawn(bin, &format!("p{i}"), &args).await?);
    }
    eventually(
        "every process is sending",
        Duration::from_secs(10),
        || async {
            let probes: std::collections::HashSet<_> =
                rec.hits().into_iter().map(|h| h.probe).collect();
            Ok((probes.len() == 3).then_some(()))
        },
    )
    .await?;
    rec.script(429, Some(2));
    for p in running {
        p.finish(Duration::from_secs(30)).await?;
    }

    let hits = rec.hits();
    let i = hits
        .iter()
        .position(|h| h.status == 429)
        .ok_or_else(|| anyhow::anyhow!("no 429 was served"))?;
    let answered = hits[i]
        .end
        .ok_or_else(|| anyhow::anyhow!("the 429 never ended"))?;
    let next = hits
        .get(i + 1)
        .ok_or_else(|| anyhow::anyhow!("nothing was sent after the pause"))?;
    // The pause starts when the client has read the 429, after `answered`.
    assert!(
        next.start >= answered + Duration::from_secs(2) - Duration::from_millis(5),
        "{} started {:?} after the 429 was answered",
        next.probe,
        next.start - answered
    );
    let after: std::collections::HashSet<_> =
        hits[i + 1..].iter().map(|h| h.probe.clone()).collect();
    assert_eq!(after.len(), 3, "every process resumed after the pause");
    Ok(())
}

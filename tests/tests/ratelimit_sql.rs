//! Operators change Delay and Concurrency with SQL; running processes follow
//! within 5 seconds, without a restart.

use std::path::Path;
use std::time::{Duration, Instant};

use aegis_shared::ratelimit::LimitsCache;
use aegis_tests::ratelimit_support::{
    insert_source, spacing_violations, Hit, ProbeArgs, ProbeProcess, Recorder,
};
use aegis_tests::{eventually, unique_name, TestDb};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delay_changed_by_sql_takes_effect_in_every_process_within_five_seconds(
) -> anyhow::Result<()> {
    let db = TestDb::create().await?;
    let rec = Recorder::start().await?;
    let id = insert_source(
        &db.pool,
        &rec.base_url(),
        json!({"Username": "u", "Password": "p", "Delay": 200_000_000u64, "Concurrency": 2}),
    )
    .await?;
    let args = ProbeArgs {
        redis_url: std::env::var("AEGIS_TEST_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into()),
        namespace: unique_name("rlsql"),
        database: Some((db.url.clone(), id.clone())),
        fixed: None,
        tasks: 2,
        duration: Duration::from_secs(8),
        path: "/work?ms=2".into(),
        lease_ttl: Duration::from_secs(30),
    };
    let bin = Path::new(env!("CARGO_BIN_EXE_limit_probe"));
    let mut running = Vec::new();
    for i in 0..3 {
        running.push(ProbeProcess::spawn(bin, &format!("p{i}"), &args).await?);
    }
    eventually(
        "requests under the old Delay",
        Duration::from_secs(10),
        || async { Ok((rec.hits().len() >= 6).then_some(())) },
    )
    .await?;
    let changed_at = rec.now();
    sqlx::query(
        "UPDATE SourceConfig SET AuthInfo = JSON_SET(AuthInfo, '$.Delay', 20000000) WHERE ID = ?",
    )
    .bind(&id)
    .execute(&db.pool)
    .await?;
    for p in running {
        p.finish(Duration::from_secs(30)).await?;
    }

    let hits = rec.hits();
    let before: Vec<_> = hits.iter().filter(|h| h.start < changed_at).collect();
    // Spacing as the server saw it, with the same allowance for loopback delivery
    // jitter on a busy 2-core machine as the fleet test: nothing below Delay − 5 ms,
    // and at most 2 % of gaps between Delay − 5 ms and Delay − 2 ms.
    let check = |hits: &[Hit], delay: Duration, what: &str| {
        let strict = spacing_violations(hits, delay - Duration::from_millis(2));
        assert!(
            spacing_violations(hits, delay - Duration::from_millis(5)).is_empty(),
            "{what} Delay violated by more than delivery jitter: {strict:?}"
        );
        assert!(
            strict.len() * 100 <= hits.len().max(50) * 2,
            "{what} Delay: {} of {} gaps below Delay − 2 ms: {strict:?}",
            strict.len(),
            hits.len()
        );
    };
    let before_hits: Vec<Hit> = before.iter().map(|h| (*h).clone()).collect();
    check(&before_hits, Duration::from_millis(200), "old");
    let after: Vec<_> = hits.iter().filter(|h| h.start >= changed_at).collect();
    let first_fast = after
        .windows(2)
        .find(|w| w[1].start - w[0].start < Duration::from_millis(100))
        .map(|w| w[1].start)
        .ok_or_else(|| anyhow::anyhow!("the new Delay never took effect"))?;
    assert!(
        first_fast - changed_at <= Duration::from_secs(5),
        "the new Delay took {:?}",
        first_fast - changed_at
    );
    let after_hits: Vec<Hit> = after.iter().map(|h| (*h).clone()).collect();
    check(&after_hits, Duration::from_millis(20), "new");
    Ok(())
}

#[tokio::test]
async fn a_concurrency_changed_by_sql_is_read_within_five_seconds() -> anyhow::Result<()> {
    let db = TestDb::create().await?;
    let id = insert_source(
        &db.pool,
        "http://127.0.0.1:9",
        json!({"Username": "u", "Delay": 0}),
    )
    .await?;
    let cache = LimitsCache::new(db.pool.clone());
    assert_eq!(
        cache.get(&id).await?.concurrency,
        None,
        "a missing Concurrency is reported as missing"
    );
    let changed = Instant::now();
    sqlx::query(
        "UPDATE SourceConfig SET AuthInfo = JSON_SET(AuthInfo, '$.Concurrency', 7) WHERE ID = ?",
    )
    .bind(&id)
    .execute(&db.pool)
    .await?;
    eventually(
        "the cache reads Concurrency 7",
        Duration::from_secs(5),
        || {
            let (cache, id) = (cache.clone(), id.clone());
            async move { Ok((cache.get(&id).await?.concurrency == Some(7)).then_some(())) }
        },
    )
    .await?;
    assert!(changed.elapsed() <= Duration::from_secs(5));
    Ok(())
}

//! Redis stops mid-run: requests continue under the local fallback limit;
//! Redis comes back: the fleet-wide limit holds again.

use std::path::Path;
use std::time::Duration;

use aegis_tests::eventually;
use aegis_tests::ratelimit_support::{spacing_violations, Hit, ProbeArgs, ProbeProcess, Recorder, ThrowawayRedis};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_continue_under_the_local_limit_while_redis_is_down_and_the_global_limit_returns() -> anyhow::Result<()> {
    let mut redis = ThrowawayRedis::start().await?;
    let rec = Recorder::start().await?;
    let delay = Duration::from_millis(20);
    let args = ProbeArgs {
        redis_url: redis.url(),
        namespace: "outage".into(),
        database: None,
        fixed: Some((rec.base_url(), delay.as_micros() as u64, 4)),
        tasks: 3,
        duration: Duration::from_secs(9),
        path: "/work?ms=2".into(),
        lease_ttl: Duration::from_secs(30),
    };
    let bin = Path::new(env!("CARGO_BIN_EXE_limit_probe"));
    let mut running = Vec::new();
    for i in 0..3 {
        running.push(ProbeProcess::spawn(bin, &format!("p{i}"), &args).await?);
    }
    eventually("requests under the global limit", Duration::from_secs(10), || async { Ok((rec.hits().len() >= 20).then_some(())) }).await?;
    redis.kill().await?;
    let killed = rec.now();
    eventually("requests continue without Redis", Duration::from_secs(10), || async {
        let during = rec.hits().iter().filter(|h| h.start > killed + Duration::from_millis(500)).count();
        Ok((during >= 15).then_some(()))
    })
    .await?;
    let restarting = rec.now();
    redis.restart().await?;
    let restarted = rec.now();
    let summaries: Vec<serde_json::Value> = {
        let mut s = Vec::new();
        for p in running {
            s.push(p.finish(Duration::from_secs(30)).await?);
        }
        s
    };

    let hits = rec.hits();
    for s in &summaries {
        assert!(s["local_permits"].as_u64().unwrap_or(0) > 0, "a process never used the local limit: {s}");
        assert_eq!(s["errors"], 0, "requests failed during the outage: {s}");
    }
    // While down: each process alone keeps Delay × 4 (the default share) and 4 / 4 = 1 in flight.
    // Starts reserved from Redis before the kill (at most Concurrency × Delay = 80 ms ahead)
    // may still go out during the switch, so the check begins 300 ms after the kill.
    let down: Vec<&Hit> = hits.iter().filter(|h| h.start > killed + Duration::from_millis(300) && h.start < restarting).collect();
    for name in ["p0", "p1", "p2"] {
        let mine: Vec<Hit> = down.iter().filter(|h| h.probe == name).map(|h| (*h).clone()).collect();
        assert!(!mine.is_empty(), "{name} sent nothing while Redis was down");
        let v = spacing_violations(&mine, delay * 4 - Duration::from_millis(2));
        assert!(v.is_empty(), "{name} broke the local limit: {v:?} (Redis killed at {killed:?}, restarting at {restarting:?}, {name} sent {:?})", mine.iter().map(|h| h.start).collect::<Vec<_>>());
    }
    // Back: after the retry interval (1 s) plus slack, the fleet-wide Delay holds again.
    // The last 500 ms are left out: the processes are exiting then, which on a
    // 2-core machine delays some sends by more than the 2 ms allowed for jitter.
    let end = hits.last().map(|h| h.start).unwrap_or_default().saturating_sub(Duration::from_millis(500));
    let back: Vec<Hit> = hits.iter().filter(|h| h.start > restarted + Duration::from_millis(2500) && h.start < end).cloned().collect();
    assert!(back.len() > 20, "too few requests after Redis returned: {}", back.len());
    let v = spacing_violations(&back, delay - Duration::from_millis(2));
    assert!(v.is_empty(), "the global limit did not return: {:?}", &v[..v.len().min(5)]);
    let rate = aegis_tests::ratelimit_support::start_rate(&back);
    assert!(rate > 0.9 / delay.as_secs_f64(), "global rate after recovery only {rate:.1}/s");
    Ok(())
}

//! A worker killed with `kill -9` while holding leases does not keep its
//! concurrency slots: they expire within the lease time.

use std::path::Path;
use std::time::{Duration, Instant};

use aegis_shared::ratelimit::{EffectiveLimits, Grant, Limiter, LimiterOptions};
use aegis_tests::ratelimit_support::{ProbeArgs, ProbeProcess, Recorder};
use aegis_tests::{eventually, unique_name};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_process_slots_return_within_the_lease_time() -> anyhow::Result<()> {
    let redis_url = std::env::var("AEGIS_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into());
    let rec = Recorder::start().await?;
    let lease_ttl = Duration::from_secs(3);
    let namespace = unique_name("rlcrash");
    let args = ProbeArgs {
        redis_url: redis_url.clone(),
        namespace: namespace.clone(),
        database: None,
        fixed: Some((rec.base_url(), 0, 2)),
        tasks: 2,
        duration: Duration::from_secs(60),
        path: "/hold".into(),
        lease_ttl,
    };
    let mut holder = ProbeProcess::spawn(Path::new(env!("CARGO_BIN_EXE_limit_probe")), "holder", &args).await?;
    eventually("the holder has 2 requests in flight", Duration::from_secs(10), || async { Ok((rec.in_flight() == 2).then_some(())) }).await?;

    // The same limit as the probe's fixed one (its SourceConfig ID is `bench-<namespace>`).
    let limiter = Limiter::with_options(&redis_url, &namespace, LimiterOptions { lease_ttl, ..LimiterOptions::default() })?;
    let limits = EffectiveLimits { limit_key: format!("bench-{namespace}"), delay_us: 0, concurrency: 2 };
    let keys = limiter.keys(&limits.limit_key);
    // Let the holder's leases be extended once (at half the TTL), so expiry is measured from a heartbeat.
    let held_since = Instant::now();
    eventually("the holder's requests outlive half a lease", Duration::from_secs(10), || async {
        Ok((held_since.elapsed() > lease_ttl / 2 + Duration::from_millis(300)).then_some(()))
    })
    .await?;
    assert!(
        matches!(limiter.try_grant(&keys, &limits, "probe-before-kill").await?, Grant::Denied { .. }),
        "both slots should be held by the holder (its leases were extended)"
    );

    holder.kill9().await?;
    let killed = Instant::now();
    let returned = eventually("a slot of the killed process returns", lease_ttl + Duration::from_secs(2), || {
        let (limiter, keys, limits) = (limiter.clone(), keys.clone(), limits.clone());
        async move {
            match limiter.try_grant(&keys, &limits, "after-kill").await? {
                Grant::Granted { .. } => Ok(Some(killed.elapsed())),
                Grant::Denied { .. } => Ok(None),
            }
        }
    })
    .await?;
    rec.release_holds();
    assert!(returned <= lease_ttl + Duration::from_millis(200), "slots came back after {returned:?}, lease is {lease_ttl:?}");
    limiter.release_lease(&keys, &limits.limit_key, "after-kill").await?;
    Ok(())
}

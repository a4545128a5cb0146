//! The source HTTP client against a local recording server: the probe report,
//! retries with intact bodies, idempotency, and credentials kept out of errors.

use std::time::Duration;

use aegis_shared::model::source_config;
use aegis_shared::ratelimit::{Limiter, LimiterOptions, LimitsCache};
use aegis_shared::source_http::{probe, ClientOptions, RequestSpec, SourceClient, SourceHttpError};
use aegis_tests::ratelimit_support::{insert_source, Recorder};
use aegis_tests::{unique_name, TestDb};
use reqwest::Method;
use serde_json::json;

const PASSWORD: &str = "hunter2-very-secret";

async fn client(db: &TestDb, address: &str, auth: serde_json::Value) -> anyhow::Result<SourceClient> {
    let id = insert_source(&db.pool, address, auth).await?;
    let sc = source_config::by_id(&db.pool, &id).await?;
    let redis = std::env::var("AEGIS_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into());
    let limiter = Limiter::with_options(&redis, &unique_name("rlclient"), LimiterOptions::default())?;
    let options = ClientOptions { backoff_base: Duration::from_millis(20), connect_timeout: Duration::from_secs(2), ..ClientOptions::default() };
    Ok(SourceClient::with_options(&sc, None, limiter, LimitsCache::new(db.pool.clone()), options)?)
}

#[tokio::test]
async fn probe_reports_latency_limiter_waits_and_statuses_of_the_health_endpoint() -> anyhow::Result<()> {
    let db = TestDb::create().await?;
    let rec = Recorder::start().await?;
    let c = client(&db, &rec.base_url(), json!({"Username": "u", "Password": PASSWORD, "Delay": 10_000_000u64, "Concurrency": 4})).await?;
    let report = probe(&c, 20, None).await?;
    assert_eq!((report.count, report.ok, report.errors), (20, 20, 0));
    assert_eq!(report.statuses.get(&200), Some(&20));
    assert_eq!(report.path, "/rest/api/2/serverInfo");
    // 20 starts 10 ms apart: the last one waited about 190 ms.
    assert!(report.limiter_wait.max_ms >= 150.0, "{report:?}");
    assert!(report.latency.max_ms > 0.0);
    let value = serde_json::to_value(&report)?;
    assert!(value["limiter_wait"]["p99_ms"].is_number());
    let hits = rec.hits();
    assert!(hits.iter().all(|h| h.path == "/rest/api/2/serverInfo"));
    assert!(hits.iter().all(|h| h.authorization.as_deref().is_some_and(|a| a.starts_with("Basic "))));
    let custom = probe(&c, 2, Some("/custom/health")).await?;
    assert_eq!(custom.ok, 2);
    Ok(())
}

#[tokio::test]
async fn retryable_statuses_are_retried_with_the_same_body_and_only_when_idempotent() -> anyhow::Result<()> {
    let db = TestDb::create().await?;
    let rec = Recorder::start().await?;
    let c = client(&db, &rec.base_url(), json!({"Username": "u", "Password": PASSWORD, "Concurrency": 2, "Retries": 2})).await?;

    rec.script(503, None);
    let r = c.get("/rest/api/2/issue/{key}", "/rest/api/2/issue/VULN-1").await?;
    assert_eq!((r.status().as_u16(), r.attempts()), (200, 2));
    drop(r);

    rec.script(500, None);
    let put = RequestSpec::new(Method::PUT, "/rest/api/2/issue/{key}", "/rest/api/2/issue/VULN-1").body("{\"fields\":{}}");
    assert_eq!(c.send(put).await?.attempts(), 2);

    rec.script(500, None);
    let post = RequestSpec::new(Method::POST, "/rest/api/2/issue", "/rest/api/2/issue").body("{\"new\":1}");
    let r = c.send(post).await?;
    assert_eq!((r.status().as_u16(), r.attempts()), (500, 1), "a POST is not retried after it was sent");
    assert!(matches!(r.error_for_status(), Err(SourceHttpError::Status { .. })));

    rec.script(502, None);
    let post = RequestSpec::new(Method::POST, "/rest/api/2/search", "/rest/api/2/search").body("{\"jql\":\"x\"}").idempotent(true);
    assert_eq!(c.send(post).await?.attempts(), 2);

    let bodies: Vec<String> = rec.hits().iter().filter(|h| h.path == "/rest/api/2/issue/VULN-1" && !h.body.is_empty()).map(|h| String::from_utf8_lossy(&h.body).into_owned()).collect();
    assert_eq!(bodies, vec!["{\"fields\":{}}".to_string(); 2], "the retried PUT resent its body");
    let search: Vec<_> = rec.hits().into_iter().filter(|h| h.path == "/rest/api/2/search").collect();
    assert_eq!(search.len(), 2);
    assert!(search.iter().all(|h| h.body == b"{\"jql\":\"x\"}"));
    Ok(())
}

#[tokio::test]
async fn failures_and_garbage_become_errors_that_never_show_credentials() -> anyhow::Result<()> {
    let db = TestDb::create().await?;
    let rec = Recorder::start().await?;
    let c = client(&db, &rec.base_url(), json!({"Username": "u", "Password": PASSWORD, "Concurrency": 2})).await?;
    // `{"ok":true}` is not a list of numbers.
    let e = c.get("/x", "/x").await?.json::<Vec<u32>>().await.expect_err("garbage must fail the call");
    assert!(matches!(e, SourceHttpError::Decode { .. }), "{e}");
    assert!(!format!("{e} {e:?}").contains(PASSWORD));
    assert!(!format!("{c:?}").contains(PASSWORD));

    // Nothing listens on port 9 of loopback: connection refused, retried, then an error.
    let down = client(&db, "http://127.0.0.1:9", json!({"Username": "u", "Password": PASSWORD, "Concurrency": 1, "Retries": 1})).await?;
    let e = down.get("/rest/api/2/serverInfo", "/rest/api/2/serverInfo?token=abc").await.expect_err("nothing listens");
    let text = format!("{e} {e:?}");
    assert!(matches!(e, SourceHttpError::Transport { attempts: 2, .. }), "{text}");
    assert!(!text.contains(PASSWORD) && !text.contains("token=abc"), "{text}");
    assert!(text.contains("/rest/api/2/serverInfo"));
    Ok(())
}

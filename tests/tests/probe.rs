//! DiagnosticJob's probe: an operator checks connectivity and limits from the
//! fleet. N requests to a source's health endpoint go through the rate-limited
//! client (fleet-wide Delay) to the JIRA simulator; a wrong password fails the
//! job with the report, without the password.

use std::time::Duration;

use aegis_shared::model::organization;
use aegis_shared::model::source_config::{self, NewSourceConfig, Vendor};
use aegis_shared::secrets::{Keyring, Secret};
use aegis_sim::{SimConfig, Simulator};
use aegis_tests::fleet::Fleet;

async fn jira_source(
    f: &Fleet,
    keyring: &Keyring,
    address: &str,
    password: &str,
    delay_ns: u64,
) -> anyhow::Result<String> {
    let mut tx = f.pool().begin().await?;
    if organization::by_code(f.pool(), "PROBE").await.is_err() {
        aegis_tests::setup::organization(&mut tx, "PROBE").await?;
    }
    let (sc, _) = source_config::create(
        &mut tx,
        &NewSourceConfig {
            password: Secret::new(password),
            delay_ns,
            concurrency: 2,
            payload: serde_json::from_str(r#"{"project":"VULN"}"#)?,
            ..aegis_tests::setup::source("PROBE", Vendor::Jira, address)
        },
        Some(keyring),
    )
    .await?;
    tx.commit().await?;
    Ok(sc.id)
}

#[tokio::test]
async fn probe_sends_spaced_requests_through_the_limiter_and_reports_them() -> anyhow::Result<()> {
    let sim = Simulator::start(SimConfig::default()).await?;
    let key = Keyring::generate_entry("k1");
    let keyring = Keyring::parse(&key)?;
    let mut f = Fleet::new().await?;
    f.env.insert("AEGIS_ENCRYPTION_KEY".into(), key.clone());
    let good = jira_source(&f, &keyring, &sim.jira_url(), "aegis", 50_000_000).await?;
    let bad = jira_source(&f, &keyring, &sim.jira_url(), "not-the-password", 0).await?;
    f.coordinator()?;
    f.worker()?;

    sim.clear_request_log();
    let id = f
        .insert_diagnostic(
            &format!(r#"{{"probe": {{"source_config": "{good}", "requests": 8}}}}"#),
            0,
        )
        .await?;
    f.wait_status(&id, 3, Duration::from_secs(60)).await?;
    let starts: Vec<u64> = sim
        .request_log()
        .iter()
        .filter(|e| e.path.ends_with("/serverInfo"))
        .map(|e| e.started_us)
        .collect();
    assert_eq!(starts.len(), 8, "eight probe requests reached JIRA");
    for pair in starts.windows(2) {
        let gap_ms = pair[1].saturating_sub(pair[0]) as f64 / 1000.0;
        assert!(
            gap_ms >= 45.0,
            "requests spaced by the source's Delay (50 ms), saw {gap_ms} ms"
        );
    }
    let log = f.logs();
    assert!(
        log.contains("Probe of JIRA") && log.contains("\"limiter_wait\""),
        "{log}"
    );

    let failing = f
        .insert_diagnostic(
            &format!(r#"{{"probe": {{"source_config": "{bad}", "requests": 2}}}}"#),
            0,
        )
        .await?;
    f.wait_status(&failing, 4, Duration::from_secs(60)).await?;
    let (error,): (Option<String>,) =
        sqlx::query_as("SELECT LastError FROM JobHistory WHERE ID = ?")
            .bind(&failing)
            .fetch_one(f.pool())
            .await?;
    let error = error.unwrap_or_default();
    assert!(error.contains("401"), "{error}");
    assert!(
        !error.contains("not-the-password") && !f.logs().contains("not-the-password"),
        "the password never appears"
    );
    sim.shutdown().await;
    Ok(())
}

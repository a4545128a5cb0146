//! The FAQ's pipeline across jobs: VulnSyncJob and AssetSyncJob fill the
//! Detection table from the Qualys simulator, TicketingJob opens one JIRA ticket
//! per finding, a person closes one as an approved exception (CERF and
//! expiration) in the JIRA simulator, ExceptionJob turns it into an Ignore row,
//! the next AssetSyncJob attaches that row to the detection, and the next
//! TicketingJob opens nothing new.

use std::time::Duration;

use aegis_sim::{EstateSpec, ScanTiming, SimConfig, Simulator, WorldFixture};
use aegis_tests::estate::{start_job, Estate};
use aegis_tests::fleet::Fleet;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(60);

fn fixture() -> WorldFixture {
    serde_json::from_value(json!({
        "hosts": [
            {"ip": "10.0.0.1", "hostname": "web1.example", "os": "Ubuntu Linux 18.04", "qualys_host_id": 1001, "nexpose_asset_id": 1,
             "asset_group_ids": [42], "site_ids": [1],
             "vulns": [{"qid": 38739, "port": 443, "protocol": "tcp", "proof": "TLSv1.0 enabled"},
                       {"qid": 38742, "port": 80, "protocol": "tcp"}]},
            {"ip": "10.0.0.2", "hostname": "db1.example", "os": "Windows Server 2019", "qualys_host_id": 1002, "nexpose_asset_id": 2,
             "asset_group_ids": [42], "site_ids": [1],
             "vulns": [{"qid": 38739, "port": 443, "protocol": "tcp"}]}
        ],
        "kb": [
            {"qid": 38739, "title": "SSL weak ciphers", "severity": 3, "cvss2": 7.5, "cvss3": 7.4, "cves": ["CVE-2016-2183"],
             "solution": "Disable weak ciphers", "patchable": true},
            {"qid": 38742, "title": "Apache old", "cvss2": 6.8, "cves": ["CVE-2017-9798"]}
        ],
        "asset_groups": [{"id": 42, "title": "DMZ", "appliance_ids": [7]}],
        "appliances": [{"id": 7, "name": "sim-scanner-1", "status": "Online"}],
        "sites": [{"id": 1, "name": "DMZ"}]
    }))
    .expect("fixture")
}

async fn run(f: &Fleet, config: &str, payload: Value) -> anyhow::Result<()> {
    let id = start_job(f.pool(), config, &payload).await?;
    f.wait_status(&id, 3, T).await
}

async fn count(f: &Fleet, sql: &str) -> anyhow::Result<i64> {
    let (n,): (i64,) = sqlx::query_as(sql).fetch_one(f.pool()).await?;
    Ok(n)
}

#[tokio::test]
async fn an_approved_exception_becomes_an_ignore_row_that_the_next_sync_attaches(
) -> anyhow::Result<()> {
    let sim = Simulator::start(SimConfig {
        estate: EstateSpec {
            hosts: 0,
            detections_per_host: 0,
            seed: 1,
        },
        fixture: Some(fixture()),
        scan_timing: ScanTiming::fast(),
        ..Default::default()
    })
    .await?;
    let mut f = Fleet::new().await?;
    f.coordinator()?;
    f.worker()?;
    let pool = f.pool().clone();
    let e = Estate::create(&pool, "NORTON", &sim.source_configs()["jira"], (0, 8, 2)).await?;
    // The estate's scanner config points at the Qualys simulator.
    sqlx::query("UPDATE SourceConfig SET Address = ?, AuthInfo = JSON_SET(AuthInfo, '$.Host', ?) WHERE ID = ?")
        .bind(sim.qualys_url())
        .bind(sim.qualys_url())
        .bind(&e.scanner_sc)
        .execute(&pool)
        .await?;
    let vuln_sync = e
        .job_config(
            &pool,
            "VulnSyncJob",
            &e.scanner_sc,
            &e.scanner_sc,
            json!({}),
        )
        .await?;
    let asset_sync = e
        .job_config(
            &pool,
            "AssetSyncJob",
            &e.scanner_sc,
            &e.scanner_sc,
            json!({"groups": ["42"], "groups_exempt_from_global_exceptions": null}),
        )
        .await?;
    let ticketing = e
        .job_config(
            &pool,
            "TicketingJob",
            &e.scanner_sc,
            &e.jira_sc,
            json!({"mindate": "2000-01-01T00:00:00Z"}),
        )
        .await?;
    let exceptions = e
        .job_config(&pool, "ExceptionJob", &e.jira_sc, &e.scanner_sc, json!({}))
        .await?;

    run(&f, &vuln_sync, json!({})).await?;
    run(
        &f,
        &asset_sync,
        json!({"groups": ["42"], "groups_exempt_from_global_exceptions": null}),
    )
    .await?;
    assert_eq!(
        count(&f, "SELECT COUNT(*) FROM Detection").await?,
        3,
        "{}",
        f.logs()
    );
    run(
        &f,
        &ticketing,
        json!({"mindate": "2000-01-01T00:00:00Z", "groups": ["42"]}),
    )
    .await?;
    assert_eq!(
        count(&f, "SELECT COUNT(*) FROM Ticket").await?,
        3,
        "one ticket per finding\n{}",
        f.logs()
    );

    // A person approves an exception for web1's weak-cipher finding.
    let (key, detection): (String, String) = sqlx::query_as(
        "SELECT t.Title, t.DetectionID FROM Ticket t JOIN Detection d ON d.ID = t.DetectionID
           JOIN VulnerabilityInfo v ON v.ID = d.VulnerabilityID
          WHERE d.DeviceID = '1001' AND v.SourceVulnId = '38739'",
    )
    .fetch_one(&pool)
    .await?;
    let id_of = aegis_tests::setup::jira_fields(&sim).await?;
    let expiration = (chrono::Utc::now() + chrono::Duration::days(60))
        .format("%Y-%m-%dT%H:%M:%S%.3f+0000")
        .to_string();
    let r = reqwest::Client::new()
        .put(format!("{}/rest/api/2/issue/{key}", sim.jira_url()))
        .basic_auth("remediator", Some("aegis"))
        .json(&json!({"fields": {id_of["CERF"].clone(): "CERF-2026-11", id_of["Exception Expiration"].clone(): expiration}}))
        .send()
        .await?;
    anyhow::ensure!(
        r.status().is_success(),
        "setting the CERF: {}",
        r.text().await?
    );
    sim.jira_transition(&key, "Closed-Exception")?;

    run(&f, &exceptions, json!({})).await?;
    let (ignore_id, approval, type_id): (String, String, i32) =
        sqlx::query_as("SELECT ID, Approval, TypeId FROM `Ignore` WHERE DeviceID = '1001' AND VulnerabilityId = '38739' AND Active = 1")
            .fetch_one(&pool)
            .await?;
    assert_eq!((approval.as_str(), type_id), ("CERF-2026-11", 0));

    // The next sync attaches the exception to the detection...
    run(
        &f,
        &asset_sync,
        json!({"groups": ["42"], "groups_exempt_from_global_exceptions": null}),
    )
    .await?;
    let (attached,): (Option<String>,) =
        sqlx::query_as("SELECT IgnoreID FROM Detection WHERE ID = ?")
            .bind(&detection)
            .fetch_one(&pool)
            .await?;
    assert_eq!(
        attached.as_deref(),
        Some(ignore_id.as_str()),
        "the next AssetSync attaches the Ignore row"
    );
    // ...and the next TicketingJob opens nothing new, for it or any other finding.
    run(
        &f,
        &ticketing,
        json!({"mindate": "2000-01-01T00:00:00Z", "groups": ["42"]}),
    )
    .await?;
    assert_eq!(count(&f, "SELECT COUNT(*) FROM Ticket").await?, 3);
    let issues = sim.state_summary()["jira"]["issues"]
        .as_array()
        .map(Vec::len)
        .unwrap_or(0);
    assert_eq!(issues, 3, "no second JIRA issue");
    sim.shutdown().await;
    Ok(())
}

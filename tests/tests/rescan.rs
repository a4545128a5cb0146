//! The rescan loop end to end: the Qualys and JIRA simulators in this process,
//! real MariaDB, RabbitMQ and Redis, and real coordinator and worker
//! processes. AssetSyncJob and TicketingJob open the tickets; a person moves
//! some of them in the JIRA simulator; RescanQueueJob → RescanJob →
//! ScanSyncJob → ScanCloseJob must then leave every ticket in the right state.
//!
//! Run `cargo build --workspace --bins` first.

use std::time::Duration;

use aegis_shared::model::source_config::Vendor;
use aegis_sim::{HostPatch, Proto, QualysScanState, WorldFixture};
use aegis_tests::eventually;
use aegis_tests::rescan_rig::{ip, Rig, RigBuilder, Side, T};
use serde_json::{json, Value};

/// Four hosts in Qualys asset group 42 (appliance 7).
fn fixture() -> WorldFixture {
    serde_json::from_value(json!({
        "hosts": [
            {"ip": "10.0.0.1", "hostname": "web1.example", "os": "Ubuntu Linux 18.04", "qualys_host_id": 1001, "nexpose_asset_id": 1, "site_ids": [1],
             "asset_group_ids": [42],
             "vulns": [{"qid": 38739, "port": 443, "protocol": "tcp", "proof": "TLSv1.0 enabled"},
                       {"qid": 38740, "port": 22, "protocol": "tcp", "proof": "<b>OpenSSH 7.2</b> banner"}]},
            {"ip": "10.0.0.2", "hostname": "db1.example", "os": "Windows Server 2019", "qualys_host_id": 1002, "nexpose_asset_id": 2, "site_ids": [1],
             "asset_group_ids": [42],
             "vulns": [{"qid": 38739, "port": 443, "protocol": "tcp"}, {"qid": 38741, "port": 8080, "protocol": "tcp"}]},
            {"ip": "10.0.0.3", "hostname": "app1.example", "os": "CentOS 7", "qualys_host_id": 1003, "nexpose_asset_id": 3, "site_ids": [1],
             "asset_group_ids": [42], "vulns": [{"qid": 38741, "port": 8080, "protocol": "tcp"}]},
            {"ip": "10.0.0.4", "hostname": "app2.example", "os": "CentOS 7", "qualys_host_id": 1004, "nexpose_asset_id": 4, "site_ids": [1],
             "asset_group_ids": [42], "vulns": [{"qid": 38742, "port": 80, "protocol": "tcp"}]}
        ],
        "kb": [
            {"qid": 38739, "title": "SSL weak ciphers", "severity": 4, "cvss2": 7.5, "cvss3": 7.4},
            {"qid": 38740, "title": "SSH old", "severity": 4, "cvss2": 7.8},
            {"qid": 38741, "title": "Tomcat manager exposed", "severity": 5, "cvss2": 9.0},
            {"qid": 38742, "title": "Apache old", "severity": 4, "cvss2": 7.2}
        ],
        "asset_groups": [{"id": 42, "title": "DMZ", "appliance_ids": [7]}],
        "appliances": [{"id": 7, "name": "sim-scanner-1", "status": "Online"}],
        "sites": [{"id": 1, "name": "DMZ"}]
    }))
    .expect("fixture")
}

/// The rig of these tests: Qualys (concurrent-scan limit `scan_limit`) or
/// Nexpose, 8 parallel Qualys API calls, and TicketSyncJob besides the loop's
/// jobs.
fn builder(workers: usize, scanner: Vendor, scan_limit: usize) -> RigBuilder {
    let b = RigBuilder::new("RESCAN", fixture())
        .workers(workers)
        .qualys_concurrency_limit(8)
        .concurrent_scan_limit(scan_limit)
        .job("TicketSyncJob", Side::Jira, Side::Scanner, json!({}));
    if scanner == Vendor::Nexpose {
        b.scanner(Vendor::Nexpose).groups(&[1])
    } else {
        b.scanner_payload("concurrent_scan_retry_seconds", json!(1))
            .scanner_payload("concurrent_scan_retries", json!(2))
    }
}

async fn rig(workers: usize) -> anyhow::Result<Rig> {
    rig_with(workers, Vendor::Qualys).await
}

async fn rig_with(workers: usize, scanner: Vendor) -> anyhow::Result<Rig> {
    builder(workers, scanner, 10).build().await
}

#[tokio::test]
async fn resolved_remediated_tickets_end_closed_reopened_with_proof_or_scan_error(
) -> anyhow::Result<()> {
    let r = rig(2).await?;
    r.sync_and_ticket().await?;
    assert_eq!(
        r.tickets().len(),
        6,
        "one ticket per finding: {:?}\n{}",
        r.tickets(),
        r.f.logs()
    );
    let fixed = r.key("10.0.0.1", "38739");
    let still = r.key("10.0.0.1", "38740");
    let stale = r.key("10.0.0.3", "38741");
    let untouched = r.key("10.0.0.4", "38742");
    for k in [&fixed, &still, &stale] {
        r.sim.jira_transition(k, "Resolved-Remediated")?;
    }
    r.sim
        .fix_vulnerability(ip("10.0.0.1"), 38739, 443, Proto::Tcp)?;
    // An open ticket linked to a resolved one is rescanned with it.
    let child = r.key("10.0.0.2", "38739");
    let resp = reqwest::Client::new()
        .put(format!("{}/rest/api/2/issue/{child}", r.sim.jira_url()))
        .basic_auth("remediator", Some("aegis"))
        .json(&json!({"update": {"issuelinks": [{"add": {"type": {"name": "Related"}, "outwardIssue": {"key": fixed}}}]}}))
        .send()
        .await?;
    assert!(resp.status().is_success(), "link: {}", resp.text().await?);
    r.sim
        .fix_vulnerability(ip("10.0.0.2"), 38739, 443, Proto::Tcp)?;
    r.sim.patch_host(
        ip("10.0.0.3"),
        &HostPatch {
            alive: None,
            auth_failure: Some(true),
        },
    )?;

    r.run("RescanQueueJob", None).await?;
    r.settle().await?;

    assert_eq!(
        r.status(&fixed),
        "Closed-Remediated",
        "{:?}",
        r.comments(&fixed)
    );
    assert_eq!(r.status(&still), "Reopened");
    let proof = r.comments(&still);
    assert!(
        proof.contains("Remediation Failed") && proof.contains("OpenSSH 7.2"),
        "proof comment: {proof}"
    );
    assert!(
        !proof.contains("<b>"),
        "HTML stripped from the proof: {proof}"
    );
    assert_eq!(r.status(&stale), "Scan-Error");
    assert_eq!(r.status(&untouched), "Open");
    assert_eq!(
        r.status(&child),
        "Closed-Remediated",
        "the linked open ticket, fixed"
    );
    assert_eq!(
        r.count("SELECT COUNT(*) FROM RescanLease WHERE OrganizationID = ?")
            .await?,
        0
    );
    assert_eq!(
        r.count("SELECT COUNT(*) FROM ScanSummary WHERE OrgID = ? AND ScanStatus = 'finished'")
            .await?,
        1,
        "one scan for the group"
    );
    let copies = &r.sim.state_summary()["qualys"];
    assert_eq!(
        copies["option_profile_copies"], 0,
        "option profile deleted: {copies}"
    );
    assert_eq!(
        copies["search_lists"].as_array().map(Vec::len),
        Some(0),
        "search list deleted: {copies}"
    );
    assert!(
        r.failed_jobs().await?.is_empty(),
        "{:?}",
        r.failed_jobs().await?
    );

    // A second pass finds nothing left to rescan.
    r.run("RescanQueueJob", None).await?;
    assert_eq!(
        r.count("SELECT COUNT(*) FROM ScanSummary WHERE OrgID = ?")
            .await?,
        1
    );
    Ok(())
}

#[tokio::test]
async fn a_resolved_decommissioned_dead_host_is_closed_ignored_and_not_ticketed_again(
) -> anyhow::Result<()> {
    let r = rig(2).await?;
    r.sync_and_ticket().await?;
    let dead_a = r.key("10.0.0.2", "38739");
    let dead_b = r.key("10.0.0.2", "38741");
    let alive = r.key("10.0.0.4", "38742");
    r.sim.jira_transition(&dead_a, "Resolved-Decommissioned")?;
    r.sim.jira_transition(&alive, "Resolved-Decommissioned")?;
    r.sim.kill_host(ip("10.0.0.2"))?;

    r.run("RescanQueueJob", Some(json!({"type": "DECOMMISSIONED"})))
        .await?;
    r.settle().await?;

    assert_eq!(
        r.status(&dead_a),
        "Closed-Decommission",
        "{:?}",
        r.comments(&dead_a)
    );
    assert_eq!(
        r.status(&dead_b),
        "Closed-Decommission",
        "the device's other live ticket too"
    );
    assert!(r
        .comments(&dead_a)
        .contains("Device found to be dead by Scanner"));
    assert_eq!(r.status(&alive), "Reopened");
    assert!(r.comments(&alive).contains("IP reuse"));
    assert_eq!(
        r.count("SELECT COUNT(*) FROM `Ignore` WHERE OrganizationID = ? AND TypeId = 2 AND Active = 1 AND DeviceID = '1002'")
            .await?,
        1
    );
    assert!(
        r.failed_jobs().await?.is_empty(),
        "{:?}",
        r.failed_jobs().await?
    );

    // The next sync and ticketing open nothing for the decommissioned device.
    let before = r.tickets().len();
    r.sync_and_ticket().await?;
    assert_eq!(
        r.tickets().len(),
        before,
        "no new ticket: {:?}",
        r.tickets()
    );

    // The device comes back: once a scan sees it again, AssetSync lifts the
    // decommission and TicketingJob opens new tickets for its findings.
    r.sim.revive_host(ip("10.0.0.2"))?;
    let payload = json!({"group": "42", "tickets": [dead_a], "type": "NORMAL"});
    r.run("RescanJob", Some(payload)).await?;
    r.settle().await?;
    assert_eq!(
        r.status(&dead_a),
        "Closed-Decommission",
        "a closed ticket is left closed"
    );
    r.run("TicketSyncJob", None).await?;
    r.sync_and_ticket().await?;
    assert_eq!(
        r.count(
            "SELECT COUNT(*) FROM `Ignore` WHERE OrganizationID = ? AND TypeId = 2 AND Active = 1"
        )
        .await?,
        0,
        "decommission lifted"
    );
    let again = r.key("10.0.0.2", "38739");
    assert_ne!(again, dead_a, "a new ticket for the device that came back");
    assert_eq!(r.status(&again), "Open");
    Ok(())
}

#[tokio::test]
async fn two_rescan_queue_jobs_racing_never_queue_one_ticket_twice() -> anyhow::Result<()> {
    let r = rig(3).await?;
    r.sync_and_ticket().await?;
    for k in r.tickets().values() {
        r.sim.jira_transition(k, "Resolved-Remediated")?;
    }
    let a = r.start("RescanQueueJob", None).await?;
    let b = r.start("RescanQueueJob", None).await?;
    let c = r.start("RescanQueueJob", None).await?;
    for id in [&a, &b, &c] {
        r.f.wait_status(id, 3, T).await?;
    }
    let payloads: Vec<(String,)> = sqlx::query_as(
        "SELECT h.Payload FROM JobHistory h JOIN Job j ON j.Id = h.JobId WHERE j.Struct = 'RescanJob' AND h.ParentJobID IN (?, ?, ?)",
    )
    .bind(&a)
    .bind(&b)
    .bind(&c)
    .fetch_all(r.f.pool())
    .await?;
    let mut queued: Vec<String> = Vec::new();
    for (p,) in payloads {
        let v: Value = serde_json::from_str(&p)?;
        queued.extend(
            v["tickets"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|t| t.as_str().map(str::to_string)),
        );
    }
    let total = queued.len();
    queued.sort();
    queued.dedup();
    assert_eq!(total, queued.len(), "a ticket was queued twice: {queued:?}");
    assert_eq!(queued.len(), r.tickets().len(), "every ticket queued once");
    r.settle().await?;
    assert_eq!(
        r.count("SELECT COUNT(*) FROM RescanLease WHERE OrganizationID = ?")
            .await?,
        0
    );
    Ok(())
}

#[tokio::test]
async fn a_scan_that_never_finishes_is_abandoned_and_its_tickets_rescanned_later(
) -> anyhow::Result<()> {
    let r = rig(2).await?;
    r.sync_and_ticket().await?;
    let k = r.key("10.0.0.1", "38739");
    r.sim.jira_transition(&k, "Resolved-Remediated")?;
    r.sim
        .fix_vulnerability(ip("10.0.0.1"), 38739, 443, Proto::Tcp)?;
    r.run("RescanQueueJob", None).await?;
    let scan: String = eventually("the scan to launch", T, || async {
        Ok(sqlx::query_as::<_, (String,)>(
            "SELECT SourceKey FROM ScanSummary WHERE OrgID = ? AND ScanStatus <> 'launching'",
        )
        .bind(&r.org)
        .fetch_optional(r.f.pool())
        .await?
        .map(|(s,)| s))
    })
    .await?;
    r.sim
        .force_qualys_scan_state(&scan, Some((QualysScanState::Running, false)))?;
    // Leased while the scan runs: a second queue run does not touch it.
    r.run("RescanQueueJob", None).await?;
    assert_eq!(
        r.count("SELECT COUNT(*) FROM ScanSummary WHERE OrgID = ?")
            .await?,
        1
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    r.run("ScanSyncJob", Some(json!({"scan_timeout": 1})))
        .await?;
    let (status,): (String,) =
        sqlx::query_as("SELECT ScanStatus FROM ScanSummary WHERE OrgID = ? AND SourceKey = ?")
            .bind(&r.org)
            .bind(&scan)
            .fetch_one(r.f.pool())
            .await?;
    assert_eq!(status, "error", "abandoned");
    assert_eq!(
        r.count("SELECT COUNT(*) FROM RescanLease WHERE OrganizationID = ?")
            .await?,
        0,
        "released"
    );
    assert_eq!(
        r.status(&k),
        "Resolved-Remediated",
        "no ticket change for an abandoned scan"
    );
    assert!(r.f.logs().contains("abandoned"), "a clear log");
    // Rescanned later.
    r.run("RescanQueueJob", None).await?;
    r.settle().await?;
    assert_eq!(r.status(&k), "Closed-Remediated");
    Ok(())
}

/// Edits a ticket's fields through JIRA's REST API (as a person would in the UI).
async fn edit(r: &Rig, key: &str, fields: Value) -> anyhow::Result<()> {
    let resp = reqwest::Client::new()
        .put(format!("{}/rest/api/2/issue/{key}", r.sim.jira_url()))
        .basic_auth("remediator", Some("aegis"))
        .json(&json!({ "fields": fields }))
        .send()
        .await?;
    anyhow::ensure!(
        resp.status().is_success(),
        "edit {key}: {}",
        resp.text().await?
    );
    Ok(())
}

#[tokio::test]
async fn passive_and_exception_rescans_close_fixed_tickets_and_never_reopen() -> anyhow::Result<()>
{
    let r = rig(2).await?;
    r.sync_and_ticket().await?;
    let soon = (chrono::Utc::now() + chrono::Duration::days(3))
        .format("%Y-%m-%d")
        .to_string();
    // PASSIVE: open tickets due within 15 days.
    let fixed = r.key("10.0.0.1", "38739");
    let still = r.key("10.0.0.1", "38740");
    r.sim.jira_transition(&still, "Resolved-Exception")?;
    for k in [&fixed, &still] {
        edit(&r, k, json!({ "duedate": soon })).await?;
    }
    r.sim
        .fix_vulnerability(ip("10.0.0.1"), 38739, 443, Proto::Tcp)?;
    r.run("RescanQueueJob", Some(json!({"type": "PASSIVE"})))
        .await?;
    r.settle().await?;
    assert_eq!(r.status(&fixed), "Closed-Remediated");
    assert_eq!(
        r.status(&still),
        "Resolved-Exception",
        "a passive rescan never reopens"
    );

    // EXCEPTIONS: an approved exception named in include_exceptions.
    let excepted = r.key("10.0.0.4", "38742");
    r.sim.jira_transition(&excepted, "Closed-Exception")?;
    edit(
        &r,
        &excepted,
        json!({ r.fields["CERF"].clone(): "CERF-42" }),
    )
    .await?;
    r.run(
        "RescanQueueJob",
        Some(json!({"type": "EXCEPTIONS", "include_exceptions": ["CERF-42"]})),
    )
    .await?;
    r.settle().await?;
    assert_eq!(
        r.count("SELECT COUNT(*) FROM ScanSummary WHERE OrgID = ?")
            .await?,
        2,
        "an exception rescan ran"
    );
    assert_eq!(
        r.status(&excepted),
        "Closed-Exception",
        "an exception rescan never reopens"
    );
    // With nothing due and no include_exceptions, the run ends at once.
    r.run("RescanQueueJob", Some(json!({"type": "EXCEPTIONS"})))
        .await?;
    assert!(
        r.failed_jobs().await?.is_empty(),
        "{:?}",
        r.failed_jobs().await?
    );
    Ok(())
}

#[tokio::test]
async fn a_kill_9_during_scan_close_ends_with_every_ticket_in_the_right_state() -> anyhow::Result<()>
{
    let mut r = rig(3).await?;
    r.sync_and_ticket().await?;
    let fixed = r.key("10.0.0.1", "38739");
    let still = r.key("10.0.0.1", "38740");
    let also_fixed = r.key("10.0.0.2", "38739");
    for k in [&fixed, &still, &also_fixed] {
        r.sim.jira_transition(k, "Resolved-Remediated")?;
    }
    r.sim
        .fix_vulnerability(ip("10.0.0.1"), 38739, 443, Proto::Tcp)?;
    r.sim
        .fix_vulnerability(ip("10.0.0.2"), 38739, 443, Proto::Tcp)?;
    // Slow transitions, so the kill lands while ScanCloseJob is deciding.
    let mut slow = aegis_sim::FaultSpec::new(
        aegis_sim::Vendor::Jira,
        aegis_sim::FaultAction::Latency { ms: 1500 },
        100_000,
    )
    .on("/rest/api/2/issue");
    slow.method = Some("POST".into());
    r.sim.inject_fault(slow);
    r.run("RescanQueueJob", None).await?;
    let (close, worker): (String, String) = eventually("a running ScanCloseJob", T, || async {
        let row: Option<(String, String)> = sqlx::query_as(
            "SELECT h.ID, h.WorkerID FROM JobHistory h JOIN Job j ON j.Id = h.JobId
              WHERE j.Struct = 'ScanCloseJob' AND h.StatusId = 2 AND h.WorkerID IS NOT NULL LIMIT 1",
        )
        .fetch_optional(r.f.pool())
        .await?;
        if row.is_none() {
            r.run("ScanSyncJob", None).await?;
        }
        Ok(row)
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", r.f.logs()))?;
    tokio::time::sleep(Duration::from_millis(1800)).await;
    r.f.kill_9(&worker);
    r.f.wait_status(&close, 3, Duration::from_secs(120)).await?;
    r.settle().await?;
    let attempt = attempts(&r, &close).await?;
    assert!(
        attempt >= 2,
        "the killed close ran again (attempt {attempt})"
    );
    assert_eq!(r.status(&fixed), "Closed-Remediated");
    assert_eq!(r.status(&also_fixed), "Closed-Remediated");
    assert_eq!(r.status(&still), "Reopened");
    assert_eq!(
        r.count("SELECT COUNT(*) FROM RescanLease WHERE OrganizationID = ?")
            .await?,
        0
    );
    Ok(())
}

/// Scans at the simulator of the rig's scanner.
fn sim_scans(r: &Rig, scanner: Vendor) -> usize {
    let v = if scanner == Vendor::Nexpose {
        "nexpose"
    } else {
        "qualys"
    };
    r.sim.state_summary()[v]["scans"]
        .as_array()
        .map_or(0, Vec::len)
}

/// Temporary scanner objects left: Qualys option profile copies + search
/// lists, or Nexpose template copies.
fn temporary_objects(r: &Rig, scanner: Vendor) -> u64 {
    let state = r.sim.state_summary();
    if scanner == Vendor::Nexpose {
        state["nexpose"]["template_copies"].as_u64().unwrap_or(99)
    } else {
        state["qualys"]["option_profile_copies"]
            .as_u64()
            .unwrap_or(99)
            + state["qualys"]["search_lists"]
                .as_array()
                .map_or(99, |l| l.len() as u64)
    }
}

/// A NORMAL rescan of two Resolved-Remediated tickets of 10.0.0.1 (one fixed,
/// one still vulnerable) whose launch call gets `action`; the worker running
/// the RescanJob is killed once the launch intent is recorded and `launched`
/// scans exist at the simulator. `max_attempts` caps the RescanJob's attempts.
/// Returns the rig, the RescanJob ID and the (fixed, still vulnerable) tickets.
async fn kill_mid_launch(
    scanner: Vendor,
    action: aegis_sim::FaultAction,
    launched: usize,
    max_attempts: Option<i32>,
) -> anyhow::Result<(Rig, String, String, String)> {
    let mut r = rig_with(2, scanner).await?;
    r.sync_and_ticket().await?;
    let (fixed, still) = if scanner == Vendor::Nexpose {
        (
            r.key("10.0.0.1", "sim-vuln-38739"),
            r.key("10.0.0.1", "sim-vuln-38740"),
        )
    } else {
        (r.key("10.0.0.1", "38739"), r.key("10.0.0.1", "38740"))
    };
    for k in [&fixed, &still] {
        r.sim.jira_transition(k, "Resolved-Remediated")?;
    }
    r.sim
        .fix_vulnerability(ip("10.0.0.1"), 38739, 443, Proto::Tcp)?;
    let (vendor, endpoint) = if scanner == Vendor::Nexpose {
        // POST /api/3/sites/{rescansite}/scans (a substring rule).
        (aegis_sim::Vendor::Nexpose, "scans")
    } else {
        (aegis_sim::Vendor::Qualys, "/api/2.0/fo/scan/")
    };
    let mut fault = aegis_sim::FaultSpec::new(vendor, action, 1).on(endpoint);
    fault.method = Some("POST".into());
    r.sim.inject_fault(fault);
    r.run("RescanQueueJob", None).await?;
    let (rescan, worker): (String, String) =
        eventually("a recorded launch waiting for the scanner", T, || async {
            let row: Option<(String, String)> = sqlx::query_as(
                "SELECT h.ID, h.WorkerID FROM ScanSummary s JOIN JobHistory h ON h.ID = s.ParentJobId
                  WHERE s.OrgID = ? AND s.ScanStatus = 'launching' AND h.StatusId = 2 AND h.WorkerID IS NOT NULL",
            )
            .bind(&r.org)
            .fetch_optional(r.f.pool())
            .await?;
            Ok(row.filter(|_| sim_scans(&r, scanner) == launched))
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", r.f.logs()))?;
    if let Some(n) = max_attempts {
        sqlx::query("UPDATE JobHistory SET MaxAttempts = ? WHERE ID = ?")
            .bind(n)
            .bind(&rescan)
            .execute(r.f.pool())
            .await?;
    }
    r.f.kill_9(&worker);
    Ok((r, rescan, fixed, still))
}

async fn assert_decided_and_clean(
    r: &Rig,
    scanner: Vendor,
    fixed: &str,
    still: &str,
) -> anyhow::Result<()> {
    assert_eq!(
        r.status(fixed),
        "Closed-Remediated",
        "{:?}",
        r.comments(fixed)
    );
    assert_eq!(r.status(still), "Reopened");
    assert_eq!(
        temporary_objects(r, scanner),
        0,
        "temporary scanner objects deleted: {}",
        r.sim.state_summary()
    );
    assert_eq!(
        r.count("SELECT COUNT(*) FROM RescanLease WHERE OrganizationID = ?")
            .await?,
        0
    );
    Ok(())
}

async fn attempts(r: &Rig, id: &str) -> anyhow::Result<i32> {
    let (attempt,): (i32,) = sqlx::query_as("SELECT Attempt FROM JobHistory WHERE ID = ?")
        .bind(id)
        .fetch_one(r.f.pool())
        .await?;
    Ok(attempt)
}

async fn launched_but_not_recorded_is_adopted(scanner: Vendor) -> anyhow::Result<()> {
    // The scanner starts the scan at once but holds its answer back.
    let (r, rescan, fixed, still) = kill_mid_launch(
        scanner,
        aegis_sim::FaultAction::ResponseLatency { ms: 60_000 },
        1,
        None,
    )
    .await?;
    r.f.wait_status(&rescan, 3, Duration::from_secs(120))
        .await?;
    let attempt = attempts(&r, &rescan).await?;
    assert!(
        attempt >= 2,
        "the killed RescanJob ran again (attempt {attempt})"
    );
    assert!(
        r.f.logs().contains("adopted for ticket(s)"),
        "the retry adopted the scan:\n{}",
        r.f.logs()
    );
    r.settle().await?;

    assert_eq!(sim_scans(&r, scanner), 1, "exactly one scan at the scanner");
    assert_eq!(
        r.count("SELECT COUNT(*) FROM ScanSummary WHERE OrgID = ?")
            .await?,
        1,
        "exactly one ScanSummary"
    );
    assert_eq!(
        r.count("SELECT COUNT(*) FROM ScanSummary WHERE OrgID = ? AND ScanStatus = 'finished' AND SourceKey NOT LIKE 'launching:%'")
            .await?,
        1
    );
    assert_decided_and_clean(&r, scanner, &fixed, &still).await?;
    assert!(
        r.failed_jobs().await?.is_empty(),
        "{:?}",
        r.failed_jobs().await?
    );
    Ok(())
}

#[tokio::test]
async fn a_kill_9_between_launch_and_record_adopts_the_scan_instead_of_launching_a_second(
) -> anyhow::Result<()> {
    launched_but_not_recorded_is_adopted(Vendor::Qualys).await
}

#[tokio::test]
async fn a_kill_9_between_nexpose_scan_start_and_record_adopts_the_scan() -> anyhow::Result<()> {
    launched_but_not_recorded_is_adopted(Vendor::Nexpose).await
}

#[tokio::test]
async fn a_kill_9_before_the_scanner_launched_lets_the_retry_launch_once_and_clean_up(
) -> anyhow::Result<()> {
    // The launch request never reaches the scanner's handler (the delay comes
    // first, and outlives the test).
    let (r, rescan, fixed, still) = kill_mid_launch(
        Vendor::Qualys,
        aegis_sim::FaultAction::Latency { ms: 600_000 },
        0,
        None,
    )
    .await?;
    r.f.wait_status(&rescan, 3, Duration::from_secs(120))
        .await?;
    assert!(attempts(&r, &rescan).await? >= 2);
    assert!(
        r.f.logs().contains("was never launched"),
        "the retry dropped the intent:\n{}",
        r.f.logs()
    );
    r.settle().await?;
    assert_eq!(
        sim_scans(&r, Vendor::Qualys),
        1,
        "launched once, by the retry"
    );
    assert_eq!(
        r.count("SELECT COUNT(*) FROM ScanSummary WHERE OrgID = ?")
            .await?,
        1
    );
    assert_decided_and_clean(&r, Vendor::Qualys, &fixed, &still).await
}

#[tokio::test]
async fn an_orphaned_launch_intent_is_released_by_scan_sync_and_its_tickets_rescanned(
) -> anyhow::Result<()> {
    // One attempt only: nobody retries the RescanJob, ScanSyncJob settles its intent.
    let (r, rescan, fixed, still) = kill_mid_launch(
        Vendor::Qualys,
        aegis_sim::FaultAction::Latency { ms: 600_000 },
        0,
        Some(1),
    )
    .await?;
    r.f.wait_status(&rescan, 4, Duration::from_secs(120))
        .await?;
    let intents = "SELECT COUNT(*) FROM ScanSummary WHERE OrgID = ? AND ScanStatus = 'launching'";
    assert_eq!(r.count(intents).await?, 1);
    // Younger than launch_timeout: left alone, tickets still leased.
    r.run("ScanSyncJob", Some(json!({"launch_timeout": 3600})))
        .await?;
    assert_eq!(r.count(intents).await?, 1);
    assert_eq!(
        r.count("SELECT COUNT(*) FROM RescanLease WHERE OrganizationID = ?")
            .await?,
        2
    );
    r.run("ScanSyncJob", Some(json!({"launch_timeout": 0})))
        .await?;
    assert_eq!(r.count(intents).await?, 0);
    assert_eq!(
        r.count("SELECT COUNT(*) FROM ScanSummary WHERE OrgID = ? AND ScanStatus = 'error'")
            .await?,
        1
    );
    assert!(r
        .f
        .logs()
        .contains("abandoned: the scanner has no such scan"));
    assert_eq!(
        r.count("SELECT COUNT(*) FROM RescanLease WHERE OrganizationID = ?")
            .await?,
        0,
        "tickets released"
    );
    assert_eq!(temporary_objects(&r, Vendor::Qualys), 0);
    // The next queue run rescans them.
    r.run("RescanQueueJob", None).await?;
    r.settle().await?;
    assert_eq!(sim_scans(&r, Vendor::Qualys), 1);
    assert_decided_and_clean(&r, Vendor::Qualys, &fixed, &still).await
}

#[tokio::test]
async fn nexpose_rescans_close_reopen_and_confirm_a_dead_host_by_discovery() -> anyhow::Result<()> {
    let r = rig_with(2, Vendor::Nexpose).await?;
    r.sync_and_ticket().await?;
    let fixed = r.key("10.0.0.1", "sim-vuln-38739");
    let still = r.key("10.0.0.1", "sim-vuln-38740");
    let dead = r.key("10.0.0.2", "sim-vuln-38739");
    let alive = r.key("10.0.0.4", "sim-vuln-38742");
    r.sim.jira_transition(&fixed, "Resolved-Remediated")?;
    r.sim.jira_transition(&still, "Resolved-Remediated")?;
    r.sim.jira_transition(&dead, "Resolved-Decommissioned")?;
    r.sim.jira_transition(&alive, "Resolved-Decommissioned")?;
    r.sim
        .fix_vulnerability(ip("10.0.0.1"), 38739, 443, Proto::Tcp)?;
    r.sim.kill_host(ip("10.0.0.2"))?;

    r.run("RescanQueueJob", None).await?;
    r.run("RescanQueueJob", Some(json!({"type": "DECOMMISSIONED"})))
        .await?;
    r.settle().await?;

    assert!(
        r.failed_jobs().await?.is_empty(),
        "{:?}\n{}",
        r.failed_jobs().await?,
        r.f.logs()
    );
    assert_eq!(
        r.status(&fixed),
        "Closed-Remediated",
        "{:?}",
        r.comments(&fixed)
    );
    assert_eq!(r.status(&still), "Reopened");
    assert_eq!(
        r.status(&dead),
        "Closed-Decommission",
        "{:?}",
        r.comments(&dead)
    );
    assert!(r.comments(&dead).contains("without finding 10.0.0.2 alive"));
    assert_eq!(r.status(&alive), "Reopened");
    assert_eq!(
        r.count("SELECT COUNT(*) FROM `Ignore` WHERE OrganizationID = ? AND TypeId = 2 AND Active = 1 AND DeviceID = '2'")
            .await?,
        1
    );
    assert_eq!(
        r.sim.state_summary()["nexpose"]["template_copies"],
        0,
        "template copies deleted"
    );
    Ok(())
}

#[tokio::test]
async fn the_concurrent_scan_limit_is_retried_up_to_a_bound_and_a_failed_launch_cleans_up(
) -> anyhow::Result<()> {
    let r = builder(2, Vendor::Qualys, 1).build().await?;
    r.sync_and_ticket().await?;
    let first = r.key("10.0.0.1", "38739");
    let second = r.key("10.0.0.2", "38739");
    r.sim.jira_transition(&first, "Resolved-Remediated")?;
    r.run("RescanQueueJob", None).await?;
    let scan: String = eventually("the first scan to launch", T, || async {
        Ok(sqlx::query_as::<_, (String,)>(
            "SELECT SourceKey FROM ScanSummary WHERE OrgID = ? AND ScanStatus <> 'launching'",
        )
        .bind(&r.org)
        .fetch_optional(r.f.pool())
        .await?
        .map(|(s,)| s))
    })
    .await?;
    // The first scan holds the only slot.
    r.sim
        .force_qualys_scan_state(&scan, Some((QualysScanState::Running, false)))?;
    r.sim.jira_transition(&second, "Resolved-Remediated")?;
    r.run("RescanQueueJob", None).await?;
    let (id, error): (String, Option<String>) =
        eventually("the second RescanJob to give up", T, || async {
            Ok(sqlx::query_as(
                "SELECT h.ID, h.LastError FROM JobHistory h JOIN Job j ON j.Id = h.JobId
              WHERE j.Struct = 'RescanJob' AND h.StatusId = 4 LIMIT 1",
            )
            .fetch_optional(r.f.pool())
            .await?)
        })
        .await?;
    let error = error.unwrap_or_default();
    assert!(error.contains("concurrent scans"), "{id}: {error}");
    assert!(
        r.f.logs().contains("retry 2/2"),
        "retried with backoff up to the bound"
    );
    let leased: Vec<(String,)> =
        sqlx::query_as("SELECT TicketKey FROM RescanLease WHERE OrganizationID = ?")
            .bind(&r.org)
            .fetch_all(r.f.pool())
            .await?;
    assert_eq!(
        leased,
        vec![(first.clone(),)],
        "the second ticket is released"
    );
    let q = &r.sim.state_summary()["qualys"];
    assert_eq!(
        q["option_profile_copies"], 1,
        "only the running scan's profile is left: {q}"
    );
    assert_eq!(q["search_lists"].as_array().map(Vec::len), Some(1), "{q}");
    // Once the slot frees, both tickets get their rescan.
    r.sim.force_qualys_scan_state(&scan, None)?;
    r.settle().await?;
    r.run("RescanQueueJob", None).await?;
    r.settle().await?;
    assert_eq!(r.status(&first), "Reopened");
    assert_eq!(r.status(&second), "Reopened");
    Ok(())
}

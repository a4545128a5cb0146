//! Issue 8's last two gaps of the rescan loop, end to end (the Qualys and JIRA
//! simulators in this process; real MariaDB, RabbitMQ, Redis, coordinator and
//! workers):
//!
//! * a NORMAL rescan also decides the other live tickets of the scanned
//!   devices for the batch's vulnerabilities — except one another scan holds;
//! * a scan scheduled in Qualys, named in ScanSyncJob's `scheduled_scans`, is
//!   tracked once and, when it finishes, decides its group's resolved tickets
//!   (SCHEDULED table).
//!
//! Run `cargo build --workspace --bins` first.

use aegis_shared::model::source_config::Vendor;
use aegis_sim::{Proto, WorldFixture};
use aegis_tests::rescan_rig::{ip, Rig, RigBuilder, T};
use serde_json::{json, Value};

/// Hosts 10.0.0.1 and 10.0.0.2 in asset group 42 with the same two findings,
/// and 10.0.0.5 in group 43.
fn fixture() -> WorldFixture {
    serde_json::from_value(json!({
        "hosts": [
            {"ip": "10.0.0.1", "hostname": "web1.example", "os": "Ubuntu Linux 18.04", "qualys_host_id": 1001, "nexpose_asset_id": 1,
             "asset_group_ids": [42],
             "vulns": [{"qid": 38739, "port": 443, "protocol": "tcp", "proof": "TLSv1.0 enabled"},
                       {"qid": 38740, "port": 22, "protocol": "tcp", "proof": "<b>OpenSSH 7.2</b> banner"}]},
            {"ip": "10.0.0.2", "hostname": "web2.example", "os": "Ubuntu Linux 18.04", "qualys_host_id": 1002, "nexpose_asset_id": 2,
             "asset_group_ids": [42],
             "vulns": [{"qid": 38739, "port": 443, "protocol": "tcp"}, {"qid": 38740, "port": 22, "protocol": "tcp"}]},
            {"ip": "10.0.0.5", "hostname": "lab1.example", "os": "CentOS 7", "qualys_host_id": 1005, "nexpose_asset_id": 5,
             "asset_group_ids": [43], "vulns": [{"qid": 38739, "port": 443, "protocol": "tcp"}]}
        ],
        "kb": [
            {"qid": 38739, "title": "SSL weak ciphers", "severity": 4, "cvss2": 7.5},
            {"qid": 38740, "title": "SSH old", "severity": 4, "cvss2": 7.8}
        ],
        "asset_groups": [{"id": 42, "title": "DMZ", "appliance_ids": [7]},
                         {"id": 43, "title": "Lab", "appliance_ids": [7]}],
        "appliances": [{"id": 7, "name": "sim-scanner-1", "status": "Online"}]
    }))
    .expect("fixture")
}

/// The rig over asset groups 42 and 43, synced and ticketed: five tickets.
async fn rig() -> anyhow::Result<Rig> {
    let r = RigBuilder::new("SCHED", fixture())
        .groups(&[42, 43])
        .build()
        .await?;
    r.sync_and_ticket().await?;
    anyhow::ensure!(
        r.tickets().len() == 5,
        "one ticket per finding: {:?}\n{}",
        r.tickets(),
        r.f.logs()
    );
    Ok(r)
}

#[tokio::test]
async fn a_normal_rescan_closes_the_devices_other_fixed_ticket_but_not_one_another_scan_holds(
) -> anyhow::Result<()> {
    let r = rig().await?;
    // Rescanned: web1's 38739 (fixed) and web2's 38740 (still vulnerable).
    let rescanned_fixed = r.key("10.0.0.1", "38739");
    let rescanned_vulnerable = r.key("10.0.0.2", "38740");
    // Not rescanned, open, and fixed on the host: web1's 38740 (free) and
    // web2's 38739 (held by another scan).
    let related = r.key("10.0.0.1", "38740");
    let held = r.key("10.0.0.2", "38739");
    for k in [&rescanned_fixed, &rescanned_vulnerable] {
        r.sim.jira_transition(k, "Resolved-Remediated")?;
    }
    r.sim
        .fix_vulnerability(ip("10.0.0.1"), 38739, 443, Proto::Tcp)?;
    r.sim
        .fix_vulnerability(ip("10.0.0.1"), 38740, 22, Proto::Tcp)?;
    r.sim
        .fix_vulnerability(ip("10.0.0.2"), 38739, 443, Proto::Tcp)?;

    r.run("RescanQueueJob", None).await?;
    // Another rescan holds web2's 38739 while this one is in flight.
    sqlx::query(
        "INSERT INTO RescanLease (OrganizationID, TicketKey, JobHistoryID, RescanType, ScanSourceKey)
         VALUES (?, ?, ?, 'PASSIVE', 'scan/1.99999')",
    )
    .bind(&r.org)
    .bind(&held)
    .bind(uuid::Uuid::new_v4().to_string())
    .execute(r.f.pool())
    .await?;
    r.settle().await?;

    assert_eq!(
        r.status(&rescanned_fixed),
        "Closed-Remediated",
        "{}",
        r.comments(&rescanned_fixed)
    );
    assert_eq!(r.status(&rescanned_vulnerable), "Reopened");
    assert_eq!(
        r.status(&related),
        "Closed-Remediated",
        "the device's other open ticket, found fixed by the same scan: {}\n{}",
        r.comments(&related),
        r.f.logs()
    );
    assert!(r.comments(&related).contains("Remediation successful"));
    assert_eq!(
        r.status(&held),
        "Open",
        "a ticket another scan holds is that scan's to decide"
    );
    assert!(
        r.f.logs().contains(&format!("ticket {held} skipped")),
        "a log names the skipped ticket"
    );
    assert_eq!(
        r.count("SELECT COUNT(*) FROM RescanLease WHERE OrganizationID = ?")
            .await?,
        1,
        "every lease of this scan released, the other scan's kept"
    );
    assert_eq!(r.status(&r.key("10.0.0.5", "38739")), "Open");
    assert!(
        r.failed_jobs().await?.is_empty(),
        "{:?}",
        r.failed_jobs().await?
    );
    Ok(())
}

#[tokio::test]
async fn a_qualys_scheduled_scan_is_tracked_once_and_decides_its_groups_resolved_tickets(
) -> anyhow::Result<()> {
    let r = rig().await?;
    let fixed = r.key("10.0.0.1", "38739");
    let vulnerable = r.key("10.0.0.1", "38740");
    let open = r.key("10.0.0.2", "38739");
    let decommissioned = r.key("10.0.0.2", "38740");
    let other_group = r.key("10.0.0.5", "38739");
    for k in [&fixed, &vulnerable, &other_group] {
        r.sim.jira_transition(k, "Resolved-Remediated")?;
    }
    r.sim
        .jira_transition(&decommissioned, "Resolved-Decommissioned")?;
    r.sim
        .fix_vulnerability(ip("10.0.0.1"), 38739, 443, Proto::Tcp)?;
    r.sim
        .fix_vulnerability(ip("10.0.0.5"), 38739, 443, Proto::Tcp)?;

    // The schedule fires in Qualys; the scan is held running for now.
    let created: Value = reqwest::Client::new()
        .post(format!(
            "{}/_sim/qualys/scheduled_scans",
            r.sim.control_url()
        ))
        .json(&json!({"title": "Weekly DMZ", "asset_group": 42, "state": "Running"}))
        .send()
        .await?
        .json()
        .await?;
    let scan = created["ref"].as_str().unwrap_or_default().to_string();
    assert!(scan.starts_with("scan/"), "{created}");

    let sync = json!({"scheduled_scans": [
        r#"{"name":"Weekly DMZ","groupId":"42"}"#,
        "{not json",
        r#"{"name":"Not running now","groupId":"43"}"#
    ]});
    let first = r.run("ScanSyncJob", Some(sync.clone())).await?;
    // A second run, then two racing: still one summary.
    r.run("ScanSyncJob", Some(sync.clone())).await?;
    let (a, b) = (
        r.start("ScanSyncJob", Some(sync.clone())).await?,
        r.start("ScanSyncJob", Some(sync.clone())).await?,
    );
    r.f.wait_status(&a, 3, T).await?;
    r.f.wait_status(&b, 3, T).await?;
    let rows: Vec<(String, String, String, String)> = sqlx::query_as(
        "SELECT SourceKey, ScanStatus, ParentJobId, ScanClosePayload FROM ScanSummary WHERE OrgID = ?",
    )
    .bind(&r.org)
    .fetch_all(r.f.pool())
    .await?;
    assert_eq!(rows.len(), 1, "tracked exactly once: {rows:?}");
    let (key, status, parent, payload) = &rows[0];
    assert_eq!(key, &scan);
    assert_eq!(status, "processing", "polled like any scan");
    assert_eq!(
        parent, &first,
        "its parent is the ScanSyncJob that found it"
    );
    let payload: Value = serde_json::from_str(payload)?;
    assert_eq!(payload["type"], "SCHEDULED");
    assert_eq!(payload["group"], "42");
    assert_eq!(payload["tickets"], Value::Null);
    assert_eq!(payload["devices"], Value::Null);
    assert_eq!(payload["scan_id"], scan.as_str());
    assert_eq!(payload["scan"]["scanId"], scan.as_str());
    assert_eq!(payload["scan"]["scheduled"], true);
    assert_eq!(payload["scan"]["name"], "Weekly DMZ");
    assert!(payload["scan"]["created"].is_string(), "{payload}");
    assert!(
        r.f.logs().contains("{not json"),
        "the invalid entry is named in a log"
    );
    assert_eq!(
        r.status(&fixed),
        "Resolved-Remediated",
        "nothing decided before it finishes"
    );

    // The scan finishes; the next syncs queue its close.
    r.sim.force_qualys_scan_state(&scan, None)?;
    r.settle_with(Some(sync.clone())).await?;

    assert_eq!(
        r.status(&fixed),
        "Closed-Remediated",
        "{}\n{}",
        r.comments(&fixed),
        r.f.logs()
    );
    assert_eq!(r.status(&vulnerable), "Reopened");
    let proof = r.comments(&vulnerable);
    assert!(
        proof.contains("Remediation Failed") && proof.contains("OpenSSH 7.2"),
        "proof comment: {proof}"
    );
    assert_eq!(r.status(&open), "Open", "not selected, never reopened");
    assert_eq!(
        r.status(&decommissioned),
        "Resolved-Decommissioned",
        "still vulnerable, but only Resolved-Remediated tickets are reopened"
    );
    assert_eq!(
        r.status(&other_group),
        "Resolved-Remediated",
        "another group's resolved ticket is not the scan's (the precedence fix)"
    );
    assert_eq!(
        r.count(
            "SELECT COUNT(*) FROM Detection D JOIN VulnerabilityInfo V ON V.ID = D.VulnerabilityID
               JOIN DetectionStatus S ON S.Id = D.DetectionStatusId
              WHERE D.OrganizationID = ? AND D.DeviceID = '1001' AND V.SourceVulnId = '38739' AND S.Status = 'fixed'"
        )
        .await?,
        1,
        "the scan's detections are written back"
    );
    let (closes,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM JobHistory h JOIN Job j ON j.Id = h.JobId
          WHERE j.Struct = 'ScanCloseJob' AND h.ParentJobId = ? AND h.StatusId = 3",
    )
    .bind(&first)
    .fetch_one(r.f.pool())
    .await?;
    assert_eq!(
        closes, 1,
        "one ScanCloseJob, child of the tracking ScanSyncJob"
    );
    assert_eq!(
        r.count("SELECT COUNT(*) FROM RescanLease WHERE OrganizationID = ?")
            .await?,
        0
    );

    // Finished: later runs with the same payload do not track it again.
    r.run("ScanSyncJob", Some(sync)).await?;
    assert_eq!(
        r.count("SELECT COUNT(*) FROM ScanSummary WHERE OrgID = ?")
            .await?,
        1
    );
    assert!(
        r.failed_jobs().await?.is_empty(),
        "{:?}",
        r.failed_jobs().await?
    );
    Ok(())
}

#[tokio::test]
async fn nexpose_scheduled_scans_are_ignored_with_a_warning() -> anyhow::Result<()> {
    let r = RigBuilder::new("SCHEDNX", fixture())
        .workers(1)
        .scanner(Vendor::Nexpose)
        .groups(&[1])
        .build()
        .await?;
    let payload = json!({"scheduled_scans": [r#"{"name":"Weekly","groupId":"1"}"#]});
    r.run("ScanSyncJob", Some(payload)).await?;
    assert!(
        r.f.logs()
            .contains("scheduled scans are not supported for Nexpose"),
        "{}",
        r.f.logs()
    );
    assert!(r.f.logs().contains(r#""name":"Weekly""#), "names the entry");
    let n = r
        .count("SELECT COUNT(*) FROM ScanSummary WHERE OrgID = ?")
        .await?;
    assert_eq!(n, 0);
    Ok(())
}

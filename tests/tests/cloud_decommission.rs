//! The CloudDecommissionJob hand-off end to end: an EC2 device a
//! DECOMMISSIONED rescan finds dead is handed to one CloudDecommissionJob
//! (spec `original-jobs-rescan.md` §1.9, §4.4 D1), which waits pending — no
//! worker implements it — and the next RescanQueueJob neither rescans the
//! ticket nor hands its IP off again. The JIRA and Qualys simulators run in
//! this process; MariaDB, RabbitMQ, Redis, the coordinator and the worker are
//! real.
//!
//! Run `cargo build --workspace --bins` first.

use aegis_sim::WorldFixture;
use aegis_tests::rescan_rig::{ip, Rig, RigBuilder, Side};
use serde_json::{json, Value};

/// An EC2 instance and an on-premises host, both in Qualys asset group 42.
fn fixture() -> WorldFixture {
    serde_json::from_value(json!({
        "hosts": [
            {"ip": "10.0.0.5", "hostname": "ec2-web.example", "os": "Amazon Linux 2", "qualys_host_id": 2005,
             "tracking_method": "EC2", "ec2_instance_id": "i-0abc5", "asset_group_ids": [42],
             "vulns": [{"qid": 38739, "port": 443, "protocol": "tcp"}]},
            {"ip": "10.0.0.6", "hostname": "rack-db.example", "os": "CentOS 7", "qualys_host_id": 2006,
             "asset_group_ids": [42], "vulns": [{"qid": 38739, "port": 443, "protocol": "tcp"}]}
        ],
        "kb": [{"qid": 38739, "title": "SSL weak ciphers", "severity": 4, "cvss2": 7.5}],
        "asset_groups": [{"id": 42, "title": "Cloud", "appliance_ids": [7]}],
        "appliances": [{"id": 7, "name": "sim-scanner-1", "status": "Online"}]
    }))
    .expect("fixture")
}

/// The rig (one worker, DECOMMISSIONED rescans), an AWS SourceConfig with a
/// CloudDecommissionJob config, and asset group 42 backed by AWS once
/// AssetSyncJob has written it. Returns the rig and the
/// CloudDecommissionJob config's ID.
async fn rig() -> anyhow::Result<(Rig, String)> {
    let mut r = RigBuilder::new("CLOUD", fixture())
        .workers(1)
        .job(
            "RescanQueueJob",
            Side::Jira,
            Side::Scanner,
            json!({"type": "DECOMMISSIONED"}),
        )
        .build()
        .await?;
    // AWS: a cloud SourceConfig (an operator's SQL: no AWS integration yet)
    // and the CloudDecommissionJob config that uses it.
    let aws = uuid::Uuid::new_v4().to_string();
    sqlx::query(
        "INSERT INTO SourceConfig (ID, Source, SourceID, OrganizationID, Address, AuthInfo, Payload)
         SELECT ?, 'AWS', ID, ?, '', '{}', '{}' FROM Source WHERE Source = 'AWS'",
    )
    .bind(&aws)
    .bind(&r.org)
    .execute(r.f.pool())
    .await?;
    let jira = r.jira_sc.clone();
    let cloud_config = r
        .job_config(
            "CloudDecommissionJob",
            &aws,
            &jira,
            json!({"decommission_on_stopped_state": true}),
        )
        .await?;
    r.sync_and_ticket().await?;
    sqlx::query(
        "UPDATE AssetGroup SET CloudSourceID = (SELECT ID FROM Source WHERE Source = 'AWS')
          WHERE OrganizationID = ? AND GroupID = '42'",
    )
    .bind(&r.org)
    .execute(r.f.pool())
    .await?;
    Ok((r, cloud_config))
}

/// ConfigID, StatusId, ParentJobId, Payload, CreatedBy, dispatched.
type CloudRow = (String, i32, Option<String>, Option<String>, String, bool);

#[tokio::test]
async fn a_dead_ec2_device_is_handed_to_one_cloud_decommission_job_and_not_again(
) -> anyhow::Result<()> {
    let (r, cloud_config) = rig().await?;
    let ec2 = r.key("10.0.0.5", "38739");
    let rack = r.key("10.0.0.6", "38739");
    for k in [&ec2, &rack] {
        r.sim.jira_transition(k, "Resolved-Decommissioned")?;
    }
    r.sim.kill_host(ip("10.0.0.5"))?;
    r.sim.kill_host(ip("10.0.0.6"))?;

    r.run("RescanQueueJob", None).await?;
    r.settle().await?;

    // The on-premises host is decommissioned by the scanner's word; the EC2
    // instance waits for the cloud's.
    assert_eq!(
        r.sim.jira_status(&rack).unwrap_or_default(),
        "Closed-Decommission"
    );
    assert_eq!(
        r.sim.jira_status(&ec2).unwrap_or_default(),
        "Resolved-Decommissioned"
    );
    assert!(
        r.comments(&ec2).contains(
            "reported the IP as dead, sending IP to cloud decommission job for verification"
        ),
        "{}",
        r.comments(&ec2)
    );
    let close: (String,) = sqlx::query_as(
        "SELECT h.ID FROM JobHistory h JOIN Job j ON j.Id = h.JobId JOIN JobConfig c ON c.ID = h.ConfigID
          WHERE j.Struct = 'ScanCloseJob' AND c.OrganizationID = ?",
    )
    .bind(&r.org)
    .fetch_one(r.f.pool())
    .await?;
    let rows: Vec<CloudRow> = sqlx::query_as(
        "SELECT h.ConfigID, h.StatusId, h.ParentJobId, h.Payload, h.CreatedBy, h.DispatchedAt IS NOT NULL
           FROM JobHistory h JOIN Job j ON j.Id = h.JobId WHERE j.Struct = 'CloudDecommissionJob'",
    )
    .fetch_all(r.f.pool())
    .await?;
    assert_eq!(rows.len(), 1, "exactly one CloudDecommissionJob: {rows:?}");
    let (config, status, parent, payload, created_by, dispatched) = rows[0].clone();
    assert_eq!(config, cloud_config);
    assert_eq!(status, 1, "pending: no worker implements it");
    assert_eq!(
        parent.as_deref(),
        Some(close.0.as_str()),
        "parent = the ScanCloseJob"
    );
    assert_eq!(created_by, "SCAN CLOSE JOB");
    assert!(!dispatched, "the coordinator does not dispatch it");
    let payload: Value = serde_json::from_str(payload.as_deref().unwrap_or("{}"))?;
    assert_eq!(
        payload,
        json!({
            "decommission_on_stopped_state": true,
            "only_check_ips": ["10.0.0.5"],
            "only_reopen_tickets": [ec2],
        })
    );

    // The next DECOMMISSIONED run: the IP is in flight in the pending job.
    r.run("RescanQueueJob", None).await?;
    assert_eq!(
        r.count(
            "SELECT COUNT(*) FROM JobHistory h JOIN Job j ON j.Id = h.JobId JOIN JobConfig c ON c.ID = h.ConfigID
              WHERE j.Struct = 'CloudDecommissionJob' AND c.OrganizationID = ?"
        )
        .await?,
        1,
        "the IP is not handed off twice"
    );
    assert_eq!(
        r.count(
            "SELECT COUNT(*) FROM JobHistory h JOIN Job j ON j.Id = h.JobId JOIN JobConfig c ON c.ID = h.ConfigID
              WHERE j.Struct = 'RescanJob' AND c.OrganizationID = ?"
        )
        .await?,
        1,
        "nor rescanned while the cloud check is pending"
    );
    assert!(r
        .f
        .logs()
        .contains("is already in a pending CloudDecommissionJob; not queued"));
    // Still pending, never claimed.
    let (status, attempt): (i32, i32) = sqlx::query_as(
        "SELECT h.StatusId, h.Attempt FROM JobHistory h JOIN Job j ON j.Id = h.JobId WHERE j.Struct = 'CloudDecommissionJob'",
    )
    .fetch_one(r.f.pool())
    .await?;
    assert_eq!((status, attempt), (1, 0));
    Ok(())
}

#[tokio::test]
async fn a_group_that_skips_the_rescan_queue_hands_its_tickets_off_once_it_qualifies(
) -> anyhow::Result<()> {
    let (r, cloud_config) = rig().await?;
    let ec2 = r.key("10.0.0.5", "38739");
    r.sim.jira_transition(&ec2, "Resolved-Decommissioned")?;
    sqlx::query(
        "UPDATE AssetGroup SET RescanQueueSkip = 1 WHERE OrganizationID = ? AND GroupID = '42'",
    )
    .bind(&r.org)
    .execute(r.f.pool())
    .await?;
    let cloud_rows = "SELECT COUNT(*) FROM JobHistory h JOIN Job j ON j.Id = h.JobId JOIN JobConfig c ON c.ID = h.ConfigID
                       WHERE j.Struct = 'CloudDecommissionJob' AND c.OrganizationID = ?";

    // Without its CloudDecommissionJob config the group does not qualify: the
    // log says what is missing, nothing is handed off or queued.
    sqlx::query("UPDATE JobConfig SET Active = 0 WHERE ID = ?")
        .bind(&cloud_config)
        .execute(r.f.pool())
        .await?;
    r.run("RescanQueueJob", None).await?;
    assert_eq!(r.count(cloud_rows).await?, 0);
    assert!(
        r.f.logs().contains(
            "group 42 does not hand dead IPs to cloud decommission: no CloudDecommissionJob JobConfig for organization CLOUD and cloud source AWS"
        ),
        "{}",
        r.f.logs()
    );
    assert!(r.f.logs().contains("VULN-") && r.f.logs().contains("marked to skip the RSQ"));

    sqlx::query("UPDATE JobConfig SET Active = 1 WHERE ID = ?")
        .bind(&cloud_config)
        .execute(r.f.pool())
        .await?;
    let rsq = r.run("RescanQueueJob", None).await?;
    let rows: Vec<(Option<String>, String, Option<String>)> = sqlx::query_as(
        "SELECT h.ParentJobId, h.CreatedBy, h.Payload FROM JobHistory h JOIN Job j ON j.Id = h.JobId
          WHERE j.Struct = 'CloudDecommissionJob'",
    )
    .fetch_all(r.f.pool())
    .await?;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(
        rows[0].0.as_deref(),
        Some(rsq.as_str()),
        "parent = the RescanQueueJob"
    );
    assert_eq!(rows[0].1, "RESCAN QUEUE JOB");
    let payload: Value = serde_json::from_str(rows[0].2.as_deref().unwrap_or("{}"))?;
    assert_eq!(payload["only_check_ips"], json!(["10.0.0.5"]));
    assert_eq!(payload["only_reopen_tickets"], json!([ec2]));
    assert_eq!(payload["decommission_on_stopped_state"], json!(true));

    r.run("RescanQueueJob", None).await?;
    assert_eq!(r.count(cloud_rows).await?, 1, "not handed off twice");
    assert_eq!(
        r.count(
            "SELECT COUNT(*) FROM JobHistory h JOIN Job j ON j.Id = h.JobId JOIN JobConfig c ON c.ID = h.ConfigID
              WHERE j.Struct = 'RescanJob' AND c.OrganizationID = ?"
        )
        .await?,
        0,
        "a skipped group is never rescanned"
    );
    Ok(())
}

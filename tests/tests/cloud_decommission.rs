//! The CloudDecommissionJob hand-off end to end: an EC2 device a
//! DECOMMISSIONED rescan finds dead is handed to one CloudDecommissionJob
//! (spec `original-jobs-rescan.md` §1.9, §4.4 D1), which waits pending — no
//! worker implements it — and the next RescanQueueJob neither rescans the
//! ticket nor hands its IP off again. The JIRA and Qualys simulators run in
//! this process; MariaDB, RabbitMQ, Redis, the coordinator and the worker are
//! real.
//!
//! Run `cargo build --workspace --bins` first.

use std::net::Ipv4Addr;
use std::time::Duration;

use aegis_sim::{ScanTiming, SimConfig, Simulator, WorldFixture};
use aegis_tests::estate::{start_job, Estate};
use aegis_tests::eventually;
use aegis_tests::fleet::Fleet;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(90);

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

struct Rig {
    f: Fleet,
    sim: Simulator,
    e: Estate,
    cloud_config: String,
}

impl Rig {
    /// Runs the organization's config of `job` with its own payload, and waits for success.
    async fn run(&self, job: &str) -> anyhow::Result<String> {
        let (config, payload): (String, Option<String>) = sqlx::query_as(
            "SELECT jc.ID, jc.Payload FROM JobConfig jc JOIN Job j ON j.Id = jc.JobId WHERE jc.OrganizationID = ? AND j.Struct = ?",
        )
        .bind(&self.e.org_id)
        .bind(job)
        .fetch_one(self.f.pool())
        .await?;
        let payload: Value = serde_json::from_str(payload.as_deref().unwrap_or("{}"))?;
        let id = start_job(self.f.pool(), &config, &payload).await?;
        self.f
            .wait_status(&id, 3, T)
            .await
            .map_err(|e| anyhow::anyhow!("{job}: {e}\n{}", self.f.logs()))?;
        Ok(id)
    }

    async fn count(&self, sql: &str) -> anyhow::Result<i64> {
        let (n,): (i64,) = sqlx::query_as(sql)
            .bind(&self.e.org_id)
            .fetch_one(self.f.pool())
            .await?;
        Ok(n)
    }

    /// Polls scans (ScanSyncJob) until none is unfinished and no rescan job is pending or running.
    async fn settle(&self) -> anyhow::Result<()> {
        eventually("the rescan loop to settle", T, || async {
            let busy = self
                .count(
                    "SELECT COUNT(*) FROM JobHistory h JOIN JobConfig c ON c.ID = h.ConfigID JOIN Job j ON j.Id = h.JobId
                      WHERE c.OrganizationID = ? AND j.Struct IN ('RescanQueueJob', 'RescanJob', 'ScanCloseJob') AND h.StatusId IN (1, 2)",
                )
                .await?;
            let unfinished = self
                .count("SELECT COUNT(*) FROM ScanSummary WHERE OrgID = ? AND ScanStatus NOT IN ('finished', 'canceled', 'stopped', 'error')")
                .await?;
            if busy == 0 && unfinished == 0 {
                return Ok(Some(()));
            }
            if unfinished > 0 {
                self.run("ScanSyncJob").await?;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok(None)
        })
        .await
    }

    /// The JIRA key of the ticket of `ip`.
    fn key(&self, ip: &str) -> String {
        let state = self.sim.state_summary();
        state["jira"]["issues"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["key"].as_str())
            .find(|k| {
                self.sim
                    .jira_issue(k)
                    .is_some_and(|i| i.to_string().contains(&format!("\"{ip}\"")))
            })
            .unwrap_or_else(|| panic!("no ticket for {ip}"))
            .to_string()
    }

    fn comments(&self, key: &str) -> String {
        let state = self.sim.state_summary();
        state["jira"]["issues"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|i| i["key"] == key)
            .and_then(|i| i["comments"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|c| c.as_str().map(str::to_string))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The organization (JIRA and Qualys simulators), the rescan jobs' configs,
/// an AWS SourceConfig with a CloudDecommissionJob config, and asset group 42
/// backed by AWS once AssetSyncJob has written it.
async fn rig() -> anyhow::Result<Rig> {
    let sim = Simulator::start(SimConfig {
        fixture: Some(fixture()),
        scan_timing: ScanTiming::fast(),
        ..Default::default()
    })
    .await?;
    let mut f = Fleet::new().await?;
    f.coordinator()?;
    f.worker()?;
    let pool = f.pool().clone();
    let suggested = sim.source_configs();
    let e = Estate::create(&pool, "CLOUD", &suggested["jira"], (0, 8, 2)).await?;
    let mut qualys = suggested["qualys"]["payload"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    qualys.insert("groups".into(), json!([42]));
    sqlx::query("UPDATE SourceConfig SET Address = ?, Payload = ? WHERE ID = ?")
        .bind(sim.qualys_url().to_string())
        .bind(Value::Object(qualys).to_string())
        .bind(&e.scanner_sc)
        .execute(&pool)
        .await?;
    let (q, j) = (e.scanner_sc.clone(), e.jira_sc.clone());
    for (job, din, dout, payload) in [
        ("VulnSyncJob", &q, &q, json!({})),
        ("AssetSyncJob", &q, &q, json!({"groups": ["42"]})),
        ("TicketingJob", &q, &j, json!({})),
        ("RescanQueueJob", &j, &q, json!({"type": "DECOMMISSIONED"})),
        ("RescanJob", &q, &j, json!({})),
        ("ScanSyncJob", &q, &q, json!({})),
        ("ScanCloseJob", &q, &j, json!({})),
    ] {
        e.job_config(&pool, job, din, dout, payload).await?;
    }
    // AWS: a cloud SourceConfig (an operator's SQL: no AWS integration yet)
    // and the CloudDecommissionJob config that uses it.
    let aws = uuid::Uuid::new_v4().to_string();
    sqlx::query(
        "INSERT INTO SourceConfig (ID, Source, SourceID, OrganizationID, Address, AuthInfo, Payload)
         SELECT ?, 'AWS', ID, ?, '', '{}', '{}' FROM Source WHERE Source = 'AWS'",
    )
    .bind(&aws)
    .bind(&e.org_id)
    .execute(&pool)
    .await?;
    let cloud_config = e
        .job_config(
            &pool,
            "CloudDecommissionJob",
            &aws,
            &j,
            json!({"decommission_on_stopped_state": true}),
        )
        .await?;
    let r = Rig {
        f,
        sim,
        e,
        cloud_config,
    };
    r.run("VulnSyncJob").await?;
    r.run("AssetSyncJob").await?;
    r.run("TicketingJob").await?;
    sqlx::query(
        "UPDATE AssetGroup SET CloudSourceID = (SELECT ID FROM Source WHERE Source = 'AWS')
          WHERE OrganizationID = ? AND GroupID = '42'",
    )
    .bind(&r.e.org_id)
    .execute(r.f.pool())
    .await?;
    Ok(r)
}

/// ConfigID, StatusId, ParentJobId, Payload, CreatedBy, dispatched.
type CloudRow = (String, i32, Option<String>, Option<String>, String, bool);

fn ip(s: &str) -> Ipv4Addr {
    s.parse().expect("ip")
}

#[tokio::test]
async fn a_dead_ec2_device_is_handed_to_one_cloud_decommission_job_and_not_again(
) -> anyhow::Result<()> {
    let r = rig().await?;
    let ec2 = r.key("10.0.0.5");
    let rack = r.key("10.0.0.6");
    for k in [&ec2, &rack] {
        r.sim.jira_transition(k, "Resolved-Decommissioned")?;
    }
    r.sim.kill_host(ip("10.0.0.5"))?;
    r.sim.kill_host(ip("10.0.0.6"))?;

    r.run("RescanQueueJob").await?;
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
    .bind(&r.e.org_id)
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
    assert_eq!(config, r.cloud_config);
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
    r.run("RescanQueueJob").await?;
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
    let r = rig().await?;
    let ec2 = r.key("10.0.0.5");
    r.sim.jira_transition(&ec2, "Resolved-Decommissioned")?;
    sqlx::query(
        "UPDATE AssetGroup SET RescanQueueSkip = 1 WHERE OrganizationID = ? AND GroupID = '42'",
    )
    .bind(&r.e.org_id)
    .execute(r.f.pool())
    .await?;
    let cloud_rows = "SELECT COUNT(*) FROM JobHistory h JOIN Job j ON j.Id = h.JobId JOIN JobConfig c ON c.ID = h.ConfigID
                       WHERE j.Struct = 'CloudDecommissionJob' AND c.OrganizationID = ?";

    // Without its CloudDecommissionJob config the group does not qualify: the
    // log says what is missing, nothing is handed off or queued.
    sqlx::query("UPDATE JobConfig SET Active = 0 WHERE ID = ?")
        .bind(&r.cloud_config)
        .execute(r.f.pool())
        .await?;
    r.run("RescanQueueJob").await?;
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
        .bind(&r.cloud_config)
        .execute(r.f.pool())
        .await?;
    let rsq = r.run("RescanQueueJob").await?;
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

    r.run("RescanQueueJob").await?;
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

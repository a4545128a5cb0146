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

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::time::Duration;

use aegis_shared::model::job_config::{self, NewJobConfig};
use aegis_shared::model::source_config::{self, NewSourceConfig, Vendor};
use aegis_sim::{Proto, ScanTiming, SimConfig, Simulator, WorldFixture};
use aegis_tests::eventually;
use aegis_tests::fleet::Fleet;
use aegis_tests::setup;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(90);

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

/// The fleet, the simulator, and an organization with JIRA and Qualys source
/// configs and one on-demand job config per job of the loop.
struct Rig {
    f: Fleet,
    sim: Simulator,
    org: String,
    configs: HashMap<&'static str, String>,
    fields: HashMap<String, String>,
}

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
    f.worker()?;
    let suggested = sim.source_configs();
    let payload = |vendor: &str| {
        suggested[vendor]["payload"]
            .as_object()
            .cloned()
            .unwrap_or_default()
    };
    let code = "SCHED";
    let mut tx = f.pool().begin().await?;
    let org = setup::organization(&mut tx, code).await?;
    let (jira, _) = source_config::create(
        &mut tx,
        &NewSourceConfig {
            retries: 1,
            payload: payload("jira"),
            ..setup::source(code, Vendor::Jira, &sim.jira_url())
        },
        None,
    )
    .await?;
    let mut qualys_payload = payload("qualys");
    qualys_payload.insert("groups".into(), json!([42, 43]));
    let (qualys, _) = source_config::create(
        &mut tx,
        &NewSourceConfig {
            retries: 1,
            payload: qualys_payload,
            ..setup::source(code, Vendor::Qualys, &sim.qualys_url())
        },
        None,
    )
    .await?;
    let (j, q) = (jira.id.clone(), qualys.id.clone());
    let mut configs = HashMap::new();
    for (name, din, dout, payload) in [
        ("VulnSyncJob", &q, &q, json!({})),
        ("AssetSyncJob", &q, &q, json!({"groups": ["42", "43"]})),
        ("TicketingJob", &q, &j, json!({})),
        ("RescanQueueJob", &j, &q, json!({"type": "NORMAL"})),
        ("RescanJob", &q, &j, json!({})),
        ("ScanSyncJob", &q, &q, json!({})),
        ("ScanCloseJob", &q, &j, json!({})),
    ] {
        let id = job_config::create(
            &mut tx,
            &org.id,
            &NewJobConfig {
                job_name: name.into(),
                data_in: vec![din.clone()],
                data_out: vec![dout.clone()],
                payload,
                priority_override: Some(0),
                continuous: false,
                wait_in_seconds: 0,
                max_instances: 0,
                auto_start: false,
            },
            "test",
        )
        .await?;
        configs.insert(name, id);
    }
    tx.commit().await?;
    let list: Vec<Value> = reqwest::Client::new()
        .get(format!("{}/rest/api/2/field", sim.jira_url()))
        .basic_auth("aegis", Some("aegis"))
        .send()
        .await?
        .json()
        .await?;
    let fields = list
        .iter()
        .filter_map(|f| {
            Some((
                f["name"].as_str()?.to_string(),
                f["id"].as_str()?.to_string(),
            ))
        })
        .collect();
    let r = Rig {
        f,
        sim,
        org: org.id,
        configs,
        fields,
    };
    for job in ["VulnSyncJob", "AssetSyncJob", "TicketingJob"] {
        r.run(job, None).await?;
    }
    anyhow::ensure!(
        r.tickets().len() == 5,
        "one ticket per finding: {:?}\n{}",
        r.tickets(),
        r.f.logs()
    );
    Ok(r)
}

impl Rig {
    async fn start(&self, job: &str, payload: Option<Value>) -> anyhow::Result<String> {
        let id = uuid::Uuid::new_v4().to_string();
        sqlx::query(
            "INSERT INTO JobHistory (ID, JobId, ConfigID, StatusId, Priority, Payload)
             SELECT ?, JobId, ID, 1, 0, COALESCE(?, Payload) FROM JobConfig WHERE ID = ?",
        )
        .bind(&id)
        .bind(payload.map(|p| p.to_string()))
        .bind(&self.configs[job])
        .execute(self.f.pool())
        .await?;
        Ok(id)
    }

    async fn run(&self, job: &str, payload: Option<Value>) -> anyhow::Result<String> {
        let id = self.start(job, payload).await?;
        self.f.wait_status(&id, 3, T).await?;
        Ok(id)
    }

    /// Ticket key by (IP, QID).
    fn tickets(&self) -> BTreeMap<(String, String), String> {
        let (ip, vuln) = (&self.fields["IP Address"], &self.fields["VulnerabilityID"]);
        let mut out = BTreeMap::new();
        for i in self.sim.state_summary()["jira"]["issues"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            let key = i["key"].as_str().unwrap_or_default().to_string();
            if let Some(issue) = self.sim.jira_issue(&key) {
                let field = |id: &str| issue["fields"][id].as_str().unwrap_or_default().to_string();
                out.insert((field(ip), field(vuln)), key);
            }
        }
        out
    }

    fn key(&self, ip: &str, qid: &str) -> String {
        self.tickets()
            .get(&(ip.to_string(), qid.to_string()))
            .cloned()
            .unwrap_or_else(|| panic!("no ticket for {ip} / {qid}: {:?}", self.tickets()))
    }

    fn status(&self, key: &str) -> String {
        self.sim.jira_status(key).unwrap_or_default()
    }

    fn comments(&self, key: &str) -> String {
        self.sim.state_summary()["jira"]["issues"]
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

    async fn count(&self, sql: &str) -> anyhow::Result<i64> {
        let (n,): (i64,) = sqlx::query_as(sql)
            .bind(&self.org)
            .fetch_one(self.f.pool())
            .await?;
        Ok(n)
    }

    /// Runs ScanSyncJob (with `payload`) until every scan is terminal and no
    /// RescanJob or ScanCloseJob is pending or running.
    async fn settle(&self, payload: Option<Value>) -> anyhow::Result<()> {
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
                self.run("ScanSyncJob", payload.clone()).await?;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok(None)
        })
        .await
    }

    async fn failed_jobs(&self) -> anyhow::Result<Vec<(String, Option<String>)>> {
        Ok(sqlx::query_as(
            "SELECT j.Struct, h.LastError FROM JobHistory h JOIN JobConfig c ON c.ID = h.ConfigID JOIN Job j ON j.Id = h.JobId
              WHERE c.OrganizationID = ? AND h.StatusId = 4",
        )
        .bind(&self.org)
        .fetch_all(self.f.pool())
        .await?)
    }
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().expect("ip")
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
    r.settle(None).await?;

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
    r.settle(Some(sync.clone())).await?;

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
    let sim = Simulator::start(SimConfig {
        fixture: Some(fixture()),
        scan_timing: ScanTiming::fast(),
        ..Default::default()
    })
    .await?;
    let mut f = Fleet::new().await?;
    f.coordinator()?;
    f.worker()?;
    let code = "SCHEDNX";
    let mut tx = f.pool().begin().await?;
    let org = setup::organization(&mut tx, code).await?;
    let (nexpose, _) = source_config::create(
        &mut tx,
        &NewSourceConfig {
            payload: sim.source_configs()["nexpose"]["payload"]
                .as_object()
                .cloned()
                .unwrap_or_default(),
            ..setup::source(code, Vendor::Nexpose, &sim.nexpose_url())
        },
        None,
    )
    .await?;
    let config = job_config::create(
        &mut tx,
        &org.id,
        &NewJobConfig {
            job_name: "ScanSyncJob".into(),
            data_in: vec![nexpose.id.clone()],
            data_out: vec![nexpose.id.clone()],
            payload: json!({}),
            priority_override: Some(0),
            continuous: false,
            wait_in_seconds: 0,
            max_instances: 0,
            auto_start: false,
        },
        "test",
    )
    .await?;
    tx.commit().await?;
    let payload = json!({"scheduled_scans": [r#"{"name":"Weekly","groupId":"1"}"#]});
    let id = aegis_tests::estate::start_job(f.pool(), &config, &payload).await?;
    f.wait_status(&id, 3, T).await?;
    assert!(
        f.logs()
            .contains("scheduled scans are not supported for Nexpose"),
        "{}",
        f.logs()
    );
    assert!(f.logs().contains(r#""name":"Weekly""#), "names the entry");
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM ScanSummary WHERE OrgID = ?")
        .bind(&org.id)
        .fetch_one(f.pool())
        .await?;
    assert_eq!(n, 0);
    Ok(())
}

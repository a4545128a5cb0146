//! The rescan loop's test rig: the simulators in this process, a fleet
//! (coordinator and workers), an organization with a JIRA and a scanner
//! (Qualys or Nexpose) source config made from `Simulator::source_configs()`,
//! one on-demand JobConfig per job of the loop, and the JIRA field-name map.
//! A test states what differs with [`RigBuilder`]; the [`Rig`] runs jobs and
//! reads tickets, scans and leases back.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::time::Duration;

use aegis_shared::model::job_config;
use aegis_shared::model::source_config::{self, NewSourceConfig, Vendor};
use aegis_sim::{ScanTiming, SimConfig, Simulator, WorldFixture};
use anyhow::Context;
use serde_json::{json, Map, Value};

use crate::fleet::Fleet;
use crate::{eventually, setup};

/// How long a job run, or the loop settling, may take.
pub const T: Duration = Duration::from_secs(90);

pub fn ip(s: &str) -> Ipv4Addr {
    s.parse().expect("ip")
}

/// Which of the rig's two source configs a job reads or writes.
#[derive(Clone, Copy, Debug)]
pub enum Side {
    Jira,
    Scanner,
}

/// What differs between rigs: by default two workers, Qualys scanning asset
/// group 42, the simulator's default Qualys limits, and the seven jobs
/// VulnSyncJob, AssetSyncJob, TicketingJob, RescanQueueJob (NORMAL),
/// RescanJob, ScanSyncJob and ScanCloseJob.
pub struct RigBuilder {
    org: String,
    fixture: WorldFixture,
    workers: usize,
    scanner: Vendor,
    groups: Vec<u32>,
    qualys_concurrency_limit: Option<u32>,
    concurrent_scan_limit: Option<usize>,
    scanner_payload: Map<String, Value>,
    jobs: Vec<(&'static str, Side, Side, Value)>,
}

impl RigBuilder {
    /// A rig for organization `org` over the simulated world `fixture`.
    pub fn new(org: &str, fixture: WorldFixture) -> Self {
        RigBuilder {
            org: org.into(),
            fixture,
            workers: 2,
            scanner: Vendor::Qualys,
            groups: vec![42],
            qualys_concurrency_limit: None,
            concurrent_scan_limit: None,
            scanner_payload: Map::new(),
            jobs: Vec::new(),
        }
    }

    /// How many workers run.
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }

    /// The scanner: `Vendor::Qualys` or `Vendor::Nexpose`.
    pub fn scanner(mut self, vendor: Vendor) -> Self {
        self.scanner = vendor;
        self
    }

    /// The Qualys asset groups (or Nexpose sites) the scanner config and
    /// AssetSyncJob cover.
    pub fn groups(mut self, groups: &[u32]) -> Self {
        self.groups = groups.to_vec();
        self
    }

    /// Parallel API calls the Qualys simulator allows.
    pub fn qualys_concurrency_limit(mut self, n: u32) -> Self {
        self.qualys_concurrency_limit = Some(n);
        self
    }

    /// Concurrent scans the Qualys simulator allows.
    pub fn concurrent_scan_limit(mut self, n: usize) -> Self {
        self.concurrent_scan_limit = Some(n);
        self
    }

    /// One more entry of the scanner source config's payload.
    pub fn scanner_payload(mut self, key: &str, value: Value) -> Self {
        self.scanner_payload.insert(key.into(), value);
        self
    }

    /// The JobConfig of `job` (replacing the default one of that name, if any).
    pub fn job(mut self, job: &'static str, data_in: Side, data_out: Side, payload: Value) -> Self {
        self.jobs.push((job, data_in, data_out, payload));
        self
    }

    /// Starts the simulator and the fleet and writes the organization, its
    /// source configs and job configs. Runs no job.
    pub async fn build(self) -> anyhow::Result<Rig> {
        let mut cfg = SimConfig {
            fixture: Some(self.fixture),
            scan_timing: ScanTiming::fast(),
            ..Default::default()
        };
        if let Some(n) = self.qualys_concurrency_limit {
            cfg.qualys.concurrency_limit = n;
        }
        if let Some(n) = self.concurrent_scan_limit {
            cfg.qualys.concurrent_scan_limit = n;
        }
        let sim = Simulator::start(cfg).await?;
        let mut f = Fleet::new().await?;
        f.coordinator()?;
        for _ in 0..self.workers {
            f.worker()?;
        }
        let suggested = sim.source_configs();
        let payload = |vendor: &str| {
            suggested[vendor]["payload"]
                .as_object()
                .cloned()
                .unwrap_or_default()
        };
        let (vendor, address, groups_key) = match self.scanner {
            Vendor::Qualys => ("qualys", sim.qualys_url(), "groups"),
            Vendor::Nexpose => ("nexpose", sim.nexpose_url(), "sites"),
            other => anyhow::bail!("the rescan rig scans with Qualys or Nexpose, not {other:?}"),
        };
        let mut scanner_payload = payload(vendor);
        scanner_payload.insert(groups_key.into(), json!(self.groups));
        scanner_payload.extend(self.scanner_payload);

        let code = self.org.as_str();
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
        let (scanner, _) = source_config::create(
            &mut tx,
            &NewSourceConfig {
                retries: 1,
                payload: scanner_payload,
                ..setup::source(code, self.scanner, &address)
            },
            None,
        )
        .await?;

        let groups: Vec<String> = self.groups.iter().map(u32::to_string).collect();
        let mut jobs = vec![
            ("VulnSyncJob", Side::Scanner, Side::Scanner, json!({})),
            (
                "AssetSyncJob",
                Side::Scanner,
                Side::Scanner,
                json!({ "groups": groups }),
            ),
            ("TicketingJob", Side::Scanner, Side::Jira, json!({})),
            (
                "RescanQueueJob",
                Side::Jira,
                Side::Scanner,
                json!({"type": "NORMAL"}),
            ),
            ("RescanJob", Side::Scanner, Side::Jira, json!({})),
            ("ScanSyncJob", Side::Scanner, Side::Scanner, json!({})),
            ("ScanCloseJob", Side::Scanner, Side::Jira, json!({})),
        ];
        for job in self.jobs {
            match jobs.iter_mut().find(|j| j.0 == job.0) {
                Some(j) => *j = job,
                None => jobs.push(job),
            }
        }
        let id = |side: Side| match side {
            Side::Jira => jira.id.clone(),
            Side::Scanner => scanner.id.clone(),
        };
        let mut configs = HashMap::new();
        for (name, din, dout, payload) in jobs {
            let config = setup::job(name, &id(din), &id(dout), payload);
            let config_id = job_config::create(&mut tx, &org.id, &config, "test").await?;
            configs.insert(name.to_string(), config_id);
        }
        tx.commit().await?;

        let fields = setup::jira_fields(&sim).await?;
        Ok(Rig {
            f,
            sim,
            org: org.id,
            jira_sc: jira.id,
            scanner_sc: scanner.id,
            fields,
            configs,
        })
    }
}

/// A running rig (see the module documentation).
pub struct Rig {
    pub f: Fleet,
    pub sim: Simulator,
    /// `Organization.ID`.
    pub org: String,
    /// The JIRA and scanner `SourceConfig.ID`s.
    pub jira_sc: String,
    pub scanner_sc: String,
    /// JIRA field ID by field name.
    pub fields: HashMap<String, String>,
    /// JobConfig ID by job name.
    configs: HashMap<String, String>,
}

impl Rig {
    /// Adds a JobConfig of the organization (a job beyond the loop's own);
    /// returns its ID.
    pub async fn job_config(
        &mut self,
        job: &str,
        data_in: &str,
        data_out: &str,
        payload: Value,
    ) -> anyhow::Result<String> {
        let mut tx = self.f.pool().begin().await?;
        let id = job_config::create(
            &mut tx,
            &self.org,
            &setup::job(job, data_in, data_out, payload),
            "test",
        )
        .await?;
        tx.commit().await?;
        self.configs.insert(job.to_string(), id.clone());
        Ok(id)
    }

    /// Inserts a pending run of `job`'s config (with `payload`, or the
    /// config's own); returns its JobHistory ID.
    pub async fn start(&self, job: &str, payload: Option<Value>) -> anyhow::Result<String> {
        self.f.start_config(&self.configs[job], payload).await
    }

    /// Starts `job` and waits for it to succeed.
    pub async fn run(&self, job: &str, payload: Option<Value>) -> anyhow::Result<String> {
        let id = self.start(job, payload).await?;
        self.f
            .wait_status(&id, 3, T)
            .await
            .with_context(|| format!("{job} did not succeed"))?;
        Ok(id)
    }

    /// VulnSyncJob, AssetSyncJob, then TicketingJob.
    pub async fn sync_and_ticket(&self) -> anyhow::Result<()> {
        self.run("VulnSyncJob", None).await?;
        self.run("AssetSyncJob", None).await?;
        self.run("TicketingJob", None).await?;
        Ok(())
    }

    /// Ticket key by (IP, QID).
    pub fn tickets(&self) -> BTreeMap<(String, String), String> {
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

    /// The key of the ticket of (IP, QID); panics when there is none.
    pub fn key(&self, ip: &str, qid: &str) -> String {
        self.tickets()
            .get(&(ip.to_string(), qid.to_string()))
            .cloned()
            .unwrap_or_else(|| panic!("no ticket for {ip} / {qid}: {:?}", self.tickets()))
    }

    pub fn status(&self, key: &str) -> String {
        self.sim.jira_status(key).unwrap_or_default()
    }

    /// The ticket's comments, one a line.
    pub fn comments(&self, key: &str) -> String {
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

    /// `sql` (a `SELECT COUNT(*)` with one `?`, bound to the organization's ID).
    pub async fn count(&self, sql: &str) -> anyhow::Result<i64> {
        let (n,): (i64,) = sqlx::query_as(sql)
            .bind(&self.org)
            .fetch_one(self.f.pool())
            .await?;
        Ok(n)
    }

    /// Runs ScanSyncJob until every scan is terminal and no RescanQueueJob,
    /// RescanJob or ScanCloseJob is pending or running (what the continuous
    /// config does).
    pub async fn settle(&self) -> anyhow::Result<()> {
        self.settle_with(None).await
    }

    /// [`Rig::settle`], running ScanSyncJob with `payload`.
    pub async fn settle_with(&self, payload: Option<Value>) -> anyhow::Result<()> {
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

    /// The organization's failed runs: (job, last error).
    pub async fn failed_jobs(&self) -> anyhow::Result<Vec<(String, Option<String>)>> {
        Ok(sqlx::query_as(
            "SELECT j.Struct, h.LastError FROM JobHistory h JOIN JobConfig c ON c.ID = h.ConfigID JOIN Job j ON j.Id = h.JobId
              WHERE c.OrganizationID = ? AND h.StatusId = 4",
        )
        .bind(&self.org)
        .fetch_all(self.f.pool())
        .await?)
    }
}

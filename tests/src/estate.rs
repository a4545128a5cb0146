//! A scanned estate written straight into the database, as AssetSyncJob would
//! write it (spec `original-jobs-sync-ticketing.md` §5): AssetGroup, Device,
//! VulnerabilityInfo, Vulnerability_Reference and Detection rows, plus the
//! organization and the JIRA and scanner source configs the ticketing jobs
//! need. Tests of the ticketing jobs seed through this one place, so an
//! end-to-end test can swap in a real AssetSync run later.

use aegis_shared::model::job_config::{self, NewJobConfig};
use aegis_shared::model::source_config::{self, NewSourceConfig, Vendor};
use aegis_shared::secrets::Secret;
use serde_json::{Map, Value};
use sqlx::MySqlPool;

/// An organization with its JIRA and scanner source configs.
#[derive(Clone, Debug)]
pub struct Estate {
    pub org_id: String,
    pub org_code: String,
    pub jira_sc: String,
    pub scanner_sc: String,
    /// `Source.ID` of the scanner (Qualys).
    pub scanner_source_id: String,
}

/// A scanned host.
#[derive(Clone, Debug)]
pub struct Host {
    pub asset_id: String,
    pub ip: String,
    pub hostname: String,
    pub os: String,
    pub group: String,
    pub tracking: String,
}

impl Host {
    pub fn new(asset_id: &str, ip: &str, hostname: &str, os: &str, group: &str) -> Host {
        Host {
            asset_id: asset_id.into(),
            ip: ip.into(),
            hostname: hostname.into(),
            os: os.into(),
            group: group.into(),
            tracking: "IP".into(),
        }
    }
}

/// A knowledge-base entry.
#[derive(Clone, Debug)]
pub struct Vuln {
    pub qid: String,
    pub title: String,
    pub cvss: f32,
    pub cvss3: Option<f32>,
    pub references: Vec<String>,
}

impl Vuln {
    pub fn new(qid: &str, title: &str, cvss: f32) -> Vuln {
        Vuln {
            qid: qid.into(),
            title: title.into(),
            cvss,
            cvss3: None,
            references: Vec::new(),
        }
    }
}

impl Estate {
    /// Creates the organization (default ticketing policy) and its source
    /// configs. `jira` is the simulator's suggested JIRA SourceConfig
    /// (`Simulator::source_configs()["jira"]`); `jira_limits` = (Delay ns,
    /// Concurrency, Retries).
    pub async fn create(
        pool: &MySqlPool,
        code: &str,
        jira: &Value,
        jira_limits: (u64, u32, u32),
    ) -> anyhow::Result<Estate> {
        let mut tx = pool.begin().await?;
        let org = crate::setup::organization(&mut tx, code).await?;
        let payload: Map<String, Value> = jira["payload"].as_object().cloned().unwrap_or_default();
        let new = |vendor: Vendor,
                   address: &str,
                   payload: Map<String, Value>,
                   limits: (u64, u32, u32)| NewSourceConfig {
            org_code: code.into(),
            vendor,
            address: address.into(),
            port: None,
            username: "aegis".into(),
            password: Secret::new("aegis"),
            token: Secret::default(),
            delay_ns: limits.0,
            concurrency: limits.1,
            retries: limits.2,
            verify_tls: true,
            limit_key: None,
            payload,
            created_by: "test".into(),
        };
        let address = jira["address"].as_str().unwrap_or_default().to_string();
        let (jira_sc, _) = source_config::create(
            &mut tx,
            &new(Vendor::Jira, &address, payload, jira_limits),
            None,
        )
        .await?;
        let (scanner, _) = source_config::create(
            &mut tx,
            &new(Vendor::Qualys, "http://127.0.0.1:9", Map::new(), (0, 4, 0)),
            None,
        )
        .await?;
        tx.commit().await?;
        Ok(Estate {
            org_id: org.id,
            org_code: org.code,
            jira_sc: jira_sc.id,
            scanner_sc: scanner.id,
            scanner_source_id: scanner.source_id.unwrap_or_default(),
        })
    }

    /// An AssetGroup row of the scanner config.
    pub async fn asset_group(&self, pool: &MySqlPool, group: &str) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO AssetGroup (GroupID, OrganizationID, ScannerSourceConfigID, ScannerSourceID) VALUES (?, ?, ?, ?)",
        )
        .bind(group)
        .bind(&self.org_id)
        .bind(&self.scanner_sc)
        .bind(&self.scanner_source_id)
        .execute(pool)
        .await?;
        Ok(())
    }

    /// A Device row (OS type looked up like AssetSync does); returns Device.ID.
    pub async fn device(&self, pool: &MySqlPool, h: &Host) -> anyhow::Result<String> {
        let id = uuid::Uuid::new_v4().to_string();
        sqlx::query(
            "INSERT INTO Device (ID, SourceID, AssetID, Ip, HostName, GroupID, OrganizationID, OS, OSTypeId, TrackingMethod)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?,
                     (SELECT Id FROM OperatingSystemType WHERE LOCATE(`Match`, LOWER(?)) > 0 OR `Match` = ''
                      ORDER BY Priority DESC LIMIT 1), ?)",
        )
        .bind(&id)
        .bind(&self.scanner_source_id)
        .bind(&h.asset_id)
        .bind(&h.ip)
        .bind(&h.hostname)
        .bind(&h.group)
        .bind(&self.org_id)
        .bind(&h.os)
        .bind(&h.os)
        .bind(&h.tracking)
        .execute(pool)
        .await?;
        Ok(id)
    }

    /// A VulnerabilityInfo row and its references; returns VulnerabilityInfo.ID.
    pub async fn vuln(&self, pool: &MySqlPool, v: &Vuln) -> anyhow::Result<String> {
        let id = uuid::Uuid::new_v4().to_string();
        sqlx::query(
            "INSERT INTO VulnerabilityInfo (ID, SourceVulnId, Title, SourceID, CVSS, CVSS3, Description, Threat, Solution, Patchable)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'Yes')",
        )
        .bind(&id)
        .bind(&v.qid)
        .bind(&v.title)
        .bind(&self.scanner_source_id)
        .bind(v.cvss)
        .bind(v.cvss3)
        .bind(format!("<p>{} lets an attacker in.</p>", v.title))
        .bind("A remote attacker can exploit this.")
        .bind("Apply the <a href=\"https://vendor.example/fix\">vendor fix</a>.")
        .execute(pool)
        .await?;
        for r in &v.references {
            sqlx::query("INSERT INTO Vulnerability_Reference (VulnInfoID, SourceID, Reference, RefType) VALUES (?, ?, ?, ?)")
                .bind(&v.qid)
                .bind(&self.scanner_source_id)
                .bind(r)
                .bind(if r.contains("CVE") { 0 } else { 2 })
                .execute(pool)
                .await?;
        }
        Ok(id)
    }

    /// A Detection row (status `active`, found now); returns Detection.ID.
    pub async fn detection(
        &self,
        pool: &MySqlPool,
        asset_id: &str,
        vuln_info_id: &str,
        port: i32,
        protocol: &str,
    ) -> anyhow::Result<String> {
        let id = uuid::Uuid::new_v4().to_string();
        sqlx::query(
            "INSERT INTO Detection (ID, OrganizationID, SourceID, DeviceID, VulnerabilityID, AlertDate, LastFound, LastUpdated,
                                    Proof, Port, Protocol, DetectionStatusId, Created, Updated)
             VALUES (?, ?, ?, ?, ?, UTC_TIMESTAMP(3), UTC_TIMESTAMP(3), UTC_TIMESTAMP(3), 'Seen on the wire', ?, ?,
                     (SELECT Id FROM DetectionStatus WHERE Status = 'active'), UTC_TIMESTAMP(3), UTC_TIMESTAMP(3))",
        )
        .bind(&id)
        .bind(&self.org_id)
        .bind(&self.scanner_source_id)
        .bind(asset_id)
        .bind(vuln_info_id)
        .bind(port)
        .bind(protocol)
        .execute(pool)
        .await?;
        Ok(id)
    }

    /// An active Ignore row (type 0 exception, 1 false positive, 2
    /// decommissioned asset); returns Ignore.ID.
    pub async fn ignore(
        &self,
        pool: &MySqlPool,
        type_id: i32,
        asset_id: &str,
        qid: &str,
        port: &str,
    ) -> anyhow::Result<String> {
        let id = uuid::Uuid::new_v4().to_string();
        sqlx::query(
            "INSERT INTO `Ignore` (ID, SourceID, OrganizationID, TypeId, VulnerabilityId, DeviceID, DueDate, Approval, Active, Port)
             VALUES (?, ?, ?, ?, ?, ?, DATE_ADD(UTC_TIMESTAMP(3), INTERVAL 30 DAY), 'CERF-1', 1, ?)",
        )
        .bind(&id)
        .bind(&self.scanner_source_id)
        .bind(&self.org_id)
        .bind(type_id)
        .bind(qid)
        .bind(asset_id)
        .bind(port)
        .execute(pool)
        .await?;
        Ok(id)
    }

    /// A JobConfig of this organization.
    pub async fn job_config(
        &self,
        pool: &MySqlPool,
        job: &str,
        data_in: &str,
        data_out: &str,
        payload: Value,
    ) -> anyhow::Result<String> {
        let mut tx = pool.begin().await?;
        let id = job_config::create(
            &mut tx,
            &self.org_id,
            &NewJobConfig {
                priority_override: None,
                ..crate::setup::job(job, data_in, data_out, payload)
            },
            "test",
        )
        .await?;
        tx.commit().await?;
        Ok(id)
    }
}

/// Inserts a pending JobHistory row for a config, as an operator would;
/// returns its ID.
pub async fn start_job(
    pool: &MySqlPool,
    config_id: &str,
    payload: &Value,
) -> anyhow::Result<String> {
    let id = uuid::Uuid::new_v4().to_string();
    sqlx::query(
        "INSERT INTO JobHistory (ID, JobId, ConfigID, StatusId, Priority, Payload)
         VALUES (?, (SELECT JobId FROM JobConfig WHERE ID = ?), ?, 1, 0, ?)",
    )
    .bind(&id)
    .bind(config_id)
    .bind(config_id)
    .bind(payload.to_string())
    .execute(pool)
    .await?;
    Ok(id)
}

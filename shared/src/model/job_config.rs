//! Job configs: which job runs for which organization, with which source configs,
//! payload, priority, concurrency (MaxInstances) and scheduling flags
//! (AutoStart, Continuous, WaitInSeconds).

use serde::Serialize;
use serde_json::{json, Value};
use sqlx::{MySql, MySqlPool, Transaction};

use super::ModelError;

/// A row of `JobConfig`, joined with its job name.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct JobConfig {
    #[sqlx(rename = "ID")]
    pub id: String,
    #[sqlx(rename = "JobId")]
    pub job_id: i32,
    #[sqlx(rename = "Struct")]
    pub job_name: String,
    #[sqlx(rename = "OrganizationID")]
    pub organization_id: Option<String>,
    #[sqlx(rename = "DataInSourceConfigID")]
    pub data_in_source_config_id: Option<String>,
    #[sqlx(rename = "DataOutSourceConfigID")]
    pub data_out_source_config_id: Option<String>,
    #[sqlx(rename = "Payload")]
    pub payload: Option<String>,
    #[sqlx(rename = "PriorityOverride")]
    pub priority_override: Option<i32>,
    #[sqlx(rename = "Continuous")]
    pub continuous: bool,
    #[sqlx(rename = "WaitInSeconds")]
    pub wait_in_seconds: i32,
    #[sqlx(rename = "MaxInstances")]
    pub max_instances: i32,
    #[sqlx(rename = "AutoStart")]
    pub auto_start: bool,
    #[sqlx(rename = "Active")]
    pub active: bool,
    #[sqlx(rename = "LastJobStart")]
    pub last_job_start: Option<chrono::DateTime<chrono::Utc>>,
}

/// Splits a comma-separated source config column (the original's format).
pub fn split_ids(column: Option<&str>) -> Vec<String> {
    column
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

impl JobConfig {
    pub fn data_in(&self) -> Vec<String> {
        split_ids(self.data_in_source_config_id.as_deref())
    }
    pub fn data_out(&self) -> Vec<String> {
        split_ids(self.data_out_source_config_id.as_deref())
    }
}

/// What a new JobConfig row holds.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NewJobConfig {
    pub job_name: String,
    pub data_in: Vec<String>,
    pub data_out: Vec<String>,
    pub payload: Value,
    pub priority_override: Option<i32>,
    pub continuous: bool,
    pub wait_in_seconds: i32,
    pub max_instances: i32,
    pub auto_start: bool,
}

/// Options of the original installer's default job config set.
#[derive(Clone, Debug)]
pub struct DefaultsOptions {
    pub scanner: String,
    pub ticketing: String,
    /// Asset group IDs for AssetSyncJob.
    pub groups: Vec<String>,
    /// TicketingJob's `mindate` (RFC 3339); the install time by default.
    pub mindate: String,
    pub rescan_queue_wait: i32,
    pub scan_sync_wait: i32,
    pub exception_wait: i32,
    pub auto_start: bool,
}

/// The job configs the original installer creates (spec §8), in its order.
pub fn installer_defaults(o: &DefaultsOptions) -> Vec<NewJobConfig> {
    let (s, t) = (o.scanner.clone(), o.ticketing.clone());
    let rescan_queue = |kind: &str, continuous: bool| NewJobConfig {
        job_name: "RescanQueueJob".into(),
        data_in: vec![t.clone()],
        data_out: vec![s.clone()],
        payload: json!({"type": kind, "agent_ticket_rescan_delay_wait_in_minutes": null, "include_exceptions": null}),
        priority_override: Some(0),
        continuous,
        wait_in_seconds: if continuous { o.rescan_queue_wait } else { 0 },
        max_instances: 1,
        auto_start: continuous && o.auto_start,
    };
    let plain = |name: &str, din: &str, dout: &str, payload: Value, max: i32| NewJobConfig {
        job_name: name.into(),
        data_in: vec![din.to_string()],
        data_out: vec![dout.to_string()],
        payload,
        priority_override: Some(0),
        continuous: false,
        wait_in_seconds: 0,
        max_instances: max,
        auto_start: false,
    };
    vec![
        rescan_queue("NORMAL", true),
        rescan_queue("DECOMMISSIONED", true),
        rescan_queue("PASSIVE", false),
        rescan_queue("EXCEPTIONS", false),
        plain("RescanJob", &s, &t, json!({}), 0),
        plain(
            "TicketingJob",
            &s,
            &t,
            json!({"mindate": o.mindate, "ip_correlation": false, "ticket_inactive_kernels": false}),
            1,
        ),
        NewJobConfig {
            continuous: true,
            wait_in_seconds: o.scan_sync_wait,
            auto_start: o.auto_start,
            ..plain("ScanSyncJob", &s, &s, json!({}), 1)
        },
        plain("ScanCloseJob", &s, &t, json!({}), 0),
        plain("BulkUpdateJob", &t, &t, json!({}), 0),
        plain("VulnSyncJob", &s, &s, json!({}), 0),
        plain(
            "AssetSyncJob",
            &s,
            &s,
            json!({"groups": o.groups, "groups_exempt_from_global_exceptions": null}),
            0,
        ),
        plain("TicketSyncJob", &t, &t, json!({}), 1),
        NewJobConfig {
            continuous: true,
            wait_in_seconds: o.exception_wait,
            auto_start: o.auto_start,
            ..plain("ExceptionJob", &t, &s, json!({}), 1)
        },
    ]
}

/// Inserts one job config for an organization, checking that the job exists and
/// that every source config belongs to the organization.
pub async fn create(
    tx: &mut Transaction<'_, MySql>,
    org_id: &str,
    new: &NewJobConfig,
    created_by: &str,
) -> Result<String, ModelError> {
    if new.wait_in_seconds < 0 {
        return Err(ModelError::invalid(
            format!("{} wait", new.job_name),
            "must be >= 0 seconds",
        ));
    }
    if new.max_instances < 0 {
        return Err(ModelError::invalid(
            format!("{} max instances", new.job_name),
            "must be >= 0 (0 = unlimited)",
        ));
    }
    let job_id = sqlx::query_as::<_, (i32,)>("SELECT Id FROM Job WHERE Struct = ?")
        .bind(&new.job_name)
        .fetch_optional(&mut **tx)
        .await?
        .ok_or_else(|| ModelError::NotFound {
            what: "job type",
            key: new.job_name.clone(),
        })?
        .0;
    for sc in new.data_in.iter().chain(new.data_out.iter()) {
        let found: Option<(String,)> =
            sqlx::query_as("SELECT ID FROM SourceConfig WHERE ID = ? AND OrganizationID = ?")
                .bind(sc)
                .bind(org_id)
                .fetch_optional(&mut **tx)
                .await?;
        if found.is_none() {
            return Err(ModelError::NotFound {
                what: "source config of this organization",
                key: sc.clone(),
            });
        }
    }
    let id = uuid::Uuid::new_v4().to_string();
    sqlx::query(
        "INSERT INTO JobConfig (ID, JobId, OrganizationID, DataInSourceConfigID, DataOutSourceConfigID, Payload,
                                PriorityOverride, Continuous, WaitInSeconds, MaxInstances, AutoStart, CreatedBy, CreatedDate)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, UTC_TIMESTAMP(3))",
    )
    .bind(&id)
    .bind(job_id)
    .bind(org_id)
    .bind(new.data_in.join(","))
    .bind(new.data_out.join(","))
    .bind(new.payload.to_string())
    .bind(new.priority_override)
    .bind(new.continuous)
    .bind(new.wait_in_seconds)
    .bind(new.max_instances)
    .bind(new.auto_start)
    .bind(created_by)
    .execute(&mut **tx)
    .await?;
    Ok(id)
}

const SELECT: &str = "SELECT jc.ID, jc.JobId, j.Struct, jc.OrganizationID, jc.DataInSourceConfigID, jc.DataOutSourceConfigID,
        jc.Payload, jc.PriorityOverride, jc.Continuous, jc.WaitInSeconds, jc.MaxInstances, jc.AutoStart, jc.Active, jc.LastJobStart
   FROM JobConfig jc JOIN Job j ON j.Id = jc.JobId";

pub async fn by_id(pool: &MySqlPool, id: &str) -> Result<JobConfig, ModelError> {
    sqlx::query_as::<_, JobConfig>(&format!("{SELECT} WHERE jc.ID = ?"))
        .bind(id)
        .fetch_optional(pool)
        .await?
        .ok_or_else(|| ModelError::NotFound {
            what: "job config",
            key: id.to_string(),
        })
}

/// Job configs of one organization (all when `org_id` is `None`).
pub async fn list(pool: &MySqlPool, org_id: Option<&str>) -> Result<Vec<JobConfig>, ModelError> {
    Ok(match org_id {
        Some(org) => {
            sqlx::query_as::<_, JobConfig>(&format!(
                "{SELECT} WHERE jc.OrganizationID = ? ORDER BY jc.JobId, jc.CreatedDate"
            ))
            .bind(org)
            .fetch_all(pool)
            .await?
        }
        None => {
            sqlx::query_as::<_, JobConfig>(&format!(
                "{SELECT} ORDER BY jc.OrganizationID, jc.JobId, jc.CreatedDate"
            ))
            .fetch_all(pool)
            .await?
        }
    })
}

/// The organization's first active JobConfig of `job` whose in- or out-sources
/// include `source_config` (the original's `GetJobConfigByOrgIDAndJobIDWithSC`,
/// with an exact match and an order): its ID and Payload.
pub async fn for_source(
    pool: &MySqlPool,
    org_id: &str,
    job: &str,
    source_config: &str,
) -> Result<Option<(String, Option<String>)>, ModelError> {
    Ok(sqlx::query_as(
        "SELECT jc.ID, jc.Payload FROM JobConfig jc JOIN Job j ON j.Id = jc.JobId
          WHERE jc.OrganizationID = ? AND j.Struct = ? AND jc.Active = 1
            AND (FIND_IN_SET(?, REPLACE(COALESCE(jc.DataInSourceConfigID, ''), ' ', '')) > 0
                 OR FIND_IN_SET(?, REPLACE(COALESCE(jc.DataOutSourceConfigID, ''), ' ', '')) > 0)
          ORDER BY jc.CreatedDate, jc.ID LIMIT 1",
    )
    .bind(org_id)
    .bind(job)
    .bind(source_config)
    .bind(source_config)
    .fetch_optional(pool)
    .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installer_defaults_match_the_original_table() {
        let o = DefaultsOptions {
            scanner: "S".into(),
            ticketing: "T".into(),
            groups: vec!["101".into()],
            mindate: "2026-01-01T00:00:00Z".into(),
            rescan_queue_wait: 60,
            scan_sync_wait: 120,
            exception_wait: 60,
            auto_start: true,
        };
        let d = installer_defaults(&o);
        assert_eq!(d.len(), 13);
        let auto: Vec<_> = d
            .iter()
            .filter(|c| c.auto_start)
            .map(|c| (c.job_name.as_str(), c.wait_in_seconds))
            .collect();
        assert_eq!(
            auto,
            vec![
                ("RescanQueueJob", 60),
                ("RescanQueueJob", 60),
                ("ScanSyncJob", 120),
                ("ExceptionJob", 60)
            ]
        );
        let ticketing = d
            .iter()
            .find(|c| c.job_name == "TicketingJob")
            .expect("present");
        assert_eq!(ticketing.data_in, vec!["S"]);
        assert_eq!(ticketing.data_out, vec!["T"]);
        assert_eq!(ticketing.payload["mindate"], "2026-01-01T00:00:00Z");
        let asset = d
            .iter()
            .find(|c| c.job_name == "AssetSyncJob")
            .expect("present");
        assert_eq!(asset.payload["groups"], json!(["101"]));
        assert_eq!(asset.max_instances, 0);
        assert_eq!(split_ids(Some(" a, b,,c ")), vec!["a", "b", "c"]);
    }
}

//! Detections (`Detection`, `DetectionStatus`): the findings AssetSyncJob
//! writes and TicketingJob reads. A detection's identity is (organization,
//! device asset ID, VulnerabilityInfo ID, port, protocol), enforced by
//! `uk_detection_finding`, so upserts never duplicate a finding.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::{MySql, MySqlPool, QueryBuilder, Transaction};

use super::ModelError;

/// Rows per multi-row statement (17 parameters each, far below the 65,535 limit).
pub const ROWS_PER_STATEMENT: usize = 1000;

/// `DetectionStatus.Status` (lowercase) → `Id`.
pub async fn statuses(pool: &MySqlPool) -> Result<HashMap<String, i32>, ModelError> {
    let rows: Vec<(i32, String)> = sqlx::query_as("SELECT Id, Status FROM DetectionStatus")
        .fetch_all(pool)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(id, s)| (s.to_lowercase(), id))
        .collect())
}

/// A detection's natural identity within an organization.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FindingKey {
    pub device_id: String,
    pub vulnerability_id: String,
    pub port: i32,
    pub protocol: String,
}

/// The columns a sync may change, as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct SyncedState {
    pub ignore_id: Option<String>,
    pub status_id: i32,
    pub last_found: Option<DateTime<Utc>>,
    pub last_updated: Option<DateTime<Utc>>,
    pub times_seen: i32,
    pub active_kernel: Option<i32>,
    pub proof: String,
}

/// One detection to insert or update.
#[derive(Clone, Debug)]
pub struct DetectionRow {
    pub key: FindingKey,
    pub alert_date: DateTime<Utc>,
    pub state: SyncedState,
}

type ExistingRow = (
    String,
    String,
    i32,
    String,
    Option<String>,
    i32,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
    i32,
    Option<i32>,
    Option<String>,
);

/// The stored state of every detection of `device_ids` from one scanner source.
pub async fn existing(
    tx: &mut Transaction<'_, MySql>,
    org_id: &str,
    source_id: &str,
    device_ids: &[&str],
) -> Result<HashMap<FindingKey, SyncedState>, ModelError> {
    let mut out = HashMap::new();
    if device_ids.is_empty() {
        return Ok(out);
    }
    let mut q = QueryBuilder::<MySql>::new(
        "SELECT DeviceID, VulnerabilityID, Port, Protocol, IgnoreID, DetectionStatusId, LastFound, LastUpdated, TimesSeen, ActiveKernel, Proof
           FROM Detection WHERE OrganizationID = ",
    );
    q.push_bind(org_id)
        .push(" AND SourceID = ")
        .push_bind(source_id)
        .push(" AND DeviceID IN (");
    let mut sep = q.separated(", ");
    for d in device_ids {
        sep.push_bind(*d);
    }
    q.push(")");
    let rows: Vec<ExistingRow> = q.build_query_as().fetch_all(&mut **tx).await?;
    for (
        device_id,
        vulnerability_id,
        port,
        protocol,
        ignore_id,
        status_id,
        last_found,
        last_updated,
        times_seen,
        active_kernel,
        proof,
    ) in rows
    {
        out.insert(
            FindingKey {
                device_id,
                vulnerability_id,
                port,
                protocol,
            },
            SyncedState {
                ignore_id,
                status_id,
                last_found,
                last_updated,
                times_seen,
                active_kernel,
                proof: proof.unwrap_or_default(),
            },
        );
    }
    Ok(out)
}

/// Inserts new detections and updates existing ones (status, ignore, dates,
/// proof, times seen; `Updated` = now), in statements of [`ROWS_PER_STATEMENT`].
/// AlertDate and Created keep their first values.
pub async fn upsert(
    tx: &mut Transaction<'_, MySql>,
    org_id: &str,
    source_id: &str,
    rows: &[DetectionRow],
    now: DateTime<Utc>,
) -> Result<(), ModelError> {
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let mut q = QueryBuilder::<MySql>::new(
            "INSERT INTO Detection (ID, OrganizationID, SourceID, DeviceID, VulnerabilityID, IgnoreID, AlertDate, LastUpdated, LastFound,
                                    Proof, Port, Protocol, ActiveKernel, DetectionStatusId, TimesSeen, Created, Updated) ",
        );
        q.push_values(chunk, |mut b, r| {
            // Time-ordered IDs append to the clustered index instead of scattering
            // writes over it (a million-row first sync stays sequential).
            b.push_bind(uuid::Uuid::now_v7().to_string())
                .push_bind(org_id)
                .push_bind(source_id)
                .push_bind(&r.key.device_id)
                .push_bind(&r.key.vulnerability_id)
                .push_bind(&r.state.ignore_id)
                .push_bind(r.alert_date)
                .push_bind(r.state.last_updated)
                .push_bind(r.state.last_found)
                .push_bind(&r.state.proof)
                .push_bind(r.key.port)
                .push_bind(&r.key.protocol)
                .push_bind(r.state.active_kernel)
                .push_bind(r.state.status_id)
                .push_bind(r.state.times_seen)
                .push_bind(now)
                .push_bind(now);
        });
        q.push(
            " ON DUPLICATE KEY UPDATE SourceID = VALUES(SourceID), IgnoreID = VALUES(IgnoreID), LastUpdated = VALUES(LastUpdated),
              LastFound = VALUES(LastFound), Proof = VALUES(Proof), ActiveKernel = VALUES(ActiveKernel),
              DetectionStatusId = VALUES(DetectionStatusId), TimesSeen = VALUES(TimesSeen), Updated = VALUES(Updated)",
        );
        q.build().execute(&mut **tx).await?;
    }
    Ok(())
}

/// Detections of one organization and scanner source (a progress estimate).
pub async fn count(pool: &MySqlPool, org_id: &str, source_id: &str) -> Result<i64, ModelError> {
    let (n,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM Detection WHERE OrganizationID = ? AND SourceID = ?")
            .bind(org_id)
            .bind(source_id)
            .fetch_one(pool)
            .await?;
    Ok(n)
}

/// Devices of the scanner source with a detection whose attached Ignore no
/// longer applies: the row is gone or inactive, or it is an exception past its
/// due date (a device exception without a due date never applied).
pub async fn devices_with_lapsed_ignore(
    pool: &MySqlPool,
    org_id: &str,
    source_id: &str,
) -> Result<Vec<String>, ModelError> {
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT DISTINCT d.DeviceID FROM Detection d LEFT JOIN `Ignore` i ON i.ID = d.IgnoreID
          WHERE d.OrganizationID = ? AND d.SourceID = ? AND d.IgnoreID IS NOT NULL
            AND (i.ID IS NULL OR i.Active = 0
                 OR (i.TypeId = 0 AND i.DueDate <= UTC_TIMESTAMP(3))
                 OR (i.TypeId = 0 AND i.DueDate IS NULL AND COALESCE(i.DeviceID, '') <> ''))",
    )
    .bind(org_id)
    .bind(source_id)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|(d,)| d).collect())
}

/// A stored detection as the Ignore re-evaluation sees it.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct AttachedIgnore {
    #[sqlx(rename = "ID")]
    pub id: String,
    #[sqlx(rename = "DeviceID")]
    pub device_id: String,
    /// The scanner's vulnerability ID (VulnerabilityInfo.SourceVulnId).
    #[sqlx(rename = "SourceVulnId")]
    pub source_vuln_id: String,
    #[sqlx(rename = "Port")]
    pub port: i32,
    #[sqlx(rename = "Protocol")]
    pub protocol: String,
    #[sqlx(rename = "IgnoreID")]
    pub ignore_id: Option<String>,
    #[sqlx(rename = "LastFound")]
    pub last_found: Option<DateTime<Utc>>,
}

/// Every detection of `device_ids` from one scanner source, with its Ignore.
pub async fn attached_ignores(
    tx: &mut Transaction<'_, MySql>,
    org_id: &str,
    source_id: &str,
    device_ids: &[String],
) -> Result<Vec<AttachedIgnore>, ModelError> {
    if device_ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut q = QueryBuilder::<MySql>::new(
        "SELECT d.ID, d.DeviceID, v.SourceVulnId, d.Port, d.Protocol, d.IgnoreID, d.LastFound
           FROM Detection d JOIN VulnerabilityInfo v ON v.ID = d.VulnerabilityID
          WHERE d.OrganizationID = ",
    );
    q.push_bind(org_id)
        .push(" AND d.SourceID = ")
        .push_bind(source_id)
        .push(" AND d.DeviceID IN (");
    let mut sep = q.separated(", ");
    for d in device_ids {
        sep.push_bind(d);
    }
    q.push(")");
    Ok(q.build_query_as().fetch_all(&mut **tx).await?)
}

/// Sets the Ignore of detections (`Updated` = now, so TicketingJob sees a
/// detection whose exception lapsed), one statement per distinct Ignore.
pub async fn set_ignore(
    tx: &mut Transaction<'_, MySql>,
    changes: &[(String, Option<String>)],
    now: DateTime<Utc>,
) -> Result<(), ModelError> {
    let mut by_ignore: HashMap<&Option<String>, Vec<&str>> = HashMap::new();
    for (id, ignore) in changes {
        by_ignore.entry(ignore).or_default().push(id);
    }
    for (ignore, ids) in by_ignore {
        for chunk in ids.chunks(ROWS_PER_STATEMENT) {
            let mut q = QueryBuilder::<MySql>::new("UPDATE Detection SET IgnoreID = ");
            q.push_bind(ignore)
                .push(", Updated = ")
                .push_bind(now)
                .push(" WHERE ID IN (");
            let mut sep = q.separated(", ");
            for id in chunk {
                sep.push_bind(*id);
            }
            q.push(")");
            q.build().execute(&mut **tx).await?;
        }
    }
    Ok(())
}

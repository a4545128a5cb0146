//! Ignores (`Ignore`): exceptions (TypeId 0), false positives (1) and
//! decommissioned assets (2) that AssetSyncJob attaches to detections so
//! TicketingJob leaves them alone.

use chrono::{DateTime, Utc};
use sqlx::{MySql, MySqlPool, Transaction};

use super::ModelError;

pub const EXCEPTION: i32 = 0;
pub const FALSE_POSITIVE: i32 = 1;
pub const DECOMMISSIONED: i32 = 2;

/// An active Ignore row.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Ignore {
    #[sqlx(rename = "ID")]
    pub id: String,
    #[sqlx(rename = "TypeId")]
    pub type_id: i32,
    #[sqlx(rename = "VulnerabilityId")]
    pub vulnerability_id: String,
    #[sqlx(rename = "DeviceID")]
    pub device_id: Option<String>,
    #[sqlx(rename = "OSRegex")]
    pub os_regex: Option<String>,
    #[sqlx(rename = "HostnameRegex")]
    pub hostname_regex: Option<String>,
    #[sqlx(rename = "DeviceIDRegex")]
    pub device_id_regex: Option<String>,
    #[sqlx(rename = "DueDate")]
    pub due_date: Option<DateTime<Utc>>,
    #[sqlx(rename = "Port")]
    pub port: Option<String>,
}

const COLUMNS: &str = "SELECT ID, TypeId, VulnerabilityId, DeviceID, OSRegex, HostnameRegex, DeviceIDRegex, DueDate, Port FROM `Ignore`";

/// Global exceptions of a scanner source: active, no device, at least one regex; in creation order.
pub async fn global_exceptions(
    pool: &MySqlPool,
    org_id: &str,
    source_id: &str,
) -> Result<Vec<Ignore>, ModelError> {
    Ok(sqlx::query_as(&format!(
        "{COLUMNS} WHERE OrganizationID = ? AND SourceID = ? AND Active = 1 AND COALESCE(DeviceID, '') = ''
           AND (COALESCE(OSRegex, '') <> '' OR COALESCE(HostnameRegex, '') <> '' OR COALESCE(DeviceIDRegex, '') <> '')
         ORDER BY DBCreatedDate, ID"
    ))
    .bind(org_id)
    .bind(source_id)
    .fetch_all(pool)
    .await?)
}

/// Active device-and-vulnerability ignores of an organization (any type, any source).
pub async fn device_ignores(pool: &MySqlPool, org_id: &str) -> Result<Vec<Ignore>, ModelError> {
    Ok(sqlx::query_as(&format!(
        "{COLUMNS} WHERE OrganizationID = ? AND Active = 1 AND COALESCE(DeviceID, '') <> '' AND VulnerabilityId <> ''"
    ))
    .bind(org_id)
    .fetch_all(pool)
    .await?)
}

/// Active decommission entries of a scanner source (DueDate = decommission date).
pub async fn decommissions(
    pool: &MySqlPool,
    org_id: &str,
    source_id: &str,
) -> Result<Vec<Ignore>, ModelError> {
    Ok(sqlx::query_as(&format!(
        "{COLUMNS} WHERE OrganizationID = ? AND SourceID = ? AND TypeId = ? AND Active = 1 AND COALESCE(DeviceID, '') <> ''"
    ))
    .bind(org_id)
    .bind(source_id)
    .bind(DECOMMISSIONED)
    .fetch_all(pool)
    .await?)
}

/// Deactivates a device's decommission entries (the device was seen again).
pub async fn reactivate_device(
    tx: &mut Transaction<'_, MySql>,
    org_id: &str,
    source_id: &str,
    asset_id: &str,
    by: &str,
) -> Result<(), ModelError> {
    sqlx::query(
        "UPDATE `Ignore` SET Active = 0, DBUpdatedDate = UTC_TIMESTAMP(3), UpdatedBy = ?
          WHERE OrganizationID = ? AND SourceID = ? AND DeviceID = ? AND TypeId = ? AND Active = 1",
    )
    .bind(by)
    .bind(org_id)
    .bind(source_id)
    .bind(asset_id)
    .bind(DECOMMISSIONED)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Marks a device decommissioned (TypeId 2, DueDate now, active): updates its
/// existing device-wide row of any type, or inserts one. Returns the row's ID.
pub async fn decommission_device(
    pool: &MySqlPool,
    org_id: &str,
    source_id: &str,
    asset_id: &str,
    by: &str,
) -> Result<String, ModelError> {
    let mut tx = pool.begin().await?;
    let existing: Option<(String,)> = sqlx::query_as(
        "SELECT ID FROM `Ignore` WHERE OrganizationID = ? AND DeviceID = ? AND VulnerabilityId = '' AND COALESCE(Port, '') = ''
          ORDER BY DBCreatedDate LIMIT 1 FOR UPDATE",
    )
    .bind(org_id)
    .bind(asset_id)
    .fetch_optional(&mut *tx)
    .await?;
    let id = match existing {
        Some((id,)) => {
            sqlx::query(
                "UPDATE `Ignore` SET TypeId = ?, DueDate = UTC_TIMESTAMP(3), Approval = '', Active = 1,
                        SourceID = ?, UpdatedBy = ?, DBUpdatedDate = UTC_TIMESTAMP(3) WHERE ID = ?",
            )
            .bind(DECOMMISSIONED)
            .bind(source_id)
            .bind(by)
            .bind(&id)
            .execute(&mut *tx)
            .await?;
            id
        }
        None => {
            let id = uuid::Uuid::now_v7().to_string();
            sqlx::query(
                "INSERT INTO `Ignore` (ID, SourceID, OrganizationID, TypeId, VulnerabilityId, DeviceID, DueDate, Approval, Active, CreatedBy, Port)
                 VALUES (?, ?, ?, ?, '', ?, UTC_TIMESTAMP(3), '', 1, ?, '')",
            )
            .bind(&id)
            .bind(source_id)
            .bind(org_id)
            .bind(DECOMMISSIONED)
            .bind(asset_id)
            .bind(by)
            .execute(&mut *tx)
            .await?;
            id
        }
    };
    sqlx::query("UPDATE Detection SET IgnoreID = ?, Updated = UTC_TIMESTAMP(3) WHERE OrganizationID = ? AND DeviceID = ?")
        .bind(&id)
        .bind(org_id)
        .bind(asset_id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(id)
}

/// Devices (asset IDs) whose device-specific Ignore rows, of any type and any
/// source, were created or changed at or after `since` (database clock).
pub async fn devices_changed_since(
    pool: &MySqlPool,
    org_id: &str,
    since: DateTime<Utc>,
) -> Result<Vec<String>, ModelError> {
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT DISTINCT DeviceID FROM `Ignore`
          WHERE OrganizationID = ? AND COALESCE(DeviceID, '') <> ''
            AND (DBCreatedDate >= ? OR DBUpdatedDate >= ?)",
    )
    .bind(org_id)
    .bind(since)
    .bind(since)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|(d,)| d).collect())
}

/// Whether a global exception of the scanner source (no device) was created
/// or changed at or after `since`.
pub async fn globals_changed_since(
    pool: &MySqlPool,
    org_id: &str,
    source_id: &str,
    since: DateTime<Utc>,
) -> Result<bool, ModelError> {
    let (n,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM `Ignore`
          WHERE OrganizationID = ? AND SourceID = ? AND COALESCE(DeviceID, '') = ''
            AND (DBCreatedDate >= ? OR DBUpdatedDate >= ?)",
    )
    .bind(org_id)
    .bind(source_id)
    .bind(since)
    .bind(since)
    .fetch_one(pool)
    .await?;
    Ok(n > 0)
}

//! Devices (`Device`) as the scanners report them, and the operating-system
//! classification (`OperatingSystemType`). A scanner asset is one row per
//! (organization, scanner Source.ID, AssetID) — `uk_device_asset`.

use chrono::{DateTime, Utc};
use sqlx::{MySql, MySqlPool, QueryBuilder, Transaction};

use super::ModelError;

/// The `OperatingSystemType` rules: the highest Priority whose Match occurs
/// in the OS (case-insensitive) wins; the empty Match is the fallback.
#[derive(Clone, Debug)]
pub struct OsTypes {
    rules: Vec<(i32, String, i32)>,
}

impl OsTypes {
    pub async fn load(pool: &MySqlPool) -> Result<OsTypes, ModelError> {
        let rows: Vec<(i32, String, i32)> =
            sqlx::query_as("SELECT Id, `Match`, Priority FROM OperatingSystemType ORDER BY Priority DESC, Id").fetch_all(pool).await?;
        Ok(OsTypes { rules: rows.into_iter().map(|(id, m, p)| (id, m.to_lowercase(), p)).collect() })
    }

    /// The type of `os` ("Unknown" when empty); `None` only if the table has no fallback.
    pub fn classify(&self, os: &str) -> Option<i32> {
        let os = if os.trim().is_empty() { "unknown".to_string() } else { os.to_lowercase() };
        self.rules.iter().find(|(_, m, _)| os.contains(m.as_str())).map(|(id, _, _)| *id)
    }
}

/// One device as a scanner reports it.
#[derive(Clone, Debug)]
pub struct DeviceRow {
    pub asset_id: String,
    pub ip: String,
    pub mac: String,
    pub hostname: String,
    pub instance_id: String,
    pub group_id: String,
    pub os: String,
    pub os_type_id: i32,
    pub tracking_method: Option<String>,
}

/// Inserts new devices and refreshes known ones. Empty scanner values (OS,
/// MAC, instance, tracking method) never erase what is stored; `Updated`
/// moves only when something changed.
pub async fn upsert(
    tx: &mut Transaction<'_, MySql>,
    org_id: &str,
    source_id: &str,
    rows: &[DeviceRow],
    now: DateTime<Utc>,
) -> Result<(), ModelError> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut q = QueryBuilder::<MySql>::new(
        "INSERT INTO Device (ID, SourceID, AssetID, Ip, MAC, HostName, InstanceId, GroupID, OrganizationID, OS, OSTypeId, TrackingMethod, IsVirtual, Created) ",
    );
    q.push_values(rows, |mut b, r| {
        b.push_bind(uuid::Uuid::new_v4().to_string())
            .push_bind(source_id)
            .push_bind(&r.asset_id)
            .push_bind(&r.ip)
            .push_bind(Some(&r.mac).filter(|m| !m.is_empty()))
            .push_bind(&r.hostname)
            .push_bind(&r.instance_id)
            .push_bind(&r.group_id)
            .push_bind(org_id)
            .push_bind(&r.os)
            .push_bind(r.os_type_id)
            .push_bind(&r.tracking_method)
            .push_bind(false)
            .push_bind(now);
    });
    // Assignments run left to right: `Updated` compares before the columns change.
    q.push(" ON DUPLICATE KEY UPDATE Updated = IF(Ip <=> VALUES(Ip) AND HostName <=> VALUES(HostName) AND GroupID <=> VALUES(GroupID)
                 AND (VALUES(OS) = '' OR OS <=> VALUES(OS)) AND (VALUES(OS) = '' OR OSTypeId <=> VALUES(OSTypeId))
                 AND (VALUES(MAC) IS NULL OR MAC <=> VALUES(MAC)) AND (VALUES(InstanceId) = '' OR InstanceId <=> VALUES(InstanceId))
                 AND (VALUES(TrackingMethod) IS NULL OR TrackingMethod <=> VALUES(TrackingMethod)), Updated, ");
    q.push_bind(now);
    q.push(
        "), Ip = VALUES(Ip), HostName = VALUES(HostName), GroupID = VALUES(GroupID),
           OSTypeId = IF(VALUES(OS) = '', OSTypeId, VALUES(OSTypeId)), OS = IF(VALUES(OS) = '', OS, VALUES(OS)),
           MAC = COALESCE(VALUES(MAC), MAC), InstanceId = IF(VALUES(InstanceId) = '', InstanceId, VALUES(InstanceId)),
           TrackingMethod = COALESCE(VALUES(TrackingMethod), TrackingMethod)",
    );
    q.build().execute(&mut **tx).await?;
    Ok(())
}

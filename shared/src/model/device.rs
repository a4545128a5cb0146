//! Devices (`Device`) as the scanners report them, and the operating-system
//! classification (`OperatingSystemType`). A scanner asset is one row per
//! (organization, scanner Source.ID, AssetID) — `uk_device_asset`.

use chrono::{DateTime, Utc};
use sqlx::{MySql, MySqlPool, QueryBuilder, Transaction};

use super::ModelError;

/// The `OperatingSystemType` rules: the highest Priority whose Match occurs
/// in the OS (case-insensitive) wins; the empty Match is the fallback.
#[derive(Clone, Debug, Default)]
pub struct OsTypes {
    rules: Vec<(i32, String, i32)>,
}

impl OsTypes {
    pub async fn load(pool: &MySqlPool) -> Result<OsTypes, ModelError> {
        let rows: Vec<(i32, String, i32)> = sqlx::query_as(
            "SELECT Id, `Match`, Priority FROM OperatingSystemType ORDER BY Priority DESC, Id",
        )
        .fetch_all(pool)
        .await?;
        Ok(OsTypes {
            rules: rows
                .into_iter()
                .map(|(id, m, p)| (id, m.to_lowercase(), p))
                .collect(),
        })
    }

    /// The type of `os` ("Unknown" when empty); `None` only if the table has no fallback.
    pub fn classify(&self, os: &str) -> Option<i32> {
        let os = if os.trim().is_empty() {
            "unknown".to_string()
        } else {
            os.to_lowercase()
        };
        self.rules
            .iter()
            .find(|(_, m, _)| os.contains(m.as_str()))
            .map(|(id, _, _)| *id)
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
        // Time-ordered IDs append to the clustered index instead of scattering
        // writes over it (a million-row first sync stays sequential).
        b.push_bind(uuid::Uuid::now_v7().to_string())
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

type StoredDevice = (
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    i32,
    Option<String>,
    String,
    Option<String>,
);

/// The stored devices among `asset_ids` of one scanner source, as [`DeviceRow`]s.
pub async fn existing(
    tx: &mut Transaction<'_, MySql>,
    org_id: &str,
    source_id: &str,
    asset_ids: &[&str],
) -> Result<std::collections::HashMap<String, DeviceRow>, ModelError> {
    let mut out = std::collections::HashMap::new();
    if asset_ids.is_empty() {
        return Ok(out);
    }
    let mut q = QueryBuilder::<MySql>::new(
        "SELECT AssetID, Ip, HostName, GroupID, OS, OSTypeId, MAC, InstanceId, TrackingMethod FROM Device WHERE OrganizationID = ",
    );
    q.push_bind(org_id)
        .push(" AND SourceID = ")
        .push_bind(source_id)
        .push(" AND AssetID IN (");
    let mut sep = q.separated(", ");
    for a in asset_ids {
        sep.push_bind(*a);
    }
    q.push(")");
    let rows: Vec<StoredDevice> = q.build_query_as().fetch_all(&mut **tx).await?;
    for (asset_id, ip, hostname, group_id, os, os_type_id, mac, instance_id, tracking_method) in
        rows
    {
        out.insert(
            asset_id.clone(),
            DeviceRow {
                asset_id,
                ip,
                mac: mac.unwrap_or_default(),
                hostname,
                instance_id,
                group_id: group_id.unwrap_or_default(),
                os: os.unwrap_or_default(),
                os_type_id,
                tracking_method,
            },
        );
    }
    Ok(out)
}

impl DeviceRow {
    /// Whether writing `self` over `stored` would change nothing (empty
    /// scanner values never overwrite, as in [`upsert`]).
    pub fn unchanged_from(&self, stored: &DeviceRow) -> bool {
        self.ip == stored.ip
            && self.hostname == stored.hostname
            && self.group_id == stored.group_id
            && (self.os.is_empty()
                || (self.os == stored.os && self.os_type_id == stored.os_type_id))
            && (self.mac.is_empty() || self.mac == stored.mac)
            && (self.instance_id.is_empty() || self.instance_id == stored.instance_id)
            && (self.tracking_method.is_none() || self.tracking_method == stored.tracking_method)
    }
}

/// Asset IDs of the scanner source's devices in `groups` (Device.GroupID).
pub async fn asset_ids_in_groups(
    pool: &MySqlPool,
    org_id: &str,
    source_id: &str,
    groups: &[String],
) -> Result<Vec<String>, ModelError> {
    if groups.is_empty() {
        return Ok(Vec::new());
    }
    let mut q = QueryBuilder::<MySql>::new("SELECT AssetID FROM Device WHERE OrganizationID = ");
    q.push_bind(org_id)
        .push(" AND SourceID = ")
        .push_bind(source_id)
        .push(" AND GroupID IN (");
    let mut sep = q.separated(", ");
    for g in groups {
        sep.push_bind(g);
    }
    q.push(")");
    let rows: Vec<(String,)> = q.build_query_as().fetch_all(pool).await?;
    Ok(rows.into_iter().map(|(a,)| a).collect())
}

/// Whether the organization has a device no scanner has claimed yet (no
/// AssetID): one a cloud inventory created, that a scanner host may adopt.
pub async fn has_cloud_first(pool: &MySqlPool, org_id: &str) -> Result<bool, ModelError> {
    let (n,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM Device WHERE OrganizationID = ? AND (AssetID IS NULL OR AssetID = '')",
    )
    .bind(org_id)
    .fetch_one(pool)
    .await?;
    Ok(n > 0)
}

/// A scanner host not yet known by its asset ID, as cloud-first matching sees it.
#[derive(Clone, Debug)]
pub struct NewHost<'a> {
    pub asset_id: &'a str,
    pub instance_id: &'a str,
    pub ip: &'a str,
}

/// Cloud-first matching (spec §5.3 step 3): a host the scanner reports for the
/// first time takes over the device a cloud inventory created for it (no
/// AssetID yet) — by instance ID, else by IP within the group's cloud source —
/// instead of getting a second row. The adopted row gets the scanner's asset ID
/// and Source.ID; [`upsert`] then refreshes its other columns. Each device is
/// adopted once. Returns the adopted asset IDs.
pub async fn adopt_cloud_first(
    tx: &mut Transaction<'_, MySql>,
    org_id: &str,
    source_id: &str,
    cloud_source_id: Option<&str>,
    hosts: &[NewHost<'_>],
    now: DateTime<Utc>,
) -> Result<Vec<String>, ModelError> {
    let instances: Vec<&str> = hosts
        .iter()
        .map(|h| h.instance_id)
        .filter(|i| !i.is_empty())
        .collect();
    let ips: Vec<&str> = hosts
        .iter()
        .map(|h| h.ip)
        .filter(|i| !i.is_empty())
        .collect();
    if instances.is_empty() && (cloud_source_id.is_none() || ips.is_empty()) {
        return Ok(Vec::new());
    }
    let mut q = QueryBuilder::<MySql>::new(
        "SELECT ID, InstanceId, Ip, CloudSourceID FROM Device WHERE OrganizationID = ",
    );
    q.push_bind(org_id)
        .push(" AND (AssetID IS NULL OR AssetID = '') AND (");
    let by_ip = cloud_source_id.filter(|_| !ips.is_empty());
    if !instances.is_empty() {
        q.push("InstanceId IN (");
        let mut sep = q.separated(", ");
        for i in &instances {
            sep.push_bind(*i);
        }
        q.push(")");
        if by_ip.is_some() {
            q.push(" OR ");
        }
    }
    if let Some(cloud) = by_ip {
        q.push("(CloudSourceID = ")
            .push_bind(cloud)
            .push(" AND Ip IN (");
        let mut sep = q.separated(", ");
        for ip in &ips {
            sep.push_bind(*ip);
        }
        q.push("))");
    }
    q.push(") ORDER BY Created, ID FOR UPDATE");
    let candidates: Vec<(String, String, String, Option<String>)> =
        q.build_query_as().fetch_all(&mut **tx).await?;
    let mut taken = std::collections::HashSet::new();
    let mut adopted = Vec::new();
    for h in hosts {
        let by_instance = candidates
            .iter()
            .find(|c| !h.instance_id.is_empty() && c.1 == h.instance_id && !taken.contains(&c.0));
        let by_ip = || {
            candidates.iter().find(|c| {
                !h.ip.is_empty()
                    && c.2 == h.ip
                    && c.3.as_deref().is_some_and(|s| Some(s) == cloud_source_id)
                    && !taken.contains(&c.0)
            })
        };
        let Some(device) = by_instance.or_else(by_ip) else {
            continue;
        };
        taken.insert(device.0.clone());
        sqlx::query("UPDATE Device SET AssetID = ?, SourceID = ?, Updated = ? WHERE ID = ?")
            .bind(h.asset_id)
            .bind(source_id)
            .bind(now)
            .bind(&device.0)
            .execute(&mut **tx)
            .await?;
        adopted.push(h.asset_id.to_string());
    }
    Ok(adopted)
}

/// The EC2 identity of an EC2-tracked device: (InstanceId, Region), by asset ID.
/// AssetSyncJob does not fill `Device.Region` yet, so the region is empty
/// unless an operator or a cloud sync wrote it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ec2Identity {
    pub instance_id: String,
    pub region: String,
}

/// The [`Ec2Identity`] of each of `asset_ids` that is tracked by `EC2` and has
/// an InstanceId (asset ID → identity); other devices are left out.
pub async fn ec2_identities(
    pool: &MySqlPool,
    org_id: &str,
    source_id: &str,
    asset_ids: &[String],
) -> Result<std::collections::HashMap<String, Ec2Identity>, ModelError> {
    let mut out = std::collections::HashMap::new();
    for chunk in asset_ids.chunks(500) {
        let mut q = QueryBuilder::<MySql>::new(
            "SELECT AssetID, InstanceId, COALESCE(Region, '') FROM Device WHERE OrganizationID = ",
        );
        q.push_bind(org_id)
            .push(" AND SourceID = ")
            .push_bind(source_id)
            .push(" AND UPPER(TrackingMethod) = 'EC2' AND InstanceId <> '' AND AssetID IN (");
        let mut sep = q.separated(", ");
        for a in chunk {
            sep.push_bind(a);
        }
        q.push(")");
        let rows: Vec<(String, String, String)> = q.build_query_as().fetch_all(pool).await?;
        for (asset, instance_id, region) in rows {
            out.insert(
                asset,
                Ec2Identity {
                    instance_id: instance_id.trim().to_string(),
                    region: region.trim().to_string(),
                },
            );
        }
    }
    Ok(out)
}

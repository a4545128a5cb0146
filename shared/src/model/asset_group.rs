//! Asset groups (`AssetGroup`): a scanner group (Qualys asset group or tag
//! set, Nexpose site) of an organization, per scanner source config.

use sqlx::MySqlPool;

use super::ModelError;

/// Creates the group's row unless it exists (keyed on group, organization and
/// scanner SourceConfig).
pub async fn ensure(
    pool: &MySqlPool,
    org_id: &str,
    group_id: &str,
    source_config_id: &str,
    scanner_source_id: &str,
) -> Result<(), ModelError> {
    sqlx::query(
        "INSERT INTO AssetGroup (GroupID, OrganizationID, ScannerSourceConfigID, ScannerSourceID) VALUES (?, ?, ?, ?)
         ON DUPLICATE KEY UPDATE GroupID = GroupID",
    )
    .bind(group_id)
    .bind(org_id)
    .bind(source_config_id)
    .bind(scanner_source_id)
    .execute(pool)
    .await?;
    Ok(())
}

type Stamp = chrono::DateTime<chrono::Utc>;

/// When a group's last successful sync, and its last full sync, started
/// (`AssetGroup.LastSyncStart`, `LastFullSyncStart`; database clock, UTC).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncStamps {
    pub last: Option<chrono::DateTime<chrono::Utc>>,
    pub last_full: Option<chrono::DateTime<chrono::Utc>>,
    /// Whether the last sync ran with the group exempt from global exceptions.
    pub exempt_from_globals: Option<bool>,
}

/// The group's sync stamps (both empty for a group never synced).
pub async fn sync_stamps(
    pool: &MySqlPool,
    org_id: &str,
    group_id: &str,
    source_config_id: &str,
) -> Result<SyncStamps, ModelError> {
    let row: Option<(Option<Stamp>, Option<Stamp>, Option<bool>)> = sqlx::query_as(
        "SELECT LastSyncStart, LastFullSyncStart, LastSyncExemptFromGlobals FROM AssetGroup
              WHERE GroupID = ? AND OrganizationID = ? AND ScannerSourceConfigID = ?",
    )
    .bind(group_id)
    .bind(org_id)
    .bind(source_config_id)
    .fetch_optional(pool)
    .await?;
    Ok(row
        .map(|(last, last_full, exempt_from_globals)| SyncStamps {
            last,
            last_full,
            exempt_from_globals,
        })
        .unwrap_or_default())
}

/// Records a successful sync of the group that started at `started` (a full
/// one moves `LastFullSyncStart` too). Called only once the group's every
/// batch is written, so a failed sync is retried from the same window.
pub async fn record_sync(
    pool: &MySqlPool,
    org_id: &str,
    group_id: &str,
    source_config_id: &str,
    started: chrono::DateTime<chrono::Utc>,
    full: bool,
    exempt_from_globals: bool,
) -> Result<(), ModelError> {
    sqlx::query(
        "UPDATE AssetGroup SET LastSyncStart = ?, LastFullSyncStart = IF(?, ?, LastFullSyncStart),
                LastSyncExemptFromGlobals = ?
          WHERE GroupID = ? AND OrganizationID = ? AND ScannerSourceConfigID = ?",
    )
    .bind(started)
    .bind(full)
    .bind(started)
    .bind(exempt_from_globals)
    .bind(group_id)
    .bind(org_id)
    .bind(source_config_id)
    .execute(pool)
    .await?;
    Ok(())
}

/// The cloud Source (`AssetGroup.CloudSourceID`) whose inventory backs the
/// group, if any.
pub async fn cloud_source(
    pool: &MySqlPool,
    org_id: &str,
    group_id: &str,
    source_config_id: &str,
) -> Result<Option<String>, ModelError> {
    let row: Option<(Option<String>,)> = sqlx::query_as(
        "SELECT CloudSourceID FROM AssetGroup WHERE GroupID = ? AND OrganizationID = ? AND ScannerSourceConfigID = ?",
    )
    .bind(group_id)
    .bind(org_id)
    .bind(source_config_id)
    .fetch_optional(pool)
    .await?;
    Ok(row.and_then(|(c,)| c).filter(|c| !c.trim().is_empty()))
}

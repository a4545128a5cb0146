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

//! `aegis jobconfig …`: create the installer's default job configs, list them.

use aegis_shared::model::job_config::{self, DefaultsOptions};
use aegis_shared::model::{organization, source_config, ModelError};
use clap::{Args, Subcommand};
use sqlx::MySqlPool;

use crate::output;

#[derive(Subcommand)]
pub enum JobConfigCommand {
    /// Create the original installer's job configs (RescanQueueJob ×4, RescanJob,
    /// TicketingJob, ScanSyncJob, ScanCloseJob, BulkUpdateJob, VulnSyncJob,
    /// AssetSyncJob, TicketSyncJob, ExceptionJob) for an organization.
    CreateDefaults(DefaultsArgs),
    /// List job configs.
    List {
        #[arg(long)]
        org: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
pub struct DefaultsArgs {
    /// Organization code.
    #[arg(long)]
    org: String,
    /// SourceConfig ID of the scanner (Qualys or Nexpose).
    #[arg(long)]
    scanner: String,
    /// SourceConfig ID of the ticket engine (JIRA).
    #[arg(long)]
    ticketing: String,
    /// Asset group IDs AssetSyncJob syncs (comma-separated).
    #[arg(long, value_delimiter = ',')]
    groups: Vec<String>,
    /// TicketingJob's mindate (RFC 3339): older detections are not ticketed. Default: now.
    #[arg(long)]
    mindate: Option<String>,
    /// Seconds between RescanQueueJob runs (NORMAL and DECOMMISSIONED, continuous).
    #[arg(long, default_value_t = 60)]
    rescan_queue_wait: i32,
    /// Seconds between ScanSyncJob runs (continuous).
    #[arg(long, default_value_t = 120)]
    scan_sync_wait: i32,
    /// Seconds between ExceptionJob runs (continuous).
    #[arg(long, default_value_t = 60)]
    exception_wait: i32,
    /// Do not mark the continuous jobs AutoStart.
    #[arg(long)]
    no_auto_start: bool,
}

pub async fn run(cmd: JobConfigCommand, pool: &MySqlPool) -> anyhow::Result<()> {
    match cmd {
        JobConfigCommand::CreateDefaults(a) => {
            let org = organization::by_code(pool, &a.org).await?;
            let scanner = source_config::by_id(pool, &a.scanner).await?;
            if !scanner.vendor()?.is_scanner() {
                return Err(ModelError::invalid(
                    "--scanner",
                    format!(
                        "{} is a {} source config, not a scanner",
                        scanner.id,
                        scanner.source.unwrap_or_default()
                    ),
                )
                .into());
            }
            let ticketing = source_config::by_id(pool, &a.ticketing).await?;
            if ticketing.vendor()?.is_scanner() {
                return Err(ModelError::invalid(
                    "--ticketing",
                    format!("{} is a scanner source config, not JIRA", ticketing.id),
                )
                .into());
            }
            let mindate = match a.mindate {
                Some(m) => chrono::DateTime::parse_from_rfc3339(&m)
                    .map_err(|e| {
                        ModelError::invalid(
                            "--mindate",
                            format!("{m:?} is not RFC 3339 such as 2026-01-31T00:00:00Z ({e})"),
                        )
                    })?
                    .with_timezone(&chrono::Utc)
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                None => chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            };
            let defaults = job_config::installer_defaults(&DefaultsOptions {
                scanner: scanner.id,
                ticketing: ticketing.id,
                groups: a.groups,
                mindate,
                rescan_queue_wait: a.rescan_queue_wait,
                scan_sync_wait: a.scan_sync_wait,
                exception_wait: a.exception_wait,
                auto_start: !a.no_auto_start,
            });
            let mut tx = pool.begin().await?;
            let mut created = Vec::new();
            for d in &defaults {
                let id = job_config::create(&mut tx, &org.id, d, &crate::operator()).await?;
                created.push(vec![id, d.job_name.clone(), d.payload.to_string()]);
            }
            tx.commit().await?;
            output::table(&["ID", "JOB", "PAYLOAD"], &created);
            Ok(())
        }
        JobConfigCommand::List { org, json } => {
            let org_id = match &org {
                Some(code) => Some(organization::by_code(pool, code).await?.id),
                None => None,
            };
            let list = job_config::list(pool, org_id.as_deref()).await?;
            if json {
                return output::json(&list);
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|c| {
                    vec![
                        c.id.clone(),
                        c.job_name.clone(),
                        format!(
                            "{}{}{}",
                            if c.auto_start { "auto " } else { "" },
                            if c.continuous {
                                format!("every {}s ", c.wait_in_seconds)
                            } else {
                                String::new()
                            },
                            if c.active { "" } else { "inactive" }
                        )
                        .trim()
                        .to_string(),
                        if c.max_instances == 0 {
                            "unlimited".into()
                        } else {
                            c.max_instances.to_string()
                        },
                        c.payload.clone().unwrap_or_default(),
                    ]
                })
                .collect();
            output::table(&["ID", "JOB", "SCHEDULE", "MAX", "PAYLOAD"], &rows);
            Ok(())
        }
    }
}

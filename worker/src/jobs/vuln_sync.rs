//! VulnSyncJob: creates or refreshes `VulnerabilityInfo` rows and their
//! `Vulnerability_Reference` rows (CVE, MS, vendor) from the in-source
//! scanner's knowledge base. AssetSyncJob needs these rows before it can
//! store detections.
//!
//! * Qualys is asked only for entries modified since the JobConfig's
//!   LastJobStart (the start of the last successful run; the runner advances
//!   it only on success); Nexpose always sends its whole knowledge base.
//! * A known entry is rewritten only when the scanner's modification time is
//!   later than the row's (Updated, else Created); its references are
//!   replaced with the scanner's at the same time.
//! * Entries are written in batches, each in one transaction.

use std::time::Instant;

use chrono::{DateTime, SubsecRound, Utc};
use futures::future::BoxFuture;
use futures::StreamExt;

use aegis_shared::model::vulnerability::{self, VulnRow};

use super::{Job, JobContext, JobError};
use crate::vendors::scanner::{RefType, ScannedVulnerability};

pub struct VulnSyncJob;

impl Job for VulnSyncJob {
    fn name(&self) -> &'static str {
        "VulnSyncJob"
    }

    fn run(&self, ctx: JobContext) -> BoxFuture<'static, Result<(), JobError>> {
        Box::pin(async move { run(ctx).await })
    }
}

/// Whether the scanner's entry is newer than the stored row.
fn needs_write(
    stored: Option<&Option<DateTime<Utc>>>,
    scanner_updated: Option<DateTime<Utc>>,
) -> bool {
    match stored {
        None => true,
        Some(None) => true,
        Some(Some(db)) => scanner_updated.is_some_and(|s| s > *db),
    }
}

fn row(v: ScannedVulnerability) -> VulnRow {
    VulnRow {
        references: v
            .references
            .iter()
            .map(|r| (r.clone(), RefType::classify(r) as i32))
            .collect(),
        source_vuln_id: v.vuln_id,
        title: v.title,
        cvss: v.cvss2,
        cvss3: v.cvss3,
        description: v.description,
        threat: v.threat,
        solution: v.solution,
        patchable: v.patchable,
        category: v.category,
        software: v.software,
        detection_information: v.detection_information,
    }
}

async fn run(ctx: JobContext) -> Result<(), JobError> {
    let (_, source_id, scanner) = ctx.scanner_in("VulnSyncJob")?;
    let since = ctx.config.as_ref().and_then(|c| c.last_job_start);
    let mut stored = vulnerability::changed_at(&ctx.pool, &source_id).await?;
    tracing::info!(
        "loading the knowledge base{} ({} vulnerabilities known)",
        since.map_or(String::new(), |s| format!(
            " modified since {}",
            s.format("%Y-%m-%d")
        )),
        stored.len()
    );

    let started = Instant::now();
    let (mut seen, mut written) = (0usize, 0usize);
    let mut stream = scanner.vulnerabilities(since);
    loop {
        let next = tokio::select! {
            n = stream.next() => n,
            _ = ctx.cancel.cancelled() => return Err(JobError::Cancelled),
        };
        let Some(batch) = next else { break };
        let batch = batch.map_err(|e| {
            JobError::Failed(anyhow::Error::new(e).context("loading the knowledge base"))
        })?;
        seen += batch.len();
        let mut rows = Vec::new();
        for v in batch {
            if v.vuln_id.is_empty() {
                tracing::error!("the scanner sent a vulnerability without an id; skipped");
                continue;
            }
            if needs_write(stored.get(&v.vuln_id), v.updated) {
                rows.push(row(v));
            } else {
                tracing::debug!(
                    "Did not need to update {} as it has not been modified recently",
                    v.vuln_id
                );
            }
        }
        // A knowledge base may repeat an entry; keep the last.
        let mut index = std::collections::HashMap::new();
        for (i, r) in rows.iter().enumerate() {
            index.insert(r.source_vuln_id.clone(), i);
        }
        let rows: Vec<VulnRow> = rows
            .into_iter()
            .enumerate()
            .filter(|(i, r)| index.get(&r.source_vuln_id) == Some(i))
            .map(|(_, r)| r)
            .collect();
        if rows.is_empty() {
            continue;
        }
        let now = Utc::now().trunc_subsecs(3);
        let mut tx = ctx.pool.begin().await?;
        vulnerability::upsert(&mut tx, &source_id, &rows, now).await?;
        tx.commit().await?;
        for r in &rows {
            stored.insert(r.source_vuln_id.clone(), Some(now));
        }
        written += rows.len();
    }
    tracing::info!(
        "knowledge base synced: {seen} vulnerabilities read, {written} created or updated in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

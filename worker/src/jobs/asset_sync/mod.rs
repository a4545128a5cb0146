//! AssetSyncJob: pulls hosts and detections of the payload's groups from the
//! in-source scanner into `Device` and `Detection`, keeps `AssetGroup` rows,
//! and attaches `Ignore` ids (decommission, device exception / false
//! positive, global exception) so TicketingJob skips what is ignored.
//!
//! Payload: `{"groups": ["1", "tag-web,tag-db"], "groups_exempt_from_global_exceptions": ["1"],
//! "full_sync": false, "full_sync_interval_hours": 168}` (the last two optional).
//!
//! A Qualys group synced before asks only for the detections updated since its
//! last sync started, then re-evaluates the Ignore of the stored detections
//! whose Ignore may have changed ([`Sync::reconcile`]); see
//! `docs/scanner-sync.md`, "Incremental re-syncs".
//!
//! What must stay true:
//! * rows are keyed on their natural identity (device: organization, scanner
//!   Source.ID, asset ID; detection: organization, asset ID, vulnerability,
//!   port, protocol), so a re-run or a retried job never duplicates a row;
//! * hosts are written in batches (about [`DETECTIONS_PER_BATCH`] detections),
//!   each in one transaction: a failure leaves every batch fully written or
//!   not at all, and a re-run completes the rest; memory is bounded by a few
//!   batches whatever the estate's size;
//! * a detection whose stored state equals what the scanner says is not
//!   written (a re-sync with nothing changed only reads);
//! * cancellation is honoured between batches;
//! * a group's sync stamps move only once all its batches are written, so a
//!   failed or cancelled sync is retried from the same window;
//! * `Source.ID` of the scanner is used everywhere the original sometimes
//!   passed the SourceConfig ID (spec §15.1).

use std::sync::LazyLock;
use std::time::{Duration, Instant};

use chrono::{DateTime, SubsecRound, Utc};
use futures::future::BoxFuture;
use futures::StreamExt;
use prometheus::IntCounterVec;
use serde::Deserialize;

use aegis_shared::model::asset_group;
use aegis_shared::model::detection::{self, DetectionRow, FindingKey, SyncedState};
use aegis_shared::model::device::{self, DeviceRow};
use aegis_shared::model::ignore;

use super::{Job, JobContext, JobError};
use ignores::{Decommission, HostFacts, Lookups};

mod ignores;
use crate::vendors::scanner::{ScannedHost, Scanner};

/// Detections per database batch (one transaction).
pub const DETECTIONS_PER_BATCH: usize = 2000;
/// How often progress is logged.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

static DETECTIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    aegis_shared::metrics::counter_vec(
        "aegis_asset_sync_detections_total",
        "Detections AssetSyncJob has processed (written or found unchanged), by organization",
        &["org"],
    )
});

#[derive(Debug, Deserialize)]
struct Payload {
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    groups_exempt_from_global_exceptions: Option<Vec<String>>,
    /// Pull every detection of every group this run, whatever the last sync.
    #[serde(default)]
    full_sync: bool,
    /// A group synced incrementally is synced in full again once its last
    /// full sync is this old (0: every run is full).
    #[serde(default)]
    full_sync_interval_hours: Option<u32>,
}

/// Default of `full_sync_interval_hours`: a week.
pub const DEFAULT_FULL_SYNC_INTERVAL_HOURS: u32 = 168;

/// How far before the group's last sync start the scanner is asked for
/// changes: covers the scanner's clock against the database's, and results
/// the scanner processed late.
pub const SCANNER_WINDOW_OVERLAP: chrono::TimeDelta = chrono::TimeDelta::minutes(15);

/// The start of the group's last sync when this run may fetch only the
/// detections changed since; `None` when it must pull them all: the payload
/// asks for it, the scanner has no such filter (Nexpose), the group was never
/// synced, or its last full sync is `full_sync_interval_hours` old.
fn incremental_since(
    p: &Payload,
    scanner_has_window: bool,
    stamps: asset_group::SyncStamps,
    started: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    if p.full_sync || !scanner_has_window {
        return None;
    }
    let (Some(last), Some(last_full)) = (stamps.last, stamps.last_full) else {
        return None;
    };
    let interval = p
        .full_sync_interval_hours
        .unwrap_or(DEFAULT_FULL_SYNC_INTERVAL_HOURS);
    if interval == 0 || started - last_full >= chrono::TimeDelta::hours(i64::from(interval)) {
        return None;
    }
    Some(last)
}

pub struct AssetSyncJob;

impl Job for AssetSyncJob {
    fn name(&self) -> &'static str {
        "AssetSyncJob"
    }

    fn run(&self, ctx: JobContext) -> BoxFuture<'static, Result<(), JobError>> {
        Box::pin(async move { run(ctx).await })
    }
}

/// Counts and logs progress.
struct Progress {
    org: String,
    started: Instant,
    last_log: Instant,
    expected: u64,
    done: u64,
    written: u64,
    hosts: u64,
    skipped: u64,
}

impl Progress {
    fn add(&mut self, hosts: usize, done: usize, written: usize, skipped: usize) {
        self.hosts += hosts as u64;
        self.done += done as u64;
        self.written += written as u64;
        self.skipped += skipped as u64;
        DETECTIONS
            .with_label_values(&[&self.org])
            .inc_by(done as u64);
        if self.last_log.elapsed() >= PROGRESS_EVERY {
            self.log();
            self.last_log = Instant::now();
        }
    }

    fn log(&self) {
        let rate = self.done as f64 / self.started.elapsed().as_secs_f64().max(0.001);
        let expected = if self.expected >= self.done {
            self.expected.to_string()
        } else {
            format!("~{}", self.done)
        };
        tracing::info!(
            "Synced {} of {} detections ({:.0}/s; {} hosts, {} rows written, {} skipped)",
            self.done,
            expected,
            rate,
            self.hosts,
            self.written,
            self.skipped
        );
    }
}

/// What one run writes with.
struct Sync<'a> {
    ctx: &'a JobContext,
    org_id: String,
    source_id: String,
    lookups: Lookups,
    progress: Progress,
    /// The organization has devices a cloud inventory created that no scanner
    /// has claimed: new hosts are matched against them (spec §5.3 step 3).
    cloud_first: bool,
    /// The cloud Source backing the group being synced (AssetGroup.CloudSourceID).
    cloud_source: Option<String>,
}

async fn run(ctx: JobContext) -> Result<(), JobError> {
    let p: Payload = ctx.payload()?;
    let bad = |reason: &str| JobError::BadPayload {
        job: "AssetSyncJob".into(),
        reason: reason.into(),
    };
    let groups: Vec<String> = p
        .groups
        .iter()
        .map(|g| g.trim().to_string())
        .filter(|g| !g.is_empty())
        .collect();
    if groups.is_empty() {
        return Err(bad(
            "did not provide group in Payload (\"groups\": [\"<asset group or site id>\", ...])",
        ));
    }
    let org = ctx.org.clone().ok_or_else(|| {
        JobError::Config("AssetSyncJob needs a JobConfig with an organization".into())
    })?;
    let (sc, source_id, scanner) = ctx.scanner_in("AssetSyncJob")?;

    // The run's start on the database clock: the Ignore rows' dates and the
    // groups' sync stamps are all on it.
    let (started,): (DateTime<Utc>,) = sqlx::query_as("SELECT UTC_TIMESTAMP(3)")
        .fetch_one(&ctx.pool)
        .await?;
    // Plain groups one at a time; a tag item ("tag-1,tag-2") is one selection.
    let mut plan = Vec::with_capacity(groups.len());
    for item in &groups {
        let selection: Vec<String> = if item.contains("tag-") {
            item.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        } else {
            vec![item.clone()]
        };
        asset_group::ensure(&ctx.pool, &org.id, item, &sc.id, &source_id).await?;
        let stamps = asset_group::sync_stamps(&ctx.pool, &org.id, item, &sc.id).await?;
        let since = incremental_since(&p, scanner.detection_window(), stamps, started);
        let exempt = p
            .groups_exempt_from_global_exceptions
            .as_ref()
            .is_some_and(|g| g.contains(item));
        let exemption_changed = stamps.exempt_from_globals != Some(exempt);
        plan.push((item.clone(), selection, since, exempt, exemption_changed));
    }

    let exempt = p
        .groups_exempt_from_global_exceptions
        .clone()
        .unwrap_or_default();
    let lookups = Lookups::load(&ctx, &org.id, &source_id, exempt).await?;
    // Progress counts against every stored detection when a group is pulled in full.
    let expected = if plan.iter().any(|(_, _, since, _, _)| since.is_none()) {
        detection::count(&ctx.pool, &org.id, &source_id)
            .await?
            .max(0) as u64
    } else {
        0
    };
    let now = Instant::now();
    let mut sync = Sync {
        ctx: &ctx,
        org_id: org.id.clone(),
        source_id: source_id.clone(),
        lookups,
        cloud_first: device::has_cloud_first(&ctx.pool, &org.id).await?,
        cloud_source: None,
        progress: Progress {
            org: org.code.clone(),
            started: now,
            last_log: now,
            expected,
            done: 0,
            written: 0,
            hosts: 0,
            skipped: 0,
        },
    };

    // Devices with a detection whose Ignore lapsed: one look per run, for every
    // incremental group (a full group re-evaluates all its detections anyway).
    let lapsed = if plan.iter().any(|(_, _, since, _, _)| since.is_some()) {
        detection::devices_with_lapsed_ignore(&ctx.pool, &org.id, &source_id).await?
    } else {
        Vec::new()
    };
    for (item, selection, since, exempt, exemption_changed) in plan {
        if ctx.cancel.is_cancelled() {
            return Err(JobError::Cancelled);
        }
        let window = since.map(|t| t - SCANNER_WINDOW_OVERLAP);
        match window {
            Some(w) => tracing::info!(
                "started processing {item} (detections updated since {})",
                w.format("%Y-%m-%d %H:%M:%S")
            ),
            None => tracing::info!("started processing {item}"),
        }
        sync.cloud_source = match sync.cloud_first {
            true => asset_group::cloud_source(&ctx.pool, &org.id, &item, &sc.id).await?,
            false => None,
        };
        sync.group(scanner.as_ref(), &item, &selection, window)
            .await?;
        if let Some(since) = since {
            // What the scanner did not send may still have an Ignore to change.
            let tick = Utc::now().trunc_subsecs(3);
            sync.reconcile(&item, since, exemption_changed, &lapsed, tick)
                .await?;
        }
        asset_group::record_sync(
            &ctx.pool,
            &org.id,
            &item,
            &sc.id,
            started,
            since.is_none(),
            exempt,
        )
        .await?;
        tracing::info!("finished processing {item}");
    }
    sync.progress.log();
    Ok(())
}

impl Sync<'_> {
    async fn group(
        &mut self,
        scanner: &dyn Scanner,
        group: &str,
        selection: &[String],
        since: Option<DateTime<Utc>>,
    ) -> Result<(), JobError> {
        let mut stream = scanner.host_detections(selection, since);
        let mut pending: Vec<ScannedHost> = Vec::new();
        let mut pending_detections = 0;
        loop {
            let next = tokio::select! {
                n = stream.next() => n,
                _ = self.ctx.cancel.cancelled() => return Err(JobError::Cancelled),
            };
            let Some(batch) = next else { break };
            let batch = batch.map_err(|e| {
                JobError::Failed(
                    anyhow::Error::new(e).context(format!("listing detections of group {group}")),
                )
            })?;
            if let Some(hosts) = batch.expected_hosts {
                // Nexpose tells the host count; estimate detections from what is seen so far.
                let per_host = self
                    .progress
                    .done
                    .checked_div(self.progress.hosts)
                    .unwrap_or(0);
                self.progress.expected = self.progress.expected.max(hosts * per_host);
            }
            for host in batch.hosts {
                pending_detections += host.detections.len().max(1);
                pending.push(host);
                if pending_detections >= DETECTIONS_PER_BATCH {
                    self.write(group, std::mem::take(&mut pending)).await?;
                    pending_detections = 0;
                }
            }
        }
        if !pending.is_empty() {
            self.write(group, pending).await?;
        }
        Ok(())
    }

    /// Writes one batch of hosts in one transaction.
    async fn write(&mut self, group: &str, hosts: Vec<ScannedHost>) -> Result<(), JobError> {
        if self.ctx.cancel.is_cancelled() {
            return Err(JobError::Cancelled);
        }
        let now = Utc::now().trunc_subsecs(3);
        let l = &mut self.lookups;
        let mut tx = self.ctx.pool.begin().await?;
        let asset_ids: Vec<&str> = hosts
            .iter()
            .map(|h| h.asset_id.as_str())
            .filter(|a| !a.is_empty())
            .collect();
        let existing =
            detection::existing(&mut tx, &self.org_id, &self.source_id, &asset_ids).await?;
        let stored_devices =
            device::existing(&mut tx, &self.org_id, &self.source_id, &asset_ids).await?;
        if self.cloud_first {
            let new: Vec<device::NewHost> = hosts
                .iter()
                .filter(|h| !h.asset_id.is_empty() && !stored_devices.contains_key(&h.asset_id))
                .map(|h| device::NewHost {
                    asset_id: &h.asset_id,
                    instance_id: h.instance_id.as_deref().unwrap_or(""),
                    ip: &h.ip,
                })
                .collect();
            let adopted = device::adopt_cloud_first(
                &mut tx,
                &self.org_id,
                &self.source_id,
                self.cloud_source.as_deref(),
                &new,
                now,
            )
            .await?;
            for asset_id in adopted {
                tracing::info!("Updated device info for asset {asset_id}: it takes over the device the cloud inventory created");
            }
        }

        let mut devices = Vec::with_capacity(hosts.len());
        let mut rows = Vec::new();
        let mut reactivated = Vec::new();
        let (mut done, mut skipped) = (0, 0);
        for host in &hosts {
            if host.asset_id.is_empty() {
                tracing::warn!(ip = %host.ip, "the scanner reported a host without an asset ID; skipped");
                skipped += host.detections.len();
                continue;
            }
            let Some(os_type_id) = l.os_types.classify(&host.os) else {
                return Err(JobError::Config(
                    "OperatingSystemType has no fallback row (Match '')".into(),
                ));
            };
            devices.push(DeviceRow {
                asset_id: host.asset_id.clone(),
                ip: host.ip.clone(),
                mac: host.mac.clone(),
                hostname: host.hostname.clone(),
                instance_id: host.instance_id.clone().unwrap_or_default(),
                group_id: group.to_string(),
                os: host.os.clone(),
                os_type_id,
                tracking_method: host.tracking_method.clone(),
            });

            // Decommissioned: every detection gets the entry, unless the device
            // was seen after its decommission date (then it is active again).
            let found = host.detections.iter().map(|x| x.last_found.or(x.detected));
            let decommission = match l.decommission(&host.asset_id, found) {
                Decommission::Attach(id) => Some(id),
                Decommission::None => None,
                Decommission::SeenSince => {
                    tracing::warn!("device {} has a vulnerability found after its decommission date; it is active again", host.asset_id);
                    reactivated.push(host.asset_id.clone());
                    None
                }
            };
            let facts = HostFacts {
                asset_id: &host.asset_id,
                os: &host.os,
                hostname: &host.hostname,
            };

            for det in &host.detections {
                done += 1;
                let Some(vuln_info_id) = l.vulns.get(&det.vuln_id) else {
                    tracing::debug!(
                        "could not find vulnerability {} in database (run VulnSyncJob first)",
                        det.vuln_id
                    );
                    skipped += 1;
                    continue;
                };
                let Some(&status_id) = l.statuses.get(det.state.as_str()) else {
                    tracing::error!("no DetectionStatus row for {:?}", det.state.as_str());
                    skipped += 1;
                    continue;
                };
                let ignore_id = decommission.clone().or_else(|| {
                    l.exception(&facts, group, &det.vuln_id, det.port, &det.protocol, now)
                });
                let key = FindingKey {
                    device_id: host.asset_id.clone(),
                    vulnerability_id: vuln_info_id.clone(),
                    port: det.port,
                    protocol: det.protocol.clone(),
                };
                let state = SyncedState {
                    ignore_id,
                    status_id,
                    last_found: det.last_found.map(|t| t.trunc_subsecs(3)),
                    last_updated: det.last_updated.map(|t| t.trunc_subsecs(3)),
                    times_seen: det.times_seen,
                    active_kernel: det.active_kernel.filter(|k| *k != 0),
                    proof: det.proof.clone(),
                };
                match existing.get(&key) {
                    Some(stored) if *stored == state => continue,
                    Some(_) => {}
                    None if det.detected.is_none() => {
                        tracing::error!(
                            "could not find the time of the detection {} on {}; skipped",
                            det.vuln_id,
                            host.asset_id
                        );
                        skipped += 1;
                        continue;
                    }
                    None => {}
                }
                let alert_date = det
                    .detected
                    .or(det.last_found)
                    .unwrap_or(now)
                    .trunc_subsecs(3);
                rows.push(DetectionRow {
                    key,
                    alert_date,
                    state,
                });
            }
        }
        // Within one statement a finding must appear once (the scanner may repeat one).
        let mut seen = std::collections::HashSet::new();
        rows.retain(|r| seen.insert(r.key.clone()));

        // Devices whose stored row already says the same are not written.
        devices.retain(|d| {
            stored_devices
                .get(&d.asset_id)
                .is_none_or(|s| !d.unchanged_from(s))
        });
        device::upsert(&mut tx, &self.org_id, &self.source_id, &devices, now).await?;
        for asset_id in &reactivated {
            ignore::reactivate_device(
                &mut tx,
                &self.org_id,
                &self.source_id,
                asset_id,
                "AssetSyncJob",
            )
            .await?;
        }
        detection::upsert(&mut tx, &self.org_id, &self.source_id, &rows, now).await?;
        tx.commit().await?;
        for asset_id in reactivated {
            l.decommissions.remove(&asset_id);
        }
        self.progress.add(hosts.len(), done, rows.len(), skipped);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aegis_shared::model::asset_group::SyncStamps;
    use chrono::TimeZone;

    fn payload(json: &str) -> Payload {
        serde_json::from_str(json).unwrap()
    }

    fn at(h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 1, h, 0, 0).unwrap()
    }

    #[test]
    fn a_group_synced_before_is_synced_from_its_last_start() {
        let stamps = SyncStamps {
            last: Some(at(10)),
            last_full: Some(at(2)),
            exempt_from_globals: None,
        };
        let p = payload(r#"{"groups":["1"]}"#);
        assert_eq!(incremental_since(&p, true, stamps, at(12)), Some(at(10)));
    }

    #[test]
    fn full_pulls_first_time_on_request_on_schedule_and_without_a_window() {
        let p = payload(r#"{"groups":["1"]}"#);
        let never = SyncStamps::default();
        assert_eq!(
            incremental_since(&p, true, never, at(12)),
            None,
            "never synced"
        );
        let synced = SyncStamps {
            last: Some(at(10)),
            last_full: Some(at(2)),
            exempt_from_globals: None,
        };
        assert_eq!(
            incremental_since(&p, false, synced, at(12)),
            None,
            "Nexpose"
        );
        let forced = payload(r#"{"groups":["1"],"full_sync":true}"#);
        assert_eq!(incremental_since(&forced, true, synced, at(12)), None);
        let every_run = payload(r#"{"groups":["1"],"full_sync_interval_hours":0}"#);
        assert_eq!(incremental_since(&every_run, true, synced, at(12)), None);
        let ten_hours = payload(r#"{"groups":["1"],"full_sync_interval_hours":10}"#);
        assert_eq!(
            incremental_since(&ten_hours, true, synced, at(12)),
            None,
            "last full sync 10 h ago"
        );
        assert_eq!(
            incremental_since(&ten_hours, true, synced, at(11)),
            Some(at(10))
        );
        let week_old = SyncStamps {
            last: Some(at(10)),
            last_full: Some(at(10) - chrono::TimeDelta::hours(168)),
            exempt_from_globals: None,
        };
        assert_eq!(incremental_since(&p, true, week_old, at(10)), None);
    }
}

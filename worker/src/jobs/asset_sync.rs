//! AssetSyncJob: pulls hosts and detections of the payload's groups from the
//! in-source scanner into `Device` and `Detection`, keeps `AssetGroup` rows,
//! and attaches `Ignore` ids (decommission, device exception / false
//! positive, global exception) so TicketingJob skips what is ignored.
//!
//! Payload: `{"groups": ["1", "tag-web,tag-db"], "groups_exempt_from_global_exceptions": ["1"]}`.
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
//! * `Source.ID` of the scanner is used everywhere the original sometimes
//!   passed the SourceConfig ID (spec §15.1).

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use chrono::{DateTime, SubsecRound, Utc};
use futures::future::BoxFuture;
use futures::StreamExt;
use prometheus::IntCounterVec;
use regex::Regex;
use serde::Deserialize;

use aegis_shared::model::detection::{self, DetectionRow, FindingKey, SyncedState};
use aegis_shared::model::device::{self, DeviceRow, OsTypes};
use aegis_shared::model::ignore::{self, Ignore};
use aegis_shared::model::{asset_group, vulnerability};

use super::{Job, JobContext, JobError};
use crate::vendors::scanner::{self, ScannedHost, Scanner};

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

/// A compiled global exception.
struct GlobalException {
    id: String,
    vulnerability_id: String,
    os: Option<Regex>,
    hostname: Option<Regex>,
    device_id: Option<Regex>,
    due_date: Option<DateTime<Utc>>,
    type_id: i32,
}

/// Everything looked up once per run.
struct Lookups {
    statuses: HashMap<String, i32>,
    os_types: OsTypes,
    /// SourceVulnId → VulnerabilityInfo.ID
    vulns: HashMap<String, String>,
    globals: Vec<GlobalException>,
    /// asset ID → "<vuln id>;<port key>" → ignore
    device_ignores: HashMap<String, HashMap<String, Ignore>>,
    /// asset ID → active decommission entry
    decommissions: HashMap<String, Ignore>,
    exempt: Vec<String>,
}

fn compile(
    field: &str,
    ignore: &Ignore,
    pattern: &Option<String>,
) -> Result<Option<Regex>, JobError> {
    match pattern.as_deref().map(str::trim).filter(|p| !p.is_empty()) {
        None => Ok(None),
        Some(p) => Regex::new(p).map(Some).map_err(|e| {
            JobError::Config(format!(
                "global exception {} has an invalid {field} {p:?}: {e}",
                ignore.id
            ))
        }),
    }
}

impl Lookups {
    async fn load(
        ctx: &JobContext,
        org_id: &str,
        source_id: &str,
        exempt: Vec<String>,
    ) -> Result<Lookups, JobError> {
        let pool = &ctx.pool;
        let mut globals = Vec::new();
        for g in ignore::global_exceptions(pool, org_id, source_id).await? {
            globals.push(GlobalException {
                os: compile("OSRegex", &g, &g.os_regex)?,
                hostname: compile("HostnameRegex", &g, &g.hostname_regex)?,
                device_id: compile("DeviceIDRegex", &g, &g.device_id_regex)?,
                id: g.id,
                vulnerability_id: g.vulnerability_id,
                due_date: g.due_date,
                type_id: g.type_id,
            });
        }
        let mut device_ignores: HashMap<String, HashMap<String, Ignore>> = HashMap::new();
        for i in ignore::device_ignores(pool, org_id).await? {
            let device = i.device_id.clone().unwrap_or_default();
            let key = format!(
                "{};{}",
                i.vulnerability_id,
                i.port.as_deref().unwrap_or("").trim()
            );
            device_ignores.entry(device).or_default().insert(key, i);
        }
        let decommissions = ignore::decommissions(pool, org_id, source_id)
            .await?
            .into_iter()
            .map(|i| (i.device_id.clone().unwrap_or_default(), i))
            .collect();
        Ok(Lookups {
            statuses: detection::statuses(pool).await?,
            os_types: OsTypes::load(pool).await?,
            vulns: vulnerability::ids_by_source_vuln_id(pool, source_id).await?,
            globals,
            device_ignores,
            decommissions,
            exempt,
        })
    }

    /// The device exception or false positive for this finding, else the
    /// first matching global exception (unless the group is exempt).
    fn exception(
        &self,
        host: &ScannedHost,
        group: &str,
        vuln_id: &str,
        port: i32,
        protocol: &str,
        now: DateTime<Utc>,
    ) -> Option<String> {
        let port_key = if port > 0 || !protocol.is_empty() {
            format!("{port} {protocol}")
        } else {
            String::new()
        };
        if let Some(i) = self
            .device_ignores
            .get(&host.asset_id)
            .and_then(|m| m.get(&format!("{vuln_id};{port_key}")))
        {
            // False positives always apply; exceptions until their due date.
            if i.type_id != ignore::EXCEPTION || i.due_date.is_some_and(|d| d > now) {
                return Some(i.id.clone());
            }
        }
        if self.exempt.iter().any(|g| g == group) {
            return None;
        }
        self.globals
            .iter()
            .find(|g| {
                (g.os.is_some() || g.hostname.is_some() || g.device_id.is_some())
                    && (g.vulnerability_id.is_empty() || g.vulnerability_id == vuln_id)
                    && !(g.type_id == ignore::EXCEPTION && g.due_date.is_some_and(|d| d <= now))
                    && g.os.as_ref().is_none_or(|r| r.is_match(&host.os))
                    && g.hostname
                        .as_ref()
                        .is_none_or(|r| r.is_match(&host.hostname))
                    && g.device_id
                        .as_ref()
                        .is_none_or(|r| r.is_match(&host.asset_id))
            })
            .map(|g| g.id.clone())
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
    let sc = ctx
        .sources_in
        .first()
        .cloned()
        .ok_or_else(|| JobError::Config("AssetSyncJob needs a scanner in-source".into()))?;
    let source_id = sc.source_id.clone().ok_or_else(|| {
        JobError::Config(format!(
            "source config {} has no SourceID (scanner Source.ID)",
            sc.id
        ))
    })?;
    let scanner =
        scanner::for_source(&sc, ctx.client(&sc)?).map_err(|e| JobError::Failed(e.into()))?;

    let exempt = p.groups_exempt_from_global_exceptions.unwrap_or_default();
    let lookups = Lookups::load(&ctx, &org.id, &source_id, exempt).await?;
    let expected = detection::count(&ctx.pool, &org.id, &source_id)
        .await?
        .max(0) as u64;
    let now = Instant::now();
    let mut sync = Sync {
        ctx: &ctx,
        org_id: org.id.clone(),
        source_id: source_id.clone(),
        lookups,
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

    // Plain groups one at a time; a tag item ("tag-1,tag-2") is one selection.
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
        if ctx.cancel.is_cancelled() {
            return Err(JobError::Cancelled);
        }
        tracing::info!("started processing {item}");
        sync.group(scanner.as_ref(), item, &selection).await?;
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
    ) -> Result<(), JobError> {
        let mut stream = scanner.host_detections(selection, None);
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
            let mut decommission = None;
            if let Some(d) = l.decommissions.get(&host.asset_id) {
                let due = d.due_date.unwrap_or(DateTime::UNIX_EPOCH);
                let seen_since = host
                    .detections
                    .iter()
                    .any(|x| x.last_found.or(x.detected).is_some_and(|t| t > due));
                if seen_since {
                    tracing::warn!("device {} has a vulnerability found after its decommission date; it is active again", host.asset_id);
                    reactivated.push(host.asset_id.clone());
                } else {
                    decommission = Some(d.id.clone());
                }
            }

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
                    l.exception(host, group, &det.vuln_id, det.port, &det.protocol, now)
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

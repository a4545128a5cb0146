//! The Ignore rules of AssetSyncJob (spec `original-jobs-sync-ticketing.md`
//! §5.4 step 6, §5.5): which Ignore a detection gets, and the re-evaluation of
//! stored detections an incremental sync did not fetch.
//!
//! Order, first match wins: the device's active decommission entry (unless the
//! device was seen after its decommission date); the device exception (until
//! its due date) or false positive for this vulnerability and port; the first
//! matching global exception by OS, hostname or asset ID regex, unless the
//! device's group is exempt.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use regex::Regex;

use aegis_shared::model::detection;
use aegis_shared::model::device::OsTypes;
use aegis_shared::model::ignore::{self, Ignore};
use aegis_shared::model::vulnerability;

use super::super::{JobContext, JobError};

/// What the Ignore rules read of a device.
pub(super) struct HostFacts<'a> {
    pub asset_id: &'a str,
    pub os: &'a str,
    pub hostname: &'a str,
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
pub(super) struct Lookups {
    pub(super) statuses: HashMap<String, i32>,
    pub(super) os_types: OsTypes,
    /// SourceVulnId → VulnerabilityInfo.ID
    pub(super) vulns: HashMap<String, String>,
    globals: Vec<GlobalException>,
    /// asset ID → `"<vuln id>;<port key>"` → ignore
    device_ignores: HashMap<String, HashMap<String, Ignore>>,
    /// asset ID → active decommission entry
    pub(super) decommissions: HashMap<String, Ignore>,
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
    pub(super) async fn load(
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
    pub(super) fn exception(
        &self,
        host: &HostFacts,
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
            .get(host.asset_id)
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
                    && g.os.as_ref().is_none_or(|r| r.is_match(host.os))
                    && g.hostname
                        .as_ref()
                        .is_none_or(|r| r.is_match(host.hostname))
                    && g.device_id
                        .as_ref()
                        .is_none_or(|r| r.is_match(host.asset_id))
            })
            .map(|g| g.id.clone())
    }
}

/// The decommission check of a device (spec §5.5).
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Decommission {
    /// No active decommission entry.
    None,
    /// Every detection of the device gets this Ignore.
    Attach(String),
    /// Seen after its decommission date: the device is active again.
    SeenSince,
}

impl Lookups {
    /// The decommission state of `asset_id`, given when each of its detections
    /// was last found.
    pub(super) fn decommission(
        &self,
        asset_id: &str,
        mut found: impl Iterator<Item = Option<DateTime<Utc>>>,
    ) -> Decommission {
        let Some(d) = self.decommissions.get(asset_id) else {
            return Decommission::None;
        };
        let due = d.due_date.unwrap_or(DateTime::UNIX_EPOCH);
        if found.any(|t| t.is_some_and(|t| t > due)) {
            Decommission::SeenSince
        } else {
            Decommission::Attach(d.id.clone())
        }
    }
}

/// Devices re-evaluated per transaction.
const DEVICES_PER_RECONCILE: usize = 500;

impl super::Sync<'_> {
    /// Re-evaluates the Ignore of the stored detections of `group` that an
    /// incremental sync did not fetch but whose Ignore may have changed since
    /// `since` (the group's last sync start, database clock): devices with a
    /// device Ignore created or changed since, devices with a detection whose
    /// Ignore lapsed (`lapsed`: deleted, deactivated, exception past due; looked
    /// up once per run), and every device
    /// of the group when a global exception was created or changed since or when
    /// `every_device` (the group's exemption from global exceptions changed).
    /// Returns how many detections changed.
    pub(super) async fn reconcile(
        &self,
        group: &str,
        since: DateTime<Utc>,
        every_device: bool,
        lapsed: &[String],
        now: DateTime<Utc>,
    ) -> Result<usize, JobError> {
        use aegis_shared::model::device;
        let (ctx, lookups) = (self.ctx, &self.lookups);
        let (org_id, source_id) = (self.org_id.as_str(), self.source_id.as_str());
        let groups = [group.to_string()];
        let pool = &ctx.pool;
        let mut dirty: HashSet<String> = ignore::devices_changed_since(pool, org_id, since)
            .await?
            .into_iter()
            .collect();
        dirty.extend(lapsed.iter().cloned());
        if every_device {
            tracing::info!("the group's exemption from global exceptions changed: re-evaluating every device of it");
            dirty.extend(device::asset_ids_in_groups(pool, org_id, source_id, &groups).await?);
        } else if ignore::globals_changed_since(pool, org_id, source_id, since).await? {
            tracing::info!("a global exception changed since {since}: re-evaluating every device of group {group}");
            dirty.extend(device::asset_ids_in_groups(pool, org_id, source_id, &groups).await?);
        }
        let mut dirty: Vec<String> = dirty.into_iter().collect();
        dirty.sort();
        let mut changed = 0;
        for chunk in dirty.chunks(DEVICES_PER_RECONCILE) {
            if ctx.cancel.is_cancelled() {
                return Err(JobError::Cancelled);
            }
            let mut tx = pool.begin().await?;
            let ids: Vec<&str> = chunk.iter().map(String::as_str).collect();
            let devices = device::existing(&mut tx, org_id, source_id, &ids).await?;
            let mut by_device: HashMap<String, Vec<detection::AttachedIgnore>> = HashMap::new();
            for row in detection::attached_ignores(&mut tx, org_id, source_id, chunk).await? {
                by_device
                    .entry(row.device_id.clone())
                    .or_default()
                    .push(row);
            }
            let mut changes = Vec::new();
            for (asset_id, rows) in &by_device {
                let Some(dev) = devices.get(asset_id) else {
                    continue;
                };
                if dev.group_id != group {
                    continue;
                }
                let facts = HostFacts {
                    asset_id,
                    os: &dev.os,
                    hostname: &dev.hostname,
                };
                let decommission =
                    match lookups.decommission(asset_id, rows.iter().map(|r| r.last_found)) {
                        Decommission::Attach(id) => Some(id),
                        Decommission::None | Decommission::SeenSince => None,
                    };
                for r in rows {
                    let wanted = decommission.clone().or_else(|| {
                        lookups.exception(
                            &facts,
                            &dev.group_id,
                            &r.source_vuln_id,
                            r.port,
                            &r.protocol,
                            now,
                        )
                    });
                    if wanted != r.ignore_id {
                        changes.push((r.id.clone(), wanted));
                    }
                }
            }
            detection::set_ignore(&mut tx, &changes, now).await?;
            tx.commit().await?;
            changed += changes.len();
        }
        if changed > 0 {
            tracing::info!(
            "re-evaluated the Ignore of {} device(s) not in this sync's changes: {} detection(s) changed",
            dirty.len(),
            changed
        );
        }
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn ignore(
        id: &str,
        type_id: i32,
        vuln: &str,
        port: &str,
        due: Option<DateTime<Utc>>,
    ) -> Ignore {
        Ignore {
            id: id.into(),
            type_id,
            vulnerability_id: vuln.into(),
            device_id: Some("100".into()),
            os_regex: None,
            hostname_regex: None,
            device_id_regex: None,
            due_date: due,
            port: Some(port.into()),
        }
    }

    fn day(d: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, d, 0, 0, 0).unwrap()
    }

    fn lookups(
        device: Vec<Ignore>,
        decommissions: Vec<Ignore>,
        globals: Vec<GlobalException>,
    ) -> Lookups {
        let mut device_ignores: HashMap<String, HashMap<String, Ignore>> = HashMap::new();
        for i in device {
            let key = format!(
                "{};{}",
                i.vulnerability_id,
                i.port.clone().unwrap_or_default()
            );
            device_ignores
                .entry("100".into())
                .or_default()
                .insert(key, i);
        }
        Lookups {
            statuses: HashMap::new(),
            os_types: OsTypes::default(),
            vulns: HashMap::new(),
            globals,
            device_ignores,
            decommissions: decommissions
                .into_iter()
                .map(|i| ("100".to_string(), i))
                .collect(),
            exempt: vec!["exempt".into()],
        }
    }

    const HOST: HostFacts = HostFacts {
        asset_id: "100",
        os: "Windows Server 2019",
        hostname: "db1.corp",
    };

    #[test]
    fn exceptions_apply_until_due_false_positives_always() {
        let l = lookups(
            vec![
                ignore("exc", ignore::EXCEPTION, "38739", "443 tcp", Some(day(10))),
                ignore("fp", ignore::FALSE_POSITIVE, "38740", "", Some(day(1))),
            ],
            vec![],
            vec![],
        );
        assert_eq!(
            l.exception(&HOST, "1", "38739", 443, "tcp", day(5)),
            Some("exc".into())
        );
        assert_eq!(
            l.exception(&HOST, "1", "38739", 443, "tcp", day(11)),
            None,
            "expired"
        );
        assert_eq!(
            l.exception(&HOST, "1", "38739", 80, "tcp", day(5)),
            None,
            "other port"
        );
        assert_eq!(
            l.exception(&HOST, "1", "38740", 0, "", day(20)),
            Some("fp".into())
        );
    }

    #[test]
    fn the_first_matching_global_applies_unless_the_group_is_exempt() {
        let global = |id: &str, os: Option<&str>, host: Option<&str>| GlobalException {
            id: id.into(),
            vulnerability_id: String::new(),
            os: os.map(|r| Regex::new(r).unwrap()),
            hostname: host.map(|r| Regex::new(r).unwrap()),
            device_id: None,
            due_date: None,
            type_id: ignore::EXCEPTION,
        };
        let l = lookups(
            vec![],
            vec![],
            vec![
                global("linux", Some("Linux"), None),
                global("db", None, Some(r"^db\d")),
                global("win", Some("Windows"), None),
            ],
        );
        assert_eq!(
            l.exception(&HOST, "1", "1", 0, "", day(5)),
            Some("db".into())
        );
        assert_eq!(l.exception(&HOST, "exempt", "1", 0, "", day(5)), None);
    }

    #[test]
    fn a_decommissioned_device_is_attached_until_seen_after_its_date() {
        let l = lookups(
            vec![],
            vec![ignore(
                "decom",
                ignore::DECOMMISSIONED,
                "",
                "",
                Some(day(10)),
            )],
            vec![],
        );
        assert_eq!(
            l.decommission("100", [Some(day(9)), None].into_iter()),
            Decommission::Attach("decom".into())
        );
        assert_eq!(
            l.decommission("100", [Some(day(9)), Some(day(11))].into_iter()),
            Decommission::SeenSince
        );
        assert_eq!(
            l.decommission("200", [Some(day(11))].into_iter()),
            Decommission::None
        );
    }
}

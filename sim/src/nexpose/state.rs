//! Nexpose-visible state: sites, engines, scan templates, findings and scans, plus the scan
//! lifecycle (`running → integrating → finished`) that re-evaluates findings from the truth.
//!
//! Findings of a host are stored only once a scan touched it; until then every base vulnerability
//! of the host is a finding. Remediated findings disappear, as in real InsightVM listings.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::world::{mix, qid_from_nexpose_id, Estate, HostIdx, VulnKey, WorldFixture};
use crate::ScanTiming;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SiteFixture {
    pub id: u32,
    pub name: String,
    #[serde(default = "default_engine")]
    pub engine_id: u32,
}

fn default_engine() -> u32 {
    3
}

#[derive(Clone, Debug, Serialize)]
pub struct Site {
    pub id: u32,
    pub name: String,
    pub engine_id: u32,
    /// Member assets, sorted by IP.
    pub assets: Vec<HostIdx>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Engine {
    pub id: u32,
    pub name: String,
    pub address: String,
    pub port: u16,
}

#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    pub since: DateTime<Utc>,
    pub proof: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct NexposeScan {
    pub id: u64,
    pub site_id: u32,
    pub engine_id: u32,
    pub template_id: String,
    pub name: String,
    pub hosts: Vec<String>,
    pub targets: Vec<HostIdx>,
    /// QIDs whose checks the template enables; `None` = every vulnerability.
    pub scope: Option<BTreeSet<u32>>,
    pub launched_at: DateTime<Utc>,
    /// Status forced by the control API (e.g. `error`, `paused`, `aborted`); stays until changed.
    pub forced: Option<String>,
    pub applied: bool,
    pub finished_at: Option<DateTime<Utc>>,
}

/// Built-in scan templates present at start.
pub const BUILTIN_TEMPLATES: &[(&str, &str)] = &[
    (
        "full-audit-without-web-spider",
        "Full audit without Web Spider",
    ),
    ("discovery", "Discovery Scan"),
];

#[derive(Debug)]
pub struct NexposeState {
    pub sites: BTreeMap<u32, Site>,
    pub engines: BTreeMap<u32, Engine>,
    pub templates: BTreeMap<String, Value>,
    pub findings: HashMap<HostIdx, BTreeMap<VulnKey, Finding>>,
    pub scans: BTreeMap<u64, NexposeScan>,
    pub next_scan_id: u64,
    pub next_template: u64,
    /// When a scan last assessed each host (the asset's latest `history` SCAN event).
    pub last_scanned: HashMap<HostIdx, DateTime<Utc>>,
}

impl NexposeState {
    pub fn new(estate: &Estate, fixture: &WorldFixture) -> NexposeState {
        let mut engines = BTreeMap::new();
        engines.insert(
            3,
            Engine {
                id: 3,
                name: "Local scan engine".into(),
                address: "127.0.0.1".into(),
                port: 40814,
            },
        );
        let mut sites: BTreeMap<u32, Site> = BTreeMap::new();
        for f in &fixture.sites {
            sites.insert(
                f.id,
                Site {
                    id: f.id,
                    name: f.name.clone(),
                    engine_id: f.engine_id,
                    assets: Vec::new(),
                },
            );
        }
        for (idx, h) in estate.hosts.iter().enumerate() {
            for sid in &h.sites {
                sites
                    .entry(*sid)
                    .or_insert_with(|| Site {
                        id: *sid,
                        name: format!("Sim Site {sid}"),
                        engine_id: 3,
                        assets: Vec::new(),
                    })
                    .assets
                    .push(idx);
            }
        }
        sites.entry(999).or_insert_with(|| Site {
            id: 999,
            name: "Aegis Rescan Site".into(),
            engine_id: 3,
            assets: Vec::new(),
        });
        for site in sites.values_mut() {
            site.assets.sort_by_key(|i| u32::from(estate.hosts[*i].ip));
        }
        let mut templates = BTreeMap::new();
        for (id, name) in BUILTIN_TEMPLATES {
            templates.insert(id.to_string(), builtin_template(id, name));
        }
        NexposeState {
            sites,
            engines,
            templates,
            findings: HashMap::new(),
            scans: BTreeMap::new(),
            next_scan_id: 1,
            next_template: 1,
            last_scanned: HashMap::new(),
        }
    }

    /// Findings Nexpose currently shows for a host, sorted by key.
    pub fn visible(&self, estate: &Estate, idx: HostIdx) -> Vec<(VulnKey, Finding)> {
        if let Some(map) = self.findings.get(&idx) {
            return map.iter().map(|(k, f)| (*k, f.clone())).collect();
        }
        estate
            .base_vulns(idx)
            .into_iter()
            .map(|(k, proof)| {
                let h = mix(((idx as u64) << 32) ^ k.qid as u64);
                let since = estate.generated_at - chrono::Duration::days(1 + (h % 200) as i64);
                (k, Finding { since, proof })
            })
            .collect()
    }

    /// Status of a scan at `now`.
    pub fn status(scan: &NexposeScan, now: DateTime<Utc>, timing: &ScanTiming) -> String {
        if let Some(f) = &scan.forced {
            return f.clone();
        }
        let elapsed = (now - scan.launched_at).to_std().unwrap_or_default();
        if elapsed < timing.running_ends() {
            "running".into()
        } else if elapsed < timing.processed_at() {
            "integrating".into()
        } else {
            "finished".into()
        }
    }

    /// The enabled-check scope of a template: `None` means every vulnerability.
    pub fn template_scope(template: &Value) -> Option<BTreeSet<u32>> {
        let enabled = template
            .pointer("/checks/individual/enabled")
            .and_then(Value::as_array)?;
        if enabled.is_empty() {
            return None;
        }
        Some(
            enabled
                .iter()
                .filter_map(Value::as_str)
                .filter_map(qid_from_nexpose_id)
                .collect(),
        )
    }

    /// Re-evaluate findings of scans that reached `finished`.
    pub fn tick(&mut self, estate: &mut Estate, now: DateTime<Utc>, timing: &ScanTiming) {
        let due: Vec<u64> = self
            .scans
            .values()
            .filter(|s| !s.applied && Self::status(s, now, timing) == "finished")
            .map(|s| s.id)
            .collect();
        for id in due {
            let Some(scan) = self.scans.get(&id).cloned() else {
                continue;
            };
            let end = match scan.forced {
                Some(_) => now,
                None => {
                    scan.launched_at
                        + chrono::Duration::from_std(timing.running_ends()).unwrap_or_default()
                }
            };
            for idx in &scan.targets {
                let idx = *idx;
                if !estate.hosts[idx].alive {
                    continue;
                }
                if !estate.hosts[idx].sites.contains(&scan.site_id) {
                    estate.hosts[idx].sites.push(scan.site_id);
                    if let Some(site) = self.sites.get_mut(&scan.site_id) {
                        site.assets.push(idx);
                        let hosts = &estate.hosts;
                        site.assets.sort_by_key(|i| u32::from(hosts[*i].ip));
                    }
                }
                let truth = estate.truth_for_host(idx);
                let mut map: BTreeMap<VulnKey, Finding> =
                    self.visible(estate, idx).into_iter().collect();
                for (key, t) in truth {
                    if let Some(scope) = &scan.scope {
                        if !scope.contains(&key.qid) {
                            continue;
                        }
                    }
                    if t.vulnerable {
                        let proof = t.proof.or_else(|| Some(estate.default_proof(key)));
                        map.entry(key)
                            .and_modify(|f| f.proof = proof.clone())
                            .or_insert(Finding { since: end, proof });
                    } else {
                        map.remove(&key);
                    }
                }
                self.findings.insert(idx, map);
                self.last_scanned.insert(idx, end);
            }
            if let Some(s) = self.scans.get_mut(&id) {
                s.applied = true;
                s.finished_at = Some(end);
            }
        }
    }
}

fn builtin_template(id: &str, name: &str) -> Value {
    json!({
        "id": id,
        "name": name,
        "description": format!("{name} (simulated)"),
        "checks": {
            "correlate": true,
            "individual": {"enabled": [], "disabled": []},
            "potential": false,
            "unsafe": false
        },
        "discoveryOnly": id == "discovery",
        "enableWindowsServices": false,
        "maxParallelAssets": 10,
        "maxScanProcesses": 10,
        "vulnerabilityEnabled": id != "discovery",
        "webEnabled": false,
        "links": []
    })
}

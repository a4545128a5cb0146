//! Qualys-visible state: appliances, asset groups, detections, option profiles, search lists and
//! scans, plus the scan lifecycle that turns the estate's truth into detections.
//!
//! Detections of a host are stored only once a scan touched it; until then they are derived from
//! the host's base vulnerabilities (all `Active`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::world::{mix, Estate, HostIdx, VulnKey, WorldFixture, HOSTS_PER_BLOCK};
use crate::ScanTiming;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApplianceStatus {
    Online,
    Offline,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Appliance {
    pub id: u32,
    pub name: String,
    pub status: ApplianceStatus,
    #[serde(default)]
    pub network_id: u32,
    #[serde(default = "default_version")]
    pub software_version: String,
}

fn default_version() -> String {
    "2.6".into()
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AssetGroupFixture {
    pub id: u32,
    pub title: String,
    #[serde(default)]
    pub appliance_ids: Vec<u32>,
    #[serde(default)]
    pub network_id: u32,
}

#[derive(Clone, Debug, Serialize)]
pub struct AssetGroup {
    pub id: u32,
    pub title: String,
    pub appliance_ids: Vec<u32>,
    pub network_id: u32,
    /// IP_SET entries: single IPs or `a.b.c.d-e.f.g.h` ranges.
    pub ip_set: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum DetStatus {
    New,
    Active,
    Reopened,
    Fixed,
}

impl DetStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DetStatus::New => "New",
            DetStatus::Active => "Active",
            DetStatus::Reopened => "Re-Opened",
            DetStatus::Fixed => "Fixed",
        }
    }
    pub fn parse(s: &str) -> Option<DetStatus> {
        match s.trim() {
            "New" => Some(DetStatus::New),
            "Active" => Some(DetStatus::Active),
            "Re-Opened" => Some(DetStatus::Reopened),
            "Fixed" => Some(DetStatus::Fixed),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Detection {
    pub status: DetStatus,
    pub first_found: DateTime<Utc>,
    pub last_found: DateTime<Utc>,
    pub last_test: DateTime<Utc>,
    pub last_update: DateTime<Utc>,
    pub last_fixed: Option<DateTime<Utc>>,
    pub times_found: u32,
    pub proof: Option<String>,
    pub affect_running_kernel: Option<u8>,
}

#[derive(Clone, Debug, Serialize)]
pub struct OptionProfile {
    pub id: u64,
    pub title: String,
    /// Search lists referenced by `SCAN/VULNERABILITY_DETECTION/CUSTOM_LIST` (id, title).
    pub search_lists: Vec<(u64, String)>,
    /// True for the profiles that exist at start (templates); false for imported copies.
    pub builtin: bool,
    /// A built-in full-scan profile (tests every QID when it has no search list).
    pub full_scan: bool,
    pub updated: DateTime<Utc>,
}

#[derive(Clone, Debug, Serialize)]
pub struct SearchList {
    pub id: u64,
    pub title: String,
    pub qids: Vec<u32>,
    pub created: DateTime<Utc>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ScanState {
    Submitted,
    Queued,
    Loading,
    Running,
    Paused,
    Finished,
    Error,
    Canceled,
}

impl ScanState {
    pub fn as_str(self) -> &'static str {
        match self {
            ScanState::Submitted => "Submitted",
            ScanState::Queued => "Queued",
            ScanState::Loading => "Loading",
            ScanState::Running => "Running",
            ScanState::Paused => "Paused",
            ScanState::Finished => "Finished",
            ScanState::Error => "Error",
            ScanState::Canceled => "Canceled",
        }
    }
    pub fn parse(s: &str) -> Option<ScanState> {
        [
            ScanState::Submitted,
            ScanState::Queued,
            ScanState::Loading,
            ScanState::Running,
            ScanState::Paused,
            ScanState::Finished,
            ScanState::Error,
            ScanState::Canceled,
        ]
        .into_iter()
        .find(|st| st.as_str().eq_ignore_ascii_case(s.trim()))
    }
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            ScanState::Finished | ScanState::Error | ScanState::Canceled
        )
    }
}

/// What a scan tests.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub enum ScanScope {
    /// Liveness only: no detection changes.
    Discovery,
    /// Every QID.
    All,
    /// The union of the profile's search lists.
    Qids(BTreeSet<u32>),
}

impl ScanScope {
    pub fn contains(&self, qid: u32) -> bool {
        match self {
            ScanScope::Discovery => false,
            ScanScope::All => true,
            ScanScope::Qids(q) => q.contains(&qid),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Scan {
    pub id: u64,
    pub reference: String,
    pub title: String,
    pub user_login: String,
    pub option_profile_id: u64,
    /// What the scan tests (from the option profile at launch).
    pub scope: ScanScope,
    pub targets: Vec<HostIdx>,
    pub target_text: String,
    pub scanner: String,
    pub network_id: u32,
    /// An EC2 scan's `ec2_endpoint` and `connector_name` (None for an IP scan).
    pub ec2: Option<(String, String)>,
    pub launched_at: DateTime<Utc>,
    /// A state forced by the control API; `processed` applies to `Finished`. Stays until changed.
    pub forced: Option<(ScanState, bool)>,
    pub applied: bool,
    pub finished_at: Option<DateTime<Utc>>,
    pub dead_ips: Vec<Ipv4Addr>,
    /// Launched by a schedule (created through the control API), not by the API:
    /// listed with `TYPE` Scheduled and found by `type=Scheduled`.
    pub scheduled: bool,
}

/// State of the simulated Qualys subscription.
#[derive(Debug)]
pub struct QualysState {
    pub appliances: BTreeMap<u32, Appliance>,
    pub asset_groups: BTreeMap<u32, AssetGroup>,
    /// Materialised detections of hosts a scan (or test) touched.
    pub detections: HashMap<HostIdx, BTreeMap<VulnKey, Detection>>,
    pub option_profiles: BTreeMap<u64, OptionProfile>,
    pub search_lists: BTreeMap<u64, SearchList>,
    pub scans: BTreeMap<u64, Scan>,
    pub next_id: u64,
    pub concurrent_scan_limit: usize,
}

/// Ids of the option profiles present at start.
pub const RESCAN_PROFILE_ID: u64 = 300_001;
pub const DISCOVERY_PROFILE_ID: u64 = 300_002;

impl QualysState {
    pub fn new(estate: &Estate, fixture: &WorldFixture) -> QualysState {
        let mut appliances = BTreeMap::new();
        for a in [
            Appliance {
                id: 7,
                name: "sim-scanner-1".into(),
                status: ApplianceStatus::Online,
                network_id: 0,
                software_version: default_version(),
            },
            Appliance {
                id: 8,
                name: "sim-scanner-offline".into(),
                status: ApplianceStatus::Offline,
                network_id: 0,
                software_version: default_version(),
            },
        ] {
            appliances.insert(a.id, a);
        }
        for a in &fixture.appliances {
            appliances.insert(a.id, a.clone());
        }
        let mut asset_groups = BTreeMap::new();
        if let Some(spec) = estate.spec {
            let blocks = spec.hosts.div_ceil(HOSTS_PER_BLOCK);
            for b in 0..blocks {
                let id = 1 + b as u32;
                asset_groups.insert(
                    id,
                    AssetGroup {
                        id,
                        title: format!("Sim Estate Block {id}"),
                        appliance_ids: vec![7],
                        network_id: 0,
                        ip_set: Vec::new(),
                    },
                );
            }
        }
        for g in &fixture.asset_groups {
            asset_groups.insert(
                g.id,
                AssetGroup {
                    id: g.id,
                    title: g.title.clone(),
                    appliance_ids: g.appliance_ids.clone(),
                    network_id: g.network_id,
                    ip_set: Vec::new(),
                },
            );
        }
        // IP sets: collapse consecutive IPs of each group into ranges.
        let mut members: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
        for h in &estate.hosts {
            for g in &h.asset_groups {
                members.entry(*g).or_default().push(u32::from(h.ip));
            }
        }
        for (gid, mut ips) in members {
            let group = asset_groups.entry(gid).or_insert_with(|| AssetGroup {
                id: gid,
                title: format!("Asset Group {gid}"),
                appliance_ids: vec![7],
                network_id: 0,
                ip_set: Vec::new(),
            });
            ips.sort_unstable();
            group.ip_set = collapse_ranges(&ips);
        }
        let now = estate.generated_at;
        let mut option_profiles = BTreeMap::new();
        for (id, title, full_scan) in [
            (RESCAN_PROFILE_ID, "Aegis Rescan Template", true),
            (DISCOVERY_PROFILE_ID, "Aegis Discovery Template", false),
        ] {
            option_profiles.insert(
                id,
                OptionProfile {
                    id,
                    title: title.into(),
                    search_lists: Vec::new(),
                    builtin: true,
                    full_scan,
                    updated: now,
                },
            );
        }
        QualysState {
            appliances,
            asset_groups,
            detections: HashMap::new(),
            option_profiles,
            search_lists: BTreeMap::new(),
            scans: BTreeMap::new(),
            next_id: 400_001,
            concurrent_scan_limit: 10,
        }
    }

    pub fn fresh_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// A new scan's ID and its reference (`scan/<launch epoch>.<id>`), as Qualys forms them.
    pub fn fresh_scan_ref(&mut self, now: DateTime<Utc>) -> (u64, String) {
        let id = self.fresh_id();
        (id, format!("scan/{}.{:05}", now.timestamp(), id % 100_000))
    }

    /// The scope a scan launched with `profile` tests.
    pub fn scope_of(&self, profile: &OptionProfile) -> ScanScope {
        if profile.search_lists.is_empty() {
            return if profile.full_scan {
                ScanScope::All
            } else {
                ScanScope::Discovery
            };
        }
        let mut qids = BTreeSet::new();
        for (id, _) in &profile.search_lists {
            if let Some(list) = self.search_lists.get(id) {
                qids.extend(list.qids.iter().copied());
            }
        }
        ScanScope::Qids(qids)
    }

    /// The detections Qualys currently shows for a host, sorted by key.
    pub fn visible(&self, estate: &Estate, idx: HostIdx) -> Vec<(VulnKey, Detection)> {
        if let Some(map) = self.detections.get(&idx) {
            return map.iter().map(|(k, d)| (*k, d.clone())).collect();
        }
        estate
            .base_vulns(idx)
            .into_iter()
            .map(|(k, proof)| (k, base_detection(estate, idx, k, proof)))
            .collect()
    }

    fn materialise(&mut self, estate: &Estate, idx: HostIdx) -> &mut BTreeMap<VulnKey, Detection> {
        if !self.detections.contains_key(&idx) {
            let map = self.visible(estate, idx).into_iter().collect();
            self.detections.insert(idx, map);
        }
        self.detections.entry(idx).or_default()
    }

    /// Lifecycle phase of a scan at `now`: (state, processed).
    pub fn phase(scan: &Scan, now: DateTime<Utc>, timing: &ScanTiming) -> (ScanState, bool) {
        if let Some(forced) = scan.forced {
            return forced;
        }
        let elapsed = (now - scan.launched_at).to_std().unwrap_or_default();
        if elapsed < timing.queued {
            (ScanState::Queued, false)
        } else if elapsed < timing.running_ends() {
            (ScanState::Running, false)
        } else if elapsed < timing.processed_at() {
            (ScanState::Finished, false)
        } else {
            (ScanState::Finished, true)
        }
    }

    pub fn running_scans(&self, now: DateTime<Utc>, timing: &ScanTiming) -> usize {
        self.scans
            .values()
            .filter(|s| !Self::phase(s, now, timing).0.is_terminal())
            .count()
    }

    /// Apply the truth to every scan that reached Finished and has not been applied yet.
    pub fn tick(&mut self, estate: &Estate, now: DateTime<Utc>, timing: &ScanTiming) {
        let due: Vec<u64> = self
            .scans
            .values()
            .filter(|s| !s.applied && Self::phase(s, now, timing).0 == ScanState::Finished)
            .map(|s| s.id)
            .collect();
        for id in due {
            let Some(scan) = self.scans.get(&id) else {
                continue;
            };
            let end = match scan.forced {
                Some(_) => now,
                None => {
                    scan.launched_at
                        + chrono::Duration::from_std(timing.running_ends()).unwrap_or_default()
                }
            };
            let targets = scan.targets.clone();
            let scope = scan.scope.clone();
            let mut dead = Vec::new();
            for idx in targets {
                let host = &estate.hosts[idx];
                if !host.alive {
                    dead.push(host.ip);
                    continue;
                }
                if scope == ScanScope::Discovery {
                    continue;
                }
                let auth_failure = host.auth_failure;
                let truth = estate.truth_for_host(idx);
                let defaults: BTreeMap<VulnKey, String> = truth
                    .keys()
                    .map(|k| (*k, estate.default_proof(*k)))
                    .collect();
                let map = self.materialise(estate, idx);
                for (key, t) in truth {
                    if !scope.contains(key.qid) {
                        continue;
                    }
                    let existing = map.get_mut(&key);
                    match (existing, t.vulnerable) {
                        (None, true) => {
                            map.insert(
                                key,
                                Detection {
                                    status: DetStatus::New,
                                    first_found: end,
                                    last_found: end,
                                    last_test: end,
                                    last_update: end,
                                    last_fixed: None,
                                    times_found: 1,
                                    proof: t.proof.or_else(|| defaults.get(&key).cloned()),
                                    affect_running_kernel: None,
                                },
                            );
                        }
                        (None, false) => {}
                        (Some(d), vulnerable) => {
                            if vulnerable {
                                d.status = if d.status == DetStatus::Fixed {
                                    DetStatus::Reopened
                                } else {
                                    DetStatus::Active
                                };
                                d.last_found = end;
                                d.times_found += 1;
                                if t.proof.is_some() {
                                    d.proof = t.proof;
                                }
                            } else if d.status != DetStatus::Fixed {
                                d.status = DetStatus::Fixed;
                                d.last_fixed = Some(end);
                            }
                            if !auth_failure {
                                d.last_test = end;
                                d.last_update = end;
                            }
                        }
                    }
                }
            }
            if let Some(scan) = self.scans.get_mut(&id) {
                scan.applied = true;
                scan.finished_at = Some(end);
                scan.dead_ips = dead;
            }
        }
    }
}

/// A base detection as first seeded: Active, found some days before the estate was generated.
pub fn base_detection(
    estate: &Estate,
    idx: HostIdx,
    key: VulnKey,
    proof: Option<String>,
) -> Detection {
    let h = mix(((idx as u64) << 32) ^ key.qid as u64 ^ ((key.port as u64) << 48));
    let at = estate.generated_at - chrono::Duration::hours((h % 48) as i64 + 1);
    let first = at - chrono::Duration::days((h >> 8) as i64 % 200);
    let kernel = estate
        .kb_entry(key.qid)
        .filter(|k| k.kernel_related)
        .map(|_| ((h >> 16) % 2) as u8);
    Detection {
        status: DetStatus::Active,
        first_found: first,
        last_found: at,
        last_test: at,
        last_update: at,
        last_fixed: None,
        times_found: 1 + ((h >> 24) % 20) as u32,
        proof,
        affect_running_kernel: kernel,
    }
}

/// Collapse sorted IPv4 addresses into Qualys IP_SET entries.
pub fn collapse_ranges(ips: &[u32]) -> Vec<String> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < ips.len() {
        let start = ips[i];
        let mut end = start;
        while i + 1 < ips.len() && ips[i + 1] == end + 1 {
            i += 1;
            end = ips[i];
        }
        if start == end {
            out.push(Ipv4Addr::from(start).to_string());
        } else {
            out.push(format!("{}-{}", Ipv4Addr::from(start), Ipv4Addr::from(end)));
        }
        i += 1;
    }
    out
}

/// Parse a Qualys IP list (`10.0.0.1,10.0.0.5-10.0.0.9`) into inclusive ranges.
pub fn parse_ip_list(s: &str) -> Result<Vec<(u32, u32)>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (part, part),
        };
        let a: Ipv4Addr = a.parse().map_err(|_| format!("invalid IP '{part}'"))?;
        let b: Ipv4Addr = b.parse().map_err(|_| format!("invalid IP '{part}'"))?;
        let (a, b) = (u32::from(a), u32::from(b));
        if a > b {
            return Err(format!("invalid IP range '{part}'"));
        }
        out.push((a, b));
    }
    Ok(out)
}

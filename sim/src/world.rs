//! The one model behind all three simulated vendors.
//!
//! This module owns the *estate* (hosts, the knowledge base, the truth of which vulnerability each
//! host has on which port), the clock, and the deterministic generator. Vendor-visible state
//! (Qualys detections, Nexpose findings, JIRA issues) lives in the vendor modules and is held here
//! only so that a single lock covers every cross-vendor change.
//!
//! Invariants:
//! * `Estate::hosts` is sorted by Qualys host id, so the host detection list can stream hosts in
//!   id order and resume at `id_min` with a binary search.
//! * A generated host's base vulnerabilities are a pure function of `(seed, ordinal)`; nothing is
//!   stored per detection until a scan or a test changes it. That is what keeps a 1,000,000
//!   detection estate in a few megabytes.
//! * Truth changes are invisible to the scanners until a scan of that host finishes.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};

use crate::jira::store::JiraState;
use crate::nexpose::state::NexposeState;
use crate::qualys::state::QualysState;
use crate::SimError;

/// Index of a host in [`Estate::hosts`].
pub type HostIdx = usize;

/// Transport protocol of a detection's port.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }

    pub fn parse(s: &str) -> Option<Proto> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Some(Proto::Tcp),
            "udp" => Some(Proto::Udp),
            _ => None,
        }
    }
}

/// Identity of a vulnerability instance on a host: QID, port and protocol.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord, Serialize, Deserialize)]
pub struct VulnKey {
    pub qid: u32,
    pub port: u16,
    pub proto: Proto,
}

/// How the size and content of a generated estate is chosen.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct EstateSpec {
    pub hosts: usize,
    pub detections_per_host: usize,
    pub seed: u64,
}

impl Default for EstateSpec {
    fn default() -> Self {
        EstateSpec {
            hosts: 5,
            detections_per_host: 3,
            seed: 42,
        }
    }
}

/// How Qualys tracks a host.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize, Default)]
#[serde(rename_all = "UPPERCASE")]
pub enum TrackingMethod {
    #[default]
    Ip,
    Ec2,
    Agent,
}

impl TrackingMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            TrackingMethod::Ip => "IP",
            TrackingMethod::Ec2 => "EC2",
            TrackingMethod::Agent => "AGENT",
        }
    }
}

/// Where a host's base (pre-seeded) vulnerabilities come from.
#[derive(Clone, Debug)]
pub enum BaseVulns {
    /// Computed on the fly from the seed and this ordinal.
    Generated { ordinal: u32 },
    /// Listed explicitly by a fixture.
    Explicit(Vec<(VulnKey, Option<String>)>),
}

/// One physical or virtual asset, known to every vendor.
#[derive(Clone, Debug)]
pub struct Host {
    pub qualys_id: u64,
    pub nexpose_id: u64,
    pub ip: Ipv4Addr,
    pub hostname: String,
    pub os: String,
    pub mac: String,
    pub tracking: TrackingMethod,
    pub ec2_instance_id: Option<String>,
    pub alive: bool,
    /// When set, scans "test" the host but fail to authenticate: detections are not bumped.
    pub auth_failure: bool,
    pub asset_groups: Vec<u32>,
    pub sites: Vec<u32>,
    pub base: BaseVulns,
}

/// A knowledge-base entry, shared by the Qualys KB and the Nexpose vulnerability catalogue.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KbEntry {
    pub qid: u32,
    pub title: String,
    #[serde(default = "default_severity")]
    pub severity: u8,
    #[serde(default)]
    pub cvss2: f32,
    #[serde(default)]
    pub cvss3: f32,
    #[serde(default)]
    pub cves: Vec<String>,
    #[serde(default = "default_category")]
    pub category: String,
    #[serde(default)]
    pub diagnosis: String,
    #[serde(default)]
    pub consequence: String,
    #[serde(default)]
    pub solution: String,
    #[serde(default)]
    pub patchable: bool,
    #[serde(default)]
    pub kernel_related: bool,
    #[serde(default = "default_port")]
    pub port: u16,
    #[serde(default = "default_proto")]
    pub proto: Proto,
    #[serde(default = "default_published")]
    pub published: DateTime<Utc>,
    #[serde(default = "default_published")]
    pub modified: DateTime<Utc>,
}

fn default_severity() -> u8 {
    3
}
fn default_category() -> String {
    "General remote services".into()
}
fn default_port() -> u16 {
    443
}
fn default_proto() -> Proto {
    Proto::Tcp
}
fn default_published() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2020, 1, 15, 0, 0, 0)
        .single()
        .unwrap_or_else(Utc::now)
}

impl KbEntry {
    /// The Nexpose vulnerability id for this entry (no dots: Aegis escapes them).
    pub fn nexpose_id(&self) -> String {
        format!("sim-vuln-{}", self.qid)
    }
    pub fn nexpose_check_id(&self) -> String {
        format!("sim-check-{}", self.qid)
    }
    pub fn nexpose_solution_id(&self) -> String {
        format!("sim-solution-{}", self.qid)
    }
}

/// Parse a Nexpose vulnerability/check/solution id back to its QID.
pub fn qid_from_nexpose_id(id: &str) -> Option<u32> {
    id.strip_prefix("sim-vuln-")
        .or_else(|| id.strip_prefix("sim-check-"))
        .or_else(|| id.strip_prefix("sim-solution-"))
        .and_then(|s| s.parse().ok())
}

/// What a perfect scanner would see for one vulnerability instance right now.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TruthEntry {
    pub vulnerable: bool,
    pub proof: Option<String>,
}

/// How far the virtual clock can be moved ahead of real time (100 years).
pub const MAX_CLOCK_OFFSET: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Largest estate the generator builds.
pub const MAX_GENERATED_HOSTS: usize = 1_000_000;

/// The virtual clock: real time plus an offset that tests can advance.
#[derive(Debug, Default)]
pub struct Clock {
    offset_ms: AtomicI64,
}

impl Clock {
    pub fn now(&self) -> DateTime<Utc> {
        let real = Utc::now();
        real.checked_add_signed(chrono::Duration::milliseconds(
            self.offset_ms.load(Ordering::Relaxed),
        ))
        .unwrap_or(real)
    }
    /// Move forward; the total offset is capped at [`MAX_CLOCK_OFFSET`].
    pub fn advance(&self, by: Duration) {
        let ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        let cap = MAX_CLOCK_OFFSET.as_millis() as i64;
        let _ = self
            .offset_ms
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |cur| {
                Some(cur.saturating_add(ms).min(cap))
            });
    }
    pub fn offset(&self) -> Duration {
        Duration::from_millis(self.offset_ms.load(Ordering::Relaxed).max(0) as u64)
    }
}

/// Hosts, knowledge base and truth.
#[derive(Debug, Default)]
pub struct Estate {
    pub spec: Option<EstateSpec>,
    pub hosts: Vec<Host>,
    pub kb: Vec<KbEntry>,
    kb_index: HashMap<u32, usize>,
    by_ip: HashMap<Ipv4Addr, HostIdx>,
    by_qualys_id: HashMap<u64, HostIdx>,
    by_nexpose_id: HashMap<u64, HostIdx>,
    /// Truth overrides; hosts without an entry have their base vulnerabilities, all vulnerable.
    pub truth: HashMap<HostIdx, BTreeMap<VulnKey, TruthEntry>>,
    /// The moment the estate was generated; base detections were "last found" then.
    pub generated_at: DateTime<Utc>,
    /// Keys of the generated KB entries; generated hosts pick their base vulnerabilities here.
    generated_keys: Vec<VulnKey>,
}

/// splitmix64: a tiny, well-mixed hash for deterministic generation.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

const PRODUCTS: &[&str] = &[
    "OpenSSH",
    "Apache HTTP Server",
    "Microsoft Windows SMB",
    "OpenSSL",
    "nginx",
    "Microsoft RDP",
    "Net-SNMP",
    "NTP",
    "Postfix",
    "MySQL",
    "Apache Tomcat",
    "Linux Kernel",
];
const KINDS: &[&str] = &[
    "Remote Code Execution",
    "Denial of Service",
    "Information Disclosure",
    "Privilege Escalation",
    "Security Bypass",
    "Buffer Overflow",
];
const PORTS: &[(u16, Proto)] = &[
    (22, Proto::Tcp),
    (80, Proto::Tcp),
    (445, Proto::Tcp),
    (443, Proto::Tcp),
    (443, Proto::Tcp),
    (3389, Proto::Tcp),
    (161, Proto::Udp),
    (123, Proto::Udp),
    (25, Proto::Tcp),
    (3306, Proto::Tcp),
    (8080, Proto::Tcp),
    (22, Proto::Tcp),
];
const OSES: &[&str] = &[
    "Windows Server 2016 Standard",
    "Ubuntu Linux 18.04",
    "Red Hat Enterprise Linux Server 7.9",
    "CentOS Linux 7.8",
    "Amazon Linux 2",
    "Windows 10 Enterprise",
    "Cisco IOS 15.2",
    "VMware ESXi 6.7",
];
const CATEGORIES: &[&str] = &[
    "General remote services",
    "Windows",
    "Web server",
    "Local",
    "Database",
    "SNMP",
];

/// Size of the generated KB for an estate with `per_host` detections per host.
fn generated_kb_len(per_host: usize) -> usize {
    (per_host * 2).max(200)
}

/// The generated KB entry number `i` (independent of the seed so QIDs are stable).
fn generated_kb_entry(i: usize) -> KbEntry {
    let h = mix(i as u64 ^ 0xA5A5_0000);
    let qid = 11_000 + (i as u32) * 7;
    let product = PRODUCTS[i % PRODUCTS.len()];
    let kind = KINDS[(h as usize / 7) % KINDS.len()];
    let cvss2 = ((h % 91) as f32 + 10.0) / 10.0;
    let cvss3 = (((h >> 8) % 91) as f32 + 10.0) / 10.0;
    let severity = (1 + (cvss3 / 2.1) as u8).min(5);
    let (port, proto) = PORTS[(h as usize >> 16) % PORTS.len()];
    let year = 2015 + (i % 8);
    let published = default_published() - chrono::Duration::days((h % 900) as i64);
    KbEntry {
        qid,
        title: format!("{product} {kind} Vulnerability (QID {qid})"),
        severity,
        cvss2,
        cvss3,
        cves: vec![format!("CVE-{year}-{:04}", 1000 + (h % 9000))],
        category: CATEGORIES[i % CATEGORIES.len()].to_string(),
        diagnosis: format!("{product} is prone to a {} issue.", kind.to_lowercase()),
        consequence: format!("Successful exploitation allows {}.", kind.to_lowercase()),
        solution: format!("Upgrade {product} to the latest vendor release."),
        patchable: !h.is_multiple_of(4),
        kernel_related: product == "Linux Kernel",
        port,
        proto,
        published,
        modified: published + chrono::Duration::days(30),
    }
}

/// Fixture describing hosts explicitly (see README).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct WorldFixture {
    #[serde(default)]
    pub estate: Option<EstateSpec>,
    #[serde(default)]
    pub hosts: Vec<HostFixture>,
    #[serde(default)]
    pub kb: Vec<KbEntry>,
    #[serde(default)]
    pub asset_groups: Vec<crate::qualys::state::AssetGroupFixture>,
    #[serde(default)]
    pub appliances: Vec<crate::qualys::state::Appliance>,
    #[serde(default)]
    pub sites: Vec<crate::nexpose::state::SiteFixture>,
    #[serde(default)]
    pub jira_users: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HostFixture {
    pub ip: Ipv4Addr,
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub os: Option<String>,
    #[serde(default)]
    pub qualys_host_id: Option<u64>,
    #[serde(default)]
    pub nexpose_asset_id: Option<u64>,
    #[serde(default = "yes")]
    pub alive: bool,
    #[serde(default)]
    pub tracking_method: TrackingMethod,
    #[serde(default)]
    pub ec2_instance_id: Option<String>,
    #[serde(default)]
    pub asset_group_ids: Vec<u32>,
    #[serde(default)]
    pub site_ids: Vec<u32>,
    #[serde(default)]
    pub vulns: Vec<VulnFixture>,
}

fn yes() -> bool {
    true
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VulnFixture {
    pub qid: u32,
    #[serde(default = "default_port")]
    pub port: u16,
    #[serde(default = "default_proto", alias = "proto")]
    pub protocol: Proto,
    #[serde(default)]
    pub proof: Option<String>,
}

/// Hosts per generated asset group / site.
pub const HOSTS_PER_BLOCK: usize = 1000;
/// Qualys host id of the first generated host.
pub const FIRST_GENERATED_QUALYS_ID: u64 = 100_001;
/// First IP of the generated estate.
const FIRST_GENERATED_IP: u32 = u32::from_be_bytes([10, 1, 0, 1]);

impl Estate {
    /// Build an estate from a fixture (which may itself ask for a generated part).
    pub fn build(fixture: &WorldFixture, now: DateTime<Utc>) -> Result<Estate, SimError> {
        let mut estate = Estate {
            spec: fixture.estate,
            generated_at: now,
            ..Default::default()
        };
        let per_host = fixture
            .estate
            .map(|e| e.detections_per_host)
            .unwrap_or(0)
            .min(10_000);
        estate.kb = (0..generated_kb_len(per_host))
            .map(generated_kb_entry)
            .collect();
        estate.generated_keys = estate
            .kb
            .iter()
            .map(|k| VulnKey {
                qid: k.qid,
                port: k.port,
                proto: k.proto,
            })
            .collect();
        for entry in &fixture.kb {
            match estate.kb.iter_mut().find(|k| k.qid == entry.qid) {
                Some(existing) => *existing = entry.clone(),
                None => estate.kb.push(entry.clone()),
            }
        }
        if let Some(spec) = fixture.estate {
            if spec.hosts > MAX_GENERATED_HOSTS || spec.detections_per_host > 10_000 {
                return Err(SimError::BadFixture(format!(
                    "estate too large: at most {MAX_GENERATED_HOSTS} hosts and 10000 detections per host"
                )));
            }
            for ordinal in 0..spec.hosts {
                estate.hosts.push(generated_host(spec.seed, ordinal));
            }
        }
        for (n, hf) in fixture.hosts.iter().enumerate() {
            let qualys_id = hf.qualys_host_id.unwrap_or(1001 + n as u64);
            let nexpose_id = hf.nexpose_asset_id.unwrap_or(qualys_id);
            let mut vulns = Vec::new();
            for v in &hf.vulns {
                if !estate.kb.iter().any(|k| k.qid == v.qid) {
                    let mut entry = generated_kb_entry(v.qid as usize % 997);
                    entry.qid = v.qid;
                    entry.title = format!("Simulated vulnerability QID {}", v.qid);
                    entry.port = v.port;
                    entry.proto = v.protocol;
                    estate.kb.push(entry);
                }
                vulns.push((
                    VulnKey {
                        qid: v.qid,
                        port: v.port,
                        proto: v.protocol,
                    },
                    v.proof.clone(),
                ));
            }
            vulns.sort_by_key(|(k, _)| *k);
            vulns.dedup_by_key(|(k, _)| *k);
            let octets = hf.ip.octets();
            estate.hosts.push(Host {
                qualys_id,
                nexpose_id,
                ip: hf.ip,
                hostname: hf
                    .hostname
                    .clone()
                    .unwrap_or_else(|| format!("host-{}.sim.example", hf.ip).replace('.', "-")),
                os: hf.os.clone().unwrap_or_else(|| "Ubuntu Linux 18.04".into()),
                mac: format!(
                    "00:50:56:{:02X}:{:02X}:{:02X}",
                    octets[1], octets[2], octets[3]
                ),
                tracking: hf.tracking_method,
                ec2_instance_id: hf.ec2_instance_id.clone(),
                alive: hf.alive,
                auth_failure: false,
                asset_groups: hf.asset_group_ids.clone(),
                sites: hf.site_ids.clone(),
                base: BaseVulns::Explicit(vulns),
            });
        }
        estate.hosts.sort_by_key(|h| h.qualys_id);
        estate.kb.sort_by_key(|k| k.qid);
        for (i, k) in estate.kb.iter().enumerate() {
            estate.kb_index.insert(k.qid, i);
        }
        for (idx, h) in estate.hosts.iter().enumerate() {
            if estate.by_qualys_id.insert(h.qualys_id, idx).is_some() {
                return Err(SimError::BadFixture(format!(
                    "duplicate Qualys host id {}",
                    h.qualys_id
                )));
            }
            if estate.by_ip.insert(h.ip, idx).is_some() {
                return Err(SimError::BadFixture(format!("duplicate host IP {}", h.ip)));
            }
            if estate.by_nexpose_id.insert(h.nexpose_id, idx).is_some() {
                return Err(SimError::BadFixture(format!(
                    "duplicate Nexpose asset id {}",
                    h.nexpose_id
                )));
            }
        }
        Ok(estate)
    }

    pub fn kb_entry(&self, qid: u32) -> Option<&KbEntry> {
        self.kb_index.get(&qid).map(|&i| &self.kb[i])
    }
    pub fn host_by_ip(&self, ip: Ipv4Addr) -> Option<HostIdx> {
        self.by_ip.get(&ip).copied()
    }
    pub fn host_by_qualys_id(&self, id: u64) -> Option<HostIdx> {
        self.by_qualys_id.get(&id).copied()
    }
    pub fn host_by_nexpose_id(&self, id: u64) -> Option<HostIdx> {
        self.by_nexpose_id.get(&id).copied()
    }
    pub fn host_by_instance_id(&self, id: &str) -> Option<HostIdx> {
        self.hosts
            .iter()
            .position(|h| h.ec2_instance_id.as_deref() == Some(id))
    }

    /// Base vulnerabilities of a host (as seeded), sorted by key.
    pub fn base_vulns(&self, idx: HostIdx) -> Vec<(VulnKey, Option<String>)> {
        match &self.hosts[idx].base {
            BaseVulns::Explicit(v) => v.clone(),
            BaseVulns::Generated { ordinal } => {
                let Some(spec) = self.spec else {
                    return Vec::new();
                };
                let len = self.generated_keys.len().max(1);
                let n = spec.detections_per_host.min(self.generated_keys.len());
                let start = (mix(spec.seed ^ ((*ordinal as u64) << 20)) as usize) % len;
                let mut out: Vec<(VulnKey, Option<String>)> = (0..n)
                    .map(|j| (self.generated_keys[(start + j) % len], None))
                    .collect();
                out.sort_by_key(|(k, _)| *k);
                out
            }
        }
    }

    /// What a perfect scanner would see on this host right now: every key ever vulnerable,
    /// with whether it is vulnerable now.
    pub fn truth_for_host(&self, idx: HostIdx) -> BTreeMap<VulnKey, TruthEntry> {
        let mut out: BTreeMap<VulnKey, TruthEntry> = self
            .base_vulns(idx)
            .into_iter()
            .map(|(k, proof)| {
                (
                    k,
                    TruthEntry {
                        vulnerable: true,
                        proof,
                    },
                )
            })
            .collect();
        if let Some(over) = self.truth.get(&idx) {
            for (k, t) in over {
                out.insert(*k, t.clone());
            }
        }
        out
    }

    /// Change the truth for one vulnerability instance.
    pub fn set_truth(
        &mut self,
        idx: HostIdx,
        key: VulnKey,
        vulnerable: bool,
        proof: Option<String>,
    ) {
        self.truth
            .entry(idx)
            .or_default()
            .insert(key, TruthEntry { vulnerable, proof });
    }

    /// A proof text for a detection that has none recorded.
    pub fn default_proof(&self, key: VulnKey) -> String {
        match self.kb_entry(key.qid) {
            Some(k) => format!(
                "Vulnerable {} detected on {}/{}",
                k.title.split(' ').next().unwrap_or("service"),
                key.port,
                key.proto.as_str()
            ),
            None => format!("Vulnerable service on {}/{}", key.port, key.proto.as_str()),
        }
    }
}

fn generated_host(seed: u64, ordinal: usize) -> Host {
    let h = mix(seed.wrapping_mul(31) ^ ordinal as u64);
    let ip = Ipv4Addr::from(FIRST_GENERATED_IP + ordinal as u32);
    let octets = ip.octets();
    let block = (ordinal / HOSTS_PER_BLOCK) as u32;
    let os = OSES[(h % OSES.len() as u64) as usize];
    Host {
        qualys_id: FIRST_GENERATED_QUALYS_ID + ordinal as u64,
        nexpose_id: 1 + ordinal as u64,
        ip,
        hostname: format!("host-{ordinal:05}.sim.example"),
        os: os.to_string(),
        mac: format!(
            "00:50:56:{:02X}:{:02X}:{:02X}",
            octets[1], octets[2], octets[3]
        ),
        tracking: TrackingMethod::Ip,
        ec2_instance_id: None,
        alive: true,
        auth_failure: false,
        asset_groups: vec![1 + block],
        sites: vec![1 + block],
        base: BaseVulns::Generated {
            ordinal: ordinal as u32,
        },
    }
}

/// Everything the simulators share, behind one lock (see [`crate::SharedWorld`]).
#[derive(Debug)]
pub struct World {
    pub estate: Estate,
    pub qualys: QualysState,
    pub nexpose: NexposeState,
    pub jira: JiraState,
}

impl World {
    pub fn build(
        fixture: &WorldFixture,
        cfg: &crate::SimConfig,
        now: DateTime<Utc>,
    ) -> Result<World, SimError> {
        let estate = Estate::build(fixture, now)?;
        let qualys = QualysState::new(&estate, fixture);
        let nexpose = NexposeState::new(&estate, fixture);
        let jira = JiraState::new(cfg, fixture, now);
        Ok(World {
            estate,
            qualys,
            nexpose,
            jira,
        })
    }

    /// Advance scan lifecycles to `now`, applying the truth of scans that finished.
    pub fn tick(&mut self, now: DateTime<Utc>, timing: &crate::ScanTiming) {
        self.qualys.tick(&self.estate, now, timing);
        self.nexpose.tick(&mut self.estate, now, timing);
    }
}

/// Format like Qualys and RFC 3339: `2021-03-04T05:06:07Z`.
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Format like JIRA: `2021-03-04T05:06:07.000+0000`.
pub fn jira_datetime(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.3f%z").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_estate_is_deterministic_per_seed() {
        let f = WorldFixture {
            estate: Some(EstateSpec {
                hosts: 10,
                detections_per_host: 5,
                seed: 7,
            }),
            ..Default::default()
        };
        let a = Estate::build(&f, Utc::now()).expect("estate");
        let b = Estate::build(&f, Utc::now()).expect("estate");
        for i in 0..10 {
            assert_eq!(a.base_vulns(i), b.base_vulns(i));
            assert_eq!(a.base_vulns(i).len(), 5);
        }
        assert_eq!(a.hosts[3].ip, Ipv4Addr::new(10, 1, 0, 4));
    }

    #[test]
    fn jira_dates_have_offset_without_colon() {
        let t = Utc
            .with_ymd_and_hms(2020, 4, 21, 17, 18, 30)
            .single()
            .expect("date");
        assert_eq!(jira_datetime(t), "2020-04-21T17:18:30.000+0000");
        assert_eq!(rfc3339(t), "2020-04-21T17:18:30Z");
    }
}

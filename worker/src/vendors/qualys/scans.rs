//! Qualys rescans (spec `original-jobs-rescan.md` §2.5, §3.3, §4.6;
//! `original-vendor-apis.md` §2.5–§2.8): launching vulnerability rescans with a
//! temporary static search list and a copy of the template option profile,
//! discovery scans with a copy of the discovery profile, the scan status, the
//! results (host detections of the scan's targets and the dead hosts of the
//! scan summary), cancelling and cleaning up.
//!
//! Differences from the original, on purpose:
//! * an IP whose asset group has no online appliance (and is not external)
//!   skips its ticket only, with a log, instead of failing the whole batch;
//! * the concurrent-scan limit is retried with doubling backoff up to a bound
//!   (`concurrent_scan_retry_seconds`, default 60, × `concurrent_scan_retries`,
//!   default 6), not forever;
//! * the option profile and search list of a launch that fails are deleted at
//!   once, and ScanSyncJob deletes those of scans that fail or are abandoned.
//!
//! EC2 rescans (groups in `ec2_scan_settings`, devices tracked by EC2):
//! [`split_ec2`] takes those targets off the IP path; each group's instances
//! (one region) are launched ten per scan with `ec2_instance_ids`,
//! `ec2_endpoint`, `connector_name` and `iscanner_name`, through the same
//! [`QualysScans::launch_bundle`] (search list, profile copy, launch intent).
//! Their results are the scanned instances' hosts, read by Qualys host ID.
//!
//! These responses are small, so they are read whole and picked apart with
//! [`blocks`] and [`tag`] rather than streamed — except the list of running
//! scheduled scans (a whole subscription's), read as a stream with
//! [`XmlDoc`].
//!
//! Scheduled scans (`"scheduled": true` in the scan object, tracked by
//! ScanSyncJob's `scheduled_scans`): found by exact title among the running
//! ones (`scan/?action=list&type=Scheduled&state=Running,Paused,Queued,Loading`),
//! polled like launched scans, and their results are every detection of their
//! asset group(s), with no dead hosts and nothing to clean up.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use chrono::Utc;
use futures::future::BoxFuture;
use futures::StreamExt;
use reqwest::Method;
use serde_json::{json, Map, Value};
use tokio_util::sync::CancellationToken;

use aegis_shared::model::source_config::{SourceConfig, Vendor};
use aegis_shared::source_http::{RequestSpec, SourceClient};

use super::xml::{XmlDoc, XmlEvent};
use super::{detections, q, QualysScanner, GROUP_PATH};
use crate::vendors::scanner::{spawn_stream, HostBatch, ScannedHost, ScannerError};
use crate::vendors::scans::{
    scan_field, unique_name, LaunchJournal, LaunchReport, LaunchedScan, ScanKind, ScanLauncher,
    ScanResults, ScanTarget, ScheduledScan,
};

const APPLIANCE_PATH: &str = "/api/2.0/fo/appliance/";
const SCAN_PATH: &str = "/api/2.0/fo/scan/";
const SUMMARY_PATH: &str = "/api/2.0/fo/scan/summary/";
const PROFILE_PATH: &str = "/api/2.0/fo/subscription/option_profile/";
const PROFILE_VM_PATH: &str = "/api/2.0/fo/subscription/option_profile/vm/";
const SEARCH_LIST_PATH: &str = "/api/2.0/fo/qid/search_list/static/";

/// The scan settings of the Qualys SourceConfig payload.
#[derive(Clone, Debug)]
struct Settings {
    option_profile_id: String,
    discovery_option_profile_id: String,
    groups: Vec<String>,
    external_groups: Vec<String>,
    rescan_name_format: String,
    option_profile_format: String,
    search_list_format: String,
    retry_first: Duration,
    retries: u32,
    /// `ec2_scan_settings`: asset group ID → how its EC2 instances are scanned.
    ec2: BTreeMap<String, Ec2Settings>,
}

/// One group's entry of `ec2_scan_settings`:
/// `{"connector_name", "scanner_name", "region"}` (`region` is ours, optional:
/// the AWS region of instances whose `Device.Region` is empty).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Ec2Settings {
    connector_name: String,
    scanner_name: String,
    region: String,
}

fn ec2_settings(v: Option<&Value>) -> BTreeMap<String, Ec2Settings> {
    let mut out = BTreeMap::new();
    if let Some(Value::Object(groups)) = v {
        for (group, s) in groups {
            let Value::Object(s) = s else { continue };
            out.insert(
                group.trim().to_string(),
                Ec2Settings {
                    connector_name: text(s, "connector_name", ""),
                    scanner_name: text(s, "scanner_name", ""),
                    region: text(s, "region", ""),
                },
            );
        }
    }
    out
}

/// Instance IDs per EC2 scan (Qualys's limit for `ec2_instance_ids`).
const EC2_INSTANCES_PER_SCAN: usize = 10;

fn ids(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| match x {
                Value::String(s) => Some(s.trim().to_string()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            })
            .filter(|s| !s.is_empty())
            .collect(),
        Some(Value::String(s)) => s
            .split(',')
            .map(|x| x.trim().to_string())
            .filter(|x| !x.is_empty())
            .collect(),
        _ => Vec::new(),
    }
}

fn text(p: &Map<String, Value>, key: &str, default: &str) -> String {
    match p.get(key) {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => default.to_string(),
    }
}

/// `format` with its one `%s` replaced (appended when there is none).
fn fill(format: &str, value: &str) -> String {
    if format.contains("%s") {
        format.replacen("%s", value, 1)
    } else {
        format!("{format} {value}")
    }
}

/// The Qualys [`ScanLauncher`].
pub struct QualysScans {
    scanner: QualysScanner,
    settings: Settings,
}

impl QualysScanner {
    /// Sends a Qualys call once (launches, imports and creates are not
    /// idempotent), with an optional XML body, and fails on a non-200 answer
    /// or a SIMPLE_RETURN carrying an error CODE.
    async fn call_text(
        &self,
        method: Method,
        path: &str,
        query: &[(String, String)],
        body: Option<String>,
        idempotent: bool,
    ) -> Result<String, ScannerError> {
        let mut spec = RequestSpec::new(method, path, path).idempotent(idempotent);
        for (k, v) in query {
            spec = spec.query(k.clone(), v.clone());
        }
        if let Some(b) = body {
            spec = spec.body(b);
        }
        let response = self.client.send(spec).await?;
        if response.status().as_u16() != 200 {
            return Err(super::xml::status_error(response, self.source_config(), path).await);
        }
        let body = response.text().await?;
        if body.contains("<SIMPLE_RETURN") {
            if let Some(code) = tag(&body, "CODE").filter(|c| c != "0") {
                return Err(ScannerError::Vendor {
                    source_config: self.source_config().to_string(),
                    endpoint: path.to_string(),
                    vendor: "Qualys",
                    code,
                    text: tag(&body, "TEXT").unwrap_or_default(),
                });
            }
        }
        Ok(body)
    }
}

/// The inner text of every `<name>` / `<name …>` element (not nested in itself).
pub fn blocks<'a>(doc: &'a str, name: &str) -> Vec<&'a str> {
    let mut out = Vec::new();
    let close = format!("</{name}>");
    let mut rest = doc;
    loop {
        let Some(start) = find_open(rest, name) else {
            return out;
        };
        let after = &rest[start..];
        let Some(gt) = after.find('>') else {
            return out;
        };
        if after[..gt].ends_with('/') {
            out.push("");
            rest = &after[gt + 1..];
            continue;
        }
        let body = &after[gt + 1..];
        let Some(end) = body.find(&close) else {
            return out;
        };
        out.push(&body[..end]);
        rest = &body[end + close.len()..];
    }
}

fn find_open(doc: &str, name: &str) -> Option<usize> {
    let open = format!("<{name}");
    let mut from = 0;
    while let Some(i) = doc[from..].find(&open) {
        let at = from + i;
        match doc[at + open.len()..].chars().next() {
            Some('>') | Some(' ') | Some('/') | Some('\n') | Some('\t') => return Some(at),
            _ => from = at + open.len(),
        }
    }
    None
}

/// The first `<name>` element's text: CDATA unwrapped, entities decoded, trimmed.
pub fn tag(doc: &str, name: &str) -> Option<String> {
    blocks(doc, name).first().map(|t| unescape(t))
}

fn unescape(t: &str) -> String {
    let t = t.trim();
    let t = t
        .strip_prefix("<![CDATA[")
        .and_then(|x| x.strip_suffix("]]>"))
        .map(str::to_string)
        .unwrap_or_else(|| {
            t.replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&quot;", "\"")
                .replace("&apos;", "'")
                .replace("&amp;", "&")
        });
    t.trim().to_string()
}

fn xml_escape(t: &str) -> String {
    t.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A SIMPLE_RETURN item's VALUE by KEY (case-insensitive).
fn item(doc: &str, key: &str) -> Option<String> {
    blocks(doc, "ITEM").into_iter().find_map(|i| {
        tag(i, "KEY")
            .filter(|k| k.eq_ignore_ascii_case(key))
            .and_then(|_| tag(i, "VALUE"))
    })
}

/// Expands `a.b.c.d` and `a.b.c.d-e.f.g.h` items of a comma list.
pub fn expand_ips(list: &str) -> Vec<String> {
    let mut out = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => match (
                a.trim().parse::<std::net::Ipv4Addr>(),
                b.trim().parse::<std::net::Ipv4Addr>(),
            ) {
                (Ok(a), Ok(b))
                    if u32::from(b) >= u32::from(a) && u32::from(b) - u32::from(a) <= 65_536 =>
                {
                    for ip in u32::from(a)..=u32::from(b) {
                        out.push(std::net::Ipv4Addr::from(ip).to_string());
                    }
                }
                _ => out.push(part.to_string()),
            },
            None => out.push(part.to_string()),
        }
    }
    out
}

/// An asset group that can be scanned: its appliances that are online, or
/// External — or, with `ec2`, up to ten of its EC2 instances.
#[derive(Clone, Debug)]
struct Bundle {
    group: String,
    appliances: Vec<String>,
    external: bool,
    network_id: String,
    targets: Vec<ScanTarget>,
    ec2: Option<Ec2Scan>,
}

/// The EC2 part of a launch (`ec2_instance_ids`, `ec2_endpoint`,
/// `connector_name`, `iscanner_name`).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Ec2Scan {
    /// Which of the group's EC2 launches this is (in its scan name).
    part: usize,
    instance_ids: Vec<String>,
    region: String,
    connector_name: String,
    scanner_name: String,
}

/// A batch's targets split between the IP path and the EC2 launches.
#[derive(Debug, Default)]
struct Split {
    ip: Vec<ScanTarget>,
    ec2: Vec<Bundle>,
    skipped: Vec<(ScanTarget, String)>,
    failed: Vec<(Vec<ScanTarget>, String)>,
}

/// Splits targets (spec §2.5): a target with an instance ID whose group is in
/// `ec2_scan_settings` is scanned by instance ID, one launch per ten instances
/// of a group; a group whose instances span regions is an error for that
/// group's EC2 tickets only. Everything else takes the IP path.
fn split_ec2(kind: ScanKind, targets: &[ScanTarget], ec2: &BTreeMap<String, Ec2Settings>) -> Split {
    let mut split = Split::default();
    let mut by_group: BTreeMap<&str, Vec<(ScanTarget, String)>> = BTreeMap::new();
    for t in targets {
        let Some(settings) = ec2.get(&t.group).filter(|_| !t.instance_id.is_empty()) else {
            split.ip.push(t.clone());
            continue;
        };
        if kind == ScanKind::Vulnerability && t.vuln_id.parse::<u64>().is_err() {
            split.skipped.push((
                t.clone(),
                format!("VulnerabilityID {:?} is not a QID", t.vuln_id),
            ));
            continue;
        }
        let region = if t.region.is_empty() {
            &settings.region
        } else {
            &t.region
        };
        if region.is_empty() {
            split.skipped.push((
                t.clone(),
                format!(
                    "EC2 instance {} has no region: Device.Region is empty and ec2_scan_settings[{:?}] has no \"region\"",
                    t.instance_id, t.group
                ),
            ));
            continue;
        }
        by_group
            .entry(t.group.as_str())
            .or_default()
            .push((t.clone(), region.clone()));
    }
    for (group, targets) in by_group {
        let settings = &ec2[group];
        let regions: BTreeSet<&str> = targets.iter().map(|(_, r)| r.as_str()).collect();
        if regions.len() > 1 {
            split.failed.push((
                targets.iter().map(|(t, _)| t.clone()).collect(),
                format!(
                    "the EC2 instances of asset group {group} are in more than one region ({}); one EC2 scan covers one region",
                    regions.into_iter().collect::<Vec<_>>().join(", ")
                ),
            ));
            continue;
        }
        let region = targets[0].1.clone();
        let mut instances: Vec<&str> = targets
            .iter()
            .map(|(t, _)| t.instance_id.as_str())
            .collect();
        instances.sort_unstable();
        instances.dedup();
        for (part, ids) in instances.chunks(EC2_INSTANCES_PER_SCAN).enumerate() {
            split.ec2.push(Bundle {
                group: group.to_string(),
                appliances: Vec::new(),
                external: false,
                network_id: String::new(),
                targets: targets
                    .iter()
                    .filter(|(t, _)| ids.contains(&t.instance_id.as_str()))
                    .map(|(t, _)| t.clone())
                    .collect(),
                ec2: Some(Ec2Scan {
                    part,
                    instance_ids: ids.iter().map(|i| i.to_string()).collect(),
                    region: region.clone(),
                    connector_name: settings.connector_name.clone(),
                    scanner_name: settings.scanner_name.clone(),
                }),
            });
        }
    }
    split
}

fn is_concurrency_limit(e: &ScannerError) -> bool {
    let t = e.to_string();
    t.contains("concurrent scans") && t.contains("limit has already been reached")
}

impl QualysScans {
    pub fn new(sc: &SourceConfig, client: SourceClient) -> Result<Self, String> {
        let scanner = QualysScanner::new(sc, client)?;
        let p = sc.payload().map_err(|e| e.to_string())?;
        let settings = Settings {
            option_profile_id: text(&p, "optionProfileId", ""),
            discovery_option_profile_id: text(&p, "discoveryOptionProfileId", ""),
            groups: ids(p.get("groups")),
            external_groups: ids(p.get("external_groups")),
            rescan_name_format: text(&p, "rescan_name_format", "Aegis Rescan %s"),
            option_profile_format: text(&p, "option_profile_format", "Aegis Option Profile %s"),
            search_list_format: text(&p, "search_list_format", "Aegis Search List %s"),
            retry_first: Duration::from_secs(
                p.get("concurrent_scan_retry_seconds")
                    .and_then(Value::as_u64)
                    .unwrap_or(60),
            ),
            retries: p
                .get("concurrent_scan_retries")
                .and_then(Value::as_u64)
                .unwrap_or(6) as u32,
            ec2: ec2_settings(p.get("ec2_scan_settings")),
        };
        Ok(QualysScans { scanner, settings })
    }

    fn sc(&self) -> &str {
        self.scanner.source_config()
    }

    /// Scannable groups among the configured ones: group ID → bundle.
    async fn bundles(&self) -> Result<BTreeMap<String, Bundle>, ScannerError> {
        let mut wanted: Vec<String> = self.settings.groups.clone();
        wanted.extend(self.settings.external_groups.iter().cloned());
        wanted.sort();
        wanted.dedup();
        if wanted.is_empty() {
            return Ok(BTreeMap::new());
        }
        let doc = self
            .scanner
            .call_text(
                Method::POST,
                GROUP_PATH,
                &[
                    q("action", "list"),
                    q("show_attributes", "ALL"),
                    q("ids", wanted.join(",")),
                ],
                None,
                true,
            )
            .await?;
        let mut groups = Vec::new();
        let mut appliance_ids = BTreeSet::new();
        for g in blocks(&doc, "ASSET_GROUP") {
            let id = tag(g, "ID").unwrap_or_default();
            let apps: Vec<String> = tag(g, "APPLIANCE_IDS")
                .unwrap_or_default()
                .split(',')
                .map(|a| a.trim().to_string())
                .filter(|a| !a.is_empty())
                .collect();
            appliance_ids.extend(apps.iter().cloned());
            groups.push((id, apps, tag(g, "NETWORK_ID").unwrap_or_default()));
        }
        let mut online = BTreeSet::new();
        if !appliance_ids.is_empty() {
            let doc = self
                .scanner
                .call_text(
                    Method::POST,
                    APPLIANCE_PATH,
                    &[
                        q("action", "list"),
                        q(
                            "ids",
                            appliance_ids.into_iter().collect::<Vec<_>>().join(","),
                        ),
                    ],
                    None,
                    true,
                )
                .await?;
            for a in blocks(&doc, "APPLIANCE") {
                if tag(a, "STATUS").is_some_and(|s| s.eq_ignore_ascii_case("Online")) {
                    online.extend(tag(a, "ID"));
                }
            }
        }
        let mut out = BTreeMap::new();
        for (id, apps, network_id) in groups {
            let external = self.settings.external_groups.contains(&id);
            let apps: Vec<String> = apps.into_iter().filter(|a| online.contains(a)).collect();
            if external || !apps.is_empty() {
                out.insert(
                    id.clone(),
                    Bundle {
                        group: id,
                        appliances: apps,
                        external,
                        network_id,
                        targets: Vec::new(),
                        ec2: None,
                    },
                );
            }
        }
        Ok(out)
    }

    /// Exports `template`, renames it, attaches the search list (if any) and
    /// imports it; returns the new profile's ID.
    async fn copy_profile(
        &self,
        template: &str,
        search_list: Option<(&str, &str)>,
    ) -> Result<String, ScannerError> {
        let doc = self
            .scanner
            .call_text(
                Method::GET,
                PROFILE_PATH,
                &[q("action", "export"), q("option_profile_id", template)],
                None,
                true,
            )
            .await?;
        let Some(profile) = blocks(&doc, "OPTION_PROFILE")
            .first()
            .map(|s| s.to_string())
        else {
            return Err(ScannerError::Document {
                source_config: self.sc().to_string(),
                endpoint: PROFILE_PATH.into(),
                reason: format!("option profile {template} was not exported"),
                excerpt: doc.chars().take(200).collect(),
            });
        };
        let title = fill(
            &self.settings.option_profile_format,
            &Utc::now()
                .timestamp_nanos_opt()
                .unwrap_or_default()
                .to_string(),
        );
        let mut profile = match (profile.find("<GROUP_NAME>"), profile.find("</GROUP_NAME>")) {
            (Some(a), Some(b)) if b > a => format!(
                "{}<GROUP_NAME><![CDATA[{}]]></GROUP_NAME>{}",
                &profile[..a],
                title,
                &profile[b + "</GROUP_NAME>".len()..]
            ),
            _ => profile,
        };
        if let Some((id, list_title)) = search_list {
            let custom = format!(
                "<CUSTOM_LIST><CUSTOM><ID>{id}</ID><TITLE>{}</TITLE></CUSTOM></CUSTOM_LIST>",
                xml_escape(list_title)
            );
            profile = profile.replace("<COMPLETE/>", "");
            if let Some(i) = profile.find("<VULNERABILITY_DETECTION>") {
                profile.insert_str(i + "<VULNERABILITY_DETECTION>".len(), &custom);
            }
        }
        let body = format!(
            "<OPTION_PROFILES><OPTION_PROFILE>{profile}</OPTION_PROFILE></OPTION_PROFILES>"
        );
        let answer = self
            .scanner
            .call_text(
                Method::POST,
                PROFILE_PATH,
                &[q("action", "import")],
                Some(body),
                false,
            )
            .await?;
        // The new profile's ID is the first ITEM's KEY (sic).
        blocks(&answer, "ITEM")
            .first()
            .and_then(|i| tag(i, "KEY"))
            .filter(|k| !k.is_empty())
            .ok_or_else(|| ScannerError::Document {
                source_config: self.sc().to_string(),
                endpoint: PROFILE_PATH.into(),
                reason: "the import answer names no option profile".into(),
                excerpt: answer.chars().take(200).collect(),
            })
    }

    async fn create_search_list(&self, qids: &[String]) -> Result<(String, String), ScannerError> {
        let title = fill(
            &self.settings.search_list_format,
            &Utc::now()
                .timestamp_nanos_opt()
                .unwrap_or_default()
                .to_string(),
        );
        let answer = self
            .scanner
            .call_text(
                Method::POST,
                SEARCH_LIST_PATH,
                &[
                    q("action", "create"),
                    q("title", title.clone()),
                    q("qids", qids.join(",")),
                ],
                None,
                false,
            )
            .await?;
        let id = item(&answer, "ID").ok_or_else(|| ScannerError::Document {
            source_config: self.sc().to_string(),
            endpoint: SEARCH_LIST_PATH.into(),
            reason: "the answer names no search list ID".into(),
            excerpt: answer.chars().take(200).collect(),
        })?;
        Ok((id, title))
    }

    async fn delete_profile(&self, id: &str) -> Result<(), ScannerError> {
        self.scanner
            .call_text(
                Method::POST,
                PROFILE_VM_PATH,
                &[q("action", "delete"), q("id", id)],
                None,
                true,
            )
            .await
            .map(drop)
    }

    async fn delete_search_list(&self, id: &str) -> Result<(), ScannerError> {
        self.scanner
            .call_text(
                Method::POST,
                SEARCH_LIST_PATH,
                &[q("action", "delete"), q("id", id)],
                None,
                true,
            )
            .await
            .map(drop)
    }

    /// Deletes a template `<profile>[:<search list>]` unless it is a configured one.
    async fn delete_template(&self, template: &str) -> Result<(), ScannerError> {
        let (profile, list) = match template.split_once(':') {
            Some((p, l)) => (p, Some(l)),
            None => (template, None),
        };
        let configured = [
            self.settings.option_profile_id.as_str(),
            self.settings.discovery_option_profile_id.as_str(),
        ];
        let mut first_error = None;
        if !profile.is_empty() && !configured.contains(&profile) {
            if let Err(e) = self.delete_profile(profile).await {
                if !e.to_string().contains("does not exist") {
                    first_error = Some(e);
                }
            }
        }
        if let Some(list) = list.filter(|l| !l.is_empty()) {
            if let Err(e) = self.delete_search_list(list).await {
                if !e.to_string().contains("does not exist") && first_error.is_none() {
                    first_error = Some(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Launches one bundle's scan, retrying while the concurrent-scan limit is reached.
    async fn launch_bundle(
        &self,
        kind: ScanKind,
        b: &Bundle,
        launch_tag: &str,
        journal: &dyn LaunchJournal,
        cancel: &CancellationToken,
    ) -> Result<LaunchedScan, String> {
        let (template, list) = match kind {
            ScanKind::Vulnerability => {
                if self.settings.option_profile_id.is_empty() {
                    return Err("the Qualys SourceConfig payload has no optionProfileId".into());
                }
                let mut qids: Vec<String> = b.targets.iter().map(|t| t.vuln_id.clone()).collect();
                qids.sort();
                qids.dedup();
                let list = self
                    .create_search_list(&qids)
                    .await
                    .map_err(|e| format!("creating the search list: {e}"))?;
                (self.settings.option_profile_id.clone(), Some(list))
            }
            ScanKind::Discovery => {
                if self.settings.discovery_option_profile_id.is_empty() {
                    return Err(
                        "the Qualys SourceConfig payload has no discoveryOptionProfileId".into(),
                    );
                }
                (self.settings.discovery_option_profile_id.clone(), None)
            }
        };
        let profile = match self
            .copy_profile(
                &template,
                list.as_ref().map(|(i, t)| (i.as_str(), t.as_str())),
            )
            .await
        {
            Ok(p) => p,
            Err(e) => {
                if let Some((id, _)) = &list {
                    let _ = self.delete_search_list(id).await;
                }
                return Err(format!("copying option profile {template}: {e}"));
            }
        };
        let template_id = match &list {
            Some((id, _)) => format!("{profile}:{id}"),
            None => profile.clone(),
        };
        // An EC2 launch is one of several of its group: its part makes the name unique.
        let name_group = match &b.ec2 {
            Some(e) => format!("{}/ec2-{}", b.group, e.part),
            None => b.group.clone(),
        };
        let name = unique_name(
            &fill(&self.settings.rescan_name_format, &Utc::now().to_rfc3339()),
            launch_tag,
            &name_group,
        );
        let mut query = vec![
            q("action", "launch"),
            q("scan_title", name.clone()),
            q("option_id", profile.clone()),
        ];
        match &b.ec2 {
            Some(e) => {
                query.push(q("ec2_instance_ids", e.instance_ids.join(",")));
                query.push(q("ec2_endpoint", e.region.clone()));
                query.push(q("connector_name", e.connector_name.clone()));
                query.push(q("iscanner_name", e.scanner_name.clone()));
            }
            None => {
                let mut ips: Vec<String> = b.targets.iter().map(|t| t.ip.clone()).collect();
                ips.sort();
                ips.dedup();
                query.push(q("ip", ips.join(",")));
                if b.external {
                    query.push(q("iscanner_name", "External"));
                } else {
                    query.push(q("iscanner_id", b.appliances.join(",")));
                }
                if b.network_id.parse::<i64>().unwrap_or(0) > 0 {
                    query.push(q("ip_network_id", b.network_id.clone()));
                }
            }
        }
        let scan_object = |requested: chrono::DateTime<Utc>, reference: Option<&str>| {
            let mut scan = json!({
                "name": name,
                "templateId": template_id,
                "groupId": b.group,
                "engineId": b.appliances,
                // When the launch was requested: nothing this scan found can be older.
                "created": requested.to_rfc3339(),
                "scheduled": false,
            });
            if let Some(e) = &b.ec2 {
                // What the results are read by: the instances and their Qualys host IDs.
                let mut hosts: Vec<&str> = b
                    .targets
                    .iter()
                    .map(|t| t.asset_id.as_str())
                    .filter(|a| !a.is_empty())
                    .collect();
                hosts.sort_unstable();
                hosts.dedup();
                scan["ec2"] = json!({
                    "instanceIds": e.instance_ids,
                    "hostIds": hosts,
                    "endpoint": e.region,
                    "connectorName": e.connector_name,
                    "scannerName": e.scanner_name,
                });
            }
            if let Some(r) = reference {
                scan["scanId"] = json!(r);
            }
            scan
        };
        // Recorded before the scanner is asked: a worker killed past this
        // point leaves a trace that names the scan and its temporary objects.
        if let Err(e) = journal
            .record(&scan_object(Utc::now(), None), &b.targets)
            .await
        {
            if let Err(c) = self.delete_template(&template_id).await {
                tracing::warn!("could not delete option profile/search list {template_id}: {c}");
            }
            return Err(format!("recording the launch: {e}"));
        }
        let mut wait = self.settings.retry_first;
        let mut attempt = 0;
        let mut requested;
        let answer = loop {
            requested = Utc::now();
            match self
                .scanner
                .call_text(Method::POST, SCAN_PATH, &query, None, false)
                .await
            {
                Ok(a) => break Ok(a),
                Err(e) if is_concurrency_limit(&e) && attempt < self.settings.retries => {
                    attempt += 1;
                    tracing::info!(
                        "Qualys concurrent scan limit reached for group {}; retry {attempt}/{} in {}s",
                        b.group,
                        self.settings.retries,
                        wait.as_secs()
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = cancel.cancelled() => break Err("cancelled while waiting for a scan slot".to_string()),
                    }
                    wait = (wait * 2).min(Duration::from_secs(1800));
                }
                Err(e) => break Err(format!("launching the scan: {e}")),
            }
        };
        let reference = answer.and_then(|a| {
            item(&a, "REFERENCE")
                .filter(|r| r.contains("scan"))
                .ok_or_else(|| {
                    format!(
                        "the launch answer names no scan reference: {}",
                        a.chars().take(200).collect::<String>()
                    )
                })
        });
        let reference = match reference {
            Ok(r) => r,
            Err(e) => {
                if let Err(c) = self.delete_template(&template_id).await {
                    tracing::warn!(
                        "could not delete option profile/search list {template_id}: {c}"
                    );
                }
                return Err(e);
            }
        };
        let scan = scan_object(requested, Some(&reference));
        Ok(LaunchedScan {
            scan_id: reference,
            scan,
            targets: b.targets.clone(),
        })
    }

    /// A scheduled scan's results (spec §4.6): every Confirmed detection of its
    /// asset group(s) (`groupId`, a comma list; `tag-` items select by tag), and
    /// no dead hosts — the scan summary of a scan Aegis did not shape is not
    /// trusted to decommission anything.
    async fn scheduled_results(&self, scan: &Value) -> Result<ScanResults, ScannerError> {
        let groups: Vec<String> = scan_field(scan, "groupId")
            .split(',')
            .map(|g| g.trim().to_string())
            .filter(|g| !g.is_empty())
            .collect();
        let query =
            detections::selection(&groups, self.scanner.kernel_filter, None).map_err(|reason| {
                ScannerError::Config {
                    source_config: self.sc().to_string(),
                    reason: format!("scheduled scan {}: {reason}", scan_field(scan, "scanId")),
                }
            })?;
        Ok(ScanResults {
            hosts: self.detections_of(query).await?,
            dead: HashMap::new(),
        })
    }

    /// Every host (with its detections) a host detection query returns.
    async fn detections_of(
        &self,
        query: Vec<(String, String)>,
    ) -> Result<Vec<ScannedHost>, ScannerError> {
        let scanner = self.scanner.clone();
        let mut stream =
            spawn_stream(move |tx| async move { detections::run(&scanner, query, tx).await });
        let mut hosts = Vec::new();
        while let Some(batch) = stream.next().await {
            let batch: HostBatch = batch?;
            hosts.extend(batch.hosts);
        }
        Ok(hosts)
    }

    async fn scan_row(&self, reference: &str) -> Result<String, ScannerError> {
        let doc = self
            .scanner
            .call_text(
                Method::POST,
                SCAN_PATH,
                &[q("action", "list"), q("scan_ref", reference)],
                None,
                true,
            )
            .await?;
        let scans = blocks(&doc, "SCAN");
        match scans.as_slice() {
            [one] => Ok(one.to_string()),
            other => Err(ScannerError::Document {
                source_config: self.sc().to_string(),
                endpoint: SCAN_PATH.into(),
                reason: format!("{} scans listed for {reference}, expected one", other.len()),
                excerpt: doc.chars().take(200).collect(),
            }),
        }
    }
}

/// The instances of an EC2 scan object (its `ec2` key, written at launch).
struct Ec2Targets {
    instance_ids: BTreeSet<String>,
    host_ids: Vec<String>,
}

impl Ec2Targets {
    fn of(scan: &Value) -> Option<Ec2Targets> {
        let e = scan.get("ec2")?;
        let list = |key: &str| -> Vec<String> {
            e.get(key)
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default()
        };
        Some(Ec2Targets {
            instance_ids: list("instanceIds").into_iter().collect(),
            host_ids: list("hostIds"),
        })
    }

    /// A host is one of the scan's targets when its instance ID is (a host
    /// without one counts by its host ID).
    fn covers(&self, h: &ScannedHost) -> bool {
        match &h.instance_id {
            Some(i) => self.instance_ids.contains(i),
            None => self.host_ids.contains(&h.asset_id),
        }
    }
}

/// A scan object of a scan scheduled in Qualys (`"scheduled": true`).
fn is_scheduled(scan: &Value) -> bool {
    scan.get("scheduled").and_then(Value::as_bool) == Some(true)
}

/// Normalises a Qualys scan's STATE and PROCESSED flag.
pub fn normalise(state: &str, processed: bool) -> String {
    let s = state.trim().to_ascii_lowercase();
    match s.as_str() {
        "finished" if !processed => "processing".into(),
        "running" | "loading" => "processing".into(),
        "submitted" => "queued".into(),
        "cancelled" => "canceled".into(),
        _ => s,
    }
}

/// Reads the scans of a `SCAN_LIST_OUTPUT` as they arrive.
async fn read_scan_list(doc: &mut XmlDoc) -> Result<Vec<ScheduledScan>, ScannerError> {
    let mut out = Vec::new();
    let mut scan = ScheduledScan::default();
    loop {
        match doc.next().await? {
            XmlEvent::Start { name } if name == "SCAN" => scan = ScheduledScan::default(),
            // Children of SCAN only: OPTION_PROFILE has a TITLE too.
            XmlEvent::End { name, parent, text } if parent == "SCAN" => match name.as_str() {
                "REF" => scan.reference = text,
                "TITLE" => scan.title = text,
                "LAUNCH_DATETIME" => scan.launched = super::xml::time(&text),
                _ => {}
            },
            XmlEvent::End { name, .. } if name == "SCAN" => {
                let s = std::mem::take(&mut scan);
                if !s.reference.is_empty() {
                    out.push(s);
                }
            }
            XmlEvent::Done => return Ok(out),
            _ => {}
        }
    }
}

impl ScanLauncher for QualysScans {
    fn vendor(&self) -> Vendor {
        Vendor::Qualys
    }

    fn running_scheduled_scans(
        &self,
    ) -> BoxFuture<'_, Result<Option<Vec<ScheduledScan>>, ScannerError>> {
        Box::pin(async move {
            let response = self
                .scanner
                .call(
                    SCAN_PATH,
                    &[
                        q("action", "list"),
                        q("type", "Scheduled"),
                        q("state", "Running,Paused,Queued,Loading"),
                    ],
                )
                .await?;
            let mut doc = XmlDoc::open(response, self.sc(), SCAN_PATH, "SCAN_LIST_OUTPUT").await?;
            Ok(Some(read_scan_list(&mut doc).await?))
        })
    }

    fn launch<'a>(
        &'a self,
        kind: ScanKind,
        targets: &'a [ScanTarget],
        tag: &'a str,
        journal: &'a dyn LaunchJournal,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, LaunchReport> {
        Box::pin(async move {
            let mut report = LaunchReport::default();
            let split = split_ec2(kind, targets, &self.settings.ec2);
            report.skipped = split.skipped;
            report.failed = split.failed;
            for b in &split.ec2 {
                match self.launch_bundle(kind, b, tag, journal, cancel).await {
                    Ok(s) => report.launched.push(s),
                    Err(e) => report.failed.push((b.targets.clone(), e)),
                }
            }
            if split.ip.is_empty() {
                return report;
            }
            let mut bundles = match self.bundles().await {
                Ok(b) => b,
                Err(e) => {
                    report.failed.push((
                        split.ip,
                        format!("listing asset groups and appliances: {e}"),
                    ));
                    return report;
                }
            };
            for t in &split.ip {
                if t.ip.trim().is_empty() || t.ip.parse::<std::net::Ipv4Addr>().is_err() {
                    report.skipped.push((
                        t.clone(),
                        format!("IP Address {:?} is not one IPv4 address", t.ip),
                    ));
                } else if kind == ScanKind::Vulnerability && t.vuln_id.parse::<u64>().is_err() {
                    report.skipped.push((
                        t.clone(),
                        format!("VulnerabilityID {:?} is not a QID", t.vuln_id),
                    ));
                } else if let Some(b) = bundles.get_mut(&t.group) {
                    b.targets.push(t.clone());
                } else {
                    report.skipped.push((
                        t.clone(),
                        format!(
                            "asset group {:?} is not in the Qualys SourceConfig payload (groups, external_groups) or has no online scanner appliance",
                            t.group
                        ),
                    ));
                }
            }
            for b in bundles.values().filter(|b| !b.targets.is_empty()) {
                match self.launch_bundle(kind, b, tag, journal, cancel).await {
                    Ok(s) => report.launched.push(s),
                    Err(e) => report.failed.push((b.targets.clone(), e)),
                }
            }
            report
        })
    }

    fn find_launched<'a>(
        &'a self,
        recorded: &'a Value,
    ) -> BoxFuture<'a, Result<Option<Value>, ScannerError>> {
        Box::pin(async move {
            let name = scan_field(recorded, "name");
            if name.is_empty() {
                return Ok(None);
            }
            // The scan list has no title filter: list the scans launched since
            // shortly before the recorded request and match the title exactly.
            let since = chrono::DateTime::parse_from_rfc3339(scan_field(recorded, "created"))
                .map(|t| t.with_timezone(&Utc))
                .unwrap_or_else(|_| Utc::now() - chrono::Duration::days(2))
                - chrono::Duration::minutes(10);
            let doc = self
                .scanner
                .call_text(
                    Method::POST,
                    SCAN_PATH,
                    &[
                        q("action", "list"),
                        q(
                            "launched_after_datetime",
                            since.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
                        ),
                    ],
                    None,
                    true,
                )
                .await?;
            let found: Vec<(String, Option<String>)> = blocks(&doc, "SCAN")
                .into_iter()
                .filter(|row| tag(row, "TITLE").as_deref() == Some(name))
                .filter_map(|row| {
                    let reference = tag(row, "REF").filter(|r| r.contains("scan"))?;
                    Some((reference, tag(row, "LAUNCH_DATETIME")))
                })
                .collect();
            let Some((reference, launched)) = found.first().cloned() else {
                return Ok(None);
            };
            if found.len() > 1 {
                tracing::warn!(
                    "{} Qualys scans are titled {name:?}; adopting {reference}",
                    found.len()
                );
            }
            let mut scan = recorded.clone();
            scan["scanId"] = json!(reference);
            if let Some(t) = launched
                .as_deref()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            {
                scan["created"] = json!(t.with_timezone(&Utc).to_rfc3339());
            }
            Ok(Some(scan))
        })
    }

    fn status<'a>(&'a self, scan: &'a Value) -> BoxFuture<'a, Result<String, ScannerError>> {
        Box::pin(async move {
            let row = self.scan_row(scan_field(scan, "scanId")).await?;
            let state = blocks(&row, "STATUS")
                .first()
                .and_then(|s| tag(s, "STATE"))
                .unwrap_or_default();
            let processed = tag(&row, "PROCESSED").is_some_and(|p| p == "1");
            Ok(normalise(&state, processed))
        })
    }

    fn results<'a>(&'a self, scan: &'a Value) -> BoxFuture<'a, Result<ScanResults, ScannerError>> {
        Box::pin(async move {
            if is_scheduled(scan) {
                return self.scheduled_results(scan).await;
            }
            let reference = scan_field(scan, "scanId");
            let row = self.scan_row(reference).await?;
            let target = tag(&row, "TARGET").unwrap_or_default().replace(' ', "");
            let launched = tag(&row, "LAUNCH_DATETIME")
                .and_then(|t| super::xml::time(&t))
                .unwrap_or_else(Utc::now);
            // Dead hosts of this scan (the scan summary of its launch day).
            let doc = self
                .scanner
                .call_text(
                    Method::GET,
                    SUMMARY_PATH,
                    &[
                        q("action", "list"),
                        q("scan_date_since", launched.format("%Y-%m-%d").to_string()),
                        q("include_dead", "1"),
                        q("include_excluded", "0"),
                        q("include_unresolved", "0"),
                        q("include_cancelled", "0"),
                        q("include_notvuln", "0"),
                        q("include_blocked", "0"),
                        q("include_duplicate", "0"),
                        q("include_aborted", "0"),
                    ],
                    None,
                    true,
                )
                .await?;
            let mut dead = HashMap::new();
            for s in blocks(&doc, "SCAN_SUMMARY") {
                if tag(s, "SCAN_REF").as_deref() != Some(reference) {
                    continue;
                }
                let proof = format!("<SCAN_SUMMARY>{}</SCAN_SUMMARY>", s.trim());
                for h in blocks(s, "HOST_SUMMARY") {
                    for ip in expand_ips(&unescape(h)) {
                        dead.insert(ip, proof.clone());
                    }
                }
            }
            let mut query = vec![
                q("action", "list"),
                q("truncation_limit", "0"),
                q("show_reopened_info", "1"),
                q("status", "New,Active,Re-Opened,Fixed"),
                q("arf_kernel_filter", self.scanner.kernel_filter.to_string()),
            ];
            let group = scan_field(scan, "groupId");
            if let Some(ec2) = Ec2Targets::of(scan) {
                // An EC2 scan's targets are instances. The detection API has no
                // instance filter: select the scanned hosts by their Qualys host
                // IDs (else the group), with their EC2 metadata, and keep the
                // hosts that are the scanned instances.
                if ec2.host_ids.is_empty() {
                    query.push(q("ag_ids", group));
                } else {
                    query.push(q("ids", ec2.host_ids.join(",")));
                }
                query.push(q("host_metadata", "ec2"));
                query.push(q("host_metadata_fields", "instanceId"));
                let hosts = self.detections_of(query).await?;
                let hosts = hosts.into_iter().filter(|h| ec2.covers(h)).collect();
                return Ok(ScanResults { hosts, dead });
            }
            // Every detection of the scan's targets in its asset group.
            let mut hosts = Vec::new();
            if !target.is_empty() {
                query.push(q("ips", target));
                if !group.is_empty() {
                    query.push(q("ag_ids", group));
                }
                hosts = self.detections_of(query).await?;
            }
            Ok(ScanResults { hosts, dead })
        })
    }

    fn cancel<'a>(&'a self, scan: &'a Value) -> BoxFuture<'a, Result<(), ScannerError>> {
        Box::pin(async move {
            self.scanner
                .call_text(
                    Method::POST,
                    SCAN_PATH,
                    &[
                        q("action", "cancel"),
                        q("scan_ref", scan_field(scan, "scanId")),
                    ],
                    None,
                    true,
                )
                .await
                .map(drop)
        })
    }

    fn clean_up<'a>(&'a self, scan: &'a Value) -> BoxFuture<'a, Result<(), ScannerError>> {
        Box::pin(async move {
            if is_scheduled(scan) {
                // Not Aegis's: a scheduled scan's profile belongs to its schedule.
                return Ok(());
            }
            self.delete_template(scan_field(scan, "templateId")).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(ticket: &str, group: &str, instance: &str, region: &str) -> ScanTarget {
        ScanTarget {
            ticket: ticket.into(),
            ip: "10.0.0.1".into(),
            asset_id: format!("host-{ticket}"),
            vuln_id: "38739".into(),
            group: group.into(),
            instance_id: instance.into(),
            region: region.into(),
        }
    }

    fn settings(region: &str) -> BTreeMap<String, Ec2Settings> {
        BTreeMap::from([(
            "42".to_string(),
            Ec2Settings {
                connector_name: "aws-prod".into(),
                scanner_name: "ec2-scanner".into(),
                region: region.into(),
            },
        )])
    }

    #[test]
    fn ec2_tickets_of_ec2_groups_are_split_from_ip_tickets() {
        let targets = vec![
            target("A-1", "42", "i-1", "us-east-1"),
            target("A-2", "42", "", ""),
            target("A-3", "43", "i-3", "us-east-1"),
        ];
        let split = split_ec2(ScanKind::Vulnerability, &targets, &settings(""));
        let ip: Vec<&str> = split.ip.iter().map(|t| t.ticket.as_str()).collect();
        assert_eq!(
            ip,
            vec!["A-2", "A-3"],
            "no instance ID, or a group without EC2 settings"
        );
        assert_eq!(split.ec2.len(), 1);
        let e = split.ec2[0].ec2.clone().expect("an EC2 launch");
        assert_eq!(e.instance_ids, vec!["i-1"]);
        assert_eq!(
            (
                e.region.as_str(),
                e.connector_name.as_str(),
                e.scanner_name.as_str()
            ),
            ("us-east-1", "aws-prod", "ec2-scanner")
        );
        assert!(split.skipped.is_empty() && split.failed.is_empty());
    }

    #[test]
    fn one_ec2_launch_per_ten_instances_with_every_ticket_of_each_instance() {
        let mut targets: Vec<ScanTarget> = (0..23)
            .map(|n| target(&format!("T-{n}"), "42", &format!("i-{n:02}"), ""))
            .collect();
        targets.push(target("T-two", "42", "i-00", ""));
        let split = split_ec2(ScanKind::Vulnerability, &targets, &settings("eu-west-1"));
        let sizes: Vec<usize> = split
            .ec2
            .iter()
            .map(|b| b.ec2.as_ref().map_or(0, |e| e.instance_ids.len()))
            .collect();
        assert_eq!(sizes, vec![10, 10, 3]);
        let parts: Vec<usize> = split
            .ec2
            .iter()
            .map(|b| b.ec2.as_ref().map_or(9, |e| e.part))
            .collect();
        assert_eq!(
            parts,
            vec![0, 1, 2],
            "each launch of the group gets its own name"
        );
        assert_eq!(
            split.ec2[0].targets.len(),
            11,
            "both tickets of i-00 in its launch"
        );
        assert!(
            split
                .ec2
                .iter()
                .all(|b| b.ec2.as_ref().is_some_and(|e| e.region == "eu-west-1")),
            "the settings' region when Device.Region is empty"
        );
    }

    #[test]
    fn mixed_regions_fail_that_group_only() {
        let mut s = settings("");
        s.insert(
            "44".into(),
            Ec2Settings {
                connector_name: "c".into(),
                scanner_name: "s".into(),
                region: String::new(),
            },
        );
        let targets = vec![
            target("M-1", "42", "i-1", "us-east-1"),
            target("M-2", "42", "i-2", "us-west-2"),
            target("OK-1", "44", "i-3", "us-east-1"),
            target("IP-1", "45", "", ""),
            target("NR-1", "44", "i-4", ""),
        ];
        let split = split_ec2(ScanKind::Vulnerability, &targets, &s);
        assert_eq!(split.failed.len(), 1);
        let (failed, why) = &split.failed[0];
        let keys: Vec<&str> = failed.iter().map(|t| t.ticket.as_str()).collect();
        assert_eq!(keys, vec!["M-1", "M-2"]);
        assert!(
            why.contains("us-east-1, us-west-2") && why.contains("42"),
            "{why}"
        );
        assert_eq!(split.ec2.len(), 1);
        assert_eq!(split.ec2[0].group, "44");
        assert_eq!(split.ip.len(), 1);
        assert_eq!(split.skipped.len(), 1, "no region at all");
        assert!(
            split.skipped[0].1.contains("no region"),
            "{:?}",
            split.skipped
        );
    }

    #[test]
    fn ec2_results_keep_the_scanned_instances_only() {
        let scan = json!({"ec2": {"instanceIds": ["i-1"], "hostIds": ["1001", "1002"]}});
        let e = Ec2Targets::of(&scan).expect("ec2");
        let host = |id: &str, instance: Option<&str>| ScannedHost {
            asset_id: id.into(),
            ip: String::new(),
            hostname: String::new(),
            os: String::new(),
            mac: String::new(),
            instance_id: instance.map(str::to_string),
            tracking_method: Some("EC2".into()),
            detections: Vec::new(),
        };
        assert!(e.covers(&host("1001", Some("i-1"))));
        assert!(
            !e.covers(&host("1002", Some("i-9"))),
            "host now another instance"
        );
        assert!(e.covers(&host("1002", None)));
        assert!(Ec2Targets::of(&json!({"name": "ip scan"})).is_none());
    }

    #[test]
    fn ranges_in_dead_host_lists_expand_to_single_addresses() {
        assert_eq!(
            expand_ips("10.0.0.1, 10.0.0.5-10.0.0.7"),
            vec!["10.0.0.1", "10.0.0.5", "10.0.0.6", "10.0.0.7"]
        );
    }

    #[test]
    fn finished_but_unprocessed_scans_are_still_processing() {
        assert_eq!(normalise("Finished", false), "processing");
        assert_eq!(normalise("Finished", true), "finished");
        assert_eq!(normalise("Canceled", false), "canceled");
        assert_eq!(normalise("Error", false), "error");
        assert_eq!(normalise("Queued", false), "queued");
    }

    #[test]
    fn blocks_and_tags_read_cdata_and_attributes() {
        let doc = "<A><HOST_SUMMARY category=\"dead\">10.0.0.1</HOST_SUMMARY><TITLE><![CDATA[x & y]]></TITLE><E/></A>";
        assert_eq!(blocks(doc, "HOST_SUMMARY"), vec!["10.0.0.1"]);
        assert_eq!(tag(doc, "TITLE").as_deref(), Some("x & y"));
        assert_eq!(blocks(doc, "E"), vec![""]);
    }
}

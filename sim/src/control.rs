//! The control API: out-of-band operations for tests and demos, available in-process as
//! methods on [`Control`] (reached through [`crate::Simulator`]) and over HTTP as JSON under
//! `/_sim/...` on every listener (vendor ports and the dedicated control port).
//!
//! The HTTP handlers are thin wrappers: every operation is implemented once, here, on `Control`.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::faults::{FaultSpec, FaultStatus, Vendor};
use crate::jira::workflow;
use crate::journal::JournalEntry;
use crate::nexpose::state::NexposeState;
use crate::qualys::state::{QualysState, ScanState};
use crate::world::{rfc3339, Proto, VulnKey, WorldFixture};
use crate::{Control, SimError};

/// A scan scheduled in the simulated Qualys subscription (created as its schedule fires).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ScheduledScanSpec {
    /// The schedule's title (`TITLE` in the scan list; what Aegis matches exactly).
    pub title: String,
    /// Targets: a comma list of IPs or `a.b.c.d-e.f.g.h` ranges…
    #[serde(default)]
    pub ips: Option<String>,
    /// …or every host of an asset group.
    #[serde(default)]
    pub asset_group: Option<u32>,
    /// A state to hold it in (`Running`, `Paused`, …) until changed with
    /// `/_sim/qualys/scans/state`; none = the timed lifecycle from now.
    #[serde(default)]
    pub state: Option<String>,
}

/// Changes to a host's liveness or scan behaviour.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct HostPatch {
    pub alive: Option<bool>,
    /// Scans reach the host but cannot authenticate: detections are not updated.
    pub auth_failure: Option<bool>,
}

impl Control {
    /// The current (virtual) time.
    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// Move the virtual clock forward (scans advance accordingly).
    pub fn advance_clock(&self, by: Duration) {
        self.clock.advance(by);
        drop(self.world());
    }

    /// Change the truth for one vulnerability instance on the host with `ip`.
    pub fn set_truth(
        &self,
        ip: Ipv4Addr,
        qid: u32,
        port: u16,
        proto: Proto,
        vulnerable: bool,
        proof: Option<String>,
    ) -> Result<(), SimError> {
        let mut w = self.world();
        let idx = w.estate.host_by_ip(ip).ok_or(SimError::UnknownHost(ip))?;
        w.estate
            .set_truth(idx, VulnKey { qid, port, proto }, vulnerable, proof);
        Ok(())
    }

    /// The host no longer has this vulnerability; scanners see it at their next scan.
    pub fn fix_vulnerability(
        &self,
        ip: Ipv4Addr,
        qid: u32,
        port: u16,
        proto: Proto,
    ) -> Result<(), SimError> {
        self.set_truth(ip, qid, port, proto, false, None)
    }

    /// The host has (again) this vulnerability; scanners see it at their next scan.
    pub fn add_vulnerability(
        &self,
        ip: Ipv4Addr,
        qid: u32,
        port: u16,
        proto: Proto,
    ) -> Result<(), SimError> {
        self.set_truth(ip, qid, port, proto, true, None)
    }

    /// Change a host's liveness / authentication behaviour.
    pub fn patch_host(&self, ip: Ipv4Addr, patch: &HostPatch) -> Result<(), SimError> {
        let mut w = self.world();
        let idx = w.estate.host_by_ip(ip).ok_or(SimError::UnknownHost(ip))?;
        let host = &mut w.estate.hosts[idx];
        if let Some(a) = patch.alive {
            host.alive = a;
        }
        if let Some(a) = patch.auth_failure {
            host.auth_failure = a;
        }
        Ok(())
    }

    /// The host stops answering: scans report it dead.
    pub fn kill_host(&self, ip: Ipv4Addr) -> Result<(), SimError> {
        self.patch_host(
            ip,
            &HostPatch {
                alive: Some(false),
                auth_failure: None,
            },
        )
    }

    pub fn revive_host(&self, ip: Ipv4Addr) -> Result<(), SimError> {
        self.patch_host(
            ip,
            &HostPatch {
                alive: Some(true),
                auth_failure: None,
            },
        )
    }

    /// Description of a host and its truth (for assertions).
    pub fn host_info(&self, ip: Ipv4Addr) -> Result<Value, SimError> {
        let w = self.world();
        let idx = w.estate.host_by_ip(ip).ok_or(SimError::UnknownHost(ip))?;
        let h = &w.estate.hosts[idx];
        let truth: Vec<Value> = w
            .estate
            .truth_for_host(idx)
            .into_iter()
            .map(|(k, t)| json!({"qid": k.qid, "port": k.port, "protocol": k.proto, "vulnerable": t.vulnerable}))
            .collect();
        Ok(json!({
            "ip": h.ip, "hostname": h.hostname, "os": h.os, "qualys_host_id": h.qualys_id,
            "nexpose_asset_id": h.nexpose_id, "alive": h.alive, "auth_failure": h.auth_failure,
            "tracking_method": h.tracking, "asset_group_ids": h.asset_groups, "site_ids": h.sites,
            "truth": truth
        }))
    }

    /// Move a JIRA issue to `status` as the user `remediator` would.
    pub fn jira_transition(&self, key: &str, status: &str) -> Result<(), SimError> {
        self.jira_transition_as(key, status, "remediator", None)
    }

    /// Move a JIRA issue to `status` as `user`, optionally commenting.
    pub fn jira_transition_as(
        &self,
        key: &str,
        status: &str,
        user: &str,
        comment: Option<&str>,
    ) -> Result<(), SimError> {
        let now = self.now();
        let mut w = self.world();
        let id = w.jira.find(key).ok_or_else(|| SimError::Jira {
            status: 404,
            message: format!("issue {key} does not exist"),
        })?;
        w.jira
            .human_transition(id, status, user, comment, now)
            .map_err(|e| SimError::Jira {
                status: e.status,
                message: e.body().to_string(),
            })
    }

    /// An issue as `GET /rest/api/2/issue/{key}` would return it.
    pub fn jira_issue(&self, key: &str) -> Option<Value> {
        let w = self.world();
        let id = w.jira.find(key)?;
        let issue = w.jira.issues.get(&id)?;
        Some(w.jira.issue_json(&self.urls.jira, issue, None))
    }

    /// Current status name of an issue.
    pub fn jira_status(&self, key: &str) -> Option<String> {
        let w = self.world();
        let id = w.jira.find(key)?;
        w.jira.issues.get(&id).map(|i| i.status.to_string())
    }

    /// The JIRA workflow as an "Export as XML" document.
    pub fn jira_workflow_xml(&self) -> String {
        workflow::workflow_xml()
    }

    pub fn inject_fault(&self, spec: FaultSpec) -> u64 {
        self.faults.add(spec)
    }
    pub fn remove_fault(&self, id: u64) -> bool {
        self.faults.remove(id)
    }
    pub fn clear_faults(&self) {
        self.faults.clear()
    }
    pub fn faults(&self) -> Vec<FaultStatus> {
        self.faults.list()
    }

    /// Every journaled vendor request, oldest first.
    pub fn request_log(&self) -> Vec<JournalEntry> {
        self.journal.entries()
    }
    pub fn clear_request_log(&self) {
        self.journal.clear()
    }

    /// Force a Qualys scan (by reference `scan/…` or numeric id) into a state until changed.
    /// `None` returns it to its timed lifecycle.
    pub fn force_qualys_scan_state(
        &self,
        scan: &str,
        state: Option<(ScanState, bool)>,
    ) -> Result<(), SimError> {
        let mut w = self.world();
        let s = w
            .qualys
            .scans
            .values_mut()
            .find(|s| s.reference == scan || s.id.to_string() == scan)
            .ok_or_else(|| SimError::UnknownScan(scan.to_string()))?;
        s.forced = state;
        Ok(())
    }

    /// Launches a scheduled Qualys scan now (a full scan of its targets, as the schedule's
    /// option profile would run it) and returns its reference. It is listed with `TYPE`
    /// Scheduled, found by `scan/?action=list&type=Scheduled`, and otherwise behaves like a
    /// launched scan: status by `scan_ref`, truth applied to its targets when it finishes.
    pub fn create_qualys_scheduled_scan(
        &self,
        spec: &ScheduledScanSpec,
    ) -> Result<String, SimError> {
        use crate::qualys::state::{self, Scan, RESCAN_PROFILE_ID};
        let forced = match spec.state.as_deref() {
            None => None,
            Some(s) => Some((
                ScanState::parse(s)
                    .ok_or_else(|| SimError::Invalid(format!("unknown Qualys scan state '{s}'")))?,
                false,
            )),
        };
        let now = self.now();
        let mut w = self.world();
        let w = &mut *w;
        let mut targets = Vec::new();
        let target_text = match (&spec.ips, spec.asset_group) {
            (Some(ips), _) if !ips.trim().is_empty() => {
                for (a, b) in state::parse_ip_list(ips).map_err(SimError::Invalid)? {
                    for ip in a..=b.min(a.saturating_add(65_536)) {
                        if let Some(idx) = w.estate.host_by_ip(Ipv4Addr::from(ip)) {
                            targets.push(idx);
                        }
                    }
                }
                ips.replace(' ', "").replace(',', ", ")
            }
            (_, Some(group)) => {
                let mut ips = Vec::new();
                for (idx, h) in w.estate.hosts.iter().enumerate() {
                    if h.asset_groups.contains(&group) {
                        targets.push(idx);
                        ips.push(u32::from(h.ip));
                    }
                }
                ips.sort_unstable();
                state::collapse_ranges(&ips).join(", ")
            }
            _ => {
                return Err(SimError::Invalid(
                    "a scheduled scan needs ips or asset_group".into(),
                ))
            }
        };
        if targets.is_empty() {
            return Err(SimError::Invalid(format!(
                "scheduled scan '{}' has no host of the estate to scan",
                spec.title
            )));
        }
        targets.sort_unstable();
        targets.dedup();
        let profile = w
            .qualys
            .option_profiles
            .get(&RESCAN_PROFILE_ID)
            .cloned()
            .ok_or_else(|| SimError::Invalid("the full-scan option profile is gone".into()))?;
        let scope = w.qualys.scope_of(&profile);
        let (id, reference) = w.qualys.fresh_scan_ref(now);
        w.qualys.scans.insert(
            id,
            Scan {
                id,
                reference: reference.clone(),
                title: spec.title.clone(),
                user_login: "scheduler".into(),
                option_profile_id: profile.id,
                scope,
                targets,
                target_text,
                scanner: "sim-scanner-1".into(),
                network_id: 0,
                ec2: None,
                launched_at: now,
                forced,
                applied: false,
                finished_at: None,
                dead_ips: Vec::new(),
                scheduled: true,
            },
        );
        Ok(reference)
    }

    /// Current (state, processed) of a Qualys scan.
    pub fn qualys_scan_state(&self, scan: &str) -> Option<(ScanState, bool)> {
        let now = self.now();
        let w = self.world();
        w.qualys
            .scans
            .values()
            .find(|s| s.reference == scan || s.id.to_string() == scan)
            .map(|s| QualysState::phase(s, now, &self.cfg.scan_timing))
    }

    /// Force a Nexpose scan status (`error`, `paused`, `stopped`, `aborted`, `finished`, …);
    /// `None` returns it to its timed lifecycle.
    pub fn force_nexpose_scan_status(&self, id: u64, status: Option<&str>) -> Result<(), SimError> {
        let mut w = self.world();
        let s = w
            .nexpose
            .scans
            .get_mut(&id)
            .ok_or_else(|| SimError::UnknownScan(id.to_string()))?;
        s.forced = status.map(str::to_string);
        Ok(())
    }

    /// Rebuild the world as it was at start (faults and journal are kept).
    pub fn reset(&self) -> Result<(), SimError> {
        self.replace_world(&self.cfg.initial_fixture())
    }

    /// Replace the world with a fixture.
    pub fn seed(&self, fixture: &WorldFixture) -> Result<(), SimError> {
        self.replace_world(fixture)
    }

    /// Suggested Aegis SourceConfig rows (address, AuthInfo, payload) pointing at these
    /// simulators, for the demo organisation (spec §1.10, §2.11, §3.6).
    pub fn source_configs(&self) -> Value {
        let c = &self.cfg.credentials;
        let mut transition_map = serde_json::Map::new();
        for from in workflow::STATUSES {
            let hops: serde_json::Map<String, Value> = workflow::targets_from(from.name)
                .into_iter()
                .map(|t| {
                    (
                        t.name.to_lowercase(),
                        json!([{"id": t.transition_id.to_string(), "name": t.transition_name}]),
                    )
                })
                .collect();
            transition_map.insert(from.name.to_lowercase(), Value::Object(hops));
        }
        let status_map: serde_json::Map<String, Value> = [
            "Scan-Error",
            "Open",
            "Reopened",
            "In-Progress",
            "Resolved-Remediated",
            "Resolved-FalsePositive",
            "Resolved-Decommissioned",
            "Resolved-Exception",
            "Closed-Remediated",
            "Closed-False-Positive",
            "Closed-Decommission",
            "Closed-Exception",
            "Closed-CERF",
            "Closed-Error",
        ]
        .iter()
        .map(|s| (s.to_lowercase(), json!(s)))
        .collect();
        let w = self.world();
        let field_map: serde_json::Map<String, Value> = w
            .jira
            .fields
            .iter()
            .filter(|f| f.custom_id.is_some())
            .map(|f| (f.name.clone(), json!(f.name)))
            .collect();
        let groups: Vec<u32> = w.qualys.asset_groups.keys().copied().collect();
        let sites: Vec<u32> = w
            .nexpose
            .sites
            .keys()
            .copied()
            .filter(|s| *s != 999)
            .collect();
        let (nexpose_host, nexpose_port) = self
            .urls
            .nexpose
            .rsplit_once(':')
            .map(|(h, p)| (h.to_string(), p.parse::<u16>().unwrap_or(0)))
            .unwrap_or_default();
        json!({
            "jira": {
                "source": "JIRA",
                "address": self.urls.jira,
                "auth_info": {"Username": c.username, "Password": c.password, "Concurrency": 4, "Retries": 1, "Delay": 0},
                "payload": {
                    "project": w.jira.project_key,
                    "mappable_fields": [],
                    "status_map": status_map,
                    "field_map": field_map,
                    "transition_map": transition_map,
                }
            },
            "qualys": {
                "source": "Qualys",
                "address": self.urls.qualys,
                "auth_info": {"Username": c.username, "Password": c.password},
                "payload": {
                    "optionProfileId": crate::qualys::state::RESCAN_PROFILE_ID,
                    "discoveryOptionProfileId": crate::qualys::state::DISCOVERY_PROFILE_ID,
                    "groups": groups,
                    "external_groups": [],
                    "kernel_filter": 0,
                    "rescan_name_format": "Aegis Rescan %s",
                    "option_profile_format": "Aegis Profile %s",
                    "search_list_format": "Aegis Search List %s",
                }
            },
            "nexpose": {
                "source": "Nexpose",
                "address": self.urls.nexpose,
                "auth_info": {"Host": nexpose_host, "Port": nexpose_port, "Username": c.username, "Password": c.password,
                              "VerifyTLS": false, "Delay": 0, "Concurrency": 4, "Retries": 1, "CacheTTLSeconds": 300},
                "payload": {
                    "template": "full-audit-without-web-spider",
                    "scan_name_format": "Aegis Rescan %s",
                    "rescansite": 999,
                    "discoverytemplate": "discovery",
                    "discovery_name_format": "Aegis Discovery %s",
                    "engine_cache_ttle": 10,
                    "sites": sites,
                }
            }
        })
    }

    /// A dump for assertions: scans, option profiles, search lists, templates, tickets.
    pub fn state_summary(&self) -> Value {
        let now = self.now();
        let timing = self.cfg.scan_timing;
        let w = self.world();
        let q = &w.qualys;
        let scans: Vec<Value> = q
            .scans
            .values()
            .map(|s| {
                let (st, processed) = QualysState::phase(s, now, &timing);
                json!({"id": s.id, "ref": s.reference, "title": s.title, "state": st.as_str(),
                       "scheduled": s.scheduled,
                       "processed": processed, "option_profile_id": s.option_profile_id,
                       "target": s.target_text, "scope": s.scope, "dead_ips": s.dead_ips,
                       "scanner": s.scanner,
                       "ec2": s.ec2.as_ref().map(|(endpoint, connector)| json!({"ec2_endpoint": endpoint, "connector_name": connector}))})
            })
            .collect();
        let profiles: Vec<Value> = q
            .option_profiles
            .values()
            .map(|p| json!({"id": p.id, "title": p.title, "builtin": p.builtin,
                            "search_lists": p.search_lists.iter().map(|(id, t)| json!({"id": id, "title": t})).collect::<Vec<_>>()}))
            .collect();
        let lists: Vec<Value> = q
            .search_lists
            .values()
            .map(|l| json!({"id": l.id, "title": l.title, "qids": l.qids}))
            .collect();
        let n = &w.nexpose;
        let nscans: Vec<Value> = n
            .scans
            .values()
            .map(|s| {
                json!({"id": s.id, "name": s.name, "status": NexposeState::status(s, now, &timing),
                            "site_id": s.site_id, "template_id": s.template_id, "hosts": s.hosts})
            })
            .collect();
        let templates: Vec<&String> = n.templates.keys().collect();
        let issues: Vec<Value> = w
            .jira
            .issues
            .values()
            .map(|i| json!({"id": i.id, "key": i.key, "status": i.status, "summary": i.summary,
                            "comments": i.comments.iter().map(|c| c.body.clone()).collect::<Vec<_>>(),
                            "updated": rfc3339(i.updated)}))
            .collect();
        json!({
            "now": rfc3339(now),
            "clock_offset_secs": self.clock.offset().as_secs(),
            "hosts": w.estate.hosts.len(),
            "hosts_dead": w.estate.hosts.iter().filter(|h| !h.alive).count(),
            "kb_entries": w.estate.kb.len(),
            "qualys": {
                "scans": scans,
                "option_profiles": profiles,
                "option_profile_copies": q.option_profiles.values().filter(|p| !p.builtin).count(),
                "search_lists": lists,
            },
            "nexpose": {
                "scans": nscans,
                "templates": templates,
                "template_copies": n.templates.len() - crate::nexpose::state::BUILTIN_TEMPLATES.len(),
            },
            "jira": {"issues": issues},
            "urls": self.urls,
        })
    }
}

// ------------------------------------------------------------------ HTTP

fn err(status: StatusCode, msg: impl std::fmt::Display) -> Response {
    (status, Json(json!({"error": msg.to_string()}))).into_response()
}

fn sim_err(e: SimError) -> Response {
    let status = match &e {
        SimError::UnknownHost(_) | SimError::UnknownScan(_) => StatusCode::NOT_FOUND,
        SimError::Jira { status, .. } => {
            StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_REQUEST)
        }
        _ => StatusCode::BAD_REQUEST,
    };
    err(status, e)
}

/// A rejected control request (kept small: clippy's `result_large_err`).
struct Reject(StatusCode, String);

impl IntoResponse for Reject {
    fn into_response(self) -> Response {
        err(self.0, self.1)
    }
}

fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Reject> {
    serde_json::from_slice(body)
        .map_err(|e| Reject(StatusCode::BAD_REQUEST, format!("invalid JSON: {e}")))
}

fn ok() -> Response {
    Json(json!({"ok": true})).into_response()
}

pub(crate) fn router() -> Router<Arc<Control>> {
    Router::new()
        .route("/health", get(|| async { Json(json!({"ok": true})) }))
        .route("/state", get(state))
        .route("/reset", post(reset))
        .route("/seed", post(seed))
        .route("/clock", get(clock))
        .route("/clock/advance", post(advance))
        .route("/truth", post(truth))
        .route("/hosts/:ip", get(host).post(patch_host))
        .route("/qualys/scans/state", post(qualys_scan_state))
        .route("/qualys/scheduled_scans", post(qualys_scheduled_scan))
        .route("/nexpose/scans/:id/status", post(nexpose_scan_status))
        .route("/jira/issues/:key/transition", post(jira_transition))
        .route("/jira/workflow.xml", get(workflow_xml))
        .route("/source-configs", get(source_configs))
        .route(
            "/faults",
            get(list_faults).post(add_fault).delete(clear_faults),
        )
        .route("/faults/:id", delete(remove_fault))
        .route("/journal", get(journal).delete(clear_journal))
}

async fn state(State(ctx): State<Arc<Control>>) -> Response {
    Json(ctx.state_summary()).into_response()
}

async fn reset(State(ctx): State<Arc<Control>>) -> Response {
    match ctx.reset() {
        Ok(()) => ok(),
        Err(e) => sim_err(e),
    }
}

async fn seed(State(ctx): State<Arc<Control>>, body: axum::body::Bytes) -> Response {
    let fixture: WorldFixture = match parse_body(&body) {
        Ok(f) => f,
        Err(r) => return r.into_response(),
    };
    match ctx.seed(&fixture) {
        Ok(()) => ok(),
        Err(e) => sim_err(e),
    }
}

async fn clock(State(ctx): State<Arc<Control>>) -> Response {
    Json(json!({"now": rfc3339(ctx.now()), "offset_secs": ctx.clock.offset().as_secs()}))
        .into_response()
}

#[derive(Deserialize)]
struct Advance {
    seconds: f64,
}

async fn advance(State(ctx): State<Arc<Control>>, body: axum::body::Bytes) -> Response {
    let a: Advance = match parse_body(&body) {
        Ok(a) => a,
        Err(r) => return r.into_response(),
    };
    if !(a.seconds.is_finite() && a.seconds >= 0.0) {
        return err(
            StatusCode::BAD_REQUEST,
            "seconds must be a non-negative number",
        );
    }
    let Ok(by) = Duration::try_from_secs_f64(a.seconds) else {
        return err(StatusCode::BAD_REQUEST, "seconds is out of range");
    };
    ctx.advance_clock(by);
    Json(json!({"now": rfc3339(ctx.now())})).into_response()
}

#[derive(Deserialize)]
struct TruthChange {
    ip: Ipv4Addr,
    qid: u32,
    #[serde(default)]
    port: u16,
    #[serde(default = "tcp", alias = "proto")]
    protocol: Proto,
    vulnerable: bool,
    #[serde(default)]
    proof: Option<String>,
}

fn tcp() -> Proto {
    Proto::Tcp
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany<T> {
    Many(Vec<T>),
    One(T),
}

async fn truth(State(ctx): State<Arc<Control>>, body: axum::body::Bytes) -> Response {
    let changes: OneOrMany<TruthChange> = match parse_body(&body) {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    let changes = match changes {
        OneOrMany::Many(v) => v,
        OneOrMany::One(c) => vec![c],
    };
    for c in changes {
        if let Err(e) = ctx.set_truth(c.ip, c.qid, c.port, c.protocol, c.vulnerable, c.proof) {
            return sim_err(e);
        }
    }
    ok()
}

fn parse_ip(ip: &str) -> Result<Ipv4Addr, Reject> {
    ip.parse().map_err(|_| {
        Reject(
            StatusCode::BAD_REQUEST,
            format!("'{ip}' is not an IPv4 address"),
        )
    })
}

async fn host(State(ctx): State<Arc<Control>>, Path(ip): Path<String>) -> Response {
    let ip = match parse_ip(&ip) {
        Ok(ip) => ip,
        Err(r) => return r.into_response(),
    };
    match ctx.host_info(ip) {
        Ok(v) => Json(v).into_response(),
        Err(e) => sim_err(e),
    }
}

async fn patch_host(
    State(ctx): State<Arc<Control>>,
    Path(ip): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let ip = match parse_ip(&ip) {
        Ok(ip) => ip,
        Err(r) => return r.into_response(),
    };
    let patch: HostPatch = match parse_body(&body) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    match ctx.patch_host(ip, &patch) {
        Ok(()) => ok(),
        Err(e) => sim_err(e),
    }
}

#[derive(Deserialize)]
struct QualysScanForce {
    /// Scan reference (`scan/…`) or id.
    scan: String,
    /// State name, or null to return to the timed lifecycle.
    state: Option<String>,
    #[serde(default = "yes")]
    processed: bool,
}

fn yes() -> bool {
    true
}

async fn qualys_scan_state(State(ctx): State<Arc<Control>>, body: axum::body::Bytes) -> Response {
    let f: QualysScanForce = match parse_body(&body) {
        Ok(f) => f,
        Err(r) => return r.into_response(),
    };
    let state = match f.state.as_deref() {
        None => None,
        Some(s) => match ScanState::parse(s) {
            Some(st) => Some((st, f.processed)),
            None => {
                return err(
                    StatusCode::BAD_REQUEST,
                    format!("unknown Qualys scan state '{s}'"),
                )
            }
        },
    };
    match ctx.force_qualys_scan_state(&f.scan, state) {
        Ok(()) => ok(),
        Err(e) => sim_err(e),
    }
}

async fn qualys_scheduled_scan(
    State(ctx): State<Arc<Control>>,
    body: axum::body::Bytes,
) -> Response {
    let spec: ScheduledScanSpec = match parse_body(&body) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    match ctx.create_qualys_scheduled_scan(&spec) {
        Ok(reference) => Json(json!({"ok": true, "ref": reference})).into_response(),
        Err(e) => sim_err(e),
    }
}

#[derive(Deserialize)]
struct NexposeScanForce {
    status: Option<String>,
}

async fn nexpose_scan_status(
    State(ctx): State<Arc<Control>>,
    Path(id): Path<u64>,
    body: axum::body::Bytes,
) -> Response {
    let f: NexposeScanForce = match parse_body(&body) {
        Ok(f) => f,
        Err(r) => return r.into_response(),
    };
    match ctx.force_nexpose_scan_status(id, f.status.as_deref()) {
        Ok(()) => ok(),
        Err(e) => sim_err(e),
    }
}

#[derive(Deserialize)]
struct HumanTransition {
    to: String,
    #[serde(default)]
    as_user: Option<String>,
    #[serde(default)]
    comment: Option<String>,
}

async fn jira_transition(
    State(ctx): State<Arc<Control>>,
    Path(key): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let t: HumanTransition = match parse_body(&body) {
        Ok(t) => t,
        Err(r) => return r.into_response(),
    };
    let user = t.as_user.as_deref().unwrap_or("remediator");
    match ctx.jira_transition_as(&key, &t.to, user, t.comment.as_deref()) {
        Ok(()) => Json(json!({"ok": true, "status": ctx.jira_status(&key)})).into_response(),
        Err(e) => sim_err(e),
    }
}

async fn workflow_xml(State(ctx): State<Arc<Control>>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/xml")],
        ctx.jira_workflow_xml(),
    )
        .into_response()
}

async fn source_configs(State(ctx): State<Arc<Control>>) -> Response {
    Json(ctx.source_configs()).into_response()
}

async fn list_faults(State(ctx): State<Arc<Control>>) -> Response {
    Json(ctx.faults()).into_response()
}

async fn add_fault(State(ctx): State<Arc<Control>>, body: axum::body::Bytes) -> Response {
    let spec: FaultSpec = match parse_body(&body) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    let id = ctx.inject_fault(spec);
    (StatusCode::CREATED, Json(json!({"id": id}))).into_response()
}

async fn clear_faults(State(ctx): State<Arc<Control>>) -> Response {
    ctx.clear_faults();
    ok()
}

async fn remove_fault(State(ctx): State<Arc<Control>>, Path(id): Path<u64>) -> Response {
    if ctx.remove_fault(id) {
        ok()
    } else {
        err(StatusCode::NOT_FOUND, format!("no fault {id}"))
    }
}

#[derive(Deserialize)]
struct JournalQuery {
    vendor: Option<Vendor>,
    since_id: Option<u64>,
}

async fn journal(State(ctx): State<Arc<Control>>, Query(q): Query<JournalQuery>) -> Response {
    let entries: Vec<JournalEntry> = ctx
        .request_log()
        .into_iter()
        .filter(|e| q.vendor.is_none_or(|v| v == e.vendor))
        .filter(|e| q.since_id.is_none_or(|s| e.id > s))
        .collect();
    Json(entries).into_response()
}

async fn clear_journal(State(ctx): State<Arc<Control>>) -> Response {
    ctx.clear_request_log();
    ok()
}

//! The host detection list (`/api/2.0/fo/asset/host/vm/detection/?action=list`), streamed.
//!
//! The document is produced in chunks of a few dozen hosts, each rendered under a short hold of
//! the world lock, so a million detections are served without materialising the response (or
//! the detections) in memory. `truncation_limit` cuts the list and appends `WARNING` (CODE 1980)
//! whose URL carries every original parameter plus `id_min=<last id + 1>`.

use std::collections::BTreeSet;
use std::fmt::Write;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::response::{IntoResponse, Response};
use futures::stream;

use super::state::{DetStatus, Detection, QualysState};
use super::xml::{cdata, esc, prolog, push_time, time};
use super::{in_ranges, next_page_url, parse_id_ranges, streamed, Call, QualysError};
use crate::world::{Estate, Host, HostIdx, TrackingMethod, VulnKey};
use crate::Control;

/// Hosts rendered per chunk.
const CHUNK_HOSTS: usize = 64;
const ROOT: &str = "HOST_LIST_VM_DETECTION_OUTPUT";

struct Filter {
    ids: Option<Vec<(u64, u64)>>,
    id_min: Option<u64>,
    id_max: Option<u64>,
    ips: Option<Vec<(u32, u32)>>,
    ag_ids: Option<BTreeSet<u32>>,
    statuses: Vec<DetStatus>,
    qids: Option<Vec<(u64, u64)>>,
    severities: Option<Vec<(u64, u64)>>,
    kernel: u8,
    tags: Option<Vec<String>>,
    show_reopened: bool,
    /// `host_metadata=ec2` (or `all`): each EC2 host's METADATA/EC2 block.
    ec2_metadata: bool,
    /// `detection_updated_since`: only detections whose LAST_UPDATE_DATETIME is at or after it.
    updated_since: Option<chrono::DateTime<chrono::Utc>>,
}

impl Filter {
    fn from_call(call: &Call) -> Result<Filter, QualysError> {
        let num = |name: &str| -> Result<Option<u64>, QualysError> {
            call.get(name)?
                .filter(|s| !s.is_empty())
                .map(|s| s.parse().map_err(|_| QualysError::invalid(name, s)))
                .transpose()
        };
        let statuses = match call.get("status")?.filter(|s| !s.is_empty()) {
            None => vec![DetStatus::New, DetStatus::Active, DetStatus::Reopened],
            Some(s) => s
                .split(',')
                .map(|x| DetStatus::parse(x).ok_or_else(|| QualysError::invalid("status", s)))
                .collect::<Result<_, _>>()?,
        };
        let kernel = match call.get("arf_kernel_filter")?.filter(|s| !s.is_empty()) {
            None => 0,
            Some(s) => match s.parse::<u8>() {
                Ok(k) if k <= 4 => k,
                _ => return Err(QualysError::invalid("arf_kernel_filter", s)),
            },
        };
        let ag_ids = match call.get("ag_ids")?.filter(|s| !s.is_empty()) {
            None => None,
            Some(s) => Some(
                parse_id_ranges("ag_ids", s)?
                    .into_iter()
                    .flat_map(|(a, b)| a..=b.min(a + 100_000))
                    .filter_map(|x| u32::try_from(x).ok())
                    .collect(),
            ),
        };
        let tags = if call.flag("use_tags")? {
            Some(
                call.require("tag_set_include")?
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .collect(),
            )
        } else {
            None
        };
        Ok(Filter {
            ids: call
                .get("ids")?
                .filter(|s| !s.is_empty())
                .map(|s| parse_id_ranges("ids", s))
                .transpose()?,
            id_min: num("id_min")?,
            id_max: num("id_max")?,
            ips: call
                .get("ips")?
                .filter(|s| !s.is_empty())
                .map(|s| super::state::parse_ip_list(s).map_err(|e| QualysError::new(400, 1905, e)))
                .transpose()?,
            ag_ids,
            statuses,
            qids: call
                .get("qids")?
                .filter(|s| !s.is_empty())
                .map(|s| parse_id_ranges("qids", s))
                .transpose()?,
            severities: call
                .get("severities")?
                .filter(|s| !s.is_empty())
                .map(|s| parse_id_ranges("severities", s))
                .transpose()?,
            kernel,
            tags,
            show_reopened: call.flag("show_reopened_info")?,
            ec2_metadata: call
                .get("host_metadata")?
                .is_some_and(|m| m.split(',').any(|x| matches!(x.trim(), "ec2" | "all"))),
            updated_since: call
                .get("detection_updated_since")?
                .filter(|s| !s.is_empty())
                .map(|s| super::parse_since("detection_updated_since", s))
                .transpose()?,
        })
    }

    fn host_matches(&self, estate: &Estate, w: &QualysState, h: &Host) -> bool {
        if self
            .ids
            .as_ref()
            .is_some_and(|r| !in_ranges(r, h.qualys_id))
        {
            return false;
        }
        if self.id_max.is_some_and(|m| h.qualys_id > m) {
            return false;
        }
        if let Some(ips) = &self.ips {
            let ip = u32::from(h.ip);
            if !ips.iter().any(|(a, b)| (*a..=*b).contains(&ip)) {
                return false;
            }
        }
        if let Some(ags) = &self.ag_ids {
            if !h.asset_groups.iter().any(|g| ags.contains(g)) {
                return false;
            }
        }
        if let Some(tags) = &self.tags {
            // Simulated tags: a cloud-tracked host carries its asset groups' ids and titles.
            if h.tracking == TrackingMethod::Ip {
                return false;
            }
            let hit = h.asset_groups.iter().any(|g| {
                tags.iter().any(|t| {
                    *t == g.to_string() || w.asset_groups.get(g).is_some_and(|ag| ag.title == *t)
                })
            });
            if !hit {
                return false;
            }
        }
        let _ = estate;
        true
    }

    fn detection_matches(&self, estate: &Estate, key: &VulnKey, d: &Detection) -> bool {
        if !self.statuses.contains(&d.status) {
            return false;
        }
        if self.updated_since.is_some_and(|t| d.last_update < t) {
            return false;
        }
        if self
            .qids
            .as_ref()
            .is_some_and(|r| !in_ranges(r, u64::from(key.qid)))
        {
            return false;
        }
        if let Some(sev) = &self.severities {
            let s = estate.kb_entry(key.qid).map(|k| k.severity).unwrap_or(3);
            if !in_ranges(sev, u64::from(s)) {
                return false;
            }
        }
        match (self.kernel, d.affect_running_kernel) {
            (1, Some(0)) => false,
            (2, k) => k == Some(0),
            (3, k) => k == Some(1),
            (4, k) => k.is_some(),
            _ => true,
        }
    }
}

struct Cursor {
    ctx: Arc<Control>,
    filter: Filter,
    pos: usize,
    emitted: usize,
    limit: usize,
    last_id: Option<u64>,
    opened_list: bool,
    stage: Stage,
    base_url: String,
    path: String,
    params: super::Params,
    paging_loop: bool,
    first_id: Option<u64>,
}

#[derive(PartialEq, Eq)]
enum Stage {
    Head,
    Hosts,
    Done,
}

pub(super) fn host_list_detection(call: Call) -> Response {
    let filter = match Filter::from_call(&call) {
        Ok(f) => f,
        Err(e) => return e.into_response(),
    };
    let limit = match call.get("truncation_limit") {
        Ok(None) => 1000,
        Ok(Some(s)) => match s.parse::<usize>() {
            Ok(n) => n,
            Err(_) => return QualysError::invalid("truncation_limit", s).into_response(),
        },
        Err(e) => return e.into_response(),
    };
    let start = {
        let w = call.ctx.world();
        let min = filter.id_min.unwrap_or(0);
        w.estate.hosts.partition_point(|h| h.qualys_id < min)
    };
    let cursor = Cursor {
        base_url: call.ctx.urls.qualys.clone(),
        ctx: call.ctx,
        filter,
        pos: start,
        emitted: 0,
        limit,
        last_id: None,
        opened_list: false,
        stage: Stage::Head,
        path: call.path,
        params: call.params,
        paging_loop: call.paging_loop,
        first_id: None,
    };
    let body = stream::unfold(cursor, |mut c| async move {
        let chunk = c.next_chunk()?;
        Some((Ok::<Bytes, std::io::Error>(Bytes::from(chunk)), c))
    });
    streamed(Body::from_stream(body))
}

impl Cursor {
    fn next_chunk(&mut self) -> Option<String> {
        match self.stage {
            Stage::Done => None,
            Stage::Head => {
                self.stage = Stage::Hosts;
                let mut out = prolog(
                    ROOT,
                    "fo/asset/host/vm/detection/host_list_vm_detection_output.dtd",
                );
                let _ = write!(out, "<{ROOT}>\n  <RESPONSE>\n    <DATETIME>");
                push_time(&mut out, self.ctx.now());
                out.push_str("</DATETIME>\n");
                Some(out)
            }
            Stage::Hosts => Some(self.hosts_chunk()),
        }
    }

    fn hosts_chunk(&mut self) -> String {
        let mut out = String::with_capacity(64 * 1024);
        let ctx = Arc::clone(&self.ctx);
        let w = ctx.world();
        let mut rendered = 0;
        while self.pos < w.estate.hosts.len() && rendered < CHUNK_HOSTS {
            if self.limit > 0 && self.emitted >= self.limit {
                break;
            }
            let idx: HostIdx = self.pos;
            self.pos += 1;
            let host = &w.estate.hosts[idx];
            if !self.filter.host_matches(&w.estate, &w.qualys, host) {
                continue;
            }
            let dets: Vec<(VulnKey, Detection)> = w
                .qualys
                .visible(&w.estate, idx)
                .into_iter()
                .filter(|(k, d)| self.filter.detection_matches(&w.estate, k, d))
                .collect();
            if dets.is_empty() {
                continue;
            }
            if !self.opened_list {
                out.push_str("    <HOST_LIST>\n");
                self.opened_list = true;
            }
            self.first_id.get_or_insert(host.qualys_id);
            render_host(
                &mut out,
                &w.estate,
                host,
                &dets,
                self.filter.show_reopened,
                self.filter.ec2_metadata,
            );
            self.emitted += 1;
            self.last_id = Some(host.qualys_id);
            rendered += 1;
        }
        let at_limit = self.limit > 0 && self.emitted >= self.limit;
        if self.pos < w.estate.hosts.len() && !at_limit {
            return out;
        }
        // End of document: is there more beyond the truncation limit?
        let more = at_limit
            && (self.pos..w.estate.hosts.len()).any(|i| {
                let h = &w.estate.hosts[i];
                self.filter.host_matches(&w.estate, &w.qualys, h)
                    && w.qualys
                        .visible(&w.estate, i)
                        .iter()
                        .any(|(k, d)| self.filter.detection_matches(&w.estate, k, d))
            });
        drop(w);
        if self.opened_list {
            out.push_str("    </HOST_LIST>\n");
        }
        if more || (self.paging_loop && self.opened_list) {
            let next = if self.paging_loop {
                self.filter.id_min.or(self.first_id).unwrap_or(0)
            } else {
                self.last_id.unwrap_or(0) + 1
            };
            let url = next_page_url(&self.base_url, &self.path, &self.params, next);
            let _ = write!(
                out,
                "    <WARNING>\n      <CODE>1980</CODE>\n      <TEXT>{} record limit exceeded. Use URL to get next batch of results.</TEXT>\n      <URL>{}</URL>\n    </WARNING>\n",
                self.limit.max(self.emitted),
                cdata(&url)
            );
        }
        let _ = write!(out, "  </RESPONSE>\n</{ROOT}>\n");
        self.stage = Stage::Done;
        out
    }
}

fn render_host(
    out: &mut String,
    estate: &Estate,
    h: &Host,
    dets: &[(VulnKey, Detection)],
    reopened: bool,
    ec2_metadata: bool,
) {
    let last_scan = dets.iter().map(|(_, d)| d.last_test).max();
    let _ = write!(
        out,
        "      <HOST>\n        <ID>{}</ID>\n        <IP>{}</IP>\n        <TRACKING_METHOD>{}</TRACKING_METHOD>\n        <OS>{}</OS>\n        <DNS>{}</DNS>\n",
        h.qualys_id,
        h.ip,
        h.tracking.as_str(),
        cdata(&h.os),
        cdata(&h.hostname)
    );
    if let Some(i) = &h.ec2_instance_id {
        let _ = writeln!(out, "        <EC2_INSTANCE_ID>{}</EC2_INSTANCE_ID>", esc(i));
    }
    let netbios = h.hostname.split('.').next().unwrap_or("").to_uppercase();
    let _ = writeln!(out, "        <NETBIOS>{}</NETBIOS>", cdata(&netbios));
    if let Some(t) = last_scan {
        out.push_str("        <LAST_SCAN_DATETIME>");
        push_time(out, t);
        out.push_str("</LAST_SCAN_DATETIME>\n        <LAST_VM_SCANNED_DATE>");
        push_time(out, t);
        out.push_str("</LAST_VM_SCANNED_DATE>\n        <LAST_VM_SCANNED_DURATION>312</LAST_VM_SCANNED_DURATION>\n");
    }
    if !h.asset_groups.is_empty() {
        let ids: Vec<String> = h.asset_groups.iter().map(u32::to_string).collect();
        let _ = writeln!(
            out,
            "        <ASSET_GROUP_IDS>{}</ASSET_GROUP_IDS>",
            ids.join(",")
        );
    }
    if let Some(i) = h.ec2_instance_id.as_ref().filter(|_| ec2_metadata) {
        // Qualys's METADATA/EC2 shape: one ATTRIBUTE per instance metadata path.
        let _ = writeln!(
            out,
            "        <METADATA>\n          <EC2>\n            <ATTRIBUTE>\n              <NAME>{}</NAME>\n              <LAST_STATUS>{}</LAST_STATUS>\n              <VALUE>{}</VALUE>\n            </ATTRIBUTE>\n          </EC2>\n        </METADATA>",
            cdata("latest/meta-data/instance-id"),
            cdata("Success"),
            cdata(i)
        );
    }
    out.push_str("        <DETECTION_LIST>\n");
    for (k, d) in dets {
        let severity = estate.kb_entry(k.qid).map(|e| e.severity).unwrap_or(3);
        let _ = write!(
            out,
            "          <DETECTION>\n            <QID>{}</QID>\n            <TYPE>Confirmed</TYPE>\n            <SEVERITY>{}</SEVERITY>\n            <PORT>{}</PORT>\n            <PROTOCOL>{}</PROTOCOL>\n            <SSL>{}</SSL>\n            <RESULTS>",
            k.qid,
            severity,
            k.port,
            k.proto.as_str(),
            u8::from(k.port == 443)
        );
        match &d.proof {
            Some(p) => out.push_str(&cdata(p)),
            None => out.push_str(&cdata(&estate.default_proof(*k))),
        }
        let _ = write!(
            out,
            "</RESULTS>\n            <STATUS>{}</STATUS>\n",
            d.status.as_str()
        );
        let times = [
            ("FIRST_FOUND_DATETIME", Some(d.first_found)),
            ("LAST_FOUND_DATETIME", Some(d.last_found)),
        ];
        for (tag, t) in times {
            if let Some(t) = t {
                let _ = write!(out, "            <{tag}>");
                push_time(out, t);
                let _ = writeln!(out, "</{tag}>");
            }
        }
        let _ = writeln!(
            out,
            "            <TIMES_FOUND>{}</TIMES_FOUND>",
            d.times_found
        );
        for (tag, t) in [
            ("LAST_TEST_DATETIME", Some(d.last_test)),
            ("LAST_UPDATE_DATETIME", Some(d.last_update)),
            ("LAST_FIXED_DATETIME", d.last_fixed),
        ] {
            if let Some(t) = t {
                let _ = write!(out, "            <{tag}>");
                push_time(out, t);
                let _ = writeln!(out, "</{tag}>");
            }
        }
        if reopened && d.status == DetStatus::Reopened {
            let _ = write!(
                out,
                "            <FIRST_REOPENED_DATETIME>{0}</FIRST_REOPENED_DATETIME>\n            <LAST_REOPENED_DATETIME>{0}</LAST_REOPENED_DATETIME>\n            <TIMES_REOPENED>1</TIMES_REOPENED>\n",
                time(d.last_found)
            );
        }
        out.push_str(
            "            <IS_IGNORED>0</IS_IGNORED>\n            <IS_DISABLED>0</IS_DISABLED>\n",
        );
        if let Some(k) = d.affect_running_kernel {
            let _ = writeln!(
                out,
                "            <AFFECT_RUNNING_KERNEL>{k}</AFFECT_RUNNING_KERNEL>"
            );
        }
        out.push_str("          </DETECTION>\n");
    }
    out.push_str("        </DETECTION_LIST>\n      </HOST>\n");
}

//! Host List Detection (`HOST_LIST_VM_DETECTION_OUTPUT`): the selection
//! parameters, truncation paging through `WARNING/URL`, and the mapping of
//! hosts and detections (only `Confirmed` detections, de-duplicated per host,
//! QID, port and protocol).

use std::collections::HashSet;

use chrono::{DateTime, SecondsFormat, Utc};
use tokio::sync::mpsc;

use super::xml::{time, XmlDoc, XmlEvent};
use super::{q, QualysScanner, HLD_PATH};
use crate::vendors::scanner::{
    DetectionState, HostBatch, ScannedDetection, ScannedHost, ScannerError, HOSTS_PER_BATCH,
};

/// Hosts per page for asset-group selections (the original's value).
const TRUNCATION_LIMIT: &str = "2500";
/// A sync that needs more pages than this is looping, whatever the URLs say.
const MAX_PAGES: usize = 100_000;

/// The query of the first page for `groups`: asset group IDs, or `tag-` items
/// (a tag selection). WAS `web-` groups are not supported.
pub fn selection(
    groups: &[String],
    kernel_filter: i64,
    since: Option<DateTime<Utc>>,
) -> Result<Vec<(String, String)>, String> {
    if groups.is_empty() {
        return Err("no asset groups to list detections for".into());
    }
    if let Some(web) = groups.iter().find(|g| g.contains("web-")) {
        return Err(format!(
            "group {web:?} is a Qualys WAS web application, which this client does not sync"
        ));
    }
    let mut query = vec![
        q("action", "list"),
        q("status", "New,Active,Re-Opened,Fixed"),
        q("show_reopened_info", "1"),
        q("arf_kernel_filter", kernel_filter.to_string()),
    ];
    let tags: Vec<&str> = groups
        .iter()
        .filter_map(|g| g.split_once("tag-").map(|(_, t)| t.trim()))
        .collect();
    if tags.is_empty() {
        query.push(q("truncation_limit", TRUNCATION_LIMIT));
        query.push(q(
            "ag_ids",
            groups
                .iter()
                .map(|g| g.trim())
                .collect::<Vec<_>>()
                .join(","),
        ));
    } else {
        if tags.len() != groups.len() {
            return Err("asset group IDs and tag- items cannot be mixed in one selection".into());
        }
        let by = if tags[0].parse::<u64>().is_ok() {
            "id"
        } else {
            "name"
        };
        query.extend([
            q("truncation_limit", "0"),
            q("use_tags", "1"),
            q("tag_set_by", by),
            q("tag_include_selector", "all"),
            q("tag_set_include", tags.join(",")),
            q("host_metadata", "ec2"),
            q("host_metadata_fields", "instanceId"),
        ]);
    }
    if let Some(since) = since {
        query.push(q(
            "detection_updated_since",
            since.to_rfc3339_opts(SecondsFormat::Secs, true),
        ));
    }
    Ok(query)
}

/// Fetches every page of the selection and sends its hosts in batches.
pub(super) async fn run(
    scanner: &QualysScanner,
    first: Vec<(String, String)>,
    tx: mpsc::Sender<Result<HostBatch, ScannerError>>,
) -> Result<(), ScannerError> {
    let source_config = scanner.source_config().to_string();
    let loop_error = |reason: String| ScannerError::PagingLoop {
        source_config: source_config.clone(),
        endpoint: HLD_PATH.into(),
        reason,
    };
    let mut seen_pages: HashSet<Vec<(String, String)>> = HashSet::new();
    let mut query = first;
    let mut last_id_min: Option<u64> = None;
    for _ in 0..MAX_PAGES {
        seen_pages.insert(query.clone());
        let response = scanner.call(HLD_PATH, &query).await?;
        let mut doc = XmlDoc::open(
            response,
            &source_config,
            HLD_PATH,
            "HOST_LIST_VM_DETECTION_OUTPUT",
        )
        .await?;
        let page = read_page(&mut doc, &tx).await?;
        let Some(url) = page.next_url else {
            return Ok(());
        };
        let next = next_page_query(&url).map_err(|reason| doc.not_expected(reason))?;
        let id_min = next
            .iter()
            .find(|(k, _)| k == "id_min")
            .and_then(|(_, v)| v.parse::<u64>().ok());
        if seen_pages.contains(&next) {
            return Err(loop_error(format!(
                "WARNING/URL asks again for a page already read (id_min={})",
                id_min.map_or("none".into(), |i| i.to_string())
            )));
        }
        match (id_min, last_id_min, page.last_host_id) {
            (Some(next_min), Some(prev), _) if next_min <= prev => {
                return Err(loop_error(format!(
                    "WARNING/URL does not advance (id_min {next_min} after {prev})"
                )))
            }
            (Some(next_min), _, Some(last)) if next_min <= last => {
                return Err(loop_error(format!(
                    "WARNING/URL goes back to id_min={next_min} after host {last}"
                )))
            }
            (_, _, None) => {
                return Err(loop_error(
                    "a page with no host asks for another page".into(),
                ))
            }
            _ => {}
        }
        last_id_min = id_min.or(last_id_min);
        query = next;
    }
    Err(loop_error(format!("more than {MAX_PAGES} pages")))
}

/// The next page's parameters from `WARNING/URL`. Only the path and query are
/// used: requests stay on the source's configured address with its
/// credentials, whatever host the URL names.
fn next_page_query(url: &str) -> Result<Vec<(String, String)>, String> {
    let parsed =
        reqwest::Url::parse(url).map_err(|e| format!("WARNING/URL {url:?} is not a URL ({e})"))?;
    if parsed.path().trim_end_matches('/') != HLD_PATH.trim_end_matches('/') {
        return Err(format!(
            "WARNING/URL points at {} instead of {HLD_PATH}",
            parsed.path()
        ));
    }
    Ok(parsed
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect())
}

struct Page {
    next_url: Option<String>,
    last_host_id: Option<u64>,
}

/// Detection fields while the element is open.
#[derive(Default)]
struct RawDetection {
    qid: String,
    kind: String,
    status: String,
    port: Option<i32>,
    protocol: String,
    results: String,
    last_found: Option<DateTime<Utc>>,
    last_update: Option<DateTime<Utc>>,
    times_found: i32,
    kernel: Option<i32>,
}

/// Reads one page, sending full batches as they fill.
async fn read_page(
    doc: &mut XmlDoc,
    tx: &mpsc::Sender<Result<HostBatch, ScannerError>>,
) -> Result<Page, ScannerError> {
    let mut page = Page {
        next_url: None,
        last_host_id: None,
    };
    let mut batch: Vec<ScannedHost> = Vec::with_capacity(HOSTS_PER_BATCH);
    let mut host = ScannedHost::default();
    let mut det = RawDetection::default();
    let mut keys: HashSet<(String, i32, String)> = HashSet::new();
    let mut in_warning = false;
    loop {
        match doc.next().await? {
            XmlEvent::Start { name } => match name.as_str() {
                "HOST" => {
                    host = ScannedHost::default();
                    keys.clear();
                }
                "DETECTION" => det = RawDetection::default(),
                "WARNING" => in_warning = true,
                _ => {}
            },
            XmlEvent::End { name, parent, text } => match (parent.as_str(), name.as_str()) {
                ("HOST", "ID") => host.asset_id = text,
                ("HOST", "IP") => host.ip = text,
                ("HOST", "TRACKING_METHOD") => {
                    host.tracking_method = Some(text).filter(|t| !t.is_empty())
                }
                ("HOST", "OS") => host.os = text,
                ("HOST", "DNS") => host.hostname = text,
                ("HOST", "EC2_INSTANCE_ID") => {
                    host.instance_id = Some(text).filter(|t| !t.is_empty())
                }
                ("DETECTION", "QID") => det.qid = text,
                ("DETECTION", "TYPE") => det.kind = text,
                ("DETECTION", "STATUS") => det.status = text,
                ("DETECTION", "PORT") => det.port = text.parse().ok(),
                ("DETECTION", "PROTOCOL") => det.protocol = text,
                ("DETECTION", "RESULTS") => det.results = text,
                ("DETECTION", "LAST_FOUND_DATETIME") => det.last_found = time(&text),
                ("DETECTION", "LAST_UPDATE_DATETIME") => det.last_update = time(&text),
                ("DETECTION", "TIMES_FOUND") => det.times_found = text.parse().unwrap_or(0),
                ("DETECTION", "AFFECT_RUNNING_KERNEL") => det.kernel = text.parse().ok(),
                ("WARNING", "URL") if in_warning => {
                    page.next_url = Some(text).filter(|u| !u.is_empty())
                }
                ("DETECTION_LIST", "DETECTION") => {
                    let raw = std::mem::take(&mut det);
                    if raw.qid.parse::<u64>().is_err() {
                        return Err(doc.not_expected(format!(
                            "host {} has a detection whose QID is {:?}",
                            host.asset_id, raw.qid
                        )));
                    }
                    if let Some(d) = map_detection(raw) {
                        // One finding per (host, QID, port, protocol); a missing port counts as -1.
                        if keys.insert((
                            d.vuln_id.clone(),
                            if d.port == 0 { -1 } else { d.port },
                            d.protocol.clone(),
                        )) {
                            host.detections.push(d);
                        }
                    }
                }
                ("HOST_LIST", "HOST") => {
                    let id: u64 = host.asset_id.parse().map_err(|_| {
                        doc.not_expected(format!("a HOST whose ID is {:?}", host.asset_id))
                    })?;
                    page.last_host_id = Some(id);
                    batch.push(std::mem::take(&mut host));
                    if batch.len() >= HOSTS_PER_BATCH {
                        let full =
                            std::mem::replace(&mut batch, Vec::with_capacity(HOSTS_PER_BATCH));
                        if tx
                            .send(Ok(HostBatch {
                                hosts: full,
                                expected_hosts: None,
                            }))
                            .await
                            .is_err()
                        {
                            return Ok(Page {
                                next_url: None,
                                last_host_id: page.last_host_id,
                            });
                        }
                    }
                }
                _ => {}
            },
            XmlEvent::Done => {
                if !batch.is_empty()
                    && tx
                        .send(Ok(HostBatch {
                            hosts: batch,
                            expected_hosts: None,
                        }))
                        .await
                        .is_err()
                {
                    return Ok(Page {
                        next_url: None,
                        last_host_id: page.last_host_id,
                    });
                }
                return Ok(page);
            }
        }
    }
}

/// Only Confirmed detections are synced; the status is normalised.
fn map_detection(raw: RawDetection) -> Option<ScannedDetection> {
    if !raw.kind.eq_ignore_ascii_case("confirmed") {
        return None;
    }
    let state = match raw.status.to_ascii_lowercase().as_str() {
        "new" | "active" | "re-opened" => DetectionState::Vulnerable,
        "fixed" => DetectionState::Fixed,
        _ => return None,
    };
    Some(ScannedDetection {
        vuln_id: raw.qid,
        state,
        port: raw.port.unwrap_or(0),
        protocol: raw.protocol,
        proof: raw.results,
        detected: raw.last_found,
        last_found: raw.last_found,
        last_updated: raw.last_update,
        times_seen: raw.times_found,
        active_kernel: raw.kernel,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_sorts_groups_into_asset_groups_or_tags() {
        let ag = selection(&["1".into(), "2".into()], 0, None).unwrap();
        assert!(ag.contains(&q("ag_ids", "1,2")));
        assert!(ag.contains(&q("truncation_limit", "2500")));
        let tags = selection(&["tag-web".into()], 1, None).unwrap();
        assert!(tags.contains(&q("tag_set_by", "name")));
        assert!(tags.contains(&q("tag_set_include", "web")));
        assert!(tags.contains(&q("arf_kernel_filter", "1")));
        assert!(selection(&["web-5".into()], 0, None).is_err());
    }

    #[test]
    fn next_page_keeps_only_path_and_query() {
        let next = next_page_query(
            "https://other.example/api/2.0/fo/asset/host/vm/detection/?action=list&id_min=5",
        )
        .unwrap();
        assert_eq!(next, vec![q("action", "list"), q("id_min", "5")]);
        assert!(next_page_query("https://x/api/2.0/fo/scan/?a=1").is_err());
    }
}

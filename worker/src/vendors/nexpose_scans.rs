//! Nexpose rescans (spec `original-jobs-rescan.md` §2.6, §3.3, §4.6;
//! `original-vendor-apis.md` §3.6), a child module of the Nexpose client so it
//! reuses its HTTP, paging and finding code.
//!
//! * Vulnerability rescan, per site: a copy of the payload's `template` named
//!   `<YYYY-MM-DD>_<uuid>` with only the checks of the tickets'
//!   vulnerabilities enabled, started in `rescansite` on the ticket site's
//!   engine against the tickets' IPs.
//! * Decommission (discovery) scan, per site: a copy of `discoverytemplate`,
//!   started the same way against **that site's** IPs only (the original gave
//!   every site's scan all IPs).
//! * Scan IDs are written as plain integers (the original wrote `123.000000`).
//! * Status: `running`/`integrating` → processing, `dispatched` → queued,
//!   `aborted` → error (the original polled it forever), others lower-cased.
//! * Results: each scanned asset's current findings. Nexpose reports no dead
//!   hosts, so a finished **discovery** scan confirms absence itself: an IP of
//!   the scan is dead when the rescan site has no asset with that IP after the
//!   scan (a discovery scan adds every host it finds alive to the site it runs
//!   in). Dead IPs then follow the DECOMMISSIONED table like Qualys dead hosts.
//! * The template copy is deleted after the close, when the scan fails or is
//!   abandoned, and at once when the start fails.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::Utc;
use futures::future::BoxFuture;
use reqwest::Method;
use serde_json::{json, Map, Value};
use tokio_util::sync::CancellationToken;

use aegis_shared::model::source_config::{SourceConfig, Vendor};
use aegis_shared::source_http::{RequestSpec, SourceClient};

use super::{Asset, NexposeScanner};
use crate::vendors::scanner::{excerpt, ScannerError};
use crate::vendors::scans::{
    scan_field, unique_name, LaunchJournal, LaunchReport, LaunchedScan, ScanKind, ScanLauncher,
    ScanResults, ScanTarget,
};

/// The Nexpose [`ScanLauncher`].
pub struct NexposeScans {
    scanner: NexposeScanner,
    template: String,
    discovery_template: String,
    rescan_site: String,
    scan_name_format: String,
    discovery_name_format: String,
}

fn text(p: &Map<String, Value>, key: &str, default: &str) -> String {
    match p.get(key) {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => default.to_string(),
    }
}

/// The original's name: the format, `_`, and the time (concatenated, not substituted).
fn scan_name(format: &str) -> String {
    format!(
        "{}_{}",
        format.replace(" %s", "").replace("%s", ""),
        Utc::now().to_rfc3339()
    )
}

impl NexposeScans {
    pub fn new(sc: &SourceConfig, client: SourceClient) -> Result<Self, String> {
        let p = sc.payload().map_err(|e| e.to_string())?;
        let rescan_site = text(&p, "rescansite", "");
        if rescan_site.is_empty() {
            return Err(format!(
                "SourceConfig {}: the Nexpose payload has no rescansite",
                sc.id
            ));
        }
        Ok(NexposeScans {
            scanner: NexposeScanner::new(client),
            template: text(&p, "template", ""),
            discovery_template: text(&p, "discoverytemplate", ""),
            rescan_site,
            scan_name_format: text(&p, "scan_name_format", "Aegis Rescan"),
            discovery_name_format: text(&p, "discovery_name_format", "Aegis Discovery"),
        })
    }

    fn sc(&self) -> &str {
        self.scanner.source_config()
    }

    /// Sends a JSON request once and returns the JSON answer (`null` when empty);
    /// `Ok(None)` on a 404.
    async fn send(
        &self,
        method: Method,
        template: &str,
        path: &str,
        body: Option<&Value>,
        idempotent: bool,
    ) -> Result<Option<Value>, ScannerError> {
        let mut spec = RequestSpec::new(method, template, path).idempotent(idempotent);
        if let Some(b) = body {
            spec = spec.json(b).map_err(|e| ScannerError::Config {
                source_config: self.sc().into(),
                reason: e.to_string(),
            })?;
        }
        let response = self.scanner.client.send(spec).await?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await?;
        if status == 404 {
            return Ok(None);
        }
        if !(200..300).contains(&status) {
            return Err(ScannerError::Status {
                source_config: self.sc().into(),
                endpoint: template.into(),
                status,
                excerpt: excerpt(&bytes),
            });
        }
        if bytes.is_empty() {
            return Ok(Some(Value::Null));
        }
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| ScannerError::Document {
                source_config: self.sc().into(),
                endpoint: template.into(),
                reason: e.to_string(),
                excerpt: excerpt(&bytes),
            })
    }

    async fn get(&self, template: &str, path: &str) -> Result<Value, ScannerError> {
        self.send(Method::GET, template, path, None, true)
            .await?
            .ok_or_else(|| ScannerError::Status {
                source_config: self.sc().into(),
                endpoint: template.into(),
                status: 404,
                excerpt: path.into(),
            })
    }

    /// Copies `template` (only `checks` enabled when given); returns the copy's ID.
    async fn copy_template(
        &self,
        template: &str,
        checks: Option<Vec<String>>,
    ) -> Result<String, ScannerError> {
        let mut t = self
            .get(
                "/api/3/scan_templates/{id}",
                &format!("/api/3/scan_templates/{template}"),
            )
            .await?;
        let Some(obj) = t.as_object_mut() else {
            return Err(ScannerError::Document {
                source_config: self.sc().into(),
                endpoint: "/api/3/scan_templates/{id}".into(),
                reason: "the template is not an object".into(),
                excerpt: String::new(),
            });
        };
        obj.remove("id");
        obj.remove("links");
        obj.insert(
            "name".into(),
            json!(format!(
                "{}_{}",
                Utc::now().format("%Y-%m-%d"),
                uuid::Uuid::new_v4()
            )),
        );
        if let Some(checks) = checks {
            let c = obj.entry("checks").or_insert_with(|| json!({}));
            if !c.is_object() {
                *c = json!({});
            }
            c["individual"] = json!({ "enabled": checks });
        }
        let answer = self
            .send(
                Method::POST,
                "/api/3/scan_templates",
                "/api/3/scan_templates",
                Some(&t),
                false,
            )
            .await?
            .unwrap_or(Value::Null);
        match &answer["id"] {
            Value::String(s) if !s.is_empty() => Ok(s.clone()),
            Value::Number(n) => Ok(n.to_string()),
            _ => Err(ScannerError::Document {
                source_config: self.sc().into(),
                endpoint: "/api/3/scan_templates".into(),
                reason: "the answer names no template id".into(),
                excerpt: answer.to_string().chars().take(200).collect(),
            }),
        }
    }

    async fn delete_template(&self, id: &str) -> Result<(), ScannerError> {
        if id.is_empty() || id == self.template || id == self.discovery_template {
            return Ok(());
        }
        self.send(
            Method::DELETE,
            "/api/3/scan_templates/{id}",
            &format!("/api/3/scan_templates/{id}"),
            None,
            true,
        )
        .await
        .map(drop)
    }

    async fn launch_site(
        &self,
        kind: ScanKind,
        site: &str,
        targets: &[ScanTarget],
        launch_tag: &str,
        journal: &dyn LaunchJournal,
    ) -> Result<LaunchedScan, String> {
        let mut vulns: Vec<String> = targets.iter().map(|t| t.vuln_id.clone()).collect();
        vulns.sort();
        vulns.dedup();
        let (base, checks) = match kind {
            ScanKind::Vulnerability => {
                let mut checks = BTreeSet::new();
                for v in &vulns {
                    let c = self
                        .get(
                            "/api/3/vulnerabilities/{id}/checks",
                            &format!("/api/3/vulnerabilities/{v}/checks"),
                        )
                        .await
                        .map_err(|e| format!("checks of {v}: {e}"))?;
                    checks.extend(
                        c["resources"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|x| x.as_str().map(str::to_string)),
                    );
                }
                if checks.is_empty() {
                    return Err(format!("no checks found for {}", vulns.join(", ")));
                }
                (self.template.clone(), Some(checks.into_iter().collect()))
            }
            ScanKind::Discovery => (self.discovery_template.clone(), None),
        };
        if base.is_empty() {
            return Err("the Nexpose payload has no template / discoverytemplate".into());
        }
        let template = self
            .copy_template(&base, checks)
            .await
            .map_err(|e| format!("copying template {base}: {e}"))?;
        let assets: Vec<i64> = targets
            .iter()
            .filter_map(|t| t.asset_id.parse().ok())
            .collect::<BTreeSet<i64>>()
            .into_iter()
            .collect();
        let started = async {
            let engine = self
                .get(
                    "/api/3/sites/{id}/scan_engine",
                    &format!("/api/3/sites/{site}/scan_engine"),
                )
                .await
                .map_err(|e| format!("starting the scan: {e}"))?;
            let engine_id = match &engine["id"] {
                Value::Number(n) => n.to_string(),
                Value::String(s) => s.clone(),
                _ => String::new(),
            };
            let mut ips: Vec<String> = targets.iter().map(|t| t.ip.clone()).collect();
            ips.sort();
            ips.dedup();
            let name = unique_name(
                &scan_name(match kind {
                    ScanKind::Vulnerability => &self.scan_name_format,
                    ScanKind::Discovery => &self.discovery_name_format,
                }),
                launch_tag,
                site,
            );
            let created = Utc::now();
            let scan = json!({
                "engineId": engine_id, "ips": ips, "assets": assets, "name": name,
                "templateId": template, "groupId": site,
                "vulnerabilities": vulns, "created": created.to_rfc3339(),
                "discovery": kind == ScanKind::Discovery,
            });
            // Recorded before the start: a worker killed past this point leaves
            // a trace naming the scan and its template copy.
            journal
                .record(&scan, targets)
                .await
                .map_err(|e| format!("recording the launch: {e}"))?;
            let body =
                json!({"engineId": engine_id, "hosts": ips, "name": name, "templateId": template});
            let answer = self
                .send(
                    Method::POST,
                    "/api/3/sites/{id}/scans",
                    &format!("/api/3/sites/{}/scans", self.rescan_site),
                    Some(&body),
                    false,
                )
                .await
                .map_err(|e| format!("starting the scan: {e}"))?
                .unwrap_or(Value::Null);
            let id = match &answer["id"] {
                Value::Number(n) => n
                    .as_u64()
                    .map(|n| n.to_string())
                    .unwrap_or_else(|| n.to_string()),
                Value::String(s) => s.clone(),
                _ => String::new(),
            };
            Ok::<_, String>((id, scan))
        }
        .await;
        let (id, mut scan) = match started {
            Ok(s) if !s.0.is_empty() => s,
            other => {
                if let Err(e) = self.delete_template(&template).await {
                    tracing::warn!("could not delete Nexpose template {template}: {e}");
                }
                return Err(match other {
                    Err(e) => e,
                    Ok(_) => "the scan start answer names no id".into(),
                });
            }
        };
        scan["scanId"] = json!(id);
        Ok(LaunchedScan {
            scan_id: id,
            scan,
            targets: targets.to_vec(),
        })
    }

    async fn status_of(&self, id: &str) -> Result<Value, ScannerError> {
        self.get("/api/3/scans/{id}", &format!("/api/3/scans/{id}"))
            .await
    }

    /// IPs of the rescan site's assets.
    async fn rescan_site_ips(&self) -> Result<BTreeSet<String>, ScannerError> {
        let path = format!("/api/3/sites/{}/assets", self.rescan_site);
        let mut ips = BTreeSet::new();
        self.scanner
            .each_page(
                "/api/3/sites/{id}/assets",
                &path,
                |a: &Asset| a.id.to_string(),
                |assets: Vec<Asset>, _| {
                    ips.extend(assets.into_iter().filter_map(|a| a.ip));
                    async { Ok(true) }
                },
            )
            .await?;
        Ok(ips)
    }
}

/// Normalises a Nexpose scan status.
pub fn normalise(status: &str) -> String {
    let s = status.trim().to_ascii_lowercase();
    match s.as_str() {
        "running" | "integrating" => "processing".into(),
        "dispatched" => "queued".into(),
        "aborted" => "error".into(),
        _ => s,
    }
}

impl ScanLauncher for NexposeScans {
    fn vendor(&self) -> Vendor {
        Vendor::Nexpose
    }

    fn launch<'a>(
        &'a self,
        kind: ScanKind,
        targets: &'a [ScanTarget],
        tag: &'a str,
        journal: &'a dyn LaunchJournal,
        _cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, LaunchReport> {
        Box::pin(async move {
            let mut report = LaunchReport::default();
            let mut by_site: BTreeMap<String, Vec<ScanTarget>> = BTreeMap::new();
            for t in targets {
                if t.ip.parse::<std::net::Ipv4Addr>().is_err() {
                    report.skipped.push((
                        t.clone(),
                        format!("IP Address {:?} is not one IPv4 address", t.ip),
                    ));
                } else if t.group.trim().is_empty() {
                    report.skipped.push((
                        t.clone(),
                        "the ticket names no Nexpose site (GroupID)".into(),
                    ));
                } else {
                    by_site
                        .entry(t.group.trim().to_string())
                        .or_default()
                        .push(t.clone());
                }
            }
            for (site, ts) in by_site {
                match self.launch_site(kind, &site, &ts, tag, journal).await {
                    Ok(s) => report.launched.push(s),
                    Err(e) => report.failed.push((ts, e)),
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
            // The rescan site's scans, by their unique name.
            let path = format!("/api/3/sites/{}/scans", self.rescan_site);
            let mut found: Option<String> = None;
            self.scanner
                .each_page(
                    "/api/3/sites/{id}/scans",
                    &path,
                    |s: &Value| s["id"].to_string(),
                    |scans: Vec<Value>, _| {
                        found = found.take().or_else(|| {
                            scans
                                .iter()
                                .find(|s| s["scanName"].as_str() == Some(name))
                                .and_then(|s| match &s["id"] {
                                    Value::Number(n) => n.as_u64().map(|n| n.to_string()),
                                    Value::String(s) => Some(s.clone()),
                                    _ => None,
                                })
                        });
                        let more = found.is_none();
                        async move { Ok(more) }
                    },
                )
                .await?;
            Ok(found.map(|id| {
                let mut scan = recorded.clone();
                scan["scanId"] = json!(id);
                scan
            }))
        })
    }

    fn status<'a>(&'a self, scan: &'a Value) -> BoxFuture<'a, Result<String, ScannerError>> {
        Box::pin(async move {
            let s = self.status_of(scan_field(scan, "scanId")).await?;
            Ok(normalise(s["status"].as_str().unwrap_or_default()))
        })
    }

    fn results<'a>(&'a self, scan: &'a Value) -> BoxFuture<'a, Result<ScanResults, ScannerError>> {
        Box::pin(async move {
            let id = scan_field(scan, "scanId");
            let s = self.status_of(id).await?;
            if normalise(s["status"].as_str().unwrap_or_default()) != "finished" {
                return Err(ScannerError::Config {
                    source_config: self.sc().into(),
                    reason: format!("scan {id} is not finished; its results cannot be read"),
                });
            }
            let mut hosts = Vec::new();
            for a in scan["assets"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_i64)
            {
                let path = format!("/api/3/assets/{a}");
                let Some(v) = self
                    .send(Method::GET, "/api/3/assets/{id}", &path, None, true)
                    .await?
                else {
                    continue;
                };
                let asset: Asset =
                    serde_json::from_value(v).map_err(|e| ScannerError::Document {
                        source_config: self.sc().into(),
                        endpoint: "/api/3/assets/{id}".into(),
                        reason: e.to_string(),
                        excerpt: String::new(),
                    })?;
                hosts.push(self.scanner.asset_host(asset).await?);
            }
            let mut dead = HashMap::new();
            if scan["discovery"].as_bool() == Some(true) {
                let alive = self.rescan_site_ips().await?;
                let end = s["endTime"].as_str().unwrap_or_default();
                for ip in scan["ips"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                {
                    if !alive.contains(ip) {
                        dead.insert(
                            ip.to_string(),
                            format!(
                                "Nexpose discovery scan {id} (engine {}) finished {end} without finding {ip} alive in site {}",
                                scan_field(scan, "engineId"),
                                self.rescan_site
                            ),
                        );
                    }
                }
            }
            Ok(ScanResults { hosts, dead })
        })
    }

    fn cancel<'a>(&'a self, scan: &'a Value) -> BoxFuture<'a, Result<(), ScannerError>> {
        Box::pin(async move {
            let id = scan_field(scan, "scanId");
            self.send(
                Method::POST,
                "/api/3/scans/{id}/stop",
                &format!("/api/3/scans/{id}/stop"),
                None,
                true,
            )
            .await
            .map(drop)
        })
    }

    fn clean_up<'a>(&'a self, scan: &'a Value) -> BoxFuture<'a, Result<(), ScannerError>> {
        Box::pin(async move { self.delete_template(scan_field(scan, "templateId")).await })
    }
}

#[cfg(test)]
mod tests {
    use super::normalise;

    #[test]
    fn nexpose_states_that_the_original_polled_forever_end() {
        assert_eq!(normalise("aborted"), "error");
        assert_eq!(normalise("dispatched"), "queued");
        assert_eq!(normalise("integrating"), "processing");
        assert_eq!(normalise("finished"), "finished");
    }
}

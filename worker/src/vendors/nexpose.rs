//! Nexpose / InsightVM API v3 (JSON) client: the sync parts of the [`Scanner`] trait.
//!
//! * site assets (`/api/3/sites/{id}/assets`) and each asset's findings
//!   (`/api/3/assets/{id}/vulnerabilities`), one detection per finding result;
//! * vulnerabilities (`/api/3/vulnerabilities`) with their references and
//!   solutions;
//! * sites (`/api/3/sites`), the Nexpose "asset groups".
//!
//! Lists are read with `page`/`size` paging (size 500); a page that repeats
//! items already read fails the call as a paging loop. Detections get a
//! LastFound (the asset's latest scan, else the finding's first-found date):
//! the original left it empty, so Nexpose detections were never ticketed.

#[path = "nexpose_scans.rs"]
pub mod scans;

use std::collections::HashSet;

use chrono::{DateTime, NaiveDate, Utc};
use futures::future::BoxFuture;
use futures::stream::{self, BoxStream, StreamExt};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use tokio::sync::mpsc;

use aegis_shared::model::source_config::Vendor;
use aegis_shared::source_http::{RequestSpec, SourceClient};

use super::scanner::{
    excerpt, spawn_stream, DetectionState, HostBatch, ScannedDetection, ScannedHost,
    ScannedVulnerability, Scanner, ScannerError, ScannerGroup, HOSTS_PER_BATCH, VULNS_PER_BATCH,
};

const PAGE_SIZE: usize = 500;
/// Assets whose findings are fetched at once (the source's Concurrency still applies).
const PARALLEL_ASSETS: usize = 8;
/// Vulnerabilities whose references and solutions are fetched at once.
const PARALLEL_VULNS: usize = 8;

/// The Nexpose implementation of [`Scanner`].
#[derive(Clone)]
pub struct NexposeScanner {
    client: SourceClient,
}

#[derive(Deserialize)]
struct Page<T> {
    #[serde(default = "Vec::new")]
    resources: Vec<T>,
    page: Option<PageInfo>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PageInfo {
    #[serde(default)]
    total_pages: u64,
    #[serde(default)]
    total_resources: u64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Asset {
    id: i64,
    #[serde(default)]
    ip: Option<String>,
    #[serde(default)]
    host_name: Option<String>,
    #[serde(default)]
    mac: Option<String>,
    #[serde(default)]
    os: Option<String>,
    #[serde(default)]
    history: Vec<AssetEvent>,
}

impl Asset {
    /// The asset's latest history event of any type (`None` when it has no
    /// dated event: then it is always asked for its findings).
    fn latest_event(&self) -> Option<DateTime<Utc>> {
        self.history
            .iter()
            .filter_map(|e| e.date.as_deref().and_then(time))
            .max()
    }
}

#[derive(Deserialize)]
struct AssetEvent {
    #[serde(default)]
    date: Option<String>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
}

#[derive(Deserialize)]
struct Finding {
    id: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    since: Option<String>,
    #[serde(default)]
    results: Vec<FindingResult>,
}

#[derive(Deserialize)]
struct FindingResult {
    #[serde(default)]
    port: Option<i32>,
    #[serde(default)]
    protocol: Option<String>,
    #[serde(default)]
    proof: Option<String>,
}

#[derive(Deserialize)]
struct Vulnerability {
    id: String,
    #[serde(default)]
    title: String,
    #[serde(default)]
    description: Option<Text>,
    #[serde(default)]
    cvss: Option<Cvss>,
    #[serde(default)]
    modified: Option<String>,
    #[serde(default)]
    categories: Vec<String>,
}

#[derive(Deserialize, Default)]
struct Text {
    #[serde(default)]
    text: String,
}

#[derive(Deserialize)]
struct Cvss {
    #[serde(default)]
    v2: Option<Score>,
    #[serde(default)]
    v3: Option<Score>,
}

#[derive(Deserialize)]
struct Score {
    #[serde(default)]
    score: Option<f64>,
}

#[derive(Deserialize)]
struct Reference {
    #[serde(default)]
    reference: String,
}

#[derive(Deserialize)]
struct Ids {
    #[serde(default)]
    resources: Vec<String>,
}

#[derive(Deserialize)]
struct Solution {
    #[serde(default)]
    summary: Option<Text>,
    #[serde(default)]
    steps: Option<Text>,
}

#[allow(dead_code)] // read by asset_groups (rescan jobs)
#[derive(Deserialize)]
struct Site {
    id: i64,
    #[serde(default)]
    name: String,
}

fn time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Finding status → detection state; unknown statuses are not synced.
fn state(status: &str) -> Option<DetectionState> {
    match status {
        "vulnerable" | "vulnerable-version" | "vulnerable-potential" => {
            Some(DetectionState::Vulnerable)
        }
        "invulnerable" => Some(DetectionState::Fixed),
        s if s.ends_with("-with-exception-applied") => Some(DetectionState::Fixed),
        _ => None,
    }
}

impl NexposeScanner {
    pub fn new(client: SourceClient) -> Self {
        NexposeScanner { client }
    }

    fn source_config(&self) -> &str {
        self.client.source_config_id()
    }

    /// GETs `path` (with `template` shown in logs) and decodes the JSON body.
    async fn get<T: DeserializeOwned>(
        &self,
        template: &str,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<T, ScannerError> {
        let mut spec = RequestSpec::get(template, path);
        for (k, v) in query {
            spec = spec.query(*k, v.clone());
        }
        let response = self.client.send(spec).await?;
        let status = response.status().as_u16();
        let body = response.bytes().await?;
        if !(200..300).contains(&status) {
            return Err(ScannerError::Status {
                source_config: self.source_config().into(),
                endpoint: template.into(),
                status,
                excerpt: excerpt(&body),
            });
        }
        serde_json::from_slice(&body).map_err(|e| ScannerError::Document {
            source_config: self.source_config().into(),
            endpoint: template.into(),
            reason: e.to_string(),
            excerpt: excerpt(&body),
        })
    }

    /// Page `n` of a list.
    async fn page<T: DeserializeOwned>(
        &self,
        template: &str,
        path: &str,
        n: u64,
    ) -> Result<Page<T>, ScannerError> {
        self.get(
            template,
            path,
            &[("page", n.to_string()), ("size", PAGE_SIZE.to_string())],
        )
        .await
    }

    fn paging_loop(&self, endpoint: &str, reason: String) -> ScannerError {
        ScannerError::PagingLoop {
            source_config: self.source_config().into(),
            endpoint: endpoint.into(),
            reason,
        }
    }

    /// Every item of a paged list, page by page: the page count is taken from
    /// page 0; an item seen twice means the console is looping.
    async fn each_page<T, K, F, Fut>(
        &self,
        template: &str,
        path: &str,
        key: K,
        mut on_page: F,
    ) -> Result<(), ScannerError>
    where
        T: DeserializeOwned,
        K: Fn(&T) -> String,
        F: FnMut(Vec<T>, u64) -> Fut,
        Fut: std::future::Future<Output = Result<bool, ScannerError>>,
    {
        let mut seen: HashSet<String> = HashSet::new();
        let first: Page<T> = self.page(template, path, 0).await?;
        let (pages, total) = first
            .page
            .as_ref()
            .map_or((1, 0), |p| (p.total_pages.max(1), p.total_resources));
        let mut current = first;
        let mut n = 0;
        loop {
            for item in &current.resources {
                if !seen.insert(key(item)) {
                    return Err(self.paging_loop(
                        template,
                        format!("page {n} repeats items of earlier pages"),
                    ));
                }
            }
            if !on_page(std::mem::take(&mut current.resources), total).await? {
                return Ok(());
            }
            n += 1;
            if n >= pages {
                return Ok(());
            }
            current = self.page(template, path, n).await?;
        }
    }

    /// One asset's detections (one per finding result).
    async fn asset_host(&self, asset: Asset) -> Result<ScannedHost, ScannerError> {
        let path = format!("/api/3/assets/{}/vulnerabilities", asset.id);
        let last_scan = asset
            .history
            .iter()
            .filter(|e| {
                e.kind
                    .as_deref()
                    .is_none_or(|k| k.eq_ignore_ascii_case("SCAN"))
            })
            .filter_map(|e| e.date.as_deref().and_then(time))
            .max();
        let mut detections = Vec::new();
        self.each_page(
            "/api/3/assets/{id}/vulnerabilities",
            &path,
            |f: &Finding| f.id.clone(),
            |findings: Vec<Finding>, _| {
                for f in findings {
                    let Some(state) = state(&f.status) else {
                        continue;
                    };
                    let detected = f.since.as_deref().and_then(time);
                    let last_found = match (last_scan, detected) {
                        (Some(scan), Some(d)) => Some(scan.max(d)),
                        (scan, d) => scan.or(d),
                    };
                    for r in f.results {
                        detections.push(ScannedDetection {
                            vuln_id: f.id.clone(),
                            state,
                            port: r.port.unwrap_or(0),
                            protocol: r.protocol.unwrap_or_default(),
                            proof: r.proof.unwrap_or_default(),
                            detected,
                            last_found,
                            last_updated: None,
                            times_seen: 1,
                            active_kernel: None,
                        });
                    }
                }
                async { Ok(true) }
            },
        )
        .await?;
        Ok(ScannedHost {
            asset_id: asset.id.to_string(),
            ip: asset.ip.unwrap_or_default(),
            hostname: asset.host_name.unwrap_or_default(),
            os: asset.os.unwrap_or_default(),
            mac: asset.mac.unwrap_or_default(),
            instance_id: None,
            tracking_method: None,
            detections,
        })
    }

    async fn sync_sites(
        &self,
        sites: Vec<String>,
        since: Option<DateTime<Utc>>,
        tx: mpsc::Sender<Result<HostBatch, ScannerError>>,
    ) -> Result<(), ScannerError> {
        let mut expected = 0u64;
        for site in sites {
            let site_id: u64 = site.trim().parse().map_err(|_| ScannerError::Config {
                source_config: self.source_config().into(),
                reason: format!("Nexpose site id {site:?} is not a number"),
            })?;
            let path = format!("/api/3/sites/{site_id}/assets");
            let mut counted = false;
            self.each_page(
                "/api/3/sites/{id}/assets",
                &path,
                |a: &Asset| a.id.to_string(),
                |assets: Vec<Asset>, total| {
                    if !counted {
                        expected += total;
                        counted = true;
                    }
                    let expected = expected;
                    let tx = tx.clone();
                    // Unchanged since the window: its findings are as stored.
                    let assets: Vec<Asset> = assets
                        .into_iter()
                        .filter(|a| since.is_none_or(|s| a.latest_event().is_none_or(|t| t >= s)))
                        .collect();
                    async move {
                        let mut hosts =
                            stream::iter(assets.into_iter().map(|a| self.asset_host(a)))
                                .buffered(PARALLEL_ASSETS)
                                .chunks(HOSTS_PER_BATCH);
                        while let Some(chunk) = hosts.next().await {
                            let hosts = chunk.into_iter().collect::<Result<Vec<_>, _>>()?;
                            if tx
                                .send(Ok(HostBatch {
                                    hosts,
                                    expected_hosts: Some(expected),
                                }))
                                .await
                                .is_err()
                            {
                                return Ok(false);
                            }
                        }
                        Ok(true)
                    }
                },
            )
            .await?;
        }
        Ok(())
    }

    /// A vulnerability with its references and first solution.
    async fn vulnerability(&self, v: Vulnerability) -> Result<ScannedVulnerability, ScannerError> {
        let mut references = Vec::new();
        let refs_path = format!("/api/3/vulnerabilities/{}/references", v.id);
        self.each_page(
            "/api/3/vulnerabilities/{id}/references",
            &refs_path,
            |r: &Reference| r.reference.clone(),
            |page: Vec<Reference>, _| {
                references.extend(
                    page.into_iter()
                        .map(|r| r.reference)
                        .filter(|r| !r.is_empty()),
                );
                async { Ok(true) }
            },
        )
        .await?;
        let ids: Ids = self
            .get(
                "/api/3/vulnerabilities/{id}/solutions",
                &format!("/api/3/vulnerabilities/{}/solutions", v.id),
                &[],
            )
            .await?;
        let solution = match ids.resources.first() {
            Some(id) => {
                let s: Solution = self
                    .get(
                        "/api/3/solutions/{id}",
                        &format!("/api/3/solutions/{id}"),
                        &[],
                    )
                    .await?;
                s.steps.or(s.summary).unwrap_or_default().text
            }
            None => String::new(),
        };
        let cvss = v.cvss.as_ref();
        Ok(ScannedVulnerability {
            title: v.title,
            description: v.description.unwrap_or_default().text,
            threat: None,
            solution,
            cvss2: cvss
                .and_then(|c| c.v2.as_ref())
                .and_then(|s| s.score)
                .unwrap_or(0.0),
            cvss3: cvss.and_then(|c| c.v3.as_ref()).and_then(|s| s.score),
            updated: v
                .modified
                .as_deref()
                .and_then(|m| NaiveDate::parse_from_str(m, "%Y-%m-%d").ok())
                .and_then(|d| d.and_hms_opt(0, 0, 0))
                .map(|t| t.and_utc()),
            patchable: None,
            category: v.categories.first().cloned().filter(|c| !c.is_empty()),
            software: String::new(),
            detection_information: String::new(),
            references,
            vuln_id: v.id,
        })
    }

    async fn sync_vulnerabilities(
        &self,
        tx: mpsc::Sender<Result<Vec<ScannedVulnerability>, ScannerError>>,
    ) -> Result<(), ScannerError> {
        self.each_page(
            "/api/3/vulnerabilities",
            "/api/3/vulnerabilities",
            |v: &Vulnerability| v.id.clone(),
            |vulns: Vec<Vulnerability>, _| {
                let tx = tx.clone();
                async move {
                    let mut chunks = stream::iter(vulns.into_iter().map(|v| self.vulnerability(v)))
                        .buffered(PARALLEL_VULNS)
                        .chunks(VULNS_PER_BATCH);
                    while let Some(chunk) = chunks.next().await {
                        let batch = chunk.into_iter().collect::<Result<Vec<_>, _>>()?;
                        if tx.send(Ok(batch)).await.is_err() {
                            return Ok(false);
                        }
                    }
                    Ok(true)
                }
            },
        )
        .await
    }
}

impl Scanner for NexposeScanner {
    fn vendor(&self) -> Vendor {
        Vendor::Nexpose
    }

    /// Nexpose has no "changed since" filter on findings, but every asset
    /// carries its `history` (scans, imports, exceptions applied or removed):
    /// an asset with no event since the window is not asked for its findings.
    fn detection_window(&self) -> bool {
        true
    }

    fn host_detections<'a>(
        &'a self,
        groups: &'a [String],
        since: Option<DateTime<Utc>>,
    ) -> BoxStream<'a, Result<HostBatch, ScannerError>> {
        let scanner = self.clone();
        let sites = groups.to_vec();
        spawn_stream(move |tx| async move { scanner.sync_sites(sites, since, tx).await })
    }

    /// Nexpose has no "changed since" filter: the whole knowledge base, always.
    fn vulnerabilities(
        &self,
        _since: Option<DateTime<Utc>>,
    ) -> BoxStream<'_, Result<Vec<ScannedVulnerability>, ScannerError>> {
        let scanner = self.clone();
        spawn_stream(move |tx| async move { scanner.sync_vulnerabilities(tx).await })
    }

    fn asset_groups(&self) -> BoxFuture<'_, Result<Vec<ScannerGroup>, ScannerError>> {
        Box::pin(async move {
            let mut sites = Vec::new();
            self.each_page(
                "/api/3/sites",
                "/api/3/sites",
                |s: &Site| s.id.to_string(),
                |page: Vec<Site>, _| {
                    sites.extend(page.into_iter().map(|s| ScannerGroup {
                        id: s.id.to_string(),
                        title: s.name,
                    }));
                    async { Ok(true) }
                },
            )
            .await?;
            Ok(sites)
        })
    }
}

//! Qualys VM API v2 (XML) client: the sync parts of the [`Scanner`] trait.
//!
//! * host detections (`/api/2.0/fo/asset/host/vm/detection/`) by asset group
//!   IDs or tags, paged through `WARNING/URL` ([`detections`]);
//! * the knowledge base (`/api/2.0/fo/knowledge_base/vuln/`, [`knowledge_base`]);
//! * asset groups (`/api/2.0/fo/asset/group/`).
//!
//! Documents are parsed as they stream in ([`xml`]); a producer task parses
//! and hands bounded batches to the job through a channel of two, so parsing
//! overlaps with the job's database writes and memory stays bounded. Every
//! request goes through the source's rate-limited [`SourceClient`].

pub mod detections;
pub mod knowledge_base;
pub mod scans;
pub mod xml;

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use futures::stream::{self, BoxStream, StreamExt};
use reqwest::Method;

use aegis_shared::model::source_config::{SourceConfig, Vendor};
use aegis_shared::source_http::{RequestSpec, SourceClient, SourceResponse};

use super::scanner::{
    spawn_stream, HostBatch, ScannedVulnerability, Scanner, ScannerError, ScannerGroup,
};
use xml::{XmlDoc, XmlEvent};

pub(crate) const HLD_PATH: &str = "/api/2.0/fo/asset/host/vm/detection/";
pub(crate) const KB_PATH: &str = "/api/2.0/fo/knowledge_base/vuln/";
#[allow(dead_code)] // asset_groups serves the rescan jobs
pub(crate) const GROUP_PATH: &str = "/api/2.0/fo/asset/group/";

/// Long downloads (a page of 2,500 hosts, the whole KB) stream for minutes.
const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(3600);

/// The Qualys implementation of [`Scanner`].
#[derive(Clone)]
pub struct QualysScanner {
    client: SourceClient,
    /// Source payload `kernel_filter` (0-4), sent as `arf_kernel_filter`.
    kernel_filter: i64,
}

impl QualysScanner {
    pub fn new(sc: &SourceConfig, client: SourceClient) -> Result<Self, String> {
        let payload = sc.payload().map_err(|e| e.to_string())?;
        let kernel_filter = payload
            .get("kernel_filter")
            .and_then(serde_json::Value::as_i64)
            .unwrap_or(0);
        if !(0..=4).contains(&kernel_filter) {
            return Err(format!(
                "payload kernel_filter {kernel_filter} is not between 0 and 4"
            ));
        }
        Ok(QualysScanner {
            client,
            kernel_filter,
        })
    }

    pub(crate) fn source_config(&self) -> &str {
        self.client.source_config_id()
    }

    /// Sends a read-only Qualys call (POST with the parameters in the query
    /// string, as Qualys documents) and fails on a non-200 answer.
    pub(crate) async fn call(
        &self,
        path: &str,
        query: &[(String, String)],
    ) -> Result<SourceResponse, ScannerError> {
        let mut spec = RequestSpec::new(Method::POST, path, path)
            .idempotent(true)
            .timeout(DOWNLOAD_TIMEOUT);
        for (k, v) in query {
            spec = spec.query(k.clone(), v.clone());
        }
        let response = self.client.send(spec).await?;
        if response.status().as_u16() != 200 {
            return Err(xml::status_error(response, self.source_config(), path).await);
        }
        Ok(response)
    }
}

fn q(k: &str, v: impl Into<String>) -> (String, String) {
    (k.to_string(), v.into())
}

impl Scanner for QualysScanner {
    fn vendor(&self) -> Vendor {
        Vendor::Qualys
    }

    fn detection_window(&self) -> bool {
        true
    }

    fn host_detections<'a>(
        &'a self,
        groups: &'a [String],
        since: Option<DateTime<Utc>>,
    ) -> BoxStream<'a, Result<HostBatch, ScannerError>> {
        let query = match detections::selection(groups, self.kernel_filter, since) {
            Ok(q) => q,
            Err(reason) => {
                let e = ScannerError::Config {
                    source_config: self.source_config().to_string(),
                    reason,
                };
                return stream::once(async { Err(e) }).boxed();
            }
        };
        let scanner = self.clone();
        spawn_stream(move |tx| async move { detections::run(&scanner, query, tx).await })
    }

    fn vulnerabilities(
        &self,
        since: Option<DateTime<Utc>>,
    ) -> BoxStream<'_, Result<Vec<ScannedVulnerability>, ScannerError>> {
        let mut query = vec![q("action", "list"), q("details", "All")];
        if let Some(since) = since {
            query.push(q(
                "last_modified_after",
                since.format("%Y-%m-%d").to_string(),
            ));
        }
        let scanner = self.clone();
        spawn_stream(move |tx| async move { knowledge_base::run(&scanner, query, tx).await })
    }

    fn asset_groups(&self) -> BoxFuture<'_, Result<Vec<ScannerGroup>, ScannerError>> {
        Box::pin(async move {
            let response = self
                .call(
                    GROUP_PATH,
                    &[q("action", "list"), q("show_attributes", "ALL")],
                )
                .await?;
            let mut doc = XmlDoc::open(
                response,
                self.source_config(),
                GROUP_PATH,
                "ASSET_GROUP_LIST_OUTPUT",
            )
            .await?;
            let mut groups = Vec::new();
            let mut current = ScannerGroup {
                id: String::new(),
                title: String::new(),
            };
            loop {
                match doc.next().await? {
                    XmlEvent::End { name, parent, text } if parent == "ASSET_GROUP" => {
                        match name.as_str() {
                            "ID" => current.id = text,
                            "TITLE" => current.title = text,
                            _ => {}
                        }
                    }
                    XmlEvent::End { name, .. } if name == "ASSET_GROUP" => {
                        if current.id.is_empty() {
                            return Err(doc.not_expected("an ASSET_GROUP without ID"));
                        }
                        groups.push(std::mem::replace(
                            &mut current,
                            ScannerGroup {
                                id: String::new(),
                                title: String::new(),
                            },
                        ));
                    }
                    XmlEvent::Done => return Ok(groups),
                    _ => {}
                }
            }
        })
    }
}

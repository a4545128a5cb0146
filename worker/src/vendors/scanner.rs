//! The scanner trait the sync jobs use (Qualys and Nexpose implement it), and
//! the vendor-neutral shapes it yields.
//!
//! Everything a scanner returns arrives as a *stream of bounded batches*, so a
//! job holds at most a few batches in memory whatever the estate's size, and a
//! failure mid-stream ends the stream with an error naming the source config,
//! the endpoint and (for a bad document) the first 200 characters of the body.
//!
//! The rescan jobs will add scan methods (launch, status, results) to this
//! trait or a sibling one; the sync part does not depend on them.

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use futures::stream::BoxStream;

use aegis_shared::model::source_config::{SourceConfig, Vendor};
use aegis_shared::source_http::{SourceClient, SourceHttpError};

use super::{nexpose::NexposeScanner, qualys::QualysScanner};

/// Hosts per batch a scanner yields (each with all its detections).
pub const HOSTS_PER_BATCH: usize = 100;
/// Vulnerabilities per batch a scanner yields.
pub const VULNS_PER_BATCH: usize = 500;
/// How much of a bad response body an error quotes.
pub const BODY_EXCERPT: usize = 200;

/// Why a scanner call failed. Every variant names the SourceConfig and endpoint.
#[derive(Debug, thiserror::Error)]
pub enum ScannerError {
    #[error(transparent)]
    Http(#[from] SourceHttpError),
    #[error("{endpoint} on SourceConfig {source_config} answered HTTP {status}: {excerpt}")]
    Status {
        source_config: String,
        endpoint: String,
        status: u16,
        excerpt: String,
    },
    #[error("{endpoint} on SourceConfig {source_config}: {vendor} error {code}: {text}")]
    Vendor {
        source_config: String,
        endpoint: String,
        vendor: &'static str,
        code: String,
        text: String,
    },
    #[error("{endpoint} on SourceConfig {source_config}: the response is not the expected document ({reason}); it starts with: {excerpt}")]
    Document {
        source_config: String,
        endpoint: String,
        reason: String,
        excerpt: String,
    },
    #[error("{endpoint} on SourceConfig {source_config}: paging loop: {reason}")]
    PagingLoop {
        source_config: String,
        endpoint: String,
        reason: String,
    },
    #[error("SourceConfig {source_config}: {reason}")]
    Config {
        source_config: String,
        reason: String,
    },
}

/// The first [`BODY_EXCERPT`] characters of a body, as text.
pub fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(BODY_EXCERPT * 4)]);
    text.chars().take(BODY_EXCERPT).collect()
}

/// A detection's state, normalised across scanners (the `DetectionStatus.Status` values).
/// (The sync paths produce vulnerable and fixed; the rescan jobs produce the others.)
#[allow(dead_code)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DetectionState {
    Vulnerable,
    Fixed,
    Exceptioned,
    DeadHost,
    Informational,
    Potential,
}

impl DetectionState {
    /// The `DetectionStatus.Status` text.
    pub fn as_str(self) -> &'static str {
        match self {
            DetectionState::Vulnerable => "vulnerable",
            DetectionState::Fixed => "fixed",
            DetectionState::Exceptioned => "exceptioned",
            DetectionState::DeadHost => "dead host",
            DetectionState::Informational => "informational",
            DetectionState::Potential => "potential",
        }
    }
}

/// One host as the scanner reports it, with every detection reported for it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ScannedHost {
    /// The scanner's asset ID (Qualys host ID, Nexpose asset ID): `Device.AssetID`.
    pub asset_id: String,
    pub ip: String,
    pub hostname: String,
    pub os: String,
    pub mac: String,
    pub instance_id: Option<String>,
    pub tracking_method: Option<String>,
    pub detections: Vec<ScannedDetection>,
}

/// One finding on one host, port and protocol.
#[derive(Clone, Debug, PartialEq)]
pub struct ScannedDetection {
    /// The scanner's vulnerability ID (QID, Nexpose vulnerability id): `VulnerabilityInfo.SourceVulnId`.
    pub vuln_id: String,
    pub state: DetectionState,
    pub port: i32,
    pub protocol: String,
    pub proof: String,
    /// When the scanner says it detected it (AlertDate on creation).
    pub detected: Option<DateTime<Utc>>,
    pub last_found: Option<DateTime<Utc>>,
    pub last_updated: Option<DateTime<Utc>>,
    pub times_seen: i32,
    pub active_kernel: Option<i32>,
}

/// One batch of hosts; `expected_hosts` is the scanner's total for the
/// selection when it tells one (Nexpose does, Qualys does not).
#[derive(Clone, Debug, Default)]
pub struct HostBatch {
    pub hosts: Vec<ScannedHost>,
    pub expected_hosts: Option<u64>,
}

/// Reference kinds (`Vulnerability_Reference.RefType`, `ReferenceType.Id`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefType {
    Cve = 0,
    Ms = 1,
    Vendor = 2,
}

impl RefType {
    /// The original's classification: CVE if the text contains `CVE`, MS if it
    /// starts with `MS`, vendor otherwise.
    pub fn classify(reference: &str) -> RefType {
        if reference.contains("CVE") {
            RefType::Cve
        } else if reference.starts_with("MS") {
            RefType::Ms
        } else {
            RefType::Vendor
        }
    }
}

/// One knowledge-base entry.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ScannedVulnerability {
    pub vuln_id: String,
    pub title: String,
    pub description: String,
    pub threat: Option<String>,
    pub solution: String,
    pub cvss2: f64,
    pub cvss3: Option<f64>,
    /// When the scanner last changed it.
    pub updated: Option<DateTime<Utc>>,
    /// "Yes" / "No" when known.
    pub patchable: Option<String>,
    pub category: Option<String>,
    pub software: String,
    pub detection_information: String,
    pub references: Vec<String>,
}

/// A scanner's asset group (Qualys asset group, Nexpose site).
#[allow(dead_code)] // read by the rescan jobs
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScannerGroup {
    pub id: String,
    pub title: String,
}

/// What the sync jobs need from a vulnerability scanner.
#[allow(dead_code)] // `vendor` and `asset_groups` serve the rescan jobs
pub trait Scanner: Send + Sync {
    /// The vendor behind this scanner.
    fn vendor(&self) -> Vendor;

    /// Whether [`Scanner::host_detections`] honours `since` (Qualys'
    /// `detection_updated_since`). A scanner that does not is always synced in full.
    fn detection_window(&self) -> bool {
        false
    }

    /// Every host of `groups` with its detections, in batches of at most
    /// [`HOSTS_PER_BATCH`] hosts. `groups` are Qualys asset group IDs (or
    /// `tag-` items, a tag selection) or Nexpose site IDs; `since` narrows to
    /// detections changed after it where the vendor supports it.
    fn host_detections<'a>(
        &'a self,
        groups: &'a [String],
        since: Option<DateTime<Utc>>,
    ) -> BoxStream<'a, Result<HostBatch, ScannerError>>;

    /// The knowledge base (changed since `since` where the vendor supports it),
    /// in batches of at most [`VULNS_PER_BATCH`].
    fn vulnerabilities(
        &self,
        since: Option<DateTime<Utc>>,
    ) -> BoxStream<'_, Result<Vec<ScannedVulnerability>, ScannerError>>;

    /// The scanner's asset groups (Qualys) or sites (Nexpose).
    fn asset_groups(&self) -> BoxFuture<'_, Result<Vec<ScannerGroup>, ScannerError>>;
}

/// The scanner implementation for `sc`'s vendor, sending through `client`.
#[allow(clippy::result_large_err)] // built once per job run
pub fn for_source(
    sc: &SourceConfig,
    client: SourceClient,
) -> Result<Box<dyn Scanner>, ScannerError> {
    let config_err = |reason: String| ScannerError::Config {
        source_config: sc.id.clone(),
        reason,
    };
    match sc.vendor().map_err(|e| config_err(e.to_string()))? {
        Vendor::Qualys => Ok(Box::new(
            QualysScanner::new(sc, client).map_err(config_err)?,
        )),
        Vendor::Nexpose => Ok(Box::new(NexposeScanner::new(client))),
        Vendor::Jira => Err(config_err(
            "unrecognized scanner: JIRA is a ticket engine, not a scanner".into(),
        )),
    }
}

/// Runs `produce` in a task that sends into a channel of two and returns the
/// receiving end as a stream: the vendor parses the next batch while the job
/// writes the previous one, and at most two batches wait in memory. Dropping
/// the stream (job cancelled or failed) stops the task.
pub fn spawn_stream<T, F, Fut>(produce: F) -> BoxStream<'static, Result<T, ScannerError>>
where
    T: Send + 'static,
    F: FnOnce(tokio::sync::mpsc::Sender<Result<T, ScannerError>>) -> Fut,
    Fut: std::future::Future<Output = Result<(), ScannerError>> + Send + 'static,
{
    use futures::StreamExt;
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let fut = produce(tx.clone());
    let task = tokio::spawn(async move {
        if let Err(e) = fut.await {
            let _ = tx.send(Err(e)).await;
        }
    });
    let guard = AbortOnDrop(task);
    futures::stream::unfold((rx, guard), |(mut rx, guard)| async move {
        rx.recv().await.map(|item| (item, (rx, guard)))
    })
    .boxed()
}

/// Aborts a producer task when its consumer goes away.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

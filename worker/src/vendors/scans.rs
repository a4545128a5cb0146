//! The scan side of a scanner, as the rescan jobs see it: launch a rescan of
//! some tickets' findings (or a discovery scan of their hosts), read a scan's
//! normalised status, fetch its results (detections and dead hosts), cancel
//! it, and delete the temporary objects it needed (Qualys option profile and
//! search list, Nexpose template copy).
//!
//! A scan travels between jobs as its *scan object*: the JSON the launcher
//! returned (keys `name`, `scanId`, `templateId`, `groupId`, `engineId`,
//! `created`, `scheduled`, as in the original), stored in the ScanSummary's
//! ScanClosePayload under `scan`.
//!
//! **Launching is recorded before it happens.** A launcher gives every scan a
//! name unique to the launch (it ends with the caller's `tag` and the group),
//! creates the scan's temporary objects, then hands the scan object as it will
//! be stored (everything but `scanId`) to the caller's [`LaunchJournal`], and
//! only once that returned asks the scanner to start the scan. Whoever later
//! finds a recorded scan without an ID (the launching worker was killed) asks
//! [`ScanLauncher::find_launched`] whether the scanner has a scan of that name,
//! and adopts it or cleans its temporary objects up.

use std::collections::HashMap;

use futures::future::BoxFuture;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use aegis_shared::model::source_config::{SourceConfig, Vendor};
use aegis_shared::source_http::SourceClient;

use super::nexpose::scans::NexposeScans;
use super::qualys::scans::QualysScans;
use super::scanner::{ScannedHost, ScannerError};

/// One ticket's finding to rescan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScanTarget {
    pub ticket: String,
    pub ip: String,
    /// The scanner's asset ID (ticket DeviceID).
    pub asset_id: String,
    /// The scanner's vulnerability ID (ticket VulnerabilityID up to `;`).
    pub vuln_id: String,
    /// The scanner group (Qualys asset group, Nexpose site) to scan from.
    pub group: String,
    /// The EC2 instance ID of an EC2-tracked device (`Device.InstanceId`), else empty.
    pub instance_id: String,
    /// The device's AWS region (`Device.Region`), empty when unknown.
    pub region: String,
}

/// A vulnerability rescan (NORMAL, PASSIVE, EXCEPTIONS) or a liveness-only
/// discovery scan (DECOMMISSIONED).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScanKind {
    Vulnerability,
    Discovery,
}

/// A scan the scanner accepted, and the targets it covers.
#[derive(Clone, Debug)]
pub struct LaunchedScan {
    pub scan_id: String,
    pub scan: Value,
    pub targets: Vec<ScanTarget>,
}

/// What a launch did: scans launched, targets skipped (with the reason; the
/// rest of the batch goes ahead), groups whose launch failed.
#[derive(Debug, Default)]
pub struct LaunchReport {
    pub launched: Vec<LaunchedScan>,
    pub skipped: Vec<(ScanTarget, String)>,
    pub failed: Vec<(Vec<ScanTarget>, String)>,
}

/// A finished scan's results: the targets' hosts with their detections, and
/// the IPs the scan found dead with the scanner's proof.
#[derive(Debug, Default)]
pub struct ScanResults {
    pub hosts: Vec<ScannedHost>,
    pub dead: HashMap<String, String>,
}

/// A scan scheduled on the scanner, outside Aegis, that is running now.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ScheduledScan {
    pub title: String,
    /// The scanner's scan ID (Qualys: the scan reference).
    pub reference: String,
    pub launched: Option<chrono::DateTime<chrono::Utc>>,
}

/// Where the caller records a scan just before the launcher asks the scanner
/// to start it.
pub trait LaunchJournal: Send + Sync {
    /// `scan` is the scan object without `scanId` (its `name` is unique,
    /// `templateId` names its temporary objects); `targets` are its tickets.
    /// An error stops that scan's launch (its temporary objects are deleted).
    fn record<'a>(
        &'a self,
        scan: &'a Value,
        targets: &'a [ScanTarget],
    ) -> BoxFuture<'a, Result<(), String>>;
}

/// The scan operations of a scanner.
pub trait ScanLauncher: Send + Sync {
    fn vendor(&self) -> Vendor;

    /// The scans scheduled on the scanner that are running now (queued,
    /// loading, running or paused), for ScanSyncJob's `scheduled_scans`.
    /// `None`: this scanner's scheduled scans cannot be tracked.
    fn running_scheduled_scans(
        &self,
    ) -> BoxFuture<'_, Result<Option<Vec<ScheduledScan>>, ScannerError>> {
        Box::pin(async { Ok(None) })
    }

    /// Launches the scans for `targets` (one per scanner group), each named
    /// with `tag` and its group, each recorded in `journal` before the launch
    /// call. Waits and retries, with bounded backoff, while the scanner's
    /// concurrent-scan limit is reached; temporary objects of a failed launch
    /// are deleted.
    fn launch<'a>(
        &'a self,
        kind: ScanKind,
        targets: &'a [ScanTarget],
        tag: &'a str,
        journal: &'a dyn LaunchJournal,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, LaunchReport>;

    /// The scan the scanner started for a recorded scan object (found by its
    /// unique `name`, launched since its `created`), as a complete scan object,
    /// or None when the scanner has no such scan.
    fn find_launched<'a>(
        &'a self,
        recorded: &'a Value,
    ) -> BoxFuture<'a, Result<Option<Value>, ScannerError>>;

    /// The normalised status (`queued`, `processing`, `paused`, `finished`,
    /// `error`, `stopped`, `canceled`, or the scanner's state lower-cased).
    fn status<'a>(&'a self, scan: &'a Value) -> BoxFuture<'a, Result<String, ScannerError>>;

    fn results<'a>(&'a self, scan: &'a Value) -> BoxFuture<'a, Result<ScanResults, ScannerError>>;

    /// Asks the scanner to stop the scan (an abandoned scan).
    fn cancel<'a>(&'a self, scan: &'a Value) -> BoxFuture<'a, Result<(), ScannerError>>;

    /// Deletes the scan's temporary objects; objects already gone are not an error.
    fn clean_up<'a>(&'a self, scan: &'a Value) -> BoxFuture<'a, Result<(), ScannerError>>;
}

/// The launcher of a scanner source config.
pub fn for_source(
    sc: &SourceConfig,
    client: SourceClient,
) -> Result<Box<dyn ScanLauncher>, String> {
    match sc.vendor().map_err(|e| e.to_string())? {
        Vendor::Qualys => Ok(Box::new(QualysScans::new(sc, client)?)),
        Vendor::Nexpose => Ok(Box::new(NexposeScans::new(sc, client)?)),
        other => Err(format!(
            "SourceConfig {}: rescans are not supported for {} yet",
            sc.id,
            other.source_name()
        )),
    }
}

/// A scan's name: `base` followed by the launch's tag and the group, so the
/// scanner can be asked later whether this very launch happened.
pub fn unique_name(base: &str, tag: &str, group: &str) -> String {
    format!("{base} [{tag}/{group}]")
}

/// The scan object's text field, `""` when missing.
pub fn scan_field<'a>(scan: &'a Value, key: &str) -> &'a str {
    scan.get(key).and_then(Value::as_str).unwrap_or("")
}

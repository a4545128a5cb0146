//! The knowledge base (`KNOWLEDGE_BASE_VULN_LIST_OUTPUT`), streamed into
//! batches of [`ScannedVulnerability`].

use tokio::sync::mpsc;

use super::xml::{time, XmlDoc, XmlEvent};
use super::{QualysScanner, KB_PATH};
use crate::vendors::scanner::{ScannedVulnerability, ScannerError, VULNS_PER_BATCH};

pub(super) async fn run(
    scanner: &QualysScanner,
    query: Vec<(String, String)>,
    tx: mpsc::Sender<Result<Vec<ScannedVulnerability>, ScannerError>>,
) -> Result<(), ScannerError> {
    let response = scanner.call(KB_PATH, &query).await?;
    let mut doc = XmlDoc::open(
        response,
        scanner.source_config(),
        KB_PATH,
        "KNOWLEDGE_BASE_VULN_LIST_OUTPUT",
    )
    .await?;
    let mut batch = Vec::with_capacity(VULNS_PER_BATCH);
    let mut v = ScannedVulnerability::default();
    let mut software: Vec<String> = Vec::new();
    let mut cves: Vec<String> = Vec::new();
    let mut vendor_refs: Vec<String> = Vec::new();
    loop {
        match doc.next().await? {
            XmlEvent::Start { name } if name == "VULN" => {
                v = ScannedVulnerability::default();
                software.clear();
                cves.clear();
                vendor_refs.clear();
            }
            XmlEvent::Start { .. } => {}
            XmlEvent::End { name, parent, text } => match (parent.as_str(), name.as_str()) {
                ("VULN", "QID") => v.vuln_id = text,
                ("VULN", "TITLE") => v.title = text,
                ("VULN", "CATEGORY") => v.category = Some(text).filter(|t| !t.is_empty()),
                ("VULN", "DETECTION_INFO") => v.detection_information = text,
                ("VULN", "LAST_SERVICE_MODIFICATION_DATETIME") => v.updated = time(&text),
                ("VULN", "PATCHABLE") => {
                    v.patchable = Some(if text == "1" { "Yes" } else { "No" }.to_string())
                }
                ("VULN", "DIAGNOSIS") => v.threat = Some(text).filter(|t| !t.is_empty()),
                ("VULN", "CONSEQUENCE") => v.description = text,
                ("VULN", "SOLUTION") => v.solution = text,
                ("SOFTWARE", "PRODUCT") if !text.is_empty() => software.push(text),
                ("CVE", "ID") if !text.is_empty() => cves.push(text),
                ("VENDOR_REFERENCE", "ID") if !text.is_empty() => vendor_refs.push(text),
                ("CVSS", "BASE") => v.cvss2 = text.parse().unwrap_or(0.0),
                ("CVSS_V3", "BASE") => v.cvss3 = text.parse().ok(),
                ("VULN_LIST", "VULN") => {
                    if v.vuln_id.parse::<u64>().is_err() {
                        return Err(
                            doc.not_expected(format!("a VULN whose QID is {:?}", v.vuln_id))
                        );
                    }
                    let mut done = std::mem::take(&mut v);
                    done.software = software.join(",");
                    done.references = cves.drain(..).chain(vendor_refs.drain(..)).collect();
                    batch.push(done);
                    if batch.len() >= VULNS_PER_BATCH {
                        let full =
                            std::mem::replace(&mut batch, Vec::with_capacity(VULNS_PER_BATCH));
                        if tx.send(Ok(full)).await.is_err() {
                            return Ok(());
                        }
                    }
                }
                _ => {}
            },
            XmlEvent::Done => {
                if !batch.is_empty() {
                    let _ = tx.send(Ok(batch)).await;
                }
                return Ok(());
            }
        }
    }
}

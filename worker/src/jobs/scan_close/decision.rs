//! ScanCloseJob's decision tables (spec `original-jobs-rescan.md` §4.2–§4.5b):
//! what to do with one ticket given what the scan found. Pure functions, no
//! I/O, so every row of every table is tested here; the job turns a
//! [`Decision`] into JIRA transitions, comments and Ignore rows.
//!
//! First matching row wins, as in the original. Deliberate differences:
//! * a ticket whose vulnerability the scan reported on the device, but on a
//!   different port or protocol than the ticket's, is **left as is and logged**
//!   ([`Decision::Unmatched`]) — the original's port-format mismatch silently
//!   closed such tickets;
//! * a device with no data at all is Scan-Error (coverage gate), never closed;
//! * "closed" follows the original's set (Closed-Exception is not closed), so an
//!   EXCEPTIONS rescan can still close a Closed-Exception ticket as remediated.

use chrono::{DateTime, Utc};

/// The `type` of a rescan (payload key `type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RescanType {
    Normal,
    Decommissioned,
    Passive,
    Exceptions,
    Scheduled,
}

/// How the scanner tracks the device (`Device.TrackingMethod`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tracking {
    Agent,
    Ec2,
    Ip,
    Unknown,
}

impl Tracking {
    pub fn parse(text: &str) -> Self {
        match text.trim().to_ascii_uppercase().as_str() {
            "AGENT" => Tracking::Agent,
            "EC2" => Tracking::Ec2,
            "IP" => Tracking::Ip,
            _ => Tracking::Unknown,
        }
    }
}

/// A detection's status as the scanner reported it for this scan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finding {
    Vulnerable,
    Fixed,
    DeadHost,
    Potential,
    Informational,
    Other(String),
}

impl Finding {
    #[allow(dead_code)] // the unit tests and operators' tools read stored statuses
    pub fn parse(text: &str) -> Self {
        match text.trim().to_ascii_lowercase().as_str() {
            "vulnerable" => Finding::Vulnerable,
            "fixed" => Finding::Fixed,
            "dead host" => Finding::DeadHost,
            "potential" => Finding::Potential,
            "informational" => Finding::Informational,
            other => Finding::Other(other.to_string()),
        }
    }
}

/// The ticket's vulnerability as the scan reported it on the ticket's device.
#[derive(Clone, Debug, PartialEq)]
pub struct Detection {
    pub finding: Finding,
    pub last_updated: Option<DateTime<Utc>>,
    pub proof: String,
    /// `AFFECT_RUNNING_KERNEL` absent or 0 (Qualys); always true for Nexpose.
    pub inactive_kernel: bool,
}

/// What the scan says about the ticket's device and vulnerability.
#[derive(Clone, Debug, PartialEq)]
pub struct Evidence {
    /// The scan returned any detection for the ticket's device.
    pub device_has_detections: bool,
    /// The ticket's (vulnerability, port, protocol) as found on the device.
    pub detection: Option<Detection>,
    /// The scan reported the vulnerability on the device, but only on other ports or
    /// protocols than the ticket's: the ticket cannot be decided safely.
    pub vulnerability_on_other_port: bool,
    /// Proof that the scan found the ticket's IP dead.
    pub dead_proof: Option<String>,
    pub tracking: Tracking,
    /// When the scan was launched (ScanSummary.CreatedDate).
    pub scan_created: DateTime<Utc>,
    /// The payload's group hands dead IPs to a CloudDecommissionJob.
    pub cloud_decommission_group: bool,
}

/// The ticket as Aegis sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct TicketState {
    /// The logical status, e.g. `Resolved-Remediated` (after the status map).
    pub status: String,
    pub ip: String,
}

/// Statuses the original treats as closed (exact set; Closed-Exception is not in it).
pub const CLOSED_STATUSES: [&str; 5] = [
    "Closed-Remediated",
    "Closed-False-Positive",
    "Closed-Decommission",
    "Closed-CERF",
    "Closed-Error",
];

pub fn is_closed(status: &str) -> bool {
    CLOSED_STATUSES
        .iter()
        .any(|s| s.eq_ignore_ascii_case(status))
        || status.eq_ignore_ascii_case("Closed-FalsePositive")
}

/// What to do with one ticket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Change nothing; the reason is logged.
    Leave(String),
    /// The ticket's vulnerability was found on other ports only: leave it, log loudly.
    Unmatched(String),
    /// Transition to Scan-Error (keeping the assignee) with this comment.
    ScanError(String),
    /// Transition to Resolved-Decommissioned with this comment (a later DECOMMISSIONED rescan confirms).
    ResolvedDecommissioned(String),
    /// Close as Closed-Remediated with this reason.
    CloseRemediated(String),
    /// Close as Closed-Decommission with this reason, after writing the device's
    /// Ignore row (TypeId 2) — written even when the ticket is already closed.
    CloseDecommissioned(String),
    /// Transition to Reopened with this comment (and Reopen Reason).
    Reopen(String),
    /// Hand the IP to a CloudDecommissionJob; comment on the ticket when given.
    CloudDecommission(Option<String>),
}

fn scan_error_not_covered(scan: &str) -> String {
    format!(
        "Scan [{scan}] did not cover this device: make sure the asset is in scope and in an asset group. \
         If it is out of scope, move the ticket to Closed-NA or alert the VM team."
    )
}

fn close_reason(d: Option<&Detection>) -> String {
    match d {
        Some(d) if d.finding == Finding::Potential => {
            "Closing ticket; Potential vulnerability".into()
        }
        Some(d) if d.inactive_kernel => "Remediation successful".into(),
        _ => "Remediation successful; Vulnerability not found".into(),
    }
}

fn resolved_decommissioned_comment(proof: &str) -> String {
    format!(
        "The device could not be detected by the vulnerability rescan. It was moved to Resolved-Decommissioned \
         and will be rescanned with the discovery option profile.\n\nPROOF:\n{proof}"
    )
}

/// Turns scanner HTML proof into JIRA text: tags dropped, links as `[text|href]`.
pub fn strip_html(proof: &str) -> String {
    let mut out = String::with_capacity(proof.len());
    let mut rest = proof;
    while let Some(start) = rest.find('<') {
        out.push_str(&rest[..start]);
        let Some(end) = rest[start..].find('>') else {
            out.push_str(&rest[start..]);
            return out;
        };
        let tag = &rest[start + 1..start + end];
        rest = &rest[start + end + 1..];
        if tag.to_ascii_lowercase().starts_with("a ") {
            let href = tag
                .split("href=")
                .nth(1)
                .map(|h| h.trim_matches(|c| c == '"' || c == '\'' || c == ' '))
                .unwrap_or_default();
            let href = href.split(['"', '\'']).next().unwrap_or_default();
            if let Some(close) = rest.to_ascii_lowercase().find("</a>") {
                out.push_str(&format!("[{}|{}]", &rest[..close], href));
                rest = &rest[close + 4..];
            }
        } else if tag.eq_ignore_ascii_case("br")
            || tag.eq_ignore_ascii_case("br/")
            || tag.eq_ignore_ascii_case("p")
        {
            out.push('\n');
        }
    }
    out.push_str(rest);
    out.trim().to_string()
}

fn reopen_comment(kind: RescanType, d: Option<&Detection>, scan: &str) -> String {
    match kind {
        RescanType::Decommissioned => format!(
            "Ticket reopened as scan [{scan}] has determined that the host on this IP is responsive. \
             If the asset running on this IP is not the one this ticket was opened for (IP reuse), notify the VM team."
        ),
        _ => format!(
            "Remediation Failed\n\nPROOF:\n{}\n\nScan Id [Id: {scan}]",
            d.map(|d| strip_html(&d.proof)).unwrap_or_default()
        ),
    }
}

/// Whether a vulnerable result reopens this ticket (the original's `shouldOpenTicket`).
fn should_reopen(kind: RescanType, status: &str) -> bool {
    match kind {
        RescanType::Normal | RescanType::Scheduled => {
            status.eq_ignore_ascii_case("Resolved-Remediated")
        }
        RescanType::Decommissioned => status.eq_ignore_ascii_case("Resolved-Decommissioned"),
        RescanType::Passive | RescanType::Exceptions => false,
    }
}

/// Decides one ticket. `scan` is the scanner's scan ID, quoted in comments.
pub fn decide(kind: RescanType, ticket: &TicketState, ev: &Evidence, scan: &str) -> Decision {
    let closed = is_closed(&ticket.status);
    let detection = ev.detection.as_ref();
    let finding = detection.map(|d| &d.finding);
    // SCHEDULED scans report no dead hosts (§4.5b): a dead report is not evidence there.
    let dead_reported =
        kind != RescanType::Scheduled && ev.dead_proof.is_some() && !ticket.ip.trim().is_empty();
    // AGENT devices are sometimes reported dead while alive: distrust that report.
    let dead_reported_likely = dead_reported && ev.tracking != Tracking::Agent;
    // Agent and EC2 host data is purged when the host dies: no data means dead.
    let no_data_likely_dead = !ev.device_has_detections
        && matches!(kind, RescanType::Scheduled | RescanType::Decommissioned)
        && matches!(ev.tracking, Tracking::Ec2 | Tracking::Agent);

    // Coverage gate (§4.2).
    if !(ev.device_has_detections || dead_reported_likely || no_data_likely_dead) {
        return if closed {
            Decision::Leave("the scan did not cover the device, and the ticket is closed".into())
        } else {
            Decision::ScanError(scan_error_not_covered(scan))
        };
    }
    if ev.vulnerability_on_other_port && detection.is_none() {
        return Decision::Unmatched(format!(
            "scan [{scan}] reported this vulnerability on the device only on other ports or protocols than the ticket's; left unchanged"
        ));
    }
    let dead_proof = ev
        .dead_proof
        .clone()
        .or_else(|| {
            detection
                .filter(|d| d.finding == Finding::DeadHost)
                .map(|d| d.proof.clone())
        })
        .unwrap_or_default();

    match kind {
        RescanType::Normal => {
            if dead_reported || finding == Some(&Finding::DeadHost) {
                if closed {
                    return Decision::Leave("dead host, ticket already closed".into());
                }
                return if ev.cloud_decommission_group {
                    Decision::CloudDecommission(Some(cloud_comment(scan, &dead_proof)))
                } else {
                    Decision::ResolvedDecommissioned(resolved_decommissioned_comment(&dead_proof))
                };
            }
            if let Some(d) = detection {
                if let Some(updated) = d.last_updated {
                    if updated < ev.scan_created && ev.tracking != Tracking::Agent {
                        return if closed {
                            Decision::Leave("stale scan data, ticket already closed".into())
                        } else {
                            Decision::ScanError("The scan did not check the device for the vulnerability likely due to authentication issues".into())
                        };
                    }
                }
            }
            remediated_or(kind, ticket, detection, closed, scan)
        }
        RescanType::Decommissioned => {
            if no_data_likely_dead || dead_reported_likely || finding == Some(&Finding::DeadHost) {
                if ev.tracking == Tracking::Ec2 {
                    return if ticket.ip.trim().is_empty() {
                        Decision::Leave("EC2 device reported dead but the ticket has no IP".into())
                    } else {
                        Decision::CloudDecommission(Some(cloud_comment(scan, &dead_proof)))
                    };
                }
                let proof = if dead_proof.is_empty() {
                    detection.map(|d| d.proof.clone()).unwrap_or_default()
                } else {
                    dead_proof
                };
                return Decision::CloseDecommissioned(format!(
                    "Device found to be dead by Scanner\n{proof}"
                ));
            }
            match finding {
                None | Some(Finding::Fixed) | Some(Finding::Vulnerable) => {
                    if should_reopen(kind, &ticket.status) {
                        Decision::Reopen(reopen_comment(kind, detection, scan))
                    } else {
                        Decision::Leave("host alive; ticket not Resolved-Decommissioned".into())
                    }
                }
                Some(other) => Decision::Leave(format!("unrecognized status {other:?}")),
            }
        }
        RescanType::Passive | RescanType::Exceptions => {
            if dead_reported || finding == Some(&Finding::DeadHost) {
                if closed {
                    return Decision::Leave("dead host, ticket already closed".into());
                }
                return if ev.cloud_decommission_group {
                    Decision::CloudDecommission(None)
                } else {
                    Decision::ResolvedDecommissioned(resolved_decommissioned_comment(&dead_proof))
                };
            }
            remediated_or(kind, ticket, detection, closed, scan)
        }
        RescanType::Scheduled => scheduled(ticket, detection, no_data_likely_dead, closed, scan),
    }
}

/// The SCHEDULED table (§4.5b), after the coverage gate; first match wins:
///
/// | # | condition | decision |
/// |---|---|---|
/// | S1 | EC2/AGENT device with no detections at all | cloud-decommission route with comment (nothing without an IP) |
/// | S2 | no detection, or `fixed` | Closed-Remediated (unless already closed) |
/// | S3 | `vulnerable` | Reopened with the proof, only from Resolved-Remediated |
/// | S4 | anything else, **including `potential`** | left, logged "unrecognized" |
///
/// Dead-host reports are not used (a scheduled scan's results have none).
pub fn scheduled(
    ticket: &TicketState,
    detection: Option<&Detection>,
    no_data_likely_dead: bool,
    closed: bool,
    scan: &str,
) -> Decision {
    if no_data_likely_dead {
        return if ticket.ip.trim().is_empty() {
            Decision::Leave("device without data but the ticket has no IP".into())
        } else {
            Decision::CloudDecommission(Some(cloud_comment(scan, "")))
        };
    }
    match detection.map(|d| &d.finding) {
        None | Some(Finding::Fixed) => close_remediated(detection, closed, scan),
        Some(Finding::Vulnerable) => vulnerable(RescanType::Scheduled, ticket, detection, scan),
        Some(other) => Decision::Leave(format!("unrecognized status {other:?}")),
    }
}

fn close_remediated(d: Option<&Detection>, closed: bool, scan: &str) -> Decision {
    if closed {
        Decision::Leave("already closed".into())
    } else {
        Decision::CloseRemediated(format!("{}\n\nScan [Id: {scan}]", close_reason(d)))
    }
}

fn vulnerable(
    kind: RescanType,
    ticket: &TicketState,
    d: Option<&Detection>,
    scan: &str,
) -> Decision {
    if should_reopen(kind, &ticket.status) {
        Decision::Reopen(reopen_comment(kind, d, scan))
    } else {
        Decision::Leave(format!(
            "still vulnerable; ticket in {} is not in the proper resolved state to reopen",
            ticket.status
        ))
    }
}

/// The shared tail of NORMAL, PASSIVE and EXCEPTIONS: fixed/absent/potential close,
/// vulnerable reopens (NORMAL only), anything else is left.
fn remediated_or(
    kind: RescanType,
    ticket: &TicketState,
    d: Option<&Detection>,
    closed: bool,
    scan: &str,
) -> Decision {
    match d.map(|d| &d.finding) {
        None | Some(Finding::Fixed) | Some(Finding::Potential) => close_remediated(d, closed, scan),
        Some(Finding::Vulnerable) => vulnerable(kind, ticket, d, scan),
        Some(other) => Decision::Leave(format!("unrecognized status {other:?}")),
    }
}

fn cloud_comment(scan: &str, proof: &str) -> String {
    let mut c = format!("Scan [{scan}] reported the IP as dead, sending IP to cloud decommission job for verification");
    if !proof.is_empty() {
        c.push_str(&format!("\n\n[{proof}]"));
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 24, h, 0, 0)
            .single()
            .expect("valid")
    }
    fn ticket(status: &str) -> TicketState {
        TicketState {
            status: status.into(),
            ip: "10.0.0.5".into(),
        }
    }
    fn found(finding: Finding) -> Evidence {
        Evidence {
            device_has_detections: true,
            detection: Some(Detection {
                finding,
                last_updated: Some(t(12)),
                proof: "<b>OpenSSL 1.0.2</b> found".into(),
                inactive_kernel: false,
            }),
            vulnerability_on_other_port: false,
            dead_proof: None,
            tracking: Tracking::Ip,
            scan_created: t(11),
            cloud_decommission_group: false,
        }
    }
    fn absent() -> Evidence {
        Evidence {
            detection: None,
            ..found(Finding::Fixed)
        }
    }
    fn no_data(tracking: Tracking) -> Evidence {
        Evidence {
            device_has_detections: false,
            detection: None,
            tracking,
            ..found(Finding::Fixed)
        }
    }
    fn dead() -> Evidence {
        Evidence {
            dead_proof: Some("HOST_SUMMARY dead 10.0.0.5".into()),
            ..absent()
        }
    }
    use RescanType::*;

    #[test]
    fn normal_fixed_or_absent_closes_remediated() {
        assert!(
            matches!(decide(Normal, &ticket("Resolved-Remediated"), &found(Finding::Fixed), "s1"), Decision::CloseRemediated(r) if r.contains("Vulnerability not found") && r.contains("Scan [Id: s1]"))
        );
        assert!(matches!(
            decide(Normal, &ticket("Resolved-Remediated"), &absent(), "s1"),
            Decision::CloseRemediated(_)
        ));
        assert!(
            matches!(decide(Normal, &ticket("Resolved-Remediated"), &found(Finding::Potential), "s1"), Decision::CloseRemediated(r) if r.contains("Potential"))
        );
        // Related Open tickets are closed too when fixed.
        assert!(matches!(
            decide(Normal, &ticket("Open"), &found(Finding::Fixed), "s1"),
            Decision::CloseRemediated(_)
        ));
        assert!(matches!(
            decide(
                Normal,
                &ticket("Closed-Remediated"),
                &found(Finding::Fixed),
                "s1"
            ),
            Decision::Leave(_)
        ));
    }

    #[test]
    fn normal_still_vulnerable_reopens_only_resolved_remediated_with_the_proof() {
        match decide(
            Normal,
            &ticket("Resolved-Remediated"),
            &found(Finding::Vulnerable),
            "s1",
        ) {
            Decision::Reopen(c) => {
                assert!(
                    c.starts_with("Remediation Failed\n\nPROOF:\nOpenSSL 1.0.2 found"),
                    "{c}"
                );
                assert!(c.ends_with("Scan Id [Id: s1]"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            decide(Normal, &ticket("Open"), &found(Finding::Vulnerable), "s1"),
            Decision::Leave(_)
        ));
    }

    #[test]
    fn normal_stale_data_is_scan_error_unless_agent() {
        let mut ev = found(Finding::Vulnerable);
        ev.detection.as_mut().expect("some").last_updated = Some(t(10));
        assert!(
            matches!(decide(Normal, &ticket("Resolved-Remediated"), &ev, "s1"), Decision::ScanError(c) if c.contains("authentication"))
        );
        ev.tracking = Tracking::Agent;
        assert!(matches!(
            decide(Normal, &ticket("Resolved-Remediated"), &ev, "s1"),
            Decision::Reopen(_)
        ));
    }

    #[test]
    fn normal_dead_host_goes_to_resolved_decommissioned_or_cloud() {
        assert!(
            matches!(decide(Normal, &ticket("Resolved-Remediated"), &dead(), "s1"), Decision::ResolvedDecommissioned(c) if c.contains("HOST_SUMMARY"))
        );
        let mut ev = dead();
        ev.cloud_decommission_group = true;
        assert!(matches!(
            decide(Normal, &ticket("Resolved-Remediated"), &ev, "s1"),
            Decision::CloudDecommission(Some(_))
        ));
        assert!(matches!(
            decide(
                Normal,
                &ticket("Resolved-Remediated"),
                &found(Finding::DeadHost),
                "s1"
            ),
            Decision::ResolvedDecommissioned(_)
        ));
    }

    #[test]
    fn device_without_data_is_scan_error_never_closed() {
        assert!(
            matches!(decide(Normal, &ticket("Resolved-Remediated"), &no_data(Tracking::Ip), "s1"), Decision::ScanError(c) if c.contains("did not cover"))
        );
        assert!(matches!(
            decide(
                Exceptions,
                &ticket("Closed-Exception"),
                &no_data(Tracking::Ip),
                "s1"
            ),
            Decision::ScanError(_)
        ));
        assert!(matches!(
            decide(
                Normal,
                &ticket("Closed-Remediated"),
                &no_data(Tracking::Ip),
                "s1"
            ),
            Decision::Leave(_)
        ));
    }

    #[test]
    fn vulnerability_on_another_port_leaves_the_ticket() {
        let ev = Evidence {
            vulnerability_on_other_port: true,
            ..absent()
        };
        assert!(matches!(
            decide(Normal, &ticket("Resolved-Remediated"), &ev, "s1"),
            Decision::Unmatched(_)
        ));
    }

    #[test]
    fn decommission_dead_closes_with_ignore_and_alive_reopens() {
        assert!(
            matches!(decide(Decommissioned, &ticket("Resolved-Decommissioned"), &dead(), "s1"), Decision::CloseDecommissioned(r) if r.starts_with("Device found to be dead by Scanner"))
        );
        // Related tickets of the dead device close too.
        assert!(matches!(
            decide(Decommissioned, &ticket("Open"), &dead(), "s1"),
            Decision::CloseDecommissioned(_)
        ));
        // Agents reported dead are not trusted; EC2/agent without data are dead.
        let mut agent = dead();
        agent.tracking = Tracking::Agent;
        agent.device_has_detections = false;
        assert!(matches!(
            decide(
                Decommissioned,
                &ticket("Resolved-Decommissioned"),
                &agent,
                "s1"
            ),
            Decision::CloseDecommissioned(_)
        ));
        assert!(matches!(
            decide(
                Decommissioned,
                &ticket("Resolved-Decommissioned"),
                &no_data(Tracking::Ec2),
                "s1"
            ),
            Decision::CloudDecommission(Some(_))
        ));
        match decide(
            Decommissioned,
            &ticket("Resolved-Decommissioned"),
            &found(Finding::Vulnerable),
            "s1",
        ) {
            Decision::Reopen(c) => assert!(c.contains("responsive") && c.contains("IP reuse")),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            decide(
                Decommissioned,
                &ticket("Open"),
                &found(Finding::Fixed),
                "s1"
            ),
            Decision::Leave(_)
        ));
        // IP-tracked device with no data and no dead report: not covered.
        assert!(matches!(
            decide(
                Decommissioned,
                &ticket("Resolved-Decommissioned"),
                &no_data(Tracking::Ip),
                "s1"
            ),
            Decision::ScanError(_)
        ));
    }

    #[test]
    fn passive_and_exceptions_never_reopen() {
        for kind in [Passive, Exceptions] {
            assert!(matches!(
                decide(
                    kind,
                    &ticket("Resolved-Remediated"),
                    &found(Finding::Vulnerable),
                    "s1"
                ),
                Decision::Leave(_)
            ));
            assert!(matches!(
                decide(
                    kind,
                    &ticket("Closed-Exception"),
                    &found(Finding::Fixed),
                    "s1"
                ),
                Decision::CloseRemediated(_)
            ));
            assert!(matches!(
                decide(kind, &ticket("Open"), &dead(), "s1"),
                Decision::ResolvedDecommissioned(_)
            ));
            let mut cloud = dead();
            cloud.cloud_decommission_group = true;
            assert_eq!(
                decide(kind, &ticket("Open"), &cloud, "s1"),
                Decision::CloudDecommission(None)
            );
        }
    }

    #[test]
    fn scheduled_reopens_resolved_remediated_and_ignores_potential() {
        assert!(matches!(
            decide(
                Scheduled,
                &ticket("Resolved-Remediated"),
                &found(Finding::Vulnerable),
                "s1"
            ),
            Decision::Reopen(_)
        ));
        assert!(matches!(
            decide(Scheduled, &ticket("Open"), &found(Finding::Fixed), "s1"),
            Decision::CloseRemediated(_)
        ));
        assert!(matches!(
            decide(Scheduled, &ticket("Open"), &found(Finding::Potential), "s1"),
            Decision::Leave(_)
        ));
        assert!(matches!(
            decide(Scheduled, &ticket("Open"), &no_data(Tracking::Agent), "s1"),
            Decision::CloudDecommission(Some(_))
        ));
    }

    fn detection(finding: Finding) -> Detection {
        found(finding).detection.expect("some")
    }

    #[test]
    fn scheduled_s1_ec2_or_agent_device_without_data_goes_to_cloud_decommission() {
        match scheduled(&ticket("Resolved-Remediated"), None, true, false, "s1") {
            Decision::CloudDecommission(Some(c)) => {
                assert!(
                    c.contains("Scan [s1]") && c.contains("cloud decommission"),
                    "{c}"
                )
            }
            other => panic!("{other:?}"),
        }
        let no_ip = TicketState {
            ip: " ".into(),
            ..ticket("Open")
        };
        assert!(matches!(
            scheduled(&no_ip, None, true, false, "s1"),
            Decision::Leave(_)
        ));
        // Through the whole table: only EC2 and AGENT devices count as dead without data.
        for tracking in [Tracking::Ec2, Tracking::Agent] {
            assert!(matches!(
                decide(Scheduled, &ticket("Open"), &no_data(tracking), "s1"),
                Decision::CloudDecommission(Some(_))
            ));
        }
        assert!(matches!(
            decide(Scheduled, &ticket("Open"), &no_data(Tracking::Ip), "s1"),
            Decision::ScanError(_)
        ));
    }

    #[test]
    fn scheduled_s2_absent_or_fixed_closes_remediated_unless_closed() {
        for status in [
            "Resolved-Remediated",
            "Open",
            "Reopened",
            "Resolved-Decommissioned",
        ] {
            assert!(matches!(
                scheduled(&ticket(status), None, false, false, "s1"),
                Decision::CloseRemediated(r) if r.contains("Scan [Id: s1]")
            ));
            assert!(matches!(
                scheduled(
                    &ticket(status),
                    Some(&detection(Finding::Fixed)),
                    false,
                    false,
                    "s1"
                ),
                Decision::CloseRemediated(_)
            ));
        }
        assert!(matches!(
            scheduled(
                &ticket("Closed-Remediated"),
                Some(&detection(Finding::Fixed)),
                false,
                true,
                "s1"
            ),
            Decision::Leave(_)
        ));
    }

    #[test]
    fn scheduled_s3_vulnerable_reopens_only_resolved_remediated_with_the_proof() {
        match scheduled(
            &ticket("Resolved-Remediated"),
            Some(&detection(Finding::Vulnerable)),
            false,
            false,
            "s1",
        ) {
            Decision::Reopen(c) => assert!(
                c.starts_with("Remediation Failed\n\nPROOF:\nOpenSSL 1.0.2 found")
                    && c.ends_with("Scan Id [Id: s1]"),
                "{c}"
            ),
            other => panic!("{other:?}"),
        }
        for status in [
            "Open",
            "Reopened",
            "In-Progress",
            "Resolved-Decommissioned",
            "Closed-Exception",
        ] {
            assert!(
                matches!(
                    scheduled(
                        &ticket(status),
                        Some(&detection(Finding::Vulnerable)),
                        false,
                        false,
                        "s1"
                    ),
                    Decision::Leave(_)
                ),
                "{status} is never reopened"
            );
        }
    }

    #[test]
    fn scheduled_s4_potential_and_other_statuses_are_unrecognized() {
        for f in [
            Finding::Potential,
            Finding::Informational,
            Finding::DeadHost,
            Finding::Other("exceptioned".into()),
        ] {
            assert!(
                matches!(
                    scheduled(&ticket("Resolved-Remediated"), Some(&detection(f.clone())), false, false, "s1"),
                    Decision::Leave(r) if r.contains("unrecognized")
                ),
                "{f:?}"
            );
        }
    }

    #[test]
    fn scheduled_ignores_dead_host_reports() {
        // A dead report does not pass the coverage gate, nor decommission the ticket.
        let ev = Evidence {
            device_has_detections: false,
            ..dead()
        };
        assert!(matches!(
            decide(Scheduled, &ticket("Resolved-Remediated"), &ev, "s1"),
            Decision::ScanError(_)
        ));
        let ev = Evidence {
            detection: Some(detection(Finding::Vulnerable)),
            ..dead()
        };
        assert!(matches!(
            decide(Scheduled, &ticket("Resolved-Remediated"), &ev, "s1"),
            Decision::Reopen(_)
        ));
    }

    #[test]
    fn closed_set_matches_the_original() {
        assert!(
            is_closed("Closed-Remediated")
                && is_closed("closed-decommission")
                && is_closed("Closed-FalsePositive")
        );
        assert!(!is_closed("Closed-Exception") && !is_closed("Resolved-Remediated"));
    }

    #[test]
    fn html_proof_becomes_jira_text() {
        assert_eq!(
            strip_html("<p>Found <b>1.0</b> see <a href=\"https://x/y\">advisory</a></p>"),
            "Found 1.0 see [advisory|https://x/y]"
        );
        assert_eq!(strip_html("plain < text"), "plain < text");
    }
}

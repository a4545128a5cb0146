//! Qualys EC2 rescans end to end: EC2-tracked hosts of an asset group listed
//! in the Qualys SourceConfig's `ec2_scan_settings` are rescanned by instance
//! ID (`ec2_instance_ids`, `ec2_endpoint`, `connector_name`, `iscanner_name`),
//! their results read by host ID, and ScanCloseJob decides their tickets as
//! for an IP scan. An IP-tracked host of the same group still gets an IP scan.
//!
//! Run `cargo build --workspace --bins` first.

use aegis_sim::{Proto, WorldFixture};
use aegis_tests::rescan_rig::{ip, RigBuilder};
use serde_json::{json, Value};

/// Two EC2-tracked hosts and one IP-tracked host in Qualys asset group 42.
fn fixture() -> WorldFixture {
    serde_json::from_value(json!({
        "hosts": [
            {"ip": "172.16.0.9", "hostname": "ec2-a.internal", "os": "Amazon Linux 2", "qualys_host_id": 2001,
             "tracking_method": "EC2", "ec2_instance_id": "i-0aaa", "asset_group_ids": [42],
             "vulns": [{"qid": 38739, "port": 443, "protocol": "tcp", "proof": "TLSv1.0 enabled"}]},
            {"ip": "172.16.0.10", "hostname": "ec2-b.internal", "os": "Amazon Linux 2", "qualys_host_id": 2002,
             "tracking_method": "EC2", "ec2_instance_id": "i-0bbb", "asset_group_ids": [42],
             "vulns": [{"qid": 38740, "port": 22, "protocol": "tcp", "proof": "OpenSSH 7.2 banner"}]},
            {"ip": "10.0.0.1", "hostname": "web1.example", "os": "Ubuntu Linux 18.04", "qualys_host_id": 1001,
             "asset_group_ids": [42],
             "vulns": [{"qid": 38742, "port": 80, "protocol": "tcp"}]}
        ],
        "kb": [
            {"qid": 38739, "title": "SSL weak ciphers", "severity": 4, "cvss2": 7.5, "cvss3": 7.4},
            {"qid": 38740, "title": "SSH old", "severity": 4, "cvss2": 7.8},
            {"qid": 38742, "title": "Apache old", "severity": 4, "cvss2": 7.2}
        ],
        "asset_groups": [{"id": 42, "title": "cloud-prod", "appliance_ids": [7]}],
        "appliances": [{"id": 7, "name": "sim-scanner-1", "status": "Online"}]
    }))
    .expect("fixture")
}

fn scans(r: &aegis_tests::rescan_rig::Rig) -> Vec<Value> {
    r.sim.state_summary()["qualys"]["scans"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test]
async fn ec2_tickets_are_rescanned_by_instance_id_and_closed_or_reopened() -> anyhow::Result<()> {
    let r = RigBuilder::new("EC2RESCAN", fixture())
        .qualys_concurrency_limit(8)
        .scanner_payload(
            "ec2_scan_settings",
            json!({"42": {"connector_name": "aws-prod", "scanner_name": "sim-scanner-1", "region": "us-east-1"}}),
        )
        .build()
        .await?;
    r.sync_and_ticket().await?;
    let fixed = r.key("172.16.0.9", "38739");
    let still = r.key("172.16.0.10", "38740");
    let by_ip = r.key("10.0.0.1", "38742");
    for k in [&fixed, &still, &by_ip] {
        r.sim.jira_transition(k, "Resolved-Remediated")?;
    }
    r.sim
        .fix_vulnerability(ip("172.16.0.9"), 38739, 443, Proto::Tcp)?;
    r.sim
        .fix_vulnerability(ip("10.0.0.1"), 38742, 80, Proto::Tcp)?;

    r.run("RescanQueueJob", None).await?;
    r.settle().await?;

    let all = scans(&r);
    let ec2: Vec<&Value> = all.iter().filter(|s| !s["ec2"].is_null()).collect();
    assert_eq!(
        ec2.len(),
        1,
        "one EC2 scan for two instances: {all:?}\n{}",
        r.f.logs()
    );
    let target = ec2[0]["target"].as_str().unwrap_or_default();
    assert!(
        target.contains("i-0aaa") && target.contains("i-0bbb"),
        "EC2 scan by instance ID: {target}"
    );
    assert_eq!(ec2[0]["ec2"]["connector_name"], "aws-prod");
    assert_eq!(ec2[0]["ec2"]["ec2_endpoint"], "us-east-1");
    assert_eq!(ec2[0]["scanner"], "sim-scanner-1");
    let ip_scans: Vec<&Value> = all.iter().filter(|s| s["ec2"].is_null()).collect();
    assert_eq!(ip_scans.len(), 1, "one IP scan for the IP host: {all:?}");
    let ip_target = ip_scans[0]["target"].as_str().unwrap_or_default();
    assert!(
        ip_target.contains("10.0.0.1") && !ip_target.contains("172.16."),
        "no IP scan of the EC2 hosts: {ip_target}"
    );

    assert_eq!(
        r.status(&fixed),
        "Closed-Remediated",
        "{:?}\n{}",
        r.comments(&fixed),
        r.f.logs()
    );
    assert_eq!(r.status(&still), "Reopened", "{:?}", r.comments(&still));
    let proof = r.comments(&still);
    assert!(
        proof.contains("Remediation Failed") && proof.contains("OpenSSH 7.2"),
        "proof comment: {proof}"
    );
    assert_eq!(r.status(&by_ip), "Closed-Remediated");

    let q = &r.sim.state_summary()["qualys"];
    assert_eq!(
        q["option_profile_copies"], 0,
        "option profiles deleted: {q}"
    );
    assert_eq!(
        q["search_lists"].as_array().map(Vec::len),
        Some(0),
        "search lists deleted: {q}"
    );
    assert_eq!(
        r.count("SELECT COUNT(*) FROM RescanLease WHERE OrganizationID = ?")
            .await?,
        0
    );
    assert!(
        r.failed_jobs().await?.is_empty(),
        "{:?}",
        r.failed_jobs().await?
    );
    Ok(())
}

//! The control API over HTTP (`/_sim/...` on the control port and on vendor ports) and the
//! cross-vendor scenario of spec §5.7 (asset sync → ticket → user resolves → rescan → close).

mod common;

use std::time::Duration;

use aegis_sim::{ScanTiming, SimConfig};
use common::{eventually, jira, nexpose, qualys, start, start_with, xml_texts};
use reqwest::Method;
use serde_json::{json, Value};

async fn control(
    sim: &aegis_sim::Simulator,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = common::client().request(method, format!("{}{}", sim.control_url(), path));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("send");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("text");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test]
async fn seed_truth_hosts_and_reset_over_http() {
    let sim = start(3, 2).await;
    let fixture = json!({"hosts": [{"ip": "10.0.0.5", "qualys_host_id": 1001, "asset_group_ids": [42],
                                    "vulns": [{"qid": 38739, "port": 443, "protocol": "tcp"}]}],
                         "asset_groups": [{"id": 42, "title": "DMZ", "appliance_ids": [7]}]});
    let (s, _) = control(&sim, Method::POST, "/_sim/seed", Some(fixture)).await;
    assert_eq!(s, 200);
    let (s, host) = control(&sim, Method::GET, "/_sim/hosts/10.0.0.5", None).await;
    assert_eq!(s, 200);
    assert_eq!(host["qualys_host_id"], 1001);
    assert_eq!(host["truth"][0]["vulnerable"], true);
    let (s, _) = control(&sim, Method::POST, "/_sim/truth", Some(json!({"ip": "10.0.0.5", "qid": 38739, "port": 443, "protocol": "tcp", "vulnerable": false}))).await;
    assert_eq!(s, 200);
    let (s, _) = control(
        &sim,
        Method::POST,
        "/_sim/hosts/10.0.0.5",
        Some(json!({"alive": false})),
    )
    .await;
    assert_eq!(s, 200);
    let (_, host) = control(&sim, Method::GET, "/_sim/hosts/10.0.0.5", None).await;
    assert_eq!(host["truth"][0]["vulnerable"], false);
    assert_eq!(host["alive"], false);
    let (s, _) = control(&sim, Method::GET, "/_sim/hosts/10.9.9.9", None).await;
    assert_eq!(s, 404);
    let (s, _) = control(
        &sim,
        Method::POST,
        "/_sim/truth",
        Some(json!({"nonsense": true})),
    )
    .await;
    assert_eq!(s, 400);
    let (s, _) = control(&sim, Method::POST, "/_sim/reset", None).await;
    assert_eq!(s, 200);
    let (_, state) = control(&sim, Method::GET, "/_sim/state", None).await;
    assert_eq!(state["hosts"], 3);
    // Also reachable on a vendor port.
    let resp = common::client()
        .get(format!("{}/_sim/health", sim.qualys_url()))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 200);
    let (s, xml) = control(&sim, Method::GET, "/_sim/jira/workflow.xml", None).await;
    assert_eq!(s, 200);
    let xml = xml.as_str().expect("xml text").to_string();
    assert!(!xml_texts(&xml, &["workflow", "meta"]).is_empty());
    sim.shutdown().await;
}

#[tokio::test]
async fn clock_advance_finishes_scans() {
    let sim = start(2, 1).await; // default timing: 30 s until processed
    let (_, _, body) = qualys(
        &sim,
        Method::POST,
        "/api/2.0/fo/scan/?action=launch&scan_title=t&option_id=300001&ip=10.1.0.1&iscanner_id=7",
    )
    .await;
    let reference = xml_texts(&body, &["ITEM", "VALUE"])[1].clone();
    assert_eq!(
        sim.qualys_scan_state(&reference).map(|s| s.0.as_str()),
        Some("Queued")
    );
    let (s, _) = control(
        &sim,
        Method::POST,
        "/_sim/clock/advance",
        Some(json!({"seconds": 3600})),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(
        sim.qualys_scan_state(&reference)
            .map(|(s, p)| (s.as_str(), p)),
        Some(("Finished", true))
    );
    sim.shutdown().await;
}

/// Spec §5.7 scenarios 1–4 and 6 in one flow, driven the way Aegis drives the vendors.
#[tokio::test]
async fn ticket_lifecycle_across_vendors_closes_after_a_clean_rescan() {
    let fixture = serde_json::from_value(json!({
        "hosts": [{"ip": "10.0.0.5", "hostname": "web1", "qualys_host_id": 1001, "nexpose_asset_id": 5,
                   "asset_group_ids": [42], "site_ids": [1],
                   "vulns": [{"qid": 38739, "port": 443, "protocol": "tcp"}]}],
        "kb": [{"qid": 38739, "title": "SSL weak ciphers", "cvss2": 7.5, "cvss3": 7.5}],
        "asset_groups": [{"id": 42, "title": "DMZ", "appliance_ids": [7]}],
        "sites": [{"id": 1, "name": "DMZ"}]
    }))
    .expect("fixture");
    let sim = start_with(SimConfig {
        fixture: Some(fixture),
        scan_timing: ScanTiming::fast(),
        ..Default::default()
    })
    .await;
    // 1. Asset sync: the detection exists; Aegis opens a ticket.
    let (_, _, hld) = qualys(&sim, Method::POST, "/api/2.0/fo/asset/host/vm/detection/?action=list&truncation_limit=2500&show_reopened_info=1&status=New,Active,Re-Opened,Fixed&arf_kernel_filter=0&ag_ids=42").await;
    assert_eq!(xml_texts(&hld, &["HOST", "ID"]), vec!["1001"]);
    assert_eq!(xml_texts(&hld, &["DETECTION", "QID"]), vec!["38739"]);
    let (_, fields) = jira(&sim, Method::GET, "/rest/api/latest/field", None).await;
    let fid = |n: &str| {
        fields
            .as_array()
            .expect("f")
            .iter()
            .find(|f| f["name"] == n)
            .expect(n)["id"]
            .as_str()
            .expect("id")
            .to_string()
    };
    let (s, created) = jira(&sim, Method::POST, "/rest/api/2/issue", Some(json!({"fields": {
        "project": {"key": "VULN"}, "issuetype": {"name": "Request"}, "summary": "VRR (10.0.0.5 - web1): SSL weak ciphers",
        fid("DeviceID"): "1001", fid("VulnerabilityID"): "38739", fid("Service Port"): "443 tcp",
        fid("Method of Discovery"): {"value": "Qualys"}, fid("Org"): "ORG"}}))).await;
    assert_eq!(s, 201);
    let key = created["key"].as_str().expect("key").to_string();
    // 2. The user resolves; the truth is remediated.
    let (s, _) = control(
        &sim,
        Method::POST,
        &format!("/_sim/jira/issues/{key}/transition"),
        Some(json!({"to": "Resolved-Remediated", "as_user": "remediator"})),
    )
    .await;
    assert_eq!(s, 200);
    sim.fix_vulnerability(
        "10.0.0.5".parse().expect("ip"),
        38739,
        443,
        aegis_sim::Proto::Tcp,
    )
    .expect("fix");
    // 3. Rescan (Qualys) of the resolved ticket's device.
    let (_, _, body) = qualys(
        &sim,
        Method::POST,
        "/api/2.0/fo/qid/search_list/static/?action=create&title=l1&qids=38739",
    )
    .await;
    let list = xml_texts(&body, &["ITEM", "VALUE"])[0].clone();
    let profile = format!("<OPTION_PROFILES><OPTION_PROFILE><BASIC_INFO><ID>300001</ID><GROUP_NAME>p1</GROUP_NAME></BASIC_INFO><SCAN><VULNERABILITY_DETECTION><CUSTOM_LIST><CUSTOM><ID>{list}</ID><TITLE>l1</TITLE></CUSTOM></CUSTOM_LIST></VULNERABILITY_DETECTION></SCAN></OPTION_PROFILE></OPTION_PROFILES>");
    let (s, _, body) = common::qualys_url(
        &format!(
            "{}/api/2.0/fo/subscription/option_profile/?action=import",
            sim.qualys_url()
        ),
        Method::POST,
        Some(profile),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    let option_id = xml_texts(&body, &["ITEM", "KEY"])[0].clone();
    let (_, _, body) = qualys(&sim, Method::POST, &format!("/api/2.0/fo/scan/?action=launch&scan_title=r&option_id={option_id}&ip=10.0.0.5&iscanner_id=7")).await;
    let reference = xml_texts(&body, &["ITEM", "VALUE"])[1].clone();
    // 4. Scan finishes; detections say Fixed; Aegis closes the ticket with a comment.
    eventually(Duration::from_secs(10), "scan processed", || async {
        let (_, _, b) = qualys(
            &sim,
            Method::POST,
            &format!("/api/2.0/fo/scan/?action=list&scan_ref={reference}"),
        )
        .await;
        (xml_texts(&b, &["SCAN", "PROCESSED"]) == vec!["1"]).then_some(())
    })
    .await;
    let (_, _, hld) = qualys(&sim, Method::POST, "/api/2.0/fo/asset/host/vm/detection/?action=list&truncation_limit=0&show_reopened_info=1&status=New,Active,Re-Opened,Fixed&arf_kernel_filter=0&ips=10.0.0.5&ag_ids=42").await;
    assert_eq!(xml_texts(&hld, &["DETECTION", "STATUS"]), vec!["Fixed"]);
    let (_, t) = jira(
        &sim,
        Method::GET,
        &format!("/rest/api/2/issue/{key}/transitions?expand=transitions.fields"),
        None,
    )
    .await;
    let close = t["transitions"]
        .as_array()
        .expect("t")
        .iter()
        .find(|t| t["to"]["name"] == "Closed-Remediated")
        .expect("close offered")
        .clone();
    let (s, v) = jira(&sim, Method::POST, &format!("/rest/api/2/issue/{key}/transitions"), Some(json!({"transition": {"id": close["id"]}, "update": {"comment": [{"add": {"body": format!("closed by {reference}")}}]}}))).await;
    assert_eq!(s, 204, "{v}");
    assert_eq!(sim.jira_status(&key).as_deref(), Some("Closed-Remediated"));
    // 6. Nexpose sees the same host.
    let (_, asset) = nexpose(&sim, Method::GET, "/api/3/assets/5", None).await;
    assert_eq!(asset["ip"], "10.0.0.5");
    let state = sim.state_summary();
    assert_eq!(state["jira"]["issues"][0]["status"], "Closed-Remediated");
    assert!(state["jira"]["issues"][0]["comments"][0]
        .as_str()
        .expect("c")
        .contains("scan/"));
    sim.shutdown().await;
}

#[tokio::test]
async fn suggested_source_configs_match_the_served_workflow() {
    let sim = start(2, 1).await;
    let (s, cfg) = control(&sim, Method::GET, "/_sim/source-configs", None).await;
    assert_eq!(s, 200);
    assert_eq!(cfg["jira"]["address"], sim.jira_url());
    assert_eq!(cfg["qualys"]["payload"]["groups"], json!([1]));
    assert_eq!(cfg["nexpose"]["payload"]["rescansite"], 999);
    let tm = &cfg["jira"]["payload"]["transition_map"];
    // Every hop in transition_map is offered by J10 with the same id.
    let (_, created) = jira(&sim, Method::POST, "/rest/api/2/issue", Some(json!({"fields": {"project": {"key": "VULN"}, "issuetype": {"name": "Request"}, "summary": "s"}}))).await;
    let key = created["key"].as_str().expect("key");
    let (_, t) = jira(
        &sim,
        Method::GET,
        &format!("/rest/api/2/issue/{key}/transitions"),
        None,
    )
    .await;
    for (to, hops) in tm["open"].as_object().expect("open") {
        let id = &hops[0]["id"];
        assert!(
            t["transitions"]
                .as_array()
                .expect("t")
                .iter()
                .any(|x| &x["id"] == id
                    && x["to"]["name"].as_str().map(str::to_lowercase).as_deref()
                        == Some(to.as_str())),
            "{to}"
        );
    }
    // The workflow XML names the same action ids.
    let (_, xml) = control(&sim, Method::GET, "/_sim/jira/workflow.xml", None).await;
    let xml = xml.as_str().expect("xml");
    assert!(xml.contains(&format!(
        "<action id=\"{}\"",
        tm["open"]["resolved-remediated"][0]["id"]
            .as_str()
            .expect("id")
    )));
    for key in [
        "scan-error",
        "closed-false-positive",
        "closed-cerf",
        "closed-error",
    ] {
        assert!(
            cfg["jira"]["payload"]["status_map"][key].is_string(),
            "{key}"
        );
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn auth_failure_hosts_are_tested_but_not_updated() {
    let fixture = serde_json::from_value(json!({
        "hosts": [{"ip": "10.0.0.5", "qualys_host_id": 1001, "asset_group_ids": [42],
                   "vulns": [{"qid": 38739, "port": 443, "protocol": "tcp"}]}]
    }))
    .expect("fixture");
    let sim = start_with(SimConfig {
        fixture: Some(fixture),
        scan_timing: ScanTiming::fast(),
        ..Default::default()
    })
    .await;
    let (s, _) = control(
        &sim,
        Method::POST,
        "/_sim/hosts/10.0.0.5",
        Some(json!({"auth_failure": true})),
    )
    .await;
    assert_eq!(s, 200);
    let hld = "/api/2.0/fo/asset/host/vm/detection/?action=list&truncation_limit=0&ips=10.0.0.5";
    let (_, _, before) = qualys(&sim, Method::POST, hld).await;
    let (_, _, body) = qualys(
        &sim,
        Method::POST,
        "/api/2.0/fo/scan/?action=launch&scan_title=t&option_id=300001&ip=10.0.0.5&iscanner_id=7",
    )
    .await;
    let reference = xml_texts(&body, &["ITEM", "VALUE"])[1].clone();
    eventually(Duration::from_secs(10), "processed", || async {
        (sim.qualys_scan_state(&reference).map(|s| s.1) == Some(true)).then_some(())
    })
    .await;
    let (_, _, after) = qualys(&sim, Method::POST, hld).await;
    assert_eq!(
        xml_texts(&before, &["DETECTION", "LAST_UPDATE_DATETIME"]),
        xml_texts(&after, &["DETECTION", "LAST_UPDATE_DATETIME"]),
        "LAST_UPDATE not bumped: Aegis' Scan-Error path"
    );
    assert_ne!(
        xml_texts(&before, &["DETECTION", "LAST_FOUND_DATETIME"]),
        xml_texts(&after, &["DETECTION", "LAST_FOUND_DATETIME"])
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn aegis_compat_profile_accepts_go_aegis_quirks() {
    let sim = start_with(SimConfig {
        profile: aegis_sim::Profile::AegisCompat,
        ..Default::default()
    })
    .await;
    let (_, fields) = jira(&sim, Method::GET, "/rest/api/latest/field", None).await;
    let fid = |n: &str| {
        fields
            .as_array()
            .expect("f")
            .iter()
            .find(|f| f["name"] == n)
            .expect(n)["id"]
            .as_str()
            .expect("id")
            .to_string()
    };
    let (s, v) = jira(
        &sim,
        Method::POST,
        "/rest/api/2/issue/",
        Some(json!({"fields": {
        "project": {"key": "VULN"}, "issuetype": {"name": "Request"}, "summary": "s",
        fid("Method of Discovery"): "Qualys", fid("Scan/Alert Date"): "2021-03-04T05:06:07Z"}})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let key = v["key"].as_str().expect("key").to_string();
    let (s, v) = jira(
        &sim,
        Method::PUT,
        &format!("/rest/api/2/issue/{key}"),
        Some(json!({"fields": {"duedate": "2021-05-01T00:00:00Z"}})),
    )
    .await;
    assert_eq!(s, 204, "{v}");
    let issue = sim.jira_issue(&key).expect("issue");
    assert_eq!(issue["fields"]["duedate"], "2021-05-01");
    assert_eq!(issue["fields"][fid("Scan/Alert Date")], "2021-03-04");
    assert_eq!(
        issue["fields"][fid("Method of Discovery")]["value"],
        "Qualys"
    );
    sim.shutdown().await;
}

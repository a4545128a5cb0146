//! The Qualys simulator against `original-vendor-apis.md` §2 and the scan lifecycle of §5.3.

mod common;

use std::time::Duration;

use aegis_sim::{Proto, QualysLimits, ScanTiming, SimConfig, WorldFixture};
use common::{eventually, qualys, qualys_url, start, start_with, xml_texts};
use reqwest::Method;

const HLD: &str = "/api/2.0/fo/asset/host/vm/detection/";

#[tokio::test]
async fn requests_without_x_requested_with_or_with_bad_credentials_are_rejected() {
    let sim = start(2, 2).await;
    let url = format!("{}/api/2.0/fo/appliance/?action=list", sim.qualys_url());
    let resp = common::client()
        .get(&url)
        .basic_auth("aegis", Some("aegis"))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 400);
    let body = resp.text().await.expect("body");
    assert!(!xml_texts(&body, &["SIMPLE_RETURN", "RESPONSE", "CODE"]).is_empty());
    let resp = common::client()
        .get(&url)
        .basic_auth("aegis", Some("nope"))
        .header("X-Requested-With", "t")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 401);
    let body = resp.text().await.expect("body");
    assert_eq!(
        xml_texts(&body, &["RESPONSE", "TEXT"]),
        vec!["Bad Login/Password"]
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn appliance_list_advertises_rate_limit_headers() {
    let sim = start(2, 2).await;
    let (s, h, body) = qualys(&sim, Method::GET, "/api/2.0/fo/appliance/?action=list").await;
    assert_eq!(s, 200);
    for name in [
        "X-RateLimit-Limit",
        "X-RateLimit-Window-Sec",
        "X-RateLimit-Remaining",
        "X-RateLimit-ToWait-Sec",
        "X-Concurrency-Limit-Limit",
        "X-Concurrency-Limit-Running",
    ] {
        assert!(h.contains_key(name), "{name} missing");
    }
    assert_eq!(h["X-RateLimit-Limit"], "3600");
    let versions = xml_texts(&body, &["APPLIANCE", "SOFTWARE_VERSION"]);
    assert!(
        versions.iter().all(|v| v.parse::<f64>().is_ok()),
        "SOFTWARE_VERSION must parse as a float"
    );
    assert_eq!(
        xml_texts(&body, &["APPLIANCE", "STATUS"]),
        vec!["Online", "Offline"]
    );
    let (_, _, one) = qualys(
        &sim,
        Method::POST,
        "/api/2.0/fo/appliance/?action=list&ids=7",
    )
    .await;
    assert_eq!(xml_texts(&one, &["APPLIANCE", "ID"]), vec!["7"]);
    sim.shutdown().await;
}

#[tokio::test]
async fn rate_and_concurrency_limits_answer_409() {
    let sim = start_with(SimConfig {
        qualys: QualysLimits {
            rate_limit: 3,
            window_sec: 60,
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let path = "/api/2.0/fo/appliance/?action=list";
    for remaining in ["2", "1", "0"] {
        let (s, h, _) = qualys(&sim, Method::GET, path).await;
        assert_eq!(s, 200);
        assert_eq!(h["X-RateLimit-Remaining"], remaining);
    }
    let (s, h, body) = qualys(&sim, Method::GET, path).await;
    assert_eq!(s, 409);
    assert_eq!(xml_texts(&body, &["RESPONSE", "CODE"]), vec!["1965"]);
    assert!(
        h["X-RateLimit-ToWait-Sec"]
            .to_str()
            .expect("h")
            .parse::<u64>()
            .expect("n")
            > 0
    );
    // Other paths have their own window.
    let (s, _, _) = qualys(&sim, Method::POST, "/api/2.0/fo/asset/group/?action=list").await;
    assert_eq!(s, 200);
    sim.shutdown().await;

    // Concurrency: slow every HLD call down, fire three at once with a limit of two.
    let sim = common::start(3, 1).await;
    sim.inject_fault(
        aegis_sim::FaultSpec::new(
            aegis_sim::Vendor::Qualys,
            aegis_sim::FaultAction::Latency { ms: 1500 },
            3,
        )
        .on(HLD),
    );
    let calls = (0..3).map(|_| {
        qualys(
            &sim,
            Method::POST,
            "/api/2.0/fo/asset/host/vm/detection/?action=list",
        )
    });
    let results = futures::future::join_all(calls).await;
    let codes: Vec<u16> = results.iter().map(|r| r.0).collect();
    assert_eq!(codes.iter().filter(|c| **c == 409).count(), 1, "{codes:?}");
    let rejected = results.iter().find(|r| r.0 == 409).expect("one rejected");
    assert_eq!(xml_texts(&rejected.2, &["RESPONSE", "CODE"]), vec!["1960"]);
    let log = sim.request_log();
    assert_eq!(log.iter().map(|e| e.in_flight_at_start).max(), Some(2));
    sim.shutdown().await;
}

#[tokio::test]
async fn host_detection_list_pages_with_warning_url_and_id_min() {
    let sim = start(25, 4).await;
    let first = format!("{}{HLD}?action=list&truncation_limit=10&show_reopened_info=1&status=New,Active,Re-Opened,Fixed&arf_kernel_filter=0&ag_ids=1", sim.qualys_url());
    let mut url = first.clone();
    let mut ids = Vec::new();
    let mut pages = 0;
    loop {
        let (s, _, body) = qualys_url(&url, Method::POST, None).await;
        assert_eq!(s, 200, "{body}");
        pages += 1;
        let page_ids = xml_texts(&body, &["HOST_LIST", "HOST", "ID"]);
        assert!(page_ids.len() <= 10);
        assert_eq!(
            xml_texts(&body, &["HOST", "DETECTION_LIST", "DETECTION", "QID"]).len(),
            page_ids.len() * 4
        );
        ids.extend(page_ids);
        let next = xml_texts(&body, &["WARNING", "URL"]);
        if next.is_empty() {
            break;
        }
        assert_eq!(xml_texts(&body, &["WARNING", "CODE"]), vec!["1980"]);
        assert!(next[0].starts_with(&sim.qualys_url()), "absolute URL");
        assert!(next[0].contains("id_min="));
        // Go-Aegis appends the original parameters again: duplicates must be accepted.
        url = format!("{}&action=list&truncation_limit=10&ag_ids=1", next[0]);
    }
    assert_eq!(pages, 3);
    assert_eq!(ids.len(), 25);
    let mut sorted = ids.clone();
    sorted.sort_by_key(|i| i.parse::<u64>().expect("id"));
    assert_eq!(ids, sorted, "hosts ascend by id");
    sorted.dedup();
    assert_eq!(sorted.len(), 25);
    // A detection has the fields Aegis parses, with RFC 3339 times.
    let (_, _, body) = qualys(
        &sim,
        Method::POST,
        &format!("{HLD}?action=list&truncation_limit=0&ips=10.1.0.1"),
    )
    .await;
    assert_eq!(xml_texts(&body, &["HOST", "IP"]), vec!["10.1.0.1"]);
    assert_eq!(xml_texts(&body, &["HOST", "TRACKING_METHOD"]), vec!["IP"]);
    assert!(!xml_texts(&body, &["HOST", "OS"])[0].is_empty());
    for t in xml_texts(&body, &["DETECTION", "LAST_FOUND_DATETIME"]) {
        assert!(chrono::DateTime::parse_from_rfc3339(&t).is_ok(), "{t}");
    }
    assert!(xml_texts(&body, &["DETECTION", "STATUS"])
        .iter()
        .all(|s| s == "Active"));
    sim.shutdown().await;
}

#[tokio::test]
async fn knowledge_base_lists_cvss_scores_and_filters_by_id() {
    let sim = start(2, 2).await;
    let (s, _, body) = qualys(
        &sim,
        Method::POST,
        "/api/2.0/fo/knowledge_base/vuln/?action=list&details=All",
    )
    .await;
    assert_eq!(s, 200);
    let qids = xml_texts(&body, &["VULN_LIST", "VULN", "QID"]);
    assert!(qids.len() >= 200);
    for base in xml_texts(&body, &["VULN", "CVSS", "BASE"])
        .iter()
        .chain(xml_texts(&body, &["VULN", "CVSS_V3", "BASE"]).iter())
    {
        let v: f64 = base.parse().expect("numeric CVSS");
        assert!((0.0..=10.0).contains(&v));
    }
    assert!(!body.contains("LAST_CUSTOMIZATION"));
    let (_, _, one) = qualys(
        &sim,
        Method::POST,
        &format!(
            "/api/2.0/fo/knowledge_base/vuln/?action=list&details=All&ids={}",
            qids[3]
        ),
    )
    .await;
    assert_eq!(xml_texts(&one, &["VULN", "QID"]), vec![qids[3].clone()]);
    assert_eq!(xml_texts(&one, &["VULN", "SOLUTION"]).len(), 1);
    let (_, _, none) = qualys(
        &sim,
        Method::POST,
        "/api/2.0/fo/knowledge_base/vuln/?action=list&details=All&last_modified_after=2099-01-01",
    )
    .await;
    assert!(xml_texts(&none, &["VULN", "QID"]).is_empty());
    sim.shutdown().await;
}

fn scenario_fixture() -> WorldFixture {
    serde_json::from_value(serde_json::json!({
        "hosts": [
            {"ip": "10.0.0.5", "hostname": "web1", "os": "Ubuntu Linux 18.04", "qualys_host_id": 1001, "nexpose_asset_id": 5,
             "asset_group_ids": [42], "site_ids": [1],
             "vulns": [{"qid": 38739, "port": 443, "protocol": "tcp"}, {"qid": 38740, "port": 22, "protocol": "tcp"}]},
            {"ip": "10.0.0.6", "hostname": "web2", "qualys_host_id": 1002, "nexpose_asset_id": 6,
             "asset_group_ids": [42], "site_ids": [1],
             "vulns": [{"qid": 38739, "port": 443, "protocol": "tcp"}]}
        ],
        "kb": [{"qid": 38739, "title": "SSL weak ciphers", "severity": 3, "cvss2": 7.5, "cvss3": 7.5}],
        "asset_groups": [{"id": 42, "title": "DMZ", "appliance_ids": [7]}],
        "sites": [{"id": 1, "name": "DMZ"}]
    }))
    .expect("fixture")
}

#[tokio::test]
async fn asset_groups_list_appliances_and_ip_sets() {
    let sim = start_with(SimConfig {
        fixture: Some(scenario_fixture()),
        ..Default::default()
    })
    .await;
    let (s, _, body) = qualys(
        &sim,
        Method::POST,
        "/api/2.0/fo/asset/group/?action=list&show_attributes=ALL&ids=42",
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(xml_texts(&body, &["ASSET_GROUP", "ID"]), vec!["42"]);
    assert_eq!(xml_texts(&body, &["ASSET_GROUP", "TITLE"]), vec!["DMZ"]);
    assert_eq!(
        xml_texts(&body, &["ASSET_GROUP", "APPLIANCE_IDS"]),
        vec!["7"]
    );
    assert_eq!(
        xml_texts(&body, &["IP_SET", "IP_RANGE"]),
        vec!["10.0.0.5-10.0.0.6"]
    );
    sim.shutdown().await;
}

/// Q11 → Q8 → Q9 → Q14 as Aegis does, returning (scan ref, profile id, list id).
async fn rescan_setup(
    sim: &aegis_sim::Simulator,
    qids: &str,
    ips: &str,
) -> (String, String, String) {
    let (s, _, body) = qualys(
        sim,
        Method::POST,
        &format!(
            "/api/2.0/fo/qid/search_list/static/?action=create&title=aegis-list-{ips}&qids={qids}"
        ),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    let list_id = xml_texts(&body, &["ITEM", "VALUE"])[0].clone();
    let (s, _, export) = qualys(
        sim,
        Method::GET,
        "/api/2.0/fo/subscription/option_profile/?action=export&option_profile_id=300001",
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(
        xml_texts(&export, &["OPTION_PROFILE", "BASIC_INFO", "ID"]),
        vec!["300001"]
    );
    // Modify as Aegis does: new title, append the search list.
    let modified = export
        .replace("Aegis Rescan Template", &format!("aegis-profile-{ips}"))
        .replace("<COMPLETE/>", &format!("<CUSTOM_LIST><CUSTOM><ID>{list_id}</ID><TITLE>aegis-list</TITLE></CUSTOM></CUSTOM_LIST>"));
    let modified = modified
        .split_once("?>")
        .map(|(_, rest)| rest.to_string())
        .unwrap_or(modified);
    let modified = modified
        .split_once('\n')
        .map(|(_, rest)| {
            rest.split_once('\n')
                .map(|(_, r)| r.to_string())
                .unwrap_or_default()
        })
        .unwrap_or_default();
    let url = format!(
        "{}/api/2.0/fo/subscription/option_profile/?action=import",
        sim.qualys_url()
    );
    let (s, _, body) = qualys_url(&url, Method::POST, Some(modified)).await;
    assert_eq!(s, 200, "{body}");
    let profile_id = xml_texts(&body, &["ITEM", "KEY"])[0].clone();
    let (s, _, body) = qualys(sim, Method::POST, &format!("/api/2.0/fo/scan/?action=launch&scan_title=rescan&option_id={profile_id}&ip={ips}&iscanner_id=7")).await;
    assert_eq!(s, 200, "{body}");
    let keys = xml_texts(&body, &["ITEM", "KEY"]);
    let values = xml_texts(&body, &["ITEM", "VALUE"]);
    let reference = values[keys
        .iter()
        .position(|k| k == "REFERENCE")
        .expect("REFERENCE")]
    .clone();
    assert!(reference.starts_with("scan/"));
    (reference, profile_id, list_id)
}

async fn scan_state(sim: &aegis_sim::Simulator, reference: &str) -> (String, String) {
    let (s, _, body) = qualys(
        sim,
        Method::POST,
        &format!("/api/2.0/fo/scan/?action=list&scan_ref={reference}"),
    )
    .await;
    assert_eq!(s, 200);
    let states = xml_texts(&body, &["SCAN", "STATUS", "STATE"]);
    assert_eq!(states.len(), 1, "exactly one SCAN: {body}");
    (
        states[0].clone(),
        xml_texts(&body, &["SCAN", "PROCESSED"])[0].clone(),
    )
}

#[tokio::test]
async fn scan_moves_through_its_lifecycle_then_applies_the_truth() {
    let sim = start_with(SimConfig {
        fixture: Some(scenario_fixture()),
        scan_timing: ScanTiming {
            queued: Duration::from_millis(300),
            running: Duration::from_millis(600),
            processing: Duration::from_millis(400),
        },
        ..Default::default()
    })
    .await;
    let ip5 = "10.0.0.5".parse().expect("ip");
    sim.fix_vulnerability(ip5, 38739, 443, Proto::Tcp)
        .expect("fix");
    sim.kill_host("10.0.0.6".parse().expect("ip"))
        .expect("kill");
    let before = chrono::Utc::now() - chrono::Duration::seconds(1);
    let (reference, profile_id, list_id) =
        rescan_setup(&sim, "38739,38740", "10.0.0.5,10.0.0.6").await;
    let mut seen: Vec<(String, String)> = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let st = scan_state(&sim, &reference).await;
        if seen.last() != Some(&st) {
            seen.push(st.clone());
        }
        if st == ("Finished".to_string(), "1".to_string()) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "scan never processed: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let states: Vec<&str> = seen.iter().map(|(s, _)| s.as_str()).collect();
    assert!(
        states.contains(&"Queued") || states.contains(&"Running"),
        "{seen:?}"
    );
    assert!(
        seen.contains(&("Finished".into(), "0".into())) || seen.len() >= 2,
        "{seen:?}"
    );
    // Detections: 38739 fixed, 38740 re-confirmed and its LAST_UPDATE bumped.
    let (_, _, body) = qualys(&sim, Method::POST, &format!("{HLD}?action=list&truncation_limit=0&show_reopened_info=1&status=New,Active,Re-Opened,Fixed&ips=10.0.0.5,10.0.0.6&ag_ids=42")).await;
    // The dead host keeps its old detections (untouched); the live one was re-evaluated.
    assert_eq!(xml_texts(&body, &["HOST", "ID"]), vec!["1001", "1002"]);
    let (_, _, body) = qualys(
        &sim,
        Method::POST,
        &format!(
            "{HLD}?action=list&truncation_limit=0&status=New,Active,Re-Opened,Fixed&ips=10.0.0.5"
        ),
    )
    .await;
    let qids = xml_texts(&body, &["DETECTION", "QID"]);
    let statuses = xml_texts(&body, &["DETECTION", "STATUS"]);
    let updated = xml_texts(&body, &["DETECTION", "LAST_UPDATE_DATETIME"]);
    let status_of = |q: &str| statuses[qids.iter().position(|x| x == q).expect("qid")].clone();
    assert_eq!(status_of("38739"), "Fixed");
    assert_eq!(status_of("38740"), "Active");
    for u in updated {
        let t = chrono::DateTime::parse_from_rfc3339(&u).expect("time");
        assert!(t > before, "LAST_UPDATE bumped by the scan");
    }
    // Dead host reported by the scan summary.
    let today = chrono::Utc::now().format("%Y-%m-%d");
    let (_, _, summary) = qualys(&sim, Method::GET, &format!("/api/2.0/fo/scan/summary/?action=list&scan_date_since={today}&include_dead=1&include_excluded=0&include_unresolved=0&include_cancelled=0&include_notvuln=0&include_blocked=0&include_duplicate=0&include_aborted=0")).await;
    assert_eq!(
        xml_texts(&summary, &["SCAN_SUMMARY", "SCAN_REF"]),
        vec![reference.clone()]
    );
    assert_eq!(
        xml_texts(&summary, &["SCAN_SUMMARY", "HOST_SUMMARY"]),
        vec!["10.0.0.6"]
    );
    assert!(summary.contains("category=\"dead\""));
    // Clean-up: the list is in use until the profile is gone.
    let (s, _, _) = qualys(
        &sim,
        Method::POST,
        &format!("/api/2.0/fo/qid/search_list/static/?action=delete&id={list_id}"),
    )
    .await;
    assert_eq!(s, 400);
    let (s, _, _) = qualys(
        &sim,
        Method::POST,
        &format!("/api/2.0/fo/subscription/option_profile/vm/?action=delete&id={profile_id}"),
    )
    .await;
    assert_eq!(s, 200);
    let (s, _, _) = qualys(
        &sim,
        Method::POST,
        &format!("/api/2.0/fo/qid/search_list/static/?action=delete&id={list_id}"),
    )
    .await;
    assert_eq!(s, 200);
    let state = sim.state_summary();
    assert_eq!(state["qualys"]["option_profile_copies"], 0);
    assert_eq!(
        state["qualys"]["search_lists"]
            .as_array()
            .expect("lists")
            .len(),
        0
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn regressed_vulnerability_reopens_and_new_one_appears_after_a_scan() {
    let sim = start_with(SimConfig {
        fixture: Some(scenario_fixture()),
        scan_timing: ScanTiming::fast(),
        ..Default::default()
    })
    .await;
    let ip = "10.0.0.5".parse().expect("ip");
    sim.fix_vulnerability(ip, 38739, 443, Proto::Tcp)
        .expect("fix");
    sim.add_vulnerability(ip, 38750, 8443, Proto::Tcp)
        .expect("add");
    let (r1, _, _) = rescan_setup(&sim, "38739,38750", "10.0.0.5").await;
    eventually(Duration::from_secs(10), "first scan", || async {
        (scan_state(&sim, &r1).await.1 == "1").then_some(())
    })
    .await;
    sim.add_vulnerability(ip, 38739, 443, Proto::Tcp)
        .expect("regress");
    let (_, _, body) = qualys(&sim, Method::POST, "/api/2.0/fo/scan/?action=launch&scan_title=again&option_id=300001&ip=10.0.0.5&iscanner_name=External").await;
    let r2 = xml_texts(&body, &["ITEM", "VALUE"])[1].clone();
    eventually(Duration::from_secs(10), "second scan", || async {
        (scan_state(&sim, &r2).await.1 == "1").then_some(())
    })
    .await;
    let (_, _, body) = qualys(
        &sim,
        Method::POST,
        &format!(
            "{HLD}?action=list&truncation_limit=0&status=New,Active,Re-Opened,Fixed&ips=10.0.0.5"
        ),
    )
    .await;
    let qids = xml_texts(&body, &["DETECTION", "QID"]);
    let statuses = xml_texts(&body, &["DETECTION", "STATUS"]);
    let status_of = |q: &str| statuses[qids.iter().position(|x| x == q).expect("qid")].clone();
    assert_eq!(status_of("38739"), "Re-Opened");
    assert_eq!(status_of("38750"), "Active");
    sim.shutdown().await;
}

#[tokio::test]
async fn launch_validates_profile_scanner_and_concurrent_scan_limit() {
    let sim = start_with(SimConfig {
        fixture: Some(scenario_fixture()),
        qualys: QualysLimits {
            concurrent_scan_limit: 1,
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let (s, _, body) = qualys(
        &sim,
        Method::POST,
        "/api/2.0/fo/scan/?action=launch&scan_title=x&option_id=999&ip=10.0.0.5&iscanner_id=7",
    )
    .await;
    assert_eq!(s, 400, "{body}");
    let (s, _, _) = qualys(
        &sim,
        Method::POST,
        "/api/2.0/fo/scan/?action=launch&scan_title=x&option_id=300001&ip=10.0.0.5&iscanner_id=8",
    )
    .await;
    assert_eq!(s, 400, "offline appliance");
    let (s, _, body) = qualys(
        &sim,
        Method::POST,
        "/api/2.0/fo/scan/?action=launch&scan_title=x&option_id=300001&ip=10.0.0.5&iscanner_id=7",
    )
    .await;
    assert_eq!(s, 200, "{body}");
    let reference = xml_texts(&body, &["ITEM", "VALUE"])[1].clone();
    let (s, _, body) = qualys(
        &sim,
        Method::POST,
        "/api/2.0/fo/scan/?action=launch&scan_title=y&option_id=300001&ip=10.0.0.6&iscanner_id=7",
    )
    .await;
    assert_ne!(s, 200);
    let text = xml_texts(&body, &["RESPONSE", "TEXT"])[0].clone();
    assert!(
        text.contains("You are allowed to run 1 concurrent scans")
            && text.contains("This limit has already been reached"),
        "{text}"
    );
    let (s, _, _) = qualys(
        &sim,
        Method::POST,
        &format!("/api/2.0/fo/scan/?action=cancel&scan_ref={reference}"),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(scan_state(&sim, &reference).await.0, "Canceled");
    // Forced states through the control API.
    sim.force_qualys_scan_state(
        &reference,
        Some((aegis_sim::qualys::state::ScanState::Error, false)),
    )
    .expect("force");
    assert_eq!(scan_state(&sim, &reference).await.0, "Error");
    // Bad option-profile XML is a 400 SIMPLE_RETURN, not a panic.
    let url = format!(
        "{}/api/2.0/fo/subscription/option_profile/?action=import",
        sim.qualys_url()
    );
    let (s, _, body) = qualys_url(
        &url,
        Method::POST,
        Some("<OPTION_PROFILES><OPTION_PROFILE>".into()),
    )
    .await;
    assert_eq!(s, 400);
    assert!(!xml_texts(&body, &["RESPONSE", "CODE"]).is_empty());
    sim.shutdown().await;
}

#[tokio::test]
async fn ec2_hosts_are_scanned_by_instance_id_and_listed_by_tag() {
    let fixture: WorldFixture = serde_json::from_value(serde_json::json!({
        "hosts": [{"ip": "172.16.0.9", "qualys_host_id": 2001, "tracking_method": "EC2", "ec2_instance_id": "i-0abc",
                   "asset_group_ids": [77], "vulns": [{"qid": 38739, "port": 443, "protocol": "tcp"}]},
                  {"ip": "172.16.0.10", "qualys_host_id": 2002, "asset_group_ids": [77],
                   "vulns": [{"qid": 38739, "port": 443, "protocol": "tcp"}]}],
        "asset_groups": [{"id": 77, "title": "cloud-prod", "appliance_ids": [7]}]
    }))
    .expect("fixture");
    let sim = start_with(SimConfig {
        fixture: Some(fixture),
        scan_timing: ScanTiming::fast(),
        ..Default::default()
    })
    .await;
    let (_, _, body) = qualys(&sim, Method::POST, &format!("{HLD}?action=list&truncation_limit=0&show_reopened_info=1&arf_kernel_filter=0&status=New,Active,Re-Opened,Fixed&use_tags=1&tag_set_by=name&tag_include_selector=all&tag_set_include=cloud-prod&host_metadata=ec2&host_metadata_fields=instanceId")).await;
    assert_eq!(
        xml_texts(&body, &["HOST", "ID"]),
        vec!["2001"],
        "only the cloud-tracked host carries tags"
    );
    assert_eq!(
        xml_texts(&body, &["HOST", "EC2_INSTANCE_ID"]),
        vec!["i-0abc"]
    );
    assert_eq!(xml_texts(&body, &["HOST", "TRACKING_METHOD"]), vec!["EC2"]);
    sim.fix_vulnerability("172.16.0.9".parse().expect("ip"), 38739, 443, Proto::Tcp)
        .expect("fix");
    let (s, _, body) = qualys(&sim, Method::POST, "/api/2.0/fo/scan/?action=launch&scan_title=ec2&option_id=300001&ec2_instance_ids=i-0abc&ec2_endpoint=us-east-1&connector_name=c&iscanner_name=External").await;
    assert_eq!(s, 200, "{body}");
    let reference = xml_texts(&body, &["ITEM", "VALUE"])[1].clone();
    eventually(Duration::from_secs(10), "processed", || async {
        (scan_state(&sim, &reference).await.1 == "1").then_some(())
    })
    .await;
    let (_, _, body) = qualys(
        &sim,
        Method::POST,
        &format!("{HLD}?action=list&truncation_limit=0&status=Fixed&ips=172.16.0.9"),
    )
    .await;
    assert_eq!(xml_texts(&body, &["DETECTION", "QID"]), vec!["38739"]);
    // The scan keeps its EC2 endpoint and connector for assertions.
    let scans = sim.state_summary()["qualys"]["scans"].clone();
    assert_eq!(scans[0]["target"], "i-0abc", "{scans}");
    assert_eq!(scans[0]["ec2"]["ec2_endpoint"], "us-east-1", "{scans}");
    assert_eq!(scans[0]["ec2"]["connector_name"], "c", "{scans}");
    // By host ID, with the instance's EC2 metadata.
    let (_, _, body) = qualys(
        &sim,
        Method::POST,
        &format!("{HLD}?action=list&truncation_limit=0&status=Fixed&ids=2001,2002&host_metadata=ec2&host_metadata_fields=instanceId"),
    )
    .await;
    assert_eq!(
        xml_texts(&body, &["ATTRIBUTE", "VALUE"]),
        vec!["i-0abc"],
        "METADATA/EC2 of the EC2 host only: {body}"
    );
    // Static search lists can be listed back.
    let (_, _, body) = qualys(
        &sim,
        Method::POST,
        "/api/2.0/fo/qid/search_list/static/?action=create&title=l&qids=38739,38740-38742",
    )
    .await;
    let id = xml_texts(&body, &["ITEM", "VALUE"])[0].clone();
    let (_, _, body) = qualys(
        &sim,
        Method::POST,
        &format!("/api/2.0/fo/qid/search_list/static/?action=list&ids={id}"),
    )
    .await;
    assert_eq!(
        xml_texts(&body, &["STATIC_LIST", "QIDS", "QID"]),
        vec!["38739", "38740", "38741", "38742"]
    );
    sim.shutdown().await;
}

//! The Nexpose simulator against `original-vendor-apis.md` §3 and the scan lifecycle of §5.4.

mod common;

use std::time::Duration;

use aegis_sim::{Profile, Proto, ScanTiming, SimConfig};
use common::{eventually, nexpose, start, start_with};
use reqwest::Method;
use serde_json::json;

#[tokio::test]
async fn wrong_credentials_get_401() {
    let sim = start(2, 2).await;
    let resp = common::client()
        .get(format!("{}/api/3/assets", sim.nexpose_url()))
        .basic_auth("aegis", Some("x"))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 401);
    let v: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(v["status"], 401);
    assert!(v["message"].is_string());
    sim.shutdown().await;
}

#[tokio::test]
async fn site_assets_page_with_total_pages_and_links() {
    let sim = start(1203, 2).await;
    let mut ips = Vec::new();
    let (s, first) = nexpose(
        &sim,
        Method::GET,
        "/api/3/sites/1/assets?page=0&size=500&sort=ip",
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(
        first["page"]["totalResources"], 1000,
        "site 1 holds the first block of 1000 hosts"
    );
    assert_eq!(first["page"]["totalPages"], 2);
    assert_eq!(first["page"]["size"], 500);
    assert!(first["links"]
        .as_array()
        .expect("links")
        .iter()
        .any(|l| l["rel"] == "next"));
    for page in 0..2 {
        let (_, v) = nexpose(
            &sim,
            Method::GET,
            &format!("/api/3/sites/1/assets?page={page}&size=500&sort="),
            None,
        )
        .await;
        ips.extend(
            v["resources"]
                .as_array()
                .expect("resources")
                .iter()
                .map(|a| a["ip"].as_str().expect("ip").to_string()),
        );
    }
    assert_eq!(ips.len(), 1000);
    let a = &first["resources"][0];
    for key in [
        "id",
        "ip",
        "hostName",
        "mac",
        "os",
        "addresses",
        "hostNames",
        "ids",
        "history",
    ] {
        assert!(a.get(key).is_some(), "asset lacks {key}");
    }
    assert!(a["id"].is_u64());
    // Size is capped at 500 like the real console.
    let (_, v) = nexpose(
        &sim,
        Method::GET,
        "/api/3/sites/2/assets?page=0&size=5000",
        None,
    )
    .await;
    assert_eq!(v["page"]["size"], 500);
    assert_eq!(v["page"]["totalResources"], 203);
    let (s, v) = nexpose(&sim, Method::GET, "/api/3/sites/77/assets", None).await;
    assert_eq!(s, 404);
    assert_eq!(v["status"], 404);
    sim.shutdown().await;
}

#[tokio::test]
async fn findings_vulnerabilities_solutions_and_checks_have_aegis_shapes() {
    let sim = start(3, 4).await;
    let (s, f) = nexpose(
        &sim,
        Method::GET,
        "/api/3/assets/1/vulnerabilities?page=0&size=500&sort=",
        None,
    )
    .await;
    assert_eq!(s, 200);
    let findings = f["resources"].as_array().expect("findings");
    assert_eq!(findings.len(), 4);
    let finding = &findings[0];
    assert_eq!(finding["status"], "vulnerable");
    assert!(
        chrono::DateTime::parse_from_rfc3339(finding["since"].as_str().expect("since")).is_ok()
    );
    let r = &finding["results"][0];
    assert!(r["port"].is_u64() && r["protocol"].is_string() && r["proof"].is_string());
    assert!(
        r.get("key").is_none(),
        "results carry no key (Aegis would append ';')"
    );
    let vid = finding["id"].as_str().expect("id");
    assert!(!vid.contains('.'));
    let (s, v) = nexpose(
        &sim,
        Method::GET,
        &format!("/api/3/vulnerabilities/{vid}"),
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert!(v["cvss"]["v2"]["score"].is_number() && v["cvss"]["v3"]["score"].is_number());
    let modified = v["modified"].as_str().expect("modified");
    assert!(
        chrono::NaiveDate::parse_from_str(modified, "%Y-%m-%d").is_ok(),
        "{modified}"
    );
    let (_, sols) = nexpose(
        &sim,
        Method::GET,
        &format!("/api/3/vulnerabilities/{vid}/solutions"),
        None,
    )
    .await;
    let sol = sols["resources"][0].as_str().expect("solution id");
    let (s, solution) = nexpose(&sim, Method::GET, &format!("/api/3/solutions/{sol}"), None).await;
    assert_eq!(s, 200);
    assert!(solution["steps"]["text"].is_string() && solution["summary"]["text"].is_string());
    let (_, checks) = nexpose(
        &sim,
        Method::GET,
        &format!("/api/3/vulnerabilities/{vid}/checks"),
        None,
    )
    .await;
    assert!(checks["resources"][0].is_string());
    let (_, refs) = nexpose(
        &sim,
        Method::GET,
        &format!("/api/3/vulnerabilities/{vid}/references?page=0&size=500&sort="),
        None,
    )
    .await;
    assert!(refs["resources"][0]["reference"].is_string());
    let (_, all) = nexpose(
        &sim,
        Method::GET,
        "/api/3/vulnerabilities?page=0&size=50",
        None,
    )
    .await;
    assert_eq!(all["page"]["totalPages"], 4);
    let (s, engine) = nexpose(&sim, Method::GET, "/api/3/sites/1/scan_engine", None).await;
    assert_eq!(s, 200);
    assert!(engine["id"].is_u64());
    let (_, engines) = nexpose(&sim, Method::GET, "/api/3/scan_engines", None).await;
    assert_eq!(engines["resources"][0]["id"], engine["id"]);
    sim.shutdown().await;
}

#[tokio::test]
async fn rescan_with_a_template_copy_makes_remediated_findings_disappear() {
    let sim = start_with(SimConfig {
        estate: aegis_sim::EstateSpec {
            hosts: 3,
            detections_per_host: 3,
            seed: 9,
        },
        scan_timing: ScanTiming::fast(),
        ..Default::default()
    })
    .await;
    let (_, f) = nexpose(
        &sim,
        Method::GET,
        "/api/3/assets/2/vulnerabilities?size=500",
        None,
    )
    .await;
    let first = &f["resources"][0];
    let vid = first["id"].as_str().expect("id").to_string();
    let port = first["results"][0]["port"].as_u64().expect("port") as u16;
    let qid: u32 = vid.trim_start_matches("sim-vuln-").parse().expect("qid");
    let ip = "10.1.0.2".parse().expect("ip");
    sim.fix_vulnerability(ip, qid, port, Proto::Tcp)
        .expect("fix");
    // Aegis: N11 template, N9 checks, N12 copy with checks enabled, N10 engine, N14 start.
    let (s, mut template) = nexpose(
        &sim,
        Method::GET,
        "/api/3/scan_templates/full-audit-without-web-spider",
        None,
    )
    .await;
    assert_eq!(s, 200);
    let (_, checks) = nexpose(
        &sim,
        Method::GET,
        &format!("/api/3/vulnerabilities/{vid}/checks"),
        None,
    )
    .await;
    template["name"] = json!("aegis-rescan-2021-03-04");
    template["checks"]["individual"]["enabled"] = checks["resources"].clone();
    let (s, created) = nexpose(&sim, Method::POST, "/api/3/scan_templates", Some(template)).await;
    assert_eq!(s, 201, "{created}");
    let template_id = created["id"].as_str().expect("id").to_string();
    let (_, engine) = nexpose(&sim, Method::GET, "/api/3/sites/1/scan_engine", None).await;
    let body = json!({"engineId": engine["id"].to_string(), "hosts": ["10.1.0.2"], "name": "rescan", "templateId": template_id});
    let (s, scan) = nexpose(&sim, Method::POST, "/api/3/sites/999/scans", Some(body)).await;
    assert_eq!(s, 201, "{scan}");
    let scan_id = scan["id"].as_u64().expect("numeric id");
    eventually(Duration::from_secs(10), "scan finished", || async {
        let (_, s) = nexpose(&sim, Method::GET, &format!("/api/3/scans/{scan_id}"), None).await;
        (s["status"] == "finished").then_some(())
    })
    .await;
    let (_, after) = nexpose(
        &sim,
        Method::GET,
        "/api/3/assets/2/vulnerabilities?size=500",
        None,
    )
    .await;
    let ids: Vec<&str> = after["resources"]
        .as_array()
        .expect("r")
        .iter()
        .map(|f| f["id"].as_str().expect("id"))
        .collect();
    assert!(
        !ids.contains(&vid.as_str()),
        "remediated finding disappears: {ids:?}"
    );
    assert_eq!(
        ids.len(),
        2,
        "the other findings were not in the template's scope and stay"
    );
    // Clean-up as Aegis does: N13 then N11 → 404.
    let (s, _) = nexpose(
        &sim,
        Method::DELETE,
        &format!("/api/3/scan_templates/{template_id}"),
        None,
    )
    .await;
    assert_eq!(s, 200);
    let (s, _) = nexpose(
        &sim,
        Method::GET,
        &format!("/api/3/scan_templates/{template_id}"),
        None,
    )
    .await;
    assert_eq!(s, 404);
    assert_eq!(sim.state_summary()["nexpose"]["template_copies"], 0);
    sim.shutdown().await;
}

#[tokio::test]
async fn scan_status_runs_integrates_finishes_and_can_be_forced() {
    let sim = start_with(SimConfig {
        scan_timing: ScanTiming {
            queued: Duration::ZERO,
            running: Duration::from_millis(2000),
            processing: Duration::from_millis(1000),
        },
        profile: Profile::AegisCompat,
        ..Default::default()
    })
    .await;
    let (s, scan) = nexpose(
        &sim,
        Method::POST,
        "/api/3/sites/1/scans",
        Some(
            json!({"engineId": "3", "hosts": ["10.1.0.1"], "name": "x", "templateId": "discovery"}),
        ),
    )
    .await;
    assert_eq!(s, 201);
    let id = scan["id"].as_u64().expect("id");
    let (_, v) = nexpose(
        &sim,
        Method::GET,
        &format!("/api/3/scans/{id}.000000"),
        None,
    )
    .await;
    assert_eq!(
        v["status"], "running",
        "aegis-compat accepts Go-Aegis' float-formatted ids"
    );
    eventually(Duration::from_secs(5), "integrating", || async {
        let (_, v) = nexpose(&sim, Method::GET, &format!("/api/3/scans/{id}"), None).await;
        (v["status"] == "integrating").then_some(())
    })
    .await;
    eventually(Duration::from_secs(5), "finished", || async {
        let (_, v) = nexpose(&sim, Method::GET, &format!("/api/3/scans/{id}"), None).await;
        (v["status"] == "finished" && v["endTime"].is_string()).then_some(())
    })
    .await;
    sim.force_nexpose_scan_status(id, Some("aborted"))
        .expect("force");
    let (_, v) = nexpose(&sim, Method::GET, &format!("/api/3/scans/{id}"), None).await;
    assert_eq!(v["status"], "aborted");
    let (s, _) = nexpose(
        &sim,
        Method::POST,
        "/api/3/sites/1/scans",
        Some(json!({"engineId": 3, "templateId": "nope"})),
    )
    .await;
    assert_eq!(s, 400);
    sim.shutdown().await;
}

#[tokio::test]
async fn sites_scans_and_engines_are_listed_with_paging() {
    let sim = start(2, 1).await;
    let (s, sites) = nexpose(&sim, Method::GET, "/api/3/sites?page=0&size=500", None).await;
    assert_eq!(s, 200);
    let ids: Vec<u64> = sites["resources"]
        .as_array()
        .expect("r")
        .iter()
        .map(|s| s["id"].as_u64().expect("id"))
        .collect();
    assert_eq!(ids, vec![1, 999]);
    let (s, _) = nexpose(&sim, Method::POST, "/api/3/sites/1/scans", Some(json!({"engineId": "3", "hosts": ["10.1.0.1"], "name": "n", "templateId": "full-audit-without-web-spider"}))).await;
    assert_eq!(s, 201);
    let (_, scans) = nexpose(&sim, Method::GET, "/api/3/scans?page=0&size=10", None).await;
    assert_eq!(scans["page"]["totalResources"], 1);
    assert_eq!(scans["resources"][0]["scanName"], "n");
    let (_, site_scans) = nexpose(&sim, Method::GET, "/api/3/sites/1/scans", None).await;
    assert_eq!(site_scans["page"]["totalResources"], 1);
    let id = scans["resources"][0]["id"].as_u64().expect("id");
    let (s, _) = nexpose(&sim, Method::POST, &format!("/api/3/scans/{id}/stop"), None).await;
    assert_eq!(s, 200);
    let (_, v) = nexpose(&sim, Method::GET, &format!("/api/3/scans/{id}"), None).await;
    assert_eq!(v["status"], "stopped");
    let (s, _) = nexpose(
        &sim,
        Method::GET,
        &format!("/api/3/scans/{id}.000000"),
        None,
    )
    .await;
    assert_eq!(s, 400, "strict rejects Go-Aegis float ids");
    let (s, _) = nexpose(
        &sim,
        Method::DELETE,
        "/api/3/scan_templates/discovery",
        None,
    )
    .await;
    assert_eq!(s, 400, "built-in templates cannot be deleted");
    sim.shutdown().await;
}

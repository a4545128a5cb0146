//! Each injectable fault, per vendor and endpoint, for a number of requests; and the journal.

mod common;

use std::time::{Duration, Instant};

use aegis_sim::{FaultAction, FaultSpec, Vendor};
use common::{jira, nexpose, qualys, start, xml_texts};
use reqwest::Method;
use serde_json::json;

#[tokio::test]
async fn latency_delays_only_the_matching_endpoint_for_count_requests() {
    let sim = start(2, 2).await;
    sim.inject_fault(
        FaultSpec::new(Vendor::Jira, FaultAction::Latency { ms: 1000 }, 1).on("/rest/api/2/status"),
    );
    let t = Instant::now();
    let (s, _) = jira(&sim, Method::GET, "/rest/api/2/field", None).await;
    assert_eq!(s, 200);
    assert!(
        t.elapsed() < Duration::from_millis(900),
        "other endpoints are not delayed"
    );
    let t = Instant::now();
    let (s, _) = jira(&sim, Method::GET, "/rest/api/2/status", None).await;
    assert_eq!(s, 200);
    assert!(t.elapsed() >= Duration::from_millis(1000));
    let t = Instant::now();
    jira(&sim, Method::GET, "/rest/api/2/status", None).await;
    assert!(t.elapsed() < Duration::from_millis(900), "count exhausted");
    let log = sim.request_log();
    let delayed = log
        .iter()
        .find(|e| e.faults == vec!["latency".to_string()])
        .expect("journaled");
    assert!(delayed.ended_us.expect("ended") - delayed.started_us >= 1_000_000);
    sim.shutdown().await;
}

#[tokio::test]
async fn too_many_requests_carries_retry_after_in_each_vendor_shape() {
    let sim = start(2, 2).await;
    for v in [Vendor::Jira, Vendor::Qualys, Vendor::Nexpose] {
        sim.inject_fault(FaultSpec::new(
            v,
            FaultAction::TooManyRequests {
                retry_after_secs: 7,
            },
            1,
        ));
    }
    let resp = common::client()
        .get(format!("{}/rest/api/2/field", sim.jira_url()))
        .basic_auth("aegis", Some("aegis"))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 429);
    assert_eq!(resp.headers()["retry-after"], "7");
    let v: serde_json::Value = resp.json().await.expect("json");
    assert!(v["errorMessages"].is_array());
    let (s, h, body) = qualys(&sim, Method::GET, "/api/2.0/fo/appliance/?action=list").await;
    assert_eq!(s, 429);
    assert_eq!(h["retry-after"], "7");
    assert!(!xml_texts(&body, &["SIMPLE_RETURN", "RESPONSE", "CODE"]).is_empty());
    let (s, v) = nexpose(&sim, Method::GET, "/api/3/assets", None).await;
    assert_eq!(s, 429);
    assert_eq!(v["status"], 429);
    // Next requests succeed.
    let (s, _) = nexpose(&sim, Method::GET, "/api/3/assets", None).await;
    assert_eq!(s, 200);
    sim.shutdown().await;
}

#[tokio::test]
async fn server_errors_use_the_requested_status() {
    let sim = start(2, 2).await;
    let id = sim.inject_fault(FaultSpec {
        skip: 1,
        ..FaultSpec::new(Vendor::Nexpose, FaultAction::ServerError { status: 503 }, 2)
            .on("/api/3/assets")
    });
    let codes = futures::future::join_all(
        (0..4).map(|_| nexpose(&sim, Method::GET, "/api/3/assets", None)),
    )
    .await;
    let mut codes: Vec<u16> = codes.into_iter().map(|c| c.0).collect();
    codes.sort_unstable();
    assert_eq!(codes, vec![200, 200, 503, 503]);
    let status = sim
        .faults()
        .into_iter()
        .find(|f| f.id == id)
        .expect("listed");
    assert_eq!((status.matched, status.fired), (4, 2));
    sim.shutdown().await;
}

#[tokio::test]
async fn connection_reset_drops_the_connection_without_a_response() {
    let sim = start(2, 2).await;
    sim.inject_fault(FaultSpec::new(
        Vendor::Qualys,
        FaultAction::ConnectionReset,
        1,
    ));
    let err = common::client()
        .get(format!(
            "{}/api/2.0/fo/appliance/?action=list",
            sim.qualys_url()
        ))
        .basic_auth("aegis", Some("aegis"))
        .header("X-Requested-With", "t")
        .send()
        .await
        .expect_err("no response");
    assert!(!err.is_status());
    let (s, _, _) = qualys(&sim, Method::GET, "/api/2.0/fo/appliance/?action=list").await;
    assert_eq!(s, 200);
    let log = sim.request_log();
    assert_eq!(log[0].status, None);
    assert_eq!(log[0].faults, vec!["connection_reset"]);
    assert!(log[0].ended_at.is_some());
    sim.shutdown().await;
}

#[tokio::test]
async fn malformed_and_truncated_bodies_do_not_parse() {
    let sim = start(20, 5).await;
    sim.inject_fault(
        FaultSpec::new(Vendor::Jira, FaultAction::MalformedBody, 1).on("/rest/api/2/status"),
    );
    let text = common::client()
        .get(format!("{}/rest/api/2/status", sim.jira_url()))
        .basic_auth("aegis", Some("aegis"))
        .send()
        .await
        .expect("send")
        .text()
        .await
        .unwrap_or_default();
    assert!(serde_json::from_str::<serde_json::Value>(&text).is_err());
    sim.inject_fault(
        FaultSpec::new(
            Vendor::Qualys,
            FaultAction::TruncatedBody {
                after_bytes: Some(500),
            },
            1,
        )
        .on("/api/2.0/fo/asset/host/vm/detection/"),
    );
    let resp = common::client()
        .post(format!(
            "{}/api/2.0/fo/asset/host/vm/detection/?action=list&truncation_limit=0",
            sim.qualys_url()
        ))
        .basic_auth("aegis", Some("aegis"))
        .header("X-Requested-With", "t")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 200);
    let body = resp.bytes().await.expect("complete (shortened) body");
    assert_eq!(body.len(), 500);
    let parsed =
        std::panic::catch_unwind(|| xml_texts(&String::from_utf8_lossy(&body), &["HOST", "ID"]));
    assert!(parsed.is_err(), "truncated XML must not parse");
    sim.inject_fault(FaultSpec::new(
        Vendor::Nexpose,
        FaultAction::MalformedBody,
        1,
    ));
    let text = common::client()
        .get(format!("{}/api/3/assets", sim.nexpose_url()))
        .basic_auth("aegis", Some("aegis"))
        .send()
        .await
        .expect("send")
        .text()
        .await
        .unwrap_or_default();
    assert!(serde_json::from_str::<serde_json::Value>(&text).is_err());
    sim.shutdown().await;
}

#[tokio::test]
async fn paging_loop_points_every_vendor_back_at_the_same_page() {
    let sim = start(30, 2).await;
    sim.inject_fault(FaultSpec::new(Vendor::Qualys, FaultAction::PagingLoop, 3));
    let first = format!(
        "{}/api/2.0/fo/asset/host/vm/detection/?action=list&truncation_limit=10",
        sim.qualys_url()
    );
    let (_, _, body) = common::qualys_url(&first, Method::POST, None).await;
    let url = xml_texts(&body, &["WARNING", "URL"])[0].clone();
    let first_ids = xml_texts(&body, &["HOST", "ID"]);
    let (_, _, again) = common::qualys_url(&url, Method::POST, None).await;
    assert_eq!(
        xml_texts(&again, &["HOST", "ID"]),
        first_ids,
        "WARNING/URL leads back to the same hosts"
    );
    assert_eq!(xml_texts(&again, &["WARNING", "URL"])[0], url);

    sim.inject_fault(FaultSpec::new(Vendor::Nexpose, FaultAction::PagingLoop, 1));
    let (_, v) = nexpose(
        &sim,
        Method::GET,
        "/api/3/sites/1/assets?page=5&size=10",
        None,
    )
    .await;
    assert_eq!(v["page"]["number"], 5);
    assert_eq!(v["page"]["totalPages"], 7);
    assert_eq!(v["resources"][0]["id"], 1, "first page's content again");

    for i in 0..3 {
        let body = json!({"fields": {"project": {"key": "VULN"}, "issuetype": {"name": "Request"}, "summary": format!("t{i}")}});
        assert_eq!(
            jira(&sim, Method::POST, "/rest/api/2/issue", Some(body))
                .await
                .0,
            201
        );
    }
    sim.inject_fault(
        FaultSpec::new(Vendor::Jira, FaultAction::PagingLoop, 1).on("/rest/api/latest/search"),
    );
    let (_, v) = jira(
        &sim,
        Method::POST,
        "/rest/api/latest/search",
        Some(json!({"jql": "project = VULN ORDER BY key ASC", "startAt": 2, "maxResults": 2})),
    )
    .await;
    assert_eq!(v["issues"][0]["key"], "VULN-1", "startAt ignored");
    assert!(
        v["total"].as_u64().expect("total") > 4,
        "total keeps growing"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn control_api_manages_faults_and_journal_over_http() {
    let sim = start(2, 2).await;
    let c = common::client();
    let resp = c
        .post(format!("{}/_sim/faults", sim.control_url()))
        .json(&json!({"vendor": "jira", "endpoint": "/rest/api/2/field", "action": {"kind": "server_error", "status": 502}, "count": 1}))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 201);
    let (s, _) = jira(&sim, Method::GET, "/rest/api/2/field", None).await;
    assert_eq!(s, 502);
    let faults: serde_json::Value = c
        .get(format!("{}/_sim/faults", sim.jira_url()))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(faults[0]["fired"], 1);
    let journal: serde_json::Value = c
        .get(format!("{}/_sim/journal?vendor=jira", sim.control_url()))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    let e = &journal[0];
    assert_eq!(e["method"], "GET");
    assert_eq!(e["path"], "/rest/api/2/field");
    assert_eq!(e["status"], 502);
    assert_eq!(e["in_flight_at_start"], 0);
    let started = e["started_at"].as_str().expect("started");
    assert!(chrono::DateTime::parse_from_rfc3339(started).is_ok());
    assert_eq!(started.len(), "2020-04-21T17:18:30.000Z".len(), "{started}");
    c.delete(format!("{}/_sim/faults", sim.control_url()))
        .send()
        .await
        .expect("send");
    c.delete(format!("{}/_sim/journal", sim.control_url()))
        .send()
        .await
        .expect("send");
    assert!(sim.faults().is_empty());
    assert!(sim.request_log().is_empty());
    sim.shutdown().await;
}

#[tokio::test]
async fn hostile_inputs_get_vendor_errors_not_panics() {
    let sim = start(3, 2).await;
    for jql in [
        "\"updated\" > 99999999999999999w",
        "\"updated\" > 5é",
        "\"created\" < \"9999999/99/99\"",
        "((((",
        "\"summary\" ~ \"(\"",
    ] {
        let (s, _) = jira(
            &sim,
            Method::POST,
            "/rest/api/latest/search",
            Some(json!({"jql": jql})),
        )
        .await;
        assert!(s == 400 || s == 200, "{jql}: {s}");
    }
    let (s, _) = jira(
        &sim,
        Method::POST,
        "/rest/api/latest/search",
        Some(json!({"jql": "project = VULN", "startAt": i64::MAX, "maxResults": "x"})),
    )
    .await;
    assert_eq!(s, 400);
    let (s, _) = nexpose(
        &sim,
        Method::GET,
        &format!("/api/3/assets?page={}&size=500", usize::MAX),
        None,
    )
    .await;
    assert_eq!(s, 200);
    let (s, _) = nexpose(&sim, Method::GET, "/api/3/assets?page=-1", None).await;
    assert_eq!(s, 400);
    let (s, _) = nexpose(&sim, Method::POST, "/api/3/scan_templates", None).await;
    assert_eq!(s, 400);
    for q in [
        "/api/2.0/fo/asset/host/vm/detection/?action=list&ips=10.0.0.300",
        "/api/2.0/fo/asset/host/vm/detection/?action=list&ids=9-1",
        "/api/2.0/fo/asset/host/vm/detection/?action=list&truncation_limit=-1",
        "/api/2.0/fo/scan/?action=launch&option_id=300001&ip=0.0.0.0-255.255.255.255",
        "/api/2.0/fo/qid/search_list/static/?action=create&title=t&qids=1-99999999",
        "/api/2.0/fo/scan/?action=explode",
        "/api/2.0/fo/scan/",
    ] {
        let (s, _, body) = qualys(&sim, Method::POST, q).await;
        assert_eq!(s, 400, "{q}: {body}");
        assert!(!xml_texts(&body, &["SIMPLE_RETURN", "RESPONSE", "CODE"]).is_empty());
    }
    let resp = common::client()
        .post(format!("{}/_sim/clock/advance", sim.control_url()))
        .json(&json!({"seconds": 1e300}))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 400);
    sim.advance_clock(Duration::from_secs(u64::MAX));
    let (s, _) = jira(&sim, Method::GET, "/rest/api/2/serverInfo", None).await;
    assert_eq!(s, 200, "a huge clock advance is capped");
    sim.shutdown().await;
}

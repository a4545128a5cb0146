//! Helpers shared by the simulator's integration tests.
#![allow(dead_code)]

use std::future::Future;
use std::time::{Duration, Instant};

use aegis_sim::{EstateSpec, ScanTiming, SimConfig, Simulator};

pub async fn start(hosts: usize, per_host: usize) -> Simulator {
    start_with(SimConfig {
        estate: EstateSpec {
            hosts,
            detections_per_host: per_host,
            seed: 42,
        },
        scan_timing: ScanTiming::fast(),
        ..Default::default()
    })
    .await
}

pub async fn start_with(cfg: SimConfig) -> Simulator {
    match Simulator::start(cfg).await {
        Ok(s) => s,
        Err(e) => panic!("simulator failed to start: {e}"),
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client")
}

/// A Qualys request with basic auth and X-Requested-With.
pub async fn qualys(
    sim: &Simulator,
    method: reqwest::Method,
    path_and_query: &str,
) -> (u16, reqwest::header::HeaderMap, String) {
    let url = format!("{}{}", sim.qualys_url(), path_and_query);
    qualys_url(&url, method, None).await
}

pub async fn qualys_url(
    url: &str,
    method: reqwest::Method,
    body: Option<String>,
) -> (u16, reqwest::header::HeaderMap, String) {
    let mut req = client()
        .request(method, url)
        .basic_auth("aegis", Some("aegis"))
        .header("X-Requested-With", "aegis-sim tests");
    if let Some(b) = body {
        req = req.header("Content-Type", "application/xml").body(b);
    }
    let resp = req.send().await.expect("qualys request");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.text().await.expect("body"))
}

pub async fn jira(
    sim: &Simulator,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    jira_as(sim, "aegis", method, path, body).await
}

pub async fn jira_as(
    sim: &Simulator,
    user: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut req = client()
        .request(method, format!("{}{}", sim.jira_url(), path))
        .basic_auth(user, Some("aegis"))
        .header("Content-Type", "application/json");
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("jira request");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    let v = if text.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("JIRA body is not JSON ({e}): {text}"))
    };
    (status, v)
}

pub async fn nexpose(
    sim: &Simulator,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut req = client()
        .request(method, format!("{}{}", sim.nexpose_url(), path))
        .basic_auth("aegis", Some("aegis"));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("nexpose request");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    let v = if text.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("Nexpose body is not JSON ({e}): {text}"))
    };
    (status, v)
}

/// Texts of every element whose path ends with `suffix` (e.g. `["HOST", "ID"]`).
/// Panics if the document is not well-formed XML.
pub fn xml_texts(xml: &str, suffix: &[&str]) -> Vec<String> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut path: Vec<String> = Vec::new();
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    loop {
        match reader.read_event() {
            Ok(Event::Start(e)) => {
                path.push(String::from_utf8_lossy(e.name().as_ref()).to_string());
                if path.ends_with(&suffix.iter().map(|s| s.to_string()).collect::<Vec<_>>()) {
                    current = Some(String::new());
                }
            }
            Ok(Event::End(_)) => {
                if path.ends_with(&suffix.iter().map(|s| s.to_string()).collect::<Vec<_>>()) {
                    if let Some(c) = current.take() {
                        out.push(c);
                    }
                }
                path.pop();
            }
            Ok(Event::Text(t)) => {
                if let Some(c) = current.as_mut() {
                    c.push_str(&t.unescape().expect("text"));
                }
            }
            Ok(Event::CData(t)) => {
                if let Some(c) = current.as_mut() {
                    c.push_str(&String::from_utf8_lossy(&t));
                }
            }
            Ok(Event::Eof) => break,
            Ok(_) => {}
            Err(e) => panic!("not well-formed XML: {e}\n{xml}"),
        }
    }
    assert!(path.is_empty(), "unclosed elements {path:?}");
    out
}

/// Poll `f` until it returns `Some`, failing after `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

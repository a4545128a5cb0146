//! The standalone binary: port 0 everywhere, one JSON line of URLs on stdout, serves until killed.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

#[tokio::test]
async fn binary_prints_its_addresses_and_serves_all_vendors() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_aegis-sim"))
        .args([
            "--jira-port",
            "0",
            "--qualys-port",
            "0",
            "--nexpose-port",
            "0",
            "--hosts",
            "3",
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn aegis-sim");
    let stdout = child.stdout.take().expect("stdout");
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).map(|_| line)
    })
    .await
    .expect("join")
    .expect("read line");
    let urls: serde_json::Value = serde_json::from_str(&line).expect("JSON address line");
    let client = reqwest::Client::new();
    let jira = client
        .get(format!(
            "{}/rest/api/2/serverInfo",
            urls["jira"].as_str().expect("jira")
        ))
        .basic_auth("aegis", Some("aegis"))
        .send()
        .await
        .expect("jira");
    assert_eq!(jira.status().as_u16(), 200);
    let qualys = client
        .get(format!(
            "{}/api/2.0/fo/appliance/?action=list",
            urls["qualys"].as_str().expect("qualys")
        ))
        .basic_auth("aegis", Some("aegis"))
        .header("X-Requested-With", "t")
        .send()
        .await
        .expect("qualys");
    assert_eq!(qualys.status().as_u16(), 200);
    let nexpose = client
        .get(format!(
            "{}/api/3/assets",
            urls["nexpose"].as_str().expect("nexpose")
        ))
        .basic_auth("aegis", Some("aegis"))
        .send()
        .await
        .expect("nexpose");
    let v: serde_json::Value = nexpose.json().await.expect("json");
    assert_eq!(v["page"]["totalResources"], 3);
    let state = client
        .get(format!(
            "{}/_sim/state",
            urls["control"].as_str().expect("control")
        ))
        .send()
        .await
        .expect("control");
    assert_eq!(state.status().as_u16(), 200);
    let _ = child.kill();
    let _ = child.wait();
}

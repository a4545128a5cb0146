//! The JIRA simulator against the shapes and behaviour in `original-vendor-apis.md` §1.

mod common;

use aegis_sim::{JiraSettings, SimConfig};
use common::{jira, jira_as, start, start_with};
use reqwest::Method;
use serde_json::{json, Value};

fn field_id(fields: &Value, name: &str) -> String {
    fields
        .as_array()
        .expect("array")
        .iter()
        .find(|f| f["name"] == name)
        .unwrap_or_else(|| panic!("field {name} missing"))["id"]
        .as_str()
        .expect("id")
        .to_string()
}

fn custom_id(fields: &Value, name: &str) -> u64 {
    fields
        .as_array()
        .expect("array")
        .iter()
        .find(|f| f["name"] == name)
        .expect("field")["schema"]["customId"]
        .as_u64()
        .expect("customId")
}

async fn create_ticket(
    sim: &aegis_sim::Simulator,
    fields: &Value,
    device: &str,
    vid: &str,
    org: &str,
) -> (String, String) {
    let f = |n: &str| field_id(fields, n);
    let body = json!({"fields": {
        "project": {"key": "VULN"},
        "summary": format!("VRR (10.0.0.5 - web1): vuln {vid}"),
        "description": "desc",
        "issuetype": {"name": "Request"},
        "duedate": "2030-01-31",
        f("DeviceID"): device,
        f("VulnerabilityID"): vid,
        f("Service Port"): "443 tcp",
        f("Org"): org,
        f("Method of Discovery"): {"value": "Qualys"},
        f("cvss_score"): {"value": "7.5"},
        f("Assignment Group"): {"name": "grp-sec-ops"},
        f("Scan/Alert Date"): "2021-03-04",
    }});
    let (status, v) = jira(sim, Method::POST, "/rest/api/2/issue", Some(body)).await;
    assert_eq!(status, 201, "{v}");
    (
        v["id"].as_str().expect("id").to_string(),
        v["key"].as_str().expect("key").to_string(),
    )
}

#[tokio::test]
async fn startup_metadata_has_the_aegis_schema_and_statuses() {
    let sim = start(1, 1).await;
    let (s, fields) = jira(&sim, Method::GET, "/rest/api/latest/field", None).await;
    assert_eq!(s, 200);
    for name in [
        "Key",
        "Project",
        "Status",
        "Updated",
        "Summary",
        "Description",
        "Created",
        "Due date",
    ] {
        field_id(&fields, name);
    }
    for name in [
        "Method of Discovery",
        "Hostname",
        "IP Address",
        "MAC Address",
        "Service Port",
        "Solution",
        "VRR Priority",
        "Scan/Alert Date",
        "Assignment Group",
        "Resolution Date",
        "Reopen Reason",
        "Operating System",
        "Vulnerability",
        "cvss_score",
        "VulnerabilityID",
        "OWASP",
        "Exception Date",
        "Exception Expiration",
        "LastChecked",
        "GroupID",
        "DeviceID",
        "ScanID",
        "Org",
        "SystemName",
        "CERF",
        "CVE References",
        "VendorRef",
        "OS_Detailed",
        "Config",
        "CloudID",
        "Application Name",
        "Tracking Method",
        "Patchable",
        "Category",
    ] {
        let f = fields
            .as_array()
            .expect("array")
            .iter()
            .find(|f| f["name"] == name)
            .expect(name);
        assert_eq!(f["custom"], true);
        assert!(f["schema"]["customId"].is_u64());
        assert!(f["id"].as_str().expect("id").starts_with("customfield_"));
    }
    let (s, statuses) = jira(&sim, Method::GET, "/rest/api/2/status", None).await;
    assert_eq!(s, 200);
    let names: Vec<&str> = statuses
        .as_array()
        .expect("array")
        .iter()
        .map(|s| s["name"].as_str().expect("name"))
        .collect();
    for st in [
        "Open",
        "In-Progress",
        "Reopened",
        "Resolved-Remediated",
        "Resolved-FalsePositive",
        "Resolved-Decommissioned",
        "Resolved-Exception",
        "Closed-Remediated",
        "Closed-Exception",
        "Closed-False-Positive",
        "Closed-FalsePositive",
        "Closed-Decommission",
        "Scan-Error",
    ] {
        assert!(names.contains(&st), "{st} missing");
    }
    assert!(statuses[0]["statusCategory"]["id"].is_i64());
    let (s, res) = jira(&sim, Method::GET, "/rest/api/2/resolution", None).await;
    assert_eq!(s, 200);
    assert!(res[0]["name"].is_string() && res[0]["self"].is_string());
    let (s, types) = jira(&sim, Method::GET, "/rest/api/2/issuetype", None).await;
    assert_eq!(s, 200);
    assert!(types
        .as_array()
        .expect("array")
        .iter()
        .any(|t| t["name"] == "Request" && t["subtask"] == false));
    let (s, info) = jira(&sim, Method::GET, "/rest/api/2/serverInfo", None).await;
    assert_eq!(s, 200);
    assert_eq!(info["deploymentType"], "Server");
    let (s, projects) = jira(&sim, Method::GET, "/rest/api/2/project", None).await;
    assert_eq!(s, 200);
    assert_eq!(projects[0]["key"], "VULN");
    let (s, links) = jira(&sim, Method::GET, "/rest/api/2/issueLinkType", None).await;
    assert_eq!(s, 200);
    assert!(links["issueLinkTypes"]
        .as_array()
        .expect("array")
        .iter()
        .any(|l| l["name"] == "Related"));
    sim.shutdown().await;
}

#[tokio::test]
async fn wrong_credentials_get_401_in_jira_error_shape_and_bearer_tokens_work() {
    let sim = start(1, 1).await;
    let resp = common::client()
        .get(format!("{}/rest/api/2/field", sim.jira_url()))
        .basic_auth("aegis", Some("wrong"))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 401);
    let v: Value = resp.json().await.expect("json");
    assert!(v["errorMessages"][0].is_string());
    assert!(v["errors"].is_object());
    let resp = common::client()
        .get(format!("{}/rest/api/2/field", sim.jira_url()))
        .bearer_auth("aegis-sim-token")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 200);
    sim.shutdown().await;
}

#[tokio::test]
async fn created_issue_reads_back_with_real_jira_shapes() {
    let sim = start(1, 1).await;
    let (_, fields) = jira(&sim, Method::GET, "/rest/api/latest/field", None).await;
    let (id, key) = create_ticket(&sim, &fields, "1001", "38739", "ORG").await;
    assert_eq!(key, "VULN-1");
    assert!(id.parse::<u64>().is_ok());
    let (s, issue) = jira(&sim, Method::GET, &format!("/rest/api/2/issue/{key}"), None).await;
    assert_eq!(s, 200);
    let f = &issue["fields"];
    assert_eq!(f["status"]["name"], "Open");
    assert!(f["resolution"].is_null());
    assert_eq!(f["duedate"], "2030-01-31");
    let created = f["created"].as_str().expect("created");
    assert_eq!(
        created.len(),
        "2020-04-21T17:18:30.000+0000".len(),
        "{created}"
    );
    assert!(created.ends_with("+0000"));
    assert_eq!(f[field_id(&fields, "DeviceID")], "1001");
    assert_eq!(
        f[field_id(&fields, "Method of Discovery")]["value"],
        "Qualys"
    );
    assert_eq!(f[field_id(&fields, "cvss_score")]["value"], "7.5");
    assert_eq!(
        f[field_id(&fields, "Assignment Group")]["name"],
        "grp-sec-ops"
    );
    assert_eq!(f[field_id(&fields, "Scan/Alert Date")], "2021-03-04");
    assert!(f[field_id(&fields, "CERF")].is_null());
    assert_eq!(f["project"]["key"], "VULN");
    assert_eq!(f["reporter"]["name"], "aegis");
    // By numeric id too.
    let (s, same) = jira(&sim, Method::GET, &format!("/rest/api/2/issue/{id}"), None).await;
    assert_eq!(s, 200);
    assert_eq!(same["key"], key);
    sim.shutdown().await;
}

#[tokio::test]
async fn invalid_writes_are_rejected_with_field_errors() {
    let sim = start(1, 1).await;
    let (_, fields) = jira(&sim, Method::GET, "/rest/api/latest/field", None).await;
    let (s, v) = jira(
        &sim,
        Method::POST,
        "/rest/api/2/issue",
        Some(json!({"fields": {"project": {"key": "VULN"}, "issuetype": {"name": "Request"}}})),
    )
    .await;
    assert_eq!(s, 400);
    assert!(v["errors"]["summary"].is_string());
    let body = json!({"fields": {"project": {"key": "VULN"}, "issuetype": {"name": "Request"}, "summary": "x",
                                  "customfield_99999": "y", field_id(&fields, "OWASP"): {"value": "Nope"}}});
    let (s, v) = jira(&sim, Method::POST, "/rest/api/2/issue", Some(body)).await;
    assert_eq!(s, 400);
    assert!(v["errors"]["customfield_99999"]
        .as_str()
        .expect("err")
        .contains("cannot be set"));
    assert!(v["errors"][field_id(&fields, "OWASP")].is_string());
    // Malformed JSON.
    let resp = common::client()
        .post(format!("{}/rest/api/2/issue", sim.jira_url()))
        .basic_auth("aegis", Some("aegis"))
        .header("Content-Type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 400);
    let v: Value = resp.json().await.expect("json");
    assert!(v["errorMessages"][0].is_string());
    // Unknown issue.
    let (s, v) = jira(&sim, Method::GET, "/rest/api/2/issue/VULN-999", None).await;
    assert_eq!(s, 404);
    assert_eq!(v["errorMessages"][0], "Issue Does Not Exist");
    // Trailing-slash create is a Go-Aegis quirk: strict says 404.
    let (s, _) = jira(
        &sim,
        Method::POST,
        "/rest/api/2/issue/",
        Some(json!({"fields": {}})),
    )
    .await;
    assert_eq!(s, 404);
    sim.shutdown().await;
}

#[tokio::test]
async fn edit_updates_fields_links_and_bumps_updated() {
    let sim = start(1, 1).await;
    let (_, fields) = jira(&sim, Method::GET, "/rest/api/latest/field", None).await;
    let (_, a) = create_ticket(&sim, &fields, "1", "100", "ORG").await;
    let (_, b) = create_ticket(&sim, &fields, "2", "200", "ORG").await;
    let (_, before) = jira(&sim, Method::GET, &format!("/rest/api/2/issue/{a}"), None).await;
    sim.advance_clock(std::time::Duration::from_secs(120));
    let body = json!({"fields": {field_id(&fields, "CERF"): "CERF-1", field_id(&fields, "Exception Expiration"): null,
                                 "assignee": {"name": "jdoe"}}});
    let (s, v) = jira(
        &sim,
        Method::PUT,
        &format!("/rest/api/2/issue/{a}"),
        Some(body),
    )
    .await;
    assert_eq!(s, 204, "{v}");
    let link = json!({"update": {"issuelinks": [{"add": {"type": {"name": "Related", "inward": "", "outward": ""}, "outwardIssue": {"key": b}}}]}});
    let (s, v) = jira(
        &sim,
        Method::PUT,
        &format!("/rest/api/2/issue/{a}"),
        Some(link),
    )
    .await;
    assert_eq!(s, 204, "{v}");
    let (_, after) = jira(&sim, Method::GET, &format!("/rest/api/2/issue/{a}"), None).await;
    assert_eq!(after["fields"][field_id(&fields, "CERF")], "CERF-1");
    assert_eq!(after["fields"]["assignee"]["name"], "jdoe");
    assert_eq!(after["fields"]["issuelinks"][0]["outwardIssue"]["key"], b);
    assert_ne!(before["fields"]["updated"], after["fields"]["updated"]);
    let (_, linked) = jira(
        &sim,
        Method::POST,
        "/rest/api/latest/search",
        Some(json!({"jql": format!("issue in linkedIssues(\"{a}\")")})),
    )
    .await;
    assert_eq!(linked["total"], 1);
    assert_eq!(linked["issues"][0]["key"], b);
    sim.shutdown().await;
}

#[tokio::test]
async fn search_pages_with_start_at_and_caps_max_results() {
    let sim = start_with(SimConfig {
        jira: JiraSettings {
            max_results_cap: 50,
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let (_, fields) = jira(&sim, Method::GET, "/rest/api/latest/field", None).await;
    for i in 0..120 {
        create_ticket(&sim, &fields, &i.to_string(), "1", "ORG").await;
    }
    let (s, count) = jira(
        &sim,
        Method::POST,
        "/rest/api/latest/search",
        Some(json!({"jql": "\"project\" = VULN ORDER BY created ASC", "maxResults": 1})),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(count["total"], 120);
    assert_eq!(count["issues"].as_array().expect("issues").len(), 1);
    assert!(
        count["issues"][0]["fields"][field_id(&fields, "DeviceID")].is_string(),
        "custom fields in search results"
    );
    let mut keys = Vec::new();
    let mut start = 0;
    loop {
        let (_, page) = jira(&sim, Method::POST, "/rest/api/latest/search",
            Some(json!({"jql": "\"project\" = VULN ORDER BY created ASC", "startAt": start, "maxResults": 1000}))).await;
        assert_eq!(page["maxResults"], 50, "server caps maxResults");
        let issues = page["issues"].as_array().expect("issues").clone();
        if issues.is_empty() {
            break;
        }
        start += issues.len();
        keys.extend(
            issues
                .iter()
                .map(|i| i["key"].as_str().expect("key").to_string()),
        );
    }
    assert_eq!(keys.len(), 120);
    assert_eq!(keys[0], "VULN-1");
    assert_eq!(keys[119], "VULN-120");
    sim.shutdown().await;
}

#[tokio::test]
async fn jql_subset_aegis_generates_selects_the_right_tickets() {
    let sim = start(1, 1).await;
    let (_, fields) = jira(&sim, Method::GET, "/rest/api/latest/field", None).await;
    let org = custom_id(&fields, "Org");
    let dev = custom_id(&fields, "DeviceID");
    let vid = custom_id(&fields, "VulnerabilityID");
    let mod_ = custom_id(&fields, "Method of Discovery");
    let cerf = custom_id(&fields, "CERF");
    let (_, k1) = create_ticket(&sim, &fields, "123", "38739", "ORG").await;
    let (_, k2) = create_ticket(&sim, &fields, "1234", "38740", "ORG").await;
    let (_, k3) = create_ticket(&sim, &fields, "123", "38741", "OTHER").await;
    sim.jira_transition(&k1, "Resolved-Remediated")
        .expect("transition");
    let search = |jql: String| {
        let sim = &sim;
        async move {
            let (s, v) = jira(
                sim,
                Method::POST,
                "/rest/api/latest/search",
                Some(json!({"jql": jql})),
            )
            .await;
            assert_eq!(s, 200, "{v}");
            let mut keys: Vec<String> = v["issues"]
                .as_array()
                .expect("issues")
                .iter()
                .map(|i| i["key"].as_str().expect("k").to_string())
                .collect();
            keys.sort();
            keys
        }
    };
    assert_eq!(
        search(format!("\"project\" = VULN AND \"CF[{mod_}]\" = Qualys AND \"CF[{org}]\" ~ \"(ORG)\" AND (\"status\" = Resolved-Remediated) ORDER BY due ASC")).await,
        vec![k1.clone()]
    );
    assert_eq!(
        search(format!("\"project\" = VULN AND \"status\" in (Open,Reopened,Resolved-Exception,Resolved-Decommissioned,In-Progress) AND \"CF[{dev}]\" ~ \"(123)\" AND \"CF[{org}]\" ~ \"(ORG)\" AND (\"CF[{vid}]\" ~ \"(38739)\" OR \"CF[{vid}]\" ~ \"(38740)\")")).await,
        Vec::<String>::new(),
        "~ is a word match: device 123 does not match 1234, and VULN-1 is resolved"
    );
    assert_eq!(
        search(format!("\"project\" = VULN AND \"CF[{dev}]\" ~ \"(123)\" AND \"issuekey\" != {k1} ORDER BY created ASC")).await,
        vec![k3.clone()]
    );
    assert_eq!(
        search(format!(
            "\"project\" = VULN AND \"key\" not in ({k1},{k3}) AND \"CF[{cerf}]\" IS EMPTY"
        ))
        .await,
        vec![k2.clone()]
    );
    assert_eq!(
        search(
            "\"project\" = VULN AND \"updated\" > \"2000/01/01 00:00\" AND \"created\" <= -0d"
                .into()
        )
        .await
        .len(),
        3
    );
    assert_eq!(
        search("\"project\" = VULN AND (\"due\" <= 15d OR \"created\" <= -20d)".into())
            .await
            .len(),
        0
    );
    assert_eq!(
        search(format!(
            "\"project\" = VULN AND \"CF[{cerf}]\" IS NOT EMPTY"
        ))
        .await
        .len(),
        0
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn jql_it_does_not_understand_gets_jiras_400() {
    let sim = start(1, 1).await;
    for jql in [
        "\"project\" = [NO MAPPING FOUND FOR open IN JIRA PAYLOAD]",
        "\"nosuchfield\" = 1",
        "\"status\" = Nonexistent-Status",
        "\"project\" = VULN AND",
        "issue in membersOf(\"x\")",
        "\"status\" ~ Open",
    ] {
        let (s, v) = jira(
            &sim,
            Method::POST,
            "/rest/api/latest/search",
            Some(json!({"jql": jql})),
        )
        .await;
        assert_eq!(s, 400, "{jql}");
        assert!(v["errorMessages"][0].is_string(), "{jql}: {v}");
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn workflow_transitions_follow_the_aegis_workflow() {
    let sim = start(1, 1).await;
    let (_, fields) = jira(&sim, Method::GET, "/rest/api/latest/field", None).await;
    let (id, key) = create_ticket(&sim, &fields, "1", "1", "ORG").await;
    let (s, t) = jira(
        &sim,
        Method::GET,
        &format!("/rest/api/2/issue/{key}/transitions?expand=transitions.fields"),
        None,
    )
    .await;
    assert_eq!(s, 200);
    let resolve = t["transitions"]
        .as_array()
        .expect("transitions")
        .iter()
        .find(|t| t["to"]["name"] == "Resolved-Remediated")
        .expect("resolve offered")
        .clone();
    let res_date = field_id(&fields, "Resolution Date");
    assert_eq!(resolve["fields"][&res_date]["name"], "Resolution Date");
    // A person resolves it through the public API as another user.
    let body = json!({"transition": {"id": resolve["id"], "Unknowns": {}},
                      "fields": {&res_date: "2021-03-04T05:06:07.000+0000"},
                      "update": {"comment": [{"add": {"body": "fixed it"}}]}});
    let (s, v) = jira_as(
        &sim,
        "remediator",
        Method::POST,
        &format!("/rest/api/2/issue/{key}/transitions"),
        Some(body),
    )
    .await;
    assert_eq!(s, 204, "{v}");
    let (_, issue) = jira(&sim, Method::GET, &format!("/rest/api/2/issue/{key}"), None).await;
    assert_eq!(issue["fields"]["status"]["name"], "Resolved-Remediated");
    assert!(issue["fields"]["resolutiondate"].is_string());
    assert_eq!(
        issue["fields"]["comment"]["comments"][0]["author"]["name"],
        "remediator"
    );
    // Reopen requires Reopen Reason (required screen field).
    let (_, t) = jira(
        &sim,
        Method::GET,
        &format!("/rest/api/2/issue/{key}/transitions?expand=transitions.fields"),
        None,
    )
    .await;
    let reopen = t["transitions"]
        .as_array()
        .expect("t")
        .iter()
        .find(|t| t["to"]["name"] == "Reopened")
        .expect("reopen")
        .clone();
    let (s, v) = jira(
        &sim,
        Method::POST,
        &format!("/rest/api/2/issue/{key}/transitions"),
        Some(json!({"transition": {"id": reopen["id"]}})),
    )
    .await;
    assert_eq!(s, 400);
    assert!(v["errors"][field_id(&fields, "Reopen Reason")].is_string());
    // A transition not offered from this status.
    let (s, v) = jira(
        &sim,
        Method::POST,
        &format!("/rest/api/2/issue/{key}/transitions"),
        Some(json!({"transition": {"id": "11"}})),
    )
    .await;
    assert_eq!(s, 400);
    assert!(v["errorMessages"][0]
        .as_str()
        .expect("msg")
        .contains("not valid"));
    // Close via control API, then only Reopen is offered.
    sim.jira_transition(&key, "Closed-Remediated")
        .expect("close");
    let (_, t) = jira(
        &sim,
        Method::GET,
        &format!("/rest/api/2/issue/{key}/transitions"),
        None,
    )
    .await;
    let offered: Vec<&str> = t["transitions"]
        .as_array()
        .expect("t")
        .iter()
        .map(|t| t["to"]["name"].as_str().expect("n"))
        .collect();
    assert_eq!(offered, vec!["Reopened"]);
    assert!(
        t["transitions"][0].get("fields").is_none(),
        "fields only with expand"
    );
    // Comment by numeric id.
    let (s, c) = jira(
        &sim,
        Method::POST,
        &format!("/rest/api/2/issue/{id}/comment"),
        Some(json!({"body": "scan/123 closed", "author": {"avatarUrls": {}}, "visibility": {}})),
    )
    .await;
    assert_eq!(s, 201);
    assert_eq!(c["body"], "scan/123 closed");
    sim.shutdown().await;
}

#[tokio::test]
async fn user_lookup_answers_username_and_account_id() {
    let sim = start(1, 1).await;
    let (s, u) = jira(&sim, Method::GET, "/rest/api/2/user?accountId=aegis", None).await;
    assert_eq!(s, 200);
    assert_eq!(u["name"], "aegis");
    assert_eq!(u["active"], true);
    let (s, _) = jira(
        &sim,
        Method::GET,
        "/rest/api/2/user?username=remediator",
        None,
    )
    .await;
    assert_eq!(s, 200);
    let (s, v) = jira(&sim, Method::GET, "/rest/api/2/user?username=ghost", None).await;
    assert_eq!(s, 404);
    assert!(v["errorMessages"][0].is_string());
    let (s, g) = jira(
        &sim,
        Method::GET,
        "/rest/api/2/groups/picker?query=sec",
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(g["groups"][0]["name"], "grp-sec-ops");
    let (s, meta) = jira(
        &sim,
        Method::GET,
        "/rest/api/2/issue/createmeta?projectKeys=VULN&expand=projects.issuetypes.fields",
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert!(meta["projects"][0]["issuetypes"][0]["fields"]["summary"]["required"] == true);
    sim.shutdown().await;
}

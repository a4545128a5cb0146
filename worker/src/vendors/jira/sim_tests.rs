//! `JiraClient` against the JIRA simulator (its real JQL parser, workflow and
//! paging), through the rate-limited source client. Needs nothing but a
//! loopback port (Redis is used when present, the local limit otherwise).

use std::collections::BTreeMap;

use aegis_shared::model::source_config::SourceConfig;
use aegis_shared::ratelimit::{Limiter, LimiterOptions, LimitsCache};
use aegis_shared::source_http::SourceClient;
use aegis_sim::{EstateSpec, SimConfig, Simulator};
use futures::TryStreamExt;

use super::jql::{Cond, Field};
use super::JiraClient;
use crate::vendors::ticketing::{field, FieldValue, NewTicket, TicketEngine, TransitionOptions};

async fn client(sim: &Simulator) -> JiraClient {
    let suggested = sim.source_configs()["jira"].clone();
    let sc = SourceConfig {
        id: uuid::Uuid::new_v4().to_string(),
        source: Some("JIRA".into()),
        source_id: None,
        organization_id: None,
        address: Some(sim.jira_url()),
        port: None,
        auth_info:
            r#"{"Username":"aegis","Password":"aegis","Concurrency":4,"Retries":2,"Delay":0}"#
                .into(),
        payload: suggested["payload"].to_string(),
        active: true,
    };
    let limits = LimitsCache::fixed([(sc.id.clone(), sc.limits().expect("limits"))]);
    let limiter = Limiter::with_options(
        "redis://127.0.0.1:6379/0",
        "jira-client-test",
        LimiterOptions::default(),
    )
    .expect("limiter");
    let http = SourceClient::new(&sc, None, limiter, limits).expect("client");
    JiraClient::connect(http, &sc, None)
        .await
        .expect("connects to the simulator")
}

async fn simulator(max_results: usize) -> Simulator {
    let mut cfg = SimConfig {
        estate: EstateSpec {
            hosts: 1,
            detections_per_host: 1,
            seed: 3,
        },
        ..Default::default()
    };
    cfg.jira.max_results_cap = max_results;
    Simulator::start(cfg).await.expect("simulator")
}

fn ticket(hostname: &str, label: &str) -> NewTicket {
    let mut fields = BTreeMap::new();
    fields.insert(
        field::HOSTNAME.to_string(),
        FieldValue::Text(hostname.into()),
    );
    fields.insert(field::ORG.to_string(), "NORTON".into());
    fields.insert(field::METHOD_OF_DISCOVERY.to_string(), "Qualys".into());
    fields.insert(field::SERVICE_PORT.to_string(), "443 tcp".into());
    fields.insert(field::CVSS.to_string(), FieldValue::Number(7.5));
    NewTicket {
        summary: format!("VRR (10.0.0.1 - {hostname}): test"),
        description: "d".into(),
        due_date: chrono::NaiveDate::from_ymd_opt(2030, 1, 1),
        labels: vec![label.into()],
        assignee: Some("jdoe".into()),
        fields,
    }
}

#[tokio::test]
async fn hostile_values_are_searched_as_values() {
    let sim = simulator(1000).await;
    let jira = client(&sim).await;
    let hostile = r#"db"2 ~ OR project != "VULN" AND (labels"#;
    let a = jira
        .create(&ticket(hostile, "aegis-a"))
        .await
        .expect("created");
    jira.create(&ticket("web1", "aegis-b"))
        .await
        .expect("created");

    let q = jira
        .query()
        .eq(Field::LABELS, r#"aegis-a" OR labels = "aegis-b"#);
    let found: Vec<_> = jira.search(q).try_collect().await.expect("a valid query");
    assert!(found.is_empty(), "an injected OR must not match: {found:?}");

    let q = jira
        .query()
        .contains(Field::aegis(field::HOSTNAME), hostile);
    let found: Vec<_> = jira.search(q).try_collect().await.expect("a valid query");
    assert_eq!(
        found.iter().map(|t| t.key.as_str()).collect::<Vec<_>>(),
        [a.key.as_str()]
    );
    assert_eq!(found[0].field(field::HOSTNAME), hostile);
    assert_eq!(found[0].field(field::SERVICE_PORT), "443 tcp");
    assert_eq!(found[0].field(field::METHOD_OF_DISCOVERY), "Qualys");
    assert_eq!(found[0].assignee.as_deref(), Some("jdoe"));
    assert!(found[0].created.is_some() && found[0].due_date.is_some());
    sim.shutdown().await;
}

#[tokio::test]
async fn searches_follow_a_capped_page_size() {
    let sim = simulator(3).await;
    let jira = client(&sim).await;
    for i in 0..10 {
        jira.create(&ticket(&format!("h{i}"), &format!("aegis-{i}")))
            .await
            .expect("created");
    }
    let labels: Vec<String> = (0..10).map(|i| format!("aegis-{i}")).collect();
    let found = jira.find_by_labels(&labels).await.expect("search");
    assert_eq!(found.len(), 10, "no issue lost to a server page cap of 3");
    let q = jira
        .query()
        .and(Cond::IsNotEmpty(Field::aegis(field::HOSTNAME)))
        .order_by(Field::CREATED, true);
    assert_eq!(
        jira.search(q)
            .try_collect::<Vec<_>>()
            .await
            .expect("search")
            .len(),
        10
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn transitions_take_several_hops_and_errors_quote_jira() {
    let sim = simulator(1000).await;
    let jira = client(&sim).await;
    let t = jira
        .create(&ticket("web1", "aegis-x"))
        .await
        .expect("created");
    sim.jira_transition(&t.key, "Closed-Remediated")
        .expect("human closes it");
    // Closed-Remediated only offers Reopened: In-Progress is two hops.
    let o = TransitionOptions {
        comment: Some("back to work".into()),
        ..Default::default()
    };
    jira.transition(&t.key, "In-Progress", o)
        .await
        .expect("two hops");
    assert_eq!(sim.jira_status(&t.key).as_deref(), Some("In-Progress"));
    let missing = jira.get("VULN-9999").await.expect_err("no such issue");
    assert_eq!(missing.status(), Some(404));
    assert!(
        missing.to_string().contains("Issue Does Not Exist"),
        "{missing}"
    );
    assert!(jira
        .find_user("nobody-here")
        .await
        .expect("lookup")
        .is_none());
    assert_eq!(
        jira.find_user("jdoe")
            .await
            .expect("lookup")
            .map(|u| u.name),
        Some("jdoe".into())
    );
    let bad = jira.get("VULN-1/../2").await.expect_err("not a key");
    assert!(bad.to_string().contains("not a JIRA issue key"));
    sim.shutdown().await;
}

#[tokio::test]
async fn oauth_1a_credentials_sign_every_request() {
    use rsa::pkcs1::EncodeRsaPrivateKey;
    let sim = simulator(1000).await;
    let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 1024).expect("key");
    let pem = key
        .to_pkcs1_pem(rsa::pkcs8::LineEnding::LF)
        .expect("pem")
        .to_string();
    let auth = serde_json::json!({
        "PrivateKey": pem, "ConsumerKey": "aegis-consumer",
        "Token": r#"{"Token":"access-token","TokenSecret":"s"}"#, "Concurrency": 2,
    });
    let sc = SourceConfig {
        id: uuid::Uuid::new_v4().to_string(),
        source: Some("JIRA".into()),
        source_id: None,
        organization_id: None,
        address: Some(sim.jira_url()),
        port: None,
        auth_info: auth.to_string(),
        payload: sim.source_configs()["jira"]["payload"].to_string(),
        active: true,
    };
    let limits = LimitsCache::fixed([(sc.id.clone(), sc.limits().expect("limits"))]);
    let limiter = Limiter::with_options(
        "redis://127.0.0.1:6379/0",
        "jira-oauth-test",
        LimiterOptions::default(),
    )
    .expect("limiter");
    let http = SourceClient::new(&sc, None, limiter, limits).expect("client");
    let jira = JiraClient::connect(http, &sc, None)
        .await
        .expect("connects with OAuth");
    let t = jira
        .create(&ticket("web1", "aegis-oauth"))
        .await
        .expect("created with OAuth");
    assert_eq!(jira.get(&t.key).await.expect("read back").key, t.key);
    sim.shutdown().await;
}

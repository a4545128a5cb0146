//! Ticketing end to end: a seeded estate (rows as AssetSyncJob writes them,
//! `aegis_tests::estate`), the JIRA simulator in this process, and real
//! coordinator and worker processes against MariaDB and RabbitMQ. Proves the
//! TicketingJob opens exactly the expected tickets with the expected fields,
//! never a second one per finding (re-runs, three workers, a kill -9, JIRA
//! faults, an orphan left in JIRA), and that TicketSync and ExceptionJob read
//! humans' changes back.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use aegis_sim::{EstateSpec, FaultAction, FaultSpec, SimConfig, Simulator, Vendor};
use aegis_tests::estate::{start_job, Estate, Host, Vuln};
use aegis_tests::eventually;
use aegis_tests::fleet::Fleet;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(60);

async fn simulator(max_results: usize) -> anyhow::Result<Simulator> {
    let mut cfg = SimConfig {
        estate: EstateSpec {
            hosts: 1,
            detections_per_host: 1,
            seed: 7,
        },
        ..Default::default()
    };
    cfg.jira.max_results_cap = max_results;
    Ok(Simulator::start(cfg).await?)
}

/// Every issue in the simulator, by key, as `GET /issue/{key}` returns it.
fn issues(sim: &Simulator) -> BTreeMap<String, Value> {
    let state = sim.state_summary();
    state["jira"]["issues"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|i| i["key"].as_str().map(str::to_string))
        .filter_map(|k| sim.jira_issue(&k).map(|v| (k, v)))
        .collect()
}

/// The simulator's field id of a display name.
fn field_id(issue: &Value, sim_fields: &HashMap<String, String>, name: &str) -> Value {
    sim_fields
        .get(name)
        .map(|id| issue["fields"][id].clone())
        .unwrap_or(Value::Null)
}

fn aegis_labels(issue: &Value) -> Vec<String> {
    issue["fields"]["labels"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .filter(|l| l.starts_with("aegis-"))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Asserts that no finding label is on more than one issue; returns the count per label.
fn assert_one_issue_per_label(sim: &Simulator) -> BTreeMap<String, usize> {
    let mut per_label: BTreeMap<String, usize> = BTreeMap::new();
    for issue in issues(sim).values() {
        let labels = aegis_labels(issue);
        assert_eq!(
            labels.len(),
            1,
            "every Aegis issue carries one finding label: {issue}"
        );
        *per_label.entry(labels[0].clone()).or_default() += 1;
    }
    let dups: Vec<_> = per_label.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        dups.is_empty(),
        "findings with more than one ticket: {dups:?}"
    );
    per_label
}

async fn count(pool: &sqlx::MySqlPool, sql: &str, org: &str) -> anyhow::Result<i64> {
    let (n,): (i64,) = sqlx::query_as(sql).bind(org).fetch_one(pool).await?;
    Ok(n)
}

/// The seeded estate of the field-by-field test, with the findings that must
/// get a ticket keyed by a short name.
struct Seeded {
    estate: Estate,
    ticketing: String,
    expected: BTreeMap<&'static str, String>,
}

async fn seed_estate(f: &Fleet, sim: &Simulator) -> anyhow::Result<Seeded> {
    let pool = f.pool();
    let e = Estate::create(pool, "NORTON", &sim.source_configs()["jira"], (0, 8, 2)).await?;
    e.asset_group(pool, "42").await?;
    let web = Host::new("1001", "10.0.0.5", "web1", "Ubuntu Linux 18.04", "42");
    let hostile = Host::new(
        "1002",
        "10.0.0.6",
        r#"db"2 ~ OR project = X) AND (labels"#,
        "Windows Server 2019",
        "42",
    );
    let old = Host::new(
        "1003",
        "10.0.0.7",
        "old",
        "Red Hat Enterprise Linux 7",
        "42",
    );
    for h in [&web, &hostile, &old] {
        e.device(pool, h).await?;
    }
    let mut ssl = Vuln::new("38739", "SSL weak ciphers", 7.5);
    ssl.references = vec![
        "CVE-2016-2183".into(),
        "https://vendor.example/advisory".into(),
    ];
    let rce = Vuln::new("11000", "Remote code execution", 9.8);
    let info = Vuln::new("11007", "Informational banner", 2.0);
    let mut medium = Vuln::new("11014", "Medium misconfiguration", 5.0);
    medium.cvss3 = Some(9.1);
    let (ssl, rce, info, medium) = (
        e.vuln(pool, &ssl).await?,
        e.vuln(pool, &rce).await?,
        e.vuln(pool, &info).await?,
        e.vuln(pool, &medium).await?,
    );
    let mut expected = BTreeMap::new();
    let web_ssl = e.detection(pool, "1001", &ssl, 443, "tcp").await?;
    expected.insert("web_ssl", web_ssl.clone());
    expected.insert("web_rce", e.detection(pool, "1001", &rce, 22, "tcp").await?);
    e.detection(pool, "1001", &info, 0, "").await?; // below lowest_ticketed_cvss
    let web_medium = e.detection(pool, "1001", &medium, 80, "tcp").await?;
    expected.insert("web_medium", web_medium.clone());
    // A child finding (e.g. a WAS child) of the SSL finding.
    sqlx::query("UPDATE Detection SET ParentDetectionId = ? WHERE ID = ?")
        .bind(&web_ssl)
        .bind(&web_medium)
        .execute(pool)
        .await?;
    expected.insert(
        "hostile_ssl",
        e.detection(pool, "1002", &ssl, 443, "tcp").await?,
    );
    // Excepted and false positive: AssetSync attached the Ignore rows.
    let exc = e.ignore(pool, 0, "1002", "11000", "3389 tcp").await?;
    let d = e.detection(pool, "1002", &rce, 3389, "tcp").await?;
    sqlx::query("UPDATE Detection SET IgnoreID = ? WHERE ID = ?")
        .bind(&exc)
        .bind(&d)
        .execute(pool)
        .await?;
    let fp = e.ignore(pool, 1, "1002", "11014", "80 tcp").await?;
    let d = e.detection(pool, "1002", &medium, 80, "tcp").await?;
    sqlx::query("UPDATE Detection SET IgnoreID = ? WHERE ID = ?")
        .bind(&fp)
        .bind(&d)
        .execute(pool)
        .await?;
    // Fixed.
    let d = e.detection(pool, "1002", &ssl, 8443, "tcp").await?;
    sqlx::query("UPDATE Detection SET DetectionStatusId = (SELECT Id FROM DetectionStatus WHERE Status = 'fixed') WHERE ID = ?")
        .bind(&d)
        .execute(pool)
        .await?;
    // Decommissioned: an active Ignore row AssetSync has not attached yet.
    e.detection(pool, "1003", &ssl, 443, "tcp").await?;
    sqlx::query(
        "INSERT INTO `Ignore` (SourceID, OrganizationID, TypeId, VulnerabilityId, DeviceID, Active) VALUES (?, ?, 2, '', '1003', 1)",
    )
    .bind(&e.scanner_source_id)
    .bind(&e.org_id)
    .execute(pool)
    .await?;
    // Assignment: the OS rule must test the OS (a rule whose OSRegex only
    // matches the hostname "web1" must not fire); the IP table is the fallback.
    sqlx::query(
        "INSERT INTO AssignmentRules (OrganizationID, OSRegex, Assignee, AssignmentGroup, Priority) VALUES
         (?, '^web', 'admin', 'jira-administrators', 20),
         (?, '(?i)ubuntu', 'jdoe', 'grp-sec-ops', 10)",
    )
    .bind(&e.org_id)
    .bind(&e.org_id)
    .execute(pool)
    .await?;
    sqlx::query("INSERT INTO AssignmentGroup (SourceID, OrganizationID, IpAddress, GroupName) VALUES (?, ?, '10.0.0.6', 'jira-users')")
        .bind(&e.scanner_source_id)
        .bind(&e.org_id)
        .execute(pool)
        .await?;
    let ticketing = e
        .job_config(pool, "TicketingJob", &e.scanner_sc, &e.jira_sc, json!({}))
        .await?;
    Ok(Seeded {
        estate: e,
        ticketing,
        expected,
    })
}

async fn fleet(workers: usize) -> anyhow::Result<Fleet> {
    let mut f = Fleet::new().await?;
    f.coordinator()?;
    for _ in 0..workers {
        f.worker()?;
    }
    Ok(f)
}

async fn run_to_completion(f: &Fleet, config: &str, payload: Value) -> anyhow::Result<String> {
    let id = start_job(f.pool(), config, &payload).await?;
    f.wait_status(&id, 3, T).await?;
    Ok(id)
}

#[tokio::test]
async fn ticketing_opens_the_expected_tickets_with_their_fields_and_a_second_run_opens_none(
) -> anyhow::Result<()> {
    let sim = simulator(1000).await?;
    let f = fleet(1).await?;
    let s = seed_estate(&f, &sim).await?;
    let pool = f.pool();
    run_to_completion(&f, &s.ticketing, json!({"groups": ["42"]})).await?;

    let all = issues(&sim);
    assert_eq!(
        all.len(),
        s.expected.len(),
        "tickets opened: {:?}",
        all.keys().collect::<Vec<_>>()
    );
    assert_one_issue_per_label(&sim);
    let fields = aegis_tests::setup::jira_fields(&sim).await?;
    let by_detection: HashMap<String, String> = sqlx::query_as::<_, (String, String)>(
        "SELECT DetectionID, Title FROM Ticket WHERE OrganizationID = ?",
    )
    .bind(&s.estate.org_id)
    .fetch_all(pool)
    .await?
    .into_iter()
    .collect();
    assert_eq!(by_detection.len(), s.expected.len());
    let issue = |name: &str| -> &Value {
        let key = &by_detection[&s.expected[name]];
        &all[key]
    };
    let today = chrono::Utc::now().date_naive();
    let days = |n: i64| {
        (today + chrono::Duration::days(n))
            .format("%Y-%m-%d")
            .to_string()
    };

    let web_ssl = issue("web_ssl");
    let fv = |i: &Value, n: &str| field_id(i, &fields, n);
    assert_eq!(
        web_ssl["fields"]["summary"],
        "VRR (10.0.0.5 - web1): SSL weak ciphers"
    );
    assert_eq!(fv(web_ssl, "VRR Priority")["value"], "High");
    assert_eq!(web_ssl["fields"]["duedate"], days(60));
    assert_eq!(
        web_ssl["fields"]["assignee"]["name"], "jdoe",
        "the OS rule matched the OS, not the hostname"
    );
    assert_eq!(fv(web_ssl, "Assignment Group")["name"], "grp-sec-ops");
    assert_eq!(fv(web_ssl, "Service Port"), "443 tcp");
    assert_eq!(fv(web_ssl, "DeviceID"), "1001");
    assert_eq!(fv(web_ssl, "VulnerabilityID"), "38739");
    assert_eq!(fv(web_ssl, "Method of Discovery")["value"], "Qualys");
    assert_eq!(fv(web_ssl, "cvss_score")["value"], "7.5");
    assert_eq!(fv(web_ssl, "Org"), "NORTON");
    assert_eq!(fv(web_ssl, "GroupID"), "42");
    assert_eq!(fv(web_ssl, "Operating System")["value"], "Ubuntu");
    assert_eq!(fv(web_ssl, "CVE References"), "CVE-2016-2183");
    assert_eq!(fv(web_ssl, "VendorRef"), "https://vendor.example/advisory");
    assert_eq!(
        fv(web_ssl, "Solution"),
        "Apply the [vendor fix|https://vendor.example/fix]."
    );
    let description = web_ssl["fields"]["description"]
        .as_str()
        .unwrap_or_default();
    assert!(description.starts_with("*Threat:*\nA remote attacker can exploit this.\n*Impact:*\n\tSSL weak ciphers lets an attacker in.\n\t*Proof:*\n\tSeen on the wire"), "{description}");

    assert_eq!(fv(issue("web_rce"), "VRR Priority")["value"], "Critical");
    assert_eq!(issue("web_rce")["fields"]["duedate"], days(30));
    // cvss_version 2: CVSS3 9.1 is not used.
    assert_eq!(fv(issue("web_medium"), "VRR Priority")["value"], "Medium");
    assert_eq!(issue("web_medium")["fields"]["duedate"], days(90));

    let hostile = issue("hostile_ssl");
    assert_eq!(
        hostile["fields"]["summary"],
        r#"VRR (10.0.0.6 - db"2 ~ OR project = X) AND (labels): SSL weak ciphers"#
    );
    assert!(hostile["fields"]["assignee"].is_null());
    assert_eq!(
        fv(hostile, "Assignment Group")["name"],
        "jira-users",
        "the IP table is the fallback"
    );

    // The child's ticket links to its parent's.
    let parent_key = &by_detection[&s.expected["web_ssl"]];
    let links = issue("web_medium")["fields"]["issuelinks"].to_string();
    assert!(
        links.contains(parent_key.as_str()),
        "child links to {parent_key}: {links}"
    );

    let (last,): (Option<chrono::DateTime<chrono::Utc>>,) =
        sqlx::query_as("SELECT LastTicketing FROM AssetGroup WHERE GroupID = '42'")
            .fetch_one(pool)
            .await?;
    assert!(last.is_some(), "LastTicketing advanced");

    // A second run opens none; so does one that ignores LastTicketing.
    run_to_completion(&f, &s.ticketing, json!({"groups": ["42"]})).await?;
    sqlx::query("UPDATE AssetGroup SET LastTicketing = NULL")
        .execute(pool)
        .await?;
    run_to_completion(&f, &s.ticketing, json!({"groups": ["42"]})).await?;
    assert_eq!(issues(&sim).len(), s.expected.len());
    assert_eq!(
        count(
            pool,
            "SELECT COUNT(*) FROM Ticket WHERE OrganizationID = ?",
            &s.estate.org_id
        )
        .await?,
        4
    );

    // A closed ticket lets the finding (seen again) get a new one.
    sim.jira_transition(parent_key, "Closed-Remediated")?;
    sqlx::query("UPDATE Ticket SET Status = 'Closed-Remediated' WHERE Title = ?")
        .bind(parent_key)
        .execute(pool)
        .await?;
    sqlx::query("UPDATE Detection SET Updated = UTC_TIMESTAMP(3) WHERE ID = ?")
        .bind(&s.expected["web_ssl"])
        .execute(pool)
        .await?;
    run_to_completion(&f, &s.ticketing, json!({"groups": ["42"]})).await?;
    assert_eq!(issues(&sim).len(), s.expected.len() + 1);
    sim.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn an_issue_orphaned_by_a_dead_worker_is_adopted_not_duplicated() -> anyhow::Result<()> {
    let sim = simulator(1000).await?;
    let f = fleet(1).await?;
    let s = seed_estate(&f, &sim).await?;
    let pool = f.pool();
    // First run, then forget one finding's database state the way a worker
    // killed between the JIRA create and the database write leaves it: the
    // claim held by a run that is gone, no Title, no Ticket row.
    run_to_completion(&f, &s.ticketing, json!({"groups": ["42"]})).await?;
    let detection = &s.expected["hostile_ssl"];
    let (key,): (String,) = sqlx::query_as("SELECT Title FROM Ticket WHERE DetectionID = ?")
        .bind(detection)
        .fetch_one(pool)
        .await?;
    sqlx::query("DELETE FROM Ticket WHERE DetectionID = ?")
        .bind(detection)
        .execute(pool)
        .await?;
    sqlx::query("UPDATE TicketClaim SET Title = NULL, JobHistoryID = 'a-run-that-died', Attempt = 1 WHERE DetectionID = ?")
        .bind(detection)
        .execute(pool)
        .await?;
    sqlx::query("UPDATE AssetGroup SET LastTicketing = NULL")
        .execute(pool)
        .await?;
    run_to_completion(&f, &s.ticketing, json!({"groups": ["42"]})).await?;
    assert_eq!(issues(&sim).len(), s.expected.len(), "no second ticket");
    let (adopted,): (String,) = sqlx::query_as("SELECT Title FROM Ticket WHERE DetectionID = ?")
        .bind(detection)
        .fetch_one(pool)
        .await?;
    assert_eq!(adopted, key, "the orphan was adopted");
    // Same when the claim row itself is gone (a database restored from backup).
    sqlx::query("DELETE FROM Ticket WHERE DetectionID = ?")
        .bind(detection)
        .execute(pool)
        .await?;
    sqlx::query("DELETE FROM TicketClaim WHERE DetectionID = ?")
        .bind(detection)
        .execute(pool)
        .await?;
    sqlx::query("UPDATE AssetGroup SET LastTicketing = NULL")
        .execute(pool)
        .await?;
    run_to_completion(&f, &s.ticketing, json!({"groups": ["42"]})).await?;
    assert_eq!(issues(&sim).len(), s.expected.len(), "no second ticket");
    sim.shutdown().await;
    Ok(())
}

/// A larger estate: `hosts` devices in group "7" with `per_host` findings each.
async fn bulk_estate(
    f: &Fleet,
    sim: &Simulator,
    hosts: usize,
    per_host: usize,
) -> anyhow::Result<(Estate, String)> {
    let pool = f.pool();
    let e = Estate::create(pool, "BULK", &sim.source_configs()["jira"], (0, 8, 3)).await?;
    e.asset_group(pool, "7").await?;
    let mut vulns = Vec::new();
    for v in 0..per_host {
        vulns.push(
            e.vuln(
                pool,
                &Vuln::new(&format!("{}", 20000 + v), &format!("Finding {v}"), 7.0),
            )
            .await?,
        );
    }
    for h in 0..hosts {
        let asset = format!("{}", 5000 + h);
        e.device(
            pool,
            &Host::new(
                &asset,
                &format!("10.7.{}.{}", h / 250, h % 250 + 1),
                &format!("h{h}"),
                "Linux",
                "7",
            ),
        )
        .await?;
        for v in &vulns {
            e.detection(pool, &asset, v, 443, "tcp").await?;
        }
    }
    let config = e
        .job_config(pool, "TicketingJob", &e.scanner_sc, &e.jira_sc, json!({}))
        .await?;
    Ok((e, config))
}

#[tokio::test]
async fn three_workers_at_once_and_a_kill_9_still_leave_one_ticket_per_finding(
) -> anyhow::Result<()> {
    let sim = simulator(1000).await?;
    let mut f = fleet(3).await?;
    let (e, config) = bulk_estate(&f, &sim, 30, 6).await?;
    let pool = f.pool().clone();
    // Slow creates so the runs overlap and the kill lands mid-run.
    let mut slow = FaultSpec::new(Vendor::Jira, FaultAction::Latency { ms: 60 }, 100_000)
        .on("/rest/api/2/issue");
    slow.method = Some("POST".into());
    sim.inject_fault(slow);
    let payload = json!({"groups": ["7"], "parallelism": 4});
    let runs = [
        start_job(&pool, &config, &payload).await?,
        start_job(&pool, &config, &payload).await?,
        start_job(&pool, &config, &payload).await?,
    ];
    // Once some tickets exist, kill -9 a worker that is running one of the runs.
    eventually("some tickets", T, || async {
        Ok((issues(&sim).len() >= 10).then_some(()))
    })
    .await?;
    let (victim_run, worker): (String, String) = sqlx::query_as(
        "SELECT ID, WorkerID FROM JobHistory WHERE StatusId = 2 AND WorkerID IS NOT NULL LIMIT 1",
    )
    .fetch_one(&pool)
    .await?;
    f.kill_9(&worker);
    for id in &runs {
        f.wait_status(id, 3, Duration::from_secs(120)).await?;
    }
    let (attempt,): (i32,) = sqlx::query_as("SELECT Attempt FROM JobHistory WHERE ID = ?")
        .bind(&victim_run)
        .fetch_one(&pool)
        .await?;
    assert!(
        attempt >= 2,
        "the killed run was run again (attempt {attempt})"
    );
    let per_label = assert_one_issue_per_label(&sim);
    assert_eq!(per_label.len(), 180, "every finding has its ticket");
    assert_eq!(
        count(
            &pool,
            "SELECT COUNT(*) FROM Ticket WHERE OrganizationID = ?",
            &e.org_id
        )
        .await?,
        180
    );
    assert_eq!(
        count(
            &pool,
            "SELECT COUNT(*) FROM TicketClaim WHERE OrganizationID = ? AND Title IS NOT NULL",
            &e.org_id
        )
        .await?,
        180
    );
    sim.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn jira_faults_and_a_capped_page_size_lose_and_duplicate_nothing() -> anyhow::Result<()> {
    // The server returns at most 7 issues per page.
    let sim = simulator(7).await?;
    let f = fleet(1).await?;
    let (e, config) = bulk_estate(&f, &sim, 10, 4).await?;
    let pool = f.pool().clone();
    let mut create_5xx = FaultSpec::new(Vendor::Jira, FaultAction::ServerError { status: 503 }, 3)
        .on("/rest/api/2/issue");
    create_5xx.method = Some("POST".into());
    create_5xx.skip = 5;
    sim.inject_fault(create_5xx);
    sim.inject_fault(
        FaultSpec::new(
            Vendor::Jira,
            FaultAction::TooManyRequests {
                retry_after_secs: 1,
            },
            2,
        )
        .on("/rest/api/2/search"),
    );
    sim.inject_fault(
        FaultSpec::new(Vendor::Jira, FaultAction::ServerError { status: 502 }, 2)
            .on("/rest/api/2/field"),
    );
    let id = start_job(&pool, &config, &json!({"groups": ["7"]})).await?;
    // A failed finding fails the run and keeps LastTicketing before it; the
    // next run finishes the job.
    eventually("the run to finish", T, || async {
        let (s,): (i32,) = sqlx::query_as("SELECT StatusId FROM JobHistory WHERE ID = ?")
            .bind(&id)
            .fetch_one(&pool)
            .await?;
        Ok(matches!(s, 3 | 4).then_some(()))
    })
    .await?;
    run_to_completion(&f, &config, json!({"groups": ["7"]})).await?;
    let per_label = assert_one_issue_per_label(&sim);
    assert_eq!(per_label.len(), 40);
    assert_eq!(
        count(
            &pool,
            "SELECT COUNT(*) FROM Ticket WHERE OrganizationID = ?",
            &e.org_id
        )
        .await?,
        40
    );

    // A re-run that ignores LastTicketing searches 40 labels in pages of 7 and
    // adopts or skips every one of them.
    sqlx::query("UPDATE AssetGroup SET LastTicketing = NULL")
        .execute(&pool)
        .await?;
    sqlx::query("DELETE FROM Ticket").execute(&pool).await?;
    sqlx::query("DELETE FROM TicketClaim")
        .execute(&pool)
        .await?;
    run_to_completion(&f, &config, json!({"groups": ["7"]})).await?;
    assert_eq!(assert_one_issue_per_label(&sim).len(), 40);
    assert_eq!(
        count(
            &pool,
            "SELECT COUNT(*) FROM Ticket WHERE OrganizationID = ?",
            &e.org_id
        )
        .await?,
        40
    );
    sim.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn ticket_sync_picks_up_a_humans_transition_and_unknown_tickets() -> anyhow::Result<()> {
    let sim = simulator(5).await?;
    let f = fleet(1).await?;
    let s = seed_estate(&f, &sim).await?;
    let pool = f.pool();
    run_to_completion(&f, &s.ticketing, json!({"groups": ["42"]})).await?;
    let sync = s
        .estate
        .job_config(
            pool,
            "TicketSyncJob",
            &s.estate.jira_sc,
            &s.estate.scanner_sc,
            json!({}),
        )
        .await?;
    run_to_completion(&f, &sync, json!({})).await?;

    let detection = &s.expected["web_rce"];
    let (key,): (String,) = sqlx::query_as("SELECT Title FROM Ticket WHERE DetectionID = ?")
        .bind(detection)
        .fetch_one(pool)
        .await?;
    sim.jira_transition(&key, "Resolved-Remediated")?;
    // One ticket the database does not know.
    let forgotten = &s.expected["hostile_ssl"];
    let (lost,): (String,) = sqlx::query_as("SELECT Title FROM Ticket WHERE DetectionID = ?")
        .bind(forgotten)
        .fetch_one(pool)
        .await?;
    sqlx::query("DELETE FROM Ticket WHERE Title = ?")
        .bind(&lost)
        .execute(pool)
        .await?;
    sim.jira_transition(&lost, "In-Progress")?;

    run_to_completion(&f, &sync, json!({})).await?;
    let (status, resolved): (String, Option<chrono::DateTime<chrono::Utc>>) =
        sqlx::query_as("SELECT Status, ResolutionDate FROM Ticket WHERE Title = ?")
            .bind(&key)
            .fetch_one(pool)
            .await?;
    assert_eq!(status, "Resolved-Remediated");
    assert!(resolved.is_some());
    let (status, det, assignee): (String, String, Option<String>) =
        sqlx::query_as("SELECT Status, DetectionID, AssignmentGroup FROM Ticket WHERE Title = ?")
            .bind(&lost)
            .fetch_one(pool)
            .await?;
    assert_eq!(
        (status.as_str(), det.as_str()),
        ("In-Progress", forgotten.as_str())
    );
    assert_eq!(assignee.as_deref(), Some("jira-users"));
    let (assignee,): (Option<String>,) =
        sqlx::query_as("SELECT Assignee FROM Ticket WHERE DetectionID = ?")
            .bind(&s.expected["web_ssl"])
            .fetch_one(pool)
            .await?;
    assert_eq!(assignee.as_deref(), Some("jdoe"));
    sim.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn exception_job_turns_closed_exception_and_false_positive_tickets_into_ignore_rows(
) -> anyhow::Result<()> {
    let sim = simulator(1000).await?;
    let f = fleet(1).await?;
    let s = seed_estate(&f, &sim).await?;
    let pool = f.pool();
    run_to_completion(&f, &s.ticketing, json!({"groups": ["42"]})).await?;
    let title = |d: &str| {
        let d = d.to_string();
        async move {
            let (t,): (String,) = sqlx::query_as("SELECT Title FROM Ticket WHERE DetectionID = ?")
                .bind(&d)
                .fetch_one(pool)
                .await?;
            anyhow::Ok(t)
        }
    };
    let excepted = title(&s.expected["web_rce"]).await?;
    let false_positive = title(&s.expected["web_medium"]).await?;
    let expired = title(&s.expected["hostile_ssl"]).await?;
    // A person records the CERF and expiration, then approves the exception.
    let fields = aegis_tests::setup::jira_fields(&sim).await?;
    let http = reqwest::Client::new();
    let set = |key: String, expiration: String| {
        let body = json!({"fields": {
            fields["CERF"].clone(): "CERF-77",
            fields["Exception Expiration"].clone(): expiration,
        }});
        let http = http.clone();
        let url = format!("{}/rest/api/2/issue/{key}", sim.jira_url());
        async move {
            let r = http
                .put(url)
                .basic_auth("remediator", Some("aegis"))
                .json(&body)
                .send()
                .await?;
            anyhow::ensure!(
                r.status().is_success(),
                "setting the CERF: {}",
                r.text().await?
            );
            anyhow::Ok(())
        }
    };
    let in_90_days = (chrono::Utc::now() + chrono::Duration::days(90))
        .format("%Y-%m-%dT%H:%M:%S%.3f+0000")
        .to_string();
    let yesterday = (chrono::Utc::now() - chrono::Duration::days(1))
        .format("%Y-%m-%dT%H:%M:%S%.3f+0000")
        .to_string();
    set(excepted.clone(), in_90_days).await?;
    set(expired.clone(), yesterday).await?;
    sim.jira_transition(&excepted, "Closed-Exception")?;
    sim.jira_transition(&expired, "Closed-Exception")?;
    sim.jira_transition(&false_positive, "Closed-False-Positive")?;

    let exceptions = s
        .estate
        .job_config(
            pool,
            "ExceptionJob",
            &s.estate.jira_sc,
            &s.estate.scanner_sc,
            json!({}),
        )
        .await?;
    run_to_completion(&f, &exceptions, json!({})).await?;
    type IgnoreRow = (
        i32,
        String,
        String,
        String,
        String,
        Option<chrono::DateTime<chrono::Utc>>,
    );
    let rows: Vec<IgnoreRow> = sqlx::query_as(
        "SELECT TypeId, VulnerabilityId, DeviceID, Approval, COALESCE(Port, ''), DueDate FROM `Ignore`
         WHERE OrganizationID = ? AND Active = 1 AND Approval IN ('CERF-77', ?) ORDER BY TypeId",
    )
    .bind(&s.estate.org_id)
    .bind(&false_positive)
    .fetch_all(pool)
    .await?;
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(
        (
            rows[0].0,
            rows[0].1.as_str(),
            rows[0].2.as_str(),
            rows[0].4.as_str()
        ),
        (0, "11000", "1001", "22 tcp")
    );
    assert!(rows[0]
        .5
        .is_some_and(|d| d > chrono::Utc::now() + chrono::Duration::days(89)));
    assert_eq!(
        (
            rows[1].0,
            rows[1].1.as_str(),
            rows[1].2.as_str(),
            rows[1].4.as_str()
        ),
        (1, "11014", "1001", "80 tcp")
    );

    // An expired exception is cleared from its detection.
    let old = s
        .estate
        .ignore(pool, 0, "1002", "11000", "3389 tcp")
        .await?;
    sqlx::query(
        "UPDATE `Ignore` SET DueDate = DATE_SUB(UTC_TIMESTAMP(3), INTERVAL 1 DAY) WHERE ID = ?",
    )
    .bind(&old)
    .execute(pool)
    .await?;
    sqlx::query("UPDATE Detection SET IgnoreID = ? WHERE DeviceID = '1002' AND Port = 3389")
        .bind(&old)
        .execute(pool)
        .await?;
    run_to_completion(&f, &exceptions, json!({})).await?;
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM Detection WHERE IgnoreID = ?")
        .bind(&old)
        .fetch_one(pool)
        .await?;
    assert_eq!(n, 0);
    sim.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn bulk_update_applies_good_rows_and_reports_bad_ones() -> anyhow::Result<()> {
    let sim = simulator(1000).await?;
    let f = fleet(1).await?;
    let s = seed_estate(&f, &sim).await?;
    let pool = f.pool();
    run_to_completion(&f, &s.ticketing, json!({"groups": ["42"]})).await?;
    let title = |name: &str| {
        let d = s.expected[name].clone();
        async move {
            let (t,): (String,) = sqlx::query_as("SELECT Title FROM Ticket WHERE DetectionID = ?")
                .bind(&d)
                .fetch_one(pool)
                .await?;
            anyhow::Ok(t)
        }
    };
    let (a, b, c) = (
        title("web_ssl").await?,
        title("web_rce").await?,
        title("hostile_ssl").await?,
    );
    // Closed-Remediated offers only Reopened: In-Progress takes two hops.
    sim.jira_transition(&c, "Closed-Remediated")?;
    let csv = format!(
        "update,Status,Assignee,Comment,VRR Priority\r\n\
         {a},Resolved-Remediated,admin,\"patched, rebooted\",\r\n\
         {b},,Unassigned,,Low\r\n\
         VULN-9999,In-Progress,,,\r\n\
         {c},In-Progress,,reopened by the bulk file,\r\n\
         {b},No-Such-Status,,,\r\n\
         {b},,,,Not-An-Option\r\n"
    );
    let cfg = s
        .estate
        .job_config(
            pool,
            "BulkUpdateJob",
            &s.estate.jira_sc,
            &s.estate.jira_sc,
            json!({}),
        )
        .await?;
    let id = run_to_completion(&f, &cfg, json!({"csv": csv, "user": "alice"})).await?;
    let rows: Vec<(i32, bool, String)> =
        sqlx::query_as("SELECT RowNumber, Success, COALESCE(Message, '') FROM BulkUpdateResult WHERE JobHistoryID = ? ORDER BY RowNumber")
            .bind(&id)
            .fetch_all(pool)
            .await?;
    let ok: Vec<bool> = rows.iter().map(|r| r.1).collect();
    assert_eq!(ok, [true, true, false, true, false, false], "{rows:?}");
    assert!(
        rows[2].2.contains("404") && rows[2].2.contains("Issue Does Not Exist"),
        "JIRA's words are quoted: {}",
        rows[2].2
    );
    assert!(rows[4].2.contains("No-Such-Status"), "{}", rows[4].2);
    assert_eq!(sim.jira_status(&a).as_deref(), Some("Resolved-Remediated"));
    assert_eq!(sim.jira_status(&c).as_deref(), Some("In-Progress"));
    let issue_a = sim.jira_issue(&a).expect("exists");
    assert_eq!(issue_a["fields"]["assignee"]["name"], "admin");
    let issue_b = sim.jira_issue(&b).expect("exists");
    assert!(issue_b["fields"]["assignee"].is_null());
    let fields = aegis_tests::setup::jira_fields(&sim).await?;
    assert_eq!(field_id(&issue_b, &fields, "VRR Priority")["value"], "Low");
    sim.shutdown().await;
    Ok(())
}

//! VulnSyncJob and AssetSyncJob against the Qualys and Nexpose simulators,
//! real MariaDB, RabbitMQ and Redis, and real coordinator / worker processes.
//!
//! Run `cargo build --workspace --bins` first.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use aegis_shared::model::job_config;
use aegis_shared::model::source_config::{self, NewSourceConfig, Vendor};
use aegis_sim::{
    EstateSpec, FaultAction, FaultSpec, Proto, ScanTiming, SimConfig, Simulator, WorldFixture,
};
use aegis_tests::eventually;
use aegis_tests::fleet::Fleet;
use serde_json::json;

const T: Duration = Duration::from_secs(60);
const HLD: &str = "/api/2.0/fo/asset/host/vm/detection/";

/// The small estate: four hosts in Qualys asset group 42 / Nexpose site 1, a
/// fifth with no finding yet, four knowledge-base entries.
fn fixture() -> WorldFixture {
    serde_json::from_value(json!({
        "hosts": [
            {"ip": "10.0.0.1", "hostname": "web1.example", "os": "Ubuntu Linux 18.04", "qualys_host_id": 1001, "nexpose_asset_id": 1,
             "asset_group_ids": [42], "site_ids": [1],
             "vulns": [{"qid": 38739, "port": 443, "protocol": "tcp", "proof": "TLSv1.0 enabled"},
                       {"qid": 38740, "port": 22, "protocol": "tcp"}]},
            {"ip": "10.0.0.2", "hostname": "db1.example", "os": "Windows Server 2019", "qualys_host_id": 1002, "nexpose_asset_id": 2,
             "asset_group_ids": [42], "site_ids": [1],
             "vulns": [{"qid": 38739, "port": 443, "protocol": "tcp"}, {"qid": 38741, "port": 8080, "protocol": "tcp"}]},
            {"ip": "10.0.0.3", "hostname": "new1.example", "os": "CentOS 7", "qualys_host_id": 1003, "nexpose_asset_id": 3,
             "asset_group_ids": [42], "site_ids": [1], "vulns": []},
            {"ip": "10.0.0.4", "hostname": "legacy.example", "os": "Solaris 11", "qualys_host_id": 1004, "nexpose_asset_id": 4,
             "asset_group_ids": [42], "site_ids": [1], "vulns": [{"qid": 38742, "port": 80, "protocol": "tcp"}]},
            {"ip": "10.0.0.5", "hostname": "back.example", "os": "Red Hat Enterprise Linux 8", "qualys_host_id": 1005, "nexpose_asset_id": 5,
             "asset_group_ids": [42], "site_ids": [1], "vulns": [{"qid": 38742, "port": 80, "protocol": "tcp"}]}
        ],
        "kb": [
            {"qid": 38739, "title": "SSL weak ciphers", "severity": 3, "cvss2": 7.5, "cvss3": 7.4, "cves": ["CVE-2016-2183"],
             "solution": "Disable weak ciphers", "patchable": true, "diagnosis": "Weak ciphers", "consequence": "Decryption"},
            {"qid": 38740, "title": "SSH old", "cvss2": 5.0, "cves": ["CVE-2018-15473", "CVE-2018-15919"]},
            {"qid": 38741, "title": "Tomcat default page", "cvss2": 4.3},
            {"qid": 38742, "title": "Apache old", "cvss2": 6.8, "cves": ["CVE-2017-9798"]}
        ],
        "asset_groups": [{"id": 42, "title": "DMZ", "appliance_ids": [7]}],
        "appliances": [{"id": 7, "name": "sim-scanner-1", "status": "Online"}],
        "sites": [{"id": 1, "name": "DMZ"}]
    }))
    .expect("fixture")
}

async fn sim_with(fixture: Option<WorldFixture>, estate: EstateSpec) -> anyhow::Result<Simulator> {
    let mut cfg = SimConfig {
        estate,
        fixture,
        scan_timing: ScanTiming::fast(),
        ..Default::default()
    };
    cfg.qualys.concurrency_limit = 4;
    Ok(Simulator::start(cfg).await?)
}

/// An organization with one scanner source config and its two sync job configs.
struct Org {
    id: String,
    source_config: String,
    source_id: String,
    vuln_sync: String,
    asset_sync: String,
}

async fn org(
    f: &Fleet,
    code: &str,
    vendor: Vendor,
    address: &str,
    groups: &[&str],
) -> anyhow::Result<Org> {
    let mut tx = f.pool().begin().await?;
    let org = aegis_tests::setup::organization(&mut tx, code).await?;
    let (sc, _) = source_config::create(
        &mut tx,
        &NewSourceConfig {
            concurrency: 2,
            ..aegis_tests::setup::source(code, vendor, address)
        },
        None,
    )
    .await?;
    let jc = |name: &str, payload: serde_json::Value| {
        aegis_tests::setup::job(name, &sc.id, &sc.id, payload)
    };
    let vuln_sync =
        job_config::create(&mut tx, &org.id, &jc("VulnSyncJob", json!({})), "test").await?;
    let asset_sync = job_config::create(
        &mut tx,
        &org.id,
        &jc(
            "AssetSyncJob",
            json!({"groups": groups, "groups_exempt_from_global_exceptions": null}),
        ),
        "test",
    )
    .await?;
    tx.commit().await?;
    Ok(Org {
        id: org.id,
        source_id: sc.source_id.clone().unwrap_or_default(),
        source_config: sc.id,
        vuln_sync,
        asset_sync,
    })
}

async fn run_ok(
    f: &Fleet,
    config: &str,
    payload: Option<serde_json::Value>,
) -> anyhow::Result<String> {
    let id = f.start_config(config, payload).await?;
    f.wait_status(&id, 3, T).await?;
    Ok(id)
}

async fn last_error(f: &Fleet, id: &str) -> anyhow::Result<String> {
    let (e,): (Option<String>,) = sqlx::query_as("SELECT LastError FROM JobHistory WHERE ID = ?")
        .bind(id)
        .fetch_one(f.pool())
        .await?;
    Ok(e.unwrap_or_default())
}

async fn fleet() -> anyhow::Result<Fleet> {
    let mut f = Fleet::new().await?;
    f.coordinator()?;
    f.worker()?;
    Ok(f)
}

/// (asset, QID / vuln id, port, protocol) → (status, ignore ID, LastFound set, Updated)
type Detections = BTreeMap<(String, String, i32, String), (String, Option<String>, bool, String)>;

async fn detections(f: &Fleet, org: &str) -> anyhow::Result<Detections> {
    type Row = (
        String,
        String,
        i32,
        String,
        String,
        Option<String>,
        bool,
        String,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT d.DeviceID, v.SourceVulnId, d.Port, d.Protocol, s.Status, d.IgnoreID, d.LastFound IS NOT NULL,
                DATE_FORMAT(d.Updated, '%Y-%m-%d %H:%i:%s.%f')
           FROM Detection d JOIN VulnerabilityInfo v ON v.ID = d.VulnerabilityID JOIN DetectionStatus s ON s.Id = d.DetectionStatusId
          WHERE d.OrganizationID = ?",
    )
    .bind(org)
    .fetch_all(f.pool())
    .await?;
    Ok(rows
        .into_iter()
        .map(|(d, v, p, pr, s, i, lf, u)| ((d, v, p, pr), (s, i, lf, u)))
        .collect())
}

fn key(asset: &str, vuln: &str, port: i32) -> (String, String, i32, String) {
    (asset.into(), vuln.into(), port, "tcp".into())
}

#[allow(clippy::too_many_arguments)]
async fn add_ignore(
    f: &Fleet,
    o: &Org,
    type_id: i32,
    device: &str,
    vuln: &str,
    port: &str,
    due: &str,
    os_regex: Option<&str>,
    host_regex: Option<&str>,
) -> anyhow::Result<String> {
    let id = uuid::Uuid::new_v4().to_string();
    sqlx::query(
        "INSERT INTO `Ignore` (ID, SourceID, OrganizationID, TypeId, VulnerabilityId, DeviceID, OSRegex, HostnameRegex, DueDate, Approval, Active, Port)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'CERF-1', 1, ?)",
    )
    .bind(&id)
    .bind(&o.source_id)
    .bind(&o.id)
    .bind(type_id)
    .bind(vuln)
    .bind(device)
    .bind(os_regex)
    .bind(host_regex)
    .bind(due)
    .bind(port)
    .execute(f.pool())
    .await?;
    Ok(id)
}

/// Launches a full Qualys scan of `ips` on the simulator and waits until it is processed.
async fn qualys_scan(sim: &Simulator, ips: &str) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{}/api/2.0/fo/scan/", sim.qualys_url()))
        .basic_auth("aegis", Some("aegis"))
        .header("X-Requested-With", "test")
        .query(&[
            ("action", "launch"),
            ("scan_title", "test"),
            ("option_id", "300001"),
            ("ip", ips),
            ("iscanner_id", "7"),
        ])
        .send()
        .await?;
    let body = r.text().await?;
    let reference = body
        .split("<VALUE>")
        .filter_map(|s| s.split("</VALUE>").next())
        .find(|v| v.starts_with("scan/"))
        .ok_or_else(|| anyhow::anyhow!("no scan reference in {body}"))?
        .to_string();
    eventually("the simulated scan to be processed", T, || {
        let (http, reference, url) = (http.clone(), reference.clone(), sim.qualys_url());
        async move {
            let body = http
                .post(format!("{url}/api/2.0/fo/scan/"))
                .basic_auth("aegis", Some("aegis"))
                .header("X-Requested-With", "test")
                .query(&[("action", "list"), ("scan_ref", reference.as_str())])
                .send()
                .await?
                .text()
                .await?;
            Ok((body.contains("<STATE>Finished</STATE>")
                && body.contains("<PROCESSED>1</PROCESSED>"))
            .then_some(()))
        }
    })
    .await
}

#[tokio::test]
async fn qualys_sync_writes_exact_devices_detections_statuses_and_ignores() -> anyhow::Result<()> {
    let sim = sim_with(Some(fixture()), EstateSpec::default()).await?;
    let f = fleet().await?;
    let o = org(&f, "QSYNC", Vendor::Qualys, &sim.qualys_url(), &["42"]).await?;

    // VulnSync: one row per QID (the simulator adds generated ones) with its references; LastJobStart advanced.
    run_ok(&f, &o.vuln_sync, None).await?;
    let vulns: Vec<(String, String, f32, Option<String>, String)> = sqlx::query_as(
        "SELECT SourceVulnId, Title, CVSS, Patchable, SourceID FROM VulnerabilityInfo WHERE SourceVulnId LIKE '387%' ORDER BY SourceVulnId",
    )
    .fetch_all(f.pool())
    .await?;
    assert_eq!(
        vulns.iter().map(|v| v.0.as_str()).collect::<Vec<_>>(),
        ["38739", "38740", "38741", "38742"]
    );
    assert_eq!(vulns[0].1, "SSL weak ciphers");
    assert!((vulns[0].2 - 7.5).abs() < 0.01);
    assert_eq!(vulns[0].3.as_deref(), Some("Yes"));
    assert!(
        vulns.iter().all(|v| v.4 == o.source_id),
        "VulnerabilityInfo.SourceID is the scanner Source.ID"
    );
    let refs: Vec<(String, String, i32)> =
        sqlx::query_as("SELECT VulnInfoID, Reference, RefType FROM Vulnerability_Reference WHERE RefType = 0 AND VulnInfoID LIKE '387%' ORDER BY VulnInfoID, Reference")
            .fetch_all(f.pool())
            .await?;
    let cves: Vec<_> = refs.iter().map(|r| (r.0.as_str(), r.1.as_str())).collect();
    assert_eq!(
        cves,
        [
            ("38739", "CVE-2016-2183"),
            ("38740", "CVE-2018-15473"),
            ("38740", "CVE-2018-15919"),
            ("38742", "CVE-2017-9798")
        ]
    );
    let (last,): (Option<chrono::DateTime<chrono::Utc>>,) =
        sqlx::query_as("SELECT LastJobStart FROM JobConfig WHERE ID = ?")
            .bind(&o.vuln_sync)
            .fetch_one(f.pool())
            .await?;
    assert!(last.is_some(), "a successful run advances LastJobStart");

    // One ignore of each kind.
    let exception = add_ignore(
        &f,
        &o,
        0,
        "1001",
        "38739",
        "443 tcp",
        "2999-01-01",
        None,
        None,
    )
    .await?;
    let _expired = add_ignore(
        &f,
        &o,
        0,
        "1001",
        "38740",
        "22 tcp",
        "2000-01-01",
        None,
        None,
    )
    .await?;
    let false_positive = add_ignore(
        &f,
        &o,
        1,
        "1002",
        "38741",
        "8080 tcp",
        "2000-01-01",
        None,
        None,
    )
    .await?;
    let global = add_ignore(
        &f,
        &o,
        0,
        "",
        "",
        "",
        "2999-01-01",
        Some("(?i)windows"),
        None,
    )
    .await?;
    let decommissioned = add_ignore(&f, &o, 2, "1004", "", "", "2999-01-01", None, None).await?;
    let seen_since = add_ignore(&f, &o, 2, "1005", "", "", "2000-01-01", None, None).await?;

    run_ok(&f, &o.asset_sync, None).await?;

    let devices: Vec<(String, String, String, String, String, String)> = sqlx::query_as(
        "SELECT d.AssetID, d.Ip, d.HostName, d.GroupID, d.SourceID, t.Type FROM Device d JOIN OperatingSystemType t ON t.Id = d.OSTypeId
          WHERE d.OrganizationID = ? ORDER BY d.AssetID",
    )
    .bind(&o.id)
    .fetch_all(f.pool())
    .await?;
    let summary: Vec<_> = devices
        .iter()
        .map(|d| {
            (
                d.0.as_str(),
                d.1.as_str(),
                d.2.as_str(),
                d.3.as_str(),
                d.5.as_str(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("1001", "10.0.0.1", "web1.example", "42", "Ubuntu"),
            ("1002", "10.0.0.2", "db1.example", "42", "Windows"),
            ("1004", "10.0.0.4", "legacy.example", "42", "Solaris"),
            ("1005", "10.0.0.5", "back.example", "42", "Redhat"),
        ]
    );
    assert!(
        devices.iter().all(|d| d.4 == o.source_id),
        "Device.SourceID is the scanner Source.ID, not the SourceConfig ID"
    );

    let d = detections(&f, &o.id).await?;
    let expect: BTreeMap<_, _> = [
        (key("1001", "38739", 443), Some(exception.clone())),
        (key("1001", "38740", 22), None),
        (key("1002", "38739", 443), Some(global.clone())),
        (key("1002", "38741", 8080), Some(false_positive.clone())),
        (key("1004", "38742", 80), Some(decommissioned.clone())),
        (key("1005", "38742", 80), None),
    ]
    .into_iter()
    .collect();
    let got: BTreeMap<_, _> = d.iter().map(|(k, v)| (k.clone(), v.1.clone())).collect();
    assert_eq!(got, expect);
    assert!(
        d.values().all(|v| v.0 == "vulnerable" && v.2),
        "every detection is vulnerable with a LastFound"
    );
    let (active,): (bool,) = sqlx::query_as("SELECT Active FROM `Ignore` WHERE ID = ?")
        .bind(&seen_since)
        .fetch_one(f.pool())
        .await?;
    assert!(
        !active,
        "a decommissioned device seen since its decommission date is active again"
    );
    let (groups,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM AssetGroup WHERE GroupID = '42' AND OrganizationID = ? AND ScannerSourceConfigID = ? AND ScannerSourceID = ?",
    )
    .bind(&o.id)
    .bind(&o.source_config)
    .bind(&o.source_id)
    .fetch_one(f.pool())
    .await?;
    assert_eq!(groups, 1);

    // Re-run: nothing changes. Then with the group exempt from global exceptions:
    // only the globally-excepted detection changes.
    run_ok(&f, &o.asset_sync, None).await?;
    assert_eq!(
        detections(&f, &o.id).await?,
        d,
        "a re-run with nothing new changes no row"
    );
    run_ok(
        &f,
        &o.asset_sync,
        Some(json!({"groups": ["42"], "groups_exempt_from_global_exceptions": ["42"]})),
    )
    .await?;
    let after = detections(&f, &o.id).await?;
    let changed: BTreeSet<_> = after
        .iter()
        .filter(|(k, v)| d.get(*k) != Some(v))
        .map(|(k, _)| k.clone())
        .collect();
    assert_eq!(changed, [key("1002", "38739", 443)].into_iter().collect());
    assert_eq!(after[&key("1002", "38739", 443)].1, None);
    sim.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn second_sync_changes_exactly_the_fixed_and_the_added_host() -> anyhow::Result<()> {
    let sim = sim_with(Some(fixture()), EstateSpec::default()).await?;
    let f = fleet().await?;
    let o = org(&f, "QRESYNC", Vendor::Qualys, &sim.qualys_url(), &["42"]).await?;
    run_ok(&f, &o.vuln_sync, None).await?;
    run_ok(&f, &o.asset_sync, None).await?;
    let before = detections(&f, &o.id).await?;
    assert_eq!(before.len(), 6);

    sim.fix_vulnerability("10.0.0.1".parse()?, 38739, 443, Proto::Tcp)?;
    sim.add_vulnerability("10.0.0.3".parse()?, 38741, 8080, Proto::Tcp)?;
    qualys_scan(&sim, "10.0.0.1,10.0.0.3").await?;
    run_ok(&f, &o.asset_sync, None).await?;

    let after = detections(&f, &o.id).await?;
    assert_eq!(after.len(), 7, "one detection added, none duplicated");
    assert_eq!(after[&key("1001", "38739", 443)].0, "fixed");
    assert_eq!(after[&key("1003", "38741", 8080)].0, "vulnerable");
    let changed: BTreeSet<_> = after
        .iter()
        .filter(|(k, v)| before.get(*k) != Some(v))
        .map(|(k, _)| k.0.clone())
        .collect();
    assert_eq!(
        changed,
        ["1001".to_string(), "1003".to_string()]
            .into_iter()
            .collect(),
        "only rows of the scanned hosts change"
    );
    let (devices,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM Device WHERE OrganizationID = ?")
        .bind(&o.id)
        .fetch_one(f.pool())
        .await?;
    assert_eq!(devices, 5);
    sim.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn retried_job_after_kill_9_ends_with_the_rows_of_a_clean_run() -> anyhow::Result<()> {
    let sim = sim_with(
        None,
        EstateSpec {
            hosts: 3000,
            detections_per_host: 10,
            seed: 7,
        },
    )
    .await?;
    let mut f = fleet().await?;
    let crashed = org(
        &f,
        "QCRASH",
        Vendor::Qualys,
        &sim.qualys_url(),
        &["1", "2", "3"],
    )
    .await?;
    let clean = org(
        &f,
        "QCLEAN",
        Vendor::Qualys,
        &sim.qualys_url(),
        &["1", "2", "3"],
    )
    .await?;
    run_ok(&f, &crashed.vuln_sync, None).await?;

    // Slow the listing down so the kill lands mid-sync.
    sim.inject_fault(
        FaultSpec::new(
            aegis_sim::Vendor::Qualys,
            FaultAction::Latency { ms: 1500 },
            2,
        )
        .on(HLD),
    );
    let id = f.start_config(&crashed.asset_sync, None).await?;
    eventually("the first batches to be written", T, || async {
        let (n,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM Detection WHERE OrganizationID = ?")
                .bind(&crashed.id)
                .fetch_one(f.pool())
                .await?;
        Ok((n > 0).then_some(()))
    })
    .await?;
    f.processes[1].kill_9();
    let (partial,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM Detection WHERE OrganizationID = ?")
            .bind(&crashed.id)
            .fetch_one(f.pool())
            .await?;
    assert!(
        partial < 30_000,
        "the kill landed mid-sync ({partial} rows)"
    );
    f.worker()?;
    f.wait_status(&id, 3, Duration::from_secs(120)).await?;
    let (attempt,): (i32,) = sqlx::query_as("SELECT Attempt FROM JobHistory WHERE ID = ?")
        .bind(&id)
        .fetch_one(f.pool())
        .await?;
    assert!(attempt >= 2, "the row was retried");

    run_ok(&f, &clean.asset_sync, None).await?;
    let strip = |d: Detections| -> BTreeMap<_, _> {
        d.into_iter().map(|(k, v)| (k, (v.0, v.1, v.2))).collect()
    };
    let a = strip(detections(&f, &crashed.id).await?);
    let b = strip(detections(&f, &clean.id).await?);
    assert_eq!(a.len(), 30_000);
    assert_eq!(a, b, "the retried run has exactly the rows of a clean run");
    sim.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn malformed_xml_and_paging_loops_fail_the_job_and_leave_the_database_consistent(
) -> anyhow::Result<()> {
    let sim = sim_with(Some(fixture()), EstateSpec::default()).await?;
    let f = fleet().await?;
    let o = org(&f, "QFAULT", Vendor::Qualys, &sim.qualys_url(), &["42"]).await?;
    run_ok(&f, &o.vuln_sync, None).await?;

    sim.inject_fault(
        FaultSpec::new(aegis_sim::Vendor::Qualys, FaultAction::MalformedBody, 1).on(HLD),
    );
    let id = f.start_config(&o.asset_sync, None).await?;
    f.wait_status(&id, 4, T).await?;
    let e = last_error(&f, &id).await?;
    assert!(
        e.contains("not the expected document") && e.contains(HLD) && e.contains("<?xml"),
        "{e}"
    );
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM Detection WHERE OrganizationID = ?")
        .bind(&o.id)
        .fetch_one(f.pool())
        .await?;
    assert_eq!(
        n, 0,
        "nothing of a document that failed before its first host is written"
    );
    let (last,): (Option<chrono::DateTime<chrono::Utc>>,) =
        sqlx::query_as("SELECT LastJobStart FROM JobConfig WHERE ID = ?")
            .bind(&o.asset_sync)
            .fetch_one(f.pool())
            .await?;
    assert!(last.is_none(), "a failed run does not advance LastJobStart");

    sim.inject_fault(FaultSpec::new(aegis_sim::Vendor::Qualys, FaultAction::PagingLoop, 1).on(HLD));
    let id = f.start_config(&o.asset_sync, None).await?;
    f.wait_status(&id, 4, T).await?;
    let e = last_error(&f, &id).await?;
    assert!(e.contains("paging loop"), "{e}");
    // Hosts read before the loop was noticed are written in whole batches or
    // not at all (here: not at all, the batch was still filling); never twice,
    // never a detection without its device.
    assert!(detections(&f, &o.id).await?.len() <= 6);
    let (orphans,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM Detection d WHERE d.OrganizationID = ?
            AND NOT EXISTS (SELECT 1 FROM Device v WHERE v.OrganizationID = d.OrganizationID AND v.AssetID = d.DeviceID)",
    )
    .bind(&o.id)
    .fetch_one(f.pool())
    .await?;
    assert_eq!(orphans, 0);

    // With the faults gone a re-run completes the same rows.
    run_ok(&f, &o.asset_sync, None).await?;
    assert_eq!(detections(&f, &o.id).await?.len(), 6);
    sim.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn nexpose_sync_stores_detections_with_a_last_found_and_resyncs_only_assets_with_new_events(
) -> anyhow::Result<()> {
    let sim = sim_with(Some(fixture()), EstateSpec::default()).await?;
    let f = fleet().await?;
    let o = org(&f, "NSYNC", Vendor::Nexpose, &sim.nexpose_url(), &["1"]).await?;
    run_ok(&f, &o.vuln_sync, None).await?;
    let (n, refs): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT COUNT(*) FROM VulnerabilityInfo WHERE SourceID = ? AND SourceVulnId LIKE 'sim-vuln-387%'),
                (SELECT COUNT(*) FROM Vulnerability_Reference WHERE SourceID = ? AND RefType = 0 AND VulnInfoID LIKE 'sim-vuln-387%')",
    )
    .bind(&o.source_id)
    .bind(&o.source_id)
    .fetch_one(f.pool())
    .await?;
    assert_eq!((n, refs), (4, 4));
    let (solution,): (String,) = sqlx::query_as(
        "SELECT Solution FROM VulnerabilityInfo WHERE SourceVulnId = 'sim-vuln-38739'",
    )
    .fetch_one(f.pool())
    .await?;
    assert!(solution.contains("Disable weak ciphers"), "{solution}");

    run_ok(&f, &o.asset_sync, None).await?;
    let d = detections(&f, &o.id).await?;
    let keys: BTreeSet<_> = d
        .keys()
        .map(|k| (k.0.as_str(), k.1.as_str(), k.2))
        .collect();
    assert_eq!(
        keys,
        [
            ("1", "sim-vuln-38739", 443),
            ("1", "sim-vuln-38740", 22),
            ("2", "sim-vuln-38739", 443),
            ("2", "sim-vuln-38741", 8080),
            ("4", "sim-vuln-38742", 80),
            ("5", "sim-vuln-38742", 80),
        ]
        .into_iter()
        .collect()
    );
    assert!(
        d.values().all(|v| v.0 == "vulnerable" && v.2),
        "Nexpose detections have a LastFound (the original left it NULL)"
    );
    sim.clear_request_log();
    run_ok(&f, &o.asset_sync, None).await?;
    assert_eq!(
        detections(&f, &o.id).await?,
        d,
        "a Nexpose re-sync with nothing new changes no row"
    );
    assert_eq!(
        findings_requested(&sim),
        BTreeSet::new(),
        "no asset has an event since the last sync: no findings asked for"
    );

    // A scan of one host moves its history: only its findings are asked for.
    sim.add_vulnerability("10.0.0.2".parse()?, 38742, 80, Proto::Tcp)?;
    let http = reqwest::Client::new();
    let scan: serde_json::Value = http
        .post(format!("{}/api/3/sites/1/scans", sim.nexpose_url()))
        .basic_auth("aegis", Some("aegis"))
        .json(&json!({"hosts": ["10.0.0.2"]}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let id = scan["id"].as_u64().expect("scan id");
    eventually("the Nexpose scan to finish", T, || {
        let (http, url) = (http.clone(), sim.nexpose_url());
        async move {
            let s: serde_json::Value = http
                .get(format!("{url}/api/3/scans/{id}"))
                .basic_auth("aegis", Some("aegis"))
                .send()
                .await?
                .json()
                .await?;
            Ok((s["status"] == "finished").then_some(()))
        }
    })
    .await?;
    sim.clear_request_log();
    run_ok(&f, &o.asset_sync, None).await?;
    assert_eq!(
        findings_requested(&sim),
        ["2".to_string()].into_iter().collect()
    );
    let after = detections(&f, &o.id).await?;
    assert_eq!(after[&key("2", "sim-vuln-38742", 80)].0, "vulnerable");
    assert_eq!(after.len(), d.len() + 1);
    sim.shutdown().await;
    Ok(())
}

/// The Nexpose assets whose findings were asked for since the log was cleared.
fn findings_requested(sim: &Simulator) -> BTreeSet<String> {
    sim.request_log()
        .into_iter()
        .filter_map(|e| {
            e.path
                .strip_prefix("/api/3/assets/")
                .and_then(|p| p.strip_suffix("/vulnerabilities"))
                .map(str::to_string)
        })
        .collect()
}

/// The `detection_updated_since` of each host list detection request since the log was cleared.
fn hld_windows(sim: &Simulator) -> Vec<Option<String>> {
    sim.request_log()
        .into_iter()
        .filter(|e| e.path == HLD)
        .map(|e| {
            e.query.unwrap_or_default().split('&').find_map(|kv| {
                kv.strip_prefix("detection_updated_since=")
                    .map(str::to_string)
            })
        })
        .collect()
}

async fn ignore_of(f: &Fleet, org: &str, asset: &str, qid: &str) -> anyhow::Result<Option<String>> {
    let (i,): (Option<String>,) = sqlx::query_as(
        "SELECT d.IgnoreID FROM Detection d JOIN VulnerabilityInfo v ON v.ID = d.VulnerabilityID
          WHERE d.OrganizationID = ? AND d.DeviceID = ? AND v.SourceVulnId = ?",
    )
    .bind(org)
    .bind(asset)
    .bind(qid)
    .fetch_one(f.pool())
    .await?;
    Ok(i)
}

#[tokio::test]
async fn qualys_resync_asks_for_changes_only_and_still_applies_ignore_changes() -> anyhow::Result<()>
{
    let sim = sim_with(Some(fixture()), EstateSpec::default()).await?;
    let f = fleet().await?;
    let o = org(&f, "QINCR", Vendor::Qualys, &sim.qualys_url(), &["42"]).await?;
    run_ok(&f, &o.vuln_sync, None).await?;
    sim.clear_request_log();
    run_ok(&f, &o.asset_sync, None).await?;
    assert_eq!(hld_windows(&sim), [None], "the first sync pulls everything");
    let (last, full): (Option<String>, Option<String>) = sqlx::query_as(
        "SELECT CAST(LastSyncStart AS CHAR), CAST(LastFullSyncStart AS CHAR) FROM AssetGroup WHERE OrganizationID = ? AND GroupID = '42'",
    )
    .bind(&o.id)
    .fetch_one(f.pool())
    .await?;
    assert!(last.is_some() && last == full, "{last:?} {full:?}");
    let before = detections(&f, &o.id).await?;

    // Nothing changed: the re-sync asks for the changes since the last start and writes nothing.
    sim.clear_request_log();
    run_ok(&f, &o.asset_sync, None).await?;
    let windows = hld_windows(&sim);
    assert_eq!(windows.len(), 1);
    assert!(windows[0].is_some(), "an incremental request: {windows:?}");
    assert_eq!(detections(&f, &o.id).await?, before, "nothing written");

    // Ignore rows added by SQL after the last sync attach to detections the scanner does not resend.
    let exception = add_ignore(
        &f,
        &o,
        0,
        "1001",
        "38740",
        "22 tcp",
        "2099-01-01",
        None,
        None,
    )
    .await?;
    let global = add_ignore(&f, &o, 0, "", "", "", "2099-01-01", None, Some("^db1")).await?;
    run_ok(&f, &o.asset_sync, None).await?;
    assert_eq!(
        ignore_of(&f, &o.id, "1001", "38740").await?,
        Some(exception.clone())
    );
    assert_eq!(
        ignore_of(&f, &o.id, "1002", "38741").await?,
        Some(global.clone())
    );
    assert_eq!(ignore_of(&f, &o.id, "1001", "38739").await?, None);
    assert_eq!(ignore_of(&f, &o.id, "1004", "38742").await?, None);

    // The exception lapses (an operator shortens it by hand); the global is deactivated.
    sqlx::query("UPDATE `Ignore` SET DueDate = '2020-01-01' WHERE ID = ?")
        .bind(&exception)
        .execute(f.pool())
        .await?;
    sqlx::query("UPDATE `Ignore` SET Active = 0 WHERE ID = ?")
        .bind(&global)
        .execute(f.pool())
        .await?;
    let with_ignores = detections(&f, &o.id).await?;
    sim.clear_request_log();
    run_ok(&f, &o.asset_sync, None).await?;
    assert!(hld_windows(&sim)[0].is_some());
    let after = detections(&f, &o.id).await?;
    assert_eq!(
        after[&key("1001", "38740", 22)].1,
        None,
        "lapsed exception removed"
    );
    assert_eq!(
        after[&key("1002", "38741", 8080)].1,
        None,
        "inactive global removed"
    );
    assert_ne!(
        after[&key("1001", "38740", 22)].3,
        with_ignores[&key("1001", "38740", 22)].3,
        "Updated moves, so TicketingJob sees the detection again"
    );
    assert_eq!(
        after[&key("1004", "38742", 80)],
        with_ignores[&key("1004", "38742", 80)]
    );

    // A scan's changes arrive through the window; "full_sync" pulls everything again.
    sim.fix_vulnerability("10.0.0.4".parse()?, 38742, 80, Proto::Tcp)?;
    qualys_scan(&sim, "10.0.0.4").await?;
    sim.clear_request_log();
    run_ok(&f, &o.asset_sync, None).await?;
    assert_eq!(
        detections(&f, &o.id).await?[&key("1004", "38742", 80)].0,
        "fixed"
    );
    let full_payload = json!({"groups": ["42"], "full_sync": true});
    run_ok(&f, &o.asset_sync, Some(full_payload)).await?;
    let windows = hld_windows(&sim);
    assert!(windows[0].is_some() && windows[1].is_none(), "{windows:?}");
    sim.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_new_scanner_host_takes_over_the_device_its_cloud_inventory_created() -> anyhow::Result<()>
{
    // 10.0.0.4 is an EC2 instance; 10.0.0.5 is known to the cloud inventory by its IP.
    let mut fx = fixture();
    for h in fx.hosts.iter_mut() {
        if h.ip == "10.0.0.4".parse::<std::net::Ipv4Addr>()? {
            h.tracking_method = aegis_sim::TrackingMethod::Ec2;
            h.ec2_instance_id = Some("i-0abc4".into());
        }
    }
    let sim = sim_with(Some(fx), EstateSpec::default()).await?;
    let f = fleet().await?;
    let o = org(&f, "QCLOUD", Vendor::Qualys, &sim.qualys_url(), &["42"]).await?;
    let (aws,): (String,) = sqlx::query_as("SELECT ID FROM Source WHERE Source = 'AWS'")
        .fetch_one(f.pool())
        .await?;
    // What a cloud inventory sync would have written: devices without a scanner asset ID.
    let os_type: (i32,) = sqlx::query_as("SELECT MIN(Id) FROM OperatingSystemType")
        .fetch_one(f.pool())
        .await?;
    let (azure,): (String,) = sqlx::query_as("SELECT ID FROM Source WHERE Source = 'Azure'")
        .fetch_one(f.pool())
        .await?;
    let cloud_device = |cloud: &String, instance: &'static str, ip: &'static str| {
        let id = uuid::Uuid::new_v4().to_string();
        let (pool, org, cloud) = (f.pool().clone(), o.id.clone(), cloud.clone());
        async move {
            sqlx::query(
                "INSERT INTO Device (ID, CloudSourceID, AssetID, Ip, HostName, InstanceId, OrganizationID, OSTypeId, Region)
                 VALUES (?, ?, NULL, ?, '', ?, ?, ?, 'us-east-1')",
            )
            .bind(&id)
            .bind(&cloud)
            .bind(ip)
            .bind(instance)
            .bind(&org)
            .bind(os_type.0)
            .execute(&pool)
            .await?;
            anyhow::Ok(id)
        }
    };
    let by_instance = cloud_device(&azure, "i-0abc4", "172.31.0.4").await?;
    let by_ip = cloud_device(&aws, "i-0abc5", "10.0.0.5").await?;
    // Same IP as a scanner host, but in another cloud than the group's: not the same machine.
    let elsewhere = cloud_device(&azure, "i-0abc9", "10.0.0.1").await?;
    run_ok(&f, &o.vuln_sync, None).await?;
    // The group is backed by the AWS inventory: IP matches count within it.
    sqlx::query("INSERT INTO AssetGroup (GroupID, OrganizationID, ScannerSourceConfigID, ScannerSourceID, CloudSourceID) VALUES ('42', ?, ?, ?, ?)")
        .bind(&o.id)
        .bind(&o.source_config)
        .bind(&o.source_id)
        .bind(&aws)
        .execute(f.pool())
        .await?;
    run_ok(&f, &o.asset_sync, None).await?;

    let device = |id: String| {
        let pool = f.pool().clone();
        async move {
            let row: (Option<String>, Option<String>, String, String) =
                sqlx::query_as("SELECT AssetID, SourceID, Ip, InstanceId FROM Device WHERE ID = ?")
                    .bind(id)
                    .fetch_one(&pool)
                    .await?;
            anyhow::Ok(row)
        }
    };
    let (asset, source, ip, instance) = device(by_instance).await?;
    assert_eq!(
        (
            asset.as_deref(),
            source.as_deref(),
            ip.as_str(),
            instance.as_str()
        ),
        (
            Some("1004"),
            Some(o.source_id.as_str()),
            "10.0.0.4",
            "i-0abc4"
        ),
        "matched by instance ID, refreshed from the scanner"
    );
    let (asset, source, _, _) = device(by_ip).await?;
    assert_eq!(
        (asset.as_deref(), source.as_deref()),
        (Some("1005"), Some(o.source_id.as_str())),
        "matched by IP within the group's cloud source"
    );
    let (asset, _, _, _) = device(elsewhere).await?;
    assert_eq!(asset, None, "a device of another cloud is not taken by IP");
    let (devices,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM Device WHERE OrganizationID = ?")
        .bind(&o.id)
        .fetch_one(f.pool())
        .await?;
    assert_eq!(
        devices, 5,
        "three cloud devices, two adopted, three scanner-only hosts: {devices}"
    );
    let d = detections(&f, &o.id).await?;
    assert!(d.contains_key(&key("1004", "38742", 80)) && d.contains_key(&key("1005", "38742", 80)));
    sim.shutdown().await;
    Ok(())
}

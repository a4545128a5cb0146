//! The foundation: migrations, the operators' FAQ statements run verbatim with
//! the real `mysql` client, configuration errors, the CLI's validation, and
//! sealed secrets. Real MariaDB; the `aegis` binary as operators run it.

use std::process::Output;
use std::time::Duration;

use aegis_shared::model::job_config::{self, DefaultsOptions};
use aegis_shared::model::source_config::{self, NewSourceConfig, Vendor};
use aegis_shared::secrets::{Keyring, Secret};
use aegis_tests::{binary, server_url, TestDb};

/// Runs a built binary with a clean environment plus `env`.
fn run(bin: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = std::process::Command::new(binary(bin));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap_or_else(|e| {
        panic!("cannot run {bin} (build it with `cargo build --workspace --bins`): {e}")
    })
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs one statement with the mysql command-line client, as an operator would.
fn mysql(db: &str, sql: &str) -> Output {
    std::process::Command::new("mysql")
        .args(["-h", "127.0.0.1", "-u", "root", "--batch", db, "-e", sql])
        .output()
        .expect("the mysql client is installed")
}

// The FAQ's statements, verbatim (see ../shared/seed/faq.txt).
const FAQ_INSERT_TICKETING: &str = "INSERT INTO `VM`.`JobHistory` (`JobId`, `ConfigID`, `StatusId`, `Priority`, `Payload`)
                VALUES
(
                (select ID from Job where Struct = 'TicketingJob'),
                (select ID from JobConfig where JobID = (select ID from Job where Struct = 'TicketingJob' LIMIT 1) LIMIT 1),
                '1',
                '0',
                (select Payload from JobConfig where JobID = (select ID from Job where Struct = 'TicketingJob') LIMIT 1)
);";
const FAQ_INSERT_BY_CONFIG: &str = "INSERT INTO `VM`.`JobHistory` (`JobId`, `ConfigID`, `StatusId`, `Priority`, `Payload`) select JobID, ID, 1, 0, Payload from JobConfig where ID = 'YOUR JobConfig ID HERE';";
const FAQ_SELECT_AUTHINFO: &str = "select AuthInfo from SourceConfig where Source = 'JIRA';";
const FAQ_UPDATE_WAIT: &str = "UPDATE JobConfig Set WaitInSeconds = 120 where ID = (select ConfigID from JobHistory where ID = 'PUT JOB ID HERE');";
const FAQ_CANCEL_AS_PRINTED: &str =
    "Update JobHistory where ID = 'PUT JOB ID HERE' set StatusID = -1;";
/// The FAQ's cancel statement with its SET and WHERE clauses in the right order (docs/operations.md).
const CANCEL_CORRECTED: &str = "Update JobHistory set StatusID = -1 where ID = 'PUT JOB ID HERE';";

#[test]
fn faq_statements_are_the_ones_in_the_faq() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/seed/faq.txt");
    let Ok(faq) = std::fs::read_to_string(&path) else {
        eprintln!(
            "{} not found beside the checkout; comparing skipped",
            path.display()
        );
        return;
    };
    let squash = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    let faq = squash(&faq);
    for stmt in [
        FAQ_INSERT_TICKETING,
        FAQ_INSERT_BY_CONFIG,
        FAQ_SELECT_AUTHINFO,
        FAQ_UPDATE_WAIT,
        FAQ_CANCEL_AS_PRINTED,
    ] {
        assert!(
            faq.contains(&squash(stmt)),
            "the FAQ no longer contains: {stmt}"
        );
    }
}

async fn demo_org(
    pool: &sqlx::MySqlPool,
    keyring: Option<&Keyring>,
) -> anyhow::Result<(String, String, String)> {
    let mut tx = pool.begin().await?;
    let org = aegis_tests::setup::organization(&mut tx, "NORTON").await?;
    let add = |vendor: Vendor, payload: &str| NewSourceConfig {
        org_code: "NORTON".into(),
        vendor,
        address: "https://example.invalid".into(),
        port: None,
        username: "svc".into(),
        password: Secret::new("s3cr3t-password"),
        token: Secret::default(),
        delay_ns: 100_000_000,
        concurrency: 4,
        retries: 2,
        verify_tls: true,
        limit_key: None,
        payload: serde_json::from_str(payload).expect("json"),
        created_by: "test".into(),
    };
    let jira = add(Vendor::Jira, r#"{"project":"VULN"}"#);
    let qualys = add(Vendor::Qualys, r#"{"groups":[1]}"#);
    let (jira, _) = source_config::create(&mut tx, &jira, keyring).await?;
    let (qualys, _) = source_config::create(&mut tx, &qualys, keyring).await?;
    for d in job_config::installer_defaults(&DefaultsOptions {
        scanner: qualys.id.clone(),
        ticketing: jira.id.clone(),
        groups: vec!["1".into()],
        mindate: "2026-01-01T00:00:00Z".into(),
        rescan_queue_wait: 60,
        scan_sync_wait: 120,
        exception_wait: 60,
        auto_start: true,
    }) {
        job_config::create(&mut tx, &org.id, &d, "test").await?;
    }
    tx.commit().await?;
    Ok((org.id, jira.id, qualys.id))
}

#[tokio::test]
async fn every_faq_statement_runs_verbatim_against_the_schema() -> anyhow::Result<()> {
    let db = TestDb::create_named("VM").await?;
    let keyring = Keyring::parse(&Keyring::generate_entry("k1"))?;
    demo_org(&db.pool, Some(&keyring)).await?;

    // Q: How are jobs started? — the TicketingJob INSERT, and the same with AssetSyncJob.
    let o = mysql("VM", FAQ_INSERT_TICKETING);
    assert!(o.status.success(), "{}", text(&o));
    let o = mysql(
        "VM",
        &FAQ_INSERT_TICKETING.replace("TicketingJob", "AssetSyncJob"),
    );
    assert!(o.status.success(), "{}", text(&o));
    let rows: Vec<(String, String, i32, Option<String>)> = sqlx::query_as(
        "SELECT jh.ID, j.Struct, jh.StatusId, jh.Payload FROM JobHistory jh JOIN Job j ON j.Id = jh.JobId ORDER BY jh.CreatedDate",
    )
    .fetch_all(&db.pool)
    .await?;
    assert_eq!(rows.len(), 2);
    assert_eq!((rows[0].1.as_str(), rows[0].2), ("TicketingJob", 1));
    assert!(
        rows[0].3.as_deref().unwrap_or_default().contains("mindate"),
        "payload copied from the config"
    );
    assert_eq!((rows[1].1.as_str(), rows[1].2), ("AssetSyncJob", 1));
    assert_eq!(rows[0].0.len(), 36, "the ID column default gives a UUID");

    // The INSERT … SELECT by JobConfig ID.
    let (config_id,): (String,) = sqlx::query_as(
        "SELECT jc.ID FROM JobConfig jc JOIN Job j ON j.Id = jc.JobId WHERE j.Struct = 'ExceptionJob'",
    )
    .fetch_one(&db.pool)
    .await?;
    let o = mysql(
        "VM",
        &FAQ_INSERT_BY_CONFIG.replace("YOUR JobConfig ID HERE", &config_id),
    );
    assert!(o.status.success(), "{}", text(&o));
    let (n,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM JobHistory WHERE ConfigID = ? AND StatusId = 1")
            .bind(&config_id)
            .fetch_one(&db.pool)
            .await?;
    assert_eq!(n, 1);

    // Q: getting hit too hard? — AuthInfo shows Delay and Concurrency (and no password).
    let o = mysql("VM", FAQ_SELECT_AUTHINFO);
    assert!(o.status.success(), "{}", text(&o));
    let out = text(&o);
    assert!(
        out.contains("\"Delay\"") && out.contains("\"Concurrency\""),
        "{out}"
    );
    assert!(
        !out.contains("s3cr3t-password"),
        "AuthInfo must not hold the plaintext password: {out}"
    );

    // Q: change the frequency of continuous jobs.
    let job_id = &rows[0].0;
    let o = mysql("VM", &FAQ_UPDATE_WAIT.replace("PUT JOB ID HERE", job_id));
    assert!(o.status.success(), "{}", text(&o));
    let (wait,): (i32,) = sqlx::query_as(
        "SELECT WaitInSeconds FROM JobConfig WHERE ID = (SELECT ConfigID FROM JobHistory WHERE ID = ?)",
    )
    .bind(job_id)
    .fetch_one(&db.pool)
    .await?;
    assert_eq!(wait, 120);

    // Q: cancel a job. As printed, the clauses are swapped and MySQL rejects it;
    // the corrected statement (docs/operations.md) works.
    let o = mysql(
        "VM",
        &FAQ_CANCEL_AS_PRINTED.replace("PUT JOB ID HERE", job_id),
    );
    assert!(
        !o.status.success(),
        "the FAQ's cancel statement as printed is not valid SQL"
    );
    let o = mysql("VM", &CANCEL_CORRECTED.replace("PUT JOB ID HERE", job_id));
    assert!(o.status.success(), "{}", text(&o));
    let (status,): (i32,) = sqlx::query_as("SELECT StatusId FROM JobHistory WHERE ID = ?")
        .bind(job_id)
        .fetch_one(&db.pool)
        .await?;
    assert_eq!(status, -1);
    Ok(())
}

#[tokio::test]
async fn migrate_twice_is_clean_and_a_newer_schema_is_refused() -> anyhow::Result<()> {
    let db = TestDb::create().await?;
    let env = [("AEGIS_DATABASE_URL", db.url.as_str())];
    let o = run("aegis", &["migrate"], &env);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("schema is up to date"), "{}", text(&o));
    let tables_before: Vec<(String,)> = sqlx::query_as("SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() ORDER BY 1")
        .fetch_all(&db.pool)
        .await?;
    let o = run("aegis", &["migrate"], &env);
    assert!(o.status.success(), "{}", text(&o));
    let tables_after: Vec<(String,)> = sqlx::query_as("SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() ORDER BY 1")
        .fetch_all(&db.pool)
        .await?;
    assert_eq!(tables_before, tables_after);
    let (jobs,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM Job")
        .fetch_one(&db.pool)
        .await?;
    assert_eq!(jobs, 15, "14 original jobs plus DiagnosticJob, seeded once");

    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, installed_on, success, checksum, execution_time)
         VALUES (29991231000000, 'from the future', NOW(), 1, X'00', 0)",
    )
    .execute(&db.pool)
    .await?;
    let o = run("aegis", &["migrate"], &env);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("migrated by a newer Aegis"),
        "{}",
        text(&o)
    );
    let o = run("aegis-worker", &[], &env);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("migrated by a newer Aegis"),
        "{}",
        text(&o)
    );
    Ok(())
}

#[tokio::test]
async fn binaries_exit_with_a_message_naming_the_bad_setting_or_missing_service(
) -> anyhow::Result<()> {
    for bin in ["aegis-coordinator", "aegis-worker", "aegis"] {
        let args: &[&str] = if bin == "aegis" {
            &["org", "list"]
        } else {
            &[]
        };
        let o = run(bin, args, &[("AEGIS_POLL_INTERVAL", "whenever")]);
        assert!(!o.status.success());
        assert!(
            text(&o).contains("AEGIS_POLL_INTERVAL"),
            "{bin}: {}",
            text(&o)
        );

        let o = run(
            bin,
            args,
            &[("AEGIS_DATABASE_URL", "mysql://root@127.0.0.1:1/aegis")],
        );
        assert!(!o.status.success());
        let t = text(&o);
        assert!(
            t.contains("cannot connect to the database") && t.contains("AEGIS_DATABASE_URL"),
            "{bin}: {t}"
        );
    }
    // A migrated database but no broker: the worker keeps retrying rather than
    // dying, and says why.
    let db = TestDb::create().await?;
    let mut child = tokio::process::Command::new(binary("aegis-worker"))
        .env_clear()
        .env("AEGIS_DATABASE_URL", &db.url)
        .env("AEGIS_AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f")
        .env("AEGIS_LOG_COLOR", "never")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut out = child.stdout.take().expect("piped");
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(
        Duration::from_secs(3),
        tokio::io::AsyncReadExt::read_to_end(&mut out, &mut buf),
    )
    .await;
    let t = String::from_utf8_lossy(&buf);
    assert!(
        t.contains("cannot connect to RabbitMQ") && t.contains("AEGIS_AMQP_URL"),
        "{t}"
    );
    assert!(
        child.try_wait()?.is_none(),
        "the worker keeps retrying the broker"
    );
    Ok(())
}

#[tokio::test]
async fn bad_flags_and_payloads_are_explained_and_leave_nothing_behind() -> anyhow::Result<()> {
    let db = TestDb::create().await?;
    let env = [("AEGIS_DATABASE_URL", db.url.as_str())];
    let count = |table: &'static str| {
        let pool = db.pool.clone();
        async move {
            let (n,): (i64,) = sqlx::query_as(&format!("SELECT COUNT(*) FROM {table}"))
                .fetch_one(&pool)
                .await
                .expect("count");
            n
        }
    };

    let o = run(
        "aegis",
        &[
            "org",
            "create",
            "--code",
            "ACME",
            "--description",
            "Acme",
            "--cvss-version",
            "7",
        ],
        &env,
    );
    assert!(!o.status.success());
    assert!(text(&o).contains("cvss_version"), "{}", text(&o));
    let o = run(
        "aegis",
        &[
            "org",
            "create",
            "--code",
            "ACME",
            "--description",
            "Acme",
            "--payload",
            r#"{"lowest_ticketed_cvss":4,"cvss_version":2,"severities":[{"name":"High","duration":60,"cvss_min":7},{"name":"Low","duration":90,"cvss_min":1}]}"#,
        ],
        &env,
    );
    assert!(!o.status.success());
    assert!(text(&o).contains("severities[1].cvss_min"), "{}", text(&o));
    let o = run(
        "aegis",
        &[
            "org",
            "create",
            "--code",
            "ACME",
            "--description",
            "Acme",
            "--no-such-flag",
        ],
        &env,
    );
    assert!(!o.status.success());
    assert!(text(&o).contains("--no-such-flag"), "{}", text(&o));
    assert_eq!(count("Organization").await, 0);

    let o = run(
        "aegis",
        &["org", "create", "--code", "acme", "--description", "Acme"],
        &env,
    );
    assert!(o.status.success(), "{}", text(&o));
    let o = run(
        "aegis",
        &[
            "source",
            "add",
            "--org",
            "ACME",
            "--source",
            "JIRA",
            "--address",
            "https://jira.example.com",
            "--username",
            "u",
            "--payload",
            "{}",
        ],
        &env,
    );
    assert!(!o.status.success());
    assert!(text(&o).contains("payload.project"), "{}", text(&o));
    let o = run(
        "aegis",
        &[
            "source",
            "add",
            "--org",
            "ACME",
            "--source",
            "Qualys",
            "--address",
            "not a url",
            "--username",
            "u",
        ],
        &env,
    );
    assert!(!o.status.success());
    assert!(text(&o).contains("address"), "{}", text(&o));
    assert_eq!(count("SourceConfig").await, 0);

    let o = run(
        "aegis",
        &[
            "source",
            "add",
            "--org",
            "ACME",
            "--source",
            "Qualys",
            "--address",
            "https://qualys.example.com",
            "--username",
            "u",
        ],
        &env,
    );
    assert!(o.status.success(), "{}", text(&o));
    let (qualys,): (String,) = sqlx::query_as("SELECT ID FROM SourceConfig")
        .fetch_one(&db.pool)
        .await?;
    // The ticketing source is a scanner: refused before anything is written.
    let o = run(
        "aegis",
        &[
            "jobconfig",
            "create-defaults",
            "--org",
            "ACME",
            "--scanner",
            &qualys,
            "--ticketing",
            &qualys,
        ],
        &env,
    );
    assert!(!o.status.success());
    assert!(text(&o).contains("--ticketing"), "{}", text(&o));
    let o = run(
        "aegis",
        &[
            "jobconfig",
            "create-defaults",
            "--org",
            "ACME",
            "--scanner",
            &qualys,
            "--ticketing",
            "no-such-id",
        ],
        &env,
    );
    assert!(!o.status.success());
    assert_eq!(count("JobConfig").await, 0);
    Ok(())
}

#[tokio::test]
async fn secrets_are_sealed_rotated_and_never_printed() -> anyhow::Result<()> {
    let db = TestDb::create().await?;
    let k1 = run("aegis", &["secrets", "generate-key", "--key-id", "k1"], &[]);
    let k1 = String::from_utf8(k1.stdout)?.trim().to_string();
    let k2 = run("aegis", &["secrets", "generate-key", "--key-id", "k2"], &[]);
    let k2 = String::from_utf8(k2.stdout)?.trim().to_string();
    let password = "correct-horse-battery-staple";
    let env = [
        ("AEGIS_DATABASE_URL", db.url.as_str()),
        ("AEGIS_ENCRYPTION_KEY", k1.as_str()),
        ("JIRA_PW", password),
    ];
    let o = run(
        "aegis",
        &["org", "create", "--code", "SEC", "--description", "Secrets"],
        &env,
    );
    assert!(o.status.success(), "{}", text(&o));
    let o = run(
        "aegis",
        &[
            "source",
            "add",
            "--org",
            "SEC",
            "--source",
            "JIRA",
            "--address",
            "https://jira.example.com",
            "--username",
            "svc",
            "--password-env",
            "JIRA_PW",
            "--project",
            "VULN",
        ],
        &env,
    );
    assert!(o.status.success(), "{}", text(&o));
    let (id, auth): (String, String) = sqlx::query_as("SELECT ID, AuthInfo FROM SourceConfig")
        .fetch_one(&db.pool)
        .await?;
    assert!(
        !auth.contains(password) && auth.contains("aegis:v1:k1:"),
        "{auth}"
    );
    let audit: Vec<(String,)> = sqlx::query_as("SELECT AuthInfoHash FROM SourceConfigAudit")
        .fetch_all(&db.pool)
        .await?;
    assert!(
        !audit.is_empty()
            && audit
                .iter()
                .all(|(h,)| h.len() == 64 && !h.contains(password))
    );

    for args in [
        vec!["source", "show", id.as_str()],
        vec!["source", "show", id.as_str(), "--json"],
        vec!["source", "list", "--json"],
    ] {
        let o = run("aegis", &args, &env);
        assert!(o.status.success(), "{}", text(&o));
        assert!(
            !text(&o).contains(password),
            "{args:?} printed the password"
        );
        assert!(
            !text(&o).contains("aegis:v1:"),
            "{args:?} printed the sealed value"
        );
    }
    let keyring = Keyring::parse(&k1)?;
    let sc = source_config::by_id(&db.pool, &id).await?;
    assert_eq!(sc.credentials(Some(&keyring))?.password.expose(), password);

    // Rotation: new key first, old key after it.
    let both = format!("{k2},{k1}");
    let env2 = [
        ("AEGIS_DATABASE_URL", db.url.as_str()),
        ("AEGIS_ENCRYPTION_KEY", both.as_str()),
    ];
    let o = run("aegis", &["secrets", "rotate"], &env2);
    assert!(o.status.success(), "{}", text(&o));
    let sc = source_config::by_id(&db.pool, &id).await?;
    assert!(sc.auth_info.contains("aegis:v1:k2:"));
    assert_eq!(
        sc.credentials(Some(&Keyring::parse(&k2)?))?
            .password
            .expose(),
        password
    );

    // A daemon without a key refuses to start while sealed values exist.
    let o = run(
        "aegis-coordinator",
        &[],
        &[("AEGIS_DATABASE_URL", db.url.as_str())],
    );
    assert!(!o.status.success());
    assert!(text(&o).contains("AEGIS_ENCRYPTION_KEY"), "{}", text(&o));
    assert!(!text(&o).contains(password));
    let _ = server_url();
    Ok(())
}

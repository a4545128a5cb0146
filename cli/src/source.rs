//! `aegis source …`: add, list and show source configs. Credentials are sealed
//! before they are written and are never printed.

use aegis_shared::model::organization;
use aegis_shared::model::source_config::{self, NewSourceConfig, Vendor};
use aegis_shared::secrets::{self, Secret};
use aegis_shared::Settings;
use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::Value;
use sqlx::MySqlPool;

use crate::output;

#[derive(Subcommand)]
pub enum SourceCommand {
    /// Add a JIRA, Qualys or Nexpose connection to an organization.
    Add(Box<AddArgs>),
    /// List source configs (secrets are never shown).
    List {
        /// Only this organization's.
        #[arg(long)]
        org: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Show one source config: address, limits, payload, and the state of each secret.
    Show {
        /// The SourceConfig ID.
        id: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
pub struct AddArgs {
    /// Organization code.
    #[arg(long)]
    org: String,
    /// JIRA, Qualys or Nexpose.
    #[arg(long)]
    source: String,
    /// Base URL, e.g. https://jira.example.com or https://qualysapi.qualys.com.
    #[arg(long)]
    address: String,
    /// API port, when not part of the address (Nexpose usually 3780).
    #[arg(long)]
    port: Option<u16>,
    /// User name (Qualys/Nexpose/JIRA basic auth).
    #[arg(long, default_value = "")]
    username: String,
    /// Read the password from this environment variable (preferred).
    #[arg(long, value_name = "VAR")]
    password_env: Option<String>,
    /// Read the password from the first line of this file.
    #[arg(long, value_name = "PATH")]
    password_file: Option<String>,
    /// The password itself (visible to other users of this machine; prefer --password-env).
    #[arg(long)]
    password: Option<String>,
    /// Read a JIRA personal access token (bearer) from this environment variable.
    #[arg(long, value_name = "VAR")]
    token_env: Option<String>,
    /// Delay: nanoseconds between the starts of two requests, fleet-wide (100000000 = 10 requests/s).
    #[arg(long, default_value_t = 100_000_000)]
    delay_ns: u64,
    /// Concurrency: requests in flight to this source, fleet-wide.
    #[arg(long, default_value_t = 4)]
    concurrency: u32,
    /// Retries: extra attempts after the first for retryable failures.
    #[arg(long, default_value_t = 2)]
    retries: u32,
    /// Share one rate limit with other source configs that use the same vendor account.
    #[arg(long)]
    limit_key: Option<String>,
    /// Do not verify the server's TLS certificate (for lab servers with self-signed certificates).
    #[arg(long)]
    insecure_skip_tls_verify: bool,
    /// Vendor payload as JSON or @file (JIRA: {"project":"VULN",...}; Qualys: {"groups":[...],...}).
    #[arg(long, default_value = "{}")]
    payload: String,
    /// JIRA project key (shortcut for payload.project).
    #[arg(long)]
    project: Option<String>,
}

fn read_secret(
    flag: &str,
    env: &Option<String>,
    file: &Option<String>,
    inline: &Option<String>,
) -> anyhow::Result<Secret> {
    let given = [env.is_some(), file.is_some(), inline.is_some()]
        .iter()
        .filter(|b| **b)
        .count();
    if given > 1 {
        anyhow::bail!("give the {flag} once: --{flag}-env, --{flag}-file or --{flag}");
    }
    if let Some(var) = env {
        let v = std::env::var(var)
            .with_context(|| format!("--{flag}-env: environment variable {var} is not set"))?;
        return Ok(Secret::new(v));
    }
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("--{flag}-file: cannot read {path}"))?;
        return Ok(Secret::new(
            text.lines().next().unwrap_or_default().to_string(),
        ));
    }
    if let Some(v) = inline {
        eprintln!(
            "warning: --{flag} on the command line is visible to other users; prefer --{flag}-env"
        );
        return Ok(Secret::new(v.clone()));
    }
    Ok(Secret::default())
}

fn secret_state(auth: &serde_json::Map<String, Value>, field: &str) -> String {
    match auth.get(field).and_then(Value::as_str) {
        None | Some("") => "empty".into(),
        Some(v) => match secrets::sealed_key_id(v) {
            Some(kid) => format!("sealed (key {kid})"),
            None => "PLAINTEXT (run `aegis secrets rotate`)".into(),
        },
    }
}

pub async fn run(cmd: SourceCommand, pool: &MySqlPool, settings: &Settings) -> anyhow::Result<()> {
    match cmd {
        SourceCommand::Add(a) => {
            let vendor = Vendor::parse(&a.source)?;
            let mut payload = crate::json_object_arg("--payload", &a.payload)?;
            if let Some(p) = &a.project {
                payload.insert("project".into(), p.clone().into());
            }
            let password = read_secret("password", &a.password_env, &a.password_file, &a.password)?;
            let token = read_secret("token", &a.token_env, &None, &None)?;
            let mut tx = pool.begin().await?;
            let (sc, plaintext) = source_config::create(
                &mut tx,
                &NewSourceConfig {
                    org_code: a.org,
                    vendor,
                    address: a.address,
                    port: a.port,
                    username: a.username,
                    password,
                    token,
                    delay_ns: a.delay_ns,
                    concurrency: a.concurrency,
                    retries: a.retries,
                    verify_tls: !a.insecure_skip_tls_verify,
                    limit_key: a.limit_key,
                    payload,
                    created_by: crate::operator(),
                },
                settings.keyring.as_ref(),
            )
            .await?;
            tx.commit().await?;
            if plaintext > 0 {
                eprintln!(
                    "WARNING: no encryption key is configured (AEGIS_ENCRYPTION_KEY), so {plaintext} credential field(s) of \
                     SourceConfig {} are stored in PLAINTEXT. Set a key and run `aegis secrets rotate`.",
                    sc.id
                );
            }
            println!("added {} source config {}", vendor.source_name(), sc.id);
            Ok(())
        }
        SourceCommand::List { org, json } => {
            let org_id = match &org {
                Some(code) => Some(organization::by_code(pool, code).await?.id),
                None => None,
            };
            let list = source_config::list(pool, org_id.as_deref()).await?;
            if json {
                return output::json(&list);
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|sc| {
                    let limits = sc
                        .limits()
                        .map(|l| {
                            format!(
                                "delay={:?} concurrency={}",
                                l.delay,
                                l.concurrency.map_or("unset".into(), |c| c.to_string())
                            )
                        })
                        .unwrap_or_else(|e| format!("invalid: {e}"));
                    vec![
                        sc.id.clone(),
                        sc.source.clone().unwrap_or_default(),
                        sc.address.clone().unwrap_or_default(),
                        limits,
                        if sc.active { "yes".into() } else { "no".into() },
                    ]
                })
                .collect();
            output::table(&["ID", "SOURCE", "ADDRESS", "LIMITS", "ACTIVE"], &rows);
            Ok(())
        }
        SourceCommand::Show { id, json } => {
            let sc = source_config::by_id(pool, &id).await?;
            let auth = sc.auth()?;
            let limits = sc.limits()?;
            if json {
                let mut v = serde_json::to_value(&sc)?;
                v["limits"] = serde_json::to_value(&limits)?;
                v["username"] = auth.get("Username").cloned().unwrap_or(Value::Null);
                for f in secrets::SECRET_FIELDS {
                    v["secrets"][f] = secret_state(&auth, f).into();
                }
                return output::json(&v);
            }
            let mut pairs = vec![
                ("ID", sc.id.clone()),
                ("Source", sc.source.clone().unwrap_or_default()),
                (
                    "OrganizationID",
                    sc.organization_id.clone().unwrap_or_default(),
                ),
                ("Address", sc.address.clone().unwrap_or_default()),
                ("Port", sc.port.clone().unwrap_or_default()),
                (
                    "Username",
                    auth.get("Username")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string(),
                ),
                (
                    "Delay",
                    format!("{} ns ({:?})", limits.delay.as_nanos(), limits.delay),
                ),
                (
                    "Concurrency",
                    limits.concurrency.map_or("unset".into(), |c| c.to_string()),
                ),
                ("Retries", limits.retries.to_string()),
                ("LimitKey", limits.limit_key.clone()),
                ("Payload", sc.payload.clone()),
            ];
            for f in secrets::SECRET_FIELDS {
                pairs.push((f, secret_state(&auth, f)));
            }
            output::record(&pairs);
            Ok(())
        }
    }
}

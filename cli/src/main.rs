//! `aegis`: the operator's command line.
//!
//! Scriptable replacements for the original's interactive installer
//! (`-init-org`, `-scaffold`): migrate the schema, create organizations, source
//! configs and the default job configs, manage secrets, and (with the job
//! runner) submit, cancel and inspect jobs. Every command reads the same
//! configuration as the daemons (`AEGIS_*` variables), validates its input, and
//! writes in one transaction so nothing is half-written on error.

mod job;
mod jobconfig;
mod org;
mod output;
mod secrets_cmd;
mod source;

use std::process::ExitCode;

use aegis_shared::{db, Settings};
use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "aegis",
    version,
    about = "Operate Aegis: schema, organizations, sources, job configs, secrets and jobs.",
    long_about = "Operate Aegis: schema, organizations, sources, job configs, secrets and jobs.\n\n\
Configuration comes from the environment (AEGIS_DATABASE_URL, AEGIS_ENCRYPTION_KEY, ...; see README.md)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the database if needed and apply schema migrations (safe to run twice).
    Migrate,
    /// Organizations (tenants): create, list, show.
    #[command(subcommand)]
    Org(org::OrgCommand),
    /// Source configs (JIRA, Qualys, Nexpose connections): add, list, show.
    #[command(subcommand)]
    Source(source::SourceCommand),
    /// Job configs: create the installer's default set, list.
    #[command(subcommand, name = "jobconfig")]
    JobConfig(jobconfig::JobConfigCommand),
    /// Jobs: submit, cancel, list, show, wait.
    #[command(subcommand)]
    Job(job::JobCommand),
    /// Encryption keys and sealed credentials: generate-key, rotate, status.
    #[command(subcommand)]
    Secrets(secrets_cmd::SecretsCommand),
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    // generate-key needs no configuration at all.
    if let Command::Secrets(secrets_cmd::SecretsCommand::GenerateKey(args)) = &cli.command {
        return secrets_cmd::generate_key(args);
    }
    let settings = Settings::from_env()?;
    match cli.command {
        Command::Migrate => {
            let report = db::migrate(&settings.database_url).await?;
            if report.created_database {
                println!(
                    "created database {}",
                    db::redact_url(&settings.database_url)
                );
            }
            if report.applied.is_empty() {
                println!(
                    "schema is up to date ({} migrations)",
                    db::MIGRATOR.iter().count()
                );
            } else {
                for m in &report.applied {
                    println!("applied {m}");
                }
            }
            Ok(())
        }
        Command::Org(c) => org::run(c, &connect(&settings).await?).await,
        Command::Source(c) => source::run(c, &connect(&settings).await?, &settings).await,
        Command::JobConfig(c) => jobconfig::run(c, &connect(&settings).await?).await,
        Command::Job(c) => job::run(c, &connect(&settings).await?, &settings).await,
        Command::Secrets(c) => secrets_cmd::run(c, &connect(&settings).await?, &settings).await,
    }
}

/// Connects to a migrated database, or says what to do.
async fn connect(settings: &Settings) -> anyhow::Result<sqlx::MySqlPool> {
    let pool = db::connect(&settings.database_url, 2).await?;
    db::check_schema(&pool)
        .await
        .context("checking the database schema")?;
    Ok(pool)
}

/// The user name recorded in CreatedBy/UpdatedBy columns.
pub fn operator() -> String {
    std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .map(|u| format!("aegis-cli:{u}"))
        .unwrap_or_else(|| "aegis-cli".into())
}

/// Reads a JSON object given inline or as `@path`.
pub fn json_object_arg(
    name: &str,
    text: &str,
) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
    let body = match text.strip_prefix('@') {
        Some(path) => {
            std::fs::read_to_string(path).with_context(|| format!("{name}: cannot read {path}"))?
        }
        None => text.to_string(),
    };
    match serde_json::from_str(&body) {
        Ok(serde_json::Value::Object(m)) => Ok(m),
        Ok(_) => anyhow::bail!("{name}: expected a JSON object such as {{\"key\": \"value\"}}"),
        Err(e) => anyhow::bail!("{name}: not valid JSON: {e}"),
    }
}

//! `aegis secrets …`: generate a key, rotate sealed credentials, report their state.

use aegis_shared::model::source_config;
use aegis_shared::secrets::{self, Keyring};
use aegis_shared::Settings;
use clap::{Args, Subcommand};
use serde_json::Value;
use sqlx::MySqlPool;

use crate::output;

#[derive(Subcommand)]
pub enum SecretsCommand {
    /// Print a new random key entry (`<key id>:<base64>`) for AEGIS_ENCRYPTION_KEY.
    /// To rotate, put the new entry first and keep the old one after a comma.
    GenerateKey(GenerateArgs),
    /// Re-seal every SourceConfig credential under the first key of the keyring
    /// (and seal plaintext ones). One transaction.
    Rotate,
    /// Count credentials by state: sealed under each key id, or plaintext.
    Status,
}

#[derive(Args)]
pub struct GenerateArgs {
    /// Id for the new key (letters, digits, '-', '_'); default: k<YYYYMMDD>.
    #[arg(long)]
    key_id: Option<String>,
}

pub fn generate_key(a: &GenerateArgs) -> anyhow::Result<()> {
    let id = a
        .key_id
        .clone()
        .unwrap_or_else(|| format!("k{}", chrono::Utc::now().format("%Y%m%d")));
    let entry = Keyring::generate_entry(&id);
    // Validate our own output (and the id the user chose).
    Keyring::parse(&entry)?;
    println!("{entry}");
    Ok(())
}

pub async fn run(cmd: SecretsCommand, pool: &MySqlPool, settings: &Settings) -> anyhow::Result<()> {
    match cmd {
        SecretsCommand::GenerateKey(a) => generate_key(&a),
        SecretsCommand::Rotate => {
            let Some(keyring) = settings.keyring.as_ref() else {
                anyhow::bail!("no encryption key is configured: set AEGIS_ENCRYPTION_KEY (new key first, old keys after it) and run again");
            };
            let r = source_config::rotate_secrets(pool, keyring).await?;
            println!(
                "sealed under key {}: {} source config(s) changed, {} field(s) re-sealed from older keys, {} plaintext field(s) sealed",
                keyring.active_key_id(),
                r.source_configs,
                r.fields_resealed,
                r.plaintext_sealed
            );
            Ok(())
        }
        SecretsCommand::Status => {
            let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
            for sc in source_config::list(pool, None).await? {
                let auth = sc.auth()?;
                for f in secrets::SECRET_FIELDS {
                    let state = match auth.get(f).and_then(Value::as_str) {
                        None | Some("") => continue,
                        Some(v) => secrets::sealed_key_id(v)
                            .map_or("plaintext".to_string(), |k| format!("sealed with {k}")),
                    };
                    *counts.entry(state).or_default() += 1;
                }
            }
            let rows: Vec<Vec<String>> = counts
                .into_iter()
                .map(|(k, v)| vec![k, v.to_string()])
                .collect();
            output::table(&["STATE", "FIELDS"], &rows);
            Ok(())
        }
    }
}

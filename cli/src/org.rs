//! `aegis org …`: create, list and show organizations.

use aegis_shared::model::organization::{self, NewOrganization, OrgPayload, Severity};
use anyhow::Context;
use clap::{Args, Subcommand};
use sqlx::MySqlPool;

use crate::output;

#[derive(Subcommand)]
pub enum OrgCommand {
    /// Create an organization with the installer's default ticketing policy,
    /// adjusted by the flags (or a whole payload with --payload).
    Create(CreateArgs),
    /// List organizations.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one organization and its payload.
    Show {
        /// The organization code, e.g. NORTON.
        code: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
pub struct CreateArgs {
    /// Short code that appears in every log line (letters, digits, '-', '_'; upper-cased).
    #[arg(long)]
    code: String,
    /// Human-readable name.
    #[arg(long)]
    description: String,
    /// The whole org payload as JSON, or @file. Overrides the policy flags below.
    #[arg(long)]
    payload: Option<String>,
    /// Detections with a lower CVSS score are not ticketed.
    #[arg(long, default_value_t = 4.0)]
    lowest_ticketed_cvss: f64,
    /// CVSS version used for scoring: 2 or 3.
    #[arg(long, default_value_t = 2)]
    cvss_version: u8,
    /// Severity band NAME:SLA_DAYS:CVSS_MIN, repeatable, in increasing CVSS_MIN
    /// (default Medium:90:4 High:60:7 Critical:30:9).
    #[arg(long = "severity", value_name = "NAME:DAYS:CVSS_MIN")]
    severities: Vec<String>,
    /// Text appended to every ticket description.
    #[arg(long)]
    description_footer: Option<String>,
    /// Hours from UTC used to evaluate this organization's JobSchedule rows.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    time_zone_offset: f32,
    /// Code of the parent organization.
    #[arg(long)]
    parent: Option<String>,
}

fn parse_severity(text: &str) -> anyhow::Result<Severity> {
    let parts: Vec<&str> = text.split(':').collect();
    let [name, days, min] = parts.as_slice() else {
        anyhow::bail!("--severity {text:?}: expected NAME:SLA_DAYS:CVSS_MIN such as High:60:7");
    };
    Ok(Severity {
        name: name.to_string(),
        duration: days.parse().with_context(|| {
            format!("--severity {text:?}: SLA_DAYS {days:?} is not a whole number")
        })?,
        cvss_min: min
            .parse()
            .with_context(|| format!("--severity {text:?}: CVSS_MIN {min:?} is not a number"))?,
    })
}

pub async fn run(cmd: OrgCommand, pool: &MySqlPool) -> anyhow::Result<()> {
    match cmd {
        OrgCommand::Create(a) => {
            let payload = match &a.payload {
                Some(text) => {
                    let obj = crate::json_object_arg("--payload", text)?;
                    OrgPayload::parse(&serde_json::Value::Object(obj).to_string())?
                }
                None => {
                    let mut p = OrgPayload {
                        lowest_ticketed_cvss: a.lowest_ticketed_cvss,
                        cvss_version: a.cvss_version,
                        description_footer: a.description_footer.clone(),
                        ..OrgPayload::default()
                    };
                    if !a.severities.is_empty() {
                        p.severities = a
                            .severities
                            .iter()
                            .map(|s| parse_severity(s))
                            .collect::<Result<_, _>>()?;
                    }
                    p
                }
            };
            let mut tx = pool.begin().await?;
            let org = organization::create(
                &mut tx,
                &NewOrganization {
                    code: a.code,
                    description: a.description,
                    payload,
                    time_zone_offset: a.time_zone_offset,
                    parent_code: a.parent,
                    created_by: crate::operator(),
                },
            )
            .await?;
            tx.commit().await?;
            println!("created organization {} ({})", org.code, org.id);
            Ok(())
        }
        OrgCommand::List { json } => {
            let orgs = organization::list(pool).await?;
            if json {
                return output::json(&orgs);
            }
            let rows: Vec<Vec<String>> = orgs
                .iter()
                .map(|o| {
                    vec![
                        o.code.clone(),
                        o.id.clone(),
                        o.description.clone(),
                        if o.active { "yes".into() } else { "no".into() },
                    ]
                })
                .collect();
            output::table(&["CODE", "ID", "DESCRIPTION", "ACTIVE"], &rows);
            Ok(())
        }
        OrgCommand::Show { code, json } => {
            let org = organization::by_code(pool, &code).await?;
            if json {
                return output::json(&org);
            }
            output::record(&[
                ("Code", org.code.clone()),
                ("ID", org.id.clone()),
                ("Description", org.description.clone()),
                ("Parent", org.parent_org_id.clone().unwrap_or_default()),
                ("TimeZoneOffset", org.time_zone_offset.to_string()),
                ("Active", org.active.to_string()),
                ("Payload", org.payload.clone().unwrap_or_default()),
            ]);
            Ok(())
        }
    }
}

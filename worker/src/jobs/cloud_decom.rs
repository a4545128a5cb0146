//! The CloudDecommissionJob hand-off (spec `original-jobs-rescan.md` §1.5
//! step 2, §1.9, and the cloud-decom route of §4.3–§4.5): IPs a rescan found
//! dead (or could not rescan) in a group backed by a cloud inventory are handed
//! to a `CloudDecommissionJob`, which asks the cloud (AWS, Azure) whether the
//! instance still exists. That job has no implementation in this worker yet:
//! its rows wait, pending, for one (see `docs/rescan.md`).
//!
//! A group **qualifies** when all of these hold (otherwise [`qualify`] says
//! which one is missing, and the caller logs it and leaves the ticket alone):
//! its AssetGroup row has a `CloudSourceID`; the organization has an active
//! SourceConfig of that cloud Source; the `CloudDecommissionJob` Job row
//! exists; the organization has an active JobConfig of that job using that
//! SourceConfig; and that JobConfig's Payload is a JSON object.
//!
//! A hand-off inserts **one** pending `CloudDecommissionJob` row: the
//! config's payload (so `decommission_on_stopped_state` is kept) plus
//! `only_check_ips` (the unique non-empty IPs) and `only_reopen_tickets` (the
//! tickets' keys), ParentJobId = the caller's row. IPs already in a pending or
//! running CloudDecommissionJob of the organization are left out, under a lock
//! on the JobConfig row, so no IP is handed off twice however many callers run.

use std::collections::{BTreeMap, HashSet};

use aegis_shared::model::job_history::{self, NewJob};
use serde_json::{Map, Value};
use sqlx::{MySql, MySqlPool, Transaction};

use super::{JobContext, JobError};
use crate::vendors::ticketing::TicketEngine;

pub const JOB: &str = "CloudDecommissionJob";

/// What a qualifying group hands off to.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    pub group: String,
    /// The CloudDecommissionJob JobConfig.
    pub config_id: String,
    /// Its Payload.
    pub payload: Map<String, Value>,
}

/// What the database says about a group's cloud set-up (each lookup in turn).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Facts {
    /// None: no AssetGroup row of the organization with this GroupID.
    pub cloud_source_id: Option<Option<String>>,
    /// The cloud Source's name (`AWS`, `Azure`), when it exists.
    pub cloud_source_name: Option<String>,
    /// The organization's active SourceConfig of that Source.
    pub source_config_id: Option<String>,
    pub job_exists: bool,
    /// The organization's active JobConfig (ID, Payload) of the job using that SourceConfig.
    pub job_config: Option<(String, Option<String>)>,
}

/// Whether the facts make a qualifying group; Err names what is missing.
pub fn qualify_facts(org_code: &str, group: &str, f: &Facts) -> Result<Target, String> {
    let cloud = match &f.cloud_source_id {
        None => {
            return Err(format!(
                "group {group} is not an asset group of organization {org_code}"
            ))
        }
        Some(c) => c.as_deref().map(str::trim).unwrap_or_default(),
    };
    if cloud.is_empty() {
        return Err(format!("group {group} has no CloudSourceID"));
    }
    let cloud_name = f
        .cloud_source_name
        .clone()
        .unwrap_or_else(|| cloud.to_string());
    let Some(sc) = &f.source_config_id else {
        return Err(format!(
            "organization {org_code} has no active SourceConfig for cloud source {cloud_name} (CloudSourceID of group {group})"
        ));
    };
    if !f.job_exists {
        return Err(format!("there is no {JOB} Job row"));
    }
    let Some((config_id, payload)) = &f.job_config else {
        return Err(format!(
            "no {JOB} JobConfig for organization {org_code} and cloud source {cloud_name} (SourceConfig {sc})"
        ));
    };
    let payload = match serde_json::from_str::<Value>(payload.as_deref().unwrap_or("").trim()) {
        Ok(Value::Object(m)) => m,
        _ => {
            return Err(format!(
                "{JOB} JobConfig {config_id} has no valid JSON object Payload"
            ))
        }
    };
    Ok(Target {
        group: group.to_string(),
        config_id: config_id.clone(),
        payload,
    })
}

/// The CloudDecommissionJob payload: the config's, plus `only_check_ips` (unique
/// non-empty IPs, first seen first) and `only_reopen_tickets` (unique keys).
pub fn payload(config: &Map<String, Value>, handed: &[(String, String)]) -> Value {
    let mut ips: Vec<String> = Vec::new();
    let mut titles: Vec<String> = Vec::new();
    for (ip, title) in handed {
        let ip = ip.trim();
        if !ip.is_empty() && !ips.iter().any(|i| i == ip) {
            ips.push(ip.to_string());
        }
        if !title.is_empty() && !titles.contains(title) {
            titles.push(title.clone());
        }
    }
    let mut p = config.clone();
    p.insert("only_check_ips".into(), Value::from(ips));
    p.insert("only_reopen_tickets".into(), Value::from(titles));
    Value::Object(p)
}

/// Reads the facts about `group` and decides whether it qualifies. The group's
/// AssetGroup row of `scanner_source_config_id` is preferred, then any of the
/// organization's.
pub async fn qualify(
    pool: &MySqlPool,
    org_id: &str,
    org_code: &str,
    group: &str,
    scanner_source_config_id: &str,
) -> Result<Result<Target, String>, JobError> {
    let mut f = Facts::default();
    let row: Option<(Option<String>,)> = sqlx::query_as(
        "SELECT CloudSourceID FROM AssetGroup WHERE OrganizationID = ? AND GroupID = ?
          ORDER BY (ScannerSourceConfigID = ?) DESC, (CloudSourceID IS NULL) LIMIT 1",
    )
    .bind(org_id)
    .bind(group)
    .bind(scanner_source_config_id)
    .fetch_optional(pool)
    .await?;
    f.cloud_source_id = row.map(|(c,)| c);
    if let Some(Some(cloud)) = &f.cloud_source_id {
        f.cloud_source_name =
            sqlx::query_as::<_, (String,)>("SELECT Source FROM Source WHERE ID = ?")
                .bind(cloud)
                .fetch_optional(pool)
                .await?
                .map(|(s,)| s);
        f.source_config_id = sqlx::query_as::<_, (String,)>(
            "SELECT ID FROM SourceConfig WHERE OrganizationID = ? AND SourceID = ? AND Active = 1
              ORDER BY DBCreatedDate, ID LIMIT 1",
        )
        .bind(org_id)
        .bind(cloud)
        .fetch_optional(pool)
        .await?
        .map(|(s,)| s);
    }
    f.job_exists = sqlx::query_as::<_, (i32,)>("SELECT Id FROM Job WHERE Struct = ?")
        .bind(JOB)
        .fetch_optional(pool)
        .await?
        .is_some();
    if let (Some(sc), true) = (&f.source_config_id, f.job_exists) {
        f.job_config = aegis_shared::model::job_config::for_source(pool, org_id, JOB, sc).await?;
    }
    Ok(qualify_facts(org_code, group, &f))
}

/// The organization's groups that qualify (those with a CloudSourceID; a
/// group that has one but misses the rest is logged once here).
pub async fn qualifying_groups(
    pool: &MySqlPool,
    org_id: &str,
    org_code: &str,
    scanner_source_config_id: &str,
) -> Result<BTreeMap<String, Target>, JobError> {
    let groups: Vec<(String,)> = sqlx::query_as(
        "SELECT DISTINCT GroupID FROM AssetGroup
          WHERE OrganizationID = ? AND CloudSourceID IS NOT NULL AND CloudSourceID <> ''",
    )
    .bind(org_id)
    .fetch_all(pool)
    .await?;
    let mut out = BTreeMap::new();
    for (g,) in groups {
        match qualify(pool, org_id, org_code, &g, scanner_source_config_id).await? {
            Ok(t) => {
                out.insert(g, t);
            }
            Err(missing) => {
                tracing::warn!("group {g} does not hand dead IPs to cloud decommission: {missing}")
            }
        }
    }
    Ok(out)
}

async fn pending_ips_in(
    tx: &mut Transaction<'_, MySql>,
    org_id: &str,
) -> Result<HashSet<String>, JobError> {
    let rows: Vec<(Option<String>,)> = sqlx::query_as(
        "SELECT h.Payload FROM JobHistory h JOIN Job j ON j.Id = h.JobId JOIN JobConfig c ON c.ID = h.ConfigID
          WHERE j.Struct = ? AND c.OrganizationID = ? AND h.StatusId IN (1, 2, -1)",
    )
    .bind(JOB)
    .bind(org_id)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(p,)| serde_json::from_str::<Value>(p.as_deref()?).ok())
        .flat_map(|p| {
            p["only_check_ips"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|ip| ip.as_str().map(|s| s.trim().to_string()))
                .collect::<Vec<_>>()
        })
        .collect())
}

/// IPs in a pending or running CloudDecommissionJob of the organization.
pub async fn pending_ips(pool: &MySqlPool, org_id: &str) -> Result<HashSet<String>, JobError> {
    let mut tx = pool.begin().await?;
    let ips = pending_ips_in(&mut tx, org_id).await?;
    tx.commit().await?;
    Ok(ips)
}

/// Who hands off, for the row's ParentJobId and CreatedBy.
pub struct Caller<'a> {
    pub job_id: &'a str,
    pub created_by: &'a str,
    /// Makes a retried caller's hand-off a no-op (ScanCloseJob: per run).
    pub idempotency_key: Option<String>,
}

/// Hands `(ip, ticket)` pairs to one new CloudDecommissionJob of `target`,
/// leaving out IPs already pending. Returns the new row and the IPs it got,
/// or None when every IP was already pending (or none was given).
pub async fn hand_off(
    pool: &MySqlPool,
    org_id: &str,
    target: &Target,
    handed: &[(String, String)],
    caller: &Caller<'_>,
) -> Result<Option<(String, Vec<String>)>, JobError> {
    let mut tx = pool.begin().await?;
    // Serializes hand-offs to this config, so the pending check below holds.
    sqlx::query("SELECT ID FROM JobConfig WHERE ID = ? FOR UPDATE")
        .bind(&target.config_id)
        .execute(&mut *tx)
        .await?;
    let pending = pending_ips_in(&mut tx, org_id).await?;
    let fresh: Vec<(String, String)> = handed
        .iter()
        .filter(|(ip, _)| !ip.trim().is_empty() && !pending.contains(ip.trim()))
        .cloned()
        .collect();
    if fresh.is_empty() {
        tx.rollback().await?;
        return Ok(None);
    }
    let p = payload(&target.payload, &fresh);
    let ips: Vec<String> = p["only_check_ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    let job = job_history::insert(
        &mut tx,
        &NewJob {
            job_name: JOB.into(),
            config_id: Some(target.config_id.clone()),
            priority: None,
            payload: Some(p.to_string()),
            parent_job_id: Some(caller.job_id.to_string()),
            created_by: caller.created_by.to_string(),
            idempotency_key: caller.idempotency_key.clone(),
            trace_parent: None,
        },
    )
    .await?;
    tx.commit().await?;
    if !job.created {
        return Ok(None);
    }
    Ok(Some((job.id, ips)))
}

/// Hands off the collected pairs of each group and logs the outcome; a
/// group that does not qualify (any more) is logged with what is missing.
pub async fn hand_off_groups(
    pool: &MySqlPool,
    org_id: &str,
    targets: &BTreeMap<String, Target>,
    collected: BTreeMap<String, Vec<(String, String)>>,
    caller: &Caller<'_>,
    prefix: &str,
) -> Result<(), JobError> {
    for (group, handed) in collected {
        let Some(target) = targets.get(&group) else {
            continue;
        };
        let keys: Vec<&str> = handed.iter().map(|(_, t)| t.as_str()).collect();
        match hand_off(pool, org_id, target, &handed, caller).await? {
            Some((id, ips)) => tracing::info!(
                "{prefix}{JOB} {id} queued for group {group}: IP(s) {} of ticket(s) {}",
                ips.join(", "),
                keys.join(", ")
            ),
            None => tracing::info!(
                "{prefix}IP(s) of ticket(s) {} of group {group} are already in a pending {JOB}",
                keys.join(", ")
            ),
        }
    }
    Ok(())
}

/// ScanCloseJob's cloud-decom route of one ticket: the comment (none for
/// PASSIVE and EXCEPTIONS); the IP is handed off after every ticket is decided.
pub async fn comment_routed(
    engine: &dyn TicketEngine,
    key: &str,
    comment: Option<&str>,
) -> Result<(), String> {
    if let Some(c) = comment {
        engine
            .add_comment(key, c)
            .await
            .map_err(|e| format!("commenting the cloud decommission hand-off: {e}"))?;
    }
    tracing::info!("ticket {key}: its IP goes to cloud decommission for verification");
    Ok(())
}

/// ScanCloseJob's hand-off of the IPs it routed: one CloudDecommissionJob for
/// the payload's group, parent = this run, once per run (idempotency key).
pub async fn hand_off_from_close(
    ctx: &JobContext,
    org_id: &str,
    cloud: &Result<Target, String>,
    routed: Vec<(String, String)>,
) -> Result<(), JobError> {
    let Ok(target) = cloud else {
        return Ok(());
    };
    if routed.is_empty() {
        return Ok(());
    }
    let caller = Caller {
        job_id: &ctx.history.id,
        created_by: "SCAN CLOSE JOB",
        idempotency_key: Some(format!("clouddecom:{org_id}:{}", ctx.history.id)),
    };
    hand_off_groups(
        &ctx.pool,
        org_id,
        &BTreeMap::from([(target.group.clone(), target.clone())]),
        BTreeMap::from([(target.group.clone(), routed)]),
        &caller,
        "",
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn all_there() -> Facts {
        Facts {
            cloud_source_id: Some(Some("aws-source".into())),
            cloud_source_name: Some("AWS".into()),
            source_config_id: Some("aws-sc".into()),
            job_exists: true,
            job_config: Some((
                "cfg-1".into(),
                Some(r#"{"decommission_on_stopped_state": true}"#.into()),
            )),
        }
    }

    #[test]
    fn a_group_with_a_cloud_source_config_and_job_config_qualifies() {
        let t = qualify_facts("NORTON", "17", &all_there()).expect("qualifies");
        assert_eq!(t.config_id, "cfg-1");
        assert_eq!(t.payload["decommission_on_stopped_state"], json!(true));
    }

    #[test]
    fn each_missing_piece_is_named() {
        let cases: Vec<(Facts, &str)> = vec![
            (
                Facts {
                    cloud_source_id: None,
                    ..all_there()
                },
                "group 17 is not an asset group of organization NORTON",
            ),
            (
                Facts {
                    cloud_source_id: Some(None),
                    ..all_there()
                },
                "group 17 has no CloudSourceID",
            ),
            (
                Facts {
                    cloud_source_id: Some(Some(" ".into())),
                    ..all_there()
                },
                "group 17 has no CloudSourceID",
            ),
            (
                Facts {
                    source_config_id: None,
                    ..all_there()
                },
                "organization NORTON has no active SourceConfig for cloud source AWS",
            ),
            (
                Facts {
                    job_exists: false,
                    ..all_there()
                },
                "there is no CloudDecommissionJob Job row",
            ),
            (
                Facts {
                    job_config: None,
                    ..all_there()
                },
                "no CloudDecommissionJob JobConfig for organization NORTON and cloud source AWS",
            ),
            (
                Facts {
                    job_config: Some(("cfg-1".into(), None)),
                    ..all_there()
                },
                "JobConfig cfg-1 has no valid JSON object Payload",
            ),
            (
                Facts {
                    job_config: Some(("cfg-1".into(), Some("{not json".into()))),
                    ..all_there()
                },
                "JobConfig cfg-1 has no valid JSON object Payload",
            ),
            (
                Facts {
                    job_config: Some(("cfg-1".into(), Some("[1]".into()))),
                    ..all_there()
                },
                "JobConfig cfg-1 has no valid JSON object Payload",
            ),
        ];
        for (facts, expected) in cases {
            let err = qualify_facts("NORTON", "17", &facts).expect_err(expected);
            assert!(
                err.contains(expected),
                "{err:?} should contain {expected:?}"
            );
        }
    }

    #[test]
    fn the_payload_keeps_the_config_and_lists_unique_non_empty_ips_and_tickets() {
        let mut config = Map::new();
        config.insert("decommission_on_stopped_state".into(), json!(false));
        config.insert("only_check_ips".into(), json!(["stale"]));
        let p = payload(
            &config,
            &[
                ("10.0.0.5".into(), "VULN-1".into()),
                (" 10.0.0.5 ".into(), "VULN-2".into()),
                ("".into(), "VULN-3".into()),
                ("10.0.0.6".into(), "VULN-1".into()),
            ],
        );
        assert_eq!(
            p,
            json!({
                "decommission_on_stopped_state": false,
                "only_check_ips": ["10.0.0.5", "10.0.0.6"],
                "only_reopen_tickets": ["VULN-1", "VULN-2", "VULN-3"],
            })
        );
    }
}

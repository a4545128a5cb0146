//! The organization, source-config and job-config rows most tests start from,
//! so each test states only what differs (`NewSourceConfig { delay_ns: …,
//! ..source(..) }`), and the JIRA simulator's field map.

use std::collections::HashMap;

use aegis_shared::model::job_config::NewJobConfig;
use aegis_shared::model::organization::{self, NewOrganization, OrgPayload, Organization};
use aegis_shared::model::source_config::{NewSourceConfig, Vendor};
use aegis_shared::secrets::Secret;
use serde_json::Value;
use sqlx::{MySql, Transaction};

/// An organization with the installer's default ticketing policy.
pub async fn organization(
    tx: &mut Transaction<'_, MySql>,
    code: &str,
) -> anyhow::Result<Organization> {
    Ok(organization::create(
        tx,
        &NewOrganization {
            code: code.into(),
            description: format!("{code} (test)"),
            payload: OrgPayload::default(),
            time_zone_offset: 0.0,
            parent_code: None,
            created_by: "test".into(),
        },
    )
    .await?)
}

/// A source config for a simulator (credentials `aegis`/`aegis`), no spacing,
/// 4 requests in flight, no retries, an empty vendor payload.
pub fn source(org_code: &str, vendor: Vendor, address: &str) -> NewSourceConfig {
    NewSourceConfig {
        org_code: org_code.into(),
        vendor,
        address: address.into(),
        port: None,
        username: "aegis".into(),
        password: Secret::new("aegis"),
        token: Secret::default(),
        delay_ns: 0,
        concurrency: 4,
        retries: 0,
        verify_tls: true,
        limit_key: None,
        payload: serde_json::Map::new(),
        created_by: "test".into(),
    }
}

/// A job config run on demand only (not continuous, no auto start, no
/// instance limit), priority 0.
pub fn job(job: &str, data_in: &str, data_out: &str, payload: Value) -> NewJobConfig {
    NewJobConfig {
        job_name: job.into(),
        data_in: vec![data_in.into()],
        data_out: vec![data_out.into()],
        payload,
        priority_override: Some(0),
        continuous: false,
        wait_in_seconds: 0,
        max_instances: 0,
        auto_start: false,
    }
}

/// The JIRA simulator's field IDs by field name (`GET /rest/api/2/field`).
pub async fn jira_fields(sim: &aegis_sim::Simulator) -> anyhow::Result<HashMap<String, String>> {
    let list: Vec<Value> = reqwest::Client::new()
        .get(format!("{}/rest/api/2/field", sim.jira_url()))
        .basic_auth("aegis", Some("aegis"))
        .send()
        .await?
        .json()
        .await?;
    Ok(list
        .iter()
        .filter_map(|f| {
            Some((
                f["name"].as_str()?.to_string(),
                f["id"].as_str()?.to_string(),
            ))
        })
        .collect())
}

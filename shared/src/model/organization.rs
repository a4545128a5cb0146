//! Organizations (tenants): their row, their payload (ticketing policy) and SQL.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sqlx::{MySql, MySqlPool, Transaction};

use super::{is_duplicate_key, ModelError};

/// A row of `Organization`.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct Organization {
    #[sqlx(rename = "ID")]
    pub id: String,
    #[sqlx(rename = "ParentOrgID")]
    pub parent_org_id: Option<String>,
    #[sqlx(rename = "Code")]
    pub code: String,
    #[sqlx(rename = "Description")]
    pub description: String,
    #[sqlx(rename = "Payload")]
    pub payload: Option<String>,
    #[sqlx(rename = "TimeZoneOffset")]
    pub time_zone_offset: f32,
    #[sqlx(rename = "Active")]
    pub active: bool,
}

/// One severity band: CVSS at or above `cvss_min` gets this name and an SLA of
/// `duration` days.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Severity {
    pub name: String,
    pub duration: i64,
    pub cvss_min: f64,
}

/// The organization's Payload JSON: its ticketing policy. Unknown keys (the AD
/// settings of the original, `sns_id`, …) are kept as they are.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OrgPayload {
    pub lowest_ticketed_cvss: f64,
    pub cvss_version: u8,
    pub severities: Vec<Severity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description_footer: Option<String>,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

impl Default for OrgPayload {
    /// The original installer's default payload.
    fn default() -> Self {
        let mut other = Map::new();
        other.insert("ad_servers".into(), serde_json::json!([""]));
        other.insert("ad_ldap_tls_port".into(), 636.into());
        other.insert("ad_base_dn".into(), "".into());
        other.insert("ad_skip_verify".into(), false.into());
        other.insert("ad_member_of_attribute".into(), "memberOf".into());
        other.insert("ad_search_string".into(), "(accountName=%s)".into());
        OrgPayload {
            lowest_ticketed_cvss: 4.0,
            cvss_version: 2,
            severities: vec![
                Severity { name: "Medium".into(), duration: 90, cvss_min: 4.0 },
                Severity { name: "High".into(), duration: 60, cvss_min: 7.0 },
                Severity { name: "Critical".into(), duration: 30, cvss_min: 9.0 },
            ],
            description_footer: None,
            other,
        }
    }
}

impl OrgPayload {
    /// Parses and validates an org payload; the error names the key at fault.
    pub fn parse(text: &str) -> Result<Self, ModelError> {
        let payload: OrgPayload = serde_json::from_str(text)
            .map_err(|e| ModelError::invalid("org payload", format!("not a valid org payload: {e}")))?;
        payload.validate()?;
        Ok(payload)
    }

    pub fn validate(&self) -> Result<(), ModelError> {
        if !(0.0..=10.0).contains(&self.lowest_ticketed_cvss) {
            return Err(ModelError::invalid(
                "lowest_ticketed_cvss",
                format!("{} is not a CVSS score between 0 and 10", self.lowest_ticketed_cvss),
            ));
        }
        if self.cvss_version != 2 && self.cvss_version != 3 {
            return Err(ModelError::invalid(
                "cvss_version",
                format!("{} is not 2 or 3", self.cvss_version),
            ));
        }
        if self.severities.is_empty() {
            return Err(ModelError::invalid("severities", "at least one severity band is needed"));
        }
        let mut previous: Option<f64> = None;
        for (i, s) in self.severities.iter().enumerate() {
            if s.name.trim().is_empty() {
                return Err(ModelError::invalid(format!("severities[{i}].name"), "must not be empty"));
            }
            if s.duration < 0 {
                return Err(ModelError::invalid(
                    format!("severities[{i}].duration"),
                    "must be a number of days >= 0",
                ));
            }
            if !(0.0..=10.0).contains(&s.cvss_min) {
                return Err(ModelError::invalid(
                    format!("severities[{i}].cvss_min"),
                    "must be a CVSS score between 0 and 10",
                ));
            }
            if let Some(p) = previous {
                if s.cvss_min <= p {
                    return Err(ModelError::invalid(
                        format!("severities[{i}].cvss_min"),
                        format!("{} must be greater than the previous band's {p} (bands are listed in increasing cvss_min)", s.cvss_min),
                    ));
                }
            }
            previous = Some(s.cvss_min);
        }
        Ok(())
    }
}

/// What `aegis org create` inserts.
#[derive(Clone, Debug)]
pub struct NewOrganization {
    pub code: String,
    pub description: String,
    pub payload: OrgPayload,
    pub time_zone_offset: f32,
    pub parent_code: Option<String>,
    pub created_by: String,
}

const COLUMNS: &str = "ID, ParentOrgID, Code, Description, Payload, TimeZoneOffset, Active";

/// Validates and normalises an organization code (upper case, like the installer).
pub fn normalise_code(code: &str) -> Result<String, ModelError> {
    let code = code.trim().to_ascii_uppercase();
    if code.is_empty() || code.len() > 20 {
        return Err(ModelError::invalid("code", "must be 1 to 20 characters"));
    }
    if !code.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(ModelError::invalid(
            "code",
            format!("{code:?} may only contain letters, digits, '-' and '_' (it appears in every log line)"),
        ));
    }
    Ok(code)
}

pub async fn create(tx: &mut Transaction<'_, MySql>, new: &NewOrganization) -> Result<Organization, ModelError> {
    let code = normalise_code(&new.code)?;
    if new.description.trim().is_empty() || new.description.len() > 100 {
        return Err(ModelError::invalid("description", "must be 1 to 100 characters"));
    }
    if !(-14.0..=14.0).contains(&new.time_zone_offset) {
        return Err(ModelError::invalid("time zone offset", "must be between -14 and 14 hours"));
    }
    new.payload.validate()?;
    let parent = match &new.parent_code {
        Some(p) => Some(
            by_code_tx(tx, &normalise_code(p)?)
                .await?
                .ok_or_else(|| ModelError::NotFound { what: "parent organization", key: p.clone() })?
                .id,
        ),
        None => None,
    };
    let id = uuid::Uuid::new_v4().to_string();
    let payload = serde_json::to_string(&new.payload).map_err(|e| ModelError::invalid("payload", e.to_string()))?;
    let result = sqlx::query(
        "INSERT INTO Organization (ID, ParentOrgID, Code, Description, Payload, TimeZoneOffset, CreatedBy, Created)
         VALUES (?, ?, ?, ?, ?, ?, ?, UTC_TIMESTAMP(3))",
    )
    .bind(&id)
    .bind(&parent)
    .bind(&code)
    .bind(new.description.trim())
    .bind(&payload)
    .bind(new.time_zone_offset)
    .bind(&new.created_by)
    .execute(&mut **tx)
    .await;
    match result {
        Err(e) if is_duplicate_key(&e) => {
            return Err(ModelError::Duplicate { what: "organization", key: code })
        }
        other => {
            other?;
        }
    }
    Ok(Organization {
        id,
        parent_org_id: parent,
        code,
        description: new.description.trim().to_string(),
        payload: Some(payload),
        time_zone_offset: new.time_zone_offset,
        active: true,
    })
}

async fn by_code_tx(tx: &mut Transaction<'_, MySql>, code: &str) -> Result<Option<Organization>, ModelError> {
    Ok(sqlx::query_as::<_, Organization>(&format!("SELECT {COLUMNS} FROM Organization WHERE Code = ?"))
        .bind(code)
        .fetch_optional(&mut **tx)
        .await?)
}

pub async fn by_code(pool: &MySqlPool, code: &str) -> Result<Organization, ModelError> {
    let code = normalise_code(code)?;
    sqlx::query_as::<_, Organization>(&format!("SELECT {COLUMNS} FROM Organization WHERE Code = ?"))
        .bind(&code)
        .fetch_optional(pool)
        .await?
        .ok_or(ModelError::NotFound { what: "organization", key: code })
}

pub async fn by_id(pool: &MySqlPool, id: &str) -> Result<Organization, ModelError> {
    sqlx::query_as::<_, Organization>(&format!("SELECT {COLUMNS} FROM Organization WHERE ID = ?"))
        .bind(id)
        .fetch_optional(pool)
        .await?
        .ok_or_else(|| ModelError::NotFound { what: "organization", key: id.to_string() })
}

pub async fn list(pool: &MySqlPool) -> Result<Vec<Organization>, ModelError> {
    Ok(sqlx::query_as::<_, Organization>(&format!("SELECT {COLUMNS} FROM Organization ORDER BY Code"))
        .fetch_all(pool)
        .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installer_default_payload_is_valid_and_has_the_original_keys() {
        let p = OrgPayload::default();
        p.validate().expect("default is valid");
        let text = serde_json::to_string(&p).expect("json");
        for key in ["lowest_ticketed_cvss", "cvss_version", "severities", "ad_servers", "ad_search_string"] {
            assert!(text.contains(key), "{key} missing from {text}");
        }
        assert_eq!(OrgPayload::parse(&text).expect("round trip"), p);
    }

    #[test]
    fn bad_payloads_name_the_key_at_fault() {
        let p = OrgPayload { cvss_version: 4, ..Default::default() };
        assert!(p.validate().expect_err("bad").to_string().contains("cvss_version"));
        let mut p = OrgPayload::default();
        p.severities[1].cvss_min = 3.0;
        let e = p.validate().expect_err("bad").to_string();
        assert!(e.contains("severities[1].cvss_min"), "{e}");
        let e = OrgPayload::parse(r#"{"cvss_version":2}"#).expect_err("bad").to_string();
        assert!(e.contains("lowest_ticketed_cvss"), "{e}");
    }

    #[test]
    fn codes_are_upper_cased_and_checked() {
        assert_eq!(normalise_code(" norton ").expect("ok"), "NORTON");
        assert!(normalise_code("has space").is_err());
        assert!(normalise_code("").is_err());
    }
}

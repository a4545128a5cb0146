//! Source configs: one connection to a vendor (JIRA, Qualys, Nexpose) for one
//! organization. `AuthInfo` holds credentials (sealed, see [`crate::secrets`]) and
//! the rate-limit settings operators change with SQL (`Delay` in nanoseconds
//! between request starts, `Concurrency`, `Retries`); `Payload` holds the
//! vendor-specific settings.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sqlx::{MySql, MySqlPool, Transaction};

use super::ModelError;
use crate::secrets::{self, Credentials, Keyring};

/// The vendors Aegis has integrations for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Vendor {
    #[serde(rename = "JIRA")]
    Jira,
    Qualys,
    Nexpose,
}

impl Vendor {
    /// The `Source.Source` name that selects this integration.
    pub fn source_name(self) -> &'static str {
        match self {
            Vendor::Jira => "JIRA",
            Vendor::Qualys => "Qualys",
            Vendor::Nexpose => "Nexpose",
        }
    }

    pub fn parse(name: &str) -> Result<Self, ModelError> {
        match name.trim().to_ascii_lowercase().as_str() {
            "jira" => Ok(Vendor::Jira),
            "qualys" => Ok(Vendor::Qualys),
            "nexpose" | "insightvm" => Ok(Vendor::Nexpose),
            _ => Err(ModelError::invalid(
                "source",
                format!("{name:?} is not a supported source; use JIRA, Qualys or Nexpose"),
            )),
        }
    }

    pub fn is_scanner(self) -> bool {
        !matches!(self, Vendor::Jira)
    }

    /// Checks a vendor Payload document; the error names the key at fault.
    pub fn validate_payload(self, payload: &Map<String, Value>) -> Result<(), ModelError> {
        fn int_list(p: &Map<String, Value>, key: &str) -> Result<(), ModelError> {
            match p.get(key) {
                None | Some(Value::Null) => Ok(()),
                Some(Value::Array(items))
                    if items.iter().all(|v| {
                        v.is_i64() || v.as_str().is_some_and(|s| s.parse::<i64>().is_ok())
                    }) =>
                {
                    Ok(())
                }
                Some(other) => Err(ModelError::invalid(
                    format!("payload.{key}"),
                    format!("{other} is not a list of numeric IDs"),
                )),
            }
        }
        fn int(p: &Map<String, Value>, key: &str) -> Result<(), ModelError> {
            match p.get(key) {
                None | Some(Value::Null) => Ok(()),
                Some(v) if v.is_i64() => Ok(()),
                Some(other) => Err(ModelError::invalid(
                    format!("payload.{key}"),
                    format!("{other} is not a whole number"),
                )),
            }
        }
        fn object(p: &Map<String, Value>, key: &str) -> Result<(), ModelError> {
            match p.get(key) {
                None | Some(Value::Null) | Some(Value::Object(_)) => Ok(()),
                Some(other) => Err(ModelError::invalid(
                    format!("payload.{key}"),
                    format!("{other} is not a JSON object"),
                )),
            }
        }
        match self {
            Vendor::Jira => {
                match payload.get("project").and_then(Value::as_str) {
                    Some(p) if !p.trim().is_empty() => {}
                    _ => {
                        return Err(ModelError::invalid(
                            "payload.project",
                            "the JIRA project key is required, e.g. {\"project\":\"VULN\"}",
                        ))
                    }
                }
                for key in ["status_map", "field_map", "transition_map"] {
                    object(payload, key)?;
                }
                Ok(())
            }
            Vendor::Qualys => {
                for key in [
                    "searchListId",
                    "optionProfileId",
                    "discoveryOptionProfileId",
                    "kernel_filter",
                ] {
                    int(payload, key)?;
                }
                if let Some(k) = payload.get("kernel_filter").and_then(Value::as_i64) {
                    if !(0..=4).contains(&k) {
                        return Err(ModelError::invalid(
                            "payload.kernel_filter",
                            format!("{k} is not between 0 and 4"),
                        ));
                    }
                }
                int_list(payload, "groups")?;
                int_list(payload, "external_groups")
            }
            Vendor::Nexpose => {
                int(payload, "rescansite")?;
                int(payload, "engine_cache_ttle")
            }
        }
    }
}

/// A row of `SourceConfig`. `AuthInfo` is kept as stored (sealed); open the
/// credentials with [`SourceConfig::credentials`].
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct SourceConfig {
    #[sqlx(rename = "ID")]
    pub id: String,
    #[sqlx(rename = "Source")]
    pub source: Option<String>,
    #[sqlx(rename = "SourceID")]
    pub source_id: Option<String>,
    #[sqlx(rename = "OrganizationID")]
    pub organization_id: Option<String>,
    #[sqlx(rename = "Address")]
    pub address: Option<String>,
    #[sqlx(rename = "Port")]
    pub port: Option<String>,
    #[serde(skip)]
    #[sqlx(rename = "AuthInfo")]
    pub auth_info: String,
    #[sqlx(rename = "Payload")]
    pub payload: String,
    #[sqlx(rename = "Active")]
    pub active: bool,
}

/// The rate-limit settings of a SourceConfig's AuthInfo.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SourceLimits {
    /// `Delay`: minimum time between two request starts, fleet-wide. Zero: no spacing.
    pub delay: Duration,
    /// `Concurrency`: requests in flight, fleet-wide. `None`: the key is missing.
    pub concurrency: Option<u32>,
    /// `Retries`: extra attempts after the first for retryable failures.
    pub retries: u32,
    /// `LimitKey`: sources sharing one vendor account share one limit. Defaults to the SourceConfig ID.
    pub limit_key: String,
}

impl SourceConfig {
    /// The AuthInfo document as a JSON object.
    pub fn auth(&self) -> Result<Map<String, Value>, ModelError> {
        parse_auth(&self.id, &self.auth_info)
    }

    /// The credentials, opened with the keyring.
    pub fn credentials(&self, keyring: Option<&Keyring>) -> Result<Credentials, ModelError> {
        Ok(secrets::open_credentials(&self.auth()?, &self.id, keyring)?)
    }

    /// The vendor Payload as a JSON object (`{}` when empty).
    pub fn payload(&self) -> Result<Map<String, Value>, ModelError> {
        if self.payload.trim().is_empty() {
            return Ok(Map::new());
        }
        match serde_json::from_str(&self.payload) {
            Ok(Value::Object(m)) => Ok(m),
            Ok(_) => Err(ModelError::invalid(
                format!("SourceConfig {} Payload", self.id),
                "is not a JSON object",
            )),
            Err(e) => Err(ModelError::invalid(
                format!("SourceConfig {} Payload", self.id),
                e.to_string(),
            )),
        }
    }

    pub fn vendor(&self) -> Result<Vendor, ModelError> {
        Vendor::parse(self.source.as_deref().unwrap_or_default())
    }

    pub fn limits(&self) -> Result<SourceLimits, ModelError> {
        limits_from_auth(&self.id, &self.auth()?)
    }
}

fn parse_auth(id: &str, text: &str) -> Result<Map<String, Value>, ModelError> {
    match serde_json::from_str(text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(secrets::SecretsError::BadAuthInfo {
            source_config: id.to_string(),
            reason: "not an object".into(),
        }
        .into()),
        Err(e) => Err(secrets::SecretsError::BadAuthInfo {
            source_config: id.to_string(),
            reason: e.to_string(),
        }
        .into()),
    }
}

/// Reads `Delay`, `Concurrency`, `Retries` and `LimitKey` from an AuthInfo object.
pub fn limits_from_auth(id: &str, auth: &Map<String, Value>) -> Result<SourceLimits, ModelError> {
    let number = |key: &str| -> Result<Option<u64>, ModelError> {
        match auth.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| {
                ModelError::invalid(
                    format!("SourceConfig {id} AuthInfo.{key}"),
                    format!("{v} is not a whole number >= 0"),
                )
            }),
        }
    };
    let concurrency = match number("Concurrency")? {
        None => None,
        Some(0) => {
            return Err(ModelError::invalid(
                format!("SourceConfig {id} AuthInfo.Concurrency"),
                "0 would allow no request; use 1 or more",
            ))
        }
        Some(n) => Some(u32::try_from(n).unwrap_or(u32::MAX)),
    };
    Ok(SourceLimits {
        delay: Duration::from_nanos(number("Delay")?.unwrap_or(0)),
        concurrency,
        retries: u32::try_from(number("Retries")?.unwrap_or(0)).unwrap_or(u32::MAX),
        limit_key: auth
            .get("LimitKey")
            .and_then(Value::as_str)
            .filter(|s| !s.trim().is_empty())
            .map(str::to_string)
            .unwrap_or_else(|| id.to_string()),
    })
}

/// What `aegis source add` inserts.
#[derive(Clone, Debug)]
pub struct NewSourceConfig {
    pub org_code: String,
    pub vendor: Vendor,
    pub address: String,
    pub port: Option<u16>,
    pub username: String,
    pub password: secrets::Secret,
    pub token: secrets::Secret,
    pub delay_ns: u64,
    pub concurrency: u32,
    pub retries: u32,
    pub verify_tls: bool,
    pub limit_key: Option<String>,
    pub payload: Map<String, Value>,
    pub created_by: String,
}

/// Validates, seals and inserts a source config. Returns the new row and the
/// number of credential fields left in plaintext (no keyring configured).
pub async fn create(
    tx: &mut Transaction<'_, MySql>,
    new: &NewSourceConfig,
    keyring: Option<&Keyring>,
) -> Result<(SourceConfig, usize), ModelError> {
    let address = new.address.trim().trim_end_matches('/').to_string();
    let url = reqwest::Url::parse(&address).map_err(|e| {
        ModelError::invalid(
            "address",
            format!("{address:?} is not a URL such as https://jira.example.com ({e})"),
        )
    })?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(ModelError::invalid(
            "address",
            format!("{address:?} must start with https:// or http://"),
        ));
    }
    if new.username.trim().is_empty() && new.token.is_empty() {
        return Err(ModelError::invalid(
            "username",
            "a username (or a JIRA token) is required",
        ));
    }
    if new.concurrency == 0 {
        return Err(ModelError::invalid(
            "concurrency",
            "must be at least 1 request in flight",
        ));
    }
    new.vendor.validate_payload(&new.payload)?;

    let org = sqlx::query_as::<_, (String,)>("SELECT ID FROM Organization WHERE Code = ?")
        .bind(super::organization::normalise_code(&new.org_code)?)
        .fetch_optional(&mut **tx)
        .await?
        .ok_or_else(|| ModelError::NotFound {
            what: "organization",
            key: new.org_code.clone(),
        })?
        .0;
    let source_id = sqlx::query_as::<_, (String,)>("SELECT ID FROM Source WHERE Source = ?")
        .bind(new.vendor.source_name())
        .fetch_optional(&mut **tx)
        .await?
        .ok_or_else(|| ModelError::NotFound {
            what: "Source row (run `aegis migrate`)",
            key: new.vendor.source_name().into(),
        })?
        .0;

    let id = uuid::Uuid::new_v4().to_string();
    let mut auth = Map::new();
    auth.insert("Username".into(), new.username.trim().into());
    auth.insert("Password".into(), new.password.expose().into());
    auth.insert("PrivateKey".into(), "".into());
    auth.insert("ConsumerKey".into(), "".into());
    auth.insert("Token".into(), new.token.expose().into());
    auth.insert("Host".into(), address.clone().into());
    auth.insert("Port".into(), new.port.unwrap_or(0).into());
    auth.insert("VerifyTLS".into(), new.verify_tls.into());
    auth.insert("Delay".into(), new.delay_ns.into());
    auth.insert("Concurrency".into(), new.concurrency.into());
    auth.insert("Retries".into(), new.retries.into());
    if let Some(k) = &new.limit_key {
        auth.insert("LimitKey".into(), k.clone().into());
    }
    let plaintext = secrets::seal_auth_info(&mut auth, &id, keyring);
    let auth_text = Value::Object(auth).to_string();
    let payload_text = Value::Object(new.payload.clone()).to_string();
    let port = new.port.map(|p| p.to_string());

    sqlx::query(
        "INSERT INTO SourceConfig (ID, Source, SourceID, OrganizationID, Address, Port, AuthInfo, Payload, UpdatedBy, DBCreatedDate)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, UTC_TIMESTAMP(3))",
    )
    .bind(&id)
    .bind(new.vendor.source_name())
    .bind(&source_id)
    .bind(&org)
    .bind(&address)
    .bind(&port)
    .bind(&auth_text)
    .bind(&payload_text)
    .bind(&new.created_by)
    .execute(&mut **tx)
    .await?;

    Ok((
        SourceConfig {
            id,
            source: Some(new.vendor.source_name().into()),
            source_id: Some(source_id),
            organization_id: Some(org),
            address: Some(address),
            port,
            auth_info: auth_text,
            payload: payload_text,
            active: true,
        },
        plaintext,
    ))
}

const COLUMNS: &str =
    "ID, Source, SourceID, OrganizationID, Address, Port, AuthInfo, Payload, Active";

pub async fn by_id(pool: &MySqlPool, id: &str) -> Result<SourceConfig, ModelError> {
    sqlx::query_as::<_, SourceConfig>(&format!("SELECT {COLUMNS} FROM SourceConfig WHERE ID = ?"))
        .bind(id)
        .fetch_optional(pool)
        .await?
        .ok_or_else(|| ModelError::NotFound {
            what: "source config",
            key: id.to_string(),
        })
}

/// Source configs of one organization (all when `org_id` is `None`).
pub async fn list(pool: &MySqlPool, org_id: Option<&str>) -> Result<Vec<SourceConfig>, ModelError> {
    let rows = match org_id {
        Some(org) => {
            sqlx::query_as::<_, SourceConfig>(&format!(
                "SELECT {COLUMNS} FROM SourceConfig WHERE OrganizationID = ? ORDER BY Source, DBCreatedDate"
            ))
            .bind(org)
            .fetch_all(pool)
            .await?
        }
        None => {
            sqlx::query_as::<_, SourceConfig>(&format!("SELECT {COLUMNS} FROM SourceConfig ORDER BY OrganizationID, Source"))
                .fetch_all(pool)
                .await?
        }
    };
    Ok(rows)
}

/// What `aegis secrets rotate` did.
#[derive(Debug, Default, PartialEq, Eq, Serialize)]
pub struct RotateReport {
    pub source_configs: usize,
    pub fields_resealed: usize,
    pub plaintext_sealed: usize,
}

/// Re-seals every credential of every SourceConfig under the keyring's active
/// key (opening old values with any key of the ring), and seals plaintext ones.
/// One transaction: either every row is rotated or none is.
pub async fn rotate_secrets(
    pool: &MySqlPool,
    keyring: &Keyring,
) -> Result<RotateReport, ModelError> {
    let mut tx = pool.begin().await?;
    let rows =
        sqlx::query_as::<_, (String, String)>("SELECT ID, AuthInfo FROM SourceConfig FOR UPDATE")
            .fetch_all(&mut *tx)
            .await?;
    let mut report = RotateReport::default();
    for (id, text) in rows {
        let mut auth = parse_auth(&id, &text)?;
        let mut changed = false;
        for field in secrets::SECRET_FIELDS {
            let value = match auth.get(field).and_then(Value::as_str) {
                Some(v) if !v.is_empty() => v.to_string(),
                _ => continue,
            };
            let plain = if secrets::is_sealed(&value) {
                if secrets::sealed_key_id(&value) == Some(keyring.active_key_id()) {
                    continue;
                }
                report.fields_resealed += 1;
                keyring.open(&id, field, &value)?
            } else {
                report.plaintext_sealed += 1;
                secrets::Secret::new(value)
            };
            auth.insert(
                field.into(),
                keyring.seal(&id, field, plain.expose()).into(),
            );
            changed = true;
        }
        if changed {
            report.source_configs += 1;
            sqlx::query("UPDATE SourceConfig SET AuthInfo = ?, DBUpdatedDate = UTC_TIMESTAMP(3), UpdatedBy = 'aegis secrets rotate' WHERE ID = ?")
                .bind(Value::Object(auth).to_string())
                .bind(&id)
                .execute(&mut *tx)
                .await?;
        }
    }
    tx.commit().await?;
    Ok(report)
}

/// How many SourceConfig rows hold sealed values; a process without a keyring
/// refuses to start when this is not zero.
pub async fn count_sealed(pool: &MySqlPool) -> Result<i64, ModelError> {
    Ok(
        sqlx::query_scalar("SELECT COUNT(*) FROM SourceConfig WHERE AuthInfo LIKE '%\"aegis:v1:%'")
            .fetch_one(pool)
            .await?,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(text: &str) -> Map<String, Value> {
        serde_json::from_str(text).expect("json")
    }

    #[test]
    fn limits_read_delay_in_nanoseconds_and_default_the_limit_key() {
        let l = limits_from_auth(
            "sc1",
            &auth(r#"{"Delay":100000000,"Concurrency":4,"Retries":2}"#),
        )
        .expect("ok");
        assert_eq!(l.delay, Duration::from_millis(100));
        assert_eq!(l.concurrency, Some(4));
        assert_eq!(l.retries, 2);
        assert_eq!(l.limit_key, "sc1");
        let l = limits_from_auth("sc1", &auth(r#"{"LimitKey":"acct"}"#)).expect("ok");
        assert_eq!(l.delay, Duration::ZERO);
        assert_eq!(l.concurrency, None);
        assert_eq!(l.limit_key, "acct");
        assert!(limits_from_auth("sc1", &auth(r#"{"Concurrency":0}"#)).is_err());
        assert!(limits_from_auth("sc1", &auth(r#"{"Delay":"fast"}"#)).is_err());
    }

    #[test]
    fn vendor_payloads_are_checked_by_key() {
        let e = Vendor::Jira
            .validate_payload(&auth("{}"))
            .expect_err("project required");
        assert!(e.to_string().contains("payload.project"));
        Vendor::Jira
            .validate_payload(&auth(r#"{"project":"VULN"}"#))
            .expect("ok");
        let e = Vendor::Qualys
            .validate_payload(&auth(r#"{"groups":"all"}"#))
            .expect_err("bad groups");
        assert!(e.to_string().contains("payload.groups"));
        Vendor::Qualys
            .validate_payload(&auth(r#"{"groups":[1,"2"],"optionProfileId":5}"#))
            .expect("ok");
        assert!(Vendor::parse("servicenow").is_err());
    }
}

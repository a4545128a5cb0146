//! JIRA REST API v2 client (Server / Data Center and Cloud), the
//! [`TicketEngine`] the ticketing jobs use.
//!
//! Built from the JIRA SourceConfig: [`JiraClient::connect`] takes the job's
//! rate-limited [`SourceClient`] (every request goes through it: fleet-wide
//! Delay/Concurrency, retries of idempotent requests, `Retry-After`), reads the
//! Payload (`project`, `status_map`, `field_map`, `transition_map`, and the
//! optional `issue_type`, `link_type`, `page_size`, `cloud`,
//! `jql_time_offset_minutes`) and loads the field catalogue, so custom fields are
//! found by display name (the default ticket schema of spec §14).
//!
//! * Searches follow the page size the server returns (a server capping
//!   `maxResults` at 100 loses nothing) and stop with an error when a server
//!   does not advance.
//! * Transitions are resolved through the workflow: the transitions the issue
//!   offers now (`GET …/transitions`), hop by hop, using `transition_map` only to
//!   choose the next hop when no offered transition leads to the target.
//! * Errors quote JIRA's own `errorMessages` and `errors`.
//!
//! Authentication: Basic (Username/Password) or a bearer personal access
//! token (Token without Username), both set by the SourceClient, or OAuth 1.0a
//! RSA-SHA1 (`PrivateKey` + `ConsumerKey`, access token in `Token`), signed
//! here per request ([`oauth`]).

pub mod dates;
pub mod jql;
pub mod oauth;
#[cfg(test)]
mod sim_tests;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Mutex;

use aegis_shared::model::source_config::SourceConfig;
use aegis_shared::secrets::Keyring;
use aegis_shared::source_http::{RequestSpec, SourceClient, SourceHttpError, SourceResponse};
use futures::future::BoxFuture;
use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
use reqwest::{Method, StatusCode, Url};
use serde_json::{json, Map, Value};

use self::jql::{Field, Query};
use super::ticketing::{
    field, CreatedTicket, FieldValue, NewTicket, Ticket, TicketEngine, TicketResult,
    TransitionOptions, User,
};

/// Why a JIRA operation failed. JIRA's own messages are quoted.
#[derive(Debug, thiserror::Error)]
pub enum TicketError {
    #[error("JIRA SourceConfig {source_config}: {reason}")]
    Config {
        source_config: String,
        reason: String,
    },
    #[error(transparent)]
    Http(Box<SourceHttpError>),
    #[error("JIRA answered {status} to {method} {path}: {message}")]
    Jira {
        method: Method,
        path: String,
        status: u16,
        message: String,
    },
    #[error("JIRA's answer to {what} is not what JIRA documents: {reason}")]
    Decode { what: String, reason: String },
    #[error("the JIRA project has no field named {0:?} (check field_map in the JIRA SourceConfig payload)")]
    UnknownField(String),
    #[error("{0:?} is not a JIRA issue key")]
    BadKey(String),
    #[error("no transition of {key} leads from {from:?} towards {to:?}; JIRA offers: {offered}")]
    TransitionUnavailable {
        key: String,
        from: String,
        to: String,
        offered: String,
    },
}

impl From<SourceHttpError> for TicketError {
    fn from(e: SourceHttpError) -> Self {
        TicketError::Http(Box::new(e))
    }
}

impl TicketError {
    /// True when a non-idempotent request may or may not have taken effect
    /// (no response, a 5xx, a 429): search before trying again.
    pub fn is_ambiguous(&self) -> bool {
        match self {
            TicketError::Http(e) => matches!(
                **e,
                SourceHttpError::Transport { .. }
                    | SourceHttpError::Body { .. }
                    | SourceHttpError::Decode { .. }
            ),
            TicketError::Jira { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }

    /// The HTTP status JIRA answered, when it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            TicketError::Jira { status, .. } => Some(*status),
            TicketError::Http(e) => match **e {
                SourceHttpError::Status { status, .. } => Some(status.as_u16()),
                _ => None,
            },
            _ => None,
        }
    }

    fn jira(method: Method, path: &str, status: StatusCode, body: &str) -> TicketError {
        TicketError::Jira {
            method,
            path: path.to_string(),
            status: status.as_u16(),
            message: jira_message(body),
        }
    }
}

/// JIRA's `{"errorMessages":[…],"errors":{field: msg}}` as one line; the start
/// of the body when it is something else.
fn jira_message(body: &str) -> String {
    if let Ok(Value::Object(o)) = serde_json::from_str::<Value>(body) {
        let mut parts: Vec<String> = o
            .get("errorMessages")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        if let Some(errors) = o.get("errors").and_then(Value::as_object) {
            for (k, v) in errors {
                parts.push(format!(
                    "{k}: {}",
                    v.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| v.to_string())
                ));
            }
        }
        if !parts.is_empty() {
            return parts.join("; ");
        }
    }
    let text: String = body.chars().take(300).collect();
    if text.trim().is_empty() {
        "(empty body)".into()
    } else {
        text
    }
}

/// A field of the catalogue (`GET /rest/api/2/field`).
#[derive(Clone, Debug)]
struct FieldDef {
    id: String,
    /// Display name as JIRA spells it.
    name: String,
    custom_id: Option<u64>,
    /// `schema.type`: string, option, group, user, date, datetime, number, array, …
    kind: String,
    /// `schema.items` for arrays.
    items: String,
}

/// The JIRA SourceConfig Payload.
#[derive(Clone, Debug)]
struct Settings {
    project: String,
    status_map: HashMap<String, String>,
    field_map: HashMap<String, String>,
    /// from (lower) → to (lower) → transitions (id, name) in order.
    transition_map: HashMap<String, HashMap<String, Vec<(String, String)>>>,
    issue_type: String,
    link_type: String,
    page_size: u32,
    cloud: bool,
    jql_time_offset_minutes: i32,
}

impl Settings {
    fn parse(sc: &SourceConfig) -> Result<Settings, TicketError> {
        let err = |reason: String| TicketError::Config {
            source_config: sc.id.clone(),
            reason,
        };
        let p = sc.payload().map_err(|e| err(e.to_string()))?;
        let project = p
            .get("project")
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                err("the payload has no \"project\" key (e.g. {\"project\":\"VULN\"})".into())
            })?
            .to_string();
        let string_map = |key: &str| -> HashMap<String, String> {
            p.get(key)
                .and_then(Value::as_object)
                .map(|m| {
                    m.iter()
                        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                        .collect()
                })
                .unwrap_or_default()
        };
        let status_map = string_map("status_map")
            .into_iter()
            .map(|(k, v)| (k.to_lowercase(), v))
            .collect();
        let field_map = string_map("field_map");
        let mut transition_map: HashMap<String, HashMap<String, Vec<(String, String)>>> =
            HashMap::new();
        if let Some(m) = p.get("transition_map").and_then(Value::as_object) {
            for (from, tos) in m {
                let Some(tos) = tos.as_object() else { continue };
                for (to, steps) in tos {
                    let steps: Vec<(String, String)> = steps
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|s| {
                                    let id = match s.get("id")? {
                                        Value::String(s) => s.clone(),
                                        v => v.to_string(),
                                    };
                                    let name = s
                                        .get("name")
                                        .and_then(Value::as_str)
                                        .unwrap_or_default()
                                        .to_string();
                                    Some((id, name))
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    transition_map
                        .entry(from.to_lowercase())
                        .or_default()
                        .insert(to.to_lowercase(), steps);
                }
            }
        }
        let text = |key: &str, default: &str| {
            p.get(key)
                .and_then(Value::as_str)
                .filter(|s| !s.trim().is_empty())
                .unwrap_or(default)
                .to_string()
        };
        Ok(Settings {
            project,
            status_map,
            field_map,
            transition_map,
            issue_type: text("issue_type", "Request"),
            link_type: text("link_type", "Related"),
            page_size: p
                .get("page_size")
                .and_then(Value::as_u64)
                .map(|n| n.clamp(1, 1000) as u32)
                .unwrap_or(1000),
            cloud: p.get("cloud").and_then(Value::as_bool).unwrap_or(false),
            jql_time_offset_minutes: p
                .get("jql_time_offset_minutes")
                .and_then(Value::as_i64)
                .map(|n| n.clamp(-24 * 60, 24 * 60) as i32)
                .unwrap_or(0),
        })
    }
}

/// A transition an issue offers now.
#[derive(Clone, Debug)]
struct Offered {
    id: String,
    name: String,
    to: String,
    /// Field ids on the transition screen.
    screen: HashSet<String>,
}

/// The JIRA client of one job run.
pub struct JiraClient {
    http: SourceClient,
    settings: Settings,
    /// Catalogue by lower-case display name.
    fields: HashMap<String, FieldDef>,
    /// Custom field id → Aegis field name.
    aegis_by_id: HashMap<String, String>,
    issue_type: Value,
    users: Mutex<HashMap<String, Option<User>>>,
    /// Set for OAuth 1.0a: signs each request against `base`.
    oauth: Option<(oauth::OAuthSigner, Url)>,
}

const FIELD_PATH: &str = "/rest/api/2/field";
const ISSUETYPE_PATH: &str = "/rest/api/2/issuetype";
const SEARCH_PATH: &str = "/rest/api/2/search";
const ISSUE_PATH: &str = "/rest/api/2/issue";
const ISSUE_KEY_PATH: &str = "/rest/api/2/issue/{key}";

impl JiraClient {
    /// Reads the payload and loads the field catalogue and issue types.
    pub async fn connect(
        http: SourceClient,
        sc: &SourceConfig,
        keyring: Option<&Keyring>,
    ) -> Result<JiraClient, TicketError> {
        let settings = Settings::parse(sc)?;
        let config_err = |reason: String| TicketError::Config {
            source_config: sc.id.clone(),
            reason,
        };
        let creds = sc
            .credentials(keyring)
            .map_err(|e| config_err(e.to_string()))?;
        let oauth = if !creds.private_key.is_empty() && !creds.consumer_key.is_empty() {
            let signer = oauth::OAuthSigner::new(
                creds.consumer_key.expose(),
                creds.private_key.expose(),
                creds.token.expose(),
            )
            .map_err(config_err)?;
            let address = sc
                .address
                .as_deref()
                .unwrap_or_default()
                .trim()
                .trim_end_matches('/');
            let mut base =
                Url::parse(address).map_err(|e| config_err(format!("Address {address:?}: {e}")))?;
            if let Some(port) = sc
                .port
                .as_deref()
                .and_then(|p| p.trim().parse::<u16>().ok())
            {
                if base.port().is_none() {
                    let _ = base.set_port(Some(port));
                }
            }
            Some((signer, base))
        } else {
            None
        };
        let mut client = JiraClient {
            http,
            settings,
            fields: HashMap::new(),
            aegis_by_id: HashMap::new(),
            issue_type: Value::Null,
            users: Mutex::new(HashMap::new()),
            oauth,
        };
        let catalogue: Vec<Value> = client.get_json(FIELD_PATH, FIELD_PATH).await?;
        for f in catalogue {
            let (Some(id), Some(name)) = (
                f.get("id").and_then(Value::as_str),
                f.get("name").and_then(Value::as_str),
            ) else {
                continue;
            };
            let schema = f.get("schema");
            let def = FieldDef {
                id: id.to_string(),
                name: name.to_string(),
                custom_id: schema
                    .and_then(|s| s.get("customId"))
                    .and_then(Value::as_u64),
                kind: schema
                    .and_then(|s| s.get("type"))
                    .and_then(Value::as_str)
                    .unwrap_or("string")
                    .to_string(),
                items: schema
                    .and_then(|s| s.get("items"))
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
            };
            client.fields.entry(name.to_lowercase()).or_insert(def);
        }
        // Aegis name → JIRA name (field_map, identity by default), inverted for reading.
        let mut by_id = HashMap::new();
        for (jira_name, def) in &client.fields {
            if def.custom_id.is_none() {
                continue;
            }
            let aegis = client
                .settings
                .field_map
                .iter()
                .find(|(a, j)| j.to_lowercase() == *jira_name && **a != def.name)
                .map(|(a, _)| a.clone());
            by_id.insert(def.id.clone(), aegis.unwrap_or_else(|| def.name.clone()));
        }
        client.aegis_by_id = by_id;
        let types: Vec<Value> = client.get_json(ISSUETYPE_PATH, ISSUETYPE_PATH).await?;
        let wanted = client.settings.issue_type.to_lowercase();
        client.issue_type = types
            .into_iter()
            .find(|t| {
                t.get("name").and_then(Value::as_str).map(str::to_lowercase) == Some(wanted.clone())
            })
            .and_then(|t| t.get("id").cloned())
            .map(|id| json!({ "id": id }))
            .ok_or_else(|| TicketError::Config {
                source_config: sc.id.clone(),
                reason: format!(
                    "JIRA has no issue type named {:?} (payload issue_type)",
                    client.settings.issue_type
                ),
            })?;
        Ok(client)
    }

    /// The catalogue entry for an Aegis field name.
    fn field_def(&self, aegis: &str) -> Option<&FieldDef> {
        let jira_name = self
            .settings
            .field_map
            .get(aegis)
            .map(String::as_str)
            .unwrap_or(aegis);
        self.fields
            .get(&jira_name.to_lowercase())
            .or_else(|| self.fields.get(&aegis.to_lowercase()))
    }

    fn resolve(&self, f: &Field) -> Result<String, TicketError> {
        match f {
            Field::System(s) => Ok((*s).to_string()),
            Field::Aegis(name) => {
                let def = self
                    .field_def(name)
                    .ok_or_else(|| TicketError::UnknownField(name.clone()))?;
                Ok(match def.custom_id {
                    Some(id) => format!("cf[{id}]"),
                    None => def.id.clone(),
                })
            }
        }
    }

    /// The JQL text of a query (for logs and tests).
    pub fn render(&self, q: &Query) -> Result<String, TicketError> {
        q.render(&|f| self.resolve(f), self.settings.jql_time_offset_minutes)
    }

    async fn call(&self, spec: RequestSpec) -> Result<SourceResponse, TicketError> {
        let (method, path) = (spec.method.clone(), spec.path_template.clone());
        let mut spec = spec.header(
            reqwest::header::ACCEPT,
            reqwest::header::HeaderValue::from_static("application/json"),
        );
        if let Some((signer, base)) = &self.oauth {
            // The URL the source client will send to (same joining rule).
            let mut url = base.clone();
            let path = format!(
                "{}/{}",
                base.path().trim_end_matches('/'),
                spec.url_path.trim_start_matches('/')
            );
            url.set_path(&path);
            if !spec.query.is_empty() {
                url.query_pairs_mut().extend_pairs(spec.query.iter());
            }
            let mut value =
                reqwest::header::HeaderValue::from_str(&signer.header(&spec.method, &url))
                    .map_err(|e| TicketError::Decode {
                        what: "the OAuth header".into(),
                        reason: e.to_string(),
                    })?;
            value.set_sensitive(true);
            spec = spec.header(reqwest::header::AUTHORIZATION, value);
        }
        let resp = self.http.send(spec).await?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        Err(TicketError::jira(method, &path, status, &body))
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        template: &str,
        path: &str,
    ) -> Result<T, TicketError> {
        Ok(self
            .call(RequestSpec::get(template, path))
            .await?
            .json()
            .await?)
    }

    async fn send_json(
        &self,
        method: Method,
        template: &str,
        path: &str,
        body: &Value,
    ) -> Result<SourceResponse, TicketError> {
        let spec = RequestSpec::new(method, template, path)
            .json(body)
            .map_err(|e| TicketError::Decode {
                what: "a request body".into(),
                reason: e.to_string(),
            })?;
        self.call(spec).await
    }

    /// A field value in the shape its type takes on write.
    fn write_value(&self, def: &FieldDef, value: &FieldValue) -> Option<Value> {
        let text = match value {
            FieldValue::Clear => return Some(Value::Null),
            FieldValue::Text(s) => s.clone(),
            FieldValue::Date(d) => dates::format_date(*d),
            FieldValue::DateTime(t) => {
                if def.kind == "date" {
                    dates::format_date(t.date_naive())
                } else {
                    dates::format_datetime(*t)
                }
            }
            FieldValue::Number(n) => format!("{n:.1}"),
        };
        Some(match def.kind.as_str() {
            "string" | "date" | "datetime" | "any" => Value::String(text),
            "number" => match value {
                FieldValue::Number(n) => json!(n),
                _ => json!(text.parse::<f64>().ok()?),
            },
            "group" => json!({ "name": text }),
            "user" if self.settings.cloud => json!({ "accountId": text }),
            "user" => json!({ "name": text }),
            "array" if def.items == "string" => json!(text
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()),
            "array" if def.items == "group" => json!([{ "name": text }]),
            "array" => json!([{ "value": text }]),
            _ => json!({ "value": text }),
        })
    }

    fn parse_ticket(&self, issue: &Value) -> Result<Ticket, TicketError> {
        let key = issue
            .get("key")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if key.is_empty() {
            return Err(TicketError::Decode {
                what: "an issue".into(),
                reason: "no \"key\"".into(),
            });
        }
        let empty = Map::new();
        let f = issue
            .get("fields")
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        let text_at = |v: Option<&Value>| v.map(value_text).filter(|s| !s.is_empty());
        let mut ticket = Ticket {
            key,
            id: match issue.get("id") {
                Some(Value::String(s)) => s.clone(),
                Some(v) => v.to_string(),
                None => String::new(),
            },
            status: f
                .get("status")
                .and_then(|s| s.get("name"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            summary: f
                .get("summary")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            assignee: f.get("assignee").filter(|a| !a.is_null()).and_then(|a| {
                ["name", "accountId", "displayName"]
                    .iter()
                    .find_map(|k| a.get(*k).and_then(Value::as_str))
                    .map(str::to_string)
            }),
            labels: f
                .get("labels")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default(),
            created: text_at(f.get("created")).and_then(|s| dates::parse_any(&s)),
            updated: text_at(f.get("updated")).and_then(|s| dates::parse_any(&s)),
            due_date: text_at(f.get("duedate")).and_then(|s| dates::parse_date(&s)),
            resolution_date: text_at(f.get("resolutiondate")).and_then(|s| dates::parse_any(&s)),
            linked: f
                .get("issuelinks")
                .and_then(Value::as_array)
                .map(|links| {
                    links
                        .iter()
                        .filter_map(|l| {
                            l.get("outwardIssue")
                                .or_else(|| l.get("inwardIssue"))?
                                .get("key")?
                                .as_str()
                                .map(str::to_string)
                        })
                        .collect()
                })
                .unwrap_or_default(),
            fields: BTreeMap::new(),
        };
        for (id, v) in f {
            if let Some(aegis) = self.aegis_by_id.get(id) {
                let t = value_text(v);
                if !t.is_empty() {
                    ticket.fields.insert(aegis.clone(), t);
                }
            }
        }
        if ticket.resolution_date.is_none() {
            ticket.resolution_date = ticket.field_time(field::RESOLUTION_DATE);
        }
        Ok(ticket)
    }

    async fn offered_transitions(&self, key: &str) -> Result<Vec<Offered>, TicketError> {
        let path = format!("/rest/api/2/issue/{key}/transitions");
        let spec = RequestSpec::get("/rest/api/2/issue/{key}/transitions", path)
            .query("expand", "transitions.fields");
        let v: Value = self.call(spec).await?.json().await?;
        let list = v
            .get("transitions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        Ok(list
            .iter()
            .filter_map(|t| {
                Some(Offered {
                    id: match t.get("id")? {
                        Value::String(s) => s.clone(),
                        v => v.to_string(),
                    },
                    name: t
                        .get("name")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string(),
                    to: t
                        .get("to")
                        .and_then(|to| to.get("name"))
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string(),
                    screen: t
                        .get("fields")
                        .and_then(Value::as_object)
                        .map(|m| m.keys().cloned().collect())
                        .unwrap_or_default(),
                })
            })
            .collect())
    }

    /// The first transition id of the shortest `transition_map` path from
    /// `from` to `to` (breadth-first over the map).
    fn next_hop(&self, from: &str, to: &str) -> Option<String> {
        let (from, to) = (from.to_lowercase(), to.to_lowercase());
        let map = &self.settings.transition_map;
        let mut seen = HashSet::from([from.clone()]);
        let mut queue = VecDeque::from([(from, None::<String>)]);
        while let Some((status, first)) = queue.pop_front() {
            let Some(edges) = map.get(&status) else {
                continue;
            };
            for (next, steps) in edges {
                let Some((id, _)) = steps.first() else {
                    continue;
                };
                let first = first.clone().unwrap_or_else(|| id.clone());
                if *next == to {
                    return Some(first);
                }
                if seen.insert(next.clone()) {
                    queue.push_back((next.clone(), Some(first)));
                }
            }
        }
        None
    }

    async fn status_of(&self, key: &str) -> Result<String, TicketError> {
        let spec = RequestSpec::get(ISSUE_KEY_PATH, format!("{ISSUE_PATH}/{key}"))
            .query("fields", "status");
        let v: Value = self.call(spec).await?.json().await?;
        Ok(v.pointer("/fields/status/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string())
    }

    async fn user(&self, name: &str) -> Result<Option<User>, TicketError> {
        if let Some(u) = self.users.lock().map_err(|_| poisoned())?.get(name) {
            return Ok(u.clone());
        }
        let found = if self.settings.cloud {
            let spec = RequestSpec::get("/rest/api/2/user/search", "/rest/api/2/user/search")
                .query("query", name);
            let list: Vec<Value> = self.call(spec).await?.json().await?;
            list.iter()
                .find(|u| {
                    ["name", "displayName", "emailAddress", "accountId"]
                        .iter()
                        .any(|k| {
                            u.get(*k)
                                .and_then(Value::as_str)
                                .is_some_and(|v| v.eq_ignore_ascii_case(name))
                        })
                })
                .map(parse_user)
        } else {
            let spec =
                RequestSpec::get("/rest/api/2/user", "/rest/api/2/user").query("username", name);
            match self.call(spec).await {
                Ok(resp) => Some(parse_user(&resp.json::<Value>().await?)),
                Err(e) if e.status() == Some(404) => None,
                Err(e) => return Err(e),
            }
        };
        self.users
            .lock()
            .map_err(|_| poisoned())?
            .insert(name.to_string(), found.clone());
        Ok(found)
    }

    fn user_ref(&self, u: &User) -> Value {
        if self.settings.cloud && !u.account_id.is_empty() {
            json!({ "accountId": u.account_id })
        } else {
            json!({ "name": u.name })
        }
    }

    async fn create_ticket(&self, t: &NewTicket) -> Result<CreatedTicket, TicketError> {
        let mut fields = Map::new();
        fields.insert("project".into(), json!({ "key": self.settings.project }));
        fields.insert("issuetype".into(), self.issue_type.clone());
        fields.insert("summary".into(), Value::String(truncate(&t.summary, 255)));
        fields.insert("description".into(), Value::String(t.description.clone()));
        if let Some(d) = t.due_date {
            fields.insert("duedate".into(), Value::String(dates::format_date(d)));
        }
        if !t.labels.is_empty() {
            fields.insert("labels".into(), json!(t.labels));
        }
        if let Some(name) = t.assignee.as_deref().filter(|a| !a.is_empty()) {
            match self.user(name).await? {
                Some(u) => {
                    fields.insert("assignee".into(), self.user_ref(&u));
                }
                None => tracing::warn!(
                    assignee = name,
                    "JIRA does not know the assignee; the ticket is created unassigned"
                ),
            }
        }
        for (name, value) in &t.fields {
            if matches!(value, FieldValue::Text(s) if s.is_empty()) {
                continue;
            }
            let Some(def) = self.field_def(name) else {
                tracing::debug!(field = %name, "the JIRA project has no such field; skipped");
                continue;
            };
            if let Some(v) = self.write_value(def, value) {
                fields.insert(def.id.clone(), v);
            }
        }
        let resp = self
            .send_json(
                Method::POST,
                ISSUE_PATH,
                ISSUE_PATH,
                &json!({ "fields": fields }),
            )
            .await?;
        let v: Value = resp.json().await?;
        let key = v
            .get("key")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if key.is_empty() {
            return Err(TicketError::Decode {
                what: "issue creation".into(),
                reason: "no \"key\"".into(),
            });
        }
        let id = match v.get("id") {
            Some(Value::String(s)) => s.clone(),
            Some(v) => v.to_string(),
            None => String::new(),
        };
        Ok(CreatedTicket { key, id })
    }

    async fn transition_ticket(
        &self,
        key: &str,
        aegis_status: &str,
        o: TransitionOptions,
    ) -> Result<(), TicketError> {
        let target = self.status_name(aegis_status);
        let resolution_date = self.field_def(field::RESOLUTION_DATE).map(|d| d.id.clone());
        let expiration = self
            .field_def(field::EXCEPTION_EXPIRATION)
            .map(|d| (d.id.clone(), d.kind.clone()));
        let reopen_reason = self.field_def(field::REOPEN_REASON).map(|d| d.id.clone());
        for _hop in 0..8 {
            let current = self.status_of(key).await?;
            if current.eq_ignore_ascii_case(&target) {
                return Ok(());
            }
            let offered = self.offered_transitions(key).await?;
            let pick = offered
                .iter()
                .find(|t| t.to.eq_ignore_ascii_case(&target))
                .or_else(|| {
                    let id = self.next_hop(&current, &target)?;
                    offered.iter().find(|t| t.id == id)
                });
            let Some(pick) = pick else {
                return Err(TicketError::TransitionUnavailable {
                    key: key.into(),
                    from: current,
                    to: target,
                    offered: offered
                        .iter()
                        .map(|t| format!("{} ({}) → {}", t.name, t.id, t.to))
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            };
            let last = pick.to.eq_ignore_ascii_case(&target);
            let mut fields = Map::new();
            if let Some(a) = o
                .assignee
                .as_deref()
                .filter(|a| !a.is_empty() && pick.screen.contains("assignee"))
            {
                if let Some(u) = self.user(a).await? {
                    fields.insert("assignee".into(), self.user_ref(&u));
                }
            }
            if let Some(id) = resolution_date
                .as_ref()
                .filter(|id| pick.screen.contains(*id))
            {
                fields.insert(
                    id.clone(),
                    Value::String(dates::format_datetime(chrono::Utc::now())),
                );
            }
            if let (Some((id, kind)), Some(t)) = (expiration.as_ref(), o.exception_expiration) {
                if pick.screen.contains(id) {
                    let v = if kind == "date" {
                        dates::format_date(t.date_naive())
                    } else {
                        dates::format_datetime(t)
                    };
                    fields.insert(id.clone(), Value::String(v));
                }
            }
            if let Some(id) = reopen_reason
                .as_ref()
                .filter(|id| pick.screen.contains(*id))
            {
                let reason = o
                    .comment
                    .clone()
                    .filter(|c| !c.is_empty())
                    .unwrap_or_else(|| "Reopened by Aegis".into());
                fields.insert(id.clone(), Value::String(reason));
            }
            let mut body = json!({ "transition": { "id": pick.id } });
            if !fields.is_empty() {
                body["fields"] = Value::Object(fields);
            }
            if let Some(c) = o.comment.as_deref().filter(|c| last && !c.is_empty()) {
                body["update"] = json!({ "comment": [{ "add": { "body": c } }] });
            }
            let path = format!("/rest/api/2/issue/{key}/transitions");
            self.send_json(
                Method::POST,
                "/rest/api/2/issue/{key}/transitions",
                &path,
                &body,
            )
            .await?;
        }
        Err(TicketError::TransitionUnavailable {
            key: key.into(),
            from: self.status_of(key).await.unwrap_or_default(),
            to: target,
            offered: "(gave up after 8 transitions)".into(),
        })
    }
}

fn poisoned() -> TicketError {
    TicketError::Decode {
        what: "the user cache".into(),
        reason: "a lock was poisoned".into(),
    }
}

fn parse_user(u: &Value) -> User {
    let s = |k: &str| {
        u.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    User {
        name: s("name"),
        account_id: s("accountId"),
        display_name: s("displayName"),
        active: u.get("active").and_then(Value::as_bool).unwrap_or(true),
    }
}

/// A field value as text: strings as they are, options by `value`, groups and
/// users by `name`, numbers in decimal, arrays comma-joined.
fn value_text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Array(a) => a
            .iter()
            .map(value_text)
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(","),
        Value::Object(o) => ["value", "name", "key", "accountId"]
            .iter()
            .find_map(|k| o.get(*k).map(value_text))
            .unwrap_or_default(),
    }
}

/// At most `max` characters, cut at a character boundary.
pub fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

/// True for `PROJ-123`: the only shape put into a URL path.
fn valid_key(key: &str) -> bool {
    let Some((project, number)) = key.rsplit_once('-') else {
        return false;
    };
    !project.is_empty()
        && project
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic())
        && project
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !number.is_empty()
        && number.chars().all(|c| c.is_ascii_digit())
}

fn check_key(key: &str) -> Result<(), TicketError> {
    if valid_key(key) {
        Ok(())
    } else {
        Err(TicketError::BadKey(key.to_string()))
    }
}

impl TicketEngine for JiraClient {
    fn project(&self) -> &str {
        &self.settings.project
    }

    fn status_name(&self, aegis_status: &str) -> String {
        self.settings
            .status_map
            .get(&aegis_status.to_lowercase())
            .cloned()
            .unwrap_or_else(|| aegis_status.to_string())
    }

    fn query(&self) -> Query {
        Query::new().eq(Field::PROJECT, self.settings.project.clone())
    }

    fn create<'a>(&'a self, ticket: &'a NewTicket) -> BoxFuture<'a, TicketResult<CreatedTicket>> {
        Box::pin(self.create_ticket(ticket))
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, TicketResult<Ticket>> {
        Box::pin(async move {
            check_key(key)?;
            let v: Value = self
                .get_json(ISSUE_KEY_PATH, &format!("{ISSUE_PATH}/{key}"))
                .await?;
            self.parse_ticket(&v)
        })
    }

    fn search<'a>(&'a self, query: Query) -> BoxStream<'a, TicketResult<Ticket>> {
        let jql = match self.render(&query) {
            Ok(j) => j,
            Err(e) => return stream::once(async move { Err(e) }).boxed(),
        };
        tracing::debug!(%jql, "JIRA search");
        // State: next startAt, keys already seen, finished.
        let pages = stream::try_unfold(
            (0u64, HashSet::<String>::new(), false),
            move |(start, mut seen, done)| {
                let jql = jql.clone();
                async move {
                    if done {
                        return Ok(None);
                    }
                    let body = json!({ "jql": jql, "startAt": start, "maxResults": self.settings.page_size });
                    // A search is a read: safe to retry after a 429 or 5xx.
                    let spec = RequestSpec::new(Method::POST, SEARCH_PATH, SEARCH_PATH)
                        .json(&body)
                        .map_err(|e| TicketError::Decode {
                            what: "a request body".into(),
                            reason: e.to_string(),
                        })?
                        .idempotent(true);
                    let v: Value = self.call(spec).await?.json().await?;
                    let issues = v
                        .get("issues")
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default();
                    let total = v.get("total").and_then(Value::as_u64).unwrap_or(0);
                    let mut page = Vec::with_capacity(issues.len());
                    let mut new = 0usize;
                    for i in &issues {
                        let t = self.parse_ticket(i)?;
                        if seen.insert(t.key.clone()) {
                            new += 1;
                            page.push(t);
                        }
                    }
                    if !issues.is_empty() && new == 0 {
                        return Err(TicketError::Decode {
                        what: "a JQL search page".into(),
                        reason: format!("startAt={start} returned only issues of earlier pages (the server does not page)"),
                    });
                    }
                    // Advance by what the server returned, whatever maxResults it honoured.
                    let next = start + issues.len() as u64;
                    let done = issues.is_empty() || next >= total;
                    Ok(Some((page, (next, seen, done))))
                }
            },
        );
        pages
            .map_ok(|page| stream::iter(page.into_iter().map(Ok)))
            .try_flatten()
            .boxed()
    }

    fn find_by_labels<'a>(
        &'a self,
        labels: &'a [String],
    ) -> BoxFuture<'a, TicketResult<Vec<Ticket>>> {
        Box::pin(async move {
            if labels.is_empty() {
                return Ok(Vec::new());
            }
            let q = self.query().any_of(Field::LABELS, labels.to_vec());
            self.search(q).try_collect().await
        })
    }

    fn transition<'a>(
        &'a self,
        key: &'a str,
        aegis_status: &'a str,
        options: TransitionOptions,
    ) -> BoxFuture<'a, TicketResult<()>> {
        Box::pin(async move {
            check_key(key)?;
            self.transition_ticket(key, aegis_status, options).await
        })
    }

    fn add_comment<'a>(&'a self, key: &'a str, body: &'a str) -> BoxFuture<'a, TicketResult<()>> {
        Box::pin(async move {
            check_key(key)?;
            let path = format!("/rest/api/2/issue/{key}/comment");
            self.send_json(
                Method::POST,
                "/rest/api/2/issue/{key}/comment",
                &path,
                &json!({ "body": body }),
            )
            .await?;
            Ok(())
        })
    }

    fn link<'a>(&'a self, child: &'a str, parent: &'a str) -> BoxFuture<'a, TicketResult<()>> {
        Box::pin(async move {
            check_key(child)?;
            check_key(parent)?;
            let body = json!({"update": {"issuelinks": [{"add": {
                "type": {"name": self.settings.link_type},
                "outwardIssue": {"key": parent}
            }}]}});
            self.send_json(
                Method::PUT,
                ISSUE_KEY_PATH,
                &format!("{ISSUE_PATH}/{child}"),
                &body,
            )
            .await?;
            Ok(())
        })
    }

    fn assign<'a>(
        &'a self,
        key: &'a str,
        assignee: Option<&'a str>,
    ) -> BoxFuture<'a, TicketResult<()>> {
        Box::pin(async move {
            check_key(key)?;
            let value = match assignee.filter(|a| !a.is_empty()) {
                None => Value::Null,
                Some(a) => match self.user(a).await? {
                    Some(u) => self.user_ref(&u),
                    None => {
                        return Err(TicketError::Jira {
                            method: Method::GET,
                            path: "/rest/api/2/user".into(),
                            status: 404,
                            message: format!("JIRA has no user {a:?}"),
                        })
                    }
                },
            };
            let body = json!({ "fields": { "assignee": value } });
            self.send_json(
                Method::PUT,
                ISSUE_KEY_PATH,
                &format!("{ISSUE_PATH}/{key}"),
                &body,
            )
            .await?;
            Ok(())
        })
    }

    fn update_fields<'a>(
        &'a self,
        key: &'a str,
        fields: &'a BTreeMap<String, FieldValue>,
    ) -> BoxFuture<'a, TicketResult<()>> {
        Box::pin(async move {
            check_key(key)?;
            let mut out = Map::new();
            for (name, value) in fields {
                let def = self
                    .field_def(name)
                    .ok_or_else(|| TicketError::UnknownField(name.clone()))?;
                let v = self
                    .write_value(def, value)
                    .ok_or_else(|| TicketError::Decode {
                        what: format!("field {name:?}"),
                        reason: format!("{value:?} is not a valid {} value", def.kind),
                    })?;
                out.insert(def.id.clone(), v);
            }
            if out.is_empty() {
                return Ok(());
            }
            let body = json!({ "fields": out });
            self.send_json(
                Method::PUT,
                ISSUE_KEY_PATH,
                &format!("{ISSUE_PATH}/{key}"),
                &body,
            )
            .await?;
            Ok(())
        })
    }

    fn find_user<'a>(&'a self, name: &'a str) -> BoxFuture<'a, TicketResult<Option<User>>> {
        Box::pin(self.user(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jira_error_bodies_are_quoted() {
        let body = r#"{"errorMessages":["Issue Does Not Exist"],"errors":{"customfield_10100":"Option value 'X' is not valid"}}"#;
        assert_eq!(
            jira_message(body),
            "Issue Does Not Exist; customfield_10100: Option value 'X' is not valid"
        );
        assert_eq!(jira_message(""), "(empty body)");
        assert_eq!(
            jira_message("<html>proxy error</html>"),
            "<html>proxy error</html>"
        );
    }

    #[test]
    fn only_issue_keys_reach_a_url_path() {
        assert!(valid_key("VULN-12"));
        assert!(valid_key("AB_1-3"));
        for bad in [
            "VULN",
            "VULN-",
            "-1",
            "VULN-1/../2",
            "VU LN-1",
            "1A-2",
            "VULN-1?x=1",
        ] {
            assert!(!valid_key(bad), "{bad}");
        }
    }

    #[test]
    fn field_values_read_as_text() {
        assert_eq!(value_text(&json!({"value": "Qualys", "id": "1"})), "Qualys");
        assert_eq!(value_text(&json!({"name": "grp-sec-ops"})), "grp-sec-ops");
        assert_eq!(value_text(&json!(7.5)), "7.5");
        assert_eq!(value_text(&json!(["a", "b"])), "a,b");
        assert_eq!(value_text(&Value::Null), "");
    }
}

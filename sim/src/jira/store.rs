//! JIRA's state and its rules: the field catalogue (the Aegis default ticket schema), users and
//! groups, the project, issues with comments, links and history, and the write path (create,
//! edit, transition) with JIRA's validation and error shapes.
//!
//! Values are stored in one canonical shape per schema type and rendered in the shapes of
//! JIRA REST v2 (see `original-vendor-apis.md` §1.5).

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use serde_json::{json, Map, Value};

use super::workflow::{self, ScreenField};
use crate::world::{jira_datetime, WorldFixture};
use crate::{Profile, SimConfig};

/// Kind of a field, deciding coercion, canonical storage and JQL semantics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldKind {
    Text,
    TextArea,
    Option,
    Group,
    Date,
    DateTime,
    Number,
    User,
    Labels,
    System,
}

#[derive(Clone, Debug)]
pub struct FieldDef {
    pub id: String,
    pub name: String,
    pub kind: FieldKind,
    pub custom_id: Option<u32>,
    pub allowed: Vec<String>,
}

/// Custom fields of the default ticket schema: (display name, kind, allowed values).
fn custom_field_specs() -> Vec<(&'static str, FieldKind, Vec<String>)> {
    let opts = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let mut cvss = vec!["None".to_string()];
    for i in 0..=100 {
        cvss.push(format!("{}.{}", i / 10, i % 10));
    }
    let os = opts(&[
        "None",
        "BIG-IP",
        "Data ONTAP",
        "embedded",
        "IOS",
        "Linux",
        "MAC OS X",
        "Solaris",
        "VMware ESX/ESXi",
        "Windows",
        "z/OS",
        "Unknown",
        "AIX",
        "Amazon Linux",
        "Redhat",
        "CentOS",
        "Cisco",
        "CoreOS",
        "NetApp",
        "Oracle",
        "UNIX",
        "Ubuntu",
        "FreeBSD",
    ]);
    let category = opts(&[
        "None",
        "Security Logging",
        "Network Security",
        "Key Management",
        "Asset Classification",
        "User Access Control",
        "Host",
        "Malware",
        "Third Party Application",
        "Database",
        "Firewall",
        "Forensics",
        "General remote services",
        "Hardware",
        "Information gathering",
        "OEL",
        "Configuration",
        "Web Application",
        "Function",
        "Container",
    ]);
    use FieldKind::*;
    vec![
        (
            "Method of Discovery",
            Option,
            opts(&[
                "None",
                "Nexpose",
                "Internal Discovery",
                "External Discovery",
                "Penetration Test",
                "Vendor Notice",
                "Server Build",
                "Qualys",
                "SynAck",
                "Security Scorecard",
                "BitSight",
                "Bugcrowd",
                "Dome9",
                "PCI ASV",
                "Stacks for Hacks",
                "Aqua",
                "Black Duck",
                "CloudView",
            ]),
        ),
        ("Hostname", Text, vec![]),
        ("IP Address", Text, vec![]),
        ("MAC Address", Text, vec![]),
        ("Service Port", Text, vec![]),
        ("Solution", TextArea, vec![]),
        (
            "VRR Priority",
            Option,
            opts(&["None", "Immediate", "Critical", "High", "Medium", "Low"]),
        ),
        ("Scan/Alert Date", Date, vec![]),
        ("LastFound", DateTime, vec![]),
        ("Assignment Group", Group, vec![]),
        ("Resolution Date", DateTime, vec![]),
        ("Reopen Reason", TextArea, vec![]),
        ("Operating System", Option, os),
        ("Vulnerability", Text, vec![]),
        ("cvss_score", Option, cvss),
        ("VulnerabilityID", Text, vec![]),
        (
            "OWASP",
            Option,
            opts(&[
                "None",
                "Injection",
                "Broken Authentication",
                "Sensitive Data Exposure",
                "XML External Entities",
                "Broken Access Control",
                "Security Misconfiguration",
                "Cross-site Scripting XSS",
                "Insecure Deserialization",
                "Using Components with known vulnerabilities",
                "Insufficient Logging & Monitoring",
            ]),
        ),
        ("Exception Date", DateTime, vec![]),
        ("GroupID", Text, vec![]),
        ("DeviceID", Text, vec![]),
        ("Patchable", Option, opts(&["None", "Yes", "No"])),
        ("ScanID", Text, vec![]),
        ("Org", Text, vec![]),
        ("SystemName", Text, vec![]),
        ("CERF", Text, vec![]),
        ("Exception Expiration", DateTime, vec![]),
        ("Actual Expiration Date", DateTime, vec![]),
        ("CVE References", Text, vec![]),
        ("VendorRef", Text, vec![]),
        ("OS_Detailed", Text, vec![]),
        ("Category", Option, category.clone()),
        ("VRR Category", Option, category),
        ("Config", Text, vec![]),
        ("LastChecked", DateTime, vec![]),
        ("CloudID", Text, vec![]),
        ("Application Name", Text, vec![]),
        ("Tracking Method", Text, vec![]),
        ("Hub Project Name", Text, vec![]),
        ("Hub Project Version", Text, vec![]),
        ("Hub Severity", Text, vec![]),
        ("Component Name", Text, vec![]),
        ("Component Version", Text, vec![]),
        ("Policy Rule", Text, vec![]),
        ("Policy Severity", Text, vec![]),
        (
            "Application Type",
            Option,
            opts(&[
                "None",
                "Web",
                "API",
                "Mobile-iOS",
                "Mobile-Android",
                "Desktop",
                "Other",
            ]),
        ),
    ]
}

/// System fields: (id, display name, schema type, clause names).
pub const SYSTEM_FIELDS: &[(&str, &str, &str, &[&str])] = &[
    ("issuekey", "Key", "", &["id", "issue", "issuekey", "key"]),
    ("project", "Project", "project", &["project"]),
    (
        "issuetype",
        "Issue Type",
        "issuetype",
        &["issuetype", "type"],
    ),
    ("status", "Status", "status", &["status"]),
    ("resolution", "Resolution", "resolution", &["resolution"]),
    ("summary", "Summary", "string", &["summary"]),
    ("description", "Description", "string", &["description"]),
    (
        "created",
        "Created",
        "datetime",
        &["created", "createdDate"],
    ),
    (
        "updated",
        "Updated",
        "datetime",
        &["updated", "updatedDate"],
    ),
    (
        "resolutiondate",
        "Resolved",
        "datetime",
        &["resolved", "resolutiondate"],
    ),
    ("duedate", "Due date", "date", &["due", "duedate"]),
    ("labels", "Labels", "array", &["labels"]),
    ("assignee", "Assignee", "user", &["assignee"]),
    ("reporter", "Reporter", "user", &["reporter"]),
    ("creator", "Creator", "user", &["creator"]),
    ("issuelinks", "Linked Issues", "array", &["issueLink"]),
    ("comment", "Comment", "comments-page", &["comment"]),
];

#[derive(Clone, Debug)]
pub struct User {
    pub name: String,
    pub display_name: String,
    pub email: String,
}

#[derive(Clone, Debug)]
pub struct Comment {
    pub id: u64,
    pub author: String,
    pub body: String,
    pub created: DateTime<Utc>,
}

#[derive(Clone, Debug)]
pub struct HistoryEntry {
    pub at: DateTime<Utc>,
    pub who: String,
    pub change: String,
}

#[derive(Clone, Debug)]
pub struct Issue {
    pub id: u64,
    pub key: String,
    pub number: u64,
    pub issuetype: String,
    pub status: &'static str,
    pub resolution: Option<String>,
    pub assignee: Option<String>,
    pub reporter: String,
    pub creator: String,
    pub created: DateTime<Utc>,
    pub updated: DateTime<Utc>,
    pub resolutiondate: Option<DateTime<Utc>>,
    pub duedate: Option<NaiveDate>,
    pub labels: Vec<String>,
    pub summary: String,
    pub description: Option<String>,
    pub custom: BTreeMap<String, Value>,
    pub comments: Vec<Comment>,
    pub history: Vec<HistoryEntry>,
}

#[derive(Clone, Debug)]
pub struct Link {
    pub id: u64,
    pub type_name: String,
    /// The issue whose `issuelinks` shows `outwardIssue = to`.
    pub from: u64,
    pub to: u64,
}

/// Link types: (id, name, inward, outward).
pub const LINK_TYPES: &[(u32, &str, &str, &str)] = &[
    (10000, "Related", "is related to", "relates to"),
    (10001, "Relates", "relates to", "relates to"),
    (10002, "Blocks", "is blocked by", "blocks"),
    (10003, "Duplicate", "is duplicated by", "duplicates"),
];

/// Issue types: (id, name, description).
pub const ISSUE_TYPES: &[(u32, &str, &str)] = &[
    (10100, "Request", "A vulnerability remediation request."),
    (10101, "Task", "A task that needs to be done."),
    (
        10102,
        "Bug",
        "A problem which impairs or prevents the functions of the product.",
    ),
];

/// A JIRA error: HTTP status plus `errorMessages` / `errors`.
#[derive(Debug, Clone)]
pub struct JiraError {
    pub status: u16,
    pub messages: Vec<String>,
    pub errors: BTreeMap<String, String>,
}

impl JiraError {
    pub fn new(status: u16, msg: impl Into<String>) -> JiraError {
        JiraError {
            status,
            messages: vec![msg.into()],
            errors: BTreeMap::new(),
        }
    }
    pub fn fields(status: u16, errors: BTreeMap<String, String>) -> JiraError {
        JiraError {
            status,
            messages: Vec::new(),
            errors,
        }
    }
    pub fn not_found() -> JiraError {
        JiraError::new(404, "Issue Does Not Exist")
    }
    pub fn body(&self) -> Value {
        json!({"errorMessages": self.messages, "errors": self.errors})
    }
}

#[derive(Debug)]
pub struct JiraState {
    pub project_key: String,
    pub project_name: String,
    pub project_id: u64,
    pub fields: Vec<FieldDef>,
    pub users: BTreeMap<String, User>,
    pub groups: Vec<String>,
    pub issues: BTreeMap<u64, Issue>,
    pub links: Vec<Link>,
    pub next_issue_number: u64,
    pub next_id: u64,
    pub profile: Profile,
}

fn user(name: &str) -> User {
    let mut display = String::new();
    for (i, part) in name.split(['.', '_', '-']).enumerate() {
        if i > 0 {
            display.push(' ');
        }
        let mut c = part.chars();
        if let Some(f) = c.next() {
            display.extend(f.to_uppercase());
            display.push_str(c.as_str());
        }
    }
    User {
        name: name.to_string(),
        display_name: display,
        email: format!("{name}@sim.example"),
    }
}

impl JiraState {
    pub fn new(cfg: &SimConfig, fixture: &WorldFixture, _now: DateTime<Utc>) -> JiraState {
        let mut fields = Vec::new();
        for (id, name, _, _) in SYSTEM_FIELDS {
            fields.push(FieldDef {
                id: id.to_string(),
                name: name.to_string(),
                kind: FieldKind::System,
                custom_id: None,
                allowed: Vec::new(),
            });
        }
        for (i, (name, kind, allowed)) in custom_field_specs().into_iter().enumerate() {
            let cid = 10100 + i as u32;
            fields.push(FieldDef {
                id: format!("customfield_{cid}"),
                name: name.to_string(),
                kind,
                custom_id: Some(cid),
                allowed,
            });
        }
        let mut users = BTreeMap::new();
        for name in [
            cfg.credentials.username.as_str(),
            "remediator",
            "jdoe",
            "admin",
        ]
        .into_iter()
        .chain(fixture.jira_users.iter().map(String::as_str))
        {
            users.insert(name.to_string(), user(name));
        }
        JiraState {
            project_key: cfg.jira.project_key.clone(),
            project_name: cfg.jira.project_name.clone(),
            project_id: 10000,
            fields,
            users,
            groups: vec![
                "grp-sec-ops".into(),
                "jira-users".into(),
                "jira-administrators".into(),
            ],
            issues: BTreeMap::new(),
            links: Vec::new(),
            next_issue_number: 1,
            next_id: 10001,
            profile: cfg.profile,
        }
    }

    pub fn field_by_id(&self, id: &str) -> Option<&FieldDef> {
        self.fields.iter().find(|f| f.id == id)
    }

    pub fn field_by_name(&self, name: &str) -> Option<&FieldDef> {
        self.fields
            .iter()
            .find(|f| f.name.eq_ignore_ascii_case(name))
    }

    /// Find an issue by key (case-insensitive) or numeric id.
    pub fn find(&self, id_or_key: &str) -> Option<u64> {
        if let Ok(id) = id_or_key.parse::<u64>() {
            if self.issues.contains_key(&id) {
                return Some(id);
            }
        }
        self.issues
            .values()
            .find(|i| i.key.eq_ignore_ascii_case(id_or_key))
            .map(|i| i.id)
    }

    fn fresh_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Coerce a written value of `field` into its canonical stored shape (`None` = clear).
    pub fn coerce(&self, field: &FieldDef, v: &Value) -> Result<Option<Value>, String> {
        if v.is_null() {
            return Ok(None);
        }
        let compat = self.profile == Profile::AegisCompat;
        let as_text = |v: &Value| -> Option<String> {
            match v {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                Value::Object(o) => {
                    o.get("value")
                        .or_else(|| o.get("name"))
                        .and_then(|x| match x {
                            Value::String(s) => Some(s.clone()),
                            Value::Number(n) => Some(n.to_string()),
                            _ => None,
                        })
                }
                _ => None,
            }
        };
        match field.kind {
            FieldKind::Text | FieldKind::TextArea => match v {
                Value::String(s) => {
                    if field.kind == FieldKind::Text && s.chars().count() > 255 {
                        return Err(format!("{} must be less than 255 characters.", field.name));
                    }
                    Ok(Some(Value::String(s.clone())))
                }
                _ => Err("Operation value must be a string".into()),
            },
            FieldKind::Option => {
                let Some(text) = (match v {
                    Value::Object(o) => o
                        .get("value")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                        .or_else(|| {
                            o.get("id").and_then(Value::as_str).and_then(|id| {
                                let n: usize = id.parse().ok()?;
                                field.allowed.get(n.checked_sub(1)?).cloned()
                            })
                        }),
                    Value::String(s) if compat => Some(s.clone()),
                    _ => None,
                }) else {
                    return Err(format!(
                        "Could not find valid 'id' or 'value' in the Parent Option object for {}.",
                        field.name
                    ));
                };
                let canonical = if field.name == "cvss_score" {
                    match text.trim().parse::<f64>() {
                        Ok(n) if (0.0..=10.0).contains(&n) => format!("{n:.1}"),
                        _ if text == "None" => text.clone(),
                        _ => return Err(format!("Option value '{text}' is not valid")),
                    }
                } else {
                    match field.allowed.iter().find(|a| **a == text) {
                        Some(a) => a.clone(),
                        None => return Err(format!("Option value '{text}' is not valid")),
                    }
                };
                let pos = field
                    .allowed
                    .iter()
                    .position(|a| *a == canonical)
                    .unwrap_or(0);
                Ok(Some(json!({
                    "value": canonical,
                    "id": (field.custom_id.unwrap_or(0) * 1000 + 1 + pos as u32).to_string(),
                })))
            }
            FieldKind::Group => {
                let name = match v {
                    Value::Object(o) => o.get("name").and_then(Value::as_str).map(str::to_string),
                    Value::String(s) if compat => Some(s.clone()),
                    _ => None,
                };
                match name {
                    Some(n) if !n.is_empty() => Ok(Some(json!({ "name": n }))),
                    _ => Err(format!("Group name is required for {}.", field.name)),
                }
            }
            FieldKind::Date => {
                let s = as_text(v).ok_or("Operation value must be a string")?;
                parse_date(&s, compat)
                    .map(|d| Some(Value::String(d.format("%Y-%m-%d").to_string())))
                    .ok_or_else(|| {
                        format!("Invalid date format. Please enter the date in the format \"yyyy-MM-dd\". ({s})")
                    })
            }
            FieldKind::DateTime => {
                let s = as_text(v).ok_or("Operation value must be a string")?;
                parse_datetime(&s)
                    .map(|t| Some(Value::String(jira_datetime(t))))
                    .ok_or_else(|| {
                        format!("Invalid date format. Please enter the date in the format \"yyyy-MM-dd'T'HH:mm:ss.SSSZ\". ({s})")
                    })
            }
            FieldKind::Number => {
                let s = as_text(v).ok_or("Operation value must be a number")?;
                s.trim()
                    .parse::<f64>()
                    .map(|n| Some(json!(n)))
                    .map_err(|_| format!("'{s}' is an invalid number"))
            }
            FieldKind::User | FieldKind::Labels | FieldKind::System => {
                Err(format!("Field '{}' cannot be set.", field.id))
            }
        }
    }

    fn user_ref(&self, v: &Value, field: &str) -> Result<Option<String>, String> {
        if v.is_null() {
            return Ok(None);
        }
        let name = v
            .get("name")
            .or_else(|| v.get("accountId"))
            .or_else(|| v.get("key"))
            .and_then(Value::as_str)
            .ok_or_else(|| format!("expected Object with 'name' for {field}"))?;
        if name.is_empty() || name == "-1" {
            return Ok(None);
        }
        if self.users.contains_key(name) {
            Ok(Some(name.to_string()))
        } else {
            Err(format!("User '{name}' does not exist."))
        }
    }

    /// Apply `fields` to an issue (shared by create, edit and transition screens).
    fn apply_fields(
        &self,
        issue: &mut Issue,
        fields: &Map<String, Value>,
        creating: bool,
        errors: &mut BTreeMap<String, String>,
    ) {
        let compat = self.profile == Profile::AegisCompat;
        for (k, v) in fields {
            match k.as_str() {
                "project" | "issuetype" if creating => {}
                "summary" => match v.as_str() {
                    Some(s) if !s.trim().is_empty() => {
                        if s.chars().count() > 255 {
                            errors.insert(
                                k.clone(),
                                "Summary must be less than 255 characters.".into(),
                            );
                        } else {
                            issue.summary = s.to_string();
                        }
                    }
                    _ => {
                        errors.insert(k.clone(), "You must specify a summary of the issue.".into());
                    }
                },
                "description" => match v {
                    Value::Null => issue.description = None,
                    Value::String(s) => issue.description = Some(s.clone()),
                    _ => {
                        errors.insert(k.clone(), "Operation value must be a string".into());
                    }
                },
                "duedate" => match v {
                    Value::Null => issue.duedate = None,
                    Value::String(s) if s.is_empty() => issue.duedate = None,
                    Value::String(s) => match parse_date(s, compat) {
                        Some(d) if compat && d.format("%Y").to_string() == "0001" => {
                            issue.duedate = None
                        }
                        Some(d) => issue.duedate = Some(d),
                        None => {
                            errors.insert(k.clone(), "Error parsing date string: ".to_string() + s);
                        }
                    },
                    _ => {
                        errors.insert(k.clone(), "Operation value must be a string".into());
                    }
                },
                "labels" => match v {
                    Value::Null => issue.labels.clear(),
                    Value::Array(a) => {
                        let labels: Option<Vec<String>> =
                            a.iter().map(|x| x.as_str().map(str::to_string)).collect();
                        match labels {
                            Some(l) if l.iter().all(|s| !s.contains(' ')) => issue.labels = l,
                            _ => {
                                errors
                                    .insert(k.clone(), "The label must not contain spaces.".into());
                            }
                        }
                    }
                    _ => {
                        errors.insert(k.clone(), "data was not an array".into());
                    }
                },
                "assignee" => match self.user_ref(v, k) {
                    Ok(u) => issue.assignee = u,
                    Err(e) => {
                        errors.insert(k.clone(), e);
                    }
                },
                "reporter" => match self.user_ref(v, k) {
                    Ok(Some(u)) => issue.reporter = u,
                    Ok(None) => {
                        errors.insert(k.clone(), "Reporter is required.".into());
                    }
                    Err(e) => {
                        errors.insert(k.clone(), e);
                    }
                },
                "resolution" => match v.get("name").and_then(Value::as_str) {
                    Some(n) if workflow::RESOLUTIONS.iter().any(|r| r.1 == n) => {
                        issue.resolution = Some(n.to_string())
                    }
                    _ if v.is_null() => issue.resolution = None,
                    _ => {
                        errors.insert(k.clone(), "The resolution is invalid.".into());
                    }
                },
                other => match self.field_by_id(other) {
                    Some(f) if f.custom_id.is_some() => match self.coerce(f, v) {
                        Ok(Some(val)) => {
                            issue.custom.insert(f.id.clone(), val);
                        }
                        Ok(None) => {
                            issue.custom.remove(&f.id);
                        }
                        Err(e) => {
                            errors.insert(k.clone(), e);
                        }
                    },
                    _ => {
                        errors.insert(
                            k.clone(),
                            format!("Field '{k}' cannot be set. It is not on the appropriate screen, or unknown."),
                        );
                    }
                },
            }
        }
    }

    /// Create an issue from a REST body `{"fields":{…},"update":{…}}`.
    pub fn create(
        &mut self,
        body: &Value,
        user: &str,
        now: DateTime<Utc>,
    ) -> Result<(u64, String), JiraError> {
        let fields = body
            .get("fields")
            .and_then(Value::as_object)
            .ok_or_else(|| {
                JiraError::new(400, "Can not deserialize instance of com.atlassian.jira.rest.v2.issue.IssueFieldsBean")
            })?;
        let mut errors = BTreeMap::new();
        match fields.get("project") {
            Some(p) => {
                let ok = p
                    .get("key")
                    .and_then(Value::as_str)
                    .is_some_and(|k| k.eq_ignore_ascii_case(&self.project_key))
                    || p.get("id")
                        .and_then(Value::as_str)
                        .is_some_and(|i| i == self.project_id.to_string());
                if !ok {
                    errors.insert("project".into(), "valid project is required".into());
                }
            }
            None => {
                errors.insert("project".into(), "project is required".into());
            }
        }
        let mut issuetype = String::new();
        match fields.get("issuetype") {
            Some(t) => {
                let found = ISSUE_TYPES.iter().find(|(id, name, _)| {
                    t.get("id").and_then(Value::as_str) == Some(&id.to_string())
                        || t.get("name").and_then(Value::as_str) == Some(name)
                });
                match found {
                    Some((_, name, _)) => issuetype = name.to_string(),
                    None => {
                        errors.insert("issuetype".into(), "valid issue type is required".into());
                    }
                }
            }
            None => {
                errors.insert("issuetype".into(), "issue type is required".into());
            }
        }
        if !fields.contains_key("summary") {
            errors.insert(
                "summary".into(),
                "You must specify a summary of the issue.".into(),
            );
        }
        let number = self.next_issue_number;
        let mut issue = Issue {
            id: 0,
            key: format!("{}-{}", self.project_key, number),
            number,
            issuetype,
            status: workflow::initial_status().name,
            resolution: None,
            assignee: None,
            reporter: user.to_string(),
            creator: user.to_string(),
            created: now,
            updated: now,
            resolutiondate: None,
            duedate: None,
            labels: Vec::new(),
            summary: String::new(),
            description: None,
            custom: BTreeMap::new(),
            comments: Vec::new(),
            history: Vec::new(),
        };
        self.apply_fields(&mut issue, fields, true, &mut errors);
        if !errors.is_empty() {
            return Err(JiraError::fields(400, errors));
        }
        issue.id = self.fresh_id();
        self.next_issue_number += 1;
        issue.history.push(HistoryEntry {
            at: now,
            who: user.to_string(),
            change: "created".into(),
        });
        let (id, key) = (issue.id, issue.key.clone());
        self.issues.insert(id, issue);
        if let Some(update) = body.get("update") {
            self.apply_update(id, update, user, now)?;
        }
        Ok((id, key))
    }

    /// Edit an issue: `{"fields":{…},"update":{…}}`.
    pub fn edit(
        &mut self,
        id: u64,
        body: &Value,
        user: &str,
        now: DateTime<Utc>,
    ) -> Result<(), JiraError> {
        let mut issue = self
            .issues
            .get(&id)
            .cloned()
            .ok_or_else(JiraError::not_found)?;
        let mut errors = BTreeMap::new();
        if let Some(fields) = body.get("fields") {
            let Some(fields) = fields.as_object() else {
                return Err(JiraError::new(400, "fields must be an object"));
            };
            for k in [
                "project",
                "issuetype",
                "status",
                "created",
                "updated",
                "creator",
            ] {
                if fields.contains_key(k) {
                    errors.insert(
                        k.to_string(),
                        format!("Field '{k}' cannot be set. It is not on the appropriate screen, or unknown."),
                    );
                }
            }
            self.apply_fields(&mut issue, fields, false, &mut errors);
        }
        if !errors.is_empty() {
            return Err(JiraError::fields(400, errors));
        }
        issue.updated = now;
        issue.history.push(HistoryEntry {
            at: now,
            who: user.to_string(),
            change: "edited".into(),
        });
        self.issues.insert(id, issue);
        if let Some(update) = body.get("update") {
            self.apply_update(id, update, user, now)?;
        }
        Ok(())
    }

    /// Apply an `update` object (issuelinks, comment, labels).
    fn apply_update(
        &mut self,
        id: u64,
        update: &Value,
        user: &str,
        now: DateTime<Utc>,
    ) -> Result<(), JiraError> {
        let Some(update) = update.as_object() else {
            return Ok(());
        };
        for (k, ops) in update {
            let ops = ops.as_array().cloned().unwrap_or_default();
            for op in ops {
                match k.as_str() {
                    "issuelinks" => {
                        let Some(add) = op.get("add") else { continue };
                        let type_name = add
                            .pointer("/type/name")
                            .and_then(Value::as_str)
                            .unwrap_or("");
                        if !LINK_TYPES.iter().any(|t| t.1 == type_name) {
                            return Err(JiraError::fields(
                                400,
                                BTreeMap::from([(
                                    "issuelinks".to_string(),
                                    format!("No issue link type with name '{type_name}' found."),
                                )]),
                            ));
                        }
                        let (other, outward) = match (
                            add.pointer("/outwardIssue/key").and_then(Value::as_str),
                            add.pointer("/inwardIssue/key").and_then(Value::as_str),
                        ) {
                            (Some(k), _) => (k, true),
                            (None, Some(k)) => (k, false),
                            _ => return Err(JiraError::new(400, "Linked issue key is required")),
                        };
                        let Some(other_id) = self.find(other) else {
                            return Err(JiraError::fields(
                                400,
                                BTreeMap::from([(
                                    "issuelinks".to_string(),
                                    format!("Issue '{other}' does not exist."),
                                )]),
                            ));
                        };
                        let link_id = self.fresh_id();
                        let (from, to) = if outward {
                            (id, other_id)
                        } else {
                            (other_id, id)
                        };
                        self.links.push(Link {
                            id: link_id,
                            type_name: type_name.to_string(),
                            from,
                            to,
                        });
                    }
                    "comment" => {
                        if let Some(body) = op.pointer("/add/body").and_then(Value::as_str) {
                            if !body.is_empty() {
                                self.add_comment(id, body, user, now)?;
                            }
                        }
                    }
                    "labels" => {
                        let Some(issue) = self.issues.get_mut(&id) else {
                            return Err(JiraError::not_found());
                        };
                        if let Some(l) = op.get("add").and_then(Value::as_str) {
                            if !issue.labels.iter().any(|x| x == l) {
                                issue.labels.push(l.to_string());
                            }
                        }
                        if let Some(l) = op.get("remove").and_then(Value::as_str) {
                            issue.labels.retain(|x| x != l);
                        }
                    }
                    other => {
                        let mut fields = Map::new();
                        if let Some(v) = op.get("set") {
                            fields.insert(other.to_string(), v.clone());
                        }
                        self.edit(id, &json!({ "fields": fields }), user, now)?;
                    }
                }
            }
        }
        if let Some(issue) = self.issues.get_mut(&id) {
            issue.updated = now;
        }
        Ok(())
    }

    pub fn add_comment(
        &mut self,
        id: u64,
        body: &str,
        user: &str,
        now: DateTime<Utc>,
    ) -> Result<Comment, JiraError> {
        let cid = self.fresh_id();
        let issue = self.issues.get_mut(&id).ok_or_else(JiraError::not_found)?;
        let c = Comment {
            id: cid,
            author: user.to_string(),
            body: body.to_string(),
            created: now,
        };
        issue.comments.push(c.clone());
        issue.updated = now;
        Ok(c)
    }

    /// Perform a transition from a REST body
    /// `{"transition":{"id":"41"},"fields":{…},"update":{…}}`.
    pub fn transition(
        &mut self,
        id: u64,
        body: &Value,
        user: &str,
        now: DateTime<Utc>,
    ) -> Result<(), JiraError> {
        let issue = self.issues.get(&id).ok_or_else(JiraError::not_found)?;
        let tid = match body.pointer("/transition/id") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => return Err(JiraError::new(400, "Missing 'transition' identifier")),
        };
        let Some(target) = workflow::transition(issue.status, &tid) else {
            return Err(JiraError::new(
                400,
                format!("Transition id '{tid}' is not valid for this issue."),
            ));
        };
        let mut errors = BTreeMap::new();
        let empty = Map::new();
        let fields = body
            .get("fields")
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        let screen_ids: Vec<(String, bool)> = target
            .screen
            .iter()
            .filter_map(|sf| match sf {
                ScreenField::Assignee => Some(("assignee".to_string(), false)),
                ScreenField::Custom(name, req) => {
                    self.field_by_name(name).map(|f| (f.id.clone(), *req))
                }
            })
            .collect();
        for k in fields.keys() {
            if !screen_ids.iter().any(|(id, _)| id == k) {
                errors.insert(
                    k.clone(),
                    format!("Field '{k}' cannot be set. It is not on the appropriate screen, or unknown."),
                );
            }
        }
        for (fid, required) in &screen_ids {
            let present = fields
                .get(fid)
                .is_some_and(|v| !v.is_null() && v.as_str() != Some(""));
            if *required && !present {
                let name = self
                    .field_by_id(fid)
                    .map(|f| f.name.clone())
                    .unwrap_or_else(|| fid.clone());
                errors.insert(fid.clone(), format!("{name} is required."));
            }
        }
        if !errors.is_empty() {
            return Err(JiraError::fields(400, errors));
        }
        let mut updated = issue.clone();
        self.apply_fields(&mut updated, fields, false, &mut errors);
        if !errors.is_empty() {
            return Err(JiraError::fields(400, errors));
        }
        let from = updated.status;
        updated.status = target.name;
        match target.resolution {
            Some(r) => {
                if updated.resolution.is_none() {
                    updated.resolutiondate = Some(now);
                }
                updated.resolution = Some(r.to_string());
            }
            None => {
                updated.resolution = None;
                updated.resolutiondate = None;
            }
        }
        updated.updated = now;
        updated.history.push(HistoryEntry {
            at: now,
            who: user.to_string(),
            change: format!("status: {from} -> {}", target.name),
        });
        self.issues.insert(id, updated);
        if let Some(update) = body.get("update") {
            self.apply_update(id, update, user, now)?;
        }
        Ok(())
    }

    /// Move an issue to `status` as a person would: pick the offered transition, fill required
    /// screen fields. Used by the control API.
    pub fn human_transition(
        &mut self,
        id: u64,
        status: &str,
        user: &str,
        comment: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<(), JiraError> {
        let issue = self.issues.get(&id).ok_or_else(JiraError::not_found)?;
        let Some(target) = workflow::targets_from(issue.status)
            .into_iter()
            .find(|s| s.name.eq_ignore_ascii_case(status))
        else {
            return Err(JiraError::new(
                400,
                format!(
                    "No transition from '{}' to '{status}' in the workflow",
                    issue.status
                ),
            ));
        };
        let mut fields = Map::new();
        for sf in target.screen {
            if let ScreenField::Custom(name, required) = sf {
                if let Some(f) = self.field_by_name(name) {
                    if *required {
                        fields.insert(
                            f.id.clone(),
                            json!(comment.unwrap_or("Changed by a person (simulator)")),
                        );
                    } else if *name == "Resolution Date" {
                        fields.insert(f.id.clone(), json!(jira_datetime(now)));
                    }
                }
            }
        }
        let mut body =
            json!({"transition": {"id": target.transition_id.to_string()}, "fields": fields});
        if let Some(c) = comment {
            body["update"] = json!({"comment": [{"add": {"body": c}}]});
        }
        self.transition(id, &body, user, now)
    }

    pub fn delete(&mut self, id: u64) -> Result<(), JiraError> {
        self.issues.remove(&id).ok_or_else(JiraError::not_found)?;
        self.links.retain(|l| l.from != id && l.to != id);
        Ok(())
    }

    /// Keys of issues linked to `id` in either direction.
    pub fn linked(&self, id: u64) -> Vec<u64> {
        self.links
            .iter()
            .filter_map(|l| {
                if l.from == id {
                    Some(l.to)
                } else if l.to == id {
                    Some(l.from)
                } else {
                    None
                }
            })
            .collect()
    }

    // ---------------------------------------------------------------- rendering

    pub fn user_json(&self, base: &str, name: &str) -> Value {
        let u = self.users.get(name).cloned().unwrap_or_else(|| user(name));
        json!({
            "self": format!("{base}/rest/api/2/user?username={}", u.name),
            "key": u.name,
            "name": u.name,
            "emailAddress": u.email,
            "avatarUrls": {"48x48": format!("{base}/secure/useravatar?avatarId=10122")},
            "displayName": u.display_name,
            "active": true,
            "timeZone": "UTC"
        })
    }

    pub fn status_json(base: &str, s: &workflow::StatusDef) -> Value {
        let (cid, ckey, color, cname) = s.category.parts();
        json!({
            "self": format!("{base}/rest/api/2/status/{}", s.id),
            "description": format!("Aegis status {}", s.name),
            "iconUrl": format!("{base}/images/icons/statuses/generic.png"),
            "name": s.name,
            "id": s.id.to_string(),
            "statusCategory": {
                "self": format!("{base}/rest/api/2/statuscategory/{cid}"),
                "id": cid, "key": ckey, "colorName": color, "name": cname
            }
        })
    }

    pub fn resolution_json(base: &str, name: &str) -> Value {
        let (id, n, d) = workflow::RESOLUTIONS
            .iter()
            .find(|r| r.1 == name)
            .copied()
            .unwrap_or((10000, "Done", ""));
        json!({"self": format!("{base}/rest/api/2/resolution/{id}"), "id": id.to_string(), "description": d, "name": n})
    }

    pub fn issuetype_json(base: &str, name: &str) -> Value {
        let (id, n, d) = ISSUE_TYPES
            .iter()
            .find(|t| t.1 == name)
            .copied()
            .unwrap_or(ISSUE_TYPES[0]);
        json!({"self": format!("{base}/rest/api/2/issuetype/{id}"), "id": id.to_string(), "description": d,
               "iconUrl": format!("{base}/images/icons/issuetypes/task.svg"), "name": n, "subtask": false, "avatarId": 10318})
    }

    pub fn project_json(&self, base: &str) -> Value {
        json!({
            "self": format!("{base}/rest/api/2/project/{}", self.project_id),
            "id": self.project_id.to_string(),
            "key": self.project_key,
            "name": self.project_name,
            "projectTypeKey": "software",
            "avatarUrls": {"48x48": format!("{base}/secure/projectavatar?avatarId=10324")}
        })
    }

    pub fn comment_json(&self, base: &str, issue_id: u64, c: &Comment) -> Value {
        json!({
            "self": format!("{base}/rest/api/2/issue/{issue_id}/comment/{}", c.id),
            "id": c.id.to_string(),
            "author": self.user_json(base, &c.author),
            "body": c.body,
            "updateAuthor": self.user_json(base, &c.author),
            "created": jira_datetime(c.created),
            "updated": jira_datetime(c.created)
        })
    }

    fn link_json(&self, base: &str, l: &Link, outward: bool) -> Value {
        let (id, n, inward_s, outward_s) = LINK_TYPES
            .iter()
            .find(|t| t.1 == l.type_name)
            .copied()
            .unwrap_or(LINK_TYPES[0]);
        let other = if outward { l.to } else { l.from };
        let other_json = match self.issues.get(&other) {
            Some(o) => {
                let st = workflow::status(o.status).unwrap_or(workflow::initial_status());
                json!({"id": o.id.to_string(), "key": o.key, "self": format!("{base}/rest/api/2/issue/{}", o.id),
                       "fields": {"summary": o.summary, "status": Self::status_json(base, st),
                                  "issuetype": Self::issuetype_json(base, &o.issuetype)}})
            }
            None => Value::Null,
        };
        let mut v = json!({
            "id": l.id.to_string(),
            "self": format!("{base}/rest/api/2/issueLink/{}", l.id),
            "type": {"id": id.to_string(), "name": n, "inward": inward_s, "outward": outward_s,
                     "self": format!("{base}/rest/api/2/issueLinkType/{id}")}
        });
        v[if outward {
            "outwardIssue"
        } else {
            "inwardIssue"
        }] = other_json;
        v
    }

    /// The full issue JSON (`fields` optionally filtered by id).
    pub fn issue_json(&self, base: &str, issue: &Issue, only: Option<&[String]>) -> Value {
        let st = workflow::status(issue.status).unwrap_or(workflow::initial_status());
        let mut f = Map::new();
        f.insert("status".into(), Self::status_json(base, st));
        f.insert(
            "resolution".into(),
            issue
                .resolution
                .as_deref()
                .map(|r| Self::resolution_json(base, r))
                .unwrap_or(Value::Null),
        );
        f.insert(
            "assignee".into(),
            issue
                .assignee
                .as_deref()
                .map(|a| self.user_json(base, a))
                .unwrap_or(Value::Null),
        );
        f.insert("creator".into(), self.user_json(base, &issue.creator));
        f.insert("reporter".into(), self.user_json(base, &issue.reporter));
        f.insert("project".into(), self.project_json(base));
        f.insert(
            "issuetype".into(),
            Self::issuetype_json(base, &issue.issuetype),
        );
        f.insert("summary".into(), json!(issue.summary));
        f.insert("description".into(), json!(issue.description));
        f.insert("created".into(), json!(jira_datetime(issue.created)));
        f.insert("updated".into(), json!(jira_datetime(issue.updated)));
        f.insert(
            "resolutiondate".into(),
            json!(issue.resolutiondate.map(jira_datetime)),
        );
        f.insert(
            "duedate".into(),
            json!(issue.duedate.map(|d| d.format("%Y-%m-%d").to_string())),
        );
        f.insert("labels".into(), json!(issue.labels));
        let links: Vec<Value> = self
            .links
            .iter()
            .filter_map(|l| {
                if l.from == issue.id {
                    Some(self.link_json(base, l, true))
                } else if l.to == issue.id {
                    Some(self.link_json(base, l, false))
                } else {
                    None
                }
            })
            .collect();
        f.insert("issuelinks".into(), Value::Array(links));
        let comments: Vec<Value> = issue
            .comments
            .iter()
            .map(|c| self.comment_json(base, issue.id, c))
            .collect();
        f.insert(
            "comment".into(),
            json!({"comments": comments, "maxResults": issue.comments.len(), "total": issue.comments.len(), "startAt": 0}),
        );
        for field in self.fields.iter().filter(|x| x.custom_id.is_some()) {
            f.insert(
                field.id.clone(),
                issue.custom.get(&field.id).cloned().unwrap_or(Value::Null),
            );
        }
        if let Some(only) = only {
            let wanted = |k: &str| {
                only.iter().any(|w| {
                    w == "*all"
                        || w == "*navigable"
                        || w == k
                        || (w.starts_with('-') && &w[1..] != k)
                })
            };
            f.retain(|k, _| wanted(k));
        }
        json!({
            "expand": "renderedFields,names,schema,operations,editmeta,changelog,versionedRepresentations",
            "id": issue.id.to_string(),
            "self": format!("{base}/rest/api/2/issue/{}", issue.id),
            "key": issue.key,
            "fields": f
        })
    }

    pub fn field_json(&self, f: &FieldDef) -> Value {
        if let Some(cid) = f.custom_id {
            let (ty, plugin) = match f.kind {
                FieldKind::Text => ("string", "textfield"),
                FieldKind::TextArea => ("string", "textarea"),
                FieldKind::Option => ("option", "select"),
                FieldKind::Group => ("group", "grouppicker"),
                FieldKind::Date => ("date", "datepicker"),
                FieldKind::DateTime => ("datetime", "datetime"),
                FieldKind::Number => ("number", "float"),
                _ => ("string", "textfield"),
            };
            return json!({
                "id": f.id, "name": f.name, "custom": true, "orderable": true, "navigable": true,
                "searchable": true, "clauseNames": [format!("cf[{cid}]"), f.name],
                "schema": {"type": ty, "custom": format!("com.atlassian.jira.plugin.system.customfieldtypes:{plugin}"), "customId": cid}
            });
        }
        let (id, name, ty, clauses) = SYSTEM_FIELDS
            .iter()
            .find(|s| s.0 == f.id)
            .copied()
            .unwrap_or(("", "", "", &[]));
        let mut v = json!({
            "id": id, "name": name, "custom": false, "orderable": id != "issuekey",
            "navigable": true, "searchable": true, "clauseNames": clauses
        });
        if !ty.is_empty() {
            let mut schema = json!({"type": ty, "system": id});
            if ty == "array" {
                schema["items"] = json!(if id == "labels" {
                    "string"
                } else {
                    "issuelinks"
                });
            }
            v["schema"] = schema;
        }
        v
    }
}

/// Parse a JIRA date value (`yyyy-MM-dd`; with `compat`, also a datetime truncated to its date).
pub fn parse_date(s: &str, compat: bool) -> Option<NaiveDate> {
    let s = s.trim();
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Some(d);
    }
    if compat {
        if let Some(t) = parse_datetime(s) {
            return Some(t.date_naive());
        }
    }
    None
}

/// Parse a JIRA datetime value (`2021-03-04T05:06:07.000+0000`, RFC 3339 also accepted).
pub fn parse_datetime(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f%z")
        .or_else(|_| DateTime::parse_from_rfc3339(s))
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

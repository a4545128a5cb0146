//! The ticket-engine trait the ticketing and rescan jobs use (JIRA implements it).
//!
//! Jobs speak in Aegis terms: Aegis statuses (`Open`, `Resolved-Remediated`, …,
//! mapped to the project's status names by the engine), Aegis field names (the
//! default ticket schema, `shared/spec/original-jobs-sync-ticketing.md` §14,
//! translated through the engine's `field_map`), and [`Query`] values built with
//! quoted, escaped values. The engine owns the wire format.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use futures::future::BoxFuture;
use futures::stream::BoxStream;

pub use super::jira::jql::Query;
pub use super::jira::TicketError;

pub type TicketResult<T> = Result<T, TicketError>;

/// Aegis field names of the default ticket schema (spec §14), as the jobs use them.
#[allow(dead_code)]
pub mod field {
    pub const METHOD_OF_DISCOVERY: &str = "Method of Discovery";
    pub const HOSTNAME: &str = "Hostname";
    pub const IP_ADDRESS: &str = "IP Address";
    pub const MAC_ADDRESS: &str = "MAC Address";
    pub const SERVICE_PORT: &str = "Service Port";
    pub const SOLUTION: &str = "Solution";
    pub const PRIORITY: &str = "VRR Priority";
    pub const ALERT_DATE: &str = "Scan/Alert Date";
    pub const ASSIGNMENT_GROUP: &str = "Assignment Group";
    pub const RESOLUTION_DATE: &str = "Resolution Date";
    pub const REOPEN_REASON: &str = "Reopen Reason";
    pub const OPERATING_SYSTEM: &str = "Operating System";
    pub const VULNERABILITY: &str = "Vulnerability";
    pub const CVSS: &str = "cvss_score";
    pub const VULNERABILITY_ID: &str = "VulnerabilityID";
    pub const EXCEPTION_DATE: &str = "Exception Date";
    pub const GROUP_ID: &str = "GroupID";
    pub const DEVICE_ID: &str = "DeviceID";
    pub const PATCHABLE: &str = "Patchable";
    pub const ORG: &str = "Org";
    pub const SYSTEM_NAME: &str = "SystemName";
    pub const CERF: &str = "CERF";
    pub const EXCEPTION_EXPIRATION: &str = "Exception Expiration";
    pub const CVE_REFERENCES: &str = "CVE References";
    pub const VENDOR_REF: &str = "VendorRef";
    pub const OS_DETAILED: &str = "OS_Detailed";
    pub const CATEGORY: &str = "Category";
    pub const CONFIG: &str = "Config";
    pub const APPLICATION_NAME: &str = "Application Name";
    pub const TRACKING_METHOD: &str = "Tracking Method";
}

/// Aegis ticket statuses (spec §13). The engine maps them to project status
/// names through `status_map` (keyed by the lower-case form).
#[allow(dead_code)]
pub mod status {
    pub const OPEN: &str = "Open";
    pub const IN_PROGRESS: &str = "In-Progress";
    pub const REOPENED: &str = "Reopened";
    pub const RESOLVED_REMEDIATED: &str = "Resolved-Remediated";
    pub const RESOLVED_FALSE_POSITIVE: &str = "Resolved-FalsePositive";
    pub const RESOLVED_DECOMMISSIONED: &str = "Resolved-Decommissioned";
    pub const RESOLVED_EXCEPTION: &str = "Resolved-Exception";
    pub const CLOSED_EXCEPTION: &str = "Closed-Exception";
    pub const CLOSED_FALSE_POSITIVE: &str = "Closed-False-Positive";
    pub const CLOSED_DECOMMISSION: &str = "Closed-Decommission";
    pub const CLOSED_REMEDIATED: &str = "Closed-Remediated";
    pub const CLOSED_CERF: &str = "Closed-CERF";
    pub const CLOSED_ERROR: &str = "Closed-Error";
    pub const SCAN_ERROR: &str = "Scan-Error";

    /// Statuses after which a finding that is seen again gets a new ticket.
    /// Everything else (open, in progress, resolved awaiting proof, scan error)
    /// keeps the finding's ticket.
    pub const CLOSED: [&str; 6] = [
        CLOSED_REMEDIATED,
        CLOSED_FALSE_POSITIVE,
        CLOSED_DECOMMISSION,
        CLOSED_EXCEPTION,
        CLOSED_CERF,
        CLOSED_ERROR,
    ];
}

/// A value to write into a ticket field. The engine converts it to the
/// field's type (text, option, group, date, number, …).
#[allow(dead_code)]
#[derive(Clone, Debug, PartialEq)]
pub enum FieldValue {
    Text(String),
    Date(NaiveDate),
    DateTime(DateTime<Utc>),
    Number(f64),
    /// Clears the field.
    Clear,
}

impl From<&str> for FieldValue {
    fn from(s: &str) -> Self {
        FieldValue::Text(s.to_string())
    }
}

impl From<String> for FieldValue {
    fn from(s: String) -> Self {
        FieldValue::Text(s)
    }
}

/// A ticket to open.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NewTicket {
    pub summary: String,
    pub description: String,
    pub due_date: Option<NaiveDate>,
    pub labels: Vec<String>,
    /// A user name; the engine looks it up and leaves the ticket unassigned
    /// (with a warning) when JIRA does not know it.
    pub assignee: Option<String>,
    /// Aegis field name → value; fields the project lacks are skipped.
    pub fields: BTreeMap<String, FieldValue>,
}

/// A ticket as read back from the engine.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Ticket {
    pub key: String,
    pub id: String,
    /// The project's status name (as JIRA shows it).
    pub status: String,
    pub summary: String,
    pub assignee: Option<String>,
    pub labels: Vec<String>,
    pub created: Option<DateTime<Utc>>,
    pub updated: Option<DateTime<Utc>>,
    pub due_date: Option<NaiveDate>,
    /// The system resolution date, or the "Resolution Date" field.
    pub resolution_date: Option<DateTime<Utc>>,
    /// Keys of issues this one links to (outward) or from (inward).
    pub linked: Vec<String>,
    /// Aegis field name → value as text (options by value, groups and users by
    /// name, dates as `YYYY-MM-DD`, date-times as RFC 3339).
    pub fields: BTreeMap<String, String>,
}

impl Ticket {
    /// A field's text, `""` when missing.
    pub fn field(&self, name: &str) -> &str {
        self.fields.get(name).map(String::as_str).unwrap_or("")
    }

    /// A date or date-time field as a UTC time.
    pub fn field_time(&self, name: &str) -> Option<DateTime<Utc>> {
        super::jira::dates::parse_any(self.field(name))
    }
}

/// What the engine created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreatedTicket {
    pub key: String,
    pub id: String,
}

/// Extra values a transition may need (filled only when the transition screen
/// has the field).
#[derive(Clone, Debug, Default)]
pub struct TransitionOptions {
    pub comment: Option<String>,
    pub assignee: Option<String>,
    pub exception_expiration: Option<DateTime<Utc>>,
}

/// A JIRA user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub name: String,
    /// JIRA Cloud's account id (empty on Server/Data Center).
    pub account_id: String,
    pub display_name: String,
    pub active: bool,
}

/// A ticketing system, as the jobs see it. Object safe: jobs hold an
/// `Arc<dyn TicketEngine>`, and tests may stand in their own.
// Some operations serve the rescan jobs (issue 8) and are unused here yet.
#[allow(dead_code)]
pub trait TicketEngine: Send + Sync {
    /// The project key every query and new ticket is scoped to.
    fn project(&self) -> &str;

    /// The project's status name for an Aegis status (`status_map`, keyed by
    /// the lower-case Aegis status; the Aegis status itself when unmapped).
    fn status_name(&self, aegis_status: &str) -> String;

    /// A query already restricted to the project (`project = "<P>"`), to which
    /// callers add clauses with Aegis field names.
    fn query(&self) -> Query;

    /// Opens a ticket. Not idempotent: callers that retry after an ambiguous
    /// failure search by label first (see [`TicketError::is_ambiguous`]).
    fn create<'a>(&'a self, ticket: &'a NewTicket) -> BoxFuture<'a, TicketResult<CreatedTicket>>;

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, TicketResult<Ticket>>;

    /// Every ticket matching `query`, page by page, following the page size the
    /// server actually returns.
    fn search<'a>(&'a self, query: Query) -> BoxStream<'a, TicketResult<Ticket>>;

    /// Tickets carrying any of `labels` (one query; at most 50 labels).
    fn find_by_labels<'a>(
        &'a self,
        labels: &'a [String],
    ) -> BoxFuture<'a, TicketResult<Vec<Ticket>>>;

    /// Moves the ticket to `aegis_status`, hop by hop through the workflow
    /// transitions the ticket offers (several hops when needed).
    fn transition<'a>(
        &'a self,
        key: &'a str,
        aegis_status: &'a str,
        options: TransitionOptions,
    ) -> BoxFuture<'a, TicketResult<()>>;

    fn add_comment<'a>(&'a self, key: &'a str, body: &'a str) -> BoxFuture<'a, TicketResult<()>>;

    /// Links `child` to `parent` with the configured link type ("Related").
    fn link<'a>(&'a self, child: &'a str, parent: &'a str) -> BoxFuture<'a, TicketResult<()>>;

    /// Assigns the ticket (None = unassigned).
    fn assign<'a>(
        &'a self,
        key: &'a str,
        assignee: Option<&'a str>,
    ) -> BoxFuture<'a, TicketResult<()>>;

    /// Writes fields by Aegis name (unknown fields are an error here: the
    /// caller asked for them explicitly).
    fn update_fields<'a>(
        &'a self,
        key: &'a str,
        fields: &'a BTreeMap<String, FieldValue>,
    ) -> BoxFuture<'a, TicketResult<()>>;

    /// A user by name, None when JIRA does not know it.
    fn find_user<'a>(&'a self, name: &'a str) -> BoxFuture<'a, TicketResult<Option<User>>>;
}

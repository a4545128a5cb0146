//! Fault injection: rules that make a vendor endpoint misbehave for a number of requests.
//!
//! A rule matches on vendor, method and endpoint (a path prefix such as
//! `/api/2.0/fo/asset/host/vm/detection/`, or any substring of the path when it does not start
//! with `/`), may let the first `skip` matching requests through, then fires for `count`
//! requests (or forever). Several rules can fire on one request (e.g. latency and a 503).
//! The HTTP layer (`server.rs`) carries the actions out; this module only decides.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// Which simulated vendor a listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Vendor {
    Jira,
    Qualys,
    Nexpose,
}

impl Vendor {
    pub fn as_str(self) -> &'static str {
        match self {
            Vendor::Jira => "jira",
            Vendor::Qualys => "qualys",
            Vendor::Nexpose => "nexpose",
        }
    }
}

/// What a fault does to a request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FaultAction {
    /// Delay the response by `ms` milliseconds, then serve it normally.
    Latency { ms: u64 },
    /// Serve the request at once (its effects happen), then hold the response
    /// back for `ms` milliseconds: a client that gives up or dies meanwhile
    /// never learns what it did (e.g. a scan launched but never recorded).
    ResponseLatency { ms: u64 },
    /// Answer 429 with `Retry-After: retry_after_secs` and the vendor's error body.
    TooManyRequests { retry_after_secs: u64 },
    /// Answer `status` (500, 502, 503, …) with the vendor's error body.
    ServerError { status: u16 },
    /// Close the connection (TCP RST) without sending any response.
    ConnectionReset,
    /// Serve the first bytes of the real body, then garbage that no parser accepts.
    MalformedBody,
    /// Serve only the first `after_bytes` (default 64) bytes of the real body.
    TruncatedBody {
        #[serde(default)]
        after_bytes: Option<usize>,
    },
    /// Paging that never advances: Qualys WARNING/URL points at the same page, Nexpose reports
    /// one more page forever, JIRA search ignores `startAt` and inflates `total`.
    PagingLoop,
}

impl FaultAction {
    pub fn name(&self) -> &'static str {
        match self {
            FaultAction::Latency { .. } => "latency",
            FaultAction::ResponseLatency { .. } => "response_latency",
            FaultAction::TooManyRequests { .. } => "too_many_requests",
            FaultAction::ServerError { .. } => "server_error",
            FaultAction::ConnectionReset => "connection_reset",
            FaultAction::MalformedBody => "malformed_body",
            FaultAction::TruncatedBody { .. } => "truncated_body",
            FaultAction::PagingLoop => "paging_loop",
        }
    }
}

/// A fault rule as injected through the control API or [`crate::Simulator::inject_fault`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultSpec {
    /// Vendor the rule applies to; `None` = every vendor.
    #[serde(default)]
    pub vendor: Option<Vendor>,
    /// Path prefix (starting with `/`) or path substring; `None` = every endpoint.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// HTTP method (case-insensitive); `None` = any.
    #[serde(default)]
    pub method: Option<String>,
    pub action: FaultAction,
    /// Number of requests the rule fires for; `None` = until removed.
    #[serde(default)]
    pub count: Option<u32>,
    /// Matching requests to let through before the rule starts firing.
    #[serde(default)]
    pub skip: u32,
}

impl FaultSpec {
    /// A rule for `vendor` firing `action` on every endpoint for `count` requests.
    pub fn new(vendor: Vendor, action: FaultAction, count: u32) -> FaultSpec {
        FaultSpec {
            vendor: Some(vendor),
            endpoint: None,
            method: None,
            action,
            count: Some(count),
            skip: 0,
        }
    }

    /// Restrict the rule to an endpoint (path prefix or substring).
    pub fn on(mut self, endpoint: impl Into<String>) -> FaultSpec {
        self.endpoint = Some(endpoint.into());
        self
    }

    fn matches(&self, vendor: Vendor, method: &str, path: &str) -> bool {
        if self.vendor.is_some_and(|v| v != vendor) {
            return false;
        }
        if let Some(m) = &self.method {
            if !m.eq_ignore_ascii_case(method) {
                return false;
            }
        }
        match &self.endpoint {
            None => true,
            Some(e) if e.starts_with('/') => path.starts_with(e.as_str()),
            Some(e) => path.contains(e.as_str()),
        }
    }
}

/// A rule and its counters, as listed by `GET /_sim/faults`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FaultStatus {
    pub id: u64,
    pub spec: FaultSpec,
    pub matched: u32,
    pub fired: u32,
}

#[derive(Debug, Default)]
pub struct FaultTable {
    rules: Mutex<Vec<FaultStatus>>,
    next_id: AtomicU64,
}

impl FaultTable {
    fn rules(&self) -> std::sync::MutexGuard<'_, Vec<FaultStatus>> {
        self.rules.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn add(&self, spec: FaultSpec) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        self.rules().push(FaultStatus {
            id,
            spec,
            matched: 0,
            fired: 0,
        });
        id
    }

    pub fn remove(&self, id: u64) -> bool {
        let mut rules = self.rules();
        let before = rules.len();
        rules.retain(|r| r.id != id);
        rules.len() != before
    }

    pub fn clear(&self) {
        self.rules().clear();
    }

    pub fn list(&self) -> Vec<FaultStatus> {
        self.rules().clone()
    }

    /// Decide which actions fire for this request, consuming one use of each rule that fires.
    pub fn take(&self, vendor: Vendor, method: &str, path: &str) -> Vec<FaultAction> {
        let mut fired = Vec::new();
        for rule in self.rules().iter_mut() {
            if !rule.spec.matches(vendor, method, path) {
                continue;
            }
            rule.matched += 1;
            if rule.matched <= rule.spec.skip {
                continue;
            }
            if rule.spec.count.is_some_and(|c| rule.fired >= c) {
                continue;
            }
            rule.fired += 1;
            fired.push(rule.spec.action.clone());
        }
        fired
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_fires_count_times_after_skip() {
        let t = FaultTable::default();
        t.add(FaultSpec {
            skip: 1,
            ..FaultSpec::new(Vendor::Jira, FaultAction::ConnectionReset, 2).on("/rest/api/2/issue")
        });
        assert!(t
            .take(Vendor::Jira, "GET", "/rest/api/2/issue/VULN-1")
            .is_empty());
        assert_eq!(
            t.take(Vendor::Jira, "GET", "/rest/api/2/issue/VULN-1")
                .len(),
            1
        );
        assert!(t
            .take(Vendor::Qualys, "GET", "/rest/api/2/issue/VULN-1")
            .is_empty());
        assert!(t.take(Vendor::Jira, "GET", "/rest/api/2/field").is_empty());
        assert_eq!(t.take(Vendor::Jira, "POST", "/rest/api/2/issue/").len(), 1);
        assert!(t
            .take(Vendor::Jira, "GET", "/rest/api/2/issue/VULN-1")
            .is_empty());
    }
}

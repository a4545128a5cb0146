//! The Qualys API v2 simulator (`/api/2.0/fo/...`, XML): basic auth, mandatory
//! `X-Requested-With`, `X-RateLimit-*` / `X-Concurrency-Limit-*` headers (and 409 when a limit is
//! exceeded), the streamed host detection list with `truncation_limit` / `WARNING/URL` paging,
//! knowledge base, scans, scan summaries, asset groups, appliances, option profiles and
//! static search lists.
//!
//! Parameters are read from the query string and, for form posts, the body; identical repeated
//! parameters are accepted (Go-Aegis repeats them on paging).

mod hld;
pub mod state;
pub mod xml;

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::{Extension, Router};
use base64::Engine;
use chrono::{DateTime, NaiveDate, Utc};

use crate::faults::Vendor;
use crate::server::PagingLoop;
use crate::world::mix;
use crate::{Control, Profile};
use state::{ApplianceStatus, OptionProfile, QualysState, Scan, ScanState, SearchList};
use xml::{cdata, esc, prolog, push_time, simple_return, time};

/// A Qualys error: HTTP status plus SIMPLE_RETURN CODE and TEXT.
#[derive(Debug)]
pub struct QualysError {
    pub status: u16,
    pub code: u32,
    pub text: String,
}

impl QualysError {
    pub fn new(status: u16, code: u32, text: impl Into<String>) -> QualysError {
        QualysError {
            status,
            code,
            text: text.into(),
        }
    }
    fn missing(param: &str) -> QualysError {
        QualysError::new(400, 1903, format!("Missing required parameter(s): {param}"))
    }
    fn invalid(param: &str, value: &str) -> QualysError {
        QualysError::new(
            400,
            1905,
            format!("Parameter {param} has invalid value: {value}"),
        )
    }
}

impl IntoResponse for QualysError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_REQUEST);
        let body = simple_return(Utc::now(), Some(self.code), &self.text, &[]);
        (status, xml_headers(), body).into_response()
    }
}

fn xml_headers() -> [(header::HeaderName, HeaderValue); 1] {
    [(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/xml;charset=UTF-8"),
    )]
}

fn xml_ok(body: String) -> Response {
    (StatusCode::OK, xml_headers(), body).into_response()
}

/// The body of an injected 429/5xx, in Qualys' SIMPLE_RETURN shape.
pub(crate) fn fault_response(status: u16) -> Response {
    let (code, text) = match status {
        429 => (
            1965,
            "This API cannot be run again until the rate limit window resets.",
        ),
        503 => (
            999,
            "Service temporarily unavailable. Please try again later.",
        ),
        _ => (999, "Internal error. Please contact customer support."),
    };
    QualysError::new(status, code, text).into_response()
}

/// Request parameters from the query string and a form body.
#[derive(Debug, Default, Clone)]
pub struct Params(Vec<(String, String)>);

impl Params {
    fn parse(uri: &Uri, headers: &HeaderMap, body: &[u8]) -> Params {
        let mut v: Vec<(String, String)> = uri
            .query()
            .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
            .unwrap_or_default();
        let is_form = headers
            .get(header::CONTENT_TYPE)
            .and_then(|c| c.to_str().ok())
            .is_some_and(|c| c.starts_with("application/x-www-form-urlencoded"));
        if is_form {
            v.extend(form_urlencoded::parse(body).into_owned());
        }
        Params(v)
    }

    /// First value of `name`; an error in strict mode when repeated with different values.
    fn get(&self, name: &str, strict: bool) -> Result<Option<&str>, QualysError> {
        let mut vals = self
            .0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str());
        let first = vals.next();
        if strict {
            if let Some(f) = first {
                if vals.any(|v| v != f) {
                    return Err(QualysError::new(
                        400,
                        1905,
                        format!(
                            "Parameter {name} was specified more than once with different values."
                        ),
                    ));
                }
            }
        }
        Ok(first)
    }

    fn pairs(&self) -> &[(String, String)] {
        &self.0
    }
}

/// Request context handed to every action.
struct Call {
    ctx: Arc<Control>,
    params: Params,
    body: Bytes,
    user: String,
    paging_loop: bool,
    path: String,
}

impl Call {
    fn strict(&self) -> bool {
        self.ctx.cfg.profile == Profile::Strict
    }
    fn get(&self, name: &str) -> Result<Option<&str>, QualysError> {
        self.params.get(name, self.strict())
    }
    fn require(&self, name: &str) -> Result<&str, QualysError> {
        self.get(name)?
            .filter(|v| !v.is_empty())
            .ok_or_else(|| QualysError::missing(name))
    }
    fn flag(&self, name: &str) -> Result<bool, QualysError> {
        Ok(matches!(self.get(name)?, Some("1")))
    }
}

/// The authenticated Qualys user.
#[derive(Clone)]
struct QualysUser(String);

pub(crate) fn router(ctx: Arc<Control>) -> Router<Arc<Control>> {
    let mut r = Router::new();
    for (path, handler) in [
        ("/api/2.0/fo/appliance", Endpoint::Appliance),
        ("/api/2.0/fo/asset/host/vm/detection", Endpoint::Detection),
        ("/api/2.0/fo/asset/group", Endpoint::AssetGroup),
        ("/api/2.0/fo/knowledge_base/vuln", Endpoint::KnowledgeBase),
        ("/api/2.0/fo/scan", Endpoint::Scan),
        ("/api/2.0/fo/scan/summary", Endpoint::ScanSummary),
        (
            "/api/2.0/fo/subscription/option_profile",
            Endpoint::OptionProfile,
        ),
        (
            "/api/2.0/fo/subscription/option_profile/vm",
            Endpoint::OptionProfileVm,
        ),
        ("/api/2.0/fo/qid/search_list/static", Endpoint::SearchList),
    ] {
        let h = move |state: State<Arc<Control>>,
                      user: Option<Extension<QualysUser>>,
                      paging: Option<Extension<PagingLoop>>,
                      uri: Uri,
                      headers: HeaderMap,
                      body: Bytes| {
            dispatch(handler, state, user, paging, uri, headers, body)
        };
        r = r.route(&format!("{path}/"), any(h)).route(path, any(h));
    }
    r.route_layer(middleware::from_fn_with_state(ctx, gate))
}

#[derive(Clone, Copy, Debug)]
enum Endpoint {
    Appliance,
    Detection,
    AssetGroup,
    KnowledgeBase,
    Scan,
    ScanSummary,
    OptionProfile,
    OptionProfileVm,
    SearchList,
}

async fn dispatch(
    endpoint: Endpoint,
    State(ctx): State<Arc<Control>>,
    user: Option<Extension<QualysUser>>,
    paging: Option<Extension<PagingLoop>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let call = Call {
        params: Params::parse(&uri, &headers, &body),
        user: user
            .map(|Extension(QualysUser(u))| u)
            .unwrap_or_else(|| ctx.cfg.credentials.username.clone()),
        ctx,
        body,
        paging_loop: paging.is_some(),
        path: uri.path().to_string(),
    };
    let action = match call.get("action") {
        Ok(Some(a)) if !a.is_empty() => a.to_string(),
        Ok(_) => return QualysError::missing("action").into_response(),
        Err(e) => return e.into_response(),
    };
    let result = match (endpoint, action.as_str()) {
        (Endpoint::Appliance, "list") => appliances(&call),
        (Endpoint::Detection, "list") => return hld::host_list_detection(call),
        (Endpoint::AssetGroup, "list") => asset_groups(&call),
        (Endpoint::KnowledgeBase, "list") => knowledge_base(&call),
        (Endpoint::Scan, "launch") => launch_scan(&call),
        (Endpoint::Scan, "list") => list_scans(&call),
        (Endpoint::Scan, "cancel") => cancel_scan(&call),
        (Endpoint::ScanSummary, "list") => scan_summary(&call),
        (Endpoint::OptionProfile, "export") => export_profile(&call),
        (Endpoint::OptionProfile, "import") => import_profile(&call),
        (Endpoint::OptionProfileVm, "delete") => delete_profile(&call),
        (Endpoint::OptionProfileVm, "export") => export_profile(&call),
        (Endpoint::SearchList, "create") => create_search_list(&call),
        (Endpoint::SearchList, "delete") => delete_search_list(&call),
        (Endpoint::SearchList, "list") => list_search_lists(&call),
        (_, other) => Err(QualysError::invalid("action", other)),
    };
    match result {
        Ok(body) => xml_ok(body),
        Err(e) => e.into_response(),
    }
}

/// Authentication, `X-Requested-With`, rate and concurrency limits, and the limit headers.
async fn gate(State(ctx): State<Arc<Control>>, mut req: Request, next: Next) -> Response {
    let limits = &ctx.cfg.qualys;
    let Some(user) = authenticate(&ctx, req.headers()) else {
        let mut r = QualysError::new(401, 2000, "Bad Login/Password").into_response();
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"MSP Portal\""),
        );
        return r;
    };
    if !req.headers().contains_key("x-requested-with") {
        return QualysError::new(400, 1920, "X-Requested-With header is required").into_response();
    }
    req.extensions_mut().insert(QualysUser(user));
    let path = req.uri().path().trim_end_matches('/').to_string();
    let running = ctx.journal.in_flight(Vendor::Qualys);
    let window = Duration::from_secs(u64::from(limits.window_sec.max(1)));
    let (used, wait) = {
        let mut windows = ctx.qualys_windows.lock().unwrap_or_else(|p| p.into_inner());
        let times = windows.entry(path).or_default();
        let now = Instant::now();
        while times
            .front()
            .is_some_and(|t| now.duration_since(*t) >= window)
        {
            times.pop_front();
        }
        let wait = times
            .front()
            .map(|t| window.saturating_sub(now.duration_since(*t)))
            .unwrap_or_default();
        let used = times.len() as u32;
        if !(limits.enforce && used >= limits.rate_limit) {
            times.push_back(now);
        }
        (used, wait)
    };
    let mut resp = if limits.enforce && used >= limits.rate_limit {
        let mut r = QualysError::new(
            409,
            1965,
            format!(
                "This API cannot be run again for another {} seconds.",
                wait.as_secs().max(1)
            ),
        )
        .into_response();
        set_header(&mut r, "X-RateLimit-ToWait-Sec", wait.as_secs().max(1));
        r
    } else if limits.enforce && running as u32 > limits.concurrency_limit {
        QualysError::new(
            409,
            1960,
            format!(
                "This API cannot be run again until {} currently running instance has finished.",
                limits.concurrency_limit
            ),
        )
        .into_response()
    } else {
        next.run(req).await
    };
    let remaining = limits.rate_limit.saturating_sub(used + 1);
    set_header(&mut resp, "X-RateLimit-Limit", limits.rate_limit);
    set_header(&mut resp, "X-RateLimit-Window-Sec", limits.window_sec);
    set_header(&mut resp, "X-RateLimit-Remaining", remaining);
    if !resp.headers().contains_key("X-RateLimit-ToWait-Sec") {
        set_header(&mut resp, "X-RateLimit-ToWait-Sec", 0);
    }
    set_header(
        &mut resp,
        "X-Concurrency-Limit-Limit",
        limits.concurrency_limit,
    );
    set_header(&mut resp, "X-Concurrency-Limit-Running", running);
    resp
}

fn set_header(resp: &mut Response, name: &'static str, v: impl std::fmt::Display) {
    if let Ok(v) = HeaderValue::from_str(&v.to_string()) {
        resp.headers_mut().insert(name, v);
    }
}

fn authenticate(ctx: &Control, headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let b64 = value.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, pass) = decoded.split_once(':')?;
    let c = &ctx.cfg.credentials;
    (user == c.username && pass == c.password).then(|| user.to_string())
}

// ------------------------------------------------------------------ helpers

/// Parse `1,3,5-9` into inclusive ranges.
fn parse_id_ranges(param: &str, s: &str) -> Result<Vec<(u64, u64)>, QualysError> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let a: u64 = a
            .trim()
            .parse()
            .map_err(|_| QualysError::invalid(param, s))?;
        let b: u64 = b
            .trim()
            .parse()
            .map_err(|_| QualysError::invalid(param, s))?;
        if a > b {
            return Err(QualysError::invalid(param, s));
        }
        out.push((a, b));
    }
    Ok(out)
}

fn in_ranges(ranges: &[(u64, u64)], v: u64) -> bool {
    ranges.iter().any(|(a, b)| (*a..=*b).contains(&v))
}

fn parse_since(param: &str, s: &str) -> Result<DateTime<Utc>, QualysError> {
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        if let Some(t) = d.and_hms_opt(0, 0, 0) {
            return Ok(t.and_utc());
        }
    }
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| QualysError::invalid(param, s))
}

fn open_doc(root: &str, dtd: &str, now: DateTime<Utc>) -> String {
    let mut out = prolog(root, dtd);
    let _ = write!(out, "<{root}>\n  <RESPONSE>\n    <DATETIME>");
    push_time(&mut out, now);
    out.push_str("</DATETIME>\n");
    out
}

fn close_doc(out: &mut String, root: &str) {
    let _ = write!(out, "  </RESPONSE>\n</{root}>\n");
}

// ------------------------------------------------------------------ appliances, groups

fn appliances(call: &Call) -> Result<String, QualysError> {
    let ids = call
        .get("ids")?
        .map(|s| parse_id_ranges("ids", s))
        .transpose()?;
    let now = call.ctx.now();
    let timing = call.ctx.cfg.scan_timing;
    let w = call.ctx.world();
    let running = w.qualys.running_scans(now, &timing);
    let mut out = open_doc(
        "APPLIANCE_LIST_OUTPUT",
        "fo/appliance/appliance_list_output.dtd",
        now,
    );
    out.push_str("    <APPLIANCE_LIST>\n");
    for a in w.qualys.appliances.values() {
        if ids.as_ref().is_some_and(|r| !in_ranges(r, u64::from(a.id))) {
            continue;
        }
        let h = mix(u64::from(a.id));
        let _ = write!(
            out,
            "      <APPLIANCE>\n        <ID>{}</ID>\n        <UUID>{:08x}-{:04x}-{:04x}-{:04x}-{:012x}</UUID>\n        <NAME>{}</NAME>\n        <NETWORK_ID>{}</NETWORK_ID>\n        <SOFTWARE_VERSION>{}</SOFTWARE_VERSION>\n        <RUNNING_SLICES_COUNT>{}</RUNNING_SLICES_COUNT>\n        <RUNNING_SCAN_COUNT>{}</RUNNING_SCAN_COUNT>\n        <STATUS>{}</STATUS>\n      </APPLIANCE>\n",
            a.id,
            h as u32,
            (h >> 32) as u16,
            (h >> 48) as u16,
            (h >> 8) as u16,
            h & 0xffff_ffff_ffff,
            esc(&a.name),
            a.network_id,
            esc(&a.software_version),
            if a.status == ApplianceStatus::Online { running.min(1) } else { 0 },
            if a.status == ApplianceStatus::Online { running } else { 0 },
            match a.status {
                ApplianceStatus::Online => "Online",
                ApplianceStatus::Offline => "Offline",
            }
        );
    }
    out.push_str("    </APPLIANCE_LIST>\n");
    close_doc(&mut out, "APPLIANCE_LIST_OUTPUT");
    Ok(out)
}

fn asset_groups(call: &Call) -> Result<String, QualysError> {
    let ids = call
        .get("ids")?
        .map(|s| parse_id_ranges("ids", s))
        .transpose()?;
    let now = call.ctx.now();
    let w = call.ctx.world();
    let mut out = open_doc(
        "ASSET_GROUP_LIST_OUTPUT",
        "fo/asset/group/asset_group_list_output.dtd",
        now,
    );
    let groups: Vec<_> = w
        .qualys
        .asset_groups
        .values()
        .filter(|g| ids.as_ref().is_none_or(|r| in_ranges(r, u64::from(g.id))))
        .collect();
    if !groups.is_empty() {
        out.push_str("    <ASSET_GROUP_LIST>\n");
        for g in groups {
            let _ = write!(
                out,
                "      <ASSET_GROUP>\n        <ID>{}</ID>\n        <TITLE>{}</TITLE>\n        <OWNER_ID>1</OWNER_ID>\n        <UNIT_ID>0</UNIT_ID>\n        <NETWORK_ID>{}</NETWORK_ID>\n        <LAST_UPDATE>{}</LAST_UPDATE>\n        <BUSINESS_IMPACT>{}</BUSINESS_IMPACT>\n",
                g.id,
                cdata(&g.title),
                g.network_id,
                time(w.estate.generated_at),
                cdata("High")
            );
            if !g.ip_set.is_empty() {
                out.push_str("        <IP_SET>\n");
                for ip in &g.ip_set {
                    let tag = if ip.contains('-') { "IP_RANGE" } else { "IP" };
                    let _ = writeln!(out, "          <{tag}>{ip}</{tag}>");
                }
                out.push_str("        </IP_SET>\n");
            }
            if !g.appliance_ids.is_empty() {
                let ids: Vec<String> = g.appliance_ids.iter().map(u32::to_string).collect();
                let _ = write!(
                    out,
                    "        <APPLIANCE_IDS>{}</APPLIANCE_IDS>\n        <DEFAULT_APPLIANCE_ID>{}</DEFAULT_APPLIANCE_ID>\n",
                    ids.join(","),
                    g.appliance_ids[0]
                );
            }
            out.push_str("      </ASSET_GROUP>\n");
        }
        out.push_str("    </ASSET_GROUP_LIST>\n");
    }
    close_doc(&mut out, "ASSET_GROUP_LIST_OUTPUT");
    Ok(out)
}

// ------------------------------------------------------------------ knowledge base

fn knowledge_base(call: &Call) -> Result<String, QualysError> {
    let ids = call
        .get("ids")?
        .map(|s| parse_id_ranges("ids", s))
        .transpose()?;
    let id_min: Option<u64> = call
        .get("id_min")?
        .map(|s| s.parse().map_err(|_| QualysError::invalid("id_min", s)))
        .transpose()?;
    let id_max: Option<u64> = call
        .get("id_max")?
        .map(|s| s.parse().map_err(|_| QualysError::invalid("id_max", s)))
        .transpose()?;
    let since = call
        .get("last_modified_after")?
        .map(|s| parse_since("last_modified_after", s))
        .transpose()?;
    let details = call.get("details")?.unwrap_or("Basic").to_string();
    if !matches!(details.as_str(), "Basic" | "All" | "None") {
        return Err(QualysError::invalid("details", &details));
    }
    let now = call.ctx.now();
    let w = call.ctx.world();
    let mut out = open_doc(
        "KNOWLEDGE_BASE_VULN_LIST_OUTPUT",
        "fo/knowledge_base/vuln/knowledge_base_vuln_list_output.dtd",
        now,
    );
    let vulns: Vec<_> = w
        .estate
        .kb
        .iter()
        .filter(|k| ids.as_ref().is_none_or(|r| in_ranges(r, u64::from(k.qid))))
        .filter(|k| id_min.is_none_or(|m| u64::from(k.qid) >= m))
        .filter(|k| id_max.is_none_or(|m| u64::from(k.qid) <= m))
        .filter(|k| since.is_none_or(|s| k.modified >= s))
        .collect();
    if !vulns.is_empty() {
        out.push_str("    <VULN_LIST>\n");
        for k in vulns {
            let _ = write!(
                out,
                "      <VULN>\n        <QID>{}</QID>\n        <VULN_TYPE>Vulnerability</VULN_TYPE>\n        <SEVERITY_LEVEL>{}</SEVERITY_LEVEL>\n        <TITLE>{}</TITLE>\n",
                k.qid,
                k.severity,
                cdata(&k.title)
            );
            if details == "None" {
                out.push_str("      </VULN>\n");
                continue;
            }
            let _ = write!(
                out,
                "        <CATEGORY>{}</CATEGORY>\n        <LAST_SERVICE_MODIFICATION_DATETIME>{}</LAST_SERVICE_MODIFICATION_DATETIME>\n        <PUBLISHED_DATETIME>{}</PUBLISHED_DATETIME>\n        <PATCHABLE>{}</PATCHABLE>\n",
                esc(&k.category),
                time(k.modified),
                time(k.published),
                u8::from(k.patchable)
            );
            let product = k.title.split(" Vulnerability").next().unwrap_or(&k.title);
            let _ = write!(
                out,
                "        <SOFTWARE_LIST>\n          <SOFTWARE>\n            <PRODUCT>{}</PRODUCT>\n            <VENDOR>{}</VENDOR>\n          </SOFTWARE>\n        </SOFTWARE_LIST>\n        <VENDOR_REFERENCE_LIST>\n          <VENDOR_REFERENCE>\n            <ID>{}</ID>\n            <URL>{}</URL>\n          </VENDOR_REFERENCE>\n        </VENDOR_REFERENCE_LIST>\n",
                cdata(&product.to_lowercase()),
                cdata("sim-vendor"),
                cdata(&format!("SIM-{}", k.qid)),
                cdata(&format!("https://vendor.sim.example/advisories/{}", k.qid))
            );
            if !k.cves.is_empty() {
                out.push_str("        <CVE_LIST>\n");
                for c in &k.cves {
                    let _ = write!(
                        out,
                        "          <CVE>\n            <ID>{}</ID>\n            <URL>{}</URL>\n          </CVE>\n",
                        cdata(c),
                        cdata(&format!("http://cve.mitre.org/cgi-bin/cvename.cgi?name={c}"))
                    );
                }
                out.push_str("        </CVE_LIST>\n");
            }
            if details == "All" {
                let _ = write!(
                    out,
                    "        <DIAGNOSIS>{}</DIAGNOSIS>\n        <CONSEQUENCE>{}</CONSEQUENCE>\n        <SOLUTION>{}</SOLUTION>\n",
                    cdata(&k.diagnosis),
                    cdata(&k.consequence),
                    cdata(&k.solution)
                );
            }
            let temporal2 = (k.cvss2 * 0.85 * 10.0).round() / 10.0;
            let temporal3 = (k.cvss3 * 0.9 * 10.0).round() / 10.0;
            let _ = write!(
                out,
                "        <CVSS>\n          <BASE source=\"service\">{:.1}</BASE>\n          <TEMPORAL>{:.1}</TEMPORAL>\n          <ACCESS>\n            <VECTOR>3</VECTOR>\n            <COMPLEXITY>1</COMPLEXITY>\n          </ACCESS>\n          <IMPACT>\n            <CONFIDENTIALITY>2</CONFIDENTIALITY>\n            <INTEGRITY>2</INTEGRITY>\n            <AVAILABILITY>2</AVAILABILITY>\n          </IMPACT>\n          <AUTHENTICATION>1</AUTHENTICATION>\n          <EXPLOITABILITY>2</EXPLOITABILITY>\n          <REMEDIATION_LEVEL>1</REMEDIATION_LEVEL>\n          <REPORT_CONFIDENCE>3</REPORT_CONFIDENCE>\n        </CVSS>\n        <CVSS_V3>\n          <BASE>{:.1}</BASE>\n          <TEMPORAL>{:.1}</TEMPORAL>\n        </CVSS_V3>\n        <PCI_FLAG>{}</PCI_FLAG>\n        <DISCOVERY>\n          <REMOTE>1</REMOTE>\n        </DISCOVERY>\n",
                k.cvss2,
                temporal2,
                k.cvss3,
                temporal3,
                u8::from(k.cvss3 >= 4.0)
            );
            out.push_str("      </VULN>\n");
        }
        out.push_str("    </VULN_LIST>\n");
    }
    close_doc(&mut out, "KNOWLEDGE_BASE_VULN_LIST_OUTPUT");
    Ok(out)
}

// ------------------------------------------------------------------ scans

fn launch_scan(call: &Call) -> Result<String, QualysError> {
    let title = call.get("scan_title")?.unwrap_or("").to_string();
    let option_id = call.get("option_id")?;
    let option_title = call.get("option_title")?;
    let now = call.ctx.now();
    let timing = call.ctx.cfg.scan_timing;
    let mut w = call.ctx.world();
    let w = &mut *w;
    let profile: OptionProfile = match (option_id, option_title) {
        (Some(id), _) => {
            let id: u64 = id
                .parse()
                .map_err(|_| QualysError::invalid("option_id", id))?;
            w.qualys.option_profiles.get(&id).cloned().ok_or_else(|| {
                QualysError::new(
                    400,
                    1905,
                    format!("Option profile with id {id} does not exist."),
                )
            })?
        }
        (None, Some(t)) => w
            .qualys
            .option_profiles
            .values()
            .find(|p| p.title == t)
            .cloned()
            .ok_or_else(|| {
                QualysError::new(400, 1905, format!("Option profile '{t}' does not exist."))
            })?,
        (None, None) => return Err(QualysError::missing("option_id or option_title")),
    };
    // Targets: IPs / ranges, or EC2 instance ids.
    let mut targets = Vec::new();
    let target_text;
    let mut ec2 = None;
    if let Some(ips) = call.get("ip")?.filter(|s| !s.is_empty()) {
        let ranges = state::parse_ip_list(ips).map_err(|e| QualysError::new(400, 1905, e))?;
        for (a, b) in &ranges {
            if b - a > 65_536 {
                return Err(QualysError::invalid("ip", ips));
            }
            for ip in *a..=*b {
                if let Some(idx) = w.estate.host_by_ip(Ipv4Addr::from(ip)) {
                    targets.push(idx);
                }
            }
        }
        target_text = ips.replace(' ', "").replace(',', ", ");
    } else if let Some(ids) = call.get("ec2_instance_ids")?.filter(|s| !s.is_empty()) {
        ec2 = Some((
            call.require("ec2_endpoint")?.to_string(),
            call.require("connector_name")?.to_string(),
        ));
        for id in ids.split(',').map(str::trim) {
            if let Some(idx) = w.estate.host_by_instance_id(id) {
                targets.push(idx);
            }
        }
        target_text = ids.to_string();
    } else {
        return Err(QualysError::missing(
            "ip or asset_groups or ec2_instance_ids",
        ));
    }
    if targets.is_empty() {
        return Err(QualysError::new(
            400,
            1905,
            "None of the specified IPs are eligible for Vulnerability Management scanning.",
        ));
    }
    targets.sort_unstable();
    targets.dedup();
    // Scanner choice.
    let scanner = if let Some(ids) = call.get("iscanner_id")?.filter(|s| !s.is_empty()) {
        let mut names = Vec::new();
        for id in ids.split(',').map(str::trim) {
            let a = id
                .parse::<u32>()
                .ok()
                .and_then(|id| w.qualys.appliances.get(&id))
                .ok_or_else(|| {
                    QualysError::new(400, 1905, format!("Invalid scanner appliance id: {id}"))
                })?;
            if a.status != ApplianceStatus::Online {
                return Err(QualysError::new(
                    400,
                    1905,
                    format!(
                        "Scanner appliance {} is not available (status Offline).",
                        a.name
                    ),
                ));
            }
            names.push(a.name.clone());
        }
        names.join(",")
    } else if let Some(name) = call.get("iscanner_name")?.filter(|s| !s.is_empty()) {
        if name != "External" {
            let a = w
                .qualys
                .appliances
                .values()
                .find(|a| a.name == name)
                .ok_or_else(|| {
                    QualysError::new(400, 1905, format!("Invalid scanner appliance name: {name}"))
                })?;
            if a.status != ApplianceStatus::Online {
                return Err(QualysError::new(
                    400,
                    1905,
                    format!("Scanner appliance {name} is not available (status Offline)."),
                ));
            }
        }
        name.to_string()
    } else {
        "External".to_string()
    };
    let network_id: u32 = match call.get("ip_network_id")? {
        Some(n) if !n.is_empty() => n
            .parse()
            .map_err(|_| QualysError::invalid("ip_network_id", n))?,
        _ => 0,
    };
    let limit = call.ctx.cfg.qualys.concurrent_scan_limit;
    if w.qualys.running_scans(now, &timing) >= limit {
        return Err(QualysError::new(
            409,
            2008,
            format!("You are allowed to run {limit} concurrent scans. This limit has already been reached."),
        ));
    }
    let scope = w.qualys.scope_of(&profile);
    let (id, reference) = w.qualys.fresh_scan_ref(now);
    w.qualys.scans.insert(
        id,
        Scan {
            id,
            reference: reference.clone(),
            title,
            user_login: call.user.clone(),
            option_profile_id: profile.id,
            scope,
            targets,
            target_text,
            scanner,
            network_id,
            ec2,
            launched_at: now,
            forced: None,
            applied: false,
            finished_at: None,
            dead_ips: Vec::new(),
            scheduled: false,
        },
    );
    Ok(simple_return(
        now,
        None,
        "New vm scan launched",
        &[
            ("ID".into(), id.to_string()),
            ("REFERENCE".into(), reference),
        ],
    ))
}

fn duration_text(secs: i64) -> String {
    format!(
        "{:02}:{:02}:{:02}",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60
    )
}

fn list_scans(call: &Call) -> Result<String, QualysError> {
    let reference = call.get("scan_ref")?.map(str::to_string);
    let states: Option<Vec<String>> = call
        .get("state")?
        .map(|s| s.split(',').map(|x| x.trim().to_string()).collect());
    let kind = call.get("type")?.map(str::to_string);
    let since = call
        .get("launched_after_datetime")?
        .map(|s| parse_since("launched_after_datetime", s))
        .transpose()?;
    let now = call.ctx.now();
    let timing = call.ctx.cfg.scan_timing;
    let w = call.ctx.world();
    let mut out = open_doc("SCAN_LIST_OUTPUT", "fo/scan/scan_list_output.dtd", now);
    let mut rows = String::new();
    for s in w.qualys.scans.values().rev() {
        if reference.as_ref().is_some_and(|r| *r != s.reference) {
            continue;
        }
        // `type`: Scheduled scans, or those launched on demand / by the API.
        if kind
            .as_ref()
            .is_some_and(|k| (k == "Scheduled") != s.scheduled || !scan_type_known(k))
        {
            continue;
        }
        if since.is_some_and(|t| s.launched_at < t) {
            continue;
        }
        let (st, processed) = QualysState::phase(s, now, &timing);
        if states
            .as_ref()
            .is_some_and(|v| !v.iter().any(|x| x.eq_ignore_ascii_case(st.as_str())))
        {
            continue;
        }
        let duration = match s.finished_at {
            Some(end) if st.is_terminal() => duration_text((end - s.launched_at).num_seconds()),
            _ => "Pending".into(),
        };
        let profile_title = w
            .qualys
            .option_profiles
            .get(&s.option_profile_id)
            .map(|p| p.title.clone())
            .unwrap_or_default();
        let _ = write!(
            rows,
            "      <SCAN>\n        <ID>{}</ID>\n        <REF>{}</REF>\n        <TYPE>{}</TYPE>\n        <TITLE>{}</TITLE>\n        <USER_LOGIN>{}</USER_LOGIN>\n        <LAUNCH_DATETIME>{}</LAUNCH_DATETIME>\n        <DURATION>{}</DURATION>\n        <PROCESSING_PRIORITY>0 - No Priority</PROCESSING_PRIORITY>\n        <PROCESSED>{}</PROCESSED>\n        <STATUS>\n          <STATE>{}</STATE>\n        </STATUS>\n        <TARGET>{}</TARGET>\n        <OPTION_PROFILE>\n          <TITLE>{}</TITLE>\n        </OPTION_PROFILE>\n      </SCAN>\n",
            s.id,
            esc(&s.reference),
            if s.scheduled { "Scheduled" } else { "On-Demand" },
            cdata(&s.title),
            esc(&s.user_login),
            time(s.launched_at),
            duration,
            u8::from(processed),
            st.as_str(),
            cdata(&s.target_text),
            cdata(&profile_title)
        );
    }
    if !rows.is_empty() {
        out.push_str("    <SCAN_LIST>\n");
        out.push_str(&rows);
        out.push_str("    </SCAN_LIST>\n");
    }
    close_doc(&mut out, "SCAN_LIST_OUTPUT");
    Ok(out)
}

fn scan_type_known(kind: &str) -> bool {
    matches!(kind, "On-Demand" | "Scheduled" | "API")
}

fn cancel_scan(call: &Call) -> Result<String, QualysError> {
    let reference = call.require("scan_ref")?.to_string();
    let now = call.ctx.now();
    let timing = call.ctx.cfg.scan_timing;
    let mut w = call.ctx.world();
    let scan = w
        .qualys
        .scans
        .values_mut()
        .find(|s| s.reference == reference)
        .ok_or_else(|| QualysError::new(400, 1905, format!("Scan {reference} does not exist.")))?;
    let (st, _) = QualysState::phase(scan, now, &timing);
    if st.is_terminal() {
        return Err(QualysError::new(
            400,
            1905,
            format!(
                "Scan {reference} cannot be cancelled: its state is {}.",
                st.as_str()
            ),
        ));
    }
    scan.forced = Some((ScanState::Canceled, false));
    scan.finished_at = Some(now);
    Ok(simple_return(
        now,
        None,
        "Scan cancelled",
        &[("REFERENCE".into(), reference)],
    ))
}

fn scan_summary(call: &Call) -> Result<String, QualysError> {
    let since = parse_since("scan_date_since", call.require("scan_date_since")?)?;
    let include_dead = call.flag("include_dead")?;
    let include_cancelled = call.flag("include_cancelled")?;
    let now = call.ctx.now();
    let timing = call.ctx.cfg.scan_timing;
    let w = call.ctx.world();
    let mut out = open_doc(
        "SCAN_SUMMARY_OUTPUT",
        "fo/scan/summary/scan_summary_output.dtd",
        now,
    );
    let mut rows = String::new();
    for s in w.qualys.scans.values() {
        if s.launched_at < since {
            continue;
        }
        let (st, _) = QualysState::phase(s, now, &timing);
        let mut summaries = Vec::new();
        if include_dead && st == ScanState::Finished && !s.dead_ips.is_empty() {
            let mut ips: Vec<u32> = s.dead_ips.iter().map(|ip| u32::from(*ip)).collect();
            ips.sort_unstable();
            summaries.push(("dead", state::collapse_ranges(&ips).join(",")));
        }
        if include_cancelled && st == ScanState::Canceled {
            summaries.push(("cancelled", s.target_text.replace(' ', "")));
        }
        if summaries.is_empty() {
            continue;
        }
        let _ = write!(
            rows,
            "      <SCAN_SUMMARY>\n        <SCAN_REF>{}</SCAN_REF>\n        <SCAN_DATE>{}</SCAN_DATE>\n",
            esc(&s.reference),
            time(s.launched_at)
        );
        for (cat, ips) in summaries {
            let _ = writeln!(
                rows,
                "        <HOST_SUMMARY category=\"{cat}\" tracking=\"IP\">{ips}</HOST_SUMMARY>"
            );
        }
        rows.push_str("      </SCAN_SUMMARY>\n");
    }
    if !rows.is_empty() {
        out.push_str("    <SCAN_SUMMARY_LIST>\n");
        out.push_str(&rows);
        out.push_str("    </SCAN_SUMMARY_LIST>\n");
    }
    close_doc(&mut out, "SCAN_SUMMARY_OUTPUT");
    Ok(out)
}

// ------------------------------------------------------------------ option profiles

fn profile_xml(p: &OptionProfile, user: &str) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "  <OPTION_PROFILE>\n    <BASIC_INFO>\n      <ID>{}</ID>\n      <GROUP_NAME>{}</GROUP_NAME>\n      <GROUP_TYPE>user</GROUP_TYPE>\n      <USER_ID>{}</USER_ID>\n      <UNIT_ID>0</UNIT_ID>\n      <SUBSCRIPTION_ID>1</SUBSCRIPTION_ID>\n      <IS_DEFAULT>0</IS_DEFAULT>\n      <IS_GLOBAL>1</IS_GLOBAL>\n      <IS_OFFLINE_SYNCABLE>0</IS_OFFLINE_SYNCABLE>\n      <UPDATE_DATE>{}</UPDATE_DATE>\n    </BASIC_INFO>\n    <SCAN>\n      <PORTS>\n        <TCP_PORTS>\n          <TCP_PORTS_TYPE>full</TCP_PORTS_TYPE>\n          <THREE_WAY_HANDSHAKE>0</THREE_WAY_HANDSHAKE>\n        </TCP_PORTS>\n        <UDP_PORTS>\n          <UDP_PORTS_TYPE>standard</UDP_PORTS_TYPE>\n        </UDP_PORTS>\n      </PORTS>\n      <SCAN_DEAD_HOSTS>0</SCAN_DEAD_HOSTS>\n      <PERFORMANCE>\n        <PARALLEL_SCALING>0</PARALLEL_SCALING>\n        <OVERALL_PERFORMANCE>Normal</OVERALL_PERFORMANCE>\n      </PERFORMANCE>\n      <VULNERABILITY_DETECTION>\n",
        p.id,
        cdata(&p.title),
        cdata(user),
        time(p.updated)
    );
    if p.search_lists.is_empty() {
        if p.full_scan {
            out.push_str("        <COMPLETE/>\n");
        }
    } else {
        out.push_str("        <CUSTOM_LIST>\n");
        for (id, title) in &p.search_lists {
            let _ = write!(
                out,
                "          <CUSTOM>\n            <ID>{id}</ID>\n            <TITLE>{}</TITLE>\n          </CUSTOM>\n",
                cdata(title)
            );
        }
        out.push_str("        </CUSTOM_LIST>\n");
    }
    out.push_str("        <DETECTION_INCLUDE>\n          <BASIC_HOST_INFO_CHECKS>1</BASIC_HOST_INFO_CHECKS>\n          <OVAL_CHECKS>0</OVAL_CHECKS>\n        </DETECTION_INCLUDE>\n      </VULNERABILITY_DETECTION>\n      <AUTHENTICATION>Windows,Unix</AUTHENTICATION>\n      <HOST_ALIVE_TESTING>\n        <DISSOLVABLE_AGENT>0</DISSOLVABLE_AGENT>\n      </HOST_ALIVE_TESTING>\n    </SCAN>\n    <MAP>\n      <BASIC_INFO_GATHERING_ON>all</BASIC_INFO_GATHERING_ON>\n    </MAP>\n    <ADDITIONAL>\n      <HOST_DISCOVERY>\n        <TCP_PORTS>\n          <STANDARD_SCAN>1</STANDARD_SCAN>\n        </TCP_PORTS>\n      </HOST_DISCOVERY>\n    </ADDITIONAL>\n  </OPTION_PROFILE>\n");
    out
}

fn export_profile(call: &Call) -> Result<String, QualysError> {
    let id: Option<u64> = call
        .get("option_profile_id")?
        .or(call.get("id")?)
        .map(|s| {
            s.parse()
                .map_err(|_| QualysError::invalid("option_profile_id", s))
        })
        .transpose()?;
    let w = call.ctx.world();
    let profiles: Vec<&OptionProfile> = match id {
        Some(id) => vec![w.qualys.option_profiles.get(&id).ok_or_else(|| {
            QualysError::new(
                400,
                1905,
                format!("Option profile with id {id} does not exist."),
            )
        })?],
        None => w.qualys.option_profiles.values().collect(),
    };
    let mut out = prolog(
        "OPTION_PROFILES",
        "fo/subscription/option_profile/option_profile_info.dtd",
    );
    out.push_str("<OPTION_PROFILES>\n");
    for p in profiles {
        out.push_str(&profile_xml(p, &call.user));
    }
    out.push_str("</OPTION_PROFILES>\n");
    Ok(out)
}

/// What an imported profile document says (the rest is accepted and ignored).
#[derive(Default, Debug)]
struct ImportedProfile {
    title: Option<String>,
    lists: Vec<(Option<u64>, Option<String>)>,
    complete: bool,
}

fn parse_profile(body: &[u8]) -> Result<ImportedProfile, String> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_reader(body);
    reader.config_mut().trim_text(true);
    let mut path: Vec<String> = Vec::new();
    let mut out = ImportedProfile::default();
    let mut buf = Vec::new();
    let mut saw_root = false;
    loop {
        let ev = reader
            .read_event_into(&mut buf)
            .map_err(|e| format!("XML is not well-formed: {e}"))?;
        match ev {
            Event::Start(e) => {
                let name = String::from_utf8_lossy(e.name().as_ref()).to_string();
                if path.is_empty() {
                    if name != "OPTION_PROFILES" && name != "OPTION_PROFILE" {
                        return Err(format!("Unexpected root element {name}"));
                    }
                    saw_root = true;
                }
                if name == "CUSTOM" {
                    out.lists.push((None, None));
                }
                path.push(name);
            }
            Event::Empty(e) => {
                let name = String::from_utf8_lossy(e.name().as_ref()).to_string();
                if name == "COMPLETE" {
                    out.complete = true;
                }
            }
            Event::End(_) => {
                path.pop();
            }
            Event::Text(t) => {
                let text = t
                    .unescape()
                    .map_err(|e| format!("XML is not well-formed: {e}"))?
                    .to_string();
                apply_text(&mut out, &path, text)?;
            }
            Event::CData(t) => {
                let text = String::from_utf8_lossy(&t).to_string();
                apply_text(&mut out, &path, text)?;
            }
            Event::Eof => break,
            _ => {}
        }
        buf.clear();
    }
    if !saw_root || !path.is_empty() {
        return Err("XML is not well-formed: unexpected end of document".into());
    }
    Ok(out)
}

fn apply_text(out: &mut ImportedProfile, path: &[String], text: String) -> Result<(), String> {
    let tail: Vec<&str> = path.iter().rev().take(2).map(String::as_str).collect();
    match tail.as_slice() {
        ["GROUP_NAME", "BASIC_INFO"] => out.title = Some(text),
        ["ID", "CUSTOM"] => {
            let id = text
                .trim()
                .parse()
                .map_err(|_| format!("Invalid search list id '{text}'"))?;
            if let Some(last) = out.lists.last_mut() {
                last.0 = Some(id);
            }
        }
        ["TITLE", "CUSTOM"] => {
            if let Some(last) = out.lists.last_mut() {
                last.1 = Some(text);
            }
        }
        _ => {}
    }
    Ok(())
}

fn import_profile(call: &Call) -> Result<String, QualysError> {
    if call.body.is_empty() {
        return Err(QualysError::new(
            400,
            1903,
            "Missing option profile XML in the request body.",
        ));
    }
    let parsed = parse_profile(&call.body).map_err(|e| QualysError::new(400, 1905, e))?;
    let title = parsed
        .title
        .filter(|t| !t.trim().is_empty())
        .ok_or_else(|| {
            QualysError::new(400, 1905, "Option profile title (GROUP_NAME) is required.")
        })?;
    let now = call.ctx.now();
    let mut w = call.ctx.world();
    if w.qualys.option_profiles.values().any(|p| p.title == title) {
        return Err(QualysError::new(
            400,
            1905,
            format!("Option profile title '{title}' already exists."),
        ));
    }
    let mut lists = Vec::new();
    for (id, t) in parsed.lists {
        let id = id.ok_or_else(|| QualysError::new(400, 1905, "CUSTOM search list without ID."))?;
        let list = w.qualys.search_lists.get(&id).ok_or_else(|| {
            QualysError::new(
                400,
                1905,
                format!("Search list with id {id} does not exist."),
            )
        })?;
        lists.push((id, t.unwrap_or_else(|| list.title.clone())));
    }
    let id = w.qualys.fresh_id();
    w.qualys.option_profiles.insert(
        id,
        OptionProfile {
            id,
            title: title.clone(),
            search_lists: lists,
            builtin: false,
            full_scan: parsed.complete,
            updated: now,
        },
    );
    Ok(simple_return(
        now,
        None,
        "Successfully imported 1 option profile(s)",
        &[(id.to_string(), title)],
    ))
}

fn delete_profile(call: &Call) -> Result<String, QualysError> {
    let raw = call.require("id")?;
    let id: u64 = raw.parse().map_err(|_| QualysError::invalid("id", raw))?;
    let now = call.ctx.now();
    let mut w = call.ctx.world();
    let p = w.qualys.option_profiles.remove(&id).ok_or_else(|| {
        QualysError::new(
            400,
            1905,
            format!("Option profile with id {id} does not exist."),
        )
    })?;
    Ok(simple_return(
        now,
        None,
        "Option profile successfully deleted.",
        &[("ID".into(), p.id.to_string())],
    ))
}

// ------------------------------------------------------------------ search lists

fn create_search_list(call: &Call) -> Result<String, QualysError> {
    let title = call.require("title")?.to_string();
    let raw = call.require("qids")?;
    let ranges = parse_id_ranges("qids", raw)?;
    let mut qids = BTreeSet::new();
    for (a, b) in ranges {
        if b - a > 100_000 {
            return Err(QualysError::invalid("qids", raw));
        }
        for q in a..=b {
            qids.insert(u32::try_from(q).map_err(|_| QualysError::invalid("qids", raw))?);
        }
    }
    let now = call.ctx.now();
    let mut w = call.ctx.world();
    if w.qualys.search_lists.values().any(|l| l.title == title) {
        return Err(QualysError::new(
            400,
            1905,
            format!("A search list with title '{title}' already exists."),
        ));
    }
    let id = w.qualys.fresh_id();
    w.qualys.search_lists.insert(
        id,
        SearchList {
            id,
            title,
            qids: qids.into_iter().collect(),
            created: now,
        },
    );
    Ok(simple_return(
        now,
        None,
        "New static search list created successfully",
        &[("ID".into(), id.to_string())],
    ))
}

fn delete_search_list(call: &Call) -> Result<String, QualysError> {
    let raw = call.require("id")?;
    let id: u64 = raw.parse().map_err(|_| QualysError::invalid("id", raw))?;
    let now = call.ctx.now();
    let mut w = call.ctx.world();
    if !w.qualys.search_lists.contains_key(&id) {
        return Err(QualysError::new(
            400,
            1905,
            format!("Search list with id {id} does not exist."),
        ));
    }
    if let Some(p) = w
        .qualys
        .option_profiles
        .values()
        .find(|p| p.search_lists.iter().any(|(l, _)| *l == id))
    {
        return Err(QualysError::new(
            400,
            1905,
            format!(
                "Search list {id} is in use by option profile '{}'.",
                p.title
            ),
        ));
    }
    w.qualys.search_lists.remove(&id);
    Ok(simple_return(
        now,
        None,
        "Static search list deleted successfully",
        &[("ID".into(), id.to_string())],
    ))
}

fn list_search_lists(call: &Call) -> Result<String, QualysError> {
    let ids = call
        .get("ids")?
        .map(|s| parse_id_ranges("ids", s))
        .transpose()?;
    let now = call.ctx.now();
    let w = call.ctx.world();
    let mut out = open_doc(
        "STATIC_SEARCH_LIST_OUTPUT",
        "fo/qid/search_list/static/static_search_list_output.dtd",
        now,
    );
    let lists: Vec<&SearchList> = w
        .qualys
        .search_lists
        .values()
        .filter(|l| ids.as_ref().is_none_or(|r| in_ranges(r, l.id)))
        .collect();
    if !lists.is_empty() {
        out.push_str("    <STATIC_LISTS>\n");
        for l in lists {
            let _ = write!(
                out,
                "      <STATIC_LIST>\n        <ID>{}</ID>\n        <TITLE>{}</TITLE>\n        <GLOBAL>0</GLOBAL>\n        <CREATED>{}</CREATED>\n        <QIDS>\n",
                l.id,
                cdata(&l.title),
                time(l.created)
            );
            for q in &l.qids {
                let _ = writeln!(out, "          <QID>{q}</QID>");
            }
            out.push_str("        </QIDS>\n      </STATIC_LIST>\n");
        }
        out.push_str("    </STATIC_LISTS>\n");
    }
    close_doc(&mut out, "STATIC_SEARCH_LIST_OUTPUT");
    Ok(out)
}

/// Build a streaming XML response.
pub(crate) fn streamed(body: Body) -> Response {
    (StatusCode::OK, xml_headers(), body).into_response()
}

/// Parameters with `id_min` removed, re-encoded (for WARNING/URL).
pub(crate) fn next_page_url(base: &str, path: &str, params: &Params, id_min: u64) -> String {
    let mut ser = form_urlencoded::Serializer::new(String::new());
    let mut seen: HashMap<&str, &str> = HashMap::new();
    for (k, v) in params.pairs() {
        if k == "id_min" || seen.get(k.as_str()) == Some(&v.as_str()) {
            continue;
        }
        seen.insert(k, v);
        ser.append_pair(k, v);
    }
    ser.append_pair("id_min", &id_min.to_string());
    format!("{base}{path}?{}", ser.finish())
}

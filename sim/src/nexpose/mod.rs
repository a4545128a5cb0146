//! The Nexpose / InsightVM API v3 simulator (`/api/3/...`, JSON, basic auth): sites and their
//! assets, assets and their vulnerability findings, the vulnerability catalogue with references,
//! solutions and checks, scan engines, scan templates (get/create/delete) and scans (start on a
//! site with hosts, template and engine; status; stop/pause/resume), with `page`/`size` paging,
//! `page.totalPages` and `links`.

pub mod state;

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use base64::Engine;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};

use crate::server::PagingLoop;
use crate::world::{qid_from_nexpose_id, Estate, HostIdx, KbEntry};
use crate::{Control, Profile};
use state::{NexposeScan, NexposeState, BUILTIN_TEMPLATES};

/// A Nexpose error body `{"status","message","links"}`.
struct NxError {
    status: u16,
    message: String,
}

impl NxError {
    fn new(status: u16, message: impl Into<String>) -> NxError {
        NxError {
            status,
            message: message.into(),
        }
    }
    fn not_found(what: &str) -> NxError {
        NxError::new(404, format!("The {what} does not exist."))
    }
}

impl IntoResponse for NxError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_REQUEST);
        (
            status,
            Json(json!({"status": self.status, "message": self.message, "links": []})),
        )
            .into_response()
    }
}

type NxResult = Result<Response, NxError>;

/// The body of an injected 429/5xx, in Nexpose's error shape.
pub(crate) fn fault_response(status: u16) -> Response {
    let msg = match status {
        429 => "Too many requests.",
        503 => "The service is temporarily unavailable.",
        _ => "An unexpected error occurred.",
    };
    NxError::new(status, msg).into_response()
}

pub(crate) fn router(ctx: Arc<Control>) -> Router<Arc<Control>> {
    Router::new()
        .route("/api/3/sites", get(sites))
        .route("/api/3/sites/:id", get(site_one))
        .route("/api/3/sites/:id/assets", get(site_assets))
        .route("/api/3/sites/:id/scan_engine", get(site_engine))
        .route("/api/3/sites/:id/scans", get(site_scans).post(start_scan))
        .route("/api/3/assets", get(assets))
        .route("/api/3/assets/:id", get(asset_one))
        .route("/api/3/assets/:id/vulnerabilities", get(asset_findings))
        .route("/api/3/vulnerabilities", get(vulnerabilities))
        .route("/api/3/vulnerabilities/:id", get(vulnerability_one))
        .route("/api/3/vulnerabilities/:id/references", get(references))
        .route("/api/3/vulnerabilities/:id/solutions", get(solution_ids))
        .route("/api/3/vulnerabilities/:id/checks", get(check_ids))
        .route("/api/3/solutions/:id", get(solution_one))
        .route("/api/3/scan_engines", get(engines))
        .route("/api/3/scan_engines/:id", get(engine_one))
        .route(
            "/api/3/scan_templates",
            get(templates).post(create_template),
        )
        .route(
            "/api/3/scan_templates/:id",
            get(template_one).delete(delete_template),
        )
        .route("/api/3/scans", get(scans))
        .route("/api/3/scans/:id", get(scan_one))
        .route("/api/3/scans/:id/:action", post(scan_action))
        .route_layer(middleware::from_fn_with_state(ctx, auth))
}

async fn auth(State(ctx): State<Arc<Control>>, req: Request, next: Next) -> Response {
    match authenticate(&ctx, req.headers()) {
        Some(_) => next.run(req).await,
        None => {
            let mut r = NxError::new(401, "Authorization required.").into_response();
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Basic realm=\"Security Console\""),
            );
            r
        }
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

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn link(base: &str, path: &str) -> Value {
    json!([{"href": format!("{base}{path}"), "rel": "self"}])
}

/// `page`/`size` as requested (size clamped to the console maximum).
struct PageReq {
    number: usize,
    size: usize,
    looping: bool,
}

fn page_req(ctx: &Control, q: &HashMap<String, String>, looping: bool) -> Result<PageReq, NxError> {
    let num = |k: &str, d: usize| -> Result<usize, NxError> {
        match q.get(k).map(String::as_str) {
            None | Some("") => Ok(d),
            Some(v) => v.parse::<usize>().map_err(|_| {
                NxError::new(
                    400,
                    format!("The parameter '{k}' must be a non-negative integer."),
                )
            }),
        }
    };
    let size = num("size", 10)?;
    if size == 0 {
        return Err(NxError::new(
            400,
            "The parameter 'size' must be at least 1.",
        ));
    }
    Ok(PageReq {
        number: num("page", 0)?,
        size: size.min(ctx.cfg.nexpose_max_page_size),
        looping,
    })
}

/// Render one page of `items` (rendering only the page's items).
fn paged<T>(
    base: &str,
    uri: &Uri,
    p: &PageReq,
    items: &[T],
    render: impl Fn(&T) -> Value,
) -> Response {
    let total = items.len();
    let pages = total.div_ceil(p.size);
    let (number, start, total_pages) = if p.looping {
        // Never-ending paging: claim one more page and serve the first page's content.
        (p.number, 0, p.number.saturating_add(2))
    } else {
        (p.number, p.number.saturating_mul(p.size), pages)
    };
    let resources: Vec<Value> = items.iter().skip(start).take(p.size).map(render).collect();
    let path = uri.path();
    let href = |n: usize| format!("{base}{path}?page={n}&size={}", p.size);
    let mut links = vec![json!({"href": href(0), "rel": "first"})];
    if number > 0 {
        links.push(json!({"href": href(number - 1), "rel": "prev"}));
    }
    links.push(json!({"href": href(number), "rel": "self"}));
    if number.saturating_add(1) < total_pages {
        links.push(json!({"href": href(number + 1), "rel": "next"}));
    }
    links.push(json!({"href": href(total_pages.saturating_sub(1)), "rel": "last"}));
    Json(json!({
        "resources": resources,
        "page": {"number": number, "size": p.size, "totalResources": total, "totalPages": total_pages},
        "links": links
    }))
    .into_response()
}

fn parse_u64(what: &str, s: &str) -> Result<u64, NxError> {
    s.parse()
        .map_err(|_| NxError::new(400, format!("The {what} identifier '{s}' is not valid.")))
}

/// Scan ids: aegis-compat also accepts Go-Aegis' `123.000000`.
fn parse_scan_id(ctx: &Control, s: &str) -> Result<u64, NxError> {
    let s = if ctx.cfg.profile == Profile::AegisCompat {
        s.split('.').next().unwrap_or(s)
    } else {
        s
    };
    parse_u64("scan", s)
}

// ------------------------------------------------------------------ renderers

fn asset_json(base: &str, estate: &Estate, nx: &NexposeState, idx: HostIdx) -> Value {
    let h = &estate.hosts[idx];
    let findings = nx.visible(estate, idx);
    let (mut critical, mut severe, mut moderate) = (0, 0, 0);
    for (k, _) in &findings {
        match estate.kb_entry(k.qid).map(|e| e.cvss2).unwrap_or(5.0) {
            s if s >= 8.0 => critical += 1,
            s if s >= 4.0 => severe += 1,
            _ => moderate += 1,
        }
    }
    let family = h.os.split_whitespace().next().unwrap_or("Unknown");
    // The estate's first scan, an hour before the simulator started (as Qualys' base detections).
    let first_scan = estate.generated_at - chrono::Duration::hours(1);
    let mut history = vec![json!({"date": ts(first_scan), "type": "SCAN", "version": 1})];
    if let Some(t) = nx.last_scanned.get(&idx) {
        history.push(json!({"date": ts(*t), "type": "SCAN", "version": 2}));
    }
    json!({
        "addresses": [{"ip": h.ip.to_string(), "mac": h.mac}],
        "assessedForPolicies": false,
        "assessedForVulnerabilities": true,
        "history": history,
        "hostName": h.hostname,
        "hostNames": [{"name": h.hostname, "source": "dns"}],
        "id": h.nexpose_id,
        "ids": [],
        "ip": h.ip.to_string(),
        "mac": h.mac,
        "os": h.os,
        "osFingerprint": {"description": h.os, "family": family, "product": h.os, "systemName": h.os, "type": "General", "vendor": family},
        "rawRiskScore": (findings.len() * 250) as f64,
        "riskScore": (findings.len() * 250) as f64,
        "vulnerabilities": {"critical": critical, "severe": severe, "moderate": moderate, "exploits": 0, "malwareKits": 0, "total": findings.len()},
        "links": link(base, &format!("/api/3/assets/{}", h.nexpose_id))
    })
}

fn severity(cvss: f32) -> &'static str {
    if cvss >= 8.0 {
        "Critical"
    } else if cvss >= 4.0 {
        "Severe"
    } else {
        "Moderate"
    }
}

fn vulnerability_json(base: &str, k: &KbEntry) -> Value {
    let id = k.nexpose_id();
    json!({
        "added": k.published.format("%Y-%m-%d").to_string(),
        "categories": [k.category],
        "cves": k.cves,
        "cvss": {
            "v2": {"accessComplexity": "L", "accessVector": "N", "authentication": "N", "availabilityImpact": "P",
                   "confidentialityImpact": "P", "integrityImpact": "P", "exploitScore": 10.0, "impactScore": 6.4,
                   "score": k.cvss2, "vector": "AV:N/AC:L/Au:N/C:P/I:P/A:P"},
            "v3": {"attackComplexity": "L", "attackVector": "N", "availabilityImpact": "H", "confidentialityImpact": "H",
                   "integrityImpact": "H", "privilegeRequired": "N", "scope": "U", "userInteraction": "N",
                   "exploitScore": 3.9, "impactScore": 5.9, "score": k.cvss3,
                   "vector": "CVSS:3.0/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"},
            "links": []
        },
        "denialOfService": k.title.contains("Denial of Service"),
        "description": {"text": k.diagnosis, "html": format!("<p>{}</p>", k.diagnosis)},
        "exploits": 0,
        "id": id,
        "malwareKits": 0,
        "modified": k.modified.format("%Y-%m-%d").to_string(),
        "pci": {"adjustedCVSSScore": k.cvss2.round() as i64, "adjustedSeverityScore": (k.cvss2 / 2.0).ceil() as i64,
                "fail": k.cvss2 >= 4.0, "status": if k.cvss2 >= 4.0 { "Fail" } else { "Pass" }},
        "published": k.published.format("%Y-%m-%d").to_string(),
        "riskScore": (k.cvss2 * 100.0).round(),
        "severity": severity(k.cvss2),
        "severityScore": k.cvss2.round() as i64,
        "title": k.title,
        "links": link(base, &format!("/api/3/vulnerabilities/{id}"))
    })
}

// ------------------------------------------------------------------ sites and assets

async fn sites(
    State(ctx): State<Arc<Control>>,
    paging: Option<Extension<PagingLoop>>,
    uri: Uri,
    Query(q): Query<HashMap<String, String>>,
) -> NxResult {
    let p = page_req(&ctx, &q, paging.is_some())?;
    let w = ctx.world();
    let base = &ctx.urls.nexpose;
    let list: Vec<_> = w.nexpose.sites.values().collect();
    Ok(paged(base, &uri, &p, &list, |s| {
        json!({"id": s.id, "name": s.name, "assets": s.assets.len(), "scanEngine": s.engine_id,
               "scanTemplate": "full-audit-without-web-spider", "type": "static", "importance": "normal",
               "links": link(base, &format!("/api/3/sites/{}", s.id))})
    }))
}

async fn site_one(State(ctx): State<Arc<Control>>, Path(id): Path<String>) -> NxResult {
    let id = parse_u64("site", &id)?;
    let w = ctx.world();
    let s = w
        .nexpose
        .sites
        .get(&(id as u32))
        .ok_or_else(|| NxError::not_found("site"))?;
    let base = &ctx.urls.nexpose;
    Ok(Json(json!({"id": s.id, "name": s.name, "assets": s.assets.len(), "scanEngine": s.engine_id,
                   "scanTemplate": "full-audit-without-web-spider", "type": "static", "importance": "normal",
                   "links": link(base, &format!("/api/3/sites/{}", s.id))}))
    .into_response())
}

async fn site_assets(
    State(ctx): State<Arc<Control>>,
    paging: Option<Extension<PagingLoop>>,
    uri: Uri,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> NxResult {
    let id = parse_u64("site", &id)?;
    let p = page_req(&ctx, &q, paging.is_some())?;
    let w = ctx.world();
    let site = w
        .nexpose
        .sites
        .get(&(id as u32))
        .ok_or_else(|| NxError::not_found("site"))?;
    let base = &ctx.urls.nexpose;
    Ok(paged(base, &uri, &p, &site.assets, |idx| {
        asset_json(base, &w.estate, &w.nexpose, *idx)
    }))
}

async fn site_engine(State(ctx): State<Arc<Control>>, Path(id): Path<String>) -> NxResult {
    let id = parse_u64("site", &id)?;
    let w = ctx.world();
    let site = w
        .nexpose
        .sites
        .get(&(id as u32))
        .ok_or_else(|| NxError::not_found("site"))?;
    let e = w
        .nexpose
        .engines
        .get(&site.engine_id)
        .ok_or_else(|| NxError::not_found("scan engine"))?;
    Ok(Json(engine_json(&ctx.urls.nexpose, e, &w.nexpose)).into_response())
}

async fn assets(
    State(ctx): State<Arc<Control>>,
    paging: Option<Extension<PagingLoop>>,
    uri: Uri,
    Query(q): Query<HashMap<String, String>>,
) -> NxResult {
    let p = page_req(&ctx, &q, paging.is_some())?;
    let w = ctx.world();
    let base = &ctx.urls.nexpose;
    let mut all: Vec<HostIdx> = (0..w.estate.hosts.len()).collect();
    all.sort_by_key(|i| w.estate.hosts[*i].nexpose_id);
    Ok(paged(base, &uri, &p, &all, |idx| {
        asset_json(base, &w.estate, &w.nexpose, *idx)
    }))
}

async fn asset_one(State(ctx): State<Arc<Control>>, Path(id): Path<String>) -> NxResult {
    let id = parse_u64("asset", &id)?;
    let w = ctx.world();
    let idx = w
        .estate
        .host_by_nexpose_id(id)
        .ok_or_else(|| NxError::not_found("asset"))?;
    Ok(Json(asset_json(&ctx.urls.nexpose, &w.estate, &w.nexpose, idx)).into_response())
}

async fn asset_findings(
    State(ctx): State<Arc<Control>>,
    paging: Option<Extension<PagingLoop>>,
    uri: Uri,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> NxResult {
    let id = parse_u64("asset", &id)?;
    let p = page_req(&ctx, &q, paging.is_some())?;
    let w = ctx.world();
    let idx = w
        .estate
        .host_by_nexpose_id(id)
        .ok_or_else(|| NxError::not_found("asset"))?;
    // One finding per vulnerability, one result per port.
    let mut grouped: Vec<(u32, Vec<(crate::world::VulnKey, state::Finding)>)> = Vec::new();
    for (k, f) in w.nexpose.visible(&w.estate, idx) {
        match grouped.last_mut() {
            Some((qid, v)) if *qid == k.qid => v.push((k, f)),
            _ => grouped.push((k.qid, vec![(k, f)])),
        }
    }
    let base = &ctx.urls.nexpose;
    let estate = &w.estate;
    Ok(paged(base, &uri, &p, &grouped, |(qid, results)| {
        let vid = estate
            .kb_entry(*qid)
            .map(KbEntry::nexpose_id)
            .unwrap_or_else(|| format!("sim-vuln-{qid}"));
        let since = results
            .iter()
            .map(|(_, f)| f.since)
            .min()
            .unwrap_or(estate.generated_at);
        let rs: Vec<Value> = results
            .iter()
            .map(|(k, f)| {
                let proof = f.proof.clone().unwrap_or_else(|| estate.default_proof(*k));
                json!({"checkId": format!("sim-check-{qid}"), "exceptions": [], "port": k.port,
                       "protocol": k.proto.as_str(), "proof": format!("<p>{proof}</p>"),
                       "since": ts(f.since), "status": "vulnerable-version"})
            })
            .collect();
        json!({"id": vid, "instances": rs.len(), "results": rs, "since": ts(since), "status": "vulnerable",
               "links": link(base, &format!("/api/3/assets/{id}/vulnerabilities/{vid}"))})
    }))
}

// ------------------------------------------------------------------ vulnerabilities

fn kb_for(w: &Estate, id: &str) -> Result<KbEntry, NxError> {
    qid_from_nexpose_id(id)
        .and_then(|q| w.kb_entry(q))
        .cloned()
        .ok_or_else(|| NxError::not_found("vulnerability"))
}

async fn vulnerabilities(
    State(ctx): State<Arc<Control>>,
    paging: Option<Extension<PagingLoop>>,
    uri: Uri,
    Query(q): Query<HashMap<String, String>>,
) -> NxResult {
    let p = page_req(&ctx, &q, paging.is_some())?;
    let w = ctx.world();
    let base = &ctx.urls.nexpose;
    Ok(paged(base, &uri, &p, &w.estate.kb, |k| {
        vulnerability_json(base, k)
    }))
}

async fn vulnerability_one(State(ctx): State<Arc<Control>>, Path(id): Path<String>) -> NxResult {
    let w = ctx.world();
    let k = kb_for(&w.estate, &id)?;
    Ok(Json(vulnerability_json(&ctx.urls.nexpose, &k)).into_response())
}

async fn references(
    State(ctx): State<Arc<Control>>,
    paging: Option<Extension<PagingLoop>>,
    uri: Uri,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> NxResult {
    let p = page_req(&ctx, &q, paging.is_some())?;
    let k = kb_for(&ctx.world().estate, &id)?;
    let mut refs: Vec<(String, String, String)> = k
        .cves
        .iter()
        .map(|c| {
            (
                "cve".to_string(),
                c.clone(),
                format!("http://cve.mitre.org/cgi-bin/cvename.cgi?name={c}"),
            )
        })
        .collect();
    refs.push((
        "url".into(),
        format!("SIM-{}", k.qid),
        format!("https://vendor.sim.example/advisories/{}", k.qid),
    ));
    let base = &ctx.urls.nexpose;
    let numbered: Vec<(usize, (String, String, String))> = refs.into_iter().enumerate().collect();
    Ok(paged(
        base,
        &uri,
        &p,
        &numbered,
        |(i, (source, reference, href))| {
            json!({"id": 1000 + i, "source": source, "reference": reference,
               "advisory": {"href": href, "rel": "advisory"}, "links": []})
        },
    ))
}

async fn solution_ids(State(ctx): State<Arc<Control>>, Path(id): Path<String>) -> NxResult {
    let k = kb_for(&ctx.world().estate, &id)?;
    Ok(Json(json!({"resources": [k.nexpose_solution_id()], "links": link(&ctx.urls.nexpose, &format!("/api/3/vulnerabilities/{id}/solutions"))})).into_response())
}

async fn check_ids(State(ctx): State<Arc<Control>>, Path(id): Path<String>) -> NxResult {
    let k = kb_for(&ctx.world().estate, &id)?;
    Ok(Json(json!({"resources": [k.nexpose_check_id()], "links": link(&ctx.urls.nexpose, &format!("/api/3/vulnerabilities/{id}/checks"))})).into_response())
}

async fn solution_one(State(ctx): State<Arc<Control>>, Path(id): Path<String>) -> NxResult {
    let k = kb_for(&ctx.world().estate, &id)?;
    Ok(Json(json!({
        "id": k.nexpose_solution_id(),
        "summary": {"text": k.solution, "html": format!("<p>{}</p>", k.solution)},
        "steps": {"text": k.solution, "html": format!("<p>{}</p>", k.solution)},
        "additionalInformation": {"text": "", "html": ""},
        "appliesTo": k.title.split(" Vulnerability").next().unwrap_or(""),
        "estimate": "PT30M",
        "type": if k.patchable { "rollup" } else { "configuration" },
        "links": link(&ctx.urls.nexpose, &format!("/api/3/solutions/{id}"))
    }))
    .into_response())
}

// ------------------------------------------------------------------ engines and templates

fn engine_json(base: &str, e: &state::Engine, nx: &NexposeState) -> Value {
    let sites: Vec<u32> = nx
        .sites
        .values()
        .filter(|s| s.engine_id == e.id)
        .map(|s| s.id)
        .collect();
    json!({"id": e.id, "name": e.name, "address": e.address, "port": e.port, "status": "active",
           "productVersion": "6.6.100", "contentVersion": "1234567890", "sites": sites,
           "links": link(base, &format!("/api/3/scan_engines/{}", e.id))})
}

async fn engines(State(ctx): State<Arc<Control>>) -> NxResult {
    let w = ctx.world();
    let all: Vec<Value> = w
        .nexpose
        .engines
        .values()
        .map(|e| engine_json(&ctx.urls.nexpose, e, &w.nexpose))
        .collect();
    Ok(
        Json(json!({"resources": all, "links": link(&ctx.urls.nexpose, "/api/3/scan_engines")}))
            .into_response(),
    )
}

async fn engine_one(State(ctx): State<Arc<Control>>, Path(id): Path<String>) -> NxResult {
    let id = parse_u64("scan engine", &id)?;
    let w = ctx.world();
    let e = w
        .nexpose
        .engines
        .get(&(id as u32))
        .ok_or_else(|| NxError::not_found("scan engine"))?;
    Ok(Json(engine_json(&ctx.urls.nexpose, e, &w.nexpose)).into_response())
}

async fn templates(State(ctx): State<Arc<Control>>) -> NxResult {
    let w = ctx.world();
    let all: Vec<Value> = w.nexpose.templates.values().cloned().collect();
    Ok(
        Json(json!({"resources": all, "links": link(&ctx.urls.nexpose, "/api/3/scan_templates")}))
            .into_response(),
    )
}

async fn template_one(State(ctx): State<Arc<Control>>, Path(id): Path<String>) -> NxResult {
    let w = ctx.world();
    let t = w
        .nexpose
        .templates
        .get(&id)
        .ok_or_else(|| NxError::not_found("scan template"))?;
    Ok(Json(t.clone()).into_response())
}

async fn create_template(State(ctx): State<Arc<Control>>, body: Bytes) -> NxResult {
    let mut v: Value = serde_json::from_slice(&body)
        .map_err(|e| NxError::new(400, format!("The request body is not valid JSON: {e}")))?;
    let Some(obj) = v.as_object_mut() else {
        return Err(NxError::new(
            400,
            "The request body must be a scan template object.",
        ));
    };
    let name = obj
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.trim().is_empty())
        .ok_or_else(|| NxError::new(400, "The scan template name is required."))?
        .to_string();
    let mut w = ctx.world();
    if w.nexpose
        .templates
        .values()
        .any(|t| t.get("name").and_then(Value::as_str) == Some(&name))
    {
        return Err(NxError::new(
            400,
            format!("A scan template with the name '{name}' already exists."),
        ));
    }
    w.nexpose.next_template += 1;
    let id = format!("aegis-template-{}", w.nexpose.next_template);
    obj.insert("id".into(), json!(id));
    obj.insert(
        "links".into(),
        link(&ctx.urls.nexpose, &format!("/api/3/scan_templates/{id}")),
    );
    w.nexpose.templates.insert(id.clone(), v);
    Ok((
        StatusCode::CREATED,
        Json(json!({"id": id, "links": link(&ctx.urls.nexpose, &format!("/api/3/scan_templates/{id}"))})),
    )
        .into_response())
}

async fn delete_template(State(ctx): State<Arc<Control>>, Path(id): Path<String>) -> NxResult {
    if BUILTIN_TEMPLATES.iter().any(|(b, _)| *b == id) {
        return Err(NxError::new(
            400,
            "Built-in scan templates cannot be deleted.",
        ));
    }
    let mut w = ctx.world();
    w.nexpose
        .templates
        .remove(&id)
        .ok_or_else(|| NxError::not_found("scan template"))?;
    Ok(Json(json!({"links": link(&ctx.urls.nexpose, "/api/3/scan_templates")})).into_response())
}

// ------------------------------------------------------------------ scans

fn scan_json(
    base: &str,
    s: &NexposeScan,
    now: DateTime<Utc>,
    ctx: &Control,
    engine: &str,
) -> Value {
    let status = NexposeState::status(s, now, &ctx.cfg.scan_timing);
    let end = s.finished_at.filter(|_| status == "finished");
    let secs = (end.unwrap_or(now) - s.launched_at)
        .num_milliseconds()
        .max(0) as f64
        / 1000.0;
    let mut v = json!({
        "assets": s.targets.len(),
        "duration": format!("PT{}M{:.3}S", (secs / 60.0).floor(), secs % 60.0),
        "engineId": s.engine_id,
        "engineName": engine,
        "id": s.id,
        "scanName": s.name,
        "scanType": "Manual",
        "siteId": s.site_id,
        "startTime": ts(s.launched_at),
        "startedBy": ctx.cfg.credentials.username,
        "status": status,
        "vulnerabilities": {"critical": 0, "severe": 0, "moderate": 0, "total": 0},
        "links": link(base, &format!("/api/3/scans/{}", s.id))
    });
    if let Some(e) = end {
        v["endTime"] = json!(ts(e));
    }
    if status == "error" {
        v["message"] = json!("The scan failed (simulated).");
    }
    v
}

async fn start_scan(
    State(ctx): State<Arc<Control>>,
    Path(site): Path<String>,
    body: Bytes,
) -> NxResult {
    let site_id = parse_u64("site", &site)? as u32;
    let v: Value = if body.is_empty() {
        json!({})
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| NxError::new(400, format!("The request body is not valid JSON: {e}")))?
    };
    let now = ctx.now();
    let mut w = ctx.world();
    let w = &mut *w;
    let site = w
        .nexpose
        .sites
        .get(&site_id)
        .ok_or_else(|| NxError::not_found("site"))?
        .clone();
    let engine_id = match v.get("engineId") {
        None | Some(Value::Null) => site.engine_id,
        Some(Value::Number(n)) => n.as_u64().unwrap_or(0) as u32,
        Some(Value::String(s)) => s
            .parse()
            .map_err(|_| NxError::new(400, format!("The scan engine '{s}' is not valid.")))?,
        Some(_) => return Err(NxError::new(400, "engineId must be a number or string.")),
    };
    if !w.nexpose.engines.contains_key(&engine_id) {
        return Err(NxError::new(
            400,
            format!("The scan engine {engine_id} does not exist."),
        ));
    }
    let template_id = v
        .get("templateId")
        .and_then(Value::as_str)
        .unwrap_or("full-audit-without-web-spider")
        .to_string();
    let template = w.nexpose.templates.get(&template_id).ok_or_else(|| {
        NxError::new(
            400,
            format!("The scan template '{template_id}' does not exist."),
        )
    })?;
    let discovery = template.get("discoveryOnly").and_then(Value::as_bool) == Some(true)
        || template
            .get("vulnerabilityEnabled")
            .and_then(Value::as_bool)
            == Some(false);
    let scope = if discovery {
        Some(Default::default())
    } else {
        NexposeState::template_scope(template)
    };
    let hosts: Vec<String> = match v.get("hosts") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|h| h.as_str().map(str::to_string))
            .collect::<Option<_>>()
            .ok_or_else(|| NxError::new(400, "hosts must be a list of strings."))?,
        Some(_) => return Err(NxError::new(400, "hosts must be a list of strings.")),
    };
    let targets: Vec<HostIdx> = if hosts.is_empty() {
        site.assets.clone()
    } else {
        hosts
            .iter()
            .filter_map(|h| {
                h.parse()
                    .ok()
                    .and_then(|ip| w.estate.host_by_ip(ip))
                    .or_else(|| w.estate.hosts.iter().position(|x| x.hostname == *h))
            })
            .collect()
    };
    let id = w.nexpose.next_scan_id;
    w.nexpose.next_scan_id += 1;
    w.nexpose.scans.insert(
        id,
        NexposeScan {
            id,
            site_id,
            engine_id,
            template_id,
            name: v
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("Scan")
                .to_string(),
            hosts,
            targets,
            scope,
            launched_at: now,
            forced: None,
            applied: false,
            finished_at: None,
        },
    );
    Ok((
        StatusCode::CREATED,
        Json(json!({"id": id, "links": link(&ctx.urls.nexpose, &format!("/api/3/scans/{id}"))})),
    )
        .into_response())
}

fn engine_name(nx: &NexposeState, id: u32) -> String {
    nx.engines
        .get(&id)
        .map(|e| e.name.clone())
        .unwrap_or_default()
}

async fn scans(
    State(ctx): State<Arc<Control>>,
    paging: Option<Extension<PagingLoop>>,
    uri: Uri,
    Query(q): Query<HashMap<String, String>>,
) -> NxResult {
    let p = page_req(&ctx, &q, paging.is_some())?;
    let now = ctx.now();
    let w = ctx.world();
    let base = &ctx.urls.nexpose;
    let list: Vec<&NexposeScan> = w.nexpose.scans.values().rev().collect();
    Ok(paged(base, &uri, &p, &list, |s| {
        scan_json(base, s, now, &ctx, &engine_name(&w.nexpose, s.engine_id))
    }))
}

async fn site_scans(
    State(ctx): State<Arc<Control>>,
    paging: Option<Extension<PagingLoop>>,
    uri: Uri,
    Path(site): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> NxResult {
    let site_id = parse_u64("site", &site)? as u32;
    let p = page_req(&ctx, &q, paging.is_some())?;
    let now = ctx.now();
    let w = ctx.world();
    let base = &ctx.urls.nexpose;
    let list: Vec<&NexposeScan> = w
        .nexpose
        .scans
        .values()
        .rev()
        .filter(|s| s.site_id == site_id)
        .collect();
    Ok(paged(base, &uri, &p, &list, |s| {
        scan_json(base, s, now, &ctx, &engine_name(&w.nexpose, s.engine_id))
    }))
}

async fn scan_one(State(ctx): State<Arc<Control>>, Path(id): Path<String>) -> NxResult {
    let id = parse_scan_id(&ctx, &id)?;
    let now = ctx.now();
    let w = ctx.world();
    let s = w
        .nexpose
        .scans
        .get(&id)
        .ok_or_else(|| NxError::not_found("scan"))?;
    Ok(Json(scan_json(
        &ctx.urls.nexpose,
        s,
        now,
        &ctx,
        &engine_name(&w.nexpose, s.engine_id),
    ))
    .into_response())
}

async fn scan_action(
    State(ctx): State<Arc<Control>>,
    Path((id, action)): Path<(String, String)>,
) -> NxResult {
    let id = parse_scan_id(&ctx, &id)?;
    let now = ctx.now();
    let timing = ctx.cfg.scan_timing;
    let mut w = ctx.world();
    let s = w
        .nexpose
        .scans
        .get_mut(&id)
        .ok_or_else(|| NxError::not_found("scan"))?;
    let status = NexposeState::status(s, now, &timing);
    let active = matches!(status.as_str(), "running" | "integrating" | "paused");
    match action.as_str() {
        "stop" if active => s.forced = Some("stopped".into()),
        "pause" if status == "running" => s.forced = Some("paused".into()),
        "resume" if status == "paused" => s.forced = None,
        "stop" | "pause" | "resume" => {
            return Err(NxError::new(
                400,
                format!("The scan cannot be {action}ed while its status is {status}."),
            ))
        }
        _ => {
            return Err(NxError::new(
                404,
                format!("Unknown scan action '{action}'."),
            ))
        }
    }
    Ok(
        Json(json!({"links": link(&ctx.urls.nexpose, &format!("/api/3/scans/{id}"))}))
            .into_response(),
    )
}

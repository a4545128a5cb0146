//! The JIRA REST API v2 simulator (Jira Server): authentication, the metadata endpoints Aegis
//! reads at start-up, issues, JQL search with paging, transitions, comments, links and users.
//! Served under both `/rest/api/2` and `/rest/api/latest`.
//!
//! State and rules live in [`store`], the JQL engine in [`jql`], the workflow in [`workflow`].

pub mod jql;
pub mod store;
pub mod workflow;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use base64::Engine;
use serde_json::{json, Value};
use std::collections::HashMap;

use crate::server::PagingLoop;
use crate::world::jira_datetime;
use crate::{Control, Profile};
use store::{JiraError, JiraState, ISSUE_TYPES, LINK_TYPES};

/// The authenticated JIRA user of a request.
#[derive(Clone, Debug)]
struct JiraUser(String);

impl IntoResponse for JiraError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_REQUEST);
        (status, Json(self.body())).into_response()
    }
}

/// The body of an injected 429/5xx, in JIRA's error shape.
pub(crate) fn fault_response(status: u16) -> Response {
    let msg = match status {
        429 => "Rate limit exceeded.",
        503 => "Service Unavailable",
        _ => "Internal server error",
    };
    JiraError::new(status, msg).into_response()
}

pub(crate) fn router(ctx: Arc<Control>) -> Router<Arc<Control>> {
    let api = Router::new()
        .route("/serverInfo", get(server_info))
        .route("/myself", get(myself))
        .route("/field", get(fields))
        .route("/status", get(statuses))
        .route("/status/:id", get(status_one))
        .route("/resolution", get(resolutions))
        .route("/issuetype", get(issue_types))
        .route("/issueLinkType", get(link_types))
        .route("/project", get(projects))
        .route("/project/:key", get(project_one))
        .route("/search", post(search_post).get(search_get))
        .route("/issue", post(create_issue))
        .route("/issue/", post(create_issue_trailing_slash))
        .route("/issue/createmeta", get(createmeta))
        .route(
            "/issue/:key",
            get(get_issue).put(edit_issue).delete(delete_issue),
        )
        .route(
            "/issue/:key/transitions",
            get(list_transitions).post(do_transition),
        )
        .route("/issue/:key/comment", get(list_comments).post(add_comment))
        .route("/user", get(user_lookup))
        .route("/user/search", get(user_search))
        .route("/groups/picker", get(group_picker));
    Router::new()
        .nest("/rest/api/2", api.clone())
        .nest("/rest/api/latest", api)
        .route_layer(middleware::from_fn_with_state(ctx, auth))
}

async fn auth(State(ctx): State<Arc<Control>>, mut req: Request, next: Next) -> Response {
    match authenticate(&ctx, req.headers()) {
        Some(user) => {
            req.extensions_mut().insert(JiraUser(user));
            next.run(req).await
        }
        None => unauthorized(),
    }
}

fn unauthorized() -> Response {
    let mut r = JiraError::new(
        401,
        "You are not authenticated. Authentication required to perform this operation.",
    )
    .into_response();
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Basic realm=\"protected-area\""),
    );
    r
}

fn authenticate(ctx: &Control, headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let creds = &ctx.cfg.credentials;
    if let Some(b64) = value.strip_prefix("Basic ") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .ok()?;
        let decoded = String::from_utf8(decoded).ok()?;
        let (user, pass) = decoded.split_once(':')?;
        if pass != creds.password {
            return None;
        }
        let known = user == creds.username || ctx.world().jira.users.contains_key(user);
        return known.then(|| user.to_string());
    }
    if let Some(token) = value.strip_prefix("Bearer ") {
        return (token.trim() == creds.jira_bearer_token).then(|| creds.username.clone());
    }
    if value.starts_with("OAuth ") && value.contains("oauth_consumer_key") {
        // OAuth 1.0a: the signature is not verified (spec §1.1).
        return Some(creds.username.clone());
    }
    None
}

fn base(ctx: &Control) -> String {
    ctx.urls.jira.clone()
}

fn parse_json(body: &Bytes) -> Result<Value, JiraError> {
    if body.is_empty() {
        return Err(JiraError::new(
            400,
            "No content to map to Object due to end of input",
        ));
    }
    serde_json::from_slice(body).map_err(|e| {
        JiraError::new(
            400,
            format!("Unexpected character in the request body: {e}"),
        )
    })
}

fn user_of(u: &Option<Extension<JiraUser>>, ctx: &Control) -> String {
    u.as_ref()
        .map(|Extension(JiraUser(n))| n.clone())
        .unwrap_or_else(|| ctx.cfg.credentials.username.clone())
}

async fn server_info(State(ctx): State<Arc<Control>>) -> Response {
    Json(json!({
        "baseUrl": base(&ctx),
        "version": "8.5.4",
        "versionNumbers": [8, 5, 4],
        "deploymentType": "Server",
        "buildNumber": 805004,
        "buildDate": "2020-04-21T00:00:00.000+0000",
        "serverTime": jira_datetime(ctx.now()),
        "scmInfo": "aegis-sim",
        "serverTitle": "Aegis simulated JIRA"
    }))
    .into_response()
}

async fn myself(State(ctx): State<Arc<Control>>, u: Option<Extension<JiraUser>>) -> Response {
    let name = user_of(&u, &ctx);
    let w = ctx.world();
    Json(w.jira.user_json(&base(&ctx), &name)).into_response()
}

async fn fields(State(ctx): State<Arc<Control>>) -> Response {
    let w = ctx.world();
    let all: Vec<Value> = w.jira.fields.iter().map(|f| w.jira.field_json(f)).collect();
    Json(all).into_response()
}

async fn statuses(State(ctx): State<Arc<Control>>) -> Response {
    let b = base(&ctx);
    let all: Vec<Value> = workflow::STATUSES
        .iter()
        .map(|s| JiraState::status_json(&b, s))
        .collect();
    Json(all).into_response()
}

async fn status_one(State(ctx): State<Arc<Control>>, Path(id): Path<String>) -> Response {
    match workflow::status_by_id(&id).or_else(|| workflow::status(&id)) {
        Some(s) => Json(JiraState::status_json(&base(&ctx), s)).into_response(),
        None => {
            JiraError::new(404, format!("The status with id '{id}' does not exist")).into_response()
        }
    }
}

async fn resolutions(State(ctx): State<Arc<Control>>) -> Response {
    let b = base(&ctx);
    let all: Vec<Value> = workflow::RESOLUTIONS
        .iter()
        .map(|r| JiraState::resolution_json(&b, r.1))
        .collect();
    Json(all).into_response()
}

async fn issue_types(State(ctx): State<Arc<Control>>) -> Response {
    let b = base(&ctx);
    let all: Vec<Value> = ISSUE_TYPES
        .iter()
        .map(|t| JiraState::issuetype_json(&b, t.1))
        .collect();
    Json(all).into_response()
}

async fn link_types(State(ctx): State<Arc<Control>>) -> Response {
    let b = base(&ctx);
    let all: Vec<Value> = LINK_TYPES
        .iter()
        .map(|(id, n, i, o)| {
            json!({"id": id.to_string(), "name": n, "inward": i, "outward": o,
                                    "self": format!("{b}/rest/api/2/issueLinkType/{id}")})
        })
        .collect();
    Json(json!({ "issueLinkTypes": all })).into_response()
}

async fn projects(State(ctx): State<Arc<Control>>) -> Response {
    let w = ctx.world();
    Json(json!([w.jira.project_json(&base(&ctx))])).into_response()
}

async fn project_one(State(ctx): State<Arc<Control>>, Path(key): Path<String>) -> Response {
    let w = ctx.world();
    let j = &w.jira;
    if key.eq_ignore_ascii_case(&j.project_key) || key == j.project_id.to_string() {
        let b = base(&ctx);
        let mut p = j.project_json(&b);
        p["issueTypes"] = json!(ISSUE_TYPES
            .iter()
            .map(|t| JiraState::issuetype_json(&b, t.1))
            .collect::<Vec<_>>());
        return Json(p).into_response();
    }
    JiraError::new(404, format!("No project could be found with key '{key}'.")).into_response()
}

/// Search parameters common to GET and POST.
struct SearchParams {
    jql: String,
    start_at: i64,
    max_results: i64,
    fields: Option<Vec<String>>,
}

fn search(ctx: &Control, p: SearchParams, paging_loop: bool) -> Response {
    if p.start_at < 0 {
        return JiraError::new(400, "startAt must be non-negative").into_response();
    }
    if p.max_results < 0 {
        return JiraError::new(400, "maxResults must be non-negative").into_response();
    }
    let now = ctx.now();
    let w = ctx.world();
    let query = match jql::parse(&p.jql, &w.jira, now) {
        Ok(q) => q,
        Err(e) => return JiraError::new(400, e).into_response(),
    };
    let ids = jql::run(&query, &w.jira, now);
    let cap = ctx.cfg.jira.max_results_cap;
    let max = (p.max_results as usize).min(cap);
    let start = if paging_loop { 0 } else { p.start_at as usize };
    let total = if paging_loop {
        (p.start_at as usize).saturating_add(max).saturating_add(1)
    } else {
        ids.len()
    };
    let b = base(ctx);
    let issues: Vec<Value> = ids
        .iter()
        .skip(start)
        .take(max)
        .filter_map(|id| w.jira.issues.get(id))
        .map(|i| w.jira.issue_json(&b, i, p.fields.as_deref()))
        .collect();
    Json(json!({
        "expand": "names,schema",
        "startAt": p.start_at,
        "maxResults": max,
        "total": total,
        "issues": issues
    }))
    .into_response()
}

async fn search_post(
    State(ctx): State<Arc<Control>>,
    paging: Option<Extension<PagingLoop>>,
    body: Bytes,
) -> Response {
    let v = match parse_json(&body) {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    let int = |k: &str, d: i64| -> Result<i64, JiraError> {
        match v.get(k) {
            None | Some(Value::Null) => Ok(d),
            Some(Value::Number(n)) => n
                .as_i64()
                .ok_or_else(|| JiraError::new(400, format!("{k} must be an integer"))),
            Some(_) => Err(JiraError::new(400, format!("{k} must be an integer"))),
        }
    };
    let (start_at, max_results) = match (int("startAt", 0), int("maxResults", 50)) {
        (Ok(s), Ok(m)) => (s, m),
        (Err(e), _) | (_, Err(e)) => return e.into_response(),
    };
    let fields = v.get("fields").and_then(Value::as_array).map(|a| {
        a.iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect()
    });
    let params = SearchParams {
        jql: v
            .get("jql")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        start_at,
        max_results,
        fields,
    };
    search(&ctx, params, paging.is_some())
}

async fn search_get(
    State(ctx): State<Arc<Control>>,
    paging: Option<Extension<PagingLoop>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let num = |k: &str, d: i64| q.get(k).map(|v| v.parse::<i64>()).unwrap_or(Ok(d));
    let (Ok(start_at), Ok(max_results)) = (num("startAt", 0), num("maxResults", 50)) else {
        return JiraError::new(400, "startAt and maxResults must be integers").into_response();
    };
    let params = SearchParams {
        jql: q.get("jql").cloned().unwrap_or_default(),
        start_at,
        max_results,
        fields: q
            .get("fields")
            .map(|f| f.split(',').map(|s| s.trim().to_string()).collect()),
    };
    search(&ctx, params, paging.is_some())
}

async fn create_issue(
    State(ctx): State<Arc<Control>>,
    u: Option<Extension<JiraUser>>,
    body: Bytes,
) -> Response {
    let v = match parse_json(&body) {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    let user = user_of(&u, &ctx);
    let now = ctx.now();
    let mut w = ctx.world();
    match w.jira.create(&v, &user, now) {
        Ok((id, key)) => (
            StatusCode::CREATED,
            Json(json!({"id": id.to_string(), "key": key, "self": format!("{}/rest/api/2/issue/{id}", base(&ctx))})),
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

/// `POST /issue/` (Go-Aegis sends a trailing slash): accepted in aegis-compat only.
async fn create_issue_trailing_slash(
    State(ctx): State<Arc<Control>>,
    u: Option<Extension<JiraUser>>,
    body: Bytes,
) -> Response {
    if ctx.cfg.profile == Profile::Strict {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"errorMessages": ["null for uri: /rest/api/2/issue/"], "errors": {}})),
        )
            .into_response();
    }
    create_issue(State(ctx), u, body).await
}

async fn get_issue(
    State(ctx): State<Arc<Control>>,
    Path(key): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let w = ctx.world();
    let Some(issue) = w.jira.find(&key).and_then(|id| w.jira.issues.get(&id)) else {
        return JiraError::not_found().into_response();
    };
    let fields: Option<Vec<String>> = q
        .get("fields")
        .map(|f| f.split(',').map(|s| s.trim().to_string()).collect());
    Json(w.jira.issue_json(&base(&ctx), issue, fields.as_deref())).into_response()
}

async fn edit_issue(
    State(ctx): State<Arc<Control>>,
    u: Option<Extension<JiraUser>>,
    Path(key): Path<String>,
    body: Bytes,
) -> Response {
    let v = match parse_json(&body) {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    let user = user_of(&u, &ctx);
    let now = ctx.now();
    let mut w = ctx.world();
    let Some(id) = w.jira.find(&key) else {
        return JiraError::not_found().into_response();
    };
    match w.jira.edit(id, &v, &user, now) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => e.into_response(),
    }
}

async fn delete_issue(State(ctx): State<Arc<Control>>, Path(key): Path<String>) -> Response {
    let mut w = ctx.world();
    let Some(id) = w.jira.find(&key) else {
        return JiraError::not_found().into_response();
    };
    match w.jira.delete(id) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => e.into_response(),
    }
}

fn screen_field_json(j: &JiraState, sf: &workflow::ScreenField) -> Option<(String, Value)> {
    match sf {
        workflow::ScreenField::Assignee => Some((
            "assignee".into(),
            json!({"required": false, "schema": {"type": "user", "system": "assignee"}, "name": "Assignee",
                   "key": "assignee", "autoCompleteUrl": "", "hasDefaultValue": false, "operations": ["set"]}),
        )),
        workflow::ScreenField::Custom(name, required) => {
            let f = j.field_by_name(name)?;
            let mut v = json!({"required": required, "schema": j.field_json(f)["schema"].clone(), "name": f.name,
                               "key": f.id, "hasDefaultValue": false, "operations": ["set"]});
            if !f.allowed.is_empty() {
                v["allowedValues"] = json!(f
                    .allowed
                    .iter()
                    .map(|a| json!({"value": a}))
                    .collect::<Vec<_>>());
            }
            Some((f.id.clone(), v))
        }
    }
}

async fn list_transitions(
    State(ctx): State<Arc<Control>>,
    Path(key): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let w = ctx.world();
    let Some(issue) = w.jira.find(&key).and_then(|id| w.jira.issues.get(&id)) else {
        return JiraError::not_found().into_response();
    };
    let with_fields = q
        .get("expand")
        .is_some_and(|e| e.contains("transitions.fields"));
    let b = base(&ctx);
    let ts: Vec<Value> = workflow::targets_from(issue.status)
        .into_iter()
        .map(|t| {
            let mut v = json!({
                "id": t.transition_id.to_string(), "name": t.transition_name,
                "to": JiraState::status_json(&b, t), "hasScreen": !t.screen.is_empty(),
                "isGlobal": false, "isInitial": false, "isAvailable": true, "isConditional": false, "isLooped": false
            });
            if with_fields {
                let fields: serde_json::Map<String, Value> = t
                    .screen
                    .iter()
                    .filter_map(|sf| screen_field_json(&w.jira, sf))
                    .collect();
                v["fields"] = Value::Object(fields);
            }
            v
        })
        .collect();
    Json(json!({"expand": "transitions", "transitions": ts})).into_response()
}

async fn do_transition(
    State(ctx): State<Arc<Control>>,
    u: Option<Extension<JiraUser>>,
    Path(key): Path<String>,
    body: Bytes,
) -> Response {
    let v = match parse_json(&body) {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    let user = user_of(&u, &ctx);
    let now = ctx.now();
    let mut w = ctx.world();
    let Some(id) = w.jira.find(&key) else {
        return JiraError::not_found().into_response();
    };
    match w.jira.transition(id, &v, &user, now) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => e.into_response(),
    }
}

async fn list_comments(State(ctx): State<Arc<Control>>, Path(key): Path<String>) -> Response {
    let w = ctx.world();
    let Some(issue) = w.jira.find(&key).and_then(|id| w.jira.issues.get(&id)) else {
        return JiraError::not_found().into_response();
    };
    let b = base(&ctx);
    let comments: Vec<Value> = issue
        .comments
        .iter()
        .map(|c| w.jira.comment_json(&b, issue.id, c))
        .collect();
    Json(json!({"startAt": 0, "maxResults": comments.len(), "total": comments.len(), "comments": comments}))
        .into_response()
}

async fn add_comment(
    State(ctx): State<Arc<Control>>,
    u: Option<Extension<JiraUser>>,
    Path(key): Path<String>,
    body: Bytes,
) -> Response {
    let v = match parse_json(&body) {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    let Some(text) = v
        .get("body")
        .and_then(Value::as_str)
        .filter(|s| !s.trim().is_empty())
    else {
        return JiraError::fields(
            400,
            [(
                "comment".to_string(),
                "Comment body can not be empty!".to_string(),
            )]
            .into(),
        )
        .into_response();
    };
    let user = user_of(&u, &ctx);
    let now = ctx.now();
    let mut w = ctx.world();
    let Some(id) = w.jira.find(&key) else {
        return JiraError::not_found().into_response();
    };
    match w.jira.add_comment(id, text, &user, now) {
        Ok(c) => (
            StatusCode::CREATED,
            Json(w.jira.comment_json(&base(&ctx), id, &c)),
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

async fn user_lookup(
    State(ctx): State<Arc<Control>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let Some(name) = q
        .get("username")
        .or_else(|| q.get("accountId"))
        .or_else(|| q.get("key"))
    else {
        return JiraError::new(400, "The username query parameter was not provided")
            .into_response();
    };
    let w = ctx.world();
    if w.jira.users.contains_key(name) {
        Json(w.jira.user_json(&base(&ctx), name)).into_response()
    } else {
        JiraError::new(404, format!("The user named '{name}' does not exist")).into_response()
    }
}

async fn user_search(
    State(ctx): State<Arc<Control>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let needle = q
        .get("username")
        .cloned()
        .unwrap_or_default()
        .to_lowercase();
    let w = ctx.world();
    let b = base(&ctx);
    let hits: Vec<Value> = w
        .jira
        .users
        .keys()
        .filter(|n| n.to_lowercase().contains(&needle))
        .map(|n| w.jira.user_json(&b, n))
        .collect();
    Json(hits).into_response()
}

async fn group_picker(
    State(ctx): State<Arc<Control>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let needle = q.get("query").cloned().unwrap_or_default().to_lowercase();
    let w = ctx.world();
    let hits: Vec<Value> = w
        .jira
        .groups
        .iter()
        .filter(|g| g.to_lowercase().contains(&needle))
        .map(|g| json!({"name": g, "html": g, "labels": []}))
        .collect();
    Json(json!({
        "header": format!("Showing {} of {} matching groups", hits.len(), hits.len()),
        "total": hits.len(),
        "groups": hits
    }))
    .into_response()
}

async fn createmeta(
    State(ctx): State<Arc<Control>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let w = ctx.world();
    let j = &w.jira;
    let b = base(&ctx);
    let wanted = q
        .get("projectKeys")
        .map(|k| {
            k.split(',')
                .any(|k| k.trim().eq_ignore_ascii_case(&j.project_key))
        })
        .unwrap_or(true);
    if !wanted {
        return Json(json!({"expand": "projects", "projects": []})).into_response();
    }
    let with_fields = q
        .get("expand")
        .is_some_and(|e| e.contains("projects.issuetypes.fields"));
    let types: Vec<Value> = ISSUE_TYPES
        .iter()
        .map(|t| {
            let mut v = JiraState::issuetype_json(&b, t.1);
            if with_fields {
                let mut fields = serde_json::Map::new();
                for f in &j.fields {
                    let writable = f.custom_id.is_some()
                        || matches!(f.id.as_str(), "summary" | "description" | "duedate" | "labels" | "assignee" | "reporter" | "project" | "issuetype" | "issuelinks");
                    if !writable {
                        continue;
                    }
                    let fj = j.field_json(f);
                    let mut e = json!({"required": matches!(f.id.as_str(), "summary" | "project" | "issuetype"),
                                       "schema": fj["schema"].clone(), "name": f.name, "key": f.id,
                                       "hasDefaultValue": false, "operations": ["set"]});
                    if !f.allowed.is_empty() {
                        e["allowedValues"] = json!(f.allowed.iter().map(|a| json!({"value": a})).collect::<Vec<_>>());
                    }
                    fields.insert(f.id.clone(), e);
                }
                v["fields"] = Value::Object(fields);
            }
            v
        })
        .collect();
    let mut p = j.project_json(&b);
    p["issuetypes"] = json!(types);
    Json(json!({"expand": "projects", "projects": [p]})).into_response()
}

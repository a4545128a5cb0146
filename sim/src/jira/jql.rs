//! A recursive-descent JQL parser and evaluator for the subset Aegis generates
//! (`original-vendor-apis.md` §1.4): quoted or bare field references (`"CF[10101]"`, ids,
//! clause names, display names; case-insensitive), `= != < > <= >= ~ !~ in, not in, is [not]
//! empty`, `AND`/`OR`/`NOT`, parentheses, `issue in linkedIssues("K")`, relative and absolute
//! dates, and `ORDER BY`. Anything else is rejected with JIRA's 400 error text.

use std::cmp::Ordering;

use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeZone, Utc};
use serde_json::Value;

use super::store::{FieldKind, Issue, JiraState};
use super::workflow;

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    LParen,
    RParen,
    Comma,
    Op(&'static str),
    Str(String),
    Word(String),
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    pos: usize,
}

fn jql_error(msg: impl std::fmt::Display, pos: usize) -> String {
    format!(
        "Error in the JQL Query: {msg} (line 1, character {})",
        pos + 1
    )
}

fn tokenize(s: &str) -> Result<Vec<Token>, String> {
    let chars: Vec<char> = s.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let pos = i;
        match c {
            c if c.is_whitespace() => i += 1,
            '(' => {
                out.push(Token {
                    tok: Tok::LParen,
                    pos,
                });
                i += 1
            }
            ')' => {
                out.push(Token {
                    tok: Tok::RParen,
                    pos,
                });
                i += 1
            }
            ',' => {
                out.push(Token {
                    tok: Tok::Comma,
                    pos,
                });
                i += 1
            }
            '"' | '\'' => {
                let quote = c;
                let mut v = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => {
                            return Err(jql_error("The quoted string has not been completed.", pos))
                        }
                        Some('\\') => {
                            if let Some(n) = chars.get(i + 1) {
                                v.push(*n);
                            }
                            i += 2;
                        }
                        Some(ch) if *ch == quote => {
                            i += 1;
                            break;
                        }
                        Some(ch) => {
                            v.push(*ch);
                            i += 1;
                        }
                    }
                }
                out.push(Token {
                    tok: Tok::Str(v),
                    pos,
                });
            }
            '=' => {
                out.push(Token {
                    tok: Tok::Op("="),
                    pos,
                });
                i += 1
            }
            '~' => {
                out.push(Token {
                    tok: Tok::Op("~"),
                    pos,
                });
                i += 1
            }
            '!' => match chars.get(i + 1) {
                Some('=') => {
                    out.push(Token {
                        tok: Tok::Op("!="),
                        pos,
                    });
                    i += 2
                }
                Some('~') => {
                    out.push(Token {
                        tok: Tok::Op("!~"),
                        pos,
                    });
                    i += 2
                }
                _ => return Err(jql_error("Expecting operator but got '!'.", pos)),
            },
            '<' | '>' => {
                let eq = chars.get(i + 1) == Some(&'=');
                let op = match (c, eq) {
                    ('<', true) => "<=",
                    ('<', false) => "<",
                    ('>', true) => ">=",
                    _ => ">",
                };
                out.push(Token {
                    tok: Tok::Op(op),
                    pos,
                });
                i += if eq { 2 } else { 1 };
            }
            _ => {
                let mut v = String::new();
                while let Some(ch) = chars.get(i) {
                    if ch.is_whitespace() || "()=,!<>~\"'".contains(*ch) {
                        break;
                    }
                    v.push(*ch);
                    i += 1;
                }
                out.push(Token {
                    tok: Tok::Word(v),
                    pos,
                });
            }
        }
    }
    Ok(out)
}

/// What a clause refers to.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    Key,
    Project,
    Status,
    Resolution,
    IssueType,
    Summary,
    Description,
    Created,
    Updated,
    Resolved,
    Due,
    Labels,
    Assignee,
    Reporter,
    Creator,
    Custom(String, FieldKind, String),
}

impl Target {
    fn name(&self) -> String {
        match self {
            Target::Key => "key".into(),
            Target::Project => "project".into(),
            Target::Status => "status".into(),
            Target::Resolution => "resolution".into(),
            Target::IssueType => "issuetype".into(),
            Target::Summary => "summary".into(),
            Target::Description => "description".into(),
            Target::Created => "created".into(),
            Target::Updated => "updated".into(),
            Target::Resolved => "resolved".into(),
            Target::Due => "due".into(),
            Target::Labels => "labels".into(),
            Target::Assignee => "assignee".into(),
            Target::Reporter => "reporter".into(),
            Target::Creator => "creator".into(),
            Target::Custom(_, _, name) => name.clone(),
        }
    }
    fn is_text(&self) -> bool {
        matches!(
            self,
            Target::Summary
                | Target::Description
                | Target::Custom(_, FieldKind::Text, _)
                | Target::Custom(_, FieldKind::TextArea, _)
        )
    }
    fn is_time(&self) -> bool {
        matches!(
            self,
            Target::Created
                | Target::Updated
                | Target::Resolved
                | Target::Due
                | Target::Custom(_, FieldKind::Date, _)
                | Target::Custom(_, FieldKind::DateTime, _)
        )
    }
}

#[derive(Debug, Clone)]
pub enum Operand {
    Value(String),
    LinkedIssues(String),
}

#[derive(Debug, Clone)]
pub enum Expr {
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    Cmp {
        target: Target,
        op: &'static str,
        values: Vec<Operand>,
    },
    Empty {
        target: Target,
        negated: bool,
    },
    /// `issue in linkedIssues("K")` / `issue not in …`.
    Linked {
        keys: Vec<String>,
        negated: bool,
    },
}

#[derive(Debug, Clone)]
pub struct Query {
    pub filter: Option<Expr>,
    pub order: Vec<(Target, bool)>,
}

struct Parser<'a> {
    toks: Vec<Token>,
    i: usize,
    state: &'a JiraState,
    now: DateTime<Utc>,
    end: usize,
}

fn is_kw(t: &Tok, kw: &str) -> bool {
    matches!(t, Tok::Word(w) if w.eq_ignore_ascii_case(kw))
}

fn describe(t: Option<&Token>) -> String {
    match t.map(|t| &t.tok) {
        None => "end of query".into(),
        Some(Tok::LParen) => "'('".into(),
        Some(Tok::RParen) => "')'".into(),
        Some(Tok::Comma) => "','".into(),
        Some(Tok::Op(o)) => format!("'{o}'"),
        Some(Tok::Str(s)) | Some(Tok::Word(s)) => format!("'{s}'"),
    }
}

const RESERVED: &[char] = &[
    '[', ']', '{', '}', '+', '*', '/', '%', '^', '$', '#', '@', ';', '?', '|', '&',
];

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<&Token> {
        self.toks.get(self.i)
    }
    fn pos(&self) -> usize {
        self.peek().map(|t| t.pos).unwrap_or(self.end)
    }
    fn next(&mut self) -> Option<Token> {
        let t = self.toks.get(self.i).cloned();
        self.i += 1;
        t
    }
    fn eat_kw(&mut self, kw: &str) -> bool {
        if self.peek().is_some_and(|t| is_kw(&t.tok, kw)) {
            self.i += 1;
            true
        } else {
            false
        }
    }
    fn expect(&mut self, tok: Tok, what: &str) -> Result<(), String> {
        if self.peek().map(|t| &t.tok) == Some(&tok) {
            self.i += 1;
            Ok(())
        } else {
            Err(jql_error(
                format!("Expecting {what} but got {}.", describe(self.peek())),
                self.pos(),
            ))
        }
    }

    fn query(&mut self) -> Result<Query, String> {
        let filter = if self.peek().is_none() || self.peek().is_some_and(|t| is_kw(&t.tok, "order"))
        {
            None
        } else {
            Some(self.or_expr()?)
        };
        let mut order = Vec::new();
        if self.eat_kw("order") {
            if !self.eat_kw("by") {
                return Err(jql_error(
                    format!("Expecting 'by' but got {}.", describe(self.peek())),
                    self.pos(),
                ));
            }
            loop {
                let pos = self.pos();
                let name = match self.next().map(|t| t.tok) {
                    Some(Tok::Str(s)) | Some(Tok::Word(s)) => s,
                    other => {
                        return Err(jql_error(
                            format!(
                                "Expecting a field name but got {}.",
                                describe(other.map(|tok| Token { tok, pos }).as_ref())
                            ),
                            pos,
                        ))
                    }
                };
                let target = self.resolve(&name)?;
                let asc = if self.eat_kw("desc") {
                    false
                } else {
                    self.eat_kw("asc");
                    true
                };
                order.push((target, asc));
                if self.peek().map(|t| &t.tok) == Some(&Tok::Comma) {
                    self.i += 1;
                    continue;
                }
                break;
            }
        }
        if let Some(t) = self.peek() {
            return Err(jql_error(
                format!(
                    "Expecting either 'OR' or 'AND' but got {}.",
                    describe(Some(t))
                ),
                t.pos,
            ));
        }
        Ok(Query { filter, order })
    }

    fn or_expr(&mut self) -> Result<Expr, String> {
        let mut left = self.and_expr()?;
        while self.eat_kw("or") {
            let right = self.and_expr()?;
            left = Expr::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and_expr(&mut self) -> Result<Expr, String> {
        let mut left = self.not_expr()?;
        while self.eat_kw("and") {
            let right = self.not_expr()?;
            left = Expr::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn not_expr(&mut self) -> Result<Expr, String> {
        if self.eat_kw("not") {
            return Ok(Expr::Not(Box::new(self.not_expr()?)));
        }
        if self.peek().map(|t| &t.tok) == Some(&Tok::LParen) {
            self.i += 1;
            let e = self.or_expr()?;
            self.expect(Tok::RParen, "')'")?;
            return Ok(e);
        }
        self.clause()
    }

    fn resolve(&self, name: &str) -> Result<Target, String> {
        let lower = name.to_ascii_lowercase();
        let sys = match lower.as_str() {
            "key" | "issuekey" | "id" | "issue" => Some(Target::Key),
            "project" => Some(Target::Project),
            "status" => Some(Target::Status),
            "resolution" => Some(Target::Resolution),
            "type" | "issuetype" | "issue type" => Some(Target::IssueType),
            "summary" => Some(Target::Summary),
            "description" => Some(Target::Description),
            "created" | "createddate" => Some(Target::Created),
            "updated" | "updateddate" => Some(Target::Updated),
            "resolved" | "resolutiondate" => Some(Target::Resolved),
            "due" | "duedate" | "due date" => Some(Target::Due),
            "labels" => Some(Target::Labels),
            "assignee" => Some(Target::Assignee),
            "reporter" => Some(Target::Reporter),
            "creator" => Some(Target::Creator),
            _ => None,
        };
        if let Some(t) = sys {
            return Ok(t);
        }
        let field = if let Some(n) = lower.strip_prefix("cf[").and_then(|r| r.strip_suffix(']')) {
            self.state
                .fields
                .iter()
                .find(|f| f.custom_id.map(|c| c.to_string()) == Some(n.to_string()))
        } else {
            self.state
                .fields
                .iter()
                .find(|f| f.id.eq_ignore_ascii_case(name) || f.name.eq_ignore_ascii_case(name))
        };
        match field {
            Some(f) if f.custom_id.is_some() => {
                Ok(Target::Custom(f.id.clone(), f.kind, f.name.clone()))
            }
            Some(f) => self.resolve(&f.id),
            None => Err(format!(
                "Field '{name}' does not exist or you do not have permission to view it."
            )),
        }
    }

    fn value(&mut self) -> Result<Operand, String> {
        let pos = self.pos();
        match self.next().map(|t| t.tok) {
            Some(Tok::Str(s)) => Ok(Operand::Value(s)),
            Some(Tok::Word(w)) => {
                if self.peek().map(|t| &t.tok) == Some(&Tok::LParen) {
                    return self.function(w, pos);
                }
                if let Some(c) = w.chars().find(|c| RESERVED.contains(c)) {
                    return Err(jql_error(
                        format!("The character '{c}' is a reserved JQL character. You must enclose it in a string or use the escape '\\u{:04x}' instead.", c as u32),
                        pos,
                    ));
                }
                Ok(Operand::Value(w))
            }
            other => Err(jql_error(
                format!(
                    "Expecting either a value, list or function but got {}.",
                    describe(other.map(|tok| Token { tok, pos }).as_ref())
                ),
                pos,
            )),
        }
    }

    fn function(&mut self, name: String, pos: usize) -> Result<Operand, String> {
        self.expect(Tok::LParen, "'('")?;
        let mut args = Vec::new();
        while self.peek().map(|t| &t.tok) != Some(&Tok::RParen) {
            match self.next().map(|t| t.tok) {
                Some(Tok::Str(s)) | Some(Tok::Word(s)) => args.push(s),
                _ => return Err(jql_error("Expecting a function argument.", pos)),
            }
            if self.peek().map(|t| &t.tok) == Some(&Tok::Comma) {
                self.i += 1;
            }
        }
        self.expect(Tok::RParen, "')'")?;
        if name.eq_ignore_ascii_case("linkedIssues") {
            let Some(key) = args.first() else {
                return Err("Function 'linkedIssues' expected between '1' and '2' arguments but received '0'.".to_string());
            };
            if self.state.find(key).is_none() {
                return Err(format!(
                    "Issue '{key}' could not be found in function 'linkedIssues'."
                ));
            }
            return Ok(Operand::LinkedIssues(key.clone()));
        }
        Err(format!(
            "Unable to find JQL function '{name}({})'.",
            args.join(", ")
        ))
    }

    fn clause(&mut self) -> Result<Expr, String> {
        let pos = self.pos();
        let name = match self.next().map(|t| t.tok) {
            Some(Tok::Str(s)) | Some(Tok::Word(s)) => s,
            other => {
                return Err(jql_error(
                    format!(
                        "Expecting a field name but got {}.",
                        describe(other.map(|tok| Token { tok, pos }).as_ref())
                    ),
                    pos,
                ))
            }
        };
        let target = self.resolve(&name)?;
        let op_pos = self.pos();
        let op: &'static str = match self.next().map(|t| t.tok) {
            Some(Tok::Op(o)) => o,
            Some(Tok::Word(w)) if w.eq_ignore_ascii_case("in") => "in",
            Some(Tok::Word(w)) if w.eq_ignore_ascii_case("not") => {
                if !self.eat_kw("in") {
                    return Err(jql_error(
                        format!("Expecting 'IN' but got {}.", describe(self.peek())),
                        self.pos(),
                    ));
                }
                "not in"
            }
            Some(Tok::Word(w)) if w.eq_ignore_ascii_case("is") => {
                let negated = self.eat_kw("not");
                if self.eat_kw("empty") || self.eat_kw("null") {
                    return Ok(Expr::Empty { target, negated });
                }
                return Err(jql_error(
                    format!("Expecting 'EMPTY' but got {}.", describe(self.peek())),
                    self.pos(),
                ));
            }
            other => {
                return Err(jql_error(
                    format!(
                        "Expecting operator but got {}. Valid operators are '=', '!=', '~', '!~', '<', '<=', '>', '>=', 'in', 'not in', 'is', 'is not'.",
                        describe(other.map(|tok| Token { tok, pos: op_pos }).as_ref())
                    ),
                    op_pos,
                ))
            }
        };
        let values = if op == "in" || op == "not in" {
            if self.peek().map(|t| &t.tok) == Some(&Tok::LParen) {
                self.i += 1;
                let mut vals = vec![self.value()?];
                while self.peek().map(|t| &t.tok) == Some(&Tok::Comma) {
                    self.i += 1;
                    vals.push(self.value()?);
                }
                self.expect(Tok::RParen, "')'")?;
                vals
            } else {
                vec![self.value()?]
            }
        } else {
            vec![self.value()?]
        };
        if (op == "~" || op == "!~") && !target.is_text() {
            return Err(format!(
                "The operator '{op}' is not supported by the '{}' field.",
                target.name()
            ));
        }
        if matches!(op, "<" | ">" | "<=" | ">=")
            && !(target.is_time()
                || target == Target::Key
                || matches!(target, Target::Custom(_, FieldKind::Number, _)))
        {
            return Err(format!(
                "The operator '{op}' is not supported by the '{}' field.",
                target.name()
            ));
        }
        let linked: Vec<String> = values
            .iter()
            .filter_map(|v| match v {
                Operand::LinkedIssues(k) => Some(k.clone()),
                _ => None,
            })
            .collect();
        if !linked.is_empty() {
            if target != Target::Key || linked.len() != values.len() {
                return Err(
                    "Function 'linkedIssues' is only supported with the 'issue' field.".into(),
                );
            }
            return Ok(Expr::Linked {
                keys: linked,
                negated: op == "not in" || op == "!=",
            });
        }
        // Validate values JIRA would check at parse time.
        for v in &values {
            let Operand::Value(v) = v else { continue };
            let unknown_status = target == Target::Status
                && workflow::status(v).is_none()
                && workflow::status_by_id(v).is_none();
            if unknown_status {
                return Err(format!(
                    "The value '{v}' does not exist for the field 'status'."
                ));
            }
            if target.is_time() && parse_time_operand(v, self.now).is_none() {
                return Err(format!("Date value '{v}' for field '{}' is invalid. Valid formats include: 'yyyy/MM/dd HH:mm', 'yyyy-MM-dd HH:mm', 'yyyy/MM/dd', 'yyyy-MM-dd', or a period format e.g. '-5d', '4w 2d'.", target.name()));
            }
        }
        Ok(Expr::Cmp { target, op, values })
    }
}

/// Parse a JQL query against the state's field catalogue.
pub fn parse(jql: &str, state: &JiraState, now: DateTime<Utc>) -> Result<Query, String> {
    let toks = tokenize(jql)?;
    let mut p = Parser {
        toks,
        i: 0,
        state,
        now,
        end: jql.chars().count(),
    };
    p.query()
}

/// Relative (`-20d`, `15d`, `4w 2d`, `-3h`) or absolute (`yyyy/MM/dd[ HH:mm]`, `yyyy-MM-dd[ HH:mm]`)
/// date operands; the server time zone is UTC.
pub fn parse_time_operand(v: &str, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let v = v.trim();
    for fmt in ["%Y/%m/%d %H:%M", "%Y-%m-%d %H:%M"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(v, fmt) {
            return Some(Utc.from_utc_datetime(&t));
        }
    }
    for fmt in ["%Y/%m/%d", "%Y-%m-%d"] {
        if let Ok(d) = NaiveDate::parse_from_str(v, fmt) {
            return d.and_hms_opt(0, 0, 0).map(|t| Utc.from_utc_datetime(&t));
        }
    }
    // Period format: optional sign applies to all parts, e.g. "-4w 2d".
    let (sign, rest) = match v.strip_prefix('-') {
        Some(r) => (-1i64, r),
        None => (1i64, v.strip_prefix('+').unwrap_or(v)),
    };
    if rest.is_empty() {
        return None;
    }
    let mut total = chrono::Duration::zero();
    for part in rest.split_whitespace() {
        let unit = part.chars().last()?;
        let n: i64 = part[..part.len() - unit.len_utf8()].parse().ok()?;
        let d = match unit {
            'w' => chrono::Duration::try_weeks(n),
            'd' => chrono::Duration::try_days(n),
            'h' => chrono::Duration::try_hours(n),
            'm' => chrono::Duration::try_minutes(n),
            _ => None,
        }?;
        total = total.checked_add(&d)?;
    }
    now.checked_add_signed(if sign < 0 { -total } else { total })
}

/// The value(s) of a target on an issue, as strings (for equality) — empty vec = empty field.
fn values_of(state: &JiraState, issue: &Issue, t: &Target) -> Vec<String> {
    match t {
        Target::Key => vec![issue.key.clone(), issue.id.to_string()],
        Target::Project => vec![
            state.project_key.clone(),
            state.project_name.clone(),
            state.project_id.to_string(),
        ],
        Target::Status => {
            let mut v = vec![issue.status.to_string()];
            if let Some(s) = workflow::status(issue.status) {
                v.push(s.id.to_string());
            }
            v
        }
        Target::Resolution => issue.resolution.iter().cloned().collect(),
        Target::IssueType => vec![issue.issuetype.clone()],
        Target::Summary => vec![issue.summary.clone()],
        Target::Description => issue.description.iter().cloned().collect(),
        Target::Labels => issue.labels.clone(),
        Target::Assignee => issue.assignee.iter().cloned().collect(),
        Target::Reporter => vec![issue.reporter.clone()],
        Target::Creator => vec![issue.creator.clone()],
        Target::Created | Target::Updated | Target::Resolved | Target::Due => time_of(issue, t)
            .map(|t| vec![t.to_rfc3339()])
            .unwrap_or_default(),
        Target::Custom(id, _, _) => match issue.custom.get(id) {
            None | Some(Value::Null) => vec![],
            Some(Value::String(s)) if s.is_empty() => vec![],
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Number(n)) => vec![n.to_string()],
            Some(Value::Object(o)) => o
                .get("value")
                .or_else(|| o.get("name"))
                .and_then(Value::as_str)
                .map(|s| vec![s.to_string()])
                .unwrap_or_default(),
            Some(other) => vec![other.to_string()],
        },
    }
}

fn time_of(issue: &Issue, t: &Target) -> Option<DateTime<Utc>> {
    match t {
        Target::Created => Some(issue.created),
        Target::Updated => Some(issue.updated),
        Target::Resolved => issue.resolutiondate,
        Target::Due => issue
            .duedate
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .map(|t| Utc.from_utc_datetime(&t)),
        Target::Custom(id, kind, _) => {
            let s = issue.custom.get(id)?.as_str()?;
            match kind {
                FieldKind::Date => NaiveDate::parse_from_str(s, "%Y-%m-%d")
                    .ok()
                    .and_then(|d| d.and_hms_opt(0, 0, 0))
                    .map(|t| Utc.from_utc_datetime(&t)),
                _ => super::store::parse_datetime(s),
            }
        }
        _ => None,
    }
}

fn words(s: &str) -> Vec<String> {
    s.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| w.to_lowercase())
        .collect()
}

/// `~`: every word of the query (parentheses and quotes stripped; `*` = prefix) is a word of the value.
fn text_match(value: &str, query: &str) -> bool {
    let have = words(value);
    let q = query.trim().trim_start_matches('(').trim_end_matches(')');
    let wanted: Vec<String> = q
        .split(|c: char| !(c.is_alphanumeric() || c == '*'))
        .filter(|w| !w.is_empty())
        .map(|w| w.to_lowercase())
        .collect();
    !wanted.is_empty()
        && wanted.iter().all(|w| match w.strip_suffix('*') {
            Some(prefix) => have.iter().any(|h| h.starts_with(prefix)),
            None => have.iter().any(|h| h == w),
        })
}

fn key_order(state: &JiraState, a: &str, b: &str) -> Option<Ordering> {
    let num = |k: &str| -> Option<u64> {
        if let Ok(id) = k.parse::<u64>() {
            return state.issues.get(&id).map(|i| i.number);
        }
        k.rsplit_once('-').and_then(|(_, n)| n.parse().ok())
    };
    Some(num(a)?.cmp(&num(b)?))
}

impl Expr {
    pub fn matches(&self, state: &JiraState, issue: &Issue, now: DateTime<Utc>) -> bool {
        match self {
            Expr::And(a, b) => a.matches(state, issue, now) && b.matches(state, issue, now),
            Expr::Or(a, b) => a.matches(state, issue, now) || b.matches(state, issue, now),
            Expr::Not(a) => !a.matches(state, issue, now),
            Expr::Empty { target, negated } => {
                let empty = values_of(state, issue, target).is_empty();
                empty != *negated
            }
            Expr::Linked { keys, negated } => {
                let linked = state.linked(issue.id);
                let hit = keys
                    .iter()
                    .filter_map(|k| state.find(k))
                    .any(|id| linked.contains(&id));
                hit != *negated
            }
            Expr::Cmp { target, op, values } => {
                let have = values_of(state, issue, target);
                let vals: Vec<&str> = values
                    .iter()
                    .filter_map(|v| match v {
                        Operand::Value(s) => Some(s.as_str()),
                        Operand::LinkedIssues(_) => None,
                    })
                    .collect();
                let eq = |v: &str| -> bool {
                    if target.is_time() {
                        match (time_of(issue, target), parse_time_operand(v, now)) {
                            (Some(a), Some(b)) => a == b,
                            _ => false,
                        }
                    } else {
                        have.iter().any(|h| h.eq_ignore_ascii_case(v))
                    }
                };
                let cmp = |v: &str| -> Option<Ordering> {
                    if target.is_time() {
                        let a = time_of(issue, target)?;
                        let b = parse_time_operand(v, now)?;
                        Some(a.cmp(&b))
                    } else if *target == Target::Key {
                        key_order(state, &issue.key, v)
                    } else {
                        let a: f64 = have.first()?.parse().ok()?;
                        let b: f64 = v.parse().ok()?;
                        a.partial_cmp(&b)
                    }
                };
                match *op {
                    "=" => vals.iter().any(|v| eq(v)),
                    "in" => vals.iter().any(|v| eq(v)),
                    // JIRA's != and not in never match an empty field.
                    "!=" | "not in" => !have.is_empty() && !vals.iter().any(|v| eq(v)),
                    "~" => have.iter().any(|h| vals.iter().any(|v| text_match(h, v))),
                    "!~" => {
                        !have.is_empty()
                            && !have.iter().any(|h| vals.iter().any(|v| text_match(h, v)))
                    }
                    "<" => vals.iter().any(|v| cmp(v) == Some(Ordering::Less)),
                    ">" => vals.iter().any(|v| cmp(v) == Some(Ordering::Greater)),
                    "<=" => vals
                        .iter()
                        .any(|v| matches!(cmp(v), Some(Ordering::Less | Ordering::Equal))),
                    ">=" => vals
                        .iter()
                        .any(|v| matches!(cmp(v), Some(Ordering::Greater | Ordering::Equal))),
                    _ => false,
                }
            }
        }
    }
}

/// Run a query: matching issue ids in result order. Empty values sort last ascending.
pub fn run(q: &Query, state: &JiraState, now: DateTime<Utc>) -> Vec<u64> {
    let mut hits: Vec<&Issue> = state
        .issues
        .values()
        .filter(|i| q.filter.as_ref().is_none_or(|f| f.matches(state, i, now)))
        .collect();
    let sort_key = |i: &Issue, t: &Target| -> (u8, Option<DateTime<Utc>>, u64, String) {
        if t.is_time() {
            let v = time_of(i, t);
            return (u8::from(v.is_none()), v, 0, String::new());
        }
        if *t == Target::Key {
            return (0, None, i.number, String::new());
        }
        let v = values_of(state, i, t);
        match v.first() {
            Some(s) => (0, None, 0, s.to_lowercase()),
            None => (1, None, 0, String::new()),
        }
    };
    hits.sort_by(|a, b| {
        for (t, asc) in &q.order {
            let (ka, kb) = (sort_key(a, t), sort_key(b, t));
            // Empty values are last ascending, first descending (JIRA treats them as largest).
            let ord = ka.cmp(&kb);
            let ord = if *asc { ord } else { ord.reverse() };
            if ord != Ordering::Equal {
                return ord;
            }
        }
        if q.order.is_empty() {
            b.id.cmp(&a.id)
        } else {
            a.id.cmp(&b.id)
        }
    });
    hits.into_iter().map(|i| i.id).collect()
}

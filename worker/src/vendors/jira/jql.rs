//! A JQL builder that quotes and escapes every value, so a hostname, title or
//! organization code containing quotes, `~`, parentheses or JQL keywords can
//! never change the shape of a query.
//!
//! ```ignore
//! let q = engine.query()
//!     .contains(Field::aegis("Org"), "NORTON")
//!     .eq(Field::aegis("Method of Discovery"), "Qualys")
//!     .on_or_after(Field::UPDATED, since)
//!     .order_by(Field::UPDATED, true);
//! // project = "VULN" AND cf[10112] ~ "\"NORTON\"" AND cf[10100] = "Qualys"
//! //   AND updated >= "2026/11/24 10:00" ORDER BY updated ASC
//! ```
//!
//! Field references are resolved by the engine when the query is rendered:
//! custom fields become `cf[<id>]`, system fields their JQL clause name.

use chrono::{DateTime, Utc};

/// A field a clause tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Field {
    /// A system field by its JQL clause name (`project`, `status`, `updated`, …).
    System(&'static str),
    /// A field by Aegis name (translated through `field_map`, then looked up
    /// by display name in the field catalogue).
    Aegis(String),
}

// The whole vocabulary, for the rescan jobs as well as these.
#[allow(dead_code)]
impl Field {
    pub const PROJECT: Field = Field::System("project");
    pub const STATUS: Field = Field::System("status");
    pub const UPDATED: Field = Field::System("updated");
    pub const CREATED: Field = Field::System("created");
    pub const DUE: Field = Field::System("due");
    pub const LABELS: Field = Field::System("labels");
    pub const KEY: Field = Field::System("key");
    pub const ASSIGNEE: Field = Field::System("assignee");

    pub fn aegis(name: impl Into<String>) -> Field {
        Field::Aegis(name.into())
    }
}

/// One condition of a query.
#[allow(dead_code)]
#[derive(Clone, Debug, PartialEq)]
pub enum Cond {
    Eq(Field, String),
    NotEq(Field, String),
    In(Field, Vec<String>),
    NotIn(Field, Vec<String>),
    /// Text search (`~`) for the value as a phrase.
    Contains(Field, String),
    IsEmpty(Field),
    IsNotEmpty(Field),
    /// `field <op> "yyyy/MM/dd HH:mm"`, op one of `<`, `<=`, `>`, `>=`.
    Time(Field, &'static str, DateTime<Utc>),
    Any(Vec<Cond>),
    All(Vec<Cond>),
}

/// A query: conditions joined by AND, and an optional order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Query {
    conds: Vec<Cond>,
    order: Option<(Field, bool)>,
}

impl Query {
    pub fn new() -> Query {
        Query::default()
    }

    pub fn and(mut self, cond: Cond) -> Query {
        self.conds.push(cond);
        self
    }

    pub fn eq(self, field: Field, value: impl Into<String>) -> Query {
        self.and(Cond::Eq(field, value.into()))
    }

    pub fn contains(self, field: Field, value: impl Into<String>) -> Query {
        self.and(Cond::Contains(field, value.into()))
    }

    pub fn any_of(self, field: Field, values: Vec<String>) -> Query {
        self.and(Cond::In(field, values))
    }

    pub fn on_or_after(self, field: Field, t: DateTime<Utc>) -> Query {
        self.and(Cond::Time(field, ">=", t))
    }

    /// `ORDER BY field ASC|DESC`.
    pub fn order_by(mut self, field: Field, ascending: bool) -> Query {
        self.order = Some((field, ascending));
        self
    }

    /// Renders the query with `resolve` turning fields into JQL field references.
    pub fn render<E>(
        &self,
        resolve: &dyn Fn(&Field) -> Result<String, E>,
        time_offset_minutes: i32,
    ) -> Result<String, E> {
        let mut parts = Vec::with_capacity(self.conds.len());
        for c in &self.conds {
            parts.push(render_cond(c, resolve, time_offset_minutes, false)?);
        }
        let mut out = parts.join(" AND ");
        if let Some((f, asc)) = &self.order {
            out.push_str(&format!(
                " ORDER BY {} {}",
                resolve(f)?,
                if *asc { "ASC" } else { "DESC" }
            ));
        }
        Ok(out)
    }
}

fn render_cond<E>(
    c: &Cond,
    resolve: &dyn Fn(&Field) -> Result<String, E>,
    offset: i32,
    nested: bool,
) -> Result<String, E> {
    let list = |vs: &[String]| vs.iter().map(|v| quote(v)).collect::<Vec<_>>().join(", ");
    Ok(match c {
        Cond::Eq(f, v) => format!("{} = {}", resolve(f)?, quote(v)),
        Cond::NotEq(f, v) => format!("{} != {}", resolve(f)?, quote(v)),
        Cond::In(f, vs) => format!("{} in ({})", resolve(f)?, list(vs)),
        Cond::NotIn(f, vs) => format!("{} not in ({})", resolve(f)?, list(vs)),
        Cond::Contains(f, v) => format!("{} ~ {}", resolve(f)?, quote(&phrase(v))),
        Cond::IsEmpty(f) => format!("{} is EMPTY", resolve(f)?),
        Cond::IsNotEmpty(f) => format!("{} is not EMPTY", resolve(f)?),
        Cond::Time(f, op, t) => format!("{} {op} {}", resolve(f)?, quote(&jql_time(*t, offset))),
        Cond::Any(cs) | Cond::All(cs) => {
            let joiner = if matches!(c, Cond::Any(_)) {
                " OR "
            } else {
                " AND "
            };
            let inner = cs
                .iter()
                .map(|c| render_cond(c, resolve, offset, true))
                .collect::<Result<Vec<_>, E>>()?
                .join(joiner);
            if nested || cs.len() > 1 {
                format!("({inner})")
            } else {
                inner
            }
        }
    })
}

/// A JQL string literal: double quotes, with `\` and `"` escaped and control
/// characters written as escapes. Nothing inside can end the string.
pub fn quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The text-search operand for an exact phrase. Lucene treats everything in a
/// phrase literally except `"` and `\`, which become spaces (word separators
/// for the search anyway).
fn phrase(value: &str) -> String {
    let cleaned: String = value
        .chars()
        .map(|c| if c == '"' || c == '\\' { ' ' } else { c })
        .collect();
    format!("\"{}\"", cleaned.trim())
}

/// JQL's date form, `yyyy/MM/dd HH:mm`, in the JIRA user's time zone (UTC
/// plus `offset_minutes`).
pub fn jql_time(t: DateTime<Utc>, offset_minutes: i32) -> String {
    (t + chrono::Duration::minutes(i64::from(offset_minutes)))
        .format("%Y/%m/%d %H:%M")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(f: &Field) -> Result<String, String> {
        Ok(match f {
            Field::System(s) => s.to_string(),
            Field::Aegis(n) if n == "Hostname" => "cf[10101]".into(),
            Field::Aegis(n) => Err(format!("unknown {n}"))?,
        })
    }

    #[test]
    fn values_cannot_break_out_of_their_string() {
        let q = Query::new()
            .eq(Field::PROJECT, "VULN")
            .contains(Field::aegis("Hostname"), r#"x" OR project != "Y\"#)
            .eq(Field::STATUS, "Open\" OR status ~ \"x");
        let jql = q.render(&resolve, 0).unwrap();
        assert_eq!(
            jql,
            r#"project = "VULN" AND cf[10101] ~ "\"x  OR project !=  Y\"" AND status = "Open\" OR status ~ \"x""#
        );
    }

    #[test]
    fn keywords_and_operators_in_values_stay_values() {
        let q = Query::new().eq(Field::LABELS, "AND ~ ORDER BY (x) [NO MAPPING]");
        assert_eq!(
            q.render(&resolve, 0).unwrap(),
            r#"labels = "AND ~ ORDER BY (x) [NO MAPPING]""#
        );
    }

    #[test]
    fn groups_dates_and_order_render() {
        let t = DateTime::parse_from_rfc3339("2026-11-24T10:05:59Z")
            .unwrap()
            .with_timezone(&Utc);
        let q = Query::new()
            .and(Cond::Any(vec![
                Cond::All(vec![
                    Cond::Eq(Field::STATUS, "Closed-Exception".into()),
                    Cond::IsNotEmpty(Field::aegis("Hostname")),
                ]),
                Cond::Eq(Field::STATUS, "Closed-False-Positive".into()),
            ]))
            .on_or_after(Field::UPDATED, t)
            .order_by(Field::UPDATED, true);
        assert_eq!(
            q.render(&resolve, 60).unwrap(),
            r#"((status = "Closed-Exception" AND cf[10101] is not EMPTY) OR status = "Closed-False-Positive") AND updated >= "2026/11/24 11:05" ORDER BY updated ASC"#
        );
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(quote("a\nb\u{1}"), r#""a\nb\u0001""#);
    }
}

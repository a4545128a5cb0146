//! JIRA's date formats, both directions.
//!
//! JIRA writes date-times as `2021-03-04T05:06:07.000+0000` (offset without a
//! colon) and dates as `2021-03-04`. Reading is lenient (`Z`, `+00:00`, no
//! fraction, date only) because proxies and Cloud differ; writing uses exactly
//! JIRA's forms.

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};

/// A JIRA date-time or date (midnight UTC), None when empty or unparseable.
pub fn parse_any(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if let Ok(t) = DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f%z") {
        return Some(t.with_timezone(&Utc));
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    if let Ok(t) = NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f") {
        return Some(t.and_utc());
    }
    parse_date(s)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
}

/// A JIRA date (`2021-03-04`), also accepting a date-time (its UTC date).
pub fn parse_date(s: &str) -> Option<NaiveDate> {
    let s = s.trim();
    NaiveDate::parse_from_str(s, "%Y-%m-%d").ok().or_else(|| {
        s.get(..10)
            .and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
    })
}

/// `2021-03-04T05:06:07.000+0000`.
pub fn format_datetime(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.3f+0000").to_string()
}

/// `2021-03-04`.
pub fn format_date(d: NaiveDate) -> String {
    d.format("%Y-%m-%d").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_jira_and_lenient_forms() {
        let want = DateTime::parse_from_rfc3339("2021-03-04T05:06:07Z")
            .unwrap()
            .with_timezone(&Utc);
        for s in [
            "2021-03-04T05:06:07.000+0000",
            "2021-03-04T07:06:07.000+0200",
            "2021-03-04T05:06:07Z",
            "2021-03-04T05:06:07.000+00:00",
            "2021-03-04T05:06:07",
        ] {
            assert_eq!(parse_any(s), Some(want), "{s}");
        }
        assert_eq!(
            parse_any("2021-03-04").unwrap().to_rfc3339(),
            "2021-03-04T00:00:00+00:00"
        );
        assert_eq!(parse_any(""), None);
        assert_eq!(parse_any("yesterday"), None);
    }

    #[test]
    fn writes_jira_forms_that_read_back() {
        let t = DateTime::parse_from_rfc3339("2021-03-04T05:06:07.250Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(format_datetime(t), "2021-03-04T05:06:07.250+0000");
        assert_eq!(parse_any(&format_datetime(t)), Some(t));
        assert_eq!(format_date(t.date_naive()), "2021-03-04");
    }
}

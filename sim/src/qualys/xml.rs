//! Small XML writing helpers for Qualys responses (escaping, CDATA, timestamps, SIMPLE_RETURN).

use std::fmt::Write;

use chrono::{DateTime, Datelike, Timelike, Utc};

/// Escape text content / attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            _ => out.push(c),
        }
    }
    out
}

/// Wrap text in CDATA (splitting any `]]>` it contains).
pub fn cdata(s: &str) -> String {
    format!("<![CDATA[{}]]>", s.replace("]]>", "]]]]><![CDATA[>"))
}

/// Append an RFC 3339 timestamp (`2021-03-04T05:06:07Z`) without going through a format parser.
pub fn push_time(out: &mut String, t: DateTime<Utc>) {
    let _ = write!(
        out,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        t.month(),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    );
}

pub fn time(t: DateTime<Utc>) -> String {
    let mut s = String::with_capacity(20);
    push_time(&mut s, t);
    s
}

/// The XML declaration plus a DOCTYPE naming the Qualys DTD, as the real service sends.
pub fn prolog(root: &str, dtd: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\" ?>\n<!DOCTYPE {root} SYSTEM \"https://qualysapi.qualys.com/api/2.0/{dtd}\">\n"
    )
}

/// A SIMPLE_RETURN document; `code` present only for errors.
pub fn simple_return(
    now: DateTime<Utc>,
    code: Option<u32>,
    text: &str,
    items: &[(String, String)],
) -> String {
    let mut out = prolog("SIMPLE_RETURN", "simple_return.dtd");
    out.push_str("<SIMPLE_RETURN>\n  <RESPONSE>\n    <DATETIME>");
    push_time(&mut out, now);
    out.push_str("</DATETIME>\n");
    if let Some(c) = code {
        let _ = writeln!(out, "    <CODE>{c}</CODE>");
    }
    let _ = writeln!(out, "    <TEXT>{}</TEXT>", esc(text));
    if !items.is_empty() {
        out.push_str("    <ITEM_LIST>\n");
        for (k, v) in items {
            let _ = writeln!(
                out,
                "      <ITEM>\n        <KEY>{}</KEY>\n        <VALUE>{}</VALUE>\n      </ITEM>",
                esc(k),
                esc(v)
            );
        }
        out.push_str("    </ITEM_LIST>\n");
    }
    out.push_str("  </RESPONSE>\n</SIMPLE_RETURN>\n");
    out
}

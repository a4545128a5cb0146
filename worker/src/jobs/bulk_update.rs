//! BulkUpdateJob: applies a CSV of ticket updates (status transitions,
//! assignment, fields, comments) and writes a per-row report to
//! `BulkUpdateResult`; a bad row is reported, never fatal (spec §11).
//!
//! In- and out-source: the JIRA config. Payload:
//!
//! ```json
//! {"file": ["q3-exceptions.csv"], "user": "alice"}      // files in AEGIS_BULK_UPDATE_DIR
//! {"csv": "update,Status,Assignee\nVULN-1,Resolved-Remediated,jdoe\n", "user": "alice"}
//! ```
//!
//! Files are read from `AEGIS_BULK_UPDATE_DIR` (default `./bulk_updates`) and
//! moved to its `finished/` folder. A header line starts with a command
//! (`update`; `create` and `delete` are reported as unsupported); its first
//! column holds ticket keys and the others name what to change: `Status` (an
//! Aegis status, reached through the workflow), `Assignee` (`Unassigned`
//! clears it), `Comment`, or any ticket field by name. Empty cells change
//! nothing. Rows are applied in order; the report keeps each row's line so the
//! failed ones can be fixed and sent again. The original's websocket progress
//! messages are replaced by the report table and log lines.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use futures::future::BoxFuture;
use serde::Deserialize;

use super::{Job, JobContext, JobError};
use crate::vendors::jira::JiraClient;
use crate::vendors::ticketing::{FieldValue, TicketEngine, TransitionOptions};

#[derive(Debug, Default, Deserialize)]
struct Payload {
    #[serde(default)]
    file: Vec<String>,
    #[serde(default)]
    csv: Option<String>,
    #[serde(default)]
    user: Option<String>,
    /// Accepted for compatibility; the JobConfig's JIRA source is used.
    #[serde(default, rename = "serviceURL")]
    #[allow(dead_code)]
    service_url: Option<String>,
    #[serde(default, rename = "orgId")]
    #[allow(dead_code)]
    org_id: Option<String>,
}

pub struct BulkUpdateJob;

impl Job for BulkUpdateJob {
    fn name(&self) -> &'static str {
        "BulkUpdateJob"
    }

    fn run(&self, ctx: JobContext) -> BoxFuture<'static, Result<(), JobError>> {
        Box::pin(run(ctx))
    }
}

fn bulk_dir() -> PathBuf {
    std::env::var_os("AEGIS_BULK_UPDATE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("bulk_updates"))
}

/// Reads the named files (plain names only) and moves them to `finished/`.
fn read_files(dir: &Path, names: &[String]) -> Result<String, JobError> {
    let mut text = String::new();
    for name in names {
        if name.is_empty() || name.contains(['/', '\\']) || name == ".." || name == "." {
            return Err(JobError::Config(format!(
                "{name:?} is not a plain file name in the bulk update folder"
            )));
        }
        let path = dir.join(name);
        let content = std::fs::read_to_string(&path).map_err(|e| {
            JobError::Config(format!(
                "could not find update file {name} in {}: {e}",
                dir.display()
            ))
        })?;
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&content);
        let finished = dir.join("finished");
        if let Err(e) = std::fs::create_dir_all(&finished)
            .and_then(|_| std::fs::rename(&path, finished.join(name)))
        {
            tracing::warn!(file = %name, error = %e, "could not move the update file to finished/");
        }
    }
    Ok(text)
}

/// One parsed CSV record and the line it starts on.
struct Record {
    line: usize,
    cells: Vec<String>,
    raw: String,
}

/// RFC 4180 CSV: quoted cells may hold commas, quotes (`""`) and line breaks;
/// records end at `\r\n`, `\n` or a lone `\r`.
fn parse_csv(text: &str) -> Vec<Record> {
    let mut records = Vec::new();
    let (mut cells, mut cell, mut raw) = (Vec::new(), String::new(), String::new());
    let (mut quoted, mut line, mut start) = (false, 1usize, 1usize);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if quoted {
            raw.push(c);
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    raw.push('"');
                    cell.push('"');
                }
                '"' => quoted = false,
                '\n' => {
                    line += 1;
                    cell.push(c);
                }
                _ => cell.push(c),
            }
            continue;
        }
        match c {
            '"' if cell.is_empty() => {
                quoted = true;
                raw.push(c);
            }
            ',' => {
                cells.push(std::mem::take(&mut cell));
                raw.push(c);
            }
            '\r' | '\n' => {
                if c == '\r' && chars.peek() == Some(&'\n') {
                    chars.next();
                }
                cells.push(std::mem::take(&mut cell));
                if cells.iter().any(|c| !c.trim().is_empty()) {
                    records.push(Record {
                        line: start,
                        cells: std::mem::take(&mut cells),
                        raw: std::mem::take(&mut raw),
                    });
                } else {
                    cells.clear();
                    raw.clear();
                }
                line += 1;
                start = line;
            }
            _ => {
                cell.push(c);
                raw.push(c);
            }
        }
    }
    cells.push(cell);
    if cells.iter().any(|c| !c.trim().is_empty()) {
        records.push(Record {
            line: start,
            cells,
            raw,
        });
    }
    records
}

fn command_of(first_cell: &str) -> Option<&'static str> {
    let l = first_cell.trim().to_lowercase();
    ["update", "create", "delete"]
        .into_iter()
        .find(|c| l.starts_with(c))
}

async fn run(ctx: JobContext) -> Result<(), JobError> {
    let p: Payload = ctx.payload()?;
    let text = match (&p.csv, p.file.is_empty()) {
        (Some(csv), _) => csv.clone(),
        (None, false) => read_files(&bulk_dir(), &p.file)?,
        (None, true) => {
            return Err(JobError::Config(
                "BulkUpdateJob needs \"file\" (names) or \"csv\" in its payload".into(),
            ))
        }
    };
    let Some(jira) = ctx.sources_in.first() else {
        return Err(JobError::Config(
            "BulkUpdateJob needs the JIRA source config as its in-source".into(),
        ));
    };
    let engine = JiraClient::connect(ctx.client(jira)?, jira, ctx.settings.keyring.as_ref())
        .await
        .map_err(|e| JobError::Failed(anyhow::anyhow!("could not connect to JIRA: {e}")))?;
    let records = parse_csv(&text);
    let mut header: Option<(&'static str, Vec<String>)> = None;
    let (mut ok, mut failed) = (0, 0);
    for r in &records {
        if ctx.cancel.is_cancelled() {
            return Err(JobError::Cancelled);
        }
        if let Some(cmd) = r.cells.first().and_then(|c| command_of(c)) {
            let columns: Vec<String> = r
                .cells
                .iter()
                .skip(1)
                .map(|c| c.trim().to_string())
                .collect();
            if columns.iter().any(|c| c.eq_ignore_ascii_case("requester")) {
                return Err(JobError::Config(format!(
                    "line {}: the header already has a requester column",
                    r.line
                )));
            }
            header = Some((cmd, columns));
            continue;
        }
        let key = r
            .cells
            .first()
            .map(|k| k.trim().to_string())
            .unwrap_or_default();
        let (command, result) = match &header {
            None => (
                "none",
                Err("no header line (update,…) before this row".to_string()),
            ),
            Some((cmd, _)) if *cmd != "update" => (
                *cmd,
                Err(format!("the {cmd} command is not supported; use update")),
            ),
            Some((cmd, columns)) => (
                *cmd,
                apply(&engine, &key, columns, &r.cells[1..], p.user.as_deref()).await,
            ),
        };
        let (success, message) = match &result {
            Ok(m) => {
                ok += 1;
                (true, m.clone())
            }
            Err(m) => {
                failed += 1;
                tracing::warn!(line = r.line, ticket = %key, "bulk update row failed: {m}");
                (false, m.clone())
            }
        };
        sqlx::query(
            "INSERT INTO BulkUpdateResult (JobHistoryID, RowNumber, TicketKey, Command, Success, Message, `Line`)
             VALUES (?, ?, ?, ?, ?, ?, ?)
             ON DUPLICATE KEY UPDATE Success = VALUES(Success), Message = VALUES(Message)",
        )
        .bind(&ctx.history.id)
        .bind(r.line as i64)
        .bind(Some(key.as_str()).filter(|k| !k.is_empty()))
        .bind(command)
        .bind(success)
        .bind(message)
        .bind(&r.raw)
        .execute(&ctx.pool)
        .await?;
    }
    tracing::info!(
        "bulk update: {ok} row(s) applied, {failed} failed (see BulkUpdateResult for job {})",
        ctx.history.id
    );
    Ok(())
}

/// Applies one row; Ok(summary) or Err(reason quoting JIRA).
async fn apply(
    engine: &JiraClient,
    key: &str,
    columns: &[String],
    values: &[String],
    user: Option<&str>,
) -> Result<String, String> {
    if key.is_empty() {
        return Err("no ticket key in the first column".into());
    }
    if values.len() > columns.len() {
        return Err(format!(
            "{} values for {} columns",
            values.len(),
            columns.len()
        ));
    }
    let (mut status, mut assignee, mut comment) = (None, None, None);
    let mut fields = BTreeMap::new();
    for (column, value) in columns.iter().zip(values) {
        let value = value.trim();
        if value.is_empty() {
            continue;
        }
        match column.to_lowercase().as_str() {
            "status" => status = Some(value.to_string()),
            "assignee" => assignee = Some(value.to_string()),
            "comment" => comment = Some(value.to_string()),
            _ => {
                fields.insert(column.clone(), FieldValue::Text(value.to_string()));
            }
        }
    }
    let requested = user
        .filter(|u| !u.is_empty())
        .map(|u| format!("requested by: {u}"));
    let comment = match (comment, requested) {
        (Some(c), Some(r)) => Some(format!("{c}\n\n{r}")),
        (c, r) => c.or(r),
    };
    let mut done = Vec::new();
    if !fields.is_empty() {
        engine
            .update_fields(key, &fields)
            .await
            .map_err(|e| e.to_string())?;
        done.push(format!("{} field(s)", fields.len()));
    }
    if let Some(a) = &assignee {
        let a = (!a.eq_ignore_ascii_case("unassigned")).then_some(a.as_str());
        engine.assign(key, a).await.map_err(|e| e.to_string())?;
        done.push("assignee".to_string());
    }
    if let Some(s) = &status {
        let options = TransitionOptions {
            comment: comment.clone(),
            ..Default::default()
        };
        engine
            .transition(key, s, options)
            .await
            .map_err(|e| e.to_string())?;
        done.push(format!("status {}", engine.status_name(s)));
    }
    if let Some(c) = comment.as_deref().filter(|_| status.is_none()) {
        engine
            .add_comment(key, c)
            .await
            .map_err(|e| e.to_string())?;
        done.push("comment".to_string());
    }
    Ok(if done.is_empty() {
        "nothing to change".into()
    } else {
        format!("updated {}", done.join(", "))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_with_quotes_commas_and_every_line_ending() {
        let text = "update,Status,Comment\r\nVULN-1,Resolved-Remediated,\"fixed, \"\"really\"\"\nsee KB\"\rVULN-2,,\n\n";
        let r = parse_csv(text);
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].cells, ["update", "Status", "Comment"]);
        assert_eq!(
            r[1].cells,
            ["VULN-1", "Resolved-Remediated", "fixed, \"really\"\nsee KB"]
        );
        assert_eq!(r[1].line, 2);
        assert_eq!(r[2].cells, ["VULN-2", "", ""]);
        assert_eq!(r[2].line, 4);
    }

    #[test]
    fn headers_are_recognised_by_their_command() {
        assert_eq!(command_of("Update"), Some("update"));
        assert_eq!(command_of("delete tickets"), Some("delete"));
        assert_eq!(command_of("VULN-1"), None);
    }

    #[test]
    fn file_names_cannot_leave_the_folder() {
        let dir = std::env::temp_dir();
        for bad in ["../etc/passwd", "a/b.csv", "..", ""] {
            assert!(read_files(&dir, &[bad.to_string()]).is_err(), "{bad}");
        }
    }
}

//! Logging and tracing set-up for every binary.
//!
//! Log lines keep the original's shape, because operators read job IDs from them:
//!
//! ```text
//! 2020-04-21 17:18:30 | [INFO] [TicketingJob:NORTON:<JobHistory ID>] - Ticket created for vulnerability
//! 2020-04-21 17:18:31 | [ERROR] - Job Runner: Error while retrieving job queue - [connection refused]
//! ```
//!
//! Times are UTC. The job part comes from the enclosing `job` span's fields
//! `job`, `org` and `job_id` ([`job_span`]); an `error` field on the event is
//! appended as ` - [error]`; other fields follow the text as `key=value`. Colour
//! codes appear only when writing to a terminal (or `AEGIS_LOG_COLOR=always`).
//! `AEGIS_LOG_FORMAT=json` writes one JSON object per line instead.
//!
//! Optionally (`AEGIS_LOG_TO_DB`) job log lines of level INFO and above also go to
//! the `Logs` table, in batches, without the runner's heartbeat lines (events with
//! target [`HEARTBEAT_TARGET`]).
//!
//! Traces go to an OTLP endpoint when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.

use std::fmt::{self, Write as _};
use std::io::IsTerminal;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_otlp::WithExportConfig;
use sqlx::MySqlPool;
use tokio::sync::mpsc;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{LogColor, LogFormat, Settings};

/// Target of the runner's periodic idle lines; they are never written to `Logs`.
pub const HEARTBEAT_TARGET: &str = "aegis::heartbeat";

/// The span every job runs in. Its fields decorate every log line inside it.
/// `org` may be recorded later with `span.record("org", code)`.
#[macro_export]
macro_rules! job_span {
    ($job:expr, $org:expr, $job_id:expr) => {
        tracing::info_span!("job", job = %$job, org = %$org, job_id = %$job_id, otel.name = %format!("job {}", $job))
    };
}
pub use crate::job_span;

/// The job part of a log line, kept in the `job` span's extensions.
#[derive(Clone, Debug, Default)]
struct JobContext {
    job: String,
    org: String,
    job_id: String,
}

impl Visit for JobContext {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.set(field.name(), value.to_string());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.set(field.name(), format!("{value:?}"));
    }
}

impl JobContext {
    fn set(&mut self, name: &str, value: String) {
        match name {
            "job" => self.job = value,
            "org" => self.org = value,
            "job_id" => self.job_id = value,
            _ => {}
        }
    }
}

/// Records the `job`, `org` and `job_id` fields of spans into their extensions.
struct JobContextLayer;

impl<S> Layer<S> for JobContextLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: Context<'_, S>,
    ) {
        if attrs.metadata().name() != "job" {
            return;
        }
        let mut jc = JobContext::default();
        attrs.record(&mut jc);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(jc);
        }
    }

    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        ctx: Context<'_, S>,
    ) {
        if let Some(span) = ctx.span(id) {
            let mut ext = span.extensions_mut();
            if let Some(jc) = ext.get_mut::<JobContext>() {
                values.record(jc);
            }
        }
    }
}

fn job_context<S, N>(ctx: &FmtContext<'_, S, N>) -> Option<JobContext>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    let scope = ctx.event_scope()?;
    for span in scope {
        if let Some(jc) = span.extensions().get::<JobContext>() {
            return Some(jc.clone());
        }
    }
    None
}

/// The text, error and other fields of one event.
#[derive(Default)]
struct EventFields {
    message: String,
    error: Option<String>,
    other: Vec<(String, String)>,
}

impl Visit for EventFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.message = value.to_string(),
            "error" => self.error = Some(value.to_string()),
            name => self.other.push((name.to_string(), value.to_string())),
        }
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        let mut text = value.to_string();
        let mut source = value.source();
        while let Some(s) = source {
            let _ = write!(text, ": {s}");
            source = s.source();
        }
        self.record_str(field, &text);
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.record_str(field, &format!("{value:?}"));
    }
}

impl EventFields {
    fn of(event: &Event<'_>) -> Self {
        let mut f = EventFields::default();
        event.record(&mut f);
        f
    }

    /// The text followed by `key=value` pairs (log.* fields from the `log` bridge dropped).
    fn text(&self) -> String {
        let mut text = self.message.clone();
        for (k, v) in &self.other {
            if k.starts_with("log.") {
                continue;
            }
            let _ = write!(text, " {k}={v}");
        }
        text
    }
}

fn level_word(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "ERROR",
        Level::WARN => "WARN",
        Level::INFO => "INFO",
        Level::DEBUG => "DEBUG",
        Level::TRACE => "TRACE",
    }
}

fn level_colour(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "\x1b[0;31m",
        Level::WARN => "\x1b[1;33m",
        Level::INFO => "\x1b[0;32m",
        _ => "\x1b[0;36m",
    }
}

/// Formats one line in the original's shape (or JSON).
pub struct AegisFormat {
    format: LogFormat,
}

/// Renders one text line; shared by the formatter and its tests.
fn render_line(
    out: &mut String,
    time: chrono::DateTime<chrono::Utc>,
    level: &Level,
    ansi: bool,
    job: Option<&JobContext>,
    fields: &EventFields,
) {
    let _ = write!(out, "{} | [", time.format("%Y-%m-%d %H:%M:%S"));
    if ansi {
        let _ = write!(out, "{}{}\x1b[0m", level_colour(level), level_word(level));
    } else {
        out.push_str(level_word(level));
    }
    out.push(']');
    if let Some(jc) = job {
        let _ = write!(out, " [{}:{}:{}]", jc.job, jc.org, jc.job_id);
    }
    let _ = write!(out, " - {}", fields.text());
    if let Some(e) = &fields.error {
        if !e.is_empty() {
            let _ = write!(out, " - [{e}]");
        }
    }
}

impl<S, N> FormatEvent<S, N> for AegisFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let fields = EventFields::of(event);
        let job = job_context(ctx);
        let now = chrono::Utc::now();
        let level = event.metadata().level();
        match self.format {
            LogFormat::Text => {
                let mut line = String::with_capacity(160);
                render_line(
                    &mut line,
                    now,
                    level,
                    writer.has_ansi_escapes(),
                    job.as_ref(),
                    &fields,
                );
                writeln!(writer, "{line}")
            }
            LogFormat::Json => {
                let mut obj = serde_json::Map::new();
                obj.insert(
                    "time".into(),
                    now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                        .into(),
                );
                obj.insert("level".into(), level_word(level).into());
                if let Some(jc) = job {
                    obj.insert("job".into(), jc.job.into());
                    obj.insert("org".into(), jc.org.into());
                    obj.insert("job_id".into(), jc.job_id.into());
                }
                obj.insert("target".into(), event.metadata().target().into());
                obj.insert("message".into(), fields.message.clone().into());
                if let Some(e) = &fields.error {
                    obj.insert("error".into(), e.clone().into());
                }
                for (k, v) in &fields.other {
                    obj.insert(k.clone(), v.clone().into());
                }
                writeln!(writer, "{}", serde_json::Value::Object(obj))
            }
        }
    }
}

/// One row for the `Logs` table.
#[derive(Debug)]
struct LogRow {
    type_id: i32,
    text: String,
    error: Option<String>,
    job_id: Option<String>,
    time: chrono::DateTime<chrono::Utc>,
}

/// Sends job log lines to a background writer for the `Logs` table. Lines are
/// dropped (and counted) rather than blocking a job when the writer falls behind.
struct LogsTableLayer {
    tx: mpsc::Sender<LogRow>,
}

impl<S> Layer<S> for LogsTableLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let meta = event.metadata();
        if *meta.level() > Level::INFO || meta.target() == HEARTBEAT_TARGET {
            return;
        }
        let job_id = ctx.event_scope(event).and_then(|scope| {
            scope.into_iter().find_map(|span| {
                span.extensions()
                    .get::<JobContext>()
                    .map(|jc| jc.job_id.clone())
            })
        });
        let fields = EventFields::of(event);
        let row = LogRow {
            type_id: match *meta.level() {
                Level::ERROR => 2,
                Level::WARN => 1,
                _ => 0,
            },
            text: fields.text(),
            error: fields.error,
            job_id,
            time: chrono::Utc::now(),
        };
        if self.tx.try_send(row).is_err() {
            crate::metrics::LOG_LINES_DROPPED.inc();
        }
    }
}

/// Keeps telemetry alive; flushes traces and the `Logs` writer when shut down.
pub struct Telemetry {
    provider: Option<opentelemetry_sdk::trace::TracerProvider>,
    logs_rx: Option<mpsc::Receiver<LogRow>>,
}

impl Telemetry {
    /// Starts writing queued job log lines into `Logs` (when `AEGIS_LOG_TO_DB` is on).
    pub fn attach_database(&mut self, pool: MySqlPool) {
        if let Some(mut rx) = self.logs_rx.take() {
            tokio::spawn(async move {
                let mut batch = Vec::with_capacity(256);
                while rx.recv_many(&mut batch, 256).await > 0 {
                    let mut qb = sqlx::QueryBuilder::<sqlx::MySql>::new(
                        "INSERT INTO Logs (TypeId, Log, Error, JobHistoryID, CreateDate) ",
                    );
                    qb.push_values(batch.drain(..), |mut b, r| {
                        b.push_bind(r.type_id)
                            .push_bind(r.text)
                            .push_bind(r.error)
                            .push_bind(r.job_id)
                            .push_bind(r.time);
                    });
                    if let Err(e) = qb.build().execute(&pool).await {
                        // Not logged through tracing: that would feed the same writer.
                        eprintln!("Logs table writer: insert failed: {e}");
                    }
                }
            });
        }
    }

    /// Flushes pending spans to the OTLP endpoint.
    pub fn shutdown(&mut self) {
        if let Some(p) = self.provider.take() {
            if let Err(e) = p.shutdown() {
                eprintln!("OpenTelemetry shutdown: {e}");
            }
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Installs the global subscriber: the line format, `RUST_LOG` filtering
/// (default `info`), the optional `Logs` sink and the optional OTLP exporter.
pub fn init(settings: &Settings, service_name: &str) -> Result<Telemetry, String> {
    let ansi = match settings.log_color {
        LogColor::Always => true,
        LogColor::Never => false,
        LogColor::Auto => std::io::stdout().is_terminal() && settings.log_format == LogFormat::Text,
    };
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| {
            EnvFilter::try_new("info,sqlx=warn,lapin=warn,h2=warn,hyper=warn,reqwest=warn")
        })
        .map_err(|e| format!("RUST_LOG: {e}"))?;
    let fmt_layer = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .event_format(AegisFormat {
            format: settings.log_format,
        });

    let (logs_layer, logs_rx) = if settings.log_to_db {
        let (tx, rx) = mpsc::channel(10_000);
        (Some(LogsTableLayer { tx }), Some(rx))
    } else {
        (None, None)
    };

    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let provider = match &settings.otlp_endpoint {
        Some(endpoint) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
                .build()
                .map_err(|e| {
                    format!("OTEL_EXPORTER_OTLP_ENDPOINT: cannot build the OTLP exporter: {e}")
                })?;
            let provider = opentelemetry_sdk::trace::TracerProvider::builder()
                .with_batch_exporter(exporter, opentelemetry_sdk::runtime::Tokio)
                .with_resource(opentelemetry_sdk::Resource::new([KeyValue::new(
                    "service.name",
                    std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| service_name.to_string()),
                )]))
                .build();
            opentelemetry::global::set_tracer_provider(provider.clone());
            Some(provider)
        }
        None => None,
    };
    let otel_layer = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer(service_name.to_string())));

    tracing_subscriber::registry()
        .with(JobContextLayer)
        .with(otel_layer)
        .with(logs_layer)
        .with(fmt_layer.with_filter(filter))
        .try_init()
        .map_err(|e| format!("cannot install the log subscriber: {e}"))?;
    Ok(Telemetry { provider, logs_rx })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn job_lines_have_the_original_shape() {
        let t = chrono::Utc
            .with_ymd_and_hms(2020, 4, 21, 17, 18, 30)
            .single()
            .expect("valid");
        let jc = JobContext {
            job: "TicketingJob".into(),
            org: "NORTON".into(),
            job_id: "AAAAAAA-AAAA".into(),
        };
        let fields = EventFields {
            message: "Ticket created for vulnerability".into(),
            ..Default::default()
        };
        let mut line = String::new();
        render_line(&mut line, t, &Level::INFO, false, Some(&jc), &fields);
        assert_eq!(
            line,
            "2020-04-21 17:18:30 | [INFO] [TicketingJob:NORTON:AAAAAAA-AAAA] - Ticket created for vulnerability"
        );
    }

    #[test]
    fn errors_are_appended_and_colour_only_when_asked() {
        let t = chrono::Utc
            .with_ymd_and_hms(2020, 4, 21, 17, 18, 30)
            .single()
            .expect("valid");
        let fields = EventFields {
            message: "Job Runner: Error while retrieving job queue".into(),
            error: Some("connection refused".into()),
            other: vec![("rows".into(), "3".into())],
        };
        let mut plain = String::new();
        render_line(&mut plain, t, &Level::ERROR, false, None, &fields);
        assert_eq!(
            plain,
            "2020-04-21 17:18:30 | [ERROR] - Job Runner: Error while retrieving job queue rows=3 - [connection refused]"
        );
        assert!(!plain.contains('\x1b'));
        let mut coloured = String::new();
        render_line(&mut coloured, t, &Level::ERROR, true, None, &fields);
        assert!(coloured.contains("\x1b[0;31mERROR\x1b[0m"));
    }
}

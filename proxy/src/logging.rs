//! The proxy binary's log lines: plain (default) or JSON (`--log-format json`), one event a
//! line on stderr, each line of a worker carrying `worker=<index>` (the supervisor's carry
//! none), so that the lines of N processes sharing one stderr can be told apart. Colour only
//! when stderr is a terminal: a redirected log holds no escape codes.

use std::fmt;
use std::io::IsTerminal;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `TIME LEVEL worker=N target: message key=value ...`
    Plain,
    /// One JSON object a line: `timestamp`, `level`, `target`, `worker`, `message`, fields.
    Json,
}

/// Install the subscriber: `RUST_LOG` filter (default `info`), `format`, and the worker
/// index on every line of a worker.
pub fn init(format: LogFormat, worker: Option<usize>) {
    let ansi = format == LogFormat::Plain && std::io::stderr().is_terminal();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .event_format(Lines { format, worker })
        .init();
}

struct Lines {
    format: LogFormat,
    worker: Option<usize>,
}

/// An event's fields, in order: `message` apart.
#[derive(Default)]
struct Fields {
    message: String,
    rest: Vec<(&'static str, serde_json::Value, String)>,
}

impl Visit for Fields {
    fn record_str(&mut self, f: &Field, v: &str) {
        if f.name() == "message" {
            self.message = v.to_string();
        } else {
            self.rest.push((f.name(), v.into(), format!("{v:?}")));
        }
    }
    fn record_u64(&mut self, f: &Field, v: u64) {
        self.rest.push((f.name(), v.into(), v.to_string()));
    }
    fn record_i64(&mut self, f: &Field, v: i64) {
        self.rest.push((f.name(), v.into(), v.to_string()));
    }
    fn record_bool(&mut self, f: &Field, v: bool) {
        self.rest.push((f.name(), v.into(), v.to_string()));
    }
    fn record_debug(&mut self, f: &Field, v: &dyn fmt::Debug) {
        let s = format!("{v:?}");
        if f.name() == "message" {
            self.message = s;
        } else {
            self.rest.push((f.name(), s.clone().into(), s));
        }
    }
}

impl<S, N> FormatEvent<S, N> for Lines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut fields = Fields::default();
        event.record(&mut fields);
        let mut ts = String::new();
        SystemTime.format_time(&mut Writer::new(&mut ts))?;
        // Spans around the event (root first), as `name{fields}`: context such as a
        // desktop's session id travels in them.
        let spans: Vec<String> = ctx
            .event_scope()
            .into_iter()
            .flat_map(|scope| scope.from_root())
            .map(|span| {
                let ext = span.extensions();
                match ext.get::<FormattedFields<N>>() {
                    Some(f) if !f.is_empty() => format!("{}{{{f}}}", span.name()),
                    _ => span.name().to_string(),
                }
            })
            .collect();
        match self.format {
            LogFormat::Json => {
                let mut o = serde_json::Map::new();
                o.insert("timestamp".into(), ts.into());
                o.insert("level".into(), meta.level().as_str().into());
                o.insert("target".into(), meta.target().into());
                if let Some(i) = self.worker {
                    o.insert("worker".into(), i.into());
                }
                o.insert("message".into(), fields.message.into());
                if !spans.is_empty() {
                    o.insert("spans".into(), spans.into());
                }
                for (k, v, _) in fields.rest {
                    o.insert(k.to_string(), v);
                }
                writeln!(w, "{}", serde_json::Value::Object(o))
            }
            LogFormat::Plain => {
                let level = meta.level();
                if w.has_ansi_escapes() {
                    let colour = match *level {
                        Level::ERROR => "31",
                        Level::WARN => "33",
                        Level::INFO => "32",
                        _ => "34",
                    };
                    write!(w, "{ts} \x1b[{colour}m{level:>5}\x1b[0m ")?;
                } else {
                    write!(w, "{ts} {level:>5} ")?;
                }
                if let Some(i) = self.worker {
                    write!(w, "worker={i} ")?;
                }
                for sp in &spans {
                    write!(w, "{sp}: ")?;
                }
                write!(w, "{}: {}", meta.target(), fields.message)?;
                for (k, _, v) in fields.rest {
                    write!(w, " {k}={v}")?;
                }
                writeln!(w)
            }
        }
    }
}

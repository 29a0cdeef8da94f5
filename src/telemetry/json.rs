//! JSON log lines that carry the OpenTelemetry `trace_id` and `span_id` of the span they
//! were written in, so a log line leads straight to its trace; and the text lines beside
//! them.

use std::fmt::{self, Write as _};

use serde_json::{Map, Value};
use tracing::{field::Visit, Event, Metadata};

use super::recorder::SpanContext;

/// An event's fields as JSON members (`log.*`: what the `log` bridge adds, already in the
/// line's own members).
struct Fields<'a>(&'a mut Map<String, Value>);

impl Fields<'_> {
    fn put(&mut self, field: &tracing::field::Field, value: Value) {
        if !field.name().starts_with("log.") {
            self.0.insert(field.name().to_string(), value);
        }
    }
}

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
        self.put(field, Value::String(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.put(field, Value::from(value));
    }
    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.put(field, Value::from(value));
    }
    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.put(field, Value::from(value));
    }
    fn record_f64(&mut self, field: &tracing::field::Field, value: f64) {
        self.put(field, Value::from(value));
    }
    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        self.put(field, Value::from(value));
    }
}

/// A JSON log line: time, level, target, the event's fields and, written in a span, its
/// name and ids.
pub fn line(
    event: &Event<'_>,
    meta: &Metadata<'_>,
    span: Option<(&str, Option<SpanContext>)>,
) -> String {
    let mut line = Map::new();
    line.insert(
        "timestamp".into(),
        Value::from(humantime_rfc3339(std::time::SystemTime::now())),
    );
    line.insert("level".into(), Value::from(meta.level().as_str()));
    line.insert("target".into(), Value::from(meta.target()));
    event.record(&mut Fields(&mut line));
    if let Some((name, cx)) = span {
        line.insert("span".into(), Value::from(name));
        if let Some(cx) = cx {
            line.insert("trace_id".into(), Value::from(cx.trace_id_hex()));
            line.insert(
                "span_id".into(),
                Value::from(format!("{:016x}", cx.span_id)),
            );
        }
    }
    let mut text = serde_json::to_string(&line).unwrap_or_default();
    text.push('\n');
    text
}

/// A text log line: `<time> <LEVEL> <span>:<span>: <message> <key>=<value>…`, strings
/// quoted.
pub fn text_line(event: &Event<'_>, meta: &Metadata<'_>, scope: &str) -> String {
    struct Text(String, String);
    impl Visit for Text {
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
            match field.name() {
                "message" => {
                    let _ = write!(self.0, "{value:?}");
                }
                n if n.starts_with("log.") => {}
                n => {
                    let _ = write!(self.1, " {n}={value:?}");
                }
            }
        }
        fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
            if field.name() == "message" {
                self.0.push_str(value);
            } else {
                self.record_debug(field, &value);
            }
        }
    }
    let mut fields = Text(String::new(), String::new());
    event.record(&mut fields);
    let mut line = humantime_rfc3339(std::time::SystemTime::now());
    let _ = write!(line, " {:>5} ", meta.level().as_str());
    if !scope.is_empty() {
        line.push_str(scope);
        line.push(' ');
    }
    line.push_str(&fields.0);
    line.push_str(&fields.1);
    line.push('\n');
    line
}

/// RFC 3339 UTC timestamp with microseconds, without pulling in a date crate.
fn humantime_rfc3339(t: std::time::SystemTime) -> String {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (h, m, s) = (rem / 3_600, rem % 3_600 / 60, rem % 60);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{:06}Z",
        d.subsec_micros()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_micros(1_700_000_000_123_456);
        assert_eq!(humantime_rfc3339(t), "2023-11-14T22:13:20.123456Z");
    }
}

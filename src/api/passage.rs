//! A request's passage through the edge, whichever server read it: its span (continuing
//! the client's trace), its clock and the time its agent calls took; closed on the answer
//! with the status on the span, the log line, the request series, `x-trace-id` and
//! `Server-Timing`.

use std::{sync::Arc, time::Duration};

use poem::http::Method;

use super::{errors, AppState};
use crate::{context::AgentTime, metrics::routes};

/// Header names set on every answer, made once (a name given as a string that is not a
/// standard header is copied into a new buffer at each insert).
static SERVER_TIMING: poem::http::HeaderName = poem::http::HeaderName::from_static("server-timing");
static X_TRACE_ID: poem::http::HeaderName = poem::http::HeaderName::from_static("x-trace-id");

/// One request's way through the edge, whichever server read it: its span (continuing the
/// client's trace), its clock and the time its agent calls took; closed on the answer.
pub(super) struct Passage {
    started: std::time::Instant,
    method: Method,
    route: &'static str,
    pub(super) span: tracing::Span,
    pub(super) agent_time: Arc<AgentTime>,
}

/// What a closed passage adds to the answer.
pub(super) struct Closed {
    /// `x-trace-id` (when spans are exported).
    pub(super) trace_id: Option<String>,
    /// `Server-Timing`.
    pub(super) timing: String,
}

impl Passage {
    pub(super) fn open(method: Method, path: &str, traceparent: Option<&str>) -> Self {
        let route = routes::route_template(path);
        let span = tracing::info_span!(
            "request",
            otel.name = routes::span_name(method.as_str(), route).as_ref(),
            otel.kind = "server",
            http.request.method = method.as_str(),
            http.route = route,
        );
        crate::telemetry::continue_trace_from(&span, traceparent);
        Passage {
            started: std::time::Instant::now(),
            method,
            route,
            span,
            agent_time: Arc::new(AgentTime::default()),
        }
    }

    /// Records the answer's status on the span, its log line and its request series.
    pub(super) fn close(self, state: &AppState, status: u16) -> Closed {
        let span = &self.span;
        // One look-up of the span records the status and gives its ids (`x-trace-id`).
        let recorded = if status >= 500 {
            crate::record!(
                span,
                http.response.status_code = status,
                otel.status_code = "ERROR"
            )
        } else {
            crate::record!(span, http.response.status_code = status)
        };
        let trace_id = recorded
            .filter(|_| state.tracing_enabled)
            .map(|cx| cx.trace_id_hex());
        let elapsed = self.started.elapsed();
        let (waited, agent_calls) = self.agent_time.total();
        let overhead = elapsed.saturating_sub(waited);
        let timing = server_timing(overhead, (agent_calls > 0).then_some(waited));
        let (route, method) = (self.route, &self.method);
        // In the request's span without entering it (an event its logs let through names it).
        tracing::info!(
            parent: span,
            route,
            method = %method,
            status,
            latency_ms = elapsed.as_secs_f64() * 1000.0,
            "request completed"
        );
        let series = state.metrics.request_series(route, method, status);
        series.requests.inc();
        series.duration.observe(elapsed.as_secs_f64());
        series.overhead.observe(overhead.as_secs_f64());
        Closed { trace_id, timing }
    }

    /// Closes the passage on a poem answer: `Allow` on a 405, `x-trace-id` (and the trace
    /// id in an error's body), `Server-Timing`.
    pub(super) async fn finish(self, state: &AppState, mut resp: poem::Response) -> poem::Response {
        let status = resp.status().as_u16();
        if status == 405 {
            if let Ok(v) = poem::http::HeaderValue::from_str(routes::allowed_methods(self.route)) {
                resp.headers_mut().insert(poem::http::header::ALLOW, v);
            }
        }
        let Closed { trace_id, timing } = self.close(state, status);
        if let Some(id) = &trace_id {
            if let Ok(v) = poem::http::HeaderValue::from_str(id) {
                resp.headers_mut().insert(X_TRACE_ID.clone(), v);
            }
            if status >= 400 {
                resp = Box::pin(errors::with_trace_id(resp, id)).await;
            }
        }
        // The string's own buffer becomes the value (a parse would copy it).
        if let Ok(v) = poem::http::HeaderValue::try_from(timing) {
            resp.headers_mut().insert(SERVER_TIMING.clone(), v);
        }
        resp
    }
}

/// `Server-Timing` (the header browsers' devtools show): `gateway` is the time the request
/// spent outside agent calls, `agent` the time at least one agent call was in flight, in ms.
fn server_timing(gateway: Duration, agent: Option<Duration>) -> String {
    // Milliseconds with three decimals, rounded to the microsecond, in integers (through
    // `fmt`, the two numbers cost ~950 instructions a request; `itoa` a tenth of that).
    let ms = |s: &mut String, d: Duration| {
        // In u64: 584,000 years of microseconds.
        let us = u64::try_from((d.as_nanos() + 500) / 1000).unwrap_or(u64::MAX);
        s.push_str(itoa::Buffer::new().format(us / 1000));
        s.push('.');
        let frac = us % 1000;
        for digit in [frac / 100, frac / 10 % 10, frac % 10] {
            s.push(char::from(b'0' + digit as u8));
        }
    };
    let mut s = String::with_capacity(48);
    s.push_str("gateway;dur=");
    ms(&mut s, gateway);
    if let Some(a) = agent {
        s.push_str(", agent;dur=");
        ms(&mut s, a);
    }
    s
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn server_timing_is_in_milliseconds_with_three_decimals() {
        let t = |us| Duration::from_micros(us);
        assert_eq!(super::server_timing(t(1234), None), "gateway;dur=1.234");
        assert_eq!(
            super::server_timing(t(5), Some(t(12_000_070))),
            "gateway;dur=0.005, agent;dur=12000.070"
        );
        assert_eq!(
            super::server_timing(Duration::from_nanos(1_999_600), None),
            "gateway;dur=2.000"
        );
    }
}

//! The agent protocol: plain-HTTP agents over the per-thread pool of `pool.rs` (connections
//! driven by the calling task), `https://` ones over reqwest clients, one per thread.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use serde_json::Value;
use thread_local::ThreadLocal;

use super::{
    pool::{retry_after, Target},
    AgentReply, AgentRequest, AgentTransport, CallError,
};

pub use super::pool::MAX_AGENT_BODY;

/// The header that tells an agent how long the gateway will wait for this answer, in
/// whole milliseconds (the time left before the request's deadline, at most the per-try
/// timeout): work it does past that, nobody reads. Clients may send it to the gateway too.
pub const TIMEOUT_HEADER: &str = "x-request-timeout-ms";

/// `d` in whole milliseconds, at least 1 (a call is not started with nothing left).
fn timeout_ms(d: Duration) -> u64 {
    (d.as_millis() as u64).max(1)
}

/// Endpoints whose allow-list verdict and parsed URL are remembered (graph-controlled, so
/// few; past this many, an endpoint is checked and parsed at each call).
const MEMO_MAX: usize = 4096;

/// A parsed agent endpoint; `plain` for `http://` ones, which go through the pool.
struct Endpoint {
    url: reqwest::Url,
    plain: Option<Target>,
}

impl Endpoint {
    fn parse(url: &str) -> Option<Endpoint> {
        let url = reqwest::Url::parse(url).ok()?;
        Some(Endpoint {
            plain: Target::of(&url),
            url,
        })
    }
}

pub struct HttpAgents {
    /// Each endpoint called: where its calls go when `hosts` allows it, `None` when not.
    urls: crate::NameMap<String, Option<Arc<Endpoint>>>,
    /// Plain-HTTP agents: connections per thread, driven by the calling task.
    pool: super::pool::AgentPool,
    /// Idle connections kept per agent host, per thread.
    pool_max: usize,
    clients: ThreadLocal<reqwest::Client>,
    hosts: super::endpoint::HostGuard,
}

impl HttpAgents {
    pub fn new(pool_max: usize, hosts: super::endpoint::HostGuard) -> Result<Self, reqwest::Error> {
        let agents = HttpAgents {
            urls: Default::default(),
            pool: super::pool::AgentPool::new(pool_max),
            pool_max,
            clients: ThreadLocal::new(),
            hosts,
        };
        // A setting the client cannot be built with shows at start-up, not at the first call.
        agents.client()?;
        Ok(agents)
    }

    /// This thread's client (built on its first call).
    fn client(&self) -> Result<&reqwest::Client, reqwest::Error> {
        self.clients.get_or_try(|| {
            reqwest::Client::builder()
                .pool_max_idle_per_host(self.pool_max)
                .pool_idle_timeout(Duration::from_secs(60))
                .redirect(reqwest::redirect::Policy::none())
                .tcp_nodelay(true)
                .connect_timeout(Duration::from_secs(2))
                .user_agent(concat!("myriad-orchestrator/", env!("CARGO_PKG_VERSION")))
                .build()
        })
    }

    /// Where calls to `endpoint` go, if the allow-list lets them go there.
    fn allowed(&self, endpoint: &str) -> Option<Arc<Endpoint>> {
        if let Some(known) = self.urls.get(endpoint) {
            return known.clone();
        }
        let verdict = self
            .hosts
            .allows(endpoint)
            .then(|| Endpoint::parse(endpoint).map(Arc::new))
            .flatten();
        if self.urls.len() < MEMO_MAX {
            self.urls.insert(endpoint.to_string(), verdict.clone());
        }
        verdict
    }

    /// POSTs `body` to `endpoint` and reads its answer (status, `Retry-After`, body); the
    /// agent is told it has `timeout` to answer ([`TIMEOUT_HEADER`]).
    async fn exchange(
        &self,
        endpoint: &Endpoint,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<(u16, Option<Duration>, bytes::Bytes), CallError> {
        let mut digits = itoa::Buffer::new();
        let wait_ms = digits.format(timeout_ms(timeout));
        if let Some(target) = &endpoint.plain {
            let traceparent = crate::telemetry::current_traceparent();
            let mut headers = [(TIMEOUT_HEADER, wait_ms), ("", "")];
            let n = match &traceparent {
                Some(tp) => {
                    headers[1] = ("traceparent", tp.as_str());
                    2
                }
                None => 1,
            };
            let answer = self.pool.post(target, &headers[..n], &body).await?;
            return Ok((answer.status, answer.retry_after, answer.body));
        }
        let mut headers = reqwest::header::HeaderMap::new();
        crate::telemetry::inject_current(&mut headers);
        headers.insert(
            TIMEOUT_HEADER,
            reqwest::header::HeaderValue::from_str(wait_ms).expect("digits"),
        );
        headers.insert(
            reqwest::header::CONTENT_TYPE,
            reqwest::header::HeaderValue::from_static("application/json"),
        );
        let client = self.client().map_err(|_| CallError::Connect)?;
        let resp = client
            .post(endpoint.url.clone())
            .headers(headers)
            .body(body)
            .send()
            .await
            .map_err(classify)?;
        let status = resp.status().as_u16();
        let wait = retry_after(resp.headers().get(reqwest::header::RETRY_AFTER));
        if let Some(len) = resp.content_length() {
            if len as usize > MAX_AGENT_BODY {
                return Err(CallError::InvalidBody);
            }
        }
        let mut resp = resp;
        let mut bytes = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(classify)? {
            if bytes.len() + chunk.len() > MAX_AGENT_BODY {
                return Err(CallError::InvalidBody);
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok((status, wait, bytes.into()))
    }
}

fn classify(err: reqwest::Error) -> CallError {
    if err.is_timeout() {
        CallError::Timeout
    } else if err.is_connect() {
        CallError::Connect
    } else {
        CallError::Transport
    }
}

#[async_trait]
impl AgentTransport for HttpAgents {
    async fn call(
        &self,
        endpoint: &str,
        req: &AgentRequest<'_>,
        timeout: Duration,
    ) -> Result<AgentReply, CallError> {
        // Checked again at call time: the graph may have changed since registration.
        let Some(target) = self.allowed(endpoint) else {
            tracing::warn!(
                endpoint,
                "blocked a call to a host outside AGENT_ALLOWED_HOSTS"
            );
            return Err(CallError::Blocked);
        };
        let mut body = Vec::with_capacity(256);
        serde_json::to_writer(&mut body, req).map_err(|_| CallError::InvalidBody)?;
        let (status, wait, answer) =
            tokio::time::timeout(timeout, self.exchange(&target, body, timeout))
                .await
                .map_err(|_| CallError::Timeout)??;
        // A refusal's body passes through whole, when it is a JSON object.
        let object = || match serde_json::from_slice(&answer) {
            Ok(Value::Object(map)) => Some(map),
            _ => None,
        };
        match status {
            200..=299 => AgentReply::parse(&answer)
                .filter(|reply| reply.body.get("status").is_some_and(Value::is_string))
                .ok_or(CallError::InvalidBody),
            429 => Err(CallError::Throttled {
                retry_after: wait,
                body: object(),
            }),
            status => Err(CallError::Status {
                status,
                body: object(),
            }),
        }
    }

    async fn post_json(
        &self,
        url: &str,
        body: &Value,
        timeout: Duration,
    ) -> Result<Value, CallError> {
        let endpoint = Endpoint::parse(url).ok_or(CallError::Transport)?;
        let body = serde_json::to_vec(body).map_err(|_| CallError::InvalidBody)?;
        let (status, _, answer) =
            tokio::time::timeout(timeout, self.exchange(&endpoint, body, timeout))
                .await
                .map_err(|_| CallError::Timeout)??;
        match (status, serde_json::from_slice(&answer).ok()) {
            (200..=299, Some(v)) => Ok(v),
            (200..=299, None) => Err(CallError::InvalidBody),
            (status, _) => Err(CallError::Status { status, body: None }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let h = |s: &str| http::HeaderValue::from_str(s).unwrap();
        assert_eq!(retry_after(Some(&h("2"))), Some(Duration::from_secs(2)));
        assert_eq!(retry_after(None), None);
        assert_eq!(retry_after(Some(&h("soon"))), None);
        assert_eq!(retry_after(Some(&h("-1"))), None);
        let in_5s = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(5));
        let wait = retry_after(Some(&h(&in_5s))).unwrap();
        assert!(wait > Duration::from_secs(3) && wait <= Duration::from_secs(5));
        // A date already past: no wait.
        assert_eq!(
            retry_after(Some(&h("Sun, 06 Nov 1994 08:49:37 GMT"))),
            Some(Duration::ZERO)
        );
    }
}

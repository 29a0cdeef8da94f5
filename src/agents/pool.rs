//! HTTP/1.1 connections to agents, kept per thread (so per core under `RUNTIME=per_core`)
//! and driven by the task of the request that uses them: an agent call is written, and its
//! answer read, by the request's own task — no connection task, no channel, no wake-up of
//! another task or core. A connection rests in its thread's pool between calls (at most
//! `max_idle` per host, none older than [`IDLE_FOR`]); one the agent closed meanwhile is
//! noticed when it is taken (its end of stream is read) and replaced.
//!
//! Plain `http://` only; `https://` endpoints go through the TLS client (`http.rs`).

use std::{
    cell::RefCell,
    collections::HashMap,
    future::{poll_fn, Future},
    pin::{pin, Pin},
    task::Poll,
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::{self, Connection, SendRequest};
use hyper_util::rt::TokioIo;
use thread_local::ThreadLocal;
use tokio::{net::TcpStream, time::Instant};

use super::CallError;

/// Largest agent answer read; anything bigger is an invalid answer, not an OOM.
pub const MAX_AGENT_BODY: usize = 1024 * 1024;
/// A connection idle longer than this is closed rather than reused.
pub const IDLE_FOR: Duration = Duration::from_secs(60);
/// How long opening a connection may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

type Driver = Pin<Box<Connection<TokioIo<TcpStream>, Full<Bytes>>>>;

struct Conn {
    sender: SendRequest<Full<Bytes>>,
    driver: Driver,
    idle_since: Instant,
}

/// Why a connection could not carry a call.
enum Broken {
    /// It ended (closed by the agent) or failed before the call was written: another
    /// connection may carry it.
    Unused,
    /// The call failed under way.
    During(CallError),
}

fn failed(e: &hyper::Error) -> CallError {
    if e.is_parse() || e.is_parse_status() {
        CallError::InvalidBody
    } else {
        CallError::Transport
    }
}

/// Runs `fut` while driving the connection; `Err` if the connection ends first.
async fn driving<F: Future>(
    driver: &mut Driver,
    fut: F,
) -> Result<F::Output, Option<hyper::Error>> {
    let mut fut = pin!(fut);
    poll_fn(|cx| {
        let ended = driver.as_mut().poll(cx);
        if let Poll::Ready(out) = fut.as_mut().poll(cx) {
            return Poll::Ready(Ok(out));
        }
        match ended {
            Poll::Ready(Ok(())) => Poll::Ready(Err(None)),
            Poll::Ready(Err(e)) => Poll::Ready(Err(Some(e))),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

/// Idle connections of one thread, by `host:port`.
type Idle = RefCell<HashMap<String, Vec<Conn>>>;

pub struct AgentPool {
    idle: ThreadLocal<Idle>,
    max_idle: usize,
}

/// Where a plain-HTTP endpoint's calls go, worked out once from its URL.
#[derive(Debug, Clone)]
pub struct Target {
    /// `host:port` to connect to (the pool's key).
    host: String,
    /// Path and query of the request line.
    path: String,
    /// The `Host` header.
    authority: String,
}

impl Target {
    /// The target of an `http://` URL with a host; `None` for any other.
    pub fn of(url: &reqwest::Url) -> Option<Target> {
        if url.scheme() != "http" {
            return None;
        }
        let name = url.host_str()?;
        let port = url.port_or_known_default()?;
        Some(Target {
            host: format!("{name}:{port}"),
            path: match url.query() {
                Some(q) => format!("{}?{q}", url.path()),
                None => url.path().to_string(),
            },
            authority: match url.port() {
                Some(p) => format!("{name}:{p}"),
                None => name.to_string(),
            },
        })
    }
}

/// The wait an agent's `Retry-After` asks for: delta-seconds or an HTTP date (RFC 9110);
/// `None` when absent or neither.
pub fn retry_after(value: Option<&http::HeaderValue>) -> Option<Duration> {
    let v = value?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

/// One agent's answer: status and body.
pub struct Answer {
    pub status: u16,
    /// What its `Retry-After` asks for, if it sent one.
    pub retry_after: Option<Duration>,
    pub body: Bytes,
}

impl AgentPool {
    pub fn new(max_idle: usize) -> Self {
        AgentPool {
            idle: ThreadLocal::new(),
            max_idle,
        }
    }

    fn take(&self, host: &str) -> Option<Conn> {
        let idle = self.idle.get_or_default();
        let mut idle = idle.borrow_mut();
        let conns = idle.get_mut(host)?;
        let now = Instant::now();
        while let Some(conn) = conns.pop() {
            if now.saturating_duration_since(conn.idle_since) < IDLE_FOR {
                return Some(conn);
            }
        }
        None
    }

    fn give_back(&self, host: &str, mut conn: Conn) {
        let idle = self.idle.get_or_default();
        let mut idle = idle.borrow_mut();
        if let Some(conns) = idle.get_mut(host) {
            if conns.len() < self.max_idle {
                conn.idle_since = Instant::now();
                conns.push(conn);
            }
            return;
        }
        conn.idle_since = Instant::now();
        idle.insert(host.to_string(), vec![conn]);
    }

    async fn connect(host: &str) -> Result<Conn, CallError> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(host))
            .await
            .map_err(|_| CallError::Connect)?
            .map_err(|_| CallError::Connect)?;
        let _ = stream.set_nodelay(true);
        let (sender, driver) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|_| CallError::Connect)?;
        Ok(Conn {
            sender,
            driver: Box::pin(driver),
            idle_since: Instant::now(),
        })
    }

    /// POSTs `body` to `target` with `headers`, on a pooled connection to its host (a new
    /// one when none is idle, or when the idle one turns out closed).
    pub async fn post(
        &self,
        target: &Target,
        headers: http::HeaderMap,
        body: Bytes,
    ) -> Result<Answer, CallError> {
        let Target {
            host,
            path,
            authority,
        } = target;
        // An idle connection may have been closed by the agent since: then the call is
        // tried again on a new one (it was never written).
        loop {
            let (conn, reused) = match self.take(host) {
                Some(conn) => (conn, true),
                None => (Self::connect(host).await?, false),
            };
            let request = build(path, authority, &headers, body.clone())?;
            match exchange(conn, request).await {
                Ok((answer, conn)) => {
                    if let Some(conn) = conn {
                        self.give_back(host, conn);
                    }
                    return Ok(answer);
                }
                Err(Broken::Unused) if reused => continue,
                Err(Broken::Unused) => return Err(CallError::Transport),
                Err(Broken::During(e)) => return Err(e),
            }
        }
    }
}

fn build(
    path: &str,
    authority: &str,
    headers: &http::HeaderMap,
    body: Bytes,
) -> Result<http::Request<Full<Bytes>>, CallError> {
    let mut request = http::Request::post(path)
        .header(http::header::HOST, authority)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(
            http::header::USER_AGENT,
            concat!("myriad-orchestrator/", env!("CARGO_PKG_VERSION")),
        )
        .body(Full::new(body))
        .map_err(|_| CallError::Connect)?;
    request
        .headers_mut()
        .extend(headers.iter().map(|(k, v)| (k.clone(), v.clone())));
    Ok(request)
}

/// One request and its whole answer on `conn`; the connection back when it can carry
/// another call.
async fn exchange(
    mut conn: Conn,
    request: http::Request<Full<Bytes>>,
) -> Result<(Answer, Option<Conn>), Broken> {
    match driving(&mut conn.driver, conn.sender.ready()).await {
        Ok(Ok(())) => {}
        _ => return Err(Broken::Unused),
    }
    let sent = conn.sender.send_request(request);
    let response = match driving(&mut conn.driver, sent).await {
        Ok(Ok(response)) => response,
        Ok(Err(e)) if e.is_canceled() => return Err(Broken::Unused),
        Ok(Err(e)) | Err(Some(e)) => return Err(Broken::During(failed(&e))),
        Err(None) => return Err(Broken::Unused),
    };
    let status = response.status().as_u16();
    let retry_after = retry_after(response.headers().get(http::header::RETRY_AFTER));
    let too_long = response
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .is_some_and(|len| len > MAX_AGENT_BODY);
    if too_long {
        return Err(Broken::During(CallError::InvalidBody));
    }
    let body = Limited::new(response.into_body(), MAX_AGENT_BODY).collect();
    let body = match driving(&mut conn.driver, body).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(Broken::During(CallError::InvalidBody))
        }
        Ok(Err(_)) | Err(_) => return Err(Broken::During(CallError::Transport)),
    };
    let reusable = !conn.sender.is_closed();
    Ok((
        Answer {
            status,
            retry_after,
            body,
        },
        reusable.then_some(conn),
    ))
}

#[cfg(test)]
mod tests {
    use std::sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    };

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A minimal HTTP/1.1 server on a free port answering every request with `answer`;
    /// `close_after_each`: it closes the connection after each answer (as an agent whose
    /// keep-alive timed out), without saying so. Counts the connections it accepted.
    async fn agent(
        answer: &'static str,
        close_after_each: bool,
    ) -> (reqwest::Url, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/query", listener.local_addr().unwrap());
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        // One request: headers, then a body of Content-Length bytes.
                        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                            match socket.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                            continue;
                        };
                        let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length: "))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        while buf.len() < end + 4 + len {
                            match socket.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        buf.drain(..end + 4 + len);
                        if socket.write_all(answer.as_bytes()).await.is_err() || close_after_each {
                            return;
                        }
                    }
                });
            }
        });
        (reqwest::Url::parse(&url).unwrap(), accepted)
    }

    const OK: &str = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 20\r\n\r\n{\"status\":\"success\"}";

    async fn post(pool: &AgentPool, url: &reqwest::Url) -> Result<Answer, CallError> {
        let target = Target::of(url).expect("a plain-HTTP URL");
        pool.post(&target, http::HeaderMap::new(), Bytes::from_static(b"{}"))
            .await
    }

    #[tokio::test]
    async fn sequential_calls_share_one_connection() {
        let (url, accepted) = agent(OK, false).await;
        let pool = AgentPool::new(4);
        for _ in 0..5 {
            let answer = post(&pool, &url).await.expect("answered");
            assert_eq!(answer.status, 200);
            assert_eq!(&answer.body[..], b"{\"status\":\"success\"}");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_connection_the_agent_closed_while_idle_is_replaced_and_the_call_goes_through() {
        let (url, accepted) = agent(OK, true).await;
        let pool = AgentPool::new(4);
        for _ in 0..3 {
            post(&pool, &url)
                .await
                .expect("answered on a new connection");
            // Let the agent's close arrive before the connection is taken again.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn an_answer_over_the_limit_is_an_invalid_body() {
        let (url, _) = agent(
            "HTTP/1.1 200 OK\r\ncontent-length: 99999999\r\n\r\n{}",
            false,
        )
        .await;
        let pool = AgentPool::new(4);
        assert!(matches!(
            post(&pool, &url).await,
            Err(CallError::InvalidBody)
        ));
    }

    #[tokio::test]
    async fn nothing_listening_is_a_connect_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url =
            reqwest::Url::parse(&format!("http://{}/q", listener.local_addr().unwrap())).unwrap();
        drop(listener);
        let pool = AgentPool::new(4);
        assert!(matches!(post(&pool, &url).await, Err(CallError::Connect)));
    }
}

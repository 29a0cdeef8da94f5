//! HTTP/1.1 connections to agents, kept per thread (so per core under `RUNTIME=per_core`)
//! and used by the task of the request that calls: the request is written to the socket,
//! and the answer read from it, by the request's own task — no connection task, no
//! channel, no wake-up of another task or core, and no request or response object between
//! the bytes and the call. A connection rests in its thread's pool between calls (at most
//! `max_idle` per host, none older than [`IDLE_FOR`]); one the agent closed meanwhile is
//! noticed when it is taken (its end of stream is seen) and replaced.
//!
//! Answers are framed as RFC 9112 says: `Transfer-Encoding: chunked`, else `Content-Length`,
//! else to the end of the connection (which then is not reused); `1xx` interim answers are
//! skipped; heads are parsed by `httparse`. Plain `http://` only; `https://` endpoints go
//! through the TLS client (`http.rs`).

use std::{cell::RefCell, collections::HashMap, io::Write as _, time::Duration};

use bytes::{Buf, Bytes, BytesMut};
use thread_local::ThreadLocal;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::Instant,
};

use super::CallError;

/// Largest agent answer read; anything bigger is an invalid answer, not an OOM.
pub const MAX_AGENT_BODY: usize = 1024 * 1024;
/// Largest answer head (status line and headers) read.
const MAX_HEAD: usize = 64 * 1024;
/// Headers an answer may carry.
const MAX_HEADERS: usize = 64;
/// A connection idle longer than this is closed rather than reused.
pub const IDLE_FOR: Duration = Duration::from_secs(60);
/// How long opening a connection may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Room a connection's read buffer starts with (and keeps between calls).
const READ_ROOM: usize = 8 * 1024;
/// Room a resting connection may keep: one that read a large answer starts again small, so
/// the idle connections of a pool do not each hold the largest answer they ever read.
const KEPT_ROOM: usize = 64 * 1024;

struct Conn {
    stream: TcpStream,
    /// Bytes read and not yet consumed; its room is kept from one call to the next.
    buf: BytesMut,
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

/// Idle connections of one thread, by `host:port` (foldhash: the host is hashed twice a
/// call, taken and given back; SipHash cost ~480 instructions a call).
type Idle = RefCell<HashMap<String, Vec<Conn>, foldhash::fast::RandomState>>;

pub struct AgentPool {
    idle: ThreadLocal<Idle>,
    max_idle: usize,
}

/// Where a plain-HTTP endpoint's calls go, worked out once from its URL.
#[derive(Debug, Clone)]
pub struct Target {
    /// `host:port` to connect to (the pool's key).
    host: String,
    /// The request line and the headers every call to it carries, up to the ones a call
    /// adds.
    head: Vec<u8>,
}

impl Target {
    /// The target of an `http://` URL with a host; `None` for any other.
    pub fn of(url: &reqwest::Url) -> Option<Target> {
        if url.scheme() != "http" {
            return None;
        }
        let name = url.host_str()?;
        let port = url.port_or_known_default()?;
        let path = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_string(),
        };
        let authority = match url.port() {
            Some(p) => format!("{name}:{p}"),
            None => name.to_string(),
        };
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: {authority}\r\ncontent-type: application/json\r\n\
             user-agent: myriad-orchestrator/{}\r\n",
            env!("CARGO_PKG_VERSION")
        );
        Some(Target {
            host: format!("{name}:{port}"),
            head: head.into_bytes(),
        })
    }
}

/// The wait an agent's `Retry-After` asks for: delta-seconds or an HTTP date (RFC 9110);
/// `None` when absent or neither.
pub fn retry_after(value: Option<&http::HeaderValue>) -> Option<Duration> {
    retry_after_text(value?.to_str().ok()?)
}

fn retry_after_text(v: &str) -> Option<Duration> {
    let v = v.trim();
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
            if now.saturating_duration_since(conn.idle_since) < IDLE_FOR && conn.open() {
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
        Ok(Conn {
            stream,
            buf: BytesMut::with_capacity(READ_ROOM),
            idle_since: Instant::now(),
        })
    }

    /// POSTs `body` to `target` with `headers` (`name`, `value`) besides the target's own,
    /// on a pooled connection to its host (a new one when none is idle, or when the idle
    /// one turns out closed).
    pub async fn post(
        &self,
        target: &Target,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Answer, CallError> {
        let request = request(target, headers, body)?;
        // An idle connection may have been closed by the agent since: then the call is
        // tried again on a new one (it was never written).
        loop {
            let (conn, reused) = match self.take(&target.host) {
                Some(conn) => (conn, true),
                None => (Self::connect(&target.host).await?, false),
            };
            match exchange(conn, &request).await {
                Ok((answer, conn)) => {
                    if let Some(conn) = conn {
                        self.give_back(&target.host, conn);
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

/// The request's bytes: the target's head, `headers`, the body's length, the body. A
/// header that would break the head (a line break in it) is refused.
fn request(target: &Target, headers: &[(&str, &str)], body: &[u8]) -> Result<Vec<u8>, CallError> {
    let mut out = Vec::with_capacity(target.head.len() + 160 + body.len());
    out.extend_from_slice(&target.head);
    for (name, value) in headers {
        if [name, value]
            .iter()
            .any(|s| crate::server::h1::breaks_head(s.as_bytes()))
        {
            return Err(CallError::Connect);
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let _ = write!(out, "content-length: {}\r\n\r\n", body.len());
    out.extend_from_slice(body);
    Ok(out)
}

impl Conn {
    /// Whether an idle connection can still carry a call: the agent has not closed it nor
    /// sent anything unasked (a readiness check; a read only when the socket has something).
    fn open(&self) -> bool {
        let mut probe = [0u8; 1];
        matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }

    /// Reads more of the answer; `false` at the end of the stream.
    async fn fill(&mut self) -> Result<bool, Broken> {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(READ_ROOM);
        }
        match self.stream.read_buf(&mut self.buf).await {
            Ok(0) => Ok(false),
            Ok(_) => Ok(true),
            Err(_) => Err(Broken::During(CallError::Transport)),
        }
    }
}

/// How an answer's body is delimited.
enum Framing {
    Length(usize),
    Chunked,
    ToEnd,
}

/// What the head of an answer says.
struct Head {
    status: u16,
    retry_after: Option<Duration>,
    framing: Framing,
    /// The connection may carry another call after this answer.
    keep_alive: bool,
    /// Bytes of the head.
    len: usize,
}

/// The head at the start of `buf`: `None` while incomplete.
fn head(buf: &[u8]) -> Result<Option<Head>, Broken> {
    let invalid = || Broken::During(CallError::InvalidBody);
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut headers);
    let len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => return Ok(None),
        _ => return Err(invalid()),
    };
    let status = parsed.code.ok_or_else(invalid)?;
    let mut keep_alive = parsed.version == Some(1);
    let (mut length, mut chunked, mut retry_after) = (None, false, None);
    for h in parsed.headers.iter() {
        // Only the four headers read here are decoded: another's value may hold any bytes
        // HTTP allows (`obs-text`), as reqwest's client allowed.
        let read = [
            "content-length",
            "transfer-encoding",
            "connection",
            "retry-after",
        ];
        if !read.iter().any(|name| h.name.eq_ignore_ascii_case(name)) {
            continue;
        }
        let value = std::str::from_utf8(h.value).map_err(|_| invalid())?.trim();
        if h.name.eq_ignore_ascii_case("content-length") {
            let n: usize = value.parse().map_err(|_| invalid())?;
            if length.is_some_and(|l| l != n) {
                return Err(invalid());
            }
            length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value
                .rsplit(',')
                .next()
                .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
            if !chunked {
                return Err(invalid());
            }
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case("keep-alive") && parsed.version == Some(0) {
                    keep_alive = true;
                }
            }
        } else if h.name.eq_ignore_ascii_case("retry-after") {
            retry_after = retry_after_text(value);
        }
    }
    let framing = if matches!(status, 100..=199 | 204 | 304) {
        Framing::Length(0)
    } else if chunked {
        Framing::Chunked
    } else if let Some(n) = length {
        if n > MAX_AGENT_BODY {
            return Err(invalid());
        }
        Framing::Length(n)
    } else {
        keep_alive = false;
        Framing::ToEnd
    };
    Ok(Some(Head {
        status,
        retry_after,
        framing,
        keep_alive,
        len,
    }))
}

/// One request and its whole answer on `conn`; the connection back when it can carry
/// another call.
async fn exchange(mut conn: Conn, request: &[u8]) -> Result<(Answer, Option<Conn>), Broken> {
    if conn.stream.write_all(request).await.is_err() {
        return Err(Broken::Unused);
    }
    conn.buf.clear();
    let head = loop {
        match head(&conn.buf)? {
            // An interim answer (`100 Continue` and the like): the real one follows.
            Some(h) if (100..=199).contains(&h.status) && h.status != 101 => {
                conn.buf.advance(h.len);
            }
            Some(h) if h.status == 101 => return Err(Broken::During(CallError::InvalidBody)),
            Some(h) => break h,
            None => {
                if !conn.fill().await? {
                    return Err(Broken::During(CallError::Transport));
                }
            }
        }
    };
    conn.buf.advance(head.len);
    let body = match head.framing {
        Framing::Length(n) => {
            while conn.buf.len() < n {
                if !conn.fill().await? {
                    return Err(Broken::During(CallError::Transport));
                }
            }
            conn.buf.split_to(n).freeze()
        }
        Framing::Chunked => chunked(&mut conn).await?,
        Framing::ToEnd => {
            while conn.fill().await? {
                if conn.buf.len() > MAX_AGENT_BODY {
                    return Err(Broken::During(CallError::InvalidBody));
                }
            }
            conn.buf.split().freeze()
        }
    };
    // Anything left over was not asked for: the connection is not trusted with another call.
    let reusable = head.keep_alive && conn.buf.is_empty();
    if conn.buf.capacity() > KEPT_ROOM {
        conn.buf = BytesMut::with_capacity(READ_ROOM);
    }
    Ok((
        Answer {
            status: head.status,
            retry_after: head.retry_after,
            body,
        },
        reusable.then_some(conn),
    ))
}

/// A chunked body (RFC 9112 §7.1), its trailers read and dropped.
async fn chunked(conn: &mut Conn) -> Result<Bytes, Broken> {
    let invalid = || Broken::During(CallError::InvalidBody);
    let mut body = BytesMut::new();
    loop {
        let (skip, size) = match httparse::parse_chunk_size(&conn.buf) {
            Ok(httparse::Status::Complete(found)) => found,
            Ok(httparse::Status::Partial) if conn.buf.len() < MAX_HEAD => {
                if !conn.fill().await? {
                    return Err(Broken::During(CallError::Transport));
                }
                continue;
            }
            _ => return Err(invalid()),
        };
        if size == 0 {
            conn.buf.advance(skip);
            break;
        }
        let size = usize::try_from(size).map_err(|_| invalid())?;
        if body.len() + size > MAX_AGENT_BODY {
            return Err(invalid());
        }
        // The chunk's data and its CRLF.
        while conn.buf.len() < skip + size + 2 {
            if !conn.fill().await? {
                return Err(Broken::During(CallError::Transport));
            }
        }
        if &conn.buf[skip + size..skip + size + 2] != b"\r\n" {
            return Err(invalid());
        }
        body.extend_from_slice(&conn.buf[skip..skip + size]);
        conn.buf.advance(skip + size + 2);
    }
    // Trailer lines, up to an empty one.
    loop {
        match conn.buf.windows(2).position(|w| w == b"\r\n") {
            Some(0) => {
                conn.buf.advance(2);
                return Ok(body.freeze());
            }
            Some(end) => conn.buf.advance(end + 2),
            None if conn.buf.len() < MAX_HEAD => {
                if !conn.fill().await? {
                    return Err(Broken::During(CallError::Transport));
                }
            }
            None => return Err(invalid()),
        }
    }
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
        answer: impl AsRef<[u8]> + Copy + Send + 'static,
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
                        if socket.write_all(answer.as_ref()).await.is_err() || close_after_each {
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
        pool.post(&target, &[], b"{}").await
    }

    #[test]
    fn a_header_with_a_line_break_is_refused_and_the_others_are_written_as_given() {
        let target = Target::of(&"http://127.0.0.1:9/query".parse().unwrap()).unwrap();
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let head = request(&target, &[("traceparent", tp)], b"{}").unwrap();
        let head = String::from_utf8(head).unwrap();
        assert!(
            head.contains(&format!("\r\ntraceparent: {tp}\r\n")),
            "{head}"
        );
        assert!(head.ends_with("content-length: 2\r\n\r\n{}"), "{head}");
        for bad in [("x-a", "1\r\nx-b: 2"), ("x-a", "1\n"), ("x-a\r", "1")] {
            assert!(
                matches!(request(&target, &[bad], b""), Err(CallError::Connect)),
                "{bad:?}"
            );
        }
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
        // Bound and never listening: the port is refused, and held from the other tests'
        // servers while the call is made (a port freed at once could be taken by one).
        let held = tokio::net::TcpSocket::new_v4().unwrap();
        held.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let url = reqwest::Url::parse(&format!("http://{}/q", held.local_addr().unwrap())).unwrap();
        let pool = AgentPool::new(4);
        assert!(matches!(post(&pool, &url).await, Err(CallError::Connect)));
    }

    #[tokio::test]
    async fn a_chunked_answer_is_put_together_and_its_connection_reused() {
        let (url, accepted) = agent(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
             b\r\n{\"status\":\"\r\n9;ext=1\r\nsuccess\"}\r\n0\r\nx-trailer: 1\r\n\r\n",
            false,
        )
        .await;
        let pool = AgentPool::new(4);
        for _ in 0..3 {
            let answer = post(&pool, &url).await.expect("answered");
            assert_eq!(&answer.body[..], b"{\"status\":\"success\"}");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_answer_without_a_length_ends_with_its_connection_which_is_not_reused() {
        let (url, accepted) = agent(
            "HTTP/1.1 503 Service Unavailable\r\nretry-after: 7\r\n\r\n{\"status\":\"busy\"}",
            true,
        )
        .await;
        let pool = AgentPool::new(4);
        for _ in 0..2 {
            let answer = post(&pool, &url).await.expect("answered");
            assert_eq!(answer.status, 503);
            assert_eq!(answer.retry_after, Some(Duration::from_secs(7)));
            assert_eq!(&answer.body[..], b"{\"status\":\"busy\"}");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn an_interim_answer_is_skipped_and_a_close_is_honoured() {
        let (url, accepted) = agent(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\n{}",
            false,
        )
        .await;
        let pool = AgentPool::new(4);
        for _ in 0..2 {
            let answer = post(&pool, &url).await.expect("answered");
            assert_eq!((answer.status, &answer.body[..]), (200, &b"{}"[..]));
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            2,
            "connection: close is not reused"
        );
    }

    #[tokio::test]
    async fn a_header_of_any_bytes_is_passed_over_but_a_length_that_is_not_digits_is_not() {
        let (odd, _) = agent(
            &b"HTTP/1.1 200 OK\r\nserver: caf\xe9\r\ncontent-length: 2\r\n\r\n{}"[..],
            false,
        )
        .await;
        let (bad, _) = agent(
            &b"HTTP/1.1 200 OK\r\ncontent-length: \xe92\r\n\r\n{}"[..],
            false,
        )
        .await;
        let pool = AgentPool::new(4);
        let answer = post(&pool, &odd).await.unwrap();
        assert_eq!((answer.status, &answer.body[..]), (200, &b"{}"[..]));
        assert!(matches!(
            post(&pool, &bad).await,
            Err(CallError::InvalidBody)
        ));
    }

    #[tokio::test]
    async fn garbage_or_a_cut_answer_is_an_error_not_a_hang() {
        let (garbage, _) = agent("SMTP ready\r\n\r\n", false).await;
        let (cut, _) = agent("HTTP/1.1 200 OK\r\ncontent-length: 50\r\n\r\n{\"st", true).await;
        let pool = AgentPool::new(4);
        assert!(matches!(
            post(&pool, &garbage).await,
            Err(CallError::InvalidBody)
        ));
        assert!(matches!(post(&pool, &cut).await, Err(CallError::Transport)));
    }

    #[tokio::test]
    async fn a_resting_connection_does_not_keep_the_room_of_a_large_answer() {
        let big: &'static str = Box::leak(
            format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n\"{}\"",
                300_002,
                "x".repeat(300_000)
            )
            .into_boxed_str(),
        );
        let (url, accepted) = agent(big, false).await;
        let pool = AgentPool::new(4);
        for _ in 0..2 {
            let answer = post(&pool, &url).await.expect("answered");
            assert_eq!(answer.body.len(), 300_002);
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "the connection is reused"
        );
        let idle = pool.idle.get_or_default().borrow();
        let rooms: Vec<usize> = idle.values().flatten().map(|c| c.buf.capacity()).collect();
        assert_eq!(rooms.len(), 1);
        assert!(rooms[0] <= KEPT_ROOM, "{rooms:?}");
    }
}

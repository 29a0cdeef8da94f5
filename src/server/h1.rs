//! The server's own HTTP/1.1 path, for the requests a [`Shortcut`] answers itself.
//!
//! A connection starts here. While its requests are ones the shortcut takes — HTTP/1.1, a
//! `Content-Length` body within the limit, no `Transfer-Encoding`, `Expect` or `Upgrade`,
//! and what the shortcut itself asks for — each is read, answered and written on the
//! connection's own task: the head parsed in place by `httparse`, the answer written with
//! one system call. The first request that is not one of them — or one the shortcut hands
//! back after seeing its body — goes to the general server (hyper and the endpoint) with
//! every byte read so far (the socket gives them again first), so it is answered exactly as
//! if this path did not exist; the connection stays there.
//!
//! Timeouts and drain, as the general server keeps them: the next request's head must
//! arrive within the header-read timeout (an idle keep-alive connection is closed by it),
//! its body within the shortcut's body timeout (else the shortcut's answer to a late body,
//! and the connection closes); at shutdown a connection waiting between requests closes
//! (one that has not begun its first gets a moment to send it), and one in a request
//! finishes it and closes.

use std::{future::Future, net::SocketAddr, pin::Pin, sync::atomic::Ordering, time::Duration};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    sync::watch,
    time::Instant,
};

use super::{Conn, FIRST_REQUEST_GRACE};

/// Headers a request may carry and still be taken (more go to the general server).
const MAX_HEADERS: usize = 48;
/// A head not complete within this many bytes goes to the general server.
const MAX_HEAD: usize = 16 * 1024;
/// Read room kept by a connection between requests (a large body's room is let go).
const KEPT_ROOM: usize = 64 * 1024;

/// A request's head, as the shortcut sees it.
pub struct Head<'a> {
    pub method: &'a str,
    /// The request target as sent (path and query).
    pub target: &'a str,
    pub headers: &'a [httparse::Header<'a>],
    pub remote: SocketAddr,
}

impl<'a> Head<'a> {
    /// The head `req` parsed (complete, HTTP/1.x), from `remote`.
    fn of<'b: 'a>(req: &'a httparse::Request<'_, 'b>, remote: SocketAddr) -> Option<Head<'a>> {
        Some(Head {
            method: req.method?,
            target: req.path?,
            headers: req.headers,
            remote,
        })
    }

    /// The path, without the query.
    pub fn path(&self) -> &'a str {
        self.target.split('?').next().unwrap_or_default()
    }

    /// Every value of the header `name` (any case), in order.
    pub fn all<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'a [u8]> + 's {
        self.headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }
}

/// Requests the server answers itself, before (and instead of) the endpoint.
pub trait Shortcut: Send + Sync + 'static {
    /// Whether it takes this request (its body not read yet).
    fn takes(&self, head: &Head<'_>) -> bool;
    /// The largest body it takes, in bytes.
    fn max_body(&self) -> usize;
    /// How long a taken request's body may take to arrive.
    fn body_timeout(&self) -> Duration;
    /// Answers into `reply`, or returns `false` having changed nothing (the request then
    /// goes to the endpoint). `body` is `None` when it did not arrive within the body
    /// timeout: the answer then must be written.
    fn answer<'a>(
        &'a self,
        head: &'a Head<'a>,
        body: Option<&'a [u8]>,
        reply: &'a mut Reply,
    ) -> Pin<Box<dyn Future<Output = bool> + Send + 'a>>;
}

/// Whether a header's name or value holds a line break, which would end an HTTP/1 head
/// early (a header injected after it): such a header is never written, in an answer or in
/// a request to an agent. (`contains` on bytes is memchr's: a byte at a time cost ~300
/// instructions a trace id.)
pub(crate) fn breaks_head(bytes: &[u8]) -> bool {
    bytes.contains(&b'\r') || bytes.contains(&b'\n')
}

/// An answer being written: status line, headers, then the body (which adds the framing
/// headers, `Date`, and `Connection: close` when the connection ends after it).
#[derive(Default)]
pub struct Reply {
    buf: Vec<u8>,
    closing: bool,
    /// Where the head's last header line ends (once the body is written).
    head_end: usize,
}

impl Reply {
    pub fn status(&mut self, status: http::StatusCode) {
        self.buf.extend_from_slice(b"HTTP/1.1 ");
        self.buf.extend_from_slice(status.as_str().as_bytes());
        self.buf.push(b' ');
        self.buf
            .extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
        self.buf.extend_from_slice(b"\r\n");
    }

    /// One header line. A value with a line break is left out (it would end the head).
    pub fn header(&mut self, name: &str, value: &[u8]) {
        if breaks_head(value) {
            return;
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.extend_from_slice(b": ");
        self.buf.extend_from_slice(value);
        self.buf.extend_from_slice(b"\r\n");
    }

    /// Ends the head and adds the body.
    pub fn body(&mut self, body: &[u8]) {
        use std::io::Write;
        let _ = write!(self.buf, "content-length: {}\r\n", body.len());
        if self.closing {
            self.header("connection", b"close");
        }
        DATE.with(|d| {
            let mut d = d.borrow_mut();
            let now = std::time::SystemTime::now();
            let second = now
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            if d.0 != second {
                *d = (second, httpdate::fmt_http_date(now));
            }
            self.buf.extend_from_slice(b"date: ");
            self.buf.extend_from_slice(d.1.as_bytes());
            self.buf.extend_from_slice(b"\r\n");
        });
        self.head_end = self.buf.len();
        self.buf.extend_from_slice(b"\r\n");
        self.buf.extend_from_slice(body);
    }

    /// Empties it for the next answer.
    fn reset(&mut self, closing: bool) {
        self.buf.clear();
        self.head_end = 0;
        self.closing = closing;
    }

    /// Makes a written answer close its connection (the stop came while it was made).
    fn close_late(&mut self) {
        if !self.closing && self.head_end > 0 {
            self.closing = true;
            let at = self.head_end;
            self.buf
                .splice(at..at, b"connection: close\r\n".iter().copied());
        }
    }

    /// Whether the connection closes after this answer.
    pub fn closing(&self) -> bool {
        self.closing
    }

    /// Makes the connection close after this answer.
    pub fn close(&mut self) {
        self.closing = true;
    }
}

thread_local! {
    /// The `Date` value of the current second, formatted once a second per thread.
    static DATE: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((u64::MAX, String::new())) };
}

/// How the server's own path left a connection.
pub(super) enum Next {
    /// Closed (or to be closed): nothing more to serve.
    Close,
    /// Closed by the header timeout before its client sent a byte (counted as idle).
    Silent,
    /// To the general server, with every byte read and not yet answered.
    Hand(Vec<u8>),
}

/// What the head of the request at the front of the buffer asks for.
enum Judged {
    /// For the general server.
    Hand,
    /// Taken: the head's length, the body's, and whether the client asked to close after.
    Take {
        head: usize,
        body: usize,
        close: bool,
    },
    /// The head is not all in yet.
    More,
}

fn judge(
    req: &httparse::Request<'_, '_>,
    head_len: usize,
    remote: SocketAddr,
    shortcut: &dyn Shortcut,
) -> Judged {
    let (Some(head), Some(1)) = (Head::of(req, remote), req.version) else {
        return Judged::Hand;
    };
    let mut length = None;
    let mut close = false;
    for h in head.headers {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            let parsed = std::str::from_utf8(h.value)
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<usize>().ok());
            match (length, parsed) {
                (None, Some(n)) => length = Some(n),
                _ => return Judged::Hand,
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("expect")
            || name.eq_ignore_ascii_case("upgrade")
        {
            return Judged::Hand;
        } else if name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"upgrade") {
                    return Judged::Hand;
                }
            }
        }
    }
    match length {
        Some(body) if body <= shortcut.max_body() && shortcut.takes(&head) => Judged::Take {
            head: head_len,
            body,
            close,
        },
        _ => Judged::Hand,
    }
}

/// Serves requests on `io` while `shortcut` takes them (see the module's notes).
pub(super) async fn serve<T>(
    io: &mut T,
    shortcut: &dyn Shortcut,
    remote: SocketAddr,
    header_timeout: Duration,
    conn: &Conn,
    stop: &mut watch::Receiver<bool>,
) -> Next
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    // What arrives while a request is answered (the next one, pipelined).
    let mut ahead: Vec<u8> = Vec::new();
    let mut reply = Reply::default();
    let timer = tokio::time::sleep(header_timeout);
    tokio::pin!(timer);
    let mut stopping = false;
    loop {
        // One request: its head within the header timeout, then its body within the body
        // timeout (counted from the head's end).
        timer.as_mut().reset(Instant::now() + header_timeout);
        let mut body_due = false;
        loop {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut req = httparse::Request::new(&mut headers);
            let judged = match req.parse(&buf) {
                Ok(httparse::Status::Complete(n)) => judge(&req, n, remote, shortcut),
                Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD => Judged::More,
                _ => Judged::Hand,
            };
            let (head_len, body_len, close) = match judged {
                Judged::Hand => return Next::Hand(buf),
                Judged::Take { head, body, close } => (Some(head), body, close),
                Judged::More => (None, 0, false),
            };
            if let Some(head_len) = head_len.filter(|&h| buf.len() >= h + body_len) {
                conn.requests.fetch_add(1, Ordering::Relaxed);
                let Some(head) = Head::of(&req, remote) else {
                    return Next::Hand(buf);
                };
                reply.reset(close || *stop.borrow());
                let body = &buf[head_len..head_len + body_len];
                let answer = shortcut.answer(&head, Some(body), &mut reply);
                match while_connected(io, &mut ahead, answer).await {
                    // The client left: the answer is dropped (its calls cancelled).
                    None => return Next::Close,
                    Some(false) => {
                        let mut read = buf;
                        read.append(&mut ahead);
                        return Next::Hand(read);
                    }
                    Some(true) => {}
                }
                if *stop.borrow() {
                    reply.close_late();
                }
                if io.write_all(&reply.buf).await.is_err() || reply.closing {
                    let _ = io.shutdown().await;
                    return Next::Close;
                }
                buf.drain(..head_len + body_len);
                buf.append(&mut ahead);
                if buf.capacity() > KEPT_ROOM {
                    buf.shrink_to(KEPT_ROOM.max(buf.len()));
                }
                break;
            }
            if head_len.is_some() && !body_due {
                // The head is in; the body has its own time from here.
                body_due = true;
                timer
                    .as_mut()
                    .reset(Instant::now() + shortcut.body_timeout());
            }
            if buf.capacity() - buf.len() < 1024 {
                buf.reserve(4096);
            }
            let waiting = buf.is_empty();
            tokio::select! {
                read = io.read_buf(&mut buf) => match read {
                    Ok(0) | Err(_) => return Next::Close,
                    Ok(_) => {}
                },
                _ = &mut timer => {
                    if body_due {
                        late_body(io, &buf, remote, shortcut, &mut reply).await;
                    } else if waiting && conn.requests.load(Ordering::Relaxed) == 0 && !stopping {
                        return Next::Silent;
                    }
                    return Next::Close;
                }
                () = stopped(stop), if waiting && !stopping => {
                    // Shutting down between requests. One that has not begun its first
                    // may be carrying it: a moment to read it, then close.
                    if conn.requests.load(Ordering::Relaxed) > 0 {
                        return Next::Close;
                    }
                    stopping = true;
                    let grace = Instant::now() + FIRST_REQUEST_GRACE;
                    if grace < timer.deadline() {
                        timer.as_mut().reset(grace);
                    }
                }
            }
        }
        if *stop.borrow() {
            return Next::Close;
        }
    }
}

/// Runs `answer` while watching the connection: `None` as soon as the client closes it (or
/// it fails) — `answer` is then dropped, as the general server drops a request's work when
/// its client leaves. Bytes the client sends meanwhile (its next requests) are kept in
/// `ahead`, up to [`MAX_HEAD`].
async fn while_connected<T, F>(io: &mut T, ahead: &mut Vec<u8>, answer: F) -> Option<bool>
where
    T: AsyncRead + Unpin,
    F: Future<Output = bool>,
{
    tokio::pin!(answer);
    loop {
        if ahead.len() >= MAX_HEAD {
            return Some(answer.await);
        }
        ahead.reserve(1024);
        tokio::select! {
            biased;
            done = &mut answer => return Some(done),
            read = io.read_buf(ahead) => match read {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            },
        }
    }
}

/// Resolves once the stop is signalled.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// A taken request whose body did not arrive in time: the shortcut's answer, then close.
async fn late_body<T>(
    io: &mut T,
    buf: &[u8],
    remote: SocketAddr,
    shortcut: &dyn Shortcut,
    reply: &mut Reply,
) where
    T: AsyncWrite + Unpin,
{
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    if !matches!(req.parse(buf), Ok(httparse::Status::Complete(_))) {
        return;
    }
    let Some(head) = Head::of(&req, remote) else {
        return;
    };
    reply.reset(true);
    if shortcut.answer(&head, None, reply).await {
        let _ = io.write_all(&reply.buf).await;
        let _ = io.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::{TcpListener, TcpStream},
    };

    use super::*;
    use crate::{
        metrics::Metrics,
        server::{ConnectionStats, Server},
    };

    /// Answers of `slow` that ran to their end.
    static SLOW_FINISHED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

    /// Answers `POST /up` with its body in capitals (`slow` after 300 ms); hands back a
    /// body `general`.
    struct Upper;

    impl Shortcut for Upper {
        fn takes(&self, head: &Head<'_>) -> bool {
            head.method == "POST" && head.path() == "/up"
        }
        fn max_body(&self) -> usize {
            64
        }
        fn body_timeout(&self) -> Duration {
            Duration::from_millis(200)
        }
        fn answer<'a>(
            &'a self,
            _: &'a Head<'a>,
            body: Option<&'a [u8]>,
            reply: &'a mut Reply,
        ) -> Pin<Box<dyn Future<Output = bool> + Send + 'a>> {
            Box::pin(async move {
                match body {
                    Some(b"general") => false,
                    Some(b"slow") => {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        SLOW_FINISHED.fetch_add(1, Ordering::Relaxed);
                        reply.status(http::StatusCode::OK);
                        reply.body(b"SLOW");
                        true
                    }
                    Some(body) => {
                        reply.status(http::StatusCode::OK);
                        reply.body(&body.to_ascii_uppercase());
                        true
                    }
                    None => {
                        reply.status(http::StatusCode::REQUEST_TIMEOUT);
                        reply.body(b"late");
                        true
                    }
                }
            })
        }
    }

    /// A server with [`Upper`] in front of an endpoint that names itself; its address and
    /// the stop that drains it.
    async fn server(header_timeout_ms: u64) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let (addr, stop, _) = server_counted(header_timeout_ms).await;
        (addr, stop)
    }

    /// [`server`], with its connection counters.
    async fn server_counted(
        header_timeout_ms: u64,
    ) -> (
        SocketAddr,
        tokio::sync::oneshot::Sender<()>,
        ConnectionStats,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let ep = poem::EndpointExt::map_to_response(poem::endpoint::make(
            |mut req: poem::Request| async move {
                let body = req.take_body().into_string().await.unwrap_or_default();
                format!("general {} {}", req.uri().path(), body)
            },
        ));
        let limits = crate::config::ConnectionLimits {
            header_read_timeout: Duration::from_millis(header_timeout_ms),
            ..Default::default()
        };
        let stats = ConnectionStats::new(&Metrics::default());
        let server = Server::new(ep, limits, stats.clone(), Duration::from_secs(5))
            .with_shortcut(Arc::new(Upper));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            server
                .serve(listener, async {
                    let _ = stopped.await;
                })
                .await
        });
        (addr, stop, stats)
    }

    fn post(path: &str, body: &str, extra: &str) -> String {
        format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\n{extra}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    /// Reads until the peer closes (or 5 s pass).
    async fn read_all(c: &mut TcpStream) -> String {
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    /// The bodies of the answers in `text`, in order.
    fn bodies(text: &str) -> Vec<&str> {
        text.split("HTTP/1.1 ")
            .skip(1)
            .map(|a| a.split("\r\n\r\n").nth(1).unwrap_or_default())
            .collect()
    }

    #[tokio::test]
    async fn pipelined_requests_are_answered_in_order_and_the_first_other_one_moves_the_connection()
    {
        let (addr, _stop) = server(2_000).await;
        let mut c = TcpStream::connect(addr).await.unwrap();
        let sent = [
            post("/up", "one", ""),
            post("/up", "two", ""),
            post("/up", "general", ""),
            post("/up", "four", ""),
            post("/other", "five", "Connection: close\r\n"),
        ]
        .concat();
        // Split mid-request: the path reads across writes.
        let (a, b) = sent.split_at(30);
        c.write_all(a.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        c.write_all(b.as_bytes()).await.unwrap();
        let text = read_all(&mut c).await;
        assert_eq!(
            bodies(&text),
            [
                "ONE",
                "TWO",
                "general /up general",
                "general /up four",
                "general /other five"
            ],
            "{text}"
        );
        assert_eq!(text.matches("date: ").count(), 5, "{text}");
    }

    #[tokio::test]
    async fn what_the_path_does_not_take_goes_to_the_general_server_whole() {
        let (addr, _stop) = server(2_000).await;
        let cases = [
            // HTTP/1.0, a chunked body, `Expect`, a body over the limit, a second length,
            // an upgrade, another path: all the general server's.
            "POST /up HTTP/1.0\r\nContent-Length: 1\r\n\r\na".to_string(),
            "POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n1\r\na\r\n0\r\n\r\n".into(),
            post("/up", "a", "Expect: 100-continue\r\nConnection: close\r\n"),
            post("/up", &"a".repeat(65), "Connection: close\r\n"),
            "POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 1\r\nConnection: close\r\n\r\na".into(),
            post("/up", "a", "Connection: upgrade, close\r\nUpgrade: x\r\n"),
            post("/down", "a", "Connection: close\r\n"),
        ];
        for case in cases {
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.write_all(case.as_bytes()).await.unwrap();
            let text = read_all(&mut c).await;
            assert!(text.contains("general /"), "{case:?} → {text}");
        }
    }

    #[tokio::test]
    async fn a_client_that_leaves_drops_its_answer_and_one_that_stays_gets_the_next_too() {
        let (addr, _stop) = server(2_000).await;
        let mut leaves = TcpStream::connect(addr).await.unwrap();
        leaves
            .write_all(post("/up", "slow", "").as_bytes())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(leaves);
        // One that stays sends its next request while the first is being answered.
        let mut stays = TcpStream::connect(addr).await.unwrap();
        stays
            .write_all(post("/up", "slow", "").as_bytes())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        stays
            .write_all(post("/up", "next", "Connection: close\r\n").as_bytes())
            .await
            .unwrap();
        let text = read_all(&mut stays).await;
        assert_eq!(bodies(&text), ["SLOW", "NEXT"], "{text}");
        // The one left behind never finished (the two would have ended together).
        assert_eq!(SLOW_FINISHED.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn an_http2_connection_goes_to_the_general_server_from_its_preface() {
        use http_body_util::BodyExt;
        let (addr, _stop) = server(2_000).await;
        let io = hyper_util::rt::TokioIo::new(TcpStream::connect(addr).await.unwrap());
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                .await
                .unwrap();
        tokio::spawn(conn);
        for body in ["one", "two"] {
            let req = http::Request::post(format!("http://{addr}/up"))
                .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                .unwrap();
            let resp = send.send_request(req).await.unwrap();
            assert_eq!(resp.version(), http::Version::HTTP_2);
            let text = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(text, format!("general /up {body}").as_bytes());
        }
    }

    #[tokio::test]
    async fn connection_close_ends_the_connection_after_its_answer() {
        let (addr, _stop) = server(2_000).await;
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(post("/up", "x", "Connection: close\r\n").as_bytes())
            .await
            .unwrap();
        let text = read_all(&mut c).await;
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.contains("\r\nconnection: close\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\nX"), "{text}");
    }

    #[tokio::test]
    async fn a_late_body_gets_the_shortcuts_answer_and_the_connection_closes() {
        let (addr, _stop) = server(2_000).await;
        let mut c = TcpStream::connect(addr).await.unwrap();
        let req = post("/up", "abcd", "");
        c.write_all(&req.as_bytes()[..req.len() - 2]).await.unwrap();
        let text = read_all(&mut c).await;
        assert!(
            text.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
            "{text}"
        );
        assert!(text.contains("\r\nconnection: close\r\n"), "{text}");
        assert!(text.ends_with("late"), "{text}");
    }

    #[tokio::test]
    async fn a_head_that_does_not_arrive_in_time_closes_the_connection() {
        let (addr, _stop, stats) = server_counted(300).await;
        // One that never sends a byte: closed too, and counted idle.
        let mut silent = TcpStream::connect(addr).await.unwrap();
        // Idle after an answer, and a head trickled in part: both closed without an answer.
        let mut idle = TcpStream::connect(addr).await.unwrap();
        idle.write_all(post("/up", "a", "").as_bytes())
            .await
            .unwrap();
        let mut partial = TcpStream::connect(addr).await.unwrap();
        partial.write_all(b"POST /up HTTP/1.1\r\nHo").await.unwrap();
        let started = std::time::Instant::now();
        let (idle, partial, silent) = tokio::join!(
            read_all(&mut idle),
            read_all(&mut partial),
            read_all(&mut silent)
        );
        assert_eq!(bodies(&idle), ["A"], "{idle}");
        assert_eq!((partial.as_str(), silent.as_str()), ("", ""));
        assert_eq!(stats.idle_closed.get(), 1, "the silent one only");
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "closed by the timeout"
        );
    }

    #[tokio::test]
    async fn at_the_stop_a_connection_between_requests_closes_and_one_in_a_request_finishes() {
        let (addr, stop) = server(5_000).await;
        let mut between = TcpStream::connect(addr).await.unwrap();
        between
            .write_all(post("/up", "a", "").as_bytes())
            .await
            .unwrap();
        let mut answer = [0u8; 512];
        let n = between.read(&mut answer).await.unwrap();
        assert!(answer[..n].ends_with(b"A"));
        let mut midway = TcpStream::connect(addr).await.unwrap();
        let req = post("/up", "abc", "");
        midway
            .write_all(&req.as_bytes()[..req.len() - 1])
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        stop.send(()).unwrap();
        let started = std::time::Instant::now();
        tokio::time::sleep(Duration::from_millis(50)).await;
        midway
            .write_all(&req.as_bytes()[req.len() - 1..])
            .await
            .unwrap();
        let (between, midway) = tokio::join!(read_all(&mut between), read_all(&mut midway));
        // Closed by the stop, not by the 5 s header timeout.
        assert!(started.elapsed() < Duration::from_secs(3));
        assert_eq!(between, "");
        assert!(midway.contains("\r\nconnection: close\r\n"), "{midway}");
        assert!(midway.ends_with("ABC"), "{midway}");
    }

    #[test]
    fn a_header_value_with_a_line_break_is_left_out() {
        let mut reply = Reply::default();
        reply.status(http::StatusCode::OK);
        reply.header("x-a", b"fine");
        reply.header("x-b", b"bad\r\nx-c: injected");
        reply.body(b"");
        let text = String::from_utf8(reply.buf).unwrap();
        assert!(text.contains("x-a: fine\r\n"));
        assert!(
            !text.contains("x-b") && !text.contains("injected"),
            "{text}"
        );
    }
}

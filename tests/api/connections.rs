//! Connection limits and timeouts against raw sockets: idle, slowloris, idle keep-alive,
//! trickled bodies, and a flood of idle connections past the cap.

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::helpers::{settings, spawn_process, spawn_with, TestApp};

fn addr(app: &TestApp) -> String {
    app.base.trim_start_matches("http://").to_string()
}

fn connect(app: &TestApp) -> TcpStream {
    let s = TcpStream::connect(addr(app)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

/// Reads until the server closes; how long that took, and what it sent.
fn until_closed(mut s: TcpStream) -> (Duration, String) {
    let started = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) => panic!("the server kept the connection open: {e}"),
        }
    }
    (
        started.elapsed(),
        String::from_utf8_lossy(&out).into_owned(),
    )
}

async fn short_timeouts() -> TestApp {
    let mut raw = settings();
    raw.header_read_timeout_ms = Some("300".into());
    raw.body_read_timeout_ms = Some("300".into());
    spawn_with(raw, None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_sends_a_request_is_closed_by_the_header_timeout() {
    let app = short_timeouts().await;
    let s = connect(&app);
    let (took, sent) = tokio::task::spawn_blocking(move || until_closed(s))
        .await
        .unwrap();
    assert!(took < Duration::from_secs(2), "closed after {took:?}");
    assert!(!sent.contains("200 OK"), "{sent}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_headers_are_cut_off_even_while_bytes_keep_coming() {
    let app = short_timeouts().await;
    let mut s = connect(&app);
    let took = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        s.write_all(b"GET /health HTTP/1.1\r\n").unwrap();
        // One header byte every 50 ms, for up to 5 s.
        for b in b"X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".iter().cycle().take(100) {
            if s.write_all(&[*b]).is_err() {
                return started.elapsed();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let (_, _) = until_closed(s);
        started.elapsed()
    })
    .await
    .unwrap();
    assert!(
        took < Duration::from_secs(2),
        "a trickled header lived {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_after_its_answer() {
    let app = short_timeouts().await;
    let mut s = connect(&app);
    let (took, sent) = tokio::task::spawn_blocking(move || {
        s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        until_closed(s)
    })
    .await
    .unwrap();
    assert!(sent.starts_with("HTTP/1.1 200"), "{sent}");
    assert!(
        took < Duration::from_secs(2),
        "kept alive idle for {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_body_gets_a_408_json_error() {
    let app = short_timeouts().await;
    let mut s = connect(&app);
    let (took, sent) = tokio::task::spawn_blocking(move || {
        s.write_all(
            b"POST /process HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n{\"query\":",
        )
        .unwrap();
        let started = Instant::now();
        // A byte every 100 ms: it would take 19 s to finish.
        let writer = s.try_clone().unwrap();
        std::thread::spawn(move || {
            let mut w = writer;
            for _ in 0..190 {
                if w.write_all(b" ").is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let (_, sent) = until_closed(s);
        (started.elapsed(), sent)
    })
    .await
    .unwrap();
    assert!(sent.starts_with("HTTP/1.1 408"), "{sent}");
    let body: Value = serde_json::from_str(sent.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["code"], "body_timeout", "{body}");
    assert!(took < Duration::from_secs(3), "answered after {took:?}");
}

/// CPU seconds (user + system) a process has used, from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = stat.rsplit_once(')').unwrap().1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / 100.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_idle_connections_past_the_cap_neither_locks_clients_out_nor_pegs_a_core() {
    // 2,000 idle connections, four times the cap — fewer if this process may not hold them.
    let fd_limit = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1_024);
    let n = 2_000.min(fd_limit.saturating_sub(300) as usize);
    let cap = n / 4;
    let mut app = spawn_process(
        &[
            ("MAX_CONNECTIONS", cap.to_string()),
            ("HEADER_READ_TIMEOUT_MS", "60000".into()),
        ],
        None,
    );
    let pid = app.child().pid();
    let target = addr(&app);
    let idle: Vec<TcpStream> = tokio::task::spawn_blocking(move || {
        (0..n)
            .filter_map(|_| TcpStream::connect(&target).ok())
            .collect()
    })
    .await
    .unwrap();
    assert!(
        idle.len() >= n * 95 / 100,
        "only {} of {n} connected",
        idle.len()
    );
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let cpu_before = cpu_seconds(pid);
    let mut slowest = Duration::ZERO;
    for _ in 0..10 {
        let started = Instant::now();
        let (status, _) = app.get("/health").await;
        assert_eq!(status, 200);
        slowest = slowest.max(started.elapsed());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let cpu = cpu_seconds(pid) - cpu_before;
    assert!(
        slowest < Duration::from_millis(100),
        "/health took {slowest:?}"
    );
    assert!(
        cpu < 1.0,
        "{cpu:.2} CPU seconds in ~2 s while idle connections were held"
    );
    let (_, metrics) = app.get("/metrics").await;
    let conns = metrics["performance"]["connections"].clone();
    assert!(conns["open"].as_u64().unwrap() <= cap as u64, "{conns}");
    assert!(
        conns["evicted_total"].as_u64().unwrap() + conns["refused_total"].as_u64().unwrap()
            >= (n - cap - n / 20) as u64,
        "{conns}"
    );
    // They go; nothing is left behind.
    drop(idle);
    let mut open = u64::MAX;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        open = app.get("/metrics").await.1["performance"]["connections"]["open"]
            .as_u64()
            .unwrap();
        if open <= 2 {
            break;
        }
    }
    assert!(
        open <= 2,
        "{open} connections still open after the clients left"
    );
}

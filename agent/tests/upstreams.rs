//! Upstreams (SPEC §8) through a real agent: its probes of a container that does not speak
//! the protocol are answered at once from the latest result, whatever the container does;
//! `/status` and `/metrics` show it next to the workers.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{eventually, metric, Agent};
use vitals_agent::config::Config;
use vitals_core::upstreams::parse;

/// A tiny model server: `/health` answers `code` after `delay_ms`; `/metrics` says
/// `running` requests are running and `work` iterations were done; `health_asked` keeps
/// when each `/health` request arrived.
struct Server {
    port: u16,
    health_asked: Arc<Mutex<Vec<Instant>>>,
    code: Arc<AtomicU16>,
    delay_ms: Arc<AtomicU64>,
    work: Arc<AtomicU64>,
    running: Arc<AtomicU64>,
}

impl Server {
    fn start() -> Self {
        Self::start_on("127.0.0.1:0")
    }

    /// A server listening on `addr` only (`[::1]:0`: IPv6 loopback alone).
    fn start_on(addr: &str) -> Self {
        let l = TcpListener::bind(addr).unwrap();
        let port = l.local_addr().unwrap().port();
        let code = Arc::new(AtomicU16::new(200));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let work = Arc::new(AtomicU64::new(0));
        let running = Arc::new(AtomicU64::new(0));
        let health_asked = Arc::new(Mutex::new(Vec::new()));
        let (c, d, w, r, h) = (
            Arc::clone(&code),
            Arc::clone(&delay_ms),
            Arc::clone(&work),
            Arc::clone(&running),
            Arc::clone(&health_asked),
        );
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { return };
                let (c, d, w, r, h) = (
                    Arc::clone(&c),
                    Arc::clone(&d),
                    Arc::clone(&w),
                    Arc::clone(&r),
                    Arc::clone(&h),
                );
                std::thread::spawn(move || {
                    let mut buf = [0u8; 2048];
                    let n = s.read(&mut buf).unwrap_or(0);
                    let head = String::from_utf8_lossy(&buf[..n]).to_string();
                    let (code, body) = if head.starts_with("GET /metrics") {
                        let text = format!(
                            "vllm:num_requests_running {}\nvllm:num_requests_waiting 0\nvllm:iteration_tokens_total_count {}\n",
                            r.load(Ordering::SeqCst),
                            w.load(Ordering::SeqCst)
                        );
                        (200, text)
                    } else {
                        if head.starts_with("GET /health") {
                            h.lock().unwrap().push(Instant::now());
                        }
                        std::thread::sleep(Duration::from_millis(d.load(Ordering::SeqCst)));
                        (c.load(Ordering::SeqCst), String::new())
                    };
                    let _ = write!(
                        s,
                        "HTTP/1.1 {code} X\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                });
            }
        });
        Self {
            port,
            health_asked,
            code,
            delay_ms,
            work,
            running,
        }
    }
}

fn with_upstream(port: u16) -> impl FnOnce(&mut Config) {
    with_upstream_on(port, None)
}

/// A vLLM-like upstream on `port`, its probes' `httpGet.host` set to `host` when given.
fn with_upstream_on(port: u16, host: Option<&str>) -> impl FnOnce(&mut Config) {
    let host = host.map_or_else(String::new, |h| format!(r#", "host": "{h}""#));
    move |c: &mut Config| {
        common::fast(c);
        let json = format!(
            r#"{{"vllm": {{"livenessProbe": {{"httpGet": {{"path": "/health", "port": {port}{host}}}, "periodSeconds": 1}},
                        "readinessProbe": {{"httpGet": {{"path": "/health", "port": {port}{host}}}, "periodSeconds": 1}},
                        "metrics": "vllm"}}}}"#
        );
        c.upstreams = parse(&json, &c.expect, |_| None)
            .unwrap()
            .into_iter()
            .map(Arc::new)
            .collect();
    }
}

#[test]
fn probes_are_answered_from_the_latest_result() {
    let server = Server::start();
    let agent = Agent::start(with_upstream(server.port));
    agent.wait_for("/readyz/vllm", 200, "ok");
    agent.wait_for("/livez/vllm", 200, "ok");
    agent.wait_for("/startupz/vllm", 200, "ok");
    agent.wait_for("/readyz", 200, "ok");
    server.code.store(503, Ordering::SeqCst);
    agent.wait_for("/readyz/vllm", 503, "fail: probe_failed: status 503");
    agent.wait_for("/readyz", 503, "fail: vllm: probe_failed: status 503");
    // An upstream answering in 3 s with timeoutSeconds 1: the agent still answers at once.
    server.code.store(200, Ordering::SeqCst);
    server.delay_ms.store(3000, Ordering::SeqCst);
    agent.wait_for("/livez/vllm", 503, "fail: probe_failed: timeout");
    for _ in 0..20 {
        let started = Instant::now();
        let r = agent.get("/livez/vllm");
        assert_eq!(r.code, 503);
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "{:?}",
            started.elapsed()
        );
    }
    let unknown = agent.get("/livez/nobody");
    assert_eq!(unknown.code, 404);
    assert!(unknown.body.contains("vllm"), "{}", unknown.body);
}

/// The vLLM wiring above has liveness and readiness both `GET /health` every second: one
/// request a second answers both, so the server sees half the probe traffic. After the
/// first (at once), requests come on the agent's 1 s grid: two probers would send two
/// requests at each point, so the 2nd to 4th requests would span one period; shared, they
/// span two (a lower bound, which a slow machine can only lengthen).
#[test]
fn identical_probes_share_one_request_a_period() {
    let server = Server::start();
    let agent = Agent::start(with_upstream(server.port));
    agent.wait_for("/readyz/vllm", 200, "ok");
    agent.wait_for("/livez/vllm", 200, "ok");
    let asked = eventually("four /health requests", || {
        let a = server.health_asked.lock().unwrap().clone();
        (a.len() >= 4).then_some(a)
    });
    let span = asked[3] - asked[1];
    assert!(
        span >= Duration::from_millis(1800),
        "requests 2 to 4 in {span:?}: the two probes did not share their request"
    );
}

#[test]
fn a_busy_server_whose_work_stops_is_loop_stalled() {
    let server = Server::start();
    let agent = Agent::start(with_upstream(server.port));
    agent.wait_for("/livez/vllm", 200, "ok");
    server.running.store(1, Ordering::SeqCst);
    // Work moves: never stalled, however long it is busy.
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        server.work.fetch_add(1, Ordering::SeqCst);
        assert_eq!(agent.get("/livez/vllm").code, 200);
        std::thread::sleep(Duration::from_millis(50));
    }
    // Work stops while one request runs.
    agent.wait_for("/livez/vllm", 503, "fail: loop_stalled");
    let status = agent.status();
    let up = status["upstreams"]
        .as_array()
        .and_then(|a| a.iter().find(|u| u["name"] == "vllm"))
        .cloned()
        .unwrap_or_else(|| panic!("no upstream in /status: {status}"));
    assert_eq!(up["kind"], "upstream");
    assert_eq!(up["profile"], "vllm");
    assert_eq!(up["live"]["reason"], "loop_stalled");
    let m = eventually("upstream metrics", || {
        let m = agent.metrics();
        metric(&m, "vitals_worker_in_flight{worker=\"vllm\"}").map(|_| m)
    });
    assert_eq!(
        metric(&m, "vitals_worker_in_flight{worker=\"vllm\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric(&m, "vitals_worker_pending{worker=\"vllm\"}"),
        Some(0.0)
    );
    assert!(
        m.contains("vitals_upstream_probe_results_total{probe=\"liveness\",result=\"pass\",worker=\"vllm\"}"),
        "{m}"
    );
    assert!(
        m.contains("vitals_upstream_probe_duration_seconds_bucket"),
        "{m}"
    );
}

#[test]
fn upstream_metrics_pass_promtool_check() {
    let server = Server::start();
    let agent = Agent::start(with_upstream(server.port));
    agent.wait_for("/readyz/vllm", 200, "ok");
    server.running.store(2, Ordering::SeqCst);
    let text = eventually("the re-exported busy gauge", || {
        let m = agent.metrics();
        (metric(&m, "vitals_worker_in_flight{worker=\"vllm\"}") == Some(2.0)).then_some(m)
    });
    for name in [
        "vitals_upstream_probe_duration_seconds_bucket{probe=\"readiness\",worker=\"vllm\"",
        "vitals_upstream_probe_results_total{probe=\"liveness\",result=\"pass\",worker=\"vllm\"}",
        "vitals_worker_ready{worker=\"vllm\"} 1",
        "vitals_worker_pending{worker=\"vllm\"} 0",
    ] {
        assert!(text.contains(name), "{name} missing in {text}");
    }
    let (ok, report) = vitals_e2e::prom::promtool_check(&text);
    assert!(ok && report.trim().is_empty(), "promtool: {report}");
}

/// Busy with frozen work until the agent says `loop_stalled` (the scrapes reach the server).
fn assert_stall_seen(agent: &Agent, server: &Server) {
    agent.wait_for("/livez/vllm", 200, "ok");
    server.running.store(1, Ordering::SeqCst);
    agent.wait_for("/livez/vllm", 503, "fail: loop_stalled");
}

#[test]
fn the_default_listen_address_serves_ipv6_and_ipv4() {
    // Issue 21 item 4: IPv6-only clusters probe the pod's IPv6 address.
    let default = Config::defaults()
        .expect("the built-in defaults are valid")
        .listen;
    let agent = Agent::start(|c| c.listen = std::net::SocketAddr::new(default.ip(), 0));
    for ip in ["::1", "127.0.0.1"] {
        let addr = std::net::SocketAddr::new(ip.parse().unwrap(), agent.addr.port());
        let r = common::request(addr, "GET", "/livez", &[]);
        assert_eq!((r.code, r.body.as_str()), (200, "ok"), "{addr}");
        // `vitals-agent status` reaches it on either (its client is the agent's own).
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (_, doc) = rt
            .block_on(vitals_agent::surfaces::status::fetch(&format!(
                "http://{addr}"
            )))
            .unwrap_or_else(|e| panic!("status over {addr}: {e}"));
        assert_eq!(doc.agent.version, vitals_agent::VERSION);
    }
}

#[test]
fn an_upstream_on_an_ipv6_pod_ip_is_probed_and_scraped() {
    // POD_IP is the IPv6 address (here ::1, the server listening there only).
    let server = Server::start_on("[::1]:0");
    let agent = Agent::start(|c| {
        with_upstream(server.port)(c);
        c.pod_ip = Some("::1".parse().unwrap());
    });
    agent.wait_for("/readyz/vllm", 200, "ok");
    assert_stall_seen(&agent, &server);
}

#[test]
fn metrics_are_scraped_on_the_host_the_probe_uses() {
    // Issue 21 item 8: a llama.cpp-like server bound to 127.0.0.1 while POD_IP is set (here
    // ::1, where nothing listens): its probes carry `httpGet.host`, and so must the scrapes.
    let server = Server::start();
    let agent = Agent::start(|c| {
        with_upstream_on(server.port, Some("127.0.0.1"))(c);
        c.pod_ip = Some("::1".parse().unwrap());
    });
    agent.wait_for("/readyz/vllm", 200, "ok");
    assert_stall_seen(&agent, &server);
    let status = agent.status();
    assert_eq!(
        status["upstreams"][0]["metrics"]["scrape_error"],
        serde_json::Value::Null,
        "{status}"
    );
}

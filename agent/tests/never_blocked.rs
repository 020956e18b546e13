//! The probe port answers at once whatever workers and clients do: wedged and stopped
//! workers, 1000 kubelet-style probes, 500 connections gone quiet, a slow-loris
//! client, oversized headers, and a full connection cap (a new connection takes the
//! place of the oldest idle one).
//!
//! Latency bounds: the contract is "well under 10 ms"; `make bench` (agent/benches/footprint.rs,
//! on the release binary) reports p50/p99. Here, in a debug build on shared CI cores, the test
//! asserts p99 under 10 ms and the worst single probe under 100 ms, so that scheduler
//! noise does not fail it while a probe that waited on a worker (seconds) still would.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{assert_fast, Agent, PythonWorker, Worker, MAX_BOUND};
use nix::sys::signal::Signal;

/// A client that began a request and went quiet: the start of a request head, no more.
fn quiet_client(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /readyz HTTP/1.1\r\n").unwrap();
    s
}

fn timed_probe(addr: SocketAddr, path: &str) -> (Duration, u16) {
    let start = Instant::now();
    let r = common::request(addr, "GET", path, &[]);
    (start.elapsed(), r.code)
}

#[test]
fn probes_answer_at_once_with_a_wedged_connection_and_a_stopped_worker() {
    let agent = Agent::start(|_| {});
    // Wedged: connected, never writes.
    let _wedged = Worker::connect(&agent.socket);
    // Wedged after hello: says hello, then nothing.
    let _mute = agent.worker("mute", "i-1");
    // A worker process, then SIGSTOPped.
    let child = PythonWorker::start(&agent.socket, "model", None);
    agent.wait_for("/readyz/model", 200, "ok");
    child.signal(Signal::SIGSTOP);
    let paths = [
        "/readyz",
        "/livez",
        "/startupz",
        "/readyz/model",
        "/livez/mute",
    ];
    let times: Vec<Duration> = (0..1000)
        .map(|i| {
            let (took, code) = timed_probe(agent.addr, paths[i % paths.len()]);
            assert!(code == 200 || code == 503 || code == 404, "code {code}");
            took
        })
        .collect();
    assert_fast("1000 probes, wedged + stopped", times);
}

#[test]
fn idle_connections_and_a_slow_loris_do_not_starve_probes() {
    let agent = Agent::start(|_| {});
    // 500 idle connections the agent holds: clients that began a request and went quiet
    // (one that sends nothing at all stays the kernel's for a second, `listen::bind`).
    let idle: Vec<TcpStream> = (0..500).map(|_| quiet_client(agent.addr)).collect();
    // A slow loris: a header byte every 50 ms, never finishing.
    let addr = agent.addr;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let loris = std::thread::spawn({
        let stop = std::sync::Arc::clone(&stop);
        move || {
            let mut s = TcpStream::connect(addr).unwrap();
            let _ = s.write_all(b"GET /readyz HTTP/1.1\r\n");
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if s.write_all(b"X").is_err() {
                    return true; // the agent closed it: header read timeout
                }
                // The loris's pace is the behaviour under test, not a synchronisation.
                std::thread::sleep(Duration::from_millis(50));
            }
            false
        }
    });
    let times: Vec<Duration> = (0..300)
        .map(|_| {
            let (took, code) = timed_probe(agent.addr, "/livez");
            assert_eq!(code, 200);
            took
        })
        .collect();
    assert_fast("probes beside 500 idle + slow loris", times);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = loris.join();
    drop(idle);
}

#[test]
fn at_the_cap_a_new_connection_takes_the_place_of_the_oldest_idle_one() {
    let agent = Agent::start(|c| {
        c.max_connections = 16;
        c.header_timeout = Duration::from_millis(500);
    });
    let mut idle: Vec<TcpStream> = (0..16).map(|_| quiet_client(agent.addr)).collect();
    // The kernel's accept queue is FIFO (a connection joins it when its first bytes are
    // in): the agent takes all 16 before the probe's own connection, so the cap is full
    // when it arrives. It is still answered at once (issue
    // 21 item 14), and the oldest idle connection is the one closed to make room. (A
    // `?verbose` probe is served on a connection of its own; a plain kubelet probe is
    // answered in the accept loop and never takes a place.)
    let mut oldest = idle.remove(0);
    oldest
        .set_read_timeout(Some(Duration::from_millis(400)))
        .unwrap();
    let (took, code) = timed_probe(agent.addr, "/livez?verbose");
    assert_eq!(code, 200);
    assert!(took < MAX_BOUND, "{took:?}");
    let mut buf = [0u8; 16];
    assert_eq!(
        oldest.read(&mut buf).unwrap_or(1),
        0,
        "the oldest idle connection closed by the agent before the header timeout"
    );
    // The others are closed after the header timeout.
    for mut s in idle {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(
            s.read(&mut buf).unwrap_or(0),
            0,
            "idle connection closed by the agent"
        );
    }
    agent.wait_for("/livez", 200, "ok");
}

#[test]
fn oversized_headers_are_refused() {
    let agent = Agent::start(|_| {});
    let mut s = TcpStream::connect(agent.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let big = "a".repeat(64 * 1024);
    let _ = s.write_all(format!("GET /livez HTTP/1.1\r\nX-Big: {big}\r\n\r\n").as_bytes());
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 431"),
        "refused, got {:?}",
        text.lines().next()
    );
    assert_eq!(agent.get("/livez").code, 200);
}

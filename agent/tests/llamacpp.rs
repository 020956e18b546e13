//! A llama.cpp upstream (SPEC §8, issue 21 item 13) through a real agent, against the fake
//! llama.cpp of `vitals_e2e::fake_vllm` (engine-loop `/metrics`, `--api-key`, 6-digit
//! counters): a hung engine is `loop_stalled` busy or idle while `/health` passes, a
//! refused scrape is shown, counted and logged once without the secret, and a counter
//! printed too coarsely never makes a working engine look stalled.
//!
//! Bounds: `common::fast` (stall timeout 800 ms), scrapes every 100 ms with the agent's 1 s
//! scrape timeout; every wait is `common::DEADLINE` (10 s).
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{eventually, metric, Agent};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use vitals_agent::config::Config;
use vitals_core::upstreams::parse;
use vitals_e2e::client;
use vitals_e2e::fake_vllm::{serve_llamacpp, LlamaOptions};
use vitals_e2e::pod::free_addr;
use vitals_proto::env;

const KEY: &str = "s3cret-llama-key";

/// A fake llama.cpp on a loopback port of its own, already loaded.
struct Llama {
    addr: SocketAddr,
}

impl Llama {
    fn start(api_key: Option<&str>, counter_base: u64) -> Self {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let options = LlamaOptions {
            api_key: api_key.map(str::to_owned),
            counter_base,
            load_for: Some(Duration::ZERO),
            ..LlamaOptions::default()
        };
        std::thread::spawn(move || serve_llamacpp(l, options));
        Self { addr }
    }

    fn control(&self, path: &str) {
        let r = client::request_with(self.addr, "POST", path, None, Duration::from_secs(5), || {})
            .unwrap();
        assert_eq!(r.status, 200, "{path}");
    }
}

/// The upstreams JSON of a llama.cpp container on `port`; `metrics` is the metrics value.
fn upstreams_json(port: u16, metrics: &str) -> String {
    format!(
        r#"{{"llama": {{"livenessProbe": {{"httpGet": {{"path": "/health", "port": {port}}}, "periodSeconds": 1}},
                     "readinessProbe": {{"httpGet": {{"path": "/health", "port": {port}}}, "periodSeconds": 1}},
                     "metrics": {metrics}}}}}"#
    )
}

const WITH_KEY: &str = r#"{"profile": "llamacpp", "headers": [{"name": "Authorization", "valueFromEnv": "LLAMA_API_KEY", "prefix": "Bearer "}]}"#;

fn with_llama(port: u16, metrics: &'static str) -> impl FnOnce(&mut Config) {
    move |c: &mut Config| {
        common::fast(c);
        let env = |name: &str| (name == "LLAMA_API_KEY").then(|| KEY.to_owned());
        c.upstreams = parse(&upstreams_json(port, metrics), &c.expect, env)
            .unwrap()
            .into_iter()
            .map(Arc::new)
            .collect();
    }
}

fn upstream_status(agent: &Agent) -> serde_json::Value {
    agent.status()["upstreams"][0].clone()
}

#[test]
fn a_hung_engine_is_loop_stalled_idle_or_busy_until_a_scrape_answers() {
    let llama = Llama::start(None, 0);
    let agent = Agent::start(with_llama(llama.addr.port(), r#""llamacpp""#));
    agent.wait_for("/livez/llama", 200, "ok");
    agent.wait_for("/readyz/llama", 200, "ok");
    // Idle: no request runs, so no counter or gauge could ever show the hang; only the
    // unanswered scrapes do, while /health (the HTTP thread) still says ok.
    llama.control("/control/hang");
    agent.wait_for("/livez/llama", 503, "fail: loop_stalled");
    agent.wait_for("/readyz/llama", 503, "fail: loop_stalled");
    let up = upstream_status(&agent);
    assert_eq!(up["live"]["reason"], "loop_stalled", "{up}");
    assert!(
        up["probes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["result"]["ok"] == true),
        "the container's own probes pass meanwhile: {up}"
    );
    // It holds until a scrape is answered again.
    llama.control("/control/unhang");
    agent.wait_for("/livez/llama", 200, "ok");
    // Busy: the same, and it holds for as long as the hang lasts (issue 21 13a measured a
    // real llama.cpp passing again after ~3 s while still hung).
    llama.control("/control/busy?running=1&waiting=0");
    llama.control("/control/hang");
    agent.wait_for("/livez/llama", 503, "fail: loop_stalled");
    let held_from = Instant::now();
    while held_from.elapsed() < Duration::from_secs(3) {
        assert_eq!(agent.get("/livez/llama").code, 503, "still hung");
        std::thread::sleep(Duration::from_millis(100));
    }
    llama.control("/control/unhang");
    agent.wait_for("/livez/llama", 200, "ok");
}

#[test]
fn a_scrape_refused_for_credentials_is_shown_and_counted_and_headers_fix_it() {
    let llama = Llama::start(Some(KEY), 0);
    // No headers: every scrape is 401; hang detection from metrics is off, visibly.
    let agent = Agent::start(with_llama(llama.addr.port(), r#""llamacpp""#));
    agent.wait_for("/livez/llama", 200, "ok");
    let error = eventually("the 401 in /status", || {
        let e = upstream_status(&agent)["metrics"]["scrape_error"].clone();
        e.as_str().filter(|e| e.contains("401")).map(str::to_owned)
    });
    assert!(error.contains("headers"), "says what to fix: {error}");
    let counted = eventually("the 401s counted", || {
        metric(
            &agent.metrics(),
            "vitals_upstream_scrape_errors_total{reason=\"unauthorized\",worker=\"llama\"}",
        )
        .filter(|n| *n >= 2.0)
    });
    assert!(counted >= 2.0);
    let (ok, report) = vitals_e2e::prom::promtool_check(&agent.metrics());
    assert!(ok && report.trim().is_empty(), "promtool: {report}");
    drop(agent);
    // With the key from the environment: scrapes pass, and a hang is seen again.
    let agent = Agent::start(with_llama(llama.addr.port(), WITH_KEY));
    agent.wait_for("/livez/llama", 200, "ok");
    llama.control("/control/busy?running=2&waiting=0");
    eventually("the busy gauge re-exported", || {
        (metric(
            &agent.metrics(),
            "vitals_worker_in_flight{worker=\"llama\"}",
        ) == Some(2.0))
        .then_some(())
    });
    let up = upstream_status(&agent);
    assert!(up["metrics"]["scrape_error"].is_null(), "{up}");
    assert!(
        !up.to_string().contains(KEY),
        "the secret is not in /status"
    );
    llama.control("/control/hang");
    agent.wait_for("/livez/llama", 503, "fail: loop_stalled");
}

#[test]
fn a_refused_scrape_is_logged_once_and_the_secret_never() {
    let llama = Llama::start(Some(KEY), 0);
    let wrong = "wrong-key-never-logged";
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let mut child = common::agent_cmd()
        .args([
            "run",
            "--listen",
            &addr.to_string(),
            "--proc-interval",
            "100ms",
        ])
        .arg("--socket")
        .arg(dir.path().join("agent.sock"))
        .env(env::UPSTREAMS, upstreams_json(llama.addr.port(), WITH_KEY))
        .env("LLAMA_API_KEY", wrong)
        .env("RUST_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // At least ten scrapes refused (one per 100 ms), counted by the agent itself.
    eventually("ten refused scrapes", || {
        let page = client::get(addr, "/metrics", Duration::from_secs(1))
            .ok()?
            .text();
        metric(
            &page,
            "vitals_upstream_scrape_errors_total{reason=\"unauthorized\",worker=\"llama\"}",
        )
        .filter(|n| *n >= 10.0)
    });
    let status = client::get(addr, "/status", Duration::from_secs(1))
        .unwrap()
        .text();
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let mut log = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    child.wait().unwrap();
    let warned = log
        .lines()
        .filter(|l| l.contains("refuses the agent's scrapes"))
        .count();
    assert_eq!(warned, 1, "logged once:\n{log}");
    assert!(
        log.to_ascii_lowercase().contains("authorization"),
        "names the header it sent:\n{log}"
    );
    assert!(
        !log.contains(wrong),
        "the secret leaked into the log:\n{log}"
    );
    assert!(!status.contains(wrong), "the secret leaked into /status");
}

#[test]
fn counters_printed_with_six_digits_never_make_a_working_engine_loop_stalled() {
    // Past 1e8 steps llama.cpp prints `1.23457e+08`: at one decode step per 20 ms the
    // printed counters change once per 20 s, far beyond the 800 ms stall timeout.
    let llama = Llama::start(None, 123_456_789);
    let agent = Agent::start(with_llama(llama.addr.port(), r#""llamacpp""#));
    agent.wait_for("/livez/llama", 200, "ok");
    llama.control("/control/busy?running=1&waiting=0");
    eventually("the agent sees it busy", || {
        (upstream_status(&agent)["metrics"]["busy"] == 1.0).then_some(())
    });
    // Four stall timeouts of a busy engine whose printed counters do not change.
    let since = Instant::now();
    while since.elapsed() < Duration::from_millis(3200) {
        let r = agent.get("/livez/llama");
        assert_eq!(
            (r.code, r.body.as_str()),
            (200, "ok"),
            "at {:?}",
            since.elapsed()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // A real hang in the same state is still seen, by its unanswered scrapes.
    llama.control("/control/hang");
    agent.wait_for("/livez/llama", 503, "fail: loop_stalled");
}

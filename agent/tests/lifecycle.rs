//! Worker lifecycles over a real socket and a real port: what the kubelet sees.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{eventually, fast, metric, Agent, Worker};
use vitals_proto::{Phase, Reporter, ReporterConfig, WorkerName};

#[test]
fn loading_warming_ready_draining() {
    let agent = Agent::start(|c| c.expect = vec![WorkerName::parse("model").unwrap()]);
    agent.wait_for("/startupz", 503, "fail: model: not_connected");
    agent.wait_for("/readyz/model", 503, "fail: not_connected");
    assert_eq!(
        agent.get("/livez/model").body,
        "ok",
        "never seen: live passes"
    );
    assert_eq!(agent.get("/livez").body, "ok");

    let mut w = agent.worker("model", "i-1");
    w.loading(10);
    w.beat(1);
    agent.wait_for("/readyz/model", 503, "fail: phase: loading");
    // SPEC §2: started once connected and live; the load itself is liveness' business.
    agent.wait_for("/startupz/model", 200, "ok");
    agent.wait_for("/startupz", 200, "ok");
    agent.wait_for("/readyz", 503, "fail: model: phase: loading");
    assert_eq!(agent.get("/livez/model").body, "ok");
    let status = agent.status();
    let inst = &status["workers"][0]["instance"];
    assert_eq!(inst["progress"]["done"], 10);
    assert_eq!(inst["pid"], std::process::id());

    w.phase("warming");
    agent.wait_for("/readyz/model", 503, "fail: phase: warming");
    w.phase("ready");
    agent.wait_for("/readyz/model", 200, "ok");
    agent.wait_for("/startupz/model", 200, "ok");
    agent.wait_for("/startupz", 200, "ok");
    agent.wait_for("/readyz", 200, "ok");

    w.phase("draining");
    agent.wait_for("/readyz/model", 503, "fail: phase: draining");
    assert_eq!(agent.get("/livez/model").code, 200);
    assert_eq!(agent.get("/startupz/model").code, 200);

    let verbose = agent.get("/readyz/model?verbose");
    assert_eq!(
        verbose.body,
        "[+]connected ok\n[+]live ok\n[-]phase failed: phase: draining\nreadyz check failed\n"
    );
    let json = agent.request("GET", "/readyz", &[("Accept", "application/json")]);
    let doc: serde_json::Value = serde_json::from_str(&json.body).unwrap();
    assert_eq!(doc["status"], "fail");
    assert_eq!(
        doc["checks"],
        serde_json::json!([
            {"name": "_agent", "ok": true, "reason": null},
            {"name": "model", "ok": false, "reason": "phase: draining"},
        ])
    );
    let m = agent.metrics();
    assert_eq!(
        metric(
            &m,
            "vitals_worker_phase{phase=\"draining\",worker=\"model\"}"
        ),
        Some(1.0)
    );
    assert!(metric(&m, "vitals_worker_startup_seconds{worker=\"model\"}").is_some());
}

#[test]
fn failed_is_terminal_until_a_new_instance() {
    let agent = Agent::start(|_| {});
    let mut w = agent.worker("model", "i-1");
    w.phase("ready");
    agent.wait_for("/readyz/model", 200, "ok");
    w.phase("failed");
    agent.wait_for("/livez/model", 503, "fail: failed");
    assert_eq!(agent.get("/readyz/model").body, "fail: failed");
    w.phase("ready");
    w.beat(1);
    // The phase after failed is ignored: poll a few times to see it stays failed.
    let until = Instant::now() + Duration::from_millis(200);
    while Instant::now() < until {
        assert_eq!(agent.get("/livez/model").body, "fail: failed");
    }
    drop(w);
    let mut w2 = agent.worker("model", "i-2");
    w2.phase("ready");
    agent.wait_for("/livez/model", 200, "ok");
    agent.wait_for("/readyz/model", 200, "ok");
    let status = agent.status();
    assert_eq!(status["workers"][0]["restarts"], 1);
}

#[test]
fn heartbeats_stopping_fail_liveness() {
    let agent = Agent::start(fast);
    let mut w = agent.worker("model", "i-1");
    w.phase("ready");
    w.beat(1);
    agent.wait_for("/readyz/model", 200, "ok");
    // No more heartbeats: after --hang-timeout liveness fails, readiness follows.
    let r = agent.wait_for("/livez/model", 503, "fail: heartbeat_timeout");
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(agent.get("/readyz/model").body, "fail: heartbeat_timeout");
    let status = agent.status();
    let diag = status["workers"][0]["diagnosis"]
        .as_str()
        .unwrap_or("none")
        .to_owned();
    assert!(
        ["blocked", "spinning"].contains(&diag.as_str()),
        "diagnosis {diag}"
    );
    eventually("hang counted", || {
        let m = agent.metrics();
        (metric(
            &m,
            "vitals_worker_hangs_total{reason=\"heartbeat_timeout\",worker=\"model\"}",
        ) == Some(1.0))
        .then_some(())
    });
    // Heartbeats again: live again.
    w.beat(2);
    agent.wait_for("/livez/model", 200, "ok");
}

#[test]
fn frozen_progress_is_loop_stalled() {
    let agent = Agent::start(fast);
    let mut w = agent.worker("model", "i-1");
    w.phase("ready");
    let start = Instant::now();
    let mut failed_at = None;
    // Heartbeats keep coming but progress never moves; the sleep is the worker's heartbeat
    // period, part of the scenario.
    while start.elapsed() < common::DEADLINE {
        w.beat(7);
        if agent.get("/livez/model").body == "fail: loop_stalled" {
            failed_at = Some(start.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let at = failed_at.expect("loop_stalled reported");
    assert!(
        at >= Duration::from_millis(800),
        "not before the stall timeout: {at:?}"
    );
    w.beat(8);
    agent.wait_for("/livez/model", 200, "ok");
}

#[test]
fn a_stuck_load_is_load_stalled_but_a_moving_one_is_live() {
    let agent = Agent::start(fast);
    let mut w = agent.worker("model", "i-1");
    // Slow but moving: live for well past the load-stall timeout (the sleeps below are the
    // worker's pace, part of the scenario).
    let start = Instant::now();
    let mut done = 0;
    while start.elapsed() < Duration::from_millis(2000) {
        done += 1;
        w.loading(done);
        w.beat(done);
        assert_eq!(
            agent.get("/livez/model").body,
            "ok",
            "a moving load is live"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Stuck: heartbeats continue, done does not move.
    let r = eventually("load_stalled", || {
        w.beat(done);
        let r = agent.get("/livez/model");
        std::thread::sleep(Duration::from_millis(50));
        (r.body == "fail: load_stalled").then_some(r)
    });
    assert_eq!(r.code, 503);
}

#[test]
fn a_check_gates_readiness_and_comes_back() {
    let agent = Agent::start(|_| {});
    let mut w = agent.worker("model", "i-1");
    w.phase("ready");
    w.check("device", true, "cpu");
    agent.wait_for("/readyz/model", 200, "ok");
    w.check("tokenizer", false, "file missing");
    agent.wait_for("/readyz/model", 503, "fail: check: tokenizer: file missing");
    assert_eq!(
        agent.get("/livez/model").body,
        "ok",
        "checks never fail liveness"
    );
    assert_eq!(
        agent.get("/readyz/model?verbose").body,
        "[+]connected ok\n[+]live ok\n[+]phase ok\n[+]check:device ok\n[-]check:tokenizer failed: check: tokenizer: file missing\nreadyz check failed\n"
    );
    w.check("tokenizer", true, "loaded");
    agent.wait_for("/readyz/model", 200, "ok");
}

#[test]
fn a_second_live_connection_is_name_in_use() {
    let agent = Agent::start(|_| {});
    let mut first = agent.worker("model", "i-1");
    first.phase("ready");
    agent.wait_for("/readyz/model", 200, "ok");
    let mut second = Worker::connect(&agent.socket);
    second.line(&common::hello_line("model", "i-2"));
    second.expect_error("name_in_use");
    eventually("name_in_use counted", || {
        metric(
            &agent.metrics(),
            "vitals_protocol_errors_total{code=\"name_in_use\"}",
        )
        .filter(|v| *v == 1.0)
    });
    // The first connection is untouched.
    assert_eq!(agent.get("/readyz/model").body, "ok");
    // Once it closes, the name is free at once (its pending EOF counts).
    drop(first);
    let mut third = agent.worker("model", "i-1");
    third.beat(1);
    agent.wait_for("/readyz/model", 200, "ok");
}

#[test]
fn a_reconnect_of_the_same_instance_continues() {
    let agent = Agent::start(|_| {});
    let mut w = agent.worker("model", "i-1");
    w.phase("ready");
    w.check("device", true, "cpu");
    agent.wait_for("/readyz/model", 200, "ok");
    drop(w);
    agent.wait_for("/readyz/model", 503, "fail: not_connected");
    assert_eq!(
        agent.get("/startupz/model").body,
        "ok",
        "process still there"
    );
    // Same instance: phase and checks carry over, no restart counted.
    let _w = agent.worker("model", "i-1");
    agent.wait_for("/readyz/model", 200, "ok");
    let status = agent.status();
    assert_eq!(status["workers"][0]["restarts"], 0);
    assert_eq!(status["workers"][0]["instance"]["connections"], 2);
}

#[test]
fn the_reporter_client_drives_the_agent() {
    let agent = Agent::start(|c| c.expect = vec![WorkerName::parse("model").unwrap()]);
    let mut cfg = ReporterConfig::new(&agent.socket, WorkerName::parse("model").unwrap(), "1.0");
    cfg.heartbeat = Duration::from_millis(50);
    let reporter = Reporter::start(cfg).expect("reporter");
    reporter.set_phase(Phase::Loading, "weights", None);
    agent.wait_for("/readyz/model", 503, "fail: phase: loading");
    reporter.set_check("device", true, "cpu");
    reporter.set_phase(Phase::Ready, "serving", None);
    agent.wait_for("/readyz", 200, "ok");
    agent.wait_for("/startupz", 200, "ok");
    let counters = reporter.counters();
    counters.tick();
    eventually("progress exported", || {
        metric(
            &agent.metrics(),
            "vitals_worker_progress_total{worker=\"model\"}",
        )
        .filter(|v| *v >= 1.0)
    });
    drop(reporter);
    agent.wait_for("/readyz", 503, "fail: model: not_connected");
}

#[test]
fn http_surface_paths_methods_and_head() {
    let agent = Agent::start(|c| c.expect = vec![WorkerName::parse("model").unwrap()]);
    let _w = agent.worker("extra", "i-1");
    let r = agent.get("/readyz/nope");
    assert_eq!(r.code, 404);
    assert_eq!(
        r.body,
        "unknown worker \"nope\"; known workers: extra, model\n"
    );
    assert_eq!(agent.get("/nothing").code, 404);
    assert_eq!(
        agent.request("POST", "/nothing", &[]).code,
        404,
        "paths before methods"
    );
    let r = agent.request("POST", "/livez", &[]);
    assert_eq!(r.code, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
    assert_eq!(agent.request("DELETE", "/metrics", &[]).code, 405);
    let get = agent.get("/readyz");
    let head = agent.request("HEAD", "/readyz", &[]);
    assert_eq!((head.code, head.body.as_str()), (get.code, ""));
    assert_eq!(head.header("content-length"), get.header("content-length"));
    assert_eq!(head.header("cache-control"), Some("no-store"));
    let json = agent.get("/livez/model?format=json");
    assert_eq!(json.header("content-type"), Some("application/json"));
    assert_eq!(
        json.body,
        r#"{"checks":[{"name":"live","ok":true,"reason":null}],"status":"pass"}"#
    );
    assert_eq!(
        agent.get("/startupz?verbose").body,
        "[+]_agent ok\n[-]model failed: not_connected\nstartupz check failed\n"
    );
    assert_eq!(
        agent.get("/livez?verbose").body,
        "[+]_agent ok\nlivez check passed\n"
    );
    assert_eq!(agent.status()["agent"]["version"], vitals_agent::VERSION);
}

#[test]
fn with_nothing_expected_startup_passes() {
    let agent = Agent::start(|_| {});
    assert_eq!(agent.get("/startupz").body, "ok");
    assert_eq!(agent.get("/readyz").body, "ok");
}

#[test]
fn shutdown_fails_readiness_at_once_and_keeps_answering_for_the_grace() {
    let agent = Agent::start(|c| c.shutdown_grace = Duration::from_millis(1500));
    let mut w = agent.worker("model", "i-1");
    w.phase("ready");
    agent.wait_for("/readyz", 200, "ok");
    let signalled = Instant::now();
    agent.signal_shutdown();
    agent.wait_for("/readyz", 503, "fail: shutting_down");
    assert!(signalled.elapsed() < Duration::from_millis(500), "at once");
    assert_eq!(agent.get("/startupz").body, "fail: shutting_down");
    assert_eq!(agent.get("/livez").body, "ok");
    assert_eq!(
        agent.get("/readyz/model").body,
        "ok",
        "per-worker verdicts unchanged"
    );
    assert_eq!(agent.get("/metrics").code, 200);
    assert_eq!(agent.status()["agent"]["shutting_down"], true);
    let socket = agent.socket.clone();
    assert!(socket.exists());
    agent.stop().expect("run returns Ok");
    assert!(
        signalled.elapsed() >= Duration::from_millis(1500),
        "answered for the grace"
    );
    assert!(!socket.exists(), "socket file removed on exit");
}

/// `agent` is a legal container name (SPEC §1's name rule): such a container's verdicts must
/// be told apart from the agent's own everywhere they are rendered.
mod a_container_named_agent {
    use super::*;

    fn expecting_agent(tweak: impl FnOnce(&mut vitals_agent::config::Config)) -> Agent {
        Agent::start(|c| {
            c.expect = vec![WorkerName::parse("agent").unwrap()];
            tweak(c);
        })
    }

    #[test]
    fn is_named_in_the_aggregates_reason() {
        let agent = expecting_agent(|_| {});
        let readyz = agent.get("/readyz");
        eprintln!("GET /readyz: {} {:?}", readyz.code, readyz.body);
        assert_eq!(readyz.body, "fail: agent: not_connected");
        assert_eq!(agent.get("/startupz").body, "fail: agent: not_connected");
    }

    #[test]
    fn has_its_own_verbose_line() {
        let agent = expecting_agent(|_| {});
        let verbose = agent.get("/readyz?verbose").body;
        eprintln!("GET /readyz?verbose:\n{verbose}");
        assert_eq!(
            verbose,
            "[+]_agent ok\n[-]agent failed: not_connected\nreadyz check failed\n"
        );
        let json = agent.get("/readyz?format=json").body;
        let doc: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(
            doc["checks"],
            serde_json::json!([
                {"name": "_agent", "ok": true, "reason": null},
                {"name": "agent", "ok": false, "reason": "not_connected"},
            ])
        );
    }

    #[test]
    fn has_its_own_probe_series() {
        let agent = expecting_agent(|_| {});
        for _ in 0..3 {
            assert_eq!(agent.get("/livez").code, 200);
        }
        for _ in 0..5 {
            assert_eq!(agent.get("/livez/agent").code, 200);
        }
        let m = agent.metrics();
        let count = |target: &str| {
            let series = format!(
                "vitals_probe_requests_total{{probe=\"livez\",result=\"pass\",target=\"{target}\"}}"
            );
            metric(&m, &series)
        };
        eprintln!(
            "probe_requests_total livez pass: _agent={:?} agent={:?}",
            count("_agent"),
            count("agent")
        );
        assert_eq!((count("_agent"), count("agent")), (Some(3.0), Some(5.0)));
    }

    #[test]
    fn stalled_is_one_transition_not_one_per_tick() {
        let agent = expecting_agent(fast);
        let mut w = agent.worker("agent", "i-1");
        w.phase("ready");
        // Heartbeats keep coming, progress never moves: loop_stalled, then a steady state.
        eventually("loop_stalled", || {
            w.beat(7);
            std::thread::sleep(Duration::from_millis(50));
            (agent.get("/livez/agent").body == "fail: loop_stalled").then_some(())
        });
        // The ticker logged the failure.
        vitals_e2e::wait::until("loop_stalled logged", common::DEADLINE, || {
            let transitions = agent.status()["transitions"].clone();
            let logged = transitions.as_array().unwrap().iter().any(|t| {
                t["target"] == "agent" && t["probe"] == "livez" && t["to"] == "fail: loop_stalled"
            });
            if logged {
                Ok(())
            } else {
                Err(transitions)
            }
        });
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis();
        // Five seconds of the same verdicts (the heartbeats are the worker's, part of the
        // scenario: the ticker runs once a second).
        let steady = Instant::now();
        while steady.elapsed() < Duration::from_secs(5) {
            w.beat(7);
            std::thread::sleep(Duration::from_millis(200));
        }
        assert_eq!(agent.get("/livez/agent").body, "fail: loop_stalled");
        let status = agent.status();
        let during = status["transitions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| u128::from(t["at_unix_ms"].as_u64().unwrap()) >= since)
            .count();
        eprintln!("transitions logged in 5 s of a steady state: {during}");
        assert_eq!(during, 0, "{:#}", status["transitions"]);
    }
}

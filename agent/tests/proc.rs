//! /proc-based verdicts with real worker processes: the SO_PEERCRED pid is the
//! connecting process, so each scripted worker is a child (`python3`, the toolkit's
//! `PythonWorker`) that connects, says hello and heartbeats in a loop, and that the test
//! stops, resumes or kills. Without python3 these tests fail.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{fast, Agent, PythonWorker};
use nix::sys::signal::Signal;

#[test]
fn a_stopped_worker_is_stopped_and_recovers_without_flapping() {
    let agent = Agent::start(fast);
    let child = PythonWorker::start(&agent.socket, "model", None);
    agent.wait_for("/readyz/model", 200, "ok");
    let status = agent.status();
    assert_eq!(
        status["workers"][0]["instance"]["pid"],
        child.pid(),
        "SO_PEERCRED pid"
    );

    child.signal(Signal::SIGSTOP);
    agent.wait_for("/livez/model", 503, "fail: stopped");
    let status = agent.status();
    assert_eq!(status["workers"][0]["instance"]["proc"]["state"], "T");

    child.signal(Signal::SIGCONT);
    agent.wait_for("/livez/model", 200, "ok");
    // No flapping back to stopped while the old T sample is still the latest: the sleep
    // spaces the probes over half a second, the time under test, not a synchronisation.
    for _ in 0..50 {
        assert_eq!(agent.get("/livez/model").body, "ok");
        std::thread::sleep(Duration::from_millis(10));
    }
    agent.wait_for("/readyz/model", 200, "ok");
}

#[test]
fn a_killed_worker_is_gone_and_live_passes() {
    let agent = Agent::start(fast);
    let mut child = PythonWorker::start(&agent.socket, "model", None);
    agent.wait_for("/readyz/model", 200, "ok");
    child.kill();
    agent.wait_for("/readyz/model", 503, "fail: not_connected");
    common::eventually("pid gone", || {
        (agent.status()["workers"][0]["instance"]["proc"]["process"] == "gone").then_some(())
    });
    assert_eq!(
        agent.get("/livez/model").body,
        "ok",
        "the kubelet restarts exited containers"
    );
    assert_eq!(agent.get("/startupz/model").body, "fail: not_connected");
}

#[test]
fn a_worker_that_closes_its_socket_but_lives_on_is_silent() {
    let agent = Agent::start(fast);
    let _child = PythonWorker::start(&agent.socket, "model", Some(5));
    agent.wait_for("/readyz/model", 503, "fail: not_connected");
    agent.wait_for("/livez/model", 503, "fail: silent");
}

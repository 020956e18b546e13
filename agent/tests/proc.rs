//! /proc-based verdicts with real worker processes: the SO_PEERCRED pid is the
//! connecting process, so each scripted worker is a child (`python3`, the toolkit's
//! `PythonWorker`) that connects, says hello and heartbeats in a loop, and that the test
//! stops, resumes or kills. Without python3 these tests fail.
//!
//! And an upstream's process found the way a real pod allows (SPEC §8): the agent binary
//! as uid 65532 without capabilities, the server as root, each "container" in a cgroup of
//! its own. Needs root, `setpriv` (util-linux) and cgroup v2; without them it fails.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use common::{fast, metric, try_request, Agent, PythonWorker, DEADLINE};
use nix::sys::signal::Signal;
use vitals_e2e::cgroup::Container;

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

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// Waits until `path` answers `code` with `body`.
#[track_caller]
fn wait_for(addr: SocketAddr, path: &str, code: u16, body: &str) {
    vitals_e2e::wait::until(
        &format!("{path}: {code} {body:?}"),
        DEADLINE,
        || match try_request(addr, "GET", path, &[]) {
            Some(r) if r.code == code && r.body == body => Ok(()),
            other => Err(other),
        },
    );
}

fn status(addr: SocketAddr) -> serde_json::Value {
    let body = try_request(addr, "GET", "/status", &[]).map(|r| r.body);
    serde_json::from_str(&body.unwrap_or_default()).unwrap_or_default()
}

fn upstream(status: &serde_json::Value, name: &str) -> serde_json::Value {
    status["upstreams"]
        .as_array()
        .and_then(|list| list.iter().find(|u| u["name"] == name))
        .cloned()
        .unwrap_or_default()
}

/// The pod of issue 21: a root server (`python3 -m http.server`), a root log shipper and an
/// istio-like proxy (uid 1337) each in a container of its own, and the agent as uid 65532
/// with no capabilities, so the server's fds are unreadable to it. The server's entry
/// records its command line and is found; a second entry on the same port without one
/// cannot tell the two root containers apart and says so (`/status`, the metric).
#[test]
fn an_unprivileged_agent_finds_a_root_server_beside_other_containers() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test runs the server as root and the agent as 65532: run it as root"
    );
    let web_root = tempfile::tempdir().expect("tempdir");
    let port = free_port().to_string();
    let server = Container::start(
        "server",
        &[
            "python3",
            "-m",
            "http.server",
            &port,
            "--bind",
            "127.0.0.1",
            "--directory",
        ]
        .into_iter()
        .chain([web_root.path().to_str().expect("utf-8 temp path")])
        .collect::<Vec<_>>(),
    );
    let _neighbours = Container::neighbours();
    let probe = format!(r#"{{"httpGet": {{"path": "/", "port": {port}}}, "periodSeconds": 1}}"#);
    let upstreams = format!(
        r#"{{"server": {{"livenessProbe": {probe}, "readinessProbe": {probe},
                         "process": {{"cmdline": ["python3", "-m", "http.server", "{port}"]}}}},
             "unrecorded": {{"readinessProbe": {probe}}}}}"#
    );
    let run = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(
        run.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .expect("chmod");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let agent = Container::start(
        "agent",
        &[
            "setpriv",
            "--reuid",
            "65532",
            "--regid",
            "65532",
            "--clear-groups",
            env!("CARGO_BIN_EXE_vitals-agent"),
            "run",
            "--listen",
            &addr.to_string(),
            "--socket",
            &run.path().join("agent.sock").display().to_string(),
            "--hang-timeout",
            "800ms",
            "--d-state-timeout",
            "800ms",
            "--proc-interval",
            "100ms",
            "--shutdown-grace",
            "0s",
            "--upstreams",
            &upstreams,
        ],
    );
    let found = vitals_e2e::wait::until("the server's process found", DEADLINE, || {
        let u = upstream(&status(addr), "server");
        match (u["proc"]["pid"].as_u64(), u["proc"]["found_by"].as_str()) {
            (Some(pid), Some(by)) => Ok((pid, by.to_owned())),
            _ => Err(u["proc"].clone()),
        }
    });
    assert_eq!(
        found,
        (u64::from(server.pid()), "cgroup".to_owned()),
        "found by its container, not its fds"
    );
    // It answers, so setpriv has exec'd the agent: check what it runs as.
    let own = std::fs::read_to_string(format!("/proc/{}/status", agent.pid())).expect("status");
    assert!(own.contains("Uid:\t65532\t65532\t65532\t65532"), "{own}");
    assert!(own.contains("CapEff:\t0000000000000000"), "{own}");
    // The server is found by its command line even before it listens (SPEC §12's load
    // progress); the container without one only once the socket's uid narrows it.
    vitals_e2e::wait::until("the unrecorded container's reason", DEADLINE, || {
        let why = upstream(&status(addr), "unrecorded")["proc"]["off_reason"].clone();
        if why.as_str().is_some_and(|w| {
            w.contains("candidate containers match its uid; no command line recorded")
        }) {
            Ok(())
        } else {
            Err(why)
        }
    });
    let metrics = try_request(addr, "GET", "/metrics", &[])
        .map(|r| r.body)
        .unwrap_or_default();
    assert_eq!(
        metric(&metrics, r#"vitals_upstream_proc_watched{worker="server"}"#),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &metrics,
            r#"vitals_upstream_proc_watched{worker="unrecorded"}"#
        ),
        Some(0.0)
    );

    wait_for(addr, "/livez/server", 200, "ok");
    server.signal(Signal::SIGSTOP);
    wait_for(addr, "/livez/server", 503, "fail: stopped");
    wait_for(addr, "/readyz/server", 503, "fail: stopped");
    server.signal(Signal::SIGCONT);
    wait_for(addr, "/livez/server", 200, "ok");
    server.signal(Signal::SIGKILL);
    wait_for(addr, "/readyz/server", 503, "fail: process_gone");
}

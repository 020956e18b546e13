//! /proc-based verdicts with real worker processes: the SO_PEERCRED pid is the
//! connecting process, so each scripted worker is a child (`python3`) that connects,
//! says hello and heartbeats in a loop, and that the test stops, resumes or kills.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{fast, Agent};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// A python worker: hello, ready, a heartbeat every 50 ms with moving progress. With
/// `close_after` it closes the socket after that many heartbeats but keeps running.
fn python_worker(agent: &Agent, name: &str, close_after: Option<u32>) -> Option<Child> {
    let script = r#"
import json, os, socket, sys, time
path, name, close_after = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(path)
def send(m): s.sendall((json.dumps(m) + "\n").encode())
send({"type": "hello", "v": 1, "worker": name, "instance": "py-%d" % os.getpid(),
      "pid": os.getpid(), "version": "py", "heartbeat_ms": 50})
s.recv(4096)
send({"type": "phase", "phase": "ready", "detail": "scripted"})
i = 0
while True:
    i += 1
    send({"type": "heartbeat", "seq": i, "progress": i, "pending": 0, "in_flight": 0})
    if close_after and i >= close_after:
        s.close()
        time.sleep(1000)
    time.sleep(0.05)
"#;
    let child = Command::new("python3")
        .args(["-c", script])
        .arg(&agent.socket)
        .arg(name)
        .arg(close_after.unwrap_or(0).to_string())
        .stdin(Stdio::null())
        .spawn();
    match child {
        Ok(c) => Some(c),
        Err(e) => {
            eprintln!("SKIPPED: python3 not available ({e}); /proc scenarios not run");
            None
        }
    }
}

struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn signal(child: &Child, sig: Signal) {
    kill(Pid::from_raw(i32::try_from(child.id()).unwrap()), sig).expect("signal child");
}

#[test]
fn a_stopped_worker_is_stopped_and_recovers_without_flapping() {
    let agent = Agent::start(fast);
    let Some(child) = python_worker(&agent, "model", None) else {
        return;
    };
    let child = Reaped(child);
    agent.wait_for("/readyz/model", 200, "ok");
    let status = agent.status();
    assert_eq!(
        status["workers"][0]["instance"]["pid"],
        child.0.id(),
        "SO_PEERCRED pid"
    );

    signal(&child.0, Signal::SIGSTOP);
    agent.wait_for("/livez/model", 503, "fail: stopped");
    let status = agent.status();
    assert_eq!(status["workers"][0]["instance"]["proc"]["state"], "T");

    signal(&child.0, Signal::SIGCONT);
    agent.wait_for("/livez/model", 200, "ok");
    // No flapping back to stopped while the old T sample is still the latest.
    for _ in 0..50 {
        assert_eq!(agent.get("/livez/model").body, "ok");
        std::thread::sleep(Duration::from_millis(10));
    }
    agent.wait_for("/readyz/model", 200, "ok");
}

#[test]
fn a_killed_worker_is_gone_and_live_passes() {
    let agent = Agent::start(fast);
    let Some(child) = python_worker(&agent, "model", None) else {
        return;
    };
    let mut child = Reaped(child);
    agent.wait_for("/readyz/model", 200, "ok");
    child.0.kill().unwrap();
    child.0.wait().unwrap();
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
    let Some(child) = python_worker(&agent, "model", Some(5)) else {
        return;
    };
    let _child = Reaped(child);
    agent.wait_for("/readyz/model", 503, "fail: not_connected");
    agent.wait_for("/livez/model", 503, "fail: silent");
}

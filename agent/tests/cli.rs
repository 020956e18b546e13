//! The `vitals-agent` binary: flags and `VITALS_*` env, bad values, SIGTERM, the
//! socket file's life, JSON logs, and `vitals-agent status`.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use common::{agent_cmd, eventually, Agent, Worker};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use vitals_e2e::pod::free_addr;
use vitals_proto::env;

fn output(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = agent_cmd();
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

#[test]
fn bad_values_exit_non_zero_with_a_clear_message() {
    for (args, env, needle) in [
        (&["run", "--hang-timeout", "10"][..], &[][..], "unit"),
        (
            &["run"],
            &[(env::STALL_TIMEOUT, "soon")][..],
            "stall-timeout",
        ),
        (
            &["run", "--proc-interval", "0s"],
            &[],
            "--proc-interval must be greater than zero",
        ),
        (&["run", "--expect", "Bad_Name"], &[], "lowercase"),
        (&["run", "--socket-mode", "999"], &[], "octal"),
        (&["run", "--log-format", "xml"], &[], "xml"),
        (&["run"], &[(env::LISTEN, "nowhere")][..], "listen"),
        // A bad value from the environment names its variable, not only the flag.
        (
            &["run"],
            &[(env::STALL_TIMEOUT, "soon")][..],
            env::STALL_TIMEOUT,
        ),
        (&["run"], &[(env::GROUP_SIZE, "three")][..], env::GROUP_SIZE),
        (
            &["run"],
            &[(env::PROC_INTERVAL, "0s")][..],
            env::PROC_INTERVAL,
        ),
        (&["frobnicate"], &[], "frobnicate"),
    ] {
        let out = output(args, env);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?} {env:?}: {stderr}");
        assert!(
            stderr.contains(needle),
            "{args:?}: {needle:?} not in {stderr}"
        );
    }
}

#[test]
fn help_names_every_flag_its_env_var_and_default() {
    let out = output(&["run", "--help"], &[]);
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "listen",
        "socket",
        "socket-mode",
        "expect",
        "hang-timeout",
        "stall-timeout",
        "load-stall-timeout",
        "d-state-timeout",
        "proc-interval",
        "shutdown-grace",
        "log-format",
        "max-connections",
        "header-timeout",
    ] {
        assert!(help.contains(&format!("--{flag}")), "--{flag} in help");
        let env = format!("VITALS_{}", flag.to_uppercase().replace('-', "_"));
        assert!(help.contains(&env), "{env} in help");
    }
    assert!(help.contains("[default: 10s]"));
    assert!(help.contains("[default: [::]:9180]"));
    assert!(help.contains("[default: /run/vitals/agent.sock]"));
}

struct Running {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_agent(socket: &Path, extra_env: &[(&str, &str)]) -> Running {
    let addr = free_addr();
    let mut c = agent_cmd();
    c.arg("run")
        .env(env::LISTEN, addr.to_string())
        .env(env::SOCKET, socket)
        .stderr(Stdio::piped());
    for (k, v) in extra_env {
        c.env(k, v);
    }
    let child = c.spawn().unwrap();
    let running = Running { child, addr };
    eventually("agent answering", || {
        common::try_request(addr, "GET", "/livez", &[]).filter(|r| r.code == 200)
    });
    running
}

#[test]
fn env_config_sigterm_grace_exit_zero_and_socket_removed() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("nested/run/agent.sock");
    let mut agent = spawn_agent(
        &socket,
        &[
            (env::EXPECT, "alpha,beta"),
            (env::SHUTDOWN_GRACE, "700ms"),
            (env::SOCKET_MODE, "0600"),
            (env::LOG_FORMAT, "json"),
        ],
    );
    let addr = agent.addr;
    let get = |path: &str| common::request(addr, "GET", path, &[]);
    assert_eq!(get("/startupz").body, "fail: alpha: not_connected");
    assert_eq!(get("/readyz/beta").body, "fail: not_connected");
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let _w = Worker::hello(&socket, "alpha", "i-1");

    kill(
        Pid::from_raw(i32::try_from(agent.child.id()).unwrap()),
        Signal::SIGTERM,
    )
    .unwrap();
    let signalled = Instant::now();
    eventually("readiness failing", || {
        (get("/readyz").body == "fail: shutting_down").then_some(())
    });
    assert_eq!(get("/startupz").body, "fail: shutting_down");
    assert_eq!(get("/livez").code, 200);
    let status = agent.child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(
        signalled.elapsed() >= Duration::from_millis(700),
        "kept answering for the grace"
    );
    assert!(!socket.exists(), "socket removed on exit");
    // Every log line is a JSON object.
    let stderr = agent.child.stderr.take().unwrap();
    let lines: Vec<String> = BufReader::new(stderr)
        .lines()
        .map_while(Result::ok)
        .collect();
    assert!(!lines.is_empty());
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v.get("level").is_some(), "{line}");
    }
    assert!(lines.iter().any(|l| l.contains("shutdown signal received")));
}

#[test]
fn a_stale_socket_is_replaced_and_a_live_one_refused() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    // Stale: a socket file nobody listens on (a crashed agent's).
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());
    let first = spawn_agent(&socket, &[]);
    let _w = Worker::hello(&socket, "model", "i-1");
    // A second agent on the same socket must refuse to start, and leave it alone.
    let out = output(
        &["run", "--listen", "127.0.0.1:0"],
        &[(env::SOCKET, socket.to_str().unwrap())],
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("another agent is already listening"),
        "{stderr}"
    );
    assert!(socket.exists());
    let _w2 = Worker::hello(&socket, "other", "i-1");
    drop(first);
}

#[test]
fn something_else_in_the_way_is_not_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    std::fs::write(&socket, "precious").unwrap();
    let out = output(
        &["run", "--listen", "127.0.0.1:0"],
        &[(env::SOCKET, socket.to_str().unwrap())],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a socket"));
    assert_eq!(std::fs::read_to_string(&socket).unwrap(), "precious");
}

#[test]
fn status_prints_a_table_and_json() {
    let agent = Agent::start(|c| c.expect = vec!["model".parse().unwrap()]);
    let mut w = agent.worker("model", "i-1");
    w.loading(45);
    w.check("device", false, "no GPU");
    w.beat(1);
    agent.wait_for("/readyz/model", 503, "fail: phase: loading");
    let url = format!("http://{}", agent.addr);
    let out = output(&["status", "--url", &url], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    let row = table
        .lines()
        .find(|l| l.starts_with("model"))
        .expect("a row for model");
    assert!(row.contains("loading 45% (45/100 MiB)"), "{table}");
    assert!(row.contains("fail: phase: loading"), "{table}");
    assert!(row.contains(&std::process::id().to_string()), "{table}");
    assert!(table.contains("failing checks: device: no GPU"), "{table}");
    let out = output(&["status", "--json"], &[(env::URL, url.as_str())]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["workers"][0]["name"], "model");
    let out = output(&["status", "--url", "http://127.0.0.1:1"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the agent"));
}

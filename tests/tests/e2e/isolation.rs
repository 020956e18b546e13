//! Scenario 9: agent and worker in separate PID namespaces (a pod without
//! `shareProcessNamespace`). The agent cannot see the worker's process: SO_PEERCRED gives it
//! pid 0, /proc checks are off and `/status` says so, and the heartbeat verdicts still work.

use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;
use vitals_e2e::pod::{AgentOptions, Pod, WorkerOptions};
use vitals_e2e::report::cannot_run;
use vitals_e2e::slots;

use crate::common::*;

/// `unshare` flags that put a "container" in its own PID namespace; `--kill-child` so a
/// SIGKILL to the wrapper takes the process inside with it.
fn namespaced(mount_proc: bool) -> Vec<String> {
    let mut argv: Vec<String> = ["unshare", "--pid", "--fork", "--kill-child"]
        .map(String::from)
        .to_vec();
    if mount_proc {
        argv.push("--mount-proc".into());
    }
    argv
}

fn unshare_works() -> Result<(), String> {
    let mut argv = namespaced(true);
    argv.push("true".into());
    match Command::new(&argv[0])
        .args(&argv[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
    {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(format!(
            "`{}` failed: {}",
            argv.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Err(format!("cannot run unshare: {e}")),
    }
}

/// Scenario 9: with /proc out of reach the agent reports its /proc checks off, never says
/// `stopped`, and still fails a frozen worker by its missing heartbeats.
#[test]
fn s09_separate_pid_namespace_keeps_heartbeat_verdicts() {
    let _slot = slots::shared();
    if let Err(why) = unshare_works() {
        cannot_run("s09", &format!("no separate PID namespace here: {why}"));
        return;
    }
    let agent = AgentOptions {
        // The agent gets its own /proc too, as its container would.
        wrapper: namespaced(true),
        ..agent()
    };
    let opts = WorkerOptions {
        wrapper: namespaced(false),
        ..worker()
    };
    let mut pod = Pod::new("pid_namespace", agent.clone(), opts.clone());
    pod.start_ready();
    pod.watch(kubelet(), WATCH_PERIOD);

    let status = pod.worker_status();
    pod.event(format!("/status worker: {status}"));
    assert!(
        proc_checks_off(&status),
        "/status must say the worker's /proc checks are off: {status}"
    );

    // Freeze the worker's whole "container" (the unshare wrapper and the worker in it).
    let stop = pod.signal_worker(Signal::SIGSTOP);
    await_missed_heartbeats(&pod, &["heartbeat_timeout"], stop);
    // With /proc on, `stopped` would take over after another proc interval or two.
    std::thread::sleep(agent.proc_interval * 4);
    let live = pod.probe(LIVE);
    assert_eq!(
        live.reason(),
        Some("heartbeat_timeout"),
        "without /proc the agent cannot know the worker is stopped: {live}"
    );
    let cont = pod.signal_worker(Signal::SIGCONT);
    let (ready, _) = pod.await_probe(READY, RECOVERY_WAIT, "ready after SIGCONT", |o| o.passed());
    vitals_e2e::report::report_line(&format!(
        "[pid_namespace] ready again {:.2}s after SIGCONT",
        (ready - cont).as_secs_f64()
    ));
    assert_stays_passing(&pod, LIVE, Duration::from_secs(1), "liveness after SIGCONT");
    let reasons: Vec<_> = pod
        .timeline
        .entries()
        .into_iter()
        .filter(|e| e.is_probe_of(LIVE))
        .filter_map(|e| e.reason().map(str::to_string))
        .filter(|r| r == "stopped" || r == "uninterruptible" || r == "silent")
        .collect();
    assert!(
        reasons.is_empty(),
        "/proc-based reasons without /proc: {reasons:?}"
    );
}

/// Whether a worker's `/status` entry says its /proc checks are off, and why.
fn proc_checks_off(w: &serde_json::Value) -> bool {
    w.pointer("/instance/proc/enabled") == Some(&serde_json::Value::Bool(false))
        && w.pointer("/instance/proc/off_reason")
            .and_then(serde_json::Value::as_str)
            .is_some_and(|r| !r.is_empty())
}

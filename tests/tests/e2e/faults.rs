//! Scenarios 4, 5 and 10: a worker that is up but not working. A hung inference loop behind
//! a responsive HTTP server, a frozen process (SIGSTOP), and a process stuck in
//! uninterruptible sleep (cgroup freezer).

use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::json;
use vitals_e2e::client;
use vitals_e2e::freezer::Freezer;
use vitals_e2e::pod::{proc_state, Pod};
use vitals_e2e::report::{cannot_run, report_line};
use vitals_e2e::slots;

use crate::common::*;

/// Scenario 4: the inference loop hangs while the worker's HTTP server still answers.
/// Requests pile up unanswered, and /livez/model and /readyz/model fail with `loop_stalled`
/// once the stall timeout has passed; heartbeats keep coming, so it is not a heartbeat
/// timeout.
#[test]
fn s04_hung_loop_fails_liveness_while_http_answers() {
    let _slot = slots::shared();
    let (agent, opts) = (agent(), worker());
    let mut pod = Pod::new("hung_loop", agent.clone(), opts.clone());
    pod.start_ready();
    pod.watch(kubelet(), WATCH_PERIOD);
    let fault = pod.fault("hang_loop");

    const PILED: usize = 6;
    let (tx, answers) = mpsc::channel();
    for i in 0..PILED {
        let (addr, tx) = (pod.worker_addr, tx.clone());
        thread::spawn(move || {
            let r = client::post_json(
                addr,
                "/v1/embeddings",
                &json!({ "input": format!("piled up request {i}") }),
                Duration::from_secs(60),
            );
            let _ = tx.send((i, r));
        });
    }
    pod.event(format!(
        "{PILED} embedding requests sent to the hung worker"
    ));

    // The loop's last progress reached the agent at most a heartbeat after the fault.
    pod.await_detection(
        LIVE,
        &["loop_stalled"],
        fault,
        agent.stall_timeout,
        opts.heartbeat_interval + PROBE_POLL,
        agent
            .stall_timeout
            .saturating_sub(opts.heartbeat_interval * 2),
    );
    let ready = pod.probe(READY);
    assert_eq!(ready.reason(), Some("loop_stalled"), "readiness: {ready}");

    // The HTTP server is up: the kubelet's old-style HTTP probe on the worker would pass
    // (or at least answer), which is exactly why the loop needs watching.
    let health = client::get(pod.worker_addr, "/health", Duration::from_secs(1))
        .expect("the hung worker's HTTP server still answers /health");
    pod.event(format!(
        "worker GET /health: {} {}",
        health.status,
        health.text().trim()
    ));
    pod.event(format!(
        "agent sees pending={:?} in_flight={:?}",
        worker_metric(&pod, "vitals_worker_pending"),
        worker_metric(&pod, "vitals_worker_in_flight")
    ));

    // Heartbeats still arrive: a heartbeat timeout later would outrank loop_stalled.
    thread::sleep(agent.hang_timeout + opts.heartbeat_interval);
    let live = pod.probe(LIVE);
    assert_eq!(
        live.reason(),
        Some("loop_stalled"),
        "liveness later: {live}"
    );

    // Piled up: none of the requests got an embedding while the loop hung.
    drop(tx);
    let answered: Vec<_> = answers
        .try_iter()
        .filter(|(_, r)| matches!(r, Ok(resp) if resp.status == 200))
        .map(|(i, _)| i)
        .collect();
    assert!(
        answered.is_empty(),
        "requests {answered:?} got embeddings from a hung inference loop"
    );
    let failing = pod.timeline.probes(LIVE, fault, pod.timeline.now());
    if let Some(e) = failing
        .iter()
        .find(|e| e.reason().is_some_and(|r| r != "loop_stalled"))
    {
        panic!(
            "liveness failed with `{}` at {:.3}s, expected only loop_stalled",
            e.detail,
            e.at.as_secs_f64()
        );
    }
}

/// Scenario 5: a frozen worker (SIGSTOP) fails liveness with `heartbeat_timeout` or
/// `stopped` within the hang timeout, diagnosed as `blocked` (no CPU used); after SIGCONT the
/// same instance is live and ready again without a restart, and does not flap back.
#[test]
fn s05_sigstop_then_sigcont_recovers_same_instance() {
    let _slot = slots::shared();
    let (agent, opts) = (agent(), worker());
    let mut pod = Pod::new("sigstop", agent.clone(), opts.clone());
    pod.start_ready();
    pod.watch(kubelet(), WATCH_PERIOD);
    let before = instance(&pod);
    let stop = pod.signal_worker(Signal::SIGSTOP);

    await_missed_heartbeats(&pod, &["heartbeat_timeout", "stopped"], stop);
    // `stopped` outranks `heartbeat_timeout` once /proc has shown T for the hang timeout;
    // the first sample showing T comes at most a /proc interval after the signal.
    pod.await_detection(
        LIVE,
        &["stopped"],
        stop,
        agent.hang_timeout,
        agent.proc_interval + PROBE_POLL,
        agent.hang_timeout,
    );
    let status = pod.worker_status();
    pod.event(format!("/status worker: {status}"));
    assert!(
        json_mentions(&status, "blocked") && !json_mentions(&status, "spinning"),
        "a stopped worker uses no CPU: /status must diagnose it as blocked: {status}"
    );
    let ready = pod.probe(READY);
    assert!(!ready.passed(), "readiness of a stopped worker: {ready}");

    let cont = pod.signal_worker(Signal::SIGCONT);
    let (live_at, _) = pod.await_probe(LIVE, RECOVERY_WAIT, "live after SIGCONT", |o| o.passed());
    let (ready_at, _) =
        pod.await_probe(READY, RECOVERY_WAIT, "ready after SIGCONT", |o| o.passed());
    report_line(&format!(
        "[sigstop] after SIGCONT: live again after {:.2}s",
        (live_at - cont).as_secs_f64(),
    ));
    // The next heartbeat and the next /proc sample showing it running clear both verdicts.
    pod.check_latency(
        "ready again after SIGCONT",
        cont,
        ready_at,
        opts.heartbeat_interval + agent.proc_interval,
        PROBE_POLL * 2,
    );
    // SPEC §7: a worker resumed with SIGCONT must not flap back to `stopped`.
    assert_stays_passing(
        &pod,
        LIVE,
        agent.proc_interval * 6,
        "liveness after SIGCONT",
    );
    assert_eq!(
        instance(&pod),
        before,
        "SIGCONT must not make a new instance"
    );
    assert_eq!(
        worker_metric(&pod, "vitals_worker_restarts_total"),
        Some(0.0)
    );
    assert!(
        pod.worker().try_exit().is_none(),
        "the worker process is still the same one"
    );
    let r = pod
        .embed("after SIGCONT", Duration::from_secs(10))
        .expect("the resumed worker answers");
    assert_eq!(r.status, 200, "{}", r.text());
}

/// Scenario 10: a worker in uninterruptible sleep (frozen by the cgroup v1 freezer, which
/// shows its tasks as `D`) fails liveness with `uninterruptible` after --d-state-timeout,
/// and is live again once thawed.
#[test]
fn s10_uninterruptible_sleep_is_reported() {
    let _slot = slots::shared();
    // A D-state timeout shorter than the hang timeout: `uninterruptible` must come first,
    // from /proc alone, before the missing heartbeats would say anything.
    let agent = vitals_e2e::pod::AgentOptions {
        d_state_timeout: std::time::Duration::from_millis(1500),
        hang_timeout: Duration::from_secs(4),
        ..agent()
    };
    let opts = worker();
    let mut pod = Pod::new("d_state", agent.clone(), opts.clone());
    let name = format!(
        "vitals-e2e-{}-{}",
        std::process::id(),
        pod.worker_addr.port()
    );
    let mut freezer = match Freezer::create(&name) {
        Ok(f) => f,
        Err(why) => {
            cannot_run("s10", &format!("no cgroup v1 freezer: {why}"));
            return;
        }
    };
    pod.start_ready();
    pod.watch(kubelet(), WATCH_PERIOD);
    let pid = pod.worker().pid();
    freezer
        .add(pid)
        .expect("the worker can join our freezer cgroup");
    let frozen = pod.event("freezer: FROZEN");
    freezer.freeze().expect("the freezer freezes");
    let mut state = None;
    for _ in 0..50 {
        state = proc_state(pid);
        if state == Some('D') {
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    pod.event(format!("worker /proc state: {state:?}"));
    if state != Some('D') {
        cannot_run(
            "s10",
            &format!("a frozen worker shows state {state:?}, not D, on this kernel (cgroup v2 semantics)"),
        );
        return;
    }
    // The D clock starts at the first sample showing D, which is after the freeze.
    pod.await_detection(
        LIVE,
        &["uninterruptible"],
        frozen,
        agent.d_state_timeout,
        agent.proc_interval + PROBE_POLL,
        agent.d_state_timeout,
    );
    let failing = pod.timeline.probes(LIVE, frozen, pod.timeline.now());
    if let Some(e) = failing
        .iter()
        .find(|e| e.reason().is_some_and(|r| r != "uninterruptible"))
    {
        panic!(
            "liveness failed with `{}` first, expected uninterruptible",
            e.detail
        );
    }

    let thawed = pod.event("freezer: THAWED");
    freezer.thaw().expect("the freezer thaws");
    let (live_at, _) = pod.await_probe(LIVE, RECOVERY_WAIT, "live after thaw", |o| o.passed());
    report_line(&format!(
        "[d_state] live again {:.2}s after the thaw",
        (live_at - thawed).as_secs_f64()
    ));
    assert_stays_passing(&pod, LIVE, agent.proc_interval * 6, "liveness after thaw");
    drop(freezer);
}

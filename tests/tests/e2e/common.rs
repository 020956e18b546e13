//! What the scenarios share: the probe paths, the kubelet's probe settings, what probing
//! adds to every bound, and small checks over a pod's timeline.
//!
//! A bound on a detection is the configured timeout, plus what the mechanism adds by design
//! (stated at each call from the intervals involved), plus the starvation the scenario's own
//! timeline measured over the same window (`Pod::check_latency`); no fixed slack. Lower
//! bounds add nothing.

use std::time::Duration;

use serde_json::Value;
use vitals_e2e::pod::{AgentOptions, Pod, WorkerOptions};
use vitals_e2e::probe::{ProbeKind, ProbeWorker};

/// The worker's liveness probe path (SPEC §6).
pub const LIVE: &str = "/livez/model";
/// The worker's readiness probe path.
pub const READY: &str = "/readyz/model";
/// The worker's startup probe path.
pub const STARTED: &str = "/startupz/model";

/// How often the background kubelet probes: ten times the real period, so the timeline has
/// a fine grain; each probe is still a new connection with a 1 s timeout.
pub const WATCH_PERIOD: Duration = Duration::from_millis(100);

/// What probing adds to every detection: the verdict flips between two of
/// `await_detection`'s probes, so the first probe to see it starts up to one poll later.
pub const PROBE_POLL: Duration = vitals_e2e::pod::POLL;

/// How long a scenario waits for a worker to come back (live again after SIGCONT or a
/// thaw): the deadline of a wait whose latency is reported, or checked on its own.
pub const RECOVERY_WAIT: Duration = Duration::from_secs(3);

/// The agent's short timeouts for tests (see [`AgentOptions::default`]).
pub fn agent() -> AgentOptions {
    AgentOptions::default()
}

/// The worker's options for tests (250 ms heartbeats, fault injection on).
pub fn worker() -> WorkerOptions {
    WorkerOptions::default()
}

/// A kubelet on the worker's three probes, every second: startup failureThreshold 30,
/// liveness 3, readiness 1, successThreshold 1 (tighter than `deploy/`'s liveness 12 and
/// readiness 2, so a scenario sees a verdict's effect within seconds).
pub fn kubelet() -> Vec<(&'static str, ProbeWorker)> {
    vec![
        (STARTED, ProbeWorker::new(ProbeKind::Startup, 1, 30)),
        (LIVE, ProbeWorker::new(ProbeKind::Liveness, 1, 3)),
        (READY, ProbeWorker::new(ProbeKind::Readiness, 1, 1)),
    ]
}

/// Waits until liveness fails with one of `reasons` once the worker's heartbeats stopped
/// at `since` (SIGSTOP, a freeze): within the hang timeout plus a probe poll, and not before
/// the hang timeout less two heartbeats (the heartbeat clock restarted at the last
/// heartbeat, before `since`).
pub fn await_missed_heartbeats(pod: &Pod, reasons: &[&str], since: Duration) {
    let hang_timeout = pod.agent_options.hang_timeout;
    let heartbeat = pod.worker_options.heartbeat_interval;
    pod.await_detection(
        LIVE,
        reasons,
        since,
        hang_timeout,
        PROBE_POLL,
        hang_timeout.saturating_sub(heartbeat * 2),
    );
}

/// One turn of an agent crash loop: SIGKILL, down for the kubelet's back-off `delay_s`
/// seconds divided by `scale`, started again; returns once `live` passes again (within 5 s).
pub fn crash_and_restart_agent(pod: &mut Pod, live: &str, delay_s: u64, scale: u32) {
    pod.kill_agent();
    std::thread::sleep(Duration::from_secs(delay_s) / scale);
    pod.event(format!("agent restarts after {delay_s}s/{scale}"));
    pod.start_agent();
    pod.await_probe(live, Duration::from_secs(5), "agent answering again", |o| {
        o.passed()
    });
}

/// Asserts every probe of `path` in `[from, to)` passed, and that there was at least one.
/// When `path` first passed between `from` and `to`, after failing only for reasons
/// `accept` allows: the moment a probe flips, checked as the kubelet would have seen it.
pub fn first_pass(
    pod: &Pod,
    path: &str,
    from: Duration,
    to: Duration,
    accept: impl Fn(&str) -> bool,
) -> Duration {
    let probes = pod.timeline.probes(path, from, to);
    for e in &probes {
        if e.passed == Some(true) {
            return e.at;
        }
        let reason = e.reason().unwrap_or_default();
        assert!(
            accept(reason),
            "{path} failed at {:.3}s for an unexpected reason: {}",
            e.at.as_secs_f64(),
            e.detail
        );
    }
    panic!("{path} never passed between {from:?} and {to:?}");
}

pub fn assert_all_pass(pod: &Pod, path: &str, from: Duration, to: Duration, why: &str) {
    let probes = pod.timeline.probes(path, from, to);
    assert!(
        !probes.is_empty(),
        "{why}: no probe of {path} between {from:?} and {to:?}"
    );
    if let Some(bad) = probes.iter().find(|e| e.passed != Some(true)) {
        panic!(
            "{why}: {path} failed at {:.3}s: {} {}",
            bad.at.as_secs_f64(),
            bad.status.unwrap_or_default(),
            bad.detail
        );
    }
}

/// Asserts every probe of `path` in `[from, to)` failed with a reason `accept` takes, and
/// that there was at least one.
pub fn assert_all_fail(
    pod: &Pod,
    path: &str,
    from: Duration,
    to: Duration,
    why: &str,
    accept: impl Fn(&str) -> bool,
) {
    let probes = pod.timeline.probes(path, from, to);
    assert!(
        !probes.is_empty(),
        "{why}: no probe of {path} between {from:?} and {to:?}"
    );
    if let Some(bad) = probes
        .iter()
        .find(|e| e.passed != Some(false) || !e.reason().is_some_and(&accept))
    {
        panic!(
            "{why}: {path} at {:.3}s answered {} {}",
            bad.at.as_secs_f64(),
            bad.status.unwrap_or_default(),
            bad.detail
        );
    }
}

/// Probes `path` actively for `span` and asserts every probe passes (no flapping).
pub fn assert_stays_passing(pod: &Pod, path: &str, span: Duration, why: &str) {
    let from = pod.timeline.now();
    while pod.timeline.now() < from + span {
        let o = pod.probe(path);
        assert!(o.passed(), "{why}: {path} answered {o}");
        std::thread::sleep(vitals_e2e::pod::POLL);
    }
}

/// The worker's instance id as `/status` shows it.
pub fn instance(pod: &Pod) -> String {
    let w = pod.worker_status();
    w.pointer("/instance/id")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("/status shows no instance for the worker: {w}"))
        .to_string()
}

/// A sample of the agent's metrics for worker `model`.
pub fn worker_metric(pod: &Pod, name: &str) -> Option<f64> {
    vitals_e2e::client::metric(&pod.metrics(), name, &[("worker", "model")])
}

/// Whether any string in `v` (recursively) contains `needle`.
pub fn json_mentions(v: &Value, needle: &str) -> bool {
    match v {
        Value::String(s) => s.contains(needle),
        Value::Array(a) => a.iter().any(|x| json_mentions(x, needle)),
        Value::Object(o) => o
            .iter()
            .any(|(k, x)| k.contains(needle) || json_mentions(x, needle)),
        _ => false,
    }
}

//! Scenarios 1-3: starting up. A loading model is never killed for being slow, a stuck one
//! is, and traffic only arrives once the model answers.

use std::sync::Arc;
use std::time::Duration;

use vitals_e2e::load::Load;
use vitals_e2e::pod::{Pod, WorkerOptions};
use vitals_e2e::probe::{ProbeKind, ProbeWorker};
use vitals_e2e::slots;

use crate::common::*;

/// Scenario 1, under load: while the model loads, /startupz/model and /readyz/model fail and
/// /livez/model passes at every probe; once ready, all three pass at every probe, an
/// embedding request succeeds, and no client request fails after readiness.
#[test]
fn s01_cold_start_under_load() {
    // Good answers after ready that prove the load flowed.
    const MIN_OK: usize = 20;
    let _slot = slots::exclusive();
    let slow = Duration::from_secs(3);
    let mut pod = Pod::new(
        "cold_start",
        agent(),
        WorkerOptions {
            slow_load: Some(slow),
            ..worker()
        },
    );
    pod.start_agent_and_wait();
    pod.watch(kubelet(), WATCH_PERIOD);
    let load = Load::start(
        pod.worker_addr,
        4,
        Duration::from_millis(20),
        Arc::clone(&pod.timeline),
    );
    let spawned = pod.event("starting the worker");
    pod.start_worker();
    let ready = pod.await_ready(Duration::from_secs(60));
    // A deliberate observation window: everything must keep passing under load, for at
    // least 2 s and until the load has had enough good answers to prove something (a
    // starved machine answers fewer per second).
    std::thread::sleep(Duration::from_secs(2));
    load.await_ok(MIN_OK, Duration::from_secs(30));
    let embedded = pod
        .embed("a request after readiness", Duration::from_secs(10))
        .expect("an embedding request after readiness gets an answer");
    let end = pod.timeline.now();
    let report = load.stop();
    pod.stop_watches();
    pod.event(format!("load: {}", report.summary()));

    // The first passing readiness probe, background or active, splits the run in two.
    let ready = pod
        .timeline
        .entries()
        .iter()
        .find(|e| e.is_probe_of(READY) && e.passed == Some(true))
        .map_or(ready, |e| e.at);
    assert!(
        ready >= spawned + slow,
        "the worker became ready {:.2}s after its start, before its {slow:?} slow load ended",
        (ready - spawned).as_secs_f64()
    );
    let loading_reasons = |r: &str| {
        // `phase: unknown`: the moment between the worker's hello and its first phase line.
        r == "not_connected"
            || r == "phase: unknown"
            || r == "phase: loading"
            || r == "phase: warming"
            || r.starts_with("check: ")
    };
    assert_all_fail(
        &pod,
        READY,
        spawned,
        ready,
        "readiness while loading",
        loading_reasons,
    );
    // SPEC §2: startup passes once the worker is connected and live (its hello), long
    // before it is ready; until then the only reason is `not_connected`.
    let started = first_pass(&pod, STARTED, spawned, end, |r| r == "not_connected");
    assert!(
        started + WATCH_PERIOD < ready,
        "startup passed at {started:?}, not while loading (ready at {ready:?})"
    );
    assert_all_pass(&pod, STARTED, started, end, "startup from hello on");
    assert_all_pass(
        &pod,
        LIVE,
        spawned,
        end,
        "liveness from cold start to after ready",
    );
    // The agent saw the loading phase for most of the slow load, not just a glimpse.
    let loading = pod
        .timeline
        .probes(READY, spawned, ready)
        .iter()
        .filter(|e| e.reason() == Some("phase: loading"))
        .count();
    assert!(
        loading >= 10,
        "only {loading} readiness probes said `phase: loading` during a {slow:?} load"
    );
    // Startup passes with readiness (one background period of skew at most) and after it
    // everything passes at every probe.
    let settle = ready + WATCH_PERIOD * 3;
    assert_all_pass(&pod, READY, ready, end, "readiness after ready");
    assert_all_pass(&pod, STARTED, settle, end, "startup after ready");

    assert_eq!(embedded.status, 200, "{}", embedded.text());
    assert_eq!(
        vitals_e2e::load::judge(&embedded),
        vitals_e2e::load::Outcome::Ok
    );
    // Before readiness a request may be refused (no listener yet) or answered 503; after
    // it, none may fail. None may be lost at any time.
    report.assert_clean("cold_start", MIN_OK, |r| {
        r.started < ready
            && match &r.outcome {
                vitals_e2e::load::Outcome::Status(s, _) => *s == 503,
                vitals_e2e::load::Outcome::Error(e) => e.is_refused(),
                vitals_e2e::load::Outcome::Ok => true,
            }
    });
    report_ready("cold_start", ready - spawned);
}

fn report_ready(scenario: &str, after: Duration) {
    vitals_e2e::report::report_line(&format!(
        "[{scenario}] ready {:.2}s after the worker started",
        after.as_secs_f64()
    ));
}

/// Scenario 2: a load slower than the load-stall timeout that keeps making progress is
/// never failed by liveness.
#[test]
fn s02_slow_progressing_load_stays_live() {
    let _slot = slots::shared();
    let agent = agent();
    let slow = agent.load_stall_timeout + Duration::from_secs(2);
    let mut pod = Pod::new(
        "slow_load",
        agent.clone(),
        WorkerOptions {
            slow_load: Some(slow),
            ..worker()
        },
    );
    pod.start_agent_and_wait();
    // A startup budget (period × failureThreshold) of a third of the load: under the old
    // rule (startup at `ready`) the kubelet would kill this load, forever (issue 12).
    let budget_probes = u32::try_from((slow / 3).as_millis() / WATCH_PERIOD.as_millis())
        .expect("a few dozen probes");
    let mut probes = kubelet();
    probes[0] = (
        STARTED,
        ProbeWorker::new(ProbeKind::Startup, 1, budget_probes),
    );
    let kubelet = pod.watch(probes, WATCH_PERIOD);
    let spawned = pod.event("starting the worker");
    pod.start_worker();
    let ready = pod.await_ready(Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(500));
    let end = pod.timeline.now();
    pod.stop_watches();

    assert!(
        ready - spawned >= (WATCH_PERIOD * budget_probes) * 3,
        "the load ({:.2}s) must take at least 3x the startup budget ({:.2}s)",
        (ready - spawned).as_secs_f64(),
        (WATCH_PERIOD * budget_probes).as_secs_f64()
    );
    assert_eq!(
        kubelet.restarts(STARTED),
        0,
        "the startup budget killed a load that was progressing"
    );
    assert_all_pass(
        &pod,
        LIVE,
        spawned,
        end,
        "liveness during a slow, progressing load",
    );
    assert_eq!(
        kubelet.restarts(LIVE),
        0,
        "the kubelet would have restarted a loading model"
    );
    // The scenario proves something only if the agent watched the load for longer than the
    // load-stall timeout.
    let loading: Vec<_> = pod
        .timeline
        .probes(READY, spawned, ready)
        .into_iter()
        .filter(|e| matches!(e.reason(), Some("phase: loading" | "phase: warming")))
        .collect();
    let span = match (loading.first(), loading.last()) {
        (Some(a), Some(b)) => b.at - a.at,
        _ => Duration::ZERO,
    };
    assert!(
        span > agent.load_stall_timeout,
        "the agent saw the worker loading for only {:.2}s, not longer than --load-stall-timeout {:?}",
        span.as_secs_f64(),
        agent.load_stall_timeout
    );
    vitals_e2e::report::report_line(&format!(
        "[slow_load] loading seen for {:.2}s (load-stall timeout {:?}), liveness passed at all {} probes",
        span.as_secs_f64(),
        agent.load_stall_timeout,
        pod.timeline.probes(LIVE, spawned, end).len()
    ));
}

/// Scenario 3: a load whose progress is frozen fails liveness with `load_stalled` once the
/// load-stall timeout has passed since its progress last moved; the kubelet restarts it
/// through liveness (its startup passed at hello).
#[test]
fn s03_stuck_load_fails_liveness() {
    let _slot = slots::shared();
    let agent = agent();
    let mut pod = Pod::new(
        "stuck_load",
        agent.clone(),
        WorkerOptions {
            stuck_load: true,
            ..worker()
        },
    );
    pod.start_agent_and_wait();
    let kubelet = pod.watch(kubelet(), WATCH_PERIOD);
    let spawned = pod.event("starting the worker");
    pod.start_worker();
    // The load clock starts when the worker reports `loading` (at hello or later).
    let (loading, _) = pod.await_probe(READY, Duration::from_secs(30), "worker loading", |o| {
        o.reason() == Some("phase: loading")
    });
    let since = loading;
    pod.await_detection(
        LIVE,
        &["load_stalled"],
        since,
        agent.load_stall_timeout,
        // The clock starts at the last heartbeat that showed loading progress.
        pod.worker_options.heartbeat_interval + PROBE_POLL,
        // The clock cannot have started before the worker did.
        agent.load_stall_timeout.saturating_sub(since - spawned),
    );
    let ready = pod.probe(READY);
    assert_eq!(ready.reason(), Some("load_stalled"), "readiness: {ready}");
    // SPEC §2: the stuck load was started at its hello; liveness is what kills it.
    let started = pod.probe(STARTED);
    assert!(started.passed(), "startup of a stuck load: {started}");
    // Three failing probes a watch period apart; the deadline is a wait's, not a bound's.
    vitals_e2e::wait::eventually(
        "the kubelet's liveness reaching its failure threshold",
        RECOVERY_WAIT,
        || (kubelet.restarts(LIVE) > 0).then_some(()),
    );
    assert_eq!(
        kubelet.restarts(STARTED),
        0,
        "killed by liveness, not startup"
    );
}

//! Scenarios 6-8: processes going away. A worker crash and its restart, an agent restart
//! under the worker's feet (under load), and a graceful drain (under load).

use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::json;
use vitals_e2e::client::{self, ClientError};
use vitals_e2e::load::{judge, Load, Outcome};
use vitals_e2e::pod::{Pod, WorkerOptions};
use vitals_e2e::report::report_line;
use vitals_e2e::slots;

use crate::common::*;

/// Scenario 6: SIGKILL the worker, then start it again. Readiness fails within 1 s of the
/// crash; liveness keeps passing (the process is gone: the kubelet restarts it anyway); the
/// new instance's startup passes at its hello, before it is ready; the restart is counted.
#[test]
fn s06_crash_and_restart() {
    let _slot = slots::shared();
    let mut pod = Pod::new("crash_restart", agent(), worker());
    pod.start_ready();
    pod.watch(kubelet(), WATCH_PERIOD);
    let first = instance(&pod);
    assert_eq!(
        worker_metric(&pod, "vitals_worker_restarts_total"),
        Some(0.0)
    );

    let crash = pod.kill_worker();
    pod.await_detection(
        READY,
        &["not_connected"],
        crash,
        Duration::from_secs(1),
        Duration::ZERO,
        Duration::ZERO,
    );
    // A slow load makes the new instance's startup window long enough to see.
    pod.worker_options.slow_load = Some(Duration::from_secs(2));
    let restart = pod.event("starting the worker again");
    pod.start_worker();
    let (ready, _) = pod.await_probe(READY, Duration::from_secs(60), "ready again", |o| {
        o.passed()
    });
    std::thread::sleep(WATCH_PERIOD * 5);
    let end = pod.timeline.now();
    pod.stop_watches();

    assert_all_pass(
        &pod,
        LIVE,
        crash,
        end,
        "liveness across a crash and restart",
    );
    // SPEC §2: from the crash to the new instance's hello startup fails `not_connected`;
    // from that hello on it passes, while the new instance is still loading.
    let started = first_pass(&pod, STARTED, crash, end, |r| r == "not_connected");
    assert!(
        restart <= started && started + WATCH_PERIOD < ready,
        "the new instance started at {started:?}: not between its spawn ({restart:?}) and ready ({ready:?})"
    );
    assert_all_pass(&pod, STARTED, started, end, "startup from the new hello on");
    assert_ne!(
        instance(&pod),
        first,
        "the restarted worker is a new instance"
    );
    assert_eq!(
        worker_metric(&pod, "vitals_worker_restarts_total"),
        Some(1.0),
        "vitals_worker_restarts_total counts the restart"
    );
    report_line(&format!(
        "[crash_restart] new instance ready {:.2}s after its start (2s slow load)",
        (ready - restart).as_secs_f64()
    ));
}

/// Scenario 7, under load: SIGKILL the agent and start it again on the same socket and port.
/// The worker, untouched, reconnects and /readyz/model passes within 2 s of the new agent's
/// start; no embedding request fails meanwhile.
#[test]
fn s07_agent_restart_under_load() {
    let _slot = slots::exclusive();
    let mut pod = Pod::new("agent_restart", agent(), worker());
    pod.start_ready();
    let first = instance(&pod);
    let worker_pid = pod.worker().pid();
    let load = Load::start(
        pod.worker_addr,
        4,
        Duration::from_millis(20),
        Arc::clone(&pod.timeline),
    );
    load.await_ok(10, Duration::from_secs(30));
    pod.kill_agent();
    // The agent stays away a moment, as a container restart would; the worker's reporter
    // backs off meanwhile.
    thread::sleep(Duration::from_millis(700));
    let restart = pod.event("starting the agent again");
    pod.start_agent();
    let (ready, _) = pod.await_probe(READY, Duration::from_secs(10), "ready again", |o| {
        o.passed()
    });
    let after = ready.saturating_sub(restart);
    report_line(&format!(
        "[agent_restart] /readyz/model passed again {:.2}s after the agent restarted (bound 2s)",
        after.as_secs_f64()
    ));
    assert!(
        after <= Duration::from_secs(2),
        "the worker's readiness came back {:.2}s after the agent restart",
        after.as_secs_f64()
    );
    thread::sleep(Duration::from_millis(500));
    let report = load.stop();
    pod.event(format!("load: {}", report.summary()));

    assert_eq!(instance(&pod), first, "the worker continued its instance");
    assert_eq!(pod.worker().pid(), worker_pid);
    assert!(
        pod.worker().try_exit().is_none(),
        "the worker was not touched"
    );
    report.assert_clean("agent_restart", 20, |_| false);
}

/// Scenario 8, under load: SIGTERM to the worker while requests are in flight. Readiness
/// fails within 0.5 s, every request sent before the signal completes with 200, and the
/// worker exits 0 within its drain timeout.
#[test]
fn s08_drain_under_load() {
    let _slot = slots::exclusive();
    let opts = WorkerOptions {
        drain_timeout: Duration::from_secs(10),
        ..worker()
    };
    let mut pod = Pod::new("drain", agent(), opts.clone());
    pod.start_ready();
    pod.watch(kubelet(), WATCH_PERIOD);
    let load = Load::start(
        pod.worker_addr,
        4,
        Duration::from_millis(20),
        Arc::clone(&pod.timeline),
    );
    load.await_ok(20, Duration::from_secs(30));
    // Heavier requests, so some are surely queued or computing when the signal comes.
    const HEAVY: usize = 6;
    let text = "the drain must finish every request that was accepted before it began ".repeat(12);
    let (sent_tx, sent) = mpsc::channel();
    let (done_tx, done) = mpsc::channel();
    for i in 0..HEAVY {
        let (addr, sent_tx, done_tx) = (pod.worker_addr, sent_tx.clone(), done_tx.clone());
        let body = json!({ "input": vec![format!("{i} {text}"); 4] }).to_string();
        thread::spawn(move || {
            let r = client::request_with(
                addr,
                "POST",
                "/v1/embeddings",
                Some(("application/json", body.as_bytes())),
                Duration::from_secs(30),
                || {
                    let _ = sent_tx.send(i);
                },
            );
            let _ = done_tx.send((i, r));
        });
    }
    drop((sent_tx, done_tx));
    for _ in 0..HEAVY {
        sent.recv_timeout(Duration::from_secs(5))
            .expect("every heavy request is sent");
    }
    pod.event(format!("{HEAVY} heavy requests sent"));
    thread::sleep(Duration::from_millis(100));
    let term = pod.signal_worker(Signal::SIGTERM);

    pod.await_detection(
        READY,
        &["phase draining", "not_connected"],
        term,
        Duration::from_millis(500),
        Duration::ZERO,
        Duration::ZERO,
    );
    let exit = pod
        .worker()
        .wait_exit(opts.drain_timeout + Duration::from_secs(2))
        .unwrap_or_else(|| panic!("the worker did not exit within its drain timeout"));
    let exited = pod.event(format!("worker exited: {exit}"));
    thread::sleep(Duration::from_millis(300));
    let report = load.stop();
    pod.stop_watches();
    pod.event(format!("load: {}", report.summary()));

    assert!(
        exit.success(),
        "the worker exits 0 after draining, got {exit}"
    );
    report_line(&format!(
        "[drain] worker exited 0 {:.2}s after SIGTERM (drain timeout {:?})",
        (exited - term).as_secs_f64(),
        opts.drain_timeout
    ));
    assert!(
        exited - term <= opts.drain_timeout,
        "draining took longer than its timeout"
    );
    let heavy: Vec<_> = done.iter().collect();
    assert_eq!(heavy.len(), HEAVY, "every heavy request got an outcome");
    for (i, r) in &heavy {
        match r {
            Ok(resp) => assert_eq!(
                judge(resp),
                Outcome::Ok,
                "heavy request {i} in flight at SIGTERM"
            ),
            Err(e) => panic!("heavy request {i} in flight at SIGTERM got no answer: {e}"),
        }
    }
    assert_all_pass(&pod, LIVE, term, exited, "liveness while draining");
    // Requests sent before SIGTERM must succeed; later ones may be turned away (503, a
    // refused or reset connection) but never lost.
    report.assert_clean("drain", 20, |r| {
        r.sent.is_none_or(|s| s > term)
            && match &r.outcome {
                Outcome::Status(s, _) => *s == 503,
                Outcome::Error(e) => matches!(e, ClientError::Refused(_) | ClientError::Reset(_)),
                Outcome::Ok => true,
            }
    });
}

//! Scenarios U9–U12 (SPEC §12): hangs and sleeps the engines' own health does not show,
//! against the fake vLLM and llama.cpp of `vitals_e2e::fake_vllm` (built from the servers'
//! cited source), wired by `vitals-agent inject` as in [`crate::upstreams`]:
//! - one wedged engine of a data-parallel vLLM while seven work;
//! - vLLM asleep: slept by an operator (requests wait for `/wake_up`), or by its own idle
//!   TTL (the next request wakes it);
//! - llama.cpp with `--sleep-idle-seconds`, whose `/metrics` GET restarts its idle timer
//!   (before PR #27376) or is answered from a snapshot while asleep (after): it falls
//!   asleep on time with the agent watching.

use std::time::{Duration, Instant};

use vitals_e2e::client;
use vitals_e2e::fake_vllm::WAKE_FOR;
use vitals_e2e::probe::{ProbeKind, ProbeWorker};
use vitals_e2e::report::report_line;
use vitals_e2e::slots;

use crate::common::*;
use crate::upstreams::{Server, UpstreamPod, VLLM};

const LIVE: &str = "/livez/vllm";
const READY: &str = "/readyz/vllm";

/// Liveness and readiness watched by a kubelet with threshold 1, so every probe counts.
fn watch_live_and_ready(p: &mut UpstreamPod, live: &str, ready: &str) {
    p.pod.watch(
        vec![
            (live, ProbeWorker::new(ProbeKind::Liveness, 1, 1)),
            (ready, ProbeWorker::new(ProbeKind::Readiness, 1, 1)),
        ],
        WATCH_PERIOD,
    );
}

/// Waits until `/status` of the pod's only upstream satisfies `accept`.
fn await_status(p: &UpstreamPod, what: &str, accept: impl Fn(&serde_json::Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let up = p.pod.status()["upstreams"][0].clone();
        if accept(&up) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {up}");
        std::thread::sleep(PROBE_POLL);
    }
}

/// U9: engine 3 of a data-parallel vLLM with 8 engines hangs while the other seven work.
/// Their summed counters keep moving (before issue 28 the agent saw nothing); per engine,
/// `/livez/vllm` and `/readyz/vllm` fail with `loop_stalled: engine 3` within the stall
/// timeout, `/status` shows engine 3's clock alone running, and the re-exported in-flight
/// gauge stays the container's sum.
#[test]
fn u9_one_hung_engine_of_eight_is_named() {
    let _slot = slots::shared();
    let p = UpstreamPod::ready_server("up_dp_engine_hang", &VLLM, &["--engines", "8"]);
    let stall = p.pod.agent_options.stall_timeout;
    let interval = p.pod.agent_options.proc_interval;
    p.vllm.busy(8, 0);
    let busy_from = p.pod.event("vLLM busy: 8 running, one per engine");
    std::thread::sleep(stall + Duration::from_secs(1));
    p.pod.probe(LIVE);
    assert_all_pass(
        &p.pod,
        LIVE,
        busy_from,
        p.pod.timeline.now(),
        "eight engines working",
    );
    p.vllm.hang_one_engine(3);
    let fault = p.pod.event("engine 3 of 8 hung, seven still working");
    // As U2, per engine: the clock starts at most one scrape after the hang, the stall is
    // shown by the first scrape a stall timeout later, at most one more scrape on.
    p.pod.await_detection(
        LIVE,
        &["loop_stalled: engine 3"],
        fault,
        stall,
        interval * 2 + PROBE_POLL,
        stall.saturating_sub(interval * 2),
    );
    let ready = p.pod.probe(READY);
    assert_eq!(ready.reason(), Some("loop_stalled: engine 3"), "{ready}");
    let status = p.pod.status();
    let engines = status["upstreams"][0]["metrics"]["engines"]
        .as_array()
        .unwrap_or_else(|| panic!("/status shows no engines: {status}"))
        .clone();
    assert_eq!(engines.len(), 8, "{status}");
    for e in &engines {
        let unmoved = e["busy_without_work_seconds"].as_f64().unwrap_or(-1.0);
        if e["engine"] == "3" {
            assert!(unmoved >= stall.as_secs_f64(), "engine 3's clock: {e}");
        } else {
            assert_eq!(unmoved, 0.0, "a working engine's clock: {e}");
        }
    }
    let metrics = p.pod.metrics();
    assert_eq!(
        vitals_e2e::client::metric(&metrics, "vitals_worker_in_flight", &[("worker", "vllm")]),
        Some(8.0),
        "the container's in-flight sum: {metrics}"
    );
}

/// U10: vLLM slept by an operator (`POST /sleep`), then three requests arrive and wait for
/// a `/wake_up` that only the operator sends: readiness fails with `sleeping` within a
/// scrape, liveness passes at every probe across 3 × the stall timeout although requests
/// wait and no counter moves, the agent never wakes it, and once the operator does, vLLM
/// is ready again and works.
#[test]
fn u10_vllm_slept_by_an_operator_is_live_not_ready_and_never_woken() {
    let _slot = slots::shared();
    let mut p = UpstreamPod::ready_server("up_vllm_sleep", &VLLM, &[]);
    let stall = p.pod.agent_options.stall_timeout;
    let interval = p.pod.agent_options.proc_interval;
    p.vllm.busy(1, 0);
    await_status(&p, "the agent sees vLLM busy", |u| {
        u["metrics"]["busy"] == 1.0
    });
    watch_live_and_ready(&mut p, LIVE, READY);
    p.vllm.sleep(1);
    let slept = p.pod.event("operator: POST /sleep?level=1");
    p.vllm.busy(2, 1);
    p.pod.event("3 requests arrive and wait for /wake_up");
    // The first scrape after the sleep shows the gauge (at most two scrapes: one in flight).
    p.pod.await_detection(
        READY,
        &["sleeping"],
        slept,
        Duration::ZERO,
        interval * 2 + PROBE_POLL,
        Duration::ZERO,
    );
    let (from, span) = (p.pod.timeline.now(), stall * 3);
    std::thread::sleep(span);
    let to = p.pod.timeline.now();
    assert_all_pass(&p.pod, LIVE, slept, to, "asleep with requests waiting");
    assert_all_fail(&p.pod, READY, from, to, "asleep until /wake_up", |r| {
        r == "sleeping"
    });
    let state = p.vllm.state();
    assert_eq!(state["is_sleeping"], true, "still asleep: {state}");
    assert_eq!(state["wakes_by_request"], 0, "{state}");
    assert_eq!(state["wakes_by_operator"], 0, "{state}");
    let up = p.pod.status()["upstreams"][0].clone();
    assert_eq!(up["metrics"]["sleep"]["wakes"], "operator", "{up}");
    assert_eq!(up["metrics"]["pending"], 3.0, "{up}");
    report_line(&format!(
        "[up_vllm_sleep] slept by an operator with 3 requests waiting: live at every probe for {:.1}s, ready failed 'sleeping', not woken",
        to.saturating_sub(slept).as_secs_f64()
    ));
    let resp = client::request_with(
        p.vllm.addr,
        "POST",
        "/wake_up",
        None,
        Duration::from_secs(5),
        || {},
    )
    .expect("wake_up");
    assert_eq!(resp.status, 200);
    let woken = p.pod.event("operator: POST /wake_up");
    let (at, _) = p
        .pod
        .await_probe(READY, Duration::from_secs(5), "ready again", |o| o.passed());
    p.pod.check_latency(
        "ready after /wake_up",
        woken,
        at,
        Duration::ZERO,
        interval * 2 + PROBE_POLL,
    );
    p.pod.stop_watches();
    assert_stays_passing(&p.pod, LIVE, stall + interval * 2, "awake and working");
}

/// U11: vLLM with `--sleep-idle-ttl 2` (PR #47703) falls asleep by itself after 2 s idle:
/// it stays live and ready throughout (a request wakes it), the agent's scrapes never wake
/// it, and the request that does is held while it wakes without a stall.
#[test]
fn u11_vllm_idle_sleep_stays_ready_and_wakes_on_request() {
    let _slot = slots::shared();
    const TTL: Duration = Duration::from_secs(2);
    let server = Server {
        args: &["--sleep-idle-ttl", "2"],
        ..VLLM
    };
    let mut p =
        UpstreamPod::ready_server("up_vllm_idle_sleep", &server, &["--sleep-idle-ttl", "2"]);
    let stall = p.pod.agent_options.stall_timeout;
    watch_live_and_ready(&mut p, LIVE, READY);
    p.vllm.busy(1, 0);
    await_status(&p, "the agent sees vLLM busy", |u| {
        u["metrics"]["busy"] == 1.0
    });
    p.vllm.busy(0, 0);
    let idle = p.pod.event("requests done: idle");
    await_status(&p, "the agent sees vLLM's idle sleep", |u| {
        u["metrics"]["sleep"]["wakes"] == "request"
    });
    let asleep = p.pod.event("asleep by its idle TTL");
    assert!(asleep >= idle + TTL, "slept before its TTL");
    std::thread::sleep(stall * 3);
    let state = p.vllm.state();
    assert_eq!(state["is_sleeping"], true, "still asleep: {state}");
    assert_eq!(state["wakes_by_request"], 0, "{state}");
    p.vllm.busy(1, 0);
    let request = p.pod.event("a request arrives: vLLM wakes for it");
    await_status(&p, "awake and working again", |u| {
        u["metrics"]["sleep"].is_null() && u["metrics"]["busy"] == 1.0
    });
    std::thread::sleep(stall + WAKE_FOR);
    let to = p.pod.timeline.now();
    p.pod.stop_watches();
    assert_all_pass(&p.pod, LIVE, idle, to, "idle, asleep, woken by a request");
    assert_all_pass(&p.pod, READY, idle, to, "a request wakes it");
    assert_eq!(p.vllm.state()["wakes_by_request"], 1);
    report_line(&format!(
        "[up_vllm_idle_sleep] asleep {:.2}s after the last request (TTL 2 s), live and ready throughout, woken only by the request at {:.2}s",
        asleep.saturating_sub(idle).as_secs_f64(),
        request.as_secs_f64()
    ));
}

/// U12: llama.cpp with `--sleep-idle-seconds 2`, before PR #27376 (every `/metrics` GET
/// restarts the idle timer, and wakes it) and after (a sleeping server answers `/metrics`
/// from a snapshot): with the agent watching, it falls asleep 2 s after its last request,
/// plus at most the agent's last scrape of the busy server (one scrape interval, two with
/// one in flight); it is never woken by the agent; it stays live and ready; a request
/// wakes it and the agent reads its metrics again. Before issue 28, the agent's scrape
/// every `--proc-interval` kept it awake for good.
#[test]
fn u12_llamacpp_falls_asleep_on_time_with_the_agent_watching() {
    let _slot = slots::shared();
    const IDLE: Duration = Duration::from_secs(2);
    let server = Server {
        container: "llama",
        image: "ghcr.io/ggml-org/llama.cpp:server",
        args: &["--sleep-idle-seconds", "2"],
    };
    for (version, fake) in [
        (
            "before_pr27376",
            &["--llamacpp", "--sleep-idle-seconds", "2"][..],
        ),
        (
            "after_pr27376",
            &[
                "--llamacpp",
                "--sleep-idle-seconds",
                "2",
                "--metrics-snapshot",
            ][..],
        ),
    ] {
        let name = format!("up_llama_sleep_{version}");
        let mut p = UpstreamPod::ready_server(&name, &server, fake);
        let interval = p.pod.agent_options.proc_interval;
        watch_live_and_ready(&mut p, "/livez/llama", "/readyz/llama");
        p.vllm.busy(1, 0);
        await_status(&p, "the agent sees llama.cpp busy", |u| {
            u["metrics"]["busy"] == 1.0
        });
        p.vllm.busy(0, 0);
        let idle = p.pod.event("requests done: idle");
        // Its own `/props`: the HTTP thread answers, no task is posted.
        let deadline = Instant::now() + IDLE * 3;
        let asleep = loop {
            let props = client::get(p.vllm.addr, "/props", Duration::from_secs(1)).expect("props");
            if props.text().contains(r#""is_sleeping":true"#) {
                break p.pod.event("llama.cpp asleep");
            }
            assert!(
                Instant::now() < deadline,
                "{name}: llama.cpp never fell asleep with the agent watching: {}",
                p.vllm.state()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        // The idle timer restarted at the last task: the agent's last scrape of the busy
        // server, up to two scrape intervals after the request ended, and the fake's loop
        // checks every 20 ms (plus the poll above).
        p.pod.check_latency(
            "fell asleep after its last request",
            idle,
            asleep,
            IDLE,
            interval * 2 + Duration::from_millis(40),
        );
        assert!(asleep >= idle + IDLE, "{name}: asleep before its idle time");
        std::thread::sleep(IDLE * 2);
        let state = p.vllm.state();
        assert_eq!(state["is_sleeping"], true, "{name}: woken: {state}");
        assert_eq!(state["wakes"], 0, "{name}: {state}");
        let up = p.pod.status()["upstreams"][0].clone();
        assert_eq!(up["metrics"]["sleep"]["wakes"], "request", "{up}");
        assert!(
            up["metrics"]["unread_while_idle_seconds"].as_f64() >= Some(IDLE.as_secs_f64()),
            "{up}"
        );
        p.vllm.busy(1, 0);
        p.pod.event("a request wakes llama.cpp");
        await_status(&p, "the agent reads llama.cpp's metrics again", |u| {
            u["metrics"]["sleep"].is_null()
                && u["metrics"]["busy"] == 1.0
                && u["metrics"]["unread_while_idle_seconds"].is_null()
        });
        let to = p.pod.timeline.now();
        p.pod.stop_watches();
        assert_all_pass(&p.pod, "/livez/llama", idle, to, "idle and asleep");
        assert_all_pass(&p.pod, "/readyz/llama", idle, to, "a request wakes it");
        assert_eq!(
            p.vllm.state()["wakes"],
            1,
            "{name}: only the request woke it"
        );
        report_line(&format!(
            "[{name}] asleep {:.2}s after its last request (idle 2 s), not woken by the agent",
            asleep.saturating_sub(idle).as_secs_f64()
        ));
    }
}

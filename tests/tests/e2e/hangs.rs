//! Scenarios H1–H4 (SPEC §12): hangs a model server's own health does not show, each
//! against a stand-in built from the server's cited source, watched by the real agent.
//!
//! - H1: Triton's Python-backend stub dies unreaped while Triton answers live and ready 200
//!   (Triton #8604, #7230): `child_zombie` on readiness, and on liveness (Triton cannot
//!   recover the stub).
//! - H2: four loads that never listen: one only grows memory, one only burns CPU, one only
//!   reads a file, one does nothing; only the last fails `/startupz` with `load_stalled`.
//! - H3, H4: vLLM's engine dies while idle (vLLM #16259): `/health` 200, completions never
//!   answer, or stop after their first chunk (Dynamo #13675): the opt-in canary reads
//!   `loop_stalled: canary`.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use vitals_e2e::cgroup::Container;
use vitals_e2e::fake_vllm::FakeVllm;
use vitals_e2e::pod::{free_addr, AgentOptions, Pod};
use vitals_e2e::{client, prom, slots};

use crate::common::*;
use crate::upstreams::{injected_upstreams, manifest_of, VLLM};

/// The zombie rule's grace period (SPEC §12).
const ZOMBIE_GRACE: Duration = Duration::from_secs(10);

/// A pod of the agent alone, watching the upstreams of `config` (JSON).
fn agent_pod(name: &str, config: &str, dir: &Path) -> Pod {
    let file = dir.join("upstreams.json");
    std::fs::write(&file, config).expect("write the upstreams");
    let options = AgentOptions {
        extra_args: vec!["--upstreams".into(), file.to_string_lossy().into_owned()],
        ..agent()
    };
    let mut pod = Pod::new(name, options, worker());
    pod.start_agent_and_wait();
    pod
}

/// Waits until `/status` shows upstream `name`'s process found, and returns its pid.
fn await_found(pod: &Pod, name: &str, within: Duration) -> u64 {
    let deadline = Instant::now() + within;
    loop {
        let status = pod.status();
        let up = status["upstreams"]
            .as_array()
            .and_then(|u| u.iter().find(|u| u["name"] == name).cloned())
            .unwrap_or_default();
        if up["proc"]["process"] == "exists" {
            return up["proc"]["pid"]
                .as_u64()
                .expect("a found process has a pid");
        }
        assert!(
            Instant::now() < deadline,
            "the agent did not find {name}'s process: {status}"
        );
        std::thread::sleep(vitals_e2e::pod::POLL);
    }
}

/// The one child of `parent` (by the parent pid in `/proc/<pid>/stat`).
fn child_of(parent: u32) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let child = std::fs::read_dir("/proc")
            .expect("/proc lists")
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .find(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .ok()
                    .and_then(|s| {
                        let after = s.rsplit_once(") ")?.1.to_owned();
                        after.split_whitespace().nth(1)?.parse::<u32>().ok()
                    })
                    == Some(parent)
            });
        if let Some(pid) = child {
            return pid;
        }
        assert!(Instant::now() < deadline, "{parent} started no child");
        std::thread::sleep(vitals_e2e::pod::POLL);
    }
}

/// H1: the stub of Triton's Python backend killed and left unreaped, Triton's own health
/// 200: readiness and liveness fail with `child_zombie: triton_python_b <pid>` once the
/// child has been a zombie for 10 s, never before.
#[test]
fn h1_triton_zombie_stub_fails_readiness_and_liveness() {
    let _slot = slots::shared();
    let dir = tempfile::tempdir().expect("temp folder");
    let addr = free_addr();
    // Written by hand rather than by inject: the `triton` profile scrapes Triton's own
    // metrics port, 8002, which scenarios running side by side cannot all bind.
    let config = format!(
        r#"{{"triton": {{"livenessProbe": {{"httpGet": {{"path": "/v2/health/live", "port": {p}}}, "periodSeconds": 1}},
                       "readinessProbe": {{"httpGet": {{"path": "/v2/health/ready", "port": {p}}}, "periodSeconds": 1}},
                       "metrics": {{"profile": "triton", "port": {p}}}}}}}"#,
        p = addr.port()
    );
    let mut triton = FakeVllm::start_with(
        Path::new(env!("CARGO_BIN_EXE_fake-vllm")),
        addr,
        None,
        &["--triton"],
        &dir.path().join("fake-triton.log"),
    );
    let pod = agent_pod("hang_zombie", &config, dir.path());
    pod.await_probe(
        "/readyz/triton",
        Duration::from_secs(10),
        "Triton ready",
        |o| o.passed(),
    );
    await_found(&pod, "triton", Duration::from_secs(5));
    let stub = child_of(triton.pid());
    triton.control("/control/kill-stub");
    let fault = pod.event(format!(
        "Triton's Python-backend stub {stub} killed, left unreaped"
    ));
    let reason = format!("child_zombie: triton_python_b {stub}");
    let proc_interval = pod.agent_options.proc_interval;
    pod.await_detection(
        "/readyz/triton",
        &[reason.as_str()],
        fault,
        ZOMBIE_GRACE,
        proc_interval + PROBE_POLL,
        ZOMBIE_GRACE,
    );
    let live = pod.probe("/livez/triton");
    assert_eq!(
        live.reason(),
        Some(reason.as_str()),
        "Triton cannot recover its stub"
    );
    for path in ["/v2/health/live", "/v2/health/ready"] {
        let own = client::get(addr, path, Duration::from_secs(2)).expect("Triton answers");
        assert_eq!(own.status, 200, "Triton's own {path} still passes");
    }
    triton.kill();
}

/// The loads of H2: (container, mode, shows work).
const LOADS: [(&str, &str, bool); 4] = [
    ("memory", "memory", true),
    ("cpu", "cpu", true),
    ("reads", "read", true),
    ("stuck", "nothing", false),
];

/// H2: four loads that never listen, found by the command line inject recorded; only the
/// one that moves neither memory, CPU time nor bytes read fails `/startupz` with
/// `load_stalled`, after `--load-stall-timeout`; the others never do.
#[test]
fn h2_only_a_load_without_any_sign_of_work_is_load_stalled() {
    let _slot = slots::shared();
    let dir = tempfile::tempdir().expect("temp folder");
    let bin = env!("CARGO_BIN_EXE_fake-loader");
    let tag = format!("h2-{}", std::process::id());
    let containers: String = LOADS
        .iter()
        .map(|(name, mode, _)| {
            let port = free_addr().port();
            format!(
                "  - name: {name}
    image: registry.local/loader:1
    command: [fake-loader, {mode}, {tag}]
    startupProbe:
      httpGet: {{path: /health, port: {port}}}
      periodSeconds: 1
      failureThreshold: 600
"
            )
        })
        .collect();
    let manifest = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: loads\nspec:\n  containers:\n{containers}"
    );
    let config = injected_upstreams(&manifest);
    let pod = agent_pod("hang_loads", &config, dir.path());
    let start = pod.event("four loads starting");
    let _loads: Vec<Container> = LOADS
        .iter()
        .map(|(name, mode, _)| Container::start(&format!("h2-{name}"), &[bin, mode, &tag]))
        .collect();
    for (name, _, _) in LOADS {
        await_found(&pod, name, Duration::from_secs(5));
    }
    let load_stall = pod.agent_options.load_stall_timeout;
    let proc_interval = pod.agent_options.proc_interval;
    // The load clock starts at the first sample: a discovery round, then the sample in it.
    pod.await_detection(
        "/startupz/stuck",
        &["load_stalled"],
        start,
        load_stall,
        proc_interval * 2 + PROBE_POLL,
        load_stall,
    );
    // As long again: the loads that work are never failed.
    let until = Instant::now() + load_stall;
    while Instant::now() < until {
        for (name, _, _) in LOADS.iter().filter(|l| l.2) {
            let o = pod.probe(&format!("/startupz/{name}"));
            assert_ne!(o.reason(), Some("load_stalled"), "{name} shows work: {o}");
        }
        std::thread::sleep(PROBE_POLL);
    }
    let status = pod.status();
    let load = |name: &str| {
        status["upstreams"]
            .as_array()
            .and_then(|u| u.iter().find(|u| u["name"] == name))
            .map(|u| u["load"].clone())
            .unwrap_or_default()
    };
    vitals_e2e::report::report_line(&format!(
        "[hang_loads] /status load: memory {} | cpu {} | reads {} | stuck {}",
        load("memory"),
        load("cpu"),
        load("reads"),
        load("stuck")
    ));
    assert!(
        load("memory")["rss_bytes"].as_u64() > Some(8 << 20),
        "{status}"
    );
    assert!(load("cpu")["cpu_seconds"].as_f64() > Some(0.1), "{status}");
    assert!(
        load("reads")["read_bytes"].as_u64() > Some(8 << 20),
        "{status}"
    );
    assert!(
        load("stuck")["unmoved_seconds"].as_f64() >= Some(load_stall.as_secs_f64()),
        "{status}"
    );
    let metrics = pod.metrics();
    assert!(
        prom::metric(
            &metrics,
            "vitals_upstream_load_resident_memory_bytes",
            &[("worker", "memory")]
        )
        .is_some_and(|v| v > 8e6),
        "{metrics}"
    );
}

/// A ready fake vLLM whose agent sends canaries after 1 s idle with a 2 s deadline, wired
/// by inject from the `vitals.dev/canary.vllm` annotation.
fn canary_pod(name: &str, dir: &Path) -> (Pod, FakeVllm, SocketAddr) {
    let addr = free_addr();
    let manifest = manifest_of(addr.port(), &VLLM).replace(
        "      labels: {app: llm}\n    spec:",
        "      labels: {app: llm}\n      annotations:\n        vitals.dev/canary.vllm: '{\"idle\": \"1s\", \"deadline\": \"2s\"}'\n    spec:",
    );
    assert!(manifest.contains("vitals.dev/canary.vllm"), "{manifest}");
    let config = injected_upstreams(&manifest);
    let vllm = FakeVllm::start(
        Path::new(env!("CARGO_BIN_EXE_fake-vllm")),
        addr,
        Some(Duration::ZERO),
        &dir.join("fake-vllm.log"),
    );
    let pod = agent_pod(name, &config, dir);
    (pod, vllm, addr)
}

/// Waits until at least `n` canaries of `result` were counted.
fn await_canaries(pod: &Pod, result: &str, n: f64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let count = prom::metric(
            &pod.metrics(),
            "vitals_upstream_canaries_total",
            &[("worker", "vllm"), ("result", result)],
        );
        if count.is_some_and(|c| c >= n) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no {n} canaries {result} within {within:?}: {count:?}"
        );
        std::thread::sleep(vitals_e2e::pod::POLL);
    }
}

/// H3/H4: vLLM's engine dies while idle; `/livez/vllm` fails with `loop_stalled: canary`
/// within idle + deadline (+ the canary task's 1 s look) of the death.
fn engine_died_while_idle(name: &str, after_first_chunk: bool) {
    let _slot = slots::shared();
    let dir = tempfile::tempdir().expect("temp folder");
    let (pod, mut vllm, addr) = canary_pod(name, dir.path());
    await_canaries(&pod, "ok", 2.0, Duration::from_secs(15));
    pod.probe(LIVE_VLLM);
    vllm.die(after_first_chunk);
    let fault = pod.event(if after_first_chunk {
        "vLLM's engine died while idle: completions stop after their first chunk"
    } else {
        "vLLM's engine died while idle: completions never answer"
    });
    let (idle, deadline, look) = (
        Duration::from_secs(1),
        Duration::from_secs(2),
        Duration::from_secs(1),
    );
    pod.await_detection(
        LIVE_VLLM,
        &["loop_stalled: canary"],
        fault,
        idle + deadline,
        look + PROBE_POLL,
        Duration::ZERO,
    );
    let health = client::get(addr, "/health", Duration::from_secs(2)).expect("health");
    assert_eq!(health.status, 200, "vLLM's own /health still passes");
    await_canaries(&pod, "deadline", 1.0, Duration::from_secs(1));
    let status = pod.status().to_string();
    assert!(status.contains("\"last_result\":\"deadline\""), "{status}");
    vllm.kill();
}

const LIVE_VLLM: &str = "/livez/vllm";

#[test]
fn h3_canary_catches_an_engine_that_died_while_idle() {
    engine_died_while_idle("hang_idle_death", false);
}

#[test]
fn h4_canary_catches_a_stream_that_stops_after_its_first_chunk() {
    engine_died_while_idle("hang_first_chunk", true);
}

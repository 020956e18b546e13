//! Scenarios U1–U8 (SPEC §8): a model server that does not speak the protocol, a fake vLLM
//! in its own process, watched by the agent through its original probes, /proc and its
//! metrics. The agent's configuration comes from running `vitals-agent inject` on a plain
//! vLLM Deployment, as a user would, never from hand-written JSON.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use vitals_e2e::bins;
use vitals_e2e::client;
use vitals_e2e::fake_vllm::FakeVllm;
use vitals_e2e::pod::{free_addr, AgentOptions, Pod};
use vitals_e2e::probe::{probe_once, DEFAULT_TIMEOUT};
use vitals_e2e::report::report_line;
use vitals_e2e::slots;
use vitals_proto::env;

use crate::common::*;

const STARTED: &str = "/startupz/vllm";
const LIVE: &str = "/livez/vllm";
const READY: &str = "/readyz/vllm";
/// The probes' `periodSeconds` in the manifest.
const PERIOD: Duration = Duration::from_secs(1);

/// A model server's container as a Deployment runs it: its name, its image (which picks
/// the metrics profile) and the `args` its command line ends with (inject records them).
pub struct Server<'a> {
    /// The container's name.
    pub container: &'a str,
    /// Its image.
    pub image: &'a str,
    /// Its `args`.
    pub args: &'a [&'a str],
}

/// vLLM with no arguments of interest.
pub const VLLM: Server<'static> = Server {
    container: "vllm",
    image: "vllm/vllm-openai:v0.8.5",
    args: &[],
};

/// A Deployment of `server` as its users write it: `/health` on the API port, by name for
/// readiness; `periodSeconds: 1` so the scenarios run in seconds.
pub(crate) fn manifest_of(port: u16, server: &Server) -> String {
    let args = if server.args.is_empty() {
        String::new()
    } else {
        let quoted: Vec<String> = server.args.iter().map(|a| format!("{a:?}")).collect();
        format!("\n        args: [{}]", quoted.join(", "))
    };
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata:
  name: llm
spec:
  selector:
    matchLabels: {{app: llm}}
  template:
    metadata:
      labels: {{app: llm}}
    spec:
      containers:
      - name: {container}
        image: {image}{args}
        ports:
        - name: http
          containerPort: {port}
        startupProbe:
          httpGet: {{path: /health, port: {port}}}
          periodSeconds: 1
          failureThreshold: 30
        livenessProbe:
          httpGet: {{path: /health, port: {port}}}
          periodSeconds: 1
          failureThreshold: 3
        readinessProbe:
          httpGet: {{path: /health, port: http}}
          periodSeconds: 1
",
        container = server.container,
        image = server.image,
    )
}

/// Runs `vitals-agent inject` on `manifest` and returns the agent's `VITALS_UPSTREAMS`.
pub(crate) fn injected_upstreams(manifest: &str) -> String {
    let mut child = Command::new(bins::agent_bin())
        .args(["inject", "-q", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run vitals-agent inject");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(manifest.as_bytes())
        .expect("write the manifest");
    let out = child.wait_with_output().expect("inject finishes");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "inject failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The value is one YAML double-quoted scalar; JSON inside it only needs `\"` and `\\`
    // undone.
    let value = text
        .lines()
        .skip_while(|l| !l.trim_end().ends_with(&format!("name: {}", env::UPSTREAMS)))
        .nth(1)
        .and_then(|l| l.trim().strip_prefix("value: \""))
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or_else(|| panic!("no {} in inject's output:\n{text}", env::UPSTREAMS));
    let json = value.replace("\\\"", "\"").replace("\\\\", "\\");
    serde_json::from_str::<serde_json::Value>(&json)
        .unwrap_or_else(|e| panic!("{} is not JSON ({e}): {json}", env::UPSTREAMS));
    json
}

/// A pod with the agent and the fake vLLM (loading for `load_for`), wired by inject.
pub struct UpstreamPod {
    /// The agent's pod.
    pub pod: Pod,
    /// The fake server.
    pub vllm: FakeVllm,
    /// When the fake vLLM started (its load began), on the pod's timeline.
    vllm_started: Duration,
    _dir: tempfile::TempDir,
}

fn start(name: &str, load_for: Option<Duration>) -> UpstreamPod {
    start_server(name, load_for, &VLLM, &[])
}

/// [`start`] for `server`, the fake run with `fake_args` (`--engines 8`, ...).
pub fn start_server(
    name: &str,
    load_for: Option<Duration>,
    server: &Server,
    fake_args: &[&str],
) -> UpstreamPod {
    let dir = tempfile::tempdir().expect("temp folder");
    let addr = free_addr();
    let config = injected_upstreams(&manifest_of(addr.port(), server));
    let file = dir.path().join("upstreams.json");
    std::fs::write(&file, &config).expect("write the upstreams");
    let agent = AgentOptions {
        extra_args: vec!["--upstreams".into(), file.to_string_lossy().into_owned()],
        ..agent()
    };
    let mut pod = Pod::new(name, agent, worker());
    let vllm_started = pod.event("starting the fake vLLM");
    let vllm = FakeVllm::start_with(
        Path::new(env!("CARGO_BIN_EXE_fake-vllm")),
        addr,
        load_for,
        fake_args,
        &dir.path().join("fake-vllm.log"),
    );
    pod.event(format!("fake vLLM started on {addr} (pid {})", vllm.pid()));
    pod.start_agent_and_wait();
    UpstreamPod {
        pod,
        vllm,
        vllm_started,
        _dir: dir,
    }
}

impl UpstreamPod {
    /// Waits until `/status` shows the agent found vLLM's process (by its listening
    /// socket: the tests run as one user, so its fds are readable).
    fn await_process_found(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let status = self.pod.status();
            let proc = &status["upstreams"][0]["proc"];
            if proc["process"] == "exists" {
                assert_eq!(proc["pid"], self.vllm.pid(), "{status}");
                assert_eq!(proc["found_by"], "socket", "{status}");
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the agent did not find vLLM's process: {status}"
            );
            std::thread::sleep(vitals_e2e::pod::POLL);
        }
    }

    /// Loaded, serving, and seen so by the agent.
    fn ready(name: &str) -> UpstreamPod {
        Self::ready_server(name, &VLLM, &[])
    }

    /// [`UpstreamPod::ready`] for `server`, the fake run with `fake_args`.
    pub fn ready_server(name: &str, server: &Server, fake_args: &[&str]) -> UpstreamPod {
        let p = start_server(name, Some(Duration::ZERO), server, fake_args);
        p.pod.await_probe(
            &format!("/readyz/{}", server.container),
            Duration::from_secs(10),
            "ready",
            |o| o.passed(),
        );
        p
    }
}

/// U1: a slow start passes through startup without a restart: while vLLM loads, the
/// agent's startup probe fails with vLLM's own 503, well inside the kubelet's budget, and
/// passes within a period of vLLM turning healthy.
#[test]
fn u1_slow_start_passes_startup() {
    let _slot = slots::shared();
    const LOAD: Duration = Duration::from_secs(4);
    let mut p = start("up_slow_start", Some(LOAD));
    let t0 = p.vllm_started;
    p.pod.event("agent up, vLLM loading");
    // Before the agent's first run of the probe: `no_result_yet`; then vLLM's own 503.
    p.pod.await_probe(
        STARTED,
        Duration::from_secs(5),
        "startup fails with vLLM's 503 while loading",
        |o| o.reason() == Some("probe_failed: status 503"),
    );
    let loading = p.pod.timeline.probes(STARTED, t0, p.pod.timeline.now());
    assert!(
        loading.iter().all(|e| e.passed == Some(false)
            && e.reason()
                .is_some_and(|r| r == "no_result_yet" || r == "probe_failed: status 503")),
        "startup while loading: {loading:?}"
    );
    let watch = p.pod.watch(
        // The kubelet's budget: periodSeconds 1 × failureThreshold 30, at the watch's grain.
        vec![(
            STARTED,
            vitals_e2e::probe::ProbeWorker::new(
                vitals_e2e::probe::ProbeKind::Startup,
                1,
                (30 * PERIOD.as_millis() / WATCH_PERIOD.as_millis()) as u32,
            ),
        )],
        WATCH_PERIOD,
    );
    let (passed_at, _) = p.pod.await_probe(
        STARTED,
        LOAD + Duration::from_secs(5),
        "startup passes",
        |o| o.passed(),
    );
    p.pod.stop_watches();
    // The agent's next probe of vLLM (one period) sees it healthy.
    p.pod.check_latency(
        "startup passed after vLLM turned healthy",
        t0 + LOAD,
        passed_at,
        PERIOD,
        PROBE_POLL,
    );
    assert_eq!(
        watch.restarts(STARTED),
        0,
        "the kubelet would have restarted vLLM"
    );
    p.vllm.kill();
}

/// U2: the engine hangs while `/health` still answers 200: `/livez/vllm` fails with
/// `loop_stalled` within the stall timeout (+ 2 s) from vLLM's own metrics.
#[test]
fn u2_engine_hang_fails_liveness_while_health_is_200() {
    let _slot = slots::shared();
    let p = UpstreamPod::ready("up_engine_hang");
    let stall = p.pod.agent_options.stall_timeout;
    p.vllm.busy(2, 1);
    p.pod.event("vLLM busy: 2 running, 1 waiting");
    // Working while busy is never a stall.
    let busy_from = p.pod.timeline.now();
    std::thread::sleep(stall + Duration::from_secs(1));
    p.pod.probe(LIVE);
    assert_all_pass(
        &p.pod,
        LIVE,
        busy_from,
        p.pod.timeline.now(),
        "busy and working",
    );
    p.vllm.hang_engine();
    let fault = p.pod.event("vLLM engine loop hung");
    // The stall clock starts at the last scrape (one per /proc interval) that saw the work
    // counters move, at most one scrape after the hang; the stall is shown by the first
    // scrape a stall timeout after that, at most one more scrape later (issue 26: a stall is
    // what answered scrapes show, never the time since the last one).
    p.pod.await_detection(
        LIVE,
        &["loop_stalled"],
        fault,
        stall,
        p.pod.agent_options.proc_interval * 2 + PROBE_POLL,
        stall.saturating_sub(p.pod.agent_options.proc_interval * 2),
    );
    let health = client::get(p.vllm.addr, "/health", Duration::from_secs(2)).expect("health");
    assert_eq!(health.status, 200, "vLLM's own /health still passes");
    let status = p.pod.status();
    let text = status.to_string();
    assert!(
        text.contains("\"upstream\"") && text.contains("loop_stalled") && text.contains("vllm"),
        "/status does not show the stalled upstream: {status}"
    );
    let metrics = p.pod.metrics();
    assert_eq!(
        vitals_e2e::client::metric(&metrics, "vitals_worker_in_flight", &[("worker", "vllm")]),
        Some(2.0),
        "vLLM's running requests re-exported: {metrics}"
    );
}

/// U8 (issue 26): a busy vLLM whose `/metrics` stops answering while `/health` stays 200
/// is no hung engine: failed scrapes are no evidence (SPEC §8), so neither liveness nor
/// readiness fails, across 2 × the stall timeout (the longest a stall may be held without
/// a reading) and more. Before the fix, liveness and readiness failed with `loop_stalled`
/// from one stall timeout after the last answered scrape.
#[test]
fn u8_busy_with_metrics_gone_never_fails_liveness() {
    let _slot = slots::shared();
    let mut p = UpstreamPod::ready("up_metrics_gone");
    let stall = p.pod.agent_options.stall_timeout;
    let interval = p.pod.agent_options.proc_interval;
    p.vllm.busy(2, 1);
    // The agent has seen the engine busy and working before its metrics go.
    let seen_busy = Instant::now() + Duration::from_secs(5);
    while p.pod.status()["upstreams"][0]["metrics"]["busy"] != 2.0 {
        assert!(Instant::now() < seen_busy, "the agent never saw vLLM busy");
        std::thread::sleep(PROBE_POLL);
    }
    let watch = p.pod.watch(
        vec![
            (
                LIVE,
                vitals_e2e::probe::ProbeWorker::new(vitals_e2e::probe::ProbeKind::Liveness, 1, 1),
            ),
            (
                READY,
                vitals_e2e::probe::ProbeWorker::new(vitals_e2e::probe::ProbeKind::Readiness, 1, 1),
            ),
        ],
        WATCH_PERIOD,
    );
    // Longer than any scrape's timeout: every scrape from now on times out.
    p.vllm.slow_metrics(Duration::from_secs(600));
    let from = p
        .pod
        .event("vLLM busy, its /metrics stops answering, /health stays 200");
    std::thread::sleep(2 * stall + 2 * interval + Duration::from_secs(1));
    let to = p.pod.timeline.now();
    p.pod.stop_watches();
    let status = p.pod.status();
    assert!(
        !status["upstreams"][0]["metrics"]["scrape_error"].is_null(),
        "the failing scrapes are shown: {status}"
    );
    assert_all_pass(&p.pod, LIVE, from, to, "metrics gone while /health passes");
    assert_all_pass(&p.pod, READY, from, to, "metrics gone while /health passes");
    assert_eq!(
        watch.restarts(LIVE),
        0,
        "the kubelet would have restarted vLLM"
    );
    p.vllm.kill();
}

/// U3: SIGSTOP of the vLLM process reads `stopped` within the hang timeout, as for a
/// native worker, and clears on SIGCONT.
#[test]
fn u3_sigstop_reads_stopped() {
    let _slot = slots::shared();
    let p = UpstreamPod::ready("up_sigstop");
    let pid = Pid::from_raw(i32::try_from(p.vllm.pid()).expect("pid fits"));
    let hang = p.pod.agent_options.hang_timeout;
    signal::kill(pid, Signal::SIGSTOP).expect("SIGSTOP");
    let fault = p.pod.event("SIGSTOP -> vLLM");
    // The first /proc sample showing T comes at most one /proc interval after the signal.
    p.pod.await_detection(
        LIVE,
        &["stopped"],
        fault,
        hang,
        p.pod.agent_options.proc_interval + PROBE_POLL,
        Duration::ZERO,
    );
    signal::kill(pid, Signal::SIGCONT).expect("SIGCONT");
    p.pod.event("SIGCONT -> vLLM");
    p.pod
        .await_probe(LIVE, hang + Duration::from_secs(5), "live again", |o| {
            o.passed()
        });
}

/// U4: the upstream process killed: readiness fails within one period + 1 s.
#[test]
fn u4_killed_upstream_fails_readiness() {
    let _slot = slots::shared();
    let mut p = UpstreamPod::ready("up_killed");
    p.await_process_found();
    let fault = p.pod.event("SIGKILL -> vLLM");
    p.vllm.kill();
    let (at, o) = p
        .pod
        .await_probe(READY, PERIOD + Duration::from_secs(5), "not ready", |o| {
            !o.passed()
        });
    // The next /proc sample finds the process gone, or the next probe (one period) fails.
    p.pod.check_latency(
        &format!(
            "readiness failed ({}) after the kill",
            o.reason().unwrap_or_default()
        ),
        fault,
        at,
        PERIOD,
        PROBE_POLL,
    );
    assert!(
        o.reason()
            .is_some_and(|r| r == "process_gone" || r.starts_with("probe_failed")),
        "{o}"
    );
}

/// U5: vLLM answering in 5 s while its probe has `timeoutSeconds: 1`: the agent's answer
/// stays immediate and says `probe_failed: timeout`.
#[test]
fn u5_slow_upstream_never_slows_the_agent() {
    let _slot = slots::shared();
    let p = UpstreamPod::ready("up_slow_answers");
    p.vllm.slow(Duration::from_secs(5));
    let at = p.pod.event("vLLM answers in 5 s");
    p.pod.await_detection(
        READY,
        &["probe_failed: timeout"],
        at,
        // The next probe starts within a period and times out after its timeout.
        PERIOD + DEFAULT_TIMEOUT,
        PROBE_POLL,
        Duration::ZERO,
    );
    let mut latencies: Vec<Duration> = (0..50)
        .map(|_| {
            let o = probe_once(p.pod.agent_addr, READY, DEFAULT_TIMEOUT);
            assert_eq!(o.reason(), Some("probe_failed: timeout"), "{o}");
            o.latency
        })
        .collect();
    latencies.sort();
    let (p50, max) = (
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1],
    );
    report_line(&format!(
        "[up_slow_answers] the agent answered /readyz/vllm in p50 {:.2} ms, max {:.2} ms while vLLM took 5 s",
        p50.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3
    ));
    assert!(
        max < DEFAULT_TIMEOUT,
        "a probe of the agent waited on the upstream: {max:?}"
    );
}

/// Resident memory of `pid` in KiB.
fn rss_kib(pid: u32) -> u64 {
    vitals_e2e::pod::rss_kib(pid).unwrap_or_else(|| panic!("no VmRSS for pid {pid}"))
}

/// U6: 50 probes a second of the upstream's paths through the agent for 60 s, while the
/// agent probes and scrapes vLLM: the agent's resident memory grows by less than 2 MiB.
#[test]
fn u6_steady_probing_does_not_grow_memory() {
    let _slot = slots::exclusive();
    let mut p = UpstreamPod::ready("up_memory");
    p.vllm.busy(1, 0);
    let pid = p.pod.agent().pid().as_raw().unsigned_abs();
    let paths = [STARTED, LIVE, READY];
    let run = |for_: Duration| {
        let start = Instant::now();
        let mut n = 0u32;
        while start.elapsed() < for_ {
            let o = probe_once(p.pod.agent_addr, paths[n as usize % 3], DEFAULT_TIMEOUT);
            assert!(o.passed(), "{o}");
            n += 1;
            let next = start + Duration::from_millis(20) * n;
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
        n
    };
    run(Duration::from_secs(5));
    let before = rss_kib(pid);
    let n = run(Duration::from_secs(60));
    let after = rss_kib(pid);
    report_line(&format!(
        "[up_memory] {n} probes in 60 s: agent RSS {before} KiB -> {after} KiB ({:+} KiB)",
        after as i64 - before as i64
    ));
    assert!(
        after < before + 2048,
        "RSS grew from {before} to {after} KiB"
    );
}

/// A child process killed (and reaped) when the scenario ends, however it ends.
struct KillOnDrop(std::process::Child);

impl KillOnDrop {
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A model pod as people run them: our worker speaking the protocol (`model`), a fake vLLM,
/// and our worker again with the protocol off (its socket leads nowhere) as a TEI-style
/// embeddings upstream probed on `/health`.
fn three_container_manifest(vllm: u16, embedder: u16) -> String {
    format!(
        "apiVersion: v1
kind: Pod
metadata:
  name: mixed
  annotations:
    vitals.dev/workers: model
spec:
  containers:
  - name: model
    image: vitals-worker:dev
  - name: vllm
    image: vllm/vllm-openai:v0.8.5
    ports: [{{name: http, containerPort: {vllm}}}]
    livenessProbe: {{httpGet: {{path: /health, port: http}}, periodSeconds: 1}}
    readinessProbe: {{httpGet: {{path: /health, port: http}}, periodSeconds: 1}}
  - name: embedder
    image: ghcr.io/huggingface/text-embeddings-inference:cpu-1.5
    ports: [{{containerPort: {embedder}}}]
    livenessProbe: {{tcpSocket: {{port: {embedder}}}, periodSeconds: 1}}
    readinessProbe: {{httpGet: {{path: /health, port: {embedder}}}, periodSeconds: 1}}
"
    )
}

/// U7: one upstream's engine hang and another's death touch nobody else's verdict: the
/// protocol worker and the other upstream stay live and ready throughout.
#[test]
fn u7_upstreams_beside_a_protocol_worker_are_isolated() {
    let _slot = slots::shared();
    let dir = tempfile::tempdir().expect("temp folder");
    let (vllm_addr, emb_addr) = (free_addr(), free_addr());
    let config = injected_upstreams(&three_container_manifest(vllm_addr.port(), emb_addr.port()));
    let parsed: serde_json::Value = serde_json::from_str(&config).expect("JSON");
    assert!(
        parsed.get("model").is_none(),
        "the protocol worker is no upstream"
    );
    assert_eq!(
        parsed["embedder"]["metrics"], "tei",
        "profile from the image"
    );
    let file = dir.path().join("upstreams.json");
    std::fs::write(&file, &config).expect("write the upstreams");
    let agent = AgentOptions {
        extra_args: vec!["--upstreams".into(), file.to_string_lossy().into_owned()],
        ..agent()
    };
    let mut pod = Pod::new("up_mixed", agent, worker());
    let vllm = FakeVllm::start(
        Path::new(env!("CARGO_BIN_EXE_fake-vllm")),
        vllm_addr,
        Some(Duration::ZERO),
        &dir.path().join("fake-vllm.log"),
    );
    // Our worker with the protocol off: its reporter retries a socket that never exists.
    let log = std::fs::File::create(dir.path().join("embedder.log")).expect("log");
    let mut embedder = KillOnDrop(
        Command::new(bins::worker_bin())
            .arg("--model-dir")
            .arg(bins::model_dir())
            .args(["--device", "cpu", "--listen", &emb_addr.to_string()])
            .arg("--agent-socket")
            .arg(dir.path().join("nowhere/agent.sock"))
            .args([
                "--name",
                "embedder",
                "--threads",
                "1",
                "--max-batch-tokens",
                "1024",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start the embedder"),
    );
    pod.start_ready();
    for path in [READY, "/readyz/embedder", "/readyz"] {
        pod.await_probe(path, Duration::from_secs(60), "all ready", |o| o.passed());
    }
    let kubelet = |kind, failures| vitals_e2e::probe::ProbeWorker::new(kind, 1, failures);
    use vitals_e2e::probe::ProbeKind as K;
    pod.watch(
        vec![
            ("/livez/model", kubelet(K::Liveness, 3)),
            ("/readyz/model", kubelet(K::Readiness, 1)),
            ("/livez/embedder", kubelet(K::Liveness, 3)),
            ("/readyz/embedder", kubelet(K::Readiness, 1)),
        ],
        WATCH_PERIOD,
    );
    vllm.busy(2, 0);
    vllm.hang_engine();
    let fault = pod.event("vLLM engine loop hung");
    let stall = pod.agent_options.stall_timeout;
    // As in U2: at most one scrape after the hang the stall clock runs, and at most one
    // scrape after the stall timeout a scrape shows it.
    pod.await_detection(
        LIVE,
        &["loop_stalled"],
        fault,
        stall,
        pod.agent_options.proc_interval * 2 + PROBE_POLL,
        Duration::ZERO,
    );
    let (_, agg) = pod.await_probe("/readyz", Duration::from_secs(5), "aggregate", |o| {
        !o.passed()
    });
    assert_eq!(agg.reason(), Some("vllm: loop_stalled"), "{agg}");
    let killed = pod.event("SIGKILL -> embedder");
    embedder.kill();
    pod.await_probe(
        "/readyz/embedder",
        PERIOD + Duration::from_secs(5),
        "embedder not ready",
        |o| !o.passed(),
    );
    let now = pod.timeline.now();
    pod.stop_watches();
    for path in ["/livez/model", "/readyz/model"] {
        assert_all_pass(&pod, path, fault, now, "the protocol worker");
    }
    for path in ["/livez/embedder", "/readyz/embedder"] {
        assert_all_pass(&pod, path, fault, killed, "the embedder before its death");
    }
    report_line(&format!(
        "[up_mixed] vLLM hang and embedder death left model live and ready (embedder not ready {:.2}s after its kill)",
        now.saturating_sub(killed).as_secs_f64()
    ));
}

//! Scenario P1, the real pod shape (issue 21): what a model pod on a cluster looks like to
//! the agent, on one machine. The server (the fake vLLM) runs as root in a container
//! (cgroup) of its own; beside it a root log shipper and an istio-like proxy (uid 1337), each
//! in its own cgroup; the agent runs as uid 65532 with no capabilities (`setpriv`), in its
//! own cgroup too, so it cannot read the server's fds and must find its process by cgroup,
//! socket uid and command line (SPEC §8). It listens on `[::]` and is probed over IPv6
//! (`[::1]`, the kubelet's watch) and IPv4.
//!
//! The agent's upstream config is written as SPEC §8 says `inject` writes it (the
//! container's probes, and its `command`/`args` as `"process": {"cmdline"}`), and the
//! kubelet simulation uses the liveness tolerance SPEC §8 says inject gives a rewritten
//! probe (period 5 s × failureThreshold 12): this scenario tests the agent's side; inject's
//! own output is tested with inject.
//!
//! Needs root, `setpriv` (util-linux) and cgroup v2 (`/sys/fs/cgroup` or its `unified`
//! folder on a hybrid host): without them it fails.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use vitals_e2e::cgroup::{Cgroup, Container};
use vitals_e2e::fake_vllm::FakeVllm;
use vitals_e2e::pod::{free_addr, AgentOptions, Pod};
use vitals_e2e::probe::{probe_once, ProbeKind, ProbeWorker, DEFAULT_TIMEOUT};
use vitals_e2e::report::report_line;
use vitals_e2e::slots;

use crate::common::*;

const LIVE: &str = "/livez/vllm";
const READY: &str = "/readyz/vllm";
/// The agent's user in deploy/ and inject's output.
const AGENT_UID: &str = "65532";

/// A container's cgroup, or the test fails saying what the machine lacks.
fn cgroup(name: &str) -> Arc<Cgroup> {
    Arc::new(
        Cgroup::create(name)
            .unwrap_or_else(|e| panic!("the pod-shape scenario needs root and cgroup v2: {e}")),
    )
}

/// What `/status` says of the vLLM upstream's process: `(pid, found_by)` once found.
fn found(pod: &Pod) -> Option<(u64, String)> {
    let status = pod.status();
    let proc = &status["upstreams"][0]["proc"];
    Some((proc["pid"].as_u64()?, proc["found_by"].as_str()?.to_owned()))
}

/// P1: see the module doc. Bounds:
/// - `stopped` after SIGSTOP: not before the hang timeout, at most hang timeout + /proc
///   interval + a probe poll + measured starvation (the same bound as a protocol worker's, scenario 5);
/// - three agent SIGKILLs with the kubelet's crash-loop back-off (10, 20, 40 s, scaled
///   1/10 as in s12) against the server's liveness tolerance (5 s × 12, scaled the same):
///   zero kubelet restarts of the server, same pid, found again after each restart.
#[test]
fn p1_real_pod_shape() {
    const SCALE: u32 = 10;
    let _slot = slots::shared();
    assert!(
        nix::unistd::geteuid().is_root(),
        "the pod-shape scenario runs the server as root and the agent as {AGENT_UID}: run it as root"
    );
    let server_addr = free_addr();
    let agent_port = free_addr().port();
    let cmdline = ["fake-vllm".to_owned(), server_addr.to_string()];
    let dir = tempfile::tempdir().expect("temp folder");
    let config = format!(
        r#"{{"vllm": {{"startupProbe": {{"httpGet": {{"path": "/health", "port": {p}}}, "periodSeconds": 1}},
                     "livenessProbe": {{"httpGet": {{"path": "/health", "port": {p}}}, "periodSeconds": 1}},
                     "readinessProbe": {{"httpGet": {{"path": "/health", "port": {p}}}, "periodSeconds": 1}},
                     "process": {{"cmdline": {cmd}}}}}}}"#,
        p = server_addr.port(),
        cmd = serde_json::to_string(&cmdline).expect("JSON"),
    );
    let file = dir.path().join("upstreams.json");
    std::fs::write(&file, &config).expect("write the upstreams");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");

    let agent_options = AgentOptions {
        wrapper: [
            "setpriv",
            "--reuid",
            AGENT_UID,
            "--regid",
            AGENT_UID,
            "--clear-groups",
        ]
        .map(String::from)
        .to_vec(),
        extra_args: vec!["--upstreams".into(), file.to_string_lossy().into_owned()],
        listen: Some(format!("[::]:{agent_port}")),
        cgroup: Some(cgroup("agent")),
        ..agent()
    };
    let (hang, proc_interval) = (agent_options.hang_timeout, agent_options.proc_interval);
    let mut pod = Pod::new("pod_shape", agent_options, worker());
    pod.agent_addr = SocketAddr::new(Ipv6Addr::LOCALHOST.into(), agent_port);
    let v4 = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), agent_port);
    // The shared socket volume: writable by the agent's user, as an emptyDir is.
    let run = pod
        .socket()
        .parent()
        .expect("the socket has a folder")
        .to_path_buf();
    std::fs::create_dir_all(&run).expect("mkdir run");
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o777)).expect("chmod run");
    let pod_dir = run.parent().expect("the pod folder");
    std::fs::set_permissions(pod_dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");

    // The containers: the server (root), a root log shipper, an istio-like proxy.
    let server_cgroup = cgroup("vllm");
    let bin = Path::new(env!("CARGO_BIN_EXE_fake-vllm"));
    let vllm = FakeVllm::start(bin, server_addr, None, &dir.path().join("fake-vllm.log"));
    server_cgroup
        .add(vllm.pid())
        .expect("server into its cgroup");
    vllm.loaded();
    pod.event(format!(
        "fake vLLM (root) on {server_addr}, pid {}",
        vllm.pid()
    ));
    let _neighbours = Container::neighbours();

    pod.start_agent_and_wait();
    let agent_pid = pod.agent().pid();
    let own = std::fs::read_to_string(format!("/proc/{agent_pid}/status")).expect("status");
    assert!(
        own.contains(&format!("Uid:\t{AGENT_UID}\t{AGENT_UID}"))
            && own.contains("CapEff:\t0000000000000000"),
        "the agent runs as {AGENT_UID} without capabilities:\n{own}"
    );
    pod.await_probe(
        READY,
        Duration::from_secs(10),
        "vLLM ready over IPv6",
        |o| o.passed(),
    );
    for path in [LIVE, READY] {
        let o = probe_once(v4, path, DEFAULT_TIMEOUT);
        assert!(o.passed(), "{path} over IPv4 ({v4}): {o}");
    }
    let server_pid = u64::from(vllm.pid());
    let seen = vitals_e2e::wait::eventually("vLLM's process found", Duration::from_secs(5), || {
        found(&pod)
    });
    assert_eq!(
        seen,
        (server_pid, "cgroup".to_owned()),
        "found by its container, not its fds"
    );

    // SIGSTOP: `stopped` within a protocol worker's bound.
    let stop = pod.event("SIGSTOP -> vLLM");
    let vllm_pid = Pid::from_raw(i32::try_from(vllm.pid()).expect("pids fit in i32"));
    signal::kill(vllm_pid, Signal::SIGSTOP).expect("SIGSTOP");
    pod.await_detection(
        LIVE,
        &["stopped"],
        stop,
        hang,
        proc_interval + PROBE_POLL,
        hang,
    );
    signal::kill(vllm_pid, Signal::SIGCONT).expect("SIGCONT");
    pod.event("SIGCONT -> vLLM");
    pod.await_probe(LIVE, hang + Duration::from_secs(5), "live again", |o| {
        o.passed()
    });

    // The agent crash-loops; the kubelet must never restart the server for it.
    let period = Duration::from_secs(5) / SCALE;
    let failure_threshold = 12;
    let crash_loop = pod.event("crash loop begins");
    let kubelet = pod.watch(
        vec![(
            LIVE,
            ProbeWorker::new(ProbeKind::Liveness, 1, failure_threshold),
        )],
        period,
    );
    for delay_s in [10u64, 20, 40] {
        crash_and_restart_agent(&mut pod, LIVE, delay_s, SCALE);
        let again =
            vitals_e2e::wait::eventually("found again", Duration::from_secs(5), || found(&pod));
        assert_eq!(
            again,
            (server_pid, "cgroup".to_owned()),
            "the restarted agent finds the same server"
        );
        // A crash loop's container runs a while before each crash (as in s12).
        thread::sleep(period * 3);
    }
    pod.stop_watches();
    // The longest time /livez/vllm did not pass (first failure to the next pass).
    let mut longest = Duration::ZERO;
    let mut failing_since = None;
    for e in pod.timeline.probes(LIVE, crash_loop, pod.timeline.now()) {
        match (e.passed == Some(true), failing_since) {
            (true, Some(since)) => {
                longest = longest.max(e.at.saturating_sub(since));
                failing_since = None;
            }
            (false, None) => failing_since = Some(e.at),
            _ => {}
        }
    }
    report_line(&format!(
        "[pod_shape] 3 agent restarts (delays 10/20/40 s scaled 1/{SCALE}), vLLM liveness {period:?} x {failure_threshold} (scaled): longest /livez/vllm outage {:.2}s of {:.1}s tolerated, {} kubelet restarts",
        longest.as_secs_f64(),
        (period * failure_threshold).as_secs_f64(),
        kubelet.restarts(LIVE)
    ));
    assert_eq!(
        kubelet.restarts(LIVE),
        0,
        "the agent's crash loop made the kubelet restart vLLM"
    );
    assert!(
        signal::kill(vllm_pid, None).is_ok(),
        "the server kept running (pid {server_pid})"
    );
}

//! SPEC §11's "real control plane" scenario (issue 25): a LeaderWorkerSet group of two pods
//! as LWS builds them (the toolkit's `lws`, from LWS's source), injected by the webhook's
//! review (`vitals-agent webhook`'s own `review`, in process), run as processes in cgroups
//! as the e2e group scenarios run them, under a kubelet that runs every probe of every
//! container of the admitted pods (the agent's, an init container, included) with the
//! periods and thresholds the webhook wrote.
//!
//! What differs from a cluster, on purpose: the leader's vLLM is the toolkit's fake vLLM;
//! the member's Ray worker is a shell that runs a child (`sh -c "sleep 600; exit" ray start
//! --block ...`); the agents get the env the webhook wrote as flags, with the toolkit's short
//! /proc timeouts; and the leader polls its member at its loopback address instead of the
//! fully qualified name its env derives (there is no cluster DNS here; the name itself is
//! checked in `lws.rs`).
//!
//! A second scenario runs the group under LWS `restartPolicy: None` and restarts the
//! leader's vLLM (§11: no loop): there the Ray worker is a shell that follows its head (the
//! vLLM port), and the test plays the kubelet restarting each container that exited.
//!
//! Needs root and cgroup v2, as the e2e group scenarios do: without them it fails.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::kubelet::{agent_env, container_restarted, probe_all, restart_counts, Probing};
use common::review::admit;
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use vitals_agent::inject::webhook::Outcome;
use vitals_agent::inject::InjectOptions;
use vitals_e2e::cgroup::{Cgroup, Container};
use vitals_e2e::fake_vllm::FakeVllm;
use vitals_e2e::pod::{free_addr, AgentOptions, Pod, WorkerOptions};
use vitals_e2e::report::report_line;
use vitals_e2e::{bins, lws, prom, slots, wait};
use vitals_proto::env;

/// The port the webhook points every rewritten probe at.
const AGENT_PORT: u16 = 9180;
/// How long the member's agent is starved (SIGSTOP), as a throttled or swapped agent is.
const STARVED: Duration = Duration::from_secs(20);

/// A LeaderWorkerSet of one group of two pods: the leader runs vLLM (`vllm`, probed on
/// `/health` every second), the worker a headless Ray worker (`ray`, no probes).
/// `restart_policy` is LWS's: `RecreateGroupOnPodRestart` (its default) recreates the group
/// on any container restart, `None` leaves restarts to the kubelet.
fn lws_object(vllm: &[String], vllm_port: u16, ray: &[String], restart_policy: &str) -> Value {
    let health = json!({"httpGet": {"path": "/health", "port": vllm_port}, "periodSeconds": 1});
    json!({
        "apiVersion": "leaderworkerset.x-k8s.io/v1",
        "kind": "LeaderWorkerSet",
        "metadata": {"name": "vllm", "namespace": "ml"},
        "spec": {
            "replicas": 1,
            "leaderWorkerTemplate": {
                "size": 2,
                "restartPolicy": restart_policy,
                "leaderTemplate": {"spec": {"containers": [{
                    "name": "vllm",
                    "image": "vllm/vllm-openai:v0.8.5",
                    "command": vllm,
                    "readinessProbe": health,
                    "livenessProbe": health,
                }]}},
                "workerTemplate": {"spec": {"containers": [{
                    "name": "ray",
                    "image": "vllm/vllm-openai:v0.8.5",
                    "command": ray,
                }]}},
            },
        },
    })
}

/// The webhook's answer for `pod`: injected, or the test fails saying why not.
fn injected(pod: &Value) -> Value {
    let opts = InjectOptions {
        image: Some("registry.example/vitals/vitals-agent:0.1.0".into()),
        ..InjectOptions::default()
    };
    let a = admit(pod, &opts);
    assert_eq!(a.outcome, Outcome::Injected, "{:?}", a.warnings);
    a.pod
}

/// `name`'s value in the agent's env, or the test fails.
fn env_value(env: &[(String, String)], name: &str) -> String {
    env.iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| panic!("the agent has no {name}: {env:?}"))
}

/// The command line of container `name` of `pod`, as its process runs it.
fn command(pod: &Value, name: &str) -> Vec<String> {
    let c = pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}"));
    ["command", "args"]
        .iter()
        .flat_map(|k| c[k].as_array().into_iter().flatten())
        .map(|w| w.as_str().unwrap().to_owned())
        .collect()
}

/// The simulated pod of `admitted`, its agent not started yet: the flags its env gives
/// (plus `more`).
fn agent_pod(name: &str, admitted: &Value, more: &[String], cgroup: Option<Arc<Cgroup>>) -> Pod {
    let env = agent_env(admitted);
    let mut extra_args = vec![
        format!("--upstreams={}", env_value(&env, env::UPSTREAMS)),
        format!("--group-role={}", env_value(&env, env::GROUP_ROLE)),
    ];
    extra_args.extend(more.iter().cloned());
    let options = AgentOptions {
        extra_args,
        expect: Vec::new(),
        cgroup,
        ..AgentOptions::default()
    };
    Pod::new(name, options, WorkerOptions::default())
}

fn pid(p: u32) -> Pid {
    Pid::from_raw(i32::try_from(p).unwrap())
}

/// One LWS group of two pods, running: the leader's vLLM and agent, the member's Ray
/// container and agent, and the kubelet probing every container of both.
struct LwsGroup {
    dir: tempfile::TempDir,
    fake: std::path::PathBuf,
    vllm: FakeVllm,
    ray: Container,
    ray_cmd: Vec<String>,
    member: Pod,
    leader: Pod,
    member_probes: Vec<Probing>,
    leader_probes: Vec<Probing>,
    /// When the leader's agent was started (the leader's timeline).
    leader_started: Duration,
}

impl LwsGroup {
    /// Builds the group's pods with LWS's `restart_policy` (the toolkit's `lws`), admits
    /// them through the webhook's review, and starts them: the member's Ray container runs
    /// `sh -c <ray_script> ray start --block --node-name=<name>-<pid>` (vLLM's LWS example
    /// runs `sh -c "bash multi-node-serving.sh worker ..."`, whose script runs `ray start
    /// --block`: a shell with Ray under it; the node name keeps other runs' `ray` apart),
    /// each container and agent in a cgroup of its own (`name` prefixes them). `ray_script`
    /// is given the address the leader's vLLM listens on (the Ray head's).
    fn start(
        name: &str,
        restart_policy: &str,
        ray_script: impl FnOnce(SocketAddr) -> String,
    ) -> LwsGroup {
        let dir = tempfile::tempdir().unwrap();
        let vllm_addr: SocketAddr = free_addr();
        let fake = bins::e2e_bin("fake-vllm");
        // Loading until told (`FakeVllm::loaded`), so that a restarted one runs the same
        // command line.
        let vllm_cmd: Vec<String> =
            vec![fake.to_string_lossy().into_owned(), vllm_addr.to_string()];
        let ray_cmd: Vec<String> = [
            "sh",
            "-c",
            &ray_script(vllm_addr),
            "ray",
            "start",
            "--block",
        ]
        .into_iter()
        .map(String::from)
        .chain([format!("--node-name={name}-{}", std::process::id())])
        .collect();
        let lws_obj = lws_object(&vllm_cmd, vllm_addr.port(), &ray_cmd, restart_policy);
        let leader_pod = lws::leader_pod(&lws_obj, 0);
        let worker_pod = lws::worker_pod(&lws_obj, &leader_pod, 1);
        let (leader_spec, worker_spec) = (injected(&leader_pod), injected(&worker_pod));
        let leader_env = agent_env(&leader_spec);
        for (name, want) in [
            (env::GROUP_SIZE, "2"),
            (env::GROUP_POD_NAME, "vllm-0"),
            (env::POD_NAMESPACE, "ml"),
        ] {
            assert_eq!(env_value(&leader_env, name), want, "{name}");
        }

        // The member pod: Ray's container, then its agent, each in a cgroup of its own.
        let ray = Container::start(
            &format!("{name}-ray"),
            &ray_cmd.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        assert_eq!(
            command(&worker_spec, "ray"),
            ray_cmd,
            "the webhook leaves the command"
        );
        let agent_cgroup = Arc::new(
            Cgroup::create(&format!("{name}-agent")).unwrap_or_else(|e| {
                panic!("the member's agent needs a cgroup of its own (root, cgroup v2): {e}")
            }),
        );
        let mut member = agent_pod(
            &format!("{name}_member"),
            &worker_spec,
            &[],
            Some(agent_cgroup),
        );
        member.start_agent_and_wait();
        let member_probes = probe_all(&worker_spec, &mut member, AGENT_PORT);

        // The leader pod: vLLM, then its agent, polling the member.
        let vllm = FakeVllm::start(&fake, vllm_addr, None, &dir.path().join("vllm.log"));
        vllm.loaded();
        assert_eq!(command(&leader_spec, "vllm"), vllm_cmd);
        let members = format!("--group-members={}", member.agent_addr);
        let mut leader = agent_pod(&format!("{name}_leader"), &leader_spec, &[members], None);
        let leader_started = leader.event("starting the leader's agent");
        leader.start_agent_and_wait();
        let leader_probes = probe_all(&leader_spec, &mut leader, AGENT_PORT);
        leader.event(format!("vLLM pid {}, ray pid {}", vllm.pid(), ray.pid()));
        LwsGroup {
            dir,
            fake,
            vllm,
            ray,
            ray_cmd,
            member,
            leader,
            member_probes,
            leader_probes,
            leader_started,
        }
    }

    /// Whether the Ray container's shell is running `sleep <secs>` (where its script is).
    fn ray_sleeps(&self, secs: &str) -> bool {
        let argv = format!("sleep\0{secs}\0");
        self.ray
            .children()
            .iter()
            .any(|c| std::fs::read_to_string(format!("/proc/{c}/cmdline")).is_ok_and(|l| l == argv))
    }

    /// Waits for the group to form (the leader's `GET /status` records the member's
    /// instances) and the leader's `/readyz/vllm` to pass; returns when it passed.
    fn await_formed(&self, what: &str) -> Duration {
        wait::eventually(what, Duration::from_secs(15), || {
            let g = self.leader.status()["group"].clone();
            g["members"][0]["recorded"]["ray"].is_string().then_some(())
        });
        self.leader
            .await_probe("/readyz/vllm", Duration::from_secs(15), what, |o| {
                o.passed()
            })
            .0
    }
}

/// Formation; a Ray process SIGSTOPped under its shell fails the leader's readiness naming
/// the member; the member's agent SIGSTOPped for [`STARVED`] makes the kubelet restart no
/// container of either pod (LWS's ContainerRestarted stays false, init containers
/// included) and never breaks the group (the leader's `/livez/vllm` passes throughout,
/// `vitals_group_broken_total` stays 0).
#[test]
fn a_group_built_by_lws_and_the_webhook_survives_a_stopped_ray_process_and_a_starved_agent() {
    let _slot = slots::shared();
    let started = Instant::now();
    // `; exit` keeps the shell from exec'ing `sleep`.
    let LwsGroup {
        ray,
        mut member,
        mut leader,
        member_probes,
        leader_probes,
        leader_started: from,
        vllm: _vllm,
        dir: _dir,
        fake: _,
        ray_cmd: _,
    } = LwsGroup::start("lws-group", "RecreateGroupOnPodRestart", |_| {
        "sleep 600; exit".into()
    });
    let formed = leader
        .await_probe("/readyz/vllm", Duration::from_secs(15), "formation", |o| {
            o.passed()
        })
        .0;

    // A Ray process stopped under its shell (the shell itself sleeps).
    let child = wait::eventually(
        "ray's shell runs its command",
        Duration::from_secs(5),
        || ray.children().first().copied(),
    );
    signal::kill(pid(child), Signal::SIGSTOP).unwrap();
    let stopped = leader.event(format!("SIGSTOP -> ray's child {child}"));
    let (named, _) = leader.await_probe(
        "/readyz/vllm",
        Duration::from_secs(15),
        "the member named",
        |o| o.reason() == Some("group: member 1 ray: stopped"),
    );
    signal::kill(pid(child), Signal::SIGCONT).unwrap();
    let resumed = leader.event("SIGCONT -> ray's child");
    let (back, _) = leader.await_probe(
        "/readyz/vllm",
        Duration::from_secs(15),
        "ready again",
        |o| o.passed(),
    );

    // The member's agent starved.
    let agent_pid = member.agent().pid();
    signal::kill(agent_pid, Signal::SIGSTOP).unwrap();
    let starved = leader.event(format!("SIGSTOP -> the member's agent for {STARVED:?}"));
    leader.await_probe(
        "/readyz/vllm",
        Duration::from_secs(10),
        "the member unreachable",
        |o| {
            o.reason()
                .is_some_and(|r| r.starts_with("group: member 1 unreachable "))
        },
    );
    std::thread::sleep(STARVED.saturating_sub(leader.timeline.now() - starved));
    signal::kill(agent_pid, Signal::SIGCONT).unwrap();
    let fed = leader.event("SIGCONT -> the member's agent");
    let (recovered, _) = leader.await_probe(
        "/readyz/vllm",
        Duration::from_secs(15),
        "ready after the starvation",
        |o| o.passed(),
    );
    // A probe period more, so every kubelet worker saw the end of it.
    std::thread::sleep(Duration::from_secs(2));
    leader.stop_watches();
    member.stop_watches();

    for (what, probes) in [("leader", &leader_probes), ("member", &member_probes)] {
        let counts = restart_counts(probes);
        eprintln!("{what} pod status (list, container, restartCount): {counts:?}");
        assert!(
            !container_restarted(&counts),
            "LWS would recreate the group: {what} {counts:?}"
        );
        assert!(
            counts
                .iter()
                .any(|(list, c, _)| *list == "initContainers" && c == "vitals-agent"),
            "{counts:?}"
        );
    }
    // From formation on (before it, vLLM's own first probe result may not be in yet).
    let live = leader
        .timeline
        .probes("/livez/vllm", formed, leader.timeline.now());
    assert!(
        !live.is_empty() && live.iter().all(|p| p.passed == Some(true)),
        "the leader's liveness failed: {live:?}"
    );
    let text = leader.metrics();
    for reason in ["restarted", "lost", "not_live"] {
        assert_eq!(
            prom::metric(&text, "vitals_group_broken_total", &[("reason", reason)]),
            Some(0.0),
            "the group broke ({reason})"
        );
    }
    report_line(&format!(
        "[lws_group] formation {:.2}s after the leader's agent; `group: member 1 ray: stopped` {:.2}s after SIGSTOP of ray's child, ready {:.2}s after SIGCONT; member agent starved {:?}: ready {:.2}s after SIGCONT, no container restarted, never broken; scenario {:.1}s",
        (formed - from).as_secs_f64(),
        (named - stopped).as_secs_f64(),
        (back - resumed).as_secs_f64(),
        STARVED,
        (recovered - fed).as_secs_f64(),
        started.elapsed().as_secs_f64()
    ));
}

/// How often the kubelet's PLEG relists containers, noticing one that exited and restarting
/// it (kubernetes pkg/kubelet/kubelet.go `genericPlegRelistPeriod`, 1 s).
const PLEG_RELIST: Duration = Duration::from_secs(1);
/// How long a Ray-like worker keeps running after its head went before it exits (a raylet
/// gives up on a lost GCS only after `gcs_rpc_server_reconnect_timeout_s`, 60 s by default;
/// shortened here). Meanwhile its member agent still answers live on the old process.
const HEAD_GONE_GRACE_S: u32 = 5;
/// How long the leader watches for a loop after the group formed again: several group polls.
const NO_LOOP_WATCH: Duration = Duration::from_secs(8);

/// SPEC §11, LWS `restartPolicy: None`: the leader's vLLM (the Ray head) crashes and the
/// kubelet restarts it; the member's Ray worker follows its head (exits some seconds after
/// the head's port went, and is restarted by the kubelet once, joining the new head), and the
/// new vLLM turns ready only once that worker joined (vLLM's multi-node-serving.sh leader
/// waits for `--ray_cluster_size` nodes). The group reads `group: forming` and then forms
/// again; after that the leader's `/livez/vllm` never fails with `group_broken` (no loop),
/// `vitals_group_broken_total{reason="restarted"}` stays 0, and the kubelet restarts the
/// leader's vLLM exactly once (the crash) and the member's Ray container exactly once.
#[test]
fn a_leader_restart_under_lws_restart_policy_none_forms_the_group_again_without_a_loop() {
    let _slot = slots::shared();
    let started = Instant::now();
    // A Ray worker: waits for its head (the leader's vLLM port), runs while the head is
    // there, and exits HEAD_GONE_GRACE_S after it went (3 polls in a row refused) (bash, for its /dev/tcp).
    let mut g = LwsGroup::start("lws-loop", "None", |head| {
        format!(
            "up() {{ bash -c 'exec 3<>/dev/tcp/{ip}/{port}' 2>/dev/null; }}; \
             until up; do sleep 0.2; done; n=0; \
             while [ $n -lt 3 ]; do if up; then n=0; else n=$((n+1)); fi; sleep 0.3; done; \
             sleep {HEAD_GONE_GRACE_S}; exit 1",
            ip = head.ip(),
            port = head.port()
        )
    });
    let formed = g.await_formed("formation");
    let ray_argv: Vec<&str> = g.ray_cmd.iter().map(String::as_str).collect();

    // The worker joined its head (it polls it at 0.3 s intervals, 0.2 s while waiting).
    wait::eventually(
        "ray's worker joins its head",
        Duration::from_secs(10),
        || g.ray_sleeps("0.3").then_some(()),
    );
    // vLLM crashes; the kubelet notices at its next relist and restarts it. The new vLLM
    // loads until its Ray worker joined.
    // The whole container: fake-vllm's process group.
    g.vllm.signal(Signal::SIGKILL);
    g.vllm.kill();
    let crashed = g
        .leader
        .event(format!("vLLM (pid {}) killed", g.vllm.pid()));
    // The kubelet restarts it at a relist; here once the Ray worker has noticed its head
    // went (its shell sleeps out the grace), so that a loaded machine's scheduling cannot
    // hide the head's absence from the worker's polls.
    wait::eventually(
        "ray's worker notices its head went",
        Duration::from_secs(10),
        || g.ray_sleeps(&HEAD_GONE_GRACE_S.to_string()).then_some(()),
    );
    let addr = g.vllm.addr;
    g.vllm = FakeVllm::start(&g.fake, addr, None, &g.dir.path().join("vllm-2.log"));
    let vllm_restarts = 1;
    g.leader.event(format!(
        "kubelet: vLLM restarted (pid {}), loading",
        g.vllm.pid()
    ));

    // The leader saw its own vLLM restart: the group forms again from scratch (its
    // readiness says vLLM's own 503 while vLLM loads, `group: forming` once it is ready).
    let forming = wait::until("the group forming again", Duration::from_secs(10), || {
        let s = g.leader.status()["group"].clone();
        if s["resets"] == 1 && s["members"][0]["recorded"]["ray"].is_null() {
            Ok(g.leader.timeline.now())
        } else {
            Err(s)
        }
    });
    // The member's Ray worker exits after its head went; the kubelet restarts it.
    let old_ray = g.ray.pid();
    wait::eventually(
        "ray's worker exits after its head went",
        Duration::from_secs(u64::from(HEAD_GONE_GRACE_S) + 5),
        || g.ray.exited().then_some(()),
    );
    g.leader.event(format!("ray (pid {old_ray}) exited"));
    std::thread::sleep(PLEG_RELIST);
    g.ray.restart(&ray_argv);
    let ray_restarts = 1;
    g.leader
        .event(format!("kubelet: ray restarted (pid {})", g.ray.pid()));
    // The new head has its worker: the leader sees the restarted Ray process.
    let new_ray = format!("{}:", g.ray.pid());
    wait::eventually(
        "the leader sees the restarted ray worker",
        Duration::from_secs(10),
        || {
            let g = g.leader.status()["group"].clone();
            g["members"][0]["instances"]["ray"]
                .as_str()
                .is_some_and(|i| i.starts_with(&new_ray))
                .then_some(())
        },
    );
    g.vllm.loaded();
    let loaded = g.leader.event("vLLM loaded: its Ray worker joined");
    let reformed = g.await_formed("re-formation");

    // No loop: several group polls after formation, nothing breaks and nothing restarts.
    // (The simulated kubelet's probe workers are not reset by the container restarts above,
    // so liveness restarts count from here.)
    let live_restarts_at_formation = restart_counts(&g.leader_probes);
    std::thread::sleep(NO_LOOP_WATCH);
    g.leader.stop_watches();
    g.member.stop_watches();
    assert!(
        !g.ray.exited(),
        "the restarted Ray worker exited again: a restart loop"
    );
    let broken: Vec<_> = g
        .leader
        .timeline
        .probes("/livez/vllm", crashed, g.leader.timeline.now())
        .into_iter()
        .filter(|p| p.detail.contains("group_broken"))
        .collect();
    assert!(
        broken.is_empty(),
        "the leader's liveness failed with group_broken after its restart: {broken:?}"
    );
    let text = g.leader.metrics();
    assert_eq!(
        prom::metric(
            &text,
            "vitals_group_broken_total",
            &[("reason", "restarted")]
        ),
        Some(0.0),
        "a member counted as restarted against the new formation"
    );
    let leader_counts = restart_counts(&g.leader_probes);
    let member_counts = restart_counts(&g.member_probes);
    eprintln!("leader pod status (list, container, restartCount by probes): {leader_counts:?}");
    eprintln!("member pod status (list, container, restartCount by probes): {member_counts:?}");
    let by_probes = |counts: &[(&str, String, u32)], c: &str| {
        counts.iter().find(|(_, n, _)| n == c).map_or(0, |e| e.2)
    };
    assert_eq!(
        vllm_restarts + by_probes(&leader_counts, "vllm")
            - by_probes(&live_restarts_at_formation, "vllm"),
        1,
        "the kubelet restarts the leader's vLLM exactly once (its crash): {leader_counts:?}"
    );
    assert_eq!(
        ray_restarts + by_probes(&member_counts, "ray"),
        1,
        "the member's Ray container restarts exactly once: {member_counts:?}"
    );
    let g_status = g.leader.status()["group"].clone();
    assert_eq!(g_status["resets"], 1, "{g_status}");
    report_line(&format!(
        "[lws_group] restartPolicy None: formed {:.2}s after the leader's agent; vLLM crash -> forming again {:.2}s; re-formed {:.2}s after vLLM loaded; {NO_LOOP_WATCH:?} after: never group_broken, vLLM and ray restarted once each; scenario {:.1}s",
        (formed - g.leader_started).as_secs_f64(),
        (forming - crashed).as_secs_f64(),
        (reformed - loaded).as_secs_f64(),
        started.elapsed().as_secs_f64()
    ));
}

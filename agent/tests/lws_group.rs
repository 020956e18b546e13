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
//! Needs root and cgroup v2, as the e2e group scenarios do: without them it fails.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::kubelet::{agent_env, container_restarted, probe_all, restart_counts};
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

/// The port the webhook points every rewritten probe at.
const AGENT_PORT: u16 = 9180;
/// How long the member's agent is starved (SIGSTOP), as a throttled or swapped agent is.
const STARVED: Duration = Duration::from_secs(20);

/// A LeaderWorkerSet of one group of two pods: the leader runs vLLM (`vllm`, probed on
/// `/health` every second), the worker a headless Ray worker (`ray`, no probes).
/// `RecreateGroupOnPodRestart` (LWS's default): any container restart recreates the group.
fn lws_object(vllm: &[String], vllm_port: u16, ray: &[String]) -> Value {
    let health = json!({"httpGet": {"path": "/health", "port": vllm_port}, "periodSeconds": 1});
    json!({
        "apiVersion": "leaderworkerset.x-k8s.io/v1",
        "kind": "LeaderWorkerSet",
        "metadata": {"name": "vllm", "namespace": "ml"},
        "spec": {
            "replicas": 1,
            "leaderWorkerTemplate": {
                "size": 2,
                "restartPolicy": "RecreateGroupOnPodRestart",
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
        format!("--upstreams={}", env_value(&env, "VITALS_UPSTREAMS")),
        format!("--group-role={}", env_value(&env, "VITALS_GROUP_ROLE")),
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

/// Formation; a Ray process SIGSTOPped under its shell fails the leader's readiness naming
/// the member; the member's agent SIGSTOPped for [`STARVED`] makes the kubelet restart no
/// container of either pod (LWS's ContainerRestarted stays false, init containers
/// included) and never breaks the group (the leader's `/livez/vllm` passes throughout,
/// `vitals_group_broken_total` stays 0).
#[test]
fn a_group_built_by_lws_and_the_webhook_survives_a_stopped_ray_process_and_a_starved_agent() {
    let _slot = slots::shared();
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let vllm_addr: SocketAddr = free_addr();
    let fake = bins::e2e_bin("fake-vllm");
    let vllm_cmd: Vec<String> = vec![
        fake.to_string_lossy().into_owned(),
        vllm_addr.to_string(),
        "0".into(),
    ];
    // vLLM's LWS example runs `sh -c "bash multi-node-serving.sh worker ..."`, whose script
    // runs `ray start --block`: a shell with Ray under it. `; exit` keeps the shell from
    // exec'ing `sleep`, and the node name keeps other runs' `ray` apart.
    let ray_cmd: Vec<String> = ["sh", "-c", "sleep 600; exit", "ray", "start", "--block"]
        .into_iter()
        .map(String::from)
        .chain([format!("--node-name=lws-group-{}", std::process::id())])
        .collect();
    let lws_obj = lws_object(&vllm_cmd, vllm_addr.port(), &ray_cmd);
    let leader_pod = lws::leader_pod(&lws_obj, 0);
    let worker_pod = lws::worker_pod(&lws_obj, &leader_pod, 1);
    let (leader_spec, worker_spec) = (injected(&leader_pod), injected(&worker_pod));
    let leader_env = agent_env(&leader_spec);
    for (name, want) in [
        ("VITALS_GROUP_SIZE", "2"),
        ("VITALS_GROUP_POD_NAME", "vllm-0"),
        ("POD_NAMESPACE", "ml"),
    ] {
        assert_eq!(env_value(&leader_env, name), want, "{name}");
    }

    // The member pod: Ray's container, then its agent, each in a cgroup of its own.
    let ray = Container::start(
        "lws-group-ray",
        &ray_cmd.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert_eq!(
        command(&worker_spec, "ray"),
        ray_cmd,
        "the webhook leaves the command"
    );
    let agent_cgroup = Arc::new(Cgroup::create("lws-group-agent").unwrap_or_else(|e| {
        panic!("the member's agent needs a cgroup of its own (root, cgroup v2): {e}")
    }));
    let mut member = agent_pod("lws_group_member", &worker_spec, &[], Some(agent_cgroup));
    member.start_agent_and_wait();
    let member_probes = probe_all(&worker_spec, &mut member, AGENT_PORT);

    // The leader pod: vLLM, then its agent, polling the member.
    let vllm = FakeVllm::start(
        &fake,
        vllm_addr,
        Some(Duration::ZERO),
        &dir.path().join("vllm.log"),
    );
    assert_eq!(command(&leader_spec, "vllm"), vllm_cmd);
    let members = format!("--group-members={}", member.agent_addr);
    let mut leader = agent_pod("lws_group_leader", &leader_spec, &[members], None);
    let from = leader.event("starting the leader's agent");
    leader.start_agent_and_wait();
    let leader_probes = probe_all(&leader_spec, &mut leader, AGENT_PORT);
    leader.event(format!("vLLM pid {}, ray pid {}", vllm.pid(), ray.pid()));

    let (formed, _) =
        leader.await_probe("/readyz/vllm", Duration::from_secs(15), "formation", |o| {
            o.passed()
        });

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

//! Scenarios G1–G2 (SPEC §9): one model served by three pods. A leader agent watches the
//! fake vLLM (the group's API, an upstream with its own HTTP probes); two member agents
//! each watch a headless process (`ray`). Every process is real and talks over loopback:
//! the leader polls its members' `GET /group`, and its `/readyz/vllm` and `/livez/vllm`
//! (the kubelet's probes of the leader's model container) judge the group as one.
//!
//! Each member's `ray` is what a Ray or torch.distributed worker container is to its agent:
//! a process with no socket and no probes, in a container (cgroup) of its own, the member
//! agent in another. Its upstream entry is only `"process": {"cmdline": [...]}`, the
//! container's command line as `inject` records it, so the agent finds it by cgroup and
//! command line (SPEC §8) and judges it by /proc alone (SPEC §9). The command line names the
//! pod and this test process, so that the two members, and the same scenario run by another
//! `cargo test` on the machine, never match each other's `ray`.
//!
//! Needs root and cgroup v2 (`/sys/fs/cgroup` or its `unified` folder on a hybrid host):
//! without them it fails.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use vitals_e2e::cgroup::{Cgroup, Container};
use vitals_e2e::fake_vllm::FakeVllm;
use vitals_e2e::pod::{duration_arg, free_addr, AgentOptions, Pod};
use vitals_e2e::probe::{ProbeKind, ProbeWorker};
use vitals_e2e::report::report_line;
use vitals_e2e::slots;

use crate::common::*;

const LIVE: &str = "/livez/vllm";
const READY: &str = "/readyz/vllm";
/// `--group-poll` of the leader (also each poll's timeout).
const POLL: Duration = Duration::from_millis(250);
/// `--group-timeout`: a member unanswered this long is `unreachable`.
const TIMEOUT: Duration = Duration::from_secs(1);
/// `--group-lost-after`: longer than any outage these scenarios cause on purpose.
const LOST_AFTER: Duration = Duration::from_secs(30);
/// The upstream probes' `periodSeconds`.
const PERIOD: Duration = Duration::from_secs(1);

fn fake_vllm(addr: SocketAddr, dir: &Path, label: &str) -> FakeVllm {
    FakeVllm::start(
        Path::new(env!("CARGO_BIN_EXE_fake-vllm")),
        addr,
        Some(Duration::ZERO),
        &dir.join(format!("{label}.log")),
    )
}

/// A container's cgroup, or the test fails saying what the machine lacks.
fn cgroup(name: &str) -> Arc<Cgroup> {
    Arc::new(Cgroup::create(name).unwrap_or_else(|e| {
        panic!(
            "the group scenarios put each container in a cgroup of its own, so that a member \
             agent finds its headless process by cgroup and command line: {e}"
        )
    }))
}

/// `cmdline` as the toolkit's `Container` takes it.
fn argv(cmdline: &[String]) -> Vec<&str> {
    cmdline.iter().map(String::as_str).collect()
}

/// A member pod: its agent (role member) and the headless `ray` process, each in a
/// container (cgroup) of its own.
struct Member {
    pod: Pod,
    /// `ray`'s command line, as `inject` records the container's `command` and `args`.
    ray_cmdline: Vec<String>,
    /// `ray`'s container: no socket, no probes, nothing to ask it.
    ray: Container,
}

impl Member {
    fn start(name: &str) -> Member {
        // How the LeaderWorkerSet vLLM example starts its worker (`sh -c` a script that runs
        // `ray start --block`), reduced to a shell that waits (`; exit` keeps the shell, with
        // this command line, from exec'ing its last command).
        let ray_cmdline: Vec<String> = ["sh", "-c", "sleep 600; exit", "ray", "start", "--block"]
            .into_iter()
            .map(String::from)
            .chain([format!("--node-name={name}-{}", std::process::id())])
            .collect();
        let ray = Container::start(&format!("{name}-ray"), &argv(&ray_cmdline));
        let upstreams = serde_json::json!({"ray": {"process": {"cmdline": ray_cmdline}}});
        let agent = AgentOptions {
            extra_args: vec![
                "--upstreams".into(),
                upstreams.to_string(),
                "--group-role".into(),
                "member".into(),
            ],
            cgroup: Some(cgroup(&format!("{name}-agent"))),
            // The pods' containers are all upstreams: no protocol worker.
            expect: Vec::new(),
            ..agent()
        };
        let mut pod = Pod::new(name, agent, worker());
        pod.event(format!("ray started: {ray_cmdline:?} (pid {})", ray.pid()));
        pod.start_agent_and_wait();
        let m = Member {
            pod,
            ray_cmdline,
            ray,
        };
        m.await_ray_found();
        m
    }

    /// Waits until `/group` lists ray's current process, and checks that the agent found it
    /// by its container (there is no socket to find it by).
    fn await_ray_found(&self) {
        let want = format!("{}:", self.ray.pid());
        vitals_e2e::wait::eventually("the member agent finds ray", Duration::from_secs(5), || {
            let group =
                vitals_e2e::client::get(self.pod.agent_addr, "/group", Duration::from_secs(1))
                    .and_then(|r| r.json())
                    .ok()?;
            group["instances"]["ray"]
                .as_str()
                .is_some_and(|i| i.starts_with(&want))
                .then_some(())
        });
        let status = self.pod.status();
        let proc = &status["upstreams"][0]["proc"];
        assert_eq!(proc["found_by"], "cgroup", "{status}");
    }

    /// The container restarted: its process killed and reaped, then a new one with the
    /// same command line in the same cgroup.
    fn replace_ray(&mut self) {
        self.ray.restart(&argv(&self.ray_cmdline));
    }

    fn ray_pid(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.ray.pid()).expect("pid fits"))
    }
}

/// The leader pod: its agent (role leader, polling `members`) and the fake vLLM.
struct Leader {
    pod: Pod,
    vllm: FakeVllm,
    dir: tempfile::TempDir,
    /// When its agent was started, on its timeline.
    agent_started: Duration,
}

impl Leader {
    fn start(name: &str, members: &[SocketAddr]) -> Leader {
        let dir = tempfile::tempdir().expect("temp folder");
        let addr = free_addr();
        let vllm = fake_vllm(addr, dir.path(), "vllm");
        let health = serde_json::json!({"httpGet": {"path": "/health", "port": addr.port()},
            "periodSeconds": PERIOD.as_secs()});
        let upstreams =
            serde_json::json!({"vllm": {"livenessProbe": health, "readinessProbe": health}});
        let members: Vec<String> = members.iter().map(ToString::to_string).collect();
        let agent = AgentOptions {
            extra_args: vec![
                "--upstreams".into(),
                upstreams.to_string(),
                "--group-role".into(),
                "leader".into(),
                "--group-members".into(),
                members.join(","),
                "--group-poll".into(),
                duration_arg(POLL),
                "--group-timeout".into(),
                duration_arg(TIMEOUT),
                "--group-lost-after".into(),
                duration_arg(LOST_AFTER),
            ],
            // The pods' containers are all upstreams: no protocol worker.
            expect: Vec::new(),
            ..agent()
        };
        let mut pod = Pod::new(name, agent, worker());
        pod.event(format!("vLLM started on {addr} (pid {})", vllm.pid()));
        let agent_started = pod.event("starting the leader's agent");
        pod.start_agent_and_wait();
        Leader {
            pod,
            vllm,
            dir,
            agent_started,
        }
    }

    /// The kubelet restarting the leader's model container: the old process killed, a new
    /// one on the same port.
    fn restart_vllm(&mut self) -> Duration {
        let at = self.pod.event("kubelet: restarting the vLLM container");
        let addr = self.vllm.addr;
        self.vllm.kill();
        self.vllm = fake_vllm(addr, self.dir.path(), "vllm-2");
        self.pod
            .event(format!("vLLM restarted (pid {})", self.vllm.pid()));
        at
    }

    fn group(&self) -> serde_json::Value {
        self.pod.status()["group"].clone()
    }

    /// Waits for `/readyz/vllm` to pass (the group formed) and checks it came within 2
    /// probe periods of `since` (vLLM's readiness probe runs once per period), plus 2 polls,
    /// a probe poll and the measured starvation.
    fn await_formed(&self, since: Duration, what: &str) {
        let (at, _) = self.pod.await_probe(
            READY,
            PERIOD * 2 + POLL * 2 + Duration::from_secs(5),
            what,
            |o| o.passed(),
        );
        self.pod
            .check_latency(what, since, at, PERIOD * 2, POLL * 2 + PROBE_POLL);
    }
}

/// Three pods, formed: leader `/readyz/vllm` passes within 2 probe periods of the leader's
/// agent starting, its members already up with `ray` found (vLLM's readiness probe runs once
/// per period), plus 2 polls, a probe poll and the measured starvation.
fn formed_group(name: &str) -> (Leader, Member, Member) {
    let m1 = Member::start(&format!("{name}_m1"));
    let m2 = Member::start(&format!("{name}_m2"));
    let leader = Leader::start(name, &[m1.pod.agent_addr, m2.pod.agent_addr]);
    leader.await_formed(
        leader.agent_started,
        "formation, from the leader's agent start,",
    );
    let g = leader.group();
    assert_eq!(g["formed"], true, "{g}");
    (leader, m1, m2)
}

/// G1: a member's faults as the leader's readiness sees them, liveness untouched. Each
/// upper bound below is the named timeout plus the intervals the mechanism adds (stated at
/// each check), a probe poll and the starvation measured meanwhile.
/// - the child under ray's shell SIGSTOPped (SPEC §11: the container is judged by all its
///   processes; the shell sleeps), then ray's shell itself: each time `group: member 1 ray:
///   stopped`, and ready again after SIGCONT ([`stop_and_resume`]'s bounds).
/// - member 2's agent killed: `group: member 2 unreachable <age>` within `--group-timeout`
///   (+ a group poll), never before `--group-timeout` less a poll; started again: ready
///   within 2 probe periods (+ a group poll) of its agent answering; `/livez/vllm` passes at
///   every probe throughout, and the kubelet restarts nothing.
/// - member 2's agent SIGSTOPped (accepts connections, never answers): 300 probes of the
///   leader have p99 < 10 ms.
#[test]
fn g1_member_faults_fail_the_leaders_readiness_not_its_liveness() {
    let _slot = slots::shared();
    let (mut leader, m1, mut m2) = formed_group("group_member_faults");
    let watch = leader.pod.watch(
        vec![(LIVE, ProbeWorker::new(ProbeKind::Liveness, 1, 3))],
        WATCH_PERIOD,
    );
    let from = leader.pod.timeline.now();

    let child = vitals_e2e::wait::eventually(
        "ray's shell runs its command",
        Duration::from_secs(5),
        || {
            m1.ray
                .children()
                .first()
                .map(|p| Pid::from_raw(i32::try_from(*p).expect("pid fits")))
        },
    );
    stop_and_resume(&leader, &m1, child, "ray's child (the shell sleeps)");
    stop_and_resume(&leader, &m1, m1.ray_pid(), "ray");

    let killed = leader.pod.event("SIGKILL -> member 2's agent");
    m2.pod.kill_agent();
    let (at, o) = leader.pod.await_probe(
        READY,
        TIMEOUT + POLL + Duration::from_secs(5),
        "member 2 unreachable",
        |o| {
            o.reason()
                .is_some_and(|r| r.starts_with("group: member 2 unreachable "))
        },
    );
    let after = leader
        .pod
        .check_latency(
            &format!(
                "`{}`, from member 2's agent dying,",
                o.reason().unwrap_or_default()
            ),
            killed,
            at,
            TIMEOUT,
            POLL + PROBE_POLL,
        )
        .after;
    // Its last answer came at most one poll before the kill.
    assert!(
        after + POLL >= TIMEOUT,
        "unreachable before --group-timeout: {after:?}"
    );
    m2.pod.start_agent_and_wait();
    let up = leader.pod.event("member 2's agent answers again");
    let (at, _) = leader.pod.await_probe(
        READY,
        Duration::from_secs(10),
        "ready with member 2 back",
        |o| o.passed(),
    );
    leader.pod.check_latency(
        "readiness back, from member 2's agent answering,",
        up,
        at,
        PERIOD * 2,
        POLL + PROBE_POLL,
    );
    leader.pod.stop_watches();
    assert_all_pass(
        &leader.pod,
        LIVE,
        from,
        leader.pod.timeline.now(),
        "a member's stop or agent restart never breaks the group",
    );
    assert_eq!(watch.restarts(LIVE), 0);
    assert_eq!(leader.group()["live"]["ok"], true);

    let agent_pid = m2.pod.agent().pid();
    signal::kill(agent_pid, Signal::SIGSTOP).expect("SIGSTOP member agent");
    leader
        .pod
        .event("SIGSTOP -> member 2's agent (accepts, never answers)");
    leader.pod.await_probe(
        READY,
        TIMEOUT + Duration::from_secs(5),
        "unreachable",
        |o| {
            o.reason()
                .is_some_and(|r| r.starts_with("group: member 2 unreachable "))
        },
    );
    let from = leader.pod.timeline.now();
    let mut took: Vec<Duration> = (0..300)
        .map(|_| {
            let t = Instant::now();
            let o = leader.pod.probe(READY);
            assert!(!o.passed());
            t.elapsed()
        })
        .collect();
    signal::kill(agent_pid, Signal::SIGCONT).expect("SIGCONT member agent");
    // The project's rule for upper bounds: the fixed part plus what scheduling measurably
    // took from the test over the same window (tests/src/timeline.rs).
    let starved = leader
        .pod
        .timeline
        .starvation(from, leader.pod.timeline.now());
    took.sort();
    let p99 = vitals_e2e::report::percentile(&took, 0.99);
    let bound = Duration::from_millis(10) + starved.total();
    report_line(&format!(
        "[group_member_faults] leader probe p99 {:.2}ms, max {:.2}ms over 300 probes while a member never answers (bound p99 < 10ms + {starved})",
        p99.as_secs_f64() * 1e3,
        took[took.len() - 1].as_secs_f64() * 1e3
    ));
    assert!(p99 < bound, "p99 {p99:?}, bound {bound:?}");
    leader
        .pod
        .await_probe(READY, Duration::from_secs(10), "ready after SIGCONT", |o| {
            o.passed()
        });
}

/// SIGSTOPs `pid`, a process of member 1's `ray` container: the leader's `/readyz/vllm`
/// fails with `group: member 1 ray: stopped` within `--hang-timeout` (+ 2 × `--proc-interval`
/// and a group poll), never before `--hang-timeout`; SIGCONT: ready again within 2 ×
/// `--proc-interval` (+ a group poll). Each bound also adds a probe poll and the measured
/// starvation.
fn stop_and_resume(leader: &Leader, m1: &Member, pid: Pid, what: &str) {
    let hang = m1.pod.agent_options.hang_timeout;
    let proc = m1.pod.agent_options.proc_interval;
    signal::kill(pid, Signal::SIGSTOP).expect("SIGSTOP");
    let fault = leader
        .pod
        .event(format!("SIGSTOP -> member 1's {what}, pid {pid}"));
    leader.pod.await_detection(
        READY,
        &["group: member 1 ray: stopped"],
        fault,
        hang,
        proc * 2 + POLL + PROBE_POLL,
        hang,
    );
    signal::kill(pid, Signal::SIGCONT).expect("SIGCONT");
    let resumed = leader.pod.event(format!("SIGCONT -> member 1's {what}"));
    let (at, _) =
        leader
            .pod
            .await_probe(READY, Duration::from_secs(10), "ready after SIGCONT", |o| {
                o.passed()
            });
    leader.pod.check_latency(
        &format!("readiness back, from SIGCONT of {what},"),
        resumed,
        at,
        proc * 2,
        POLL + PROBE_POLL,
    );
}

/// G2: member 1's process replaced (a new pid, the same command line and cgroup): the
/// leader's `/livez/vllm` fails with `group_broken: member 1 restarted` within 2 ×
/// `--proc-interval` of the new process starting (+ a /proc interval and a group poll); the
/// kubelet (liveness failureThreshold 3) restarts the leader's vLLM; the group forms again,
/// with the new instances, within 2 probe periods (+ 2 group polls) of the new vLLM
/// listening, and stays live. Each bound also adds a probe poll and the starvation measured
/// meanwhile.
#[test]
fn g2_a_replaced_member_breaks_the_group_and_the_leaders_restart_forms_it_again() {
    let _slot = slots::shared();
    let (mut leader, mut m1, _m2) = formed_group("group_member_replaced");
    let before = leader.group()["members"][0]["recorded"]["ray"].clone();
    let watch = leader.pod.watch(
        vec![(LIVE, ProbeWorker::new(ProbeKind::Liveness, 1, 3))],
        WATCH_PERIOD,
    );
    let old = m1.ray.pid();
    m1.replace_ray();
    let replaced = leader.pod.event(format!(
        "member 1's ray replaced: pid {old} killed, pid {} started",
        m1.ray.pid()
    ));
    let proc = m1.pod.agent_options.proc_interval;
    leader.pod.await_detection(
        LIVE,
        &["group_broken: member 1 restarted"],
        replaced,
        proc * 2,
        // The new process is found at the /proc tick after the old one's gone sample.
        proc + POLL + PROBE_POLL,
        Duration::ZERO,
    );
    vitals_e2e::wait::eventually("the kubelet restarts vLLM", Duration::from_secs(5), || {
        (watch.restarts(LIVE) > 0).then_some(())
    });
    leader.pod.stop_watches();
    let restarted = leader.restart_vllm();
    leader.await_formed(restarted, "re-formation, from the leader's vLLM restart,");
    assert_stays_passing(
        &leader.pod,
        LIVE,
        Duration::from_secs(2),
        "the new group is live",
    );
    let g = leader.group();
    assert_eq!(g["resets"], 1, "{g}");
    let after = g["members"][0]["recorded"]["ray"].clone();
    assert_ne!(
        before, after,
        "the new formation records the new process: {g}"
    );
    assert!(
        after
            .as_str()
            .is_some_and(|i| i.starts_with(&format!("{}:", m1.ray.pid()))),
        "{g}"
    );
}

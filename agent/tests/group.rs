//! Groups (SPEC §9) on a real agent: every agent's `GET /group`, and a leader judging
//! scripted members (the toolkit's [`FakeMember`], whose answer the test switches):
//! formation, a member not live, restarted, unreachable and lost, and hostile members
//! (hang, accept and never answer, reset, garbage, 10 MB) that never slow a probe.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{eventually, metric, Agent, Resp};
use vitals_agent::config::{Config, Group, GroupConfig};
use vitals_core::state::group::MemberTarget;
use vitals_e2e::member::{live, not_live, Behaviour, FakeMember};
use vitals_proto::WorkerName;

/// Poll period, timeout and lost bound of these tests: `--group-poll 100ms`,
/// `--group-timeout 400ms`, `--group-lost-after 1500ms`.
const POLL: Duration = Duration::from_millis(100);
const TIMEOUT: Duration = Duration::from_millis(400);
const LOST: Duration = Duration::from_millis(1500);

/// A leader with one protocol worker `model` (ready) and these members.
fn leader(members: &[&FakeMember]) -> (Agent, common::Worker) {
    let targets = members
        .iter()
        .enumerate()
        .map(|(i, m)| MemberTarget {
            index: i + 1,
            host: m.addr.ip().to_string(),
            port: m.addr.port(),
        })
        .collect();
    let agent = Agent::start(|c: &mut Config| {
        c.expect = vec![WorkerName::parse("model").unwrap()];
        c.group = Group::Leader(GroupConfig {
            members: targets,
            poll: POLL,
            timeout: TIMEOUT,
            lost_after: LOST,
        });
    });
    let mut w = agent.worker("model", "i-1");
    w.phase("ready");
    w.beat(1);
    (agent, w)
}

/// Waits until `path` fails with a body starting with `prefix`.
#[track_caller]
fn wait_fail(agent: &Agent, path: &str, prefix: &str) -> Resp {
    eventually(&format!("{path} fails with {prefix:?}"), || {
        let r = agent.get(path);
        (r.code == 503 && r.body.starts_with(prefix)).then_some(r)
    })
}

#[test]
fn every_agent_serves_its_pods_state_and_instances_on_group() {
    let agent = Agent::start(|c: &mut Config| {
        c.expect = vec![WorkerName::parse("ray").unwrap()];
        c.group = Group::Member;
    });
    let r = agent.get("/group");
    assert_eq!(r.code, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let doc: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(
        doc["live"], true,
        "an absent worker is live (SPEC §2): {doc}"
    );
    assert_eq!(doc["ready"], false);
    assert_eq!(doc["reason"], "ray: not_connected");
    let mut w = agent.worker("ray", "i-1");
    w.phase("ready");
    w.beat(1);
    // The worker is this test process: its pid and start time once /proc sampled it.
    let me = std::process::id();
    let doc = eventually("the worker's instance on /group", || {
        let doc: serde_json::Value = serde_json::from_str(&agent.get("/group").body).ok()?;
        doc["instances"]["ray"]
            .as_str()?
            .starts_with(&format!("{me}:"))
            .then_some(doc)
    });
    assert_eq!(
        (doc["live"].clone(), doc["ready"].clone()),
        (true.into(), true.into())
    );
    w.phase("failed");
    let doc = eventually("not live on /group", || {
        let doc: serde_json::Value = serde_json::from_str(&agent.get("/group").body).ok()?;
        (doc["live"] == false).then_some(doc)
    });
    assert_eq!(doc["reason"], "ray: failed");
    assert_eq!(agent.get("/livez").body, "ok", "the agent itself is fine");
}

#[test]
fn a_leader_forms_fails_readiness_for_a_member_and_liveness_for_a_restart() {
    let m1 = FakeMember::start(not_live("ray: phase: loading"));
    let m2 = FakeMember::start(live("2:20"));
    let (agent, _w) = leader(&[&m1, &m2]);
    let r = wait_fail(&agent, "/readyz", "fail: group: forming 1/2");
    assert_eq!(r.body, "fail: group: forming 1/2");
    assert_eq!(agent.get("/readyz/model").body, "fail: group: forming 1/2");
    assert_eq!(
        agent.get("/livez/model").body,
        "ok",
        "never broken while forming"
    );
    m1.set(live("1:10"));
    agent.wait_for("/readyz", 200, "ok");
    agent.wait_for("/readyz/model", 200, "ok");
    // A member not live: readiness names it, liveness stays.
    m2.set(not_live("ray: stopped"));
    agent.wait_for("/readyz", 503, "fail: group: member 2 ray: stopped");
    assert_eq!(
        agent.get("/readyz/model").body,
        "fail: group: member 2 ray: stopped"
    );
    let verbose = agent.get("/readyz/model?verbose").body;
    assert!(
        verbose.contains("[-]group failed: group: member 2 ray: stopped"),
        "{verbose}"
    );
    assert_eq!(agent.get("/livez/model").body, "ok");
    m2.set(live("2:20"));
    agent.wait_for("/readyz", 200, "ok");
    // The member's process was replaced: the leader's model liveness fails, not the agent's.
    m2.set(live("2:21"));
    agent.wait_for(
        "/livez/model",
        503,
        "fail: group_broken: member 2 restarted",
    );
    assert_eq!(
        agent.get("/readyz").body,
        "fail: group_broken: member 2 restarted"
    );
    assert_eq!(agent.get("/livez").body, "ok");
    // Counted by the ticker within a second (SPEC §7), once, whoever scrapes.
    let m = eventually("the break counted", || {
        let m = agent.metrics();
        let broken = metric(&m, "vitals_group_broken_total{reason=\"restarted\"}");
        (broken == Some(1.0)).then_some(m)
    });
    // Scrapes set gauges only: twenty more leave every counter as it was.
    let counters = |m: &str| -> Vec<String> {
        let counter = |l: &&str| l.starts_with("vitals_") && l.contains("_total");
        m.lines().filter(counter).map(str::to_owned).collect()
    };
    let before = counters(&m);
    for _ in 0..20 {
        agent.metrics();
    }
    assert_eq!(counters(&agent.metrics()), before);
    assert_eq!(metric(&m, "vitals_group_formed"), Some(1.0));
    assert_eq!(
        metric(&m, "vitals_group_members{state=\"live\"}"),
        Some(2.0)
    );
    let status = agent.status();
    assert_eq!(
        status["group"]["live"]["reason"],
        "group_broken: member 2 restarted"
    );
    assert_eq!(status["group"]["members"][1]["recorded"]["ray"], "2:20");
    assert_eq!(status["group"]["members"][1]["instances"]["ray"], "2:21");
}

#[test]
fn an_unreachable_member_fails_readiness_then_liveness_once_lost() {
    let m1 = FakeMember::start(live("1:10"));
    let (agent, _w) = leader(&[&m1]);
    agent.wait_for("/readyz", 200, "ok");
    m1.set(Behaviour::Hang);
    let gone = Instant::now();
    let r = wait_fail(
        &agent,
        "/readyz/model",
        "fail: group: member 1 unreachable ",
    );
    assert!(
        gone.elapsed() >= TIMEOUT - POLL,
        "unreachable only after --group-timeout"
    );
    assert_eq!(agent.get("/livez/model").body, "ok", "{}", r.body);
    agent.wait_for("/livez/model", 503, "fail: group_broken: member 1 lost");
    assert!(
        gone.elapsed() >= LOST - POLL,
        "lost only after --group-lost-after"
    );
    let m = eventually("the loss counted", || {
        let m = agent.metrics();
        let lost = metric(&m, "vitals_group_broken_total{reason=\"lost\"}");
        (lost == Some(1.0)).then_some(m)
    });
    assert_eq!(
        metric(&m, "vitals_group_members{state=\"unreachable\"}"),
        Some(1.0),
        "{m}"
    );
    // Back with the same process: the group heals (lost is not a restart).
    m1.set(live("1:10"));
    agent.wait_for("/livez/model", 200, "ok");
    agent.wait_for("/readyz", 200, "ok");
}

/// Bound: while members hang, reset, send garbage or 10 MB, 300 probes of the leader
/// (sequential, fresh connections) have p99 < 10 ms and max < 100 ms; each hostile
/// member is `unreachable`, never a reason made of its bytes.
#[test]
fn hostile_members_never_slow_the_leaders_probes() {
    let members = [
        FakeMember::start(live("1:1")),
        FakeMember::start(live("2:2")),
        FakeMember::start(live("3:3")),
        FakeMember::start(live("4:4")),
    ];
    let refs: Vec<&FakeMember> = members.iter().collect();
    let (agent, _w) = leader(&refs);
    agent.wait_for("/readyz", 200, "ok");
    for (m, b) in members.iter().zip([
        Behaviour::Hang,
        Behaviour::Reset,
        Behaviour::Garbage,
        Behaviour::Huge,
    ]) {
        m.set(b);
    }
    wait_fail(&agent, "/readyz", "fail: group: member 1 unreachable ");
    let mut took = Vec::new();
    for _ in 0..300 {
        let t = Instant::now();
        let r = agent.get("/readyz/model");
        took.push(t.elapsed());
        assert_eq!(r.code, 503);
    }
    common::assert_fast("hostile members", took);
    let status = agent.status();
    for i in 0..4 {
        assert_eq!(
            status["group"]["members"][i]["state"], "unreachable",
            "{status}"
        );
    }
    let errors: Vec<String> = (0..4)
        .map(|i| {
            status["group"]["members"][i]["poll_error"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        })
        .collect();
    assert_eq!(errors[0], "timeout", "{errors:?}");
    assert!(errors[2].starts_with("bad /group answer"), "{errors:?}");
    assert!(errors[3].contains("body over 65536 bytes"), "{errors:?}");
    // Each failed poll is timed under its result.
    let m = agent.metrics();
    for result in ["timeout", "garbage"] {
        let series = format!("vitals_group_poll_duration_seconds_count{{result=\"{result}\"}}");
        assert!(
            metric(&m, &series).is_some_and(|n| n >= 1.0),
            "{series} in\n{m}"
        );
    }
}

#[test]
fn a_leaders_metrics_pass_promtool_check() {
    let m1 = FakeMember::start(live("1:1"));
    let (agent, _w) = leader(&[&m1]);
    agent.wait_for("/readyz", 200, "ok");
    let text = eventually("a group poll observed", || {
        let m = agent.metrics();
        metric(
            &m,
            "vitals_group_poll_duration_seconds_count{result=\"ok\"}",
        )
        .filter(|n| *n > 0.0)
        .map(|_| m)
    });
    for name in [
        "vitals_group_members{state=\"live\"} 1",
        "vitals_group_members{state=\"not_live\"} 0",
        "vitals_group_members{state=\"unreachable\"} 0",
        "vitals_group_formed 1",
        "vitals_group_broken_total{reason=\"lost\"} 0",
        "vitals_group_broken_total{reason=\"restarted\"} 0",
    ] {
        assert!(text.contains(name), "{name} missing in\n{text}");
    }
    let (passed, report) = vitals_e2e::prom::promtool_check(&text);
    assert!(
        passed && report.trim().is_empty(),
        "promtool: {report}\n{text}"
    );
}

#[test]
fn an_agent_outside_a_group_has_no_group_series() {
    let agent = Agent::start(|_| {});
    let m = agent.metrics();
    assert!(!m.contains("vitals_group_formed"), "{m}");
    assert!(!m.contains("vitals_group_members{"), "{m}");
    assert!(agent.status().get("group").is_none());
}

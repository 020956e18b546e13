//! The `Reporter` against the e2e toolkit's fake agent (`vitals_e2e::peer::FakeAgent`, the
//! project's one fake agent): hello, phase and checks on connect; heartbeats carrying the
//! loop counters; a full resync after the agent restarts; heartbeats paused while phases
//! still flow; `flush`; a refusal retried.
//!
//! These live here, not beside the reporter, because vitals-e2e depends on vitals-proto:
//! cargo accepts that cycle only for a dev-dependency of an integration test.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::time::Duration;

use vitals_e2e::peer::FakeAgent;
use vitals_proto::codec::{encode_line, read_line};
use vitals_proto::message::{AgentMessage, ErrorReply, Heartbeat, Progress, WorkerMessage};
use vitals_proto::{ErrorCode, Phase, Reporter, ReporterConfig, WorkerName};

/// How long any expected message may take: far above the 50 ms heartbeats and 100 ms
/// reconnect backoff, so only a reporter that never sends it fails.
const DEADLINE: Duration = Duration::from_secs(5);
/// The hang timeout the fake agent announces (the reporter only logs it).
const HANG_TIMEOUT: Duration = Duration::from_secs(10);

fn config(dir: &tempfile::TempDir) -> ReporterConfig {
    let mut c = ReporterConfig::new(
        dir.path().join("agent.sock"),
        WorkerName::parse("model").expect("`model` is a valid worker name"),
        "1.2.3",
    );
    c.heartbeat = Duration::from_millis(50);
    c
}

fn agent(socket: &Path) -> FakeAgent {
    FakeAgent::bind(socket, HANG_TIMEOUT)
}

fn is_phase(m: &WorkerMessage, phase: Phase) -> bool {
    matches!(m, WorkerMessage::Phase(p) if p.phase == phase)
}

fn heartbeats(messages: &[WorkerMessage]) -> impl Iterator<Item = &Heartbeat> {
    messages.iter().filter_map(|m| match m {
        WorkerMessage::Heartbeat(h) => Some(h),
        _ => None,
    })
}

#[test]
fn connects_and_sends_hello_phase_and_checks() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let cfg = config(&dir);
    let reporter = Reporter::start(cfg.clone()).expect("the reporter starts");
    reporter.set_phase(
        Phase::Loading,
        "weights",
        Some(Progress {
            done: 5,
            total: Some(10),
            unit: "bytes".into(),
        }),
    );
    reporter.set_check("tokenizer", true, "loaded");
    let agent = agent(&cfg.socket);
    let loading = agent.wait_for("phase loading", DEADLINE, |ms| {
        ms.iter().find_map(|m| match m {
            WorkerMessage::Phase(p) if p.phase == Phase::Loading => Some(p.clone()),
            _ => None,
        })
    });
    assert_eq!(loading.progress.map(|p| p.done), Some(5));
    let hello = agent.hellos().remove(0);
    assert_eq!(hello.worker, "model");
    assert_eq!(hello.instance, cfg.instance);
    assert_eq!(hello.version, "1.2.3");
    assert_eq!(hello.pid, std::process::id());
    assert_eq!(hello.heartbeat_ms, 50);
    agent.wait_for("check tokenizer ok", DEADLINE, |ms| {
        ms.iter()
            .any(|m| matches!(m, WorkerMessage::Check(c) if c.name == "tokenizer" && c.ok))
            .then_some(())
    });
    reporter.set_phase(Phase::Ready, "", None);
    agent.wait_for("phase ready", DEADLINE, |ms| {
        ms.iter().any(|m| is_phase(m, Phase::Ready)).then_some(())
    });
    assert!(reporter.is_connected());
}

#[test]
fn heartbeats_carry_the_loop_counters() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let cfg = config(&dir);
    let reporter = Reporter::start(cfg.clone()).expect("the reporter starts");
    let counters = reporter.counters();
    for _ in 0..7 {
        counters.tick();
    }
    counters.set_pending(3);
    counters.set_in_flight(2);
    let agent = agent(&cfg.socket);
    let first = agent.wait_for("a heartbeat", DEADLINE, |ms| heartbeats(ms).next().cloned());
    assert_eq!((first.progress, first.pending, first.in_flight), (7, 3, 2));
    counters.tick();
    let next = agent.wait_for("a heartbeat with progress 8", DEADLINE, |ms| {
        heartbeats(ms).find(|h| h.progress == 8).cloned()
    });
    assert!(next.seq > first.seq, "seq increases");
}

#[test]
fn reconnects_to_a_new_listener_and_resends_full_state() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let cfg = config(&dir);
    let reporter = Reporter::start(cfg.clone()).expect("the reporter starts");
    reporter.set_phase(Phase::Ready, "serving", None);
    reporter.set_check("device", true, "cpu");
    reporter.set_check("tokenizer", false, "missing");
    let first = agent(&cfg.socket);
    first.wait_for("phase ready", DEADLINE, |ms| {
        ms.iter().any(|m| is_phase(m, Phase::Ready)).then_some(())
    });
    let first_hello = first.hellos().remove(0);

    // The agent restarts: the old connection dies and its socket file is replaced.
    drop(first);
    std::fs::remove_file(&cfg.socket).expect("the old socket file can be removed");
    let second = agent(&cfg.socket);
    let (phase, checks) = second.wait_for("phase and both checks again", DEADLINE, |ms| {
        let phase = ms
            .iter()
            .any(|m| matches!(m, WorkerMessage::Phase(p) if p.phase == Phase::Ready && p.detail == "serving"));
        let checks: BTreeSet<_> = ms
            .iter()
            .filter_map(|m| match m {
                WorkerMessage::Check(c) => Some((c.name.clone(), c.ok)),
                _ => None,
            })
            .collect();
        (phase && checks.len() == 2).then_some((phase, checks))
    });
    assert!(phase);
    assert!(checks.contains(&("device".to_owned(), true)));
    assert!(checks.contains(&("tokenizer".to_owned(), false)));
    assert_eq!(
        second.hellos().remove(0).instance,
        first_hello.instance,
        "same process, same instance"
    );
}

#[test]
fn paused_heartbeats_stop_and_resume_while_phases_flow() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let cfg = config(&dir);
    let reporter = Reporter::start(cfg.clone()).expect("the reporter starts");
    let agent = agent(&cfg.socket);
    agent.wait_for("a heartbeat", DEADLINE, |ms| heartbeats(ms).next().cloned());
    reporter.pause_heartbeats(true);
    // A heartbeat already being written may still arrive before the phase below; after it,
    // none may for several heartbeat intervals (the passage of time is what is tested).
    reporter.set_phase(Phase::Failed, "paused", None);
    let at = agent.wait_for("phase failed", DEADLINE, |ms| {
        ms.iter().position(|m| is_phase(m, Phase::Failed))
    });
    std::thread::sleep(Duration::from_millis(300));
    let after: Vec<_> = agent.messages().split_off(at + 1);
    assert_eq!(
        heartbeats(&after).count(),
        0,
        "no heartbeats while paused: {after:?}"
    );
    reporter.pause_heartbeats(false);
    agent.wait_for("heartbeats again", DEADLINE, |ms| {
        heartbeats(&ms[at + 1..]).next().cloned()
    });
}

#[test]
fn flush_waits_for_the_agent_and_gives_up_without_one() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let cfg = config(&dir);
    let reporter = Reporter::start(cfg.clone()).expect("the reporter starts");
    reporter.set_phase(Phase::Failed, "weights missing", None);
    assert!(!reporter.flush(Duration::from_millis(100)), "no agent");
    let agent = agent(&cfg.socket);
    assert!(reporter.flush(DEADLINE));
    agent.wait_for("phase failed", DEADLINE, |ms| {
        ms.iter().any(|m| is_phase(m, Phase::Failed)).then_some(())
    });
}

#[test]
fn a_refusal_is_retried() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let cfg = config(&dir);
    let listener = UnixListener::bind(&cfg.socket).expect("bind the agent's socket");
    let _reporter = Reporter::start(cfg.clone()).expect("the reporter starts");
    // The first try is refused by hand, the way the agent refuses a name in use.
    let (mut stream, _) = listener.accept().expect("the reporter's first try");
    let mut buf = Vec::new();
    read_line(&mut stream, &mut buf).expect("the first try's hello");
    let refusal = AgentMessage::Error(ErrorReply {
        code: ErrorCode::NameInUse,
        message: "taken".into(),
    });
    stream
        .write_all(&encode_line(&refusal))
        .expect("the refusal is written");
    drop(stream);
    let agent = FakeAgent::serve(listener, &cfg.socket, HANG_TIMEOUT);
    let hello = vitals_e2e::wait::eventually("a second hello", DEADLINE, || agent.hellos().pop());
    assert_eq!(hello.worker, "model");
}

//! Fixtures shared by the core's unit tests and the agent's (its surfaces render what the
//! core decides): a worker's messages, the thresholds the tables judge by, a leader's members
//! and their answers. Built with `cfg(test)` here and with the `fixtures` feature, which only
//! the agent's dev-dependency turns on: never part of a binary.

use std::sync::Arc;
use std::time::{Duration, Instant};

use vitals_proto::message::{
    decode_hello, Heartbeat, PhaseReport, Progress, ValidHello, WorkerMessage,
};
use vitals_proto::{Phase, WorkerName};

use crate::state::group::{GroupReport, GroupState, Instances, LeaderNow, MemberTarget, PollError};
use crate::state::registry::{PeerCred, State};
use crate::upstreams;
use crate::verdict::group::GroupLimits;
use crate::verdict::Thresholds;

/// A valid `hello` from worker `name`, instance `instance` (pid 7, heartbeat every second).
pub fn hello(name: &str, instance: &str) -> ValidHello {
    let line = format!(
        r#"{{"type":"hello","v":1,"worker":"{name}","instance":"{instance}","pid":7,"version":"1.0","heartbeat_ms":1000}}"#
    );
    decode_hello(line.as_bytes()).expect("valid hello")
}

/// A state with no protocol worker expected and the upstreams of `spec` (`--upstreams`
/// JSON, no environment); panics on an invalid spec (fixtures are literals).
pub fn with_upstreams(spec: &str) -> State {
    let specs = upstreams::parse(spec, &[], |_| None).expect("a valid upstreams spec");
    let mut state = State::new(&[]);
    state.add_upstreams(&specs.into_iter().map(Arc::new).collect::<Vec<_>>());
    state
}

/// The socket peer every fixture worker connects as.
pub const PEER: PeerCred = PeerCred {
    pid: 4242,
    uid: 1000,
    gid: 1000,
};

/// A worker or container name; panics on an invalid one (fixtures are literals).
pub fn name(n: &str) -> WorkerName {
    WorkerName::parse(n).expect("valid name")
}

/// A phase report, with `done` of 100 layers when given.
pub fn phase(p: Phase, done: Option<u64>) -> WorkerMessage {
    WorkerMessage::Phase(PhaseReport {
        phase: p,
        detail: String::new(),
        progress: done.map(|done| Progress {
            done,
            total: Some(100),
            unit: "layers".into(),
        }),
    })
}

/// A heartbeat whose `seq` and `progress` are both `progress`.
pub fn beat(progress: u64) -> WorkerMessage {
    WorkerMessage::Heartbeat(Heartbeat {
        seq: progress,
        progress,
        pending: 0,
        in_flight: 0,
    })
}

/// The liveness bounds the tables judge by: round numbers, far from one another.
pub const T: Thresholds = Thresholds {
    hang: Duration::from_secs(10),
    stall: Duration::from_secs(30),
    load_stall: Duration::from_secs(300),
    d_state: Duration::from_secs(30),
    // The tables feed one sample and judge it much later; staleness has its own tests.
    sample_max_age: Duration::from_secs(3600),
};

/// How recent a member's answer must be to count (the group's poll timeout).
pub const FRESH: Duration = Duration::from_secs(3);

/// Members `1..=n`, at `m-<i>.sub:9180`.
pub fn targets(n: usize) -> Vec<MemberTarget> {
    (1..=n)
        .map(|i| MemberTarget {
            index: i,
            host: format!("m-{i}.sub"),
            port: 9180,
        })
        .collect()
}

/// Instances (`pid:starttime`) by container name.
pub fn inst(pairs: &[(&str, &str)]) -> Instances {
    pairs
        .iter()
        .map(|(c, i)| ((*c).to_owned(), (*i).to_owned()))
        .collect()
}

/// The leader's pod, ready by its own reasons, with these instances.
pub fn up(instances: &[(&str, &str)]) -> LeaderNow {
    LeaderNow {
        instances: inst(instances),
        ready: true,
    }
}

/// A member's answer: live and ready, with these instances.
pub fn live(instances: &[(&str, &str)]) -> Result<GroupReport, PollError> {
    Ok(GroupReport {
        live: true,
        ready: true,
        reason: None,
        instances: inst(instances),
    })
}

/// A member's answer: not live, for `reason`.
pub fn not_live(reason: &str) -> Result<GroupReport, PollError> {
    Ok(GroupReport {
        live: false,
        ready: false,
        reason: Some(reason.to_owned()),
        instances: Instances::new(),
    })
}

/// The group's limits: unreachable after [`FRESH`], lost after a minute.
pub const LIMITS: GroupLimits = GroupLimits {
    timeout: FRESH,
    lost_after: Duration::from_secs(60),
};

/// A leader's group of one member, formed at `t0` with the member's `ray` process
/// `1:1`; at `t0 + 1 s` the member answers with another process: broken, `restarted`.
pub fn broken_group(t0: Instant) -> GroupState {
    let mut g = GroupState::new(&targets(1), t0);
    g.record(0, live(&[("ray", "1:1")]), &up(&[]), FRESH, t0);
    let t1 = t0 + Duration::from_secs(1);
    g.record(0, live(&[("ray", "2:2")]), &up(&[]), FRESH, t1);
    g
}

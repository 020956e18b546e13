//! Probes pointed at the agent: each container's startup, liveness and readiness probe
//! (its slot, a [`ProbeKind`]) rewritten to an `httpGet` on the agent's port (the user's
//! timing kept, a missing one added with deploy/base's), and a liveness probe on the agent
//! made to outlast the agent's own restart, the tolerance computed from the timings below.

use super::yaml::{self, Map, Node};
use super::{is_agent_port, AGENT_PORT};
use vitals_core::upstreams::ProbeKind;
use vitals_core::verdict::Probe;

/// Timing of a probe that inject adds. The same values as deploy/base, where the reasoning
/// is written down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Timing {
    /// `periodSeconds`.
    pub(super) period_s: u64,
    /// `timeoutSeconds`.
    pub(super) timeout_s: u64,
    /// `failureThreshold`.
    pub(super) failures: u64,
}

impl Timing {
    const fn new(period_s: u64, timeout_s: u64, failures: u64) -> Self {
        Self {
            period_s,
            timeout_s,
            failures,
        }
    }

    /// The longest outage of its target this probe outlasts: an outage of D seconds fails at
    /// most ⌊D / period⌋ + 1 probes in a row, so one shorter than (failureThreshold − 1) ×
    /// periodSeconds never fails it failureThreshold times.
    pub(super) const fn tolerated_outage_s(self) -> u64 {
        self.failures.saturating_sub(1) * self.period_s
    }

    /// A probe every `period_s` seconds (1 s timeout) that outlasts an outage of `outage_s`
    /// seconds: the fewest failures for which [`Self::tolerated_outage_s`] ≥ `outage_s`.
    pub(super) const fn outlasting(period_s: u64, outage_s: u64) -> Self {
        Self::new(period_s, 1, outage_s.div_ceil(period_s) + 1)
    }

    /// The longest the kubelet takes to act on a target that stopped answering:
    /// failureThreshold periods, the last probe's timeout included.
    const fn detection_s(self) -> u64 {
        self.period_s * self.failures + self.timeout_s
    }
}

pub(super) const WORKER_STARTUP: Timing = Timing::new(2, 1, 30);
pub(super) const WORKER_LIVENESS: Timing = Timing::new(5, 1, 12);
pub(super) const WORKER_READINESS: Timing = Timing::new(1, 1, 2);
pub(super) const AGENT_STARTUP: Timing = Timing::new(1, 1, 30);
pub(super) const AGENT_LIVENESS: Timing = Timing::new(5, 1, 3);
/// The liveness inject gives a group's containers that had none (a member's headless
/// process, a leader's model server): conservative, since restarting one costs the whole
/// group (LeaderWorkerSet recreates it): 10 s × 7 tolerates 60 s, the agent's restart too.
pub(super) const GROUP_LIVENESS: Timing = Timing::new(10, 1, 7);

/// What the kubelet gives a wedged agent to exit (its liveness probe's
/// `terminationGracePeriodSeconds`, as in deploy/base), not the pod's grace, often minutes on
/// GPU pods: part of the agent's worst restart.
pub(super) const AGENT_KILL_GRACE_S: u64 = 5;

/// From the agent's exit to its port listening again, the restart delay aside: the exit
/// noticed within 1 s, started and listening within 1 s.
const AGENT_START_S: u64 = 2;

/// The kubelet's restart delay before the `n`-th crash in a row is restarted (n ≥ 1): none
/// the first time, then 10 s doubling up to 300 s (kubernetes/kubernetes
/// `pkg/kubelet/kuberuntime/kuberuntime_manager.go`, `doBackOff`; `pkg/kubelet/kubelet.go`,
/// `MaxContainerBackOff`).
const fn crash_backoff_s(n: u32) -> u64 {
    match n {
        0 | 1 => 0,
        n if n >= 7 => 300,
        n => 10 << (n - 2),
    }
}

/// The agent's worst restart that a liveness probe on it must outlast: the longest outage
/// of its port among those docs/probes.md ("The agent restarting") covers: three crashes
/// back to back, the 4th crash in a row after it ran a while, and a wedge (port open, not
/// answering) killed by its liveness right after two crashes. A 5th crash in a row is not
/// covered, on purpose: by then the agent is broken and `VitalsAgentDown` fires.
pub(super) const fn agent_worst_restart_s() -> u64 {
    let back_to_back = crash_outage_s(1) + crash_outage_s(2) + crash_outage_s(3);
    let fourth = crash_outage_s(4);
    max(max(back_to_back, fourth), wedge_outage_s())
}

/// The outage of the agent's port when it wedges (port open, not answering) right after two
/// crashes: its liveness detects it, the kubelet kills it within its grace and restarts it
/// after the third crash's delay.
const fn wedge_outage_s() -> u64 {
    AGENT_LIVENESS.detection_s() + AGENT_KILL_GRACE_S + crash_backoff_s(3) + AGENT_START_S
}

/// The outage of the agent's port when it crashes for the `n`-th time in a row.
const fn crash_outage_s(n: u32) -> u64 {
    AGENT_START_S + crash_backoff_s(n)
}

// `Ord::max` cannot run in a const.
const fn max(a: u64, b: u64) -> u64 {
    if a > b {
        a
    } else {
        b
    }
}

/// The outage every liveness probe on the agent must outlast: what the worker liveness
/// inject writes tolerates (5 s × 12: 55 s), above [`agent_worst_restart_s`].
pub(super) const AGENT_RESTART_TOLERANCE_S: u64 = WORKER_LIVENESS.tolerated_outage_s();

// A build error, not only a failing test, when a timing above changes without the other:
// an agent restart alone would then restart the model it watches.
const _: () = assert!(
    agent_worst_restart_s() < AGENT_RESTART_TOLERANCE_S,
    "the worker liveness no longer outlasts the agent's worst restart"
);

/// The agent's probe that answers for a container's `kind` probe.
fn agent_probe(kind: ProbeKind) -> Probe {
    match kind {
        ProbeKind::Startup => Probe::Startup,
        ProbeKind::Liveness => Probe::Live,
        ProbeKind::Readiness => Probe::Ready,
    }
}

/// The agent's path answering container `container`'s `kind` probe: `/startupz/<c>`,
/// `/livez/<c>`, `/readyz/<c>`.
pub(super) fn agent_path(kind: ProbeKind, container: &str) -> String {
    format!("/{}/{container}", agent_probe(kind).as_str())
}

const HANDLERS: [&str; 4] = ["exec", "httpGet", "tcpSocket", "grpc"];

fn http_get(path: &str) -> Node {
    Node::Map(Map::from_pairs([
        ("path", Node::string(path)),
        ("port", Node::plain(AGENT_PORT.to_string())),
    ]))
}

/// Replaces `probe`'s handler (exec, httpGet, tcpSocket, grpc) with an httpGet of `path` on
/// the agent, where the old handler stood; the probe's timing fields stay as they are.
pub(super) fn point_at_agent(probe: &mut Map, path: &str) {
    let at = HANDLERS
        .iter()
        .filter_map(|k| probe.position(k))
        .min()
        .unwrap_or(0);
    for k in HANDLERS {
        probe.remove(k);
    }
    probe.insert_at(at, "httpGet", http_get(path));
}

/// Whether `probe` is an httpGet of `path` on the agent's port.
pub(super) fn points_at_agent(probe: &Map, path: &str) -> bool {
    probe
        .get("httpGet")
        .and_then(Node::as_map)
        .is_some_and(|h| {
            h.get_str("path") == Some(path) && h.get_str("port").is_some_and(is_agent_port)
        })
}

/// Points container `c`'s `kind` probe at the agent's `path`. An existing probe keeps its
/// timing (the user's tuning) and loses its handler (exec, tcpSocket, grpc, another
/// httpGet); a missing one is added with `timing`.
pub(super) fn ensure_probe(c: &mut Map, kind: ProbeKind, path: &str, timing: Timing) {
    let key = kind.key();
    match c.get_mut(key).and_then(Node::as_map_mut) {
        Some(probe) => {
            // Already the agent's, and nothing more: no host, headers or HTTPS that would
            // send the kubelet elsewhere, the port a plain number, the one handler.
            let ok = points_at_agent(probe, path)
                && probe.get("httpGet").and_then(Node::as_map).is_some_and(|h| {
                    matches!(h.get("port"), Some(Node::Scalar(s)) if s.style == yaml::Style::Plain)
                        && h.get("host").is_none()
                        && h.get("httpHeaders").is_none()
                        && h.get_str("scheme").is_none_or(|s| s == "HTTP")
                })
                && HANDLERS.iter().filter(|k| probe.get(k).is_some()).count() == 1;
            if !ok {
                point_at_agent(probe, path);
            }
        }
        None => {
            let probe = Map::from_pairs([
                ("httpGet", http_get(path)),
                ("periodSeconds", Node::plain(timing.period_s.to_string())),
                ("timeoutSeconds", Node::plain(timing.timeout_s.to_string())),
                ("failureThreshold", Node::plain(timing.failures.to_string())),
            ]);
            // After the container's other probes, if it has some.
            let others = ProbeKind::ALL.map(ProbeKind::key);
            match others.iter().filter_map(|k| c.position(k)).max() {
                Some(at) => c.insert_at(at + 1, key, Node::Map(probe)),
                None => {
                    c.set(key, Node::Map(probe));
                }
            }
        }
    }
}

/// Raises the failureThreshold of a liveness probe on the agent so that an agent restart
/// alone never fails it: (failureThreshold − 1) × periodSeconds ≥
/// [`AGENT_RESTART_TOLERANCE_S`], keeping the period (the user's choice of how often) and
/// the original when it is already that tolerant.
pub(super) fn tolerate_agent_restart(probe: &mut Map) {
    let on_agent = probe
        .get("httpGet")
        .and_then(Node::as_map)
        .is_some_and(|h| h.get_str("port").is_some_and(is_agent_port));
    if on_agent {
        tolerate_outage(probe, AGENT_RESTART_TOLERANCE_S);
    }
}

/// Raises `probe`'s failureThreshold, keeping its period, so that failing for `seconds`
/// fails it not yet: (failureThreshold − 1) × periodSeconds ≥ `seconds`.
pub(super) fn tolerate_outage(probe: &mut Map, seconds: u64) {
    let number = |key: &str, default: u64| {
        probe
            .get_str(key)
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|n| *n > 0)
            .unwrap_or(default)
    };
    // Kubernetes' defaults.
    let period = number("periodSeconds", 10);
    let failures = number("failureThreshold", 3);
    if Timing::new(period, 0, failures).tolerated_outage_s() < seconds {
        let needed = Timing::outlasting(period, seconds).failures;
        probe.set("failureThreshold", Node::plain(needed.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn liveness_on_the_agent_outlasts_the_agents_worst_restart() {
        // docs/probes.md, "The agent restarting": the table's rows, from the timings above.
        let rows = [
            ("crash, first in 10 minutes", crash_outage_s(1), 2),
            (
                "three crashes back to back",
                crash_outage_s(1) + crash_outage_s(2) + crash_outage_s(3),
                36,
            ),
            ("the 4th crash in a row", crash_outage_s(4), 42),
            (
                "wedged right after two crashes",
                agent_worst_restart_s(),
                43,
            ),
        ];
        for (event, outage, documented) in rows {
            eprintln!("{event}: {outage} s (docs/probes.md: {documented} s)");
            assert_eq!(
                outage, documented,
                "{event}: docs/probes.md's table is stale"
            );
        }
        let worst = agent_worst_restart_s();
        assert_eq!(worst, 43, "docs/probes.md: the worst of these");
        for (probe, timing) in [
            ("the worker's liveness", WORKER_LIVENESS),
            ("a group container's liveness", GROUP_LIVENESS),
        ] {
            let tolerated = timing.tolerated_outage_s();
            eprintln!(
                "{probe}: {} s x {} tolerates {tolerated} s, the agent's worst restart is {worst} s",
                timing.period_s, timing.failures
            );
            assert!(
                worst < tolerated,
                "{probe} ({timing:?}) tolerates {tolerated} s: an agent restart ({worst} s) would restart the model"
            );
        }
        assert_eq!(AGENT_RESTART_TOLERANCE_S, 55, "docs/probes.md states 55 s");
    }

    #[test]
    fn each_probe_slot_has_its_own_key_and_agent_path() {
        let slots = ProbeKind::ALL.map(|k| (k.key(), agent_path(k, "vllm")));
        assert_eq!(
            slots,
            [
                ("startupProbe", "/startupz/vllm".to_string()),
                ("livenessProbe", "/livez/vllm".to_string()),
                ("readinessProbe", "/readyz/vllm".to_string()),
            ]
        );
    }
}

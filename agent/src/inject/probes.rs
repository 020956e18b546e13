//! Probes pointed at the agent: each container's startup, liveness and readiness probe
//! rewritten to an `httpGet` on the agent's port (the user's timing kept, a missing one
//! added with deploy/base's), and a liveness probe on the agent made to outlast the agent's
//! own restart.

use super::yaml::{self, Map, Node};
use super::AGENT_PORT;

/// Timing of a probe that inject adds: (periodSeconds, timeoutSeconds, failureThreshold).
/// The same values as deploy/base, where the reasoning is written down.
pub(super) type Timing = (u32, u32, u32);
pub(super) const WORKER_STARTUP: Timing = (2, 1, 30);
pub(super) const WORKER_LIVENESS: Timing = (5, 1, 12);
pub(super) const WORKER_READINESS: Timing = (1, 1, 2);
pub(super) const AGENT_STARTUP: Timing = (1, 1, 30);
pub(super) const AGENT_LIVENESS: Timing = (5, 1, 3);
/// The liveness inject gives a group's containers that had none (a member's headless
/// process, a leader's model server): conservative, since restarting one costs the whole
/// group (LeaderWorkerSet recreates it): 10 s × 7 tolerates 60 s, the agent's restart too.
pub(super) const GROUP_LIVENESS: Timing = (10, 1, 7);

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

/// Points a probe at the agent. An existing probe keeps its timing (the user's tuning) and
/// loses its handler (exec, tcpSocket, grpc, another httpGet); a missing one is added.
pub(super) fn ensure_probe(
    c: &mut Map,
    key: &str,
    path: &str,
    (period, timeout, failures): Timing,
) {
    match c.get_mut(key).and_then(Node::as_map_mut) {
        Some(probe) => {
            let ok = probe.get("httpGet").and_then(Node::as_map).is_some_and(|h| {
                h.get_str("path") == Some(path)
                    && matches!(h.get("port"), Some(Node::Scalar(s)) if s.style == yaml::Style::Plain && s.value == "9180")
                    && h.get("host").is_none()
                    && h.get("httpHeaders").is_none()
                    && h.get_str("scheme").is_none_or(|s| s == "HTTP")
            }) && HANDLERS.iter().filter(|k| probe.get(k).is_some()).count() == 1;
            if !ok {
                point_at_agent(probe, path);
            }
        }
        None => {
            let probe = Map::from_pairs([
                ("httpGet", http_get(path)),
                ("periodSeconds", Node::plain(period.to_string())),
                ("timeoutSeconds", Node::plain(timeout.to_string())),
                ("failureThreshold", Node::plain(failures.to_string())),
            ]);
            // After the container's other probes, if it has some.
            let probes = ["startupProbe", "livenessProbe", "readinessProbe"];
            match probes.iter().filter_map(|k| c.position(k)).max() {
                Some(at) => c.insert_at(at + 1, key, Node::Map(probe)),
                None => {
                    c.set(key, Node::Map(probe));
                }
            }
        }
    }
}

/// The liveness tolerance the agent's worst restart needs (deploy/base's worker liveness,
/// 5 s × 12: an outage of D seconds fails at most floor(D/5)+1 probes, so anything under
/// (12 − 1) × 5 = 55 s passes; the agent's worst restart is 43 s, docs/deploy.md).
const AGENT_RESTART_TOLERANCE_S: u64 = 55;

/// Raises the failureThreshold of a liveness probe on the agent so that an agent restart
/// alone never fails it: (failureThreshold − 1) × periodSeconds ≥ 55 s, keeping the period
/// (the user's choice of how often) and the original when it is already that tolerant.
pub(super) fn tolerate_agent_restart(probe: &mut Map) {
    let on_agent = probe
        .get("httpGet")
        .and_then(Node::as_map)
        .is_some_and(|h| h.get_str("port") == Some("9180"));
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
    if (failures - 1) * period < seconds {
        let needed = seconds.div_ceil(period) + 1;
        probe.set("failureThreshold", Node::plain(needed.to_string()));
    }
}

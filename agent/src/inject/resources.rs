//! The agent container's resources, and the quality of service (Kubernetes `Guaranteed`)
//! they must keep: whether every container of a pod but one has requests equal to limits
//! for cpu and memory, so inject can keep a Guaranteed pod Guaranteed when it adds the
//! agent. The rule is the kubelet's
//! (<https://kubernetes.io/docs/concepts/workloads/pods/pod-qos/#guaranteed>): every container,
//! init containers included, has cpu and memory limits, and requests, when given, equal
//! them (an absent request defaults to the limit).

use super::yaml::{Map, Node};

/// The agent's requests: it idles at a few MiB and microseconds per probe.
const REQUESTS: (&str, &str) = ("10m", "16Mi");
/// Its limits outside a group: they only bound a runaway.
const LIMITS: (&str, &str) = ("200m", "64Mi");
/// Its memory limit in a group pod, where an OOM kill restarts the whole group (SPEC §11: at
/// least 4x the peak RSS measured under the benches). Peaks measured 2026-12-07
/// (docs/benchmarks.md, "Memory limit in group pods"): 25.1 MiB for the release binary (30.7
/// MiB for the debug build) under the connection flood of agent/tests/connections.rs (1000
/// idle + 200 slow-loris connections at the 1024 cap); 6.0 MiB (11.3) as the leader of 32
/// members (agent/benches/group_footprint.rs). 128Mi is 5.1x the release peak, 4.2x the debug.
const GROUP_MEMORY_LIMIT: &str = "128Mi";
/// Its CPU in a Guaranteed group pod, where requests must equal limits: a whole CPU, which
/// its ticker (about 0.1 % of a core, docs/benchmarks.md) cannot exhaust, so the CFS quota
/// never throttles it; under the static CPU manager policy an exclusive core.
const GROUP_GUARANTEED_CPU: &str = "1";

/// The agent's `resources`, in one of the four forms inject writes: outside a group a
/// CPU and a memory limit, inside one (SPEC §11) a memory limit only; in a pod whose other
/// containers are all Guaranteed, requests equal to limits.
pub(super) fn agent_resources(in_group: bool, guaranteed: bool) -> Node {
    let pair = |pairs: &[(&'static str, &str)]| {
        Node::Map(Map::from_pairs(
            pairs.iter().map(|(k, v)| (*k, Node::string(*v))),
        ))
    };
    let (requests, limits): (Vec<_>, Vec<_>) = match (in_group, guaranteed) {
        (false, false) => (
            vec![("cpu", REQUESTS.0), ("memory", REQUESTS.1)],
            vec![("cpu", LIMITS.0), ("memory", LIMITS.1)],
        ),
        (false, true) => (
            vec![("cpu", LIMITS.0), ("memory", LIMITS.1)],
            vec![("cpu", LIMITS.0), ("memory", LIMITS.1)],
        ),
        (true, false) => (
            vec![("cpu", REQUESTS.0), ("memory", REQUESTS.1)],
            vec![("memory", GROUP_MEMORY_LIMIT)],
        ),
        (true, true) => (
            vec![
                ("cpu", GROUP_GUARANTEED_CPU),
                ("memory", GROUP_MEMORY_LIMIT),
            ],
            vec![
                ("cpu", GROUP_GUARANTEED_CPU),
                ("memory", GROUP_MEMORY_LIMIT),
            ],
        ),
    };
    Node::Map(Map::from_pairs([
        ("requests", pair(&requests)),
        ("limits", pair(&limits)),
    ]))
}

/// Whether `resources` is one of the forms [`agent_resources`] writes (else someone edited
/// them, and they are theirs).
pub(super) fn is_agent_form(resources: &Node) -> bool {
    [(false, false), (false, true), (true, false), (true, true)]
        .into_iter()
        .any(|(group, guaranteed)| {
            super::yaml::equiv(resources, &agent_resources(group, guaranteed))
        })
}

/// Whether every one of `containers` is Guaranteed; false when there is none.
pub(super) fn guaranteed<'a>(containers: impl IntoIterator<Item = &'a Map>) -> bool {
    let mut containers = containers.into_iter().peekable();
    containers.peek().is_some() && containers.all(container_guaranteed)
}

fn container_guaranteed(c: &Map) -> bool {
    let resources = c.get("resources").and_then(Node::as_map);
    let of = |kind: &str, resource: &str| {
        resources
            .and_then(|r| r.get(kind))
            .and_then(Node::as_map)
            .and_then(|m| m.get_str(resource))
            .map(quantity)
    };
    ["cpu", "memory"]
        .iter()
        .all(|r| match (of("limits", r), of("requests", r)) {
            (Some(Some(limit)), None) => limit > 0.0,
            (Some(Some(limit)), Some(Some(request))) => {
                limit > 0.0 && (limit - request).abs() <= limit * 1e-9
            }
            _ => false,
        })
}

/// A Kubernetes quantity (`500m`, `2`, `1.5Gi`, `1e3`, `64M`) as a number; `None` when it is
/// not one.
fn quantity(text: &str) -> Option<f64> {
    const SUFFIXES: [(&str, f64); 13] = [
        ("Ki", 1024.0),
        ("Mi", 1_048_576.0),
        ("Gi", 1_073_741_824.0),
        ("Ti", 1_099_511_627_776.0),
        ("Pi", 1_125_899_906_842_624.0),
        ("Ei", 1_152_921_504_606_846_976.0),
        ("n", 1e-9),
        ("u", 1e-6),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
    ];
    let text = text.trim();
    for (suffix, factor) in SUFFIXES {
        if let Some(number) = text.strip_suffix(suffix) {
            return number.parse::<f64>().ok().map(|n| n * factor);
        }
    }
    let (number, factor) = match text.strip_suffix('P') {
        Some(n) => (n, 1e15),
        None => match text.strip_suffix('E') {
            // `1E` is exa, `1E3` an exponent: a trailing E with digits before it.
            Some(n) if !n.is_empty() => (n, 1e18),
            _ => (text, 1.0),
        },
    };
    number.parse::<f64>().ok().map(|n| n * factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_as_kubernetes_reads_them() {
        for (text, value) in [
            ("500m", 0.5),
            ("2", 2.0),
            ("1.5Gi", 1.5 * 1_073_741_824.0),
            ("64Mi", 67_108_864.0),
            ("64M", 64e6),
            ("1e3", 1000.0),
            ("2E", 2e18),
        ] {
            assert_eq!(quantity(text), Some(value), "{text}");
        }
        assert_eq!(quantity("lots"), None);
    }
}

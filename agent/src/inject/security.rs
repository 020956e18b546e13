//! The agent's `securityContext`: Pod Security `restricted` on the agent container alone,
//! whatever the pod level says, with its user named only where the pod runs as root.

use super::yaml::{Map, Node};
use super::AGENT_UID;

/// Whether the pod-level user is root (`runAsUser: 0`): the one case where the agent must
/// name its own user. Elsewhere the image's user (65532) runs it, or the platform's
/// (OpenShift's restricted-v2 assigns one from the namespace's range and refuses an explicit
/// user outside it).
pub(super) fn pod_runs_as_root(spec: &Map) -> bool {
    spec.get("securityContext")
        .and_then(Node::as_map)
        .and_then(|sc| sc.get_str("runAsUser"))
        == Some("0")
}

/// The agent's `securityContext`: what Pod Security `restricted` asks of every container
/// (https://kubernetes.io/docs/concepts/security/pod-security-standards/#restricted: no
/// privilege escalation, non-root, capabilities dropped, seccomp RuntimeDefault or
/// Localhost), set on the agent itself so it passes whatever the pod level says. Its user
/// is named only when the pod-level user is root; see [`pod_runs_as_root`].
pub(super) fn secure_agent(agent: &mut Map, pod_is_root: bool) {
    agent.set_default(
        "securityContext",
        Node::Map(Map::from_pairs([
            ("allowPrivilegeEscalation", Node::plain("false")),
            ("readOnlyRootFilesystem", Node::plain("true")),
            ("runAsNonRoot", Node::plain("true")),
            (
                "capabilities",
                Node::Map(Map::from_pairs([(
                    "drop",
                    Node::Seq(vec![Node::string("ALL")]),
                )])),
            ),
        ])),
    );
    let Some(sc) = agent.get_mut("securityContext").and_then(Node::as_map_mut) else {
        return;
    };
    sc.ensure("allowPrivilegeEscalation", Node::plain("false"));
    sc.ensure("runAsNonRoot", Node::plain("true"));
    sc.remove("privileged");
    if let Some(caps) = sc.map_entry("capabilities") {
        if let Some(drop) = caps.seq_entry("drop") {
            if !drop.iter().any(|d| d.as_str() == Some("ALL")) {
                drop.push(Node::string("ALL"));
            }
        }
        caps.remove("add");
    }
    let user = AGENT_UID.to_string();
    if pod_is_root {
        // Explicit, so the pod-level `runAsUser: 0` does not meet the agent's
        // `runAsNonRoot` and keep the pod from starting.
        let at = sc.position("runAsNonRoot").map_or(sc.0.len(), |i| i + 1);
        if sc.get("runAsUser").is_none() {
            sc.insert_at(at, "runAsUser", Node::plain(user));
        }
    } else if sc.get_str("runAsUser") == Some(user.as_str()) {
        // Written by an older injection; OpenShift's restricted-v2 refuses it.
        sc.remove("runAsUser");
    }
    if sc.get("seccompProfile").is_none() {
        let at = sc.position("capabilities").unwrap_or(sc.0.len());
        sc.insert_at(
            at,
            "seccompProfile",
            Node::Map(Map::from_pairs([("type", Node::string("RuntimeDefault"))])),
        );
    }
}

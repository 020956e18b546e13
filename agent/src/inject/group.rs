//! What being part of a group (SPEC §9, §11) changes in a pod's wiring: the agent's group env
//! (its role; for a leader, where its members are, from its own pod through the downward
//! API), and the agent container, which must never be the reason a group is recreated.
//!
//! LeaderWorkerSet counts a restart of ANY container of a group pod as a group failure, init
//! containers (so a native-sidecar agent) included: kubernetes-sigs/lws
//! pkg/utils/pod/pod_utils.go, ContainerRestarted (a `restartCount > 0` in any init or
//! regular container status of a Pending or Running pod); with `RecreateGroupOnPodRestart`,
//! pkg/controllers/pod_controller.go handleRestartPolicy then deletes the leader and with it
//! all 16-32 pods of the group. So in a group pod the agent has no liveness probe (its
//! failures show in metrics and the `VitalsAgentDown` alert instead, docs/groups.md), a
//! startup probe that cannot run out in practice, no CPU limit (a throttled ticker must not
//! look dead), and a memory limit far above its measured peak ([`super::resources`]).

use super::yaml::{Map, Node};
use super::{
    container_name, ensure_env, ensure_field_env, ensure_probe, lws, tolerate_outage, Group,
    GroupRole, SubdomainSource, Timing,
};

/// The startup probe of a group pod's agent: at least [`GROUP_AGENT_STARTUP_S`] before the
/// kubelet gives up, probing every second so the model still starts as soon as the agent
/// listens (a native sidecar's startup probe holds the next containers back).
const GROUP_AGENT_STARTUP: Timing = (1, 1, 301);
/// SPEC §11: a startup probe "that cannot run out in practice": five minutes, where the agent
/// listens within a second of starting (it binds its port before anything else).
const GROUP_AGENT_STARTUP_S: u64 = 300;

/// The agent's probes in a group pod: a startup probe tolerating at least five minutes
/// (an older, shorter one is lengthened, keeping its period), and no liveness probe.
pub(super) fn agent_probes(agent: &mut Map) {
    ensure_probe(agent, "startupProbe", "/livez", GROUP_AGENT_STARTUP);
    if let Some(startup) = agent.get_mut("startupProbe").and_then(Node::as_map_mut) {
        tolerate_outage(startup, GROUP_AGENT_STARTUP_S);
    }
    agent.remove("livenessProbe");
}

/// The agent's group env (SPEC §9): its role, and for a leader where its members are
/// (`NAME-1 … NAME-(N-1)` under the subdomain; see [`super::lws`]). Outside a group, the
/// group env is left as it is: a group wired by hand (`VITALS_GROUP_MEMBERS`) is the user's.
pub(super) fn ensure_group_env(env: &mut Vec<Node>, group: Option<&Group>) {
    const LEADER_ONLY: [&str; 3] = [
        "VITALS_GROUP_SIZE",
        "VITALS_GROUP_POD_NAME",
        "VITALS_GROUP_SUBDOMAIN",
    ];
    let Some(group) = group else {
        return;
    };
    ensure_env(env, "VITALS_GROUP_ROLE", group.role.as_str());
    match group.role {
        GroupRole::Leader => {
            ensure_field_env(
                env,
                "VITALS_GROUP_SIZE",
                &format!("metadata.annotations['{}']", lws::SIZE_ANNOTATION),
            );
            ensure_field_env(env, "VITALS_GROUP_POD_NAME", "metadata.name");
            match &group.subdomain {
                SubdomainSource::SetName => ensure_field_env(
                    env,
                    "VITALS_GROUP_SUBDOMAIN",
                    &format!("metadata.labels['{}']", lws::NAME_LABEL),
                ),
                SubdomainSource::LeaderPodName => {
                    ensure_field_env(env, "VITALS_GROUP_SUBDOMAIN", "metadata.name")
                }
                SubdomainSource::Admitted(subdomain) => {
                    ensure_env(env, "VITALS_GROUP_SUBDOMAIN", subdomain)
                }
            }
            // The members' names fully qualified, no search-list walk (SPEC §11).
            ensure_field_env(env, vitals_proto::env::POD_NAMESPACE, "metadata.namespace");
        }
        GroupRole::Member => {
            env.retain(|e| !container_name(e).is_some_and(|n| LEADER_ONLY.contains(&n)))
        }
    }
}

/// A warning for a group pod on the host network that resolves names through the node's
/// resolver: with `hostNetwork`, `dnsPolicy: ClusterFirst` (the default) falls back to
/// `Default` (kubernetes pkg/kubelet/network/dns/dns.go, getPodDNSType), so the leader's
/// agent cannot resolve its members' names, nor the engine `LWS_LEADER_ADDRESS`.
pub(super) fn host_network_dns_warning(spec: &Map) -> Option<String> {
    let host_network = matches!(spec.get("hostNetwork"), Some(Node::Scalar(s)) if s.is_true());
    (host_network && spec.get_str("dnsPolicy") != Some("ClusterFirstWithHostNet")).then(|| {
        "warning: hostNetwork: true without dnsPolicy: ClusterFirstWithHostNet resolves names through the node, where the group's names (the leader's members, LWS_LEADER_ADDRESS) do not exist; set dnsPolicy: ClusterFirstWithHostNet".to_string()
    })
}

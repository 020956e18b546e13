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

use super::lws;
use super::pod::{container_name, ensure_env, ensure_field_env};
use super::probes::{ensure_probe, tolerate_outage, Timing};
use super::yaml::{Map, Node};
pub(super) use crate::config::GroupRole;
use vitals_core::upstreams::ProbeKind;
use vitals_proto::env::{GROUP_POD_NAME, GROUP_ROLE, GROUP_SIZE, GROUP_SUBDOMAIN, POD_NAMESPACE};

/// Where a LeaderWorkerSet's pods find their subdomain (the headless Service's name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum SubdomainSource {
    /// Policy `Shared` (the default): the Service is named after the LWS, which LWS writes
    /// into every pod's `leaderworkerset.sigs.k8s.io/name` label.
    SetName,
    /// Policy `UniquePerReplica`: one Service per group, named after the leader pod.
    LeaderPodName,
    /// `UniquePerReplica` with `groupIdentity: Hash`: the Service is named after the leader's
    /// host name, drawn at its admission; the admitted pod's `spec.subdomain`, as a value
    /// (the downward API cannot read it).
    Admitted(String),
}

/// How one pod template is wired into its group: the env `inject` writes into its agent,
/// which `run` reads into its [`crate::config::Group`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct GroupWiring {
    /// The pods' role.
    pub(super) role: GroupRole,
    /// Where the leader's agent reads the members' subdomain.
    pub(super) subdomain: SubdomainSource,
}

/// The startup probe of a group pod's agent: at least [`GROUP_AGENT_STARTUP_S`] before the
/// kubelet gives up, probing every second so the model still starts as soon as the agent
/// listens (a native sidecar's startup probe holds the next containers back).
const GROUP_AGENT_STARTUP: Timing = Timing::outlasting(1, GROUP_AGENT_STARTUP_S);
/// SPEC §11: a startup probe "that cannot run out in practice": five minutes, where the agent
/// listens within a second of starting (it binds its port before anything else).
const GROUP_AGENT_STARTUP_S: u64 = 300;

/// The agent's probes in a group pod: a startup probe tolerating at least five minutes
/// (an older, shorter one is lengthened, keeping its period), and no liveness probe.
pub(super) fn agent_probes(agent: &mut Map) {
    ensure_probe(agent, ProbeKind::Startup, "/livez", GROUP_AGENT_STARTUP);
    let startup = agent.get_mut(ProbeKind::Startup.key());
    if let Some(startup) = startup.and_then(Node::as_map_mut) {
        tolerate_outage(startup, GROUP_AGENT_STARTUP_S);
    }
    agent.remove(ProbeKind::Liveness.key());
}

/// The agent's group env (SPEC §9): its role, and for a leader where its members are
/// (`NAME-1 … NAME-(N-1)` under the subdomain; see [`super::lws`]). Outside a group, the
/// group env is left as it is: a group wired by hand (`VITALS_GROUP_MEMBERS`) is the user's.
pub(super) fn ensure_group_env(env: &mut Vec<Node>, group: Option<&GroupWiring>) {
    const LEADER_ONLY: [&str; 3] = [GROUP_SIZE, GROUP_POD_NAME, GROUP_SUBDOMAIN];
    let Some(group) = group else {
        return;
    };
    ensure_env(env, GROUP_ROLE, &group.role.to_string());
    match group.role {
        GroupRole::Leader => {
            ensure_field_env(
                env,
                GROUP_SIZE,
                &format!("metadata.annotations['{}']", lws::SIZE_ANNOTATION),
            );
            ensure_field_env(env, GROUP_POD_NAME, "metadata.name");
            match &group.subdomain {
                SubdomainSource::SetName => ensure_field_env(
                    env,
                    GROUP_SUBDOMAIN,
                    &format!("metadata.labels['{}']", lws::NAME_LABEL),
                ),
                SubdomainSource::LeaderPodName => {
                    ensure_field_env(env, GROUP_SUBDOMAIN, "metadata.name")
                }
                SubdomainSource::Admitted(subdomain) => ensure_env(env, GROUP_SUBDOMAIN, subdomain),
            }
            // The members' names fully qualified, no search-list walk (SPEC §11).
            ensure_field_env(env, POD_NAMESPACE, "metadata.namespace");
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

#[cfg(test)]
mod tests {
    use clap::{Parser, ValueEnum};

    use super::*;
    use crate::config::RunArgs;

    #[derive(Parser)]
    struct Run {
        #[command(flatten)]
        args: RunArgs,
    }

    #[test]
    fn the_role_inject_writes_is_the_role_run_reads() {
        for &role in GroupRole::value_variants() {
            let mut env = Vec::new();
            let wiring = GroupWiring {
                role,
                subdomain: SubdomainSource::SetName,
            };
            ensure_group_env(&mut env, Some(&wiring));
            let written = env
                .iter()
                .filter_map(Node::as_map)
                .find(|e| e.get_str("name") == Some(GROUP_ROLE))
                .and_then(|e| e.get_str("value"))
                .expect("a group's agent gets its role");
            let flag = format!("--group-role={written}");
            let read = Run::try_parse_from(["run", flag.as_str()])
                .unwrap_or_else(|e| panic!("{flag}: {e}"))
                .args
                .group
                .group_role;
            eprintln!("{role:?}: inject writes {written:?}, run reads {read:?}");
            assert_eq!(read, Some(role));
            assert_eq!(written.parse::<GroupRole>(), Ok(role));
        }
    }
}

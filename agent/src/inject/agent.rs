//! The agent container in a pod: found wherever an earlier injection put it and updated in
//! place, its image, args, env, port, probes and resources, and where it goes (a native
//! sidecar first among the init containers, or an ordinary container last).

use super::error::shape;
use super::group::{self, GroupWiring};
use super::pod::{container_name, ensure_env, ensure_field_env, ensure_socket_mount, PodFacts};
use super::probes::{ensure_probe, AGENT_KILL_GRACE_S, AGENT_LIVENESS, AGENT_STARTUP};
use super::security::secure_agent;
use super::yaml::{self, Map, Node};
use super::{is_agent_port, resources, Problem, AGENT_CONTAINER, AGENT_PORT, SOCKET_PATH, VERSION};
use vitals_core::upstreams::ProbeKind;
use vitals_proto::env::{POD_IP, UPSTREAMS};

/// The agent image when none is given: this version's, without a registry.
pub(super) fn default_image() -> String {
    format!("vitals-agent:{VERSION}")
}

/// Removes the agent container an earlier injection added; returns where it was (list key,
/// index) and its fields (empty when there was none).
pub(super) fn take_agent(spec: &mut Map) -> (Option<&'static str>, usize, Map) {
    for key in ["initContainers", "containers"] {
        if let Some(list) = spec.get_mut(key).and_then(Node::as_seq_mut) {
            if let Some(i) = list
                .iter()
                .position(|c| container_name(c) == Some(AGENT_CONTAINER))
            {
                let agent = match list.remove(i) {
                    Node::Map(m) => m,
                    _ => Map::default(),
                };
                return (Some(key), i, agent);
            }
        }
    }
    (None, 0, Map::default())
}

/// Puts the agent back: a native sidecar first among the init containers, or (legacy) an
/// ordinary container last (where it already was, if it was one).
pub(super) fn place_agent(
    spec: &mut Map,
    agent: Map,
    old_key: Option<&'static str>,
    old_index: usize,
    legacy: bool,
) -> Result<(), Problem> {
    let agent = Node::Map(agent);
    if legacy {
        // Last, so `kubectl logs/exec` keep defaulting to the first (the user's) container.
        let list = spec
            .seq_entry("containers")
            .ok_or_else(|| shape("spec.containers", "list"))?;
        match old_key {
            Some("containers") => list.insert(old_index.min(list.len()), agent),
            _ => list.push(agent),
        }
        if spec
            .get("initContainers")
            .and_then(Node::as_seq)
            .is_some_and(Vec::is_empty)
            && old_key == Some("initContainers")
        {
            spec.remove("initContainers");
        }
    } else {
        if spec.get("initContainers").is_none() {
            let at = spec.position("containers").unwrap_or(spec.0.len());
            spec.insert_at(at, "initContainers", Node::Seq(Vec::new()));
        }
        let list = spec
            .seq_entry("initContainers")
            .ok_or_else(|| shape("spec.initContainers", "list"))?;
        // First, so it is up before the user's init containers run; also after a later
        // webhook put its own init container in front (reinvocation, SPEC §11).
        list.insert(0, agent);
    }
    Ok(())
}

/// Everything [`wire_agent`] writes into the agent container.
pub(super) struct AgentWiring<'a> {
    /// The agent's image.
    pub(super) image: &'a str,
    /// The protocol workers it expects.
    pub(super) workers: &'a [String],
    /// The upstreams' JSON, if any.
    pub(super) upstreams: Option<&'a str>,
    /// The pod's termination grace for an ordinary container (None: native sidecar).
    pub(super) legacy_grace: Option<u64>,
    /// The pod's group, if any.
    pub(super) group: Option<&'a GroupWiring>,
    /// What its settings depend on in the rest of the pod.
    pub(super) facts: PodFacts,
    /// `--agent-resources` (JSON), if given.
    pub(super) resources: Option<&'a str>,
}

/// The agent container.
pub(super) fn wire_agent(agent: &mut Map, w: &AgentWiring<'_>) {
    agent.ensure("name", Node::string(AGENT_CONTAINER));
    agent.ensure("image", Node::string(w.image));
    agent.set_default("imagePullPolicy", Node::string("IfNotPresent"));
    match w.legacy_grace {
        Some(_) => {
            agent.remove("restartPolicy");
        }
        None if agent.get("restartPolicy").is_none() => {
            // Where a fresh injection puts it, so native → legacy → native round-trips.
            let at = ["imagePullPolicy", "image", "name"]
                .iter()
                .find_map(|k| agent.position(k))
                .map_or(0, |i| i + 1);
            agent.insert_at(at, "restartPolicy", Node::string("Always"));
        }
        None => agent.ensure("restartPolicy", Node::string("Always")),
    }
    let mut args = vec![
        "run".to_string(),
        // Dual-stack: `[::]` accepts IPv4 too, and an IPv6-only cluster's kubelet probes
        // the pod's IPv6 address.
        format!("--listen=[::]:{AGENT_PORT}"),
        format!("--socket={SOCKET_PATH}"),
        // The workers may run as any UID: the socket sits in a pod-private emptyDir, so
        // letting every UID of the pod connect opens it to nobody else.
        "--socket-mode=0666".to_string(),
    ];
    args.extend(w.workers.iter().map(|w| format!("--expect={w}")));
    if let Some(grace) = w.legacy_grace {
        // An ordinary container gets SIGTERM together with the workers: keep answering
        // their probes while they drain, and leave before the kubelet's SIGKILL.
        args.push(format!(
            "--shutdown-grace={}s",
            grace.saturating_sub(5).max(1)
        ));
    }
    agent.ensure(
        "args",
        Node::Seq(args.into_iter().map(Node::string).collect()),
    );
    if agent.get("env").is_none() {
        let at = agent.position("args").map_or(agent.0.len(), |i| i + 1);
        agent.insert_at(at, "env", Node::Seq(Vec::new()));
    }
    if let Some(env) = agent.seq_entry("env") {
        // The upstreams are probed at the pod's IP, where their servers listen (SPEC §8).
        ensure_field_env(env, POD_IP, "status.podIP");
        match w.upstreams {
            Some(json) => ensure_env(env, UPSTREAMS, json),
            None => env.retain(|e| container_name(e) != Some(UPSTREAMS)),
        }
        group::ensure_group_env(env, w.group);
    }
    let ports = agent.seq_entry("ports");
    if let Some(ports) = ports {
        if !ports
            .iter()
            .filter_map(Node::as_map)
            .any(|p| p.get_str("containerPort").is_some_and(is_agent_port))
        {
            ports.push(Node::Map(Map::from_pairs([
                ("name", Node::string("vitals")),
                ("containerPort", Node::plain(AGENT_PORT.to_string())),
                ("protocol", Node::string("TCP")),
            ])));
        }
    }
    if w.group.is_some() {
        group::agent_probes(agent);
    } else {
        ensure_probe(agent, ProbeKind::Startup, "/livez", AGENT_STARTUP);
        ensure_probe(agent, ProbeKind::Liveness, "/livez", AGENT_LIVENESS);
        // A wedged agent gets 5 s to exit, not the pod's grace (often minutes on GPU pods):
        // its restart must stay within what the model's liveness tolerates (deploy/base).
        let live = agent.get_mut(ProbeKind::Liveness.key());
        if let Some(live) = live.and_then(Node::as_map_mut) {
            let grace = AGENT_KILL_GRACE_S.to_string();
            live.set_default("terminationGracePeriodSeconds", Node::plain(grace));
        }
    }
    // QoS: a pod whose every other container is Guaranteed stays Guaranteed (exclusive
    // CPUs, NUMA alignment) only if the agent's requests equal its limits too. Resources
    // someone edited (none of inject's forms) are theirs.
    let given = w
        .resources
        .and_then(|json| yaml::parse_document(json).ok().flatten());
    let ours =
        |r: &Node| resources::is_agent_form(r) || given.as_ref().is_some_and(|g| yaml::equiv(r, g));
    if agent.get("resources").is_none_or(ours) {
        let wanted = given
            .clone()
            .unwrap_or_else(|| resources::agent_resources(w.group.is_some(), w.facts.guaranteed));
        agent.set("resources", wanted);
    }
    secure_agent(agent, w.facts.root);
    // The agent's mount cannot conflict: nothing but this code writes its volumeMounts.
    let _ = ensure_socket_mount(agent, AGENT_CONTAINER);
}

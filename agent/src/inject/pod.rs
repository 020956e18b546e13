//! Wiring one pod template, the one pod-level transform ([`inject_pod`], for `inject`'s
//! templates and the webhook's pods alike): which containers are workers, the ports checked,
//! each worker's env, socket mount and probes, each upstream taken over, then the agent, the
//! shared PID namespace, the socket volume, the pull secrets, the label and the annotations.

use std::collections::BTreeSet;

use super::agent::{default_image, place_agent, take_agent, wire_agent, AgentWiring};
use super::error::shape;
use super::group::{self, GroupRole, GroupWiring};
use super::probes::{
    agent_path, ensure_probe, tolerate_agent_restart, GROUP_LIVENESS, WORKER_LIVENESS,
    WORKER_READINESS, WORKER_STARTUP,
};
use super::security::pod_runs_as_root;
use super::yaml::{self, Map, Node};
use super::{
    is_agent_port, lws, mesh, resources, upstreams, InjectOptions, Problem, AGENT_CONTAINER,
    AGENT_PORT, CANARY_ANNOTATION_PREFIX, PROFILE_ANNOTATION_PREFIX, SOCKET_DIR, SOCKET_PATH,
    SOCKET_VOLUME, VERSION, VERSION_ANNOTATION, WORKERS_ANNOTATION,
};
use vitals_core::upstreams::ProbeKind;

/// The pod template's annotation `key`, if set.
pub(super) fn annotation<'a>(tmpl: &'a Map, key: &str) -> Option<&'a str> {
    tmpl.get("metadata")?
        .as_map()?
        .get("annotations")?
        .as_map()?
        .get_str(key)
}

/// Whether `name` is a name the agent accepts for a worker (the protocol's rule).
pub(super) fn is_worker_name(name: &str) -> bool {
    vitals_proto::WorkerName::parse(name).is_ok()
}

pub(super) fn container_name(c: &Node) -> Option<&str> {
    c.as_map()?.get_str("name")
}

/// What was done to one pod template.
pub(super) struct PodSummary {
    /// Protocol workers, in container order.
    pub(super) workers: Vec<String>,
    /// Upstreams with their metrics profile, in container order.
    pub(super) upstreams: Vec<(String, Option<&'static str>)>,
    /// Warnings for the operator.
    pub(super) warnings: Vec<String>,
    /// Whether the agent got the default image.
    pub(super) default_image: bool,
}

/// Pod label inject puts on every pod it injects: what `deploy/monitoring`'s PodMonitor
/// selects, and how people find Vitals pods (`kubectl get pods -l vitals.dev/injected`).
pub const INJECTED_LABEL: &str = "vitals.dev/injected";

/// Wires one pod template (the pod-level transform, called once per pod template):
/// chooses the workers, checks the ports, wires the workers and the upstreams, then the
/// agent, the pod-level settings, the label and the annotations. `group` is the template's
/// role in a multi-pod group (LeaderWorkerSet), `None` for an ordinary pod.
pub(super) fn inject_pod(
    tmpl: &mut Map,
    opts: &InjectOptions,
    group: Option<&GroupWiring>,
    used: &mut BTreeSet<String>,
) -> Result<PodSummary, Problem> {
    let previous: Vec<String> = annotation(tmpl, WORKERS_ANNOTATION)
        .map(|a| {
            a.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let same_version = annotation(tmpl, VERSION_ANNOTATION) == Some(VERSION);
    let profile_overrides = upstreams::annotations(tmpl, PROFILE_ANNOTATION_PREFIX);
    let canaries = upstreams::annotations(tmpl, CANARY_ANNOTATION_PREFIX);
    let spec = tmpl
        .get_mut("spec")
        .and_then(Node::as_map_mut)
        .ok_or_else(|| shape("spec", "mapping"))?;
    let mut warnings = Vec::new();

    let workers = choose_workers(spec, &previous, opts, used)?;
    check_ports(spec)?;
    let istio = mesh::IstioOriginals::of(spec, &mut warnings);
    let (old_key, old_index, mut agent) = take_agent(spec);

    // Workers: env, socket mount, probes.
    let containers = spec
        .get_mut("containers")
        .and_then(Node::as_seq_mut)
        .ok_or_else(|| shape("spec.containers", "list"))?;
    for c in containers.iter_mut().filter_map(Node::as_map_mut) {
        if let Some(name) = c.get_str("name").map(str::to_string) {
            if workers.contains(&name) {
                wire_worker(c, &name)?;
            }
        }
    }

    // Upstreams: every other container with probes the agent can run; in a group, every
    // other container (headless ones watched by /proc alone).
    let before = upstreams::previous_config(&agent);
    let mut config = vitals_core::upstreams::schema::Upstreams::new();
    let mut upstream_names = Vec::new();
    let role = group.map(|g| g.role);
    for c in containers.iter_mut().filter_map(Node::as_map_mut) {
        let Some(name) = c.get_str("name").map(str::to_string) else {
            continue;
        };
        if workers.contains(&name) || name == AGENT_CONTAINER || mesh::is_mesh_proxy(&name) {
            continue;
        }
        let kept = istio.restore(c, &name);
        let mut wired = upstreams::wire_upstream(
            c,
            &name,
            before.get(&name),
            profile_overrides.get(&name).map(String::as_str),
            &mut warnings,
        )?;
        kept.put_back(c);
        // A group's container without probes (a member's Ray worker; a leader made from
        // the workerTemplate) is watched by /proc alone.
        if wired.is_none() && role.is_some() {
            wired = Some((upstreams::wire_headless(c, &name, &mut warnings), None));
        }
        if let Some((mut entry, profile)) = wired {
            if !is_worker_name(&name) {
                return Err(Problem::BadWorkerName { name });
            }
            entry.canary = upstreams::canary(
                &name,
                &entry,
                canaries.get(&name).map(String::as_str),
                before.get(&name),
                profile,
            )?;
            // A leader's model container needs a liveness probe on the agent for the
            // group's verdict (`group_broken`) to restart it (SPEC §9).
            let live = ProbeKind::Liveness;
            if role == Some(GroupRole::Leader) && c.get(live.key()).is_none() {
                ensure_probe(c, live, &agent_path(live, &name), GROUP_LIVENESS);
            }
            if let Some(live) = c.get_mut(live.key()).and_then(Node::as_map_mut) {
                tolerate_agent_restart(live);
            }
            config.insert(name.clone(), entry);
            upstream_names.push((name, profile));
        }
    }
    if workers.is_empty() && upstream_names.is_empty() {
        let available = container_names(spec)?.join(", ");
        return Err(Problem::NoWorkerChosen { available });
    }

    // The agent: found by name wherever an earlier injection put it, updated in place.
    let (image, default_image) = match (&opts.image, same_version) {
        (Some(image), _) => (image.clone(), false),
        (None, true) => match agent.get_str("image") {
            Some(image) => (image.to_string(), false),
            None => (default_image(), true),
        },
        (None, false) => (default_image(), true),
    };
    let grace = spec
        .get_str("terminationGracePeriodSeconds")
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(30);
    let upstreams_json = (!config.is_empty()).then(|| {
        serde_json::to_string(&config)
            .expect("the upstream schema serialises: plain data, string keys")
    });
    let host_network = matches!(spec.get("hostNetwork"), Some(Node::Scalar(s)) if s.is_true());
    if host_network {
        warnings.push(format!(
            "warning: hostNetwork: true puts the agent's port {AGENT_PORT} on the node: /status and /metrics are reachable on the node's IP (restrict them with a host firewall), and two such pods on one node collide on the port (the second agent cannot listen)"
        ));
    }
    if group.is_some() {
        warnings.extend(group::host_network_dns_warning(spec));
    }
    let facts = PodFacts {
        root: pod_runs_as_root(spec),
        guaranteed: resources::guaranteed(other_containers(spec)),
    };
    wire_agent(
        &mut agent,
        &AgentWiring {
            image: &image,
            workers: &workers,
            upstreams: upstreams_json.as_deref(),
            legacy_grace: opts.legacy_sidecar.then_some(grace),
            group,
            facts,
            resources: opts.agent_resources.as_deref(),
        },
    );
    place_agent(spec, agent, old_key, old_index, opts.legacy_sidecar)?;
    pod_level(spec, &mut warnings)?;
    if !opts.image_pull_secrets.is_empty() {
        let secrets = spec
            .seq_entry("imagePullSecrets")
            .ok_or_else(|| shape("spec.imagePullSecrets", "list"))?;
        for name in &opts.image_pull_secrets {
            if !secrets.iter().any(|s| container_name(s) == Some(name)) {
                secrets.push(Node::Map(Map::from_pairs([("name", Node::string(name))])));
            }
        }
    }

    // Label and annotations, for the next injection, for Prometheus and for people.
    if tmpl.get("metadata").is_none() {
        let at = tmpl.position("spec").unwrap_or(0);
        tmpl.insert_at(at, "metadata", Node::Map(Map::default()));
    }
    let metadata = tmpl
        .map_entry("metadata")
        .ok_or_else(|| shape("metadata", "mapping"))?;
    metadata
        .map_entry("labels")
        .ok_or_else(|| shape("metadata.labels", "mapping"))?
        .ensure(INJECTED_LABEL, Node::string("true"));
    let annotations = metadata
        .map_entry("annotations")
        .ok_or_else(|| shape("metadata.annotations", "mapping"))?;
    if workers.is_empty() {
        annotations.remove(WORKERS_ANNOTATION);
    } else {
        annotations.ensure(WORKERS_ANNOTATION, Node::string(workers.join(",")));
    }
    annotations.ensure(VERSION_ANNOTATION, Node::string(VERSION));
    mesh::exclude_agent_port(tmpl, role == Some(GroupRole::Leader), &mut warnings)?;
    Ok(PodSummary {
        workers,
        upstreams: upstream_names,
        warnings,
        default_image,
    })
}

/// Injects Vitals into one Pod object (a mapping with `metadata` and `spec`) exactly as
/// [`inject_documents`] does to each pod template, its group role read from what
/// LeaderWorkerSet's pod webhook wrote on it (SPEC §11); the admission webhook's entry point.
/// Returns the warnings for the operator; on error `pod` is left as it was.
pub(crate) fn inject_pod_object(
    pod: &mut Map,
    opts: &InjectOptions,
) -> Result<Vec<String>, Problem> {
    let group = lws::group_of_pod(pod)?;
    let before = pod.clone();
    inject_pod(pod, opts, group.as_ref(), &mut BTreeSet::new())
        .map(|summary| summary.warnings)
        .inspect_err(|_| *pod = before)
}

/// What the agent's container settings depend on in the rest of the pod.
#[derive(Debug, Clone, Copy)]
pub(super) struct PodFacts {
    /// The pod-level user is root.
    pub(super) root: bool,
    /// Every other container has requests = limits for cpu and memory (QoS Guaranteed).
    pub(super) guaranteed: bool,
}

/// The names of the pod's containers, the agent's excepted.
fn container_names(spec: &Map) -> Result<Vec<String>, Problem> {
    let containers = spec
        .get("containers")
        .and_then(Node::as_seq)
        .ok_or_else(|| shape("spec.containers", "list"))?;
    let mut names = Vec::new();
    for c in containers {
        let name = container_name(c).ok_or_else(|| shape("spec.containers[].name", "string"))?;
        if name != AGENT_CONTAINER {
            names.push(name.to_string());
        }
    }
    Ok(names)
}

/// Which containers are protocol workers: those the annotation or `--container` names.
/// Nothing else is (SPEC §8): an unnamed container is an upstream when it has probes.
fn choose_workers(
    spec: &Map,
    previous: &[String],
    opts: &InjectOptions,
    used: &mut BTreeSet<String>,
) -> Result<Vec<String>, Problem> {
    let names = container_names(spec)?;
    if let Some(p) = previous.iter().find(|p| !names.contains(p)) {
        return Err(Problem::MissingContainer {
            name: p.clone(),
            available: names.join(", "),
        });
    }
    used.extend(
        names
            .iter()
            .filter(|n| opts.containers.contains(n))
            .cloned(),
    );
    let workers: Vec<String> = names
        .into_iter()
        .filter(|n| previous.contains(n) || opts.containers.contains(n))
        .collect();
    if let Some(w) = workers.iter().find(|w| !is_worker_name(w)) {
        return Err(Problem::BadWorkerName { name: w.clone() });
    }
    Ok(workers)
}

/// Nobody else may take the agent's port: containers of a pod share one network, and with
/// `hostNetwork` the node's.
fn check_ports(spec: &Map) -> Result<(), Problem> {
    let host_network = matches!(spec.get("hostNetwork"), Some(Node::Scalar(s)) if s.is_true());
    for c in other_containers(spec) {
        let container = || c.get_str("name").unwrap_or("?").to_string();
        for p in c
            .get("ports")
            .and_then(Node::as_seq)
            .into_iter()
            .flatten()
            .filter_map(Node::as_map)
        {
            let host_port = p.get_str("hostPort").is_some_and(is_agent_port);
            let container_port = p.get_str("containerPort").is_some_and(is_agent_port);
            if host_network && (host_port || container_port) {
                return Err(Problem::HostNetworkPortConflict {
                    container: container(),
                });
            }
            if container_port {
                return Err(Problem::PortConflict {
                    container: container(),
                });
            }
        }
    }
    Ok(())
}

/// Every container of a pod spec but the agent's, init containers first.
pub(super) fn other_containers(spec: &Map) -> impl Iterator<Item = &Map> {
    ["initContainers", "containers"]
        .into_iter()
        .flat_map(|key| spec.get(key).and_then(Node::as_seq).into_iter().flatten())
        .filter_map(Node::as_map)
        .filter(|c| c.get_str("name") != Some(AGENT_CONTAINER))
}

/// Pod level: a shared PID namespace (hostPID already shares one, and excludes it) and the
/// socket volume.
fn pod_level(spec: &mut Map, warnings: &mut Vec<String>) -> Result<(), Problem> {
    let host_pid = matches!(spec.get("hostPID"), Some(Node::Scalar(s)) if s.is_true());
    let shared = spec.get("shareProcessNamespace");
    let is_shared = matches!(shared, Some(Node::Scalar(s)) if s.is_true());
    let explicit = shared.is_some();
    if !host_pid && !is_shared {
        if explicit {
            warnings.push(
                "warning: shareProcessNamespace was false; set to true so the agent sees the containers' processes (they now see each other's too)"
                    .to_string(),
            );
        }
        spec.set("shareProcessNamespace", Node::plain("true"));
    }
    let volumes = spec
        .seq_entry("volumes")
        .ok_or_else(|| shape("spec.volumes", "list"))?;
    let wanted = socket_volume();
    match volumes
        .iter_mut()
        .find(|v| container_name(v) == Some(SOCKET_VOLUME))
    {
        Some(v) => {
            let is_memory = v
                .as_map()
                .and_then(|m| m.get("emptyDir"))
                .and_then(Node::as_map)
                .and_then(|e| e.get_str("medium"))
                == Some("Memory");
            if !is_memory {
                *v = wanted;
            }
        }
        None => volumes.push(wanted),
    }
    Ok(())
}

fn socket_volume() -> Node {
    Node::Map(Map::from_pairs([
        ("name", Node::string(SOCKET_VOLUME)),
        (
            "emptyDir",
            Node::Map(Map::from_pairs([
                ("medium", Node::string("Memory")),
                ("sizeLimit", Node::string("1Mi")),
            ])),
        ),
    ]))
}

/// env, socket mount and probes of one worker container.
fn wire_worker(c: &mut Map, name: &str) -> Result<(), Problem> {
    let env = c
        .seq_entry("env")
        .ok_or_else(|| shape(&format!("container {name}: env"), "list"))?;
    ensure_env(env, vitals_proto::env::AGENT_SOCKET, SOCKET_PATH);
    ensure_env(env, vitals_proto::env::NAME, name);
    ensure_socket_mount(c, name)?;
    for (kind, timing) in [
        (ProbeKind::Startup, WORKER_STARTUP),
        (ProbeKind::Liveness, WORKER_LIVENESS),
        (ProbeKind::Readiness, WORKER_READINESS),
    ] {
        ensure_probe(c, kind, &agent_path(kind, name), timing);
        if kind == ProbeKind::Liveness {
            if let Some(live) = c.get_mut(kind.key()).and_then(Node::as_map_mut) {
                tolerate_agent_restart(live);
            }
        }
    }
    Ok(())
}

pub(super) fn ensure_env(env: &mut Vec<Node>, name: &str, value: &str) {
    let wanted = Node::Map(Map::from_pairs([
        ("name", Node::string(name)),
        ("value", Node::string(value)),
    ]));
    match env.iter_mut().find(|e| container_name(e) == Some(name)) {
        Some(e) => {
            let ok = e
                .as_map()
                .is_some_and(|m| m.get_str("value") == Some(value) && m.get("valueFrom").is_none());
            if !ok {
                *e = wanted;
            }
        }
        None => env.push(wanted),
    }
}

pub(super) fn ensure_socket_mount(c: &mut Map, container: &str) -> Result<(), Problem> {
    let mounts = c
        .seq_entry("volumeMounts")
        .ok_or_else(|| shape(&format!("container {container}: volumeMounts"), "list"))?;
    for m in mounts.iter().filter_map(Node::as_map) {
        if m.get_str("mountPath").map(|p| p.trim_end_matches('/')) == Some(SOCKET_DIR)
            && m.get_str("name") != Some(SOCKET_VOLUME)
        {
            let volume = m.get_str("name").unwrap_or("?").to_string();
            return Err(Problem::MountConflict {
                container: container.to_string(),
                volume,
            });
        }
    }
    match mounts
        .iter_mut()
        .filter_map(Node::as_map_mut)
        .find(|m| m.get_str("name") == Some(SOCKET_VOLUME))
    {
        Some(m) => m.ensure("mountPath", Node::string(SOCKET_DIR)),
        None => mounts.push(Node::Map(Map::from_pairs([
            ("name", Node::string(SOCKET_VOLUME)),
            ("mountPath", Node::string(SOCKET_DIR)),
        ]))),
    }
    Ok(())
}

/// An env var from the downward API (`fieldRef`).
pub(super) fn ensure_field_env(env: &mut Vec<Node>, name: &str, field_path: &str) {
    let wanted = Node::Map(Map::from_pairs([
        ("name", Node::string(name)),
        (
            "valueFrom",
            Node::Map(Map::from_pairs([(
                "fieldRef",
                Node::Map(Map::from_pairs([("fieldPath", Node::string(field_path))])),
            )])),
        ),
    ]));
    match env.iter_mut().find(|e| container_name(e) == Some(name)) {
        Some(e) => {
            if !yaml::equiv(&without_default_api_version(e), &wanted) {
                *e = wanted;
            }
        }
        None => env.push(wanted),
    }
}

/// An env entry without `valueFrom.fieldRef.apiVersion: v1`, which the API server adds to
/// every stored pod (kubernetes pkg/apis/core/v1/defaults.go, SetDefaults_ObjectFieldSelector):
/// the same reference as none.
fn without_default_api_version(entry: &Node) -> Node {
    let mut entry = entry.clone();
    if let Some(field_ref) = entry
        .as_map_mut()
        .and_then(|e| e.get_mut("valueFrom"))
        .and_then(Node::as_map_mut)
        .and_then(|v| v.get_mut("fieldRef"))
        .and_then(Node::as_map_mut)
    {
        if field_ref.get_str("apiVersion") == Some("v1") {
            field_ref.remove("apiVersion");
        }
    }
    entry
}

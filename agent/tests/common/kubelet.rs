//! An admitted pod as the kubelet reads it: its agent container, the agent's env with the
//! downward API resolved, and the probes of every container (init containers included) run
//! as the kubelet's prober would, so that a scenario can report the pod status LWS reads.

use std::time::Duration;

use serde_json::Value;
use vitals_e2e::pod::{Pod, WatchHandle};
use vitals_e2e::probe::{ProbeKind, ProbeWorker};

/// The agent container of `pod` (a native sidecar in `initContainers`, or a container).
pub fn agent(pod: &Value) -> &Value {
    containers(pod)
        .find(|(_, c)| c["name"] == "vitals-agent")
        .map(|(_, c)| c)
        .unwrap_or_else(|| panic!("no agent in {pod:#}"))
}

/// Every container of `pod`, init containers first, with the list it is in.
fn containers(pod: &Value) -> impl Iterator<Item = (&'static str, &Value)> {
    ["initContainers", "containers"]
        .into_iter()
        .flat_map(move |list| {
            pod["spec"][list]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |c| (list, c))
        })
}

/// The agent's env as the kubelet gives it to the process: values, and the downward API's
/// field references resolved against `pod` (kubernetes pkg/kubelet/kubelet_pods.go
/// podFieldSelectorRuntimeValue: `metadata.name`, `.namespace`, `.labels['k']`,
/// `.annotations['k']`, `status.podIP`).
pub fn agent_env(pod: &Value) -> Vec<(String, String)> {
    let meta = &pod["metadata"];
    let resolve = |path: &str| -> String {
        let keyed = |field: &str| {
            path.strip_prefix(&format!("metadata.{field}['"))
                .and_then(|k| k.strip_suffix("']"))
                .map(|k| meta[field][k].as_str().unwrap_or("").to_string())
        };
        match path {
            "metadata.name" | "metadata.namespace" => meta[&path["metadata.".len()..]]
                .as_str()
                .unwrap_or("")
                .into(),
            "status.podIP" => "10.0.0.5".into(),
            _ => keyed("labels")
                .or_else(|| keyed("annotations"))
                .unwrap_or_else(|| panic!("the downward API has no field {path}")),
        }
    };
    agent(pod)["env"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let value = match e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                Some(path) => resolve(path),
                None => e["value"].as_str().unwrap_or("").to_string(),
            };
            (e["name"].as_str().unwrap().to_string(), value)
        })
        .collect()
}

/// One probe of one container, running against the simulated pod's agent.
pub struct Probing {
    /// The container probed.
    pub container: String,
    /// `initContainers` or `containers`.
    pub list: &'static str,
    /// The path on the agent's port.
    pub path: String,
    /// Its kubelet worker's restarts so far.
    handle: WatchHandle,
}

/// Starts the kubelet's prober on every probe of every container of `pod` (the admitted
/// pod spec), each at its `periodSeconds` with its thresholds, against `sim`'s agent. Every
/// probe must be an httpGet on the agent's port, as the webhook rewrote them.
pub fn probe_all(pod: &Value, sim: &mut Pod, agent_port: u16) -> Vec<Probing> {
    let mut out = Vec::new();
    for (list, c) in containers(pod) {
        for (field, kind) in [
            ("startupProbe", ProbeKind::Startup),
            ("livenessProbe", ProbeKind::Liveness),
            ("readinessProbe", ProbeKind::Readiness),
        ] {
            let p = &c[field];
            if p.is_null() {
                continue;
            }
            let name = c["name"].as_str().expect("a container has a name");
            assert_eq!(
                p["httpGet"]["port"].as_u64(),
                Some(u64::from(agent_port)),
                "{name}'s {field} is not on the agent: {p}"
            );
            let path = p["httpGet"]["path"].as_str().expect("an httpGet path");
            let threshold = |k: &str, default: u64| {
                u32::try_from(p[k].as_u64().unwrap_or(default)).expect("a threshold fits")
            };
            let worker = ProbeWorker::new(
                kind,
                threshold("successThreshold", 1),
                threshold("failureThreshold", 3),
            );
            let period = Duration::from_secs(p["periodSeconds"].as_u64().unwrap_or(10));
            out.push(Probing {
                container: name.to_owned(),
                list,
                path: path.to_owned(),
                handle: sim.watch(vec![(path, worker)], period),
            });
        }
    }
    out
}

/// Each container's `restartCount` as the kubelet would report it in the pod status, init
/// containers first: the restarts its probes caused.
pub fn restart_counts(probing: &[Probing]) -> Vec<(&'static str, String, u32)> {
    let mut counts: Vec<(&'static str, String, u32)> = Vec::new();
    for p in probing {
        let n = p.handle.restarts(&p.path);
        match counts.iter_mut().find(|(_, c, _)| *c == p.container) {
            Some(entry) => entry.2 += n,
            None => counts.push((p.list, p.container.clone(), n)),
        }
    }
    counts
}

/// kubernetes-sigs/lws pkg/utils/pod/pod_utils.go ContainerRestarted: true when any init
/// or regular container of the pod has a `restartCount` above 0 (with
/// `RecreateGroupOnPodRestart`, the whole group is then recreated).
pub fn container_restarted(counts: &[(&'static str, String, u32)]) -> bool {
    counts.iter().any(|(_, _, n)| *n > 0)
}

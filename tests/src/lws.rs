//! LeaderWorkerSet's pods as the real control plane builds them from a LeaderWorkerSet
//! object (JSON), as they reach the webhooks that sort after LWS's own: the template, what
//! the LWS controller adds to it, what the StatefulSet (or, for `groupIdentity: Hash`, the
//! ReplicaSet) controller makes of it, and what LWS's pod webhook then writes. Each step
//! cites the source it follows (kubernetes-sigs/lws, kubernetes/kubernetes).

use serde_json::{json, Map, Value};

/// LWS's label and annotation keys (lws api/leaderworkerset/v1/leaderworkerset_types.go).
pub const NAME: &str = "leaderworkerset.sigs.k8s.io/name";
/// `"0"` on the leader, `i` on worker i.
pub const WORKER_INDEX: &str = "leaderworkerset.sigs.k8s.io/worker-index";
/// The group's ordinal, or its key in Hash mode.
pub const GROUP_INDEX: &str = "leaderworkerset.sigs.k8s.io/group-index";
/// The group's 40-hex key.
pub const GROUP_KEY: &str = "leaderworkerset.sigs.k8s.io/group-key";
/// The pod count of a group, leader included.
pub const SIZE: &str = "leaderworkerset.sigs.k8s.io/size";
/// `UniquePerReplica` when each group has its own headless Service.
pub const SUBDOMAIN_POLICY: &str = "leaderworkerset.sigs.k8s.io/subdomainPolicy";
/// `Hash` for hash group identity (PR #987).
pub const GROUP_IDENTITY: &str = "leaderworkerset.sigs.k8s.io/group-identity";
const REVISION: &str = "leaderworkerset.sigs.k8s.io/template-revision-hash";
const LEADER_NAME: &str = "leaderworkerset.sigs.k8s.io/leader-name";
const LEADER_ADDRESS: &str = "leaderworkerset.sigs.k8s.io/leader-address";

/// The revision every built pod carries (a controller-revision hash; its value matters to
/// nobody here).
const REVISION_HASH: &str = "5d8c7b9f4";

fn spec(lws: &Value) -> &Value {
    &lws["spec"]
}

fn lws_name(lws: &Value) -> &str {
    lws["metadata"]["name"].as_str().expect("an LWS has a name")
}

fn namespace(lws: &Value) -> &str {
    lws["metadata"]["namespace"].as_str().unwrap_or("default")
}

fn hash_identity(lws: &Value) -> bool {
    spec(lws)["groupIdentity"] == "Hash"
}

fn unique_per_replica(lws: &Value) -> bool {
    spec(lws)["networkConfig"]["subdomainPolicy"] == "UniquePerReplica"
}

fn size(lws: &Value) -> u64 {
    spec(lws)["leaderWorkerTemplate"]["size"]
        .as_u64()
        .unwrap_or(1)
}

/// A group key: 40 hex characters, as LWS's sha1 gives (pod_webhook.go genGroupUniqueKey),
/// drawn from `seed` so a test is repeatable.
pub fn group_key(seed: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut out = String::new();
    while out.len() < 40 {
        for b in seed.bytes().chain(out.clone().into_bytes()) {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        out.push_str(&format!("{h:016x}"));
    }
    out.truncate(40);
    out
}

/// `metadata` of `pod` as a map, created if missing, with its `labels` and `annotations`.
fn meta(pod: &mut Value) -> &mut Map<String, Value> {
    let m = pod
        .as_object_mut()
        .expect("a pod template is an object")
        .entry("metadata")
        .or_insert_with(|| json!({}));
    let m = m.as_object_mut().expect("metadata is an object");
    for key in ["labels", "annotations"] {
        m.entry(key).or_insert_with(|| json!({}));
    }
    m
}

fn set(pod: &mut Value, field: &str, key: &str, value: impl Into<Value>) {
    meta(pod)[field][key] = value.into();
}

/// The name and labels the StatefulSet controller gives its pod `index` (kubernetes
/// pkg/controller/statefulset/stateful_set_utils.go newStatefulSetPod).
fn statefulset_pod(pod: &mut Value, pod_name: &str, index: usize) {
    meta(pod).insert("name".into(), json!(pod_name));
    set(
        pod,
        "labels",
        "statefulset.kubernetes.io/pod-name",
        pod_name,
    );
    set(
        pod,
        "labels",
        "apps.kubernetes.io/pod-index",
        index.to_string(),
    );
}

/// The leader pod of group `group` as it reaches the webhooks after LWS's: Ordinal identity
/// `<lws>-<group>`; Hash identity with no name yet (`generateName`: the API server names a
/// pod after admission) and a group key drawn from `group`.
pub fn leader_pod(lws: &Value, group: usize) -> Value {
    let (name, ns) = (lws_name(lws), namespace(lws));
    let lwt = &spec(lws)["leaderWorkerTemplate"];
    // leaderworkerset_controller.go constructLeaderStatefulSetApplyConfiguration: the
    // leaderTemplate, else the workerTemplate; its labels and annotations.
    let mut pod = match &lwt["leaderTemplate"] {
        Value::Null => lwt["workerTemplate"].clone(),
        t => t.clone(),
    };
    set(&mut pod, "labels", WORKER_INDEX, "0");
    set(&mut pod, "labels", NAME, name);
    set(&mut pod, "labels", REVISION, REVISION_HASH);
    set(&mut pod, "annotations", SIZE, size(lws).to_string());
    if unique_per_replica(lws) {
        set(
            &mut pod,
            "annotations",
            SUBDOMAIN_POLICY,
            "UniquePerReplica",
        );
    }
    let (host, subdomain, key) = if hash_identity(lws) {
        // PR #987: a Deployment named after the LWS whose template carries the identity
        // annotation and the Shared Service as subdomain; its ReplicaSet creates the pod
        // with generateName `<rs>-` (kubernetes pkg/controller/controller_utils.go).
        set(&mut pod, "annotations", GROUP_IDENTITY, "Hash");
        set(&mut pod, "labels", "pod-template-hash", "7c9d8f5b6");
        meta(&mut pod).insert("generateName".into(), json!(format!("{name}-7c9d8f5b6-")));
        // pod_webhook.go Default: a random key in group-index and group-key, the host name
        // `<lws>-<key[..8]>` (hashLeaderHostname); UniquePerReplica: subdomain = host name.
        let key = group_key(&format!("{ns}/{name}/{group}"));
        let host = format!("{name}-{}", &key[..8]);
        let subdomain = if unique_per_replica(lws) {
            host.clone()
        } else {
            name.to_string()
        };
        (host, subdomain, key)
    } else {
        // kubernetes pkg/controller/statefulset/stateful_set_utils.go newStatefulSetPod:
        // `<set>-<ordinal>`, host name = pod name, subdomain = the set's serviceName (the
        // LWS's name); pod_webhook.go then: group-index, group-key, UniquePerReplica.
        let pod_name = format!("{name}-{group}");
        statefulset_pod(&mut pod, &pod_name, group);
        set(
            &mut pod,
            "labels",
            "controller-revision-hash",
            format!("{name}-{REVISION_HASH}"),
        );
        let subdomain = if unique_per_replica(lws) {
            pod_name.clone()
        } else {
            name.to_string()
        };
        let key = group_key(&format!("{ns}/{pod_name}"));
        (pod_name, subdomain, key)
    };
    let index = if hash_identity(lws) {
        key.clone()
    } else {
        group.to_string()
    };
    set(&mut pod, "labels", GROUP_INDEX, index);
    set(&mut pod, "labels", GROUP_KEY, key);
    meta(&mut pod).insert("namespace".into(), json!(ns));
    let pod_spec = pod["spec"].as_object_mut().expect("a template has a spec");
    pod_spec.insert("hostname".into(), json!(host));
    pod_spec.insert("subdomain".into(), json!(subdomain));
    add_lws_env(
        &mut pod,
        &format!("{host}.{subdomain}.{ns}"),
        size(lws),
        "0",
    );
    pod
}

/// What the API server names a pod created with `generateName` (after admission): the
/// prefix and `suffix` (five random characters in a cluster).
pub fn with_generated_name(mut pod: Value, suffix: &str) -> Value {
    let prefix = pod["metadata"]["generateName"]
        .as_str()
        .expect("a pod with generateName")
        .to_string();
    meta(&mut pod).insert("name".into(), json!(format!("{prefix}{suffix}")));
    pod
}

/// Worker `index` (1 … size−1) of the group whose leader pod (named: see
/// [`with_generated_name`]) is `leader`, as it reaches the webhooks after LWS's.
pub fn worker_pod(lws: &Value, leader: &Value, index: usize) -> Value {
    let (name, ns) = (lws_name(lws), namespace(lws));
    let leader_name = leader["metadata"]["name"]
        .as_str()
        .expect("the leader pod has its name by the time its workers are made");
    let leader_labels = &leader["metadata"]["labels"];
    let (host, subdomain) = (
        leader["spec"]["hostname"].as_str().unwrap_or(leader_name),
        leader["spec"]["subdomain"].as_str().unwrap_or(name),
    );
    // pod_controller.go constructWorkerStatefulSetApplyConfiguration: the workerTemplate,
    // the group's labels, size and leader annotations; a StatefulSet named after the leader
    // pod, serviceName the leader's subdomain, ordinals from 1.
    let mut pod = spec(lws)["leaderWorkerTemplate"]["workerTemplate"].clone();
    for key in [GROUP_INDEX, GROUP_KEY] {
        set(&mut pod, "labels", key, leader_labels[key].clone());
    }
    set(&mut pod, "labels", NAME, name);
    set(&mut pod, "labels", REVISION, REVISION_HASH);
    set(&mut pod, "annotations", SIZE, size(lws).to_string());
    set(&mut pod, "annotations", LEADER_NAME, leader_name);
    let leader_address = format!("{host}.{subdomain}.{ns}");
    set(
        &mut pod,
        "annotations",
        LEADER_ADDRESS,
        leader_address.clone(),
    );
    if hash_identity(lws) {
        set(&mut pod, "annotations", GROUP_IDENTITY, "Hash");
    }
    // stateful_set_utils.go newStatefulSetPod, then pod_webhook.go: the worker-index label.
    let pod_name = format!("{leader_name}-{index}");
    statefulset_pod(&mut pod, &pod_name, index);
    meta(&mut pod).insert("namespace".into(), json!(ns));
    set(&mut pod, "labels", WORKER_INDEX, index.to_string());
    let pod_spec = pod["spec"].as_object_mut().expect("a template has a spec");
    pod_spec.insert("hostname".into(), json!(pod_name));
    pod_spec.insert("subdomain".into(), json!(subdomain));
    add_lws_env(&mut pod, &leader_address, size(lws), &index.to_string());
    pod
}

/// lws pkg/utils/pod/pod_utils.go AddLWSVariables: `LWS_LEADER_ADDRESS`, `LWS_GROUP_SIZE`
/// and `LWS_WORKER_INDEX` in front of the env of every container, init containers included
/// (an agent a template already carries gets them too), unless already there.
fn add_lws_env(pod: &mut Value, leader_address: &str, size: u64, worker_index: &str) {
    let vars = [
        ("LWS_LEADER_ADDRESS", leader_address.to_string()),
        ("LWS_GROUP_SIZE", size.to_string()),
        ("LWS_WORKER_INDEX", worker_index.to_string()),
    ];
    for list in ["containers", "initContainers"] {
        let containers = pod["spec"].get_mut(list).and_then(Value::as_array_mut);
        for c in containers.into_iter().flatten() {
            let old: Vec<Value> = c["env"].as_array().cloned().unwrap_or_default();
            let mut env: Vec<Value> = vars
                .iter()
                .map(|(n, v)| json!({"name": n, "value": v}))
                .collect();
            env.extend(
                old.into_iter()
                    .filter(|e| !vars.iter().any(|(n, _)| e["name"] == *n)),
            );
            c["env"] = Value::Array(env);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lws(extra: Value) -> Value {
        let mut lws = json!({"metadata": {"name": "vllm", "namespace": "ml"}, "spec": {
            "leaderWorkerTemplate": {"size": 3,
                "workerTemplate": {"spec": {"containers": [{"name": "ray", "image": "r:1"}]}}}}});
        for (k, v) in extra.as_object().expect("object") {
            lws["spec"][k] = v.clone();
        }
        lws
    }

    #[test]
    fn ordinal_groups_are_named_and_addressed_as_lws_does() {
        let l = lws(json!({}));
        let leader = leader_pod(&l, 2);
        assert_eq!(leader["metadata"]["name"], "vllm-2");
        assert_eq!(leader["metadata"]["labels"][WORKER_INDEX], "0");
        assert_eq!(leader["spec"]["subdomain"], "vllm");
        assert_eq!(
            leader["spec"]["containers"][0]["env"][0],
            json!({"name": "LWS_LEADER_ADDRESS", "value": "vllm-2.vllm.ml"})
        );
        let worker = worker_pod(&l, &leader, 1);
        assert_eq!(worker["metadata"]["name"], "vllm-2-1");
        assert_eq!(worker["metadata"]["labels"][WORKER_INDEX], "1");
        assert_eq!(worker["spec"]["subdomain"], "vllm");
    }

    #[test]
    fn hash_groups_have_a_key_derived_host_and_workers_named_after_the_leader_pod() {
        let l = lws(json!({"groupIdentity": "Hash",
            "networkConfig": {"subdomainPolicy": "UniquePerReplica"}}));
        let leader = leader_pod(&l, 0);
        assert!(leader["metadata"].get("name").is_none());
        let key = leader["metadata"]["labels"][GROUP_KEY]
            .as_str()
            .expect("key");
        assert_eq!(key.len(), 40);
        let host = format!("vllm-{}", &key[..8]);
        assert_eq!(leader["spec"]["hostname"], host.as_str());
        assert_eq!(leader["spec"]["subdomain"], host.as_str());
        let leader = with_generated_name(leader, "x2kkp");
        let worker = worker_pod(&l, &leader, 2);
        assert_eq!(worker["metadata"]["name"], "vllm-7c9d8f5b6-x2kkp-2");
        assert_eq!(worker["spec"]["subdomain"], host.as_str());
    }
}

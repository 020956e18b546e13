//! LeaderWorkerSet (kubernetes-sigs/lws) as its controller and pod webhook build its pods:
//! the labels, annotations and pod fields a group's wiring is read from, in a template
//! (`inject` on a LeaderWorkerSet) and in a pod alone (the admission webhook, SPEC §11).
//!
//! How LWS names and addresses a group's pods, which the leader's member list follows (cited
//! from kubernetes-sigs/lws):
//! - The leader: a pod of a StatefulSet named after the LWS (`groupIdentity: Ordinal`, the
//!   default: `<lws>-<g>`, pkg/controllers/leaderworkerset_controller.go,
//!   constructLeaderStatefulSetApplyConfiguration), or of a Deployment named after it
//!   (`groupIdentity: Hash`, PR #987: a generated name, a random 40-hex group key drawn by
//!   the pod webhook and the host name `<lws>-<first 8 of the key>`, pkg/webhooks/
//!   pod_webhook.go, hashLeaderHostname). Its template carries the `worker-index: "0"` and
//!   `name` labels and the `size` annotation (plus `subdomainPolicy`, `group-identity`).
//! - The members, in both modes: a StatefulSet named after the leader POD (its
//!   `metadata.name`), ordinals from 1, `serviceName` the leader's `spec.subdomain`
//!   (pkg/controllers/pod_controller.go, constructWorkerStatefulSetApplyConfiguration). So
//!   member i is `<leader pod name>-i.<leader subdomain>`, and the leader's agent derives
//!   exactly those N−1 names from its own pod (the downward API), never from the network.
//! - The subdomain: the LWS's headless Service (policy `Shared`, the default, named after the
//!   LWS: the `name` label), or one Service per group (`UniquePerReplica`) named after the
//!   leader pod (Ordinal) or after its host name (Hash; pod_webhook.go sets
//!   `spec.subdomain = spec.hostname`). The downward API cannot read `spec.subdomain` nor
//!   cut the group key, so in that one case only a pod can say it: the webhook writes the
//!   value LWS's webhook put there (it runs first, and a pod's subdomain never changes).

use super::group::{GroupRole, GroupWiring, SubdomainSource};
use super::yaml::{Map, Node};
use super::Problem;

/// The API group of LeaderWorkerSet (SPEC §9).
pub(super) const API_GROUP: &str = "leaderworkerset.x-k8s.io";

/// The group's pod count, leader included (api/leaderworkerset/v1/leaderworkerset_types.go,
/// `SizeAnnotationKey`).
pub(super) const SIZE_ANNOTATION: &str = "leaderworkerset.sigs.k8s.io/size";
/// The LWS's name (`SetNameLabelKey`), also the `Shared` headless Service's name; its
/// presence is how LWS's own webhook tells its pods from others.
pub(super) const NAME_LABEL: &str = "leaderworkerset.sigs.k8s.io/name";
/// `"0"` on the leader, `i` on member i (`WorkerIndexLabelKey`; pod_utils.go, LeaderPod).
const WORKER_INDEX_LABEL: &str = "leaderworkerset.sigs.k8s.io/worker-index";
/// `UniquePerReplica` on pods of an LWS with one Service per group
/// (`SubdomainPolicyAnnotationKey`).
const SUBDOMAIN_POLICY_ANNOTATION: &str = "leaderworkerset.sigs.k8s.io/subdomainPolicy";
/// `Hash` on the pods of an LWS with hash group identity (`GroupIdentityAnnotationKey`, PR #987).
const GROUP_IDENTITY_ANNOTATION: &str = "leaderworkerset.sigs.k8s.io/group-identity";

/// What a LeaderWorkerSet's spec says about its pods' group wiring.
#[derive(Debug, Clone)]
pub(super) struct LwsFacts {
    /// Where the leader reads the members' subdomain; `None` when a template cannot say
    /// (Hash identity with `UniquePerReplica`: only the admitted pod knows).
    pub(super) subdomain: Option<SubdomainSource>,
}

/// The group wiring a LeaderWorkerSet's spec asks for, with warnings about settings that
/// defeat it. An LWS without a `leaderTemplate` runs its `workerTemplate` for the leader too:
/// it is copied there, so the leader's agent can get its own role.
pub(super) fn facts_of_spec(doc: &mut Map, notes: &mut Vec<String>, workload: &str) -> LwsFacts {
    let mut facts = LwsFacts {
        subdomain: Some(SubdomainSource::SetName),
    };
    let Some(spec) = doc.get_mut("spec").and_then(Node::as_map_mut) else {
        return facts;
    };
    // pkg/controllers/leaderworkerset_controller.go (reconcileHeadlessServices) and
    // pkg/webhooks/pod_webhook.go: see the module doc.
    let unique = spec
        .get("networkConfig")
        .and_then(Node::as_map)
        .and_then(|n| n.get_str("subdomainPolicy"))
        == Some("UniquePerReplica");
    let hash = spec.get_str("groupIdentity") == Some("Hash");
    facts.subdomain = match (unique, hash) {
        (false, _) => Some(SubdomainSource::SetName),
        (true, false) => Some(SubdomainSource::LeaderPodName),
        (true, true) => None,
    };
    if spec.get_str("startupPolicy") == Some("LeaderReady") {
        notes.push(format!(
            "{workload}: warning: startupPolicy LeaderReady creates the workers only once the leader is Ready, and a Vitals leader is Ready only once its group formed: the group never starts; use LeaderCreated (docs/groups.md, \"LeaderWorkerSet\")"
        ));
    }
    if let Some(lwt) = spec
        .get_mut("leaderWorkerTemplate")
        .and_then(Node::as_map_mut)
    {
        if let Some(policy) = lwt
            .get_str("restartPolicy")
            .filter(|p| *p == "None" || *p == "Default")
        {
            notes.push(format!(
                "{workload}: warning: restartPolicy {policy} restarts only the failed pod, which the engine cannot take back into its group; use RecreateGroupOnPodRestart"
            ));
        }
        if lwt.get("leaderTemplate").is_none() {
            if let Some(worker) = lwt.get("workerTemplate").cloned() {
                let at = lwt.position("workerTemplate").unwrap_or(lwt.0.len());
                lwt.insert_at(at, "leaderTemplate", worker);
            }
        }
    }
    facts
}

/// The group of one pod as LWS's pod webhook (which runs before ours: SPEC §11) left it:
/// `None` outside a LeaderWorkerSet (no `name` label); the leader when `worker-index` is
/// `"0"` (pod_utils.go, LeaderPod), a member otherwise.
pub(super) fn group_of_pod(pod: &Map) -> Result<Option<GroupWiring>, Problem> {
    let meta = pod.get("metadata").and_then(Node::as_map);
    let of = |field: &str, key: &str| {
        meta.and_then(|m| m.get(field))
            .and_then(Node::as_map)
            .and_then(|m| m.get_str(key))
    };
    if of("labels", NAME_LABEL).is_none() {
        return Ok(None);
    }
    let role = if of("labels", WORKER_INDEX_LABEL) == Some("0") {
        GroupRole::Leader
    } else {
        GroupRole::Member
    };
    let unique = of("annotations", SUBDOMAIN_POLICY_ANNOTATION) == Some("UniquePerReplica");
    let hash = of("annotations", GROUP_IDENTITY_ANNOTATION) == Some("Hash");
    let subdomain = match (unique, hash) {
        (false, _) => SubdomainSource::SetName,
        (true, false) => SubdomainSource::LeaderPodName,
        (true, true) if role == GroupRole::Member => SubdomainSource::SetName,
        (true, true) => {
            let admitted = pod
                .get("spec")
                .and_then(Node::as_map)
                .and_then(|s| s.get_str("subdomain"))
                .filter(|s| !s.is_empty())
                .ok_or(Problem::Shape {
                    path: "spec.subdomain".into(),
                    expected: "string (LeaderWorkerSet's pod webhook sets it on a leader)",
                })?;
            SubdomainSource::Admitted(admitted.to_string())
        }
    };
    Ok(Some(GroupWiring { role, subdomain }))
}

#[cfg(test)]
mod tests {
    use super::super::yaml;
    use super::*;
    use serde_json::json;

    /// The group of a pod given as JSON (a YAML flow mapping).
    fn group(pod: serde_json::Value) -> Result<Option<GroupWiring>, Problem> {
        match yaml::parse_document(&pod.to_string()) {
            Ok(Some(Node::Map(m))) => group_of_pod(&m),
            other => panic!("{pod} does not parse as a mapping: {other:?}"),
        }
    }

    #[test]
    fn the_role_and_subdomain_come_from_what_lws_wrote_on_the_pod() {
        let labels = |index: &str| json!({NAME_LABEL: "vllm", WORKER_INDEX_LABEL: index});
        let leader = |annotations: serde_json::Value| {
            json!({"metadata": {"labels": labels("0"), "annotations": annotations},
                "spec": {"subdomain": "vllm-1a2b3c4d", "containers": []}})
        };
        for (pod, role, subdomain) in [
            (
                leader(json!({})),
                GroupRole::Leader,
                SubdomainSource::SetName,
            ),
            (
                leader(json!({SUBDOMAIN_POLICY_ANNOTATION: "UniquePerReplica"})),
                GroupRole::Leader,
                SubdomainSource::LeaderPodName,
            ),
            (
                leader(json!({SUBDOMAIN_POLICY_ANNOTATION: "UniquePerReplica",
                    GROUP_IDENTITY_ANNOTATION: "Hash"})),
                GroupRole::Leader,
                SubdomainSource::Admitted("vllm-1a2b3c4d".into()),
            ),
            (
                json!({"metadata": {"labels": labels("3")}}),
                GroupRole::Member,
                SubdomainSource::SetName,
            ),
        ] {
            let g = group(pod.clone()).expect("derivable").expect("a group");
            assert_eq!((g.role, g.subdomain), (role, subdomain), "{pod}");
        }
        assert!(group(json!({"metadata": {"labels": {"app": "x"}}}))
            .expect("fine")
            .is_none());
        let no_subdomain = json!({"metadata": {"labels": labels("0"), "annotations":
            {SUBDOMAIN_POLICY_ANNOTATION: "UniquePerReplica", GROUP_IDENTITY_ANNOTATION: "Hash"}}});
        assert!(group(no_subdomain).is_err());
    }
}

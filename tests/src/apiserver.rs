//! What the API server does to a Pod between the last mutating webhook and storage: its
//! defaulting, as kubernetes/kubernetes pkg/apis/core/v1/defaults.go (SetDefaults_Pod,
//! SetDefaults_PodSpec, SetDefaults_Container, SetDefaults_Probe, SetDefaults_HTTPGetAction,
//! SetDefaults_ObjectFieldSelector, the volume sources) and the generated
//! pkg/apis/core/v1/zz_generated.defaults.go (which applies them to every container, init
//! container, probe, port and env entry, and defaults a port's `protocol` and a gRPC
//! probe's `service`) write it. A webhook reinvoked with `reinvocationPolicy: IfNeeded`, and
//! every later reader, sees the pod so defaulted (SPEC §11).
//!
//! Left out, as no wiring depends on them: quantity canonicalisation (`1000m` → `1`),
//! pod-level resources, ephemeral containers, lifecycle hooks, image volumes.

use serde_json::{json, Map, Value};

/// Applies the API server's defaulting to `pod` (a Pod as JSON), in place.
pub fn default_pod(pod: &mut Value) {
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    // SetDefaults_PodSpec.
    for (key, value) in [
        ("dnsPolicy", json!("ClusterFirst")),
        ("restartPolicy", json!("Always")),
        ("securityContext", json!({})),
        ("terminationGracePeriodSeconds", json!(30)),
        ("schedulerName", json!("default-scheduler")),
        // SetDefaults_Pod.
        ("enableServiceLinks", json!(true)),
    ] {
        spec.entry(key).or_insert(value);
    }
    let host_network = spec.get("hostNetwork") == Some(&json!(true));
    for list in ["initContainers", "containers"] {
        for c in containers(spec, list) {
            default_container(c, host_network);
        }
    }
    for volume in spec
        .get_mut("volumes")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
        .filter_map(Value::as_object_mut)
    {
        default_volume(volume);
    }
}

fn containers<'a>(
    spec: &'a mut Map<String, Value>,
    list: &str,
) -> impl Iterator<Item = &'a mut Map<String, Value>> {
    spec.get_mut(list)
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
        .filter_map(Value::as_object_mut)
}

fn default_container(c: &mut Map<String, Value>, host_network: bool) {
    // SetDefaults_Container.
    if !c.contains_key("imagePullPolicy") {
        let image = c.get("image").and_then(Value::as_str).unwrap_or("");
        let policy = if image_tag(image) == "latest" {
            "Always"
        } else {
            "IfNotPresent"
        };
        c.insert("imagePullPolicy".into(), json!(policy));
    }
    c.entry("terminationMessagePath")
        .or_insert(json!("/dev/termination-log"));
    c.entry("terminationMessagePolicy").or_insert(json!("File"));
    // SetDefaults_Pod: requests default to limits, resource by resource.
    if let Some(resources) = c.get_mut("resources").and_then(Value::as_object_mut) {
        if let Some(limits) = resources.get("limits").and_then(Value::as_object).cloned() {
            let requests = resources.entry("requests").or_insert(json!({}));
            if let Some(requests) = requests.as_object_mut() {
                for (name, quantity) in limits {
                    requests.entry(name).or_insert(quantity);
                }
            }
        }
    }
    // zz_generated.defaults.go: a port's protocol; SetDefaults_Pod: with hostNetwork, the
    // host port is the container port.
    for port in c
        .get_mut("ports")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
        .filter_map(Value::as_object_mut)
    {
        port.entry("protocol").or_insert(json!("TCP"));
        if host_network && !port.contains_key("hostPort") {
            if let Some(p) = port.get("containerPort").cloned() {
                port.insert("hostPort".into(), p);
            }
        }
    }
    for env in c
        .get_mut("env")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        default_field_ref(env.pointer_mut("/valueFrom/fieldRef"));
    }
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(p) = c.get_mut(probe).and_then(Value::as_object_mut) {
            default_probe(p);
        }
    }
}

/// SetDefaults_ObjectFieldSelector.
fn default_field_ref(field_ref: Option<&mut Value>) {
    if let Some(f) = field_ref.and_then(Value::as_object_mut) {
        f.entry("apiVersion").or_insert(json!("v1"));
    }
}

/// SetDefaults_Probe, SetDefaults_HTTPGetAction, and a gRPC probe's service.
fn default_probe(p: &mut Map<String, Value>) {
    for (key, value) in [
        ("timeoutSeconds", 1),
        ("periodSeconds", 10),
        ("successThreshold", 1),
        ("failureThreshold", 3),
    ] {
        p.entry(key).or_insert(json!(value));
    }
    if let Some(h) = p.get_mut("httpGet").and_then(Value::as_object_mut) {
        h.entry("path").or_insert(json!("/"));
        h.entry("scheme").or_insert(json!("HTTP"));
    }
    if let Some(g) = p.get_mut("grpc").and_then(Value::as_object_mut) {
        g.entry("service").or_insert(json!(""));
    }
}

/// SetDefaults_Volume and the volume sources' defaults (file modes 0644, a token's hour).
fn default_volume(v: &mut Map<String, Value>) {
    const SOURCES: [&str; 6] = [
        "emptyDir",
        "secret",
        "configMap",
        "projected",
        "downwardAPI",
        "hostPath",
    ];
    let has_source = v.keys().any(|k| k != "name");
    if !has_source {
        v.insert("emptyDir".into(), json!({}));
    }
    for source in SOURCES {
        let Some(s) = v.get_mut(source).and_then(Value::as_object_mut) else {
            continue;
        };
        match source {
            "secret" | "configMap" | "projected" | "downwardAPI" => {
                s.entry("defaultMode").or_insert(json!(420));
            }
            "hostPath" => {
                s.entry("type").or_insert(json!(""));
            }
            _ => {}
        }
        for item in s
            .get_mut("items")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            default_field_ref(item.get_mut("fieldRef"));
        }
        for projection in s
            .get_mut("sources")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            if let Some(t) = projection
                .get_mut("serviceAccountToken")
                .and_then(Value::as_object_mut)
            {
                t.entry("expirationSeconds").or_insert(json!(3600));
            }
        }
    }
}

/// An image reference's tag as kubernetes pkg/util/parsers ParseImageName reads it:
/// `latest` for a bare name, empty for a digest without a tag.
fn image_tag(image: &str) -> &str {
    let (name, digest) = match image.split_once('@') {
        Some((name, _)) => (name, true),
        None => (image, false),
    };
    let last = name.rsplit('/').next().unwrap_or(name);
    match last.split_once(':') {
        Some((_, tag)) => tag,
        None if digest => "",
        None => "latest",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pod_is_defaulted_as_the_api_server_stores_it() {
        let mut pod = json!({"spec": {"hostNetwork": true, "containers": [{
            "name": "vllm", "image": "vllm/vllm-openai",
            "ports": [{"containerPort": 8000}],
            "env": [{"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
            "resources": {"limits": {"cpu": "2", "memory": "1Gi"}, "requests": {"cpu": "1"}},
            "readinessProbe": {"httpGet": {"port": 8000}}
        }], "volumes": [{"name": "s", "secret": {"secretName": "x"}}, {"name": "e"}]}});
        default_pod(&mut pod);
        let c = &pod["spec"]["containers"][0];
        assert_eq!(c["imagePullPolicy"], "Always");
        assert_eq!(c["terminationMessagePolicy"], "File");
        assert_eq!(
            c["ports"][0],
            json!({"containerPort": 8000, "protocol": "TCP", "hostPort": 8000})
        );
        assert_eq!(c["env"][0]["valueFrom"]["fieldRef"]["apiVersion"], "v1");
        assert_eq!(
            c["resources"]["requests"],
            json!({"cpu": "1", "memory": "1Gi"})
        );
        assert_eq!(
            c["readinessProbe"],
            json!({"httpGet": {"port": 8000, "path": "/", "scheme": "HTTP"}, "timeoutSeconds": 1,
                "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3})
        );
        assert_eq!(pod["spec"]["volumes"][0]["secret"]["defaultMode"], 420);
        assert_eq!(pod["spec"]["volumes"][1]["emptyDir"], json!({}));
        assert_eq!(pod["spec"]["dnsPolicy"], "ClusterFirst");
        for (image, tag) in [
            ("a", "latest"),
            ("reg:5000/a", "latest"),
            ("a:1.2", "1.2"),
            ("a@sha256:00", ""),
            ("a:1@sha256:00", "1"),
        ] {
            assert_eq!(image_tag(image), tag, "{image}");
        }
    }
}

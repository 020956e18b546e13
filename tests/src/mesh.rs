//! Pods as the service meshes' injectors leave them (SPEC §11 "Meshes"), for the inject and
//! webhook tests: a user's vLLM pod, then what Istio's and Linkerd's admission webhooks do to
//! it before Vitals' webhook runs (they sort first by name). Each step is read from the mesh's
//! source, cited where it is done; only what Vitals reads or must leave alone is built (the
//! proxies' identity volumes, resources and most env are left out).

use serde_json::{json, Map, Value};

/// pilot-agent's status port (istio values.yaml `global.proxy.statusPort`), where Istio points
/// the app's rewritten probes.
pub const ISTIO_STATUS_PORT: u16 = 15020;

/// A vLLM server as its user writes the pod: container `vllm` on port 8000 (named `http`),
/// startup, liveness and readiness `GET /health`, the liveness by the port's name.
pub fn vllm_pod() -> Value {
    let health = |port: Value, period: u32, timeout: u32, failures: u32| {
        json!({
            "httpGet": {"path": "/health", "port": port, "scheme": "HTTP"},
            "periodSeconds": period, "timeoutSeconds": timeout,
            "successThreshold": 1, "failureThreshold": failures,
        })
    };
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "llama-0", "namespace": "inference", "labels": {"app": "llama"}},
        "spec": {
            "containers": [{
                "name": "vllm",
                "image": "vllm/vllm-openai:v0.8.5",
                "command": ["python3", "-m", "vllm.entrypoints.openai.api_server"],
                "args": ["--model", "meta-llama/Llama-3.1-8B-Instruct", "--port", "8000"],
                "ports": [{"name": "http", "containerPort": 8000, "protocol": "TCP"}],
                "startupProbe": health(json!(8000), 10, 1, 60),
                "livenessProbe": health(json!("http"), 10, 5, 6),
                "readinessProbe": health(json!(8000), 5, 2, 3),
            }]
        }
    })
}

/// How Istio's sidecar injector is installed.
#[derive(Debug, Clone, Copy, Default)]
pub struct Istio {
    /// istio-proxy as a native sidecar (an init container with `restartPolicy: Always`,
    /// `sidecar.istio.io/nativeSidecar` / `ENABLE_NATIVE_SIDECARS`), else an ordinary one.
    pub native_sidecar: bool,
    /// The istio-cni node agent sets up the pod's traffic capture: `istio-validation`
    /// instead of `istio-init`, and the capture settings as annotations.
    pub cni: bool,
}

impl Istio {
    /// `pod` after Istio's injector (istio/istio `pkg/kube/inject/webhook.go` applyRewrite and
    /// reorderPod, `app_probe.go`, `injection-template.yaml`). The pod's own
    /// `traffic.sidecar.istio.io/exclude{In,Out}boundPorts` annotations are honoured as the
    /// template does.
    pub fn inject(self, mut pod: Value) -> Value {
        let annotation = |pod: &Value, key: &str| {
            pod["metadata"]["annotations"][key]
                .as_str()
                .map(str::to_string)
        };
        let exclude_in = annotation(&pod, "traffic.sidecar.istio.io/excludeInboundPorts");
        let exclude_out = annotation(&pod, "traffic.sidecar.istio.io/excludeOutboundPorts");
        // template.go excludeInboundPort: the status port joins the user's list.
        let inbound = match exclude_in.as_deref() {
            Some(list) if !list.is_empty() => format!("{list},{ISTIO_STATUS_PORT}"),
            _ => ISTIO_STATUS_PORT.to_string(),
        };
        let probers = rewrite_app_probes(&mut pod);

        let mut args: Vec<Value> = [
            "istio-iptables",
            "-p",
            "15001",
            "-z",
            "15006",
            "-u",
            "1337",
            "-m",
            "REDIRECT",
            "-i",
            "*",
            "-x",
            "",
            "-b",
            "*",
            "-d",
        ]
        .map(Value::from)
        .to_vec();
        args.push(json!(format!("15090,15021,{inbound}")));
        if let Some(out) = &exclude_out {
            args.extend([json!("-o"), json!(out)]);
        }
        args.push(json!("--log_output_level=default:info"));
        if self.cni {
            args.extend([json!("--run-validation"), json!("--skip-rule-apply")]);
        }
        let init = json!({
            "name": if self.cni { "istio-validation" } else { "istio-init" },
            "image": "docker.io/istio/proxyv2:1.27.0",
            "args": args,
            "securityContext": if self.cni {
                json!({"runAsUser": 1337, "runAsGroup": 1337, "runAsNonRoot": true,
                       "capabilities": {"drop": ["ALL"]}})
            } else {
                json!({"runAsUser": 0, "runAsNonRoot": false,
                       "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]}})
            },
        });

        let mut env = vec![
            json!({"name": "ISTIO_META_APP_CONTAINERS", "value": app_containers(&pod).join(",")}),
        ];
        if let Some(probers) = probers {
            env.push(json!({"name": "ISTIO_KUBE_APP_PROBERS", "value": probers}));
        }
        let mut proxy = json!({
            "name": "istio-proxy",
            "image": "docker.io/istio/proxyv2:1.27.0",
            "args": ["proxy", "sidecar", "--domain", "$(POD_NAMESPACE).svc.cluster.local"],
            "ports": [{"containerPort": 15090, "protocol": "TCP", "name": "http-envoy-prom"}],
            "env": env,
            "readinessProbe": {
                "httpGet": {"path": "/healthz/ready", "port": 15021},
                "initialDelaySeconds": 0, "periodSeconds": 15, "timeoutSeconds": 3,
                "failureThreshold": 4,
            },
            "securityContext": {"runAsUser": 1337, "runAsGroup": 1337, "runAsNonRoot": true},
        });
        if self.native_sidecar {
            proxy["restartPolicy"] = json!("Always");
            proxy["startupProbe"] = json!({
                "httpGet": {"path": "/healthz/ready", "port": 15021},
                "initialDelaySeconds": 0, "periodSeconds": 1, "timeoutSeconds": 3,
                "failureThreshold": 600,
            });
        }

        let spec = &mut pod["spec"];
        let mut inits = spec["initContainers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if self.native_sidecar {
            // reorderPod: {istio-init | istio-validation} => istio-proxy => the rest.
            inits.splice(0..0, [init, proxy]);
        } else {
            // istio-validation first, istio-init last; the proxy last of the containers.
            if self.cni {
                inits.insert(0, init);
            } else {
                inits.push(init);
            }
            push(&mut spec["containers"], proxy);
        }
        spec["initContainers"] = Value::Array(inits);

        let annotations = object(&mut pod["metadata"], "annotations");
        let status = json!({
            "initContainers": [if self.cni { "istio-validation" } else { "istio-init" }],
            "containers": if self.native_sidecar { json!([]) } else { json!(["istio-proxy"]) },
            "volumes": ["istio-envoy", "istio-data", "istio-podinfo", "istio-token"],
            "revision": "default",
        });
        annotations.insert("sidecar.istio.io/status".into(), json!(status.to_string()));
        annotations.insert("istio.io/rev".into(), json!("default"));
        if self.cni {
            annotations.insert(
                "sidecar.istio.io/interceptionMode".into(),
                json!("REDIRECT"),
            );
            annotations.insert(
                "traffic.sidecar.istio.io/includeInboundPorts".into(),
                json!("*"),
            );
            annotations.insert(
                "traffic.sidecar.istio.io/excludeInboundPorts".into(),
                json!(inbound),
            );
        }
        let labels = object(&mut pod["metadata"], "labels");
        labels.insert("security.istio.io/tlsMode".into(), json!("istio"));
        pod
    }
}

/// The pod's containers but istio-proxy, in order (the template's `$containers`).
fn app_containers(pod: &Value) -> Vec<String> {
    pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str())
        .filter(|n| *n != "istio-proxy")
        .map(str::to_string)
        .collect()
}

/// app_probe.go DumpAppProbers + patchRewriteProbe: every httpGet/tcpSocket/grpc probe of
/// every container (init containers first) becomes `GET /app-health/<c>/<kind>` on the
/// status port, keeping its timing (an https one becomes plain HTTP: pilot-agent calls the
/// app over TLS); the original handler (named port resolved) and `timeoutSeconds` go into
/// the JSON returned, keyed by that URL. `None` when no probe was rewritten.
fn rewrite_app_probes(pod: &mut Value) -> Option<String> {
    let mut probers = Map::new();
    for list in ["initContainers", "containers"] {
        let Some(containers) = pod["spec"][list].as_array_mut() else {
            continue;
        };
        for c in containers {
            let name = c["name"].as_str().unwrap_or_default().to_string();
            let ports: Map<String, Value> = c["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| Some((p["name"].as_str()?.to_string(), p["containerPort"].clone())))
                .collect();
            for (key, kind) in [
                ("readinessProbe", "readyz"),
                ("livenessProbe", "livez"),
                ("startupProbe", "startupz"),
            ] {
                let Some(probe) = c.get_mut(key).and_then(Value::as_object_mut) else {
                    continue;
                };
                let Some(handler) = ["httpGet", "tcpSocket", "grpc"]
                    .into_iter()
                    .find(|h| probe.contains_key(*h))
                else {
                    continue;
                };
                let url = format!("/app-health/{name}/{kind}");
                let mut original = probe[handler].clone();
                let port = match original["port"].as_str() {
                    // A name the container does not declare: Istio records no original.
                    Some(named) => ports.get(named).cloned(),
                    None => Some(original["port"].clone()),
                };
                if let Some(port) = port {
                    original["port"] = port;
                    let mut prober = Map::new();
                    prober.insert(handler.into(), original);
                    if let Some(t) = probe
                        .get("timeoutSeconds")
                        .filter(|t| t.as_u64() != Some(0))
                    {
                        prober.insert("timeoutSeconds".into(), t.clone());
                    }
                    probers.insert(url.clone(), Value::Object(prober));
                }
                let mut rewritten = json!({"path": url, "port": ISTIO_STATUS_PORT});
                if handler == "httpGet" {
                    rewritten = probe["httpGet"].clone();
                    rewritten["path"] = json!(url);
                    rewritten["port"] = json!(ISTIO_STATUS_PORT);
                    if rewritten["scheme"] == "HTTPS" {
                        rewritten["scheme"] = json!("HTTP");
                    }
                }
                probe.remove(handler);
                probe.insert("httpGet".into(), rewritten);
            }
        }
    }
    (!probers.is_empty()).then(|| Value::Object(probers).to_string())
}

/// How Linkerd's proxy injector is installed.
#[derive(Debug, Clone, Copy, Default)]
pub struct Linkerd {
    /// linkerd-proxy as a native sidecar (`config.alpha.linkerd.io/proxy-enable-native-sidecar`).
    pub native_sidecar: bool,
    /// linkerd-cni sets up the capture: `linkerd-network-validator` instead of `linkerd-init`.
    pub cni: bool,
}

impl Linkerd {
    /// `pod` after Linkerd's proxy injector (linkerd/linkerd2 `charts/patch/templates/patch.json`,
    /// `charts/partials/templates/_proxy-init.tpl`, `_proxy.tpl`, `_network-validator.tpl`,
    /// default values). The pod's `config.linkerd.io/skip-{in,out}bound-ports` annotations
    /// replace the configured lists (`pkg/inject/inject.go`), as there.
    pub fn inject(self, mut pod: Value) -> Value {
        let annotation = |key: &str| {
            pod["metadata"]["annotations"][key]
                .as_str()
                .map(str::to_string)
        };
        // charts/linkerd-control-plane/values.yaml proxyInit.ignore{In,Out}boundPorts.
        let skip_in = annotation("config.linkerd.io/skip-inbound-ports")
            .unwrap_or_else(|| "4567,4568".to_string());
        let skip_out = annotation("config.linkerd.io/skip-outbound-ports")
            .unwrap_or_else(|| "4567,4568".to_string());
        let init = if self.cni {
            json!({
                "name": "linkerd-network-validator",
                "image": "cr.l5d.io/linkerd/proxy:edge-25.8.1",
                "command": ["/usr/lib/linkerd/linkerd2-network-validator"],
                "args": ["--log-format", "plain", "--log-level", "debug",
                         "--connect-addr", "[fd00::1]:4140", "--listen-addr", "[::]:4140",
                         "--timeout", "10s"],
            })
        } else {
            json!({
                "name": "linkerd-init",
                "image": "cr.l5d.io/linkerd/proxy:edge-25.8.1",
                "command": ["/usr/lib/linkerd/linkerd2-proxy-init"],
                "args": ["--firewall-bin-path", "iptables-nft",
                         "--firewall-save-bin-path", "iptables-nft-save",
                         "--incoming-proxy-port", "4143", "--outgoing-proxy-port", "4140",
                         "--proxy-uid", "2102",
                         "--inbound-ports-to-ignore", format!("4190,4191,{skip_in}"),
                         "--outbound-ports-to-ignore", skip_out],
                "securityContext": {"capabilities": {"add": ["NET_ADMIN", "NET_RAW"]},
                                    "runAsUser": 65534, "runAsNonRoot": true},
            })
        };
        let ready = json!({"httpGet": {"path": "/ready", "port": 4191},
                           "initialDelaySeconds": 2, "timeoutSeconds": 1});
        let mut proxy = json!({
            "name": "linkerd-proxy",
            "image": "cr.l5d.io/linkerd/proxy:edge-25.8.1",
            "ports": [{"containerPort": 4143, "name": "linkerd-proxy"},
                      {"containerPort": 4191, "name": "linkerd-admin"}],
            "env": [
                {"name": "LINKERD2_PROXY_CONTROL_LISTEN_ADDR", "value": "[::]:4190"},
                {"name": "LINKERD2_PROXY_ADMIN_LISTEN_ADDR", "value": "[::]:4191"},
                {"name": "LINKERD2_PROXY_INBOUND_LISTEN_ADDR", "value": "[::]:4143"},
            ],
            "livenessProbe": {"httpGet": {"path": "/live", "port": 4191},
                              "initialDelaySeconds": 10, "timeoutSeconds": 1},
            "readinessProbe": ready,
            "securityContext": {"runAsUser": 2102, "runAsNonRoot": true},
        });
        let spec = &mut pod["spec"];
        let mut inits = spec["initContainers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        inits.insert(0, init);
        if self.native_sidecar {
            proxy["restartPolicy"] = json!("Always");
            proxy["startupProbe"] = json!({"httpGet": {"path": "/ready", "port": 4191},
                                           "initialDelaySeconds": 0, "periodSeconds": 1,
                                           "failureThreshold": 120});
            inits.insert(1, proxy);
        } else if let Some(containers) = spec["containers"].as_array_mut() {
            // proxy.await (the default): the proxy first, so the app starts after it.
            containers.insert(0, proxy);
        }
        spec["initContainers"] = Value::Array(inits);
        let annotations = object(&mut pod["metadata"], "annotations");
        annotations.insert("linkerd.io/proxy-version".into(), json!("edge-25.8.1"));
        annotations.insert("linkerd.io/inject".into(), json!("enabled"));
        let labels = object(&mut pod["metadata"], "labels");
        labels.insert("linkerd.io/control-plane-ns".into(), json!("linkerd"));
        pod
    }
}

/// The JSON object under `key`, created when missing.
fn object<'a>(parent: &'a mut Value, key: &str) -> &'a mut Map<String, Value> {
    if !parent[key].is_object() {
        parent[key] = json!({});
    }
    parent[key].as_object_mut().expect("just made an object")
}

/// Appends `item` to the array `list` (created when missing).
fn push(list: &mut Value, item: Value) {
    if !list.is_array() {
        *list = json!([]);
    }
    if let Some(items) = list.as_array_mut() {
        items.push(item);
    }
}

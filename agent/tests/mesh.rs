//! Pods a service mesh injected before Vitals (SPEC §11 "Meshes"), built by the toolkit's
//! mesh builders as Istio's and Linkerd's injectors leave them, sent through `inject` and
//! through the webhook's `review` (one transform, so both must give the same pod): the model
//! server's original probes come back from Istio's `ISTIO_KUBE_APP_PROBERS`, the proxies'
//! own probes stay theirs, the agent's port leaves the mesh's traffic capture, and a second
//! pass changes nothing.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::review::{admit, Admitted};
use common::yaml::yaml_to_json;
use serde_json::{json, Value};
use vitals_agent::inject::webhook::Outcome;
use vitals_agent::inject::{inject_documents, InjectOptions, AGENT_CONTAINER};
use vitals_core::upstreams::{self, Action, ProbeKind, UpstreamSpec};
use vitals_e2e::mesh::{vllm_pod, Istio, Linkerd, ISTIO_STATUS_PORT};
use vitals_e2e::{apiserver, lws};
use vitals_proto::env::UPSTREAMS as UPSTREAMS_ENV;
use yaml_rust2::YamlLoader;

fn options() -> InjectOptions {
    InjectOptions {
        image: Some("registry.example/vitals-agent:test".into()),
        ..InjectOptions::default()
    }
}

/// `inject`'s output for `doc` (JSON is YAML), read back as JSON.
fn through_cli(doc: &Value) -> Value {
    let text = serde_json::to_string_pretty(doc).unwrap();
    let out = inject_documents(&text, &options()).expect("the pod injects");
    let docs = YamlLoader::load_from_str(&out).expect("inject writes YAML");
    yaml_to_json(&docs[0])
}

/// Both transforms of `pod`, checked to agree on every container; the webhook's pod.
fn injected(pod: &Value) -> Value {
    let Admitted {
        outcome,
        pod: patched,
        ..
    } = admit(pod, &options());
    assert_eq!(outcome, Outcome::Injected);
    let cli = through_cli(pod);
    for list in ["initContainers", "containers"] {
        assert_eq!(
            cli["spec"][list], patched["spec"][list],
            "inject and the webhook disagree on {list}"
        );
    }
    assert_eq!(
        cli["metadata"]["annotations"],
        patched["metadata"]["annotations"]
    );
    patched
}

fn container<'a>(pod: &'a Value, name: &str) -> &'a Value {
    ["initContainers", "containers"]
        .iter()
        .flat_map(|l| pod["spec"][l].as_array().into_iter().flatten())
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name} in {pod:#}"))
}

/// The upstreams the injected agent runs, read by the agent's own config reader.
fn agent_upstreams(pod: &Value) -> BTreeMap<String, UpstreamSpec> {
    let env = container(pod, AGENT_CONTAINER)["env"].as_array().unwrap();
    let text = env
        .iter()
        .find(|e| e["name"] == UPSTREAMS_ENV)
        .and_then(|e| e["value"].as_str())
        .expect("the agent has upstreams");
    upstreams::parse(text, &[], |_| None)
        .expect("the agent accepts what inject wrote")
        .into_iter()
        .map(|u| (u.name.as_str().to_string(), u))
        .collect()
}

/// (path, port, period, timeout) of an upstream's http probe.
fn http_probe(u: &UpstreamSpec, kind: ProbeKind) -> (String, u16, Duration, Duration) {
    let p = u
        .probes
        .get(&kind)
        .unwrap_or_else(|| panic!("no {kind:?} probe in {u:?}"));
    match &p.action {
        Action::Http(h) => (h.path.clone(), h.port, p.period, p.timeout),
        other => panic!("{kind:?} is not an httpGet: {other:?}"),
    }
}

const S: fn(u64) -> Duration = Duration::from_secs;

#[test]
fn istio_vllm_pod_gets_its_original_probes_back_with_the_rewritten_timing() {
    for istio in [
        Istio::default(),
        Istio {
            native_sidecar: true,
            cni: true,
        },
    ] {
        let meshed = istio.inject(vllm_pod());
        let rewritten = container(&meshed, "vllm").clone();
        assert_eq!(
            rewritten["readinessProbe"]["httpGet"]["port"],
            ISTIO_STATUS_PORT
        );
        let pod = injected(&meshed);

        let vllm = &agent_upstreams(&pod)["vllm"];
        let got = [
            ProbeKind::Startup,
            ProbeKind::Liveness,
            ProbeKind::Readiness,
        ]
        .map(|k| http_probe(vllm, k));
        eprintln!("{istio:?}: vllm's probes in the agent: {got:?}");
        assert_eq!(
            got,
            [
                ("/health".to_string(), 8000, S(10), S(1)),
                ("/health".to_string(), 8000, S(10), S(5)),
                ("/health".to_string(), 8000, S(5), S(2)),
            ],
            "{istio:?}: the originals, with the rewritten probes' periods"
        );
        let metrics = vllm.metrics.as_ref().expect("vllm metrics");
        eprintln!(
            "{istio:?}: metrics {:?} on port {}; /proc looks at {:?}",
            metrics.profile,
            metrics.port,
            vllm.probe_ports()
        );
        assert_eq!((metrics.profile, metrics.port), (Some("vllm"), 8000));
        assert_eq!(
            vllm.probe_ports(),
            [8000],
            "/proc finds vLLM's listener, not pilot-agent's"
        );

        // The kubelet now asks the agent, with the thresholds Istio kept.
        let c = container(&pod, "vllm");
        for (key, path) in [
            ("readinessProbe", "/readyz/vllm"),
            ("startupProbe", "/startupz/vllm"),
        ] {
            assert_eq!(
                c[key]["httpGet"],
                json!({"path": path, "port": 9180}),
                "{key}"
            );
            for field in ["periodSeconds", "failureThreshold", "successThreshold"] {
                assert_eq!(c[key][field], rewritten[key][field], "{key}.{field}");
            }
        }
        assert_eq!(c["livenessProbe"]["periodSeconds"], 10);
    }
}

#[test]
fn the_webhook_patch_for_an_istio_vllm_pod() {
    let pod = Istio::default().inject(vllm_pod());
    let Admitted {
        outcome,
        patch,
        warnings,
        ..
    } = admit(&pod, &options());
    assert_eq!(outcome, Outcome::Injected);
    let ops = patch.expect("a patch");
    for op in ops.as_array().unwrap() {
        let mut value = op.get("value").map(Value::to_string).unwrap_or_default();
        if value.len() > 110 {
            value.truncate(110);
            value.push('…');
        }
        eprintln!(
            "{} {} {value}",
            op["op"].as_str().unwrap(),
            op["path"].as_str().unwrap()
        );
    }
    eprintln!("warnings: {warnings:?}");
    let paths: Vec<&str> = ops
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o["path"].as_str())
        .collect();
    assert!(
        paths.contains(&"/metadata/annotations/traffic.sidecar.istio.io~1excludeInboundPorts"),
        "{paths:?}"
    );
    assert!(
        !paths.iter().any(|p| p.starts_with("/spec/containers/1/")),
        "istio-proxy (containers[1]) is not touched: {paths:?}"
    );
    // The agent goes in front of istio-init, whose one change is its `-d` list.
    let init_ops: Vec<&str> = paths
        .iter()
        .copied()
        .filter(|p| p.starts_with("/spec/initContainers"))
        .collect();
    assert_eq!(
        init_ops,
        ["/spec/initContainers/0", "/spec/initContainers/1/args/16"]
    );
}

#[test]
fn a_pod_injected_by_the_cli_then_by_istio_gets_its_probes_back_on_the_agent() {
    // A template injected with `vitals-agent inject`, its pod then meshed by Istio (which
    // rewrites the probes pointing at the agent, the agent's own included) and reinvoked
    // through Vitals' webhook.
    let by_cli = through_cli(&vllm_pod());
    let meshed = Istio::default().inject(by_cli.clone());
    assert_eq!(
        container(&meshed, AGENT_CONTAINER)["startupProbe"]["httpGet"]["port"],
        ISTIO_STATUS_PORT
    );
    let Admitted { outcome, pod, .. } = admit(&meshed, &options());
    assert_eq!(outcome, Outcome::Injected);
    for c in [AGENT_CONTAINER, "vllm"] {
        for key in ["startupProbe", "livenessProbe", "readinessProbe"] {
            let (before, after) = (&container(&by_cli, c)[key], &container(&pod, c)[key]);
            assert_eq!(
                after["httpGet"], before["httpGet"],
                "{c} {key} on the agent again"
            );
        }
    }
    assert_eq!(
        agent_upstreams(&pod)["vllm"],
        agent_upstreams(&by_cli)["vllm"],
        "the originals"
    );
}

#[test]
fn tcp_and_grpc_originals_come_back_as_they_were() {
    // Istio turns both into an httpGet of pilot-agent (app_probe.go convertAppProberTCPSocket,
    // convertAppProberGRPC); LWS's own vLLM example probes readiness by TCP.
    for (handler, expected) in [
        (
            json!({"tcpSocket": {"port": 8000}}),
            Action::Tcp {
                port: 8000,
                host: None,
            },
        ),
        (
            json!({"grpc": {"port": 8000, "service": "vllm"}}),
            Action::Grpc {
                port: 8000,
                service: "vllm".into(),
            },
        ),
    ] {
        let mut app = vllm_pod();
        let readiness = &mut app["spec"]["containers"][0]["readinessProbe"];
        readiness.as_object_mut().unwrap().remove("httpGet");
        readiness
            .as_object_mut()
            .unwrap()
            .extend(handler.as_object().unwrap().clone());
        let pod = injected(&Istio::default().inject(app));
        let vllm = &agent_upstreams(&pod)["vllm"];
        let probe = &vllm.probes[&ProbeKind::Readiness];
        assert_eq!(seen("readiness in the agent", &probe.action), &expected);
        assert_eq!((probe.period, probe.timeout), (S(5), S(2)));
    }
}

#[test]
fn an_https_original_stays_with_the_kubelet_through_pilot_agent() {
    let mut app = vllm_pod();
    app["spec"]["containers"][0]["readinessProbe"]["httpGet"]["scheme"] = json!("HTTPS");
    let meshed = Istio::default().inject(app);
    let pod = injected(&meshed);
    let before = container(&meshed, "vllm");
    let after = container(&pod, "vllm");
    assert_eq!(
        after["readinessProbe"], before["readinessProbe"],
        "pilot-agent keeps the https readiness probe"
    );
    let vllm = &agent_upstreams(&pod)["vllm"];
    assert!(!vllm.probes.contains_key(&ProbeKind::Readiness), "{vllm:?}");
    assert_eq!(http_probe(vllm, ProbeKind::Liveness).1, 8000);
}

/// The vLLM pod through each mesh, its proxy an ordinary container or a native sidecar, with
/// and without the mesh's CNI plugin; with the name of the mesh's proxy.
fn meshed_vllm_pods() -> Vec<(&'static str, Value)> {
    let mut pods = Vec::new();
    for (native_sidecar, cni) in [(false, false), (true, true), (true, false), (false, true)] {
        pods.push((
            "istio-proxy",
            Istio {
                native_sidecar,
                cni,
            }
            .inject(vllm_pod()),
        ));
        pods.push((
            "linkerd-proxy",
            Linkerd {
                native_sidecar,
                cni,
            }
            .inject(vllm_pod()),
        ));
    }
    pods
}

#[test]
fn mesh_proxies_keep_their_own_probes() {
    for (proxy, meshed) in meshed_vllm_pods() {
        let pod = injected(&meshed);
        let upstream_names: Vec<String> = agent_upstreams(&pod).into_keys().collect();
        eprintln!("{proxy}: upstreams {upstream_names:?}");
        assert_eq!(upstream_names, ["vllm"], "{proxy} is not an upstream");
        assert_eq!(
            container(&pod, proxy),
            container(&meshed, proxy),
            "{proxy} untouched"
        );
    }
}

/// A pod's annotation.
fn annotation<'a>(pod: &'a Value, key: &str) -> &'a Value {
    &pod["metadata"]["annotations"][key]
}

/// The value after `flag` in a container's args.
fn flag<'a>(c: &'a Value, flag: &str) -> Option<&'a str> {
    let args = c["args"].as_array()?;
    let i = args.iter().position(|a| a == flag)?;
    args.get(i + 1)?.as_str()
}

/// `value`, printed with `what` (the evidence a reader of the test log looks for).
fn seen<T: std::fmt::Debug>(what: &str, value: T) -> T {
    eprintln!("{what}: {value:?}");
    value
}

#[test]
fn the_agent_port_leaves_the_mesh_capture_keeping_every_value_there() {
    const ISTIO_IN: &str = "traffic.sidecar.istio.io/excludeInboundPorts";
    const LINKERD_IN: &str = "config.linkerd.io/skip-inbound-ports";
    // Istio without CNI; the user already excludes 8081 inbound.
    let mut app = vllm_pod();
    app["metadata"]["annotations"] = json!({ISTIO_IN: "8081"});
    let pod = injected(&Istio::default().inject(app));
    let init = container(&pod, "istio-init");
    assert_eq!(
        seen("istio-init -d", flag(init, "-d")),
        Some("15090,15021,8081,15020,9180")
    );
    assert_eq!(
        seen("istio-init -o", flag(init, "-o")),
        None,
        "not a leader: outbound as it was"
    );
    assert_eq!(seen(ISTIO_IN, annotation(&pod, ISTIO_IN)), "8081,9180");

    // Istio CNI: the annotation the node agent reads.
    let pod = injected(
        &Istio {
            native_sidecar: true,
            cni: true,
        }
        .inject(vllm_pod()),
    );
    assert_eq!(
        seen("istio-cni: annotation", annotation(&pod, ISTIO_IN)),
        "15020,9180"
    );
    let validation = container(&pod, "istio-validation");
    assert_eq!(flag(validation, "-d"), Some("15090,15021,15020,9180"));

    // Linkerd without CNI: linkerd-init's flag, outbound untouched.
    let pod = injected(&Linkerd::default().inject(vllm_pod()));
    let init = container(&pod, "linkerd-init");
    let inbound = seen(
        "linkerd-init inbound",
        flag(init, "--inbound-ports-to-ignore"),
    );
    assert_eq!(inbound, Some("4190,4191,4567,4568,9180"));
    let outbound = seen(
        "linkerd-init outbound",
        flag(init, "--outbound-ports-to-ignore"),
    );
    assert_eq!(outbound, Some("4567,4568"));
    assert_eq!(annotation(&pod, LINKERD_IN), "4190,4191,4567,4568,9180");

    // linkerd-cni: the annotation replaces the plugin's list, so it keeps the proxy's ports.
    let meshed = Linkerd {
        native_sidecar: true,
        cni: true,
    }
    .inject(vllm_pod());
    let Admitted { warnings, pod, .. } = admit(&meshed, &options());
    assert_eq!(
        seen("linkerd-cni: annotation", annotation(&pod, LINKERD_IN)),
        "4190,4191,9180"
    );
    assert!(
        warnings.iter().any(|w| w.contains("linkerd-cni")),
        "{warnings:?}"
    );
}

/// What a mesh's injector does to a pod.
type MeshInjector = fn(Value) -> Value;

/// A LeaderWorkerSet whose two templates are `leader` and `worker` (their metadata and spec).
fn lws_of(leader: &Value, worker: &Value) -> Value {
    let template = |pod: &Value| json!({"metadata": pod["metadata"], "spec": pod["spec"]});
    json!({
        "apiVersion": "leaderworkerset.x-k8s.io/v1",
        "kind": "LeaderWorkerSet",
        "metadata": {"name": "llama"},
        "spec": {"leaderWorkerTemplate": {
            "size": 2,
            "restartPolicy": "RecreateGroupOnPodRestart",
            "leaderTemplate": template(leader),
            "workerTemplate": template(worker),
        }}
    })
}

#[test]
fn a_group_leader_also_polls_its_members_outside_the_capture() {
    // Istio's templates as `istioctl kube-inject` leaves them; the leader's own outbound
    // exclusions (3306) stay.
    let mut app = vllm_pod();
    app["metadata"]["annotations"] =
        json!({"traffic.sidecar.istio.io/excludeOutboundPorts": "3306"});
    let leader = Istio::default().inject(app);
    let worker = Istio::default().inject(vllm_pod());
    let out = through_cli(&lws_of(&leader, &worker));
    let templates = &out["spec"]["leaderWorkerTemplate"];
    let (leader, worker) = (&templates["leaderTemplate"], &templates["workerTemplate"]);
    eprintln!(
        "leader -o {:?}, worker -o {:?}",
        flag(container(leader, "istio-init"), "-o"),
        flag(container(worker, "istio-init"), "-o")
    );
    assert_eq!(
        flag(container(leader, "istio-init"), "-o"),
        Some("3306,9180")
    );
    assert_eq!(
        annotation(leader, "traffic.sidecar.istio.io/excludeOutboundPorts"),
        "3306,9180"
    );
    assert_eq!(flag(container(worker, "istio-init"), "-o"), None);
    assert_eq!(
        flag(container(worker, "istio-init"), "-d"),
        Some("15090,15021,15020,9180")
    );

    let out = through_cli(&lws_of(
        &Linkerd::default().inject(vllm_pod()),
        &Linkerd::default().inject(vllm_pod()),
    ));
    let leader = &out["spec"]["leaderWorkerTemplate"]["leaderTemplate"];
    let init = container(leader, "linkerd-init");
    assert_eq!(
        flag(init, "--outbound-ports-to-ignore"),
        Some("4567,4568,9180")
    );
    assert_eq!(
        annotation(leader, "config.linkerd.io/skip-outbound-ports"),
        "4567,4568,9180"
    );

    // Through the webhook: the pods LWS makes from plain templates, then the mesh's
    // injector; the webhook knows the leader by LWS's worker-index label.
    let plain = lws_of(&vllm_pod(), &vllm_pod());
    let leader = lws::leader_pod(&plain, 0);
    let worker = lws::worker_pod(&plain, &leader, 1);
    let has_agent_port = |list: Option<&str>| list.unwrap_or("").split(',').any(|p| p == "9180");
    let meshes: [(MeshInjector, &str, &str, &str); 2] = [
        (
            |p| Istio::default().inject(p),
            "istio-init",
            "-o",
            "traffic.sidecar.istio.io/excludeOutboundPorts",
        ),
        (
            |p| Linkerd::default().inject(p),
            "linkerd-init",
            "--outbound-ports-to-ignore",
            "config.linkerd.io/skip-outbound-ports",
        ),
    ];
    for (mesh, init, outbound, annotation_key) in meshes {
        let leader = admit(&mesh(leader.clone()), &options()).pod;
        let worker = admit(&mesh(worker.clone()), &options()).pod;
        let (from_leader, from_worker) = (
            flag(container(&leader, init), outbound),
            flag(container(&worker, init), outbound),
        );
        let leader_annotation = annotation(&leader, annotation_key).as_str();
        eprintln!(
            "webhook: {init} {outbound}: leader {from_leader:?}, worker {from_worker:?}; leader's {annotation_key}: {leader_annotation:?}"
        );
        assert!(has_agent_port(from_leader), "{init}: {from_leader:?}");
        assert!(!has_agent_port(from_worker), "{init}: {from_worker:?}");
        assert!(has_agent_port(leader_annotation), "{leader_annotation:?}");
        assert!(annotation(&worker, annotation_key).is_null());
    }
}

#[test]
fn a_second_pass_changes_nothing() {
    for (_, meshed) in meshed_vllm_pods() {
        // Reinvoked on the pod as the API server stores it (its defaulting applied).
        let mut once = injected(&meshed);
        apiserver::default_pod(&mut once);
        let Admitted { outcome, patch, .. } = admit(&once, &options());
        eprintln!("second review: {outcome:?}, patch {patch:?}");
        assert_eq!((outcome, patch), (Outcome::AlreadyInjected, None));
        let cli_once = through_cli(&meshed);
        assert_eq!(
            through_cli(&cli_once),
            cli_once,
            "inject twice = inject once"
        );
    }
}

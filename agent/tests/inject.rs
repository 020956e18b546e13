//! `vitals-agent inject` on manifests as users write them (tests/fixtures/inject/*.in.yaml,
//! flags on each file's first line `# inject-args: ...`): golden outputs, SPEC §6 wiring,
//! everything else preserved, idempotence, updates of older injections, errors.
//! `UPDATE_GOLDEN=1 cargo test -p vitals-agent --test inject` rewrites the *.out.yaml files
//! (review the diff).

mod common;

use common::fixtures::{fixture_dir, inject_args};
use vitals_agent::inject::{
    inject_documents, inject_report, InjectError, InjectOptions, Problem, AGENT_UID, VERSION,
};
use vitals_core::upstreams as upstream_config;
use vitals_proto::env;
use vitals_proto::WorkerName;
use yaml_rust2::{Yaml, YamlLoader};

/// Every `*.in.yaml` fixture: (name, input text, flags).
fn fixtures() -> Vec<(String, String, Vec<String>)> {
    let out = common::fixtures::fixtures();
    assert!(out.len() >= 7, "fixtures missing: {out:?}");
    out
}

fn options(flags: &[String]) -> InjectOptions {
    inject_args(flags).options()
}

fn inject(text: &str, flags: &[String]) -> String {
    inject_documents(text, &options(flags)).unwrap_or_else(|e| panic!("inject failed: {e}"))
}

fn docs(text: &str) -> Vec<Yaml> {
    YamlLoader::load_from_str(text).expect("output parses")
}

fn get<'a>(y: &'a Yaml, path: &[&str]) -> &'a Yaml {
    path.iter().fold(y, |y, k| &y[*k])
}

/// (kind, pod template metadata, pod spec) of every pod template, Lists included.
fn pod_templates(y: &Yaml) -> Vec<(String, Yaml, Yaml)> {
    common::fixtures::pod_templates(y)
        .into_iter()
        .map(|(kind, t)| (kind.to_string(), t["metadata"].clone(), t["spec"].clone()))
        .collect()
}

fn by_name<'a>(list: &'a Yaml, name: &str) -> Option<&'a Yaml> {
    list.as_vec()?
        .iter()
        .find(|c| c["name"].as_str() == Some(name))
}

#[test]
fn outputs_match_the_reviewed_golden_files() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    for (name, text, flags) in fixtures() {
        let out = inject(&text, &flags);
        let golden = fixture_dir().join(format!("{name}.out.yaml"));
        if update {
            std::fs::write(&golden, &out).expect("write golden");
            continue;
        }
        let expected = std::fs::read_to_string(&golden)
            .unwrap_or_else(|_| panic!("{golden:?} missing: run with UPDATE_GOLDEN=1"));
        assert!(
            out == expected,
            "{name}: output differs from {golden:?}\n--- got:\n{out}"
        );
    }
}

#[test]
fn injecting_twice_changes_nothing() {
    for (name, text, flags) in fixtures() {
        let once = inject(&text, &flags);
        assert_eq!(
            inject(&once, &flags),
            once,
            "{name}: second injection with the same flags"
        );
        if !flags
            .iter()
            .any(|f| f == "--legacy-sidecar" || f == "--image")
        {
            // The pod annotation remembers which containers are workers.
            assert_eq!(
                inject(&once, &[]),
                once,
                "{name}: second injection without flags"
            );
        }
    }
}

#[test]
fn every_pod_template_is_wired_as_spec_section_6_says() {
    for (name, text, flags) in fixtures() {
        let legacy = flags.iter().any(|f| f == "--legacy-sidecar");
        let out = inject(&text, &flags);
        let mut templates = 0;
        for doc in docs(&out) {
            for (kind, meta, spec) in pod_templates(&doc) {
                templates += 1;
                let at = format!("{name} {kind}");
                // A pod template left alone (nothing to watch) has no agent.
                if meta["annotations"]["vitals.dev/injected-version"].is_badvalue() {
                    assert!(
                        by_name(&spec["initContainers"], "vitals-agent").is_none()
                            && by_name(&spec["containers"], "vitals-agent").is_none(),
                        "{at}: an agent without the version annotation"
                    );
                    continue;
                }
                let workers: Vec<&str> = meta["annotations"]["vitals.dev/workers"]
                    .as_str()
                    .map_or_else(Vec::new, |w| w.split(',').collect());
                assert_eq!(
                    meta["annotations"]["vitals.dev/injected-version"].as_str(),
                    Some(VERSION),
                    "{at}"
                );
                assert_eq!(spec["shareProcessNamespace"].as_bool(), Some(true), "{at}");
                let socket = by_name(&spec["volumes"], "vitals-socket")
                    .unwrap_or_else(|| panic!("{at}: socket volume"));
                assert_eq!(
                    socket["emptyDir"]["medium"].as_str(),
                    Some("Memory"),
                    "{at}"
                );

                // Exactly one agent, native sidecar unless --legacy-sidecar.
                let in_init = by_name(&spec["initContainers"], "vitals-agent");
                let in_main = by_name(&spec["containers"], "vitals-agent");
                let agent = match (in_init, in_main, legacy) {
                    (Some(a), None, false) => {
                        assert_eq!(a["restartPolicy"].as_str(), Some("Always"), "{at}");
                        assert_eq!(
                            spec["initContainers"][0]["name"].as_str(),
                            Some("vitals-agent"),
                            "{at}: agent first"
                        );
                        a
                    }
                    (None, Some(a), true) => {
                        assert!(
                            a["restartPolicy"].is_badvalue(),
                            "{at}: restartPolicy on an ordinary container"
                        );
                        a
                    }
                    other => panic!("{at}: agent placement {other:?}"),
                };
                // A group pod's agent has no liveness probe (SPEC §11; tests/lws.rs).
                let in_group = agent["env"].as_vec().is_some_and(|env| {
                    env.iter()
                        .any(|e| e["name"].as_str() == Some(env::GROUP_ROLE))
                });
                let probes: &[_] = if in_group {
                    assert!(
                        agent["livenessProbe"].is_badvalue(),
                        "{at}: group agent liveness"
                    );
                    &[("startupProbe", "/livez")]
                } else {
                    &[("startupProbe", "/livez"), ("livenessProbe", "/livez")]
                };
                for &(probe, path) in probes {
                    assert_eq!(
                        agent[probe]["httpGet"]["path"].as_str(),
                        Some(path),
                        "{at} agent {probe}"
                    );
                    assert_eq!(
                        agent[probe]["httpGet"]["port"].as_i64(),
                        Some(9180),
                        "{at} agent {probe}"
                    );
                }
                let args: Vec<&str> = agent["args"]
                    .as_vec()
                    .expect("agent args")
                    .iter()
                    .filter_map(Yaml::as_str)
                    .collect();
                assert_eq!(args[0], "run");
                assert!(
                    args.contains(&"--socket=/run/vitals/agent.sock"),
                    "{at}: {args:?}"
                );
                // Dual-stack (issue 21 item 4): an IPv6-only cluster's kubelet probes the IPv6 pod IP.
                assert!(args.contains(&"--listen=[::]:9180"), "{at}: {args:?}");
                assert_eq!(
                    meta["labels"]["vitals.dev/injected"].as_str(),
                    Some("true"),
                    "{at}: the label the PodMonitor selects"
                );
                let mount =
                    by_name(&agent["volumeMounts"], "vitals-socket").expect("agent socket mount");
                assert_eq!(mount["mountPath"].as_str(), Some("/run/vitals"));

                for w in &workers {
                    assert!(
                        args.contains(&format!("--expect={w}").as_str()),
                        "{at}: {args:?} lacks --expect={w}"
                    );
                    let c = by_name(&spec["containers"], w)
                        .unwrap_or_else(|| panic!("{at}: worker {w}"));
                    let env = |n: &str| by_name(&c["env"], n).and_then(|e| e["value"].as_str());
                    assert_eq!(
                        env(env::AGENT_SOCKET),
                        Some("/run/vitals/agent.sock"),
                        "{at} {w}"
                    );
                    assert_eq!(env(env::NAME), Some(*w), "{at} {w}");
                    let mount =
                        by_name(&c["volumeMounts"], "vitals-socket").expect("worker socket mount");
                    assert_eq!(mount["mountPath"].as_str(), Some("/run/vitals"));
                    for (probe, path) in [
                        ("startupProbe", "startupz"),
                        ("livenessProbe", "livez"),
                        ("readinessProbe", "readyz"),
                    ] {
                        let p = &c[probe];
                        assert_eq!(
                            p["httpGet"]["path"].as_str(),
                            Some(format!("/{path}/{w}").as_str()),
                            "{at} {w} {probe}"
                        );
                        assert_eq!(
                            p["httpGet"]["port"].as_i64(),
                            Some(9180),
                            "{at} {w} {probe}"
                        );
                        for other in ["exec", "tcpSocket", "grpc"] {
                            assert!(p[other].is_badvalue(), "{at} {w} {probe} still has {other}");
                        }
                        assert!(
                            p["httpGet"]["host"].is_badvalue()
                                && p["httpGet"]["httpHeaders"].is_badvalue()
                        );
                    }
                }
                check_upstreams(&at, agent, &spec, &workers);
            }
        }
        assert!(templates > 0, "{name}: no pod template in the output");
    }
}

/// SPEC §8 wiring of the upstreams: the agent's `VITALS_UPSTREAMS` is accepted by the
/// agent's own parser; every container with probes that is not a worker is in it, its
/// agent-runnable probes point at the agent with `timeoutSeconds: 1`, and exec/https
/// probes are untouched; `POD_IP` comes from the downward API; the agent runs as its UID.
fn check_upstreams(at: &str, agent: &Yaml, spec: &Yaml, workers: &[&str]) {
    let env = |n: &str| by_name(&agent["env"], n).cloned();
    let pod_ip = env(env::POD_IP).unwrap_or_else(|| panic!("{at}: agent without POD_IP"));
    assert_eq!(
        pod_ip["valueFrom"]["fieldRef"]["fieldPath"].as_str(),
        Some("status.podIP"),
        "{at}"
    );
    // The agent's user is named only where the pod-level user is root (OpenShift's
    // restricted-v2 refuses an explicit user outside the namespace's range).
    let pod_is_root = spec["securityContext"]["runAsUser"].as_i64() == Some(0);
    assert_eq!(
        agent["securityContext"]["runAsUser"].as_i64(),
        pod_is_root.then_some(i64::from(AGENT_UID)),
        "{at}"
    );
    let expect: Vec<WorkerName> = workers
        .iter()
        .map(|w| WorkerName::parse(*w).expect("worker name"))
        .collect();
    let json = env(env::UPSTREAMS).and_then(|e| e["value"].as_str().map(str::to_string));
    let specs = match &json {
        Some(text) => upstream_config::parse(text, &expect, |_| None)
            .unwrap_or_else(|e| panic!("{at}: the agent refuses inject's upstreams: {e}")),
        None => Vec::new(),
    };
    for c in spec["containers"].as_vec().into_iter().flatten() {
        let name = c["name"].as_str().unwrap_or("");
        // A mesh's proxy keeps its own probes (SPEC §11).
        if workers.contains(&name)
            || ["vitals-agent", "istio-proxy", "linkerd-proxy"].contains(&name)
        {
            continue;
        }
        let upstream = specs.iter().find(|s| s.name.as_str() == name);
        for (key, path) in [
            ("startupProbe", "startupz"),
            ("livenessProbe", "livez"),
            ("readinessProbe", "readyz"),
        ] {
            let p = &c[key];
            if p.is_badvalue() {
                continue;
            }
            let stays = !p["exec"].is_badvalue()
                || p["httpGet"]["scheme"]
                    .as_str()
                    .is_some_and(|s| s.eq_ignore_ascii_case("https"));
            if stays {
                continue;
            }
            let u = upstream.unwrap_or_else(|| panic!("{at}: {name} has {key} but is no upstream"));
            // In a group, inject gives a container without liveness one on the agent (SPEC §9).
            let added_for_group = env(env::GROUP_ROLE).is_some() && key == "livenessProbe";
            assert_eq!(
                p["httpGet"]["path"].as_str(),
                Some(format!("/{path}/{name}").as_str()),
                "{at} {name} {key}"
            );
            assert_eq!(
                p["httpGet"]["port"].as_i64(),
                Some(9180),
                "{at} {name} {key}"
            );
            assert_eq!(p["timeoutSeconds"].as_i64(), Some(1), "{at} {name} {key}");
            assert!(
                added_for_group || u.probes.keys().any(|k| k.key() == key),
                "{at}: {name}'s original {key} is not in the agent's config"
            );
        }
    }
}

/// Leaves of a YAML tree as (path, value); list items with a `name` are addressed by it, so
/// an inserted container does not shift the others.
fn leaves(y: &Yaml, path: String, out: &mut Vec<(String, Yaml)>) {
    match y {
        Yaml::Hash(h) => {
            for (k, v) in h {
                let key = k.as_str().map_or_else(|| format!("{k:?}"), str::to_string);
                leaves(v, format!("{path}.{key}"), out);
            }
        }
        Yaml::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                let seg = v["name"]
                    .as_str()
                    .map_or_else(|| i.to_string(), |n| format!("name={n}"));
                leaves(v, format!("{path}[{seg}]"), out);
            }
        }
        other => out.push((path, other.clone())),
    }
}

/// What inject may change: the agent, its volume, the version, and of each worker or
/// upstream the probe handlers and timeouts and the two env vars it owns.
fn owned_by_inject(path: &str) -> bool {
    let probe_handler = ["startupProbe", "livenessProbe", "readinessProbe"]
        .iter()
        .any(|p| {
            ["httpGet", "exec", "tcpSocket", "grpc", "timeoutSeconds"]
                .iter()
                .any(|h| path.contains(&format!(".{p}.{h}")))
        });
    probe_handler
        || path.contains("[name=vitals-agent]")
        || path.contains("[name=vitals-socket]")
        || path.contains("[name=VITALS_NAME]")
        || path.contains("[name=VITALS_AGENT_SOCKET]")
        || path.ends_with("vitals.dev/injected-version")
        || path.ends_with("labels.vitals.dev/injected")
        // Raised so the agent's restart never fails it (issue 21 item 1).
        || path.ends_with(".livenessProbe.failureThreshold")
        || path.ends_with("shareProcessNamespace")
}

#[test]
fn everything_inject_does_not_own_is_preserved() {
    for (name, text, flags) in fixtures() {
        let out = inject(&text, &flags);
        let (before, after) = (docs(&text), docs(&out));
        assert_eq!(before.len(), after.len(), "{name}: document count");
        for (i, (b, a)) in before.iter().zip(&after).enumerate() {
            let (mut lb, mut la) = (Vec::new(), Vec::new());
            leaves(b, String::new(), &mut lb);
            leaves(a, String::new(), &mut la);
            for (path, value) in lb.iter().filter(|(p, _)| !owned_by_inject(p)) {
                let found = la.iter().find(|(p, _)| p == path).map(|(_, v)| v);
                assert_eq!(found, Some(value), "{name} doc {i}: {path} changed or lost");
            }
            // Key order of every mapping kept: the input's keys come out in the same order.
            let order = |l: &[(String, Yaml)]| {
                l.iter()
                    .map(|(p, _)| p.clone())
                    .filter(|p| !owned_by_inject(p))
                    .collect::<Vec<_>>()
            };
            let (ob, oa) = (order(&lb), order(&la));
            let oa: Vec<_> = oa.into_iter().filter(|p| ob.contains(p)).collect();
            assert_eq!(ob, oa, "{name} doc {i}: order of fields changed");
        }
    }
}

#[test]
fn yaml_1_1_scalars_keep_their_meaning() {
    let out = inject(
        &std::fs::read_to_string(fixture_dir().join("pod-with-probes.in.yaml")).expect("fixture"),
        &[],
    );
    assert!(
        out.contains("value: \"yes\""),
        "a quoted yes must stay a string for Kubernetes:\n{out}"
    );
    assert!(out.contains("value: \"0\""));
    let out = inject(
        &std::fs::read_to_string(fixture_dir().join("statefulset-two-containers.in.yaml"))
            .expect("fixture"),
        &["--container".into(), "reranker".into()],
    );
    assert!(
        out.contains("defaultMode: 0644"),
        "octal 0644 must stay as written:\n{out}"
    );
    assert!(out.contains("prometheus.io/scrape: \"true\""));
}

#[test]
fn documents_without_pod_templates_pass_through_byte_for_byte() {
    let text =
        std::fs::read_to_string(fixture_dir().join("multi-document.in.yaml")).expect("fixture");
    let out = inject(&text, &[]);
    let service = text.split("---\n").nth(1).expect("service document");
    let config = text.split("---\n").nth(2).expect("configmap document");
    assert!(service.contains("# the container's named port"));
    assert!(out.contains(service), "Service changed");
    assert!(out.contains(config), "ConfigMap changed");
    assert!(
        out.contains("# Source: api/templates/deployment.yaml\napiVersion: apps/v1"),
        "leading comment of an injected document kept"
    );
    let report = inject_report(&text, &InjectOptions::default()).expect("inject");
    assert!(
        report
            .notes
            .iter()
            .any(|n| n == "Service/api: skipped (no pod template)"),
        "{:?}",
        report.notes
    );
}

#[test]
fn an_older_injection_is_updated_not_duplicated() {
    let text =
        std::fs::read_to_string(fixture_dir().join("already-injected.in.yaml")).expect("fixture");
    let report = inject_report(&text, &InjectOptions::default()).expect("inject");
    assert!(
        report.notes[0].contains("updated (injected by 0.0.9 before)"),
        "{:?}",
        report.notes
    );
    let doc = &docs(&report.output)[0];
    let spec = get(doc, &["spec", "template", "spec"]);
    let agents = ["initContainers", "containers"]
        .iter()
        .flat_map(|k| spec[*k].as_vec().cloned().unwrap_or_default())
        .filter(|c| c["name"].as_str() == Some("vitals-agent"))
        .count();
    assert_eq!(agents, 1);
    let agent =
        by_name(&spec["initContainers"], "vitals-agent").expect("moved to a native sidecar");
    assert_eq!(
        agent["image"].as_str(),
        Some(format!("vitals-agent:{VERSION}").as_str()),
        "old image replaced"
    );
    assert_eq!(
        agent["resources"]["requests"]["cpu"].as_str(),
        Some("20m"),
        "the user's tuning kept"
    );
    let live = &by_name(&spec["containers"], "model").expect("worker")["livenessProbe"];
    assert_eq!(live["httpGet"]["port"].as_i64(), Some(9180));
    assert_eq!(live["periodSeconds"].as_i64(), Some(5));
}

#[test]
fn switching_between_native_and_legacy_moves_the_agent() {
    let text = std::fs::read_to_string(fixture_dir().join("deployment.in.yaml")).expect("fixture");
    let native = inject(&text, &[]);
    let legacy = inject(&native, &["--legacy-sidecar".into()]);
    let spec = get(&docs(&legacy)[0], &["spec", "template", "spec"]).clone();
    assert!(by_name(&spec["containers"], "vitals-agent").is_some());
    assert!(
        spec["initContainers"].is_badvalue(),
        "emptied initContainers removed"
    );
    assert_eq!(
        spec["containers"][0]["name"].as_str(),
        Some("embeddings"),
        "user's container stays first"
    );
    assert_eq!(inject(&legacy, &[]), native, "and back");
}

#[test]
fn custom_image_is_kept_by_the_same_version_and_replaced_by_an_explicit_one() {
    let text = std::fs::read_to_string(fixture_dir().join("job.in.yaml")).expect("fixture");
    let custom = inject(
        &text,
        &[
            "--image".into(),
            "mirror.example/vitals-agent:pinned".into(),
            "--container=embed".into(),
        ],
    );
    assert_eq!(inject(&custom, &[]), custom);
    let other = inject(&custom, &["--image".into(), "other/vitals-agent:1".into()]);
    assert!(other.contains("image: other/vitals-agent:1") && !other.contains("pinned"));
}

#[test]
fn legacy_sidecar_on_a_job_warns() {
    let text = std::fs::read_to_string(fixture_dir().join("job.in.yaml")).expect("fixture");
    let report = inject_report(
        &text,
        &InjectOptions {
            legacy_sidecar: true,
            containers: vec!["embed".into()],
            ..Default::default()
        },
    )
    .expect("inject");
    assert!(
        report.notes.iter().any(|n| n.contains("never completes")),
        "{:?}",
        report.notes
    );
}

fn error_of(text: &str, opts: &InjectOptions) -> InjectError {
    inject_documents(text, opts).expect_err("must fail")
}

#[test]
fn unparsable_yaml_is_reported_with_its_line() {
    let text = std::fs::read_to_string(fixture_dir().join("err-unparsable.yaml")).expect("fixture");
    match error_of(&text, &InjectOptions::default()) {
        InjectError::Parse {
            doc: 1,
            line: 10,
            column: 42,
            ..
        } => {}
        e => panic!("{e}"),
    }
    // In a later document, the line counts from the start of the input.
    let two = format!("apiVersion: v1\nkind: Service\nmetadata: {{name: a}}\n---\n{text}");
    match error_of(&two, &InjectOptions::default()) {
        InjectError::Parse {
            doc: 2, line: 14, ..
        } => {}
        e => panic!("{e}"),
    }
}

#[test]
fn container_choice_errors_are_clear() {
    let two =
        std::fs::read_to_string(fixture_dir().join("err-no-worker-chosen.yaml")).expect("fixture");
    let e = error_of(&two, &InjectOptions::default());
    assert!(
        matches!(
            &e,
            InjectError::Workload {
                doc: 1,
                problem: Problem::NoWorkerChosen { .. },
                ..
            }
        ),
        "{e}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains("Pod/two") && msg.contains("app, proxy") && msg.contains("--container"),
        "{msg}"
    );

    // A misspelt --container is named before anything else.
    let e = error_of(
        &two,
        &InjectOptions {
            containers: vec!["ap".into()],
            ..Default::default()
        },
    );
    assert!(
        matches!(&e, InjectError::UnknownContainer { name } if name == "ap"),
        "{e}"
    );
    let one = "apiVersion: v1\nkind: Pod\nmetadata: {name: one}\nspec:\n  containers: [{name: app, image: x}]\n";
    let e = error_of(
        one,
        &InjectOptions {
            containers: vec!["ap".into()],
            ..Default::default()
        },
    );
    assert_eq!(
        e.to_string(),
        "--container ap: no pod template in the input has a container named \"ap\""
    );

    let annotated = two.replace(
        "  name: two\n",
        "  name: two\n  annotations:\n    vitals.dev/workers: app,sidecar\n",
    );
    let e = error_of(&annotated, &InjectOptions::default());
    assert!(
        e.to_string().contains("no container named \"sidecar\""),
        "{e}"
    );

    let port = one.replace("image: x}", "image: x, ports: [{containerPort: 9180}]}");
    let e = error_of(&port, &InjectOptions::default());
    assert!(e.to_string().contains("port 9180"), "{e}");
}

/// A probe already on the agent takes its original back from the agent's upstreams; when
/// they have no entry for its container (the agent's env edited, the container taken out of
/// `vitals.dev/workers`), the original is lost, and inject says so instead of leaving a
/// probe the agent answers 404 (vLLM) or, in a group pod, passes without looking (the LWS
/// leader's readiness, its tcpSocket on vLLM's port gone).
#[test]
fn a_probe_on_the_agent_whose_original_is_lost_is_refused() {
    for (name, container, probes) in [
        (
            "vllm-deployment.in.yaml",
            "vllm",
            "startupProbe, livenessProbe, readinessProbe",
        ),
        (
            "lws-vllm.in.yaml",
            "vllm-leader",
            "livenessProbe, readinessProbe",
        ),
    ] {
        let injected = inject(&fixture(name), &[]);
        // The first agent's upstreams env (its name line and its value line) taken out.
        let at = injected
            .find(&format!("- name: {}\n", env::UPSTREAMS))
            .expect("an upstreams env");
        let end = at
            + injected[at..]
                .match_indices('\n')
                .nth(1)
                .expect("its value")
                .0
            + 1;
        let start = injected[..at].rfind('\n').map_or(0, |i| i + 1);
        let edited = format!("{}{}", &injected[..start], &injected[end..]);
        let e = error_of(&edited, &options(&[]));
        eprintln!("{name}: {e}");
        assert!(
            matches!(&e, InjectError::Workload {
                problem: Problem::OriginalProbeUnknown { container: c, probes: p }, ..
            } if c == container && p == probes),
            "{name}: {e}"
        );
    }
}

#[test]
fn the_binary_writes_nothing_on_error_and_everything_on_success() {
    let bad = fixture_dir().join("err-unparsable.yaml");
    let out = common::agent_cmd()
        .args(["inject", "-f"])
        .arg(&bad)
        .output()
        .expect("run vitals-agent");
    assert!(!out.status.success());
    assert!(
        out.stdout.is_empty(),
        "stdout on error: {:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("invalid YAML") && err.contains("line"),
        "{err}"
    );

    // A workload it cannot inject: the reason, once, naming the document.
    let out = common::agent_cmd()
        .args(["inject", "-f"])
        .arg(fixture_dir().join("err-no-worker-chosen.yaml"))
        .output()
        .expect("run vitals-agent");
    assert!(!out.status.success() && out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("document 1 (Pod/two)"), "{err}");
    assert_eq!(err.matches("none chosen").count(), 1, "{err}");

    let good = fixture_dir().join("statefulset-two-containers.in.yaml");
    let out = common::agent_cmd()
        .args(["inject", "-q", "--container", "reranker", "-f"])
        .arg(&good)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let golden = std::fs::read_to_string(fixture_dir().join("statefulset-two-containers.out.yaml"))
        .expect("golden");
    assert_eq!(String::from_utf8_lossy(&out.stdout), golden);

    // stdin, the default.
    let mut child = common::agent_cmd()
        .args(["inject"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(golden.as_bytes()).expect("write stdin");
    }
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        golden,
        "idempotent through the binary"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("unchanged (already injected)"));
}

/// The agent's upstream config in an injected single-template manifest, and the pod spec.
fn upstreams_of(out: &str) -> (serde_json::Value, Yaml) {
    let spec = docs(out)
        .iter()
        .flat_map(pod_templates)
        .map(|(_, _, spec)| spec)
        .find(|spec| by_name(&spec["initContainers"], "vitals-agent").is_some())
        .expect("an injected pod template");
    let agent = by_name(&spec["initContainers"], "vitals-agent").expect("agent");
    let json = by_name(&agent["env"], env::UPSTREAMS)
        .and_then(|e| e["value"].as_str())
        .expect(env::UPSTREAMS);
    (serde_json::from_str(json).expect("JSON"), spec)
}

fn fixture(name: &str) -> String {
    std::fs::read_to_string(fixture_dir().join(name)).expect("fixture")
}

#[test]
fn a_plain_vllm_deployment_becomes_an_upstream() {
    let report = inject_report(
        &fixture("vllm-deployment.in.yaml"),
        &InjectOptions::default(),
    )
    .expect("inject");
    let (config, spec) = upstreams_of(&report.output);
    assert_eq!(
        config,
        serde_json::json!({"vllm": {
            "startupProbe": {"httpGet": {"path": "/health", "port": 8000}, "periodSeconds": 10},
            "livenessProbe": {"httpGet": {"path": "/health", "port": 8000}, "periodSeconds": 10, "timeoutSeconds": 5},
            "readinessProbe": {"httpGet": {"path": "/health", "port": 8000}, "periodSeconds": 5},
            "metrics": "vllm",
            "process": {"cmdline": ["vllm", "serve", "meta-llama/Llama-3.1-8B-Instruct", "--port", "8000"]}
        }})
    );
    let vllm = by_name(&spec["containers"], "vllm").expect("vllm");
    // Period and thresholds stay with the kubelet; the timeout is the agent's.
    let live = &vllm["livenessProbe"];
    assert_eq!(live["httpGet"]["path"].as_str(), Some("/livez/vllm"));
    assert_eq!(live["periodSeconds"].as_i64(), Some(10));
    // 10 s × 3 tolerates 20 s, less than the agent's worst restart: raised to 10 s × 7.
    assert_eq!(live["failureThreshold"].as_i64(), Some(7));
    assert_eq!(live["timeoutSeconds"].as_i64(), Some(1));
    assert_eq!(vllm["startupProbe"]["failureThreshold"].as_i64(), Some(60));
    // Not a protocol worker: no socket, no env, no --expect.
    assert!(
        vllm["env"].is_badvalue() && vllm["volumeMounts"].as_vec().is_some_and(|m| m.len() == 1)
    );
    assert!(!report.output.contains("--expect"));
    assert!(
        report
            .notes
            .iter()
            .any(|n| n.contains("upstreams: vllm (metrics: vllm)")),
        "{:?}",
        report.notes
    );
}

#[test]
fn named_ports_tcp_and_the_servers_own_metrics_port() {
    let (triton, _) = upstreams_of(&inject(&fixture("triton-statefulset.in.yaml"), &[]));
    assert_eq!(
        triton["triton"]["readinessProbe"]["tcpSocket"]["port"],
        8001
    );
    assert_eq!(triton["triton"]["startupProbe"]["httpGet"]["port"], 8000);
    assert_eq!(triton["triton"]["metrics"], "triton");
    let (sglang, _) = upstreams_of(&inject(&fixture("sglang-pod.in.yaml"), &[]));
    let live = &sglang["sglang"]["livenessProbe"]["httpGet"];
    assert_eq!(live["port"], 30000);
    assert_eq!(live["httpHeaders"][0]["value"], "kubelet");
    assert_eq!(sglang["sglang"]["readinessProbe"]["timeoutSeconds"], 30);
    assert_eq!(sglang["sglang"]["metrics"], "sglang");
}

#[test]
fn exec_and_https_probes_stay_on_the_container() {
    let out = inject(&fixture("exec-probe.in.yaml"), &[]);
    let (config, spec) = upstreams_of(&out);
    assert_eq!(
        config["ollama"]["readinessProbe"]["tcpSocket"]["port"],
        11434
    );
    assert!(config["ollama"].get("livenessProbe").is_none());
    assert!(
        config["ollama"].get("metrics").is_none(),
        "no profile for ollama"
    );
    let ollama = by_name(&spec["containers"], "ollama").expect("ollama");
    assert_eq!(
        ollama["livenessProbe"]["exec"]["command"][0].as_str(),
        Some("ollama")
    );
    assert_eq!(ollama["livenessProbe"]["timeoutSeconds"].as_i64(), Some(10));

    let (config, spec) = upstreams_of(&inject(&fixture("pod-with-probes.in.yaml"), &[]));
    let llm = by_name(&spec["containers"], "llm").expect("llm");
    assert_eq!(
        llm["startupProbe"]["httpGet"]["scheme"].as_str(),
        Some("HTTPS")
    );
    assert_eq!(llm["startupProbe"]["httpGet"]["port"].as_i64(), Some(8000));
    assert!(llm["livenessProbe"]["exec"].as_hash().is_some());
    assert_eq!(
        llm["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/readyz/llm")
    );
    assert_eq!(
        config,
        serde_json::json!({"llm": {"readinessProbe": {"tcpSocket": {"port": 8000}, "periodSeconds": 3}}})
    );
}

#[test]
fn a_root_pod_still_runs_the_agent_as_its_own_user() {
    let out = inject(&fixture("run-as-root.in.yaml"), &[]);
    let (config, spec) = upstreams_of(&out);
    assert_eq!(spec["securityContext"]["runAsUser"].as_i64(), Some(0));
    let agent = by_name(&spec["initContainers"], "vitals-agent").expect("agent");
    assert_eq!(agent["securityContext"]["runAsUser"].as_i64(), Some(65532));
    assert_eq!(
        agent["securityContext"]["runAsNonRoot"].as_bool(),
        Some(true)
    );
    assert_eq!(config["tgi"]["metrics"], "tgi");
}

#[test]
fn a_helm_stream_injects_the_model_server_and_leaves_the_rest() {
    let text = fixture("helm-stream.in.yaml");
    let report = inject_report(&text, &InjectOptions::default()).expect("inject");
    let ui_before = text
        .split("---\n")
        .find(|d| d.contains("name: chat-ui"))
        .expect("ui document");
    assert!(
        report.output.contains(ui_before),
        "the UI deployment changed"
    );
    assert!(
        report.output.contains("# Source: chat/templates/llm.yaml"),
        "comments kept"
    );
    assert!(
        report
            .notes
            .iter()
            .any(|n| n.contains("Deployment/chat-ui: skipped (nothing to watch")),
        "{:?}",
        report.notes
    );
    let (config, _) = upstreams_of(&report.output);
    assert_eq!(config["vllm"]["metrics"], "vllm");
    assert_eq!(config["vllm"]["livenessProbe"]["httpGet"]["port"], 8000);
}

#[test]
fn pod_level_problems_are_refused_or_warned() {
    let host = "apiVersion: v1\nkind: Pod\nmetadata: {name: edge}\nspec:\n  hostNetwork: true\n  containers:\n  - name: srv\n    image: x\n    ports: [{containerPort: 8000, hostPort: 9180}]\n    readinessProbe: {tcpSocket: {port: 8000}}\n";
    let e = error_of(host, &InjectOptions::default());
    assert!(
        matches!(
            &e,
            InjectError::Workload {
                problem: Problem::HostNetworkPortConflict { .. },
                ..
            }
        ),
        "{e}"
    );
    assert!(
        e.to_string().contains("Pod/edge") && e.to_string().contains("hostNetwork"),
        "{e}"
    );
    let fine = host.replace("hostPort: 9180", "hostPort: 8000");
    inject_documents(&fine, &InjectOptions::default()).expect("no collision");

    let unshared = host
        .replace("hostNetwork: true", "shareProcessNamespace: false")
        .replace(", hostPort: 9180", "");
    let report = inject_report(&unshared, &InjectOptions::default()).expect("inject");
    assert!(report.output.contains("shareProcessNamespace: true"));
    assert!(
        report
            .notes
            .iter()
            .any(|n| n.contains("warning: shareProcessNamespace was false")),
        "{:?}",
        report.notes
    );

    let named = unshared.replace("port: 8000}}", "port: web}}");
    let e = error_of(&named, &InjectOptions::default());
    assert!(
        e.to_string().contains("readinessProbe uses port \"web\""),
        "{e}"
    );

    let bad_profile = unshared.replace(
        "metadata: {name: edge}",
        "metadata: {name: edge, annotations: {vitals.dev/profile.srv: ollama}}",
    );
    let e = error_of(&bad_profile, &InjectOptions::default());
    assert!(e.to_string().contains("unknown profile \"ollama\""), "{e}");
    let chosen = bad_profile.replace("ollama", "none");
    let (config, _) =
        upstreams_of(&inject_documents(&chosen, &InjectOptions::default()).expect("inject"));
    assert!(config["srv"].get("metrics").is_none());
}

#[test]
fn a_single_container_is_a_worker_only_when_named() {
    let one = fixture("deployment.in.yaml");
    let (config, spec) = upstreams_of(&inject(&one, &[]));
    assert_eq!(
        config["embeddings"]["readinessProbe"]["httpGet"]["port"], 8080,
        "named port resolved"
    );
    let c = by_name(&spec["containers"], "embeddings").expect("container");
    assert!(by_name(&c["env"], env::NAME).is_none());
    let worker = inject(&one, &["--container".into(), "embeddings".into()]);
    assert!(worker.contains("--expect=embeddings") && !worker.contains(env::UPSTREAMS));
}

#[test]
fn a_custom_metrics_object_survives_reinjection() {
    let out = inject(&fixture("exec-probe.in.yaml"), &[]);
    let (config, _) = upstreams_of(&out);
    let mut custom = config.clone();
    custom["ollama"]["metrics"] = serde_json::json!({"port": 11434, "work": ["ollama_tokens_total"], "busy": ["ollama_running"]});
    // The JSON exactly as written (the schema's field order), quoted as YAML quotes it.
    let written = docs(&out)
        .iter()
        .flat_map(pod_templates)
        .find_map(|(_, _, spec)| {
            let agent = by_name(&spec["initContainers"], "vitals-agent")?;
            by_name(&agent["env"], env::UPSTREAMS)?["value"]
                .as_str()
                .map(str::to_string)
        })
        .expect(env::UPSTREAMS);
    let edited = out.replace(
        &serde_json::to_string(&written).expect("quoted"),
        &serde_json::to_string(&custom.to_string()).expect("quoted"),
    );
    assert_ne!(edited, out, "the fixture's config was found and edited");
    let (again, _) = upstreams_of(&inject(&edited, &[]));
    assert_eq!(again, custom);
}

/// Every container of every injected fixture whose liveness probe goes to the agent.
fn agent_liveness_probes() -> Vec<(String, Yaml)> {
    let mut out = Vec::new();
    for (name, text, flags) in fixtures() {
        for doc in docs(&inject(&text, &flags)) {
            for (_, _, spec) in pod_templates(&doc) {
                for c in spec["containers"].as_vec().into_iter().flatten() {
                    let live = &c["livenessProbe"];
                    if live["httpGet"]["port"].as_i64() == Some(9180)
                        && c["name"].as_str() != Some("vitals-agent")
                    {
                        let at = format!("{name} {}", c["name"].as_str().unwrap_or("?"));
                        out.push((at, live.clone()));
                    }
                }
            }
        }
    }
    out
}

/// Issue 21 item 1: the agent is never the reason a model restarts. While the agent is down
/// its port refuses and every probe fails; an outage of D seconds fails at most
/// floor(D/period)+1 probes, so a probe tolerates any outage under (failureThreshold − 1) ×
/// period. The agent's worst restart is 43 s (docs/probes.md, "The agent restarting": a
/// wedge detected in 16 s, killed in 5 s thanks to its probe-level grace, 20 s back-off, 2 s
/// to start); deploy/base's 5 s × 12 tolerates 55 s.
#[test]
fn liveness_on_the_agent_tolerates_the_agents_worst_restart() {
    let probes = agent_liveness_probes();
    assert!(probes.len() >= 10, "{probes:?}");
    for (at, live) in &probes {
        let period = live["periodSeconds"].as_i64().unwrap_or(10);
        let failures = live["failureThreshold"].as_i64().unwrap_or(3);
        assert!(
            (failures - 1) * period >= 55,
            "{at}: {period} s × {failures} tolerates only {} s",
            (failures - 1) * period
        );
    }
    // A more tolerant original is kept as it is: sglang's 30 s × 5 tolerates 120 s.
    let out = inject(&fixture("gpu-guaranteed.in.yaml"), &[]);
    let live = docs(&out)[0]["spec"]["template"]["spec"]["containers"][0]["livenessProbe"].clone();
    assert_eq!(
        (
            live["periodSeconds"].as_i64(),
            live["failureThreshold"].as_i64()
        ),
        (Some(30), Some(5))
    );
    // A wedged agent is killed within 5 s, not the pod's grace (600 s in this fixture).
    let out = inject(&fixture("root-vllm-istio.in.yaml"), &[]);
    let spec = &docs(&out)[0]["spec"]["template"]["spec"];
    assert_eq!(spec["terminationGracePeriodSeconds"].as_i64(), Some(600));
    let agent = by_name(&spec["initContainers"], "vitals-agent").expect("agent");
    assert_eq!(
        agent["livenessProbe"]["terminationGracePeriodSeconds"].as_i64(),
        Some(5)
    );
}

/// The Pod Security Standards' `restricted` profile, as
/// https://kubernetes.io/docs/concepts/security/pod-security-standards/ writes its rules
/// (Baseline's included), for one container in its pod: what it breaks, empty when none.
fn restricted_violations(spec: &Yaml, c: &Yaml) -> Vec<String> {
    let mut out = Vec::new();
    let pod_sc = &spec["securityContext"];
    let sc = &c["securityContext"];
    let effective = |key: &str| {
        if sc[key].is_badvalue() {
            pod_sc[key].clone()
        } else {
            sc[key].clone()
        }
    };
    // Baseline: privileged containers; capabilities beyond the default set.
    if sc["privileged"].as_bool() == Some(true) {
        out.push("privileged".into());
    }
    // Baseline: host ports (hostPort 0 or unset).
    for p in c["ports"].as_vec().into_iter().flatten() {
        if p["hostPort"].as_i64().unwrap_or(0) != 0 {
            out.push("hostPort".into());
        }
    }
    // Baseline: procMount Default; seccomp never Unconfined.
    if sc["procMount"].as_str().is_some_and(|m| m != "Default") {
        out.push("procMount".into());
    }
    // Restricted: privilege escalation must be false.
    if sc["allowPrivilegeEscalation"].as_bool() != Some(false) {
        out.push("allowPrivilegeEscalation is not false".into());
    }
    // Restricted: running as non-root (container or pod level true, neither false).
    if effective("runAsNonRoot").as_bool() != Some(true) {
        out.push("runAsNonRoot is not true".into());
    }
    // Restricted: running as a non-root user (runAsUser must not be 0).
    if effective("runAsUser").as_i64() == Some(0) {
        out.push("runAsUser 0".into());
    }
    // Restricted: seccomp RuntimeDefault or Localhost, at the container or the pod level.
    let seccomp = effective("seccompProfile");
    if !matches!(
        seccomp["type"].as_str(),
        Some("RuntimeDefault" | "Localhost")
    ) {
        out.push("seccompProfile is not RuntimeDefault or Localhost".into());
    }
    // Restricted: capabilities drop ALL, add at most NET_BIND_SERVICE.
    let drops: Vec<&str> = sc["capabilities"]["drop"]
        .as_vec()
        .into_iter()
        .flatten()
        .filter_map(Yaml::as_str)
        .collect();
    if !drops.contains(&"ALL") {
        out.push("capabilities do not drop ALL".into());
    }
    for add in sc["capabilities"]["add"].as_vec().into_iter().flatten() {
        if add.as_str() != Some("NET_BIND_SERVICE") {
            out.push(format!("adds capability {add:?}"));
        }
    }
    out
}

/// Issue 21 item 3: what inject adds satisfies Pod Security `restricted` in every fixture,
/// whatever the pod level says; a pod that satisfied it before still does after.
#[test]
fn what_inject_adds_satisfies_pod_security_restricted() {
    let restricted_pod = |spec: &Yaml| -> Vec<String> {
        let mut v = Vec::new();
        for key in ["initContainers", "containers"] {
            for c in spec[key].as_vec().into_iter().flatten() {
                for problem in restricted_violations(spec, c) {
                    v.push(format!("{}: {problem}", c["name"].as_str().unwrap_or("?")));
                }
            }
        }
        // Restricted: only these volume types (the socket is an emptyDir).
        for vol in spec["volumes"].as_vec().into_iter().flatten() {
            let ok = [
                "configMap",
                "csi",
                "downwardAPI",
                "emptyDir",
                "ephemeral",
                "persistentVolumeClaim",
                "projected",
                "secret",
            ]
            .iter()
            .any(|t| !vol[*t].is_badvalue());
            if !ok {
                v.push(format!("volume {:?}", vol["name"]));
            }
        }
        v
    };
    for (name, text, flags) in fixtures() {
        for doc in docs(&inject(&text, &flags)) {
            for (_, _, spec) in pod_templates(&doc) {
                let agent = by_name(&spec["initContainers"], "vitals-agent")
                    .or_else(|| by_name(&spec["containers"], "vitals-agent"));
                if let Some(agent) = agent {
                    let v = restricted_violations(&spec, agent);
                    assert!(v.is_empty(), "{name}: the agent breaks restricted: {v:?}");
                }
            }
        }
    }
    let text = fixture("pss-restricted.in.yaml");
    let before = docs(&text);
    assert_eq!(restricted_pod(&before[0]["spec"]), Vec::<String>::new());
    let after = docs(&inject(&text, &[]));
    assert_eq!(restricted_pod(&after[0]["spec"]), Vec::<String>::new());
}

fn agent_of(spec: &Yaml) -> &Yaml {
    by_name(&spec["initContainers"], "vitals-agent").expect("agent")
}

/// Issue 21 item 5: a Guaranteed pod stays Guaranteed; a Burstable one keeps the agent's
/// small requests.
#[test]
fn a_guaranteed_pod_stays_guaranteed() {
    let out = docs(&inject(&fixture("gpu-guaranteed.in.yaml"), &[]));
    let r = &agent_of(&out[0]["spec"]["template"]["spec"])["resources"];
    assert_eq!(r["requests"], r["limits"], "{r:?}");
    assert_eq!(r["limits"]["cpu"].as_str(), Some("200m"));
    let out = docs(&inject(&fixture("root-vllm-istio.in.yaml"), &[]));
    let r = &agent_of(&out[0]["spec"]["template"]["spec"])["resources"];
    assert_eq!(r["requests"]["cpu"].as_str(), Some("10m"));
}

/// Issue 21 item 10: the agent names its user only where the pod-level user is root.
#[test]
fn the_agent_names_its_user_only_in_root_pods() {
    let root = docs(&inject(&fixture("run-as-root.in.yaml"), &[]));
    let spec = pod_templates(&root[0]).remove(0).2;
    assert_eq!(
        agent_of(&spec)["securityContext"]["runAsUser"].as_i64(),
        Some(65532)
    );
    let image_root = docs(&inject(&fixture("root-vllm-istio.in.yaml"), &[]));
    let sc = &agent_of(&image_root[0]["spec"]["template"]["spec"])["securityContext"];
    assert!(sc["runAsUser"].is_badvalue(), "{sc:?}");
    assert_eq!(sc["runAsNonRoot"].as_bool(), Some(true));
}

/// Issue 21 items 6, 8, 9: unknown kinds with containers are refused (naming the kind)
/// unless skipped; hostNetwork and the default image are warned about.
#[test]
fn unknown_kinds_host_network_and_the_default_image() {
    let text = std::fs::read_to_string(fixture_dir().join("err-kserve.yaml")).expect("fixture");
    let e = error_of(&text, &InjectOptions::default());
    assert!(
        matches!(
            &e,
            InjectError::Workload {
                problem: Problem::UnknownKind { .. },
                ..
            }
        ),
        "{e}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains("InferenceService/llama")
            && msg.contains("serving.kserve.io/v1beta1 InferenceService")
            && msg.contains(".spec.predictor.containers")
            && msg.contains("--skip-unknown"),
        "{msg}"
    );
    let skipped = inject_report(
        &text,
        &InjectOptions {
            skip_unknown: true,
            ..Default::default()
        },
    );
    // Nothing else to inject: still an error-free pass-through, with a warning.
    let report = skipped.expect("skip-unknown passes it through");
    assert_eq!(report.output, text.trim_start_matches('\u{feff}'));
    assert!(
        report.notes.iter().any(|n| n.contains("NOT watch")),
        "{:?}",
        report.notes
    );

    let out = common::agent_cmd()
        .args(["inject", "-f"])
        .arg(fixture_dir().join("err-kserve.yaml"))
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());

    let host = "apiVersion: v1\nkind: Pod\nmetadata: {name: edge}\nspec:\n  hostNetwork: true\n  containers:\n  - name: srv\n    image: x\n    readinessProbe: {tcpSocket: {port: 8000}}\n";
    let report = inject_report(host, &InjectOptions::default()).expect("inject");
    let warned = |what: &str| report.notes.iter().any(|n| n.contains(what));
    assert!(
        warned("reachable on the node's IP") && warned("collide"),
        "{:?}",
        report.notes
    );
    assert!(warned("no --image given: the agent image is vitals-agent:"));
    let with_image = inject_report(
        host,
        &InjectOptions {
            image: Some("registry.example/vitals-agent:1".into()),
            ..Default::default()
        },
    )
    .expect("inject");
    assert!(!with_image.notes.iter().any(|n| n.contains("--image")));
}

/// Issue 18 item 5: both templates of a LeaderWorkerSet get an agent with its role; the
/// leader's members come from the downward API; the headless worker is watched by /proc
/// with a conservative liveness probe on its agent.
#[test]
fn a_leader_worker_set_gets_a_leader_and_members() {
    let out = inject(&fixture("lws-vllm.in.yaml"), &[]);
    let templates = pod_templates(&docs(&out)[0]);
    let env_of = |spec: &Yaml, name: &str| by_name(&agent_of(spec)["env"], name).cloned();
    let (leader, worker) = (&templates[0].2, &templates[1].2);
    assert_eq!(
        env_of(leader, env::GROUP_ROLE).map(|e| e["value"].clone()),
        Some(Yaml::String("leader".into()))
    );
    let field = |e: Option<Yaml>| {
        e.and_then(|e| {
            e["valueFrom"]["fieldRef"]["fieldPath"]
                .as_str()
                .map(str::to_string)
        })
    };
    assert_eq!(
        field(env_of(leader, env::GROUP_SIZE)).as_deref(),
        Some("metadata.annotations['leaderworkerset.sigs.k8s.io/size']")
    );
    assert_eq!(
        field(env_of(leader, env::GROUP_POD_NAME)).as_deref(),
        Some("metadata.name")
    );
    assert_eq!(
        field(env_of(leader, env::GROUP_SUBDOMAIN)).as_deref(),
        Some("metadata.labels['leaderworkerset.sigs.k8s.io/name']")
    );
    assert_eq!(
        env_of(worker, env::GROUP_ROLE).map(|e| e["value"].clone()),
        Some(Yaml::String("member".into()))
    );
    assert!(env_of(worker, env::GROUP_SIZE).is_none());
    // The leader's model container: probes on the agent, a liveness for group_broken.
    let vllm = by_name(&leader["containers"], "vllm-leader").expect("leader");
    assert_eq!(
        vllm["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/readyz/vllm-leader")
    );
    assert_eq!(
        vllm["livenessProbe"]["httpGet"]["path"].as_str(),
        Some("/livez/vllm-leader")
    );
    // The worker's headless container: only its process in the config, a liveness probe.
    let json = env_of(worker, env::UPSTREAMS).expect("upstreams")["value"]
        .as_str()
        .expect("text")
        .to_string();
    let config: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    assert_eq!(
        config["vllm-worker"]
            .as_object()
            .map(|o| o.keys().cloned().collect::<Vec<_>>()),
        Some(vec!["process".to_string()])
    );
    assert_eq!(config["vllm-worker"]["process"]["cmdline"][0], "sh");
    let member = by_name(&worker["containers"], "vllm-worker").expect("worker");
    let live = &member["livenessProbe"];
    assert_eq!(live["httpGet"]["path"].as_str(), Some("/livez/vllm-worker"));
    assert_eq!(
        (
            live["periodSeconds"].as_i64(),
            live["failureThreshold"].as_i64()
        ),
        (Some(10), Some(7))
    );
    let specs = upstream_config::parse(&json, &[], |_| None).expect("the agent accepts it");
    assert!(specs[0].probes.is_empty() && specs[0].process.is_some());

    // Without a leaderTemplate, LWS runs the workerTemplate for the leader: inject copies
    // it so the leader gets its role; a LeaderReady startup would deadlock and is warned.
    let no_leader = fixture("lws-vllm.in.yaml");
    let start = no_leader.find("    leaderTemplate:").expect("leader");
    let end = no_leader.find("    workerTemplate:").expect("worker");
    let no_leader = format!("{}{}", &no_leader[..start], &no_leader[end..]).replace(
        "  replicas: 1\n",
        "  replicas: 1\n  startupPolicy: LeaderReady\n",
    );
    let report = inject_report(&no_leader, &InjectOptions::default()).expect("inject");
    let templates = pod_templates(&docs(&report.output)[0]);
    assert_eq!(
        env_of(&templates[0].2, env::GROUP_ROLE).map(|e| e["value"].clone()),
        Some(Yaml::String("leader".into()))
    );
    assert!(
        report.notes.iter().any(|n| n.contains("LeaderReady")),
        "{:?}",
        report.notes
    );
}

/// The kubelet's liveness rule over a timeline: probes every `period` seconds from `phase`;
/// a probe during `outage` fails (the agent's port refuses or does not answer), any other
/// passes; `failures` failures in a row restart the container. Times in tenths of a second.
fn kubelet_restarts(period: u64, failures: u64, phase: u64, outage: (u64, u64)) -> bool {
    let mut in_a_row = 0;
    let mut t = phase;
    while t < outage.1 + (failures + 1) * period * 10 {
        if (outage.0..outage.1).contains(&t) {
            in_a_row += 1;
            if in_a_row >= failures {
                return true;
            }
        } else {
            in_a_row = 0;
        }
        t += period * 10;
    }
    false
}

/// Issue 21 item 1, the way e2e s12 tests protocol workers, on inject's own output: the
/// agent's worst restart (43 s, docs/probes.md "The agent restarting") and three crashes
/// back to back (36 s), at every phase of the probe schedule, never make the kubelet
/// restart a model whose liveness inject pointed at the agent; vLLM's usual 10 s × 3 as
/// it was before injection would have been restarted.
#[test]
fn an_agent_restart_never_restarts_the_model_it_watches() {
    const WORST_RESTART: u64 = 430;
    const THREE_CRASHES: u64 = 360;
    let probes = agent_liveness_probes();
    for (at, live) in &probes {
        let number = |key: &str, default: u64| {
            live[key]
                .as_i64()
                .and_then(|n| u64::try_from(n).ok())
                .unwrap_or(default)
        };
        let (period, failures) = (number("periodSeconds", 10), number("failureThreshold", 3));
        for outage in [WORST_RESTART, THREE_CRASHES] {
            for phase in 0..period * 10 {
                assert!(
                    !kubelet_restarts(period, failures, phase, (1000, 1000 + outage)),
                    "{at}: {period} s × {failures}: an agent outage of {} s at phase {} s restarts the model",
                    outage / 10,
                    phase / 10
                );
            }
        }
    }
    assert!(
        kubelet_restarts(10, 3, 0, (1000, 1000 + WORST_RESTART)),
        "the original 10 s × 3 would restart vLLM: the test must be able to fail"
    );
}

#[test]
fn the_canary_annotation_asks_for_a_canary_the_agent_accepts() {
    let plain = fixture("vllm-deployment.in.yaml");
    let with = |value: &str| {
        plain.replacen(
            "      labels:\n        app: llama-3-8b\n",
            &format!("      labels:\n        app: llama-3-8b\n      annotations:\n        vitals.dev/canary.vllm: '{value}'\n"),
            1,
        )
    };
    let canary_of = |text: &str| {
        let (config, _) =
            upstreams_of(&inject_documents(text, &InjectOptions::default()).expect("inject"));
        config["vllm"].get("canary").cloned()
    };
    assert_eq!(canary_of(&plain), None, "off unless asked for");
    assert_eq!(canary_of(&with("on")), Some(serde_json::json!({})));
    assert_eq!(canary_of(&with("off")), None);
    assert_eq!(
        canary_of(&with(r#"{"idle": "5m", "deadline": "20s"}"#)),
        Some(serde_json::json!({"idle": "5m", "deadline": "20s"}))
    );
    // Re-injection without the annotation keeps what an earlier one wrote.
    let once = inject_documents(&with("on"), &InjectOptions::default()).expect("inject");
    let again = once.replace("vitals.dev/canary.vllm: 'on'", "x: y");
    let (config, _) =
        upstreams_of(&inject_documents(&again, &InjectOptions::default()).expect("inject"));
    assert_eq!(config["vllm"]["canary"], serde_json::json!({}));
    for (value, want) in [
        (
            "yes",
            "vitals.dev/canary.vllm: expected on, off or a canary object",
        ),
        (
            r#"{"idle": "soon"}"#,
            "vitals.dev/canary.vllm: upstreams.vllm.canary.idle: \"soon\" is not a duration",
        ),
    ] {
        let e = error_of(&with(value), &InjectOptions::default()).to_string();
        assert!(e.contains(want), "{value}: {e}");
    }
    // A profile without a default request needs one written out.
    let triton = with("on").replace(
        "vllm/vllm-openai:v0.8.5",
        "nvcr.io/nvidia/tritonserver:24.08-py3",
    );
    let e = error_of(&triton, &InjectOptions::default()).to_string();
    assert!(
        e.contains("canary.request: required: profile triton has no default canary request"),
        "{e}"
    );
}

//! `vitals-agent inject` on manifests as users write them (tests/fixtures/inject/*.in.yaml,
//! flags on each file's first line `# inject-args: ...`): golden outputs, SPEC §6 wiring,
//! everything else preserved, idempotence, updates of older injections, errors.
//! `UPDATE_GOLDEN=1 cargo test -p vitals-agent --test inject` rewrites the *.out.yaml files
//! (review the diff).

use std::path::{Path, PathBuf};
use std::process::Command;

use clap::Parser;
use vitals_agent::inject::{
    inject_documents, inject_report, InjectArgs, InjectError, InjectOptions, Problem, AGENT_UID,
    UPSTREAMS_ENV, VERSION,
};
use vitals_agent::upstream::config as upstream_config;
use vitals_proto::WorkerName;
use yaml_rust2::{Yaml, YamlLoader};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: InjectArgs,
}

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/inject")
}

/// Every `*.in.yaml` fixture: (name, input text, flags).
fn fixtures() -> Vec<(String, String, Vec<String>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(fixture_dir()).expect("fixture dir") {
        let path = entry.expect("dir entry").path();
        let Some(name) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".in.yaml"))
        else {
            continue;
        };
        let text = std::fs::read_to_string(&path).expect("fixture");
        let flags = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# inject-args:"))
            .unwrap_or_else(|| panic!("{name}: first line must be `# inject-args: ...`"))
            .split_whitespace()
            .map(str::to_string)
            .collect();
        out.push((name.to_string(), text, flags));
    }
    out.sort();
    assert!(out.len() >= 7, "fixtures missing: {out:?}");
    out
}

fn options(flags: &[String]) -> InjectOptions {
    let argv = std::iter::once("inject".to_string()).chain(flags.iter().cloned());
    Cli::try_parse_from(argv)
        .expect("fixture flags parse")
        .args
        .options()
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
    let kind = y["kind"].as_str().unwrap_or("").to_string();
    let path: &[&str] = match kind.as_str() {
        "List" => {
            return y["items"]
                .as_vec()
                .into_iter()
                .flatten()
                .flat_map(pod_templates)
                .collect()
        }
        "Pod" => &[],
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => &["spec", "template"],
        "CronJob" => &["spec", "jobTemplate", "spec", "template"],
        _ => return Vec::new(),
    };
    let t = get(y, path);
    vec![(kind, t["metadata"].clone(), t["spec"].clone())]
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
                for (probe, path) in [("startupProbe", "/livez"), ("livenessProbe", "/livez")] {
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
                assert!(args.contains(&"--listen=0.0.0.0:9180"), "{at}: {args:?}");
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
                        env("VITALS_AGENT_SOCKET"),
                        Some("/run/vitals/agent.sock"),
                        "{at} {w}"
                    );
                    assert_eq!(env("VITALS_NAME"), Some(*w), "{at} {w}");
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
    let pod_ip = env("POD_IP").unwrap_or_else(|| panic!("{at}: agent without POD_IP"));
    assert_eq!(
        pod_ip["valueFrom"]["fieldRef"]["fieldPath"].as_str(),
        Some("status.podIP"),
        "{at}"
    );
    assert_eq!(
        agent["securityContext"]["runAsUser"].as_i64(),
        Some(i64::from(AGENT_UID)),
        "{at}"
    );
    let expect: Vec<WorkerName> = workers
        .iter()
        .map(|w| WorkerName::parse(*w).expect("worker name"))
        .collect();
    let json = env(UPSTREAMS_ENV).and_then(|e| e["value"].as_str().map(str::to_string));
    let specs = match &json {
        Some(text) => upstream_config::parse(text, &expect)
            .unwrap_or_else(|e| panic!("{at}: the agent refuses inject's upstreams: {e}")),
        None => Vec::new(),
    };
    for c in spec["containers"].as_vec().into_iter().flatten() {
        let name = c["name"].as_str().unwrap_or("");
        if workers.contains(&name) || name == "vitals-agent" {
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
                u.probes.keys().any(|k| k.key() == key),
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

#[test]
fn the_binary_writes_nothing_on_error_and_everything_on_success() {
    let bin = env!("CARGO_BIN_EXE_vitals-agent");
    let bad = fixture_dir().join("err-unparsable.yaml");
    let out = Command::new(bin)
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
    let out = Command::new(bin)
        .args(["inject", "-f"])
        .arg(fixture_dir().join("err-no-worker-chosen.yaml"))
        .output()
        .expect("run vitals-agent");
    assert!(!out.status.success() && out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("document 1 (Pod/two)"), "{err}");
    assert_eq!(err.matches("none chosen").count(), 1, "{err}");

    let good = fixture_dir().join("statefulset-two-containers.in.yaml");
    let out = Command::new(bin)
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
    let mut child = Command::new(bin)
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
    let json = by_name(&agent["env"], UPSTREAMS_ENV)
        .and_then(|e| e["value"].as_str())
        .expect("VITALS_UPSTREAMS");
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
    assert_eq!(live["failureThreshold"].as_i64(), Some(3));
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
    assert!(by_name(&c["env"], "VITALS_NAME").is_none());
    let worker = inject(&one, &["--container".into(), "embeddings".into()]);
    assert!(worker.contains("--expect=embeddings") && !worker.contains(UPSTREAMS_ENV));
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
            by_name(&agent["env"], UPSTREAMS_ENV)?["value"]
                .as_str()
                .map(str::to_string)
        })
        .expect("VITALS_UPSTREAMS");
    let edited = out.replace(
        &serde_json::to_string(&written).expect("quoted"),
        &serde_json::to_string(&custom.to_string()).expect("quoted"),
    );
    assert_ne!(edited, out, "the fixture's config was found and edited");
    let (again, _) = upstreams_of(&inject(&edited, &[]));
    assert_eq!(again, custom);
}

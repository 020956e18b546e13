//! LeaderWorkerSet's pods as its controllers and pod webhook build them (the toolkit's `lws`,
//! from LWS's source) through `vitals-agent webhook`'s review (SPEC §10, §11): the group each
//! pod is wired into, the agent a group pod gets, the members a leader finds in every
//! identity mode, idempotence on the pod as the API server stores it (the toolkit's
//! `apiserver`), and the one transform: the pods LWS makes from `inject`'s templates are the
//! pods the webhook makes from LWS's own.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use clap::Parser;
use common::fixtures::fixture_dir;
use common::kubelet::{agent, agent_env};
use common::review::{admit, Admitted};
use common::yaml::yaml_to_json;
use serde_json::{json, Value};
use vitals_agent::config::{Config, Group, RunArgs};
use vitals_agent::inject::webhook::Outcome;
use vitals_agent::inject::{inject_documents, inject_report, InjectError, InjectOptions, Problem};
use vitals_e2e::{apiserver, lws};
use vitals_proto::env;
use yaml_rust2::YamlLoader;

/// The agent's largest peak resident memory under the benches (docs/benchmarks.md, "Memory
/// limit in group pods": the debug build under the connection flood), in MiB: the group
/// memory limit must be at least 4x this (SPEC §11).
const PEAK_RSS_MIB: f64 = 30.7;

fn options() -> InjectOptions {
    InjectOptions {
        image: Some("registry.example/vitals/vitals-agent:0.1.0".into()),
        ..InjectOptions::default()
    }
}

/// The identity and subdomain modes of a LeaderWorkerSet, as the lines they add to its spec.
const MODES: [(&str, &str); 4] = [
    ("Ordinal, Shared", ""),
    (
        "Ordinal, UniquePerReplica",
        "  networkConfig:\n    subdomainPolicy: UniquePerReplica\n",
    ),
    ("Hash, Shared", "  groupIdentity: Hash\n"),
    (
        "Hash, UniquePerReplica",
        "  groupIdentity: Hash\n  networkConfig:\n    subdomainPolicy: UniquePerReplica\n",
    ),
];

/// LWS's own vLLM example (tests/fixtures/inject/lws-vllm.in.yaml) with 3 pods a group and
/// `spec_lines` added to its spec, as YAML.
fn lws_yaml(spec_lines: &str) -> String {
    std::fs::read_to_string(fixture_dir().join("lws-vllm.in.yaml"))
        .unwrap()
        .replace("    size: 2\n", "    size: 3\n")
        .replace("  replicas: 1\n", &format!("  replicas: 1\n{spec_lines}"))
}

/// A LeaderWorkerSet's YAML as the object LWS reads, in namespace `ml`.
fn lws_object(yaml: &str) -> Value {
    let mut lws = yaml_to_json(&YamlLoader::load_from_str(yaml).unwrap()[0]);
    lws["metadata"]["namespace"] = json!("ml");
    lws
}

/// The group's pods as they reach the webhooks after LWS's: the leader (`group` 0) and its
/// two workers, the workers made once the API server named the leader.
fn group_pods(lws: &Value) -> (Value, Vec<Value>) {
    let leader = lws::leader_pod(lws, 0);
    let named = match leader["metadata"].get("name") {
        Some(_) => leader.clone(),
        None => lws::with_generated_name(leader.clone(), "x2kkp"),
    };
    let workers = (1..3).map(|i| lws::worker_pod(lws, &named, i)).collect();
    (leader, workers)
}

#[derive(Parser)]
struct Run {
    #[command(flatten)]
    args: RunArgs,
}

/// The agent's group configuration from its env (every `VITALS_GROUP_*` as its flag, and
/// the namespace that makes the members' names fully qualified), in a cluster whose domain
/// is `cluster.local`.
fn group_config(pod: &Value) -> Group {
    let mut argv = vec![
        "run".to_string(),
        "--cluster-domain=cluster.local".to_string(),
    ];
    for (name, value) in agent_env(pod) {
        if let Some(flag) = name.strip_prefix("VITALS_GROUP_") {
            argv.push(format!(
                "--group-{}={value}",
                flag.to_lowercase().replace('_', "-")
            ));
        }
        if name == env::POD_NAMESPACE {
            argv.push(format!("--pod-namespace={value}"));
        }
    }
    let args = Run::try_parse_from(&argv)
        .unwrap_or_else(|e| panic!("{argv:?}: {e}"))
        .args;
    Config::try_from(args)
        .unwrap_or_else(|e| panic!("{argv:?}: {e}"))
        .group
}

/// The pod the API server stores: named (a generated name), defaulted.
fn stored(mut pod: Value) -> Value {
    if pod["metadata"].get("generateName").is_some() && pod["metadata"].get("name").is_none() {
        pod = lws::with_generated_name(pod, "x2kkp");
    }
    apiserver::default_pod(&mut pod);
    pod
}

/// A JSON Patch, one line per operation, values cut at 90 characters.
fn shortened(patch: &Option<Value>) -> String {
    let Some(Value::Array(ops)) = patch else {
        return "  (no patch)".into();
    };
    ops.iter()
        .map(|op| {
            let value = op.get("value").map(Value::to_string).unwrap_or_default();
            let cut: String = value.chars().take(90).collect();
            let more = if cut.len() < value.len() { " …" } else { "" };
            format!(
                "  {} {} {cut}{more}",
                op["op"].as_str().unwrap(),
                op["path"].as_str().unwrap()
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn lws_pods_get_their_group_from_what_lws_wrote_on_them() {
    let (leader, workers) = group_pods(&lws_object(&lws_yaml("")));
    let leader = admit(&leader, &options());
    eprintln!(
        "webhook patch, LWS leader pod:\n{}",
        shortened(&leader.patch)
    );
    assert_eq!(leader.outcome, Outcome::Injected, "{:?}", leader.warnings);
    let env = agent_env(&leader.pod);
    let get = |env: &[(String, String)], k: &str| {
        env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    };
    assert_eq!(get(&env, env::GROUP_ROLE).as_deref(), Some("leader"));
    assert_eq!(get(&env, env::GROUP_SIZE).as_deref(), Some("3"));
    // A member whose only workload is a headless Ray worker: injected, its process watched.
    let worker = admit(&workers[0], &options());
    eprintln!(
        "webhook patch, LWS worker pod:\n{}",
        shortened(&worker.patch)
    );
    assert_eq!(worker.outcome, Outcome::Injected, "{:?}", worker.warnings);
    let env = agent_env(&worker.pod);
    assert_eq!(get(&env, env::GROUP_ROLE).as_deref(), Some("member"));
    let upstreams: Value =
        serde_json::from_str(&get(&env, env::UPSTREAMS).expect("upstreams")).unwrap();
    assert!(
        upstreams["vllm-worker"]["process"].is_object(),
        "{upstreams}"
    );
    assert_eq!(group_config(&worker.pod), Group::Member);
}

#[test]
fn the_leader_finds_exactly_its_members_in_every_identity_mode() {
    for (mode, lines) in MODES {
        let lws = lws_object(&lws_yaml(lines));
        let (leader, _) = group_pods(&lws);
        let leader = stored(admit(&leader, &options()).pod);
        // The workers LWS makes for this leader as stored (its name, its subdomain).
        let expected: Vec<String> = (1..3)
            .map(|i| {
                let w = lws::worker_pod(&lws, &leader, i);
                format!(
                    "{}.{}",
                    w["spec"]["hostname"].as_str().unwrap(),
                    w["spec"]["subdomain"].as_str().unwrap()
                )
            })
            .collect();
        let Group::Leader(g) = group_config(&leader) else {
            panic!("{mode}: the leader's agent is no leader");
        };
        let hosts: Vec<&str> = g.members.iter().map(|m| m.host.as_str()).collect();
        eprintln!("{mode}: members {hosts:?}, LWS's workers {expected:?}");
        assert_eq!(hosts.len(), expected.len(), "{mode}");
        for (host, want) in hosts.iter().zip(&expected) {
            // The same name, fully qualified (SPEC §11: no search-list walk).
            assert_eq!(
                host.strip_prefix(want.as_str()),
                Some(".ml.svc.cluster.local."),
                "{mode}: the leader polls {host}, LWS's worker is {want}"
            );
        }
    }
}

#[test]
fn the_agent_of_a_group_pod_is_never_why_lws_recreates_the_group() {
    let (leader, workers) = group_pods(&lws_object(&lws_yaml("")));
    for pod in [leader, workers[0].clone()] {
        let admitted = admit(&pod, &options()).pod;
        let a = agent(&admitted);
        let what = format!("{:#}", a);
        // lws pod_utils.go ContainerRestarted counts init containers too: nothing may
        // restart the agent but its own exit.
        assert!(a.get("livenessProbe").is_none(), "{what}");
        let startup = &a["startupProbe"];
        let (period, failures) = (
            startup["periodSeconds"].as_u64().unwrap(),
            startup["failureThreshold"].as_u64().unwrap(),
        );
        assert!((failures - 1) * period >= 300, "{what}");
        let limits = &a["resources"]["limits"];
        assert!(limits.get("cpu").is_none(), "{what}");
        let memory = limits["memory"].as_str().unwrap();
        let mib: f64 = memory.strip_suffix("Mi").unwrap().parse().unwrap();
        assert!(
            mib >= 4.0 * PEAK_RSS_MIB,
            "{memory} < 4 x {PEAK_RSS_MIB} MiB"
        );
    }
    // A Guaranteed group pod stays Guaranteed: requests = limits, a CPU its ticker cannot
    // exhaust.
    let guaranteed = lws_yaml("").replace(
        "          resources:\n            limits:\n              nvidia.com/gpu: \"8\"\n",
        "          resources:\n            limits:\n              nvidia.com/gpu: \"8\"\n              cpu: \"16\"\n              memory: 200Gi\n",
    );
    let (leader, _) = group_pods(&lws_object(&guaranteed));
    let admitted = admit(&leader, &options()).pod;
    let r = &agent(&admitted)["resources"];
    assert_eq!(r["requests"], r["limits"], "{r}");
    assert_eq!(r["limits"]["cpu"], "1", "{r}");
}

#[test]
fn an_injected_pod_as_the_api_server_stores_it_gets_no_patch() {
    let mut pods: Vec<(String, Value)> = Vec::new();
    for (mode, lines) in MODES {
        let (leader, workers) = group_pods(&lws_object(&lws_yaml(lines)));
        pods.push((format!("{mode} leader"), leader));
        pods.push((format!("{mode} worker"), workers[0].clone()));
    }
    for (name, text, flags) in common::fixtures::fixtures() {
        // The webhook has no --container: fixtures that need one are the webhook tests'.
        if !flags.is_empty() || name.starts_with("lws") {
            continue;
        }
        for y in YamlLoader::load_from_str(&text).unwrap() {
            for (_, t) in common::fixtures::pod_templates(&y) {
                let mut pod = json!({"spec": yaml_to_json(&t["spec"])});
                if !t["metadata"].is_badvalue() {
                    pod["metadata"] = yaml_to_json(&t["metadata"]);
                }
                pods.push((name.clone(), pod));
            }
        }
    }
    let mut checked = 0;
    for (name, pod) in pods {
        let first = admit(&pod, &options());
        if first.outcome != Outcome::Injected {
            continue;
        }
        let again = admit(&stored(first.pod), &options());
        if checked == 0 {
            eprintln!(
                "webhook answer, {name} injected then defaulted: {:?}\n{}",
                again.outcome,
                shortened(&again.patch)
            );
        }
        assert_eq!(
            (again.outcome, &again.patch),
            (Outcome::AlreadyInjected, &None),
            "{name}: the stored pod got\n{}",
            shortened(&again.patch)
        );
        checked += 1;
    }
    assert!(checked >= 12, "only {checked} pods injected");
}

#[test]
fn reinvocation_puts_the_agent_back_first() {
    let (leader, _) = group_pods(&lws_object(&lws_yaml("")));
    let mut pod = stored(admit(&leader, &options()).pod);
    // A webhook after ours adds its own init container in front (as Istio's istio-init).
    pod["spec"]["initContainers"]
        .as_array_mut()
        .unwrap()
        .insert(
            0,
            json!({"name": "istio-init", "image": "istio/proxyv2:1.24.0"}),
        );
    let Admitted { outcome, pod, .. } = admit(&pod, &options());
    assert_eq!(outcome, Outcome::Injected);
    let names: Vec<&str> = pod["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["vitals-agent", "istio-init"]);
}

#[test]
fn a_pod_with_nothing_to_watch_is_skipped_silently() {
    let batch = json!({"metadata": {"generateName": "report-29000000-"},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "report", "image": "busybox:1.36"}]}});
    let a = admit(&batch, &options());
    assert_eq!(
        (a.outcome, a.patch, a.warnings),
        (Outcome::Skipped, None, Vec::<String>::new())
    );
}

#[test]
fn a_host_network_group_without_cluster_dns_is_warned() {
    let host_network = lws_yaml("").replace(
        "      spec:\n        containers:\n        - name: vllm-leader",
        "      spec:\n        hostNetwork: true\n        containers:\n        - name: vllm-leader",
    );
    let (leader, _) = group_pods(&lws_object(&host_network));
    let a = admit(&leader, &options());
    assert!(
        a.warnings
            .iter()
            .any(|w| w.contains("dnsPolicy: ClusterFirstWithHostNet")),
        "{:?}",
        a.warnings
    );
    let fixed = host_network.replace(
        "hostNetwork: true\n",
        "hostNetwork: true\n        dnsPolicy: ClusterFirstWithHostNet\n",
    );
    let (leader, _) = group_pods(&lws_object(&fixed));
    let a = admit(&leader, &options());
    assert!(
        !a.warnings.iter().any(|w| w.contains("dnsPolicy")),
        "{:?}",
        a.warnings
    );
}

#[test]
fn inject_refuses_a_hash_lws_with_a_service_per_group() {
    let err = inject_report(&lws_yaml(MODES[3].1), &options()).unwrap_err();
    assert!(
        matches!(
            err,
            InjectError::Workload {
                problem: Problem::HashPerReplicaSubdomain,
                ..
            }
        ),
        "{err}"
    );
}

/// SPEC §10's one transform: for the pods LWS makes, the webhook's pod is `inject`'s — the
/// same agent, the same wiring — and a pod made from an injected template is left alone.
#[test]
fn the_webhook_gives_lws_pods_what_inject_gives_their_templates() {
    for (mode, lines) in &MODES[..3] {
        let plain = lws_object(&lws_yaml(lines));
        let injected = lws_object(&inject_documents(&lws_yaml(lines), &options()).unwrap());
        let (leader, workers) = group_pods(&plain);
        let (cli_leader, cli_workers) = group_pods(&injected);
        for (role, pod, cli_pod) in [
            ("leader", leader, cli_leader),
            ("worker", workers[0].clone(), cli_workers[0].clone()),
        ] {
            let by_webhook = admit(&pod, &options());
            assert_eq!(by_webhook.outcome, Outcome::Injected, "{mode} {role}");
            // LWS's pod webhook put its env in front of the template's agent too (pod_utils.go
            // AddLWSVariables): the one difference, and not the agent's.
            let mut expected = cli_pod.clone();
            for c in expected["spec"]["initContainers"].as_array_mut().unwrap() {
                if c["name"] == "vitals-agent" {
                    c["env"]
                        .as_array_mut()
                        .unwrap()
                        .retain(|e| !e["name"].as_str().unwrap().starts_with("LWS_"));
                }
            }
            assert_eq!(
                agent(&by_webhook.pod),
                agent(&expected),
                "{mode} {role}: the agent"
            );
            assert_eq!(by_webhook.pod, expected, "{mode} {role}: the pod");
            let again = admit(&cli_pod, &options());
            assert_eq!(
                (again.outcome, &again.patch),
                (Outcome::AlreadyInjected, &None),
                "{mode} {role}: a pod of an injected template\n{}",
                shortened(&again.patch)
            );
        }
    }
}

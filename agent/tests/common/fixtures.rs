//! inject's fixtures (tests/fixtures/inject/*.in.yaml) and the pod templates in a manifest,
//! read the one way the inject and webhook tests both read them.

use std::path::{Path, PathBuf};

use clap::Parser;
use vitals_agent::inject::InjectArgs;
use yaml_rust2::Yaml;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: InjectArgs,
}

/// The folder of inject's fixtures.
pub fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/inject")
}

/// Every `*.in.yaml`, sorted by name: (name, text, flags from its first line
/// `# inject-args: ...`).
pub fn fixtures() -> Vec<(String, String, Vec<String>)> {
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
    out
}

/// A fixture's flags as `vitals-agent inject` parses them.
pub fn inject_args(flags: &[String]) -> InjectArgs {
    let argv = std::iter::once("inject".to_string()).chain(flags.iter().cloned());
    Cli::try_parse_from(argv).expect("fixture flags parse").args
}

/// Every pod template of a document, with the kind of the object that holds it: a Pod
/// itself, the template of a workload (a CronJob's job's), both of a LeaderWorkerSet's, and
/// those of a List's items; none for other kinds.
pub fn pod_templates(y: &Yaml) -> Vec<(&str, &Yaml)> {
    let kind = y["kind"].as_str().unwrap_or("");
    let path: &[&str] = match kind {
        "List" => {
            return y["items"]
                .as_vec()
                .into_iter()
                .flatten()
                .flat_map(pod_templates)
                .collect()
        }
        "Pod" => &[],
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "Job"
        | "ReplicationController" => &["spec", "template"],
        "CronJob" => &["spec", "jobTemplate", "spec", "template"],
        "LeaderWorkerSet" => {
            let lws = &y["spec"]["leaderWorkerTemplate"];
            return vec![
                (kind, &lws["leaderTemplate"]),
                (kind, &lws["workerTemplate"]),
            ];
        }
        _ => return Vec::new(),
    };
    vec![(kind, path.iter().fold(y, |y, k| &y[*k]))]
}

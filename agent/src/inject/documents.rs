//! Reading and walking the YAML stream: its documents (comments and untouched ones kept
//! byte for byte), `List`s, and the workload kinds inject knows, down to each pod template,
//! which `pod` wires; a kind it does not know that carries containers is refused. Also the
//! summary a person reads of what was done to each workload.

use std::collections::BTreeSet;

use super::agent::default_image;
use super::group::{GroupRole, GroupWiring, SubdomainSource};
use super::pod::{annotation, inject_pod};
use super::yaml::{self, Map, Node};
use super::{lws, InjectError, InjectOptions, Problem, VERSION_ANNOTATION};

/// The result of a successful injection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The whole output stream.
    pub output: String,
    /// One line per document: injected, updated, unchanged or skipped (with warnings).
    pub notes: Vec<String>,
}

/// Injects Vitals into every pod template of a YAML stream; see the module doc.
pub fn inject_documents(input: &str, opts: &InjectOptions) -> Result<String, InjectError> {
    inject_report(input, opts).map(|r| r.output)
}

/// [`inject_documents`], with a human summary of what was done to each document.
pub fn inject_report(input: &str, opts: &InjectOptions) -> Result<Report, InjectError> {
    let input = input.strip_prefix('\u{feff}').unwrap_or(input);
    let mut pieces: Vec<String> = Vec::new();
    let mut notes = Vec::new();
    let mut tally = Tally::default();
    let mut doc_no = 0;
    for chunk in yaml::split_documents(input) {
        if chunk.is_blank() {
            continue;
        }
        let sep = match (chunk.separator, pieces.is_empty()) {
            (Some(s), _) => format!("{s}\n"),
            (None, true) => String::new(),
            (None, false) => "---\n".to_string(),
        };
        let root = yaml::parse_document(chunk.body).map_err(|e| InjectError::Parse {
            doc: doc_no + 1,
            line: chunk.start_line + e.line - 1,
            column: e.column,
            message: e.message,
        })?;
        let Some(mut root) = root else {
            // Comments only: keep them.
            pieces.push(format!("{sep}{}", with_newline(chunk.body)));
            continue;
        };
        doc_no += 1;
        let before = root.clone();
        let mut doc_notes = Vec::new();
        inject_node(
            &mut root,
            opts,
            &mut tally,
            &mut doc_notes,
            &mut |workload, problem| InjectError::Workload {
                doc: doc_no,
                workload,
                problem,
            },
        )?;
        if root == before {
            pieces.push(format!("{sep}{}", with_newline(chunk.body)));
        } else {
            pieces.push(format!(
                "{sep}{}{}",
                chunk.leading_comments(),
                yaml::emit(&root)
            ));
        }
        notes.extend(doc_notes);
    }
    for name in &opts.containers {
        if !tally.used.contains(name) {
            return Err(InjectError::UnknownContainer { name: name.clone() });
        }
    }
    // A stream where some workloads have nothing to watch (a front end next to the model
    // server) is fine; one where none has is a mistake worth stopping for.
    if let (0, Some(e)) = (tally.injected, tally.nothing_to_watch) {
        return Err(e);
    }
    if tally.default_image {
        notes.push(format!(
            "warning: no --image given: the agent image is {}; pass --image with your registry's copy",
            default_image()
        ));
    }
    Ok(Report {
        output: pieces.concat(),
        notes,
    })
}

fn with_newline(s: &str) -> String {
    if s.ends_with('\n') {
        s.to_string()
    } else {
        format!("{s}\n")
    }
}

type ErrFn<'a> = dyn FnMut(String, Problem) -> InjectError + 'a;

/// What the whole stream's workloads added up to.
#[derive(Default)]
struct Tally {
    /// `--container` names that matched a container.
    used: BTreeSet<String>,
    /// Pod templates injected (or already injected).
    injected: usize,
    /// The first pod template skipped for having nothing to watch.
    nothing_to_watch: Option<InjectError>,
    /// Whether some pod got the default image (no `--image`, none injected before).
    default_image: bool,
}

/// Where a kind keeps its pod templates, for the API groups that define it, with the group
/// role of each (LeaderWorkerSet: the leader's and the workers').
fn template_sites(
    api_version: &str,
    kind: &str,
) -> Option<Vec<(&'static [&'static str], Option<GroupRole>)>> {
    let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
    let one = |path: &'static [&'static str]| Some(vec![(path, None)]);
    match (group, kind) {
        ("", "Pod") => one(&[]),
        ("", "ReplicationController") => one(&["spec", "template"]),
        ("apps" | "extensions", "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet") => {
            one(&["spec", "template"])
        }
        ("batch", "Job") => one(&["spec", "template"]),
        ("batch", "CronJob") => one(&["spec", "jobTemplate", "spec", "template"]),
        (lws::API_GROUP, "LeaderWorkerSet") => Some(vec![
            (
                &["spec", "leaderWorkerTemplate", "leaderTemplate"],
                Some(GroupRole::Leader),
            ),
            (
                &["spec", "leaderWorkerTemplate", "workerTemplate"],
                Some(GroupRole::Member),
            ),
        ]),
        _ => None,
    }
}

/// Where under `node` a `containers` list is, as a dotted path (`.spec.predictor.containers`):
/// how a kind inject does not know is found to carry pods.
fn containers_under(node: &Node, path: &str) -> Option<String> {
    match node {
        Node::Map(m) => m.0.iter().find_map(|(k, v)| {
            let here = format!("{path}.{}", k.value);
            if k.value == "containers" && v.as_seq().is_some() {
                Some(here)
            } else {
                containers_under(v, &here)
            }
        }),
        Node::Seq(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| containers_under(v, &format!("{path}[{i}]"))),
        Node::Scalar(_) => None,
    }
}

fn inject_node(
    root: &mut Node,
    opts: &InjectOptions,
    tally: &mut Tally,
    notes: &mut Vec<String>,
    err: &mut ErrFn<'_>,
) -> Result<(), InjectError> {
    let Some(doc) = root.as_map_mut() else {
        notes.push("(a document that is not a mapping): skipped".into());
        return Ok(());
    };
    let kind = doc.get_str("kind").unwrap_or("").to_string();
    let api_version = doc.get_str("apiVersion").unwrap_or("").to_string();
    let name = doc
        .get("metadata")
        .and_then(Node::as_map)
        .and_then(|m| m.get_str("name").or_else(|| m.get_str("generateName")))
        .unwrap_or("")
        .to_string();
    let workload = format!("{kind}/{name}");
    if kind.ends_with("List") && api_version == "v1" {
        if let Some(items) = doc.get_mut("items").and_then(Node::as_seq_mut) {
            for item in items {
                inject_node(item, opts, tally, notes, err)?;
            }
        }
        return Ok(());
    }
    let Some(sites) = template_sites(&api_version, &kind) else {
        // A kind whose pods inject cannot find must not pass through unwatched: `inject |
        // kubectl apply` would apply it as if it had been injected.
        match doc.get("spec").and_then(|s| containers_under(s, ".spec")) {
            Some(at) if !opts.skip_unknown => {
                return Err(err(
                    workload,
                    Problem::UnknownKind {
                        kind: format!("{api_version} {kind}"),
                        at,
                    },
                ))
            }
            Some(at) => notes.push(format!(
                "{workload}: warning: skipped (--skip-unknown): kind {kind} has containers ({at}) that Vitals does NOT watch"
            )),
            None => notes.push(format!("{workload}: skipped (no pod template)")),
        }
        return Ok(());
    };
    let facts = (kind == "LeaderWorkerSet").then(|| lws::facts_of_spec(doc, notes, &workload));
    for (path, role) in sites {
        let label = match role {
            None => workload.clone(),
            Some(_) => format!("{workload} ({})", path.last().copied().unwrap_or("")),
        };
        let subdomain = facts
            .as_ref()
            .map_or(Some(SubdomainSource::SetName), |f| f.subdomain.clone());
        let group = match (role, subdomain) {
            (None, _) => None,
            (Some(GroupRole::Leader), None) => {
                return Err(err(label, Problem::HashPerReplicaSubdomain))
            }
            (Some(role), subdomain) => Some(GroupWiring {
                role,
                subdomain: subdomain.unwrap_or(SubdomainSource::SetName),
            }),
        };
        inject_site(
            doc,
            path,
            group.as_ref(),
            &label,
            &kind,
            opts,
            tally,
            notes,
            err,
        )?;
    }
    Ok(())
}

/// Injects one pod template of a workload.
#[allow(clippy::too_many_arguments)]
fn inject_site(
    doc: &mut Map,
    path: &[&str],
    group: Option<&GroupWiring>,
    workload: &str,
    kind: &str,
    opts: &InjectOptions,
    tally: &mut Tally,
    notes: &mut Vec<String>,
    err: &mut ErrFn<'_>,
) -> Result<(), InjectError> {
    let workload = workload.to_string();
    // Walk to the pod template: its metadata (annotations) and spec.
    let mut tmpl: &mut Map = doc;
    let mut walked = String::new();
    for key in path {
        walked.push('.');
        walked.push_str(key);
        tmpl = match tmpl.get_mut(key).and_then(Node::as_map_mut) {
            Some(m) => m,
            None => {
                return Err(err(
                    workload,
                    Problem::Shape {
                        path: walked,
                        expected: "mapping",
                    },
                ))
            }
        };
    }
    if tmpl.get("spec").and_then(Node::as_map).is_none() {
        let path = format!("{walked}.spec");
        return Err(err(
            workload,
            Problem::Shape {
                path,
                expected: "mapping",
            },
        ));
    }
    let before = tmpl.clone();
    let was_injected = annotation(tmpl, VERSION_ANNOTATION).map(str::to_string);
    let legacy_exits = kind == "Job"
        || kind == "CronJob"
        || (kind == "Pod"
            && tmpl
                .get("spec")
                .and_then(Node::as_map)
                .and_then(|s| s.get_str("restartPolicy"))
                .is_some_and(|p| p != "Always"));
    let pod = match inject_pod(tmpl, opts, group, &mut tally.used) {
        Ok(pod) => pod,
        Err(problem @ Problem::NoWorkerChosen { .. }) => {
            *tmpl = before;
            notes.push(format!("{workload}: skipped ({problem})"));
            if tally.nothing_to_watch.is_none() {
                tally.nothing_to_watch = Some(err(workload, problem));
            }
            return Ok(());
        }
        Err(problem) => return Err(err(workload, problem)),
    };
    tally.injected += 1;
    tally.default_image |= pod.default_image;
    let what = if *tmpl == before {
        "unchanged (already injected)".to_string()
    } else if let Some(v) = was_injected {
        format!("updated (injected by {v} before)")
    } else {
        "injected".to_string()
    };
    let mut watched = Vec::new();
    if let Some(g) = group {
        watched.push(format!("group role: {}", g.role));
    }
    if !pod.workers.is_empty() {
        watched.push(format!("workers: {}", pod.workers.join(", ")));
    }
    if !pod.upstreams.is_empty() {
        let list: Vec<String> = pod
            .upstreams
            .iter()
            .map(|(name, profile)| match profile {
                Some(p) => format!("{name} (metrics: {p})"),
                None => name.clone(),
            })
            .collect();
        watched.push(format!("upstreams: {}", list.join(", ")));
    }
    notes.push(format!("{workload}: {what}, {}", watched.join(", ")));
    for w in pod.warnings {
        notes.push(format!("{workload}: {w}"));
    }
    if opts.legacy_sidecar && legacy_exits {
        notes.push(format!(
            "{workload}: warning: with --legacy-sidecar the agent never exits, so this pod never completes; use the native sidecar (Kubernetes 1.29+)"
        ));
    }
    Ok(())
}

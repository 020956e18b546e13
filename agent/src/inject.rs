//! `vitals-agent inject`: rewrites Kubernetes YAML so Vitals watches its pods, wiring every
//! pod template as SPEC §6 says (the agent as a sidecar, the socket volume, a shared PID
//! namespace, each worker's env and probes pointed at the agent).
//!
//! The rewrite is pure ([`inject_documents`]): text in, text out, nothing written on error.
//! It is idempotent: a document that already has exactly this wiring comes out byte for
//! byte, and one injected by an older version is updated in place (the agent container is
//! found by its name, `vitals-agent`), never duplicated. Documents without containers
//! (Services, ConfigMaps, …) pass through untouched, comments included; a kind inject does
//! not know that carries containers is an error unless `--skip-unknown`. A LeaderWorkerSet's
//! two templates get a leader's and a member's agent (SPEC §9). `inject_pod` is the one
//! pod-level transform, called once per pod template.

mod group;
mod lws;
mod mesh;
mod resources;
mod upstreams;
pub mod webhook;
mod yaml;

use std::collections::BTreeSet;
use std::io::{Read, Write};

use anyhow::Context as _;
use clap::Args;

pub use self::upstreams::{CANARY_ANNOTATION_PREFIX, PROFILE_ANNOTATION_PREFIX, UPSTREAMS_ENV};
use self::yaml::{Map, Node};

/// Name of the agent container; how an existing injection is recognised.
pub const AGENT_CONTAINER: &str = "vitals-agent";
/// The agent's probe port (SPEC §3).
pub const AGENT_PORT: u16 = 9180;
/// The socket folder, an emptyDir shared by the agent and the workers.
pub const SOCKET_DIR: &str = "/run/vitals";
/// The agent's socket, as the workers see it.
pub const SOCKET_PATH: &str = vitals_proto::DEFAULT_SOCKET;
/// Name of the socket volume.
pub const SOCKET_VOLUME: &str = "vitals-socket";
/// The agent image's user (Dockerfile.agent), set explicitly on the agent container.
pub const AGENT_UID: u32 = 65532;
/// Pod annotation listing the worker containers (`a,b`).
pub const WORKERS_ANNOTATION: &str = "vitals.dev/workers";
/// Pod annotation recording which version injected the pod.
pub const VERSION_ANNOTATION: &str = "vitals.dev/injected-version";
/// This version, written into [`VERSION_ANNOTATION`].
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Flags of `vitals-agent inject`.
#[derive(Debug, Args)]
pub struct InjectArgs {
    /// YAML to read (one or more documents); `-` (the default) reads stdin.
    #[arg(
        short = 'f',
        long = "filename",
        value_name = "FILE",
        default_value = "-",
        env = "VITALS_FILENAME"
    )]
    pub file: String,
    /// A protocol worker container (repeatable, or comma-separated); each pod template's
    /// `vitals.dev/workers` annotation names more. Every other container with probes
    /// becomes an upstream: the agent runs its original probes.
    #[arg(
        long = "container",
        value_name = "NAME",
        env = "VITALS_CONTAINER",
        value_delimiter = ','
    )]
    pub containers: Vec<String>,
    /// Add the agent as an ordinary container, for clusters without native sidecars
    /// (before Kubernetes 1.29).
    #[arg(long, env = "VITALS_LEGACY_SIDECAR")]
    pub legacy_sidecar: bool,
    /// Agent image [default: vitals-agent:<this version>, or the image already injected by
    /// this version].
    #[arg(long, value_name = "IMAGE", env = "VITALS_IMAGE")]
    pub image: Option<String>,
    /// Leave documents of kinds inject does not know as they are, even when they carry
    /// containers (a KServe InferenceService): they are then NOT watched. Without it such a
    /// document is an error.
    #[arg(long, env = "VITALS_SKIP_UNKNOWN")]
    pub skip_unknown: bool,
    /// The agent container's pull secret and resources.
    #[command(flatten)]
    pub agent: AgentArgs,
    /// Print no summary and no warnings on stderr.
    #[arg(short, long)]
    pub quiet: bool,
}

impl InjectArgs {
    /// The rewrite options these flags ask for.
    pub fn options(&self) -> InjectOptions {
        InjectOptions {
            containers: self
                .containers
                .iter()
                .map(|c| c.trim().to_string())
                .filter(|c| !c.is_empty())
                .collect(),
            legacy_sidecar: self.legacy_sidecar,
            image: self.image.clone(),
            skip_unknown: self.skip_unknown,
            image_pull_secrets: self.agent.pull_secrets(),
            agent_resources: self.agent.resources.clone(),
        }
    }
}

/// What the agent container needs from the cluster's rules, shared by `inject` and
/// `webhook`: LimitRanges, ResourceQuotas and policy engines validate the injected pod
/// (SPEC §11), so its resources and the pull secret of its registry are the operator's call.
#[derive(Debug, Clone, Default, Args)]
pub struct AgentArgs {
    /// A pull secret for the agent's image, added to each injected pod's `imagePullSecrets`
    /// (repeatable, or comma-separated).
    #[arg(
        long = "image-pull-secret",
        value_name = "NAME",
        env = "VITALS_IMAGE_PULL_SECRETS",
        value_delimiter = ','
    )]
    pub image_pull_secrets: Vec<String>,
    /// The agent container's `resources`, as JSON (`{"requests": {...}, "limits": {...}}`),
    /// instead of inject's own (requests 10m/16Mi; limits 200m/64Mi, in a group pod a
    /// memory limit only, SPEC §11).
    #[arg(
        long = "agent-resources",
        value_name = "JSON",
        env = "VITALS_AGENT_RESOURCES",
        value_parser = parse_resources
    )]
    pub resources: Option<String>,
}

impl AgentArgs {
    /// The pull secrets given, trimmed, without empty names.
    pub fn pull_secrets(&self) -> Vec<String> {
        self.image_pull_secrets
            .iter()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    }
}

/// `--agent-resources`: a JSON object with only `requests` and `limits`, each of names to
/// quantity strings.
fn parse_resources(text: &str) -> Result<String, String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let fields = value
        .as_object()
        .ok_or("not a JSON object like {\"requests\": {\"cpu\": \"10m\"}}")?;
    for (key, list) in fields {
        if key != "requests" && key != "limits" {
            return Err(format!("{key:?}: only \"requests\" and \"limits\""));
        }
        let ok = list
            .as_object()
            .is_some_and(|m| m.values().all(serde_json::Value::is_string));
        if !ok {
            return Err(format!(
                "{key}: an object of quantity strings (\"cpu\": \"10m\")"
            ));
        }
    }
    Ok(value.to_string())
}

/// Reads the manifests, injects Vitals, writes them to stdout (a summary goes to stderr).
/// Nothing is written to stdout unless the whole input could be injected.
pub fn run(args: &InjectArgs) -> anyhow::Result<()> {
    let mut input = String::new();
    if args.file == "-" {
        std::io::stdin()
            .read_to_string(&mut input)
            .context("reading stdin")?;
    } else {
        input = std::fs::read_to_string(&args.file)
            .with_context(|| format!("reading {}", args.file))?;
    }
    let opts = args.options();
    let source = if args.file == "-" {
        "stdin"
    } else {
        args.file.as_str()
    };
    let report = inject_report(&input, &opts).with_context(|| format!("cannot inject {source}"))?;
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(report.output.as_bytes())
        .context("writing stdout")?;
    stdout.flush().context("writing stdout")?;
    if !args.quiet {
        let mut stderr = std::io::stderr().lock();
        for note in &report.notes {
            let _ = writeln!(stderr, "{note}");
        }
    }
    Ok(())
}

/// What to inject.
#[derive(Debug, Clone, Default)]
pub struct InjectOptions {
    /// Worker containers named on the command line (`--container`).
    pub containers: Vec<String>,
    /// The agent as an ordinary container instead of a native sidecar.
    pub legacy_sidecar: bool,
    /// The agent image; `None` for the default (see [`InjectArgs::image`]).
    pub image: Option<String>,
    /// Pass documents of unknown kinds with containers through instead of failing.
    pub skip_unknown: bool,
    /// Pull secrets added to each pod's `imagePullSecrets` (see [`AgentArgs`]).
    pub image_pull_secrets: Vec<String>,
    /// The agent's `resources` as JSON, replacing inject's forms (see [`AgentArgs`]).
    pub agent_resources: Option<String>,
}

/// A pod's role in a group (SPEC §9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupRole {
    /// The pod serving the API; its agent polls the members.
    Leader,
    /// A headless member pod.
    Member,
}

impl GroupRole {
    /// The value of `--group-role` / `VITALS_GROUP_ROLE`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Leader => "leader",
            Self::Member => "member",
        }
    }
}

/// Where a LeaderWorkerSet's pods find their subdomain (the headless Service's name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubdomainSource {
    /// Policy `Shared` (the default): the Service is named after the LWS, which LWS writes
    /// into every pod's `leaderworkerset.sigs.k8s.io/name` label.
    SetName,
    /// Policy `UniquePerReplica`: one Service per group, named after the leader pod.
    LeaderPodName,
    /// `UniquePerReplica` with `groupIdentity: Hash`: the Service is named after the leader's
    /// host name, drawn at its admission; the admitted pod's `spec.subdomain`, as a value
    /// (the downward API cannot read it).
    Admitted(String),
}

/// The group wiring of one pod template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// The pods' role.
    pub role: GroupRole,
    /// Where the leader's agent reads the members' subdomain.
    pub subdomain: SubdomainSource,
}

/// Why nothing could be injected.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    /// The input is not YAML this tool can read.
    #[error("line {line}, column {column} (document {doc}): invalid YAML: {message}")]
    Parse {
        /// 1-based document index.
        doc: usize,
        /// 1-based line in the whole input.
        line: usize,
        /// 1-based column.
        column: usize,
        /// The parser's message.
        message: String,
    },
    /// One workload cannot be injected.
    #[error("document {doc} ({workload}): {problem}")]
    Workload {
        /// 1-based document index.
        doc: usize,
        /// `Kind/name` of the workload (with the List item index inside a List).
        workload: String,
        /// What is wrong with it. Part of the message, not a `source`: an error chain
        /// printed with `{:#}` would otherwise say it twice.
        problem: Problem,
    },
    /// A `--container` name matches no container of any pod template.
    #[error("--container {name}: no pod template in the input has a container named {name:?}")]
    UnknownContainer {
        /// The name given.
        name: String,
    },
}

/// What is wrong with one workload.
#[derive(Debug, thiserror::Error)]
pub enum Problem {
    /// The workload lacks a pod template or has a malformed one.
    #[error("{path} is missing or is not a {expected}")]
    Shape {
        /// Where.
        path: String,
        /// What was expected there.
        expected: &'static str,
    },
    /// The annotation names a container the pod does not have.
    #[error("no container named {name:?} (listed in the {WORKERS_ANNOTATION} annotation); containers: {available}")]
    MissingContainer {
        /// The name.
        name: String,
        /// The pod's containers, comma-separated.
        available: String,
    },
    /// Nothing to watch: no container is named as a worker and none has probes.
    #[error("nothing to watch among the containers ({available}): none chosen as a worker (pass --container NAME or annotate the pod template with {WORKERS_ANNOTATION}: NAME[,NAME]) and none has probes to take over")]
    NoWorkerChosen {
        /// The pod's containers, comma-separated.
        available: String,
    },
    /// A worker's name is not valid as a Vitals worker name.
    #[error("{name:?} is not a valid worker name ([a-z0-9][a-z0-9-]{{0,62}})")]
    BadWorkerName {
        /// The name.
        name: String,
    },
    /// Another container already uses the agent's port.
    #[error("container {container} already declares port {AGENT_PORT}, the agent's port")]
    PortConflict {
        /// The container.
        container: String,
    },
    /// A `hostNetwork` pod declares the agent's port, which would be the node's.
    #[error("hostNetwork: true puts the agent's port {AGENT_PORT} on the node, and container {container} declares that port too")]
    HostNetworkPortConflict {
        /// The container.
        container: String,
    },
    /// A probe names a port the container does not declare.
    #[error(
        "container {container}: {probe} uses port {port:?}, which is not one of its named ports"
    )]
    UnknownPort {
        /// The container.
        container: String,
        /// The probe (`livenessProbe`, ...).
        probe: &'static str,
        /// The name given.
        port: String,
    },
    /// The profile annotation names no built-in profile.
    #[error("{PROFILE_ANNOTATION_PREFIX}{container}: unknown profile {profile:?} (built in: {known}; or none)")]
    UnknownProfile {
        /// The container.
        container: String,
        /// The name given.
        profile: String,
        /// The built-in names, comma-separated.
        known: String,
    },
    /// The canary annotation cannot be turned into a canary the agent accepts.
    #[error("{CANARY_ANNOTATION_PREFIX}{container}: {problem}")]
    BadCanary {
        /// The container.
        container: String,
        /// What is wrong.
        problem: String,
    },
    /// A kind inject does not know carries containers: its pods would go unwatched.
    #[error("kind {kind} carries containers ({at}) but inject does not know where its pod template is, so its pods would not be watched; for pods a controller makes, use the admission webhook (vitals-agent webhook, SPEC §10), or pass --skip-unknown to leave this document as it is")]
    UnknownKind {
        /// `apiVersion kind`.
        kind: String,
        /// Where the containers are (`.spec.predictor.containers`).
        at: String,
    },
    /// A Hash-identity LeaderWorkerSet with one Service per group: its members' subdomain
    /// is known only once the leader pod is admitted.
    #[error("groupIdentity Hash with subdomainPolicy UniquePerReplica: each group's Service is named after its leader's host name, which LeaderWorkerSet draws from a random key when the leader pod is created, so no template can name it; inject these pods with the admission webhook (vitals-agent webhook, SPEC §10), which reads it from the pod")]
    HashPerReplicaSubdomain,
    /// A worker already mounts something else where the socket goes.
    #[error("container {container} mounts volume {volume} at {SOCKET_DIR}, where the agent's socket goes")]
    MountConflict {
        /// The container.
        container: String,
        /// Its volume there.
        volume: String,
    },
}

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

/// The API group of LeaderWorkerSet (SPEC §9).
const LWS_GROUP: &str = "leaderworkerset.x-k8s.io";

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
        (LWS_GROUP, "LeaderWorkerSet") => Some(vec![
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
            (Some(role), subdomain) => Some(Group {
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
    group: Option<&Group>,
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
        watched.push(format!("group role: {}", g.role.as_str()));
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

fn annotation<'a>(tmpl: &'a Map, key: &str) -> Option<&'a str> {
    tmpl.get("metadata")?
        .as_map()?
        .get("annotations")?
        .as_map()?
        .get_str(key)
}

/// Whether `name` is a name the agent accepts for a worker (the protocol's rule).
fn is_worker_name(name: &str) -> bool {
    vitals_proto::WorkerName::parse(name).is_ok()
}

fn shape(path: &str, expected: &'static str) -> Problem {
    Problem::Shape {
        path: path.to_string(),
        expected,
    }
}

fn container_name(c: &Node) -> Option<&str> {
    c.as_map()?.get_str("name")
}

/// What was done to one pod template.
struct PodSummary {
    /// Protocol workers, in container order.
    workers: Vec<String>,
    /// Upstreams with their metrics profile, in container order.
    upstreams: Vec<(String, Option<&'static str>)>,
    /// Warnings for the operator.
    warnings: Vec<String>,
    /// Whether the agent got the default image.
    default_image: bool,
}

/// Pod label inject puts on every pod it injects: what `deploy/monitoring`'s PodMonitor
/// selects, and how people find Vitals pods (`kubectl get pods -l vitals.dev/injected`).
pub const INJECTED_LABEL: &str = "vitals.dev/injected";

fn default_image() -> String {
    format!("vitals-agent:{VERSION}")
}

/// Wires one pod template (the pod-level transform, called once per pod template):
/// chooses the workers, checks the ports, wires the workers and the upstreams, then the
/// agent, the pod-level settings, the label and the annotations. `group` is the template's
/// role in a multi-pod group (LeaderWorkerSet), `None` for an ordinary pod.
fn inject_pod(
    tmpl: &mut Map,
    opts: &InjectOptions,
    group: Option<&Group>,
    used: &mut BTreeSet<String>,
) -> Result<PodSummary, Problem> {
    let previous: Vec<String> = annotation(tmpl, WORKERS_ANNOTATION)
        .map(|a| {
            a.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let same_version = annotation(tmpl, VERSION_ANNOTATION) == Some(VERSION);
    let profile_overrides = upstreams::annotations(tmpl, PROFILE_ANNOTATION_PREFIX);
    let canaries = upstreams::annotations(tmpl, CANARY_ANNOTATION_PREFIX);
    let spec = tmpl
        .get_mut("spec")
        .and_then(Node::as_map_mut)
        .ok_or_else(|| shape("spec", "mapping"))?;
    let mut warnings = Vec::new();

    let workers = choose_workers(spec, &previous, opts, used)?;
    check_ports(spec)?;
    let istio = mesh::IstioOriginals::of(spec, &mut warnings);
    let (old_key, old_index, mut agent) = take_agent(spec);

    // Workers: env, socket mount, probes.
    let containers = spec
        .get_mut("containers")
        .and_then(Node::as_seq_mut)
        .ok_or_else(|| shape("spec.containers", "list"))?;
    for c in containers.iter_mut().filter_map(Node::as_map_mut) {
        if let Some(name) = c.get_str("name").map(str::to_string) {
            if workers.contains(&name) {
                wire_worker(c, &name)?;
            }
        }
    }

    // Upstreams: every other container with probes the agent can run; in a group, every
    // other container (headless ones watched by /proc alone).
    let before = upstreams::previous_config(&agent);
    let mut config = crate::config::upstreams::schema::Upstreams::new();
    let mut upstream_names = Vec::new();
    let role = group.map(|g| g.role);
    for c in containers.iter_mut().filter_map(Node::as_map_mut) {
        let Some(name) = c.get_str("name").map(str::to_string) else {
            continue;
        };
        if workers.contains(&name) || name == AGENT_CONTAINER || mesh::is_mesh_proxy(&name) {
            continue;
        }
        let kept = istio.restore(c, &name);
        let mut wired = upstreams::wire_upstream(
            c,
            &name,
            before.get(&name),
            profile_overrides.get(&name).map(String::as_str),
            &mut warnings,
        )?;
        kept.put_back(c);
        // A group's container without probes (a member's Ray worker; a leader made from
        // the workerTemplate) is watched by /proc alone.
        if wired.is_none() && role.is_some() {
            wired = Some((upstreams::wire_headless(c, &name, &mut warnings), None));
        }
        if let Some((mut entry, profile)) = wired {
            if !is_worker_name(&name) {
                return Err(Problem::BadWorkerName { name });
            }
            entry.canary = upstreams::canary(
                &name,
                &entry,
                canaries.get(&name).map(String::as_str),
                before.get(&name),
                profile,
            )?;
            // A leader's model container needs a liveness probe on the agent for the
            // group's verdict (`group_broken`) to restart it (SPEC §9).
            if role == Some(GroupRole::Leader) && c.get("livenessProbe").is_none() {
                ensure_probe(
                    c,
                    "livenessProbe",
                    &format!("/livez/{name}"),
                    GROUP_LIVENESS,
                );
            }
            if let Some(live) = c.get_mut("livenessProbe").and_then(Node::as_map_mut) {
                tolerate_agent_restart(live);
            }
            config.insert(name.clone(), entry);
            upstream_names.push((name, profile));
        }
    }
    if workers.is_empty() && upstream_names.is_empty() {
        let available = container_names(spec)?.join(", ");
        return Err(Problem::NoWorkerChosen { available });
    }

    // The agent: found by name wherever an earlier injection put it, updated in place.
    let (image, default_image) = match (&opts.image, same_version) {
        (Some(image), _) => (image.clone(), false),
        (None, true) => match agent.get_str("image") {
            Some(image) => (image.to_string(), false),
            None => (default_image(), true),
        },
        (None, false) => (default_image(), true),
    };
    let grace = spec
        .get_str("terminationGracePeriodSeconds")
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(30);
    let upstreams_json = (!config.is_empty()).then(|| {
        serde_json::to_string(&config)
            .expect("the upstream schema serialises: plain data, string keys")
    });
    let host_network = matches!(spec.get("hostNetwork"), Some(Node::Scalar(s)) if s.is_true());
    if host_network {
        warnings.push(format!(
            "warning: hostNetwork: true puts the agent's port {AGENT_PORT} on the node: /status and /metrics are reachable on the node's IP (restrict them with a host firewall), and two such pods on one node collide on the port (the second agent cannot listen)"
        ));
    }
    if group.is_some() {
        warnings.extend(group::host_network_dns_warning(spec));
    }
    let facts = PodFacts {
        root: pod_runs_as_root(spec),
        guaranteed: resources::guaranteed(other_containers(spec)),
    };
    wire_agent(
        &mut agent,
        &AgentWiring {
            image: &image,
            workers: &workers,
            upstreams: upstreams_json.as_deref(),
            legacy_grace: opts.legacy_sidecar.then_some(grace),
            group,
            facts,
            resources: opts.agent_resources.as_deref(),
        },
    );
    place_agent(spec, agent, old_key, old_index, opts.legacy_sidecar)?;
    pod_level(spec, &mut warnings)?;
    if !opts.image_pull_secrets.is_empty() {
        let secrets = spec
            .seq_entry("imagePullSecrets")
            .ok_or_else(|| shape("spec.imagePullSecrets", "list"))?;
        for name in &opts.image_pull_secrets {
            if !secrets.iter().any(|s| container_name(s) == Some(name)) {
                secrets.push(Node::Map(Map::from_pairs([("name", Node::string(name))])));
            }
        }
    }

    // Label and annotations, for the next injection, for Prometheus and for people.
    if tmpl.get("metadata").is_none() {
        let at = tmpl.position("spec").unwrap_or(0);
        tmpl.insert_at(at, "metadata", Node::Map(Map::default()));
    }
    let metadata = tmpl
        .map_entry("metadata")
        .ok_or_else(|| shape("metadata", "mapping"))?;
    metadata
        .map_entry("labels")
        .ok_or_else(|| shape("metadata.labels", "mapping"))?
        .ensure(INJECTED_LABEL, Node::string("true"));
    let annotations = metadata
        .map_entry("annotations")
        .ok_or_else(|| shape("metadata.annotations", "mapping"))?;
    if workers.is_empty() {
        annotations.remove(WORKERS_ANNOTATION);
    } else {
        annotations.ensure(WORKERS_ANNOTATION, Node::string(workers.join(",")));
    }
    annotations.ensure(VERSION_ANNOTATION, Node::string(VERSION));
    mesh::exclude_agent_port(tmpl, role == Some(GroupRole::Leader), &mut warnings)?;
    Ok(PodSummary {
        workers,
        upstreams: upstream_names,
        warnings,
        default_image,
    })
}

/// Injects Vitals into one Pod object (a mapping with `metadata` and `spec`) exactly as
/// [`inject_documents`] does to each pod template, its group role read from what
/// LeaderWorkerSet's pod webhook wrote on it (SPEC §11); the admission webhook's entry point.
/// Returns the warnings for the operator; on error `pod` is left as it was.
pub(crate) fn inject_pod_object(
    pod: &mut Map,
    opts: &InjectOptions,
) -> Result<Vec<String>, Problem> {
    let group = lws::group_of_pod(pod)?;
    let before = pod.clone();
    inject_pod(pod, opts, group.as_ref(), &mut BTreeSet::new())
        .map(|summary| summary.warnings)
        .inspect_err(|_| *pod = before)
}

/// Whether the pod-level user is root (`runAsUser: 0`): the one case where the agent must
/// name its own user. Elsewhere the image's user (65532) runs it, or the platform's
/// (OpenShift's restricted-v2 assigns one from the namespace's range and refuses an explicit
/// user outside it).
fn pod_runs_as_root(spec: &Map) -> bool {
    spec.get("securityContext")
        .and_then(Node::as_map)
        .and_then(|sc| sc.get_str("runAsUser"))
        == Some("0")
}

/// What the agent's container settings depend on in the rest of the pod.
#[derive(Debug, Clone, Copy)]
struct PodFacts {
    /// The pod-level user is root.
    root: bool,
    /// Every other container has requests = limits for cpu and memory (QoS Guaranteed).
    guaranteed: bool,
}

/// The names of the pod's containers, the agent's excepted.
fn container_names(spec: &Map) -> Result<Vec<String>, Problem> {
    let containers = spec
        .get("containers")
        .and_then(Node::as_seq)
        .ok_or_else(|| shape("spec.containers", "list"))?;
    let mut names = Vec::new();
    for c in containers {
        let name = container_name(c).ok_or_else(|| shape("spec.containers[].name", "string"))?;
        if name != AGENT_CONTAINER {
            names.push(name.to_string());
        }
    }
    Ok(names)
}

/// Which containers are protocol workers: those the annotation or `--container` names.
/// Nothing else is (SPEC §8): an unnamed container is an upstream when it has probes.
fn choose_workers(
    spec: &Map,
    previous: &[String],
    opts: &InjectOptions,
    used: &mut BTreeSet<String>,
) -> Result<Vec<String>, Problem> {
    let names = container_names(spec)?;
    if let Some(p) = previous.iter().find(|p| !names.contains(p)) {
        return Err(Problem::MissingContainer {
            name: p.clone(),
            available: names.join(", "),
        });
    }
    used.extend(
        names
            .iter()
            .filter(|n| opts.containers.contains(n))
            .cloned(),
    );
    let workers: Vec<String> = names
        .into_iter()
        .filter(|n| previous.contains(n) || opts.containers.contains(n))
        .collect();
    if let Some(w) = workers.iter().find(|w| !is_worker_name(w)) {
        return Err(Problem::BadWorkerName { name: w.clone() });
    }
    Ok(workers)
}

/// Nobody else may take the agent's port: containers of a pod share one network, and with
/// `hostNetwork` the node's.
fn check_ports(spec: &Map) -> Result<(), Problem> {
    let host_network = matches!(spec.get("hostNetwork"), Some(Node::Scalar(s)) if s.is_true());
    let port = AGENT_PORT.to_string();
    for c in other_containers(spec) {
        let container = || c.get_str("name").unwrap_or("?").to_string();
        for p in c
            .get("ports")
            .and_then(Node::as_seq)
            .into_iter()
            .flatten()
            .filter_map(Node::as_map)
        {
            let host_port = p.get_str("hostPort") == Some(port.as_str());
            if host_network && (host_port || p.get_str("containerPort") == Some(port.as_str())) {
                return Err(Problem::HostNetworkPortConflict {
                    container: container(),
                });
            }
            if p.get_str("containerPort") == Some(port.as_str()) {
                return Err(Problem::PortConflict {
                    container: container(),
                });
            }
        }
    }
    Ok(())
}

/// Every container of a pod spec but the agent's, init containers first.
fn other_containers(spec: &Map) -> impl Iterator<Item = &Map> {
    ["initContainers", "containers"]
        .into_iter()
        .flat_map(|key| spec.get(key).and_then(Node::as_seq).into_iter().flatten())
        .filter_map(Node::as_map)
        .filter(|c| c.get_str("name") != Some(AGENT_CONTAINER))
}

/// Removes the agent container an earlier injection added; returns where it was (list key,
/// index) and its fields (empty when there was none).
fn take_agent(spec: &mut Map) -> (Option<&'static str>, usize, Map) {
    for key in ["initContainers", "containers"] {
        if let Some(list) = spec.get_mut(key).and_then(Node::as_seq_mut) {
            if let Some(i) = list
                .iter()
                .position(|c| container_name(c) == Some(AGENT_CONTAINER))
            {
                let agent = match list.remove(i) {
                    Node::Map(m) => m,
                    _ => Map::default(),
                };
                return (Some(key), i, agent);
            }
        }
    }
    (None, 0, Map::default())
}

/// Puts the agent back: a native sidecar first among the init containers, or (legacy) an
/// ordinary container last (where it already was, if it was one).
fn place_agent(
    spec: &mut Map,
    agent: Map,
    old_key: Option<&'static str>,
    old_index: usize,
    legacy: bool,
) -> Result<(), Problem> {
    let agent = Node::Map(agent);
    if legacy {
        // Last, so `kubectl logs/exec` keep defaulting to the first (the user's) container.
        let list = spec
            .seq_entry("containers")
            .ok_or_else(|| shape("spec.containers", "list"))?;
        match old_key {
            Some("containers") => list.insert(old_index.min(list.len()), agent),
            _ => list.push(agent),
        }
        if spec
            .get("initContainers")
            .and_then(Node::as_seq)
            .is_some_and(Vec::is_empty)
            && old_key == Some("initContainers")
        {
            spec.remove("initContainers");
        }
    } else {
        if spec.get("initContainers").is_none() {
            let at = spec.position("containers").unwrap_or(spec.0.len());
            spec.insert_at(at, "initContainers", Node::Seq(Vec::new()));
        }
        let list = spec
            .seq_entry("initContainers")
            .ok_or_else(|| shape("spec.initContainers", "list"))?;
        // First, so it is up before the user's init containers run; also after a later
        // webhook put its own init container in front (reinvocation, SPEC §11).
        list.insert(0, agent);
    }
    Ok(())
}

/// Pod level: a shared PID namespace (hostPID already shares one, and excludes it) and the
/// socket volume.
fn pod_level(spec: &mut Map, warnings: &mut Vec<String>) -> Result<(), Problem> {
    let host_pid = matches!(spec.get("hostPID"), Some(Node::Scalar(s)) if s.is_true());
    let shared = spec.get("shareProcessNamespace");
    let is_shared = matches!(shared, Some(Node::Scalar(s)) if s.is_true());
    let explicit = shared.is_some();
    if !host_pid && !is_shared {
        if explicit {
            warnings.push(
                "warning: shareProcessNamespace was false; set to true so the agent sees the containers' processes (they now see each other's too)"
                    .to_string(),
            );
        }
        spec.set("shareProcessNamespace", Node::plain("true"));
    }
    let volumes = spec
        .seq_entry("volumes")
        .ok_or_else(|| shape("spec.volumes", "list"))?;
    let wanted = socket_volume();
    match volumes
        .iter_mut()
        .find(|v| container_name(v) == Some(SOCKET_VOLUME))
    {
        Some(v) => {
            let is_memory = v
                .as_map()
                .and_then(|m| m.get("emptyDir"))
                .and_then(Node::as_map)
                .and_then(|e| e.get_str("medium"))
                == Some("Memory");
            if !is_memory {
                *v = wanted;
            }
        }
        None => volumes.push(wanted),
    }
    Ok(())
}

fn socket_volume() -> Node {
    Node::Map(Map::from_pairs([
        ("name", Node::string(SOCKET_VOLUME)),
        (
            "emptyDir",
            Node::Map(Map::from_pairs([
                ("medium", Node::string("Memory")),
                ("sizeLimit", Node::string("1Mi")),
            ])),
        ),
    ]))
}

/// env, socket mount and probes of one worker container.
fn wire_worker(c: &mut Map, name: &str) -> Result<(), Problem> {
    let env = c
        .seq_entry("env")
        .ok_or_else(|| shape(&format!("container {name}: env"), "list"))?;
    ensure_env(env, "VITALS_AGENT_SOCKET", SOCKET_PATH);
    ensure_env(env, "VITALS_NAME", name);
    ensure_socket_mount(c, name)?;
    ensure_probe(
        c,
        "startupProbe",
        &format!("/startupz/{name}"),
        WORKER_STARTUP,
    );
    ensure_probe(
        c,
        "livenessProbe",
        &format!("/livez/{name}"),
        WORKER_LIVENESS,
    );
    if let Some(live) = c.get_mut("livenessProbe").and_then(Node::as_map_mut) {
        tolerate_agent_restart(live);
    }
    ensure_probe(
        c,
        "readinessProbe",
        &format!("/readyz/{name}"),
        WORKER_READINESS,
    );
    Ok(())
}

pub(crate) fn ensure_env(env: &mut Vec<Node>, name: &str, value: &str) {
    let wanted = Node::Map(Map::from_pairs([
        ("name", Node::string(name)),
        ("value", Node::string(value)),
    ]));
    match env.iter_mut().find(|e| container_name(e) == Some(name)) {
        Some(e) => {
            let ok = e
                .as_map()
                .is_some_and(|m| m.get_str("value") == Some(value) && m.get("valueFrom").is_none());
            if !ok {
                *e = wanted;
            }
        }
        None => env.push(wanted),
    }
}

fn ensure_socket_mount(c: &mut Map, container: &str) -> Result<(), Problem> {
    let mounts = c
        .seq_entry("volumeMounts")
        .ok_or_else(|| shape(&format!("container {container}: volumeMounts"), "list"))?;
    for m in mounts.iter().filter_map(Node::as_map) {
        if m.get_str("mountPath").map(|p| p.trim_end_matches('/')) == Some(SOCKET_DIR)
            && m.get_str("name") != Some(SOCKET_VOLUME)
        {
            let volume = m.get_str("name").unwrap_or("?").to_string();
            return Err(Problem::MountConflict {
                container: container.to_string(),
                volume,
            });
        }
    }
    match mounts
        .iter_mut()
        .filter_map(Node::as_map_mut)
        .find(|m| m.get_str("name") == Some(SOCKET_VOLUME))
    {
        Some(m) => m.ensure("mountPath", Node::string(SOCKET_DIR)),
        None => mounts.push(Node::Map(Map::from_pairs([
            ("name", Node::string(SOCKET_VOLUME)),
            ("mountPath", Node::string(SOCKET_DIR)),
        ]))),
    }
    Ok(())
}

/// Timing of a probe that inject adds: (periodSeconds, timeoutSeconds, failureThreshold).
/// The same values as deploy/base, where the reasoning is written down.
type Timing = (u32, u32, u32);
const WORKER_STARTUP: Timing = (2, 1, 30);
const WORKER_LIVENESS: Timing = (5, 1, 12);
const WORKER_READINESS: Timing = (1, 1, 2);
const AGENT_STARTUP: Timing = (1, 1, 30);
const AGENT_LIVENESS: Timing = (5, 1, 3);
/// The liveness inject gives a group's containers that had none (a member's headless
/// process, a leader's model server): conservative, since restarting one costs the whole
/// group (LeaderWorkerSet recreates it): 10 s × 7 tolerates 60 s, the agent's restart too.
const GROUP_LIVENESS: Timing = (10, 1, 7);

const HANDLERS: [&str; 4] = ["exec", "httpGet", "tcpSocket", "grpc"];

fn http_get(path: &str) -> Node {
    Node::Map(Map::from_pairs([
        ("path", Node::string(path)),
        ("port", Node::plain(AGENT_PORT.to_string())),
    ]))
}

/// Replaces `probe`'s handler (exec, httpGet, tcpSocket, grpc) with an httpGet of `path` on
/// the agent, where the old handler stood; the probe's timing fields stay as they are.
fn point_at_agent(probe: &mut Map, path: &str) {
    let at = HANDLERS
        .iter()
        .filter_map(|k| probe.position(k))
        .min()
        .unwrap_or(0);
    for k in HANDLERS {
        probe.remove(k);
    }
    probe.insert_at(at, "httpGet", http_get(path));
}

/// Points a probe at the agent. An existing probe keeps its timing (the user's tuning) and
/// loses its handler (exec, tcpSocket, grpc, another httpGet); a missing one is added.
fn ensure_probe(c: &mut Map, key: &str, path: &str, (period, timeout, failures): Timing) {
    match c.get_mut(key).and_then(Node::as_map_mut) {
        Some(probe) => {
            let ok = probe.get("httpGet").and_then(Node::as_map).is_some_and(|h| {
                h.get_str("path") == Some(path)
                    && matches!(h.get("port"), Some(Node::Scalar(s)) if s.style == yaml::Style::Plain && s.value == "9180")
                    && h.get("host").is_none()
                    && h.get("httpHeaders").is_none()
                    && h.get_str("scheme").is_none_or(|s| s == "HTTP")
            }) && HANDLERS.iter().filter(|k| probe.get(k).is_some()).count() == 1;
            if !ok {
                point_at_agent(probe, path);
            }
        }
        None => {
            let probe = Map::from_pairs([
                ("httpGet", http_get(path)),
                ("periodSeconds", Node::plain(period.to_string())),
                ("timeoutSeconds", Node::plain(timeout.to_string())),
                ("failureThreshold", Node::plain(failures.to_string())),
            ]);
            // After the container's other probes, if it has some.
            let probes = ["startupProbe", "livenessProbe", "readinessProbe"];
            match probes.iter().filter_map(|k| c.position(k)).max() {
                Some(at) => c.insert_at(at + 1, key, Node::Map(probe)),
                None => {
                    c.set(key, Node::Map(probe));
                }
            }
        }
    }
}

/// Everything [`wire_agent`] writes into the agent container.
struct AgentWiring<'a> {
    image: &'a str,
    workers: &'a [String],
    /// The upstreams' JSON, if any.
    upstreams: Option<&'a str>,
    /// The pod's termination grace for an ordinary container (None: native sidecar).
    legacy_grace: Option<u64>,
    group: Option<&'a Group>,
    facts: PodFacts,
    /// `--agent-resources` (JSON), if given.
    resources: Option<&'a str>,
}

/// An env var from the downward API (`fieldRef`).
pub(crate) fn ensure_field_env(env: &mut Vec<Node>, name: &str, field_path: &str) {
    let wanted = Node::Map(Map::from_pairs([
        ("name", Node::string(name)),
        (
            "valueFrom",
            Node::Map(Map::from_pairs([(
                "fieldRef",
                Node::Map(Map::from_pairs([("fieldPath", Node::string(field_path))])),
            )])),
        ),
    ]));
    match env.iter_mut().find(|e| container_name(e) == Some(name)) {
        Some(e) => {
            if !yaml::equiv(&without_default_api_version(e), &wanted) {
                *e = wanted;
            }
        }
        None => env.push(wanted),
    }
}

/// An env entry without `valueFrom.fieldRef.apiVersion: v1`, which the API server adds to
/// every stored pod (kubernetes pkg/apis/core/v1/defaults.go, SetDefaults_ObjectFieldSelector):
/// the same reference as none.
fn without_default_api_version(entry: &Node) -> Node {
    let mut entry = entry.clone();
    if let Some(field_ref) = entry
        .as_map_mut()
        .and_then(|e| e.get_mut("valueFrom"))
        .and_then(Node::as_map_mut)
        .and_then(|v| v.get_mut("fieldRef"))
        .and_then(Node::as_map_mut)
    {
        if field_ref.get_str("apiVersion") == Some("v1") {
            field_ref.remove("apiVersion");
        }
    }
    entry
}

/// The agent container.
fn wire_agent(agent: &mut Map, w: &AgentWiring<'_>) {
    agent.ensure("name", Node::string(AGENT_CONTAINER));
    agent.ensure("image", Node::string(w.image));
    agent.set_default("imagePullPolicy", Node::string("IfNotPresent"));
    match w.legacy_grace {
        Some(_) => {
            agent.remove("restartPolicy");
        }
        None if agent.get("restartPolicy").is_none() => {
            // Where a fresh injection puts it, so native → legacy → native round-trips.
            let at = ["imagePullPolicy", "image", "name"]
                .iter()
                .find_map(|k| agent.position(k))
                .map_or(0, |i| i + 1);
            agent.insert_at(at, "restartPolicy", Node::string("Always"));
        }
        None => agent.ensure("restartPolicy", Node::string("Always")),
    }
    let mut args = vec![
        "run".to_string(),
        // Dual-stack: `[::]` accepts IPv4 too, and an IPv6-only cluster's kubelet probes
        // the pod's IPv6 address.
        format!("--listen=[::]:{AGENT_PORT}"),
        format!("--socket={SOCKET_PATH}"),
        // The workers may run as any UID: the socket sits in a pod-private emptyDir, so
        // letting every UID of the pod connect opens it to nobody else.
        "--socket-mode=0666".to_string(),
    ];
    args.extend(w.workers.iter().map(|w| format!("--expect={w}")));
    if let Some(grace) = w.legacy_grace {
        // An ordinary container gets SIGTERM together with the workers: keep answering
        // their probes while they drain, and leave before the kubelet's SIGKILL.
        args.push(format!(
            "--shutdown-grace={}s",
            grace.saturating_sub(5).max(1)
        ));
    }
    agent.ensure(
        "args",
        Node::Seq(args.into_iter().map(Node::string).collect()),
    );
    if agent.get("env").is_none() {
        let at = agent.position("args").map_or(agent.0.len(), |i| i + 1);
        agent.insert_at(at, "env", Node::Seq(Vec::new()));
    }
    if let Some(env) = agent.seq_entry("env") {
        // The upstreams are probed at the pod's IP, where their servers listen (SPEC §8).
        ensure_field_env(env, "POD_IP", "status.podIP");
        match w.upstreams {
            Some(json) => ensure_env(env, UPSTREAMS_ENV, json),
            None => env.retain(|e| container_name(e) != Some(UPSTREAMS_ENV)),
        }
        group::ensure_group_env(env, w.group);
    }
    let ports = agent.seq_entry("ports");
    if let Some(ports) = ports {
        if !ports
            .iter()
            .filter_map(Node::as_map)
            .any(|p| p.get_str("containerPort") == Some("9180"))
        {
            ports.push(Node::Map(Map::from_pairs([
                ("name", Node::string("vitals")),
                ("containerPort", Node::plain(AGENT_PORT.to_string())),
                ("protocol", Node::string("TCP")),
            ])));
        }
    }
    if w.group.is_some() {
        group::agent_probes(agent);
    } else {
        ensure_probe(agent, "startupProbe", "/livez", AGENT_STARTUP);
        ensure_probe(agent, "livenessProbe", "/livez", AGENT_LIVENESS);
        // A wedged agent gets 5 s to exit, not the pod's grace (often minutes on GPU pods):
        // its restart must stay within what the model's liveness tolerates (deploy/base).
        if let Some(live) = agent.get_mut("livenessProbe").and_then(Node::as_map_mut) {
            live.set_default("terminationGracePeriodSeconds", Node::plain("5"));
        }
    }
    // QoS: a pod whose every other container is Guaranteed stays Guaranteed (exclusive
    // CPUs, NUMA alignment) only if the agent's requests equal its limits too. Resources
    // someone edited (none of inject's forms) are theirs.
    let given = w
        .resources
        .and_then(|json| yaml::parse_document(json).ok().flatten());
    let ours =
        |r: &Node| resources::is_agent_form(r) || given.as_ref().is_some_and(|g| yaml::equiv(r, g));
    if agent.get("resources").is_none_or(ours) {
        let wanted = given
            .clone()
            .unwrap_or_else(|| resources::agent_resources(w.group.is_some(), w.facts.guaranteed));
        agent.set("resources", wanted);
    }
    secure_agent(agent, w.facts.root);
    // The agent's mount cannot conflict: nothing but this code writes its volumeMounts.
    let _ = ensure_socket_mount(agent, AGENT_CONTAINER);
}

/// The agent's `securityContext`: what Pod Security `restricted` asks of every container
/// (https://kubernetes.io/docs/concepts/security/pod-security-standards/#restricted: no
/// privilege escalation, non-root, capabilities dropped, seccomp RuntimeDefault or
/// Localhost), set on the agent itself so it passes whatever the pod level says. Its user
/// is named only when the pod-level user is root; see [`pod_runs_as_root`].
fn secure_agent(agent: &mut Map, pod_is_root: bool) {
    agent.set_default(
        "securityContext",
        Node::Map(Map::from_pairs([
            ("allowPrivilegeEscalation", Node::plain("false")),
            ("readOnlyRootFilesystem", Node::plain("true")),
            ("runAsNonRoot", Node::plain("true")),
            (
                "capabilities",
                Node::Map(Map::from_pairs([(
                    "drop",
                    Node::Seq(vec![Node::string("ALL")]),
                )])),
            ),
        ])),
    );
    let Some(sc) = agent.get_mut("securityContext").and_then(Node::as_map_mut) else {
        return;
    };
    sc.ensure("allowPrivilegeEscalation", Node::plain("false"));
    sc.ensure("runAsNonRoot", Node::plain("true"));
    sc.remove("privileged");
    if let Some(caps) = sc.map_entry("capabilities") {
        if let Some(drop) = caps.seq_entry("drop") {
            if !drop.iter().any(|d| d.as_str() == Some("ALL")) {
                drop.push(Node::string("ALL"));
            }
        }
        caps.remove("add");
    }
    let user = AGENT_UID.to_string();
    if pod_is_root {
        // Explicit, so the pod-level `runAsUser: 0` does not meet the agent's
        // `runAsNonRoot` and keep the pod from starting.
        let at = sc.position("runAsNonRoot").map_or(sc.0.len(), |i| i + 1);
        if sc.get("runAsUser").is_none() {
            sc.insert_at(at, "runAsUser", Node::plain(user));
        }
    } else if sc.get_str("runAsUser") == Some(user.as_str()) {
        // Written by an older injection; OpenShift's restricted-v2 refuses it.
        sc.remove("runAsUser");
    }
    if sc.get("seccompProfile").is_none() {
        let at = sc.position("capabilities").unwrap_or(sc.0.len());
        sc.insert_at(
            at,
            "seccompProfile",
            Node::Map(Map::from_pairs([("type", Node::string("RuntimeDefault"))])),
        );
    }
}

/// The liveness tolerance the agent's worst restart needs (deploy/base's worker liveness,
/// 5 s × 12: an outage of D seconds fails at most floor(D/5)+1 probes, so anything under
/// (12 − 1) × 5 = 55 s passes; the agent's worst restart is 43 s, docs/probes.md).
const AGENT_RESTART_TOLERANCE_S: u64 = 55;

/// Raises the failureThreshold of a liveness probe on the agent so that an agent restart
/// alone never fails it: (failureThreshold − 1) × periodSeconds ≥ 55 s, keeping the period
/// (the user's choice of how often) and the original when it is already that tolerant.
fn tolerate_agent_restart(probe: &mut Map) {
    let on_agent = probe
        .get("httpGet")
        .and_then(Node::as_map)
        .is_some_and(|h| h.get_str("port") == Some("9180"));
    if on_agent {
        tolerate_outage(probe, AGENT_RESTART_TOLERANCE_S);
    }
}

/// Raises `probe`'s failureThreshold, keeping its period, so that failing for `seconds`
/// fails it not yet: (failureThreshold − 1) × periodSeconds ≥ `seconds`.
fn tolerate_outage(probe: &mut Map, seconds: u64) {
    let number = |key: &str, default: u64| {
        probe
            .get_str(key)
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|n| *n > 0)
            .unwrap_or(default)
    };
    // Kubernetes' defaults.
    let period = number("periodSeconds", 10);
    let failures = number("failureThreshold", 3);
    if (failures - 1) * period < seconds {
        let needed = seconds.div_ceil(period) + 1;
        probe.set("failureThreshold", Node::plain(needed.to_string()));
    }
}

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
//! two templates get a leader's and a member's agent (SPEC §9).
//!
//! This module is the command (its flags, [`run`]) and the options; the rewrite is split by
//! concern: `documents` walks the YAML stream and the workload kinds to their pod
//! templates; `pod` wires one pod template (the one pod-level transform, also the
//! webhook's), `agent` the agent container in it, `probes` each container's probes on the
//! agent, `security` the agent's `securityContext`; `upstreams`, `group`, `lws`, `mesh` and
//! `resources` what upstream containers, groups, LeaderWorkerSet, service meshes and the
//! agent's resources change in that wiring.

mod agent;
mod documents;
mod error;
mod group;
mod lws;
mod mesh;
mod pod;
mod probes;
mod resources;
mod security;
mod upstreams;
pub mod webhook;
mod yaml;

use std::io::{Read, Write};

use anyhow::Context as _;
use clap::Args;
use vitals_proto::env;

pub use self::documents::{inject_documents, inject_report, Report};
pub use self::error::{InjectError, Problem};
pub use self::pod::INJECTED_LABEL;
pub use self::upstreams::{CANARY_ANNOTATION_PREFIX, PROFILE_ANNOTATION_PREFIX};

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

/// Whether a port as the YAML spells it (`containerPort`, a probe's `port`) is [`AGENT_PORT`].
fn is_agent_port(text: &str) -> bool {
    text == AGENT_PORT.to_string()
}

/// Flags of `vitals-agent inject`.
#[derive(Debug, Args)]
pub struct InjectArgs {
    /// YAML to read (one or more documents); `-` (the default) reads stdin.
    #[arg(
        short = 'f',
        long = "filename",
        value_name = "FILE",
        default_value = "-",
        env = env::FILENAME
    )]
    pub file: String,
    /// A protocol worker container (repeatable, or comma-separated); each pod template's
    /// `vitals.dev/workers` annotation names more. Every other container with probes
    /// becomes an upstream: the agent runs its original probes.
    #[arg(
        long = "container",
        value_name = "NAME",
        env = env::CONTAINER,
        value_delimiter = ','
    )]
    pub containers: Vec<String>,
    /// Add the agent as an ordinary container, for clusters without native sidecars
    /// (before Kubernetes 1.29).
    #[arg(long, env = env::LEGACY_SIDECAR)]
    pub legacy_sidecar: bool,
    /// Agent image [default: vitals-agent:VERSION (this binary's), or the image already
    /// injected by this version].
    #[arg(long, value_name = "IMAGE", env = env::IMAGE)]
    pub image: Option<String>,
    /// Leave documents of kinds inject does not know as they are, even when they carry
    /// containers (a KServe InferenceService): they are then NOT watched. Without it such a
    /// document is an error.
    #[arg(long, env = env::SKIP_UNKNOWN)]
    pub skip_unknown: bool,
    /// The agent container's pull secret and resources.
    #[command(flatten)]
    pub agent: AgentArgs,
    /// Print no summary and no warnings on stderr.
    #[arg(short, long, env = env::QUIET)]
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
        env = env::IMAGE_PULL_SECRETS,
        value_delimiter = ','
    )]
    pub image_pull_secrets: Vec<String>,
    /// The agent container's `resources`, as JSON (`{"requests": {...}, "limits": {...}}`),
    /// instead of inject's own (requests 10m/16Mi; limits 200m/64Mi, in a group pod a
    /// memory limit only, SPEC §11).
    #[arg(
        long = "agent-resources",
        value_name = "JSON",
        env = env::AGENT_RESOURCES,
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

//! Why inject refuses a stream ([`InjectError`]) or one workload ([`Problem`]): every error
//! inject reports, with the message a person reads.

use super::upstreams::{CANARY_ANNOTATION_PREFIX, PROFILE_ANNOTATION_PREFIX};
use super::{AGENT_PORT, SOCKET_DIR, WORKERS_ANNOTATION};
use vitals_proto::env::UPSTREAMS as UPSTREAMS_ENV;

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
    /// A container's probes already point at the agent, but the agent's upstreams have no
    /// entry for the container: their originals are unknown, so the agent would answer 404
    /// for them or, in a group pod, pass them unchecked.
    #[error("container {container}: {probes} already on the agent, but the agent's {UPSTREAMS_ENV} has no entry for {container}, so the original probes are unknown (was that env edited, or {container} taken out of {WORKERS_ANNOTATION}?); give {container} its own probes back, or name it as a worker")]
    OriginalProbeUnknown {
        /// The container.
        container: String,
        /// Its probes on the agent (`livenessProbe, readinessProbe`).
        probes: String,
    },
    /// A worker already mounts something else where the socket goes.
    #[error("container {container} mounts volume {volume} at {SOCKET_DIR}, where the agent's socket goes")]
    MountConflict {
        /// The container.
        container: String,
        /// Its volume there.
        volume: String,
    },
}

/// A [`Problem::Shape`]: `path` is missing or is not `expected`.
pub(super) fn shape(path: &str, expected: &'static str) -> Problem {
    Problem::Shape {
        path: path.to_string(),
        expected,
    }
}

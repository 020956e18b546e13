//! The `/status` document's types: what the agent serves and the CLI reads back. Every
//! field is the operator's view, in seconds and text, never an internal type.

use serde::{Deserialize, Serialize};
use vitals_proto::message::{CheckReport, Heartbeat, Progress};

use crate::surfaces::ticker::Transition;

/// Pass or fail, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerdictDoc {
    /// Whether it passes.
    pub ok: bool,
    /// Why not; `null` when `ok`.
    pub reason: Option<String>,
}

impl VerdictDoc {
    /// A verdict as the document shows it.
    pub fn of<E: ToString>(r: &Result<(), E>) -> Self {
        Self {
            ok: r.is_ok(),
            reason: r.as_ref().err().map(ToString::to_string),
        }
    }

    /// `ok` or `fail: <reason>`, as the probe port answers.
    pub fn text(&self) -> String {
        self.reason
            .as_ref()
            .map_or_else(|| "ok".to_owned(), |r| format!("fail: {r}"))
    }
}

/// The agent itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentDoc {
    /// Software version.
    pub version: String,
    /// Start time, RFC 3339 UTC.
    pub started_at: String,
    /// Seconds since start.
    pub uptime_seconds: f64,
    /// Worker socket path.
    pub socket: String,
    /// A shutdown signal arrived.
    pub shutting_down: bool,
    /// `/livez`.
    pub live: VerdictDoc,
    /// `/readyz`.
    pub ready: VerdictDoc,
    /// `/startupz`.
    pub startup: VerdictDoc,
}

/// What /proc shows of a worker's process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcDoc {
    /// Whether /proc checks run for it.
    pub enabled: bool,
    /// Why not, when off.
    pub off_reason: Option<String>,
    /// `exists`, `gone` or `unknown`.
    pub process: String,
    /// Latest state letter.
    pub state: Option<String>,
    /// CPU seconds so far.
    pub cpu_seconds: Option<f64>,
    /// Resident memory.
    pub rss_bytes: Option<u64>,
    /// Threads.
    pub threads: Option<u64>,
    /// Age of the latest sample.
    pub sample_age_seconds: Option<f64>,
    /// The last sampling error.
    pub error: Option<String>,
}

/// A worker's current instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceDoc {
    /// Instance id.
    pub id: String,
    /// Worker software version.
    pub version: String,
    /// Pid from SO_PEERCRED (0: another PID namespace); /proc uses it.
    pub pid: u32,
    /// Pid the worker claims in `hello`.
    pub hello_pid: u32,
    /// Peer uid.
    pub uid: u32,
    /// Promised heartbeat period.
    pub heartbeat_ms: u64,
    /// Current phase.
    pub phase: Option<String>,
    /// Phase detail.
    pub detail: String,
    /// Load progress.
    pub progress: Option<Progress>,
    /// Latest value of each check.
    pub checks: Vec<CheckReport>,
    /// Seconds since the last heartbeat (or hello).
    pub heartbeat_age_seconds: f64,
    /// Latest heartbeat counters.
    pub heartbeat: Option<Heartbeat>,
    /// Seconds since the connection closed, while disconnected.
    pub disconnected_seconds: Option<f64>,
    /// Seconds from hello to first ready.
    pub startup_seconds: Option<f64>,
    /// Messages received.
    pub messages: u64,
    /// Connections (hellos) of this instance.
    pub connections: u64,
    /// /proc observations.
    pub proc: ProcDoc,
}

/// One worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerDoc {
    /// Name.
    pub name: String,
    /// Named by `--expect`.
    pub expected: bool,
    /// Has an open connection.
    pub connected: bool,
    /// `/livez/{name}`.
    pub live: VerdictDoc,
    /// `/readyz/{name}`.
    pub ready: VerdictDoc,
    /// `/startupz/{name}`.
    pub startup: VerdictDoc,
    /// `spinning` or `blocked`, for a heartbeat timeout.
    pub diagnosis: Option<String>,
    /// New instances after the first.
    pub restarts: u64,
    /// The current instance, once one said hello.
    pub instance: Option<InstanceDoc>,
}

/// The latest run of one of an upstream's own probes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpstreamProbeDoc {
    /// `startup`, `liveness` or `readiness`.
    pub probe: String,
    /// What it does: `GET :8000/health`, `tcp :8001`, `grpc :8001`.
    pub action: String,
    /// `periodSeconds`.
    pub period_seconds: f64,
    /// `timeoutSeconds`.
    pub timeout_seconds: f64,
    /// The latest result; `None` before the first one.
    pub result: Option<VerdictDoc>,
    /// Seconds since that result's probe started.
    pub age_seconds: Option<f64>,
    /// How long the upstream took to answer (or fail), in milliseconds.
    pub latency_ms: Option<f64>,
}

/// What an upstream's own metrics say (SPEC §8 `metrics`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpstreamMetricsDoc {
    /// The built-in profile, or `None` for a custom one.
    pub profile: Option<String>,
    /// Where they are scraped (`:8000/metrics`).
    pub endpoint: String,
    /// The sum of the `work` counters in the latest page.
    pub work: Option<f64>,
    /// Seconds the answered scrapes have shown the longest-stalled engine busy without a
    /// work counter moving, up to the latest of them (0 while idle or working; time since
    /// then is not counted).
    pub busy_without_work_seconds: f64,
    /// Sum of the busy gauges.
    pub busy: Option<f64>,
    /// Sum of the pending gauges.
    pub pending: Option<f64>,
    /// Seconds since the latest page was read.
    pub page_age_seconds: Option<f64>,
    /// Why the latest scrape failed, if it did.
    pub scrape_error: Option<String>,
    /// Each engine's series and clock (SPEC §12), in label order; one unlabelled engine
    /// for a server without engine labels.
    #[serde(default)]
    pub engines: Vec<EngineDoc>,
    /// The sleep in progress (SPEC §12).
    #[serde(default)]
    pub sleep: Option<SleepDoc>,
    /// Seconds the metrics have gone unread because the server is idle and reading them
    /// would keep it awake (SPEC §12).
    #[serde(default)]
    pub unread_while_idle_seconds: Option<f64>,
}

/// One engine of an upstream (SPEC §12).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EngineDoc {
    /// Its engine label's value (`None`: the series carry none).
    pub engine: Option<String>,
    /// The sum of its `work` counters in the latest page.
    pub work: Option<f64>,
    /// Its busy gauges.
    pub busy: Option<f64>,
    /// Its pending gauges.
    pub pending: Option<f64>,
    /// Seconds the answered scrapes have shown it busy without a work counter moving (its
    /// stall clock; 0 while idle, working or asleep).
    pub busy_without_work_seconds: f64,
}

/// A sleeping upstream (SPEC §12).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SleepDoc {
    /// Seconds since a scrape first showed it asleep.
    pub seconds: f64,
    /// What will wake it: `request` (it stays ready) or `operator` (not ready).
    pub wakes: String,
}

/// An upstream's process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpstreamProcDoc {
    /// Its pid, once found.
    pub pid: Option<u32>,
    /// `socket` (holds the listening socket) or `cgroup` (the only container whose
    /// processes match the socket's uid and the recorded command line).
    pub found_by: Option<String>,
    /// Why /proc checks are off, when it could not be found.
    pub off_reason: Option<String>,
    /// `exists`, `gone` or `unknown`.
    pub process: String,
    /// The latest /proc state letter.
    pub state: Option<String>,
    /// Resident memory.
    pub rss_bytes: Option<u64>,
}

/// An upstream's load progress (SPEC §12), from /proc, until its startup probe first
/// passes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpstreamLoadDoc {
    /// Still loading (its startup probe never passed); `false`: the values at the end.
    pub loading: bool,
    /// Resident memory.
    pub rss_bytes: Option<u64>,
    /// CPU time, user + system.
    pub cpu_seconds: Option<f64>,
    /// Bytes its read calls returned (`rchar` of `/proc/<pid>/io`).
    pub read_bytes: Option<u64>,
    /// Bytes read from storage for it (`read_bytes` of `/proc/<pid>/io`).
    pub storage_read_bytes: Option<u64>,
    /// Why `/proc/<pid>/io` is not readable (another uid), when it is not.
    pub read_error: Option<String>,
    /// Seconds since any of them last moved (`load_stalled` at `--load-stall-timeout`).
    pub unmoved_seconds: f64,
}

/// A child of an upstream's process that exited and was not reaped (SPEC §12).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ZombieDoc {
    /// Its pid.
    pub pid: u32,
    /// Its name.
    pub comm: String,
    /// Seconds it has been a zombie.
    pub seconds: f64,
}

/// An upstream's opt-in canary (SPEC §12).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpstreamCanaryDoc {
    /// `POST :8000/v1/completions`.
    pub request: String,
    /// Idle seconds before one is sent.
    pub idle_seconds: f64,
    /// The deadline on its whole answer, in seconds.
    pub deadline_seconds: f64,
    /// One is in flight.
    pub in_flight: bool,
    /// The latest one's result: `ok`, `deadline` or `error`.
    pub last_result: Option<String>,
    /// Why the latest one was an `error`.
    pub last_error: Option<String>,
    /// Seconds since the latest one ended.
    pub last_age_seconds: Option<f64>,
    /// How long the latest one took, in milliseconds.
    pub last_took_ms: Option<f64>,
    /// A missed deadline holds `loop_stalled: canary`.
    pub missed: bool,
}

/// One upstream: a container watched through its own probes (SPEC §8).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpstreamDoc {
    /// The container.
    pub name: String,
    /// Always `upstream`.
    pub kind: String,
    /// `/livez/{name}`.
    pub live: VerdictDoc,
    /// `/readyz/{name}`.
    pub ready: VerdictDoc,
    /// `/startupz/{name}`.
    pub startup: VerdictDoc,
    /// Its probes' latest results.
    pub probes: Vec<UpstreamProbeDoc>,
    /// The metrics profile's name, if any.
    pub profile: Option<String>,
    /// Its metrics, when configured.
    pub metrics: Option<UpstreamMetricsDoc>,
    /// Its process.
    pub proc: UpstreamProcDoc,
    /// Its load progress, once its process was sampled while loading (SPEC §12).
    #[serde(default)]
    pub load: Option<UpstreamLoadDoc>,
    /// Its process's zombie children (SPEC §12).
    #[serde(default)]
    pub zombies: Vec<ZombieDoc>,
    /// Its canary, when it has one (SPEC §12).
    #[serde(default)]
    pub canary: Option<UpstreamCanaryDoc>,
}

/// One member of a leader's group (SPEC §9).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberDoc {
    /// Its index (`member <i>` in reasons).
    pub member: usize,
    /// Its agent's address, as configured.
    pub address: String,
    /// `live`, `not_live` or `unreachable` (no answer for `--group-timeout`).
    pub state: String,
    /// Its latest answer's `live`, `ready` and `reason` (`null` before any answer).
    pub live: Option<bool>,
    /// See `live`.
    pub ready: Option<bool>,
    /// See `live`.
    pub reason: Option<String>,
    /// Each container's latest known `pid:starttime`.
    pub instances: std::collections::BTreeMap<String, String>,
    /// Those recorded at formation (`null` while forming).
    pub recorded: Option<std::collections::BTreeMap<String, String>>,
    /// Seconds since its instances last changed.
    pub instance_age_seconds: Option<f64>,
    /// Seconds since its latest answer.
    pub last_answer_seconds: Option<f64>,
    /// Why the polls since that answer failed.
    pub poll_error: Option<String>,
}

/// A leader's group (SPEC §9).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupDoc {
    /// Formed (this epoch).
    pub formed: bool,
    /// Seconds since it formed.
    pub formed_seconds: Option<f64>,
    /// What the group adds to the leader's readiness.
    pub ready: VerdictDoc,
    /// What the group adds to the leader's model liveness.
    pub live: VerdictDoc,
    /// Times the leader's own model restart started formation over.
    pub resets: u64,
    /// The members, in index order.
    pub members: Vec<MemberDoc>,
}

/// The `/status` document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusDoc {
    /// The agent.
    pub agent: AgentDoc,
    /// Every known worker, by name.
    pub workers: Vec<WorkerDoc>,
    /// Every upstream, by name (absent from older agents' documents).
    #[serde(default)]
    pub upstreams: Vec<UpstreamDoc>,
    /// The last verdict transitions, oldest first.
    pub transitions: Vec<Transition>,
    /// A group leader's group (absent on other agents).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<GroupDoc>,
}

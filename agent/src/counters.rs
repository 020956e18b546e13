//! What the sources count where it happens: worker protocol errors and unknown messages,
//! runs of an upstream's own probes, its failed scrapes and canaries, a leader's polls of
//! its members. The sources hold these handles; `surfaces::metrics` registers them in the
//! agent's one registry beside its gauges and never advances them, so the sources need
//! nothing of the surfaces.

use std::time::Duration;

use prometheus::core::Collector;
use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts};
use vitals_core::state::group::PollError;
use vitals_core::state::probe_result::Outcome;
use vitals_core::upstreams::{ProbeKind, UpstreamSpec};
use vitals_proto::ErrorCode;

/// The metric name prefix of every series the agent exports.
pub const NAMESPACE: &str = "vitals";

/// Options of a series named `vitals_<name>`.
pub fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help).namespace(NAMESPACE)
}

/// Options of a histogram named `vitals_<name>` with `buckets`.
pub fn histogram_opts(name: &str, help: &str, buckets: &[f64]) -> HistogramOpts {
    HistogramOpts::new(name, help)
        .namespace(NAMESPACE)
        .buckets(buckets.to_vec())
}

/// Upstream answer latency buckets: from a local server's sub-millisecond answer to a
/// probe's longest timeouts.
const UPSTREAM_BUCKETS: &[f64] = &[0.001, 0.005, 0.025, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Group poll latency buckets: a member agent answers from memory in about a
/// millisecond; a poll's bound is `--group-poll` (1 s by default).
const GROUP_BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.25, 0.5, 1.0, 2.5];

/// The sources' counters (cheap to clone: each handle is shared).
#[derive(Clone)]
pub struct SourceCounters {
    protocol_errors: IntCounterVec,
    unknown_messages: IntCounter,
    upstream_probe_duration: HistogramVec,
    upstream_probe_results: IntCounterVec,
    upstream_scrape_errors: IntCounterVec,
    upstream_canaries: IntCounterVec,
    group_poll_duration: HistogramVec,
}

impl std::fmt::Debug for SourceCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceCounters").finish_non_exhaustive()
    }
}

impl Default for SourceCounters {
    fn default() -> Self {
        Self::new()
    }
}

impl SourceCounters {
    /// Every counter at zero, registered nowhere yet ([`Self::collectors`]).
    pub fn new() -> Self {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(opts(name, help), labels)
                .expect("metric options are valid constants")
        };
        let histogram = |name: &str, help: &str, buckets: &[f64], labels: &[&str]| {
            HistogramVec::new(histogram_opts(name, help, buckets), labels)
                .expect("histogram options are valid constants")
        };
        let protocol_errors = counter(
            "protocol_errors_total",
            "Worker connections closed for breaking protocol v1, by error code.",
            &["code"],
        );
        for code in ErrorCode::ALL {
            protocol_errors.with_label_values(&[code.as_str()]);
        }
        Self {
            protocol_errors,
            unknown_messages: IntCounter::with_opts(opts(
                "protocol_unknown_messages_total",
                "Worker messages ignored because their type is missing or unknown.",
            ))
            .expect("metric options are valid constants"),
            upstream_probe_duration: histogram(
                "upstream_probe_duration_seconds",
                "Time an upstream took to answer the agent's run of its own probe (SPEC §8), by probe (startup, liveness, readiness).",
                UPSTREAM_BUCKETS,
                &["worker", "probe"],
            ),
            upstream_probe_results: counter(
                "upstream_probe_results_total",
                "Runs of an upstream's own probes, by probe and result (pass, or the failure: status, timeout, refused, reset, redirects, protocol, grpc, error).",
                &["worker", "probe", "result"],
            ),
            upstream_scrape_errors: counter(
                "upstream_scrape_errors_total",
                "Scrapes of an upstream's own metrics that gave no reading, by reason (unauthorized, timeout, refused, reset, status, protocol, parse, error).",
                &["worker", "reason"],
            ),
            upstream_canaries: counter(
                "upstream_canaries_total",
                "Canary requests sent to an idle upstream (SPEC §12), by result: ok, deadline (its whole answer missed the deadline: loop_stalled: canary), error (answered otherwise).",
                &["worker", "result"],
            ),
            // The series exist only on a group's leader, so an alert on them never fires
            // for the pods that are not one.
            group_poll_duration: histogram(
                "group_poll_duration_seconds",
                "Time a group leader's poll of one member's /group took (SPEC §9), by result (ok, timeout, lookup, refused, reset, ..., status, garbage).",
                GROUP_BUCKETS,
                &["result"],
            ),
        }
    }

    /// The handles, for registering once in the agent's registry.
    pub fn collectors(&self) -> Vec<Box<dyn Collector>> {
        vec![
            Box::new(self.protocol_errors.clone()),
            Box::new(self.unknown_messages.clone()),
            Box::new(self.upstream_probe_duration.clone()),
            Box::new(self.upstream_probe_results.clone()),
            Box::new(self.upstream_scrape_errors.clone()),
            Box::new(self.upstream_canaries.clone()),
            Box::new(self.group_poll_duration.clone()),
        ]
    }

    /// Records one run of an upstream's probe.
    pub fn upstream_probe(&self, worker: &str, kind: ProbeKind, outcome: &Outcome) {
        let result = match &outcome.result {
            Ok(_) => "pass",
            Err(f) => f.kind(),
        };
        self.upstream_probe_results
            .with_label_values(&[worker, kind.label(), result])
            .inc();
        self.upstream_probe_duration
            .with_label_values(&[worker, kind.label()])
            .observe(outcome.latency.as_secs_f64());
    }

    /// Counts a scrape of an upstream's metrics that gave no reading.
    pub fn upstream_scrape_error(&self, worker: &str, reason: &str) {
        self.upstream_scrape_errors
            .with_label_values(&[worker, reason])
            .inc();
    }

    /// Counts one canary sent to an upstream, by its result label.
    pub fn upstream_canary(&self, worker: &str, result: &str) {
        self.upstream_canaries
            .with_label_values(&[worker, result])
            .inc();
    }

    /// Makes upstream `name`'s probe-latency series, and its canary counts when it has a
    /// canary, exist before their first event, so a rate over them reads 0, not nothing.
    pub fn show_upstream(&self, name: &str, spec: &UpstreamSpec) {
        for kind in spec.probes.keys() {
            self.upstream_probe_duration
                .with_label_values(&[name, kind.label()]);
        }
        if spec.canary.is_some() {
            for result in ["ok", "deadline", "error"] {
                self.upstream_canaries.with_label_values(&[name, result]);
            }
        }
    }

    /// Makes a leader's poll series exist before its first poll, so a rate over it reads
    /// 0 rather than nothing (only a leader's metrics show them).
    pub fn show_group_polls(&self) {
        self.group_poll_duration.with_label_values(&["ok"]);
    }

    /// Records one poll of a group member: `ok`, or why it failed ([`PollError::result`]).
    pub fn group_poll(&self, took: Duration, result: Result<(), &PollError>) {
        let result = result.map_or_else(PollError::result, |()| "ok");
        self.group_poll_duration
            .with_label_values(&[result])
            .observe(took.as_secs_f64());
    }

    /// Counts a protocol error.
    pub fn protocol_error(&self, code: ErrorCode) {
        self.protocol_errors
            .with_label_values(&[code.as_str()])
            .inc();
    }

    /// Counts an ignored message of unknown type.
    pub fn unknown_message(&self) {
        self.unknown_messages.inc();
    }
}

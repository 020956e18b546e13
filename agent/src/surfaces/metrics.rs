//! Prometheus metrics (SPEC §4, §7): the agent's one registry and its exposition; gauges
//! updated from registry snapshots and verdicts, the ticker's counters, the probe counts.
//!
//! Gauges are a view of the snapshot, set by the ticker and just before each scrape
//! ([`Metrics::refresh`], which counts nothing). Counters advance only on the ticker (edges
//! from [`vitals_core::verdict::edges`], and [`Metrics::mirror`] for the counters that mirror a
//! worker's own monotonic numbers), on the probes this port answers, and, for the sources'
//! events (protocol errors, upstream probe runs, scrapes, canaries, group polls), where those
//! happen, through the [`SourceCounters`] registered here.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use prometheus::core::Collector;
use prometheus::{
    CounterVec, Encoder, GaugeVec, HistogramVec, IntCounterVec, IntGaugeVec, Registry, TextEncoder,
};
use vitals_proto::Phase;

use crate::counters::{histogram_opts, opts, SourceCounters};
use crate::surfaces::text;
use vitals_core::snapshot::Snapshot;
use vitals_core::state::registry::State;
use vitals_core::verdict::group::{BrokenReason, MemberStatus};
use vitals_core::verdict::{LiveReason, Probe, Target};

/// Probe latency buckets: answers take about 200 µs, so the fine buckets show drift early;
/// the coarse ones reach the kubelet's 1 s default timeout and beyond, so a p99 of seconds
/// (a starved runtime, a stalled node) is measured rather than clipped at the top bucket,
/// and `VitalsProbeSlow` can fire.
const PROBE_BUCKETS: &[f64] = &[
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// The label values of a series without labels.
const NO_LABELS: &[&str] = &[];

/// How far each worker's mirrored counters have been advanced.
#[derive(Debug, Default)]
struct Cursor {
    instance: String,
    progress: u64,
    cpu_seconds: f64,
    restarts: u64,
}

/// The agent's metric handles and their registry.
pub struct Metrics {
    registry: Registry,
    counters: SourceCounters,
    probe_requests: IntCounterVec,
    probe_duration: HistogramVec,
    connected: IntGaugeVec,
    ready: IntGaugeVec,
    live: IntGaugeVec,
    phase: IntGaugeVec,
    heartbeat_age: GaugeVec,
    progress: IntCounterVec,
    pending: IntGaugeVec,
    in_flight: IntGaugeVec,
    restarts: IntCounterVec,
    hangs: IntCounterVec,
    startup_seconds: GaugeVec,
    cpu: CounterVec,
    rss: IntGaugeVec,
    threads: IntGaugeVec,
    upstream_proc_watched: IntGaugeVec,
    upstream_load_rss: IntGaugeVec,
    upstream_load_cpu: GaugeVec,
    upstream_load_read: IntGaugeVec,
    upstream_load_unmoved: GaugeVec,
    group_members: IntGaugeVec,
    group_formed: IntGaugeVec,
    group_broken: IntCounterVec,
    cursors: Mutex<HashMap<String, Cursor>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Registers every metric (and the agent's own `process_*` collector).
    pub fn new() -> Self {
        let registry = Registry::new();
        let register = |c: Box<dyn Collector>| {
            registry
                .register(c)
                .expect("metric names are distinct constants, registered once");
        };
        macro_rules! metric {
            ($ty:ty, $name:expr, $help:expr, $labels:expr) => {{
                let m = <$ty>::new(opts($name, $help), $labels)
                    .expect("metric options are valid constants");
                register(Box::new(m.clone()));
                m
            }};
        }
        let w = &["worker"];
        let probe_duration = HistogramVec::new(
            histogram_opts(
                "probe_duration_seconds",
                "Time to answer a probe, from request to response body.",
                PROBE_BUCKETS,
            ),
            &["probe"],
        )
        .expect("histogram options are valid constants");
        register(Box::new(probe_duration.clone()));
        register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ));
        let counters = SourceCounters::new();
        for c in counters.collectors() {
            register(c);
        }
        Self {
            probe_requests: metric!(
                IntCounterVec,
                "probe_requests_total",
                "Probe requests answered, by probe (livez, readyz, startupz), target (_agent, _all or a container) and result (pass, fail).",
                &["probe", "target", "result"]
            ),
            probe_duration,
            connected: metric!(IntGaugeVec, "worker_connected", "1 while the worker has an open connection.", w),
            ready: metric!(IntGaugeVec, "worker_ready", "1 while the worker's readiness verdict passes.", w),
            live: metric!(IntGaugeVec, "worker_live", "1 while the worker's liveness verdict passes.", w),
            phase: metric!(
                IntGaugeVec,
                "worker_phase",
                "1 for the worker's current lifecycle phase, 0 for the others.",
                &["worker", "phase"]
            ),
            heartbeat_age: metric!(
                GaugeVec,
                "worker_heartbeat_age_seconds",
                "Seconds since the worker's last heartbeat (or hello).",
                w
            ),
            progress: metric!(
                IntCounterVec,
                "worker_progress_total",
                "Inference-loop iterations reported in heartbeats.",
                w
            ),
            pending: metric!(IntGaugeVec, "worker_pending", "Work queued in the worker, not yet started.", w),
            in_flight: metric!(IntGaugeVec, "worker_in_flight", "Work the worker is computing now.", w),
            restarts: metric!(
                IntCounterVec,
                "worker_restarts_total",
                "New instances of the worker after the first.",
                w
            ),
            hangs: metric!(
                IntCounterVec,
                "worker_hangs_total",
                "Times the worker's liveness started failing, by reason.",
                &["worker", "reason"]
            ),
            startup_seconds: metric!(
                GaugeVec,
                "worker_startup_seconds",
                "Seconds from the current instance's hello to its first ready.",
                w
            ),
            cpu: metric!(
                CounterVec,
                "worker_process_cpu_seconds_total",
                "User and system CPU time of the worker's process, from /proc.",
                w
            ),
            rss: metric!(
                IntGaugeVec,
                "worker_process_resident_memory_bytes",
                "Resident memory of the worker's process, from /proc.",
                w
            ),
            threads: metric!(IntGaugeVec, "worker_process_threads", "Threads of the worker's process, from /proc.", w),
            upstream_proc_watched: metric!(
                IntGaugeVec,
                "upstream_proc_watched",
                "1 when the upstream's process is found and its /proc checks (stopped, uninterruptible, gone) run; 0 when they are off (the reason is in /status).",
                w
            ),
            upstream_load_rss: metric!(
                IntGaugeVec,
                "upstream_load_resident_memory_bytes",
                "Resident memory of an upstream's process while it loads (until its startup probe first passes; then the value at the end of the load).",
                w
            ),
            upstream_load_cpu: metric!(
                GaugeVec,
                "upstream_load_cpu_seconds",
                "CPU time of an upstream's process while it loads (until its startup probe first passes; then the value at the end of the load).",
                w
            ),
            upstream_load_read: metric!(
                IntGaugeVec,
                "upstream_load_read_bytes",
                "Bytes an upstream's process has read while it loads, by kind: rchar (read calls, sockets included) and storage (read_bytes); absent where /proc/<pid>/io is not readable (another uid).",
                &["worker", "kind"]
            ),
            upstream_load_unmoved: metric!(
                GaugeVec,
                "upstream_load_unmoved_seconds",
                "Seconds since an upstream's loading process last moved its memory, CPU time or bytes read (0 once loaded); load_stalled at --load-stall-timeout.",
                w
            ),
            group_members: metric!(
                IntGaugeVec,
                "group_members",
                "A group leader's members, by state (live, not_live, unreachable).",
                &["state"]
            ),
            group_formed: metric!(
                IntGaugeVec,
                "group_formed",
                "1 while a group leader's group is formed (every member answered live since the leader's model started).",
                &[]
            ),
            group_broken: metric!(
                IntCounterVec,
                "group_broken_total",
                "Times a group leader's group broke (its model's liveness fails), by reason (restarted, lost, not_live).",
                &["reason"]
            ),
            counters,
            cursors: Mutex::default(),
            registry,
        }
    }

    /// Counts one answered probe.
    pub fn probe(&self, probe: Probe, target: &Target, ok: bool, took: Duration) {
        let result = if ok { "pass" } else { "fail" };
        self.probe_requests
            .with_label_values(&[probe.as_str(), text::target(target), result])
            .inc();
        self.probe_duration
            .with_label_values(&[probe.as_str()])
            .observe(took.as_secs_f64());
    }

    /// The counters the sources advance where their events happen.
    pub fn counters(&self) -> &SourceCounters {
        &self.counters
    }

    /// Counts a leader's group breaking (the ticker's edge, [`vitals_core::verdict::edges`]).
    pub fn group_broken(&self, reason: &BrokenReason) {
        self.group_broken.with_label_values(&[reason.kind()]).inc();
    }

    /// Counts a worker's liveness starting to fail (the ticker's edge).
    pub fn hang(&self, worker: &str, reason: LiveReason) {
        self.hangs
            .with_label_values(&[worker, reason.as_str()])
            .inc();
    }

    /// Sets every gauge from `snapshot` (and makes each series that should exist): what
    /// `GET /metrics` does before it encodes, and the ticker every tick. Counts nothing, so
    /// any number of scrapes leaves every counter as it was.
    pub fn refresh(&self, snapshot: &Snapshot) {
        let (state, verdicts, now) = (&snapshot.state, &snapshot.verdicts, snapshot.at);
        for (name, worker) in &state.workers {
            let n = name.as_str();
            let l = &[n];
            let flag = |b: bool| i64::from(b);
            let v = verdicts.get(n);
            self.connected
                .with_label_values(l)
                .set(flag(worker.conn.is_some()));
            self.ready
                .with_label_values(l)
                .set(flag(v.is_some_and(|v| v.ready.is_ok())));
            self.live
                .with_label_values(l)
                .set(flag(v.is_some_and(|v| v.live.is_ok())));
            for reason in LiveReason::ALL {
                self.hangs.with_label_values(&[n, reason.as_str()]);
            }
            let inst = worker.instance.as_ref();
            let current = inst.and_then(|i| i.phase());
            for p in Phase::ALL {
                self.phase
                    .with_label_values(&[n, p.as_str()])
                    .set(flag(current == Some(p)));
            }
            // The mirrored counters' series exist from the start, at zero; the ticker
            // advances them ([`Metrics::mirror`]).
            for c in [&self.restarts, &self.progress] {
                c.with_label_values(l);
            }
            self.cpu.with_label_values(l);
            let Some(inst) = inst else {
                // Expected, never seen: the series exist, at zero.
                for g in [&self.pending, &self.in_flight, &self.rss, &self.threads] {
                    g.with_label_values(l);
                }
                continue;
            };
            self.heartbeat_age.with_label_values(l).set(
                now.saturating_duration_since(inst.heartbeat_at)
                    .as_secs_f64(),
            );
            match inst.ready_at {
                Some(at) => self.startup_seconds.with_label_values(l).set(
                    at.saturating_duration_since(inst.first_hello_at)
                        .as_secs_f64(),
                ),
                None => {
                    // Not known for the current instance (yet).
                    let _ = self.startup_seconds.remove_label_values(l);
                }
            }
            let beat = inst
                .heartbeat
                .map_or((0, 0, 0), |b| (b.progress, b.pending, b.in_flight));
            self.pending.with_label_values(l).set(clamp(beat.1));
            self.in_flight.with_label_values(l).set(clamp(beat.2));
            match inst.proc.latest.as_ref() {
                Some(s) => {
                    self.rss.with_label_values(l).set(clamp(s.rss_bytes));
                    self.threads.with_label_values(l).set(clamp(s.threads));
                }
                None => {
                    self.rss.with_label_values(l);
                    self.threads.with_label_values(l);
                }
            }
        }
        self.refresh_upstreams(snapshot);
        self.refresh_group(snapshot);
    }

    /// Advances the counters that mirror each worker's own monotonic numbers (restarts,
    /// loop progress, CPU time) to `state`, by deltas, so they never go backwards across a
    /// restart: the ticker's, like every other count.
    pub fn mirror(&self, state: &State) {
        let mut cursors = self.cursors.lock().unwrap_or_else(PoisonError::into_inner);
        for (name, worker) in &state.workers {
            let l = &[name.as_str()];
            let cursor = cursors.entry(name.to_string()).or_default();
            self.restarts
                .with_label_values(l)
                .inc_by(worker.restarts.saturating_sub(cursor.restarts));
            cursor.restarts = cursor.restarts.max(worker.restarts);
            let Some(inst) = worker.instance.as_ref() else {
                continue;
            };
            if cursor.instance != inst.hello.instance {
                // A new instance counts from zero; the counters keep their sums.
                cursor.instance = inst.hello.instance.clone();
                cursor.progress = 0;
                cursor.cpu_seconds = 0.0;
            }
            let progress = inst.heartbeat.map_or(0, |b| b.progress);
            self.progress
                .with_label_values(l)
                .inc_by(progress.saturating_sub(cursor.progress));
            cursor.progress = cursor.progress.max(progress);
            if let Some(s) = inst.proc.latest.as_ref() {
                let delta = s.cpu_seconds - cursor.cpu_seconds;
                if delta > 0.0 {
                    self.cpu.with_label_values(l).inc_by(delta);
                    cursor.cpu_seconds = s.cpu_seconds;
                }
            }
        }
    }

    /// A leader's group series (SPEC §9); nothing on other agents.
    fn refresh_group(&self, snapshot: &Snapshot) {
        let Some(g) = &snapshot.verdicts.group else {
            return;
        };
        for status in MemberStatus::ALL {
            let count = g.members.iter().filter(|s| **s == status).count();
            self.group_members
                .with_label_values(&[status.as_str()])
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
        self.group_formed
            .with_label_values(NO_LABELS)
            .set(i64::from(g.formed));
        for kind in BrokenReason::KINDS {
            self.group_broken.with_label_values(&[kind]);
        }
        self.counters.show_group_polls();
    }

    /// The per-worker series of each upstream (SPEC §8): verdicts, its busy and pending
    /// gauges re-exported as `worker_in_flight` and `worker_pending`, its process.
    fn refresh_upstreams(&self, snapshot: &Snapshot) {
        let (state, verdicts) = (&snapshot.state, &snapshot.verdicts);
        for (name, u) in &state.upstreams {
            let n = name.as_str();
            let l = &[n];
            let v = verdicts.get_upstream(n);
            let flag = |ok: Option<bool>| i64::from(ok.unwrap_or(false));
            self.ready
                .with_label_values(l)
                .set(flag(v.map(|v| v.ready.is_ok())));
            self.live
                .with_label_values(l)
                .set(flag(v.map(|v| v.live.is_ok())));
            for reason in LiveReason::ALL {
                self.hangs.with_label_values(&[n, reason.as_str()]);
            }
            self.counters.show_upstream(n, &u.spec);
            if u.spec.metrics.is_some() {
                // The latest page, while scrapes succeed: a failing one leaves no evidence.
                // Per container, the sum over its engines (as a worker's one pair).
                let latest = u.engines.last().filter(|_| u.scrape_failure.is_none());
                let gauge = |v: Option<f64>| v.map_or(0, |v| v.clamp(0.0, i64::MAX as f64) as i64);
                self.in_flight
                    .with_label_values(l)
                    .set(gauge(latest.and_then(|p| p.busy())));
                self.pending
                    .with_label_values(l)
                    .set(gauge(latest.and_then(|p| p.pending())));
            }
            self.upstream_proc_watched
                .with_label_values(l)
                .set(i64::from(u.proc.is_on()));
            if u.load.moved_at.is_some() {
                let load = &u.load;
                self.upstream_load_rss
                    .with_label_values(l)
                    .set(clamp(load.rss_bytes.unwrap_or(0)));
                self.upstream_load_cpu
                    .with_label_values(l)
                    .set(load.cpu_seconds.unwrap_or(0.0));
                if let Some(r) = load.read {
                    for (kind, bytes) in [("rchar", r.rchar), ("storage", r.storage)] {
                        self.upstream_load_read
                            .with_label_values(&[n, kind])
                            .set(clamp(bytes));
                    }
                }
                self.upstream_load_unmoved
                    .with_label_values(l)
                    .set(load.unmoved_for(snapshot.at).as_secs_f64());
            }
            if let Some(s) = u.proc.latest.as_ref().filter(|_| !u.proc.gone) {
                self.rss.with_label_values(l).set(clamp(s.rss_bytes));
                self.threads.with_label_values(l).set(clamp(s.threads));
            }
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Instant;

    use super::*;
    use vitals_core::fixtures::{beat, hello, name, phase, PEER, T};
    use vitals_core::verdict::AgentInput;

    /// Refreshes `m` from `state` as the ticker would at `at`.
    fn refresh(m: &Metrics, state: &State, at: Instant) {
        let agent = AgentInput {
            shutting_down: false,
            last_tick: at,
        };
        m.refresh(&Snapshot::evaluate(Arc::new(state.clone()), agent, &T, at));
        m.mirror(state);
    }

    fn text(m: &Metrics) -> String {
        String::from_utf8(m.encode()).expect("utf8")
    }

    #[test]
    fn names_and_labels_follow_the_spec() {
        let m = Metrics::new();
        let t0 = Instant::now();
        let mut s = State::new(&[name("model")]);
        s.hello(&hello("model", "a"), PEER, 1, t0).expect("free");
        s.message(&name("model"), 1, phase(Phase::Ready, None), t0);
        s.message(&name("model"), 1, beat(5), t0);
        refresh(&m, &s, t0);
        m.probe(Probe::Ready, &Target::All, true, Duration::from_micros(20));
        let out = text(&m);
        for want in [
            "vitals_probe_requests_total{probe=\"readyz\",result=\"pass\",target=\"_all\"} 1",
            "vitals_probe_duration_seconds_bucket{probe=\"readyz\",le=\"0.0001\"} 1",
            "vitals_probe_duration_seconds_bucket{probe=\"readyz\",le=\"10\"} 1",
            "vitals_worker_connected{worker=\"model\"} 1",
            "vitals_worker_ready{worker=\"model\"} 1",
            "vitals_worker_live{worker=\"model\"} 1",
            "vitals_worker_phase{phase=\"ready\",worker=\"model\"} 1",
            "vitals_worker_phase{phase=\"loading\",worker=\"model\"} 0",
            "vitals_worker_heartbeat_age_seconds{worker=\"model\"} 0",
            "vitals_worker_progress_total{worker=\"model\"} 5",
            "vitals_worker_pending{worker=\"model\"} 0",
            "vitals_worker_in_flight{worker=\"model\"} 0",
            "vitals_worker_restarts_total{worker=\"model\"} 0",
            "vitals_worker_hangs_total{reason=\"heartbeat_timeout\",worker=\"model\"} 0",
            "vitals_worker_startup_seconds{worker=\"model\"} 0",
            "vitals_worker_process_resident_memory_bytes{worker=\"model\"} 0",
            "vitals_worker_process_threads{worker=\"model\"} 0",
            "vitals_protocol_errors_total{code=\"too_large\"} 0",
            "vitals_protocol_unknown_messages_total 0",
            "process_resident_memory_bytes ",
            "process_cpu_seconds_total ",
        ] {
            assert!(out.contains(want), "missing {want:?} in\n{out}");
        }
    }

    #[test]
    fn an_upstream_says_whether_its_process_is_watched() {
        use vitals_core::state::proc_track::{FoundBy, Watched};
        let m = Metrics::new();
        let t0 = Instant::now();
        let mut s = vitals_core::fixtures::with_upstreams(
            r#"{"vllm": {"readinessProbe": {"tcpSocket": {"port": 8000}}}, "tei": {"readinessProbe": {"tcpSocket": {"port": 8001}}}}"#,
        );
        if let Some(u) = s.upstreams.get_mut(&name("tei")) {
            u.proc.discovered(Ok(Watched {
                pid: 42,
                start_time: Some(1),
                found_by: FoundBy::Cgroup,
            }));
        }
        refresh(&m, &s, t0);
        let out = text(&m);
        assert!(
            out.contains("vitals_upstream_proc_watched{worker=\"vllm\"} 0"),
            "{out}"
        );
        assert!(
            out.contains("vitals_upstream_proc_watched{worker=\"tei\"} 1"),
            "{out}"
        );
    }

    #[test]
    fn unknown_values_are_omitted_and_counters_survive_restarts() {
        let m = Metrics::new();
        let t0 = Instant::now();
        let mut s = State::new(&[name("model")]);
        refresh(&m, &s, t0);
        let out = text(&m);
        assert!(out.contains("vitals_worker_connected{worker=\"model\"} 0"));
        assert!(!out.contains("vitals_worker_heartbeat_age_seconds{"));
        assert!(!out.contains("vitals_worker_startup_seconds{"));
        let model = name("model");
        s.hello(&hello("model", "a"), PEER, 1, t0).expect("free");
        s.message(&model, 1, beat(10), t0);
        s.message(&model, 1, phase(Phase::Ready, None), t0);
        refresh(&m, &s, t0);
        s.disconnect(&model, 1, t0);
        s.hello(&hello("model", "b"), PEER, 2, t0).expect("free");
        s.message(&model, 2, beat(3), t0);
        refresh(&m, &s, t0);
        let out = text(&m);
        assert!(
            out.contains("vitals_worker_progress_total{worker=\"model\"} 13"),
            "{out}"
        );
        assert!(out.contains("vitals_worker_restarts_total{worker=\"model\"} 1"));
        assert!(
            !out.contains("vitals_worker_startup_seconds{"),
            "new instance not ready yet"
        );
    }

    #[test]
    fn scrapes_count_nothing() {
        let m = Metrics::new();
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(1);
        let agent = AgentInput {
            shutting_down: false,
            last_tick: t1,
        };
        let g = vitals_core::fixtures::broken_group(t0);
        let limits = vitals_core::fixtures::LIMITS;
        let snapshot = Snapshot::evaluate(Arc::new(State::new(&[])), agent, &T, t1)
            .with_group(Arc::new(g), &limits);
        assert!(snapshot
            .verdicts
            .group
            .as_ref()
            .is_some_and(|g| g.live.is_err()));
        let counters = |m: &Metrics| -> Vec<String> {
            text(m)
                .lines()
                .filter(|l| l.starts_with("vitals_") && l.contains("_total"))
                .map(str::to_owned)
                .collect()
        };
        // What GET /metrics does, five times, with no tick in between.
        m.refresh(&snapshot);
        let first = counters(&m);
        for _ in 0..4 {
            m.refresh(&snapshot);
        }
        assert_eq!(counters(&m), first, "N scrapes, the same counters");
        let broken =
            vitals_e2e::prom::series(&text(&m), "vitals_group_broken_total{reason=\"restarted\"}");
        eprintln!("group_broken_total{{restarted}} after 5 scrapes and no tick: {broken:?}");
        assert_eq!(broken, Some(0.0), "only the ticker counts a break");
    }
}

//! An upstream's verdicts (SPEC §8, §12): the one function that decides why
//! `/livez/<container>` of a server that does not speak the protocol fails, from its own
//! probes' latest results, its metrics' stall clock, its canary, its process's /proc track
//! (by the same /proc rules as a worker's, `verdict::proc_rules`), its zombie children and
//! its load progress.

use std::fmt;
use std::time::{Duration, Instant};

use vitals_proto::WorkerName;

use super::*;
use crate::sleep::{Asleep, Wake};

/// Why an upstream's probe fails (SPEC §8), declared in precedence order, which
/// [`UpstreamReason::rank`] states (no `Ord` is derived: a probe's failure detail has no
/// order of its own): the /proc and metrics reasons first, by §7's order, then the process
/// being gone (readiness only), then the container's own probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamReason {
    /// /proc state `T` for `--hang-timeout`.
    Stopped,
    /// /proc state `D` continuously for `--d-state-timeout`.
    Uninterruptible,
    /// Busy per its metrics, and no work counter moved for `--stall-timeout`: the
    /// server, or some engines of a data-parallel one while the others work (SPEC §12).
    LoopStalled(Stalled),
    /// Its opt-in canary missed its deadline (SPEC §12), shown as `loop_stalled: canary`:
    /// an engine that died while idle, which no counter shows.
    CanaryMissed,
    /// A child of its process has been a zombie for [`ZOMBIE_GRACE`] (SPEC §12): readiness,
    /// and liveness where the server cannot recover the child.
    ChildZombie {
        /// The child's name.
        comm: String,
        /// The child's pid.
        pid: u32,
    },
    /// Startup only: loading, and its memory, CPU time and bytes read have not moved for
    /// `--load-stall-timeout` (SPEC §12).
    LoadStalled,
    /// Its process exited (readiness only: a restarting container's liveness is its own
    /// probe's business).
    ProcessGone,
    /// Asleep, and only an operator's wake-up will wake it (readiness only; a server that
    /// a request wakes stays ready, SPEC §12).
    Sleeping,
    /// Its own probe's latest result is a failure.
    ProbeFailed(Failure),
    /// Its own probe has not finished once yet.
    NoResultYet,
}

impl fmt::Display for UpstreamReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Stopped => f.write_str("stopped"),
            Self::Uninterruptible => f.write_str("uninterruptible"),
            Self::LoopStalled(Stalled::Server) => f.write_str("loop_stalled"),
            Self::LoopStalled(Stalled::Engines { engines, of }) => match engines.as_slice() {
                [one] => write!(f, "loop_stalled: engine {one}"),
                all if all.len() == *of => write!(f, "loop_stalled: all {of} engines"),
                some => write!(f, "loop_stalled: engines {}", some.join(", ")),
            },
            Self::CanaryMissed => f.write_str("loop_stalled: canary"),
            Self::ChildZombie { comm, pid } => write!(f, "child_zombie: {comm} {pid}"),
            Self::LoadStalled => f.write_str("load_stalled"),
            Self::ProcessGone => f.write_str("process_gone"),
            Self::Sleeping => f.write_str("sleeping"),
            Self::ProbeFailed(why) => write!(f, "probe_failed: {why}"),
            Self::NoResultYet => f.write_str("no_result_yet"),
        }
    }
}

impl UpstreamReason {
    /// Its place in the precedence order (declaration order): lower is reported first.
    pub fn rank(&self) -> u8 {
        match self {
            Self::Stopped => 0,
            Self::Uninterruptible => 1,
            Self::LoopStalled(_) => 2,
            Self::CanaryMissed => 3,
            Self::ChildZombie { .. } => 4,
            Self::LoadStalled => 5,
            Self::ProcessGone => 6,
            Self::Sleeping => 7,
            Self::ProbeFailed(_) => 8,
            Self::NoResultYet => 9,
        }
    }

    /// The liveness reason of the same name, for the per-reason hang counter.
    pub fn as_live(&self) -> Option<LiveReason> {
        match self {
            Self::Stopped => Some(LiveReason::Stopped),
            Self::Uninterruptible => Some(LiveReason::Uninterruptible),
            Self::LoopStalled(_) | Self::CanaryMissed => Some(LiveReason::LoopStalled),
            Self::LoadStalled => Some(LiveReason::LoadStalled),
            Self::ChildZombie { .. }
            | Self::ProcessGone
            | Self::Sleeping
            | Self::ProbeFailed(_)
            | Self::NoResultYet => None,
        }
    }
}

/// What of a server has stalled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stalled {
    /// The server: its one engine, or (where the engine loop answers the metrics) the
    /// scrapes it left unanswered.
    Server,
    /// These engines (in label order) of a server that has `of` of them.
    Engines {
        /// The stalled engines' labels.
        engines: Vec<String>,
        /// How many engines the server has.
        of: usize,
    },
}

/// The verdicts of one upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamVerdict {
    /// The container.
    pub name: WorkerName,
    /// Whether its process exists, as far as /proc tells.
    pub pid: PidStatus,
    /// Startup: its startup probe's latest result, or `load_stalled` while it loads.
    pub startup: Result<(), UpstreamReason>,
    /// Readiness: live, its process not gone, no zombie child, not slept by an operator,
    /// and its readiness probe (the parts in `ready_checks`).
    pub ready: Result<(), UpstreamReason>,
    /// Liveness: its liveness probe and the /proc and metrics rules.
    pub live: Result<(), UpstreamReason>,
    /// The parts of readiness: `live`, `process`, `children`, `awake`, `readinessProbe`.
    pub ready_checks: Vec<Check>,
}

impl UpstreamVerdict {
    /// The answer of `/<probe>/<name>`.
    pub fn answer(&self, probe: Probe) -> Answer {
        let (result, checks) = match probe {
            Probe::Live => {
                let r = reason(&self.live);
                (r.clone(), vec![Check::new(CheckName::Live, r)])
            }
            Probe::Startup => {
                let r = reason(&self.startup);
                (r.clone(), vec![Check::new(CheckName::Started, r)])
            }
            Probe::Ready => (reason(&self.ready), self.ready_checks.clone()),
        };
        Answer {
            probe,
            target: Target::Container(self.name.clone()),
            result: result.map_err(Failing::own),
            checks,
        }
    }
}

/// How long a child may stay a zombie before it fails readiness (SPEC §12): a server that
/// reaps its children late is never failed.
pub const ZOMBIE_GRACE: Duration = Duration::from_secs(10);

/// The latest result of `kind`: passes when the container did not have that probe.
fn probe_result(u: &UpstreamState, kind: ProbeKind) -> Result<(), UpstreamReason> {
    if !u.spec.probes.contains_key(&kind) {
        return Ok(());
    }
    match u.probes.get(&kind).map(|o| &o.result) {
        None => Err(UpstreamReason::NoResultYet),
        Some(Ok(_)) => Ok(()),
        Some(Err(why)) => Err(UpstreamReason::ProbeFailed(why.clone())),
    }
}

/// Every verdict of one upstream at `now`.
pub fn judge(
    name: &WorkerName,
    u: &UpstreamState,
    t: &Thresholds,
    now: Instant,
) -> UpstreamVerdict {
    let pid = u.proc.pid_status();
    let (stopped, uninterruptible) = proc_rules(&u.proc, u.ran_at(), t, now);
    // SPEC §8's exception: where the engine loop answers /metrics itself (llama.cpp),
    // scrapes unanswered for the stall timeout while the container's own probes pass are
    // a hung engine, busy or idle. (When the probes fail too, the server as a whole is
    // unreachable, and the probe's reason says so.)
    let engine_silent = u.spec.metrics.as_ref().is_some_and(|m| m.engine_answers)
        && u.engines.unanswered_for(now) >= t.stall
        && ProbeKind::ALL.iter().all(|k| probe_result(u, *k).is_ok());
    let stalled = stalled(u, t, now, engine_silent);
    let live_rules = [
        (UpstreamReason::Stopped, stopped),
        (UpstreamReason::Uninterruptible, uninterruptible),
        (
            UpstreamReason::LoopStalled(stalled.clone().unwrap_or(Stalled::Server)),
            stalled.is_some(),
        ),
        (UpstreamReason::CanaryMissed, u.canary.missed_at.is_some()),
    ];
    let first = |rules: &[(UpstreamReason, bool)]| {
        rules
            .iter()
            .find(|(_, holds)| *holds)
            .map(|(r, _)| r.clone())
    };
    // SPEC §12: a child unreaped for the grace period; judged while the process exists.
    let zombie = u
        .zombies
        .oldest()
        .filter(|z| pid == PidStatus::Exists && elapsed(z.since, now) >= ZOMBIE_GRACE)
        .map(|z| UpstreamReason::ChildZombie {
            comm: z.child.comm.clone(),
            pid: z.child.pid,
        });
    let live = match first(&live_rules) {
        Some(r) => Err(r),
        None => match zombie.clone() {
            Some(z) if u.spec.children_unrecoverable => Err(z),
            _ => probe_result(u, ProbeKind::Liveness),
        },
    };
    let children = zombie.map_or(Ok(()), Err);
    let process = if pid == PidStatus::Gone {
        Err(UpstreamReason::ProcessGone)
    } else {
        Ok(())
    };
    let readiness = probe_result(u, ProbeKind::Readiness);
    let awake = match u.sleep.asleep() {
        Some(Asleep {
            wakes: Wake::Operator,
            ..
        }) => Err(UpstreamReason::Sleeping),
        _ => Ok(()),
    };
    // The first failure in precedence order; among equals, liveness before readiness.
    let ready = [&live, &children, &process, &awake, &readiness]
        .into_iter()
        .filter_map(|r| r.clone().err())
        .min_by_key(UpstreamReason::rank)
        .map_or(Ok(()), Err);
    let ready_checks = vec![
        Check::new(CheckName::Live, live.clone()),
        Check::new(CheckName::Process, process),
        Check::new(CheckName::Children, children),
        Check::new(CheckName::Awake, awake),
        Check::new(CheckName::ReadinessProbe, readiness),
    ];
    UpstreamVerdict {
        name: name.clone(),
        pid,
        startup: match probe_result(u, ProbeKind::Startup) {
            // SPEC §12: a load that shows no sign of work; a passing probe ends the load.
            Err(_) if u.load.unmoved_for(now) >= t.load_stall => Err(UpstreamReason::LoadStalled),
            other => other,
        },
        ready,
        live,
        ready_checks,
    }
}

/// What has stalled at `now`, if anything: the server (one engine, or its engine loop
/// leaving scrapes unanswered, `silent`), or some of its several engines.
fn stalled(u: &UpstreamState, t: &Thresholds, now: Instant, silent: bool) -> Option<Stalled> {
    let engines = u.engines.stalled(now, t.stall);
    let of = u.engines.engine_count();
    match engines.as_slice() {
        _ if silent => Some(Stalled::Server),
        [] => None,
        // One engine is the server (vLLM without data parallelism still labels it 0).
        _ if of == 1 => Some(Stalled::Server),
        some => Some(Stalled::Engines {
            engines: some
                .iter()
                .map(|id| (*id).clone().unwrap_or_default())
                .collect(),
            of,
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::proc::NotFound;
    use crate::proc::SampleError;
    use crate::proc::{Extras, Zombie};
    use crate::upstreams::parse;
    use std::collections::BTreeMap;

    use crate::engines::{Page, Scrape};
    use crate::fixtures::{name, T};
    use crate::stall::Reading;
    use crate::state::probe_result::Outcome;
    use crate::state::proc_track::{FoundBy, Watched};
    use crate::state::upstream::{CanaryResult, CanaryRun};
    use crate::verdict::tests::*;

    /// An upstream with all three probes and vLLM's metrics, its process found.
    fn up() -> UpstreamState {
        let spec = parse(
            r#"{"vllm": {"startupProbe": {"httpGet": {"path": "/health", "port": 8000}},
                         "livenessProbe": {"httpGet": {"path": "/health", "port": 8000}},
                         "readinessProbe": {"tcpSocket": {"port": 8000}},
                         "metrics": "vllm"}}"#,
            &[],
            |_| None,
        )
        .expect("valid")
        .remove(0);
        let mut u = UpstreamState::new(Arc::new(spec));
        u.proc.discovered(Ok(Watched {
            pid: 7,
            start_time: Some(1),
            found_by: FoundBy::Socket,
        }));
        u
    }

    fn outcome(at: Instant, result: Result<Option<u16>, Failure>) -> Outcome {
        Outcome {
            started: at,
            latency: Duration::from_millis(3),
            result,
        }
    }

    fn pass_all(u: &mut UpstreamState, at: Instant) {
        for kind in ProbeKind::ALL {
            u.record_probe(kind, outcome(at, Ok(Some(200))));
        }
    }

    fn sample(at: Instant, state: char) -> crate::proc::ProcSample {
        crate::proc::ProcSample {
            taken_at: at,
            state,
            cpu_seconds: 0.0,
            rss_bytes: 1,
            threads: 1,
            start_time: 1,
        }
    }

    /// The time between scrapes.
    const GRAIN: Duration = Duration::from_secs(1);

    /// A page of one unlabelled engine, busy, its work counter at `work`.
    fn busy(at: Instant, work: f64) -> Scrape {
        engines(at, &[(None, work)], None)
    }

    /// A page of busy engines (label, work counter), asleep or not.
    fn engines(at: Instant, engines: &[(Option<&str>, f64)], asleep: Option<bool>) -> Scrape {
        engines_busy(at, engines, 1.0, asleep)
    }

    /// [`engines`], each with `busy` requests running.
    fn engines_busy(
        at: Instant,
        engines: &[(Option<&str>, f64)],
        busy: f64,
        asleep: Option<bool>,
    ) -> Scrape {
        Scrape::Page(Page {
            at,
            engines: engines
                .iter()
                .map(|&(id, work)| {
                    let reading = Reading {
                        at,
                        work: vec![Some(work), None, None],
                        busy: Some(busy),
                        pending: Some(0.0),
                        blurred: false,
                    };
                    (id.map(str::to_owned), reading)
                })
                .collect::<BTreeMap<_, _>>(),
            asleep,
        })
    }

    type Reasons = (Result<(), String>, Result<(), String>, Result<(), String>);

    /// A /proc round at `at`: the process sleeping with `rss` and `cpu`, and `zombies`.
    fn round(u: &mut UpstreamState, at: Instant, rss: u64, cpu: f64, zombies: &[u32]) {
        let s = crate::proc::ProcSample {
            rss_bytes: rss,
            cpu_seconds: cpu,
            ..sample(at, 'S')
        };
        u.proc.apply(Ok(s), u.ran_at());
        u.record_proc_extras(Extras {
            taken_at: at,
            zombies: Ok(zombies
                .iter()
                .map(|pid| Zombie {
                    pid: *pid,
                    start_time: 3,
                    comm: "triton_python_b".into(),
                })
                .collect()),
            read: None,
        });
    }

    /// A canary sent at `at` that ended 10 s later with `result`.
    fn canary_run(at: Instant, result: CanaryResult) -> CanaryRun {
        CanaryRun {
            started: at,
            ended: at + Duration::from_secs(10),
            result,
        }
    }

    /// A zombie child (pid 9) first seen at `at`, with every probe passing.
    fn zombie_since(u: &mut UpstreamState, at: Instant) {
        pass_all(u, at);
        round(u, at, 1, 0.0, &[9]);
    }

    /// Loading: the process found at `at`, every probe answered 503.
    fn loading(u: &mut UpstreamState, at: Instant) {
        for kind in ProbeKind::ALL {
            u.record_probe(kind, outcome(at, Err(Failure::Status(503))));
        }
        round(u, at, 100, 1.0, &[]);
    }

    fn judge(u: &UpstreamState, now: Instant) -> Reasons {
        let v = super::judge(&name("vllm"), u, &T, now);
        (
            err_string(&v.startup),
            err_string(&v.live),
            err_string(&v.ready),
        )
    }

    #[test]
    fn every_reason_in_precedence_order() {
        let t0 = Instant::now();
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        let fail = |r: &str| Err(r.to_owned());
        // (what, set-up, now, (startup, live, ready))
        type Setup = fn(&mut UpstreamState, Instant);
        let cases: Vec<(&str, Setup, u64, Reasons)> =
            vec![
            (
                "no_result_yet",
                |_, _| {},
                0,
                (
                    fail("no_result_yet"),
                    fail("no_result_yet"),
                    fail("no_result_yet"),
                ),
            ),
            (
                "every probe passes",
                |u, t| pass_all(u, t),
                1,
                (Ok(()), Ok(()), Ok(())),
            ),
            (
                "its own liveness probe fails: live and ready fail, startup stays",
                |u, t| {
                    pass_all(u, t);
                    u.record_probe(ProbeKind::Liveness, outcome(t, Err(Failure::Status(503))));
                },
                1,
                (
                    Ok(()),
                    fail("probe_failed: status 503"),
                    fail("probe_failed: status 503"),
                ),
            ),
            (
                "its readiness probe times out: ready only",
                |u, t| {
                    pass_all(u, t);
                    u.record_probe(ProbeKind::Readiness, outcome(t, Err(Failure::Timeout)));
                },
                1,
                (Ok(()), Ok(()), fail("probe_failed: timeout")),
            ),
            (
                "process_gone: ready fails before the probe says so, live is the probe's business",
                |u, t| {
                    pass_all(u, t);
                    u.record_probe(ProbeKind::Readiness, outcome(t, Err(Failure::Refused)));
                    u.proc.apply(Err(SampleError::Gone(7)), u.ran_at());
                },
                1,
                (Ok(()), Ok(()), fail("process_gone")),
            ),
            (
                "stopped for the hang timeout outranks a failing probe",
                |u, t| {
                    pass_all(u, t);
                    u.record_probe(ProbeKind::Liveness, outcome(t, Err(Failure::Timeout)));
                    u.proc.apply(Ok(sample(t, 'T')), u.ran_at());
                },
                10,
                (Ok(()), fail("stopped"), fail("stopped")),
            ),
            (
                "stopped, not yet for the hang timeout",
                |u, t| {
                    pass_all(u, t);
                    u.proc.apply(Ok(sample(t, 'T')), u.ran_at());
                },
                9,
                (Ok(()), Ok(()), Ok(())),
            ),
            (
                "uninterruptible for the D-state timeout",
                |u, t| {
                    pass_all(u, t);
                    u.proc.apply(Ok(sample(t, 'D')), u.ran_at());
                },
                30,
                (Ok(()), fail("uninterruptible"), fail("uninterruptible")),
            ),
            (
                "stopped outranks loop_stalled",
                |u, t| {
                    pass_all(u, t);
                    u.proc.apply(Ok(sample(t, 'T')), u.ran_at());
                    u.record_scrape(t, Ok(busy(t, 5.0)), T.stall, GRAIN);
                    u.record_scrape(t, Ok(busy(t + Duration::from_secs(30), 5.0)), T.stall, GRAIN);
                },
                30,
                (Ok(()), fail("stopped"), fail("stopped")),
            ),
            (
                "busy without work for the stall timeout, /health still 200",
                |u, t| {
                    pass_all(u, t + Duration::from_secs(30));
                    u.record_scrape(t, Ok(busy(t, 5.0)), T.stall, GRAIN);
                    u.record_scrape(t, Ok(busy(t + Duration::from_secs(30), 5.0)), T.stall, GRAIN);
                },
                30,
                (Ok(()), fail("loop_stalled"), fail("loop_stalled")),
            ),
            (
                "busy and working is live",
                |u, t| {
                    pass_all(u, t);
                    u.record_scrape(t, Ok(busy(t, 5.0)), T.stall, GRAIN);
                    u.record_scrape(t, Ok(busy(t + Duration::from_secs(29), 6.0)), T.stall, GRAIN);
                },
                40,
                (Ok(()), Ok(()), Ok(())),
            ),
            (
                "a canary missed its deadline: loop_stalled: canary while /health is 200",
                |u, t| {
                    pass_all(u, t);
                    u.canary_sent(t);
                    u.canary_ended(canary_run(t, CanaryResult::Deadline));
                },
                11,
                (Ok(()), fail("loop_stalled: canary"), fail("loop_stalled: canary")),
            ),
            (
                "a canary answered with an error: no evidence of a hang",
                |u, t| {
                    pass_all(u, t);
                    u.canary_ended(canary_run(t, CanaryResult::Error("status 400".into())));
                },
                11,
                (Ok(()), Ok(()), Ok(())),
            ),
            (
                "a missed canary, then one that passed",
                |u, t| {
                    pass_all(u, t);
                    u.canary_ended(canary_run(t, CanaryResult::Deadline));
                    u.canary_ended(canary_run(t + Duration::from_secs(70), CanaryResult::Ok));
                },
                81,
                (Ok(()), Ok(()), Ok(())),
            ),
            (
                "a missed canary, then the engine worked (a work counter moved)",
                |u, t| {
                    pass_all(u, t);
                    u.record_scrape(t, Ok(busy(t, 5.0)), T.stall, GRAIN);
                    u.canary_ended(canary_run(t, CanaryResult::Deadline));
                    let later = t + Duration::from_secs(20);
                    u.record_scrape(later, Ok(busy(later, 6.0)), T.stall, GRAIN);
                },
                20,
                (Ok(()), Ok(()), Ok(())),
            ),
            (
                "a busy engine stalled outranks a missed canary",
                |u, t| {
                    pass_all(u, t + Duration::from_secs(30));
                    u.record_scrape(t, Ok(busy(t, 5.0)), T.stall, GRAIN);
                    u.canary_ended(canary_run(t, CanaryResult::Deadline));
                    u.record_scrape(t, Ok(busy(t + Duration::from_secs(30), 5.0)), T.stall, GRAIN);
                },
                30,
                (Ok(()), fail("loop_stalled"), fail("loop_stalled")),
            ),
            (
                "a zombie child, 1 s under the grace period",
                zombie_since,
                9,
                (Ok(()), Ok(()), Ok(())),
            ),
            (
                "a zombie child for the grace period: not ready, live (vLLM watches its own)",
                zombie_since,
                10,
                (Ok(()), Ok(()), fail("child_zombie: triton_python_b 9")),
            ),
            (
                "a zombie child reaped late is never failed",
                |u, t| {
                    zombie_since(u, t);
                    round(u, t + Duration::from_secs(9), 1, 0.0, &[]);
                },
                30,
                (Ok(()), Ok(()), Ok(())),
            ),
            (
                "stopped outranks a zombie child",
                |u, t| {
                    zombie_since(u, t);
                    u.proc.apply(Ok(sample(t, 'T')), u.ran_at());
                },
                10,
                (Ok(()), fail("stopped"), fail("stopped")),
            ),
            (
                "loading, nothing moved for 1 s under the load-stall timeout: the probe's 503",
                loading,
                299,
                (
                    fail("probe_failed: status 503"),
                    fail("probe_failed: status 503"),
                    fail("probe_failed: status 503"),
                ),
            ),
            (
                "loading, nothing moved for the load-stall timeout: load_stalled (startup only)",
                loading,
                300,
                (
                    fail("load_stalled"),
                    fail("probe_failed: status 503"),
                    fail("probe_failed: status 503"),
                ),
            ),
            (
                "loading, memory grew at 200 s",
                |u, t| {
                    loading(u, t);
                    round(u, t + Duration::from_secs(200), 200, 1.0, &[]);
                },
                300,
                (
                    fail("probe_failed: status 503"),
                    fail("probe_failed: status 503"),
                    fail("probe_failed: status 503"),
                ),
            ),
            (
                "the startup probe passed once: the load is over, whatever comes after",
                |u, t| {
                    loading(u, t);
                    u.record_probe(ProbeKind::Startup, outcome(t, Ok(Some(200))));
                    u.record_probe(ProbeKind::Startup, outcome(t, Err(Failure::Status(503))));
                },
                300,
                (
                    fail("probe_failed: status 503"),
                    fail("probe_failed: status 503"),
                    fail("probe_failed: status 503"),
                ),
            ),
        ];
        for (what, setup, now, want) in cases {
            let mut u = up();
            setup(&mut u, t0);
            assert_eq!(judge(&u, at(now)), want, "{what}");
        }
    }

    #[test]
    fn a_zombie_child_fails_liveness_only_where_the_server_cannot_recover_it() {
        let t0 = Instant::now();
        for (profile, live) in [
            ("triton", Err("child_zombie: triton_python_b 9".to_owned())),
            ("vllm", Ok(())),
        ] {
            let text = format!(
                r#"{{"x": {{"livenessProbe": {{"httpGet": {{"path": "/v2/health/live", "port": 8000}}}},
                           "metrics": "{profile}"}}}}"#
            );
            let mut u = UpstreamState::new(Arc::new(
                parse(&text, &[], |_| None).expect("valid").remove(0),
            ));
            found(&mut u);
            zombie_since(&mut u, t0);
            let v = super::judge(&name("x"), &u, &T, t0 + ZOMBIE_GRACE);
            assert_eq!(err_string(&v.live), live, "{profile}");
            assert_eq!(
                err_string(&v.ready),
                Err("child_zombie: triton_python_b 9".to_owned()),
                "{profile}"
            );
            round(&mut u, t0 + ZOMBIE_GRACE, 1, 0.0, &[]);
            let v = super::judge(&name("x"), &u, &T, t0 + ZOMBIE_GRACE);
            assert_eq!((v.live, v.ready), (Ok(()), Ok(())), "{profile}: reaped");
        }
    }

    /// A vLLM container passing its probes, recorded with `args` (inject's `process`).
    fn vllm_with(args: &str) -> UpstreamState {
        let spec = parse(
            &format!(
                r#"{{"vllm": {{"livenessProbe": {{"httpGet": {{"path": "/health", "port": 8000}}}},
                             "readinessProbe": {{"httpGet": {{"path": "/health", "port": 8000}}}},
                             "metrics": "vllm",
                             "process": {{"cmdline": ["vllm", "serve", "m"{args}]}}}}}}"#
            ),
            &[],
            |_| None,
        )
        .expect("valid")
        .remove(0);
        UpstreamState::new(Arc::new(spec))
    }

    /// Pages every 10 s from 0 to `until` s of eight busy engines, all working but
    /// `hung`, `asleep` from `asleep_from` s on.
    fn eight_engines(
        u: &mut UpstreamState,
        t0: Instant,
        until: u64,
        hung: &[&str],
        asleep_from: Option<u64>,
    ) {
        const IDS: [&str; 8] = ["0", "1", "2", "3", "4", "5", "6", "7"];
        for s in (0..=until).step_by(10) {
            let at = t0 + Duration::from_secs(s);
            pass_all(u, at);
            let work: Vec<(Option<&str>, f64)> = IDS
                .iter()
                .map(|id| (Some(*id), if hung.contains(id) { 0.0 } else { s as f64 }))
                .collect();
            let asleep = asleep_from.map(|from| s >= from);
            u.record_scrape(at, Ok(engines(at, &work, asleep)), T.stall, GRAIN);
        }
    }

    #[test]
    fn engines_and_sleep_in_precedence_order() {
        let t0 = Instant::now();
        let fail = |r: &str| Err(r.to_owned());
        // (what, recorded args, hung engines, asleep from (s), until (s), (live, ready))
        type Case = (
            &'static str,
            &'static str,
            &'static [&'static str],
            Option<u64>,
            u64,
            (Result<(), String>, Result<(), String>),
        );
        let cases: &[Case] = &[
            ("eight engines working", "", &[], None, 60, (Ok(()), Ok(()))),
            (
                "engine 3 of 8 stalled while seven work",
                "",
                &["3"],
                None,
                30,
                (
                    fail("loop_stalled: engine 3"),
                    fail("loop_stalled: engine 3"),
                ),
            ),
            (
                "... just under the stall timeout",
                "",
                &["3"],
                None,
                20,
                (Ok(()), Ok(())),
            ),
            (
                "two stalled: both named",
                "",
                &["3", "5"],
                None,
                30,
                (
                    fail("loop_stalled: engines 3, 5"),
                    fail("loop_stalled: engines 3, 5"),
                ),
            ),
            (
                "every engine stalled",
                "",
                &["0", "1", "2", "3", "4", "5", "6", "7"],
                None,
                30,
                (
                    fail("loop_stalled: all 8 engines"),
                    fail("loop_stalled: all 8 engines"),
                ),
            ),
            (
                "slept by an operator, requests waiting: live, not ready",
                "",
                &["0", "1", "2", "3", "4", "5", "6", "7"],
                Some(0),
                90,
                (Ok(()), fail("sleeping")),
            ),
            (
                "asleep right after working with --sleep-idle-ttl 60: an operator's /sleep",
                r#", "--sleep-idle-ttl=60""#,
                &[],
                Some(10),
                90,
                (Ok(()), fail("sleeping")),
            ),
        ];
        for (what, args, hung, asleep_from, until, want) in cases {
            let mut u = vllm_with(args);
            eight_engines(&mut u, t0, *until, hung, *asleep_from);
            let v = super::judge(&name("vllm"), &u, &T, t0 + Duration::from_secs(*until));
            assert_eq!((err_string(&v.live), err_string(&v.ready)), *want, "{what}");
        }
    }

    #[test]
    fn an_idle_sleep_stays_ready_and_an_early_one_is_an_operators() {
        let t0 = Instant::now();
        // Working until 0 s, idle after, asleep from `asleep_from` s with requests waiting.
        let ready_after_sleep_at = |asleep_from: u64| {
            let mut u = vllm_with(r#", "--sleep-idle-ttl", "60""#);
            for s in (0..=asleep_from + 60).step_by(10) {
                let at = t0 + Duration::from_secs(s);
                pass_all(&mut u, at);
                let (busy, asleep) = match s {
                    0 => (1.0, false),
                    s if s < asleep_from => (0.0, false),
                    _ => (1.0, true),
                };
                let page = engines_busy(
                    at,
                    &[(Some("0"), 5.0), (Some("1"), 5.0)],
                    busy,
                    Some(asleep),
                );
                u.record_scrape(at, Ok(page), T.stall, GRAIN);
            }
            let v = super::judge(
                &name("vllm"),
                &u,
                &T,
                t0 + Duration::from_secs(asleep_from + 60),
            );
            (err_string(&v.live), err_string(&v.ready))
        };
        assert_eq!(
            ready_after_sleep_at(60),
            (Ok(()), Ok(())),
            "the idle TTL after the last work"
        );
        assert_eq!(
            ready_after_sleep_at(20),
            (Ok(()), Err("sleeping".into())),
            "sooner: an operator's /sleep"
        );
    }

    #[test]
    fn a_sleeping_server_yields_to_a_gone_process_and_outranks_its_own_probe() {
        let t0 = Instant::now();
        let mut u = vllm_with("");
        u.proc.discovered(Ok(Watched {
            pid: 7,
            start_time: Some(1),
            found_by: FoundBy::Socket,
        }));
        eight_engines(&mut u, t0, 10, &[], Some(0));
        u.record_probe(ProbeKind::Readiness, outcome(t0, Err(Failure::Status(503))));
        let ready = |u: &UpstreamState| err_string(&super::judge(&name("vllm"), u, &T, t0).ready);
        assert_eq!(ready(&u), Err("sleeping".into()));
        u.proc.apply(Err(SampleError::Gone(7)), None);
        assert_eq!(ready(&u), Err("process_gone".into()));
    }

    #[test]
    fn one_labelled_engine_is_the_server() {
        let t0 = Instant::now();
        let mut u = vllm_with("");
        for s in [0, 30] {
            let at = t0 + Duration::from_secs(s);
            pass_all(&mut u, at);
            u.record_scrape(
                at,
                Ok(engines(at, &[(Some("0"), 5.0)], None)),
                T.stall,
                GRAIN,
            );
        }
        let v = super::judge(&name("vllm"), &u, &T, t0 + Duration::from_secs(30));
        assert_eq!(err_string(&v.live), Err("loop_stalled".into()));
    }

    /// A member's headless container (SPEC §9): no probes, only its command line.
    fn headless() -> UpstreamState {
        let spec = parse(
            r#"{"ray-worker": {"process": {"cmdline": ["ray", "start", "--block"]}}}"#,
            &[],
            |_| None,
        )
        .expect("valid")
        .remove(0);
        UpstreamState::new(Arc::new(spec))
    }

    fn found(u: &mut UpstreamState) {
        u.proc.discovered(Ok(Watched {
            pid: 7,
            start_time: Some(1),
            found_by: FoundBy::Cgroup,
        }));
    }

    #[test]
    fn a_container_without_probes_is_judged_by_proc_alone() {
        let t0 = Instant::now();
        let ms = |ms: u64| t0 + Duration::from_millis(ms);
        let fail = |r: &str| Err(r.to_owned());
        let (hang, d) = (T.hang.as_millis() as u64, T.d_state.as_millis() as u64);
        // (what, set-up, now in ms, (startup, live, ready))
        type Setup = fn(&mut UpstreamState, Instant);
        let cases: Vec<(&str, Setup, u64, Reasons)> = vec![
            (
                "not found (yet): /proc off, nothing fails",
                |_, _| {},
                0,
                (Ok(()), Ok(()), Ok(())),
            ),
            (
                "found and running",
                |u, t| {
                    found(u);
                    u.proc.apply(Ok(sample(t, 'S')), None);
                },
                0,
                (Ok(()), Ok(()), Ok(())),
            ),
            (
                "stopped, 1 ms under the hang timeout",
                |u, t| {
                    found(u);
                    u.proc.apply(Ok(sample(t, 'T')), None);
                },
                hang - 1,
                (Ok(()), Ok(()), Ok(())),
            ),
            (
                "stopped for the hang timeout: live and ready fail",
                |u, t| {
                    found(u);
                    u.proc.apply(Ok(sample(t, 'T')), None);
                },
                hang,
                (Ok(()), fail("stopped"), fail("stopped")),
            ),
            (
                "uninterruptible, 1 ms under the D-state timeout",
                |u, t| {
                    found(u);
                    u.proc.apply(Ok(sample(t, 'D')), None);
                },
                d - 1,
                (Ok(()), Ok(()), Ok(())),
            ),
            (
                "uninterruptible for the D-state timeout",
                |u, t| {
                    found(u);
                    u.proc.apply(Ok(sample(t, 'D')), None);
                },
                d,
                (Ok(()), fail("uninterruptible"), fail("uninterruptible")),
            ),
            (
                "gone: not ready, and its exit is the kubelet's business (live passes)",
                |u, t| {
                    found(u);
                    u.proc.apply(Ok(sample(t, 'T')), None);
                    u.proc.apply(Err(SampleError::Gone(7)), None);
                },
                hang,
                (Ok(()), Ok(()), fail("process_gone")),
            ),
        ];
        for (what, setup, now, want) in cases {
            let mut u = headless();
            setup(&mut u, t0);
            let v = super::judge(&name("ray-worker"), &u, &T, ms(now));
            let got = (
                err_string(&v.startup),
                err_string(&v.live),
                err_string(&v.ready),
            );
            assert_eq!(got, want, "{what}");
        }
    }

    #[test]
    fn unanswered_scrapes_are_loop_stalled_only_where_the_engine_answers_them() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let spec = |metrics: &str| {
            let text = format!(
                r#"{{"x": {{"livenessProbe": {{"httpGet": {{"path": "/health", "port": 8080}}}},
                           "readinessProbe": {{"httpGet": {{"path": "/health", "port": 8080}}}},
                           "metrics": "{metrics}"}}}}"#
            );
            UpstreamState::new(Arc::new(
                parse(&text, &[], |_| None).expect("valid").remove(0),
            ))
        };
        /// (what, profile, probes pass, silent since ms, now ms, live)
        type Case = (
            &'static str,
            &'static str,
            bool,
            u64,
            u64,
            Result<(), String>,
        );
        let cases: &[Case] = &[
            (
                "llama.cpp: just under the stall timeout",
                "llamacpp",
                true,
                0,
                29_999,
                Ok(()),
            ),
            (
                "llama.cpp: at the stall timeout",
                "llamacpp",
                true,
                0,
                30_000,
                Err("loop_stalled".into()),
            ),
            (
                "llama.cpp: its probe fails too: the probe's reason",
                "llamacpp",
                false,
                0,
                60_000,
                Err("probe_failed: timeout".into()),
            ),
            (
                "vLLM: a scrape timing out is no evidence",
                "vllm",
                true,
                0,
                60_000,
                Ok(()),
            ),
        ];
        for (what, profile, pass, silent_from, now, want) in cases {
            let mut u = spec(profile);
            let result = if *pass {
                Ok(Some(200))
            } else {
                Err(Failure::Timeout)
            };
            for kind in ProbeKind::ALL {
                u.record_probe(kind, outcome(at(*now), result.clone()));
            }
            u.record_scrape(
                at(*silent_from),
                Err(Failure::Timeout.into()),
                T.stall,
                GRAIN,
            );
            u.record_scrape(
                at(silent_from + 1000),
                Err(Failure::Timeout.into()),
                T.stall,
                GRAIN,
            );
            let live = err_string(&super::judge(&name("x"), &u, &T, at(*now)).live);
            assert_eq!(&live, want, "{what}");
        }
        // An answered scrape ends it at once.
        let mut u = spec("llamacpp");
        pass_all(&mut u, at(0));
        u.record_scrape(at(0), Err(Failure::Timeout.into()), T.stall, GRAIN);
        u.record_scrape(at(30_000), Ok(busy(at(30_000), 1.0)), T.stall, GRAIN);
        assert_eq!(
            err_string(&super::judge(&name("x"), &u, &T, at(30_000)).live),
            Ok(())
        );
    }

    #[test]
    fn a_probe_it_did_not_have_passes_and_no_process_means_no_proc_rules() {
        let spec = parse(
            r#"{"x": {"readinessProbe": {"tcpSocket": {"port": 1}}}}"#,
            &[],
            |_| None,
        )
        .expect("valid")
        .remove(0);
        let mut u = UpstreamState::new(Arc::new(spec));
        let t0 = Instant::now();
        u.record_probe(ProbeKind::Readiness, outcome(t0, Ok(None)));
        let v = super::judge(&name("x"), &u, &T, t0);
        assert_eq!(
            (v.startup.clone(), v.live.clone(), v.ready.clone()),
            (Ok(()), Ok(()), Ok(()))
        );
        assert_eq!(v.pid, PidStatus::Unknown);
        assert_eq!(
            u.proc.watched,
            Err(NotFound::NoListener(vec![1]).to_string())
        );
    }

    #[test]
    fn aggregates_and_paths_include_upstreams() {
        let mut state = crate::fixtures::with_upstreams(
            r#"{"vllm": {"readinessProbe": {"tcpSocket": {"port": 1}}, "startupProbe": {"tcpSocket": {"port": 1}}}}"#,
        );
        let t0 = Instant::now();
        let agent = AgentInput {
            shutting_down: false,
            last_tick: t0,
        };
        let v = evaluate(&state, agent, &T, t0);
        for p in [Probe::Ready, Probe::Startup] {
            assert_eq!(
                v.aggregate(p).result,
                fails(Some("vllm"), UpstreamReason::NoResultYet)
            );
        }
        assert!(v.aggregate(Probe::Live).ok(), "/livez is the agent alone");
        let ready = v.worker(Probe::Ready, "vllm").expect("known");
        let names: Vec<_> = ready.checks.into_iter().map(|c| c.name).collect();
        assert_eq!(
            names,
            [
                CheckName::Live,
                CheckName::Process,
                CheckName::Children,
                CheckName::Awake,
                CheckName::ReadinessProbe
            ]
        );
        assert!(v.worker(Probe::Live, "vllm").expect("known").ok());
        assert_eq!(v.names().collect::<Vec<_>>(), ["vllm"]);
        state.upstreams.values_mut().for_each(|u| {
            u.record_probe(ProbeKind::Readiness, outcome(t0, Ok(None)));
            u.record_probe(ProbeKind::Startup, outcome(t0, Ok(None)));
        });
        let v = evaluate(&state, agent, &T, t0);
        assert!(v.aggregate(Probe::Ready).ok() && v.aggregate(Probe::Startup).ok());
    }
}

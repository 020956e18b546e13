//! What the agent knows about one upstream (SPEC §8, §12): the latest result of each of
//! its probes, its engines' stall clocks and its sleep from its metrics, and its process
//! as /proc shows it. Plain data with
//! small update methods; the probers and the scraper write it through their upstream's
//! handle, the /proc sampler its [`ProcTrack`], and the verdict function reads it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::engines::{EngineClocks, Scrape};
use crate::proc::Extras;
use crate::proc::NotFound;
use crate::sleep::SleepTrack;
use crate::state::load_progress::LoadProgress;
use crate::state::probe_result::{Outcome, ScrapeError};
use crate::state::proc_track::ProcTrack;
use crate::state::zombies::Zombies;
use crate::upstreams::{Action, ProbeKind, UpstreamSpec};

/// How one canary request ended (SPEC §12).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CanaryResult {
    /// Answered whole, 2xx, within the deadline.
    Ok,
    /// The whole answer did not arrive within the deadline: `loop_stalled: canary`.
    Deadline,
    /// Answered otherwise (refused, a non-2xx status): no evidence of a hung engine (the
    /// probes judge reachability), shown in `/status` and counted.
    Error(String),
}

impl CanaryResult {
    /// The `result` label of `vitals_upstream_canaries_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Deadline => "deadline",
            Self::Error(_) => "error",
        }
    }
}

/// One canary request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanaryRun {
    /// When it was sent.
    pub started: Instant,
    /// When it ended (answered, failed, or at its deadline).
    pub ended: Instant,
    /// How.
    pub result: CanaryResult,
}

/// An upstream's canaries so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CanaryTrack {
    /// The one in flight: when it was sent.
    pub in_flight_since: Option<Instant>,
    /// The latest that ended.
    pub last: Option<CanaryRun>,
    /// When a canary missed its deadline, until one passes or the engine works again.
    pub missed_at: Option<Instant>,
}

/// Everything the agent knows about one upstream.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamState {
    /// Its configuration.
    pub spec: Arc<UpstreamSpec>,
    /// The latest outcome of each probe it has.
    pub probes: BTreeMap<ProbeKind, Outcome>,
    /// Its engines' hung-engine clocks, from its metrics.
    pub engines: EngineClocks,
    /// Its sleep, from its metrics or the document that says it (SPEC §12).
    pub sleep: SleepTrack,
    /// Since when its metrics have gone unread because it is idle and reading them would
    /// keep it awake (`None`: the latest round read them).
    pub quiet_since: Option<Instant>,
    /// The latest scrape failure (cleared by a success).
    pub scrape_failure: Option<ScrapeError>,
    /// Its process.
    pub proc: ProcTrack,
    /// Its load, until its startup probe first passes (SPEC §12).
    pub load: LoadProgress,
    /// Its process's zombie children (SPEC §12).
    pub zombies: Zombies,
    /// The latest scrape that showed the engine working or busy (a work counter moved, or
    /// requests running or waiting): the end of its idle time, for the canary.
    pub active_at: Option<Instant>,
    /// Its canaries, when it has one (SPEC §12).
    pub canary: CanaryTrack,
}

impl UpstreamState {
    /// Nothing known yet about `spec`'s upstream.
    pub fn new(spec: Arc<UpstreamSpec>) -> Self {
        let not_yet = if spec.probes.is_empty() {
            NotFound::ByCmdline {
                cmdline: spec
                    .process
                    .iter()
                    .flat_map(|p| p.cmdline.clone())
                    .collect(),
                cgroups: 0,
            }
        } else {
            NotFound::NoListener(spec.probe_ports())
        };
        let spec_has_startup = spec.probes.contains_key(&ProbeKind::Startup);
        Self {
            spec,
            probes: BTreeMap::new(),
            engines: EngineClocks::default(),
            sleep: SleepTrack::default(),
            quiet_since: None,
            scrape_failure: None,
            proc: ProcTrack::off(not_yet.to_string()),
            load: LoadProgress::new(spec_has_startup),
            zombies: Zombies::default(),
            active_at: None,
            canary: CanaryTrack::default(),
        }
    }

    /// A probe finished.
    pub fn record_probe(&mut self, kind: ProbeKind, outcome: Outcome) {
        if kind == ProbeKind::Startup && outcome.result.is_ok() {
            self.load.finished();
        }
        self.probes.insert(kind, outcome);
    }

    /// What the /proc sampler read of its process beyond the sample just applied to
    /// [`Self::proc`]: its zombie children, and while it loads, the load progress.
    pub fn record_proc_extras(&mut self, extras: Extras) {
        let (Some(pid), Some(sample)) = (self.proc.sample_target(), self.proc.latest.as_ref())
        else {
            return;
        };
        self.load.observe(pid, sample, extras.read);
        self.zombies.observe(pid, extras.taken_at, extras.zombies);
    }

    /// A scrape round that began at `started` finished (`grain`: the time between
    /// rounds); a failure is no evidence for the stall rule, except that timeouts in a row
    /// are timed (SPEC §8's exception).
    pub fn record_scrape(
        &mut self,
        started: Instant,
        result: Result<Scrape, ScrapeError>,
        stall_timeout: Duration,
        grain: Duration,
    ) {
        match result {
            Ok(Scrape::Page(page)) => {
                self.scrape_failure = None;
                self.quiet_since = None;
                let (at, asleep) = (page.at, page.asleep);
                if self.engines.last().is_some_and(|l| l.work() != page.work()) {
                    // Working again: a canary missed before is history.
                    self.canary.missed_at = self.canary.missed_at.filter(|m| *m > at);
                }
                let active = self.engines.observe(page, stall_timeout);
                if active {
                    self.active_at = Some(at);
                }
                self.observe_sleep(at, asleep, active, grain);
            }
            Ok(Scrape::Quiet { at, asleep }) => {
                self.quiet_since.get_or_insert(at);
                self.observe_sleep(at, asleep, false, grain);
            }
            Err(e) => {
                self.engines.observe_failure(started, e.is_timeout());
                self.scrape_failure = Some(e);
            }
        }
    }

    /// A canary was sent at `at`.
    pub fn canary_sent(&mut self, at: Instant) {
        self.canary.in_flight_since = Some(at);
    }

    /// A canary ended: a missed deadline holds `loop_stalled: canary` until a canary passes
    /// or the engine works again; an error changes nothing.
    pub fn canary_ended(&mut self, run: CanaryRun) {
        match run.result {
            CanaryResult::Ok => self.canary.missed_at = None,
            CanaryResult::Deadline => self.canary.missed_at = Some(run.ended),
            CanaryResult::Error(_) => {}
        }
        self.canary.in_flight_since = None;
        self.canary.last = Some(run);
    }

    /// Since when a canary could be sent, if one may be at all: the latest of `since` (the
    /// canary task's start), the engine's last activity and the last canary; only while
    /// the server has loaded, every probe passes (a failing probe already says the rest),
    /// and it is neither asleep nor left alone so that its idle timer runs (a canary is a
    /// request: it would wake it, SPEC §12).
    pub fn canary_due_since(&self, since: Instant) -> Option<Instant> {
        let probes_pass = self
            .spec
            .probes
            .keys()
            .all(|k| self.probes.get(k).is_some_and(|o| o.result.is_ok()));
        if !probes_pass
            || self.load.is_loading()
            || self.canary.in_flight_since.is_some()
            || self.sleep.asleep().is_some()
            || self.quiet_since.is_some()
        {
            return None;
        }
        [
            Some(since),
            self.active_at,
            self.canary.last.as_ref().map(|r| r.ended),
        ]
        .into_iter()
        .flatten()
        .max()
    }

    fn observe_sleep(&mut self, at: Instant, asleep: Option<bool>, active: bool, grain: Duration) {
        if let Some(spec) = self.spec.metrics.as_ref().and_then(|m| m.sleep.as_ref()) {
            self.sleep.observe(at, asleep, active, spec, grain);
        }
    }

    /// The newest evidence that its process ran: the start of the latest answered HTTP
    /// or gRPC probe (an answer is written by the server after the request was sent). A
    /// TCP connect is no evidence: the kernel completes it for a stopped process too.
    pub fn ran_at(&self) -> Option<Instant> {
        self.probes
            .iter()
            .filter(|(kind, o)| {
                o.result.is_ok()
                    && self
                        .spec
                        .probes
                        .get(kind)
                        .is_some_and(|p| !matches!(p.action, Action::Tcp { .. }))
            })
            .map(|(_, o)| o.started)
            .max()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstreams::parse;

    fn outcome(started: Instant) -> Outcome {
        Outcome {
            started,
            latency: Duration::from_millis(1),
            result: Ok(Some(200)),
        }
    }

    #[test]
    fn a_canary_is_due_only_after_idle_time_with_every_probe_passing() {
        use crate::engines::Page;
        use crate::stall::Reading;
        const STALL: Duration = Duration::from_secs(30);
        const GRAIN: Duration = Duration::from_secs(1);
        let spec = parse(
            r#"{"vllm": {"startupProbe": {"httpGet": {"port": 8000}}, "livenessProbe": {"httpGet": {"port": 8000}}, "metrics": "vllm", "canary": {}}}"#,
            &[],
            |_| None,
        )
        .expect("valid")
        .remove(0);
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let reading = |s: u64, work: f64, busy: f64| {
            let r = Reading {
                at: at(s),
                work: vec![Some(work)],
                busy: Some(busy),
                pending: Some(0.0),
                blurred: false,
            };
            Scrape::Page(Page {
                at: at(s),
                engines: std::iter::once((None, r)).collect(),
                asleep: None,
            })
        };
        let mut u = UpstreamState::new(Arc::new(spec));
        assert_eq!(u.canary_due_since(t0), None, "no probe result yet");
        u.record_probe(ProbeKind::Liveness, outcome(at(1)));
        assert_eq!(
            u.canary_due_since(t0),
            None,
            "loading: the startup probe never passed"
        );
        u.record_probe(ProbeKind::Startup, outcome(at(1)));
        assert_eq!(
            u.canary_due_since(t0),
            Some(t0),
            "quiet since the task began"
        );
        u.record_scrape(at(2), Ok(reading(2, 5.0, 0.0)), STALL, GRAIN);
        assert_eq!(
            u.canary_due_since(t0),
            Some(t0),
            "the first page shows no move"
        );
        u.record_scrape(at(3), Ok(reading(3, 6.0, 0.0)), STALL, GRAIN);
        assert_eq!(u.canary_due_since(t0), Some(at(3)), "a work counter moved");
        u.record_scrape(at(4), Ok(reading(4, 6.0, 2.0)), STALL, GRAIN);
        assert_eq!(u.canary_due_since(t0), Some(at(4)), "busy is not idle");
        u.canary_sent(at(70));
        assert_eq!(u.canary_due_since(t0), None, "never two in flight");
        u.canary_ended(CanaryRun {
            started: at(70),
            ended: at(80),
            result: CanaryResult::Deadline,
        });
        assert_eq!(
            u.canary_due_since(t0),
            Some(at(80)),
            "idle again from its end"
        );
        assert_eq!(u.canary.missed_at, Some(at(80)));
        u.record_scrape(at(81), Ok(reading(81, 6.0, 0.0)), STALL, GRAIN);
        assert_eq!(
            u.canary.missed_at,
            Some(at(80)),
            "nothing moved: still missed"
        );
        u.record_scrape(at(82), Ok(reading(82, 7.0, 0.0)), STALL, GRAIN);
        assert_eq!(u.canary.missed_at, None, "the engine worked again");
        u.quiet_since = Some(at(90));
        assert_eq!(
            u.canary_due_since(t0),
            None,
            "left alone for its idle timer: a canary would wake it"
        );
        u.quiet_since = None;
        u.record_probe(
            ProbeKind::Liveness,
            Outcome {
                result: Err(crate::state::probe_result::Failure::Timeout),
                ..outcome(at(83))
            },
        );
        assert_eq!(
            u.canary_due_since(t0),
            None,
            "a failing probe says the rest"
        );
    }

    #[test]
    fn answered_http_probes_are_evidence_that_the_process_ran_tcp_connects_are_not() {
        let spec = parse(
            r#"{"vllm": {"livenessProbe": {"httpGet": {"port": 8000}}, "readinessProbe": {"tcpSocket": {"port": 8000}}}}"#,
            &[],
            |_| None,
        )
        .expect("valid")
        .remove(0);
        let mut s = UpstreamState::new(Arc::new(spec));
        let t0 = Instant::now();
        assert_eq!(s.ran_at(), None);
        s.record_probe(ProbeKind::Readiness, outcome(t0 + Duration::from_secs(2)));
        assert_eq!(s.ran_at(), None, "a TCP connect");
        s.record_probe(ProbeKind::Liveness, outcome(t0));
        assert_eq!(s.ran_at(), Some(t0));
        s.record_probe(
            ProbeKind::Liveness,
            Outcome {
                result: Err(crate::state::probe_result::Failure::Timeout),
                ..outcome(t0 + Duration::from_secs(3))
            },
        );
        assert_eq!(s.ran_at(), None, "the latest answer failed");
        assert!(s.proc.needs_discovery());
        assert_eq!(
            s.proc.watched,
            Err("nothing listens on port [8000] yet".to_owned())
        );
    }
}

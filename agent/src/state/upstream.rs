//! What the agent knows about one upstream (SPEC §8, §12): the latest result of each of
//! its probes, its engines' stall clocks and its sleep from its metrics, and its process
//! as /proc shows it. Plain data with
//! small update methods; the probers and the scraper write it through their upstream's
//! handle, the /proc sampler its [`ProcTrack`], and the verdict function reads it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::upstreams::{Action, ProbeKind, UpstreamSpec};
use crate::sources::proc::discover::NotFound;
use crate::sources::upstream::engines::{EngineClocks, Scrape};
use crate::sources::upstream::sleep::SleepTrack;
use crate::state::probe_result::{Outcome, ScrapeError};
use crate::state::proc_track::ProcTrack;

/// One scrape that failed, for `/status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScrapeFailure {
    /// When.
    pub at: Instant,
    /// Why.
    pub error: String,
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
    pub scrape_failure: Option<ScrapeFailure>,
    /// Its process.
    pub proc: ProcTrack,
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
        Self {
            spec,
            probes: BTreeMap::new(),
            engines: EngineClocks::default(),
            sleep: SleepTrack::default(),
            quiet_since: None,
            scrape_failure: None,
            proc: ProcTrack::off(not_yet.to_string()),
        }
    }

    /// A probe finished.
    pub fn record_probe(&mut self, kind: ProbeKind, outcome: Outcome) {
        self.probes.insert(kind, outcome);
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
                let active = self.engines.observe(page, stall_timeout);
                self.observe_sleep(at, asleep, active, grain);
            }
            Ok(Scrape::Quiet { at, asleep }) => {
                self.quiet_since.get_or_insert(at);
                self.observe_sleep(at, asleep, false, grain);
            }
            Err(e) => {
                self.engines.observe_failure(started, e.is_timeout());
                self.scrape_failure = Some(ScrapeFailure {
                    at: Instant::now(),
                    error: e.to_string(),
                });
            }
        }
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
    use crate::config::upstreams::parse;

    fn outcome(started: Instant) -> Outcome {
        Outcome {
            started,
            latency: Duration::from_millis(1),
            result: Ok(Some(200)),
        }
    }

    #[test]
    fn answered_http_probes_are_evidence_that_the_process_ran_tcp_connects_are_not() {
        let spec = parse(
            r#"{"vllm": {"livenessProbe": {"httpGet": {"port": 8000}}, "readinessProbe": {"tcpSocket": {"port": 8000}}}}"#,
            &[],
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
                result: Err(crate::sources::upstream::probe::Failure::Timeout),
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

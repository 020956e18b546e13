//! What the agent knows about one upstream (SPEC §8): the latest result of each of its
//! probes, its metrics' stall clock, and its process as /proc shows it. Plain data with
//! small update methods; the probers and the scraper write it through their upstream's
//! handle, the /proc sampler its [`ProcTrack`], and the verdict function reads it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::upstreams::{Action, ProbeKind, UpstreamSpec};
use crate::sources::proc::discover::NotFound;
use crate::sources::upstream::stall::{Reading, StallClock};
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
    /// The hung-engine clock from its metrics.
    pub stall: StallClock,
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
            stall: StallClock::default(),
            scrape_failure: None,
            proc: ProcTrack::off(not_yet.to_string()),
        }
    }

    /// A probe finished.
    pub fn record_probe(&mut self, kind: ProbeKind, outcome: Outcome) {
        self.probes.insert(kind, outcome);
    }

    /// A scrape that began at `started` finished; a failure is no evidence for the stall
    /// rule, except that timeouts in a row are timed (SPEC §8's exception).
    pub fn record_scrape(
        &mut self,
        started: Instant,
        result: Result<Reading, ScrapeError>,
        stall_timeout: Duration,
    ) {
        match result {
            Ok(reading) => {
                self.scrape_failure = None;
                self.stall.observe(reading, stall_timeout);
            }
            Err(e) => {
                self.stall.observe_failure(started, e.is_timeout());
                self.scrape_failure = Some(ScrapeFailure {
                    at: Instant::now(),
                    error: e.to_string(),
                });
            }
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

//! What the agent knows about one upstream (SPEC §8): the latest result of each of its
//! probes, its metrics' stall clock, and its process as /proc shows it. Plain data with
//! small update methods; the probers, the scraper and the /proc watcher write it through
//! the registry, and the verdict function reads it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::sources::proc::discover::{Found, NotFound};
use crate::sources::proc::{ProcSample, SampleError};
use crate::sources::upstream::config::{ProbeKind, UpstreamSpec};
use crate::sources::upstream::stall::{Reading, StallClock};
use crate::state::probe_result::{Outcome, ScrapeError};

/// The upstream's process, as found and sampled.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamProc {
    /// The process, or why it is not known (then /proc checks are off).
    pub found: Result<Found, NotFound>,
    /// The latest sample of it.
    pub latest: Option<ProcSample>,
    /// Since when it has been stopped (`T`/`t`), per consecutive samples.
    pub stopped_since: Option<Instant>,
    /// Since when it has been in `D`, per consecutive samples.
    pub d_since: Option<Instant>,
    /// It was found, then exited (or its pid was reused); cleared when found again.
    pub gone: bool,
}

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
    pub proc: UpstreamProc,
}

impl UpstreamState {
    /// Nothing known yet about `spec`'s upstream.
    pub fn new(spec: Arc<UpstreamSpec>) -> Self {
        let ports = spec.probe_ports();
        Self {
            spec,
            probes: BTreeMap::new(),
            stall: StallClock::default(),
            scrape_failure: None,
            proc: UpstreamProc {
                found: Err(NotFound::NoListener(ports)),
                latest: None,
                stopped_since: None,
                d_since: None,
                gone: false,
            },
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

    /// Whether the /proc watcher should look for the process (again).
    pub fn needs_discovery(&self) -> bool {
        self.proc.found.is_err() || self.proc.gone
    }

    /// The outcome of a search for the process.
    pub fn record_discovery(&mut self, found: Result<Found, NotFound>) {
        let same = matches!((&self.proc.found, &found), (Ok(a), Ok(b)) if a == b);
        match found {
            Ok(f) if !same => {
                self.proc = UpstreamProc {
                    found: Ok(f),
                    latest: None,
                    stopped_since: None,
                    d_since: None,
                    gone: false,
                };
            }
            Ok(_) => {}
            // A process seen before stays the one judged (gone) until another is found.
            Err(e) if self.proc.found.is_err() => self.proc.found = Err(e),
            Err(_) => {}
        }
    }

    /// A /proc sample of the found process.
    pub fn record_sample(&mut self, sample: Result<ProcSample, SampleError>) {
        let Ok(start_time) = self.proc.found.as_ref().map(|f| f.start_time) else {
            return;
        };
        let p = &mut self.proc;
        match sample {
            Ok(s) if s.is_dead() || s.start_time != start_time => {
                p.gone = true;
                p.stopped_since = None;
                p.d_since = None;
            }
            Ok(s) => {
                p.stopped_since = if s.is_stopped() {
                    Some(p.stopped_since.unwrap_or(s.taken_at))
                } else {
                    None
                };
                p.d_since = if s.is_uninterruptible() {
                    Some(p.d_since.unwrap_or(s.taken_at))
                } else {
                    None
                };
                p.latest = Some(s);
            }
            Err(SampleError::Gone(_)) => {
                p.gone = true;
                p.stopped_since = None;
                p.d_since = None;
            }
            // Unreadable this time: no evidence.
            Err(SampleError::Unreadable { .. }) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::proc::discover::Method;
    use crate::sources::upstream::config::parse;

    fn state() -> UpstreamState {
        let spec = parse(
            r#"{"vllm": {"livenessProbe": {"tcpSocket": {"port": 8000}}}}"#,
            &[],
        )
        .expect("valid")
        .remove(0);
        UpstreamState::new(Arc::new(spec))
    }

    fn sample(at: Instant, state: char, start_time: u64) -> ProcSample {
        ProcSample {
            taken_at: at,
            state,
            cpu_seconds: 1.0,
            rss_bytes: 1,
            threads: 1,
            start_time,
        }
    }

    #[test]
    fn process_lifecycle() {
        let mut s = state();
        assert!(s.needs_discovery());
        assert_eq!(s.proc.found, Err(NotFound::NoListener(vec![8000])));
        let found = Found {
            pid: 42,
            start_time: 7,
            method: Method::Socket,
        };
        s.record_discovery(Ok(found.clone()));
        assert!(!s.needs_discovery());
        let t0 = Instant::now();
        s.record_sample(Ok(sample(t0, 'T', 7)));
        s.record_sample(Ok(sample(t0 + Duration::from_secs(1), 't', 7)));
        assert_eq!(s.proc.stopped_since, Some(t0));
        s.record_sample(Ok(sample(t0 + Duration::from_secs(2), 'S', 7)));
        assert_eq!(s.proc.stopped_since, None, "SIGCONT clears at once");
        s.record_sample(Ok(sample(t0 + Duration::from_secs(3), 'D', 7)));
        assert_eq!(s.proc.d_since, Some(t0 + Duration::from_secs(3)));
        // The pid reused by another process: gone, and looked for again.
        s.record_sample(Ok(sample(t0 + Duration::from_secs(4), 'S', 8)));
        assert!(s.proc.gone && s.needs_discovery());
        s.record_discovery(Err(NotFound::NoListener(vec![8000])));
        assert!(s.proc.gone && s.proc.found.is_ok(), "still judged gone");
        s.record_discovery(Ok(Found { pid: 43, ..found }));
        assert!(!s.proc.gone && s.proc.latest.is_none());
        s.record_sample(Err(SampleError::Gone(43)));
        assert!(s.proc.gone);
    }
}

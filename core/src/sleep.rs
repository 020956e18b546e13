//! Sleep (SPEC §12), pure: whether a server is asleep, since when, and what will wake it.
//!
//! A sleeping server is live and its clocks are paused ([`crate::engines`]); readiness
//! follows how it wakes. Any request wakes llama.cpp. vLLM slept by an operator's `/sleep`
//! waits for an operator's `/wake_up`; only with `--sleep-idle-ttl` does its API server
//! sleep it by itself, and then the next request wakes it. The scrape shows the same
//! gauge for both, so the agent tells them apart by when the sleep began: an idle sleep
//! comes at least the idle time after the last work the agent saw (give or take one
//! scrape), a sleep any sooner was asked for. A failed scrape is no evidence: the state
//! holds.

use std::time::{Duration, Instant};

use crate::upstreams::profiles::SleepSignal;
use crate::upstreams::SleepSpec;

/// What will wake a sleeping server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// The next request (it is ready: the request waits while it wakes).
    OnRequest,
    /// Only an operator (vLLM's `/wake_up`): it is not ready.
    Operator,
}

/// A sleep in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Asleep {
    /// The first scrape that showed it.
    pub since: Instant,
    /// What will end it.
    pub wakes: Wake,
}

/// One server's sleep, from successive scrapes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SleepTrack {
    asleep: Option<Asleep>,
    /// The latest scrape that showed the server working.
    last_active: Option<Instant>,
}

impl SleepTrack {
    /// A scrape at `at` showed the server `active` (or not) and `asleep` (`None`: it did
    /// not say). `grain` is the time between two scrapes.
    pub fn observe(
        &mut self,
        at: Instant,
        asleep: Option<bool>,
        active: bool,
        spec: &SleepSpec,
        grain: Duration,
    ) {
        match asleep {
            Some(true) if self.asleep.is_none() => {
                self.asleep = Some(Asleep {
                    since: at,
                    wakes: wakes(spec, self.last_active, at, grain),
                });
            }
            Some(true) => {}
            Some(false) => self.asleep = None,
            None => {}
        }
        if active && self.asleep.is_none() {
            self.last_active = Some(at);
        }
    }

    /// The sleep in progress, if any.
    pub fn asleep(&self) -> Option<Asleep> {
        self.asleep
    }
}

/// What will wake a server that was first seen asleep at `since`.
fn wakes(spec: &SleepSpec, last_active: Option<Instant>, since: Instant, grain: Duration) -> Wake {
    match (spec.signal, spec.idle_after) {
        (SleepSignal::Document { .. }, _) => Wake::OnRequest,
        (SleepSignal::Gauge { .. }, None) => Wake::Operator,
        (SleepSignal::Gauge { .. }, Some(idle)) => match last_active {
            // Asleep since before the agent looked: only the idle sleep is known to exist.
            None => Wake::OnRequest,
            Some(active) if since.saturating_duration_since(active) + grain >= idle => {
                Wake::OnRequest
            }
            Some(_) => Wake::Operator,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRAIN: Duration = Duration::from_secs(1);

    fn vllm(idle_after: Option<u64>) -> SleepSpec {
        SleepSpec {
            signal: SleepSignal::Gauge {
                name: "vllm:engine_sleep_state",
                label: "sleep_state",
                awake: "awake",
                idle_flag: "--sleep-idle-ttl",
            },
            idle_after: idle_after.map(Duration::from_secs),
        }
    }

    fn llamacpp() -> SleepSpec {
        SleepSpec {
            signal: SleepSignal::Document {
                path: "/props",
                idle_flag: "--sleep-idle-seconds",
            },
            idle_after: Some(Duration::from_secs(10)),
        }
    }

    /// (seconds, asleep, active) scrapes; what wakes the server after the last one.
    type Step = (u64, Option<bool>, bool);

    fn run(spec: &SleepSpec, steps: &[Step]) -> Option<Wake> {
        let t0 = Instant::now();
        let mut s = SleepTrack::default();
        for &(at, asleep, active) in steps {
            s.observe(t0 + Duration::from_secs(at), asleep, active, spec, GRAIN);
        }
        s.asleep().map(|a| a.wakes)
    }

    #[test]
    fn what_wakes_a_sleeping_server() {
        use Wake::*;
        let cases: &[(&str, SleepSpec, &[Step], Option<Wake>)] = &[
            ("awake", vllm(None), &[(0, Some(false), true)], None),
            (
                "vLLM without an idle ttl: only /sleep puts it to sleep",
                vllm(None),
                &[(0, Some(false), true), (100, Some(true), false)],
                Some(Operator),
            ),
            (
                "vLLM asleep the idle ttl after its last work: its own idle sleep",
                vllm(Some(60)),
                &[
                    (0, Some(false), true),
                    (30, Some(false), false),
                    (60, Some(true), false),
                ],
                Some(OnRequest),
            ),
            (
                "... seen one scrape late is still the idle sleep",
                vllm(Some(60)),
                &[(0, Some(false), true), (59, Some(true), false)],
                Some(OnRequest),
            ),
            (
                "vLLM asleep right after working: an operator's /sleep",
                vllm(Some(60)),
                &[(0, Some(false), true), (5, Some(true), false)],
                Some(Operator),
            ),
            (
                "vLLM asleep before the agent saw it work",
                vllm(Some(60)),
                &[(0, Some(true), false)],
                Some(OnRequest),
            ),
            (
                "requests waiting while asleep do not change what wakes it",
                vllm(Some(60)),
                &[
                    (0, Some(false), true),
                    (5, Some(true), true),
                    (100, Some(true), true),
                ],
                Some(Operator),
            ),
            (
                "a failed scrape (no word) keeps the sleep",
                vllm(None),
                &[(0, Some(true), false), (5, None, false)],
                Some(Operator),
            ),
            (
                "awake again",
                vllm(None),
                &[(0, Some(true), false), (5, Some(false), true)],
                None,
            ),
            (
                "llama.cpp: any request wakes it",
                llamacpp(),
                &[(0, Some(false), true), (1, Some(true), false)],
                Some(OnRequest),
            ),
        ];
        for (what, spec, steps, want) in cases {
            assert_eq!(run(spec, steps), *want, "{what}");
        }
    }

    #[test]
    fn the_sleep_is_timed_from_the_first_scrape_that_showed_it() {
        let t0 = Instant::now();
        let spec = vllm(None);
        let mut s = SleepTrack::default();
        for at in [3, 4, 5] {
            s.observe(
                t0 + Duration::from_secs(at),
                Some(true),
                false,
                &spec,
                GRAIN,
            );
        }
        assert_eq!(
            s.asleep().map(|a| a.since),
            Some(t0 + Duration::from_secs(3))
        );
    }
}

//! The hung-engine rule of SPEC §8, pure: from successive scrapes of a server's metrics,
//! whether its engine is busy and has not worked for the stall timeout.
//!
//! The clock runs only while busy: it restarts whenever a `work` counter moves and whenever
//! the server turns busy after being idle, so an idle server never stalls. A stall is what
//! the readings show: the latest answered reading, busy, came at least the stall timeout
//! after the clock started. A failed scrape is no evidence (nothing is recorded), so time
//! without answers never starts or extends a stall: a busy server killed, or one whose
//! metrics endpoint stops answering while `/health` stays 200, is never `loop_stalled` on
//! the strength of scrapes that failed. A stall the readings did show holds through failed
//! scrapes until the latest reading is 2 × the stall timeout old; then it is dropped, and
//! the next reading starts afresh. Equal readings printed too coarsely to show a
//! +1 change are no evidence of "unmoved" either: they restart the clock
//! ([`crate::upstreams::profiles`] says why).
//!
//! Where the server's engine loop answers the metrics itself (llama.cpp), scrapes that keep
//! timing out ARE evidence: the clock also keeps since when they have (SPEC §8's
//! exception; the verdict adds "while the probes still pass").

use std::time::{Duration, Instant};

/// What one successful scrape showed.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// When the page was read.
    pub at: Instant,
    /// Sum of each `work` counter's series (`None`: no series of that name).
    pub work: Vec<Option<f64>>,
    /// Sum of the busy gauges (`None`: none present).
    pub busy: Option<f64>,
    /// Sum of the pending gauges (`None`: none present).
    pub pending: Option<f64>,
    /// Some work counter was printed too coarsely to show a +1 change (its last digit is
    /// worth more than 1): two equal readings then do not show that nothing moved.
    pub blurred: bool,
}

impl Reading {
    /// Requests running or waiting.
    pub fn is_busy(&self) -> bool {
        self.busy.is_some_and(|b| b > 0.0) || self.pending.is_some_and(|p| p > 0.0)
    }
}

/// The state of one upstream's stall clock.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StallClock {
    last: Option<Reading>,
    /// When the engine last showed work, or turned busy; `None` while idle.
    since: Option<Instant>,
    /// When the current run of timed-out scrapes began (the first one's start).
    silent_since: Option<Instant>,
}

impl StallClock {
    /// Takes a successful scrape into account.
    pub fn observe(&mut self, reading: Reading, stall_timeout: Duration) {
        self.silent_since = None;
        let fresh = self
            .last
            .as_ref()
            .filter(|l| reading.at.saturating_duration_since(l.at) <= 2 * stall_timeout);
        self.since = match fresh {
            Some(last) if reading.is_busy() => {
                // Equal but blurred is not "unmoved": as good as moved.
                let moved = last.work != reading.work || reading.blurred;
                match self.since {
                    Some(since) if !moved && last.is_busy() => Some(since),
                    _ => Some(reading.at),
                }
            }
            None if reading.is_busy() => Some(reading.at),
            _ => None,
        };
        self.last = Some(reading);
    }

    /// A scrape that started at `started` failed: a timeout continues (or begins) a run of
    /// unanswered scrapes, any other failure ends it (the server answered, or is gone).
    pub fn observe_failure(&mut self, started: Instant, timed_out: bool) {
        self.silent_since = if timed_out {
            Some(self.silent_since.unwrap_or(started))
        } else {
            None
        };
    }

    /// How long scrapes have gone unanswered (timed out, one after another) at `now`;
    /// zero when the latest one was answered.
    pub fn unanswered_for(&self, now: Instant) -> Duration {
        self.silent_since
            .map_or(Duration::ZERO, |s| now.saturating_duration_since(s))
    }

    /// Whether the readings show the engine busy without work for `stall_timeout`, with the
    /// latest of them no older than 2 × `stall_timeout` at `now`.
    pub fn stalled(&self, now: Instant, stall_timeout: Duration) -> bool {
        self.last
            .as_ref()
            .is_some_and(|last| now.saturating_duration_since(last.at) <= 2 * stall_timeout)
            && self.unmoved_shown() >= stall_timeout
    }

    /// The latest reading, however old.
    pub fn last(&self) -> Option<&Reading> {
        self.last.as_ref()
    }

    /// How long the readings have shown the engine busy without work: from the clock's
    /// start to the latest answered reading (zero while idle or working). Time since that
    /// reading is not counted: nothing has been seen in it.
    pub fn unmoved_shown(&self) -> Duration {
        match (&self.last, self.since) {
            (Some(last), Some(since)) if last.is_busy() => last.at.saturating_duration_since(since),
            _ => Duration::ZERO,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(30);

    /// (seconds after start, work counter, busy, pending); `None` work = scrape failed
    /// (nothing observed).
    type Step = (u64, Option<f64>, f64, f64);

    fn run(steps: &[Step], at: u64) -> bool {
        let t0 = Instant::now();
        let mut c = StallClock::default();
        for &(s, work, busy, pending) in steps {
            if let Some(w) = work {
                c.observe(
                    Reading {
                        at: t0 + Duration::from_secs(s),
                        work: vec![Some(w)],
                        busy: Some(busy),
                        pending: Some(pending),
                        blurred: false,
                    },
                    T,
                );
            }
        }
        c.stalled(t0 + Duration::from_secs(at), T)
    }

    #[test]
    fn the_rule_as_a_table() {
        let cases: &[(&str, &[Step], u64, bool)] = &[
            ("no reading", &[], 100, false),
            (
                "idle forever never stalls",
                &[(0, Some(1.0), 0.0, 0.0), (50, Some(1.0), 0.0, 0.0)],
                59,
                false,
            ),
            (
                "busy and working",
                &[
                    (0, Some(1.0), 1.0, 0.0),
                    (20, Some(2.0), 1.0, 0.0),
                    (40, Some(3.0), 1.0, 0.0),
                ],
                60,
                false,
            ),
            (
                "busy, frozen for the timeout",
                &[
                    (0, Some(1.0), 1.0, 0.0),
                    (15, Some(1.0), 1.0, 0.0),
                    (30, Some(1.0), 1.0, 0.0),
                ],
                30,
                true,
            ),
            (
                "busy, frozen just under the timeout",
                &[(0, Some(1.0), 1.0, 0.0), (29, Some(1.0), 1.0, 0.0)],
                29,
                false,
            ),
            (
                "pending alone counts as busy",
                &[(0, Some(1.0), 0.0, 3.0), (31, Some(1.0), 0.0, 3.0)],
                31,
                true,
            ),
            (
                "idle time does not count: the clock starts when busy",
                &[
                    (0, Some(1.0), 0.0, 0.0),
                    (25, Some(1.0), 0.0, 0.0),
                    (26, Some(1.0), 1.0, 0.0),
                    (50, Some(1.0), 1.0, 0.0),
                ],
                50,
                false,
            ),
            (
                "... and stalls a timeout after turning busy",
                &[
                    (0, Some(1.0), 0.0, 0.0),
                    (26, Some(1.0), 1.0, 0.0),
                    (56, Some(1.0), 1.0, 0.0),
                ],
                56,
                true,
            ),
            (
                "work resets the clock",
                &[
                    (0, Some(1.0), 1.0, 0.0),
                    (29, Some(2.0), 1.0, 0.0),
                    (50, Some(2.0), 1.0, 0.0),
                ],
                50,
                false,
            ),
            (
                "a counter reset (restart) is movement",
                &[
                    (0, Some(9.0), 1.0, 0.0),
                    (29, Some(0.0), 1.0, 0.0),
                    (50, Some(0.0), 1.0, 0.0),
                ],
                50,
                false,
            ),
            (
                "failed scrapes are no evidence: the stall holds",
                &[
                    (0, Some(1.0), 1.0, 0.0),
                    (31, Some(1.0), 1.0, 0.0),
                    (40, None, 0.0, 0.0),
                ],
                45,
                true,
            ),
            (
                "busy, then no answer at all (killed while busy): no stall",
                &[(0, Some(1.0), 1.0, 0.0), (1, None, 0.0, 0.0)],
                45,
                false,
            ),
            (
                "busy, working, then metrics gone while /health passes: no stall",
                &[
                    (0, Some(1.0), 1.0, 0.0),
                    (20, Some(2.0), 1.0, 0.0),
                    (21, None, 0.0, 0.0),
                    (40, None, 0.0, 0.0),
                ],
                59,
                false,
            ),
            (
                "unmoved under the timeout, then silence: failed scrapes never extend it",
                &[
                    (0, Some(1.0), 1.0, 0.0),
                    (20, Some(1.0), 1.0, 0.0),
                    (25, None, 0.0, 0.0),
                ],
                55,
                false,
            ),
            (
                "... and the next answer, still unmoved, shows the stall",
                &[
                    (0, Some(1.0), 1.0, 0.0),
                    (20, Some(1.0), 1.0, 0.0),
                    (25, None, 0.0, 0.0),
                    (35, Some(1.0), 1.0, 0.0),
                ],
                35,
                true,
            ),
            (
                "resumed after a stop: the first answer shows work, no stall",
                &[
                    (0, Some(1.0), 1.0, 0.0),
                    (10, None, 0.0, 0.0),
                    (40, None, 0.0, 0.0),
                    (41, Some(2.0), 1.0, 0.0),
                ],
                41,
                false,
            ),
            (
                "... but not beyond 2 x timeout",
                &[(0, Some(1.0), 1.0, 0.0), (31, Some(1.0), 1.0, 0.0)],
                92,
                false,
            ),
            (
                "a reading after a stale gap starts afresh",
                &[(0, Some(1.0), 1.0, 0.0), (100, Some(1.0), 1.0, 0.0)],
                110,
                false,
            ),
            (
                "turning idle stops the clock",
                &[
                    (0, Some(1.0), 1.0, 0.0),
                    (20, Some(1.0), 0.0, 0.0),
                    (40, Some(1.0), 0.0, 0.0),
                ],
                40,
                false,
            ),
        ];
        for (name, steps, at, want) in cases {
            assert_eq!(run(steps, *at), *want, "{name}");
        }
    }

    #[test]
    fn a_counter_appearing_is_movement() {
        let t0 = Instant::now();
        let mut c = StallClock::default();
        let r = |s: u64, w: Option<f64>| Reading {
            at: t0 + Duration::from_secs(s),
            work: vec![w],
            busy: Some(1.0),
            pending: None,
            blurred: false,
        };
        c.observe(r(0, None), T);
        c.observe(r(29, Some(0.0)), T);
        assert!(!c.stalled(t0 + Duration::from_secs(40), T));
        c.observe(r(40, Some(0.0)), T);
        assert_eq!(c.unmoved_shown(), Duration::from_secs(11));
        assert!(
            !c.stalled(t0 + Duration::from_secs(58), T),
            "no reading since 40 s"
        );
        c.observe(r(59, Some(0.0)), T);
        assert!(c.stalled(t0 + Duration::from_secs(59), T));
        assert_eq!(c.last().map(|r| r.at), Some(t0 + Duration::from_secs(59)));
    }

    #[test]
    fn blurred_equal_readings_never_stall_but_moves_still_show() {
        // llama.cpp past 1e8 decode steps prints `1.23457e+08` for a working engine.
        let t0 = Instant::now();
        let r = |s: u64, w: f64, blurred: bool| Reading {
            at: t0 + Duration::from_secs(s),
            work: vec![Some(w)],
            busy: Some(1.0),
            pending: None,
            blurred,
        };
        let mut c = StallClock::default();
        for s in (0..=90).step_by(10) {
            c.observe(r(s, 1.23457e8, true), T);
        }
        assert!(
            !c.stalled(t0 + Duration::from_secs(90), T),
            "equal, but blurred"
        );
        // The same readings printed exactly are a stall.
        let mut exact = StallClock::default();
        for s in (0..=30).step_by(10) {
            exact.observe(r(s, 123_456_789.0, false), T);
        }
        assert!(exact.stalled(t0 + Duration::from_secs(30), T));
    }

    #[test]
    fn unanswered_scrapes_are_timed_from_the_first_until_an_answer() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut c = StallClock::default();
        assert_eq!(c.unanswered_for(at(5)), Duration::ZERO);
        c.observe_failure(at(1), true);
        c.observe_failure(at(2), true);
        assert_eq!(c.unanswered_for(at(31)), Duration::from_secs(30));
        // Refused (or 401, or a bad page): the server answered or is gone, the run ends.
        c.observe_failure(at(3), false);
        assert_eq!(c.unanswered_for(at(40)), Duration::ZERO);
        c.observe_failure(at(41), true);
        c.observe(
            Reading {
                at: at(50),
                work: vec![Some(1.0)],
                busy: Some(0.0),
                pending: None,
                blurred: false,
            },
            T,
        );
        assert_eq!(c.unanswered_for(at(80)), Duration::ZERO, "answered again");
    }
}

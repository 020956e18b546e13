//! Per-engine judgement (SPEC §12): what one scrape showed of each engine of a server, and
//! one stall clock ([`StallClock`]) per engine, so that one wedged engine among eight is
//! not hidden by seven that work (their summed counters would keep moving).
//!
//! A server whose series carry no engine label is one engine (`None`). An engine that
//! leaves the page (a data-parallel server scaled down) loses its clock. While the server
//! says it is asleep its engines count as idle, so the clocks are paused (an idle clock
//! does not run) and waking starts them afresh; a request waiting for the server to wake is
//! not an engine that stopped working.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::stall::{Reading, StallClock};

/// An engine's name on the page: the value of the profile's engine label (`engine="3"` →
/// `Some("3")`); `None` where the series carry none.
pub type EngineId = Option<String>;

/// What one successful scrape of the metrics showed.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    /// When the page was read.
    pub at: Instant,
    /// Each engine's series; never empty (a page without any series of the profile is one
    /// engine with none).
    pub engines: BTreeMap<EngineId, Reading>,
    /// Whether the server says it is asleep (`None`: it has no such signal).
    pub asleep: Option<bool>,
}

impl Page {
    fn sum(&self, f: impl Fn(&Reading) -> Option<f64>) -> Option<f64> {
        self.engines.values().filter_map(f).reduce(|a, b| a + b)
    }

    /// The busy gauges over every engine (the per-container sum the metrics re-export).
    pub fn busy(&self) -> Option<f64> {
        self.sum(|r| r.busy)
    }

    /// The pending gauges over every engine.
    pub fn pending(&self) -> Option<f64> {
        self.sum(|r| r.pending)
    }

    /// Every work counter over every engine.
    pub fn work(&self) -> Option<f64> {
        self.sum(|r| r.work.iter().flatten().copied().reduce(|a, b| a + b))
    }

    /// Some engine has requests running or waiting.
    pub fn is_busy(&self) -> bool {
        self.engines.values().any(Reading::is_busy)
    }
}

/// What one round of scraping learnt.
#[derive(Debug, Clone, PartialEq)]
pub enum Scrape {
    /// The metrics page.
    Page(Page),
    /// The metrics were not read: the server was idle at the last page, reading them would
    /// restart its idle timer or wake it, and it shows no work. Only whether it sleeps
    /// was read, from where that wakes nothing ([`crate::upstreams::profiles::SleepSignal::Document`]).
    Quiet {
        /// When.
        at: Instant,
        /// Whether it said it is asleep (`None`: it did not answer).
        asleep: Option<bool>,
    },
}

/// The stall clocks of one server's engines, and the latest page.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineClocks {
    /// Never empty: before the first page, and for a server without engine labels, the
    /// one `None` engine (which also times unanswered scrapes).
    clocks: BTreeMap<EngineId, StallClock>,
    last: Option<Page>,
}

impl Default for EngineClocks {
    fn default() -> Self {
        Self {
            clocks: BTreeMap::from([(None, StallClock::default())]),
            last: None,
        }
    }
}

impl EngineClocks {
    /// Takes a page into account. Returns whether it shows the server working: some
    /// engine busy, or a work counter moved since the previous page.
    pub fn observe(&mut self, page: Page, stall_timeout: Duration) -> bool {
        let moved = self.last.as_ref().is_some_and(|last| {
            page.engines
                .iter()
                .any(|(id, r)| last.engines.get(id).is_some_and(|l| l.work != r.work))
        });
        let active = page.is_busy() || moved;
        let asleep = page.asleep == Some(true);
        for (id, reading) in &page.engines {
            let mut reading = reading.clone();
            if asleep {
                // Paused: an asleep engine is idle to its clock, whatever waits for it.
                reading.busy = Some(0.0);
                reading.pending = Some(0.0);
            }
            self.clocks
                .entry(id.clone())
                .or_default()
                .observe(reading, stall_timeout);
        }
        self.clocks.retain(|id, _| page.engines.contains_key(id));
        self.last = Some(page);
        active
    }

    /// A scrape that started at `started` failed (see [`StallClock::observe_failure`]).
    pub fn observe_failure(&mut self, started: Instant, timed_out: bool) {
        for clock in self.clocks.values_mut() {
            clock.observe_failure(started, timed_out);
        }
    }

    /// How long scrapes have gone unanswered at `now` (zero when the latest was answered).
    pub fn unanswered_for(&self, now: Instant) -> Duration {
        self.clocks
            .values()
            .map(|c| c.unanswered_for(now))
            .max()
            .unwrap_or_default()
    }

    /// The engines busy without work for `stall_timeout` at `now`, in label order.
    pub fn stalled(&self, now: Instant, stall_timeout: Duration) -> Vec<&EngineId> {
        self.clocks
            .iter()
            .filter(|(_, c)| c.stalled(now, stall_timeout))
            .map(|(id, _)| id)
            .collect()
    }

    /// How many engines the latest page showed (1 before any page).
    pub fn engine_count(&self) -> usize {
        self.clocks.len()
    }

    /// Each engine's clock, in label order.
    pub fn clocks(&self) -> impl Iterator<Item = (&EngineId, &StallClock)> {
        self.clocks.iter()
    }

    /// The latest page, however old.
    pub fn last(&self) -> Option<&Page> {
        self.last.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(30);

    /// (engine, work counter, busy): one engine's series on a page.
    type Series = (&'static str, f64, f64);

    fn page(at: Instant, series: &[Series], asleep: Option<bool>) -> Page {
        Page {
            at,
            engines: series
                .iter()
                .map(|&(id, work, busy)| {
                    (
                        Some(id.to_owned()),
                        Reading {
                            at,
                            work: vec![Some(work)],
                            busy: Some(busy),
                            pending: Some(0.0),
                            blurred: false,
                        },
                    )
                })
                .collect(),
            asleep,
        }
    }

    /// Eight engines busy; at every page each works except those in `hung`.
    fn eight(at: Instant, step: f64, hung: &[&str], asleep: Option<bool>) -> Page {
        const IDS: [&str; 8] = ["0", "1", "2", "3", "4", "5", "6", "7"];
        let series: Vec<Series> = IDS
            .iter()
            .map(|id| (*id, if hung.contains(id) { 0.0 } else { step }, 1.0))
            .collect();
        page(at, &series, asleep)
    }

    /// The engines stalled after pages every 10 s from 0 to `until` s, built by `page_at`.
    fn stalled_after(until: u64, page_at: impl Fn(Instant, f64) -> Page) -> Vec<String> {
        let t0 = Instant::now();
        let mut c = EngineClocks::default();
        for s in (0..=until).step_by(10) {
            let at = t0 + Duration::from_secs(s);
            c.observe(page_at(at, s as f64), T);
        }
        c.stalled(t0 + Duration::from_secs(until), T)
            .into_iter()
            .map(|id| id.clone().unwrap_or_default())
            .collect()
    }

    #[test]
    fn each_engine_has_its_own_clock() {
        // (what, hung engines, asleep, pages until (s), stalled engines)
        type Case<'a> = (&'a str, &'a [&'a str], Option<bool>, u64, &'a [&'a str]);
        let cases: &[Case] = &[
            ("all eight working", &[], None, 60, &[]),
            ("engine 3 hung while seven work", &["3"], None, 30, &["3"]),
            ("... not before the stall timeout", &["3"], None, 20, &[]),
            ("two hung", &["3", "5"], None, 40, &["3", "5"]),
            (
                "every engine hung",
                &["0", "1", "2", "3", "4", "5", "6", "7"],
                None,
                30,
                &["0", "1", "2", "3", "4", "5", "6", "7"],
            ),
            (
                "asleep with requests waiting is not hung",
                &["0", "1", "2", "3", "4", "5", "6", "7"],
                Some(true),
                90,
                &[],
            ),
            (
                "awake (the gauge says so) and hung",
                &["3"],
                Some(false),
                30,
                &["3"],
            ),
        ];
        for (what, hung, asleep, until, want) in cases {
            let got = stalled_after(*until, |at, step| eight(at, step, hung, *asleep));
            assert_eq!(got, *want, "{what}");
        }
    }

    #[test]
    fn waking_starts_the_clocks_afresh() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut c = EngineClocks::default();
        // Asleep for a minute with a request waiting on engine 0, then awake, still unmoved.
        for s in [0, 20, 40, 60] {
            c.observe(page(at(s), &[("0", 5.0, 1.0)], Some(true)), T);
        }
        c.observe(page(at(70), &[("0", 5.0, 1.0)], Some(false)), T);
        assert!(c.stalled(at(99), T).is_empty(), "29 s after waking");
        c.observe(page(at(100), &[("0", 5.0, 1.0)], Some(false)), T);
        assert_eq!(c.stalled(at(100), T), [&Some("0".to_owned())]);
    }

    #[test]
    fn engines_that_leave_the_page_lose_their_clock() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut c = EngineClocks::default();
        assert_eq!(
            c.engine_count(),
            1,
            "the one unlabelled engine before any page"
        );
        c.observe(page(at(0), &[("0", 1.0, 1.0), ("1", 1.0, 1.0)], None), T);
        assert_eq!(c.engine_count(), 2);
        c.observe(page(at(10), &[("0", 2.0, 1.0)], None), T);
        assert_eq!(c.engine_count(), 1);
        assert_eq!(c.last().map(Page::busy), Some(Some(1.0)));
    }

    #[test]
    fn a_page_shows_work_when_busy_or_when_a_counter_moved() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut c = EngineClocks::default();
        assert!(
            !c.observe(page(at(0), &[("0", 1.0, 0.0)], None), T),
            "idle, first page"
        );
        assert!(
            c.observe(page(at(1), &[("0", 2.0, 0.0)], None), T),
            "moved, now idle"
        );
        assert!(
            !c.observe(page(at(2), &[("0", 2.0, 0.0)], None), T),
            "idle, unmoved"
        );
        assert!(c.observe(page(at(3), &[("0", 2.0, 1.0)], None), T), "busy");
    }

    #[test]
    fn unanswered_scrapes_are_timed_before_any_page() {
        let t0 = Instant::now();
        let mut c = EngineClocks::default();
        c.observe_failure(t0, true);
        assert_eq!(
            c.unanswered_for(t0 + Duration::from_secs(5)),
            Duration::from_secs(5)
        );
    }
}

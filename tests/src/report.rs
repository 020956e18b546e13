//! Measured detection latencies: printed where a person running `make test` sees them, and
//! appended to `$VITALS_E2E_REPORT` when set (that is how `docs/e2e.md` got its numbers);
//! and scenarios that cannot run here, which fail unless the runner allowed them to skip.
//!
//! The lines go straight to the process's stderr, not through `eprintln!`, because the
//! test harness captures `eprintln!` output of passing tests and the numbers matter most
//! when everything passes.

use std::fmt;
use std::io::Write as _;
use std::time::Duration;

use crate::pod::append;

/// The `p` quantile of `sorted` (non-empty, ascending) by nearest rank: the smallest value
/// with at least `p` of the samples at or below it. The one definition of the tests and
/// benches, so their p50s and p99s compare.
///
/// # Panics
/// When `sorted` is empty.
pub fn percentile<T: Copy>(sorted: &[T], p: f64) -> T {
    assert!(!sorted.is_empty(), "a percentile of no samples");
    let rank = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}
use crate::timeline::{Starvation, Timeline};

/// How long after a fault Vitals noticed it, and the bound it had to meet: the configured
/// timeout, plus what the mechanism adds by design (stated by the test from its intervals),
/// plus the starvation the test's own timeline measured over the same window.
#[derive(Debug, Clone)]
pub struct Detection {
    /// The scenario's name.
    pub scenario: String,
    /// What happened (`detected load_stalled on /livez/model`).
    pub what: String,
    /// Time from the fault to the first probe that showed it.
    pub after: Duration,
    /// The configured timeout that governs it.
    pub bound: Duration,
    /// What the mechanism adds by design: a heartbeat or /proc interval before the evidence
    /// arrives, a poll before a probe sees the verdict.
    pub mechanism: Duration,
    /// What scheduling took from the test between the fault and the detection.
    pub starvation: Starvation,
}

impl fmt::Display for Detection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[{}] {} after {:.2}s (bound {}s + {}s mechanism + {})",
            self.scenario,
            self.what,
            self.after.as_secs_f64(),
            trim(self.bound),
            trim(self.mechanism),
            self.starvation
        )
    }
}

fn trim(d: Duration) -> String {
    let s = format!("{:.2}", d.as_secs_f64());
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

impl Detection {
    /// Prints the measurement, records it in the timeline and the report file.
    pub fn report(&self, timeline: &Timeline) {
        report_line(&self.to_string());
        timeline.event(self.to_string());
    }

    /// The latest correct time: bound, mechanism and measured starvation.
    pub fn limit(&self) -> Duration {
        self.bound + self.mechanism + self.starvation.total()
    }

    /// Panics when the detection missed its bound.
    pub fn check(&self) {
        assert!(
            self.after <= self.limit(),
            "{self}: too late, the bound is {:.3}s",
            self.limit().as_secs_f64()
        );
    }
}

/// Prints one line for the person running the tests, uncaptured, and appends it to
/// `$VITALS_E2E_REPORT` when set.
pub fn report_line(line: &str) {
    let _ = writeln!(std::io::stderr(), "vitals-e2e: {line}");
    if let Some(path) = std::env::var_os("VITALS_E2E_REPORT") {
        if let Ok(mut f) = append(std::path::Path::new(&path)) {
            let _ = writeln!(f, "{line}");
        }
    }
}

/// The variable naming the scenarios allowed to skip on this machine, comma-separated by
/// their number (`VITALS_ALLOW_SKIP=s09,s10`). CI never sets it: there every scenario runs.
pub const ALLOW_SKIP: &str = "VITALS_ALLOW_SKIP";

/// Scenario `id` (`s10`) cannot run on this machine because of `why`: fails the test,
/// unless [`ALLOW_SKIP`] names `id`; then prints a `SKIPPED` line and returns, and the
/// caller returns too. A missing prerequisite never turns into a silent pass.
#[track_caller]
pub fn cannot_run(id: &str, why: &str) {
    let allowed = std::env::var(ALLOW_SKIP).unwrap_or_default();
    assert!(
        skip_allowed(&allowed, id),
        "[{id}] cannot run here: {why}; set {ALLOW_SKIP}={id} to let it skip on this machine"
    );
    report_line(&format!("[{id}] SKIPPED ({ALLOW_SKIP}={allowed}): {why}"));
}

/// Whether the comma-separated `allow_list` names scenario `id`.
fn skip_allowed(allow_list: &str, id: &str) -> bool {
    allow_list.split(',').any(|s| s.trim() == id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let ms: Vec<_> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&ms, 0.5), Duration::from_millis(50));
        assert_eq!(percentile(&ms, 0.99), Duration::from_millis(99));
        assert_eq!(percentile(&ms, 1.0), Duration::from_millis(100));
        assert_eq!(percentile(&ms[..1], 0.99), Duration::from_millis(1));
    }

    #[test]
    fn renders_like_the_issue_asks() {
        let d = Detection {
            scenario: "stuck_load".into(),
            what: "detected load_stalled on /livez/model".into(),
            after: Duration::from_millis(3412),
            bound: Duration::from_secs(3),
            mechanism: Duration::from_millis(300),
            starvation: Starvation {
                wakeups: Duration::from_millis(20),
                worst_wakeup: Duration::from_millis(8),
                ticks: 170,
                processes: Duration::from_millis(100),
            },
        };
        assert_eq!(
            d.to_string(),
            "[stuck_load] detected load_stalled on /livez/model after 3.41s (bound 3s + 0.3s \
             mechanism + 0.120s starvation: test wake-ups 0.020s over 170 ticks (worst 8.0 ms), \
             processes' run-queue waits 0.100s)"
        );
        d.check();
    }

    #[test]
    #[should_panic(expected = "too late")]
    fn a_late_detection_fails() {
        Detection {
            scenario: "x".into(),
            what: "y".into(),
            after: Duration::from_millis(3401),
            bound: Duration::from_secs(3),
            mechanism: Duration::from_millis(300),
            starvation: Starvation {
                wakeups: Duration::from_millis(60),
                worst_wakeup: Duration::from_millis(60),
                ticks: 1,
                processes: Duration::from_millis(40),
            },
        }
        .check();
    }

    #[test]
    fn only_named_scenarios_may_skip() {
        assert!(skip_allowed("s09,s10", "s10"));
        assert!(skip_allowed(" s09 , s10", "s09"));
        assert!(!skip_allowed("", "s09"));
        assert!(!skip_allowed("s1", "s10"), "a prefix is not a name");
        assert!(!skip_allowed("s09", "s10"));
    }
}

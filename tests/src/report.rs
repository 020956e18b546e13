//! Measured detection latencies: printed where a person running `make test` sees them, and
//! appended to `$VITALS_E2E_REPORT` when set (that is how `docs/e2e.md` got its numbers).
//!
//! The lines go straight to the process's stderr, not through `eprintln!`, because the
//! test harness captures `eprintln!` output of passing tests and the numbers matter most
//! when everything passes.

use std::fmt;
use std::io::Write as _;
use std::time::Duration;

use crate::pod::append;
use crate::timeline::Timeline;

/// How long after a fault Vitals noticed it, and the bound it had to meet.
#[derive(Debug, Clone)]
pub struct Detection {
    /// The scenario's name.
    pub scenario: String,
    /// What was detected (`load_stalled on /livez/model`).
    pub what: String,
    /// Time from the fault to the first probe that showed it.
    pub after: Duration,
    /// The configured timeout that governs it.
    pub bound: Duration,
    /// What the bound allows on top (heartbeat and /proc intervals, scheduling).
    pub slack: Duration,
}

impl fmt::Display for Detection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[{}] detected {} after {:.2}s (bound {}s + {}s)",
            self.scenario,
            self.what,
            self.after.as_secs_f64(),
            trim(self.bound),
            trim(self.slack)
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

    /// Panics when the detection missed its bound.
    pub fn check(&self) {
        assert!(
            self.after <= self.bound + self.slack,
            "{self}: too late, the bound is {:.2}s",
            (self.bound + self.slack).as_secs_f64()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_like_the_issue_asks() {
        let d = Detection {
            scenario: "stuck_load".into(),
            what: "load_stalled on /livez/model".into(),
            after: Duration::from_millis(3412),
            bound: Duration::from_secs(3),
            slack: Duration::from_secs(1),
        };
        assert_eq!(
            d.to_string(),
            "[stuck_load] detected load_stalled on /livez/model after 3.41s (bound 3s + 1s)"
        );
        d.check();
    }

    #[test]
    #[should_panic(expected = "too late")]
    fn a_late_detection_fails() {
        Detection {
            scenario: "x".into(),
            what: "y".into(),
            after: Duration::from_millis(4001),
            bound: Duration::from_secs(3),
            slack: Duration::from_secs(1),
        }
        .check();
    }
}

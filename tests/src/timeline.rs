//! A scenario's timeline: every probe, fault and step with its time since the scenario
//! started, so a failing scenario prints what happened in order and explains itself.

use std::fmt::Write as _;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::probe::ProbeOutcome;

/// One line of the timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Time since the timeline started.
    pub at: Duration,
    /// What was probed (`/livez/model`), or `event` for a step or fault.
    pub what: String,
    /// The HTTP status of a probe, when one came back.
    pub status: Option<u16>,
    /// Whether a probe passed; `None` for events.
    pub passed: Option<bool>,
    /// The probe's body or error, or the event's text.
    pub detail: String,
}

impl Entry {
    /// The agent's reason for a failing probe (the text after `fail: `).
    pub fn reason(&self) -> Option<&str> {
        match self.passed {
            Some(false) => {
                let d = self.detail.trim();
                Some(d.strip_prefix("fail: ").unwrap_or(d))
            }
            _ => None,
        }
    }

    /// Whether this entry is a probe of `path`.
    pub fn is_probe_of(&self, path: &str) -> bool {
        self.passed.is_some() && self.what == path
    }
}

/// A thread-safe, append-only record of a scenario.
#[derive(Debug)]
pub struct Timeline {
    start: Instant,
    entries: Mutex<Vec<Entry>>,
}

impl Default for Timeline {
    fn default() -> Self {
        Self::new()
    }
}

impl Timeline {
    /// A timeline starting now.
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            entries: Mutex::new(Vec::new()),
        }
    }

    /// The instant the timeline counts from.
    pub fn start(&self) -> Instant {
        self.start
    }

    /// Time since the start.
    pub fn now(&self) -> Duration {
        self.start.elapsed()
    }

    /// Converts an instant to timeline time (zero for instants before the start).
    pub fn at(&self, instant: Instant) -> Duration {
        instant.saturating_duration_since(self.start)
    }

    fn push(&self, entry: Entry) {
        // A panic elsewhere must not hide the timeline that explains it.
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        // Probes run on several threads: keep the record sorted by time.
        let pos = entries.partition_point(|e| e.at <= entry.at);
        entries.insert(pos, entry);
    }

    /// Records a step or fault (`SIGSTOP worker`, `worker started`) now; returns its time.
    pub fn event(&self, text: impl Into<String>) -> Duration {
        let at = self.now();
        self.push(Entry {
            at,
            what: "event".into(),
            status: None,
            passed: None,
            detail: text.into(),
        });
        at
    }

    /// Records a probe of `path` that started at `started`.
    pub fn probe(&self, path: &str, started: Instant, outcome: &ProbeOutcome) {
        self.push(Entry {
            at: self.at(started),
            what: path.to_string(),
            status: outcome.status,
            passed: Some(outcome.passed()),
            detail: outcome.body.trim().to_string(),
        });
    }

    /// A copy of every entry, in time order.
    pub fn entries(&self) -> Vec<Entry> {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The probes of `path` in `[from, to)`, in time order.
    pub fn probes(&self, path: &str, from: Duration, to: Duration) -> Vec<Entry> {
        self.entries()
            .into_iter()
            .filter(|e| e.is_probe_of(path) && e.at >= from && e.at < to)
            .collect()
    }

    /// The whole timeline as text, one entry a line; runs of identical probe results are
    /// folded (`... 12 more`) so long quiet stretches do not drown the interesting lines.
    pub fn render(&self) -> String {
        use std::collections::HashMap;
        let entries = self.entries();
        let mut out = String::new();
        // Per probed path: the last printed (status, body), and the folded repeats since
        // (how many, until when).
        let mut last: HashMap<&str, (Option<u16>, &str)> = HashMap::new();
        let mut folded: HashMap<&str, (usize, Duration)> = HashMap::new();
        let fold_line = |out: &mut String, what: &str, (n, until): (usize, Duration)| {
            let _ = writeln!(
                out,
                "{:>9}  {what:<22} ... {n} more like the last, until {:.3}s",
                "",
                until.as_secs_f64()
            );
        };
        for e in &entries {
            if e.passed.is_some() {
                let key = (e.status, e.detail.as_str());
                if last.get(e.what.as_str()) == Some(&key) {
                    let f = folded.entry(e.what.as_str()).or_insert((0, e.at));
                    *f = (f.0 + 1, e.at);
                    continue;
                }
                if let Some(f) = folded.remove(e.what.as_str()) {
                    fold_line(&mut out, &e.what, f);
                }
                last.insert(e.what.as_str(), key);
            }
            let status = match (e.passed, e.status) {
                (None, _) => "   ".to_string(),
                (Some(_), None) => "---".to_string(),
                (Some(_), Some(s)) => s.to_string(),
            };
            let _ = writeln!(
                out,
                "{:>8.3}s  {:<22} {status} {}",
                e.at.as_secs_f64(),
                e.what,
                e.detail.replace('\n', " | ")
            );
        }
        let mut rest: Vec<_> = folded.into_iter().collect();
        rest.sort_by_key(|(_, (_, until))| *until);
        for (what, f) in rest {
            fold_line(&mut out, what, f);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::ProbeResult;

    fn outcome(status: u16, body: &str) -> ProbeOutcome {
        ProbeOutcome {
            result: if status < 400 {
                ProbeResult::Success
            } else {
                ProbeResult::Failure
            },
            status: Some(status),
            body: body.into(),
            latency: Duration::ZERO,
        }
    }

    #[test]
    fn keeps_time_order_and_folds_repeats() {
        let t = Timeline::new();
        let early = Instant::now();
        std::thread::sleep(Duration::from_millis(2));
        t.event("fault");
        t.probe("/livez/model", early, &outcome(200, "ok"));
        for _ in 0..3 {
            t.probe("/livez/model", Instant::now(), &outcome(200, "ok"));
        }
        t.probe(
            "/livez/model",
            Instant::now(),
            &outcome(503, "fail: loop_stalled"),
        );
        let e = t.entries();
        assert_eq!(e[0].what, "/livez/model", "the earlier probe sorts first");
        assert_eq!(e[1].detail, "fault");
        assert_eq!(e.last().and_then(Entry::reason), Some("loop_stalled"));
        let text = t.render();
        assert!(text.contains("... 3 more like the last, until"), "{text}");
        assert!(text.contains("503 fail: loop_stalled"), "{text}");
    }
}

//! An upstream's load progress (SPEC §12): from the first sample of its process until its
//! startup probe first passes, the process's resident memory, CPU time and (where
//! readable) bytes read, and when any of them last moved. Servers that report no progress
//! of their own still show these; a load that moves none of them for
//! `--load-stall-timeout` is stuck (the verdict's `load_stalled`).

use std::time::{Duration, Instant};

use crate::proc::BytesRead;
use crate::proc::ProcSample;

/// One upstream's load, as /proc shows it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoadProgress {
    /// The process loading: pid and start time (another one starts the load over).
    process: Option<(u32, u64)>,
    /// Resident memory in the latest sample.
    pub rss_bytes: Option<u64>,
    /// CPU time (user + system) in the latest sample.
    pub cpu_seconds: Option<f64>,
    /// What it had read at the latest sample, when readable.
    pub read: Option<BytesRead>,
    /// Why `/proc/<pid>/io` could not be read, when it could not.
    pub read_error: Option<String>,
    /// The first sample of this process, or the latest one in which something moved.
    pub moved_at: Option<Instant>,
    /// Its startup probe has passed: the load is over and nothing more is recorded.
    pub done: bool,
}

impl LoadProgress {
    /// A load to follow; with no startup probe there is none (startup passes at once).
    pub fn new(has_startup_probe: bool) -> Self {
        Self {
            done: !has_startup_probe,
            ..Self::default()
        }
    }

    /// Whether the load is still being followed.
    pub fn is_loading(&self) -> bool {
        !self.done
    }

    /// The startup probe passed: the load is over.
    pub fn finished(&mut self) {
        self.done = true;
    }

    /// Takes a sample of process `pid` into account, with what it had read (`None`: not
    /// read this round).
    pub fn observe(
        &mut self,
        pid: u32,
        sample: &ProcSample,
        read: Option<Result<BytesRead, String>>,
    ) {
        if self.done {
            return;
        }
        let process = Some((pid, sample.start_time));
        if self.process != process {
            // A new process (a restarted container) loads from the start.
            *self = Self {
                process,
                ..Self::default()
            };
        }
        let read = match read {
            Some(Ok(r)) => {
                self.read_error = None;
                Some(r)
            }
            Some(Err(e)) => {
                self.read_error = Some(e);
                None
            }
            None => None,
        };
        let moved = self.rss_bytes != Some(sample.rss_bytes)
            || self.cpu_seconds.is_none_or(|c| sample.cpu_seconds > c)
            || read.is_some_and(|r| self.read != Some(r));
        self.rss_bytes = Some(sample.rss_bytes);
        self.cpu_seconds = Some(sample.cpu_seconds);
        if read.is_some() {
            self.read = read;
        }
        if moved {
            self.moved_at = Some(sample.taken_at);
        }
    }

    /// How long nothing has moved at `now` (zero once loaded or before any sample).
    pub fn unmoved_for(&self, now: Instant) -> Duration {
        match self.moved_at {
            Some(at) if !self.done => now.saturating_duration_since(at),
            _ => Duration::ZERO,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at: Instant, rss: u64, cpu: f64, start: u64) -> ProcSample {
        ProcSample {
            taken_at: at,
            state: 'S',
            cpu_seconds: cpu,
            rss_bytes: rss,
            threads: 1,
            start_time: start,
        }
    }

    fn read(rchar: u64) -> Option<Result<BytesRead, String>> {
        Some(Ok(BytesRead { rchar, storage: 0 }))
    }

    #[test]
    fn any_sign_of_work_restarts_the_clock() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        /// (what, second, rss, cpu, bytes read, unmoved for at that second)
        type Step = (
            &'static str,
            u64,
            u64,
            f64,
            Option<Result<BytesRead, String>>,
            u64,
        );
        let steps: Vec<Step> = vec![
            ("first sample", 0, 100, 1.0, read(10), 0),
            ("nothing moved", 5, 100, 1.0, read(10), 5),
            ("memory grew", 6, 200, 1.0, read(10), 0),
            ("memory shrank", 7, 150, 1.0, read(10), 0),
            ("CPU burned", 8, 150, 1.5, read(10), 0),
            ("a file read", 9, 150, 1.5, read(20), 0),
            (
                "io unreadable: no evidence",
                20,
                150,
                1.5,
                Some(Err("EACCES".into())),
                11,
            ),
            ("io not read this round", 30, 150, 1.5, None, 21),
        ];
        let mut l = LoadProgress::default();
        for (what, s, rss, cpu, r, unmoved) in steps {
            l.observe(7, &sample(at(s), rss, cpu, 1), r);
            assert_eq!(l.unmoved_for(at(s)), Duration::from_secs(unmoved), "{what}");
        }
        assert_eq!(
            l.read_error.as_deref(),
            Some("EACCES"),
            "cleared by nothing but a successful read"
        );
        assert_eq!(l.read.map(|r| r.rchar), Some(20));
        l.observe(8, &sample(at(40), 150, 1.5, 2), None);
        assert_eq!(
            l.unmoved_for(at(41)),
            Duration::from_secs(1),
            "a new process"
        );
        l.finished();
        assert!(!l.is_loading());
        l.observe(8, &sample(at(50), 150, 1.5, 2), None);
        assert_eq!(l.unmoved_for(at(500)), Duration::ZERO, "loaded");
    }
}

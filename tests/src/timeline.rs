//! A scenario's timeline: every probe, fault and step with its time since the scenario
//! started, so a failing scenario prints what happened in order and explains itself; and how
//! starved of CPU the test itself was meanwhile, which timing bounds add (see
//! [`Timeline::starvation`]).

use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::sync::{Arc, Mutex, PoisonError, Weak};
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

/// How often the metronome asks to run: as often as the toolkit's own polls
/// ([`crate::wait::POLL_EVERY`]), a thread that sleeps and wakes like the processes under
/// test do (the agent's probes and ticks, the worker's heartbeats).
pub const METRONOME_PERIOD: Duration = Duration::from_millis(20);

/// Every how many ticks the metronome reads the watched processes' run-queue waits.
const SAMPLE_EVERY_TICKS: usize = 5;

/// One metronome tick: when it was due, and how much later than that it ran.
#[derive(Debug, Clone, Copy)]
struct Tick {
    due: Duration,
    late: Duration,
}

/// The run-queue waits of the watched processes at one moment: per watched pid, each of
/// its threads' (and its descendants' threads') total wait so far, in ns.
#[derive(Debug, Clone)]
struct WaitSample {
    at: Duration,
    waits: HashMap<u32, HashMap<u32, u64>>,
}

/// What scheduling took from the test and the processes under test in a window of the
/// timeline, from two measurements:
/// - the metronome, a thread of the test's own process that sleeps [`METRONOME_PERIOD`] and
///   records how late it woke (a sleeper's wake-up delays: the test's probes, the agent's
///   answers, the worker's heartbeats wake like it);
/// - the kernel's run-queue accounting (`/proc/<pid>/task/<tid>/schedstat`, the time a
///   runnable thread waited for a CPU) of each process the scenario started, and of its
///   children: the most-delayed thread of each (a CPU-bound thread, such as a model's
///   warm-up, waits much longer than a sleeper on a busy machine).
///
/// On an idle machine both are a few ms per second; beside a build, hundreds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Starvation {
    /// The lateness of the metronome's ticks due in the window, added up.
    pub wakeups: Duration,
    /// The latest single tick: the longest stall of the test itself.
    pub worst_wakeup: Duration,
    /// How many ticks were due in the window.
    pub ticks: usize,
    /// The run-queue wait of each watched process's most-delayed thread over the window,
    /// added up over the processes.
    pub processes: Duration,
}

impl Starvation {
    /// What an upper bound adds: the test's wake-up delays and the processes' waits, which
    /// delay a detection one after the other (the worker reports late, the agent answers
    /// late, the probe runs late).
    pub fn total(&self) -> Duration {
        self.wakeups + self.processes
    }
}

impl fmt::Display for Starvation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:.3}s starvation: test wake-ups {:.3}s over {} ticks (worst {:.1} ms), \
             processes' run-queue waits {:.3}s",
            self.total().as_secs_f64(),
            self.wakeups.as_secs_f64(),
            self.ticks,
            self.worst_wakeup.as_secs_f64() * 1e3,
            self.processes.as_secs_f64()
        )
    }
}

/// What the metronome records, shared with its thread.
#[derive(Debug, Default)]
struct Measured {
    ticks: Vec<Tick>,
    /// Processes whose run-queue waits are sampled.
    watched: Vec<u32>,
    samples: Vec<WaitSample>,
}

/// A thread-safe, append-only record of a scenario.
#[derive(Debug)]
pub struct Timeline {
    start: Instant,
    entries: Mutex<Vec<Entry>>,
    /// The metronome's measurements; its thread ends when the timeline is dropped.
    measured: Arc<Mutex<Measured>>,
}

impl Default for Timeline {
    fn default() -> Self {
        Self::new()
    }
}

impl Timeline {
    /// A timeline starting now, its metronome running.
    pub fn new() -> Self {
        let start = Instant::now();
        let measured = Arc::new(Mutex::new(Measured::default()));
        let weak = Arc::downgrade(&measured);
        std::thread::Builder::new()
            .name("e2e-metronome".into())
            .spawn(move || metronome(start, &weak))
            .expect("a thread for the timeline's metronome");
        Self {
            start,
            entries: Mutex::new(Vec::new()),
            measured,
        }
    }

    /// Samples the run-queue waits of process `pid` and its descendants from now on, for
    /// [`Timeline::starvation`].
    pub fn watch_process(&self, pid: u32) {
        lock(&self.measured).watched.push(pid);
    }

    /// What scheduling took from the test between `from` and `to` (timeline times): the
    /// metronome's ticks due in that window. An upper bound on a detection adds its
    /// `total`, so a machine busy with other work widens the bound by what it measurably
    /// cost, never by a guess; lower bounds add nothing.
    pub fn starvation(&self, from: Duration, to: Duration) -> Starvation {
        let measured = lock(&self.measured);
        let mut s = measured
            .ticks
            .iter()
            .filter(|t| t.due >= from && t.due <= to)
            .fold(Starvation::default(), |s, t| Starvation {
                wakeups: s.wakeups + t.late,
                worst_wakeup: s.worst_wakeup.max(t.late),
                ticks: s.ticks + 1,
                ..s
            });
        // The samples around the window (the last at or before `from`, the first at or
        // after `to`): a wait counted a little beyond the window errs on the safe side.
        let samples = &measured.samples;
        let first = samples
            .iter()
            .rev()
            .find(|x| x.at <= from)
            .or(samples.first());
        let last = samples.iter().find(|x| x.at >= to).or(samples.last());
        if let (Some(a), Some(b)) = (first, last) {
            s.processes = b
                .waits
                .iter()
                .map(|(pid, threads)| {
                    let before = a.waits.get(pid);
                    let worst_ns = threads
                        .iter()
                        .map(|(tid, ns)| {
                            ns.saturating_sub(before.and_then(|t| t.get(tid)).copied().unwrap_or(0))
                        })
                        .max()
                        .unwrap_or(0);
                    Duration::from_nanos(worst_ns)
                })
                .sum();
        }
        s
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
        let mut entries = lock(&self.entries);
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere must not hide the measurements that explain it.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Sleeps [`METRONOME_PERIOD`] at a time and records how late each wake-up was, and every
/// [`SAMPLE_EVERY_TICKS`] ticks the watched processes' run-queue waits, until the timeline
/// that owns `measured` is gone. After a late tick the next one is due a period after the
/// wake-up (no burst of catching up), so a stall counts once, at its length.
fn metronome(start: Instant, measured: &Weak<Mutex<Measured>>) {
    let mut due = Instant::now() + METRONOME_PERIOD;
    for n in 1usize.. {
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        let woke = Instant::now();
        let Some(measured) = measured.upgrade() else {
            return;
        };
        lock(&measured).ticks.push(Tick {
            due: due.saturating_duration_since(start),
            late: woke.saturating_duration_since(due),
        });
        if n % SAMPLE_EVERY_TICKS == 0 {
            let watched = lock(&measured).watched.clone();
            if !watched.is_empty() {
                // Read outside the lock: /proc reads take time.
                let waits = watched
                    .iter()
                    .map(|&pid| (pid, run_queue_waits(pid)))
                    .collect();
                let at = Instant::now().saturating_duration_since(start);
                lock(&measured).samples.push(WaitSample { at, waits });
            }
        }
        due = woke + METRONOME_PERIOD;
    }
}

/// The run-queue wait so far (ns, the second field of `schedstat`) of every thread of `pid`
/// and of its descendants (a wrapper's child is the process that matters); empty once the
/// process is gone.
fn run_queue_waits(pid: u32) -> HashMap<u32, u64> {
    let mut waits = HashMap::new();
    let mut pending = vec![pid];
    while let Some(pid) = pending.pop() {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let dir = task.path();
            let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else {
                continue;
            };
            if let Some(wait) = std::fs::read_to_string(dir.join("schedstat"))
                .ok()
                .and_then(|s| s.split_whitespace().nth(1)?.parse().ok())
            {
                waits.insert(tid, wait);
            }
            if let Ok(children) = std::fs::read_to_string(dir.join("children")) {
                pending.extend(
                    children
                        .split_whitespace()
                        .filter_map(|c| c.parse::<u32>().ok()),
                );
            }
        }
    }
    waits
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

    #[test]
    fn the_metronome_measures_the_window_it_is_asked_about() {
        let t = Timeline::new();
        t.watch_process(std::process::id());
        let idle = crate::wait::eventually("ten ticks", Duration::from_secs(5), || {
            let s = t.starvation(Duration::ZERO, t.now());
            (s.ticks >= 10).then_some(s)
        });
        // Ten sleeps of 20 ms on a machine that is not stalled: late by far less than a
        // period each (a generous ceiling: this test may share the machine with builds).
        assert!(idle.wakeups < METRONOME_PERIOD * 10, "{idle}");
        assert!(idle.worst_wakeup <= idle.wakeups);
        assert!(
            !run_queue_waits(std::process::id()).is_empty(),
            "this process's threads have schedstat"
        );
        let later = t.now();
        assert_eq!(
            t.starvation(
                later + Duration::from_secs(60),
                later + Duration::from_secs(61)
            ),
            Starvation::default(),
            "no tick is due in the future"
        );
    }
}

//! One process as /proc shows it over time, for protocol workers and upstreams alike
//! (SPEC §7, §8): which pid is watched (or why /proc checks are off), its latest samples,
//! and the runs of `T` and `D` samples and the "gone" fact that the verdict rules read.
//!
//! One set of rules, in [`ProcTrack::apply`]:
//! - a pid is gone once a sample says it does not exist, is a zombie, or has another start
//!   time than the first sample of it (the pid was reused);
//! - a run of `T` (or `D`) samples starts at its first sample and continues while no newer
//!   evidence that the process ran (`ran_at`: a worker's heartbeat, an upstream's answered
//!   HTTP or gRPC probe) came in between two samples;
//! - an unreadable sample is no evidence either way;
//! - a process found by its container (SPEC §11, [`FoundBy::Cgroup`]) is judged with every
//!   other process of that container (cgroup): a shell wrapper (`sh -c "ray start --block"`)
//!   must not hide a stopped or `D` child. Each other process keeps its own runs of `T` and
//!   `D` samples (unbroken while it keeps its pid and start time); evidence that the
//!   watched process ran says nothing of the others, so it breaks only the watched one's;
//! - a sample older than the bound the verdict gives ([`ProcTrack::runs`]) is no evidence:
//!   a sampler that is stuck or late cannot keep a verdict failing on what it saw long ago.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::proc::{ProcSample, SampleError};

/// How the watched process was found, for `/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FoundBy {
    /// A protocol worker's socket peer (SO_PEERCRED).
    PeerCred,
    /// It holds the listening socket of an upstream's probe port.
    Socket,
    /// The only container (cgroup) whose processes match the socket's uid and the recorded
    /// command line; the oldest match in it.
    Cgroup,
}

impl FoundBy {
    /// The word `/status` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PeerCred => "peercred",
            Self::Socket => "socket",
            Self::Cgroup => "cgroup",
        }
    }
}

/// The process being watched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watched {
    /// Its pid in the agent's PID namespace.
    pub pid: u32,
    /// Its start time (clock ticks after boot): from discovery, or from the first sample.
    pub start_time: Option<u64>,
    /// How it was found.
    pub found_by: FoundBy,
}

/// Whether a process exists, as far as /proc tells (SPEC §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PidStatus {
    /// /proc is off for it, or no process is known.
    Unknown,
    /// It exists (not `Z`/`X`, same start time).
    Exists,
    /// It exited or its pid was reused.
    Gone,
}

/// What /proc has shown of one process.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcTrack {
    /// The process watched, or why /proc checks are off (shown in `/status`).
    pub watched: Result<Watched, String>,
    /// The latest sample of it.
    pub latest: Option<ProcSample>,
    /// The sample before it (CPU-time deltas).
    pub previous: Option<ProcSample>,
    /// The process has exited (or its pid now belongs to another process).
    pub gone: bool,
    /// First sample of the current unbroken run of `T`/`t` samples.
    pub stopped_since: Option<Instant>,
    /// First sample of the current unbroken run of `D` samples.
    pub d_since: Option<Instant>,
    /// The last sampling error other than "gone".
    pub error: Option<String>,
    /// The other processes of its container, by pid, when it was found by its container.
    pub others: BTreeMap<u32, OtherProcess>,
}

/// Another process of a watched container (SPEC §11), as its latest sample showed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtherProcess {
    /// Its start time: a pid with another one is another process.
    pub start_time: u64,
    /// Its latest state letter.
    pub state: char,
    /// When its latest sample was taken.
    pub taken_at: Instant,
    /// First sample of its current unbroken run of `T`/`t` samples.
    pub stopped_since: Option<Instant>,
    /// First sample of its current unbroken run of `D` samples.
    pub d_since: Option<Instant>,
}

impl ProcTrack {
    /// Not watching, because of `why`.
    pub fn off(why: impl Into<String>) -> Self {
        Self::with(Err(why.into()))
    }

    /// A protocol worker's process by its SO_PEERCRED pid; 0 (another PID namespace)
    /// turns /proc off.
    pub fn of_peer(pid: u32) -> Self {
        if pid == 0 {
            return Self::off("peer is in another PID namespace (SO_PEERCRED pid 0)");
        }
        Self::with(Ok(Watched {
            pid,
            start_time: None,
            found_by: FoundBy::PeerCred,
        }))
    }

    fn with(watched: Result<Watched, String>) -> Self {
        Self {
            watched,
            latest: None,
            previous: None,
            gone: false,
            stopped_since: None,
            d_since: None,
            error: None,
            others: BTreeMap::new(),
        }
    }

    /// Whether /proc checks are on.
    pub fn is_on(&self) -> bool {
        self.watched.is_ok()
    }

    /// The watched pid, whether or not it is gone.
    pub fn pid(&self) -> Option<u32> {
        self.watched.as_ref().ok().map(|w| w.pid)
    }

    /// The pid to sample next: watched and not known gone.
    pub fn sample_target(&self) -> Option<u32> {
        self.pid().filter(|_| !self.gone)
    }

    /// Whether a search for the process is due: none found yet, or the found one is gone.
    /// While the pid is unchanged, the sample's start-time check is all it costs.
    pub fn needs_discovery(&self) -> bool {
        self.watched.is_err() || self.gone
    }

    /// The outcome of a search. A new process starts a fresh track; a process seen before
    /// stays the one judged (gone) until another is found.
    pub fn discovered(&mut self, outcome: Result<Watched, String>) {
        match outcome {
            Ok(w) if self.watched.as_ref().ok() == Some(&w) && !self.gone => {}
            Ok(w) => *self = Self::with(Ok(w)),
            Err(why) if self.watched.is_err() => self.watched = Err(why),
            Err(_) => {}
        }
    }

    /// Whether the process exists, per SPEC §7.
    pub fn pid_status(&self) -> PidStatus {
        match &self.watched {
            Err(_) => PidStatus::Unknown,
            Ok(_) if self.gone => PidStatus::Gone,
            Ok(_) => PidStatus::Exists,
        }
    }

    /// Whether the latest sample is newer than `ran_at`, the newest evidence that the
    /// process ran: only then does a `T` or `D` seen in it count (SPEC §7).
    pub fn latest_counts(&self, ran_at: Option<Instant>) -> bool {
        self.latest
            .as_ref()
            .is_some_and(|s| ran_at.is_none_or(|r| s.taken_at >= r))
    }

    /// The share of one core the process used between its two latest samples; `None`
    /// before two samples, or once it is gone.
    pub fn cpu_share(&self) -> Option<f64> {
        let (latest, previous) = (self.latest.as_ref()?, self.previous.as_ref()?);
        let wall = latest
            .taken_at
            .saturating_duration_since(previous.taken_at)
            .as_secs_f64();
        (!self.gone && wall > 0.0).then(|| (latest.cpu_seconds - previous.cpu_seconds) / wall)
    }

    /// Records a sample of the watched pid; `ran_at` is the newest evidence that the
    /// process ran (see the module's rules).
    pub fn apply(&mut self, result: Result<ProcSample, SampleError>, ran_at: Option<Instant>) {
        let Ok(watched) = self.watched.as_mut() else {
            return;
        };
        let sample = match result {
            Ok(sample) => sample,
            Err(SampleError::Gone(_)) => {
                self.mark_gone();
                return;
            }
            Err(e @ SampleError::Unreadable { .. }) => {
                self.error = Some(e.to_string());
                return;
            }
        };
        self.error = None;
        let start = *watched.start_time.get_or_insert(sample.start_time);
        if sample.start_time != start {
            // Another process under the same pid: nothing of it is ours.
            self.mark_gone();
            return;
        }
        if sample.is_dead() {
            self.mark_gone();
        }
        let unbroken = self.latest_counts(ran_at);
        let run = |since: Option<Instant>, holds: bool| match since {
            Some(since) if holds && unbroken => Some(since),
            _ if holds => Some(sample.taken_at),
            _ => None,
        };
        self.stopped_since = run(self.stopped_since, sample.is_stopped());
        self.d_since = run(self.d_since, sample.is_uninterruptible());
        self.previous = self.latest.replace(sample);
    }

    /// Whether the other processes of its container are watched too.
    pub fn watches_container(&self) -> bool {
        self.watched
            .as_ref()
            .is_ok_and(|w| w.found_by == FoundBy::Cgroup)
            && !self.gone
    }

    /// Records one round's samples of the container's other processes (every one found
    /// this round; one not listed has exited).
    pub fn apply_others(&mut self, samples: Vec<(u32, ProcSample)>) {
        let before = std::mem::take(&mut self.others);
        for (pid, sample) in samples {
            if sample.is_dead() {
                continue;
            }
            let same = before
                .get(&pid)
                .filter(|p| p.start_time == sample.start_time);
            let run = |since: Option<Instant>, holds: bool| {
                holds.then(|| since.unwrap_or(sample.taken_at))
            };
            self.others.insert(
                pid,
                OtherProcess {
                    start_time: sample.start_time,
                    state: sample.state,
                    taken_at: sample.taken_at,
                    stopped_since: run(same.and_then(|p| p.stopped_since), sample.is_stopped()),
                    d_since: run(same.and_then(|p| p.d_since), sample.is_uninterruptible()),
                },
            );
        }
    }

    /// The earliest start of a run of `T` samples and of `D` samples that still count
    /// (SPEC §7, §11): the watched process's while it exists and its latest sample counts
    /// ([`ProcTrack::latest_counts`]), and each other process's of its container; a run
    /// whose latest sample is older than `max_age` at `now` does not count.
    pub fn runs(
        &self,
        ran_at: Option<Instant>,
        now: Instant,
        max_age: Duration,
    ) -> (Option<Instant>, Option<Instant>) {
        let fresh = |at: Instant| now.saturating_duration_since(at) <= max_age;
        let own = self.pid_status() == PidStatus::Exists
            && self.latest_counts(ran_at)
            && self.latest.as_ref().is_some_and(|s| fresh(s.taken_at));
        let others = self.others.values().filter(|p| fresh(p.taken_at));
        let earliest = |own_run: Option<Instant>, pick: fn(&OtherProcess) -> Option<Instant>| {
            own_run
                .filter(|_| own)
                .into_iter()
                .chain(others.clone().filter_map(pick))
                .min()
        };
        (
            earliest(self.stopped_since, |p| p.stopped_since),
            earliest(self.d_since, |p| p.d_since),
        )
    }

    fn mark_gone(&mut self) {
        self.gone = true;
        self.stopped_since = None;
        self.d_since = None;
        self.others.clear();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

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

    fn found(pid: u32, start_time: u64) -> Watched {
        Watched {
            pid,
            start_time: Some(start_time),
            found_by: FoundBy::Socket,
        }
    }

    #[test]
    fn runs_of_t_and_d_and_newer_evidence() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut p = ProcTrack::of_peer(42);
        assert_eq!(p.pid_status(), PidStatus::Exists);
        p.apply(Ok(sample(at(100), 'T', 9)), Some(t0));
        p.apply(Ok(sample(at(200), 't', 9)), Some(t0));
        assert_eq!(p.stopped_since, Some(at(100)));
        // Evidence that it ran after the last sample breaks the run.
        p.apply(Ok(sample(at(300), 'T', 9)), Some(at(250)));
        assert_eq!(p.stopped_since, Some(at(300)));
        assert!(p.latest_counts(Some(at(250))) && !p.latest_counts(Some(at(301))));
        p.apply(Ok(sample(at(400), 'S', 9)), None);
        assert_eq!(p.stopped_since, None, "SIGCONT clears at once");
        p.apply(Ok(sample(at(500), 'D', 9)), None);
        p.apply(Ok(sample(at(600), 'D', 9)), None);
        assert_eq!(p.d_since, Some(at(500)));
        p.apply(
            Err(SampleError::Unreadable {
                pid: 42,
                message: "EACCES".into(),
            }),
            None,
        );
        assert_eq!(p.d_since, Some(at(500)), "no evidence either way");
        assert!(p.error.is_some());
        p.apply(Ok(sample(at(700), 'D', 9)), None);
        assert_eq!((p.d_since, p.error.as_deref()), (Some(at(500)), None));
    }

    #[test]
    fn gone_by_exit_zombie_or_reuse() {
        let t0 = Instant::now();
        let mut p = ProcTrack::of_peer(42);
        p.apply(Ok(sample(t0, 'T', 9)), None);
        p.apply(Ok(sample(t0, 'S', 10)), None);
        assert_eq!(p.pid_status(), PidStatus::Gone, "another start time");
        assert_eq!((p.stopped_since, p.sample_target()), (None, None));
        assert_eq!(
            p.latest.map(|s| s.state),
            Some('T'),
            "the other process is not ours"
        );
        let mut p = ProcTrack::of_peer(42);
        p.apply(Ok(sample(t0, 'Z', 9)), None);
        assert_eq!(p.pid_status(), PidStatus::Gone, "a zombie");
        let mut p = ProcTrack::of_peer(42);
        p.apply(Err(SampleError::Gone(42)), None);
        assert_eq!(p.pid_status(), PidStatus::Gone);
        let p = ProcTrack::of_peer(0);
        assert_eq!(p.pid_status(), PidStatus::Unknown);
        assert_eq!(p.sample_target(), None);
    }

    #[test]
    fn discovery_lifecycle() {
        let t0 = Instant::now();
        let mut p = ProcTrack::off("nothing listens on port [8000] yet");
        assert!(p.needs_discovery());
        p.discovered(Ok(found(42, 7)));
        assert!(!p.needs_discovery());
        p.apply(Ok(sample(t0, 'T', 7)), None);
        p.discovered(Ok(found(42, 7)));
        assert_eq!(
            p.stopped_since,
            Some(t0),
            "the same process keeps its track"
        );
        p.apply(Ok(sample(t0, 'S', 8)), None);
        assert!(
            p.gone && p.needs_discovery(),
            "pid reused: looked for again"
        );
        p.discovered(Err("nothing listens on port [8000] yet".into()));
        assert!(
            p.gone && p.is_on(),
            "still judged gone until another is found"
        );
        p.discovered(Ok(found(43, 9)));
        assert!(!p.gone && p.latest.is_none());
        p.apply(Err(SampleError::Gone(43)), None);
        assert_eq!(p.pid_status(), PidStatus::Gone);
    }

    const OLD: Duration = Duration::from_secs(3600);

    /// SPEC §11: the shell wrapper found by its container sleeps while its child (Ray)
    /// is stopped or in `D`: the container's runs are the child's.
    #[test]
    fn a_sleeping_shell_does_not_hide_a_stopped_or_d_state_child() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut p = ProcTrack::off("not yet");
        p.discovered(Ok(Watched {
            found_by: FoundBy::Cgroup,
            ..found(10, 5)
        }));
        assert!(p.watches_container());
        for (ms, child, grandchild) in [(100, 'T', 'D'), (200, 'T', 'D'), (300, 'T', 'S')] {
            p.apply(Ok(sample(at(ms), 'S', 5)), None);
            p.apply_others(vec![
                (11, sample(at(ms), child, 6)),
                (12, sample(at(ms), grandchild, 7)),
            ]);
        }
        assert_eq!(p.runs(None, at(300), OLD), (Some(at(100)), None));
        // Evidence that the shell ran says nothing of its child.
        assert_eq!(p.runs(Some(at(301)), at(300), OLD).0, Some(at(100)));
        // The child replaced under the same pid (another start time): a new run.
        p.apply_others(vec![(11, sample(at(400), 'T', 9))]);
        assert_eq!(p.runs(None, at(400), OLD).0, Some(at(400)));
        // Exited children leave with the round that no longer lists them.
        p.apply_others(vec![]);
        assert_eq!(p.runs(None, at(500), OLD), (None, None));
        // A process found by its socket is judged alone.
        let mut q = ProcTrack::off("not yet");
        q.discovered(Ok(found(10, 5)));
        assert!(!q.watches_container());
    }

    /// SPEC §7 (issue 27): a sample older than the bound is no evidence, the watched
    /// process's and the others' alike.
    #[test]
    fn stale_samples_do_not_count() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let max_age = Duration::from_secs(5);
        let mut p = ProcTrack::off("not yet");
        p.discovered(Ok(Watched {
            found_by: FoundBy::Cgroup,
            ..found(10, 5)
        }));
        p.apply(Ok(sample(at(0), 'D', 5)), None);
        p.apply_others(vec![(11, sample(at(0), 'T', 6))]);
        assert_eq!(p.runs(None, at(5), max_age), (Some(at(0)), Some(at(0))));
        assert_eq!(
            p.runs(None, at(6), max_age),
            (None, None),
            "the sampler stopped at 0"
        );
    }
}

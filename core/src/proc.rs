//! What a /proc reading yields, as the state and the verdicts read it: one process's
//! [`ProcSample`] (or why none: [`SampleError`]), what the sampler adds for an upstream
//! ([`Extras`]: its unreaped [`Zombie`] children and the [`BytesRead`] while it loads), and why
//! an upstream's process could not be told ([`NotFound`]). The agent's `sources::proc`
//! reads them; nothing here touches /proc.

use std::time::Instant;

/// One reading of `/proc/<pid>/stat`.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcSample {
    /// When it was taken (monotonic).
    pub taken_at: Instant,
    /// The state letter (`R`, `S`, `D`, `T`, `t`, `Z`, ...).
    pub state: char,
    /// User + system CPU time so far.
    pub cpu_seconds: f64,
    /// Resident set size.
    pub rss_bytes: u64,
    /// Thread count.
    pub threads: u64,
    /// Start time in clock ticks after boot: tells a reused pid from the original.
    pub start_time: u64,
}

impl ProcSample {
    /// Stopped by a signal or a tracer (`T`, `t`).
    pub fn is_stopped(&self) -> bool {
        matches!(self.state, 'T' | 't')
    }

    /// In uninterruptible sleep (`D`).
    pub fn is_uninterruptible(&self) -> bool {
        self.state == 'D'
    }

    /// A zombie or dead entry: the process has exited.
    pub fn is_dead(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Why a pid could not be sampled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SampleError {
    /// No such process (any more).
    #[error("process {0} does not exist")]
    Gone(u32),
    /// /proc could not be read for another reason (permissions, format).
    #[error("cannot read /proc/{pid}/stat: {message}")]
    Unreadable {
        /// The pid.
        pid: u32,
        /// What failed.
        message: String,
    },
}

/// What the sampler adds to an upstream's sample (SPEC §12).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extras {
    /// When the scan ran.
    pub taken_at: Instant,
    /// Its children in state `Z`, or why the scan failed.
    pub zombies: Result<Vec<Zombie>, String>,
    /// What it has read so far, while it loads (`None` once its startup probe passed).
    pub read: Option<Result<BytesRead, String>>,
}

/// A child of a watched process in state `Z`: it exited and its parent has not reaped it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Zombie {
    /// Its pid.
    pub pid: u32,
    /// Its start time (clock ticks after boot), which tells a reused pid apart.
    pub start_time: u64,
    /// Its name (`comm`, at most 15 bytes: Triton's stub is `triton_python_b`).
    pub comm: String,
}

/// What `/proc/<pid>/io` says the process has read so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BytesRead {
    /// `rchar`: bytes its `read(2)`-family calls returned (files, page cache and sockets:
    /// a download from object storage counts).
    pub rchar: u64,
    /// `read_bytes`: bytes fetched from storage for it (page faults of an `mmap`ed
    /// safetensors file count here, not in `rchar`).
    pub storage: u64,
}

/// Why the process could not be told; `/status` shows it and /proc checks stay off.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotFound {
    /// Nothing listens on any of the ports (yet).
    #[error("nothing listens on port {0:?} yet")]
    NoListener(Vec<u16>),
    /// The socket's holder is not readable and no single container matches.
    #[error("port {port} listens (uid {uid}) but its process is hidden (fds not readable) and {cgroups} candidate containers match its uid{}", if *.by_cmdline { " and command line" } else { "; no command line recorded to tell them apart" })]
    Ambiguous {
        /// The listening port.
        port: u16,
        /// The uid that owns the listening socket.
        uid: u32,
        /// How many containers (cgroups) were left.
        cgroups: usize,
        /// Whether the recorded command line narrowed them too.
        by_cmdline: bool,
    },
    /// A container without probes: its command line did not pick exactly one container.
    #[error("{cgroups} containers run a process matching the command line {cmdline:?}")]
    ByCmdline {
        /// The recorded command line.
        cmdline: Vec<String>,
        /// How many containers matched (0 or more than 1).
        cgroups: usize,
    },
    /// Neither a port nor a command line to look for.
    #[error("no probe port and no recorded command line to find the process by")]
    NothingToLookFor,
    /// /proc itself could not be read.
    #[error("cannot read {0}")]
    Unreadable(String),
}

//! Reading one process from /proc: its state letter, CPU time, memory, threads and start
//! time, behind [`ProcSource`] so the registry and verdict tests feed fixtures instead.
//!
//! This module only reads; [`crate::sources::proc::watch`] (the one sampler) decides when,
//! [`crate::sources::proc::discover`] which process an upstream is, and
//! [`vitals_core::state::proc_track`] what a sample means.

pub mod children;
pub mod discover;
pub mod watch;

use std::time::Instant;

use vitals_core::proc::{ProcSample, SampleError};

/// Where samples come from: the real /proc, or fixtures in tests.
pub trait ProcSource: Send + Sync + 'static {
    /// Samples one pid now.
    fn sample(&self, pid: u32) -> Result<ProcSample, SampleError>;
}

/// The real /proc, through the procfs crate.
#[derive(Debug, Clone, Copy)]
pub struct LiveProc {
    ticks_per_second: u64,
    page_size: u64,
}

impl Default for LiveProc {
    fn default() -> Self {
        Self {
            ticks_per_second: procfs::ticks_per_second().max(1),
            page_size: procfs::page_size(),
        }
    }
}

impl ProcSource for LiveProc {
    fn sample(&self, pid: u32) -> Result<ProcSample, SampleError> {
        use procfs::FromRead as _;
        // ENOENT at open, or ESRCH when the process exits between open and read.
        let io_error = |e: std::io::Error| {
            if e.kind() == std::io::ErrorKind::NotFound
                || e.raw_os_error() == Some(nix::errno::Errno::ESRCH as i32)
            {
                SampleError::Gone(pid)
            } else {
                SampleError::Unreadable {
                    pid,
                    message: e.to_string(),
                }
            }
        };
        let parse_error = |e: procfs::ProcError| match e {
            procfs::ProcError::NotFound(_) => SampleError::Gone(pid),
            procfs::ProcError::Io(io, _) => io_error(io),
            other => SampleError::Unreadable {
                pid,
                message: other.to_string(),
            },
        };
        // One open, read and close of the stat file: `Process::new` would first open the
        // pid's folder and stat it for its owner, which a sample never needs (it runs for
        // every watched pid every `--proc-interval`).
        let file = std::fs::File::open(format!("/proc/{pid}/stat")).map_err(io_error)?;
        let stat = procfs::process::Stat::from_read(file).map_err(parse_error)?;
        Ok(ProcSample {
            taken_at: Instant::now(),
            state: stat.state,
            cpu_seconds: (stat.utime + stat.stime) as f64 / self.ticks_per_second as f64,
            rss_bytes: stat.rss.saturating_mul(self.page_size),
            threads: u64::try_from(stat.num_threads).unwrap_or(0),
            start_time: stat.starttime,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_this_process() {
        let s = LiveProc::default()
            .sample(std::process::id())
            .expect("own pid is readable");
        assert!(matches!(s.state, 'R' | 'S'), "state {}", s.state);
        assert!(s.threads >= 1);
        assert!(s.rss_bytes > 0);
        assert!(s.start_time > 0);
        assert!(!s.is_dead() && !s.is_stopped() && !s.is_uninterruptible());
    }

    #[test]
    fn a_missing_pid_is_gone() {
        // Above the kernel's pid_max limit (4194304): never a live process.
        assert_eq!(
            LiveProc::default().sample(4_194_305 + 7),
            Err(SampleError::Gone(4_194_312))
        );
    }
}

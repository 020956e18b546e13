//! What the benches share (`mod common;` in each): the workspace, their environment knobs, the measured process (killed when the bench ends),
//! its CPU and memory from /proc, and where results go.
// Each bench uses only part of this module.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// `name` from the environment as a number, `default` when unset or not one.
pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The workspace root.
pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The measured process, killed when the bench ends, however it ends.
pub struct Measured(pub Child);

impl Drop for Measured {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `bin run` on `listen` and `socket` with JSON logs and `extra` flags, its output
/// discarded.
pub fn start_agent(bin: &Path, listen: SocketAddr, socket: &Path, extra: &[String]) -> Measured {
    let child = Command::new(bin)
        .args(["run", "--listen", &listen.to_string(), "--socket"])
        .arg(socket)
        .args(["--log-format", "json"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Measured(child)
}

/// A `kB` line of `/proc/PID/status` (`VmRSS:`, `VmHWM:`), in KiB.
pub fn status_kib(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{key} in /proc/{pid}/status"))
}

/// Resident memory of `pid`, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// User + system CPU seconds of `pid` so far.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = procfs::process::Process::new(i32::try_from(pid).unwrap())
        .unwrap()
        .stat()
        .unwrap();
    (stat.utime + stat.stime) as f64 / procfs::ticks_per_second() as f64
}

/// CPU time of `pid`'s live threads so far, in nanoseconds, from each thread's
/// `schedstat` (the scheduler's own count: exact, where `cpu_seconds` moves in 10 ms
/// ticks, a third of the whole figure over a minute of an idle agent). A thread that
/// exits takes its count with it; the agent's threads (the runtime and its one blocking
/// thread, kept busy by the /proc sampler every second) live as long as it does.
pub fn cpu_ns(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// Writes `results` to `bench-results/<file>` (pretty JSON).
pub fn write_results(file: &str, results: &serde_json::Value) {
    let out = workspace().join("bench-results");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(
        out.join(file),
        serde_json::to_string_pretty(results).unwrap(),
    )
    .unwrap();
}

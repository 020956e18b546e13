//! The cgroup v1 freezer, to put a worker in uninterruptible sleep (`D` in /proc) the way a
//! stuck driver call or NFS mount would, and to let it go again.
//!
//! Only cgroup v1 shows frozen tasks as `D`; cgroup v2's `cgroup.freeze` leaves them in `S`,
//! so the D-state scenario cannot run (and fails, unless allowed to skip) where v1's freezer
//! is missing.

use std::fs;
use std::path::PathBuf;

use nix::unistd::Pid;

const ROOT: &str = "/sys/fs/cgroup/freezer";

/// A freezer cgroup of our own; thawed, emptied and removed on drop.
#[derive(Debug)]
pub struct Freezer {
    dir: PathBuf,
    members: Vec<Pid>,
}

impl Freezer {
    /// Creates `/sys/fs/cgroup/freezer/<name>`, or says why it cannot.
    pub fn create(name: &str) -> Result<Freezer, String> {
        let root = PathBuf::from(ROOT);
        if !root.join("freezer.state").exists() && !root.join("cgroup.procs").exists() {
            return Err(format!("no cgroup v1 freezer at {ROOT}"));
        }
        let dir = root.join(name);
        fs::create_dir(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        Ok(Freezer {
            dir,
            members: Vec::new(),
        })
    }

    /// Moves process `pid` (all its threads) into the cgroup.
    pub fn add(&mut self, pid: Pid) -> Result<(), String> {
        fs::write(self.dir.join("cgroup.procs"), pid.to_string())
            .map_err(|e| format!("cannot move {pid} into {}: {e}", self.dir.display()))?;
        self.members.push(pid);
        Ok(())
    }

    /// `FROZEN` or `THAWED`.
    fn set(&self, state: &str) -> Result<(), String> {
        fs::write(self.dir.join("freezer.state"), state)
            .map_err(|e| format!("cannot write {state} to {}: {e}", self.dir.display()))
    }

    /// Freezes every member.
    pub fn freeze(&self) -> Result<(), String> {
        self.set("FROZEN")
    }

    /// Thaws every member.
    pub fn thaw(&self) -> Result<(), String> {
        self.set("THAWED")
    }
}

impl Drop for Freezer {
    fn drop(&mut self) {
        let _ = self.thaw();
        // Hand the processes back to the root cgroup so the folder can go.
        if let Ok(procs) = fs::read_to_string(self.dir.join("cgroup.procs")) {
            for pid in procs.split_whitespace() {
                let _ = fs::write(PathBuf::from(ROOT).join("cgroup.procs"), pid);
            }
        }
        let _ = fs::remove_dir(&self.dir);
    }
}

//! Containers as cgroups: each "container" of a scenario gets a cgroup v2 folder of its own,
//! the way the kubelet gives each container one, so that the agent's cgroup-based discovery
//! of an upstream's process (SPEC §8) sees a pod's shape. Needs root and a cgroup v2
//! hierarchy (`/sys/fs/cgroup` itself, or `/sys/fs/cgroup/unified` on a hybrid host); where
//! either is missing, [`Cgroup::create`] says why and the test fails. [`Container`] is
//! another container's process: started in a cgroup of its own.

use std::fs;
use std::io::Write as _;
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

/// A cgroup v2 folder of our own; emptied (members moved back to the root) and removed on
/// drop.
#[derive(Debug)]
pub struct Cgroup {
    root: PathBuf,
    dir: PathBuf,
}

impl Cgroup {
    /// Creates `<v2 root>/vitals-test-<name>-<our pid>`, or says why it cannot.
    pub fn create(name: &str) -> Result<Cgroup, String> {
        let root = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
            .into_iter()
            .map(PathBuf::from)
            .find(|r| r.join("cgroup.procs").is_file() && !r.join("tasks").exists())
            .ok_or("no cgroup v2 hierarchy at /sys/fs/cgroup or /sys/fs/cgroup/unified")?;
        let dir = root.join(format!("vitals-test-{name}-{}", std::process::id()));
        fs::create_dir(&dir).map_err(|e| {
            format!(
                "cannot create {} (the scenario needs root): {e}",
                dir.display()
            )
        })?;
        Ok(Cgroup { root, dir })
    }

    /// Moves process `pid` (all its threads) into the cgroup; its later children follow.
    pub fn add(&self, pid: u32) -> Result<(), String> {
        fs::write(self.dir.join("cgroup.procs"), pid.to_string())
            .map_err(|e| format!("cannot move {pid} into {}: {e}", self.dir.display()))
    }

    /// The path `/proc/<pid>/cgroup` shows for members (`/vitals-test-...`).
    pub fn path(&self) -> String {
        format!(
            "/{}",
            self.dir
                .strip_prefix(&self.root)
                .expect("the folder is made under the root")
                .display()
        )
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Hand any process left back to the root cgroup so the folder can go.
        if let Ok(procs) = fs::read_to_string(self.dir.join("cgroup.procs")) {
            for pid in procs.split_whitespace() {
                let _ = fs::write(self.root.join("cgroup.procs"), pid);
            }
        }
        let _ = fs::remove_dir(&self.dir);
    }
}

/// A "container": `argv` in a process group and a cgroup of its own (output discarded),
/// its process group killed on drop.
#[derive(Debug)]
pub struct Container {
    name: String,
    child: Child,
    cgroup: Cgroup,
}

impl Container {
    /// Starts `argv` in cgroup `name`; panics saying what the machine lacks (root, cgroup v2)
    /// or why `argv` cannot start.
    pub fn start(name: &str, argv: &[&str]) -> Container {
        let cgroup = Cgroup::create(name)
            .unwrap_or_else(|e| panic!("{name}: this test needs root and cgroup v2: {e}"));
        let child = spawn_in(name, &cgroup, argv);
        Container {
            name: name.to_owned(),
            child,
            cgroup,
        }
    }

    /// The container restarted, as a runtime restarts one: its whole process group killed
    /// and reaped, then `argv` started in the same cgroup.
    pub fn restart(&mut self, argv: &[&str]) {
        self.kill();
        self.child = spawn_in(&self.name, &self.cgroup, argv);
    }

    /// Whether the container's process has exited (reaped if so), as the kubelet's PLEG
    /// relist sees a container that stopped on its own.
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    fn kill(&mut self) {
        let _ = signal::killpg(self.group(), Signal::SIGKILL);
        let _ = self.child.wait();
    }

    /// A model pod's usual neighbours beside its server, started: a root log shipper and an
    /// istio-like proxy (uid 1337, by `setpriv`), each a `sleep` in a container of its own.
    pub fn neighbours() -> [Container; 2] {
        [
            Container::start("logs", &["sleep", "600"]),
            Container::start(
                "istio",
                &[
                    "setpriv",
                    "--reuid",
                    "1337",
                    "--regid",
                    "1337",
                    "--clear-groups",
                    "sleep",
                    "600",
                ],
            ),
        ]
    }

    /// The process's pid (its process group's too).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The children of the container's process (a shell's commands), as
    /// `/proc/<pid>/task/<pid>/children` lists them.
    pub fn children(&self) -> Vec<u32> {
        let pid = self.pid();
        fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    /// Sends `sig` to the container's whole process group.
    pub fn signal(&self, sig: Signal) {
        signal::killpg(self.group(), sig).expect("signal the container");
    }

    fn group(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.pid()).expect("pids fit in i32"))
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        // The whole group, as a runtime stops a container: nothing it started outlives it.
        self.kill();
    }
}

/// `argv` in a process group of its own, output discarded, in `cgroup` from before it
/// runs: a shell holds at a `read` until it has been moved, then execs `argv`, so every
/// child `argv` starts is born in the cgroup (a shell's child forked before a move from
/// outside would be left behind).
fn spawn_in(name: &str, cgroup: &Cgroup, argv: &[&str]) -> Child {
    let mut child = Command::new("sh")
        .args(["-c", "read -r _; exec \"$@\"", "sh"])
        .args(argv)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("{name}: cannot start {argv:?}: {e}"));
    cgroup.add(child.id()).expect("move into its cgroup");
    let mut gate = child.stdin.take().expect("piped");
    gate.write_all(b"\n")
        .unwrap_or_else(|e| panic!("{name}: cannot let {argv:?} start: {e}"));
    child
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_in_its_own_cgroup() {
        let cg =
            Cgroup::create("unit").expect("root and cgroup v2 (CI and the dev machine have both)");
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep");
        cg.add(child.id()).expect("move");
        let shown = fs::read_to_string(format!("/proc/{}/cgroup", child.id())).expect("cgroup");
        assert!(
            shown.lines().any(|l| l == format!("0::{}", cg.path())),
            "{shown}"
        );
        let _ = child.kill();
        let _ = child.wait();
    }
}

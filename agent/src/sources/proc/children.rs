//! What the sampler reads of an upstream's process beyond its `stat` (SPEC §12): its
//! children that exited and were not reaped (state `Z`), and the bytes it has read so far
//! (`/proc/<pid>/io`), for the zombie rule and the load-progress clock.
//!
//! Children are found by one scan of `/proc/<pid>/stat` of every process the agent sees,
//! matching the parent pid (field 4), rather than by `/proc/<pid>/task/<tid>/children`.
//! Both are readable by any user, but `stat` gives the parent, the state letter and the
//! name in one read per process of the pod (a pod has a few dozen), and its parent pid is
//! the parent's thread-group id whichever of the server's threads forked: the `children`
//! files are one per thread (a vLLM or Triton server runs hundreds), each child then needs
//! its own `stat` for its state anyway, and they exist only with `CONFIG_PROC_CHILDREN`.
//!
//! `/proc/<pid>/io` is readable only with ptrace-read access (the same uid as the agent, or
//! privileges it never asks for): for a root or other-uid server it answers EACCES, and the
//! load clock goes by memory and CPU time alone.

use std::collections::BTreeMap;
use std::path::Path;

use vitals_core::proc::{BytesRead, Zombie};

/// The zombie children of each of `parents`, from one scan of `proc_root`; a process that
/// exits during the scan is skipped.
pub fn zombies_of(proc_root: &Path, parents: &[u32]) -> Result<BTreeMap<u32, Vec<Zombie>>, String> {
    let mut found: BTreeMap<u32, Vec<Zombie>> = parents.iter().map(|p| (*p, Vec::new())).collect();
    if parents.is_empty() {
        return Ok(found);
    }
    let all = procfs::process::all_processes_with_root(proc_root)
        .map_err(|e| format!("cannot list {}: {e}", proc_root.display()))?;
    for p in all.filter_map(Result::ok) {
        let Ok(stat) = p.stat() else { continue };
        let (Ok(ppid), Ok(pid)) = (u32::try_from(stat.ppid), u32::try_from(stat.pid)) else {
            continue;
        };
        if stat.state != 'Z' {
            continue;
        }
        if let Some(children) = found.get_mut(&ppid) {
            children.push(Zombie {
                pid,
                start_time: stat.starttime,
                comm: stat.comm,
            });
        }
    }
    Ok(found)
}

/// Reads `/proc/<pid>/io`; an error says why (EACCES for another uid's process).
pub fn bytes_read(proc_root: &Path, pid: u32) -> Result<BytesRead, String> {
    let path = proc_root.join(pid.to_string()).join("io");
    let text = std::fs::read_to_string(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::PermissionDenied => format!(
            "{} is not readable (the server runs as another user; the agent never asks for ptrace access)",
            path.display()
        ),
        _ => format!("cannot read {}: {e}", path.display()),
    })?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .ok_or_else(|| format!("{}: no {name} field", path.display()))
    };
    Ok(BytesRead {
        rchar: field("rchar")?,
        storage: field("read_bytes")?,
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt as _;
    use std::process::Command;
    use std::time::{Duration, Instant};

    use super::*;

    #[test]
    fn an_unreaped_child_is_a_zombie_of_its_parent_until_reaped() {
        let mut child = Command::new("true").spawn().expect("spawn true");
        let pid = child.id();
        let me = std::process::id();
        let root = Path::new("/proc");
        let deadline = Instant::now() + Duration::from_secs(5);
        let zombie = loop {
            let z = zombies_of(root, &[me]).expect("/proc lists");
            if let Some(z) = z[&me].iter().find(|z| z.pid == pid) {
                break z.clone();
            }
            assert!(Instant::now() < deadline, "`true` never became a zombie");
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(zombie.comm, "true");
        assert!(zombie.start_time > 0);
        assert!(child.wait().expect("reap").into_raw() == 0);
        let z = zombies_of(root, &[me]).expect("/proc lists");
        assert!(z[&me].iter().all(|z| z.pid != pid), "reaped: {z:?}");
    }

    #[test]
    fn bytes_read_of_this_process_move_with_a_read() {
        let root = Path::new("/proc");
        let me = std::process::id();
        let before = bytes_read(root, me).expect("own io is readable");
        let _ = std::fs::read("/proc/self/stat").expect("read a file");
        let after = bytes_read(root, me).expect("own io is readable");
        assert!(after.rchar > before.rchar, "{before:?} → {after:?}");
        assert!(bytes_read(root, 4_194_312).is_err(), "no such process");
    }
}

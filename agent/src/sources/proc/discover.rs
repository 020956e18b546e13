//! Finds an upstream's process (SPEC §8): the one listening on its probes' port
//! (/proc/net/tcp{,6} → socket inode → the /proc/<pid>/fd that holds it; the oldest among
//! several holders, which is the server's parent rather than a forked worker), or, when
//! other users' fds are not readable (the agent runs as its own UID), the only cgroup of
//! the pod's processes that neither the agent nor a protocol worker owns.
//!
//! Plain file reads under a `/proc` root given by the caller (a fixture tree in tests); run
//! it on the blocking pool, as /proc reads can stall.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// How the process was found, for `/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// It holds the listening socket.
    Socket,
    /// It is the oldest process of the only other container cgroup.
    Cgroup,
}

/// A found process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Its pid.
    pub pid: u32,
    /// Its start time (clock ticks after boot), to tell a reused pid from it.
    pub start_time: u64,
    /// How it was found.
    pub method: Method,
}

/// Why the process could not be told; `/status` shows it and /proc checks stay off.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotFound {
    /// Nothing listens on any of the ports (yet).
    #[error("nothing listens on port {0:?} yet")]
    NoListener(Vec<u16>),
    /// A socket listens, its holder's fds are unreadable, and the cgroups do not tell.
    #[error("port {port} listens but its process is hidden (fds not readable) and {cgroups} candidate cgroups")]
    Ambiguous {
        /// The listening port.
        port: u16,
        /// How many cgroups were left after removing the agent's and the workers'.
        cgroups: usize,
    },
    /// /proc itself could not be read.
    #[error("cannot read {0}")]
    Unreadable(String),
}

/// Finds the process listening on the first of `ports` that has a listener. `exclude` are
/// the pids whose cgroups are not candidates in the fallback (the agent's own, the protocol
/// workers').
pub fn find(proc_root: &Path, ports: &[u16], exclude: &[u32]) -> Result<Found, NotFound> {
    let Some((port, inodes)) = ports.iter().find_map(|p| {
        let inodes = listening_inodes(proc_root, *p);
        (!inodes.is_empty()).then_some((*p, inodes))
    }) else {
        return Err(NotFound::NoListener(ports.to_vec()));
    };
    let pids = pids(proc_root)?;
    let holders: Vec<u32> = pids
        .iter()
        .copied()
        .filter(|pid| holds_any(proc_root, *pid, &inodes))
        .collect();
    if let Some(found) = oldest(proc_root, &holders) {
        return Ok(Found {
            pid: found.0,
            start_time: found.1,
            method: Method::Socket,
        });
    }
    // Fallback: group the pod's processes by cgroup.
    let mut groups: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for pid in &pids {
        if let Ok(cg) = std::fs::read_to_string(proc_root.join(pid.to_string()).join("cgroup")) {
            groups.entry(cg).or_default().push(*pid);
        }
    }
    let excluded: BTreeSet<&String> = groups
        .iter()
        .filter(|(_, members)| members.iter().any(|p| exclude.contains(p)))
        .map(|(cg, _)| cg)
        .collect();
    let candidates: Vec<&Vec<u32>> = groups
        .iter()
        .filter(|(cg, members)| {
            !excluded.contains(cg) && !members.iter().all(|p| is_pause(proc_root, *p))
        })
        .map(|(_, m)| m)
        .collect();
    match candidates.as_slice() {
        [only] => oldest(proc_root, only)
            .map(|(pid, start_time)| Found {
                pid,
                start_time,
                method: Method::Cgroup,
            })
            .ok_or(NotFound::Ambiguous { port, cgroups: 1 }),
        _ => Err(NotFound::Ambiguous {
            port,
            cgroups: candidates.len(),
        }),
    }
}

/// Inodes of the sockets listening on `port` (IPv4 and IPv6).
fn listening_inodes(proc_root: &Path, port: u16) -> BTreeSet<u64> {
    let mut out = BTreeSet::new();
    for table in ["net/tcp", "net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(proc_root.join(table)) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st ... uid timeout inode
            let (Some(local), Some(state), Some(inode)) = (f.get(1), f.get(3), f.get(9)) else {
                continue;
            };
            let listening = *state == "0A";
            let on_port = local
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
                == Some(port);
            if let (true, true, Ok(inode)) = (listening, on_port, inode.parse::<u64>()) {
                if inode != 0 {
                    out.insert(inode);
                }
            }
        }
    }
    out
}

fn pids(proc_root: &Path) -> Result<Vec<u32>, NotFound> {
    let dir = std::fs::read_dir(proc_root)
        .map_err(|e| NotFound::Unreadable(format!("{}: {e}", proc_root.display())))?;
    Ok(dir
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect())
}

fn holds_any(proc_root: &Path, pid: u32, inodes: &BTreeSet<u64>) -> bool {
    let Ok(fds) = std::fs::read_dir(proc_root.join(pid.to_string()).join("fd")) else {
        return false;
    };
    fds.filter_map(Result::ok).any(|fd| {
        std::fs::read_link(fd.path()).is_ok_and(|target| {
            target
                .to_str()
                .and_then(|t| t.strip_prefix("socket:["))
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|t| t.parse::<u64>().ok())
                .is_some_and(|i| inodes.contains(&i))
        })
    })
}

/// `(pid, start time)` of the oldest of `pids` (ties: the lowest pid).
fn oldest(proc_root: &Path, pids: &[u32]) -> Option<(u32, u64)> {
    pids.iter()
        .filter_map(|p| start_time(proc_root, *p).map(|s| (*p, s)))
        .min_by_key(|(p, s)| (*s, *p))
}

/// Field 22 of /proc/<pid>/stat. The command name (field 2) may hold spaces and `)`, so
/// fields are counted after its last `)`.
pub fn start_time(proc_root: &Path, pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(proc_root.join(pid.to_string()).join("stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// The pod's sandbox (`pause`) has a cgroup of its own and is never the server.
fn is_pause(proc_root: &Path, pid: u32) -> bool {
    std::fs::read_to_string(proc_root.join(pid.to_string()).join("comm"))
        .is_ok_and(|c| c.trim() == "pause")
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    #[test]
    fn finds_this_process_by_its_listener() {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        let found = find(Path::new("/proc"), &[1, port], &[]).expect("found");
        assert_eq!(found.pid, std::process::id());
        assert_eq!(found.method, Method::Socket);
        assert_eq!(
            Some(found.start_time),
            start_time(Path::new("/proc"), found.pid)
        );
        let v6 = TcpListener::bind("[::1]:0");
        if let Ok(v6) = v6 {
            let port = v6.local_addr().expect("addr").port();
            let found = find(Path::new("/proc"), &[port], &[]).expect("found on tcp6");
            assert_eq!(found.pid, std::process::id());
        }
        drop(l);
        assert_eq!(
            find(Path::new("/proc"), &[port], &[]),
            Err(NotFound::NoListener(vec![port]))
        );
    }

    /// A /proc tree as the agent sees it when the server runs as another user: its fds
    /// are unreadable (absent here), its cgroup is not.
    fn fixture(groups: &[(u32, &str, &str, u64)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::create_dir_all(root.join("net")).expect("mkdir");
        std::fs::write(
            root.join("net/tcp"),
            "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 00000000:1F40 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 4242 1 0 100 0 0 10 0\n   1: 0100007F:1F40 0100007F:9C40 01 00000000:00000000 00:00000000 00000000  1000        0 777 1 0 100 0 0 10 0\n",
        )
        .expect("tcp");
        std::fs::write(root.join("net/tcp6"), "  sl  local_address ...\n").expect("tcp6");
        for (pid, comm, cgroup, start) in groups {
            let p = root.join(pid.to_string());
            std::fs::create_dir_all(&p).expect("mkdir");
            std::fs::write(p.join("comm"), format!("{comm}\n")).expect("comm");
            std::fs::write(p.join("cgroup"), format!("0::{cgroup}\n")).expect("cgroup");
            std::fs::write(
                p.join("stat"),
                format!("{pid} ({comm}) S 1 1 1 0 -1 4194560 1 0 0 0 1 1 0 0 20 0 1 0 {start} 1000 10 0"),
            )
            .expect("stat");
        }
        dir
    }

    #[test]
    fn the_cgroup_fallback() {
        // pause (sandbox), the agent, a protocol worker, vLLM (parent and a forked child).
        let pod = [
            (1, "pause", "/pod/sandbox", 10),
            (7, "vitals-agent", "/pod/agent", 20),
            (9, "vitals-worker", "/pod/worker", 30),
            (12, "python3", "/pod/vllm", 40),
            (40, "python3", "/pod/vllm", 90),
        ];
        let dir = fixture(&pod);
        let found = find(dir.path(), &[8000], &[7, 9]).expect("found");
        assert_eq!(
            found,
            Found {
                pid: 12,
                start_time: 40,
                method: Method::Cgroup
            }
        );
        // Without knowing the worker's pid, two candidates remain.
        assert_eq!(
            find(dir.path(), &[8000], &[7]),
            Err(NotFound::Ambiguous {
                port: 8000,
                cgroups: 2
            })
        );
        // Port 40000 only has an established connection, no listener.
        assert_eq!(
            find(dir.path(), &[40000], &[7, 9]),
            Err(NotFound::NoListener(vec![40000]))
        );
    }

    #[test]
    fn start_time_survives_odd_command_names() {
        let dir = fixture(&[(5, "a) b (c", "/x", 1234)]);
        assert_eq!(start_time(dir.path(), 5), Some(1234));
    }
}

//! Finds an upstream's process (SPEC §8, §9) without privileges.
//!
//! 1. By socket: the process holding the socket that listens on the first of its probes'
//!    ports that has a listener (`/proc/net/tcp{,6}` → inode → `/proc/<pid>/fd`; the oldest of
//!    several holders, which is the server's parent rather than a forked worker). This needs
//!    the holder's fds to be readable: the same uid as the agent, or privileges the agent
//!    never asks for.
//! 2. Otherwise by container: the pod's processes grouped by cgroup (one cgroup = one
//!    container; `/proc/<pid>/cgroup` is world-readable), the groups of the agent and of the
//!    protocol workers (`exclude`) and the sandbox's `pause` left out, then narrowed by what
//!    every user may read: a candidate process runs as the listening socket's owner (the
//!    uid column of /proc/net/tcp against the real, effective or filesystem uid of
//!    `/proc/<pid>/status`) and, when `inject` recorded the container's command line, its
//!    `/proc/<pid>/cmdline` matches it ([`cmdline_matches`]). A container without probes (no
//!    port) is narrowed by its command line alone. Exactly one cgroup must remain; its oldest
//!    candidate process is the one judged. Anything else is [`NotFound`], and /proc checks
//!    stay off for that upstream.
//! 3. Before it listens (a server loading its model), by its recorded command line alone, as
//!    a container without probes: its load progress is followed from the start (SPEC §12).
//!
//! Reads go through procfs under a `/proc` root given by the caller (a fixture tree in
//! tests); run it on the blocking pool, as /proc reads can stall.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::Path;

use procfs::net::{TcpNetEntries, TcpState};
use procfs::process::{FDTarget, Process};
use procfs::FromBufReadSI;

use vitals_core::proc::NotFound;
use vitals_core::state::proc_track::{FoundBy, Watched};

/// What identifies an upstream's process.
#[derive(Debug, Clone, Copy)]
pub struct Wanted<'a> {
    /// Its probes' ports, in order.
    pub ports: &'a [u16],
    /// The container's recorded command line, if any.
    pub cmdline: Option<&'a [String]>,
}

/// Finds the process of `wanted`. `exclude` are pids whose containers are never
/// candidates in the fallback (the agent's own, the protocol workers').
pub fn find(proc_root: &Path, wanted: Wanted<'_>, exclude: &[u32]) -> Result<Watched, NotFound> {
    let listener = if wanted.ports.is_empty() {
        None
    } else {
        let sockets = listening_sockets(proc_root);
        let Some((port, inodes, uid)) = wanted.ports.iter().find_map(|p| {
            let on_port: Vec<_> = sockets.iter().filter(|s| s.0 == *p).collect();
            let uid = on_port.first()?.2;
            Some((
                *p,
                on_port.iter().map(|s| s.1).collect::<BTreeSet<_>>(),
                uid,
            ))
        }) else {
            // A loading server does not listen yet: found by its recorded command line
            // alone (SPEC §12's load progress), or not yet.
            return match wanted.cmdline {
                Some(cmdline) => {
                    by_cmdline_before_listening(proc_root, wanted.ports, cmdline, exclude)
                }
                None => Err(NotFound::NoListener(wanted.ports.to_vec())),
            };
        };
        Some((port, inodes, uid))
    };
    if listener.is_none() && wanted.cmdline.is_none() {
        return Err(NotFound::NothingToLookFor);
    }
    let all: Vec<Process> = procfs::process::all_processes_with_root(proc_root)
        .map_err(|e| NotFound::Unreadable(format!("{}: {e}", proc_root.display())))?
        .filter_map(Result::ok)
        .collect();
    if let Some((_, inodes, _)) = &listener {
        let holders = all.iter().filter(|p| holds_any(p, inodes));
        let oldest = holders
            .filter_map(|p| Some((p.stat().ok()?.starttime, u32::try_from(p.pid()).ok()?)))
            .min();
        if let Some((start_time, pid)) = oldest {
            return Ok(Watched {
                pid,
                start_time: Some(start_time),
                found_by: FoundBy::Socket,
            });
        }
    }
    // Only now the world-readable files of every process: what the fallback narrows by.
    let procs: Vec<Candidate> = all.iter().filter_map(candidate).collect();
    // The fallback: one cgroup is one container.
    let mut containers: BTreeMap<String, Vec<&Candidate>> = BTreeMap::new();
    for p in &procs {
        if let Some(cg) = &p.cgroup {
            containers.entry(cg.clone()).or_default().push(p);
        }
    }
    let eligible = |p: &&Candidate| {
        listener
            .as_ref()
            .is_none_or(|(_, _, uid)| p.uids.contains(uid))
            && wanted.cmdline.is_none_or(|want| {
                p.cmdline
                    .as_deref()
                    .is_some_and(|c| cmdline_matches(want, c))
            })
    };
    let matching: Vec<Vec<&Candidate>> = containers
        .into_values()
        .filter(|members| {
            !members.iter().any(|p| exclude.contains(&p.pid))
                && !members.iter().all(|p| p.comm == "pause")
        })
        .map(|members| members.into_iter().filter(eligible).collect::<Vec<_>>())
        .filter(|c| !c.is_empty())
        .collect();
    match (matching.as_slice(), &listener) {
        ([only], _) => {
            let oldest = only.iter().min_by_key(|p| (p.start_time, p.pid)).expect(
                "a matching container has at least one candidate (empty ones are filtered)",
            );
            Ok(Watched {
                pid: oldest.pid,
                start_time: Some(oldest.start_time),
                found_by: FoundBy::Cgroup,
            })
        }
        (_, Some((port, _, uid))) => Err(NotFound::Ambiguous {
            port: *port,
            uid: *uid,
            cgroups: matching.len(),
            by_cmdline: wanted.cmdline.is_some(),
        }),
        (_, None) => Err(NotFound::ByCmdline {
            cmdline: wanted.cmdline.unwrap_or_default().to_vec(),
            cgroups: matching.len(),
        }),
    }
}

/// A process that does not listen on its probes' `ports` yet, by its container's recorded
/// `cmdline` alone; while none or several containers match, nothing listens yet.
fn by_cmdline_before_listening(
    proc_root: &Path,
    ports: &[u16],
    cmdline: &[String],
    exclude: &[u32],
) -> Result<Watched, NotFound> {
    let wanted = Wanted {
        ports: &[],
        cmdline: Some(cmdline),
    };
    find(proc_root, wanted, exclude).map_err(|_| NotFound::NoListener(ports.to_vec()))
}

/// Whether a process whose `/proc/<pid>/cmdline` is `actual` runs the container command
/// line `recorded` (its `command` + `args` as `inject` wrote them, or `args` alone).
///
/// The rule: `recorded` appears in `actual` as one contiguous run, where the first
/// recorded word matches by its last path component (`vllm` matches
/// `/usr/local/bin/vllm`, and `/app/server` matches `server`) and every later word matches
/// exactly. Anything before the run is allowed: an interpreter and its options
/// (`python3 -u /usr/local/bin/vllm serve m` runs `["vllm", "serve", "m"]`), or the
/// image's entrypoint when only `args` were recorded. Words after the run are allowed too
/// (an entrypoint script may append flags). A process that rewrites its argv (e.g.
/// `setproctitle`) does not match, which is why the oldest match of a container is taken:
/// the server's parent keeps its argv. A `$(VAR)` in a recorded word stands for any text:
/// the kubelet expands such references in `command` and `args` from the container's env
/// before it starts the process (LeaderWorkerSet's own vLLM example passes
/// `--ray_cluster_size=$(LWS_GROUP_SIZE)`), and inject records the words as written.
///
/// A recorded shell script (`sh -c SCRIPT`, or bash, dash, ash, ksh, zsh, with options
/// before `-c`) also matches the command the shell runs in its own place: dash and bash
/// exec a `-c` script's last simple command, so in an image where they do, the container's
/// process is that command, not the shell (`exec_form`).
pub fn cmdline_matches(recorded: &[String], actual: &[String]) -> bool {
    run_matches(recorded, actual)
        || exec_form(recorded).is_some_and(|exec| run_matches(&exec, actual))
}

/// Shells that run `-c SCRIPT`, by their program's last path part.
const SHELLS: [&str; 6] = ["sh", "bash", "dash", "ash", "ksh", "zsh"];

/// The words of the command a recorded `SHELL [-opts] -c SCRIPT [args]` execs in its own
/// place: the script's last simple command (after the last `;`, `&&`, `||` or newline),
/// quotes removed, a leading `exec` dropped, each shell variable (`$NAME`, `${NAME}`)
/// written `$(NAME)`, the form that matches any text. `None` when `recorded` is not such a
/// shell, or the last command is not one the shell can exec: a pipeline, a background job,
/// a redirection, a subshell or a substitution (`|`, `&`, `<`, `>`, `(`, `` ` ``), or an
/// unclosed quote.
fn exec_form(recorded: &[String]) -> Option<Vec<String>> {
    let (shell, rest) = recorded.split_first()?;
    if !SHELLS.contains(&shell.rsplit('/').next().unwrap_or(shell)) {
        return None;
    }
    let options = rest
        .iter()
        .take_while(|w| w.starts_with('-') && !w.starts_with("--"));
    let at = options.clone().position(|w| w.contains('c'))?;
    let script = rest.get(at + 1)?;
    let mut last = shell_words(script)?;
    if last.first().is_some_and(|w| w == "exec") {
        last.remove(0);
    }
    (!last.is_empty()).then_some(last)
}

/// The words of `script`'s last simple command (see [`exec_form`]).
fn shell_words(script: &str) -> Option<Vec<String>> {
    let mut commands: Vec<Vec<String>> = vec![Vec::new()];
    let mut word: Option<String> = None;
    let mut chars = script.chars().peekable();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        let text = word.get_or_insert_with(String::new);
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some('"'), '\\') => text.extend(chars.next()),
            (Some('\''), c) => text.push(c),
            (None, '\'' | '"') => quote = Some(c),
            (None, '\\') => text.extend(chars.next()),
            (_, '$') if quote != Some('\'') => match chars.peek() {
                // `$(VAR)` is the kubelet's reference, expanded before the shell ran.
                Some(open @ ('(' | '{')) => {
                    let close = if *open == '(' { ')' } else { '}' };
                    chars.next();
                    let name: String = chars.by_ref().take_while(|c| *c != close).collect();
                    text.push_str(&format!("$({name})"));
                }
                Some(n) if n.is_ascii_alphanumeric() || *n == '_' => {
                    let mut name = String::new();
                    while let Some(n) = chars.next_if(|n| n.is_ascii_alphanumeric() || *n == '_') {
                        name.push(n);
                    }
                    text.push_str(&format!("$({name})"));
                }
                _ => text.push('$'),
            },
            (Some(_), c) => text.push(c),
            (None, ' ' | '\t') => {
                let done = word.take().filter(|w| !w.is_empty());
                commands.last_mut()?.extend(done);
            }
            (None, ';' | '\n') | (None, '&' | '|')
                if c == ';' || c == '\n' || chars.peek() == Some(&c) =>
            {
                chars.next_if_eq(&c);
                let done = word.take().filter(|w| !w.is_empty());
                commands.last_mut()?.extend(done);
                commands.push(Vec::new());
            }
            (None, '|' | '&' | '<' | '>' | '(' | ')' | '`') => return None,
            (None, c) => text.push(c),
        }
    }
    if quote.is_some() {
        return None;
    }
    let done = word.take().filter(|w| !w.is_empty());
    commands.last_mut()?.extend(done);
    commands.into_iter().rev().find(|c| !c.is_empty())
}

/// [`cmdline_matches`]'s rule for one recorded command line.
fn run_matches(recorded: &[String], actual: &[String]) -> bool {
    let Some((first, rest)) = recorded.split_first() else {
        return false;
    };
    let base = |w: &str| w.rsplit('/').next().unwrap_or(w).to_owned();
    let first = base(first);
    actual.windows(recorded.len()).any(|run| {
        word_matches(&first, &base(&run[0]))
            && run[1..].iter().zip(rest).all(|(a, r)| word_matches(r, a))
    })
}

/// `recorded` equals `actual`, where each `$(VAR)` of `recorded` matches any text.
fn word_matches(recorded: &str, actual: &str) -> bool {
    let mut literals = Vec::new();
    let mut text = recorded;
    while let Some(at) = text.find("$(") {
        let Some(len) = text[at..].find(')') else {
            break;
        };
        literals.push(&text[..at]);
        text = &text[at + len + 1..];
    }
    if literals.is_empty() {
        return recorded == actual;
    }
    literals.push(text);
    let (head, tail) = (literals[0], literals[literals.len() - 1]);
    let Some(mut rest) = actual.strip_prefix(head) else {
        return false;
    };
    for middle in &literals[1..literals.len() - 1] {
        match rest.find(middle) {
            Some(at) => rest = &rest[at + middle.len()..],
            None => return false,
        }
    }
    rest.ends_with(tail)
}

/// `(port, inode, uid)` of every listening TCP socket (IPv4 and IPv6).
fn listening_sockets(proc_root: &Path) -> Vec<(u16, u64, u32)> {
    let info = procfs::current_system_info();
    ["net/tcp", "net/tcp6"]
        .iter()
        .filter_map(|table| std::fs::File::open(proc_root.join(table)).ok())
        .filter_map(|f| listen_lines(BufReader::new(f)).ok())
        .filter_map(|table| TcpNetEntries::from_buf_read(table.as_bytes(), info).ok())
        .flat_map(|entries| entries.0)
        .filter(|e| e.state == TcpState::Listen && e.inode != 0)
        .map(|e| (e.local_address.port(), e.inode, e.uid))
        .collect()
}

/// The header and the `LISTEN` rows (state `0A`) of a /proc/net/tcp{,6} table. A busy
/// server's table holds a row per client connection (thousands); parsing only the few
/// listeners keeps a discovery's memory small, and glibc keeps what a thread's arena grew
/// to (measured: a 7 500-row table left 1 MiB resident in the sampler's thread).
fn listen_lines(mut table: impl BufRead) -> std::io::Result<String> {
    let mut kept = String::new();
    let mut line = String::new();
    let mut header = true;
    while table.read_line(&mut line)? > 0 {
        if header || line.split_whitespace().nth(3) == Some("0A") {
            kept.push_str(&line);
        }
        header = false;
        line.clear();
    }
    Ok(kept)
}

/// What the fallback knows of one process.
struct Candidate {
    pid: u32,
    start_time: u64,
    cgroup: Option<String>,
    comm: String,
    /// Real, effective and filesystem uid.
    uids: [u32; 3],
    cmdline: Option<Vec<String>>,
}

/// The world-readable facts of `process` (stat, status, cgroup, cmdline); `None` when its
/// stat or status cannot be read (it exited meanwhile).
fn candidate(process: &Process) -> Option<Candidate> {
    let stat = process.stat().ok()?;
    let status = process.status().ok()?;
    let cgroup = process.cgroups().ok().map(|groups| {
        groups
            .0
            .iter()
            .map(|g| format!("{}:{}", g.hierarchy, g.pathname))
            .collect::<Vec<_>>()
            .join(";")
    });
    Some(Candidate {
        pid: u32::try_from(process.pid()).ok()?,
        start_time: stat.starttime,
        cgroup,
        comm: stat.comm,
        uids: [status.ruid, status.euid, status.fuid],
        cmdline: process.cmdline().ok(),
    })
}

/// Whether `p` holds one of `inodes` (false when its fds are not readable).
fn holds_any(p: &Process, inodes: &BTreeSet<u64>) -> bool {
    let Ok(fds) = p.fd() else {
        return false;
    };
    fds.filter_map(Result::ok)
        .any(|fd| matches!(fd.target, FDTarget::Socket(i) if inodes.contains(&i)))
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    fn words(w: &[&str]) -> Vec<String> {
        w.iter().map(|s| (*s).to_owned()).collect()
    }

    const NO_CMDLINE: Option<&[String]> = None;

    fn by_port(ports: &[u16]) -> Result<Watched, NotFound> {
        let wanted = Wanted {
            ports,
            cmdline: NO_CMDLINE,
        };
        find(Path::new("/proc"), wanted, &[])
    }

    #[test]
    fn finds_this_process_by_its_listener() {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        let found = by_port(&[1, port]).expect("found");
        assert_eq!(found.pid, std::process::id());
        assert_eq!(found.found_by, FoundBy::Socket);
        let own = procfs::process::Process::myself().and_then(|p| p.stat());
        assert_eq!(found.start_time, own.ok().map(|s| s.starttime));
        let v6 =
            TcpListener::bind("[::1]:0").expect("IPv6 loopback (the pod-shape e2e needs it too)");
        let v6_port = v6.local_addr().expect("addr").port();
        let found = by_port(&[v6_port]).expect("found on tcp6");
        assert_eq!(found.pid, std::process::id());
        drop(l);
        assert_eq!(by_port(&[port]), Err(NotFound::NoListener(vec![port])));
    }

    #[test]
    fn only_listeners_are_parsed_from_a_busy_table() {
        let header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n";
        let listen = "   0: 0100007F:1F40 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 4242 1 0000000000000000 100 0 0 10 0\n";
        let client = "   1: 0100007F:1F40 0100007F:D431 01 00000000:00000000 00:00000000 00000000  1000        0 4243 1 0000000000000000 20 4 30 10 -1\n";
        let busy = format!("{header}{}{listen}{client}", client.repeat(3));
        let kept = listen_lines(busy.as_bytes()).expect("in memory");
        assert_eq!(kept, format!("{header}{listen}"));
        let entries = TcpNetEntries::from_buf_read(kept.as_bytes(), procfs::current_system_info())
            .expect("procfs parses what is kept");
        let parsed: Vec<_> = entries
            .0
            .iter()
            .map(|e| (e.local_address.port(), e.inode, e.uid, e.state.clone()))
            .collect();
        assert_eq!(parsed, [(8000, 4242, 1000, TcpState::Listen)]);
    }

    #[test]
    fn the_cmdline_rule() {
        let rec = words(&["vllm", "serve", "/models/m"]);
        let cases: &[(&[&str], bool, &str)] = &[
            (&["vllm", "serve", "/models/m"], true, "as written"),
            (
                &["/usr/local/bin/vllm", "serve", "/models/m"],
                true,
                "program by its last path part",
            ),
            (
                &[
                    "/usr/bin/python3",
                    "-u",
                    "/usr/local/bin/vllm",
                    "serve",
                    "/models/m",
                ],
                true,
                "an interpreter in front",
            ),
            (
                &["vllm", "serve", "/models/m", "--port", "8000"],
                true,
                "flags appended by an entrypoint",
            ),
            (
                &["vllm", "serve", "/models/other"],
                false,
                "another argument",
            ),
            (&["vllm", "serve"], false, "shorter"),
            (&["VLLM::EngineCore"], false, "a rewritten argv"),
            (
                &["myvllm", "serve", "/models/m"],
                false,
                "the last path part must be equal",
            ),
            (&[], false, "a kernel thread or a zombie"),
        ];
        for (actual, want, what) in cases {
            assert_eq!(cmdline_matches(&rec, &words(actual)), *want, "{what}");
        }
        assert!(cmdline_matches(
            &words(&["/app/server"]),
            &words(&["server", "-x"])
        ));
        assert!(!cmdline_matches(&[], &words(&["x"])));
    }

    #[test]
    fn kubelet_expanded_variables_match_any_text() {
        let rec = words(&["sh", "-c", "serve --size=$(LWS_GROUP_SIZE) --at $(HOST):80"]);
        let cases: &[(&str, bool)] = &[
            ("serve --size=2 --at vllm-0.vllm:80", true),
            ("serve --size=$(LWS_GROUP_SIZE) --at $(HOST):80", true),
            ("serve --size= --at :80", true),
            ("serve --size=2 --at vllm-0.vllm:81", false),
            ("run --size=2 --at h:80", false),
        ];
        for (script, want) in cases {
            assert_eq!(
                cmdline_matches(&rec, &words(&["/bin/sh", "-c", script])),
                *want,
                "{script}"
            );
        }
        assert!(word_matches("--x=$(A)", "--x=1"));
        assert!(!word_matches("--x=$(A", "--x=1"));
    }

    /// SPEC §11: where the image's `sh` (dash, bash) execs a `-c` script's last simple
    /// command, the container's process runs that command, not `sh -c ...`; it must still
    /// match the recorded `sh -c` command line. The worker of LeaderWorkerSet's vLLM
    /// example (kubernetes-sigs/lws docs/examples/vllm/GPU/lws.yaml) runs
    /// `sh -c "bash .../multi-node-serving.sh worker --ray_address=$(LWS_LEADER_ADDRESS)"`.
    #[test]
    fn a_shell_that_execs_its_script_still_matches() {
        let script = "bash /vllm-workspace/examples/online_serving/multi-node-serving.sh worker --ray_address=$(LWS_LEADER_ADDRESS)";
        let rec = words(&["sh", "-c", script]);
        let exec_d = [
            "bash",
            "/vllm-workspace/examples/online_serving/multi-node-serving.sh",
            "worker",
            "--ray_address=vllm-0.vllm.default",
        ];
        let cases: &[(&[&str], bool, &str)] = &[
            (&exec_d, true, "sh exec'd the script's command"),
            (
                &["/bin/sh", "-c", "bash /vllm-workspace/examples/online_serving/multi-node-serving.sh worker --ray_address=vllm-0.vllm.default"],
                true,
                "the shell itself, kept",
            ),
            (&exec_d[..3], false, "a word short"),
            (
                &["bash", "/other.sh", "worker", "--ray_address=x"],
                false,
                "another script",
            ),
        ];
        for (actual, want, what) in cases {
            assert_eq!(cmdline_matches(&rec, &words(actual)), *want, "{what}");
        }
        // The last simple command of a list, quotes removed, `exec` dropped; a shell
        // variable matches any text, as a kubelet-expanded `$(VAR)` does.
        let rec = words(&[
            "/bin/bash",
            "-ec",
            "cd /app && exec ray start --block --address=\"$HEAD:6379\" --node-name='a b'",
        ]);
        let ray = [
            "/usr/bin/python3",
            "/usr/local/bin/ray",
            "start",
            "--block",
            "--address=10.0.0.1:6379",
            "--node-name=a b",
        ];
        assert!(cmdline_matches(&rec, &words(&ray)), "{rec:?}");
        assert!(!cmdline_matches(&rec, &words(&["cd", "/app"])));
        // A pipeline or a background job is not exec'd: only the shell matches.
        let rec = words(&["sh", "-c", "ray start --block | tee /log"]);
        assert!(!cmdline_matches(&rec, &words(&["tee", "/log"])));
    }

    /// A process of the fixture: pid, command name, cgroup, start time, uid, argv.
    type Proc<'a> = (u32, &'a str, &'a str, u64, u32, &'a [&'a str]);

    /// A /proc tree as the agent (uid 65532) sees it when the server runs as another user:
    /// its fds are unreadable (absent here); cgroup, status, stat and cmdline are not. Port
    /// 8000 listens, owned by `listen_uid`.
    fn fixture(procs: &[Proc<'_>], listen_uid: u32) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::create_dir_all(root.join("net")).expect("mkdir");
        std::fs::write(
            root.join("net/tcp"),
            format!("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 00000000:1F40 00000000:0000 0A 00000000:00000000 00:00000000 00000000 {listen_uid:>5}        0 4242 1 0000000000000000 100 0 0 10 0\n   1: 0100007F:1F40 0100007F:9C40 01 00000000:00000000 00:00000000 00000000  1000        0 777 1 0000000000000000 100 0 0 10 0\n"),
        )
        .expect("tcp");
        std::fs::write(
            root.join("net/tcp6"),
            "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n",
        )
        .expect("tcp6");
        // A real status file, with the fixture's uid.
        let template = std::fs::read_to_string("/proc/self/status").expect("own status");
        for (pid, comm, cgroup, start, uid, argv) in procs {
            let p = root.join(pid.to_string());
            std::fs::create_dir_all(&p).expect("mkdir");
            std::fs::write(p.join("cgroup"), format!("0::{cgroup}\n")).expect("cgroup");
            std::fs::write(
                p.join("stat"),
                format!("{pid} ({comm}) S 1 1 1 0 -1 4194560 1 0 0 0 1 1 0 0 20 0 1 0 {start} 1000 10 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0"),
            )
            .expect("stat");
            let status: String = template
                .lines()
                .map(|l| {
                    if l.starts_with("Uid:") {
                        format!("Uid:\t{uid}\t{uid}\t{uid}\t{uid}\n")
                    } else if l.starts_with("Pid:") || l.starts_with("Tgid:") {
                        format!("{}\t{pid}\n", &l[..l.find(':').expect("a colon") + 1])
                    } else {
                        format!("{l}\n")
                    }
                })
                .collect();
            std::fs::write(p.join("status"), status).expect("status");
            let cmdline: String = argv.iter().map(|a| format!("{a}\0")).collect();
            std::fs::write(p.join("cmdline"), cmdline).expect("cmdline");
        }
        dir
    }

    const VLLM: &[&str] = &["/usr/bin/python3", "/usr/local/bin/vllm", "serve", "m"];

    /// A real pod: pause, the agent (65532), a protocol worker, istio-proxy (1337), a root
    /// log shipper, root vLLM (its API server and a forked engine with a rewritten argv).
    const POD: &[Proc<'_>] = &[
        (1, "pause", "/pod/sandbox", 10, 65535, &["/pause"]),
        (
            7,
            "vitals-agent",
            "/pod/agent",
            20,
            65532,
            &["vitals-agent", "run"],
        ),
        (
            9,
            "vitals-worker",
            "/pod/worker",
            30,
            1000,
            &["vitals-worker"],
        ),
        (11, "envoy", "/pod/istio", 35, 1337, &["envoy", "-c", "x"]),
        (
            12,
            "fluent-bit",
            "/pod/logs",
            38,
            0,
            &["fluent-bit", "-c", "/conf"],
        ),
        (14, "python3", "/pod/vllm", 40, 0, VLLM),
        (40, "python3", "/pod/vllm", 90, 0, &["VLLM::EngineCore"]),
    ];

    #[test]
    fn the_fallback_narrows_by_socket_uid_and_cmdline() {
        let dir = fixture(POD, 0);
        let vllm = words(&["vllm", "serve", "m"]);
        let by = |cmdline: Option<&[String]>, exclude: &[u32]| {
            find(
                dir.path(),
                Wanted {
                    ports: &[8000],
                    cmdline,
                },
                exclude,
            )
        };
        assert_eq!(
            by(Some(&vllm), &[7, 9]),
            Ok(Watched {
                pid: 14,
                start_time: Some(40),
                found_by: FoundBy::Cgroup
            }),
            "root vLLM beside a root log shipper: the command line tells"
        );
        assert_eq!(
            by(NO_CMDLINE, &[7, 9]),
            Err(NotFound::Ambiguous {
                port: 8000,
                uid: 0,
                cgroups: 2,
                by_cmdline: false
            }),
            "without a command line two root containers remain"
        );
        let shown = by(NO_CMDLINE, &[7, 9]).expect_err("ambiguous").to_string();
        assert!(shown.contains("2 candidate containers"), "{shown}");
        // A server running as its own user needs no command line: istio runs as 1337,
        // the agent as 65532, the worker as 1000.
        let dir = fixture(&POD[..5], 1337);
        let found = find(
            dir.path(),
            Wanted {
                ports: &[8000],
                cmdline: NO_CMDLINE,
            },
            &[7, 9],
        );
        assert_eq!(found.map(|f| f.pid), Ok(11));
        // Port 40000 only has an established connection, no listener: a server loading
        // its model is found by its command line alone (SPEC §12), else nothing listens yet.
        let dir = fixture(POD, 0);
        let before_listening = |cmdline: &[String]| {
            find(
                dir.path(),
                Wanted {
                    ports: &[40000],
                    cmdline: Some(cmdline),
                },
                &[7, 9],
            )
        };
        assert_eq!(
            before_listening(&vllm),
            Ok(Watched {
                pid: 14,
                start_time: Some(40),
                found_by: FoundBy::Cgroup
            })
        );
        assert_eq!(
            before_listening(&words(&["sglang"])),
            Err(NotFound::NoListener(vec![40000]))
        );
    }

    #[test]
    fn a_container_without_probes_is_found_by_its_cmdline() {
        let dir = fixture(POD, 0);
        let find_cmd = |cmd: &[&str]| {
            let cmd = words(cmd);
            find(
                dir.path(),
                Wanted {
                    ports: &[],
                    cmdline: Some(&cmd),
                },
                &[7, 9],
            )
        };
        assert_eq!(
            find_cmd(&["fluent-bit", "-c", "/conf"]).map(|f| f.pid),
            Ok(12)
        );
        assert_eq!(
            find_cmd(&["ray", "start"]),
            Err(NotFound::ByCmdline {
                cmdline: words(&["ray", "start"]),
                cgroups: 0
            })
        );
        assert_eq!(
            find_cmd(&["vitals-agent", "run"]).map_err(|e| e.to_string()),
            Err(
                "0 containers run a process matching the command line [\"vitals-agent\", \"run\"]"
                    .to_owned()
            ),
            "the agent's own container is never a candidate"
        );
        assert_eq!(
            find(
                dir.path(),
                Wanted {
                    ports: &[],
                    cmdline: NO_CMDLINE
                },
                &[]
            ),
            Err(NotFound::NothingToLookFor)
        );
    }
}

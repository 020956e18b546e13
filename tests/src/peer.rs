//! Fake peers speaking the Vitals worker protocol (SPEC §1) over the agent's Unix socket:
//!
//! - [`Worker`]: a scripted worker in this process writing raw lines, so a test can also send
//!   what no real worker would (garbage, huge lines, a second hello);
//! - [`FakeAgent`]: an agent that welcomes every worker and records what each one says, for
//!   testing a real worker or the `Reporter` without the real agent (the only fake agent);
//! - [`PythonWorker`]: a worker in its own `python3` process, for tests that need the worker's
//!   own pid (SO_PEERCRED, /proc, SIGSTOP).

use std::io::{BufRead, BufReader, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use vitals_proto::codec::{encode_line, read_line};
use vitals_proto::message::{
    decode_agent_message, decode_hello, decode_message, AgentMessage, Hello, Welcome, WorkerMessage,
};

use crate::wait::eventually;

/// How long a [`Worker`] waits for the agent's next line.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A scripted worker: one connection to the agent's socket, written line by line.
pub struct Worker {
    /// The connection, for tests that write to it from another thread.
    pub stream: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Worker {
    /// Connects without saying anything.
    pub fn connect(socket: &Path) -> Self {
        let stream = UnixStream::connect(socket)
            .unwrap_or_else(|e| panic!("connect to the agent socket {}: {e}", socket.display()));
        stream
            .set_read_timeout(Some(READ_TIMEOUT))
            .expect("a connected Unix stream takes a read timeout");
        let reader = BufReader::new(
            stream
                .try_clone()
                .expect("a connected Unix stream can be cloned"),
        );
        Self { stream, reader }
    }

    /// Connects, says hello as `name` / `instance`, and expects `welcome`.
    pub fn hello(socket: &Path, name: &str, instance: &str) -> Self {
        let mut w = Self::connect(socket);
        w.line(&hello_line(name, instance));
        match w.reply() {
            Some(AgentMessage::Welcome(_)) => w,
            other => panic!("expected welcome for {name}, got {other:?}"),
        }
    }

    /// Writes `line` and its newline.
    pub fn line(&mut self, line: &str) {
        self.stream
            .write_all(format!("{line}\n").as_bytes())
            .expect("the agent reads the worker's lines");
    }

    /// `phase` with detail `test`.
    pub fn phase(&mut self, phase: &str) {
        self.line(&format!(
            r#"{{"type":"phase","phase":"{phase}","detail":"test"}}"#
        ));
    }

    /// `phase loading` with `done` of 100 MiB.
    pub fn loading(&mut self, done: u64) {
        self.line(&format!(
            r#"{{"type":"phase","phase":"loading","detail":"weights","progress":{{"done":{done},"total":100,"unit":"MiB"}}}}"#
        ));
    }

    /// A `check`.
    pub fn check(&mut self, name: &str, ok: bool, message: &str) {
        self.line(&format!(
            r#"{{"type":"check","name":"{name}","ok":{ok},"message":"{message}"}}"#
        ));
    }

    /// A heartbeat whose `seq` and `progress` are both `progress`.
    pub fn beat(&mut self, progress: u64) {
        self.line(&format!(
            r#"{{"type":"heartbeat","seq":{progress},"progress":{progress},"pending":0,"in_flight":0}}"#
        ));
    }

    /// The agent's next line as sent (without its newline), `None` at EOF or on a read error.
    pub fn raw_reply(&mut self) -> Option<String> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(line.trim_end().to_owned()),
        }
    }

    /// The agent's next message, `None` at EOF.
    pub fn reply(&mut self) -> Option<AgentMessage> {
        self.raw_reply().map(|line| {
            decode_agent_message(line.as_bytes())
                .unwrap_or_else(|e| panic!("the agent speaks the protocol: {e}: {line}"))
        })
    }

    /// Expects an `error` with `code`, then EOF.
    pub fn expect_error(&mut self, code: &str) {
        match self.reply() {
            Some(AgentMessage::Error(e)) => assert_eq!(e.code.as_str(), code, "{}", e.message),
            other => panic!("expected error {code}, got {other:?}"),
        }
        assert!(self.reply().is_none(), "connection closed after the error");
    }
}

/// The hello line of worker `name`, instance `instance`, with this process's pid and 100 ms
/// heartbeats.
pub fn hello_line(name: &str, instance: &str) -> String {
    format!(
        r#"{{"type":"hello","v":1,"worker":"{name}","instance":"{instance}","pid":{},"version":"test","heartbeat_ms":100}}"#,
        std::process::id()
    )
}

/// An agent that listens on a socket, welcomes every worker that says hello, and records
/// every hello and every valid message after it, from all connections in arrival order.
/// Dropping it is the agent going away: it stops listening and closes every connection.
pub struct FakeAgent {
    record: Arc<Mutex<Record>>,
    /// Connections' streams, to close them when the agent goes away.
    streams: Arc<Mutex<Vec<UnixStream>>>,
    stopping: Arc<AtomicBool>,
    socket: PathBuf,
    acceptor: Option<JoinHandle<()>>,
}

/// What the fake agent heard: each welcomed connection's hello, and every message with the
/// index of the connection (in [`FakeAgent::hellos`]) it came on.
#[derive(Default)]
struct Record {
    hellos: Vec<Hello>,
    messages: Vec<(usize, WorkerMessage)>,
}

impl FakeAgent {
    /// Binds `socket` and serves it from a background thread until dropped; the welcome
    /// announces `hang_timeout`.
    pub fn bind(socket: &Path, hang_timeout: Duration) -> Self {
        let listener = UnixListener::bind(socket)
            .unwrap_or_else(|e| panic!("bind the fake agent's socket {}: {e}", socket.display()));
        Self::serve(listener, socket, hang_timeout)
    }

    /// Serves `listener`, bound at `socket` (a test may answer the first connections itself,
    /// then hand the listener over), until dropped.
    pub fn serve(listener: UnixListener, socket: &Path, hang_timeout: Duration) -> Self {
        let record = Arc::new(Mutex::new(Record::default()));
        let streams = Arc::new(Mutex::new(Vec::new()));
        let stopping = Arc::new(AtomicBool::new(false));
        let welcome = encode_line(&AgentMessage::Welcome(Welcome {
            v: 1,
            agent_version: "fake".into(),
            hang_timeout_ms: u64::try_from(hang_timeout.as_millis()).unwrap_or(u64::MAX),
        }));
        let acceptor = {
            let (record, streams, stopping) = (
                Arc::clone(&record),
                Arc::clone(&streams),
                Arc::clone(&stopping),
            );
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    let Ok(stream) = stream else { return };
                    if stopping.load(Ordering::SeqCst) {
                        return;
                    }
                    if let Ok(clone) = stream.try_clone() {
                        lock(&streams).push(clone);
                    }
                    let (record, welcome) = (Arc::clone(&record), welcome.clone());
                    std::thread::spawn(move || serve(stream, &welcome, &record));
                }
            })
        };
        Self {
            record,
            streams,
            stopping,
            socket: socket.to_path_buf(),
            acceptor: Some(acceptor),
        }
    }

    /// Everything recorded so far, from all connections.
    pub fn messages(&self) -> Vec<WorkerMessage> {
        lock(&self.record)
            .messages
            .iter()
            .map(|(_, m)| m.clone())
            .collect()
    }

    /// The hello of every welcomed connection, in order.
    pub fn hellos(&self) -> Vec<Hello> {
        lock(&self.record).hellos.clone()
    }

    /// Polls the recorded messages until `check` finds what it wants, for at most `within`.
    #[track_caller]
    pub fn wait_for<T>(
        &self,
        what: &str,
        within: Duration,
        mut check: impl FnMut(&[WorkerMessage]) -> Option<T>,
    ) -> T {
        eventually(what, within, || check(&self.messages()))
    }

    /// The `progress` of every heartbeat recorded so far, in order.
    pub fn heartbeats(&self) -> Vec<u64> {
        self.messages()
            .iter()
            .filter_map(|m| match m {
                WorkerMessage::Heartbeat(h) => Some(h.progress),
                _ => None,
            })
            .collect()
    }
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        // Stop listening first, so nobody connects to a dying agent: wake the accept loop
        // with a connection of our own, and wait until it has closed the listener.
        self.stopping.store(true, Ordering::SeqCst);
        let _ = UnixStream::connect(&self.socket);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        for stream in lock(&self.streams).drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

/// Locks `m`; a recording thread that panicked leaves a record still worth reading.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One connection: a hello, the welcome, then every message recorded until EOF.
fn serve(mut stream: UnixStream, welcome: &[u8], record: &Mutex<Record>) {
    let mut buf = Vec::new();
    let Ok(line) = read_line(&mut stream, &mut buf) else {
        return;
    };
    let Ok(hello) = decode_hello(&line) else {
        return;
    };
    let connection = {
        let mut record = lock(record);
        record.hellos.push(hello.hello);
        record.hellos.len() - 1
    };
    if stream.write_all(welcome).is_err() {
        return;
    }
    while let Ok(line) = read_line(&mut stream, &mut buf) {
        if let Ok(m) = decode_message(&line) {
            lock(record).messages.push((connection, m));
        }
    }
}

/// A worker in its own `python3` process: hello (its own pid, 50 ms heartbeats), phase
/// `ready`, then a heartbeat every 50 ms with moving progress. Killed when dropped.
pub struct PythonWorker {
    child: Child,
}

/// The worker's script; argv: socket path, worker name, close-after count (0: never).
const PYTHON_WORKER: &str = r#"
import json, os, socket, sys, time
path, name, close_after = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(path)
def send(m): s.sendall((json.dumps(m) + "\n").encode())
send({"type": "hello", "v": 1, "worker": name, "instance": "py-%d" % os.getpid(),
      "pid": os.getpid(), "version": "py", "heartbeat_ms": 50})
s.recv(4096)
send({"type": "phase", "phase": "ready", "detail": "scripted"})
i = 0
while True:
    i += 1
    send({"type": "heartbeat", "seq": i, "progress": i, "pending": 0, "in_flight": 0})
    if close_after and i >= close_after:
        s.close()
        time.sleep(1000)
    time.sleep(0.05)
"#;

impl PythonWorker {
    /// Starts worker `name` on `socket`. With `close_after`, it closes the socket after that
    /// many heartbeats but keeps running.
    ///
    /// # Panics
    /// When `python3` cannot be started: the test needs it (`make test` machines have it).
    pub fn start(socket: &Path, name: &str, close_after: Option<u32>) -> Self {
        let child = Command::new("python3")
            .args(["-c", PYTHON_WORKER])
            .arg(socket)
            .arg(name)
            .arg(close_after.unwrap_or(0).to_string())
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "this test needs python3 to run a worker in its own process, and it \
                     could not be started ({e}): install python3 (apt-get install python3)"
                )
            });
        Self { child }
    }

    /// The worker's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `sig` to the worker.
    pub fn signal(&self, sig: Signal) {
        let pid = i32::try_from(self.child.id()).expect("pids fit in i32");
        kill(Pid::from_raw(pid), sig).expect("signal the python worker");
    }

    /// Kills the worker and reaps it.
    pub fn kill(&mut self) {
        self.child.kill().expect("kill the python worker");
        self.child.wait().expect("reap the python worker");
    }
}

impl Drop for PythonWorker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fake_agent_welcomes_and_records_and_ignores_a_bad_hello() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let socket = dir.path().join("agent.sock");
        let agent = FakeAgent::bind(&socket, Duration::from_secs(7));
        let mut bad = Worker::connect(&socket);
        bad.line("garbage");
        assert!(bad.reply().is_none(), "no welcome without a hello");
        let mut w = Worker::connect(&socket);
        w.line(&hello_line("model", "i-1"));
        match w.reply() {
            Some(AgentMessage::Welcome(welcome)) => assert_eq!(welcome.hang_timeout_ms, 7000),
            other => panic!("expected welcome, got {other:?}"),
        }
        w.phase("ready");
        w.beat(1);
        w.beat(2);
        let beats = agent.wait_for("two heartbeats", Duration::from_secs(5), |m| {
            (m.len() == 3).then(|| agent.heartbeats())
        });
        assert_eq!(beats, [1, 2]);
        assert!(matches!(agent.messages()[0], WorkerMessage::Phase(_)));
        assert_eq!(agent.hellos().len(), 1, "only the good hello counts");
        assert_eq!(
            agent.messages().len(),
            3,
            "the one welcomed connection's messages"
        );

        // The agent goes away: the connection ends and nobody listens any more.
        drop(agent);
        assert!(w.raw_reply().is_none(), "the connection is closed");
        assert!(
            UnixStream::connect(&socket).is_err(),
            "nobody listens on the socket"
        );
    }
}

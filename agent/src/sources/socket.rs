//! The worker socket: binds the Unix listener (folder, stale file, mode, unlink on exit),
//! accepts connections, reads SO_PEERCRED, enforces protocol v1 and feeds the registry.
//!
//! Each connection is its own task, so a wedged or hostile peer affects only itself: a
//! protocol error gets one `error` line, a count, a log line and a closed connection.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{getsockopt, recv, sockopt, MsgFlags};
use tokio::net::UnixStream;
use tokio::sync::{Notify, Semaphore};
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;
use vitals_proto::codec::{encode_line, CodecError, LineCodec};
use vitals_proto::message::{
    decode_hello, decode_message, AgentMessage, ErrorReply, ProtocolError, ValidHello, Welcome,
    WorkerMessage, PROTOCOL_VERSION,
};
use vitals_proto::{ErrorCode, WorkerName};

use crate::counters::SourceCounters;
use vitals_core::state::registry::{ConnId, HelloOutcome, PeerCred, WorkerReports};

/// Most worker connections open at once; more are closed at once. Far above any real pod
/// (one per worker), it bounds what a runaway client can cost.
pub const MAX_CONNECTIONS: usize = 1024;

/// How long a write of one reply line may take before the connection is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// Why the worker socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// The socket's folder could not be created.
    #[error("cannot create socket folder {path}: {source}")]
    Folder {
        /// The folder.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Another agent answers on the socket.
    #[error("another agent is already listening on {0}")]
    InUse(PathBuf),
    /// Something that is not a socket is in the way; it is not ours to delete.
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    /// Removing a stale socket, binding, or setting the mode failed.
    #[error("cannot bind worker socket {path}: {source}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// The socket file; unlinked on drop if it is still the one this agent bound.
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    id: (u64, u64),
}

impl SocketFile {
    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        // Another agent may have replaced the file since: leave its socket alone.
        match std::fs::symlink_metadata(&self.path) {
            Ok(meta) if (meta.dev(), meta.ino()) == self.id => {
                if let Err(e) = std::fs::remove_file(&self.path) {
                    tracing::warn!(path = %self.path.display(), error = %e, "cannot remove worker socket");
                }
            }
            _ => {}
        }
    }
}

/// A bound worker socket, before the runtime takes it over.
#[derive(Debug)]
pub struct SocketListener {
    /// The listener (non-blocking).
    pub listener: std::os::unix::net::UnixListener,
    /// The file, unlinked when this is dropped.
    pub file: SocketFile,
}

impl SocketListener {
    /// Creates the folder, replaces a stale socket file (refusing if an agent answers on
    /// it), binds, and sets `mode`.
    pub fn bind(path: &Path, mode: u32) -> Result<Self, SocketError> {
        let bind_err = |source| SocketError::Bind {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| SocketError::Folder {
                path: dir.to_owned(),
                source,
            })?;
        }
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => {
                match std::os::unix::net::UnixStream::connect(path) {
                    Ok(_) => return Err(SocketError::InUse(path.to_owned())),
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                        tracing::info!(path = %path.display(), "replacing stale worker socket");
                        std::fs::remove_file(path).map_err(bind_err)?;
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(bind_err(e)),
                }
            }
            Ok(_) => return Err(SocketError::NotASocket(path.to_owned())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(bind_err(e)),
        }
        let listener = std::os::unix::net::UnixListener::bind(path).map_err(bind_err)?;
        let meta = std::fs::symlink_metadata(path).map_err(bind_err)?;
        let file = SocketFile {
            path: path.to_owned(),
            id: (meta.dev(), meta.ino()),
        };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(bind_err)?;
        listener.set_nonblocking(true).map_err(bind_err)?;
        Ok(Self { listener, file })
    }
}

/// Open connections by id, so a `hello` claiming a held name can check whether the
/// holder has hung up.
type Conns = Arc<Mutex<HashMap<ConnId, Arc<UnixStream>>>>;

fn lock(conns: &Conns) -> std::sync::MutexGuard<'_, HashMap<ConnId, Arc<UnixStream>>> {
    // Plain inserts and removes: a panic cannot leave the map half-updated.
    conns.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the socket server writes to: workers' reports, protocol-error counts, and the /proc
/// sampler's wake-up (a new pid to sample at once).
#[derive(Debug, Clone)]
pub struct Context {
    /// Where reports go: the workers' part of the registry only.
    pub workers: WorkerReports,
    /// Protocol error and unknown-message counters.
    pub counters: SourceCounters,
    /// Notified after each accepted hello.
    pub proc_wake: Arc<Notify>,
    /// `--hang-timeout`: sent in `welcome`, and the bound on waiting for a hello.
    pub hang_timeout: Duration,
}

/// Accepts worker connections until `stop`.
pub async fn serve(ctx: Context, listener: tokio::net::UnixListener, stop: CancellationToken) {
    let conns: Conns = Arc::default();
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut next_id: ConnId = 0;
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(error = %e, "worker socket accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&limit).try_acquire_owned() else {
            tracing::warn!("too many worker connections; closing a new one");
            continue;
        };
        next_id += 1;
        let id = next_id;
        let stream = Arc::new(stream);
        lock(&conns).insert(id, Arc::clone(&stream));
        let (ctx, conns, stop) = (ctx.clone(), Arc::clone(&conns), stop.clone());
        tokio::spawn(async move {
            tokio::select! {
                () = stop.cancelled() => {}
                () = Connection::new(&ctx, &conns, id, Arc::clone(&stream)).run() => {}
            }
            lock(&conns).remove(&id);
            // Make sure the peer sees EOF even if another handle still exists.
            let _ =
                nix::sys::socket::shutdown(stream.as_raw_fd(), nix::sys::socket::Shutdown::Both);
            drop(permit);
        });
    }
}

/// Why a connection ends.
enum End {
    /// The peer closed it, or reading failed.
    Closed,
    /// The peer broke the protocol.
    Protocol(ErrorCode, String),
}

impl From<ProtocolError> for End {
    fn from(e: ProtocolError) -> Self {
        End::Protocol(e.code(), e.to_string())
    }
}

struct Connection<'a> {
    ctx: &'a Context,
    conns: &'a Conns,
    id: ConnId,
    stream: Arc<UnixStream>,
    buf: BytesMut,
    codec: LineCodec,
}

impl<'a> Connection<'a> {
    fn new(ctx: &'a Context, conns: &'a Conns, id: ConnId, stream: Arc<UnixStream>) -> Self {
        Self {
            ctx,
            conns,
            id,
            stream,
            buf: BytesMut::with_capacity(4096),
            codec: LineCodec::default(),
        }
    }

    async fn run(mut self) {
        let peer = peer_cred(&self.stream);
        // A peer that never says hello holds a slot; bound how long.
        let hello_wait = self.ctx.hang_timeout;
        let first = match tokio::time::timeout(hello_wait, self.read_line()).await {
            Ok(Ok(Some(line))) => line,
            Ok(Ok(None)) | Ok(Err(End::Closed)) => return,
            Ok(Err(End::Protocol(code, msg))) => return self.reject(None, code, msg).await,
            Err(_) => {
                let msg = format!("no hello within {hello_wait:?}");
                return self.reject(None, ErrorCode::BadHello, msg).await;
            }
        };
        let valid = match decode_hello(&first) {
            Ok(v) => v,
            Err(e) => return self.reject(None, e.code(), e.to_string()).await,
        };
        let name = valid.name.clone();
        let outcome = match self.register(&valid, peer) {
            Ok(outcome) => outcome,
            Err(msg) => return self.reject(None, ErrorCode::NameInUse, msg).await,
        };
        log_hello(&valid, peer, outcome);
        let welcome = AgentMessage::Welcome(Welcome {
            v: PROTOCOL_VERSION,
            agent_version: crate::VERSION.to_owned(),
            hang_timeout_ms: u64::try_from(self.ctx.hang_timeout.as_millis()).unwrap_or(u64::MAX),
        });
        if self.write(&encode_line(&welcome)).await.is_err() {
            return self.disconnect(&name);
        }
        self.ctx.proc_wake.notify_one();
        let end = loop {
            let line = match self.read_line().await {
                Ok(Some(line)) => line,
                Ok(None) => break End::Closed,
                Err(end) => break end,
            };
            match decode_message(&line) {
                Ok(WorkerMessage::Unknown { type_name }) => {
                    tracing::debug!(worker = %name, r#type = ?type_name, "ignoring unknown message type");
                    self.ctx.counters.unknown_message();
                }
                Ok(msg) => {
                    let now = Instant::now();
                    self.ctx.workers.message(&name, self.id, msg, now);
                }
                Err(e) => break e.into(),
            }
        };
        match end {
            End::Closed => {
                tracing::info!(worker = %name, "worker disconnected");
                self.disconnect(&name);
            }
            End::Protocol(code, msg) => self.reject(Some(&name), code, msg).await,
        }
    }

    /// Registers the hello; if a connection holds the name, it is replaced only when it
    /// has already hung up (its EOF pending), else `name_in_use`.
    fn register(&self, valid: &ValidHello, peer: PeerCred) -> Result<HelloOutcome, String> {
        let now = Instant::now();
        let held = match self.ctx.workers.hello(valid, peer, self.id, now) {
            Ok(outcome) => return Ok(outcome),
            Err(held) => held,
        };
        let holder = lock(self.conns).get(&held.holder).cloned();
        if holder.as_deref().is_some_and(|s| !hung_up(s)) {
            return Err(format!(
                "worker {:?} is connected already (connection {})",
                valid.name.as_str(),
                held.holder
            ));
        }
        self.ctx
            .workers
            .take_over(valid, peer, self.id, held, now)
            .map_err(|h| {
                format!(
                    "worker {:?} is held by connection {}",
                    valid.name.as_str(),
                    h.holder
                )
            })
    }

    fn disconnect(&self, name: &WorkerName) {
        let now = Instant::now();
        self.ctx.workers.disconnect(name, self.id, now);
    }

    /// Sends `error`, counts and logs it; the caller's return closes the connection.
    async fn reject(&mut self, name: Option<&WorkerName>, code: ErrorCode, message: String) {
        tracing::warn!(worker = name.map(WorkerName::as_str), code = %code, error = %message, conn = self.id, "protocol error; closing worker connection");
        self.ctx.counters.protocol_error(code);
        if let Some(name) = name {
            self.disconnect(name);
        }
        let reply = AgentMessage::Error(ErrorReply { code, message });
        let _ = self.write(&encode_line(&reply)).await;
    }

    /// Reads the next line; `Ok(None)` at EOF (a torn last line is dropped).
    async fn read_line(&mut self) -> Result<Option<BytesMut>, End> {
        loop {
            match self.codec.decode(&mut self.buf) {
                Ok(Some(line)) => return Ok(Some(line)),
                Ok(None) => {}
                Err(CodecError::Protocol(e)) => return Err(e.into()),
                Err(CodecError::Io(_)) => return Err(End::Closed),
            }
            self.buf.reserve(4096);
            if self.stream.readable().await.is_err() {
                return Err(End::Closed);
            }
            match self.stream.try_read_buf(&mut self.buf) {
                Ok(0) => return Ok(None),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Err(End::Closed),
            }
        }
    }

    async fn write(&self, bytes: &[u8]) -> io::Result<()> {
        let write_all = async {
            let mut rest = bytes;
            while !rest.is_empty() {
                self.stream.writable().await?;
                match self.stream.try_write(rest) {
                    Ok(n) => rest = &rest[n..],
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        };
        tokio::time::timeout(WRITE_TIMEOUT, write_all)
            .await
            .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
    }
}

fn log_hello(valid: &ValidHello, peer: PeerCred, outcome: HelloOutcome) {
    let h = &valid.hello;
    if peer.pid != 0 && peer.pid != h.pid {
        tracing::warn!(worker = %valid.name, hello_pid = h.pid, peer_pid = peer.pid, "hello.pid differs from the socket peer's pid; /proc uses the peer's");
    }
    let what = match outcome {
        HelloOutcome::New => "worker connected",
        HelloOutcome::Restart => "worker restarted (new instance)",
        HelloOutcome::Continue => "worker reconnected (same instance)",
    };
    tracing::info!(worker = %valid.name, instance = %h.instance, pid = peer.pid, version = %h.version, "{what}");
}

/// SO_PEERCRED of the peer; pid 0 when it is in another PID namespace (or unknown).
fn peer_cred(stream: &UnixStream) -> PeerCred {
    match getsockopt(stream, sockopt::PeerCredentials) {
        Ok(c) => PeerCred {
            pid: u32::try_from(c.pid()).unwrap_or(0),
            uid: c.uid(),
            gid: c.gid(),
        },
        Err(e) => {
            tracing::warn!(error = %e, "cannot read SO_PEERCRED; /proc checks off for this peer");
            PeerCred {
                pid: 0,
                uid: u32::MAX,
                gid: u32::MAX,
            }
        }
    }
}

/// Whether the peer of `stream` has closed its end (an EOF is pending), without reading.
fn hung_up(stream: &UnixStream) -> bool {
    let mut fds = [PollFd::new(stream.as_fd(), PollFlags::POLLIN)];
    match nix::poll::poll(&mut fds, PollTimeout::ZERO) {
        Ok(0) => false,
        Ok(_) => {
            let revents = fds[0].revents().unwrap_or(PollFlags::empty());
            if revents.intersects(PollFlags::POLLHUP | PollFlags::POLLERR) {
                return true;
            }
            // Readable: EOF only if nothing is left to read.
            let mut byte = [0u8; 1];
            let flags = MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT;
            matches!(recv(stream.as_raw_fd(), &mut byte, flags), Ok(0))
        }
        Err(_) => true,
    }
}

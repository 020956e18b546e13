"""The Reporter: the worker side of the Vitals protocol v1, owned by one thread of its own.

The caller's threads only update counters and the latest phase and checks under a lock
that is never held across I/O; one background thread owns the Unix socket. It says
`hello`, re-sends the current phase and every check on each new connection, sends a
heartbeat every `heartbeat_ms`, and reconnects with backoff (100 ms doubling, 1 s cap)
whatever the agent does. The protocol is shared/README.md in this repository; the Rust
reporter it mirrors is shared/src/reporter.rs.

The same thread watches the inference loop (a stack dump of every thread, once per stall,
when `tick` stops in `ready` or `draining`, idle or not: the loop ticks when idle too, and
the agent's `loop_stalled` fires either way) and itself: a heartbeat thread that wakes up
far too late means something held the GIL, and the process CPU time over that gap says
whether it was spinning or blocked.
"""

import contextlib
import faulthandler
import itertools
import json
import logging
import math
import os
import re
import select
import socket as _socket
import sys
import threading
import time
import uuid

from . import _loading, env

__all__ = ["PHASES", "Reporter"]

#: The phases the agent knows, in the order a worker usually goes through them.
PHASES = ("loading", "warming", "ready", "draining", "failed")

_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}\Z")
_BACKOFF_START = 0.1
_BACKOFF_CAP = 1.0
# How long to wait for `welcome`, and for a write to drain, before the connection counts
# as broken (the same bound as the Rust reporter's IO_TIMEOUT).
_IO_TIMEOUT = 2.0
_MAX_LINE = 65536
# Free text is cut to this many characters, so no line can reach the agent's 64 KiB
# limit: a `too_large` answer would close the connection, and the resync would send the
# same line again, forever.
_MAX_TEXT = 4096
# The heartbeat thread counts as starved when it wakes up this much later than it asked
# to, or one heartbeat period, whichever is longer: shorter delays are scheduling noise.
_STARVED_MIN_S = 0.5
# The process used at least this share of a core while the heartbeat thread could not
# run: it was spinning. The agent's own rule uses the same 0.1 (core/src/verdict.rs
# SPIN_CORES): a blocked process uses close to nothing, while a spinning one on a node
# with several runnable threads per core gets only its share (0.15 to 0.3 of a core measured on a
# 2-core machine at load 10).
_SPIN_CORES = 0.1

_log = logging.getLogger("vitals_reporter")
_noop_logged = False


def _text(value):
    """Free text as the agent accepts it: a string, valid UTF-8, bounded in length."""
    s = str(value)[:_MAX_TEXT]
    # Lone surrogates (from os.fsdecode, say) are not UTF-8; the agent would answer
    # `bad_frame` and close the connection.
    return s.encode("utf-8", "replace").decode("utf-8")


def _line(message):
    return (json.dumps(message, separators=(",", ":"), ensure_ascii=False) + "\n").encode()


def _count(value):
    """A counter for a heartbeat: a non-negative int whatever the caller stored."""
    try:
        return max(0, int(value))
    except (TypeError, ValueError):
        return 0


class _SessionEnded(Exception):
    """Why a connection to the agent ended; the reporter reconnects after it."""


class Reporter:
    """Reports this process's phase, checks and inference-loop progress to vitals-agent.

    `name` and `socket` default to the `VITALS_NAME` and `VITALS_AGENT_SOCKET` environment
    variables. Without a socket the reporter is a no-op (it logs that once), so the same
    code runs on a laptop. Every method is thread-safe, returns at once whatever the socket
    does, and never raises because the agent is gone.

    Use it as a context manager: an exception escaping the `with` block is reported as
    phase `failed` (flushed to the agent) before the reporter closes.

    `stall_timeout_ms` is the agent's `--stall-timeout` where the deployment knows it (the
    agent announces only its hang timeout): the stack dump of a stalled loop then comes no
    later than the agent's `loop_stalled`, even where that is shorter than half the hang
    timeout.
    """

    def __init__(
        self, name=None, socket=None, heartbeat_ms=1000, version=None, stall_timeout_ms=None
    ):
        if name is None:
            name = os.environ.get(env.NAME, "")
        if socket is None:
            socket = os.environ.get(env.AGENT_SOCKET, "")
        if not isinstance(heartbeat_ms, int) or heartbeat_ms < 1:
            raise ValueError(f"heartbeat_ms must be a positive int, got {heartbeat_ms!r}")
        if stall_timeout_ms is not None and (
            not isinstance(stall_timeout_ms, int) or stall_timeout_ms < 1
        ):
            raise ValueError(
                f"stall_timeout_ms must be a positive int or None, got {stall_timeout_ms!r}"
            )
        #: Work queued and not yet started; the inference loop sets it.
        self.pending = 0
        #: Work being computed now; the inference loop sets it.
        self.in_flight = 0
        # `next()` on an itertools.count is one C call under the GIL, so `tick` is atomic
        # without a lock. Reading it also advances it: `_peek_locked` subtracts its reads.
        self._ticks = itertools.count()
        self._peeks = 0
        self._bulk = 0
        self._count_lock = threading.Lock()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._phase = None
        self._checks = {}
        self._dirty_phase = False
        self._dirty_checks = {}
        self._writing = False
        self._stopping = False
        self._connected = False
        self._closed = False
        self._thread = None
        self._socket_path = os.fspath(socket)
        if not self._socket_path:
            global _noop_logged
            if not _noop_logged:
                _noop_logged = True
                _log.warning("vitals: %s is not set; not reporting to an agent", env.AGENT_SOCKET)
            return
        if not _NAME.match(name):
            raise ValueError(
                f"worker name {name!r} must match [a-z0-9][a-z0-9-]{{0,62}} "
                f"(set {env.NAME}, by convention the container's name)"
            )
        self._name = name
        self._version = _text(
            version if version is not None else os.environ.get(env.VERSION, "unknown")
        )
        self._heartbeat_s = heartbeat_ms / 1000
        self._heartbeat_ms = heartbeat_ms
        # Unique per process start and kept for its life (rule 2 of shared/README.md).
        self._instance = f"{os.getpid()}-{time.time_ns():x}-{uuid.uuid4().hex[:8]}"
        # A socket pair, not os.pipe: once closed, a socket object refuses writes instead
        # of writing to whatever file reuses its descriptor number.
        self._wake_r, self._wake_w = _socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._watch = _Watch(None if stall_timeout_ms is None else stall_timeout_ms / 1000)
        self._thread = threading.Thread(target=self._run, name="vitals-reporter", daemon=True)
        self._thread.start()

    # The caller's side: counters, phase, checks. None of it touches the socket.

    def tick(self, n=1):
        """One iteration of the inference loop (idle ones too); `n` iterations at once."""
        if n == 1:
            next(self._ticks)
        else:
            with self._count_lock:
                self._bulk += n

    @property
    def progress(self):
        """Loop iterations counted by `tick` so far."""
        with self._count_lock:
            return self._peek_locked()

    def _peek_locked(self):
        value = next(self._ticks) - self._peeks
        self._peeks += 1
        return value + self._bulk

    def phase(self, phase, detail="", done=None, total=None, unit=None):
        """Reports a phase (one of PHASES), with loading progress when `done` is given.

        While loading, call it whenever `done` moves: a load whose `done` stops moving
        for the agent's --load-stall-timeout fails liveness, one that keeps moving never.
        After `failed` the phase stays `failed`.
        """
        if phase not in PHASES:
            raise ValueError(f"phase must be one of {', '.join(PHASES)}, got {phase!r}")
        message = {"type": "phase", "phase": phase, "detail": _text(detail)}
        if done is not None:
            progress = {"done": _count(done), "unit": _text(unit if unit is not None else "")}
            if total is not None:
                progress["total"] = _count(total)
            message["progress"] = progress
        if self._thread is None:
            return
        with self._lock:
            if self._phase is not None and self._phase["phase"] == "failed":
                return
            self._phase = message
            self._dirty_phase = True
        self._wake()

    def check(self, name, ok, message=""):
        """Reports a readiness gate; the latest value per name counts. A failing check
        takes the pod out of the Service without restarting it."""
        report = {"type": "check", "name": _text(name), "ok": bool(ok), "message": _text(message)}
        if self._thread is None:
            return
        with self._lock:
            self._checks[report["name"]] = report
            self._dirty_checks[report["name"]] = None
        self._wake()

    def failed(self, detail, timeout=2.0):
        """Reports the terminal phase `failed` and waits up to `timeout` seconds until the
        agent has it; returns whether it does. Exit non-zero afterwards."""
        self.phase("failed", detail)
        return self.flush(timeout)

    def open(self, path, detail=None, phase="loading"):
        """Opens `path` for binary reading; bytes read are reported as loading progress."""
        return _loading.open_reporting(self, path, detail, phase)

    def steps(self, items, detail, total=None, unit="steps", phase="loading"):
        """Yields from `items`, reporting each finished item as loading progress."""
        return _loading.steps_reporting(self, items, detail, total, unit, phase)

    @property
    def connected(self):
        """Whether the agent has welcomed the current connection."""
        return self._connected

    def flush(self, timeout=2.0):
        """Waits up to `timeout` seconds until the agent is connected and has every phase
        and check update; returns whether that happened."""
        if self._thread is None:
            return False
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                done = self._connected and not (
                    self._dirty_phase or self._dirty_checks or self._writing
                )
                left = deadline - time.monotonic()
                if done or left <= 0 or self._stopping:
                    return done
                self._changed.wait(left)

    def close(self, timeout=1.0):
        """Sends what is left (up to `timeout` seconds, if connected) and stops the thread."""
        if self._thread is None or self._closed:
            return
        self._closed = True
        if self._connected:
            self.flush(timeout)
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        self._wake()
        self._thread.join(_IO_TIMEOUT + timeout)
        self._wake_r.close()
        self._wake_w.close()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None and issubclass(exc_type, Exception):
            self.failed(f"{exc_type.__name__}: {exc}")
        self.close()
        return False

    def _wake(self):
        # OSError: the buffer is full (the thread has wake-ups pending anyway) or closed.
        with contextlib.suppress(OSError):
            self._wake_w.send(b"w")

    # The reporter thread's side: the socket, heartbeats, and the watch over the loop.

    def _run(self):
        backoff = _BACKOFF_START
        warned = False
        self._watch.ran()
        while True:
            try:
                self._session()
                return
            except (_SessionEnded, OSError) as err:
                # The session may have waited on the agent (connect, welcome): waiting for
                # a reason is not being starved.
                self._watch.ran()
                with self._changed:
                    was_connected, self._connected = self._connected, False
                    self._changed.notify_all()
                if was_connected:
                    backoff, warned = _BACKOFF_START, False
                # One warning per outage, then debug: an agent that is still starting
                # should not flood the worker's log.
                if warned:
                    _log.debug("vitals: agent unreachable: %s", err)
                else:
                    warned = True
                    _log.warning(
                        "vitals: agent at %s unreachable: %s; "
                        "retrying (backoff %.1f s, capped at 1 s)",
                        self._socket_path,
                        err,
                        backoff,
                    )
            if self._wait(None, time.monotonic() + backoff):
                return
            backoff = min(backoff * 2, _BACKOFF_CAP)

    def _session(self):
        """One connection: hello, welcome, resync, then updates and heartbeats until it
        breaks (raises) or the reporter stops (returns)."""
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            sock.settimeout(_IO_TIMEOUT)
            sock.connect(self._socket_path)
            hello = {
                "type": "hello",
                "v": 1,
                "worker": self._name,
                "instance": self._instance,
                "pid": os.getpid(),
                "version": self._version,
                "heartbeat_ms": self._heartbeat_ms,
            }
            sock.sendall(_line(hello))
            welcome = self._welcome(sock)
            self._watch.ran()
            self._watch.hang_timeout_s = _count(welcome.get("hang_timeout_ms")) / 1000
            _log.info(
                "vitals: connected to agent %s (hang_timeout_ms=%s) as %s, instance %s",
                welcome.get("agent_version"),
                welcome.get("hang_timeout_ms"),
                self._name,
                self._instance,
            )
            with self._changed:
                self._connected = True
                # A new connection starts from nothing on the agent's side (it may have
                # restarted): send all we have (rule 1).
                self._dirty_phase = self._phase is not None
                self._dirty_checks = dict.fromkeys(self._checks)
                self._changed.notify_all()
            self._stream(sock)
        finally:
            sock.close()

    def _welcome(self, sock):
        buf = b""
        while b"\n" not in buf:
            chunk = sock.recv(4096)
            if not chunk:
                raise _SessionEnded("agent closed the connection before welcome")
            buf += chunk
            if len(buf) > _MAX_LINE + 1:
                raise _SessionEnded("agent's reply to hello is too long")
        try:
            reply = json.loads(buf.split(b"\n", 1)[0])
        except ValueError as err:
            raise _SessionEnded(f"agent's reply to hello is not JSON: {err}") from None
        if not isinstance(reply, dict):
            raise _SessionEnded(f"unexpected reply to hello: {reply!r}")
        if reply.get("type") == "error":
            # `name_in_use` lands here: the agent still sees our previous connection;
            # the backoff retry is the documented answer (rule 3).
            raise _SessionEnded(
                f"agent refused hello ({reply.get('code')}): {reply.get('message')}"
            )
        if reply.get("type") != "welcome":
            raise _SessionEnded(f"unexpected reply to hello: {reply!r}")
        return reply

    def _stream(self, sock):
        seq = 0
        next_beat = time.monotonic()
        while True:
            with self._changed:
                updates = []
                if self._dirty_phase and self._phase is not None:
                    updates.append(self._phase)
                self._dirty_phase = False
                updates.extend(self._checks[n] for n in self._dirty_checks)
                self._dirty_checks = {}
                self._writing = bool(updates)
                stopping = self._stopping
            if updates:
                sock.sendall(b"".join(_line(u) for u in updates))
                with self._changed:
                    self._writing = False
                    self._changed.notify_all()
            if stopping:
                return
            now = time.monotonic()
            if now >= next_beat:
                seq += 1
                beat = {
                    "type": "heartbeat",
                    "seq": seq,
                    "progress": self.progress,
                    "pending": _count(self.pending),
                    "in_flight": _count(self.in_flight),
                }
                sock.sendall(_line(beat))
                # After a long stall, do not burst to catch up.
                next_beat = max(next_beat + self._heartbeat_s, now)
            if self._wait(sock, next_beat):
                return

    def _wait(self, sock, deadline):
        """Sleeps until `deadline`, a wake-up or agent data; returns whether to stop.

        Every sleep of the reporter thread goes through here, so this is where it notices
        that it was starved, and where it watches the inference loop.
        """
        # poll, not select: a model server may hold more than FD_SETSIZE (1024) files.
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        if sock is not None:
            poller.register(sock, select.POLLIN)
        started = time.monotonic()
        events = poller.poll(max(0, math.ceil((deadline - started) * 1000)))
        readable = {fd for fd, _ in events}
        starved = self._watch.woke(started, deadline, self._heartbeat_s)
        phase = self._phase["phase"] if self._phase is not None else None
        outstanding = (_count(self.pending), _count(self.in_flight))
        self._watch.loop(self.progress, phase, outstanding, time.monotonic(), trust=not starved)
        if self._wake_r.fileno() in readable:
            try:
                while self._wake_r.recv(4096):
                    pass
            except BlockingIOError:
                pass
        if sock is not None and sock.fileno() in readable:
            # The agent only speaks again to say `error` before it closes the connection.
            data = sock.recv(_MAX_LINE + 1)
            if not data:
                raise _SessionEnded("agent closed the connection")
            raise _SessionEnded(
                f"agent closed the connection: {data.decode('utf-8', 'replace').strip()}"
            )
        with self._lock:
            return self._stopping


class _Watch:
    """What the reporter thread concludes about the inference loop and about itself."""

    def __init__(self, stall_timeout_s=None):
        #: The agent's hang timeout, from the latest `welcome`; 0 until one arrives.
        self.hang_timeout_s = 0.0
        #: The agent's stall timeout when configured; None when unknown.
        self._stall_timeout_s = stall_timeout_s
        self._progress = None
        self._moved_at = 0.0
        self._phase = None
        self._dumped = False
        self._ran_at = time.monotonic()
        self._cpu_at = time.process_time()

    def ran(self):
        """The reporter thread runs now after waiting for a reason (on the agent)."""
        self._ran_at, self._cpu_at = time.monotonic(), time.process_time()

    def woke(self, started, deadline, heartbeat_s):
        """The thread is back from a sleep that began at `started` and was due to end by
        `deadline`; returns whether it was starved, and says why when it was.

        Between two sleeps the thread only computes (microseconds) and writes to a socket
        the agent reads, and a sleep ends at its deadline or earlier. Any more time than
        that, the thread was runnable but could not run: something held the GIL. The
        process's CPU time since the thread last ran tells spinning from blocked.
        """
        woke, cpu = time.monotonic(), time.process_time()
        lost = (started - self._ran_at) + max(0.0, woke - max(deadline, started))
        wall, used = woke - self._ran_at, cpu - self._cpu_at
        self._ran_at, self._cpu_at = woke, cpu
        if lost <= max(_STARVED_MIN_S, heartbeat_s):
            return False
        cores = used / wall if wall > 0 else 0.0
        if cores >= _SPIN_CORES:
            diagnosis = (
                "spinning: a call that does not release the GIL "
                "(a C extension, a regular expression) held it"
            )
        else:
            diagnosis = (
                "blocked: the process did not run "
                "(stopped, swapped out, or a call holding the GIL was waiting)"
            )
        limit = (
            f"; the agent fails liveness at {self.hang_timeout_s:g} s"
            if self.hang_timeout_s
            else ""
        )
        _log.warning(
            "vitals: the reporter thread could not run for %.2f s (heartbeats late); the process "
            "used %.2f s of CPU in %.2f s (%.2f cores): %s%s",
            lost,
            used,
            wall,
            cores,
            diagnosis,
            limit,
        )
        return True

    def dump_after_s(self):
        """How long `tick` may stand still before the stacks are dumped: half the agent's
        hang timeout, or its stall timeout when that is known and shorter, so the dump comes
        before (or with) `loop_stalled`; None before the first `welcome`."""
        if not self.hang_timeout_s:
            return None
        half_hang = self.hang_timeout_s / 2
        if self._stall_timeout_s is None:
            return half_hang
        return min(half_hang, self._stall_timeout_s)

    def loop(self, progress, phase, outstanding, now, trust):
        """Dumps every thread's stack once per stall: `tick` has not moved for
        `dump_after_s()`, in `ready` or `draining`, idle or not. The agent's `loop_stalled`
        asks nothing about outstanding work (the loop ticks when idle too, SPEC §2), so an
        idle loop that stops ticking is a stall and gets its dump.

        `trust` is false right after the thread was starved: the loop could not tick then
        either, so the stall clock starts again from there. Counting the starved time would
        dump the stacks of a loop that has just got the GIL back and not yet ticked.
        """
        if progress != self._progress or phase != self._phase:
            # A loop that only starts once loading is over is not stalled at `ready`
            # (the agent restarts its loop clock there too, SPEC §7).
            self._progress, self._phase, self._moved_at, self._dumped = progress, phase, now, False
            return
        if not trust:
            self._moved_at = now
            return
        stalled_for = now - self._moved_at
        dump_after = self.dump_after_s()
        if (
            self._dumped
            or dump_after is None
            or phase not in ("ready", "draining")
            or stalled_for < dump_after
        ):
            return
        self._dumped = True
        pending, in_flight = outstanding
        out = sys.stderr if _has_fileno(sys.stderr) else sys.__stderr__
        try:
            out.write(
                f"vitals: the inference loop has not ticked for {stalled_for:.1f} s "
                f"(dumped after {dump_after:g} s, before the agent's loop_stalled restarts it) with "
                f"{pending} pending and {in_flight} in flight; every thread's stack follows, "
                "once per stall\n"
            )
            out.flush()
            faulthandler.dump_traceback(file=out, all_threads=True)
        except (OSError, ValueError, AttributeError):
            # No usable stderr: nothing to write the dump to, and nothing to raise into.
            pass


def _has_fileno(stream):
    try:
        stream.fileno()
    except (AttributeError, OSError, ValueError):
        return False
    return True

"""Test harness: the real vitals-agent binary on a free loopback port and a temp socket,
worker processes (tests/worker.py or an example) with their output in files, and a
kubelet-like HTTP client. Every wait polls with a deadline; nothing sleeps to synchronise.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.error
import urllib.request

from vitals_reporter import env as vitals_env

HERE = os.path.dirname(os.path.abspath(__file__))
PACKAGE = os.path.dirname(HERE)
REPO = os.path.dirname(os.path.dirname(PACKAGE))
SRC = os.path.join(PACKAGE, "src")
EXAMPLES = os.path.join(PACKAGE, "examples")
WORKER = os.path.join(HERE, "worker.py")

#: How long any condition may take to come true before a test fails.
DEADLINE = 10.0
_POLL = 0.02


def agent_bin():
    """The agent binary: $VITALS_AGENT_BIN, else <repo>/target/debug/vitals-agent."""
    return os.environ.get("VITALS_AGENT_BIN") or os.path.join(
        REPO, "target", "debug", "vitals-agent"
    )


def free_port():
    """A loopback port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what, probe, deadline=DEADLINE):
    """Polls `probe()` until it returns something truthy; fails naming `what` and the
    last value seen. Returns that value and the seconds it took."""
    start = time.monotonic()
    last = None
    while True:
        last = probe()
        if last:
            return last, time.monotonic() - start
        if time.monotonic() - start > deadline:
            raise AssertionError(f"{what}: not within {deadline:g} s (last: {last!r})")
        time.sleep(_POLL)


class Agent:
    """A vitals-agent process; `restart()` keeps its port and socket."""

    def __init__(self, workdir, *flags):
        path = agent_bin()
        if not os.access(path, os.X_OK):
            raise AssertionError(
                f"vitals-agent binary not found at {path}: run `cargo build -p vitals-agent` "
                "or set VITALS_AGENT_BIN"
            )
        self.port = free_port()
        self.socket = os.path.join(workdir, "run", "vitals", "agent.sock")
        self._log = os.path.join(workdir, "agent.log")
        self._argv = [
            path,
            "run",
            "--listen",
            f"127.0.0.1:{self.port}",
            "--socket",
            self.socket,
            "--proc-interval",
            "100ms",
            "--shutdown-grace",
            "0s",
            *flags,
        ]
        self.proc = None
        self.start()

    def start(self):
        """Starts the agent and waits until its own /livez passes."""
        with open(self._log, "ab") as log:
            self.proc = subprocess.Popen(self._argv, stdout=log, stderr=subprocess.STDOUT)
        wait_for("agent /livez", lambda: self.get("/livez")[0] == 200)

    def kill(self):
        """SIGKILL, as an OOM kill or a node problem would end it."""
        self.proc.kill()
        self.proc.wait()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()

    def get(self, path):
        """(status, body) of one GET; (None, error) when nothing answers."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
        except OSError as e:
            return None, str(e)

    def worker(self, name):
        """This worker's entry in /status, or None."""
        code, body = self.get("/status")
        if code != 200:
            return None
        for w in json.loads(body)["workers"]:
            if w["name"] == name:
                return w
        return None

    def log(self):
        with open(self._log, encoding="utf-8", errors="replace") as f:
            return f.read()


class Proc:
    """A Python process (a worker), stdout and stderr kept in files, commands on stdin."""

    def __init__(self, workdir, label, argv, env):
        self.out_path = os.path.join(workdir, f"{label}.out")
        self.err_path = os.path.join(workdir, f"{label}.err")
        full_env = dict(os.environ)
        full_env.update(env)
        full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [SRC, os.environ.get("PYTHONPATH")]))
        full_env["PYTHONUNBUFFERED"] = "1"
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, *argv], stdin=subprocess.PIPE, stdout=out, stderr=err, env=full_env
            )
        self.pid = self.proc.pid

    def send(self, command):
        """One command line to tests/worker.py."""
        self.proc.stdin.write(command.encode() + b"\n")
        self.proc.stdin.flush()

    def stdout(self):
        with open(self.out_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def stderr(self):
        with open(self.err_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def wait_stderr(self, text, deadline=DEADLINE):
        return wait_for(f"{text!r} in stderr", lambda: text in self.stderr(), deadline)[1]

    def wait_stdout(self, text, deadline=DEADLINE):
        """Waits for a line starting with `text`; returns that line."""

        def line():
            lines = self.stdout().splitlines()
            return next((line for line in lines if line.startswith(text)), None)

        return wait_for(f"{text!r} in stdout", line, deadline)[0]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.proc.stdin.close()


class AgentTest(unittest.TestCase):
    """A temp folder per test; agents and processes started in it are stopped after."""

    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory(prefix="vitals-py-")
        self.dir = self._tmp.name
        self._agents = []
        self._procs = []
        self.addCleanup(self._tmp.cleanup)
        self.addCleanup(self._stop_all)

    def _stop_all(self):
        for p in self._procs:
            p.stop()
        for a in self._agents:
            a.stop()

    def agent(self, *flags):
        a = Agent(self.dir, *flags)
        self._agents.append(a)
        return a

    def worker(self, agent, label="worker", name="model", heartbeat_ms=200, argv=None, env=None):
        """tests/worker.py (or `argv`) reporting to `agent` as `name`."""
        full_env = {vitals_env.AGENT_SOCKET: agent.socket, vitals_env.NAME: name}
        full_env.update(env or {})
        args = argv if argv is not None else [WORKER, "--heartbeat-ms", str(heartbeat_ms)]
        p = Proc(self.dir, label, args, full_env)
        self._procs.append(p)
        return p

    def wait_probe(self, agent, path, code, body=None, deadline=DEADLINE):
        """Waits until `path` answers `code` (and `body`, when given); returns the seconds."""

        def probe():
            c, b = agent.get(path)
            return c == code and (body is None or b == body)

        try:
            return wait_for(f"{path} -> {code} {body or ''}", probe, deadline)[1]
        except AssertionError as e:
            raise AssertionError(f"{e}; now {agent.get(path)}") from None

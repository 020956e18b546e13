"""The Reporter API in this process: no-op without a socket, never raising while the agent
is away, a thread-safe tick, loading progress from a file and from steps, and the context
manager reporting an escaping exception as `failed`."""

import os
import threading
import unittest

import vitals_reporter
from vitals_reporter import _reporter
from vitals_reporter import env as vitals_env
from harness import AgentTest, wait_for


class WithoutAgentTest(unittest.TestCase):
    def test_without_a_socket_it_is_a_noop_that_logs_once(self):
        _reporter._noop_logged = False
        before = threading.active_count()
        with self.assertLogs("vitals_reporter", "WARNING") as logs:
            first = vitals_reporter.Reporter(name="model", socket="")
            second = vitals_reporter.Reporter(name="", socket="")
        self.assertEqual(len(logs.records), 1, logs.output)
        self.assertIn(f"{vitals_env.AGENT_SOCKET} is not set", logs.output[0])
        with first as r:
            r.phase("loading", "weights", done=1, total=2, unit="bytes")
            r.check("device", True, "cpu")
            r.tick()
            r.pending, r.in_flight = 3, 1
            self.assertFalse(r.failed("nothing to tell", timeout=0.01))
        self.assertEqual(first.progress, 1)
        second.close()
        self.assertEqual(threading.active_count(), before, "no thread started")

    def test_agent_gone_never_raises_into_the_caller(self):
        missing = "/nonexistent/vitals/agent.sock"
        with self.assertLogs("vitals_reporter", "WARNING") as logs:
            r = vitals_reporter.Reporter(name="model", socket=missing, heartbeat_ms=50)
            r.phase("ready", "serving")
            r.check("device", False, "x" * 100_000)
            r.tick(10)
            r.pending = None
            self.assertFalse(r.failed("gone", timeout=0.3))
            wait_for("the warning", lambda: logs.output)
        r.close()
        self.assertIn("unreachable", logs.output[0])
        self.assertEqual(
            len([line for line in logs.output if "unreachable" in line]), 1, "once per outage"
        )

    def test_tick_counts_every_call_from_many_threads(self):
        r = vitals_reporter.Reporter(socket="")

        def loop():
            for _ in range(20_000):
                r.tick()
                r.tick(3)

        threads = [threading.Thread(target=loop) for _ in range(4)]
        for t in threads:
            t.start()
        reads = [r.progress for _ in range(100)]
        for t in threads:
            t.join()
        self.assertEqual(r.progress, 4 * 20_000 * 4)
        self.assertEqual(reads, sorted(reads), "progress only moves forward")

    def test_invalid_arguments_are_refused_at_once(self):
        with self.assertRaisesRegex(ValueError, "worker name"):
            vitals_reporter.Reporter(name="Model_1", socket="/tmp/x.sock")
        with self.assertRaisesRegex(ValueError, "heartbeat_ms"):
            vitals_reporter.Reporter(socket="", heartbeat_ms=0)
        with self.assertRaisesRegex(ValueError, "stall_timeout_ms"):
            vitals_reporter.Reporter(socket="", stall_timeout_ms=0)
        with self.assertRaisesRegex(ValueError, "phase must be one of"):
            vitals_reporter.Reporter(socket="").phase("serving")

    def test_a_stalled_loop_is_dumped_no_later_than_the_agent_fails_it(self):
        # Half the hang timeout, or the configured stall timeout when that comes first;
        # nothing before the agent has said its hang timeout.
        self.assertIsNone(_reporter._Watch().dump_after_s())
        for stall, hang, expected in ((None, 10.0, 5.0), (30.0, 10.0, 5.0), (2.0, 10.0, 2.0)):
            watch = _reporter._Watch(stall)
            watch.hang_timeout_s = hang
            self.assertEqual(watch.dump_after_s(), expected, (stall, hang))


class WithAgentTest(AgentTest):
    def progress(self, agent, name):
        inst = agent.worker(name)["instance"]
        return inst and (inst["phase"], inst["detail"], inst["progress"])

    def test_loading_progress_from_a_file_and_from_steps(self):
        agent = self.agent("--expect", "loader")
        weights = os.path.join(self.dir, "weights.bin")
        content = os.urandom(3 << 20)
        with open(weights, "wb") as f:
            f.write(content)
        r = vitals_reporter.Reporter(name="loader", socket=agent.socket, heartbeat_ms=100)
        self.addCleanup(r.close)
        with r.open(weights) as f:
            self.assertEqual(f.read(16), content[:16])
            wait_for(
                "a partial read reported",
                lambda: (
                    (p := self.progress(agent, "loader"))
                    and p[2]
                    and p[2]["done"] < len(content)
                    and p
                ),
            )
            code, verbose = agent.get("/readyz/loader?verbose")
            self.assertEqual(code, 503)
            self.assertIn("[-]phase failed: phase: loading", verbose)
            f.seek(0)
            self.assertEqual(f.read(), content)
        total = {"done": len(content), "total": len(content), "unit": "bytes"}
        wait_for(
            "the whole file reported",
            lambda: self.progress(agent, "loader") == ("loading", "reading weights.bin", total),
        )
        for _ in r.steps(["embeddings", "encoder", "pooler"], "loading layers", unit="layers"):
            pass
        layers = {"done": 3, "total": 3, "unit": "layers"}
        wait_for(
            "every step reported",
            lambda: self.progress(agent, "loader") == ("loading", "loading layers", layers),
        )
        self.assertEqual(agent.get("/livez/loader"), (200, "ok"), "a load that moves is live")
        r.phase("ready", "serving")
        self.wait_probe(agent, "/readyz/loader", 200, "ok")

    def test_exception_escaping_the_with_block_is_reported_failed(self):
        agent = self.agent("--expect", "model")
        reporter = vitals_reporter.Reporter(name="model", socket=agent.socket, heartbeat_ms=100)
        with self.assertRaises(RuntimeError), reporter as r:
            r.phase("ready", "serving")
            self.assertTrue(r.flush(5.0))
            raise RuntimeError("lost the CUDA context")
        inst = agent.worker("model")["instance"]
        self.assertEqual(
            (inst["phase"], inst["detail"]), ("failed", "RuntimeError: lost the CUDA context")
        )

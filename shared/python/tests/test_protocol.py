"""The reporter in a worker process against the real agent: handshake, resync after an
agent restart, `name_in_use`, a deadlocked loop, a GIL-holding call, `failed` on exit."""

from harness import DEADLINE, AgentTest, wait_for

_DUMP_HEADER = "vitals: the inference loop has not ticked"


class ProtocolTest(AgentTest):
    def test_handshake_registers_the_worker_process(self):
        agent = self.agent("--expect", "model")
        worker = self.worker(agent)
        self.wait_probe(agent, "/readyz/model", 200, "ok")
        inst = agent.worker("model")["instance"]
        self.assertEqual(inst["pid"], worker.pid, "SO_PEERCRED sees the worker itself")
        self.assertEqual(inst["hello_pid"], worker.pid)
        self.assertEqual(inst["version"], "test-1.0")
        self.assertEqual(inst["heartbeat_ms"], 200)
        self.assertRegex(inst["id"], rf"^{worker.pid}-[0-9a-f]+-[0-9a-f]{{8}}$")
        self.assertIn("hang_timeout_ms=10000", worker.stderr())
        # Heartbeats keep coming from the reporter's thread, and the idle loop's ticks move.
        first = inst["heartbeat"]
        later, _ = wait_for(
            "two more heartbeats with progress",
            lambda: (
                (h := agent.worker("model")["instance"]["heartbeat"])["seq"] >= first["seq"] + 2
                and h["progress"] > first["progress"]
                and h
            ),
        )
        self.assertEqual((later["pending"], later["in_flight"]), (0, 0))

    def test_checks_gate_readiness_in_verbose_readyz(self):
        agent = self.agent("--expect", "model")
        worker = self.worker(agent)
        self.wait_probe(agent, "/readyz/model", 200, "ok")
        code, body = agent.get("/readyz/model?verbose")
        self.assertEqual(code, 200)
        self.assertIn("[+]phase ok", body)
        self.assertIn("[+]check:device ok", body)
        worker.send("check device fail cuda: out of memory")
        self.wait_probe(agent, "/readyz/model", 503, "fail: check: device: cuda: out of memory")
        code, body = agent.get("/readyz/model?verbose")
        self.assertIn("[-]check:device failed: check: device: cuda: out of memory", body)
        self.assertEqual(agent.get("/livez/model"), (200, "ok"), "a failing check is not a hang")
        worker.send("check device ok cuda:0")
        self.wait_probe(agent, "/readyz/model", 200, "ok")

    def test_agent_restart_resyncs_phase_and_checks_within_two_seconds(self):
        agent = self.agent("--expect", "model")
        worker = self.worker(agent)
        worker.send("check tokenizer ok 30522 tokens")
        wait_for(
            "tokenizer check",
            lambda: "[+]check:tokenizer ok" in agent.get("/readyz/model?verbose")[1],
        )
        instance = agent.worker("model")["instance"]["id"]
        agent.kill()
        agent.start()
        took = self.wait_probe(agent, "/readyz/model", 200, "ok", deadline=2.0)
        print(f"ready again {took:.2f} s after the agent came back", end=" ... ")
        doc = agent.worker("model")
        self.assertEqual(
            doc["instance"]["id"], instance, "same instance: a reconnect, not a restart"
        )
        self.assertEqual(
            {c["name"]: c["ok"] for c in doc["instance"]["checks"]},
            {"device": True, "tokenizer": True},
        )
        self.assertEqual(worker.stderr().count("unreachable"), 1, "one warning per outage")

    def test_second_process_with_the_same_name_gets_name_in_use_and_retries(self):
        agent = self.agent("--expect", "model")
        first = self.worker(agent, label="first")
        self.wait_probe(agent, "/readyz/model", 200, "ok")
        second = self.worker(agent, label="second")
        second.wait_stderr("(name_in_use)")
        self.assertEqual(agent.worker("model")["instance"]["pid"], first.pid)
        first.stop()
        wait_for(
            "the second process takes the name over",
            lambda: (agent.worker("model")["instance"] or {}).get("pid") == second.pid,
        )
        self.wait_probe(agent, "/readyz/model", 200, "ok")

    def stall_until_loop_stalled(self, command):
        """A ready worker told to stall its loop (`command`), and its agent once /livez/model
        fails `loop_stalled`: within the stall timeout (3 s) + the hang timeout (2 s)."""
        agent = self.agent("--expect", "model", "--hang-timeout", "2s", "--stall-timeout", "3s")
        worker = self.worker(agent)
        self.wait_probe(agent, "/readyz/model", 200, "ok")
        worker.send(command)
        took = self.wait_probe(agent, "/livez/model", 503, "fail: loop_stalled", deadline=3 + 2)
        print(f"loop_stalled after {took:.2f} s", end=" ... ")
        return agent, worker

    def test_deadlocked_inference_thread_fails_liveness_and_dumps_its_stack_once(self):
        agent, worker = self.stall_until_loop_stalled("deadlock")
        # Heartbeats still arrive (the reporter's thread is fine): the loop is what stopped.
        self.assertLess(agent.worker("model")["instance"]["heartbeat_age_seconds"], 1.0)
        err = worker.stderr()
        self.assertEqual(err.count(_DUMP_HEADER), 1, err)
        self.assertIn("2 pending and 1 in flight", err)
        dump = err[err.index(_DUMP_HEADER) :]
        self.assertRegex(dump, r'File ".*worker\.py", line \d+ in stuck_in_inference')
        # The header and the stuck thread's stack, as evidence in the test log.
        print("\n" + dump.split("\n\n")[0], end="\n... ")

    def test_idle_loop_that_stops_ticking_fails_liveness_and_dumps_its_stack_once(self):
        # SPEC §2: the loop ticks when idle too, so the agent fails an idle loop that stops
        # with `loop_stalled`; the reporter must leave the same trace as for a busy one.
        agent, worker = self.stall_until_loop_stalled("idle-stall")
        heartbeat = agent.worker("model")["instance"]["heartbeat"]
        self.assertEqual((heartbeat["pending"], heartbeat["in_flight"]), (0, 0))
        err = worker.stderr()
        self.assertEqual(err.count(_DUMP_HEADER), 1, err)
        self.assertIn("0 pending and 0 in flight", err)
        dump = err[err.index(_DUMP_HEADER) :]
        self.assertRegex(dump, r'File ".*worker\.py", line \d+ in stuck_while_idle')

    def test_gil_held_shorter_than_hang_timeout_stays_live_and_is_diagnosed_spinning(self):
        agent = self.agent("--expect", "model", "--hang-timeout", "10s", "--stall-timeout", "12s")
        worker = self.worker(agent)
        self.wait_probe(agent, "/readyz/model", 200, "ok")
        worker.send("gil 2.5")
        answers = set()

        def hold_over():
            answers.add(agent.get("/livez/model"))
            return "gil-held" in worker.stdout()

        wait_for("the GIL hold to end", hold_over, deadline=DEADLINE)
        held = float(worker.wait_stdout("gil-held").split()[1])
        print(f"GIL held {held:.2f} s", end=" ... ")
        self.assertGreater(held, 0.8, "the regex held the GIL long enough to starve the reporter")
        self.assertEqual(answers, {(200, "ok")}, "liveness never failed")
        worker.wait_stderr("cores): spinning")
        line = next(line for line in worker.stderr().splitlines() if "spinning" in line)
        self.assertRegex(line, r"the reporter thread could not run for \d+\.\d+ s")
        print("\n" + line, end="\n... ")

    def test_gil_held_longer_than_hang_timeout_fails_liveness_until_it_returns(self):
        agent = self.agent("--expect", "model", "--hang-timeout", "1s", "--stall-timeout", "8s")
        worker = self.worker(agent)
        self.wait_probe(agent, "/readyz/model", 200, "ok")
        worker.send("gil 3")

        def timed_out():
            w = agent.worker("model")
            return w["live"]["reason"] == "heartbeat_timeout" and w["diagnosis"]

        # The agent's own diagnosis needs half a core over its last /proc interval, which
        # a loaded CI machine may not give the regex: it may say `blocked` there.
        diagnosis, _ = wait_for("heartbeat_timeout with a diagnosis", timed_out)
        print(f"agent: heartbeat_timeout, {diagnosis}", end=" ... ")
        self.assertIn(diagnosis, ("spinning", "blocked"))
        worker.wait_stdout("gil-held")
        worker.wait_stderr("cores): spinning")
        # Once the call returns, heartbeats resume and the worker is live again.
        self.wait_probe(agent, "/livez/model", 200, "ok")

    def test_failed_reaches_the_agent_before_the_process_exits(self):
        agent = self.agent("--expect", "model")
        worker = self.worker(agent)
        self.wait_probe(agent, "/readyz/model", 200, "ok")
        worker.send("fail weights corrupt: checksum mismatch")
        self.assertEqual(worker.proc.wait(DEADLINE), 3)
        self.assertIn("failed sent=True", worker.stdout())
        inst = agent.worker("model")["instance"]
        self.assertEqual(
            (inst["phase"], inst["detail"]), ("failed", "weights corrupt: checksum mismatch")
        )

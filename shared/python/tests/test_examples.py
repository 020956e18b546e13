"""The examples: the plain-threads server runs against the real agent; the FastAPI one
(fastapi is not a test dependency) must at least compile."""

import json
import os
import signal
import urllib.request

from harness import DEADLINE, EXAMPLES, AgentTest, free_port


class ExamplesTest(AgentTest):
    def test_plain_threads_server_is_ready_serves_and_drains(self):
        agent = self.agent("--expect", "model")
        port = free_port()
        server = self.worker(
            agent,
            label="plain",
            argv=[os.path.join(EXAMPLES, "plain_threads.py"), "--listen", f"127.0.0.1:{port}"],
        )
        self.wait_probe(agent, "/readyz/model", 200, "ok")
        server.wait_stdout("listening on")
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/embed",
            data=json.dumps({"input": ["hello", "world"]}).encode(),
        )
        with urllib.request.urlopen(request, timeout=DEADLINE) as r:
            embeddings = json.load(r)["embeddings"]
        self.assertEqual([len(e) for e in embeddings], [16, 16])
        self.assertNotEqual(embeddings[0], embeddings[1])
        inst = agent.worker("model")["instance"]
        self.assertEqual(inst["version"], "plain-threads-example")
        self.assertEqual(inst["checks"], [{"name": "device", "ok": True, "message": "cpu"}])
        server.proc.send_signal(signal.SIGTERM)
        self.assertEqual(server.proc.wait(DEADLINE), 0, server.stderr())
        self.assertEqual(agent.worker("model")["instance"]["phase"], "draining")

    def test_fastapi_example_compiles(self):
        path = os.path.join(EXAMPLES, "fastapi_app.py")
        with open(path, encoding="utf-8") as f:
            compile(f.read(), path, "exec")

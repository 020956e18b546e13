"""A model server with no framework: http.server threads for the API, one inference thread
fed by a queue, and Vitals for readiness and liveness (the probes go to the agent's port).

    VITALS_NAME=model VITALS_AGENT_SOCKET=/run/vitals/agent.sock \\
        python3 plain_threads.py --listen 0.0.0.0:8080

    curl -s localhost:8080/embed -d '{"input": ["hello", "world"]}'

SIGTERM drains: the agent takes the pod out of the Service at once, queued requests finish,
then the process exits 0. Needs only the standard library and vitals_reporter.
"""

import argparse
import json
import queue
import signal
import threading
from concurrent.futures import Future
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import fake_model
from inference import inference_loop
from vitals_reporter import Reporter



def handler(reporter, jobs, draining):
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            if self.path != "/embed":
                return self.reply(404, {"error": "not found"})
            if draining.is_set():
                return self.reply(503, {"error": "draining"})
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                texts = body["input"]
                texts = [texts] if isinstance(texts, str) else [str(t) for t in texts]
            except (ValueError, KeyError, TypeError):
                return self.reply(400, {"error": 'expected {"input": ["text", ...]}'})
            future = Future()
            try:
                jobs.put_nowait((texts, future))
            except queue.Full:
                return self.reply(503, {"error": "queue full"})
            reporter.pending = jobs.qsize()
            self.reply(200, {"embeddings": future.result()})

        def reply(self, code, doc):
            body = json.dumps(doc).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    return Handler


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--listen", default="127.0.0.1:8080", help="host:port of the API")
    parser.add_argument("--weights", help="weights file (default: 4 MiB of random bytes)")
    args = parser.parse_args()
    host, port = args.listen.rsplit(":", 1)

    reporter = Reporter(version="plain-threads-example")
    model = fake_model.load(reporter, args.weights)
    reporter.phase("warming", "warm-up batch")
    model.embed(["warm-up"] * 8)
    reporter.check("device", True, "cpu")

    jobs = queue.Queue(maxsize=1024)
    loop = threading.Thread(target=inference_loop, args=(reporter, model, jobs), name="inference")
    loop.start()
    draining = threading.Event()
    server = ThreadingHTTPServer((host, int(port)), handler(reporter, jobs, draining))
    # Request threads are joined at server_close, so answers to drained requests go out.
    server.daemon_threads = False

    def drain(signum, frame):
        # Out of the Service first (the agent fails /readyz at once), then stop accepting.
        draining.set()
        reporter.phase("draining", f"signal {signum}: finishing {jobs.qsize()} queued")
        threading.Thread(target=server.shutdown).start()

    signal.signal(signal.SIGTERM, drain)
    signal.signal(signal.SIGINT, drain)
    reporter.phase("ready", "serving")
    print(f"listening on http://{host}:{server.server_address[1]}", flush=True)
    server.serve_forever()
    jobs.put(None)
    loop.join()
    server.server_close()
    reporter.close()


if __name__ == "__main__":
    main()

"""A scripted model server for the tests: loads in steps, turns ready, and runs an
inference thread fed by a queue, as a real server would; stdin commands inject faults.

Commands (one per line): `check NAME ok|fail MESSAGE`, `deadlock` (the inference thread
blocks forever on a lock, with work queued behind it), `idle-stall` (the idle inference
thread blocks forever on a lock, nothing pending or in flight), `gil SECONDS` (the
inference thread runs a catastrophic regular expression that holds the GIL about that
long), `fail DETAIL` (reports `failed` and exits 3). It prints `ready` when it is, and `gil-held S` after a hold.
"""

import argparse
import logging
import math
import queue
import re
import sys
import threading
import time

from vitals_reporter import Reporter

# `\d+x` against digits with no `x`: every start position scans to the end and backtracks,
# so the time grows with the square of the length, and sre never releases the GIL.
_CATASTROPHIC = re.compile(r"\d+x")
_CALIBRATION_LEN = 500


def _search(length):
    started = time.perf_counter()
    _CATASTROPHIC.search("1" * length)
    return time.perf_counter() - started


def hold_gil(seconds):
    """Runs the regex long enough to hold the GIL for about `seconds`; returns how long.

    The machine's load changes the speed under us: a hold far shorter than asked is
    measured again from what it took, at most three times."""
    # Calibrate on a run long enough (50 ms) to measure on a busy machine.
    length, took = _CALIBRATION_LEN, 0.0
    while took < 0.05:
        length *= 2
        took = _search(length)
    for _ in range(3):
        length = int(length * math.sqrt(seconds / took))
        took = _search(length)
        if took >= seconds / 2:
            break
    return took


def stuck_in_inference(lock):
    """A deadlock: the lock is held by the main thread and never released."""
    lock.acquire()


def stuck_while_idle(lock):
    """An idle loop that stops: no work anywhere, the lock is never released."""
    lock.acquire()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--heartbeat-ms", type=int, default=200)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    reporter = Reporter(heartbeat_ms=args.heartbeat_ms, version="test-1.0")
    for _ in reporter.steps(range(3), "loading layers", unit="layers"):
        pass
    reporter.check("device", True, "cpu")
    reporter.phase("warming", "warm-up pass")
    jobs = queue.Queue()
    held = threading.Lock()
    held.acquire()
    stall_idle = threading.Event()

    def inference_loop():
        while True:
            try:
                job = jobs.get(timeout=0.25)
            except queue.Empty:
                if stall_idle.is_set():
                    stuck_while_idle(held)
                reporter.tick()
                continue
            reporter.pending = jobs.qsize()
            reporter.in_flight = 1
            kind, arg = job
            if kind == "deadlock":
                stuck_in_inference(held)
            elif kind == "gil":
                print(f"gil-held {hold_gil(float(arg)):.2f}", flush=True)
            reporter.in_flight = 0
            reporter.pending = jobs.qsize()
            reporter.tick()

    threading.Thread(target=inference_loop, name="inference", daemon=True).start()
    reporter.phase("ready", "serving")
    print("ready", flush=True)
    for line in sys.stdin:
        command, _, rest = line.strip().partition(" ")
        if command == "check":
            name, state, message = rest.split(" ", 2)
            reporter.check(name, state == "ok", message)
        elif command == "deadlock":
            jobs.put(("deadlock", None))
            # Work queued behind the stuck job, as requests would be.
            jobs.put(("noop", None))
            jobs.put(("noop", None))
            reporter.pending = jobs.qsize()
        elif command == "idle-stall":
            stall_idle.set()
        elif command == "gil":
            jobs.put(("gil", rest))
            reporter.pending = jobs.qsize()
        elif command == "fail":
            sent = reporter.failed(rest)
            print(f"failed sent={sent}", flush=True)
            sys.exit(3)
    reporter.close()


if __name__ == "__main__":
    main()

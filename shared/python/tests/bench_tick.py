"""The cost of the calls an inference loop makes, with timeit (best of 7), against the
real agent: `python3 shared/python/tests/bench_tick.py`. Not a test; README.md quotes it."""

import os
import sys
import tempfile
import timeit

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(os.path.dirname(HERE), "src"), HERE]

from harness import Agent  # noqa: E402
from vitals_reporter import Reporter  # noqa: E402


class _Empty:
    def tick(self, n=1):
        pass


def ns_per_call(statement, r):
    timer = timeit.Timer(statement, globals={"r": r})
    number, _ = timer.autorange()
    return min(timer.repeat(7, number)) / number * 1e9


def main():
    with tempfile.TemporaryDirectory(prefix="vitals-bench-") as workdir:
        agent = Agent(workdir)
        try:
            connected = Reporter(name="bench", socket=agent.socket)
            if not connected.flush(5.0):
                raise SystemExit("the reporter did not connect to the agent")
            rows = [
                ("r.tick(), connected to the agent", "r.tick()", connected),
                ("r.tick(), no-op reporter (no socket)", "r.tick()", Reporter(socket="")),
                ("r.tick(3) (takes a lock)", "r.tick(3)", connected),
                ("r.pending = 3", "r.pending = 3", connected),
                ("an empty method call, for scale", "r.tick()", _Empty()),
            ]
            for label, statement, r in rows:
                print(f"{ns_per_call(statement, r):7.1f} ns  {label}")
            connected.close()
        finally:
            agent.stop()


if __name__ == "__main__":
    main()

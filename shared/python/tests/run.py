"""Runs the Python reporter's tests (unittest discovery in this folder), prints each test's
time, and ends with `python: N passed, M failed`; the exit status is non-zero on any failure.
"""

import os
import sys
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
# The package under test is the source tree, not whatever is installed.
SRC = os.path.join(os.path.dirname(HERE), "src")


class TimedResult(unittest.TextTestResult):
    """Records how long each test took."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.timings = []

    def startTest(self, test):
        self._started = time.monotonic()
        super().startTest(test)

    def stopTest(self, test):
        self.timings.append((test.id(), time.monotonic() - self._started))
        super().stopTest(test)


def main():
    sys.path[:0] = [SRC, HERE]
    suite = unittest.defaultTestLoader.discover(HERE, top_level_dir=HERE)
    runner = unittest.TextTestRunner(verbosity=2, resultclass=TimedResult)
    result = runner.run(suite)
    print("\ntimings:")
    for name, seconds in result.timings:
        print(f"  {seconds:6.2f} s  {name}")
    failed = len(result.failures) + len(result.errors) + len(result.unexpectedSuccesses)
    print(f"python: {result.testsRun - failed - len(result.skipped)} passed, {failed} failed")
    return 0 if failed == 0 and result.testsRun > 0 else 1


if __name__ == "__main__":
    sys.exit(main())

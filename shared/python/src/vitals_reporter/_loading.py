"""Loading progress from what a model server does while it loads: reading a file, or
working through a list of steps (layers, shards, warm-up batches).

The agent kills a load only when its `progress.done` stops moving (rule 5 of
shared/README.md), so these report each movement; reports closer together than
`_MIN_INTERVAL_S` are coalesced, except the last one.
"""

import io
import os
import time

_MIN_INTERVAL_S = 0.1
_READALL_CHUNK = 1 << 20


class _Progress:
    """Reports `done` of `total` in `unit` as phase `phase`, at most every 100 ms."""

    def __init__(self, reporter, phase, detail, total, unit):
        self._reporter = reporter
        self._phase = phase
        self._detail = detail
        self._total = total
        self._unit = unit
        self._reported_at = None

    def report(self, done, final=False):
        now = time.monotonic()
        if (
            not final
            and self._reported_at is not None
            and now - self._reported_at < _MIN_INTERVAL_S
        ):
            return
        self._reported_at = now
        self._reporter.phase(
            self._phase, self._detail, done=done, total=self._total, unit=self._unit
        )


class _ReportingRaw(io.RawIOBase):
    """A raw binary file whose reads report the furthest offset reached as `done` bytes."""

    def __init__(self, path, progress):
        super().__init__()
        self._raw = io.FileIO(path, "rb")
        self._progress = progress
        self._size = os.fstat(self._raw.fileno()).st_size
        self._done = 0
        progress.report(0, final=True)

    def readable(self):
        return True

    def seekable(self):
        return True

    def readinto(self, buffer):
        n = self._raw.readinto(buffer)
        if n:
            done = min(self._raw.tell(), self._size)
            if done > self._done:
                self._done = done
                self._progress.report(done, final=done >= self._size)
        return n

    def readall(self):
        # `f.read()` of a whole weights file: 1 MiB reads rather than RawIOBase's 8 KiB.
        chunks = []
        while True:
            chunk = self.read(_READALL_CHUNK)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)

    def seek(self, offset, whence=io.SEEK_SET):
        return self._raw.seek(offset, whence)

    def tell(self):
        return self._raw.tell()

    def fileno(self):
        return self._raw.fileno()

    def close(self):
        if not self.closed:
            self._raw.close()
        super().close()


def open_reporting(reporter, path, detail, phase):
    """`Reporter.open`: a buffered binary file over `_ReportingRaw`."""
    size = os.stat(path).st_size
    if detail is None:
        detail = f"reading {os.path.basename(os.fspath(path))}"
    progress = _Progress(reporter, phase, detail, size, "bytes")
    return io.BufferedReader(_ReportingRaw(path, progress))


def steps_reporting(reporter, items, detail, total, unit, phase):
    """`Reporter.steps`: yields each item, then reports it done."""
    if total is None:
        try:
            total = len(items)
        except TypeError:
            # A generator: progress without a total still keeps the load alive.
            total = None
    progress = _Progress(reporter, phase, detail, total, unit)
    progress.report(0, final=True)
    done = 0
    for item in items:
        yield item
        done += 1
        progress.report(done)
    progress.report(done, final=True)

"""The inference loop both examples run on their own thread: the part of a model server
that reports to Vitals from where the work happens, not from the HTTP thread.

It takes `(texts, future)` jobs from a queue, publishes how much work waits and runs, and
ticks on every iteration, idle ones included: the agent tells a hung loop from an idle one
by `progress` moving (rule 4 of shared/README.md asks for a tick at least every 250 ms).
"""

import queue

# How long an idle loop waits for work before it ticks anyway.
IDLE_TICK_S = 0.25


def inference_loop(reporter, model, jobs):
    """Runs queued batches until it gets None; every iteration ticks, idle ones too."""
    while True:
        try:
            job = jobs.get(timeout=IDLE_TICK_S)
        except queue.Empty:
            reporter.tick()
            continue
        if job is None:
            return
        texts, future = job
        reporter.pending = jobs.qsize()
        reporter.in_flight = len(texts)
        try:
            future.set_result(model.embed(texts))
        except Exception as err:  # a bad request must not kill the loop
            future.set_exception(err)
        reporter.in_flight = 0
        reporter.tick()

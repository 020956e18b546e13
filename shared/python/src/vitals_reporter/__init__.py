"""vitals_reporter: a Python model server reports its loop to vitals-agent.

Three lines in a model server::

    from vitals_reporter import Reporter
    reporter = Reporter()            # VITALS_NAME, VITALS_AGENT_SOCKET from the pod
    reporter.tick()                  # once per inference-loop iteration, idle ones too

plus `reporter.phase("ready")` once the model is loaded. See shared/python/README.md.
"""

from ._reporter import PHASES, Reporter

__all__ = ["PHASES", "Reporter", "__version__"]
__version__ = "0.1.0"

"""The environment a worker's container gets from `vitals-agent inject`, named once.

These mirror the constants of the same names in the Rust crate `vitals_proto::env`
(shared/src/env.rs); a test there fails when the two disagree.
"""

#: Where the worker finds the agent's Unix socket.
AGENT_SOCKET = "VITALS_AGENT_SOCKET"
#: The worker's name in the agent, by convention its container's name.
NAME = "VITALS_NAME"
#: The version the worker reports in its `hello` (optional).
VERSION = "VITALS_VERSION"

#!/usr/bin/env bash
# `make run`: starts the agent and the worker as a pod would and shows the probes.
set -euo pipefail
echo "vitals: agent and worker are not built yet; 'make test' runs the protocol tests."

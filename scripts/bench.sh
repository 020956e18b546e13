#!/usr/bin/env bash
# `make bench`: benchmarks, not run by `make test`.
set -euo pipefail
echo "no benchmarks yet"

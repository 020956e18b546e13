#!/usr/bin/env bash
# `make lint`: the pure core (core/, the vitals-core crate) stays pure. Its normal
# dependency tree, as cargo resolves it for that crate alone, may hold no async runtime, HTTP
# stack, /proc or syscall crate; one that appears (directly or through another dependency)
# fails the check, naming the path that brought it in.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo=${CARGO:-cargo}
# The families the core must never link: tokio (and tokio-*), hyper (and hyper-*), procfs
# (and procfs-core), nix.
forbidden='^(tokio|tokio-[a-z0-9-]+|hyper|hyper-[a-z0-9-]+|procfs|procfs-[a-z0-9-]+|nix)$'
crates=$("$cargo" tree -e normal -p vitals-core --prefix none --format '{p}' | awk '{print $1}' | sort -u)
if [ -z "$crates" ]; then
    echo "check-core-deps: cargo tree printed nothing for vitals-core" >&2
    exit 1
fi
bad=$(grep -E "$forbidden" <<<"$crates" || true)
if [ -n "$bad" ]; then
    echo "check-core-deps: vitals-core must not depend on: $(tr '\n' ' ' <<<"$bad")" >&2
    for crate in $bad; do
        "$cargo" tree -e normal -p vitals-core --invert "$crate" >&2
    done
    exit 1
fi
# Nor may its own code reach the clock, files, the environment, the network, processes or
# threads outside its tests: every rule is a function of (state, now), with `now` passed in.
impure=$(find core/src -name '*.rs' ! -name fixtures.rs -print0 | xargs -0 awk '
    FNR == 1 { tests = 0; cfg_test = 0 }
    # The tests start at `#[cfg(test)] mod`: a test-only `use` or item above it must not
    # hide the rest of the file from the check.
    cfg_test && /^[[:space:]]*(pub(\([a-z]+\))? )?mod / { tests = 1 }
    { cfg_test = /#\[cfg\(test\)\]/ }
    !tests && !/^[[:space:]]*\/\// && /Instant::now\(|SystemTime::now\(|std::(fs|env|net|process|thread)::/ {
        print FILENAME ":" FNR ": " $0
    }')
if [ -n "$impure" ]; then
    echo "check-core-deps: vitals-core reads the clock or the system outside its tests:" >&2
    echo "$impure" >&2
    exit 1
fi
echo "check-core-deps: vitals-core depends on $(wc -l <<<"$crates") crates, none of tokio, hyper, procfs, nix; its code reads no clock, file, environment, network, process or thread"

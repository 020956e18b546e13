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
echo "check-core-deps: vitals-core depends on $(wc -l <<<"$crates") crates, none of tokio, hyper, procfs, nix"

#!/usr/bin/env bash
# Intel oneMKL for the worker's `--features mkl` build, from Intel's PyPI wheels (Debian
# main has none), cached outside the repo and laid out as the intel-mkl-src crate looks for
# it. Prints the environment to build with:
#
#   eval "$(scripts/mkl.sh)"     # exports MKLROOT
#   cargo build --profile worker -p vitals-worker --features mkl
#
# How candle finds MKL (crates in Cargo.lock): candle-core 0.11.1's `mkl` feature depends
# on intel-mkl-src 0.8.1 with `mkl-static-lp64-iomp`. Its build.rs asks intel-mkl-tool for
# `mkl_intel_lp64`, `mkl_intel_thread`, `mkl_core` (static) and `iomp5`: first through
# `pkg-config`, then under `$MKLROOT`, then /opt/intel; only if all three fail does it try to
# download an old MKL from a container registry, which this project never allows: with
# MKLROOT set from this script it never gets there. `iomp5` is linked without a kind, so
# lib/ holds only libiomp5.a (no .so): the binary then carries MKL and the OpenMP runtime
# inside it and needs no library at run time.
#
# Environment: VITALS_MKL_HOME (default ~/.cache/vitals/mkl-$MKL_VERSION). Re-running with
# the same pins reuses it. About 300 MB downloaded, 670 MB on disk.
set -euo pipefail

MKL_VERSION=2026.2.0
WHEELS=(
  "mkl-static==$MKL_VERSION"
  "mkl-include==$MKL_VERSION"
  "intel-openmp==$MKL_VERSION"
)
# What the link needs, from the unpacked wheels.
LIBS=(libmkl_intel_lp64.a libmkl_intel_thread.a libmkl_core.a libiomp5.a)
HOME_DIR=${VITALS_MKL_HOME:-${HOME}/.cache/vitals/mkl-$MKL_VERSION}
STAMP="$HOME_DIR/.complete"
WANT="layout 1: ${WHEELS[*]}"

log() { printf '%s\n' "$*" >&2; }

assemble() {
  local start=$SECONDS wheels="$HOME_DIR/wheels" unpacked="$HOME_DIR/unpacked"
  log "assembling oneMKL $MKL_VERSION from PyPI wheels into $HOME_DIR"
  rm -rf "$HOME_DIR"
  mkdir -p "$wheels" "$unpacked" "$HOME_DIR/include" "$HOME_DIR/lib"
  python3 -m pip download -q --no-deps --disable-pip-version-check -d "$wheels" "${WHEELS[@]}" >&2
  for w in "$wheels"/*.whl; do
    python3 -m zipfile -e "$w" "$unpacked"
  done
  cp -r "$unpacked"/mkl_include-*.data/data/include/. "$HOME_DIR/include/"
  for lib in "${LIBS[@]}"; do
    local found
    found=$(find "$unpacked" -name "$lib" -print -quit)
    [ -n "$found" ] || { log "mkl.sh: $lib is not in the wheels ${WHEELS[*]}"; exit 1; }
    mv "$found" "$HOME_DIR/lib/"
  done
  [ -f "$HOME_DIR/include/mkl.h" ] || { log "mkl.sh: no mkl.h in mkl-include"; exit 1; }
  rm -rf "$wheels" "$unpacked"
  printf '%s\n' "$WANT" >"$STAMP"
  log "oneMKL ready in $((SECONDS - start)) s: $(du -sh "$HOME_DIR" | cut -f1)"
}

if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  assemble
fi
printf 'export MKLROOT=%q\n' "$HOME_DIR"

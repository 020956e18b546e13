#!/usr/bin/env bash
# A CUDA toolkit for `--features cuda`, assembled from NVIDIA's PyPI wheels (Debian has
# none), cached outside the repo, and laid out as candle's build expects. Prints the
# environment to build with:
#
#   eval "$(scripts/cuda-toolkit.sh)"          # exports CUDA_ROOT, CUDA_HOME, PATH, ...
#   scripts/cuda-toolkit.sh runtime-libs DIR   # copies the libraries an image needs
#
# Why these versions (sources are the crates in Cargo.lock):
# - candle-core 0.11.1 (Cargo.toml) builds cudarc 0.19.10 with `dynamic-linking` and
#   `cuda-version-from-build-system`: cudarc's build.rs runs `nvcc --version` and accepts
#   11.4 up to 13.4 (its SUPPORTED_CUDA_VERSIONS); a 13.5 nvcc makes it panic. So CUDA 13.4.
# - `dynamic-linking` links libcuda, libcublas, libcublasLt, libcurand and libnvrtc, and
#   candle-kernels' build.rs links libcudart: the linker needs `lib*.so` names, the wheels
#   ship only `lib*.so.N`, so lib/ gets the unversioned links. The driver (libcuda) comes
#   with the GPU driver, never from a wheel: lib/stubs/libcuda.so is a link-time stub built
#   here from cuda.h whose functions all return CUDA_ERROR_STUB_LIBRARY (34), the role of
#   lib64/stubs/libcuda.so in NVIDIA's toolkit.
# - candle-kernels 0.11.1 builds with cudaforge 0.1.6: nvcc from $NVCC, PATH or
#   $CUDA_HOME/bin; one `-gencode` per file from $CUDA_COMPUTE_CAP (cudaforge
#   src/compute_cap.rs; `90` becomes sm_90a); headers through nvcc.profile
#   (include/, include/cccl), nvvm/ next to bin/.
#
# Environment: VITALS_CUDA_HOME (where the toolkit goes; default
# ~/.cache/vitals/cuda-$CUDA_VERSION). Re-running with the same pins reuses it.
set -euo pipefail

CUDA_VERSION=13.4.92
# The compiler and runtime wheels of CUDA 13.4 (nvcc pulls nvvm, crt, runtime, nvrtc);
# cuBLAS, cuRAND and CCCL version separately: the releases current with 13.4 that load
# with any CUDA 13 driver (minor-version compatibility).
WHEELS=(
  "nvidia-cuda-nvcc==$CUDA_VERSION"
  "nvidia-cuda-runtime==$CUDA_VERSION"
  "nvidia-cuda-crt==$CUDA_VERSION"
  "nvidia-cuda-nvrtc==$CUDA_VERSION"
  "nvidia-nvvm==$CUDA_VERSION"
  "nvidia-cuda-cccl==13.3.4.3.1"
  "nvidia-cublas==13.4.3.11"
  "nvidia-curand==10.4.5.25"
)
HOME_DIR=${VITALS_CUDA_HOME:-${HOME}/.cache/vitals/cuda-$CUDA_VERSION}
STAMP="$HOME_DIR/.complete"
# The pins and the layout's version are the cache key: changing either rebuilds it.
WANT="layout 2: ${WHEELS[*]}"

log() { printf '%s\n' "$*" >&2; }

assemble() {
  local start=$SECONDS venv="$HOME_DIR/venv"
  log "assembling CUDA $CUDA_VERSION from PyPI wheels into $HOME_DIR"
  rm -rf "$HOME_DIR"
  mkdir -p "$HOME_DIR"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --no-cache-dir --disable-pip-version-check "${WHEELS[@]}" >&2
  local site
  site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  # Every wheel of CUDA 13 installs into nvidia/cu13, with nvcc.profile finding nvvm/ and
  # include/ relative to bin/: that folder is the toolkit root.
  local root="$site/nvidia/cu13"
  for f in bin/nvcc bin/ptxas bin/cudafe++ bin/fatbinary bin/nvlink nvvm/bin/cicc \
    nvvm/libdevice/libdevice.10.bc include/cuda_runtime.h include/cuda.h \
    include/cccl/cuda/std/version lib/libcudart.so.13 lib/libcublas.so.13 \
    lib/libcublasLt.so.13 lib/libcurand.so.10 lib/libnvrtc.so.13; do
    if [ ! -e "$root/$f" ]; then
      log "the wheels lack $f (looked in $root)"
      exit 1
    fi
  done
  (
    cd "$root/lib"
    for lib in cudart cublas cublasLt nvrtc; do ln -sf "lib$lib.so.13" "lib$lib.so"; done
    ln -sf libcurand.so.10 libcurand.so
  )
  ln -sfn lib "$root/lib64"
  build_driver_stub "$root"
  ln -sfn "$root" "$HOME_DIR/root"
  printf '%s\n' "$WANT" >"$STAMP"
  log "assembled in $((SECONDS - start)) s: $(du -sh --apparent-size "$HOME_DIR" | cut -f1)"
}

# Link-time stand-in for the driver library: every function cuda.h declares (after its
# _v2/_v3 renaming macros, as cudarc's bindings use them) returning
# CUDA_ERROR_STUB_LIBRARY. SONAME libcuda.so.1, so the binary asks the loader for the
# driver's real library.
build_driver_stub() {
  local root=$1 dir="$1/lib/stubs" names
  mkdir -p "$dir"
  names=$(gcc -E -P -x c "$root/include/cuda.h" |
    sed -nE 's/^CUresult (cu[A-Za-z0-9_]+)\(.*/\1/p' | sort -u)
  if [ -z "$names" ]; then
    log "no driver functions found in $root/include/cuda.h"
    exit 1
  fi
  # The two error-text functions answer, so errors read "CUDA_ERROR_STUB_LIBRARY".
  {
    printf 'int %s(void) { return 34; }\n' $(grep -v -x -e cuGetErrorName -e cuGetErrorString <<<"$names")
    printf 'int cuGetErrorName(int e, const char **s) { *s = "CUDA_ERROR_STUB_LIBRARY"; return e == 34 ? 0 : 1; }\n'
    printf 'int cuGetErrorString(int e, const char **s) { *s = "CUDA driver is a stub library: no NVIDIA driver here"; return e == 34 ? 0 : 1; }\n'
  } >"$dir/libcuda-stub.c"
  gcc -shared -fPIC -O1 -Wl,-soname,libcuda.so.1 -o "$dir/libcuda.so" "$dir/libcuda-stub.c"
  # The name the loader asks for; only tests put stubs/ on LD_LIBRARY_PATH.
  ln -sf libcuda.so "$dir/libcuda.so.1"
}

# The CUDA libraries the built worker loads, copied into $2 for an image. The binary
# needs libcuda.so.1 (the driver's), libcublas.so.13 and libcurand.so.10 (readelf -d; the
# linker drops the rest as unused); libcublas needs libcublasLt, libcurand needs libcudart,
# which needs libstdc++ (from the base image).
runtime_libs() {
  local root=$1 dest=$2
  mkdir -p "$dest"
  for lib in libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libcudart.so.13; do
    cp -L "$root/lib/$lib" "$dest/"
  done
}

case "${1:-env}" in
  env | runtime-libs) ;;
  *)
    log "usage: $0 [env | runtime-libs DIR]"
    exit 2
    ;;
esac
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  assemble
fi
ROOT=$(cd "$HOME_DIR/root" && pwd -P)
if [ "${1:-env}" = runtime-libs ]; then
  runtime_libs "$ROOT" "${2:?runtime-libs needs a folder}"
  exit 0
fi
cat <<EOF
export CUDA_ROOT=$ROOT
export CUDA_HOME=$ROOT
export CUDA_PATH=$ROOT
export PATH=$ROOT/bin:\$PATH
EOF

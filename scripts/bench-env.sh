# Sourced by scripts/bench.sh and scripts/bench-profile.sh: the worker's build features and
# the instruction set both sides may use, from BENCH_THREADS, BENCH_FEATURES and BENCH_ISA
# (see bench.sh). Sets FEATURES (cargo arguments) and exports the kernels' settings.
export BENCH_THREADS=${BENCH_THREADS:-2}
FEATURES=()
if [ -n "${BENCH_FEATURES:-}" ]; then
  FEATURES=(--features "$BENCH_FEATURES")
  case ",$BENCH_FEATURES," in *,mkl,*) eval "$(scripts/mkl.sh)" ;; esac
fi
case "${BENCH_ISA:-native}" in
  native) ;;
  avx2) export MKL_ENABLE_INSTRUCTIONS=AVX2 ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 ;;
  *) echo "BENCH_ISA: native or avx2, not ${BENCH_ISA}" >&2; exit 2 ;;
esac

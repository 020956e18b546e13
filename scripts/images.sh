#!/usr/bin/env bash
# `make images`: builds vitals-agent:dev and vitals-worker:dev (CPU flavour) with podman,
# pulling nothing, then runs them as a pod would and checks the probes through the agent.
# `FLAVOR=cuda make images` builds vitals-worker:dev-cuda instead (the CUDA build of
# scripts/cuda-build.sh, CUDA libraries from the same wheels) and smoke-tests it with
# `--device cpu`, the toolkit's driver stub standing in for the GPU node's driver.
#
#   scripts/images.sh            build both images, then the pod smoke test
#   scripts/images.sh build      build only
#   scripts/images.sh smoke      smoke-test images built earlier
#
# No registry is reachable here, so the Dockerfiles' `build` stages are replaced by
# host-built binaries (`--build-context build=DIR`, see the Dockerfiles' headers) and the
# worker's runtime base is a distroless-like image assembled from Debian packages. Users
# with a registry run plain `docker build -f Dockerfile.agent .` instead.
#
# Environment: FLAVOR (cpu or cuda), WORKER_PROFILE (cargo profile of the CPU worker
# binary: `worker` by default; CI passes `dev` to reuse the binary `make test` built),
# MODEL_DIR.
#
# No skipping: where podman is missing it is installed from Debian (as root; otherwise the
# script says what to install and fails), and a podman that cannot run containers fails the
# run. A machine that runs `make images` (CI does) builds and runs both images, or fails.
set -euo pipefail
cd "$(dirname "$0")/.."

WORKER_PROFILE=${WORKER_PROFILE:-worker}
MODEL_DIR=${MODEL_DIR:-models/all-MiniLM-L6-v2}
AGENT_IMAGE=localhost/vitals-agent:dev
MODEL_IMAGE=localhost/vitals-model:dev
FLAVOR=${FLAVOR:-cpu}
BASE_IMAGE=localhost/vitals-glibc-base:bookworm
case "$FLAVOR" in
  cpu) WORKER_IMAGE=localhost/vitals-worker:dev ;;
  cuda)
    WORKER_IMAGE=localhost/vitals-worker:dev-cuda
    # The CPU image's base plus libstdc++, which the wheels' libcudart needs.
    CUDA_BASE_IMAGE=localhost/vitals-glibc-cxx-base:bookworm
    CUDA_TARGET_DIR=${CUDA_TARGET_DIR:-target-cuda}
    export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-80}
    eval "$(scripts/cuda-toolkit.sh)"
    ;;
  *) echo "FLAVOR must be cpu or cuda, not $FLAVOR" >&2; exit 2 ;;
esac
# The smoke test's containers (global: the EXIT trap removes them).
agent=vitals-smoke-agent
worker=vitals-smoke-worker
WORK=target/images
TRIPLE="$(uname -m)-unknown-linux-gnu"
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)

say() { printf '\n== %s\n' "$*"; }

setup_podman() {
  if ! command -v podman >/dev/null; then
    if [ "$(id -u)" -ne 0 ]; then
      echo "podman is missing: apt-get install podman buildah runc" >&2
      exit 1
    fi
    say "installing podman"
    apt-get update -qq -o DPkg::Lock::Timeout=300
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=300 \
      podman buildah runc >/dev/null
  fi
  # crun fails on hybrid cgroup hosts; podman's default ulimits exceed some hosts' limits.
  cat >"$WORK/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=$(ulimit -Hn):$(ulimit -Hn)", "nproc=4096:4096"]
[engine]
runtime = "runc"
EOF
  export CONTAINERS_CONF="$WORK/containers.conf"
  if ! podman info >"$WORK/podman-info.log" 2>&1; then
    echo "FAILED: podman cannot run containers on this machine:" >&2
    cat "$WORK/podman-info.log" >&2
    exit 1
  fi
}

# A distroless-like glibc base (about 6 MB) from Debian packages: libc, libgcc, netbase,
# and a passwd naming the non-root user. Nothing else: no shell, no package manager.
# build_base [IMAGE EXTRA_PACKAGE...]: another image with more packages.
build_base() {
  local image=${1:-$BASE_IMAGE}
  if podman image exists "$image"; then return; fi
  say "assembling $image from Debian packages"
  local dl="$WORK/debs" root="$WORK/base-root"
  rm -rf "$dl" "$root" && mkdir -p "$dl" "$root/etc" "$root/tmp"
  local pkgs=(libc6 libgcc-s1 netbase "${@:2}")
  if ! (cd "$dl" && apt-get download -o APT::Sandbox::User=root "${pkgs[@]}" >/dev/null 2>&1); then
    apt-get update -qq -o DPkg::Lock::Timeout=300
    (cd "$dl" && apt-get download -o APT::Sandbox::User=root "${pkgs[@]}" >/dev/null)
  fi
  for deb in "$dl"/*.deb; do dpkg-deb -x "$deb" "$root"; done
  rm -rf "$root"/usr/share/{doc,man,locale,lintian,info}
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$root/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' >"$root/etc/group"
  chmod 1777 "$root/tmp"
  tar -C "$root" -c . | podman import - "$image" >/dev/null
}

# vitals-model:dev (Dockerfile.model: FROM scratch, only the model's files) for
# deploy/components/model-image; the files are checked against deploy/base/model-files.sha256
# first, and none may be missing or extra.
build_model_image() {
  say "building $MODEL_IMAGE from $MODEL_DIR"
  local sums=$PWD/deploy/base/model-files.sha256
  (cd "$MODEL_DIR" && sha256sum --quiet --strict -c "$sums")
  if [ "$(sed 's/^[0-9a-f]*  //' "$sums" | LC_ALL=C sort)" != "$(cd "$MODEL_DIR" && find . -type f | sed 's|^\./||' | LC_ALL=C sort)" ]; then
    echo "$MODEL_DIR holds other files than deploy/base/model-files.sha256 lists" >&2
    exit 1
  fi
  podman build --pull=never --network none --build-arg MODEL="$(basename "$MODEL_DIR")" \
    -f Dockerfile.model -t "$MODEL_IMAGE" "$(dirname "$MODEL_DIR")"
  # What the image holds, checked the same way.
  local ctr check="$WORK/model-check"
  rm -rf "$check" && mkdir -p "$check"
  ctr=$(podman create "$MODEL_IMAGE" /never-run)
  podman export "$ctr" | tar -x -C "$check"
  podman rm "$ctr" >/dev/null
  (cd "$check/$(basename "$MODEL_DIR")" && sha256sum --quiet --strict -c "$sums")
  echo "ok: $MODEL_IMAGE holds every model file with its sha256"
}

build_images() {
  say "static agent binary (release, crt-static)"
  RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release --locked -p vitals-agent --target "$TRIPLE"
  local agent_bin="target/$TRIPLE/release/vitals-agent"
  if readelf -d "$agent_bin" | grep -q NEEDED; then
    echo "$agent_bin is not static; it cannot run FROM scratch" >&2
    exit 1
  fi
  mkdir -p "$WORK/agent-ctx/out" "$WORK/worker-ctx/out"
  cp "$agent_bin" "$WORK/agent-ctx/out/vitals-agent"

  if [ "$FLAVOR" = cuda ]; then
    say "CUDA worker binary (as scripts/cuda-build.sh builds it)"
    CARGO_TARGET_DIR=$CUDA_TARGET_DIR \
      cargo build --profile worker --locked -p vitals-worker --features cuda
    cp "$CUDA_TARGET_DIR/worker/vitals-worker" "$WORK/worker-ctx/out/vitals-worker"
    rm -rf "$WORK/worker-ctx/out/cuda"
    scripts/cuda-toolkit.sh runtime-libs "$WORK/worker-ctx/out/cuda"
  else
    say "worker binary (profile $WORKER_PROFILE)"
    cargo build --profile "$WORKER_PROFILE" --locked -p vitals-worker
    local dir=$WORKER_PROFILE
    [ "$dir" = dev ] && dir=debug
    cp "target/$dir/vitals-worker" "$WORK/worker-ctx/out/vitals-worker"
  fi

  build_base
  say "building $AGENT_IMAGE"
  podman build --pull=never --network none --build-context build="$WORK/agent-ctx" \
    -f Dockerfile.agent -t "$AGENT_IMAGE" .
  say "building $WORKER_IMAGE ($FLAVOR)"
  if [ "$FLAVOR" = cuda ]; then
    build_base "$CUDA_BASE_IMAGE" libstdc++6
    podman build --pull=never --network none --build-context build="$WORK/worker-ctx" \
      --build-arg FLAVOR=cuda --build-arg CUDA_RUNTIME="$CUDA_BASE_IMAGE" \
      -f Dockerfile.worker -t "$WORKER_IMAGE" .
  else
    podman build --pull=never --network none --build-context build="$WORK/worker-ctx" \
      --build-arg FLAVOR=cpu --build-arg CPU_RUNTIME="$BASE_IMAGE" \
      -f Dockerfile.worker -t "$WORKER_IMAGE" .
  fi
  build_model_image
  local size
  for image in "$AGENT_IMAGE" "$WORKER_IMAGE" "$MODEL_IMAGE"; do
    size=$(podman image inspect -f '{{.Size}}' "$image")
    printf '%s: %s bytes (%.1f MB)\n' "$image" "$size" "$(awk -v s="$size" 'BEGIN{print s/1000000}')"
  done
}

# Polls `url` until it answers `code`, for at most `secs`; prints the last answer.
await() {
  local url=$1 code=$2 secs=$3 what=$4 got body deadline=$((SECONDS + $3))
  while :; do
    body=$(curl -s -m 1 -o - -w '\n%{http_code}' "$url" || true)
    got=${body##*$'\n'}
    if [ "$got" = "$code" ]; then
      echo "ok: $what ($url -> $code ${body%$'\n'*})"
      return 0
    fi
    if [ $SECONDS -ge $deadline ]; then
      echo "FAILED: $what: $url answered ${got:-nothing} ${body%$'\n'*} after ${secs}s" >&2
      return 1
    fi
    sleep 0.2
  done
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

smoke() {
  local sock="$WORK/run-vitals" aport wport ok=1
  aport=$(free_port)
  wport=$(free_port)
  cleanup() {
    # One at a time: `podman rm` with a missing name skips the others.
    podman rm -f -t 1 --ignore "$worker" >/dev/null 2>&1 || true
    podman rm -f -t 1 --ignore "$agent" >/dev/null 2>&1 || true
  }
  trap 'status=$?; if [ $status -ne 0 ]; then dump; fi; cleanup; exit $status' EXIT
  dump() {
    echo "---- agent logs"; podman logs "$agent" 2>&1 | tail -30 || true
    echo "---- worker logs"; podman logs "$worker" 2>&1 | tail -30 || true
  }
  cleanup
  # The socket volume: an emptyDir in a pod, a folder here, writable by the non-root UID.
  rm -rf "$sock" && mkdir -p "$sock" && chown 65532:65532 "$sock"
  # What a pod's securityContext enforces: non-root, read-only root, no capabilities.
  local hardening=(--pull=never --network host --read-only --cap-drop=ALL
    --security-opt no-new-privileges --user 65532:65532)

  say "pod smoke test: agent on 127.0.0.1:$aport, worker API on 127.0.0.1:$wport"
  podman run -d --name "$agent" "${hardening[@]}" -v "$sock:/run/vitals" "$AGENT_IMAGE" \
    run --listen "127.0.0.1:$aport" --socket /run/vitals/agent.sock --expect model \
    --hang-timeout 3s --proc-interval 250ms --shutdown-grace 1s >/dev/null
  # The CUDA image on a machine without a GPU: the driver stub is mounted where a GPU
  # node's runtime puts the driver, and the worker runs on the CPU.
  local flavor_run=() flavor_args=()
  if [ "$FLAVOR" = cuda ]; then
    flavor_run=(-v "$CUDA_ROOT/lib/stubs:/usr/local/nvidia/lib64:ro"
      -e LD_LIBRARY_PATH=/usr/local/lib/vitals-cuda:/usr/local/nvidia/lib64)
    flavor_args=(--device cpu)
  fi
  # --pid=container: is shareProcessNamespace: the agent sees the worker's pid and /proc.
  podman run -d --name "$worker" "${hardening[@]}" --pid "container:$agent" \
    -v "$sock:/run/vitals" -v "$(pwd)/$MODEL_DIR:/models/all-MiniLM-L6-v2:ro" "${flavor_run[@]}" \
    "$WORKER_IMAGE" --model-dir /models/all-MiniLM-L6-v2 --listen "127.0.0.1:$wport" \
    --max-batch-tokens 1024 --heartbeat-interval 250ms "${flavor_args[@]}" >/dev/null

  local base="http://127.0.0.1:$aport"
  await "$base/livez" 200 30 "the agent answers"
  await "$base/readyz/model" 200 180 "the worker becomes ready through the agent"
  await "$base/startupz/model" 200 5 "startup passed"
  local st
  st=$(curl -s -m 2 "$base/status")
  if ! echo "$st" | python3 -c 'import json,sys; d=json.load(sys.stdin); w=[w for w in d["workers"] if w["name"]=="model"][0]; p=w["instance"]["proc"]; sys.exit(0 if p["enabled"] and w["instance"]["pid"] > 0 else 1)'; then
    echo "FAILED: the agent does not watch the worker's /proc through the shared PID namespace: $st" >&2
    ok=0
  else
    echo "ok: /proc checks on (shared PID namespace)"
  fi
  local code
  code=$(curl -s -m 10 -o /dev/null -w '%{http_code}' -H 'content-type: application/json' \
    -d '{"input":"vitals in a container","model":"all-MiniLM-L6-v2"}' "http://127.0.0.1:$wport/v1/embeddings")
  if [ "$code" = 200 ]; then echo "ok: an embedding request answers 200"; else
    echo "FAILED: embedding request answered $code" >&2; ok=0; fi

  say "pausing the worker container"
  podman pause "$worker" >/dev/null
  echo "worker container: $(podman inspect -f '{{.State.Status}}' "$worker")"
  await "$base/livez/model" 503 15 "a paused worker fails liveness" || ok=0
  await "$base/readyz/model" 503 2 "and readiness" || ok=0
  podman unpause "$worker" >/dev/null
  await "$base/livez/model" 200 15 "live again after unpause" || ok=0
  await "$base/readyz/model" 200 15 "ready again after unpause" || ok=0

  say "stopping the pod (SIGTERM, as the kubelet does)"
  podman stop -t 30 "$worker" >/dev/null
  local code_w
  code_w=$(podman inspect -f '{{.State.ExitCode}}' "$worker")
  if [ "$code_w" = 0 ]; then echo "ok: the worker drained and exited 0"; else
    echo "FAILED: the worker exited $code_w on SIGTERM" >&2; ok=0; fi
  await "$base/readyz/model" 503 5 "the agent reports the stopped worker not ready" || ok=0
  podman stop -t 10 "$agent" >/dev/null
  code_w=$(podman inspect -f '{{.State.ExitCode}}' "$agent")
  if [ "$code_w" = 0 ]; then echo "ok: the agent exited 0"; else
    echo "FAILED: the agent exited $code_w on SIGTERM" >&2; ok=0; fi
  if [ $ok -ne 1 ]; then exit 1; fi
  say "pod smoke test passed"
}

setup_podman
case "${1:-all}" in
  build) build_images ;;
  smoke) smoke ;;
  all) build_images && smoke ;;
  *) echo "usage: $0 [build|smoke|all]" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# `make run`: the quick start. Starts the agent and the worker as a pod would (a temp
# folder stands in for the shared /run/vitals emptyDir), prints where to reach them, and
# follows `vitals-agent status --watch` so you see loading -> warming -> ready.
# Ctrl-C stops both: the worker drains, the agent fails readiness, then both exit.
#
# Settings (environment): MODEL_DIR (models/all-MiniLM-L6-v2), API_PORT (8080),
# PROBE_PORT (9180), BIN_DIR (target/debug; `make run` builds it), WORKER_ARGS (extra
# worker flags, e.g. "--threads 2").
set -euo pipefail
cd "$(dirname "$0")/.."

model_dir=${MODEL_DIR:-models/all-MiniLM-L6-v2}
api_port=${API_PORT:-8080}
probe_port=${PROBE_PORT:-9180}
bin=${BIN_DIR:-${CARGO_TARGET_DIR:-target}/debug}
agent=$bin/vitals-agent
worker=$bin/vitals-worker

for b in "$agent" "$worker"; do
  if [ ! -x "$b" ]; then
    echo "run: $b is missing; build with 'cargo build --workspace' (or use 'make run')" >&2
    exit 1
  fi
done
if [ ! -f "$model_dir/model.safetensors" ]; then
  scripts/fetch-model.sh "$model_dir"
fi
# The agent's CLI is SPEC §5; say so plainly if this build predates it.
if ! "$agent" run --help >/dev/null 2>&1 || ! "$agent" status --help 2>/dev/null | grep -q -- --watch; then
  echo "run: $agent does not support 'run' and 'status --watch' (SPEC §5) yet;" >&2
  echo "     starting the worker alone: curl http://127.0.0.1:$api_port/health" >&2
  exec "$worker" --model-dir "$model_dir" --listen "127.0.0.1:$api_port" \
    --agent-socket /nonexistent/agent.sock ${WORKER_ARGS:-}
fi

pod=$(mktemp -d "${TMPDIR:-/tmp}/vitals-run.XXXXXX")
socket=$pod/run-vitals/agent.sock
agent_pid=
worker_pid=
status_pid=

stop() {
  trap - INT TERM EXIT
  echo
  [ -n "$status_pid" ] && kill "$status_pid" 2>/dev/null || true
  echo "stopping: SIGTERM to the worker (it drains), then the agent"
  [ -n "$worker_pid" ] && kill -TERM "$worker_pid" 2>/dev/null || true
  [ -n "$worker_pid" ] && wait "$worker_pid" 2>/dev/null || true
  [ -n "$agent_pid" ] && kill -TERM "$agent_pid" 2>/dev/null || true
  [ -n "$agent_pid" ] && wait "$agent_pid" 2>/dev/null || true
  echo "stopped; logs were in $pod (removed)"
  rm -rf "$pod"
}
trap stop INT TERM EXIT

# The agent first, as a native sidecar starts before the model container.
"$agent" run --listen "127.0.0.1:$probe_port" --socket "$socket" --expect model \
  --shutdown-grace 1s >"$pod/agent.log" 2>&1 &
agent_pid=$!
for _ in $(seq 50); do
  [ -S "$socket" ] && break
  if ! kill -0 "$agent_pid" 2>/dev/null; then
    echo "run: the agent exited; its log:" >&2
    cat "$pod/agent.log" >&2
    exit 1
  fi
  sleep 0.1
done

# shellcheck disable=SC2086 # WORKER_ARGS is a list of flags
"$worker" --model-dir "$model_dir" --listen "127.0.0.1:$api_port" \
  --agent-socket "$socket" --name model ${WORKER_ARGS:-} >"$pod/worker.log" 2>&1 &
worker_pid=$!


cat >"$pod/header.txt" <<EOF
Vitals is running (a pod in $pod):
  agent   pid $agent_pid  log $pod/agent.log
  worker  pid $worker_pid  log $pod/worker.log

  Embeddings API  http://127.0.0.1:$api_port   (/v1/embeddings, /embed, /info, /metrics)
  Probes          http://127.0.0.1:$probe_port  (/startupz/model, /readyz/model, /livez/model, /status, /metrics)

Try, once the status below says ready:
  curl -s http://127.0.0.1:$api_port/v1/embeddings -H 'Content-Type: application/json' \\
    -d '{"input": ["Vitals watches model pods", "Kubernetes probes"]}' | head -c 300; echo
  curl -s 'http://127.0.0.1:$probe_port/readyz/model?verbose'

Ctrl-C stops both. Agent status (vitals-agent status --watch):
EOF
cat "$pod/header.txt"

# Follow the agent's view. `status --watch` clears the screen on each refresh: put the
# header back after every clear so the URLs stay in sight.
clear_seq=$'\e[2J\e[H'
mkfifo "$pod/status.fifo"
"$agent" status --url "http://127.0.0.1:$probe_port" --watch >"$pod/status.fifo" &
status_pid=$!
while IFS= read -r line; do
  if [[ $line == *"$clear_seq"* ]]; then
    printf '%s%s' "${line%%"$clear_seq"*}" "$clear_seq"
    cat "$pod/header.txt"
    printf '%s\n' "${line#*"$clear_seq"}"
  else
    printf '%s\n' "$line"
  fi
done <"$pod/status.fifo" &
watch_pid=$!
while kill -0 "$watch_pid" 2>/dev/null; do
  if ! kill -0 "$worker_pid" 2>/dev/null || ! kill -0 "$agent_pid" 2>/dev/null; then
    kill "$status_pid" 2>/dev/null || true
    echo "run: a process exited; last worker log lines:" >&2
    tail -n 20 "$pod/worker.log" >&2
    break
  fi
  sleep 1
done
wait "$watch_pid" 2>/dev/null || true

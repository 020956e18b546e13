#!/usr/bin/env bash
# `make deploy-check` (part of `make test`): renders every kustomization under deploy/ and the
# outputs of `vitals-agent inject` on agent/tests/fixtures/inject/, and validates them.
#   - core resources (overlays, inject outputs, the dashboard ConfigMap): kubernetes-validate
#     --strict against Kubernetes 1.29 and 1.33 (unknown fields fail);
#   - the Prometheus Operator CRDs (PodMonitor, PrometheusRule) have no schema there: the rule
#     groups are extracted and checked by `promtool check rules`, the PodMonitor is checked
#     against the base's pods (selector, port name, jobLabel), the dashboard JSON is parsed and
#     every metric name in rules and dashboard must be one of SPEC §4;
#   - scripts/check_deploy.py checks what the schema cannot: SPEC §6 wiring (probe paths and
#     port, socket volume, shared PID namespace, --expect) and API-server rules
#     (successThreshold 1 for liveness/startup), plus hardening for deploy/.
# Installs kubernetes-validate into ${TOOLS_VENV:-.venv-tools} on first use (about 20 s);
# afterwards it takes a few seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${TOOLS_VENV:-.venv-tools}
versions=(1.29 1.33)

if ! "$venv/bin/kubernetes-validate" --version 2>/dev/null | grep -qx '1.37.0'; then
  echo "deploy-check: installing kubernetes-validate 1.37.0 into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check kubernetes-validate==1.37.0
fi
py="$venv/bin/python" # PyYAML comes with kubernetes-validate
command -v promtool >/dev/null || scripts/install-test-deps.sh
command -v kubectl >/dev/null || { echo "deploy-check: kubectl (for kustomize) is missing" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

validate() { # files...
  local v
  for v in "${versions[@]}"; do
    if ! "$venv/bin/kubernetes-validate" --quiet --strict -k "$v" "$@"; then
      echo "deploy-check: kubernetes-validate --strict -k $v failed" >&2
      return 1
    fi
  done
}

# 1. Every kustomization except monitoring: core resources only.
rendered=()
for k in deploy/base deploy/overlays/*/; do
  k=${k%/}
  out="$tmp/$(echo "$k" | tr / _).yaml"
  kubectl kustomize "$k" >"$out"
  rendered+=("$out")
done
validate "${rendered[@]}"
"$py" scripts/check_deploy.py pods --hardened "${rendered[@]}"
echo "deploy-check: ${#rendered[@]} kustomizations valid for Kubernetes ${versions[*]}"

# 2. Monitoring: CRDs split off, rules through promtool, core part strictly.
kubectl kustomize deploy/monitoring >"$tmp/monitoring.yaml"
"$py" scripts/check_deploy.py monitoring "$tmp/monitoring.yaml" "$tmp/deploy_base.yaml" \
  "$tmp/rules.yaml" >"$tmp/monitoring-core.yaml"
promtool check rules "$tmp/rules.yaml" >/dev/null
validate "$tmp/monitoring-core.yaml"
echo "deploy-check: monitoring: rules pass promtool, dashboard parses, PodMonitor matches the pods"

# 3. `vitals-agent inject` on the fixtures (header line `# inject-args: ...` gives the flags;
#    err-*.yaml are error cases, tested by agent/tests/inject.rs).
fixtures=(agent/tests/fixtures/inject/*.in.yaml)
if [ -e "${fixtures[0]}" ]; then
  agent=${VITALS_AGENT_BIN:-}
  if [ -z "$agent" ]; then
    cargo build -q -p vitals-agent
    agent="${CARGO_TARGET_DIR:-target}/debug/vitals-agent"
  fi
  outs=()
  for f in "${fixtures[@]}"; do
    name=$(basename "$f" .in.yaml)
    read -r -a args < <(sed -n '1s/^# inject-args://p' "$f")
    "$agent" inject -q -f "$f" "${args[@]}" >"$tmp/inject-$name.yaml"
    # Idempotence: injecting the output again changes nothing.
    "$agent" inject -q -f - "${args[@]}" <"$tmp/inject-$name.yaml" >"$tmp/inject-$name.twice.yaml"
    cmp -s "$tmp/inject-$name.yaml" "$tmp/inject-$name.twice.yaml" ||
      { echo "deploy-check: inject is not idempotent on $f" >&2; diff "$tmp/inject-$name.yaml" "$tmp/inject-$name.twice.yaml" >&2; exit 1; }
    # kubernetes-validate has no schema for `kind: List`: validate its items instead.
    "$py" scripts/check_deploy.py expand-lists "$tmp/inject-$name.yaml" "$tmp/inject-$name.expanded.yaml"
    outs+=("$tmp/inject-$name.expanded.yaml")
  done
  validate "${outs[@]}"
  "$py" scripts/check_deploy.py pods "${outs[@]}"
  echo "deploy-check: inject outputs of ${#outs[@]} fixtures valid and idempotent"
fi

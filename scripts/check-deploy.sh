#!/usr/bin/env bash
# `make deploy-check` (part of `make test`): renders every kustomization under deploy/, every
# component of deploy/components/ on its own (on top of the base and the cpu or gpu variant),
# the outputs of `vitals-agent inject` on agent/tests/fixtures/inject/, and validates them:
#   - core kinds: kubernetes-validate --strict (unknown fields fail) against Kubernetes 1.29
#     and 1.33; a render with `image` volumes (model-image) against 1.33 only, the first
#     version where they can be used;
#   - custom resources (ScaledObject, PodMonitor, PrometheusRule): the schemas of their
#     published CRDs, from the npm packages pinned in scripts/crd-schemas/;
#   - the docs: every relative link and #anchor in README.md and docs/*.md resolves;
#   - scripts/check_deploy.py: SPEC §6 wiring, Pod Security `restricted`, the drain, liveness
#     and startup arithmetic of docs/probes.md, replicas against PDB and autoscalers, GPU
#     settings, namespaces, NetworkPolicy ports; KEDA queries through `promtool check rules`;
#   - monitoring: `promtool check rules`, `promtool test rules` (every alert fired by one test
#     and kept quiet by another), runbook_url anchors (a heading of docs/troubleshooting.md),
#     the dashboard's metric names;
#   - deploy/examples/*: rendered, each LeaderWorkerSet's two pod templates validated as Pods
#     (kubernetes-validate has no LeaderWorkerSet schema, and no CRD package is pinned for it),
#     wired as SPEC §6 says, and exactly what `vitals-agent inject` writes (re-injecting
#     changes nothing).
#   - the injector (deploy/components/injector, SPEC §10), both certificate paths: the same
#     validation, cert-manager's Certificate and Issuer against their CRD schemas, and
#     scripts/check_injector.py (never-blocking webhook settings, selectors, no API
#     permissions for the webhook, the certificate reaching the caBundle).
# Every tool comes from scripts/install-test-deps.sh; one that is still missing fails the
# check (never a skip).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${TOOLS_VENV:-.venv-tools}
export TOOLS_VENV=$venv
versions=(1.29 1.33)

scripts/install-test-deps.sh
fail() { echo "deploy-check: $*" >&2; exit 1; }
"$venv/bin/kubernetes-validate" --version >/dev/null 2>&1 || fail "kubernetes-validate is missing from $venv"
command -v promtool >/dev/null || fail "promtool is missing (apt-get install prometheus)"
command -v kubectl >/dev/null || fail "kubectl (for kustomize) is missing"
command -v node >/dev/null || fail "node (for the CRD schemas) is missing"
[ -f "$venv/crd-schemas/validate.mjs" ] || fail "the CRD schemas are not installed in $venv/crd-schemas"
py="$venv/bin/python" # PyYAML comes with kubernetes-validate

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# 0. The docs: a link or #anchor that does not resolve fails (GitHub's anchor rule).
"$py" scripts/check_deploy.py links README.md docs/*.md || fail "a link in the docs does not resolve"

# Each LeaderWorkerSet document becomes two Pods, its leader's and its workers' templates
# (a missing leaderTemplate is the workerTemplate), so the core schemas check them.
lws_pods() { # src dst
  "$py" - "$1" "$2" <<'PY'
import sys, yaml
out = []
for d in yaml.safe_load_all(open(sys.argv[1])):
    if d and d.get("kind") == "LeaderWorkerSet":
        lwt = d["spec"]["leaderWorkerTemplate"]
        for role in ("leaderTemplate", "workerTemplate"):
            t = lwt.get(role) or lwt["workerTemplate"]
            meta = dict(t.get("metadata") or {})
            meta["name"] = f"{d['metadata']['name']}-{role}"
            out.append({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": t["spec"]})
    elif d:
        out.append(d)
yaml.safe_dump_all(out, open(sys.argv[2], "w"), sort_keys=False)
PY
}

validate() { # min-version files...
  local min=$1 v
  shift
  for v in "${versions[@]}"; do
    if [ "$(printf '%s\n%s\n' "$min" "$v" | sort -V | head -1)" != "$min" ]; then continue; fi
    if ! "$venv/bin/kubernetes-validate" --quiet --strict -k "$v" "$@"; then
      echo "deploy-check: kubernetes-validate --strict -k $v failed on $*" >&2
      return 1
    fi
  done
}

# 1. What to render: every kustomization but monitoring, and every component alone on top of
#    the base and its variant (a kustomization in $tmp with relative paths into deploy/).
targets=()
while IFS= read -r k; do targets+=("$(dirname "$k")"); done < <(
  find deploy/base deploy/overlays -name kustomization.yaml | sort)
for c in deploy/components/*/; do
  c=${c%/}
  name=$(basename "$c")
  # Not a Component of the model Deployment: its own namespace, checked in 2b.
  [ "$name" = injector ] && continue
  variant=cpu
  case $name in gpu*) variant=gpu ;; esac
  dir="$tmp/components/$name"
  mkdir -p "$dir"
  rel=$(realpath --relative-to="$dir" deploy)
  {
    echo "resources: [$rel/base]"
    echo "components:"
    echo "  - $rel/components/$variant"
    [ "$name" = "$variant" ] || echo "  - $rel/components/$name"
  } >"$dir/kustomization.yaml"
  targets+=("$dir")
done

# 2. Render and check each.
n=0
crds=()
for k in "${targets[@]}"; do
  out="$tmp/render-$n.yaml"
  kubectl kustomize "$k" >"$out" || fail "kubectl kustomize $k failed"
  min=$("$py" scripts/check_deploy.py split "$out" "$tmp/core-$n.yaml" "$tmp/crds-$n.json")
  validate "$min" "$tmp/core-$n.yaml" || fail "$k is not valid"
  "$py" scripts/check_deploy.py pods --hardened "$tmp/core-$n.yaml" 2>/dev/null ||
    fail "$k: pod checks failed: $("$py" scripts/check_deploy.py pods --hardened "$tmp/core-$n.yaml" 2>&1)"
  "$py" scripts/check_deploy.py policy "$out" "$tmp/queries-$n.yaml" || fail "$k: policy checks failed"
  promtool check rules "$tmp/queries-$n.yaml" >/dev/null || fail "$k: a KEDA query does not parse"
  crds+=("$tmp/crds-$n.json")
  echo "deploy-check: ${k#"$tmp/"} valid (Kubernetes >= $min)"
  n=$((n + 1))
done

# 2b. The injector, each certificate path on its own (a cluster-wide install, not an overlay).
for path in cert-manager certgen; do
  out="$tmp/injector-$path.yaml"
  kubectl kustomize "deploy/components/injector/$path" >"$out" || fail "kubectl kustomize deploy/components/injector/$path failed"
  min=$("$py" scripts/check_deploy.py split "$out" "$tmp/injector-core-$path.yaml" "$tmp/crds-injector-$path.json")
  validate "$min" "$tmp/injector-core-$path.yaml" || fail "injector/$path is not valid"
  "$py" scripts/check_injector.py "$out" "$path" || fail "injector/$path: checks failed"
  crds+=("$tmp/crds-injector-$path.json")
  echo "deploy-check: injector/$path valid (Kubernetes >= $min)"
done

# 3. Monitoring: custom resources to their schemas, rules through promtool, core strictly.
kubectl kustomize deploy/monitoring >"$tmp/monitoring.yaml"
mkdir -p "$tmp/ruletests"
cp deploy/monitoring/tests/*.test.yaml "$tmp/ruletests/"
kubectl kustomize deploy/base >"$tmp/base.yaml"
"$py" scripts/check_deploy.py monitoring "$tmp/monitoring.yaml" "$tmp/base.yaml" \
  "$tmp/rules.yaml" "$tmp/ruletests" . >"$tmp/monitoring-core.yaml"
promtool check rules "$tmp/rules.yaml"
(cd "$tmp/ruletests" && promtool test rules ./*.test.yaml)
validate 1.29 "$tmp/monitoring-core.yaml"
"$py" scripts/check_deploy.py split "$tmp/monitoring.yaml" "$tmp/monitoring-core2.yaml" "$tmp/crds-monitoring.json" >/dev/null
crds+=("$tmp/crds-monitoring.json")

# 4. Every custom resource of every render against its published schema.
"$py" -c 'import json, sys; print(json.dumps([d for f in sys.argv[2:] for d in json.load(open(f))]))' \
  - "${crds[@]}" >"$tmp/crds.json"
(cd "$venv/crd-schemas" && node validate.mjs "$tmp/crds.json")
echo "deploy-check: $n renders valid; monitoring: rules pass promtool check and test, dashboard parses, PodMonitor matches the pods"

# 5. `vitals-agent inject` on the fixtures (header line `# inject-args: ...` gives the flags;
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
  for i in "${!outs[@]}"; do lws_pods "${outs[$i]}" "${outs[$i]}.pods.yaml"; outs[i]="${outs[$i]}.pods.yaml"; done
  validate 1.29 "${outs[@]}"
  "$py" scripts/check_deploy.py pods "${outs[@]}"
  echo "deploy-check: inject outputs of ${#outs[@]} fixtures valid and idempotent"
fi

# 6. Examples (deploy/examples/*): what a user applies, already injected.
for k in deploy/examples/*/; do
  k=${k%/}
  name=$(basename "$k")
  kubectl kustomize "$k" >"$tmp/example-$name.yaml" || fail "kubectl kustomize $k failed"
  agent=${agent:-${VITALS_AGENT_BIN:-${CARGO_TARGET_DIR:-target}/debug/vitals-agent}}
  [ -x "$agent" ] || cargo build -q -p vitals-agent
  for f in "$k"/*.yaml; do
    [ "$(basename "$f")" = kustomization.yaml ] && continue
    "$agent" inject -q -f "$f" | cmp -s - "$f" ||
      fail "$f is not what vitals-agent inject writes (re-inject it: vitals-agent inject -f $f)"
  done
  # A group's settings (docs/groups.md, "LeaderWorkerSet"): the group recreated on any
  # restart, members created before the leader is Ready (a Vitals leader waits for them).
  "$py" - "$tmp/example-$name.yaml" <<'PY' || fail "$k: LeaderWorkerSet settings"
import sys, yaml
for d in yaml.safe_load_all(open(sys.argv[1])):
    if d and d.get("kind") == "LeaderWorkerSet":
        spec = d["spec"]
        assert spec["leaderWorkerTemplate"].get("restartPolicy") == "RecreateGroupOnPodRestart", "restartPolicy"
        assert spec.get("startupPolicy", "LeaderCreated") == "LeaderCreated", "startupPolicy"
PY
  lws_pods "$tmp/example-$name.yaml" "$tmp/example-$name.pods.yaml"
  validate 1.29 "$tmp/example-$name.pods.yaml" || fail "$k is not valid"
  "$py" scripts/check_deploy.py pods "$tmp/example-$name.pods.yaml"
  echo "deploy-check: example $name valid, injected as inject writes it"
done

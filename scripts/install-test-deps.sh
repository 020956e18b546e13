#!/usr/bin/env bash
# Installs what `make test` needs beyond cargo, each only when missing (CI starts bare):
#   - promtool: Debian's `prometheus` package;
#   - node and npm: Debian's packages (the machine image usually has them);
#   - kubernetes-validate (PyPI, pinned) in the venv $TOOLS_VENV (.venv-tools);
#   - the CRD schema packages of scripts/crd-schemas/ (npm, pinned by its package-lock.json)
#     in $TOOLS_VENV/crd-schemas, reinstalled when the lock file changes.
# kubectl (for `kubectl kustomize`) comes with the machine image: Debian's kubernetes-client
# is 1.20, too old for kustomize components. scripts/check-deploy.sh fails if any is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${TOOLS_VENV:-.venv-tools}
kv_version=1.37.0

need=()
command -v promtool >/dev/null || need+=(prometheus)
command -v node >/dev/null || need+=(nodejs)
command -v npm >/dev/null || need+=(npm)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing: ${need[*]} (install them, e.g. apt-get install ${need[*]})" >&2
    exit 1
  fi
  echo "installing ${need[*]}"
  apt-get update -qq -o DPkg::Lock::Timeout=300
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    -o DPkg::Lock::Timeout=300 "${need[@]}" >/dev/null
fi

if ! "$venv/bin/kubernetes-validate" --version 2>/dev/null | grep -qx "$kv_version"; then
  echo "installing kubernetes-validate $kv_version into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "kubernetes-validate==$kv_version"
fi

crd="$venv/crd-schemas"
if ! cmp -s scripts/crd-schemas/package-lock.json "$crd/package-lock.json" || [ ! -d "$crd/node_modules" ]; then
  echo "installing the CRD schema packages into $crd"
  rm -rf "$crd"
  mkdir -p "$crd"
  cp scripts/crd-schemas/package.json scripts/crd-schemas/package-lock.json "$crd/"
  (cd "$crd" && npm ci --silent --no-audit --no-fund)
fi
# The validator itself is small and always taken from the tree.
cp scripts/crd-schemas/validate.mjs "$crd/"
